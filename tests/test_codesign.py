"""edgeml codesign: target/budget parsing, the Pareto front and the choice, and a small search."""

from __future__ import annotations

import json
from html import escape

import numpy as np
import pytest

from edgeml.codesign import (
    Candidate,
    choose,
    fault_figures,
    markdown_table,
    pareto_front,
    parse_fraction,
    parse_target,
)
from edgeml.errors import ConfigError


def test_targets_parse_relative_and_absolute_bounds() -> None:
    t = parse_target("accuracy>=float-1pp", "accuracy", True)
    assert t.relative and t.delta == pytest.approx(-0.01)
    assert t.threshold(0.70) == pytest.approx(0.69)
    assert t.met(0.6901, 0.70) and not t.met(0.6899, 0.70)
    assert t.shortfall(0.68, 0.70) == pytest.approx(0.01)
    a = parse_target("accuracy >= 65%", "accuracy", True)
    assert not a.relative and a.threshold(0.9) == pytest.approx(0.65)
    e = parse_target("emd<=float+0.1", "emd", False)
    assert e.threshold(1.0) == pytest.approx(1.1) and e.met(1.05, 1.0) and not e.met(1.2, 1.0)
    assert parse_target("accuracy>=float", "accuracy", True).threshold(0.7) == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("text", "metric", "hib", "needle"),
    [
        ("acc>=float-1pp", "accuracy", True, "this design's metric is 'accuracy'"),
        ("accuracy<=float", "accuracy", True, "higher-is-better"),
        ("accuracy>float-1", "accuracy", True, "must look like"),
        ("accuracy>=float-1pp; rm -rf /", "accuracy", True, "must look like"),
    ],
)
def test_bad_targets_say_what_is_allowed(text: str, metric: str, hib: bool, needle: str) -> None:
    with pytest.raises(ConfigError, match="") as exc:
        parse_target(text, metric, hib)
    assert needle in str(exc.value)


def test_fractions_and_percentages() -> None:
    assert parse_fraction("0.5%", "--budget-sdc") == pytest.approx(0.005)
    assert parse_fraction("0.005", "--budget-sdc") == pytest.approx(0.005)
    for bad in ("150%", "-1", "half"):
        with pytest.raises(ConfigError, match="--budget-sdc"):
            parse_fraction(bad, "--budget-sdc")


def _cand(key: str, metric: float, lut: float, sdc: float) -> Candidate:
    return Candidate(key, 6, {}, 0.5, metric, 0.70, lut, sdc, 2 * sdc, 1000)


def test_pareto_front_and_choice() -> None:
    cands = [
        _cand("a", 0.700, 20_000, 0.010),  # best metric
        _cand("b", 0.695, 12_000, 0.008),  # cheaper and more robust: on the front
        _cand("c", 0.690, 13_000, 0.009),  # dominated by b
        _cand("d", 0.650, 5_000, 0.004),  # cheapest, but misses the target
        _cand("e", 0.696, 14_000, 0.003),  # most robust within the target
    ]
    assert sorted(pareto_front(cands, True)) == [0, 1, 3, 4]
    t = parse_target("accuracy>=float-1pp", "accuracy", True)
    i, status = choose(cands, t, 15_000, 0.009, True)
    assert status == "meets all" and cands[i].key == "b"  # fewest LUTs that meet everything
    assert [c.pareto for c in cands] == [True, True, False, True, True]
    assert [c.feasible for c in cands] == [False, True, True, False, True]
    i, status = choose(cands, t, 15_000, 0.005, True)  # the SDC budget rules b out
    assert status == "meets all" and cands[i].key == "e"
    i, status = choose(cands, t, 15_000, 0.001, True)  # no SDC fits: cheapest that fits, hardened
    assert status == "harden" and cands[i].key == "b"
    i, status = choose(cands, t, 4_000, 0.001, True)  # nothing fits: the least violation
    assert status == "closest" and cands[i].violation > 0


def test_fault_figures_from_a_campaign() -> None:
    from edgeml.fault_injection.campaign import CampaignResult

    n = 200
    sdc = np.zeros(n)
    sdc[:10] = 0.5  # ten bias bits with SDC, two of them in the top 1 %
    sdc[0] = sdc[1] = 0.9
    sdc[150] = 0.1  # one weight bit
    param = np.zeros(n, np.int64)
    param[:20] = 1
    res = CampaignResult(
        layer=np.zeros(n, np.int64), param=param, index=np.arange(n), bit=np.zeros(n, np.int64),
        kind=np.zeros(n, np.int64), acc_drop=np.zeros(n), sdc_rate=sdc, max_dev=np.zeros(n),
        baseline_accuracy=0.7, n_samples=100, layer_names=["fc1"], seconds=0.1,
    )  # fmt: skip
    f = fault_figures(res)
    assert f["stored_bits"] == 200 and f["bias_bits"] == 20 and f["critical_bits"] == 11
    assert f["mean_sdc"] == pytest.approx(sdc.sum() / 200)
    assert f["top1pct_sdc"] == pytest.approx(0.9)  # ceil(1 % of 200) = 2 bits
    assert f["bias_sdc_share"] == pytest.approx((sdc.sum() - 0.1) / sdc.sum())


def test_markdown_table_has_every_row() -> None:
    row = {
        "bit_width": 6, "layer_bits": {"fc1": 4}, "min_widths": True, "sparsity": 0.75,
        "stored_bits": 1234, "bias_bits": 100, "lut": 9000, "ff": 800, "lut_estimate": 9500.4,
        "latency_cycles": 6, "metric": 0.7012, "metric_name": "accuracy", "mean_sdc": 0.0123,
        "top1pct_sdc": 0.4, "bias_sdc_share": 0.05, "verify_levels": ["a", "b"],
        "verify_mismatches": 0,
    }  # fmt: skip
    md = markdown_table({"before": row, "after": row})
    assert "| LUT (yosys synth_xilinx) | 9,000 | 9,000 |" in md
    assert "| precision | fc1 4b, minimal bias widths |" in md
    assert "| mean SDC (weight/bias bits) | 1.230 % | 1.230 % |" in md


def test_cli_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    from edgeml.cli import main

    code = main(["codesign", "--design", "jet", "--target", "acc>=0.5", "-q"])
    assert code != 0
    assert "this design's metric is 'accuracy'" in capsys.readouterr().err
    code = main(["codesign", "--design", "nope", "-q"])
    assert code != 0 and "--design must be one of" in capsys.readouterr().err


@pytest.mark.slow
def test_small_search_resumes_and_writes_outputs(tmp_path) -> None:
    """A real search on the digits MLP: candidates measured, front, choice, files; a rerun
    reads every point from the cache."""
    from edgeml.codesign import CodesignConfig, codesign

    cfg = CodesignConfig(
        design="mlp", target="accuracy>=float-5pp", budget_sdc="5%", bits=(4, 6),
        sparsities=(0.5,), mixed=1, epochs_scale=0.05, fault_samples=100, workers=1,
        out=tmp_path / "cd", progress=False, build=False,
    )  # fmt: skip
    res = codesign(cfg)
    assert len(res.candidates) == 3  # 4 bit, 6 bit, one mixed assignment
    assert any(c["layer_bits"] for c in res.candidates)
    assert any(c["pareto"] for c in res.candidates)
    for c in res.candidates:
        assert 0.0 < c["metric"] <= 1.0 and c["lut"] > 0 and 0.0 <= c["mean_sdc"] <= 1.0
    doc = json.loads((tmp_path / "cd" / "codesign.json").read_text())
    assert doc["chosen"] == res.chosen and (tmp_path / "cd" / "pareto.png").stat().st_size > 0
    points = sorted((tmp_path / "cd" / "points").glob("*.json"))
    assert len(points) == 3
    before = [p.stat().st_mtime_ns for p in points]
    again = codesign(cfg)  # resumes: nothing retrained, same answer
    assert [p.stat().st_mtime_ns for p in points] == before
    assert again.chosen == res.chosen


@pytest.mark.slow
@pytest.mark.hls
@pytest.mark.rtl
def test_flow_with_min_widths_is_exact_at_every_level(mlp_flow_run, tmp_path) -> None:
    """`compress.min_widths` on a finished run: export narrows the biases (fewer stored bits),
    convert gives hls4ml the interval-minimal accumulators, and verify passes every level of
    the files that ship; then the co-design figures and report section come from that run."""
    from edgeml.codesign import CodesignResult, _chosen_report, build_design
    from edgeml.config import validate_config
    from edgeml.flow import Context, run_flow
    from edgeml.golden import GoldenModel
    from edgeml.manifest import RunFolder, read_json
    from edgeml.mutate import copy_run

    run, _hls = mlp_flow_run
    before = GoldenModel.from_onnx(run / "model.qonnx.onnx")
    work = copy_run(run, tmp_path / "copy")
    data = read_json(work / "config.json")
    data["compress"]["min_widths"] = True
    cfg = validate_config(data)
    stages = ("export", "convert", "rtl", "verify", "faults")
    ctx = Context(RunFolder(work), cfg, hls_root=tmp_path / "hls", progress=False)
    run_flow(ctx, stages)

    mw = read_json(work / "minwidth.json")
    after = GoldenModel.from_onnx(work / "model.qonnx.onnx")
    assert mw["bias_bits_after"] < mw["bias_bits_before"]
    widths = [op.bias_type.width for op in after.param_ops]
    assert widths == [lw["bias_bits_after"] for lw in mw["layers"]] and max(widths) < 16
    from edgeml.fault_injection.sites import count_param_sites

    removed = mw["bias_bits_before"] - mw["bias_bits_after"]
    assert count_param_sites(after) == count_param_sites(before) - removed
    from edgeml.flow import recorded_hls_project

    defines = (recorded_hls_project(work) / "firmware" / "defines.h").read_text()
    for layer, t in mw["hls_accum"].items():  # the exact minimal accumulators reached C++
        assert f"typedef ap_{t} dense_{layer.lower()}_accum_t;" in defines
    verify = read_json(work / "verify.json")
    assert verify["passed"]
    levels = {lv["level"]: lv for lv in verify["levels"]}
    assert {"hls4ml C-sim", "RTL (Verilator)", "trained Brevitas model"} <= set(levels)
    assert all(lv["mismatching_vectors"] == 0 for lv in levels.values())
    x = np.random.default_rng(0).integers(
        before.input_type.qmin, before.input_type.qmax + 1, (2000, *before.input_shape)
    )
    assert np.array_equal(after.predict(x), before.predict(x))  # identical outputs

    # protecting weight/bias words for an SDC budget: predicted from the campaign, exact C-sim
    from edgeml.codesign import harden_parameters

    mean = read_json(work / "faults" / "summary.json")["mean_sdc_rate"]
    ph = harden_parameters(work, mean / 2, n_vectors=2000)
    assert ph["meets_budget"] and ph["predicted_mean_sdc_after"] <= mean / 2 < ph["mean_sdc_before"]
    assert 0 < ph["protected_words"] < ph["words_total"]
    assert ph["csim_mismatches"] == 0 and ph["csim_mismatches_with_corrupted_words"] == 0

    # the co-design figures and report section read this run as a built design
    row = build_design(work, cfg, resume=True, progress=False)
    assert row["min_widths"] and row["verify_passed"] and row["verify_mismatches"] == 0
    assert row["lut"] > 0 and row["latency_cycles"] >= 1
    cand = {"key": "k", "bits": 6, "layer_bits": {}, "sparsity": 0.5, "metric": row["metric"],
            "float_metric": row["metric"], "lut": 1000.0, "mean_sdc": 0.01, "top1pct_sdc": 0.2,
            "stored_bits": 100, "pareto": True, "feasible": True, "violation": 0.0,
            "label": "6b, sparsity 0.50"}  # fmt: skip
    res = CodesignResult(
        config={"design": "mlp", "budget_lut": None, "budget_sdc": None},
        target={"metric": "accuracy", "op": ">=", "relative": True, "delta": -0.01,
                "text": "accuracy>=float-1pp", "threshold": row["metric"] - 0.01},
        sensitivity={"traces": {"fc1": 0.1}}, candidates=[cand], chosen=0, meets_all=True,
        table={"before": row, "after": row}, status="meets all",
    )  # fmt: skip
    out = tmp_path / "cd"
    (out / "chosen").mkdir(parents=True)
    from edgeml.codesign import write_outputs

    write_outputs(res, True, out)
    (out / "chosen").rmdir()
    (out / "chosen").symlink_to(work, target_is_directory=True)
    _chosen_report(out, res)
    html = (work / "report.html").read_text()
    assert "Co-design (edgeml codesign)" in html and "Pareto front (1 of 1 candidates)" in html
    assert "Minimal widths (compress.min_widths)" in html
    for lw in mw["layers"]:  # hls4ml's inferred accumulator next to the interval-minimal one
        before_acc, after_acc = escape(lw["hls_accum_before"]), escape(lw["acc_interval"])
        assert f"{before_acc} -> {after_acc}" in html


def test_flow_refuses_bad_layer_bits_before_training(tmp_path, capsys) -> None:
    from edgeml.cli import main

    out = tmp_path / "run"
    assert main(["flow", "--design", "jet", "--layer-bits", "fc9=4", "--out", str(out)]) == 1
    assert "unknown layer 'fc9'; the model's quantized layers are: fc1, fc2, fc3, fc4" in (
        capsys.readouterr().err
    )
    assert main(["flow", "--design", "jet", "--layer-bits", "fc1=9", "--out", str(out)]) == 1
    assert "compress.layers.fc1.bit_width must be an integer from 2 to 8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["flow", "--layer-bits", "fc1:4", "--out", str(out)])
    assert "assignments like fc1=4,fc4=8" in capsys.readouterr().err
    assert not out.exists()  # nothing trained, nothing written
