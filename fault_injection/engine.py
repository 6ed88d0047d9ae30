"""The fast fault-campaign engine: exact, batched, no Python loop per sample.

:class:`FaultEngine` gives, for every fault site, exactly the numbers of the
naive engine (copy the model, corrupt it, run everything; see
:func:`edgeml.fault_injection.inject.run_with_faults`), without re-running
the model per fault:

* **Upstream is cached.** The fault-free trace is computed once per engine;
  a fault in layer ``L`` only touches what comes after ``L``.
* **Linearity.** A weight fault ``W[i, j] += d`` changes the accumulator only
  in output channel ``j``, by ``x[:, i] * d`` (shifts aside); a bias fault by
  a constant; an ``act`` / ``acc`` upset changes one element of one tensor.
  The faults of one input row ``i`` (every column and bit) are one outer
  product ``d (F,) x x[:, i] (n,)``, over the samples where ``x[:, i] != 0``.
* **Masking without requantising.** Every elementwise op (ReLU, requantiser,
  fixed-point affine, bipolar) is monotone, so the accumulator values a
  (sample, channel) can take without changing its requantised code form an
  interval: the *slack* ``[lo, hi]``. It comes from per-(channel, code)
  thresholds (bisection on a small grid of the integer ops), or per-element
  bisection when the output has many codes. A change is masked iff it lies
  within the slack: two int32 comparisons per (fault, sample), and only the
  surviving pairs go further.
* **States, not faults.** What a surviving pair does downstream depends only
  on (sample, channel, new code). The pairs are keyed by that state in a
  dense lookup table (no sort); each distinct state is computed once.
* **A dense, exact tail.** States are pushed through the rest of the network
  in cache-sized chunks, as rows of faulty values held in float32 (or
  float64): Dense layers are BLAS matmuls, a power-of-two requantiser after a
  Dense is folded into its weights (pre-scaled by ``2**-shift``), leaving
  round-and-clip; other elementwise ops run as float twins of the integer
  ops, self-checked against them. Value bounds propagated through every step
  guarantee each sum and product is an exact integer (or an exact multiple
  of the power-of-two scale) in the chosen float type; otherwise int64.
* **Per-fault metrics** are segment sums / maxima over each fault's pairs of
  one packed word per state (SDC, accuracy gain, deviation).

This chain engine covers every layer whose downstream graph is a chain of
Dense, elementwise and layout ops (MLPs, the dense head of a CNN). Other
layers (convolutions, pooling, residual adds, tensors read twice) go through
the general sparse walker of :mod:`.engine_walker`. Results equal the naive
engine's array for array (tests/test_fault_models.py, tests/test_faults.py).

The issue-10 ops go through the walker: Gather moves changed positions (index
map, shifts, padding), Lookup runs on changed positions (it is not monotone, so
the chain's slack never takes it), Add/Sub/Mul of tensors on the union of the
changed positions, MatMul of tensors densely per record, and a Dense on
(tokens, features) as a per-token low-rank update. A Lookup ROM fault (``table``
site, entry ``i``) changes the op's output wherever its input code is
``lo + i``; those positions enter the walker (tests/test_fault_ops.py).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeml.errors import ConfigError, InputRangeError
from edgeml.golden import (
    Affine,
    Bipolar,
    Conv,
    Dense,
    GoldenModel,
    Lookup,
    Op,
    Relu,
    Requant,
    Reshape,
    Transpose,
)

from .engine_walker import _channel_sliced, _column_change, _Walker
from .inject import KIND_CODES, fault_deltas, fault_values
from .sites import (
    FAULT_KINDS,
    PARAMS,
    PERMANENT_PARAMS,
    ROM_PARAMS,
    STORED_PARAMS,
    FaultSite,
    lookup_op,
    lookup_ops,
    param_op,
    param_storage,
    site_tensor,
    stored_words,
    table_storage,
)

SDC_MODES: tuple[str, ...] = ("top1", "any")
#: Largest int64 array (elements) one batch may allocate; bounds memory (~128 MB).
_MAX_BATCH_ELEMS = 1 << 24
#: Largest dense (sample, position, code) lookup table used to merge states (16 MB mask,
#: <= 128 MB lookup); larger key spaces are merged with a sort (np.unique).
_MAX_TABLE = 1 << 24
_ELEMENTWISE = (Relu, Requant, Affine, Bipolar)
_P_WEIGHT, _P_BIAS, _P_ACT, _P_ACC = (PARAMS.index(p) for p in ("weight", "bias", "act", "acc"))


# ----------------------------------------------------------------------------- inputs


def check_inputs(
    g: GoldenModel, x_codes: np.ndarray, labels: np.ndarray | Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate campaign inputs: at least one sample, one integer label per sample (or None)."""
    x = np.asarray(x_codes)
    if x.ndim < 1 or x.shape[0] == 0:
        raise InputRangeError(f"x_codes must hold at least one sample, got shape {x.shape}")
    if labels is None:
        return x, None
    y = np.asarray(labels)
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise ConfigError(
            f"labels must be a 1-D integer array with one class per sample ({x.shape[0]}), "
            f"got dtype {y.dtype} and shape {y.shape}"
        )
    return x, y.astype(np.int64)


def check_sdc(sdc: str) -> str:
    if sdc not in SDC_MODES:
        raise ConfigError(
            f"sdc must be one of {SDC_MODES} ('top1': the top-1 class changed; 'any': any "
            f"output code changed), got {sdc!r}"
        )
    return sdc


# ----------------------------------------------------------------------------- scoring


@dataclass
class Reference:
    """Fault-free golden outputs and what every fault is scored against."""

    out: np.ndarray  # (N, K) output codes, flattened per sample
    top1: np.ndarray  # (N,)
    labels: np.ndarray | None
    accuracy: float
    n_correct: int
    sdc: str = "top1"

    @classmethod
    def build(cls, out: np.ndarray, labels: np.ndarray | None, sdc: str = "top1") -> Reference:
        flat = np.asarray(out).reshape(out.shape[0], -1)
        top1 = flat.argmax(axis=1)
        n = flat.shape[0]
        n_correct = 0 if labels is None else int(np.count_nonzero(top1 == labels))
        acc = math.nan if labels is None else n_correct / n
        return cls(flat, top1, labels, acc, n_correct, check_sdc(sdc))

    @property
    def correct(self) -> np.ndarray:
        if self.labels is None:
            return np.zeros(self.top1.size, bool)
        return self.top1 == self.labels

    def finish(
        self, n_correct: np.ndarray, n_sdc: np.ndarray, dev: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(acc_drop, sdc_rate, max_dev) from integer counts, in one place, so every
        engine gets bit-identical floats."""
        n = self.out.shape[0]
        sdc = np.asarray(n_sdc, np.int64) / n
        if self.labels is None:
            acc_drop = np.full(sdc.shape, math.nan)
        else:
            acc_drop = self.accuracy - np.asarray(n_correct, np.int64) / n
        return acc_drop, sdc, np.asarray(dev, np.int64)

    def counts(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n_correct, n_sdc, max_dev) of dense faulty outputs ``out``, shape (F, N, ...)."""
        f, n = out.shape[:2]
        flat = out.reshape(f, n, -1)
        top = flat.argmax(axis=2)
        if self.sdc == "any":
            n_sdc = np.count_nonzero((flat != self.out).any(axis=2), axis=1)
        else:
            n_sdc = np.count_nonzero(top != self.top1, axis=1)
        n_correct = (
            np.zeros(f, np.int64)
            if self.labels is None
            else np.count_nonzero(top == self.labels, axis=1)
        )
        dev = np.abs(flat - self.out).max(axis=(1, 2)) if flat.size else np.zeros(f, np.int64)
        return n_correct, n_sdc, dev

    def score(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(acc_drop, sdc_rate, max_dev) of dense faulty outputs ``out``, shape (F, N, ...)."""
        return self.finish(*self.counts(out))

    def outcome(
        self, sample: np.ndarray, e_rec: np.ndarray, e_pos: np.ndarray, e_dlt: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-record (sdc, correct, dev) of sparse output changes.

        Record ``r`` is sample ``sample[r]`` with output positions ``e_pos`` changed
        by ``e_dlt`` (entries sorted by ``e_rec``; zero changes are not listed).
        """
        r_n = sample.size
        sdc = np.zeros(r_n, bool)
        correct = np.zeros(r_n, bool)
        dev = np.zeros(r_n, np.int64)
        if not r_n:
            return sdc, correct, dev
        k = self.out.shape[1]
        step = max(1, _MAX_BATCH_ELEMS // max(1, k))
        starts = np.searchsorted(e_rec, np.arange(0, r_n + step, step))
        for c, r0 in enumerate(range(0, r_n, step)):
            r1 = min(r0 + step, r_n)
            a, b = starts[c], starts[c + 1]
            full = self.out[sample[r0:r1]].copy()
            full[e_rec[a:b] - r0, e_pos[a:b]] += e_dlt[a:b]
            top = full.argmax(axis=1)
            if self.sdc == "any":
                sdc[r0:r1] = np.bincount(e_rec[a:b] - r0, minlength=r1 - r0) > 0
            else:
                sdc[r0:r1] = top != self.top1[sample[r0:r1]]
            if self.labels is not None:
                correct[r0:r1] = top == self.labels[sample[r0:r1]]
        if e_rec.size:
            d = np.abs(e_dlt)
            first = np.flatnonzero(np.r_[True, e_rec[1:] != e_rec[:-1]])
            dev[e_rec[first]] = np.maximum.reduceat(d, first)
        return sdc, correct, dev

    def single_change(
        self, sample: np.ndarray, pos: np.ndarray, delta: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-pair (sdc, correct, dev) when one output position changes (``delta != 0``).

        No per-pair copy of the output row: the new top-1 follows from the
        fault-free best and second-best of the sample (``argmax`` picks the
        first maximum, and so does this).
        """
        if not hasattr(self, "_second"):
            k = self.out.shape[1]
            rows = np.arange(self.out.shape[0])
            best = self.out[rows, self.top1]
            low = np.iinfo(np.int64).min  # below every code: a lone output has no runner-up
            others = self.out.astype(np.int64, copy=True)
            others[rows, self.top1] = low
            idx2 = others.argmax(axis=1) if k > 1 else np.zeros_like(self.top1)
            val2 = others[rows, idx2] if k > 1 else np.full(rows.size, low)
            self._second = (best, idx2, val2)
        best, idx2, val2 = self._second
        t = self.top1[sample]
        m = best[sample]
        new = self.out[sample, pos] + delta
        on_top = pos == t
        # the changed position was the top-1: it stays unless it fell below the runner-up
        v2, i2 = val2[sample], idx2[sample]
        stay = (new > v2) | ((new == v2) & (t < i2))
        top_a = np.where(stay, t, i2)
        # another position: it takes over if it now beats the top-1 (ties: lower index)
        take = (new > m) | ((new == m) & (pos < t))
        top_b = np.where(take, pos, t)
        top = np.where(on_top, top_a, top_b)
        sdc = np.ones(sample.size, bool) if self.sdc == "any" else top != t
        if self.labels is None:
            correct = np.zeros(sample.size, bool)
        else:
            correct = top == self.labels[sample]
        return sdc, correct, np.abs(delta)


class Tally:
    """Per-fault integer counts, filled from (fault, sample) pairs that differ from golden."""

    def __init__(self, ref: Reference, n_faults: int) -> None:
        self.ref = ref
        self.n_sdc = np.zeros(n_faults, np.int64)
        self.n_correct = np.full(n_faults, ref.n_correct, np.int64)
        self.dev = np.zeros(n_faults, np.int64)
        self._golden_correct = ref.correct

    def add(
        self,
        fault: np.ndarray,
        sample: np.ndarray,
        sdc: np.ndarray,
        correct: np.ndarray,
        dev: np.ndarray,
    ) -> None:
        """Pair ``a`` = (fault[a], sample[a]) gave (sdc[a], correct[a], dev[a]); each pair once."""
        if not fault.size:
            return
        n = self.n_sdc.size
        self.n_sdc += np.bincount(fault, weights=sdc, minlength=n).astype(np.int64)
        if self.ref.labels is not None:
            gain = correct.astype(np.int64) - self._golden_correct[sample]
            self.n_correct += np.bincount(fault, weights=gain, minlength=n).astype(np.int64)
        if np.all(fault[1:] >= fault[:-1]):
            first = np.flatnonzero(np.r_[True, fault[1:] != fault[:-1]])
            m = np.maximum.reduceat(dev, first)
            f = fault[first]
            self.dev[f] = np.maximum(self.dev[f], m)
        else:
            np.maximum.at(self.dev, fault, dev)


# ----------------------------------------------------------------------------- site table


@dataclass
class SiteTable:
    """Fault sites as arrays. ``layer`` indexes ``layer_names``; ``param`` indexes
    :data:`PARAMS`; ``kind`` indexes :data:`FAULT_KINDS`."""

    layer: np.ndarray
    param: np.ndarray
    index: np.ndarray
    bit: np.ndarray
    kind: np.ndarray
    nbits: np.ndarray
    layer_names: list[str]

    def __len__(self) -> int:
        return int(self.layer.size)

    @classmethod
    def build(cls, g: GoldenModel, sites: Sequence[FaultSite] | None) -> SiteTable:
        """Arrays of ``sites`` (default: every weight and bias bit), checked against ``g``."""
        if sites is None:
            return cls.exhaustive(g)
        sites = list(sites)
        if not all(type(s) is FaultSite for s in sites):
            for s in sites:
                if not isinstance(s, FaultSite):
                    raise ConfigError(f"sites must be FaultSite values, got {type(s).__name__}")
        order = {g.input_name: -1} | {op.name: k for k, op in enumerate(g.ops)}
        used = {s.layer for s in sites}
        names = [op.name for op in g.param_ops]
        names += sorted(used - set(names), key=lambda n: order.get(n, len(order)))
        lid = {n: i for i, n in enumerate(names)}
        pid = {p: i for i, p in enumerate(PARAMS)}
        n = len(sites)
        t = cls(
            np.fromiter((lid[s.layer] for s in sites), np.int32, n),
            np.fromiter((pid[s.param] for s in sites), np.int8, n),
            np.fromiter((s.index for s in sites), np.int64, n),
            np.fromiter((s.bit for s in sites), np.int16, n),
            np.fromiter((KIND_CODES[s.kind] for s in sites), np.int8, n),
            np.fromiter((s.nbits for s in sites), np.int16, n),
            names,
        )
        t.validate(g)
        return t

    @classmethod
    def exhaustive(cls, g: GoldenModel) -> SiteTable:
        """Every stored bit (weights but structural ones, biases, lookup tables), as arrays:
        the rows of ``enumerate_sites(g)``, without building 10**4..10**6 FaultSite objects."""
        names = [op.name for op in g.param_ops] + [op.name for op in lookup_ops(g)]
        lid = {n: i for i, n in enumerate(names)}
        parts: list[tuple[int, int, int, int]] = []  # (layer id, param, words, width)
        p_table = PARAMS.index("table")
        for op in g.ops:
            if isinstance(op, Dense):
                li = lid[op.name]
                if not op.structural:
                    parts.append((li, _P_WEIGHT, int(op.weight.size), op.weight_type.width))
                if op.bias is not None and op.bias_type is not None:
                    parts.append((li, _P_BIAS, int(op.bias.size), op.bias_type.width))
            elif isinstance(op, Lookup):
                codes, ftype = table_storage(g, op)
                parts.append((lid[op.name], p_table, int(codes.size), ftype.width))
        cols: list[list[np.ndarray]] = [[], [], [], []]
        for li, pi, words, width in parts:
            n = words * width
            cols[0].append(np.full(n, li, np.int32))
            cols[1].append(np.full(n, pi, np.int8))
            cols[2].append(np.repeat(np.arange(words, dtype=np.int64), width))
            cols[3].append(np.tile(np.arange(width, dtype=np.int16), words))
        cat = [np.concatenate(c) if c else np.zeros(0, np.int64) for c in cols]
        n = cat[0].size
        return cls(
            cat[0].astype(np.int32),
            cat[1].astype(np.int8),
            cat[2].astype(np.int64),
            cat[3].astype(np.int16),
            np.zeros(n, np.int8),
            np.ones(n, np.int16),
            names,
        )

    def groups(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(layer id, param code, row numbers) of each non-empty (layer, param) group."""
        key = self.layer.astype(np.int64) * len(PARAMS) + self.param
        order = np.argsort(key, kind="stable")
        bounds = np.flatnonzero(np.diff(key[order])) + 1
        for grp in np.split(order, bounds):
            if grp.size:
                yield int(self.layer[grp[0]]), int(self.param[grp[0]]), grp

    def word(self, g: GoldenModel, li: int, pi: int) -> tuple[int, Any, str | None]:
        """(words, storage type, tensor name or None for stored params) of one group."""
        name, param = self.layer_names[li], PARAMS[pi]
        if param in PERMANENT_PARAMS:
            codes, ftype = stored_words(g, name, param)
            return int(codes.size), ftype, None
        t = site_tensor(g, name, param)
        return int(np.prod(g.tensors[t].shape, dtype=np.int64)), g.tensors[t].type, t

    def deltas(
        self, op: Dense, param: str, rows: np.ndarray, g: GoldenModel | None = None
    ) -> np.ndarray:
        """``faulty - stored`` code of the ``rows`` sites in ``op.<param>`` (weight, bias;
        ``table`` of a Lookup op needs ``g`` for its storage type)."""
        if param in ROM_PARAMS:
            if g is None:
                raise ConfigError("table deltas need the golden model (its output type)")
            codes, ftype = table_storage(g, op)  # type: ignore[arg-type]
        else:
            codes, ftype = param_storage(op, param)
        return fault_deltas(
            codes,
            ftype.width,
            ftype.signed,
            self.index[rows],
            self.bit[rows],
            self.kind[rows],
            self.nbits[rows],
        )

    def validate(self, g: GoldenModel) -> None:
        """Every site must fit its word array: index < words, bit + nbits <= width."""
        for li, pi, grp in self.groups():
            size, ftype, _ = self.word(g, li, pi)
            top = self.bit[grp].astype(np.int64) + self.nbits[grp]
            if self.index[grp].max() >= size or top.max() > ftype.width:
                where = f"{self.layer_names[li]}.{PARAMS[pi]}"
                raise ConfigError(
                    f"fault sites in {where} reach index {self.index[grp].max()} / bit "
                    f"{top.max() - 1} (bit + nbits - 1), but it has {size} words of "
                    f"{ftype.width} bits (allowed: index 0..{size - 1}, bit + nbits <= "
                    f"{ftype.width})"
                )

    def site(self, i: int) -> FaultSite:
        return FaultSite(
            self.layer_names[int(self.layer[i])],
            PARAMS[int(self.param[i])],  # type: ignore[arg-type]
            int(self.index[i]),
            int(self.bit[i]),
            FAULT_KINDS[int(self.kind[i])],  # type: ignore[arg-type]
            int(self.nbits[i]),
        )


# ----------------------------------------------------------------------------- chain engine


class _Elem:
    """A run of elementwise ops (ReLU, requantiser, affine, bipolar) as one exact kernel.

    The integer ops are the definition. When every op has a float64 twin that
    is exact on integers (a power-of-two shift is an exact scaling, then
    ``rint`` is half-to-even, ``floor`` / ``ceil`` / ``trunc`` the other modes)
    and a self-check against the integer ops passes, the float twin is used:
    fewer passes, no int64 shift tricks. Inputs must stay below ``bound`` in
    magnitude for every intermediate to be an exact float64 integer; callers
    check and fall back to the integer ops otherwise.
    """

    def __init__(self, ops: list[Op], shape: tuple[int, ...]) -> None:
        self.ops = ops
        self.shape = shape
        self.n_chan = int(shape[-1]) if shape else 1
        self.bound = _FLOAT_EXACT
        #: largest factor between the kernel's input and an intermediate (bounds float32 use)
        self.gain = 1.0
        self.use_float = all(type(op) in (Relu, Requant, Affine, Bipolar) for op in ops)
        #: some op has per-channel constants (1-D inputs then need their channels)
        self.per_channel = any(
            np.asarray(getattr(op, name)).size > 1
            for op in ops
            for name in ("mult", "offset")
            if hasattr(op, name)
        )
        for op in ops:
            if isinstance(op, (Requant, Affine)):
                m = float(np.abs(np.asarray(op.mult, np.float64)).max())
                o = float(np.abs(np.asarray(op.offset, np.float64)).max())
                self.bound = min(self.bound, (_FLOAT_EXACT - o) / max(m, 1.0))
                scale = max(m, 1.0) * (
                    2.0 ** (-op.shift) if isinstance(op, Requant) and op.shift < 0 else 1.0
                )
                self.gain = self.gain * scale + o
                if isinstance(op, Requant) and op.shift < 0:
                    self.bound = min(self.bound, self.bound / 2.0 ** (-op.shift))

    def check(self, base: np.ndarray, out: np.ndarray, rng: np.random.Generator) -> None:
        """Disable the float twin unless it reproduces the integer ops exactly."""
        if not self.use_float:
            return
        probes = [base]
        for e in (1, 4, 10, 20):
            probes.append(base + rng.integers(-(1 << e), (1 << e) + 1, base.shape))
        for v in probes:
            want = self.ints(v)
            got = self.floats(v.astype(np.float64))
            if not np.array_equal(got, want.astype(np.float64)):
                self.use_float = False
                return
        self.use_float = np.array_equal(self.floats(base.astype(np.float64)), out)

    def ints(self, v: np.ndarray, chan: np.ndarray | None = None) -> np.ndarray:
        """The integer ops; ``chan`` (1-D ``v``): the channel of each value."""
        for op in self.ops:
            f = op if chan is None else _channel_sliced(op, chan, self.n_chan)
            v = np.asarray(f(v))  # type: ignore[misc]
        return v

    def floats(self, v: np.ndarray, chan: np.ndarray | None = None) -> np.ndarray:
        """The float64 twin (in place where it can); integers in, integers (as floats) out."""

        dt = v.dtype

        def c(a: Any) -> Any:
            a = np.asarray(a, dt)
            if a.size == 1:
                return a.reshape(-1)[0]
            return a.reshape(-1)[chan] if chan is not None else a

        for op in self.ops:
            if isinstance(op, Relu):
                v = np.maximum(v, 0, out=v)
            elif isinstance(op, Bipolar):
                v = np.where(v >= 0, 1, -1).astype(dt)
            elif isinstance(op, Affine):
                v = v * c(op.mult) + c(op.offset)
            else:
                assert isinstance(op, Requant)
                mult, off = c(op.mult), c(op.offset)
                if np.ndim(mult) or mult != 1:
                    v = v * mult
                if np.ndim(off) or off != 0:
                    v = v + off
                if op.shift:
                    v *= dt.type(2.0 ** (-op.shift))  # exact: a power-of-two scaling
                if op.shift > 0:
                    v = _FLOAT_ROUND[op.rounding](v)
                v = np.clip(v, dt.type(op.lo), dt.type(op.hi), out=v)
        return v


def _round_half_up(v: np.ndarray) -> np.ndarray:
    return np.copysign(np.floor(np.abs(v) + 0.5), v)


def _round_half_down(v: np.ndarray) -> np.ndarray:
    return np.copysign(np.ceil(np.abs(v) - 0.5), v)


def _round_up(v: np.ndarray) -> np.ndarray:
    return np.copysign(np.ceil(np.abs(v)), v)


#: Float twins of golden.round_shift's modes, applied to ``x * 2**-shift`` (exact).
_FLOAT_ROUND: dict[str, Any] = {
    "HALF_EVEN": np.rint,
    "FLOOR": np.floor,
    "CEIL": np.ceil,
    "DOWN": np.trunc,
    "UP": _round_up,
    "HALF_UP": _round_half_up,
    "HALF_DOWN": _round_half_down,
}


def _rint_out(v: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.rint(v, out=out)


def _floor_out(v: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.floor(v, out=out)


def _ceil_out(v: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.ceil(v, out=out)


def _trunc_out(v: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.trunc(v, out=out)


def _other_out(mode: str) -> Any:
    return lambda v, out: _FLOAT_ROUND[mode](v)


#: In-place rounding of the folded requantisers (round-and-clip after pre-scaling).
_FLOAT_ROUND_OUT: dict[str, Any] = {
    "HALF_EVEN": _rint_out,
    "FLOOR": _floor_out,
    "CEIL": _ceil_out,
    "DOWN": _trunc_out,
    "UP": _other_out("UP"),
    "HALF_UP": _other_out("HALF_UP"),
    "HALF_DOWN": _other_out("HALF_DOWN"),
}
#: Integers below this magnitude are exact in float64, with margin for one addition.
_FLOAT_EXACT = float(2**51)


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Run BLAS single-threaded: the engine's matmuls are small (a chunk of states by a
    layer's weights), and BLAS threads contending for busy cores made them ~25x slower
    in measurements on the 2-core build machine."""
    global _POOLS
    if _POOLS is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            _POOLS = False
        else:
            _POOLS = ThreadpoolController()  # inspecting the loaded libraries once: ~1 ms
    if _POOLS is False:
        yield
        return
    with _POOLS.limit(limits=1, user_api="blas"):
        yield


_POOLS: Any = None


@dataclass
class _Step:
    """One step of a chain: ``dense`` (a Dense op), ``elem`` (consecutive elementwise
    ops) or ``perm`` (consecutive layout ops, as a position map)."""

    kind: str
    inp: str
    out: str
    ops: list[Op]
    perm: np.ndarray | None = None  # new flat position of each old one
    inv: np.ndarray | None = None  # old flat position at each new one
    w: np.ndarray | None = None  # dense: effective weight << acc_shift, float64 (in, out)
    w_bound: int = 0  # dense: largest column sum of |w|
    elem: _Elem | None = None


@dataclass
class _Slack:
    lo: np.ndarray  # (N, P): most negative change that leaves the step's output unchanged
    hi: np.ndarray  # (N, P): most positive such change
    cap: int  # exact for |change| <= cap


def _pow2_at_least(v: int) -> int:
    return 1 << max(4, int(v).bit_length())


#: Target size (elements) of the arrays one chunk of the chain engine works on:
#: small enough to stay in cache, large enough to amortise numpy's call overhead.
_CHUNK = 1 << 17


class FaultEngine:
    """Fast exact fault campaigns on one golden model and one set of input samples.

    Build once (it runs the fault-free trace and caches per-layer data), then
    call :meth:`counts` / :meth:`scores` with any number of site tables, e.g.
    chunk after chunk of a resumable campaign: each call is independent.
    """

    def __init__(
        self,
        g: GoldenModel,
        x_codes: np.ndarray,
        labels: np.ndarray | Sequence[int] | None,
        *,
        sdc: str = "top1",
    ) -> None:
        x, y = check_inputs(g, x_codes, labels)
        self.g = g
        out0, trace = g.run(x, trace=True)  # type: ignore[misc]
        self.ref = Reference.build(np.asarray(out0), y, sdc)
        self.x = x.astype(np.int64)
        self.n = int(x.shape[0])
        self.env: dict[str, np.ndarray] = {g.input_name: self.x, **trace}
        self._flat = {k: v.reshape(self.n, -1) for k, v in self.env.items()}
        self._walker = _Walker(g, self.env)
        self._op_pos = {id(op): k for k, op in enumerate(g.ops)}
        self._producer = {op.output: k for k, op in enumerate(g.ops)}
        self._consumers: dict[str, list[int]] = {}
        for k, op in enumerate(g.ops):
            for i in op.inputs:
                self._consumers.setdefault(i, []).append(k)
        self._chains: dict[str, list[_Step] | None] = {}
        self._slack: dict[str, _Slack] = {}
        self._slack_t: dict[tuple[str, str], tuple[int, np.ndarray]] = {}
        self._typed_cache: dict[tuple[int, Any], tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()  # the caches above are filled lazily: one call at a time
        self._programs: dict[tuple[Any, str, int], tuple[list[dict[str, Any]], Any]] = {}

    # ---- public
    def counts(
        self, table: SiteTable, progress: Any = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Integer (n_correct, n_sdc, max_dev) per row of ``table``."""
        with self._lock, _one_blas_thread():
            return self._counts(table, progress)

    def _counts(self, table: SiteTable, progress: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tally = Tally(self.ref, len(table))
        for li, pi, rows in table.groups():
            name = table.layer_names[li]
            param = PARAMS[pi]
            if param in STORED_PARAMS:
                op = param_op(self.g, name)
                flat_in = not isinstance(op, Conv) and self.env[op.inputs[0]].ndim == 2
                chain = self._chain(op.output) if flat_in else None
                if chain is None:
                    self._walker_params(op, param, table, rows, tally, progress)
                else:
                    self._chain_params(op, param, chain, table, rows, tally, progress)
            elif param in ROM_PARAMS:
                self._walker_table(lookup_op(self.g, name), table, rows, tally, progress)
            else:
                t = site_tensor(self.g, name, param)
                chain = self._chain(t)
                if chain is None:
                    self._walker_tensor(t, table, rows, tally, progress)
                else:
                    self._chain_tensor(t, chain, table, rows, tally, progress)
        return tally.n_correct, tally.n_sdc, tally.dev

    def scores(
        self, table: SiteTable, progress: Any = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(acc_drop, sdc_rate, max_dev) per row of ``table``."""
        return self.ref.finish(*self.counts(table, progress))

    # ---- graph structure
    def _chain(self, t: str) -> list[_Step] | None:
        """Steps from tensor ``t`` to the output if the graph after ``t`` is a chain of
        Dense, elementwise and layout ops, each tensor read by one op; else None."""
        if t in self._chains:
            return self._chains[t]
        g = self.g
        steps: list[_Step] = []
        cur = t
        ok = True
        while cur != g.output_name:
            cons = self._consumers.get(cur, [])
            op = g.ops[cons[0]] if len(cons) == 1 else None
            if op is None or len(op.inputs) != 1:
                ok = False
                break
            if isinstance(op, Dense) and not isinstance(op, Conv) and self.env[cur].ndim == 2:
                w = np.asarray(op.effective_weight()).astype(np.int64) << op.acc_shift
                wf = w.astype(np.float64)
                bound = int(np.abs(w).sum(axis=0).max()) if w.size else 0
                steps.append(_Step("dense", cur, op.output, [op], w=wf, w_bound=bound))
            elif isinstance(op, _ELEMENTWISE):
                if _channel_sliced(op, np.zeros(1, np.int64), self._n_chan(cur)) is None:
                    ok = False
                    break
                if steps and steps[-1].kind == "elem":
                    steps[-1].ops.append(op)
                    steps[-1].out = op.output
                else:
                    steps.append(_Step("elem", cur, op.output, [op]))
            elif isinstance(op, (Reshape, Transpose)):
                size = self._flat[cur].shape[1]
                shape = self.env[cur].shape[1:]
                src = np.asarray(op(np.arange(size, dtype=np.int64).reshape(1, *shape)))
                src = src.reshape(-1)  # old position now at each new position
                new = np.empty(size, np.int64)
                new[src] = np.arange(size)
                if steps and steps[-1].kind == "perm":
                    last = steps[-1]
                    last.perm, last.inv = new[last.perm], last.inv[src]  # type: ignore[index]
                    last.out = op.output
                    last.ops.append(op)
                else:
                    steps.append(_Step("perm", cur, op.output, [op], perm=new, inv=src))
            else:
                ok = False
                break
            cur = op.output
        if ok:
            rng = np.random.default_rng(0)
            for st in steps:
                if st.kind == "elem":
                    st.elem = _Elem(st.ops, self.env[st.inp].shape[1:])
                    st.elem.check(self.env[st.inp], self.env[st.out], rng)
        self._chains[t] = steps if ok else None
        return self._chains[t]

    def _n_chan(self, name: str) -> int:
        shape = self.env[name].shape[1:]
        return int(shape[-1]) if shape else 1

    def _slack_for(self, step: _Step, need: int) -> _Slack:
        """Exact slack of an elementwise step, valid for changes up to ``need`` in size.

        Each op is monotone in its input (per element), so the inputs mapping to
        the fault-free output form an interval around the trace value; its ends
        are found by bisection, evaluating the integer ops on the whole tensor.
        """
        s = self._slack.get(step.inp)
        if s is not None and s.cap >= need:
            return s
        base = self.env[step.inp]
        ref = self.env[step.out]
        cap = _pow2_at_least(max(need, 1 if s is None else 2 * s.cap))
        s = self._slack_by_thresholds(step, cap)
        if s is not None:
            self._slack[step.inp] = s
            return s

        def same(h: np.ndarray | int) -> np.ndarray:
            v = base + h
            for op in step.ops:
                v = op(v)
            return np.asarray(v) == ref

        ends = []
        for sign in (1, -1):
            good = np.zeros(base.shape, np.int64)  # largest change known to keep the output
            bad = np.full(base.shape, cap + 1, np.int64)  # smallest known to change it
            good[same(sign * cap)] = cap
            while True:
                gap = bad - good > 1
                if not gap.any():
                    break
                mid = (good + bad) // 2
                ok = same(sign * mid)
                good = np.where(gap & ok, mid, good)
                bad = np.where(gap & ~ok, mid, bad)
            ends.append(good.reshape(self.n, -1))
        s = _Slack(-ends[1], ends[0], cap)
        self._slack[step.inp] = s
        return s

    def _slack_by_thresholds(self, step: _Step, cap: int) -> _Slack | None:
        """The slack from per-(channel, code) thresholds, when the step's output takes few
        codes and every channel is nondecreasing (a ReLU + requantiser, the usual case).

        ``T[k, c]`` is the smallest input of channel ``c`` whose output is at least
        code ``k`` (bisection on a (codes, channels) grid, on the integer ops).
        An element with input ``a`` and output ``k`` keeps its output for inputs in
        ``[T[k], T[k + 1] - 1]``, or without bound at the lowest / highest code.
        None when the conditions do not hold (the caller bisects per element).
        """
        base, ref = self.env[step.inp], self.env[step.out]
        if not base.size:
            return None
        o_lo, o_hi = int(ref.min()), int(ref.max())
        t_out = self.g.tensors[step.out].type
        q_lo, q_hi = t_out.qmin, t_out.qmax  # codes a faulty input can reach
        if q_hi - q_lo > 4096:
            return None
        n_chan = self._n_chan(step.inp)
        x_lo = int(base.min()) - cap - 1
        x_hi = int(base.max()) + cap + 1

        def run(v: np.ndarray) -> np.ndarray:
            for op in step.ops:
                v = op(v)
            return np.asarray(v)

        ends = run(np.array([[x_lo] * n_chan, [x_hi] * n_chan], np.int64))
        if np.any(ends[0] > ends[1]):
            return None  # a decreasing channel: per-element bisection
        if ends.min() < q_lo or ends.max() > q_hi:
            return None  # faulty inputs can leave the code range (no clip): bisect
        codes = np.arange(q_lo, q_hi + 2, dtype=np.int64)[:, None]  # one past the top
        lo = np.full((codes.shape[0], n_chan), x_lo, np.int64)  # E(lo) < k, or the answer
        hi = np.full((codes.shape[0], n_chan), x_hi + 1, np.int64)  # E(hi) >= k (or none)
        below = run(lo) >= codes  # already reached at the range start
        while True:
            gap = (hi - lo > 1) & ~below
            if not gap.any():
                break
            mid = (lo + hi) // 2
            ok = run(mid) >= codes
            hi = np.where(gap & ok, mid, hi)
            lo = np.where(gap & ~ok, mid, lo)
        thr = np.where(below, x_lo, hi)  # (codes, channels): smallest input reaching code k
        chan = np.arange(base.reshape(self.n, -1).shape[1]) % n_chan
        a = base.reshape(self.n, -1)
        k = ref.reshape(self.n, -1) - q_lo
        if o_lo < q_lo or o_hi > q_hi:
            return None
        up = thr[k + 1, chan] - 1 - a  # largest change keeping the code
        down = thr[k, chan] - a
        hi_s = np.where(k + q_lo >= q_hi, cap, np.minimum(up, cap))
        lo_s = np.where(k + q_lo <= q_lo, -cap, np.maximum(down, -cap))
        # thresholds outside the searched range mean "no change within the cap"
        hi_s = np.where(thr[k + 1, chan] > x_hi, cap, hi_s)
        lo_s = np.where(thr[k, chan] <= x_lo, -cap, lo_s)
        if np.any(hi_s < 0) or np.any(lo_s > 0):
            return None  # not the monotone picture assumed: fall back
        return _Slack(lo_s, hi_s, cap)

    def _slack_rows(self, step: _Step, need: int, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
        """(P, N) copies of the slack bounds in ``dtype`` (clipped to its range; exact
        for changes up to ``need``), so a fault's row is one contiguous gather."""
        sl = self._slack_for(step, need)
        out = []
        for which in ("lo", "hi"):
            key = (step.inp, which + np.dtype(dtype).name)
            hit = self._slack_t.get(key)
            if hit is None or hit[0] != sl.cap:
                info = np.iinfo(dtype)
                arr = np.clip(getattr(sl, which).T, info.min + 1, info.max - 1)
                hit = (sl.cap, np.ascontiguousarray(arr, dtype=dtype))
                self._slack_t[key] = hit
            out.append(hit[1])
        return out[0], out[1]

    # ---- injection: single-position faults of one tensor
    def _inject(
        self,
        t: str,
        chain: list[_Step],
        chunks: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, int]],
        n_faults: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Integer (correct, sdc, dev) per fault of single-position faults of tensor ``t``.

        ``chunks`` yields ``(faults, pos, samples, delta, big)``: fault ids (a
        contiguous ascending range), the flat position of ``t`` each hits (F,),
        the samples considered (n,) or None for all, the change of ``t`` there,
        (F, n) or (F, 1), and a bound ``big`` on ``|delta|`` (the same for every
        chunk). If the chain starts with an elementwise step, pairs are
        slack-checked and moved to its output. Surviving (fault, sample) pairs
        are keyed by their state (sample, position, new value) in a dense table;
        each distinct state is pushed through the rest of the chain once, and
        per-fault counts are segment sums over the pairs (which come out sorted
        by fault).
        """
        elem = chain[0] if chain and chain[0].kind == "elem" else None
        rest = chain[1:] if elem is not None else chain
        where = elem.out if elem is not None else t
        p_out = self._flat[where].shape[1]
        counts = np.zeros(n_faults, np.int64)
        keys: list[np.ndarray] = []
        direct: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        setup: dict[str, Any] = {}
        for fid, pos, samp, delta, big in chunks:
            if not setup:
                setup = self._inject_setup(elem, t, where, int(big))
            n_s = self.n if samp is None else samp.size
            if elem is None:
                alive = np.broadcast_to(delta != 0, (fid.size, n_s))
            else:
                lo_t, hi_t = self._slack_rows(elem, int(big), setup["cmp_dt"])
                if samp is None:
                    lo, hi = lo_t[pos], hi_t[pos]
                else:
                    lo, hi = lo_t[:, samp][pos], hi_t[:, samp][pos]
                alive = delta < lo
                alive |= delta > hi
            # flatnonzero + a division: ~5x faster than a 2-D np.nonzero
            idx = np.flatnonzero(alive)
            if not idx.size:
                continue
            kd = setup["key_dt"]  # int32 where every index and key fits: half the traffic
            if alive.size < 2**31:
                idx = idx.astype(np.int32)
            fl = idx // n_s
            sl = idx - fl * n_s
            counts[fid] += np.bincount(fl, minlength=fid.size)
            d = delta.reshape(-1)[idx] if delta.shape[1] > 1 else delta[fl, 0]
            s = sl.astype(kd, copy=False) if samp is None else samp.astype(kd)[sl]
            p = pos.astype(kd)[fl]
            flat = s * kd(self._flat[t if elem is None else elem.inp].shape[1]) + p
            if elem is None:
                v = self._flat[where].reshape(-1)[flat] + d
            else:
                kern: _Elem = elem.elem  # type: ignore[assignment]
                fdt = setup["elem_dt"]
                chan = p % kern.n_chan if kern.per_channel else None
                v = self._typed(self._flat[elem.inp], fdt).reshape(-1)[flat]
                v += d.astype(fdt)
                v = kern.ints(v, chan) if fdt == np.int64 else kern.floats(v, chan)
            v = v.astype(kd) if rest else v.astype(np.int64)  # the new value at `where`
            if rest:
                keys.append((s * kd(p_out) + p) * kd(setup["span"]) + (v - kd(setup["v_lo"])))
            else:
                direct.append((s, p, v - self._flat[where].reshape(-1)[s * p_out + p]))
        n_correct = np.full(n_faults, self.ref.n_correct, np.int64)
        n_sdc = np.zeros(n_faults, np.int64)
        dev = np.zeros(n_faults, np.int64)
        if not keys and not direct:
            return n_correct, n_sdc, dev
        if rest:
            key = np.concatenate(keys)
            del keys
            size = self.n * p_out * setup["span"]
            table = size <= _MAX_TABLE
            if table:  # distinct states through a dense table: no sort
                mark = np.zeros(size, bool)
                mark[key] = True
                uniq = np.flatnonzero(mark)
                del mark
            else:
                uniq, rec = np.unique(key, return_inverse=True)
            st_rest = uniq // setup["span"]
            r_s, r_p = st_rest // p_out, st_rest % p_out
            r_d = uniq - st_rest * setup["span"] + setup["v_lo"] - self._flat[where][r_s, r_p]
            sdc_s, cor_s, dev_s = self._tail(rest, where, r_s, r_p, r_d)
            gain_s = cor_s.view(np.int8) - self.ref.correct[r_s].view(np.int8)
            # one word per state: dev, sdc, gain + 1; one gather per pair
            word = (dev_s << 3) | (sdc_s.astype(np.int64) << 2) | (gain_s + 1).astype(np.int64)
            if word.size and word.max() < 2**31:
                word = word.astype(np.int32)  # half the memory traffic per pair
            if table:
                lookup = np.empty(size, word.dtype)
                lookup[uniq] = word
                w_p = lookup[key]
                del lookup
            else:
                w_p = word[rec.reshape(-1)]
        else:
            s_, p_, d_ = (np.concatenate(c) for c in zip(*direct, strict=True))
            sdc_p, cor_p, dev_p = self.ref.single_change(s_, p_, d_)
            gain_p = cor_p.view(np.int8) - self.ref.correct[s_].view(np.int8)
            w_p = (dev_p << 3) | (sdc_p.astype(np.int64) << 2) | (gain_p + 1).astype(np.int64)
        hit = np.flatnonzero(counts)
        first = (np.cumsum(counts) - counts)[hit]
        # sdc and gain + 1 summed in separate fields (< 2**31 pairs per fault: no overlap)
        if w_p.dtype == np.int32:
            tot = np.add.reduceat(((w_p & 4).astype(np.int64) << 30) | (w_p & 3), first)
        else:
            tot = np.add.reduceat(((w_p & 4) << 30) | (w_p & 3), first)
        n_sdc[hit] = tot >> 32
        if self.ref.labels is not None:
            n_correct[hit] += (tot & 0xFFFFFFFF) - counts[hit]
        dev[hit] = np.maximum.reduceat(w_p >> 3, first)
        return n_correct, n_sdc, dev

    def _inject_setup(self, elem: _Step | None, t: str, where: str, big: int) -> dict[str, Any]:
        """Dtypes and the state-key range of one injection, from the bound ``big``."""
        out: dict[str, Any] = {"cmp_dt": np.int32 if big < 2**31 - 2 else np.int64}
        base = self._flat[t if elem is None else elem.inp]
        b_lo, b_hi = base.min(axis=0) - big, base.max(axis=0) + big
        if elem is None:
            v_lo, v_hi = int(b_lo.min(initial=0)), int(b_hi.max(initial=0))
        else:
            kern: _Elem = elem.elem  # type: ignore[assignment]
            v_max = int(max(np.abs(b_lo).max(initial=0), np.abs(b_hi).max(initial=0)))
            out["elem_dt"] = np.int64
            if kern.use_float and v_max * kern.gain + 1 < 2**23:
                out["elem_dt"] = np.float32
            elif kern.use_float and v_max < kern.bound:
                out["elem_dt"] = np.float64
            # monotone per element: the outputs lie between the images of the range ends
            ends = [kern.ints(e.reshape(1, *kern.shape)).reshape(-1) for e in (b_lo, b_hi)]
            v_lo = int(np.minimum(*ends).min(initial=0))
            v_hi = int(np.maximum(*ends).max(initial=0))
        out["v_lo"], out["span"] = v_lo, v_hi - v_lo + 1
        size = self.n * self._flat[where].shape[1] * out["span"]
        if size >= 2**62:
            raise ConfigError(
                f"faulty values of '{where}' span {out['span']} codes: too wide for the fast "
                "engine's state keys; use run_campaign_naive for this design"
            )
        small = size < 2**31 and self.n * max(base.shape[1], self._flat[where].shape[1]) < 2**31
        out["key_dt"] = np.int32 if small else np.int64
        return out

    def _tail(
        self, steps: list[_Step], where: str, samp: np.ndarray, pos: np.ndarray, dlt: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-state (sdc, correct, dev) of single-position changes pushed through ``steps``.

        State ``r`` is sample ``samp[r]`` with tensor ``where`` changed by ``dlt[r]``
        at flat position ``pos[r]``. States run in chunks, as rows of full
        (faulty) tensor values held in floats: a Dense step is a BLAS matmul
        plus bias, an elementwise step an exact kernel. A power-of-two
        requantiser right after a Dense is folded into it (weights and bias
        pre-scaled by ``2**-shift``, exact), leaving round-and-clip.
        :meth:`_tail_program` bounds every value on the way and picks float32
        when all stay below 2**23, float64 below 2**51 (every sum and product is
        then an exact integer, or an exact multiple of the power-of-two scale),
        else int64.
        """
        r_n = samp.size
        sdc = np.zeros(r_n, bool)
        cor = np.zeros(r_n, bool)
        dev = np.zeros(r_n, np.int64)
        if not r_n:
            return sdc, cor, dev
        prog, dt = self._tail_program(steps, where, int(np.abs(dlt).max()))
        widths = [self._flat[where].shape[1]] + [self._flat[s.out].shape[1] for s in steps]
        chunk = max(1, _CHUNK // max(widths))
        narrow = bool(prog) and prog[-1].get("narrow", False)
        out_t = self._typed_t(self.ref.out, dt) if narrow else self._typed(self.ref.out, dt)
        for r0 in range(0, r_n, chunk):
            r1 = min(r0 + chunk, r_n)
            s, p = samp[r0:r1], pos[r0:r1]
            d = dlt[r0:r1].astype(dt)
            full: np.ndarray | None = None  # (states, positions), or (positions, states)
            for op in prog:
                kind = op["kind"]
                if kind == "perm":
                    if full is None:
                        p = op["perm"][p]
                    else:
                        full = full[:, op["inv"]]
                elif kind == "dense":
                    if full is None:  # one changed input: a row of the weights
                        if op["narrow"]:
                            full = op["base"][:, s]
                            full += op["w"][:, p] * d[None, :]
                        else:
                            full = op["base"][s]
                            full += d[:, None] * op["w"][p]
                    elif op["narrow"]:
                        full = op["w"] @ full.T
                        full += op["b"][:, None]
                    else:
                        full = full @ op["w"]
                        full += op["b"]
                else:
                    if full is None:
                        full = self._typed(self._flat[op["inp"]], dt)[s]
                        full[np.arange(s.size), p] += d
                    if kind == "round":
                        full = op["round"](full, out=full)
                        full = np.clip(full, op["lo"], op["hi"], out=full)
                    else:
                        elem: _Elem = op["elem"]
                        shaped = full.reshape(s.size, *elem.shape)
                        shaped = elem.ints(shaped) if dt == np.int64 else elem.floats(shaped)
                        full = shaped.reshape(s.size, -1)
            sl = slice(r0, r1)
            if full is None:
                # still one changed position per state: the output itself
                one = np.arange(s.size)
                sdc[sl], cor[sl], dev[sl] = self.ref.outcome(s, one, p, d.astype(np.int64))
                continue
            axis = 0 if narrow else 1
            top = full.argmax(axis=axis)
            full -= out_t[:, s] if narrow else out_t[s]  # now the change
            if self.ref.sdc == "any":
                sdc[sl] = (full != 0).any(axis=axis)
            else:
                sdc[sl] = top != self.ref.top1[s]
            if self.ref.labels is not None:
                cor[sl] = top == self.ref.labels[s]
            dev[sl] = np.abs(full).max(axis=axis)
        # a state whose output did not change scores as golden
        if self.ref.labels is not None:
            same = dev == 0
            cor[same] = self.ref.correct[samp[same]]
        return sdc, cor, dev

    def _typed(self, a: np.ndarray, dt: Any) -> np.ndarray:
        """``a`` as ``dt`` (cached: traces, weights and outputs are reused per chunk)."""
        if a.dtype == dt:
            return a
        key = (id(a), dt)
        hit = self._typed_cache.get(key)
        if hit is None or hit[0] is not a:
            hit = (a, a.astype(dt))
            self._typed_cache[key] = hit
        return hit[1]

    def _typed_t(self, a: np.ndarray, dt: Any) -> np.ndarray:
        """``a.T`` as a contiguous ``dt`` array (cached like :meth:`_typed`)."""
        key = (id(a), "T", dt)
        hit = self._typed_cache.get(key)  # type: ignore[call-overload]
        if hit is None or hit[0] is not a:
            hit = (a, np.ascontiguousarray(a.T, dtype=dt))
            self._typed_cache[key] = hit  # type: ignore[index]
        return hit[1]

    def _tail_program(
        self, steps: list[_Step], where: str, big: int
    ) -> tuple[list[dict[str, Any]], Any]:
        """The ops :meth:`_tail` runs for changes up to ``big`` at ``where``, and their dtype.

        Value bounds: values at ``where`` are within its trace range widened by
        ``big``; a Dense step's outputs within ``max|x| * max column sum |W| +
        max|bias|``; an elementwise step is monotone, so its outputs lie
        between its values at the ends of its input range (evaluated on the
        integer ops), and its intermediates below :attr:`_Elem.bound`.
        """
        big = 1 << int(big).bit_length()  # one program per power-of-two bucket
        key = (tuple(id(st) for st in steps), where, big)
        hit = self._programs.get(key)
        if hit is not None:
            return hit
        lim32, lim64 = 2**23, int(_FLOAT_EXACT)
        b = int(np.abs(self._flat[where]).max(initial=0)) + big
        need = [b, int(np.abs(self.ref.out).max(initial=0)) + 1]
        floats_ok = True
        for st in steps:
            if b >= lim64:
                floats_ok = False
                break
            if st.kind == "dense":
                op: Dense = st.ops[0]  # type: ignore[assignment]
                bias = np.abs(np.asarray(op.effective_bias(), np.float64)).max(initial=0)
                b = b * st.w_bound + int(bias)
            elif st.kind == "elem":
                elem: _Elem = st.elem  # type: ignore[assignment]
                floats_ok &= elem.use_float and b < elem.bound
                need.append(int(b * elem.gain) + 1)
                if b >= lim64:
                    floats_ok = False
                    break
                ends = [
                    elem.ints(np.full((1, *elem.shape), v, np.int64)).reshape(-1) for v in (-b, b)
                ]
                b = int(max(np.abs(ends[0]).max(initial=0), np.abs(ends[1]).max(initial=0)))
            need.append(b)
        top = max(need)
        dt: Any = np.int64
        if floats_ok and top < lim64:
            dt = np.float32 if top < lim32 else np.float64
        prog = self._compile_tail(steps, dt)
        self._programs[key] = (prog, dt)
        return prog, dt

    def _compile_tail(self, steps: list[_Step], dt: Any) -> list[dict[str, Any]]:
        """Typed weights, biases, traces and kernels of each tail step (see :meth:`_tail`)."""
        prog: list[dict[str, Any]] = []
        i = 0
        while i < len(steps):
            st = steps[i]
            if st.kind == "perm":
                prog.append({"kind": "perm", "perm": st.perm, "inv": st.inv})
                i += 1
                continue
            if st.kind == "elem":
                prog.append({"kind": "elem", "elem": st.elem, "inp": st.inp})
                i += 1
                continue
            op: Dense = st.ops[0]  # type: ignore[assignment]
            w = st.w.astype(np.float64)  # type: ignore[union-attr]
            bias = np.broadcast_to(
                np.asarray(op.effective_bias(), np.float64), (w.shape[1],)
            ).copy()
            base = self._flat[st.out].astype(np.float64)
            nxt = steps[i + 1] if i + 1 < len(steps) else None
            fold = self._foldable(nxt) if dt != np.int64 else None
            last = i == len(steps) - 1
            narrow = last and w.shape[1] <= 32
            entry: dict[str, Any] = {"kind": "dense", "narrow": narrow}
            if fold is not None:
                offset, scale, rnd, lo, hi = fold
                # exact: adding integers, then scaling by a power of two
                w, bias, base = w * scale, (bias + offset) * scale, (base + offset) * scale
            if narrow:
                entry.update(w=np.ascontiguousarray(w.T, dt), b=bias.astype(dt))
                entry["base"] = np.ascontiguousarray(base.T, dt)
            else:
                entry.update(w=w.astype(dt), b=bias.astype(dt), base=base.astype(dt))
            prog.append(entry)
            i += 1
            if fold is not None:
                prog.append({"kind": "round", "round": rnd, "lo": dt(lo), "hi": dt(hi)})
                i += 1
        return prog

    @staticmethod
    def _foldable(st: _Step | None) -> tuple[float, float, Any, float, float] | None:
        """(offset, 2**-shift, rounding, lo, hi) if ``st`` is ``[ReLU] -> requantiser`` with
        unit multiplier, a right shift and scalar constants, the ReLU being redundant
        (the requantiser maps 0 to its lower clip); else None."""
        if st is None or st.kind != "elem":
            return None
        ops = st.ops
        relu = len(ops) == 2 and isinstance(ops[0], Relu)
        q = ops[-1]
        if len(ops) not in (1, 2) or (len(ops) == 2 and not relu) or not isinstance(q, Requant):
            return None
        mult = np.asarray(q.mult)
        off = np.asarray(q.offset)
        if mult.size != 1 or int(mult.reshape(-1)[0]) != 1 or off.size != 1 or q.shift <= 0:
            return None
        if relu and int(np.asarray(q(np.zeros(1, np.int64))).reshape(-1)[0]) != q.lo:
            return None  # the ReLU matters: keep the general kernel
        return (
            float(off.reshape(-1)[0]),
            2.0 ** (-q.shift),
            _FLOAT_ROUND_OUT[q.rounding],
            float(q.lo),
            float(q.hi),
        )

    # ---- stored parameters through the chain engine
    def _chain_params(
        self,
        op: Dense,
        param: str,
        chain: list[_Step],
        table: SiteTable,
        rows: np.ndarray,
        tally: Tally,
        progress: Any,
    ) -> None:
        cout = op.weight.shape[-1]
        idx = table.index[rows]
        delta = table.deltas(op, param, rows)
        if param == "bias":
            chan = idx
            eff = delta << op.bias_shift
            row_of = np.zeros(rows.size, np.int64)
        else:
            chan = idx % cout
            ls = np.broadcast_to(np.asarray(op.weight_lshift, np.int64).reshape(-1), (cout,))
            eff = (delta << ls[chan]) << op.acc_shift
            row_of = idx // cout
        # stuck-at faults that match the stored bits change nothing: never listed
        order = np.lexsort((chan, row_of))
        order = order[eff[order] != 0]
        x = self._flat[op.inputs[0]]
        x_t = np.ascontiguousarray(x.T)
        x_big = int(np.abs(x).max(initial=0))
        e_big = int(np.abs(eff).max(initial=0))
        small = x_big * e_big < 2**31 - 2
        n = self.n

        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, int]]:
            # fault ids are positions in `order`, so pairs come out sorted by fault
            if param == "bias":
                dt = np.int32 if e_big < 2**31 - 2 else np.int64
                step = max(1, _CHUNK // n)
                for c0 in range(0, order.size, step):
                    sel = np.arange(c0, min(c0 + step, order.size))
                    f = order[sel]
                    yield sel, chan[f], None, eff[f].astype(dt)[:, None], e_big
                return
            dt = np.int32 if small else np.int64
            r = row_of[order]
            bounds = np.r_[0, np.flatnonzero(np.diff(r)) + 1, order.size]
            for a, b in itertools.pairwise(bounds):
                xi = x_t[r[a]]
                samp = np.flatnonzero(xi)  # a zero input masks every fault of its row
                if not samp.size:
                    continue
                xs = xi[samp].astype(dt)
                step = max(1, _CHUNK // samp.size)
                for c0 in range(a, b, step):
                    sel = np.arange(c0, min(c0 + step, b))
                    e = eff[order[sel]].astype(dt)
                    yield sel, chan[order[sel]], samp, e[:, None] * xs[None, :], x_big * e_big

        c, s, d = self._inject(op.output, chain, chunks(), order.size)
        _merge_counts(tally, rows[order], c, s, d)
        if progress is not None:
            progress.update(rows.size)

    # ---- transient tensor faults through the chain engine
    def _chain_tensor(
        self,
        t: str,
        chain: list[_Step],
        table: SiteTable,
        rows: np.ndarray,
        tally: Tally,
        progress: Any,
    ) -> None:
        ftype = self.g.tensors[t].type
        base_t = np.ascontiguousarray(self._flat[t].T)  # (P, N)
        idx = table.index[rows]
        step = max(1, _CHUNK // self.n)
        big = 1 << ftype.width

        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, int]]:
            for c0 in range(0, rows.size, step):
                sel = np.arange(c0, min(c0 + step, rows.size))
                r = rows[sel]
                v = base_t[idx[sel]]
                bad = fault_values(
                    v,
                    ftype.width,
                    ftype.signed,
                    table.bit[r].astype(np.int64)[:, None],
                    table.kind[r].astype(np.int64)[:, None],
                    table.nbits[r].astype(np.int64)[:, None],
                )
                yield sel, idx[sel], None, bad - v, big

        c, s, d = self._inject(t, chain, chunks(), rows.size)
        _merge_counts(tally, rows, c, s, d)
        if progress is not None:
            progress.update(rows.size)

    # ---- the general walker (any graph)
    def _walker_cap(self) -> int:
        """Faults the walker runs together: bounded so one batch of records of the
        largest tensor stays within ``_MAX_BATCH_ELEMS`` elements (at most 256)."""
        biggest = max(int(np.prod(t.shape, dtype=np.int64)) for t in self.g.tensors.values())
        return max(1, min(256, _MAX_BATCH_ELEMS // max(1, self.n * biggest)))

    def _walker_params(
        self,
        op: Dense,
        param: str,
        table: SiteTable,
        rows: np.ndarray,
        tally: Tally,
        progress: Any,
    ) -> None:
        n = self.n
        k = self._op_pos[id(op)]
        src = self.env[op.inputs[0]]
        base_out = self.env[op.output]
        out_shape = base_out.shape[1:]
        cout = out_shape[-1]
        spatial = int(np.prod(out_shape[:-1], dtype=np.int64))
        base_cols = base_out.reshape(n * spatial, cout)
        idx = table.index[rows]
        delta = table.deltas(op, param, rows)
        chan = idx if param == "bias" else idx % cout
        cap = self._walker_cap()
        order = np.argsort(chan, kind="stable")
        bounds = np.flatnonzero(np.diff(chan[order])) + 1
        for group in np.split(order, bounds):
            if not group.size:
                continue
            j = int(chan[group[0]])
            pos = np.arange(spatial, dtype=np.int64) * cout + j
            for c0 in range(0, group.size, cap):
                part = group[c0 : c0 + cap]
                ch = _column_change(op, src, param, idx[part], delta[part])
                val = base_cols[:, j][None, :] + ch
                fa, sa, out_pos, out_val = self._walker.run(
                    k + 1, op.output, pos, val.reshape(part.size, n, spatial)
                )
                self._tally_dense_pairs(tally, rows[part], fa, sa, out_pos, out_val)
                if progress is not None:
                    progress.update(part.size)

    def _walker_tensor(
        self, t: str, table: SiteTable, rows: np.ndarray, tally: Tally, progress: Any
    ) -> None:
        ftype = self.g.tensors[t].type
        start = self._producer.get(t, -1) + 1
        base = self._flat[t]
        idx = table.index[rows]
        order = np.argsort(idx, kind="stable")
        bounds = np.flatnonzero(np.diff(idx[order])) + 1
        cap = self._walker_cap()
        for group in np.split(order, bounds):
            if not group.size:
                continue
            e = int(idx[group[0]])
            for c0 in range(0, group.size, cap):
                part = group[c0 : c0 + cap]
                r = rows[part]
                v = base[:, e][None, :]
                bad = fault_values(
                    v,
                    ftype.width,
                    ftype.signed,
                    table.bit[r].astype(np.int64)[:, None],
                    table.kind[r].astype(np.int64)[:, None],
                    table.nbits[r].astype(np.int64)[:, None],
                )
                fa, sa, out_pos, out_val = self._walker.run(
                    start, t, np.array([e], np.int64), bad[:, :, None]
                )
                self._tally_dense_pairs(tally, r, fa, sa, out_pos, out_val)
                if progress is not None:
                    progress.update(part.size)

    def _walker_table(
        self, op: Lookup, table: SiteTable, rows: np.ndarray, tally: Tally, progress: Any
    ) -> None:
        """ROM faults of a Lookup op: entry ``i`` changes the output wherever the input
        code is ``lo + i`` (any number of positions per sample); the walker takes it
        from there. Entries no sample reads change nothing."""
        k = self._op_pos[id(op)]
        x = self._flat[op.inputs[0]]
        base = self._flat[op.output]
        codes, _ = table_storage(self.g, op)
        idx = table.index[rows]
        new = codes.reshape(-1)[idx] + table.deltas(op, "table", rows, self.g)  # type: ignore[arg-type]
        cap = self._walker_cap()
        order = np.argsort(idx, kind="stable")
        bounds = np.flatnonzero(np.diff(idx[order])) + 1
        for group in np.split(order, bounds):
            if not group.size:
                continue
            hit = x == int(op.lo) + int(idx[group[0]])  # (N, P): where this entry is read
            pos = np.flatnonzero(hit.any(axis=0))
            if pos.size:
                h = hit[:, pos][None]
                b = base[:, pos][None]
                for c0 in range(0, group.size, cap):
                    part = group[c0 : c0 + cap]
                    val = np.where(h, new[part][:, None, None], b)
                    fa, sa, out_pos, out_val = self._walker.run(k + 1, op.output, pos, val)
                    self._tally_dense_pairs(tally, rows[part], fa, sa, out_pos, out_val)
            if progress is not None:
                progress.update(group.size)

    def _tally_dense_pairs(
        self,
        tally: Tally,
        rows: np.ndarray,
        fa: np.ndarray,
        sa: np.ndarray,
        out_pos: np.ndarray,
        out_val: np.ndarray,
    ) -> None:
        """Tally the walker's output: pair ``a`` has output positions ``out_pos`` = ``out_val[a]``."""
        if not fa.size:
            return
        ref = self.ref
        base = ref.out[sa]
        full = base.copy()
        full[:, out_pos] = out_val
        diff = full != base
        changed = diff.any(axis=1)
        top = full.argmax(axis=1)
        sdc = changed if ref.sdc == "any" else top != ref.top1[sa]
        correct = np.zeros(fa.size, bool) if ref.labels is None else top == ref.labels[sa]
        dev = np.abs(full - base).max(axis=1)
        order = np.argsort(fa, kind="stable")
        tally.add(rows[fa[order]], sa[order], sdc[order], correct[order], dev[order])


def _merge_counts(
    tally: Tally, rows: np.ndarray, n_correct: np.ndarray, n_sdc: np.ndarray, dev: np.ndarray
) -> None:
    """Add a group's integer counts (one per entry of ``rows``) into the campaign's tally."""
    tally.n_sdc[rows] += n_sdc
    tally.n_correct[rows] += n_correct - tally.ref.n_correct
    tally.dev[rows] = np.maximum(tally.dev[rows], dev)
