"""The RN08-style tiny ResNet (models/resnet.py): registry entry, residual Adds, exactness.

One briefly trained model (float, 6-bit QAT, 50 % pruned) is shared by the module.
Golden vs Brevitas runs by default (seconds); hls4ml C-sim and the Verilator
build of the full design are marked ``hls`` / ``rtl`` and ``slow``. The
Verilator library is cached by a hash of the Verilog, so with deterministic
training a second session builds nothing.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeml.errors import ConfigError
from edgeml.export import export_qonnx
from edgeml.golden import AddTensors, GoldenModel
from edgeml.models import resnet, training, zoo
from edgeml.verify import compare_codes, verification_vectors

SPEC = zoo.get("rn08")
IN_SHAPE = (1, *SPEC.input_shape)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data() -> training.Dataset:
    return SPEC.load_data(0)


@pytest.fixture(scope="module")
def trained(data) -> dict[str, torch.nn.Module]:
    """Float (15 epochs), 6-bit QAT (5 epochs), 50 % pruned + 3 epochs fine-tune, seed 0."""
    f = zoo.train_float(SPEC, data, 15, seed=0)
    q = zoo.train_qat(SPEC, data, f, 6, 5, seed=0)
    p = zoo.prune(SPEC, data, q, 0.5, 3, seed=0)
    return {"float": f, "qat": q, "pruned": p}


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rn08")
    return {
        kind: export_qonnx(trained[kind], IN_SHAPE, root / f"{kind}.qonnx.onnx")
        for kind in ("qat", "pruned")
    }


@pytest.fixture(scope="module")
def vectors(exported, data) -> tuple[np.ndarray, dict[str, int]]:
    """The 360 test digits + 10,000 random input codes + corner cases (10,429)."""
    g = GoldenModel.from_onnx(exported["pruned"])
    return verification_vectors(g, g.quantize_input(data.x_test), 10_000, 1234)


def _brevitas_codes(model: torch.nn.Module, g: GoldenModel, x: np.ndarray) -> np.ndarray:
    """The Brevitas model's logits as golden output codes; refuses values off the grid."""
    scale = float(np.asarray(g.output_scale).reshape(-1)[0])
    y = training.predict(model, x.astype(np.float64) * g.input_real_scale) / scale
    q = np.rint(y)
    assert np.array_equal(q, y), "torch outputs off the golden output grid"
    return q.astype(np.int64)


# --------------------------------------------------------------------------- architecture


def test_registry_entry_and_twin_parameter_names():
    assert SPEC is resnet.DESIGNS["rn08"]
    assert SPEC.input_shape == (1, 8, 8) and SPEC.task == "classification"
    f, q = SPEC.build_float(), SPEC.build_qat(6)
    names = {k for k, _ in f.named_parameters()}
    assert names == {k for k, _ in q.named_parameters() if k.endswith((".weight", ".bias"))}
    # the stack-2 projection shortcut exists, stack 1 uses the identity
    assert "stack2.shortcut.weight" in names and "stack1.shortcut.weight" not in names
    assert resnet.n_parameters(f) == resnet.n_parameters(q) == 1586
    assert f(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize("bad", [1, 9, 6.0, True])
def test_bad_bit_width_is_a_config_error(bad):
    with pytest.raises(
        ConfigError, match="bit_width of design 'rn08' must be an integer from 2 to 8"
    ):
        SPEC.build_qat(bad)


def test_short_training_beats_accuracy_floor(trained, data):
    acc = {
        k: zoo.evaluate(SPEC, m, data.x_test, data.y_test)["accuracy"] for k, m in trained.items()
    }
    print(f"\n[rn08] short run test accuracy: {acc}")
    assert acc["float"] >= 0.90
    assert acc["qat"] >= 0.90
    assert acc["pruned"] >= 0.85
    assert zoo.edge_sparsity(SPEC, trained["pruned"]) >= 0.5


# --------------------------------------------------------------------------- QONNX + golden


def test_qonnx_residual_adds_join_two_equal_scale_quantized_tensors(exported):
    """Two Add nodes of two dynamic tensors, each fed by Quant nodes with one shared PoT scale."""
    m = onnx.load(str(exported["qat"]))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    consumers = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    const = set(inits)  # tensors computed from initializers only (quantized weights, biases)
    for n in m.graph.node:
        if all(i in const for i in n.input if i):
            const.update(n.output)
    adds = [n for n in m.graph.node if n.op_type == "Add" and not set(n.input) & const]
    assert len(adds) == 2  # one per residual stack; the fc bias Add has a constant input
    for add in adds:
        srcs = [producer[i] for i in add.input]
        assert [s.op_type for s in srcs] == ["Quant", "Quant"]
        scales = {float(inits[s.input[1]]) for s in srcs}
        assert len(scales) == 1, f"{add.name}: operands carry different scales {scales}"
        (scale,) = scales
        assert np.log2(scale) == round(np.log2(scale))
        assert [c.op_type for c in consumers[add.output[0]]] == ["Relu"]
    # stack 1 adds the identity (a MaxPool output), stack 2 a strided 1x1 Conv
    short = [producer[producer[add.input[1]].input[0]] for add in adds]
    assert short[0].op_type == "MaxPool"
    assert short[1].op_type == "Conv"
    kshape = next(a.ints for a in short[1].attribute if a.name == "kernel_shape")
    strides = next(a.ints for a in short[1].attribute if a.name == "strides")
    assert list(kshape) == [1, 1] and list(strides) == [2, 2]

    g = GoldenModel.from_onnx(exported["qat"])
    gadds = [op for op in g.ops if isinstance(op, AddTensors)]
    assert len(gadds) == 2
    assert all(op.shift_a == 0 and op.shift_b == 0 for op in gadds)  # same binary point


@pytest.mark.parametrize("kind", ["qat", "pruned"])
def test_golden_matches_brevitas_bit_exact(kind, trained, exported, vectors):
    g = GoldenModel.from_onnx(exported[kind])
    x, counts = vectors
    assert counts["data"] == 360 and len(x) >= 10_000
    res = compare_codes("brevitas", g.predict(x), _brevitas_codes(trained[kind], g, x))
    assert (res.vectors, res.mismatching_vectors) == (len(x), 0), res


def test_perturbed_residual_add_is_caught(trained, exported, vectors):
    """Misaligning one residual operand by one bit makes golden and Brevitas disagree."""
    g = copy.deepcopy(GoldenModel.from_onnx(exported["qat"]))
    add = next(op for op in g.ops if isinstance(op, AddTensors))
    add.shift_b = 1
    x, _ = vectors
    res = compare_codes("brevitas", g.predict(x), _brevitas_codes(trained["qat"], g, x))
    assert res.mismatching_vectors > len(x) // 10


# --------------------------------------------------------------------------- hls4ml, RTL


@pytest.mark.hls
@pytest.mark.slow
def test_hls4ml_csim_bit_exact_with_merge_adds(exported, vectors, tmp_path):
    from edgeml.hls import convert_hls

    g = GoldenModel.from_onnx(exported["pruned"])
    t0 = time.perf_counter()
    d = convert_hls(
        exported["pruned"],
        tmp_path / "hls",
        name="rn08_test",
        input_type=g.input_type,
        output_type=g.output_type,
        trace=False,
    )
    import json

    layers = json.loads((tmp_path / "hls" / "edgeml_hls.json").read_text())["layers"]
    merges = sorted(k for k, v in layers.items() if v["class"] == "Merge")
    assert merges == ["Add_0", "Add_1"]
    x, _ = vectors
    res = compare_codes("csim", g.predict(x), d.predict_int(x))
    print(f"\n[rn08] hls4ml convert + compile + C-sim {time.perf_counter() - t0:.1f} s")
    assert (res.vectors, res.mismatching_vectors) == (len(x), 0), res


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_bit_exact(exported, vectors, tmp_path):
    from edgeml.rtl import generate_rtl

    g = GoldenModel.from_onnx(exported["pruned"])
    t0 = time.perf_counter()
    d = generate_rtl(g, tmp_path / "rtl", "rn08_test", pipelined=True, latency_cutoff=5.0)
    build_s = d.build()
    print(
        f"\n[rn08] RTL latency {d.latency}, ~{d.cost_luts:.0f} LUTs, trace+write+build "
        f"{time.perf_counter() - t0:.1f} s (Verilator {build_s:.1f} s, 0 = cached)"
    )
    x, _ = vectors
    res = compare_codes("rtl", g.predict(x), d.predict_int(x))
    assert (res.vectors, res.mismatching_vectors) == (len(x), 0), res
