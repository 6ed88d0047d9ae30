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
