"""Exact minimal bias widths (``edgeml.minwidth``): outputs unchanged at every level, minimal,
fewer stored bits and fault sites, clear errors on bad input."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import brevitas_models as bm
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeml.errors import ConfigError, CorruptFileError, UnsupportedOpError
from edgeml.fault_injection.sites import PERMANENT_PARAMS, count_param_sites, enumerate_sites
from edgeml.golden import GoldenModel
from edgeml.minwidth import (
    format_table,
    hls_accum_settings,
    minimality_check,
    minimize_widths,
    narrower_by_one,
)
from edgeml.verify import verification_vectors

N_VECTORS = 3000


def _n_bad(a: np.ndarray, b: np.ndarray) -> int:
    return int((np.asarray(a) != np.asarray(b)).reshape(len(a), -1).any(axis=1).sum())


def _brevitas(kind: str, folder: Path, seed: int = 0, bias: bool = True) -> Path:
    """The lead's design style (Int16Bias, power-of-two scales), calibrated on noise."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if kind == "mlp":
        model = bm.mlp()
    elif kind == "cnn":
        model = bm.cnn()
    else:  # a bias-free MLP
        model = nn.Sequential(
            nn.Flatten(),
            bm.quant_input(),
            bm.quant_linear(64, 16, bias=bias),
            bm.quant_relu(),
            bm.quant_linear(16, 10, last=True, bias=bias),
        )
    bm.calibrate(model, (1, 8, 8), batches=8, batch=64, scale=2.0)
    return bm.export_clean(model, (1, 8, 8), folder, kind)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("minwidth")


@pytest.fixture(scope="module")
def mlp_path(work) -> Path:
    return _brevitas("mlp", work)


@pytest.fixture(scope="module")
def mlp_min(mlp_path):
    g = GoldenModel.from_onnx(mlp_path)
    return minimize_widths(mlp_path, hls_input_type=g.input_type)


@pytest.fixture(scope="module")
def vectors(mlp_path) -> np.ndarray:
    x, _ = verification_vectors(GoldenModel.from_onnx(mlp_path), None, N_VECTORS, seed=3)
    return x


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def _set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(t).dtype), name))
            return
    raise KeyError(name)


def _bias_quant(model: onnx.ModelProto, layer: str) -> onnx.NodeProto:
    from edgeml.minwidth import _bias_quants

    return next(b.node for b in _bias_quants(model.graph)[0] if b.layer == layer)


# --------------------------------------------------------------------------- exactness


def test_minimal_widths_change_no_golden_output(mlp_path, mlp_min, vectors):
    new, rep = mlp_min
    g0, g1 = GoldenModel.from_onnx(mlp_path), GoldenModel.from_onnx(new)
    assert len(vectors) >= 2000
    assert _n_bad(g0.predict(vectors), g1.predict(vectors)) == 0
    assert g1.output_type == g0.output_type
    # every bias narrowed, the golden model's bias_type follows the rewritten Quant
    assert len(rep.layers) == 3 and rep.changed
    for op, lw in zip(g1.param_ops, rep.layers, strict=True):
        assert lw.bias_bits_before == 16
        assert 2 <= lw.bias_bits_after < 16
        assert op.bias_type.width == lw.bias_bits_after
        lo, hi = int(op.bias.min()), int(op.bias.max())
        # minimal: the codes need every bit (16-bit Int16Bias is narrow=0)
        assert lo >= -(1 << (lw.bias_bits_after - 1)) and hi < (1 << (lw.bias_bits_after - 1))
        assert lo < -(1 << (lw.bias_bits_after - 2)) or hi >= (1 << (lw.bias_bits_after - 2))
    js = rep.to_json()
    assert '"bias_bits_after"' in js and str(rep.total_bits_after) in js
    table = format_table(rep)
    assert "MatMul_0" in table and f"{rep.total_bits_before} -> {rep.total_bits_after}" in table


def test_bits_and_fault_sites_fall_by_the_bits_removed(mlp_path, mlp_min):
    new, rep = mlp_min
    g0, g1 = GoldenModel.from_onnx(mlp_path), GoldenModel.from_onnx(new)
    removed = sum(lw.bias_size * (lw.bias_bits_before - lw.bias_bits_after) for lw in rep.layers)
    assert removed > 0
    assert rep.total_bits_before == count_param_sites(g0)
    assert rep.total_bits_after == count_param_sites(g1) == rep.total_bits_before - removed
    n0 = len(enumerate_sites(g0, PERMANENT_PARAMS))
    n1 = len(enumerate_sites(g1, PERMANENT_PARAMS))
    assert n0 - n1 == removed
    assert sum(lw.stored_bits_before - lw.stored_bits_after for lw in rep.layers) == removed
    again, rep2 = minimize_widths(new)  # already minimal: nothing left to remove
    assert not rep2.changed and rep2.total_bits_before == rep.total_bits_after
    assert again.SerializeToString() == new.SerializeToString()


def test_accumulator_ranges_interval_and_calibration(mlp_path, vectors):
    g = GoldenModel.from_onnx(mlp_path)
    _, rep = minimize_widths(mlp_path, calib_x=vectors)
    _, env = g.run(vectors, trace=True)
    for op, lw in zip(g.param_ops, rep.layers, strict=True):
        seen = env[op.output]
        # interval bounds hold every observed code; calibration is the observed range
        assert lw.acc_lo <= seen.min() and seen.max() <= lw.acc_hi
        assert (lw.acc_calib_lo, lw.acc_calib_hi) == (int(seen.min()), int(seen.max()))
        assert lw.acc_calib_bits <= lw.acc_interval_bits
        assert lw.acc_interval == g.tensors[op.output].type.hls()


def test_trim_frac_moves_trailing_zeros_into_the_scale(mlp_path, vectors, work):
    """Bias codes that are multiples of 8: trim_frac stores them 3 bits shorter, exactly."""
    m = onnx.load(str(mlp_path))
    q = _bias_quant(m, "MatMul_1")
    x, s = _init(m, q.input[0]), float(_init(m, q.input[1]).reshape(-1)[0])
    codes = np.round(x / s).astype(np.int64)
    _set_init(m, q.input[0], (codes * 8) * s)  # still inside 16 bits
    g_ref = GoldenModel.from_onnx(copy.deepcopy(m))
    trimmed, rep_t = minimize_widths(m, trim_frac=True)
    plain, rep_p = minimize_widths(m, trim_frac=False)
    lt, lp = rep_t.layer("MatMul_1"), rep_p.layer("MatMul_1")
    assert lt.bias_log2_scale_after == lt.bias_log2_scale_before + 3
    assert lp.bias_log2_scale_after == lp.bias_log2_scale_before
    assert lt.bias_bits_after == lp.bias_bits_after - 3
    g_t = GoldenModel.from_onnx(trimmed)
    op = next(o for o in g_t.param_ops if o.name == "MatMul_1")
    assert op.bias_shift == 3 and op.bias_type.width == lt.bias_bits_after
    ref = g_ref.predict(vectors)
    assert _n_bad(g_t.predict(vectors), ref) == 0
    assert _n_bad(GoldenModel.from_onnx(plain).predict(vectors), ref) == 0
    assert rep_t.total_bits_after == rep_p.total_bits_after - 3 * lt.bias_size


# --------------------------------------------------------------------------- minimality


def test_one_bit_narrower_changes_outputs(mlp_min, vectors):
    new, rep = mlp_min
    changed = minimality_check(new, vectors)
    assert set(changed) == {lw.layer for lw in rep.layers}
    assert max(changed.values()) > 0
    # the narrowed model saturates: its golden bias codes are clipped at the new range
    layer = max(changed, key=changed.get)
    op = next(
        o for o in GoldenModel.from_onnx(narrower_by_one(new, layer)).param_ops if o.name == layer
    )
    assert op.bias_type.width == rep.layer(layer).bias_bits_after - 1


def test_masked_bias_is_reported_not_asserted(mlp_path, vectors):
    """A channel with zero weights and a large negative bias before a ReLU: that bias sets
    the minimal width, but saturating it one bit narrower is masked by the ReLU."""
    m = onnx.load(str(mlp_path))
    g = GoldenModel.from_onnx(copy.deepcopy(m))
    w_quant = next(n for n in m.graph.node if n.op_type == "MatMul" and n.name == "MatMul_0")
    wq = next(n for n in m.graph.node if n.output[0] == w_quant.input[1])
    w = _init(m, wq.input[0]).copy()
    w[:, 0] = 0.0
    _set_init(m, wq.input[0], w)
    q = _bias_quant(m, "MatMul_0")
    b, s = _init(m, q.input[0]).copy(), float(_init(m, q.input[1]).reshape(-1)[0])
    widest = int(np.abs(g.param_ops[0].bias).max())
    b[0] = -(4 * widest + 3) * s  # the widest code by far, always negative
    _set_init(m, q.input[0], b)
    new, rep = minimize_widths(m)
    assert rep.layer("MatMul_0").bias_code_min == -(4 * widest + 3)
    changed = minimality_check(new, vectors)
    assert changed["MatMul_0"] == 0  # masked downstream: reported, not a failure
    assert changed["MatMul_2"] > 0 or changed["MatMul_1"] > 0


# --------------------------------------------------------------------------- other exporters


def test_conv_biases(work):
    path = _brevitas("cnn", work)
    g0 = GoldenModel.from_onnx(path)
    new, rep = minimize_widths(path)
    g1 = GoldenModel.from_onnx(new)
    assert [lw.kind for lw in rep.layers] == ["conv", "dense"]
    assert all(lw.bias_bits_after < lw.bias_bits_before == 16 for lw in rep.layers)
    x, _ = verification_vectors(g0, None, 2000, seed=7)
    assert _n_bad(g0.predict(x), g1.predict(x)) == 0
    assert count_param_sites(g1) == rep.total_bits_after < rep.total_bits_before


def test_edgeml_quantize_export(work):
    import torch

    from edgeml.export import clean_qonnx
    from edgeml.quantize import QuantizeOptions, quantize_onnx

    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Linear(16, 24), torch.nn.ReLU(), torch.nn.Linear(24, 6)
    ).eval()
    fpath = work / "float.onnx"
    torch.onnx.export(net, torch.zeros(1, 16), str(fpath), dynamo=False, input_names=["x"])
    calib = np.random.default_rng(0).normal(size=(256, 16)).astype(np.float32)
    res = quantize_onnx(fpath, calib, QuantizeOptions(bits=6), out=work / "q.onnx", evaluate=False)
    clean = work / "q_clean.onnx"
    clean_qonnx(res.model, clean)
    g0 = GoldenModel.from_onnx(clean)
    new, rep = minimize_widths(clean)
    g1 = GoldenModel.from_onnx(new)
    x, _ = verification_vectors(g0, None, 2000, seed=5)
    assert _n_bad(g0.predict(x), g1.predict(x)) == 0
    assert [lw.bias_bits_before for lw in rep.layers] == [16, 16]
    assert all(lw.bias_bits_after < 16 for lw in rep.layers)
    assert count_param_sites(g1) == rep.total_bits_after < rep.total_bits_before


# --------------------------------------------------------------------------- bad input


def test_model_without_bias_is_returned_unchanged(work):
    path = _brevitas("nobias", work, bias=False)
    proto = onnx.load(str(path))
    new, rep = minimize_widths(proto)
    assert new.SerializeToString() == proto.SerializeToString()
    assert not rep.changed and rep.total_bits_before == rep.total_bits_after
    assert rep.bias_bits_before == 0
    assert any("no bias Quant" in n for n in rep.notes)
    with pytest.raises(ConfigError, match="has no bias Quant"):
        narrower_by_one(proto, "MatMul_0")


def test_corrupt_and_non_qonnx_files_are_clear_errors(work, mlp_min):
    bad = work / "garbage.onnx"
    bad.write_bytes(b"\x08\x07not an onnx model at all" * 10)
    with pytest.raises(CorruptFileError, match="not a readable ONNX model"):
        minimize_widths(bad)
    with pytest.raises(CorruptFileError, match="does not exist"):
        minimize_widths(work / "missing.onnx")
    import torch

    fpath = work / "plain_float.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2).eval(), torch.zeros(1, 4), str(fpath), dynamo=False)
    with pytest.raises(UnsupportedOpError, match="no Quant nodes: it is not a QONNX design"):
        minimize_widths(fpath)
    with pytest.raises(ConfigError, match="model must be"):
        minimize_widths(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no bias Quant; layers with one: MatMul_0"):
        narrower_by_one(mlp_min[0], "Relu_0")


# --------------------------------------------------------------------------- hls4ml, RTL


@pytest.mark.hls
def test_hls_csim_of_minimised_model_is_exact(mlp_min, vectors, work):
    """Narrow biases and interval-minimal hls4ml accumulators: C-sim == golden."""
    import edgeml.hls as H

    new, rep = mlp_min
    path = work / "mlp_min.onnx"
    onnx.save(new, str(path))
    g = GoldenModel.from_onnx(path)
    settings = hls_accum_settings(rep)
    assert set(settings) == {"MatMul_0", "MatMul_1", "MatMul_2"}
    d = H.convert_hls(
        path,
        work / "hls_min",
        name="mlp_min",
        input_type=g.input_type,
        output_type=g.output_type,
        accum_types=settings,
    )
    assert _n_bad(d.predict_int(vectors), g.predict(vectors)) == 0
    text = (work / "hls_min" / "firmware" / "defines.h").read_text()
    for lw in rep.layers:  # the interval-minimal accumulators reached the firmware
        acc = re.search(rf"typedef (ap_fixed<[0-9,]+>) dense_{lw.layer.lower()}_accum_t;", text)
        assert acc is not None and acc.group(1) == lw.acc_interval
        assert lw.acc_interval_bits < int(lw.hls_accum_before.split("<")[1].split(",")[0])
    # the narrow biases reached the firmware (one bias typedef per layer)
    widths = re.findall(r"typedef ap_fixed<(\d+),-?\d+,AP_RND_CONV,AP_SAT,0> bias\d+_t;", text)
    assert sorted(map(int, widths)) == sorted(lw.bias_bits_after for lw in rep.layers)


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_of_minimised_model_is_exact(mlp_path, mlp_min, vectors, work):
    from edgeml.rtl import generate_rtl

    g = GoldenModel.from_onnx(mlp_min[0])
    d = generate_rtl(g, work / "rtl_min", "mlp_min", pipelined=True)
    d.build()
    assert _n_bad(d.predict_int(vectors), g.predict(vectors)) == 0
    # da4ml hard-wires biases as constants and sizes wires by value: same Verilog as before
    d0 = generate_rtl(GoldenModel.from_onnx(mlp_path), work / "rtl_orig", "mlp_min", pipelined=True)
    for f0, f1 in zip(sorted(d0.verilog_files), sorted(d.verilog_files), strict=True):
        assert f0.name == f1.name and f0.read_text() == f1.read_text()
