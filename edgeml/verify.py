"""Bit-exactness checks: compare integer output codes of every level to the golden model.

A level (hls4ml C-sim, RTL, the trained Brevitas model) is compared on integer
codes, never on formatted floats. For each level we count mismatching vectors
and elements over many vectors and, on a mismatch, name the first layer whose
trace diverges from the golden trace.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgeml.golden import GoldenModel


@dataclass
class LevelResult:
    """Outcome of comparing one level with the golden model."""

    level: str
    vectors: int
    mismatching_vectors: int
    mismatching_elements: int
    max_abs_diff_lsb: int
    first_mismatch_vector: int | None = None
    first_divergent_layer: str | None = None
    status: str = "PASS"  # PASS | FAIL | SKIPPED
    note: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def skipped(level: str, why: str) -> LevelResult:
    return LevelResult(level, 0, 0, 0, 0, status="SKIPPED", note=why)


def compare_codes(
    level: str, ref: np.ndarray, got: np.ndarray, seconds: float = 0.0
) -> LevelResult:
    """Count mismatches between integer code arrays of identical shape (N, ...)."""
    ref = np.asarray(ref)
    got = np.asarray(got)
    if ref.shape != got.shape:
        return LevelResult(
            level,
            len(ref),
            len(ref),
            int(ref.size),
            0,
            0,
            None,
            "FAIL",
            f"shape mismatch: golden {ref.shape} vs {level} {got.shape}",
            seconds,
        )
    if got.dtype.kind not in "iu":
        raise TypeError(f"{level} outputs must be integer codes, got {got.dtype}")
    diff = got.astype(np.int64) - ref.astype(np.int64)
    bad_el = diff != 0
    bad_vec = bad_el.reshape(len(ref), -1).any(axis=1)
    n_vec = int(bad_vec.sum())
    first = int(np.argmax(bad_vec)) if n_vec else None
    return LevelResult(
        level=level,
        vectors=len(ref),
        mismatching_vectors=n_vec,
        mismatching_elements=int(bad_el.sum()),
        max_abs_diff_lsb=int(np.abs(diff).max()) if diff.size else 0,
        first_mismatch_vector=first,
        status="FAIL" if n_vec else "PASS",
        seconds=seconds,
    )


def verification_vectors(
    g: GoldenModel, x_data: np.ndarray | None, n_random: int, seed: int
) -> tuple[np.ndarray, dict[str, int]]:
    """Data codes + uniformly random codes over the full input type + corner cases.

    Corner cases: all-minimum, all-maximum, alternating min/max (both phases),
    all-zero and one-hot maxima at every position. Returns codes in the graph
    input layout and a count per source.
    """
    t = g.input_type
    shape = g.input_shape
    n_el = int(np.prod(shape))
    lo = max(t.qmin, g.input_quant.lo)
    hi = min(t.qmax, g.input_quant.hi)
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    counts: dict[str, int] = {}
    if x_data is not None and len(x_data):
        parts.append(np.asarray(x_data, np.int64).reshape(-1, *shape))
        counts["data"] = len(x_data)
    rand = rng.integers(lo, hi + 1, size=(n_random, *shape), dtype=np.int64)
    parts.append(rand)
    counts["random"] = n_random
    alt = np.where(np.arange(n_el) % 2 == 0, lo, hi)
    corners = [np.full(n_el, lo), np.full(n_el, hi), np.zeros(n_el, np.int64), alt, lo + hi - alt]
    onehot = np.full((n_el, n_el), lo, np.int64)
    onehot[np.arange(n_el), np.arange(n_el)] = hi
    corner = np.concatenate([np.stack(corners), onehot]).reshape(-1, *shape)
    corner = np.clip(corner, lo, hi)
    parts.append(corner)
    counts["corner"] = len(corner)
    return np.concatenate(parts).astype(np.int64), counts


def first_divergent_layer(
    golden_trace: dict[str, np.ndarray],
    other_trace: dict[str, np.ndarray],
    order: list[str],
) -> str | None:
    """Name of the first tensor (in golden op order) where two traces differ.

    ``other_trace`` maps golden tensor names to the other level's codes for
    the same vectors; tensors it lacks are skipped (not every level exposes
    every intermediate).
    """
    for name in order:
        if name in other_trace and name in golden_trace:
            a = np.asarray(golden_trace[name])
            b = np.asarray(other_trace[name])
            if a.shape != b.shape or not np.array_equal(a, b):
                return name
    return None


def run_level(
    level: str,
    g: GoldenModel,
    x_codes: np.ndarray,
    golden_out: np.ndarray,
    predict: Callable[[np.ndarray], np.ndarray],
    trace: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
) -> LevelResult:
    """Run ``predict`` on all vectors, compare, and localise the first divergent layer."""
    import time

    t0 = time.perf_counter()
    got = predict(x_codes)
    res = compare_codes(level, golden_out, got, time.perf_counter() - t0)
    res.extra["vectors_per_s"] = round(len(x_codes) / max(res.seconds, 1e-9), 1)
    if not res.passed and res.first_mismatch_vector is not None:
        bad = np.flatnonzero(
            (np.asarray(got) != golden_out).reshape(len(golden_out), -1).any(axis=1)
        )[:64]
        if trace is not None:
            _, gtrace = g.run(x_codes[bad], trace=True)
            other = trace(x_codes[bad])
            name = first_divergent_layer(gtrace, other, [op.output for op in g.ops])
            if name is not None:
                op = next(o for o in g.ops if o.output == name)
                res.first_divergent_layer = op.label
            res.extra["layers_compared"] = sorted(other)
        if res.first_divergent_layer is None:
            res.first_divergent_layer = f"output (first at vector {res.first_mismatch_vector})"
    return res
