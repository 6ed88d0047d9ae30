"""``edgeml codesign``: search per-layer precision and sparsity against accuracy, LUTs and SDC.

One command closes the loop that the rest of edgeml measures:

1. **Sensitivity.** The float model is trained (as ``edgeml flow`` trains it) and
   the Hessian trace of the loss per layer is estimated (HAWQ-V2,
   :func:`edgeml.mixed.layer_hessian_traces`). :func:`edgeml.mixed.allocate_bits`
   turns it into mixed per-layer bit assignments: the less sensitive a layer, the
   fewer bits it gets.
2. **Search.** Every candidate (uniform bit widths and the mixed assignments, each
   at every sparsity) is trained through Brevitas QAT and pruning on the sweep
   engine (:mod:`edgeml.sweep`: Dask distributed, a local cluster by default, each
   finished point cached as JSON, so a killed search resumes where it stopped, with a
   progress bar). Each point is measured where it will run: its QONNX export with
   exact minimal bias widths (:mod:`edgeml.minwidth`), the golden integer model's
   stored bits and exhaustive single-bit weight/bias fault campaign (mean SDC, SDC of
   the top 1 % bits), and da4ml's LUT estimate of its RTL.
3. **Choice.** The Pareto front of metric vs LUTs vs mean SDC; the chosen point is
   the cheapest (fewest LUTs, then lowest SDC) that meets the target and both budgets.
   If none does, the point that violates them least is taken and the report says so.
4. **Firmware.** The chosen design and the design's default (the *before*) each go
   through the whole flow (``edgeml flow``: hls4ml, RTL, verify at every level,
   yosys resources, faults, report) in ``<out>/chosen`` and ``<out>/baseline``; the
   chosen design's RTL registers are then protected where the RTL fault campaign says
   (:func:`edgeml.fault_injection.harden.harden_run`: TMR/SECDED, predicted vs
   measured SDC, yosys area). ``codesign.json``, ``codesign.md`` (the before/after
   table) and a Pareto section in the chosen design's ``report.html`` are written.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.errors import ConfigError

log = logging.getLogger(__name__)

CODESIGN_FORMAT = "edgeml-codesign-v1"
CODESIGN_JSON = "codesign.json"
CODESIGN_MD = "codesign.md"
#: Uniform bit widths tried by default (each also the pool of per-layer choices).
DEFAULT_BITS: tuple[int, ...] = (4, 5, 6, 8)
DEFAULT_SPARSITIES: tuple[float, ...] = (0.5, 0.75, 0.85)
#: Mixed per-layer assignments taken from the HAWQ allocation.
DEFAULT_MIXED = 3
#: Test samples the search's fault campaigns run on (the flow uses ``faults.max_samples``).
DEFAULT_FAULT_SAMPLES = 500
#: Share of register bits the chosen design's RTL protects by default.
DEFAULT_HARDEN = 0.05
#: Fraction of the most severe bits whose mean SDC the table reports ("top-1 % bits").
TOP_FRACTION = 0.01

_TARGET_RE = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=)\s*"
    r"(?:(?P<float>float)\s*(?:(?P<sign>[-+])\s*(?P<delta>[0-9.]+)\s*(?P<unit>pp|%)?)?"
    r"|(?P<abs>[0-9.]+)\s*(?P<absunit>%)?)\s*$"
)


@dataclass(frozen=True)
class Target:
    """A metric requirement: ``accuracy>=float-1pp``, ``emd<=float+0.1``, ``accuracy>=0.70``.

    ``pp`` (percentage points) and ``%`` both mean hundredths of the metric (0.01);
    without a unit the number is in the metric's own units.
    """

    metric: str
    op: str
    relative: bool
    delta: float
    text: str

    def threshold(self, float_metric: float) -> float:
        """The bound the metric must meet, given the float model's metric."""
        return float_metric + self.delta if self.relative else self.delta

    def met(self, value: float, float_metric: float) -> bool:
        t = self.threshold(float_metric)
        return value >= t - 1e-12 if self.op == ">=" else value <= t + 1e-12

    def shortfall(self, value: float, float_metric: float) -> float:
        """How far ``value`` misses the bound (0 when met), in metric units."""
        t = self.threshold(float_metric)
        return max(0.0, t - value) if self.op == ">=" else max(0.0, value - t)


def parse_target(text: str, metric: str, higher_is_better: bool) -> Target:
    """Parse ``--target``; the metric must be the design's own (``metric``)."""
    m = _TARGET_RE.match(text or "")
    if not m:
        raise ConfigError(
            f"--target {text!r} must look like '{metric}>=float-1pp', '{metric}>=0.70' or "
            f"'{metric}<=float+0.05' (a bound relative to the float model, or absolute)"
        )
    if m["metric"] != metric:
        raise ConfigError(
            f"--target names metric {m['metric']!r}; this design's metric is {metric!r}"
        )
    op = m["op"]
    if (op == ">=") != higher_is_better:
        want = ">=" if higher_is_better else "<="
        raise ConfigError(
            f"--target {text!r}: {metric} is {'higher' if higher_is_better else 'lower'}-is-better, "
            f"so the bound is '{metric}{want}...'"
        )
    if m["float"]:
        delta = float(m["delta"]) if m["delta"] else 0.0
        if m["unit"]:
            delta /= 100.0
        if m["sign"] == "-":
            delta = -delta
        return Target(metric, op, True, delta, text.strip())
    value = float(m["abs"])
    if m["absunit"]:
        value /= 100.0
    return Target(metric, op, False, value, text.strip())


def parse_fraction(text: str | float, flag: str) -> float:
    """``0.5%`` -> 0.005, ``0.005`` -> 0.005; must lie in [0, 1]."""
    s = str(text).strip()
    try:
        value = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r} must be a fraction (0.005) or a percentage (0.5%)"
        ) from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{flag} {text!r} must lie in [0, 1] (or 0%..100%)")
    return value


# ------------------------------------------------------------------ measuring one design


def fault_figures(res: Any, n_bits: int | None = None) -> dict[str, Any]:
    """Mean SDC, SDC of the top 1 % bits and the biases' share of a weight/bias campaign."""
    sdc = np.asarray(res.sdc_rate, dtype=np.float64)
    params = res.param_labels()
    total = float(sdc.sum())
    k = max(1, math.ceil(TOP_FRACTION * sdc.size))
    top = np.sort(sdc)[::-1][:k]
    bias = params == "bias"
    return {
        "stored_bits": int(n_bits if n_bits is not None else sdc.size),
        "bias_bits": int(bias.sum()),
        "mean_sdc": float(sdc.mean()) if sdc.size else 0.0,
        "top1pct_sdc": float(top.mean()) if sdc.size else 0.0,
        "bias_sdc_share": float(sdc[bias].sum() / total) if total > 0 else 0.0,
        "critical_bits": int((sdc > 0).sum()),
    }


def measure_golden(g: Any, x: np.ndarray, y: np.ndarray | None) -> dict[str, Any]:
    """The golden model's stored bits, exhaustive weight/bias campaign figures and LUT estimate."""
    from edgeml.fault_injection.campaign import run_campaign
    from edgeml.fault_injection.sites import PERMANENT_PARAMS, enumerate_sites
    from edgeml.rtl import trace_golden

    sites = enumerate_sites(g, PERMANENT_PARAMS)
    sdc = "top1" if y is not None else "any"
    res = run_campaign(g, x, y, sites, progress=False, sdc=sdc)
    out = fault_figures(res)
    out["fault_seconds"] = round(res.seconds, 2)
    t0 = time.perf_counter()
    comb = trace_golden(g).comb()
    out["lut_estimate"] = float(comb.cost)
    out["trace_seconds"] = round(time.perf_counter() - t0, 2)
    return out


def evaluate_point(
    spec: Any,
    data: Any,
    float_model: Any,
    qat: Any,
    pruned: Any,
    point: dict[str, Any],
    *,
    min_widths: bool = True,
    n_samples: int = DEFAULT_FAULT_SAMPLES,
) -> dict[str, Any]:
    """A sweep point hook: export, minimal widths, golden model, faults and LUT estimate.

    Runs on a Dask worker; returns JSON-able figures stored as ``point["analysis"]``.
    """
    import onnx

    from edgeml.export import export_qonnx
    from edgeml.golden import GoldenModel

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.qonnx.onnx"
        export_qonnx(spec.edge(pruned), (1, *spec.input_shape), path)
        removed = None
        if min_widths:
            from edgeml.minwidth import minimize_widths

            model, report = minimize_widths(path)
            onnx.save(model, str(path))
            removed = report.total_bits_before - report.total_bits_after
        g = GoldenModel.from_onnx(path)
    x = g.quantize_input(data.x_test[:n_samples])
    y = np.asarray(data.y_test[:n_samples]) if spec.task == "classification" else None
    out = measure_golden(g, x, y)
    out["min_widths"] = bool(min_widths)
    out["bits_removed"] = removed
    return out


# ------------------------------------------------------------------ Pareto front and choice


@dataclass
class Candidate:
    """One searched design point and its objectives."""

    key: str
    bits: int
    layer_bits: dict[str, int]
    sparsity: float
    metric: float
    float_metric: float
    lut: float
    mean_sdc: float
    top1pct_sdc: float
    stored_bits: int
    pareto: bool = False
    #: meets the metric target and the LUT budget
    fits: bool = False
    feasible: bool = False
    violation: float = 0.0

    @property
    def label(self) -> str:
        if self.layer_bits:
            per = "/".join(str(v) for v in self.layer_bits.values())
            names = "/".join(self.layer_bits)
            return f"{names} {per}b, sparsity {self.sparsity:.2f}"
        return f"{self.bits}b, sparsity {self.sparsity:.2f}"


def candidates_from_points(points: Sequence[dict[str, Any]]) -> list[Candidate]:
    """Sweep points (with ``analysis`` from :func:`evaluate_point`) as candidates."""
    out = []
    for p in points:
        a = p["analysis"]
        out.append(
            Candidate(
                key=p["key"],
                bits=int(p["bits"]),
                layer_bits={k: int(v) for k, v in (p.get("layer_bits") or {}).items()},
                sparsity=float(p["sparsity"]),
                metric=float(p["metric"]),
                float_metric=float(p["float_metric"]),
                lut=float(a["lut_estimate"]),
                mean_sdc=float(a["mean_sdc"]),
                top1pct_sdc=float(a["top1pct_sdc"]),
                stored_bits=int(a["stored_bits"]),
            )
        )
    return out


def pareto_front(cands: Sequence[Candidate], higher_is_better: bool) -> list[int]:
    """Indices of the candidates no other candidate dominates (metric, LUTs, mean SDC)."""
    sign = 1.0 if higher_is_better else -1.0
    objs = np.array([[-sign * c.metric, c.lut, c.mean_sdc] for c in cands], dtype=np.float64)
    front = []
    for i, o in enumerate(objs):
        dominated = np.any(np.all(objs <= o, axis=1) & np.any(objs < o, axis=1))
        if not dominated:
            front.append(i)
    return front


def choose(
    cands: list[Candidate],
    target: Target,
    budget_lut: float | None,
    budget_sdc: float | None,
    higher_is_better: bool,
) -> tuple[int, str]:
    """Mark Pareto/feasible candidates; return (chosen index, how it meets the requirements).

    ``fits`` = the metric meets the target and the LUTs the budget; ``feasible`` = it
    also meets the SDC budget unprotected. The choice is the feasible point with the
    fewest LUTs (then lowest SDC, then best metric): status ``"meets all"``. With none
    feasible but some fitting, the fitting point with the fewest LUTs: status ``"harden"``
    (its weight/bias words are then protected until the SDC budget is met). With none
    fitting, the point with the smallest relative violation: status ``"closest"``.
    """
    if not cands:
        raise ConfigError("the search produced no candidates")
    for i in pareto_front(cands, higher_is_better):
        cands[i].pareto = True
    sign = 1.0 if higher_is_better else -1.0
    fits: list[int] = []
    for i, c in enumerate(cands):
        v = target.shortfall(c.metric, c.float_metric) / max(abs(c.float_metric), 1e-9)
        if budget_lut is not None:
            v += max(0.0, c.lut - budget_lut) / max(budget_lut, 1.0)
        if v == 0.0:
            fits.append(i)
        c.fits = v == 0.0
        if budget_sdc is not None:
            v += max(0.0, c.mean_sdc - budget_sdc) / max(budget_sdc, 1e-6)
        c.violation = v
        c.feasible = v == 0.0
    feasible = [i for i, c in enumerate(cands) if c.feasible]

    def cheapest(idx: list[int]) -> int:
        return min(idx, key=lambda i: (cands[i].lut, cands[i].mean_sdc, -sign * cands[i].metric))

    if feasible:
        return cheapest(feasible), "meets all"
    if fits:
        return cheapest(fits), "harden"
    return min(range(len(cands)), key=lambda i: (cands[i].violation, cands[i].lut)), "closest"


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class CodesignConfig:
    """A validated co-design search (see the module docstring)."""

    design: str = "jet"
    target: str = "accuracy>=float-1pp"
    budget_lut: float | None = None
    budget_sdc: float | None = None
    bits: tuple[int, ...] = DEFAULT_BITS
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    mixed: int = DEFAULT_MIXED
    seed: int = 0
    epochs_scale: float = 1.0
    fault_samples: int = DEFAULT_FAULT_SAMPLES
    harden: float = DEFAULT_HARDEN
    workers: int = 1
    scheduler: str | None = None
    out: Path | None = None
    resume: bool = True
    progress: bool = True
    #: run the chosen and baseline designs through the whole flow (off: search only)
    build: bool = True

    def __post_init__(self) -> None:
        from edgeml.models import zoo

        if self.design not in zoo.names():
            raise ConfigError(
                f"--design must be one of: {', '.join(zoo.names())}; got {self.design!r}"
            )
        spec = zoo.get(self.design)
        parse_target(self.target, spec.primary, spec.higher_is_better)
        if self.budget_lut is not None and not (
            isinstance(self.budget_lut, int | float) and self.budget_lut > 0
        ):
            raise ConfigError(
                f"--budget-lut must be a positive number of LUTs; got {self.budget_lut!r}"
            )
        if self.budget_sdc is not None:
            parse_fraction(self.budget_sdc, "--budget-sdc")
        if (
            isinstance(self.mixed, bool)
            or not isinstance(self.mixed, int)
            or not 0 <= self.mixed <= 32
        ):
            raise ConfigError(f"--mixed must be an integer in 0..32; got {self.mixed!r}")
        if not isinstance(self.fault_samples, int) or not 10 <= self.fault_samples <= 100_000:
            raise ConfigError(
                f"--fault-samples must be an integer in 10..100000; got {self.fault_samples!r}"
            )
        if not 0.0 <= float(self.harden) <= 1.0:
            raise ConfigError(
                f"--harden must be a fraction of register bits in [0, 1]; got {self.harden!r}"
            )
        out = Path(self.out) if self.out is not None else Path("runs") / "codesign" / self.design
        object.__setattr__(self, "out", out)

    @property
    def out_dir(self) -> Path:
        assert self.out is not None
        return self.out


@dataclass
class CodesignResult:
    """What the search found, and where the chosen design's run folder is."""

    config: dict[str, Any]
    target: dict[str, Any]
    sensitivity: dict[str, Any]
    candidates: list[dict[str, Any]]
    chosen: int
    meets_all: bool
    #: "meets all", "harden" (meets the target and LUT budget; the SDC budget by protecting
    #: weight/bias words) or "closest" (no candidate meets the target and LUT budget)
    status: str = "meets all"
    #: the weight/bias words protected to meet the SDC budget (:func:`harden_parameters`)
    param_harden: dict[str, Any] | None = None
    table: dict[str, dict[str, Any]] = field(default_factory=dict)
    harden: dict[str, Any] | None = None
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": CODESIGN_FORMAT, **asdict(self)}


# ------------------------------------------------------------------ the search


def _float_model(spec: Any, state: dict[str, np.ndarray]) -> Any:
    import torch

    model = spec.build_float()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return model.eval()


def hawq_assignments(
    model: Any, traces: dict[str, float], bits: Sequence[int], n: int
) -> list[dict[str, int]]:
    """Up to ``n`` mixed assignments: for each uniform width's weight-bit budget (middle
    widths first), HAWQ's least-perturbing assignment within it that is not uniform."""
    from edgeml import mixed

    n_params = mixed.weight_counts(model)
    pert = mixed.quant_perturbation(model, bits)
    total = sum(n_params[k] for k in traces)
    order = sorted(bits, key=lambda b: abs(b - float(np.median(bits))))
    out: list[dict[str, int]] = []
    for b in order:
        if len(out) >= n:
            break
        front = mixed.allocate_bits(
            traces, n_params, bits, budget_bits=total * b, perturbation=pert
        )
        for a in front:  # widest first, least perturbation first: the best within budget
            if len(set(a.values())) > 1 and a not in out:
                out.append(dict(a))
                break
    return out


def sensitivity(cfg: CodesignConfig, epochs: dict[str, int]) -> dict[str, Any]:
    """Per-layer Hessian traces of the float model and the HAWQ bit assignments (cached)."""
    from edgeml import mixed
    from edgeml.models import zoo
    from edgeml.sweep import train_float_task

    path = cfg.out_dir / "sensitivity.json"
    key = {"design": cfg.design, "seed": cfg.seed, "epochs": epochs, "bits": list(cfg.bits),
           "mixed": cfg.mixed}  # fmt: skip
    if cfg.resume and path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return cached
        except (OSError, json.JSONDecodeError):
            log.warning("codesign: %s is unreadable; recomputing the sensitivity", path)
    spec = zoo.get(cfg.design)
    t0 = time.perf_counter()
    fres = train_float_task(cfg.design, cfg.seed, epochs)
    model = _float_model(spec, fres["state"])
    data = spec.load_data(cfg.seed)
    traces = mixed.layer_hessian_traces(spec, data, model, seed=cfg.seed)
    assignments = hawq_assignments(model, traces, cfg.bits, cfg.mixed)
    out = {
        "key": key,
        "float_metric": float(fres["metrics"][spec.primary]),
        "traces": {k: float(v) for k, v in traces.items()},
        "assignments": assignments,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


def search(cfg: CodesignConfig, sens: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Train and measure every candidate on the sweep engine; ``(points, mode)``."""
    from edgeml.sweep import SweepConfig, run_points

    hook = functools.partial(evaluate_point, min_widths=True, n_samples=cfg.fault_samples)
    common = {
        "design": cfg.design, "sparsities": cfg.sparsities, "seeds": (cfg.seed,),
        "epochs_scale": cfg.epochs_scale, "workers": cfg.workers, "scheduler": cfg.scheduler,
        "out": cfg.out_dir, "resume": cfg.resume, "progress": cfg.progress, "point_hook": hook,
        "points_subdir": "points", "label": f"codesign {cfg.design}",
    }  # fmt: skip
    # uniform widths, then the mixed assignments (they name every layer: one base width)
    points, _stats, mode = run_points(SweepConfig(bits=cfg.bits, **common))
    if sens["assignments"]:
        more, _stats, _mode = run_points(
            SweepConfig(bits=(min(cfg.bits),), layer_bits=tuple(sens["assignments"]), **common)
        )
        points += more
    return points, mode


def _design_config(
    cfg: CodesignConfig, bits: int, layer_bits: dict[str, int], sparsity: float, min_widths: bool,
    epochs: dict[str, int],
) -> Any:  # fmt: skip
    from edgeml.config import validate_config

    return validate_config(
        {
            "design": cfg.design,
            "seed": cfg.seed,
            "train": {f"epochs_{k}": v for k, v in epochs.items()},
            "compress": {
                "bit_width": bits,
                "sparsity": sparsity,
                "layers": {k: {"bit_width": v} for k, v in layer_bits.items()},
                "min_widths": min_widths,
            },
        }
    )


def build_design(folder: Path, flow_cfg: Any, *, resume: bool, progress: bool) -> dict[str, Any]:
    """Run the whole flow for one design (unless an identical finished run is there) and
    return its before/after figures: bits, LUT, FF, latency, metric, mean and top-1 % SDC."""
    from edgeml.fault_injection.campaign import CampaignResult
    from edgeml.flow import STAGES, Context, run_flow
    from edgeml.manifest import RunFolder, read_json

    run = RunFolder(folder)
    done = folder / "faults" / "summary.json"
    saved = folder / "config.json"
    same = saved.is_file() and json.loads(saved.read_text()) == flow_cfg.model_dump(mode="json")
    if not (resume and same and done.is_file() and (folder / "rtl.json").is_file()):
        ctx = Context(run=run, cfg=flow_cfg, progress=progress)
        run_flow(ctx, tuple(s for s in STAGES if s != "implement"))
    comp = read_json(folder / "compress.json")
    rtl = read_json(folder / "rtl.json")
    verify = read_json(folder / "verify.json")
    res = CampaignResult.load(folder / "faults" / "campaign.npz")
    figs = fault_figures(res)
    res_rtl = rtl.get("resources") or {}
    levels = verify.get("levels", [])
    mism = sum(int(lv.get("mismatching_vectors") or 0) for lv in levels)
    return {
        "folder": str(folder),
        "bit_width": flow_cfg.compress.bit_width,
        "layer_bits": {k: v.bit_width for k, v in flow_cfg.compress.layers.items()},
        "sparsity": comp.get("sparsity"),
        "min_widths": flow_cfg.compress.min_widths,
        "metric_name": comp.get("metric"),
        "metric": comp.get("pruned"),
        "lut": res_rtl.get("lut"),
        "ff": res_rtl.get("ff"),
        "lut_estimate": read_json(folder / "rtl" / "edgeml_rtl.json").get("cost_luts"),
        "latency_cycles": rtl.get("latency_cycles"),
        "verify_passed": bool(verify.get("passed")),
        "verify_levels": [lv["level"] for lv in levels if lv.get("status") == "PASS"],
        "verify_mismatches": mism,
        **figs,
    }


# ------------------------------------------------------------------ outputs

#: Rows of the before/after table: (label, key, format).
TABLE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("precision", "precision", "s"),
    ("sparsity", "sparsity", "pct"),
    ("stored parameter bits", "stored_bits", "int"),
    ("of which bias bits", "bias_bits", "int"),
    ("LUT (yosys synth_xilinx)", "lut", "int"),
    ("FF (yosys)", "ff", "int"),
    ("LUT (da4ml estimate)", "lut_estimate", "int"),
    ("latency (cycles)", "latency_cycles", "int"),
    ("metric", "metric", "pct"),
    ("mean SDC (weight/bias bits)", "mean_sdc", "pct3"),
    ("SDC of the top-1 % bits", "top1pct_sdc", "pct"),
    ("biases' share of SDC", "bias_sdc_share", "pct"),
    ("weight/bias words under TMR (hls4ml)", "tmr_words", "int"),
    ("mean SDC with those words protected", "mean_sdc_protected", "pct3"),
    ("RTL register bits protected (TMR/SECDED)", "rtl_protected", "s"),
    ("RTL register SDC, unprotected -> protected", "rtl_sdc", "s"),
    ("verify (levels, mismatching vectors)", "verify", "s"),
)


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "int":
        return f"{round(float(value)):,}"
    if kind == "pct":
        return f"{100 * float(value):.2f} %"
    if kind == "pct3":
        return f"{100 * float(value):.3f} %"
    return str(value)


def precision_label(bits: int, layer_bits: dict[str, int], min_widths: bool) -> str:
    per = ", ".join(f"{k} {v}b" for k, v in layer_bits.items())
    text = per or f"{bits}b"
    return text + (", minimal bias widths" if min_widths else ", 16-bit biases")


def table_rows(table: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The before/after table as rows of strings (first column: the quantity)."""
    cols = list(table)
    rows = []
    for label, key, kind in TABLE_ROWS:
        row = [label]
        for c in cols:
            d = table[c]
            if key == "precision":
                row.append(precision_label(d["bit_width"], d["layer_bits"], d["min_widths"]))
            elif key == "verify":
                row.append(f"{len(d['verify_levels'])} levels, {d['verify_mismatches']}")
            elif key == "metric":
                row.append(f"{_fmt(d['metric'], 'pct')} {d.get('metric_name') or ''}".strip())
            else:
                row.append(_fmt(d.get(key), kind))
        rows.append(row)
    return rows


def markdown_table(table: dict[str, dict[str, Any]]) -> str:
    head = ["", *table]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(table)]
    return "\n".join(lines)


def plot_pareto(result: CodesignResult, higher_is_better: bool) -> Any:
    """Metric vs LUT estimate (colour: mean SDC) and metric vs mean SDC, front and choice marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result.candidates
    metric = np.array([x["metric"] for x in c]) * 100
    lut = np.array([x["lut"] for x in c])
    sdc = np.array([x["mean_sdc"] for x in c]) * 100
    front = np.array([x["pareto"] for x in c])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, xs, xlabel in ((axes[0], lut, "LUTs (da4ml estimate)"), (axes[1], sdc, "mean SDC (%)")):
        sc = ax.scatter(xs, metric, c=sdc if ax is axes[0] else lut, cmap="viridis", s=28, zorder=2)
        ax.scatter(xs[front], metric[front], facecolors="none", edgecolors="k", s=80, zorder=3,
                   label="Pareto front")  # fmt: skip
        i = result.chosen
        ax.scatter([xs[i]], [metric[i]], marker="*", s=260, c="crimson", zorder=4, label="chosen")
        thr = result.target.get("threshold")
        if thr is not None:
            ax.axhline(100 * thr, color="crimson", ls="--", lw=1, label="target")
        if ax is axes[0] and result.config.get("budget_lut"):
            ax.axvline(result.config["budget_lut"], color="grey", ls=":", lw=1, label="LUT budget")
        if ax is axes[1] and result.config.get("budget_sdc") is not None:
            ax.axvline(100 * result.config["budget_sdc"], color="grey", ls=":", lw=1,
                       label="SDC budget")  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{result.target['metric']} (%)")
        ax.grid(alpha=0.3)
        fig.colorbar(sc, ax=ax, label="mean SDC (%)" if ax is axes[0] else "LUTs")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"co-design search: {len(c)} candidates")
    fig.tight_layout()
    return fig


def write_outputs(result: CodesignResult, higher_is_better: bool, out: Path) -> dict[str, str]:
    """``codesign.json``, ``codesign.md`` and ``pareto.png`` in ``out``."""
    files = {}
    fig = plot_pareto(result, higher_is_better)
    png = out / "pareto.png"
    fig.savefig(png, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    files["pareto"] = str(png)
    md = out / CODESIGN_MD
    lines = [f"# co-design of {result.config['design']}", ""]
    if result.table:
        lines += [markdown_table(result.table), ""]
    lines += [summary_text(result), ""]
    md.write_text("\n".join(lines))
    files["markdown"] = str(md)
    files["json"] = str(out / CODESIGN_JSON)
    result.files = files
    (out / CODESIGN_JSON).write_text(json.dumps(result.to_json(), indent=1, default=_json_default))
    return files


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def summary_text(result: CodesignResult) -> str:
    c = result.candidates[result.chosen]
    t = result.target
    ph = result.param_harden or {}
    if result.status == "meets all":
        verdict = "meets the target and both budgets"
    elif result.status == "harden" and ph:
        verdict = (
            "meets the target and the LUT budget; no candidate meets the SDC budget unprotected, "
            f"so TMR on {ph['protected_words']} of its {ph['words_total']} weight/bias words "
            f"brings the mean SDC from {100 * ph['mean_sdc_before']:.3f} % to "
            f"{100 * ph['predicted_mean_sdc_after']:.3f} %"
            + ("" if result.meets_all else " (NOT within budget)")
        )
    elif result.status == "harden":
        verdict = "meets the target and the LUT budget but not the SDC budget (not built)"
    else:
        verdict = "is the closest point: NO candidate meets the target and the LUT budget"
    return (
        f"{len(result.candidates)} candidates searched "
        f"({sum(x['pareto'] for x in result.candidates)} on the Pareto front); target "
        f"{t['text']} (bound {100 * t['threshold']:.2f} %), LUT budget "
        f"{_fmt(result.config.get('budget_lut'), 'int') if result.config.get('budget_lut') else 'none'}, SDC budget "
        f"{_fmt(result.config.get('budget_sdc'), 'pct3')}. Chosen: {c['label']} "
        f"({c['metric'] * 100:.2f} %, ~{c['lut']:,.0f} LUTs, mean SDC {100 * c['mean_sdc']:.3f} %), "
        f"which {verdict}. (Search figures: da4ml LUT estimate, SDC on "
        f"{result.config.get('fault_samples')} test samples; the built designs' figures in the "
        "table: yosys, and the flow's fault campaign.)"
    )


# ------------------------------------------------------------------ the command


def codesign(cfg: CodesignConfig) -> CodesignResult:
    """Run (or resume) the whole co-design: sensitivity, search, choice, firmware, hardening."""
    from edgeml.models import zoo
    from edgeml.sweep import SweepConfig

    t0 = time.perf_counter()
    spec = zoo.get(cfg.design)
    target = parse_target(cfg.target, spec.primary, spec.higher_is_better)
    budget_sdc = (
        parse_fraction(cfg.budget_sdc, "--budget-sdc") if cfg.budget_sdc is not None else None
    )
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    epochs = SweepConfig(design=cfg.design, epochs_scale=cfg.epochs_scale, out=out).epochs()

    log.info("codesign %s: per-layer sensitivity (HAWQ) of the float model", cfg.design)
    sens = sensitivity(cfg, epochs)
    log.info("codesign: traces %s; mixed assignments %s", sens["traces"], sens["assignments"])
    points, mode = search(cfg, sens)
    cands = candidates_from_points(points)
    chosen, status = choose(cands, target, cfg.budget_lut, budget_sdc, spec.higher_is_better)
    c = cands[chosen]
    log.info("codesign: chose %s (%s)", c.label, status)
    cand_json = [{**asdict(x), "label": x.label} for x in cands]
    result = CodesignResult(
        config={
            "design": cfg.design,
            "budget_lut": cfg.budget_lut,
            "budget_sdc": budget_sdc,
            "bits": list(cfg.bits),
            "sparsities": list(cfg.sparsities),
            "mixed": cfg.mixed,
            "seed": cfg.seed,
            "epochs": epochs,
            "fault_samples": cfg.fault_samples,
            "harden": cfg.harden,
            "mode": mode,
        },
        target={
            **asdict(target),
            "threshold": target.threshold(c.float_metric),
            "float_metric": c.float_metric,
        },
        sensitivity=sens,
        candidates=cand_json,
        chosen=chosen,
        meets_all=status == "meets all",
        status=status,
    )
    if cfg.build:
        base_bits = 6 if spec.bit_widths[0] <= 6 <= spec.bit_widths[1] else spec.bit_widths[1]
        before = _design_config(cfg, base_bits, {}, spec.sparsity, False, epochs)
        after = _design_config(cfg, c.bits, c.layer_bits, c.sparsity, True, epochs)
        log.info("codesign: building the design's default (before) in %s", out / "baseline")
        result.table["before (design default)"] = build_design(
            out / "baseline", before, resume=cfg.resume, progress=cfg.progress
        )
        log.info("codesign: building the chosen design in %s", out / "chosen")
        result.table["after (co-designed)"] = build_design(
            out / "chosen", after, resume=cfg.resume, progress=cfg.progress
        )
        if status == "harden" and budget_sdc is not None:
            log.info("codesign: protecting weight/bias words until mean SDC <= %s", budget_sdc)
            ph = harden_parameters(out / "chosen", budget_sdc)
            result.param_harden = ph
            result.meets_all = bool(ph["meets_budget"]) and ph.get("csim_mismatches", 0) == 0
            after = result.table["after (co-designed)"]
            after["tmr_words"] = ph["protected_words"]
            after["mean_sdc_protected"] = ph["predicted_mean_sdc_after"]
        if cfg.harden > 0:
            result.harden = _harden(out / "chosen", cfg)
            h = result.harden or {}
            if h.get("protected"):
                p, u = h["protected"][0], h["unprotected"]
                result.table["after (co-designed)"].update(
                    rtl_protected=f"{p['protected_bits']} of {h['register_bits']}",
                    rtl_sdc=f"{100 * u['mean_sdc']:.2f} % -> {100 * p['measured_mean_sdc']:.2f} %",
                )
    result.seconds = round(time.perf_counter() - t0, 1)
    write_outputs(result, spec.higher_is_better, out)
    if cfg.build:
        _chosen_report(out, result)
    return result


def harden_parameters(
    folder: Path, budget_sdc: float, *, n_vectors: int = 10_000
) -> dict[str, Any]:
    """TMR on the chosen design's most SDC-prone weight/bias words until the mean SDC meets
    ``budget_sdc``, written into a copy of its hls4ml project (``harden/hls_tmr``).

    Words are ranked by the summed SDC of their bit flips in the run's exhaustive campaign
    (:func:`edgeml.hls_harden.rank_parameter_words`). A single upset in a TMR word is
    outvoted, so the mean SDC after protection is the unprotected words' SDC over all bits
    (exact for single-bit upsets). The hardened C-sim is checked against the golden model,
    fault-free and with the stored primary copy of the top protected words corrupted.
    """
    from edgeml.fault_injection.campaign import CampaignResult
    from edgeml.flow import recorded_hls_project
    from edgeml.golden import GoldenModel
    from edgeml.hls_harden import (
        flip_txt_word,
        harden_hls_project,
        rank_parameter_words,
        reload_csim,
    )
    from edgeml.manifest import read_json

    g = GoldenModel.from_onnx(folder / "model.qonnx.onnx")
    project = recorded_hls_project(folder)
    if project is None:
        raise ConfigError(f"{folder} has no hls4ml project to harden")
    name = read_json(folder / "hls.json")["name"]
    camp = folder / "faults" / "campaign.npz"
    res = CampaignResult.load(camp)
    n_bits = len(res)
    total = float(np.sum(res.sdc_rate))
    ranked = rank_parameter_words(g, camp, project, name)
    protect: dict[str, list[int]] = {}
    left, words = total, 0
    for arr, idx, score in ranked:
        if left / n_bits <= budget_sdc or score <= 0:
            break
        protect.setdefault(arr, []).append(idx)
        left -= score
        words += 1
    out = {
        "budget_sdc": budget_sdc,
        "words_total": len(ranked),
        "mean_sdc_before": total / n_bits,
        "predicted_mean_sdc_after": max(left, 0.0) / n_bits,
        "protected_words": words,
        "meets_budget": left / n_bits <= budget_sdc + 1e-15,
    }
    if not words:
        return out
    design, summ = harden_hls_project(project, folder / "harden" / "hls_tmr", protect, name=name)
    t = g.input_type
    x = np.random.default_rng(0).integers(t.qmin, t.qmax + 1, (n_vectors, *g.input_shape))
    ref = g.predict(x)
    bad = int(np.any(design.predict_int(x).reshape(len(x), -1) != ref.reshape(len(x), -1), 1).sum())
    # corrupt the stored primary copy of the top protected words (their sign bit): outvoted
    flipped = 0
    for arr, idx, _ in ranked[: min(5, words)]:  # negated (or 0 -> 1): a wrong stored word
        old = float(flip_txt_word(design.project_dir, arr, idx, 0.0))
        flip_txt_word(design.project_dir, arr, idx, -old if old else 1.0)
        flipped += 1
    corrupted = reload_csim(design, "codesign-flip")
    bad_flipped = int(
        np.any(corrupted.predict_int(x).reshape(len(x), -1) != ref.reshape(len(x), -1), 1).sum()
    )
    out.update(
        project=str(design.project_dir),
        extra_stored_bits=summ["extra_bits"],
        protected_bits=summ["extra_bits"] // 2,
        csim_vectors=n_vectors,
        csim_mismatches=bad,
        corrupted_words=flipped,
        csim_mismatches_with_corrupted_words=bad_flipped,
    )
    return out


def _harden(folder: Path, cfg: CodesignConfig) -> dict[str, Any] | None:
    """Protect the chosen design's most sensitive RTL registers; a failure is recorded."""
    from edgeml.fault_injection.harden import harden_run

    try:
        return harden_run(folder, budget=cfg.harden, progress=cfg.progress)
    except Exception as exc:  # the search and the designs stand; say why hardening did not
        log.warning("codesign: hardening failed: %s: %s", type(exc).__name__, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}


def _chosen_report(out: Path, result: CodesignResult) -> None:
    """Copy the result into the chosen run folder and rebuild its report (Pareto section)."""
    import shutil

    from edgeml.config import validate_config
    from edgeml.flow import Context, stage_report
    from edgeml.manifest import RunFolder, read_json

    folder = out / "chosen"
    dst = folder / "codesign"
    dst.mkdir(parents=True, exist_ok=True)
    for name in (CODESIGN_JSON, CODESIGN_MD, "pareto.png"):
        shutil.copyfile(out / name, dst / name)
    cfg = validate_config(read_json(folder / "config.json"))
    stage_report(Context(run=RunFolder(folder), cfg=cfg, progress=False))


def add_parser(subparsers: Any) -> None:
    """``edgeml codesign`` and its options."""
    p = subparsers.add_parser(
        "codesign",
        help="search per-layer precision and sparsity for a metric target and LUT/SDC budgets",
        description=__doc__.split("\n\n")[0].replace("``", "")
        + " "
        + (
            "Trains and measures every candidate (on Dask; resumable), picks the cheapest "
            "point on the Pareto front of metric vs LUTs vs mean SDC that meets the target and "
            "budgets, builds it and the design's default through the whole flow, hardens the "
            "chosen RTL and writes codesign.json/.md, pareto.png and a Pareto section in the "
            "chosen design's report.html."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--design", default="jet", help="built-in design")
    p.add_argument("--target", default="accuracy>=float-1pp",
                   help="metric bound: METRIC>=float-Xpp, METRIC>=VALUE, METRIC<=float+X")  # fmt: skip
    p.add_argument("--budget-lut", type=float, default=None, help="LUT budget (da4ml estimate)")
    p.add_argument("--budget-sdc", default=None,
                   help="mean SDC budget of the weight/bias bits, e.g. 0.5%% or 0.005")  # fmt: skip
    p.add_argument("--bits", default=",".join(map(str, DEFAULT_BITS)),
                   help="uniform bit widths tried (and the per-layer choices), e.g. 4,5,6,8")  # fmt: skip
    p.add_argument("--sparsities", default=",".join(map(str, DEFAULT_SPARSITIES)),
                   help="pruning sparsities tried")  # fmt: skip
    p.add_argument("--mixed", type=int, default=DEFAULT_MIXED,
                   help="mixed per-layer assignments from the HAWQ allocation")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs-scale", type=float, default=1.0,
                   help="fraction of the design's default epochs (e.g. 0.2 for a quick search)")  # fmt: skip
    p.add_argument("--fault-samples", type=int, default=DEFAULT_FAULT_SAMPLES,
                   help="test samples each candidate's fault campaign runs on")  # fmt: skip
    p.add_argument("--harden", type=float, default=DEFAULT_HARDEN,
                   help="fraction of the chosen RTL's register bits to protect (0: none)")  # fmt: skip
    p.add_argument("--workers", type=int, default=None,
                   help="local Dask worker processes (default: the cores available)")  # fmt: skip
    p.add_argument("--scheduler", default=None, help="an existing Dask scheduler address")
    p.add_argument("--out", type=Path, default=None, help="output folder (runs/codesign/<design>)")
    p.add_argument("--no-resume", action="store_true", help="recompute cached points and runs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--search-only", action="store_true",
                   help="search and choose; do not build the chosen and default designs")  # fmt: skip
    p.set_defaults(func=run_command)


def _parse_list(text: str, kind: type, flag: str) -> tuple[Any, ...]:
    try:
        return tuple(kind(t) for t in str(text).replace(" ", "").split(",") if t)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be a comma-separated list of numbers") from None


def run_command(args: argparse.Namespace) -> int:
    from edgeml.sweep import default_workers, quiet_dask

    cfg = CodesignConfig(
        design=args.design,
        target=args.target,
        budget_lut=args.budget_lut,
        budget_sdc=args.budget_sdc,
        bits=_parse_list(args.bits, int, "--bits"),
        sparsities=_parse_list(args.sparsities, float, "--sparsities"),
        mixed=args.mixed,
        seed=args.seed,
        epochs_scale=args.epochs_scale,
        fault_samples=args.fault_samples,
        harden=args.harden,
        workers=args.workers or default_workers(),
        scheduler=args.scheduler,
        out=args.out,
        resume=not args.no_resume,
        progress=not args.quiet,
        build=not args.search_only,
    )
    quiet_dask()
    result = codesign(cfg)
    print(summary_text(result))
    if result.table:
        print(markdown_table(result.table))
    if result.harden and "error" not in result.harden:
        from edgeml.fault_injection.harden import harden_summary

        print("hardening of the chosen RTL:\n" + harden_summary(result.harden))
    print(f"wrote {cfg.out_dir / CODESIGN_JSON}, {cfg.out_dir / CODESIGN_MD}")
    return 0


# ------------------------------------------------------------------ report section


def section_html(doc: dict[str, Any], png: Path | None = None) -> str:
    """The report's co-design section: choice, before/after table, Pareto plot, candidates."""
    import base64

    from edgeml.report import escape_html as e
    from edgeml.report import html_table as table

    res = CodesignResult(**{k: v for k, v in doc.items() if k != "format"})
    parts = ["<h2>Co-design (edgeml codesign)</h2>", f"<p>{e(summary_text(res))}</p>"]
    if res.table:
        parts.append(table(["", *res.table], table_rows(res.table)))
    if png is not None and Path(png).is_file():
        b64 = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        parts.append(f'<img class="plot" alt="Pareto front" src="data:image/png;base64,{b64}">')
    sens = res.sensitivity or {}
    if sens.get("traces"):
        rows = [[k, f"{v:.4g}"] for k, v in sens["traces"].items()]
        parts.append("<h3>Per-layer sensitivity (HAWQ: Hessian trace / parameters)</h3>")
        parts.append(table(["layer", "mean Hessian trace"], rows))
    front = [c for c in res.candidates if c["pareto"]]
    front.sort(key=lambda c: c["lut"])
    rows = [
        [
            c["label"] + (" (chosen)" if c is res.candidates[res.chosen] else ""),
            f"{100 * c['metric']:.2f} %",
            f"{c['lut']:,.0f}",
            f"{100 * c['mean_sdc']:.3f} %",
            f"{100 * c['top1pct_sdc']:.2f} %",
            f"{c['stored_bits']:,}",
            "yes" if c.get("fits") else "no",
            "yes" if c["feasible"] else "no",
        ]
        for c in front
    ]
    parts.append(f"<h3>Pareto front ({len(front)} of {len(res.candidates)} candidates)</h3>")
    parts.append(
        table(
            [
                "candidate",
                res.target["metric"],
                "LUT (da4ml)",
                "mean SDC",
                "top-1 % SDC",
                "stored bits",
                "target & LUTs",
                "meets all",
            ],
            rows,
        )
    )
    ph = res.param_harden
    if ph and ph.get("protected_words"):
        parts.append("<h3>Weight/bias words protected for the SDC budget (hls4ml project)</h3>")
        parts.append(
            f"<p>TMR (three copies and a bitwise majority voter) on the {ph['protected_words']} "
            f"words of {ph['words_total']} that carry the most SDC in the exhaustive campaign "
            f"({ph['protected_bits']:,} stored bits, +{ph['extra_stored_bits']:,} replica bits): "
            f"mean SDC {100 * ph['mean_sdc_before']:.3f} % -> "
            f"{100 * ph['predicted_mean_sdc_after']:.3f} % per stored bit (budget "
            f"{100 * ph['budget_sdc']:.3f} %). The hardened project "
            f"(<code>{e(ph['project'])}</code>) C-sim equals the golden model on "
            f"{ph['csim_vectors']:,} vectors with {ph['csim_mismatches']} mismatches, and "
            f"{ph['csim_mismatches_with_corrupted_words']} with the stored primary copy of its "
            f"top {ph['corrupted_words']} protected words corrupted.</p>"
        )
    h = res.harden
    if h:
        parts.append("<h3>Selective hardening of the RTL registers</h3>")
        if "error" in h:
            parts.append(f"<p>Hardening failed: {e(h['error'])}</p>")
        else:
            from edgeml.fault_injection.harden import harden_rows

            u = h["unprotected"]
            parts.append(
                f"<p>{h['register_bits']:,} register bits of the layer pipeline, one SEU per "
                f"vector on {h['vectors']:,} vectors: mean SDC {100 * u['mean_sdc']:.3f} % per "
                f"bit, {100 * u['top1pct_bits_sdc']:.1f} % for the top 1 % of bits. Protected "
                "words correct any single upset (TMR voter or SECDED corrector); the campaign is "
                "re-run on the protected build over every flip-flop, replicas and check bits "
                "included.</p>"
            )
            parts.append(table(*harden_rows(h)))
    return "\n".join(parts)
