"""``edgeml quantize``: post-training quantization (and pruning) of a float ONNX model to QONNX.

A float ONNX file from any exporter (``torch.onnx.export``, Keras ``model.export(...,
format="onnx")``, ...) made of MatMul/Gemm/Conv layers, Relu, MaxPool, layout ops and
BatchNorm becomes a QONNX design that ``edgeml flow --onnx`` takes to bit-exact firmware:

1. **Prepare** (qonnx ``InferShapes`` / ``FoldConstants`` / ``GemmToMatMul``): the batch is
   fixed to 1, shape sub-graphs fold into constants, ``Cast``-to-float / ``Identity`` /
   ``Dropout`` are bypassed, a trailing ``Softmax`` is dropped (monotonic: the argmax is
   unchanged; the firmware outputs logits), and **BatchNormalization and constant
   per-channel Mul/Add/Sub/Div right after a MatMul/Conv are folded into its weight and
   bias** (edgeml's own fold; Keras exports BatchNorm as Sub/Mul/Add).
2. **Prune** (``sparsity``): magnitude pruning of the weights, per layer (each layer loses
   exactly ``round(s * size)`` weights; the default) or global (one threshold over all
   layers); then, unless ``refit=False``, the kept weights of each layer are re-fitted by
   least squares on the calibration data to reproduce the float layer's outputs (no labels,
   no training loop: a post-training stand-in for fine-tuning).
3. **Calibrate** with onnxruntime on the pruned float graph (every activation to quantize
   exposed as an output) and choose a **power-of-two** scale per tensor by min/max, a
   percentile of ``|x|`` or an MSE search over candidate power-of-two scales.
4. **Insert** ``Quant`` nodes (domain ``qonnx.custom_op.general``, rounding ``ROUND``): on
   the input, on every weight (signed, narrow, per-tensor or per-channel power-of-two
   scale), on every bias at scale ``s_in * s_w`` with at least ``bias_bits`` (16) bits
   (Brevitas' ``Int16Bias``; this is what makes hls4ml exact), unsigned after each Relu and
   signed on every other layer output.
5. **Report**: float vs quantized metric (the QONNX executed with qonnx's ``execute_onnx``),
   and the golden integer model (after :func:`edgeml.export.clean_qonnx`) against that
   execution (power-of-two scales: the dequantized outputs must be equal).

Fine-tuning (QAT of the user's torch model through Brevitas) is not implemented here:
``edgeml compress`` does QAT for the built-in designs.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeml.errors import (
    ConfigError,
    CorruptFileError,
    EdgemlError,
    InvalidTensorError,
    UnsupportedOpError,
)

log = logging.getLogger(__name__)

QONNX_DOMAIN = "qonnx.custom_op.general"
SCALE_METHODS: tuple[str, ...] = ("minmax", "percentile", "mse")
PRUNE_SCOPES: tuple[str, ...] = ("layer", "global")
BITS_RANGE = (2, 16)
MAX_SPARSITY = 0.95

#: Ops a float model may contain (shape sub-graphs fold away before this check).
SUPPORTED_FLOAT_OPS: tuple[str, ...] = (
    "MatMul",
    "Gemm",
    "Conv",
    "Add",
    "Relu",
    "MaxPool",
    "Flatten",
    "Reshape",
    "Transpose",
    "BatchNormalization",
    "Softmax",
    "Identity",
    "Dropout",
    "Cast",
    "Sub",
    "Mul",
    "Div",
)
_LAYOUT = ("MaxPool", "Flatten", "Reshape", "Transpose", "Identity")
_AFFINE = ("Add", "Sub", "Mul", "Div", "BatchNormalization")


@dataclass
class QuantizeOptions:
    """What to quantize and how; validated by :meth:`check`."""

    bits: int = 8
    sparsity: float = 0.0
    prune_scope: str = "layer"
    scale_method: str = "percentile"
    percentile: float = 99.99
    per_channel: bool = False
    bias_bits: int = 16
    refit: bool = True

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the field and its allowed values."""
        if isinstance(self.bits, bool) or not isinstance(self.bits, int | np.integer):
            raise ConfigError(f"bits must be an integer in 2..16, got {self.bits!r}")
        if not BITS_RANGE[0] <= int(self.bits) <= BITS_RANGE[1]:
            raise ConfigError(
                f"bits (--bits) must be in {BITS_RANGE[0]}..{BITS_RANGE[1]}, got {self.bits}"
            )
        s = float(self.sparsity)
        if not math.isfinite(s) or not 0.0 <= s <= MAX_SPARSITY:
            raise ConfigError(
                f"sparsity (--sparsity) must be in [0, {MAX_SPARSITY}], got {self.sparsity}"
            )
        if self.prune_scope not in PRUNE_SCOPES:
            raise ConfigError(
                f"prune_scope (--prune-scope) must be one of {', '.join(PRUNE_SCOPES)}, "
                f"got {self.prune_scope!r}"
            )
        if self.scale_method not in SCALE_METHODS:
            raise ConfigError(
                f"scale_method (--scale-method) must be one of {', '.join(SCALE_METHODS)}, "
                f"got {self.scale_method!r}"
            )
        p = float(self.percentile)
        if not math.isfinite(p) or not 50.0 < p <= 100.0:
            raise ConfigError(f"percentile (--percentile) must be in (50, 100], got {p}")
        if not 8 <= int(self.bias_bits) <= 32:
            raise ConfigError(f"bias_bits (--bias-bits) must be in 8..32, got {self.bias_bits}")


@dataclass
class QuantizeResult:
    """The QONNX model written, its report (also JSON next to it) and where it went."""

    model: onnx.ModelProto
    report: dict[str, Any]
    path: Path | None = None
    report_path: Path | None = None


# --------------------------------------------------------------------------- graph helpers


@dataclass
class _Graph:
    """A mutable view of an ONNX graph: initializers as arrays, nodes as a list."""

    model: onnx.ModelProto
    inits: dict[str, np.ndarray] = field(default_factory=dict)
    n_new: int = 0

    @property
    def graph(self) -> onnx.GraphProto:
        return self.model.graph

    def sync_from(self) -> None:
        self.inits = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}

    def sync_to(self) -> None:
        del self.graph.initializer[:]
        used = {i for n in self.graph.node for i in n.input}
        for name, arr in self.inits.items():
            if name in used:
                self.graph.initializer.append(numpy_helper.from_array(np.asarray(arr), name))

    def new_name(self, base: str) -> str:
        self.n_new += 1
        return f"{base}__q{self.n_new}"

    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        out: dict[str, list[onnx.NodeProto]] = {}
        for n in self.graph.node:
            for i in n.input:
                out.setdefault(i, []).append(n)
        return out

    def producers(self) -> dict[str, onnx.NodeProto]:
        return {o: n for n in self.graph.node for o in n.output}

    @property
    def input_name(self) -> str:
        return next(i.name for i in self.graph.input if i.name not in self.inits)

    @property
    def output_name(self) -> str:
        return self.graph.output[0].name

    def rename_input_uses(self, old: str, new: str) -> None:
        for n in self.graph.node:
            for k, i in enumerate(n.input):
                if i == old:
                    n.input[k] = new

    def bypass(self, node: onnx.NodeProto) -> None:
        """Remove a one-input pass-through node, keeping the graph output's name."""
        src, dst = node.input[0], node.output[0]
        self.graph.node.remove(node)
        if dst == self.output_name:
            if src == self.input_name:
                raise UnsupportedOpError("the model computes nothing (output = input)")
            for n in self.graph.node:
                for k, o in enumerate(n.output):
                    if o == src:
                        n.output[k] = dst
            self.rename_input_uses(src, dst)
        else:
            self.rename_input_uses(dst, src)


def _node_label(node: onnx.NodeProto) -> str:
    return f"node '{node.name or '?'}' (op {node.op_type})"


def _unsupported(node: onnx.NodeProto, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(
        f"{_node_label(node)}: {why}. edgeml quantize supports float graphs of: "
        f"{', '.join(SUPPORTED_FLOAT_OPS)} (Sub/Mul/Div/BatchNormalization only as constant "
        "per-channel affine ops right after a MatMul/Gemm/Conv, which are folded into it; "
        "Softmax only as the last op; Add of a constant only as a bias)"
    )


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _wrapper(model: onnx.ModelProto) -> Any:
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(model)


def _transform(g: _Graph, *transforms: Any) -> None:
    """Run qonnx transformations on ``g`` in place (initializers re-read afterwards)."""
    g.sync_to()
    mw = _wrapper(g.model)
    for t in transforms:
        try:
            mw = mw.transform(t)
        except Exception as exc:
            raise UnsupportedOpError(
                f"qonnx {type(t).__name__} failed on the float model ({type(exc).__name__}: "
                f"{exc}); the graph has ops or shapes qonnx cannot handle. Supported ops: "
                f"{', '.join(SUPPORTED_FLOAT_OPS)}"
            ) from exc
    g.model = mw.model
    g.sync_from()


# --------------------------------------------------------------------------- prepare


def _load(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return copy.deepcopy(model)
    if isinstance(model, str | Path):
        from edgeml.export import load_onnx

        return load_onnx(model)
    raise ConfigError(f"quantize takes an ONNX path or onnx.ModelProto, got {type(model).__name__}")


def _set_batch(model: onnx.ModelProto, batch: int | str) -> None:
    """Set dim 0 of the graph input and output to ``batch`` and drop stale value_info."""
    for vi in [*model.graph.input[:1], *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            if isinstance(batch, int):
                dims[0].dim_value = batch
            else:
                dims[0].dim_param = batch
    del model.graph.value_info[:]


def prepare_float(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A float ONNX model -> an equivalent float graph of MatMul(+bias Add)/Conv layers.

    Batch fixed to 1, constants folded, pass-through ops removed, trailing Softmax dropped
    and BatchNorm / per-channel affine ops folded into the preceding layer. Returns the
    model and notes on what was changed. Unsupported ops raise :class:`UnsupportedOpError`.
    """
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.transformation.infer_shapes import InferShapes

    proto = _load(model)
    notes: list[str] = []
    if any(n.op_type in ("Quant", "BipolarQuant", "Trunc") for n in proto.graph.node):
        raise ConfigError(
            "the model already holds Quant nodes (it is QONNX); quantize takes a float model. "
            "Run `edgeml flow --onnx FILE` on a QONNX model directly"
        )
    g = _Graph(proto)
    g.sync_from()
    # initializers listed as graph inputs (old exporters) are constants, not inputs
    keep = [i for i in proto.graph.input if i.name not in g.inits]
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
        raise UnsupportedOpError(
            f"edgeml designs have one input and one output; the model has inputs "
            f"{[i.name for i in proto.graph.input]} and outputs "
            f"{[o.name for o in proto.graph.output]}"
        )
    elem = proto.graph.input[0].type.tensor_type.elem_type
    if elem != TensorProto.FLOAT:
        raise UnsupportedOpError(
            f"graph input '{g.input_name}' has ONNX element type "
            f"{TensorProto.DataType.Name(elem)}; quantize needs a FLOAT input"
        )
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if len(dims) < 2 or any(d.dim_value <= 0 for d in dims[1:]):
        raise UnsupportedOpError(
            f"graph input '{g.input_name}' needs a static shape apart from the batch axis, got "
            f"{[d.dim_value or d.dim_param for d in dims]}"
        )
    _set_batch(proto, 1)
    # Constant nodes -> initializers
    for n in list(proto.graph.node):
        if n.op_type == "Constant" and not n.input:
            a = n.attribute[0]
            if a.name != "value":
                raise _unsupported(n, f"Constant with attribute {a.name!r} (only 'value')")
            g.inits[n.output[0]] = numpy_helper.to_array(a.t)
            proto.graph.node.remove(n)
    _transform(g, InferShapes(), FoldConstants(), InferShapes())
    # pass-through ops
    for n in list(g.graph.node):
        if n.op_type in ("Identity", "Dropout"):
            g.bypass(n)
        elif n.op_type == "Cast":
            if _attr(n, "to") != TensorProto.FLOAT:
                raise _unsupported(n, f"Cast to {_attr(n, 'to')} (only Cast to FLOAT is removed)")
            g.bypass(n)
    # trailing Softmax
    prod = g.producers()
    last = prod.get(g.output_name)
    if last is not None and last.op_type == "Softmax":
        g.bypass(last)
        notes.append(
            "trailing Softmax removed: the design outputs logits (same argmax); apply softmax "
            "in software if probabilities are needed"
        )
    for n in g.graph.node:
        if n.op_type == "Softmax":
            raise _unsupported(n, "Softmax that is not the last op")
    for n in g.graph.node:
        if n.op_type == "Gemm" and (len(n.input) < 3 or not n.input[2]):
            _gemm_without_c(g, n)  # qonnx's GemmToMatMul needs the C input
    if any(n.op_type == "Gemm" for n in g.graph.node):
        _transform(g, GemmToMatMul(), InferShapes(), FoldConstants(), InferShapes())
    for n in g.graph.node:
        if n.op_type not in SUPPORTED_FLOAT_OPS:
            raise _unsupported(n, "this op is not supported")
        if n.op_type in ("MatMul", "Conv") and n.input[1] not in g.inits:
            raise _unsupported(n, "its weight is not a constant (activation x activation)")
    folded = _fold_affine(g)
    if folded:
        notes.append(f"folded into the preceding MatMul/Conv: {', '.join(folded)}")
    for n in g.graph.node:
        if n.op_type in ("Sub", "Mul", "Div", "BatchNormalization"):
            raise _unsupported(n, "not a constant per-channel affine op right after a layer")
        if n.op_type == "Add" and (n.input[0] in g.inits) != (n.input[1] in g.inits):
            prod = g.producers().get(n.input[1] if n.input[0] in g.inits else n.input[0])
            if prod is None or prod.op_type != "MatMul":
                raise _unsupported(n, "Add of a constant that is not a MatMul's bias")
        if n.op_type == "Reshape":
            if n.input[1] not in g.inits:
                raise _unsupported(n, "Reshape to a computed (non-constant) shape")
            # batch axis: 0 copies the input's batch, so the graph runs at any batch size
            shape = g.inits[n.input[1]].astype(np.int64).copy()
            if shape.size and shape[0] == 1:
                shape[0] = 0
                name = g.new_name(n.input[1])
                g.inits[name] = shape
                n.input[1] = name
    _transform(g, GiveUniqueNodeNames(), InferShapes())
    return g.model, notes


def _gemm_without_c(g: _Graph, n: onnx.NodeProto) -> None:
    """A bias-free Gemm with a constant B -> MatMul (alpha and transB folded into B)."""
    if n.input[1] not in g.inits or _attr(n, "transA", 0):
        raise _unsupported(n, "Gemm without C needs a constant B and transA=0")
    b = np.asarray(g.inits[n.input[1]], dtype=np.float64)
    if _attr(n, "transB", 0):
        b = b.T
    b = b * float(_attr(n, "alpha", 1.0))
    name = g.new_name(n.input[1])
    g.inits[name] = b.astype(np.float32)
    n.op_type = "MatMul"
    del n.attribute[:]
    del n.input[1:]
    n.input.append(name)


def _channel_vector(c: np.ndarray, n_ch: int, rank: int, axis: int) -> np.ndarray | None:
    """A constant operand as a per-channel vector on ``axis`` (of ``rank``), or None."""
    c = np.asarray(c, dtype=np.float64)
    if c.size == 1:
        return np.full(n_ch, float(c.reshape(-1)[0]))
    if c.size != n_ch or c.ndim > rank:
        return None
    shape = tuple(int(d) for d in c.shape)
    if tuple(d for d in shape if d != 1) != (n_ch,):
        return None
    full = (1,) * (rank - len(shape)) + shape
    return c.reshape(-1) if full.index(n_ch) == axis else None


def _fold_affine(g: _Graph) -> list[str]:
    """Fold BatchNorm and constant per-channel Add/Sub/Mul/Div into the layer before them."""
    folded: list[str] = []
    from qonnx.core.modelwrapper import ModelWrapper

    for layer in [n for n in g.graph.node if n.op_type in ("MatMul", "Conv")]:
        conv = layer.op_type == "Conv"
        w = np.asarray(g.inits[layer.input[1]], dtype=np.float64)
        if not conv and w.ndim != 2:
            raise _unsupported(layer, f"MatMul with a {w.ndim}-D weight (only 2-D dense)")
        n_ch = w.shape[0] if conv else w.shape[1]
        bias = (
            np.asarray(g.inits[layer.input[2]], dtype=np.float64).reshape(-1).copy()
            if conv and len(layer.input) > 2 and layer.input[2]
            else None
        )
        mw = ModelWrapper(g.model)
        cur = layer.output[0]
        shape = mw.get_tensor_shape(cur)
        rank = len(shape) if shape else (4 if conv else 2)
        removed: list[onnx.NodeProto] = []
        # Keras writes Conv (NCHW) -> Transpose to NHWC -> bias Add: fold through it
        transpose: onnx.NodeProto | None = None
        axis = 1 if conv else rank - 1
        scale = np.ones(n_ch)
        b = np.zeros(n_ch) if bias is None else bias
        has_bias = bias is not None
        while True:
            cons = g.consumers().get(cur, [])
            if len(cons) != 1 or cur == g.output_name:
                break
            n = cons[0]
            if (
                conv
                and n.op_type == "Transpose"
                and transpose is None
                and not removed
                and [int(p) for p in (_attr(n, "perm") or [])] == [0, 2, 3, 1]
            ):
                transpose, axis, cur = n, rank - 1, n.output[0]
                continue
            if n.op_type not in _AFFINE:
                break
            if n.op_type == "BatchNormalization":
                if n.input[0] != cur or axis != 1 or any(i not in g.inits for i in n.input[1:5]):
                    break
                gamma, beta, mean, var = (
                    np.asarray(g.inits[i], dtype=np.float64) for i in n.input[1:5]
                )
                k = gamma / np.sqrt(var + float(_attr(n, "epsilon", 1e-5)))
                scale, b = scale * k, b * k + (beta - mean * k)
                has_bias = True
            else:
                other = n.input[1] if n.input[0] == cur else n.input[0]
                if other not in g.inits or n.input[0] == n.input[1]:
                    break
                if n.op_type in ("Sub", "Div") and n.input[0] != cur:
                    break  # c - x, c / x: not an affine map of x we fold
                v = _channel_vector(g.inits[other], n_ch, rank, axis)
                if v is None:
                    break
                if n.op_type == "Add":
                    b, has_bias = b + v, True
                elif n.op_type == "Sub":
                    b, has_bias = b - v, True
                elif n.op_type == "Mul":
                    scale, b = scale * v, b * v
                else:
                    if np.any(v == 0):
                        break
                    scale, b = scale / v, b / v
            removed.append(n)
            cur = n.output[0]
        if not removed:
            continue
        if not conv and len(removed) == 1 and removed[0].op_type == "Add":
            continue  # a plain bias Add: keep it as it is
        if conv:
            w = w * scale.reshape(-1, 1, 1, 1)
        else:
            w = w * scale.reshape(1, -1)
        wname = g.new_name(layer.input[1])
        g.inits[wname] = w.astype(np.float32)
        layer.input[1] = wname
        for n in removed:
            folded.append(f"{n.op_type} '{n.name or n.output[0]}'")
            g.graph.node.remove(n)
        if conv:
            if has_bias:
                bname = g.new_name(f"{layer.name or 'conv'}_bias")
                g.inits[bname] = b.astype(np.float32)
                while len(layer.input) < 3:
                    layer.input.append("")
                layer.input[2] = bname
            if transpose is not None:
                transpose.output[0] = cur
            else:
                layer.output[0] = cur
        elif has_bias:
            mm_out = g.new_name(layer.output[0])
            layer.output[0] = mm_out
            bname = g.new_name(f"{layer.name or 'matmul'}_bias")
            g.inits[bname] = b.astype(np.float32)
            idx = list(g.graph.node).index(layer)
            g.graph.node.insert(
                idx + 1,
                helper.make_node("Add", [mm_out, bname], [cur], name=g.new_name("bias_add")),
            )
        else:
            layer.output[0] = cur
    g.sync_to()
    return folded


# --------------------------------------------------------------------------- layers and sites


@dataclass
class _Layer:
    node: onnx.NodeProto
    weight: str
    bias: str | None  # initializer name (Conv input 2, or the bias Add's constant)
    bias_add: onnx.NodeProto | None
    output: str


def _layers(g: _Graph) -> list[_Layer]:
    cons = g.consumers()
    out = []
    for n in g.graph.node:
        if n.op_type == "Conv":
            b = n.input[2] if len(n.input) > 2 and n.input[2] else None
            out.append(_Layer(n, n.input[1], b, None, n.output[0]))
        elif n.op_type == "MatMul":
            c = cons.get(n.output[0], [])
            add = c[0] if len(c) == 1 and c[0].op_type == "Add" else None
            if add is not None and n.output[0] != g.output_name:
                other = add.input[1] if add.input[0] == n.output[0] else add.input[0]
                if other in g.inits:
                    out.append(_Layer(n, n.input[1], other, add, add.output[0]))
                    continue
            out.append(_Layer(n, n.input[1], None, None, n.output[0]))
    return out


def _activation_sites(g: _Graph, layers: list[_Layer]) -> dict[str, str]:
    """Tensor -> 'signed' / 'unsigned' for every activation that gets a Quant."""
    cons = g.consumers()
    sites: dict[str, str] = {}
    new_values = [layer.output for layer in layers]
    new_values += [
        n.output[0]
        for n in g.graph.node
        if n.op_type == "Add" and n.input[0] not in g.inits and n.input[1] not in g.inits
    ]

    def only_relu(t: str) -> bool:
        users = cons.get(t, [])
        if t == g.output_name or not users:
            return False
        return all(
            u.op_type == "Relu"
            or (
                u.op_type in ("Transpose", "Reshape", "Flatten", "Identity")
                and only_relu(u.output[0])
            )
            for u in users
        )

    for t in new_values:
        if not only_relu(t):
            sites[t] = "signed"
    for n in g.graph.node:
        if n.op_type == "Relu":
            sites[n.output[0]] = "unsigned"
    return sites


# --------------------------------------------------------------------------- scales


def _qmax(bits: int, signed: bool) -> int:
    return (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1


def _fake_quant(x: np.ndarray, scale: np.ndarray | float, bits: int, signed: bool, narrow: bool):
    lo = (-(1 << (bits - 1)) + int(narrow)) if signed else 0
    hi = _qmax(bits, signed)
    return np.clip(np.round(x / scale), lo, hi) * scale


def choose_pot_scale(
    values: np.ndarray,
    bits: int,
    signed: bool,
    method: str = "percentile",
    percentile: float = 99.99,
    narrow: bool = False,
) -> float:
    """Power-of-two scale ``2**k`` for ``values`` at ``bits`` bits.

    ``minmax``: the smallest 2**k whose range holds max |x|; ``percentile``: the same for
    the given percentile of |x| (outliers saturate); ``mse``: the 2**k among the min/max one
    and the four below it with the least quantization MSE on (a sample of) ``values``.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not signed:
        v = np.maximum(v, 0.0)
    a = np.abs(v)
    qmax = _qmax(bits, signed)
    r = float(a.max()) if a.size else 0.0
    if method == "percentile" and a.size:
        r = float(np.percentile(a, percentile))
    if r <= 0.0 or not math.isfinite(r):
        return 1.0
    k = math.ceil(math.log2(r / qmax))
    if method == "mse":
        rng = np.random.default_rng(0)
        sample = v if v.size <= 200_000 else rng.choice(v, 200_000, replace=False)
        errs = [
            (float(np.mean((_fake_quant(sample, 2.0**kk, bits, signed, narrow) - sample) ** 2)), kk)
            for kk in range(k, k - 5, -1)
        ]
        k = min(errs)[1]
    return float(2.0**k)


# --------------------------------------------------------------------------- pruning


def _prune(g: _Graph, layers: list[_Layer], sparsity: float, scope: str) -> dict[str, Any]:
    """Zero the smallest-magnitude weights; returns the sparsity reached per layer and overall."""
    per: dict[str, float] = {}
    if sparsity <= 0.0:
        return {"asked": 0.0, "scope": scope, "per_layer": {}}
    ws = {layer.weight: np.asarray(g.inits[layer.weight], dtype=np.float32) for layer in layers}
    if scope == "global":
        allw = np.concatenate([np.abs(w).reshape(-1) for w in ws.values()])
        k = round(sparsity * allw.size)
        thr = np.sort(allw)[k - 1] if k > 0 else -1.0
        # ties at the threshold: zero exactly k weights (stable order)
        order = np.argsort(allw, kind="stable")[:k]
        mask = np.ones(allw.size, bool)
        mask[order] = False
        off = 0
        for name, w in ws.items():
            m = mask[off : off + w.size].reshape(w.shape)
            off += w.size
            ws[name] = np.where(m, w, 0.0).astype(np.float32)
        log.debug("global pruning threshold |w| <= %g", thr)
    else:
        for name, w in ws.items():
            flat = np.abs(w).reshape(-1)
            k = round(sparsity * flat.size)
            mask = np.ones(flat.size, bool)
            mask[np.argsort(flat, kind="stable")[:k]] = False
            ws[name] = np.where(mask.reshape(w.shape), w, 0.0).astype(np.float32)
    total = zeros = 0
    for layer in layers:
        w = ws[layer.weight]
        g.inits[layer.weight] = w
        per[layer.node.name] = float(np.mean(w == 0))
        total += w.size
        zeros += int(np.sum(w == 0))
    return {
        "asked": float(sparsity),
        "scope": scope,
        "reached_float": zeros / max(total, 1),
        "per_layer": per,
    }


def _im2col_nchw(x: np.ndarray, node: onnx.NodeProto, kh: int, kw: int) -> np.ndarray:
    """Conv input (N, C, H, W) -> patches (N*OH*OW, C*kh*kw) in the weight's (C, kh, kw) order."""
    st = [int(v) for v in (_attr(node, "strides") or [1, 1])]
    pads = [int(v) for v in (_attr(node, "pads") or [0, 0, 0, 0])]
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    win = win[:, :, :: st[0], :: st[1]]  # (N, C, OH, OW, kh, kw)
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kh * kw)


def _refit(
    g: _Graph, float_model: onnx.ModelProto, layers: list[_Layer], calib: np.ndarray
) -> dict[str, float]:
    """Re-fit each pruned layer's kept weights by least squares on the calibration data.

    Layer by layer, the pruned model's input to the layer (upstream layers already pruned
    and re-fitted) is regressed onto the float model's output of that layer (before the
    bias), one output channel at a time over its kept weights (ridge 1e-3 of the mean input
    energy). The zeros stay zeros. Returns the relative output error after the fit, per layer.
    """
    unsupported = [
        layer.node.name
        for layer in layers
        if layer.node.op_type == "Conv"
        and (
            int(_attr(layer.node, "group", 1)) != 1
            or any(int(d) != 1 for d in (_attr(layer.node, "dilations") or [1, 1]))
            or str(_attr(layer.node, "auto_pad", "NOTSET")) not in ("NOTSET", "")
        )
    ]
    if unsupported:
        log.warning("refit skipped: grouped/dilated/auto_pad Conv %s", unsupported)
        return {}
    targets = _ort_run(float_model, calib, [layer.node.output[0] for layer in layers])
    rng = np.random.default_rng(0)
    errors: dict[str, float] = {}
    for layer in layers:
        n = layer.node
        g.sync_to()
        x = _ort_run(g.model, calib, [n.input[0]])[n.input[0]].astype(np.float64)
        t = targets[n.output[0]].astype(np.float64)
        w = np.asarray(g.inits[layer.weight], dtype=np.float64)
        if n.op_type == "Conv":
            kh, kw = w.shape[2], w.shape[3]
            a = _im2col_nchw(x, n, kh, kw)
            if len(n.input) > 2 and n.input[2]:
                t = t - np.asarray(g.inits[n.input[2]], dtype=np.float64).reshape(1, -1, 1, 1)
            t = t.transpose(0, 2, 3, 1).reshape(-1, w.shape[0])
            wm = w.reshape(w.shape[0], -1).T  # (K, O)
        else:
            a, wm = x.reshape(len(x), -1), w
            t = t.reshape(len(t), -1)
        if len(a) > 50_000:
            pick = rng.choice(len(a), 50_000, replace=False)
            a, t = a[pick], t[pick]
        gram = a.T @ a
        rhs = a.T @ t
        lam = 1e-3 * float(np.mean(np.diag(gram))) + 1e-12
        new = np.zeros_like(wm)
        for j in range(wm.shape[1]):
            keep = np.flatnonzero(wm[:, j] != 0)
            if keep.size == 0:
                continue
            sub = gram[np.ix_(keep, keep)] + lam * np.eye(keep.size)
            new[keep, j] = np.linalg.solve(sub, rhs[keep, j])
        errors[n.name] = float(np.linalg.norm(a @ new - t) / max(np.linalg.norm(t), 1e-12))
        if n.op_type == "Conv":
            new = new.T.reshape(w.shape)
        g.inits[layer.weight] = new.astype(np.float32)
    g.sync_to()
    return errors


# --------------------------------------------------------------------------- calibration


def _runtime_model(model: onnx.ModelProto, extra_outputs: list[str]) -> onnx.ModelProto:
    m = copy.deepcopy(model)
    _set_batch(m, "N")
    have = {o.name for o in m.graph.output}
    for t in extra_outputs:
        if t not in have:
            m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    return m


def _ort_run(
    model: onnx.ModelProto, x: np.ndarray, outputs: list[str], batch: int = 1024
) -> dict[str, np.ndarray]:
    """Run ``model`` with onnxruntime on ``x`` (any batch size); return the named tensors."""
    import onnxruntime as ort

    m = _runtime_model(model, outputs)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    chunks: dict[str, list[np.ndarray]] = {t: [] for t in outputs}
    for i in range(0, len(x), batch):
        res = sess.run(outputs, {inp: x[i : i + batch].astype(np.float32)})
        for t, r in zip(outputs, res, strict=True):
            chunks[t].append(np.asarray(r))
    return {t: np.concatenate(c) for t, c in chunks.items()}


def _check_data(x: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise ConfigError(f"{what} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if arr.ndim == len(shape) and tuple(arr.shape) == shape:
        arr = arr[None]
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != shape or len(arr) == 0:
        raise ConfigError(
            f"{what} has shape {tuple(np.asarray(x).shape)}; the model expects "
            f"(N, {', '.join(str(d) for d in shape)}) with N >= 1"
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InvalidTensorError(
            f"{what} holds {int(bad.sum())} NaN/Inf value(s) (in "
            f"{int(bad.reshape(len(arr), -1).any(1).sum())} vector(s)); remove or impute them"
        )
    return arr


# --------------------------------------------------------------------------- quantize


def _pot_log2(s: np.ndarray | float) -> Any:
    a = np.log2(np.asarray(s, dtype=np.float64))
    return int(a) if a.ndim == 0 else [int(v) for v in a.reshape(-1)]


def _add_quant(
    g: _Graph,
    nodes: list[onnx.NodeProto],
    x: str,
    out: str,
    scale: np.ndarray | float,
    bits: int,
    signed: bool,
    narrow: bool,
) -> None:
    s_name, z_name, b_name = (g.new_name(f"{out}_{k}") for k in ("scale", "zeropt", "bitwidth"))
    g.inits[s_name] = np.asarray(scale, dtype=np.float32)
    g.inits[z_name] = np.asarray(0.0, dtype=np.float32)
    g.inits[b_name] = np.asarray(float(bits), dtype=np.float32)
    nodes.append(
        helper.make_node(
            "Quant",
            [x, s_name, z_name, b_name],
            [out],
            name=g.new_name("Quant"),
            domain=QONNX_DOMAIN,
            signed=int(signed),
            narrow=int(narrow),
            rounding_mode="ROUND",
        )
    )


def quantize_onnx(
    model: str | Path | onnx.ModelProto,
    calib: np.ndarray,
    options: QuantizeOptions | None = None,
    *,
    val_x: np.ndarray | None = None,
    val_y: np.ndarray | None = None,
    out: str | Path | None = None,
    evaluate: bool = True,
) -> QuantizeResult:
    """Quantize (and prune) a float ONNX model into a power-of-two-scale QONNX design.

    ``calib``: calibration inputs (N, *input shape). ``val_x`` / ``val_y``: validation data
    for the report (default: the calibration data, agreement only). With ``out`` the QONNX
    file and ``<out>.quantize.json`` (the report) are written. See the module docstring.
    """
    opts = options or QuantizeOptions()
    opts.check()
    t0 = time.perf_counter()
    float_model, notes = prepare_float(model)
    in_shape = tuple(
        int(d.dim_value) for d in float_model.graph.input[0].type.tensor_type.shape.dim[1:]
    )
    calib = _check_data(calib, in_shape, "calibration data")
    g = _Graph(copy.deepcopy(float_model))
    g.sync_from()
    layers = _layers(g)
    if not layers:
        raise UnsupportedOpError("the model has no MatMul/Gemm/Conv layer to quantize")
    sparsity = _prune(g, layers, float(opts.sparsity), opts.prune_scope)
    g.sync_to()
    if opts.sparsity > 0 and opts.refit:
        sparsity["refit_relative_error"] = _refit(g, float_model, layers, calib)
        notes.append(
            "pruned layers re-fitted: kept weights solved by least squares on the "
            "calibration data to reproduce the float layer outputs"
        )
    sites = _activation_sites(g, layers)
    acts = _ort_run(g.model, calib, list(sites))

    bits = int(opts.bits)
    method, pct = opts.scale_method, float(opts.percentile)
    tensors: dict[str, dict[str, Any]] = {}
    scales: dict[str, float] = {}
    # input quantizer: unsigned when the calibration data has no negative value
    in_name = g.input_name
    in_signed = bool(calib.min() < 0)
    s_in = choose_pot_scale(calib, bits, in_signed, method, pct)
    scales[in_name] = s_in
    tensors[in_name] = {
        "kind": "input",
        "bits": bits,
        "signed": in_signed,
        "scale": s_in,
        "log2_scale": _pot_log2(s_in),
        "range": [float(calib.min()), float(calib.max())],
    }
    for t, kind in sites.items():
        v = acts[t]
        signed = kind == "signed"
        s = choose_pot_scale(v, bits, signed, method, pct)
        scales[t] = s
        tensors[t] = {
            "kind": "activation",
            "bits": bits,
            "signed": signed,
            "scale": s,
            "log2_scale": _pot_log2(s),
            "range": [float(v.min()), float(v.max())],
        }

    # rewire: every quantized activation t is read through t__quant
    qname = {t: g.new_name(t) for t in [in_name, *sites]}
    graph_out = g.output_name
    prod = g.producers()
    nodes: list[onnx.NodeProto] = []
    in_q: list[onnx.NodeProto] = []
    _add_quant(g, in_q, in_name, qname[in_name], s_in, bits, in_signed, False)
    for t in sites:
        if t == graph_out:
            # the Quant must write the graph output: the producer writes a new name
            pre = g.new_name(t + "_float")
            prod[t].output[0] = pre
            qname[t] = t
            sites_src = pre
        else:
            sites_src = t
        tensors[t]["quant_input"] = sites_src
    for n in g.graph.node:
        for k, i in enumerate(n.input):
            if i in qname and qname[i] != i:
                n.input[k] = qname[i]

    def scale_of(t: str) -> float:
        seen = t
        while True:
            for src, q in qname.items():
                if q == seen:
                    return scales[src]
            p = g.producers().get(seen)
            if p is None or p.op_type not in (*_LAYOUT, "Relu"):
                raise EdgemlError(f"internal: no quantizer found upstream of tensor '{t}'")
            seen = p.input[0]

    layer_report: dict[str, Any] = {}
    w_quants: dict[str, list[onnx.NodeProto]] = {}
    for layer in layers:
        n = layer.node
        w = np.asarray(g.inits[layer.weight], dtype=np.float64)
        conv = n.op_type == "Conv"
        if opts.per_channel:
            if conv:
                sw = np.array(
                    [choose_pot_scale(w[c], bits, True, method, pct, True) for c in range(len(w))]
                ).reshape(-1, 1, 1, 1)
            else:
                sw = np.array(
                    [
                        choose_pot_scale(w[:, c], bits, True, method, pct, True)
                        for c in range(w.shape[1])
                    ]
                ).reshape(1, -1)
        else:
            sw = np.asarray(choose_pot_scale(w, bits, True, method, pct, True))
        x_in = n.input[0]
        s_x = scale_of(x_in)
        wq = g.new_name(layer.weight + "_quant")
        w_quants[n.name] = []
        _add_quant(g, w_quants[n.name], layer.weight, wq, sw, bits, True, True)
        n.input[1] = wq
        codes = np.clip(np.round(w / sw), -_qmax(bits, True), _qmax(bits, True))
        entry: dict[str, Any] = {
            "weight": layer.weight,
            "weight_bits": bits,
            "weight_scale": sw.reshape(-1).tolist() if sw.size > 1 else float(sw),
            "weight_log2_scale": _pot_log2(sw if sw.size > 1 else float(sw)),
            "input_scale": s_x,
            "weight_code_sparsity": float(np.mean(codes == 0)),
            "weight_codes_zero": int(np.sum(codes == 0)),
            "weight_count": int(codes.size),
        }
        if layer.bias is not None:
            b = np.asarray(g.inits[layer.bias], dtype=np.float64).reshape(-1)
            sb = (s_x * sw).reshape(-1) * np.ones(len(b))
            if np.all(sb == sb[0]):
                sb_arr: np.ndarray = np.asarray(float(sb[0]))
            else:
                sb_arr = sb.reshape(-1)
            need = int(np.max(np.abs(np.round(b / sb)))).bit_length() + 1
            bb = max(int(opts.bias_bits), need)
            if bb > 32:
                raise UnsupportedOpError(
                    f"bias of {_node_label(n)} needs {bb} bits at scale s_in*s_w; the input or "
                    "weight scale is far too fine for this bias: use more bits or check the model"
                )
            bq = g.new_name(layer.bias + "_quant")
            _add_quant(g, w_quants[n.name], layer.bias, bq, sb_arr, bb, True, False)
            if conv:
                n.input[2] = bq
            else:
                assert layer.bias_add is not None
                for k, i in enumerate(layer.bias_add.input):
                    if i == layer.bias:
                        layer.bias_add.input[k] = bq
            entry.update(
                bias=layer.bias,
                bias_bits=bb,
                bias_scale=sb_arr.reshape(-1).tolist() if sb_arr.size > 1 else float(sb_arr),
                bias_log2_scale=_pot_log2(sb_arr if sb_arr.size > 1 else float(sb_arr)),
            )
        layer_report[n.name] = entry

    # assemble nodes in topological order: input Quant, then each node followed by its
    # activation Quant; weight/bias Quants right before their layer
    q_after = {tensors[t]["quant_input"]: t for t in sites}
    nodes.extend(in_q)
    for n in list(g.graph.node):
        nodes.extend(w_quants.get(n.name, []))
        nodes.append(n)
        for o in n.output:
            if o in q_after:
                t = q_after[o]
                tinfo = tensors[t]
                _add_quant(g, nodes, o, qname[t], scales[t], bits, tinfo["signed"], False)
    del g.graph.node[:]
    g.graph.node.extend(nodes)
    g.sync_to()
    qmodel = g.model
    if not any(o.domain == QONNX_DOMAIN for o in qmodel.opset_import):
        qmodel.opset_import.append(helper.make_opsetid(QONNX_DOMAIN, 1))
    qmodel.producer_name = "edgeml-quantize"
    from qonnx.transformation.infer_shapes import InferShapes

    del qmodel.graph.value_info[:]
    qmodel = _wrapper(qmodel).transform(InferShapes()).model

    if opts.per_channel:
        notes.append(
            "per-channel weight scales: exact in the golden model and qonnx, but hls4ml 1.3 "
            "cannot convert them (IndexError at the weight Quant, measured); use per-tensor "
            "scales (the default) for the hls4ml route"
        )
    code_zero = sum(e["weight_codes_zero"] for e in layer_report.values())
    code_total = sum(e["weight_count"] for e in layer_report.values())
    sparsity["reached_codes"] = code_zero / max(code_total, 1)
    report: dict[str, Any] = {
        "options": {
            "bits": bits,
            "sparsity": float(opts.sparsity),
            "prune_scope": opts.prune_scope,
            "scale_method": method,
            "percentile": pct if method == "percentile" else None,
            "per_channel": bool(opts.per_channel),
            "bias_bits_min": int(opts.bias_bits),
            "refit": bool(opts.refit),
            "rounding": "ROUND (half to even), power-of-two scales",
        },
        "notes": notes,
        "calibration_vectors": len(calib),
        "activations": tensors,
        "layers": layer_report,
        "sparsity": sparsity,
    }
    path = report_path = None
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(qmodel, str(path))
    if evaluate:
        vx = calib if val_x is None else _check_data(val_x, in_shape, "validation data x")
        report["evaluation"] = evaluate_quantized(float_model, qmodel, vx, val_y)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    if path is not None:
        report_path = report_json_path(path)
        report_path.write_text(json.dumps(report, indent=2, default=_json_default))
    return QuantizeResult(qmodel, report, path, report_path)


def report_json_path(out: Path) -> Path:
    """``model.qonnx.onnx`` -> ``model.qonnx.quantize.json`` (next to the output)."""
    name = out.name[: -len(".onnx")] if out.name.endswith(".onnx") else out.name
    return out.with_name(name + ".quantize.json")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


# --------------------------------------------------------------------------- evaluation


def qonnx_execute(model: onnx.ModelProto, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Execute a QONNX model with qonnx's ``execute_onnx`` (independent of edgeml's golden),
    ``batch`` vectors at a time (:func:`edgeml.reference.execute_original`)."""
    from edgeml.reference import execute_original

    return np.concatenate(
        [execute_original(model, x[i : i + batch]) for i in range(0, len(x), batch)]
    )


def golden_outputs(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, Any, Any]:
    """Dequantized golden outputs of ``model`` (cleaned with clean_qonnx); also (golden, cleaned)."""
    from edgeml.export import clean_qonnx
    from edgeml.golden import GoldenModel

    cleaned = clean_qonnx(copy.deepcopy(model))
    gm = GoldenModel.from_onnx(cleaned)
    codes = gm.quantize_input(x, on_overflow="saturate")
    out = gm.predict(codes).astype(np.float64) * gm.output_scale
    return out, gm, cleaned


def _flat_out(y: np.ndarray) -> np.ndarray:
    return y.reshape(len(y), -1)


def evaluate_quantized(
    float_model: onnx.ModelProto,
    qmodel: onnx.ModelProto,
    x: np.ndarray,
    y: np.ndarray | None = None,
) -> dict[str, Any]:
    """Float vs quantized metric on ``x`` (``y``: class labels -> top-1 accuracy) and golden
    vs qonnx execution (argmax agreement, max abs difference)."""
    f_out = _ort_run(float_model, x, [float_model.graph.output[0].name])
    f = _flat_out(f_out[float_model.graph.output[0].name].astype(np.float64))
    q_raw = qonnx_execute(qmodel, x)
    gout, gm, _ = golden_outputs(qmodel, x)
    if q_raw.ndim == 4 and tuple(gm.output_shape) == (*q_raw.shape[2:], q_raw.shape[1]):
        q_raw = q_raw.transpose(0, 2, 3, 1)  # the golden model works channels-last
        f = f.reshape(q_raw.shape[0], q_raw.shape[3], -1).transpose(0, 2, 1)
    q = _flat_out(q_raw)
    f = _flat_out(f)
    gq = _flat_out(gout)
    if gq.shape != q.shape:
        raise EdgemlError(f"internal: golden output shape {gq.shape} != qonnx {q.shape}")
    res: dict[str, Any] = {"vectors": len(x)}
    if q.ndim == 2 and q.shape[1] > 1:
        res["argmax_agreement_float_vs_quant"] = float(np.mean(f.argmax(1) == q.argmax(1)))
    res["mse_float_vs_quant"] = float(np.mean((f - q) ** 2))
    res["max_abs_err_float_vs_quant"] = float(np.max(np.abs(f - q)))
    if y is not None:
        yy = np.asarray(y)
        if yy.ndim == 1 and len(yy) == len(x) and np.all(yy == np.round(yy)) and q.shape[1] > 1:
            yy = yy.astype(np.int64)
            res["metric"] = "top1_accuracy"
            res["float"] = float(np.mean(f.argmax(1) == yy))
            res["quantized"] = float(np.mean(q.argmax(1) == yy))
            res["golden"] = float(np.mean(gq.argmax(1) == yy))
        elif len(yy) == len(x) and yy.size == f.size:
            yy = yy.reshape(f.shape).astype(np.float64)
            res["metric"] = "mse"
            res["float"] = float(np.mean((f - yy) ** 2))
            res["quantized"] = float(np.mean((q - yy) ** 2))
            res["golden"] = float(np.mean((gq - yy) ** 2))
        else:
            raise ConfigError(
                f"validation y has shape {yy.shape}; expected ({len(x)},) class labels or the "
                f"model's output shape {(len(x), *q.shape[1:])}"
            )
    res["golden_vs_qonnx"] = {
        "max_abs_diff": float(np.max(np.abs(gq - q))),
        "mismatching_outputs": int(np.sum(gq != q)),
        "argmax_agreement": float(np.mean(gq.argmax(1) == q.argmax(1))) if q.shape[1] > 1 else None,
        "input_type": gm.input_type.hls(),
        "output_type": gm.output_type.hls(),
    }
    return res


# --------------------------------------------------------------------------- CLI


_HELP = "post-training quantization (+ pruning) of a float ONNX model -> QONNX (power-of-two)"
_EPILOG = """\
example:
  edgeml quantize --onnx float.onnx --calib calib.npy --bits 8 --sparsity 0.5 \\
      --val val.npz --out model.qonnx.onnx
  edgeml flow --onnx model.qonnx.onnx

--calib: .npy (N, *input shape) or .npz with array 'x'. --val: .npz with 'x' and optional
'y' (class labels -> top-1 accuracy; else regression targets -> MSE). The report is
printed and written to <out>.quantize.json.
"""


def _add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--onnx", type=Path, required=True, help="float ONNX model")
    sp.add_argument("--calib", type=Path, required=True, help="calibration inputs (.npy/.npz)")
    sp.add_argument("--out", type=Path, required=True, help="QONNX file to write")
    sp.add_argument("--bits", type=int, default=8, help="bits of weights and activations (2..16)")
    sp.add_argument("--sparsity", type=float, default=0.0, help="weight sparsity in [0, 0.95]")
    sp.add_argument(
        "--prune-scope", choices=PRUNE_SCOPES, default="layer", help="per-layer or global pruning"
    )
    sp.add_argument("--val", type=Path, help="validation .npz with x and optional y")
    sp.add_argument("--scale-method", choices=SCALE_METHODS, default="percentile")
    sp.add_argument("--percentile", type=float, default=99.99, help="for --scale-method percentile")
    sp.add_argument(
        "--per-channel",
        action="store_true",
        help="per-output-channel power-of-two weight scales (golden model and RTL only: "
        "hls4ml 1.3 cannot convert them)",
    )
    sp.add_argument("--bias-bits", type=int, default=16, help="minimum bias bits (default 16)")
    sp.add_argument(
        "--no-refit",
        dest="refit",
        action="store_false",
        help="with --sparsity: keep the kept weights as they are (default: re-fit them by "
        "least squares on the calibration data)",
    )
    sp.add_argument("-q", "--quiet", action="store_true", help="no report on stdout")
    sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_quantize_parser(subparsers: Any) -> None:
    """Add the ``quantize`` sub-command to the ``edgeml`` parser's ``subparsers``."""
    sp = subparsers.add_parser(
        "quantize",
        help=_HELP,
        description=_HELP + ". " + (__doc__ or "").split("\n\n")[1],
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(sp)


def _load_array(path: Path, what: str, key: str = "x") -> dict[str, np.ndarray]:
    if not path.exists():
        raise ConfigError(f"{what} file {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise CorruptFileError(
            f"{what} file {path} is not a readable .npy/.npz ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(data, np.ndarray):
        return {key: data}
    with data:
        if key not in data.files:
            raise ConfigError(f"{what} file {path} has arrays {data.files}; it needs '{key}'")
        return {k: np.asarray(data[k]) for k in data.files}


def quantize_main(args: argparse.Namespace) -> int:
    """Run ``edgeml quantize`` from parsed options; print the summary; return the exit code."""
    try:
        calib = _load_array(args.calib, "--calib")["x"]
        vx = vy = None
        if args.val is not None:
            val = _load_array(args.val, "--val")
            vx, vy = val["x"], val.get("y")
        opts = QuantizeOptions(
            bits=args.bits,
            sparsity=args.sparsity,
            prune_scope=args.prune_scope,
            scale_method=args.scale_method,
            percentile=args.percentile,
            per_channel=args.per_channel,
            bias_bits=args.bias_bits,
            refit=args.refit,
        )
        res = quantize_onnx(args.onnx, calib, opts, val_x=vx, val_y=vy, out=args.out)
    except EdgemlError as exc:
        print(f"edgeml: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if not args.quiet:
        print(format_summary(res.report))
    print(f"edgeml quantize: wrote {res.path} and {res.report_path}")
    return 0


def format_summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal: metric, golden check, sparsity, scales."""
    ev = report.get("evaluation", {})
    lines = []
    if "metric" in ev:
        lines.append(
            f"{ev['metric']}: float {ev['float']:.4f}  quantized {ev['quantized']:.4f}  "
            f"(golden {ev['golden']:.4f}) on {ev['vectors']} vectors"
        )
    if "argmax_agreement_float_vs_quant" in ev:
        lines.append(
            f"argmax agreement float vs quantized: {ev['argmax_agreement_float_vs_quant']:.4f}"
        )
    if ev:
        lines.append(
            f"MSE float vs quantized {ev['mse_float_vs_quant']:.3g}, max |err| "
            f"{ev['max_abs_err_float_vs_quant']:.3g}"
        )
        gv = ev["golden_vs_qonnx"]
        lines.append(
            f"golden vs qonnx execute_onnx: {gv['mismatching_outputs']} differing outputs, "
            f"max |diff| {gv['max_abs_diff']:.3g}, argmax agreement {gv['argmax_agreement']}"
        )
    sp = report["sparsity"]
    if sp.get("asked"):
        lines.append(
            f"sparsity asked {sp['asked']:.3f} ({sp['scope']}): reached {sp['reached_float']:.4f} "
            f"(pruned), {sp['reached_codes']:.4f} zero codes"
        )
    for name, e in report["layers"].items():
        b = f", bias {e['bias_bits']}b 2^{e['bias_log2_scale']}" if "bias_bits" in e else ""
        lines.append(
            f"  {name}: weight {e['weight_bits']}b 2^{e['weight_log2_scale']}{b}, "
            f"input 2^{_pot_log2(e['input_scale'])}"
        )
    for name, t in report["activations"].items():
        lines.append(
            f"  {t['kind']} {name}: {'s' if t['signed'] else 'u'}{t['bits']} 2^{t['log2_scale']} "
            f"(range {t['range'][0]:.3g}..{t['range'][1]:.3g})"
        )
    lines.extend(f"note: {n}" for n in report["notes"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m edgeml.quantize``: the same options as ``edgeml quantize``."""
    p = argparse.ArgumentParser(
        prog="edgeml quantize",
        description=_HELP,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    return quantize_main(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
