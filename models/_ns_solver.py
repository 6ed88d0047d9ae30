"""Pseudo-spectral solver of 2-D incompressible Navier-Stokes in vorticity form (the DLWP study's data).

On the periodic unit square, the vorticity ``w`` obeys

    dw/dt + u . grad(w) = nu * lap(w) + f,    u = (d psi/dy, -d psi/dx),   -lap(psi) = w,

with the forcing of the FNO paper (Li et al., ICLR 2021, "Fourier neural
operator for parametric PDEs"), ``f = 0.1 (sin(2 pi (x + y)) + cos(2 pi (x + y)))``,
and initial vorticity drawn from the Gaussian random field
``N(0, 7^{3/2} (-lap + 49 I)^{-2.5})`` as there. Time stepping: the viscous term
by Crank-Nicolson, the advection and forcing by Heun's method (RK2,
predictor-corrector), the nonlinear product dealiased by the 2/3 rule. A batch
of trajectories is advanced at once (numpy FFTs over ``(B, N, N)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeml.errors import ConfigError


@dataclass(frozen=True)
class NSConfig:
    """Grid, physics and sampling of the generated trajectories."""

    #: grid points per side (periodic unit square)
    n: int = 32
    #: kinematic viscosity
    visc: float = 1e-3
    #: solver time step
    dt: float = 0.01
    #: time between saved frames
    save_every: float = 0.5
    #: saved frames after the initial one
    steps: int = 20
    #: time advanced before the first saved frame (spin-up of the forced flow)
    spin_up: float = 2.0
    #: forcing amplitude (0.1 in the FNO paper); 0 switches it off
    forcing: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 8 or self.n % 2:
            raise ConfigError(f"n must be an even integer >= 8, got {self.n!r}")
        if not self.visc >= 0:
            raise ConfigError(f"visc must be >= 0, got {self.visc!r}")
        if not self.dt > 0 or not self.save_every > 0:
            raise ConfigError(
                f"dt and save_every must be > 0, got {self.dt!r}, {self.save_every!r}"
            )
        ratio = self.save_every / self.dt
        if abs(ratio - round(ratio)) > 1e-9:
            raise ConfigError(
                f"save_every ({self.save_every}) must be a whole number of dt ({self.dt})"
            )
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {self.steps!r}")
        if not self.spin_up >= 0:
            raise ConfigError(f"spin_up must be >= 0, got {self.spin_up!r}")


def wavenumbers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Angular wavenumbers ``(kx, ky)`` of an ``rfft2`` grid, shapes ``(n, n // 2 + 1)``."""
    k = np.fft.fftfreq(n, d=1.0 / n)
    kr = np.fft.rfftfreq(n, d=1.0 / n)
    ky, kx = np.meshgrid(k, kr, indexing="ij")  # axis 0 is y (rows), axis 1 is x
    return 2 * np.pi * kx, 2 * np.pi * ky


def grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell coordinates ``(x, y)`` on ``[0, 1)^2``, shapes ``(n, n)``; ``x`` varies along axis 1."""
    t = np.arange(n) / n
    y, x = np.meshgrid(t, t, indexing="ij")
    return x, y


def forcing_field(n: int, amplitude: float = 0.1) -> np.ndarray:
    """The FNO paper's forcing ``amplitude * (sin(2 pi (x + y)) + cos(2 pi (x + y)))``."""
    x, y = grid(n)
    return amplitude * (np.sin(2 * np.pi * (x + y)) + np.cos(2 * np.pi * (x + y)))


def gaussian_random_field(
    batch: int, n: int, rng: np.random.Generator, alpha: float = 2.5, tau: float = 7.0
) -> np.ndarray:
    """Zero-mean samples of ``N(0, tau^(2 alpha - 2) (-lap + tau^2)^-alpha)``, ``(batch, n, n)``.

    The FNO paper's initial-condition law (``alpha = 2.5``, ``tau = 7``). The
    white noise is drawn in physical space, so the field is real and periodic.
    """
    kx, ky = wavenumbers(n)
    sigma = tau ** (0.5 * (2 * alpha - 2))
    amp = sigma * (kx**2 + ky**2 + tau**2) ** (-alpha / 2)
    amp[0, 0] = 0.0
    noise = np.fft.rfft2(rng.standard_normal((batch, n, n)))
    return np.fft.irfft2(noise * amp * n, s=(n, n))


class Solver:
    """Batch pseudo-spectral integrator for :class:`NSConfig` (see the module docstring)."""

    def __init__(self, config: NSConfig) -> None:
        self.config = config
        n = config.n
        self.kx, self.ky = wavenumbers(n)
        self.k2 = self.kx**2 + self.ky**2
        self.inv_k2 = np.where(self.k2 > 0, 1.0 / np.where(self.k2 > 0, self.k2, 1.0), 0.0)
        kmax = n // 2
        # 2/3 rule: keep |k_x|, |k_y| <= (2/3)(n/2) in integer wavenumbers
        ikx, iky = self.kx / (2 * np.pi), self.ky / (2 * np.pi)
        self.dealias = (np.abs(ikx) <= 2 * kmax / 3) & (np.abs(iky) <= 2 * kmax / 3)
        self.f_hat = np.fft.rfft2(forcing_field(n, config.forcing))
        a = 0.5 * config.dt * config.visc * self.k2
        self.cn_num, self.cn_den = 1.0 - a, 1.0 + a

    def velocity(self, w_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Physical velocity ``(u, v)`` of vorticity ``w_hat`` (rfft2 coefficients)."""
        psi = w_hat * self.inv_k2
        n = self.config.n
        u = np.fft.irfft2(1j * self.ky * psi, s=(n, n))
        v = np.fft.irfft2(-1j * self.kx * psi, s=(n, n))
        return u, v

    def _rhs(self, w_hat: np.ndarray) -> np.ndarray:
        """``f - u . grad(w)`` in spectral space, dealiased."""
        n = self.config.n
        u, v = self.velocity(w_hat)
        wx = np.fft.irfft2(1j * self.kx * w_hat, s=(n, n))
        wy = np.fft.irfft2(1j * self.ky * w_hat, s=(n, n))
        adv = np.fft.rfft2(u * wx + v * wy) * self.dealias
        return self.f_hat - adv

    def step(self, w_hat: np.ndarray) -> np.ndarray:
        """One time step: Heun (RK2) on advection + forcing, Crank-Nicolson on viscosity."""
        dt = self.config.dt
        r0 = self._rhs(w_hat)
        pred = (self.cn_num * w_hat + dt * r0) / self.cn_den
        r1 = self._rhs(pred)
        return (self.cn_num * w_hat + 0.5 * dt * (r0 + r1)) / self.cn_den

    def advance(self, w: np.ndarray, t: float) -> np.ndarray:
        """Vorticity ``w`` (``(B, n, n)``) advanced by time ``t`` (a whole number of steps)."""
        n_steps = round(t / self.config.dt)
        w_hat = np.fft.rfft2(np.asarray(w, np.float64))
        for _ in range(n_steps):
            w_hat = self.step(w_hat)
        return np.fft.irfft2(w_hat, s=(self.config.n, self.config.n))

    def trajectories(self, w0: np.ndarray) -> np.ndarray:
        """Saved frames ``(B, steps + 1, n, n)`` from initial vorticity ``w0`` after the spin-up."""
        cfg = self.config
        w = self.advance(w0, cfg.spin_up) if cfg.spin_up > 0 else np.asarray(w0, np.float64)
        frames = [w]
        for _ in range(cfg.steps):
            w = self.advance(w, cfg.save_every)
            frames.append(w)
        return np.stack(frames, axis=1)


def simulate(n_traj: int, seed: int = 0, config: NSConfig | None = None) -> np.ndarray:
    """``n_traj`` trajectories ``(n_traj, steps + 1, n, n)`` float64 from GRF initial vorticity."""
    if isinstance(n_traj, bool) or not isinstance(n_traj, int) or n_traj < 1:
        raise ConfigError(f"n_traj must be a positive integer, got {n_traj!r}")
    cfg = config or NSConfig()
    rng = np.random.default_rng(seed)
    w0 = gaussian_random_field(n_traj, cfg.n, rng)
    return Solver(cfg).trajectories(w0)


def enstrophy(w: np.ndarray) -> np.ndarray:
    """Mean of ``w^2 / 2`` over the last two (grid) axes."""
    return 0.5 * np.mean(np.asarray(w) ** 2, axis=(-2, -1))


def energy(w: np.ndarray) -> np.ndarray:
    """Kinetic energy ``mean(|u|^2) / 2`` of vorticity fields ``(..., n, n)``."""
    w = np.asarray(w, np.float64)
    n = w.shape[-1]
    kx, ky = wavenumbers(n)
    k2 = kx**2 + ky**2
    inv = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0)
    w_hat = np.fft.rfft2(w)
    u = np.fft.irfft2(1j * ky * w_hat * inv, s=(n, n))
    v = np.fft.irfft2(-1j * kx * w_hat * inv, s=(n, n))
    return 0.5 * np.mean(u**2 + v**2, axis=(-2, -1))


def coarsen(w: np.ndarray, n: int) -> np.ndarray:
    """Spectral truncation of fields ``(..., N, N)`` to an ``n x n`` grid (``n`` divides ``N``).

    Keeps the Fourier modes that the coarse grid can hold (``|k| < n/2``), so a
    band-limited field is sampled exactly at the coarse points.
    """
    w = np.asarray(w, np.float64)
    big = w.shape[-1]
    if n == big:
        return w.copy()
    if big % n or n % 2:
        raise ConfigError(f"coarsen needs an even n dividing {big}, got {n}")
    w_hat = np.fft.fft2(w)
    k = np.fft.fftfreq(n, d=1.0 / n).astype(int)  # coarse-grid wavenumbers in fft order
    idx = np.where(k >= 0, k, big + k)
    sub = w_hat[..., idx, :][..., :, idx]
    sub[..., n // 2, :] = 0.0  # the coarse Nyquist row/column: not representable symmetrically
    sub[..., :, n // 2] = 0.0
    return np.real(np.fft.ifft2(sub)) * (n / big) ** 2
