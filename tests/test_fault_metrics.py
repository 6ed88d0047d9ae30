"""Hessian machinery (float mirror, HVP, eigenpairs, trace), rankings, campaign metrics,
protection costs, BER curves, the HTML section, and ``analyse_campaign`` on a trained MLP."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_samplers import exhaustive_campaign, trained_digits_mlp

from edgeml.errors import ConfigError
from edgeml.fault_injection.hessian import (
    FloatMirror,
    LossHessian,
    fkeras_scores,
    oracle_ranking,
    random_ranking,
    rank_sites,
    site_deltas,
)
from edgeml.fault_injection.inject import fault_values
from edgeml.fault_injection.metrics import (
    analyse_campaign,
    ber_curve,
    curve_auc,
    layer_bit_matrix,
    per_bit,
    per_layer,
    protection_cost,
    protection_curve,
    sdc_removed,
    secded_check_bits,
    site_words,
    spearman,
    vulnerability_factor,
)
from edgeml.fault_injection.report_section import fault_section_html
from edgeml.fault_injection.sites import FaultSite, enumerate_param_sites
from edgeml.fixed import FixedType
from edgeml.golden import (
    Affine,
    Conv,
    Dense,
    GoldenModel,
    MaxPool,
    Relu,
    Requant,
    Reshape,
    TensorInfo,
    Transpose,
)
from edgeml.models.analysis.curvature import hutchinson_trace, lanczos, power_iteration


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: intra-op threads on a busy 2-core box only cost time."""
    import torch
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- tiny designs


def _tiny_mlp(seed: int = 0) -> tuple[GoldenModel, np.ndarray, np.ndarray]:
    """8-6-3 with biases, a per-channel weight left shift and a rounding requant."""
    rng = np.random.default_rng(seed)
    w6, b12 = FixedType(True, 6, 0), FixedType(True, 12, 0)
    ops = [
        Dense(
            "d1",
            ["x"],
            "h",
            weight=rng.integers(-32, 32, (8, 6)),
            weight_type=w6,
            weight_lshift=np.array([0, 1, 0, 2, 0, 1]),
            bias=rng.integers(-300, 300, 6),
            bias_type=b12,
            bias_shift=1,
        ),
        Relu("r", ["h"], "hr"),
        Requant("q", ["hr"], "a", shift=5, lo=0, hi=63),
        Dense(
            "d2",
            ["a"],
            "out",
            weight=rng.integers(-32, 32, (6, 3)),
            weight_type=w6,
            bias=rng.integers(-200, 200, 3),
            bias_type=b12,
            acc_shift=1,
        ),
    ]
    sc = {"x": 2.0**-4, "h": 2.0**-8, "hr": 2.0**-8, "a": 2.0**-3, "out": 2.0**-7}
    shapes = {"x": (8,), "out": (3,)}
    tensors = {
        n: TensorInfo(n, shapes.get(n, (6,)), FixedType(True, 24, 0), np.asarray(s))
        for n, s in sc.items()
    }
    tensors["x"] = TensorInfo("x", (8,), FixedType(False, 6, 4), np.asarray(sc["x"]))
    g = GoldenModel(ops, tensors, "x", "out", (8,), Requant("in", ["x"], "x", lo=0, hi=63), 2.0**-4)
    x = rng.integers(0, 64, (40, 8))
    y = rng.integers(0, 3, 40)
    return g, x, y


def _tiny_cnn(seed: int = 1) -> tuple[GoldenModel, np.ndarray]:
    """NCHW input -> transpose -> padded strided conv (per-channel shift) -> affine -> relu ->
    requant (half-up) -> padded maxpool -> dense: every op the mirror knows except Bipolar."""
    rng = np.random.default_rng(seed)
    ops = [
        Transpose("t", ["x"], "xt", perm=(0, 2, 3, 1)),
        Conv(
            "c1",
            ["xt"],
            "c",
            weight=rng.integers(-16, 16, (3, 3, 2, 4)),
            weight_type=FixedType(True, 5, 0),
            weight_lshift=np.array([0, 1, 2, 0]),
            bias=rng.integers(-500, 500, 4),
            bias_type=FixedType(True, 12, 0),
            strides=(1, 2),
            pads=(1, 0, 1, 1),
        ),
        Affine("aff", ["c"], "ca", mult=rng.integers(1, 4, 4), offset=rng.integers(-50, 50, 4)),
        Relu("r", ["ca"], "cr"),
        Requant("q", ["cr"], "a", shift=4, rounding="HALF_UP", lo=0, hi=31),
        MaxPool("mp", ["a"], "p", kernel=(2, 2), strides=(2, 2), pads=(0, 0, 1, 1)),
        Reshape("flat", ["p"], "f", shape=(4 * 2 * 4,)),
        Dense(
            "fc",
            ["f"],
            "out",
            weight=rng.integers(-32, 32, (32, 5)),
            weight_type=FixedType(True, 6, 0),
        ),
    ]
    shapes = {
        "x": (2, 7, 7),
        "xt": (7, 7, 2),
        "c": (7, 4, 4),
        "ca": (7, 4, 4),
        "cr": (7, 4, 4),
        "a": (7, 4, 4),
        "p": (4, 2, 4),
        "f": (32,),
        "out": (5,),
    }
    tensors = {
        n: TensorInfo(n, s, FixedType(True, 30, 0), np.asarray(1.0)) for n, s in shapes.items()
    }
    g = GoldenModel(
        ops, tensors, "x", "out", (2, 7, 7), Requant("in", ["x"], "x", lo=0, hi=63), 1.0
    )
    return g, rng.integers(0, 64, (16, 2, 7, 7))


# --------------------------------------------------------------------------- float mirror


def test_float_mirror_reproduces_golden_codes_exactly() -> None:
    g, x, _ = _tiny_mlp()
    assert np.array_equal(FloatMirror(g).forward(x).numpy(), g.run(x))
    g2, x2 = _tiny_cnn()
    out = FloatMirror(g2).forward(x2).numpy()
    assert np.array_equal(out, g2.run(x2))
    g3, x3, _ = trained_digits_mlp()
    assert np.array_equal(FloatMirror(g3).forward(x3).numpy(), g3.run(x3))


def test_float_mirror_parameters_are_real_values() -> None:
    g, _, _ = _tiny_mlp()
    m = FloatMirror(g)
    w = m.segment("d1", "weight")
    # weight LSB = 2**(lshift_j + acc_shift) * s_out / s_in: d1 has s_out/s_in = 2**-4
    lsb = (2.0 ** np.array([0, 1, 0, 2, 0, 1]) * 2.0**-4)[None, :].repeat(8, 0).reshape(-1)
    assert np.array_equal(w.lsb, lsb)
    assert np.array_equal(m.theta0.numpy()[w.offset : w.stop], g.ops[0].weight.reshape(-1) * lsb)
    b2 = m.segment("d2", "bias")
    assert np.all(b2.lsb == 2.0**-7)  # bias LSB = 2**bias_shift * s_out
    assert m.dim == 8 * 6 + 6 + 6 * 3 + 3
    # changing theta by one LSB changes the golden-equivalent code path by exactly one code
    th = m.theta0.clone()
    th[b2.offset] += b2.lsb[0]
    assert np.array_equal(
        m.forward(_tiny_mlp()[1], th).numpy()[:, 0] - m.forward(_tiny_mlp()[1]).numpy()[:, 0],
        np.ones(40),
    )
    with pytest.raises(ConfigError, match="no bias parameters"):
        FloatMirror(_tiny_cnn()[0]).segment("fc", "bias")


# --------------------------------------------------------------------------- Hessian


@pytest.fixture(scope="module")
def tiny_hessian():
    import torch

    # seed 5: well-separated top eigenvalues (20.7, 4.7, 3.1, 2.5), so power iteration is quick
    g, x, y = _tiny_mlp(5)
    lh = LossHessian(FloatMirror(g), x, y, batch_size=16)  # 3 batches: accumulation tested
    theta = lh.mirror.theta0.clone()

    def loss(th: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(lh.mirror.logits(x, th), torch.as_tensor(y))

    h = torch.autograd.functional.hessian(loss, theta)
    return lh, h.numpy()


def test_hvp_matches_the_explicit_hessian(tiny_hessian) -> None:
    import torch

    lh, h = tiny_hessian
    assert np.allclose(h, h.T, atol=1e-10)
    assert np.abs(h).max() > 1e-3  # a real, non-trivial curvature
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = rng.normal(size=lh.dim)
        hv = lh.hvp(torch.tensor(v)).numpy()
        assert np.allclose(hv, h @ v, rtol=1e-9, atol=1e-12)
    assert np.allclose(lh.dense().numpy(), h, rtol=1e-9, atol=1e-12)
    with pytest.raises(ConfigError, match="shape"):
        lh.hvp(torch.zeros(3))


def test_eigenpairs_match_eigh(tiny_hessian) -> None:
    lh, h = tiny_hessian
    w, v = np.linalg.eigh(h)
    top = np.argsort(-np.abs(w))[:3]
    for method, kw in (("lanczos", {}), ("power", {"max_iter": 3000, "tol": 1e-13})):
        vals, vecs = lh.eigenpairs(3, method=method, seed=1, **kw)
        assert np.allclose(vals, w[top], rtol=1e-6), (method, vals, w[top])
        for i in range(3):
            assert abs(vecs[i] @ v[:, top[i]]) > 0.999, method
    with pytest.raises(ConfigError, match="method"):
        lh.eigenpairs(2, method="arnoldi")


def test_power_iteration_and_lanczos_on_a_known_spectrum() -> None:
    """A matrix with negative eigenvalues among the largest |lambda| (curvature is indefinite)."""
    import torch

    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    lam = np.concatenate([[9.0, -7.0, 5.0, -3.0], rng.uniform(-1, 1, 26)])
    a = torch.tensor((q * lam) @ q.T)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return a @ v

    for fn in (power_iteration, lanczos):
        vals, vecs = fn(hvp, 30, 4, seed=0)
        assert np.allclose(vals, lam[:4], rtol=1e-6), (fn.__name__, vals)
        for i in range(4):
            assert abs(vecs[i] @ q[:, i]) > 0.9999
    tr, se = hutchinson_trace(hvp, 30, 2000, seed=0)
    assert abs(tr - lam.sum()) < 4 * se


def test_hutchinson_trace_estimates_the_exact_trace(tiny_hessian) -> None:
    lh, h = tiny_hessian
    exact = float(np.trace(h))
    n = 300
    est, se = lh.trace(n, seed=0)
    # Rademacher probes: Var(z^T H z) = 2 * sum_{i != j} H_ij^2
    off = h - np.diag(np.diag(h))
    se_true = math.sqrt(2 * float((off**2).sum()) / n)
    assert 0.7 * se_true < se < 1.3 * se_true
    assert abs(est - exact) <= 4 * se_true
    with pytest.raises(ConfigError, match="n_probes"):
        lh.trace(1)


# --------------------------------------------------------------------------- rankings


def test_fkeras_score_is_the_eigen_projection() -> None:
    rng = np.random.default_rng(0)
    theta = rng.normal(size=7)
    vecs = rng.normal(size=(2, 7))
    vals = np.array([3.0, -2.0])
    want = np.zeros(7)
    for k in range(2):
        want += np.abs(vals[k] * (vecs[k] @ theta) * vecs[k])
    assert np.allclose(fkeras_scores(theta, vals, vecs), want)
    with pytest.raises(ConfigError, match="do not match"):
        fkeras_scores(theta, vals, vecs[:, :3])


def test_site_deltas_match_the_injector() -> None:
    g, _, _ = _tiny_mlp()
    m = FloatMirror(g)
    for kind in ("flip", "stuck0", "stuck1"):
        sites = enumerate_param_sites(g, kind=kind)
        d = site_deltas(m, sites)
        ops = {op.name: op for op in g.param_ops}
        for s, dv in zip(sites[::7], d[::7], strict=True):
            op = ops[s.layer]
            codes, ft = (
                (op.weight, op.weight_type) if s.param == "weight" else (op.bias, op.bias_type)
            )
            c = int(codes.reshape(-1)[s.index])
            f = int(fault_values(np.array(c), ft.width, ft.signed, s.bit, kind))
            lsb = m.lsb[m.param_index([s])[0]]
            assert dv == (f - c) * lsb, (s, dv, f, c)


def test_rank_rules() -> None:
    g, _, _ = _tiny_mlp()
    m = FloatMirror(g)
    sites = [
        FaultSite("d1", "weight", 0, 5),  # 6-bit weight MSB
        FaultSite("d1", "weight", 0, 0),
        FaultSite("d1", "weight", 1, 5),
        FaultSite("d1", "bias", 0, 11),  # 12-bit bias MSB
        FaultSite("d1", "bias", 0, 3),
    ]
    score = np.zeros(m.dim)
    score[m.param_index(sites)] = [2.0, 2.0, 1.0, 0.5, 0.5]
    bm = rank_sites(m, sites, score, rule="bit_major")
    assert bm.order.tolist() == [0, 2, 3, 1, 4]  # MSB tier by score, then the lower tiers
    pm = rank_sites(m, sites, score, rule="param_major")
    assert pm.order.tolist() == [0, 1, 2, 3, 4]
    de = rank_sites(m, sites, score, rule="delta")
    mag = np.abs(site_deltas(m, sites))
    assert np.array_equal(de.score, score[m.param_index(sites)] * mag)
    assert de.score[0] == de.score[2]  # d1 column 1 has a left shift: twice the LSB, half the score
    assert de.order.tolist() == [3, 2, 0, 1, 4]  # ties: the larger real change first
    assert bm.ordered(sites)[0] == sites[0]
    with pytest.raises(ConfigError, match="rule"):
        rank_sites(m, sites, score, rule="lsb_first")
    with pytest.raises(ConfigError, match="weight/bias sites only"):
        rank_sites(m, [FaultSite("r", "act", 0, 1)], score)
    r = random_ranking(sites, seed=1)
    assert sorted(r.order.tolist()) == list(range(5))
    o = oracle_ranking(sites, np.array([0.1, 0.0, 0.3, 0.3, 0.05]))
    assert o.order.tolist() == [2, 3, 0, 4, 1]


# --------------------------------------------------------------------------- metrics


def test_protection_curve_auc_and_share() -> None:
    sdc = np.array([0.5, 0.0, 0.3, 0.2])
    f, r = protection_curve([0, 2, 3, 1], sdc)
    assert np.allclose(f, [0, 0.25, 0.5, 0.75, 1.0])
    assert np.allclose(r, [1.0, 0.5, 0.2, 0.0, 0.0])
    assert curve_auc(f, r) == pytest.approx(0.25 * (1.5 + 0.7 + 0.2 + 0.0) / 2)
    assert sdc_removed([0, 2, 3, 1], sdc, 0.25) == pytest.approx(0.5)
    assert sdc_removed([1, 3, 2, 0], sdc, 0.5) == pytest.approx(0.2)
    _, rp = protection_curve([0, 2, 3, 1], sdc, n_points=5)
    assert np.allclose(rp, r)
    with pytest.raises(ConfigError, match="permutation"):
        protection_curve([0, 0, 1, 2], sdc)


def test_secded_check_bits_and_protection_cost() -> None:
    # extended Hamming: (13,8), (22,16), (39,32), (72,64); 6-bit words need 5
    assert [secded_check_bits(k) for k in (1, 4, 6, 8, 16, 32, 64)] == [3, 4, 5, 5, 6, 7, 8]
    # two 2-bit words (ids 0, 1) and one 6-bit word (id 2, two sites listed)
    word = np.array([0, 0, 1, 1, 2, 2])
    width = np.array([2, 2, 2, 2, 6, 6])
    sdc = np.array([0.4, 0.1, 0.0, 0.0, 0.3, 0.2])
    order = np.array([0, 4, 5, 1, 2, 3])
    tmr = protection_cost(word, width, order, sdc, 2 / 6, "tmr")
    assert (tmr["chosen_bits"], tmr["extra_bits"], tmr["voters"]) == (2, 4, 2)
    assert tmr["residual_sdc"] == pytest.approx(0.3)
    assert tmr["total_bits"] == 10
    ecc = protection_cost(word, width, order, sdc, 2 / 6, "secded")
    # words 0 and 2 touched: 4 + 5 check bits; every listed bit of both words masked
    assert (ecc["ecc_words"], ecc["extra_bits"], ecc["protected_bits"]) == (2, 9, 4)
    assert ecc["residual_sdc"] == pytest.approx(0.0)
    assert ecc["extra_flip_flops"] == ecc["extra_bits"]
    with pytest.raises(ConfigError, match="scheme"):
        protection_cost(word, width, order, sdc, 0.5, "parity")


def test_aggregates_and_vulnerability_factor() -> None:
    sites = [
        FaultSite("a", "weight", 0, 0),
        FaultSite("a", "weight", 0, 1),
        FaultSite("a", "bias", 0, 3),
        FaultSite("b", "weight", 0, 1),
    ]
    sdc = np.array([0.0, 0.2, 0.6, 0.4])
    vf = vulnerability_factor(sdc)
    assert vf == {"bits": 4, "avf": pytest.approx(0.3), "critical_fraction": 0.75}
    pl = per_layer(sites, sdc)
    assert list(pl) == ["a/weight", "a/bias", "b/weight"]
    assert pl["a/weight"]["avf"] == pytest.approx(0.1)
    assert pl["a/bias"]["sdc_share"] == pytest.approx(0.5)
    pb = per_bit(sites, sdc)
    assert pb["weight"][1] == {"count": 2, "mean_sdc": pytest.approx(0.3), "critical_fraction": 1.0}
    hm = layer_bit_matrix(sites, sdc)
    assert hm["rows"] == ["a/weight", "a/bias", "b/weight"] and hm["bits"] == [0, 1, 2, 3]
    assert hm["mean"][0][:2] == [0.0, pytest.approx(0.2)] and hm["mean"][0][2] is None
    assert hm["count"][1] == [0, 0, 0, 1]
    assert spearman([4, 3, 2, 1], [0.4, 0.3, 0.2, 0.1]) == pytest.approx(1.0)
    assert math.isnan(spearman([1, 1, 1], [0.1, 0.2, 0.3]))


def test_ber_curve_bands() -> None:
    from scipy.stats import t

    acc = {1e-3: [0.8, 0.7, 0.75, 0.65], 0.0: [0.95, 0.95], 1e-4: [0.9]}
    c = ber_curve(acc, 0.9)
    assert c["ber"] == [0.0, 1e-4, 1e-3]
    a = np.array(acc[1e-3])
    half = t.ppf(0.95, 3) * a.std(ddof=1) / 2
    assert c["mean"][2] == pytest.approx(0.725)
    assert (c["lo"][2], c["hi"][2]) == (pytest.approx(0.725 - half), pytest.approx(0.725 + half))
    assert c["p05"][2] == pytest.approx(np.percentile(a, 5))
    assert math.isnan(c["lo"][1])  # one trial: no band
    assert c["lo"][0] == c["hi"][0] == pytest.approx(0.95)

    class Sweep:  # duck-types edgeml.fault_injection.ber.BerSweepResult
        bers = np.array([1e-4, 1e-3])
        accuracy = np.array([[0.9, 0.92], [0.7, 0.8]])

    s = ber_curve(Sweep())
    assert s["n"] == [2, 2] and s["mean"] == [pytest.approx(0.91), pytest.approx(0.75)]
    with pytest.raises(ConfigError, match="finite"):
        ber_curve({1e-3: [0.5, float("nan")]})


# --------------------------------------------------------------------------- analysis


@pytest.fixture(scope="module")
def analysis() -> dict:
    g, x, y = trained_digits_mlp()
    return analyse_campaign(g, x, y, exhaustive_campaign(), seed=0, top_frac=0.05)


def test_analyse_campaign_rankings_beat_random(analysis: dict) -> None:
    rk = analysis["rankings"]
    assert set(rk) == {"hessian", "gradient", "taylor", "random", "oracle"}
    h, rnd, orc = rk["hessian"], rk["random"], rk["oracle"]
    assert h["spearman"] >= 0.5 and abs(rnd["spearman"]) < 0.05
    assert h["top_share"] >= 0.4 and h["top_share"] >= 4 * rnd["top_share"]
    assert 0.45 <= rnd["auc"] <= 0.55
    # the oracle is the lower bound of every protection curve's area and the upper bound
    # of the SDC any 5 % of bits can remove
    for name, r in rk.items():
        assert orc["auc"] <= r["auc"] + 1e-12, name
        assert r["top_share"] <= orc["top_share"] + 1e-12, name
        assert r["tmr"]["chosen_bits"] == math.ceil(0.05 * analysis["n_sites"])
        assert r["secded"]["residual_sdc"] <= r["tmr"]["residual_sdc"] + 1e-12
    assert h["tmr"]["sdc_removed"] == pytest.approx(h["top_share"])


def test_analyse_campaign_contents_are_json_ready(analysis: dict) -> None:
    res = exhaustive_campaign()
    text = json.dumps(analysis)
    assert json.loads(text)["n_sites"] == len(res)
    assert analysis["avf"]["avf"] == pytest.approx(float(res.sdc_rate.mean()))
    assert analysis["avf"]["critical_fraction"] == pytest.approx(float((res.sdc_rate > 0).mean()))
    assert analysis["heatmap"]["rows"] == ["fc1/weight", "fc1/bias", "fc2/weight", "fc2/bias"]
    assert len(analysis["curves"]["hessian"]["fraction"]) == 201
    top = analysis["top"]
    assert len(top) == 20
    assert [t["sdc_rate"] for t in top] == sorted((t["sdc_rate"] for t in top), reverse=True)
    assert top[0]["sdc_rate"] == pytest.approx(float(res.sdc_rate.max()))
    assert top[0]["rank"]["oracle"] == 0
    h = analysis["hessian"]
    assert len(h["eigenvalues"]) == 8 and h["parameters"] == 64 * 24 + 24 + 24 * 10 + 10
    assert abs(h["eigenvalues"][0]) >= abs(h["eigenvalues"][-1])


def test_site_words_group_bits_of_one_code() -> None:
    g, _, _ = _tiny_mlp()
    sites = enumerate_param_sites(g)
    wid, ww = site_words(g, sites)
    assert np.unique(wid).size == 8 * 6 + 6 + 6 * 3 + 3
    assert set(ww.tolist()) == {6, 12}


# --------------------------------------------------------------------------- HTML


def test_fault_section_html(analysis: dict) -> None:
    ber = ber_curve({1e-4: [0.9, 0.91, 0.89], 1e-3: [0.7, 0.75, 0.8]})
    est = {
        "n": 100,
        "population": 1000,
        "confidence": 0.95,
        "design": "stratified",
        "critical": {"value": 0.3, "lo": 0.2, "hi": 0.4},
        "mean_sdc": {"value": 0.01, "lo": 0.005, "hi": 0.02},
        "per_layer": {"<script>": {"n": 5, "population": 50, "critical": None, "mean_sdc": None}},
    }
    binfi = {"sites": 100, "injections": 40, "injection_fraction": 0.4, "speedup": 2.5,
             "recall": 0.99, "precision": 1.0, "missed": 1, "missed_sdc_share": 0.001}  # fmt: skip
    html = fault_section_html(analysis, ber=ber, estimate=est, binfi=binfi, top_n=5)
    assert html.count("<img") == 3 and html.count("data:image/png;base64,") == 3
    assert "Spearman" in html and "Hessian (FKeras)" in html and "SECDED" in html
    assert "Top 5 most sensitive bits" in html
    assert "BinFI" in html and "99.00 %" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    only = fault_section_html(binfi=binfi)
    assert "<img" not in only
    # library objects are accepted as they are
    from edgeml.fault_injection.samplers import Estimate as Est
    from edgeml.fault_injection.samplers import Interval

    iv = Interval(0.3, 0.2, 0.4, 0.95, "wilson")
    e = Est(n=10, population=100, confidence=0.95, threshold=0.0, critical=iv, mean_sdc=iv)
    assert "30.00 % [20.00 %, 40.00 %]" in fault_section_html(estimate=e)
    with pytest.raises(ConfigError, match="at least one"):
        fault_section_html()


def test_analyse_campaign_without_labels_is_strict_json() -> None:
    """Unlabelled designs: the loss uses the golden top-1 and no NaN leaks into the JSON."""
    from edgeml.fault_injection.campaign import run_param_campaign

    g, x, _ = trained_digits_mlp()
    sites = [s for s in enumerate_param_sites(g) if s.layer == "fc2"]
    res = run_param_campaign(g, x, None, sites=sites, progress=False)
    a = analyse_campaign(g, x, None, res, seed=1, k=2, top_n=3, n_points=11)
    json.dumps(a, allow_nan=False)
    assert a["n_sites"] == len(sites) and a["top"][0]["acc_drop"] is None
    assert a["rankings"]["hessian"]["spearman"] > 0.3
    with pytest.raises(ConfigError, match="top_frac"):
        analyse_campaign(g, x, None, res, top_frac=0.0)
