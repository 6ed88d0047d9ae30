"""Which faults to inject: exhaustive, statistical (Leveugle et al.), and BinFI bit search.

**Statistical fault injection.** Leveugle, Calvez, Maistri and Vanhauwaert
("Statistical fault injection: quantified error and confidence", DATE 2009) size
a simple random sample (without replacement) of a population of ``N`` faults so
that an estimated proportion lies within ``margin`` of the truth at the given
confidence::

    n = N / (1 + e**2 (N - 1) / (t**2 p (1 - p)))

with ``t`` the two-sided normal quantile and ``p = 0.5`` the worst case.
:func:`estimate` then reports, from the sampled campaign, the proportion of
*critical* faults (a fault is critical when its SDC rate exceeds ``threshold``,
by default 0: it changes the top-1 class of at least one sample) and the mean
SDC rate, each with a confidence interval that includes the finite-population
correction ``(N - n) / (N - 1)`` (an exhaustive "sample" gives a zero-width
interval).

**BinFI** (Chen et al., "BinFI: an efficient fault injector for safety-critical
machine learning systems", SC 2019) assumes that, within a word, the damage of
a bit flip grows with the bit's significance, and binary-searches each word for
the least significant critical bit instead of flipping every bit. In a
two's-complement word a flip of bit ``b`` moves the code by ``2**b`` (the sign
bit by ``2**(width-1)``), so the *size* of the error is monotonic in ``b``; its
*direction* is not: a bit stored as 0 adds ``2**b``, a 1 subtracts it, and the
sign bit does the opposite (0 -> 1 subtracts ``2**(width-1)``). A larger change
in the opposite direction is not "more" of the same error, so by default
(``split_direction=True``) each word's bits are split into the +delta and -delta
groups and each group is searched separately. ``split_direction=False`` is the
plain BinFI search over all bits of the word.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeml.errors import ConfigError

if TYPE_CHECKING:
    from edgeml.golden import GoldenModel

    from .campaign import CampaignResult
    from .sites import FaultSite

log = logging.getLogger(__name__)


def _check_confidence(confidence: float) -> float:
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")
    return c


def z_value(confidence: float) -> float:
    """Two-sided standard-normal quantile ``t`` for a confidence level (0.95 -> 1.96)."""
    from scipy.stats import norm

    return float(norm.ppf(0.5 + _check_confidence(confidence) / 2.0))


def _check_population(population: int) -> int:
    if isinstance(population, bool) or not isinstance(population, (int, np.integer)):
        raise ConfigError(f"population must be an integer >= 1, got {population!r}")
    if population < 1:
        raise ConfigError(f"population must be an integer >= 1, got {population!r}")
    return int(population)


def leveugle_sample_size(
    population: int, margin: float = 0.01, confidence: float = 0.95, p: float = 0.5
) -> int:
    """Faults to inject for a proportion within ``margin`` at ``confidence`` (Leveugle 2009).

    ``n = N / (1 + e^2 (N-1) / (t^2 p (1-p)))``, rounded up; ``p = 0.5`` is the
    worst case (no prior knowledge of the failure rate).
    """
    n_pop = _check_population(population)
    if not 0.0 < float(margin) < 1.0:
        raise ConfigError(f"margin must be in (0, 1), e.g. 0.01 for +-1 %; got {margin!r}")
    if not 0.0 < float(p) < 1.0:
        raise ConfigError(f"p (expected proportion) must be in (0, 1), got {p!r}")
    t = z_value(confidence)
    n = n_pop / (1.0 + margin**2 * (n_pop - 1) / (t**2 * p * (1.0 - p)))
    # 1e-9: guard against n = 384.0000000001 rounding up to 385
    return int(min(n_pop, max(1, math.ceil(n - 1e-9))))


# ----------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval."""

    value: float
    lo: float
    hi: float
    confidence: float
    method: str

    def covers(self, truth: float) -> bool:
        return self.lo - 1e-12 <= truth <= self.hi + 1e-12

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fpc(n: int, population: int | None) -> float:
    """Finite-population correction of the variance, ``(N - n) / (N - 1)`` (1 without N)."""
    if population is None:
        return 1.0
    n_pop = _check_population(population)
    if n > n_pop:
        raise ConfigError(f"sample size {n} exceeds the population {n_pop}")
    return (n_pop - n) / (n_pop - 1) if n_pop > 1 else 0.0


def _check_counts(k: int, n: int) -> None:
    if n < 1 or not 0 <= k <= n:
        raise ConfigError(f"need 0 <= successes <= trials and trials >= 1, got k={k}, n={n}")


def _wilson(p: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score bounds for proportion ``p`` at (effective) sample size ``n``."""
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at p = 0 (1) the lower (upper) bound is exactly 0 (1); do not let rounding say otherwise
    lo = 0.0 if p <= 0.0 else max(0.0, centre - half)
    hi = 1.0 if p >= 1.0 else min(1.0, centre + half)
    return lo, hi


def wilson_interval(
    k: int, n: int, confidence: float = 0.95, population: int | None = None
) -> Interval:
    """Wilson score interval for a proportion ``k / n``.

    With ``population`` (sampling without replacement from ``N``), the binomial
    variance is scaled by the finite-population correction, i.e. the Wilson
    interval of an effective sample size ``n (N - 1) / (N - n)``.
    """
    _check_counts(int(k), int(n))
    p = k / n
    f = _fpc(n, population)
    if f == 0.0:
        return Interval(p, p, p, confidence, "exact (whole population)")
    lo, hi = _wilson(p, n / f, z_value(confidence))
    name = "wilson" + ("+fpc" if population is not None else "")
    return Interval(p, lo, hi, confidence, name)


def clopper_pearson_interval(
    k: int, n: int, confidence: float = 0.95, population: int | None = None
) -> Interval:
    """Exact interval for a proportion: binomial (Clopper-Pearson), or hypergeometric with ``N``.

    With ``population`` the interval is the set of population counts ``K`` not
    rejected by either one-sided hypergeometric test at ``(1 - confidence) / 2``,
    divided by ``N``: exact for sampling without replacement.
    """
    from scipy.stats import beta, hypergeom

    k, n = int(k), int(n)
    _check_counts(k, n)
    c = _check_confidence(confidence)
    a = (1.0 - c) / 2.0
    p = k / n
    if population is None:
        lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
        hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
        return Interval(p, lo, hi, c, "clopper-pearson")
    n_pop = _check_population(population)
    if n > n_pop:
        raise ConfigError(f"sample size {n} exceeds the population {n_pop}")

    # P(X >= k | K) grows with the population count K and P(X <= k | K) shrinks,
    # so each end of the set of plausible K is one integer bisection.
    def first_true(pred: Callable[[int], bool], lo_k: int, hi_k: int) -> int:
        while lo_k < hi_k:
            mid = (lo_k + hi_k) // 2
            if pred(mid):
                hi_k = mid
            else:
                lo_k = mid + 1
        return lo_k

    k_max = n_pop - (n - k)  # K in [k, k_max]: the sample's successes and failures exist
    k_lo = first_true(lambda kk: float(hypergeom.sf(k - 1, n_pop, kk, n)) > a, k, k_max)
    # the last K with P(X <= k | K) > a: one before the first K where it is <= a
    k_hi = first_true(lambda kk: float(hypergeom.cdf(k, n_pop, kk, n)) <= a, k, k_max + 1) - 1
    return Interval(p, k_lo / n_pop, k_hi / n_pop, c, "hypergeometric-exact")


def effective_n_interval(
    value: float, variance: float, n: int, confidence: float = 0.95, fpc: float = 1.0
) -> Interval:
    """Interval for a rate in [0, 1] with a known estimator variance (survey style).

    The Wilson score interval at the effective sample size
    ``n_eff = value (1 - value) / variance`` (as Korn and Graubard 1998 do for
    survey proportions). For a binary outcome under simple random sampling
    ``n_eff = n / fpc`` and this is :func:`wilson_interval`; for rates or a
    stratified design ``n_eff`` reflects the actual variance. Unlike a symmetric
    normal interval it stays inside [0, 1] and is asymmetric near 0, where fault
    rates live. With zero variance (every sampled rate equal) it falls back to
    the binomial ``n / fpc``.
    """
    c = _check_confidence(confidence)
    if fpc == 0.0:
        return Interval(value, value, value, c, "exact (whole population)")
    v = min(max(float(value), 0.0), 1.0)
    ne = v * (1 - v) / variance if variance > 0 and 0 < v < 1 else n / fpc
    ne = max(ne, 1.0)
    lo, hi = _wilson(v, ne, z_value(c))
    return Interval(float(value), lo, hi, c, "wilson-neff")


def mean_interval(
    values: np.ndarray, confidence: float = 0.95, population: int | None = None
) -> Interval:
    """Interval for the mean of per-fault rates in [0, 1] from a simple random sample.

    The variance of the mean is ``s^2 / n`` times the finite-population
    correction; the interval is :func:`effective_n_interval` (Wilson at the
    effective sample size), which copes better than a t interval with the very
    skewed SDC-rate distribution (most faults 0, a few MSBs near 1).
    """
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size < 1:
        raise ConfigError("mean_interval needs at least one value")
    if v.min() < 0 or v.max() > 1:
        raise ConfigError("mean_interval is for rates in [0, 1]")
    f = _fpc(v.size, population)
    var = float(v.var(ddof=1)) / v.size * f if v.size > 1 else 0.0
    iv = effective_n_interval(float(v.mean()), var, v.size, confidence, f)
    method = iv.method + ("+fpc" if population is not None and f > 0 else "")
    return Interval(iv.value, iv.lo, iv.hi, iv.confidence, method)


# ----------------------------------------------------------------------------- samplers


def exhaustive_sample(sites: Sequence[FaultSite]) -> list[FaultSite]:
    """Every site, in the given order (the identity sampler)."""
    return list(sites)


def sample_indices(population: int, n: int, seed: int) -> np.ndarray:
    """``n`` distinct indices in ``[0, population)``, drawn uniformly with ``seed``, sorted."""
    n_pop = _check_population(population)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= n_pop:
        raise ConfigError(f"sample size must be an integer in [1, {n_pop}], got {n!r}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_pop, size=int(n), replace=False))


def random_sample(sites: Sequence[FaultSite], n: int, seed: int) -> list[FaultSite]:
    """A simple random sample (without replacement) of ``n`` sites, in the sites' order.

    Keeping the original order keeps faults of one layer together, which is what
    the campaign engine batches on.
    """
    return [sites[int(i)] for i in sample_indices(len(sites), n, seed)]


def statistical_sample(
    sites: Sequence[FaultSite],
    *,
    margin: float = 0.01,
    confidence: float = 0.95,
    seed: int = 0,
    p: float = 0.5,
) -> list[FaultSite]:
    """A random sample sized by :func:`leveugle_sample_size` for ``margin`` and ``confidence``."""
    n = leveugle_sample_size(len(sites), margin, confidence, p)
    return random_sample(sites, n, seed)


def stratum_key(site: FaultSite) -> tuple:
    """Default stratum of a site: its layer, parameter, bit position and fault kind."""
    return (site.layer, site.param, site.bit, site.kind, getattr(site, "nbits", 1))


def _strata(sites: Sequence[FaultSite], key: Callable[[FaultSite], Any]) -> dict[Any, list[int]]:
    groups: dict[Any, list[int]] = {}
    for i, s in enumerate(sites):
        groups.setdefault(key(s), []).append(i)
    return groups


def stratified_sample(
    sites: Sequence[FaultSite],
    n: int,
    seed: int,
    *,
    key: Callable[[FaultSite], Any] = stratum_key,
    min_per_stratum: int = 2,
) -> list[FaultSite]:
    """A stratified random sample of about ``n`` sites, in the sites' order.

    Strata default to (layer, parameter, bit position, kind): SDC rates differ by
    orders of magnitude between an LSB and a sign bit, so sampling each stratum
    in proportion to its size (at least ``min_per_stratum``, for a variance)
    gives much tighter and better-calibrated estimates than a simple random
    sample of the same size. Estimate with :func:`estimate_stratified`.
    """
    n_pop = len(sites)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= n_pop:
        raise ConfigError(f"sample size must be an integer in [1, {n_pop}], got {n!r}")
    if min_per_stratum < 1:
        raise ConfigError(f"min_per_stratum must be >= 1, got {min_per_stratum}")
    groups = _strata(sites, key)
    sizes = np.array([len(v) for v in groups.values()], np.int64)
    quota = sizes / n_pop * n
    alloc = np.floor(quota).astype(np.int64)
    # largest remainders get the rounding leftovers, so proportional strata sum to n
    rest = int(n - alloc.sum())
    if rest > 0:
        alloc[np.argsort(-(quota - alloc), kind="stable")[:rest]] += 1
    alloc = np.minimum(np.maximum(alloc, min_per_stratum), sizes)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for (_, idx), m in zip(groups.items(), alloc, strict=True):
        chosen.extend(rng.choice(np.asarray(idx), size=int(m), replace=False).tolist())
    return [sites[i] for i in sorted(chosen)]


# ----------------------------------------------------------------------------- estimates


@dataclass
class Estimate:
    """Population estimates from a sampled campaign, each with a confidence interval.

    ``critical``: fraction of faults whose SDC rate exceeds ``threshold``
    (Wilson + FPC; ``critical_exact`` is the exact hypergeometric interval, simple
    random samples only).
    ``mean_sdc``: mean SDC rate per fault (Student-t + FPC), i.e. the chance that
    a uniformly drawn fault corrupts a uniformly drawn sample's top-1.
    ``per_layer``: the same per layer (each layer's sample vs its population).
    """

    n: int
    population: int
    confidence: float
    threshold: float
    critical: Interval
    mean_sdc: Interval
    critical_exact: Interval | None = None
    per_layer: dict[str, dict[str, Any]] = field(default_factory=dict)
    design: str = "simple random"
    strata: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "population": self.population,
            "confidence": self.confidence,
            "threshold": self.threshold,
            "design": self.design,
            "strata": self.strata,
            "critical": self.critical.to_dict(),
            "critical_exact": None
            if self.critical_exact is None
            else self.critical_exact.to_dict(),
            "mean_sdc": self.mean_sdc.to_dict(),
            "per_layer": self.per_layer,
        }


def _sdc_and_layers(result: Any) -> tuple[np.ndarray, list[str] | None]:
    if hasattr(result, "sdc_rate"):
        sdc = np.asarray(result.sdc_rate, np.float64).reshape(-1)
        try:
            layers = [s.layer for s in result.sites()]
        except (AttributeError, TypeError):
            layers = None
        return sdc, layers
    return np.asarray(result, np.float64).reshape(-1), None


def estimate(
    result: CampaignResult | np.ndarray,
    population: int,
    *,
    confidence: float = 0.95,
    threshold: float = 0.0,
    layer_populations: dict[str, int] | None = None,
) -> Estimate:
    """Estimate the critical-fault proportion and the mean SDC rate from a random sample.

    ``result`` is the campaign run on the sampled sites (or its per-fault SDC
    rates); ``population`` the number of faults the sample was drawn from.
    ``layer_populations`` (layer -> its number of faults) adds per-layer
    estimates; they are only unbiased for a uniform sample over all layers.
    """
    sdc, layers = _sdc_and_layers(result)
    n = int(sdc.size)
    n_pop = _check_population(population)
    if n < 1:
        raise ConfigError("estimate needs a non-empty sampled campaign")
    if n > n_pop:
        raise ConfigError(f"the sample has {n} faults but the population only {n_pop}")
    if not np.all(np.isfinite(sdc)) or sdc.min() < 0 or sdc.max() > 1:
        raise ConfigError("SDC rates must be finite and in [0, 1]")
    crit = sdc > threshold
    k = int(crit.sum())
    out = Estimate(
        n=n,
        population=n_pop,
        confidence=float(confidence),
        threshold=float(threshold),
        critical=wilson_interval(k, n, confidence, n_pop),
        critical_exact=clopper_pearson_interval(k, n, confidence, n_pop),
        mean_sdc=mean_interval(sdc, confidence, n_pop),
    )
    if layer_populations and layers is not None:
        lab = np.asarray(layers)
        for name, npop in layer_populations.items():
            m = lab == name
            if not m.any():
                continue
            ks, ns = int(crit[m].sum()), int(m.sum())
            out.per_layer[name] = {
                "n": ns,
                "population": int(npop),
                "critical": wilson_interval(ks, ns, confidence, int(npop)).to_dict(),
                "mean_sdc": mean_interval(sdc[m], confidence, int(npop)).to_dict(),
            }
    return out


def estimate_stratified(
    result: CampaignResult,
    population: Sequence[FaultSite],
    *,
    key: Callable[[FaultSite], Any] = stratum_key,
    confidence: float = 0.95,
    threshold: float = 0.0,
) -> Estimate:
    """Estimates from a campaign run on a :func:`stratified_sample` of ``population``.

    Each stratum ``h`` (size ``N_h``, sample ``n_h``) contributes its sample mean
    with weight ``W_h = N_h / N``; the variance is
    ``sum W_h^2 (1 - n_h/N_h) s_h^2 / n_h`` and the interval is Wilson at the
    effective sample size (:func:`effective_n_interval`). ``per_layer`` holds
    the same per layer (its strata only).
    """
    sdc, _ = _sdc_and_layers(result)
    sampled = result.sites()
    if len(sampled) != sdc.size:
        raise ConfigError("the campaign result's sites and SDC rates disagree in length")
    if not np.all(np.isfinite(sdc)) or (sdc.size and (sdc.min() < 0 or sdc.max() > 1)):
        raise ConfigError("SDC rates must be finite and in [0, 1]")
    pop_groups = _strata(population, key)
    samp_groups = _strata(sampled, key)
    unknown = [k for k in samp_groups if k not in pop_groups]
    if unknown:
        raise ConfigError(f"sampled sites outside the population's strata, e.g. {unknown[0]}")
    missing = [k for k in pop_groups if k not in samp_groups]
    if missing:
        raise ConfigError(
            f"{len(missing)} population strata have no sampled site (e.g. {missing[0]}); "
            "sample with stratified_sample()"
        )

    def combine(keys: list[Any]) -> tuple[Interval, Interval, int, int]:
        n_tot = sum(len(pop_groups[k]) for k in keys)
        mean = var_m = crit = var_c = 0.0
        n_s = 0
        for k in keys:
            big = len(pop_groups[k])
            v = sdc[samp_groups[k]]
            nh = v.size
            n_s += nh
            w = big / n_tot
            f = (big - nh) / (big - 1) if big > 1 else 0.0
            c = float((v > threshold).mean())
            mean += w * float(v.mean())
            crit += w * c
            if nh > 1:
                var_m += w * w * f * float(v.var(ddof=1)) / nh
                var_c += w * w * f * c * (1 - c) / (nh - 1)
        f_all = (n_tot - n_s) / (n_tot - 1) if n_tot > 1 else 0.0
        ci_c = effective_n_interval(crit, var_c, n_s, confidence, f_all)
        ci_m = effective_n_interval(mean, var_m, n_s, confidence, f_all)
        return (
            Interval(crit, ci_c.lo, ci_c.hi, ci_c.confidence, "stratified " + ci_c.method),
            Interval(mean, ci_m.lo, ci_m.hi, ci_m.confidence, "stratified " + ci_m.method),
            n_s,
            n_tot,
        )

    crit_i, mean_i, n_s, n_tot = combine(list(pop_groups))
    out = Estimate(
        n=n_s,
        population=n_tot,
        confidence=float(confidence),
        threshold=float(threshold),
        critical=crit_i,
        mean_sdc=mean_i,
        design="stratified",
        strata=len(pop_groups),
    )
    layers = dict.fromkeys(population[i[0]].layer for i in pop_groups.values())
    for layer in layers:
        keys = [k for k, idx in pop_groups.items() if population[idx[0]].layer == layer]
        c_l, m_l, n_l, npop_l = combine(keys)
        out.per_layer[layer] = {
            "n": n_l,
            "population": npop_l,
            "critical": c_l.to_dict(),
            "mean_sdc": m_l.to_dict(),
        }
    return out


# ----------------------------------------------------------------------------- BinFI


Evaluate = Callable[[list["FaultSite"]], np.ndarray]


@dataclass
class BinFIResult:
    """Outcome of a BinFI search over a list of weight/bias single-bit flip sites.

    ``critical``: predicted (or, where injected, measured) criticality per site;
    ``injected``: whether that site was actually injected; ``sdc_rate``: measured
    SDC rate where injected (NaN elsewhere).
    """

    sites: list[FaultSite]
    critical: np.ndarray
    injected: np.ndarray
    sdc_rate: np.ndarray
    threshold: float
    split_direction: bool
    rounds: int
    seconds: float

    @property
    def n_injections(self) -> int:
        return int(self.injected.sum())

    def compare(self, truth_sdc: np.ndarray) -> dict[str, Any]:
        """Recall / precision of the critical bits found against an exhaustive campaign."""
        truth = np.asarray(truth_sdc, np.float64).reshape(-1)
        if truth.size != len(self.sites):
            raise ConfigError(f"got {truth.size} true SDC rates for {len(self.sites)} sites")
        t = truth > self.threshold
        tp = int((t & self.critical).sum())
        n_true, n_pred = int(t.sum()), int(self.critical.sum())
        missed = truth[t & ~self.critical]
        return {
            "sites": len(self.sites),
            "injections": self.n_injections,
            "injection_fraction": self.n_injections / len(self.sites),
            "speedup": len(self.sites) / max(self.n_injections, 1),
            "true_critical": n_true,
            "predicted_critical": n_pred,
            "recall": tp / n_true if n_true else 1.0,
            "precision": tp / n_pred if n_pred else 1.0,
            "missed": int(t.sum() - tp),
            "false_alarms": n_pred - tp,
            # SDC mass of the missed critical bits, as a share of all SDC
            "missed_sdc_share": float(missed.sum() / truth.sum()) if truth.sum() > 0 else 0.0,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "sites": len(self.sites),
            "injections": self.n_injections,
            "injection_fraction": self.n_injections / len(self.sites),
            "speedup": len(self.sites) / max(self.n_injections, 1),
            "predicted_critical": int(self.critical.sum()),
            "threshold": self.threshold,
            "split_direction": self.split_direction,
            "rounds": self.rounds,
            "seconds": self.seconds,
        }


def _binfi_groups(
    g: GoldenModel, sites: Sequence[FaultSite], split_direction: bool
) -> list[np.ndarray]:
    """Site indices per search group, ordered by ascending bit significance."""
    from .sites import PERMANENT_PARAMS, stored_words

    words: dict[tuple[str, str, int], list[int]] = {}
    for i, s in enumerate(sites):
        if s.param not in PERMANENT_PARAMS or s.kind != "flip" or getattr(s, "nbits", 1) != 1:
            raise ConfigError(
                f"BinFI searches single-bit flips of stored words (weights, biases, tables); "
                f"got {s} (stuck-at and multi-bit faults have no monotone bit order)"
            )
        words.setdefault((s.layer, s.param, s.index), []).append(i)
    groups: list[np.ndarray] = []
    for (layer, param, index), idx in words.items():
        codes, ftype = stored_words(g, layer, param)  # unknown layer / no bias: ConfigError
        flat = np.asarray(codes, np.int64).reshape(-1)
        if not 0 <= index < flat.size:
            raise ConfigError(f"index {index} out of range for {layer}/{param} ({flat.size})")
        word = int(flat[index]) & ((1 << ftype.width) - 1)
        idx_arr = np.asarray(idx, np.int64)
        bits = np.array([sites[i].bit for i in idx], np.int64)
        if bits.size and (bits.max() >= ftype.width):
            raise ConfigError(
                f"bit {bits.max()} outside the {ftype.width}-bit {layer}/{param} word"
            )
        order = np.argsort(bits, kind="stable")
        idx_arr, bits = idx_arr[order], bits[order]
        if not split_direction:
            groups.append(idx_arr)
            continue
        stored = (word >> bits) & 1
        is_sign = ftype.signed & (bits == ftype.width - 1)
        up = (stored == 0) ^ is_sign  # True: the flip increases the value
        for d in (True, False):
            m = up == d
            if m.any():
                groups.append(idx_arr[m])
    return groups


def binfi_search(
    g: GoldenModel,
    x_codes: np.ndarray | None,
    labels: np.ndarray | Sequence[int] | None,
    sites: Sequence[FaultSite] | None = None,
    *,
    evaluate: Evaluate | None = None,
    threshold: float = 0.0,
    split_direction: bool = True,
    progress: bool = False,
) -> BinFIResult:
    """Find the critical bits of every word by binary search over bit significance.

    For each search group (a word's bits, or one direction of them) sorted by
    significance, the search looks for the least significant critical bit and
    predicts every more significant bit of the group critical and every less
    significant one benign. All groups advance together: each round injects the
    current midpoints of every group as one campaign. ``evaluate`` (sites ->
    SDC rates) replaces the default :func:`run_param_campaign` on ``x_codes`` /
    ``labels``, e.g. to replay a stored exhaustive campaign.
    """
    from .sites import enumerate_param_sites

    t0 = time.perf_counter()
    site_list = list(sites) if sites is not None else enumerate_param_sites(g)
    if not site_list:
        raise ConfigError("BinFI needs at least one fault site")
    if evaluate is None:
        if x_codes is None:
            raise ConfigError("binfi_search needs x_codes (or an evaluate function)")
        from .campaign import run_campaign

        def evaluate(batch: list[FaultSite]) -> np.ndarray:
            return run_campaign(g, x_codes, labels, batch, progress=False).sdc_rate

    groups = _binfi_groups(g, site_list, split_direction)
    n = len(site_list)
    sdc = np.full(n, np.nan)
    injected = np.zeros(n, bool)
    lo = np.zeros(len(groups), np.int64)
    hi = np.array([gr.size for gr in groups], np.int64)  # answer in [lo, hi]: first critical
    rounds = 0
    while True:
        active = np.flatnonzero(lo < hi)
        if not active.size:
            break
        mid = (lo[active] + hi[active]) // 2
        want = np.array([groups[a][m] for a, m in zip(active, mid, strict=True)], np.int64)
        new = np.unique(want[~injected[want]])
        if new.size:
            res = np.asarray(evaluate([site_list[int(i)] for i in new]), np.float64)
            if res.shape != (new.size,):
                raise ConfigError(f"evaluate returned {res.shape} SDC rates for {new.size} sites")
            sdc[new] = res
            injected[new] = True
        crit = sdc[want] > threshold
        hi[active] = np.where(crit, mid, hi[active])
        lo[active] = np.where(crit, lo[active], mid + 1)
        rounds += 1
        if progress:
            log.info("BinFI round %d: %d groups open, %d injections", rounds, active.size, new.size)
    critical = np.zeros(n, bool)
    for gi, gr in enumerate(groups):
        critical[gr[lo[gi] :]] = True
    # Injected sites are known exactly (consistent with the search by construction).
    critical[injected] = sdc[injected] > threshold
    return BinFIResult(
        sites=site_list,
        critical=critical,
        injected=injected,
        sdc_rate=sdc,
        threshold=float(threshold),
        split_direction=bool(split_direction),
        rounds=rounds,
        seconds=time.perf_counter() - t0,
    )
