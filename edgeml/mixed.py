"""Per-layer mixed precision for Brevitas QAT models, and HAWQ-V2 sensitivity to choose it.

A built-in design builds its QAT twin at one bit width (``DesignSpec.build_qat``).
:func:`apply_layer_bits` then gives named weight layers their own width, with
no change to the design module: each Brevitas quantizer proxy is rebuilt from
its own dependency injector with ``.let(bit_width=b)`` (``brevitas.inject``),
under the same attribute name, so parameter names, ``init_from_float`` and
state dicts are unchanged. A layer's width applies to

* its weights (``weight_quant``), and
* the activation quantizer that requantises its output: its own ``output_quant``
  where that is enabled, else the first quantized activation (QuantReLU,
  QuantIdentity, ...) called after it and before the next weight layer, in
  forward order. A last layer whose output is the raw accumulator (the jet
  tagger's logits) has none; only its weights change.

Biases keep the design's ``Int16Bias`` (scale = input scale x weight scale), so
the exported QONNX stays exact through the golden model and hls4ml.

Sensitivity (HAWQ-V2, Dong et al. 2020): :func:`layer_hessian_traces` is the
Hutchinson trace of the loss Hessian restricted to each layer's weights,
divided by its parameter count (the mean eigenvalue of that block), computed
with :class:`edgeml.models.analysis.curvature.ModelHessian`. HAWQ-V2 takes it
on the *float* model: the quantization perturbation ``Q(W) - W`` is a step
away from the float weights, and the float loss is smooth there, whereas a QAT
model's Hessian is that of its straight-through surrogate. Both are accepted.
:func:`allocate_bits` ranks assignments by ``sum_l trace_l / n_l * ||Q_b(W_l) - W_l||^2``
and returns the Pareto set over total weight bits.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeml.errors import ConfigError

log = logging.getLogger(__name__)

#: Assignments enumerated exhaustively by :func:`allocate_bits` up to this many; beyond, greedy.
EXHAUSTIVE_LIMIT = 200_000
_WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# ------------------------------------------------------------------ structure


def _is_weight_layer(m: nn.Module) -> bool:
    wq = getattr(m, "weight_quant", None)
    return isinstance(m, _WEIGHT_TYPES) and hasattr(wq, "quant_injector")


def _is_act_layer(m: nn.Module) -> bool:
    aq = getattr(m, "act_quant", None)
    return (
        not _is_weight_layer(m)
        and hasattr(aq, "quant_injector")
        and bool(getattr(aq, "is_quant_enabled", False))
        and "bit_width" in aq.quant_injector
    )


def _call_order(model: nn.Module, input_shape: Sequence[int] | None) -> list[tuple[str, str]]:
    """``[(kind, name)]`` of weight ("w") and activation ("a") quant layers, in forward order.

    With ``input_shape`` (no batch dimension) a forward pass of a copy of the
    model on zeros, in eval mode, records the order of calls (the model itself is
    untouched, so activation statistics are not disturbed); without it, or where
    that forward fails (e.g. a model taking integer tokens), module registration
    order stands in for it.
    """
    mods = [
        (("w" if _is_weight_layer(m) else "a"), name, m)
        for name, m in model.named_modules()
        if _is_weight_layer(m) or _is_act_layer(m)
    ]
    if input_shape is None:
        return [(k, n) for k, n, _ in mods]
    seen: list[tuple[str, str]] = []
    twin = copy.deepcopy(model).eval()
    named = dict(twin.named_modules())
    for k, n, _ in mods:
        named[n].register_forward_hook(lambda _m, _i, _o, k=k, n=n: seen.append((k, n)))
    try:
        with torch.no_grad():
            twin(torch.zeros((1, *tuple(int(d) for d in input_shape))))
    except Exception as exc:  # any failure: fall back, and say so
        log.warning("forward trace on zeros failed (%s); using module registration order", exc)
        return [(k, n) for k, n, _ in mods]
    order: list[tuple[str, str]] = []
    for item in seen:  # a module called twice counts at its first call
        if item not in order:
            order.append(item)
    return order


def quant_layers(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[str]:
    """Names of the Brevitas weight layers (QuantLinear / QuantConv*) a per-layer width can address.

    In forward order: traced on zeros when ``input_shape`` (without batch) is
    given, else in module registration order (forward order in every built-in design).
    """
    return [n for k, n in _call_order(model, input_shape) if k == "w"]


def output_quantizers(
    model: nn.Module, input_shape: Sequence[int] | None = None
) -> dict[str, str | None]:
    """``{weight layer: module whose quantizer requantises its output}`` (see module doc).

    The value is the layer itself where its ``output_quant`` is enabled, the next
    quantized activation module otherwise, and ``None`` where the output is a raw
    accumulator (a last layer without an output quantizer).
    """
    order = _call_order(model, input_shape)
    mods = dict(model.named_modules())
    out: dict[str, str | None] = {}
    for i, (kind, name) in enumerate(order):
        if kind != "w":
            continue
        oq = getattr(mods[name], "output_quant", None)
        if oq is not None and getattr(oq, "is_quant_enabled", False):
            out[name] = name
            continue
        follows = order[i + 1] if i + 1 < len(order) else None
        out[name] = follows[1] if follows is not None and follows[0] == "a" else None
    return out


def _rebuild(module: nn.Module, attr: str, bit_width: int) -> None:
    """Replace ``module.<attr>`` (a Brevitas quant proxy) by one built from its injector at
    ``bit_width``; the attribute name, hence the state-dict keys, is unchanged."""
    proxy = getattr(module, attr)
    inj = proxy.quant_injector.let(bit_width=int(bit_width))
    new = type(proxy)(module, inj)
    new.train(proxy.training)
    setattr(module, attr, new)


def proxy_bit_width(module: nn.Module, attr: str) -> int:
    """The bit width a Brevitas quantizer proxy ``module.<attr>`` is built with."""
    return int(getattr(module, attr).quant_injector.bit_width)


def check_layer_bits(
    layer_bits: Mapping[str, Any], allowed: Sequence[str], bit_widths: tuple[int, int]
) -> dict[str, int]:
    """Validate ``{layer: bits}``: names among ``allowed``, integer widths within ``bit_widths``."""
    if not isinstance(layer_bits, Mapping):
        raise ConfigError(
            f"compress.layers must map layer names to bit widths, got {type(layer_bits).__name__}"
        )
    lo, hi = bit_widths
    out: dict[str, int] = {}
    for name, b in layer_bits.items():
        if name not in allowed:
            raise ConfigError(
                f"compress.layers: unknown layer {name!r}; the model's quantized layers are: "
                f"{', '.join(allowed)}"
            )
        if isinstance(b, bool) or not isinstance(b, int | np.integer) or not lo <= b <= hi:
            raise ConfigError(
                f"compress.layers.{name}.bit_width must be an integer from {lo} to {hi} for "
                f"this design, got {b!r}"
            )
        out[str(name)] = int(b)
    return dict(sorted(out.items()))


def apply_layer_bits(
    model: nn.Module,
    layer_bits: Mapping[str, int],
    *,
    bit_widths: tuple[int, int] = (2, 8),
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """Give each named weight layer its own weight and output-activation bit width, in place.

    ``layer_bits`` maps names of :func:`quant_layers` to widths in ``bit_widths``
    (the design's range); other layers keep theirs. Call it on a freshly built
    QAT model, before ``init_from_float`` and training (activation scales that
    collect statistics start afresh). Two layers whose outputs meet in one
    activation quantizer must then agree on its width. The assignment is kept as
    ``model.layer_bits`` (merged with any earlier one) for checkpoints. Returns ``model``.
    """
    allowed = quant_layers(model, input_shape)
    if not allowed:
        raise ConfigError("per-layer bit widths need a Brevitas QAT model (no quantized layers)")
    bits = check_layer_bits(layer_bits, allowed, bit_widths)
    targets = output_quantizers(model, input_shape)
    mods = dict(model.named_modules())
    act_width: dict[str, tuple[str, int]] = {}
    for name, b in bits.items():
        act = targets[name]
        if act is None or act == name:
            continue
        if act in act_width and act_width[act][1] != b:
            other, ob = act_width[act]
            raise ConfigError(
                f"compress.layers: {other} ({ob} bits) and {name} ({b} bits) are requantised by "
                f"the same activation {act!r}; give them the same bit width"
            )
        act_width[act] = (name, b)
    for name, b in bits.items():
        layer = mods[name]
        _rebuild(layer, "weight_quant", b)
        if targets[name] == name:
            _rebuild(layer, "output_quant", b)
    for act, (_, b) in act_width.items():
        _rebuild(mods[act], "act_quant", b)
    merged = dict(getattr(model, "layer_bits", None) or {})
    merged.update(bits)
    model.layer_bits = dict(sorted(merged.items()))
    return model


def layer_widths(
    model: nn.Module, input_shape: Sequence[int] | None = None
) -> dict[str, dict[str, int | None]]:
    """``{layer: {"weight": bits, "activation": bits or None}}`` as the model is built now."""
    mods = dict(model.named_modules())
    out: dict[str, dict[str, int | None]] = {}
    for name, act in output_quantizers(model, input_shape).items():
        w = proxy_bit_width(mods[name], "weight_quant")
        if act is None:
            a = None
        elif act == name:
            a = proxy_bit_width(mods[name], "output_quant")
        else:
            a = proxy_bit_width(mods[act], "act_quant")
        out[name] = {"weight": w, "activation": a}
    return out


# ------------------------------------------------------------------ sensitivity


def _weight_modules(model: nn.Module) -> dict[str, nn.Module]:
    quant = [n for n, m in model.named_modules() if _is_weight_layer(m)]
    if quant:
        mods = dict(model.named_modules())
        return {n: mods[n] for n in quant}
    return {n: m for n, m in model.named_modules() if isinstance(m, _WEIGHT_TYPES)}


def layer_hessian_traces(
    spec: Any,
    data: Any,
    model: nn.Module,
    *,
    n_probes: int = 32,
    n_samples: int | None = 2000,
    seed: int = 0,
    layers: Sequence[str] | None = None,
) -> dict[str, float]:
    """HAWQ-V2 sensitivity: ``tr(H_l) / n_l`` of each weight layer ``l`` (Hutchinson).

    ``H_l`` is the Hessian of the design's mean training loss (``spec.loss`` on
    ``n_samples`` training samples drawn with ``seed``; ``None``: all) with
    respect to layer ``l``'s weights only, ``n_l`` their count; ``n_probes``
    Rademacher probes (one Hessian-vector product each, exact double backward,
    :class:`~edgeml.models.analysis.curvature.ModelHessian`). Pass the trained
    *float* model for HAWQ-V2 as published (see module doc); a QAT model gives
    the trace of its straight-through surrogate. Layers: every weight layer (or
    ``layers``), in registration order. Deterministic for a given ``seed``.
    """
    from edgeml.models.analysis.curvature import ModelHessian

    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 2:
        raise ConfigError(f"n_probes must be an integer >= 2, got {n_probes!r}")
    x = np.asarray(data.x_train)
    y = np.asarray(spec.targets("train", data))
    if n_samples is not None:
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ConfigError(f"n_samples must be a positive integer or None, got {n_samples!r}")
        if n_samples < len(x):
            idx = np.sort(np.random.default_rng(seed).choice(len(x), n_samples, replace=False))
            x, y = x[idx], y[idx]
    mods = _weight_modules(model)
    names = list(mods) if layers is None else list(layers)
    bad = [n for n in names if n not in mods]
    if bad:
        raise ConfigError(f"unknown layer(s) {bad}; the model's weight layers are: {list(mods)}")
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        h = ModelHessian(model, x, y, spec.loss, params=[f"{name}.weight"], hvp_mode="exact")
        tr, _ = h.trace(n_probes, method="hutchinson", seed=seed + 1000 * i)
        out[name] = float(tr) / h.dim
    return out


def weight_counts(model: nn.Module) -> dict[str, int]:
    """``{layer: number of weights}`` of every weight layer (what a bit width multiplies)."""
    return {n: int(m.weight.numel()) for n, m in _weight_modules(model).items()}


def pot_quantize(w: np.ndarray, bits: int) -> np.ndarray:
    """``w`` on the grid of a signed ``bits``-bit per-tensor power-of-two quantizer.

    The recipe of the built-in designs (``Int8WeightPerTensorFixedPoint``):
    scale ``2**ceil(log2(max|w| / (2**(b-1) - 1)))``, round half to even,
    narrow range ``[-(2**(b-1) - 1), 2**(b-1) - 1]``.
    """
    w = np.asarray(w, np.float64)
    qmax = 2 ** (int(bits) - 1) - 1
    amax = float(np.max(np.abs(w))) if w.size else 0.0
    if amax == 0.0:
        return np.zeros_like(w)
    scale = 2.0 ** math.ceil(math.log2(amax / qmax))
    return np.clip(np.rint(w / scale), -qmax, qmax) * scale


def quant_perturbation(model: nn.Module, choices: Sequence[int]) -> dict[str, dict[int, float]]:
    """``{layer: {bits: ||Q_b(W) - W||^2}}`` of a (float) model's weights, per :func:`pot_quantize`."""
    out: dict[str, dict[int, float]] = {}
    for name, m in _weight_modules(model).items():
        w = m.weight.detach().cpu().double().numpy()
        out[name] = {int(b): float(np.sum((pot_quantize(w, b) - w) ** 2)) for b in choices}
    return out


def assignment_cost(
    assignment: Mapping[str, int],
    traces: Mapping[str, float],
    n_params: Mapping[str, int],
    perturbation: Mapping[str, Mapping[int, float]] | None = None,
) -> tuple[int, float]:
    """``(total weight bits, HAWQ-V2 Omega = sum_l trace_l * ||Q_b(W_l) - W_l||^2)``.

    ``traces`` are per-parameter (:func:`layer_hessian_traces`). Without
    ``perturbation`` the uniform-noise model ``n_l * 4**-b`` stands in for
    ``||Q_b(W_l) - W_l||^2`` (quantization noise variance ~ step**2 / 12).
    """
    bits = 0
    omega = 0.0
    for name, b in assignment.items():
        bits += int(n_params[name]) * int(b)
        if perturbation is not None:
            pert = float(perturbation[name][int(b)])
        else:
            pert = float(n_params[name]) * 4.0 ** (-int(b))
        omega += float(traces[name]) * pert
    return bits, omega


def allocate_bits(
    traces: Mapping[str, float],
    n_params: Mapping[str, int],
    choices: Sequence[int],
    *,
    budget_bits: int | None = None,
    perturbation: Mapping[str, Mapping[int, float]] | None = None,
    max_candidates: int | None = None,
) -> list[dict[str, int]]:
    """HAWQ-style candidate per-layer widths: the Pareto set of (total weight bits, Omega).

    Every layer of ``traces`` takes a width from ``choices``. Omega is
    :func:`assignment_cost`. All assignments are enumerated when there are at
    most :data:`EXHAUSTIVE_LIMIT` of them, else a greedy path from the widest
    assignment down (each step lowers the layer that adds least Omega per bit
    saved). Returns the non-dominated assignments with total bits at most
    ``budget_bits`` (if given), ordered by total bits descending (Omega
    ascending), at most ``max_candidates`` of them spread evenly along the front.
    Deterministic (ties go to the lower-bit, then earlier-listed assignment).
    """
    names = list(traces)
    if not names:
        raise ConfigError("allocate_bits needs at least one layer trace")
    missing = [n for n in names if n not in n_params]
    if missing:
        raise ConfigError(f"n_params has no count for layer(s) {missing}")
    for n, t in traces.items():
        if not math.isfinite(float(t)):
            raise ConfigError(f"trace of layer {n!r} is not finite: {t!r}")
    ch = sorted({int(b) for b in choices})
    if not ch or any(b < 1 for b in ch):
        raise ConfigError(f"choices must be positive bit widths, got {list(choices)!r}")
    if perturbation is not None:
        for n in names:
            lack = [b for b in ch if b not in perturbation.get(n, {})]
            if lack:
                raise ConfigError(f"perturbation of layer {n!r} lacks bit widths {lack}")
    if budget_bits is not None and (
        isinstance(budget_bits, bool) or not isinstance(budget_bits, int) or budget_bits < 0
    ):
        raise ConfigError(f"budget_bits must be non-negative, got {budget_bits!r}")

    def cost(a: dict[str, int]) -> tuple[int, float]:
        return assignment_cost(a, traces, n_params, perturbation)

    cands: list[tuple[int, float, dict[str, int]]] = []
    if len(ch) ** len(names) <= EXHAUSTIVE_LIMIT:
        for combo in itertools.product(ch, repeat=len(names)):
            a = dict(zip(names, combo, strict=True))
            cands.append((*cost(a), a))
    else:
        a = {n: ch[-1] for n in names}
        cands.append((*cost(a), dict(a)))
        while True:
            best: tuple[float, int, str] | None = None
            for i, n in enumerate(names):
                k = ch.index(a[n])
                if k == 0:
                    continue
                lower = dict(a, **{n: ch[k - 1]})
                db = cost(a)[0] - cost(lower)[0]
                dom = cost(lower)[1] - cost(a)[1]
                key = (dom / max(db, 1), i, n)
                if best is None or key < best:
                    best = key
            if best is None:
                break
            a[best[2]] = ch[ch.index(a[best[2]]) - 1]
            cands.append((*cost(a), dict(a)))
    if budget_bits is not None:
        cands = [c for c in cands if c[0] <= budget_bits]
    if not cands:
        lo = sum(int(n_params[n]) * ch[0] for n in names)
        raise ConfigError(
            f"budget_bits {budget_bits} is below the narrowest assignment ({lo} bits at "
            f"{ch[0]} bits per weight)"
        )
    cands.sort(key=lambda c: (c[0], c[1]))
    front: list[tuple[int, float, dict[str, int]]] = []
    best_omega = math.inf
    for c in cands:  # ascending bits: keep those that lower Omega
        if c[1] < best_omega:
            front.append(c)
            best_omega = c[1]
    front.reverse()
    if max_candidates is not None and len(front) > max_candidates >= 1:
        idx = np.unique(np.round(np.linspace(0, len(front) - 1, max_candidates)).astype(int))
        front = [front[i] for i in idx]
    return [c[2] for c in front]


def format_layer_bits(layer_bits: Mapping[str, int] | None) -> str:
    """``"fc1=4,fc4=8"`` (names sorted), or ``""`` for a uniform model."""
    return ",".join(f"{k}={int(v)}" for k, v in sorted((layer_bits or {}).items()))


def parse_layer_bits(text: str) -> dict[str, int]:
    """``"fc1=4,fc4=8"`` -> ``{"fc1": 4, "fc4": 8}``; ``"uniform"`` or ``""`` -> ``{}``."""
    text = str(text).strip()
    if text in ("", "uniform", "none"):
        return {}
    out: dict[str, int] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        name = name.strip()
        try:
            if not sep or not name:
                raise ValueError
            b = int(value)
        except ValueError:
            raise ConfigError(
                f"--layer-bits takes assignments like fc1=4,fc4=8 (or 'uniform'); got {item!r}"
            ) from None
        if name in out:
            raise ConfigError(f"--layer-bits names layer {name!r} twice in {text!r}")
        out[name] = b
    return dict(sorted(out.items()))
