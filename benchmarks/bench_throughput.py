"""Side-by-side throughput of every level, measured in one run on one machine.

    python benchmarks/bench_throughput.py [--design mlp|cnn] [--vectors 10000]

Measures, for one design (trained into runs/bench-<design>/ if that run
folder does not exist yet):

* golden integer model (numpy) vectors/s;
* hls4ml C-sim (compiled C++ emulation) vectors/s;
* Verilator batch harness vectors/s against the cocotb bench's vectors/s;
* the exhaustive single-bit campaign's faults/s against a naive full
  re-evaluation (copy, flip, run the whole model) on a sample of the same faults.

The machine is shared and noisy, so compare the ratios in one run, not
absolute numbers across runs. Results go to stdout as a Markdown table and to
benchmarks/results-<design>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from edgeml.config import FlowConfig
from edgeml.flow import Context, stage_compress, stage_export, stage_train
from edgeml.manifest import RunFolder


def _rate(n: int, fn, repeat: int = 3) -> tuple[float, float]:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best, best


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--design", default="mlp", choices=["mlp", "cnn"])
    ap.add_argument("--vectors", type=int, default=10_000)
    ap.add_argument("--cocotb-vectors", type=int, default=500)
    ap.add_argument(
        "--naive-faults", type=int, default=400, help="faults timed for the naive engine"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    run = RunFolder(Path("runs") / f"bench-{args.design}")
    ctx = Context(
        run=run,
        cfg=FlowConfig(design=args.design),
        hls_root=Path("hls_projects") / "bench",
        progress=False,
    )
    if not run.file("model.qonnx.onnx").exists():
        for stage in (stage_train, stage_compress, stage_export):
            stage(ctx)
    g = ctx.golden()
    rng = np.random.default_rng(0)
    q = g.input_quant
    x = rng.integers(q.lo, q.hi + 1, size=(args.vectors, *g.input_shape), dtype=np.int64)
    ref = g.predict(x)
    rows: list[dict] = []

    r, s = _rate(len(x), lambda: g.predict(x))
    rows.append(
        {"engine": "golden model (numpy int64)", "vectors": len(x), "seconds": s, "per_s": r}
    )

    from edgeml.hls import convert_hls

    hls = convert_hls(
        run.file("model.qonnx.onnx"),
        ctx.hls_dir,
        name=args.design,
        input_type=g.input_type,
        output_type=g.output_type,
    )
    assert np.array_equal(hls.predict_int(x), ref), "C-sim disagrees with golden"
    r, s = _rate(len(x), lambda: hls.predict_int(x), repeat=1)
    rows.append({"engine": "hls4ml C-sim (g++)", "vectors": len(x), "seconds": s, "per_s": r})

    from edgeml.rtl import generate_rtl
    from edgeml.rtl_sim.runner import run_cocotb

    rtl = generate_rtl(g, run.file("rtl"), args.design, pipelined=True)
    t0 = time.perf_counter()
    rtl.build()
    build_s = time.perf_counter() - t0
    assert np.array_equal(rtl.predict_int(x), ref), "RTL disagrees with golden"
    r, s = _rate(len(x), lambda: rtl.predict_int(x))
    rows.append(
        {
            "engine": "Verilator batch harness",
            "vectors": len(x),
            "seconds": s,
            "per_s": r,
            "note": f"build {build_s:.0f} s (0 if cached)",
        }
    )
    xc = x[: args.cocotb_vectors]
    res = run_cocotb(rtl, xc, ref[: len(xc)], run.file("rtl") / "cocotb")
    assert res.n_mismatches == 0
    rows.append(
        {
            "engine": "cocotb bench (Verilator)",
            "vectors": res.n_vectors,
            # one rate, one time: both of the simulated streaming loop only
            "seconds": res.n_vectors / res.vectors_per_s if res.vectors_per_s else res.seconds,
            "per_s": res.vectors_per_s,
            "note": f"whole bench run {res.seconds:.1f} s (simulator + cocotb start-up)",
        }
    )

    from edgeml.fault_injection.campaign import run_param_campaign, run_param_campaign_naive
    from edgeml.fault_injection.sites import enumerate_param_sites
    from edgeml.models import digits

    data = digits.load_digits_split(0)
    xs = g.quantize_input(data.x_test)
    ys = data.y_test
    sites = enumerate_param_sites(g)
    t0 = time.perf_counter()
    run_param_campaign(g, xs, ys, progress=False)
    fast_s = time.perf_counter() - t0
    sample = [
        sites[i]
        for i in np.random.default_rng(1).choice(
            len(sites), min(args.naive_faults, len(sites)), replace=False
        )
    ]
    t0 = time.perf_counter()
    run_param_campaign_naive(g, xs, ys, sample, progress=False)
    naive_s = time.perf_counter() - t0
    rows.append(
        {
            "engine": "fault campaign, incremental+batched",
            "vectors": len(sites),
            "seconds": fast_s,
            "per_s": len(sites) / fast_s,
            "note": f"exhaustive, {len(xs)} samples/fault",
        }
    )
    rows.append(
        {
            "engine": "fault campaign, naive full re-run",
            "vectors": len(sample),
            "seconds": naive_s,
            "per_s": len(sample) / naive_s,
            "note": f"{len(sample)}-fault sample, {len(xs)} samples/fault",
        }
    )

    print(f"\n### Throughput, design `{args.design}` ({time.strftime('%Y-%m-%d')}, one run)\n")
    print("| engine | items | seconds | items/s | note |\n|---|---:|---:|---:|---|")
    for row in rows:
        print(
            f"| {row['engine']} | {row['vectors']} | {row['seconds']:.3f} | {row['per_s']:,.0f} | {row.get('note', '')} |"
        )
    ratio_rtl = rows[2]["per_s"] / rows[3]["per_s"]
    ratio_faults = rows[4]["per_s"] / rows[5]["per_s"]
    print(
        f"\nVerilator harness / cocotb: {ratio_rtl:,.0f}x; incremental / naive campaign: {ratio_faults:,.1f}x"
    )
    out = args.out / f"results-{args.design}.json"
    out.write_text(
        json.dumps(
            {
                "design": args.design,
                "rows": rows,
                "verilator_over_cocotb": ratio_rtl,
                "campaign_speedup": ratio_faults,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
