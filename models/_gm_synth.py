"""Stochastic ground motions (Boore 2003), 5 %-damped pseudo-spectral acceleration, log-STFT.

Private helper of :mod:`edgeml.models.cgm`; everything is numpy (torch only for the
STFT, whose inverse Griffin-Lim uses).

**Generator** (Boore, "Simulation of ground motion using the stochastic method",
PAGEOPH 160, 2003): the Fourier amplitude spectrum of acceleration is

    A(f) = C M0 (2 pi f)^2 / (1 + (f/fc)^2) * G(R) exp(-pi f R / (Q(f) beta)) exp(-pi kappa f)

with ``C = R_tp V F / (4 pi rho beta^3 R0)`` (0.55, 1/sqrt 2, 2, 2.8 g/cm^3, 3.5 km/s,
1 km; M0 in dyne-cm, so A is in cm/s), ``M0 = 10^(1.5 M + 16.05)``, the Brune
corner frequency ``fc = 4.906e6 beta (dsigma / M0)^(1/3)``, geometric spreading
``1/R`` to 40 km and ``R^-0.5`` beyond, ``Q(f) = 180 f^0.45`` and site ``kappa``.
A record is Gaussian white noise shaped by a Saragoni-Hart window (epsilon 0.2,
eta 0.05, window length twice the duration ``1/fc + 0.05 R``), whose spectrum is
normalised to unit mean-square amplitude and multiplied by ``A(f)``.
Event-to-event variability: the stress drop is log-normal (median 100 bar,
ln-sigma 0.5) and kappa uniform in [0.02, 0.06] s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from edgeml.errors import ConfigError

#: Sample rate (Hz), samples per record (39.68 s) and onset of the window (s).
FS = 25.0
N_SAMPLES = 992
ONSET = 1.0
#: STFT: Hann window of N_FFT samples, hop HOP (centred frames): 32 frames x 32 bins
#: (the Nyquist bin is dropped and restored as zero).
N_FFT = 64
HOP = 32
N_FRAMES = 1 + N_SAMPLES // HOP
N_BINS = N_FFT // 2
#: Magnitude floor (cm/s^2 per bin) added before the log.
FLOOR = 1e-4
#: Oscillator periods (s) of the SA metric and the damping ratio.
PERIODS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
DAMPING = 0.05

BETA_KMS = 3.5
RHO = 2.8
MAG_RANGE = (4.0, 7.0)
DIST_RANGE = (10.0, 100.0)


@dataclass(frozen=True)
class Records:
    """Generated records: acceleration ``acc`` (N, N_SAMPLES) in cm/s^2 and their parameters."""

    acc: np.ndarray
    mag: np.ndarray
    dist: np.ndarray
    stress: np.ndarray
    kappa: np.ndarray


def corner_frequency(mag: np.ndarray, stress_bar: np.ndarray | float = 100.0) -> np.ndarray:
    """Brune corner frequency (Hz) of moment magnitude ``mag`` at stress drop ``stress_bar``."""
    m0 = 10.0 ** (1.5 * np.asarray(mag, np.float64) + 16.05)
    return 4.906e6 * BETA_KMS * (np.asarray(stress_bar, np.float64) / m0) ** (1.0 / 3.0)


def fourier_amplitude(
    freq: np.ndarray,
    mag: np.ndarray,
    dist: np.ndarray,
    stress_bar: np.ndarray | float = 100.0,
    kappa: np.ndarray | float = 0.04,
) -> np.ndarray:
    """Target acceleration Fourier amplitude (cm/s) ``(N, len(freq))`` of Boore (2003)."""
    f = np.asarray(freq, np.float64)[None, :]
    mag = np.asarray(mag, np.float64).reshape(-1, 1)
    r = np.asarray(dist, np.float64).reshape(-1, 1)
    m0 = 10.0 ** (1.5 * mag + 16.05)
    fc = corner_frequency(mag, np.asarray(stress_bar, np.float64).reshape(-1, 1))
    c = 0.55 * (1 / math.sqrt(2.0)) * 2.0 / (4 * math.pi * RHO * BETA_KMS**3) * 1e-20
    source = c * m0 * (2 * math.pi * f) ** 2 / (1.0 + (f / fc) ** 2)
    geo = np.where(r <= 40.0, 1.0 / r, (1.0 / 40.0) * np.sqrt(40.0 / r))
    q = 180.0 * np.maximum(f, 0.1) ** 0.45
    atten = np.exp(-math.pi * f * r / (q * BETA_KMS))
    site = np.exp(-math.pi * np.asarray(kappa, np.float64).reshape(-1, 1) * f)
    return source * geo * atten * site


def saragoni_hart(
    t: np.ndarray, duration: np.ndarray, eps: float = 0.2, eta: float = 0.05
) -> np.ndarray:
    """Saragoni-Hart window of length ``2 * duration`` (peak at ``eps`` of it), ``(N, len(t))``."""
    b = -eps * math.log(eta) / (1 + eps * (math.log(eps) - 1))
    c = b / eps
    a = (math.e / eps) ** b
    tn = 2.0 * np.asarray(duration, np.float64).reshape(-1, 1)
    u = np.clip(np.asarray(t, np.float64)[None, :] / tn, 0.0, None)
    return a * u**b * np.exp(-c * u)


def generate(n: int, seed: int = 0) -> Records:
    """``n`` seeded stochastic records, M uniform in [4, 7], R uniform in [10, 100] km."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"number of records must be a non-negative integer, got {n!r}")
    rng = np.random.default_rng(seed)
    mag = rng.uniform(*MAG_RANGE, size=n)
    dist = rng.uniform(*DIST_RANGE, size=n)
    stress = 100.0 * np.exp(0.5 * rng.standard_normal(n))
    kappa = rng.uniform(0.02, 0.06, size=n)
    dt = 1.0 / FS
    t = np.arange(N_SAMPLES) * dt - ONSET
    duration = 1.0 / corner_frequency(mag, stress) + 0.05 * dist
    win = saragoni_hart(t, duration)
    noise = rng.standard_normal((n, N_SAMPLES)) * win
    spec = np.fft.rfft(noise, axis=1)
    spec /= np.sqrt(np.mean(np.abs(spec[:, 1:]) ** 2, axis=1, keepdims=True))
    freq = np.fft.rfftfreq(N_SAMPLES, dt)
    amp = fourier_amplitude(freq, mag, dist, stress, kappa)
    acc = np.fft.irfft(spec * amp / dt, n=N_SAMPLES)  # |DFT| * dt ~ A(f) on average
    return Records(acc=acc.astype(np.float64), mag=mag, dist=dist, stress=stress, kappa=kappa)


# --------------------------------------------------------------------------- SA


def psa(
    acc: np.ndarray,
    periods: tuple[float, ...] = PERIODS,
    dt: float = 1.0 / FS,
    damping: float = DAMPING,
) -> np.ndarray:
    """5 %-damped pseudo-spectral acceleration ``w^2 max|u|`` (units of ``acc``), ``(N, P)``.

    Exact Nigam-Jennings (1969) recurrence for an SDOF oscillator driven by the
    ground acceleration linearly interpolated between samples, vectorised over
    records and periods.
    """
    a = np.atleast_2d(np.asarray(acc, np.float64))
    per = np.asarray(periods, np.float64)
    if np.any(per <= 0):
        raise ConfigError(f"periods must be positive, got {periods!r}")
    w = 2 * np.pi / per
    z = damping
    wd = w * np.sqrt(1 - z * z)
    e = np.exp(-z * w * dt)
    s, c = np.sin(wd * dt), np.cos(wd * dt)
    r = z / np.sqrt(1 - z * z)
    w2 = w * w
    t1 = (2 * z * z - 1) / (w2 * dt)
    t2 = 2 * z / (w2 * w * dt)
    a11 = e * (r * s + c)
    a12 = e * s / wd
    a21 = -w / np.sqrt(1 - z * z) * e * s
    a22 = e * (c - r * s)
    b11 = e * ((t1 + z / w) * s / wd + (t2 + 1 / w2) * c) - t2
    b12 = -e * (t1 * s / wd + t2 * c) - 1 / w2 + t2
    b21 = e * ((t1 + z / w) * (c - r * s) - (t2 + 1 / w2) * (wd * s + z * w * c)) + 1 / (w2 * dt)
    b22 = -e * (t1 * (c - r * s) - t2 * (wd * s + z * w * c)) - 1 / (w2 * dt)
    u = np.zeros((len(a), len(per)))
    v = np.zeros_like(u)
    peak = np.zeros_like(u)
    for i in range(a.shape[1] - 1):
        p0, p1 = a[:, i : i + 1], a[:, i + 1 : i + 2]
        u, v = a11 * u + a12 * v + b11 * p0 + b12 * p1, a21 * u + a22 * v + b21 * p0 + b22 * p1
        np.maximum(peak, np.abs(u), out=peak)
    return w2 * peak


# ------------------------------------------------------------------------- STFT


def _window() -> torch.Tensor:
    return torch.hann_window(N_FFT, dtype=torch.float64)


def stft_mag(acc: np.ndarray | torch.Tensor) -> torch.Tensor:
    """|STFT| of records, ``(N, N_BINS, N_FRAMES)`` float64 (the Nyquist bin dropped)."""
    x = torch.as_tensor(np.asarray(acc, np.float64))
    spec = torch.stft(x, N_FFT, HOP, window=_window(), center=True, return_complex=True)
    return spec[:, :N_BINS].abs()


def _full(mag: torch.Tensor) -> torch.Tensor:
    pad = torch.zeros((mag.shape[0], 1, mag.shape[2]), dtype=mag.dtype)
    return torch.cat([mag, pad], dim=1)


def griffin_lim(mag: np.ndarray | torch.Tensor, iters: int = 32, seed: int = 0) -> np.ndarray:
    """Records from STFT magnitudes ``(N, N_BINS, N_FRAMES)`` by Griffin-Lim phase retrieval.

    ``iters=0`` gives the random-phase record. Uses ``torch.stft`` / ``torch.istft``.
    """
    m = _full(torch.as_tensor(np.asarray(mag, np.float64)))
    gen = torch.Generator().manual_seed(seed)
    phase = torch.rand(m.shape, generator=gen, dtype=torch.float64) * (2 * math.pi)
    win = _window()
    for _ in range(max(iters, 0)):
        x = torch.istft(
            torch.polar(m, phase), N_FFT, HOP, window=win, center=True, length=N_SAMPLES
        )
        spec = torch.stft(x, N_FFT, HOP, window=win, center=True, return_complex=True)
        phase = torch.angle(spec)
    x = torch.istft(torch.polar(m, phase), N_FFT, HOP, window=win, center=True, length=N_SAMPLES)
    return x.numpy()
