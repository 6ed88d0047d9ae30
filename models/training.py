"""Design-independent training, pruning, inference and checkpoints for the model zoo.

Every built-in design (:mod:`edgeml.models.zoo`) trains through these functions:
a float model first, then its Brevitas QAT twin initialised from the float
weights, then magnitude pruning with the mask held during fine-tuning. Training
is single-threaded on the CPU (these models are tiny: more threads only
oversubscribe shared cores, and one thread makes results independent of the
machine) and uses CUDA when it is available.

Checkpoints hold a state dict plus plain-typed metadata and load with
``torch.load(weights_only=True)``; :func:`load_checkpoint` rebuilds the model
from the design registry.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from edgeml.errors import ConfigError, CorruptFileError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "edgeml-model-v1"

#: Training steps over which Brevitas activation quantizers collect statistics before
#: their power-of-two scale becomes a learned parameter (Brevitas' default is 300);
#: every design's QAT twin uses this one value.
ACT_COLLECT_STATS_STEPS = 30

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Dataset:
    """A train/test split. ``x`` is float32 ``(N, *input_shape)``; ``y`` labels or targets."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser settings of one training phase (Adam)."""

    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0


def device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_all(seed: int) -> torch.Generator:
    """Seed torch and numpy; return a CPU generator for batch order."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def value(out: Any) -> torch.Tensor:
    """Plain tensor of a model output (``.value`` of a Brevitas QuantTensor)."""
    return out.value if hasattr(out, "value") else out


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The weight layers (Linear / Conv, float or quantized) by name, in forward order."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)
    }


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    for start in range(0, n, batch_size):
        yield perm[start : start + batch_size]


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    loss_fn: Loss,
    epochs: int,
    gen: torch.Generator,
    settings: TrainSettings = TrainSettings(),
    masks: dict[str, torch.Tensor] | None = None,
    layers: dict[str, nn.Module] | None = None,
) -> nn.Module:
    """Adam over shuffled mini-batches; re-applies pruning ``masks`` after every step.

    ``layers`` maps mask names to modules (default: :func:`weight_layers`).
    Returns the model on the CPU in eval mode.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be a non-negative integer, got {epochs!r}")
    dev = device()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.to(dev).train()
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(dev)
        yt = torch.from_numpy(np.ascontiguousarray(y)).to(dev)
        opt = torch.optim.Adam(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        layers = layers if layers is not None else weight_layers(model)
        dev_masks = {k: m.to(dev) for k, m in (masks or {}).items()}
        for _ in range(epochs):
            for idx in _batches(len(xt), settings.batch_size, gen):
                idx = idx.to(dev)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(value(model(xt[idx])), yt[idx])
                loss.backward()
                opt.step()
                if dev_masks:
                    with torch.no_grad():
                        for name, mask in dev_masks.items():
                            layers[name].weight.mul_(mask)
    finally:
        torch.set_num_threads(threads)
    return model.cpu().eval()


def predict(model: nn.Module, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Outputs of ``model`` for ``x`` as float64, on the CPU, in eval mode, without grad.

    Runs on the CPU so that no TF32 or reduced-precision GPU kernels perturb the
    outputs of QAT models (which are then exact integers times a power of two).
    The model's device and train/eval mode are left as they were.
    """
    arr = np.asarray(x, dtype=np.float32)
    dev = next(model.parameters()).device
    was_training = model.training
    net = model if dev.type == "cpu" else copy.deepcopy(model).cpu()
    net.eval()
    outs = []
    try:
        with torch.no_grad():
            for start in range(0, len(arr), batch_size):
                chunk = torch.from_numpy(arr[start : start + batch_size])
                outs.append(value(net(chunk)).detach().cpu().numpy().astype(np.float64))
    finally:
        model.train(was_training)
    if not outs:
        with torch.no_grad():
            probe = value(net(torch.zeros((1, *arr.shape[1:]), dtype=torch.float32)))
        return np.zeros((0, *probe.shape[1:]), dtype=np.float64)
    return np.concatenate(outs)


def top1_accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose argmax equals the label."""
    pred = np.asarray(outputs).reshape(len(outputs), -1).argmax(axis=1)
    y = np.asarray(y)
    if y.shape != pred.shape:
        raise ConfigError(f"labels have shape {y.shape}, expected {pred.shape}")
    return float(np.mean(pred == y))


def magnitude_masks(
    layers: dict[str, nn.Module], sparsity: float, scope: Literal["layer", "global"] = "layer"
) -> dict[str, torch.Tensor]:
    """L1 (magnitude) pruning masks over ``layers``: 1 keeps a weight, 0 prunes it.

    ``scope="layer"`` prunes ``sparsity`` of every layer's weights (no layer is
    emptied); ``"global"`` uses one magnitude threshold across all layers.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if scope not in ("layer", "global"):
        raise ConfigError(f"scope must be 'layer' or 'global', got {scope!r}")
    weights = {name: m.weight.detach().abs().cpu() for name, m in layers.items()}
    masks: dict[str, torch.Tensor] = {}
    if scope == "global":
        flat = torch.cat([w.flatten() for w in weights.values()])
        k = round(sparsity * flat.numel())
        keep = torch.ones_like(flat)
        keep[torch.argsort(flat, stable=True)[:k]] = 0.0
        offset = 0
        for name, w in weights.items():
            masks[name] = keep[offset : offset + w.numel()].reshape(w.shape)
            offset += w.numel()
    else:
        for name, w in weights.items():
            flat = w.flatten()
            keep = torch.ones_like(flat)
            keep[torch.argsort(flat, stable=True)[: round(sparsity * flat.numel())]] = 0.0
            masks[name] = keep.reshape(w.shape)
    return masks


def is_brevitas(model: nn.Module) -> bool:
    """True when the model has Brevitas quantized weight layers."""
    return any(hasattr(m, "quant_weight") for m in weight_layers(model).values())


def weight_codes(model: nn.Module) -> dict[str, np.ndarray]:
    """Integer weight codes of a QAT model's weight layers (what the hardware stores)."""
    layers = {k: m for k, m in weight_layers(model).items() if hasattr(m, "quant_weight")}
    if not layers:
        raise ConfigError("weight_codes needs a Brevitas QAT model")
    with torch.no_grad():
        return {
            name: m.quant_weight().int().cpu().numpy().astype(np.int64)
            for name, m in layers.items()
        }


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of weights that are exactly zero (integer codes for QAT models)."""
    if is_brevitas(model):
        arrays = list(weight_codes(model).values())
    else:
        arrays = [m.weight.detach().cpu().numpy() for m in weight_layers(model).values()]
    total = sum(a.size for a in arrays)
    return float(sum(int(np.count_nonzero(a == 0)) for a in arrays) / total)


def prune_and_finetune(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    loss_fn: Loss,
    sparsity: float,
    epochs: int,
    seed: int = 0,
    settings: TrainSettings = TrainSettings(),
    scope: Literal["layer", "global"] = "layer",
    layers: Callable[[nn.Module], dict[str, nn.Module]] = weight_layers,
) -> nn.Module:
    """Magnitude-prune a copy of ``model`` and fine-tune it with the mask held.

    Pruned weights are re-zeroed after every optimizer step, so they are exactly 0
    and quantize to code 0. ``layers`` picks the prunable layers (e.g. only the
    on-chip encoder of an autoencoder).
    """
    gen = seed_all(seed)
    pruned = copy.deepcopy(model).cpu()
    chosen = layers(pruned)
    masks = magnitude_masks(chosen, sparsity, scope)
    with torch.no_grad():
        for name, m in chosen.items():
            m.weight.mul_(masks[name])
    t0 = time.perf_counter()
    fit(pruned, x, y, loss_fn, epochs, gen, settings, masks=masks, layers=chosen)
    log.info("prune %.0f%% (%s): %d epochs in %.1f s", 100 * sparsity, scope, epochs,
             time.perf_counter() - t0)  # fmt: skip
    return pruned


def init_from_float(qat_model: nn.Module, float_model: nn.Module) -> None:
    """Copy float weights and biases into the QAT twin (same parameter names and shapes)."""
    src = float_model.state_dict()
    dst = qat_model.state_dict()
    for key, val in src.items():
        if key not in dst or dst[key].shape != val.shape:
            raise ConfigError(
                f"float parameter {key!r} {tuple(val.shape)} has no twin in the QAT model; "
                "build both models for the same design"
            )
    missing, unexpected = qat_model.load_state_dict(src, strict=False)
    bad = [k for k in missing if "weight" in k.split(".")[-1] or k.endswith(".bias")]
    if unexpected or bad:
        raise ConfigError(f"QAT init from float failed: missing {bad}, unexpected {unexpected}")


# ------------------------------------------------------------------ checkpoints

_PLAIN = (str, int, float, bool, type(None))


def check_plain(obj: Any, where: str = "meta") -> None:
    """Refuse metadata that ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ConfigError(f"checkpoint meta key {where}.{k!r} must be a str")
            check_plain(v, f"{where}.{k}")
        return
    raise ConfigError(
        f"checkpoint meta {where} is a {type(obj).__name__}; only str, int, float, bool, "
        "None, lists and dicts of them can be loaded with weights_only=True"
    )


def save_state(path: str | Path, fmt: str, meta: dict[str, Any], model: nn.Module) -> Path:
    """Write ``{"format", "meta", "state_dict"}`` for ``torch.load(weights_only=True)``."""
    check_plain(meta)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": fmt, "meta": dict(meta), "state_dict": state}, path)
    return path


def read_state(path: str | Path, formats: tuple[str, ...]) -> tuple[dict, dict]:
    """Read a checkpoint written by :func:`save_state`; refuse missing/corrupt/foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CorruptFileError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
            "it is truncated or not a torch checkpoint - re-create it"
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") not in formats:
        raise CorruptFileError(
            f"checkpoint {path} is not an edgeml checkpoint (expected format {formats})"
        )
    meta, state = obj.get("meta"), obj.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict):
        raise CorruptFileError(f"checkpoint {path} lacks 'meta' or 'state_dict'")
    return meta, state


def load_state_into(model: nn.Module, state: dict, path: str | Path, meta: dict) -> nn.Module:
    """Load ``state`` into a freshly built ``model``; all but unseen act scales must match."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, ValueError) as exc:
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
    return model.eval()
