"""The stages of a flow and their artifacts in a run folder.

Each stage is a library function ``stage_<name>(ctx)`` that reads what earlier
stages wrote into the run folder, writes its own artifacts, and records itself
in ``manifest.json``. The CLI is a thin wrapper over these.

    train     float.pt                       float model (built-in designs)
    compress  model.pt, qat.pt, compress.json  [low-rank SVD,] QAT + magnitude pruning + fine-tune
    export    model.qonnx.onnx, golden.txt   QONNX, cleaned; golden model summary
    convert   hls_projects/<design>/, hls.json   hls4ml Vitis project, C-sim compiled
    rtl       rtl/, rtl.json                 Verilog (da4ml), Verilator build, cocotb bench
    verify    verify.json                    golden vs C-sim vs RTL vs Brevitas
    faults    faults/campaign.npz            exhaustive single-bit weight/bias flips
    report    report.html                    self-contained report
    analyze   analysis/                      curvature, landscapes, CKA (`edgeml analyze`)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from edgeml.config import FlowConfig, check_options, design_identifier, external_model
from edgeml.errors import (
    ConfigError,
    CorruptFileError,
    EdgemlError,
    MismatchError,
    MissingRunError,
    UnsupportedOpError,
)
from edgeml.golden import GoldenModel
from edgeml.manifest import RunFolder, read_json, sha256, write_json

log = logging.getLogger(__name__)

#: The golden IR a run ships (written by export, checked by verify against the QONNX).
GOLDEN_IR = "golden.npz"

STAGES: tuple[str, ...] = (
    "train",
    "compress",
    "export",
    "convert",
    "rtl",
    "verify",
    "implement",
    "faults",
    "report",
)
#: Every stage in pipeline order, as reports list them: ``edgeml flow`` runs ``STAGES``;
#: ``edgeml analyze`` runs alone (it is slower than a flow) and rebuilds the report.
PIPELINE: tuple[str, ...] = (*STAGES[:-1], "analyze", STAGES[-1])


@dataclass
class Context:
    """What every stage needs: the run folder, the validated config, where hls4ml writes."""

    run: RunFolder
    cfg: FlowConfig
    hls_root: Path = Path("hls_projects")
    progress: bool = True
    #: build the RTL even when the size guard estimates it above ``rtl.max_build_seconds``
    force_rtl: bool = False
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def external(self) -> bool:
        return external_model(self.cfg)

    @property
    def name(self) -> str:
        return self.cfg.design

    @property
    def hls_dir(self) -> Path:
        """The run's hls4ml project: where ``hls.json`` says (relative to the run folder).

        Before the convert stage has run, the folder it will write:
        ``<hls root>/<identifier>_<first 8 hex of the model's SHA-256>``, so runs
        of different models never share (or overwrite) one project.
        """
        recorded = recorded_hls_project(self.run.path)
        if recorded is not None:
            return recorded
        digest = sha256(self.run.require("model.qonnx.onnx"))
        return (self.hls_root / f"{design_identifier(self.name)}_{digest[:8]}").resolve()

    def golden(self) -> GoldenModel:
        if "golden" not in self.results:
            self.results["golden"] = GoldenModel.from_onnx(self.run.require("model.qonnx.onnx"))
        return self.results["golden"]


# --------------------------------------------------------------------------- data


def spec(ctx: Context) -> Any:
    """The built-in design's :class:`~edgeml.models.zoo.DesignSpec`."""
    from edgeml.models import zoo

    return zoo.get(ctx.cfg.design)


def dataset(ctx: Context) -> Any:
    """The built-in design's data split (generated or shipped; cached per run)."""
    if "data" not in ctx.results:
        ctx.results["data"] = spec(ctx).load_data(ctx.cfg.seed)
    return ctx.results["data"]


def _epochs(ctx: Context, phase: str) -> int:
    """Configured epochs of a training phase, else the design's default."""
    value = getattr(ctx.cfg.train, f"epochs_{phase}")
    return int(value if value is not None else spec(ctx).epochs[phase])


def eval_samples(ctx: Context) -> tuple[np.ndarray, np.ndarray, str]:
    """Input codes and labels for accuracy/fault metrics.

    Built-in designs use their test set (an autoencoder has no labels: ``None``).
    For a model made elsewhere there are no labels, so inputs are random codes
    and labels are the fault-free golden top-1 (accuracy then measures
    agreement; SDC rate is unaffected).
    """
    g = ctx.golden()
    if not ctx.external:
        d, sp = dataset(ctx), spec(ctx)
        y = np.asarray(d.y_test) if sp.task == "classification" else None
        return g.quantize_input(d.x_test), y, f"{sp.name} test set"
    rng = np.random.default_rng(ctx.cfg.seed)
    lo, hi = g.input_quant.lo, g.input_quant.hi
    n = min(ctx.cfg.faults.max_samples, 1000)
    x = rng.integers(lo, hi + 1, size=(n, *g.input_shape), dtype=np.int64)
    y = g.predict(x).reshape(n, -1).argmax(axis=1)
    return x, y, "random input codes, labels = fault-free golden top-1"


def _record(
    ctx: Context, stage: str, started: float, inputs: list[Path], outputs: list[Path], **extra: Any
) -> None:
    ctx.run.record(
        stage,
        inputs=inputs,
        outputs=outputs,
        config=ctx.cfg.model_dump(),
        seed=ctx.cfg.seed,
        started=started,
        extra=extra or None,
    )


# --------------------------------------------------------------------------- stages


def stage_train(ctx: Context) -> dict[str, Any]:
    """Train the float model (built-in designs only)."""
    t0 = time.time()
    if ctx.external:
        log.info("train: skipped for an external model (%s)", ctx.cfg.onnx)
        return {"skipped": "external model"}
    from edgeml.models import zoo

    sp, data = spec(ctx), dataset(ctx)
    model = zoo.train_float(sp, data, _epochs(ctx, "float"), seed=ctx.cfg.seed)
    metrics = zoo.evaluate(sp, model, data.x_test, sp.targets("test", data))
    out = ctx.run.file("float.pt")
    zoo.save_checkpoint(sp, model, out, {"metrics": metrics})
    info = {"metric": sp.primary, "float": metrics[sp.primary], "float_metrics": metrics}
    info.update({f"float_{k}": v for k, v in metrics.items()})
    write_json(ctx.run.file("train.json"), info)
    _record(ctx, "train", t0, [], [out, ctx.run.file("train.json")], **info)
    log.info("train: float test %s %.4f", sp.primary, metrics[sp.primary])
    return info


def stage_compress(ctx: Context) -> dict[str, Any]:
    """Quantization-aware training from the float weights, then magnitude pruning + fine-tune.

    With ``compress.low_rank`` (or the design's ``low_rank``) the float model is first
    factorised by randomized SVD and fine-tuned (``lowrank_float.pt``), and the QAT twin
    is built with the same factors.
    """
    t0 = time.time()
    if ctx.external:
        return {"skipped": "external model"}
    from edgeml.models import zoo

    sp, data = spec(ctx), dataset(ctx)
    fpath = ctx.run.require("float.pt")
    float_model, _, _ = zoo.load_checkpoint(fpath)
    c = ctx.cfg.compress
    y_test = sp.targets("test", data)
    low: dict[str, Any] | None = None
    if c.low_rank if c.low_rank is not None else sp.low_rank:  # 0 turns a design's default off
        float_model, sp, low = _low_rank(ctx, sp, data, float_model)
    layer_bits = {name: lc.bit_width for name, lc in c.layers.items()}
    qat = zoo.train_qat(
        sp, data, float_model, c.bit_width, _epochs(ctx, "qat"), ctx.cfg.seed,
        layer_bits=layer_bits or None,
    )  # fmt: skip
    qat_m = zoo.evaluate(sp, qat, data.x_test, y_test)
    # the unpruned QAT model too: `edgeml analyze` compares float, QAT and pruned
    zoo.save_checkpoint(sp, qat, ctx.run.file("qat.pt"))
    target = c.sparsity if c.sparsity is not None else sp.sparsity
    pruned = zoo.prune(sp, data, qat, target, _epochs(ctx, "finetune"), ctx.cfg.seed)
    sparsity = zoo.edge_sparsity(sp, pruned)
    pruned_m = zoo.evaluate(sp, pruned, data.x_test, y_test)
    out = ctx.run.file("model.pt")
    zoo.save_checkpoint(sp, pruned, out, {"sparsity": sparsity})
    info: dict[str, Any] = {
        "metric": sp.primary,
        "qat": qat_m[sp.primary],
        "pruned": pruned_m[sp.primary],
        "qat_metrics": qat_m,
        "pruned_metrics": pruned_m,
        "sparsity": sparsity,
        "bit_width": c.bit_width,
    }
    if layer_bits:
        info["layer_bits"] = layer_bits
    if low is not None:
        info["low_rank"] = low
    info.update({f"qat_{k}": v for k, v in qat_m.items()})
    info.update({f"pruned_{k}": v for k, v in pruned_m.items()})
    write_json(ctx.run.file("compress.json"), info)
    outputs = [out, ctx.run.file("qat.pt"), ctx.run.file("compress.json")]
    if low is not None:
        outputs.append(ctx.run.file("lowrank_float.pt"))
    _record(ctx, "compress", t0, [fpath], outputs, **info)
    log.info(
        "compress: %s QAT %.4f, pruned(%.0f%%) %.4f",
        sp.primary,
        info["qat"],
        100 * sparsity,
        info["pruned"],
    )
    return info


def _low_rank(ctx: Context, sp: Any, data: Any, float_model: Any) -> tuple[Any, Any, dict]:
    """Factorise the float model by randomized SVD and fine-tune it (``lowrank_float.pt``).

    Returns the factorised float model, the spec whose ``build_qat`` builds the matching
    factorised QAT twin, and what ``compress.json`` records under ``low_rank``
    (:func:`edgeml.lowrank.factorize_design`).
    """
    from edgeml import lowrank
    from edgeml.models import zoo

    c = ctx.cfg.compress
    setting = c.low_rank if c.low_rank is not None else sp.low_rank
    fact, sp_lr, info = lowrank.factorize_design(
        sp, data, float_model, setting, _epochs(ctx, "finetune"), seed=ctx.cfg.seed
    )
    zoo.save_checkpoint(sp, fact, ctx.run.file("lowrank_float.pt"), {"low_rank_setting": setting})
    log.info(
        "compress: low rank %s: ranks %s, %d -> %d weights, float %s %.4f -> %.4f (fine-tuned)",
        setting, info["ranks"], info["weights_before"], info["weights_after"], sp.primary,
        info["float_factorised"], info["float_finetuned"],
    )  # fmt: skip
    return fact, sp_lr, info


def stage_export(ctx: Context) -> dict[str, Any]:
    """Export to QONNX and clean it (built-in), or clean a user's QONNX file (external)."""
    t0 = time.time()
    from edgeml.export import export_qonnx

    out = ctx.run.file("model.qonnx.onnx")
    ctx.run.path.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    produced: list[Path] = []
    if ctx.external:
        cleaned, ing = ingest_external(ctx.cfg, ctx.run.path)
        cleaned.save(str(out))
        write_json(ctx.run.file(INGEST_JSON), ing)
        inputs = [Path(ctx.cfg.keras or ctx.cfg.onnx or "")]
        produced = [ctx.run.file(INGEST_JSON), *(ctx.run.file(f) for f in ing["files"])]
        extra = {"ingest_changes": ing["changes"], "input_precision": ing["input_precision"]}
    else:
        from edgeml.models import zoo

        mpath = ctx.run.require("model.pt")
        model, _, sp = zoo.load_checkpoint(mpath)
        export_qonnx(sp.edge(model), (1, *sp.input_shape), out)
        inputs = [mpath]
    if ctx.cfg.compress.min_widths:
        produced.append(_minimize_widths(ctx, out))
    else:
        ctx.run.file(MINWIDTH_JSON).unlink(missing_ok=True)  # a previous export's
    ctx.results.pop("golden", None)
    g = ctx.golden()  # compile now: unsupported ops fail here, at export
    summary = g.summary()
    ctx.run.file("golden.txt").write_text(summary + "\n" + "\n".join(g.notes) + "\n")
    g.save(ctx.run.file(GOLDEN_IR))  # the integer IR that ships; verify checks it against the QONNX
    outputs = [out, ctx.run.file("golden.txt"), ctx.run.file(GOLDEN_IR), *produced]
    _record(ctx, "export", t0, inputs, outputs, **extra)
    log.info("export: golden model\n%s", summary)
    return {"golden": summary, "notes": g.notes}


#: What ``compress.min_widths`` changed at export (per-layer bias widths, stored bits).
MINWIDTH_JSON = "minwidth.json"
#: Training inputs whose accumulator ranges ``minwidth.json`` reports beside the worst case.
MINWIDTH_CALIB = 4096


def _minimize_widths(ctx: Context, path: Path) -> Path:
    """Rewrite the exported QONNX with exact minimal bias widths; returns ``minwidth.json``."""
    import onnx

    from edgeml.golden import GoldenModel
    from edgeml.minwidth import format_table, hls_accum_settings, minimize_widths

    g0 = GoldenModel.from_onnx(path)
    calib = None
    if not ctx.external:  # the accumulators' observed range too (the training inputs)
        calib = g0.quantize_input(dataset(ctx).x_train[:MINWIDTH_CALIB])
    hls_in = g0.input_type if ctx.cfg.hls.enabled else None  # hls4ml's inferred accumulators
    model, report = minimize_widths(path, calib_x=calib, hls_input_type=hls_in)
    onnx.save(model, str(path))
    out = ctx.run.file(MINWIDTH_JSON)
    write_json(out, {**report.to_dict(), "hls_accum": hls_accum_settings(report)})
    log.info("export: minimal widths\n%s", format_table(report))
    return out


def minwidth_accum_types(run: RunFolder) -> dict[str, str] | None:
    """The interval-minimal hls4ml accumulator types export recorded (``compress.min_widths``)."""
    path = run.file(MINWIDTH_JSON)
    return read_json(path).get("hls_accum") if path.is_file() else None


#: What ingestion of a model made elsewhere changed (``ingest.json``) and the files it wrote.
INGEST_JSON = "ingest.json"
INGESTED = "model.ingested.onnx"
FROM_KERAS = "model.from_keras.onnx"


def ingest_external(cfg: FlowConfig, folder: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """A model made elsewhere (``cfg.onnx`` or ``cfg.keras``) as a cleaned QONNX ModelWrapper.

    Keras models are converted to QONNX first (:func:`edgeml.keras_frontend.keras_to_qonnx`);
    then :func:`edgeml.ingest.normalise` renames old domains, reads datatype annotations,
    fixes the batch dimension, gives a float input its precision (``ingest.input_type``,
    ``ingest.calib``) and cuts at ``ingest.output``; then :func:`edgeml.export.clean_qonnx`.
    With ``folder``, the intermediate models are written there (``model.from_keras.onnx``,
    ``model.ingested.onnx``). Returns the model and what ``ingest.json`` records.
    """
    from edgeml.export import clean_qonnx
    from edgeml.ingest import normalise

    ing_cfg = cfg.ingest
    calib = _load_calib(ing_cfg.calib) if ing_cfg.calib else None
    changes: list[str] = []
    files: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(folder) if folder is not None else Path(tmp)
        if cfg.keras:
            from edgeml.keras_frontend import keras_to_qonnx

            conv = keras_to_qonnx(cfg.keras, where / FROM_KERAS)
            changes += conv.changes + [f"note: {n}" for n in conv.notes]
            src: Path = where / FROM_KERAS
            files.append(FROM_KERAS)
        else:
            src = Path(cfg.onnx or "")
        ing = normalise(src, input_type=ing_cfg.input_type, calib=calib, output=ing_cfg.output)
        changes += ing.changes
        if folder is not None:
            ing.save(where / INGESTED)
            files.append(INGESTED)
        cleaned = clean_qonnx(ing.model)
    return cleaned, {
        "source": cfg.keras or cfg.onnx,
        "source_kind": "keras" if cfg.keras else "onnx",
        "changes": changes,
        "input_precision": ing.input_precision,
        "output_cut_at": ing_cfg.output,
        "files": files,
    }


def _load_calib(path: str) -> np.ndarray:
    """Calibration inputs from a ``.npy`` file (no pickles); a bad file names the field."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config field 'ingest.calib' (--calib): {p} is not a file")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise CorruptFileError(
            f"calibration file {p} cannot be read as a .npy array ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf" or arr.size == 0:
        raise ConfigError(
            f"config field 'ingest.calib' (--calib): {p} must hold a non-empty numeric array, "
            f"got {getattr(arr, 'dtype', type(arr).__name__)}"
        )
    return arr.astype(np.float64)


def stage_convert(ctx: Context) -> dict[str, Any]:
    """hls4ml Vitis project (io_parallel) at hls_projects/<design>/, C-sim compiled.

    hls4ml's QONNX front end is used where it converts and its C-sim equals the
    golden model on a quick random check; otherwise the project is built from
    the golden IR (:func:`edgeml.hls_ir.convert_for_golden`). ``hls.json``
    records the ``route`` and, for the golden-IR route, why the QONNX route was
    not used (``route_reason``).
    """
    t0 = time.time()
    if not ctx.cfg.hls.enabled:
        return {"skipped": "hls disabled in config"}
    from edgeml.hls_ir import convert_for_golden

    g = ctx.golden()
    onnx_path = ctx.run.require("model.qonnx.onnx")
    h = ctx.cfg.hls
    ctx.run.file("hls.json").unlink(missing_ok=True)  # a new project: do not reuse the old path
    hls_dir = ctx.hls_dir
    from edgeml.progress import timed_bar

    try:
        with timed_bar("convert: hls4ml project + C-sim compile", None, ctx.progress):
            design, route = convert_for_golden(
                onnx_path,
                g,
                hls_dir,
                name=design_identifier(ctx.name),
                part=h.part,
                clock_period=h.clock_period,
                reuse_factor=h.reuse_factor,
                accum_types=minwidth_accum_types(ctx.run),
            )
    except (UnsupportedOpError, ConfigError) as exc:
        # The golden model and the RTL still cover this graph; record why hls4ml
        # could not, so verify and the report say so instead of silently skipping.
        write_json(ctx.run.file("hls.json"), {"error": str(exc)})
        _record(ctx, "convert", t0, [onnx_path], [ctx.run.file("hls.json")], error=str(exc))
        raise
    ctx.results["hls"] = design
    info = {
        # relative to the run folder, so the run is found from any working directory
        "project_dir": os.path.relpath(hls_dir, ctx.run.path.resolve()),
        "project_dir_abs": str(hls_dir),
        "name": design.name,
        "onnx_sha256": sha256(onnx_path),
        **route,
        "seconds": round(time.time() - t0, 2),
    }
    if route["route_reason"]:
        log.warning("convert: %s; the project was built from the golden IR", route["route_reason"])
    write_json(ctx.run.file("hls.json"), info)
    _record(
        ctx, "convert", t0, [onnx_path], [ctx.run.file("hls.json"), *hls_shipped_files(hls_dir)]
    )
    return info


def recorded_hls_project(run_dir: str | Path) -> Path | None:
    """The hls4ml project ``hls.json`` records for a run (relative to it), or None."""
    info_path = Path(run_dir) / "hls.json"
    if not info_path.is_file():
        return None
    info = read_json(info_path)
    if not isinstance(info, dict) or "project_dir" not in info:
        return None
    return (Path(run_dir) / info["project_dir"]).resolve()


def hls_shipped_files(project_dir: Path) -> list[Path]:
    """The files of an hls4ml project that a user takes to Vitis (and C-sim compiles).

    Everything but the C-sim libraries, the test-bench data and edgeml's own
    metadata, which edgeml rewrites when it recompiles a moved project.
    """
    skip_dirs = {"tb_data", "__pycache__"}
    return [
        p
        for p in sorted(Path(project_dir).rglob("*"))
        if p.is_file()
        and p.suffix not in (".so", ".o")
        and p.name != "edgeml_hls.json"
        and not skip_dirs & set(p.relative_to(project_dir).parts)
    ]


def _hls_design(ctx: Context) -> Any:
    """The run's hls4ml project as it is on disk (C-sim recompiled if its sources changed).

    A project built from another model than this run's is refused: its
    ``edgeml_hls.json`` records the SHA-256 of the QONNX it was converted from,
    which must be the run's ``model.qonnx.onnx`` (as it is now, or as the export
    stage recorded it, in which case the QONNX drifted and verify reports it).
    """
    if "hls" not in ctx.results:
        from edgeml.hls import METADATA_FILE, HlsDesign

        info = read_json(ctx.run.require("hls.json"))
        if "error" in info:
            raise UnsupportedOpError(info["error"])
        pdir = ctx.hls_dir
        meta_path = pdir / METADATA_FILE
        if not meta_path.is_file():
            raise MissingRunError(
                f"the hls4ml project of run '{ctx.run.path}' is missing: hls.json points to "
                f"'{pdir}', which holds no {METADATA_FILE}. Re-run `edgeml convert --out "
                f"{ctx.run.path}` to write it again."
            )
        built_from = read_json(meta_path).get("onnx_sha256")
        onnx_path = ctx.run.require("model.qonnx.onnx")
        allowed = {sha256(onnx_path), ctx.run.recorded_hash("export", "model.qonnx.onnx")}
        if built_from not in allowed:
            raise ConfigError(
                f"the hls4ml project '{pdir}' was converted from another model (QONNX sha256 "
                f"{str(built_from)[:12]}...), not from this run's model.qonnx.onnx "
                f"({sha256(onnx_path)[:12]}...); refusing to verify one model against another's "
                f"firmware. Re-run `edgeml convert --out {ctx.run.path}`."
            )
        ctx.results["hls"] = HlsDesign.load(pdir)
    return ctx.results["hls"]


def _rtl_design(ctx: Context) -> Any:
    if "rtl" not in ctx.results:
        from edgeml.rtl import generate_rtl

        g = ctx.golden()
        r = ctx.cfg.rtl
        design = generate_rtl(
            g,
            ctx.run.file("rtl"),
            design_identifier(ctx.name),
            pipelined=r.pipelined,
            latency_cutoff=r.latency_cutoff,
        )
        design.build()
        ctx.results["rtl"] = design
    return ctx.results["rtl"]


def stage_rtl(ctx: Context) -> dict[str, Any]:
    """Generate Verilog, build it with Verilator, run the cocotb bench on a few hundred vectors."""
    t0 = time.time()
    if not ctx.cfg.rtl.enabled:
        return {"skipped": "rtl disabled in config"}
    g = ctx.golden()
    from edgeml.resources import estimate_rtl_cost

    cost = estimate_rtl_cost(g)
    limit = ctx.cfg.rtl.max_build_seconds
    log.info("rtl: %s", cost.describe())
    if cost.seconds > limit and not ctx.force_rtl:
        why = (
            f"too big for the RTL route here: {cost.describe()}, above rtl.max_build_seconds "
            f"= {limit:,.0f}. The hls4ml project (convert stage) is this model's firmware "
            "route; to build the Verilog anyway pass --force-rtl (or raise "
            "rtl.max_build_seconds), or prune / quantize harder (the build grows with "
            "nonzero weights x weight bits)"
        )
        log.warning("rtl: skipped, %s", why)
        info = {"skipped": why, "estimate": {**asdict(cost), "seconds": cost.seconds}}
        write_json(ctx.run.file("rtl.json"), info)
        _record(ctx, "rtl", t0, [ctx.run.require("model.qonnx.onnx")], [ctx.run.file("rtl.json")])
        return info
    from edgeml.progress import timed_bar

    with timed_bar("rtl: da4ml trace + Verilator build", cost.seconds, ctx.progress):
        design = _rtl_design(ctx)
    info: dict[str, Any] = {
        "estimate": {**asdict(cost), "seconds": cost.seconds},
        "top": design.top,
        "latency_cycles": design.latency,
        "verilog": [str(p) for p in design.verilog_files],
        "memfiles": [str(p) for p in design.mem_files],
        "build_seconds": round(time.time() - t0, 2),
    }
    n = ctx.cfg.rtl.cocotb_vectors
    if n:
        from edgeml.rtl_sim.runner import run_cocotb

        x, _ = verify_inputs(ctx, n_random=n)
        x = x[-n:]
        with timed_bar(f"rtl: cocotb bench ({n} vectors)", None, ctx.progress):
            res = run_cocotb(design, x, g.predict(x), ctx.run.file("rtl") / "cocotb")
        info["cocotb"] = {
            "vectors": res.n_vectors,
            "mismatches": res.n_mismatches,
            # the simulation loop only; `seconds` is the whole bench run (simulator and
            # cocotb start-up included), `build_seconds` the Verilator build (0 if cached)
            "vectors_per_s": res.vectors_per_s,
            "seconds": res.seconds,
            "build_seconds": res.build_seconds,
        }
        if res.n_mismatches:
            write_json(ctx.run.file("rtl.json"), info)
            raise MismatchError(
                f"cocotb bench: {res.n_mismatches} of {res.n_vectors} vectors differ from the golden model"
            )
    try:
        from edgeml.resources import estimate_resources

        with timed_bar("rtl: yosys resource estimate", None, ctx.progress):
            est = estimate_resources(
                list(design.verilog_files),
                design.top,
                timeout_s=ctx.cfg.rtl.resources_timeout,
                mem_files=design.mem_files,
            )
        info["resources"] = (
            None
            if est is None
            else {
                "lut": est.lut,
                "ff": est.ff,
                "dsp": est.dsp,
                "bram": est.bram,
                "tool": est.tool,
                "seconds": est.seconds,
            }
        )
    except EdgemlError as exc:
        info["resources"] = {"error": str(exc)}
    write_json(ctx.run.file("rtl.json"), info)
    _record(
        ctx,
        "rtl",
        t0,
        [ctx.run.require("model.qonnx.onnx")],
        [
            ctx.run.file("rtl.json"),
            # every file that ships: Verilog, table memories, timing constraints
            *sorted(p for p in design.src_dir.rglob("*") if p.is_file()),
        ],
    )
    return info


def verify_inputs(ctx: Context, n_random: int | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """The verification vectors of a run (test set codes, random codes, corner cases) and their counts."""
    from edgeml.verify import verification_vectors

    g = ctx.golden()
    data = None
    if not ctx.external:
        data = g.quantize_input(dataset(ctx).x_test)
    n = ctx.cfg.verify.n_random if n_random is None else n_random
    return verification_vectors(g, data, n, ctx.cfg.verify.seed)


def stage_verify(ctx: Context) -> dict[str, Any]:
    """Check the artifacts on disk: golden vs golden IR, hls4ml headers and C-sim, RTL, trained model.

    Raises :class:`MismatchError` (exit 3) after writing ``verify.json`` when a
    level disagrees with the golden model; see :func:`verify_artifacts`.
    """
    info = verify_artifacts(ctx)
    if not info["passed"]:
        bad = [lv for lv in info["levels"] if lv["status"] == "FAIL"]
        raise MismatchError(
            "; ".join(
                f"{lv['level']}: {lv['mismatching_vectors']}/{lv['vectors']} "
                f"{lv['extra'].get('unit', 'vectors')} differ, "
                f"first divergent layer {lv['first_divergent_layer']}"
                for lv in bad
            )
            + f" (see {ctx.run.file('verify.json')})"
        )
    return info


def verify_run(
    run_dir: str | Path,
    *,
    n_random: int | None = None,
    progress: bool = False,
    rtl_cache: bool = True,
) -> dict[str, Any]:
    """Verify a run folder's artifacts as they are on disk; return ``verify.json``'s content.

    The library form of ``edgeml verify --out RUN`` for tools that want the
    result rather than an exit code (mutation testing): it never raises on a
    mismatch, only on user errors (missing or corrupt artifacts).
    """
    return verify_artifacts(run_context(run_dir, n_random, progress), rtl_cache=rtl_cache)


def run_context(
    run_dir: str | Path, n_random: int | None = None, progress: bool = False
) -> Context:
    """The :class:`Context` of an existing run folder, from its saved ``config.json``."""
    from edgeml.config import apply_overrides, validate_config

    run = RunFolder(Path(run_dir))
    cfg = validate_config(read_json(run.require("config.json")))
    if n_random is not None:
        cfg = apply_overrides(cfg, {"verify.n_random": n_random})
    return Context(run=run, cfg=cfg, progress=progress)


def verify_artifacts(ctx: Context, *, rtl_cache: bool = True) -> dict[str, Any]:
    """Compare every level, built from the files on disk, with the golden model; write verify.json.

    Nothing is regenerated in the run folder. The oracle is the golden model
    compiled from the run's ``model.qonnx.onnx``. Levels: the shipped golden IR
    (``golden.npz``); the hls4ml weight headers (what Vitis compiles) against the
    ``.txt`` files C-sim loads, element for element; hls4ml C-sim, recompiled when
    its sources changed; the shipped Verilog built by Verilator as it is; the
    trained model. Files whose SHA-256 differs from the manifest are listed under
    ``drift``: a drifted design that still matches PASSes with the drift named.
    """
    from edgeml import verify as V

    t0 = time.time()
    drift = ctx.run.drift()
    for d in drift:
        log.warning(
            "verify: %s changed since the %s stage wrote it (sha256 %s..., recorded %s...)",
            d["file"],
            d["stage"],
            d["actual"][:12],
            d["recorded"][:12],
        )
    g = ctx.golden()
    x, counts = verify_inputs(ctx)
    t1 = time.perf_counter()
    ref = g.predict(x)
    golden_s = time.perf_counter() - t1
    ir_path = ctx.run.file(GOLDEN_IR)
    ir = GoldenModel.load(ir_path) if ir_path.exists() else None  # a damaged one is refused
    ir_changes = ir_differences(g, ir) if ir is not None else []
    levels: list[V.LevelResult] = [_golden_ir_level(g, ir, ir_changes, x, ref)]

    hls_error = None
    if ctx.cfg.hls.enabled and ctx.run.file("hls.json").exists():
        hls_error = read_json(ctx.run.file("hls.json")).get("error")
    if hls_error:
        levels.append(
            V.skipped("hls4ml C-sim", f"hls4ml could not convert this graph: {hls_error}")
        )
    elif ctx.cfg.hls.enabled:
        hls = _hls_design(ctx)
        levels.append(_header_level(ctx, hls))
        res = V.run_level(
            "hls4ml C-sim",
            g,
            x,
            ref,
            hls.predict_int,
            lambda xc: hls_trace_codes(ctx, hls, xc),
        )
        if hls.rebuilt_because:
            res.note = f"C-sim recompiled: {hls.rebuilt_because}"
        levels.append(res)
    else:
        levels.append(V.skipped("hls4ml C-sim", "disabled in config"))
    if ctx.cfg.hls.enabled:  # the Catapult project, once `edgeml implement` wrote one
        from edgeml.hls_catapult import verify_level_for_run

        cat = verify_level_for_run(ctx, x, ref)
        if cat is not None:
            levels.append(cat)

    rtl_changes: list[dict[str, Any]] = []
    rtl_skipped = None
    if ctx.cfg.rtl.enabled and ctx.run.file("rtl.json").exists():
        rtl_skipped = read_json(ctx.run.file("rtl.json")).get("skipped")
    if rtl_skipped:
        levels.append(V.skipped("RTL (Verilator)", rtl_skipped))
    elif ctx.cfg.rtl.enabled:
        lv, rtl_changes = _shipped_rtl_level(ctx, g, ir, ir_changes, x, ref, rtl_cache, drift)
        levels.append(lv)
    else:
        levels.append(V.skipped("RTL (Verilator)", "disabled in config"))

    if ctx.external:
        n_ref = min(len(x), ORIGINAL_VECTORS)
        levels.append(_qonnx_reference(ctx, g, x[:n_ref], ref[:n_ref]))
        levels.append(_original_reference(ctx, g, x[:n_ref], ref[:n_ref]))
    else:
        levels.append(_brevitas_level(ctx, g, x, ref))

    ok = all(lv.status != "FAIL" for lv in levels if lv.level not in REAL_VALUED_LEVELS)
    info = {
        "vectors": len(x),
        "sources": counts,
        "golden_vectors_per_s": round(len(x) / max(golden_s, 1e-9), 1),
        "levels": [lv.to_dict() for lv in levels],
        "drift": drift,
        "rtl_source_changes": rtl_changes,
        "approximations": g.notes,
        "passed": ok,
    }
    write_json(ctx.run.file("verify.json"), info)
    _record(
        ctx,
        "verify",
        t0,
        [ctx.run.require("model.qonnx.onnx")],
        [ctx.run.file("verify.json")],
        passed=ok,
    )
    for lv in levels:
        log.info(
            "verify: %-22s %s  %d/%d %s mismatch%s",
            lv.level,
            lv.status,
            lv.mismatching_vectors,
            lv.vectors,
            lv.extra.get("unit", "vectors"),
            f", first divergent layer {lv.first_divergent_layer}"
            if lv.first_divergent_layer
            else "",
        )
    return info


def _op_label(g: GoldenModel, name: str) -> str | None:
    """``"MatMul_1 (dense)"`` for a golden op, or an hls4ml layer named after one (``Dense_MatMul_1``)."""
    for op in g.ops:
        if name == op.name or name.endswith("_" + op.name):
            return op.label
    return None


def ir_differences(g: GoldenModel, ir: GoldenModel) -> list[str]:
    """The constants in which two golden IRs differ, ``<op>.<field>[index]`` (first index)."""
    if [(op.name, op.kind) for op in ir.ops] != [(op.name, op.kind) for op in g.ops]:
        return ["graph structure"]
    mine, theirs = g.constants(), ir.constants()
    changed = []
    for key in mine:
        a, b = mine[key], theirs.get(key)
        if b is None or a.shape != b.shape or not np.array_equal(a, b):
            where = ""
            if b is not None and a.shape == b.shape:
                idx = np.argwhere(a != b)
                where = f"[{', '.join(map(str, idx[0]))}]" if idx.size else ""
            changed.append(f"{key}{where}")
    return changed


def _golden_ir_level(
    g: GoldenModel,
    ir: GoldenModel | None,
    changed: list[str],
    x: np.ndarray,
    ref: np.ndarray,
) -> Any:
    """The shipped golden IR (``golden.npz``) run on the vectors, against the QONNX's golden model.

    ``changed`` is :func:`ir_differences` of the two.
    """
    from edgeml import verify as V

    level = f"golden IR ({GOLDEN_IR})"
    if ir is None:
        return V.skipped(level, f"no {GOLDEN_IR} in the run folder (re-run `edgeml export`)")
    if changed == ["graph structure"]:
        res = V.LevelResult(level, len(x), len(x), 0, 0, status="FAIL")
        res.note = "its ops differ from the model.qonnx.onnx's (another model's IR)"
        res.first_divergent_layer = "graph structure"
        return res
    try:
        res = V.run_level(level, g, x, ref, ir.predict, lambda xc: ir.run(xc, trace=True)[1])
    except (ValueError, TypeError, IndexError, AttributeError, ArithmeticError) as exc:
        # an IR that loads but cannot execute (a damaged constant's shape or type) fails
        res = V.LevelResult(level, len(x), len(x), 0, 0, status="FAIL")
        res.note = f"the golden IR does not run: {type(exc).__name__}: {exc}"
    if changed:
        res.extra["changed_constants"] = changed
        if res.passed:
            res.note = (
                f"constants differ from what the QONNX compiles to ({', '.join(changed[:5])}) "
                "but no output changes on these vectors"
            )
        elif res.first_divergent_layer and res.first_divergent_layer.startswith("output"):
            op = changed[0].split(".")[0]
            res.first_divergent_layer = _op_label(g, op) or res.first_divergent_layer
    return res


def _header_level(ctx: Context, hls: Any) -> Any:
    """Every weights header array (what Vitis synthesises) equals the .txt that C-sim loads."""
    from edgeml import verify as V
    from edgeml.hls import check_weight_headers

    t0 = time.perf_counter()
    n, bad = check_weight_headers(hls.project_dir, hls.name)
    res = V.LevelResult(
        "hls4ml weight headers",
        n,
        len(bad),
        len(bad),
        0,
        status="FAIL" if bad else "PASS",
        seconds=time.perf_counter() - t0,
        note=f"{n} header elements equal the .txt values C-sim loads"
        if not bad
        else "; ".join(b.describe() for b in bad[:5]),
    )
    res.extra["unit"] = "elements"
    if bad:
        g = ctx.golden()
        res.first_divergent_layer = _op_label(g, bad[0].layer) or bad[0].layer
        res.first_mismatch_vector = None
        res.extra["mismatches"] = [dataclasses.asdict(b) for b in bad[:100]]
    return res


def _source_changes(shipped: Path, generated: Path, prefix: str) -> list[dict[str, Any]]:
    """Files under ``shipped`` that differ from ``generated``, each with its first differing line."""
    rels = {p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file()}
    rels |= {p.relative_to(generated) for p in generated.rglob("*") if p.is_file()}
    out: list[dict[str, Any]] = []
    for rel in sorted(rels):
        a, b = shipped / rel, generated / rel
        name = f"{prefix}/{rel}"
        if not a.is_file() or not b.is_file():
            out.append({"file": name, "change": "missing" if not a.is_file() else "added"})
            continue
        ta, tb = a.read_bytes(), b.read_bytes()
        if ta == tb:
            continue
        la = ta.decode(errors="replace").splitlines()
        lb = tb.decode(errors="replace").splitlines()
        i = next(
            (k for k, (u, v) in enumerate(zip(la, lb, strict=False)) if u != v),
            min(len(la), len(lb)),
        )
        out.append(
            {
                "file": name,
                "change": "edited",
                "line": i + 1,
                "shipped": la[i].strip()[:160] if i < len(la) else "<end of file>",
                "generated": lb[i].strip()[:160] if i < len(lb) else "<end of file>",
            }
        )
    return out


def _shipped_rtl_level(
    ctx: Context,
    g: GoldenModel,
    ir: GoldenModel | None,
    ir_changes: list[str],
    x: np.ndarray,
    ref: np.ndarray,
    rtl_cache: bool,
    drift: list[dict[str, str]],
) -> tuple[Any, list[dict[str, Any]]]:
    """Build the Verilog that ships (``rtl/src``) as it is, run it, and compare.

    What the Verilog should be is generated into a temporary folder, never over
    it: from the golden IR the rtl stage used (``golden.npz``) and, if that
    differs, from the golden model of the QONNX as it is now. When the shipped
    sources equal one of them, that model's da4ml trace names any divergent
    layer (so a changed model is named at its layer even though the Verilog is
    untouched). When they equal neither and ``rtl/src`` drifted, the edit is
    listed (file, line, shipped and generated text) and named by the golden op
    its wire belongs to.
    """
    from edgeml import verify as V
    from edgeml.rtl import RtlBuildError, RtlDesign, generate_rtl

    shipped = RtlDesign.load(ctx.run.require("rtl/edgeml_rtl.json").parent)
    models = [("golden.npz", ir)] if ir is not None else []
    if ir is None or ir_changes:
        models.append(("the QONNX's golden model", g))
    found = None
    with tempfile.TemporaryDirectory(prefix="edgeml_rtl_ref_") as tmp:
        for k, (source, model) in enumerate(models):
            try:
                regen = generate_rtl(
                    model,
                    Path(tmp) / f"ref{k}",
                    shipped.name,
                    pipelined=shipped.pipelined,
                    latency_cutoff=shipped.latency_cutoff,
                )
            except EdgemlError as exc:  # a damaged golden.npz may not trace; its level fails
                log.warning("verify: cannot generate the Verilog of %s: %s", source, exc)
                continue
            changes = _source_changes(shipped.src_dir, regen.src_dir, "rtl/src")
            found = found or (source, model, regen, changes)  # the first: what the rtl stage used
            if not changes:
                found = (source, model, regen, changes)
                break
        if found is None:  # nothing regenerates (e.g. an unusable saved cut): still run it
            source, regen, changes, namer = "nothing", None, [], None
        else:
            source, model, regen, changes = found
            rtl_edited = any(d["file"].startswith("rtl/") for d in drift)
            # an edit is named by simulating both netlists (read now, while the generated one exists)
            namer = _EditNamer(regen, shipped, model, x) if changes and rtl_edited else None
    edited = [c for c in changes if c["change"] == "edited"]
    try:
        shipped.build(use_cache=rtl_cache)
    except RtlBuildError as exc:
        res = V.LevelResult("RTL (Verilator)", len(x), len(x), 0, 0, status="FAIL")
        res.note = f"the shipped Verilog does not build: {str(exc)[-400:]}"
        res.first_divergent_layer = (namer and namer.label(edited)) or "build"
        return res, changes
    if regen is not None and not changes:
        shipped.traced = regen.traced  # the sources are that model's: its trace names the layer
    res = V.run_level(
        "RTL (Verilator)", g, x, ref, shipped.predict_int, shipped.traced and shipped.trace_int
    )
    # what `edgeml implement` checks: it places and routes only the Verilog verify checked
    res.extra["verilog_sha256"] = shipped.compute_hash()
    if changes:
        files = ", ".join(c["file"] for c in changes)
        res.note = f"sources differ from what {source} generates: {files}"
        if not res.passed and namer is not None:
            res.first_divergent_layer = namer.label(edited) or res.first_divergent_layer
    elif regen is None:
        res.note = (
            "the Verilog could not be regenerated from the model, so a divergence is not named"
        )
    elif source != models[-1][0]:
        res.note = f"the Verilog is what {source} generates; the model changed since"
    return res, changes


class _EditNamer:
    """Names an edit of the shipped Verilog: the golden op it first changes, its file and line.

    Both netlists (the generated and the shipped one) are run by
    :class:`edgeml.netlist.NetlistSim` on verification vectors; the first golden
    op (in graph order) whose carrying signal differs is the layer
    (:meth:`edgeml.netlist.LayerMap.first_layer`). Where the interpreter does not
    model a construct (multipliers, lookup tables), the edited line's wire is
    placed by :func:`edgeml.rtl.locate_wire` instead.
    """

    def __init__(self, regen: Any, shipped: Any, model: GoldenModel, x: np.ndarray) -> None:
        from edgeml.netlist import LayerMap, NetlistSim

        self.regen, self.model = regen, model
        self.layer: str | None = None
        try:
            ref, got = NetlistSim.from_design(regen), NetlistSim.from_design(shipped)
            self.layer = LayerMap(model, x, ref).first_layer(ref, got, x[:2048])
        except EdgemlError as exc:
            log.debug("verify: netlist simulation unavailable (%s); placing the wire", exc)

    def label(self, edited: list[dict[str, Any]]) -> str | None:
        from edgeml.rtl import locate_wire, stage_files

        if not edited:
            return self.layer
        order = [p.name for p in stage_files(self.regen)]
        ranked = sorted(
            edited,
            key=lambda c: (
                order.index(Path(c["file"]).name) if Path(c["file"]).name in order else 1 << 30
            ),
        )
        c = ranked[0]
        where = f"{c['file']}:{c['line']} `{c['shipped']}` (generated: `{c['generated']}`)"
        layer = self.layer or locate_wire(self.regen, self.model, c["file"], c["generated"])
        return f"{layer} at {where}" if layer else where


def hls_trace_codes(ctx: Context, hls: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """hls4ml per-layer codes keyed by golden tensor name.

    hls4ml names layers after ONNX nodes (``Dense_MatMul_1`` for ``MatMul_1``)
    and fuses a ReLU with the Quant after it; such a layer is matched to the
    golden Requant output when its type has that Requant's binary point.
    """
    from edgeml.rtl import LAYOUT_KINDS

    g = ctx.golden()
    tr = hls.trace_int(x, codes=False)
    types = getattr(hls, "layer_types", {}) or {}
    out: dict[str, np.ndarray] = {}
    for i, op in enumerate(g.ops):
        if op.kind in LAYOUT_KINDS:
            continue
        hits = [k for k in tr if k == op.name or k.endswith("_" + op.name)]
        if len(hits) != 1:
            continue
        target = op
        nxt = g.ops[i + 1] if i + 1 < len(g.ops) else None
        t = types.get(hits[0])
        if op.kind == "relu" and nxt is not None and nxt.kind == "requant" and t is not None:
            if t.frac == g.tensors[nxt.output].type.frac:
                target = nxt
        shape = g.tensors[target.output].shape
        v = np.asarray(tr[hits[0]], np.float64)
        if v.size != len(x) * int(np.prod(shape)):
            continue
        info = g.tensors[target.output]
        if info.pot or t is None:
            q = v.reshape(len(x), *shape) / info.scale
        else:  # per-channel / real scale: the layer holds the raw code at its type's LSB
            q = np.ldexp(v.reshape(len(x), *shape), t.frac)
        out[target.output] = np.rint(q).astype(np.int64)
    return out


def _brevitas_level(ctx: Context, g: GoldenModel, x: np.ndarray, ref: np.ndarray) -> Any:
    """The trained Brevitas model on the same inputs, converted to output codes exactly."""
    from edgeml import verify as V
    from edgeml.brevitas_trace import torch_trace_codes
    from edgeml.models import training, zoo

    full, _, sp = zoo.load_checkpoint(ctx.run.require("model.pt"))
    model = sp.edge(full)
    scale = float(np.asarray(g.output_scale).reshape(-1)[0])
    off_grid = 0

    def predict(xc: np.ndarray) -> np.ndarray:
        nonlocal off_grid
        y = training.predict(model, xc.astype(np.float64) * g.input_real_scale) / scale
        q = np.rint(y)
        # exactness of the float->code conversion itself: torch outputs must lie on the grid
        off_grid += int(np.count_nonzero(q != y))
        return q.astype(np.int64)

    res = V.run_level(
        "trained Brevitas model",
        g,
        x,
        ref,
        predict,
        lambda xc: torch_trace_codes(model, xc.astype(np.float64) * g.input_real_scale, g),
    )
    res.extra["off_grid_outputs"] = off_grid
    return res


#: Vectors the real-valued references (QONNX execution, the original file) run on.
ORIGINAL_VECTORS = 2000
#: Levels that measure the fixed-point approximation of real scales; they never fail verify.
REAL_VALUED_LEVELS = ("QONNX reference (float)", "original model file")


def _original_outputs(ctx: Context, g: GoldenModel, x: np.ndarray) -> np.ndarray:
    """The user's original model (``--onnx`` file or ``--keras`` model) run on ``x``'s real values."""
    xr = x.astype(np.float64) * g.input_real_scale
    if ctx.cfg.keras:
        from edgeml.keras_frontend import load_keras_model

        model = load_keras_model(ctx.cfg.keras)
        if xr.ndim == 4:  # the QONNX input is NCHW; the Keras model takes NHWC
            xr = np.transpose(xr, (0, 2, 3, 1))
        y = model.predict(xr.astype(np.float32), verbose=0, batch_size=min(len(xr), 1024))
        return np.asarray(y, dtype=np.float64)
    from edgeml.export import parse_onnx
    from edgeml.reference import execute_original

    return execute_original(parse_onnx(ctx.cfg.onnx or ""), xr)


def _original_reference(ctx: Context, g: GoldenModel, x: np.ndarray, ref: np.ndarray) -> Any:
    """Agreement of the firmware's numbers with the user's original file, before any rewrite.

    Real-valued: differences come from fixed-point approximations of real scales or
    preprocessing (and a cut ``--output`` tail, where only top-1 is comparable).
    """
    from edgeml import verify as V

    level = "original model file"
    t0 = time.perf_counter()
    try:
        y = _original_outputs(ctx, g, x).reshape(len(x), -1)
    except Exception as exc:  # the reference is informative; it must not hide the real levels
        return V.skipped(
            level,
            f"could not execute the original model ({type(exc).__name__}: {str(exc)[:200]})",
        )
    gv = (ref.astype(np.float64) * np.asarray(g.output_scale, np.float64)).reshape(len(x), -1)
    cut = ctx.cfg.ingest.output
    if not cut and gv.shape == y.shape:
        return _real_valued_level(level, gv, y, time.perf_counter() - t0)
    agree = float(np.mean(gv.argmax(1) == y.argmax(1)))
    bad = int(np.sum(gv.argmax(1) != y.argmax(1)))
    res = V.LevelResult(
        level,
        len(x),
        bad,
        bad,
        0,
        status="PASS" if bad == 0 else "APPROX",
        seconds=time.perf_counter() - t0,
        note=f"argmax agreement {agree:.4f} (output cut at {cut!r}; values not comparable)",
    )
    res.extra = {"argmax_agreement": agree}
    return res


def _real_valued_level(level: str, gv: np.ndarray, y: np.ndarray, seconds: float) -> Any:
    """Golden's dequantized outputs ``gv`` against a real-valued reference ``y`` (N, ...):
    vectors and elements that differ, max difference, top-1 agreement. NaN (a non-finite
    reference output) is a difference, never a silent match."""
    from edgeml import verify as V

    n = len(gv)
    gv, y = gv.reshape(n, -1), y.reshape(n, -1)
    diff = np.abs(gv - y)
    differs = ~(diff == 0)
    nan = int(np.isnan(diff).sum())
    worst = float(np.nanmax(diff)) if diff.size and nan < diff.size else float("nan")
    agree = float(np.mean(gv.argmax(1) == y.argmax(1)))
    res = V.LevelResult(
        level,
        n,
        int(differs.any(axis=1).sum()),
        int(differs.sum()),
        0,
        status="PASS" if not differs.any() else "APPROX",
        seconds=seconds,
        note=f"max |real diff| {worst:.3g}, argmax agreement {agree:.4f}"
        + (f"; {nan} reference outputs are NaN" if nan else ""),
    )
    res.extra = {"max_real_diff": worst, "argmax_agreement": agree, "nan_outputs": nan}
    return res


def _qonnx_reference(ctx: Context, g: GoldenModel, x: np.ndarray, ref: np.ndarray) -> Any:
    """QONNX's own real-valued execution; differences come only from fixed-point scale approximations."""
    from edgeml.reference import execute_qonnx

    t0 = time.perf_counter()
    y = execute_qonnx(
        ctx.run.require("model.qonnx.onnx"), x.astype(np.float64) * g.input_real_scale
    )
    gv = ref.astype(np.float64) * np.asarray(g.output_scale, np.float64)
    return _real_valued_level("QONNX reference (float)", gv, y, time.perf_counter() - t0)


#: bit-error rates of the flow's accuracy-vs-BER sweep, and random trials per rate
FAULT_BERS: tuple[float, ...] = (1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
FAULT_BER_TRIALS = 20


def stage_faults(ctx: Context) -> dict[str, Any]:
    """Exhaustive single-bit weight/bias campaign on the golden model, plus its analysis.

    Writes ``faults/campaign.npz`` (every fault), ``analysis.json`` (Hessian,
    gradient, Taylor rankings; Spearman; protection curves and costs),
    ``estimate.json`` (a Leveugle-sized stratified sample's estimates with
    confidence intervals, beside the exhaustive truth), ``binfi.json`` and
    ``ber.json`` (accuracy against bit-error rate with confidence bands).
    """
    t0 = time.time()
    if not ctx.cfg.faults.enabled:
        return {"skipped": "faults disabled in config"}
    from edgeml.fault_injection import ber as B
    from edgeml.fault_injection import samplers as S
    from edgeml.fault_injection.campaign import run_campaign
    from edgeml.fault_injection.metrics import analyse_campaign, ber_curve
    from edgeml.fault_injection.sites import PERMANENT_PARAMS, enumerate_sites

    g = ctx.golden()
    x, y, source = eval_samples(ctx)
    n = min(len(x), ctx.cfg.faults.max_samples)
    x = x[:n]
    y = None if y is None else y[:n]
    # an autoencoder has no top-1: any changed output code is a corruption
    sdc = "top1" if y is not None or ctx.external else "any"
    sites = enumerate_sites(g, PERMANENT_PARAMS)  # weights, biases, lookup-table ROMs
    res = run_campaign(g, x, y, sites, progress=ctx.progress, sdc=sdc)
    fdir = ctx.run.file("faults")
    fdir.mkdir(parents=True, exist_ok=True)
    out = fdir / "campaign.npz"
    res.save(out)
    seed = ctx.cfg.seed
    info: dict[str, Any] = {
        "faults": len(res.sdc_rate),
        "samples": n,
        "sample_source": source,
        "sdc_mode": sdc,
        "seconds": round(res.seconds, 3),
        "faults_per_s": round(len(res.sdc_rate) / max(res.seconds, 1e-9), 1),
        "baseline_accuracy": res.baseline_accuracy if y is not None else None,
        "mean_sdc_rate": float(np.mean(res.sdc_rate)),
    }
    outputs = [out]

    # statistical sampling, checked against the exhaustive truth just measured
    margin = ctx.cfg.faults.margin
    n_stat = S.leveugle_sample_size(len(sites), margin=margin, confidence=0.95)
    sample = S.stratified_sample(sites, n_stat, seed)
    # the engine is exact, so the sample's results are rows of the exhaustive run
    row_of = {s: i for i, s in enumerate(sites)}
    est = S.estimate_stratified(res.take([row_of[s] for s in sample]), sites)
    estimate = {
        "margin": margin,
        "confidence": 0.95,
        "leveugle_n": n_stat,
        **est.to_dict(),
        "truth": {
            "critical_fraction": float(np.mean(res.sdc_rate > 0)),
            "mean_sdc_rate": float(np.mean(res.sdc_rate)),
        },
    }
    write_json(fdir / "estimate.json", estimate)
    outputs.append(fdir / "estimate.json")

    analysis = analyse_campaign(g, x, y, res, seed=seed)
    write_json(fdir / "analysis.json", analysis)
    outputs.append(fdir / "analysis.json")
    hess = analysis["rankings"].get("hessian", {})
    info["hessian_spearman"] = hess.get("spearman")
    info["hessian_top5_sdc_removed"] = hess.get("top_share")

    binfi = S.binfi_search(g, x, y, sites).compare(res.sdc_rate)
    write_json(fdir / "binfi.json", binfi)
    outputs.append(fdir / "binfi.json")

    sweep = B.run_ber_sweep(g, x, y, FAULT_BERS, FAULT_BER_TRIALS, seed, sdc=sdc, progress=False)
    if y is None:  # no labels (autoencoder): the share of samples whose outputs all survive
        curve = ber_curve({float(b): 1.0 - sweep.sdc_rate[i] for i, b in enumerate(sweep.bers)})
        curve["metric"] = "unchanged outputs"
    else:
        curve = {**ber_curve(sweep), "metric": "accuracy"}
    write_json(fdir / "ber.json", curve)
    outputs.append(fdir / "ber.json")

    info["analysis_seconds"] = round(time.time() - t0 - res.seconds, 2)
    write_json(fdir / "summary.json", info)
    _record(ctx, "faults", t0, [ctx.run.require("model.qonnx.onnx")], outputs, **info)
    log.info(
        "faults: %d faults in %.1f s (%.0f faults/s); Hessian ranking Spearman %s",
        info["faults"],
        res.seconds,
        info["faults_per_s"],
        info["hessian_spearman"],
    )
    return info


def implement_options(ctx: Context) -> Any:
    """The :class:`edgeml.implement.ImplementOptions` of a run's config."""
    from edgeml.implement import ImplementOptions

    c = ctx.cfg.implement
    return ImplementOptions(
        family=c.family,
        speed=c.speed,
        clock_mhz=c.clock_mhz,
        seed=c.seed,
        netlist_vectors=c.netlist_vectors,
        bitstream=c.bitstream,
        timeout_s=c.timeout_s,
        progress=ctx.progress,
    )


def stage_implement(ctx: Context) -> dict[str, Any]:
    """Open-source synthesis, place-and-route, timing and bitstream of the verified RTL -> implement/.

    Off in a flow unless ``implement.enabled`` (``edgeml implement`` turns it on for
    itself). With ``implement.close_timing`` the pipeline cut is chosen for the
    clock first (the RTL is regenerated and verified again).
    """
    from edgeml.implement import IMPL_DIR, IMPL_JSON, close_timing, implement_run

    t0 = time.time()
    c = ctx.cfg.implement
    if not c.enabled:
        return {"skipped": "implement disabled in config (implement.enabled)"}
    if not ctx.cfg.rtl.enabled:
        return {"skipped": "rtl disabled in config: nothing to implement"}
    rtl_json = ctx.run.file("rtl.json")
    if rtl_json.exists() and read_json(rtl_json).get("skipped"):
        return {"skipped": "the rtl stage was skipped: nothing to implement"}
    opts = implement_options(ctx)
    if c.close_timing:
        info = close_timing(ctx, opts, max_tries=c.max_tries)  # sets ctx.cfg's cut
    else:
        info = implement_run(ctx.run.path, opts)
    out = ctx.run.file(IMPL_DIR)
    if c.asic:
        info["asic"] = _asic_view(ctx)
        write_json(out / IMPL_JSON, info)
        cat = info["asic"].get("catapult") or {}
        if cat.get("status") == "FAIL":
            raise MismatchError(
                f"hls4ml Catapult C-sim: {cat['mismatching_vectors']}/{cat['vectors']} vectors "
                f"differ from the golden model, first divergent layer {cat['first_divergent_layer']}"
            )
    _record(
        ctx,
        "implement",
        t0,
        [p for p in (ctx.run.file("verify.json"),) if p.exists()],
        sorted(p for p in out.iterdir() if p.is_file()),
    )
    return info


def _asic_view(ctx: Context) -> dict[str, Any]:
    """The ASIC view of a run: a generic-gate estimate of its RTL, and hls4ml's Catapult project.

    The estimate is cached by the RTL's hash (the jet tagger takes about 80 s). The
    Catapult project is written beside the Vitis one and its C-sim compared with the
    golden model (the verify level "hls4ml Catapult C-sim" re-checks it from then on).
    """
    from edgeml.asic import estimate_asic
    from edgeml.progress import timed_bar
    from edgeml.rtl import RtlDesign
    from edgeml.toolchain import cache_dir

    design = RtlDesign.load(ctx.run.file("rtl"))
    key = hashlib.sha256(f"asic 1 {design.compute_hash()}".encode()).hexdigest()
    cached = cache_dir() / "asic" / f"{key}.json"
    if cached.is_file():
        asic = read_json(cached)
    else:
        with timed_bar("implement: ASIC estimate (yosys, generic gates)", None, ctx.progress):
            est = estimate_asic(
                design.verilog_files,
                design.top,
                mem_files=design.mem_files,
                timeout_s=ctx.cfg.implement.timeout_s,
            )
        asic = est.to_dict()
        try:
            write_json(cached, asic)
        except OSError as exc:  # the cache is an optimisation only
            log.warning("implement: could not cache the ASIC estimate: %s", exc)
    if ctx.cfg.hls.enabled:
        from edgeml.hls_catapult import catapult_for_run

        try:
            with timed_bar("implement: hls4ml Catapult project + C-sim", None, ctx.progress):
                _, cat = catapult_for_run(ctx, record=True)
        except UnsupportedOpError as exc:  # the FPGA results and the estimate still stand
            log.warning("implement: no Catapult project: %s", exc)
            asic["catapult"] = {"skipped": str(exc)}
            return asic
        lv = cat["level"]
        asic["catapult"] = {
            "project_dir": cat["project_dir"],
            "vectors": lv["vectors"],
            "mismatching_vectors": lv["mismatching_vectors"],
            "status": lv["status"],
            "first_divergent_layer": lv.get("first_divergent_layer"),
            "compile_seconds": cat.get("compile_seconds"),
        }
    return asic


def stage_report(ctx: Context) -> dict[str, Any]:
    """Assemble report.html from the run folder's artifacts."""
    from edgeml.report_build import build_report

    t0 = time.time()
    path = build_report(ctx)
    _record(
        ctx,
        "report",
        t0,
        [
            p
            for p in (ctx.run.file(n) for n in ("verify.json", "rtl.json", "compress.json"))
            if p.exists()
        ],
        [path],
    )
    return {"report": str(path)}


STAGE_FUNCS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "train": stage_train,
    "compress": stage_compress,
    "export": stage_export,
    "convert": stage_convert,
    "rtl": stage_rtl,
    "verify": stage_verify,
    "implement": stage_implement,
    "faults": stage_faults,
    "report": stage_report,
}


def save_config(ctx: Context, cfg: FlowConfig | None = None) -> None:
    """Write the run's ``config.json`` atomically: ``cfg``, else ``ctx.cfg``.

    The CLI passes the config without its per-command switches (``--no-hls``,
    ``--no-rtl``), so they do not stick to the run.
    """
    write_json(ctx.run.file("config.json"), (cfg or ctx.cfg).model_dump())


def run_flow(
    ctx: Context, stages: tuple[str, ...] = STAGES, *, saved_config: FlowConfig | None = None
) -> dict[str, Any]:
    """Run stages in order and raise the most important failure at the end.

    A verification mismatch (verify, or the RTL stage's cocotb bench) does not
    stop the flow: the fault campaign and the report are most useful exactly
    then. Once verify has run (or a mismatch was found), a later stage's failure
    does not stop it either: the report is still written and shows the failure.
    At the end a mismatch is raised first (exit 3), its message naming every later
    failure; otherwise the first failure. ``saved_config`` is what goes into
    ``config.json`` (default ``ctx.cfg``).
    """
    check_options(ctx.cfg, ctx.external)  # design, bit width: before anything trains
    unknown = [s for s in stages if s not in STAGE_FUNCS]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; allowed: {', '.join(STAGES)}")
    ctx.run.path.mkdir(parents=True, exist_ok=True)
    save_config(ctx, saved_config)
    out: dict[str, Any] = {}
    mismatch: MismatchError | None = None
    hls_error: EdgemlError | None = None
    failures: dict[str, Exception] = {}
    verified = False
    stage_iter = tqdm(
        stages, desc="edgeml flow", unit="stage", disable=not ctx.progress, leave=False
    )
    for s in stage_iter:
        stage_iter.set_postfix_str(s)
        t0 = time.time()
        try:
            out[s] = STAGE_FUNCS[s](ctx)
        except MismatchError as exc:
            mismatch = mismatch or exc
            out[s] = {"mismatch": str(exc)}
        except (UnsupportedOpError, ConfigError) as exc:
            if s != "convert":
                if not (verified or mismatch is not None):
                    raise
                _stage_failed(ctx, s, exc, failures, out)
            else:
                log.warning("convert: %s; continuing without the hls4ml level", exc)
                hls_error = hls_error or exc
                out[s] = {"error": str(exc)}
        except Exception as exc:
            if not (verified or mismatch is not None):
                raise  # nothing verified yet: nothing worth reporting
            _stage_failed(ctx, s, exc, failures, out)
        verified = verified or s == "verify"
        out[s + "_seconds"] = round(time.time() - t0, 2)
    if mismatch is not None:
        later = [f"the {s} stage failed ({type(e).__name__}: {e})" for s, e in failures.items()]
        if hls_error is not None:
            later.insert(0, f"hls4ml could not convert the graph ({hls_error})")
        if later:
            raise MismatchError(f"{mismatch}. Also: {'; '.join(later)}") from mismatch
        raise mismatch
    if failures:
        raise next(iter(failures.values()))
    if hls_error is not None:
        raise hls_error
    return out


def _stage_failed(
    ctx: Context, stage: str, exc: Exception, failures: dict[str, Exception], out: dict[str, Any]
) -> None:
    """Record a stage's failure after verify ran; the report stage shows it."""
    msg = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, EdgemlError):
        log.error("%s stage failed: %s; continuing to the report", stage, exc)
    else:  # a bug: keep its traceback in the log, the exit code may be the mismatch's
        log.error("%s stage failed; continuing to the report", stage, exc_info=exc)
    failures[stage] = exc
    out[stage] = {"error": msg}
    ctx.results.setdefault("stage_errors", {})[stage] = msg


def load_run_config(run: RunFolder) -> dict[str, Any] | None:
    p = run.file("config.json")
    return read_json(p) if p.exists() else None
