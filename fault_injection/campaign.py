"""Fault campaigns on the golden integer model: a list of sites plus a seed, and what they did.

* :class:`Campaign` is the replayable description: fault sites, the seed that
  chose them and free-form metadata; it is written to and read from JSON
  (with a SHA-256 of its sites, so a damaged file is refused).
* :func:`run_campaign` scores every site with the fast engine
  (:class:`~.engine.FaultEngine`) and :func:`run_campaign_naive` with the
  reference engine (per fault: copy the model, corrupt it, run everything;
  transient faults are applied during that run). Both return a
  :class:`CampaignResult` and agree array for array.
* Per fault: ``acc_drop`` (baseline accuracy minus faulty accuracy, a
  fraction; NaN without labels), ``sdc_rate`` (fraction of samples whose
  top-1 class changed, or with ``sdc="any"`` whose output codes changed at
  all) and ``max_dev`` (largest ``|faulty - golden|`` output code).

:func:`run_param_campaign` / :func:`run_param_campaign_naive` are the
original single-bit weight/bias entry points, kept as thin wrappers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import weakref
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edgeml.errors import ConfigError, CorruptFileError
from edgeml.golden import GoldenModel

from .engine import FaultEngine, Reference, SiteTable, check_inputs, check_sdc
from .inject import run_with_faults
from .sites import (
    FAULT_KINDS,
    PARAMS,
    FaultSite,
    enumerate_param_sites,
    enumerate_sites,
)

__all__ = [
    "ENGINE_VERSION",
    "Campaign",
    "CampaignResult",
    "FaultRecord",
    "clear_engine_cache",
    "engine_for",
    "enumerate_param_sites",
    "enumerate_sites",
    "run_campaign",
    "run_campaign_naive",
    "run_param_campaign",
    "run_param_campaign_naive",
]

log = logging.getLogger(__name__)

FORMAT = "edgeml.fault_campaign"
FORMAT_VERSION = 2
#: Recorded by resumable stores, so a resume never mixes results of different engines.
ENGINE_VERSION = "chain-sparse-1"
CAMPAIGN_FORMAT = "edgeml.fault_sites"
CAMPAIGN_VERSION = 1


# ----------------------------------------------------------------------------- campaign


@dataclass(frozen=True)
class Campaign:
    """A replayable campaign: the fault sites (in order), the seed that chose them, metadata.

    ``meta`` holds anything JSON can (sampler, error margin, design, ...).
    :meth:`save` writes JSON; :meth:`load` refuses anything else with
    :class:`CorruptFileError`. Replay with :meth:`run` (or pass ``sites`` to
    :func:`run_campaign`).
    """

    sites: tuple[FaultSite, ...]
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sites = tuple(self.sites)
        for s in sites:
            if not isinstance(s, FaultSite):
                raise ConfigError(f"Campaign.sites must be FaultSite values, got {s!r}")
        object.__setattr__(self, "sites", sites)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ConfigError(f"Campaign.seed must be an integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if not isinstance(self.meta, dict):
            raise ConfigError(f"Campaign.meta must be a dict, got {type(self.meta).__name__}")
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Campaign.meta must be JSON-serialisable: {exc}") from exc

    def __len__(self) -> int:
        return len(self.sites)

    def fault_ids(self) -> list[str]:
        return [s.fault_id for s in self.sites]

    def _rows(self) -> list[list[Any]]:
        return [[s.layer, s.param, s.index, s.bit, s.kind, s.nbits] for s in self.sites]

    @staticmethod
    def _digest(rows: list[list[Any]]) -> str:
        return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the campaign as JSON (sites as ``[layer, param, index, bit, kind, nbits]`` rows)."""
        path = Path(path)
        rows = self._rows()
        doc = {
            "format": CAMPAIGN_FORMAT,
            "version": CAMPAIGN_VERSION,
            "seed": self.seed,
            "meta": self.meta,
            "n_sites": len(rows),
            "sites_sha256": self._digest(rows),
            "site_fields": ["layer", "param", "index", "bit", "kind", "nbits"],
            "sites": rows,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        tmp.replace(path)  # atomic: a crash never leaves half a campaign file
        return path

    @classmethod
    def load(cls, path: str | Path) -> Campaign:
        """Read a file written by :meth:`save`; anything else raises :class:`CorruptFileError`."""
        path = Path(path)
        if not path.is_file():
            raise CorruptFileError(f"campaign file '{path}' does not exist")
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CorruptFileError(
                f"'{path}' is not a readable edgeml campaign (JSON): {exc}"
            ) from exc
        if not isinstance(doc, dict) or doc.get("format") != CAMPAIGN_FORMAT:
            raise CorruptFileError(f"'{path}' is not an edgeml campaign (format tag missing)")
        if doc.get("version") != CAMPAIGN_VERSION:
            raise CorruptFileError(
                f"'{path}' has campaign version {doc.get('version')}; this edgeml reads "
                f"version {CAMPAIGN_VERSION}"
            )
        rows = doc.get("sites")
        if not isinstance(rows, list) or doc.get("n_sites") != len(rows):
            raise CorruptFileError(f"'{path}': the site list is missing or truncated")
        if doc.get("sites_sha256") != cls._digest(rows):
            raise CorruptFileError(f"'{path}': the sites do not match their SHA-256 (damaged file)")
        try:
            sites = tuple(FaultSite(*r) for r in rows)
            return cls(sites, doc["seed"], dict(doc.get("meta") or {}))
        except (ConfigError, KeyError, TypeError) as exc:
            raise CorruptFileError(f"'{path}' holds an invalid campaign: {exc}") from exc

    def run(
        self,
        g: GoldenModel,
        x_codes: np.ndarray,
        labels: np.ndarray | Sequence[int] | None,
        *,
        progress: bool = True,
        sdc: str = "top1",
    ) -> CampaignResult:
        """Replay the campaign with the fast engine; the result's ``meta`` records the seed."""
        res = run_campaign(g, x_codes, labels, self.sites, progress=progress, sdc=sdc)
        res.meta["campaign_seed"] = self.seed
        return res


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
    "nbits",
    "acc_drop",
    "sdc_rate",
    "max_dev",
)
_DTYPES = {
    "layer": np.int32,
    "param": np.int8,
    "index": np.int64,
    "bit": np.int16,
    "kind": np.int8,
    "nbits": np.int16,
    "acc_drop": np.float64,
    "sdc_rate": np.float64,
    "max_dev": np.int64,
}


@dataclass
class CampaignResult:
    """Per-fault records of a campaign, one array element per fault, in campaign order.

    ``layer`` indexes ``layer_names`` (the design's weight layers in graph
    order, then any other layer the sites name); ``param`` indexes
    :data:`PARAMS` (0 weight, 1 bias, 2 act, 3 acc); ``kind`` indexes
    :data:`FAULT_KINDS`; ``index`` is the flat word index, ``bit`` the lowest
    bit hit (0 = LSB) and ``nbits`` the number of adjacent bits hit.
    ``acc_drop`` is baseline accuracy minus faulty accuracy (a fraction; NaN
    without labels), ``sdc_rate`` the fraction of samples counted as silently
    corrupted (``meta["sdc"]``: ``top1`` class changed, or ``any`` output
    code changed) and ``max_dev`` the largest ``|faulty - golden|`` output,
    in output LSBs.
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
    nbits: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.nbits is None:
            self.nbits = np.ones(np.asarray(self.layer).size, np.int16)
        for name, dt in _DTYPES.items():
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
        if n and self.nbits.min() < 1:  # type: ignore[union-attr]
            raise ConfigError("CampaignResult.nbits must be >= 1")

    def __len__(self) -> int:
        return int(self.layer.size)

    def take(self, rows: np.ndarray | Sequence[int]) -> CampaignResult:
        """The records at ``rows``, e.g. a sample drawn from an exhaustive campaign.

        The engines are exact, so these equal a campaign run on those sites alone
        (``seconds`` is 0: nothing was run for them).
        """
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        picked = {name: getattr(self, name)[r] for name in _DTYPES}
        return replace(self, **picked, seconds=0.0)

    @property
    def faults_per_s(self) -> float:
        return len(self) / self.seconds if self.seconds > 0 else math.inf

    def layer_labels(self) -> np.ndarray:
        """Layer name of each record (strings), e.g. for the HTML report."""
        return np.asarray(self.layer_names, dtype=str)[self.layer]

    def param_labels(self) -> np.ndarray:
        """``"weight"`` / ``"bias"`` / ``"act"`` / ``"acc"`` of each record."""
        return np.asarray(PARAMS, dtype=str)[self.param]

    def fault_ids(self) -> list[str]:
        """:attr:`FaultSite.fault_id` of each record."""
        return [s.fault_id for s in self.sites()]

    def site(self, i: int) -> FaultSite:
        return FaultSite(
            self.layer_names[int(self.layer[i])],
            PARAMS[int(self.param[i])],  # type: ignore[arg-type]
            int(self.index[i]),
            int(self.bit[i]),
            FAULT_KINDS[int(self.kind[i])],  # type: ignore[arg-type]
            int(self.nbits[i]),  # type: ignore[index]
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
        """Mean SDC rate per bit position (0 = LSB) of ``param`` words, in one layer or all."""
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
        """Read a file written by :meth:`save` (format 1 or 2); anything else raises
        :class:`CorruptFileError`."""
        path = Path(path)
        if not path.is_file():
            raise CorruptFileError(f"fault campaign file '{path}' does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"][()])) if "meta" in z.files else None
                version = meta.get("version") if isinstance(meta, dict) else None
                need = [a for a in _ARRAYS if a != "nbits" or version != 1]
                missing = [k for k in ("meta", *need) if k not in z.files]
                if missing:
                    raise CorruptFileError(
                        f"'{path}' is not an edgeml fault campaign: missing {missing}"
                    )
                arrays = {k: z[k] for k in need}
        except CorruptFileError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise CorruptFileError(
                f"'{path}' is not a readable edgeml fault campaign (.npz): {exc}. "
                "Re-run the campaign to regenerate it."
            ) from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CorruptFileError(f"'{path}' is not an edgeml fault campaign (format tag missing)")
        if meta.get("version") not in (1, FORMAT_VERSION):
            raise CorruptFileError(
                f"'{path}' has campaign format version {meta.get('version')}; this edgeml "
                f"reads versions 1 and {FORMAT_VERSION}"
            )
        params, kinds = list(meta.get("params", [])), list(meta.get("kinds", []))
        if params != list(PARAMS)[: len(params)] or not params or kinds != list(FAULT_KINDS):
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


# ----------------------------------------------------------------------------- helpers


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="fault", desc=desc, leave=False)


def _result(
    table: SiteTable,
    ref: Reference,
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
        nbits=table.nbits,
        acc_drop=scores[0],
        sdc_rate=scores[1],
        max_dev=scores[2],
        baseline_accuracy=ref.accuracy,
        n_samples=int(ref.out.shape[0]),
        layer_names=table.layer_names,
        seconds=seconds,
        meta={**meta, "sdc": ref.sdc},
    )


def _sites_of(sites: Sequence[FaultSite] | Campaign | None) -> Sequence[FaultSite] | None:
    return sites.sites if isinstance(sites, Campaign) else sites


# The engine caches the fault-free trace and per-layer data; a resumable runner
# calls run_campaign chunk after chunk on the same model and samples, so the
# last engines are kept (keyed by the model object, checked by a fingerprint of
# its parameters and of the samples, so a mutated model or new data rebuilds).
_ENGINES: list[tuple[Any, str, FaultEngine]] = []
_ENGINES_LOCK = threading.Lock()


def _fingerprint(g: GoldenModel, x: np.ndarray, labels: Any, sdc: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    xa = np.ascontiguousarray(np.asarray(x))
    h.update(f"{xa.shape}{xa.dtype}{sdc}{len(g.ops)}".encode())
    h.update(xa.tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(np.asarray(labels, np.int64)).tobytes())
    for op in g.ops:
        h.update(f"{type(op).__name__}{op.name}{op.inputs}{op.output}".encode())
        for name, v in sorted(vars(op).items()):
            h.update(name.encode())
            if isinstance(v, np.ndarray):
                h.update(f"{v.shape}{v.dtype}".encode())
                h.update(np.ascontiguousarray(v).tobytes())
            else:
                h.update(repr(v).encode())
    return h.hexdigest()


def clear_engine_cache() -> None:
    """Forget the cached engines (each holds a model, its trace and per-layer data)."""
    with _ENGINES_LOCK:
        _ENGINES.clear()


def engine_for(
    g: GoldenModel,
    x_codes: np.ndarray,
    labels: np.ndarray | Sequence[int] | None,
    sdc: str = "top1",
) -> FaultEngine:
    """A (cached) :class:`FaultEngine` for this model, these samples and SDC mode."""
    fp = _fingerprint(g, x_codes, labels, sdc)
    with _ENGINES_LOCK:
        for ref, key, eng in _ENGINES:
            if ref() is g and key == fp:
                return eng
    eng = FaultEngine(g, x_codes, labels, sdc=sdc)
    with _ENGINES_LOCK:
        _ENGINES.insert(0, (weakref.ref(g), fp, eng))
        del _ENGINES[2:]
    return eng


# ----------------------------------------------------------------------------- engines


def run_campaign(
    g: GoldenModel,
    x_codes: np.ndarray,
    labels: np.ndarray | Sequence[int] | None,
    sites: Sequence[FaultSite] | Campaign | None = None,
    *,
    progress: bool = True,
    sdc: str = "top1",
) -> CampaignResult:
    """Score every fault site (any param, kind, width) on the golden model, fast and exact.

    ``x_codes`` are input codes (see :meth:`GoldenModel.quantize_input`),
    ``labels`` the true classes (or ``None``: no accuracy drop). ``sites``
    default to every weight and bias bit (:func:`enumerate_sites`). Results
    equal :func:`run_campaign_naive` array for array.
    """
    check_sdc(sdc)
    t0 = time.perf_counter()
    eng = engine_for(g, x_codes, labels, sdc)
    table = SiteTable.build(g, _sites_of(sites))
    with _progress(len(table), progress, "faults") as bar:
        scores = eng.scores(table, bar)
    seconds = time.perf_counter() - t0
    total = len(table)
    log.info(
        "fault campaign: %d faults in %.2f s (%.0f faults/s)",
        total,
        seconds,
        total / max(seconds, 1e-9),
    )
    meta = {"engine": "fast", "engine_version": ENGINE_VERSION, "source": g.source}
    return _result(table, eng.ref, scores, seconds, meta)


def run_campaign_naive(
    g: GoldenModel,
    x_codes: np.ndarray,
    labels: np.ndarray | Sequence[int] | None,
    sites: Sequence[FaultSite] | Campaign | None = None,
    *,
    progress: bool = True,
    sdc: str = "top1",
) -> CampaignResult:
    """The reference engine: per fault, copy the model, corrupt it, run everything.

    Stored-parameter faults corrupt the copy; ``act`` / ``acc`` faults corrupt
    their tensor during each sample's pass
    (:func:`~edgeml.fault_injection.inject.run_with_faults`). Slow by design:
    it is the oracle :func:`run_campaign` is tested against and the baseline
    its speed is measured against.
    """
    check_sdc(sdc)
    t0 = time.perf_counter()
    x, y = check_inputs(g, x_codes, labels)
    ref = Reference.build(np.asarray(g.run(x)), y, sdc)
    table = SiteTable.build(g, _sites_of(sites))
    n = len(table)
    n_correct, n_sdc, dev = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    with _progress(n, progress, "faults (naive)") as bar:
        for k in range(n):
            out = np.asarray(run_with_faults(g, x, [table.site(k)]))
            c, s, d = ref.counts(out[None])
            n_correct[k], n_sdc[k], dev[k] = c[0], s[0], d[0]
            bar.update(1)
    seconds = time.perf_counter() - t0
    log.info("naive fault campaign: %d faults in %.2f s", n, seconds)
    scores = ref.finish(n_correct, n_sdc, dev)
    return _result(table, ref, scores, seconds, {"engine": "naive", "source": g.source})


def _check_stored(sites: Sequence[FaultSite] | None) -> None:
    if sites is None:
        return
    for s in sites:
        if isinstance(s, FaultSite) and s.param not in ("weight", "bias"):
            raise ConfigError(
                f"run_param_campaign takes weight/bias sites only, got {s.fault_id}; "
                "use run_campaign for 'act' / 'acc' sites"
            )


def run_param_campaign(
    g: GoldenModel,
    x_codes: np.ndarray,
    labels: np.ndarray | Sequence[int] | None,
    sites: Sequence[FaultSite] | None = None,
    *,
    batch_faults: int = 256,
    progress: bool = True,
) -> CampaignResult:
    """Weight/bias fault campaign (default: every bit); :func:`run_campaign` for stored params.

    ``batch_faults`` is kept for compatibility (the engine sizes its batches by
    memory itself) and must be an integer >= 1.
    """
    if isinstance(batch_faults, bool) or not isinstance(batch_faults, int) or batch_faults < 1:
        raise ConfigError(f"batch_faults must be an integer >= 1, got {batch_faults!r}")
    _check_stored(sites)
    return run_campaign(g, x_codes, labels, sites, progress=progress)


def run_param_campaign_naive(
    g: GoldenModel,
    x_codes: np.ndarray,
    labels: np.ndarray | Sequence[int] | None,
    sites: Sequence[FaultSite] | None = None,
    *,
    progress: bool = True,
) -> CampaignResult:
    """The naive reference for weight/bias campaigns: :func:`run_campaign_naive`."""
    _check_stored(sites)
    return run_campaign_naive(g, x_codes, labels, sites, progress=progress)
