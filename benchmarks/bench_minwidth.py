"""Exact minimal bias widths on the jet tagger: bits, hls4ml accumulators and fault SDC before/after.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_minwidth.py [--run runs/jet] \
        [--out /tmp/minwidth] [--samples 1000] [--hls]

Reads ``<run>/model.qonnx.onnx`` (read only), writes the minimised model, its width
report and a results JSON under ``--out``. The golden exhaustive single-bit campaign
over every weight and bias bit (what ``edgeml flow``'s faults stage runs) is scored on
the first ``--samples`` jet test samples, before and after. ``--hls`` also compiles both
hls4ml C-sims (about 30 s) and checks them against the golden models.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import onnx


def campaign(g, x: np.ndarray, y: np.ndarray) -> dict:
    """Exhaustive weight/bias/table campaign (top-1 SDC), as ``flow.stage_faults`` runs it."""
    from edgeml.fault_injection.campaign import run_campaign
    from edgeml.fault_injection.sites import PERMANENT_PARAMS, enumerate_sites

    sites = enumerate_sites(g, PERMANENT_PARAMS)
    res = run_campaign(g, x, y, sites, progress=False, sdc="top1")
    sdc = np.asarray(res.sdc_rate, np.float64)
    is_bias = np.array([s.param == "bias" for s in sites])
    top = max(1, len(sdc) // 100)
    return {
        "sites": len(sites),
        "bias_sites": int(is_bias.sum()),
        "mean_sdc": float(sdc.mean()),
        # SDC summed over bits: with one upset rate per stored bit, the design's SDC rate
        "sdc_sum": float(sdc.sum()),
        "bias_sdc_share": float(sdc[is_bias].sum() / max(sdc.sum(), 1e-300)),
        "bias_sdc_sum": float(sdc[is_bias].sum()),
        "top1pct_mean_sdc": float(np.sort(sdc)[::-1][:top].mean()),
        "max_sdc": float(sdc.max()),
        "baseline_accuracy": float(res.baseline_accuracy),
        "seconds": round(float(res.seconds), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/jet")
    ap.add_argument("--out", default="/tmp/minwidth")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--hls", action="store_true")
    args = ap.parse_args()

    from edgeml.golden import GoldenModel
    from edgeml.minwidth import format_table, minimize_widths
    from edgeml.models import zoo
    from edgeml.verify import verification_vectors

    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((run / "config.json").read_text())
    src = run / "model.qonnx.onnx"
    g0 = GoldenModel.from_onnx(src)
    data = zoo.get(cfg["design"]).load_data(int(cfg["seed"]))  # as flow.eval_samples
    x = g0.quantize_input(data.x_test)[: args.samples]
    y = np.asarray(data.y_test)[: args.samples]

    t0 = time.perf_counter()
    new, rep = minimize_widths(src, calib_x=x, hls_input_type=g0.input_type)
    t_min = time.perf_counter() - t0
    dst = out / "model.minwidth.qonnx.onnx"
    onnx.save(new, str(dst))
    (out / "widths.json").write_text(rep.to_json())
    g1 = GoldenModel.from_onnx(dst)

    xv, _ = verification_vectors(g0, g0.quantize_input(data.x_test), 10_000, seed=1234)
    n_bad = int((g0.predict(xv) != g1.predict(xv)).reshape(len(xv), -1).any(1).sum())
    acc0 = float((g0.predict(x).reshape(len(x), -1).argmax(1) == y).mean())
    acc1 = float((g1.predict(x).reshape(len(x), -1).argmax(1) == y).mean())

    before, after = campaign(g0, x, y), campaign(g1, x, y)
    results = {
        "model": str(src),
        "minimize_seconds": round(t_min, 3),
        "verification_vectors": len(xv),
        "golden_mismatches": n_bad,
        "accuracy": {"before": acc0, "after": acc1},
        "widths": rep.to_dict(),
        "faults_before": before,
        "faults_after": after,
    }
    if args.hls:
        import edgeml.hls as H
        from edgeml.minwidth import hls_accum_settings

        hls = {}
        settings = hls_accum_settings(rep)
        for tag, path, g in (("before", src, g0), ("after", dst, g1)):
            # "after" also gets the interval-minimal accumulators, as the flow passes them
            d = H.convert_hls(
                path,
                out / f"hls_{tag}",
                name=f"jet_{tag}",
                input_type=g.input_type,
                output_type=g.output_type,
                accum_types=settings if tag == "after" else None,
            )
            bad = int((d.predict_int(xv) != g1.predict(xv)).reshape(len(xv), -1).any(1).sum())
            text = (out / f"hls_{tag}" / "firmware" / "defines.h").read_text()
            hls[tag] = {
                "csim_mismatches_vs_minimised_golden": bad,
                "accum_t": re.findall(r"typedef (ap_fixed<\d+,\d+>) (\w+_accum_t);", text),
                "bias_t": re.findall(r"typedef (ap_fixed<\d+,-?\d+)[^>]*> (bias\d+_t);", text),
            }
        results["hls"] = hls
        results["hls_accum_settings"] = settings
    (out / "results.json").write_text(json.dumps(results, indent=2))

    print(format_table(rep))
    print()
    print(f"golden before vs after: {n_bad} mismatching of {len(xv)} verification vectors")
    print(f"accuracy on {len(x)} jet test samples: {acc0:.4f} -> {acc1:.4f}")
    rows = [
        ("stored bits (fault sites)", "sites", "{:d}"),
        ("bias bits", "bias_sites", "{:d}"),
        ("mean SDC per bit", "mean_sdc", "{:.5f}"),
        ("SDC summed over bits", "sdc_sum", "{:.1f}"),
        ("bias share of SDC", "bias_sdc_share", "{:.3f}"),
        ("mean SDC of top-1% bits", "top1pct_mean_sdc", "{:.4f}"),
        ("max SDC of a bit", "max_sdc", "{:.3f}"),
        ("campaign seconds", "seconds", "{}"),
    ]
    print(f"{'':28} {'before':>10} {'after':>10}")
    for label, key, fmt in rows:
        print(f"{label:28} {fmt.format(before[key]):>10} {fmt.format(after[key]):>10}")
    if args.hls:
        for tag, h in results["hls"].items():
            print(
                f"hls4ml {tag}: C-sim mismatches vs golden {h['csim_mismatches_vs_minimised_golden']}"
                f" of {len(xv)}; accum {[a for a, _ in h['accum_t']]}; bias {[b + '>' for b, _ in h['bias_t']]}"
            )
    print(f"written: {dst}, {out / 'widths.json'}, {out / 'results.json'}")


if __name__ == "__main__":
    main()
