"""hls4ml conversion of a cleaned QONNX model, and its bit-accurate C++ emulation (C-sim).

:func:`convert_hls` turns a QONNX graph that has been cleaned (``cleanup_model``,
``ConvertToChannelsLastAndClean``, ``GemmToMatMul``, ``cleanup_model``) into an
hls4ml **Vitis** project with ``io_parallel`` I/O and the ``Latency`` strategy.
It then compiles hls4ml's C++ emulation with g++ and returns an :class:`HlsDesign`
that predicts **integer codes**, so C-sim can be compared with the golden model
and the RTL as integers.

The project folder holds what a user with Vitis HLS takes to synthesis, as is:

* ``build_prj.tcl`` (sources ``project.tcl`` for the part, clock and project name,
  and ``build_opt.tcl`` for which steps run: csim, synth, cosim, validation by
  default). Run ``vitis-run --mode hls --tcl build_prj.tcl`` (Vitis 2024.x, what
  hls4ml's Vitis backend calls) or ``vitis_hls -f build_prj.tcl`` (older Vitis HLS).
* ``firmware/``: ``<name>.cpp`` / ``<name>.h`` (the top function), ``defines.h``
  (every ``ap_fixed`` type), ``parameters.h`` (layer configs), ``weights/``
  (``.h`` for synthesis, ``.txt`` loaded by C-sim), ``nnet_utils/`` and ``ap_types/``.
* ``<name>_test.cpp`` and ``tb_data/``: the C testbench used by csim / cosim;
  :meth:`HlsDesign.write_testbench` fills ``tb_data/`` with input vectors and the
  C-sim outputs, so that a Vitis run checks itself against this emulation.
* ``<name>_bridge.cpp`` and ``build_lib.sh``: the C-sim shared library
  (``firmware/<name>-<stamp>.so``) that this module calls through ctypes.
* ``hls4ml_config.yml`` and ``edgeml_hls.json`` (edgeml's metadata: types, shapes,
  traced layers; :meth:`HlsDesign.load` reopens a compiled project without hls4ml).

Numerics (why C-sim is exact):

* The input layer's type is exactly ``input_type``, so every input code is
  represented without rounding or wrapping (codes outside it are rejected).
* hls4ml maps each QONNX ``Quant`` with a power-of-two scale and ``ROUND`` to an
  ``ap_fixed<..., AP_RND_CONV, AP_SAT>`` (``_calculate_precision_quantizer`` in
  ``hls4ml/model/optimizer/passes/quant_opt.py``). ``AP_RND_CONV`` is convergent
  rounding (half to even), which is what QONNX's ``ROUND`` (numpy/torch ``round``)
  does; ``narrow=1`` maps to ``AP_SAT_SYM``. Weights and biases are rounded with
  ``np.round`` (half to even) too.
* Dense/Conv accumulators are inferred by ``infer_precision`` from the input,
  weight and bias types as worst-case widths (``W_in + W_w + ceil(log2 n)``, bias
  aligned), so they neither round nor overflow. MaxPool and Flatten keep their
  input type.
* The last layer's result type is set to ``output_type`` (checked to keep every
  fractional bit), so the outputs are exact codes on ``output_type``'s grid.
  Values cross the C boundary as ``double``: exact while every width is <= 53.

On the test models (Brevitas MLP 64-32-32-10 and Conv-ReLU-MaxPool-Linear with
power-of-two scales and ``Int16Bias``) no ``layer_types`` are needed for
exactness: 0 / 10,000 mismatches against Brevitas. ``layer_types`` is an escape
hatch that forces the result type of a cleaned-QONNX node's output (keys are node
names such as ``MatMul_0``; ``cleanup_model`` names nodes ``<OpType>_<i>``):

* forcing a ``MatMul`` keeps hls4ml from fusing the following bias ``Add`` into the
  Dense; the Add becomes an ``ApplyAlpha`` layer (``bn_Add_<i>``) with an inferred
  exact type. Still exact, one extra adder stage;
* a fused bias ``Add`` or a ``Quant`` (its type is the quantizer's) cannot be
  forced: :class:`~edgeml.errors.ConfigError` names the hls4ml layers instead;
* forced types are plain ``ap_fixed<W,I>`` (truncate, wrap): they must hold the
  exact values, or C-sim double-rounds (e.g. a ReLU forced narrower than its
  accumulator, before the 6-bit Quant).

C-sim is compiled with per-layer tracing (``#ifndef __SYNTHESIS__`` only, so the
synthesized design is unchanged) for :meth:`HlsDesign.trace_int`; in a Vitis csim
run the testbench then also logs each layer to ``tb_data/<layer>_output.log``.
Pass ``trace=False`` for a plain project.

Cost on these 2 shared cores: conversion < 0.1 s, g++ compile 3-13 s (load
dependent), C-sim about 15,000 vectors/s for the 64-32-32-10 MLP and the 8x8 CNN
(ap_fixed arithmetic dominates, about 60 us per vector; hls4ml's own
``predict`` loop, with its per-vector array handling, is 10-20 % slower).

hls4ml traps this module guards against: ``Softsign`` and other float activations
convert silently with the default ``fixed<16,6>`` (logged as a warning); per-channel
float weight scales leave an orphan Constant and hls4ml raises ``IndexError`` in
``infer_precision`` (raised here as UnsupportedOpError naming ``Quant_<i>_param0``);
the C-sim ``.so`` holds the absolute ``firmware/weights`` path and calls ``exit(1)``
if a weights file is missing, so :meth:`HlsDesign.load` recompiles a moved project.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import io
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.errors import (
    ConfigError,
    CorruptFileError,
    DependencyError,
    EdgemlError,
    InputRangeError,
    UnsupportedOpError,
)
from edgeml.fixed import FixedType
from edgeml.golden import TABLE_FUNCS
from edgeml.manifest import sha256

logger = logging.getLogger(__name__)

METADATA_FILE = "edgeml_hls.json"
DEFAULT_PART = "xcvu13p-flga2577-2-e"
MAX_EXACT_DOUBLE_BITS = 53
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------- helpers


def require_gxx() -> None:
    """hls4ml's ``build_lib.sh`` calls ``g++``; fail early with a clear message."""
    if shutil.which("g++") is None:
        raise DependencyError(
            "g++ was not found on PATH; hls4ml compiles its C++ emulation with it. "
            "install g++ (e.g. `apt-get install g++`) and retry."
        )


def fixed_to_json(t: FixedType) -> dict[str, Any]:
    return dataclasses.asdict(t)


def fixed_from_json(d: dict[str, Any]) -> FixedType:
    return FixedType(bool(d["signed"]), int(d["width"]), int(d["frac"]))


def fixed_from_hls4ml(precision: Any) -> FixedType | None:
    """edgeml FixedType of an hls4ml precision type (None for non-fixed types)."""
    from hls4ml.model.types import FixedPrecisionType, IntegerPrecisionType

    if isinstance(precision, FixedPrecisionType):
        return FixedType(
            bool(precision.signed), int(precision.width), int(precision.width - precision.integer)
        )
    if isinstance(precision, IntegerPrecisionType):
        return FixedType(bool(precision.signed), int(precision.width), 0)
    return None


@contextlib.contextmanager
def quiet_hls4ml(what: str):
    """Capture hls4ml's print() chatter and hand it to the debug log instead."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        text = buf.getvalue().strip()
        if text:
            logger.debug("hls4ml output during %s:\n%s", what, text)


def _failing_layer(exc: BaseException) -> str | None:
    """Name of the hls4ml layer / ONNX node being processed when ``exc`` was raised.

    hls4ml's messages rarely name the layer, but its optimizer passes and ONNX
    handlers hold it in a local called ``node`` (or ``layer``); walk the traceback
    from the innermost frame outwards and take the first one found.
    """
    tb = exc.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for key in ("node", "layer"):
            obj = frame.f_locals.get(key)
            name = getattr(obj, "name", None)
            if name is None and isinstance(obj, dict):
                name = obj.get("name")
            if isinstance(name, str) and name:
                return name
    return None


def graph_io(model: Any) -> tuple[str, list[int], str, list[int]]:
    """(input name, input shape, output name, output shape) of a single-I/O QONNX graph."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    outputs = [o.name for o in model.graph.output]
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedOpError(
            f"edgeml's hls4ml flow supports one graph input and one output; got inputs {inputs} "
            f"and outputs {outputs}. Export the model with a single input and output tensor."
        )
    in_shape = [int(d) for d in model.get_tensor_shape(inputs[0])]
    out_shape = [int(d) for d in model.get_tensor_shape(outputs[0])]
    return inputs[0], in_shape, outputs[0], out_shape


def check_supported_ops(model: Any) -> None:
    """Name every node hls4ml's ONNX front end has no handler for, before it fails on the first."""
    from hls4ml.converters.onnx_to_hls import get_supported_onnx_layers

    supported = set(get_supported_onnx_layers()) | {"Dropout", "Identity"}
    bad = [(n.name, n.op_type) for n in model.graph.node if n.op_type not in supported]
    if bad:
        listed = ", ".join(f"{name} ({op})" for name, op in bad)
        raise UnsupportedOpError(
            f"hls4ml 1.3's ONNX front end cannot convert node(s) {listed}. Supported ops: "
            f"{', '.join(sorted(supported))}. Give the model an edge form made of Dense/Conv, "
            "pooling, elementwise and constant ops (run GemmToMatMul for Gemm)."
        )


#: ONNX activations hls4ml 1.3 computes with its own tables or approximations (not the
#: QONNX function followed by its Quant): C-sim differs from QONNX (Tanh 96/100 and
#: Sigmoid 17/100 vectors on the probes in DESIGN.md). The golden model's exact table
#: (a ``UnaryLUT``) is the route for them.
INEXACT_ACTIVATIONS: tuple[str, ...] = (
    *TABLE_FUNCS,  # every function the golden model tabulates exactly...
    "Celu",  # ...and the ones it refuses, which hls4ml would still convert inexactly
    "Gelu",
    "Log",
    "ThresholdedRelu",
)


def qonnx_route_hazards(model: Any) -> list[str]:
    """Nodes hls4ml 1.3's QONNX front end converts wrongly *without an error*, one reason each.

    Checked on the cleaned QONNX graph before conversion, so that such a graph
    goes straight to the golden-IR route (:func:`edgeml.hls_ir.convert_for_golden`)
    instead of producing a project whose C-sim is wrong on most vectors:

    * table activations (:data:`INEXACT_ACTIVATIONS`): hls4ml's tables are not the
      QONNX function;
    * a ``MatMul`` whose two operands both depend on the graph input (attention's
      Q @ K^T): hls4ml drops it, nothing computes its output in the C++;
    * ``Resize`` with torch's empty ``roi`` input, a ``sizes`` input, or other than
      nearest / asymmetric / floor (``nnet::resize_nearest``'s only semantics).

    ``model`` is a QONNX ``ModelWrapper``, an ``onnx.ModelProto`` or a path.
    """
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    graph = model.graph if hasattr(model, "graph") else model.model.graph
    inits = {i.name for i in graph.initializer}
    live = {i.name for i in graph.input if i.name not in inits}  # tensors computed from the input
    for node in graph.node:
        if any(i in live for i in node.input if i):
            live.update(o for o in node.output if o)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*graph.input, *graph.value_info, *graph.output)
    }
    # hls4ml's own test for the layout (converters/onnx/reshape.py)
    last = any(n.domain == "qonnx.custom_op.channels_last" for n in graph.node)
    reasons: list[str] = []
    for node in graph.node:
        label = f"{node.name or node.output[0]} ({node.op_type})"
        if node.op_type in INEXACT_ACTIVATIONS:
            reasons.append(
                f"{label}: hls4ml computes {node.op_type} with its own table / approximation, "
                "not the QONNX function (the golden-IR route uses the exact table)"
            )
        elif (
            node.op_type == "MatMul" and len(node.input) == 2 and all(i in live for i in node.input)
        ):
            reasons.append(
                f"{label}: a MatMul of two activations, which hls4ml drops (nothing computes "
                "its output in the generated C++)"
            )
        elif node.op_type == "Resize":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            dec = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
            inputs = list(node.input)
            if len(inputs) >= 2 and not inputs[1]:
                reasons.append(
                    f"{label}: an empty roi input (torch's export), which hls4ml rejects"
                )
            elif len(inputs) >= 4 and inputs[3]:
                reasons.append(f"{label}: a sizes input, which hls4ml does not support")
            mode = (
                dec.get("mode", "nearest"),
                dec.get("coordinate_transformation_mode", "half_pixel"),
                dec.get("nearest_mode", "round_prefer_floor"),
            )
            shape = shapes.get(inputs[0]) if inputs else None
            hw = (shape[1:3] if last else shape[2:4]) if shape and len(shape) == 4 else None
            if hw and hw[0] != hw[1]:
                reasons.append(
                    f"{label}: a non-square input {shape}; hls4ml's ONNX Resize handler "
                    "swaps height and width (in_height = shape[2], in_width = shape[1])"
                )
            if mode != ("nearest", "asymmetric", "floor"):
                reasons.append(
                    f"{label}: mode / coordinate_transformation_mode / nearest_mode {mode}, "
                    "but hls4ml's resize_nearest computes (nearest, asymmetric, floor) whatever "
                    "the attributes say"
                )
    return reasons


def _is_quantizer_type(precision: Any) -> bool:
    """True when a result type rounds or saturates (i.e. it is a QONNX Quant's type, not an accumulator)."""
    from hls4ml.model.types import FixedPrecisionType, RoundingMode, SaturationMode

    return isinstance(precision, FixedPrecisionType) and (
        precision.rounding_mode != RoundingMode.TRN
        or precision.saturation_mode != SaturationMode.WRAP
    )


def set_output_type(hls_model: Any, output_type: FixedType, converter: Any = None) -> str:
    """Give the hls4ml output layer the result type ``output_type`` and return the layer's name.

    ``converter`` wraps the new type for the backend (default ``APTypeConverter``:
    Vitis' ``ap_fixed``; a Catapult project passes ``ACTypeConverter``).

    Done after conversion (hls4ml fuses the bias ``Add`` into ``Dense_<MatMul>``, whose
    config is the MatMul's, so setting it by ONNX name is fragile) and before
    writing: nothing downstream of the output layer depends on its type.
    """
    from hls4ml.backends.fpga.fpga_types import APTypeConverter
    from hls4ml.model.types import FixedPrecisionType

    out_names = list(hls_model.outputs)
    if len(out_names) != 1:
        raise UnsupportedOpError(
            f"hls4ml model has {len(out_names)} outputs ({out_names}); edgeml supports one."
        )
    layer = next(lay for lay in hls_model.get_layers() if out_names[0] in lay.outputs)
    var = layer.get_output_variable()
    current = var.type.precision
    cur = fixed_from_hls4ml(current)
    if cur is None:
        raise UnsupportedOpError(
            f"output layer {layer.name} has the non-fixed-point type {current}; edgeml compares integer codes only."
        )
    if _is_quantizer_type(current):
        # The output is a QONNX Quant's result (AP_RND_CONV / AP_SAT...): that type *is*
        # the semantics; replacing it would drop the rounding and saturation.
        # The golden model's range analysis can give a narrower type than the quantizer
        # declares (a Quant whose reachable codes are fewer): the codes are the same
        # when the binary point is, and every golden code fits the quantizer's type.
        fits = (
            cur.frac == output_type.frac
            and output_type.qmin >= cur.qmin
            and output_type.qmax <= cur.qmax
        )
        if not fits:
            raise ConfigError(
                f"output layer {layer.name} is a quantizer with type {current} "
                f"(= FixedType(signed={cur.signed}, width={cur.width}, frac={cur.frac})), but output_type is "
                f"{output_type}. Pass output_type equal to the final Quant's type (or one "
                "with its binary point whose range it holds)."
            )
        return layer.name
    accum = layer.types["accum_t"].precision if "accum_t" in layer.types else current
    exact = fixed_from_hls4ml(accum) or cur
    if output_type.frac < exact.frac:
        raise ConfigError(
            f"output_type {output_type.hls()} keeps {output_type.frac} fractional bits, but layer {layer.name} "
            f"computes {exact.frac} ({accum}); C-sim would truncate its outputs. Use frac >= {exact.frac} "
            "(the last bias Quant's scale is 2**-frac)."
        )
    if output_type.integer < exact.integer or (exact.signed and not output_type.signed):
        logger.warning(
            "output_type %s has fewer integer bits than hls4ml's worst-case type %s of %s; outputs wrap if "
            "they leave the range (fine if the golden model's range analysis says they cannot).",
            output_type.hls(),
            accum,
            layer.name,
        )
    var.type.precision = FixedPrecisionType(
        output_type.width, output_type.integer, output_type.signed
    )
    # Types were already wrapped into the backend's definitions; wrap the new one too.
    var.type.convert_precision(converter or APTypeConverter())
    return layer.name


def audit_types(hls_model: Any, default_precision: str) -> None:
    """Log layer types that signal a likely inexactness (default-type fallback, half-up rounding)."""
    from hls4ml.model.types import RoundingMode

    default = fixed_from_hls4ml(
        hls_model.config.backend.convert_precision_string(default_precision)
    )
    for layer in hls_model.get_layers():
        prec = layer.get_output_variable().type.precision
        if getattr(prec, "rounding_mode", None) == RoundingMode.RND:
            logger.warning(
                "layer %s rounds half up (%s); QONNX ROUND is half to even (AP_RND_CONV): ties will differ",
                layer.name,
                prec,
            )
        if (
            layer.class_name != "Input"
            and default is not None
            and fixed_from_hls4ml(prec) == default
        ):
            logger.warning(
                "layer %s (%s) got the default precision %s: hls4ml could not infer an exact type for it; "
                "force one through layer_types",
                layer.name,
                layer.class_name,
                prec,
            )


def sources_sha256(project_dir: Path) -> str:
    """SHA-256 over every file g++ compiles into the C-sim library.

    That is ``build_lib.sh``, the bridge and everything under ``firmware/``
    except the libraries themselves and the ``weights/*.txt`` files (C-sim reads
    those at run time, so they are always current). A project whose sources no
    longer match the library's recorded hash is recompiled before it is run.
    """
    project_dir = Path(project_dir)
    files = [project_dir / "build_lib.sh", *sorted(project_dir.glob("*_bridge.cpp"))]
    for p in sorted((project_dir / "firmware").rglob("*")):
        if (
            p.is_file()
            and p.suffix != ".so"
            and not (p.parent.name == "weights" and p.suffix == ".txt")
        ):
            files.append(p)
    h = hashlib.sha256()
    for p in files:
        if p.is_file():
            h.update(str(p.relative_to(project_dir)).encode() + b"\0")
            h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


#: ``<type> <name>[<n>] = {v0, v1, ...};`` in the synthesis branch of a weights header.
_HEADER_ARRAY = re.compile(
    r"#else\s+(?P<type>[A-Za-z_]\w*)\s+(?P<var>[A-Za-z_]\w*)\[(?P<n>\d+)\]\s*=\s*\{(?P<body>[^}]*)\}\s*;",
    re.S,
)
#: ``nnet::dense<...>(in, out, w2, b2); // Dense_MatMul_0``: which layer uses which array.
_CALL_LINE = re.compile(r"nnet::\w+<[^;]*>\((?P<args>[^;]*)\);\s*//\s*(?P<layer>\S+)")


@dataclass
class HeaderMismatch:
    """One element where a weights header (what Vitis synthesises) differs from C-sim's ``.txt``."""

    file: str
    index: int
    header: str
    txt: str
    layer: str

    def describe(self) -> str:
        return (
            f"{self.file}[{self.index}] = {self.header} in the header but {self.txt} in the .txt "
            f"C-sim loads (layer {self.layer})"
        )


def array_layers(project_dir: Path, name: str) -> dict[str, str]:
    """Weight/bias array name (``w60``) -> the hls4ml layer that uses it (``Dense_MatMul_0``)."""
    cpp = Path(project_dir) / "firmware" / f"{name}.cpp"
    out: dict[str, str] = {}
    if cpp.is_file():
        for m in _CALL_LINE.finditer(cpp.read_text(errors="replace")):
            for arg in m.group("args").split(","):
                out.setdefault(arg.strip(), m.group("layer"))
    return out


def _parse_values(text: str) -> list[str]:
    return [t.strip() for t in text.replace("\n", " ").split(",") if t.strip()]


def check_weight_headers(project_dir: Path, name: str) -> tuple[int, list[HeaderMismatch]]:
    """Prove that each ``firmware/weights/*.h`` array equals the ``.txt`` C-sim loads.

    Vitis compiles the ``.h`` initialisers (``#else`` branch, ``__SYNTHESIS__``);
    C-sim leaves those arrays empty and reads ``<var>.txt`` instead, so a C-sim
    pass says nothing about the headers unless the two are equal. Values are
    compared as exact decimal numbers, element for element. Returns the number
    of elements compared and every mismatch (file, index, both values, layer);
    a header without a readable array, or a length mismatch, is a mismatch at
    index -1.
    """
    wdir = Path(project_dir) / "firmware" / "weights"
    layers = array_layers(project_dir, name)
    compared = 0
    bad: list[HeaderMismatch] = []
    for h in sorted(wdir.glob("*.h")):
        rel = str(h.relative_to(project_dir))
        m = _HEADER_ARRAY.search(h.read_text(errors="replace"))
        if m is None:
            bad.append(HeaderMismatch(rel, -1, "no initialised array", "", layers.get(h.stem, "?")))
            continue
        var = m.group("var")
        layer = layers.get(var, "?")
        hv = _parse_values(m.group("body"))
        txt = wdir / f"{var}.txt"
        tv = _parse_values(txt.read_text(errors="replace")) if txt.is_file() else []
        if len(hv) != int(m.group("n")) or len(hv) != len(tv):
            bad.append(
                HeaderMismatch(
                    rel,
                    -1,
                    f"{len(hv)} values (declared {m.group('n')})",
                    f"{len(tv)} values",
                    layer,
                )
            )
            continue
        for i, (a, b) in enumerate(zip(hv, tv, strict=True)):
            try:
                same = a == b or Fraction(a) == Fraction(b)
            except (ValueError, ZeroDivisionError):
                same = False
            if not same:
                bad.append(HeaderMismatch(rel, i, a, b, layer))
        compared += len(hv)
    return compared, bad


# --------------------------------------------------------------------------- design


class _TraceData(ctypes.Structure):
    """``struct trace_data`` of hls4ml's bridge: one traced layer's name and buffer."""

    _fields_ = (("name", ctypes.c_char_p), ("data", ctypes.c_void_p))


@dataclass
class TracedLayer:
    """One hls4ml layer whose output C-sim can record: name, hls4ml shape (channels last), result type."""

    name: str
    shape: tuple[int, ...]
    type: FixedType | None


@dataclass
class HlsDesign:
    """A compiled hls4ml project and its C-sim, called through ctypes.

    Build one with :func:`convert_hls`, or reopen a compiled project with
    :meth:`load` (no hls4ml import; g++ only if the project was moved).
    """

    project_dir: Path
    name: str
    input_type: FixedType
    output_type: FixedType
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    lib_path: Path
    traced: list[TracedLayer] = field(default_factory=list)
    output_layer: str = ""
    compile_seconds: float = 0.0
    #: why :meth:`load` recompiled the C-sim library ("" when it did not)
    rebuilt_because: str = field(default="", init=False)
    _lib: Any = field(default=None, init=False, repr=False)
    _fn: Any = field(default=None, init=False, repr=False)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, project_dir: Path) -> HlsDesign:
        """Reopen a project written and compiled by :func:`convert_hls`."""
        project_dir = Path(project_dir)
        meta_path = project_dir / METADATA_FILE
        if not meta_path.is_file():
            raise CorruptFileError(
                f"{meta_path} is missing: {project_dir} was not written by edgeml.hls.convert_hls. "
                "Re-run the hls stage."
            )
        try:
            meta = json.loads(meta_path.read_text())
            design = cls(
                project_dir=project_dir,
                name=meta["name"],
                input_type=fixed_from_json(meta["input_type"]),
                output_type=fixed_from_json(meta["output_type"]),
                input_shape=tuple(meta["input_shape"]),
                output_shape=tuple(meta["output_shape"]),
                lib_path=project_dir / meta["lib"],
                traced=[
                    TracedLayer(
                        t["name"],
                        tuple(t["shape"]),
                        fixed_from_json(t["type"]) if t["type"] else None,
                    )
                    for t in meta["traced"]
                ],
                output_layer=meta.get("output_layer", ""),
                compile_seconds=float(meta.get("compile_seconds", 0.0)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptFileError(
                f"{meta_path} is not valid edgeml hls metadata ({exc}); re-run the hls stage."
            ) from exc
        built_in = meta.get("compiled_in")
        sources = sources_sha256(project_dir)
        design.rebuilt_because = ""
        if built_in != str(project_dir.resolve()) or not design.lib_path.is_file():
            # build_lib.sh bakes the absolute firmware/weights path into the .so, and
            # C-sim calls exit(1) when a weights file is missing: rebuild after a move.
            design.rebuilt_because = "project moved or library missing"
        elif meta.get("sources_sha256") != sources:
            # the firmware on disk is what is checked: an edited source means a new library
            design.rebuilt_because = "firmware sources changed since the C-sim library was built"
        if design.rebuilt_because:
            design._rebuild(meta, meta_path, sources)
        design._open()
        return design

    def _rebuild(self, meta: dict[str, Any], meta_path: Path, sources: str) -> None:
        """Re-run hls4ml's build_lib.sh (g++) in place and record the new location and sources.

        The new library is also copied under a name with the sources' hash, and
        that copy is what is loaded: ``dlopen`` returns an already loaded
        library by path, so reusing the old name in one process would run the
        old code.
        """
        require_gxx()
        logger.info("recompiling C-sim of %s (%s)", self.project_dir, self.rebuilt_because)
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["bash", "build_lib.sh"],
            cwd=self.project_dir,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not self.lib_path.is_file():
            tail = (proc.stdout + proc.stderr)[-2000:]
            raise EdgemlError(f"build_lib.sh failed in {self.project_dir}:\n{tail}")
        self.compile_seconds = time.perf_counter() - t0
        unique = self.lib_path.with_name(f"{self.lib_path.stem}-{sources[:12]}.so")
        shutil.copy2(self.lib_path, unique)
        self.lib_path = unique
        meta["compiled_in"] = str(self.project_dir.resolve())
        meta["sources_sha256"] = sources
        meta_path.write_text(json.dumps(meta, indent=2))

    def _open(self) -> None:
        if not self.lib_path.is_file():
            raise CorruptFileError(
                f"C-sim library {self.lib_path} is missing; recompile the project (re-run convert_hls)."
            )
        if not (self.project_dir / "firmware" / "weights").is_dir():
            # C-sim would exit(1) the whole process on its first call.
            raise CorruptFileError(
                f"{self.project_dir}/firmware/weights is missing; C-sim loads weights from it. "
                "Re-run convert_hls."
            )
        # ctypes.CDLL releases the GIL during calls and loads with RTLD_LOCAL, so several
        # designs (same project name, same weight symbol names) can be open at once.
        self._lib = ctypes.CDLL(str(self.lib_path))
        fn = getattr(self._lib, f"{self.name}_double")
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self._fn = fn

    # ------------------------------------------------------------------ I/O helpers

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def output_size(self) -> int:
        return int(np.prod(self.output_shape))

    @property
    def layer_types(self) -> dict[str, FixedType | None]:
        """Result type of every traced hls4ml layer (to turn :meth:`trace_int` values into codes)."""
        return {t.name: t.type for t in self.traced}

    def _inputs(self, x_codes: np.ndarray) -> np.ndarray:
        """Validate integer input codes and return them as exact doubles, one row per vector."""
        x = np.asarray(x_codes)
        if x.dtype.kind not in "iu":
            raise InputRangeError(
                f"x_codes must be integer codes of {self.input_type.hls()}; got dtype {x.dtype}. "
                f"Convert real inputs with np.rint(x * 2**{self.input_type.frac}).astype(np.int64)."
            )
        if x.shape == self.input_shape:
            x = x[None]
        if tuple(x.shape[1:]) != self.input_shape:
            raise EdgemlError(
                f"x_codes has shape {x.shape}; expected (N, {', '.join(map(str, self.input_shape))}) "
                "in the QONNX graph input's layout."
            )
        if x.size:
            lo, hi = int(x.min()), int(x.max())
            if lo < self.input_type.qmin or hi > self.input_type.qmax:
                raise InputRangeError(
                    f"input codes span [{lo}, {hi}], outside {self.input_type.hls()} codes "
                    f"[{self.input_type.qmin}, {self.input_type.qmax}]; they would wrap in hardware. "
                    "Clip them or widen input_type."
                )
        # The flat C-order row is what hls4ml's io_parallel top function takes: any NCHW->NHWC
        # Transpose left in the graph is a layer of the design, and single-channel ones are no-ops.
        return np.ascontiguousarray(
            np.ldexp(x.reshape(len(x), self.input_size).astype(np.float64), -self.input_type.frac)
        )

    def _run(self, x: np.ndarray, out: np.ndarray) -> None:
        n_in, n_out = self.input_size * 8, self.output_size * 8
        xp, yp = x.ctypes.data, out.ctypes.data
        fn = self._fn
        for i in range(len(x)):
            fn(xp + i * n_in, yp + i * n_out)

    # ------------------------------------------------------------------ public API

    def predict_float(self, x_codes: np.ndarray) -> np.ndarray:
        """C-sim outputs as exact float64 values, shape (N, *output_shape)."""
        x = self._inputs(x_codes)
        out = np.zeros((len(x), self.output_size), dtype=np.float64)
        self._run(x, out)
        return out.reshape((len(x), *self.output_shape))

    def predict_int(self, x_codes: np.ndarray) -> np.ndarray:
        """C-sim outputs as int64 codes of ``output_type``, shape (N, *output_shape).

        Raises ValueError if an output is off ``output_type``'s grid (itself a finding).
        """
        return self.output_type.from_float_exact(self.predict_float(x_codes))

    def trace_int(self, x_codes: np.ndarray, *, codes: bool = False) -> dict[str, np.ndarray]:
        """Per-layer C-sim outputs, keyed by hls4ml layer name, in network order.

        Values are exact float64 (shape (N, *hls4ml shape), channels last); with
        ``codes=True`` they are int64 codes of each layer's result type
        (:attr:`layer_types`). Tracing is ~2x slower than :meth:`predict_int` and not
        thread-safe (the C side keeps one global trace buffer).
        """
        if not self.traced:
            raise EdgemlError(
                f"{self.project_dir} was compiled with trace=False; re-run convert_hls(trace=True)."
            )
        x = self._inputs(x_codes)
        n = len(x)
        result = {t.name: np.zeros((n, *t.shape), dtype=np.float64) for t in self.traced}

        lib = self._lib
        lib.allocate_trace_storage.argtypes = [ctypes.c_size_t]
        lib.allocate_trace_storage.restype = None
        lib.free_trace_storage.argtypes = []
        lib.free_trace_storage.restype = None
        lib.collect_trace_output.argtypes = [ctypes.POINTER(_TraceData)]
        lib.collect_trace_output.restype = None
        slots = (_TraceData * len(self.traced))()
        out = np.zeros((1, self.output_size), dtype=np.float64)
        lib.allocate_trace_storage(ctypes.sizeof(ctypes.c_double))
        try:
            # The bridge allocates one buffer per traced layer here; their addresses stay fixed.
            lib.collect_trace_output(slots)
            views = {}
            for slot in slots:
                name = slot.name.decode()
                size = int(np.prod(result[name].shape[1:]))
                ptr = ctypes.cast(slot.data, ctypes.POINTER(ctypes.c_double))
                views[name] = np.ctypeslib.as_array(ptr, shape=(size,))
            for i in range(n):
                self._fn(x[i].ctypes.data, out.ctypes.data)
                for name, view in views.items():
                    result[name][i].reshape(-1)[:] = view
        finally:
            lib.free_trace_storage()
        if codes:
            typed = {}
            for t in self.traced:
                if t.type is None:
                    raise EdgemlError(
                        f"layer {t.name} has no fixed-point type; trace it with codes=False"
                    )
                typed[t.name] = t.type.from_float_exact(result[t.name])
            return typed
        return result

    def write_testbench(self, x_codes: np.ndarray) -> Path:
        """Write ``tb_data/`` input vectors and their C-sim outputs for Vitis csim / cosim.

        The testbench reads values with ``atof`` into ``float``; inputs and outputs
        are exact there while their types are at most 24 bits wide.
        """
        x = self._inputs(x_codes)
        y = self.predict_float(x_codes).reshape(len(x), -1)
        tb = self.project_dir / "tb_data"
        tb.mkdir(exist_ok=True)
        np.savetxt(tb / "tb_input_features.dat", x, fmt="%.17g")
        np.savetxt(tb / "tb_output_predictions.dat", y, fmt="%.17g")
        if max(self.input_type.width, self.output_type.width) > 24:
            logger.warning(
                "testbench values pass through float in %s_test.cpp; types wider than 24 bits may round there",
                self.name,
            )
        return tb


# --------------------------------------------------------------------------- conversion


def layer_config(
    model: Any,
    onnx_path: Path,
    backend: str,
    in_name: str,
    input_type: FixedType,
    layer_types: dict[str, FixedType] | None,
    default_precision: str,
    reuse_factor: int,
    accum_types: dict[str, str] | None = None,
) -> dict[str, Any]:
    """hls4ml's per-layer config of ``model`` for ``backend``, with the input and forced types set.

    The input layer gets exactly ``input_type``; every ``layer_types`` key must name a
    layer (a ConfigError lists the known names). ``accum_types`` sets Dense/Conv
    accumulators (``Precision.accum``, e.g. the interval-minimal types of
    :func:`edgeml.minwidth.hls_accum_settings`).
    """
    with quiet_hls4ml("import"):
        import hls4ml
        from hls4ml.converters.onnx_to_hls import replace_char_inconsitency, sanitize_layer_name

    try:
        with quiet_hls4ml("config_from_onnx_model"):
            cfg = hls4ml.utils.config_from_onnx_model(
                model,
                granularity="name",
                backend=backend,
                default_precision=default_precision,
                default_reuse_factor=reuse_factor,
            )
    except Exception as exc:
        raise conversion_error(exc, onnx_path) from exc
    layer_cfg = cfg["LayerName"]
    in_layer = {"name": replace_char_inconsitency(in_name), "class_name": "InputLayer"}
    sanitize_layer_name(in_layer)
    layer_cfg.setdefault(in_layer["name"], {}).setdefault("Precision", {})["result"] = (
        input_type.hls()
    )
    for key, t in (layer_types or {}).items():
        if key not in layer_cfg:
            raise ConfigError(
                f"layer_types key {key!r} is not a layer of {onnx_path.name}; known names: "
                f"{', '.join(layer_cfg)}."
            )
        layer_cfg[key].setdefault("Precision", {})["result"] = t.hls()
    if accum_types:
        from edgeml.minwidth import apply_hls_accum

        apply_hls_accum(cfg, accum_types)
    return cfg


def convert_hls(
    onnx_path: Path,
    project_dir: Path,
    *,
    name: str,
    input_type: FixedType,
    output_type: FixedType,
    part: str = DEFAULT_PART,
    clock_period: float = 5.0,
    reuse_factor: int = 1,
    layer_types: dict[str, FixedType] | None = None,
    default_precision: str = "fixed<16,6>",
    trace: bool = True,
    accum_types: dict[str, str] | None = None,
) -> HlsDesign:
    """Convert a cleaned QONNX model to an hls4ml Vitis project (io_parallel) and compile its C-sim.

    Args:
        onnx_path: cleaned QONNX file (see the module docstring for the cleanup).
        project_dir: where the project is written; must be missing, empty or an
            earlier hls4ml project (which is replaced).
        name: project / top-function name (a C identifier).
        input_type: type of the input codes; the hls4ml input layer gets exactly
            ``input_type.hls()``.
        output_type: type of the output codes; the output layer's result type.
            Its ``frac`` must keep all of the last layer's fractional bits (for a
            Brevitas net ending in a Linear, 2**-frac is the last bias Quant's scale).
        part, clock_period, reuse_factor: passed to hls4ml (ReuseFactor on every layer).
        layer_types: force the result type of cleaned-QONNX nodes' outputs, keyed by
            node name (hls4ml's config ``LayerName`` keys). A MatMul / Conv key sets the
            Dense_/Conv2D_ layer, and hls4ml then adds the bias in a separate layer;
            fused bias Adds and Quants are refused. Forced types are ``ap_fixed<W,I>``
            (truncate, wrap), so they must hold the exact values. Not needed on the
            test models (see the module docstring).
        default_precision: hls4ml's fallback type; a layer left with it is logged
            as a warning, since it means hls4ml inferred no exact type.
        accum_types: hls4ml accumulator types per Dense/Conv node name (``fixed<W,I>``),
            e.g. the exact interval-minimal ones of ``compress.min_widths``.
        trace: compile per-layer output recording into C-sim (``#ifndef
            __SYNTHESIS__`` only: the synthesized design is unchanged) for
            :meth:`HlsDesign.trace_int`.

    Raises:
        DependencyError: g++ is missing.
        UnsupportedOpError: hls4ml cannot convert a node (named with hls4ml's message).
        ConfigError: bad name, types or project_dir.
        CorruptFileError: the ONNX file cannot be read.
    """
    onnx_path, project_dir = Path(onnx_path), Path(project_dir)
    if not NAME_RE.match(name):
        raise ConfigError(
            f"name {name!r} must be a C identifier ([A-Za-z_][A-Za-z0-9_]*): it names the top function."
        )
    for label, t in (("input_type", input_type), ("output_type", output_type)):
        if t.width > MAX_EXACT_DOUBLE_BITS:
            raise ConfigError(
                f"{label} {t.hls()} is wider than {MAX_EXACT_DOUBLE_BITS} bits; C-sim values pass through double "
                "and would round. Use a narrower type."
            )
    if reuse_factor < 1:
        raise ConfigError(f"reuse_factor must be >= 1; got {reuse_factor}.")
    if not onnx_path.is_file():
        raise CorruptFileError(
            f"QONNX file {onnx_path} does not exist; run the export stage first."
        )
    with quiet_hls4ml("import"):
        import hls4ml
        from qonnx.core.modelwrapper import ModelWrapper

    try:
        model = ModelWrapper(str(onnx_path))
    except Exception as exc:
        raise CorruptFileError(f"cannot read QONNX model {onnx_path}: {exc}") from exc
    in_name, in_shape, _out_name, out_shape = graph_io(model)
    check_supported_ops(model)
    require_gxx()
    prepare_project_dir(project_dir)

    # ---- hls4ml config
    cfg = layer_config(
        model,
        onnx_path,
        "Vitis",
        in_name,
        input_type,
        layer_types,
        default_precision,
        reuse_factor,
        accum_types,
    )

    # ---- convert
    try:
        with quiet_hls4ml("convert_from_onnx_model"):
            hls_model = hls4ml.converters.convert_from_onnx_model(
                model,
                output_dir=str(project_dir),
                project_name=name,
                backend="Vitis",
                io_type="io_parallel",
                part=part,
                clock_period=clock_period,
                hls_config=cfg,
            )
    except Exception as exc:
        raise conversion_error(exc, onnx_path) from exc

    check_input_type(hls_model, input_type)
    check_forced_types(hls_model, layer_types or {})
    _configure_softmax(hls_model, model)  # helper B: Softmax tables/types from the golden model
    audit_types(hls_model, default_precision)
    output_layer = set_output_type(hls_model, output_type)

    hls_in = hls_model.get_input_variables()
    if len(hls_in) != 1 or hls_in[0].size() != int(np.prod(in_shape[1:])):
        raise UnsupportedOpError(
            f"hls4ml's input {[v.shape for v in hls_in]} does not match the QONNX input {in_shape}; "
            "edgeml supports one input tensor."
        )
    hls_out = hls_model.get_output_variables()
    if len(hls_out) != 1 or hls_out[0].size() != int(np.prod(out_shape[1:])):
        raise UnsupportedOpError(
            f"hls4ml's output {[v.shape for v in hls_out]} does not match the QONNX output {out_shape}."
        )

    return finish_project(
        hls_model,
        project_dir,
        name=name,
        what=f"the hls4ml C-sim of {onnx_path.name}",
        trace=trace,
        input_type=input_type,
        output_type=output_type,
        input_shape=tuple(in_shape[1:]),
        output_shape=tuple(out_shape[1:]),
        output_layer=output_layer,
        meta={
            "route": "qonnx",
            "onnx": str(onnx_path),
            "onnx_sha256": sha256(onnx_path),
            "part": part,
            "clock_period": clock_period,
            "reuse_factor": reuse_factor,
            "layer_types": {k: fixed_to_json(v) for k, v in (layer_types or {}).items()},
        },
    )


def finish_project(
    hls_model: Any,
    project_dir: Path,
    *,
    name: str,
    what: str,
    trace: bool,
    input_type: FixedType,
    output_type: FixedType,
    input_shape: tuple[int, ...],
    output_shape: tuple[int, ...],
    output_layer: str,
    meta: dict[str, Any],
) -> HlsDesign:
    """Compile a written hls4ml project's C-sim, record its metadata, open it.

    The one ending of every route that writes a project (hls4ml's QONNX front end,
    :mod:`edgeml.hls_ir`): per-layer tracing (``#ifndef __SYNTHESIS__`` only), the
    compile, the completeness check, and ``METADATA_FILE`` (``meta`` adds the route's
    own keys: source model, part, clock, ...), which :meth:`HlsDesign.load` reads.
    """
    import hls4ml

    traced: list[TracedLayer] = []
    if trace:
        hls_model.config.trace_output = True
        for layer in hls_model.get_layers():
            layer.set_attr("trace", True)  # the writer skips layers without a C++ call (Input)
    t0 = time.perf_counter()
    try:
        with quiet_hls4ml("compile"):
            hls_model.compile()
    except Exception as exc:
        raise EdgemlError(
            f"g++ failed to compile {what} in {project_dir}: {exc}. "
            f"Run {project_dir}/build_lib.sh there to see the compiler output."
        ) from exc
    compile_seconds = time.perf_counter() - t0
    if trace:
        for layer in hls_model.get_layers():
            if layer.get_attr("function_cpp", None) and layer.get_attr("trace", False):
                var = layer.get_output_variable()
                traced.append(
                    TracedLayer(
                        layer.name,
                        tuple(int(d) for d in var.shape),
                        fixed_from_hls4ml(var.type.precision),
                    )
                )
    lib = project_dir / "firmware" / f"{name}-{hls_model.config.get_config_value('Stamp')}.so"
    missing = [
        p
        for p in ("build_prj.tcl", "project.tcl", "firmware", f"firmware/{name}.cpp")
        if not (project_dir / p).exists()
    ]
    if missing or not lib.is_file():
        raise EdgemlError(
            f"hls4ml wrote an incomplete project in {project_dir}: missing {missing or [lib.name]}."
        )
    design = HlsDesign(
        project_dir=project_dir,
        name=name,
        input_type=input_type,
        output_type=output_type,
        input_shape=tuple(input_shape),
        output_shape=tuple(output_shape),
        lib_path=lib,
        traced=traced,
        output_layer=output_layer,
        compile_seconds=compile_seconds,
    )
    record = {
        "name": name,
        "lib": str(lib.relative_to(project_dir)),
        "input_type": fixed_to_json(input_type),
        "output_type": fixed_to_json(output_type),
        "input_shape": list(design.input_shape),
        "output_shape": list(design.output_shape),
        "output_layer": output_layer,
        "traced": [
            {
                "name": t.name,
                "shape": list(t.shape),
                "type": fixed_to_json(t.type) if t.type else None,
            }
            for t in traced
        ],
        "layers": {
            layer.name: {
                "class": layer.class_name,
                **{k: str(v.precision) for k, v in layer.types.items()},
            }
            for layer in hls_model.get_layers()
        },
        **meta,
        "compile_seconds": compile_seconds,
        "compiled_in": str(project_dir.resolve()),
        "sources_sha256": sources_sha256(project_dir),
        "hls4ml_version": hls4ml.__version__,
        "python": sys.version.split()[0],
    }
    (project_dir / METADATA_FILE).write_text(json.dumps(record, indent=2))
    logger.info("%s written to %s; C-sim compiled in %.1f s", what, project_dir, compile_seconds)
    design._open()
    return design


def prepare_project_dir(project_dir: Path) -> None:
    """Refuse to write over unrelated files; clear an earlier hls4ml project (stale weights, .so)."""
    if project_dir.exists():
        if not project_dir.is_dir():
            raise ConfigError(f"project_dir {project_dir} exists and is not a folder.")
        entries = list(project_dir.iterdir())
        if entries:
            markers = (METADATA_FILE, "hls4ml_config.yml", "build_prj.tcl", "firmware")
            if not any((project_dir / m).exists() for m in markers):
                raise ConfigError(
                    f"project_dir {project_dir} is not empty and holds no earlier hls4ml project; "
                    "choose an empty or new folder."
                )
            shutil.rmtree(project_dir)
    project_dir.mkdir(parents=True, exist_ok=True)


def conversion_error(exc: Exception, onnx_path: Path) -> EdgemlError:
    if isinstance(exc, EdgemlError):
        return exc
    where = _failing_layer(exc)
    at = f" at layer {where}" if where else ""
    return UnsupportedOpError(
        f"hls4ml could not convert {onnx_path.name}{at}: {type(exc).__name__}: {exc}. "
        "See the README's 'Known limits' (hls4ml pitfalls); the golden model and RTL still cover this graph."
    )


def check_input_type(hls_model: Any, input_type: FixedType) -> None:
    got = fixed_from_hls4ml(hls_model.get_input_variables()[0].type.precision)
    if got != input_type:
        raise ConfigError(
            f"hls4ml gave the input the type {got}, not input_type {input_type}; check the input layer's name."
        )


def check_forced_types(hls_model: Any, layer_types: dict[str, FixedType]) -> None:
    """Every forced type must land on an hls4ml layer: hls4ml drops configs of fused nodes
    (a bias Add merged into Dense) and overrides Quant nodes' types with the quantizer's."""
    layers = list(hls_model.get_layers())
    for key, want in layer_types.items():
        hits = [
            lay
            for lay in layers
            if lay.name == key or lay.name.startswith(key + "_") or lay.name.endswith("_" + key)
        ]
        got = [fixed_from_hls4ml(lay.get_output_variable().type.precision) for lay in hits]
        if not hits or want not in got:
            names = ", ".join(
                f"{lay.name}={lay.get_output_variable().type.precision}" for lay in layers
            )
            raise ConfigError(
                f"layer_types[{key!r}] = {want.hls()} did not reach any hls4ml layer (hls4ml fuses bias Adds into the "
                f"MatMul/Conv layer and keeps Quant types as they are). hls4ml layers: {names}."
            )


# ---- Softmax (owned by the golden/RTL helper; keep this block self-contained)
def _configure_softmax(hls_model: Any, model: Any) -> None:
    """Set every Softmax layer's tables and types from the golden model (edgeml.softmax).

    hls4ml's ``auto`` types index the exp table with the top bits of a very wide input,
    so every class got 1/n; the golden model's explicit types make C-sim == golden.
    """
    if not any(layer.class_name == "Softmax" for layer in hls_model.get_layers()):
        return
    from edgeml.golden import GoldenModel
    from edgeml.softmax import configure_hls_softmax

    configure_hls_softmax(hls_model, GoldenModel.from_onnx(model).ops)
