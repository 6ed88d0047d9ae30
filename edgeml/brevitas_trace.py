"""Per-layer outputs of a trained Brevitas model, as golden-model codes.

Used to name the first layer where the trained model and the golden model
diverge. Forward hooks collect the outputs of the quantized layers in
execution order; they are matched, in order, to the golden ops of the same
kinds (Linear->dense, Conv->conv, QuantReLU->requant, MaxPool->maxpool) and
divided by the golden tensor's LSB to get codes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeml.golden import GoldenModel

_GOLDEN_KINDS = ("dense", "conv", "requant", "maxpool")


def _module_kind(m: Any) -> str | None:
    import brevitas.nn as qnn
    import torch.nn as nn

    if isinstance(m, qnn.QuantConv2d):
        return "conv"
    if isinstance(m, qnn.QuantLinear):
        return "dense"
    if isinstance(m, qnn.QuantReLU):
        return "requant"
    if isinstance(m, nn.MaxPool2d):
        return "maxpool"
    return None


def torch_trace_codes(model: Any, x: np.ndarray, g: GoldenModel) -> dict[str, np.ndarray]:
    """Golden tensor name -> the Brevitas model's codes for that tensor (empty if unmatched)."""
    import torch

    hooked: list[tuple[str, list[np.ndarray]]] = []
    handles = []
    for m in model.modules():
        kind = _module_kind(m)
        if kind is None:
            continue
        store: list[np.ndarray] = []
        hooked.append((kind, store))

        def hook(_mod: Any, _inp: Any, out: Any, store: list[np.ndarray] = store) -> None:
            v = out.value if hasattr(out, "value") else out
            store.append(v.detach().double().cpu().numpy())

        handles.append(m.register_forward_hook(hook))
    try:
        model.eval()
        dev = next(model.parameters()).device
        with torch.no_grad():
            model(torch.as_tensor(x, dtype=torch.float32, device=dev))
    finally:
        for h in handles:
            h.remove()
    # modules run in definition order for these sequential designs; keep those that ran
    ran = [(k, s[0]) for k, s in hooked if s]
    gops = [op for op in g.ops if op.kind in _GOLDEN_KINDS]
    if [k for k, _ in ran] != [op.kind for op in gops]:
        return {}
    out: dict[str, np.ndarray] = {}
    for (_, v), op in zip(ran, gops, strict=True):
        if v.ndim == 4:  # torch NCHW -> golden NHWC
            v = v.transpose(0, 2, 3, 1)
        out[op.output] = np.rint(v / g.tensors[op.output].scale).astype(np.int64)
    return out
