"""Random bit-error-rate (BER) faults: many sites at once, and accuracy-vs-BER sweeps.

Fault model: in one *trial*, every stored bit of the selected parameter
memories (weights and biases by default) flips independently with
probability ``ber``. A trial is a :class:`~.sites.MultiFault` (the sorted
tuple of the single-bit flip sites it drew; possibly empty). Bits are visited
in :func:`~.sites.enumerate_sites` order (layer, parameter, flat index, bit
from LSB), and trial ``t`` of seed ``s`` draws one uniform number per bit from
``numpy.random.default_rng([s, t])``, flipping the bits whose number is below
``ber``. So the draw is reproducible from ``(seed, t)`` alone, and the BERs of
a sweep use *common random numbers*: in trial ``t`` the bits flipped at a lower
BER are a subset of those flipped at a higher one. Curves then vary smoothly
with BER and differences between BERs are not hidden by sampling noise; the
spread over trials is the uncertainty, reported per BER.

:func:`run_multi_faults` scores a list of MultiFaults: empty ones are
fault-free, single-site ones go through the fast single-fault engine, the
rest are re-run densely from the first faulted layer on the cached fault-free
trace. :func:`run_multi_faults_naive` re-runs the whole faulty model per
trial; the two agree exactly.
"""

from __future__ import annotations

import json
import math
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from edgeml.errors import ConfigError, CorruptFileError
from edgeml.golden import Conv, Dense, GoldenModel, Lookup

from .engine import Reference, SiteTable, _one_blas_thread, check_inputs, check_sdc
from .inject import fault_values, faulty_model, run_with_faults
from .sites import (
    PERMANENT_PARAMS,
    STORED_PARAMS,
    FaultSite,
    MultiFault,
    site_tensor,
    table_storage,
)

BER_FORMAT = "edgeml.ber_sweep"
BER_VERSION = 1
#: Uniform numbers drawn per block while sampling a trial (bounds memory on big models).
_DRAW_BLOCK = 1 << 20


# ----------------------------------------------------------------------------- sampling


def _bit_table(g: GoldenModel, params: tuple[str, ...]) -> list[tuple[str, str, int, int]]:
    """(layer, param, words, width) of each stored memory (weights, biases, ROM tables), in
    graph order; structural weights (wiring) are not memories."""
    rows = []
    for op in g.ops:
        if isinstance(op, Lookup):
            if "table" in params:
                codes, t = table_storage(g, op)
                rows.append((op.name, "table", int(codes.size), t.width))
            continue
        if not isinstance(op, Dense):
            continue
        for param in STORED_PARAMS:
            if param not in params:
                continue
            if param == "weight" and not op.structural:
                rows.append((op.name, param, int(op.weight.size), op.weight_type.width))
            elif param == "bias" and op.bias is not None and op.bias_type is not None:
                rows.append((op.name, param, int(op.bias.size), op.bias_type.width))
    return rows


def _check_ber(ber: Any) -> float:
    if isinstance(ber, bool) or not isinstance(ber, (int, float, np.integer, np.floating)):
        raise ConfigError(f"ber must be a number in [0, 1], got {ber!r}")
    b = float(ber)
    if not 0.0 <= b <= 1.0 or math.isnan(b):
        raise ConfigError(f"ber must be in [0, 1] (a per-bit flip probability), got {ber!r}")
    return b


def _check_params(params: Sequence[str]) -> tuple[str, ...]:
    params = tuple(params)
    bad = [p for p in params if p not in PERMANENT_PARAMS]
    if bad or not params:
        raise ConfigError(
            f"BER params must be a non-empty selection from {PERMANENT_PARAMS} (stored bits), "
            f"got {list(params)}"
        )
    return params


def _check_count(name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _trial_uniforms(seed: int, trial: int, n_bits: int) -> np.ndarray:
    rng = np.random.default_rng([int(seed), int(trial)])
    return np.concatenate(
        [rng.random(min(_DRAW_BLOCK, n_bits - a)) for a in range(0, n_bits, _DRAW_BLOCK)]
        or [np.zeros(0)]
    )


def _trials(
    g: GoldenModel, bers: Sequence[float], n_trials: int, seed: int, params: tuple[str, ...]
) -> list[list[MultiFault]]:
    """Trials for each BER (common random numbers across BERs)."""
    table = _bit_table(g, params)
    sizes = np.array([words * width for _, _, words, width in table], np.int64)
    starts = np.r_[0, np.cumsum(sizes)]
    n_bits = int(starts[-1])
    out: list[list[MultiFault]] = [[] for _ in bers]
    for t in range(n_trials):
        u = _trial_uniforms(seed, t, n_bits)
        for bi, ber in enumerate(bers):
            hit = np.flatnonzero(u < ber)
            mem = np.searchsorted(starts, hit, side="right") - 1
            sites = []
            for m, h in zip(mem.tolist(), hit.tolist(), strict=True):
                layer, param, _, width = table[m]
                word, bit = divmod(h - int(starts[m]), width)
                sites.append(FaultSite(layer, param, word, bit))  # type: ignore[arg-type]
            out[bi].append(MultiFault(tuple(sites)))
    return out


def ber_trials(
    g: GoldenModel,
    ber: float,
    n_trials: int,
    seed: int,
    params: Sequence[str] = STORED_PARAMS,
) -> list[MultiFault]:
    """``n_trials`` random multi-bit faults: each stored bit flips with probability ``ber``.

    Trial ``t`` depends only on ``(seed, t)`` (see the module doc), so a trial
    list is replayed by calling this again with the same arguments.
    """
    b = _check_ber(ber)
    n = _check_count("n_trials", n_trials)
    return _trials(g, [b], n, int(seed), _check_params(params))[0]


# ----------------------------------------------------------------------------- scoring


@dataclass
class MultiFaultResult:
    """Per-trial scores of a list of multi-faults (same meaning as for single sites)."""

    n_sites: np.ndarray  # (T,) sites in each trial
    accuracy: np.ndarray  # (T,) faulty accuracy (NaN without labels)
    acc_drop: np.ndarray  # (T,)
    sdc_rate: np.ndarray  # (T,)
    max_dev: np.ndarray  # (T,)
    baseline_accuracy: float
    n_samples: int
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.n_sites.size)


def _stored(mf: MultiFault) -> list[FaultSite]:
    return [s for s in mf.sites if s.param in PERMANENT_PARAMS]


def _start_op(g: GoldenModel, mf: MultiFault) -> int:
    """Index of the first op whose output a multi-fault can change."""
    pos = {op.name: k for k, op in enumerate(g.ops)}
    producer = {op.output: k for k, op in enumerate(g.ops)}
    start = len(g.ops)
    for s in mf.sites:
        if s.param in PERMANENT_PARAMS:
            start = min(start, pos[s.layer])
        else:
            start = min(start, producer.get(site_tensor(g, s.layer, s.param), -1) + 1)
    return start


def _run_dense_from(g: GoldenModel, env: dict[str, np.ndarray], mf: MultiFault) -> np.ndarray:
    """Faulty output of a multi-fault, recomputing only the ops it can reach."""
    fm = faulty_model(g, _stored(mf))
    transient: dict[str, list[FaultSite]] = {}
    for s in mf.sites:
        if s.param not in PERMANENT_PARAMS:
            transient.setdefault(site_tensor(g, s.layer, s.param), []).append(s)

    def hit(name: str, value: np.ndarray) -> np.ndarray:
        if name not in transient:
            return value
        t = g.tensors[name].type
        flat = np.array(value, dtype=np.int64, copy=True).reshape(value.shape[0], -1)
        for s in transient[name]:
            flat[:, s.index] = fault_values(
                flat[:, s.index], t.width, t.signed, s.bit, s.kind, s.nbits
            )
        return flat.reshape(value.shape)

    start = _start_op(g, mf)
    local = dict(env)
    producer = {op.output: k for k, op in enumerate(g.ops)}
    for name in transient:
        if producer.get(name, -1) < start:
            local[name] = hit(name, local[name])
    for op in fm.ops[start:]:
        ins = [local[i] for i in op.inputs]
        local[op.output] = hit(op.output, _dense_blas(op, ins[0]) if _blas_ok(op) else op(*ins))
    return local[fm.output_name]


def _blas_ok(op: Any) -> bool:
    return isinstance(op, Dense) and not isinstance(op, Conv)


def _dense_blas(op: Dense, x: np.ndarray) -> np.ndarray:
    """``op(x)`` with a float64 BLAS matmul where every partial sum is an exact integer
    (below 2**52); numpy's int64 matmul has no BLAS and is ~10x slower."""
    w = np.asarray(op.effective_weight(), np.int64)
    bound = float(np.abs(x).max(initial=0)) * float(np.abs(w).sum(axis=0).max(initial=0))
    if bound >= 2.0**52:
        return np.asarray(op(x))
    acc = (x.astype(np.float64) @ w.astype(np.float64)).astype(np.int64)
    return op.finish(acc)


def _checked(g: GoldenModel, faults: Sequence[MultiFault]) -> list[MultiFault]:
    faults = list(faults)
    for mf in faults:
        if not isinstance(mf, MultiFault):
            raise ConfigError(f"faults must be MultiFault values, got {type(mf).__name__}")
    every = [s for mf in faults for s in mf.sites]
    if every:
        SiteTable.build(g, every)  # raises a clear ConfigError for any bad site
    return faults


def _multi_result(
    faults: list[MultiFault],
    ref: Reference,
    counts: tuple[np.ndarray, np.ndarray, np.ndarray],
    seconds: float,
    meta: dict[str, Any],
) -> MultiFaultResult:
    n_correct, n_sdc, dev = counts
    acc_drop, sdc, dev = ref.finish(n_correct, n_sdc, dev)
    n = ref.out.shape[0]
    accuracy = np.full(len(faults), math.nan) if ref.labels is None else n_correct / n
    return MultiFaultResult(
        n_sites=np.array([len(mf) for mf in faults], np.int64),
        accuracy=np.asarray(accuracy, np.float64),
        acc_drop=acc_drop,
        sdc_rate=sdc,
        max_dev=dev,
        baseline_accuracy=ref.accuracy,
        n_samples=int(n),
        seconds=seconds,
        meta={**meta, "sdc": ref.sdc},
    )


def run_multi_faults(
    g: GoldenModel,
    x_codes: np.ndarray,
    labels: np.ndarray | Sequence[int] | None,
    faults: Sequence[MultiFault],
    *,
    sdc: str = "top1",
    progress: bool = True,
) -> MultiFaultResult:
    """Score multi-site faults (e.g. BER trials), exactly as :func:`run_multi_faults_naive`."""
    from .campaign import _progress, engine_for

    check_sdc(sdc)
    t0 = time.perf_counter()
    faults = _checked(g, faults)
    eng = engine_for(g, x_codes, labels, sdc)
    ref = eng.ref
    f_n = len(faults)
    n_correct = np.full(f_n, ref.n_correct, np.int64)
    n_sdc = np.zeros(f_n, np.int64)
    dev = np.zeros(f_n, np.int64)
    single = [i for i, mf in enumerate(faults) if len(mf) == 1]
    multi = [i for i, mf in enumerate(faults) if len(mf) > 1]
    with _progress(f_n, progress, "multi-bit faults") as bar:
        bar.update(f_n - len(single) - len(multi))  # empty trials: fault-free
        if single:
            table = SiteTable.build(g, [faults[i].sites[0] for i in single])
            c, s, d = eng.counts(table)
            n_correct[single], n_sdc[single], dev[single] = c, s, d
            bar.update(len(single))
        with _one_blas_thread():
            for i in multi:
                out = _run_dense_from(g, eng.env, faults[i])
                c, s, d = ref.counts(np.asarray(out)[None])
                n_correct[i], n_sdc[i], dev[i] = c[0], s[0], d[0]
                bar.update(1)
    meta = {"engine": "fast", "source": g.source}
    return _multi_result(faults, ref, (n_correct, n_sdc, dev), time.perf_counter() - t0, meta)


def run_multi_faults_naive(
    g: GoldenModel,
    x_codes: np.ndarray,
    labels: np.ndarray | Sequence[int] | None,
    faults: Sequence[MultiFault],
    *,
    sdc: str = "top1",
    progress: bool = True,
) -> MultiFaultResult:
    """Reference: per multi-fault, corrupt a copy of the model and run everything."""
    from .campaign import _progress

    check_sdc(sdc)
    t0 = time.perf_counter()
    faults = _checked(g, faults)
    x, y = check_inputs(g, x_codes, labels)
    ref = Reference.build(np.asarray(g.run(x)), y, sdc)
    f_n = len(faults)
    n_correct, n_sdc, dev = (np.empty(f_n, np.int64) for _ in range(3))
    with _progress(f_n, progress, "multi-bit faults (naive)") as bar:
        for i, mf in enumerate(faults):
            out = np.asarray(run_with_faults(g, x, list(mf.sites)))
            c, s, d = ref.counts(out[None])
            n_correct[i], n_sdc[i], dev[i] = c[0], s[0], d[0]
            bar.update(1)
    meta = {"engine": "naive", "source": g.source}
    return _multi_result(faults, ref, (n_correct, n_sdc, dev), time.perf_counter() - t0, meta)


# ----------------------------------------------------------------------------- sweeps


@dataclass
class BerSweepResult:
    """Accuracy (and SDC rate) versus bit-error rate, per trial, for confidence bands.

    ``accuracy``, ``sdc_rate``, ``n_flips`` and ``max_dev`` are ``(len(bers),
    n_trials)`` arrays; row ``b`` column ``t`` is trial ``t`` at ``bers[b]``
    (drawn from ``(seed, t)``; see the module doc). ``accuracy`` is NaN
    without labels.
    """

    bers: np.ndarray
    accuracy: np.ndarray
    sdc_rate: np.ndarray
    n_flips: np.ndarray
    max_dev: np.ndarray
    baseline_accuracy: float
    n_samples: int
    n_bits: int
    seed: int
    params: tuple[str, ...]
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_trials(self) -> int:
        return int(self.accuracy.shape[1])

    @property
    def mean_accuracy(self) -> np.ndarray:
        return self.accuracy.mean(axis=1)

    @property
    def mean_sdc_rate(self) -> np.ndarray:
        return self.sdc_rate.mean(axis=1)

    def band(self, level: float = 0.95, metric: str = "accuracy") -> tuple[np.ndarray, np.ndarray]:
        """Normal-approximation confidence interval of the mean per BER:
        ``mean -/+ z * std / sqrt(n_trials)`` (sample std, ``ddof=1``)."""
        if not 0.0 < level < 1.0:
            raise ConfigError(f"level must be in (0, 1), got {level!r}")
        if metric not in ("accuracy", "sdc_rate"):
            raise ConfigError(f"metric must be 'accuracy' or 'sdc_rate', got {metric!r}")
        v = getattr(self, metric)
        mean = v.mean(axis=1)
        if v.shape[1] < 2:
            return mean.copy(), mean.copy()
        half = NormalDist().inv_cdf(0.5 + level / 2) * v.std(axis=1, ddof=1) / math.sqrt(v.shape[1])
        return mean - half, mean + half

    def save(self, path: str | Path) -> Path:
        """One ``.npz``: the arrays plus a JSON metadata string."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz")
        meta = {
            "format": BER_FORMAT,
            "version": BER_VERSION,
            "baseline_accuracy": self.baseline_accuracy,
            "n_samples": self.n_samples,
            "n_bits": self.n_bits,
            "seed": self.seed,
            "params": list(self.params),
            "seconds": self.seconds,
            "meta": self.meta,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            meta=np.array(json.dumps(meta)),
            bers=self.bers,
            accuracy=self.accuracy,
            sdc_rate=self.sdc_rate,
            n_flips=self.n_flips,
            max_dev=self.max_dev,
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> BerSweepResult:
        """Read a file written by :meth:`save`; anything else raises :class:`CorruptFileError`."""
        path = Path(path)
        names = ("bers", "accuracy", "sdc_rate", "n_flips", "max_dev")
        if not path.is_file():
            raise CorruptFileError(f"BER sweep file '{path}' does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("meta", *names) if k not in z.files]
                if missing:
                    raise CorruptFileError(
                        f"'{path}' is not an edgeml BER sweep: missing {missing}"
                    )
                meta = json.loads(str(z["meta"][()]))
                arr = {k: z[k] for k in names}
        except CorruptFileError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise CorruptFileError(f"'{path}' is not a readable edgeml BER sweep: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != BER_FORMAT:
            raise CorruptFileError(f"'{path}' is not an edgeml BER sweep (format tag missing)")
        shape = (arr["bers"].size, arr["accuracy"].shape[-1] if arr["accuracy"].ndim == 2 else -1)
        if any(arr[k].shape != shape for k in names[1:]):
            raise CorruptFileError(f"'{path}' holds arrays of inconsistent shapes")
        try:
            return cls(
                **arr,
                baseline_accuracy=float(meta["baseline_accuracy"]),
                n_samples=int(meta["n_samples"]),
                n_bits=int(meta["n_bits"]),
                seed=int(meta["seed"]),
                params=tuple(meta["params"]),
                seconds=float(meta["seconds"]),
                meta=dict(meta.get("meta") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"'{path}' holds inconsistent BER sweep data: {exc}") from exc


def run_ber_sweep(
    g: GoldenModel,
    x_codes: np.ndarray,
    labels: np.ndarray | Sequence[int] | None,
    bers: Sequence[float],
    n_trials: int,
    seed: int,
    *,
    params: Sequence[str] = STORED_PARAMS,
    sdc: str = "top1",
    progress: bool = True,
) -> BerSweepResult:
    """Accuracy vs BER: ``n_trials`` random trials per BER (common random numbers)."""
    b = np.array([_check_ber(v) for v in bers], np.float64)
    if not b.size:
        raise ConfigError("bers must list at least one bit-error rate")
    n = _check_count("n_trials", n_trials)
    params = _check_params(params)
    t0 = time.perf_counter()
    trials = _trials(g, b.tolist(), n, int(seed), params)
    flat = [mf for row in trials for mf in row]
    res = run_multi_faults(g, x_codes, labels, flat, sdc=sdc, progress=progress)
    n_bits = sum(words * width for _, _, words, width in _bit_table(g, params))
    shape = (b.size, n)
    return BerSweepResult(
        bers=b,
        accuracy=res.accuracy.reshape(shape),
        sdc_rate=res.sdc_rate.reshape(shape),
        n_flips=res.n_sites.reshape(shape),
        max_dev=res.max_dev.reshape(shape),
        baseline_accuracy=res.baseline_accuracy,
        n_samples=res.n_samples,
        n_bits=int(n_bits),
        seed=int(seed),
        params=params,
        seconds=time.perf_counter() - t0,
        meta={"sdc": sdc, "source": g.source},
    )
