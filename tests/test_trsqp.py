"""Tests for the stochastic TR-SQP study (models/trsqp.py): the method's parts on cases with
known answers, Hock-Schittkowski optima under gradient noise, the saddle escape, the
constrained classifier against the penalty method, and the edge form's exactness."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from edgeml.errors import ConfigError
from edgeml.export import export_qonnx
from edgeml.golden import GoldenModel
from edgeml.models import training, trsqp, zoo

EXACT = trsqp.TRSQPConfig(hessian="exact")

# ------------------------------------------------------------- the method's parts


def test_projected_cg_solves_the_equality_qp() -> None:
    rng = np.random.default_rng(0)
    n, m = 6, 2
    a = rng.standard_normal((n, n))
    H = a @ a.T + n * np.eye(n)
    r = rng.standard_normal(n)
    J = rng.standard_normal((m, n))
    geo = trsqp.Geometry(J)
    u = trsqp.projected_cg(r, H, geo, radius=1e6, iters=50, rtol=1e-12)
    # KKT system of min r.u + u.H.u/2 s.t. J u = 0
    kkt = np.block([[H, J.T], [J, np.zeros((m, m))]])
    exact = np.linalg.solve(kkt, np.concatenate([-r, np.zeros(m)]))[:n]
    np.testing.assert_allclose(u, exact, atol=1e-8)
    assert np.abs(J @ u).max() < 1e-10
    # a small radius stops on the boundary, still in the null space, with model decrease
    small = trsqp.projected_cg(r, H, geo, radius=0.01, iters=50)
    assert np.linalg.norm(small) == pytest.approx(0.01, rel=1e-9)
    assert np.abs(J @ small).max() < 1e-12
    assert r @ small + 0.5 * small @ H @ small < 0


def test_reduced_curvature_at_the_sphere_saddle() -> None:
    # x'Ax on the sphere at e2 with lambda = -a2: Hessian of L = 2(A - a2 I) = diag(-3, 0, 3);
    # the tangent space is span(e1, e3), so the reduced Hessian is diag(-3, 3).
    oracle = trsqp.NoisyProblem(trsqp.PROBLEMS["sphere_saddle"], 0.0)
    x = np.array([0.0, 1.0, 0.0])
    _, g, _, J = oracle.exact(x)
    geo = trsqp.Geometry(J)
    lam = -(geo.gram_pinv @ (J @ g))
    assert lam == pytest.approx([-0.5])
    np.testing.assert_allclose(geo.project(g), 0.0, atol=1e-15)  # a KKT point
    H = oracle.hessian(x, lam, 1, 0)
    np.testing.assert_allclose(H, np.diag([-3.0, 0.0, 3.0]), atol=1e-12)
    tau, z = trsqp.reduced_curvature(H, geo)
    assert tau == pytest.approx(-3.0)
    assert abs(z[0]) == pytest.approx(1.0) and abs(J @ z).max() < 1e-12


def test_second_order_correction_removes_constraint_curvature() -> None:
    oracle = trsqp.NoisyProblem(trsqp.PROBLEMS["sphere_saddle"], 0.0)
    for x, step in (([0.6, 0.8, 0.0], [0.0, 0.0, 0.3]), ([0.0, 0.6, 0.8], [0.2, 0.1, 0.0])):
        x = np.array(x)
        _, _, c, J = oracle.exact(x)
        assert abs(c[0]) < 1e-15
        geo = trsqp.Geometry(J)
        d = geo.project(np.array(step))  # a tangent step: J d = 0 but c(x + d) = ||d||^2
        c_d = oracle.trial(x + d, 1, 0)[1]
        assert c_d[0] == pytest.approx(d @ d)
        soc = trsqp.second_order_correction(geo, c_d)
        c_soc = oracle.trial(x + d + soc, 1, 0)[1]
        assert abs(c_soc[0]) < 0.05 * abs(c_d[0])  # O(||d||^4) left


def test_problem_definitions_have_their_known_optima() -> None:
    for name, prob in trsqp.PROBLEMS.items():
        oracle = trsqp.NoisyProblem(prob, 0.0)
        for sol in prob.solutions:
            f, _, c, _ = oracle.exact(np.array(sol))
            assert f == pytest.approx(prob.f_star, abs=1e-12), name
            assert np.abs(c).max() < 1e-12, name
            grad_l, _ = oracle.kkt(np.array(sol))
            assert grad_l < 1e-12, name
        assert prob.distance(np.array(prob.solutions[0])) == 0.0
    hs9 = trsqp.PROBLEMS["hs9"]
    assert hs9.distance(np.array([9.0, 12.0])) == pytest.approx(0.0)  # next period


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="radius"):
        trsqp.TRSQPConfig(radius=0.0)
    with pytest.raises(ConfigError, match="hessian"):
        trsqp.TRSQPConfig(hessian="newton")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch_min"):
        trsqp.TRSQPConfig(batch_min=10, batch_max=5)
    with pytest.raises(ConfigError, match="eta"):
        trsqp.TRSQPConfig(eta=0.9)
    with pytest.raises(ConfigError, match="allowed: hs6"):
        trsqp.minimize("hs99")
    with pytest.raises(ConfigError, match="sigma"):
        trsqp.NoisyProblem(trsqp.PROBLEMS["hs6"], -1.0)


# ------------------------------------------------------------ HS problems, noisy

CASES = ("hs6", "hs7", "hs9", "hs27", "hs28", "hs39", "hs40", "hs42", "rosen_circle")


@pytest.mark.parametrize("name", CASES)
def test_reaches_known_optimum_with_noisy_gradients(name: str) -> None:
    det = trsqp.minimize(name, 0.0, 100, replace(EXACT, batch_min=1))
    assert det.distance < 1e-5 and det.c_norm < 1e-8, (det.distance, det.c_norm)
    sto = trsqp.minimize(name, 0.1, 100, replace(EXACT, seed=3))
    # HS9's objective along its constraint line has curvature 0.05 only: the same gradient
    # error (~0.1 sqrt(2 / 4096)) moves x* ten times further than in the other problems
    assert sto.distance < (0.15 if name == "hs9" else 0.05), sto.distance
    assert sto.c_norm < 1e-3 and sto.kkt < 0.02, (sto.c_norm, sto.kkt)
    assert sto.f == pytest.approx(trsqp.PROBLEMS[name].f_star, abs=5e-3)


def test_adaptive_sampling_grows_the_batch_near_the_solution() -> None:
    cfg = replace(EXACT, batch_max=2048)
    res = trsqp.minimize("hs42", 0.1, 60, cfg)
    batches = [h["batch"] for h in res.history]
    assert batches[0] == cfg.batch_min and max(batches[:5]) < 200  # far from x*: cheap
    assert np.median(batches[-20:]) == cfg.batch_max  # near x*: the noise must stay below KKT
    assert res.distance < 0.01
    # noise-free: the variance estimate is 0 and the batch stays at its minimum
    det = trsqp.minimize("hs42", 0.0, 30, cfg)
    assert {h["batch"] for h in det.history} == {cfg.batch_min}
    # and the noisy run is deterministic given its seed
    again = trsqp.minimize("hs42", 0.1, 60, cfg)
    np.testing.assert_array_equal(res.x, again.x)


def test_eigen_step_escapes_the_saddle_and_needs_the_correction() -> None:
    cfg = replace(EXACT, batch_min=1)
    on = trsqp.minimize("sphere_saddle", 0.0, 30, cfg)
    assert on.history[0]["kind"].startswith("eigen") and on.history[0]["accepted"]
    assert on.history[0]["tau"] == pytest.approx(-3.0)
    assert on.distance < 1e-8 and on.f == pytest.approx(-1.0)
    # without the eigen step the projected gradient is 0 at the saddle: no move at all
    off = trsqp.minimize("sphere_saddle", 0.0, 30, replace(cfg, eigen=False))
    assert off.counts["accepted"] == 0 and off.f == pytest.approx(0.5)
    # without the second-order correction every eigen step is rejected (Maratos effect:
    # the merit's constraint term cancels the curvature gain), and the saddle holds
    no_soc = trsqp.minimize("sphere_saddle", 0.0, 30, replace(cfg, soc=False))
    assert no_soc.counts["eigen"] == 30 and no_soc.counts["accepted"] == 0
    assert on.counts["soc_accepted"] >= 1


# ------------------------------------------------------------- torch optimizer


def test_optimizer_on_a_known_constrained_least_squares() -> None:
    # min E||a.w - b||^2 / 2 over a finite sum s.t. sum(w) = 1: closed form from the KKT system
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.standard_normal((512, 5)))
    b = a @ torch.tensor([0.5, -0.2, 0.3, 0.1, 0.4], dtype=torch.float64) + 0.1 * torch.from_numpy(
        rng.standard_normal(512)
    )
    w = torch.zeros(5, dtype=torch.float64, requires_grad=True)

    def closure(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randperm(len(a), generator=gen)[:n]
        return 0.5 * (a[idx] @ w - b[idx]) ** 2, (w.sum() - 1).reshape(1)

    opt = trsqp.StochasticTRSQP([w], trsqp.TRSQPConfig(batch_min=32, batch_max=512))
    infos = [opt.step(closure) for _ in range(60)]
    A, bb = a.numpy(), b.numpy()
    kkt = np.block([[A.T @ A / len(A), np.ones((5, 1))], [np.ones((1, 5)), np.zeros((1, 1))]])
    exact = np.linalg.solve(kkt, np.concatenate([A.T @ bb / len(A), [1.0]]))[:5]
    assert abs(float(w.sum()) - 1) < 1e-8
    np.testing.assert_allclose(w.detach().numpy(), exact, atol=2e-3)
    assert infos[-1]["batch"] == 512 and infos[0]["batch"] == 32


# ------------------------------------------------------------------ the classifier


def test_data_split_standardised_and_grouped() -> None:
    d = trsqp.load_data(0)
    assert d.x_train.shape == (398, 30) and d.x_test.shape == (171, 30)
    assert d.x_train.dtype == np.float32
    np.testing.assert_allclose(d.x_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(0), 1.0, atol=1e-4)
    assert d.y_train.mean() == pytest.approx(d.y_test.mean(), abs=0.01)  # stratified
    g = trsqp.groups(d.x_train)
    assert 0.3 < g.mean() < 0.6
    # the groups have different benign rates: parity binds
    assert d.y_train[~g].mean() - d.y_train[g].mean() > 0.15
    np.testing.assert_array_equal(trsqp.load_data(0).x_train, d.x_train)
    assert not np.array_equal(trsqp.load_data(1).x_train, d.x_train)


@pytest.fixture(scope="module")
def result() -> dict[str, float]:
    return trsqp.finding(seed=0, quick=True)


def test_finding_quick(result: dict[str, float]) -> None:
    for name in ("hs6", "hs28", "hs42"):
        assert result[f"{name}/det/dist"] < 1e-6
        # quadratic-penalty SGD (best of three step sizes) with at least as many samples
        assert result[f"{name}/penalty/samples"] >= result[f"{name}/trsqp/samples"]
        assert result[f"{name}/trsqp/c"] < 0.1 * result[f"{name}/penalty/c"], name
        assert result[f"{name}/trsqp/dist"] < 0.1 * result[f"{name}/penalty/dist"], name
    assert result["saddle/eigen/dist"] < 1e-8 and result["saddle/noeigen/dist"] > 0.9
    tr, pen = "clf/trsqp/", "clf/penalty10/"
    # TR-SQP satisfies the constraints on the training set to 1e-4 ...
    assert result[tr + "c_norm"] < 1e-4 and result[tr + "gap"] < 1e-4
    # ... where the penalty method at similar accuracy stays 100x further off
    assert result[tr + "accuracy"] > 0.88
    assert result[tr + "accuracy"] > result[pen + "accuracy"] - 0.03
    assert result[pen + "c_norm"] > 100 * result[tr + "c_norm"]
    assert result["clf/unconstrained/gap"] > 0.15  # the constraint is not slack
    assert result["seconds"] < 120


@pytest.fixture(scope="module")
def trained() -> dict:
    spec = zoo.get("trsqp")
    data = spec.load_data(0)
    float_model = zoo.train_float(spec, data, 80, seed=0)
    qat = zoo.train_qat(spec, data, float_model, 8, 3, seed=0)
    return {"spec": spec, "data": data, "float": float_model, "qat": qat}


def test_design_registered_and_trained_by_trsqp(trained: dict) -> None:
    spec, d, fm = trained["spec"], trained["data"], trained["float"]
    assert spec.name == "trsqp" and spec.fit_float is trsqp.fit_float
    assert spec.input_shape == (30,) and spec.primary == "accuracy"
    assert trsqp.n_parameters(fm) == 30 * 16 + 16 + 16 * 2 + 2
    v = trsqp.violation(fm, d.x_train)
    assert v["c_norm"] < 1e-3 and v["norm1"] == pytest.approx(trsqp.NORMS[0], abs=1e-3)
    m = zoo.evaluate(spec, fm, d.x_test, d.y_test)
    assert m["accuracy"] > 0.85
    q = zoo.evaluate(spec, trained["qat"], d.x_test, d.y_test)
    assert q["accuracy"] > 0.85
    with pytest.raises(ConfigError, match="bit_width"):
        trsqp.build_qat(9)


def test_golden_equals_brevitas_edge_form(trained: dict, tmp_path) -> None:
    q = trained["qat"]
    path = export_qonnx(q, (1, *trsqp.INPUT_SHAPE), tmp_path / "trsqp.onnx")
    g = GoldenModel.from_onnx(path)
    assert g.input_type.hls() == "ap_fixed<12,5>"
    scale = float(np.asarray(g.output_scale).reshape(-1)[0])
    rng = np.random.default_rng(4)
    lim = 2 ** (trsqp.INPUT_BITS - 1)
    x_rand = rng.integers(-lim, lim, size=(5_000, *g.input_shape)).astype(np.int64)
    x_data = g.quantize_input(np.concatenate([trained["data"].x_train, trained["data"].x_test]))
    assert len(x_data) == 569
    for xc in (x_rand, x_data):
        ref = g.predict(xc)
        y = training.predict(q, xc.astype(np.float64) * g.input_real_scale) / scale
        assert np.count_nonzero(np.rint(y) != y) == 0
        got = np.rint(y).astype(np.int64).reshape(ref.shape)
        assert np.count_nonzero(got != ref) == 0
        assert np.abs(ref).max() > 0 and len(np.unique(ref.argmax(1))) == 2
    # the study metrics from golden outputs equal the Brevitas model's
    d, spec = trained["data"], trained["spec"]
    out = g.predict(g.quantize_input(d.x_test)) * scale
    assert spec.metrics(out, d.x_test, d.y_test) == pytest.approx(
        zoo.evaluate(spec, q, d.x_test, d.y_test), abs=1e-9
    )


def test_cli_help(capsys) -> None:
    with pytest.raises(SystemExit):
        trsqp.main(["--help"])
    assert "--quick" in capsys.readouterr().out
    assert math.isfinite(trsqp.NORMS[0])
