"""Bit-width x pruning-sparsity sweeps of a built-in design, over several seeds, in parallel.

``edgeml sweep`` trains one design of the registry (:mod:`edgeml.models.zoo`)
at every point of a grid ``seeds x bit widths x sparsities`` and reports the
design's headline metric (accuracy, or EMD for the ECON-T autoencoder) against
the float model, with the spread over seeds.

Work is shared along each seed's chain, exactly as ``edgeml flow`` would train
one point: the float model is trained once per seed; quantization-aware
training (QAT) runs once per ``(seed, bits)``, initialised from that float
model; every sparsity of that ``(seed, bits)`` then magnitude-prunes a copy of
the same QAT model and fine-tunes it (sparsity 0 is fine-tuned too, so every
point has had the same number of epochs). A Brevitas QAT model cannot be
pickled, and a state-dict round trip would freeze activation scales that are
still collecting statistics, so one Dask task is one ``(seed, bits)`` chain
(QAT + all its sparsities); the float model, plain torch, travels as a state
dict, bit-exact.

Parallelism: Dask distributed, by default a ``LocalCluster`` of single-threaded
worker processes on 127.0.0.1 (``--workers``; torch is held to one thread per
process, so a point's result is the same on 1 or N workers), or an existing
cluster (``--scheduler``; its workers must be able to import edgeml).
``--workers 1`` runs serially in this process, with no cluster.

Per-layer mixed precision (``--layer-bits "fc1=4,fc4=8"``, repeatable): each
assignment is one more point of the grid, trained with those layers at their
own weight and activation width (:func:`edgeml.mixed.apply_layer_bits`) and
every other layer at the point's ``bits``; ``uniform`` stands for no assignment.

Every finished point is cached as ``points/<key>.json`` in the output folder,
keyed by (design, seed, bits, sparsity, epochs, per-layer assignment; keys of
uniform points are those of earlier versions); a rerun skips cached points
(``--resume``, the default) and trains only what is missing. Outputs:
``sweep.json`` (every point + the summary), ``metric_vs_bits.png``,
``metric_vs_sparsity.png`` and a self-contained ``sweep.html``.
"""

from __future__ import annotations

import argparse
import base64
import functools
import html
import io
import json
import logging
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.errors import ConfigError, DependencyError, EdgemlError

log = logging.getLogger(__name__)

SWEEP_FORMAT = "edgeml-sweep-v1"
POINT_FORMAT = "edgeml-sweep-point-v1"
DEFAULT_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
DEFAULT_SPARSITIES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9)
DEFAULT_SEEDS = 3
#: Highest pruning sparsity accepted (the flow's ``compress.sparsity`` bound).
MAX_SPARSITY = 0.95
#: Dask event topic on which workers announce each finished point (progress bar only).
PROGRESS_TOPIC = "edgeml-sweep-point"
#: Seconds to wait for an existing Dask scheduler before giving up.
SCHEDULER_TIMEOUT_S = 20

Point = dict[str, Any]
#: one training chain: (seed, bits, per-layer assignment or "", sparsities to run)
Chain = tuple[int, int, str, tuple[float, ...]]
#: ``(spec, data, float_model, qat_model, pruned_model, point) -> JSON-able dict``
PointHook = Callable[[Any, Any, Any, Any, Any, Point], dict[str, Any]]


def default_workers() -> int:
    """Cores this process may use (the default ``--workers``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------- config


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep: the grid, epochs, parallelism and output folder.

    ``bits``, ``sparsities`` and ``seeds`` are de-duplicated and sorted.
    ``epochs_scale`` multiplies the design's default epochs of every phase
    (rounded, at least 1). ``workers`` > 1 starts a local Dask cluster of that
    many single-threaded processes; ``scheduler`` uses an existing cluster instead.
    ``out`` defaults to ``runs/sweeps/<design>/``.
    """

    design: str = "mlp"
    bits: tuple[int, ...] = DEFAULT_BITS
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    seeds: tuple[int, ...] = tuple(range(DEFAULT_SEEDS))
    epochs_scale: float = 1.0
    workers: int = 1
    scheduler: str | None = None
    out: Path | None = None
    resume: bool = True
    progress: bool = True
    #: called on every finished point with ``(spec, data, float, qat, pruned, point)``; its
    #: JSON-able result is stored as ``point["analysis"]`` (``edgeml analyze --sweep``). A
    #: module-level function, so that Dask can ship it to the workers.
    point_hook: PointHook | None = None
    #: where points are cached, relative to ``out``
    points_subdir: str = "points"
    #: the progress bar's label (default: ``sweep <design>``, ``analyze <design>`` with a hook)
    label: str | None = None
    #: place and route every point on this FPGA (``edgeml.implement.DEVICES``): Fmax,
    #: latency (ns), LUT4 and FF become objectives next to the metric (minutes per point)
    implement: str | None = None
    clock_mhz: float = 100.0
    #: per-layer bit-width assignments, one grid axis: canonical ``"fc1=4,fc4=8"`` strings
    #: (or ``{layer: bits}`` dicts), ``""`` = uniform (every layer at the point's bits)
    layer_bits: tuple[Any, ...] = ("",)

    def __post_init__(self) -> None:
        from edgeml.models import zoo

        if self.design not in zoo.names():
            raise ConfigError(
                f"sweep design must be one of: {', '.join(zoo.names())}; got {self.design!r}"
            )
        lo, hi = zoo.get(self.design).bit_widths
        bits = _unique_sorted(self.bits, "bits")
        for b in bits:
            if isinstance(b, bool) or not isinstance(b, int | np.integer) or not lo <= b <= hi:
                raise ConfigError(
                    f"sweep bits of design {self.design!r} must be integers from {lo} to {hi}; "
                    f"got {b!r} (e.g. --bits 2-8 or --bits 2,4,6)"
                )
        sparsities = _unique_sorted(self.sparsities, "sparsity")
        for s in sparsities:
            if (
                isinstance(s, bool)
                or not isinstance(s, int | float | np.number)
                or not 0.0 <= float(s) <= MAX_SPARSITY
            ):
                hint = (
                    " (give fractions: 0.5 means 50 %)"
                    if isinstance(s, int | float) and s > 1
                    else ""
                )
                raise ConfigError(
                    f"sweep sparsity must be a fraction in [0, {MAX_SPARSITY}]; got {s!r}{hint}"
                )
        object.__setattr__(self, "layer_bits", _check_layer_axis(self.design, self.layer_bits))
        seeds = _unique_sorted(self.seeds, "seeds")
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0:
                raise ConfigError(f"sweep seeds must be non-negative integers; got {s!r}")
        scale = self.epochs_scale
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not math.isfinite(scale)
            or not 0.0 < scale <= 10.0
        ):
            raise ConfigError(
                f"epochs_scale must be a number in (0, 10] (a fraction of the design's default "
                f"epochs, e.g. 0.1 for a quick run); got {scale!r}"
            )
        if self.implement is not None:
            from edgeml.implement import device

            device(self.implement)  # a ConfigError names the allowed devices
            if not 0 < float(self.clock_mhz) <= 1000:
                raise ConfigError(f"clock_mhz must be in (0, 1000] MHz; got {self.clock_mhz!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers must be an integer >= 1; got {self.workers!r}")
        if self.scheduler is not None and not str(self.scheduler).strip():
            raise ConfigError("scheduler must be a Dask scheduler address, e.g. tcp://host:8786")
        object.__setattr__(self, "bits", tuple(int(b) for b in bits))
        object.__setattr__(self, "sparsities", tuple(float(s) for s in sparsities))
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))
        object.__setattr__(self, "epochs_scale", float(scale))
        out = Path(self.out) if self.out is not None else Path("runs") / "sweeps" / self.design
        object.__setattr__(self, "out", out)

    @property
    def out_dir(self) -> Path:
        """The output folder (``out``, never None after validation)."""
        assert self.out is not None  # set in __post_init__
        return self.out

    def epochs(self) -> dict[str, int]:
        """Epochs of each phase: the design's defaults times ``epochs_scale``, at least 1."""
        from edgeml.models import zoo

        base = zoo.get(self.design).epochs
        return {k: max(1, round(v * self.epochs_scale)) for k, v in base.items()}

    def grid(self) -> list[tuple[int, int, str, float]]:
        """Every ``(seed, bits, layer assignment, sparsity)`` point, in report order."""
        return [
            (s, b, lb, p)
            for s in self.seeds
            for b in self.bits
            for lb in self.layer_bits
            for p in self.sparsities
        ]


def _check_layer_axis(design: str, values: Any) -> tuple[str, ...]:
    """Canonical, de-duplicated assignments (first-seen order); names and widths checked."""
    from edgeml import mixed

    if isinstance(values, str | dict) or not isinstance(values, Sequence) or not values:
        raise ConfigError(
            f"sweep layer_bits must be a non-empty list of assignments like 'fc1=4,fc4=8'; "
            f"got {values!r}"
        )
    out: list[str] = []
    for v in values:
        lb = mixed.parse_layer_bits(v) if isinstance(v, str) else dict(v)
        key = mixed.format_layer_bits(lb)
        if key not in out:
            out.append(key)
    named = [mixed.parse_layer_bits(k) for k in out if k]
    if named:
        from edgeml.models import zoo

        spec = zoo.get(design)
        lo = spec.bit_widths[0]
        allowed = mixed.quant_layers(spec.build_qat(lo))
        for lb in named:
            mixed.check_layer_bits(lb, allowed, spec.bit_widths)
    return tuple(out)


def _unique_sorted(values: Sequence[Any], name: str) -> list[Any]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ConfigError(f"sweep {name} must be a list of numbers; got {values!r}")
    if len(values) == 0:
        raise ConfigError(f"sweep {name} must not be empty")
    try:
        return sorted(set(values))
    except TypeError as exc:
        raise ConfigError(f"sweep {name} must be numbers; got {list(values)!r}") from exc


def point_key(
    design: str,
    seed: int,
    bits: int,
    sparsity: float,
    epochs: dict[str, int],
    layer_bits: str = "",
) -> str:
    """File-name-safe cache key of one grid point, e.g. ``mlp-s0-b6-p0.75-e60.40.40``.

    A per-layer assignment is appended (``...-e60.40.40-Lfc1=4,fc3=8``); uniform
    points keep the key they always had.
    """
    ep = ".".join(str(epochs[k]) for k in ("float", "qat", "finetune"))
    key = f"{design}-s{seed}-b{bits}-p{sparsity:.6g}-e{ep}"
    return f"{key}-L{layer_bits}" if layer_bits else key


def parse_layer_bits_axis(tokens: Sequence[str]) -> tuple[str, ...]:
    """``--layer-bits`` values (each ``"fc1=4,fc4=8"`` or ``uniform``) -> canonical assignments."""
    from edgeml import mixed

    if not tokens:
        raise ConfigError("--layer-bits needs at least one assignment like fc1=4,fc4=8")
    return tuple(mixed.format_layer_bits(mixed.parse_layer_bits(t)) for t in tokens)


# ----------------------------------------------------------------- parse helpers


def parse_bits(tokens: Sequence[str]) -> tuple[int, ...]:
    """``["2-8"]``, ``["2,4,6"]`` or ``["2", "4"]`` (ranges inclusive) -> bit widths."""
    return tuple(_parse_ints(tokens, "--bits"))


def parse_sparsities(tokens: Sequence[str]) -> tuple[float, ...]:
    """``["0,0.5,0.9"]`` or ``["0", "0.5"]`` -> sparsities (fractions)."""
    out: list[float] = []
    for item in _split(tokens):
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(
                f"--sparsity takes fractions like 0,0.25,0.5; {item!r} is not a number"
            ) from None
        if not math.isfinite(value):
            raise ConfigError(f"--sparsity must be finite; got {item!r}")
        out.append(value)
    return tuple(out)


def parse_seeds(tokens: Sequence[str]) -> tuple[int, ...]:
    """One integer N -> seeds 0..N-1; a list (``0,5,7``) or range (``3-5``) -> those seeds."""
    items = _split(tokens)
    if len(items) == 1 and "-" not in items[0]:
        try:
            n = int(items[0])
        except ValueError:
            raise ConfigError(
                f"--seeds takes a count N (seeds 0..N-1) or a list like 0,5,7; got {items[0]!r}"
            ) from None
        if n < 1:
            raise ConfigError(f"--seeds count must be >= 1; got {n}")
        return tuple(range(n))
    return tuple(_parse_ints(tokens, "--seeds"))


def _split(tokens: Sequence[str]) -> list[str]:
    items = [t.strip() for tok in tokens for t in str(tok).split(",") if t.strip()]
    if not items:
        raise ConfigError("an empty list was given; see --help for the syntax")
    return items


def _parse_ints(tokens: Sequence[str], flag: str) -> list[int]:
    out: list[int] = []
    for item in _split(tokens):
        lo, sep, hi = item.partition("-")
        try:
            if sep and lo:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ConfigError(f"{flag} range {item!r} is empty (write low-high)")
                out.extend(range(a, b + 1))
            else:
                out.append(int(item))
        except ValueError:
            raise ConfigError(
                f"{flag} takes integers, lists (2,4,6) or ranges (2-8); got {item!r}"
            ) from None
    return out


# ---------------------------------------------------------- work (runs on workers)


@contextmanager
def _single_thread() -> Iterator[None]:
    """One torch thread: no oversubscription, and results independent of the core count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=8)
def _data(design: str, seed: int) -> Any:
    """The design's data of ``seed``, loaded once per process."""
    from edgeml.models import zoo

    return zoo.get(design).load_data(seed)


def train_float_task(design: str, seed: int, epochs: dict[str, int]) -> dict[str, Any]:
    """Train the float model of one seed: ``{"state", "metrics", "seconds"}``.

    The state dict comes back as numpy arrays (a plain torch model round-trips
    bit-exactly, as between ``edgeml train`` and ``edgeml compress``).
    """
    from edgeml.models import zoo

    with _single_thread():
        spec = zoo.get(design)
        data = _data(design, seed)
        t0 = time.perf_counter()
        model = zoo.train_float(spec, data, epochs["float"], seed=seed)
        seconds = time.perf_counter() - t0
        metrics = zoo.evaluate(spec, model, data.x_test, spec.targets("test", data))
    state = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    return {"state": state, "metrics": metrics, "seconds": seconds}


def run_chain_task(
    design: str,
    seed: int,
    bits: int,
    sparsities: Sequence[float],
    epochs: dict[str, int],
    float_result: dict[str, Any],
    on_point: Callable[[Point], None] | None = None,
    point_hook: PointHook | None = None,
    implement: tuple[str, float] | None = None,
    layer_bits: str = "",
) -> list[Point]:
    """QAT at ``bits`` from the seed's float model, then prune + fine-tune each sparsity.

    ``layer_bits`` (``"fc1=4,fc4=8"``) gives those layers their own width.
    Returns one point record per sparsity; ``on_point`` is called as each finishes.
    ``point_hook`` (see :attr:`SweepConfig.point_hook`) adds ``point["analysis"]``;
    ``implement`` (device, clock MHz) adds ``point["implement"]`` (place-and-route).
    """
    import torch

    from edgeml import mixed
    from edgeml.models import zoo

    assignment = mixed.parse_layer_bits(layer_bits)
    with _single_thread():
        spec = zoo.get(design)
        data = _data(design, seed)
        y_test = spec.targets("test", data)
        float_model = spec.build_float()
        float_model.load_state_dict(
            {k: torch.from_numpy(v) for k, v in float_result["state"].items()}
        )
        float_model.eval()
        t0 = time.perf_counter()
        if spec.low_rank:  # a design factorised by default (randnla), as its flow does
            from edgeml import lowrank

            float_model, spec, _ = lowrank.factorize_design(
                spec, data, float_model, spec.low_rank, epochs["finetune"], seed
            )
        qat = zoo.train_qat(
            spec, data, float_model, bits, epochs["qat"], seed, layer_bits=assignment or None
        )
        qat_seconds = time.perf_counter() - t0
        qat_metrics = zoo.evaluate(spec, qat, data.x_test, y_test)
        points = []
        for sparsity in sparsities:
            t0 = time.perf_counter()
            pruned = zoo.prune(spec, data, qat, sparsity, epochs["finetune"], seed)
            metrics = zoo.evaluate(spec, pruned, data.x_test, y_test)
            point: Point = {
                "format": POINT_FORMAT,
                "key": point_key(design, seed, bits, sparsity, epochs, layer_bits),
                "design": design,
                "seed": seed,
                "bits": bits,
                "sparsity": float(sparsity),
                "epochs": dict(epochs),
                "metric_name": spec.primary,
                "metric": float(metrics[spec.primary]),
                "float_metric": float(float_result["metrics"][spec.primary]),
                "qat_metric": float(qat_metrics[spec.primary]),
                "measured_sparsity": float(zoo.edge_sparsity(spec, pruned)),
                "metrics": {k: float(v) for k, v in metrics.items()},
                "seconds": time.perf_counter() - t0,
                "qat_seconds": qat_seconds,
                "float_seconds": float(float_result["seconds"]),
            }
            if assignment:
                point["layer_bits"] = dict(assignment)
            if point_hook is not None:
                point["analysis"] = point_hook(spec, data, float_model, qat, pruned, point)
            if implement is not None:
                point["implement"] = _implement_point(spec, pruned, design, *implement)
            points.append(point)
            if on_point is not None:
                on_point(point)
    return points


def _implement_point(spec: Any, pruned: Any, design: str, family: str, mhz: float) -> dict:
    """Fmax, latency, LUT4 and FF of a point's integer design, placed on ``family``."""
    from edgeml.golden import GoldenModel
    from edgeml.implement import ImplementOptions, implement_model

    g = GoldenModel.from_torch(spec.edge(pruned), spec.input_shape)
    return implement_model(g, design, ImplementOptions(family=family, clock_mhz=mhz))


def _publish_point(point: Point) -> None:
    """Send a finished point to the client at once (Dask worker side): cache + progress bar."""
    try:
        from distributed import get_worker

        get_worker().log_event(PROGRESS_TOPIC, point)
    except Exception:  # progress is cosmetic; the result still comes back with the task
        log.debug("could not publish progress of %s", point["key"], exc_info=True)


# ------------------------------------------------------------- orchestration


@dataclass
class SweepStats:
    """What a run did: grid points, cache hits, and models trained (float, QAT, pruned)."""

    points: int = 0
    cached: int = 0
    float_trained: int = 0
    qat_trained: int = 0
    pruned_trained: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain dict for JSON."""
        return dict(self.__dict__)


@dataclass
class SweepResult:
    """A finished sweep: every point (grid order), the summary, and the files written."""

    config: SweepConfig
    points: list[Point]
    summary: dict[str, Any]
    stats: SweepStats
    mode: str
    wall_seconds: float
    files: dict[str, Path] = field(default_factory=dict)


class _PointSink:
    """Caches each finished point at once and counts it on a tqdm bar; thread-safe.

    Points arrive from the serial loop, from Dask events as a worker finishes
    each one (on the client's event-loop thread), and again with the finished
    chain; each is written and counted once. Keys outside the grid are ignored.
    """

    def __init__(
        self, points_dir: Path, expected: set[str], cached: int, desc: str, enabled: bool
    ) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=len(expected), initial=cached, desc=desc, unit="pt", disable=not enabled
        )
        self._dir = points_dir
        self._expected = expected
        self._lock = threading.Lock()
        self._seen: set[str] = set()

    def add(self, point: Point) -> None:
        key = point.get("key")
        with self._lock:
            if key in self._seen or key not in self._expected:
                return
            self._seen.add(key)
            _write_json_atomic(self._dir / f"{key}.json", point)
            self.bar.update(1)
            label = f"s{point['seed']} b{point['bits']} p{point['sparsity']:g}"
            if point.get("layer_bits"):
                label += " " + ",".join(f"{k}={v}" for k, v in point["layer_bits"].items())
            self.bar.set_postfix_str(f"last {label}: {point['metric']:.4g}", refresh=False)

    def on_event(self, event: Any) -> None:
        msg = event[1] if isinstance(event, tuple) and len(event) == 2 else event
        if isinstance(msg, dict) and msg.get("format") == POINT_FORMAT:
            try:
                self.add(msg)
            except Exception:  # never let the event thread die; the chain result follows
                log.debug("progress event not usable: %r", msg, exc_info=True)

    def close(self) -> None:
        self.bar.close()


def sweep(cfg: SweepConfig) -> SweepResult:
    """Run (or resume) the sweep ``cfg`` and write its JSON, plots and HTML to ``cfg.out``."""
    from edgeml.models import zoo

    t_start = time.perf_counter()
    spec = zoo.get(cfg.design)
    points, stats, mode = run_points(cfg)
    summary = summarize(points, spec.primary, spec.higher_is_better)
    wall = time.perf_counter() - t_start
    result = SweepResult(cfg, points, summary, stats, mode, wall)
    result.files = write_outputs(result, spec.title, cfg.epochs())
    return result


def run_points(cfg: SweepConfig) -> tuple[list[Point], SweepStats, str]:
    """Train (or read from the cache) every grid point: ``(points in grid order, stats, mode)``."""
    epochs = cfg.epochs()
    out = cfg.out_dir
    points_dir = out / cfg.points_subdir
    need = ("analysis",) if cfg.point_hook is not None else ()
    need += ("implement",) if cfg.implement is not None else ()
    points_dir.mkdir(parents=True, exist_ok=True)
    grid = cfg.grid()
    stats = SweepStats(points=len(grid))

    done: dict[str, Point] = {}
    if cfg.resume:
        for seed, bits, lb, sp in grid:
            key = point_key(cfg.design, seed, bits, sp, epochs, lb)
            cached = _read_point(points_dir / f"{key}.json", key, need)
            if cached is not None:
                done[key] = cached
    stats.cached = len(done)

    # Missing points, grouped into (seed, bits, assignment) chains; a seed with no chain
    # needs no float.
    chains: list[Chain] = []
    for seed in cfg.seeds:
        for bits in cfg.bits:
            for lb in cfg.layer_bits:
                todo = tuple(
                    sp
                    for sp in cfg.sparsities
                    if point_key(cfg.design, seed, bits, sp, epochs, lb) not in done
                )
                if todo:
                    chains.append((seed, bits, lb, todo))
    log.info(
        "sweep %s: %d points, %d cached, %d chains to run, epochs %s",
        cfg.design, len(grid), len(done), len(chains), epochs,
    )  # fmt: skip

    keys = {point_key(cfg.design, s, b, p, epochs, lb) for s, b, lb, p in grid}
    desc = cfg.label or f"{'analyze' if cfg.point_hook is not None else 'sweep'} {cfg.design}"
    progress = _PointSink(points_dir, keys, len(done), desc, cfg.progress)

    def finish_chain(points: list[Point]) -> None:
        for p in points:
            progress.add(p)
            done[p["key"]] = p
        stats.qat_trained += 1
        stats.pruned_trained += len(points)

    n_workers = min(cfg.workers, max(1, len(chains)))
    try:
        if not chains:
            mode = "cached"
        elif cfg.scheduler is None and n_workers == 1:
            mode = "serial"
            stats.float_trained = _run_serial(cfg, epochs, chains, finish_chain, progress)
        else:
            mode, stats.float_trained = _run_dask(
                cfg, epochs, chains, n_workers, finish_chain, progress
            )
    finally:
        progress.close()

    points = [done[point_key(cfg.design, s, b, p, epochs, lb)] for s, b, lb, p in grid]
    return points, stats, mode


def _implement_arg(cfg: SweepConfig) -> tuple[str, float] | None:
    return (cfg.implement, float(cfg.clock_mhz)) if cfg.implement is not None else None


def _run_serial(
    cfg: SweepConfig,
    epochs: dict[str, int],
    chains: list[Chain],
    finish_chain: Callable[[list[Point]], None],
    progress: _PointSink,
) -> int:
    """All chains in this process, in order; returns the number of float models trained."""
    floats: dict[int, dict[str, Any]] = {}
    for seed, bits, lb, todo in chains:
        if seed not in floats:
            floats.clear()  # chains are seed-ordered: the previous seed's model is done
            floats[seed] = train_float_task(cfg.design, seed, epochs)
        points = run_chain_task(
            cfg.design,
            seed,
            bits,
            todo,
            epochs,
            floats[seed],
            on_point=progress.add,
            point_hook=cfg.point_hook,
            implement=_implement_arg(cfg),
            layer_bits=lb,
        )
        finish_chain(points)
    return len({c[0] for c in chains})


def _run_dask(
    cfg: SweepConfig,
    epochs: dict[str, int],
    chains: list[Chain],
    n_workers: int,
    finish_chain: Callable[[list[Point]], None],
    progress: _PointSink,
) -> tuple[str, int]:
    """Chains as Dask tasks (each after its seed's float task); results as they complete."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DependencyError(
            "parallel sweeps need Dask distributed: pip install 'dask[distributed]' "
            "(or run with --workers 1)"
        ) from exc

    cluster = None
    if cfg.scheduler is not None:
        try:
            client = Client(cfg.scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(
                f"cannot reach a Dask scheduler at {cfg.scheduler!r} within "
                f"{SCHEDULER_TIMEOUT_S} s ({type(exc).__name__}: {exc}); start one with "
                "`dask scheduler` + `dask worker ADDRESS --nthreads 1`, or drop --scheduler "
                "to use a local cluster"
            ) from exc
        mode = f"scheduler {cfg.scheduler}"
    else:
        log.info("starting a local Dask cluster of %d worker processes", n_workers)
        with _workers_ignore_sigint():
            cluster = _local_cluster(LocalCluster, n_workers)
        try:
            client = Client(cluster)
        except BaseException:
            cluster.close()
            raise
        mode = f"local-cluster x{n_workers}"
    tag = uuid.uuid4().hex[:8]
    try:
        client.subscribe_topic(PROGRESS_TOPIC, progress.on_event)
        seeds = sorted({c[0] for c in chains})
        floats = {
            seed: client.submit(
                train_float_task,
                cfg.design,
                seed,
                epochs,
                key=f"edgeml-sweep-float-{cfg.design}-s{seed}-{tag}",
            )
            for seed in seeds
        }
        futures = [
            client.submit(
                run_chain_task,
                cfg.design,
                seed,
                bits,
                todo,
                epochs,
                floats[seed],
                _publish_point,
                cfg.point_hook,
                _implement_arg(cfg),
                lb,
                key=f"edgeml-sweep-chain-{cfg.design}-s{seed}-b{bits}-{i}-{tag}",
            )
            for i, (seed, bits, lb, todo) in enumerate(chains)
        ]
        for fut in as_completed(futures):
            finish_chain(fut.result())
        return mode, len(seeds)
    finally:
        try:
            client.unsubscribe_topic(PROGRESS_TOPIC)
        except Exception:
            pass
        client.close()
        if cluster is not None:
            cluster.close()


def _local_cluster(cls: Any, n_workers: int) -> Any:
    """A ``LocalCluster`` of single-threaded worker processes on 127.0.0.1."""
    import dask

    # No dashboard reads the workers' statistical profiler (a 10 ms sampling thread);
    # switched off it saves ~30 % of an idle cluster's CPU on a small shared machine.
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        return cls(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            # no dashboard; the scheduler's bare HTTP endpoint on a free local port, so that
            # concurrent sweeps (or another cluster on :8787) do not collide
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
        )


@contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Start worker processes with SIGINT ignored (they inherit it).

    Ctrl-C in a terminal reaches the whole process group: the client then shuts
    the cluster down cleanly, instead of every worker dying with a traceback.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


_NUMERIC_FIELDS = ("seed", "bits", "sparsity", "metric", "float_metric", "qat_metric",
                   "measured_sparsity", "seconds")  # fmt: skip


def _read_point(path: Path, key: str, need: Sequence[str] = ()) -> Point | None:
    """A cached point, or None (missing, or unreadable: then it is recomputed, with a warning).

    ``need`` names fields the point must also have (e.g. ``analysis``)."""
    if not path.is_file():
        return None
    try:
        point = json.loads(path.read_text())
        ok = (
            isinstance(point, dict)
            and point.get("format") == POINT_FORMAT
            and point.get("key") == key
            and all(isinstance(point.get(k), int | float) for k in _NUMERIC_FIELDS)
            and all(k in point for k in need)
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ok = False
    if not ok:
        log.warning("cached sweep point %s is unreadable or foreign; recomputing it", path)
        return None
    return point


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON via a temporary file + rename, so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


# -------------------------------------------------------------------- summary


def _stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        # sample standard deviation over seeds (0 for a single seed)
        "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
    }


def summarize(points: Sequence[Point], metric: str, higher_is_better: bool) -> dict[str, Any]:
    """Per ``(bits, layer assignment, sparsity)``: mean/std/min/max over seeds and the mean
    difference to float (``row["layer_bits"]`` is there for mixed-precision rows only).

    ``delta_float`` is the mean over seeds of (point - that seed's float model),
    in the metric's units (negative = worse for accuracy, positive = worse for EMD).
    """
    floats: dict[int, float] = {}
    groups: dict[tuple[int, str, float], list[Point]] = {}
    for p in points:
        floats[int(p["seed"])] = float(p["float_metric"])
        lb = ",".join(f"{k}={int(v)}" for k, v in sorted((p.get("layer_bits") or {}).items()))
        groups.setdefault((int(p["bits"]), lb, float(p["sparsity"])), []).append(p)
    rows = []
    for (bits, lb, sparsity), ps in sorted(groups.items()):
        row: dict[str, Any] = {"bits": bits, "sparsity": sparsity}
        if lb:
            row["layer_bits"] = lb
        row.update(_stats([p["metric"] for p in ps]))
        row["delta_float"] = float(np.mean([p["metric"] - p["float_metric"] for p in ps]))
        row["qat_mean"] = float(np.mean([p["qat_metric"] for p in ps]))
        row["measured_sparsity"] = float(np.mean([p["measured_sparsity"] for p in ps]))
        impl = [p["implement"] for p in ps if p.get("implement")]
        if impl:  # place-and-route objectives (edgeml sweep --implement)
            for k in ("fmax_mhz", "latency_ns", "lut4", "ff"):
                row[k] = float(np.mean([i[k] for i in impl if i.get(k) is not None]))
        rows.append(row)
    return {
        "metric": metric,
        "higher_is_better": higher_is_better,
        "float": {
            **_stats(list(floats.values())),
            "by_seed": {str(k): v for k, v in floats.items()},
        },
        "rows": rows,
    }


def _fmt_metric(value: float, metric: str) -> str:
    return f"{100 * value:.2f}" if metric == "accuracy" else f"{value:.4g}"


def _fmt_delta(value: float, metric: str) -> str:
    return f"{100 * value:+.2f}" if metric == "accuracy" else f"{value:+.3g}"


def _table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    metric = summary["metric"]
    unit = " %" if metric == "accuracy" else ""
    dunit = " pp" if metric == "accuracy" else ""
    head = [
        "bits",
        "sparsity",
        "seeds",
        f"mean{unit}",
        f"std{unit}",
        f"min{unit}",
        f"max{unit}",
        f"vs float{dunit}",
        "zeros",
    ]
    impl = any("fmax_mhz" in r for r in summary["rows"])
    if impl:
        head += ["Fmax MHz", "latency ns", "LUT4"]
    mixed = any(r.get("layer_bits") for r in summary["rows"])
    if mixed:
        head.insert(1, "layers")
    body = []
    fl = summary["float"]
    body.append(
        ["float"]
        + ["-"] * mixed
        + ["-", str(fl["n"])]
        + [_fmt_metric(fl[k], metric) for k in ("mean", "std", "min", "max")]
        + ["", ""]
        + ["", "", ""] * impl
    )
    for r in summary["rows"]:
        body.append(
            [str(r["bits"])]
            + [r.get("layer_bits") or "uniform"] * mixed
            + [f"{100 * r['sparsity']:.0f} %", str(r["n"])]
            + [_fmt_metric(r[k], metric) for k in ("mean", "std", "min", "max")]
            + [_fmt_delta(r["delta_float"], metric), f"{100 * r['measured_sparsity']:.1f} %"]
            + (
                [f"{r['fmax_mhz']:.1f}", f"{r['latency_ns']:.0f}", f"{r['lut4']:,.0f}"]
                if impl and "fmax_mhz" in r
                else ["-"] * 3 * impl
            )
        )
    return head, body


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table (what the CLI prints)."""
    head, body = _table_rows(summary)
    widths = [max(len(head[i]), *(len(r[i]) for r in body)) for i in range(len(head))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    better = "higher" if summary["higher_is_better"] else "lower"
    lines.append(
        f"{summary['metric']} ({better} is better); std over seeds (sample); 'vs float' = mean "
        "difference to the same seed's float model; 'zeros' = measured fraction of zero weight codes"
    )
    return "\n".join(lines)


# -------------------------------------------------------------------- plots & HTML


def _new_figure(width: float, height: float) -> Any:
    # Figure + Agg canvas directly: no pyplot global state, no GUI backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _metric_label(summary: dict[str, Any]) -> tuple[float, str]:
    if summary["metric"] == "accuracy":
        return 100.0, "top-1 accuracy (%), higher is better"
    better = "higher" if summary["higher_is_better"] else "lower"
    return 1.0, f"{summary['metric']} ({better} is better)"


def plot_curves(summary: dict[str, Any], x_axis: str, title: str) -> Any:
    """Metric vs ``x_axis`` ("bits" or "sparsity"), one line per value of the other axis.

    Lines are means over seeds, shaded bands span min..max over seeds; the float
    model is a dashed line with its own min..max band.
    """
    from matplotlib import colormaps

    scale, ylabel = _metric_label(summary)
    other = "sparsity" if x_axis == "bits" else "bits"
    rows = summary["rows"]
    levels = sorted({r[other] for r in rows})
    cmap = colormaps["viridis"]
    fig = _new_figure(7.5, 4.6)
    ax = fig.add_subplot()
    fl = summary["float"]
    ax.axhspan(scale * fl["min"], scale * fl["max"], color="0.6", alpha=0.25, lw=0)
    ax.axhline(scale * fl["mean"], color="k", ls="--", lw=1.2, label="float (grey: min..max)")
    for i, level in enumerate(levels):
        sel = sorted(
            (r for r in rows if r[other] == level and not r.get("layer_bits")),
            key=lambda r: r[x_axis],
        )
        if not sel:  # mixed-precision rows are in the tables, not on the uniform curves
            continue
        xs = [100 * r[x_axis] if x_axis == "sparsity" else r[x_axis] for r in sel]
        color = cmap(i / max(1, len(levels) - 1) * 0.9)
        name = f"{100 * level:.0f} % pruned" if other == "sparsity" else f"{level} bits"
        ax.plot(xs, [scale * r["mean"] for r in sel], "o-", color=color, lw=1.5, ms=4, label=name)
        if any(r["n"] > 1 for r in sel):
            ax.fill_between(
                xs,
                [scale * r["min"] for r in sel],
                [scale * r["max"] for r in sel],
                color=color,
                alpha=0.18,
                lw=0,
            )
    ax.set_xlabel(
        "bit width (weights and activations)" if x_axis == "bits" else "pruned weights (%)"
    )
    if x_axis == "bits":
        ax.set_xticks(sorted({r["bits"] for r in rows}))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", ncol=2 if len(levels) > 4 else 1)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.45;padding:0 1em}
h1{border-bottom:2px solid #345;padding-bottom:.2em}
h2{margin-top:2em;border-bottom:1px solid #ccc;padding-bottom:.15em;color:#234}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right;vertical-align:top}
th{background:#eef2f6}
tr:nth-child(even) td{background:#fafbfc}
.muted{color:#777}
img.plot{max-width:100%;display:block;margin:.5em 0 1.2em;border:1px solid #eee}
code{background:#f3f3f3;padding:0 .2em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_table(head: list[str], body: list[list[str]]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def render_html(
    result: SweepResult, title: str, epochs: dict[str, int], pngs: dict[str, bytes]
) -> str:
    """A self-contained sweep.html: settings, both plots (base64 PNG), summary and all points."""
    cfg, summary = result.config, result.summary
    metric = summary["metric"]
    head, body = _table_rows(summary)
    mixed = cfg.layer_bits != ("",)
    point_head = ["seed", "bits"] + ["layers"] * mixed
    point_head += ["sparsity", metric, "float", "QAT", "zeros", "seconds"]
    point_body = [
        [
            str(p["seed"]),
            str(p["bits"]),
            *(
                [",".join(f"{k}={v}" for k, v in (p.get("layer_bits") or {}).items()) or "uniform"]
                * mixed
            ),
            f"{100 * p['sparsity']:.0f} %",
            _fmt_metric(p["metric"], metric),
            _fmt_metric(p["float_metric"], metric),
            _fmt_metric(p["qat_metric"], metric),
            f"{100 * p['measured_sparsity']:.1f} %",
            f"{p['seconds']:.1f}",
        ]
        for p in result.points
    ]
    imgs = "".join(
        f'<img class="plot" alt="{_e(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'
        for name, data in pngs.items()
    )
    settings = [
        ["design", f"{cfg.design} ({title})"],
        ["bit widths", ", ".join(map(str, cfg.bits))],
        ["sparsities", ", ".join(f"{s:g}" for s in cfg.sparsities)],
        ["seeds", ", ".join(map(str, cfg.seeds))],
        *(
            [["per-layer widths", "; ".join(lb or "uniform" for lb in cfg.layer_bits)]]
            if mixed
            else []
        ),
        [
            "epochs (float / QAT / fine-tune)",
            f"{epochs['float']} / {epochs['qat']} / {epochs['finetune']}",
        ],
        ["execution", result.mode],
        [
            "work",
            f"{result.stats.points} points: {result.stats.cached} cached, "
            f"{result.stats.float_trained} float + {result.stats.qat_trained} QAT + "
            f"{result.stats.pruned_trained} pruned models trained",
        ],
        ["wall time", f"{result.wall_seconds:.1f} s"],
        ["written", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")],
    ]
    better = "higher" if summary["higher_is_better"] else "lower"
    unit = "percentage points" if metric == "accuracy" else "metric units"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>edgeml sweep: {_e(cfg.design)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Bit width &times; pruning sweep: {_e(cfg.design)}</h1>"
        f"<p>{_e(title)}. Metric: <b>{_e(metric)}</b> ({better} is better) on the test split. "
        "Lines are means over seeds; bands span min..max over seeds; the dashed line and grey "
        "band are the float model.</p>"
        "<h2>Settings</h2><table><tbody>"
        + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in settings)
        + "</tbody></table>"
        f"<h2>Curves</h2>{imgs}"
        "<h2>Summary over seeds</h2>"
        f"<p class='muted'>'vs float' is the mean difference to the same seed's float model, in "
        f"{unit}; 'zeros' is the measured fraction of zero weight codes on chip (QAT at low bit "
        "widths zeroes weights even without pruning).</p>"
        + _html_table(head, body)
        + "<h2>Every point</h2><details><summary>"
        + f"{len(result.points)} points</summary>"
        + _html_table(point_head, point_body)
        + "</details></body></html>"
    )


def write_outputs(result: SweepResult, title: str, epochs: dict[str, int]) -> dict[str, Path]:
    """Write sweep.json, both PNG plots and sweep.html into the output folder."""
    cfg = result.config
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "json": out / "sweep.json",
        "bits_png": out / "metric_vs_bits.png",
        "sparsity_png": out / "metric_vs_sparsity.png",
        "html": out / "sweep.html",
    }
    doc = {
        "format": SWEEP_FORMAT,
        "design": cfg.design,
        "title": title,
        "metric": result.summary["metric"],
        "higher_is_better": result.summary["higher_is_better"],
        "grid": {
            "bits": list(cfg.bits),
            "sparsities": list(cfg.sparsities),
            "seeds": list(cfg.seeds),
            **({"layer_bits": list(cfg.layer_bits)} if cfg.layer_bits != ("",) else {}),
        },
        "epochs": epochs,
        "epochs_scale": cfg.epochs_scale,
        "mode": result.mode,
        "wall_seconds": result.wall_seconds,
        "stats": result.stats.as_dict(),
        "summary": result.summary,
        "points": result.points,
    }
    _write_json_atomic(files["json"], doc)
    pngs = {}
    for name, axis in (("bits_png", "bits"), ("sparsity_png", "sparsity")):
        other = "sparsity" if axis == "bits" else "bit width"
        fig = plot_curves(
            result.summary,
            axis,
            f"{cfg.design}: {result.summary['metric']} vs {'bit width' if axis == 'bits' else axis},"
            f" one line per {other}; mean of {len(cfg.seeds)} seed(s), bands min..max",
        )
        data = _png(fig)
        files[name].write_bytes(data)
        pngs[f"{result.summary['metric']} vs {axis}"] = data
    files["html"].write_text(render_html(result, title, epochs, pngs), encoding="utf-8")
    return files


# ------------------------------------------------------------------------- CLI

_HELP = "bit-width x pruning sweep of a design over seeds, in parallel -> sweep.json/html"
_DESCRIPTION = (
    _HELP + "\n\n"
    "Trains a built-in design at every point of the grid seeds x bit widths x pruning\n"
    "sparsities and reports its headline metric (accuracy, or EMD for ECON-T) against the\n"
    "float model, with the spread over seeds. Writes OUT/sweep.json, metric_vs_bits.png,\n"
    "metric_vs_sparsity.png and a self-contained sweep.html; prints the summary table."
)
_EPILOG = """\
Examples:
  edgeml sweep --design mlp                            # 2..8 bits x 0..90 % pruned x 3 seeds
  edgeml sweep --design jet --bits 4-8 --sparsity 0,0.75 --seeds 5
  edgeml sweep --design jet --bits 6 --layer-bits uniform --layer-bits fc1=4,fc4=8
  edgeml sweep --design mlp --epochs-scale 0.1 --workers 2 -q   # quick look
  edgeml sweep --design econt --scheduler tcp://10.0.0.5:8786   # an existing Dask cluster

Each seed trains its float model once; QAT runs once per (seed, bits) and every
sparsity prunes + fine-tunes a copy of it. Finished points are cached in
OUT/points/ and skipped on the next run (--no-resume recomputes them).

Exit codes: 0 ok, 1 bad option or failed run, 2 usage error, 130 interrupted.
"""


def _add_arguments(p: argparse.ArgumentParser) -> None:
    # No registry import here: building the parser must not import torch (edgeml --help).
    p.add_argument(
        "--design",
        metavar="NAME",
        help="built-in design of the registry, e.g. jet, econt, rn08, mlp, cnn (an unknown "
        "name lists them all; default: the registry's default design)",
    )
    p.add_argument(
        "--bits",
        nargs="+",
        metavar="B",
        help="bit widths: a range 2-8, a list 2,4,6 or 2 4 6 (default: 2-8)",
    )
    p.add_argument(
        "--sparsity",
        nargs="+",
        metavar="S",
        help="pruning sparsities, fractions in [0, 0.95]: 0,0.5,0.9 (default: 0,0.25,0.5,0.75,0.9)",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        metavar="N",
        help="a count N (seeds 0..N-1) or a list/range of seeds: 0,5,7 or 3-5 (default: 3)",
    )
    p.add_argument(
        "--layer-bits",
        action="append",
        metavar="ASSIGN",
        help="per-layer bit widths, one grid point per assignment: fc1=4,fc4=8 (weights and the "
        "layer's output activation; other layers take --bits); repeat it for more points, "
        "'uniform' adds the all---bits point (default: uniform only)",
    )
    p.add_argument(
        "--epochs-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="fraction of the design's default epochs per phase, e.g. 0.1 for a quick run "
        "(default: 1)",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help=f"local worker processes, one torch thread each; 1 = serial in this process, no "
        f"cluster (default: the number of cores, here {default_workers()})",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="use an existing Dask cluster (e.g. tcp://host:8786) instead of a local one; "
        "its workers must be able to import edgeml",
    )
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default: runs/sweeps/<design>/)"
    )
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip points cached in OUT/points/ by an earlier run with the same epochs "
        "(default: on)",
    )
    p.add_argument(
        "--implement",
        metavar="DEVICE",
        help="also place and route every point's integer design on this FPGA (e.g. ecp5-85k; "
        "yowasp yosys + nextpnr, minutes per point, cached by RTL hash): Fmax, latency (ns) "
        "and LUT4 join the table as objectives",
    )
    p.add_argument(
        "--clock-mhz",
        type=float,
        default=100.0,
        help="clock target of --implement in MHz (default 100)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_sweep_parser(subparsers: Any) -> None:
    """Add the ``sweep`` sub-command to the ``edgeml`` parser's ``subparsers``."""
    sp = subparsers.add_parser(
        "sweep",
        help=_HELP,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(sp)


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """Turn parsed ``edgeml sweep`` options into a validated :class:`SweepConfig`."""
    if args.scheduler is not None and args.workers is not None:
        raise ConfigError(
            "give either --workers (a local cluster) or --scheduler (an existing one), not both"
        )
    if args.design is None:
        from edgeml.config import DEFAULT_DESIGN

        args.design = DEFAULT_DESIGN
    return SweepConfig(
        design=args.design,
        bits=parse_bits(args.bits) if args.bits else DEFAULT_BITS,
        sparsities=parse_sparsities(args.sparsity) if args.sparsity else DEFAULT_SPARSITIES,
        seeds=parse_seeds(args.seeds) if args.seeds else tuple(range(DEFAULT_SEEDS)),
        layer_bits=parse_layer_bits_axis(args.layer_bits) if args.layer_bits else ("",),
        epochs_scale=args.epochs_scale,
        workers=args.workers if args.workers is not None else default_workers(),
        scheduler=args.scheduler,
        out=args.out,
        resume=args.resume,
        progress=not args.quiet,
        implement=args.implement,
        clock_mhz=args.clock_mhz,
    )


def quiet_dask() -> None:
    """Keep Dask's INFO chatter (cluster start/stop) off the progress bar."""
    try:
        import distributed  # noqa: F401 - its import installs its own logging levels
    except ImportError:
        return
    logging.getLogger("distributed").setLevel(logging.ERROR)


def run_sweep_command(args: argparse.Namespace) -> int:
    """Run ``edgeml sweep`` from parsed options, print the table; returns the exit code."""
    if not args.verbose:
        # per-phase training logs would break the progress bar
        logging.getLogger("edgeml.models").setLevel(logging.WARNING)
    try:
        cfg = config_from_args(args)
        if not args.verbose and (cfg.scheduler is not None or cfg.workers > 1):
            quiet_dask()
        result = sweep(cfg)
    except EdgemlError as exc:
        print(f"edgeml: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgeml: interrupted (finished points are cached; rerun to resume)", file=sys.stderr)
        return 130
    print(format_table(result.summary))
    s = result.stats
    print(
        f"edgeml sweep: {s.points} points ({s.cached} cached; trained {s.float_trained} float, "
        f"{s.qat_trained} QAT, {s.pruned_trained} pruned) in {result.wall_seconds:.1f} s "
        f"[{result.mode}]; {result.files['json']}, {result.files['html']}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m edgeml.sweep``: the same options as ``edgeml sweep``."""
    parser = argparse.ArgumentParser(
        prog="edgeml sweep",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return run_sweep_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
