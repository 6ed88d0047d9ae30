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
    "faults": "fault campaigns: `faults run|resume|report` (resumable SQLite store, Dask); "
    "alone: the flow's exhaustive weight/bias flip stage -> faults/campaign.npz",
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
            "--design",
            help="built-in design: jet, mlp, cnn, econt or rn08 "
            "(default: the run's config, else jet)",
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
        if name == "faults":
            _add_faults_group(sp)
    from edgeml.sweep import add_sweep_parser

    add_sweep_parser(sub)
    return p


FAULTS_DESCRIPTION = """\
Fault-injection campaigns on the golden integer model, stored in an append-only
SQLite file (one row per fault, keyed by fault id) so a killed run loses at most
one chunk and `edgeml faults resume` finishes it with identical results.

  edgeml faults run    [--run-dir DIR] [--targets weight,bias] [--sampler exhaustive] ...
  edgeml faults resume --store FILE
  edgeml faults report --store FILE [--out FILE.html]

Without a sub-command, `edgeml faults` runs the flow's faults stage as `edgeml
flow` does (every weight and bias bit flipped -> faults/campaign.npz and
faults/summary.json), with the stage options below.
"""


class _UsageError(Exception):
    """A bad command-line value found after parsing (exit code 2)."""


def _add_faults_group(sp: argparse.ArgumentParser) -> None:
    """``edgeml faults run|resume|report``: campaigns in a resumable store (fault_injection.runner)."""
    sp.description = FAULTS_DESCRIPTION
    sp.formatter_class = argparse.RawDescriptionHelpFormatter
    fsub = sp.add_subparsers(dest="faults_command", metavar="{run,resume,report,rtl}")
    sup = argparse.SUPPRESS

    def common(q: argparse.ArgumentParser, store_help: str) -> None:
        # Shared names default to SUPPRESS so they do not overwrite the stage options'
        # values (argparse copies every sub-parser default over the parent namespace).
        q.add_argument(
            "--run-dir",
            type=Path,
            help="run folder with model.qonnx.onnx (default: runs/<design>/, design jet)",
        )
        q.add_argument("--design", default=sup, help="design whose run folder to use (default jet)")
        q.add_argument("--store", type=Path, help=store_help)
        q.add_argument("-q", "--quiet", action="store_true", default=sup, help="no progress bars")
        q.add_argument("-v", "--verbose", action="store_true", default=sup, help="debug logging")

    def executor(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--chunk",
            type=int,
            help="faults per chunk: one task and one store transaction (default 1000)",
        )
        q.add_argument(
            "--workers",
            type=int,
            help="local Dask worker processes on 127.0.0.1 (default min(2, CPUs)); 0 = serial, "
            "in this process",
        )
        q.add_argument(
            "--scheduler",
            metavar="ADDRESS",
            help="run on an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (workers need edgeml)",
        )

    default_store = "fault store (default: <run folder>/faults/campaign.sqlite)"
    r = fsub.add_parser(
        "run",
        help="start (or with --resume continue) a campaign into a SQLite store",
        description="Enumerate fault sites, choose them with a sampler, evaluate them in chunks "
        "(serially or on Dask) and append each chunk to the store. A store that already exists "
        "is refused unless --resume is given; then only the missing faults run.",
    )
    common(r, default_store)
    r.add_argument(
        "--targets",
        default="weight,bias",
        help="comma list of weight, bias, act (activation transients), acc (accumulator "
        "transients); default weight,bias",
    )
    r.add_argument(
        "--kind",
        default="flip",
        choices=("flip", "stuck0", "stuck1"),
        help="fault model: bit flip (SEU) or stuck-at (default flip)",
    )
    r.add_argument(
        "--nbits", type=int, default=1, help="adjacent bits per upset (1 = single-bit; default 1)"
    )
    r.add_argument(
        "--sampler",
        default="exhaustive",
        help="exhaustive (every site); random or stratified (Leveugle-sized sample for "
        "--margin and --confidence, with confidence intervals in the report); hessian, "
        "gradient or taylor (the Leveugle-sized top of that sensitivity ranking, most "
        "sensitive bit first); default exhaustive",
    )
    r.add_argument(
        "--margin",
        type=float,
        default=0.01,
        help="random sampler: error margin of estimated proportions (default 0.01)",
    )
    r.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="random sampler: confidence of that margin (default 0.95)",
    )
    r.add_argument(
        "--samples",
        type=int,
        help="input samples per fault (default: faults.max_samples of the run's config, 1000)",
    )
    r.add_argument(
        "--seed", type=int, default=sup, help="campaign seed for the sampler (default 0)"
    )
    r.add_argument(
        "--sdc",
        choices=("auto", "top1", "any"),
        default="auto",
        help="silent data corruption = top-1 class change (top1) or any output code change "
        "(any); auto: top1 with labels, any without (default auto)",
    )
    executor(r)
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue the campaign in an existing --store (its config must match)",
    )

    rs = fsub.add_parser(
        "resume",
        help="finish the campaign in a store (everything else is read from the store)",
        description="Continue a campaign from its store: the run folder, samples, sites, seed "
        "and engine are taken from the store's campaign record and checked; only faults with "
        "no row yet are evaluated.",
    )
    common(rs, default_store)
    executor(rs)

    rp = fsub.add_parser(
        "report",
        help="HTML summary of a store: campaign, estimates, per layer, per bit, top-N",
        description="Write an HTML summary of a fault store (complete or not).",
    )
    common(rp, default_store)
    rp.add_argument(
        "--out",
        dest="html_out",
        type=Path,
        help="HTML file (default: the store's path with .html)",
    )
    rp.add_argument("--top", type=int, default=20, help="rows in the top-N table (default 20)")

    rr = fsub.add_parser(
        "rtl",
        help="flip RTL register bits in Verilator; check them against golden activation flips",
        description="Build the fault-injection RTL of the run's golden model (one register rank "
        "per layer output, XOR-mask ports), map every flip-flop (yosys) to the golden quantity "
        "it holds, flip register bits during simulation, and check that a flip of a register "
        "holding layer k's activations gives exactly the golden model's outputs for that "
        "activation-bit flip. Writes <run>/faults/rtl/rtl_summary.json and rtl_campaign.npz; "
        "exits 3 on any disagreement.",
    )
    common(rr, sup)
    rr.add_argument(
        "--sites", type=int, help="flip-flops to flip, sampled (default: every flip-flop)"
    )
    rr.add_argument(
        "--check",
        type=int,
        default=200,
        help="exactly mapped bits cross-checked against the golden model (default 200)",
    )
    rr.add_argument("--samples", type=int, help="input vectors (default: faults.max_samples)")
    rr.add_argument("--seed", type=int, default=sup, help="sampling seed (default 0)")
    rp.add_argument(
        "--no-plots",
        action="store_true",
        help="tables only: skip the sensitivity analysis (Hessian/gradient rankings, protection "
        "curves, heatmap), which reloads the run folder's model and samples",
    )


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
        "distributed",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")

    from edgeml.errors import MissingRunError

    if args.command == "sweep":
        from edgeml.sweep import run_sweep_command

        return run_sweep_command(args)
    t0 = time.time()
    if args.command == "faults" and getattr(args, "faults_command", None):
        try:
            return _faults_main(args)
        except _UsageError as exc:
            print(f"edgeml faults {args.faults_command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except BaseException as exc:
            return _exit_code(exc, "finished chunks are kept; resume with `edgeml faults resume`")
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
    except BaseException as exc:
        return _exit_code(exc)
    dt = time.time() - t0
    report = ctx.run.file("report.html")
    print(f"edgeml {args.command}: done in {dt:.1f} s; run folder {ctx.run.path}")
    if report.exists() and args.command in ("flow", "report"):
        print(f"report: {report.resolve()}")
    return EXIT_OK


def _exit_code(exc: BaseException, on_interrupt: str = "") -> int:
    """Print what went wrong and map it to the exit codes of the module docstring."""
    from edgeml.errors import DependencyError, EdgemlError, MismatchError

    if isinstance(exc, MismatchError):
        print(f"edgeml: MISMATCH: {exc}", file=sys.stderr)
        return EXIT_MISMATCH
    if isinstance(exc, DependencyError):
        print(f"edgeml: missing dependency: {exc}", file=sys.stderr)
        return EXIT_DEPENDENCY
    if isinstance(exc, EdgemlError):
        print(f"edgeml: error: {exc}", file=sys.stderr)
        return EXIT_USER
    if isinstance(exc, KeyboardInterrupt):
        print(f"edgeml: interrupted{f' ({on_interrupt})' if on_interrupt else ''}", file=sys.stderr)
        return 130
    if isinstance(exc, SystemExit):
        raise exc
    logging.getLogger("edgeml").error("internal error (please report this)", exc_info=exc)
    return EXIT_INTERNAL


# ----------------------------------------------------------------------------- faults group


def _faults_run_dir(args: argparse.Namespace) -> Path:
    if args.run_dir is not None:
        return Path(args.run_dir)
    if getattr(args, "out", None) is not None:  # `edgeml faults --out DIR run`
        return Path(args.out)
    from edgeml.config import DEFAULT_DESIGN

    return Path("runs") / (getattr(args, "design", None) or DEFAULT_DESIGN)


def _positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise _UsageError(f"{name} must be an integer >= {minimum}; got {value}")


def _executor_args(args: argparse.Namespace) -> dict[str, Any]:
    from edgeml.fault_injection.runner import DEFAULT_CHUNK

    _positive("--chunk", args.chunk)
    _positive("--workers", args.workers, 0)
    if args.scheduler is not None and not args.scheduler.strip():
        raise _UsageError("--scheduler needs an address, e.g. tcp://127.0.0.1:8786")
    return {
        "chunk": args.chunk or DEFAULT_CHUNK,
        "workers": args.workers,
        "scheduler": args.scheduler,
    }


def _faults_main(args: argparse.Namespace) -> int:
    """``edgeml faults run|resume|report``."""
    from edgeml.fault_injection import runner

    t0 = time.time()
    quiet = bool(getattr(args, "quiet", False))
    if not getattr(args, "verbose", False):
        # The engine logs one line per chunk; the progress bar says the same.
        logging.getLogger("edgeml.fault_injection.campaign").setLevel(logging.WARNING)
    cmd = args.faults_command
    run_dir = _faults_run_dir(args)
    store = args.store or runner.default_store(run_dir)

    if cmd == "rtl":
        from edgeml.fault_injection.rtl_run import run_rtl_from_run

        seed = getattr(args, "seed", None)
        summ = run_rtl_from_run(
            run_dir,
            n_samples=args.samples,
            n_sites=args.sites,
            n_check=args.check,
            seed=0 if seed is None else seed,
            progress=not quiet,
        )
        c, cc = summ["campaign"], summ["cross_check"]
        print(
            f"edgeml faults rtl: {summ['flipflops']} flip-flops "
            f"({summ['register_map']}); {c.get('faults')} register faults, mean SDC rate "
            f"{100 * float(c.get('mean_sdc_rate', 0)):.3f} %; cross-check vs golden: "
            f"{cc['mismatching_sites']} of {cc['sites']} sites differ over {cc['vectors']} vectors"
        )
        return EXIT_OK
    if cmd == "report":
        _positive("--top", args.top, 0)
        out = runner.write_store_report(
            store, args.html_out, top=args.top, plots=not args.no_plots, run_dir=args.run_dir
        )
        print(f"edgeml faults report: {out.resolve()}")
        return EXIT_OK

    ex = _executor_args(args)
    if cmd == "run":
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        bad = [t for t in targets if t not in runner.TARGETS]
        if bad or not targets:
            raise _UsageError(
                f"--targets takes a comma list of {', '.join(runner.TARGETS)}; got {args.targets!r}"
            )
        if args.sampler not in runner.SAMPLERS:
            raise _UsageError(
                f"--sampler must be one of {', '.join(runner.SAMPLERS)}; got {args.sampler!r}"
            )
        _positive("--nbits", args.nbits)
        _positive("--samples", args.samples)
        for name, v in (("--margin", args.margin), ("--confidence", args.confidence)):
            if not 0.0 < v < 1.0:
                raise _UsageError(f"{name} must be in (0, 1), e.g. 0.01 / 0.95; got {v}")
        seed = getattr(args, "seed", None)
        seed = 0 if seed is None else seed
        _positive("--seed", seed, 0)
        if Path(store).exists() and not args.resume:
            raise _UsageError(
                f"fault store '{store}' already exists; add --resume to continue its campaign, "
                "or pass another --store (or delete it) to start a new one"
            )
        res = runner.faults_run(
            run_dir,
            store,
            targets=targets,
            kind=args.kind,
            nbits=args.nbits,
            sampler=args.sampler,
            margin=args.margin,
            confidence=args.confidence,
            n_samples=args.samples,
            seed=seed,
            sdc=args.sdc,
            resume=args.resume,
            progress=not quiet,
            **ex,
        )
    else:
        res = runner.faults_resume(store, args.run_dir, progress=not quiet, **ex)
    import numpy as np

    done = int(res.done.sum())
    mean_sdc = float(np.mean(res.sdc_rate[res.done])) if done else float("nan")
    base = res.baseline_accuracy
    acc = "n/a (no labels)" if base != base else f"{100 * base:.2f} %"
    print(
        f"edgeml faults {cmd}: {done} of {len(res)} faults in {store} "
        f"({time.time() - t0:.1f} s); mean SDC rate {100 * mean_sdc:.3f} %, baseline accuracy "
        f"{acc} on {res.n_samples} samples"
    )
    print(f"report: edgeml faults report --store {store}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
