"""The golden-IR hls4ml route: C-sim == golden, bit for bit, where hls4ml's QONNX front end fails.

Models are written by other tools: Brevitas' ``export_qonnx`` (the digits MLP and
CNN of ``brevitas_models``, per-channel float weight scales, BatchNorm with a
float Sub/Mul tail) and onnx-helper graphs in FINN's conventions
(``qonnx_builders``: BipolarQuant weights with a residual Add and a Trunc). Each
hls4ml compile is shared through module-scoped fixtures (about 5-15 s each).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import brevitas_models as bm
import numpy as np
import pytest
import qonnx_builders as qb

from edgeml.errors import UnsupportedOpError
from edgeml.export import clean_qonnx
from edgeml.fixed import FixedType
from edgeml.golden import GoldenModel, Op, Requant
from edgeml.hls import METADATA_FILE, HlsDesign, check_weight_headers
from edgeml.hls_ir import convert_for_golden, convert_hls_from_golden, hls_layer_list

N = 10_000  # vectors per integer comparison

pytestmark = pytest.mark.hls


def _needs_gxx() -> None:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed (hls4ml C-sim needs it)")


def _codes(g: GoldenModel, n: int = N, seed: int = 1) -> np.ndarray:
    """Random codes over the whole input type, with the all-min and all-max vectors."""
    t = g.input_type
    x = np.random.default_rng(seed).integers(t.qmin, t.qmax + 1, size=(n, *g.input_shape))
    x[0], x[1] = t.qmin, t.qmax
    return x


def _mismatches(g: GoldenModel, design: HlsDesign, x: np.ndarray) -> int:
    ref = g.predict(x).reshape(len(x), -1)
    got = design.predict_int(x).reshape(len(x), -1)
    return int((ref != got).any(axis=1).sum())


# --------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hls_ir")


def _brevitas(model, shape: tuple[int, ...], work: Path, stem: str, train: bool = False) -> Path:
    import torch

    torch.manual_seed(0)
    if train:  # the digits nets, trained briefly as the flow's designs are
        x, y = bm.digits()
        bm.train(model, x if len(shape) == 3 else x.reshape(len(x), -1), y, epochs=2)
    else:
        if isinstance(model, torch.nn.Sequential):
            bm.init_uniform(model, 0.3)
        bm.calibrate(model, shape, batches=10, batch=128)
    return bm.export_clean(model, shape, work, stem)


def _finn(builder, work: Path, stem: str) -> Path:
    raw = qb.save(builder(np.random.default_rng(0)), work / f"{stem}.onnx")
    clean_qonnx(raw, work / f"{stem}_clean.onnx")
    return work / f"{stem}_clean.onnx"


def _per_channel_float(work: Path) -> Path:
    """Brevitas Int8WeightPerChannelFloat weights: hls4ml's QONNX route raises IndexError."""
    import torch
    from brevitas.quant import Int8WeightPerChannelFloat

    pc = {"weight_quant": Int8WeightPerChannelFloat}
    model = torch.nn.Sequential(
        bm.quant_input(),
        bm.quant_linear(16, 12, **pc),
        bm.quant_relu(),
        bm.quant_linear(12, 5, last=True, **pc),
    )
    return _brevitas(model, (16,), work, "per_channel_float")


class _BnTail:
    """QuantLinear -> BatchNorm1d -> QuantReLU -> QuantLinear, then ``(y - 0.25) * 1.5``."""

    @staticmethod
    def build():
        import torch

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.body = torch.nn.Sequential(
                    bm.quant_input(),
                    bm.quant_linear(16, 12, return_quant_tensor=False),
                    torch.nn.BatchNorm1d(12),
                    bm.quant_relu(),
                    bm.quant_linear(12, 5, last=True),
                )

            def forward(self, x):
                return (self.body(x) - 0.25) * 1.5

        net = Net()
        with torch.no_grad():
            bn = net.body[2]
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
        return net


@pytest.fixture(scope="module")
def digits_mlp(work) -> tuple[GoldenModel, HlsDesign]:
    _needs_gxx()
    onnx = _brevitas(bm.mlp(), (1, 8, 8), work, "digits_mlp", train=True)
    g = GoldenModel.from_onnx(onnx)
    return g, convert_hls_from_golden(g, work / "mlp_ir", name="mlp_ir", onnx_path=onnx)


@pytest.fixture(scope="module")
def digits_cnn(work) -> tuple[GoldenModel, HlsDesign]:
    _needs_gxx()
    onnx = _brevitas(bm.cnn(), (1, 8, 8), work, "digits_cnn", train=True)
    g = GoldenModel.from_onnx(onnx)
    return g, convert_hls_from_golden(g, work / "cnn_ir", name="cnn_ir", onnx_path=onnx)


@pytest.fixture(scope="module")
def per_channel(work) -> tuple[GoldenModel, HlsDesign, dict]:
    _needs_gxx()
    onnx = _per_channel_float(work)
    g = GoldenModel.from_onnx(onnx)
    design, info = convert_for_golden(onnx, g, work / "pc", name="pc")
    return g, design, info


# --------------------------------------------------------------------------- bit-exactness


@pytest.mark.slow
def test_digits_mlp_exact(digits_mlp):
    g, design = digits_mlp
    assert _mismatches(g, design, _codes(g)) == 0


@pytest.mark.slow
def test_digits_cnn_exact(digits_cnn):
    g, design = digits_cnn
    assert [op.kind for op in g.ops][:2] == ["transpose", "conv"]
    assert _mismatches(g, design, _codes(g)) == 0


@pytest.mark.slow
def test_per_channel_float_scales_fall_back_to_golden_ir(per_channel):
    """(b) the QONNX route crashes in hls4ml; the IR route is chosen, says why, and is exact."""
    g, design, info = per_channel
    assert info["route"] == "golden-ir"
    assert "IndexError" in info["route_reason"] and "\n" not in info["route_reason"]
    assert info["check"] == {"vectors": 2000, "mismatches": 0}
    assert any(not op.exact_vs_qonnx for op in g.ops)  # fixed-point multipliers, per channel
    assert _mismatches(g, design, _codes(g)) == 0
    meta = (design.project_dir / METADATA_FILE).read_text()
    assert '"route": "golden-ir"' in meta


def test_bipolar_weights_residual_trunc_exact(work):
    """(c) FINN-style BipolarQuant (+-1) weights, a residual Add, Transpose/Reshape, Trunc."""
    _needs_gxx()
    onnx = _finn(qb.bipolar_trunc, work, "bipolar")
    g = GoldenModel.from_onnx(onnx)
    assert {"dense", "add", "transpose", "requant"} <= {op.kind for op in g.ops}
    w = g.param_ops[0].weight
    assert set(np.unique(w)) == {-1, 1}  # hls4ml's QONNX route stores these as {0, 1}
    design = convert_hls_from_golden(g, work / "bip", name="bip", onnx_path=onnx)
    assert _mismatches(g, design, _codes(g)) == 0


@pytest.mark.slow
def test_batchnorm_and_float_tail_exact(work):
    """(d) BatchNorm after MatMul and a float Sub/Mul tail (Brevitas export), plus FINN-style
    per-channel float scales + BatchNorm + Mul (qonnx_builders.bn_float_scales)."""
    _needs_gxx()
    onnx = _brevitas(_BnTail.build(), (16,), work, "bn_tail")
    g = GoldenModel.from_onnx(onnx)
    kinds = [op.kind for op in g.ops]
    # BN and Sub are fixed-point affine ops; the positive scalar Mul only rescales the LSB
    assert kinds.count("affine") >= 2 and kinds[-1] == "reshape", g.summary()
    design, info = convert_for_golden(onnx, g, work / "bn_tail_prj", name="bn_tail")
    assert _mismatches(g, design, _codes(g)) == 0
    # hls4ml computes the float tail in types of its own: the QONNX route is refused
    assert info["route"] == "golden-ir" and info["route_reason"], info
    assert info["check"]["mismatches"] == 0

    onnx2 = _finn(qb.bn_float_scales, work, "bn_float")
    g2 = GoldenModel.from_onnx(onnx2)
    d2 = convert_hls_from_golden(g2, work / "bn_float_prj", name="bn_float", onnx_path=onnx2)
    assert _mismatches(g2, d2, _codes(g2)) == 0


def test_qonnx_route_kept_where_exact(work):
    """A power-of-two Brevitas MLP converts exactly through hls4ml's QONNX front end: kept."""
    _needs_gxx()
    onnx = _brevitas(bm.mlp(flatten=False), (64,), work, "pot_mlp")
    g = GoldenModel.from_onnx(onnx)
    design, info = convert_for_golden(onnx, g, work / "pot_prj", name="pot")
    assert info == {
        "route": "qonnx",
        "route_reason": None,
        "check": {"vectors": 2000, "mismatches": 0},
    }
    assert '"route": "qonnx"' in (design.project_dir / METADATA_FILE).read_text()
    assert _mismatches(g, design, _codes(g)) == 0


# --------------------------------------------------------------------------- verify integration


def test_reopened_project_traces_every_golden_op(per_channel):
    """HlsDesign.load reopens the IR project; each traced layer is named after its golden op
    and holds that op's codes, and the weight headers equal the .txt C-sim loads."""
    g, design, _ = per_channel
    again = HlsDesign.load(design.project_dir)
    x = _codes(g, 300)
    tr = again.trace_int(x, codes=True)
    _, gt = g.run(x, trace=True)
    named = [op for op in g.ops if op.name in tr]
    assert {op.kind for op in named} >= {"dense", "affine", "relu", "requant"}
    for op in named:
        np.testing.assert_array_equal(tr[op.name].reshape(gt[op.output].shape), gt[op.output])
    compared, bad = check_weight_headers(again.project_dir, again.name)
    assert compared > 0 and bad == []


# --------------------------------------------------------------------------- refusals


def test_unknown_op_class_is_refused_in_one_line(work):
    onnx = _finn(qb.mlp_pot, work, "pot_small")
    g = GoldenModel.from_onnx(onnx)

    class Mystery(Op):
        kind = "mystery"

    g.ops.insert(1, Mystery("Mystery_0", [g.ops[0].output], "m0"))
    with pytest.raises(UnsupportedOpError) as exc:
        hls_layer_list(g)
    msg = str(exc.value)
    assert "Mystery_0 (mystery)" in msg and "Dense" in msg and "\n" not in msg


def test_unmappable_rounding_is_refused(work):
    onnx = _finn(qb.mlp_pot, work, "pot_small2")
    g = GoldenModel.from_onnx(onnx)
    rq = next(op for op in g.ops if isinstance(op, Requant))
    rq.rounding = "UP"
    with pytest.raises(UnsupportedOpError, match=r"rounding mode UP has no ap_fixed"):
        hls_layer_list(g)


def test_layer_list_types_are_golden_types(work):
    """Every result type in the layer list is the golden tensor type (no hls4ml inference)."""
    onnx = _finn(qb.mlp_pot, work, "pot_small3")
    g = GoldenModel.from_onnx(onnx)
    _, prec, in_layer, out_layer = hls_layer_list(g)
    assert prec[in_layer]["result"] == g.input_type.hls()
    for op in g.ops:
        if op.name in prec:
            t: FixedType = g.tensors[op.output].type
            assert prec[op.name]["result"].startswith(t.hls()[:-1]), (op.name, prec[op.name])
    assert out_layer == g.ops[-1].name


def _activations_graph(act: str) -> object:
    """Quant -> MatMul+bias -> LeakyRelu(0.1) | Sign | BipolarQuant -> Clip -> Quant(CEIL) -> MatMul -> Softmax,
    written with onnx helpers (ONNX-domain activations as tf2onnx / torch write them)."""
    rng = np.random.default_rng(5)
    b = qb.GraphBuilder((16,), (5,))
    x = b.quant("inp", 2.0**-4, 8)
    h = b.node("MatMul", [x, b.qweight(rng.integers(-7, 8, (16, 12)) * 2.0**-3, 2.0**-3, 4)])
    h = b.node("Add", [h, b.quant(b.const(rng.integers(-50, 50, 12) * 2.0**-7), 2.0**-7, 16)])
    if act == "leaky":
        h = b.node("LeakyRelu", [h], alpha=0.1)
    elif act == "sign":
        h = b.node("Sign", [h])
    else:  # BipolarQuant on an activation, LSB 2**-1: +-1 codes rescaled
        h = b.node("BipolarQuant", [h, b.const(0.5)], qb.QD)
    h = b.node("Clip", [h, b.const(-0.75), b.const(1.5)])
    h = b.quant(h, 2.0**-2, 6, rounding="CEIL")
    y = b.node("MatMul", [h, b.qweight(rng.integers(-7, 8, (12, 5)) * 2.0**-3, 2.0**-3, 4)])
    return b.build(b.node("Softmax", [y], axis=-1))


@pytest.mark.slow
@pytest.mark.parametrize("act", ["leaky", "sign", "bipolar"])
def test_leakyrelu_sign_clip_softmax_exact(work, act):
    """LeakyRelu with a fixed-point alpha, Sign, a Clip no overflow mode expresses, CEIL
    rounding and a Softmax with the golden op's tables: C-sim == golden."""
    _needs_gxx()
    onnx = _finn(lambda _rng: _activations_graph(act), work, f"act_{act}")
    g = GoldenModel.from_onnx(onnx)
    kinds = {op.kind for op in g.ops}
    assert {{"leaky": "leakyrelu"}.get(act, act), "softmax", "requant"} <= kinds
    design = convert_hls_from_golden(g, work / f"act_{act}_prj", name=f"act_{act}", onnx_path=onnx)
    x = _codes(g)
    assert _mismatches(g, design, x) == 0
    probs = g.predict(x)
    assert len(np.unique(probs)) > 10  # the softmax is not stuck at 1/n (hls4ml's auto types)
