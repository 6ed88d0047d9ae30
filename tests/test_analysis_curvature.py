"""Loss curvature of torch models (models/analysis/curvature.py): exact HVPs against
autograd's dense Hessian, eigenpairs against eigh, trace estimators (Hutchinson,
Hutch++) and SLQ density against the exact trace, PyHessian side by side, Brevitas
QAT models (built with Brevitas' own API and by the zoo), Fisher and gradient noise
against per-sample gradients taken one by one, the finite-difference fallback."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from edgeml.errors import ConfigError
from edgeml.models.analysis.curvature import (
    ModelHessian,
    hutchinson_trace,
    hutchpp_trace,
    lanczos,
    plot_density,
    plot_eigenvalues,
    power_iteration,
    slq_density,
    summary,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


N_IN, N_HID, N_OUT, N_SAMPLES = 5, 4, 3, 70


def _tanh_mlp(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_IN, N_HID), nn.Tanh(), nn.Linear(N_HID, N_OUT)).to(dtype)


def _data(seed: int = 0, n: int = N_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, N_IN)), rng.integers(0, N_OUT, n)


def _ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


def _reference_loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The MLP's mean cross-entropy written out by hand (torch's Linear layout: W (out, in))."""
    i = 0
    w1 = theta[i : i + N_HID * N_IN].reshape(N_HID, N_IN)
    i += N_HID * N_IN
    b1 = theta[i : i + N_HID]
    i += N_HID
    w2 = theta[i : i + N_OUT * N_HID].reshape(N_OUT, N_HID)
    i += N_OUT * N_HID
    b2 = theta[i : i + N_OUT]
    logits = torch.tanh(x @ w1.T + b1) @ w2.T + b2
    return nn.functional.cross_entropy(logits, y)


@pytest.fixture(scope="module")
def small() -> tuple[ModelHessian, np.ndarray]:
    """ModelHessian of the tanh MLP in uneven batches (70 = 32 + 32 + 6), and autograd's H."""
    model = _tanh_mlp()
    x, y = _data()
    h = ModelHessian(model, x, y, _ce, batch_size=32)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    ref = torch.autograd.functional.hessian(lambda t: _reference_loss(t, xt, yt), h.theta0())
    return h, ref.numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


def test_layout_and_loss_match_the_hand_written_model(small) -> None:
    h, _ = small
    assert h.names == ("0.weight", "0.bias", "2.weight", "2.bias")
    assert h.shapes == ((4, 5), (4,), (3, 4), (3,))
    assert h.dim == 4 * 5 + 4 + 3 * 4 + 3 == 39
    x, y = _data()
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    theta = h.theta0()
    assert h.loss_at() == pytest.approx(float(_reference_loss(theta, xt, yt)), rel=1e-13)
    t = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_reference_loss(t, xt, yt), t)
    assert _rel(h.gradient().numpy(), g.numpy()) < 1e-12
    parts = h.unflatten(theta)
    assert parts["2.weight"].shape == (3, 4)
    assert torch.equal(parts["0.bias"], dict(h.model.named_parameters())["0.bias"].detach())


def test_dense_hessian_matches_autograd(small) -> None:
    h, ref = small
    n0 = h.n_hvp
    dense = h.dense().numpy()
    assert h.n_hvp - n0 == h.dim
    assert h.hvp_method == "double-backward"
    assert _rel(dense, ref) < 1e-6
    assert np.abs(dense - dense.T).max() < 1e-12


def test_top_eigenvalues_match_eigh(small) -> None:
    h, ref = small
    w, vec = np.linalg.eigh(ref)
    order = np.argsort(-np.abs(w))
    top = w[order[:3]]
    vals, vecs = h.eigenpairs(3, method="lanczos", seed=1)
    np.testing.assert_allclose(vals, top, rtol=1e-6)
    for i in range(3):  # eigenvectors up to sign
        assert abs(abs(float(vecs[i] @ vec[:, order[i]])) - 1) < 1e-6
    pvals, _ = h.eigenpairs(2, method="power", seed=1, max_iter=5000, tol=1e-14)
    print("eigh", top[:2], "lanczos", vals[:2], "power", pvals)
    np.testing.assert_allclose(pvals, top[:2], rtol=1e-6)


def _hutchinson_sd(H: np.ndarray) -> float:
    """Exact standard deviation of one Rademacher probe ``z^T H z``."""
    return math.sqrt(2 * (np.sum(H * H) - np.sum(np.diag(H) ** 2)))


def test_traces_and_slq_density_estimate_the_exact_trace(small) -> None:
    h, ref = small
    exact = float(np.trace(ref))
    sd = _hutchinson_sd(ref)
    est, se = h.trace(200, method="hutchinson", seed=0)
    assert abs(est - exact) < 4 * sd / math.sqrt(200)
    assert se == pytest.approx(sd / math.sqrt(200), rel=0.3)  # its own error bar is honest
    pp, pse = h.trace(30, method="hutchpp", seed=0)
    assert pse is not None and abs(pp - exact) < 4 * pse + 1e-9
    # the full budget spans the space: Hutch++ is then exact
    full, none = hutchpp_trace(h.hvp, h.dim, 3 * h.dim, seed=0)
    assert none is None and full == pytest.approx(exact, rel=1e-9)
    d = h.density(n_probes=20, steps=h.dim, seed=0, grid=4000)
    t, dens = d["grid"], d["density"]
    assert np.trapezoid(dens, t) == pytest.approx(1.0, abs=1e-6)
    assert np.trapezoid(t * dens, t) == pytest.approx(d["mean"], rel=1e-6, abs=1e-9)
    assert abs(d["mean"] - exact / h.dim) < 4 * sd / math.sqrt(20) / h.dim
    # with steps = dim every probe's Ritz values are eigenvalues: the extremes are exact
    w = np.linalg.eigvalsh(ref)
    for nodes, weights in zip(d["nodes"], d["weights"], strict=True):
        assert sum(weights) == pytest.approx(1.0, abs=1e-12)
        assert max(nodes) == pytest.approx(w[-1], rel=1e-8)
    print(f"exact {exact:.6f} hutchinson {est:.6f}+-{se:.6f} hutch++ {pp:.6f}+-{pse:.6f}")


def test_against_pyhessian() -> None:
    """Same float32 model and batch: PyHessian's power iteration and Hutchinson beside ours."""
    from pyhessian import hessian as pyh

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(256, 16)).astype(np.float32)
    y = rng.integers(0, 5, 256)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    h = ModelHessian(model, x, y, _ce)
    exact = float(torch.trace(h.dense()))
    top = float(h.eigenpairs(1, seed=0)[0][0])
    ours_tr, ours_se = h.trace(198, method="hutchpp", seed=0)
    torch.manual_seed(0)
    ph = pyh(model, nn.CrossEntropyLoss(), data=(xt, yt), cuda=False)
    ph_top = ph.eigenvalues(maxIter=300, tol=1e-7, top_n=1)[0][0]
    ph_tr = float(np.mean(ph.trace(maxIter=400, tol=1e-12)))
    print(f"\ntop eigenvalue: ours {top:.5f}  pyhessian {ph_top:.5f}")
    print(
        f"trace: exact {exact:.5f}  ours hutch++ {ours_tr:.5f}+-{ours_se:.5f}  pyhessian {ph_tr:.5f}"
    )
    assert top == pytest.approx(ph_top, rel=0.05)
    assert ours_tr == pytest.approx(ph_tr, rel=0.05)
    assert ours_tr == pytest.approx(exact, rel=0.05)


def test_hutchpp_has_lower_variance_on_a_decaying_spectrum() -> None:
    """Hutch++ vs Hutchinson at the same 30-matvec budget over 30 seeds, on a matrix with
    eigenvalues i**-2 (a few dominant directions, like a trained network's Hessian) and on a
    ModelHessian whose spectrum is dominated by its top eigenvalues."""
    rng = np.random.default_rng(0)
    dim = 200
    u, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    lam = 1.0 / np.arange(1, dim + 1) ** 2
    H = torch.as_tensor((u * lam) @ u.T)
    exact = float(lam.sum())

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return H @ v

    hut = np.array([hutchinson_trace(hvp, dim, 30, seed=s)[0] for s in range(30)])
    hpp = np.array([hutchpp_trace(hvp, dim, 30, seed=s)[0] for s in range(30)])
    ratio = hut.var(ddof=1) / hpp.var(ddof=1)
    print(
        f"\nmatrix: exact {exact:.4f}  var hutchinson {hut.var(ddof=1):.3g}  hutch++ "
        f"{hpp.var(ddof=1):.3g}  ratio {ratio:.1f}"
    )
    assert ratio > 10
    assert abs(hpp.mean() - exact) < 4 * hpp.std(ddof=1) / math.sqrt(30)

    model = _tanh_mlp(seed=1)
    x, y = _data(seed=1, n=200)
    h = ModelHessian(model, x * 3, y, _ce)
    hut = np.array([h.trace(30, method="hutchinson", seed=s)[0] for s in range(30)])
    hpp = np.array([h.trace(30, method="hutchpp", seed=s)[0] for s in range(30)])
    ratio = hut.var(ddof=1) / hpp.var(ddof=1)
    print(
        f"model: var hutchinson {hut.var(ddof=1):.3g}  hutch++ {hpp.var(ddof=1):.3g}  "
        f"ratio {ratio:.1f}"
    )
    assert hpp.var(ddof=1) < hut.var(ddof=1)


def test_slq_density_of_a_known_spectrum() -> None:
    lam = np.repeat([1.0, 2.0, 5.0], [50, 30, 20])
    H = torch.as_tensor(np.diag(lam))
    d = slq_density(lambda v: H @ v, 100, n_probes=8, steps=10, seed=0, sigma=0.05, grid=2001)
    t, dens = d["grid"], d["density"]
    assert np.trapezoid(dens, t) == pytest.approx(1.0, abs=1e-6)
    # three separated eigenvalues: Lanczos finds them exactly, the mass splits ~ 0.5/0.3/0.2
    for nodes in d["nodes"]:
        np.testing.assert_allclose(sorted(nodes), [1.0, 2.0, 5.0], atol=1e-10)
    mass = [float(np.trapezoid(np.where(abs(t - c) < 0.5, dens, 0), t)) for c in (1, 2, 5)]
    np.testing.assert_allclose(mass, [0.5, 0.3, 0.2], atol=0.12)
    assert d["mean"] == pytest.approx(lam.mean(), rel=0.1)


def test_linear_algebra_errors() -> None:
    hvp = lambda v: v  # noqa: E731
    with pytest.raises(ConfigError, match="n_matvecs must be an integer >= 3"):
        hutchpp_trace(hvp, 10, 2)
    with pytest.raises(ConfigError, match=r"k \(eigenpairs\) must be an integer in \[1, 10\]"):
        lanczos(hvp, 10, 11)
    with pytest.raises(ConfigError, match="n_probes must be an integer >= 2"):
        hutchinson_trace(hvp, 10, 1)
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        slq_density(hvp, 10, steps=0)
    vals, _ = power_iteration(lambda v: 3 * v, 10, 1)
    assert vals[0] == pytest.approx(3.0)


def test_model_hessian_errors() -> None:
    model = _tanh_mlp()
    x, y = _data()
    with pytest.raises(ConfigError, match=r"unknown parameter name\(s\) \['fc1.weight'\]; allowed"):
        ModelHessian(model, x, y, _ce, params=["fc1.weight"])
    with pytest.raises(ConfigError, match="hvp_mode must be one of"):
        ModelHessian(model, x, y, _ce, hvp_mode="secant")
    with pytest.raises(ConfigError, match="got 70 samples but targets"):
        ModelHessian(model, x, y[:10], _ce)
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
        ModelHessian(model, x, y, _ce, batch_size=0)
    h = ModelHessian(model, x, y, _ce)
    with pytest.raises(ConfigError, match="method must be one of"):
        h.trace(10, method="exact")
    with pytest.raises(ConfigError, match="method must be one of"):
        h.eigenpairs(2, method="arnoldi")
    with pytest.raises(ConfigError, match=r"expected a vector of shape \(39,\)"):
        h.hvp(torch.zeros(5))


def test_parameter_subset_is_the_hessian_block(small) -> None:
    _, ref = small
    x, y = _data()
    h = ModelHessian(_tanh_mlp(), x, y, _ce, params=["2.weight", "2.bias"])
    assert h.dim == 15
    np.testing.assert_allclose(h.dense().numpy(), ref[24:, 24:], rtol=1e-9, atol=1e-12)


def test_model_is_left_untouched() -> None:
    model = nn.Sequential(nn.Linear(N_IN, 6), nn.Dropout(0.5), nn.BatchNorm1d(6), nn.Linear(6, 3))
    model = model.double().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data()
    h = ModelHessian(model, x, y, _ce)
    h1 = h.hvp(torch.ones(h.dim, dtype=torch.float64))
    h2 = h.hvp(torch.ones(h.dim, dtype=torch.float64))
    assert torch.equal(h1, h2)  # eval mode: no dropout noise, no BN statistic updates
    h.fisher_trace()
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_fisher_and_gradient_noise_match_per_sample_gradients() -> None:
    model = _tanh_mlp()
    x, y = _data()
    h = ModelHessian(model, x, y, _ce, batch_size=16)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    theta = h.theta0()
    gs = []
    for i in range(N_SAMPLES):
        t = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(_reference_loss(t, xt[i : i + 1], yt[i : i + 1]), t)
        gs.append(g.numpy())
    G = np.stack(gs)
    assert h.fisher_trace() == pytest.approx(float((G**2).sum(1).mean()), rel=1e-12)
    assert h.per_sample_method == "vmap"
    per = h.fisher_trace_per_param()
    assert per["0.weight"] == pytest.approx(float((G[:, :20] ** 2).sum(1).mean()), rel=1e-12)
    noise = h.gradient_noise(8)
    tr_cov = float(np.trace(np.cov(G.T, ddof=1)))
    g2 = float(G.mean(0) @ G.mean(0))
    assert noise["trace_cov"] == pytest.approx(tr_cov, rel=1e-10)
    assert noise["grad_norm2"] == pytest.approx(g2, rel=1e-10)
    assert noise["noise_scale"] == pytest.approx(tr_cov / g2, rel=1e-10)
    assert noise["batch_noise"] == pytest.approx(tr_cov / 8, rel=1e-10)
    # the mean of the per-sample gradients is the full gradient
    np.testing.assert_allclose(G.mean(0), h.gradient().numpy(), rtol=1e-10, atol=1e-14)
    # a seeded subset
    sub = h.fisher_trace(20, seed=4)
    idx = torch.sort(torch.randperm(N_SAMPLES, generator=torch.Generator().manual_seed(4))[:20])
    assert sub == pytest.approx(float((G[idx.values.numpy()] ** 2).sum(1).mean()), rel=1e-12)


class _OnceSoftplus(torch.autograd.Function):
    """Softplus whose backward cannot be differentiated again (as some custom ops)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return nn.functional.softplus(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x)


class _Act(nn.Module):
    def __init__(self, once: bool) -> None:
        super().__init__()
        self.once = once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _OnceSoftplus.apply(x) if self.once else nn.functional.softplus(x)


def test_finite_difference_fallback_without_double_backward() -> None:
    x, y = _data()

    def net(once: bool) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(N_IN, 6), _Act(once), nn.Linear(6, 3)).double()

    exact = ModelHessian(net(False), x, y, _ce)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        ModelHessian(net(True), x, y, _ce, hvp_mode="exact").hvp(torch.ones(exact.dim))
    fd = ModelHessian(net(True), x, y, _ce)  # auto
    v = torch.randn(exact.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = exact.hvp(v), fd.hvp(v)
    assert exact.hvp_method == "double-backward"
    assert fd.hvp_method == "finite-difference" and "once_differentiable" in fd.fallback_reason
    print(f"\nfinite-difference HVP relative error {_rel(b.numpy(), a.numpy()):.2e}")
    assert _rel(b.numpy(), a.numpy()) < 1e-6


def _brevitas_mlp() -> nn.Module:
    """A QAT MLP written with Brevitas' own layers and default quantizers (not our helpers)."""
    import brevitas.nn as qnn

    torch.manual_seed(0)
    return nn.Sequential(
        qnn.QuantIdentity(return_quant_tensor=True),
        qnn.QuantLinear(N_IN, 8, bias=True, weight_bit_width=4, return_quant_tensor=True),
        qnn.QuantReLU(bit_width=4, return_quant_tensor=True),
        qnn.QuantLinear(8, N_OUT, bias=True, weight_bit_width=4),
    )


def _check_symmetric(h: ModelHessian, n_pairs: int = 3) -> list[float]:
    gen = torch.Generator().manual_seed(0)
    errs = []
    for _ in range(n_pairs):
        u = torch.randn(h.dim, generator=gen, dtype=torch.float64)
        v = torch.randn(h.dim, generator=gen, dtype=torch.float64)
        a, b = float(u @ h.hvp(v)), float(v @ h.hvp(u))
        errs.append(abs(a - b) / max(abs(a), abs(b)))
    return errs


def test_brevitas_qat_model_hvp_is_symmetric() -> None:
    model = _brevitas_mlp()
    x, y = _data(n=200)
    h = ModelHessian(model, x.astype(np.float32), y, _ce)
    assert any("scaling_impl" in n for n in h.names)  # learned quantizer scales are parameters
    errs = _check_symmetric(h)
    assert h.hvp_method == "double-backward"
    print("\nbrevitas hand-built: u.Hv vs v.Hu relative", errs)
    assert max(errs) < 1e-4
    assert torch.linalg.norm(h.hvp(torch.ones(h.dim, dtype=torch.float64))) > 0
    vals, _ = h.eigenpairs(2, seed=0)
    assert np.all(np.isfinite(vals)) and abs(vals[0]) > 0
    assert h.fisher_trace(16) > 0 and h.per_sample_method == "loop"  # no vmap through Brevitas


def test_jet_qat_model_from_the_zoo() -> None:
    from edgeml.models import zoo

    spec = zoo.get("jet")
    data = spec.load_data(0)
    m = zoo.train_float(spec, data, epochs=1, seed=0)
    q = zoo.train_qat(spec, data, m, 6, 1, 0)
    h = ModelHessian(q, data.x_train[:1024], data.y_train[:1024], spec.loss)
    errs = _check_symmetric(h, 2)
    assert h.hvp_method == "double-backward"
    print("\njet QAT: u.Hv vs v.Hu relative", errs)
    assert max(errs) < 1e-4
    s = summary(h, k=2, n_matvecs=9, lanczos_steps=8, density_steps=6, n_samples=16)
    assert s["hvp_method"] == "double-backward" and s["dim"] == h.dim
    assert s["top_eigenvalues"][0] > 0 and s["fisher_trace"] > 0
    json.dumps(s, allow_nan=False)


def test_summary_is_json_and_plots(small, tmp_path) -> None:
    h, ref = small
    n0 = h.n_hvp
    s = summary(h, k=3, lanczos_steps=h.dim, n_matvecs=30, seed=0, n_samples=None)
    text = json.dumps(s, allow_nan=False)
    back = json.loads(text)
    w = np.linalg.eigvalsh(ref)
    np.testing.assert_allclose(back["top_eigenvalues"], w[np.argsort(-np.abs(w))[:3]], rtol=1e-6)
    # Lanczos stops at the Hessian's Krylov rank (<= dim), then 30 + 30 + 2 x 20 more
    assert back["n_hvp"] == h.n_hvp - n0
    assert 3 + 30 + 30 + 2 * 20 <= back["n_hvp"] <= h.dim + 30 + 30 + 2 * 20
    assert len(back["density"]["grid"]) == len(back["density"]["density"]) == 200
    assert back["fisher_trace"] == pytest.approx(h.fisher_trace(), rel=1e-12)
    assert set(back["gradient_noise"]) >= {"trace_cov", "grad_norm2", "noise_scale", "snr"}
    for fn in (plot_density, plot_eigenvalues):
        fig = fn({"a": back, "b": back})
        path = tmp_path / f"{fn.__name__}.png"
        fig.savefig(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(fig.axes[0].lines) == 2
    assert len(plot_eigenvalues(back).axes[0].lines) == 1
