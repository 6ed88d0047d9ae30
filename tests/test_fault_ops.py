"""The issue-10 golden ops in the fault engines: Gather, Lookup, Sub/Mul/MatMul of tensors,
Dense on (tokens, features), Conv1d (H = 1), grouped and structural (mean / pool) weights.

Every model here is built op by op (the ops and tensor types the golden compiler
emits for these ONNX ops); each campaign mixes weight, bias, lookup-table, act
and acc sites with flips, stuck-ats and 2-bit upsets, and the fast engine's
per-site integer results must equal the naive engine's (copy, corrupt, re-run)
array for array. Lookup ROM entries are sites; structural weights are not; a
store campaign on the combined model resumes to the same results; the float
mirror reproduces every op's codes and ranks table sites. The op families of
``tests/op_models.py`` (hand-written QONNX and Brevitas exports, compiled by the
golden front end) get the same engine-equality check.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from op_models import OP_MODELS

from edgeml.errors import ConfigError
from edgeml.fault_injection import (
    Campaign,
    CampaignResult,
    FaultSite,
    activation_layers,
    count_param_sites,
    enumerate_param_sites,
    enumerate_sites,
    faulty_model,
    run_campaign,
    run_campaign_naive,
    run_with_faults,
)
from edgeml.fault_injection.engine import SiteTable
from edgeml.fault_injection.sites import check_site
from edgeml.fixed import FixedType
from edgeml.golden import (
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

ARRAYS = ("layer", "param", "index", "bit", "kind", "nbits", "acc_drop", "sdc_rate", "max_dev")
ACC = FixedType(True, 24, 0)
N_SAMPLES = 200
N_SITES = 300


# --------------------------------------------------------------------------- builder


class _Builder:
    """Appends golden ops with their output TensorInfo (shape inferred by running the op)."""

    def __init__(self, shape: tuple[int, ...], seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.ops: list[Op] = []
        t = FixedType(True, 8, 4)
        self.tensors = {"x": TensorInfo("x", shape, t, np.array(2.0**-t.frac))}
        self.k = 0

    def _name(self, kind: str) -> tuple[str, str]:
        self.k += 1
        return f"{kind}_{self.k}", f"t{self.k}"

    def add(self, op: Op, ftype: FixedType) -> str:
        xs = [np.zeros((1, *self.tensors[i].shape), np.int64) for i in op.inputs]
        shape = np.asarray(op(*xs)).shape[1:]
        self.tensors[op.output] = TensorInfo(op.output, shape, ftype, np.array(2.0**-ftype.frac))
        self.ops.append(op)
        return op.output

    def weights(self, shape: tuple[int, ...], zero: float = 0.3) -> np.ndarray:
        w = self.rng.integers(-31, 32, shape)
        w[self.rng.random(shape) < zero] = 0
        return w

    def dense(self, x: str, n_out: int, bias: bool = True) -> str:
        name, out = self._name("MatMul")
        n_in = self.tensors[x].shape[-1]
        b = self.rng.integers(-2000, 2000, n_out) if bias else None
        op = Dense(
            name,
            [x],
            out,
            weight=self.weights((n_in, n_out)),
            weight_type=FixedType(True, 6, 5),
            bias=b,
            bias_type=FixedType(True, 12, 9) if bias else None,
        )
        return self.add(op, ACC)

    def structural_dense(self, x: str, n_out: int) -> str:
        """A mean's sum: weight codes 1 (the 1/N goes into the output scale)."""
        name, out = self._name("ReduceMean")
        n_in = self.tensors[x].shape[-1]
        op = Dense(
            name,
            [x],
            out,
            weight=np.ones((n_in, n_out), np.int64),
            weight_type=FixedType(False, 1, 0),
            structural=True,
        )
        return self.add(op, ACC)

    def conv(self, x: str, w: np.ndarray, pads: tuple, strides: tuple, **kw) -> str:
        name, out = self._name("Conv")
        op = Conv(
            name,
            [x],
            out,
            weight=w,
            weight_type=kw.pop("weight_type", FixedType(True, 6, 5)),
            strides=strides,
            pads=pads,
            **kw,
        )
        return self.add(op, ACC)

    def rq(self, x: str, shift: int, bits: int = 6, signed: bool = True) -> str:
        name, out = self._name("Quant")
        t = FixedType(signed, bits, 3)
        op = Requant(name, [x], out, shift=shift, lo=t.qmin, hi=t.qmax)
        return self.add(op, t)

    def relu(self, x: str) -> str:
        name, out = self._name("Relu")
        return self.add(Relu(name, [x], out), self.tensors[x].type)

    def lookup(self, x: str, fn: str, out_type: FixedType) -> str:
        """A function of every input code, quantised to ``out_type`` (the fused Quant)."""
        name, out = self._name(fn.capitalize())
        t = self.tensors[x].type
        real = np.arange(t.qmin, t.qmax + 1) * 2.0**-t.frac
        f = {"tanh": np.tanh, "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[fn](real)
        table = np.clip(np.rint(f * 2.0**out_type.frac), out_type.qmin, out_type.qmax)
        op = Lookup(name, [x], out, table=table.astype(np.int64), lo=t.qmin, fn=fn)
        return self.add(op, out_type)

    def gather(self, xs: list[str], index: np.ndarray, shape: tuple, shifts: tuple = ()) -> str:
        name, out = self._name("Gather")
        op = Gather(name, xs, out, index=index.astype(np.int64), shape=shape, shifts=shifts)
        return self.add(op, FixedType(True, 10, 3))

    def binary(self, cls: type, a: str, b: str, **kw) -> str:
        name, out = self._name(cls.__name__)
        return self.add(cls(name, [a, b], out, **kw), ACC)

    def layout(self, cls: type, x: str, **kw) -> str:
        name, out = self._name(cls.__name__)
        return self.add(cls(name, [x], out, **kw), self.tensors[x].type)

    def model(self, out: str) -> GoldenModel:
        t = self.tensors["x"]
        return GoldenModel(
            ops=self.ops,
            tensors=self.tensors,
            input_name="x",
            output_name=out,
            input_shape=t.shape,
            input_quant=Requant("inq", ["x"], "x", lo=t.type.qmin, hi=t.type.qmax),
            input_real_scale=float(t.scale),
        )


def _lookup_model(seed: int = 0) -> GoldenModel:
    """Dense -> 6-bit requant -> tanh table (8-bit) -> Dense: a lookup between two layers."""
    b = _Builder((8,), seed)
    h = b.rq(b.dense("x", 6), 6)
    h = b.lookup(h, "tanh", FixedType(True, 8, 7))
    return b.model(b.dense(h, 4))


def _gather_model(seed: int = 1) -> GoldenModel:
    """Concat-with-shift + pad (two inputs, index -1), a per-token Dense, a Slice/Pad."""
    b = _Builder((12,), seed)
    a = b.rq(b.dense("x", 8), 6)
    c = b.rq(b.dense("x", 4), 6)
    idx = b.rng.integers(-1, 12, 18)  # duplicates (broadcast / tile) and zeros (pad)
    h = b.gather([a, c], idx, (3, 6), shifts=(0, 1))
    h = b.rq(b.relu(b.dense(h, 5)), 5)  # Dense per token on (3, 6)
    h = b.gather([h], np.r_[np.arange(0, 15, 2), -1, -1, np.arange(1, 15, 2)], (17,))
    return b.model(b.dense(h, 4))


def _submul_model(seed: int = 2) -> GoldenModel:
    """Gates: (a << 1) - b, requant, times a, requant, plus b (residual)."""
    b = _Builder((8,), seed)
    a = b.rq(b.dense("x", 6), 6)
    c = b.rq(b.dense("x", 6), 6)
    d = b.rq(b.binary(SubTensors, a, c, shift_a=1), 1)
    m = b.rq(b.binary(MulTensors, d, a), 4)
    s = b.binary(AddTensors, m, c)
    return b.model(b.dense(s, 4))


def _attention(b: _Builder, x: str) -> tuple[str, str]:
    """Scores q @ k^T, a sigmoid table over them, then @ v: returns (output, v)."""
    q = b.rq(b.dense(x, 3), 5, bits=5)
    k = b.rq(b.dense(x, 3), 5, bits=5)
    v = b.rq(b.dense(x, 3), 5, bits=5)
    kt = b.layout(Transpose, k, perm=(0, 2, 1))
    s = b.rq(b.binary(MatMulTensors, q, kt), 3)
    p = b.lookup(s, "sigmoid", FixedType(False, 6, 5))
    o = b.rq(b.binary(MatMulTensors, p, v), 5)
    return o, v


def _matmul_model(seed: int = 3) -> GoldenModel:
    b = _Builder((4, 6), seed)
    o, _ = _attention(b, "x")
    return b.model(b.dense(b.layout(Reshape, o, shape=(12,)), 4))


def _structural_model(seed: int = 4) -> GoldenModel:
    """Conv1d as a height-1 grouped Conv (zeros outside 2 groups), average pool as a
    structural Conv, mean over tokens as a structural Dense on (channels, tokens)."""
    b = _Builder((1, 8, 4), seed)
    w = b.weights((1, 3, 4, 4), zero=0.0)
    w[:, :, :2, 2:] = 0  # groups=2: input channels 0-1 feed outputs 0-1 only
    w[:, :, 2:, :2] = 0
    h = b.rq(
        b.conv(
            "x",
            w,
            (0, 1, 0, 1),
            (1, 1),
            bias=b.rng.integers(-500, 500, 4),
            bias_type=FixedType(True, 12, 9),
        ),
        5,
    )
    pool = np.zeros((1, 2, 4, 4), np.int64)
    pool[0, :, np.arange(4), np.arange(4)] = 1
    h = b.rq(
        b.conv(h, pool, (0, 0, 0, 0), (1, 2), weight_type=FixedType(False, 1, 0), structural=True),
        1,
    )  # (1, 4, 4)
    h = b.layout(Transpose, b.layout(Reshape, h, shape=(4, 4)), perm=(0, 2, 1))
    h = b.rq(b.structural_dense(h, 1), 2)  # (4 channels, 1): sum over the 4 tokens
    return b.model(b.dense(b.layout(Reshape, h, shape=(4,)), 4))


def _all_model(seed: int = 5) -> GoldenModel:
    """Every new op in one graph: attention (MatMul, Lookup), gates (Sub, Mul), Gather
    (two inputs, shifts, padding), a structural mean, a per-token Dense."""
    b = _Builder((4, 6), seed)
    o, v = _attention(b, "x")
    g = b.rq(b.binary(SubTensors, o, v, shift_b=1), 1)
    g = b.rq(b.binary(MulTensors, g, o), 4)
    h = b.rq(b.relu(b.dense(g, 5)), 6)  # per token: (4, 5)
    idx = b.rng.integers(-1, 32, 15)
    h = b.gather([h, o], idx, (3, 5), shifts=(1, 0))
    h = b.rq(b.structural_dense(h, 1), 2)
    h = b.lookup(h, "tanh", FixedType(True, 7, 6))
    return b.model(b.dense(b.layout(Reshape, h, shape=(3,)), 4))


MODELS: dict[str, Callable[[], GoldenModel]] = {
    "lookup": _lookup_model,
    "gather": _gather_model,
    "submul": _submul_model,
    "matmul": _matmul_model,
    "structural": _structural_model,
    "all": _all_model,
}


def _data(g: GoldenModel, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = g.input_type
    x = rng.integers(t.qmin, t.qmax + 1, (N_SAMPLES, *g.input_shape))
    y = np.asarray(g.run(x)).reshape(N_SAMPLES, -1).argmax(axis=1)
    noisy = rng.random(N_SAMPLES) < 0.2
    y[noisy] = rng.integers(0, 4, int(noisy.sum()))
    return x, y


def _mixed_sites(g: GoldenModel, seed: int = 0) -> list[FaultSite]:
    """N_SITES sites over every param: flips, stuck-ats and 2-bit upsets."""
    rng = np.random.default_rng(seed)
    params = ("weight", "bias", "table", "act", "acc")
    layers = None
    pool = enumerate_sites(g, params, "flip", 1, layers)
    pool += enumerate_sites(g, params, "stuck1", 1)[::7]
    pool += enumerate_sites(g, params, "stuck0", 2)[::7]
    pick = rng.choice(len(pool), min(N_SITES, len(pool)), replace=False)
    # every act/table layer at least once, so no op is missed by the draw
    first: dict[tuple[str, str], FaultSite] = {}
    for s in pool:
        first.setdefault((s.layer, s.param), s)
    return sorted({pool[i] for i in pick} | set(first.values()), key=lambda s: s.fault_id)


def _assert_same(a: CampaignResult, b: CampaignResult) -> None:
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    assert a.layer_names == b.layer_names and a.n_samples == b.n_samples


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[GoldenModel, np.ndarray, np.ndarray]]:
    out = {}
    for name, build in MODELS.items():
        g = build()
        out[name] = (g, *_data(g))
    return out


# --------------------------------------------------------------------------- equality


@pytest.mark.parametrize("name", list(MODELS))
def test_fast_engine_equals_naive_per_site(models: dict, name: str) -> None:
    g, x, y = models[name]
    sites = _mixed_sites(g)
    fast = run_campaign(g, x, y, sites, progress=False)
    naive = run_campaign_naive(g, x, y, sites, progress=False)
    _assert_same(fast, naive)
    # not a vacuous comparison: faults matter, in more than one kind of place
    assert fast.sdc_rate.max() > 0.1 and (fast.sdc_rate == 0).any()
    hit = {fast.param_labels()[i] for i in np.flatnonzero(fast.max_dev > 0)}
    assert {"weight", "act", "acc"} <= hit
    if name in ("lookup", "matmul", "all"):
        assert "table" in hit


def test_any_output_change_mode_equals_naive(models: dict) -> None:
    g, x, _ = models["all"]
    sites = _mixed_sites(g, seed=1)[:150]
    fast = run_campaign(g, x, None, sites, progress=False, sdc="any")
    naive = run_campaign_naive(g, x, None, sites, progress=False, sdc="any")
    _assert_same(fast, naive)


def test_saved_ir_gives_the_same_campaign(models: dict, tmp_path: Path) -> None:
    g, x, y = models["all"]
    g2 = GoldenModel.load(g.save(tmp_path / "golden.npz"))
    sites = _mixed_sites(g, seed=2)[:120]
    _assert_same(
        run_campaign(g2, x, y, sites, progress=False),
        run_campaign_naive(g, x, y, sites, progress=False),
    )


# --------------------------------------------------------------------------- other tools' models


@pytest.fixture(scope="module")
def op_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault_op_models")


@pytest.mark.parametrize("family", list(OP_MODELS))
def test_fast_engine_equals_naive_on_exported_op_models(op_model_dir: Path, family: str) -> None:
    """The op families as hand-written QONNX (qonnx's conventions) and Brevitas exports
    write them, cleaned and compiled by the golden front end: same per-site results."""
    g = GoldenModel.from_onnx(OP_MODELS[family](op_model_dir / f"{family}.onnx", seed=0))
    rng = np.random.default_rng(11)
    t = g.input_type
    x = rng.integers(t.qmin, t.qmax + 1, (N_SAMPLES, *g.input_shape))
    sites = _mixed_sites(g, seed=4)
    assert len(sites) >= N_SITES
    fast = run_campaign(g, x, None, sites, progress=False, sdc="any")
    naive = run_campaign_naive(g, x, None, sites, progress=False, sdc="any")
    _assert_same(fast, naive)
    assert fast.sdc_rate.max() > 0 and (fast.max_dev == 0).any()
    if any(isinstance(op, Lookup) for op in g.ops):
        tab = fast.param_labels() == "table"
        assert tab.any() and fast.max_dev[tab].max() > 0


# --------------------------------------------------------------------------- lookup tables


def test_lookup_table_entries_are_sites(models: dict) -> None:
    g = models["lookup"][0]
    lk = next(op for op in g.ops if isinstance(op, Lookup))
    width = g.tensors[lk.output].type.width
    table = [s for s in enumerate_sites(g) if s.param == "table"]
    assert len(table) == 64 * width == lk.table.size * width
    assert table[0] == FaultSite(lk.name, "table", 0, 0) and table[-1].index == 63
    assert table[5].label == f"{lk.name}.table[0] bit 5"
    n_dense = sum(op.weight.size * 6 + op.bias.size * 12 for op in g.param_ops)
    assert count_param_sites(g) == n_dense + 64 * width == len(enumerate_param_sites(g))
    ex = SiteTable.exhaustive(g)
    assert [ex.site(i) for i in range(len(ex))] == enumerate_sites(g)
    assert enumerate_param_sites(g) == enumerate_sites(g)
    with pytest.raises(ConfigError, match=r"has 64 words"):
        check_site(g, FaultSite(lk.name, "table", 64, 0))
    with pytest.raises(ConfigError, match=r"holds no lookup table.*lookup ops are"):
        check_site(g, FaultSite(g.param_ops[0].name, "table", 0, 0))


def test_flipping_a_table_entry_changes_exactly_the_samples_that_read_it(models: dict) -> None:
    g, x, y = models["lookup"]
    lk = next(op for op in g.ops if isinstance(op, Lookup))
    _, trace = g.run(x, trace=True)
    read = trace[lk.inputs[0]] - lk.lo  # the entry each element reads
    entry = int(np.bincount(read.reshape(-1)).argmax())  # the most read entry
    site = FaultSite(lk.name, "table", entry, 6)
    fm = faulty_model(g, [site])
    new = next(op for op in fm.ops if isinstance(op, Lookup)).table
    assert new[entry] == lk.table[entry] ^ 64 or new[entry] - lk.table[entry] in (64, -64)
    assert np.array_equal(np.delete(new, entry), np.delete(lk.table, entry))
    out = run_with_faults(g, x, [site]).reshape(len(x), -1)
    ref = np.asarray(g.run(x)).reshape(len(x), -1)
    reads = (read == entry).reshape(len(x), -1).any(axis=1)
    changed = (out != ref).any(axis=1)
    assert changed.any() and not changed[~reads].any()  # only readers of the entry change
    never = sorted(set(range(64)) - set(np.unique(read).tolist()))
    sites = [site] + [FaultSite(lk.name, "table", i, b) for i in never[:3] for b in (0, 7)]
    res = run_campaign(g, x, y, sites, progress=False)
    assert res.sdc_rate[0] == np.count_nonzero(out.argmax(1) != ref.argmax(1)) / len(x)
    assert res.max_dev[0] == np.abs(out - ref).max()
    assert (res.max_dev[1:] == 0).all()  # entries no sample reads mask every fault


# --------------------------------------------------------------------------- structural


def test_structural_weights_are_not_sites(models: dict) -> None:
    g, x, y = models["structural"]
    structural = [op for op in g.param_ops if op.structural]
    assert len(structural) == 2 and any(isinstance(op, Conv) for op in structural)
    names = {op.name for op in structural}
    sites = enumerate_sites(g, ("weight", "bias", "acc"))
    assert not [s for s in sites if s.param == "weight" and s.layer in names]
    assert {s.layer for s in sites if s.param == "acc"} >= names  # accumulators still are
    grouped = g.param_ops[0]  # grouped conv: its zeros are real storage
    assert not grouped.structural
    assert sum(s.layer == grouped.name and s.param == "weight" for s in sites) == 48 * 6
    n = sum(
        (0 if op.structural else op.weight.size * op.weight_type.width)
        + (0 if op.bias is None else op.bias.size * op.bias_type.width)
        for op in g.param_ops
    )
    assert count_param_sites(g) == n == len(SiteTable.exhaustive(g))
    op = structural[0]
    with pytest.raises(ConfigError, match=rf"'{op.name}' has structural weights.*wiring"):
        check_site(g, FaultSite(op.name, "weight", 0, 0))
    with pytest.raises(ConfigError, match="structural weights"):
        run_campaign(g, x, y, [FaultSite(op.name, "weight", 0, 0)], progress=False)
    with pytest.raises(ConfigError, match="unknown layer"):
        enumerate_sites(g, ("weight",), layers=[op.name])


def test_gather_outputs_are_not_default_activation_sites(models: dict) -> None:
    g = models["all"][0]
    kinds = {op.name: type(op) for op in g.ops}
    acts = activation_layers(g)
    assert not [n for n in acts if kinds[n] in (Gather, Reshape, Transpose)]
    stored = {kinds[n] for n in acts}
    assert {Lookup, Requant} <= stored  # a table's output is a register
    gather = next(op.name for op in g.ops if isinstance(op, Gather))
    explicit = enumerate_sites(g, ("act",), layers=[gather])
    assert len(explicit) == 15 * 10  # still addressable by name: 15 words of 10 bits


# --------------------------------------------------------------------------- campaign store


def test_store_campaign_on_new_ops_resumes(models: dict, tmp_path: Path) -> None:
    from edgeml.fault_injection import runner
    from edgeml.fault_injection.store import FaultStore

    g, x, y = models["all"]
    sites = _mixed_sites(g, seed=3)
    camp = Campaign(sites=tuple(sites), seed=0, meta={"sampler": "exhaustive"})
    ref = run_campaign(g, x, y, sites, progress=False)
    path = tmp_path / "s.sqlite"
    cfg = runner.campaign_config(g, x, y, camp)
    with FaultStore.create(path, cfg, sites) as st:  # an interrupted run: two chunks stored
        for k, (a, b) in enumerate(((200, 260), (0, 50))):
            st.append(sites[a:b], *runner.evaluate_chunk(g, x, y, sites[a:b]), chunk=k)
    res = runner.run_store_campaign(g, x, y, camp, path, chunk=64, workers=0, progress=False)
    assert res.complete and len(res) == len(sites)
    np.testing.assert_array_equal(res.sdc_rate, ref.sdc_rate)
    np.testing.assert_array_equal(res.acc_drop, ref.acc_drop)
    np.testing.assert_array_equal(res.max_dev, ref.max_dev)
    assert any(s.param == "table" for s in res.sites())


# --------------------------------------------------------------------------- float mirror


def test_float_mirror_reproduces_the_new_ops_and_ranks_table_sites(models: dict) -> None:
    from edgeml.fault_injection.hessian import FloatMirror, LossHessian, gradient_ranking

    g, x, y = models["all"]
    mirror = FloatMirror(g)
    out = mirror.forward(x).detach().numpy()
    assert np.array_equal(out, np.asarray(g.run(x)).astype(np.float64))
    segs = {(s.layer, s.param) for s in mirror.segments}
    assert not [k for k in segs if k[1] == "weight" and k[0].startswith("ReduceMean")]
    lookups = [op for op in g.ops if isinstance(op, Lookup)]
    assert {(op.name, "table") for op in lookups} <= segs
    lh = LossHessian(mirror, x, y)
    grad = lh.gradient().numpy()
    for op in lookups:  # table entries the samples read get gradients
        seg = mirror.segment(op.name, "table")
        assert np.abs(grad[seg.offset : seg.stop]).max() > 0
    first = mirror.segments[0]  # the straight-through slope carries gradients upstream
    assert np.abs(grad[first.offset : first.stop]).max() > 0
    sites = [s for s in enumerate_sites(g, ("table", "weight")) if s.bit >= 4]
    r = gradient_ranking(g, x, y, sites, loss_hessian=lh)
    assert len(r) == len(sites) and r.score.max() > 0
