"""Tests for the HTML report (edgeml.report) and the yosys resource estimate (edgeml.resources)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from edgeml import resources
from edgeml.errors import EdgemlError
from edgeml.report import (
    AccuracySummary,
    BitExactRow,
    FaultCampaign,
    ReportData,
    ThroughputRow,
    per_layer_means,
    render_html,
    sensitivity_matrix,
    top_sensitive,
    write_report,
)
from edgeml.resources import ResourceEstimate, estimate_resources, parse_stat_json, summarize_cells

LAYERS = ["dense_0", "dense_1", "dense_out"]
N_BITS = 6
N_INDEX = 4


def _campaign() -> FaultCampaign:
    """3 layers x 6 bits x 4 indices x {weight, bias}, SDC rate known in closed form.

    sdc = (layer + 1) * (bit + 1) / 100 + index / 1000 for weights and half that
    for biases, so the mean over the 8 records of a (layer, bit) cell is
    (layer + 1) * (bit + 1) * 0.75 / 100 + 1.5 * 0.75 / 1000.
    """
    rows = []
    for li, name in enumerate(LAYERS):
        for bit in range(N_BITS):
            for idx in range(N_INDEX):
                base = (li + 1) * (bit + 1) / 100 + idx / 1000
                rows.append((name, "weight", idx, bit, base))
                rows.append((name, "bias", idx, bit, base / 2))
    rng = np.random.default_rng(0)
    rng.shuffle(rows)  # record order must not matter (except first appearance of layers)
    layer, param, index, bit, sdc = (np.array(c) for c in zip(*rows, strict=True))
    # The single most sensitive fault: its layer name must appear in the top-20 table.
    layer = np.append(layer, "special<layer>")
    param = np.append(param, "weight")
    index = np.append(index, 12345)
    bit = np.append(bit, 5)
    sdc = np.append(sdc, 0.987)
    acc_drop = sdc * 0.9
    return FaultCampaign(
        layer=layer,
        param=param,
        index=index,
        bit=bit,
        acc_drop=acc_drop,
        sdc_rate=sdc,
        baseline_accuracy=0.9625,
        n_samples=400,
        layer_order=[*LAYERS, "special<layer>"],
    )


def _report_data(design: str = "mlp_16_32_5") -> ReportData:
    return ReportData(
        design=design,
        config={"model": "mlp", "bit_width": 8, "hidden": [32, 16], "pruning": 0.5},
        timestamps={"train": "2025-01-01T10:00:00Z", "faults": "2025-01-01T11:00:00Z"},
        tool_versions={"hls4ml": "1.3.0", "yosys": "0.23"},
        accuracy=AccuracySummary(
            float_acc=0.97, qat_acc=0.9625, pruned_acc=0.955, bit_width=8, sparsity=0.5012
        ),
        bit_exact=[
            BitExactRow("golden vs hls4ml C-sim", 1000, 0, 0, 0),
            BitExactRow("golden vs RTL (Verilator)", 1000, 3, 4, 2, "dense_1", "FAIL"),
            BitExactRow("golden vs QONNX", 0, 0, 0, 0, status="SKIPPED", reason="no onnxruntime"),
        ],
        fault_campaigns=[_campaign()],
        resources=ResourceEstimate(
            lut=1234, ff=567, dsp=3, bram=0, cells={"LUT6": 1000, "LUT2": 234}, tool="yosys 0.23"
        ),
        throughput=[ThroughputRow("golden (numpy)", 10_000, 0.05, "batch 10000")],
        notes=["Rounding: half up <b>not</b> half even."],
    )


# ---------------------------------------------------------------- aggregation


def test_sensitivity_matrix_exact_means() -> None:
    c = _campaign()
    keep = c.layer != "special<layer>"
    names, bits, m = sensitivity_matrix(c.layer[keep], c.bit[keep], c.sdc_rate[keep])
    assert sorted(names) == sorted(LAYERS)
    assert bits.tolist() == list(range(N_BITS))
    assert m.shape == (3, N_BITS)
    for i, name in enumerate(names):
        li = LAYERS.index(name)
        for b in range(N_BITS):
            expected = (li + 1) * (b + 1) * 0.75 / 100 + 1.5 * 0.75 / 1000
            assert m[i, b] == pytest.approx(expected, rel=1e-12)


def test_sensitivity_matrix_order_and_missing_cells() -> None:
    layers = np.array(["b", "a", "b", "a", "c"])
    bits = np.array([0, 0, 7, 0, 3])
    sdc = np.array([0.2, 0.1, 0.4, 0.3, 1.0])
    names, pos, m = sensitivity_matrix(layers, bits, sdc)
    assert names == ["b", "a", "c"]  # first appearance
    assert pos.tolist() == [0, 3, 7]
    np.testing.assert_allclose(
        m,
        [[0.2, np.nan, 0.4], [0.2, np.nan, np.nan], [np.nan, 1.0, np.nan]],
        equal_nan=True,
    )
    names, _, m2 = sensitivity_matrix(layers, bits, sdc, layer_order=["c", "a", "zzz"])
    assert names == ["c", "a", "b"]
    np.testing.assert_allclose(m2[2], m[0], equal_nan=True)
    # Integer layer ids sort numerically.
    names, _, _ = sensitivity_matrix(np.array([10, 2, 2]), np.array([0, 0, 1]), np.ones(3))
    assert names == ["2", "10"]


def test_top_sensitive_and_per_layer() -> None:
    c = _campaign()
    top = top_sensitive(c, 20)
    assert len(top) == 20
    assert c.layer[top[0]] == "special<layer>"
    assert np.all(np.diff(c.sdc_rate[top]) <= 0)
    names, params, m = per_layer_means(c)
    assert names == [*LAYERS, "special<layer>"]
    assert params == ["bias", "weight"]
    # dense_0 weights: mean over bits of (bit+1)/100 + mean idx/1000
    assert m[0, 1] == pytest.approx(3.5 / 100 + 1.5 / 1000)
    assert m[0, 0] == pytest.approx((3.5 / 100 + 1.5 / 1000) / 2)
    assert np.isnan(m[3, 0])


def test_campaign_rejects_ragged_arrays() -> None:
    with pytest.raises(EdgemlError, match="sdc_rate"):
        FaultCampaign(
            layer=np.array(["a", "b"]),
            param=np.array(["weight", "bias"]),
            index=np.array([0, 1]),
            bit=np.array([0, 1]),
            acc_drop=np.array([0.0, 0.0]),
            sdc_rate=np.array([0.0]),
            baseline_accuracy=0.9,
            n_samples=10,
        )
    with pytest.raises(EdgemlError, match="fraction"):
        AccuracySummary(float_acc=97.0)
    # a plain metric (an RMSE in kcal/mol) may exceed 1, but must be finite
    assert AccuracySummary(float_acc=2.36, percent=False).float_acc == 2.36
    with pytest.raises(EdgemlError, match="qat_acc must be a finite number"):
        AccuracySummary(qat_acc=float("nan"), percent=False)
    with pytest.raises(EdgemlError, match="sparsity must be a fraction"):
        AccuracySummary(float_acc=2.36, sparsity=1.5, percent=False)
    with pytest.raises(EdgemlError, match="status"):
        BitExactRow("x", 1, 0, 0, 0, status="OK")  # type: ignore[arg-type]


# --------------------------------------------------------------------- report


def test_write_report(tmp_path: Path) -> None:
    out = write_report(tmp_path / "sub" / "report.html", _report_data())
    assert out == tmp_path / "sub" / "report.html"
    text = out.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") >= 3
    assert not re.search(r"(src|href)\s*=\s*[\"']?https?://", text)
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower()
    # Top-20 table: the most sensitive fault's (escaped) layer, index, rates.
    assert "special&lt;layer&gt;" in text
    assert "12,345" in text
    assert "98.70 %" in text and "88.83 pp" in text
    # Accuracy, bit-exactness, resources, throughput, notes.
    assert "96.25 %" in text and "-0.75 pp" in text and "50.1 %" in text
    assert "golden vs hls4ml C-sim" in text and "dense_1" in text
    assert '<span class="FAIL">FAIL</span>' in text
    assert "SKIPPED</span> (no onnxruntime)" in text
    assert "1,234" in text and "567" in text
    assert "200,000" in text  # vectors / s
    assert "&lt;b&gt;not&lt;/b&gt;" in text
    assert "[32, 16]" in text
    # Writing into a folder names the file report.html.
    assert write_report(tmp_path, _report_data()) == tmp_path / "report.html"


def test_report_escapes_design_name_and_handles_missing_sections(tmp_path: Path) -> None:
    data = ReportData(design='<script>alert("x")</script>')
    text = write_report(tmp_path / "r.html", data).read_text(encoding="utf-8")
    assert "<script>" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "yosys not installed" in text
    assert "data:image/png" not in text


def test_report_empty_campaign() -> None:
    empty = FaultCampaign(
        layer=np.array([], dtype=str),
        param=np.array([], dtype=str),
        index=np.array([], dtype=np.int64),
        bit=np.array([], dtype=np.int64),
        acc_drop=np.array([]),
        sdc_rate=np.array([]),
        baseline_accuracy=0.9,
        n_samples=0,
    )
    text = render_html(ReportData(design="d", fault_campaigns=[empty]))
    assert "No faults were injected" in text


# ---------------------------------------------------------------- resources

DESIGN_V = """
module adder_and_mul (
    input clk,
    input [7:0] a, input [7:0] b,
    input [15:0] c, input [15:0] d,
    output reg [8:0] sum,
    output [31:0] prod
);
  always @(posedge clk) sum <= a + b;   // 9 register bits
  assign prod = c * d;                  // combinational 16x16 multiply
endmodule
"""


@pytest.fixture(scope="module")
def yosys_estimate(tmp_path_factory: pytest.TempPathFactory) -> ResourceEstimate:
    src = tmp_path_factory.mktemp("rtl") / "adder_and_mul.v"
    src.write_text(DESIGN_V)
    est = estimate_resources([src], "adder_and_mul")
    assert est is not None, "yosys must be installed (apt-get install yosys)"
    return est


def test_yosys_counts(yosys_estimate: ResourceEstimate) -> None:
    est = yosys_estimate
    assert est.ff == 9  # exactly the register bits written
    assert est.lut > 0  # the adder's LUTs
    assert est.dsp == 1  # the 16x16 multiply maps to one DSP48E1
    assert est.bram == 0
    assert est.cells.get("DSP48E1") == 1
    assert sum(v for k, v in est.cells.items() if k.startswith("FD")) == 9
    assert "yosys" in est.tool and est.seconds > 0


def test_yosys_error_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.v"
    bad.write_text("module bad(input a, output b); assign b = a &; endmodule\n")
    with pytest.raises(EdgemlError, match="syntax error"):
        estimate_resources([bad], "bad")
    with pytest.raises(EdgemlError, match="not found"):
        estimate_resources([tmp_path / "missing.v"], "bad")


def test_no_yosys_returns_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(resources.shutil, "which", lambda name: None)
    monkeypatch.setattr(resources.sys, "executable", str(tmp_path / "python"))  # no yowasp beside
    with caplog.at_level("WARNING", logger="edgeml.resources"):
        assert estimate_resources([tmp_path / "x.v"], "x") is None
    assert "yosys not found" in caplog.text


def test_stat_parsing() -> None:
    text = (
        '{"modules": {"\\\\top": {"num_cells_by_type": {"LUT6": 4, "LUT6_2": 1, "FDCE": 2,'
        ' "FDRE": 3, "DSP48E2": 2, "RAMB18E1": 3, "RAMB36E1": 1, "CARRY4": 5}}}}'
    )
    cells = parse_stat_json(text)
    assert summarize_cells(cells) == (5, 5, 2, 3)  # 3 x RAMB18 -> 2 tiles, + 1 RAMB36
    # yosys 0.23 writes trailing commas when the design synthesizes to nothing.
    assert parse_stat_json('{"modules": {\n\n   },\n\n}\n') == {}
    with pytest.raises(EdgemlError, match="unreadable"):
        parse_stat_json("{not json")


# ------------------------------------------------- summary card, order, dedup, analysis
# (issue 11 item 7: the report read as a user would)


def _fault_analysis() -> dict:
    """A small ``analyse_campaign``-shaped dict with hand-computable shares.

    SDC mass per (param, bit) = count x mean: bias bit 7 = 4 x 0.1 = 0.4, weight
    bit 3 = 8 x 0.02 = 0.16, weight bit 2 = 8 x 0.01 = 0.08; total 0.64, so bias
    bit 7 alone carries 0.4 / 0.64 = 62.5 % (>= half).
    """
    nan = None
    return {
        "n_sites": 40,
        "n_samples": 100,
        "top_frac": 0.05,
        "rule": "delta",
        "avf": {
            "avf": 0.0125,
            "bits": 40,
            "critical_fraction": 0.25,
            "per_layer": {
                "fc1/weight": {
                    "avf": 0.005,
                    "bits": 32,
                    "critical_fraction": 0.2,
                    "sdc_share": 0.32,
                },
                "fc1/bias": {"avf": 0.0425, "bits": 8, "critical_fraction": 0.5, "sdc_share": 0.68},
            },
        },
        "per_bit": {
            "weight": {
                "2": {"count": 8, "mean_sdc": 0.01, "critical_fraction": 0.5},
                "3": {"count": 8, "mean_sdc": 0.02, "critical_fraction": 0.5},
            },
            "bias": {"7": {"count": 4, "mean_sdc": 0.1, "critical_fraction": 1.0}},
        },
        "heatmap": {
            "rows": ["fc1/weight", "fc1/bias"],
            "bits": [2, 3, 7],
            "mean": [[0.01, 0.02, nan], [nan, nan, 0.1]],
            "count": [[8, 8, 0], [0, 0, 4]],
        },
        "rankings": {
            "hessian": {
                "spearman": 0.8,
                "auc": 0.1,
                "top_share": 0.6,
                "tmr": {"extra_bits": 4, "overhead": 0.1},
                "secded": {"extra_bits": 5, "overhead": 0.125, "sdc_removed": 0.7},
            },
            "oracle": {
                "spearman": 1.0,
                "auc": 0.05,
                "top_share": 0.7,
                "tmr": {"extra_bits": 4, "overhead": 0.1},
                "secded": {"extra_bits": 5, "overhead": 0.125, "sdc_removed": 0.8},
            },
        },
        "curves": {
            "hessian": {"fraction": [0.0, 0.5, 1.0], "residual": [1.0, 0.2, 0.0]},
            "oracle": {"fraction": [0.0, 0.5, 1.0], "residual": [1.0, 0.1, 0.0]},
        },
        "top": [
            {
                "layer": "fc1",
                "param": "bias",
                "index": 3,
                "position": "[3]",
                "bit": 7,
                "code": 5,
                "faulty_code": -123,
                "sdc_rate": 0.42,
                "acc_drop": 0.3,
                "rank": {"hessian": 0, "oracle": 0},
            },
        ],
    }


ADVICE = (
    "The largest share of the SDC (68.0 %) sits in fc1/bias; bias bit 7 carries 62.5 % of it; "
    "protecting (TMR) the top 5 % of bits, as ranked by Hessian (FKeras), removes 60.0 % of "
    "the SDC (best possible: 70.0 %)."
)


def test_protection_advice_from_fault_analysis() -> None:
    from edgeml.fault_injection.report_section import mean_sdc_rate, protection_advice

    a = _fault_analysis()
    assert protection_advice(a) == ADVICE
    assert mean_sdc_rate(a) == 0.0125
    # weights dominate: bits grouped into ranges per parameter kind
    # (4 x 0.1 of 0.75 = 53.3 %: three weight bits, 40 %, are not yet half)
    a["per_bit"] = {
        "weight": {str(b): {"count": 2, "mean_sdc": 0.05} for b in (13, 14, 15, 5)},
        "bias": {str(b): {"count": 1, "mean_sdc": 0.05} for b in range(7)},
    }
    assert "; weight bits 5, 13-15 carry 53.3 % of it;" in protection_advice(a)


def test_exactness_line_pass_fail_skip() -> None:
    from edgeml.report import LevelCheck, exactness_line

    ok = [
        BitExactRow("golden vs hls4ml C-sim", 20_521, 0, 0, 0),
        BitExactRow("golden vs RTL (Verilator)", 20_521, 0, 0, 0),
    ]
    assert (
        exactness_line(ok, [LevelCheck("cocotb bench", 200, 0)])
        == "golden = hls4ml C-sim = RTL (Verilator): 0 mismatches / 20,521 vectors; "
        "golden = cocotb bench: 0 mismatches / 200 vectors"
    )
    bad = [
        BitExactRow("golden vs hls4ml C-sim", 1000, 0, 0, 0),
        BitExactRow("golden vs RTL (Verilator)", 1000, 3, 4, 2, "dense_1", "FAIL"),
        BitExactRow("golden vs QONNX", 0, 0, 0, 0, status="SKIPPED", reason="no onnxruntime"),
    ]
    assert exactness_line(bad) == (
        "FAIL golden ≠ RTL (Verilator): 3 / 1,000 vectors differ, first divergent layer "
        "dense_1; golden = hls4ml C-sim: 0 mismatches / 1,000 vectors; "
        "skipped: QONNX (no onnxruntime)"
    )
    # a level that counts something else (verify's extra.unit) says so, never "vectors"
    headers = BitExactRow("golden vs hls4ml weight headers", 4_389, 0, 0, 0, unit="elements")
    assert exactness_line([*ok, headers]) == (
        "golden = hls4ml C-sim = RTL (Verilator): 0 mismatches / 20,521 vectors; "
        "golden = hls4ml weight headers: 0 mismatches / 4,389 elements"
    )


def test_summary_card_renders_only_known_facts() -> None:
    from edgeml.report import SummaryCard, summary_card_rows

    d = _report_data()
    d.summary = SummaryCard(latency_cycles=6, latency_ns=30.0, mean_sdc=0.0125, advice=ADVICE)
    rows = dict(summary_card_rows(d))
    assert rows["accuracy"] == (
        "top-1 accuracy: float 97.00 % / QAT 96.25 % / pruned 95.50 % (8-bit, 50.1 % sparse)"
    )
    assert rows["exactness"].startswith("FAIL golden ≠ RTL (Verilator): 3 / 1,000 vectors")
    assert rows["latency"] == "6 clock cycles (30 ns)"
    assert rows["resources"].startswith("1,234 LUT, 567 FF, 3 DSP, 0 BRAM")
    assert rows["faults"].startswith("mean SDC rate 1.250 %")
    assert rows["protection"] == ADVICE
    assert rows["analysis"] == "not run (edgeml analyze --run <folder>)"
    # a design with nothing but a name: design and the analysis hint only
    bare = ReportData(design="d", summary=SummaryCard(run_folder="runs/d"))
    assert summary_card_rows(bare) == [
        ("design", "d"),
        ("analysis", "not run (edgeml analyze --run runs/d)"),
    ]
    text = render_html(d)
    assert text.index('<div class="card">') < text.index("<h2>Overview</h2>")


def test_pipeline_order() -> None:
    from edgeml.flow import STAGES
    from edgeml.report_build import order_stages, pipeline_order

    order = pipeline_order()
    assert order[: order.index("verify") + 1] == STAGES[: STAGES.index("verify") + 1]
    assert order[-3:] == ("faults", "analyze", "report")
    assert order_stages(sorted(["report", "zzz", "analyze", "train", "verify", "compress"])) == [
        "train", "compress", "verify", "analyze", "report", "zzz",
    ]  # fmt: skip


# A run folder as the flow writes it (manifest stages alphabetical, as json.dump sorts them).
VERIFY = {
    "vectors": 20_521,
    "golden_vectors_per_s": 400_000.0,
    "passed": True,
    "sources": {"random": 20_000, "data": 521},
    "approximations": [],
    "levels": [
        {"level": "hls4ml C-sim", "vectors": 20_521, "mismatching_vectors": 0,
         "mismatching_elements": 0, "max_abs_diff_lsb": 0, "first_divergent_layer": None,
         "status": "PASS", "note": "", "seconds": 0.5},
        {"level": "RTL (Verilator)", "vectors": 20_521, "mismatching_vectors": 0,
         "mismatching_elements": 0, "max_abs_diff_lsb": 0, "first_divergent_layer": None,
         "status": "PASS", "note": "", "seconds": 0.05},
    ],
}  # fmt: skip
RTL = {
    "top": "mlp",
    "latency_cycles": 6,
    "build_seconds": 26.4,
    # the numbers: 382 vectors/s over the whole bench run, 35,909 in the loop
    "cocotb": {"vectors": 200, "mismatches": 0, "seconds": 0.5236, "vectors_per_s": 35909.0},
    "resources": {"lut": 18239, "ff": 4014, "dsp": 2, "bram": 0, "seconds": 4.0, "tool": "yosys"},
}


def _run_folder(root: Path, *, analysis: dict | None = None) -> Path:
    """A synthetic run folder: json artifacts, a campaign.npz, faults/analysis.json."""
    import json

    from edgeml.fault_injection.campaign import CampaignResult

    run = root / "run"
    (run / "faults").mkdir(parents=True)
    stages = ["compress", "convert", "export", "faults", "report", "rtl", "train", "verify"]
    if analysis is not None:
        stages.append("analyze")
    manifest = {
        "stages": {
            s: {"started": f"2026-12-06T10:0{i}:00", "seconds": 1.0, "tool_versions": {}}
            for i, s in enumerate(sorted(stages))
        }
    }
    files = {
        "manifest.json": manifest,
        "train.json": {"float": 0.75, "metric": "accuracy"},
        "compress.json": {"qat": 0.74, "pruned": 0.7325, "bit_width": 6, "sparsity": 0.5},
        "verify.json": VERIFY,
        "rtl.json": RTL,
        "faults/analysis.json": _fault_analysis(),
    }
    for name, obj in files.items():
        (run / name).write_text(json.dumps(obj, sort_keys=True))
    n = 24
    rng = np.random.default_rng(1)
    CampaignResult(
        layer=np.zeros(n, np.int32),
        param=np.repeat([0, 1], n // 2),
        index=np.arange(n) % 4,
        bit=np.arange(n) % 6,
        kind=np.zeros(n, np.int8),
        acc_drop=rng.random(n) * 0.1,
        sdc_rate=rng.random(n) * 0.2,
        max_dev=np.ones(n),
        baseline_accuracy=0.7325,
        n_samples=100,
        layer_names=["fc1"],
        seconds=0.01,
    ).save(run / "faults" / "campaign.npz")
    if analysis is not None:
        (run / "analysis").mkdir()
        (run / "analysis" / "analysis.json").write_text(json.dumps(analysis))
    return run


def _build(run: Path) -> str:
    from edgeml.config import FlowConfig
    from edgeml.flow import Context
    from edgeml.manifest import RunFolder
    from edgeml.report_build import build_report

    ctx = Context(run=RunFolder(run), cfg=FlowConfig(design="mlp"), progress=False)
    return build_report(ctx).read_text(encoding="utf-8")


def _card(text: str) -> dict[str, str]:
    import html as _html

    card = text[text.index('<div class="card">') : text.index("</div>")]
    return {
        _html.unescape(k): _html.unescape(v)
        for k, v in re.findall(r'<th scope="row">(.*?)</th><td>(.*?)</td>', card)
    }


def test_build_report_card_order_and_each_figure_once(tmp_path: Path) -> None:
    text = _build(_run_folder(tmp_path))
    card = _card(text)
    assert card["exactness"] == (
        "golden = hls4ml C-sim = RTL (Verilator): 0 mismatches / 20,521 vectors; "
        "golden = cocotb bench: 0 mismatches / 200 vectors"
    )
    assert card["accuracy"] == (
        "top-1 accuracy: float 75.00 % / QAT 74.00 % / pruned 73.25 % (6-bit, 50.0 % sparse)"
    )
    assert card["latency"] == "6 clock cycles"
    assert card["resources"].startswith("18,239 LUT, 4,014 FF, 2 DSP, 0 BRAM")
    assert card["faults"].startswith("mean SDC rate 1.250 %")
    assert card["protection"] == ADVICE
    assert card["analysis"] == f"not run (edgeml analyze --run {tmp_path / 'run'})"
    assert "Curvature, landscapes and representations" not in text
    # stages in pipeline order, not alphabetical
    overview = text[text.index("<h2>Overview</h2>") : text.index("<summary>Configuration")]
    listed = re.findall(r"<tr><td>(\w+)</td>", overview)
    assert listed == ["train", "compress", "export", "convert", "rtl", "verify", "faults", "report"]
    # each figure / table once (the fault section's richer heatmap and top-k table)
    assert text.count("heatmap") == 1 and 'alt="SDC heatmap per layer and bit"' in text
    assert text.count("most sensitive bits") == 1
    assert text.count("per-layer SDC") == 0  # the AVF table holds the per-layer means
    assert text.count('alt="protection curves per ranking"') == 1
    alts = re.findall(r'<img class="plot" alt="([^"]*)"', text)
    assert len(alts) == len(set(alts)) == 3  # heatmap, protection curves, accuracy-drop histogram


def test_throughput_one_number_per_engine_consistent_with_rtl_json(tmp_path: Path) -> None:
    from edgeml.report_build import throughput_rows

    rows = {r.engine: r for r in throughput_rows(VERIFY, RTL)}
    assert list(rows) == [
        "golden model (numpy)", "hls4ml C-sim", "RTL (Verilator)", "cocotb bench (Verilator)",
    ]  # fmt: skip
    cocotb = rows["cocotb bench (Verilator)"]
    assert cocotb.vectors_per_s == pytest.approx(RTL["cocotb"]["vectors_per_s"], rel=1e-12)
    assert cocotb.measures.startswith("simulated streaming loop only")
    assert "0.524 s with simulator and cocotb start-up" in cocotb.notes
    assert rows["golden model (numpy)"].vectors_per_s == pytest.approx(400_000.0)
    assert rows["RTL (Verilator)"].vectors_per_s == pytest.approx(20_521 / 0.05)
    text = _build(_run_folder(tmp_path))
    tp = text[text.index("<h2>Throughput</h2>") :]
    assert re.search(r"<td>cocotb bench \(Verilator\)</td>.*?<td class=\"num\">35,909</td>", tp)
    assert "382" not in tp  # 200 / 0.5236 s: the bench's wall time is not a second rate
    assert tp.count("cocotb bench") == 1
    # a bench that could not time its loop: the wall-time rate, labelled as such
    old = {"cocotb": {"vectors": 200, "mismatches": 0, "seconds": 0.5236, "vectors_per_s": 0.0}}
    (row,) = throughput_rows(None, old)
    assert round(row.vectors_per_s) == 382 and "incl. simulator start-up" in row.measures


def _png(path: Path, colour: tuple[int, int, int]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1), dpi=20)
    fig.patch.set_facecolor(np.array(colour) / 255)
    fig.savefig(path, format="png")
    return path.read_bytes()


def _analysis_doc() -> dict:
    return {
        "format": "edgeml-analysis-v1",
        "design": "mlp",
        "tables": [
            {"section": "similarity", "title": "Linear CKA to float", "head": ["layer", "QAT"],
             "rows": [["fc1", "0.981"]]},
            {"section": "curvature", "title": "Curvature", "head": ["model", "top eigenvalue"],
             "rows": [["float", "12.3"], ["QAT<x>", 18.9]], "note": "Lanczos, k=5."},
        ],
        "figures": [
            {"section": "topology", "title": "Merge tree", "file": "fig_missing.png",
             "caption": "merge tree of the slice"},
            {"section": "landscape", "title": "2-D slice", "file": "fig_land.png",
             "caption": "51 x 51 points"},
            {"section": "landscape", "title": "escape", "file": "../secret.png"},
        ],
        "summary": {"sentence": "QAT sharpens the minimum."},
    }  # fmt: skip


def test_analysis_section_from_synthetic_json(tmp_path: Path) -> None:
    import base64

    from edgeml.errors import CorruptFileError
    from edgeml.report import analysis_section_html

    adir = tmp_path / "analysis"
    adir.mkdir()
    png = _png(adir / "fig_land.png", (10, 200, 30))
    _png(tmp_path / "secret.png", (1, 2, 3))
    doc = _analysis_doc()
    out = analysis_section_html(doc, adir)
    assert out.startswith("<h2>Curvature, landscapes and representations</h2>")
    assert "<p>QAT sharpens the minimum.</p>" in out
    # subsections in the fixed order, each with its tables before its figures
    heads = re.findall(r"<h3>(.*?)</h3>", out)
    assert heads == [
        "Curvature (Hessian)", "Loss landscapes", "Landscape topology",
        "Representation similarity (CKA)",
    ]  # fmt: skip
    assert out.index("<h4>Curvature</h4>") < out.index("<h3>Loss landscapes</h3>")
    assert '<td class="num">12.3</td>' in out and '<td class="num">18.9</td>' in out
    assert "<td>QAT&lt;x&gt;</td>" in out
    assert "Lanczos, k=5." in out
    # the PNG embedded byte for byte, once; the missing one and the escaping one are notes
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in out
    assert out.count("data:image/png;base64,") == 1
    assert "Figure file analysis/fig_missing.png is missing." in out
    assert "Figure file ../secret.png is not a PNG inside analysis/." in out
    with pytest.raises(CorruptFileError, match="format must be 'edgeml-analysis-v1'"):
        analysis_section_html({**doc, "format": "v0"}, adir)
    bad = {**doc, "figures": [{"section": "curvatur", "file": "a.png", "title": "t"}]}
    with pytest.raises(CorruptFileError, match="section 'curvatur'; allowed: curvature, landsc"):
        analysis_section_html(bad, adir)
    ragged = {**doc, "tables": [{"title": "T", "head": ["a", "b"], "rows": [["1"]]}]}
    with pytest.raises(CorruptFileError, match="row 0 has 1 cells, head has 2"):
        analysis_section_html(ragged, adir)


def test_build_report_with_analysis_folder(tmp_path: Path) -> None:
    run = _run_folder(tmp_path, analysis=_analysis_doc())
    _png(run / "analysis" / "fig_land.png", (10, 200, 30))
    text = _build(run)
    assert _card(text)["analysis"] == "QAT sharpens the minimum."
    i_fault = text.index("<h2>Fault sensitivity and protection</h2>")
    i_ana = text.index("<h2>Curvature, landscapes and representations</h2>")
    assert i_fault < i_ana < text.index("<h2>FPGA resource estimate</h2>")
    assert text.count('alt="2-D slice"') == 1
    overview = text[text.index("<h2>Overview</h2>") : text.index("<summary>Configuration")]
    assert re.findall(r"<tr><td>(\w+)</td>", overview)[-3:] == ["faults", "analyze", "report"]
    # a broken analysis.json: a warning at the top, the rest of the report intact
    (run / "analysis" / "analysis.json").write_text('{"format": "other"}')
    text = _build(run)
    assert "<b>Warning:</b> analysis section not shown:" in text
    assert "format must be" in text
    assert _card(text)["analysis"] == (
        "analysis/analysis.json not shown: unreadable (see the warning above)"
    )
    assert "Fault sensitivity and protection" in text


def test_build_report_shows_a_low_rank_factorisation(tmp_path: Path) -> None:
    """``compress.json``'s ``low_rank`` block: a row for the fine-tuned factorised float
    model and one sentence with the ranks, weights and the SVD error against the optimum."""
    import json

    run = _run_folder(tmp_path)
    comp = json.loads((run / "compress.json").read_text())
    layer = {
        "layer": "fc1",
        "factorised": True,
        "rel_frobenius": 0.42,
        "optimal_rel_frobenius": 0.4,
    }
    comp["low_rank"] = {
        "setting": 8,
        "ranks": {"fc1": 8},
        "weights_before": 4256,
        "weights_after": 2080,
        "float_factorised": 0.5627,
        "float_finetuned": 0.7465,
        "finetune_epochs": 30,
        "layers": [layer, {"layer": "fc4", "factorised": False, "optimal_rel_frobenius": 0.0}],
    }
    (run / "compress.json").write_text(json.dumps(comp))
    text = _build(run)
    assert re.search(
        r"<td>low rank \(fine-tuned\)</td><td[^>]*>74\.65 %</td><td[^>]*>-0\.35 pp", text
    )
    assert (
        "Low-rank factorisation before QAT (compress.low_rank = 8): ranks fc1 8; 4,256 -&gt; 2,080 "
        "on-chip weights; randomized SVD error at most 1.050x the optimal; float metric 56.27 % "
        "just after factorising, 74.65 % after 30 fine-tuning epochs."
    ) in text
    # a run without it shows neither
    plain = _build(_run_folder(tmp_path / "plain"))
    assert "low rank" not in plain and "Low-rank" not in plain
