"""Mutation testing of ``verify``: how much of a wrong artifact does it catch, and does it name it?

A *mutant* is a copy of a run folder in which exactly one constant of one
shipped artifact was changed. Four kinds, one mutator each:

    verilog      a constant of the shipped Verilog (``rtl/src/<name>_stage<k>.v``): an
                 instance parameter (width, signedness, shift, add/sub of a
                 ``shift_adder`` / ``mux`` / ``negative``), a bit of a literal
                 (``8'b10110000``, ``'b111111``), or a bit-select offset of an assign
    hls_header   one value of a ``firmware/weights/*.h`` initialiser (what Vitis
                 synthesises), replaced by another value of the array's ``ap_fixed`` type
    qonnx        one element of a weight/bias initialiser of ``model.qonnx.onnx`` (by
                 one quantiser step, or by a quarter step that may not move the code)
    golden       one constant of the shipped golden IR (``golden.npz``): a weight or bias
                 code, or a requantiser's ``mult`` / ``offset`` / ``shift`` / ``lo`` / ``hi``

For each mutant :func:`run_mutation_campaign` runs :func:`edgeml.flow.verify_run`
on the mutated copy and classifies it:

* **caught**: a level FAILs; ``named`` says whether the level's divergent layer
  (or edited file and line) is the one the mutant changed;
* **build**: the Verilog mutant does not build (Verilator), reported by verify;
* **equivalent**: verify passes and an independent check shows that the mutant
  changes no output over the verification vectors, with the reason (a weight
  that multiplies an input that is 0 on every vector, a code that quantisation
  leaves unchanged, a clamp bound never reached, a width larger than the value
  needs, ...);
* **escaped**: verify passes although the mutant changes outputs: a verify bug.

The independent checks never call verify's code: golden and QONNX mutants are
re-run (or recompiled) as golden models and compared tensor by tensor; header
mutants are mapped onto the golden weight they encode; Verilog mutants run in
:class:`NetlistSim`, a numpy interpreter of da4ml's netlists (checked bit-exact
against the golden model on the unmutated design before it is trusted).

Command line: ``python -m edgeml.mutate --run RUN --n 10 [--kinds ...] [--out report.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.errors import ConfigError, EdgemlError, MissingRunError
from edgeml.fixed import FixedType
from edgeml.flow import GOLDEN_IR, recorded_hls_project
from edgeml.netlist import LayerMap, NetlistSim, NetlistUnsupported

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("verilog", "hls_header", "qonnx", "golden")


# =========================================================================== records


@dataclass
class Mutant:
    """One single-constant change of one artifact.

    ``file`` is named as verify names it: relative to the run folder
    (``rtl/src/mlp_stage2.v``, ``model.qonnx.onnx``, ``golden.npz``) or, for
    hls4ml headers, relative to the hls4ml project (``firmware/weights/w60.h``).
    ``layer`` is where the change lives (golden op label ``"MatMul_1 (dense)"``,
    hls4ml layer, QONNX node, or Verilog ``file:line instance``); ``golden_op``
    is the golden op it belongs to when that is known.
    """

    kind: str
    file: str
    location: str
    old: str
    new: str
    layer: str
    golden_op: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.kind} {self.file} {self.location}: {self.old} -> {self.new} ({self.layer})"


@dataclass
class MutantResult:
    """What verify said about one mutant and what the independent check found."""

    mutant: Mutant
    outcome: str  # caught | build | equivalent | escaped | error
    failed_levels: list[str] = field(default_factory=list)
    named: dict[str, str | None] = field(default_factory=dict)  # level -> its divergent layer
    named_ok: bool | None = None
    named_by: str | None = None
    #: every failing level -> whether it named the mutant's place
    level_named: dict[str, bool] = field(default_factory=dict)
    #: Verilog: verify's golden layer (``"Quant_8 (requant) at file:line"``) is the one the
    #: netlist interpreter finds changed first; None when either is unknown
    golden_layer_ok: bool | None = None
    #: Verilog: verify's golden layer is in the same hardware layer (Dense/Conv and the ReLU /
    #: requantiser after it) as the one the interpreter finds
    golden_group_ok: bool | None = None
    changes_output: bool | None = None  # independent check; None: could not decide
    mismatching_vectors: int | None = None  # independent check
    reason: str = ""
    drift: list[str] = field(default_factory=list)
    verify_seconds: float = 0.0
    seconds: float = 0.0
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# =========================================================================== workspace


def copy_run(run_dir: str | Path, dest: str | Path) -> Path:
    """Copy a run folder and its hls4ml project under ``dest``, keeping their relative layout.

    ``hls.json`` names the project relative to the run folder, so both trees are
    copied below their common ancestor and the copy resolves its own project.
    Returns the copied run folder. cocotb's simulator build is left out.
    """
    run_dir = Path(run_dir).resolve()
    dest = Path(dest)
    proj = recorded_hls_project(run_dir)
    roots = [run_dir] + ([proj] if proj is not None and proj.is_dir() else [])
    base = Path(os.path.commonpath([str(r) for r in roots]))
    ignore = shutil.ignore_patterns("sim_build", "__pycache__", "*.tmp")
    for r in roots:
        target = dest / "tree" / r.relative_to(base)
        if r != run_dir and run_dir in r.parents:
            continue  # the project lives inside the run folder: copied with it
        shutil.copytree(r, target, symlinks=True, ignore=ignore, dirs_exist_ok=True)
    return dest / "tree" / run_dir.relative_to(base)


class Workspace:
    """One working copy of the run folder, put back after each mutant.

    The copy is verified once unmutated (which recompiles the moved C-sim and
    builds nothing else), then frozen: a second copy holds that state and
    :meth:`restore` copies back every file a mutant or verify changed, and
    deletes every file they added (a mutant's Verilator build). Restoring
    instead of copying afresh keeps the C-sim library and the design's
    Verilator build valid across mutants.
    """

    def __init__(self, run_dir: Path, root: Path) -> None:
        self.original = Path(run_dir).resolve()
        self.root = Path(root)
        self.run = copy_run(self.original, self.root / "work")
        self.project = recorded_hls_project(self.run)
        self._snapshot: dict[Path, tuple[int, int]] = {}

    def _trees(self) -> list[Path]:
        return [self.root / "work"]

    def _listing(self) -> dict[Path, tuple[int, int]]:
        out: dict[Path, tuple[int, int]] = {}
        for t in self._trees():
            for p in t.rglob("*"):
                if p.is_file() and not p.is_symlink():
                    st = p.stat()
                    out[p] = (st.st_size, st.st_mtime_ns)
        return out

    def freeze(self) -> None:
        """Take the working copy as it is now as the state :meth:`restore` returns to."""
        pristine = self.root / "pristine"
        shutil.rmtree(pristine, ignore_errors=True)
        shutil.copytree(self.root / "work", pristine, symlinks=True)
        self._snapshot = self._listing()

    def _source(self, path: Path) -> Path:
        return self.root / "pristine" / Path(path).relative_to(self.root / "work")

    def restore(self) -> None:
        """Put back every file that changed since :meth:`freeze`; delete files that appeared."""
        now = self._listing()
        for p, sig in now.items():
            if p not in self._snapshot:
                p.unlink(missing_ok=True)
            elif sig != self._snapshot[p]:
                shutil.copy2(self._source(p), p)
                st = p.stat()
                self._snapshot[p] = (st.st_size, st.st_mtime_ns)
        for p in self._snapshot:
            if not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self._source(p), p)
                st = p.stat()
                self._snapshot[p] = (st.st_size, st.st_mtime_ns)


# =========================================================================== verification vectors


@dataclass
class Baseline:
    """The unmutated design: oracle, verification vectors and their golden trace."""

    run_dir: Path
    golden: Any  # GoldenModel
    x: np.ndarray
    ref: np.ndarray
    trace: dict[str, np.ndarray]
    netlist: NetlistSim | None = None
    netlist_note: str = ""
    layer_map: LayerMap | None = None

    @classmethod
    def load(cls, run_dir: Path, n_random: int | None = None, netlist: bool = True) -> Baseline:
        from edgeml.flow import run_context, verify_inputs

        ctx = run_context(run_dir, n_random)
        g = ctx.golden()
        x, _ = verify_inputs(ctx)
        ref, trace = g.run(x, trace=True)
        base = cls(Path(run_dir), g, x, np.asarray(ref), trace)
        if netlist and (Path(run_dir) / "rtl" / "edgeml_rtl.json").is_file():
            try:
                sim = NetlistSim.from_run(Path(run_dir))
                got = sim.predict(x)
                if np.array_equal(got, base.ref):
                    base.netlist = sim
                else:
                    n = int((got != base.ref).reshape(len(x), -1).any(1).sum())
                    base.netlist_note = f"netlist interpreter disagrees with golden on {n} vectors"
            except NetlistUnsupported as exc:
                base.netlist_note = f"netlist interpreter unavailable: {exc}"
            if base.netlist_note:
                log.warning(
                    "mutate: %s; Verilog survivors are checked with Verilator", base.netlist_note
                )
        return base


# =========================================================================== golden diff reasons


def _golden_diff(
    g0: Any, g1: Any, x: np.ndarray, trace0: dict[str, np.ndarray]
) -> tuple[int, dict[str, np.ndarray]]:
    """Output-mismatching vector count of ``g1`` vs ``g0`` and ``g1``'s trace."""
    out1, trace1 = g1.run(x, trace=True)
    out0 = trace0[g0.output_name]
    bad = (np.asarray(out1) != out0).reshape(len(x), -1).any(axis=1)
    return int(bad.sum()), trace1


def _absorbed_by(
    g: Any, trace0: dict[str, np.ndarray], trace1: dict[str, np.ndarray], start: int
) -> str:
    """Name the op after ``start`` where a change of ``g.ops[start]``'s output stops propagating."""
    changed = {g.ops[start].output}
    for op in g.ops[start + 1 :]:
        if not any(i in changed for i in op.inputs):
            continue
        if np.array_equal(trace0[op.output], trace1[op.output]):
            if op.kind == "dense" and op.inputs[0] in trace0 and op.inputs[0] in trace1:
                a = np.asarray(trace0[op.inputs[0]]).reshape(-1, op.weight.shape[0])
                b = np.asarray(trace1[op.inputs[0]]).reshape(-1, op.weight.shape[0])
                cols = np.flatnonzero((a != b).any(axis=0))
                if cols.size and not np.any(op.weight[cols]):
                    return (
                        f"{op.label} absorbs it: every weight from its changed input "
                        f"element(s) {cols.tolist()[:8]} is 0 (pruned)"
                    )
            if op.kind == "requant":
                a, b = np.asarray(trace0[op.inputs[0]]), np.asarray(trace1[op.inputs[0]])
                moved = a != b
                y = np.asarray(trace0[op.output])[moved]
                if y.size and np.all((y == op.hi) | (y == op.lo)):
                    return (
                        f"{op.label} saturates it away (every changed value is clamped to "
                        f"[{op.lo}, {op.hi}])"
                    )
                if y.size and not np.any((y == op.hi) | (y == op.lo)):
                    return f"{op.label} rounds it away (no change crosses a rounding step)"
                return f"{op.label} rounds or saturates it away"
            what = {
                "requant": "rounds or saturates it away",
                "relu": "clips it (the value stays negative)",
                "maxpool": "does not select it",
            }.get(op.kind, "absorbs it")
            return f"{op.label} {what}"
        changed.add(op.output)
    return "no later op propagates it"


def golden_reason(
    g0: Any,
    g1: Any,
    x: np.ndarray,
    trace0: dict[str, np.ndarray],
    op_name: str,
    field_name: str,
    index: tuple[int, ...] | None,
) -> tuple[int, str]:
    """Mismatching output vectors of ``g1`` (one constant changed) and, when 0, why."""
    n_bad, trace1 = _golden_diff(g0, g1, x, trace0)
    if n_bad:
        return n_bad, ""
    k = next(i for i, op in enumerate(g0.ops) if op.name == op_name)
    op0, op1 = g0.ops[k], g1.ops[k]
    out_same = np.array_equal(trace0[op0.output], trace1[op1.output])
    if not out_same:
        n = int((trace0[op0.output] != trace1[op1.output]).reshape(len(x), -1).any(axis=1).sum())
        return 0, (
            f"{op0.label}.{field_name} changes that op's output on {n} vectors, but "
            f"{_absorbed_by(g0, trace0, trace1, k)} before any output"
        )
    xin = trace0.get(op0.inputs[0])
    if xin is None:  # the graph input itself
        xin = (
            x.reshape(len(x), *g0.tensors[op0.inputs[0]].shape)
            if op0.inputs[0] in g0.tensors
            else x
        )
    if field_name == "weight" and index is not None:
        from edgeml.golden import Conv

        if isinstance(op0, Conv):
            p = op0.patches(np.asarray(xin))
            cols = p.reshape(-1, int(np.prod(op0.weight.shape[:-1])))
            col = int(np.ravel_multi_index(index[:-1], op0.weight.shape[:-1]))
            vals = cols[:, col]
            what = f"input patch element {index[:-1]}"
        else:
            vals = np.asarray(xin).reshape(-1, op0.weight.shape[0])[:, index[0]]
            what = f"input element {index[0]}"
        if not np.any(vals):
            src = next((o for o in g0.ops if o.output == op0.inputs[0]), None)
            via = f" ({src.label} output)" if src is not None else " (a graph input)"
            return 0, (
                f"weight {list(index)} of {op0.label} multiplies {what}{via}, "
                "which is 0 on every vector"
            )
        return 0, f"weight {list(index)} change leaves {op0.label}'s output unchanged"
    if field_name in ("lo", "hi"):
        pre = _requant_pre_clip(op0, np.asarray(xin))
        return 0, (
            f"clamp bound {field_name} {getattr(op0, field_name)} -> {getattr(op1, field_name)} "
            f"is never reached (pre-clamp codes span [{int(pre.min())}, {int(pre.max())}])"
        )
    return 0, f"{op0.label}.{field_name} change leaves every code of that op unchanged"


def _requant_pre_clip(op: Any, x: np.ndarray) -> np.ndarray:
    from edgeml.golden import round_shift

    y = x * op.mult + op.offset
    return round_shift(y, op.shift, op.rounding)


# =========================================================================== mutators


class Mutator:
    """Enumerates one artifact kind's constants (``sites``) and changes one of them (``apply``)."""

    kind: str = ""

    def sites(self, run_dir: Path) -> list[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(
        self, ws: Workspace, sites: list[Any], rng: np.random.Generator
    ) -> Mutant:  # pragma: no cover
        raise NotImplementedError

    def check(
        self, ws: Workspace, m: Mutant, base: Baseline
    ) -> tuple[bool | None, int | None, str]:
        """Independently: does the mutant change any output on the vectors? (changes, n, reason)."""
        raise NotImplementedError  # pragma: no cover


# --------------------------------------------------------------------------- golden IR


@dataclass(frozen=True)
class GoldenSite:
    op: int
    field: str  # weight | bias | mult | offset | shift | lo | hi
    group: str  # weight | bias | requant


class GoldenMutator(Mutator):
    """One constant of ``golden.npz``: weight code, bias code or requantiser parameter."""

    kind = "golden"

    def sites(self, run_dir: Path) -> list[GoldenSite]:
        from edgeml.golden import Dense, GoldenModel, Requant

        path = Path(run_dir) / GOLDEN_IR
        if not path.is_file():
            raise MissingRunError(
                f"{path} not found: re-run `edgeml export` (it writes the golden IR)"
            )
        g = GoldenModel.load(path)
        out: list[GoldenSite] = []
        for i, op in enumerate(g.ops):
            if isinstance(op, Dense):
                out.append(GoldenSite(i, "weight", "weight"))
                if op.bias is not None:
                    out.append(GoldenSite(i, "bias", "bias"))
            elif isinstance(op, Requant):
                for f in ("mult", "offset", "shift", "lo", "hi"):
                    out.append(GoldenSite(i, f, "requant"))
        return out

    def apply(self, ws: Workspace, sites: list[GoldenSite], rng: np.random.Generator) -> Mutant:
        from edgeml.golden import GoldenModel

        groups = sorted({s.group for s in sites})
        group = groups[int(rng.integers(len(groups)))]
        cand = [s for s in sites if s.group == group]
        site = cand[int(rng.integers(len(cand)))]
        path = ws.run / GOLDEN_IR
        g = GoldenModel.load(path)
        op = g.ops[site.op]
        value = getattr(op, site.field)
        index: tuple[int, ...] | None = None
        if isinstance(value, np.ndarray):
            arr = np.array(value, copy=True)
            index = (
                tuple(int(i) for i in np.unravel_index(int(rng.integers(arr.size)), arr.shape))
                if arr.ndim
                else ()
            )
            old = int(arr[index]) if arr.ndim else int(arr)
            lo, hi = _golden_range(op, site.field)
            new = _step_or_flip(old, lo, hi, rng, bits=_golden_bits(op, site.field))
            if arr.ndim:
                arr[index] = new
            else:
                arr = np.array(new, dtype=arr.dtype)
            setattr(op, site.field, arr)
        else:
            old = int(value)
            if site.field == "lo":
                new = old + int(rng.choice([-1, 1])) if old < op.hi else old - 1
            elif site.field == "hi":
                new = old + int(rng.choice([-1, 1])) if old > op.lo else old + 1
            else:
                new = old + int(rng.choice([-1, 1]))
            setattr(op, site.field, new)
        g.save(path)
        where = f"{site.field}" + (f"[{', '.join(map(str, index))}]" if index else "")
        return Mutant(
            kind=self.kind,
            file=GOLDEN_IR,
            location=where,
            old=str(old),
            new=str(new),
            layer=op.label,
            golden_op=op.name,
            detail={"op": site.op, "field": site.field, "index": list(index) if index else None},
        )

    def check(
        self, ws: Workspace, m: Mutant, base: Baseline
    ) -> tuple[bool | None, int | None, str]:
        from edgeml.golden import GoldenModel

        g1 = GoldenModel.load(ws.run / GOLDEN_IR)
        idx = tuple(m.detail["index"]) if m.detail.get("index") else None
        n, why = golden_reason(
            base.golden, g1, base.x, base.trace, m.golden_op or "", m.detail["field"], idx
        )
        return n > 0, n, why


def _golden_bits(op: Any, field_name: str) -> int | None:
    if field_name == "weight":
        return int(op.weight_type.width)
    if field_name == "bias" and op.bias_type is not None:
        return int(op.bias_type.width)
    return None


def _golden_range(op: Any, field_name: str) -> tuple[int, int]:
    if field_name == "weight":
        return op.weight_type.qmin, op.weight_type.qmax
    if field_name == "bias" and op.bias_type is not None:
        return op.bias_type.qmin, op.bias_type.qmax
    return -(1 << 40), 1 << 40


def _step_or_flip(old: int, lo: int, hi: int, rng: np.random.Generator, bits: int | None) -> int:
    """A different code in [lo, hi]: +-1 (half the time) or one flipped bit of a ``bits``-wide code."""
    for _ in range(64):
        if bits and rng.random() < 0.5:
            b = int(rng.integers(bits))
            u = (old & ((1 << bits) - 1)) ^ (1 << b)
            new = u - (1 << bits) if lo < 0 and u >= (1 << (bits - 1)) else u
        else:
            new = old + int(rng.choice([-1, 1]))
        if new != old and lo <= new <= hi:
            return new
    return old + 1 if old + 1 <= hi else old - 1


# --------------------------------------------------------------------------- QONNX


@dataclass(frozen=True)
class QonnxSite:
    init: str  # initializer name (a Quant's input 0)
    quant: str  # the Quant node
    consumer: str  # the node that reads the Quant's output (MatMul / Add / Conv)
    role: str  # weight | bias
    size: int


class QonnxMutator(Mutator):
    """One element of a weight/bias initialiser of ``model.qonnx.onnx``.

    Three in four mutants move the value by one quantiser step (the code moves
    unless the quantiser clamps it); one in four by a quarter step, which moves
    the code only when it crosses a rounding boundary.
    """

    kind = "qonnx"
    file = "model.qonnx.onnx"

    def sites(self, run_dir: Path) -> list[QonnxSite]:
        import onnx

        m = onnx.load(str(Path(run_dir) / self.file))
        inits = {i.name: i for i in m.graph.initializer}
        consumers: dict[str, list[Any]] = {}
        for n in m.graph.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        out = []
        for n in m.graph.node:
            if n.op_type != "Quant" or not n.input or n.input[0] not in inits:
                continue
            users = consumers.get(n.output[0], [])
            if not users:
                continue
            u = users[0]
            role = (
                "bias"
                if u.op_type == "Add"
                or (
                    u.op_type in ("Gemm", "Conv") and len(u.input) > 2 and u.input[2] == n.output[0]
                )
                else "weight"
            )
            size = int(np.prod(inits[n.input[0]].dims)) if inits[n.input[0]].dims else 1
            if size > 1 or role == "bias":
                out.append(QonnxSite(n.input[0], n.name, u.name, role, size))
        return out

    def apply(self, ws: Workspace, sites: list[QonnxSite], rng: np.random.Generator) -> Mutant:
        import onnx
        from onnx import numpy_helper

        roles = sorted({s.role for s in sites})
        role = roles[int(rng.integers(len(roles)))]
        cand = [s for s in sites if s.role == role]
        site = cand[int(rng.integers(len(cand)))]
        path = ws.run / self.file
        m = onnx.load(str(path))
        init = next(i for i in m.graph.initializer if i.name == site.init)
        quant = next(n for n in m.graph.node if n.name == site.quant)
        arr = numpy_helper.to_array(init).copy()
        qp = _quant_params(m, quant)
        flat = arr.reshape(-1)
        k = int(rng.integers(flat.size))
        old = float(flat[k])
        step = float(
            np.asarray(qp["scale"]).reshape(-1)[
                0 if np.asarray(qp["scale"]).size == 1 else _channel(arr.shape, k)
            ]
        )
        small = rng.random() < 0.25
        delta = (0.25 if small else 1.0) * step * float(rng.choice([-1.0, 1.0]))
        new = float(np.float32(old + delta))
        flat[k] = new
        init.CopyFrom(
            numpy_helper.from_array(arr.astype(numpy_helper.to_array(init).dtype), init.name)
        )
        onnx.save(m, str(path))
        index = tuple(int(i) for i in np.unravel_index(k, arr.shape)) if arr.ndim else ()
        return Mutant(
            kind=self.kind,
            file=self.file,
            location=f"{site.init}[{', '.join(map(str, index))}]",
            old=repr(old),
            new=repr(new),
            layer=f"{site.quant} -> {site.consumer}",
            golden_op=None,  # set by check(): the golden op whose constants move
            detail={
                "initializer": site.init,
                "quant": site.quant,
                "consumer": site.consumer,
                "role": site.role,
                "index": list(index),
                "step": "quarter" if small else "one",
                "scale": step,
                "code_range": _code_range(m, quant),
            },
        )

    def check(
        self, ws: Workspace, m: Mutant, base: Baseline
    ) -> tuple[bool | None, int | None, str]:
        from edgeml.golden import GoldenModel

        g1 = GoldenModel.from_onnx(ws.run / self.file)
        c0, c1 = base.golden.constants(), g1.constants()
        moved = [
            k
            for k in c0
            if k not in c1 or c0[k].shape != c1[k].shape or not np.array_equal(c0[k], c1[k])
        ]
        if not moved:
            return False, 0, _same_code_reason(m)
        op_name, fld = moved[0].split(".", 1)
        op = next(o for o in base.golden.ops if o.name == op_name)
        m.golden_op = op.name
        m.layer = f"{m.layer} = {op.label}"
        k0, k1 = c0[moved[0]], c1[moved[0]]
        idx = (
            tuple(int(i) for i in np.argwhere(k0 != k1)[0])
            if k0.shape == k1.shape and k0.ndim
            else None
        )
        m.detail["golden_constant"] = moved[0] + (f"{list(idx)}" if idx else "")
        m.detail["golden_code"] = [int(k0[idx]), int(k1[idx])] if idx else None
        n, why = golden_reason(base.golden, g1, base.x, base.trace, op.name, fld, idx)
        return n > 0, n, why


def _same_code_reason(m: Mutant) -> str:
    """Why a QONNX value change leaves the quantised code as it was."""
    old, new = float(m.old), float(m.new)
    scale = float(m.detail["scale"])
    lo, hi = m.detail.get("code_range") or (None, None)
    a, b = old / scale, new / scale
    if old == 0.0 and np.round(b) == 0:
        return f"a pruned weight (0) moved by {b:+.2f} steps still quantises to 0"
    if lo is not None and min(a, b) >= hi:
        return (
            f"clamped: {a:.2f} and {b:.2f} steps both saturate at the quantiser's maximum code {hi}"
        )
    if lo is not None and max(a, b) <= lo:
        return (
            f"clamped: {a:.2f} and {b:.2f} steps both saturate at the quantiser's minimum code {lo}"
        )
    return f"{a:.3f} -> {b:.3f} steps round to the same code {int(np.round(a))}"


def _channel(shape: tuple[int, ...], k: int) -> int:
    return int(np.unravel_index(k, shape)[-1]) if shape else 0


def _code_range(m: Any, node: Any) -> tuple[int, int] | None:
    """[min, max] integer code of a QONNX ``Quant`` (signed / narrow attributes, bit width input)."""
    import onnx

    bw = _quant_params(m, node).get("bitwidth")
    if bw is None:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    bits = int(np.asarray(bw).reshape(-1)[0])
    signed, narrow = int(attrs.get("signed", 1)), int(attrs.get("narrow", 0))
    if signed:
        return -(1 << (bits - 1)) + narrow, (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1 - narrow


def _quant_params(m: Any, node: Any) -> dict[str, Any]:
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    names = ["x", "scale", "zeropt", "bitwidth"]
    return {n: inits.get(i) for n, i in zip(names, node.input, strict=False)}


# --------------------------------------------------------------------------- hls4ml headers

_H_ARRAY = re.compile(
    r"#else\s+(?P<type>\w+)\s+(?P<var>\w+)\[(?P<n>\d+)\]\s*=\s*\{(?P<body>[^}]*)\}\s*;", re.S
)
_TYPEDEF = re.compile(
    r"typedef\s+(?P<kind>ap_u?fixed|ap_u?int)<(?P<args>[^>]*)>\s+(?P<name>\w+)\s*;"
)
_CONFIG = re.compile(r"//\s*(?P<layer>\S+)\s*\n\s*struct\s+(?P<cfg>\w+)\s*:")


@dataclass(frozen=True)
class HeaderSite:
    file: str  # relative to the project
    var: str
    ctype: str
    n: int
    layer: str
    signed: bool
    width: int
    frac: int


def _ap_type(kind: str, args: str) -> tuple[bool, int, int]:
    parts = [a.strip() for a in args.split(",")]
    w = int(parts[0])
    if kind in ("ap_int", "ap_uint"):
        return kind == "ap_int", w, 0
    i = int(parts[1])
    return kind == "ap_fixed", w, w - i


def header_layers(project: Path) -> dict[str, str]:
    """Array name (``w60``) -> hls4ml layer (``Dense_MatMul_0``), from ``parameters.h``.

    The layer config ``struct config60`` follows the comment ``// Dense_MatMul_0``
    and types its weights ``weight60_t``; read independently of verify's own mapping.
    """
    params = (project / "firmware" / "parameters.h").read_text(errors="replace")
    out: dict[str, str] = {}
    for m in _CONFIG.finditer(params):
        num = re.sub(r"\D", "", m.group("cfg"))
        if num:
            out.setdefault(f"w{num}", m.group("layer"))
            out.setdefault(f"b{num}", m.group("layer"))
    return out


def _exact_decimal(code: int, frac: int) -> str:
    if frac <= 0:
        return str(code << -frac)
    v = Fraction(code, 1 << frac)
    sign = "-" if v < 0 else ""
    v = abs(v)
    whole = v.numerator // v.denominator
    rest = v - whole
    digits = str(int(rest * 10**frac)).rjust(frac, "0")
    return f"{sign}{whole}.{digits}"


class HlsHeaderMutator(Mutator):
    """One value of a ``firmware/weights/*.h`` initialiser, replaced by another of its type."""

    kind = "hls_header"

    def sites(self, run_dir: Path) -> list[HeaderSite]:
        proj = recorded_hls_project(Path(run_dir))
        if proj is None or not (proj / "firmware" / "weights").is_dir():
            raise MissingRunError(f"run '{run_dir}' has no hls4ml project (hls.json project_dir)")
        defines = (proj / "firmware" / "defines.h").read_text(errors="replace")
        types = {
            m.group("name"): _ap_type(m.group("kind"), m.group("args"))
            for m in _TYPEDEF.finditer(defines)
        }
        layers = header_layers(proj)
        out = []
        for h in sorted((proj / "firmware" / "weights").glob("*.h")):
            m = _H_ARRAY.search(h.read_text(errors="replace"))
            if m is None or m.group("type") not in types:
                continue
            s, w, f = types[m.group("type")]
            out.append(
                HeaderSite(
                    str(h.relative_to(proj)),
                    m.group("var"),
                    m.group("type"),
                    int(m.group("n")),
                    layers.get(m.group("var"), "?"),
                    s,
                    w,
                    f,
                )
            )
        return out

    def apply(self, ws: Workspace, sites: list[HeaderSite], rng: np.random.Generator) -> Mutant:
        assert ws.project is not None
        site = sites[int(rng.integers(len(sites)))]
        path = ws.project / site.file
        text = path.read_text()
        m = _H_ARRAY.search(text)
        assert m is not None
        body = m.group("body")
        # token spans of the values inside the body
        spans = [(t.start(), t.end()) for t in re.finditer(r"[^,\s]+", body)]
        k = int(rng.integers(len(spans)))
        a, b = spans[k]
        old_s = body[a:b]
        t = FixedType(site.signed, site.width, site.frac)
        old_code = (
            int(Fraction(old_s) * (1 << site.frac))
            if site.frac >= 0
            else int(Fraction(old_s)) >> -site.frac
        )
        lo = t.qmin + 1 if site.signed else t.qmin  # keep clear of the SAT_SYM-only code
        new_code = _step_or_flip(old_code, lo, t.qmax, rng, bits=site.width)
        new_s = _exact_decimal(new_code, site.frac)
        start = m.start("body")
        text = text[: start + a] + new_s + text[start + b :]
        path.write_text(text)
        return Mutant(
            kind=self.kind,
            file=site.file,
            location=f"[{k}]",
            old=old_s,
            new=new_s,
            layer=site.layer,
            golden_op=None,
            detail={
                "var": site.var,
                "index": k,
                "type": t.hls(),
                "old_code": old_code,
                "new_code": new_code,
            },
        )

    def check(
        self, ws: Workspace, m: Mutant, base: Baseline
    ) -> tuple[bool | None, int | None, str]:
        """The header encodes a golden weight/bias: apply the same change there and compare."""
        g = base.golden
        layer = m.layer
        op = next((o for o in g.param_ops if layer == o.name or layer.endswith("_" + o.name)), None)
        if op is None:
            return None, None, f"no golden op for hls4ml layer {layer}"
        m.golden_op = op.name
        is_bias = m.detail["var"].startswith("b")
        arr = op.bias if is_bias else op.weight
        ftype = op.bias_type if is_bias else op.weight_type
        if arr is None or ftype is None or arr.size != int(_header_len(ws, m)):
            return None, None, "header does not map element for element onto the golden constant"
        k = int(m.detail["index"])
        # header value = code * 2**-(type frac) of the golden storage type, element order = C order
        old_v, new_v = Fraction(m.old), Fraction(m.new)
        scale = Fraction(1, 1 << ftype.frac) if ftype.frac >= 0 else Fraction(1 << -ftype.frac)
        flat = np.asarray(arr).reshape(-1)
        if Fraction(int(flat[k])) * scale != old_v:
            return (
                None,
                None,
                (
                    f"header value {m.old} at [{k}] is not golden code {int(flat[k])} of {ftype.hls()} "
                    "(layout differs)"
                ),
            )
        new_code = new_v / scale
        if new_code.denominator != 1:
            return None, None, f"new value {m.new} is off the golden grid {ftype.hls()}"
        g1 = copy.deepcopy(g)
        op1 = next(o for o in g1.ops if o.name == op.name)
        a1 = np.array(arr, copy=True)
        a1.reshape(-1)[k] = int(new_code)
        setattr(op1, "bias" if is_bias else "weight", a1)
        idx = tuple(int(i) for i in np.unravel_index(k, arr.shape))
        n, why = golden_reason(
            g, g1, base.x, base.trace, op.name, "bias" if is_bias else "weight", idx
        )
        m.detail["golden_index"] = list(idx)
        return n > 0, n, why


def _header_len(ws: Workspace, m: Mutant) -> int:
    assert ws.project is not None
    text = (ws.project / m.file).read_text(errors="replace")
    h = _H_ARRAY.search(text)
    return int(h.group("n")) if h else -1


# --------------------------------------------------------------------------- Verilog

#: a literal such as 8'b10110000 or 'b111111 (da4ml writes binary literals)
_LITERAL = re.compile(r"(?<![\w'])(?P<w>\d*)'(?P<base>[bBhHdD])(?P<digits>[0-9a-fA-F_]+)")
_PARAMS = re.compile(r"#\((?P<p>[^)]*)\)")
_SELECT = re.compile(r"(?P<id>[A-Za-z_]\w*)\[(?P<a>\d+)(?::(?P<b>\d+))?\]")
_DECL = re.compile(
    r"\b(?:wire|reg|input|output(?:\s+reg)?)\s*\[(?P<msb>\d+):(?P<lsb>\d+)\]\s*(?P<id>[A-Za-z_]\w*)"
)
_INST_HEAD = re.compile(
    r"\b(?P<mod>[A-Za-z_]\w*)\s*#\((?P<p>[^)]*)\)\s*(?P<inst>[A-Za-z_]\w*)\s*\("
)

PARAM_NAMES: dict[str, tuple[str, ...]] = {
    "shift_adder": ("BW_INPUT0", "BW_INPUT1", "SIGNED0", "SIGNED1", "BW_OUT", "SHIFT1", "IS_SUB"),
    "mux": ("BW_INPUT0", "BW_INPUT1", "SIGNED0", "SIGNED1", "BW_OUT", "SHIFT1", "INVERT1"),
    "negative": ("BW_IN", "BW_OUT", "IN_SIGNED"),
    "multiplier": ("BW_INPUT0", "BW_INPUT1", "SIGNED0", "SIGNED1", "BW_OUT"),
    "binop": ("BW_INPUT0", "BW_INPUT1", "SIGNED0", "SIGNED1", "BW_OUT", "SHIFT1", "OPCODE"),
    "lookup_table": ("BW_IN", "BW_OUT", "MEM_FILE"),
}
_FLAGS = {"SIGNED0", "SIGNED1", "IS_SUB", "INVERT1", "IN_SIGNED"}


@dataclass(frozen=True)
class VerilogSite:
    file: str  # relative to the run folder
    line: int  # 1-based
    start: int  # token span in the line
    end: int
    category: str  # param | literal | select
    old: str
    where: str  # instance / assigned wire
    what: str  # parameter name, literal, or selected signal
    limit: int = 0  # select: the selected signal's width


def _strip_comment(line: str) -> tuple[str, int]:
    i = line.find("//")
    return (line, len(line)) if i < 0 else (line[:i], i)


def verilog_sites(run_dir: Path, files: Iterable[Path] | None = None) -> list[VerilogSite]:
    """Every mutable integer constant of the design's stage files (da4ml's netlists)."""
    run_dir = Path(run_dir)
    if files is not None:
        paths = sorted(Path(f) for f in files)
    else:
        src = run_dir / "rtl" / "src"
        name = json.loads((run_dir / "rtl" / "edgeml_rtl.json").read_text())["name"]
        paths = sorted(src.glob(f"{name}_stage*.v"))
        if not paths and (src / f"{name}.v").is_file():
            paths = [src / f"{name}.v"]  # combinational: one module
    out: list[VerilogSite] = []
    for p in paths:
        rel = str(p.relative_to(run_dir))
        lines = p.read_text().splitlines()
        widths = {
            m.group("id"): int(m.group("msb")) - int(m.group("lsb")) + 1
            for m in _DECL.finditer(p.read_text())
        }
        for ln, raw in enumerate(lines, 1):
            code, _ = _strip_comment(raw)
            if not code.strip() or code.lstrip().startswith(
                ("`", "module", "input", "output", "endmodule")
            ):
                continue
            inst = _INST_HEAD.search(code)
            if inst is not None:
                mod = inst.group("mod")
                names = PARAM_NAMES.get(mod)
                if names is None or mod == "lookup_table":
                    continue
                base = inst.start("p")
                for k, tok in enumerate(re.finditer(r"[^,\s]+", inst.group("p"))):
                    if k < len(names) and re.fullmatch(r"-?\d+", tok.group()):
                        out.append(
                            VerilogSite(
                                rel,
                                ln,
                                base + tok.start(),
                                base + tok.end(),
                                "param",
                                tok.group(),
                                inst.group("inst"),
                                f"{mod}.{names[k]}",
                            )
                        )
                for lit in _LITERAL.finditer(code, inst.end()):
                    out.append(
                        VerilogSite(
                            rel,
                            ln,
                            lit.start(),
                            lit.end(),
                            "literal",
                            lit.group(),
                            inst.group("inst"),
                            "port literal",
                        )
                    )
                continue
            am = re.search(r"\bassign\s+(?P<lhs>[^=]+?)\s*=\s*(?P<rhs>.+)$", code)
            if am is None:
                continue
            lhs = am.group("lhs").split("[")[0].strip()
            rs = am.start("rhs")
            rhs = am.group("rhs")
            for lit in _LITERAL.finditer(rhs):
                out.append(
                    VerilogSite(
                        rel,
                        ln,
                        rs + lit.start(),
                        rs + lit.end(),
                        "literal",
                        lit.group(),
                        lhs,
                        "assigned literal",
                    )
                )
            for sel in _SELECT.finditer(rhs):
                sid = sel.group("id")
                if sid not in widths:
                    continue
                out.append(
                    VerilogSite(
                        rel,
                        ln,
                        rs + sel.start(),
                        rs + sel.end(),
                        "select",
                        sel.group(),
                        lhs,
                        sid,
                        widths[sid],
                    )
                )
    return out


def _mutate_verilog_token(site: VerilogSite, rng: np.random.Generator) -> str | None:
    """A different token for ``site`` that keeps the file valid Verilog, or None."""
    if site.category == "param":
        old = int(site.old)
        pname = site.what.split(".")[1]
        if pname in _FLAGS:
            return str(1 - old) if old in (0, 1) else None
        if pname.startswith("SHIFT"):
            return str(old + int(rng.choice([-1, 1])))
        new = old + int(rng.choice([-1, 1]))  # a width
        return str(new if new >= 1 else old + 1)
    if site.category == "literal":
        m = _LITERAL.fullmatch(site.old)
        assert m is not None
        base = m.group("base").lower()
        digits = m.group("digits").replace("_", "")
        radix = {"b": 2, "h": 16, "d": 10}[base]
        val = int(digits, radix)
        nbits = (
            int(m.group("w"))
            if m.group("w")
            else max(1, val.bit_length(), len(digits) if radix == 2 else 1)
        )
        new = val ^ (1 << int(rng.integers(nbits)))
        if radix == 2:
            body = format(new, "b").zfill(len(digits)) if m.group("w") == "" else format(new, "b")
        elif radix == 16:
            body = format(new, "x")
        else:
            body = str(new)
        return f"{m.group('w')}'{m.group('base')}{body}"
    m = _SELECT.fullmatch(site.old)
    assert m is not None
    a = int(m.group("a"))
    b = int(m.group("b")) if m.group("b") is not None else None
    lo = a if b is None else b
    hi = a
    d = int(rng.choice([-1, 1]))
    for step in (d, -d):
        if 0 <= lo + step and hi + step < site.limit:
            if b is None:
                return f"{m.group('id')}[{a + step}]"
            return f"{m.group('id')}[{a + step}:{b + step}]"
    return None


_PV_CACHE: dict[str, list[str]] = {}
_PV_PARSER: dict[str, Any] = {}


def pyverilog_lines(text: str, workdir: Path) -> list[str]:
    """pyverilog's regenerated code of a module (AST -> text), one line per element.

    Used to prove that a mutant is valid Verilog and differs from the original
    in exactly one constant. pyverilog's preprocessor needs ``iverilog``; the
    parser is called directly on the text with the `` `timescale `` line removed.
    """
    key = hashlib.sha256(text.encode()).hexdigest()
    if key in _PV_CACHE:
        return _PV_CACHE[key]
    from pyverilog.ast_code_generator.codegen import ASTCodeGenerator
    from pyverilog.vparser.parser import VerilogParser

    workdir.mkdir(parents=True, exist_ok=True)
    clean = re.sub(r"^\s*`timescale.*$", "", text, flags=re.M)
    with contextlib.redirect_stdout(sys.stderr):
        if "parser" not in _PV_PARSER:  # building PLY's tables takes about a second
            _PV_PARSER["parser"] = VerilogParser(outputdir=str(workdir), debug=False)
        ast = _PV_PARSER["parser"].parse(clean, debug=0)
    lines = [ln.strip() for ln in ASTCodeGenerator().visit(ast).splitlines() if ln.strip()]
    _PV_CACHE[key] = lines
    return lines


class VerilogMutator(Mutator):
    """One integer constant of the shipped Verilog: instance parameter, literal bit or select offset."""

    kind = "verilog"

    def __init__(self, validate: bool = True) -> None:
        self.validate = validate

    def sites(self, run_dir: Path) -> list[VerilogSite]:
        if not (Path(run_dir) / "rtl" / "edgeml_rtl.json").is_file():
            raise MissingRunError(f"run '{run_dir}' has no RTL (rtl/edgeml_rtl.json)")
        return verilog_sites(Path(run_dir))

    def apply(self, ws: Workspace, sites: list[VerilogSite], rng: np.random.Generator) -> Mutant:
        cats = sorted({s.category for s in sites})
        for _ in range(200):
            cat = cats[int(rng.integers(len(cats)))]
            cand = [s for s in sites if s.category == cat]
            site = cand[int(rng.integers(len(cand)))]
            new = _mutate_verilog_token(site, rng)
            if new is not None and new != site.old:
                break
        else:  # pragma: no cover - every design has mutable parameters
            raise EdgemlError("no mutable Verilog constant found")
        path = ws.run / site.file
        lines = path.read_text().split("\n")
        line = lines[site.line - 1]
        assert line[site.start : site.end] == site.old, (line, site)
        lines[site.line - 1] = line[: site.start] + new + line[site.end :]
        new_text = "\n".join(lines)
        valid = None
        if self.validate:
            valid = self._validate(ws, site, path.read_text(), new_text)
        path.write_text(new_text)
        if site.category == "param":
            mod, pname = site.what.split(".")
            where = f"{site.where} ({mod}) parameter {pname}"
        elif site.category == "literal":
            where = f"literal {'in' if site.what == 'port literal' else 'assigned to'} {site.where}"
        else:
            where = f"select of {site.what} assigned to {site.where}"
        return Mutant(
            kind=self.kind,
            file=site.file,
            location=f"line {site.line}: {where}",
            old=site.old,
            new=new,
            layer=f"{site.file}:{site.line} {site.where}",
            detail={
                "line": site.line,
                "category": site.category,
                "instance": site.where,
                "what": site.what,
                "module": Path(site.file).stem,
                "pyverilog_one_change": valid,
            },
        )

    @staticmethod
    def _validate(ws: Workspace, site: VerilogSite, old_text: str, new_text: str) -> bool | str:
        """pyverilog parses the mutant and its AST differs from the original's in one place."""
        try:
            a = pyverilog_lines(old_text, ws.root / "pyverilog")
            b = pyverilog_lines(new_text, ws.root / "pyverilog")
        except Exception as exc:  # pyverilog raises plain exceptions on syntax it lacks
            return f"pyverilog cannot parse: {type(exc).__name__}: {str(exc)[:120]}"
        if len(a) != len(b):
            return False
        diff = [i for i, (u, v) in enumerate(zip(a, b, strict=True)) if u != v]
        return len(diff) == 1

    def check(
        self, ws: Workspace, m: Mutant, base: Baseline
    ) -> tuple[bool | None, int | None, str]:
        sim = base.netlist
        if sim is None:
            return self._check_verilator(ws, m, base, base.netlist_note)
        mod = m.detail["module"]
        try:
            sim1 = sim.with_file(ws.run / m.file)
            probe = m.detail["instance"]
            out0, p0 = sim.predict(base.x, probe=(mod, probe))
            out1, p1 = sim1.predict(base.x, probe=(mod, probe))
        except NetlistUnsupported as exc:
            log.info(
                "mutate: netlist interpreter cannot run this mutant (%s); using Verilator", exc
            )
            m.detail["interpreter"] = str(exc)
            return self._check_verilator(ws, m, base, f"the netlist interpreter refuses it ({exc})")
        bad = (out0 != out1).reshape(len(base.x), -1).any(axis=1)
        n = int(bad.sum())
        if n:
            try:
                if base.layer_map is None:
                    base.layer_map = LayerMap(base.golden, base.x, base.netlist)
                label = base.layer_map.first_layer(sim, sim1, base.x[np.flatnonzero(bad)[:256]])
            except NetlistUnsupported:
                label = None
            if label is not None:
                m.golden_op = label.split(" (")[0]
                m.detail["golden_layer"] = label
            return True, n, ""
        if np.array_equal(p0, p1):
            return False, 0, f"{m.detail['instance']}'s value is unchanged on every vector"
        k = int((p0 != p1).sum())
        return (
            False,
            0,
            (
                f"{m.detail['instance']} changes on {k} vectors, but its readers (part-selects, "
                "ReLU masks, muxes) discard the change before any output"
            ),
        )

    @staticmethod
    def _check_verilator(
        ws: Workspace, m: Mutant, base: Baseline, why: str = ""
    ) -> tuple[bool | None, int | None, str]:
        """Build the mutated Verilog with Verilator (not through verify) and compare with golden."""
        from edgeml.rtl import RtlBuildError, RtlDesign

        d = RtlDesign.load(ws.run / "rtl")
        try:
            d.build(use_cache=False)
        except RtlBuildError as exc:
            return None, None, f"does not build: {str(exc)[-200:]}"
        got = d.predict_int(base.x)
        n = int((got != base.ref).reshape(len(base.x), -1).any(axis=1).sum())
        return (
            n > 0,
            n,
            ""
            if n
            else f"{why + '; ' if why else ''}the mutant built by Verilator gives every output "
            "code unchanged",
        )


MUTATORS: dict[str, Callable[[], Mutator]] = {
    "verilog": VerilogMutator,
    "hls_header": HlsHeaderMutator,
    "qonnx": QonnxMutator,
    "golden": GoldenMutator,
}


# =========================================================================== netlist interpreter


def _level_named(m: Mutant, lv: dict[str, Any]) -> bool:
    """Does this failing level name the mutant's place (file and line, or the golden op)?"""
    name = lv.get("first_divergent_layer") or ""
    note = lv.get("note") or ""
    if m.kind == "verilog":
        at = f"{m.file}:{m.detail['line']}"
        return f"{at} " in name or name.endswith(at)
    if m.kind == "hls_header":
        return (
            lv["level"] == "hls4ml weight headers"
            and f"{m.file}[{m.detail['index']}]" in note
            and (m.golden_op is None or name.startswith(f"{m.golden_op} ("))
        )
    return bool(m.golden_op) and name.startswith(f"{m.golden_op} (")


def _named(m: Mutant, levels: list[dict[str, Any]]) -> tuple[bool | None, str | None]:
    """Does a failing level name the mutant's place? Returns (ok, the first level that did)."""
    failing = [lv for lv in levels if lv.get("status") == "FAIL"]
    if not failing:
        return None, None
    for lv in failing:
        if _level_named(m, lv):
            return True, lv["level"]
    return False, None


def _golden_layer_ok(m: Mutant, levels: list[dict[str, Any]]) -> bool | None:
    """Verilog: does verify's ``"<op> (<kind>) at <file>:<line>"`` name the layer the mutant hits?"""
    if m.kind != "verilog" or not m.detail.get("golden_layer"):
        return None
    rtl = next(
        (lv for lv in levels if lv["level"] == "RTL (Verilator)" and lv["status"] == "FAIL"), None
    )
    if rtl is None:
        return None
    mm = re.match(r"(\S+ \(\w+\)) at ", rtl.get("first_divergent_layer") or "")
    if mm is None:
        return None
    m.detail["verify_golden_layer"] = mm.group(1)
    return mm.group(1) == m.detail["golden_layer"]


def _layer_group(ops: Sequence[Any], name: str) -> int | None:
    """Index of the Dense/Conv that starts the hardware layer holding op ``name`` (-1 before the first)."""
    group = -1
    for i, op in enumerate(ops):
        if op.kind in ("dense", "conv"):
            group = i
        if op.name == name:
            return group
    return None


def _level_names(levels: list[dict[str, Any]]) -> dict[str, str | None]:
    return {
        lv["level"]: lv.get("first_divergent_layer") for lv in levels if lv.get("status") == "FAIL"
    }


def _mutant_rng(seed: int, kind: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, KINDS.index(kind), i])


def run_mutation_campaign(
    run_dir: str | Path,
    n_per_kind: int | Mapping[str, int] = 10,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    progress: bool = True,
    *,
    n_random: int | None = None,
    workdir: str | Path | None = None,
    verify: Callable[..., dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Make ``n_per_kind`` single-constant mutants of each artifact kind, verify each, classify.

    Every mutant is applied to one working copy of the run folder (made under
    ``workdir`` or a temporary folder, with its hls4ml project) and undone
    after verify ran; ``run_dir`` itself is never written. Returns the report
    (``summary`` per kind, every mutant's ``results``, ``escaped``: the verify
    bugs, ``misnamed``: caught but not named at the mutated layer).
    ``verify`` defaults to :func:`edgeml.flow.verify_run` (a test can pass a spy).
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir).resolve()
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError(f"unknown mutant kind(s) {unknown}; allowed: {', '.join(KINDS)}")
    counts = (
        {k: int(n_per_kind.get(k, 0)) for k in kinds}
        if isinstance(n_per_kind, Mapping)
        else dict.fromkeys(kinds, int(n_per_kind))
    )
    if any(n < 0 for n in counts.values()) or not any(counts.values()):
        raise ConfigError(f"mutants per kind must be >= 0 and not all 0, got {n_per_kind}")
    kinds = [k for k in kinds if counts[k]]
    if not (run_dir / "config.json").is_file():
        raise MissingRunError(
            f"'{run_dir}' is not a run folder (no config.json): run `edgeml flow` first"
        )
    if verify is None:
        from edgeml.flow import verify_run as verify
    t_start = time.time()
    base = Baseline.load(run_dir, n_random=n_random, netlist="verilog" in kinds)
    tmp_ctx = tempfile.TemporaryDirectory(prefix="edgeml_mutate_", dir=workdir)
    results: list[MutantResult] = []
    with tmp_ctx as tmp, _quiet("edgeml.flow", "edgeml.hls", "edgeml.rtl"):
        ws = Workspace(run_dir, Path(tmp))
        control = verify(ws.run, n_random=n_random, progress=False)
        if not control.get("passed"):
            bad = [lv["level"] for lv in control["levels"] if lv["status"] == "FAIL"]
            raise EdgemlError(
                f"the unmutated run does not pass verify ({', '.join(bad)} FAIL): mutation testing "
                "needs a clean run; fix it (or re-run `edgeml flow`) first"
            )
        ws.freeze()
        mutators = {k: MUTATORS[k]() for k in kinds}
        sites = {k: mutators[k].sites(run_dir) for k in kinds}
        jobs = [(k, i) for k in kinds for i in range(counts[k]) if sites[k]]
        bar = tqdm(jobs, desc="mutants", unit="mutant", disable=not progress)
        for kind, i in bar:
            bar.set_postfix_str(kind)
            results.append(
                _one(
                    ws,
                    mutators[kind],
                    sites[kind],
                    _mutant_rng(seed, kind, i),
                    base,
                    verify,
                    n_random,
                )
            )
            ws.restore()
    report = {
        "run": str(run_dir),
        "seed": seed,
        "n_per_kind": counts,
        "kinds": list(kinds),
        "vectors": len(base.x),
        "netlist_interpreter": base.netlist is not None,
        "netlist_note": base.netlist_note,
        "seconds": round(time.time() - t_start, 1),
        "summary": summarise(results),
        "results": [r.to_dict() for r in results],
    }
    report["escaped"] = [r.to_dict() for r in results if r.outcome == "escaped"]
    report["misnamed"] = [
        r.to_dict() for r in results if r.outcome == "caught" and r.named_ok is False
    ]
    return report


@contextlib.contextmanager
def _quiet(*names: str) -> Any:
    """Silence verify's per-mutant warnings (every mutant drifts from the manifest by design)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _one(
    ws: Workspace,
    mutator: Mutator,
    sites: list[Any],
    rng: np.random.Generator,
    base: Baseline,
    verify: Callable[..., dict[str, Any]],
    n_random: int | None,
) -> MutantResult:
    t0 = time.time()
    m = mutator.apply(ws, sites, rng)
    res = classify_mutant(ws, mutator, m, base, verify, n_random)
    res.seconds = round(time.time() - t0, 2)
    return res


def classify_mutant(
    ws: Workspace,
    mutator: Mutator,
    m: Mutant,
    base: Baseline,
    verify: Callable[..., dict[str, Any]] | None = None,
    n_random: int | None = None,
) -> MutantResult:
    """Check an applied mutant independently, run verify on the working copy, and classify it."""
    if verify is None:
        from edgeml.flow import verify_run as verify
    t0 = time.time()
    res = MutantResult(m, "error")
    try:
        changes, n_bad, why = mutator.check(ws, m, base)
    except Exception as exc:  # the independent check must not hide verify's verdict
        log.warning("mutate: independent check of %s failed: %s", m.describe(), exc)
        changes, n_bad, why = None, None, f"independent check failed: {type(exc).__name__}: {exc}"
    res.changes_output, res.mismatching_vectors = changes, n_bad
    t1 = time.time()
    try:
        info = verify(ws.run, n_random=n_random, progress=False, rtl_cache=False)
    except EdgemlError as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        res.verify_seconds = time.time() - t1
        res.seconds = time.time() - t0
        return res
    res.verify_seconds = round(time.time() - t1, 2)
    levels = info.get("levels", [])
    res.failed_levels = [lv["level"] for lv in levels if lv.get("status") == "FAIL"]
    res.named = _level_names(levels)
    res.drift = [d["file"] for d in info.get("drift", [])]
    if res.failed_levels:
        rtl = next((lv for lv in levels if lv["level"] == "RTL (Verilator)"), None)
        only_build = (
            res.failed_levels == ["RTL (Verilator)"]
            and rtl is not None
            and "does not build" in (rtl.get("note") or "")
        )
        res.outcome = "build" if only_build else "caught"
        res.named_ok, res.named_by = _named(m, levels)
        res.level_named = {
            lv["level"]: _level_named(m, lv) for lv in levels if lv.get("status") == "FAIL"
        }
        res.golden_layer_ok = _golden_layer_ok(m, levels)
        if res.golden_layer_ok is not None:
            ops = base.golden.ops
            ours = _layer_group(ops, m.detail["golden_layer"].split(" (")[0])
            theirs = _layer_group(ops, m.detail["verify_golden_layer"].split(" (")[0])
            res.golden_group_ok = ours is not None and ours == theirs
        res.reason = why
    elif changes is False:
        res.outcome = "equivalent"
        res.reason = why
    elif changes is True:
        res.outcome = "escaped"
        res.reason = f"verify passed, but the mutant changes outputs on {n_bad} vectors"
        log.error("mutate: VERIFY MISSED %s (%s)", m.describe(), res.reason)
    else:
        res.outcome = "undecided"
        res.reason = why
    res.seconds = round(time.time() - t0, 2)
    return res


def summarise(results: Sequence[MutantResult]) -> dict[str, dict[str, Any]]:
    """Per kind: mutants, caught, build, named (of caught), equivalent with reasons, escaped."""
    out: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        rs = [r for r in results if r.mutant.kind == kind]
        if not rs:
            continue
        caught = [r for r in rs if r.outcome == "caught"]
        eq = [r for r in rs if r.outcome == "equivalent"]
        changing = [r for r in rs if r.changes_output]
        out[kind] = {
            "mutants": len(rs),
            "caught": len(caught),
            "build": sum(r.outcome == "build" for r in rs),
            "named": sum(bool(r.named_ok) for r in caught),
            "equivalent": len(eq),
            "equivalent_reasons": [r.reason for r in eq],
            "escaped": sum(r.outcome == "escaped" for r in rs),
            "error": sum(r.outcome == "error" for r in rs),
            "undecided": sum(r.outcome == "undecided" for r in rs),
            "changing_outputs": len(changing),
            "changing_caught": sum(r.outcome in ("caught", "build") for r in changing),
            "caught_without_output_change": sum(
                r.outcome == "caught" and r.changes_output is False for r in rs
            ),
            "seconds": round(sum(r.seconds for r in rs), 1),
            "by_level": _by_level(caught),
            "golden_layer_checked": sum(r.golden_layer_ok is not None for r in rs),
            "golden_layer_agrees": sum(bool(r.golden_layer_ok) for r in rs),
            "golden_layer_same_group": sum(bool(r.golden_group_ok) for r in rs),
        }
    return out


def _by_level(results: Sequence[MutantResult]) -> dict[str, dict[str, int]]:
    """Per verify level: how many of these mutants it failed on, and how many of those it named."""
    out: dict[str, dict[str, int]] = {}
    for r in results:
        for level, ok in r.level_named.items():
            d = out.setdefault(level, {"failed": 0, "named": 0})
            d["failed"] += 1
            d["named"] += int(ok)
    return out


def format_summary(report: dict[str, Any]) -> str:
    """The campaign as a table, then every escaped or misnamed mutant and the equivalent ones."""
    rows = [
        (
            "kind",
            "mutants",
            "caught",
            "named",
            "build",
            "equivalent",
            "escaped",
            "other",
            "seconds",
        ),
    ]
    tot = dict.fromkeys(
        ("mutants", "caught", "named", "build", "equivalent", "escaped", "other"), 0
    )
    for kind, s in report["summary"].items():
        other = s["error"] + s["undecided"]
        rows.append(
            (
                kind,
                s["mutants"],
                s["caught"],
                s["named"],
                s["build"],
                s["equivalent"],
                s["escaped"],
                other,
                s["seconds"],
            )
        )
        for k in tot:
            tot[k] += other if k == "other" else s[k]
    rows.append(("all", *tot.values(), report["seconds"]))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            str(v).rjust(w) if j else str(v).ljust(w)
            for j, (v, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(
        0,
        f"mutation testing of verify: {report['run']} ({report['vectors']} vectors, seed {report['seed']})",
    )
    for kind, s in report["summary"].items():
        per = s.get("by_level") or {}
        if per:
            parts = [f"{lv} {d['named']}/{d['failed']}" for lv, d in per.items()]
            lines.append(f"{kind}: failing levels that named the mutated place: {'; '.join(parts)}")
        if s.get("golden_layer_checked"):
            lines.append(
                f"{kind}: verify's golden layer for the edited line agrees with the netlist "
                f"interpreter's in {s['golden_layer_agrees']}/{s['golden_layer_checked']} "
                f"(same Dense/Conv layer: {s['golden_layer_same_group']})"
            )
    changing = sum(s["changing_outputs"] for s in report["summary"].values())
    caught_changing = sum(s["changing_caught"] for s in report["summary"].values())
    if changing:
        lines.append(
            f"mutants that change an output: {changing}; caught {caught_changing} "
            f"({100.0 * caught_changing / changing:.1f} %)"
        )
    if report["escaped"]:
        lines.append("")
        lines.append(f"VERIFY MISSED {len(report['escaped'])} MUTANT(S) THAT CHANGE OUTPUTS:")
        for r in report["escaped"]:
            lines.append(f"  {_mdesc(r['mutant'])}: {r['reason']}")
    wrong_layer = [r for r in report["results"] if r.get("golden_layer_ok") is False]
    if wrong_layer:
        lines.append("")
        lines.append(
            "Verilog edits named at the right line but another golden layer than they hit:"
        )
        for r in wrong_layer:
            d = r["mutant"]["detail"]
            lines.append(
                f"  {_mdesc(r['mutant'])}: verify says {d.get('verify_golden_layer')}, "
                f"the change first reaches {d.get('golden_layer')}"
            )
    if report["misnamed"]:
        lines.append("")
        lines.append(f"caught but not named at the mutated layer ({len(report['misnamed'])}):")
        for r in report["misnamed"]:
            lines.append(f"  {_mdesc(r['mutant'])}: verify named {r['named']}")
    others = [r for r in report["results"] if r["outcome"] in ("error", "undecided")]
    if others:
        lines.append("")
        lines.append("not classified:")
        for r in others:
            lines.append(f"  {_mdesc(r['mutant'])}: {r['outcome']} {r['error'] or r['reason']}")
    eqs = [r for r in report["results"] if r["outcome"] == "equivalent"]
    if eqs:
        lines.append("")
        lines.append("equivalent mutants (no output changes on the verification vectors):")
        for r in eqs:
            lines.append(f"  {_mdesc(r['mutant'])}: {r['reason']}")
    return "\n".join(lines)


def _mdesc(m: dict[str, Any]) -> str:
    return f"{m['kind']} {m['file']} {m['location']}: {m['old']} -> {m['new']}"


# =========================================================================== CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edgeml.mutate",
        description="Mutation testing of `edgeml verify`: change one constant of one artifact "
        "(Verilog, hls4ml weight header, QONNX initialiser, golden IR), verify the copy, and "
        "report the share caught, whether verify named the mutated layer, and the equivalent "
        "mutants with the reason they change no output. The run folder is never written.",
    )
    p.add_argument("--run", type=Path, required=True, help="run folder made by `edgeml flow`")
    p.add_argument("--n", type=int, default=10, help="mutants per kind (default 10)")
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated kinds (default all: {','.join(KINDS)})",
    )
    p.add_argument(
        "--n-verilog",
        type=int,
        help="Verilog mutants (default: --n); each needs a Verilator build (20-60 s)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--vectors",
        type=int,
        help="random verification vectors (default: the run's verify.n_random)",
    )
    p.add_argument("--out", type=Path, help="write the full report as JSON here")
    p.add_argument(
        "--workdir", type=Path, help="where the working copy goes (default: a temp folder)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when no mutant escaped, 3 when verify missed one, 2 on a usage error, 1 on others."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    try:
        report = run_mutation_campaign(
            args.run,
            n_per_kind={
                k: args.n_verilog if k == "verilog" and args.n_verilog is not None else args.n
                for k in kinds
            },
            seed=args.seed,
            kinds=kinds,
            progress=not args.quiet,
            n_random=args.vectors,
            workdir=args.workdir,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EdgemlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(format_summary(report))
    if args.out:
        from edgeml.manifest import write_json

        write_json(args.out, report)
        print(f"report: {args.out}")
    return 3 if report["escaped"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
