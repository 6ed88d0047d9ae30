"""The DLWP comparison study: U-Net, ConvGRU and FNO forecasting 2-D Navier-Stokes, same protocol.

**Study** (Karlbauer et al., "Comparing and contrasting deep learning weather
prediction backbones on Navier-Stokes and atmospheric dynamics",
arXiv:2407.14129): the backbones of deep-learning weather prediction, trained
under one controlled protocol, compared by the error of their autoregressive
rollouts. On synthetic 2-D incompressible Navier-Stokes the paper finds the FNO
favourable. Here:

* **Data** (:mod:`edgeml.models._ns_solver`): vorticity on the periodic unit
  square, viscosity 1e-3, the FNO paper's forcing and Gaussian-random-field
  initial conditions, by a pseudo-spectral solver (Crank-Nicolson viscosity,
  Heun advection, 2/3 dealiasing), 32x32, one saved frame per time unit. The
  quick mode trains on the same physics spectrally coarsened to 16x16.
* **Models** (plain torch, CUDA when present): a two-level U-Net (average-pool
  down, nearest-upsample up, concatenated skips), a ConvGRU forecaster
  (encoder, a ConvGRU cell with sigmoid gates and a tanh candidate on the
  half-resolution grid, decoder) and an FNO (lifting, four spectral layers with
  truncated modes, projection). All are periodic (circular padding or FFTs)
  and predict the increment ``w_{t+1} - w_t``.
* **Protocol**: the same trajectories, the same one-step MSE loss on the
  normalised vorticity (teacher forcing: every model sees the true frame ``t``
  and predicts ``t + 1``; the ConvGRU also carries its memory over the true
  past), the same epochs, batches, optimiser (Adam, cosine-decayed learning rate)
  and seed.
* **Metric**: relative L2 error ``||w_hat - w|| / ||w||`` of autoregressive
  rollouts from frame :data:`T0` after 1, 5 and 10 steps, on held-out
  trajectories, beside persistence (``w_hat = w_{T0}``).

**Edge forms** (Brevitas, power-of-two quantizers, one input tensor each; the
on-chip network works on normalised vorticity ``w / W_SCALE`` on an 8-bit
``ap_fixed<8,1>`` grid):

* ``dlwp`` (the main one): a ConvGRU cell step on an 8x8 tile of the 16x16
  field. Input = concat(x, h) = (previous frame, current frame), (2, 8, 8);
  the hidden state is the field itself, so the new state is the forecast:
  ``f = relu(conv(x, h))``, ``z, r = sigmoid(conv(f))``,
  ``c = tanh(conv(f, r * h))``, ``h' = (1 - z) * h + z * c``, with 8-bit
  power-of-two quantizers before and after every sigmoid/tanh and after every
  product (Slice, Concat, Sigmoid, Tanh, Mul/Sub/Add of activations).
* ``dlwp_fno``: one FNO layer on the 8x8 coarse field: the truncated DFT,
  mode weights, inverse DFT and the pointwise path are one linear map, folded
  exactly into a Dense 64 -> 64*C (then quantized), ReLU, the 1x1 projection
  as a Dense, and the residual add.
* ``dlwp_unet``: a tiny U-Net on the tile: conv, max-pool, conv, nearest
  Resize x2, Concat with the skip, conv, 1x1 conv, residual add.

Run ``python -m edgeml.models.dlwp [--quick] [--seed N]`` for the table.

**Measured** (seed 0, one CPU thread on a shared 2-core machine; relative L2 of
rollouts from frame 4 on held-out trajectories)::

    full (32x32, 64 + 16 trajectories, 15 epochs, about 8.5 min in all)
    model        params   L2@1   L2@5   L2@10   train s
    unet          66457  0.105  0.303  0.420     185
    convgru       23473  0.020  0.108  0.250     150
    fno          264449  0.021  0.067  0.072     164
    persistence       -  0.142  0.431  0.591

    quick (16x16, 32 + 12 trajectories, 10 epochs, about 65 s in all)
    unet          29617  0.097  0.306  0.474      15
    convgru       13285  0.076  0.239  0.426      27
    fno           59169  0.075  0.221  0.363      18
    persistence       -  0.129  0.413  0.592

The FNO's rollouts stay best (as the paper finds on Navier-Stokes); the ConvGRU
matches it for one step but drifts; the U-Net, whose receptive field is local
and whose pooled levels blur the advected vortices, is last.

Edge designs (one-step relative L2 on the test tiles, zoo epochs; persistence
0.107 on tiles, 0.117 on the 8x8 field; golden model == Brevitas on 0 of
>= 10,320 vectors, test set + 10,000 random grid inputs, for each)::

    design      params   float   6-bit QAT  + 50 % pruning   8-bit QAT  + 50 %
    dlwp            380  0.037   0.034      0.032            0.028      0.027
    dlwp_fno        199  0.054   0.038      0.034            0.028      0.025
    dlwp_unet       813  0.027   0.026      0.028            0.024      0.027

(``dlwp_fno``: 199 float parameters; its folded Dense layers hold 64 x 128 +
128 x 64 weights, 8,320 of them non-zero after folding. QAT then trains the
Dense layers freely, so the quantized layer is no longer constrained to a
convolution, which is why it ends below the float FNO layer.)
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import time
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeml.errors import ConfigError

from . import _ns_solver as ns
from . import training
from .training import Dataset, TrainSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Brevitas' optional-kernel import warnings
    from brevitas import nn as qnn
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant import (
        Int8ActPerTensorFixedPoint,
        Int8WeightPerTensorFixedPoint,
        Int16Bias,
        Uint8ActPerTensorFixedPoint,
    )

log = logging.getLogger(__name__)

#: Vorticity is divided by this before any model sees it (|w| stays below it in the data).
W_SCALE = 2.0
#: Rollouts start from this saved frame (the ConvGRU warms its memory on frames 0..T0).
T0 = 4
#: Rollout lengths reported.
HORIZONS: tuple[int, ...] = (1, 5, 10)
#: Physics of the study's trajectories (32x32; one saved frame per time unit).
STUDY_CONFIG = ns.NSConfig(n=32, dt=0.05, save_every=1.0, steps=20, spin_up=1.0)
QUICK_CONFIG = ns.NSConfig(n=32, dt=0.05, save_every=1.0, steps=T0 + max(HORIZONS), spin_up=1.0)
#: Trajectories (train, test) and the grid the models see, full and quick mode.
STUDY_SIZES = {"full": (64, 16, 32), "quick": (32, 12, 16)}
#: Training budget of the study, identical for the three models.
STUDY_EPOCHS = {"full": 15, "quick": 10}
STUDY_BATCH = 4
STUDY_LR = 2e-3
ACT_COLLECT_STATS_STEPS = training.ACT_COLLECT_STATS_STEPS


# =============================================================================== data


@lru_cache(maxsize=8)
def _trajectories(seed: int, n_traj: int, quick: bool) -> np.ndarray:
    cfg = QUICK_CONFIG if quick else STUDY_CONFIG
    t = time.perf_counter()
    out = ns.simulate(n_traj, seed=seed, config=cfg).astype(np.float32)
    log.info("simulated %d trajectories in %.1f s", n_traj, time.perf_counter() - t)
    out.setflags(write=False)
    return out


def study_data(seed: int = 0, quick: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Normalised train and test trajectories ``(n, frames, N, N)`` float32 of the study.

    Full mode: 64 + 16 trajectories of 21 frames on the 32x32 grid; quick: 32 + 12
    trajectories of 15 frames, spectrally coarsened to 16x16. Cached per seed.
    """
    n_tr, n_te, grid = STUDY_SIZES["quick" if quick else "full"]
    traj = _trajectories(int(seed), n_tr + n_te, bool(quick))
    if grid != traj.shape[-1]:
        traj = ns.coarsen(traj, grid).astype(np.float32)
    traj = np.ascontiguousarray(traj / W_SCALE, dtype=np.float32)
    return traj[:n_tr], traj[n_tr:]


#: Edge data: trajectories, tiles per frame triple, coarse grid, tile size.
EDGE_TRAJ = 80
EDGE_TEST_TRAJ = 16
TILES_PER_FRAME = 4
EDGE_GRID = 16
TILE = 8
FNO_GRID = 8
#: Edge input format: signed 8-bit codes times 2**-7 (ap_fixed<8,1>, range [-1, 127/128]).
INPUT_FRAC = 7
INPUT_LO, INPUT_HI = -1.0, 127 / 128


def to_input_grid(w: np.ndarray) -> np.ndarray:
    """Normalised vorticity rounded to the edge input grid ``2**-7`` and clipped to its range."""
    q = np.round(np.asarray(w, np.float64) * 2**INPUT_FRAC) / 2**INPUT_FRAC
    return np.clip(q, INPUT_LO, INPUT_HI).astype(np.float32)


@lru_cache(maxsize=2)
def _edge_trajectories(seed: int) -> np.ndarray:
    out = ns.simulate(EDGE_TRAJ, seed=10_000 + seed, config=STUDY_CONFIG)
    out.setflags(write=False)
    return out


def _edge_fields(seed: int, grid: int) -> np.ndarray:
    traj = _edge_trajectories(seed)
    return np.ascontiguousarray(ns.coarsen(traj, grid) / W_SCALE, dtype=np.float32)


def _tiles(fields: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random periodic 8x8 tiles of frame triples: x = (w_{t-1}, w_t), y = w_{t+1}."""
    n, frames, g, _ = fields.shape
    xs, ys = [], []
    for t in range(1, frames - 1):
        for _ in range(TILES_PER_FRAME):
            oy = rng.integers(0, g, size=n)
            ox = rng.integers(0, g, size=n)
            rows = (oy[:, None] + np.arange(TILE)) % g
            cols = (ox[:, None] + np.arange(TILE)) % g
            ii = np.arange(n)[:, None, None]
            trip = [fields[:, t + d][ii, rows[:, :, None], cols[:, None, :]] for d in (-1, 0, 1)]
            xs.append(np.stack(trip[:2], axis=1))
            ys.append(trip[2][:, None])
    return np.concatenate(xs), np.concatenate(ys)


def load_data(seed: int = 0) -> Dataset:
    """Tile data of the ``dlwp`` and ``dlwp_unet`` designs: ``x`` (N, 2, 8, 8), ``y`` (N, 1, 8, 8).

    80 trajectories (32x32, 20 time units) coarsened to 16x16; 4 random periodic
    8x8 tiles per frame triple; trajectories split 64 / 16 between train and test.
    ``x`` holds (w_{t-1}, w_t) on the input grid, ``y`` the true w_{t+1}, normalised.
    """
    fields = _edge_fields(int(seed), EDGE_GRID)
    rng = np.random.default_rng(seed)
    n_tr = EDGE_TRAJ - EDGE_TEST_TRAJ
    x_tr, y_tr = _tiles(fields[:n_tr], rng)
    x_te, y_te = _tiles(fields[n_tr:], rng)
    return Dataset(
        x_train=to_input_grid(x_tr),
        y_train=np.ascontiguousarray(y_tr, np.float32),
        x_test=to_input_grid(x_te),
        y_test=np.ascontiguousarray(y_te, np.float32),
        info={
            "source": (
                f"2-D Navier-Stokes (pseudo-spectral, nu=1e-3, FNO forcing; seed {seed}), "
                f"16x16, 8x8 tiles of (w_t-1, w_t) -> w_t+1, w / {W_SCALE}"
            ),
            "n_train": len(x_tr),
            "n_test": len(x_te),
        },
    )


def load_data_fno(seed: int = 0) -> Dataset:
    """Whole-field data of ``dlwp_fno``: 8x8 coarse fields ``x = w_t`` (N, 1, 8, 8), ``y = w_{t+1}``."""
    fields = _edge_fields(int(seed), FNO_GRID)
    n_tr = EDGE_TRAJ - EDGE_TEST_TRAJ

    def pairs(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = f[:, :-1].reshape(-1, 1, FNO_GRID, FNO_GRID)
        y = f[:, 1:].reshape(-1, 1, FNO_GRID, FNO_GRID)
        return x, y

    x_tr, y_tr = pairs(fields[:n_tr])
    x_te, y_te = pairs(fields[n_tr:])
    return Dataset(
        x_train=to_input_grid(x_tr),
        y_train=np.ascontiguousarray(y_tr, np.float32),
        x_test=to_input_grid(x_te),
        y_test=np.ascontiguousarray(y_te, np.float32),
        info={
            "source": f"2-D Navier-Stokes (seed {seed}) coarsened to 8x8, w_t -> w_t+1, w / {W_SCALE}",
            "n_train": len(x_tr),
            "n_test": len(x_te),
        },
    )


# ======================================================================= study models


def _conv(c_in: int, c_out: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    """A periodic (circular-padded) convolution."""
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, padding_mode="circular")


class Forecaster(nn.Module):
    """A one-step forecaster of normalised vorticity ``(B, 1, N, N)``; stateless unless overridden."""

    stateful = False

    def init_state(self, w: torch.Tensor) -> Any:
        """The memory before the first step (none for stateless models)."""
        return None

    def step(self, w: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """``(w_{t+1}, state')`` from ``w_t`` and the memory."""
        return self(w), state


class UNet(Forecaster):
    """Two-level periodic U-Net: average-pool down, nearest-upsample up, concatenated skips."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.enc1 = nn.Sequential(_conv(1, c1), nn.GELU(), _conv(c1, c1), nn.GELU())
        self.enc2 = nn.Sequential(_conv(c1, c2), nn.GELU(), _conv(c2, c2), nn.GELU())
        self.mid = nn.Sequential(_conv(c2, c3), nn.GELU(), _conv(c3, c3), nn.GELU())
        self.dec2 = nn.Sequential(_conv(c3 + c2, c2), nn.GELU(), _conv(c2, c2), nn.GELU())
        self.dec1 = nn.Sequential(_conv(c2 + c1, c1), nn.GELU(), _conv(c1, c1), nn.GELU())
        self.out = nn.Conv2d(c1, 1, 1)
        self.pool = nn.AvgPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(w)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up(d2), e1], dim=1))
        return w + self.out(d1)


class ConvGRUCell(nn.Module):
    """Convolutional GRU cell: ``z, r = sigmoid(conv([x, h]))``, ``c = tanh(conv([x, r h]))``."""

    def __init__(self, c_in: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = _conv(c_in + hidden, 2 * hidden)
        self.cand = _conv(c_in + hidden, hidden)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        c = torch.tanh(self.cand(torch.cat([x, r * h], dim=1)))
        return (1 - z) * h + z * c


class ConvGRUForecaster(Forecaster):
    """Encoder (to half resolution) -> ConvGRU cell (memory) -> decoder (nearest up) -> increment."""

    stateful = True

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.width = width
        self.enc = nn.Sequential(
            _conv(1, width), nn.GELU(), _conv(width, width, stride=2), nn.GELU()
        )
        self.cell = ConvGRUCell(width, width)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = nn.Sequential(
            _conv(2 * width, width),
            nn.GELU(),
            _conv(width, width),
            nn.GELU(),
            nn.Conv2d(width, 1, 1),
        )
        self.skip = nn.Sequential(_conv(1, width), nn.GELU())

    def init_state(self, w: torch.Tensor) -> torch.Tensor:
        n = w.shape[-1] // 2
        return torch.zeros(w.shape[0], self.width, n, n, device=w.device, dtype=w.dtype)

    def step(self, w: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.cell(self.enc(w), state)
        dw = self.dec(torch.cat([self.up(h), self.skip(w)], dim=1))
        return w + dw, h

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.step(w, self.init_state(w))[0]


class SpectralConv2d(nn.Module):
    """FNO spectral convolution: rfft2, complex mode weights on the lowest ``modes``, irfft2."""

    def __init__(self, c_in: int, c_out: int, modes: int) -> None:
        super().__init__()
        self.modes = modes
        scale = 1.0 / (c_in * c_out)
        # (positive ky rows, negative ky rows) x (re, im)
        self.weight = nn.Parameter(scale * torch.rand(2, c_in, c_out, modes, modes, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = x.shape
        m = self.modes
        if 2 * m > n or m > n // 2 + 1:
            raise ConfigError(f"{m} FNO modes do not fit a {n}x{n} grid")
        xf = torch.fft.rfft2(x)
        w = torch.view_as_complex(self.weight)
        out = torch.zeros(b, w.shape[2], n, n // 2 + 1, dtype=xf.dtype, device=x.device)
        out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", xf[:, :, :m, :m], w[0])
        out[:, :, -m:, :m] = torch.einsum("bixy,ioxy->boxy", xf[:, :, -m:, :m], w[1])
        return torch.fft.irfft2(out, s=(n, n))


class FNO(Forecaster):
    """FNO-2D: lift (field + coordinates) -> 4 x (spectral conv + 1x1, GELU) -> projection."""

    def __init__(self, width: int = 20, modes: int = 8, layers: int = 4) -> None:
        super().__init__()
        self.modes = modes
        self.lift = nn.Conv2d(3, width, 1)
        self.spectral = nn.ModuleList(SpectralConv2d(width, width, modes) for _ in range(layers))
        self.pointwise = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers))
        self.proj = nn.Sequential(nn.Conv2d(width, 64, 1), nn.GELU(), nn.Conv2d(64, 1, 1))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = w.shape
        t = torch.arange(n, device=w.device, dtype=w.dtype) / n
        gy, gx = torch.meshgrid(t, t, indexing="ij")
        v = self.lift(torch.cat([w, gx.expand(b, 1, n, n), gy.expand(b, 1, n, n)], dim=1))
        last = len(self.spectral) - 1
        for i, (sc, pw) in enumerate(zip(self.spectral, self.pointwise, strict=True)):
            v = sc(v) + pw(v)
            if i < last:
                v = nn.functional.gelu(v)
        return w + self.proj(v)


STUDY_MODELS: tuple[str, ...] = ("unet", "convgru", "fno")


#: Model widths (and FNO modes) per mode: quick models are smaller so the test runs on one core.
STUDY_WIDTHS: dict[str, dict[str, int]] = {
    "full": {"unet": 12, "convgru": 16, "fno": 16, "modes": 8},
    "quick": {"unet": 8, "convgru": 12, "fno": 12, "modes": 5},
}


def build_study_model(kind: str, quick: bool = False) -> Forecaster:
    """The study's ``kind`` model ("unet", "convgru" or "fno") at the full or quick size."""
    w = STUDY_WIDTHS["quick" if quick else "full"]
    if kind == "unet":
        return UNet(w["unet"])
    if kind == "convgru":
        return ConvGRUForecaster(w["convgru"])
    if kind == "fno":
        return FNO(w["fno"], modes=w["modes"])
    raise ConfigError(f"study model must be one of {', '.join(STUDY_MODELS)}, got {kind!r}")


def n_parameters(model: nn.Module) -> int:
    """Trainable parameters (a complex mode weight counts as two)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def one_step_predictions(model: Forecaster, seq: torch.Tensor) -> torch.Tensor:
    """Teacher-forced one-step predictions of frames 1..T from true frames 0..T-1.

    ``seq`` is ``(B, T + 1, N, N)``; the result ``(B, T, N, N)``. Stateless models
    see every frame at once; the ConvGRU runs over time, carrying its memory.
    """
    b, t1, n, _ = seq.shape
    if not model.stateful:
        return model(seq[:, :-1].reshape(b * (t1 - 1), 1, n, n)).reshape(b, t1 - 1, n, n)
    state = model.init_state(seq[:, :1])
    preds = []
    for t in range(t1 - 1):
        out, state = model.step(seq[:, t : t + 1], state)
        preds.append(out[:, 0])
    return torch.stack(preds, dim=1)


def train_study_model(
    kind: str,
    train: np.ndarray,
    epochs: int,
    seed: int = 0,
    lr: float = STUDY_LR,
    batch: int = STUDY_BATCH,
    device: torch.device | str | None = None,
) -> Forecaster:
    """Train one study model under the shared protocol (one-step MSE, Adam, cosine lr).

    ``train`` is ``(n, frames, N, N)`` normalised vorticity. Every model gets the
    same batches in the same order for the same ``seed``. Returns it on the CPU, in
    eval mode.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be a non-negative integer, got {epochs!r}")
    dev = torch.device(device) if device is not None else training.device()
    gen = training.seed_all(seed)
    model = build_study_model(kind, quick=train.shape[-1] < 32).to(dev).train()
    data = torch.from_numpy(np.ascontiguousarray(train, np.float32)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_batches = math.ceil(len(data) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * n_batches))
    for _ in range(epochs):
        for idx in torch.randperm(len(data), generator=gen).split(batch):
            seq = data[idx.to(dev)]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(one_step_predictions(model, seq), seq[:, 1:])
            loss.backward()
            opt.step()
            sched.step()
    return model.cpu().eval()


@torch.no_grad()
def rollout(model: Forecaster, traj: np.ndarray, t0: int = T0, steps: int = 10) -> np.ndarray:
    """Autoregressive forecasts ``(n, steps, N, N)`` from true frame ``t0``.

    A stateful model first runs teacher-forced over the true frames ``0..t0-1``
    (its memory of the past), then feeds back its own forecasts.
    """
    if t0 < 0 or steps < 1 or t0 + steps > traj.shape[1] - 1:
        raise ConfigError(
            f"a rollout of {steps} steps from frame {t0} needs {t0 + steps + 1} frames, "
            f"the trajectories have {traj.shape[1]}"
        )
    model = model.cpu().eval()
    x = torch.from_numpy(np.ascontiguousarray(traj, np.float32))
    w = x[:, t0 : t0 + 1]
    state = model.init_state(w)
    if model.stateful:
        for t in range(t0):
            _, state = model.step(x[:, t : t + 1], state)
    out = []
    for _ in range(steps):
        w, state = model.step(w, state)
        out.append(w[:, 0])
    return torch.stack(out, dim=1).numpy().astype(np.float64)


def relative_l2(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``||pred - true|| / ||true||`` over the last two axes (per field)."""
    p, t = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    return np.linalg.norm(p - t, axis=(-2, -1)) / np.linalg.norm(t, axis=(-2, -1))


def rollout_errors(model: Forecaster, traj: np.ndarray, t0: int = T0) -> dict[int, float]:
    """Mean relative L2 error of rollouts from frame ``t0`` at each of :data:`HORIZONS` steps."""
    k = max(HORIZONS)
    pred = rollout(model, traj, t0, k)
    err = relative_l2(pred, traj[:, t0 + 1 : t0 + 1 + k]).mean(axis=0)
    return {h: float(err[h - 1]) for h in HORIZONS}


def persistence_errors(traj: np.ndarray, t0: int = T0) -> dict[int, float]:
    """The same errors for persistence (the forecast is frame ``t0``, unchanged)."""
    return {h: float(relative_l2(traj[:, t0], traj[:, t0 + h]).mean()) for h in HORIZONS}


def finding(seed: int = 0, quick: bool = False) -> dict[str, float]:
    """Train the three backbones under one protocol; their rollout errors at 1, 5, 10 steps.

    Keys ``"<model>_l2_<h>"`` (mean relative L2 error after ``h`` autoregressive
    steps on held-out trajectories), ``"persistence_l2_<h>"``, ``"<model>_params"``,
    ``"<model>_train_s"`` and ``"simulate_s"``.
    """
    t = time.perf_counter()
    train, test = study_data(seed, quick)
    out: dict[str, float] = {"simulate_s": time.perf_counter() - t}
    for h, e in persistence_errors(test).items():
        out[f"persistence_l2_{h}"] = e
    epochs = STUDY_EPOCHS["quick" if quick else "full"]
    for kind in STUDY_MODELS:
        t = time.perf_counter()
        model = train_study_model(kind, train, epochs, seed)
        out[f"{kind}_train_s"] = time.perf_counter() - t
        out[f"{kind}_params"] = float(n_parameters(model))
        for h, e in rollout_errors(model, test).items():
            out[f"{kind}_l2_{h}"] = e
    return out


def finding_table(res: dict[str, float]) -> str:
    """The finding as a small text table (rows: models; columns: rollout steps)."""
    head = f"{'model':<12}{'params':>9}" + "".join(f"{f'L2@{h}':>9}" for h in HORIZONS)
    rows = [head + f"{'train s':>9}"]
    for kind in (*STUDY_MODELS, "persistence"):
        p = f"{int(res[f'{kind}_params']):>9}" if f"{kind}_params" in res else f"{'-':>9}"
        errs = "".join(f"{res[f'{kind}_l2_{h}']:>9.3f}" for h in HORIZONS)
        ts = f"{res[f'{kind}_train_s']:>9.1f}" if f"{kind}_train_s" in res else f"{'-':>9}"
        rows.append(f"{kind:<12}{p}{errs}{ts}")
    return "\n".join(rows)


# ========================================================================= edge forms


class InputQuant(Int8ActPerTensorFixedPoint):
    """Constant signed 8-bit input quantizer, scale ``2**-7`` (``ap_fixed<8,1>``)."""

    scaling_impl_type = ScalingImplType.CONST
    min_val = -1.0
    max_val = 1.0


class UnitSignedQuant(Int8ActPerTensorFixedPoint):
    """Constant signed 8-bit quantizer on ``[-1, 127/128]`` (scale ``2**-7``): tanh, h, r*h."""

    scaling_impl_type = ScalingImplType.CONST
    min_val = -1.0
    max_val = 1.0


class UnitUnsignedQuant(Uint8ActPerTensorFixedPoint):
    """Constant unsigned 8-bit quantizer on ``[0, 255/256]`` (scale ``2**-8``): the sigmoid gates."""

    scaling_impl_type = ScalingImplType.CONST
    max_val = 1.0


class OutputQuant(Int8ActPerTensorFixedPoint):
    """The forecast leaving the chip: signed 10-bit, scale ``2**-8`` (range [-2, 2))."""

    scaling_impl_type = ScalingImplType.CONST
    min_val = -2.0
    max_val = 2.0
    bit_width = 10


def _check_bit_width(bit_width: int) -> None:
    if isinstance(bit_width, bool) or not isinstance(bit_width, int) or not 2 <= bit_width <= 8:
        raise ConfigError(
            f"bit_width must be an integer from 2 to 8 (8-bit quantizer families), got {bit_width!r}"
        )


def _qconv(c_in: int, c_out: int, k: int, bit_width: int) -> qnn.QuantConv2d:
    return qnn.QuantConv2d(
        c_in,
        c_out,
        k,
        padding=k // 2,
        bias=True,
        weight_quant=Int8WeightPerTensorFixedPoint,
        weight_bit_width=bit_width,
        bias_quant=Int16Bias,
        return_quant_tensor=False,
    )


def _qlinear(n_in: int, n_out: int, bit_width: int) -> qnn.QuantLinear:
    return qnn.QuantLinear(
        n_in,
        n_out,
        bias=True,
        weight_quant=Int8WeightPerTensorFixedPoint,
        weight_bit_width=bit_width,
        bias_quant=Int16Bias,
        return_quant_tensor=False,
    )


def _qrelu(bit_width: int) -> qnn.QuantReLU:
    return qnn.QuantReLU(
        act_quant=Uint8ActPerTensorFixedPoint,
        bit_width=bit_width,
        collect_stats_steps=ACT_COLLECT_STATS_STEPS,
        return_quant_tensor=True,
    )


def _qact(bits: int = 8) -> qnn.QuantIdentity:
    """A signed power-of-two requantizer whose scale is learned from statistics (conv inputs)."""
    return qnn.QuantIdentity(
        act_quant=Int8ActPerTensorFixedPoint,
        bit_width=bits,
        collect_stats_steps=ACT_COLLECT_STATS_STEPS,
        return_quant_tensor=True,
    )


def _qconst(quant: type, qt: bool = False) -> qnn.QuantIdentity:
    return qnn.QuantIdentity(act_quant=quant, return_quant_tensor=qt)


#: Channels of the tile cell's input transform.
GRU_FEATURES = 8


class FloatTileGRU(nn.Module):
    """Float twin of the ``dlwp`` edge form: a ConvGRU cell step whose hidden state is the field.

    Input ``(B, 2, 8, 8)`` = concat(x = w_{t-1}, h = w_t); output ``h' = w_{t+1}``
    forecast ``(B, 1, 8, 8)``. Zero padding (a tile, not the periodic domain).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(2, GRU_FEATURES, 3, padding=1)
        self.conv_g = nn.Conv2d(GRU_FEATURES, 2, 3, padding=1)
        self.conv_c = nn.Conv2d(GRU_FEATURES + 1, 1, 3, padding=1)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        h = inp[:, 1:2]
        f = torch.relu(self.conv_in(inp))
        zr = torch.sigmoid(self.conv_g(f))
        z, r = zr[:, :1], zr[:, 1:]
        c = torch.tanh(self.conv_c(torch.cat([f, r * h], dim=1)))
        return (1 - z) * h + z * c


class QuantTileGRU(nn.Module):
    """Brevitas ``dlwp`` edge form: :class:`FloatTileGRU` with 8-bit PoT quantizers around every op.

    Graph: Quant(input) -> Slice (h) ; Conv -> ReLU ; Conv -> Quant -> Sigmoid -> Quant ->
    Slice (z, r) ; Mul(r, h) -> Quant ; Concat(f, r h) -> Quant -> Conv -> Quant -> Tanh ->
    Quant ; Sub(1, z), Mul, Mul, Add -> Quant (output, 10-bit).
    """

    def __init__(self, bit_width: int = 8) -> None:
        super().__init__()
        _check_bit_width(bit_width)
        self.bit_width = bit_width
        self.inp = _qconst(InputQuant, qt=True)
        self.conv_in = _qconv(2, GRU_FEATURES, 3, bit_width)
        self.relu = _qrelu(bit_width)
        self.conv_g = _qconv(GRU_FEATURES, 2, 3, bit_width)
        self.pre_g = _qact()
        self.sigmoid = qnn.QuantSigmoid(act_quant=UnitUnsignedQuant, return_quant_tensor=False)
        self.rh_q = _qconst(UnitSignedQuant)
        self.cat_q = _qact()
        self.conv_c = _qconv(GRU_FEATURES + 1, 1, 3, bit_width)
        self.pre_c = _qact()
        self.tanh = qnn.QuantTanh(act_quant=UnitSignedQuant, return_quant_tensor=False)
        self.out = _qconst(OutputQuant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = self.inp(x)
        h = training.value(inp)[:, 1:2]
        f = self.relu(self.conv_in(inp))
        zr = self.sigmoid(self.pre_g(self.conv_g(f)))
        z, r = zr[:, :1], zr[:, 1:]
        rh = self.rh_q(r * h)
        c = self.tanh(
            self.pre_c(self.conv_c(self.cat_q(torch.cat([training.value(f), rh], dim=1))))
        )
        return self.out((1 - z) * h + z * c)


class FloatFNOTile(nn.Module):
    """Float twin of ``dlwp_fno``: one FNO layer (1 -> C channels) on the 8x8 periodic field.

    ``v = relu(spectral(w) + pointwise(w))``, ``w' = w + proj(v) + b(x, y)``: a 1x1
    projection and a learned per-position bias, which carries the fixed forcing
    field (the study's FNO gets the coordinates as inputs for the same reason).
    """

    def __init__(self, channels: int = 2, modes: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.spectral = SpectralConv2d(1, channels, modes)
        self.pointwise = nn.Conv2d(1, channels, 1)
        self.proj = nn.Conv2d(channels, 1, 1)
        self.field_bias = nn.Parameter(torch.zeros(1, 1, FNO_GRID, FNO_GRID))

    def layer(self, w: torch.Tensor) -> torch.Tensor:
        """The FNO layer before its activation (linear in ``w`` plus the pointwise bias)."""
        return self.spectral(w) + self.pointwise(w)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.proj(torch.relu(self.layer(w))) + self.field_bias


class QuantFNOTile(nn.Module):
    """Brevitas ``dlwp_fno``: Dense 64 -> 64C (the folded FNO layer), ReLU, Dense 64C -> 64, + w."""

    def __init__(self, bit_width: int = 8, channels: int = 2) -> None:
        super().__init__()
        _check_bit_width(bit_width)
        self.bit_width = bit_width
        self.channels = channels
        n = FNO_GRID * FNO_GRID
        self.inp = _qconst(InputQuant, qt=True)
        self.flatten = nn.Flatten()
        self.fc1 = _qlinear(n, n * channels, bit_width)
        self.relu = _qrelu(bit_width)
        self.fc2 = _qlinear(n * channels, n, bit_width)
        self.out = _qconst(OutputQuant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = self.inp(x)
        flat = self.flatten(inp)
        y = self.fc2(self.relu(self.fc1(flat)))
        return self.out(training.value(flat) + y).reshape(len(x), 1, FNO_GRID, FNO_GRID)


def fold_fno(float_model: FloatFNOTile) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The FNO layer and projection as dense matrices: ``(W1, b1, W2, b2)``, float64.

    ``W1 (64C, 64)``: column ``q`` is the layer's response to the unit field ``e_q``
    minus its bias (rfft2 -> mode weights -> irfft2 plus the pointwise path is
    linear, so these columns are the whole map); ``W2 (64, 64C)`` is the 1x1
    projection, block-diagonal over positions, and ``b2`` its bias plus the
    per-position bias. Rows are channel-major (c, y, x),
    as torch's Flatten of a ``(C, 8, 8)`` tensor.
    """
    n = FNO_GRID * FNO_GRID
    c = float_model.channels
    with torch.no_grad():
        m = copy.deepcopy(float_model).double()
        basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, FNO_GRID, FNO_GRID)
        zero = torch.zeros(1, 1, FNO_GRID, FNO_GRID, dtype=torch.float64)
        b1 = m.layer(zero).reshape(-1)
        w1 = (m.layer(basis).reshape(n, -1) - b1).T
        pw = m.proj.weight.reshape(c).numpy()
        w2 = np.kron(pw[None, :], np.eye(n))
        b2 = float(m.proj.bias.item()) + m.field_bias.reshape(n).numpy()
    return w1.numpy(), b1.numpy(), w2, b2


def init_fno_qat(qat_model: nn.Module, float_model: nn.Module) -> None:
    """Initialise :class:`QuantFNOTile` from a trained :class:`FloatFNOTile` by exact folding."""
    if not isinstance(float_model, FloatFNOTile) or not isinstance(qat_model, QuantFNOTile):
        raise ConfigError("init_fno_qat needs a FloatFNOTile and a QuantFNOTile")
    w1, b1, w2, b2 = fold_fno(float_model)
    with torch.no_grad():
        for layer, w, b in ((qat_model.fc1, w1, b1), (qat_model.fc2, w2, b2)):
            layer.weight.copy_(torch.from_numpy(w).float())
            layer.bias.copy_(torch.from_numpy(b).float())


class FloatTileUNet(nn.Module):
    """Float twin of ``dlwp_unet``: conv, max-pool, conv, nearest up x2, concat skip, conv, 1x1, + h."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(12, 4, 3, padding=1)
        self.conv4 = nn.Conv2d(4, 1, 1)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        e1 = torch.relu(self.conv1(inp))
        e2 = torch.relu(self.conv2(self.pool(e1)))
        d = torch.relu(self.conv3(torch.cat([e1, self.up(e2)], dim=1)))
        return inp[:, 1:2] + self.conv4(d)


class QuantTileUNet(nn.Module):
    """Brevitas ``dlwp_unet``: :class:`FloatTileUNet` with PoT quantizers; Resize and Concat on chip."""

    def __init__(self, bit_width: int = 8) -> None:
        super().__init__()
        _check_bit_width(bit_width)
        self.bit_width = bit_width
        self.inp = _qconst(InputQuant, qt=True)
        self.conv1 = _qconv(2, 4, 3, bit_width)
        self.relu1 = _qrelu(bit_width)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = _qconv(4, 8, 3, bit_width)
        self.relu2 = _qrelu(bit_width)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.cat_q = _qact()
        self.conv3 = _qconv(12, 4, 3, bit_width)
        self.relu3 = _qrelu(bit_width)
        self.conv4 = _qconv(4, 1, 1, bit_width)
        self.out = _qconst(OutputQuant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = self.inp(x)
        e1 = self.relu1(self.conv1(inp))
        e2 = self.relu2(self.conv2(self.pool(e1)))
        d = self.relu3(
            self.conv3(
                self.cat_q(torch.cat([training.value(e1), self.up(training.value(e2))], dim=1))
            )
        )
        return self.out(training.value(inp)[:, 1:2] + self.conv4(d))


# ======================================================================== zoo designs


def forecast_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE of the forecast against the true next frame (normalised vorticity)."""
    return nn.functional.mse_loss(out, y)


def forecast_metrics(outputs: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Relative L2 error of one-step forecasts, and of persistence (``x``'s last channel)."""
    pred = np.asarray(outputs, np.float64).reshape(np.shape(y))
    true = np.asarray(y, np.float64)
    last = np.asarray(x, np.float64)[:, -1:]
    return {
        "rel_l2": float(relative_l2(pred, true).mean()),
        "rel_l2_persistence": float(relative_l2(last, true).mean()),
    }


def edge_forecast_metrics(
    edge_outputs: np.ndarray, model: nn.Module, x: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """The same figures from on-chip outputs (the whole forecaster is on chip)."""
    return forecast_metrics(edge_outputs, x, y)


def _whole(model: nn.Module) -> nn.Module:
    return model


def _spec(name: str) -> Any:
    from . import zoo

    common: dict[str, Any] = dict(
        task="regression",
        loss=forecast_loss,
        metrics=forecast_metrics,
        primary="rel_l2",
        higher_is_better=False,
        edge=_whole,
        edge_metrics=edge_forecast_metrics,
        epochs={"float": 30, "qat": 15, "finetune": 15},
        settings=TrainSettings(lr=1e-3, batch_size=128),
        float_settings=TrainSettings(lr=3e-3, batch_size=128),
        bit_widths=(4, 8),
    )
    if name == "dlwp":
        return zoo.DesignSpec(
            name="dlwp",
            title="DLWP ConvGRU cell step on an 8x8 Navier-Stokes tile (sigmoid/tanh gates)",
            input_shape=(2, TILE, TILE),
            load_data=load_data,
            build_float=FloatTileGRU,
            build_qat=QuantTileGRU,
            notes=(
                "input concat(x = w_t-1, h = w_t) 2x8x8 ap_fixed<8,1>; output h' = w_t+1 forecast "
                "(10-bit); 8-bit PoT quantizers around sigmoid/tanh; metric: relative L2 of the "
                "one-step forecast (lower is better), persistence beside it"
            ),
            **common,
        )
    if name == "dlwp_fno":
        return zoo.DesignSpec(
            name="dlwp_fno",
            title="DLWP FNO layer on the 8x8 field, truncated DFT folded into a Dense",
            input_shape=(1, FNO_GRID, FNO_GRID),
            load_data=load_data_fno,
            build_float=FloatFNOTile,
            build_qat=QuantFNOTile,
            init_qat=init_fno_qat,
            notes="Dense 64->128 (folded FNO layer, 2 channels, 4 modes) -> ReLU -> Dense 128->64 + w",
            **{**common, "float_settings": TrainSettings(lr=3e-3, batch_size=32)},
        )
    return zoo.DesignSpec(
        name="dlwp_unet",
        title="DLWP tiny U-Net on an 8x8 tile (max-pool, nearest Resize, Concat)",
        input_shape=(2, TILE, TILE),
        load_data=load_data,
        build_float=FloatTileUNet,
        build_qat=QuantTileUNet,
        notes="conv 2->4, maxpool, conv 4->8, nearest up x2, concat skip, conv 12->4, 1x1, + w_t",
        **common,
    )


DESIGNS = {name: _spec(name) for name in ("dlwp", "dlwp_fno", "dlwp_unet")}


# ================================================================================ CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m edgeml.models.dlwp [--quick] [--seed N]``: print the finding's table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16x16 grid, small models (about 1 min)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t = time.perf_counter()
    res = finding(args.seed, args.quick)
    print(
        f"DLWP comparison, 2-D Navier-Stokes ({'quick' if args.quick else 'full'}, seed {args.seed}): "
        f"relative L2 of autoregressive rollouts from frame {T0}"
    )
    print(finding_table(res))
    print(f"total {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
