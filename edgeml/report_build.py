"""Assemble :class:`edgeml.report.ReportData` from a run folder's artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeml.errors import EdgemlError
from edgeml.manifest import read_json
from edgeml.report import (
    STATUSES,
    AccuracySummary,
    BitExactRow,
    FaultCampaign,
    LevelCheck,
    ReportData,
    SummaryCard,
    ThroughputRow,
    analysis_section_html,
    write_report,
)
from edgeml.resources import ResourceEstimate

if TYPE_CHECKING:
    from edgeml.flow import Context


def _maybe(path: Path) -> Any:
    return read_json(path) if path.exists() else None


def pipeline_order() -> tuple[str, ...]:
    """The stages in pipeline order (``edgeml.flow.PIPELINE``: the flow's, plus ``analyze``)."""
    from edgeml.flow import PIPELINE

    return PIPELINE


def order_stages(names: Any) -> list[str]:
    """``names`` in pipeline order; names the pipeline does not know keep their order, last."""
    order = {s: i for i, s in enumerate(pipeline_order())}
    names = list(names)
    return sorted(names, key=lambda n: (order.get(n, len(order)), names.index(n)))


#: what each verify level's ``seconds`` covers (edgeml.verify.run_level times the predict call)
_LEVEL_MEASURES = {
    "hls4ml C-sim": "compiled C++ emulation, prediction call only (excl. compilation)",
    "RTL (Verilator)": "Verilator batch harness run (excl. the Verilator build)",
    "trained Brevitas model": "PyTorch forward pass only",
}


def throughput_rows(verify: dict[str, Any] | None, rtl: dict[str, Any]) -> list[ThroughputRow]:
    """One :class:`ThroughputRow` per engine from ``verify.json`` and ``rtl.json``.

    The cocotb rate is ``rtl.json``'s own ``cocotb.vectors_per_s`` (checked outputs
    per second of the simulated streaming loop); the bench's whole wall time, which
    adds the simulator start-up, is a note, not a second rate.
    """
    rows: list[ThroughputRow] = []
    if verify:
        n = int(verify["vectors"])
        rows.append(
            ThroughputRow(
                "golden model (numpy)",
                n,
                n / max(float(verify["golden_vectors_per_s"]), 1e-9),
                measures="batch inference only",
            )
        )
        for lv in verify["levels"]:
            if lv["status"] != "SKIPPED" and lv.get("seconds"):
                rows.append(
                    ThroughputRow(
                        lv["level"],
                        lv["vectors"],
                        lv["seconds"],
                        measures=_LEVEL_MEASURES.get(
                            lv["level"], "prediction call only (excl. build)"
                        ),
                    )
                )
    cocotb = rtl.get("cocotb")
    if cocotb:
        n, rate = int(cocotb["vectors"]), float(cocotb.get("vectors_per_s") or 0.0)
        bench = "cycle-level protocol bench (reset, valid handshake, random bubbles)"
        if rate > 0:
            rows.append(
                ThroughputRow(
                    "cocotb bench (Verilator)",
                    n,
                    n / rate,
                    f"{bench}; the whole bench run took {float(cocotb['seconds']):.3f} s "
                    "with simulator and cocotb start-up",
                    measures="simulated streaming loop only (excl. build and start-up)",
                )
            )
        else:
            rows.append(
                ThroughputRow(
                    "cocotb bench (Verilator)",
                    n,
                    float(cocotb["seconds"]),
                    bench,
                    measures="whole bench run incl. simulator start-up (excl. build)",
                )
            )
    return rows


def summary_card(
    run_dir: Path,
    rtl: dict[str, Any],
    fault_analysis: dict[str, Any] | None,
    faults_summary: dict[str, Any],
    analysis: dict[str, Any] | None,
    analysis_error: str | None = None,
) -> SummaryCard:
    """The card's own facts (latency, cocotb check, fault advice, analysis) from the JSON files.

    Accuracy, bit-exactness and resources come from the sections' data, so the
    card repeats their numbers instead of recomputing them.
    """
    from edgeml.fault_injection.report_section import mean_sdc_rate, protection_advice

    card = SummaryCard(run_folder=str(run_dir))
    lat = rtl.get("latency_cycles")
    if lat is not None and not rtl.get("skipped"):
        card.latency_cycles = int(lat)
        if rtl.get("latency_ns") is not None:
            card.latency_ns = float(rtl["latency_ns"])
        elif rtl.get("clock_period_ns") is not None:
            card.latency_ns = float(rtl["clock_period_ns"]) * int(lat)
    cocotb = rtl.get("cocotb")
    if cocotb:
        card.extra_checks.append(
            LevelCheck("cocotb bench", int(cocotb["vectors"]), int(cocotb["mismatches"]))
        )
    if fault_analysis:
        card.mean_sdc = mean_sdc_rate(fault_analysis)
        card.advice = protection_advice(fault_analysis) or None
    elif faults_summary.get("mean_sdc_rate") is not None:
        card.mean_sdc = float(faults_summary["mean_sdc_rate"])
    if analysis is not None:
        summary = analysis.get("summary")
        sentence = summary.get("sentence") if isinstance(summary, dict) else None
        card.analysis = str(sentence or "see “Curvature, landscapes and representations” below")
    elif analysis_error:
        card.analysis = f"analysis/analysis.json not shown: {analysis_error}"
    return card


def _low_rank_fields(low: dict[str, Any] | None, percent: bool) -> dict[str, Any]:
    """``AccuracySummary`` fields from ``compress.json``'s ``low_rank`` block (if any)."""
    if not low or not low.get("ranks"):
        return {}

    def val(v: float) -> str:
        return f"{100 * v:.2f} %" if percent else f"{v:.4g}"

    ranks = ", ".join(f"{k} {v}" for k, v in low["ranks"].items())
    worst = max(
        (
            lay["rel_frobenius"] / lay["optimal_rel_frobenius"]
            for lay in low.get("layers", [])
            if lay.get("factorised") and lay.get("optimal_rel_frobenius")
        ),
        default=None,
    )
    svd = "" if worst is None else f"; randomized SVD error at most {worst:.3f}x the optimal"
    note = (
        f"Low-rank factorisation before QAT (compress.low_rank = {low.get('setting')}): ranks "
        f"{ranks}; {low['weights_before']:,} -> {low['weights_after']:,} on-chip weights{svd}; "
        f"float metric {val(low['float_factorised'])} just after factorising, "
        f"{val(low['float_finetuned'])} after {low.get('finetune_epochs', 0)} fine-tuning epochs."
    )
    return {"lowrank_acc": low["float_finetuned"], "lowrank_note": note}


def build_report(ctx: Context) -> Path:
    """Read every artifact present in the run folder and write report.html."""
    run = ctx.run
    manifest = run.read_manifest()
    stages = manifest.get("stages", {})
    train = _maybe(run.file("train.json")) or {}
    comp = _maybe(run.file("compress.json")) or {}
    verify = _maybe(run.file("verify.json"))
    rtl = _maybe(run.file("rtl.json")) or {}
    faults_summary = _maybe(run.file("faults") / "summary.json") or {}

    accuracy = None
    if train or comp:
        metric = comp.get("metric") or train.get("metric") or "accuracy"
        accuracy = AccuracySummary(
            float_acc=train.get("float", train.get("float_accuracy")),
            qat_acc=comp.get("qat", comp.get("qat_accuracy")),
            pruned_acc=comp.get("pruned", comp.get("pruned_accuracy")),
            bit_width=(
                "/".join(f"{k} {v}b" for k, v in comp["layer_bits"].items())
                if comp.get("layer_bits")
                else comp.get("bit_width")
            ),
            sparsity=comp.get("sparsity"),
            metric="top-1 accuracy" if metric == "accuracy" else metric,
            percent=metric == "accuracy",
            **_low_rank_fields(comp.get("low_rank"), percent=metric == "accuracy"),
        )

    rows: list[BitExactRow] = []
    throughput = throughput_rows(verify, rtl)
    # stages of this flow run that failed after verify (edgeml.flow.run_flow keeps going)
    notes: list[str] = [
        f"FAILED: the {stage} stage of this run failed ({msg}); any {stage} results shown "
        "below are from an earlier run."
        for stage, msg in ctx.results.get("stage_errors", {}).items()
    ]
    if verify:
        n = verify["vectors"]
        src = ", ".join(f"{k}: {v}" for k, v in verify.get("sources", {}).items())
        notes.append(f"Verification vectors: {n} ({src}).")
        for lv in verify["levels"]:
            rows.append(
                BitExactRow(
                    comparison=f"golden vs {lv['level']}",
                    vectors=lv["vectors"],
                    mismatching_vectors=lv["mismatching_vectors"],
                    mismatching_elements=lv["mismatching_elements"],
                    max_abs_diff_lsb=lv["max_abs_diff_lsb"],
                    first_divergent_layer=lv.get("first_divergent_layer") or "-",
                    status=lv["status"] if lv["status"] in STATUSES else "FAIL",
                    reason=lv.get("note", ""),
                    unit=(lv.get("extra") or {}).get("unit", "vectors"),
                )
            )
        for a in verify.get("approximations", []):
            notes.append(f"Fixed-point approximation: {a}")
        for d in verify.get("drift", []):
            notes.append(
                f"CHANGED since the {d['stage']} stage wrote it: {d['file']} (verify checked the "
                "file as it is on disk; see the table above for whether it still matches)."
            )
    if rtl.get("skipped"):
        notes.append(f"RTL not built: {rtl['skipped']}")
    elif rtl:
        notes.append(
            f"RTL top '{rtl.get('top')}', latency {rtl.get('latency_cycles')} cycles "
            f"(da4ml, {'pipelined' if ctx.cfg.rtl.pipelined else 'combinational'})."
        )
    hls = _maybe(run.file("hls.json")) or {}
    if hls.get("route") == "golden-ir":
        notes.append(
            "hls4ml project built from the golden integer IR (hls4ml's own QONNX front end "
            f"was not used: {hls.get('route_reason')})."
        )
    ingest = _maybe(run.file("ingest.json")) or {}
    for change in ingest.get("changes", []):
        notes.append(f"Ingestion of {Path(str(ingest.get('source'))).name}: {change}")

    fdir = run.file("faults")
    fault_analysis = _maybe(fdir / "analysis.json")
    campaigns: list[FaultCampaign] = []
    camp_path = run.file("faults") / "campaign.npz"
    if camp_path.exists():
        from edgeml.fault_injection.campaign import CampaignResult

        res = CampaignResult.load(camp_path)
        # weights (a few bits) and biases (16 bits) of one layer get separate heatmap rows
        rows_lp = np.array(
            [f"{a}/{b}" for a, b in zip(res.layer_labels(), res.param_labels(), strict=True)]
        )
        campaigns.append(
            FaultCampaign(
                layer=rows_lp,
                param=res.param_labels(),
                index=np.asarray(res.index),
                bit=np.asarray(res.bit),
                acc_drop=np.asarray(res.acc_drop),
                sdc_rate=np.asarray(res.sdc_rate),
                baseline_accuracy=float(res.baseline_accuracy),
                n_samples=int(res.n_samples),
                title="Exhaustive single-bit flips of every stored bit: weights, biases, lookup tables (golden model)",
                layer_order=[f"{n}/{p}" for n in res.layer_names for p in ("weight", "bias")],
                # the fault section below draws the richer heatmap and top-k table
                detail=fault_analysis is None,
            )
        )
        throughput.append(
            ThroughputRow(
                "fault campaign (golden model)",
                len(res.sdc_rate),
                float(res.seconds),
                f"faults, not vectors: {res.n_samples} samples per fault",
                measures="injection and inference loop (excl. the sensitivity analysis)",
            )
        )
        if faults_summary.get("sample_source"):
            notes.append(f"Fault campaign samples: {faults_summary['sample_source']}.")

    sections: list[str] = []
    if fault_analysis is not None:
        from edgeml.fault_injection.report_section import fault_section_html

        sections.append(
            fault_section_html(
                fault_analysis,
                ber=_maybe(fdir / "ber.json"),
                estimate=_maybe(fdir / "estimate.json"),
                binfi=_maybe(fdir / "binfi.json"),
            )
        )

    widths = _maybe(run.file("minwidth.json"))
    if widths is not None:
        from edgeml.minwidth import section_html as widths_section

        sections.append(widths_section(widths))

    cdir = run.file("codesign")
    codesign_doc = _maybe(cdir / "codesign.json")
    if codesign_doc is not None:
        from edgeml.codesign import section_html

        sections.append(section_html(codesign_doc, cdir / "pareto.png"))

    resources = None
    r = rtl.get("resources")
    if isinstance(r, dict) and "lut" in r:
        resources = ResourceEstimate(
            lut=r["lut"],
            ff=r["ff"],
            dsp=r["dsp"],
            bram=r["bram"],
            tool=r.get("tool", "yosys"),
            seconds=r.get("seconds", 0.0),
        )
    elif isinstance(r, dict) and "error" in r:
        notes.append(f"Resource estimate failed: {r['error']}")

    warnings: list[str] = []
    analysis_html = ""
    adir = run.file("analysis")
    analysis, analysis_error = None, None
    if (adir / "analysis.json").exists():
        try:
            analysis = read_json(adir / "analysis.json")
            analysis_html = analysis_section_html(analysis, adir)
        except EdgemlError as exc:  # a broken analysis file must not cost the whole report
            warnings.append(f"analysis section not shown: {exc}")
            analysis, analysis_error = None, "unreadable (see the warning above)"

    versions = {}
    timestamps = {}
    for name in order_stages(stages):
        st = stages[name]
        versions.update(st.get("tool_versions", {}))
        timestamps[name] = f"{st.get('started', '?')} ({st.get('seconds', 0):.1f} s)"
    golden_txt = run.file("golden.txt")
    if golden_txt.exists():
        notes.append("Golden integer model:\n" + golden_txt.read_text().strip())

    data = ReportData(
        design=ctx.name,
        config=ctx.cfg.model_dump(),
        timestamps=timestamps,
        tool_versions=versions,
        accuracy=accuracy,
        bit_exact=rows,
        fault_campaigns=campaigns,
        resources=resources,
        throughput=throughput,
        notes=notes,
        sections=sections,
        warnings=warnings,
        summary=summary_card(
            run.path, rtl, fault_analysis, faults_summary, analysis, analysis_error
        ),
        analysis_html=analysis_html,
        implementation=_maybe(run.file("implement") / "implement.json"),
    )
    return write_report(run.file("report.html"), data)
