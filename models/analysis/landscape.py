"""Loss landscapes: 1-D/2-D slices, their flatness, and mode connectivity.

A slice evaluates the loss at ``theta0 + alpha * d1 (+ beta * d2)`` over a grid,
with directions ``d`` that are random and *filter-normalised* (Li et al. 2018,
"Visualizing the Loss Landscape of Neural Nets": every filter, i.e. every
output row of a weight tensor, of the direction is rescaled to the norm of the
same filter of the weights, so the picture does not depend on each layer's
scale) or taken from Hessian eigenvectors. Each grid point runs the whole
evaluation set through ``torch.func.functional_call`` (batched, no per-sample
loop); a Brevitas QAT model re-quantises the perturbed float weights in its
weight quantizers, which is exactly the QAT landscape.

The *quantized* landscape goes through the exact integer model: a
:class:`~edgeml.fault_injection.hessian.FloatMirror` of an
:class:`~edgeml.golden.GoldenModel` is evaluated at integer-grid parameters
``codes0 + clip(round(alpha * d1 + beta * d2))`` (directions in code units, each
code clipped to its word's range), whose outputs equal the golden model's run
with those integer weights, code for code.

Mode connectivity: the loss along the straight line between two solutions and
along a trained quadratic Bezier curve (Garipov et al. 2018, "Loss Surfaces,
Mode Connectivity, and Fast Ensembling of DNNs"), with the barrier height
``max_t [L(t) - ((1 - t) L(0) + t L(1))]``.

Losses are ``loss(outputs, targets) -> scalar`` callables that reduce by the
*mean* (a design's ``spec.loss``); evaluation in batches weights each batch's
value by its size, which is exact for mean-reducing losses.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from edgeml.errors import ConfigError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from edgeml.fault_injection.hessian import FloatMirror
    from edgeml.golden import GoldenModel

__all__ = [
    "Landscape2D",
    "accuracy",
    "bezier_connect",
    "eigen_directions",
    "flatness",
    "grid_codes",
    "interpolate",
    "normalize_direction",
    "perturbed_golden",
    "plot_1d",
    "plot_contour",
    "plot_path",
    "plot_surface",
    "quantized_direction",
    "quantized_slice_2d",
    "random_direction",
    "slice_1d",
    "slice_2d",
]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Metric = Callable[[torch.Tensor, torch.Tensor], Any]
Direction = dict[str, torch.Tensor]

NORMS: tuple[str, ...] = ("filter", "layer", "none")
UNITS: tuple[str, ...] = ("codes", "theta")
EVALUATE_WITH: tuple[str, ...] = ("a", "b")


# ----------------------------------------------------------------------------- helpers


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of class scores ``outputs`` (N, C) against integer labels."""
    return (outputs.argmax(dim=-1) == targets).to(torch.float64).mean()


def _value(out: Any) -> torch.Tensor:
    """Plain tensor of a model output (``.value`` of a Brevitas QuantTensor)."""
    return out.value if hasattr(out, "value") else out


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
    return norm


def _grid(values: Any, field_name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field_name} must be a sequence of numbers, got {values!r}") from exc
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ConfigError(f"{field_name} must be a non-empty sequence of finite numbers")
    return arr


def _device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}"
        ) from exc


def _model_on(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` itself when already on ``device``, else a moved copy (the caller's stays put)."""
    p = next(iter(model.parameters()), None)
    if p is None:
        raise ConfigError("the model has no parameters: there is no landscape to slice")
    if p.device == device:
        return model
    return copy.deepcopy(model).to(device)


def _params(model: nn.Module, params: Sequence[str] | None) -> dict[str, torch.Tensor]:
    """The named float parameters to perturb (detached), all of them by default."""
    named = {n: p.detach() for n, p in model.named_parameters() if p.is_floating_point()}
    if params is None:
        return named
    unknown = [n for n in params if n not in named]
    if unknown:
        raise ConfigError(f"params {unknown} are not parameters of the model; it has {list(named)}")
    return {n: named[n] for n in params}


def _xy(x: Any, y: Any, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if xt.shape[0] == 0 or xt.shape[0] != yt.shape[0]:
        raise ConfigError(
            f"x and y need the same non-zero number of samples, got {xt.shape[0]} and {yt.shape[0]}"
        )
    xt = xt.to(device=device, dtype=dtype) if xt.is_floating_point() else xt.to(device)
    if yt.is_floating_point():
        yt = yt.to(device=device, dtype=dtype)
    else:
        yt = yt.to(device=device, dtype=torch.int64)
    return xt, yt


def _check_direction(
    direction: Mapping[str, torch.Tensor], theta: Mapping[str, torch.Tensor], field_name: str
) -> dict[str, torch.Tensor]:
    if not isinstance(direction, Mapping):
        raise ConfigError(
            f"{field_name} must be a dict name -> tensor, got {type(direction).__name__}"
        )
    unknown = [n for n in direction if n not in theta]
    if unknown:
        raise ConfigError(
            f"{field_name} names {unknown}, which are not perturbed parameters; allowed: {list(theta)}"
        )
    out = {}
    for n, d in direction.items():
        d = torch.as_tensor(d)
        if tuple(d.shape) != tuple(theta[n].shape):
            raise ConfigError(
                f"{field_name}[{n!r}] has shape {tuple(d.shape)}, the parameter {tuple(theta[n].shape)}"
            )
        out[n] = d.to(device=theta[n].device, dtype=theta[n].dtype)
    return out


class _Evaluator:
    """Mean loss (and metric) of ``model`` at other parameters, over the whole set in batches."""

    def __init__(
        self,
        model: nn.Module,
        x: Any,
        y: Any,
        loss: Loss,
        metric: Metric | None,
        batch_size: int,
        device: str | torch.device,
        params: Sequence[str] | None,
    ) -> None:
        if not callable(loss):
            raise ConfigError(f"loss must be a callable loss(outputs, targets), got {loss!r}")
        if metric is not None and not callable(metric):
            raise ConfigError(
                f"metric must be a callable metric(outputs, targets) or None, got {metric!r}"
            )
        dev = _device(device)
        self.model = _model_on(model, dev)
        self.theta = _params(self.model, params)
        dtype = next(iter(self.theta.values())).dtype
        self.x, self.y = _xy(x, y, dev, dtype)
        self.n = int(self.x.shape[0])
        self.loss, self.metric = loss, metric
        bs = _check_batch_size(batch_size)
        self.batches = [(self.x[i : i + bs], self.y[i : i + bs]) for i in range(0, self.n, bs)]

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Eval mode (dropout off, BN running stats) for a whole slice, restored after.

        Toggling a Brevitas model's mode walks hundreds of submodules: doing it once
        per slice instead of per grid point saves milliseconds a point.
        """
        was = self.model.training
        if was:
            self.model.eval()
        try:
            yield
        finally:
            if was:
                self.model.train(True)

    def __call__(self, theta: Mapping[str, torch.Tensor]) -> tuple[float, float | None]:
        with self.eval_mode(), torch.no_grad():
            tot, met = 0.0, 0.0
            for xb, yb in self.batches:
                out = _value(functional_call(self.model, dict(theta), (xb,)))
                w = xb.shape[0] / self.n
                tot += float(self.loss(out, yb)) * w
                if self.metric is not None:
                    met += float(self.metric(out, yb)) * w
        return tot, (met if self.metric is not None else None)

    def grad_loss(
        self, theta: Mapping[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor
    ) -> torch.Tensor:
        """Differentiable loss on one batch (for curve training)."""
        return self.loss(_value(functional_call(self.model, dict(theta), (xb,))), yb)


# ----------------------------------------------------------------------------- directions


def normalize_direction(
    direction: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    norm: str = "filter",
    *,
    keep_1d: bool = False,
) -> Direction:
    """Rescale ``direction`` to the scale of ``weights`` (Li et al. 2018).

    ``norm="filter"``: each filter (index along dim 0: a Linear row / output
    neuron, a Conv output channel) of a >= 2-D tensor gets the norm of the same
    filter of the weights. ``"layer"``: each tensor gets its weight tensor's norm.
    ``"none"``: unchanged. 0-D/1-D tensors (biases, norm scales, quantizer scales)
    are zeroed, as in the paper, unless ``keep_1d``, which rescales each to its
    weight's norm (one filter).
    """
    _check_norm(norm)
    out: Direction = {}
    for name, d in direction.items():
        if name not in weights:
            raise ConfigError(
                f"direction names {name!r}, which has no weight; allowed: {list(weights)}"
            )
        w = weights[name].detach()
        d = torch.as_tensor(d).detach().to(device=w.device, dtype=w.dtype).clone()
        if norm == "none":
            out[name] = d
        elif d.dim() <= 1:
            out[name] = d * (w.norm() / (d.norm() + 1e-10)) if keep_1d else torch.zeros_like(d)
        elif norm == "layer":
            out[name] = d * (w.norm() / (d.norm() + 1e-10))
        else:
            dn = d.reshape(d.shape[0], -1).norm(dim=1)
            wn = w.reshape(w.shape[0], -1).norm(dim=1)
            scale = (wn / (dn + 1e-10)).reshape((-1,) + (1,) * (d.dim() - 1))
            out[name] = d * scale
    return out


def random_direction(
    model: nn.Module,
    *,
    seed: int,
    params: Sequence[str] | None = None,
    norm: str = "filter",
    keep_1d: bool = False,
) -> Direction:
    """A Gaussian direction over ``model``'s parameters, normalised per :func:`normalize_direction`.

    Deterministic for a given ``seed`` (a seeded CPU ``torch.Generator``, so CPU and
    CUDA models get the same direction); ``params`` limits it to those names.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    _check_norm(norm)
    theta = _params(model, params)
    gen = torch.Generator().manual_seed(seed)
    raw = {
        n: torch.randn(tuple(p.shape), generator=gen, dtype=torch.float64).to(
            device=p.device, dtype=p.dtype
        )
        for n, p in theta.items()
    }
    return normalize_direction(raw, theta, norm, keep_1d=keep_1d)


def eigen_directions(
    vecs: Any,
    layout: Any,
    norm: str = "none",
    *,
    keep_1d: bool = False,
) -> list[Direction]:
    """Split flat eigenvectors ``vecs`` (k, dim) into per-parameter directions.

    ``layout`` is an ``nn.Module`` (its float parameters in ``named_parameters``
    order), a list of ``(name, shape)`` pairs, or an object with ``unflatten(vec)``
    and ``theta0()`` (e.g. ``ModelHessian``). ``norm="filter"`` rescales each like
    :func:`normalize_direction` (needs the weights: a module or ``theta0()``);
    ``"none"`` keeps the unit eigenvectors.
    """
    _check_norm(norm)
    v = torch.as_tensor(np.asarray(vecs) if not isinstance(vecs, torch.Tensor) else vecs)
    if v.dim() == 1:
        v = v[None]
    if v.dim() != 2 or v.shape[0] == 0:
        raise ConfigError(
            f"vecs must be a (k, dim) array of eigenvectors, got shape {tuple(v.shape)}"
        )
    weights: dict[str, torch.Tensor] | None = None
    if isinstance(layout, nn.Module):
        weights = _params(layout, None)
        names_shapes = [(n, tuple(p.shape)) for n, p in weights.items()]
    elif hasattr(layout, "unflatten"):
        names_shapes = None
        if norm != "none":
            t0 = layout.theta0() if callable(getattr(layout, "theta0", None)) else layout.theta0
            weights = {n: torch.as_tensor(t) for n, t in layout.unflatten(t0).items()}
    else:
        try:
            names_shapes = [(str(n), tuple(int(s) for s in shape)) for n, shape in layout]
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                "layout must be a model, a list of (name, shape) or a ModelHessian"
            ) from exc
    out: list[Direction] = []
    for row in v:
        if names_shapes is None:
            d = {n: torch.as_tensor(t) for n, t in layout.unflatten(row).items()}
        else:
            dim = sum(math.prod(s) for _, s in names_shapes)
            if row.numel() != dim:
                raise ConfigError(
                    f"vecs have {row.numel()} entries but the layout holds {dim} parameters"
                )
            d, off = {}, 0
            for n, s in names_shapes:
                k = math.prod(s)
                d[n] = row[off : off + k].reshape(s)
                off += k
        if norm != "none":
            if weights is None:
                raise ConfigError(
                    "norm='filter'/'layer' needs the weights: pass the model as layout"
                )
            d = normalize_direction(d, weights, norm, keep_1d=keep_1d)
        else:
            ref = weights or {}
            d = {
                n: t.to(dtype=ref[n].dtype, device=ref[n].device) if n in ref else t
                for n, t in d.items()
            }
        out.append(d)
    return out


# ----------------------------------------------------------------------------- slices


@dataclass
class Landscape2D:
    """Loss (and optionally a metric) on the grid ``alphas x betas``: ``loss[i, j]`` at
    ``(alphas[i], betas[j])``."""

    alphas: np.ndarray
    betas: np.ndarray
    loss: np.ndarray
    metric: np.ndarray | None = None
    metric_name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``json.dumps`` works on it); NaN/inf become None."""

        def arr(a: np.ndarray | None) -> Any:
            if a is None:
                return None
            return [
                [v if math.isfinite(v) else None for v in row]
                for row in np.asarray(a, np.float64).tolist()
            ]

        return {
            "alphas": np.asarray(self.alphas, np.float64).tolist(),
            "betas": np.asarray(self.betas, np.float64).tolist(),
            "loss": arr(self.loss),
            "metric": arr(self.metric),
            "metric_name": self.metric_name,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | str) -> Landscape2D:
        """Rebuild from :meth:`to_json`'s dict or its JSON text."""
        if isinstance(obj, str):
            obj = json.loads(obj)
        try:

            def arr(v: Any) -> np.ndarray | None:
                if v is None:
                    return None
                return np.array(
                    [[np.nan if e is None else e for e in row] for row in v], np.float64
                )

            out = cls(
                np.asarray(obj["alphas"], np.float64),
                np.asarray(obj["betas"], np.float64),
                arr(obj["loss"]),  # type: ignore[arg-type]
                arr(obj.get("metric")),
                obj.get("metric_name"),
                dict(obj.get("meta") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a Landscape2D JSON object: {exc}") from exc
        if out.loss.shape != (out.alphas.size, out.betas.size):
            raise ConfigError(
                f"loss shape {out.loss.shape} does not match alphas x betas ({out.alphas.size}, {out.betas.size})"
            )
        return out


def _metric_name(metric: Metric | None) -> str | None:
    return None if metric is None else getattr(metric, "__name__", "metric")


def slice_1d(
    model: nn.Module,
    x: Any,
    y: Any,
    loss: Loss,
    direction: Mapping[str, torch.Tensor],
    alphas: Sequence[float] | np.ndarray,
    *,
    metric: Metric | None = None,
    params: Sequence[str] | None = None,
    batch_size: int = 16384,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Loss (and ``metric``) at ``theta0 + alpha * direction`` for each alpha.

    Returns ``{"alphas", "loss", "metric", "metric_name"}`` (lists). Parameters the
    direction does not name stay at their trained values.
    """
    a = _grid(alphas, "alphas")
    ev = _Evaluator(model, x, y, loss, metric, batch_size, device, params)
    d = _check_direction(direction, ev.theta, "direction")
    losses, mets = [], []
    with ev.eval_mode():
        for al in a:
            th = dict(ev.theta)
            for n, t in d.items():
                th[n] = ev.theta[n] + float(al) * t
            lv, mv = ev(th)
            losses.append(lv)
            mets.append(mv)
    return {
        "alphas": a.tolist(),
        "loss": losses,
        "metric": mets if metric is not None else None,
        "metric_name": _metric_name(metric),
    }


def slice_2d(
    model: nn.Module,
    x: Any,
    y: Any,
    loss: Loss,
    d1: Mapping[str, torch.Tensor],
    d2: Mapping[str, torch.Tensor],
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray,
    *,
    metric: Metric | None = None,
    params: Sequence[str] | None = None,
    batch_size: int = 16384,
    device: str | torch.device = "cpu",
    vmap_chunk: int = 0,
) -> Landscape2D:
    """Loss (and ``metric``) at ``theta0 + alpha * d1 + beta * d2`` on the grid.

    ``vmap_chunk > 0`` evaluates that many grid points at once with
    ``torch.func.vmap`` (plain-torch models only; a Brevitas model falls back to
    one point at a time). The result is the same either way up to float rounding.
    """
    a, b = _grid(alphas, "alphas"), _grid(betas, "betas")
    if isinstance(vmap_chunk, bool) or not isinstance(vmap_chunk, int) or vmap_chunk < 0:
        raise ConfigError(f"vmap_chunk must be an integer >= 0, got {vmap_chunk!r}")
    ev = _Evaluator(model, x, y, loss, metric, batch_size, device, params)
    u = _check_direction(d1, ev.theta, "d1")
    v = _check_direction(d2, ev.theta, "d2")
    names = sorted(set(u) | set(v))
    zeros = {n: torch.zeros_like(ev.theta[n]) for n in names}
    u = {n: u.get(n, zeros[n]) for n in names}
    v = {n: v.get(n, zeros[n]) for n in names}
    L = np.empty((a.size, b.size))
    M = np.empty((a.size, b.size)) if metric is not None else None
    points = [(i, j) for i in range(a.size) for j in range(b.size)]
    brevitas = any(type(m).__module__.startswith("brevitas") for m in ev.model.modules())
    if vmap_chunk > 0 and not brevitas:
        _slice_vmap(ev, u, v, a, b, points, vmap_chunk, L, M)
    else:
        with ev.eval_mode():
            for i, j in points:
                th = dict(ev.theta)
                for n in names:
                    th[n] = ev.theta[n] + float(a[i]) * u[n] + float(b[j]) * v[n]
                lv, mv = ev(th)
                L[i, j] = lv
                if M is not None:
                    M[i, j] = mv
    meta = {"kind": "float" if not brevitas else "qat", "n_samples": ev.n, "params": names}
    return Landscape2D(a, b, L, M, _metric_name(metric), meta)


def _slice_vmap(
    ev: _Evaluator,
    u: Direction,
    v: Direction,
    a: np.ndarray,
    b: np.ndarray,
    points: list[tuple[int, int]],
    chunk: int,
    L: np.ndarray,
    M: np.ndarray | None,
) -> None:
    """Grid points in chunks through ``vmap(functional_call)``: one batched call per chunk."""

    def one(th: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return _value(functional_call(ev.model, th, (xb,)))

    batched = torch.func.vmap(one, in_dims=(0, None))
    dev = next(iter(ev.theta.values())).device
    was = ev.model.training
    ev.model.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(points), chunk):
                pts = points[s : s + chunk]
                al = torch.tensor([a[i] for i, _ in pts], device=dev)
                be = torch.tensor([b[j] for _, j in pts], device=dev)
                th = {}
                for n, t in ev.theta.items():
                    th[n] = t.expand((len(pts), *t.shape))
                    if n in u:
                        shp = (len(pts),) + (1,) * t.dim()
                        th[n] = (
                            t
                            + al.to(t.dtype).reshape(shp) * u[n]
                            + be.to(t.dtype).reshape(shp) * v[n]
                        )
                tot = np.zeros(len(pts))
                met = np.zeros(len(pts))
                for xb, yb in ev.batches:
                    out = batched(th, xb)
                    w = xb.shape[0] / ev.n
                    for k in range(len(pts)):
                        tot[k] += float(ev.loss(out[k], yb)) * w
                        if ev.metric is not None:
                            met[k] += float(ev.metric(out[k], yb)) * w
                for k, (i, j) in enumerate(pts):
                    L[i, j] = tot[k]
                    if M is not None:
                        M[i, j] = met[k]
    finally:
        ev.model.train(was)


# ----------------------------------------------------------------------------- quantized


def _mirror(golden: Any) -> FloatMirror:
    from edgeml.fault_injection.hessian import FloatMirror
    from edgeml.golden import GoldenModel

    if isinstance(golden, FloatMirror):
        return golden
    if not isinstance(golden, GoldenModel):
        raise ConfigError(
            f"golden must be a GoldenModel or FloatMirror, got {type(golden).__name__}"
        )
    return FloatMirror(golden)


def _code_range(seg: Any) -> tuple[np.ndarray, np.ndarray]:
    if seg.signed:
        lo, hi = -(2 ** (seg.width - 1)), 2 ** (seg.width - 1) - 1
    else:
        lo, hi = 0, 2**seg.width - 1
    return np.full(seg.size, lo, np.int64), np.full(seg.size, hi, np.int64)


def quantized_direction(
    golden: GoldenModel | FloatMirror,
    *,
    seed: int,
    norm: str = "filter",
    keep_bias: bool = False,
) -> np.ndarray:
    """A Gaussian direction over the golden model's parameter codes (flat, code units).

    ``norm="filter"``: each filter (output channel: last axis of a Dense/Conv
    weight's codes) gets the L2 norm of that filter's codes; ``"layer"``: each
    weight tensor gets its codes' norm. Bias and lookup-table codes are zeroed
    unless ``keep_bias`` (then each is rescaled to its own codes' norm). The
    layout is :class:`FloatMirror`'s ``theta``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    _check_norm(norm)
    m = _mirror(golden)
    rng = np.random.default_rng(seed)
    d = rng.standard_normal(m.dim)
    if norm == "none":
        return d
    for seg in m.segments:
        part = d[seg.offset : seg.stop]
        codes = seg.codes.astype(np.float64)
        if seg.param != "weight":
            if keep_bias:
                part *= np.linalg.norm(codes) / (np.linalg.norm(part) + 1e-10)
            else:
                part[:] = 0.0
        elif norm == "layer":
            part *= np.linalg.norm(codes) / (np.linalg.norm(part) + 1e-10)
        else:
            p2 = part.reshape(-1, seg.shape[-1])  # a view: filters are columns
            c2 = codes.reshape(-1, seg.shape[-1])
            p2 *= np.linalg.norm(c2, axis=0) / (np.linalg.norm(p2, axis=0) + 1e-10)
    return d


def grid_codes(
    golden: GoldenModel | FloatMirror, d1: np.ndarray, d2: np.ndarray, alpha: float, beta: float
) -> np.ndarray:
    """Flat parameter codes at ``(alpha, beta)``: ``clip(codes0 + round(alpha d1 + beta d2))``.

    Rounding is half-to-even (``np.rint``); each code is clipped to its word's range.
    """
    m = _mirror(golden)
    codes0 = np.concatenate([s.codes for s in m.segments])
    lo = np.concatenate([_code_range(s)[0] for s in m.segments])
    hi = np.concatenate([_code_range(s)[1] for s in m.segments])
    step = np.rint(
        float(alpha) * np.asarray(d1, np.float64) + float(beta) * np.asarray(d2, np.float64)
    )
    return np.clip(codes0 + step.astype(np.int64), lo, hi)


def perturbed_golden(golden: GoldenModel, codes: np.ndarray) -> GoldenModel:
    """A copy of ``golden`` whose weight/bias/table codes are ``codes`` (the mirror's layout)."""
    from edgeml.golden import Lookup

    m = _mirror(golden)
    codes = np.asarray(codes, np.int64).reshape(-1)
    if codes.size != m.dim:
        raise ConfigError(f"codes must have {m.dim} entries (the mirror's theta), got {codes.size}")
    g = copy.deepcopy(golden)
    ops = {op.name: op for op in g.ops}
    for seg in m.segments:
        op = ops[seg.layer]
        val = codes[seg.offset : seg.stop].reshape(seg.shape)
        if seg.param == "weight":
            op.weight = val.copy()
        elif seg.param == "bias":
            op.bias = val.reshape(np.shape(op.bias)).copy()
        elif isinstance(op, Lookup):
            op.table = val.reshape(np.shape(op.table)).astype(np.asarray(op.table).dtype)
    return g


def quantized_slice_2d(
    golden: GoldenModel | FloatMirror,
    x_codes: np.ndarray,
    labels: np.ndarray | Sequence[int] | None,
    d1: np.ndarray | Sequence[float],
    d2: np.ndarray | Sequence[float],
    alphas: Sequence[float] | np.ndarray | None = None,
    betas: Sequence[float] | np.ndarray | None = None,
    *,
    seed: int | None = None,
    units: str = "codes",
    batch_size: int = 16384,
    device: str | torch.device = "cpu",
) -> Landscape2D:
    """The landscape of the exact integer model on its own grid.

    Two call forms: ``(golden, x_codes, labels, d1, d2, alphas, betas)`` with given
    directions, or ``(golden, x_codes, labels, alphas, betas, seed=s)`` (no
    directions), which draws :func:`quantized_direction` with seeds ``s`` and
    ``s + 1`` (``s`` = 0 by default).

    At each ``(alpha, beta)`` the parameter codes are :func:`grid_codes` and the
    float64 mirror (output codes identical to the golden model's with those
    codes) gives the real logits; ``loss`` is their mean cross-entropy against
    ``labels`` (the unperturbed golden top-1 when ``None``) and ``metric`` the
    top-1 accuracy. ``d1``/``d2`` are flat in code units (``units="theta"``: in
    real units, e.g. a Hessian eigenvector of the mirror, divided by the LSB).
    """
    m = _mirror(golden)
    if units not in UNITS:
        raise ConfigError(f"units must be one of {', '.join(UNITS)}; got {units!r}")
    if (alphas is None) != (betas is None):
        raise ConfigError("alphas and betas must both be given (or both left out, see docstring)")
    if alphas is None:  # the short form: (golden, x_codes, labels, alphas, betas, seed=)
        alphas, betas = d1, d2
        s0 = 0 if seed is None else seed
        d1, d2 = quantized_direction(m, seed=s0), quantized_direction(m, seed=s0 + 1)
        units = "codes"
    elif seed is not None:
        raise ConfigError("seed is only used when no directions are given; drop seed or d1/d2")
    a, b = _grid(alphas, "alphas"), _grid(betas, "betas")
    bs = _check_batch_size(batch_size)
    if _device(device).type != "cpu":
        log.warning(
            "quantized_slice_2d runs on the CPU: FloatMirror.forward reads its inputs through numpy"
        )
    dev = torch.device("cpu")
    dirs = []
    for nm, d in (("d1", d1), ("d2", d2)):
        d = np.asarray(d, np.float64).reshape(-1)
        if d.size != m.dim or not np.all(np.isfinite(d)):
            raise ConfigError(
                f"{nm} must be {m.dim} finite numbers (the mirror's theta), got {d.size}"
            )
        dirs.append(d / m.lsb if units == "theta" else d)
    x = np.asarray(x_codes)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ConfigError("x_codes must hold at least one input vector")
    xt = torch.as_tensor(x.astype(np.float64), device=dev)
    lsb = torch.as_tensor(m.lsb, device=dev)
    out_scale = m.out_scale.to(dev)
    mirror = m
    with torch.no_grad():
        if labels is None:
            y = mirror.forward(xt).mul(out_scale).reshape(x.shape[0], -1).argmax(1)
        else:
            y = torch.as_tensor(np.asarray(labels, np.int64).reshape(-1), device=dev)
            if y.numel() != x.shape[0]:
                raise ConfigError(f"got {x.shape[0]} input vectors but {y.numel()} labels")
        L = np.empty((a.size, b.size))
        M = np.empty((a.size, b.size))
        for i, al in enumerate(a):
            for j, be in enumerate(b):
                codes = grid_codes(m, dirs[0], dirs[1], al, be)
                theta = torch.as_tensor(codes.astype(np.float64), device=dev) * lsb
                lv, ok = 0.0, 0.0
                for s in range(0, x.shape[0], bs):
                    xb = xt[s : s + bs]
                    logits = (mirror.forward(xb, theta) * out_scale).reshape(xb.shape[0], -1)
                    yb = y[s : s + bs]
                    lv += float(torch.nn.functional.cross_entropy(logits, yb, reduction="sum"))
                    ok += float((logits.argmax(1) == yb).sum())
                L[i, j] = lv / x.shape[0]
                M[i, j] = ok / x.shape[0]
    meta = {"kind": "quantized", "n_samples": int(x.shape[0]), "units": "codes", "dim": int(m.dim)}
    return Landscape2D(a, b, L, M, "accuracy", meta)


# ----------------------------------------------------------------------------- flatness


def flatness(
    landscape: Landscape2D | Mapping[str, Any],
    *,
    radii: Iterable[float] = (0.25, 0.5),
    eps_abs: float = 0.1,
    eps_rel: float = 0.01,
) -> dict[str, Any]:
    """Summary numbers of a 2-D (or 1-D) slice.

    Coordinates are normalised to the grid's half-extent, ``u = alpha / max|alpha|``
    (and ``v`` likewise); the centre is the grid point nearest (0, 0).

    - ``center_loss`` (and ``center_metric``): the loss at the centre.
    - ``mean_increase_r{r}`` / ``max_increase_r{r}``: mean / max of
      ``loss - center_loss`` over grid points with ``sqrt(u**2 + v**2) <= r``.
    - ``flat_area_abs``: fraction of the grid with ``loss <= center_loss + eps_abs``;
      ``flat_area_rel``: with ``loss <= center_loss * (1 + eps_rel)`` (the
      epsilon-flat areas).
    - ``sharpness_alpha_r{r}`` / ``sharpness_beta_r{r}``: along the 1-D lines
      through the centre, the max increase at ``|u| <= r`` (Keskar-style sharpness).
    - ``metric_drop_r{r}`` when a metric is present: ``center_metric`` minus the
      minimum metric within radius r.
    - Headline numbers: ``sharpness`` = ``max_increase_r{r0}`` and ``flat_area`` =
      ``flat_area_abs``, ``r0`` the first radius.
    """
    if isinstance(landscape, Landscape2D):
        a, b = np.asarray(landscape.alphas, np.float64), np.asarray(landscape.betas, np.float64)
        L = np.asarray(landscape.loss, np.float64)
        M = None if landscape.metric is None else np.asarray(landscape.metric, np.float64)
    elif isinstance(landscape, Mapping) and "alphas" in landscape and "loss" in landscape:
        a = _grid(landscape["alphas"], "alphas")
        b = np.zeros(1)
        L = np.asarray(landscape["loss"], np.float64).reshape(-1, 1)
        met = landscape.get("metric")
        M = None if met is None else np.asarray(met, np.float64).reshape(-1, 1)
    else:
        raise ConfigError("landscape must be a Landscape2D or a slice_1d dict (alphas, loss)")
    radii = [float(r) for r in radii]
    if not radii or any(not math.isfinite(r) or r <= 0 for r in radii):
        raise ConfigError(f"radii must be positive numbers, got {radii!r}")
    if L.shape != (a.size, b.size):
        raise ConfigError(f"loss shape {L.shape} does not match the grid ({a.size}, {b.size})")
    ua = a / (np.abs(a).max() or 1.0)
    vb = b / (np.abs(b).max() or 1.0)
    ic, jc = int(np.argmin(np.abs(a))), int(np.argmin(np.abs(b)))
    c = float(L[ic, jc])
    inc = L - c
    rr = np.sqrt(ua[:, None] ** 2 + vb[None, :] ** 2)
    out: dict[str, Any] = {
        "center": [float(a[ic]), float(b[jc])],
        "center_loss": c,
        "flat_area_abs": float(np.mean(L <= c + eps_abs)),
        "flat_area_rel": float(np.mean(L <= c * (1 + eps_rel))),
        "eps_abs": eps_abs,
        "eps_rel": eps_rel,
        "max_loss": float(np.nanmax(L)),
    }
    if M is not None:
        out["center_metric"] = float(M[ic, jc])
    for r in radii:
        key = f"{r:g}"
        inside = rr <= r + 1e-12
        out[f"mean_increase_r{key}"] = float(np.mean(inc[inside]))
        out[f"max_increase_r{key}"] = float(np.max(inc[inside]))
        out[f"sharpness_alpha_r{key}"] = float(np.max(inc[np.abs(ua) <= r + 1e-12, jc]))
        if b.size > 1:
            out[f"sharpness_beta_r{key}"] = float(np.max(inc[ic, np.abs(vb) <= r + 1e-12]))
        if M is not None:
            out[f"metric_drop_r{key}"] = float(M[ic, jc] - np.min(M[inside]))
    out["sharpness"] = out[f"max_increase_r{radii[0]:g}"]
    out["sharpness_radius"] = radii[0]
    out["flat_area"] = out["flat_area_abs"]
    return out


# ----------------------------------------------------------------------------- connectivity


def _match(model_a: nn.Module, model_b: nn.Module) -> tuple[list[tuple[str, str]], str]:
    """Pairs (name in a, name in b) of the parameters to connect, and how they were matched.

    By name when every >= 1-D float parameter of the smaller side has a same-named,
    same-shaped twin (float vs Brevitas QAT of one design: the QAT side's extra
    quantizer scales stay at its own values); otherwise by the order of the
    >= 1-D parameters, which must then pair up with equal shapes.
    """
    pa = {n: p for n, p in model_a.named_parameters() if p.is_floating_point() and p.dim() >= 1}
    pb = {n: p for n, p in model_b.named_parameters() if p.is_floating_point() and p.dim() >= 1}
    small, big = (pa, pb) if len(pa) <= len(pb) else (pb, pa)
    if small and all(n in big and big[n].shape == p.shape for n, p in small.items()):
        return [(n, n) for n in small], "name"
    la, lb = list(pa.items()), list(pb.items())
    if len(la) != len(lb) or any(p.shape != q.shape for (_, p), (_, q) in zip(la, lb, strict=True)):
        raise ConfigError(
            "model_a and model_b have no matching parameters: names "
            f"{[n for n, _ in la]} vs {[n for n, _ in lb]} differ and shapes do not pair up in order"
        )
    return [(na, nb) for (na, _), (nb, _) in zip(la, lb, strict=True)], "order"


def _barrier(t: np.ndarray, loss: np.ndarray) -> float:
    return float(np.max(loss - ((1 - t) * loss[0] + t * loss[-1])))


def _connect_setup(
    model_a: nn.Module,
    model_b: nn.Module,
    x: Any,
    y: Any,
    loss: Loss,
    metric: Metric | None,
    batch_size: int,
    device: str | torch.device,
    evaluate_with: str,
) -> tuple[
    _Evaluator, dict[str, torch.Tensor], dict[str, torch.Tensor], list[tuple[str, str]], str
]:
    if evaluate_with not in EVALUATE_WITH:
        raise ConfigError(
            f"evaluate_with must be one of {', '.join(EVALUATE_WITH)}; got {evaluate_with!r}"
        )
    pairs, how = _match(model_a, model_b)
    # t = 0 is always model_a's weights and t = 1 model_b's; keys are the evaluating model's names
    evm, other = (model_a, model_b) if evaluate_with == "a" else (model_b, model_a)
    ev = _Evaluator(evm, x, y, loss, metric, batch_size, device, None)
    po = dict(other.named_parameters())
    keyed = [(na, nb) if evaluate_with == "a" else (nb, na) for na, nb in pairs]  # (own, other)
    mine = {k: ev.theta[k] for k, _ in keyed}
    theirs = {
        k: po[o].detach().to(device=ev.theta[k].device, dtype=ev.theta[k].dtype) for k, o in keyed
    }
    ta, tb = (mine, theirs) if evaluate_with == "a" else (theirs, mine)
    return ev, ta, tb, pairs, how


def interpolate(
    model_a: nn.Module,
    model_b: nn.Module,
    x: Any,
    y: Any,
    loss: Loss,
    n: int = 21,
    *,
    metric: Metric | None = None,
    batch_size: int = 16384,
    device: str | torch.device = "cpu",
    evaluate_with: str = "a",
) -> dict[str, Any]:
    """Loss (and metric) along ``theta(t) = (1 - t) theta_a + t theta_b``, t in [0, 1].

    The path is evaluated in ``model_a``'s architecture (``evaluate_with="b"``:
    ``model_b``'s), so for float vs QAT the QAT model's weights are run through
    the float graph (or the float weights through the quantizers). ``barrier``
    is ``max_t [L(t) - ((1 - t) L(0) + t L(1))]``; ``matched_by`` says whether
    parameters were paired by name or by order.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"n must be an integer >= 2, got {n!r}")
    ev, ta, tb, pairs, how = _connect_setup(
        model_a, model_b, x, y, loss, metric, batch_size, device, evaluate_with
    )
    t = np.linspace(0.0, 1.0, n)
    losses, mets = [], []
    for tv in t:
        th = dict(ev.theta)
        for k in ta:
            th[k] = ta[k] if tv == 0 else tb[k] if tv == 1 else (1 - tv) * ta[k] + tv * tb[k]
        lv, mv = ev(th)
        losses.append(lv)
        mets.append(mv)
    la = np.asarray(losses)
    return {
        "t": t.tolist(),
        "loss": losses,
        "metric": mets if metric is not None else None,
        "metric_name": _metric_name(metric),
        "barrier": _barrier(t, la),
        "matched_by": how,
        "pairs": pairs,
        "evaluate_with": evaluate_with,
    }


def bezier_connect(
    model_a: nn.Module,
    model_b: nn.Module,
    x: Any,
    y: Any,
    loss: Loss,
    *,
    steps: int = 200,
    lr: float = 1e-2,
    seed: int = 0,
    n: int = 21,
    train_batch: int = 256,
    metric: Metric | None = None,
    batch_size: int = 16384,
    device: str | torch.device = "cpu",
    evaluate_with: str = "a",
) -> dict[str, Any]:
    """Train the control point of a quadratic Bezier curve between two solutions.

    ``phi(t) = (1 - t)^2 theta_a + 2 t (1 - t) theta_c + t^2 theta_b``; ``theta_c``
    starts at the midpoint and each of ``steps`` Adam steps samples ``t ~ U(0, 1)``
    and a minibatch of ``train_batch`` samples from a seeded generator (Garipov et
    al. 2018). Returns the loss/metric along the curve at ``n`` points, its
    ``barrier`` (as :func:`interpolate`), the training losses, and
    ``mid_loss_before`` / ``mid_loss_after`` (the loss at t = 0.5 before and after
    training: the midpoint start is the linear path's middle).
    """
    for name, v, lo in (("steps", steps, 0), ("n", n, 2), ("train_batch", train_batch, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
    if (
        isinstance(lr, bool)
        or not isinstance(lr, (int, float))
        or not (lr > 0 and math.isfinite(lr))
    ):
        raise ConfigError(f"lr must be a positive number, got {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    ev, ta, tb, pairs, how = _connect_setup(
        model_a, model_b, x, y, loss, metric, batch_size, device, evaluate_with
    )

    def curve(tv: float, tc: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        th = dict(ev.theta)
        for k in ta:
            if tv == 0:
                th[k] = ta[k]
            elif tv == 1:
                th[k] = tb[k]
            else:
                th[k] = (1 - tv) ** 2 * ta[k] + 2 * tv * (1 - tv) * tc[k] + tv**2 * tb[k]
        return th

    tc = {k: (0.5 * (ta[k] + tb[k])).clone().requires_grad_(True) for k in ta}
    mid_before = ev(curve(0.5, {k: v.detach() for k, v in tc.items()}))[0]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(list(tc.values()), lr=float(lr))
    hist: list[float] = []
    was = ev.model.training
    ev.model.eval()  # deterministic layers (dropout off, BN running stats) as in evaluation
    try:
        for _ in range(steps):
            tv = float(torch.rand((), generator=gen))
            idx = torch.randint(0, ev.n, (min(train_batch, ev.n),), generator=gen).to(ev.x.device)
            opt.zero_grad()
            lv = ev.grad_loss(curve(tv, tc), ev.x[idx], ev.y[idx])
            lv.backward()
            opt.step()
            hist.append(float(lv.detach()))
    finally:
        ev.model.train(was)
    tcd = {k: v.detach() for k, v in tc.items()}
    t = np.linspace(0.0, 1.0, n)
    losses, mets = [], []
    for tv in t:
        lv, mv = ev(curve(float(tv), tcd))
        losses.append(lv)
        mets.append(mv)
    return {
        "t": t.tolist(),
        "loss": losses,
        "metric": mets if metric is not None else None,
        "metric_name": _metric_name(metric),
        "barrier": _barrier(t, np.asarray(losses)),
        "train_loss": hist,
        "mid_loss_before": mid_before,
        "mid_loss_after": ev(curve(0.5, tcd))[0],
        "matched_by": how,
        "pairs": pairs,
        "evaluate_with": evaluate_with,
        "control": {k: v.cpu().numpy() for k, v in tcd.items()},
    }


# ----------------------------------------------------------------------------- plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_contour(
    l2d: Landscape2D, ax: Any = None, *, levels: int = 30, log: bool = False
) -> Figure:
    """Filled contour of the loss (``log``: of log10 loss), the centre marked with a star."""
    plt = _plt()
    fig = ax.figure if ax is not None else plt.figure(figsize=(5, 4.2))
    ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
    z = np.asarray(l2d.loss, np.float64)
    z = np.log10(np.maximum(z, 1e-12)) if log else z
    cs = ax.contourf(l2d.betas, l2d.alphas, z, levels=levels, cmap="viridis")
    ax.contour(l2d.betas, l2d.alphas, z, levels=levels, colors="k", linewidths=0.3, alpha=0.4)
    fig.colorbar(cs, ax=ax, label="log10 loss" if log else "loss")
    ax.plot([0], [0], marker="*", color="red", markersize=12, linestyle="none", label="trained")
    ax.set_xlabel("beta (d2)")
    ax.set_ylabel("alpha (d1)")
    ax.set_title(f"loss landscape ({l2d.meta.get('kind', '')})".replace(" ()", ""))
    fig.tight_layout()
    return fig


def plot_surface(l2d: Landscape2D, *, log: bool = False) -> Figure:
    """3-D surface of the loss over the grid."""
    plt = _plt()
    fig = plt.figure(figsize=(6, 4.5))
    ax = fig.add_subplot(1, 1, 1, projection="3d")
    bb, aa = np.meshgrid(l2d.betas, l2d.alphas)
    z = np.asarray(l2d.loss, np.float64)
    z = np.log10(np.maximum(z, 1e-12)) if log else z
    ax.plot_surface(bb, aa, z, cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel("beta (d2)")
    ax.set_ylabel("alpha (d1)")
    ax.set_zlabel("log10 loss" if log else "loss")
    return fig


def plot_1d(
    slices: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    labels: Sequence[str] | None = None,
    ax: Any = None,
) -> Figure:
    """Loss against alpha for one or more :func:`slice_1d` results (metric on a twin axis)."""
    plt = _plt()
    items = [slices] if isinstance(slices, Mapping) else list(slices)
    labels = list(labels) if labels is not None else [f"slice {i}" for i in range(len(items))]
    if len(labels) != len(items):
        raise ConfigError(f"labels has {len(labels)} entries for {len(items)} slices")
    fig = ax.figure if ax is not None else plt.figure(figsize=(5, 3.5))
    ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
    ax2 = None
    for s, lab in zip(items, labels, strict=True):
        (line,) = ax.plot(s["alphas"], s["loss"], label=lab)
        if s.get("metric") is not None:
            ax2 = ax2 or ax.twinx()
            ax2.plot(s["alphas"], s["metric"], linestyle="--", color=line.get_color())
            ax2.set_ylabel(f"{s.get('metric_name') or 'metric'} (dashed)")
    ax.set_xlabel("alpha")
    ax.set_ylabel("loss")
    ax.legend()
    return fig


def plot_path(
    linear: Mapping[str, Any], bezier: Mapping[str, Any] | None = None, ax: Any = None
) -> Figure:
    """Loss along the linear path and (when given) the trained Bezier curve, barriers in the legend."""
    plt = _plt()
    fig = ax.figure if ax is not None else plt.figure(figsize=(5, 3.5))
    ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
    ax.plot(
        linear["t"],
        linear["loss"],
        marker="o",
        ms=3,
        label=f"linear (barrier {linear['barrier']:.3g})",
    )
    if bezier is not None:
        ax.plot(
            bezier["t"],
            bezier["loss"],
            marker="s",
            ms=3,
            label=f"Bezier (barrier {bezier['barrier']:.3g})",
        )
    ax.set_xlabel("t")
    ax.set_ylabel("loss")
    ax.set_title("mode connectivity")
    ax.legend()
    return fig
