"""Selective hardening of the jet tagger: RTL (TMR / SECDED per word) and the hls4ml project.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_harden.py \
        [--run runs/jet] [--hls hls_projects/jet_04f14345] [--out /tmp/harden/jet] [--samples 2000]

RTL: the layer FI build of the run's golden model, the register campaign over every flip-flop
(one SEU per vector), protection plans at 1 %, 5 % and 20 % of register bits, each protected
build rebuilt with Verilator and re-measured over every flip-flop (extra ones included), and
yosys (synth_xilinx) LUT/FF/cells of the unprotected and protected FI tops
(:func:`edgeml.fault_injection.harden.harden_run`, which writes ``<out>/harden.json``).

hls4ml: the words the golden campaign (``<run>/faults/campaign.npz``) ranks highest get TMR in a
copy of the project; C-sim is checked exact against the golden model on the same vectors, and
again with the sign bit of the top protected weight's primary copy flipped. Reads the run folder
and the project, writes only under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/jet")
    ap.add_argument("--hls", default="hls_projects/jet_04f14345")
    ap.add_argument("--out", default="/tmp/harden/jet")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--words", type=float, default=0.01, help="fraction of hls4ml words to protect")
    ap.add_argument("--no-area", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from edgeml.fault_injection.harden import harden_run

    t0 = time.perf_counter()
    rep = harden_run(
        args.run,
        budget=0.05,
        out=out / "rtl",
        budgets=(0.01, 0.2),
        n_samples=args.samples,
        area=not args.no_area,
    )
    u = rep["unprotected"]
    print(
        f"RTL {rep['design']}: {rep['register_bits']} register bits, {rep['vectors']} vectors, "
        f"mean SDC {u['mean_sdc']:.5f} ({u['faults_with_sdc']} bits with SDC), "
        f"top-1 % bits mean SDC {u['top1pct_bits_sdc']:.4f}; area {u['area']}"
    )
    for r in sorted(rep["protected"], key=lambda r: r["budget"]):
        print(
            f"  budget {r['budget']:.0%}: {r['protected_bits']} bits in {r['protected_words']} words "
            f"{r['words_by_scheme']}, +{r['extra_flipflops']} FF; SDC predicted "
            f"{r['predicted_mean_sdc_after']:.5f} measured {r['measured_mean_sdc']:.5f} "
            f"(per flip-flop {r['measured_mean_sdc_per_flipflop']:.5f}); fault-free == golden "
            f"{r['fault_free_equals_golden']}; area {r.get('area')}"
        )
    print(f"  RTL part {time.perf_counter() - t0:.0f} s")

    # ---- hls4ml
    from edgeml.fault_injection.runner import load_run_inputs
    from edgeml.golden import Dense
    from edgeml.hls_harden import (
        flip_txt_word,
        harden_hls_project,
        param_arrays,
        rank_parameter_words,
        reload_csim,
    )

    t1 = time.perf_counter()
    inp = load_run_inputs(args.run, args.samples)
    g, x = inp.g, inp.x
    name = json.loads((Path(args.hls) / "edgeml_hls.json").read_text())["name"]
    ranked = rank_parameter_words(g, Path(args.run) / "faults" / "campaign.npz", args.hls, name)
    k = max(1, int(np.ceil(args.words * len(ranked))))
    top_w = next(r for r in ranked if r[0].startswith("w"))
    chosen = {(a, i) for a, i, _ in ranked[:k]} | {top_w[:2]}
    protect: dict[str, list[int]] = {}
    for a, i in chosen:
        protect.setdefault(a, []).append(i)
    total = sum(s for *_, s in ranked)
    share = sum(s for a, i, s in ranked if (a, i) in chosen) / total
    hard, summary = harden_hls_project(args.hls, out / "hls_tmr", protect)
    ref = g.predict(x)
    exact = bool(np.array_equal(hard.predict_int(x), ref))
    arr, idx, _ = top_w
    a = next(p for p in param_arrays(args.hls, name) if p.name == arr)
    op = [o for o in g.ops if isinstance(o, Dense)][a.layer]
    t = op.weight_type
    codes = op.weight.reshape(-1)
    vals = np.loadtxt(hard.project_dir / "firmware" / "weights" / f"{arr}.txt", delimiter=",")
    scale = vals[codes != 0][0] / codes[codes != 0][0]
    u8 = (int(codes[idx]) & ((1 << t.width) - 1)) ^ (1 << (t.width - 1))
    flipped = u8 - (1 << t.width) if t.signed and u8 >= 1 << (t.width - 1) else u8
    flip_txt_word(hard.project_dir, arr, idx, flipped * scale)
    masked = bool(np.array_equal(reload_csim(hard, "flip").predict_int(x), ref))
    print(
        f"hls4ml {name}: {summary['protected_words']} of {len(ranked)} weight/bias words TMR "
        f"({sorted(summary['arrays'])}), +{summary['extra_bits']} stored bits; they carry "
        f"{share:.1%} of the golden campaign's weight/bias SDC; C-sim == golden on {len(x)} vectors: "
        f"{exact}; with {arr}[{idx}] sign bit flipped in its primary copy: {masked}; "
        f"{time.perf_counter() - t1:.0f} s"
    )
    rep["hls"] = {
        "project": str(hard.project_dir),
        "protected_words": summary["protected_words"],
        "words": len(ranked),
        "extra_bits": summary["extra_bits"],
        "campaign_sdc_share": share,
        "csim_exact": exact,
        "csim_exact_with_flipped_primary": masked,
        "flipped": f"{arr}[{idx}]",
        "vectors": len(x),
    }
    (out / "bench_harden.json").write_text(json.dumps(rep, indent=1))
    print(f"wrote {out / 'bench_harden.json'}")


if __name__ == "__main__":
    main()
