"""Assemble :class:`edgeml.report.ReportData` from a run folder's artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeml.manifest import read_json
from edgeml.report import (
    STATUSES,
    AccuracySummary,
    BitExactRow,
    FaultCampaign,
    ReportData,
    ThroughputRow,
    write_report,
)
from edgeml.resources import ResourceEstimate

if TYPE_CHECKING:
    from edgeml.flow import Context


def _maybe(path: Path) -> Any:
    return read_json(path) if path.exists() else None


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
            bit_width=comp.get("bit_width"),
            sparsity=comp.get("sparsity"),
            metric="top-1 accuracy" if metric == "accuracy" else metric,
            percent=metric == "accuracy",
        )

    rows: list[BitExactRow] = []
    throughput: list[ThroughputRow] = []
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
        throughput.append(
            ThroughputRow("golden model (numpy)", n, n / max(verify["golden_vectors_per_s"], 1e-9))
        )
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
                )
            )
            if lv["status"] != "SKIPPED" and lv.get("seconds"):
                throughput.append(ThroughputRow(lv["level"], lv["vectors"], lv["seconds"]))
        for a in verify.get("approximations", []):
            notes.append(f"Fixed-point approximation: {a}")
        for d in verify.get("drift", []):
            notes.append(
                f"CHANGED since the {d['stage']} stage wrote it: {d['file']} (verify checked the "
                "file as it is on disk; see the table above for whether it still matches)."
            )
    cocotb = rtl.get("cocotb")
    if cocotb:
        throughput.append(
            ThroughputRow(
                "cocotb bench (Verilator)",
                cocotb["vectors"],
                cocotb["seconds"],
                "cycle-level protocol bench incl. reset and valid handshake",
            )
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
            )
        )
        throughput.append(
            ThroughputRow(
                "fault campaign (faults)",
                len(res.sdc_rate),
                float(res.seconds),
                f"{res.n_samples} samples per fault",
            )
        )
        if faults_summary.get("sample_source"):
            notes.append(f"Fault campaign samples: {faults_summary['sample_source']}.")

    sections: list[str] = []
    fdir = run.file("faults")
    if (fdir / "analysis.json").exists():
        from edgeml.fault_injection.report_section import fault_section_html

        sections.append(
            fault_section_html(
                read_json(fdir / "analysis.json"),
                ber=_maybe(fdir / "ber.json"),
                estimate=_maybe(fdir / "estimate.json"),
                binfi=_maybe(fdir / "binfi.json"),
            )
        )

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

    versions = {}
    timestamps = {}
    for name, st in stages.items():
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
    )
    return write_report(run.file("report.html"), data)
