"""Built-in designs on scikit-learn's 8x8 digits: a small MLP and a small CNN.

Each architecture exists twice with identical parameter names and shapes: a float
model (plain ``torch.nn``) and a Brevitas quantization-aware (QAT) model, so QAT
starts from the trained float weights.

The QAT recipe is the one that converts bit-exactly through QONNX and hls4ml (see
``../shared/DESIGN.md``): every scale is a power of two, the bias is ``Int16Bias``
(so its scale is the product of the input and weight scales), and the input
quantizer is a *constant* unsigned 8-bit quantizer with scale ``2**-7``
(range ``[0, 255/128]``). Digits are ``pixel/16`` and therefore exact on that grid.

Exactness of :func:`torch_predict`: the last layer has no output quantizer, so
its output is ``(acc + bias_code) * 2**-(in_frac + w_frac)`` with ``acc`` the
integer accumulator. For these sizes ``|acc|`` stays far below ``2**24`` (the
MLP's last layer is bounded by ``32 * 63 * 31 < 2**16`` at 6 bits), so every
partial sum is a float32-representable dyadic number and the float32 output is
exactly the integer model's output. ``torch_predict`` runs on the CPU so that no
TF32 or reduced-precision GPU kernels can perturb it.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from edgeml.errors import ConfigError

from . import training

with warnings.catch_warnings():
    # Brevitas warns at import about optional kernels (fast_hadamard_transform) it does not need here.
    warnings.simplefilter("ignore")
    from brevitas import nn as qnn
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant import (
        Int8ActPerTensorFixedPoint,
        Int8WeightPerTensorFixedPoint,
        Int16Bias,
        Uint8ActPerTensorFixedPoint,
    )

log = logging.getLogger(__name__)

ARCHS: tuple[str, ...] = ("mlp", "cnn")
INPUT_SHAPE: tuple[int, int, int] = (1, 8, 8)
N_CLASSES = 10
#: Fractional bits of the input quantizer: inputs are unsigned 8-bit codes * 2**-7.
INPUT_FRAC = 7
INPUT_BITS = 8

ACT_COLLECT_STATS_STEPS = training.ACT_COLLECT_STATS_STEPS

Arch = Literal["mlp", "cnn"]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DigitsData:
    """A stratified train/test split of the digits; ``x`` is ``(N, 1, 8, 8)`` float32 in [0, 1]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed: int = 0, test_fraction: float = 0.2) -> DigitsData:
    """Load the 1797 8x8 digits as ``pixel/16`` (exact multiples of 1/16) and split them.

    The split is stratified by class and fully determined by ``seed``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}; pass e.g. 0.2"
        )
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0)).reshape(-1, *INPUT_SHAPE)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    return DigitsData(
        x_train=np.ascontiguousarray(x_tr),
        y_train=np.ascontiguousarray(y_tr),
        x_test=np.ascontiguousarray(x_te),
        y_test=np.ascontiguousarray(y_te),
    )


# ------------------------------------------------------------------ architectures


class InputQuant(Uint8ActPerTensorFixedPoint):
    """Constant unsigned 8-bit input quantizer with scale ``2**-7`` (threshold 2 / 2**8).

    Constant (not learned, not statistics-based) so that the input format is a
    fixed property of the design: ``ap_ufixed<8,1>``. Larger inputs saturate at 255/128.
    """

    scaling_impl_type = ScalingImplType.CONST
    max_val = 2.0


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHS)}")


def _check_bit_width(bit_width: int) -> None:
    if isinstance(bit_width, bool) or not isinstance(bit_width, int) or not 2 <= bit_width <= 8:
        raise ConfigError(
            f"bit_width must be an integer from 2 to 8 (8-bit quantizer families), got {bit_width!r}"
        )


class FloatMLP(nn.Module):
    """Float 64-32-32-10 MLP (logits)."""

    arch = "mlp"

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Identity()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 32)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(32, 32)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(32, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.flatten(self.inp(x))
        h = self.relu1(self.fc1(h))
        h = self.relu2(self.fc2(h))
        return self.fc3(h)


class FloatCNN(nn.Module):
    """Float Conv(1->8, 3x3) -> ReLU -> MaxPool(2) -> Flatten(72) -> Linear(10)."""

    arch = "cnn"

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Identity()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=0)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(8 * 3 * 3, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.conv1(self.inp(x)))
        return self.fc1(self.flatten(self.pool(h)))


def qlinear(n_in: int, n_out: int, bit_width: int, last: bool = False) -> qnn.QuantLinear:
    """A PoT-scaled QAT Linear with an Int16Bias (the exact-through-hls4ml recipe)."""
    return qnn.QuantLinear(
        n_in,
        n_out,
        bias=True,
        weight_quant=Int8WeightPerTensorFixedPoint,
        weight_bit_width=bit_width,
        bias_quant=Int16Bias,
        return_quant_tensor=not last,
    )


def qact(bit_width: int, signed: bool = True) -> nn.Module:
    """A PoT-scaled QAT activation quantizer of ``bit_width`` bits: a signed identity,
    or (``signed=False``) an unsigned ReLU."""
    quant = Int8ActPerTensorFixedPoint if signed else Uint8ActPerTensorFixedPoint
    cls = qnn.QuantIdentity if signed else qnn.QuantReLU
    return cls(
        act_quant=quant,
        bit_width=bit_width,
        collect_stats_steps=ACT_COLLECT_STATS_STEPS,
        return_quant_tensor=True,
    )


def qrelu(bit_width: int) -> qnn.QuantReLU:
    """An unsigned PoT-scaled QAT ReLU of ``bit_width`` bits."""
    return qact(bit_width, signed=False)


def _qinput() -> qnn.QuantIdentity:
    return qnn.QuantIdentity(act_quant=InputQuant, return_quant_tensor=True)


class QuantMLP(nn.Module):
    """Brevitas QAT twin of :class:`FloatMLP` (power-of-two scales, Int16Bias, no output quant)."""

    arch = "mlp"

    def __init__(self, bit_width: int) -> None:
        super().__init__()
        self.bit_width = bit_width
        self.inp = _qinput()
        self.flatten = nn.Flatten()
        self.fc1 = qlinear(64, 32, bit_width)
        self.relu1 = qrelu(bit_width)
        self.fc2 = qlinear(32, 32, bit_width)
        self.relu2 = qrelu(bit_width)
        self.fc3 = qlinear(32, N_CLASSES, bit_width, last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.flatten(self.inp(x))
        h = self.relu1(self.fc1(h))
        h = self.relu2(self.fc2(h))
        return self.fc3(h)


class QuantCNN(nn.Module):
    """Brevitas QAT twin of :class:`FloatCNN` (plain MaxPool2d on the quantized ReLU output)."""

    arch = "cnn"

    def __init__(self, bit_width: int) -> None:
        super().__init__()
        self.bit_width = bit_width
        self.inp = _qinput()
        self.conv1 = qnn.QuantConv2d(
            1,
            8,
            3,
            padding=0,
            bias=True,
            weight_quant=Int8WeightPerTensorFixedPoint,
            weight_bit_width=bit_width,
            bias_quant=Int16Bias,
            return_quant_tensor=True,
        )
        self.relu1 = qrelu(bit_width)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = qlinear(8 * 3 * 3, N_CLASSES, bit_width, last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.conv1(self.inp(x)))
        return self.fc1(self.flatten(self.pool(h)))


def build_float_model(arch: str) -> nn.Module:
    """A freshly initialised float model of ``arch`` ("mlp" or "cnn")."""
    _check_arch(arch)
    return FloatMLP() if arch == "mlp" else FloatCNN()


def build_qat_model(arch: str, bit_width: int = 6) -> nn.Module:
    """A freshly initialised Brevitas QAT model (used to rebuild checkpoints)."""
    _check_arch(arch)
    _check_bit_width(bit_width)
    return QuantMLP(bit_width) if arch == "mlp" else QuantCNN(bit_width)


def is_quantized(model: nn.Module) -> bool:
    """True for the Brevitas QAT models of this module."""
    return isinstance(model, QuantMLP | QuantCNN)


def quant_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The weight layers (Linear / Conv2d, float or quantized) by name, in forward order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


# ---------------------------------------------------------------------- training
# The generic parts live in edgeml.models.training; these wrappers keep the digits API.


def _fit(
    model: nn.Module,
    data: DigitsData,
    epochs: int,
    lr: float,
    gen: torch.Generator,
    masks: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    return training.fit(
        model,
        data.x_train,
        data.y_train,
        zoo_loss,
        epochs,
        gen,
        training.TrainSettings(lr=lr, batch_size=64),
        masks=masks,
    )


def zoo_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (the digits designs are classifiers)."""
    return nn.functional.cross_entropy(out, y)


def train_float(arch: str, data: DigitsData, epochs: int = 60, seed: int = 0) -> nn.Module:
    """Train the float model of ``arch``; returns it on the CPU in eval mode."""
    gen = training.seed_all(seed)
    model = build_float_model(arch)
    t0 = time.perf_counter()
    _fit(model, data, epochs, lr=3e-3, gen=gen)
    log.info("float %s: %d epochs in %.1f s", arch, epochs, time.perf_counter() - t0)
    return model


def init_qat_from_float(qat_model: nn.Module, float_model: nn.Module) -> None:
    """Copy the float weights and biases into the QAT model (same names and shapes)."""
    training.init_from_float(qat_model, float_model)


def train_qat(
    arch: str,
    data: DigitsData,
    float_model: nn.Module,
    bit_width: int = 6,
    epochs: int = 30,
    seed: int = 0,
) -> nn.Module:
    """Quantization-aware training of ``arch`` at ``bit_width``, initialised from ``float_model``."""
    gen = training.seed_all(seed)
    model = build_qat_model(arch, bit_width)
    init_qat_from_float(model, float_model)
    t0 = time.perf_counter()
    _fit(model, data, epochs, lr=1e-3, gen=gen)
    log.info("QAT %s %d-bit: %d epochs in %.1f s", arch, bit_width, epochs,
             time.perf_counter() - t0)  # fmt: skip
    return model


def magnitude_masks(
    model: nn.Module, sparsity: float, scope: Literal["layer", "global"] = "layer"
) -> dict[str, torch.Tensor]:
    """L1 (magnitude) pruning masks of ``model``'s weight layers (see training.magnitude_masks)."""
    return training.magnitude_masks(quant_layers(model), sparsity, scope)


def weight_codes(model: nn.Module) -> dict[str, np.ndarray]:
    """Integer weight codes of a QAT model's layers (what the hardware stores)."""
    if not is_quantized(model):
        raise ConfigError("weight_codes needs a QAT model (build_qat_model / train_qat)")
    return training.weight_codes(model)


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of weights that are exactly zero (integer codes for QAT models)."""
    return training.weight_sparsity(model)


def prune_and_finetune(
    qat_model: nn.Module,
    data: DigitsData,
    sparsity: float = 0.5,
    epochs: int = 30,
    seed: int = 0,
    scope: Literal["layer", "global"] = "layer",
) -> nn.Module:
    """Magnitude-prune a copy of ``qat_model`` and fine-tune it with the mask held.

    Pruned weights are re-zeroed after every optimizer step, so they are exactly 0
    and quantize to code 0; measure the achieved sparsity (of integer codes) with
    :func:`weight_sparsity`.
    """
    if not is_quantized(qat_model):
        raise ConfigError("prune_and_finetune needs a QAT model (from train_qat)")
    return training.prune_and_finetune(
        qat_model,
        data.x_train,
        data.y_train,
        zoo_loss,
        sparsity,
        epochs,
        seed,
        training.TrainSettings(lr=1e-3, batch_size=64),
        scope,
    )


# -------------------------------------------------------------------- inference


def torch_predict(model: nn.Module, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Model outputs for ``x`` as float64, computed on the CPU in eval mode without grad.

    For QAT models these are exactly the integer model's outputs times their
    power-of-two scale (see the module docstring).
    """
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[1:] != INPUT_SHAPE:
        raise ConfigError(f"x must have shape (N, 1, 8, 8), got {arr.shape}")
    return training.predict(model, arr, batch_size)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    return training.top1_accuracy(torch_predict(model, x), y)


# ------------------------------------------------------------------ checkpoints


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (a digits design) with plain-typed ``meta``; loads with weights_only=True."""
    arch = getattr(model, "arch", None)
    if arch not in ARCHS:
        raise ConfigError("save_checkpoint expects a model built by edgeml.models.digits")
    from . import zoo

    return zoo.save_checkpoint(zoo.get(arch), model, path, meta)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and load a model saved by :func:`save_checkpoint`; returns ``(model, meta)``.

    Raises :class:`CorruptFileError` for a missing, truncated or foreign file.
    """
    from . import zoo

    model, meta, _ = zoo.load_checkpoint(path)
    return model, meta


# ---------------------------------------------------------------- design registry


def _load(seed: int) -> Any:
    from .training import Dataset

    d = load_digits_split(seed=seed)
    return Dataset(d.x_train, d.y_train, d.x_test, d.y_test, {"source": "digits test set"})


def _spec(arch: str) -> Any:
    from functools import partial

    from . import zoo
    from .training import TrainSettings

    title = {
        "mlp": "digits MLP 64-32-32-10",
        "cnn": "digits CNN conv3x3(1->8)-pool-dense(72->10)",
    }[arch]
    return zoo.DesignSpec(
        name=arch,
        title=title,
        task="classification",
        input_shape=INPUT_SHAPE,
        load_data=_load,
        build_float=partial(build_float_model, arch),
        build_qat=partial(build_qat_model, arch),
        loss=zoo.cross_entropy,
        metrics=zoo.accuracy_metrics,
        float_settings=TrainSettings(lr=3e-3),
        settings=TrainSettings(lr=1e-3),
    )


DESIGNS = {arch: _spec(arch) for arch in ARCHS}
