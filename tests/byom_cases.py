"""Bring-your-own-model acceptance cases: files as other tools write them, through `edgeml flow`.

One truth for ``tests/test_byom.py`` (which asserts on each case) and
``benchmarks/bench_byom.py`` (which measures them and writes the README table). Each
case writes its model the way its producer does (``tests/external_models.py``,
``tests/keras_models.py``, real Brevitas / torch exporters), then runs the same
command line a user types, and :func:`summarise` reads what the run folder says.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import external_models as ext  # noqa: E402
import op_models  # noqa: E402

QD = "qonnx.custom_op.general"


@dataclass
class Case:
    """One model made elsewhere and the command line that takes it to firmware."""

    name: str
    what: str  # producer and pitfalls, for the README table
    make: Callable[[Path], Path]  # writes the model into a folder, returns its path
    flag: str = "--onnx"  # or --keras
    args: list[str] = field(default_factory=list)  # extra `edgeml flow` options
    config: dict[str, Any] = field(default_factory=dict)  # a --config file's content
    #: `edgeml quantize` options: the file is a float model, quantized first
    quantize: list[str] | None = None
    levels: tuple[str, ...] = ("hls4ml C-sim", "RTL (Verilator)")  # must be exact
    changes: bool = True  # the file has pitfalls that ingestion must rewrite (and say so)
    rtl_skipped: bool = False  # the size guard must skip the RTL


# --------------------------------------------------------------------------- builders


def per_channel_float_mlp(path: Path, seed: int = 0) -> Path:
    """A real Brevitas export with per-channel float weight scales (crashes hls4ml's QONNX route)."""
    import contextlib
    import io
    import warnings

    import torch
    from brevitas.export import export_qonnx
    from brevitas.nn import QuantIdentity, QuantLinear, QuantReLU
    from brevitas.quant import (
        Int8ActPerTensorFixedPoint,
        Int8WeightPerChannelFloat,
        Uint8ActPerTensorFixedPoint,
    )

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, bit_width=8),
        QuantLinear(16, 24, bias=False, weight_quant=Int8WeightPerChannelFloat, weight_bit_width=6),
        QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, bit_width=6),
        QuantLinear(24, 5, bias=False, weight_quant=Int8WeightPerChannelFloat, weight_bit_width=6),
    ).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        torch.no_grad(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        model(torch.randn(256, 16))
        export_qonnx(model, args=torch.zeros(1, 16), export_path=str(path))
    return path


def big_mlp(path: Path, seed: int = 0, widths: tuple[int, ...] = (256, 384, 256, 10)) -> Path:
    """An MLP of about 200k 3-bit weights (Quant nodes as qonnx writes them): too big for RTL."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(v: Any, name: str) -> str:
        inits.append(numpy_helper.from_array(np.asarray(v, np.float32), name))
        return name

    def quant(x: str, scale: float, bits: int, out: str, signed: bool = True) -> str:
        s, z, b = (const(scale, f"{out}_s"), const(0.0, f"{out}_z"), const(bits, f"{out}_b"))
        nodes.append(
            helper.make_node(
                "Quant",
                [x, s, z, b],
                [out],
                name=out,
                domain=QD,
                signed=int(signed),
                narrow=int(signed),
                rounding_mode="ROUND",
            )
        )
        return out

    x = quant("inp", 2.0**-4, 8, "q_in")
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        w = quant(const(rng.integers(-3, 4, (a, b)) * 0.25, f"w{i}"), 0.25, 3, f"qw{i}")
        nodes.append(helper.make_node("MatMul", [x, w], [f"mm{i}"], name=f"MatMul_{i}"))
        x = f"mm{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"Relu_{i}"))
            x = quant(f"r{i}", 2.0**-2, 4, f"qa{i}", signed=False)
    nodes[-1].output[0] = "out"
    graph = helper.make_graph(
        nodes,
        "big_mlp",
        [helper.make_tensor_value_info("inp", TensorProto.FLOAT, [1, widths[0]])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, widths[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path.parent.mkdir(parents=True, exist_ok=True)
    import onnx

    onnx.save(model, str(path))
    return path


def keras_file(name: str) -> Callable[[Path], Path]:
    """A builder that saves ``tests/keras_models.<name>()`` as ``<folder>/<name>.keras``.

    In a subprocess: HGQ2 native layers must be built before ``qkeras`` is imported,
    and Keras needs its backend set before its first import.
    """

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "KERAS_BACKEND": "torch"}
        subprocess.run(
            [sys.executable, str(TESTS / "keras_models.py"), str(folder), name],
            check=True,
            env=env,
            capture_output=True,
        )
        return folder / f"{name}.keras"

    return make


def _calib(folder: Path, n_in: int, seed: int = 0, scale: float = 1.0) -> Path:
    rng = np.random.default_rng(seed)
    path = folder / "calib.npy"
    np.save(path, (rng.normal(0, 1, (512, n_in)) * scale).astype(np.float32))
    return path


# --------------------------------------------------------------------------- cases


def cases() -> list[Case]:
    """Every acceptance case, in README order."""
    return [
        Case(
            "finn_mlp",
            "old FINN export: finn.custom_op.general / finn domains without opset import, "
            "UINT8-annotated float input with Mul(1/255), BipolarQuant weights, BatchNorm "
            "after MatMul, INT2-annotated weight, trailing Mul/Add",
            lambda d: ext.finn_mlp(0, d / "finn_mlp.onnx"),
        ),
        Case(
            "brevitas_old_mlp",
            "Brevitas < 0.8 export: onnx.brevitas domain without opset import, symbolic batch, "
            "Sub/Div normalisation before the first Quant (float input), trailing Div",
            lambda d: ext.brevitas_old_mlp(0, d / "brevitas_old_mlp.onnx"),
            args=["--input-type", "ap_fixed<12,4>"],
        ),
        Case(
            "brevitas_float_input",
            "real brevitas export_qonnx of a net with no input quantizer, moved to the old "
            "onnx.brevitas domain; input precision from calibration data",
            lambda d: ext.brevitas_float_input_mlp(0, d / "brevitas_float_input.onnx"),
            args=["--calib", "{calib16}"],
        ),
        Case(
            "per_channel_float",
            "real Brevitas export with per-channel float weight scales (hls4ml's QONNX "
            "front end raises IndexError on it)",
            lambda d: per_channel_float_mlp(d / "per_channel_float.onnx"),
        ),
        Case(
            "conv_nchw",
            "channels-first Conv-Relu-MaxPool-Flatten-MatMul, symbolic batch N",
            lambda d: ext.conv_nchw(0, d / "conv_nchw.onnx"),
        ),
        Case(
            "conv_nhwc_float",
            "channels-last float input with a Transpose in front (tf2onnx style), "
            "--input-type given",
            lambda d: ext.conv_nchw(0, d / "conv_nhwc_float.onnx", nhwc_input=True),
            args=["--input-type", "ap_ufixed<8,0>"],
        ),
        Case(
            "qkeras_softmax",
            "qonnx's Keras-converter output (tf names, unk__ batch) ending in Softmax, kept: "
            "hls4ml's softmax_stable tables, bit-exact in golden, C-sim and RTL",
            lambda d: ext.qkeras_mlp(0, d / "qkeras_softmax.onnx"),
        ),
        Case(
            "qkeras_softmax_cut",
            "qonnx's Keras-converter output (tf names, unk__ batch) ending in Softmax, cut "
            "at the logits with --output",
            lambda d: ext.qkeras_mlp(0, d / "qkeras_softmax.onnx"),
            args=["--output", "sequential/dense_1/BiasAdd:0"],
        ),
        Case(
            "torch_float_ptq",
            "float MLP from torch.onnx.export (Gemm, dynamic batch), quantized by "
            "`edgeml quantize --bits 8` on calibration data",
            lambda d: ext.torch_float_mlp(0, d / "torch_float.onnx"),
            quantize=["--calib", "{calib16}", "--bits", "8"],
            changes=False,  # `edgeml quantize` writes a clean QONNX file
        ),
        Case(
            "qkeras_jet_keras",
            "QKeras-style (HGQ2 qkeras) jet tagger 16-32-32-5 saved as .keras",
            keras_file("qkeras_jet_mlp"),
            flag="--keras",
        ),
        Case(
            "hgq_dense_keras",
            "HGQ2 native QDense model saved as .keras",
            keras_file("hgq_dense"),
            flag="--keras",
        ),
        Case(
            "brevitas_gru_cell",
            "Brevitas 0.13 export of a GRU-style cell step: Slice of the input, Sigmoid/Tanh "
            "between 8-bit quantizers, gates as Mul / Sub / Add of two activations (hls4ml's "
            "QONNX route would use its own tables: caught, golden-IR route)",
            lambda d: op_models.raw_path(op_models.brevitas_gru_cell(d / "gru_cell.onnx")),
            changes=False,
        ),
        Case(
            "qonnx_attention",
            "hand-written QONNX attention block: per-token Dense on (tokens, features), "
            "Q @ K^T and scores @ V (activation MatMuls hls4ml's QONNX route would drop)",
            lambda d: op_models.raw_path(op_models.attention(d / "attention.onnx")),
            changes=False,
        ),
        Case(
            "big_mlp_200k",
            "MLP 256-384-256-10 with 3-bit weights (199k weights): the size guard "
            "skips the RTL with its estimate",
            lambda d: big_mlp(d / "big_mlp.onnx"),
            args=["--no-hls"],
            config={"faults": {"enabled": False}},
            levels=(),
            rtl_skipped=True,
        ),
    ]


def case(name: str) -> Case:
    found = [c for c in cases() if c.name == name]
    if not found:
        raise KeyError(f"no case {name!r}; cases: {[c.name for c in cases()]}")
    return found[0]


# --------------------------------------------------------------------------- running


def _fill(args: list[str], folder: Path) -> list[str]:
    subs = {"{calib16}": lambda: str(_calib(folder, 16))}
    return [subs[a]() if a in subs else a for a in args]


def run_case(c: Case, work: Path, vectors: int = 10_000) -> dict[str, Any]:
    """Write the case's model, run `edgeml flow` on it like a user does; return :func:`summarise`."""
    from edgeml.cli import main

    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = c.make(work / "model")
    steps: dict[str, float] = {"make": time.time() - t0}
    if c.quantize is not None:
        t1 = time.time()
        q = work / "model" / f"{c.name}.qonnx.onnx"
        rc = main(["quantize", "--onnx", str(model), "--out", str(q), *_fill(c.quantize, work)])
        steps["quantize"] = time.time() - t1
        if rc != 0:
            return {"case": c.name, "rc": rc, "step": "quantize", "seconds": steps}
        from edgeml.quantize import report_json_path

        quantized = json.loads(report_json_path(q).read_text())["evaluation"]
        model = q
    args = [
        "flow",
        c.flag,
        str(model),
        "--out",
        str(work / "run"),
        "--hls-dir",
        str(work / "hls"),
        "--vectors",
        str(vectors),
        "-q",
        *_fill(c.args, work),
    ]
    if c.config:
        cfg = work / "config.json"
        cfg.write_text(json.dumps(c.config))
        args += ["--config", str(cfg)]
    t1 = time.time()
    rc = main(args)
    steps["flow"] = time.time() - t1
    out = summarise(work / "run")
    out.update({"case": c.name, "rc": rc, "seconds": steps, "command": " ".join(args)})
    if c.quantize is not None:
        out["quantize"] = quantized  # float file vs the quantized design, from its report
    return out


def summarise(run: Path) -> dict[str, Any]:
    """What a run folder says: ingestion changes, each level's status and mismatches."""

    def read(name: str) -> dict[str, Any]:
        p = run / name
        return json.loads(p.read_text()) if p.is_file() else {}

    verify = read("verify.json")
    levels = {
        lv["level"]: {
            "status": lv["status"],
            "vectors": lv["vectors"],
            "mismatching_vectors": lv["mismatching_vectors"],
            "note": lv["note"],
            **{k: v for k, v in lv.get("extra", {}).items() if k in ("argmax_agreement",)},
        }
        for lv in verify.get("levels", [])
    }
    hls = read("hls.json")
    return {
        "ingest": read("ingest.json"),
        "levels": levels,
        "vectors": verify.get("vectors"),
        "passed": verify.get("passed"),
        "hls_route": hls.get("route"),
        "hls_route_reason": hls.get("reason") or hls.get("route_reason"),
        "rtl": read("rtl.json"),
    }
