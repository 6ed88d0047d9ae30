"""HGCAL-like trigger-cell energy maps: the input data of the ECON-T encoder design.

One map is an 8x8 patch of trigger cells of one HGCAL silicon module (one
layer), holding 1-3 particle showers. The ECON-T chip compresses such a patch;
its neural-network encoder sees the *normalised* charges (each cell divided by
the module sum), while the sum itself travels to the back end separately. This
module generates maps deterministically from a seed (one ``numpy.random.Generator``)
with the following model. Lengths are in cell pitches (a trigger cell is about
2 cm across in the electromagnetic section), energies in MIP_T (transverse
minimum-ionising-particle units, the unit of HGCAL trigger primitives).

**Showers.** Each map holds ``n_showers`` (uniform in 1-3) showers; each is
electromagnetic with probability ``p_em`` (0.5), otherwise hadronic. Its
visible energy is log-uniform in ``energy_range`` (4-400 MIP_T) and its axis
crosses the layer at a uniform point of ``[margin, size - margin]^2``
(margin 0.5 cell).

**Lateral profile.** Every shower is a sum of *components*, each a 2-D
radial profile with radius ``R`` (the depth-integrated form used by the
Grindhammer-Peters parametrisation)::

    dE/dA = w * R^2 / (pi * (r^2 + R^2)^2),   fraction inside r = r^2 / (r^2 + R^2)

which is a bivariate Student-t with 2 degrees of freedom. Its integral over an
axis-aligned rectangle has a closed form (:func:`cell_integrals`), so every
cell receives the exact energy falling on it, not a sample at its centre.

* *Electromagnetic*: a core and a halo around the axis. With the Moliere
  radius ``R_M = 1.5`` cells: core radius ``R_C = U(0.25, 0.35) R_M``
  (about 0.45 cell: the core sits in about one cell), halo radius
  ``R_T = U(0.7, 0.9) R_M`` (about 1.2 cells: 90 % of the halo within 3.6
  cells), core fraction ``p = U(0.65, 0.9)``.
* *Hadronic*: wider and fluctuating. An electromagnetic fraction
  ``f_em ~ Beta(2, 2)`` (neutral pions) is split into 1-3 EM sub-clusters
  (each a core + halo as above) displaced from the axis by ``N(0, 0.7)`` cells;
  the rest is a broad halo (``R = U(1.5, 3)`` cells) plus 0-3 hadronic
  sub-clusters (``R = U(0.5, 1.5)``) displaced by ``N(0, 1.2)`` cells. The
  energy shares within each part are Gamma(1)-distributed (Dirichlet),
  the halo's weight Gamma(2), so the shape changes from shower to shower.

**Sampling fluctuations.** The energy a cell receives from a part of a shower
is Gamma-distributed with the exact integral as mean and variance
``q * mean`` (a shower of energy ``E`` then fluctuates by ``sqrt(q / E)``):
``q = 0.5`` MIP_T for electromagnetic components (10 % at 50 MIP_T) and
``q = 6`` MIP_T for hadronic ones (about 3.5x worse, as for the stochastic
terms of HGCAL's EM and hadronic resolutions).

**Electronics.** Gaussian noise ``sigma = 0.3`` MIP_T is added to every cell,
then cells below the trigger-cell zero-suppression threshold ``1.35`` MIP_T
are set to 0 (HGCAL's threshold selection). A map whose cells are all
suppressed is redrawn, so every map has a positive sum.

**ECON-T input.** The sum of the suppressed map is the host-side quantity
``total``. Each cell is divided by it and quantised to ``input_bits`` (8)
fractional bits: codes ``round(E_cell / total * 2**8)`` (half to even) clipped
to ``[0, 255]``, so ``x = code / 256`` is exactly on the encoder's input grid
(``ap_ufixed<8,0>``). Differences from the chip: the real ECON-T normalises by
a power of two (``2**floor(log2(sum))``, a shift) and maps the 48 trigger
cells of a hexagonal module onto 8x8 (16 cells always zero); here the patch is
a full square and the division exact.

The parameter values are plausible HGCAL-like choices, not a fit to CMS
simulation: the purpose is a data set with realistic structure (narrow EM
cores, wide and lumpy hadronic showers, noise, thresholds, leakage at the
patch edges) for compression studies.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from edgeml.errors import ConfigError

#: Components per shower slot: EM shower = 2 (core, halo); hadronic =
#: 3 EM sub-clusters x 2 + 1 halo + 3 hadronic sub-clusters.
_SLOTS = 10
_MAX_PI0 = 3
_MAX_HAD_SUB = 3


@dataclass(frozen=True)
class CaloConfig:
    """Parameters of the map generator (see the module docstring for the model)."""

    size: int = 8
    n_showers: tuple[int, int] = (1, 3)
    p_em: float = 0.5
    energy_range: tuple[float, float] = (4.0, 400.0)
    margin: float = 0.5
    moliere_radius: float = 1.5
    em_core: tuple[float, float] = (0.25, 0.35)
    em_halo: tuple[float, float] = (0.7, 0.9)
    em_core_fraction: tuple[float, float] = (0.65, 0.9)
    had_em_fraction_beta: tuple[float, float] = (2.0, 2.0)
    had_pi0_spread: float = 0.7
    had_halo_radius: tuple[float, float] = (1.5, 3.0)
    had_halo_shape: float = 2.0
    had_sub_radius: tuple[float, float] = (0.5, 1.5)
    had_sub_spread: float = 1.2
    quantum_em: float = 0.5
    quantum_had: float = 6.0
    noise_sigma: float = 0.3
    threshold: float | None = 1.35
    input_bits: int = 8

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"CaloConfig.{name} must be {allowed}, got {getattr(self, name)!r}")

        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 2:
            raise bad("size", "an integer >= 2")
        lo, hi = self.n_showers
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= 3):
            raise bad("n_showers", "(lo, hi) integers with 1 <= lo <= hi <= 3")
        if not 0.0 <= self.p_em <= 1.0:
            raise bad("p_em", "a probability in [0, 1]")
        e_lo, e_hi = self.energy_range
        if not 0.0 < e_lo <= e_hi:
            raise bad("energy_range", "(lo, hi) with 0 < lo <= hi (MIP_T)")
        if not 0.0 <= self.margin < self.size / 2:
            raise bad("margin", f"in [0, size/2) = [0, {self.size / 2})")
        for name in ("em_core", "em_halo", "had_halo_radius", "had_sub_radius"):
            a, b = getattr(self, name)
            if not 0.0 < a <= b:
                raise bad(name, "(lo, hi) with 0 < lo <= hi")
        a, b = self.em_core_fraction
        if not 0.0 <= a <= b <= 1.0:
            raise bad("em_core_fraction", "(lo, hi) with 0 <= lo <= hi <= 1")
        if min(self.had_em_fraction_beta) <= 0:
            raise bad("had_em_fraction_beta", "two positive Beta parameters")
        for name in ("moliere_radius", "had_halo_shape"):
            if not getattr(self, name) > 0:
                raise bad(name, "> 0")
        for name in (
            "had_pi0_spread",
            "had_sub_spread",
            "quantum_em",
            "quantum_had",
            "noise_sigma",
        ):
            if not getattr(self, name) >= 0:
                raise bad(name, ">= 0")
        if self.threshold is not None and not self.threshold >= 0:
            raise bad("threshold", "None (no zero suppression) or >= 0 (MIP_T)")
        bits = self.input_bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
            raise bad("input_bits", "an integer from 1 to 16")


@dataclass(frozen=True)
class CaloMaps:
    """A batch of generated maps and their truth.

    ``x`` (float32, ``(N, 1, size, size)``) is the ECON-T input: ``codes / 2**input_bits``.
    ``energy`` is the cell energy after noise and zero suppression (MIP_T) and
    ``total`` its sum (kept on the host). ``clean`` is the deposited energy
    before noise, ``expected`` its mean (the exact cell integrals, without
    sampling fluctuations). Per shower slot (3 per map; unused slots have
    ``kind == -1``): ``kind`` (0 EM, 1 hadronic), ``shower_energy`` and
    ``position`` ((x, y) in cells, origin at the patch corner).
    """

    x: np.ndarray
    codes: np.ndarray
    energy: np.ndarray
    total: np.ndarray
    clean: np.ndarray
    expected: np.ndarray
    kind: np.ndarray
    shower_energy: np.ndarray
    position: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    @property
    def n_showers(self) -> np.ndarray:
        """Showers per map."""
        return (self.kind >= 0).sum(axis=1)

    @property
    def true_energy(self) -> np.ndarray:
        """Summed visible energy of the showers (before leakage out of the patch)."""
        return self.shower_energy.sum(axis=1)

    def subset(self, idx: np.ndarray | slice) -> CaloMaps:
        """The maps at ``idx``."""
        return CaloMaps(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


def _corner(x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Mass of the unit profile of radius ``r`` in the rectangle [0, x] x [0, y] (signed)."""
    ax = np.sqrt(r * r + x * x)
    ay = np.sqrt(r * r + y * y)
    return (x / ax * np.arctan(y / ax) + y / ay * np.arctan(x / ay)) / (2.0 * np.pi)


def cell_integrals(cx: np.ndarray, cy: np.ndarray, radius: np.ndarray, size: int) -> np.ndarray:
    """Exact fraction of each unit profile (centre ``(cx, cy)``, radius ``R``) on each cell.

    Cell ``(i, j)`` (row ``i``, column ``j``) spans ``[j, j+1] x [i, i+1]``.
    Inputs broadcast to shape ``S``; the result has shape ``S + (size, size)``.
    The profile ``R^2 / (pi (r^2 + R^2)^2)`` has the rectangle integral
    ``G(x2, y2) - G(x1, y2) - G(x2, y1) + G(x1, y1)`` with
    ``G(x, y) = [x/a_x atan(y/a_x) + y/a_y atan(x/a_y)] / (2 pi)``,
    ``a_x = sqrt(R^2 + x^2)``: the mass in ``[0, x] x [0, y]``.
    """
    cx, cy, radius = np.broadcast_arrays(
        np.asarray(cx, np.float64), np.asarray(cy, np.float64), np.asarray(radius, np.float64)
    )
    edges = np.arange(size + 1, dtype=np.float64)
    dx = edges - cx[..., None]  # (..., size+1)
    dy = edges - cy[..., None]
    g = _corner(dx[..., None, :], dy[..., :, None], radius[..., None, None])  # (..., y, x)
    return g[..., 1:, 1:] - g[..., 1:, :-1] - g[..., :-1, 1:] + g[..., :-1, :-1]


def _uniform(
    rng: np.random.Generator, lohi: tuple[float, float], shape: tuple[int, ...]
) -> np.ndarray:
    return rng.uniform(lohi[0], lohi[1], size=shape)


def _draw_showers(n: int, rng: np.random.Generator, cfg: CaloConfig) -> dict[str, np.ndarray]:
    """Shower truth and components for ``n`` maps: every slot drawn, unused ones weight 0.

    Each parameter is drawn for all ``n`` maps at once, so a batch is a
    function of ``(n, seed, config)``: ``generate(n, s)`` is not a prefix of
    ``generate(m, s)``.
    """
    shape = (n, 3)
    n_show = rng.integers(cfg.n_showers[0], cfg.n_showers[1] + 1, size=n)
    used = np.arange(3)[None, :] < n_show[:, None]
    is_em = rng.random(shape) < cfg.p_em
    kind = np.where(used, np.where(is_em, 0, 1), -1).astype(np.int8)
    log_lo, log_hi = np.log(cfg.energy_range[0]), np.log(cfg.energy_range[1])
    energy = np.exp(rng.uniform(log_lo, log_hi, size=shape)) * used
    pos = rng.uniform(cfg.margin, cfg.size - cfg.margin, size=(*shape, 2))

    rm = cfg.moliere_radius
    # EM core/halo parameters for the EM shower itself and the hadronic pi0 clusters
    core_r = _uniform(rng, cfg.em_core, (*shape, _MAX_PI0)) * rm
    halo_r = _uniform(rng, cfg.em_halo, (*shape, _MAX_PI0)) * rm
    core_p = _uniform(rng, cfg.em_core_fraction, (*shape, _MAX_PI0))
    # hadronic structure
    f_em = rng.beta(*cfg.had_em_fraction_beta, size=shape)
    n_pi0 = rng.integers(1, _MAX_PI0 + 1, size=shape)
    pi0_w = rng.gamma(1.0, size=(*shape, _MAX_PI0)) * (np.arange(_MAX_PI0) < n_pi0[..., None])
    pi0_w /= pi0_w.sum(axis=-1, keepdims=True)
    pi0_off = rng.normal(0.0, cfg.had_pi0_spread, size=(*shape, _MAX_PI0, 2))
    n_sub = rng.integers(0, _MAX_HAD_SUB + 1, size=shape)
    sub_w = rng.gamma(1.0, size=(*shape, _MAX_HAD_SUB)) * (
        np.arange(_MAX_HAD_SUB) < n_sub[..., None]
    )
    halo_w = rng.gamma(cfg.had_halo_shape, size=shape)
    had_norm = halo_w + sub_w.sum(axis=-1)
    sub_off = rng.normal(0.0, cfg.had_sub_spread, size=(*shape, _MAX_HAD_SUB, 2))
    sub_r = _uniform(rng, cfg.had_sub_radius, (*shape, _MAX_HAD_SUB))
    had_halo_r = _uniform(rng, cfg.had_halo_radius, shape)

    w = np.zeros((*shape, _SLOTS))
    cxy = np.repeat(pos[..., None, :], _SLOTS, axis=-2)
    rad = np.ones((*shape, _SLOTS))
    em_comp = np.zeros((*shape, _SLOTS), dtype=bool)
    em = kind == 0
    had = kind == 1
    # EM shower: slots 0 (core) and 1 (halo) with pi0-slot-0's parameters
    w[..., 0] = np.where(em, core_p[..., 0], 0.0)
    w[..., 1] = np.where(em, 1.0 - core_p[..., 0], 0.0)
    rad[..., 0] = core_r[..., 0]
    rad[..., 1] = halo_r[..., 0]
    em_comp[..., 0:2] = True
    # hadronic: pi0 clusters in slots 0..5 (core, halo pairs), halo in 6, subclusters 7..9
    for k in range(_MAX_PI0):
        share = f_em * pi0_w[..., k]
        c, h = 2 * k, 2 * k + 1
        w[..., c] = np.where(had, share * core_p[..., k], w[..., c])
        w[..., h] = np.where(had, share * (1.0 - core_p[..., k]), w[..., h])
        rad[..., c] = core_r[..., k]
        rad[..., h] = halo_r[..., k]
        off = np.where(had[..., None], pi0_off[..., k, :], 0.0)
        cxy[..., c, :] += off
        cxy[..., h, :] += off
        em_comp[..., c] = em_comp[..., h] = True
    w[..., 6] = np.where(had, (1.0 - f_em) * halo_w / had_norm, 0.0)
    rad[..., 6] = had_halo_r
    for k in range(_MAX_HAD_SUB):
        s = 7 + k
        w[..., s] = np.where(had, (1.0 - f_em) * sub_w[..., k] / had_norm, 0.0)
        rad[..., s] = sub_r[..., k]
        cxy[..., s, :] += np.where(had[..., None], sub_off[..., k, :], 0.0)
    w *= energy[..., None]
    return {
        "kind": kind,
        "energy": energy,
        "pos": pos,
        "w": w,
        "cxy": cxy,
        "rad": rad,
        "em_comp": em_comp,
    }


def _expected(
    d: dict[str, np.ndarray], size: int, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free mean cell energies split into (EM-like, hadronic-like) parts, (N, size, size) each.

    Only components with a non-zero weight are integrated (an EM shower uses 2
    of its 10 slots).
    """
    n = len(d["w"])
    w = d["w"].reshape(n, -1)
    maps_idx, comp_idx = np.nonzero(w)
    cxy = d["cxy"].reshape(n, -1, 2)[maps_idx, comp_idx]
    rad = d["rad"].reshape(n, -1)[maps_idx, comp_idx]
    weight = w[maps_idx, comp_idx]
    is_em = d["em_comp"].reshape(n, -1)[maps_idx, comp_idx]
    out = np.zeros((2, n, size * size))
    for s in range(0, len(weight), chunk):
        sl = slice(s, s + chunk)
        e = cell_integrals(cxy[sl, 0], cxy[sl, 1], rad[sl], size).reshape(-1, size * size)
        e *= weight[sl, None]
        np.add.at(out, (np.where(is_em[sl], 0, 1), maps_idx[sl]), e)
    return out[0].reshape(n, size, size), out[1].reshape(n, size, size)


def _fluctuate(mean: np.ndarray, quantum: float, rng: np.random.Generator) -> np.ndarray:
    """Gamma-distributed deposit with the given mean and variance ``quantum * mean``."""
    if quantum == 0:
        return mean.copy()
    return rng.gamma(mean / quantum, quantum)


def _one_pass(n: int, rng: np.random.Generator, cfg: CaloConfig) -> dict[str, np.ndarray]:
    d = _draw_showers(n, rng, cfg)
    mean_em, mean_had = _expected(d, cfg.size)
    clean = _fluctuate(mean_em, cfg.quantum_em, rng) + _fluctuate(mean_had, cfg.quantum_had, rng)
    energy = clean + rng.normal(0.0, cfg.noise_sigma, size=clean.shape)
    if cfg.threshold is not None:
        energy = np.where(energy >= cfg.threshold, energy, 0.0)
    return {
        "kind": d["kind"],
        "shower_energy": d["energy"],
        "position": d["pos"],
        "expected": mean_em + mean_had,
        "clean": clean,
        "energy": energy,
    }


def generate(n: int, seed: int = 0, config: CaloConfig | None = None) -> CaloMaps:
    """Generate ``n`` maps deterministically from ``(n, seed, config)`` (see the module docstring).

    Maps whose sum is not positive (every cell suppressed, or negative noise
    without a threshold) are redrawn from the same generator.
    """
    cfg = config or CaloConfig()
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ConfigError(f"n (number of maps) must be a non-negative integer, got {n!r}")
    rng = np.random.default_rng(seed)
    parts = _one_pass(int(n), rng, cfg)
    for _ in range(1000):
        bad = np.flatnonzero(parts["energy"].sum(axis=(1, 2)) <= 0)
        if not len(bad):
            break
        again = _one_pass(len(bad), rng, cfg)
        for k, v in again.items():
            parts[k][bad] = v
    else:  # pragma: no cover - needs an absurd config
        raise ConfigError(
            "the generator keeps producing empty maps: lower CaloConfig.threshold or raise energy_range"
        )
    energy = parts["energy"]
    total = energy.sum(axis=(1, 2))
    scale = 1 << cfg.input_bits
    codes = np.clip(np.rint(energy / total[:, None, None] * scale), 0, scale - 1).astype(np.int64)
    x = (codes / scale).astype(np.float32)[:, None]
    return CaloMaps(
        x=x,
        codes=codes,
        energy=energy.astype(np.float32),
        total=total.astype(np.float32),
        clean=parts["clean"].astype(np.float32),
        expected=parts["expected"].astype(np.float32),
        kind=parts["kind"],
        shower_energy=parts["shower_energy"].astype(np.float32),
        position=parts["position"].astype(np.float32),
    )


def second_moment(maps: np.ndarray) -> np.ndarray:
    """Energy-weighted mean squared distance from the centroid, in cell^2, per map.

    ``maps`` is ``(N, H, W)`` (or ``(N, 1, H, W)``) non-negative energies; the
    lateral size of a shower (EM showers are narrower than hadronic ones).
    """
    m = np.asarray(maps, np.float64).reshape(len(maps), *np.shape(maps)[-2:])
    h, w = m.shape[1:]
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    tot = m.sum(axis=(1, 2))
    if np.any(tot <= 0):
        raise ConfigError("second_moment needs maps with a positive sum")
    cx = (m * xx).sum(axis=(1, 2)) / tot
    cy = (m * yy).sum(axis=(1, 2)) / tot
    d2 = (xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2
    return (m * d2).sum(axis=(1, 2)) / tot
