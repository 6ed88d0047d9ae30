"""The design registry: every built-in design the flow, sweeps and campaigns know by name.

A design is a :class:`DesignSpec`: its data (generated or shipped, never
downloaded), its float and Brevitas QAT architectures (same parameter names),
its loss and metrics, and which part of the trained model goes on chip
(``edge``: the whole model for a classifier, the encoder for ECON-T).

Design modules are imported lazily, so one design's heavy dependencies (e.g.
FastJet for the jets) are loaded only when that design is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from edgeml.errors import ConfigError

from . import DESIGN_MODULES, training
from .training import Dataset, Loss, TrainSettings

#: Built-in design name -> module defining it (its ``DESIGNS`` dict holds the spec).
MODULES: dict[str, str] = DESIGN_MODULES


@dataclass(frozen=True)
class DesignSpec:
    """Everything the flow needs to train, compress and evaluate one built-in design.

    ``metrics(outputs, x, y)`` gets the *full* model's float outputs (for an
    autoencoder: the decoded reconstruction) and returns named figures;
    ``primary`` names the headline one ("accuracy", "emd", ...), and
    ``higher_is_better`` says which way it improves. ``edge(model)`` returns the
    sub-module exported to QONNX and put on chip; ``edge_metrics(edge_outputs,
    model, x, y)`` computes the same figures from on-chip outputs (e.g. the
    golden model's), running the host-side part of ``model`` where there is one.
    """

    name: str
    title: str
    task: Literal["classification", "autoencoder", "regression"]
    input_shape: tuple[int, ...]
    load_data: Callable[[int], Dataset]
    build_float: Callable[[], nn.Module]
    build_qat: Callable[[int], nn.Module]
    loss: Loss
    metrics: Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, float]]
    primary: str = "accuracy"
    higher_is_better: bool = True
    edge: Callable[[nn.Module], nn.Module] = lambda m: m
    edge_metrics: (
        Callable[[np.ndarray, nn.Module, np.ndarray, np.ndarray], dict[str, float]] | None
    ) = None
    prunable: Callable[[nn.Module], dict[str, nn.Module]] = training.weight_layers
    epochs: dict[str, int] = field(default_factory=lambda: {"float": 60, "qat": 40, "finetune": 40})
    settings: TrainSettings = field(default_factory=TrainSettings)
    float_settings: TrainSettings | None = None
    bit_widths: tuple[int, int] = (2, 8)
    #: the flow's default pruning sparsity for this design
    sparsity: float = 0.5
    notes: str = ""
    #: copies a trained float model into a fresh QAT model (same parameter names by
    #: default; a study whose edge form differs, e.g. an SSM kernel materialised as
    #: a FIR filter, supplies its own)
    init_qat: Callable[[nn.Module, nn.Module], None] = training.init_from_float
    #: the study's own float training ``(data, epochs, seed) -> model`` where its method
    #: is the training itself (an ensemble objective, a constrained optimizer, weights
    #: sampled from a generative model, unlearning after training); default: ``training.fit``
    #: of ``build_float()`` with the design's loss
    fit_float: Callable[[Dataset, int, int], nn.Module] | None = None
    #: the compress stage's default randomized-SVD factorisation (:mod:`edgeml.lowrank`):
    #: an int rank or an energy fraction in (0, 1]; ``None``: none (``compress.low_rank``
    #: in the config overrides it)
    low_rank: int | float | None = None

    def targets(self, split: Literal["train", "test"], data: Dataset) -> np.ndarray:
        """Training targets: labels for a classifier, the input itself for an autoencoder."""
        if split == "train":
            return data.x_train if self.task == "autoencoder" else data.y_train
        return data.x_test if self.task == "autoencoder" else data.y_test


def names() -> tuple[str, ...]:
    """All built-in design names."""
    return tuple(MODULES)


def get(name: str) -> DesignSpec:
    """The spec of built-in design ``name``; a clear error lists the allowed names."""
    if name not in MODULES:
        raise ConfigError(
            f"unknown built-in design {name!r}; allowed: {', '.join(MODULES)} "
            "(or pass --onnx FILE for a model made elsewhere)"
        )
    mod = importlib.import_module(MODULES[name])
    specs: dict[str, DesignSpec] = mod.DESIGNS
    return specs[name]


# ---------------------------------------------------------------------- training


def evaluate(spec: DesignSpec, model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The design's metrics of ``model`` on ``(x, y)``."""
    return spec.metrics(training.predict(model, x), x, y)


def train_float(spec: DesignSpec, data: Dataset, epochs: int, seed: int = 0) -> nn.Module:
    """Train the float model of ``spec`` from scratch (the study's own trainer where it has one)."""
    if spec.fit_float is not None:
        training.seed_all(seed)
        return spec.fit_float(data, epochs, seed)
    gen = training.seed_all(seed)
    model = spec.build_float()
    settings = spec.float_settings or spec.settings
    y = spec.targets("train", data)
    return training.fit(model, data.x_train, y, spec.loss, epochs, gen, settings)


def train_qat(
    spec: DesignSpec,
    data: Dataset,
    float_model: nn.Module,
    bit_width: int,
    epochs: int,
    seed: int = 0,
    layer_bits: dict[str, int] | None = None,
) -> nn.Module:
    """Quantization-aware training at ``bit_width``, initialised from ``float_model``.

    ``layer_bits`` (``{layer: bits}``, names of :func:`edgeml.mixed.quant_layers`)
    gives those layers their own weight and output-activation width
    (:func:`edgeml.mixed.apply_layer_bits`); the rest take ``bit_width``.
    """
    lo, hi = spec.bit_widths
    if isinstance(bit_width, bool) or not isinstance(bit_width, int) or not lo <= bit_width <= hi:
        raise ConfigError(
            f"bit_width for design {spec.name!r} must be an integer from {lo} to {hi}, "
            f"got {bit_width!r}"
        )
    gen = training.seed_all(seed)
    model = build_qat(spec, bit_width, layer_bits)
    spec.init_qat(model, float_model)
    y = spec.targets("train", data)
    return training.fit(model, data.x_train, y, spec.loss, epochs, gen, spec.settings)


def build_qat(
    spec: DesignSpec, bit_width: int, layer_bits: dict[str, int] | None = None
) -> nn.Module:
    """``spec.build_qat(bit_width)`` with the per-layer widths ``layer_bits`` applied (if any)."""
    model = spec.build_qat(bit_width)
    if layer_bits:
        from edgeml.mixed import apply_layer_bits

        apply_layer_bits(
            model, layer_bits, bit_widths=spec.bit_widths, input_shape=spec.input_shape
        )
    return model


def prune(
    spec: DesignSpec, data: Dataset, model: nn.Module, sparsity: float, epochs: int, seed: int = 0
) -> nn.Module:
    """Magnitude-prune the on-chip layers to ``sparsity`` and fine-tune with the mask held."""
    y = spec.targets("train", data)
    return training.prune_and_finetune(
        model,
        data.x_train,
        y,
        spec.loss,
        sparsity,
        epochs,
        seed,
        spec.settings,
        layers=lambda m: spec.prunable(m),
    )


def edge_sparsity(spec: DesignSpec, model: nn.Module) -> float:
    """Fraction of zero weight codes in the on-chip part."""
    return training.weight_sparsity(spec.edge(model))


# ------------------------------------------------------------------ checkpoints


def save_checkpoint(
    spec: DesignSpec, model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None
) -> Path:
    """Save ``model`` with ``design``, ``kind``, ``bit_width``, ``layer_bits`` and ``low_rank`` in
    its metadata.

    ``low_rank`` (``{layer: rank}``) is there when layers were factorised
    (:mod:`edgeml.lowrank`), so :func:`load_checkpoint` rebuilds the same structure.
    """
    from edgeml import lowrank

    full = dict(meta or {})
    quant = training.is_brevitas(model)
    full.update(design=spec.name, kind="qat" if quant else "float")
    if quant:
        full["bit_width"] = int(model.bit_width)
        layer_bits = getattr(model, "layer_bits", None)
        if layer_bits:
            full["layer_bits"] = {str(k): int(v) for k, v in sorted(layer_bits.items())}
    ranks = lowrank.ranks_of(model)
    if ranks:
        full["low_rank"] = ranks
    return training.save_state(path, training.CHECKPOINT_FORMAT, full, model)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any], DesignSpec]:
    """Rebuild a model saved by :func:`save_checkpoint`: ``(model, meta, spec)``."""
    from edgeml.errors import CorruptFileError

    meta, state = training.read_state(path, (training.CHECKPOINT_FORMAT,))
    try:
        spec = get(str(meta.get("design")))
        if meta.get("kind") == "qat":
            model = spec.build_qat(int(meta["bit_width"]))
        else:
            model = spec.build_float()
        if meta.get("low_rank"):
            from edgeml import lowrank

            lowrank.restructure(model, dict(meta["low_rank"]))
        layer_bits = meta.get("layer_bits")  # absent in checkpoints before mixed precision
        if meta.get("kind") == "qat" and layer_bits:
            from edgeml.mixed import apply_layer_bits

            # after any factorisation, as in training (a factorised spec's build_qat)
            apply_layer_bits(
                model, dict(layer_bits), bit_widths=spec.bit_widths, input_shape=spec.input_shape
            )
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptFileError(f"checkpoint {path} names no buildable design: {exc}") from exc
    return training.load_state_into(model, state, path, meta), meta, spec


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy loss for classifiers (module-level so specs stay picklable)."""
    return nn.functional.cross_entropy(out, y)


def accuracy_metrics(outputs: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``{"accuracy": top-1}`` for classifiers."""
    return {"accuracy": training.top1_accuracy(outputs, y)}
