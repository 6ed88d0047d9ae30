"""The extended op set in the golden model, on models written by other tools.

Every family in ``op_models`` is compiled from its cleaned QONNX file and compared
with QONNX's own execution of the *original* file (as the other tool wrote it) on
10,000 random input vectors: all scales are powers of two, so the golden model's
dequantized output must be equal, not close. The Brevitas families are also
compared with the Brevitas module itself. Refusals name the op, the node and why.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import op_models
import pytest
from qonnx_builders import GraphBuilder

from edgeml.errors import UnsupportedOpError
from edgeml.golden import GoldenModel, Lookup
from edgeml.reference import execute_original
from edgeml.verify import run_level

N_VECTORS = 10_000


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("op_models")
    return {name: fn(root / f"{name}.onnx") for name, fn in op_models.OP_MODELS.items()}


def _vectors(g: GoldenModel, n: int = N_VECTORS, seed: int = 1) -> np.ndarray:
    q = g.input_quant
    rng = np.random.default_rng(seed)
    return rng.integers(q.lo, q.hi + 1, size=(n, *g.input_shape), dtype=np.int64)


def _mismatches(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int((a != b).reshape(len(a), -1).any(axis=1).sum())


@pytest.mark.parametrize("family", list(op_models.OP_MODELS))
def test_golden_equals_qonnx_on_original_file(built: dict[str, Path], family: str) -> None:
    path = built[family]
    g = GoldenModel.from_onnx(path)
    kinds = {op.kind for op in g.ops}
    x = _vectors(g)
    got = g.predict(x) * g.output_scale
    ref = execute_original(onnx.load(str(op_models.raw_path(path))), x * g.input_real_scale)
    assert _mismatches(got, ref.reshape(got.shape)) == 0
    # the family really exercises new ops (not a graph that folded them away)
    new = {"gather", "lookup", "sub", "mul", "matmul"}
    if family not in ("brevitas_unrolled",):
        assert kinds & (new | {"conv", "dense"}), kinds
    if family in ("tables", "brevitas_gru_cell", "brevitas_unrolled"):
        assert "lookup" in kinds
    if family in ("movement", "pooling", "brevitas_gru_cell"):
        assert "gather" in kinds
    if family == "attention":
        assert "matmul" in kinds


@pytest.mark.parametrize("family", list(op_models.BREVITAS_MODULES))
def test_golden_equals_brevitas(built: dict[str, Path], family: str) -> None:
    import torch

    g = GoldenModel.from_onnx(built[family])
    module = op_models.BREVITAS_MODULES[family](0)
    x = _vectors(g, 5_000)
    with torch.no_grad():
        ref = module(torch.tensor(x * g.input_real_scale, dtype=torch.float32)).numpy()
    got = g.predict(x) * g.output_scale
    assert _mismatches(got, ref.astype(np.float64).reshape(got.shape)) == 0


def test_unrolled_layer_gets_one_weight_copy_per_step(built: dict[str, Path]) -> None:
    """A layer reused across unrolled steps: no dangling Transposes, three Dense ops."""
    g = GoldenModel.from_onnx(built["brevitas_unrolled"])
    dense = [op for op in g.ops if op.kind == "dense"]
    assert len(dense) == 3
    assert all(np.array_equal(d.weight, dense[0].weight) for d in dense)


def test_tables_cover_the_whole_input_type(built: dict[str, Path]) -> None:
    g = GoldenModel.from_onnx(built["tables"])
    luts = [op for op in g.ops if isinstance(op, Lookup)]
    assert {op.fn for op in luts} == {"tanh", "sigmoid", "hardsigmoid"}
    for op in luts:
        t = g.tensors[op.inputs[0]].type
        assert op.lo == t.qmin and len(op.table) == 1 << t.width
        out_t = g.tensors[op.output].type
        assert out_t.qmin <= op.table.min() and op.table.max() <= out_t.qmax
    tanh = next(op for op in luts if op.fn == "tanh")
    codes = np.arange(tanh.lo, tanh.lo + len(tanh.table))
    s_in = float(g.tensors[tanh.inputs[0]].scale)
    want = np.clip(np.round(np.tanh(codes * s_in) * 128), -128, 127)
    assert int(np.abs(tanh.table - want).max()) <= 1  # float32 vs float64 ties only


def test_save_load_round_trip_keeps_new_ops(built: dict[str, Path], tmp_path: Path) -> None:
    for family in ("tables", "movement", "attention", "deconv"):
        g = GoldenModel.from_onnx(built[family])
        g2 = GoldenModel.load(g.save(tmp_path / f"{family}.npz"))
        x = _vectors(g, 500)
        assert np.array_equal(g.predict(x), g2.predict(x))


def test_perturbed_table_is_caught_and_named(built: dict[str, Path]) -> None:
    g = GoldenModel.from_onnx(built["tables"])
    bad = GoldenModel.from_onnx(built["tables"])
    lut = next(op for op in bad.ops if isinstance(op, Lookup) and op.fn == "tanh")
    x = _vectors(g, 4000)
    _, trace = g.run(x, trace=True)
    used = np.bincount((trace[lut.inputs[0]] - lut.lo).ravel(), minlength=len(lut.table))
    entry = int(np.argmax(used))  # the most used entry: surely reached
    lut.table = lut.table.copy()
    lut.table[entry] -= 40 if lut.table[entry] > 0 else -40
    res = run_level(
        "perturbed",
        g,
        x,
        g.predict(x),
        bad.predict,
        trace=lambda v: bad.run(v, trace=True)[1],
    )
    assert not res.passed and res.mismatching_vectors > 0
    assert res.first_divergent_layer == lut.label
    assert "lookup tanh" in res.first_divergent_layer


# --------------------------------------------------------------------- refusals


def _compile(b: GraphBuilder, out: str, tmp_path: Path) -> GoldenModel:
    from edgeml.export import clean_qonnx

    m = b.build(out)
    for imp in m.model.opset_import:
        if imp.domain == "":
            imp.version = 13
    return GoldenModel.from_onnx(clean_qonnx(m.model))


def test_wide_table_input_is_refused_with_the_fix(tmp_path: Path) -> None:
    b = GraphBuilder((8,), (8,))
    x = b.quant("inp", 2.0**-6, 8)
    w = np.eye(8, dtype=np.float32) * 0.5
    h = b.node("MatMul", [x, b.qweight(w, 2.0**-5, 6)])  # 16-bit accumulator into Tanh
    h = b.node("Add", [h, b.quant(b.const(np.zeros(8, np.float32)), 2.0**-16, 16)])
    out = b.quant(b.node("Tanh", [b.quant(h, 2.0**-16, 18)]), 2.0**-7, 8)
    with pytest.raises(UnsupportedOpError) as e:
        _compile(b, out, tmp_path)
    msg = str(e.value)
    assert "op Tanh" in msg and "up to 14 bits" in msg
    assert re.search(r"is 1[5-9] bits wide \(ap_fixed<", msg)
    assert "QuantIdentity" in msg


@pytest.mark.parametrize(
    ("op", "attrs", "why"),
    [
        ("Pad", {"mode": "reflect"}, "only constant zero padding"),
        ("Resize", {"mode": "linear"}, "only nearest"),
    ],
)
def test_inexact_movement_is_refused(op: str, attrs: dict, why: str, tmp_path: Path) -> None:
    b = GraphBuilder((2, 4, 4), (2, 8, 8))
    x = b.quant("inp", 2.0**-6, 8)
    if op == "Pad":
        y = b.node("Pad", [x, b.const([0, 0, 2, 2, 0, 0, 2, 2], dtype=np.int64)], **attrs)
    else:
        y = b.node("Resize", [x, "", b.const(np.array([1, 1, 2, 2], np.float32))], **attrs)
    out = b.quant(y, 2.0**-6, 8)
    with pytest.raises(UnsupportedOpError) as e:
        _compile(b, out, tmp_path)
    assert f"(op {op})" in str(e.value) and why in str(e.value)


def test_concat_of_unalignable_scales_is_refused(tmp_path: Path) -> None:
    b = GraphBuilder((4,), (8,))
    x = b.quant("inp", 2.0**-6, 8)
    a = b.quant(x, 0.3, 8)
    c = b.quant(x, 0.7, 8)
    out = b.quant(b.node("Concat", [a, c], axis=1), 2.0**-4, 8)
    with pytest.raises(UnsupportedOpError, match="different non power-of-two scales"):
        _compile(b, out, tmp_path)


def test_moving_the_batch_axis_is_refused(tmp_path: Path) -> None:
    b = GraphBuilder((4,), (4,))
    x = b.quant("inp", 2.0**-6, 8)
    out = b.quant(b.node("Concat", [x, x], axis=0), 2.0**-6, 8)
    with pytest.raises(UnsupportedOpError, match="acts on the batch axis"):
        GoldenModel.from_onnx(b.build(out))  # qonnx's cleanup would refuse it first


def test_constant_minus_tensor_is_exact(tmp_path: Path) -> None:
    """``1 - x`` (constant first) is compiled, not refused as a Sub of two tensors."""
    b = GraphBuilder((6,), (6,))
    x = b.quant("inp", 2.0**-6, 8)
    out = b.quant(b.node("Sub", [b.const(np.float32(1.0)), x]), 2.0**-6, 10)
    g = _compile(b, out, tmp_path)
    codes = np.arange(-128, 128).reshape(-1, 1).repeat(6, 1)
    assert np.array_equal(g.predict(codes) * g.output_scale, 1.0 - codes * 2.0**-6)
