"""The golden integer model against QONNX's own execution, on graphs built with qonnx helpers."""

from __future__ import annotations

import numpy as np
import pytest
import qonnx_builders as qb

from edgeml.errors import CorruptFileError, InputRangeError, UnsupportedOpError
from edgeml.golden import GoldenModel, round_shift
from edgeml.reference import execute_qonnx


def _clean(m, tmp_path, name):
    from edgeml.export import clean_qonnx

    p = qb.save(m, tmp_path / f"{name}.onnx")
    return clean_qonnx(p, tmp_path / f"{name}.clean.onnx")


def _random_codes(g: GoldenModel, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = g.input_quant
    return rng.integers(q.lo, q.hi + 1, size=(n, *g.input_shape), dtype=np.int64)


def _check_exact(g: GoldenModel, m, n: int = 150) -> None:
    x = _random_codes(g, n)
    x[0] = g.input_quant.lo
    x[1] = g.input_quant.hi
    ref = execute_qonnx(m, x * g.input_real_scale)
    got = g.run(x).astype(np.float64) * g.output_scale
    assert got.shape == ref.shape
    mism = int(np.count_nonzero(got != ref))
    assert mism == 0, f"{mism} of {ref.size} outputs differ from QONNX execution"


@pytest.mark.parametrize(
    "mode", ["HALF_EVEN", "HALF_UP", "HALF_DOWN", "FLOOR", "CEIL", "UP", "DOWN"]
)
def test_round_shift_matches_qonnx_rounding(mode):
    from qonnx.custom_op.general.intquant import resolve_rounding_mode

    x = np.arange(-300, 301, dtype=np.int64)
    for shift in (1, 2, 3, 5):
        want = resolve_rounding_mode(mode)(x / 2.0**shift).astype(np.int64)
        assert np.array_equal(round_shift(x, shift, mode), want), (mode, shift)
    assert np.array_equal(round_shift(x, -2, mode), x * 4)


def test_mlp_pot_is_exact_against_qonnx(tmp_path):
    m = _clean(qb.mlp_pot(np.random.default_rng(1)), tmp_path, "mlp")
    g = GoldenModel.from_onnx(m)
    assert [op.kind for op in g.ops] == ["dense", "relu", "requant", "dense"]
    assert g.notes == []
    _check_exact(g, m, 300)


def test_half_even_ties_are_hit_and_exact(tmp_path):
    """The hidden Quant drops 5 fractional bits: many ties; QONNX ROUND is half-to-even."""
    m = _clean(qb.mlp_pot(np.random.default_rng(2)), tmp_path, "mlp")
    g = GoldenModel.from_onnx(m)
    x = _random_codes(g, 400, seed=3)
    _, tr = g.run(x, trace=True)
    requant = next(op for op in g.ops if op.kind == "requant")
    acc = tr[requant.inputs[0]]
    ties = np.count_nonzero((acc & ((1 << requant.shift) - 1)) == 1 << (requant.shift - 1))
    assert ties > 50
    _check_exact(g, m, 400)
    # and half-up would differ on those ties: rounding mode is part of the semantics
    m2 = _clean(qb.mlp_pot(np.random.default_rng(2), rounding="HALF_UP"), tmp_path, "mlp2")
    g2 = GoldenModel.from_onnx(m2)
    assert not np.array_equal(g.run(x), g2.run(x))


def test_cnn_nchw_gemm_cleaned_and_exact(tmp_path):
    m = _clean(qb.cnn_nchw(np.random.default_rng(4)), tmp_path, "cnn")
    g = GoldenModel.from_onnx(m)
    kinds = [op.kind for op in g.ops]
    assert "conv" in kinds and "maxpool" in kinds and kinds[-1] == "dense"
    assert g.input_shape == (2, 6, 6)
    _check_exact(g, m, 120)


def test_bipolar_residual_trunc_transpose_exact(tmp_path):
    m = _clean(qb.bipolar_trunc(np.random.default_rng(5)), tmp_path, "bip")
    g = GoldenModel.from_onnx(m)
    kinds = [op.kind for op in g.ops]
    assert {"transpose", "reshape", "dense", "add", "requant"} <= set(kinds)
    assert set(np.unique(g.param_ops[0].weight)) <= {-1, 1}
    _check_exact(g, m, 200)


def test_float_scales_batchnorm_are_fixed_point_approximations(tmp_path):
    m = _clean(qb.bn_float_scales(np.random.default_rng(6)), tmp_path, "bn")
    g = GoldenModel.from_onnx(m)
    assert g.notes, "non power-of-two scales must be reported as approximations"
    assert any(not op.exact_vs_qonnx for op in g.ops)
    x = _random_codes(g, 300)
    ref = execute_qonnx(m, x * g.input_real_scale)
    got = g.run(x) * g.output_scale
    # 16-bit fixed-point multipliers: a tie-breaking flip of the hidden code (LSB 0.03,
    # times 0.75) plus one output LSB (2**-6) at most, and almost always equal.
    assert np.abs(got - ref).max() <= 0.03 * 0.75 + 2.0**-6 + 1e-9
    assert np.mean(got == ref) > 0.95


def test_unsupported_op_names_op_node_and_supported_list(tmp_path):
    m = qb.unsupported(np.random.default_rng(0))
    with pytest.raises(UnsupportedOpError) as ei:
        GoldenModel.from_onnx(m)
    msg = str(ei.value)
    assert "op LRN" in msg and "LRN_" in msg  # op and node name
    assert "supports" in msg and "MatMul" in msg and "Quant" in msg


def test_malformed_onnx_file_refused(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xfe")
    with pytest.raises(CorruptFileError, match=r"bad\.onnx"):
        GoldenModel.from_onnx(p)
    good = qb.save(qb.mlp_pot(np.random.default_rng(0)), tmp_path / "good.onnx")
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match=r"trunc\.onnx"):
        GoldenModel.from_onnx(trunc)
    with pytest.raises(CorruptFileError, match=r"missing\.onnx"):
        GoldenModel.from_onnx(tmp_path / "missing.onnx")


def test_input_overflow_detected_not_wrapped(tmp_path):
    m = _clean(qb.mlp_pot(np.random.default_rng(1)), tmp_path, "mlp")
    g = GoldenModel.from_onnx(m)
    hi = g.input_quant.hi * g.input_real_scale  # 127/16
    x = np.zeros((4, 16))
    x[2, 5] = hi + 1.0
    with pytest.raises(InputRangeError) as ei:
        g.quantize_input(x)
    assert "1 input value(s) in 1 vector(s)" in str(ei.value)
    assert "ap_fixed<8,4>" in str(ei.value)
    sat = g.quantize_input(x, on_overflow="saturate")
    assert sat[2, 5] == g.input_quant.hi
    with pytest.raises(InputRangeError, match=r"input codes span"):
        g.run(np.full((1, 16), 128, np.int64))


def test_one_perturbed_weight_changes_outputs(tmp_path):
    m = _clean(qb.mlp_pot(np.random.default_rng(1)), tmp_path, "mlp")
    g = GoldenModel.from_onnx(m)
    x = _random_codes(g, 500)
    before = g.run(x)
    g.param_ops[0].weight[3, 4] += 1
    after = g.run(x)
    assert np.count_nonzero((before != after).any(axis=1)) > 0


def test_interval_types_bound_every_traced_value(tmp_path):
    m = _clean(qb.cnn_nchw(np.random.default_rng(4)), tmp_path, "cnn")
    g = GoldenModel.from_onnx(m)
    x = _random_codes(g, 300)
    x[0] = g.input_quant.hi
    x[1] = g.input_quant.lo
    _, tr = g.run(x, trace=True)
    for name, v in tr.items():
        t = g.tensors[name].type
        assert v.min() >= t.qmin and v.max() <= t.qmax, name


def test_power_of_two_mul_moves_binary_point_only(tmp_path):
    """Mul by 0.25 costs nothing: codes pass through; a second consumer keeps the old scale."""
    b = qb.GraphBuilder((6,), (6,))
    x = b.quant("inp", 2.0**-4, 8)
    y = b.node("Mul", [x, b.const(0.25)])
    y = b.node("Add", [y, x])  # x is used again, unscaled
    y = b.quant(y, 2.0**-3, 8)
    m = _clean(b.build(y), tmp_path, "mul")
    g = GoldenModel.from_onnx(m)
    assert g.notes == [] and all(op.exact_vs_qonnx for op in g.ops)
    _check_exact(g, m, 300)


@pytest.mark.parametrize("builder", ["mlp_pot", "cnn_nchw", "bn_float_scales", "bipolar_trunc"])
def test_golden_ir_round_trips_exactly(builder, tmp_path):
    """golden.npz holds the oracle's integers: every constant, type and output survives save/load."""
    import qonnx_builders as qb

    from edgeml.export import clean_qonnx

    g = GoldenModel.from_onnx(clean_qonnx(getattr(qb, builder)(np.random.default_rng(3))))
    h = GoldenModel.load(g.save(tmp_path / "golden.npz"))
    assert h.summary() == g.summary() and h.notes == g.notes
    a, b = g.constants(), h.constants()
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype, k
    q = g.input_quant
    x = np.random.default_rng(0).integers(q.lo, q.hi + 1, size=(3000, *g.input_shape))
    assert np.array_equal(g.predict(x), h.predict(x))
    assert [t.type for t in g.tensors.values()] == [t.type for t in h.tensors.values()]


def test_damaged_golden_ir_is_refused(tmp_path):
    import qonnx_builders as qb

    from edgeml.errors import CorruptFileError

    g = GoldenModel.from_onnx(qb.mlp_pot(np.random.default_rng(3)))
    p = g.save(tmp_path / "golden.npz")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match=r"golden IR .* cannot be read"):
        GoldenModel.load(p)


def test_from_torch_is_export_then_from_onnx(tmp_path) -> None:
    """``GoldenModel.from_torch`` compiles what ``export_qonnx`` writes: same integer outputs."""
    import brevitas_models as bm
    import torch

    from edgeml.export import export_qonnx

    torch.manual_seed(0)
    model = bm.mlp()
    bm.calibrate(model, (1, 8, 8), batches=4, batch=64, scale=0.99)
    direct = GoldenModel.from_torch(model, (1, 8, 8))
    via_file = GoldenModel.from_onnx(export_qonnx(model, (1, 1, 8, 8), tmp_path / "m.onnx"))
    x = bm.digits()[0] * np.float32(0.99)  # inside the ap_ufixed<8,0> input
    a = direct.predict(direct.quantize_input(x))
    b = via_file.predict(via_file.quantize_input(x))
    assert a.dtype.kind == "i" and np.array_equal(a, b)
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    out = out.value if hasattr(out, "value") else out
    codes = np.round(out.numpy() / direct.output_scale).astype(np.int64)
    assert int(np.sum(codes.reshape(len(x), -1) != a.reshape(len(x), -1))) == 0
