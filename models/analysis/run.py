"""``edgeml analyze``: the analysis stack on a run folder, or across a sweep against robustness.

**A run folder** (``edgeml analyze --run runs/jet``): the float model (``float.pt``),
the unpruned QAT model (``qat.pt``, written by ``compress`` since this release) and
the pruned QAT model that ships (``model.pt``) are each measured on the design's
test set: top Hessian eigenvalues and the trace (Hutchinson and Hutch++), the
eigenvalue density, the Fisher trace and the gradient noise scale; a 2-D loss
landscape along two filter-normalised random directions, its flatness and its
topology (merge tree, persistence of minima, basin sizes); per-layer CKA between
the three models; linear and Bezier paths from the float to the QAT model. The
integer design (``model.qonnx.onnx``) gets its own landscape, evaluated through
the exact golden model with perturbations on the integer grid. Everything goes to
``analysis/analysis.json`` plus figures, and the run's report is rebuilt with a
section for them.

**A sweep** (``edgeml analyze --sweep runs/sweeps/jet``): every grid point of an
``edgeml sweep`` (bits x sparsity x seeds) is re-trained exactly as the sweep
trained it (the chains are deterministic on the CPU; each point's metric is checked
against the sweep's), on the same Dask machinery (``--workers``, ``--scheduler``),
and measured twice: by the analysis metrics above and by its robustness, measured
on the exact integer model (exhaustive single-bit weight/bias fault campaign: mean
SDC rate; accuracy under a bit-error rate of 1e-3; accuracy under Gaussian input
noise). Points are cached in ``analysis/points-<options hash>/`` (a killed run
resumes; other options start a new cache). The
output is the deliverable of the edge-hardware study: Spearman rank correlations of
each metric with each robustness measure, with bootstrap 95 % confidence intervals,
scatter plots, and which metric predicts robustness best.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.errors import ConfigError
from edgeml.manifest import write_json

log = logging.getLogger(__name__)

ANALYSIS_FORMAT = "edgeml-analysis-v1"
SWEEP_ANALYSIS_FORMAT = "edgeml-sweep-analysis-v1"
#: the run folder's (and the sweep folder's) analysis sub-folder
ANALYSIS_DIR = "analysis"
DEVICES = ("cpu", "cuda")
#: landscape grid per axis for sweep points (a run folder's default is ``AnalysisOptions.points``)
SWEEP_POINTS = 21
#: metrics correlated with robustness across a sweep: (key in a point's analysis, label)
SWEEP_METRICS: tuple[tuple[str, str], ...] = (
    ("top_eigenvalue", "top Hessian eigenvalue"),
    ("trace", "Hessian trace (Hutch++)"),
    ("fisher_trace", "Fisher trace"),
    ("sharpness", "landscape sharpness"),
    ("flat_area", "landscape flat area"),
    ("n_minima", "minima in the 2-D slice"),
    ("max_persistence", "max persistence of a minimum"),
    ("cka_to_float", "CKA to float (mean over layers)"),
)
#: robustness measured on the exact integer model: (key, label, higher is more robust)
ROBUSTNESS: tuple[tuple[str, str, bool], ...] = (
    ("mean_sdc", "mean SDC rate (single-bit flips)", False),
    # without labels (an autoencoder): the share of unchanged outputs at BER 1e-3, and
    # minus the mean output change under input noise
    ("acc_ber", "accuracy at BER 1e-3", True),
    ("acc_noise", "accuracy under input noise", True),
)


@dataclass(frozen=True)
class AnalysisOptions:
    """What ``edgeml analyze`` measures and how hard it tries.

    ``samples`` test samples for curvature/landscapes; ``k`` top eigenpairs;
    ``matvecs`` Hessian-vector products per trace estimate; ``points`` x ``points``
    landscape grid spanning ``[-span, span]`` in filter-normalised units;
    ``fault_samples``/``ber``/``ber_trials``/``noise`` size the robustness measures
    of sweep points (``noise``: Gaussian input noise, standard deviation as a
    fraction of each input feature's standard deviation).
    """

    samples: int = 2000
    k: int = 4
    matvecs: int = 30
    points: int = 51
    span: float = 1.0
    seed: int = 0
    device: str = "cpu"
    topology: str = "auto"
    fault_samples: int = 500
    ber: float = 1e-3
    ber_trials: int = 20
    noise: float = 0.1
    progress: bool = True

    def __post_init__(self) -> None:
        for name, lo in (
            ("samples", 10),
            ("k", 1),
            ("matvecs", 6),
            ("points", 5),
            ("fault_samples", 10),
            ("ber_trials", 1),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"analysis option {name} must be an integer >= {lo}, got {v!r}")
        for name in ("span", "noise"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"analysis option {name} must be a number > 0, got {v!r}")
        if not 0 < self.ber < 1:
            raise ConfigError(f"analysis option ber must be in (0, 1), got {self.ber!r}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ConfigError(
                f"analysis option device must be one of {DEVICES} (or cuda:N), got {self.device!r}"
            )


def check_device(device: str) -> str:
    """``device`` if usable here; a clear error when CUDA is asked for and absent."""
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available here (use cpu)")
    return device


# ------------------------------------------------------------------ one model


def _subset(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` samples (the test set's order is already random)."""
    return np.asarray(x[:n]), np.asarray(y[:n])


def model_metrics(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    loss: Callable[..., Any],
    opts: AnalysisOptions,
    *,
    with_tree: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Curvature, landscape and topology numbers of one torch model: ``(numbers, artifacts)``.

    ``numbers`` is JSON-able; ``artifacts`` holds what the figures need (the curvature
    summary with its density, the 2-D landscape, and with ``with_tree`` the merge tree,
    which only the run folder's figures draw).
    """
    from edgeml.models.analysis import curvature, landscape, topology

    t0 = time.perf_counter()
    h = curvature.ModelHessian(model, x, y, loss, device=opts.device)
    curv = curvature.summary(h, k=opts.k, n_matvecs=opts.matvecs, seed=opts.seed)
    n = opts.points
    axis = np.linspace(-opts.span, opts.span, n)
    d1 = landscape.random_direction(model, seed=opts.seed)
    d2 = landscape.random_direction(model, seed=opts.seed + 1)
    l2d = landscape.slice_2d(model, x, y, loss, d1, d2, axis, axis, device=opts.device)
    flat = landscape.flatness(l2d, eps_rel=FLAT_REL)
    topo = landscape_topology(l2d, opts)
    tree = None
    if with_tree:
        tree = topology.merge_tree(
            l2d.loss,
            l2d.alphas,
            l2d.betas,
            backend=opts.topology,
            min_persistence=float(topo["min_persistence"]),
        )
    numbers = {
        "top_eigenvalue": float(curv["top_eigenvalues"][0]),
        "eigenvalues": [float(v) for v in curv["top_eigenvalues"]],
        "trace": float(curv["trace_hutchpp"]),
        "trace_hutchinson": float(curv["trace_hutchinson"]),
        "trace_hutchinson_stderr": float(curv.get("trace_hutchinson_stderr") or 0.0),
        "fisher_trace": float(curv["fisher_trace"]),
        "gradient_noise": curv.get("gradient_noise"),
        "params": int(h.dim),
        "hvps": int(h.n_hvp),
        "loss": float(l2d.loss[n // 2, n // 2]),
        "flatness": flat,
        "sharpness": float(flat["sharpness"]),
        "flat_area": float(flat["flat_area_rel"]),
        "topology": topology_numbers(topo),
        "n_minima": int(topo["n_minima"]),
        "max_persistence": float(topo["max_persistence"]),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return numbers, {"curvature": curv, "landscape": l2d, "tree": tree, "topology": topo}


#: the flat area of a slice: the share of its points within this fraction of the centre
#: loss (relative, so that cross-entropy and MSE designs compare)
FLAT_REL = 0.1
#: minima shallower than this share of the slice's loss range are noise (QAT and integer
#: landscapes are staircases: every step edge is a minimum of zero or tiny persistence)
MIN_PERSISTENCE_FRACTION = 0.01


def landscape_topology(l2d: Any, opts: AnalysisOptions) -> dict[str, Any]:
    """Sublevel-set topology of a 2-D slice, minima below 1 % of its loss range dropped."""
    from edgeml.models.analysis import topology

    floor = MIN_PERSISTENCE_FRACTION * float(np.ptp(l2d.loss))
    return topology.topology_summary(
        l2d.loss, l2d.alphas, l2d.betas, backend=opts.topology, min_persistence=floor
    )


def topology_numbers(topo: dict[str, Any]) -> dict[str, Any]:
    """The summary numbers of a topology summary (without its per-minimum lists)."""
    keep = ("backend", "n_minima", "n_minima_all", "max_persistence", "total_persistence",
            "loss_range", "min_persistence", "smad", "landscaper_error")  # fmt: skip
    out = {k: topo[k] for k in keep if k in topo}
    fr = topo.get("basin_fractions") or []
    out["global_basin_fraction"] = float(fr[0]) if fr else None
    return out


def landscape_with_tree(l2d: Any, tree: dict[str, Any]) -> Any:
    """One figure: a 2-D slice's contour plot (left) and its merge tree (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeml.models.analysis import landscape, topology

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4))
    landscape.plot_contour(l2d, ax=a)
    topology.plot_merge_tree(tree, ax=b)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ robustness


def robustness(
    spec: Any, edge_model: Any, x: np.ndarray, y: np.ndarray | None, opts: AnalysisOptions
) -> dict[str, Any]:
    """Robustness of the integer design of ``edge_model``, measured on the golden model.

    Exports the model to QONNX and compiles the golden model (as ``edgeml export``
    does), then: an exhaustive single-bit campaign over weights, biases and table
    entries (mean SDC rate: top-1 change with labels, any output change without);
    ``ber_trials`` random multi-bit trials at bit-error rate ``ber`` (accuracy, or the
    share of unchanged outputs without labels); accuracy under Gaussian input noise.
    """
    from edgeml.fault_injection.ber import run_ber_sweep
    from edgeml.fault_injection.campaign import run_campaign
    from edgeml.fault_injection.sites import PERMANENT_PARAMS, enumerate_sites
    from edgeml.golden import GoldenModel

    t0 = time.perf_counter()
    g = GoldenModel.from_torch(edge_model, spec.input_shape)
    n = min(len(x), opts.fault_samples)
    xs = np.asarray(x[:n])
    ys = None if y is None else np.asarray(y[:n])
    codes = g.quantize_input(xs, on_overflow="saturate")
    sdc = "top1" if ys is not None else "any"
    sites = enumerate_sites(g, PERMANENT_PARAMS)
    res = run_campaign(g, codes, ys, sites, progress=False, sdc=sdc)
    ber = run_ber_sweep(
        g, codes, ys, [opts.ber], opts.ber_trials, opts.seed, sdc=sdc, progress=False
    )
    out: dict[str, Any] = {
        "faults": len(sites),
        "fault_samples": n,
        "sdc_mode": sdc,
        "mean_sdc": float(np.mean(res.sdc_rate)),
    }
    rng = np.random.default_rng(opts.seed)
    sigma = opts.noise * np.asarray(x, np.float64).std(axis=0, keepdims=True)
    golden_log = logging.getLogger("edgeml.golden")
    level = golden_log.level
    golden_log.setLevel(
        logging.ERROR
    )  # noise pushes inputs past the range: saturating is the point
    try:
        noisy = g.quantize_input(xs + sigma * rng.standard_normal(xs.shape), on_overflow="saturate")
    finally:
        golden_log.setLevel(level)
    noisy_out = _real_outputs(g, noisy)
    if ys is not None:
        out["baseline_accuracy"] = float(res.baseline_accuracy)
        out["acc_ber"] = float(ber.accuracy.mean())
        out["acc_noise"] = float(np.mean(noisy_out.argmax(axis=1) == ys))
    else:
        out["acc_ber"] = float(1.0 - ber.sdc_rate.mean())  # share of unchanged outputs
        clean_out = _real_outputs(g, codes)
        out["noise_output_dev"] = float(np.mean(np.abs(noisy_out - clean_out)))
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _real_outputs(g: Any, codes: np.ndarray) -> np.ndarray:
    """The golden model's outputs in real units, flattened per sample."""
    out = g.predict(codes).astype(np.float64) * np.asarray(g.output_scale, np.float64)
    return out.reshape(len(codes), -1)


# ------------------------------------------------------------------ sweep points


def sweep_point_analysis(
    opts: AnalysisOptions,
    spec: Any,
    data: Any,
    float_model: Any,
    qat_model: Any,
    pruned_model: Any,
    point: dict[str, Any],
) -> dict[str, Any]:
    """The analysis of one sweep point (the sweep's ``point_hook``, bound to ``opts``)."""
    from edgeml.models.analysis import similarity

    y_test = spec.targets("test", data)
    x, y = _subset(data.x_test, y_test, opts.samples)
    numbers, _ = model_metrics(pruned_model, x, y, spec.loss, opts)
    n_cka = min(len(x), 1000)
    diag = similarity.cka_diagonal(float_model, pruned_model, x[:n_cka], kind="linear")
    numbers["cka_layers"] = diag
    numbers["cka_to_float"] = float(np.nanmean(list(diag.values()))) if diag else float("nan")
    labels = np.asarray(data.y_test) if spec.task == "classification" else None
    numbers["robustness"] = robustness(spec, spec.edge(pruned_model), data.x_test, labels, opts)
    return numbers


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def bootstrap_ci(
    a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the Spearman correlation over points."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    ra = rankdata(a[idx], axis=1)
    rb = rankdata(b[idx], axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    ok = den > 0
    rho = (ra * rb).sum(axis=1)[ok] / den[ok]
    if rho.size < 10:
        return float("nan"), float("nan")
    lo, hi = np.quantile(rho, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def correlations(points: Sequence[dict[str, Any]], *, seed: int = 0) -> list[dict[str, Any]]:
    """Spearman rho (and 95 % bootstrap CI) of every metric against every robustness measure.

    The sign is oriented so that a positive rho means "a larger metric goes with a
    *more robust* design" (the SDC rate is negated).
    """
    rows = []
    bits = np.array([p.get("bits", 0) for p in points])
    for mkey, mlabel in SWEEP_METRICS:
        m = np.array([p["analysis"].get(mkey, np.nan) for p in points], np.float64)
        for rkey, rlabel, higher_better in ROBUSTNESS:
            r = np.array([_robustness_value(p["analysis"]["robustness"], rkey) for p in points])
            r = r.astype(np.float64) * (1.0 if higher_better else -1.0)
            ok = np.isfinite(m) & np.isfinite(r)
            rho = spearman(m[ok], r[ok])
            lo, hi = (
                bootstrap_ci(m[ok], r[ok], seed=seed) if math.isfinite(rho) else (math.nan,) * 2
            )
            rows.append(
                {
                    "metric": mkey,
                    "metric_label": mlabel,
                    "robustness": rkey,
                    "robustness_label": rlabel,
                    "n": int(ok.sum()),
                    "rho": rho,
                    "ci": [lo, hi],
                    "rho_within_bits": _within(m[ok], r[ok], bits[ok]),
                }
            )
    return rows


def _within(m: np.ndarray, r: np.ndarray, groups: np.ndarray) -> float:
    """Spearman rho within each group (bit width), averaged weighted by group size.

    Bit width drives both curvature and robustness; this asks whether the metric
    still ranks designs of the *same* bit width (NaN when no group has 3+ points)."""
    num = den = 0.0
    for g in np.unique(groups):
        sel = groups == g
        rho = spearman(m[sel], r[sel])
        if math.isfinite(rho):
            num += rho * sel.sum()
            den += sel.sum()
    return num / den if den else float("nan")


def _robustness_value(rob: dict[str, Any], key: str) -> float:
    """A point's robustness measure; without labels (an autoencoder) input-noise robustness
    is the negated mean output change, so that larger still means more robust."""
    if key == "acc_noise" and key not in rob and "noise_output_dev" in rob:
        return -float(rob["noise_output_dev"])
    return float(rob.get(key, np.nan))


def best_predictors(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per robustness measure, the metric with the largest |rho| (and whether its CI excludes 0)."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not math.isfinite(row["rho"]):
            continue
        cur = best.get(row["robustness"])
        if cur is None or abs(row["rho"]) > abs(cur["rho"]):
            best[row["robustness"]] = row
    return {
        k: {**v, "significant": bool(v["ci"][0] > 0 or v["ci"][1] < 0)} for k, v in best.items()
    }


# ------------------------------------------------------------------ output helpers


def _png(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:.{digits}g}"
    return str(v)


# ------------------------------------------------------------------ run folder


@dataclass
class RunAnalysis:
    """What ``analyze_run`` wrote: the JSON document and its path."""

    doc: dict[str, Any]
    path: Path


def _load_models(run: Path) -> dict[str, Any]:
    from edgeml.models import zoo

    models: dict[str, Any] = {}
    for label, name in (("float", "float.pt"), ("qat", "qat.pt"), ("pruned", "model.pt")):
        if (run / name).is_file():
            models[label], _, _ = zoo.load_checkpoint(run / name)
    if not models:
        raise ConfigError(
            f"run folder '{run}' has no trained models (float.pt, qat.pt, model.pt): "
            "`edgeml analyze --run` needs a built-in design's run (edgeml flow --design NAME)"
        )
    for m in models.values():
        m.eval()
    return models


def analyze_run(run_dir: str | Path, opts: AnalysisOptions | None = None) -> RunAnalysis:
    """Analyse a run folder's models; write ``analysis/`` and rebuild its report."""
    from tqdm.auto import tqdm

    from edgeml.flow import run_context
    from edgeml.models import zoo
    from edgeml.models.analysis import curvature, landscape, similarity, topology

    opts = opts or AnalysisOptions()
    check_device(opts.device)
    run = Path(run_dir)
    ctx = run_context(run)
    if ctx.external:
        raise ConfigError(
            f"run '{run}' holds a model made elsewhere ({ctx.cfg.onnx or ctx.cfg.keras}): the "
            "analysis stack needs the trained torch models of a built-in design"
        )
    spec = zoo.get(ctx.cfg.design)
    data = spec.load_data(ctx.cfg.seed)
    models = _load_models(run)
    x, y = _subset(data.x_test, spec.targets("test", data), opts.samples)
    out = run / ANALYSIS_DIR
    out.mkdir(parents=True, exist_ok=True)
    t0, started = time.perf_counter(), time.time()
    steps = len(models) + 3
    bar = tqdm(total=steps, desc=f"analyze {spec.name}", unit="step", disable=not opts.progress)
    per_model: dict[str, dict[str, Any]] = {}
    figures: list[dict[str, str]] = []
    for label, model in models.items():
        bar.set_postfix_str(f"{label}: curvature + landscape")
        numbers, art = model_metrics(model, x, y, spec.loss, opts, with_tree=True)
        art["landscape"].meta["kind"] = label  # the figures' titles
        per_model[label] = numbers
        write_json(out / f"topology_{label}.json", art["topology"])  # every minimum
        np.savez_compressed(
            out / f"landscape_{label}.npz",
            alphas=art["landscape"].alphas,
            betas=art["landscape"].betas,
            loss=art["landscape"].loss,
        )
        figures += [
            {
                "section": "curvature",
                "title": f"Hessian eigenvalue density: {label}",
                "file": _png(
                    curvature.plot_density(art["curvature"]), out / f"density_{label}.png"
                ),
                "caption": f"Stochastic Lanczos quadrature of the loss Hessian of the {label} "
                f"model ({numbers['params']:,} parameters, {len(x):,} test samples).",
            },
            {
                "section": "landscape",
                "title": f"Loss landscape: {label}",
                "file": _png(
                    landscape.plot_contour(art["landscape"]), out / f"contour_{label}.png"
                ),
                "caption": "Loss on a 2-D slice along two filter-normalised random directions "
                f"(Li et al. 2018), {opts.points}x{opts.points} points; the trained model at 0.",
            },
            {
                "section": "landscape",
                "title": f"Loss surface: {label}",
                "file": _png(
                    landscape.plot_surface(art["landscape"]), out / f"surface_{label}.png"
                ),
                "caption": "The same slice as a 3-D surface.",
            },
        ]
        if art["tree"] is not None and label == "pruned":  # the design that ships
            figures.append(
                {
                    "section": "topology",
                    "title": "The shipped model's landscape beside its merge tree",
                    "file": _png(
                        landscape_with_tree(art["landscape"], art["tree"]),
                        out / "landscape_tree_pruned.png",
                    ),
                    "caption": "Left: the 2-D loss slice of the pruned QAT model; right: its "
                    "sublevel-set merge tree (minima deeper than 1 % of the loss range), each "
                    "leaf a basin of the slice.",
                }
            )
        if art["tree"] is not None:
            figures.append(
                {
                    "section": "topology",
                    "title": f"Merge tree of the loss slice: {label}",
                    "file": _png(topology.plot_merge_tree(art["tree"]), out / f"tree_{label}.png"),
                    "caption": f"Sublevel-set merge tree ({numbers['topology'].get('backend')}):"
                    f" {numbers['n_minima']} minim{'um' if numbers['n_minima'] == 1 else 'a'}; max finite persistence "
                    f"{_fmt(numbers['max_persistence'])}.",
                }
            )
        bar.update(1)

    # the integer design through the exact golden model
    quantized: dict[str, Any] | None = None
    bar.set_postfix_str("integer landscape (golden)")
    if ctx.run.file("model.qonnx.onnx").exists():
        quantized = _quantized_landscape(ctx, spec, data, opts, out, figures)
    bar.update(1)

    bar.set_postfix_str("CKA")
    cka: dict[str, Any] = {}
    n_cka = min(len(x), 1000)
    labels = list(models)
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            for kind in ("linear", "rbf"):
                res = similarity.cka_matrix(models[a], models[b], x[:n_cka], kind=kind)
                cka[f"{a}~{b}~{kind}"] = _jsonable(res)
                if kind == "linear":
                    figures.append(
                        {
                            "section": "similarity",
                            "title": f"Linear CKA per layer: {a} vs {b}",
                            "file": _png(similarity.plot_cka(res), out / f"cka_{a}_{b}.png"),
                            "caption": f"Linear CKA (Kornblith et al. 2019) between the layer "
                            f"outputs of the {a} and {b} models on {n_cka:,} test samples.",
                        }
                    )
    preds = {k: _predict(m, x) for k, m in models.items()}
    agree = {
        f"{a}~{b}": similarity.disagreement(preds[a], preds[b])
        for i, a in enumerate(labels)
        for b in labels[i + 1 :]
        if spec.task == "classification"
    }
    bar.update(1)

    bar.set_postfix_str("mode connectivity")
    paths: dict[str, Any] = {}
    if "float" in models and "qat" in models:
        try:
            # evaluated in the QAT graph: t=1 is the QAT model itself
            lin = landscape.interpolate(
                models["float"], models["qat"], x, y, spec.loss, evaluate_with="b"
            )
            bez = landscape.bezier_connect(
                models["float"], models["qat"], x, y, spec.loss, seed=opts.seed, evaluate_with="b"
            )
            paths = {"linear": _jsonable(lin), "bezier": _jsonable(bez)}
            figures.append(
                {
                    "section": "landscape",
                    "title": "Mode connectivity: float to QAT",
                    "file": _png(landscape.plot_path(lin, bez), out / "paths_float_qat.png"),
                    "caption": "Loss along the straight line and along a trained quadratic "
                    "Bezier curve (Garipov et al. 2018) from the float model (t=0) to the QAT "
                    "model (t=1).",
                }
            )
        except ConfigError as exc:
            paths = {"skipped": str(exc)}
    bar.update(1)
    bar.close()

    faults = _read_optional(ctx.run.file("faults") / "summary.json")
    doc = {
        "format": ANALYSIS_FORMAT,
        "design": spec.name,
        "options": asdict(opts),
        "samples": len(x),
        "models": per_model,
        "quantized": quantized,
        "cka": cka,
        "disagreement": agree,
        "paths": paths,
        "robustness": {
            "mean_sdc": None if faults is None else faults.get("mean_sdc_rate"),
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    doc["tables"] = _run_tables(doc)
    doc["figures"] = figures
    doc["summary"] = {"sentence": _run_sentence(doc)}
    path = out / "analysis.json"
    write_json(path, doc)
    ctx.run.record(
        "analyze",
        inputs=[run / n for n in ("float.pt", "qat.pt", "model.pt") if (run / n).is_file()],
        outputs=[path, *(out / f["file"] for f in figures)],
        config=ctx.cfg.model_dump(),
        seed=opts.seed,
        started=started,
        extra={"seconds": doc["seconds"]},
    )
    try:
        from edgeml.report_build import build_report

        build_report(ctx)
    except Exception as exc:  # the analysis is written; the report is a view of it
        log.warning("analysis written, but the report could not be rebuilt: %s", exc)
    return RunAnalysis(doc, path)


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    from edgeml.models import training

    return training.predict(model, x)


def _read_optional(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _jsonable(obj: Any) -> Any:
    """Numpy arrays and scalars inside ``obj`` as lists and floats."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "to_json"):
        return obj.to_json()
    return obj


def _quantized_landscape(
    ctx: Any, spec: Any, data: Any, opts: AnalysisOptions, out: Path, figures: list[dict[str, str]]
) -> dict[str, Any]:
    from edgeml.models.analysis import landscape

    g = ctx.golden()
    labels = np.asarray(data.y_test) if spec.task == "classification" else None
    if labels is None:
        return {"skipped": "no labels (the integer landscape needs a classifier)"}
    n = min(len(data.x_test), opts.samples)
    codes = g.quantize_input(np.asarray(data.x_test[:n]), on_overflow="saturate")
    axis = np.linspace(-opts.span, opts.span, opts.points)
    l2d = landscape.quantized_slice_2d(g, codes, labels[:n], axis, axis, seed=opts.seed)
    l2d.meta["kind"] = "integer design, golden model"
    flat = landscape.flatness(l2d, eps_rel=FLAT_REL)
    topo = landscape_topology(l2d, opts)
    figures.append(
        {
            "section": "landscape",
            "title": "Loss landscape of the integer design (golden model)",
            "file": _png(landscape.plot_contour(l2d), out / "contour_integer.png"),
            "caption": "The shipped integer design, perturbed on its integer grid (weight codes "
            "moved by whole LSBs along filter-normalised directions, saturated to their "
            "words) and evaluated with the exact golden model.",
        }
    )
    np.savez_compressed(
        out / "landscape_integer.npz", alphas=l2d.alphas, betas=l2d.betas, loss=l2d.loss
    )
    return {
        "loss": float(l2d.loss[opts.points // 2, opts.points // 2]),
        "flatness": flat,
        "topology": topology_numbers(topo),
    }


def _run_tables(doc: dict[str, Any]) -> list[dict[str, Any]]:
    head = [
        "model",
        "parameters",
        "loss",
        "top eigenvalues",
        "trace (Hutch++)",
        "trace (Hutchinson ± s.e.)",
        "Fisher trace",
        "sharpness",
        "flat area",
        "minima",
        "max persistence",
    ]
    rows = []
    for label, m in doc["models"].items():
        rows.append(
            [
                label,
                f"{m['params']:,}",
                _fmt(m["loss"]),
                ", ".join(_fmt(v, 3) for v in m["eigenvalues"]),
                _fmt(m["trace"]),
                f"{_fmt(m['trace_hutchinson'])} ± {_fmt(m['trace_hutchinson_stderr'], 2)}",
                _fmt(m["fisher_trace"]),
                _fmt(m["sharpness"]),
                _fmt(m["flat_area"], 3),
                str(m["n_minima"]),
                _fmt(m["max_persistence"]),
            ]
        )
    tables = [
        {
            "section": "curvature",
            "title": "Curvature and landscape of each model",
            "head": head,
            "rows": rows,
            "note": "Hessian of the mean test loss in the models' own parameters (QAT models "
            "through their straight-through quantizers). Sharpness: the largest loss increase "
            "within a radius of 0.25 x the slice's half-width around the model; flat area: the share of the "
            "slice within 10 % of the centre loss; minima: those deeper than 1 % of the "
            "slice's loss range.",
        }
    ]
    cka_rows = []
    for key, res in doc["cka"].items():
        a, b, kind = key.split("~")
        diag = res.get("diagonal") or {}
        vals = list(diag.values()) if isinstance(diag, dict) else list(diag)
        cka_rows.append(
            [
                f"{a} vs {b}",
                kind,
                ", ".join(_fmt(v, 3) for v in vals) or "-",
                _fmt(doc["disagreement"].get(f"{a}~{b}"), 3),
            ]
        )
    if cka_rows:
        tables.append(
            {
                "section": "similarity",
                "title": "Representation similarity (CKA per layer, and top-1 disagreement)",
                "head": ["models", "CKA", "per layer (same-name layers)", "disagreement"],
                "rows": cka_rows,
            }
        )
    return tables


def _run_sentence(doc: dict[str, Any]) -> str:
    m = doc["models"]
    parts = []
    if "float" in m and "pruned" in m:
        f, p = m["float"], m["pruned"]
        parts.append(
            f"the shipped (pruned QAT) model's top Hessian eigenvalue is "
            f"{_fmt(p['top_eigenvalue'], 3)} against {_fmt(f['top_eigenvalue'], 3)} for the "
            f"float model, its trace {_fmt(p['trace'], 3)} against {_fmt(f['trace'], 3)}"
        )
    sdc = doc["robustness"].get("mean_sdc")
    if sdc is not None:
        parts.append(f"its measured mean SDC rate per single-bit flip is {100 * sdc:.3g} %")
    return ("Curvature: " + "; ".join(parts) + ".") if parts else ""


# ------------------------------------------------------------------ sweep


def points_subdir(opts: AnalysisOptions) -> str:
    """Where a sweep's analysed points are cached: one folder per set of options, so that
    a rerun with other options never reuses points measured differently."""
    import hashlib

    fields = {k: v for k, v in asdict(opts).items() if k != "progress"}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    return f"{ANALYSIS_DIR}/points-{digest}"


def analyze_sweep(
    sweep_dir: str | Path,
    opts: AnalysisOptions | None = None,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Analyse every point of an ``edgeml sweep`` and correlate the metrics with robustness."""
    from edgeml import sweep as S

    opts = opts or replace(AnalysisOptions(), points=SWEEP_POINTS)
    check_device(opts.device)
    root = Path(sweep_dir)
    sweep_json = root / "sweep.json"
    if not sweep_json.is_file():
        raise ConfigError(f"'{root}' is not a sweep folder: no sweep.json (run `edgeml sweep`)")
    sw = json.loads(sweep_json.read_text())
    if sw.get("format") != S.SWEEP_FORMAT:
        raise ConfigError(f"'{sweep_json}' is not an edgeml sweep (format {sw.get('format')!r})")
    grid = sw["grid"]
    cfg = S.SweepConfig(
        design=sw["design"],
        bits=tuple(grid["bits"]),
        sparsities=tuple(grid["sparsities"]),
        seeds=tuple(grid["seeds"]),
        layer_bits=tuple(grid.get("layer_bits", [""])),
        epochs_scale=float(sw["epochs_scale"]),
        workers=max(1, int(workers)),
        scheduler=scheduler,
        out=root,
        resume=resume,
        progress=opts.progress,
        point_hook=functools.partial(sweep_point_analysis, opts),
        points_subdir=points_subdir(opts),
    )
    t0 = time.perf_counter()
    points, stats, mode = S.run_points(cfg)
    swept = {p["key"]: p for p in sw.get("points", [])}
    for p in points:
        ref = swept.get(p["key"])
        p["reproduced"] = None if ref is None else bool(ref["metric"] == p["metric"])
    rows = correlations(points, seed=opts.seed)
    best = best_predictors(rows)
    out = root / ANALYSIS_DIR
    figs = _sweep_figures(points, rows, out)
    doc = {
        "format": SWEEP_ANALYSIS_FORMAT,
        "design": sw["design"],
        "grid": grid,
        "epochs_scale": sw["epochs_scale"],
        "options": asdict(opts),
        "mode": mode,
        "stats": stats.as_dict(),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "reproduced": sum(1 for p in points if p["reproduced"]),
        "points": [
            {k: p[k] for k in ("key", "seed", "bits", "sparsity", "metric", "reproduced")}
            | {"analysis": p["analysis"]}
            for p in points
        ],
        "correlations": rows,
        "best": best,
        "figures": figs,
    }
    write_json(out / "sweep_analysis.json", doc)
    (out / "sweep_analysis.html").write_text(render_sweep_html(doc, out), encoding="utf-8")
    return doc


def _sweep_figures(
    points: Sequence[dict[str, Any]], rows: list[dict[str, Any]], out: Path
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out.mkdir(parents=True, exist_ok=True)
    files = []
    bits = np.array([p["bits"] for p in points])
    for rkey, rlabel, _ in ROBUSTNESS:
        fig, axes = plt.subplots(
            2, 4, figsize=(16, 8.6), gridspec_kw={"hspace": 0.55, "wspace": 0.28}
        )
        r = np.array([_robustness_value(p["analysis"]["robustness"], rkey) for p in points])
        for ax, (mkey, mlabel) in zip(axes.ravel(), SWEEP_METRICS, strict=False):
            m = np.array([p["analysis"].get(mkey, np.nan) for p in points], float)
            sc = ax.scatter(m, r, c=bits, cmap="viridis", s=26)
            ax.set_title(f"{mlabel}\nrho = {_ci_text(_row(rows, mkey, rkey))}", fontsize=9)
            if ax in axes[:, 0]:
                ax.set_ylabel(rlabel, fontsize=8)
            ax.tick_params(labelsize=7)
            if mkey in ("top_eigenvalue", "trace", "fisher_trace") and np.nanmin(m) > 0:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        fig.colorbar(sc, ax=axes, label="bits", shrink=0.6)
        fig.suptitle(f"{rlabel} against each analysis metric (one dot per sweep point)")
        name = f"scatter_{rkey}.png"
        fig.savefig(out / name, dpi=90, bbox_inches="tight")
        plt.close(fig)
        files.append(name)
    return files


def _row(rows: Sequence[dict[str, Any]], metric: str, robustness: str) -> dict[str, Any]:
    """The correlation row of ``metric`` against ``robustness``."""
    return next(r for r in rows if r["metric"] == metric and r["robustness"] == robustness)


def _ci_text(row: dict[str, Any]) -> str:
    """``rho [lo, hi]``, two significant digits."""
    return f"{_fmt(row['rho'], 2)} [{_fmt(row['ci'][0], 2)}, {_fmt(row['ci'][1], 2)}]"


def format_correlations(doc: dict[str, Any]) -> str:
    """The correlation table as text (what the CLI prints and the README quotes)."""
    lines = [
        "Spearman rho over sweep points [95 % bootstrap CI] (rho within one bit width); "
        "positive = larger metric, more robust",
        f"{'metric':32s} " + " ".join(f"{lbl[:34]:>34s}" for _, lbl, _ in ROBUSTNESS),
    ]
    for mkey, mlabel in SWEEP_METRICS:
        cells = []
        for rkey, _, _ in ROBUSTNESS:
            row = _row(doc["correlations"], mkey, rkey)
            cells.append(f"{_ci_text(row)} ({_fmt(row.get('rho_within_bits'), 2)})")
        lines.append(f"{mlabel:32s} " + " ".join(f"{c:>34s}" for c in cells))
    for rkey, rlabel, _ in ROBUSTNESS:
        b = doc["best"].get(rkey)
        if b:
            lines.append(
                f"best predictor of {rlabel}: {b['metric_label']} (rho {_fmt(b['rho'], 2)}, "
                f"95 % CI [{_fmt(b['ci'][0], 2)}, {_fmt(b['ci'][1], 2)}]"
                f"{'' if b['significant'] else ', includes 0'})"
            )
    return "\n".join(lines)


def render_sweep_html(doc: dict[str, Any], out: Path) -> str:
    """A self-contained page: the correlation table, the scatter plots, every point's numbers."""
    import base64

    e = html.escape
    head = "".join(f"<th>{e(lbl)}</th>" for _, lbl, _ in ROBUSTNESS)
    body = []
    for mkey, mlabel in SWEEP_METRICS:
        cells = []
        for rkey, _, _ in ROBUSTNESS:
            row = _row(doc["correlations"], mkey, rkey)
            strong = row["ci"][0] > 0 or row["ci"][1] < 0
            txt = f"{_ci_text(row)} ({_fmt(row.get('rho_within_bits'), 2)})"
            cells.append(f"<td>{'<b>' + txt + '</b>' if strong else txt}</td>")
        body.append(f"<tr><th>{e(mlabel)}</th>{''.join(cells)}</tr>")
    best = "".join(
        f"<li>{e(b['robustness_label'])}: <b>{e(b['metric_label'])}</b> (rho {_fmt(b['rho'], 2)}, "
        f"95 % CI [{_fmt(b['ci'][0], 2)}, {_fmt(b['ci'][1], 2)}]"
        f"{'' if b['significant'] else '; the interval includes 0'})</li>"
        for b in doc["best"].values()
    )
    imgs = []
    for name in doc["figures"]:
        p = out / name
        if p.is_file():
            b64 = base64.b64encode(p.read_bytes()).decode()
            imgs.append(
                f'<img alt="{e(name)}" src="data:image/png;base64,{b64}" style="max-width:100%">'
            )
    pts_head = [
        "seed",
        "bits",
        "sparsity",
        "metric",
        "top eig",
        "trace",
        "sharpness",
        "minima",
        "CKA",
        "mean SDC",
        "acc BER",
        "acc noise",
    ]
    pts = []
    for p in doc["points"]:
        a, r = p["analysis"], p["analysis"]["robustness"]
        vals = [
            p["seed"],
            p["bits"],
            f"{100 * p['sparsity']:.0f} %",
            _fmt(p["metric"]),
            _fmt(a["top_eigenvalue"], 3),
            _fmt(a["trace"], 3),
            _fmt(a["sharpness"], 3),
            a["n_minima"],
            _fmt(a["cka_to_float"], 3),
            _fmt(r.get("mean_sdc"), 3),
            _fmt(r.get("acc_ber")),
            _fmt(r.get("acc_noise")),
        ]
        pts.append("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in vals) + "</tr>")
    n = len(doc["points"])
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>edgeml analyze: {e(doc["design"])} sweep</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}</style>
</head><body>
<h1>{e(doc["design"])}: which analysis metric predicts fault robustness?</h1>
<p>{n} sweep points (bits {doc["grid"]["bits"]}, sparsity {doc["grid"]["sparsities"]},
seeds {doc["grid"]["seeds"]}); {doc["reproduced"]} of {n} re-trained points reproduce the
sweep's metric exactly. Spearman rank correlation over the points, with 95 % bootstrap
intervals; the sign is oriented so that a positive value means "larger metric, more robust"
(the SDC rate is negated). Bold: the interval excludes 0. In parentheses: the correlation
within one bit width (averaged over bit widths, weighted by points), since bit width drives
both curvature and robustness.</p>
<table><tr><th>metric</th>{head}</tr>{"".join(body)}</table>
<h2>Best predictor</h2><ul>{best}</ul>
<h2>Scatter plots</h2>{"".join(imgs)}
<h2>Every point</h2><table><tr>{"".join(f"<th>{e(h)}</th>" for h in pts_head)}</tr>{"".join(pts)}</table>
</body></html>"""
