"""A numpy interpreter of da4ml's Verilog netlists, and which golden op each signal carries.

:class:`NetlistSim` runs the Verilog that ships (``rtl/src``: da4ml's stage
modules, top and io wrapper) on batches of input codes, bit for bit, without a
simulator build: ``shift_adder``, ``mux``, ``negative``, ``multiplier`` (a product
of two activations) and ``lookup_table`` (a ROM read from its ``memfiles/*.mem``,
e.g. Tanh / Sigmoid / Softmax tables) follow their ``static/*.v`` definitions and
pipeline registers pass values through. It
refuses (``NetlistUnsupported``) what it does not model, so a value is never
made up. :class:`LayerMap` finds, by value, which golden op each signal
carries; :meth:`LayerMap.first_layer` then names the first golden op whose
signals differ between two netlists (an edited one and the generated one),
which is how ``edgeml verify`` names the layer of an edited Verilog line and
how ``edgeml.mutate`` checks that naming independently.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.errors import EdgemlError
from edgeml.rtl import LAYOUT_KINDS


class NetlistUnsupported(EdgemlError):
    """The netlist uses a construct the interpreter does not model (or an undefined select)."""


_U64 = np.uint64
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mask(w: int) -> np.uint64:
    if w >= 64:
        return _ALL
    return np.uint64((1 << w) - 1)


def _sext(v: np.ndarray, w: int) -> np.ndarray:
    """Two's-complement sign extension of ``w``-bit patterns to 64 bits (as uint64)."""
    if w >= 64:
        return v
    m = np.uint64(1 << (w - 1))
    v = v & _mask(w)
    return (v ^ m) - m


class _Bits:
    """A signal of any width: 64-bit chunks of uint64 over the batch."""

    __slots__ = ("chunks", "width")

    def __init__(self, width: int, n: int) -> None:
        self.width = width
        self.chunks = [np.zeros(n, _U64) for _ in range((width + 63) // 64)]

    def get(self, hi: int, lo: int) -> np.ndarray:
        if hi < lo or lo < 0 or hi >= self.width:
            raise NetlistUnsupported(f"select [{hi}:{lo}] outside a {self.width}-bit signal")
        w = hi - lo + 1
        if w > 64:
            raise NetlistUnsupported("a select wider than 64 bits inside an expression")
        c, o = divmod(lo, 64)
        v = self.chunks[c] >> np.uint64(o)
        if o and o + w > 64:
            v = v | (self.chunks[c + 1] << np.uint64(64 - o))
        return v & _mask(w)

    def set(self, hi: int, lo: int, v: np.ndarray) -> None:
        w = hi - lo + 1
        if hi >= self.width or lo < 0:
            raise NetlistUnsupported(f"write [{hi}:{lo}] outside a {self.width}-bit signal")
        v = v & _mask(w)
        c, o = divmod(lo, 64)
        keep = ~(_mask(w) << np.uint64(o)) if o + w <= 64 else _mask(o)
        self.chunks[c] = (self.chunks[c] & keep) | (v << np.uint64(o))
        if o and o + w > 64:
            rest = o + w - 64
            self.chunks[c + 1] = (self.chunks[c + 1] & ~_mask(rest)) | (v >> np.uint64(64 - o))


# expression AST: tuples
_TOKEN = re.compile(
    r"\s*(?:(?P<lit>\d*'[bBhHdD][0-9a-fA-F_]+)|(?P<num>\d+)|(?P<id>[A-Za-z_]\w*)|(?P<op>[\[\]{}:,&|~\-()]))"
)


def _tokens(s: str) -> list[str]:
    out, pos = [], 0
    s = s.strip()
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if m is None or m.end() == pos:
            raise NetlistUnsupported(f"cannot tokenise {s[pos : pos + 20]!r}")
        out.append(m.group().strip())
        pos = m.end()
    return [t for t in out if t]


class _Parser:
    def __init__(self, text: str) -> None:
        self.t = _tokens(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise NetlistUnsupported(f"expected {want!r}, got {tok!r}")
        self.i += 1
        return tok

    def parse(self) -> tuple:
        e = self.expr()
        if self.peek() is not None:
            raise NetlistUnsupported(f"trailing tokens {self.t[self.i :]}")
        return e

    def expr(self) -> tuple:
        e = self.unary()
        while self.peek() in ("&", "|"):
            op = self.take()
            e = ("and" if op == "&" else "or", e, self.unary())
        return e

    def unary(self) -> tuple:
        tok = self.peek()
        if tok == "~":
            self.take()
            return ("not", self.unary())
        if tok == "-":
            self.take()
            return ("neg", self.unary())
        if tok == "|":
            self.take()
            return ("redor", self.primary())
        if tok == "&":
            self.take()
            return ("redand", self.primary())
        return self.primary()

    def primary(self) -> tuple:
        tok = self.take()
        if tok == "(":
            e = self.expr()
            self.take(")")
            return e
        if "'" in tok:
            w, rest = tok.split("'")
            base, digits = rest[0].lower(), rest[1:].replace("_", "")
            val = int(digits, {"b": 2, "h": 16, "d": 10}[base])
            return ("const", int(w) if w else 32, val)
        if tok.isdigit():
            return ("const", 32, int(tok))
        if tok == "{":
            first = self.expr()
            if self.peek() == "{":  # replication {n{e}}
                if first[0] != "const":
                    raise NetlistUnsupported("non-constant replication count")
                self.take("{")
                inner = self.expr()
                self.take("}")
                self.take("}")
                return ("rep", first[2], inner)
            parts = [first]
            while self.peek() == ",":
                self.take()
                parts.append(self.expr())
            self.take("}")
            return ("cat", parts)
        if re.fullmatch(r"[A-Za-z_]\w*", tok):
            if self.peek() == "[":
                self.take("[")
                a = int(self.take())
                if self.peek() == ":":
                    self.take()
                    b = int(self.take())
                    self.take("]")
                    return ("sel", tok, a, b)
                self.take("]")
                return ("sel", tok, a, a)
            return ("id", tok)
        raise NetlistUnsupported(f"unexpected token {tok!r}")


@dataclass
class _Stmt:
    kind: str  # assign | inst
    line: int
    writes: list[str]
    reads: set[str]
    lhs: tuple | None = None
    rhs: tuple | None = None
    module: str = ""
    inst: str = ""
    params: list[int] = field(default_factory=list)
    args: list[tuple] = field(default_factory=list)  # positional
    named: dict[str, tuple] = field(default_factory=dict)


@dataclass
class _Module:
    name: str
    widths: dict[str, int]
    inputs: list[str]
    outputs: list[str]
    stmts: list[_Stmt]


def _reads(e: tuple | None) -> set[str]:
    if e is None:
        return set()
    if e[0] in ("sel", "id"):
        return {e[1]}
    out: set[str] = set()
    for x in e[1:]:
        if isinstance(x, tuple):
            out |= _reads(x)
        elif isinstance(x, list):
            for y in x:
                out |= _reads(y)
    return out


def _parse_module_text(text: str) -> list[_Module]:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"^\s*`[^\n]*", "", text, flags=re.M)
    mods = []
    for mm in re.finditer(
        r"\bmodule\s+(\w+)\s*(#\s*\(.*?\))?\s*\((.*?)\);(.*?)\bendmodule", text, re.S
    ):
        name, ports, body = mm.group(1), mm.group(3), mm.group(4)
        widths: dict[str, int] = {}
        inputs: list[str] = []
        outputs: list[str] = []
        for p in ports.split(","):
            pm = re.match(
                r"\s*(input|output)\s*(?:reg\s*|wire\s*)?(?:\[(\d+):(\d+)\])?\s*(\w+)\s*$", p
            )
            if pm is None:
                continue
            w = int(pm.group(2)) - int(pm.group(3)) + 1 if pm.group(2) else 1
            widths[pm.group(4)] = w
            (inputs if pm.group(1) == "input" else outputs).append(pm.group(4))
        # always @(posedge clk) begin a <= b; ... end  -> assigns (steady-state values)
        stmts_src: list[str] = []
        for am in re.finditer(r"always\s*@\s*\([^)]*\)\s*begin(.*?)\bend\b", body, re.S):
            for s in am.group(1).split(";"):
                if "<=" in s:
                    lhs, rhs = s.split("<=", 1)
                    stmts_src.append(f"assign {lhs.strip()} = {rhs.strip()}")
            body = body.replace(am.group(0), "")
        stmts_src += [s.strip() for s in body.split(";") if s.strip()]
        stmts: list[_Stmt] = []
        for s in stmts_src:
            ln = 0
            dm = re.fullmatch(r"(wire|reg)\s*(?:\[(\d+):(\d+)\])?\s*(\w+)", s)
            if dm:
                widths[dm.group(4)] = int(dm.group(2)) - int(dm.group(3)) + 1 if dm.group(2) else 1
                continue
            if s.startswith("assign "):
                lhs, rhs = s[len("assign ") :].split("=", 1)
                lhs_e = _Parser(lhs).parse()
                rhs_e = _Parser(rhs).parse()
                stmts.append(_Stmt("assign", ln, [lhs_e[1]], _reads(rhs_e), lhs=lhs_e, rhs=rhs_e))
                continue
            im = re.fullmatch(r"(\w+)\s*(?:#\s*\((.*?)\))?\s*(\w+)\s*\((.*)\)", s, re.S)
            if im:
                params = []
                if im.group(2):
                    for p in im.group(2).split(","):
                        p = p.strip()
                        if im.group(1) == "lookup_table" and re.fullmatch(r'"[\w.\-]+"', p):
                            params.append(p.strip('"'))  # the ROM's memory file
                            continue
                        if not re.fullmatch(r"-?\d+", p):
                            raise NetlistUnsupported(f"parameter {p!r} of {im.group(3)}")
                        params.append(int(p))
                args_src = _split_top(im.group(4))
                st = _Stmt(
                    "inst", ln, [], set(), module=im.group(1), inst=im.group(3), params=params
                )
                for a in args_src:
                    nm = re.fullmatch(r"\s*\.(\w+)\s*\((.*)\)\s*", a, re.S)
                    if nm:
                        st.named[nm.group(1)] = _Parser(nm.group(2)).parse()
                    else:
                        st.args.append(_Parser(a).parse())
                stmts.append(st)
                continue
            raise NetlistUnsupported(f"statement {s[:60]!r}")
        mods.append(_Module(name, widths, inputs, outputs, stmts))
    return mods


def _split_top(s: str) -> list[str]:
    out, depth, cur = [], 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur))
    return out


_PRIMITIVE_PORTS = {"shift_adder": 3, "mux": 4, "negative": 2, "multiplier": 3, "lookup_table": 2}


class NetlistSim:
    """A numpy interpreter of da4ml's Verilog (stage modules, top, io wrapper).

    Every signal is a batch of bit patterns; ``shift_adder``, ``mux`` and
    ``negative`` follow their ``static/*.v`` definitions (padding, sign
    extension, ``BW_ADD``-wide arithmetic, the final part-select); pipeline
    registers pass values through (every path has the same latency). An
    out-of-range part-select or an unmodelled module raises, so a result is
    never silently made up.
    """

    def __init__(
        self, modules: dict[str, _Module], top: str, files: dict[str, str], design: Any
    ) -> None:
        self.modules = modules
        self.top = top
        self.files = files  # module name -> file path
        self.design = design  # RtlDesign (encode/decode of port integers)

    @classmethod
    def from_run(cls, run_dir: Path) -> NetlistSim:
        """The Verilog of a run folder (``rtl/src``) as it is on disk."""
        from edgeml.rtl import RtlDesign

        return cls.from_design(RtlDesign.load(Path(run_dir) / "rtl"))

    @classmethod
    def from_design(cls, d: Any) -> NetlistSim:
        """The Verilog files of an :class:`~edgeml.rtl.RtlDesign`, read now."""
        modules: dict[str, _Module] = {}
        files: dict[str, str] = {}
        for p in d.verilog_files:
            if p.parent.name == "static":
                continue
            for m in _parse_module_text(p.read_text()):
                modules[m.name] = m
                files[m.name] = str(p)
        if d.wrapper_top not in modules:
            raise NetlistUnsupported(f"no module {d.wrapper_top}")
        return cls(modules, d.wrapper_top, files, d)

    def with_file(self, path: Path) -> NetlistSim:
        """The same design with one file's modules re-read (a mutant)."""
        mods = dict(self.modules)
        for m in _parse_module_text(Path(path).read_text()):
            mods[m.name] = m
        return NetlistSim(mods, self.top, self.files, self.design)

    # ---- evaluation
    def predict(
        self, x_codes: np.ndarray, probe: tuple[str, str] | None = None, batch: int = 4096
    ) -> Any:
        """Output codes (like ``RtlDesign.predict_int``); with ``probe=(module, signal)`` also that signal."""
        outs, probes = [], []
        for i in range(0, len(x_codes), batch):
            raw = self.design.encode_inputs(x_codes[i : i + batch])
            o, p = self._run_raw(raw, probe)
            outs.append(o)
            probes.append(p)
        out = np.concatenate(outs)
        if probe is None:
            return out
        return out, (np.concatenate(probes) if probes and probes[0] is not None else None)

    def _run_raw(self, raw: np.ndarray, probe: tuple[str, str] | None) -> tuple[np.ndarray, Any]:
        d = self.design
        n = len(raw)
        top = self.modules[self.top]
        ib, ob = d.input_bits, d.output_bits
        inp = _Bits(top.widths[top.inputs[-1]], n)
        for j in range(raw.shape[1]):
            inp.set(j * ib + ib - 1, j * ib, raw[:, j].astype(np.int64).view(_U64))
        self._probe = probe
        self._probe_val: np.ndarray | None = None
        env_in = {top.inputs[-1]: inp}
        if "clk" in top.inputs:
            env_in["clk"] = _Bits(1, n)
        out = self._eval_module(top, env_in, n)
        bus = out[top.outputs[0]]
        res = np.zeros((n, d.n_outputs), np.int64)
        for j in range(d.n_outputs):
            res[:, j] = bus.get(j * ob + ob - 1, j * ob).view(np.int64)
        return d.decode_outputs(res), self._probe_val

    def _eval_module(self, mod: _Module, inputs: dict[str, _Bits], n: int) -> dict[str, _Bits]:
        env: dict[str, _Bits] = dict(inputs)
        for name, w in mod.widths.items():
            if name not in env:
                env[name] = _Bits(w, n)
        writers: dict[str, int] = {}
        for st in mod.stmts:
            for w in self._stmt_writes(st, mod):
                writers[w] = writers.get(w, 0) + 1
        pending = list(mod.stmts)
        done_count: dict[str, int] = {}
        while pending:
            nxt = []
            for st in pending:
                reads = self._stmt_reads(st, mod)
                if any(done_count.get(r, 0) < writers.get(r, 0) for r in reads):
                    nxt.append(st)
                    continue
                self._exec(st, mod, env, n)
                for w in self._stmt_writes(st, mod):
                    done_count[w] = done_count.get(w, 0) + 1
            if len(nxt) == len(pending):
                raise NetlistUnsupported(f"combinational loop or undriven signal in {mod.name}")
            pending = nxt
        return {o: env[o] for o in mod.outputs}

    def _stmt_writes(self, st: _Stmt, mod: _Module) -> list[str]:
        if st.kind == "assign":
            return st.writes
        if st.module in _PRIMITIVE_PORTS:
            return list(_reads(st.args[-1]))
        sub = self.modules.get(st.module)
        if sub is None:
            raise NetlistUnsupported(f"module {st.module} is not modelled")
        return [x for o in sub.outputs if o in st.named for x in _reads(st.named[o])]

    def _stmt_reads(self, st: _Stmt, mod: _Module) -> set[str]:
        if st.kind == "assign":
            return st.reads
        if st.module in _PRIMITIVE_PORTS:
            out: set[str] = set()
            for a in st.args[:-1]:
                out |= _reads(a)
            return out
        sub = self.modules[st.module]
        return {x for i in sub.inputs if i in st.named for x in _reads(st.named[i])}

    def _lookup(self, p: list, vals: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
        """da4ml's ``lookup_table`` (``static/lookup_table.v``): a ROM read from its ``.mem`` file."""
        if len(p) != 3 or not isinstance(p[2], str):
            raise NetlistUnsupported(f"lookup_table with parameters {p}")
        bw_in, bw_out, mem = p
        rom = self._roms.get(mem) if hasattr(self, "_roms") else None
        if rom is None:
            files = {Path(f).parent for f in self.files.values()}
            cands = [d / "memfiles" / mem for d in files] + [d / mem for d in files]
            path = next((c for c in cands if c.is_file()), None)
            if path is None:
                raise NetlistUnsupported(f"memory file {mem} of a lookup_table not found")
            words = path.read_text().split()
            if len(words) > 1 << bw_in:
                raise NetlistUnsupported(f"{mem} has more than 2**{bw_in} words")
            rom = np.zeros(1 << bw_in, _U64)
            known = np.zeros(1 << bw_in, bool)  # unread words and 'X' words are undefined
            for i, w in enumerate(words):
                if "x" not in w.lower():
                    rom[i], known[i] = int(w, 16), True
            if not hasattr(self, "_roms"):
                self._roms: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            self._roms[mem] = rom = (rom, known)
        words_, known = rom
        idx = (vals[0][0] & _mask(bw_in)).astype(np.int64)
        if not known[idx].all():
            raise NetlistUnsupported(f"lookup_table reads an undefined ('X') word of {mem}")
        return words_[idx] & _mask(bw_out), bw_out

    def wires(self, x_codes: np.ndarray) -> dict[tuple[str, str], tuple[np.ndarray, int]]:
        """Every signal of at most 64 bits that a statement writes: (module, name) -> (bits, width)."""
        self._record: dict[tuple[str, str], tuple[np.ndarray, int]] | None = {}
        try:
            self._run_raw(self.design.encode_inputs(x_codes), None)
            return self._record
        finally:
            self._record = None

    def _exec(self, st: _Stmt, mod: _Module, env: dict[str, _Bits], n: int) -> None:
        self._exec1(st, mod, env, n)
        rec = getattr(self, "_record", None)
        if rec is not None:
            for w in self._stmt_writes(st, mod):
                b = env[w]
                if b.width <= 64:
                    rec[(mod.name, w)] = (b.chunks[0].copy(), b.width)

    def _exec1(self, st: _Stmt, mod: _Module, env: dict[str, _Bits], n: int) -> None:
        if st.kind == "assign":
            assert st.lhs is not None and st.rhs is not None
            self._assign(st.lhs, st.rhs, env, n)
            if self._probe and self._probe[0] == mod.name and st.writes[0] == self._probe[1]:
                self._probe_val = env[st.writes[0]].chunks[0].copy()
            return
        if st.module in _PRIMITIVE_PORTS:
            vals = [self._eval(a, env, 0) for a in st.args[:-1]]
            if st.module == "lookup_table":
                v, w = self._lookup(st.params, vals)
            else:
                v, w = _primitive(st.module, st.params, vals)
            self._write(st.args[-1], v, w, env)
            if self._probe and self._probe[0] == mod.name and st.inst == self._probe[1]:
                self._probe_val = v.copy()
            elif (
                self._probe
                and self._probe[0] == mod.name
                and _reads(st.args[-1]) == {self._probe[1]}
            ):
                self._probe_val = v.copy()
            return
        sub = self.modules[st.module]
        sub_in = {}
        for i in sub.inputs:
            if i == "clk":
                sub_in[i] = _Bits(1, n)
                continue
            e = st.named[i]
            sub_in[i] = self._whole(e, env, sub.widths[i], n)
        outs = self._eval_module(sub, sub_in, n)
        for o in sub.outputs:
            if o in st.named:
                self._copy_into(st.named[o], outs[o], env)

    def _whole(self, e: tuple, env: dict[str, _Bits], width: int, n: int) -> _Bits:
        if e[0] == "id":
            src = env[e[1]]
            if src.width != width:
                raise NetlistUnsupported("port width mismatch on a module connection")
            return src
        b = _Bits(width, n)
        v, w = self._eval(e, env, 0)
        b.set(min(w, width) - 1, 0, v)
        return b

    def _copy_into(self, lhs: tuple, src: _Bits, env: dict[str, _Bits]) -> None:
        if lhs[0] == "id":
            dst = env[lhs[1]]
            lo, hi = 0, dst.width - 1
        elif lhs[0] == "sel":
            dst, hi, lo = env[lhs[1]], lhs[2], lhs[3]
        else:
            raise NetlistUnsupported("module output connected to an expression")
        w = min(hi - lo + 1, src.width)
        for off in range(0, w, 64):
            k = min(64, w - off)
            dst.set(lo + off + k - 1, lo + off, src.get(off + k - 1, off))

    def _assign(self, lhs: tuple, rhs: tuple, env: dict[str, _Bits], n: int) -> None:
        if lhs[0] == "id":
            dst = env[lhs[1]]
            hi, lo = dst.width - 1, 0
        elif lhs[0] == "sel":
            dst, hi, lo = env[lhs[1]], lhs[2], lhs[3]
        else:
            raise NetlistUnsupported("assignment to an expression")
        w = hi - lo + 1
        if w > 64:  # a bus copy: only plain (sliced) signals
            if rhs[0] == "id":
                src, shi, slo = env[rhs[1]], env[rhs[1]].width - 1, 0
            elif rhs[0] == "sel":
                src, shi, slo = env[rhs[1]], rhs[2], rhs[3]
            else:
                raise NetlistUnsupported("a wide assignment from an expression")
            if shi - slo + 1 != w:
                raise NetlistUnsupported("a wide assignment with a width change")
            for off in range(0, w, 64):
                k = min(64, w - off)
                dst.set(lo + off + k - 1, lo + off, src.get(slo + off + k - 1, slo + off))
            return
        v, _ = self._eval(rhs, env, w)
        dst.set(hi, lo, v)

    def _write(self, e: tuple, v: np.ndarray, w: int, env: dict[str, _Bits]) -> None:
        if e[0] == "sel":
            dst, hi, lo = env[e[1]], e[2], e[3]
        elif e[0] == "id":
            dst = env[e[1]]
            hi, lo = dst.width - 1, 0
        else:
            raise NetlistUnsupported("output port connected to an expression")
        pw = hi - lo + 1
        dst.set(hi, lo, v & _mask(min(w, pw)))  # truncate, or zero-extend a narrower port

    def _eval(self, e: tuple, env: dict[str, _Bits], ctx: int) -> tuple[np.ndarray, int]:
        k = e[0]
        if k == "sel":
            return env[e[1]].get(e[2], e[3]), e[2] - e[3] + 1
        if k == "id":
            b = env[e[1]]
            if b.width > 64:
                raise NetlistUnsupported("a wide signal inside an expression")
            return b.get(b.width - 1, 0), b.width
        if k == "const":
            w = e[1]
            n = len(next(iter(env.values())).chunks[0]) if env else 1
            return np.full(n, np.uint64(e[2] & ((1 << min(w, 64)) - 1)), _U64), w
        if k == "rep":
            v, w = self._eval(e[2], env, 0)
            out = np.zeros_like(v)
            if e[1] * w > 64:
                raise NetlistUnsupported("a replication wider than 64 bits")
            for i in range(e[1]):
                out |= v << np.uint64(i * w)
            return out, e[1] * w
        if k == "cat":
            parts = [self._eval(x, env, 0) for x in e[1]]
            tot = sum(w for _, w in parts)
            if tot > 64:
                raise NetlistUnsupported("a concatenation wider than 64 bits")
            out = np.zeros_like(parts[0][0])
            sh = 0
            for v, w in reversed(parts):
                out |= (v & _mask(w)) << np.uint64(sh)
                sh += w
            return out, tot
        if k in ("and", "or"):
            a, wa = self._eval(e[1], env, ctx)
            b, wb = self._eval(e[2], env, ctx)
            w = max(wa, wb, ctx)
            return ((a & b) if k == "and" else (a | b)) & _mask(w), w
        if k == "not":
            a, wa = self._eval(e[1], env, ctx)
            w = max(wa, ctx)
            return (~a) & _mask(w), w
        if k == "neg":
            a, wa = self._eval(e[1], env, ctx)
            w = max(wa, ctx)
            return (np.uint64(0) - a) & _mask(w), w
        if k == "redor":
            a, _ = self._eval(e[1], env, 0)
            return (a != 0).astype(_U64), 1
        if k == "redand":
            a, wa = self._eval(e[1], env, 0)
            return (a == _mask(wa)).astype(_U64), 1
        raise NetlistUnsupported(f"expression {k}")


def _canon_keys(cols: np.ndarray) -> list[bytes | None]:
    """A digest per column of int64 values, invariant to a power-of-two scale; None if constant."""
    out: list[bytes | None] = []
    for c in cols.T:
        nz = c[c != 0]
        if nz.size == 0 or np.all(c == c[0]):
            out.append(None)
            continue
        low = nz & -nz
        tz = int(np.log2(np.abs(low).astype(np.float64)).min())
        out.append(hashlib.blake2b((c >> tz).tobytes(), digest_size=16).digest())
    return out


class LayerMap:
    """Which golden op each netlist signal carries, found by value.

    On a few thousand vectors, a signal whose values (signed or unsigned, up to
    a power-of-two scale and a sign) equal those of a golden tensor element
    on every vector carries that element. A mutated netlist's first golden op
    with a changed signal is the layer the mutant hits, found independently of
    how verify names it.
    """

    def __init__(self, g: Any, x: np.ndarray, netlist: NetlistSim, n: int = 2048) -> None:
        x = x[:n]
        _, trace = g.run(x, trace=True)
        by_key: dict[bytes, int] = {}
        for k, op in enumerate(g.ops):
            if op.kind in LAYOUT_KINDS:
                continue
            cols = np.asarray(trace[op.output]).reshape(len(x), -1)
            for key in _canon_keys(cols):
                if key is not None:
                    by_key.setdefault(key, k)
        self.ops = g.ops
        self.signal_op: dict[tuple[str, str], int] = {}
        for sig, (bits, w) in netlist.wires(x).items():
            if w >= 64:
                continue
            u = bits.view(np.int64)
            sgn = _sext(bits, w).view(np.int64)
            variants = np.stack([u, sgn, -u, -sgn], axis=1)
            hits = [by_key[k] for k in _canon_keys(variants) if k is not None and k in by_key]
            if hits:
                self.signal_op[sig] = min(hits)

    def first_layer(self, sim0: NetlistSim, sim1: NetlistSim, x: np.ndarray) -> str | None:
        """The first golden op (label) whose carrying signal differs between two netlists on ``x``."""
        w0, w1 = sim0.wires(x), sim1.wires(x)
        changed = [
            self.signal_op[sig]
            for sig, (b0, _) in w0.items()
            if sig in self.signal_op and sig in w1 and not np.array_equal(b0, w1[sig][0])
        ]
        if not changed:
            return None
        return self.ops[min(changed)].label


def _primitive(
    mod: str, p: list[int], vals: list[tuple[np.ndarray, int]]
) -> tuple[np.ndarray, int]:
    """``shift_adder`` / ``mux`` / ``negative`` exactly as their static Verilog defines them."""

    def port(i: int, bw: int) -> np.ndarray:
        v, _w = vals[i]
        return v & _mask(bw)  # port connection: truncate, or zero-extend (unsigned expression)

    def ext(v: np.ndarray, bw: int, signed: int, pad_r: int, total: int) -> np.ndarray:
        if bw - 1 + pad_r >= total or total > 64:
            if total > 64:
                raise NetlistUnsupported("an adder wider than 64 bits")
        x = _sext(v, bw) if signed == 1 else v
        return (x << np.uint64(pad_r)) & _mask(total)

    if mod in ("shift_adder", "mux"):
        if len(p) != 7:
            raise NetlistUnsupported(f"{mod} with {len(p)} parameters")
        bw0, bw1, s0, s1, bwo, sh, flag = p
        need0 = bw0 - sh if sh < 0 else bw0
        need1 = bw1 + sh if sh > 0 else bw1
        extra = flag + 1 if s0 != s1 else flag
        big = need0 if need0 > need1 else need1
        total = big + extra + (1 if mod == "shift_adder" else 0)
        pr0 = -sh if sh < 0 else 0
        pr1 = sh if sh > 0 else 0
        if total - bw0 - pr0 < 0 or total - bw1 - pr1 < 0:
            raise NetlistUnsupported("negative padding (would not elaborate)")
        if bwo > total:
            raise NetlistUnsupported(
                f"part-select [{bwo - 1}:0] of a {total}-bit value (undefined bits)"
            )
        if mod == "shift_adder":
            a = ext(port(0, bw0), bw0, s0, pr0, total)
            b = ext(port(1, bw1), bw1, s1, pr1, total)
            acc = (a - b) if flag == 1 else (a + b)
            return acc & _mask(bwo), bwo
        key = port(0, 1)
        a = ext(port(1, bw0), bw0, s0, pr0, total) & _mask(bwo)
        b = ext(port(2, bw1), bw1, s1, pr1, total) & _mask(bwo)
        if flag == 1:
            b = (np.uint64(0) - b) & _mask(bwo)
        return np.where(key == 1, a, b), bwo
    if mod == "multiplier":  # static/multiplier.v: low BW_OUT bits of the product
        if len(p) != 5:
            raise NetlistUnsupported(f"multiplier with {len(p)} parameters")
        bw0, bw1, s0, s1, bwo = p
        if bwo > 64:
            raise NetlistUnsupported("a multiplier wider than 64 bits")
        a = _sext(port(0, bw0), bw0) if s0 == 1 else port(0, bw0)
        b = _sext(port(1, bw1), bw1) if s1 == 1 else port(1, bw1)
        with np.errstate(over="ignore"):
            return (a * b) & _mask(bwo), bwo  # two's complement: low bits of the wrapped product
    if mod == "negative":
        bwi, bwo, signed = p
        v = port(0, bwi)
        if bwi < bwo:
            x = (_sext(v, bwi) if signed == 1 else v) & _mask(bwo)
            return (np.uint64(0) - x) & _mask(bwo), bwo
        o = (np.uint64(0) - v) & _mask(bwi)
        return o & _mask(bwo), bwo
    raise NetlistUnsupported(f"module {mod}")


# =========================================================================== campaign
