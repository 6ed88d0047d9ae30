"""Tests for the SharpBalance study (models/sharpbalance.py): SAM, the subset rule, data,
the quick finding, and the ensemble edge form (golden == Brevitas)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeml.errors import ConfigError
from edgeml.export import export_qonnx
from edgeml.golden import GoldenModel
from edgeml.models import jets, training, zoo
from edgeml.models import sharpbalance as sb

# ------------------------------------------------------------------------ SAM


def test_sam_gradient_on_quadratics_matches_the_analytic_one() -> None:
    # two members, each L_m(w) = 1/2 w^T A_m w: g = A w, e = rho g / ||g||, SAM grad = A (w + e)
    rng = np.random.default_rng(0)
    a = []
    for _ in range(2):
        q = rng.standard_normal((5, 5))
        a.append(q @ q.T + np.eye(5))
    a_t = torch.tensor(np.stack(a))
    w0 = torch.tensor(rng.standard_normal((2, 5)))
    w = w0.clone().requires_grad_(True)
    rho = 0.3

    def loss() -> torch.Tensor:
        return 0.5 * torch.einsum("mi,mij,mj->", w, a_t, w)

    (grad,), l0 = sb.sam_gradients([w], loss, rho)
    for m in range(2):
        g = a[m] @ w0[m].numpy()
        e = rho * g / np.linalg.norm(g)  # per member: each member's own ascent
        np.testing.assert_allclose(grad[m].numpy(), a[m] @ (w0[m].numpy() + e), rtol=1e-10)
    assert l0 == pytest.approx(0.5 * sum(w0[m] @ a_t[m] @ w0[m] for m in range(2)).item())
    torch.testing.assert_close(w.detach(), w0)  # parameters restored
    # rho = 0 is plain gradient descent's gradient
    (g0,), _ = sb.sam_gradients([w], loss, 0.0)
    torch.testing.assert_close(g0, torch.einsum("mij,mj->mi", a_t, w0))


def test_sam_ascent_spans_all_parameter_tensors_of_a_member() -> None:
    # L = 1/2 (|x|^2 + |y|^2) over two tensors: e = rho (x, y) / ||(x, y)||, grad = (x, y) (1 + rho/r)
    x0, y0 = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 4.0, 0.0]])
    x, y = x0.clone().requires_grad_(True), y0.clone().requires_grad_(True)
    (gx, gy), _ = sb.sam_gradients([x, y], lambda: 0.5 * (x.pow(2).sum() + y.pow(2).sum()), 1.0)
    torch.testing.assert_close(gx, x0 * 1.2)
    torch.testing.assert_close(gy, y0 * 1.2)


def test_per_sample_fisher_equals_autograd() -> None:
    torch.manual_seed(0)
    model = sb.BatchedMLP(2, 6, 5, 3)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 6)).astype(np.float32)
    y = rng.integers(0, 3, 7)
    got = sb.per_sample_fisher(model, x, y)
    for m in range(2):
        for n in range(7):
            out = model(torch.from_numpy(x[n : n + 1])[None].expand(2, 1, 6))[m]
            loss = nn.functional.cross_entropy(out, torch.tensor([y[n]]))
            grads = torch.autograd.grad(loss, list(model.parameters()))
            ref = sum(float(g[m].pow(2).sum()) for g in grads)
            assert got[m, n] == pytest.approx(ref, rel=1e-4)


# ------------------------------------------------------------------- the rule


def test_sharpbalance_subsets_on_a_constructed_case() -> None:
    # 3 members, 10 samples, fraction 0.2: S_j = the 2 samples member j ranks flattest
    s = np.full((3, 10), 5.0)
    s[0, [0, 1]] = 0.0  # S_0 = {0, 1}
    s[1, [2, 3]] = 0.0  # S_1 = {2, 3}
    s[2, [1, 4]] = 0.0  # S_2 = {1, 4}
    got = sb.sharpbalance_subsets(s, 0.2, "flattest")
    # samples 5..9 are in no S_j: dealt round-robin, member i gets them [i::3]
    want = [{2, 3, 1, 4, 5, 8}, {0, 1, 4, 6, 9}, {0, 1, 2, 3, 7}]
    assert [set(np.flatnonzero(r)) for r in got] == want
    # "sharpest" ranks the other end: S_j are then the 2 highest scores
    s2 = -s
    assert [set(np.flatnonzero(r)) for r in sb.sharpbalance_subsets(s2, 0.2, "sharpest")] == want
    # fraction 0: nothing is in any S_j, so the members split the data disjointly
    z = sb.sharpbalance_subsets(s, 0.0)
    assert z.sum(0).tolist() == [1] * 10 and z.sum(1).tolist() == [4, 3, 3]
    # fraction 1: every S_j is everything: SAM everywhere (plain SAM)
    assert sb.sharpbalance_subsets(s, 1.0).all()
    with pytest.raises(ConfigError, match="fraction"):
        sb.sharpbalance_subsets(s, 1.5)
    with pytest.raises(ConfigError, match="select"):
        sb.sharpbalance_subsets(s, 0.5, "middle")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="members >= 2"):
        sb.sharpbalance_subsets(s[:1], 0.5)


# ------------------------------------------------------------------------ data


def test_corruptions_and_ood_sets() -> None:
    d = sb.dataset("jets", 0)
    x = d.x_test[:2000]
    noisy = sb.corrupt("jets", d, x, "noise", 0.5, seed=1)
    assert noisy.shape == x.shape and noisy.dtype == np.float32
    assert np.std(noisy - x) == pytest.approx(0.5, rel=0.05)
    drop = sb.corrupt("jets", d, x, "dropout", 0.25, seed=1)
    changed = drop != x
    assert np.all(drop[changed] == 0) and np.mean(drop == 0) == pytest.approx(0.25, abs=0.02)
    sc = sb.corrupt("jets", d, x, "scale", 0.2)
    feats = list(d.info["features"])
    k = feats.index("j_mass_mmdt")
    std = d.info["standardize"]
    raw = x[:, k] * std["std"][k] + std["mean"][k]
    raw2 = sc[:, k].astype(np.float64) * std["std"][k] + std["mean"][k]
    inside = (sc[:, k] > jets.INPUT_LO) & (sc[:, k] < jets.INPUT_HI)
    np.testing.assert_allclose(raw2[inside], 1.2 * raw[inside], rtol=1e-4, atol=1e-3)
    untouched = [i for i, f in enumerate(feats) if f not in sb.SCALED_FEATURES]
    np.testing.assert_array_equal(sc[:, untouched], x[:, untouched])
    # digits: blur keeps the mass of an interior blob, shift moves it, values stay in [0, 1]
    dd = sb.dataset("digits", 0)
    img = np.zeros((1, 1, 8, 8), np.float32)
    img[0, 0, 3:5, 3:5] = 1.0
    bl = sb.corrupt("digits", dd, img, "blur", 0.8)
    assert bl.sum() == pytest.approx(4.0, rel=0.02) and bl.max() < 1.0
    sh = sb.corrupt("digits", dd, img, "shift", 2.0)
    assert sh[0, 0, 4:6, 5:7].sum() == 4.0 and sh.sum() == 4.0
    ood = sb.ood_sets("digits", dd, 0)
    assert len(ood) == 12 and all(v.shape == dd.x_test.shape for v in ood.values())
    assert all(v.min() >= 0 and v.max() <= 1 for v in ood.values())
    assert not np.array_equal(ood["noise/0.1"], dd.x_test)
    np.testing.assert_array_equal(sb.ood_sets("digits", dd, 0)["dropout/0.25"], ood["dropout/0.25"])
    with pytest.raises(ConfigError, match="corruption kind for jets"):
        sb.corrupt("jets", d, x, "blur", 1.0)
    with pytest.raises(ConfigError, match="dataset must be one of"):
        sb.dataset("cifar")


# ----------------------------------------------------------------- the finding


@pytest.fixture(scope="module")
def quick() -> dict[str, float]:
    return sb.finding(seed=0, quick=True)


def test_finding_quick_sam_is_flatter_and_less_diverse(quick: dict[str, float]) -> None:
    r = {k.removeprefix("jets/"): v for k, v in quick.items()}
    # all three ensembles learn the 5 jet classes (chance 20 %)
    for m in sb.METHODS:
        assert r[f"{m}/ens_acc"] > 0.57 and r[f"{m}/member_acc"] > 0.56, (m, r)
        assert r[f"{m}/ens_ood"] < r[f"{m}/ens_acc"]  # the corruptions hurt
    # SAM: a much flatter minimum (top Hessian eigenvalue) and less diverse features
    assert r["sam/sharpness"] < 0.6 * r["erm/sharpness"], r
    assert r["sam/cka_div"] < 0.85 * r["erm/cka_div"], r
    # SharpBalance: flatter than ERM; SAM applied on part of the data only, different per member
    assert r["sharpbalance/sharpness"] < 0.8 * r["erm/sharpness"], r
    assert 0.3 < r["sharpbalance/sam_fraction"] < 0.95 and r["sharpbalance/sam_overlap"] < 0.9
    assert r["sam/sam_fraction"] == 1.0 and r["erm/sam_fraction"] == 0.0
    assert not any(k.startswith(("robust/", "digits/")) for k in quick)


# ------------------------------------------------------------------ edge form


@pytest.fixture(scope="module")
def trained() -> dict:
    spec = zoo.get("sharpbalance")
    full = spec.load_data(0)
    data = training.Dataset(
        full.x_train[:8000], full.y_train[:8000], full.x_test, full.y_test, full.info
    )
    f = zoo.train_float(spec, data, 8, seed=0)
    q = zoo.train_qat(spec, data, f, bit_width=6, epochs=2, seed=0)
    return {"spec": spec, "data": data, "float": f, "qat": q}


def test_registered_design_trains_through_the_zoo(trained: dict) -> None:
    spec, d, f, q = trained["spec"], trained["data"], trained["float"], trained["qat"]
    assert spec.name == "sharpbalance" and spec.fit_float is sb.fit_float
    assert spec.input_shape == (jets.N_FEATURES,)
    assert isinstance(f, sb.EnsembleMLP) and len(f.members) == sb.N_MEMBERS
    assert sb.n_weights(q) == 3 * (16 * 16 + 16 * 5) == sb.n_weights(sb.build_single())
    assert set(spec.prunable(q)) == {f"members.{i}.fc{k}" for i in range(3) for k in (1, 2)}
    # the ensemble's output is the sum of its members' logits
    x = torch.from_numpy(d.x_test[:50])
    with torch.no_grad():
        torch.testing.assert_close(f(x), sum(m(x) for m in f.members))
    fm = zoo.evaluate(spec, f, d.x_test, d.y_test)["accuracy"]
    qm = zoo.evaluate(spec, q, d.x_test, d.y_test)["accuracy"]
    assert fm > 0.55 and qm > 0.55, (fm, qm)  # 5 classes: chance is 20 %
    with pytest.raises(ConfigError, match="bit_width"):
        sb.build_qat(9)
    with pytest.raises(ConfigError, match="epochs"):
        sb.fit_float(d, 0)


def test_golden_equals_brevitas_on_the_ensemble_edge_form(trained: dict, tmp_path) -> None:
    q = trained["qat"]
    path = export_qonnx(q, (1, jets.N_FEATURES), tmp_path / "sb.onnx")
    # three branches joined by two Adds of tensors that share the output quantizer
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count("Add") >= 2
    g = GoldenModel.from_onnx(path)
    scale = float(np.asarray(g.output_scale).reshape(-1)[0])
    rng = np.random.default_rng(3)
    lim = 2 ** (jets.INPUT_BITS - 1)
    x_rand = rng.integers(-lim, lim, size=(5_000, *g.input_shape)).astype(np.int64)
    x_data = g.quantize_input(trained["data"].x_test[:5_000])
    for xc in (x_rand, x_data):
        ref = g.predict(xc).reshape(len(xc), -1)
        y = training.predict(q, xc.astype(np.float64) * g.input_real_scale) / scale
        assert np.count_nonzero(np.rint(y) != y) == 0
        got = np.rint(y).astype(np.int64).reshape(ref.shape)
        assert np.count_nonzero(got != ref) == 0
        assert np.abs(ref).max() > 0 and len(np.unique(ref.argmax(1))) > 1
    # the output is the sum of three values of one quantizer: the sum of member codes
    xs = torch.from_numpy((x_data[:200] * g.input_real_scale).astype(np.float32))
    with torch.no_grad():
        parts = [p / scale for p in q.member_logits(xs)]
    np.testing.assert_array_equal(
        np.rint(sum(parts).numpy()).astype(np.int64), g.predict(x_data[:200]).reshape(200, -1)
    )
    lo, hi = -(2 ** (sb.OUT_BITS - 1)), 2 ** (sb.OUT_BITS - 1) - 1
    for p in parts:
        assert p.min() >= lo and p.max() <= hi
