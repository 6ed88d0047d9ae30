"""edgeml.ingest on files written the way FINN, old Brevitas, torch.onnx and QKeras write them.

Each model goes normalise -> clean_qonnx -> GoldenModel, and the golden model's
dequantized output is compared with qonnx's execution of the ORIGINAL file (after
only the domain / opset fix) on 2,000 random inputs on the input's grid.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import external_models as em  # tests/ is on sys.path (conftest.py)
import numpy as np
import onnx
import pytest

from edgeml.errors import ConfigError, CorruptFileError, UnsupportedOpError
from edgeml.export import clean_qonnx, load_onnx
from edgeml.golden import GoldenModel
from edgeml.ingest import (
    InputQuant,
    calib_quant,
    normalise,
    normalise_file,
    parse_finn_datatype,
    parse_input_type,
)

N = 2000
QD = "qonnx.custom_op.general"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("external")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "finn": em.finn_mlp(0, d / "finn.onnx"),
            "finn_raw": em.finn_mlp(1, d / "finn_raw.onnx", preprocess=False),
            "brevitas": em.brevitas_old_mlp(2, d / "brevitas.onnx"),
            "torch": em.torch_float_mlp(3, d / "torch.onnx"),
            "conv": em.conv_nchw(4, d / "conv.onnx"),
            "conv_nhwc": em.conv_nchw(5, d / "conv_nhwc.onnx", nhwc_input=True),
            "qkeras": em.qkeras_mlp(6, d / "qkeras.onnx"),
        }


def _golden(ing) -> GoldenModel:
    onnx.checker.check_model(ing.model)  # the normalised graph is valid ONNX
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GoldenModel.from_onnx(clean_qonnx(ing.model))


def _inputs(g: GoldenModel, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """N random input vectors on the input grid: (codes, real values)."""
    q = g.input_quant
    codes = np.random.default_rng(seed).integers(q.lo, q.hi + 1, size=(N, *g.input_shape))
    return codes, codes * g.input_real_scale


def _compare(g: GoldenModel, src: Path, tensor: str | None = None) -> tuple[float, float]:
    """(max |golden - qonnx(original)|, argmax agreement) over N vectors."""
    codes, x = _inputs(g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = em.qonnx_reference(src, x, tensor=tensor).reshape(N, -1)
    y = (g.predict(codes) * g.output_scale).reshape(N, -1)
    err = float(np.abs(y - ref).max())
    agree = float((y.argmax(1) == ref.argmax(1)).mean())
    print(f"{src.name}: max err {err:.3g}, argmax agreement {agree:.4f} over {N}")
    return err, agree


def _same_semantics(ing, src: Path, tmp_path: Path, seed: int = 1) -> np.ndarray:
    """|qonnx(normalised) - qonnx(original)| on N inputs of the inserted / existing input grid."""
    p = ing.save(tmp_path / "ingested.onnx")
    g = _golden(ing)
    _, x = _inputs(g, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = em.qonnx_reference(p, x)
        b = em.qonnx_reference(src, x)
    return np.abs(a - b)


# --------------------------------------------------------------------------- (a) FINN


def test_finn_changes(files):
    ing = normalise(files["finn"])
    assert ing.input_precision == "annotation"
    assert ing.input_quant == InputQuant(8, False, 1.0)
    assert ing.changes == [
        "renamed domain finn.custom_op.general -> qonnx.custom_op.general on 1 node(s)",
        "renamed domain finn -> qonnx.custom_op.general on 1 node(s)",
        "added opset import qonnx.custom_op.general v1",
        "graph input 'global_in' read as UINT8 from its FINN quantization_annotation: inserted "
        "Quant(8-bit unsigned, scale 1 (ap_ufixed<8,8>), rounding ROUND) after the input",
        "node 'BipolarQuant_5': BipolarQuant of constant weight 'Constant_3' rewritten as the "
        "equivalent Quant(2-bit signed narrow) of its signs (exact; hls4ml stores BipolarQuant "
        "weights as {0, 1})",
        "weight 'W2_int2' of MatMul 'MatMul_1' annotated INT2: inserted Quant(2-bit signed, "
        "scale 1 (ap_fixed<2,2>))",
    ]
    onnx.checker.check_model(ing.model)
    # the inserted quantizer comes first and reads the graph input; Mul(1/255) follows it
    first = ing.model.graph.node[0]
    assert (first.op_type, first.domain, first.input[0]) == ("Quant", QD, "global_in")
    mul = next(n for n in ing.model.graph.node if n.name == "Mul_0")
    assert mul.input[0] == first.output[0]


def test_finn_normalised_graph_computes_the_same(files, tmp_path):
    # integer inputs and INT2 weights: the inserted Quants are identities -> bit-identical
    assert _same_semantics(normalise(files["finn"]), files["finn"], tmp_path).max() == 0.0


def test_finn_without_preprocessing_matches_qonnx(files):
    g = _golden(normalise(files["finn_raw"]))
    err, agree = _compare(g, files["finn_raw"])
    # BatchNorm / Mul / Add constants are 16-fractional-bit fixed point in the golden model
    assert err < 1e-3 and agree >= 0.999


def test_finn_with_preprocessing_matches_qonnx(files):
    g = _golden(normalise(files["finn"]))
    err, agree = _compare(g, files["finn"])
    # the fixed-point Mul / BatchNorm may move a 4-bit activation (LSB 0.25) by one code at a
    # rounding boundary; through an INT2 weight (|w| <= 2) and Mul(0.37) that is 0.185, plus
    # the 20-fractional-bit fixed point of the float tail (a few 1e-6)
    assert err <= 0.25 * 2 * 0.37 + 1e-4 and agree >= 0.99


def test_load_onnx_accepts_old_domains_without_opset_import(files):
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(onnx.load(str(files["finn"])))
    proto = load_onnx(files["finn"])  # renamed before the checker
    assert {n.domain for n in proto.graph.node} <= {"", QD}


# --------------------------------------------------------------------------- (b) old Brevitas


def test_brevitas_changes(files):
    ing = normalise(files["brevitas"], input_type="ap_fixed<12,4>")
    assert ing.input_precision == "input_type"
    c = ing.changes
    assert c[0] == "renamed domain onnx.brevitas -> qonnx.custom_op.general on 6 node(s)"
    assert c[1] == "added opset import qonnx.custom_op.general v1"
    assert c[2] == "batch dimension 'batch_size' of graph input 'inp.1' fixed to 1"
    assert c[3] == (
        "graph input 'inp.1' read as ap_fixed<12,4> (input_type): inserted Quant(12-bit signed, "
        "scale 0.00390625 (ap_fixed<12,4>), rounding ROUND) after the input"
    )
    assert c[4].startswith("node 'Div_0': Div by constant [")
    assert "rewritten as Mul by its reciprocal: 1/c rounded to float32" in c[4]
    assert c[5].startswith("node 'Div_1': Div by constant [2.5] rewritten as Mul")
    assert len(c) == 6
    assert not any(n.op_type == "Div" for n in ing.model.graph.node)
    assert ing.model.graph.node[0].input[0] == "inp.1"  # Quant before the Sub


def test_brevitas_normalised_graph_computes_the_same(files, tmp_path):
    ing = normalise(files["brevitas"], input_type="ap_fixed<12,4>")
    diff = _same_semantics(ing, files["brevitas"], tmp_path)
    # x*(1/c) vs x/c differ by float32 rounding only (a Quant tie could flip one LSB: 2**-4/2.5)
    print(f"brevitas: qonnx(normalised) vs qonnx(original) max {diff.max():.3g}")
    assert diff.max() <= 2**-4 / 2.5 + 1e-6
    assert (diff > 1e-5).mean() < 0.01


def test_brevitas_calibration(files):
    x = np.random.default_rng(0).normal(0, 2.0, (500, 24))
    ing = normalise(files["brevitas"], calib=x)
    q = calib_quant(x)
    assert ing.input_precision == "calibration" and ing.input_quant == q
    assert q.bits == 16 and q.signed and q.hi >= np.abs(x).max() and q.hi / 2 < np.abs(x).max()
    assert "precision from calibration: 500 sample(s) span" in ing.changes[3]


def test_brevitas_matches_qonnx(files):
    g = _golden(normalise(files["brevitas"], input_type="ap_fixed<12,4>"))
    err, agree = _compare(g, files["brevitas"])
    # one LSB (2**-3) of the 6-bit activation moved at a rounding boundary, through W2 and /2.5
    assert err < 0.05 and agree >= 0.99


# --------------------------------------------------------------------------- (c) torch float


def test_float_model_needs_an_input_precision(files):
    with pytest.raises(ConfigError) as e:
        normalise(files["torch"])
    msg = str(e.value)
    assert "graph input 'input'" in msg and "not quantized" in msg
    for way in ("--input-type", "--calib", "Quant / FINN quantization_annotation"):
        assert way in msg


def test_float_weights_need_weight_bits(files):
    with pytest.raises(ConfigError, match=r"3? ?weight\(s\) are float .*weight_bits=N"):
        normalise(files["torch"], input_type="int8")


def test_torch_float_mlp_normalises(files, tmp_path):
    ing = normalise(files["torch"], input_type="ap_fixed<10,3>", weight_bits=8)
    assert ing.changes[0] == "batch dimension 'batch' of graph input 'input' fixed to 1"
    assert sum("quantized post-training" in c for c in ing.changes) == 2
    onnx.checker.check_model(ing.model)
    # post-training quantization changes the function: measure, against the float file
    p = ing.save(tmp_path / "t.onnx")
    x = np.random.default_rng(0).integers(-512, 512, (N, 16)) / 128.0
    a, b = em.qonnx_reference(p, x), em.qonnx_reference(files["torch"], x)
    agree = float((a.argmax(1) == b.argmax(1)).mean())
    print(
        f"torch float MLP, 8-bit PTQ vs float: argmax {agree:.4f}, max err {np.abs(a - b).max():.3g}"
    )
    assert agree >= 0.95


def test_torch_float_mlp_golden(files, tmp_path):
    ing = normalise(files["torch"], input_type="ap_fixed<10,3>", weight_bits=8)
    g = _golden(ing)
    # against qonnx on the normalised model (the quantized function); float biases are
    # 16-fractional-bit fixed point in the golden model
    err, agree = _compare(g, ing.save(tmp_path / "t.onnx"))
    assert err < 1e-3 and agree >= 0.999


# --------------------------------------------------------------------------- (d) conv


def test_conv_nchw_exact(files):
    ing = normalise(files["conv"])
    assert ing.input_precision == "existing Quant" and ing.input_quant is None
    assert ing.changes == [
        "batch dimension 'N' of graph input 'input_1' fixed to 1",
        "node 'Conv_0' (Conv): wrote out the ONNX default(s) of strides, dilations, group "
        "(qonnx's channels-last conversion needs them)",
        "node 'MaxPool_0' (MaxPool): wrote out the ONNX default(s) of pads (qonnx's "
        "channels-last conversion needs them)",
    ]
    err, agree = _compare(_golden(ing), files["conv"])
    assert err == 0.0 and agree == 1.0  # every scale is a power of two


def test_conv_nhwc_float_input_with_transpose_exact(files):
    ing = normalise(files["conv_nhwc"], input_type="ap_fixed<8,2>")
    g = _golden(ing)
    assert g.input_shape == (8, 8, 1)
    err, agree = _compare(g, files["conv_nhwc"])
    assert err == 0.0 and agree == 1.0


# --------------------------------------------------------------------------- (e) QKeras, --output


@pytest.mark.parametrize("target", ["sequential/dense_1/BiasAdd", "sequential/dense_1/BiasAdd:0"])
def test_output_cut_drops_softmax_exact(files, target):
    ing = normalise(files["qkeras"], output=target)
    assert ing.changes[0] == (
        f"graph cut at {target!r}: output is now tensor 'sequential/dense_1/BiasAdd:0' (was "
        "['dense_1']); dropped 1 node(s): Softmax 'sequential/dense_1/Softmax'"
    )
    assert ing.changes[1] == "batch dimension 'unk__6' of graph input 'input_1' fixed to 1"
    assert [o.name for o in ing.model.graph.output] == ["sequential/dense_1/BiasAdd:0"]
    assert "Softmax" not in {n.op_type for n in ing.model.graph.node}
    err, agree = _compare(_golden(ing), files["qkeras"], tensor="sequential/dense_1/BiasAdd:0")
    assert err == 0.0 and agree == 1.0


def test_unknown_output_lists_candidates(files):
    with pytest.raises(ConfigError) as e:
        normalise(files["qkeras"], output="dense_1/BiasAdd")
    msg = str(e.value)
    assert "'dense_1/BiasAdd' names no node or tensor" in msg
    assert "sequential/dense_1/BiasAdd" in msg and "sequential/dense_1/Softmax" in msg


def test_existing_quant_wins_over_input_type(files):
    ing = normalise(files["qkeras"], input_type="int8")
    assert ing.input_precision == "existing Quant"
    assert "graph input 'input_1' already has a Quant: input_type ignored" in ing.changes


def test_normalise_file_writes_a_checked_model(files, tmp_path):
    out = tmp_path / "sub" / "model.ingested.onnx"
    ing = normalise_file(files["finn"], out)
    assert out.is_file() and ing.changes
    onnx.checker.check_model(onnx.load(str(out)))


def test_not_onnx_is_a_corrupt_file(tmp_path):
    p = tmp_path / "x.onnx"
    p.write_bytes(b"not a model at all")
    with pytest.raises(CorruptFileError):
        normalise(p)


# --------------------------------------------------------------------------- precision strings


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("ap_fixed<16,6>", InputQuant(16, True, 2.0**-10)),
        ("ap_ufixed<8,0>", InputQuant(8, False, 2.0**-8)),
        ("fixed<10, 3>", InputQuant(10, True, 2.0**-7)),
        ("ufixed<4,4>", InputQuant(4, False, 1.0)),
        ("int8", InputQuant(8, True, 1.0)),
        ("uint8", InputQuant(8, False, 1.0)),
        ("ap_int<6>", InputQuant(6, True, 1.0)),
    ],
)
def test_parse_input_type(text, want):
    assert parse_input_type(text) == want


@pytest.mark.parametrize(
    "text", ["float32", "ap_fixed<16>", "int0", "uint64", "ap_fixed<40,6>", "__import__('os')", ""]
)
def test_bad_input_type_names_the_allowed_forms(text):
    with pytest.raises(ConfigError) as e:
        parse_input_type(text)
    assert "allowed: ap_fixed<W,I>, ap_ufixed<W,I>, fixed<W,I>" in str(e.value)


@pytest.mark.parametrize(
    ("dt", "want"),
    [
        ("UINT8", InputQuant(8, False, 1.0)),
        ("INT8", InputQuant(8, True, 1.0)),
        ("BIPOLAR", InputQuant(2, True, 1.0, narrow=True)),
        ("BINARY", InputQuant(1, False, 1.0)),
        ("FIXED<16,6>", InputQuant(16, True, 2.0**-10)),
        ("UFIXED<8,2>", InputQuant(8, False, 2.0**-6)),
        ("FLOAT32", None),
    ],
)
def test_parse_finn_datatype(dt, want):
    assert parse_finn_datatype(dt) == want


def test_calib_picks_the_smallest_power_of_two_scale():
    q = calib_quant(np.array([-3.1, 0.0, 4.2]))
    assert q == InputQuant(16, True, 2.0**-12)  # 4.2 / 32767 = 1.28e-4 -> 2**-12
    assert calib_quant(np.array([0.0, 1.0]), bits=8) == InputQuant(8, False, 2.0**-7)
    with pytest.raises(ConfigError, match="finite"):
        calib_quant(np.array([np.nan]))


def test_bipolar_input_annotation(tmp_path):
    """A BIPOLAR input is a 2-bit signed narrow Quant: +-1 pass unchanged (0 is also representable)."""
    src = em.finn_mlp(7, tmp_path / "bip.onnx", preprocess=False)
    proto = onnx.load(str(src))
    proto.graph.quantization_annotation[0].quant_parameter_tensor_names[0].value = "BIPOLAR"
    onnx.save(proto, str(src))
    ing = normalise(src)
    assert "read as BIPOLAR" in ing.changes[3] and "2-bit signed narrow" in ing.changes[3]
    g = _golden(ing)
    x = np.where(np.random.default_rng(0).random((N, 16)) < 0.5, -1.0, 1.0)
    y = g.predict(g.quantize_input(x)) * g.output_scale
    ref = em.qonnx_reference(src, x)
    assert np.abs(y - ref).max() < 1e-3 and (y.argmax(1) == ref.argmax(1)).mean() >= 0.999


# --------------------------------------------------------------------------- hls4ml C-sim

HLS_CASES = {
    "conv": ("conv", {}),
    "conv_nhwc": ("conv_nhwc", {"input_type": "ap_fixed<8,2>"}),
    "qkeras_cut": ("qkeras", {"output": "sequential/dense_1/BiasAdd"}),
}


def _csim_mismatches(files: dict[str, Path], tmp_path: Path, key: str, kw: dict) -> int:
    import shutil

    from edgeml.fixed import FixedType
    from edgeml.hls import convert_hls

    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed (hls4ml C-sim needs it)")
    clean = tmp_path / "clean.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean_qonnx(normalise(files[key], **kw).model, clean)
    g = GoldenModel.from_onnx(clean)
    # 4 spare fractional bits: hls4ml may keep more than the golden output type (exact anyway)
    ot = g.output_type
    design = convert_hls(
        clean,
        tmp_path / "prj",
        name=f"ext_{key}",
        input_type=g.input_type,
        output_type=FixedType(ot.signed, ot.width + 4, ot.frac + 4),
    )
    q = g.input_quant
    codes = np.random.default_rng(0).integers(q.lo, q.hi + 1, size=(10_000, *g.input_shape))
    a = (g.predict(codes) << 4).reshape(len(codes), -1)
    b = design.predict_int(codes).reshape(len(codes), -1)
    bad = int((a != b).any(1).sum())
    print(f"{key}: golden vs hls4ml C-sim {bad} / 10000 vectors differ")
    return bad


@pytest.mark.hls
@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(HLS_CASES))
def test_hls_csim_matches_golden(files, tmp_path, case):
    key, kw = HLS_CASES[case]
    assert _csim_mismatches(files, tmp_path, key, kw) == 0


@pytest.mark.hls
@pytest.mark.slow
def test_hls_csim_finn_bipolar_batchnorm(files, tmp_path):
    """hls4ml's QONNX route gets this graph wrong (its BatchNorm / float tail types); the
    flow's converter notices on its check vectors and builds the project from the golden IR."""
    import shutil

    from edgeml.hls_ir import convert_for_golden

    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed (hls4ml C-sim needs it)")
    clean = tmp_path / "clean.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean_qonnx(normalise(files["finn_raw"]).model, clean)
    g = GoldenModel.from_onnx(clean)
    design, route = convert_for_golden(clean, g, tmp_path / "prj", name="ext_finn_raw")
    assert route["route"] == "golden-ir", route
    q = g.input_quant
    codes = np.random.default_rng(0).integers(q.lo, q.hi + 1, size=(10_000, *g.input_shape))
    a = g.predict(codes).reshape(len(codes), -1)
    b = design.predict_int(codes).reshape(len(codes), -1)
    assert int((a != b).any(axis=1).sum()) == 0


def test_quant_in_the_default_domain_is_renamed(files, tmp_path):
    proto = onnx.load(str(files["conv"]))
    for n in proto.graph.node:
        if n.op_type == "Quant":
            n.domain = ""
    del proto.opset_import[1:]  # keep only the default domain
    onnx.save(proto, str(tmp_path / "m.onnx"))
    ing = normalise(tmp_path / "m.onnx")
    assert ing.changes[:2] == [
        "renamed domain (default) -> qonnx.custom_op.general on 5 node(s)",
        "added opset import qonnx.custom_op.general v1",
    ]
    err, _ = _compare(_golden(ing), files["conv"])
    assert err == 0.0


def test_absent_batch_dimension(files, tmp_path):
    proto = onnx.load(str(files["finn_raw"]))
    for vi in (proto.graph.input[0], proto.graph.output[0]):
        del vi.type.tensor_type.shape.dim[0]
    onnx.save(proto, str(tmp_path / "nobatch.onnx"))
    ing = normalise(tmp_path / "nobatch.onnx")
    assert (
        "graph input 'global_in' had no batch dimension (shape [16]): read as [1, 16]"
        in ing.changes
    )
    g, ref = _golden(ing), _golden(normalise(files["finn_raw"]))
    codes, _ = _inputs(g)
    assert g.input_shape == (16,) and np.array_equal(g.predict(codes), ref.predict(codes))


def test_annotated_weight_off_its_grid_is_refused(files, tmp_path):
    proto = onnx.load(str(files["finn_raw"]))
    w = next(t for t in proto.graph.initializer if t.name == "W2_int2")
    w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) + 0.5, "W2_int2"))
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(
        UnsupportedOpError, match=r"annotated INT2 but holds values off that type's grid"
    ):
        normalise(tmp_path / "bad.onnx")


@pytest.mark.slow  # brevitas' dynamo export takes ~13 s here
def test_real_brevitas_export_with_float_input_exact(tmp_path):
    """brevitas export_qonnx, no input quantizer (float into the first MatMul), old domain."""
    src = em.brevitas_float_input_mlp(8, tmp_path / "brevitas_float_in.onnx")
    with pytest.raises(ConfigError, match="not quantized"):
        normalise(src)
    ing = normalise(src, input_type="ap_fixed<10,4>")
    assert ing.changes[0] == "renamed domain onnx.brevitas -> qonnx.custom_op.general on 3 node(s)"
    assert ing.changes[1] == "added opset import qonnx.custom_op.general v1"
    assert ing.changes[2].startswith("graph input 'input' read as ap_fixed<10,4> (input_type)")
    assert ing.changes[3:] == [
        f"node '{n}': Gemm without bias rewritten as Transpose(B) + MatMul (qonnx's "
        "GemmToMatMul needs a bias input)"
        for n in ("node_linear", "node_linear_1")
    ]
    err, agree = _compare(_golden(ing), src)
    assert err == 0.0 and agree == 1.0  # power-of-two scales throughout: exact


@pytest.mark.hls
@pytest.mark.slow
def test_hls_csim_real_brevitas_export(tmp_path):
    src = em.brevitas_float_input_mlp(8, tmp_path / "bf.onnx")
    kw = {"input_type": "ap_fixed<10,4>"}
    assert _csim_mismatches({"brevitas_float_in": src}, tmp_path, "brevitas_float_in", kw) == 0
