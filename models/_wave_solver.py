"""2-D acoustic wave equation by finite differences: the wavefields of the WaveCastNet study.

``u_tt = c(x, z)^2 (u_xx + u_zz) + s(t) g(x - x_s)``, solved on an ``n x n`` grid
(spacing ``dx = 1``) by the classic leapfrog scheme: second order in time,
fourth order in space (5-point stencil per axis), CFL number ``c_max dt / dx =
0.5`` (the 2-D limit of this scheme is ``sqrt(3/8) ~ 0.61``). A Cerjan sponge
(``exp(-(a d)^2)`` damping over :attr:`WaveConfig.sponge` cells) absorbs the
outgoing waves at all four sides. Velocity models are layered (speed increasing
with depth, random layer boundaries) with a smooth random perturbation; the
source is a Ricker wavelet injected through a small Gaussian at a random
position and depth, with a random amplitude (a magnitude proxy). The field is
recorded every :attr:`WaveConfig.record_every` steps on a coarse sensor grid
(every ``stride``-th point of the interior). All events of a batch are stepped
together as one ``(B, n, n)`` float32 array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeml.errors import ConfigError


@dataclass(frozen=True)
class WaveConfig:
    """Grid, time stepping and recording of one family of events."""

    n: int = 48
    sponge: int = 8
    sensors: int = 16
    c_min: float = 1.5
    c_max: float = 3.0
    cfl: float = 0.5
    f0: float = 0.1
    record_every: int = 5
    frames: int = 24
    layers: int = 4
    perturbation: float = 0.08
    #: recording starts at ``record_start / f0`` (the wavelet's onset; it peaks at ``1 / f0``)
    record_start: float = 0.5

    @property
    def dt(self) -> float:
        """Time step (``dx = 1``)."""
        return self.cfl / self.c_max

    @property
    def stride(self) -> int:
        """Grid points between sensors."""
        return (self.n - 2 * self.sponge) // self.sensors

    def check(self) -> None:
        """Refuse configurations that would be unstable or record outside the interior."""
        if self.cfl > 0.6:
            raise ConfigError(f"cfl must be <= 0.6 for the 4th-order 2-D scheme, got {self.cfl}")
        if self.stride < 1:
            raise ConfigError(
                f"sensors ({self.sensors}) do not fit the interior of n={self.n}, sponge={self.sponge}"
            )
        # 4th-order stencil: about 4 points per shortest wavelength (peak ~ 2.5 f0 max).
        if self.c_min / (2.5 * self.f0) < 4.0:
            raise ConfigError(f"f0={self.f0} is under-resolved for c_min={self.c_min}, dx=1")


def ricker(t: np.ndarray, f0: float, t0: float) -> np.ndarray:
    """Ricker wavelet of peak frequency ``f0`` centred at ``t0``."""
    a = (np.pi * f0 * (t - t0)) ** 2
    return (1.0 - 2.0 * a) * np.exp(-a)


def _smooth_noise(rng: np.random.Generator, batch: int, n: int, width: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation, ``(B, n, n)``."""
    k = np.fft.fftfreq(n)
    kk = k[:, None] ** 2 + k[None, :] ** 2
    filt = np.exp(-2.0 * (np.pi * width) ** 2 * kk)
    w = rng.standard_normal((batch, n, n))
    f = np.real(np.fft.ifft2(np.fft.fft2(w) * filt))
    return f / f.std(axis=(1, 2), keepdims=True)


def velocity_models(cfg: WaveConfig, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Layered models (speed increasing with depth = axis 1) with a smooth perturbation."""
    n = cfg.n
    depth = np.arange(n)[None, :, None]
    c = np.full((batch, n, n), cfg.c_min, dtype=np.float64)
    tops = np.sort(rng.uniform(0.15 * n, 0.9 * n, size=(batch, cfg.layers - 1)), axis=1)
    steps = rng.uniform(0.5, 1.0, size=(batch, cfg.layers - 1))
    steps *= 0.8 * (cfg.c_max - cfg.c_min) / steps.sum(axis=1, keepdims=True)
    for j in range(cfg.layers - 1):
        c += steps[:, j, None, None] * (depth >= tops[:, j, None, None])
    c *= 1.0 + cfg.perturbation * _smooth_noise(rng, batch, n, width=4.0)
    return np.clip(c, cfg.c_min, cfg.c_max).astype(np.float32)


def _sponge(cfg: WaveConfig) -> np.ndarray:
    i = np.arange(cfg.n)
    d = np.maximum(np.maximum(cfg.sponge - i, i - (cfg.n - 1 - cfg.sponge)), 0).astype(np.float64)
    a = 0.3 / cfg.sponge
    g = np.exp(-((a * d) ** 2))
    return (g[:, None] * g[None, :]).astype(np.float32)


def _laplacian4(up: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Fourth-order 5-point Laplacian of the interior of ``up`` (padded by 2 zeros) into ``out``."""
    c = up[:, 2:-2, 2:-2]
    np.multiply(c, -5.0, out=out)  # -2.5 per axis
    out += (4.0 / 3.0) * (
        up[:, 1:-3, 2:-2] + up[:, 3:-1, 2:-2] + up[:, 2:-2, 1:-3] + up[:, 2:-2, 3:-1]
    )
    out -= (1.0 / 12.0) * (up[:, :-4, 2:-2] + up[:, 4:, 2:-2] + up[:, 2:-2, :-4] + up[:, 2:-2, 4:])
    return out


def propagate(cfg: WaveConfig, c: np.ndarray, src: np.ndarray, amp: np.ndarray) -> np.ndarray:
    """Step events with velocities ``c`` ``(B, n, n)``, sources ``src`` ``(B, 2)`` (row = depth,
    column) and amplitudes ``amp`` ``(B,)``; sensor records ``(B, frames, S, S)`` float32."""
    cfg.check()
    b = len(c)
    sponge = _sponge(cfg)
    steps = cfg.frames * cfg.record_every
    t = np.arange(round(cfg.record_start / cfg.f0 / cfg.dt) + steps) * cfg.dt
    wavelet = ricker(t, cfg.f0, 1.0 / cfg.f0).astype(np.float32)
    sl = slice(cfg.sponge, cfg.sponge + cfg.stride * cfg.sensors, cfg.stride)
    grid = np.arange(cfg.n, dtype=np.float64)
    g = np.exp(
        -((grid[None, :, None] - src[:, 0, None, None]) ** 2
          + (grid[None, None, :] - src[:, 1, None, None]) ** 2) / (2 * 1.5**2)
    )  # fmt: skip
    g = (g * np.asarray(amp)[:, None, None]).astype(np.float32)
    c2dt2 = (np.asarray(c, np.float32) * np.float32(cfg.dt)) ** 2
    out = np.empty((b, cfg.frames, cfg.sensors, cfg.sensors), np.float32)
    # u lives inside a zero frame 2 points wide (the stencil's reach); the sponge absorbs
    # the waves long before they reach it.
    up = np.zeros((b, cfg.n + 4, cfg.n + 4), np.float32)
    u = up[:, 2:-2, 2:-2]
    u_prev = np.zeros((b, cfg.n, cfg.n), np.float32)
    lap = np.empty_like(u_prev)
    start = round(cfg.record_start / cfg.f0 / cfg.dt)
    for k in range(start + steps):
        _laplacian4(up, lap)
        lap += wavelet[k] * g
        lap *= c2dt2
        lap += 2.0 * u
        lap -= u_prev
        np.multiply(u, sponge, out=u_prev)
        np.multiply(lap, sponge, out=u)
        j = k + 1 - start
        if j > 0 and j % cfg.record_every == 0:
            out[:, j // cfg.record_every - 1] = u[:, sl, sl]
    return out


def sensor_positions(cfg: WaveConfig) -> np.ndarray:
    """Grid coordinates (row, column) of the sensors, ``(S, S, 2)``."""
    idx = cfg.sponge + cfg.stride * np.arange(cfg.sensors)
    return np.stack(np.meshgrid(idx, idx, indexing="ij"), axis=-1).astype(np.float64)


def simulate(
    cfg: WaveConfig, n_events: int, seed: int = 0, batch: int = 256
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Simulate ``n_events`` random events: sensor records ``(N, frames, S, S)`` float32 and info.

    ``info`` holds ``source`` (row = depth, column, in grid points), ``amplitude``
    and ``c_mean`` per event. Recording starts at the first step; the source
    wavelet peaks at ``1 / f0``, recording starts at ``record_start / f0``.
    """
    cfg.check()
    if n_events < 1:
        raise ConfigError(f"n_events must be >= 1, got {n_events}")
    rng = np.random.default_rng(seed)
    lo, hi = cfg.sponge + 4, cfg.n - cfg.sponge - 4
    out = np.empty((n_events, cfg.frames, cfg.sensors, cfg.sensors), np.float32)
    info = {k: np.empty(n_events, np.float64) for k in ("amplitude", "c_mean")}
    info["source"] = np.empty((n_events, 2), np.float64)
    for start in range(0, n_events, batch):
        b = min(batch, n_events - start)
        c = velocity_models(cfg, b, rng)
        src = rng.uniform(lo, hi, size=(b, 2))
        amp = rng.uniform(0.5, 1.0, size=b)
        out[start : start + b] = propagate(cfg, c, src, amp)
        info["source"][start : start + b] = src
        info["amplitude"][start : start + b] = amp
        info["c_mean"][start : start + b] = c.mean(axis=(1, 2))
    return out, info
