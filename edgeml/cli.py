"""The ``edgeml`` command: one sub-command per stage, plus ``flow`` for all of them.

Exit codes:
    0  success
    1  user error: bad config, unsupported op, corrupt or missing file, input overflow
    2  usage error (bad command-line arguments)
    3  verification mismatch (a level disagrees with the golden model)
    4  a required tool is missing (Verilator, g++, ...)
    5  internal error (a bug: please report it with the traceback)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_USER, EXIT_USAGE, EXIT_MISMATCH, EXIT_DEPENDENCY, EXIT_INTERNAL = 0, 1, 2, 3, 4, 5

STAGE_HELP = {
    "train": "train the float model (built-in designs) -> float.pt",
    "compress": "quantization-aware training (Brevitas) + magnitude pruning + fine-tune -> model.pt",
    "export": "export to QONNX and clean it (or clean --onnx FILE) -> model.qonnx.onnx",
    "convert": "hls4ml Vitis project (io_parallel) in hls_projects/<design>/, C-sim compiled",
    "rtl": "Verilog via da4ml, Verilator build, cocotb bench -> rtl/",
    "verify": "golden vs hls4ml C-sim vs RTL vs trained model over >=10k vectors -> verify.json",
    "faults": "exhaustive single-bit weight/bias flip campaign -> faults/campaign.npz",
    "report": "self-contained HTML report -> report.html",
    "flow": "run every stage in order",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeml",
        description="From a trained model to verified firmware and a fault report: "
        "QAT -> QONNX -> golden integer model -> hls4ml / RTL -> bit-exact verification -> "
        "fault injection -> report.",
        epilog=__doc__.split("Exit codes:")[1].join(["Exit codes:", ""]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_ in STAGE_HELP.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument(
            "--design", help="built-in design: mlp or cnn (default: mlp, or the run's config)"
        )
        sp.add_argument(
            "--onnx",
            type=Path,
            help="a QONNX model made elsewhere (FINN, Brevitas, QKeras via qonnx)",
        )
        sp.add_argument("--out", type=Path, help="run folder (default: runs/<design>/)")
        sp.add_argument("--config", type=Path, help="YAML or JSON config file (see README)")
        sp.add_argument(
            "--hls-dir",
            type=Path,
            default=Path("hls_projects"),
            help="root of hls4ml projects (default: hls_projects/)",
        )
        sp.add_argument("--bits", type=int, help="weight/activation bit width (compress.bit_width)")
        sp.add_argument(
            "--sparsity", type=float, help="pruning sparsity in [0, 0.95] (compress.sparsity)"
        )
        sp.add_argument("--seed", type=int, help="random seed")
        sp.add_argument("--vectors", type=int, help="random verification vectors (verify.n_random)")
        sp.add_argument(
            "--no-hls", action="store_true", help="skip hls4ml (convert stage and C-sim check)"
        )
        sp.add_argument("--no-rtl", action="store_true", help="skip RTL generation and simulation")
        sp.add_argument(
            "-q", "--quiet", action="store_true", help="no progress bars, warnings only"
        )
        sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _version() -> str:
    from edgeml import __version__

    return f"edgeml {__version__}"


def _context(args: argparse.Namespace) -> Any:
    from edgeml.config import FlowConfig, apply_overrides, check_design, load_config
    from edgeml.flow import Context, load_run_config
    from edgeml.manifest import RunFolder

    if args.config:
        cfg = load_config(args.config)
    else:
        cfg = FlowConfig()
    design = args.design
    onnx = str(args.onnx) if args.onnx else None
    if onnx and not design:
        design = Path(onnx).name.split(".")[0]
    out = args.out or Path("runs") / (design or cfg.design)
    run = RunFolder(out)
    if not args.config:
        saved = load_run_config(run)
        if saved is not None:
            from edgeml.config import validate_config

            cfg = validate_config(saved)
    overrides = {
        "design": design,
        "onnx": onnx,
        "seed": args.seed,
        "compress.bit_width": args.bits,
        "compress.sparsity": args.sparsity,
        "verify.n_random": args.vectors,
        "hls.enabled": False if args.no_hls else None,
        "rtl.enabled": False if args.no_rtl else None,
    }
    cfg = apply_overrides(cfg, overrides)
    check_design(cfg, cfg.onnx is not None)
    return Context(run=run, cfg=cfg, hls_root=args.hls_dir, progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edgeml`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in (
        "brevitas",
        "torch",
        "onnx",
        "hls4ml",
        "matplotlib",
        "PIL",
        "qonnx",
        "cocotb",
        "_runner",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")

    from edgeml.errors import DependencyError, EdgemlError, MismatchError, MissingRunError

    t0 = time.time()
    try:
        from edgeml.flow import STAGE_FUNCS, STAGES, run_flow, save_config

        ctx = _context(args)
        if args.command == "flow":
            run_flow(ctx, STAGES)
        else:
            starts_run = args.command == "train" or (args.command == "export" and ctx.external)
            if not starts_run and not ctx.run.path.is_dir():
                raise MissingRunError(
                    f"run folder '{ctx.run.path}' does not exist; run `edgeml flow` (or the "
                    "earlier stages) first, or pass --out to point at an existing run folder"
                )
            ctx.run.path.mkdir(parents=True, exist_ok=True)
            save_config(ctx)
            STAGE_FUNCS[args.command](ctx)
    except MismatchError as exc:
        print(f"edgeml: MISMATCH: {exc}", file=sys.stderr)
        return EXIT_MISMATCH
    except DependencyError as exc:
        print(f"edgeml: missing dependency: {exc}", file=sys.stderr)
        return EXIT_DEPENDENCY
    except EdgemlError as exc:
        print(f"edgeml: error: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("edgeml: interrupted", file=sys.stderr)
        return 130
    except Exception:
        logging.getLogger("edgeml").exception("internal error (please report this)")
        return EXIT_INTERNAL
    dt = time.time() - t0
    report = ctx.run.file("report.html")
    print(f"edgeml {args.command}: done in {dt:.1f} s; run folder {ctx.run.path}")
    if report.exists() and args.command in ("flow", "report"):
        print(f"report: {report.resolve()}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
