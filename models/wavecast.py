"""The WaveCastNet study: ConvLEM sequence-to-sequence forecasting of ground-motion wavefields.

**Study** (Lyu et al., "WaveCastNet: an AI-enabled wavefield forecasting framework
for earthquake early warning", arXiv:2405.20516): a sequence-to-sequence model
whose encoder and decoder are *convolutional Long Expressive Memory* (ConvLEM)
cells reads the first seconds of the wavefield recorded on a dense sensor
grid and forecasts the following seconds; the paper scores the forecast by
its wavefield error and by the error of peak ground motion and of arrival
times per sensor, and finds it better than persistence-like and transformer
baselines, with the error growing with lead time.

**LEM cell** (Rusch, Mishra, Erichson, Mahoney, ICLR 2022), in convolutional
form with ``*`` a 3x3 convolution over the concatenated channels::

    dt1 = sigmoid(W1 * [x_t, y_{t-1}])        dt2 = sigmoid(W2 * [x_t, y_{t-1}])
    z_t = (1 - dt1) z_{t-1} + dt1 tanh(Wz * [x_t, y_{t-1}])
    y_t = (1 - dt2) y_{t-1} + dt2 tanh(Wy * [x_t, z_t])

(the time step of the paper's ODE discretisation is 1; the two learned gates
are its two time scales). ``y`` and ``z`` are convex mixtures of their old
values and a tanh, so they stay in [-1, 1] at every step.

**What is the same here / what differs**

* Data: 2-D acoustic finite differences (:mod:`edgeml.models._wave_solver`:
  4th order in space, leapfrog in time, sponge boundary) on layered velocity
  models with a smooth random perturbation, Ricker sources at random position
  and depth, recorded on a 16x16 sensor grid every 5 steps. The paper used 3-D
  elastic simulations of the San Francisco Bay Area and real magnitudes.
* Model: one ConvLEM cell in the encoder and one in the decoder (the paper
  stacks several, with more channels), a 1x1 read-out; the decoder's input at
  each step is its own previous forecast frame (the last observed frame
  first). Baselines of the same shape: a ConvGRU seq2seq and persistence (the
  last observed frame held). The paper's transformer baselines are not run.
* Metrics (:func:`forecast_errors`): relative L2 of the forecast wavefield per
  lead time (pooled over events), the peak ground motion per sensor (the
  largest ``|u|`` in the forecast window, PGA/PGV-style) as a mean relative
  error over sensors that shake, and the arrival time per sensor (first frame
  with ``|u|`` over :data:`ARRIVAL_THRESHOLD`) as a mean absolute error in
  frames over sensors reached in the window.

**Edge form** (zoo design ``wavecast``): one ConvLEM cell step on a 4x4 tile
with :data:`EDGE_HIDDEN` = 2 hidden channels, run step by step by the host:
input ``concat(x_t, y_{t-1}, z_{t-1})`` (5 x 4 x 4, signed 8-bit, scale
``2**-7``), output ``concat(y_t, z_t)`` on the same grid, so the host feeds the
output codes straight back. Sigmoid and tanh each sit between 8-bit power-of-two
quantizers (tables of 256 entries); the gates are elementwise products of two
quantized activations and ``1 - dt``; the slices of the input are channel
slices. Zero padding at the tile edge (the host would run overlapping tiles).
Its training data are one-step transitions of the encoder cell of a trained
2-channel ConvLEM forecaster (the *teacher*), cut into 4x4 tiles; the on-chip
metric is the one-step relative error of ``(y_t, z_t)`` against the teacher's
float cell.
"""

from __future__ import annotations

import argparse
import time
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeml.errors import ConfigError

from . import _wave_solver as ws
from . import training
from .training import Dataset, TrainSettings

with warnings.catch_warnings():
    # Brevitas warns at import about optional kernels it does not need here.
    warnings.simplefilter("ignore")
    from brevitas import nn as qnn
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant import (
        Int8ActPerTensorFixedPoint,
        Int8WeightPerTensorFixedPoint,
        Int16Bias,
        Uint8ActPerTensorFixedPoint,
    )

#: Frames observed (input) and forecast; sensor grid side.
T_IN = 8
T_OUT = 16
SENSORS = 16
#: Wavefields are divided by this and clipped to [-1, 1) (the largest near-source peaks are ~4).
FIELD_NORM = 4.0
#: |u| (normalised) above which a sensor counts as shaking: arrival and peak metrics.
ARRIVAL_THRESHOLD = 0.05
#: Events of the study (train, test), full and quick.
STUDY_EVENTS = {"full": (512, 128), "quick": (256, 64)}
STUDY_HIDDEN = {"full": 8, "quick": 6}
STUDY_EPOCHS = {"full": 16, "quick": 6}
STUDY_LR = 3e-3
STUDY_BATCH = 16
ACT_COLLECT_STATS_STEPS = training.ACT_COLLECT_STATS_STEPS

WAVE = ws.WaveConfig(sensors=SENSORS, frames=T_IN + T_OUT)


# ============================================================================ data


@lru_cache(maxsize=4)
def _events(seed: int, n: int) -> np.ndarray:
    rec, _ = ws.simulate(WAVE, n, seed=seed)
    out = np.clip(rec / FIELD_NORM, -1.0, 1.0 - 2.0**-7).astype(np.float32)
    out.setflags(write=False)
    return out


def study_data(seed: int = 0, quick: bool = False) -> Dataset:
    """Forecasting samples: ``x`` ``(N, T_IN, 1, S, S)`` observed, ``y`` ``(N, T_OUT, 1, S, S)``.

    Train and test events come from disjoint seeds of the generator (velocity
    model, source position, depth and amplitude all random per event).
    """
    n_tr, n_te = STUDY_EVENTS["quick" if quick else "full"]
    tr = _events(2 * seed, n_tr)[:, :, None]
    te = _events(2 * seed + 1, n_te)[:, :, None]
    return Dataset(
        x_train=np.ascontiguousarray(tr[:, :T_IN]),
        y_train=np.ascontiguousarray(tr[:, T_IN:]),
        x_test=np.ascontiguousarray(te[:, :T_IN]),
        y_test=np.ascontiguousarray(te[:, T_IN:]),
        info={"source": f"2-D acoustic FD wavefields ({n_tr}+{n_te} events, seed {seed})"},
    )


# ===================================================================== study models


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


class ConvLEMCell(nn.Module):
    """Convolutional LEM cell (module docstring): ``(x_t, y, z) -> (y_t, z_t)``."""

    def __init__(self, in_ch: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.conv_dt = _conv(in_ch + hidden, 2 * hidden)
        self.conv_zc = _conv(in_ch + hidden, hidden)
        self.conv_y = _conv(in_ch + hidden, hidden)

    def step(
        self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; the states keep the same shape."""
        xy = torch.cat([x, y], dim=1)
        dt1, dt2 = torch.sigmoid(self.conv_dt(xy)).chunk(2, dim=1)
        z = (1 - dt1) * z + dt1 * torch.tanh(self.conv_zc(xy))
        y = (1 - dt2) * y + dt2 * torch.tanh(self.conv_y(torch.cat([x, z], dim=1)))
        return y, z


class ConvGRUCell(nn.Module):
    """Convolutional GRU cell (the same-size baseline); its state ``z`` is unused."""

    def __init__(self, in_ch: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.conv_zr = _conv(in_ch + hidden, 2 * hidden)
        self.conv_c = _conv(in_ch + hidden, hidden)

    def step(
        self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; ``y`` is the hidden state."""
        u, r = torch.sigmoid(self.conv_zr(torch.cat([x, y], dim=1))).chunk(2, dim=1)
        c = torch.tanh(self.conv_c(torch.cat([x, r * y], dim=1)))
        return (1 - u) * y + u * c, z


class Seq2Seq(nn.Module):
    """Encoder cell over the observed frames, decoder cell over the forecast, 1x1 read-out.

    ``forward(x)``: ``x`` ``(B, T_in, 1, S, S)`` -> forecast ``(B, t_out, 1, S, S)``.
    The decoder's input is its previous forecast frame (the last observed frame first).
    """

    def __init__(self, kind: str = "lem", hidden: int = 8, t_out: int = T_OUT) -> None:
        super().__init__()
        cells = {"lem": ConvLEMCell, "gru": ConvGRUCell}
        if kind not in cells:
            raise ConfigError(f"cell kind must be one of {sorted(cells)}, got {kind!r}")
        self.kind, self.hidden, self.t_out = kind, hidden, t_out
        self.encoder = cells[kind](1, hidden)
        self.decoder = cells[kind](1, hidden)
        self.readout = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, _, h, w = x.shape
        y = x.new_zeros(b, self.hidden, h, w)
        z = torch.zeros_like(y)
        for t in range(x.shape[1]):
            y, z = self.encoder.step(x[:, t], y, z)
        frame, outs = x[:, -1], []
        for _ in range(self.t_out):
            y, z = self.decoder.step(frame, y, z)
            frame = self.readout(y)
            outs.append(frame)
        return torch.stack(outs, dim=1)


def matched_hidden(lem_hidden: int) -> int:
    """ConvGRU hidden channels whose parameter count is closest to a ConvLEM of ``lem_hidden``."""
    target = n_parameters(Seq2Seq("lem", lem_hidden))
    return min(
        range(1, 4 * lem_hidden), key=lambda h: abs(n_parameters(Seq2Seq("gru", h)) - target)
    )


def n_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters())


def train_forecaster(kind: str, data: Dataset, hidden: int, epochs: int, seed: int = 0) -> Seq2Seq:
    """Train a :class:`Seq2Seq` with MSE over all forecast frames (Adam; CUDA when present)."""
    gen = training.seed_all(seed)
    model = Seq2Seq(kind, hidden, data.y_train.shape[1])
    settings = TrainSettings(lr=STUDY_LR, batch_size=STUDY_BATCH)
    return training.fit(
        model, data.x_train, data.y_train, nn.functional.mse_loss, epochs, gen, settings
    )


# ========================================================================== metrics


def _arrival(u: np.ndarray) -> np.ndarray:
    """First frame index with ``|u| > ARRIVAL_THRESHOLD`` per sensor, ``T`` where never."""
    hit = np.abs(u) > ARRIVAL_THRESHOLD
    first = hit.argmax(axis=1)
    return np.where(hit.any(axis=1), first, u.shape[1])


def forecast_errors(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """The study's figures of forecasts ``(N, T, [1,] S, S)`` against the truth.

    ``rel_l2_<k>``: relative L2 at lead ``k`` (1-based, pooled over events);
    ``rel_l2``: over the whole window; ``peak_rel_err``: mean ``|peak_pred -
    peak_true| / peak_true`` over sensors whose true peak exceeds the threshold;
    ``arrival_err``: mean absolute arrival-time error (frames) over sensors
    whose true arrival is inside the window (a missed arrival counts as ``T``);
    ``arrival_missed``: fraction of those with no forecast arrival.
    """
    if np.shape(pred) != np.shape(true) or np.ndim(pred) < 3:
        raise ConfigError(f"forecast shape {np.shape(pred)} != truth shape {np.shape(true)}")
    p = np.asarray(pred, np.float64).reshape(len(pred), np.shape(pred)[1], -1)
    t = np.asarray(true, np.float64).reshape(p.shape)
    res: dict[str, float] = {}
    num = ((p - t) ** 2).sum(axis=(0, 2))
    den = (t**2).sum(axis=(0, 2))
    for k in range(p.shape[1]):
        res[f"rel_l2_{k + 1}"] = float(np.sqrt(num[k] / max(den[k], 1e-12)))
    res["rel_l2"] = float(np.sqrt(num.sum() / max(den.sum(), 1e-12)))
    pk_t, pk_p = np.abs(t).max(axis=1), np.abs(p).max(axis=1)
    shaking = pk_t > ARRIVAL_THRESHOLD
    res["peak_rel_err"] = float((np.abs(pk_p - pk_t)[shaking] / pk_t[shaking]).mean())
    a_t, a_p = _arrival(t), _arrival(p)
    arrives = a_t < p.shape[1]
    res["arrival_err"] = float(np.abs(a_p - a_t)[arrives].mean()) if arrives.any() else 0.0
    res["arrival_missed"] = float((a_p[arrives] == p.shape[1]).mean()) if arrives.any() else 0.0
    return res


def persistence(x: np.ndarray, t_out: int) -> np.ndarray:
    """The last observed frame held over the forecast window."""
    return np.repeat(np.asarray(x)[:, -1:], t_out, axis=1)


# ========================================================================== finding

LEADS = (1, 4, 8, 16)


def finding(seed: int = 0, quick: bool = False) -> dict[str, float]:
    """ConvLEM vs a ConvGRU of about the same parameter count vs persistence: error against lead time, peak, arrival.

    Returns ``<model>_<figure>`` for ``model`` in ``lem``, ``gru``, ``persistence``
    (figures of :func:`forecast_errors`), ``<model>_params`` and ``<model>_train_s``.
    """
    mode = "quick" if quick else "full"
    data = study_data(seed, quick)
    res: dict[str, float] = {}
    hidden = {"lem": STUDY_HIDDEN[mode], "gru": matched_hidden(STUDY_HIDDEN[mode])}
    for kind in ("lem", "gru"):
        t0 = time.perf_counter()
        model = train_forecaster(kind, data, hidden[kind], STUDY_EPOCHS[mode], seed)
        res[f"{kind}_train_s"] = time.perf_counter() - t0
        res[f"{kind}_params"] = float(n_parameters(model))
        pred = training.predict(model, data.x_test, batch_size=256)
        res.update({f"{kind}_{k}": v for k, v in forecast_errors(pred, data.y_test).items()})
    pers = persistence(data.x_test, data.y_test.shape[1])
    res.update({f"persistence_{k}": v for k, v in forecast_errors(pers, data.y_test).items()})
    return res


def finding_table(res: dict[str, float]) -> str:
    """The finding as a text table (rows: models)."""
    leads = [k for k in LEADS if f"lem_rel_l2_{k}" in res]
    head = f"{'model':<12}{'params':>8}" + "".join(f"{f'L2@{k}':>8}" for k in leads)
    head += f"{'L2 all':>8}{'peak':>8}{'arrival':>9}{'train s':>9}"
    rows = [head]
    for kind in ("lem", "gru", "persistence"):
        p = f"{int(res[f'{kind}_params']):>8}" if f"{kind}_params" in res else f"{'-':>8}"
        errs = "".join(f"{res[f'{kind}_rel_l2_{k}']:>8.3f}" for k in leads)
        ts = f"{res[f'{kind}_train_s']:>9.1f}" if f"{kind}_train_s" in res else f"{'-':>9}"
        rows.append(
            f"{kind:<12}{p}{errs}{res[f'{kind}_rel_l2']:>8.3f}"
            f"{res[f'{kind}_peak_rel_err']:>8.3f}{res[f'{kind}_arrival_err']:>9.2f}{ts}"
        )
    return "\n".join(rows)


# ======================================================================== edge form

#: Hidden channels and tile side of the on-chip cell; input channels = 1 + 2 * hidden.
EDGE_HIDDEN = 2
TILE = 4
EDGE_CHANNELS = 1 + 2 * EDGE_HIDDEN
INPUT_SHAPE: tuple[int, int, int] = (EDGE_CHANNELS, TILE, TILE)
#: Tiles per split of the edge data set (train, test).
EDGE_TILES = (24_000, 4_000)
TEACHER_EPOCHS = 6


class StateQuant(Int8ActPerTensorFixedPoint):
    """Constant signed 8-bit quantizer on ``[-1, 127/128]`` (scale ``2**-7``): input, states, tanh."""

    scaling_impl_type = ScalingImplType.CONST
    min_val = -1.0
    max_val = 1.0


class GateQuant(Uint8ActPerTensorFixedPoint):
    """Constant unsigned 8-bit quantizer on ``[0, 255/256]`` (scale ``2**-8``): sigmoid gates."""

    scaling_impl_type = ScalingImplType.CONST
    max_val = 1.0


def _check_bit_width(bit_width: int) -> None:
    if isinstance(bit_width, bool) or not isinstance(bit_width, int) or not 2 <= bit_width <= 8:
        raise ConfigError(
            f"bit_width must be an integer from 2 to 8 (8-bit quantizer families), got {bit_width!r}"
        )


class FloatLEMTile(ConvLEMCell):
    """Float twin of the edge form: ``concat(x, y, z)`` ``(B, 5, 4, 4)`` -> ``concat(y_t, z_t)``."""

    def __init__(self) -> None:
        super().__init__(1, EDGE_HIDDEN)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        h = EDGE_HIDDEN
        y, z = self.step(inp[:, :1], inp[:, 1 : 1 + h], inp[:, 1 + h :])
        return torch.cat([y, z], dim=1)


def _qconv(c_in: int, c_out: int, bit_width: int) -> qnn.QuantConv2d:
    return qnn.QuantConv2d(
        c_in,
        c_out,
        3,
        padding=1,
        bias=True,
        weight_quant=Int8WeightPerTensorFixedPoint,
        weight_bit_width=bit_width,
        bias_quant=Int16Bias,
        return_quant_tensor=False,
    )


def _qpre() -> qnn.QuantIdentity:
    """Signed 8-bit power-of-two quantizer before a table (scale from statistics)."""
    return qnn.QuantIdentity(
        act_quant=Int8ActPerTensorFixedPoint,
        bit_width=8,
        collect_stats_steps=ACT_COLLECT_STATS_STEPS,
        return_quant_tensor=True,
    )


def _qstate(qt: bool = True) -> qnn.QuantIdentity:
    return qnn.QuantIdentity(act_quant=StateQuant, return_quant_tensor=qt)


class QuantLEMTile(nn.Module):
    """Brevitas edge form: one ConvLEM step, 8-bit PoT quantizers around every table.

    Graph: Quant(input) -> Slice [x, y] -> Quant ; Conv -> Quant -> Sigmoid -> Quant ->
    Slice (dt1, dt2) ; Conv -> Quant -> Tanh -> Quant ; Sub(1, dt), Mul, Mul, Add ->
    Quant (z_t) ; Concat(x, z_t) -> Quant -> Conv -> Quant -> Tanh -> Quant ; Sub, Mul,
    Mul, Add -> Quant (y_t) ; Concat(y_t, z_t) -> Quant (output, the input's grid).
    Parameter names equal :class:`FloatLEMTile`'s.
    """

    def __init__(self, bit_width: int = 8) -> None:
        super().__init__()
        _check_bit_width(bit_width)
        self.bit_width = bit_width
        h = EDGE_HIDDEN
        self.inp = _qstate(qt=False)
        self.xy_q = _qstate()
        self.conv_dt = _qconv(1 + h, 2 * h, bit_width)
        self.pre_dt = _qpre()
        self.sigmoid = qnn.QuantSigmoid(act_quant=GateQuant, return_quant_tensor=False)
        self.conv_zc = _qconv(1 + h, h, bit_width)
        self.pre_zc = _qpre()
        self.tanh_zc = qnn.QuantTanh(act_quant=StateQuant, return_quant_tensor=False)
        self.z_q = _qstate(qt=False)
        self.xz_q = _qstate()
        self.conv_y = _qconv(1 + h, h, bit_width)
        self.pre_y = _qpre()
        self.tanh_y = qnn.QuantTanh(act_quant=StateQuant, return_quant_tensor=False)
        self.y_q = _qstate(qt=False)
        self.out = _qstate(qt=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        h = EDGE_HIDDEN
        inp = self.inp(v)
        x, y, z = inp[:, :1], inp[:, 1 : 1 + h], inp[:, 1 + h :]
        xy = self.xy_q(inp[:, : 1 + h])
        dt = self.sigmoid(self.pre_dt(self.conv_dt(xy)))
        dt1, dt2 = dt[:, :h], dt[:, h:]
        zc = self.tanh_zc(self.pre_zc(self.conv_zc(xy)))
        z = self.z_q((1 - dt1) * z + dt1 * zc)
        xz = self.xz_q(torch.cat([x, z], dim=1))
        yc = self.tanh_y(self.pre_y(self.conv_y(xz)))
        y = self.y_q((1 - dt2) * y + dt2 * yc)
        return self.out(torch.cat([y, z], dim=1))


def build_float() -> FloatLEMTile:
    """Float edge cell."""
    return FloatLEMTile()


def build_qat(bit_width: int = 8) -> QuantLEMTile:
    """Brevitas edge cell at ``bit_width``-bit weights (activations and tables stay 8-bit)."""
    return QuantLEMTile(bit_width)


def edge_parameters(model: nn.Module) -> int:
    """Weights + biases of the on-chip cell."""
    return sum(
        m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        for m in training.weight_layers(model).values()
    )


def _on_grid(a: np.ndarray) -> np.ndarray:
    """Round to the input grid (scale ``2**-7``, signed 8-bit), as the host sends it."""
    return (np.clip(np.round(a * 128.0), -128, 127) / 128.0).astype(np.float32)


@lru_cache(maxsize=2)
def teacher(seed: int = 0) -> Seq2Seq:
    """The 2-channel ConvLEM forecaster whose encoder cell the edge form learns (quick data)."""
    return train_forecaster("lem", study_data(seed, quick=True), EDGE_HIDDEN, TEACHER_EPOCHS, seed)


def _transitions(model: Seq2Seq, x: np.ndarray) -> np.ndarray:
    """Encoder inputs ``concat(x_t, y_{t-1}, z_{t-1})`` on the input grid, ``(N*T, 5, S, S)``."""
    cell = model.encoder
    out = []
    with torch.no_grad():
        xs = torch.from_numpy(_on_grid(x))
        y = xs.new_zeros(len(xs), cell.hidden, *xs.shape[-2:])
        z = torch.zeros_like(y)
        for t in range(xs.shape[1]):
            inp = torch.from_numpy(_on_grid(torch.cat([xs[:, t], y, z], dim=1).numpy()))
            out.append(inp.numpy())
            h = cell.hidden
            y, z = cell.step(inp[:, :1], inp[:, 1 : 1 + h], inp[:, 1 + h :])
    return np.concatenate(out)


def _tiles(states: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random 4x4 windows (all channels) of random frames of ``states``."""
    win = np.lib.stride_tricks.sliding_window_view(states, (TILE, TILE), axis=(2, 3))
    i = rng.integers(0, len(states), n)
    r, c = rng.integers(0, states.shape[-1] - TILE + 1, (2, n))
    return np.ascontiguousarray(win[i, :, r, c])


@lru_cache(maxsize=2)
def load_data(seed: int = 0) -> Dataset:
    """4x4 tiles of the teacher encoder's inputs -> its cell's next states on the tile.

    ``x``: ``concat(x_t, y_{t-1}, z_{t-1})`` ``(N, 5, 4, 4)`` on the ``2**-7`` grid; ``y``:
    ``concat(y_t, z_t)`` ``(N, 4, 4, 4)`` of the teacher cell run on the tile alone.
    Tiles with no signal (all ``|x|`` below the threshold and zero states) are thinned.
    """
    model = teacher(seed)
    data = study_data(seed, quick=True)
    rng = np.random.default_rng(seed + 17)
    ref = FloatLEMTile()
    ref.load_state_dict(model.encoder.state_dict())
    parts = []
    for src, n in ((data.x_train, EDGE_TILES[0]), (data.x_test, EDGE_TILES[1])):
        tiles = _tiles(_transitions(model, src), 2 * n, rng)
        live = np.abs(tiles).reshape(len(tiles), -1).max(axis=1) >= ARRIVAL_THRESHOLD
        keep = np.concatenate([np.flatnonzero(live), np.flatnonzero(~live)])[:n]
        xt = tiles[np.sort(keep)]
        parts.append((xt, training.predict(ref, xt).astype(np.float32)))
    (xtr, ytr), (xte, yte) = parts
    return Dataset(
        xtr,
        ytr,
        xte,
        yte,
        info={"source": f"4x4 tiles of a trained ConvLEM encoder's steps (seed {seed})"},
    )


def one_step_errors(outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Relative L2 of the cell's next states against the teacher: all, ``y_t`` and ``z_t``."""
    p = np.asarray(outputs, np.float64).reshape(np.shape(y))
    t = np.asarray(y, np.float64)
    h = EDGE_HIDDEN

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sqrt(((a - b) ** 2).sum() / max((b**2).sum(), 1e-12)))

    return {
        "rel_l2": rel(p, t),
        "rel_l2_y": rel(p[:, :h], t[:, :h]),
        "rel_l2_z": rel(p[:, h:], t[:, h:]),
        "max_abs_err": float(np.abs(p - t).max()),
    }


def metrics(outputs: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """One-step errors of the edge cell's outputs (the whole cell is on chip)."""
    return one_step_errors(outputs, y)


def edge_metrics(
    edge_outputs: np.ndarray, model: nn.Module, x: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """The same figures from on-chip outputs (real values: codes x output scale)."""
    return one_step_errors(edge_outputs, y)


def _whole(model: nn.Module) -> nn.Module:
    return model


def state_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE of the next states (module-level so specs stay picklable)."""
    return nn.functional.mse_loss(out, y)


def _spec() -> Any:
    from . import zoo

    return zoo.DesignSpec(
        name="wavecast",
        title="WaveCastNet ConvLEM cell step on a 4x4 tile (2 hidden channels, sigmoid/tanh)",
        task="regression",
        input_shape=INPUT_SHAPE,
        load_data=load_data,
        build_float=build_float,
        build_qat=build_qat,
        loss=state_mse,
        metrics=metrics,
        primary="rel_l2",
        higher_is_better=False,
        edge=_whole,
        edge_metrics=edge_metrics,
        epochs={"float": 30, "qat": 15, "finetune": 15},
        settings=TrainSettings(lr=1e-3, batch_size=128),
        float_settings=TrainSettings(lr=3e-3, batch_size=128),
        bit_widths=(4, 8),
        notes=(
            "input concat(x_t, y_t-1, z_t-1) 5x4x4 ap_fixed<8,1>; output concat(y_t, z_t) on the "
            "same grid (host feeds it back); metric: one-step relative L2 of the states against "
            "the teacher ConvLEM cell (lower is better)"
        ),
    )


DESIGNS = {"wavecast": _spec()}


# ============================================================================== CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m edgeml.models.wavecast [--quick] [--seed N]``: print the finding's table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 events, 6 epochs (under a minute)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t = time.perf_counter()
    res = finding(args.seed, args.quick)
    print(
        f"WaveCastNet study ({'quick' if args.quick else 'full'}, seed {args.seed}): "
        f"{T_IN} frames observed -> {T_OUT} forecast on a {SENSORS}x{SENSORS} sensor grid; "
        "relative L2 by lead (frames), peak-motion relative error, arrival error (frames)"
    )
    print(finding_table(res))
    print(f"total {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
