"""Time a 2-D loss landscape on the jet tagger: float, Brevitas QAT and the exact integer model.

    python benchmarks/bench_landscape.py [--points 51] [--samples 10500,4096] [--epochs 5]
                                        [--bits 6] [--chunks 0,8] [--threads 1]

Trains the jet tagger's float model (``--epochs``) and its QAT twin, exports the
QAT model to QONNX and compiles the golden integer model, then evaluates a
``points x points`` grid over [-1, 1]^2 along two seeded filter-normalised random
directions, over ``--samples`` test jets at every grid point (the whole set in
one batch, ``torch.func.functional_call``). The float model is timed one grid
point at a time and with ``vmap`` over chunks of grid points (``--chunks``). The
quantized slice runs the golden model's float64 mirror at integer-grid codes.
Prints a table and writes ``benchmarks/results-landscape.json`` (timings plus
each landscape's flatness numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results-landscape.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=51, help="grid points per axis")
    ap.add_argument(
        "--samples",
        default="10500,4096",
        help="test jets per grid point (comma list: one set of rows each)",
    )
    ap.add_argument("--epochs", type=int, default=5, help="float training epochs")
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--bits", type=int, default=6)
    ap.add_argument("--chunks", default="0,8", help="vmap chunk sizes to time (0 = loop)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from edgeml.export import export_qonnx
    from edgeml.fault_injection.hessian import FloatMirror
    from edgeml.golden import GoldenModel
    from edgeml.models import zoo
    from edgeml.models.analysis import landscape as ls

    spec = zoo.get("jet")
    data = spec.load_data(0)
    t0 = time.perf_counter()
    fm = zoo.train_float(spec, data, epochs=args.epochs, seed=0)
    qm = zoo.train_qat(spec, data, fm, args.bits, args.qat_epochs, 0)
    t_train = time.perf_counter() - t0
    torch.set_num_threads(args.threads)  # training pins one thread
    grid = np.linspace(-1.0, 1.0, args.points)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        qm.cpu()
        g = GoldenModel.from_onnx(export_qonnx(qm, (1, *spec.input_shape), Path(tmp) / "q.onnx"))
    mirror = FloatMirror(g)
    d1, d2 = ls.random_direction(fm, seed=0), ls.random_direction(fm, seed=1)
    q1, q2 = ls.random_direction(qm, seed=0), ls.random_direction(qm, seed=1)
    g1 = ls.quantized_direction(mirror, seed=0)
    g2 = ls.quantized_direction(mirror, seed=1)

    def run(label: str, n: int, fn: Any) -> Any:
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        fl = ls.flatness(out)
        rows.append(
            {
                "landscape": label,
                "samples": n,
                "seconds": round(dt, 2),
                "ms_per_point": round(1e3 * dt / grid.size**2, 3),
                "center_loss": fl["center_loss"],
                "center_accuracy": fl.get("center_metric"),
                "max_increase_r0.25": fl["max_increase_r0.25"],
                "flat_area_abs": fl["flat_area_abs"],
                "max_loss": fl["max_loss"],
            }
        )
        print(f"  {label}, {n} samples: {dt:.1f} s", flush=True)
        return out

    for n in [min(int(v), len(data.x_test)) for v in args.samples.split(",") if v.strip()]:
        x, y = data.x_test[:n], data.y_test[:n]
        for c in [int(v) for v in args.chunks.split(",") if v.strip()]:
            name = "float" if c == 0 else f"float (vmap chunk {c})"
            run(
                name,
                n,
                lambda c=c, x=x, y=y: ls.slice_2d(
                    fm, x, y, spec.loss, d1, d2, grid, grid, metric=ls.accuracy, vmap_chunk=c
                ),
            )
        run(
            f"QAT {args.bits}-bit (Brevitas)",
            n,
            lambda x=x, y=y: ls.slice_2d(
                qm, x, y, spec.loss, q1, q2, grid, grid, metric=ls.accuracy
            ),
        )
        xc = g.quantize_input(x, on_overflow="saturate")
        run(
            f"quantized {args.bits}-bit (golden mirror)",
            n,
            lambda xc=xc, y=y: ls.quantized_slice_2d(mirror, xc, y, g1, g2, grid, grid),
        )
    result = {
        "design": "jet",
        "grid": [args.points, args.points],
        "samples": args.samples,
        "params": int(sum(p.numel() for p in fm.parameters())),
        "threads": args.threads,
        "load_average_1min_at_end": os.getloadavg()[0],
        "train_seconds": round(t_train, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "rows": rows,
    }
    print(f"\n{args.points}x{args.points} landscape, jet tagger, one thread per run")
    print(
        f"{'landscape':38s} {'N':>6s} {'s':>7s} {'ms/pt':>7s} {'L(0)':>7s} {'acc(0)':>7s} {'flat':>6s}"
    )
    for r in rows:
        acc = r["center_accuracy"]
        print(
            f"{r['landscape']:38s} {r['samples']:6d} {r['seconds']:7.1f} {r['ms_per_point']:7.2f} "
            f"{r['center_loss']:7.4f} {acc if acc is None else f'{acc:.4f}':>7} "
            f"{r['flat_area_abs']:6.3f}"
        )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
