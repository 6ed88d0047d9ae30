"""End to end: `edgeml flow` on both built-in designs, then the bit-exactness claims.

0 mismatches between golden, hls4ml C-sim, RTL (Verilator) and the trained
Brevitas model over >= 10,000 vectors, asserted on integer codes; and the same
comparison must fail when one weight is perturbed at any level.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeml.cli import EXIT_OK, main
from edgeml.golden import GoldenModel

pytestmark = [pytest.mark.slow, pytest.mark.hls, pytest.mark.rtl]


@pytest.fixture(scope="session", params=["mlp", "cnn"])
def flow_run(request, tmp_path_factory) -> tuple[str, Path, Path]:
    design = request.param
    if design == "mlp":  # the session's shared run (tests/conftest.py)
        out, hls = request.getfixturevalue("mlp_flow_run")
        return design, out, hls
    root = tmp_path_factory.mktemp(f"flow-{design}")
    out, hls = root / "run", root / "hls"
    code = main(["flow", "--design", design, "--out", str(out), "--hls-dir", str(hls), "-q"])
    assert code == EXIT_OK, f"edgeml flow --design {design} exited {code}"
    return design, out, hls


def _levels(out: Path) -> dict[str, dict]:
    v = json.loads((out / "verify.json").read_text())
    return {lv["level"]: lv for lv in v["levels"]}


def test_zero_mismatches_every_level(flow_run):
    _, out, _ = flow_run
    v = json.loads((out / "verify.json").read_text())
    assert v["vectors"] >= 10_000 and v["passed"] is True
    levels = _levels(out)
    for name in ("hls4ml C-sim", "RTL (Verilator)", "trained Brevitas model"):
        lv = levels[name]
        assert lv["status"] == "PASS", lv
        assert lv["vectors"] == v["vectors"]
        assert lv["mismatching_vectors"] == 0 and lv["mismatching_elements"] == 0
        assert lv["max_abs_diff_lsb"] == 0
    assert levels["trained Brevitas model"]["extra"]["off_grid_outputs"] == 0
    # the shipped golden IR and the hls4ml headers Vitis compiles are checked too
    assert levels["golden IR (golden.npz)"]["status"] == "PASS"
    assert levels["golden IR (golden.npz)"]["mismatching_vectors"] == 0
    headers = levels["hls4ml weight headers"]
    assert headers["status"] == "PASS" and headers["vectors"] > 500  # elements compared
    assert v["drift"] == [] and v["rtl_source_changes"] == []


def test_flow_artifacts_and_metrics(flow_run):
    design, out, hls = flow_run
    m = json.loads((out / "manifest.json").read_text())
    assert set(m["stages"]) == {
        "train",
        "compress",
        "export",
        "convert",
        "rtl",
        "verify",
        "faults",
        "report",
    }
    comp = json.loads((out / "compress.json").read_text())
    assert comp["pruned_accuracy"] > 0.9 and abs(comp["sparsity"] - 0.5) < 0.01
    project = out / json.loads((out / "hls.json").read_text())["project_dir"]
    assert project.resolve().parent == hls.resolve() and project.name.startswith(design + "_")
    assert (project / "build_prj.tcl").is_file() and (project / "firmware").is_dir()
    rtl = json.loads((out / "rtl.json").read_text())
    assert rtl["cocotb"]["mismatches"] == 0 and rtl["cocotb"]["vectors"] >= 100
    g = GoldenModel.from_onnx(out / "model.qonnx.onnx")
    faults = json.loads((out / "faults" / "summary.json").read_text())
    n_sites = sum(
        op.weight.size * op.weight_type.width
        + (op.bias.size * op.bias_type.width if op.bias is not None else 0)
        for op in g.param_ops
    )
    assert faults["faults"] == n_sites
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "http://" not in html


def test_perturbed_golden_weight_is_caught_and_localised(flow_run):
    """Golden vs the hls4ml C-sim: a one-code weight change in layer k is named as layer k."""
    from edgeml.hls import HlsDesign
    from edgeml.verify import run_level

    _, out, hls_root = flow_run
    g = GoldenModel.from_onnx(out / "model.qonnx.onnx")
    hls = HlsDesign.load(next(p for p in hls_root.iterdir() if p.is_dir()))
    rng = np.random.default_rng(0)
    q = g.input_quant
    x = rng.integers(q.lo, q.hi + 1, size=(3000, *g.input_shape), dtype=np.int64)
    op = g.param_ops[-1]
    idx = np.unravel_index(int(np.argmax(np.abs(op.weight))), op.weight.shape)
    op.weight[idx] -= int(np.sign(op.weight[idx]))
    from edgeml.config import FlowConfig
    from edgeml.flow import Context, hls_trace_codes
    from edgeml.manifest import RunFolder

    ctx = Context(RunFolder(out), FlowConfig())
    ctx.results["golden"] = g
    res = run_level(
        "hls", g, x, g.predict(x), hls.predict_int, lambda xc: hls_trace_codes(ctx, hls, xc)
    )
    assert res.status == "FAIL" and res.mismatching_vectors > 0
    assert res.first_divergent_layer == f"{op.name} ({op.kind})"


def test_perturbed_brevitas_weight_is_caught(flow_run):
    import torch

    from edgeml.models import digits
    from edgeml.verify import compare_codes

    _, out, _ = flow_run
    g = GoldenModel.from_onnx(out / "model.qonnx.onnx")
    model, _ = digits.load_checkpoint(out / "model.pt")
    rng = np.random.default_rng(1)
    x = rng.integers(
        g.input_quant.lo, g.input_quant.hi + 1, size=(2000, *g.input_shape), dtype=np.int64
    )
    scale = float(np.asarray(g.output_scale).reshape(-1)[0])

    def codes() -> np.ndarray:
        return np.rint(digits.torch_predict(model, x * g.input_real_scale) / scale).astype(np.int64)

    assert compare_codes("brevitas", g.predict(x), codes()).mismatching_vectors == 0
    layer = [m for m in model.modules() if hasattr(m, "quant_weight")][-1]
    with torch.no_grad():
        w = layer.weight
        i = int(torch.argmin(w.abs()))  # a small weight: the per-tensor scale stays put
        w.view(-1)[i] += 2 * float(layer.quant_weight().scale.reshape(-1)[0])
    assert compare_codes("brevitas", g.predict(x), codes()).mismatching_vectors > 0


def test_external_qonnx_model_full_flow(tmp_path):
    """A QONNX file built with qonnx helpers (not edgeml's exporter) through every level."""
    import qonnx_builders as qb

    p = qb.save(qb.mlp_pot(np.random.default_rng(1)), tmp_path / "ext.onnx")
    out = tmp_path / "run"
    code = main(
        ["flow", "--onnx", str(p), "--out", str(out), "--hls-dir", str(tmp_path / "hls"), "-q"]
    )
    assert code == EXIT_OK
    levels = _levels(out)
    for name in ("hls4ml C-sim", "RTL (Verilator)", "QONNX reference (float)"):
        assert levels[name]["status"] == "PASS", levels[name]
        assert levels[name]["mismatching_vectors"] == 0
    assert levels["RTL (Verilator)"]["vectors"] >= 10_000


def test_external_model_hls4ml_crash_takes_golden_ir_route(tmp_path):
    """Per-channel float weight scales crash hls4ml's QONNX front end: the project is built
    from the golden IR instead, every level is exact, and hls.json and the report say why."""
    import json

    import qonnx_builders as qb

    p = qb.save(qb.bn_float_scales(np.random.default_rng(6)), tmp_path / "bn.onnx")
    out = tmp_path / "run"
    code = main(
        ["flow", "--onnx", str(p), "--out", str(out), "--hls-dir", str(tmp_path / "hls"), "-q"]
    )
    assert code == 0
    hls = json.loads((out / "hls.json").read_text())
    assert hls["route"] == "golden-ir" and "Quant_1_param0" in hls["route_reason"], hls
    levels = _levels(out)
    for level in ("hls4ml C-sim", "RTL (Verilator)"):
        assert levels[level]["status"] == "PASS", levels[level]
        assert levels[level]["mismatching_vectors"] == 0 and levels[level]["vectors"] >= 10_000
    ref = levels["QONNX reference (float)"]
    assert ref["extra"]["argmax_agreement"] > 0.9
    assert "built from the golden integer IR" in (out / "report.html").read_text()
