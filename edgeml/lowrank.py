"""Randomized low-rank factorisation of Dense / Conv weights: the ``--low-rank`` compression stage.

The randomized SVD is the range finder of Halko, Martinsson & Tropp, "Finding
structure with randomness" (SIAM Review 53(2), 2011; arXiv:0909.4061),
Algorithms 4.3/4.4 + 5.1: ``Y = (A A^T)^q A Omega`` for a Gaussian ``Omega``
with ``rank + oversample`` columns (re-orthonormalised after every product, so
``q`` power iterations stay accurate in floating point), ``Q = orth(Y)``, then
the exact SVD of the small ``B = Q^T A``. :func:`hmt_bounds` gives the paper's
expected-error bounds (Theorems 10.5/10.6 and Corollary 10.10) that
:func:`svd_errors` measures against; the tests check them on matrices with
known spectra.

:func:`factorize` replaces each weight layer ``W`` (``out x in``) by two layers
``in -> r -> out`` (``diag(sqrt(s)) V^T`` then ``U diag(sqrt(s))``, the singular
values split evenly so both factors quantize alike; a Conv becomes a ``k x k``
conv to ``r`` channels then a ``1 x 1`` conv), only where that saves weights
(``r (in + out) < in out``). :func:`restructure` makes the same change in a
model without weights (a fresh Brevitas QAT twin, or a model being rebuilt from
a checkpoint): every factor is a power-of-two-scaled quantized layer with a
signed power-of-two ``QuantIdentity`` between the two, so the graph stays
exactly quantized through QONNX, the golden model, hls4ml and da4ml.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeml.errors import ConfigError
from edgeml.models.training import ACT_COLLECT_STATS_STEPS

_FACTORABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


# ------------------------------------------------------------------------ randomized SVD


def _matrix(a: Any) -> np.ndarray:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if arr.ndim != 2 or arr.size == 0:
        raise ConfigError(f"expected a non-empty 2-D matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError("matrix has non-finite entries")
    return arr.astype(np.float64)


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def randomized_range_finder(a: Any, size: int, power_iters: int = 2, seed: int = 0) -> np.ndarray:
    """Orthonormal ``Q`` (m x ``size``) with ``A ~ Q Q^T A`` (HMT Alg. 4.4, subspace iteration).

    ``Y = (A A^T)^q A Omega`` with Gaussian ``Omega`` (n x ``size``), re-orthonormalised
    after every multiplication; deterministic for a given ``seed``. ``size`` is capped at
    ``min(m, n)``.
    """
    a = _matrix(a)
    size = min(_check_int("size", size, 1), *a.shape)
    q_iters = _check_int("power_iters", power_iters, 0)
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((a.shape[1], size))
    q, _ = np.linalg.qr(a @ omega)
    for _ in range(q_iters):
        z, _ = np.linalg.qr(a.T @ q)
        q, _ = np.linalg.qr(a @ z)
    return q


def randomized_svd(
    a: Any, rank: int, oversample: int = 10, power_iters: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank-``rank`` truncated SVD ``(U, s, Vt)`` of ``a`` by the randomized range finder.

    ``rank + oversample`` random probes, ``power_iters`` subspace iterations (HMT
    Alg. 5.1 on Alg. 4.4's ``Q``); ``U`` is m x k, ``s`` (k,) descending, ``Vt`` k x n,
    with ``k = min(rank, m, n)``. numpy float64 (a torch tensor is accepted).
    """
    a = _matrix(a)
    rank = _check_int("rank", rank, 1)
    oversample = _check_int("oversample", oversample, 0)
    k = min(rank, *a.shape)
    q = randomized_range_finder(a, k + oversample, power_iters, seed)
    ub, s, vt = np.linalg.svd(q.T @ a, full_matrices=False)
    return q @ ub[:, :k], s[:k], vt[:k]


def hmt_bounds(
    sigma: np.ndarray, rank: int, oversample: int, power_iters: int = 0
) -> dict[str, float]:
    """HMT's bounds on the *expected* range-finder error ``E||(I - Q Q^T) A||`` for ``rank + p`` probes.

    ``sigma`` is the exact spectrum (descending). ``spectral``: Corollary 10.10
    (Theorem 10.6 at ``q = 0``); ``frobenius``: Theorem 10.5 (``q = 0`` only, else
    ``nan``). Also the optimal (Eckart-Young) errors ``sigma_{k+1}`` and
    ``(sum_{j>k} sigma_j^2)^{1/2}``. Needs ``oversample >= 2``. The truncated
    rank-``k`` rSVD adds at most ``sigma_{k+1}`` to the spectral error (HMT Sec. 9.3).
    """
    s = np.sort(np.asarray(sigma, np.float64))[::-1]
    k, p, q = int(rank), int(oversample), int(power_iters)
    if p < 2:
        raise ConfigError(f"HMT bounds need oversample >= 2, got {oversample!r}")
    tail = s[k:]
    sk1 = float(tail[0]) if tail.size else 0.0
    e = 2 * q + 1
    spec = (1 + math.sqrt(k / (p - 1))) * sk1**e + math.e * math.sqrt(k + p) / p * math.sqrt(
        float(np.sum(tail ** (2 * e)))
    )
    frob = (
        math.sqrt(1 + k / (p - 1)) * math.sqrt(float(np.sum(tail**2))) if q == 0 else float("nan")
    )
    return {
        "spectral": spec ** (1 / e),
        "frobenius": frob,
        "sigma_k1": sk1,
        "tail_frobenius": math.sqrt(float(np.sum(tail**2))),
    }


def svd_errors(a: Any, u: np.ndarray, s: np.ndarray, vt: np.ndarray) -> dict[str, float]:
    """Spectral and Frobenius norms of ``A - U diag(s) Vt``, absolute and relative to ``||A||``."""
    a = _matrix(a)
    r = a - (u * s) @ vt
    spec, frob = float(np.linalg.norm(r, 2)), float(np.linalg.norm(r, "fro"))
    return {
        "spectral": spec,
        "frobenius": frob,
        "rel_spectral": spec / max(float(np.linalg.norm(a, 2)), 1e-300),
        "rel_frobenius": frob / max(float(np.linalg.norm(a, "fro")), 1e-300),
    }


# ------------------------------------------------------------------------ rank selection


def check_low_rank(value: Any, field: str = "low_rank") -> int | float | None:
    """Validate a ``low_rank`` setting: ``None``/``0`` (off), an int rank >= 1, or a fraction in (0, 1]."""
    allowed = "allowed: null or 0 (off), an integer rank >= 1, or an energy fraction in (0, 1]"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"{field} must be a number; got {value!r} ({allowed})")
    if isinstance(value, int | np.integer):
        if value < 0:
            raise ConfigError(f"{field} rank must be >= 1; got {value!r} ({allowed})")
        return int(value) or None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ConfigError(f"{field} energy fraction must be in (0, 1]; got {value!r} ({allowed})")
    return float(value)


def choose_rank(sigma: np.ndarray, low_rank: int | float) -> int:
    """The rank for ``low_rank``: an int (capped at the full rank), or the smallest rank whose
    singular values keep that fraction of the energy ``sum sigma^2``."""
    s = np.asarray(sigma, np.float64)
    lr = check_low_rank(low_rank)
    if lr is None:
        return len(s)
    if isinstance(lr, int):
        return min(lr, len(s))
    energy = np.cumsum(s**2) / max(float(np.sum(s**2)), 1e-300)
    return int(min(len(s), np.searchsorted(energy, lr - 1e-12) + 1))


def _dims(m: nn.Module) -> tuple[int, int]:
    """(fan-in, out) of a weight layer: ``W`` as an ``out x fan_in`` matrix."""
    w = m.weight
    return int(np.prod(w.shape[1:])), int(w.shape[0])


def saves_weights(n_in: int, n_out: int, rank: int) -> bool:
    """True when the two factors ``in -> r -> out`` hold fewer weights than the dense layer."""
    return rank * (n_in + n_out) < n_in * n_out


# ------------------------------------------------------------------------ factorised layers


class LowRank(nn.Module):
    """``second(mid(first(x)))``: a weight layer factorised to rank ``rank``.

    ``first`` (no bias) maps to ``rank`` features or channels, ``second`` (1x1 for a
    conv) carries the original bias; ``mid`` is the identity in float and a signed
    power-of-two quantizer in the QAT twin.
    """

    def __init__(self, first: nn.Module, mid: nn.Module, second: nn.Module, rank: int) -> None:
        super().__init__()
        self.first = first
        self.mid = mid
        self.second = second
        self.rank = rank

    def forward(self, x: Any) -> Any:
        return self.second(self.mid(self.first(x)))


def _conv_kwargs(m: nn.Module) -> dict[str, Any]:
    if m.groups != 1:
        raise ConfigError(f"low-rank factorisation needs groups=1 convolutions, got {m.groups}")
    if m.padding_mode != "zeros":
        raise ConfigError(f"low-rank factorisation needs zero padding, got {m.padding_mode!r}")
    return {"stride": m.stride, "padding": m.padding, "dilation": m.dilation}


def _float_factors(m: nn.Module, rank: int) -> LowRank:
    has_bias = m.bias is not None
    if isinstance(m, nn.Linear):
        first = nn.Linear(m.in_features, rank, bias=False)
        second = nn.Linear(rank, m.out_features, bias=has_bias)
    else:
        conv = nn.Conv1d if isinstance(m, nn.Conv1d) else nn.Conv2d
        first = conv(m.in_channels, rank, m.kernel_size, bias=False, **_conv_kwargs(m))
        second = conv(rank, m.out_channels, 1, bias=has_bias)
    return LowRank(first, nn.Identity(), second, rank)


def _layer_bit_width(m: nn.Module, default: int) -> int:
    try:
        with torch.no_grad():
            return int(m.quant_weight().bit_width)
    except Exception:  # not a Brevitas layer, or one without a quant weight yet
        return default


def _quant_factors(m: nn.Module, rank: int, bit_width: int) -> LowRank:
    with warnings.catch_warnings():  # lazy: the config module validates without Brevitas
        warnings.simplefilter("ignore")  # Brevitas' optional-kernel import warnings
        from brevitas import nn as qnn
        from brevitas.quant import (
            Int8ActPerTensorFixedPoint,
            Int8WeightPerTensorFixedPoint,
            Int16Bias,
        )

    bits = _layer_bit_width(m, bit_width)
    has_bias = m.bias is not None
    wq = {"weight_quant": Int8WeightPerTensorFixedPoint, "weight_bit_width": bits}
    bq = {"bias_quant": Int16Bias} if has_bias else {}
    last = not bool(getattr(m, "return_quant_tensor", True))
    if isinstance(m, nn.Linear):
        first = qnn.QuantLinear(m.in_features, rank, bias=False, return_quant_tensor=True, **wq)
        second = qnn.QuantLinear(
            rank, m.out_features, bias=has_bias, return_quant_tensor=not last, **wq, **bq
        )
    else:
        conv = qnn.QuantConv1d if isinstance(m, nn.Conv1d) else qnn.QuantConv2d
        first = conv(
            m.in_channels,
            rank,
            m.kernel_size,
            bias=False,
            return_quant_tensor=True,
            **_conv_kwargs(m),
            **wq,
        )
        second = conv(
            rank, m.out_channels, 1, bias=has_bias, return_quant_tensor=not last, **wq, **bq
        )
    mid = qnn.QuantIdentity(
        act_quant=Int8ActPerTensorFixedPoint,
        bit_width=bits,
        collect_stats_steps=ACT_COLLECT_STATS_STEPS,
        return_quant_tensor=True,
    )
    return LowRank(first, mid, second, rank)


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def factorable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Dense / Conv layers (float or Brevitas) not already inside a :class:`LowRank`."""
    inside = {
        f"{n}.{c}"
        for n, m in model.named_modules()
        if isinstance(m, LowRank)
        for c in ("first", "second")
    }
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, _FACTORABLE) and n and n not in inside
        and not (isinstance(m, nn.Conv1d | nn.Conv2d) and m.groups != 1)
    }  # fmt: skip


def ranks_of(model: nn.Module) -> dict[str, int]:
    """``{layer name: rank}`` of the factorised layers of ``model`` (empty when none)."""
    return {n: int(m.rank) for n, m in model.named_modules() if isinstance(m, LowRank)}


def restructure(model: nn.Module, ranks: dict[str, int], bit_width: int | None = None) -> nn.Module:
    """Replace the named layers of ``model`` (in place) by empty rank-``r`` factors.

    Float layers get float factors; Brevitas layers get quantized factors with a
    ``bit_width``-bit signed power-of-two quantizer between them (``bit_width``
    defaults to the model's ``bit_width`` attribute). Used to build a factorised QAT
    twin and to rebuild a factorised model from a checkpoint's ``low_rank`` meta.
    """
    for name, rank in ranks.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"low-rank layer {name!r} is not in the model") from None
        if not isinstance(m, _FACTORABLE):
            raise ConfigError(f"low-rank layer {name!r} is a {type(m).__name__}, not Dense/Conv")
        rank = _check_int(f"rank of {name}", rank, 1)
        if hasattr(m, "quant_weight"):
            bits = bit_width if bit_width is not None else getattr(model, "bit_width", None)
            if bits is None:
                raise ConfigError(f"restructure of the QAT layer {name!r} needs a bit_width")
            _set(model, name, _quant_factors(m, rank, int(bits)))
        else:
            _set(model, name, _float_factors(m, rank))
    return model


@dataclass(frozen=True)
class FactorReport:
    """What :func:`factorize` did to one layer (plain types, for ``compress.json``)."""

    layer: str
    shape: tuple[int, int]  # (out, fan_in)
    rank: int
    factorised: bool
    weights_before: int
    weights_after: int
    rel_spectral: float  # ||W - U S Vt||_2 / ||W||_2 of the randomized SVD
    rel_frobenius: float
    optimal_rel_spectral: float  # sigma_{r+1} / sigma_1 (Eckart-Young)
    optimal_rel_frobenius: float
    energy: float  # fraction of sum sigma^2 kept

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["shape"] = list(self.shape)
        return d


def factorize(
    model: nn.Module,
    low_rank: int | float,
    layers: list[str] | None = None,
    *,
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
) -> tuple[nn.Module, list[FactorReport]]:
    """A copy of float ``model`` with each Dense/Conv ``W`` replaced by its randomized SVD factors.

    ``low_rank``: an int rank or an energy fraction in (0, 1] (chosen per layer from
    the exact spectrum). A layer is factorised only where it saves weights. ``layers``
    names the candidates (default: every Dense/Conv with ``groups=1``). Returns the
    model and one :class:`FactorReport` per candidate.
    """
    lr = check_low_rank(low_rank)
    if lr is None:
        raise ConfigError("factorize needs a rank >= 1 or an energy fraction in (0, 1]")
    if any(hasattr(m, "quant_weight") for m in factorable_layers(model).values()):
        raise ConfigError("factorize takes a float model; restructure() builds the QAT twin")
    out = copy.deepcopy(model).cpu()
    cands = factorable_layers(out)
    names = list(cands) if layers is None else list(layers)
    for n in names:
        if n not in cands:
            raise ConfigError(f"layer {n!r} is not a factorable Dense/Conv; allowed: {list(cands)}")
    reports = []
    for i, name in enumerate(names):
        m = cands[name]
        n_in, n_out = _dims(m)
        w = m.weight.detach().double().reshape(n_out, n_in).numpy()
        sigma = np.linalg.svd(w, compute_uv=False)
        rank = choose_rank(sigma, lr)
        do = saves_weights(n_in, n_out, rank)
        u, s, vt = randomized_svd(w, rank, oversample, power_iters, seed=seed + i)
        err = svd_errors(w, u, s, vt)
        tot = float(np.sum(sigma**2))
        reports.append(
            FactorReport(
                layer=name,
                shape=(n_out, n_in),
                rank=rank,
                factorised=do,
                weights_before=n_in * n_out,
                weights_after=rank * (n_in + n_out) if do else n_in * n_out,
                rel_spectral=err["rel_spectral"],
                rel_frobenius=err["rel_frobenius"],
                optimal_rel_spectral=float(sigma[rank] / sigma[0]) if rank < len(sigma) else 0.0,
                optimal_rel_frobenius=math.sqrt(
                    float(np.sum(sigma[rank:] ** 2)) / max(tot, 1e-300)
                ),
                energy=float(np.sum(sigma[:rank] ** 2)) / max(tot, 1e-300),
            )
        )
        if not do:
            continue
        lr_mod = _float_factors(m, rank)
        root = np.sqrt(s)
        first_w = (root[:, None] * vt).reshape(lr_mod.first.weight.shape)
        second_w = (u * root[None, :]).reshape(lr_mod.second.weight.shape)
        with torch.no_grad():
            lr_mod.first.weight.copy_(torch.from_numpy(first_w).to(m.weight.dtype))
            lr_mod.second.weight.copy_(torch.from_numpy(second_w).to(m.weight.dtype))
            if m.bias is not None:
                lr_mod.second.bias.copy_(m.bias.detach())
        _set(out, name, lr_mod)
    return out, reports


def n_weights(model: nn.Module) -> int:
    """Weights (no biases) of every Dense / Conv layer of ``model``."""
    return sum(int(m.weight.numel()) for m in model.modules() if isinstance(m, _FACTORABLE))


def _edge_prefix(model: nn.Module, edge: nn.Module) -> str:
    """The dotted name of ``edge`` inside ``model`` plus ``.`` (``""`` when it is the model)."""
    if edge is model:
        return ""
    for name, m in model.named_modules():
        if m is edge:
            return f"{name}."
    raise ConfigError("the design's edge module is not a sub-module of its model")


def factorize_design(
    spec: Any,
    data: Any,
    float_model: nn.Module,
    low_rank: int | float,
    finetune_epochs: int,
    seed: int = 0,
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The compress stage's low-rank step for a zoo design (``spec``: a ``DesignSpec``).

    Factorises the on-chip layers (``spec.edge``) of the trained ``float_model``,
    fine-tunes the factorised float model for ``finetune_epochs`` with the design's
    loss, and returns ``(model, spec', info)``: ``spec'`` is ``spec`` whose
    ``build_qat`` builds the matching factorised QAT twin (so ``zoo.train_qat`` and
    ``zoo.prune`` work unchanged), ``info`` the plain-typed record for ``compress.json``
    (setting, ranks, weights before/after, float metric before/after the fine-tune,
    each layer's :class:`FactorReport`).
    """
    from edgeml.models import training, zoo

    prefix = _edge_prefix(float_model, spec.edge(float_model))
    names = [f"{prefix}{n}" for n in factorable_layers(spec.edge(float_model))]
    before = n_weights(spec.edge(float_model))
    fact, reports = factorize(float_model, low_rank, names, seed=seed)
    ranks = ranks_of(fact)
    y_test = spec.targets("test", data)
    pre = zoo.evaluate(spec, fact, data.x_test, y_test)[spec.primary]
    if ranks and finetune_epochs:
        gen = training.seed_all(seed)
        y = spec.targets("train", data)
        settings = spec.float_settings or spec.settings
        fact = training.fit(fact, data.x_train, y, spec.loss, finetune_epochs, gen, settings)
    post = zoo.evaluate(spec, fact, data.x_test, y_test)[spec.primary]
    base = spec.build_qat

    def build_qat(bits: int) -> nn.Module:
        return restructure(base(bits), ranks, bits)

    info = {
        "setting": low_rank,
        "ranks": ranks,
        "weights_before": before,
        "weights_after": n_weights(spec.edge(fact)),
        "float_factorised": pre,
        "float_finetuned": post,
        "finetune_epochs": int(finetune_epochs) if ranks else 0,
        "layers": [r.as_dict() for r in reports],
    }
    return fact, dataclasses.replace(spec, build_qat=build_qat), info
