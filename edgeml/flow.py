"""The stages of a flow and their artifacts in a run folder.

Each stage is a library function ``stage_<name>(ctx)`` that reads what earlier
stages wrote into the run folder, writes its own artifacts, and records itself
in ``manifest.json``. The CLI is a thin wrapper over these.

    train     float.pt                       float model (built-in designs)
    compress  model.pt, compress.json        QAT + magnitude pruning + fine-tune
    export    model.qonnx.onnx, golden.txt   QONNX, cleaned; golden model summary
    convert   hls_projects/<design>/, hls.json   hls4ml Vitis project, C-sim compiled
    rtl       rtl/, rtl.json                 Verilog (da4ml), Verilator build, cocotb bench
    verify    verify.json                    golden vs C-sim vs RTL vs Brevitas
    faults    faults/campaign.npz            exhaustive single-bit weight/bias flips
    report    report.html                    self-contained report
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from edgeml.config import FlowConfig, check_design
from edgeml.errors import ConfigError, EdgemlError, MismatchError, UnsupportedOpError
from edgeml.golden import GoldenModel
from edgeml.manifest import RunFolder, read_json, write_json

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = (
    "train",
    "compress",
    "export",
    "convert",
    "rtl",
    "verify",
    "faults",
    "report",
)


@dataclass
class Context:
    """What every stage needs: the run folder, the validated config, where hls4ml writes."""

    run: RunFolder
    cfg: FlowConfig
    hls_root: Path = Path("hls_projects")
    progress: bool = True
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def external(self) -> bool:
        return self.cfg.onnx is not None

    @property
    def name(self) -> str:
        return self.cfg.design

    @property
    def hls_dir(self) -> Path:
        return self.hls_root / self.cfg.design

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
    """Quantization-aware training from the float weights, then magnitude pruning + fine-tune."""
    t0 = time.time()
    if ctx.external:
        return {"skipped": "external model"}
    from edgeml.models import zoo

    sp, data = spec(ctx), dataset(ctx)
    fpath = ctx.run.require("float.pt")
    float_model, _, _ = zoo.load_checkpoint(fpath)
    c = ctx.cfg.compress
    y_test = sp.targets("test", data)
    qat = zoo.train_qat(sp, data, float_model, c.bit_width, _epochs(ctx, "qat"), ctx.cfg.seed)
    qat_m = zoo.evaluate(sp, qat, data.x_test, y_test)
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
    info.update({f"qat_{k}": v for k, v in qat_m.items()})
    info.update({f"pruned_{k}": v for k, v in pruned_m.items()})
    write_json(ctx.run.file("compress.json"), info)
    _record(ctx, "compress", t0, [fpath], [out, ctx.run.file("compress.json")], **info)
    log.info(
        "compress: %s QAT %.4f, pruned(%.0f%%) %.4f",
        sp.primary,
        info["qat"],
        100 * sparsity,
        info["pruned"],
    )
    return info


def stage_export(ctx: Context) -> dict[str, Any]:
    """Export to QONNX and clean it (built-in), or clean a user's QONNX file (external)."""
    t0 = time.time()
    from edgeml.export import clean_qonnx, export_qonnx

    out = ctx.run.file("model.qonnx.onnx")
    ctx.run.path.mkdir(parents=True, exist_ok=True)
    if ctx.external:
        src = Path(ctx.cfg.onnx or "")
        clean_qonnx(src, out)
        inputs = [src]
    else:
        from edgeml.models import zoo

        mpath = ctx.run.require("model.pt")
        model, _, sp = zoo.load_checkpoint(mpath)
        export_qonnx(sp.edge(model), (1, *sp.input_shape), out)
        inputs = [mpath]
    ctx.results.pop("golden", None)
    g = ctx.golden()  # compile now: unsupported ops fail here, at export
    summary = g.summary()
    ctx.run.file("golden.txt").write_text(summary + "\n" + "\n".join(g.notes) + "\n")
    _record(ctx, "export", t0, inputs, [out, ctx.run.file("golden.txt")])
    log.info("export: golden model\n%s", summary)
    return {"golden": summary, "notes": g.notes}


def stage_convert(ctx: Context) -> dict[str, Any]:
    """hls4ml Vitis project (io_parallel) at hls_projects/<design>/, C-sim compiled."""
    t0 = time.time()
    if not ctx.cfg.hls.enabled:
        return {"skipped": "hls disabled in config"}
    from edgeml.hls import convert_hls

    g = ctx.golden()
    onnx_path = ctx.run.require("model.qonnx.onnx")
    h = ctx.cfg.hls
    try:
        design = convert_hls(
            onnx_path,
            ctx.hls_dir,
            name=_ident(ctx.name),
            input_type=g.input_type,
            output_type=g.output_type,
            part=h.part,
            clock_period=h.clock_period,
            reuse_factor=h.reuse_factor,
        )
    except (UnsupportedOpError, ConfigError) as exc:
        # The golden model and the RTL still cover this graph; record why hls4ml
        # could not, so verify and the report say so instead of silently skipping.
        write_json(ctx.run.file("hls.json"), {"error": str(exc)})
        _record(ctx, "convert", t0, [onnx_path], [ctx.run.file("hls.json")], error=str(exc))
        raise
    ctx.results["hls"] = design
    info = {"project_dir": str(ctx.hls_dir.resolve()), "seconds": round(time.time() - t0, 2)}
    write_json(ctx.run.file("hls.json"), info)
    _record(
        ctx, "convert", t0, [onnx_path], [ctx.run.file("hls.json"), ctx.hls_dir / "build_prj.tcl"]
    )
    return info


def _ident(name: str) -> str:
    s = "".join(c if c.isalnum() else "_" for c in name)
    return s if s and s[0].isalpha() else f"m_{s}"


def _hls_design(ctx: Context) -> Any:
    if "hls" not in ctx.results:
        from edgeml.hls import HlsDesign

        info = read_json(ctx.run.require("hls.json"))
        if "error" in info:
            raise UnsupportedOpError(info["error"])
        ctx.results["hls"] = HlsDesign.load(ctx.hls_dir)
    return ctx.results["hls"]


def _rtl_design(ctx: Context) -> Any:
    if "rtl" not in ctx.results:
        from edgeml.rtl import generate_rtl

        g = ctx.golden()
        r = ctx.cfg.rtl
        design = generate_rtl(
            g,
            ctx.run.file("rtl"),
            _ident(ctx.name),
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
    design = _rtl_design(ctx)
    info: dict[str, Any] = {
        "top": design.top,
        "latency_cycles": design.latency,
        "verilog": [str(p) for p in design.verilog_files],
        "build_seconds": round(time.time() - t0, 2),
    }
    n = ctx.cfg.rtl.cocotb_vectors
    if n:
        from edgeml.rtl_sim.runner import run_cocotb

        x, _ = _verify_inputs(ctx, n_random=n)
        x = x[-n:]
        res = run_cocotb(design, x, g.predict(x), ctx.run.file("rtl") / "cocotb")
        info["cocotb"] = {
            "vectors": res.n_vectors,
            "mismatches": res.n_mismatches,
            "vectors_per_s": res.vectors_per_s,
            "seconds": res.seconds,
        }
        if res.n_mismatches:
            write_json(ctx.run.file("rtl.json"), info)
            raise MismatchError(
                f"cocotb bench: {res.n_mismatches} of {res.n_vectors} vectors differ from the golden model"
            )
    try:
        from edgeml.resources import estimate_resources

        est = estimate_resources(
            list(design.verilog_files), design.top, timeout_s=ctx.cfg.rtl.resources_timeout
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
        [ctx.run.file("rtl.json"), *design.verilog_files],
    )
    return info


def _verify_inputs(ctx: Context, n_random: int | None = None) -> tuple[np.ndarray, dict[str, int]]:
    from edgeml.verify import verification_vectors

    g = ctx.golden()
    data = None
    if not ctx.external:
        data = g.quantize_input(dataset(ctx).x_test)
    n = ctx.cfg.verify.n_random if n_random is None else n_random
    return verification_vectors(g, data, n, ctx.cfg.verify.seed)


def stage_verify(ctx: Context) -> dict[str, Any]:
    """Compare golden vs hls4ml C-sim vs RTL vs the trained model over >= 10k vectors."""
    from edgeml import verify as V

    t0 = time.time()
    g = ctx.golden()
    x, counts = _verify_inputs(ctx)
    t1 = time.perf_counter()
    ref = g.predict(x)
    golden_s = time.perf_counter() - t1
    levels: list[V.LevelResult] = []

    hls_error = None
    if ctx.cfg.hls.enabled and ctx.run.file("hls.json").exists():
        hls_error = read_json(ctx.run.file("hls.json")).get("error")
    if hls_error:
        levels.append(
            V.skipped("hls4ml C-sim", f"hls4ml could not convert this graph: {hls_error}")
        )
    elif ctx.cfg.hls.enabled:
        hls = _hls_design(ctx)
        levels.append(
            V.run_level(
                "hls4ml C-sim",
                g,
                x,
                ref,
                hls.predict_int,
                lambda xc: _hls_trace_codes(ctx, hls, xc),
            )
        )
    else:
        levels.append(V.skipped("hls4ml C-sim", "disabled in config"))

    if ctx.cfg.rtl.enabled:
        rtl = _rtl_design(ctx)
        levels.append(V.run_level("RTL (Verilator)", g, x, ref, rtl.predict_int, rtl.trace_int))
    else:
        levels.append(V.skipped("RTL (Verilator)", "disabled in config"))

    if ctx.external:
        levels.append(_qonnx_reference(ctx, g, x[: min(len(x), 2000)], ref[: min(len(x), 2000)]))
    else:
        levels.append(_brevitas_level(ctx, g, x, ref))

    ok = all(lv.status != "FAIL" for lv in levels if lv.level != "QONNX reference (float)")
    info = {
        "vectors": len(x),
        "sources": counts,
        "golden_vectors_per_s": round(len(x) / max(golden_s, 1e-9), 1),
        "levels": [lv.to_dict() for lv in levels],
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
            "verify: %-22s %s  %d/%d vectors mismatch%s",
            lv.level,
            lv.status,
            lv.mismatching_vectors,
            lv.vectors,
            f", first divergent layer {lv.first_divergent_layer}"
            if lv.first_divergent_layer
            else "",
        )
    if not ok:
        bad = [lv for lv in levels if lv.status == "FAIL"]
        raise MismatchError(
            "; ".join(
                f"{lv.level}: {lv.mismatching_vectors}/{lv.vectors} vectors differ, first divergent layer "
                f"{lv.first_divergent_layer}"
                for lv in bad
            )
            + f" (see {ctx.run.file('verify.json')})"
        )
    return info


def _hls_trace_codes(ctx: Context, hls: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """hls4ml per-layer codes keyed by golden tensor name.

    hls4ml names layers after ONNX nodes (``Dense_MatMul_1`` for ``MatMul_1``)
    and fuses a ReLU with the Quant after it; such a layer is matched to the
    golden Requant output when its type has that Requant's binary point.
    """
    g = ctx.golden()
    tr = hls.trace_int(x, codes=False)
    types = getattr(hls, "layer_types", {}) or {}
    out: dict[str, np.ndarray] = {}
    for i, op in enumerate(g.ops):
        if op.kind in ("reshape", "transpose"):
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
        q = v.reshape(len(x), *shape) / g.tensors[target.output].scale
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


def _qonnx_reference(ctx: Context, g: GoldenModel, x: np.ndarray, ref: np.ndarray) -> Any:
    """QONNX's own real-valued execution; differences come only from fixed-point scale approximations."""
    from edgeml import verify as V
    from edgeml.reference import execute_qonnx

    t0 = time.perf_counter()
    y = execute_qonnx(
        ctx.run.require("model.qonnx.onnx"), x.astype(np.float64) * g.input_real_scale
    )
    gv = ref.astype(np.float64) * np.asarray(g.output_scale, np.float64)
    diff = np.abs(gv.reshape(len(x), -1) - y.reshape(len(x), -1))
    agree = float(np.mean(gv.reshape(len(x), -1).argmax(1) == y.reshape(len(x), -1).argmax(1)))
    res = V.LevelResult(
        "QONNX reference (float)",
        len(x),
        int((diff.max(axis=1) > 0).sum()),
        int((diff > 0).sum()),
        0,
        status="PASS" if diff.max() == 0 else "APPROX",
        seconds=time.perf_counter() - t0,
        note=f"max |real diff| {diff.max():.3g}, argmax agreement {agree:.4f}",
    )
    res.extra = {"max_real_diff": float(diff.max()), "argmax_agreement": agree}
    return res


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
    from edgeml.fault_injection.sites import enumerate_sites

    g = ctx.golden()
    x, y, source = eval_samples(ctx)
    n = min(len(x), ctx.cfg.faults.max_samples)
    x = x[:n]
    y = None if y is None else y[:n]
    # an autoencoder has no top-1: any changed output code is a corruption
    sdc = "top1" if y is not None or ctx.external else "any"
    sites = enumerate_sites(g, ("weight", "bias"))
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
    "faults": stage_faults,
    "report": stage_report,
}


def save_config(ctx: Context) -> None:
    write_json(ctx.run.file("config.json"), ctx.cfg.model_dump())


def run_flow(ctx: Context, stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
    """Run stages in order; a verification mismatch still produces the fault campaign and report."""
    check_design(ctx.cfg, ctx.external)
    ctx.run.path.mkdir(parents=True, exist_ok=True)
    save_config(ctx)
    out: dict[str, Any] = {}
    deferred: EdgemlError | None = None
    stage_iter = tqdm(
        stages, desc="edgeml flow", unit="stage", disable=not ctx.progress, leave=False
    )
    for s in stage_iter:
        if s not in STAGE_FUNCS:
            raise ConfigError(f"unknown stage {s!r}; allowed: {', '.join(STAGES)}")
        stage_iter.set_postfix_str(s)
        t0 = time.time()
        try:
            out[s] = STAGE_FUNCS[s](ctx)
        except MismatchError as exc:
            # keep going: the fault campaign and the report are most useful exactly now
            deferred = deferred or exc
            out[s] = {"mismatch": str(exc)}
        except (UnsupportedOpError, ConfigError) as exc:
            if s != "convert":
                raise
            log.warning("convert: %s; continuing without the hls4ml level", exc)
            deferred = deferred or exc
            out[s] = {"error": str(exc)}
        out[s + "_seconds"] = round(time.time() - t0, 2)
    if deferred is not None:
        raise deferred
    return out


def load_run_config(run: RunFolder) -> dict[str, Any] | None:
    p = run.file("config.json")
    return read_json(p) if p.exists() else None
