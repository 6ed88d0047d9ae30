"""Parameter fault campaigns on the golden integer model.

:func:`run_param_campaign` measures, for every fault site, the accuracy drop,
the silent-data-corruption (SDC) rate (fraction of samples whose top-1 class
differs from the fault-free golden model's) and the largest output deviation
in output LSBs. It gives exactly the numbers of :func:`run_param_campaign_naive`
(copy the model, corrupt one code, run everything), much faster:

* **Upstream is cached.** The fault-free trace is computed once; a fault in
  layer ``L`` only touches ops after ``L``.
* **Linearity.** A fault changes one weight ``W[i, j]`` by ``delta`` (or one
  bias ``b[j]``), so the layer's output changes only in output channel ``j``,
  by ``x[:, i] * delta`` (Conv: the im2col patch column ``i`` times ``delta``).
  Many faults of one layer and channel are evaluated at once as ``(F, N, ...)``
  arrays.
* **Sparse propagation.** Downstream, only what differs from the trace is
  carried: the (fault, sample) pairs still affected and, per tensor, the
  changed positions. Elementwise ops (requant, ReLU, affine) run on those
  positions alone, layout ops just move them, pooling runs on the changed
  channels, and the next Dense / Conv adds a low-rank update
  ``(x' - x)[:, P] @ W[P, :]``. Pairs whose values fall back onto the trace
  (requantisation rounds small changes away) are dropped; other ops (residual
  adds, ...) run densely per pair.
* **Deduplication.** After the first requantisation, faults of one channel
  collapse onto a few distinct activation values per sample; each distinct
  (sample, values) state is computed once.

All of it is exact integer arithmetic, so fast and naive results are equal
array for array.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edgeml.errors import ConfigError, CorruptFileError, InputRangeError
from edgeml.golden import (
    Affine,
    Bipolar,
    Conv,
    Dense,
    GoldenModel,
    MaxPool,
    Op,
    Relu,
    Requant,
    Reshape,
    Transpose,
)

from .inject import KIND_CODES, apply_bit_fault, fault_deltas
from .sites import (
    FAULT_KINDS,
    PARAMS,
    FaultSite,
    enumerate_param_sites,
    param_storage,
)

log = logging.getLogger(__name__)

FORMAT = "edgeml.fault_campaign"
FORMAT_VERSION = 1
#: Largest int64 array (elements) one batch of faults may allocate; bounds memory (~256 MB).
_MAX_BATCH_ELEMS = 1 << 25
#: Widest record (sample id + changed values) the engine deduplicates; wider ones rarely repeat.
_DEDUPE_MAX_WIDTH = 65


# ----------------------------------------------------------------------------- result


class FaultRecord(NamedTuple):
    """One fault and what it did (a row of :meth:`CampaignResult.top`)."""

    site: FaultSite
    acc_drop: float
    sdc_rate: float
    max_dev: int


_ARRAYS: tuple[str, ...] = (
    "layer",
    "param",
    "index",
    "bit",
    "kind",
    "acc_drop",
    "sdc_rate",
    "max_dev",
)


@dataclass
class CampaignResult:
    """Per-fault records of a parameter campaign, one array element per fault.

    ``layer`` indexes ``layer_names``; ``param`` indexes :data:`PARAMS`
    (0 weight, 1 bias); ``kind`` indexes :data:`FAULT_KINDS`; ``index`` is the
    flat code index and ``bit`` the bit position (0 = LSB). ``acc_drop`` is
    baseline accuracy minus faulty accuracy (a fraction; NaN without labels),
    ``sdc_rate`` the fraction of samples whose top-1 class changed, and
    ``max_dev`` the largest ``|faulty - golden|`` output, in output LSBs.
    """

    layer: np.ndarray
    param: np.ndarray
    index: np.ndarray
    bit: np.ndarray
    kind: np.ndarray
    acc_drop: np.ndarray
    sdc_rate: np.ndarray
    max_dev: np.ndarray
    baseline_accuracy: float
    n_samples: int
    layer_names: list[str]
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        dtypes = {
            "layer": np.int32,
            "param": np.int8,
            "index": np.int64,
            "bit": np.int16,
            "kind": np.int8,
            "acc_drop": np.float64,
            "sdc_rate": np.float64,
            "max_dev": np.int64,
        }
        for name, dt in dtypes.items():
            setattr(self, name, np.asarray(getattr(self, name), dtype=dt).reshape(-1))
        n = self.layer.size
        for name in _ARRAYS:
            if getattr(self, name).size != n:
                raise ConfigError(
                    f"CampaignResult.{name} has {getattr(self, name).size} records, "
                    f"expected {n} (one per fault, like 'layer')"
                )
        self.layer_names = [str(s) for s in self.layer_names]
        if n and (self.layer.min() < 0 or self.layer.max() >= len(self.layer_names)):
            raise ConfigError(
                f"CampaignResult.layer holds indices in [{self.layer.min()}, {self.layer.max()}] "
                f"but there are {len(self.layer_names)} layer names"
            )
        for name, allowed in (("param", PARAMS), ("kind", FAULT_KINDS)):
            arr = getattr(self, name)
            if n and (arr.min() < 0 or arr.max() >= len(allowed)):
                raise ConfigError(f"CampaignResult.{name} codes must index {allowed}")

    def __len__(self) -> int:
        return int(self.layer.size)

    @property
    def faults_per_s(self) -> float:
        return len(self) / self.seconds if self.seconds > 0 else math.inf

    def layer_labels(self) -> np.ndarray:
        """Layer name of each record (strings), e.g. for the HTML report."""
        return np.asarray(self.layer_names, dtype=str)[self.layer]

    def param_labels(self) -> np.ndarray:
        """``"weight"`` / ``"bias"`` of each record."""
        return np.asarray(PARAMS, dtype=str)[self.param]

    def site(self, i: int) -> FaultSite:
        return FaultSite(
            self.layer_names[int(self.layer[i])],
            PARAMS[int(self.param[i])],  # type: ignore[arg-type]
            int(self.index[i]),
            int(self.bit[i]),
            FAULT_KINDS[int(self.kind[i])],  # type: ignore[arg-type]
        )

    def sites(self) -> list[FaultSite]:
        """The campaign's fault list, to replay it (e.g. with the naive engine or on RTL)."""
        return [self.site(i) for i in range(len(self))]

    def _select(self, param: str | None) -> np.ndarray:
        if param is None:
            return np.ones(len(self), bool)
        if param not in PARAMS:
            raise ConfigError(f"param must be one of {PARAMS} or None, got {param!r}")
        return self.param == PARAMS.index(param)

    def per_layer(self, param: str | None = None) -> dict[str, float]:
        """Mean SDC rate per layer (network order), over ``param`` faults or all of them."""
        sel = self._select(param)
        out: dict[str, float] = {}
        for li, name in enumerate(self.layer_names):
            m = sel & (self.layer == li)
            if m.any():
                out[name] = float(self.sdc_rate[m].mean())
        return out

    def per_bit(self, param: str = "weight", layer: str | None = None) -> dict[int, float]:
        """Mean SDC rate per bit position (0 = LSB) of ``param`` codes, in one layer or all."""
        sel = self._select(param)
        if layer is not None:
            if layer not in self.layer_names:
                raise ConfigError(f"unknown layer {layer!r}; campaign layers: {self.layer_names}")
            sel &= self.layer == self.layer_names.index(layer)
        bits = np.unique(self.bit[sel])
        return {int(b): float(self.sdc_rate[sel & (self.bit == b)].mean()) for b in bits}

    def top(self, n: int = 20) -> list[FaultRecord]:
        """The ``n`` most damaging faults: by SDC rate, then accuracy drop, then output deviation."""
        acc = np.nan_to_num(self.acc_drop, nan=0.0)
        order = np.lexsort((-self.max_dev, -acc, -self.sdc_rate))[: max(int(n), 0)]
        return [
            FaultRecord(
                self.site(int(i)),
                float(self.acc_drop[i]),
                float(self.sdc_rate[i]),
                int(self.max_dev[i]),
            )
            for i in order
        ]

    # ---- files
    def save(self, path: str | Path) -> Path:
        """Write one ``.npz``: the per-fault arrays plus a JSON metadata string (``meta``)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz")
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "baseline_accuracy": self.baseline_accuracy,
            "n_samples": self.n_samples,
            "n_faults": len(self),
            "layer_names": self.layer_names,
            "params": list(PARAMS),
            "kinds": list(FAULT_KINDS),
            "seconds": self.seconds,
            "meta": self.meta,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CampaignResult:
        """Read a file written by :meth:`save`; anything else raises :class:`CorruptFileError`."""
        path = Path(path)
        if not path.is_file():
            raise CorruptFileError(f"fault campaign file '{path}' does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("meta", *_ARRAYS) if k not in z.files]
                if missing:
                    raise CorruptFileError(
                        f"'{path}' is not an edgeml fault campaign: missing {missing}"
                    )
                meta = json.loads(str(z["meta"][()]))
                arrays = {k: z[k] for k in _ARRAYS}
        except CorruptFileError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise CorruptFileError(
                f"'{path}' is not a readable edgeml fault campaign (.npz): {exc}. "
                "Re-run the campaign to regenerate it."
            ) from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CorruptFileError(f"'{path}' is not an edgeml fault campaign (format tag missing)")
        if meta.get("version") != FORMAT_VERSION:
            raise CorruptFileError(
                f"'{path}' has campaign format version {meta.get('version')}; this edgeml "
                f"reads version {FORMAT_VERSION}"
            )
        if list(meta.get("params", [])) != list(PARAMS) or list(meta.get("kinds", [])) != list(
            FAULT_KINDS
        ):
            raise CorruptFileError(f"'{path}' uses a different param/kind encoding")
        try:
            return cls(
                **arrays,
                baseline_accuracy=float(meta["baseline_accuracy"]),
                n_samples=int(meta["n_samples"]),
                layer_names=list(meta["layer_names"]),
                seconds=float(meta["seconds"]),
                meta=dict(meta.get("meta") or {}),
            )
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"'{path}' holds inconsistent campaign data: {exc}") from exc


# ----------------------------------------------------------------------------- shared pieces


@dataclass
class _Reference:
    """Fault-free golden outputs and what every fault is scored against."""

    out: np.ndarray  # (N, K) output codes, flattened per sample
    top1: np.ndarray  # (N,)
    labels: np.ndarray | None
    accuracy: float
    n_correct: int

    @classmethod
    def build(cls, out: np.ndarray, labels: np.ndarray | None) -> _Reference:
        flat = out.reshape(out.shape[0], -1)
        top1 = flat.argmax(axis=1)
        n = flat.shape[0]
        n_correct = 0 if labels is None else int(np.count_nonzero(top1 == labels))
        acc = math.nan if labels is None else n_correct / n
        return cls(flat, top1, labels, acc, n_correct)

    def _finish(
        self, n_correct: np.ndarray, n_sdc: np.ndarray, dev: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Integer counts / n in one place, so every engine gets bit-identical floats.
        n = self.out.shape[0]
        sdc = n_sdc / n
        if self.labels is None:
            acc_drop = np.full(n_sdc.shape, math.nan)
        else:
            acc_drop = self.accuracy - n_correct / n
        return acc_drop, sdc, dev

    def score(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(acc_drop, sdc_rate, max_dev) of dense faulty outputs ``out``, shape (F, N, ...)."""
        f, n = out.shape[:2]
        flat = out.reshape(f, n, -1)
        top = flat.argmax(axis=2)
        n_sdc = np.count_nonzero(top != self.top1, axis=1)
        n_correct = (
            np.zeros(f, np.int64)
            if self.labels is None
            else np.count_nonzero(top == self.labels, axis=1)
        )
        dev = np.abs(flat - self.out).max(axis=(1, 2)) if flat.size else np.zeros(f, np.int64)
        return self._finish(n_correct, n_sdc, dev)

    def score_pairs(
        self, n_faults: int, fault: np.ndarray, sample: np.ndarray, pos: np.ndarray, val: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores from sparse outputs: pair ``a`` = (fault[a], sample[a]) has its output
        positions ``pos`` replaced by ``val[a]``; every other (fault, sample) is fault-free."""
        base = self.out[sample]
        full = base.copy()
        full[:, pos] = val
        top = full.argmax(axis=1)
        n_sdc = np.bincount(fault[top != self.top1[sample]], minlength=n_faults)
        n_correct = np.full(n_faults, self.n_correct, np.int64)
        if self.labels is not None:
            lab = self.labels[sample]
            n_correct -= np.bincount(fault[self.top1[sample] == lab], minlength=n_faults)
            n_correct += np.bincount(fault[top == lab], minlength=n_faults)
        dev = np.zeros(n_faults, np.int64)
        if fault.size:
            np.maximum.at(dev, fault, np.abs(val - base[:, pos]).max(axis=1))
        return self._finish(n_correct, n_sdc, dev)


@dataclass
class _SiteTable:
    """Fault sites as arrays: op position in ``g.param_ops``, param, flat index, bit, kind."""

    layer: np.ndarray
    param: np.ndarray
    index: np.ndarray
    bit: np.ndarray
    kind: np.ndarray
    layer_names: list[str]

    def __len__(self) -> int:
        return int(self.layer.size)

    @classmethod
    def build(cls, g: GoldenModel, sites: Sequence[FaultSite] | None) -> _SiteTable:
        ops = g.param_ops
        names = [op.name for op in ops]
        if sites is None:
            sites = enumerate_param_sites(g)
        pos = {n: i for i, n in enumerate(names)}
        n = len(sites)
        layer = np.empty(n, np.int32)
        param = np.empty(n, np.int8)
        index = np.empty(n, np.int64)
        bit = np.empty(n, np.int16)
        kind = np.empty(n, np.int8)
        for k, s in enumerate(sites):
            if not isinstance(s, FaultSite):
                raise ConfigError(f"sites must be FaultSite values, got {type(s).__name__}")
            li = pos.get(s.layer)
            if li is None:
                raise ConfigError(
                    f"fault site {s} names layer '{s.layer}', which holds no weights; "
                    f"the design's weight layers are {names}"
                )
            layer[k], param[k], index[k] = li, PARAMS.index(s.param), s.index
            bit[k], kind[k] = s.bit, KIND_CODES[s.kind]
        for li, op in enumerate(ops):
            for pi, p in enumerate(PARAMS):
                m = (layer == li) & (param == pi)
                if not m.any():
                    continue
                codes, ftype = param_storage(op, p)
                if index[m].max() >= codes.size or bit[m].max() >= ftype.width:
                    raise ConfigError(
                        f"fault sites in {op.name}.{p} reach index {index[m].max()} / bit "
                        f"{bit[m].max()}, but it has {codes.size} codes of {ftype.width} bits"
                    )
        return cls(layer, param, index, bit, kind, names)


def _check_inputs(
    g: GoldenModel, x_codes: np.ndarray, labels: np.ndarray | Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray | None]:
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


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="fault", desc=desc, leave=False)


def _result(
    table: _SiteTable,
    ref: _Reference,
    scores: tuple[np.ndarray, np.ndarray, np.ndarray],
    seconds: float,
    meta: dict[str, Any],
) -> CampaignResult:
    return CampaignResult(
        layer=table.layer,
        param=table.param,
        index=table.index,
        bit=table.bit,
        kind=table.kind,
        acc_drop=scores[0],
        sdc_rate=scores[1],
        max_dev=scores[2],
        baseline_accuracy=ref.accuracy,
        n_samples=int(ref.out.shape[0]),
        layer_names=table.layer_names,
        seconds=seconds,
        meta=meta,
    )


# ----------------------------------------------------------------------------- naive engine


def run_param_campaign_naive(
    g: GoldenModel,
    x_codes: np.ndarray,
    labels: np.ndarray | Sequence[int] | None,
    sites: Sequence[FaultSite] | None = None,
    *,
    progress: bool = True,
) -> CampaignResult:
    """The reference engine: per fault, copy the model, corrupt one code, run it all.

    Slow by design; it is the oracle :func:`run_param_campaign` is tested
    against, and the baseline its speed is measured against.
    """
    t0 = time.perf_counter()
    x, y = _check_inputs(g, x_codes, labels)
    ref = _Reference.build(np.asarray(g.run(x)), y)
    table = _SiteTable.build(g, sites)
    ops = g.param_ops
    n = len(table)
    acc_drop, sdc, dev = np.empty(n), np.empty(n), np.empty(n, np.int64)
    with _progress(n, progress, "faults (naive)") as bar:
        for k in range(n):
            op = ops[int(table.layer[k])]
            p = PARAMS[int(table.param[k])]
            codes, ftype = param_storage(op, p)
            bad = apply_bit_fault(
                codes,
                ftype.width,
                ftype.signed,
                int(table.index[k]),
                int(table.bit[k]),
                FAULT_KINDS[int(table.kind[k])],
            )
            faulty_op = dataclasses.replace(op, **{p: bad})
            faulty = dataclasses.replace(g, ops=[faulty_op if o is op else o for o in g.ops])
            out = np.asarray(faulty.run(x))
            a, s, d = ref.score(out[None])
            acc_drop[k], sdc[k], dev[k] = a[0], s[0], d[0]
            bar.update(1)
    seconds = time.perf_counter() - t0
    log.info("naive fault campaign: %d faults in %.2f s", n, seconds)
    return _result(
        table, ref, (acc_drop, sdc, dev), seconds, {"engine": "naive", "source": g.source}
    )


# ----------------------------------------------------------------------------- fast engine


def _channel_sliced(op: Op, chan: np.ndarray, n_chan: int) -> Op | None:
    """A copy of an elementwise op whose per-channel constants are gathered at ``chan``.

    Used to run the op on a few positions (last axis = positions) instead of a
    whole tensor. ``None`` if the op is not a known elementwise op.
    """
    if isinstance(op, (Relu, Bipolar)):
        return op
    if not isinstance(op, (Requant, Affine)):
        return None
    repl: dict[str, np.ndarray] = {}
    for name in ("mult", "offset"):
        v = np.asarray(getattr(op, name))
        if v.size == 1:
            continue
        if v.size != n_chan:
            return None
        repl[name] = v.reshape(-1)[chan]
    return dataclasses.replace(op, **repl) if repl else op


def _is_identity(pos: np.ndarray, size: int) -> bool:
    """True if ``pos`` lists every position of a ``size``-element tensor in order."""
    return pos.size == size and (size == 0 or (pos[0] == 0 and bool(np.all(np.diff(pos) == 1))))


class _Walker:
    """Propagates faulty values of one tensor through the ops downstream, sparsely.

    State: *records*, one per distinct faulty state of one sample: ``sample``
    (R,) holds each record's sample, and ``mod`` maps each live tensor name to
    ``(pos, val)``: the flat per-sample positions that differ from the
    fault-free trace and their values, shape ``(R, len(pos))``. Each
    (fault, sample) pair points at its record, or at none once its values fall
    back onto the trace (its output is then the golden one). Most faults touch
    few samples (a weight only matters where its input is non-zero;
    requantisation rounds small changes away), so the state shrinks quickly.
    """

    def __init__(self, g: GoldenModel, env: dict[str, np.ndarray]) -> None:
        self.g = g
        self.env = env
        self._perm: dict[int, np.ndarray] = {}
        self._weff: dict[int, np.ndarray] = {}
        # Index of the last op reading each tensor: a faulty tensor no later op
        # reads is dropped, so it no longer keeps its pairs alive.
        self._last_use: dict[str, int] = {g.output_name: len(g.ops)}
        for k, op in enumerate(g.ops):
            for i in op.inputs:
                self._last_use[i] = max(self._last_use.get(i, -1), k)

    def _base(self, name: str, sample: np.ndarray, pos: np.ndarray | None = None) -> np.ndarray:
        """Fault-free values of ``name`` for the given samples (at ``pos``): (pairs, size)."""
        b = self.env[name]
        b = b.reshape(b.shape[0], -1)
        if pos is not None and not _is_identity(pos, b.shape[1]):
            b = b[:, pos]  # gather columns first: cheaper when few positions changed
        return b[sample]

    def _full(self, name: str, mod: dict, sample: np.ndarray) -> np.ndarray:
        """Dense faulty tensor for each pair, in the op's layout: (pairs, *shape)."""
        full = self._base(name, sample)
        if name in mod:
            pos, val = mod[name]
            full[:, pos] = val
        return full.reshape((sample.size, *self.env[name].shape[1:]))

    def _layout_map(self, k: int, op: Op, in_name: str) -> np.ndarray:
        """For a pure permutation op: new flat position of each old flat position."""
        if k not in self._perm:
            shape = self.env[in_name].shape[1:]
            src = np.asarray(op(np.arange(int(np.prod(shape)), dtype=np.int64).reshape(1, *shape)))
            inv = np.empty(src.size, np.int64)
            inv[src.reshape(-1)] = np.arange(src.size)
            self._perm[k] = inv
        return self._perm[k]

    def _maxpool(
        self, op: MaxPool, src: str, pv: tuple[np.ndarray, np.ndarray], sample: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pooling acts per channel: pool only the channels holding changed positions."""
        pos, val = pv
        shape = self.env[src].shape[1:]
        c = shape[-1]
        chans = np.unique(pos % c)
        sub = self.env[src][..., chans]  # (N, H, W, J)
        sub = sub.reshape(sub.shape[0], -1)[sample]
        sub[:, (pos // c) * chans.size + np.searchsorted(chans, pos % c)] = val
        out = np.asarray(op(sub.reshape((sample.size, *shape[:-1], chans.size))))
        n_sp = out[0].size // chans.size
        out_c = self.env[op.output].shape[-1]
        out_pos = (np.arange(n_sp)[:, None] * out_c + chans[None, :]).reshape(-1)
        return out_pos, out.reshape(sample.size, -1)

    def _conv(
        self, op: Conv, src: str, pv: tuple[np.ndarray, np.ndarray], sample: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Linearity for a Conv consumer: y' = y + conv(x' - x) without bias, on the
        input channels that changed only (zero padding pads the difference with 0)."""
        pos, val = pv
        shape = self.env[src].shape[1:]
        c = shape[-1]
        chans = np.unique(pos % c)
        dx = np.zeros((sample.size, int(np.prod(shape[:-1])) * chans.size), np.int64)
        cols = (pos // c) * chans.size + np.searchsorted(chans, pos % c)
        dx[:, cols] = val - self._base(src, sample, pos)
        part = dataclasses.replace(op, weight=op.weight[:, :, chans, :], bias=None)
        dy = np.asarray(part(dx.reshape((sample.size, *shape[:-1], chans.size))))
        y = self._base(op.output, sample) + dy.reshape(sample.size, -1)
        return np.arange(y.shape[1]), y

    def _prune(
        self, mod: dict, sample: np.ndarray, k: int
    ) -> tuple[dict, np.ndarray, np.ndarray | None]:
        """Drop dead tensors, positions equal to the trace, and records with no difference left.

        Returns the new state and ``keep`` (a boolean mask over the old records), or
        ``None`` if every record was kept.
        """
        live: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        alive = np.zeros(sample.size, bool)
        for name, (pos, val) in mod.items():
            if self._last_use.get(name, -1) <= k:
                continue
            diff = val != self._base(name, sample, pos)
            cols = diff.any(axis=0)
            if not cols.any():
                continue
            if not cols.all():
                pos, val, diff = pos[cols], val[:, cols], diff[:, cols]
            alive |= diff.any(axis=1)
            live[name] = (pos, val)
        if alive.all():
            return live, sample, None
        return {nm: (p, v[alive]) for nm, (p, v) in live.items()}, sample[alive], alive

    def _dedupe(self, mod: dict, sample: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray | None]:
        """Merge records of the same sample whose live values are identical.

        Right after a fault, requantisation maps many different faults (e.g. most
        low-bit flips of one channel) to the same few activation values per
        sample; everything downstream is then computed once per distinct value.
        Returns the new state and ``inv`` (old record -> new record), or ``None``.
        """
        names = list(mod)
        width = 1 + sum(mod[nm][1].shape[1] for nm in names)
        if sample.size < 2 or width > _DEDUPE_MAX_WIDTH:
            return mod, sample, None
        flat = np.concatenate([sample[:, None], *(mod[nm][1] for nm in names)], axis=1)
        # Group rows by a random linear hash (int64, wrapping), then verify exactly.
        key = np.random.default_rng(width).integers(-(2**62), 2**62, size=width, dtype=np.int64)
        _, first, inv = np.unique(flat @ key, return_index=True, return_inverse=True)
        if first.size == sample.size or not np.array_equal(flat[first][inv], flat):
            return mod, sample, None  # nothing to merge, or a hash collision: keep all
        return {nm: (p, v[first]) for nm, (p, v) in mod.items()}, sample[first], inv.reshape(-1)

    def run(
        self, start: int, name: str, pos: np.ndarray, val: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Faulty outputs of ops[start:] given tensor ``name`` has values ``val`` (F, N, P) at ``pos``.

        Returns ``(fault, sample, out_pos, out_val)``: the (fault, sample) pairs
        whose output differs from the golden output, and their values at ``out_pos``.
        """
        g = self.g
        n = val.shape[1]
        # First drop the (fault, sample) pairs the fault leaves unchanged, without gathers.
        b = self.env[name].reshape(n, -1)[:, pos]
        pair_fault, pair_sample = np.nonzero((val != b[None]).any(axis=2))
        # State: records (one per distinct faulty state; many pairs can share one).
        sample = pair_sample
        pair_rec = np.arange(sample.size)
        mod: dict[str, tuple[np.ndarray, np.ndarray]] = {name: (pos, val[pair_fault, pair_sample])}
        dirty = False  # pruning is deferred to just before costly ops (and the end)
        first_prune = True

        def remap(mapping: np.ndarray | None) -> None:
            nonlocal pair_rec
            if mapping is None:
                return
            if mapping.dtype == bool:
                mapping = np.where(mapping, np.cumsum(mapping) - 1, -1)
            pair_rec = np.append(mapping, -1)[pair_rec]  # -1 stays -1 (dropped)

        for k in range(start, len(g.ops)):
            if not sample.size:
                break
            op = g.ops[k]
            if not any(i in mod for i in op.inputs):
                continue
            src = op.inputs[0]
            if len(op.inputs) == 1 and isinstance(op, (Reshape, Transpose)):
                p_in, v = mod[src]
                mod[op.output] = (self._layout_map(k, op, src)[p_in], v)
                if self._last_use.get(src, -1) <= k:
                    del mod[src]
                continue
            n_chan = g.tensors[src].shape[-1] if g.tensors[src].shape else 1
            sliced = None
            if len(op.inputs) == 1:
                sliced = _channel_sliced(op, mod[src][0] % n_chan, n_chan)
            if sliced is not None:
                # Elementwise: run on the changed positions only.
                p_in, v = mod[src]
                mod[op.output] = (p_in, np.asarray(sliced(v)))
                if self._last_use.get(src, -1) <= k:
                    del mod[src]
                dirty = True
                continue
            if dirty:
                mod, sample, keep = self._prune(mod, sample, k - 1)
                remap(keep)
                if first_prune:
                    mod, sample, inv = self._dedupe(mod, sample)
                    remap(inv)
                    first_prune = False
                dirty = False
                if not sample.size:
                    break
                if not any(i in mod for i in op.inputs):
                    continue
            if len(op.inputs) == 1 and isinstance(op, Dense) and not isinstance(op, Conv):
                # Linearity: y' = y + ((x' - x)[:, P] @ W[P, :]) << acc_shift.
                p_in, v = mod[src]
                if k not in self._weff:
                    self._weff[k] = np.asarray(op.effective_weight())
                w = self._weff[k]
                if _is_identity(p_in, w.shape[0]):
                    y = np.asarray(op(v))
                else:
                    upd = (v - self._base(src, sample, p_in)) @ w[p_in]
                    if op.acc_shift:
                        upd = upd << op.acc_shift
                    y = self._base(op.output, sample) + upd
                mod[op.output] = (np.arange(y.shape[1]), y)
                if self._last_use.get(src, -1) <= k:
                    del mod[src]
                dirty = True  # a linear map rarely cancels a change: prune lazily
                continue
            if len(op.inputs) == 1 and isinstance(op, Conv):
                mod[op.output] = self._conv(op, src, mod[src], sample)
            elif len(op.inputs) == 1 and isinstance(op, MaxPool):
                mod[op.output] = self._maxpool(op, src, mod[src], sample)
            else:
                # Anything else (conv, residual add, ...): run densely per record.
                out = np.asarray(op(*(self._full(i, mod, sample) for i in op.inputs)))
                mod[op.output] = (np.arange(out[0].size), out.reshape(sample.size, -1))
            mod, sample, keep = self._prune(mod, sample, k)
            remap(keep)
        if g.output_name not in mod or not sample.size:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty, np.zeros((0, 0), np.int64)
        out_pos, out_val = mod[g.output_name]
        hit = pair_rec >= 0
        return pair_fault[hit], pair_sample[hit], out_pos, out_val[pair_rec[hit]]


def _weight_rows(op: Dense, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Input values that multiply weight row ``r`` (flat over all but the output axis),
    for each ``r`` in ``rows``: shape (len(rows), M), M = N (Dense) or N*OH*OW (Conv)."""
    if not isinstance(op, Conv):
        return x.reshape(x.shape[0], -1).T[rows]
    pat = op.patches(x)  # strided view (N, OH, OW, kh, kw, cin); no im2col copy
    uniq, inv = np.unique(rows, return_inverse=True)
    a, b, c = np.unravel_index(uniq, pat.shape[3:])
    cols = np.stack([pat[:, :, :, a[u], b[u], c[u]].reshape(-1) for u in range(uniq.size)])
    return cols[inv.reshape(-1)]


def _column_change(
    op: Dense, x: np.ndarray, param: str, index: np.ndarray, delta: np.ndarray
) -> np.ndarray:
    """Change of the output channel each fault hits, shape (F, M) (bias: (F, 1)).

    ``M`` is N for Dense and N*OH*OW for Conv. A weight fault at (row i,
    channel j) adds ``(x_i * (delta << lshift_j)) << acc_shift`` (x_i the input
    column, or the im2col patch column, feeding row i); a bias fault adds
    ``delta << bias_shift`` everywhere in channel j.
    """
    cout = op.weight.shape[-1]
    if param == "bias":
        return (delta << op.bias_shift)[:, None]
    j = index % cout
    ls = np.broadcast_to(np.asarray(op.weight_lshift, np.int64).reshape(-1), (cout,))
    d = delta << ls[j]
    ch = _weight_rows(op, x, index // cout) * d[:, None]
    if op.acc_shift:
        ch = ch << op.acc_shift
    return ch


def run_param_campaign(
    g: GoldenModel,
    x_codes: np.ndarray,
    labels: np.ndarray | Sequence[int] | None,
    sites: Sequence[FaultSite] | None = None,
    *,
    batch_faults: int = 256,
    progress: bool = True,
) -> CampaignResult:
    """Single-bit weight/bias fault campaign on the golden model (default: every bit).

    ``x_codes`` are input codes (see :meth:`GoldenModel.quantize_input`),
    ``labels`` the true classes (or ``None``: no accuracy drop, SDC only).
    ``batch_faults`` faults of one layer and output channel are evaluated
    together; memory grows with it (it is capped near 256 MB per array).
    Results are exactly those of :func:`run_param_campaign_naive`.
    """
    if not isinstance(batch_faults, int) or batch_faults < 1:
        raise ConfigError(f"batch_faults must be an integer >= 1, got {batch_faults!r}")
    t0 = time.perf_counter()
    x, y = _check_inputs(g, x_codes, labels)
    out0, trace = g.run(x, trace=True)  # type: ignore[misc]
    ref = _Reference.build(np.asarray(out0), y)
    table = _SiteTable.build(g, sites)
    env: dict[str, np.ndarray] = {g.input_name: x.astype(np.int64), **trace}
    n = x.shape[0]
    walker = _Walker(g, env)
    op_pos = {id(op): k for k, op in enumerate(g.ops)}
    biggest = max(int(np.prod(t.shape, dtype=np.int64)) for t in g.tensors.values())
    cap = max(1, min(batch_faults, _MAX_BATCH_ELEMS // max(1, n * biggest)))

    total = len(table)
    acc_drop, sdc, dev = np.empty(total), np.empty(total), np.empty(total, np.int64)
    with _progress(total, progress, "faults") as bar:
        for li, op in enumerate(g.param_ops):
            in_layer = np.flatnonzero(table.layer == li)
            if not in_layer.size:
                continue
            k = op_pos[id(op)]
            src = env[op.inputs[0]]
            base_out = env[op.output]
            out_shape = base_out.shape[1:]
            cout = out_shape[-1]
            spatial = int(np.prod(out_shape[:-1], dtype=np.int64))
            base_cols = base_out.reshape(n * spatial, cout)
            # Output channel each fault hits, and its code change (faulty - stored).
            is_bias = table.param[in_layer] == PARAMS.index("bias")
            chan = np.where(is_bias, table.index[in_layer], table.index[in_layer] % cout)
            delta_all = np.empty(in_layer.size, np.int64)
            for pi, p in enumerate(PARAMS):
                sel = np.flatnonzero(table.param[in_layer] == pi)
                if sel.size:
                    codes, ftype = param_storage(op, p)
                    f = in_layer[sel]
                    delta_all[sel] = fault_deltas(
                        codes,
                        ftype.width,
                        ftype.signed,
                        table.index[f],
                        table.bit[f],
                        table.kind[f],
                    )
            # Group by output channel: one channel's faults share the changed positions.
            order = np.argsort(chan, kind="stable")
            bounds = np.flatnonzero(np.diff(chan[order])) + 1
            for group in np.split(order, bounds):
                j = int(chan[group[0]])
                pos = np.arange(spatial, dtype=np.int64) * cout + j
                for c0 in range(0, group.size, cap):
                    part = group[c0 : c0 + cap]
                    f = in_layer[part]
                    val = np.empty((part.size, n * spatial), np.int64)
                    for p, msk in (("weight", ~is_bias[part]), ("bias", is_bias[part])):
                        if msk.any():
                            ch = _column_change(
                                op, src, p, table.index[f[msk]], delta_all[part[msk]]
                            )
                            val[msk] = base_cols[:, j][None, :] + ch
                    fa, sa, out_pos, out_val = walker.run(
                        k + 1, op.output, pos, val.reshape(part.size, n, spatial)
                    )
                    a, s, d = ref.score_pairs(part.size, fa, sa, out_pos, out_val)
                    acc_drop[f], sdc[f], dev[f] = a, s, d
                    bar.update(part.size)
    seconds = time.perf_counter() - t0
    meta = {"engine": "fast", "batch_faults": batch_faults, "source": g.source}
    log.info("fault campaign: %d faults in %.2f s (%.0f faults/s)", total, seconds, total / seconds)
    return _result(table, ref, (acc_drop, sdc, dev), seconds, meta)
