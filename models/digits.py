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

import copy
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from edgeml.errors import ConfigError, CorruptFileError

with warnings.catch_warnings():
    # Brevitas warns at import about optional kernels (fast_hadamard_transform) it does not need here.
    warnings.simplefilter("ignore")
    from brevitas import nn as qnn
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant import (
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

#: Training steps over which QuantReLU collects activation statistics before its
#: power-of-two scale becomes a learned parameter (Brevitas' default is 300).
ACT_COLLECT_STATS_STEPS = 30

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


def _qlinear(n_in: int, n_out: int, bit_width: int, last: bool = False) -> qnn.QuantLinear:
    return qnn.QuantLinear(
        n_in,
        n_out,
        bias=True,
        weight_quant=Int8WeightPerTensorFixedPoint,
        weight_bit_width=bit_width,
        bias_quant=Int16Bias,
        return_quant_tensor=not last,
    )


def _qrelu(bit_width: int) -> qnn.QuantReLU:
    return qnn.QuantReLU(
        act_quant=Uint8ActPerTensorFixedPoint,
        bit_width=bit_width,
        collect_stats_steps=ACT_COLLECT_STATS_STEPS,
        return_quant_tensor=True,
    )


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
        self.fc1 = _qlinear(64, 32, bit_width)
        self.relu1 = _qrelu(bit_width)
        self.fc2 = _qlinear(32, 32, bit_width)
        self.relu2 = _qrelu(bit_width)
        self.fc3 = _qlinear(32, N_CLASSES, bit_width, last=True)

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
        self.relu1 = _qrelu(bit_width)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = _qlinear(8 * 3 * 3, N_CLASSES, bit_width, last=True)

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


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _seed_all(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    for start in range(0, n, batch_size):
        yield perm[start : start + batch_size]


def _value(out: Any) -> torch.Tensor:
    """Plain tensor of a model output (``.value`` of a Brevitas QuantTensor)."""
    return out.value if hasattr(out, "value") else out


def _fit(
    model: nn.Module,
    data: DigitsData,
    epochs: int,
    lr: float,
    gen: torch.Generator,
    batch_size: int = 64,
    masks: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Adam + cross-entropy over mini-batches; re-applies ``masks`` after every step."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be a non-negative integer, got {epochs!r}")
    dev = _device()
    # One intra-op thread: these models are too small to gain from more, and on shared
    # CPUs extra threads oversubscribe (measured 5-10x slower); it also makes results
    # independent of the machine's core count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_loop(model, data, epochs, lr, gen, batch_size, masks, dev)
    finally:
        torch.set_num_threads(threads)


def _fit_loop(
    model: nn.Module,
    data: DigitsData,
    epochs: int,
    lr: float,
    gen: torch.Generator,
    batch_size: int,
    masks: dict[str, torch.Tensor] | None,
    dev: torch.device,
) -> nn.Module:
    model.to(dev).train()
    x = torch.from_numpy(data.x_train).to(dev)
    y = torch.from_numpy(data.y_train).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    layers = quant_layers(model)
    dev_masks = {k: m.to(dev) for k, m in (masks or {}).items()}
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for idx in _batches(len(x), batch_size, gen):
            idx = idx.to(dev)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(_value(model(x[idx])), y[idx])
            loss.backward()
            opt.step()
            if dev_masks:
                with torch.no_grad():
                    for name, mask in dev_masks.items():
                        layers[name].weight.mul_(mask)
    return model.cpu().eval()


def train_float(arch: str, data: DigitsData, epochs: int = 60, seed: int = 0) -> nn.Module:
    """Train the float model of ``arch``; returns it on the CPU in eval mode."""
    gen = _seed_all(seed)
    model = build_float_model(arch)
    t0 = time.perf_counter()
    _fit(model, data, epochs, lr=3e-3, gen=gen)
    log.info(
        "float %s: %d epochs in %.1f s, test acc %.4f",
        arch,
        epochs,
        time.perf_counter() - t0,
        accuracy(model, data.x_test, data.y_test),
    )
    return model


def init_qat_from_float(qat_model: nn.Module, float_model: nn.Module) -> None:
    """Copy the float weights and biases into the QAT model (same names and shapes)."""
    src = float_model.state_dict()
    dst = qat_model.state_dict()
    for key, val in src.items():
        if key not in dst or dst[key].shape != val.shape:
            raise ConfigError(
                f"float parameter {key!r} {tuple(val.shape)} has no twin in the QAT model; "
                "build both models for the same architecture"
            )
    missing, unexpected = qat_model.load_state_dict(src, strict=False)
    bad = [k for k in missing if "weight" in k.split(".")[-1] or k.endswith(".bias")]
    if unexpected or bad:
        raise ConfigError(f"QAT init from float failed: missing {bad}, unexpected {unexpected}")


def train_qat(
    arch: str,
    data: DigitsData,
    float_model: nn.Module,
    bit_width: int = 6,
    epochs: int = 30,
    seed: int = 0,
) -> nn.Module:
    """Quantization-aware training of ``arch`` at ``bit_width``, initialised from ``float_model``."""
    gen = _seed_all(seed)
    model = build_qat_model(arch, bit_width)
    init_qat_from_float(model, float_model)
    t0 = time.perf_counter()
    _fit(model, data, epochs, lr=1e-3, gen=gen)
    log.info(
        "QAT %s %d-bit: %d epochs in %.1f s, test acc %.4f",
        arch,
        bit_width,
        epochs,
        time.perf_counter() - t0,
        accuracy(model, data.x_test, data.y_test),
    )
    return model


def magnitude_masks(
    model: nn.Module, sparsity: float, scope: Literal["layer", "global"] = "layer"
) -> dict[str, torch.Tensor]:
    """L1 (magnitude) pruning masks: 1 keeps a weight, 0 prunes it.

    ``scope="layer"`` prunes ``sparsity`` of every layer's weights (so no layer is
    emptied); ``"global"`` uses one magnitude threshold across all layers.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if scope not in ("layer", "global"):
        raise ConfigError(f"scope must be 'layer' or 'global', got {scope!r}")
    layers = quant_layers(model)
    weights = {name: m.weight.detach().abs().cpu() for name, m in layers.items()}
    masks: dict[str, torch.Tensor] = {}
    if scope == "global":
        flat = torch.cat([w.flatten() for w in weights.values()])
        k = round(sparsity * flat.numel())
        order = torch.argsort(flat, stable=True)
        keep = torch.ones_like(flat)
        keep[order[:k]] = 0.0
        offset = 0
        for name, w in weights.items():
            masks[name] = keep[offset : offset + w.numel()].reshape(w.shape)
            offset += w.numel()
    else:
        for name, w in weights.items():
            flat = w.flatten()
            k = round(sparsity * flat.numel())
            keep = torch.ones_like(flat)
            keep[torch.argsort(flat, stable=True)[:k]] = 0.0
            masks[name] = keep.reshape(w.shape)
    return masks


def weight_codes(model: nn.Module) -> dict[str, np.ndarray]:
    """Integer weight codes of a QAT model's layers (what the hardware stores)."""
    if not is_quantized(model):
        raise ConfigError("weight_codes needs a QAT model (build_qat_model / train_qat)")
    with torch.no_grad():
        return {
            name: m.quant_weight().int().cpu().numpy().astype(np.int64)
            for name, m in quant_layers(model).items()
        }


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of weights that are exactly zero (integer codes for QAT models)."""
    if is_quantized(model):
        arrays = list(weight_codes(model).values())
    else:
        arrays = [m.weight.detach().cpu().numpy() for m in quant_layers(model).values()]
    total = sum(a.size for a in arrays)
    return float(sum(int(np.count_nonzero(a == 0)) for a in arrays) / total)


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
    and quantize to code 0. The achieved sparsity (of integer codes, which also
    counts weights that quantize to zero on their own) is logged; measure it with
    :func:`weight_sparsity`.
    """
    if not is_quantized(qat_model):
        raise ConfigError("prune_and_finetune needs a QAT model (from train_qat)")
    gen = _seed_all(seed)
    model = copy.deepcopy(qat_model).cpu()
    masks = magnitude_masks(model, sparsity, scope)
    with torch.no_grad():
        for name, m in quant_layers(model).items():
            m.weight.mul_(masks[name])
    t0 = time.perf_counter()
    _fit(model, data, epochs, lr=1e-3, gen=gen, masks=masks)
    log.info(
        "prune %s %.0f%% (%s): %d epochs in %.1f s, test acc %.4f, achieved sparsity %.4f",
        model.arch,
        100 * sparsity,
        scope,
        epochs,
        time.perf_counter() - t0,
        accuracy(model, data.x_test, data.y_test),
        weight_sparsity(model),
    )
    return model


# -------------------------------------------------------------------- inference


def torch_predict(model: nn.Module, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Model outputs for ``x`` as float64, computed on the CPU in eval mode without grad.

    For QAT models these are exactly the integer model's outputs times their
    power-of-two scale (see the module docstring). The model is left on its device
    and in its train/eval mode.
    """
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[1:] != INPUT_SHAPE:
        raise ConfigError(f"x must have shape (N, 1, 8, 8), got {arr.shape}")
    dev = next(model.parameters()).device
    was_training = model.training
    net = model if dev.type == "cpu" else copy.deepcopy(model).cpu()
    net.eval()
    outs = []
    try:
        with torch.no_grad():
            for start in range(0, len(arr), batch_size):
                chunk = torch.from_numpy(arr[start : start + batch_size])
                outs.append(_value(net(chunk)).detach().cpu().numpy().astype(np.float64))
    finally:
        model.train(was_training)
    if not outs:
        return np.zeros((0, N_CLASSES), dtype=np.float64)
    return np.concatenate(outs)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    pred = torch_predict(model, x).argmax(axis=1)
    y = np.asarray(y)
    if y.shape != pred.shape:
        raise ConfigError(f"labels have shape {y.shape}, expected {pred.shape}")
    return float(np.mean(pred == y))


# ------------------------------------------------------------------ checkpoints

_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"checkpoint meta key {where}.{k!r} must be a str")
            _check_plain(v, f"{where}.{k}")
        return
    raise ConfigError(
        f"checkpoint meta {where} is a {type(value).__name__}; only str, int, float, bool, "
        "None, lists and dicts of them can be loaded with weights_only=True"
    )


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Save ``model``'s state dict plus plain-typed ``meta`` (arch, kind, bit_width added).

    The file loads with ``torch.load(weights_only=True)``; :func:`load_checkpoint`
    rebuilds the model from ``meta``.
    """
    full: dict[str, Any] = dict(meta or {})
    arch = getattr(model, "arch", None)
    if arch not in ARCHS:
        raise ConfigError("save_checkpoint expects a model built by edgeml.models.digits")
    full.update(arch=arch, kind="qat" if is_quantized(model) else "float")
    if is_quantized(model):
        full["bit_width"] = int(model.bit_width)
    _check_plain(full, "meta")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "edgeml-digits-v1", "meta": full, "state_dict": state}, path)
    return path


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and load a model saved by :func:`save_checkpoint`; returns ``(model, meta)``.

    Raises :class:`CorruptFileError` for a missing, truncated or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CorruptFileError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
            "it is truncated or not a torch checkpoint - re-create it with save_checkpoint"
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") != "edgeml-digits-v1":
        raise CorruptFileError(f"checkpoint {path} is not an edgeml digits checkpoint")
    meta = obj.get("meta")
    state = obj.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict):
        raise CorruptFileError(f"checkpoint {path} lacks 'meta' or 'state_dict'")
    try:
        if meta.get("kind") == "qat":
            model = build_qat_model(meta["arch"], int(meta["bit_width"]))
        else:
            model = build_float_model(meta["arch"])
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (ConfigError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CorruptFileError(
            f"checkpoint {path} does not match its recorded design {meta!r}: {exc}"
        ) from exc
    # An activation scale that never saw data is not saved by Brevitas; all else must match.
    missing = [k for k in missing if not k.endswith("scaling_impl.value")]
    if missing or unexpected:
        raise CorruptFileError(
            f"checkpoint {path} does not match its recorded design {meta!r}: "
            f"missing {missing}, unexpected {unexpected}"
        )
    return model.eval(), meta
