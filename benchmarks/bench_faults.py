"""Fault-campaign engines side by side: the fast engine against the naive one, in one run.

    python benchmarks/bench_faults.py                      # jet-tagger stand-in, 1,000 samples
    python benchmarks/bench_faults.py --design mlp         # digits MLP (runs/bench-mlp, trained if missing)
    python benchmarks/bench_faults.py --design mlp --run-dir runs/mlp

Design ``standin`` (default) is the 6-bit 16-64-32-32-5 jet-tagger stand-in
(:mod:`edgeml.fault_injection.engine_standin`: 16-bit inputs, 6-bit weights
with 75 % pruned to 0, 16-bit biases, 6-bit ReLU activations) on 1,000 seeded
random input codes. Design ``mlp`` is the digits MLP of a run folder (its
``model.qonnx.onnx``) on the digits test set.

Measured, in this order, in one process:

1. the exhaustive single-bit weight+bias campaign with the fast engine
   (``run_campaign``), cold: the engine cache is cleared, so every run includes
   the fault-free trace and the engine's set-up; best of ``--repeat`` runs;
2. the naive engine (``run_campaign_naive``: per fault, copy the model,
   corrupt one code, run everything) on a seeded random subset of
   ``--naive-faults`` of the same faults, extrapolated per fault to the whole
   campaign (the output says so);
3. the same for the transient activation + accumulator campaign (every bit of
   every stored activation and every accumulator);

and the fast results on each naive subset are checked equal, array for array.
The machine is shared and noisy: compare the ratio measured in one run, not
absolute times across runs (CPU time is printed too). Results go to stdout and
to ``benchmarks/results-faults.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.fault_injection.campaign import (
    CampaignResult,
    clear_engine_cache,
    run_campaign,
    run_campaign_naive,
)
from edgeml.fault_injection.engine_standin import jet_standin
from edgeml.fault_injection.sites import FaultSite, enumerate_sites
from edgeml.golden import GoldenModel


def load_design(args: argparse.Namespace) -> tuple[GoldenModel, np.ndarray, np.ndarray, str]:
    """(golden model, input codes, labels, description) of the chosen design."""
    if args.design == "standin":
        g, x, y = jet_standin(args.seed, args.samples)
        return g, x, y, f"jet-tagger stand-in 16-64-32-32-5, {args.samples} random input codes"
    from edgeml.config import FlowConfig
    from edgeml.flow import Context, stage_compress, stage_export, stage_train
    from edgeml.manifest import RunFolder
    from edgeml.models import digits

    run_dir = args.run_dir or Path("runs") / "bench-mlp"
    run = RunFolder(run_dir)
    if not run.file("model.qonnx.onnx").exists():
        if args.run_dir is not None:
            raise SystemExit(f"{run_dir}/model.qonnx.onnx does not exist")
        ctx = Context(run=run, cfg=FlowConfig(design="mlp"), progress=False)
        for stage in (stage_train, stage_compress, stage_export):
            stage(ctx)
    g = GoldenModel.from_onnx(run.file("model.qonnx.onnx"))
    data = digits.load_digits_split(args.seed)
    x = g.quantize_input(data.x_test, on_overflow="saturate")[: args.samples]
    y = np.asarray(data.y_test, np.int64)[: args.samples]
    return g, x, y, f"digits MLP from {run_dir}, {len(x)} test digits"


def _timed(fn: Any) -> tuple[Any, float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def _same(a: CampaignResult, b: CampaignResult) -> bool:
    return all(
        np.array_equal(getattr(a, k), getattr(b, k), equal_nan=True)
        for k in (
            "layer",
            "param",
            "index",
            "bit",
            "kind",
            "nbits",
            "acc_drop",
            "sdc_rate",
            "max_dev",
        )
    )


def compare(
    name: str,
    g: GoldenModel,
    x: np.ndarray,
    y: np.ndarray,
    sites: list[FaultSite] | None,
    n_sites: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Fast (cold, best of ``repeat``) vs naive (on a random subset) for one campaign."""
    fast_wall, fast_cpu = [], []
    res = None
    for _ in range(args.repeat):
        clear_engine_cache()  # cold: trace and engine set-up are part of every run
        res, w, c = _timed(lambda: run_campaign(g, x, y, sites, progress=False))
        fast_wall.append(w)
        fast_cpu.append(c)
    assert res is not None
    all_sites = res.sites()
    rng = np.random.default_rng(args.seed + 1)
    pick = np.sort(rng.choice(n_sites, size=min(args.naive_faults, n_sites), replace=False))
    subset = [all_sites[i] for i in pick]
    naive, n_wall, n_cpu = _timed(lambda: run_campaign_naive(g, x, y, subset, progress=False))
    fast_sub = run_campaign(g, x, y, subset, progress=False)
    exact = _same(fast_sub, naive)
    best = min(fast_wall)
    naive_per = n_wall / len(subset)
    row = {
        "campaign": name,
        "faults": n_sites,
        "samples": len(x),
        "fast_seconds_best": best,
        "fast_seconds_all": fast_wall,
        "fast_cpu_seconds_all": fast_cpu,
        "fast_faults_per_s": n_sites / best,
        "naive_subset_faults": len(subset),
        "naive_subset_seconds": n_wall,
        "naive_subset_cpu_seconds": n_cpu,
        "naive_faults_per_s": 1.0 / naive_per,
        "naive_extrapolated_seconds": naive_per * n_sites,
        "speedup": naive_per * n_sites / best,
        "speedup_cpu": (n_cpu / len(subset)) * n_sites / min(fast_cpu),
        "exact_on_subset": bool(exact),
        "mean_sdc_rate": float(res.sdc_rate.mean()),
        "baseline_accuracy": float(res.baseline_accuracy),
    }
    print(
        f"\n## {name}: {n_sites:,} faults x {len(x):,} samples\n"
        f"fast  : {best:.3f} s wall (best of {args.repeat}, cold; all: "
        f"{', '.join(f'{v:.3f}' for v in fast_wall)}), {min(fast_cpu):.3f} s CPU, "
        f"{n_sites / best:,.0f} faults/s\n"
        f"naive : {len(subset)} random faults of the same campaign in {n_wall:.2f} s "
        f"({1 / naive_per:,.0f} faults/s); extrapolated per fault to all {n_sites:,}: "
        f"{naive_per * n_sites:,.1f} s\n"
        f"ratio : {row['speedup']:,.0f}x (wall), {row['speedup_cpu']:,.0f}x (CPU); "
        f"fast == naive on the subset, array for array: {exact}"
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--design", default="standin", choices=["standin", "mlp"])
    ap.add_argument("--run-dir", type=Path, default=None, help="run folder of --design mlp")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--naive-faults", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3, help="cold fast runs (best is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-transient", action="store_true", help="skip the act/acc campaign")
    ap.add_argument("--out", type=Path, default=Path("benchmarks") / "results-faults.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    load0 = os.getloadavg()
    g, x, y, desc = load_design(args)
    n_param = sum(op.weight.size + (0 if op.bias is None else op.bias.size) for op in g.param_ops)
    print(f"# Fault engines, {desc}\n{n_param:,} parameters; load average {load0[0]:.1f}")
    rows = []
    n_wb = len(enumerate_sites(g))
    rows.append(compare("exhaustive single-bit weight+bias", g, x, y, None, n_wb, args))
    if not args.no_transient:
        tr = enumerate_sites(g, params=("act", "acc"))
        rows.append(
            compare("exhaustive single-bit act+acc (transient)", g, x, y, tr, len(tr), args)
        )
    doc = {
        "design": args.design,
        "description": desc,
        "parameters": int(n_param),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_start": load0,
            "load_average_end": os.getloadavg(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "note": (
            "naive times are measured on a seeded random subset of each campaign and "
            "extrapolated per fault; fast runs are cold (engine cache cleared) and the best "
            "of --repeat is reported"
        ),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
