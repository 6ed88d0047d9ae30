"""The issue-10 golden ops in the da4ml RTL, bit for bit against the golden integer model.

Gather (Slice/Concat/Pad/broadcast/Resize as wiring), Lookup (Tanh/Sigmoid/hard
sigmoid ROMs), SubTensors, MulTensors, MatMulTensors, Dense per token on
(tokens, features), Conv1d as a height-1 Conv, grouped / depthwise Conv
(block-sparse full weights) and average pooling as a structural Conv/Dense of
ones with a fixed-point 1/N requant. Every comparison is on integer codes over
>= 10,000 vectors (exhaustive where the input space is small); mismatch counts
are printed (``-s``). Two sources of models: golden models built op by op here
(as the ONNX front end lowers those ops, with edge cases it may not reach), and
``op_models``' files written the way other tools write them (hand-written QONNX
in qonnx's conventions, Brevitas exports) through the ONNX front end. Verilator
tests are marked ``rtl``; Brevitas exports and long builds ``slow``.
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import numpy as np
import op_models
import pytest

from edgeml.fixed import FixedType, type_for_range
from edgeml.golden import (
    ROUNDING_MODES,
    AddTensors,
    Conv,
    Dense,
    Gather,
    GoldenModel,
    Lookup,
    MatMulTensors,
    MulTensors,
    Op,
    Relu,
    Requant,
    Reshape,
    SubTensors,
    TensorInfo,
    Transpose,
)
from edgeml.verify import run_level, verification_vectors

N_VECTORS = 10_000


# --------------------------------------------------------------------------- models


def _golden(
    ops: list[Op], in_shape: tuple[int, ...], in_type: FixedType, scales: dict | None = None
) -> GoldenModel:
    """A golden model from ops; each tensor's type is the tightest holding its exact code range.

    The ranges come from da4ml's interval arithmetic on the traced program (exact
    bounds of every code the ops can produce from any input code).
    """
    from edgeml.rtl import trace_golden

    wide = FixedType(True, 40, 0)
    tensors = {"x": TensorInfo("x", in_shape, in_type, np.asarray(1.0))}
    for op in ops:
        tensors[op.output] = TensorInfo(op.output, (), wide, np.asarray(1.0))
    g = GoldenModel(
        ops=ops,
        tensors=tensors,
        input_name="x",
        output_name=ops[-1].output,
        input_shape=in_shape,
        input_quant=Requant("in", ["x"], "x", lo=in_type.qmin, hi=in_type.qmax),
        input_real_scale=1.0,
    )
    _, tr = g.run(np.zeros((1, *in_shape), np.int64), trace=True)
    for op in ops:
        g.tensors[op.output].shape = tuple(tr[op.output].shape[1:])
    sym = trace_golden(g)
    for op in ops:
        vs = sym.tensors[op.output].reshape(-1)
        lo, hi = int(min(v.low for v in vs)), int(max(v.high for v in vs))
        g.tensors[op.output].type = type_for_range(lo, hi, 0)
        if scales and op.output in scales:
            g.tensors[op.output].scale = np.asarray(scales[op.output])
    return g


def _rq(name: str, src: str, shift: int, bits: int, signed: bool = True, mult: int = 1) -> Requant:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return Requant(
        name, [src], name, mult=np.array(mult), shift=shift, rounding="HALF_EVEN", lo=lo, hi=hi
    )


def _table(fn, lo: int, bits: int, in_scale: float, out_scale: float, out_lo: int, out_hi: int):
    """Codes of ``fn`` over every code of a ``bits``-bit input starting at ``lo`` (QONNX ROUND)."""
    x = (lo + np.arange(1 << bits)) * in_scale
    return np.clip(np.round(fn(x) / out_scale), out_lo, out_hi).astype(np.int64)


def _tanh(bits: int = 6) -> Lookup:
    t = _table(np.tanh, -(1 << (bits - 1)), bits, 2.0**-3, 2.0**-5, -32, 31)
    return Lookup("tanh", ["q0"], "tanh", table=t, lo=-(1 << (bits - 1)), fn="tanh")


def _sigmoid(src: str, lo: int, name: str = "sig", bits: int = 6) -> Lookup:
    t = _table(lambda v: 1 / (1 + np.exp(-v)), lo, bits, 2.0**-3, 2.0**-6, 0, 63)
    return Lookup(name, [src], name, table=t, lo=lo, fn="sigmoid")


def model_gather() -> GoldenModel:
    """Slice, Concat of two inputs at different binary points, zero Pad, broadcast, nearest 2x Resize."""
    t, f = 3, 4
    a = t * f  # flat's length: up's elements follow
    idx = []
    for r in range(t):  # per token: q0[r, 1:3] ++ up[2r, ::2] ++ [0] ++ a[0, 3] (broadcast)
        idx += [r * f + 1, r * f + 2, a + 2 * r * f, a + 2 * r * f + 2, -1, 3]
    up = [r * f + c for r in range(t) for _ in range(2) for c in range(f) for _ in range(2)]
    ops = [
        _rq("q0", "x", 1, 6),
        Reshape("flat", ["q0"], "flat", shape=(t * f,)),
        Gather("up", ["q0"], "up", index=np.array(up), shape=(2 * t, 2 * f)),  # Resize nearest
        Gather("cat", ["flat", "up"], "cat", index=np.array(idx), shape=(t, 6), shifts=(2, 0)),
    ]
    return _golden(ops, (t, f), FixedType(True, 8, 0))


def model_lookup() -> GoldenModel:
    """Tanh on a signed input, Sigmoid on a narrower (clamped) range, hard sigmoid on an unsigned one."""
    hs = _table(lambda v: np.clip(v / 6 + 0.5, 0, 1), 0, 6, 2.0**-3, 2.0**-6, 0, 63)
    ops = [
        _rq("q0", "x", 2, 6),
        _tanh(),
        Requant("qn", ["x"], "qn", shift=2, rounding="HALF_EVEN", lo=-20, hi=25),
        _sigmoid("qn", -32),
        Relu("relu", ["q0"], "relu"),
        Lookup("hsig", ["relu"], "hsig", table=hs[:32], lo=0, fn="hardsigmoid"),  # relu: 5 bits
        Gather("out", ["tanh", "sig", "hsig"], "out", index=np.arange(3 * 5), shape=(3, 5)),
    ]  # fmt: skip
    return _golden(ops, (5,), FixedType(True, 8, 0))


def model_sub() -> GoldenModel:
    """``1 - sigmoid`` style gate algebra: a broadcast operand and aligned binary points."""
    ops = [
        _rq("q0", "x", 1, 6),
        _sigmoid("q0", -32),
        Gather("bc", ["q0"], "bc", index=np.array([0, 0, 0, 0, 5, 5, 5, 5]), shape=(8,)),
        SubTensors("sub", ["sig", "bc"], "sub", shift_a=0, shift_b=3),
        SubTensors("sub2", ["q0", "sig"], "sub2", shift_a=2, shift_b=0),
        Gather("out", ["sub", "sub2"], "out", index=np.arange(16), shape=(16,)),
    ]
    return _golden(ops, (8,), FixedType(True, 8, 0))


def model_mul() -> GoldenModel:
    """A GRU/LSTM gate: sigmoid(a) * tanh(b) (unsigned x signed), products with a negated
    operand (``0 - x``: a negative da4ml scale factor), a square, then a requant."""
    ops = [
        _rq("q0", "x", 1, 6),
        _tanh(),
        _sigmoid("q0", -32),
        Gather("rev", ["q0"], "rev", index=np.arange(7, -1, -1), shape=(8,)),
        Gather("zero", ["q0"], "zero", index=np.full(8, -1), shape=(8,)),
        SubTensors("neg", ["zero", "rev"], "neg", shift_a=0, shift_b=1),
        MulTensors("gate", ["sig", "tanh"], "gate"),
        MulTensors("sq", ["neg", "q0"], "sq"),
        MulTensors("ng", ["tanh", "neg"], "ng"),
        SubTensors("mix", ["gate", "sq"], "mix", shift_a=0, shift_b=4),
        AddTensors("mix2", ["mix", "ng"], "mix2", shift_a=0, shift_b=2),
        _rq("out", "mix2", 5, 8),
    ]
    return _golden(ops, (8,), FixedType(True, 8, 0))


def model_matmul() -> GoldenModel:
    """Attention scores: per head q @ k^T of two activations, then (scores) @ v."""
    h, t, d = 2, 3, 4
    ops = [
        _rq("q", "x", 1, 5),
        _rq("k", "x", 2, 5),
        Transpose("kt", ["k"], "kt", perm=(0, 1, 3, 2)),
        MatMulTensors("scores", ["q", "kt"], "scores"),
        _rq("s", "scores", 4, 6),
        MatMulTensors("att", ["s", "k"], "att"),
        _rq("out", "att", 5, 8),
    ]
    return _golden(ops, (h, t, d), FixedType(True, 8, 0))


def model_dense_tokens() -> GoldenModel:
    """Dense per token on (tokens, features) with bias and per-channel shifts, then per-token Dense."""
    rng = np.random.default_rng(3)
    t, f = 5, 6
    d1 = Dense(
        "d1", ["q0"], "d1", weight=rng.integers(-31, 32, (f, 7)), weight_type=FixedType(True, 6, 0),
        weight_lshift=np.array([0, 1, 0, 0, 2, 0, 0]), bias=rng.integers(-200, 200, 7),
        bias_type=FixedType(True, 10, 0), bias_shift=1, acc_shift=1,
    )  # fmt: skip
    d2 = Dense("d2", ["q1"], "d2", weight=rng.integers(-7, 8, (7, 3)), bias=rng.integers(-9, 9, 3))
    ops = [_rq("q0", "x", 1, 6), d1, _rq("q1", "d1", 7, 6), d2]
    return _golden(ops, (t, f), FixedType(True, 8, 0))


def _grouped(rng: np.random.Generator, k: int, cin: int, cout: int, groups: int) -> np.ndarray:
    """A grouped conv's weight expanded to a full (1, k, cin, cout) Conv: zeros outside each group."""
    w = np.zeros((1, k, cin, cout), np.int64)
    gi, go = cin // groups, cout // groups
    for g in range(groups):
        w[:, :, g * gi : (g + 1) * gi, g * go : (g + 1) * go] = rng.integers(
            -31, 32, (1, k, gi, go)
        )
    return w


def model_conv1d() -> GoldenModel:
    """Conv1d (height 1, causal pad, stride 2), grouped conv (2 groups), depthwise FIR, avg pools."""
    rng = np.random.default_rng(5)
    length, c = 24, 4
    conv1d = Conv(
        "c1d", ["q0"], "c1d", weight=rng.integers(-31, 32, (1, 3, c, c)),
        bias=rng.integers(-100, 100, c), strides=(1, 2), pads=(0, 2, 0, 0),
    )  # fmt: skip
    grouped = Conv("grp", ["q1"], "grp", weight=_grouped(rng, 3, c, c, 2), pads=(0, 1, 0, 1))
    depthwise = Conv("dw", ["q2"], "dw", weight=_grouped(rng, 5, c, c, c), pads=(0, 4, 0, 0))
    ones = np.zeros((1, 3, c, c), np.int64)
    ones[0, :, np.arange(c), np.arange(c)] = 1  # AveragePool k=3: a structural conv of ones
    pool = Conv("avg", ["q3"], "avg", weight=ones, strides=(1, 3), structural=True)
    gap = Dense(
        "gap", ["pflat"], "gap", weight=np.tile(np.eye(c, dtype=np.int64), (4, 1)), structural=True
    )
    ops = [
        _rq("q0", "x", 0, 6), conv1d, _rq("q1", "c1d", 6, 6), grouped, _rq("q2", "grp", 6, 6),
        depthwise, _rq("q3", "dw", 5, 6), pool,
        _rq("p", "avg", 8, 6, mult=171),  # 1/3 as a fixed-point multiplier: 171 / 2**9
        Reshape("pflat", ["p"], "pflat", shape=(4 * c,)),
        gap, _rq("out", "gap", 2, 6),  # GlobalAveragePool over 4 positions: an exact shift
    ]  # fmt: skip
    return _golden(ops, (1, length, c), FixedType(True, 8, 0))


MODELS = {
    "gather": model_gather,
    "lookup": model_lookup,
    "sub": model_sub,
    "mul": model_mul,
    "matmul": model_matmul,
    "dense_tokens": model_dense_tokens,
    "conv1d_grouped_pool": model_conv1d,
}


def model_all() -> GoldenModel:
    """Every new op in one graph: a token-mixing gated cell with attention (the Verilator test)."""
    rng = np.random.default_rng(9)
    t, f = 4, 6
    idx = []
    for r in range(t):
        idx += [r * f + j for j in range(4)] + [t * f + r * f + j for j in range(2, 5)] + [-1]
    ops = [
        _rq("q0", "x", 2, 6),
        _tanh(),
        _sigmoid("q0", -32),
        Gather("ga", ["tanh", "sig"], "ga", index=np.array(idx), shape=(t, 8), shifts=(0, 1)),
        Dense("de", ["ga"], "de", weight=rng.integers(-7, 8, (8, 5)), bias=rng.integers(-50, 50, 5)),
        _rq("q1", "de", 5, 6),
        Gather("bc", ["q0"], "bc", index=np.repeat(np.arange(t) * f, 5), shape=(t, 5)),
        MulTensors("mu", ["q1", "bc"], "mu"),
        SubTensors("su", ["mu", "q1"], "su", shift_a=0, shift_b=3),
        _rq("q2", "su", 4, 6),
        Transpose("tr", ["q2"], "tr", perm=(0, 2, 1)),
        MatMulTensors("mm", ["q2", "tr"], "mm"),
        _rq("q3", "mm", 6, 8),
    ]  # fmt: skip
    return _golden(ops, (t, f), FixedType(True, 8, 0))


def _n_bad(a: np.ndarray, b: np.ndarray) -> int:
    return int((np.asarray(a) != np.asarray(b)).reshape(len(a), -1).any(axis=1).sum())


def _vectors(g: GoldenModel, n: int = N_VECTORS, seed: int = 0) -> np.ndarray:
    x, counts = verification_vectors(g, None, n, seed=seed)
    assert counts["random"] == n and counts["corner"] >= 5
    return x


# --------------------------------------------------------------------------- traced program


@pytest.mark.parametrize("which", sorted(MODELS))
def test_traced_op_equals_golden_on_10k_vectors(which):
    """da4ml's program (what the Verilog is written from) == golden, output and every tensor."""
    from edgeml.rtl import trace_golden

    g = MODELS[which]()
    x = _vectors(g)
    t0 = time.perf_counter()
    tr = trace_golden(g)
    t_trace = time.perf_counter() - t0
    n_bad = _n_bad(tr.predict_int(x), g.predict(x))
    print(f"\n[rtl-ops] {which}: {n_bad} of {len(x)} vectors differ (trace {t_trace:.2f} s)")
    assert n_bad == 0
    _, gt = g.run(x[:500], trace=True)
    ours = tr.trace_int(x[:500])
    assert [k for k in gt if not np.array_equal(ours[k], gt[k])] == []


def test_lookup_exhaustive_over_every_input_code():
    """Every 8-bit input code through Requant -> Tanh / Sigmoid / hard-sigmoid ROMs."""
    from edgeml.rtl import trace_golden

    g = model_lookup()
    codes = np.arange(-128, 128, dtype=np.int64)
    x = np.stack([np.roll(codes, k)[:5] for k in range(256)])  # each code in every position
    x = np.concatenate([x, np.repeat(codes[:, None], 5, axis=1)])
    assert set(np.unique(x[:, 4])) == set(codes.tolist())
    assert _n_bad(trace_golden(g).predict_int(x), g.run(x)) == 0


def test_lookup_roms_hold_only_reachable_entries(tmp_path):
    """A clamped input range gets a ROM of its reachable entries only; a constant one no ROM."""
    from edgeml.rtl import generate_rtl

    g = model_lookup()
    d = generate_rtl(g, tmp_path / "lk", "lookups")
    words = [p.read_text().split() for p in d.mem_files]
    defined = sorted(sum("X" not in w for w in ws) for ws in words)
    # tanh: all 64 codes; sigmoid on [-20, 25]: 46 entries of a 6-bit ROM (the rest 'X');
    # hard sigmoid on relu's [0, 31]: a 5-bit ROM of 32
    assert defined == [32, 46, 64], defined
    assert sorted(len(ws) for ws in words) == [32, 64, 64]


def test_lookup_wraps_a_wider_input_into_the_table_type():
    """An FI build widens a register beyond the golden type: the ROM sees the code wrapped."""
    from da4ml.trace import FixedVariableArray, HWConfig, comb_trace

    from edgeml.errors import UnsupportedOpError
    from edgeml.rtl import _trace_op

    op = _tanh()
    v = FixedVariableArray.from_lhs(
        np.full((1, 1), -200.0), np.full((1, 1), 200.0), np.ones((1, 1)), HWConfig(1, -1, -1)
    )._vars
    y = _trace_op(op, [v])
    codes = np.arange(-200, 201, dtype=np.int64)
    got = comb_trace(list(v.reshape(-1)), list(y.reshape(-1))).predict(
        codes.astype(np.float64)[:, None], n_threads=1
    )
    wrapped = ((codes + 32) & 63) - 32
    assert np.array_equal(got.reshape(-1), op.table[wrapped + 32])
    bad = Lookup("odd", ["x"], "y", table=np.arange(10), lo=0, fn="f")  # not a whole type
    with pytest.raises(UnsupportedOpError, match=r"odd.*lookup.*exceeds the table"):
        _trace_op(bad, [v])


def test_gather_rejects_bad_index_and_negative_shift():
    from da4ml.trace import FixedVariableArray, HWConfig

    from edgeml.errors import UnsupportedOpError
    from edgeml.rtl import _trace_op

    v = FixedVariableArray.from_lhs(
        np.full((1, 4), -8.0), np.full((1, 4), 7.0), np.ones((1, 4)), HWConfig(1, -1, -1)
    )._vars
    with pytest.raises(UnsupportedOpError, match=r"'g1' \(gather\): index range \[-1, 4\]"):
        _trace_op(Gather("g1", ["x"], "y", index=np.array([0, -1, 4]), shape=(3,)), [v])
    with pytest.raises(UnsupportedOpError, match=r"'g2' \(gather\): negative shift -1"):
        _trace_op(Gather("g2", ["x"], "y", index=np.arange(4), shape=(4,), shifts=(-1,)), [v])


def test_dense_per_token_reuses_one_cmvm_solution_and_is_identical():
    """Tokens share da4ml's CMVM *solution* (not adders): same ops as one solve per token, faster."""
    from da4ml.trace import FixedVariableArray, HWConfig, comb_trace

    from edgeml.rtl import _const_matmul

    rng = np.random.default_rng(0)
    w = rng.integers(-31, 32, (12, 10))
    shape = (1, 6, 12)
    v = FixedVariableArray.from_lhs(
        np.full(shape, -32.0), np.full(shape, 31.0), np.ones(shape), HWConfig(1, -1, -1)
    )._vars
    t0 = time.perf_counter()
    ref = (FixedVariableArray(v) @ w.astype(np.float64))._vars  # da4ml: one solve per token
    t_da4ml = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = _const_matmul(v, w)
    t_ours = time.perf_counter() - t0
    c_ref = comb_trace(list(v.reshape(-1)), list(ref.reshape(-1)))
    c_ours = comb_trace(list(v.reshape(-1)), list(ours.reshape(-1)))
    print(
        f"\n[rtl-ops] 6 tokens, 12x10 Dense: da4ml {t_da4ml:.2f} s, shared solution {t_ours:.2f} s"
    )
    assert c_ours.ops == c_ref.ops
    x = rng.integers(-32, 32, (2000, 72))
    want = (x.reshape(-1, 6, 12) @ w).reshape(2000, -1)
    assert np.array_equal(c_ours.predict(x.astype(np.float64), n_threads=1), want)


def _family_params(fast: tuple[str, ...]) -> list:
    """Every op-model family; those not in ``fast`` marked slow (Brevitas export, long builds)."""
    return [
        f if f in fast else pytest.param(f, marks=pytest.mark.slow) for f in op_models.OP_MODELS
    ]


@pytest.fixture(scope="module")
def op_model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rtl_op_models")


def _op_model_golden(family: str, root: Path) -> GoldenModel:
    """The golden model of an ``op_models`` family (QONNX by hand in qonnx's conventions, or a
    Brevitas export), compiled by the ONNX front end from its cleaned file."""
    path = root / family / f"{family}.onnx"
    if not path.is_file():
        op_models.OP_MODELS[family](path)
    return GoldenModel.from_onnx(path)


@pytest.mark.parametrize(
    "family", _family_params(("tables", "movement", "pooling", "attention", "deconv"))
)
def test_op_model_traced_equals_golden(family, op_model_dir):
    """Models other tools wrote (their ops lowered by the ONNX front end): traced == golden."""
    from edgeml.rtl import trace_golden

    g = _op_model_golden(family, op_model_dir)
    x = _vectors(g, seed=5)
    n_bad = _n_bad(trace_golden(g).predict_int(x), g.predict(x))
    kinds = sorted({op.kind for op in g.ops})
    print(f"\n[rtl-ops] op model {family} ({', '.join(kinds)}): {n_bad} of {len(x)} vectors differ")
    assert n_bad == 0


# --------------------------------------------------------------------------- localisation


def test_perturbed_lookup_entry_is_detected_and_named():
    """A golden table with one entry changed disagrees with the RTL of the original: op named."""
    from edgeml.rtl import trace_golden

    g = model_all()
    tr = trace_golden(g)
    x = _vectors(g, seed=1)
    g_mut = copy.deepcopy(g)
    op = next(o for o in g_mut.ops if o.name == "sig")
    op.table = op.table.copy()
    op.table[32 + 3] += 1  # code 3: reached by q0
    assert _n_bad(tr.predict_int(x), g.predict(x)) == 0
    res = run_level("rtl", g_mut, x, g_mut.predict(x), tr.predict_int, tr.trace_int)
    print(f"\n[rtl-ops] one sigmoid entry +1: {res.mismatching_vectors} of {len(x)} vectors differ")
    assert res.status == "FAIL" and res.mismatching_vectors > 0
    assert res.first_divergent_layer == "sig (lookup sigmoid)"


def test_swapped_gate_operands_are_detected_and_named():
    """``q1 - mu`` instead of ``mu - q1`` (a wrong gate): the sub op is the first divergent layer."""
    from edgeml.rtl import trace_golden

    g = model_all()
    tr = trace_golden(g)
    x = _vectors(g, seed=2)
    g_mut = copy.deepcopy(g)
    op = next(o for o in g_mut.ops if o.name == "su")
    op.inputs = op.inputs[::-1]
    op.shift_a, op.shift_b = op.shift_b, op.shift_a
    res = run_level("rtl", g_mut, x, g_mut.predict(x), tr.predict_int, tr.trace_int)
    assert res.mismatching_vectors > 0
    assert res.first_divergent_layer == "su (sub)"


def test_wires_of_multipliers_and_roms_are_labelled_with_their_ops(tmp_path):
    """rtl.wire_layers names the golden op of da4ml's multiplier and lookup_table instances."""
    import re

    from edgeml.rtl import generate_rtl, stage_files, wire_layers

    g = model_all()
    d = generate_rtl(g, tmp_path / "lbl", "labels")
    (src,) = stage_files(d)
    (labels,) = wire_layers(d, g)
    found: dict[str, set[str]] = {"multiplier": set(), "lookup_table": set()}
    for line in src.read_text().splitlines():
        for prim in found:
            if f" {prim} #(" in line:  # "wire [..] v<i>; <prim> #(...) op_<i> (..., v<i>);"
                found[prim].add(labels[int(re.search(r"\bv(\d+)\b", line).group(1))])
    assert found["lookup_table"] == {"tanh (lookup tanh)", "sig (lookup sigmoid)"}
    assert found["multiplier"] == {"mu (mul)", "mm (matmul)"}


def test_netlist_interpreter_and_rom_mutant_named(tmp_path):
    """The shipped Verilog (ROM files included) run by edgeml.netlist equals golden; a changed
    ROM word is caught and LayerMap names the lookup op it belongs to."""
    from edgeml.netlist import LayerMap, NetlistSim
    from edgeml.rtl import RtlDesign, generate_rtl

    g = model_all()
    d = generate_rtl(g, tmp_path / "ns", "netl", pipelined=True)
    x = _vectors(g, seed=3)
    sim = NetlistSim.from_design(d)
    assert _n_bad(sim.predict(x), g.predict(x)) == 0
    mut_dir = tmp_path / "mut"
    shutil.copytree(d.out_dir, mut_dir)
    d_mut = RtlDesign.load(mut_dir)
    # ROM word i holds the table entry of the 6-bit code whose bit pattern is i
    sig = next(o for o in g.ops if o.name == "sig")
    want = [int(sig.table[i ^ 32]) & 63 for i in range(64)]
    mem = next(p for p in d_mut.mem_files if [int(w, 16) for w in p.read_text().split()] == want)
    words = mem.read_text().split()
    words[3] = f"{(int(words[3], 16) + 1) % 64:0{len(words[3])}X}"  # code 3 (index = code bits)
    mem.write_text("\n".join(words))
    sim_mut = NetlistSim.from_design(d_mut)
    bad = np.flatnonzero((sim_mut.predict(x) != g.predict(x)).reshape(len(x), -1).any(axis=1))
    assert len(bad) > 0
    label = LayerMap(g, x, sim).first_layer(sim, sim_mut, x[bad[:256]])
    assert label == "sig (lookup sigmoid)"


# --------------------------------------------------------------------------- Verilator


@pytest.mark.rtl
@pytest.mark.parametrize("family", _family_params(("tables",)))
def test_verilator_op_model_bit_exact(family, op_model_dir):
    """An op-model family Verilated (pipelined, as the flow builds it): == golden on 10k vectors."""
    from edgeml.rtl import generate_rtl

    g = _op_model_golden(family, op_model_dir)
    d = generate_rtl(g, op_model_dir / family / "rtl", f"om_{family}", pipelined=True)
    build_s = d.build()
    x = _vectors(g, seed=6)
    n_bad = _n_bad(d.predict_int(x), g.predict(x))
    print(
        f"\n[rtl-ops] op model {family} in Verilator (latency {d.latency}, ~{d.cost_luts:.0f} LUTs, "
        f"{len(d.mem_files)} ROMs): {n_bad} of {len(x)} vectors differ; build {build_s:.1f} s"
    )
    assert n_bad == 0


@pytest.mark.rtl
@pytest.mark.parametrize(
    "pipelined",
    [pytest.param(False, id="comb", marks=pytest.mark.slow), pytest.param(True, id="pipelined")],
)
def test_verilator_all_new_ops_bit_exact(tmp_path, pipelined):
    """Every new op in one design, Verilated (the build is cached by Verilog hash): == golden."""
    from edgeml.rtl import generate_rtl

    g = model_all()
    d = generate_rtl(g, tmp_path / "all", "newops", pipelined=pipelined)
    assert len(d.mem_files) == 2  # the tanh and sigmoid ROMs
    build_s = d.build()
    x = _vectors(g, seed=4)
    ref = g.predict(x)
    t0 = time.perf_counter()
    got = d.predict_int(x)
    t_rtl = time.perf_counter() - t0
    n_bad = _n_bad(got, ref)
    print(
        f"\n[rtl-ops] all new ops, {'pipelined' if d.pipelined else 'combinational'} "
        f"(latency {d.latency}, ~{d.cost_luts:.0f} LUTs): {n_bad} of {len(x)} vectors differ; "
        f"build {build_s:.1f} s, {len(x) / t_rtl:,.0f} vectors/s"
    )
    assert got.dtype == np.int64 and got.shape == ref.shape
    assert n_bad == 0
    assert d.pipelined == pipelined and (d.latency > 0) == pipelined


# --------------------------------------------------------------------------- constant channels


def model_dead_channels(rounding: str) -> GoldenModel:
    """The ECON-T regression: Dense channels with all-zero weights (a dead channel after
    training: the bias alone, a *constant*) and a narrow channel in ``(-1, 0)`` after the
    shift, requantised in ``rounding`` to signed codes and, after a ReLU, to unsigned ones.

    ECON-T's dead Conv channel (bias 1470, ReLU, HALF_EVEN shift 7 to 6 unsigned bits)
    came out 12 instead of 11 in the RTL: da4ml folds a constant's unsigned wrap (the
    round-to-even LSB, ``floor(z) mod 2``) modulo 4. The biases span every residue and
    tie of the shift, both signs. The narrow channel (``{-7, -5, -3} / 8``) reaches a sum in
    ``(-1/2, 1/2)`` when rounded to even: a value with no integer bit, where da4ml's
    ``quantize`` to an integer dropped the sign (-1 became 0).
    """
    rng = np.random.default_rng(14)
    dead = np.arange(-40, 41)  # every residue of a shift by 3, ties included, both signs
    w = np.zeros((16, 3 + len(dead)), np.int64)
    w[:8, :2] = rng.integers(-31, 32, (8, 2))  # two live channels
    w[8, 2] = 2  # 2 * q1[0] (q1 in [0, 2]) plus bias -7: the narrow channel {-7, -5, -3}
    bias = np.concatenate([rng.integers(-99, 100, 2), [-7], dead])
    m = w.shape[1]
    ops = [
        _rq("q0", "x", 1, 6),
        Requant("q1", ["x"], "q1", shift=6, lo=0, hi=3),
        Gather("cat", ["q0", "q1"], "cat", index=np.arange(16), shape=(16,)),
        Dense("d", ["cat"], "d", weight=w, weight_type=FixedType(True, 6, 0), bias=bias,
              bias_type=FixedType(True, 8, 0)),
        Requant("qs", ["d"], "qs", shift=3, rounding=rounding, lo=-32, hi=31),
        Relu("relu", ["d"], "relu"),  # ECON-T: ReLU, then an unsigned requant
        Requant("qu", ["relu"], "qu", shift=3, rounding=rounding, lo=0, hi=63),
        Gather("out", ["qs", "qu"], "out", index=np.arange(2 * m), shape=(2 * m,)),
    ]  # fmt: skip
    return _golden(ops, (8,), FixedType(True, 8, 0))


@pytest.mark.parametrize("rounding", ROUNDING_MODES)
def test_constant_and_narrow_channels_round_exactly(rounding):
    """Dead (constant) and sub-unit channels through every rounding mode: traced == golden.

    Without the fix, HALF_EVEN differs on every vector (dead channels whose ``floor`` is
    2 or 3 mod 4, and the narrow channel), as ECON-T's RTL did on 5,240 of 15,069.
    """
    from edgeml.rtl import trace_golden

    g = model_dead_channels(rounding)
    x = _vectors(g, n=2000, seed=14)
    ref = g.predict(x)
    tr = trace_golden(g)
    m = len(tr.outputs) // 2
    dead = np.arange(-40, 41)
    assert all(v.low == v.high for v in [*tr.outputs[3:m], *tr.outputs[m + 3 :]])
    assert tr.outputs[2].low != tr.outputs[2].high or rounding in ("FLOOR", "CEIL", "DOWN", "UP")
    if rounding == "HALF_EVEN":  # numpy's round is half to even: 20/8 = 2.5 -> 2, -12/8 -> -2
        assert [int(v.low) for v in tr.outputs[3:m]] == list(np.round(dead / 8))
        assert [int(v.low) for v in tr.outputs[m + 3 :]] == list(np.round(np.maximum(dead, 0) / 8))
    got = tr.predict_int(x)
    n_bad = _n_bad(got, ref)
    print(f"\n[rtl-ops] dead channels, {rounding}: {n_bad} of {len(x)} vectors differ")
    assert n_bad == 0
    narrow = {"FLOOR": {-1}, "UP": {-1}, "CEIL": {0}, "DOWN": {0}}  # of -0.875, -0.625, -0.375
    assert set(ref[:, 2]) == narrow.get(rounding, {-1, 0})
    _, gt = g.run(x[:300], trace=True)
    ours = tr.trace_int(x[:300])
    assert [k for k in gt if not np.array_equal(ours[k], gt[k])] == []


@pytest.mark.rtl
def test_verilator_dead_channels_bit_exact(tmp_path):
    """The ECON-T pattern (dead and narrow channels, HALF_EVEN requants) Verilated: == golden."""
    from edgeml.rtl import generate_rtl

    g = model_dead_channels("HALF_EVEN")
    d = generate_rtl(g, tmp_path / "dead", "dead", pipelined=True)
    d.build()
    x = _vectors(g, n=3000, seed=15)
    ref = g.predict(x)
    n_bad = _n_bad(d.predict_int(x), ref)
    print(f"\n[rtl-ops] dead channels in Verilator: {n_bad} of {len(x)} vectors differ")
    assert n_bad == 0
