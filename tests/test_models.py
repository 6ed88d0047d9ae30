"""Tests for the built-in digits designs (models/digits.py) and QONNX export (edgeml/export.py)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeml.errors import ConfigError, CorruptFileError
from edgeml.export import EDGE_OPS, clean_qonnx, export_qonnx, load_onnx
from edgeml.models import digits
from edgeml.models.digits import (
    DigitsData,
    accuracy,
    build_float_model,
    build_qat_model,
    load_checkpoint,
    load_digits_split,
    prune_and_finetune,
    save_checkpoint,
    torch_predict,
    train_float,
    train_qat,
    weight_codes,
    weight_sparsity,
)

ARCHS = ("mlp", "cnn")
IN_SHAPE = (1, 1, 8, 8)


@pytest.fixture(scope="module")
def data() -> DigitsData:
    return load_digits_split(seed=0)


@pytest.fixture(scope="module")
def quick(data: DigitsData) -> dict[str, dict[str, torch.nn.Module]]:
    """Briefly trained float / QAT / pruned models per arch: enough for shapes, not accuracy."""
    out = {}
    for arch in ARCHS:
        f = train_float(arch, data, epochs=2, seed=0)
        q = train_qat(arch, data, f, bit_width=6, epochs=2, seed=0)
        p = prune_and_finetune(q, data, sparsity=0.5, epochs=1, seed=0)
        out[arch] = {"float": f, "qat": q, "pruned": p}
    return out


@pytest.fixture(scope="module")
def exported(quick, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qonnx")
    return {
        arch: export_qonnx(quick[arch]["pruned"], IN_SHAPE, root / f"{arch}.qonnx.onnx")
        for arch in ARCHS
    }


def _quant_weight_codes(path: Path) -> dict[tuple[int, ...], np.ndarray]:
    """Integer codes of every weight Quant node (initializer input of rank >= 2), by shape."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    codes = {}
    for node in model.graph.node:
        if node.op_type != "Quant" or node.input[0] not in inits:
            continue
        w = inits[node.input[0]].astype(np.float64)
        if w.ndim < 2:
            continue  # bias
        scale = float(inits[node.input[1]])
        zero = float(inits[node.input[2]])
        bits = int(inits[node.input[3]])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert zero == 0.0 and attrs["signed"] == 1 and attrs["rounding_mode"] == b"ROUND"
        assert np.log2(scale) == np.round(np.log2(scale)), "weight scale must be a power of two"
        lo = -(2 ** (bits - 1)) + int(attrs["narrow"])
        q = np.clip(np.round(w / scale), lo, 2 ** (bits - 1) - 1)  # np.round is half-even
        codes[w.shape] = q.astype(np.int64)
    return codes


# ----------------------------------------------------------------------------- data


def test_split_shapes_values_and_stratification(data: DigitsData) -> None:
    assert data.x_train.shape == (1437, 1, 8, 8) and data.x_test.shape == (360, 1, 8, 8)
    assert data.y_train.shape == (1437,) and data.y_test.shape == (360,)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    x = np.concatenate([data.x_train, data.x_test])
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(x * 16, np.round(x * 16))  # exact multiples of 1/16
    # stratified: every class's share of the test set is within one sample of 20 %
    tr = np.bincount(data.y_train, minlength=10)
    te = np.bincount(data.y_test, minlength=10)
    assert np.all(np.abs(te - 0.2 * (tr + te)) <= 1.0)


def test_split_deterministic() -> None:
    a, b, c = load_digits_split(seed=3), load_digits_split(seed=3), load_digits_split(seed=4)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(frac: float) -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        load_digits_split(test_fraction=frac)


# ---------------------------------------------------------------------- architectures


@pytest.mark.parametrize("arch", ARCHS)
def test_float_and_qat_share_parameter_names(arch: str) -> None:
    f = build_float_model(arch).state_dict()
    q = build_qat_model(arch, 6).state_dict()
    for key, val in f.items():
        assert key in q and q[key].shape == val.shape, key


def test_unknown_arch_and_bit_width_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_float_model("resnet")
    with pytest.raises(ConfigError, match="bit_width"):
        build_qat_model("mlp", 12)


def test_input_quantizer_is_constant_unsigned_8bit_pow2() -> None:
    model = build_qat_model("mlp", 6).train()
    x = torch.tensor([0.0, 1 / 16, 1.0, 255 / 128, 3.0, -1.0])
    for mode in (True, False):
        model.train(mode)
        qt = model.inp(x)
        assert float(qt.scale) == 2.0**-7 and float(qt.bit_width) == 8 and not qt.signed
        assert qt.value.tolist() == [0.0, 1 / 16, 1.0, 255 / 128, 255 / 128, 0.0]
    assert not any(k.startswith("inp.") for k in model.state_dict())  # nothing learned


# -------------------------------------------------------------------------- training


def test_training_is_deterministic(data: DigitsData) -> None:
    a = train_float("mlp", data, epochs=1, seed=7)
    b = train_float("mlp", data, epochs=1, seed=7)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    init = build_float_model("cnn")
    qa = train_qat("cnn", data, init, epochs=1, seed=7)
    qb = train_qat("cnn", data, init, epochs=1, seed=7)
    np.testing.assert_array_equal(torch_predict(qa, data.x_test), torch_predict(qb, data.x_test))


@pytest.mark.parametrize("arch", ARCHS)
def test_prune_zeroes_half_the_integer_weights(quick, arch: str) -> None:
    qat, pruned = quick[arch]["qat"], quick[arch]["pruned"]
    assert weight_sparsity(pruned) >= 0.49
    for name, codes in weight_codes(pruned).items():
        assert np.mean(codes == 0) >= 0.49, name  # per-layer pruning by default
    assert weight_sparsity(qat) < 0.49  # the input model is left untouched


def test_prune_global_scope(quick, data: DigitsData) -> None:
    p = prune_and_finetune(quick["mlp"]["qat"], data, sparsity=0.6, epochs=1, scope="global")
    assert weight_sparsity(p) >= 0.59


def test_prune_rejects_float_model_and_bad_sparsity(quick, data: DigitsData) -> None:
    with pytest.raises(ConfigError, match="QAT model"):
        prune_and_finetune(quick["mlp"]["float"], data)
    with pytest.raises(ConfigError, match="sparsity"):
        prune_and_finetune(quick["mlp"]["qat"], data, sparsity=1.0, epochs=1)


@pytest.mark.parametrize("arch", ARCHS)
def test_torch_predict_is_exact_dyadic(quick, data: DigitsData, arch: str) -> None:
    model = quick[arch]["pruned"]
    out = torch_predict(model, data.x_test)
    assert out.dtype == np.float64 and out.shape == (360, 10)
    # last layer output = (accumulator + bias code) * (input scale * weight scale)
    last = model.fc3 if arch == "mlp" else model.fc1
    seen = []
    hook = last.register_forward_pre_hook(lambda _m, args: seen.append(float(args[0].scale)))
    try:
        torch_predict(model, data.x_test[:1])
    finally:
        hook.remove()
    with torch.no_grad():
        bias_scale = seen[0] * float(last.quant_weight().scale)
    assert np.log2(bias_scale) == np.round(np.log2(bias_scale))
    acc = out / bias_scale
    np.testing.assert_array_equal(acc, np.round(acc))
    assert np.abs(acc).max() < 2**24
    assert 0.0 <= accuracy(model, data.x_test, data.y_test) <= 1.0


def test_torch_predict_rejects_bad_shape(quick) -> None:
    with pytest.raises(ConfigError, match="shape"):
        torch_predict(quick["mlp"]["float"], np.zeros((3, 64), dtype=np.float32))


# ------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("kind", ["float", "pruned"])
def test_checkpoint_round_trip(quick, data: DigitsData, tmp_path: Path, kind: str) -> None:
    for arch in ARCHS:
        model = quick[arch][kind]
        path = save_checkpoint(model, tmp_path / f"{arch}-{kind}.pt", {"seed": 0, "note": "x"})
        loaded, meta = load_checkpoint(path)
        assert meta["design"] == arch and meta["seed"] == 0 and meta["note"] == "x"
        assert meta["kind"] == ("qat" if kind == "pruned" else "float")
        if kind == "pruned":
            assert meta["bit_width"] == 6
            assert weight_sparsity(loaded) == weight_sparsity(model)
        np.testing.assert_array_equal(
            torch_predict(loaded, data.x_test), torch_predict(model, data.x_test)
        )


def test_checkpoint_meta_must_be_plain(quick, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="meta"):
        save_checkpoint(quick["mlp"]["float"], tmp_path / "m.pt", {"arr": np.zeros(2)})


def test_corrupt_checkpoint_refused(quick, tmp_path: Path) -> None:
    good = save_checkpoint(quick["cnn"]["pruned"], tmp_path / "good.pt", {})
    blob = good.read_bytes()
    cases = {
        "truncated.pt": blob[: len(blob) // 2],
        "garbage.pt": b"\x00not a checkpoint" * 50,
        "empty.pt": b"",
    }
    for name, content in cases.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(CorruptFileError, match=str(bad)):
            load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CorruptFileError, match="not an edgeml"):
        load_checkpoint(foreign)
    with pytest.raises(CorruptFileError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


# ---------------------------------------------------------------------------- export


@pytest.mark.parametrize("arch", ARCHS)
def test_export_graph_ops_and_quant_attributes(exported, arch: str) -> None:
    model = load_onnx(exported[arch])
    ops = [n.op_type for n in model.graph.node]
    assert set(ops) <= EDGE_OPS, ops
    assert "Gemm" not in ops and "MatMul" in ops
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Quant":
            scale = inits[node.input[1]].astype(np.float64)
            assert np.all(np.log2(scale) == np.round(np.log2(scale))), node.name
    # the input Quant: unsigned 8-bit, scale 2**-7, fed by the graph input (via Transpose for CNN)
    first_q = next(n for n in model.graph.node if n.op_type == "Quant" and n.input[0] not in inits)
    assert float(inits[first_q.input[1]]) == 2.0**-7 and int(inits[first_q.input[3]]) == 8
    path_ops = [
        n.op_type for n in model.graph.node if not (n.op_type == "Quant" and n.input[0] in inits)
    ]
    expected = {
        "cnn": ["Transpose", "Quant", "Conv", "Relu", "Quant", "MaxPool", "Flatten", "MatMul", "Add"],
        "mlp": ["Quant", "Reshape", "MatMul", "Add", "Relu", "Quant", "MatMul", "Add", "Relu",
                "Quant", "MatMul", "Add"],
    }  # fmt: skip
    assert path_ops == expected[arch]
    if arch == "cnn":
        conv = next(n for n in model.graph.node if n.op_type == "Conv")
        w_quant = next(n for n in model.graph.node if n.output[0] == conv.input[1])
        assert inits[w_quant.input[0]].shape == (8, 3, 3, 1)  # OHWI (channels last)


@pytest.mark.parametrize("arch", ARCHS)
def test_exported_weight_codes_match_and_are_sparse(quick, exported, arch: str) -> None:
    onnx_codes = _quant_weight_codes(exported[arch])
    torch_codes = weight_codes(quick[arch]["pruned"])
    assert len(onnx_codes) == len(torch_codes)
    total = sum(c.size for c in onnx_codes.values())
    zeros = sum(int(np.count_nonzero(c == 0)) for c in onnx_codes.values())
    assert zeros / total >= 0.49
    for codes in torch_codes.values():
        match = [c for c in onnx_codes.values() if c.size == codes.size]
        assert len(match) == 1
        np.testing.assert_array_equal(np.sort(match[0].ravel()), np.sort(codes.ravel()))


@pytest.mark.parametrize("arch", ARCHS)
def test_exported_graph_executes_bit_exactly(quick, exported, data: DigitsData, arch: str) -> None:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    model = ModelWrapper(str(exported[arch]))
    x = data.x_test[:6].copy()
    x[0, 0, 0, :4] = [3.0, 255 / 128, 2.0, -0.5]  # saturating / negative inputs
    ref = torch_predict(quick[arch]["pruned"], x)
    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    got = np.concatenate([execute_onnx(model, {iname: x[i : i + 1]})[oname] for i in range(len(x))])
    np.testing.assert_array_equal(got.astype(np.float64), ref)


def test_clean_qonnx_is_idempotent(exported, tmp_path: Path) -> None:
    again = clean_qonnx(exported["cnn"], tmp_path / "again.onnx")
    first = load_onnx(exported["cnn"])
    assert [n.op_type for n in again.graph.node] == [n.op_type for n in first.graph.node]
    assert (tmp_path / "again.onnx").is_file()


def test_clean_qonnx_handles_plain_onnx_gemm(tmp_path: Path) -> None:
    """A non-Brevitas graph (Gemm + Relu, no Quant) is cleaned too: Gemm becomes MatMul + Add."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w, b],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    path = tmp_path / "plain.onnx"
    onnx.save(proto, str(path))
    cleaned = clean_qonnx(path)
    assert [n.op_type for n in cleaned.graph.node] == ["MatMul", "Add", "Relu"]


def test_corrupt_onnx_refused(exported, tmp_path: Path) -> None:
    blob = Path(exported["mlp"]).read_bytes()
    cases = {
        "garbage.onnx": b"\xff\xfe this is not a protobuf \x00\x01" * 20,
        "truncated.onnx": blob[: len(blob) // 3],
        "empty.onnx": b"",
    }
    for name, content in cases.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(CorruptFileError, match=str(bad)):
            clean_qonnx(bad)
    missing = tmp_path / "missing.onnx"
    with pytest.raises(CorruptFileError, match=f"{missing}.*does not exist"):
        clean_qonnx(missing)
    with pytest.raises(CorruptFileError, match="is not a file"):
        clean_qonnx(tmp_path)


def test_export_rejects_bad_input_shape(quick, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="input_shape"):
        export_qonnx(quick["mlp"]["pruned"], (1, 0, 8), tmp_path / "x.onnx")


# ------------------------------------------------------------ full training (slow)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_full_training_meets_accuracy_floors(data: DigitsData, tmp_path: Path, arch: str) -> None:
    t0 = time.perf_counter()
    f = train_float(arch, data, seed=0)
    q = train_qat(arch, data, f, bit_width=6, seed=0)
    p = prune_and_finetune(q, data, sparsity=0.5, seed=0)
    elapsed = time.perf_counter() - t0
    assert accuracy(f, data.x_test, data.y_test) >= 0.95
    assert accuracy(p, data.x_test, data.y_test) >= 0.93
    path = export_qonnx(p, IN_SHAPE, tmp_path / f"{arch}.qonnx.onnx")
    codes = list(_quant_weight_codes(path).values())
    assert sum(int(np.count_nonzero(c == 0)) for c in codes) / sum(c.size for c in codes) >= 0.49
    assert elapsed < 180, f"training {arch} took {elapsed:.0f} s"  # ~10 s on 2 shared cores
    assert digits.weight_sparsity(p) >= 0.49
