"""Bring your own model: normalise QONNX/ONNX files as other tools write them.

Files from FINN, Brevitas, QKeras (via qonnx) or ``torch.onnx.export`` differ from
what :func:`edgeml.export.clean_qonnx` and the golden model expect in a few known
ways (see ``../shared/DESIGN.md``, "Models made elsewhere"). :func:`normalise`
rewrites them, one small qonnx-style :class:`~qonnx.transformation.base.Transformation`
per concern, and records one human sentence per rewrite:

* custom ops in the old domains (``finn``, ``finn.custom_op.general``,
  ``onnx.brevitas``) or with no opset import for their domain;
* ``output=``: cut the graph at a named tensor or node (drop a trailing Softmax);
* a symbolic (``N``, ``batch``, ``?``) or absent batch dimension -> 1;
* an unquantized graph input: a ``Quant`` is inserted right after it, with the
  precision taken from, in order, an existing Quant, a FINN ``quantization_annotation``
  (``finn_datatype``), ``input_type`` or ``calib`` data;
* ``Div`` by a constant -> ``Mul`` by its reciprocal (exact for powers of two);
* ONNX's optional Conv / MaxPool attributes written out (qonnx's channels-last
  conversion needs ``strides`` etc.); a bias-free ``Gemm`` -> ``MatMul`` (qonnx's
  GemmToMatMul crashes on it);
* ``BipolarQuant`` of a constant weight -> the equivalent 2-bit narrow ``Quant``
  of its signs (hls4ml 1.3 stores BipolarQuant weights as {0, 1});
* FINN datatype annotations on weight initializers without a Quant (INT2, BIPOLAR,
  ...) -> a Quant / BipolarQuant at scale 1 (or the FIXED scale);
* optionally (``weight_bits``) float weights -> per-tensor power-of-two Quant.

The result is an ``onnx.ModelProto`` that passes ``onnx.checker`` and is ready for
``clean_qonnx``. Nothing is ever ``eval``-ed; strings are parsed with regular expressions.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

from edgeml.errors import ConfigError, CorruptFileError, UnsupportedOpError

log = logging.getLogger(__name__)

#: The domain qonnx (and the golden model) use for Quant / BipolarQuant / Trunc.
QONNX_DOMAIN = "qonnx.custom_op.general"
#: Custom-op domains written by older FINN and Brevitas exports, renamed to QONNX_DOMAIN.
OLD_DOMAINS: tuple[str, ...] = ("finn.custom_op.general", "finn", "onnx.brevitas")
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
#: QONNX ops some exporters leave in the default ONNX domain.
QONNX_OPS: frozenset[str] = frozenset({"Quant", "BipolarQuant", "Trunc", "MultiThreshold"})
#: Ops that only move data; an input quantizer may sit behind them.
LAYOUT_OPS: frozenset[str] = frozenset({"Transpose", "Reshape", "Flatten", "Identity"})
#: Ops whose input 1 is a weight.
WEIGHT_OPS: frozenset[str] = frozenset({"MatMul", "Gemm", "Conv"})
#: Bits of the input quantizer chosen from calibration data unless told otherwise.
DEFAULT_CALIB_BITS = 16
#: Accepted ``input_type`` spellings, for messages.
INPUT_TYPE_FORMS = (
    "ap_fixed<W,I>, ap_ufixed<W,I>, fixed<W,I>, ufixed<W,I>, ap_int<N>, ap_uint<N>, intN, uintN "
    "(W, N total bits in 1..32 with the sign bit; I integer bits incl. sign)"
)


# --------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class InputQuant:
    """A QONNX ``Quant`` (zero point 0, rounding ROUND): ``bits``, ``signed``, ``narrow``, ``scale``."""

    bits: int
    signed: bool
    scale: float
    narrow: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 32 or (self.signed and self.bits < 2):
            raise ConfigError(
                f"input precision of {self.bits} bits ({'signed' if self.signed else 'unsigned'}) "
                "is not allowed; signed types need 2..32 bits, unsigned 1..32"
            )
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ConfigError(f"input scale must be positive and finite, got {self.scale!r}")

    @property
    def lo(self) -> float:
        """Smallest representable real value."""
        if not self.signed:
            return 0.0
        return (-(1 << (self.bits - 1)) + int(self.narrow)) * self.scale

    @property
    def hi(self) -> float:
        """Largest representable real value."""
        top = (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1 - int(self.narrow)
        return top * self.scale

    def describe(self) -> str:
        """E.g. ``8-bit unsigned, scale 1 (ap_ufixed<8,8>)``."""
        kind = "signed" if self.signed else "unsigned"
        narrow = " narrow" if self.narrow else ""
        hls = ""
        m, e = math.frexp(self.scale)
        if m == 0.5:
            frac = 1 - e
            hls = f" ({'ap_fixed' if self.signed else 'ap_ufixed'}<{self.bits},{self.bits - frac}>)"
        return f"{self.bits}-bit {kind}{narrow}, scale {self.scale:g}{hls}"


_FIXED_RE = re.compile(r"^\s*(ap_)?(u?)fixed\s*<\s*(\d+)\s*,\s*(-?\d+)\s*>\s*$", re.IGNORECASE)
_APINT_RE = re.compile(r"^\s*ap_(u?)int\s*<\s*(\d+)\s*>\s*$", re.IGNORECASE)
_INT_RE = re.compile(r"^\s*(u?)int(\d+)\s*$", re.IGNORECASE)


def parse_input_type(text: str) -> InputQuant:
    """``ap_fixed<16,6>``, ``ap_ufixed<8,0>``, ``fixed<w,i>``, ``int8``, ``uint8`` -> InputQuant.

    Anything else raises :class:`ConfigError` listing the accepted forms.
    """
    if not isinstance(text, str):
        raise ConfigError(
            f"input_type must be a string, got {type(text).__name__}; allowed: {INPUT_TYPE_FORMS}"
        )
    m = _FIXED_RE.match(text)
    if m:
        width, integer = int(m.group(3)), int(m.group(4))
        signed = m.group(2) == ""
        if 1 <= width <= 32 and -64 <= integer <= 64:
            return InputQuant(width, signed, 2.0 ** -(width - integer))
    for rx, ui, ni in ((_APINT_RE, 1, 2), (_INT_RE, 1, 2)):
        m = rx.match(text)
        if m and 1 <= int(m.group(ni)) <= 32:
            return InputQuant(int(m.group(ni)), m.group(ui) == "", 1.0)
    raise ConfigError(f"input_type {text!r} is not understood; allowed: {INPUT_TYPE_FORMS}")


_DT_INT_RE = re.compile(r"^(U?)INT(\d+)$")
_DT_FIXED_RE = re.compile(r"^(U?)FIXED<(\d+),(-?\d+)>$")


def parse_finn_datatype(name: str) -> InputQuant | None:
    """A FINN/qonnx ``finn_datatype`` string -> the Quant that represents it (None for floats).

    INTn -> signed n bits, scale 1; UINTn -> unsigned; BINARY -> 1-bit unsigned;
    BIPOLAR -> 2-bit signed narrow (codes -1, 0, +1; the +-1 values pass unchanged);
    TERNARY -> 2-bit signed narrow; FIXED<w,i> -> signed w bits at scale 2**-(w-i),
    UFIXED likewise unsigned. FLOAT32/FLOAT16 -> None. Unknown names raise ConfigError.
    """
    n = name.strip().upper().replace(" ", "")
    if n in ("FLOAT32", "FLOAT16", "BFLOAT16", ""):
        return None
    if n == "BINARY":
        return InputQuant(1, False, 1.0)
    if n in ("BIPOLAR", "TERNARY"):
        return InputQuant(2, True, 1.0, narrow=True)
    m = _DT_INT_RE.match(n)
    if m:
        return InputQuant(int(m.group(2)), m.group(1) == "", 1.0)
    m = _DT_FIXED_RE.match(n)
    if m:
        w, i = int(m.group(2)), int(m.group(3))
        return InputQuant(w, m.group(1) == "", 2.0 ** -(w - i))
    raise ConfigError(
        f"finn_datatype {name!r} is not supported; allowed: INTn, UINTn, BINARY, BIPOLAR, "
        "TERNARY, FIXED<w,i>, UFIXED<w,i>, FLOAT32"
    )


def calib_quant(calib: np.ndarray, bits: int = DEFAULT_CALIB_BITS) -> InputQuant:
    """The smallest power-of-two-scaled fixed type of ``bits`` bits holding ``calib``'s range.

    Signed when any value is negative. The scale is the smallest power of two with
    ``max|x| <= qmax * scale`` (qmax = 2**(bits-1)-1 signed, 2**bits-1 unsigned).
    """
    x = np.asarray(calib, dtype=np.float64)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ConfigError(
            f"calib data must be a non-empty finite array, got shape {x.shape} "
            f"with {int((~np.isfinite(x)).sum()) if x.size else 0} non-finite value(s)"
        )
    if not isinstance(bits, int) or not 2 <= bits <= 32:
        raise ConfigError(f"calib_bits must be an int in 2..32, got {bits!r}")
    signed = bool(x.min() < 0)
    qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    peak = float(np.max(np.abs(x)))
    if peak == 0.0:
        return InputQuant(bits, signed, 1.0)
    scale = 2.0 ** math.ceil(math.log2(peak / qmax))
    while peak > qmax * scale:  # guard float log2 rounding
        scale *= 2
    return InputQuant(bits, signed, scale)


# --------------------------------------------------------------------------- helpers


def _const_values(model: ModelWrapper) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs by name."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _unique(model: ModelWrapper, base: str) -> str:
    taken = {t.name for t in model.graph.initializer}
    taken |= {v.name for v in (*model.graph.input, *model.graph.output, *model.graph.value_info)}
    for n in model.graph.node:
        taken |= {*n.input, *n.output, n.name}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _add_init(model: ModelWrapper, base: str, value: np.ndarray | float) -> str:
    name = _unique(model, base)
    model.graph.initializer.append(
        numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)
    )
    return name


def _quant_node(
    model: ModelWrapper, src: str, q: InputQuant, base: str
) -> tuple[onnx.NodeProto, str]:
    """A Quant(src) node with constant scale / zero point / bit width; returns (node, output)."""
    out = _unique(model, f"{base}_out")
    ins = [
        src,
        _add_init(model, f"{base}_scale", q.scale),
        _add_init(model, f"{base}_zeropt", 0.0),
        _add_init(model, f"{base}_bitwidth", float(q.bits)),
    ]
    node = helper.make_node(
        "Quant",
        ins,
        [out],
        name=_unique(model, base),
        domain=QONNX_DOMAIN,
        signed=int(q.signed),
        narrow=int(q.narrow),
        rounding_mode="ROUND",
    )
    return node, out


def _annotation(model: ModelWrapper, tensor: str) -> str | None:
    for a in model.graph.quantization_annotation:
        if a.tensor_name == tensor:
            for kv in a.quant_parameter_tensor_names:
                if kv.key == "finn_datatype":
                    return kv.value
    return None


def _graph_input(model: ModelWrapper) -> onnx.ValueInfoProto:
    inits = {t.name for t in model.graph.initializer}
    ins = [v for v in model.graph.input if v.name not in inits]
    if len(ins) != 1:
        raise UnsupportedOpError(
            f"edgeml designs have exactly one graph input; this model has {[v.name for v in ins]}"
        )
    return ins[0]


# --------------------------------------------------------------------------- transformations


def fix_domains(proto: onnx.ModelProto) -> list[str]:
    """Rename old custom-op domains to qonnx's and add missing opset imports, in place.

    Runs before ``onnx.checker`` (which refuses a domain without an opset import).
    Returns one sentence per change.
    """
    changes: list[str] = []
    renamed: dict[str, int] = {}
    fpga: list[str] = []
    for n in proto.graph.node:
        old = n.domain
        if old in OLD_DOMAINS:
            if old == "finn" and any(
                a.name == "backend" and a.s == b"fpgadataflow" for a in n.attribute
            ):
                fpga.append(n.name or n.op_type)
                continue
            n.domain = QONNX_DOMAIN
            renamed[old] = renamed.get(old, 0) + 1
        elif old in ("", "ai.onnx") and n.op_type in QONNX_OPS:
            n.domain = QONNX_DOMAIN
            renamed[old or "(default)"] = renamed.get(old or "(default)", 0) + 1
    for old, k in renamed.items():
        changes.append(f"renamed domain {old} -> {QONNX_DOMAIN} on {k} node(s)")
    if fpga:
        raise UnsupportedOpError(
            f"node(s) {fpga[:5]} are FINN fpgadataflow layers (domain 'finn', backend "
            "fpgadataflow): a FINN hardware graph, not a QONNX model; export the network "
            "before FINN's streamlining (the QONNX file Brevitas / FINN's first step writes)"
        )
    imported = {o.domain for o in proto.opset_import}
    used = {n.domain for n in proto.graph.node if n.domain not in ("", "ai.onnx")}
    for dom in used:
        if not isinstance(dom, str) or not _DOMAIN_RE.match(dom):
            node = next(n for n in proto.graph.node if n.domain == dom)
            raise CorruptFileError(
                f"node '{node.name}' (op {node.op_type!r}) has the op domain {dom!r}, which is "
                "not a domain name (letters, digits, '.', '_', '-'); the file is corrupt: re-export it"
            )
    for dom in sorted(used - imported):
        proto.opset_import.append(helper.make_opsetid(dom, 1))
        changes.append(f"added opset import {dom} v1")
    if "" not in imported and "ai.onnx" not in imported:
        proto.opset_import.append(helper.make_opsetid("", 11))
        changes.append("added the missing default ONNX opset import (v11)")
    return changes


class CutAtOutput(Transformation):
    """Make tensor / node ``target``'s output the graph output and drop everything after it."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.changes: list[str] = []

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        g = model.graph
        produced = {o: n for n in g.node for o in n.output}
        by_name = {n.name: n for n in g.node if n.name}
        if self.target in produced:
            tensor = self.target
        elif self.target in by_name:
            tensor = by_name[self.target].output[0]
        else:
            names = sorted({*produced, *by_name})
            close = difflib.get_close_matches(self.target, names, n=5, cutoff=0.3)
            tail = [n.name or n.output[0] for n in g.node[-5:]]
            raise ConfigError(
                f"output {self.target!r} names no node or tensor of the model; close matches: "
                f"{close or 'none'}; the last nodes are {tail} (use a node name or its "
                "output tensor name)"
            )
        old_outs = [o.name for o in g.output]
        if old_outs == [tensor]:
            return model, False
        # keep only the nodes the new output depends on
        need, keep = {tensor}, []
        for n in reversed(g.node):
            if any(o in need for o in n.output):
                keep.append(n)
                need.update(i for i in n.input if i)
        dropped = [n for n in g.node if n not in keep]
        keep.reverse()
        del g.node[:]
        g.node.extend(keep)
        for init in list(g.initializer):
            if init.name not in need:
                g.initializer.remove(init)
        for vi in list(g.input):
            if vi.name not in need:
                g.input.remove(vi)
        vi = next((v for v in g.value_info if v.name == tensor), None)
        new_out = (
            copy.deepcopy(vi) if vi is not None else helper.make_empty_tensor_value_info(tensor)
        )
        if not new_out.type.HasField("tensor_type"):
            new_out = helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)
        del g.output[:]
        g.output.append(new_out)
        ops = ", ".join(f"{n.op_type} '{n.name or n.output[0]}'" for n in dropped[:6])
        more = f" and {len(dropped) - 6} more" if len(dropped) > 6 else ""
        self.changes.append(
            f"graph cut at {self.target!r}: output is now tensor '{tensor}' (was {old_outs}); "
            f"dropped {len(dropped)} node(s){': ' + ops + more if dropped else ''}"
        )
        return model, False


def _dims(vi: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension] | None:
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    return list(vi.type.tensor_type.shape.dim)


class FixBatchDim(Transformation):
    """Symbolic / zero batch dimension -> 1; a rank-1 input to a MatMul/Gemm gets a batch axis."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[str] = []

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        g = model.graph
        gin = _graph_input(model)
        dims = _dims(gin)
        if not dims:
            raise UnsupportedOpError(
                f"graph input '{gin.name}' has no shape; edgeml needs its static shape "
                "(re-export with an example input)"
            )
        d0 = dims[0]
        if (
            d0.HasField("dim_param")
            or (d0.HasField("dim_value") and d0.dim_value <= 0)
            or not (d0.HasField("dim_param") or d0.HasField("dim_value"))
        ):
            label = d0.dim_param or ("?" if not d0.HasField("dim_value") else str(d0.dim_value))
            d0.Clear()
            d0.dim_value = 1
            self.changes.append(f"batch dimension {label!r} of graph input '{gin.name}' fixed to 1")
        elif len(dims) == 1:
            readers = [n.op_type for n in g.node if gin.name in n.input]
            if readers and all(r in ("MatMul", "Gemm", "Quant") for r in readers):
                old = dims[0].dim_value
                shape = gin.type.tensor_type.shape
                shape.dim.insert(0, onnx.TensorShapeProto.Dimension(dim_value=1))
                self.changes.append(
                    f"graph input '{gin.name}' had no batch dimension (shape [{old}]): "
                    f"read as [1, {old}]"
                )
        bad = [
            (k, d.dim_param)
            for k, d in enumerate(gin.type.tensor_type.shape.dim)
            if d.HasField("dim_param") or (d.HasField("dim_value") and d.dim_value <= 0)
        ]
        if bad:
            raise UnsupportedOpError(
                f"graph input '{gin.name}' has symbolic non-batch dimension(s) {bad}; edgeml "
                "needs a static shape: re-export with fixed sizes"
            )
        if self.changes:
            # inferred shapes were written for the symbolic batch: infer them again
            del g.value_info[:]
            for o in g.output:
                o.type.tensor_type.ClearField("shape")
        return model, False


class InsertInputQuant(Transformation):
    """Insert a ``Quant`` right after the graph input, before any preprocessing."""

    def __init__(self, q: InputQuant) -> None:
        super().__init__()
        self.q = q

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        gin = _graph_input(model).name
        node, out = _quant_node(model, gin, self.q, "edgeml_input_quant")
        for n in model.graph.node:
            for k, i in enumerate(n.input):
                if i == gin:
                    n.input[k] = out
        for o in model.graph.output:
            if o.name == gin:
                raise UnsupportedOpError(f"graph input '{gin}' is also the graph output")
        model.graph.node.insert(0, node)
        return model, False


class DivToMul(Transformation):
    """``x / c`` with a constant ``c`` -> ``x * (1/c)``; records whether 1/c is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[str] = []

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        consts = _const_values(model)
        for n in model.graph.node:
            if n.op_type != "Div" or n.input[1] not in consts or n.input[0] in consts:
                continue
            c = np.asarray(consts[n.input[1]], np.float64)
            if np.any(c == 0):
                raise UnsupportedOpError(
                    f"node '{n.name}' (op Div) divides by a constant holding 0; the model is "
                    "corrupt or was exported wrongly"
                )
            recip = (1.0 / c).astype(np.float32)
            exact = bool(np.all(recip.astype(np.float64) * c == 1.0))
            name = _add_init(model, f"{n.name or 'div'}_reciprocal", recip)
            n.op_type = "Mul"
            n.input[1] = name
            shown = np.ravel(c)[:3].tolist()
            how = (
                "exact (power of two)"
                if exact
                else f"1/c rounded to float32 (max rel. err "
                f"{float(np.max(np.abs(recip * c - 1.0))):.1e}), then to fixed point by the "
                "golden model"
            )
            self.changes.append(
                f"node '{n.name}': Div by constant {shown}{'...' if c.size > 3 else ''} "
                f"rewritten as Mul by its reciprocal: {how}"
            )
        return model, False


class ExplicitWindowAttrs(Transformation):
    """Write out ONNX's default ``strides`` / ``pads`` / ``dilations`` / ``group`` / ``kernel_shape``.

    qonnx's ConvertToChannelsLastAndClean requires them on Conv and MaxPool ("Required
    attribute strides unspecified"), but ONNX makes them optional and some exporters
    leave them out.
    """

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[str] = []

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        consts = _const_values(model)
        for n in model.graph.node:
            if n.op_type not in ("Conv", "MaxPool", "AveragePool"):
                continue
            have = {a.name for a in n.attribute}
            ks = next((list(a.ints) for a in n.attribute if a.name == "kernel_shape"), None)
            if ks is None and n.op_type == "Conv" and n.input[1] in consts:
                ks = list(consts[n.input[1]].shape[2:])
                n.attribute.append(helper.make_attribute("kernel_shape", ks))
                have.add("kernel_shape (from the weight)")
            if ks is None:
                continue
            k = len(ks)
            defaults = {"strides": [1] * k, "pads": [0] * (2 * k)}
            if n.op_type == "Conv":
                defaults |= {"dilations": [1] * k, "group": 1}
            added = [name for name in defaults if name not in have]
            for name in added:
                n.attribute.append(helper.make_attribute(name, defaults[name]))
            if "kernel_shape (from the weight)" in have:
                added.insert(0, "kernel_shape")
            if added:
                self.changes.append(
                    f"node '{n.name}' ({n.op_type}): wrote out the ONNX default(s) of "
                    f"{', '.join(added)} (qonnx's channels-last conversion needs them)"
                )
        return model, False


class GemmNoBiasToMatMul(Transformation):
    """A two-input ``Gemm`` (no C; alpha 1, no transA) -> ``MatMul`` (+ ``Transpose`` if transB).

    qonnx's GemmToMatMul indexes ``input[2]`` unconditionally and crashes
    (``IndexError``) on the bias-free Gemm that brevitas' dynamo export writes for
    ``QuantLinear(bias=False)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[str] = []

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        g = model.graph
        for idx in reversed(range(len(g.node))):
            n = g.node[idx]
            if n.op_type != "Gemm" or (len(n.input) > 2 and n.input[2]):
                continue
            at = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if float(at.get("alpha", 1.0)) != 1.0 or int(at.get("transA", 0)):
                continue
            ins = [n.input[0], n.input[1]]
            how = "MatMul"
            if int(at.get("transB", 0)):
                t_out = _unique(model, f"{n.input[1]}_T")
                g.node.insert(
                    idx,
                    helper.make_node(
                        "Transpose",
                        [n.input[1]],
                        [t_out],
                        name=_unique(model, f"{n.name or 'Gemm'}_transB"),
                        perm=[1, 0],
                    ),
                )
                ins[1] = t_out
                how = "Transpose(B) + MatMul"
            del n.attribute[:]
            del n.input[:]
            n.input.extend(ins)
            n.op_type = "MatMul"
            self.changes.insert(  # walking backwards: keep graph order
                0,
                f"node '{n.name}': Gemm without bias rewritten as {how} (qonnx's GemmToMatMul "
                "needs a bias input)",
            )
        return model, False


class UnshareConstantQuants(Transformation):
    """Give every reader of a constant's quantizer its own copy of that ``Quant`` node.

    One Brevitas layer reused across unrolled steps (a recurrent cell) exports one
    weight ``Quant`` read by several ``Gemm``/``Conv`` nodes; qonnx's GemmToMatMul and
    channels-last passes then fold the weight transpose into the constant for the
    first reader only and leave the others reading a tensor that no longer exists.
    A copy per reader is what the unrolled hardware has anyway.
    """

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[str] = []

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        g = model.graph
        inits = {t.name for t in g.initializer}
        for idx in reversed(range(len(g.node))):
            n = g.node[idx]
            if n.op_type not in ("Quant", "BipolarQuant") or not all(
                i in inits for i in n.input if i
            ):
                continue
            readers = [r for r in g.node if n.output[0] in r.input]
            if len(readers) < 2:
                continue
            for k, r in enumerate(readers[1:], start=1):
                copy = onnx.NodeProto()
                copy.CopyFrom(n)
                copy.name = _unique(model, f"{n.name or n.op_type}_copy{k}")
                del copy.output[:]
                copy.output.append(_unique(model, f"{n.output[0]}_copy{k}"))
                g.node.insert(idx + 1, copy)
                for j, i in enumerate(r.input):
                    if i == n.output[0]:
                        r.input[j] = copy.output[0]
            self.changes.insert(
                0,
                f"node '{n.name}': constant quantizer read by {len(readers)} nodes (a layer "
                "reused across steps) copied once per reader",
            )
        return model, False


class BipolarWeightsToQuant(Transformation):
    """``BipolarQuant`` on a constant weight -> a 2-bit signed narrow ``Quant`` of its signs.

    ``BipolarQuant(w, s) = s * (w >= 0 ? +1 : -1)`` equals ``Quant(sign(w), s, 2 bits,
    signed, narrow)`` exactly (codes -1 / +1). hls4ml 1.3 stores BipolarQuant weights as
    {0, 1} (wrong outputs); it converts the 2-bit Quant correctly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[str] = []

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        inits = {t.name: t for t in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type != "BipolarQuant" or n.input[0] not in inits or n.input[1] not in inits:
                continue
            orig = n.input[0]
            w = numpy_helper.to_array(inits[orig])
            signs = np.where(w >= 0, 1.0, -1.0).astype(np.float32)
            name = _add_init(model, f"{n.input[0]}_sign", signs)
            scale = n.input[1]
            del n.attribute[:]
            n.op_type = "Quant"
            n.domain = QONNX_DOMAIN
            del n.input[:]
            n.input.extend(
                [
                    name,
                    scale,
                    _add_init(model, f"{name}_zeropt", 0.0),
                    _add_init(model, f"{name}_bw", 2.0),
                ]
            )
            n.attribute.extend(
                [
                    helper.make_attribute("signed", 1),
                    helper.make_attribute("narrow", 1),
                    helper.make_attribute("rounding_mode", "ROUND"),
                ]
            )
            self.changes.append(
                f"node '{n.name}': BipolarQuant of constant weight '{orig}' rewritten as the "
                "equivalent Quant(2-bit signed narrow) of its signs (exact; hls4ml stores "
                "BipolarQuant weights as {0, 1})"
            )
        # drop the float weights no node reads any more
        used = {i for n in model.graph.node for i in n.input}
        for t in list(model.graph.initializer):
            if t.name not in used:
                model.graph.initializer.remove(t)
        return model, False


class QuantizeAnnotatedWeights(Transformation):
    """FINN datatype annotations on weight initializers without a Quant -> explicit quantizers.

    A weight of MatMul/Gemm/Conv annotated INTn/UINTn/BINARY gets ``Quant`` at scale 1,
    FIXED<w,i> at scale 2**-(w-i), BIPOLAR a ``BipolarQuant`` at scale 1 (values +-1
    unchanged). ``weight_bits`` (optional) quantizes the remaining float weights with a
    per-tensor power-of-two scale, signed narrow (post-training quantization).
    """

    def __init__(self, weight_bits: int | None = None) -> None:
        super().__init__()
        self.weight_bits = weight_bits
        self.changes: list[str] = []
        self.float_weights: list[str] = []

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        inits = {t.name: t for t in model.graph.initializer}
        new_nodes: list[tuple[int, onnx.NodeProto]] = []
        for idx, n in enumerate(model.graph.node):
            if n.op_type not in WEIGHT_OPS or len(n.input) < 2 or n.input[1] not in inits:
                continue
            w = n.input[1]
            arr = numpy_helper.to_array(inits[w]).astype(np.float64)
            dt = _annotation(model, w)
            q = parse_finn_datatype(dt) if dt else None
            if dt and dt.strip().upper() == "BIPOLAR":
                out = _unique(model, f"{w}_bipolar")
                node = helper.make_node(
                    "BipolarQuant",
                    [w, _add_init(model, f"{w}_bipolar_scale", 1.0)],
                    [out],
                    name=_unique(model, f"{w}_BipolarQuant"),
                    domain=QONNX_DOMAIN,
                )
                msg = f"weight '{w}' of {n.op_type} '{n.name}' annotated BIPOLAR: inserted BipolarQuant(scale=1)"
            elif q is not None:
                if not np.array_equal(arr / q.scale, np.rint(arr / q.scale)) or not (
                    arr.min(initial=0) >= q.lo and arr.max(initial=0) <= q.hi
                ):
                    raise UnsupportedOpError(
                        f"weight '{w}' of node '{n.name}' (op {n.op_type}) is annotated {dt} but "
                        f"holds values off that type's grid or range [{q.lo:g}, {q.hi:g}]"
                    )
                node, out = _quant_node(model, w, q, f"{w}_quant")
                msg = f"weight '{w}' of {n.op_type} '{n.name}' annotated {dt}: inserted Quant({q.describe()})"
            elif self.weight_bits is not None:
                peak = float(np.max(np.abs(arr), initial=0.0)) or 1.0
                qmax = (1 << (self.weight_bits - 1)) - 1
                scale = 2.0 ** math.ceil(math.log2(peak / qmax))
                q = InputQuant(self.weight_bits, True, scale, narrow=True)
                node, out = _quant_node(model, w, q, f"{w}_quant")
                msg = (
                    f"float weight '{w}' of {n.op_type} '{n.name}' quantized post-training: "
                    f"inserted Quant({q.describe()}), per-tensor power-of-two scale covering "
                    f"max|w| = {peak:.4g}"
                )
            else:
                self.float_weights.append(f"'{w}' of {n.op_type} '{n.name}'")
                continue
            n.input[1] = out
            new_nodes.append((idx, node))
            self.changes.append(msg)
        for idx, node in reversed(new_nodes):
            model.graph.node.insert(idx, node)
        return model, False


# --------------------------------------------------------------------------- entry points


@dataclass
class Ingested:
    """A normalised model, what was changed, and where the input precision came from."""

    model: onnx.ModelProto
    changes: list[str] = field(default_factory=list)
    #: one of "existing Quant", "annotation", "input_type", "calibration"
    input_precision: str = ""
    #: the inserted input quantizer (None when the model had its own)
    input_quant: InputQuant | None = None

    def save(self, path: str | Path) -> Path:
        """Write the normalised model (e.g. ``model.ingested.onnx``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(self.model, str(path))
        return path


def _input_has_quant(model: ModelWrapper) -> bool:
    """True when the graph input reaches a Quant through layout ops only, on every path."""
    gin = _graph_input(model).name
    frontier, seen = [gin], set()
    while frontier:
        t = frontier.pop()
        readers = [n for n in model.graph.node if t in n.input]
        if not readers:
            return False
        for n in readers:
            if n.op_type == "Quant" and n.input[0] == t:
                continue
            if n.op_type in LAYOUT_OPS and n.input[0] == t and n.output[0] not in seen:
                seen.add(n.output[0])
                frontier.append(n.output[0])
                continue
            return False
    return True


def _load(proto_or_path: onnx.ModelProto | str | Path) -> tuple[onnx.ModelProto, str]:
    from edgeml.export import parse_onnx

    if isinstance(proto_or_path, onnx.ModelProto):
        return copy.deepcopy(proto_or_path), "<ModelProto>"
    if isinstance(proto_or_path, str | Path):
        return parse_onnx(proto_or_path), str(proto_or_path)
    raise ConfigError(
        f"normalise takes a path or an onnx.ModelProto, got {type(proto_or_path).__name__}"
    )


def normalise(
    proto_or_path: onnx.ModelProto | str | Path,
    *,
    input_type: str | None = None,
    calib: np.ndarray | None = None,
    output: str | None = None,
    calib_bits: int = DEFAULT_CALIB_BITS,
    weight_bits: int | None = None,
) -> Ingested:
    """Normalise a QONNX/ONNX model made elsewhere so that clean_qonnx and the golden model take it.

    Args:
        proto_or_path: an ``.onnx`` file or a ModelProto (not modified).
        input_type: input precision when the model has no input Quant or annotation,
            e.g. ``ap_fixed<16,6>``, ``ap_ufixed<8,0>``, ``int8``, ``uint8``.
        calib: sample inputs; their range picks the input type (``calib_bits`` bits,
            power-of-two scale) when neither the model nor ``input_type`` gives one.
        output: a node or tensor name to cut the graph at (e.g. before a Softmax).
        weight_bits: quantize float weights of MatMul/Gemm/Conv post-training (per
            tensor, power-of-two scale, signed narrow); without it float weights are refused.

    Raises:
        ConfigError: no input precision, a bad ``input_type``, an unknown ``output``,
            or float weights without ``weight_bits``.
        CorruptFileError: an unreadable file or one refused by the checks of edgeml.export.
        UnsupportedOpError: a FINN hardware graph, a symbolic non-batch dimension, ...
    """
    from qonnx.transformation.infer_shapes import InferShapes

    from edgeml.export import check_proto, quiet_tools

    if weight_bits is not None and (not isinstance(weight_bits, int) or not 2 <= weight_bits <= 16):
        raise ConfigError(f"weight_bits must be an int in 2..16, got {weight_bits!r}")
    q_type = parse_input_type(input_type) if input_type is not None else None
    proto, where = _load(proto_or_path)
    changes = fix_domains(proto)
    check_proto(proto, where)  # NaN/Inf, absurd dimensions, onnx.checker
    with quiet_tools():
        model = ModelWrapper(proto)

    if output is not None:
        cut = CutAtOutput(output)
        model = model.transform(cut, make_deepcopy=False, cleanup=False)
        changes += cut.changes

    fix = FixBatchDim()
    model = model.transform(fix, make_deepcopy=False, cleanup=False)
    changes += fix.changes

    # input precision, in order: existing Quant, annotation, input_type, calibration
    gin = _graph_input(model).name
    inserted: InputQuant | None = None
    ann = _annotation(model, gin)
    if _input_has_quant(model):
        source = "existing Quant"
        ignored = [k for k, v in (("input_type", input_type), ("calib", calib)) if v is not None]
        if ignored:
            changes.append(
                f"graph input '{gin}' already has a Quant: {' and '.join(ignored)} ignored"
            )
    else:
        q_ann = parse_finn_datatype(ann) if ann else None
        if q_ann is not None:
            source, inserted = "annotation", q_ann
            how = f"graph input '{gin}' read as {ann} from its FINN quantization_annotation"
            if input_type is not None or calib is not None:
                how += " (input_type / calib ignored: the model states its input type)"
        elif q_type is not None:
            source, inserted = "input_type", q_type
            how = f"graph input '{gin}' read as {input_type} (input_type)"
        elif calib is not None:
            inserted = calib_quant(calib, calib_bits)
            c = np.asarray(calib, np.float64)
            source = "calibration"
            how = (
                f"graph input '{gin}' precision from calibration: {c.shape[0] if c.ndim else 1} "
                f"sample(s) span [{c.min():.4g}, {c.max():.4g}] -> smallest {calib_bits}-bit "
                "power-of-two-scaled type holding them"
            )
        else:
            raise ConfigError(
                f"graph input '{gin}' of {where} is not quantized and the model states no "
                "input precision. Give it in one of three ways: --input-type (input_type=, "
                "e.g. 'ap_fixed<16,6>' or 'uint8'), --calib (calib=, sample inputs whose range "
                "picks the type), or a Quant / FINN quantization_annotation on the input in "
                "the model"
            )
        model = model.transform(InsertInputQuant(inserted), make_deepcopy=False, cleanup=False)
        changes.append(
            f"{how}: inserted Quant({inserted.describe()}, rounding ROUND) after the input"
        )

    win = ExplicitWindowAttrs()
    model = model.transform(win, make_deepcopy=False, cleanup=False)
    changes += win.changes

    div = DivToMul()
    model = model.transform(div, make_deepcopy=False, cleanup=False)
    changes += div.changes

    gemm = GemmNoBiasToMatMul()
    model = model.transform(gemm, make_deepcopy=False, cleanup=False)
    changes += gemm.changes

    bq = BipolarWeightsToQuant()
    model = model.transform(bq, make_deepcopy=False, cleanup=False)
    changes += bq.changes

    wq = QuantizeAnnotatedWeights(weight_bits)
    model = model.transform(wq, make_deepcopy=False, cleanup=False)
    changes += wq.changes
    if wq.float_weights:
        raise ConfigError(
            f"{len(wq.float_weights)} weight(s) are float with no Quant or datatype "
            f"annotation ({', '.join(wq.float_weights[:4])}); edgeml runs quantized "
            "weights only. Quantize the model (Brevitas / QKeras / HGQ2), or pass "
            "weight_bits=N (--weight-bits N, 2..16) for per-tensor power-of-two "
            "post-training quantization"
        )

    try:
        with quiet_tools():
            model = model.transform(InferShapes())
    except Exception as exc:
        raise UnsupportedOpError(
            f"qonnx shape inference failed on the normalised {where} ({type(exc).__name__}: "
            f"{exc}); the graph has ops or shapes qonnx cannot handle"
        ) from exc
    proto = model.model
    check_proto(proto, f"{where} (normalised)")
    for c in changes:
        log.info("ingest: %s", c)
    return Ingested(proto, changes, source, inserted)


def normalise_file(src: str | Path, dst: str | Path, **kwargs: object) -> Ingested:
    """File to file: :func:`normalise` ``src`` (keyword options as there) and write ``dst``."""
    ing = normalise(src, **kwargs)  # type: ignore[arg-type]
    ing.save(dst)
    return ing
