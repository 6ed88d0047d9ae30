"""The stochastic TR-SQP method of :mod:`edgeml.models.trsqp` (iteration and torch optimizer).

Fang, Na, Mahoney, Kolar: arXiv:2211.15943 (SIAM J. Optim. 2024) and arXiv:2409.15734;
the study module's docstring describes the iteration and what is exact or approximated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch

from edgeml.errors import ConfigError

HessianKind = Literal["exact", "bfgs", "identity"]
_EPS = 1e-12

# ======================================================================= the method


@dataclass(frozen=True)
class TRSQPConfig:
    """Settings of :class:`StochasticTRSQP` / :func:`minimize` (defaults as in the papers' tests)."""

    radius: float = 1.0  #: initial trust radius
    max_radius: float = 10.0
    eta: float = 0.1  #: ratio-test acceptance threshold
    very_good: float = 0.75  #: ratio above which the radius grows
    gamma: float = 2.0  #: radius growth / shrink factor
    mu: float = 1.0  #: initial merit parameter
    mu_growth: float = 1.5  #: minimal factor when the merit parameter must grow
    sigma: float = 0.5  #: fraction of the linearised feasibility gain the model must credit
    batch_min: int = 16
    batch_max: int = 4096
    kappa_g: float = 1.0  #: gradient accuracy: E||g_hat - g||^2 <= (kappa_g Delta)^2
    kappa_f: float = 1.0  #: function accuracy: E|f_hat - f|^2 <= (kappa_f Delta^2)^2
    hessian: HessianKind = "bfgs"
    eigen: bool = True  #: eigen steps on negative reduced curvature (needs "exact")
    soc: bool = True  #: second-order correction after a rejected step
    cg_iters: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        pos = ("radius", "max_radius", "gamma", "mu", "kappa_g", "kappa_f")
        for name in pos:
            if not getattr(self, name) > 0:
                raise ConfigError(f"TRSQPConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.eta < self.very_good < 1:
            raise ConfigError(
                f"TRSQPConfig needs 0 < eta < very_good < 1, got eta={self.eta!r}, "
                f"very_good={self.very_good!r}"
            )
        if not 0 < self.sigma < 1 or self.gamma <= 1 or self.mu_growth <= 1:
            raise ConfigError("TRSQPConfig needs 0 < sigma < 1, gamma > 1 and mu_growth > 1")
        if not 1 <= self.batch_min <= self.batch_max:
            raise ConfigError(
                f"TRSQPConfig needs 1 <= batch_min <= batch_max, got {self.batch_min!r}, "
                f"{self.batch_max!r}"
            )
        if self.hessian not in ("exact", "bfgs", "identity"):
            raise ConfigError(
                f"TRSQPConfig.hessian must be one of 'exact', 'bfgs', 'identity', got "
                f"{self.hessian!r}"
            )


@dataclass
class Estimate:
    """A sample estimate at one point: ``f``, gradient, their per-sample variances, c, J."""

    f: float
    g: np.ndarray
    var_f: float
    var_g: float  #: trace of the per-sample gradient covariance
    c: np.ndarray
    J: np.ndarray
    n: int


class Oracle(Protocol):
    """What the iteration needs from a problem: estimates with a sample key (same key = same
    samples), exact constraints, and an exact Lagrangian Hessian when asked for."""

    def estimate(self, x: np.ndarray, n: int, key: int) -> Estimate: ...

    def trial(self, x: np.ndarray, n: int, key: int) -> tuple[float, np.ndarray]: ...

    def hessian(self, x: np.ndarray, lam: np.ndarray, n: int, key: int) -> np.ndarray: ...


@dataclass
class TRSQPState:
    """Iteration state (also kept in the optimizer's ``state``)."""

    radius: float
    mu: float
    batch: int
    k: int = 0
    samples: int = 0
    B: np.ndarray | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: {"accepted": 0, "eigen": 0, "soc": 0, "soc_accepted": 0}
    )


class Geometry:
    """Projections onto ``null(J)`` and the minimum-norm solves with ``J J^T``."""

    def __init__(self, J: np.ndarray) -> None:
        self.J = J
        self.gram_pinv = np.linalg.pinv(J @ J.T, rcond=1e-10) if J.size else np.zeros((0, 0))

    def min_norm(self, r: np.ndarray) -> np.ndarray:
        """``-J^T (J J^T)^+ r``: the least-norm ``d`` with ``J d = -r``."""
        if not self.J.size:
            return np.zeros(self.J.shape[1])
        return -self.J.T @ (self.gram_pinv @ r)

    def project(self, v: np.ndarray) -> np.ndarray:
        if not self.J.size:
            return v
        return v - self.J.T @ (self.gram_pinv @ (self.J @ v))

    def null_basis(self) -> np.ndarray:
        n = self.J.shape[1]
        if not self.J.size:
            return np.eye(n)
        q, r = np.linalg.qr(self.J.T, mode="complete")
        rank = int(np.sum(np.abs(np.diag(r)) > 1e-10 * max(1.0, np.abs(r).max())))
        return q[:, rank:]


def _to_boundary(u: np.ndarray, p: np.ndarray, radius: float) -> float:
    """Positive ``t`` with ``||u + t p|| = radius``."""
    a, b, c = p @ p, 2 * u @ p, u @ u - radius**2
    return float((-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a))


def projected_cg(
    r: np.ndarray,
    H: np.ndarray,
    geo: Geometry,
    radius: float,
    iters: int,
    rtol: float | None = None,
) -> np.ndarray:
    """Steihaug-CG for ``min r.u + u.H.u / 2`` over ``u`` in ``null(J)``, ``||u|| <= radius``.

    The first iterate is the Cauchy point of the reduced model; negative curvature or the
    boundary stops it on the boundary (Gould, Hribar and Nocedal's projected CG). It stops
    when the projected residual falls below ``rtol`` times its start (default: the
    inexact-Newton forcing term ``min(0.1, ||r||^(1/2))``).
    """
    u = np.zeros_like(r)
    res = geo.project(r)
    rr = float(res @ res)
    if rr <= _EPS**2 or radius <= 0:
        return u
    p = -res
    tol = (min(0.1, math.sqrt(math.sqrt(rr))) if rtol is None else rtol) * math.sqrt(rr)
    for _ in range(iters):
        hp = geo.project(H @ p)
        curv = float(p @ hp)
        if curv <= _EPS * float(p @ p):
            return u + _to_boundary(u, p, radius) * p
        alpha = rr / curv
        if np.linalg.norm(u + alpha * p) >= radius:
            return u + _to_boundary(u, p, radius) * p
        u = u + alpha * p
        res = res + alpha * hp
        rr_new = float(res @ res)
        if math.sqrt(rr_new) <= tol:
            break
        p = -res + (rr_new / rr) * p
        rr = rr_new
    return u


def reduced_curvature(H: np.ndarray, geo: Geometry) -> tuple[float, np.ndarray]:
    """Most negative eigenvalue ``tau`` of ``Z^T H Z`` and its direction ``Z zeta``."""
    Z = geo.null_basis()
    if Z.shape[1] == 0:
        return 0.0, np.zeros(H.shape[0])
    w, v = np.linalg.eigh(Z.T @ H @ Z)
    return float(w[0]), Z @ v[:, 0]


def second_order_correction(geo: Geometry, c_trial: np.ndarray) -> np.ndarray:
    """``-J^T (J J^T)^+ c(x + d)`` with ``J`` at ``x``: removes the constraints' curvature
    error ``c(x + d) - (c + J d) = O(||d||^2)`` to second order (against the Maratos effect)."""
    return geo.min_norm(c_trial)


def _sample_size(est: Estimate, radius: float, chi: float, cfg: TRSQPConfig) -> int:
    """Adaptive sampling: the batch that meets both accuracy conditions at this radius.

    The gradient's error must stay below ``kappa_g min(Delta, chi)`` (``chi`` the estimated
    KKT residual ``||(c, grad_L)||``: near a solution the batch grows until the noise is
    below the residual, a norm test), the objective's below ``kappa_f Delta^2``.
    """
    need_g = est.var_g / (cfg.kappa_g * max(min(radius, chi), _EPS)) ** 2
    need_f = est.var_f / (cfg.kappa_f * radius**2) ** 2
    need = max(need_g, need_f)
    if not math.isfinite(need):
        return cfg.batch_max
    return int(min(max(math.ceil(need), cfg.batch_min), cfg.batch_max))


def _bfgs_update(B: np.ndarray, s: np.ndarray, y: np.ndarray, first: bool) -> np.ndarray:
    """Powell-damped BFGS update (keeps ``B`` positive definite)."""
    sy = float(s @ y)
    if first and sy > _EPS:
        B = np.eye(len(s)) * max(float(y @ y) / sy, 1e-6)
    bs = B @ s
    sbs = float(s @ bs)
    if sbs <= _EPS:
        return B
    theta = 1.0 if sy >= 0.2 * sbs else 0.8 * sbs / (sbs - sy)
    r = theta * y + (1 - theta) * bs
    return B - np.outer(bs, bs) / sbs + np.outer(r, r) / float(s @ r)


def trsqp_iteration(
    oracle: Oracle, x: np.ndarray, state: TRSQPState, cfg: TRSQPConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """One TR-SQP iteration from ``x``; updates ``state`` and returns ``(x_next, info)``."""
    key = cfg.seed * 1_000_003 + state.k
    state.k += 1
    est = oracle.estimate(x, state.batch, key)
    used = est.n
    geo = Geometry(est.J)
    chi = math.hypot(float(np.linalg.norm(est.c)), float(np.linalg.norm(geo.project(est.g))))
    need = _sample_size(est, state.radius, chi, cfg)
    if need > est.n:  # re-estimate with the batch the accuracy conditions ask for
        key += 500_000
        est = oracle.estimate(x, need, key)
        used += est.n
    state.batch = need
    lam = -(geo.gram_pinv @ (est.J @ est.g)) if est.J.size else np.zeros(0)
    grad_l = est.g + est.J.T @ lam
    n = len(x)
    if cfg.hessian == "exact":
        H = oracle.hessian(x, lam, est.n, key)
    elif cfg.hessian == "bfgs":
        H = state.B if state.B is not None else np.eye(n)
    else:
        H = np.eye(n)
    c_norm = float(np.linalg.norm(est.c))
    gl_norm = float(np.linalg.norm(grad_l))
    tau, zdir = (0.0, np.zeros(n))
    if cfg.eigen and cfg.hessian == "exact":
        tau, zdir = reduced_curvature(H, geo)
    tau_plus = max(0.0, -tau)
    eigen = tau_plus > math.hypot(c_norm, gl_norm) and tau_plus > 1e-8
    second = tau_plus if eigen else gl_norm
    scale = math.hypot(c_norm, second)
    if scale <= _EPS:
        info = {"kind": "stationary", "accepted": False, "f": est.f, "c_norm": c_norm,
                "kkt": 0.0, "radius": state.radius, "batch": est.n, "tau": tau}  # fmt: skip
        state.samples += used
        return x, info
    r_normal = state.radius * c_norm / scale
    r_tangent = state.radius * second / scale
    w = geo.min_norm(est.c)
    w_norm = float(np.linalg.norm(w))
    v = w if w_norm <= r_normal else w * (r_normal / w_norm)
    lin = est.g + H @ v
    if eigen:
        sign = -1.0 if float(lin @ zdir) > 0 else 1.0
        u = sign * r_tangent * zdir
        state.counts["eigen"] += 1
    else:
        u = projected_cg(lin, H, geo, r_tangent, cfg.cg_iters)
    d = v + u
    # merit parameter and predicted reduction of f + mu ||c||
    quad = float(est.g @ d + 0.5 * d @ H @ d)
    lin_c = float(np.linalg.norm(est.c + est.J @ d))
    gain = c_norm - lin_c
    if gain > _EPS:
        mu_trial = quad / ((1 - cfg.sigma) * gain)
        if state.mu < mu_trial:
            state.mu = max(mu_trial, state.mu * cfg.mu_growth)
    pred = quad - state.mu * gain
    merit0 = est.f + state.mu * c_norm
    accepted, ratio, kind = False, -math.inf, "eigen" if eigen else "gradient"
    x_new = x
    if pred < -_EPS * max(1.0, abs(merit0)):
        f_t, c_t = oracle.trial(x + d, est.n, key)
        used += est.n
        ratio = (f_t + state.mu * float(np.linalg.norm(c_t)) - merit0) / pred
        if ratio >= cfg.eta:
            accepted, x_new = True, x + d
        elif cfg.soc and float(np.linalg.norm(c_t)) > lin_c + _EPS and est.J.size:
            d2 = d + second_order_correction(geo, c_t)
            state.counts["soc"] += 1
            f_2, c_2 = oracle.trial(x + d2, est.n, key)
            used += est.n
            ratio2 = (f_2 + state.mu * float(np.linalg.norm(c_2)) - merit0) / pred
            if ratio2 >= cfg.eta:
                accepted, x_new, ratio, d = True, x + d2, ratio2, d2
                state.counts["soc_accepted"] += 1
                kind += "+soc"
    if accepted:
        state.counts["accepted"] += 1
        if cfg.hessian == "bfgs":
            new = oracle.estimate(x_new, est.n, key)
            used += new.n
            y = (new.g + new.J.T @ lam) - grad_l
            state.B = _bfgs_update(H, x_new - x, y, first=state.B is None)
        if ratio >= cfg.very_good and np.linalg.norm(d) >= 0.8 * state.radius:
            state.radius = min(cfg.gamma * state.radius, cfg.max_radius)
    else:
        state.radius /= cfg.gamma
    state.samples += used
    info = {
        "kind": kind,
        "accepted": accepted,
        "ratio": ratio,
        "f": est.f,
        "c_norm": c_norm,
        "kkt": math.hypot(c_norm, gl_norm),
        "radius": state.radius,
        "batch": est.n,
        "mu": state.mu,
        "tau": tau,
    }
    return x_new, info


# ------------------------------------------------------------ the torch optimizer

Closure = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


class _ClosureOracle:
    """Adapts ``closure(n, generator) -> (losses, c)`` over flat parameter vectors."""

    GROUPS = 4

    def __init__(self, params: list[torch.Tensor], closure: Closure) -> None:
        self.params = params
        self.closure = closure
        self.sizes = [p.numel() for p in params]

    def _set(self, x: np.ndarray) -> None:
        flat = torch.from_numpy(np.asarray(x))
        with torch.no_grad():
            offset = 0
            for p, k in zip(self.params, self.sizes, strict=True):
                p.copy_(flat[offset : offset + k].view_as(p).to(p.dtype))
                offset += k

    def _flat_grad(self, out: torch.Tensor, retain: bool) -> np.ndarray:
        grads = torch.autograd.grad(out, self.params, retain_graph=retain, allow_unused=True)
        return np.concatenate(
            [
                (g if g is not None else torch.zeros_like(p))
                .detach()
                .double()
                .cpu()
                .flatten()
                .numpy()
                for g, p in zip(grads, self.params, strict=True)
            ]
        )

    def _call(self, n: int, key: int, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(int(key) % 2**63)
        with torch.set_grad_enabled(grad):
            losses, c = self.closure(int(n), gen)
        return losses.reshape(-1), c.reshape(-1)

    def estimate(self, x: np.ndarray, n: int, key: int) -> Estimate:
        self._set(x)
        losses, c = self._call(n, key, grad=True)
        m = len(losses)
        groups = [g for g in torch.tensor_split(torch.arange(m), min(self.GROUPS, m)) if len(g)]
        if len(groups) > 1:
            gs = np.stack([self._flat_grad(losses[g].mean(), True) for g in groups])
            sizes = np.array([len(g) for g in groups], float)
            g = (gs * sizes[:, None]).sum(0) / m
            # per-sample covariance trace from the spread of the group means
            var_g = float(np.sum(sizes[:, None] * (gs - g) ** 2) / (len(groups) - 1))
            var_f = float(losses.detach().double().var()) if m > 1 else 0.0
        else:
            g = self._flat_grad(losses.mean(), True)
            var_g = var_f = 0.0
        rows = [self._flat_grad(c[i], True) for i in range(len(c))]
        J = np.stack(rows) if rows else np.zeros((0, len(x)))
        return Estimate(
            float(losses.detach().double().mean()),
            g,
            var_f,
            var_g,
            c.detach().double().cpu().numpy(),
            J,
            m,
        )

    def trial(self, x: np.ndarray, n: int, key: int) -> tuple[float, np.ndarray]:
        self._set(x)
        losses, c = self._call(n, key, grad=False)
        return float(losses.double().mean()), c.double().cpu().numpy()

    def hessian(self, x: np.ndarray, lam: np.ndarray, n: int, key: int) -> np.ndarray:
        total = sum(self.sizes)
        if total > 2000:
            raise ConfigError(
                f"hessian='exact' needs at most 2000 parameters, got {total}; use 'bfgs'"
            )
        self._set(x)
        losses, c = self._call(n, key, grad=True)
        lag = losses.mean() + (c * torch.as_tensor(lam, dtype=c.dtype, device=c.device)).sum()
        grads = torch.autograd.grad(lag, self.params, create_graph=True)
        flat = torch.cat([g.flatten() for g in grads])
        rows = [self._flat_grad(flat[i], retain=True) for i in range(total)]
        H = np.stack(rows)
        return 0.5 * (H + H.T)


class StochasticTRSQP(torch.optim.Optimizer):
    """Stochastic TR-SQP as a ``torch.optim`` optimizer (one parameter group).

    ``step(closure)`` runs one iteration; ``closure(n, generator)`` must return
    ``(losses, c)``: the *per-sample* objective values on a batch of ``n`` samples drawn
    with ``generator`` (the same generator seed must give the same batch: the ratio test
    compares the objective at ``x`` and ``x + d`` on the same samples) and the constraint
    vector ``c`` (deterministic). The optimizer picks ``n`` by adaptive sampling. A
    scalar objective works too but then nothing adapts (no variance estimate).
    """

    def __init__(self, params: Iterable[torch.Tensor], config: TRSQPConfig = TRSQPConfig()):
        super().__init__(params, {})
        if len(self.param_groups) != 1:
            raise ConfigError("StochasticTRSQP takes one parameter group")
        self.config = config
        self.trsqp = TRSQPState(radius=config.radius, mu=config.mu, batch=config.batch_min)

    def _params(self) -> list[torch.Tensor]:
        return list(self.param_groups[0]["params"])

    def step(self, closure: Closure) -> dict[str, Any]:  # type: ignore[override]
        """One iteration; the parameters move to the accepted point. Returns its record."""
        params = self._params()
        oracle = _ClosureOracle(params, closure)
        x = torch.cat([p.detach().double().cpu().flatten() for p in params]).numpy().copy()
        x_new, info = trsqp_iteration(oracle, x, self.trsqp, self.config)
        oracle._set(x_new)
        return info
