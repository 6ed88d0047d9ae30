"""The Brevitas test models shared by the fault, RTL and hls4ml tests, and their QONNX export.

The lead's design style: power-of-two (fixed-point) quantizers, an 8-bit unsigned input,
6-bit weights and ReLU activations, 16-bit biases. ``mlp`` is 64-32-32-10 and ``cnn`` is
Conv 1->8 3x3, ReLU, MaxPool 2, Linear 72->10, both as ``nn.Sequential`` (slices give the
hidden layers). Each test file sets its own seed, then trains (``train``), calibrates
(``calibrate``) or re-initialises (``init_uniform``) the model, and exports it with
``export_clean`` (``export_qonnx``, then ``edgeml.export.clean_qonnx``).

torch and Brevitas are imported lazily, so collecting the tests stays quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def quant_input() -> Any:
    """8-bit unsigned fixed-point input quantizer."""
    import brevitas.nn as qnn
    from brevitas.quant import Uint8ActPerTensorFixedPoint

    return qnn.QuantIdentity(
        act_quant=Uint8ActPerTensorFixedPoint, bit_width=8, return_quant_tensor=True
    )


def quant_relu() -> Any:
    """ReLU with a 6-bit unsigned fixed-point output quantizer."""
    import brevitas.nn as qnn
    from brevitas.quant import Uint8ActPerTensorFixedPoint

    return qnn.QuantReLU(
        act_quant=Uint8ActPerTensorFixedPoint, bit_width=6, return_quant_tensor=True
    )


def _weight_quant(kw: dict[str, Any]) -> dict[str, Any]:
    from brevitas.quant import Int8WeightPerTensorFixedPoint, Int16Bias

    return {
        "bias": True,
        "weight_quant": Int8WeightPerTensorFixedPoint,
        "weight_bit_width": 6,
        "bias_quant": Int16Bias,
        "return_quant_tensor": True,
        **kw,
    }


def quant_linear(i: int, o: int, last: bool = False, **kw: Any) -> Any:
    """6-bit power-of-two weights, 16-bit bias; ``last`` returns a float tensor."""
    import brevitas.nn as qnn

    if last:
        kw.setdefault("return_quant_tensor", False)
    return qnn.QuantLinear(i, o, **_weight_quant(kw))


def quant_conv(i: int, o: int, k: int, **kw: Any) -> Any:
    """As ``quant_linear``; ``kw`` overrides the defaults (padding 0, 6-bit weights, ...)."""
    import brevitas.nn as qnn

    return qnn.QuantConv2d(i, o, k, **_weight_quant({"padding": 0, **kw}))


def mlp(flatten: bool = True) -> Any:
    """64-32-32-10: (N, 1, 8, 8) images, flattened first; (N, 64) vectors without ``flatten``."""
    from torch import nn

    return nn.Sequential(
        *([nn.Flatten()] if flatten else []),
        quant_input(),
        quant_linear(64, 32),
        quant_relu(),
        quant_linear(32, 32),
        quant_relu(),
        quant_linear(32, 10, last=True),
    )


def cnn() -> Any:
    """Conv 1->8 3x3 (no padding), ReLU, MaxPool 2, Linear 72->10 on (N, 1, 8, 8) images."""
    from torch import nn

    return nn.Sequential(
        quant_input(),
        quant_conv(1, 8, 3),
        quant_relu(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        quant_linear(72, 10, last=True),
    )


def digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits as (N, 1, 8, 8) float32 pixels/16 in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32)[:, None], data.target.astype(np.int64)


def train(
    model: Any, x: np.ndarray, y: np.ndarray, epochs: int = 8, lr: float = 2e-2, batch: int = 256
) -> None:
    """Brief Adam training with cross-entropy (the global torch seed decides the batches)."""
    import torch
    from torch import nn

    xt, yt = torch.tensor(x), torch.tensor(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            out = model(xt[idx])
            out = out.value if hasattr(out, "value") else out
            nn.functional.cross_entropy(out, yt[idx]).backward()
            opt.step()
    model.eval()


def calibrate(
    model: Any, input_shape: tuple[int, ...], batches: int, batch: int, scale: float = 1.0
) -> None:
    """Set the activation scales from ``batches`` random batches in [0, scale), then eval()."""
    import torch

    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.rand(batch, *input_shape) * scale)
    model.eval()


def init_uniform(model: Any, bound: float) -> None:
    """Random but not tiny weights and biases (quantizer parameters untouched)."""
    import torch

    for layer in model:
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            torch.nn.init.uniform_(layer.weight, -bound, bound)
            torch.nn.init.uniform_(layer.bias, -bound, bound)


def export_clean(model: Any, input_shape: tuple[int, ...], folder: Path, stem: str) -> Path:
    """``export_qonnx`` to ``<stem>.onnx``, ``clean_qonnx`` to ``<stem>_clean.onnx`` (returned)."""
    import torch
    from brevitas.export import export_qonnx

    from edgeml.export import clean_qonnx

    raw, clean = folder / f"{stem}.onnx", folder / f"{stem}_clean.onnx"
    export_qonnx(model, torch.rand(1, *input_shape), export_path=str(raw))
    clean_qonnx(raw, clean)
    return clean
