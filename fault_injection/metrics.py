"""What a campaign means: aggregates, vulnerability factors, ranking quality, protection cost.

All functions take plain arrays (per-site SDC rates, orderings) so they work on
any campaign, sampled or exhaustive. Definitions:

* **SDC rate** of a fault: fraction of the campaign's samples whose top-1 class
  differs from the fault-free golden model's (see :mod:`.campaign`).
* **Critical** fault: SDC rate > 0 (it corrupts at least one sample).
* **AVF** (architectural-vulnerability-like factor) of a set of bits: the mean
  SDC rate over its single-bit faults, i.e. the probability that one upset in a
  uniformly chosen bit of the set, during one uniformly chosen inference,
  corrupts the top-1 class. This is the classic AVF (fraction of faults that
  become visible errors) with "time in flight" replaced by "inputs". The
  unweighted companion ``critical_fraction`` is the fraction of bits whose flip
  ever corrupts a sample.
* **Protection curve** of an ordering: after protecting the first ``k`` bits
  (their faults are masked), the residual SDC is the sum of the SDC rates of
  the unprotected bits divided by the sum over all bits; plotted against
  ``k / N``. Its area (trapezoid over [0, 1]) is lower for better rankings;
  the oracle (bits sorted by measured SDC rate) is the lower bound and a
  random order gives about 0.5.
* **Protection cost**: TMR keeps two extra copies of each protected bit plus a
  3-input majority voter; SECDED ECC protects whole words (a Hamming code with
  ``r`` check bits, ``2**r >= k + r + 1``, plus one overall parity bit) and
  then masks every single-bit fault of a protected word. Extra storage bits
  equal extra flip-flops when parameters are held in registers (as in a fully
  unrolled design); in block RAM they are memory bits instead.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeml.errors import ConfigError

from .sites import PERMANENT_PARAMS

if TYPE_CHECKING:
    from edgeml.golden import GoldenModel

    from .campaign import CampaignResult
    from .sites import FaultSite

log = logging.getLogger(__name__)

PROTECTION_SCHEMES: tuple[str, ...] = ("tmr", "secded")


def _sdc(sdc_rate: Any, n: int | None = None) -> np.ndarray:
    s = np.asarray(sdc_rate, np.float64).reshape(-1)
    if n is not None and s.size != n:
        raise ConfigError(f"got {s.size} SDC rates for {n} sites")
    if s.size and (not np.all(np.isfinite(s)) or s.min() < 0):
        raise ConfigError("SDC rates must be finite and >= 0")
    return s


def _finite_or_none(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def _row_label(s: FaultSite) -> str:
    return f"{s.layer}/{s.param}"


# ----------------------------------------------------------------------------- aggregates


def vulnerability_factor(sdc_rate: np.ndarray, threshold: float = 0.0) -> dict[str, float]:
    """AVF (mean SDC rate) and critical fraction (SDC rate > ``threshold``) of a set of bits."""
    s = _sdc(sdc_rate)
    if not s.size:
        return {"bits": 0, "avf": math.nan, "critical_fraction": math.nan}
    return {
        "bits": int(s.size),
        "avf": float(s.mean()),
        "critical_fraction": float((s > threshold).mean()),
    }


def per_layer(sites: Sequence[FaultSite], sdc_rate: np.ndarray) -> dict[str, dict[str, float]]:
    """Per ``layer/param`` (network order of first appearance): bits, AVF, critical fraction,
    and the layer's share of the total SDC."""
    s = _sdc(sdc_rate, len(sites))
    labels = np.array([_row_label(x) for x in sites])
    total = float(s.sum())
    out: dict[str, dict[str, float]] = {}
    for lab in dict.fromkeys(labels.tolist()):
        m = labels == lab
        d = vulnerability_factor(s[m])
        d["sdc_share"] = float(s[m].sum() / total) if total > 0 else 0.0
        out[lab] = d
    return out


def per_bit(sites: Sequence[FaultSite], sdc_rate: np.ndarray) -> dict[str, dict[int, dict]]:
    """Per parameter kind (``weight``/``bias``/...) and bit position: count, mean SDC, critical."""
    s = _sdc(sdc_rate, len(sites))
    params = np.array([x.param for x in sites])
    bits = np.array([x.bit for x in sites], np.int64)
    out: dict[str, dict[int, dict]] = {}
    for p in dict.fromkeys(params.tolist()):
        out[p] = {}
        for b in np.unique(bits[params == p]):
            m = (params == p) & (bits == b)
            out[p][int(b)] = {
                "count": int(m.sum()),
                "mean_sdc": float(s[m].mean()),
                "critical_fraction": float((s[m] > 0).mean()),
            }
    return out


def layer_bit_matrix(sites: Sequence[FaultSite], sdc_rate: np.ndarray) -> dict[str, Any]:
    """Mean SDC rate per (``layer/param`` row, bit position column); NaN (None) where absent.

    Returns ``{"rows", "bits", "mean", "count"}`` with nested lists (JSON-ready).
    """
    s = _sdc(sdc_rate, len(sites))
    labels = [_row_label(x) for x in sites]
    rows = list(dict.fromkeys(labels))
    bits = np.array([x.bit for x in sites], np.int64)
    n_bits = int(bits.max()) + 1 if bits.size else 0
    r = np.array([rows.index(lab) for lab in labels], np.int64) if labels else np.zeros(0, int)
    flat = r * n_bits + bits
    sums = np.bincount(flat, weights=s, minlength=len(rows) * n_bits)
    counts = np.bincount(flat, minlength=len(rows) * n_bits)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    mean = mean.reshape(len(rows), n_bits)
    return {
        "rows": rows,
        "bits": list(range(n_bits)),
        "mean": [[None if np.isnan(v) else float(v) for v in row] for row in mean],
        "count": counts.reshape(len(rows), n_bits).tolist(),
    }


# ----------------------------------------------------------------------------- rankings


def spearman(score: np.ndarray, sdc_rate: np.ndarray) -> float:
    """Spearman rank correlation of a ranking's per-site score with the measured SDC rate
    (ties get average ranks; NaN if either is constant)."""
    from scipy.stats import spearmanr

    a = np.asarray(score, np.float64).reshape(-1)
    b = _sdc(sdc_rate, a.size)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    return float(spearmanr(a, b).statistic)


def _check_order(order: np.ndarray, n: int) -> np.ndarray:
    o = np.asarray(order, np.int64).reshape(-1)
    if o.size != n or (n and not np.array_equal(np.sort(o), np.arange(n))):
        raise ConfigError(f"an ordering must be a permutation of 0..{n - 1}; got {o.size} entries")
    return o


def protection_curve(
    order: np.ndarray, sdc_rate: np.ndarray, n_points: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(fraction of bits protected, residual SDC share) after protecting ``order[:k]``.

    Exact at every ``k = 0..N`` (``n_points=None``) or at ``n_points`` evenly
    spaced fractions (for plots and JSON).
    """
    s = _sdc(sdc_rate)
    o = _check_order(order, s.size)
    total = float(s.sum())
    n = s.size
    cum = np.concatenate([[0.0], np.cumsum(s[o])])
    resid = 1.0 - cum / total if total > 0 else np.zeros(n + 1)
    resid = np.clip(resid, 0.0, 1.0)
    frac = np.arange(n + 1) / max(n, 1)
    if n_points is None:
        return frac, resid
    if n_points < 2:
        raise ConfigError(f"n_points must be >= 2, got {n_points}")
    f = np.linspace(0.0, 1.0, n_points)
    return f, np.interp(f, frac, resid)


def curve_auc(fraction: np.ndarray, residual: np.ndarray) -> float:
    """Area under a protection curve (trapezoid); lower = better ranking."""
    f = np.asarray(fraction, np.float64)
    r = np.asarray(residual, np.float64)
    return float(np.sum((f[1:] - f[:-1]) * (r[1:] + r[:-1]) / 2.0))


def sdc_removed(order: np.ndarray, sdc_rate: np.ndarray, fraction: float) -> float:
    """Share of the total SDC masked by protecting the first ``ceil(fraction * N)`` bits."""
    s = _sdc(sdc_rate)
    o = _check_order(order, s.size)
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"fraction must be in [0, 1], got {fraction!r}")
    total = float(s.sum())
    if total <= 0:
        return 0.0
    k = math.ceil(fraction * s.size - 1e-9)
    return float(s[o[:k]].sum() / total)


# ----------------------------------------------------------------------------- protection


def secded_check_bits(width: int) -> int:
    """Check bits of a SECDED (extended Hamming) code for ``width`` data bits: ``r + 1``."""
    if width < 1:
        raise ConfigError(f"word width must be >= 1, got {width}")
    r = 1
    while (1 << r) < width + r + 1:
        r += 1
    return r + 1


def site_words(g: GoldenModel, sites: Sequence[FaultSite]) -> tuple[np.ndarray, np.ndarray]:
    """(word id, word width) per stored-bit site; one word per weight, bias or table entry."""
    from .sites import lookup_ops, table_storage

    widths = {}
    for op in g.param_ops:
        if not op.structural:
            widths[(op.name, "weight")] = op.weight_type.width
        if op.bias is not None and op.bias_type is not None:
            widths[(op.name, "bias")] = op.bias_type.width
    for lut in lookup_ops(g):
        widths[(lut.name, "table")] = table_storage(g, lut)[1].width
    ids: dict[tuple[str, str, int], int] = {}
    wid = np.empty(len(sites), np.int64)
    wwidth = np.empty(len(sites), np.int64)
    for i, s in enumerate(sites):
        key = (s.layer, s.param)
        if key not in widths:
            raise ConfigError(f"site {s} is not a stored (weight/bias/table) bit of the design")
        wid[i] = ids.setdefault((s.layer, s.param, s.index), len(ids))
        wwidth[i] = widths[key]
    return wid, wwidth


def protection_cost(
    word_id: np.ndarray,
    word_width: np.ndarray,
    order: np.ndarray,
    sdc_rate: np.ndarray,
    fraction: float,
    scheme: str = "tmr",
) -> dict[str, Any]:
    """Cost and effect of protecting the first ``ceil(fraction * N)`` bits of ``order``.

    ``tmr``: the chosen bits get 2 extra copies and a majority voter each.
    ``secded``: every word holding a chosen bit gets SECDED check bits, which
    masks every single-bit fault of that word (so more bits are protected than
    chosen). ``total_bits`` is the unprotected storage (sum of word widths).
    """
    if scheme not in PROTECTION_SCHEMES:
        raise ConfigError(f"scheme must be one of {PROTECTION_SCHEMES}, got {scheme!r}")
    s = _sdc(sdc_rate)
    o = _check_order(order, s.size)
    wid = np.asarray(word_id, np.int64).reshape(-1)
    ww = np.asarray(word_width, np.int64).reshape(-1)
    if wid.size != s.size or ww.size != s.size:
        raise ConfigError("word_id, word_width and sdc_rate need one entry per site")
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"fraction must be in [0, 1], got {fraction!r}")
    k = math.ceil(fraction * s.size - 1e-9)
    chosen = np.zeros(s.size, bool)
    chosen[o[:k]] = True
    _, first = np.unique(wid, return_index=True)
    total_bits = int(ww[first].sum())
    total_sdc = float(s.sum())
    if scheme == "tmr":
        protected = chosen
        extra = 2 * k
        logic = {"voters": k}
    else:
        words = np.unique(wid[chosen])
        protected = np.isin(wid, words)
        widths = np.array([ww[wid == w][0] for w in words], np.int64)
        extra = int(sum(secded_check_bits(int(w)) for w in widths))
        logic = {"ecc_words": int(words.size)}
    residual = float(s[~protected].sum() / total_sdc) if total_sdc > 0 else 0.0
    return {
        "scheme": scheme,
        "fraction": float(fraction),
        "chosen_bits": int(k),
        "protected_bits": int(protected.sum()),
        "extra_bits": int(extra),
        "extra_flip_flops": int(extra),
        "overhead": extra / total_bits if total_bits else 0.0,
        "total_bits": total_bits,
        "residual_sdc": residual,
        "sdc_removed": 1.0 - residual if total_sdc > 0 else 0.0,
        **logic,
    }


# ----------------------------------------------------------------------------- BER curves


def ber_curve(trials: Mapping[float, Any] | Any, confidence: float = 0.95) -> dict[str, Any]:
    """Accuracy against bit-error rate with confidence bands from per-trial accuracies.

    ``trials`` maps each BER to the accuracies of its independent trials (or is
    a :class:`~edgeml.fault_injection.ber.BerSweepResult`). Per
    BER: the mean, a Student-t interval of the mean (the band), and the 5th/95th
    percentiles of single trials (the spread one deployment can see).
    """
    from scipy.stats import t as student_t

    if hasattr(trials, "bers") and hasattr(trials, "accuracy"):  # a BerSweepResult
        acc = np.asarray(trials.accuracy, np.float64)
        trials = {float(b): acc[i] for i, b in enumerate(np.asarray(trials.bers).reshape(-1))}
    if not trials:
        raise ConfigError("ber_curve needs at least one BER point")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
    bers = sorted(float(b) for b in trials)
    out: dict[str, list] = {k: [] for k in ("ber", "n", "mean", "lo", "hi", "p05", "p95", "std")}
    for b in bers:
        key = next(k for k in trials if float(k) == b)
        a = np.asarray(trials[key], np.float64).reshape(-1)
        if not a.size or not np.all(np.isfinite(a)):
            raise ConfigError(f"BER {b}: need finite per-trial accuracies, got {a.size} values")
        m = float(a.mean())
        if a.size > 1:
            sd = float(a.std(ddof=1))
            half = float(student_t.ppf(0.5 + confidence / 2, a.size - 1)) * sd / math.sqrt(a.size)
        else:
            sd, half = 0.0, math.nan
        out["ber"].append(b)
        out["n"].append(int(a.size))
        out["mean"].append(m)
        out["std"].append(sd)
        out["lo"].append(m - half)
        out["hi"].append(m + half)
        out["p05"].append(float(np.percentile(a, 5)))
        out["p95"].append(float(np.percentile(a, 95)))
    return {"confidence": confidence, **out}


# ----------------------------------------------------------------------------- analysis


def _position(op: Any, param: str, index: int) -> str:
    if param == "table":  # a lookup table's entry, named by the input code that reads it
        return f"[{int(index)}] (input code {int(op.lo) + int(index)})"
    shape = op.weight.shape if param == "weight" else op.bias.shape
    return "[" + ",".join(str(int(v)) for v in np.unravel_index(index, shape)) + "]"


def top_sites(
    g: GoldenModel,
    sites: Sequence[FaultSite],
    sdc_rate: np.ndarray,
    acc_drop: np.ndarray | None = None,
    max_dev: np.ndarray | None = None,
    *,
    n: int = 20,
    ranks: Mapping[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """The ``n`` most damaging bits (by SDC rate, then accuracy drop) as table rows.

    ``ranks`` (ranking name -> position of each site in that ranking, 0 = first)
    adds each ranking's position for the row, to show where a ranking put it.
    """
    from .hessian import FloatMirror, site_deltas

    s = _sdc(sdc_rate, len(sites))
    acc = np.zeros(s.size) if acc_drop is None else np.nan_to_num(np.asarray(acc_drop, float))
    order = np.lexsort((np.arange(s.size), -acc, -s))[: max(0, int(n))]
    from .sites import lookup_ops

    ops: dict[str, Any] = {op.name: op for op in [*g.param_ops, *lookup_ops(g)]}
    mirror = FloatMirror(g)
    chosen = [sites[int(i)] for i in order]
    deltas = site_deltas(mirror, chosen) if chosen else np.zeros(0)
    rows = []
    for j, i in enumerate(order):
        st = sites[int(i)]
        op = ops[st.layer]
        code = int(np.asarray(getattr(op, st.param)).reshape(-1)[st.index])
        lsb = mirror.lsb[mirror.param_index([st])[0]]
        row = {
            "layer": st.layer,
            "param": st.param,
            "index": int(st.index),
            "position": _position(op, st.param, st.index),
            "bit": int(st.bit),
            "code": code,
            "faulty_code": round(float(code + deltas[j] / lsb)),
            "sdc_rate": float(s[i]),
            "acc_drop": None
            if acc_drop is None or not np.isfinite(np.asarray(acc_drop)[i])
            else float(np.asarray(acc_drop)[i]),
            "max_dev": None if max_dev is None else int(np.asarray(max_dev)[i]),
        }
        if ranks:
            row["rank"] = {k: int(v[i]) for k, v in ranks.items()}
        rows.append(row)
    return rows


def _param_flip_rows(result: Any) -> tuple[list[FaultSite], np.ndarray]:
    sites = result.sites()
    keep = np.array(
        [
            s.param in PERMANENT_PARAMS and s.kind == "flip" and getattr(s, "nbits", 1) == 1
            for s in sites
        ],
        bool,
    )
    return [s for s, k in zip(sites, keep, strict=True) if k], keep


def analyse_campaign(
    g: GoldenModel,
    x_codes: np.ndarray,
    labels: np.ndarray | Sequence[int] | None,
    result: CampaignResult,
    *,
    seed: int = 0,
    top_frac: float = 0.05,
    k: int = 8,
    method: str = "lanczos",
    rule: str = "delta",
    n_points: int = 201,
    top_n: int = 20,
    trace_probes: int = 50,
    batch_size: int = 2048,
) -> dict[str, Any]:
    """Everything the report and the README quote about one (exhaustive) campaign, JSON-ready.

    Covers the campaign's single-bit weight/bias flips: per-layer and per-bit
    aggregates, AVF, the layer x bit heatmap, and for each ranking (Hessian,
    gradient, Taylor, random, oracle) its Spearman correlation with the measured
    SDC rate, the area under its protection curve, the share of SDC removed by
    protecting its top ``top_frac`` of bits, and the TMR / SECDED cost of doing
    so. ``x_codes`` / ``labels`` are the campaign's samples (the Hessian's loss
    uses them; ``labels=None`` uses the golden top-1).
    """
    from .hessian import (
        FloatMirror,
        LossHessian,
        gradient_ranking,
        hessian_ranking,
        oracle_ranking,
        random_ranking,
        taylor_ranking,
    )

    if not 0.0 < top_frac <= 1.0:
        raise ConfigError(f"top_frac must be in (0, 1], got {top_frac!r}")
    t0 = time.perf_counter()
    sites, keep = _param_flip_rows(result)
    if not sites:
        raise ConfigError(
            "the campaign has no single-bit weight/bias flips; analyse_campaign ranks those"
        )
    sdc = _sdc(np.asarray(result.sdc_rate)[keep])
    acc = np.asarray(result.acc_drop, np.float64)[keep]
    dev = np.asarray(result.max_dev)[keep]

    timings: dict[str, float] = {}
    t = time.perf_counter()
    lh = LossHessian(FloatMirror(g), x_codes, labels, batch_size=batch_size)
    k_eff = min(k, lh.dim)
    rankings = {
        "hessian": hessian_ranking(
            g,
            x_codes,
            labels,
            sites,
            k=k_eff,
            method=method,
            rule=rule,
            seed=seed,
            loss_hessian=lh,
        )
    }
    timings["hessian"] = time.perf_counter() - t
    t = time.perf_counter()
    trace, trace_se = lh.trace(trace_probes, seed=seed)
    timings["trace"] = time.perf_counter() - t
    t = time.perf_counter()
    rankings["gradient"] = gradient_ranking(g, x_codes, labels, sites, rule=rule, loss_hessian=lh)
    rankings["taylor"] = taylor_ranking(g, x_codes, labels, sites, rule=rule, loss_hessian=lh)
    timings["gradient_taylor"] = time.perf_counter() - t
    rankings["random"] = random_ranking(sites, seed=seed)
    rankings["oracle"] = oracle_ranking(sites, sdc)

    wid, ww = site_words(g, sites)
    summary: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    ranks: dict[str, np.ndarray] = {}
    for name, rk in rankings.items():
        frac_full, resid_full = protection_curve(rk.order, sdc)
        f, r = protection_curve(rk.order, sdc, n_points)
        pos = np.empty(len(sites), np.int64)
        pos[rk.order] = np.arange(len(sites))
        ranks[name] = pos
        summary[name] = {
            "spearman": _finite_or_none(spearman(rk.score, sdc)),
            "auc": curve_auc(frac_full, resid_full),
            "top_share": sdc_removed(rk.order, sdc, top_frac),
            "tmr": protection_cost(wid, ww, rk.order, sdc, top_frac, "tmr"),
            "secded": protection_cost(wid, ww, rk.order, sdc, top_frac, "secded"),
            "meta": {kk: v for kk, v in rk.meta.items() if kk != "eigenvalues"},
        }
        curves[name] = {"fraction": f.tolist(), "residual": r.tolist()}

    total = vulnerability_factor(sdc)
    out = {
        "n_sites": len(sites),
        "n_samples": int(getattr(result, "n_samples", np.asarray(x_codes).shape[0])),
        # None (not NaN) without labels, so the dict stays strict JSON
        "baseline_accuracy": _finite_or_none(getattr(result, "baseline_accuracy", None)),
        "top_frac": float(top_frac),
        "rule": rule,
        "avf": {**total, "per_layer": per_layer(sites, sdc)},
        "per_bit": {p: {str(b): v for b, v in d.items()} for p, d in per_bit(sites, sdc).items()},
        "heatmap": layer_bit_matrix(sites, sdc),
        "rankings": summary,
        "curves": curves,
        "top": top_sites(g, sites, sdc, acc, dev, n=top_n, ranks=ranks),
        "hessian": {
            "k": k_eff,
            "method": method,
            "eigenvalues": rankings["hessian"].meta["eigenvalues"],
            "trace": trace,
            "trace_se": trace_se,
            "loss": lh.loss(),
            "hvps": lh.n_hvp,
            "parameters": lh.dim,
        },
        "seconds": {**timings, "total": time.perf_counter() - t0},
    }
    log.info(
        "fault analysis: hessian spearman %.3f, top %.0f%% removes %.1f%% of SDC (oracle %.1f%%)",
        summary["hessian"]["spearman"] or math.nan,
        100 * top_frac,
        100 * summary["hessian"]["top_share"],
        100 * summary["oracle"]["top_share"],
    )
    return out
