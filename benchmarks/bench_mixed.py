"""Per-layer mixed precision on the jet tagger: HAWQ-V2 traces, allocations and QAT accuracy.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_mixed.py [--run runs/jet] \
        [--out /tmp/mixed] [--seeds 0,1,2] [--qat-epochs 30] [--probes 64] [--samples 4000]

Reads ``<run>/float.pt`` (read only: the trained float jet tagger) and the jet data
of the run's seed. Measures:

1. the per-layer Hutchinson traces ``tr(H_l)/n_l`` (fc1..fc4) of the float model
   (HAWQ-V2) and, for comparison, of the run's 6-bit QAT model (``<run>/qat.pt``);
2. the HAWQ allocation (:func:`edgeml.mixed.allocate_bits`, widths 3..8, measured
   ``||Q_b(W)-W||^2``): its best assignment at the total weight bits of uniform 4, 5
   and 6 bits (``--budgets``), and as a control the same allocation with the
   sensitivity order inverted (traces replaced by their reciprocals);
3. QAT (the design's epochs, no pruning) of each assignment and of uniform 4/5/6 bits,
   over ``--seeds`` (QAT seeds; one float model), test accuracy;
4. bit-exactness of one mixed model: golden model (exported QONNX) == Brevitas on the
   10,500 test jets, and the per-layer widths read back from the golden model.

Writes ``<out>/bench_mixed.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def _total_bits(assign: dict[str, int], n: dict[str, int]) -> int:
    return sum(n[k] * b for k, b in assign.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/jet"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/mixed"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--qat-epochs", type=int, default=None, help="default: the design's (30)")
    ap.add_argument("--probes", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--budgets", default="4,5,6", help="uniform widths whose bits are budgets")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)

    from edgeml import mixed
    from edgeml.export import export_qonnx
    from edgeml.golden import Dense, GoldenModel, Requant
    from edgeml.models import training, zoo

    args.out.mkdir(parents=True, exist_ok=True)
    float_model, _, spec = zoo.load_checkpoint(args.run / "float.pt")
    run_cfg = json.loads((args.run / "config.json").read_text())
    data_seed = int(run_cfg.get("seed", 0))
    data = spec.load_data(data_seed)
    y_test = spec.targets("test", data)
    epochs = args.qat_epochs or spec.epochs["qat"]
    seeds = [int(s) for s in args.seeds.split(",")]
    result: dict = {"run": str(args.run), "data_seed": data_seed, "qat_epochs": epochs}
    result["float_accuracy"] = zoo.evaluate(spec, float_model, data.x_test, y_test)["accuracy"]

    # 1. traces
    t0 = time.perf_counter()
    kw = {"n_probes": args.probes, "n_samples": args.samples, "seed": 0}
    traces = mixed.layer_hessian_traces(spec, data, float_model, **kw)
    t_float = time.perf_counter() - t0
    kw_rep = {**kw, "seed": 1}
    traces_rep = mixed.layer_hessian_traces(spec, data, float_model, **kw_rep)
    qat6, _, _ = zoo.load_checkpoint(args.run / "qat.pt")
    t0 = time.perf_counter()
    traces_qat = mixed.layer_hessian_traces(spec, data, qat6, **kw)
    t_qat = time.perf_counter() - t0
    n = mixed.weight_counts(float_model)
    result["traces"] = {
        "float": traces,
        "float_seed1": traces_rep,
        "qat6": traces_qat,
        "n_weights": n,
        "seconds_float": t_float,
        "seconds_qat": t_qat,
        "settings": kw,
    }

    # 2. allocation
    choices = (3, 4, 5, 6, 7, 8)
    pert = mixed.quant_perturbation(float_model, choices)
    front = mixed.allocate_bits(traces, n, choices, perturbation=pert)
    inverse = {k: 1.0 / v for k, v in traces.items()}
    assignments: dict[str, dict[str, int]] = {}
    for b in (int(v) for v in args.budgets.split(",")):
        budget = _total_bits({k: b for k in n}, n)
        best = mixed.allocate_bits(traces, n, choices, budget_bits=budget, perturbation=pert)[0]
        assignments[f"uniform{b}"] = {k: b for k in n}
        assignments[f"hawq@{b}b"] = best
        # control: the same allocation at the same budget with the sensitivity order inverted
        # (traces replaced by their reciprocals)
        inv = mixed.allocate_bits(inverse, n, choices, budget_bits=budget, perturbation=pert)[0]
        assignments[f"inverse@{b}b"] = inv
    result["front"] = [
        {"assign": a, "bits": c[0], "omega": c[1]}
        for a in front
        for c in [mixed.assignment_cost(a, traces, n, pert)]
    ]
    result["assignments"] = {
        k: {
            "layer_bits": a,
            "weight_bits": _total_bits(a, n),
            "omega": mixed.assignment_cost(a, traces, n, pert)[1],
        }
        for k, a in assignments.items()
    }

    # 3. QAT accuracy
    acc: dict[str, list[float]] = {}
    secs: dict[str, list[float]] = {}
    models = {}
    for name, a in assignments.items():
        same = next((k for k in acc if assignments[k] == a), None)
        if same is not None:  # e.g. HAWQ's best at a uniform budget is that uniform assignment
            acc[name], secs[name], models[name] = acc[same], secs[same], models[same]
            print(f"{name:14s} = {same}", flush=True)
            continue
        base = max(a.values())
        lb = {k: v for k, v in a.items() if v != base}
        for s in seeds:
            t0 = time.perf_counter()
            m = zoo.train_qat(spec, data, float_model, base, epochs, seed=s, layer_bits=lb or None)
            secs.setdefault(name, []).append(time.perf_counter() - t0)
            acc.setdefault(name, []).append(zoo.evaluate(spec, m, data.x_test, y_test)["accuracy"])
            if s == seeds[0]:
                models[name] = m
        print(f"{name:14s} {a} acc {np.mean(acc[name]) * 100:.2f} % ({acc[name]})", flush=True)
    result["qat"] = {
        k: {"accuracy": acc[k], "mean": float(np.mean(acc[k])), "seconds": secs[k]} for k in acc
    }

    # 4. exactness of one mixed model
    name = "hawq@5b"
    m = models[name]
    path = export_qonnx(spec.edge(m), (1, *spec.input_shape), args.out / "hawq5.qonnx.onnx")
    g = GoldenModel.from_onnx(path)
    codes = g.quantize_input(data.x_test)
    ref = g.predict(codes)
    scale = float(np.asarray(g.output_scale).reshape(-1)[0])
    y = training.predict(m, codes.astype(np.float64) * g.input_real_scale) / scale
    result["exact"] = {
        "model": name,
        "vectors": len(codes),
        "mismatches": int(np.count_nonzero(np.rint(y).astype(np.int64) != ref)),
        "off_grid": int(np.count_nonzero(np.rint(y) != y)),
        "weight_widths": [op.weight_type.width for op in g.ops if isinstance(op, Dense)],
        "act_widths": [g.tensors[op.output].type.width for op in g.ops if isinstance(op, Requant)],
        "layer_widths": mixed.layer_widths(m, spec.input_shape),
    }
    (args.out / "bench_mixed.json").write_text(json.dumps(result, indent=1))

    print(f"\nfloat accuracy {result['float_accuracy'] * 100:.2f} %; QAT {epochs} epochs, "
          f"seeds {seeds}; traces {args.probes} probes x {args.samples} samples "
          f"({t_float:.1f} s)")  # fmt: skip
    print("layer  weights  tr/n float (seed 0)  (seed 1)  tr/n QAT-6")
    for k in n:
        print(f"{k:5s} {n[k]:8d}  {traces[k]:18.4g} {traces_rep[k]:9.4g} {traces_qat[k]:11.4g}")
    print("\nassignment      fc1 fc2 fc3 fc4  weight bits   Omega      accuracy (mean, per seed)")
    for k, a in assignments.items():
        info = result["assignments"][k]
        ws = " ".join(f"{a[x]:3d}" for x in n)
        accs = ", ".join(f"{v * 100:.2f}" for v in acc[k])
        print(f"{k:14s} {ws} {info['weight_bits']:12d} {info['omega']:9.3g}   "
              f"{np.mean(acc[k]) * 100:.2f} % ({accs})")  # fmt: skip
    print(f"\nexactness ({name}): {result['exact']}")


if __name__ == "__main__":
    main()
