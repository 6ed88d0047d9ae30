"""Fault models (flip, stuck-at, multi-bit, act/acc transients, BER) and the fast engine.

Every fault model is checked against the naive engine (copy the model,
corrupt it, run everything) on whole campaigns, array for array: on a small
jet-tagger-shaped MLP (the chain engine), a cleaned QONNX CNN (convolution,
pooling: the general walker) and a hand-built graph with a residual add.
Plus: campaigns saved, loaded and replayed; corrupt files refused; bad site
fields named with their allowed values.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import qonnx_builders as qb

from edgeml.errors import ConfigError, CorruptFileError
from edgeml.fault_injection import (
    BerSweepResult,
    Campaign,
    CampaignResult,
    FaultSite,
    MultiFault,
    activation_layers,
    ber_trials,
    enumerate_param_sites,
    enumerate_sites,
    fault_values,
    faulty_model,
    run_ber_sweep,
    run_campaign,
    run_campaign_naive,
    run_multi_faults,
    run_with_faults,
)
from edgeml.fault_injection.ber import run_multi_faults_naive
from edgeml.fault_injection.engine import _FLOAT_ROUND, _Elem
from edgeml.fault_injection.engine_standin import jet_standin
from edgeml.golden import GoldenModel, Relu, Requant

ARRAYS = ("layer", "param", "index", "bit", "kind", "nbits", "acc_drop", "sdc_rate", "max_dev")


def _assert_same(a: CampaignResult, b: CampaignResult) -> None:
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    assert a.layer_names == b.layer_names and a.n_samples == b.n_samples
    assert a.baseline_accuracy == b.baseline_accuracy or np.isnan(a.baseline_accuracy)


# --------------------------------------------------------------------------- designs


@pytest.fixture(scope="module")
def small() -> tuple[GoldenModel, np.ndarray, np.ndarray]:
    """A jet-tagger-shaped MLP (16-bit inputs, 6-bit pruned weights, 6-bit ReLU) 8-12-8-4."""
    return jet_standin(seed=2, n_samples=120, shape=(8, 12, 8, 4))


@pytest.fixture(scope="module")
def jet() -> tuple[GoldenModel, np.ndarray, np.ndarray]:
    """The 16-64-32-32-5 jet-tagger stand-in on 1,000 samples."""
    return jet_standin(seed=0, n_samples=1000)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[GoldenModel, np.ndarray, None]:
    """Conv (padding) -> ReLU -> Quant -> MaxPool -> Flatten -> Gemm, cleaned to NHWC."""
    from edgeml.export import clean_qonnx

    tmp = tmp_path_factory.mktemp("fault_models")
    raw = qb.save(qb.cnn_nchw(np.random.default_rng(5)), tmp / "cnn.onnx")
    g = GoldenModel.from_onnx(clean_qonnx(raw, tmp / "cnn.clean.onnx"))
    rng = np.random.default_rng(6)
    q = g.input_quant
    x = rng.integers(q.lo, q.hi + 1, size=(60, *g.input_shape), dtype=np.int64)
    return g, x, None


@pytest.fixture(scope="module")
def residual() -> tuple[GoldenModel, np.ndarray, np.ndarray]:
    from test_faults import _residual_design

    g, x, y = _residual_design(seed=1)
    return g, x[:80], y[:80]


@pytest.fixture(scope="module")
def odd() -> tuple[GoldenModel, np.ndarray, np.ndarray]:
    """Dense -> Dense without activation, FLOOR and HALF_UP requantisers, a 4-bit weight
    and a quantised (requantised) output: cases the stand-in does not have."""
    rng = np.random.default_rng(0)
    b = qb.GraphBuilder((10,), (6,))
    h = b.quant("inp", 2.0**-4, 8)
    h = b.node("MatMul", [h, b.qweight(rng.integers(-7, 8, (10, 12)) * 2.0**-3, 2.0**-3, 4)])
    h = b.node("MatMul", [h, b.qweight(rng.integers(-7, 8, (12, 9)) * 2.0**-3, 2.0**-3, 4)])
    h = b.node("Add", [h, b.quant(b.const(rng.integers(-50, 50, 9) * 2.0**-10), 2.0**-10, 16)])
    h = b.node("Relu", [h])
    h = b.quant(h, 2.0**-2, 5, signed=False, rounding="FLOOR")
    h = b.node("MatMul", [h, b.qweight(rng.integers(-7, 8, (9, 6)) * 2.0**-3, 2.0**-3, 4)])
    h = b.node("Add", [h, b.quant(b.const(rng.integers(-20, 20, 6) * 2.0**-5), 2.0**-5, 12)])
    h = b.quant(h, 2.0**-1, 6, signed=True, rounding="HALF_UP")
    g = GoldenModel.from_onnx(b.build(h))
    q = g.input_quant
    return g, rng.integers(q.lo, q.hi + 1, (150, 10)), rng.integers(0, 6, 150)


def _campaign_pair(design, sites, sdc="top1"):
    g, x, y = design
    fast = run_campaign(g, x, y, sites, progress=False, sdc=sdc)
    naive = run_campaign_naive(g, x, y, sites, progress=False, sdc=sdc)
    _assert_same(fast, naive)
    return fast


# --------------------------------------------------------------------------- fault models vs naive


@pytest.mark.parametrize("kind", ["flip", "stuck0", "stuck1"])
def test_param_campaigns_equal_naive(small, kind: str) -> None:
    g = small[0]
    sites = enumerate_sites(g, params=("weight", "bias"), kind=kind)
    res = _campaign_pair(small, sites)
    assert len(res) == sum(
        op.weight.size * 6 + op.bias.size * op.bias_type.width for op in g.param_ops
    )
    assert res.sdc_rate.max() > 0.05  # some faults really hurt
    if kind != "flip":  # a stuck-at that matches the stored bit changes nothing
        assert np.count_nonzero(res.max_dev == 0) > len(res) // 4


@pytest.mark.parametrize("nbits", [2, 3])
def test_multi_bit_upsets_equal_naive(small, nbits: int) -> None:
    g = small[0]
    for kind in ("flip", "stuck1"):
        sites = enumerate_sites(g, params=("weight", "bias", "act", "acc"), kind=kind, nbits=nbits)
        assert {s.nbits for s in sites} == {nbits}
        assert all(s.bit + nbits <= 16 for s in sites if s.param == "bias")
        res = _campaign_pair(small, sites)
        assert res.nbits.min() == nbits


def test_transient_act_and_acc_campaigns_equal_naive(small) -> None:
    g = small[0]
    acts = enumerate_sites(g, params=("act",))
    accs = enumerate_sites(g, params=("acc",))
    # default act sites are the requantised activations (one per hidden layer)
    assert {s.layer for s in acts} == set(activation_layers(g))
    assert all(g.ops[[o.name for o in g.ops].index(s.layer)].kind == "requant" for s in acts)
    for kind in ("flip", "stuck0", "stuck1"):
        sites = [dataclasses.replace(s, kind=kind) for s in acts + accs]
        res = _campaign_pair(small, sites)
        assert res.per_layer("acc") and res.per_layer("act")
    # the graph input (a register in hardware) and a pre-requant ReLU output
    relu = next(op.name for op in g.ops if op.kind == "relu")
    extra = enumerate_sites(g, params=("act",), layers=[g.input_name, relu])
    assert {s.layer for s in extra} == {g.input_name, relu}
    _campaign_pair(small, extra)


def test_sdc_any_counts_every_changed_output(small) -> None:
    g = small[0]
    sites = enumerate_sites(g, params=("weight", "acc"))
    top1 = _campaign_pair(small, sites, sdc="top1")
    anyc = _campaign_pair(small, sites, sdc="any")
    assert np.all(anyc.sdc_rate >= top1.sdc_rate)
    assert np.array_equal(anyc.sdc_rate > 0, anyc.max_dev > 0)
    assert anyc.sdc_rate.mean() > 2 * top1.sdc_rate.mean()
    assert anyc.meta["sdc"] == "any" and top1.meta["sdc"] == "top1"
    # acc_drop and max_dev do not depend on the SDC definition
    assert np.array_equal(anyc.max_dev, top1.max_dev)
    assert np.array_equal(anyc.acc_drop, top1.acc_drop)


def test_cnn_campaigns_equal_naive(cnn) -> None:
    """Convolution, pooling and a dense head: the walker and the chain engine together."""
    g = cnn[0]
    kinds = ("flip", "stuck0", "stuck1")
    every = enumerate_sites(g, params=("weight", "bias", "act", "acc"))
    # every site once, with the three kinds in turn; MBUs on a third of the words
    sites = [dataclasses.replace(s, kind=kinds[i % 3]) for i, s in enumerate(every)]
    sites += enumerate_sites(g, params=("weight", "act"), nbits=2)[::3]
    res = _campaign_pair(cnn, sites)
    assert np.isnan(res.acc_drop).all() and res.sdc_rate.max() > 0
    assert {"act", "acc", "weight", "bias"} == set(res.param_labels())


def test_quantised_output_and_dense_to_dense_equal_naive(odd) -> None:
    g = odd[0]
    assert [op.kind for op in g.ops][:2] == ["dense", "dense"] and g.ops[-1].kind == "requant"
    sites = enumerate_sites(g, params=("weight", "bias", "act", "acc"))
    sites += enumerate_sites(g, params=("weight", "bias", "act", "acc"), kind="stuck1", nbits=2)
    res = _campaign_pair(odd, sites)
    assert res.sdc_rate.max() > 0.2
    _campaign_pair(odd, enumerate_sites(g, params=("weight", "acc"), kind="stuck0"), sdc="any")


def test_residual_graph_campaigns_equal_naive(residual) -> None:
    g = residual[0]
    sites = enumerate_sites(g, params=("weight", "bias", "act", "acc"), kind="stuck1")
    sites += enumerate_sites(g, params=("act",), nbits=3)
    sites += enumerate_sites(g, params=("act",), layers=["add", "q1", "r2d"])
    _campaign_pair(residual, sites)


def test_jet_standin_random_campaign_equals_naive(jet) -> None:
    """The 16-64-32-32-5 stand-in: 240 random sites of every kind, 1,000 samples."""
    g = jet[0]
    pool = enumerate_sites(g, params=("weight", "bias", "act", "acc"))
    rng = np.random.default_rng(11)
    pick = rng.choice(len(pool), 240, replace=False)
    kinds = rng.choice(["flip", "flip", "stuck0", "stuck1"], 240)
    widths = rng.choice([1, 1, 1, 2], 240)
    sites = []
    for i, k, nb in zip(pick, kinds, widths, strict=True):
        s = pool[i]
        width = 16 if s.param == "bias" else (6 if s.param in ("weight", "act") else 64)
        nb = int(nb) if s.bit + int(nb) <= width else 1
        try:
            sites.append(dataclasses.replace(s, kind=str(k), nbits=nb))
        except ConfigError:  # pragma: no cover - replace never fails for these
            sites.append(s)
    sites = [s for s in sites if s.param != "acc" or s.nbits == 1]  # acc widths vary
    res = _campaign_pair(jet, sites)
    assert res.sdc_rate.max() > 0.1 and 0.7 < res.baseline_accuracy < 0.95


def test_exhaustive_jet_campaign_is_fast_and_sound(jet) -> None:
    """All 27,664 weight+bias bits: sign bits hurt more than LSBs, the output layer most."""
    g, x, y = jet
    res = run_campaign(g, x, y, progress=False)
    assert len(res) == 27_664 and res.seconds < 30  # ~1 s unloaded, generous for CI
    per_bit = res.per_bit("weight")
    assert per_bit[5] > 5 * per_bit[0]
    per_layer = res.per_layer("weight")
    assert max(per_layer, key=per_layer.get) == g.param_ops[-1].name
    # spot check: 50 sites against the naive engine
    idx = np.random.default_rng(3).choice(len(res), 50, replace=False)
    naive = run_campaign_naive(g, x, y, [res.site(int(i)) for i in idx], progress=False)
    for name in ("acc_drop", "sdc_rate", "max_dev"):
        assert np.array_equal(getattr(res, name)[idx], getattr(naive, name))


def test_fault_on_a_mutated_model_is_not_served_from_cache(small) -> None:
    g, x, y = small
    sites = enumerate_sites(g, params=("weight",))[:200]
    before = run_campaign(g, x, y, sites, progress=False)
    g2 = faulty_model(g, [FaultSite(g.param_ops[0].name, "weight", 0, 5)])
    after = run_campaign(g2, x, y, sites, progress=False)
    _assert_same(after, run_campaign_naive(g2, x, y, sites, progress=False))
    assert not np.array_equal(before.max_dev, after.max_dev)


# --------------------------------------------------------------------------- BER


def test_ber_trials_are_reproducible_nested_and_at_the_right_rate(small) -> None:
    g = small[0]
    n_bits = sum(op.weight.size * 6 + op.bias.size * 16 for op in g.param_ops)
    low = ber_trials(g, 2e-3, 200, seed=7)
    assert low == ber_trials(g, 2e-3, 200, seed=7)
    assert low != ber_trials(g, 2e-3, 200, seed=8)
    high = ber_trials(g, 2e-2, 200, seed=7)
    # common random numbers: each trial's low-BER flips are a subset of its high-BER flips
    assert all(set(a.sites) <= set(b.sites) for a, b in zip(low, high, strict=True))
    flips = np.array([len(t) for t in high])
    mean, se = n_bits * 2e-2, np.sqrt(n_bits * 2e-2 / 200)
    assert abs(flips.mean() - mean) < 5 * se
    sites = [s for t in high for s in t.sites]
    assert {s.kind for s in sites} == {"flip"} and {s.param for s in sites} == {"weight", "bias"}
    only_w = ber_trials(g, 2e-2, 20, seed=7, params=("weight",))
    assert {s.param for t in only_w for s in t.sites} == {"weight"}
    assert ber_trials(g, 0.0, 5, seed=1) == [MultiFault(())] * 5


def test_multi_faults_equal_naive(small, cnn) -> None:
    g, x, y = small
    trials = ber_trials(g, 5e-3, 12, seed=3) + ber_trials(g, 1e-3, 12, seed=4)
    trials += [
        MultiFault((FaultSite(g.param_ops[1].name, "weight", 3, 5),)),
        MultiFault(
            (
                FaultSite(activation_layers(g)[0], "act", 2, 1, "stuck1", 2),
                FaultSite(g.param_ops[2].name, "acc", 1, 9),
                FaultSite(g.param_ops[0].name, "bias", 4, 15),
            )
        ),
    ]
    for sdc in ("top1", "any"):
        fast = run_multi_faults(g, x, y, trials, progress=False, sdc=sdc)
        naive = run_multi_faults_naive(g, x, y, trials, progress=False, sdc=sdc)
        for name in ("n_sites", "accuracy", "acc_drop", "sdc_rate", "max_dev"):
            assert np.array_equal(getattr(fast, name), getattr(naive, name), equal_nan=True), name
    assert fast.sdc_rate.max() > 0
    gc, xc, _ = cnn
    tc = ber_trials(gc, 1e-2, 6, seed=1)
    a = run_multi_faults(gc, xc, None, tc, progress=False)
    b = run_multi_faults_naive(gc, xc, None, tc, progress=False)
    assert np.array_equal(a.sdc_rate, b.sdc_rate) and np.array_equal(a.max_dev, b.max_dev)


def test_ber_sweep_curve_bands_and_files(small, tmp_path: Path) -> None:
    g, x, y = small
    bers = [0.0, 1e-3, 1e-2, 5e-2]
    sw = run_ber_sweep(g, x, y, bers, n_trials=16, seed=0, progress=False)
    assert sw.accuracy.shape == (4, 16) and sw.n_flips.shape == (4, 16)
    assert np.all(sw.accuracy[0] == sw.baseline_accuracy) and np.all(sw.n_flips[0] == 0)
    assert np.all(np.diff(sw.n_flips, axis=0) >= 0)  # nested draws
    m = sw.mean_accuracy
    assert m[-1] < m[0] - 0.1 and m[2] <= m[0]
    lo, hi = sw.band(0.95)
    assert np.all(lo <= m) and np.all(m <= hi) and np.all(hi - lo >= 0)
    assert hi[-1] - lo[-1] > 0  # trials at a high BER disagree
    # the sweep's trials are ber_trials with the same seed
    t = ber_trials(g, 1e-2, 16, seed=0)
    assert [len(mf) for mf in t] == sw.n_flips[2].tolist()
    path = sw.save(tmp_path / "ber")
    back = BerSweepResult.load(path)
    for name in ("bers", "accuracy", "sdc_rate", "n_flips", "max_dev"):
        assert np.array_equal(getattr(back, name), getattr(sw, name))
    assert back.seed == 0 and back.params == ("weight", "bias") and back.n_bits == sw.n_bits
    bad = tmp_path / "bad.npz"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptFileError):
        BerSweepResult.load(bad)
    with pytest.raises(ConfigError, match="ber must be in"):
        run_ber_sweep(g, x, y, [0.5, 2.0], 2, 0, progress=False)
    with pytest.raises(ConfigError, match="n_trials"):
        ber_trials(g, 0.1, 0, seed=0)
    with pytest.raises(ConfigError, match="stored bits"):
        ber_trials(g, 0.1, 2, seed=0, params=("act",))


# --------------------------------------------------------------------------- campaign files


def test_campaign_save_load_replay_round_trip(small, tmp_path: Path) -> None:
    g, x, y = small
    sites = enumerate_sites(g, params=("weight", "act"))[::7]
    sites += enumerate_sites(g, params=("bias",), kind="stuck0", nbits=2)[::5]
    c = Campaign(tuple(sites), seed=42, meta={"sampler": "every 7th", "margin": 0.01})
    path = c.save(tmp_path / "c" / "campaign.json")
    back = Campaign.load(path)
    assert back == c and back.sites == tuple(sites) and back.seed == 42
    assert back.fault_ids()[0] == sites[0].fault_id
    res = back.run(g, x, y, progress=False)
    assert res.sites() == sites and res.meta["campaign_seed"] == 42
    _assert_same(res, run_campaign_naive(g, x, y, c, progress=False))
    # results round-trip too, with the new parameters and widths
    rp = res.save(tmp_path / "res.npz")
    again = CampaignResult.load(rp)
    _assert_same(res, again)
    assert again.sites() == sites and again.meta["sdc"] == "top1"
    assert [FaultSite.from_id(f) for f in res.fault_ids()] == sites


def test_take_rows_equals_a_campaign_on_those_sites(small) -> None:
    """A sample taken from an exhaustive result equals running the sample alone."""
    g, x, y = small
    sites = enumerate_sites(g)
    full = run_campaign(g, x, y, sites, progress=False)
    rows = np.random.default_rng(3).choice(len(sites), 200, replace=False)
    rows.sort()
    part = full.take(rows)
    assert part.sites() == [sites[i] for i in rows] and part.seconds == 0.0
    _assert_same(part, run_campaign(g, x, y, [sites[i] for i in rows], progress=False))


def test_corrupt_campaign_files_are_refused(small, tmp_path: Path) -> None:
    g = small[0]
    c = Campaign(tuple(enumerate_sites(g)[:50]), seed=1)
    path = c.save(tmp_path / "c.json")
    doc = json.loads(path.read_text())
    cases = {
        "truncated": path.read_text()[: len(path.read_text()) // 2],
        "garbage": "\x00\x01 not json",
        "foreign": json.dumps({"hello": 1}),
        "tampered": json.dumps(
            {**doc, "sites": [[*doc["sites"][0][:3], 4, "flip", 1], *doc["sites"][1:]]}
        ),
        "short": json.dumps({**doc, "sites": doc["sites"][:-1]}),
        "version": json.dumps({**doc, "version": 99}),
        "bad_site": json.dumps(
            {
                **doc,
                "sites": [["L", "gamma", 0, 0, "flip", 1]],
                "n_sites": 1,
                "sites_sha256": Campaign._digest([["L", "gamma", 0, 0, "flip", 1]]),
            }
        ),
    }
    for name, text in cases.items():
        p = tmp_path / f"{name}.json"
        p.write_text(text)
        with pytest.raises(CorruptFileError):
            Campaign.load(p)
    with pytest.raises(CorruptFileError, match="does not exist"):
        Campaign.load(tmp_path / "missing.json")


def test_result_files_of_format_1_still_load(small, tmp_path: Path) -> None:
    """Files written before act/acc sites existed (no nbits array) are read as nbits=1."""
    g, x, y = small
    res = run_campaign(g, x, y, enumerate_param_sites(g)[:40], progress=False)
    path = res.save(tmp_path / "new.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "nbits"}
    meta = json.loads(str(arrays["meta"][()]))
    meta.update(version=1, params=["weight", "bias"])
    arrays["meta"] = np.array(json.dumps(meta))
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)
    back = CampaignResult.load(old)
    _assert_same(res, back)


# --------------------------------------------------------------------------- bad input


def test_fault_site_fields_are_checked_by_name() -> None:
    s = FaultSite("fc1", "weight", 123, 5)
    assert s.fault_id == "fc1/weight/123/5/flip/1" and FaultSite.from_id(s.fault_id) == s
    assert FaultSite.from_id("a/b/c/acc/1/2/stuck1/3") == FaultSite(
        "a/b/c", "acc", 1, 2, "stuck1", 3
    )
    assert FaultSite("x", "act", np.int64(3), np.int16(2)) == FaultSite("x", "act", 3, 2)
    assert hash(FaultSite("x", "act", np.int64(3), 2)) == hash(FaultSite("x", "act", 3, 2))
    cases = [
        (("x", "gamma", 0, 0), r"param must be one of \('weight', 'bias', 'act', 'acc', 'table'\)"),
        (("x", "weight", 0, 0, "stuck"), r"kind must be one of \('flip', 'stuck0', 'stuck1'\)"),
        (("x", "weight", -1, 0), "index must be >= 0"),
        (("x", "weight", 0, -2), "bit must be >= 0"),
        (("x", "weight", 0, 0, "flip", 0), "nbits must be >= 1"),
        (("x", "weight", 1.5, 0), "index must be an integer"),
        (("", "weight", 0, 0), "layer must be a non-empty"),
    ]
    for args, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            FaultSite(*args)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="layer/param/index/bit/kind/nbits"):
        FaultSite.from_id("fc1/weight/3")
    with pytest.raises(ConfigError, match="unknown keys"):
        FaultSite.from_dict({"layer": "x", "param": "act", "index": 0, "bit": 0, "color": 1})


def test_sites_that_do_not_fit_the_design_are_refused(small) -> None:
    g, x, y = small
    dense, act = g.param_ops[0].name, activation_layers(g)[0]
    cases = [
        (FaultSite(act, "weight", 0, 0), "holds no weights"),
        (FaultSite(dense, "act", 0, 0), "'act' fault site needs a non-Dense op"),
        (FaultSite(act, "acc", 0, 0), "'acc' fault site needs a Dense/Conv layer"),
        (FaultSite("nope", "act", 0, 0), r"allowed: \["),
        (FaultSite(dense, "weight", 8 * 12, 0), r"96 words.*allowed.*0\.\.95"),
        (FaultSite(dense, "weight", 0, 5, nbits=2), r"bit \+ nbits <= 6"),
        (FaultSite(dense, "bias", 0, 16), r"bit \+ nbits <= 16"),
        (FaultSite(act, "act", 12, 0), r"12 words.*allowed.*0\.\.11"),
    ]
    for site, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            run_campaign(g, x, y, [site], progress=False)
        with pytest.raises(ConfigError, match=msg):
            run_with_faults(g, x, [site])
    with pytest.raises(ConfigError, match="sdc must be one of"):
        run_campaign(g, x, y, [], progress=False, sdc="top5")
    with pytest.raises(ConfigError, match="params must be a non-empty selection"):
        enumerate_sites(g, params=("weights",))
    with pytest.raises(ConfigError, match="unknown layer"):
        enumerate_sites(g, params=("acc",), layers=[act])
    with pytest.raises(ConfigError, match="nbits=7 does not fit"):
        enumerate_sites(g, params=("weight",), nbits=7)
    with pytest.raises(ConfigError, match="weight/bias sites only"):
        from edgeml.fault_injection import run_param_campaign

        run_param_campaign(g, x, y, [FaultSite(act, "act", 0, 0)], progress=False)


def test_enumeration_orders_and_counts(small) -> None:
    g = small[0]
    assert enumerate_sites(g) == enumerate_param_sites(g)
    every = enumerate_sites(g, params=("weight", "bias", "act", "acc"))
    assert len(set(every)) == len(every)
    order = {g.input_name: -1} | {op.name: k for k, op in enumerate(g.ops)}
    pos = [order[s.layer] for s in every]
    assert pos == sorted(pos)  # graph order
    n_act = sum(np.prod(g.tensors[op.output].shape) * 6 for op in g.ops if op.kind == "requant")
    assert sum(s.param == "act" for s in every) == n_act
    mbu = enumerate_sites(g, params=("weight",), nbits=3)
    assert len(mbu) == sum(op.weight.size for op in g.param_ops) * 4  # bits 0..3 of 6


# --------------------------------------------------------------------------- injector and kernels


def test_multi_bit_injection_hits_exactly_the_adjacent_bits() -> None:
    codes = np.arange(-32, 32, dtype=np.int64)
    mask = (1 << 6) - 1
    for bit in range(5):
        out = fault_values(codes, 6, True, bit, "flip", 2)
        assert np.all(((out ^ codes) & mask) == (3 << bit))
        s1 = fault_values(codes, 6, True, bit, "stuck1", 2)
        assert np.all((s1 >> bit) & 3 == 3)
        s0 = fault_values(codes, 6, True, bit, "stuck0", 2)
        assert np.all((s0 >> bit) & 3 == 0)
    assert int(fault_values(np.array(0), 6, True, 4, "flip", 2)) == -32 + 16
    with pytest.raises(ConfigError, match="does not fit a 6-bit word"):
        fault_values(codes, 6, True, 5, "flip", 2)


@pytest.mark.parametrize("mode", sorted(_FLOAT_ROUND))
def test_float_kernels_equal_the_integer_ops(mode: str) -> None:
    """The engine's float twin of ReLU + requantiser equals golden's integer ops, every
    rounding mode, negative and positive values, ties included."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.arange(-4096, 4097), rng.integers(-(2**20), 2**20, 5000)])
    x = x.reshape(-1, 1).astype(np.int64) + np.zeros((1, 3), np.int64)
    for ops in (
        [Requant("q", ["a"], "b", shift=3, rounding=mode, lo=-40, hi=40)],
        [
            Relu("r", ["a"], "a2"),
            Requant(
                "q",
                ["a2"],
                "b",
                mult=np.array([1, 3, 5]),
                offset=np.array([0, -7, 9]),
                shift=4,
                rounding=mode,
                lo=0,
                hi=63,
            ),
        ],
    ):
        k = _Elem(ops, (3,))
        want = k.ints(x)
        assert np.array_equal(k.floats(x.astype(np.float64)), want)
        small_x = np.clip(x, -(2**16), 2**16)
        assert np.array_equal(k.floats(small_x.astype(np.float32)), k.ints(small_x))


def test_slack_from_thresholds_equals_per_element_bisection(small, jet, cnn) -> None:
    """The two ways the engine finds how far an accumulator may move without changing
    its requantised code agree exactly, for small and large change bounds."""
    from edgeml.fault_injection.engine import FaultEngine

    checked = 0
    for g, x, y in (small, jet, cnn):
        eng = FaultEngine(g, x[:300], None if y is None else y[:300])
        for op in g.ops:
            chain = eng._chain(op.output)
            if not chain or chain[0].kind != "elem":
                continue
            for need in (3, 1 << 10, 1 << 21):
                fast = eng._slack_by_thresholds(chain[0], 1 << max(4, need.bit_length()))
                eng._slack.clear()
                keep = eng._slack_by_thresholds
                eng._slack_by_thresholds = lambda st, cap: None  # type: ignore[method-assign]
                slow = eng._slack_for(chain[0], need)
                eng._slack_by_thresholds = keep  # type: ignore[method-assign]
                eng._slack.clear()
                assert fast is not None and fast.cap == slow.cap
                assert np.array_equal(fast.lo, slow.lo) and np.array_equal(fast.hi, slow.hi)
                assert np.all(slow.lo <= 0) and np.all(slow.hi >= 0)
                checked += 1
    assert checked >= 9


@pytest.mark.parametrize("builder", ["bn_float_scales", "bipolar_trunc"])
def test_other_qonnx_graphs_equal_naive(builder: str, tmp_path: Path) -> None:
    """Per-channel float weight scales with BatchNorm and a float Mul (fixed-point affine
    ops), and bipolar weights with a residual add, a transpose and a Trunc."""
    from edgeml.export import clean_qonnx

    raw = qb.save(getattr(qb, builder)(np.random.default_rng(3)), tmp_path / "m.onnx")
    g = GoldenModel.from_onnx(clean_qonnx(raw, tmp_path / "m.clean.onnx"))
    rng = np.random.default_rng(1)
    q = g.input_quant
    x = rng.integers(q.lo, q.hi + 1, (120, *g.input_shape))
    every = ("weight", "bias", "act", "acc")
    sites = enumerate_sites(g, params=every) + enumerate_sites(
        g, params=every, kind="stuck1", nbits=2
    )
    for sdc in ("top1", "any"):
        res = _campaign_pair((g, x, None), sites, sdc=sdc)
        assert res.sdc_rate.max() > 0
