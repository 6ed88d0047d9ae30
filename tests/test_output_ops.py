"""Output ops of real models (issue 9): Softmax, Sign, BipolarQuant, Clip, LeakyRelu, Div, Gemm.

Models are built with onnx/qonnx helpers the way converters write them (QKeras-style
Quant -> MatMul -> Quant -> Softmax with opset 13 ``axis=-1``; ``Gemm`` with
``transB``/``alpha``/``beta``; opset-11 ``Softmax`` with its default ``axis=1``), not
with edgeml's exporter. Each op is checked against an independent reference (qonnx
``execute_onnx``: every intermediate tensor for power-of-two models; float softmax),
against the RTL (da4ml interpreter; Verilator, marked ``rtl``) and, for Softmax,
against hls4ml's C-sim (marked ``hls``), all over 10,000 vectors where stated.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from qonnx_builders import QD, GraphBuilder

from edgeml.errors import UnsupportedOpError
from edgeml.golden import SUPPORTED_OPS, GoldenModel, Softmax

N_VEC = 10_000


def _softmax_model(
    rng: np.random.Generator, n: int = 5, lbits: int = 8, lscale: float = 2.0**-4, opset: int = 13
):
    """Quant -> MatMul -> Add(bias Quant) -> Quant(logits) -> Softmax, as QKeras' converter writes it."""
    b = GraphBuilder((16,), (n,))
    x = b.quant("inp", 2.0**-4, 8)
    w = b.qweight(rng.integers(-7, 8, (16, n)) * 2.0**-3, 2.0**-3, 4)
    h = b.node("MatMul", [x, w])
    h = b.node("Add", [h, b.quant(b.const(rng.integers(-50, 50, n) * 2.0**-7), 2.0**-7, 16)])
    h = b.quant(h, lscale, lbits)
    y = b.node("Softmax", [h]) if opset < 13 else b.node("Softmax", [h], axis=-1)
    m = b.build(y)
    if opset < 13:
        m.model.opset_import[0].version = opset
    return m


def _ops_model_pot(rng: np.random.Generator, tail: str = "Sign"):
    """Gemm(transB, alpha=0.5, beta=2) -> LeakyRelu(1/8) -> Div(4) -> Clip -> Quant -> MatMul -> tail."""
    b = GraphBuilder((8,), (4,))
    x = b.quant("inp", 2.0**-4, 8)
    wt = b.qweight(rng.integers(-7, 8, (6, 8)) * 2.0**-3, 2.0**-3, 4)
    c = b.quant(b.const(rng.integers(-40, 40, 6) * 2.0**-6), 2.0**-6, 12)
    h = b.node("Gemm", [x, wt, c], transB=1, alpha=0.5, beta=2.0)
    h = b.node("LeakyRelu", [h], alpha=0.125)
    h = b.node("Div", [h, b.const(4.0)])
    h = b.node("Clip", [h, b.const(-0.5), b.const(0.75)])
    h = b.quant(h, 2.0**-4, 6)
    w2 = b.qweight(rng.integers(-7, 8, (6, 4)) * 2.0**-3, 2.0**-3, 4)
    h = b.node("MatMul", [h, w2])
    if tail == "Sign":
        y = b.node("Sign", [h])
    else:
        y = b.node("BipolarQuant", [h, b.const(1.0)], QD)
    return b.build(y)


def _ops_model_float(rng: np.random.Generator):
    """Non power-of-two constants: Gemm alpha/beta, LeakyRelu 0.1, Div by 3, off-grid Clip."""
    b = GraphBuilder((8,), (4,))
    x = b.quant("inp", 2.0**-4, 8)
    w = b.qweight(rng.integers(-7, 8, (8, 6)) * 2.0**-3, 2.0**-3, 4)
    c = b.quant(b.const(rng.integers(-40, 40, 6) * 2.0**-6), 2.0**-6, 12)
    h = b.node("Gemm", [x, w, c], alpha=0.3, beta=-0.7)
    h = b.node("LeakyRelu", [h], alpha=0.1)
    h = b.node("Div", [h, b.const(3.0)])
    h = b.quant(h, 2.0**-4, 8)
    h = b.node("Clip", [h, b.const(-0.3), b.const(0.77)])
    w2 = b.qweight(rng.integers(-7, 8, (6, 4)) * 2.0**-3, 2.0**-3, 4)
    y = b.node("MatMul", [h, w2])
    return b.build(y)


def _x(g: GoldenModel, rng: np.random.Generator, n: int = N_VEC, amp: float = 6.0) -> np.ndarray:
    return g.quantize_input(rng.uniform(-amp, amp, (n, *g.input_shape)), on_overflow="saturate")


def _qonnx_all(m, xc: np.ndarray, g: GoldenModel) -> list[dict[str, np.ndarray]]:
    from qonnx.core.onnx_exec import execute_onnx

    xr = (xc * g.input_real_scale).astype(np.float32)
    return [
        execute_onnx(m, {"inp": xr[i : i + 1]}, return_full_exec_context=True)
        for i in range(len(xr))
    ]


def _float_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --------------------------------------------------------------------------- Softmax, golden


def test_softmax_golden_vs_qonnx_and_float():
    rng = np.random.default_rng(1)
    m = _softmax_model(rng)
    g = GoldenModel.from_onnx(m)
    op = g.ops[-1]
    assert isinstance(op, Softmax) and g.output_type.hls() == "ap_ufixed<18,1>"
    xc = _x(g, rng)
    out, tr = g.run(xc, trace=True)
    y = out * 2.0**-g.output_type.frac
    logits = tr[op.inputs[0]] * float(g.tensors[op.inputs[0]].scale)
    ref = _float_softmax(logits)
    err = np.abs(y - ref).max()
    top2 = np.sort(logits, 1)[:, -2:]
    distinct = top2[:, 1] > top2[:, 0]
    agree = (y.argmax(1) == ref.argmax(1))[distinct].mean()
    print(
        f"\n[softmax] {N_VEC} vectors: max |golden - float softmax| {err:.4f}, argmax agreement {agree}"
    )
    assert err < 0.01 and agree == 1.0
    # qonnx's execute_onnx on the same graph (float Softmax of the quantized logits)
    ctx = _qonnx_all(m, xc[:200], g)
    q = np.concatenate([c["out"] for c in ctx])
    assert np.abs(y[:200] - q).max() < 0.01
    assert (y[:200].argmax(1) == q.argmax(1))[distinct[:200]].all()


def test_softmax_codes_on_random_logits():
    """Full-range logits (spreads beyond 2**range_bits saturate instead of wrapping)."""
    from edgeml.fixed import FixedType
    from edgeml.softmax import exp_table, inv_table, softmax_codes, softmax_params

    rng = np.random.default_rng(2)
    for n, t in (
        (10, FixedType(True, 8, 4)),
        (3, FixedType(True, 12, 9)),
        (7, FixedType(True, 6, 0)),
    ):
        p = softmax_params(t, 2.0**-t.frac, n)
        x = rng.integers(t.qmin, t.qmax + 1, (N_VEC, n))
        y = softmax_codes(x, p, exp_table(p), inv_table(p)) * 2.0**-p.out_type.frac
        ref = _float_softmax(x * 2.0**-t.frac)
        err = np.abs(y - ref).max()
        top2 = np.sort(x, 1)[:, -2:]
        # argmax is kept when the top two logits are at least one exp-table step apart
        distinct = (top2[:, 1] - top2[:, 0]) * 2.0**-t.frac >= 2.0**-p.norm_type.frac
        assert (y.argmax(1) == ref.argmax(1))[distinct].all()
        assert err < 0.006, (n, t, err)
        print(f"\n[softmax] n={n} {t.hls()}: max |err| vs float {err:.4f}")


def test_softmax_opset11_default_axis_and_refusals():
    rng = np.random.default_rng(3)
    g = GoldenModel.from_onnx(_softmax_model(rng, opset=11))  # axis=1 == last of (1, n)
    assert g.ops[-1].kind == "softmax"
    m = _softmax_model(rng)
    m.graph.node[-1].attribute[0].i = 0
    with pytest.raises(
        UnsupportedOpError, match=r"Softmax_\d+.*op Softmax.*axis 0.*supports: .*Softmax"
    ):
        GoldenModel.from_onnx(m)


def test_softmax_save_load(tmp_path: Path):
    rng = np.random.default_rng(4)
    g = GoldenModel.from_onnx(_softmax_model(rng))
    g2 = GoldenModel.load(g.save(tmp_path / "golden.npz"))
    op, op2 = g.ops[-1], g2.ops[-1]
    assert isinstance(op2, Softmax) and op2.params == op.params
    assert np.array_equal(op2.exp_table, op.exp_table) and np.array_equal(
        op2.inv_table, op.inv_table
    )
    c, c2 = g.constants(), g2.constants()
    assert c.keys() == c2.keys() and all(np.array_equal(c[k], c2[k]) for k in c)
    xc = _x(g, rng, 2000)
    assert np.array_equal(g.predict(xc), g2.predict(xc))


def test_softmax_fault_campaign():
    """A model ending in Softmax runs through fault campaigns (fast engine == naive)."""
    from edgeml.fault_injection.campaign import run_campaign, run_campaign_naive

    rng = np.random.default_rng(5)
    g = GoldenModel.from_onnx(_softmax_model(rng))
    xc = _x(g, rng, 300)
    lab = g.predict(xc).argmax(1)
    fast = run_campaign(g, xc, lab, progress=False)
    naive = run_campaign_naive(g, xc, lab, progress=False)
    assert len(fast.acc_drop) > 0
    for k in ("acc_drop", "sdc_rate", "max_dev"):
        assert np.array_equal(getattr(fast, k), getattr(naive, k))


# --------------------------------------------------------------------------- other ops, golden


@pytest.mark.parametrize("tail", ["Sign", "BipolarQuant"])
def test_pot_ops_every_tensor_equals_qonnx(tail: str):
    """Power-of-two Gemm/LeakyRelu/Div/Clip and a Sign / BipolarQuant output: every tensor exact."""
    rng = np.random.default_rng(6)
    m = _ops_model_pot(rng, tail)
    g = GoldenModel.from_onnx(m)
    assert all(op.exact_vs_qonnx for op in g.ops), g.summary()
    xc = _x(g, rng, 300)
    _, tr = g.run(xc, trace=True)
    ctx = _qonnx_all(m, xc, g)
    compared = 0
    for name, codes in tr.items():
        if name not in ctx[0]:
            continue
        ref = np.concatenate([c[name] for c in ctx]).reshape(codes.shape)
        got = codes * g.tensors[name].scale
        assert np.array_equal(got, ref), name
        compared += 1
    assert compared >= 6
    assert set(np.unique(tr[g.output_name])) <= ({-1, 0, 1} if tail == "Sign" else {-1, 1})


def test_float_ops_error_stated():
    """Non power-of-two alpha/beta/divisor/Clip bounds: fixed point, notes say so, error small."""
    rng = np.random.default_rng(7)
    m = _ops_model_float(rng)
    g = GoldenModel.from_onnx(m)
    notes = " ".join(g.notes)
    assert "LeakyRelu alpha 0.1" in notes and "approximated as" in notes and "Clip bounds" in notes
    xc = _x(g, rng, 300)
    y = g.run(xc) * g.output_scale
    ref = np.concatenate([c["out"] for c in _qonnx_all(m, xc, g)])
    err = np.abs(y - ref).max()
    print(
        f"\n[ops] float constants: max |golden - qonnx| {err:.4f} (output range {np.abs(ref).max():.2f})"
    )
    assert err < 0.5


def test_refusals_name_op_node_and_list():
    rng = np.random.default_rng(8)
    cases = []
    b = GraphBuilder((8,), (6,))
    x = b.quant("inp", 2.0**-4, 8)
    cases.append(
        (
            b.build(
                b.node(
                    "Gemm", [x, b.qweight(rng.integers(-3, 3, (8, 6)) * 0.25, 0.25, 4)], transA=1
                )
            ),
            "transA=1",
        )
    )
    b = GraphBuilder((8,), (8,))
    x = b.quant("inp", 2.0**-4, 8)
    cases.append((b.build(b.node("Div", [x, x])), "Div by a tensor"))
    b = GraphBuilder((8,), (8,))
    x = b.quant("inp", 2.0**-4, 8)
    cases.append((b.build(b.node("Clip", [x, x])), "min input is not a constant"))
    b = GraphBuilder((8,), (8,))
    x = b.quant("inp", 2.0**-4, 8)
    cases.append((b.build(b.node("LRN", [x], size=3)), "not supported"))
    for m, why in cases:
        with pytest.raises(UnsupportedOpError) as ei:
            GoldenModel.from_onnx(m)
        msg = str(ei.value)
        node = m.graph.node[-1]
        assert f"'{node.name}'" in msg and f"op {node.op_type}" in msg and why in msg, msg
        assert ", ".join(SUPPORTED_OPS) in msg


def test_ops_save_load(tmp_path: Path):
    rng = np.random.default_rng(9)
    for i, m in enumerate((_ops_model_pot(rng), _ops_model_float(rng))):
        g = GoldenModel.from_onnx(m)
        g2 = GoldenModel.load(g.save(tmp_path / f"g{i}.npz"))
        assert [type(o) for o in g2.ops] == [type(o) for o in g.ops]
        xc = _x(g, rng, 2000)
        assert np.array_equal(g.predict(xc), g2.predict(xc))


# --------------------------------------------------------------------------- RTL


def _all_models():
    rng = np.random.default_rng(10)
    return {
        "softmax": _softmax_model(rng),
        "softmax12": _softmax_model(rng, n=12, lbits=10, lscale=2.0**-6),
        "pot_sign": _ops_model_pot(rng, "Sign"),
        "pot_bipolar": _ops_model_pot(rng, "BipolarQuant"),
        "float_ops": _ops_model_float(rng),
    }


def test_rtl_trace_equals_golden():
    """da4ml's interpreter of the traced program (what the Verilog is written from), 10,000 vectors."""
    from edgeml.rtl import trace_golden

    rng = np.random.default_rng(11)
    for name, m in _all_models().items():
        g = GoldenModel.from_onnx(m)
        tr = trace_golden(g)
        xc = _x(g, rng)
        bad = int((g.predict(xc) != tr.predict_int(xc)).reshape(len(xc), -1).any(1).sum())
        assert bad == 0, name


@pytest.mark.rtl
@pytest.mark.parametrize("which", ["softmax", "pot_sign", "float_ops"])
def test_rtl_verilator_equals_golden(which: str, tmp_path: Path):
    """Verilator == golden over 10,000 vectors; the netlist interpreter (ROMs, multipliers) agrees."""
    from edgeml.netlist import NetlistSim
    from edgeml.rtl import generate_rtl

    rng = np.random.default_rng(12)
    g = GoldenModel.from_onnx(_all_models()[which])
    t0 = time.perf_counter()
    d = generate_rtl(g, tmp_path / which, f"oo_{which}", pipelined=which == "softmax")
    build_s = d.build()
    xc = _x(g, rng)
    got = d.predict_int(xc)
    bad = int((g.predict(xc) != got).reshape(len(xc), -1).any(1).sum())
    print(
        f"\n[rtl] {which}: {bad} of {N_VEC} mismatch; build {build_s:.1f} s, total {time.perf_counter() - t0:.1f} s"
    )
    assert bad == 0
    sim = NetlistSim.from_design(d)
    assert np.array_equal(sim.predict(xc[:2000]), got[:2000])


# --------------------------------------------------------------------------- hls4ml


@pytest.mark.hls
def test_softmax_hls_csim_equals_golden(tmp_path: Path):
    """hls4ml C-sim of Quant -> Softmax with the golden model's tables == golden, 10,000 vectors."""
    from edgeml.hls import convert_hls

    rng = np.random.default_rng(13)
    m = _softmax_model(rng, n=10, lbits=10, lscale=2.0**-5)
    path = tmp_path / "sm.onnx"
    m.save(str(path))
    g = GoldenModel.from_onnx(m)
    d = convert_hls(
        path, tmp_path / "prj", name="sm", input_type=g.input_type, output_type=g.output_type
    )
    xc = _x(g, rng)
    a, c = g.predict(xc), d.predict_int(xc)
    bad = int((a != c).any(1).sum())
    print(f"\n[hls] softmax: {bad} of {N_VEC} vectors differ from golden")
    assert bad == 0
    assert len(np.unique(a.argmax(1))) > 1  # the table is indexed (not 1/n everywhere)


def test_leakyrelu_and_gemm_constants():
    """LeakyRelu 1/8 is an exact shift (x*8 | x at 2**-3 finer LSB); Gemm alpha/beta fold exactly."""
    rng = np.random.default_rng(14)
    g = GoldenModel.from_onnx(_ops_model_pot(rng))
    lr = next(op for op in g.ops if op.kind == "leakyrelu")
    assert (lr.pos_mult, lr.neg_mult) == (8, 1)
    gemm = next(op for op in g.ops if op.kind == "dense")
    # alpha=0.5 halves the weight scale, beta=2 doubles the bias scale: codes unchanged
    assert np.abs(gemm.weight).max() <= 7 and gemm.bias is not None


def _act_model(rng: np.random.Generator, kind: str):
    b = GraphBuilder((8,), (6,))
    x = b.quant("inp", 2.0**-4, 8)
    w = b.qweight(rng.integers(-7, 8, (8, 6)) * 2.0**-3, 2.0**-3, 4)
    h = b.node("MatMul", [x, w])
    h = b.node("Add", [h, b.quant(b.const(rng.integers(-40, 40, 6) * 2.0**-6), 2.0**-6, 12)])
    if kind == "LeakyRelu":
        h = b.node("LeakyRelu", [h], alpha=0.125)
    else:
        h = b.node("Div", [h, b.const(4.0)])
    return b.build(b.quant(h, 2.0**-5, 10))


@pytest.mark.hls
@pytest.mark.parametrize("kind", ["LeakyRelu", "Div"])
def test_pot_leakyrelu_div_hls_csim_equals_golden(kind: str, tmp_path: Path):
    """hls4ml converts LeakyRelu(alpha=1/8) and Div by 4 exactly.

    (alpha=0.1 and Div by 3 are not: hls4ml rounds the constant into its own default
    ``param_t`` / result types, unlike the golden model's stated fixed point.)
    """
    from edgeml.hls import convert_hls

    rng = np.random.default_rng(15)
    m = _act_model(rng, kind)
    path = tmp_path / "m.onnx"
    m.save(str(path))
    g = GoldenModel.from_onnx(m)
    d = convert_hls(
        path, tmp_path / "prj", name="m", input_type=g.input_type, output_type=g.output_type
    )
    xc = _x(g, rng, amp=8.0)
    bad = int((g.predict(xc) != d.predict_int(xc)).any(1).sum())
    assert bad == 0, f"{bad} of {N_VEC}"
