"""The ECON-T design: a CMS HGCAL front-end autoencoder whose encoder goes on chip.

**Published architecture** (the "8x8_c8_S2_tele" encoder of the ECON-T ASIC
studies, Di Guglielmo et al., IEEE TNS 2021, arXiv:2105.01683, and the
``fastml-science`` sensor-data-compression benchmark): the 48 trigger cells of
a module, normalised, arranged as an 8x8x1 image -> Conv2D 8 filters 3x3,
stride 2, 'same' padding -> ReLU -> Flatten (4x4x8 = 128) -> Dense 16 -> ReLU
(the latent, sent off detector). Parameters: 80 + 2,064 = **2,144**. The
decoder runs off detector, in float: Dense 16->128 -> reshape 4x4x8 ->
transposed convolutions back to 8x8. Quality is the energy mover's distance
(EMD) between the input and the decoded map.

**What is the same here / what differs**

* Same encoder layers, shapes and parameter count (2,144).
* Padding: torch pads stride-2 convolutions symmetrically (``padding=1``,
  windows start at rows -1, 1, 3, 5), Keras 'same' pads only the bottom/right
  (rows 0, 2, 4, 6). Both see every cell; the exported QONNX ``Conv`` carries
  ``pads=[1, 1, 1, 1]``.
* Quantisation: the chip's training scripts use QKeras with 6-bit weights
  (sign + 5), a 10-bit fixed-point input (3 integer bits) and a 9-bit unsigned
  latent (1 integer + 8 fraction bits, for 5 e-links). Here: Brevitas power-of-two scales, ``bit_width``-bit weights
  and conv activations (6 by default), ``Int16Bias``, a *constant* input
  quantizer ``ap_ufixed<8,0>`` (scale 2**-8, the normalised map of
  :mod:`edgeml.models.calo`) and a 9-bit unsigned power-of-two latent
  quantizer (:data:`LATENT_BITS`), whatever ``bit_width`` is, as on the chip.
  Every scale is a power of two and the bias is at the accumulator scale, so
  Brevitas (float32), the golden model, hls4ml C-sim and the RTL agree bit for
  bit: the conv accumulator is below ``9 * 255 * 31 + 2**15 < 2**17`` and the
  dense one below ``128 * 63 * 31 + 2**15 < 2**19`` at 6 bits (far below
  float32's 2**24), and the latent is 9 bits wide (<= 32 for the RTL binder).
* Input: the real chip normalises by a power of two and maps a hexagonal
  module onto 8x8 (16 cells always zero); here the 8x8 patch is square and
  normalised by its exact sum (see :mod:`edgeml.models.calo`).
* Decoder: Dense 16->128 -> ReLU -> 4x4x8 -> ConvTranspose 3x3 stride 2 ->
  ReLU -> Conv 3x3 -> softmax over the 64 cells, so the decoded map is a
  normalised energy distribution (the chip's studies used a sigmoid output).
* Loss: the chip was trained with a multi-scale ("telescope") MSE over
  single cells and groups of cells. Here the loss is :func:`econt_loss`, an
  MSE at 1x1, 2x2 and 4x4 sum pooling plus the L1 distance of the cumulative
  distributions along both axes (a differentiable lower bound on the EMD);
  the figure of merit is the exact EMD (:func:`emd`). Measured after 10 float
  epochs on the default data (mean test EMD, cell pitches): this loss 0.557,
  the CDF term alone 0.582, the telescope MSE alone 0.606, plain MSE 0.653.
* Training: float 60 epochs at lr 3e-3 (the test EMD stops improving there:
  0.510 at 30, 0.485 at 60, 0.483 at 80 epochs), then QAT 20 and pruning
  fine-tune 20 epochs at lr 1e-3, batches of 128.

**EMD.** The energy mover's distance of two maps is the cost of the optimal
transport plan moving the normalised input onto the normalised decoded map,
with the Euclidean distance between cell centres (in cell pitches) as ground
distance, as in the ECON-T papers. It is solved exactly: POT's network simplex
(``ot.emd2``, about 0.4 ms per map) when POT is installed, else scipy's HiGHS
linear program (about 15 ms per map).
"""

from __future__ import annotations

import logging
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeml.errors import ConfigError

from . import calo, training
from .training import Dataset, TrainSettings

with warnings.catch_warnings():
    # Brevitas warns at import about optional kernels it does not need here.
    warnings.simplefilter("ignore")
    from brevitas import nn as qnn
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant import (
        Int8WeightPerTensorFixedPoint,
        Int16Bias,
        Uint8ActPerTensorFixedPoint,
    )

log = logging.getLogger(__name__)

INPUT_SHAPE: tuple[int, int, int] = (1, 8, 8)
#: Latent (on-chip output) size and its unsigned bit width (1 integer + 8 fraction bits on ECON-T).
LATENT = 16
LATENT_BITS = 9
#: Input codes are the normalised map quantised with 8 fractional bits (see calo.py).
INPUT_BITS = 8
CONV_FILTERS = 8
#: Generated data set sizes (maps) of :func:`load_data`.
N_TRAIN = 20_000
N_TEST = 5_000
ACT_COLLECT_STATS_STEPS = training.ACT_COLLECT_STATS_STEPS


# ---------------------------------------------------------------------------- EMD


@lru_cache(maxsize=4)
def ground_distance(height: int = 8, width: int = 8) -> np.ndarray:
    """Euclidean distances between cell centres (in cell pitches), ``(H*W, H*W)`` float64."""
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    pts = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float64)
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(axis=-1))
    d.setflags(write=False)
    return d


def _normalise(maps: np.ndarray, what: str) -> np.ndarray:
    m = np.asarray(maps, np.float64)
    if m.ndim < 3:
        raise ConfigError(f"{what} must be a batch of maps (N, [1,] H, W), got shape {m.shape}")
    m = m.reshape(len(m), -1)
    if np.any(m < 0) or not np.all(np.isfinite(m)):
        raise ConfigError(f"{what} must be finite and non-negative (energies)")
    s = m.sum(axis=1, keepdims=True)
    if np.any(s <= 0):
        raise ConfigError(f"{what} has {int((s <= 0).sum())} maps with zero total energy")
    return m / s


def _emd_pot(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> float:
    import ot

    ia, ib = np.flatnonzero(a), np.flatnonzero(b)
    pa, pb = a[ia], b[ib]
    pb = pb * (pa.sum() / pb.sum())  # equal masses to the last ulp, as the simplex requires
    return float(ot.emd2(pa, pb, np.ascontiguousarray(cost[np.ix_(ia, ib)]), numItermax=1_000_000))


def _emd_linprog(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> float:
    from scipy.optimize import linprog

    ia, ib = np.flatnonzero(a), np.flatnonzero(b)
    n, m = len(ia), len(ib)
    a_eq = np.zeros((n + m, n * m))
    for k in range(n):
        a_eq[k, k * m : (k + 1) * m] = 1.0
    for k in range(m):
        a_eq[n + k, k::m] = 1.0
    res = linprog(
        cost[np.ix_(ia, ib)].ravel(),
        A_eq=a_eq,
        b_eq=np.concatenate([a[ia], b[ib] * (a[ia].sum() / b[ib].sum())]),
        bounds=(0, None),
        method="highs",
    )
    if res.status != 0:  # pragma: no cover - a transport problem always has a solution
        raise RuntimeError(f"EMD linear program failed: {res.message}")
    return float(res.fun)


def emd(p: np.ndarray, q: np.ndarray, backend: str = "auto") -> np.ndarray:
    """Exact energy mover's distance per map pair, in cell pitches, ``(N,)`` float64.

    ``p`` and ``q`` are ``(N, [1,] H, W)`` non-negative energies; each map is
    normalised to unit sum first (so only the shapes are compared). Ground
    distance: Euclidean between cell centres. ``backend`` is ``"pot"``
    (network simplex), ``"linprog"`` (scipy HiGHS) or ``"auto"`` (POT if installed).
    """
    if backend not in ("auto", "pot", "linprog"):
        raise ConfigError(f"emd backend must be 'auto', 'pot' or 'linprog', got {backend!r}")
    p_arr, q_arr = np.asarray(p), np.asarray(q)
    if p_arr.shape[-2:] != q_arr.shape[-2:] or len(p_arr) != len(q_arr):
        raise ConfigError(f"emd needs maps of equal shapes, got {p_arr.shape} and {q_arr.shape}")
    h, w = p_arr.shape[-2:]
    a, b = _normalise(p_arr, "p"), _normalise(q_arr, "q")
    cost = ground_distance(h, w)
    if backend == "auto":
        try:
            import ot  # noqa: F401

            backend = "pot"
        except ImportError:
            backend = "linprog"
    solve = _emd_pot if backend == "pot" else _emd_linprog
    return np.array([solve(a[i], b[i], cost) for i in range(len(a))], dtype=np.float64)


def emd_metrics(decoded: np.ndarray, x: np.ndarray) -> dict[str, float]:
    """Mean / median / 90th percentile EMD between inputs ``x`` and ``decoded`` maps."""
    d = emd(x, np.clip(np.asarray(decoded, np.float64), 0.0, None))
    return {
        "emd": float(d.mean()),
        "emd_median": float(np.median(d)),
        "emd_p90": float(np.quantile(d, 0.9)),
    }


# ------------------------------------------------------------------------ losses


def _cdf_l1(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """L1 distance of the marginal cumulative distributions along rows and columns.

    For one axis this is the exact 1-D EMD of the projections, and each
    projection's EMD is a lower bound on the 2-D EMD, so minimising it pulls
    energy to the right place; summed over both axes.
    """
    d = p - q
    dx = torch.cumsum(d.sum(dim=-2), dim=-1).abs().sum(dim=-1)
    dy = torch.cumsum(d.sum(dim=-1), dim=-1).abs().sum(dim=-1)
    return (dx + dy).mean()


def _telescope(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """MSE of the maps at 1x1, 2x2 and 4x4 sum pooling (a multi-scale "telescope" MSE)."""
    loss = ((p - q) ** 2).sum(dim=(-2, -1)).mean()
    for k in (2, 4):
        pp = nn.functional.avg_pool2d(p, k) * (k * k)
        qq = nn.functional.avg_pool2d(q, k) * (k * k)
        loss = loss + ((pp - qq) ** 2).sum(dim=(-2, -1)).mean()
    return loss


def econt_loss(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Training loss: telescope MSE + marginal-CDF L1 between the normalised input and the output."""
    target = x / x.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return _telescope(out, target) + _cdf_l1(out, target)


# ------------------------------------------------------------------- architecture


class InputQuant(Uint8ActPerTensorFixedPoint):
    """Constant unsigned 8-bit input quantizer, scale ``2**-8``: ``ap_ufixed<8,0>``.

    The inputs are cell fractions of the map sum, already on this grid
    (:mod:`edgeml.models.calo`); 1.0 (all energy in one cell) saturates at 255/256.
    """

    scaling_impl_type = ScalingImplType.CONST
    max_val = 1.0


def _check_bit_width(bit_width: int) -> None:
    if isinstance(bit_width, bool) or not isinstance(bit_width, int) or not 2 <= bit_width <= 8:
        raise ConfigError(
            f"bit_width must be an integer from 2 to 8 (8-bit quantizer families), got {bit_width!r}"
        )


class FloatEncoder(nn.Module):
    """Conv 8x3x3 stride 2 -> ReLU -> Flatten(128) -> Dense 16 -> ReLU (2,144 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Identity()
        self.conv = nn.Conv2d(1, CONV_FILTERS, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.dense = nn.Linear(CONV_FILTERS * 4 * 4, LATENT)
        self.latent = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv(self.inp(x)))
        return self.latent(self.dense(self.flatten(h)))


class QuantEncoder(nn.Module):
    """Brevitas twin of :class:`FloatEncoder`: PoT scales, Int16Bias, constant input, 9-bit latent."""

    def __init__(self, bit_width: int) -> None:
        super().__init__()
        self.inp = qnn.QuantIdentity(act_quant=InputQuant, return_quant_tensor=True)
        self.conv = qnn.QuantConv2d(
            1,
            CONV_FILTERS,
            3,
            stride=2,
            padding=1,
            bias=True,
            weight_quant=Int8WeightPerTensorFixedPoint,
            weight_bit_width=bit_width,
            bias_quant=Int16Bias,
            return_quant_tensor=True,
        )
        self.relu = qnn.QuantReLU(
            act_quant=Uint8ActPerTensorFixedPoint,
            bit_width=bit_width,
            collect_stats_steps=ACT_COLLECT_STATS_STEPS,
            return_quant_tensor=True,
        )
        self.flatten = nn.Flatten()
        self.dense = qnn.QuantLinear(
            CONV_FILTERS * 4 * 4,
            LATENT,
            bias=True,
            weight_quant=Int8WeightPerTensorFixedPoint,
            weight_bit_width=bit_width,
            bias_quant=Int16Bias,
            return_quant_tensor=True,
        )
        # The latent leaves the chip: a power-of-two unsigned quantizer fixes its format.
        self.latent = qnn.QuantReLU(
            act_quant=Uint8ActPerTensorFixedPoint,
            bit_width=LATENT_BITS,
            collect_stats_steps=ACT_COLLECT_STATS_STEPS,
            return_quant_tensor=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv(self.inp(x)))
        return self.latent(self.dense(self.flatten(h)))


class Decoder(nn.Module):
    """Host-side float decoder: latent (16) -> normalised 8x8 map (softmax over the cells)."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(LATENT, CONV_FILTERS * 4 * 4)
        self.relu1 = nn.ReLU()
        self.up = nn.ConvTranspose2d(
            CONV_FILTERS, CONV_FILTERS, 3, stride=2, padding=1, output_padding=1
        )
        self.relu2 = nn.ReLU()
        self.out = nn.Conv2d(CONV_FILTERS, 1, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.dense(z)).reshape(len(z), CONV_FILTERS, 4, 4)
        logits = self.out(self.relu2(self.up(h))).reshape(len(z), -1)
        return torch.softmax(logits, dim=-1).reshape(len(z), *INPUT_SHAPE)


class ECONTAutoencoder(nn.Module):
    """Encoder (on chip: :attr:`encoder`) + host decoder; ``forward`` returns the decoded map."""

    def __init__(self, bit_width: int | None = None) -> None:
        super().__init__()
        if bit_width is not None:
            _check_bit_width(bit_width)
            self.bit_width = bit_width
        self.encoder: nn.Module = FloatEncoder() if bit_width is None else QuantEncoder(bit_width)
        self.decoder = Decoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(training.value(self.encoder(x)))


def build_float() -> ECONTAutoencoder:
    """Float autoencoder (float encoder + decoder)."""
    return ECONTAutoencoder()


def build_qat(bit_width: int = 6) -> ECONTAutoencoder:
    """Brevitas QAT encoder + float decoder; same parameter names as :func:`build_float`."""
    return ECONTAutoencoder(bit_width)


def encoder_parameters(model: nn.Module) -> int:
    """Weights + biases of the on-chip encoder (2,144)."""
    enc = model.encoder if hasattr(model, "encoder") else model
    return sum(
        m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        for m in training.weight_layers(enc).values()
    )


def edge(model: nn.Module) -> nn.Module:
    """The on-chip part: the encoder."""
    return model.encoder


def prunable(model: nn.Module) -> dict[str, nn.Module]:
    """Only the encoder's weights are pruned: the decoder runs in float on the host."""
    return training.weight_layers(model.encoder)


# ------------------------------------------------------------------------ data / metrics


def load_data(seed: int = 0) -> Dataset:
    """:data:`N_TRAIN` + :data:`N_TEST` generated maps (:mod:`edgeml.models.calo`) from ``seed``.

    ``x`` is the ECON-T input (normalised, quantised, ``(N, 1, 8, 8)``); ``y``
    is the map's total energy in MIP_T (the host-side normalisation, not used
    in training).
    """
    maps = calo.generate(N_TRAIN + N_TEST, seed=seed)
    tr, te = maps.subset(slice(0, N_TRAIN)), maps.subset(slice(N_TRAIN, None))
    return Dataset(
        x_train=np.ascontiguousarray(tr.x),
        y_train=np.ascontiguousarray(tr.total),
        x_test=np.ascontiguousarray(te.x),
        y_test=np.ascontiguousarray(te.total),
        info={
            "source": f"generated HGCAL-like 8x8 trigger-cell maps (calo.py, seed {seed})",
            "n_train": N_TRAIN,
            "n_test": N_TEST,
        },
    )


def metrics(outputs: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """EMD between the inputs and the decoded maps (``outputs`` of the full model)."""
    return emd_metrics(outputs, x)


def decode(model: nn.Module, latent: np.ndarray) -> np.ndarray:
    """Run ``model``'s host decoder on real-valued latents ``(N, 16)``; float64 maps."""
    z = np.asarray(latent, np.float32).reshape(len(latent), -1)
    if z.shape[1] != LATENT:
        raise ConfigError(
            f"latents must have {LATENT} values per map, got shape {np.shape(latent)}"
        )
    return training.predict(model.decoder, z)


def edge_metrics(
    edge_outputs: np.ndarray, model: nn.Module, x: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """EMD from on-chip latents: ``edge_outputs`` are real values (codes x output scale), (N, 16)."""
    return emd_metrics(decode(model, edge_outputs), x)


def _spec() -> Any:
    from . import zoo

    return zoo.DesignSpec(
        name="econt",
        title="ECON-T encoder conv3x3/2(1->8)-dense(128->16), host decoder",
        task="autoencoder",
        input_shape=INPUT_SHAPE,
        load_data=load_data,
        build_float=build_float,
        build_qat=build_qat,
        loss=econt_loss,
        metrics=metrics,
        primary="emd",
        higher_is_better=False,
        edge=edge,
        edge_metrics=edge_metrics,
        prunable=prunable,
        epochs={"float": 60, "qat": 20, "finetune": 20},
        settings=TrainSettings(lr=1e-3, batch_size=128),
        float_settings=TrainSettings(lr=3e-3, batch_size=128),
        notes=(
            f"encoder parameters: 2,144 (published 8x8_c8_S2 ECON-T encoder); latent {LATENT} x "
            f"{LATENT_BITS}-bit unsigned; quality = exact EMD in cell pitches (lower is better)"
        ),
    )


DESIGNS = {"econt": _spec()}
