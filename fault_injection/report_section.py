"""HTML fragment for the fault-sensitivity analysis (plots as base64 PNG, no external files).

:func:`fault_section_html` takes plain data, the JSON-ready dicts of
:func:`~edgeml.fault_injection.metrics.analyse_campaign`,
:func:`~edgeml.fault_injection.metrics.ber_curve`,
:meth:`~edgeml.fault_injection.samplers.Estimate.to_dict` and
:meth:`~edgeml.fault_injection.samplers.BinFIResult.compare`, so the report
builder and the CLI can call it from stored JSON without re-running anything.
Every string from the data is HTML-escaped (through ``edgeml.report``'s helpers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgeml.errors import ConfigError
from edgeml.report import _fmt, _img, _new_figure, _png_b64, escape_html, html_table

# A fixed colour per ranking, so every plot and report reads the same way.
_COLOURS = {
    "hessian": "#c44e52",
    "gradient": "#4c72b0",
    "taylor": "#55a868",
    "random": "#8c8c8c",
    "oracle": "#222222",
}
_LABELS = {
    "hessian": "Hessian (FKeras)",
    "gradient": "gradient |g|",
    "taylor": "Taylor (g·w)²",
    "random": "random",
    "oracle": "oracle (measured)",
}


def _pct(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    f = float(v)
    return "-" if math.isnan(f) else f"{100.0 * f:.{digits}f} %"


def _num(v: Any, spec: str) -> str:
    """Fixed-format number for plot legends ("-" for None / NaN)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(float(v), spec)


def _interval(d: Mapping[str, Any] | None, digits: int = 2) -> str:
    if not d:
        return "-"
    return f"{_pct(d['value'], digits)} [{_pct(d['lo'], digits)}, {_pct(d['hi'], digits)}]"


# ------------------------------------------------------------------- advice (one truth)


def mean_sdc_rate(analysis: Mapping[str, Any]) -> float:
    """Mean SDC rate (AVF) over every injected fault: the number the AVF table shows."""
    return float(analysis["avf"]["avf"])


def _bit_ranges(bits: Sequence[int]) -> str:
    """``[13, 14, 15, 5]`` -> ``"5, 13-15"``."""
    runs: list[list[int]] = []
    for b in sorted(bits):
        if runs and runs[-1][1] == b - 1:
            runs[-1][1] = b
        else:
            runs.append([b, b])
    return ", ".join(f"{a}" if a == z else f"{a}-{z}" for a, z in runs)


def protection_advice(analysis: Mapping[str, Any], ranking: str = "hessian") -> str:
    """One sentence of protection advice from :func:`analyse_campaign`'s dict.

    Names the layer/parameter with the largest share of the SDC, the bit
    positions (per parameter kind) that together carry at least half of it, and
    what protecting the top ``top_frac`` of bits in ``ranking``'s order removes
    (beside the oracle's best possible). The fault section and the report's
    summary card both print this sentence.
    """
    top_frac = float(analysis.get("top_frac", 0.05))
    bits = f"{100 * top_frac:g} %"
    parts: list[str] = []
    per_layer = analysis.get("avf", {}).get("per_layer") or {}
    shares = {k: v.get("sdc_share") for k, v in per_layer.items() if v.get("sdc_share") is not None}
    if shares:
        worst = max(shares, key=lambda k: float(shares[k]))
        parts.append(f"the largest share of the SDC ({_pct(shares[worst], 1)}) sits in {worst}")
    per_bit = analysis.get("per_bit") or {}
    cells = [
        (p, int(b), float(v["count"]) * float(v["mean_sdc"]))
        for p, d in per_bit.items()
        for b, v in d.items()
    ]
    total = sum(c[2] for c in cells)
    if total > 0:
        cells.sort(key=lambda c: -c[2])
        chosen, acc = [], 0.0
        for c in cells:
            chosen.append(c)
            acc += c[2]
            if acc >= 0.5 * total:
                break
        kinds = dict.fromkeys(c[0] for c in chosen)
        where = " and ".join(
            f"{k} bit{'s' if len([c for c in chosen if c[0] == k]) > 1 else ''} "
            + _bit_ranges([c[1] for c in chosen if c[0] == k])
            for k in kinds
        )
        verb = "carries" if len(chosen) == 1 else "carry"
        parts.append(f"{where} {verb} {_pct(acc / total, 1)} of it")
    rk = (analysis.get("rankings") or {}).get(ranking, {})
    orc = (analysis.get("rankings") or {}).get("oracle", {})
    if rk.get("top_share") is not None:
        best = f" (best possible: {_pct(orc['top_share'], 1)})" if orc.get("top_share") else ""
        parts.append(
            f"protecting (TMR) the top {bits} of bits, as ranked by "
            f"{_LABELS.get(ranking, ranking)}, removes {_pct(rk['top_share'], 1)} of the SDC{best}"
        )
    if not parts:
        return ""
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "."


# ----------------------------------------------------------------------------- plots


def plot_layer_bit_heatmap(heatmap: Mapping[str, Any]) -> str:
    """Mean SDC rate (%) per ``layer/param`` row and bit column; grey = no such bit."""
    import matplotlib as mpl

    rows = list(heatmap["rows"])
    bits = list(heatmap["bits"])
    m = np.array(
        [[np.nan if v is None else float(v) for v in row] for row in heatmap["mean"]], float
    ).reshape(len(rows), len(bits))
    pct = m * 100.0
    fig = _new_figure(max(5.0, 1.6 + 0.5 * len(bits)), max(2.2, 1.0 + 0.42 * len(rows)))
    ax = fig.add_subplot()
    cmap = mpl.colormaps["magma_r"].with_extremes(bad="#dddddd")
    vmax = float(np.nanmax(pct)) if np.isfinite(pct).any() else 1.0
    # sqrt colour scale: the MSB rows would otherwise wash out every other cell
    norm = mpl.colors.PowerNorm(0.5, vmin=0.0, vmax=max(vmax, 1e-9))
    im = ax.imshow(np.ma.masked_invalid(pct), aspect="auto", cmap=cmap, norm=norm)
    ax.set_xticks(range(len(bits)), [str(b) for b in bits])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("bit position (0 = LSB)")
    ax.set_title("Mean SDC rate (%) per layer and bit")
    fig.colorbar(im, ax=ax, label="mean SDC rate (%)")
    if len(rows) * len(bits) <= 600:
        for i in range(len(rows)):
            for j in range(len(bits)):
                v = pct[i, j]
                if np.isnan(v):
                    continue
                dark = v > 0.3 * max(vmax, 1e-9)
                ax.text(j, i, f"{v:.1f}" if v >= 0.05 else "0", ha="center", va="center",
                        fontsize=7, color="white" if dark else "black")  # fmt: skip
    return _png_b64(fig)


def plot_protection_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    rankings: Mapping[str, Mapping[str, Any]],
    top_frac: float | None = None,
) -> str:
    """Residual SDC share against fraction of bits protected, one line per ranking."""
    fig = _new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    for name, c in curves.items():
        info = rankings.get(name, {})
        rho, auc = info.get("spearman"), info.get("auc")
        lab = f"{_LABELS.get(name, name)}: ρ={_num(rho, '+.3f')}, AUC={_num(auc, '.3f')}"
        ax.plot(
            100.0 * np.asarray(c["fraction"], float),
            100.0 * np.asarray(c["residual"], float),
            label=lab,
            color=_COLOURS.get(name),
            lw=2.2 if name == "hessian" else 1.4,
            ls="--" if name in ("oracle", "random") else "-",
        )
    if top_frac:
        ax.axvline(100.0 * top_frac, color="#bbbbbb", lw=1, ls=":")
    ax.set_xlabel("bits protected (%), in ranking order")
    ax.set_ylabel("residual SDC (% of total)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_title("Protection curves (TMR per bit; lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return _png_b64(fig)


def plot_ber_curve(ber: Mapping[str, Any]) -> str:
    """Accuracy against bit-error rate: mean, confidence band of the mean, 5-95 % of trials."""
    b = np.asarray(ber["ber"], float)
    mean = 100.0 * np.asarray(ber["mean"], float)
    fig = _new_figure(6.5, 3.6)
    ax = fig.add_subplot()
    ax.fill_between(b, 100.0 * np.asarray(ber["p05"], float), 100.0 * np.asarray(ber["p95"], float),
                    color="#4c72b0", alpha=0.15, lw=0, label="5-95 % of trials")  # fmt: skip
    lo, hi = np.asarray(ber["lo"], float), np.asarray(ber["hi"], float)
    if np.isfinite(lo).all() and np.isfinite(hi).all():
        conf = 100.0 * float(ber.get("confidence", 0.95))
        ax.fill_between(b, 100.0 * lo, 100.0 * hi, color="#4c72b0", alpha=0.35, lw=0,
                        label=f"{conf:.0f} % CI of the mean")  # fmt: skip
    ax.plot(b, mean, "o-", color="#4c72b0", ms=3, label=f"mean {ber.get('metric', 'accuracy')}")
    if (b > 0).all() and b.size > 1:
        ax.set_xscale("log")
    ax.set_xlabel("bit-error rate (per stored bit)")
    metric = str(ber.get("metric", "accuracy"))
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric[:1].upper()}{metric[1:]} against bit-error rate")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return _png_b64(fig)


# ----------------------------------------------------------------------------- tables


def _rankings_table(rankings: Mapping[str, Mapping[str, Any]], top_frac: float) -> str:
    rows = []
    for name, r in rankings.items():
        tmr, ecc = r.get("tmr", {}), r.get("secded", {})
        rows.append(
            (
                _LABELS.get(name, name),
                _num(r.get("spearman"), "+.3f"),
                _num(r.get("auc"), ".4f"),
                _pct(r.get("top_share"), 1),
                f"{_fmt(tmr.get('extra_bits'))} ({_pct(tmr.get('overhead'), 1)})",
                _pct(ecc.get("sdc_removed"), 1),
                f"{_fmt(ecc.get('extra_bits'))} ({_pct(ecc.get('overhead'), 1)})",
            )
        )
    pct = f"{100 * top_frac:g} %"
    return html_table(
        ["ranking", "Spearman ρ", "protection AUC", f"SDC removed, top {pct} (TMR)",
         "TMR extra bits / FFs", f"SDC removed, SECDED on top-{pct} words",
         "SECDED check bits / FFs"],
        rows,
        [False, True, True, True, True, True, True],
    )  # fmt: skip


def _top_table(top: Sequence[Mapping[str, Any]], n: int) -> str:
    rows = []
    names = list(top[0].get("rank", {})) if top else []
    show = [k for k in names if k in ("hessian", "gradient", "taylor")]
    for i, t in enumerate(top[:n]):
        acc = t.get("acc_drop")
        rank = t.get("rank", {})
        rows.append(
            (
                i + 1,
                t["layer"],
                t["param"],
                t.get("position", t["index"]),
                t["bit"],
                f"{t.get('code')} → {t.get('faulty_code')}",
                _pct(t["sdc_rate"]),
                "-" if acc is None or math.isnan(float(acc)) else f"{100 * float(acc):.2f} pp",
                *[_fmt(int(rank[k]) + 1) for k in show],
            )
        )
    return html_table(
        ["#", "layer", "param", "position", "bit", "code → faulty", "SDC rate", "accuracy drop",
         *[f"{_LABELS.get(k, k)} rank" for k in show]],
        rows,
        [True, False, False, False, True, False, True, True, *[True] * len(show)],
    )  # fmt: skip


def _avf_table(avf: Mapping[str, Any]) -> str:
    rows = [
        (name, _fmt(d["bits"]), _pct(d["avf"], 3), _pct(d["critical_fraction"], 1),
         _pct(d.get("sdc_share"), 1))
        for name, d in avf.get("per_layer", {}).items()
    ]  # fmt: skip
    rows.append(
        ("all", _fmt(avf["bits"]), _pct(avf["avf"], 3), _pct(avf["critical_fraction"], 1), "100 %")
    )
    return html_table(
        ["layer / parameter", "bits", "AVF (mean SDC rate)", "critical bits", "share of SDC"],
        rows,
        [False, True, True, True, True],
    )


def _estimate_html(est: Mapping[str, Any]) -> str:
    rows = [
        ("design", est.get("design", "simple random")),
        ("faults injected / population", f"{_fmt(est['n'])} / {_fmt(est['population'])}"),
        ("critical faults (SDC > 0)", _interval(est["critical"])),
        ("mean SDC rate (AVF)", _interval(est["mean_sdc"], 3)),
    ]
    if est.get("critical_exact"):
        rows.insert(3, ("critical faults, exact hypergeometric", _interval(est["critical_exact"])))
    conf = 100 * float(est.get("confidence", 0.95))
    out = f"<h3>Statistical estimate ({conf:g} % confidence)</h3>" + html_table(
        ["quantity", "estimate [interval]"], rows
    )
    per = est.get("per_layer") or {}
    if per:
        out += html_table(
            ["layer", "sampled / population", "critical faults", "mean SDC rate"],
            [
                (
                    k,
                    f"{_fmt(v['n'])} / {_fmt(v['population'])}",
                    _interval(v["critical"]),
                    _interval(v["mean_sdc"], 3),
                )
                for k, v in per.items()
            ],
        )
    return out


def _binfi_html(b: Mapping[str, Any]) -> str:
    rows = [
        ("sites", _fmt(b.get("sites"))),
        ("injections", f"{_fmt(b.get('injections'))} ({_pct(b.get('injection_fraction'), 1)})"),
        ("fewer injections than exhaustive", f"{float(b.get('speedup', math.nan)):.2f}x"),
    ]
    if "recall" in b:
        rows += [
            ("recall of critical bits", _pct(b["recall"], 2)),
            ("precision", _pct(b["precision"], 2)),
            ("critical bits missed", _fmt(b.get("missed"))),
            ("SDC share of missed bits", _pct(b.get("missed_sdc_share"), 3)),
        ]
    return "<h3>BinFI bit search</h3>" + html_table(["quantity", "value"], rows, [False, True])


# ----------------------------------------------------------------------------- section


def fault_section_html(
    analysis: Mapping[str, Any] | None = None,
    *,
    ber: Mapping[str, Any] | None = None,
    estimate: Mapping[str, Any] | Any | None = None,
    binfi: Mapping[str, Any] | Any | None = None,
    top_n: int = 20,
    title: str = "Fault sensitivity and protection",
) -> str:
    """The fault-analysis section of the report as one self-contained HTML fragment.

    ``analysis``: :func:`~edgeml.fault_injection.metrics.analyse_campaign`'s dict
    (heatmap, AVF, rankings, protection curves, top bits). ``ber``: a
    :func:`~edgeml.fault_injection.metrics.ber_curve` dict. ``estimate``:
    an ``Estimate`` or its ``to_dict()``. ``binfi``: ``BinFIResult.compare(truth)``
    (recall/precision against an exhaustive campaign) or a ``BinFIResult`` (its
    ``summary()``). Any of them may be omitted.
    """
    if estimate is not None and hasattr(estimate, "to_dict"):  # a samplers.Estimate
        estimate = estimate.to_dict()
    if binfi is not None and hasattr(binfi, "summary"):  # a BinFIResult without ground truth
        binfi = binfi.summary()
    if analysis is None and ber is None and estimate is None and binfi is None:
        raise ConfigError("fault_section_html needs at least one of analysis, ber, estimate, binfi")
    if not isinstance(top_n, int) or top_n < 0:
        raise ConfigError(f"top_n must be an integer >= 0, got {top_n!r}")
    parts = [f"<h2>{escape_html(title)}</h2>"]
    if analysis is not None:
        a = analysis
        top_frac = float(a.get("top_frac", 0.05))
        hs = a["rankings"].get("hessian", {})
        parts.append(
            "<p>Single-bit flips of every stored bit (weights, biases, lookup tables) "
            f"({_fmt(a['n_sites'])} faults x {_fmt(a['n_samples'])} samples). "
            "AVF = mean SDC rate: the chance that one upset in a random bit corrupts a "
            f"random inference's top-1 class; here <b>{_pct(mean_sdc_rate(a), 3)}</b>.</p>"
            f"<p><b>Protection advice.</b> {escape_html(protection_advice(a))} The Hessian ranking's "
            f"Spearman ρ with the measured SDC rate is {_fmt(hs.get('spearman'), 3)}.</p>"
        )
        parts.append(_avf_table(a["avf"]))
        parts.append(_img(plot_layer_bit_heatmap(a["heatmap"]), "SDC heatmap per layer and bit"))
        parts.append("<h3>Rankings and protection</h3>")
        parts.append(
            _img(
                plot_protection_curves(a["curves"], a["rankings"], top_frac),
                "protection curves per ranking",
            )
        )
        parts.append(_rankings_table(a["rankings"], top_frac))
        h = a.get("hessian")
        if h:
            ev = ", ".join(f"{v:.3g}" for v in h.get("eigenvalues", []))
            parts.append(
                f'<p class="muted">Hessian of the cross-entropy loss over {_fmt(h["parameters"])} '
                f"parameters: top-{h['k']} eigenvalues ({escape_html(h['method'])}) {escape_html(ev)}; "
                f"Hutchinson trace {float(h['trace']):.4g} ± {float(h['trace_se']):.2g}; "
                f"bit rule <code>{escape_html(a.get('rule', ''))}</code>. TMR: 2 extra copies "
                "and a voter per protected bit; SECDED: check bits per protected word, "
                "which masks every single-bit fault of that word. Extra bits equal extra "
                "flip-flops when parameters are held in registers.</p>"
            )
        if top_n and a.get("top"):
            parts.append(f"<h3>Top {min(top_n, len(a['top']))} most sensitive bits</h3>")
            parts.append(_top_table(a["top"], top_n))
    if ber is not None:
        parts.append("<h3>Accuracy against bit-error rate</h3>")
        parts.append(_img(plot_ber_curve(ber), "accuracy against bit-error rate"))
        parts.append(
            html_table(
                ["BER", "trials", "mean accuracy", "CI of the mean", "5-95 % of trials"],
                [
                    (
                        f"{b:.3g}",
                        _fmt(n),
                        _pct(m),
                        f"[{_pct(lo)}, {_pct(hi)}]",
                        f"[{_pct(p5)}, {_pct(p95)}]",
                    )
                    for b, n, m, lo, hi, p5, p95 in zip(
                        ber["ber"],
                        ber["n"],
                        ber["mean"],
                        ber["lo"],
                        ber["hi"],
                        ber["p05"],
                        ber["p95"],
                        strict=True,
                    )
                ],
                [True, True, True, True, True],
            )
        )
    if estimate is not None:
        parts.append(_estimate_html(estimate))
    if binfi is not None:
        parts.append(_binfi_html(binfi))
    return "\n".join(parts)
