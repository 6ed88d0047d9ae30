"""Topology of 2-D loss landscapes: merge trees, persistence of minima, basins.

The input is a loss grid ``loss2d[i, j]`` sampled at ``(alphas[i], betas[j])``
(for example from a 2-D slice through parameter space). Two backends compute
the sublevel-set merge tree (how the basins of the minima join as the loss
level rises) and the 0-dimensional persistence of each minimum:

* ``"landscaper"``: LBNL's ``landscaper`` (topopy merge tree over an
  empty-region (Gabriel) graph of the grid points). On a regular grid that
  graph is the 4-neighbour grid graph. It is slow, since topopy builds the graph
  over all point pairs: the merge tree alone takes 0.2 s at 16x16, 0.6 s at
  21x21, 4.7 s at 31x31 and 41 s at 51x51 on the 2-core dev machine, and SMAD
  triples that. It stores the loss as float32 (neighbouring values that become
  equal in float32 give spurious minima) and raises KeyError on some plateau
  grids. It also gives the saddle-minimum average distance (SMAD) and the
  persistence range.
* ``"gudhi"``: a union-find merge tree on the same 4-neighbour grid graph
  (milliseconds; float64), cross-checked against
  ``gudhi.CubicalComplex(vertices=...)``, whose 0-dimensional sublevel
  persistence is also 4-connected (an edge enters at the larger of its two end
  values, a square only after its edges).

Both backends order equal values by flat grid index (simulation of
simplicity). Minima of zero persistence (plateau artefacts of that order,
common in the staircase landscapes of quantized models) are not counted. The
global minimum never dies; its persistence is reported as the grid's loss
*range* (max - min), flagged by ``global_persistence = "range"``, so the
result stays strict JSON. Basins are steepest-descent basins on the same grid
graph and order.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from edgeml.errors import ConfigError, DependencyError

BACKENDS = ("auto", "landscaper", "gudhi")
#: ``backend="auto"`` uses landscaper up to this many grid points (16x16: about 0.35 s
#: with SMAD; 21x21 takes 2 s, 31x31 15 s) when the grid has no float32 neighbour ties
#: (see :func:`float32_neighbour_ties`), else gudhi.
AUTO_LANDSCAPER_MAX_POINTS = 256


# ------------------------------------------------------------------ input checks


def _check_grid(
    loss2d: np.ndarray, alphas: np.ndarray, betas: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    loss = np.asarray(loss2d, dtype=np.float64)
    a = np.asarray(alphas, dtype=np.float64).ravel()
    b = np.asarray(betas, dtype=np.float64).ravel()
    if loss.ndim != 2 or loss.shape[0] < 2 or loss.shape[1] < 2:
        raise ConfigError(f"loss2d must be a 2-D array of at least 2x2, got shape {loss.shape}")
    if loss.shape != (a.size, b.size):
        raise ConfigError(
            f"loss2d shape {loss.shape} must be (len(alphas), len(betas)) = ({a.size}, {b.size})"
        )
    if not np.all(np.isfinite(loss)):
        raise ConfigError(f"loss2d holds {int(np.sum(~np.isfinite(loss)))} NaN/Inf values")
    return loss, a, b


def float32_neighbour_ties(loss: np.ndarray) -> int:
    """Grid-neighbour pairs whose distinct float64 losses become equal in float32.

    topopy (under landscaper) stores the loss as float32; such new ties next to a
    minimum split it into spurious minima (seen: a symmetric well gave 4 minima
    instead of 1), so ``backend="auto"`` only picks landscaper when this is 0.
    """
    l64 = np.asarray(loss, dtype=np.float64)
    l32 = l64.astype(np.float32)
    n = 0
    for axis in (0, 1):
        d64 = np.diff(l64, axis=axis) != 0
        d32 = np.diff(l32, axis=axis) == 0
        n += int(np.sum(d64 & d32))
    return n


def _resolve_backend(backend: str, loss: np.ndarray) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "landscaper":
        _import_landscaper()
        return backend
    if backend == "auto":
        if loss.size <= AUTO_LANDSCAPER_MAX_POINTS and float32_neighbour_ties(loss) == 0:
            try:
                _import_landscaper()
                return "landscaper"
            except DependencyError:
                return "gudhi"
        return "gudhi"
    return backend


def _import_landscaper() -> Any:
    try:
        import landscaper  # noqa: F401
        from landscaper import LossLandscape
    except Exception as e:  # ImportError, or a broken compiled dependency (topopy/nglpy)
        raise DependencyError(
            f"backend='landscaper' needs the 'landscaper' package (LBNL, 1.3.1), which "
            f"cannot be imported ({type(e).__name__}: {e}); install it with "
            f"'pip install landscaper' or use backend='gudhi'"
        ) from e
    return LossLandscape


# ------------------------------------------------------------------ union-find backend


def _grid_neighbours(n: int, m: int) -> list[np.ndarray]:
    """4-neighbour lists of each flat index (row-major, ``k = i * m + j``)."""
    out = []
    for k in range(n * m):
        i, j = divmod(k, m)
        nb = []
        if i > 0:
            nb.append(k - m)
        if i < n - 1:
            nb.append(k + m)
        if j > 0:
            nb.append(k - 1)
        if j < m - 1:
            nb.append(k + 1)
        out.append(np.array(nb, dtype=np.int64))
    return out


def _order(values: np.ndarray) -> np.ndarray:
    """Rank of each flat index in the total order (value, index)."""
    order = np.lexsort((np.arange(values.size), values))
    rank = np.empty(values.size, dtype=np.int64)
    rank[order] = np.arange(values.size)
    return rank


def _union_find_tree(loss: np.ndarray) -> dict[int, dict[str, Any]]:
    """Sublevel merge tree on the 4-neighbour grid: ``{flat_index: node}``.

    Each node has ``value``, ``parent`` (flat index or None), ``kind`` and
    ``arc``: the values of the regular points between the node and its parent.
    """
    n, m = loss.shape
    v = loss.ravel()
    rank = _order(v)
    order = np.argsort(rank)
    nbrs = _grid_neighbours(n, m)
    parent_uf = np.full(v.size, -1, dtype=np.int64)  # -1: not yet swept

    def find(x: int) -> int:
        root = x
        while parent_uf[root] != root:
            root = parent_uf[root]
        while parent_uf[x] != root:
            parent_uf[x], x = root, parent_uf[x]
        return root

    top: dict[int, int] = {}  # union-find root -> current top tree node of that component
    nodes: dict[int, dict[str, Any]] = {}
    arcs: dict[int, list[float]] = {}
    for k in order:
        k = int(k)
        parent_uf[k] = k
        comps = sorted({find(int(q)) for q in nbrs[k] if parent_uf[q] >= 0})
        if not comps:
            nodes[k] = {"value": float(v[k]), "parent": None, "kind": "minimum"}
            arcs[k] = []
            top[k] = k
        elif len(comps) == 1:
            parent_uf[k] = comps[0]
            arcs[top[comps[0]]].append(float(v[k]))
        else:
            nodes[k] = {"value": float(v[k]), "parent": None, "kind": "saddle"}
            arcs[k] = []
            for c in comps:
                nodes[top[c]]["parent"] = k
                parent_uf[c] = k
                del top[c]
            top[k] = k
    # the last swept point (the global maximum) is the root
    last = int(order[-1])
    (final_top,) = top.values()
    if final_top == last:
        nodes[last]["kind"] = "root"
    else:
        # like topopy, the root's own value stays on the arc that leads into it
        nodes[last] = {"value": float(v[last]), "parent": None, "kind": "root"}
        arcs[last] = []
        nodes[final_top]["parent"] = last
    for k, node in nodes.items():
        node["arc"] = sorted(arcs[k])
    return nodes


def _descent_basins(loss: np.ndarray) -> np.ndarray:
    """Steepest-descent basin label (flat index of its minimum) of every grid point."""
    n, m = loss.shape
    v = loss.ravel()
    rank = _order(v)
    nbrs = _grid_neighbours(n, m)
    down = np.arange(v.size)
    for k in range(v.size):
        nb = nbrs[k]
        best = nb[np.argmin(rank[nb])]
        if rank[best] < rank[k]:
            down[k] = best
    lab = down.copy()
    while True:
        nxt = lab[lab]
        if np.array_equal(nxt, lab):
            return lab
        lab = nxt


def _gudhi_pairs(loss: np.ndarray) -> list[tuple[float, float]]:
    """0-dimensional sublevel persistence pairs of the vertex-valued cubical complex."""
    import gudhi

    cc = gudhi.CubicalComplex(vertices=loss)
    return [(float(b), float(d)) for dim, (b, d) in cc.persistence() if dim == 0]


# ------------------------------------------------------------------ landscaper backend


def _landscaper_tree(loss: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[dict, Any]:
    """Merge tree from landscaper, re-keyed to row-major flat indices ``i * m + j``."""
    loss_landscape_cls = _import_landscaper()
    n, m = loss.shape
    # landscaper pairs loss.flatten() with meshgrid(*ranges) ('xy' indexing): passing
    # the transpose puts loss[i, j] at (alphas[i], betas[j]); its index is j * n + i.
    ll = loss_landscape_cls(loss.T.copy(), [a, b])
    try:
        mt = ll.get_sublevel_tree()
    except KeyError as e:  # topopy 1.x: the global maximum is itself a merge saddle
        raise ConfigError(
            f"backend='landscaper' fails on this grid: topopy's MergeTree raises KeyError {e} "
            f"(seen on grids with flat plateaus of tied values); use backend='gudhi' "
            f"(the same 4-neighbour merge tree) or 'auto' (falls back to gudhi)"
        ) from e

    def key(q: int) -> int:
        j, i = divmod(int(q), n)
        return i * m + j

    leaves = {int(q) for q in mt.leaves}
    root = int(mt.root)
    parents = {int(c): int(p) for c, p in mt.edges}
    aug = {(int(c), int(p)): [int(q) for q in pts] for (c, p), pts in mt.augmentedEdges.items()}
    flat = loss.T.ravel()
    nodes = {}
    for q in dict(mt.nodes):
        q = int(q)
        kind = "root" if q == root else ("minimum" if q in leaves else "saddle")
        par = parents.get(q)
        arc = sorted(float(flat[r]) for r in aug.get((q, par), [])) if par is not None else []
        nodes[key(q)] = {
            "value": float(flat[q]),  # topopy stores float32; report the grid's float64
            "parent": None if par is None else key(par),
            "kind": kind,
            "arc": arc,
        }
    return nodes, ll


# ------------------------------------------------------------------ shared analysis


def _elder_persistence(nodes: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Elder rule on a merge tree: ``{minimum: {death, absorbed_by}}`` (death None = global)."""
    children: dict[int, list[int]] = {k: [] for k in nodes}
    for k, node in nodes.items():
        if node["parent"] is not None:
            children[node["parent"]].append(k)
    key = {k: (nodes[k]["value"], k) for k in nodes}
    lowest: dict[int, int] = {}
    out: dict[int, dict[str, Any]] = {}
    # process nodes bottom-up (by value; a parent is never below its children)
    for k in sorted(nodes, key=lambda q: key[q]):
        if nodes[k]["kind"] == "minimum":
            lowest[k] = k
            continue
        mins = [lowest[c] for c in children[k]]
        if not mins:  # a root that is itself a minimum (a constant-free 1-point tree)
            lowest[k] = k
            continue
        elder = min(mins, key=lambda q: key[q])
        for q in mins:
            if q != elder:
                out[q] = {"death": nodes[k]["value"], "absorbed_by": elder}
        lowest[k] = elder
    for k, node in nodes.items():
        if node["kind"] == "minimum" and k not in out:
            out[k] = {"death": None, "absorbed_by": None}
    return out


def merge_tree(
    loss2d: np.ndarray,
    alphas: np.ndarray,
    betas: np.ndarray,
    backend: str = "auto",
    *,
    prune_plateaus: bool = True,
    min_persistence: float = 0.0,
) -> dict[str, Any]:
    """Sublevel-set merge tree of a loss grid as a plain JSON-able structure.

    ``min_persistence`` > 0 also simplifies the tree by persistence: a leaf minimum
    that merges into a deeper basin less than ``min_persistence`` above its own
    value is removed (with its saddle, as for plateaus), so the tree shows the
    minima :func:`topology_summary` counts with the same threshold.

    With ``prune_plateaus`` (default) minima that merge at their own level (the
    zero-persistence minima that flat plateaus give under the index tie-break,
    common for quantized models) are removed and the saddles they leave with one
    child contracted, so the tree shows the minima :func:`topology_summary` counts.

    Returns ``{"backend", "shape", "nodes": [...]}``; each node is ``{"id"`` (flat
    row-major index ``i * len(betas) + j``), ``"index": [i, j]``, ``"alpha"``,
    ``"beta"``, ``"value"``, ``"parent"`` (an id or None), ``"kind"``
    (``"minimum"``/``"saddle"``/``"root"``) and ``"arc"`` (sorted loss values of
    the regular grid points between the node and its parent, plus the root's value
    on the arc into a regular-point root, as topopy does; used by the topological
    profile)``}``, sorted by value. Both backends give the same nodes and arcs
    (tested).
    """
    loss, a, b = _check_grid(loss2d, alphas, betas)
    used = _resolve_backend(backend, loss)
    nodes = None
    if used == "landscaper":
        try:
            nodes = _landscaper_tree(loss, a, b)[0]
        except ConfigError:
            if backend != "auto":
                raise
            used = "gudhi"
    if nodes is None:
        nodes = _union_find_tree(loss)
    if not np.isfinite(min_persistence) or min_persistence < 0:
        raise ConfigError(f"min_persistence must be a number >= 0, got {min_persistence!r}")
    if prune_plateaus or min_persistence > 0:
        nodes = _prune_zero_persistence(nodes, float(min_persistence))
    return _tree_dict(nodes, used, loss.shape, a, b)


def _prune_zero_persistence(
    nodes: dict[int, dict[str, Any]], min_persistence: float = 0.0
) -> dict[int, dict[str, Any]]:
    """Drop minima born at their parent's level (plateau artefacts), and leaf minima of
    persistence below ``min_persistence`` that merge into a deeper sibling basin, and
    contract the saddles left with one child; dropped points join the arc that absorbs
    them."""
    nodes = {k: {**v, "arc": list(v["arc"])} for k, v in nodes.items()}
    glob = min(
        (k for k, v in nodes.items() if v["kind"] == "minimum"),
        key=lambda q: (nodes[q]["value"], q),
    )
    changed = True
    while changed:
        changed = False
        children: dict[int, list[int]] = {k: [] for k in nodes}
        for k, v in nodes.items():
            if v["parent"] is not None:
                children[v["parent"]].append(k)
        # lowest value in each subtree; a child never lies above its parent, so
        # ascending (value, id) order visits children first
        low: dict[int, float] = {}
        for q in sorted(nodes, key=lambda q: (nodes[q]["value"], q)):
            low[q] = min([nodes[q]["value"], *(low.get(c, nodes[c]["value"]) for c in children[q])])

        for k, v in list(nodes.items()):
            p = v["parent"]
            if v["kind"] != "minimum" or k == glob or p is None or len(children[p]) < 2:
                continue
            pers = nodes[p]["value"] - v["value"]
            if pers != 0 and pers >= min_persistence:
                continue
            if pers != 0 and not any(low[c] <= v["value"] for c in children[p] if c != k):
                continue  # k is the older branch here: its sibling dies at this saddle
            nodes[p]["arc"] = sorted(nodes[p]["arc"] + [v["value"], *v["arc"]])
            del nodes[k]
            rest = [c for c in children[p] if c != k]
            if len(rest) == 1 and nodes[p]["kind"] == "saddle":
                (c,) = rest
                nodes[c]["parent"] = nodes[p]["parent"]
                nodes[c]["arc"] = sorted(nodes[c]["arc"] + [nodes[p]["value"], *nodes[p]["arc"]])
                del nodes[p]
            changed = True
            break
    return nodes


def _tree_dict(
    nodes: dict[int, dict[str, Any]], backend: str, shape: tuple[int, int], a, b
) -> dict[str, Any]:
    m = shape[1]
    out = []
    for k in sorted(nodes, key=lambda q: (nodes[q]["value"], q)):
        i, j = divmod(k, m)
        out.append({"id": int(k), "index": [i, j], "alpha": float(a[i]), "beta": float(b[j])})
        out[-1].update(nodes[k])
    return {"backend": backend, "shape": [int(shape[0]), int(shape[1])], "nodes": out}


def topology_summary(
    loss2d: np.ndarray,
    alphas: np.ndarray,
    betas: np.ndarray,
    *,
    backend: str = "auto",
    min_persistence: float = 0.0,
) -> dict[str, Any]:
    """Minima, their persistence and basins for a 2-D loss grid (JSON-able dict).

    Keys: ``backend``; ``n_minima`` (minima with persistence > 0 and >= ``min_persistence``;
    the global minimum always counts; ``n_minima_all`` also counts the zero-persistence
    minima that plateaus produce under the index tie-break); ``minima``: one dict per kept minimum,
    sorted by persistence (largest first): ``index``, ``alpha``, ``beta``,
    ``value``, ``death`` (saddle level where it merges into an older basin, None
    for the global minimum), ``persistence`` (death - value; the loss range for
    the global minimum), ``basin_fraction`` (share of grid points whose steepest
    descent ends in it, plus the basins of dropped minima it absorbed);
    ``persistence`` (that list of values); ``global_persistence`` = ``"range"``;
    ``total_persistence`` / ``max_persistence`` over finite (non-global) ones;
    ``loss_range``; ``seconds``. With landscaper also ``smad``,
    ``smad_normalized`` and ``persistence_range`` (None, with ``smad_error``,
    where topopy's contour tree fails on the grid). With gudhi also
    ``gudhi_agrees``: the cubical-complex diagram equals the union-find one.
    """
    t0 = time.perf_counter()
    loss, a, b = _check_grid(loss2d, alphas, betas)
    if not np.isfinite(min_persistence) or min_persistence < 0:
        raise ConfigError(f"min_persistence must be a finite number >= 0, got {min_persistence!r}")
    used = _resolve_backend(backend, loss)
    extra: dict[str, Any] = {}
    nodes = None
    if used == "landscaper":
        try:
            nodes, ll = _landscaper_tree(loss, a, b)
            extra.update(_landscaper_extras(ll))
            extra["float32_neighbour_ties"] = float32_neighbour_ties(loss)
        except ConfigError as e:
            if backend != "auto":
                raise
            used, extra["landscaper_error"] = "gudhi", str(e)
    if nodes is None:
        nodes = _union_find_tree(loss)
    pers = _elder_persistence(nodes)
    loss_range = float(loss.max() - loss.min())
    if used == "gudhi":
        ours = sorted((nodes[k]["value"], p["death"]) for k, p in pers.items() if p["death"])
        ours_fin = sorted((bb, dd) for bb, dd in ours if dd > bb)
        theirs = sorted((bb, dd) for bb, dd in _gudhi_pairs(loss) if np.isfinite(dd) and dd > bb)
        extra["gudhi_agrees"] = bool(
            len(ours_fin) == len(theirs)
            and all(
                np.isclose(x[0], y[0], rtol=1e-12, atol=1e-12)
                and np.isclose(x[1], y[1], rtol=1e-12, atol=1e-12)
                for x, y in zip(ours_fin, theirs, strict=True)
            )
        )

    def persistence_of(k: int) -> float:
        d = pers[k]["death"]
        return loss_range if d is None else float(d - nodes[k]["value"])

    # zero-persistence minima (born and merged at one level: plateau artefacts of the
    # index tie-break) never count; the others count from ``min_persistence`` up
    kept = {
        k
        for k in pers
        if pers[k]["death"] is None
        or (persistence_of(k) > 0 and persistence_of(k) >= min_persistence)
    }

    def survivor(k: int) -> int:
        while k not in kept:
            k = pers[k]["absorbed_by"]
        return k

    labels = _descent_basins(loss)
    counts: dict[int, int] = dict.fromkeys(kept, 0)
    uniq, cnt = np.unique(labels, return_counts=True)
    for lab, c in zip(uniq.tolist(), cnt.tolist(), strict=True):
        counts[survivor(int(lab))] += int(c)
    m = loss.shape[1]
    minima = []
    for k in kept:
        i, j = divmod(k, m)
        minima.append(
            {
                "index": [i, j],
                "alpha": float(a[i]),
                "beta": float(b[j]),
                "value": float(nodes[k]["value"]),
                "death": pers[k]["death"],
                "persistence": persistence_of(k),
                "basin_fraction": counts[k] / loss.size,
            }
        )
    minima.sort(key=lambda d: (d["death"] is not None, -d["persistence"], d["value"]))
    finite = [d["persistence"] for d in minima if d["death"] is not None]
    out = {
        "backend": used,
        "shape": [int(loss.shape[0]), int(loss.shape[1])],
        "n_minima": len(minima),
        "n_minima_all": len(pers),
        "min_persistence": float(min_persistence),
        "minima": minima,
        "persistence": [d["persistence"] for d in minima],
        "global_persistence": "range",
        "total_persistence": float(sum(finite)),
        "max_persistence": float(max(finite)) if finite else 0.0,
        "loss_range": loss_range,
        "basin_fractions": [d["basin_fraction"] for d in minima],
    }
    out.update(extra)
    out["seconds"] = time.perf_counter() - t0
    return out


def _landscaper_extras(ll: Any) -> dict[str, Any]:
    """SMAD and persistence range from landscaper (its contour tree fails on some grids)."""
    out: dict[str, Any] = {}
    try:
        out["persistence_range"] = float(ll.persistence_range())
    except Exception as e:
        out["persistence_range"] = None
        out["persistence_range_error"] = f"{type(e).__name__}: {e}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # mean of no saddle-minimum pair
            out["smad"] = float(ll.smad())
            out["smad_normalized"] = float(ll.smad(normalize=True))
    except Exception as e:  # topopy's ContourTree raises KeyError on some grids
        out["smad"] = out["smad_normalized"] = None
        out["smad_error"] = f"{type(e).__name__}: {e}"
    for k in ("smad", "smad_normalized", "persistence_range"):
        if out.get(k) is not None and not np.isfinite(out[k]):
            out[k] = None  # landscaper gives NaN when it finds no saddle-minimum pair
    return out


# ------------------------------------------------------------------ plots


def _axes(ax: Any) -> tuple[Any, Any]:
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        return fig, ax
    return ax.figure, ax


def plot_merge_tree(tree: dict[str, Any], ax: Any = None) -> Any:
    """Draw a :func:`merge_tree` result: y = loss, minima spread left to right."""
    fig, ax = _axes(ax)
    nodes = {nd["id"]: nd for nd in tree["nodes"]}
    children: dict[int, list[int]] = {k: [] for k in nodes}
    for k, nd in nodes.items():
        if nd["parent"] is not None:
            children[nd["parent"]].append(k)
    xpos: dict[int, float] = {}
    leaf_x = iter(range(len(nodes)))

    def place(k: int) -> float:
        kids = sorted(children[k], key=lambda q: nodes[q]["value"])
        xpos[k] = float(next(leaf_x)) if not kids else float(np.mean([place(c) for c in kids]))
        return xpos[k]

    for r in [k for k, nd in nodes.items() if nd["parent"] is None]:
        place(r)
    for k, nd in nodes.items():
        if nd["parent"] is not None:
            p = nd["parent"]
            ax.plot(
                [xpos[k], xpos[k], xpos[p]],
                [nd["value"], nodes[p]["value"], nodes[p]["value"]],
                color="0.4",
                lw=1,
            )
    style = {"minimum": ("o", "tab:blue"), "saddle": ("s", "tab:orange"), "root": ("^", "k")}
    for kind, (mk, col) in style.items():
        ks = [k for k, nd in nodes.items() if nd["kind"] == kind]
        if ks:
            ax.scatter(
                [xpos[k] for k in ks],
                [nodes[k]["value"] for k in ks],
                marker=mk,
                color=col,
                label=kind,
                zorder=3,
            )
    ax.set_xticks([])
    ax.set_ylabel("loss")
    ax.set_title(f"sublevel merge tree ({tree.get('backend', '?')})")
    ax.legend(fontsize=8)
    return fig


def plot_persistence(summary: dict[str, Any], ax: Any = None) -> Any:
    """Persistence diagram (birth = minimum value, death = merge level) of a summary.

    The global minimum (which never dies) is drawn at the top edge as a triangle.
    """
    fig, ax = _axes(ax)
    mins = summary["minima"]
    births = [d["value"] for d in mins if d["death"] is not None]
    deaths = [d["death"] for d in mins if d["death"] is not None]
    top = max(d["value"] for d in mins) + summary["loss_range"]
    lo = min(d["value"] for d in mins)
    ax.plot([lo, top], [lo, top], color="0.6", lw=1, ls="--")
    ax.scatter(births, deaths, color="tab:blue", label="minima")
    glob = [d["value"] for d in mins if d["death"] is None]
    ax.scatter(
        glob,
        [lo + summary["loss_range"]] * len(glob),
        marker="^",
        color="tab:red",
        label="global minimum (dies never)",
    )
    ax.set_xlabel("birth (minimum loss)")
    ax.set_ylabel("death (saddle loss)")
    ax.set_title(f"persistence diagram, {summary['n_minima']} minima")
    ax.legend(fontsize=8)
    return fig


class _TreeView:
    """The attributes of a topopy MergeTree that landscaper's profile code reads."""

    def __init__(self, tree: dict[str, Any]) -> None:
        nodes = tree["nodes"]
        self.nodes = {nd["id"]: nd["value"] for nd in nodes}
        self.edges = [(nd["id"], nd["parent"]) for nd in nodes if nd["parent"] is not None]
        n_pts = tree["shape"][0] * tree["shape"][1]
        # regular points get synthetic ids past the grid; Y maps every id to its loss
        self.Y = np.zeros(n_pts + sum(len(nd["arc"]) for nd in nodes))
        for nd in nodes:
            self.Y[nd["id"]] = nd["value"]
        self.augmentedEdges = {}
        nxt = n_pts
        for nd in nodes:
            if nd["parent"] is None:
                continue
            ids = []
            for val in nd["arc"]:
                self.Y[nxt] = val
                ids.append(nxt)
                nxt += 1
            self.augmentedEdges[(nd["id"], nd["parent"])] = ids
        self.root = next(nd["id"] for nd in nodes if nd["parent"] is None)


def topology_profile(tree: dict[str, Any]) -> list[list[list[float]]]:
    """landscaper's topological landscape profile (list of basin polygons [x, loss])."""
    _import_landscaper()
    from landscaper.topology_profile import generate_profile

    return [[[float(x), float(y)] for x, y in poly] for poly in generate_profile(_TreeView(tree))]


def plot_profile(tree: dict[str, Any], ax: Any = None, color: str = "tab:red") -> Any:
    """Draw landscaper's topological landscape profile of a :func:`merge_tree` result.

    Each basin is a filled polygon whose width is its number of grid points and
    whose depth is its loss range (landscaper draws the same data as SVG).
    """
    profile = topology_profile(tree)
    fig, ax = _axes(ax)
    from matplotlib.patches import Polygon

    for poly in profile:
        ax.add_patch(Polygon(poly, closed=True, facecolor=color, edgecolor="k", alpha=0.25, lw=0.5))
    xs = [p[0] for poly in profile for p in poly]
    ys = [p[1] for poly in profile for p in poly]
    if xs:
        ax.set_xlim(min(xs) - 1, max(xs) + 1)
        ax.set_ylim(min(ys), max(ys))
    ax.set_xlabel("basin width (grid points)")
    ax.set_ylabel("loss")
    ax.set_title("topological landscape profile")
    return fig
