"""HGQ2 (learned per-weight precision) beside edgeml's uniform 6-bit jet design.

Trains the jet tagger (16-64-32-32-5) with HGQ2 at two resource-penalty strengths
``beta``, takes each through edgeml's Keras front end, golden model, da4ml Verilog,
yosys and the exhaustive single-bit weight/bias campaign (1,000 test jets), and
writes the comparison table beside edgeml's ``runs/jet`` figures.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/bench_hgq.py [--epochs N]
    .venv/bin/python benchmarks/bench_hgq.py --retable   # re-render the saved rows
    .venv/bin/python benchmarks/bench_hgq.py --verify-rtl   # Verilator == golden, saved rows

Outputs: ``/tmp/hgq/beta_<b>/`` (model, QONNX, Verilog, hgq_eval.json),
``/tmp/hgq/table.md`` and ``benchmarks/results-hgq.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

from edgeml.hgq_compare import (
    compare,
    edgeml_jet_row,
    evaluate_hgq,
    rtl_matches_golden,
    train_hgq_jet,
)
from edgeml.models import zoo

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--betas", type=float, nargs="+", default=[1e-5, 1e-4])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/hgq")
    ap.add_argument("--run", default=str(ROOT / "runs" / "jet"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results-hgq.json"))
    ap.add_argument(
        "--retable",
        action="store_true",
        help="only re-render the table from the rows already in --results (no training)",
    )
    ap.add_argument(
        "--verify-rtl",
        action="store_true",
        help="only build the saved rows' Verilog with Verilator and compare it with golden",
    )
    args = ap.parse_args()
    if args.verify_rtl:
        saved = json.loads(Path(args.results).read_text())
        data = zoo.get("jet").load_data(args.seed)
        for row in saved["rows"]:
            if "qonnx" in row:  # an evaluate_hgq row: its folder holds rtl/ and the golden
                row["rtl_exact"] = rtl_matches_golden(Path(row["qonnx"]).parent, data)
                print(row["name"], row["rtl_exact"], flush=True)
        Path(args.results).write_text(json.dumps(saved, indent=2, default=str) + "\n")
        return
    if args.retable:
        saved = json.loads(Path(args.results).read_text())
        saved["table"] = compare(saved["rows"])
        Path(args.results).write_text(json.dumps(saved, indent=2, default=str) + "\n")
        Path(args.out, "table.md").write_text(saved["table"] + "\n")
        print(saved["table"])
        return

    t0 = time.time()
    data = zoo.get("jet").load_data(args.seed)
    rows = []
    for beta in args.betas:
        model = train_hgq_jet(data, epochs=args.epochs, beta=beta, seed=args.seed)
        print(f"beta={beta:g}: trained in {model.edgeml_history['seconds']} s", flush=True)
        res = evaluate_hgq(
            model, data, Path(args.out) / f"beta_{beta:g}", name="hgq_jet", verify_rtl=True
        )
        res["name"] = "HGQ2 per-weight"
        print(
            json.dumps(
                {
                    k: res.get(k)
                    for k in (
                        "accuracy",
                        "lut",
                        "ff",
                        "stored_bits",
                        "effective_bits",
                        "mean_sdc_rate",
                        "exact",
                        "ebops",
                    )
                }
            ),
            flush=True,
        )
        rows.append(res)
    rows.append(edgeml_jet_row(args.run))
    table = compare(rows)
    print(table)
    Path(args.out, "table.md").write_text(table + "\n")
    out = {
        "command": "OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/bench_hgq.py "
        f"--epochs {args.epochs} --betas {' '.join(f'{b:g}' for b in args.betas)}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "seconds": round(time.time() - t0, 1),
        "table": table,
        "rows": rows,
    }
    Path(args.results).write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
