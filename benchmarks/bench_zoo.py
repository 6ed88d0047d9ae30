"""The model zoo through the whole trip: one row per study design, for the README.

    python benchmarks/bench_zoo.py [--designs ssm,pinn,...] [--out runs/zoo] [--findings]

For each built-in design, runs ``edgeml flow --design NAME`` (train float, QAT,
prune, export, golden, hls4ml, RTL, verify, faults, report) into ``OUT/NAME`` and
collects the design's own metric (float / QAT / pruned), the mismatches of every
verification level, the yosys LUT/FF estimate, the mean SDC rate of the flow's
exhaustive stored-bit campaign, and the wall time. With ``--findings`` it also runs
each study module's ``finding()`` (the study's own claim, measured). The time column is
the sum of the flow's stage times from the run's manifest. Writes
``benchmarks/results-zoo.json`` and prints the README table. A design whose run
folder already holds ``report.html`` is read back, not re-run (``--rerun`` forces).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results-zoo.json"
#: The field and sequence studies and the method studies (the spine's designs have their
#: own tables in the README).
STUDIES = (
    "ssm",
    "wavecast",
    "dlwp",
    "cgm",
    "pinn",
    "resnet_skip",
    "resnet_noskip",
    "sharpbalance",
    "randnla",
    "sane",
    "trsqp",
    "molnet_fp",
    "molnet_gcn",
    "tinymem",
)
#: `edgeml flow` options a study's row uses beyond the defaults (the PINN needs 8 bits:
#: at 6 its Tanh inputs are too coarse, QAT rel. L2 0.17)
FLOW_ARGS: dict[str, list[str]] = {"pinn": ["--bits", "8"]}


def _read(run: Path, name: str) -> dict[str, Any]:
    p = run / name
    return json.loads(p.read_text()) if p.exists() else {}


def collect(run: Path) -> dict[str, Any]:
    """The figures of one finished run folder."""
    train, comp, ver, rtl = (
        _read(run, f) for f in ("train.json", "compress.json", "verify.json", "rtl.json")
    )
    stages = _read(run, "manifest.json").get("stages", {})
    faults = stages.get("faults", {}).get("extra", {})
    levels = {
        lv["level"]: {
            "status": lv["status"],
            "mismatching_vectors": lv.get("mismatching_vectors"),
            "vectors": lv.get("vectors"),
        }
        for lv in ver.get("levels", [])
    }
    res = rtl.get("resources") or {}
    return {
        "metric": train.get("metric") or comp.get("metric"),
        "float": train.get("float"),
        "qat": comp.get("qat"),
        "pruned": comp.get("pruned"),
        "bits": comp.get("bit_width"),
        "sparsity": comp.get("sparsity"),
        "verify_passed": ver.get("passed"),
        "vectors": ver.get("vectors"),
        "levels": levels,
        "lut": res.get("lut"),
        "ff": res.get("ff"),
        "mean_sdc": faults.get("mean_sdc_rate"),
        "fault_sites": faults.get("faults"),
        "stage_seconds": {k: round(v.get("seconds", 0.0), 1) for k, v in stages.items()},
        "stages_s": round(sum(v.get("seconds", 0.0) for v in stages.values()), 1),
        "bits_flag": (_read(run, "config.json").get("compress") or {}).get("bit_width"),
    }


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(rows: list[dict[str, Any]]) -> str:
    """The README table: one row per design."""
    out = [
        "| design | metric | float | QAT | pruned (sparsity) | golden vs C-sim / RTL / Brevitas "
        "| LUT / FF (yosys) | mean SDC | flow stages (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lv = r.get("levels", {})

        def cell(name: str, lv: dict = lv) -> str:
            x = lv.get(name)
            if not x or x["status"] == "SKIPPED":
                return "skipped"
            return f"{x['mismatching_vectors']:,}"

        mism = " / ".join(
            cell(n) for n in ("hls4ml C-sim", "RTL (Verilator)", "trained Brevitas model")
        )
        sp = r.get("sparsity")
        out.append(
            f"| {r['design']} | {r.get('metric') or '-'} | {_fmt(r.get('float'))} | "
            f"{_fmt(r.get('qat'))} | {_fmt(r.get('pruned'))} ({_fmt(sp, 2)}) | "
            f"{mism} of {_fmt(r.get('vectors'))} | {_fmt(r.get('lut'))} / {_fmt(r.get('ff'))} | "
            f"{_fmt(r.get('mean_sdc'), 3)} | {_fmt(r.get('stages_s'))} s |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--designs", default=",".join(STUDIES), help="comma list of built-in designs")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "zoo", help="run folders root")
    ap.add_argument("--findings", action="store_true", help="also run each study's finding()")
    ap.add_argument(
        "--rerun", action="store_true", help="re-run designs that already have a report"
    )
    args = ap.parse_args(argv)
    from edgeml.models import DESIGN_MODULES

    prev = {r["design"]: r for r in json.loads(RESULTS.read_text())} if RESULTS.exists() else {}
    rows = []
    for name in [d.strip() for d in args.designs.split(",") if d.strip()]:
        run = args.out / name
        wall = prev.get(name, {}).get("wall_s")
        if args.rerun or not (run / "report.html").exists():
            t0 = time.perf_counter()
            cmd = [
                sys.executable,
                "-m",
                "edgeml",
                "flow",
                "--design",
                name,
                "--out",
                str(run),
                "-q",
                *FLOW_ARGS.get(name, []),
            ]
            print("$", " ".join(cmd[2:]), flush=True)
            proc = subprocess.run(cmd, cwd=ROOT, check=False)
            wall = round(time.perf_counter() - t0, 1)
            if proc.returncode not in (0, 3):
                print(f"{name}: flow exited {proc.returncode}", flush=True)
        row = {"design": name, **collect(run), "wall_s": wall}
        if args.findings:
            mod = importlib.import_module(DESIGN_MODULES[name])
            if hasattr(mod, "finding"):
                t0 = time.perf_counter()
                row["finding"] = mod.finding(seed=0)
                row["finding_s"] = round(time.perf_counter() - t0, 1)
            else:
                row["finding"] = prev.get(name, {}).get("finding")
        else:
            row["finding"] = prev.get(name, {}).get("finding")
        rows.append(row)
        prev[name] = row
        RESULTS.write_text(json.dumps(list(prev.values()), indent=1, default=float) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
