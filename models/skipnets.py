"""ResNet-style CNNs with and without skip connections, and how smooth their loss landscapes are.

The loss-landscape studies (Li et al., "Visualizing the loss landscape of neural
nets", NeurIPS 2018; LossLens's ResNet-20 case) compare the same network with
and without its residual connections: without skips the landscape around the
trained minimum is sharper and more chaotic, and the gap grows with depth. Here
that comparison is made on scikit-learn's 8x8 digits with a small network whose
edge form fits a front end:

====================  ===================================  ===========
layer                 op                                   output
====================  ===================================  ===========
``stem``              conv 3x3, 1->4, pad 1, ReLU          8x8x4
``pool``              max-pool 2                           4x4x4
``blocks.i``          conv 3x3 4->4, ReLU, conv 3x3 4->4,  4x4x4
(``i < blocks``)      [+ identity skip], ReLU
``flatten`` / ``fc``  dense 64->10 (logits)                10
====================  ===================================  ===========

With the default 3 blocks (7 conv layers + dense, depth 8) the network has
1,578 parameters and 16,768 multiplies per image; ``skip`` changes no
parameter. The zoo designs ``resnet_skip`` and ``resnet_noskip`` are the two
variants. Their Brevitas twins follow :mod:`edgeml.models.resnet`: power-of-two
weight scales, ``Int16Bias``, ``bit_width``-bit unsigned ReLUs, the constant
8-bit input quantizer of the digits designs (scale ``2**-7``), and in the skip
variant both operands of each residual add pass through one shared signed
``QuantIdentity`` (``blocks.i.add_quant``), so the add is a plain integer add of
two tensors on the same grid at every level.

**Landscape measures** (:func:`landscape`, on a fixed batch of training
digits, cross-entropy loss, parameters in float):

* ``lambda_max``: the top Hessian eigenvalue, by power iteration on autograd
  Hessian-vector products (double backward): the sharpness of the minimum;
* ``slice_rise``: along random *filter-normalised* directions (each conv filter
  / dense row of the direction rescaled to the norm of the weight's filter,
  biases left out, as in Li et al.), the mean loss rise at ``alpha = +-0.5``
  above the minimum; ``slice_roughness``: the total variation of the 1-D slice
  over ``alpha in [-1, 1]`` minus its net drop to the minimum on each side, which is
  zero for a slice with one basin and grows with every extra bump.

:func:`finding` trains both variants at two depths and reports these figures.
Measured (``python -m edgeml.models.skipnets``, seed 0, float, 40 epochs, 95 s on
one core; 512 training digits, 4 directions)::

    model        blocks  test acc  loss    lambda_max  slice_rise  slice_roughness
    skip         3       95.3 %    0.0078   37.1        8.5        0
    no skip      3       94.7 %    0.0082   64.3       14.4        0
    skip         8       95.8 %    0.0030   19.7        5.9        0
    no skip      8       92.2 %    0.0393  250.9       25.0        0

Without skips the minimum is 1.7x sharper at 3 blocks and 12.8x at 8 blocks
(slice rise 1.7x and 4.2x): the skip connections' smoothing grows with depth, as
in Li et al. At this size (and ``alpha`` in [-1, 1]) every slice is still a single
basin (roughness 0); the no-skip nets need He initialisation to train at all
(with PyTorch's default init the 6-block plain net stayed at chance), and the
skip nets a Fixup-style down-scaled residual branch (``conv2`` times
``blocks**-0.5`` at init) since there is no BatchNorm.

``edgeml flow --design resnet_skip`` (6 bits, 50 % pruning, default epochs):
accuracy float 95.0 %, QAT 94.7 %, pruned 95.3 %; golden IR, hls4ml C-sim,
Verilator RTL (16 cycles) and the trained Brevitas model agree on 10,429 / 10,429
vectors; exhaustive single-bit fault AVF 0.027 over 9,848 bits (yosys did not
finish within the flow's 900 s on heavily shared cores).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeml.errors import ConfigError

from . import training, zoo
from .digits import INPUT_SHAPE, N_CLASSES, load_digits_split
from .resnet import Layers
from .training import Dataset, TrainSettings

WIDTH = 4
BLOCKS = 3
DEFAULT_BIT_WIDTH = 6


def _check_bit_width(bit_width: int) -> None:
    if isinstance(bit_width, bool) or not isinstance(bit_width, int) or not 2 <= bit_width <= 8:
        raise ConfigError(
            f"bit_width of designs 'resnet_skip'/'resnet_noskip' must be an integer from 2 to 8, "
            f"got {bit_width!r}"
        )


def _plain(x: Any) -> torch.Tensor:
    return x.value if hasattr(x, "value") else x


class Block(nn.Module):
    """conv3x3 -> ReLU -> conv3x3 [+ identity], ReLU; ``skip=False`` drops the identity."""

    def __init__(self, layers: Layers, width: int, skip: bool) -> None:
        super().__init__()
        self.skip = skip
        self.conv1 = layers.conv(width, width, 3)
        self.relu1 = layers.relu()
        self.conv2 = layers.conv(width, width, 3)
        if skip:
            self.add_quant = layers.add_quant()
        self.relu = layers.relu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _plain(self.conv2(self.relu1(self.conv1(x))))
        if self.skip:
            h = _plain(self.add_quant(h)) + _plain(self.add_quant(_plain(x)))
        return self.relu(h)


class SkipNet(nn.Module):
    """Stem, max-pool, ``blocks`` residual (or plain) blocks, dense; float or Brevitas twin."""

    def __init__(
        self,
        bit_width: int | None = None,
        skip: bool = True,
        blocks: int = BLOCKS,
        width: int = WIDTH,
    ) -> None:
        super().__init__()
        if bit_width is not None:
            _check_bit_width(bit_width)
            self.bit_width = bit_width
        for name, v in (("blocks", blocks), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        layers = Layers(bit_width)
        self.skip = bool(skip)
        self.inp = layers.inp()
        self.stem = layers.conv(INPUT_SHAPE[0], width, 3)
        self.stem_relu = layers.relu()
        self.pool = nn.MaxPool2d(2)
        self.blocks = nn.Sequential(*(Block(layers, width, self.skip) for _ in range(blocks)))
        self.flatten = nn.Flatten()
        side = INPUT_SHAPE[1] // 2
        self.fc = layers.linear(width * side * side, N_CLASSES)
        for m in self.modules():  # He init: plain (no-skip) stacks train from it
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if self.skip:  # Fixup-style: residual branches start small, so depth does not blow up
            for b in self.blocks:
                with torch.no_grad():
                    b.conv2.weight.mul_(blocks**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # QuantTensors flow on (max-pool and flatten keep their scale): Int16Bias needs it
        h = self.pool(self.stem_relu(self.stem(self.inp(x))))
        return self.fc(self.flatten(self.blocks(h)))


def build_float(skip: bool = True, blocks: int = BLOCKS) -> SkipNet:
    """A freshly initialised float net (``skip`` with identity shortcuts)."""
    return SkipNet(None, skip, blocks)


def build_qat(
    bit_width: int = DEFAULT_BIT_WIDTH, skip: bool = True, blocks: int = BLOCKS
) -> SkipNet:
    """Its Brevitas QAT twin at ``bit_width`` (2..8)."""
    _check_bit_width(bit_width)
    return SkipNet(bit_width, skip, blocks)


def load_data(seed: int = 0) -> Dataset:
    """The digits split of :mod:`edgeml.models.digits` (1,437 train / 360 test)."""
    d = load_digits_split(seed=seed)
    return Dataset(d.x_train, d.y_train, d.x_test, d.y_test, {"source": "sklearn digits"})


# ----------------------------------------------------------------------- landscape


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(training.value(model(x)), y)


def hessian_top_eigenvalue(
    model: nn.Module, x: np.ndarray, y: np.ndarray, iters: int = 30, seed: int = 0
) -> float:
    """Top Hessian eigenvalue of the mean cross-entropy over ``(x, y)``, by power iteration.

    Hessian-vector products are autograd double backward (Pearlmutter); the
    Rayleigh quotient after ``iters`` steps is returned (float model, eval mode).
    """
    model = model.cpu().eval()
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y))
    params = _params(model)
    loss = _loss(model, xt, yt)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen) for p in params]
    norm = torch.sqrt(sum((a * a).sum() for a in v))
    v = [a / norm for a in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((a * a).sum() for a in hv))
        v = [a.detach() / norm for a in hv]
    return eig


def filter_normalised_direction(model: nn.Module, seed: int = 0) -> list[torch.Tensor]:
    """A random direction with each filter (row) scaled to its weight filter's norm; biases 0."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for p in _params(model):
        d = torch.randn(p.shape, generator=gen)
        if p.dim() <= 1:
            d.zero_()
        else:
            w = p.detach().reshape(len(p), -1)
            dd = d.reshape(len(d), -1)
            dd.mul_(w.norm(dim=1, keepdim=True) / dd.norm(dim=1, keepdim=True).clamp_min(1e-12))
        out.append(d)
    return out


def loss_slice(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    direction: Sequence[torch.Tensor],
    alphas: np.ndarray,
) -> np.ndarray:
    """Loss at ``theta + alpha * direction`` for each ``alpha`` (the model is restored)."""
    model = model.cpu().eval()
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y))
    params = _params(model)
    base = [p.detach().clone() for p in params]
    out = []
    try:
        with torch.no_grad():
            for a in alphas:
                for p, b, d in zip(params, base, direction, strict=True):
                    p.copy_(b + float(a) * d)
                out.append(float(_loss(model, xt, yt)))
    finally:
        with torch.no_grad():
            for p, b in zip(params, base, strict=True):
                p.copy_(b)
    return np.asarray(out)


def slice_roughness(losses: np.ndarray) -> float:
    """Total variation of a 1-D slice minus its monotone part (0 for one basin)."""
    ls = np.asarray(losses, np.float64)
    i = int(np.argmin(ls))
    monotone = (ls[0] - ls[i]) + (ls[-1] - ls[i])
    return float(np.abs(np.diff(ls)).sum() - monotone)


def landscape(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    directions: int = 4,
    points: int = 41,
    power_iters: int = 30,
    seed: int = 0,
) -> dict[str, float]:
    """``lambda_max``, ``slice_rise`` and ``slice_roughness`` of ``model`` at ``(x, y)``."""
    alphas = np.linspace(-1.0, 1.0, points)
    half = [int(np.argmin(np.abs(alphas - a))) for a in (-0.5, 0.5)]
    centre = int(np.argmin(np.abs(alphas)))
    rises, rough = [], []
    for k in range(directions):
        ls = loss_slice(model, x, y, filter_normalised_direction(model, seed + k), alphas)
        rises.append(float(np.mean(ls[half]) - ls[centre]))
        rough.append(slice_roughness(ls))
    return {
        "lambda_max": hessian_top_eigenvalue(model, x, y, power_iters, seed),
        "slice_rise": float(np.mean(rises)),
        "slice_roughness": float(np.mean(rough)),
        "loss": float(loss_slice(model, x, y, [torch.zeros(()) for _ in _params(model)], [0.0])[0]),
    }


def finding(seed: int = 0, quick: bool = False) -> dict[str, float]:
    """Train both variants at 3 and 8 blocks (quick: 3 and 6) and measure their landscapes.

    Keys ``{skip|noskip}_b{blocks}_{accuracy|lambda_max|slice_rise|slice_roughness|loss}``
    and ``seconds``. Float models, Adam lr 3e-3, 40 epochs (quick: 20), landscape on
    512 training digits (quick: 256).
    """
    t0 = time.perf_counter()
    data = load_data(seed)
    depths = (BLOCKS, 6) if quick else (BLOCKS, 8)
    epochs = 20 if quick else 40
    n = 256 if quick else 512
    xs, ys = data.x_train[:n], data.y_train[:n]
    out: dict[str, float] = {}
    for blocks in depths:
        for skip in (True, False):
            gen = training.seed_all(seed)
            m = training.fit(
                build_float(skip, blocks),
                data.x_train,
                data.y_train,
                zoo.cross_entropy,
                epochs,
                gen,
                TrainSettings(lr=3e-3),
            )
            tag = f"{'skip' if skip else 'noskip'}_b{blocks}"
            out[f"{tag}_accuracy"] = training.top1_accuracy(
                training.predict(m, data.x_test), data.y_test
            )
            lands = landscape(
                m, xs, ys, directions=2 if quick else 4, points=21 if quick else 41,
                power_iters=15 if quick else 30, seed=seed,
            )  # fmt: skip
            out.update({f"{tag}_{k}": v for k, v in lands.items()})
    out["seconds"] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------- zoo


def _spec(skip: bool) -> Any:
    name = "resnet_skip" if skip else "resnet_noskip"
    return zoo.DesignSpec(
        name=name,
        title=(
            f"digits ResNet-style CNN, {BLOCKS} blocks, "
            + ("identity skips (residual adds)" if skip else "no skips (plain)")
        ),
        task="classification",
        input_shape=INPUT_SHAPE,
        load_data=load_data,
        build_float=partial(build_float, skip),
        build_qat=partial(_build_qat_variant, skip),
        loss=zoo.cross_entropy,
        metrics=zoo.accuracy_metrics,
        epochs={"float": 60, "qat": 30, "finetune": 30},
        float_settings=TrainSettings(lr=3e-3),
        settings=TrainSettings(lr=1e-3),
        notes=(
            "loss-landscape pair (Li et al. 2018, LossLens): same layers, "
            + ("residual adds share one power-of-two quantizer per block" if skip else "no adds")
        ),
    )


def _build_qat_variant(skip: bool, bit_width: int = DEFAULT_BIT_WIDTH) -> SkipNet:
    return build_qat(bit_width, skip)


DESIGNS = {"resnet_skip": _spec(True), "resnet_noskip": _spec(False)}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgeml.models.skipnets [--quick] [--seed N]``: print the comparison."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer epochs, directions and depths")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    res = finding(args.seed, args.quick)
    cols = ("accuracy", "loss", "lambda_max", "slice_rise", "slice_roughness")
    print(f"{'model':<14}" + "".join(f"{c:>17}" for c in cols))
    for tag in sorted({k.rsplit("_", 1)[0] for k in res if k.endswith("_accuracy")}):
        print(f"{tag:<14}" + "".join(f"{res[f'{tag}_{c}']:17.4f}" for c in cols))
    print(f"({res['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
