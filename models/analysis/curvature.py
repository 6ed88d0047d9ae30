"""Loss curvature of any torch model: Hessian-vector products, spectra, traces, Fisher, noise.

One implementation of the curvature linear algebra, shared with the fault-site
rankings of :mod:`edgeml.fault_injection.hessian` (which imports it from here).
Every routine takes a Hessian-vector product ``hvp(v) -> H v`` on flat float64
CPU vectors of length ``dim``, so it works the same on a golden-model float
mirror, a torch model, or an explicit matrix (tests).

* :func:`lanczos` (full reorthogonalisation) and :func:`power_iteration`
  (deflation): top-``k`` eigenpairs by ``|lambda|``.
* :func:`hutchinson_trace` (Rademacher probes, one matvec each) and
  :func:`hutchpp_trace` (Hutch++, Meyer et al. 2021: a rank-``m/3`` sketch of
  the top of the spectrum traced exactly, Hutchinson on the rest), both at a
  budget of ``m`` matvecs; Hutch++ has far lower variance when a few
  eigenvalues dominate, as in trained networks.
* :func:`slq_density`: stochastic Lanczos quadrature (Ghorbani et al. 2019,
  PyHessian): per probe, the Ritz values (nodes) and squared first components
  of the Ritz vectors (weights) of a Lanczos run, broadened with Gaussians
  into an eigenvalue density.

:class:`ModelHessian` wraps a ``torch.nn.Module``, inputs, targets and a loss
``loss(outputs, targets) -> scalar`` (a batch mean, as every built-in design's
``spec.loss``): the Hessian of the mean loss over all samples with respect to
a chosen set of parameters. It evaluates the model at other parameters with
``torch.func.functional_call`` (the module's own parameters are never
touched) in eval mode, and takes HVPs by exact double backward (Pearlmutter).
Brevitas QAT models differentiate through their straight-through quantizers,
so the result is the Hessian of the STE surrogate, which double backward
supports in Brevitas 0.13.4 (tested on the jet QAT model). Only where a
model's op lacks double backward does ``hvp_mode="auto"`` fall back to a
central difference of gradients (see :meth:`ModelHessian.hvp`).

:func:`summary` collects the figures ``edgeml analyze`` reports;
:func:`plot_density` and :func:`plot_eigenvalues` draw them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeml.errors import ConfigError

log = logging.getLogger(__name__)

EIGEN_METHODS: tuple[str, ...] = ("lanczos", "power")
TRACE_METHODS: tuple[str, ...] = ("hutchinson", "hutchpp")
HVP_MODES: tuple[str, ...] = ("auto", "exact", "fd")

#: A Hessian-vector product on flat float64 CPU vectors.
HVP = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- linear algebra


def _check_k(k: int, dim: int) -> None:
    if not isinstance(k, int) or not 1 <= k <= dim:
        raise ConfigError(f"k (eigenpairs) must be an integer in [1, {dim}], got {k!r}")


def _rademacher(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen).to(torch.float64) * 2 - 1


def power_iteration(
    hvp: HVP,
    dim: int,
    k: int = 1,
    *,
    max_iter: int = 500,
    tol: float = 1e-8,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` eigenpairs (largest ``|lambda|``) by power iteration with deflation.

    Each new vector is kept orthogonal to the ones already found (projection
    deflation, as FKeras/PyHessian), so iteration ``i`` converges to the
    ``i``-th largest ``|lambda|``. Converged when the Rayleigh quotient changes
    by less than ``tol`` relative. Returns values (k,) and unit vectors (k, dim),
    in order of discovery (non-increasing ``|lambda|`` up to convergence).
    """
    _check_k(k, dim)
    gen = torch.Generator().manual_seed(int(seed))
    vals: list[float] = []
    vecs: list[Any] = []
    for _ in range(k):
        v = torch.randn(dim, generator=gen, dtype=torch.float64)
        lam_prev: float | None = None
        lam = 0.0
        for _it in range(max_iter):
            for u in vecs:
                v = v - (u @ v) * u
            nv = torch.linalg.norm(v)
            if nv == 0:
                break
            v = v / nv
            hv = hvp(v)
            lam = float(v @ hv)
            for u in vecs:
                hv = hv - (u @ hv) * u
            if lam_prev is not None and abs(lam - lam_prev) <= tol * max(abs(lam), 1e-30):
                break
            lam_prev = lam
            if torch.linalg.norm(hv) == 0:
                break
            v = hv
        vals.append(lam)
        vecs.append(v / torch.linalg.norm(v))
    return np.asarray(vals), torch.stack(vecs).numpy()


def _lanczos_tridiag(hvp: HVP, q: torch.Tensor, m: int) -> tuple[np.ndarray, torch.Tensor]:
    """``m`` Lanczos steps from unit ``q`` with full reorthogonalisation.

    Returns the tridiagonal matrix ``T`` (n, n), ``n <= m`` (fewer when an
    invariant subspace is found: then exact on it), and the Krylov basis (n, dim).
    """
    dim = q.numel()
    Q = torch.zeros((m, dim), dtype=torch.float64)
    alpha = np.zeros(m)
    beta = np.zeros(m)
    n = m
    for j in range(m):
        Q[j] = q
        w = hvp(q)
        alpha[j] = float(q @ w)
        w = w - alpha[j] * q - (beta[j - 1] * Q[j - 1] if j else 0.0)
        # full reorthogonalisation (twice is enough): keeps Ritz values free of ghosts
        for _ in range(2):
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        b = float(torch.linalg.norm(w))
        if j + 1 < m:
            if b <= 1e-12 * max(1.0, float(np.abs(alpha[: j + 1]).max())):
                n = j + 1  # invariant subspace found: exact on it
                break
            beta[j] = b
            q = w / b
    T = np.diag(alpha[:n]) + np.diag(beta[: n - 1], 1) + np.diag(beta[: n - 1], -1)
    return T, Q[:n]


def lanczos(
    hvp: HVP,
    dim: int,
    k: int = 1,
    *,
    steps: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` eigenpairs (largest ``|lambda|``) by Lanczos with full reorthogonalisation.

    ``steps`` Krylov vectors (default ``min(dim, max(3k, k + 40))``); the Ritz
    pairs of the tridiagonal matrix approximate the extreme eigenpairs, which
    converge first. Returns values (k,) sorted by ``|lambda|`` descending and unit
    vectors (k, dim).
    """
    _check_k(k, dim)
    m = min(dim, max(3 * k, k + 40)) if steps is None else int(steps)
    if not k <= m <= dim:
        raise ConfigError(f"lanczos steps must be in [k={k}, dim={dim}], got {steps!r}")
    gen = torch.Generator().manual_seed(int(seed))
    q = torch.randn(dim, generator=gen, dtype=torch.float64)
    T, Q = _lanczos_tridiag(hvp, q / torch.linalg.norm(q), m)
    n = T.shape[0]
    theta, S = np.linalg.eigh(T)
    pick = np.argsort(-np.abs(theta), kind="stable")[: min(k, n)]
    vecs = (torch.as_tensor(S[:, pick].T) @ Q).numpy()
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return theta[pick], vecs


def hutchinson_trace(
    hvp: HVP, dim: int, n_probes: int = 100, *, seed: int = 0
) -> tuple[float, float]:
    """``tr(H) ~ mean(z^T H z)`` over Rademacher probes ``z``; returns (estimate, std. error).

    One matvec per probe: ``n_probes`` is the matvec budget, comparable with
    :func:`hutchpp_trace`'s ``n_matvecs``.
    """
    if not isinstance(n_probes, int) or n_probes < 2:
        raise ConfigError(f"n_probes must be an integer >= 2, got {n_probes!r}")
    gen = torch.Generator().manual_seed(int(seed))
    samples = np.empty(n_probes)
    for i in range(n_probes):
        z = _rademacher((dim,), gen)
        samples[i] = float(z @ hvp(z))
    return float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(n_probes))


def hutchpp_trace(
    hvp: HVP, dim: int, n_matvecs: int = 99, *, seed: int = 0
) -> tuple[float, float | None]:
    """Hutch++ estimate of ``tr(H)`` with ``n_matvecs`` HVPs (Meyer et al. 2021).

    Sketch ``S`` (``s = n_matvecs // 3`` Rademacher columns), ``Q = orth(H S)``;
    ``tr(H) ~ tr(Q^T H Q) + mean_g g^T P H P g`` with ``P = I - Q Q^T`` and the
    remaining ``n_matvecs - 2 s`` Rademacher probes ``g``. Unbiased; its
    variance depends only on the spectrum outside the top-``s`` directions.
    Returns (estimate, standard error of the Hutchinson part given ``Q``, or
    ``None`` when fewer than two probes remain or ``Q`` spans everything: then
    the estimate is exact up to rounding).
    """
    if not isinstance(n_matvecs, int) or n_matvecs < 3:
        raise ConfigError(f"n_matvecs must be an integer >= 3, got {n_matvecs!r}")
    gen = torch.Generator().manual_seed(int(seed))
    s = min(n_matvecs // 3, dim)
    n_g = n_matvecs - 2 * s
    S = _rademacher((dim, s), gen)
    HS = torch.stack([hvp(S[:, i]) for i in range(s)], dim=1)
    Q, _ = torch.linalg.qr(HS)  # (dim, s), orthonormal columns
    HQ = torch.stack([hvp(Q[:, i]) for i in range(s)], dim=1)
    top = float(torch.trace(Q.T @ HQ))
    if s == dim:
        return top, None
    samples = np.empty(n_g)
    for i in range(n_g):
        g = _rademacher((dim,), gen)
        g = g - Q @ (Q.T @ g)
        samples[i] = float(g @ hvp(g))
    rest = float(samples.mean())
    se = float(samples.std(ddof=1) / math.sqrt(n_g)) if n_g >= 2 else None
    return top + rest, se


def slq_density(
    hvp: HVP,
    dim: int,
    *,
    n_probes: int = 4,
    steps: int = 40,
    seed: int = 0,
    grid: int | Sequence[float] | np.ndarray | None = None,
    sigma: float | None = None,
) -> dict[str, Any]:
    """Eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    For each of ``n_probes`` normalised Rademacher probes ``q``, ``steps``
    Lanczos steps give nodes ``theta_j`` (Ritz values) and weights
    ``tau_j = (e_1 . s_j)^2`` summing to 1, a quadrature for ``q^T f(H) q``;
    ``E[q^T f(H) q] = tr f(H) / dim``. The density is the probe average of
    ``sum_j tau_j N(t; theta_j, sigma^2)``, which integrates to 1 and whose mean
    is ``tr(H) / dim`` in expectation. ``sigma`` defaults to 1 % of the node
    range; ``grid`` is a number of points (default 1000) spanning the nodes
    +- 5 sigma, or explicit points. Returns ``nodes`` and ``weights`` (one list
    per probe), ``grid``, ``density``, ``sigma`` and ``mean`` (the quadrature
    estimate of ``tr(H) / dim``).
    """
    if not isinstance(n_probes, int) or n_probes < 1:
        raise ConfigError(f"n_probes must be an integer >= 1, got {n_probes!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    gen = torch.Generator().manual_seed(int(seed))
    m = min(steps, dim)
    nodes: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for _ in range(n_probes):
        q = _rademacher((dim,), gen) / math.sqrt(dim)
        T, _Q = _lanczos_tridiag(hvp, q, m)
        theta, S = np.linalg.eigh(T)
        nodes.append(theta)
        weights.append(S[0, :] ** 2)
    allnodes = np.concatenate(nodes)
    lo, hi = float(allnodes.min()), float(allnodes.max())
    span = hi - lo
    if sigma is None:
        sigma = 0.01 * span if span > 0 else 0.01 * max(abs(lo), 1e-12)
    sigma = float(sigma)
    if not sigma > 0:
        raise ConfigError(f"sigma must be > 0, got {sigma!r}")
    if grid is None or isinstance(grid, int | np.integer):
        npts = 1000 if grid is None else int(grid)
        if npts < 2:
            raise ConfigError(f"grid must be a number of points >= 2 or an array, got {grid!r}")
        t = np.linspace(lo - 5 * sigma, hi + 5 * sigma, npts)
    else:
        t = np.asarray(grid, np.float64).reshape(-1)
    dens = np.zeros_like(t)
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi) * n_probes)
    for th, w in zip(nodes, weights, strict=True):
        dens += norm * (w[None, :] * np.exp(-0.5 * ((t[:, None] - th[None, :]) / sigma) ** 2)).sum(
            axis=1
        )
    mean = float(np.mean([float(th @ w) for th, w in zip(nodes, weights, strict=True)]))
    return {
        "nodes": [th.tolist() for th in nodes],
        "weights": [w.tolist() for w in weights],
        "grid": t,
        "density": dens,
        "sigma": sigma,
        "mean": mean,
        "n_probes": n_probes,
        "steps": m,
    }


# ----------------------------------------------------------------------------- torch models


def _value(out: Any) -> torch.Tensor:
    """Plain tensor of a model output (``.value`` of a Brevitas QuantTensor)."""
    return out.value if hasattr(out, "value") else out


#: autograd nodes that raise when differentiated (``once_differentiable`` backward
#: outputs, ops without a double-backward formula)
_ERROR_NODES = frozenset({"Error", "DelayedError", "NotImplemented"})


def _non_differentiable_nodes(t: torch.Tensor) -> list[str]:
    """Names of error nodes in the autograd graph of ``t``.

    ``torch.autograd.grad(g, theta)`` prunes branches that do not lead to
    ``theta``; a ``once_differentiable`` backward detaches its result onto such a
    branch, so the double backward would not raise, just lose those terms.
    """
    seen: set[int] = set()
    stack = [t.grad_fn]
    found: list[str] = []
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        name = type(fn).__name__
        if name in _ERROR_NODES:
            found.append(name)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return sorted(set(found))


class HessianOperator:
    """Spectra and traces of any object with ``hvp(v)`` and ``dim``: one implementation
    for :class:`ModelHessian` and the fault ranking's ``LossHessian``."""

    dim: int

    def hvp(self, v: Any) -> torch.Tensor:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    def dense(self) -> torch.Tensor:
        """The explicit Hessian (``dim`` HVPs), float64: for small models and tests only."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        return torch.stack([self.hvp(eye[i]) for i in range(self.dim)])

    # -- spectra and traces
    def eigenpairs(
        self, k: int = 8, *, method: str = "lanczos", seed: int = 0, **kw: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` eigenpairs by ``|lambda|``: (values (k,), vectors (k, dim))."""
        if method not in EIGEN_METHODS:
            raise ConfigError(f"method must be one of {EIGEN_METHODS}, got {method!r}")
        fn = lanczos if method == "lanczos" else power_iteration
        return fn(self.hvp, self.dim, k, seed=seed, **kw)

    def trace(
        self, n_matvecs: int = 30, *, method: str = "hutchinson", seed: int = 0
    ) -> tuple[float, float | None]:
        """``tr(H)`` with ``n_matvecs`` HVPs by Hutchinson or Hutch++: (estimate, std. error)."""
        if method not in TRACE_METHODS:
            raise ConfigError(f"method must be one of {TRACE_METHODS}, got {method!r}")
        if method == "hutchinson":
            return hutchinson_trace(self.hvp, self.dim, n_matvecs, seed=seed)
        return hutchpp_trace(self.hvp, self.dim, n_matvecs, seed=seed)

    def density(
        self,
        *,
        n_probes: int = 4,
        steps: int = 40,
        seed: int = 0,
        grid: int | Sequence[float] | np.ndarray | None = None,
        sigma: float | None = None,
    ) -> dict[str, Any]:
        """Eigenvalue density by stochastic Lanczos quadrature (see :func:`slq_density`)."""
        return slq_density(
            self.hvp, self.dim, n_probes=n_probes, steps=steps, seed=seed, grid=grid, sigma=sigma
        )


class ModelHessian(HessianOperator):
    """The Hessian of a model's mean loss over ``(x, y)`` with respect to chosen parameters.

    ``params``: parameter names (default: every parameter with ``requires_grad``;
    a Brevitas QAT model's learned quantizer scales included). The flat vector
    ``theta`` concatenates them in that order, each in C order (``names``,
    ``shapes``). ``loss(outputs, targets)`` must be a mean over the batch's
    samples; batches of ``batch_size`` samples are weighted by their size, so
    every quantity is that of the mean loss over all ``n`` samples. Vectors in
    and out (``theta0``, ``gradient``, ``hvp``) are float64 on the CPU; the model
    runs in its own dtype on ``device`` (the module is copied there if it lives
    elsewhere; its parameters are never modified). Analysis runs in eval mode
    (no dropout, frozen BatchNorm statistics); the module's mode is restored.

    ``hvp_mode``: ``"exact"`` (double backward), ``"fd"`` (central difference of
    gradients) or ``"auto"`` (exact, falling back to ``"fd"`` if the first
    double backward raises or its graph holds an op that cannot be
    differentiated twice; ``hvp_method`` says which is used and
    ``fallback_reason`` why). ``n_hvp`` counts HVPs.
    """

    def __init__(
        self,
        model: nn.Module,
        x: Any,
        y: Any,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        params: Sequence[str] | None = None,
        batch_size: int = 4096,
        device: str | torch.device = "cpu",
        hvp_mode: str = "auto",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if hvp_mode not in HVP_MODES:
            raise ConfigError(f"hvp_mode must be one of {HVP_MODES}, got {hvp_mode!r}")
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        first = next(model.parameters(), None)
        if first is not None and first.device != dev:
            model = copy.deepcopy(model).to(dev)
        self.model = model
        self.loss = loss
        self.device = dev
        self.batch_size = batch_size
        named = dict(model.named_parameters())
        if params is None:
            names = [n for n, p in named.items() if p.requires_grad]
        else:
            names = [str(p) for p in params]
            bad = [n for n in names if n not in named]
            if bad:
                raise ConfigError(
                    f"params: unknown parameter name(s) {bad}; allowed: {list(named)}"
                )
            if len(set(names)) != len(names):
                raise ConfigError(f"params: duplicate names in {names}")
        if not names:
            raise ConfigError("params: the model has no parameters to differentiate")
        nonfloat = [n for n in names if not named[n].is_floating_point()]
        if nonfloat:
            raise ConfigError(f"params: {nonfloat} are not floating point")
        self.names: tuple[str, ...] = tuple(names)
        self.shapes: tuple[tuple[int, ...], ...] = tuple(tuple(named[n].shape) for n in names)
        self._numels = [int(math.prod(s)) for s in self.shapes]
        self._dtypes = [named[n].dtype for n in names]
        self.dim = int(sum(self._numels))
        self.dtype = torch.float64 if torch.float64 in self._dtypes else self._dtypes[0]
        with torch.no_grad():
            self._theta = torch.cat([named[n].detach().reshape(-1).to(self.dtype) for n in names])
        xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
        if xt.ndim < 1 or xt.shape[0] == 0:
            raise ConfigError("ModelHessian needs at least one input sample")
        if yt.ndim < 1 or yt.shape[0] != xt.shape[0]:
            raise ConfigError(f"got {xt.shape[0]} samples but targets of shape {tuple(yt.shape)}")
        if xt.is_floating_point():
            xt = xt.to(self.dtype)
        yt = yt.to(self.dtype) if yt.is_floating_point() else yt.to(torch.int64)
        self.x = xt.to(dev)
        self.y = yt.to(dev)
        self.n = int(xt.shape[0])
        self.n_hvp = 0
        self.hvp_mode = hvp_mode
        self.hvp_method: str | None = {"exact": "double-backward", "fd": "finite-difference"}.get(
            hvp_mode
        )
        self.fallback_reason: str | None = None
        self.per_sample_method: str | None = None
        self._graph: tuple[torch.Tensor, torch.Tensor] | None = None
        self._graph_checked = False
        self._ps_cache: dict[tuple[int, int], tuple[int, torch.Tensor, torch.Tensor]] = {}

    # -- layout
    def theta0(self) -> torch.Tensor:
        """The model's parameters (the selected ones), flat, float64 on the CPU."""
        return self._theta.detach().to("cpu", torch.float64).clone()

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector into ``{name: tensor}`` in the parameters' shapes and dtypes.

        Differentiable (views and casts), on the vector's device.
        """
        vec = torch.as_tensor(vec)
        if vec.shape != (self.dim,):
            raise ConfigError(f"expected a vector of shape ({self.dim},), got {tuple(vec.shape)}")
        parts = torch.split(vec, self._numels)
        return {
            n: p.reshape(s).to(dt)
            for n, p, s, dt in zip(self.names, parts, self.shapes, self._dtypes, strict=True)
        }

    def _work(self, v: Any) -> torch.Tensor:
        v = torch.as_tensor(v)
        if v.shape != (self.dim,):
            raise ConfigError(f"expected a vector of shape ({self.dim},), got {tuple(v.shape)}")
        return v.to(self.device, self.dtype)

    # -- evaluation
    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            yield
        finally:
            for m, t in modes:
                m.training = t

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, self.n, self.batch_size):
            yield self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]

    def _outputs(self, theta: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(self.model, self.unflatten(theta), (xb,))
        return _value(out)

    def _batch_loss(self, theta: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return self.loss(self._outputs(theta, xb), yb) * (xb.shape[0] / self.n)

    def loss_at(self, theta: torch.Tensor | None = None) -> float:
        """Mean loss over all samples at ``theta`` (default: the model's parameters)."""
        th = self._theta if theta is None else self._work(theta)
        with torch.no_grad(), self._eval_mode():
            return float(sum(float(self._batch_loss(th, xb, yb)) for xb, yb in self._batches()))

    def _grad_at(self, theta: torch.Tensor) -> torch.Tensor:
        g = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with self._eval_mode():
            for xb, yb in self._batches():
                th = theta.detach().clone().requires_grad_(True)
                (gb,) = torch.autograd.grad(self._batch_loss(th, xb, yb), th)
                g += gb
        return g

    def gradient(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Gradient of the mean loss at ``theta`` (default: the model's), float64 on the CPU."""
        th = self._theta if theta is None else self._work(theta)
        return self._grad_at(th).to("cpu", torch.float64)

    def _hvp_exact(self, v: torch.Tensor) -> torch.Tensor:
        if self._graph is not None:  # one batch: reuse its gradient graph
            th, gb = self._graph
            (hb,) = torch.autograd.grad(gb, th, grad_outputs=v, retain_graph=True)
            return hb
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        single = self.n <= self.batch_size
        with self._eval_mode():
            for xb, yb in self._batches():
                th = self._theta.clone().requires_grad_(True)
                (gb,) = torch.autograd.grad(self._batch_loss(th, xb, yb), th, create_graph=True)
                if not gb.requires_grad:  # the gradient does not depend on theta: H = 0
                    continue
                if not self._graph_checked:
                    bad = _non_differentiable_nodes(gb)
                    if bad:
                        raise RuntimeError(
                            f"the gradient graph has {bad} node(s): an op whose backward cannot "
                            "be differentiated (e.g. an autograd.Function marked "
                            "once_differentiable); double backward would silently drop its "
                            "second-order terms; use hvp_mode='fd' (or 'auto')"
                        )
                    self._graph_checked = True
                (hb,) = torch.autograd.grad(gb, th, grad_outputs=v, retain_graph=single)
                if single:
                    self._graph = (th, gb)
                out += hb
        return out

    def _hvp_fd(self, v: torch.Tensor) -> torch.Tensor:
        vn = float(torch.linalg.norm(v))
        if vn == 0:
            return torch.zeros_like(v)
        scale = max(1.0, float(torch.linalg.norm(self._theta)))
        eps = torch.finfo(self.dtype).eps ** (1 / 3) * scale / vn
        gp = self._grad_at(self._theta + eps * v)
        gm = self._grad_at(self._theta - eps * v)
        return (gp - gm) / (2 * eps)

    def hvp(self, v: Any) -> torch.Tensor:
        """``H v`` for a flat vector ``v``; float64 on the CPU.

        Exact double backward through the model and loss (the STE Hessian for a
        Brevitas QAT model; the first call checks the gradient graph for nodes
        that cannot be differentiated twice, which ``torch.autograd.grad`` would
        silently skip, and ``hvp_mode="exact"`` then raises). Fallback
        (``hvp_mode="fd"``, or ``"auto"`` when the first double backward raises
        or finds such a node, e.g. an ``autograd.Function`` marked
        ``once_differentiable``): ``(g(theta + eps v) - g(theta - eps v)) / (2 eps)``
        with ``eps = eps_machine**(1/3) * max(1, |theta|) / |v|``, accurate to
        ``O(eps^2)`` where the gradient is smooth (5e-11 relative in float64,
        tested). It is no substitute on a quantized model: there the steps
        straddle quantization thresholds (on the 6-bit jet QAT model it differs
        from the STE Hessian by 3x its norm), so Brevitas models use exact.
        """
        vw = self._work(v)
        if self.hvp_method is None:  # auto, first call: decide
            try:
                out = self._hvp_exact(vw)
                self.hvp_method = "double-backward"
            except RuntimeError as exc:
                out = self._hvp_fd(vw)
                self.hvp_method = "finite-difference"
                self.fallback_reason = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "double backward failed (%s); using finite-difference HVPs",
                    self.fallback_reason,
                )
        elif self.hvp_method == "double-backward":
            out = self._hvp_exact(vw)
        else:
            out = self._hvp_fd(vw)
        self.n_hvp += 1
        return out.detach().to("cpu", torch.float64)

    # -- per-sample gradients: Fisher and gradient noise
    def _sample_index(self, n_samples: int | None, seed: int) -> torch.Tensor:
        if n_samples is None or n_samples >= self.n:
            return torch.arange(self.n)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
            raise ConfigError(f"n_samples must be an integer >= 2 or None, got {n_samples!r}")
        gen = torch.Generator().manual_seed(int(seed))
        return torch.sort(torch.randperm(self.n, generator=gen)[:n_samples]).values

    def _per_sample(
        self, n_samples: int | None, seed: int
    ) -> tuple[int, torch.Tensor, torch.Tensor]:
        """(n, sum of per-sample gradients, sum of their elementwise squares), float64 CPU.

        ``torch.func.vmap(grad)`` in chunks where the model supports it; else (e.g.
        Brevitas, whose autograd Functions lack ``setup_context``) one backward
        per sample.
        """
        key = (-1 if n_samples is None else int(n_samples), int(seed))
        if key in self._ps_cache:
            return self._ps_cache[key]
        idx = self._sample_index(n_samples, seed).to(self.device)
        xs, ys = self.x[idx], self.y[idx]
        n = int(idx.numel())
        s = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        sq = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        chunk = max(1, min(self.batch_size, (1 << 22) // max(self.dim, 1)))
        th = self._theta.detach()

        def one(theta: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return self.loss(self._outputs(theta, xi.unsqueeze(0)), yi.unsqueeze(0))

        with self._eval_mode():
            start = 0
            if self.per_sample_method in (None, "vmap"):
                fn = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))
                try:
                    for start in range(0, n, chunk):
                        G = fn(th, xs[start : start + chunk], ys[start : start + chunk]).double()
                        s += G.sum(0)
                        sq += (G * G).sum(0)
                    start = n
                    self.per_sample_method = "vmap"
                except RuntimeError as exc:
                    if self.per_sample_method == "vmap":
                        raise
                    log.debug("vmap(grad) unsupported (%s); per-sample loop", exc)
                    self.per_sample_method = "loop"
            if start < n:
                for i in range(start, n):
                    t = th.clone().requires_grad_(True)
                    (g,) = torch.autograd.grad(one(t, xs[i], ys[i]), t)
                    g = g.double()
                    s += g
                    sq += g * g
        res = (n, s.cpu(), sq.cpu())
        self._ps_cache[key] = res
        return res

    def fisher_diagonal(self, n_samples: int | None = None, *, seed: int = 0) -> torch.Tensor:
        """Diagonal of the empirical Fisher ``mean_i g_i * g_i`` (per-sample gradients ``g_i``).

        Over all samples, or a seeded random subset of ``n_samples``. Weighted by
        the squared quantization step of each parameter, it is the FIT sensitivity
        (Zandonati et al. 2023).
        """
        n, _s, sq = self._per_sample(n_samples, seed)
        return sq / n

    def fisher_trace(self, n_samples: int | None = None, *, seed: int = 0) -> float:
        """Trace of the empirical Fisher: mean over samples of ``|g_i|^2``."""
        return float(self.fisher_diagonal(n_samples, seed=seed).sum())

    def fisher_trace_per_param(
        self, n_samples: int | None = None, *, seed: int = 0
    ) -> dict[str, float]:
        """Empirical Fisher trace restricted to each parameter tensor (``names``)."""
        parts = torch.split(self.fisher_diagonal(n_samples, seed=seed), self._numels)
        return {n: float(p.sum()) for n, p in zip(self.names, parts, strict=True)}

    def gradient_noise(
        self, batch_size: int = 256, *, n_samples: int | None = None, seed: int = 0
    ) -> dict[str, float]:
        """Gradient noise from per-sample gradients (McCandlish et al. 2018).

        ``grad_norm2 = |G|^2`` of the mean gradient ``G`` over the samples used;
        ``trace_cov = tr(Sigma)`` of the per-sample gradient covariance (unbiased);
        ``noise_scale = tr(Sigma) / |G|^2``, the simple noise scale ``B_simple``
        (the batch size above which larger batches stop helping);
        ``batch_noise = tr(Sigma) / batch_size``, the expected ``|g_B - G|^2`` of a
        mini-batch gradient; ``snr = |G|^2 / batch_noise``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        n, s, sq = self._per_sample(n_samples, seed)
        if n < 2:
            raise ConfigError("gradient noise needs at least 2 samples")
        G = s / n
        g2 = float(G @ G)
        tr_cov = max(0.0, float((sq.sum() - n * g2) / (n - 1)))
        noise = tr_cov / batch_size
        return {
            "n_samples": n,
            "grad_norm2": g2,
            "trace_cov": tr_cov,
            "noise_scale": tr_cov / g2 if g2 > 0 else math.inf,
            "batch_size": batch_size,
            "batch_noise": noise,
            "snr": g2 / noise if noise > 0 else math.inf,
        }


# ----------------------------------------------------------------------------- summary


def summary(
    h: ModelHessian,
    *,
    k: int = 4,
    n_matvecs: int = 24,
    seed: int = 0,
    lanczos_steps: int | None = 20,
    density_probes: int = 2,
    density_steps: int = 20,
    grid_points: int = 200,
    n_samples: int | None = 256,
    noise_batch: int = 256,
) -> dict[str, Any]:
    """JSON-able curvature figures of ``h`` (what ``edgeml analyze`` reports).

    ``top_eigenvalues`` (Lanczos, ``k``), ``trace_hutchinson`` and ``trace_hutchpp``
    (``n_matvecs`` HVPs each) with standard errors, the SLQ ``density`` on
    ``grid_points`` points, ``fisher_trace`` (and per parameter tensor) and
    ``gradient_noise`` over ``n_samples`` samples, the HVP count and seconds.
    Defaults: 108 HVPs; on the jet tagger (4,389 parameters, 4,096 samples, one
    CPU thread) about 1 s float and 7 s 6-bit QAT (3 s of it per-sample gradients:
    Brevitas has no ``vmap``, so they are a loop).
    """
    t0 = time.perf_counter()
    n0 = h.n_hvp
    k = min(k, h.dim)
    steps = None if lanczos_steps is None else min(h.dim, max(k, lanczos_steps))
    vals, _ = h.eigenpairs(k, method="lanczos", seed=seed, steps=steps)
    tr_h, se_h = h.trace(n_matvecs, method="hutchinson", seed=seed)
    tr_pp, se_pp = h.trace(n_matvecs, method="hutchpp", seed=seed)
    dens = h.density(n_probes=density_probes, steps=density_steps, seed=seed, grid=grid_points)
    fisher = h.fisher_trace_per_param(n_samples, seed=seed)
    noise = h.gradient_noise(noise_batch, n_samples=n_samples, seed=seed)
    return {
        "dim": h.dim,
        "n_samples": h.n,
        "loss": h.loss_at(),
        "hvp_method": h.hvp_method,
        "top_eigenvalues": [float(v) for v in vals],
        "trace_hutchinson": tr_h,
        "trace_hutchinson_stderr": se_h,
        "trace_hutchpp": tr_pp,
        "trace_hutchpp_stderr": se_pp,
        "n_matvecs": n_matvecs,
        "fisher_trace": float(sum(fisher.values())),
        "fisher_trace_per_param": fisher,
        "gradient_noise": noise,
        "density": {
            "grid": [float(v) for v in dens["grid"]],
            "density": [float(v) for v in dens["density"]],
            "sigma": dens["sigma"],
            "mean": dens["mean"],
            "n_probes": dens["n_probes"],
            "steps": dens["steps"],
        },
        "n_hvp": h.n_hvp - n0,
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------- plots


def _labelled(summaries: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """One summary (has ``top_eigenvalues``) or ``{label: summary}`` -> ``{label: summary}``."""
    if "top_eigenvalues" in summaries or "density" in summaries:
        return {"": summaries}
    return dict(summaries)


def _figure(ax: Any) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.4), layout="constrained")
    return fig, fig.add_subplot()


def plot_density(summary: Mapping[str, Any], ax: Any = None) -> Any:
    """SLQ eigenvalue density (log scale) of one summary or ``{label: summary}``; a Figure."""
    fig, ax = _figure(ax)
    for label, s in _labelled(summary).items():
        d = s["density"]
        dens = np.maximum(np.asarray(d["density"], np.float64), 1e-12)
        ax.semilogy(d["grid"], dens, label=label or None)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title("Hessian eigenvalue density (SLQ)")
    if any(_labelled(summary)):
        ax.legend(fontsize="small")
    return fig


def plot_eigenvalues(summary: Mapping[str, Any], ax: Any = None) -> Any:
    """Top Hessian eigenvalues by rank of one summary or ``{label: summary}``; a Figure."""
    fig, ax = _figure(ax)
    for label, s in _labelled(summary).items():
        v = np.asarray(s["top_eigenvalues"], np.float64)
        ax.plot(np.arange(1, v.size + 1), v, "o-", label=label or None)
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue")
    ax.set_title("top Hessian eigenvalues")
    if any(_labelled(summary)):
        ax.legend(fontsize="small")
    return fig
