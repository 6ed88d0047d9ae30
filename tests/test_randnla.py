"""The RandNLA study: sketches with known answers, the weight-SVD table, the finding, the design."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg as sla
import torch

from edgeml.cli import EXIT_OK, main
from edgeml.errors import ConfigError
from edgeml.models import jets, randnla, zoo

warnings.filterwarnings("ignore", module="brevitas")


def ls_problem(n: int = 4000, d: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d)) * np.logspace(0, 2, d)  # columns of very different scale
    b = a @ rng.standard_normal(d) + rng.standard_normal(n)
    return a, b


def test_fwht_is_the_hadamard_matrix() -> None:
    x = np.random.default_rng(0).standard_normal((64, 3))
    np.testing.assert_allclose(randnla.fwht(x), sla.hadamard(64) @ x, atol=1e-10)
    np.testing.assert_allclose(randnla.fwht(randnla.fwht(x)) / 64, x, atol=1e-12)
    with pytest.raises(ConfigError, match="power-of-two"):
        randnla.fwht(np.ones(12))


@pytest.mark.parametrize("kind", randnla.SKETCHES)
def test_sketches_preserve_norms_in_expectation(kind: str) -> None:
    x = np.random.default_rng(12345).standard_normal((1000, 1))  # not a sketch seed
    norms = [float(np.sum(randnla.sketch(x, kind, 100, seed=s) ** 2)) for s in range(60)]
    assert np.mean(norms) == pytest.approx(float(np.sum(x**2)), rel=0.06)
    np.testing.assert_array_equal(randnla.sketch(x, kind, 50, 3), randnla.sketch(x, kind, 50, 3))
    assert randnla.sketch(x, kind, 50, 3).shape == (50, 1)


def test_sketch_validates() -> None:
    with pytest.raises(ConfigError, match="gaussian, srht, countsketch"):
        randnla.sketch(np.ones((10, 2)), "fjlt", 5)
    with pytest.raises(ConfigError, match="m must be an integer >= 1"):
        randnla.sketch(np.ones((10, 2)), "srht", 0)
    with pytest.raises(ConfigError, match="exceeds the padded length"):
        randnla.sketch(np.ones((10, 2)), "srht", 17)


@pytest.mark.parametrize("kind", randnla.SKETCHES)
def test_sketch_and_solve_within_one_plus_eps(kind: str) -> None:
    a, b = ls_problem()
    d = a.shape[1]
    best = randnla.ridge_objective(a, b, randnla.solve_exact(a, b))
    np.testing.assert_allclose(randnla.solve_exact(a, b), np.linalg.lstsq(a, b, rcond=None)[0])
    ratios = {
        m: [
            randnla.ridge_objective(a, b, randnla.sketch_and_solve(a, b, kind, m, s)) / best
            for s in range(10)
        ]
        for m in (2 * d, 20 * d)
    }
    # m = d / eps with eps = 0.05: within 1 + eps on average, 1 + 2 eps in every trial (the
    # guarantee holds up to a constant in m: the ratio is about sqrt(1 + d / m))
    assert np.mean(ratios[20 * d]) <= 1.05 and max(ratios[20 * d]) <= 1.1
    assert min(min(r) for r in ratios.values()) >= 1.0 - 1e-12  # never beats the optimum
    assert np.mean(ratios[2 * d]) > np.mean(ratios[20 * d])
    if kind == "gaussian":  # E||r||^2 / ||r*||^2 = 1 + d / (m - d - 1) exactly for Gaussian S
        for m, r in ratios.items():
            assert np.mean(np.square(r)) == pytest.approx(1 + d / (m - d - 1), rel=0.2)


@pytest.mark.parametrize("kind", randnla.SKETCHES)
def test_sketch_and_precondition_reaches_the_optimum(kind: str) -> None:
    a, b = ls_problem(seed=2)
    x_star = randnla.solve_exact(a, b)
    x, iters = randnla.sketch_precondition(a, b, kind, 4 * a.shape[1], seed=0)
    # the columns span 2 orders of magnitude (cond ~ 1e2) yet LSQR on A R^-1 needs few steps
    assert iters <= 40
    assert randnla.ridge_objective(a, b, x) / randnla.ridge_objective(a, b, x_star) == (
        pytest.approx(1.0, abs=1e-10)
    )
    np.testing.assert_allclose(x, x_star, rtol=1e-6, atol=1e-9)


def test_ridge_sketch_matches_exact_ridge_at_full_sketch() -> None:
    a, b = ls_problem(500, 10, seed=4)
    lam = 5.0
    x = randnla.solve_exact(a, b, lam)
    # normal equations of ridge
    np.testing.assert_allclose((a.T @ a + lam * np.eye(10)) @ x, a.T @ b, rtol=1e-8)
    feats = randnla.random_features(np.ones((7, 16)), 32, seed=1)
    assert feats.shape == (7, 33) and np.all(feats[:, -1] == 1) and np.all(feats >= 0)
    np.testing.assert_array_equal(feats, randnla.random_features(np.ones((7, 16)), 32, seed=1))


def test_svd_table_on_weights_and_spectrum_estimates() -> None:
    torch.manual_seed(0)
    f = jets.build_float()
    res = randnla.svd_table(f, ranks=(2, 4), power_iters=(0, 2), trials=2)
    for layer in ("fc1", "fc2", "fc3", "fc4"):
        w = getattr(f, layer).weight.detach().double().numpy()
        s = np.linalg.svd(w, compute_uv=False)
        assert res[f"svd/{layer}/sigma1"] == pytest.approx(s[0])
        assert res[f"svd/{layer}/sigma1_est"] == pytest.approx(s[0], rel=1e-3)  # Lanczos
        assert res[f"svd/{layer}/frob2_est"] == pytest.approx(np.sum(s**2), rel=0.15)  # Hutch++
        assert res[f"svd/{layer}/stable_rank"] == pytest.approx(np.sum(s**2) / s[0] ** 2)
        for k in (2, 4):
            q0, q2 = res[f"svd/{layer}/r{k}/q0/ratio"], res[f"svd/{layer}/r{k}/q2/ratio"]
            assert q2 >= 1 - 1e-9 and q2 <= q0 + 1e-9
            assert res[f"svd/{layer}/r{k}/q0/sigma_k1"] == pytest.approx(s[k])


@pytest.fixture(scope="module")
def quick() -> dict[str, float]:
    return randnla.finding(seed=0, quick=True)


def test_finding_quick(quick: dict[str, float]) -> None:
    res = quick
    assert res["float/accuracy"] > 0.5  # 5 jet classes: chance is 0.2
    # (a) power iterations bring the rSVD to the Eckart-Young optimum on the trained weights
    for layer in ("fc1", "fc2", "fc3"):
        q0, q2 = res[f"svd/{layer}/r4/q0/ratio"], res[f"svd/{layer}/r4/q2/ratio"]
        assert 1 - 1e-9 <= q2 <= q0 and q2 < 1.15
        assert res[f"svd/{layer}/r4/q2/range"] <= res[f"svd/{layer}/r4/q2/bound"]
    # (b) the sketched head approaches the exact residual as m grows; Gaussian as predicted
    for kind in randnla.SKETCHES:
        assert 1.0 <= res[f"ls/{kind}/m8d/ratio"] < res[f"ls/{kind}/m2d/ratio"]
        assert res[f"ls/{kind}/m8d/ratio"] < 1.15
        assert res[f"ls/precond/{kind}/ratio"] == pytest.approx(1.0, abs=1e-6)
    assert res["ls/gaussian/m8d/ratio"] == pytest.approx(res["ls/gaussian/m8d/expected"], rel=0.05)
    assert res["ls/exact/accuracy"] > 0.5
    # (c) at the same ~540 nonzero weights, rank 4 + 50 % pruning beats 87.5 % pruning alone
    lr, pr = "curve/lr4/s0.5", "curve/p/s0.875"
    assert abs(res[f"{lr}/nonzero"] - res[f"{pr}/nonzero"]) < 0.15 * res[f"{pr}/nonzero"]
    assert res[f"{lr}/accuracy"] > res[f"{pr}/accuracy"] + 0.02
    assert res[f"{lr}/weights"] == 4 * (80 + 96 + 64 + 37) and res[f"{pr}/weights"] == 4256
    assert res[f"{lr}/luts"] > 1000 and res[f"{pr}/luts"] > 1000
    assert "rank 4 + prune 50.0%" in randnla._table(res)


def test_design_registered_with_low_rank_default(tmp_path: Path, capsys) -> None:
    spec = zoo.get("randnla")
    assert spec.low_rank == randnla.LOW_RANK == 8 and spec.sparsity == 0.5
    assert zoo.get("jet").low_rank is None
    cfg = tmp_path / "tiny.json"
    cfg.write_text(
        json.dumps({"train": {"epochs_float": 1, "epochs_qat": 1, "epochs_finetune": 1}})
    )
    out = tmp_path / "run"
    common = ["--design", "randnla", "--out", str(out), "--config", str(cfg), "-q"]
    assert main(["train", *common]) == EXIT_OK, capsys.readouterr().err
    assert main(["compress", *common]) == EXIT_OK, capsys.readouterr().err
    info = json.loads((out / "compress.json").read_text())
    assert info["low_rank"]["setting"] == 8
    assert info["low_rank"]["ranks"] == {"fc1": 8, "fc2": 8, "fc3": 8}
    assert info["low_rank"]["weights_after"] == 2080
    model, meta, _ = zoo.load_checkpoint(out / "model.pt")
    assert meta["low_rank"] == {"fc1": 8, "fc2": 8, "fc3": 8}
    nz = randnla.nonzero_weights(model)
    assert math.isclose(nz, 1040, rel_tol=0.05)  # 2,080 factor weights at 50 % sparsity
    # --low-rank 0 turns the design's default off
    assert main(["compress", *common, "--low-rank", "0"]) == EXIT_OK, capsys.readouterr().err
    assert "low_rank" not in json.loads((out / "compress.json").read_text())
