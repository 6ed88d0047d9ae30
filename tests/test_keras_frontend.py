"""Keras 3 front end: QKeras-compat and HGQ2 ``.keras`` files to QONNX, bit-exact at every level.

Models are built with the real libraries (HGQ2's ``qkeras`` compat layers and HGQ2
native layers) in a separate Python process and saved with ``model.save``; the
tests load them from the file, as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

from edgeml.errors import CorruptFileError, UnsupportedOpError
from edgeml.export import clean_qonnx
from edgeml.fixed import FixedType
from edgeml.golden import GoldenModel
from edgeml.keras_frontend import QONNX_DOMAIN, KerasConversion, keras_to_qonnx

EXACT_MODELS = ("qkeras_jet_mlp", "qkeras_conv", "hgq_dense", "qkeras_functional")
ALL_MODELS = (
    *EXACT_MODELS,
    *("qkeras_no_input_quant", "qkeras_lstm", "qkeras_lambda", "hgq_default", "hgq_wrap"),
)
N_VECTORS = 10_000


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory) -> Path:
    """Every test model saved as ``<name>.keras`` by a separate Python process."""
    root = tmp_path_factory.mktemp("keras_models")
    here = Path(__file__).parent
    env = {**os.environ, "KERAS_BACKEND": "torch", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(here / "keras_models.py"), str(root), *ALL_MODELS],
        check=True,
        env=env,
        cwd=str(here),
        capture_output=True,
    )
    return root


@pytest.fixture(scope="module")
def converted(keras_files, tmp_path_factory) -> dict[str, tuple[KerasConversion, GoldenModel]]:
    out = tmp_path_factory.mktemp("keras_qonnx")
    res = {}
    for name in EXACT_MODELS:
        conv = keras_to_qonnx(keras_files / f"{name}.keras", out / f"{name}.onnx")
        mw = clean_qonnx(conv.onnx_path, out / f"{name}.clean.onnx")
        res[name] = (conv, GoldenModel.from_onnx(mw))
    return res


def _grid_inputs(conv: KerasConversion, n: int, seed: int) -> np.ndarray:
    t = conv.input_type
    assert t is not None
    rng = np.random.default_rng(seed)
    return rng.integers(t.qmin, t.qmax + 1, (n, *conv.input_shape))


def _keras_out(path: Path, x: np.ndarray) -> np.ndarray:
    from edgeml.keras_frontend import load_keras_model

    m = load_keras_model(path)
    y = m.predict(x.astype(np.float32), batch_size=2048, verbose=0)
    return np.asarray(y, dtype=np.float64).reshape(len(x), -1)


@pytest.mark.parametrize("name", EXACT_MODELS)
def test_keras_forward_equals_golden_over_10k(name, keras_files, converted):
    conv, g = converted[name]
    codes = _grid_inputs(conv, N_VECTORS, seed=3)
    y_keras = _keras_out(keras_files / f"{name}.keras", codes * 2.0**-conv.input_type.frac)
    out = g.predict(conv.keras_to_onnx_input(codes))
    y_golden = (out * g.output_scale).reshape(len(codes), -1)
    mismatches = int(np.count_nonzero(np.any(y_keras != y_golden, axis=1)))
    print(f"\n[keras] {name}: {mismatches}/{N_VECTORS} vectors differ (Keras forward vs golden)")
    assert mismatches == 0
    assert len(np.unique(out.reshape(len(out), -1), axis=0)) > N_VECTORS // 2


def test_qonnx_graph_is_valid_and_uses_qonnx_domain(converted):
    for name, (conv, _) in converted.items():
        proto = onnx.load(str(conv.onnx_path))
        onnx.checker.check_model(proto)
        assert {o.domain: o.version for o in proto.opset_import}.get(QONNX_DOMAIN) == 1, name
        quants = [n for n in proto.graph.node if n.op_type == "Quant"]
        assert quants and all(n.domain == QONNX_DOMAIN for n in quants)
        assert proto.graph.node[0].op_type == "Quant"  # the input quantizer comes first


def test_qkeras_types_and_rounding(converted):
    conv, _ = converted["qkeras_jet_mlp"]
    # HGQ2's quantized_bits(8, 3) counts 8 bits *without* the sign: ap_fixed<9,4>.
    assert conv.input_type == FixedType(True, 9, 5)
    proto = onnx.load(str(conv.onnx_path))
    modes = {
        a.s.decode() for n in proto.graph.node for a in n.attribute if a.name == "rounding_mode"
    }
    assert modes == {"ROUND"}  # quantized_bits rounds half to even (RND_CONV)
    conv_cnn, g_cnn = converted["qkeras_conv"]
    assert conv_cnn.input_layout == "NCHW" and g_cnn.input_shape == (1, 8, 8)


def test_hgq_heterogeneous_weights_and_rnd(converted):
    conv, _ = converted["hgq_dense"]
    text = "\n".join(conv.changes)
    assert "'fc1' (QDense) kernel: written as ap_fixed<" in text
    assert "'fc3' (QDense) output quantizer: RND (ties toward +inf) written as Add(2**-6)" in text
    assert any(
        "input quantizer RND (ties toward +inf) written as QONNX ROUND" in n for n in conv.notes
    )


def test_rnd_as_half_even_would_differ(keras_files, converted, tmp_path):
    """Negative control: HGQ2's RND written as a plain QONNX ROUND (ties to even) is caught."""
    conv, _ = converted["hgq_dense"]
    proto = onnx.load(str(conv.onnx_path))
    nodes = list(proto.graph.node)
    add = next(n for n in nodes if n.op_type == "Add" and "_rnd" in n.output[0])
    quant = next(n for n in nodes if add.output[0] in n.input)
    quant.input[0] = add.input[0]
    for a in quant.attribute:
        if a.name == "rounding_mode":
            a.s = b"ROUND"
    proto.graph.node.remove(add)
    onnx.save(proto, str(tmp_path / "half_even.onnx"))
    g = GoldenModel.from_onnx(clean_qonnx(tmp_path / "half_even.onnx"))
    codes = _grid_inputs(conv, N_VECTORS, seed=3)
    y_keras = _keras_out(keras_files / "hgq_dense.keras", codes * 2.0**-conv.input_type.frac)
    y_wrong = (g.predict(codes) * g.output_scale).reshape(len(codes), -1)
    assert int(np.count_nonzero(np.any(y_keras != y_wrong, axis=1))) > 100


def test_unsupported_layer_is_named(keras_files, tmp_path):
    with pytest.raises(UnsupportedOpError) as exc:
        keras_to_qonnx(keras_files / "qkeras_lstm.keras", tmp_path / "x.onnx")
    msg = str(exc.value)
    assert "layer 'lstm' (LSTM) is not supported" in msg
    assert "supported layers: InputLayer, Quantizer (QActivation), QDense" in msg


def test_lambda_layer_is_refused_without_running_it(keras_files, tmp_path):
    with pytest.raises(UnsupportedOpError, match=r"Lambda layer .* safe_mode=True"):
        keras_to_qonnx(keras_files / "qkeras_lambda.keras", tmp_path / "x.onnx")


def test_corrupt_keras_file(keras_files, tmp_path):
    good = (keras_files / "qkeras_jet_mlp.keras").read_bytes()
    bad = tmp_path / "truncated.keras"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptFileError, match="truncated or corrupt"):
        keras_to_qonnx(bad, tmp_path / "x.onnx")
    text = tmp_path / "text.keras"
    text.write_text("not a zip")
    with pytest.raises(CorruptFileError, match=r"not a readable \.keras archive"):
        keras_to_qonnx(text, tmp_path / "y.onnx")


def test_hgq_defaults_are_refused_with_a_fix(keras_files, tmp_path):
    with pytest.raises(
        UnsupportedOpError, match=r"'fc1' \(QDense\) input quantizer: heterogeneous"
    ):
        keras_to_qonnx(keras_files / "hgq_default.keras", tmp_path / "x.onnx")
    with pytest.raises(UnsupportedOpError, match=r"overflow mode WRAP.*overflow_mode='SAT'"):
        keras_to_qonnx(keras_files / "hgq_wrap.keras", tmp_path / "x.onnx")
    conv = keras_to_qonnx(keras_files / "hgq_wrap.keras", tmp_path / "w.onnx", wrap_as_sat=True)
    assert any("WRAP overflow written as saturation" in n for n in conv.notes)


def test_missing_input_quantizer(keras_files, tmp_path):
    path = keras_files / "qkeras_no_input_quant.keras"
    with pytest.raises(UnsupportedOpError, match=r"unquantized model input.*input_type=FixedType"):
        keras_to_qonnx(path, tmp_path / "x.onnx")
    conv = keras_to_qonnx(path, tmp_path / "y.onnx", input_type=FixedType(True, 6, 3))
    g = GoldenModel.from_onnx(clean_qonnx(conv.onnx_path))
    codes = _grid_inputs(conv, 2000, seed=5)
    y_keras = _keras_out(path, codes * 2.0**-3)
    assert np.array_equal(y_keras, (g.predict(codes) * g.output_scale).reshape(len(codes), -1))


# --------------------------------------------------------------------------- hls4ml, RTL


@pytest.mark.slow
@pytest.mark.hls
@pytest.mark.parametrize("name", EXACT_MODELS[:3])
def test_golden_equals_hls_csim_over_10k(name, converted, tmp_path):
    import shutil

    from edgeml.hls import convert_hls

    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    conv, g = converted[name]
    # hls4ml gives the output the final Quant's declared type; golden's output_type is the
    # (possibly narrower) reachable range at the same scale, so codes compare directly.
    out_type = conv.output_type or g.output_type
    assert out_type.frac == g.output_type.frac
    design = convert_hls(
        Path(str(conv.onnx_path).replace(".onnx", ".clean.onnx")),
        tmp_path / "prj",
        name=f"k_{name}",
        input_type=g.input_type,
        output_type=out_type,
    )
    codes = conv.keras_to_onnx_input(_grid_inputs(conv, N_VECTORS, seed=7))
    got = design.predict_int(codes)
    ref = g.predict(codes)
    mismatches = int(np.count_nonzero(np.any((got != ref).reshape(len(ref), -1), axis=1)))
    print(f"\n[hls] {name}: {mismatches}/{N_VECTORS} vectors differ (C-sim vs golden)")
    assert mismatches == 0


@pytest.mark.slow
@pytest.mark.rtl
@pytest.mark.parametrize("name", EXACT_MODELS[:3])
def test_golden_equals_rtl_over_10k(name, converted, tmp_path):
    from edgeml.rtl import generate_rtl

    conv, g = converted[name]
    d = generate_rtl(g, tmp_path / "rtl", f"k_{name}")
    d.build()
    codes = conv.keras_to_onnx_input(_grid_inputs(conv, N_VECTORS, seed=9))
    got = d.predict_int(codes, n_threads=1)
    ref = g.predict(codes)
    mismatches = int(np.count_nonzero(np.any((got != ref).reshape(len(ref), -1), axis=1)))
    print(f"\n[rtl] {name}: {mismatches}/{N_VECTORS} vectors differ (Verilator vs golden)")
    assert mismatches == 0


@pytest.mark.slow
@pytest.mark.hls
@pytest.mark.parametrize("name", ["qkeras_jet_mlp", "hgq_dense"])
def test_hls4ml_keras_frontend_agrees_with_golden(name, keras_files, converted, tmp_path):
    """Independent reference: hls4ml's own Keras front end (KERAS_BACKEND=torch) vs golden."""
    import shutil

    import hls4ml

    from edgeml.keras_frontend import load_keras_model

    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    conv, g = converted[name]
    model = load_keras_model(keras_files / f"{name}.keras")
    cfg = hls4ml.utils.config_from_keras_model(model, granularity="name", backend="Vitis")
    hm = hls4ml.converters.convert_from_keras_model(
        model, hls_config=cfg, output_dir=str(tmp_path / "hk"), backend="Vitis",
        io_type="io_parallel",
    )  # fmt: skip
    hm.compile()
    codes = _grid_inputs(conv, N_VECTORS, seed=13)
    x = np.ascontiguousarray((codes * 2.0**-conv.input_type.frac).astype(np.float32))
    y_hls = np.asarray(hm.predict(x), dtype=np.float64).reshape(len(x), -1)
    y_golden = (g.predict(codes) * g.output_scale).reshape(len(x), -1)
    mismatches = int(np.count_nonzero(np.any(y_hls != y_golden, axis=1)))
    print(f"\n[hls4ml-keras] {name}: {mismatches}/{N_VECTORS} vectors differ (vs golden)")
    assert mismatches == 0
