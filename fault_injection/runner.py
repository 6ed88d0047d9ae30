"""Resumable fault campaigns: chunks evaluated serially or on Dask, results in a SQLite store.

:func:`run_store_campaign` takes the golden model, the samples, a campaign
(fault sites + seed) and a store path. It skips every fault the store already
holds (so re-running it *is* resuming), splits the rest into chunks, evaluates
them with the fast campaign engine and appends each chunk to the store as one
transaction, then reads the whole store back in campaign order. Chunks are
independent (every fault is scored in exact integer arithmetic against the
same fault-free reference), so the result does not depend on chunk size,
executor, or where a run was interrupted.

Executors:

* **serial** (``workers=0``): in this process.
* **local Dask cluster** (default, ``workers=N``): ``N`` worker processes on
  127.0.0.1 (``distributed.LocalCluster``), started and stopped by the run.
* **existing cluster** (``scheduler="tcp://host:8786"``): ``distributed.Client``
  to that scheduler; its workers need edgeml installed.

With Dask, the golden model and samples are scattered to every worker once;
each chunk is one task; results come back as tasks complete
(``as_completed``) and only this process writes the store.

Samplers (:data:`SAMPLERS`) choose the fault list: ``exhaustive`` (every site)
and ``random`` (a seeded uniform sample sized by Leveugle et al., DATE 2009,
for an error margin and confidence). Add more (Hessian, gradient, BinFI) by
registering a callable ``(SamplerInput) -> list[FaultSite]``.

Test hook: ``EDGEML_FAULTS_TEST_ROW_DELAY=SECONDS`` sleeps that long after each
row *inside* a chunk's transaction, so a test can SIGKILL a run mid-chunk and
check that no half chunk is ever stored. Not for normal use.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeml.errors import ConfigError, DependencyError

from .campaign import ENGINE_VERSION, Campaign, run_campaign
from .samplers import statistical_sample
from .sites import FaultSite, enumerate_sites
from .store import FaultStore, StoredResults, fault_id, remove_if_empty, samples_sha256

if TYPE_CHECKING:
    from edgeml.golden import GoldenModel

log = logging.getLogger(__name__)

#: Environment variable of the crash-test hook (seconds slept per row inside a chunk transaction).
TEST_ROW_DELAY_ENV = "EDGEML_FAULTS_TEST_ROW_DELAY"
TARGETS: tuple[str, ...] = ("weight", "bias", "act", "acc", "table")
KINDS: tuple[str, ...] = ("flip", "stuck0", "stuck1")
SDC_MODES: tuple[str, ...] = ("top1", "any")
DEFAULT_CHUNK = 1000
#: Seconds to wait for an existing Dask scheduler (``--scheduler``) before giving up.
SCHEDULER_TIMEOUT_S = 10.0


def default_workers() -> int:
    """Local Dask worker processes by default: min(2, CPU count)."""
    return max(1, min(2, os.cpu_count() or 1))


# ----------------------------------------------------------------------------- engine


def engine_version() -> str:
    """Which engine scores faults; recorded in the store so a resume never mixes engines."""
    from edgeml import __version__

    return f"edgeml {__version__}; {ENGINE_VERSION}"


def evaluate_chunk(
    g: GoldenModel,
    x: np.ndarray,
    labels: np.ndarray | None,
    sites: Sequence[FaultSite],
    sdc: str = "top1",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(acc_drop, sdc_rate, max_dev) of ``sites``, in their order, with the fast engine."""
    res = run_campaign(g, x, labels, list(sites), progress=False, sdc=sdc)
    return (
        np.asarray(res.acc_drop, np.float64),
        np.asarray(res.sdc_rate, np.float64),
        np.asarray(res.max_dev, np.int64),
    )


Scores = tuple[np.ndarray, np.ndarray, np.ndarray]


def _timed_chunk(
    g: GoldenModel,
    x: np.ndarray,
    labels: np.ndarray | None,
    sites: list[FaultSite],
    sdc: str,
) -> tuple[Scores, float]:
    """A chunk's scores and its evaluation time. Also the Dask task (module-level, so it
    pickles by name and workers import it)."""
    t0 = time.perf_counter()
    scores = evaluate_chunk(g, x, labels, sites, sdc)
    return scores, time.perf_counter() - t0


def enumerate_population(
    g: GoldenModel, targets: Sequence[str], kind: str = "flip", nbits: int = 1
) -> list[FaultSite]:
    """Every fault site of the chosen targets (weight, bias, act, acc), graph order."""
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise ConfigError(
            f"targets must be a non-empty subset of {', '.join(TARGETS)}; got {list(targets)}"
        )
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if not isinstance(nbits, int) or nbits < 1:
        raise ConfigError(f"nbits must be an integer >= 1; got {nbits!r}")
    ordered = tuple(t for t in TARGETS if t in targets)
    return list(enumerate_sites(g, params=ordered, kind=kind, nbits=nbits))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- samplers


@dataclass(frozen=True)
class SamplerInput:
    """What a sampler may use to choose (and order) the campaign's faults."""

    g: GoldenModel
    x: np.ndarray
    labels: np.ndarray | None
    population: list[FaultSite]  # every candidate site, graph order
    seed: int
    margin: float = 0.01
    confidence: float = 0.95


Sampler = Callable[[SamplerInput], list[FaultSite]]


def sample_exhaustive(inp: SamplerInput) -> list[FaultSite]:
    """Every site of the population, in graph order."""
    return list(inp.population)


def sample_random(inp: SamplerInput) -> list[FaultSite]:
    """A seeded uniform sample without replacement, sized by Leveugle et al. (DATE 2009)
    for ``margin`` / ``confidence`` (:func:`.samplers.statistical_sample`); graph order is
    kept, so the engine batches a layer's faults together."""
    return statistical_sample(
        inp.population, margin=inp.margin, confidence=inp.confidence, seed=inp.seed
    )


def sample_stratified(inp: SamplerInput) -> list[FaultSite]:
    """A Leveugle-sized sample stratified by layer, parameter and bit (better mean-SDC
    intervals than uniform sampling when a few bits dominate; see :mod:`.samplers`)."""
    from .samplers import leveugle_sample_size, stratified_sample

    n = leveugle_sample_size(len(inp.population), margin=inp.margin, confidence=inp.confidence)
    return stratified_sample(inp.population, n, inp.seed)


def _ranked(name: str) -> Sampler:
    def sample(inp: SamplerInput) -> list[FaultSite]:
        """The Leveugle-sized top of a sensitivity ranking, most sensitive first."""
        from . import hessian
        from .samplers import leveugle_sample_size

        params = [s for s in inp.population if s.param in ("weight", "bias")]
        if len(params) != len(inp.population):
            raise ConfigError(
                f"sampler {name!r} ranks weight/bias sites only; use --targets weight,bias"
            )
        rank = getattr(hessian, f"{name}_ranking")
        kw = {"seed": inp.seed} if name == "hessian" else {}
        ordered = rank(inp.g, inp.x, inp.labels, params, **kw).ordered(params)
        n = leveugle_sample_size(len(params), margin=inp.margin, confidence=inp.confidence)
        return list(ordered[:n])

    sample.__name__ = f"sample_{name}"
    return sample


#: Sampler registry: ``--sampler NAME`` -> callable ``(SamplerInput) -> sites``.
SAMPLERS: dict[str, Sampler] = {
    "exhaustive": sample_exhaustive,
    "random": sample_random,
    "stratified": sample_stratified,
    "hessian": _ranked("hessian"),
    "gradient": _ranked("gradient"),
    "taylor": _ranked("taylor"),
}


# ----------------------------------------------------------------------------- campaign


def make_campaign(
    sites: Sequence[FaultSite], seed: int, meta: dict[str, Any] | None = None
) -> Campaign:
    """A :class:`~.campaign.Campaign` of ``sites`` and ``seed``."""
    return Campaign(sites=tuple(sites), seed=int(seed), meta=dict(meta or {}))


def build_campaign(
    g: GoldenModel,
    x: np.ndarray,
    labels: np.ndarray | None,
    *,
    sampler: str = "exhaustive",
    targets: Sequence[str] = ("weight", "bias"),
    kind: str = "flip",
    nbits: int = 1,
    seed: int = 0,
    margin: float = 0.01,
    confidence: float = 0.95,
) -> Campaign:
    """Enumerate the targets' sites and choose the campaign's faults with ``sampler``."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    population = enumerate_population(g, targets, kind, nbits)
    inp = SamplerInput(g, x, labels, population, int(seed), float(margin), float(confidence))
    sites = SAMPLERS[sampler](inp)
    meta = {
        "sampler": sampler,
        "sampler_params": {"margin": margin, "confidence": confidence}
        if sampler != "exhaustive"
        else {},
        "targets": [t for t in TARGETS if t in targets],
        "kind": kind,
        "nbits": nbits,
        "population": len(population),
    }
    return make_campaign(sites, seed, meta)


# ----------------------------------------------------------------------------- executors


@contextmanager
def _quiet_dask() -> Iterator[None]:
    """Dask's own loggers at WARNING while a run uses it (it logs every connection at INFO),
    unless debug logging is on; their levels are restored afterwards."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    manager = logging.Logger.manager
    saved = {
        name: lg.level
        for name, lg in list(manager.loggerDict.items())
        if name.split(".")[0] == "distributed" and isinstance(lg, logging.Logger)
    }
    for name in saved:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextmanager
def _dask_client(workers: int, scheduler: str | None) -> Iterator[Any]:
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise DependencyError(
            "Dask distributed is not installed: pip install 'dask[distributed]' "
            "(or run serially with --workers 0)"
        ) from exc
    with _quiet_dask():
        yield from _open_client(Client, LocalCluster, workers, scheduler)


def _open_client(
    Client: Any, LocalCluster: Any, workers: int, scheduler: str | None
) -> Iterator[Any]:
    if scheduler:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(
                f"cannot connect to the Dask scheduler at --scheduler {scheduler!r}: {exc}. "
                "Give its address as tcp://HOST:PORT (see `dask scheduler`), or leave "
                "--scheduler out to start a local cluster"
            ) from exc
        try:
            yield client
        finally:
            client.close()
        return
    import dask

    # Dask sets MALLOC_TRIM_THRESHOLD_=65536 in worker processes; in glibc that also turns
    # off the adaptive mmap threshold, so every large numpy temporary is mmapped and
    # unmapped again: measured 2x slower chunks. Our own workers start without it.
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    # The workers' statistical profiler wakes every 10 ms and takes the GIL from the task
    # thread; on a busy machine each handoff waits for a time slice. Off for our workers.
    quiet_workers = {
        "distributed.nanny.pre-spawn-environ": env,
        "distributed.worker.profile.enabled": False,
    }
    with dask.config.set(quiet_workers), _kept_environ():
        cluster = _local_cluster(LocalCluster, workers)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


@contextmanager
def _kept_environ() -> Iterator[None]:
    """Undo the environment changes a Nanny makes in *this* process before it spawns a
    worker (OMP_NUM_THREADS=1, PYTHONHASHSEED, ...), once the workers have started."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for k in set(os.environ) - set(saved):
            del os.environ[k]
        os.environ.update(saved)


def _local_cluster(LocalCluster: Any, workers: int) -> Any:
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        # No dashboard; the scheduler's HTTP endpoint on loopback, any free port.
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.WARNING,
    )


def _run_dask(
    client: Any,
    g: GoldenModel,
    x: np.ndarray,
    labels: np.ndarray | None,
    chunks: list[list[FaultSite]],
    sdc: str,
    done: Callable[[int, tuple[Scores, float]], None],
) -> None:
    from distributed import as_completed

    # Ship the model and samples once to every worker; tasks carry only their sites.
    g_f = client.scatter(g, broadcast=True)
    x_f = client.scatter(x, broadcast=True)
    y_f = None if labels is None else client.scatter(labels, broadcast=True)
    futures = {
        client.submit(_timed_chunk, g_f, x_f, y_f, chunk, sdc, pure=False): k
        for k, chunk in enumerate(chunks)
    }
    try:
        for fut in as_completed(futures):
            done(futures[fut], fut.result())
            fut.release()
    except BaseException:
        client.cancel([f for f in futures if not f.done()])
        raise


# ----------------------------------------------------------------------------- runner


def _check_run_args(chunk: int, workers: int, sdc: str) -> None:
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ConfigError(f"chunk must be an integer >= 1 (faults per chunk); got {chunk!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ConfigError(f"workers must be an integer >= 0 (0 = serial); got {workers!r}")
    if sdc not in SDC_MODES:
        raise ConfigError(f"sdc must be one of {', '.join(SDC_MODES)}; got {sdc!r}")


def campaign_config(
    g: GoldenModel,
    x: np.ndarray,
    labels: np.ndarray | None,
    campaign: Campaign,
    *,
    sdc: str = "top1",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The store's campaign record: ``extra`` (design, run folder, model hash, ...) plus
    the sample-set hash, seed, engine version, baseline accuracy and the campaign's meta."""
    meta = dict(campaign.meta)
    out = np.asarray(g.run(np.asarray(x))).reshape(len(x), -1)
    base = math.nan if labels is None else float(np.mean(out.argmax(axis=1) == labels))
    cfg: dict[str, Any] = {
        "sampler": meta.get("sampler", "custom"),
        "sampler_params": meta.get("sampler_params", {}),
        "targets": meta.get("targets"),
        "kind": meta.get("kind"),
        "nbits": meta.get("nbits"),
        "population": meta.get("population"),
    }
    cfg.update(extra or {})
    cfg.update(
        seed=int(campaign.seed),
        samples_sha256=samples_sha256(x, labels),
        n_samples=len(x),
        labels=labels is not None,
        sdc=sdc,
        engine_version=engine_version(),
        baseline_accuracy=base,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    return cfg


def run_store_campaign(
    g: GoldenModel,
    x: np.ndarray,
    labels: np.ndarray | None,
    campaign: Campaign,
    store: str | Path,
    *,
    chunk: int = DEFAULT_CHUNK,
    workers: int | None = None,
    scheduler: str | None = None,
    sdc: str = "top1",
    config: dict[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
) -> StoredResults:
    """Run ``campaign`` (sites + seed) into the SQLite ``store`` and return all its results.

    Faults already in the store are skipped; the rest are evaluated in chunks
    of ``chunk`` faults, serially (``workers=0``), on a local Dask cluster of
    ``workers`` processes (default :func:`default_workers`) or on the cluster at
    ``scheduler``, and each chunk is committed as one transaction. ``config``
    adds fields to the store's campaign record (design, run folder, model
    SHA-256, ...); an existing store for a different campaign is refused.
    ``resume=False`` refuses an existing store instead of continuing it.
    """
    workers = default_workers() if workers is None else workers
    _check_run_args(chunk, workers, sdc)
    store = Path(store)
    # a store without a single result (its run failed before the first chunk) is started again
    if store.exists() and not resume and not remove_if_empty(store):
        raise ConfigError(
            f"fault store '{store}' already exists; pass --resume to continue its campaign, "
            "or choose another --store (or delete it) to start over"
        )
    x = np.asarray(x)
    y = None if labels is None else np.asarray(labels).astype(np.int64)
    sites = list(campaign.sites)
    cfg = campaign_config(g, x, y, campaign, sdc=sdc, extra=config)
    cfg["chunk"] = chunk
    t0 = time.perf_counter()
    with FaultStore.open_for(store, cfg, sites) as st:
        st.lock_for_writing()
        done_ids = st.done_ids()
        todo = [s for s in sites if fault_id(s) not in done_ids]
        chunks = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
        first_chunk = st.next_chunk()
        row_delay = float(os.environ.get(TEST_ROW_DELAY_ENV, "0") or 0)
        if done_ids:
            log.info(
                "fault store %s: %d of %d faults done, resuming %d",
                store,
                len(done_ids),
                len(sites),
                len(todo),
            )
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(sites),
            initial=len(sites) - len(todo),
            unit="fault",
            desc="faults",
            disable=not progress,
            leave=False,
        )

        def commit(k: int, timed: tuple[Scores, float]) -> None:
            scores, seconds = timed
            st.append(
                chunks[k], *scores, chunk=first_chunk + k, seconds=seconds, row_delay=row_delay
            )
            bar.update(len(chunks[k]))

        # One chunk left: a cluster start would cost more than the chunk itself.
        serial = scheduler is None and (workers == 0 or len(chunks) == 1)
        with bar:
            if serial:
                for k, c in enumerate(chunks):
                    commit(k, _timed_chunk(g, x, y, c, sdc))
            elif chunks:
                with _dask_client(workers, scheduler) as client:
                    _run_dask(client, g, x, y, chunks, sdc, commit)
        result = st.results()
    seconds = time.perf_counter() - t0
    log.info(
        "fault campaign: %d faults evaluated in %.2f s; store %s holds %d of %d",
        len(todo),
        seconds,
        store,
        int(result.done.sum()),
        len(result),
    )
    return result


# ----------------------------------------------------------------------------- report


def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f} %"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    import html

    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _estimates(res: StoredResults, sdc: np.ndarray, confidence: float) -> list[list[str]]:
    """Critical-fault fraction and mean SDC rate with confidence intervals (finite population)."""
    population = res.config.get("population") or len(res)
    try:
        from . import samplers

        est = samplers.estimate(sdc, int(population), confidence=confidence)
    except (ImportError, AttributeError, ConfigError) as exc:
        log.debug("no interval estimates: %s", exc)
        return []
    rows = []
    for name, iv in (
        ("critical faults (SDC rate > 0)", est.critical),
        ("mean SDC rate", est.mean_sdc),
    ):
        rows.append(
            [
                name,
                _pct(iv.value),
                f"[{_pct(iv.lo)}, {_pct(iv.hi)}]",
                f"{iv.confidence:g}",
                iv.method,
            ]
        )
    return rows


def store_report_html(
    res: StoredResults, *, title: str = "Fault campaign", top: int = 20, section: str = ""
) -> str:
    """A self-contained HTML summary of a store: campaign, estimates, per layer, per bit,
    top-N, then ``section`` (e.g. the sensitivity plots)."""
    import html

    cfg = res.config
    m = res.done
    sdc, acc, dev = res.sdc_rate[m], res.acc_drop[m], res.max_dev[m]
    layer, param = res.column("layer")[m], res.column("param")[m]
    bit, ids = res.column("bit")[m], np.asarray(res.fault_ids())[m]
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if not res.complete:
        parts.append(
            f"<p class='warn'>Incomplete: {int(m.sum())} of {len(res)} faults evaluated. "
            "Continue with <code>edgeml faults resume --store FILE</code>.</p>"
        )
    sp = cfg.get("sampler_params") or {}
    info = [
        ("design", cfg.get("design")),
        ("run folder", cfg.get("run_dir")),
        ("model SHA-256", str(cfg.get("model_sha256", ""))[:16]),
        ("samples", f"{cfg.get('n_samples')} ({cfg.get('sample_source', 'given')})"),
        ("baseline accuracy", _pct(res.baseline_accuracy)),
        (
            "targets / kind / bits per upset",
            f"{', '.join(cfg.get('targets') or [])} / {cfg.get('kind')} / {cfg.get('nbits')}",
        ),
        ("sampler", f"{cfg.get('sampler')} {', '.join(f'{k} {v}' for k, v in sp.items())}"),
        (
            "faults evaluated / planned / population",
            f"{int(m.sum())} / {len(res)} / {cfg.get('population')}",
        ),
        ("seed", cfg.get("seed")),
        (
            "evaluation time",
            f"{res.seconds:.2f} s ({int(m.sum()) / res.seconds:.0f} faults/s)"
            if res.seconds > 0
            else "n/a",
        ),
        ("SDC definition", cfg.get("sdc")),
        ("engine", cfg.get("engine_version")),
    ]
    parts.append("<h2>Campaign</h2>" + _table(["field", "value"], info))
    if sdc.size:
        conf = float(sp.get("confidence", 0.95))
        est = _estimates(res, sdc, conf)
        if est:
            parts.append(
                "<h2>Estimates</h2>"
                + _table(["quantity", "value", "interval", "confidence", "method"], est)
            )
        rows = []
        for ln in dict.fromkeys(layer):
            for pn in dict.fromkeys(param[layer == ln]):
                k = (layer == ln) & (param == pn)
                rows.append(
                    [
                        ln,
                        pn,
                        int(k.sum()),
                        _pct(float(sdc[k].mean())),
                        _pct(float(np.mean(sdc[k] > 0))),
                        _pct(float(np.nanmax(acc[k])) if np.isfinite(acc[k]).any() else math.nan),
                        int(dev[k].max()),
                    ]
                )
        parts.append(
            "<h2>Per layer</h2>"
            + _table(
                [
                    "layer",
                    "target",
                    "faults",
                    "mean SDC rate",
                    "critical faults",
                    "max acc. drop",
                    "max |dev| (LSB)",
                ],
                rows,
            )
        )
        for pn in dict.fromkeys(param):
            k = param == pn
            brow = [
                [
                    int(b),
                    int((k & (bit == b)).sum()),
                    _pct(float(sdc[k & (bit == b)].mean())),
                    _pct(float(np.mean(sdc[k & (bit == b)] > 0))),
                ]
                for b in np.unique(bit[k])
            ]
            parts.append(
                f"<h2>Per bit: {html.escape(str(pn))}</h2>"
                + _table(["bit (0 = LSB)", "faults", "mean SDC rate", "critical faults"], brow)
            )
        accz = np.nan_to_num(acc, nan=0.0)
        order = np.lexsort((-dev, -accz, -sdc))[: max(int(top), 0)]
        trow = [
            [r + 1, ids[i], _pct(float(sdc[i])), _pct(float(acc[i])), int(dev[i])]
            for r, i in enumerate(order)
        ]
        parts.append(
            f"<h2>Top {len(trow)} most damaging faults</h2>"
            + _table(
                [
                    "rank",
                    "fault id (layer/target/index/bit/kind/nbits)",
                    "SDC rate",
                    "acc. drop",
                    "max |dev|",
                ],
                trow,
            )
        )
    if section:
        parts.append(section)
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:70em}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
        "th{background:#eee}.warn{color:#a40;font-weight:bold}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )


def _plots_section(res: StoredResults, run_dir: str | Path | None, top: int) -> str:
    """Sensitivity plots, rankings and protection curves from :mod:`.report_section`.

    Needs the complete store and its run folder (the golden model and samples,
    checked against the store's hashes); otherwise a one-line note says why not.
    """
    try:
        from .metrics import analyse_campaign
        from .report_section import fault_section_html
    except ImportError:  # an edgeml without the analysis modules: tables only
        return ""
    import html

    from edgeml.errors import EdgemlError

    if not res.complete:
        return "<p>Sensitivity plots come with the complete campaign.</p>"
    cfg = res.config
    try:
        inp = load_run_inputs(run_dir or cfg.get("run_dir") or ".", res.n_samples)
        if inp.identity["model_sha256"] != cfg.get("model_sha256") or samples_sha256(
            inp.x, inp.labels
        ) != cfg.get("samples_sha256"):
            raise ConfigError(
                f"the model or samples of run folder '{inp.identity['run_dir']}' differ from "
                "the store's (pass --run-dir to the campaign's run folder)"
            )
        analysis = analyse_campaign(
            inp.g,
            inp.x,
            inp.labels,
            res.to_campaign_result(),
            seed=int(cfg.get("seed", 0)),
            top_n=top,
        )
    except EdgemlError as exc:
        return f"<p>No sensitivity plots: {html.escape(str(exc))}</p>"
    estimate = None
    if cfg.get("sampler") == "random" and cfg.get("population"):
        try:
            from . import samplers

            sp = cfg.get("sampler_params") or {}
            estimate = samplers.estimate(
                res.sdc_rate, int(cfg["population"]), confidence=float(sp.get("confidence", 0.95))
            ).to_dict()
        except (ImportError, EdgemlError) as exc:
            log.debug("no estimate section: %s", exc)
    return str(fault_section_html(analysis, estimate=estimate, top_n=top))


def write_store_report(
    store: str | Path,
    out: str | Path | None = None,
    *,
    top: int = 20,
    plots: bool = True,
    run_dir: str | Path | None = None,
) -> Path:
    """``edgeml faults report``: the HTML report of a store (default ``<store>.html``).

    ``plots`` adds the sensitivity analysis (Hessian / gradient rankings,
    protection curves, layer x bit heatmap) computed on the store's run folder
    (or ``run_dir``); without it, tables only.
    """
    store = Path(store)
    with FaultStore.open(store) as st:
        res = st.results()
    out = Path(out) if out is not None else store.with_suffix(".html")
    out.parent.mkdir(parents=True, exist_ok=True)
    title = f"Fault campaign: {res.config.get('design', store.stem)}"
    section = _plots_section(res, run_dir, top) if plots else ""
    out.write_text(store_report_html(res, title=title, top=top, section=section))
    return out


# ----------------------------------------------------------------------------- run folders


@dataclass
class RunInputs:
    """A run folder's golden model and fault-campaign samples, plus the store identity fields."""

    g: GoldenModel
    x: np.ndarray
    labels: np.ndarray | None
    identity: dict[str, Any]


def load_run_inputs(run_dir: str | Path, n_samples: int | None = None) -> RunInputs:
    """The golden model and samples of a run folder, as the flow's faults stage uses them.

    Samples come from :func:`edgeml.flow.eval_samples` (a built-in design's test
    set; random input codes with the golden top-1 as labels for a model made
    elsewhere), the first ``n_samples`` of them (default: the run config's
    ``faults.max_samples``).
    """
    from edgeml.config import validate_config
    from edgeml.errors import MissingRunError
    from edgeml.flow import Context, eval_samples, load_run_config
    from edgeml.manifest import RunFolder, sha256

    run = RunFolder(Path(run_dir))
    if not run.path.is_dir():
        raise MissingRunError(
            f"run folder '{run_dir}' does not exist; run `edgeml flow` there first, or pass "
            "--run-dir to point at an existing run folder"
        )
    model = run.require("model.qonnx.onnx")
    saved = load_run_config(run)
    if saved is None:
        raise MissingRunError(
            f"run folder '{run_dir}' has no config.json; run a stage there first "
            f"(e.g. `edgeml export --out {run_dir}`)"
        )
    ctx = Context(run=run, cfg=validate_config(saved), progress=False)
    g = ctx.golden()
    x, y, source = eval_samples(ctx)
    if n_samples is not None and (isinstance(n_samples, bool) or n_samples < 1):
        raise ConfigError(f"n_samples must be an integer >= 1; got {n_samples!r}")
    n = min(len(x), n_samples if n_samples is not None else ctx.cfg.faults.max_samples)
    identity = {
        "design": ctx.cfg.design,
        "run_dir": str(run.path.resolve()),
        "model_file": model.name,
        "model_sha256": sha256(model),
        "sample_source": source,
        "flow_seed": ctx.cfg.seed,
    }
    labels = None if y is None else np.asarray(y[:n]).astype(np.int64)
    return RunInputs(g, np.asarray(x[:n]), labels, identity)


def default_store(run_dir: str | Path) -> Path:
    """Where a run folder's campaign store goes by default."""
    return Path(run_dir) / "faults" / "campaign.sqlite"


def faults_run(
    run_dir: str | Path,
    store: str | Path | None = None,
    *,
    targets: Sequence[str] = ("weight", "bias"),
    kind: str = "flip",
    nbits: int = 1,
    sampler: str = "exhaustive",
    margin: float = 0.01,
    confidence: float = 0.95,
    n_samples: int | None = None,
    seed: int = 0,
    sdc: str = "auto",
    chunk: int = DEFAULT_CHUNK,
    workers: int | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> StoredResults:
    """``edgeml faults run``: a campaign on a run folder's golden model into a store.

    ``sdc="auto"`` is ``top1`` with labels and ``any`` without (e.g. an autoencoder).
    """
    if sdc not in ("auto", *SDC_MODES):
        raise ConfigError(f"sdc must be one of auto, {', '.join(SDC_MODES)}; got {sdc!r}")
    store = Path(store) if store is not None else default_store(run_dir)
    # a store without a single result (its run failed before the first chunk) is started again
    if store.exists() and not resume and not remove_if_empty(store):
        raise ConfigError(
            f"fault store '{store}' already exists; add --resume to continue its campaign, "
            "or pass another --store (or delete it) to start a new one"
        )
    inp = load_run_inputs(run_dir, n_samples)
    if sdc == "auto":
        sdc = "top1" if inp.labels is not None else "any"
    campaign = build_campaign(
        inp.g,
        inp.x,
        inp.labels,
        sampler=sampler,
        targets=targets,
        kind=kind,
        nbits=nbits,
        seed=seed,
        margin=margin,
        confidence=confidence,
    )
    return run_store_campaign(
        inp.g,
        inp.x,
        inp.labels,
        campaign,
        store,
        chunk=chunk,
        workers=workers,
        scheduler=scheduler,
        sdc=sdc,
        config=inp.identity,
        resume=True,
        progress=progress,
    )


def faults_resume(
    store: str | Path,
    run_dir: str | Path | None = None,
    *,
    chunk: int = DEFAULT_CHUNK,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
) -> StoredResults:
    """``edgeml faults resume``: finish the campaign of ``store``.

    The run folder (unless given), sample count, sites, seed and SDC definition
    come from the store; the model file and samples are checked against its hashes.
    """
    with FaultStore.open(store) as st:
        cfg = st.config
        sites = st.sites()
    if run_dir is None:
        if not cfg.get("run_dir"):
            raise ConfigError(f"fault store '{store}' records no run folder; pass --run-dir")
        run_dir = cfg["run_dir"]
    inp = load_run_inputs(run_dir, int(cfg["n_samples"]))
    meta = {
        k: cfg.get(k)
        for k in ("sampler", "sampler_params", "targets", "kind", "nbits", "population")
    }
    campaign = make_campaign(sites, int(cfg["seed"]), meta)
    return run_store_campaign(
        inp.g,
        inp.x,
        inp.labels,
        campaign,
        store,
        chunk=chunk,
        workers=workers,
        scheduler=scheduler,
        sdc=str(cfg.get("sdc", "top1")),
        config=inp.identity,
        resume=True,
        progress=progress,
    )
