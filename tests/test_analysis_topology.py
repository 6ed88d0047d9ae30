"""Merge trees, persistence of minima and basins of 2-D loss grids (models/analysis/topology)."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest

from edgeml.errors import ConfigError, DependencyError
from edgeml.models.analysis import topology as T


def _hand_grid() -> np.ndarray:
    """9x9 plateau at 5 with three pits of known depth and one known pass.

    Pit A (4,2)=0 and pit B (4,6)=1 are joined by the corridor (4,3)=2, (4,5)=2
    and the pass (4,4)=3, so B dies at 3 (persistence 2). Pit C (1,7)=0.5 is
    isolated and dies when the plateau (5) is reached (persistence 4.5). A is the
    global minimum (persistence = range = 5).
    """
    g = np.full((9, 9), 5.0)
    g[4, 2], g[4, 3], g[4, 4], g[4, 5], g[4, 6] = 0.0, 2.0, 3.0, 2.0, 1.0
    g[1, 7] = 0.5
    return g


def _wells(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bowl centred on the deepest of three Gaussian wells (depths 1, 0.6, 0.3): three minima."""
    a = np.linspace(-1.0, 1.0, n)
    b = np.linspace(-1.0, 1.0, n)
    A, B = np.meshgrid(a, b, indexing="ij")
    wells = [(0.5, 0.5, 1.0), (-0.5, -0.4, 0.6), (0.5, -0.5, 0.3)]
    loss = 0.2 * ((A - 0.5) ** 2 + (B - 0.5) ** 2)
    for ca, cb, depth in wells:
        loss = loss - depth * np.exp(-((A - ca) ** 2 + (B - cb) ** 2) / 0.05)
    return loss, a, b


def test_landscaper_fails_on_plateau_clearly_and_auto_falls_back() -> None:
    """topopy's MergeTree raises KeyError on the plateau grid; we say so and name gudhi."""
    g = np.full((6, 6), 5.0)
    g[1, 1], g[4, 4] = 0.0, 1.0
    with pytest.raises(ConfigError, match=r"topopy's MergeTree raises KeyError.*backend='gudhi'"):
        T.topology_summary(g, np.arange(6.0), np.arange(6.0), backend="landscaper")
    s = T.topology_summary(g, np.arange(6.0), np.arange(6.0), backend="auto")
    assert s["backend"] == "gudhi" and "KeyError" in s["landscaper_error"]
    assert s["persistence"] == [5.0, 4.0]
    assert T.merge_tree(g, np.arange(6.0), np.arange(6.0))["backend"] == "gudhi"


@pytest.mark.parametrize("backend", ["gudhi"])
def test_hand_grid_minima_and_persistence_exact(backend: str) -> None:
    g = _hand_grid()
    a, b = np.arange(9.0), np.arange(9.0) * 0.5
    s = T.topology_summary(g, a, b, backend=backend)
    assert s["backend"] == backend
    assert s["n_minima"] == 3
    assert s["persistence"] == [5.0, 4.5, 2.0]  # global (range), C, B
    assert s["global_persistence"] == "range"
    assert [m["index"] for m in s["minima"]] == [[4, 2], [1, 7], [4, 6]]
    assert [m["death"] for m in s["minima"]] == [None, 5.0, 3.0]
    assert s["minima"][1]["alpha"] == 1.0 and s["minima"][1]["beta"] == 3.5
    assert s["total_persistence"] == 6.5 and s["max_persistence"] == 4.5
    assert sum(s["basin_fractions"]) == pytest.approx(1.0, abs=1e-12)
    json.dumps(s, allow_nan=False)
    if backend == "gudhi":
        assert s["gudhi_agrees"] is True


TIE_FREE = np.array([[0.0, 1.0, 3.0, 2.5, 0.5], [0.2, 1.5, 4.0, 2.0, 0.7]])


@pytest.mark.parametrize("backend", ["gudhi", "landscaper"])
def test_basins_on_tie_free_grid(backend: str) -> None:
    """Two minima, (0,0)=0 and (0,4)=0.5, meeting at (0,2)=3; descent worked out by hand."""
    s = T.topology_summary(TIE_FREE, np.arange(2.0), np.arange(5.0), backend=backend)
    assert s["n_minima"] == s["n_minima_all"] == 2
    assert [m["index"] for m in s["minima"]] == [[0, 0], [0, 4]]
    assert s["persistence"] == [4.0, 2.5]
    assert s["basin_fractions"] == [0.6, 0.4]
    dropped = T.topology_summary(
        TIE_FREE, np.arange(2.0), np.arange(5.0), backend=backend, min_persistence=3.0
    )
    assert dropped["n_minima"] == 1 and dropped["basin_fractions"] == [1.0]


def test_hand_grid_min_persistence_drops_shallow_minima() -> None:
    g = _hand_grid()
    s = T.topology_summary(g, np.arange(9.0), np.arange(9.0), backend="gudhi", min_persistence=3)
    assert s["n_minima"] == 2
    assert s["persistence"] == [5.0, 4.5]
    assert sum(s["basin_fractions"]) == pytest.approx(1.0, abs=1e-12)


def test_hand_grid_merge_tree_structure() -> None:
    g = _hand_grid()
    tree = T.merge_tree(g, np.arange(9.0), np.arange(9.0), backend="gudhi")
    nodes = {tuple(nd["index"]): nd for nd in tree["nodes"]}
    kinds = sorted((nd["kind"], tuple(nd["index"])) for nd in tree["nodes"])
    minima = [k for k in kinds if k[0] == "minimum"]
    assert minima == [("minimum", (1, 7)), ("minimum", (4, 2)), ("minimum", (4, 6))]
    # two merges: A+B at the pass (3.0), then C at the plateau level (5.0)
    assert sorted(nd["value"] for nd in tree["nodes"] if nd["kind"] == "saddle") == [3.0, 5.0]
    # unpruned, the plateau's first point in index order is a zero-persistence minimum
    raw = T.merge_tree(g, np.arange(9.0), np.arange(9.0), backend="gudhi", prune_plateaus=False)
    raw_min = sorted(tuple(nd["index"]) for nd in raw["nodes"] if nd["kind"] == "minimum")
    assert raw_min == [(0, 0), (1, 7), (4, 2), (4, 6)]
    # every grid point is a node or on exactly one arc, pruned or not
    for t in (tree, raw):
        assert len(t["nodes"]) + sum(len(nd["arc"]) for nd in t["nodes"]) - 1 == 81
    # A and B meet at the pass (4, 4) at loss 3
    assert nodes[(4, 2)]["parent"] == nodes[(4, 6)]["parent"] == 4 * 9 + 4
    assert nodes[(4, 4)]["kind"] == "saddle" and nodes[(4, 4)]["value"] == 3.0
    roots = [nd for nd in tree["nodes"] if nd["parent"] is None]
    assert len(roots) == 1 and roots[0]["kind"] == "root"
    json.dumps(tree, allow_nan=False)


def _reference_deaths(loss: np.ndarray, minima: list[list[int]]) -> list[float | None]:
    """Independent reference: a minimum dies at the lowest level t at which its
    4-connected component of {loss <= t} (scipy.ndimage.label) holds a lower point."""
    from scipy import ndimage

    levels = np.unique(loss)
    out: list[float | None] = []
    for i, j in minima:
        v = loss[i, j]
        lower = loss < v
        if not lower.any():
            out.append(None)
            continue

        def joined(t: float, i: int = i, j: int = j, lower: np.ndarray = lower) -> bool:
            lab, _ = ndimage.label(loss <= t)
            return bool(np.any(lower & (lab == lab[i, j])))

        lo, hi = int(np.searchsorted(levels, v)), len(levels) - 1
        while lo < hi:  # first level at which it is joined
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if joined(levels[mid]) else (mid + 1, hi)
        out.append(float(levels[lo]))
    return out


def test_gaussian_wells_three_minima_exact_persistence() -> None:
    loss, a, b = _wells(41)
    s = T.topology_summary(loss, a, b, backend="gudhi")
    assert s["n_minima"] == s["n_minima_all"] == 3 and s["gudhi_agrees"] is True
    # minima sit on the grid points nearest the well centres (the bowl pulls the
    # shallowest one 0.05 towards the centre)
    got = [(m["alpha"], m["beta"]) for m in s["minima"]]
    assert got == [
        pytest.approx((0.5, 0.5), abs=1e-12),
        pytest.approx((-0.5, -0.4), abs=1e-12),
        pytest.approx((0.5, -0.45), abs=1e-12),
    ]
    assert s["minima"][0]["death"] is None
    assert s["persistence"][0] == loss.max() - loss.min()
    # deaths equal an independent flood-fill reference exactly
    ref = _reference_deaths(loss, [m["index"] for m in s["minima"]])
    assert [m["death"] for m in s["minima"]] == ref
    assert s["persistence"][1:] == [ref[k] - s["minima"][k]["value"] for k in (1, 2)]
    assert 0.3 < s["persistence"][1] < 0.5 and 0.1 < s["persistence"][2] < 0.2
    assert sum(s["basin_fractions"]) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("shape", [(7, 5), (15, 15), (12, 17)])
def test_gudhi_union_find_agrees_with_landscaper(shape: tuple[int, int]) -> None:
    """Same 4-neighbour graph (topopy's Gabriel graph on a grid): same tree, same persistence.

    Random grids give dozens of minima; the non-square ones check the axis order.
    """
    rng = np.random.default_rng(sum(shape))
    loss = rng.random(shape)
    a = np.linspace(-1, 1, shape[0])
    b = np.linspace(0, 3, shape[1])
    tl = T.merge_tree(loss, a, b, backend="landscaper")
    tg = T.merge_tree(loss, a, b, backend="gudhi")
    key = [(nd["id"], nd["parent"], nd["kind"], nd["arc"]) for nd in tl["nodes"]]
    assert key == [(nd["id"], nd["parent"], nd["kind"], nd["arc"]) for nd in tg["nodes"]]
    assert len(tl["nodes"]) > 10
    sl = T.topology_summary(loss, a, b, backend="landscaper")
    sg = T.topology_summary(loss, a, b, backend="gudhi")
    assert sg["gudhi_agrees"] is True
    assert sl["n_minima"] == sg["n_minima"] > 3
    assert sl["persistence"] == sg["persistence"]
    assert sl["minima"] == sg["minima"]
    ref = _reference_deaths(loss, [m["index"] for m in sg["minima"]])
    assert [m["death"] for m in sg["minima"]] == ref


def test_landscaper_float32_ties_split_minima_and_auto_avoids_them() -> None:
    """On 15x15 the deepest well's 4 nearest points differ by < float32 resolution:
    topopy (float32) reports 4 minima there, the float64 union-find 1; auto picks gudhi."""
    loss, a, b = _wells(15)
    assert T.float32_neighbour_ties(loss) > 0
    sl = T.topology_summary(loss, a, b, backend="landscaper")
    sg = T.topology_summary(loss, a, b, backend="gudhi")
    assert sg["n_minima"] == 3 and sl["n_minima"] == 6
    assert sl["float32_neighbour_ties"] == T.float32_neighbour_ties(loss)
    assert T.topology_summary(loss, a, b)["backend"] == "gudhi"


def test_landscaper_extras_and_wells_agree() -> None:
    loss, a, b = _wells(16)
    assert T.float32_neighbour_ties(loss) == 0
    sl = T.topology_summary(loss, a, b, backend="landscaper")
    sg = T.topology_summary(loss, a, b, backend="gudhi")
    assert sl["n_minima"] == sg["n_minima"] == 3
    assert sl["persistence"] == sg["persistence"]
    assert sl["persistence_range"] is not None and sl["persistence_range"] > 0
    assert "smad" in sl
    json.dumps(sl, allow_nan=False)


def test_auto_backend_choice_and_gudhi_speed() -> None:
    loss, a, b = _wells(16)
    assert T.topology_summary(loss, a, b)["backend"] == "landscaper"
    loss, a, b = _wells(51)
    t0 = time.perf_counter()
    s = T.topology_summary(loss, a, b)
    assert s["backend"] == "gudhi" and s["n_minima"] == 3
    assert time.perf_counter() - t0 < 5.0  # landscaper needs ~40 s on this grid


def test_landscaper_missing_raises_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "landscaper", None)
    loss, a, b = _wells(9)
    with pytest.raises(DependencyError, match="'landscaper' package"):
        T.topology_summary(loss, a, b, backend="landscaper")
    assert T.topology_summary(loss, a, b, backend="auto")["backend"] == "gudhi"


def test_bad_input_errors() -> None:
    loss, a, b = _wells(9)
    with pytest.raises(ConfigError, match=r"backend must be one of \['auto', 'landscaper'"):
        T.topology_summary(loss, a, b, backend="topopy")
    with pytest.raises(ConfigError, match=r"\(len\(alphas\), len\(betas\)\) = \(8, 9\)"):
        T.topology_summary(loss, a[:-1], b)
    bad = loss.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ConfigError, match="1 NaN/Inf"):
        T.merge_tree(bad, a, b)
    with pytest.raises(ConfigError, match="min_persistence"):
        T.topology_summary(loss, a, b, min_persistence=-1.0)


def test_plots_return_figures() -> None:
    from matplotlib.figure import Figure

    loss, a, b = _wells(15)
    tree = T.merge_tree(loss, a, b, backend="gudhi")
    s = T.topology_summary(loss, a, b, backend="gudhi")
    assert isinstance(T.plot_merge_tree(tree), Figure)
    assert isinstance(T.plot_persistence(s), Figure)
    fig = T.plot_profile(tree)
    assert isinstance(fig, Figure)
    prof = T.topology_profile(tree)
    # one polygon per tree node below the root, spanning the loss range
    assert len(prof) == len(tree["nodes"])
    ys = [p[1] for poly in prof for p in poly]
    assert min(ys) == pytest.approx(loss.min()) and max(ys) == pytest.approx(loss.max())


@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.1, 0.3])
def test_tree_simplified_by_persistence_keeps_the_counted_minima(fraction: float) -> None:
    """merge_tree(min_persistence=t) holds exactly the minima topology_summary counts at t."""
    rng = np.random.default_rng(7)
    x = np.linspace(-1, 1, 23)
    xx, yy = np.meshgrid(x, x, indexing="ij")
    loss = xx**2 + yy**2 + 0.15 * rng.standard_normal((23, 23))
    thr = fraction * float(np.ptp(loss))
    s = T.topology_summary(loss, x, x, backend="gudhi", min_persistence=thr)
    tree = T.merge_tree(loss, x, x, backend="gudhi", min_persistence=thr)
    kept = sorted(
        n["id"]
        for n in tree["nodes"]
        if n["kind"] in ("minimum", "root")
        and not any(m["parent"] == n["id"] for m in tree["nodes"])
    )
    counted = sorted(i * 23 + j for i, j in (m["index"] for m in s["minima"]))
    assert kept == counted
    if fraction == 0.3:
        assert s["n_minima"] < 5  # only the deep basins survive
