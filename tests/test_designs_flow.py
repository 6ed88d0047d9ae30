"""Each physics design makes the whole trip through the flow, bit-exact at every level.

Short training (the metric is not the point here; exactness is): train, QAT,
pruning, QONNX, golden model, hls4ml C-sim, RTL under Verilator, cocotb bench,
verify over >= 10,000 vectors, fault campaign with its analysis, report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeml.cli import EXIT_OK, main

QUICK = {
    "train": {"epochs_float": 2, "epochs_qat": 1, "epochs_finetune": 1},
    "faults": {"max_samples": 300},
}


@pytest.mark.slow
@pytest.mark.hls
@pytest.mark.rtl
@pytest.mark.parametrize("design", ["jet", "econt"])
def test_design_whole_trip_is_bit_exact(design: str, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "quick.json"
    cfg.write_text(json.dumps(QUICK))
    out = tmp_path / design
    rc = main(["flow", "--design", design, "--out", str(out), "--config", str(cfg),
               "--hls-dir", str(tmp_path / "hls"), "-q"])  # fmt: skip
    assert rc == EXIT_OK, capsys.readouterr().err
    verify = json.loads((out / "verify.json").read_text())
    assert verify["vectors"] >= 10_000 and verify["passed"]
    levels = {lv["level"]: lv for lv in verify["levels"]}
    for name in ("hls4ml C-sim", "RTL (Verilator)", "trained Brevitas model"):
        assert levels[name]["status"] == "PASS", levels[name]
        assert levels[name]["mismatching_vectors"] == 0 and levels[name]["vectors"] >= 10_000
    rtl = json.loads((out / "rtl.json").read_text())
    assert rtl["cocotb"]["mismatches"] == 0 and rtl["cocotb"]["vectors"] == 200
    comp = json.loads((out / "compress.json").read_text())
    expected = {"jet": 0.75, "econt": 0.5}[design]  # the design's default sparsity
    assert abs(comp["sparsity"] - expected) < 0.02
    assert comp["metric"] == ("accuracy" if design == "jet" else "emd")
    faults = json.loads((out / "faults" / "summary.json").read_text())
    assert faults["sdc_mode"] == ("top1" if design == "jet" else "any")
    assert faults["faults"] > 10_000
    assert (out / "report.html").stat().st_size > 50_000
