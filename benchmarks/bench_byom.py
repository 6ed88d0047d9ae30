"""Bring your own model: every acceptance case through `edgeml flow`, measured for the README.

    python benchmarks/bench_byom.py [--vectors 10000] [--only NAME ...] [--work DIR]

For each case of ``tests/byom_cases.py`` (a model file written in its producer's
conventions), runs the command line a user types and records what ingestion changed,
the levels reached, mismatches per level, top-1 agreement and max error against the
original file, the hls4ml route, and wall time. Writes
``benchmarks/results-byom.json`` and prints the README table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from byom_cases import cases, run_case  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results-byom.json"
EXACT_LEVELS = ("hls4ml C-sim", "RTL (Verilator)")


def _cell(levels: dict, name: str) -> str:
    lv = levels.get(name)
    if lv is None:
        return "-"
    if lv["status"] == "SKIPPED":
        return "skipped"
    return f"{lv['mismatching_vectors']:,} / {lv['vectors']:,}"


def table(rows: list[dict]) -> str:
    """The README table: one row per case."""
    head = (
        "| model | changed on ingestion | hls4ml route | golden vs C-sim | golden vs RTL "
        "| vs original file: top-1 agreement, max error | flow wall time |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        lv = r.get("levels", {})
        orig = lv.get("original model file", {})
        note = orig.get("note", "-")
        if r.get("quantize"):
            q = r["quantize"]
            note = (
                f"float file vs 8-bit design: argmax agreement "
                f"{q['argmax_agreement_float_vs_quant']:.4f}, max error "
                f"{q['max_abs_err_float_vs_quant']:.3g} (`edgeml quantize` report)"
            )
        changes = r.get("ingest", {}).get("changes", [])
        note = note.replace("|", "\\|")  # "max |real diff|" inside a Markdown table cell
        lines.append(
            f"| {r['case']} | {len(changes)} change(s) | {r.get('hls_route') or '-'} | "
            f"{_cell(lv, EXACT_LEVELS[0])} | {_cell(lv, EXACT_LEVELS[1])} | {note} | "
            f"{r['seconds'].get('flow', 0):.0f} s |"
        )
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vectors", type=int, default=10_000, help="verification vectors per case")
    p.add_argument("--only", nargs="*", help="case names (default: all)")
    p.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    args = p.parse_args(argv)
    chosen = [c for c in cases() if not args.only or c.name in args.only]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for c in chosen:
            print(f"== {c.name}: {c.what}", flush=True)
            res = run_case(c, work / c.name, vectors=args.vectors)
            res["what"] = c.what
            rows.append(res)
            print(json.dumps({k: res[k] for k in ("rc", "seconds", "hls_route")}), flush=True)
    if args.only and RESULTS.is_file():  # re-measured cases replace theirs; others are kept
        done = {r["case"]: r for r in json.loads(RESULTS.read_text())}
        done.update({r["case"]: r for r in rows})
        rows = [done[c.name] for c in cases() if c.name in done]
    RESULTS.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    print(table(rows))
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
