"""The golden integer model: the oracle every other level is checked against.

A cleaned QONNX graph is compiled once into a flat list of integer ops
(:class:`Op` subclasses). Each tensor is an ``int64`` array of *codes* plus a
per-tensor real LSB weight (``scale``); for power-of-two scales that is a
:class:`~edgeml.fixed.FixedType` with ``frac`` fractional bits. Every op is
exact integer arithmetic with explicit rounding and saturation, vectorised over
the batch with numpy, so the same list drives:

* verification (``run(..., trace=True)`` returns every op's output),
* RTL generation (``edgeml.rtl`` mirrors each op on da4ml symbolic arrays),
* fault injection (weights/biases are stored as their quantizer's integer codes).

Hardware semantics for real-valued scales: a Quant whose requantisation factor
is not a power of two becomes a fixed-point multiply (``mult``) and a rounding
right shift (``shift``) with ``GoldenOptions.mult_frac_bits`` fractional bits;
float BatchNormalization / Mul / Add constants become fixed-point constants with
``GoldenOptions.affine_frac_bits`` fractional bits. Such ops are flagged
``exact_vs_qonnx=False`` and the error against QONNX's real-valued reference is
reported separately; golden, C-sim and RTL must still agree bit for bit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeml.errors import CorruptFileError, InputRangeError, UnsupportedOpError
from edgeml.fixed import FixedType, type_for_range
from edgeml.softmax import SoftmaxParams, exp_table, inv_table, softmax_codes, softmax_params

log = logging.getLogger(__name__)

ROUNDING_MODES: tuple[str, ...] = (
    "HALF_EVEN",
    "HALF_UP",
    "HALF_DOWN",
    "FLOOR",
    "CEIL",
    "UP",
    "DOWN",
)

#: Ops that are a fixed index map of their (activation) inputs: compiled to one ``Gather``.
GATHER_OPS: tuple[str, ...] = (
    "Slice",
    "Concat",
    "Split",
    "Pad",
    "Squeeze",
    "Unsqueeze",
    "Resize",
    "Upsample",
    "Tile",
    "Expand",
    "DepthToSpace",
    "SpaceToDepth",
)


def _hard_sigmoid(alpha: float, beta: float) -> Any:
    return lambda v: np.clip(alpha * v + beta, 0.0, 1.0)


def _elu(alpha: float) -> Any:
    return lambda v: np.where(v > 0, v, alpha * np.expm1(np.minimum(v, 0)))


def _erf(v: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(v)


#: Elementwise functions compiled to a table; each takes the node's attributes (a dict).
TABLE_FUNCS: dict[str, Any] = {
    "Tanh": lambda a: np.tanh,
    "Sigmoid": lambda a: lambda v: 1.0 / (1.0 + np.exp(-v)),
    "HardSigmoid": lambda a: _hard_sigmoid(a.get("alpha", 0.2), a.get("beta", 0.5)),
    "HardSwish": lambda a: lambda v: v * np.clip(v / 6.0 + 0.5, 0.0, 1.0),
    "Softplus": lambda a: lambda v: np.logaddexp(0.0, v),
    "Softsign": lambda a: lambda v: v / (1.0 + np.abs(v)),
    "Elu": lambda a: _elu(a.get("alpha", 1.0)),
    "Selu": lambda a: (
        lambda v: a.get("gamma", 1.0507009873554805) * _elu(a.get("alpha", 1.6732632423543772))(v)
    ),
    "Exp": lambda a: np.exp,
    "Sin": lambda a: np.sin,
    "Cos": lambda a: np.cos,
    "Erf": lambda a: _erf,
}
#: Every ONNX op the golden model compiles (error messages list them).
SUPPORTED_OPS: tuple[str, ...] = (
    "Quant",
    "BipolarQuant",
    "Trunc",
    "MatMul",
    "Gemm",
    "Add",
    "Sub",
    "Mul",
    "BatchNormalization",
    "Conv",
    "ConvTranspose",
    "Relu",
    "MaxPool",
    "Flatten",
    "Reshape",
    "Transpose",
    "Identity",
    "Softmax",
    "Sign",
    "Clip",
    "LeakyRelu",
    "Div",
    # sums as structural (wiring-only) Conv / Dense ops
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "ReduceSum",
    *GATHER_OPS,
    *TABLE_FUNCS,
)
#: Widest input (bits) an elementwise function is tabulated for: 2**14 entries.
MAX_TABLE_BITS = 14
#: Significant bits of a table whose output no Quant defines (a Tanh at the graph's end).
DEFAULT_TABLE_BITS = 16


# --------------------------------------------------------------------------- integer kernels


def round_shift(x: np.ndarray, shift: int, mode: str) -> np.ndarray:
    """``round(x / 2**shift)`` on int64 codes with the given rounding mode.

    ``shift <= 0`` is an exact left shift. The half-to-even formula
    ``(x + 2**(d-1) - 1 + lsb) >> d`` (lsb = bit d of x) is what QONNX's ROUND
    (numpy's round) does on ties, and is the form the RTL implements too.
    """
    if shift <= 0:
        return x << (-shift)
    d = shift
    half = 1 << (d - 1)
    if mode == "FLOOR":
        return x >> d
    if mode == "CEIL":
        return -((-x) >> d)
    if mode == "HALF_EVEN":
        return (x + (half - 1) + ((x >> d) & 1)) >> d
    sign = np.where(x < 0, -1, 1)
    ax = np.abs(x)
    if mode == "HALF_UP":  # ties away from zero (QONNX's HALF_UP)
        return sign * ((ax + half) >> d)
    if mode == "HALF_DOWN":  # ties toward zero
        return sign * ((ax + half - 1) >> d)
    if mode == "DOWN":
        return sign * (ax >> d)
    if mode == "UP":
        return sign * ((ax + (1 << d) - 1) >> d)
    raise ValueError(f"unknown rounding mode {mode!r}; allowed: {ROUNDING_MODES}")


# QONNX's rounding of real values (qonnx.custom_op.general.intquant.resolve_rounding_mode)
FLOAT_ROUNDING: dict[str, Any] = {
    "HALF_EVEN": np.round,
    "FLOOR": np.floor,
    "CEIL": np.ceil,
    "DOWN": np.fix,
    "UP": lambda v: np.sign(v) * np.ceil(np.abs(v)),
    "HALF_UP": lambda v: np.sign(v) * np.floor(np.abs(v) + 0.5),
    "HALF_DOWN": lambda v: np.sign(v) * np.ceil(np.abs(v) - 0.5),
}


def _is_pot(x: float) -> bool:
    if x <= 0 or not math.isfinite(x):
        return False
    m, _ = math.frexp(x)
    return m == 0.5


def _log2_int(x: float) -> int:
    return math.frexp(x)[1] - 1


def _im2col_nhwc(
    x: np.ndarray, kh: int, kw: int, stride: tuple[int, int], pads: tuple[int, int, int, int]
) -> np.ndarray:
    """(N,H,W,C) -> (N,OH,OW,kh,kw,C) patches (a view where no padding is needed)."""
    top, left, bottom, right = pads
    if any(pads):
        x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    n, h, w, c = x.shape
    oh = (h - kh) // stride[0] + 1
    ow = (w - kw) // stride[1] + 1
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x,
        shape=(n, oh, ow, kh, kw, c),
        strides=(s[0], s[1] * stride[0], s[2] * stride[1], s[1], s[2], s[3]),
        writeable=False,
    )


# --------------------------------------------------------------------------- IR


@dataclass
class TensorInfo:
    """Static facts about one tensor: shape (no batch), code type, LSB weight."""

    name: str
    shape: tuple[int, ...]
    type: FixedType
    scale: np.ndarray  # real value of one code LSB; scalar or per-channel (last axis)

    @property
    def pot(self) -> bool:
        """True if ``scale`` is one power of two, i.e. ``type.frac`` fully describes it."""
        return self.scale.size == 1 and _is_pot(float(self.scale.reshape(-1)[0]))


@dataclass
class Op:
    """One integer op. ``inputs``/``output`` are tensor names in the golden graph."""

    kind: ClassVar[str] = "op"
    name: str
    inputs: list[str]
    output: str
    exact_vs_qonnx: bool = field(default=True, kw_only=True)

    def __call__(self, *xs: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def label(self) -> str:
        """How every report names this op, e.g. ``"MatMul_1 (dense)"``."""
        return f"{self.name} ({self.kind})"


@dataclass
class Requant(Op):
    """``y = clip(round_shift(x * mult + offset, shift), lo, hi)``, per channel (last axis).

    Covers QONNX Quant / Trunc on activations: a power-of-two rescale is
    ``mult=1`` and a (possibly negative) shift; saturation is the quantizer's
    clamp to [lo, hi] (narrow-range aware).
    """

    kind: ClassVar[str] = "requant"
    mult: np.ndarray = field(default_factory=lambda: np.array(1, dtype=np.int64))
    offset: np.ndarray = field(default_factory=lambda: np.array(0, dtype=np.int64))
    shift: int = 0
    rounding: str = "HALF_EVEN"
    lo: int = 0
    hi: int = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x
        if self.mult.size != 1 or int(self.mult.reshape(-1)[0]) != 1:
            y = y * self.mult
        if self.offset.size != 1 or int(self.offset.reshape(-1)[0]) != 0:
            y = y + self.offset
        y = round_shift(y, self.shift, self.rounding)
        return np.clip(y, self.lo, self.hi)


@dataclass
class Affine(Op):
    """``y = x * mult + offset`` per channel, exact (fixed-point BN / Mul / Add by constants)."""

    kind: ClassVar[str] = "affine"
    mult: np.ndarray = field(default_factory=lambda: np.array(1, dtype=np.int64))
    offset: np.ndarray = field(default_factory=lambda: np.array(0, dtype=np.int64))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x * self.mult + self.offset


@dataclass
class Dense(Op):
    """``y = (x @ W) << acc_shift + bias << bias_shift`` on codes.

    ``weight`` holds the weight quantizer's integer codes (in, out) in
    ``weight_type`` (its storage format, which is what a bit flip hits);
    ``weight_lshift`` aligns per-output-channel power-of-two scales.
    """

    kind: ClassVar[str] = "dense"
    weight: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    weight_type: FixedType = field(default_factory=lambda: FixedType(True, 8, 0))
    weight_lshift: np.ndarray = field(default_factory=lambda: np.array(0, dtype=np.int64))
    bias: np.ndarray | None = None
    bias_type: FixedType | None = None
    bias_shift: int = 0
    acc_shift: int = 0
    #: weights fixed by the graph's structure (a mean's ones, a depthwise conv's
    #: zeros outside a group): hardware wiring, not stored state, so no fault sites
    structural: bool = field(default=False, kw_only=True)

    def effective_weight(self, weight: np.ndarray | None = None) -> np.ndarray:
        w = self.weight if weight is None else weight
        return w << self.weight_lshift if np.any(self.weight_lshift) else w

    def effective_bias(self, bias: np.ndarray | None = None) -> np.ndarray | int:
        b = self.bias if bias is None else bias
        if b is None:
            return 0
        return b << self.bias_shift

    def finish(self, acc: np.ndarray) -> np.ndarray:
        """Align the accumulator's binary point with the bias and add it."""
        if self.acc_shift:
            acc = acc << self.acc_shift
        return acc + self.effective_bias()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.finish(x @ self.effective_weight())


@dataclass
class Conv(Dense):
    """2-D convolution on NHWC codes; ``weight`` is (kh, kw, cin, cout) codes."""

    kind: ClassVar[str] = "conv"
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right

    def patches(self, x: np.ndarray) -> np.ndarray:
        kh, kw = self.weight.shape[:2]
        return _im2col_nhwc(x, kh, kw, self.strides, self.pads)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p = self.patches(x)
        n, oh, ow = p.shape[:3]
        w = self.effective_weight()
        y = p.reshape(n * oh * ow, -1) @ w.reshape(-1, w.shape[-1])
        return self.finish(y.reshape(n, oh, ow, -1))


@dataclass
class Relu(Op):
    kind: ClassVar[str] = "relu"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0)


@dataclass
class MaxPool(Op):
    """Max pooling on NHWC codes (padding with the smallest code, as ONNX pads with -inf)."""

    kind: ClassVar[str] = "maxpool"
    kernel: tuple[int, int] = (2, 2)
    strides: tuple[int, int] = (2, 2)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        top, left, bottom, right = self.pads
        if any(self.pads):
            x = np.pad(
                x,
                ((0, 0), (top, bottom), (left, right), (0, 0)),
                constant_values=np.iinfo(np.int64).min,
            )
        p = _im2col_nhwc(x, self.kernel[0], self.kernel[1], self.strides, (0, 0, 0, 0))
        # an elementwise maximum over the kh*kw strided slices is ~9x faster than
        # reducing the 6-D view
        out = p[:, :, :, 0, 0]
        for i in range(self.kernel[0]):
            for j in range(self.kernel[1]):
                if i or j:
                    out = np.maximum(out, p[:, :, :, i, j])
        return np.ascontiguousarray(out)


@dataclass
class Reshape(Op):
    kind: ClassVar[str] = "reshape"
    shape: tuple[int, ...] = ()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x.reshape((x.shape[0], *self.shape))


@dataclass
class Transpose(Op):
    kind: ClassVar[str] = "transpose"
    perm: tuple[int, ...] = ()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.transpose(x, self.perm))


@dataclass
class AddTensors(Op):
    """``y = (a << shift_a) + (b << shift_b)``: residual adds with aligned binary points."""

    kind: ClassVar[str] = "add"
    shift_a: int = 0
    shift_b: int = 0

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a << self.shift_a) + (b << self.shift_b)


@dataclass
class Bipolar(Op):
    """QONNX BipolarQuant: ``+1`` where ``x >= 0`` else ``-1`` (codes; scale kept separately)."""

    kind: ClassVar[str] = "bipolar"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.where(x >= 0, 1, -1).astype(np.int64)


@dataclass
class Sign(Op):
    """ONNX Sign on codes: ``-1``, ``0`` or ``+1`` (output LSB 1)."""

    kind: ClassVar[str] = "sign"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.sign(x).astype(np.int64)


@dataclass
class LeakyRelu(Op):
    """``y = x * pos_mult`` where ``x >= 0`` else ``x * neg_mult`` (alpha as a fixed-point ratio)."""

    kind: ClassVar[str] = "leakyrelu"
    pos_mult: int = 1
    neg_mult: int = 1

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.where(x >= 0, x * self.pos_mult, x * self.neg_mult)


@dataclass
class Softmax(Op):
    """hls4ml 1.3's ``softmax_stable`` over the last axis, bit for bit (see :mod:`edgeml.softmax`).

    The types are hls4ml's ``inp_norm_t``, ``exp_table_t``, ``accum_t``, ``inv_inp_t``,
    ``inv_table_t`` and the result type; the tables are their integer codes.
    """

    kind: ClassVar[str] = "softmax"
    n: int = 1
    in_frac: int = 0
    exp_scale: float = 1.0
    norm_type: FixedType = field(default_factory=lambda: FixedType(False, 10, 7))
    exp_type: FixedType = field(default_factory=lambda: FixedType(False, 18, 17))
    accum_type: FixedType = field(default_factory=lambda: FixedType(False, 18, 17))
    inv_inp_type: FixedType = field(default_factory=lambda: FixedType(False, 10, 9))
    inv_type: FixedType = field(default_factory=lambda: FixedType(False, 18, 17))
    out_type: FixedType = field(default_factory=lambda: FixedType(False, 18, 17))
    exp_table: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    inv_table: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def params(self) -> SoftmaxParams:
        """The hls4ml types and shifts this op computes with."""
        return SoftmaxParams(
            self.n,
            self.in_frac,
            self.exp_scale,
            self.norm_type,
            self.exp_type,
            self.accum_type,
            self.inv_inp_type,
            self.inv_type,
            self.out_type,
        )

    @classmethod
    def create(cls, name: str, src: str, out: str, p: SoftmaxParams) -> Softmax:
        """A Softmax op with tables computed from ``p`` as hls4ml's ``init_*_table`` do."""
        return cls(
            name,
            [src],
            out,
            exact_vs_qonnx=False,
            n=p.n,
            in_frac=p.in_frac,
            exp_scale=p.exp_scale,
            norm_type=p.norm_type,
            exp_type=p.exp_type,
            accum_type=p.accum_type,
            inv_inp_type=p.inv_inp_type,
            inv_type=p.inv_type,
            out_type=p.out_type,
            exp_table=exp_table(p),
            inv_table=inv_table(p),
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return softmax_codes(x, self.params, self.exp_table, self.inv_table)


@dataclass
class Gather(Op):
    """Pure data movement: ``y = concat(flat(x_i) << shifts[i], [0])[index]`` reshaped to ``shape``.

    One op for every layout op that is a fixed index map (Slice, Concat, Split,
    Pad with zeros, Squeeze/Unsqueeze, nearest Resize/Upsample, Tile,
    DepthToSpace, zero insertion of a strided ConvTranspose, broadcasting). The
    map is computed once from ONNX's own reference implementation of the op, so
    its semantics are ONNX's; ``index == -1`` selects the constant 0 (padding).
    ``shifts`` align the binary points of inputs with different power-of-two scales.
    """

    kind: ClassVar[str] = "gather"
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    shape: tuple[int, ...] = ()
    shifts: tuple[int, ...] = ()

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        n = xs[0].shape[0]
        shifts = self.shifts or (0,) * len(xs)
        parts = [
            x.reshape(n, -1) << s if s else x.reshape(n, -1)
            for x, s in zip(xs, shifts, strict=True)
        ]
        if len(parts) == 1 and int(self.index.min(initial=0)) >= 0:
            flat = parts[0]
        else:
            parts.append(np.zeros((n, 1), np.int64))
            flat = np.concatenate(parts, axis=1)
        return np.ascontiguousarray(flat[:, self.index].reshape((n, *self.shape)))


@dataclass
class Lookup(Op):
    """Elementwise function as a table: ``y = table[x - lo]`` (Tanh, Sigmoid, ...).

    The table covers every code of the input's type, so any input the hardware
    can hold (a faulty one too) has a defined output; its entries are the
    function of the real input value, quantized by the output quantizer.
    """

    kind: ClassVar[str] = "lookup"
    table: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    lo: int = 0
    fn: str = ""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.table[x - self.lo]

    @property
    def label(self) -> str:
        return f"{self.name} (lookup {self.fn})" if self.fn else super().label


@dataclass
class SubTensors(Op):
    """``y = (a << shift_a) - (b << shift_b)``: difference of two activations."""

    kind: ClassVar[str] = "sub"
    shift_a: int = 0
    shift_b: int = 0

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a << self.shift_a) - (b << self.shift_b)


@dataclass
class MulTensors(Op):
    """``y = a * b`` elementwise on codes (gates); the output LSB is the product of the LSBs."""

    kind: ClassVar[str] = "mul"

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a * b


@dataclass
class MatMulTensors(Op):
    """``y = a @ b`` of two activations over their last two axes (attention scores, A@V)."""

    kind: ClassVar[str] = "matmul"

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.matmul(a, b)


#: Op classes by name, for reading a saved golden IR back (:meth:`GoldenModel.load`).
_OP_CLASSES: dict[str, type[Op]] = {
    c.__name__: c
    for c in (
        Requant,
        Affine,
        Dense,
        Conv,
        Relu,
        MaxPool,
        Reshape,
        Transpose,
        AddTensors,
        Bipolar,
        Sign,
        LeakyRelu,
        Softmax,
        Gather,
        Lookup,
        SubTensors,
        MulTensors,
        MatMulTensors,
    )
}
#: Format tag of ``golden.npz``; bump when the IR's fields change.
GOLDEN_IR_FORMAT = "edgeml-golden-ir/1"


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class GoldenOptions:
    """Precision choices for real-valued (non power-of-two) scales and constants."""

    mult_frac_bits: int = 16
    affine_frac_bits: int = 16
    #: extra fractional bits an affine op may take to keep ``affine_frac_bits`` significant
    #: bits in a multiplier below 1 (bounded: da4ml traces constants in float64)
    affine_extra_bits: int = 8
    #: Softmax (hls4ml ``softmax_stable``): log2 of the exp / inverse table sizes, the
    #: range ``[0, 2**softmax_range_bits)`` of ``x_max - x`` and the tables' width.
    softmax_table_bits: int = 10
    softmax_inv_table_bits: int = 12
    softmax_range_bits: int = 3
    softmax_table_width: int = 18


@dataclass
class GoldenModel:
    """An executable integer model compiled from a cleaned QONNX graph."""

    ops: list[Op]
    tensors: dict[str, TensorInfo]
    input_name: str
    output_name: str
    input_shape: tuple[int, ...]  # graph-input layout, no batch (e.g. (1, 8, 8) NCHW)
    input_quant: Requant  # the graph's input quantizer (applied by quantize_input)
    input_real_scale: float
    source: str = ""
    notes: list[str] = field(default_factory=list)

    # ---- construction
    @classmethod
    def from_onnx(cls, model: Any, options: GoldenOptions | None = None) -> GoldenModel:
        """Compile a cleaned QONNX ``ModelWrapper`` / ``onnx.ModelProto`` / file path."""
        return _Compiler(model, options or GoldenOptions()).compile()

    @classmethod
    def from_onnx_with_bounds(
        cls, model: Any, options: GoldenOptions | None = None
    ) -> tuple[GoldenModel, dict[str, tuple[int, int]]]:
        """:meth:`from_onnx`, plus the compiler's exact integer code bounds of every tensor
        (its interval analysis: what :mod:`edgeml.minwidth` sizes accumulators by)."""
        c = _Compiler(model, options or GoldenOptions())
        return c.compile(), dict(c.bounds)

    @classmethod
    def from_torch(
        cls, model: Any, input_shape: tuple[int, ...], options: GoldenOptions | None = None
    ) -> GoldenModel:
        """Export a Brevitas QAT ``model`` (input ``input_shape``, no batch dimension) to
        cleaned QONNX as ``edgeml export`` does, in a temporary folder, and compile it."""
        import tempfile

        from edgeml.export import export_qonnx

        with tempfile.TemporaryDirectory(prefix="edgeml-golden-") as tmp:
            path = export_qonnx(model, (1, *input_shape), Path(tmp) / "model.qonnx.onnx")
            return cls.from_onnx(path, options)

    # ---- types
    @property
    def input_type(self) -> FixedType:
        return self.tensors[self.input_name].type

    @property
    def output_type(self) -> FixedType:
        return self.tensors[self.output_name].type

    @property
    def output_scale(self) -> np.ndarray:
        return self.tensors[self.output_name].scale

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.tensors[self.output_name].shape

    @property
    def param_ops(self) -> list[Dense]:
        """Ops holding weights/biases (Dense and Conv), in graph order."""
        return [op for op in self.ops if isinstance(op, Dense)]

    # ---- execution
    def quantize_input(self, x: np.ndarray, on_overflow: str = "error") -> np.ndarray:
        """Real-valued inputs -> input codes with the graph's input quantizer.

        Values outside the input precision are an error by default (the
        firmware would saturate them, silently changing the data); with
        ``on_overflow='saturate'`` they are clamped and counted in the log.
        """
        if on_overflow not in ("error", "saturate"):
            raise ValueError(f"on_overflow must be 'error' or 'saturate', got {on_overflow!r}")
        x = np.asarray(x, dtype=np.float64)
        if x.shape[1:] != self.input_shape:
            raise InputRangeError(
                f"input shape {x.shape[1:]} does not match the design's input shape {self.input_shape}"
            )
        q = self.input_quant
        lsb = self.input_real_scale
        codes = FLOAT_ROUNDING[q.rounding](x / lsb)
        codes = codes.astype(np.int64)
        bad = (codes < q.lo) | (codes > q.hi)
        n_bad = int(bad.sum())
        if n_bad:
            lo_v, hi_v = q.lo * lsb, q.hi * lsb
            msg = (
                f"{n_bad} input value(s) in {int(bad.reshape(len(x), -1).any(1).sum())} vector(s) "
                f"fall outside the input precision {self.input_type.hls()} range "
                f"[{lo_v:g}, {hi_v:g}] (observed min {x.min():g}, max {x.max():g}); "
                "the firmware would saturate them. Rescale the inputs or widen the input "
                "quantizer (bit width / scale)."
            )
            if on_overflow == "error":
                raise InputRangeError(msg)
            log.warning(msg)
            codes = np.clip(codes, q.lo, q.hi)
        return codes

    def run(
        self, x_codes: np.ndarray, trace: bool = False
    ) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
        """Execute on input codes (graph-input layout). With ``trace`` also return every op's output."""
        x = np.asarray(x_codes)
        if x.dtype.kind not in "iu":
            raise InputRangeError(
                f"golden model inputs must be integer codes, got dtype {x.dtype}; "
                "use quantize_input() for real values"
            )
        x = x.astype(np.int64, copy=False)
        t = self.input_type
        if x.size and (x.min() < t.qmin or x.max() > t.qmax):
            raise InputRangeError(
                f"input codes span [{x.min()}, {x.max()}] but the input type {t.hls()} holds "
                f"[{t.qmin}, {t.qmax}]"
            )
        env: dict[str, np.ndarray] = {self.input_name: x}
        for op in self.ops:
            env[op.output] = op(*(env[i] for i in op.inputs))
        out = env[self.output_name]
        if trace:
            return out, {op.output: env[op.output] for op in self.ops}
        return out

    def predict(self, x_codes: np.ndarray, batch: int = 8192) -> np.ndarray:
        """Output codes for many vectors, in batches to bound memory."""
        outs = [self.run(x_codes[i : i + batch]) for i in range(0, len(x_codes), batch)]
        return np.concatenate(outs) if outs else np.zeros((0, *self.output_shape), np.int64)

    def run_from(self, start: int, env: dict[str, np.ndarray]) -> np.ndarray:
        """Re-execute ops[start:] given an environment holding every tensor they read.

        This is what fault campaigns use to recompute only downstream of a fault.
        """
        env = dict(env)
        for op in self.ops[start:]:
            env[op.output] = op(*(env[i] for i in op.inputs))
        return env[self.output_name]

    # ---- persistence (the golden IR that ships in a run folder: golden.npz)
    def save(self, path: str | Path) -> Path:
        """Write the golden IR (every op, its constants and every tensor type) to one ``.npz``.

        Arrays go in as arrays and everything else as one JSON header, so the
        file holds exactly the integers the oracle computes with; :meth:`load`
        reads it back without ONNX. Written atomically (temp file + rename).
        """
        import json
        import os

        path = Path(path)
        arrays: dict[str, np.ndarray] = {}

        def enc(key: str, v: Any) -> Any:
            if isinstance(v, np.ndarray):
                arrays[key] = v
                return {"__array__": key}
            if isinstance(v, FixedType):
                return {"__fixed__": [v.signed, v.width, v.frac]}
            if isinstance(v, tuple):
                return {"__tuple__": [enc(f"{key}.{i}", x) for i, x in enumerate(v)]}
            if isinstance(v, list):
                return [enc(f"{key}.{i}", x) for i, x in enumerate(v)]
            if isinstance(v, np.generic):  # a numpy scalar stays a (0-d) array: same arithmetic
                arrays[key] = np.asarray(v)
                return {"__array__": key}
            return v

        ops = []
        for i, op in enumerate(self.ops):
            d = {f.name: enc(f"op{i}.{f.name}", getattr(op, f.name)) for f in fields(op)}
            ops.append({"class": type(op).__name__, "fields": d})
        tensors = {
            name: {
                "shape": list(t.shape),
                "type": enc("", t.type),
                "scale": enc(f"tensor.{name}.scale", t.scale),
            }
            for name, t in self.tensors.items()
        }
        header = {
            "format": GOLDEN_IR_FORMAT,
            "ops": ops,
            "tensors": tensors,
            "input_name": self.input_name,
            "output_name": self.output_name,
            "input_shape": list(self.input_shape),
            "input_quant": {
                f.name: enc(f"input_quant.{f.name}", getattr(self.input_quant, f.name))
                for f in fields(self.input_quant)
            },
            "input_real_scale": self.input_real_scale,
            "source": self.source,
            "notes": list(self.notes),
        }
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> GoldenModel:
        """Read a golden IR written by :meth:`save`; a damaged or foreign file is refused."""
        import json
        import zipfile

        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            header = json.loads(arrays.pop("__header__").tobytes().decode())
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
            raise CorruptFileError(
                f"golden IR '{path}' cannot be read ({type(exc).__name__}: {exc}); "
                "re-run `edgeml export` to rewrite it"
            ) from exc
        if not isinstance(header, dict) or header.get("format") != GOLDEN_IR_FORMAT:
            raise CorruptFileError(
                f"golden IR '{path}' has format {header.get('format') if isinstance(header, dict) else None!r}; "
                f"expected {GOLDEN_IR_FORMAT!r}. Re-run `edgeml export`."
            )

        def dec(v: Any) -> Any:
            if isinstance(v, dict):
                if "__array__" in v:
                    return arrays[v["__array__"]]
                if "__fixed__" in v:
                    return FixedType(*v["__fixed__"])
                if "__tuple__" in v:
                    return tuple(dec(x) for x in v["__tuple__"])
            if isinstance(v, list):
                return [dec(x) for x in v]
            return v

        try:
            ops: list[Op] = []
            for rec in header["ops"]:
                op_cls = _OP_CLASSES[rec["class"]]
                ops.append(op_cls(**{k: dec(v) for k, v in rec["fields"].items()}))
            tensors = {
                name: TensorInfo(name, tuple(t["shape"]), dec(t["type"]), dec(t["scale"]))
                for name, t in header["tensors"].items()
            }
            return cls(
                ops=ops,
                tensors=tensors,
                input_name=header["input_name"],
                output_name=header["output_name"],
                input_shape=tuple(header["input_shape"]),
                input_quant=Requant(**{k: dec(v) for k, v in header["input_quant"].items()}),
                input_real_scale=float(header["input_real_scale"]),
                source=header.get("source", ""),
                notes=list(header.get("notes", [])),
            )
        except (KeyError, TypeError) as exc:
            raise CorruptFileError(
                f"golden IR '{path}' is incomplete ({type(exc).__name__}: {exc}); re-run `edgeml export`"
            ) from exc

    def constants(self) -> dict[str, np.ndarray]:
        """Every integer constant of the IR keyed ``<op name>.<field>`` (weights, biases, requant)."""
        out: dict[str, np.ndarray] = {}
        for op in self.ops:
            for f in fields(op):
                v = getattr(op, f.name)
                if isinstance(v, np.ndarray | np.generic):
                    out[f"{op.name}.{f.name}"] = np.asarray(v)
                elif isinstance(v, int | bool) and f.name not in ("exact_vs_qonnx",):
                    out[f"{op.name}.{f.name}"] = np.asarray(v)
        return out

    def summary(self) -> str:
        lines = [f"input  {self.input_name}: {self.input_shape} {self.input_type.hls()}"]
        for op in self.ops:
            ti = self.tensors[op.output]
            extra = ""
            if isinstance(op, Dense):
                extra = f" W{op.weight.shape}:{op.weight_type.width}b"
                if op.bias is not None and op.bias_type is not None:
                    extra += f" b:{op.bias_type.width}b"
            exact = "" if op.exact_vs_qonnx else " (fixed-point approx. of real scale)"
            lines.append(f"{op.kind:9s} {op.name:24s} -> {ti.shape} {ti.type.hls()}{extra}{exact}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- compiler

LAYOUT_OPS = ("Transpose", "Reshape", "Flatten", "Identity")

#: Inputs each supported op takes (min, max).
_ARITY: dict[str, tuple[int, int]] = {
    "Quant": (4, 4),
    "BipolarQuant": (2, 2),
    "Trunc": (5, 6),
    "MatMul": (2, 2),
    "Gemm": (2, 3),
    "Add": (2, 2),
    "Sub": (2, 2),
    "Mul": (2, 2),
    "BatchNormalization": (5, 5),
    "Conv": (2, 3),
    "Relu": (1, 1),
    "MaxPool": (1, 1),
    "Flatten": (1, 1),
    "Reshape": (2, 2),
    "Transpose": (1, 1),
    "Identity": (1, 1),
    "Softmax": (1, 1),
    "Sign": (1, 1),
    "Clip": (1, 3),
    "LeakyRelu": (1, 1),
    "Div": (2, 2),
    "Slice": (1, 5),
    "Concat": (1, 256),
    "Split": (1, 2),
    "Pad": (1, 4),
    "Squeeze": (1, 2),
    "Unsqueeze": (1, 2),
    "Resize": (1, 4),
    "Upsample": (1, 2),
    "Tile": (2, 2),
    "Expand": (2, 2),
    "DepthToSpace": (1, 1),
    "SpaceToDepth": (1, 1),
    **{f: (1, 1) for f in TABLE_FUNCS},
    "AveragePool": (1, 1),
    "GlobalAveragePool": (1, 1),
    "ReduceMean": (1, 2),
    "ReduceSum": (1, 2),
    "ConvTranspose": (2, 3),
}
#: Input positions that must be constants (quantizer parameters, BN statistics, shapes).
_PARAMS: dict[str, tuple[int, ...]] = {
    "Quant": (1, 2, 3),
    "BipolarQuant": (1,),
    "Trunc": (1, 2, 3, 4, 5),
    "BatchNormalization": (1, 2, 3, 4),
    "Reshape": (1,),
    "Slice": (1, 2, 3, 4),
    "Split": (1,),
    "Pad": (1, 2, 3),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "Tile": (1,),
    "Expand": (1,),
    "ReduceMean": (1,),
    "ReduceSum": (1,),
}

#: Largest |code| of any tensor, accumulator included: int64 arithmetic stays exact
#: below 2**62 with room for one more add or shift.
MAX_CODE = 1 << 62
#: Quantizer scales edgeml accepts; trained models use about 2**-16 .. 2**8.
SCALE_RANGE = (2.0**-64, 2.0**64)
#: Largest shift of a requantiser or of a bias alignment (bits).
MAX_SHIFT = 62
#: Largest kernel, stride, dilation or padding of a Conv / MaxPool.
MAX_WINDOW = 4096


@dataclass
class _Const:
    """A constant: real values and, if produced by a Quant, its integer codes and storage."""

    value: np.ndarray
    codes: np.ndarray | None = None
    scale: np.ndarray | None = None
    storage: FixedType | None = None
    node: str = ""


class _Compiler:
    def __init__(self, model: Any, options: GoldenOptions) -> None:
        self.options = options
        self.mw = load_model_wrapper(model)
        self.graph = self.mw.graph
        self.consts: dict[str, _Const] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.bounds: dict[str, tuple[int, int]] = {}
        self.ops: list[Op] = []
        self.notes: list[str] = []
        #: affine op output -> (its input, real a, real b), so a following constant op merges
        self.affine_real: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
        self.alias: dict[str, str] = {}
        self.input_quant: Requant | None = None
        self.input_real_scale = 1.0
        self.graph_input = ""
        self.input_name = ""
        #: elementwise-function outputs waiting for the Quant that defines their table
        self.pending_fn: dict[str, tuple[Any, int, str, str]] = {}
        #: initializers as stored (int64 shapes and INT64_MAX slice ends kept exact), for
        #: running ONNX's reference implementation
        self.const_raw: dict[str, np.ndarray] = {}

    # -- helpers
    def _node_name(self, node: Any, idx: int) -> str:
        return node.name or f"{node.op_type}_{idx}"

    def _unsupported(self, node: Any, idx: int, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"node '{self._node_name(node, idx)}' (op {node.op_type}): {why}. "
            f"edgeml's golden model supports: {', '.join(SUPPORTED_OPS)} "
            "(Quant/Trunc with zero zero-point; Conv/ConvTranspose without dilation; Pad with "
            "zeros; Resize/Upsample nearest; elementwise functions on inputs of at most "
            f"{MAX_TABLE_BITS} bits)."
        )

    def _attr(self, node: Any, name: str, default: Any = None) -> Any:
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                v = helper.get_attribute_value(a)
                return v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        return default

    def _const(self, name: str) -> _Const | None:
        return self.consts.get(name)

    def _dyn(self, name: str) -> str:
        return self.alias.get(name, name)

    def _add_tensor(self, name: str, shape: tuple[int, ...], lo: int, hi: int, scale: Any) -> None:
        if max(abs(int(lo)), abs(int(hi))) > MAX_CODE or any(int(d) < 1 for d in shape):
            why = (
                f"tensor '{name}' would have shape {shape}"
                if any(int(d) < 1 for d in shape)
                else f"tensor '{name}' would span codes [{int(lo)}, {int(hi)}], beyond the "
                f"{MAX_CODE.bit_length()}-bit range edgeml's integer model holds exactly"
            )
            if self._at is None:
                raise UnsupportedOpError(f"{why}; check the model's scales and bit widths")
            raise self._unsupported(*self._at, f"{why}; check its scales, shapes and bit widths")
        scale = np.asarray(scale, dtype=np.float64)
        if scale.size == 0 or not np.all((scale > 0) & np.isfinite(scale)):
            why = f"tensor '{name}' would have LSB weight (scale) {scale.ravel()[:4]}"
            if self._at is None:
                raise UnsupportedOpError(f"{why}; scales must be positive and finite")
            raise self._unsupported(*self._at, f"{why}; scales must be positive and finite")
        if scale.size > 1 and np.all(scale == scale.reshape(-1)[0]):
            scale = scale.reshape(-1)[:1].reshape(())
        frac = _log2_int(1.0 / float(scale.reshape(-1)[0])) if scale.size == 1 else 0
        if scale.size == 1 and not _is_pot(float(scale.reshape(-1)[0])):
            frac = 0
        self.tensors[name] = TensorInfo(name, shape, type_for_range(lo, hi, frac), scale)
        self.bounds[name] = (int(lo), int(hi))

    # -- entry
    def compile(self) -> GoldenModel:
        """Compile the graph; a malformed graph raises an :class:`EdgemlError` naming the node."""
        from edgeml.errors import EdgemlError

        self._at: tuple[Any, int] | None = None
        try:
            # A float overflow or invalid value while compiling means a constant the
            # integer model cannot hold: raise (and name the node) instead of warning
            # and casting garbage (INT64_MIN) into the codes.
            with np.errstate(over="raise", invalid="raise", divide="raise"):
                return self._compile()
        except EdgemlError:
            raise
        except (
            KeyError,
            IndexError,
            ValueError,
            TypeError,
            AttributeError,
            ArithmeticError,
        ) as exc:
            # Last resort: every check above names what is wrong; this turns a case
            # none of them foresaw (a malformed graph) into an error naming the node.
            if self._at is None:
                raise CorruptFileError(
                    f"the graph of {self._source} is malformed ({type(exc).__name__}: {exc}); "
                    "re-export the model"
                ) from exc
            node, idx = self._at
            raise self._unsupported(
                node,
                idx,
                f"cannot be compiled ({type(exc).__name__}: {exc}); the graph is malformed "
                "or uses this op in a way edgeml does not handle",
            ) from exc

    @property
    def _source(self) -> str:
        return str(getattr(self.mw, "_edgeml_source", "") or "<in-memory model>")

    def _compile(self) -> GoldenModel:
        from onnx import numpy_helper

        from edgeml.export import check_graph_tensors

        # NaN/Inf weights or scales, absurd shapes: refused here too, for graphs
        # that did not come through export.load_onnx (a ModelProto or ModelWrapper).
        check_graph_tensors(self.graph, self._source)
        for init in self.graph.initializer:
            arr = np.asarray(numpy_helper.to_array(init))
            if arr.dtype.kind not in "biuf":
                raise UnsupportedOpError(
                    f"initializer '{init.name}' of {self._source} has dtype {arr.dtype}; "
                    "edgeml needs numeric (integer or float) constants"
                )
            self.consts[init.name] = _Const(arr.astype(np.float64))
            self.const_raw[init.name] = arr
        if len(self.graph.input) != 1 or len(self.graph.output) != 1:
            ins = [i.name for i in self.graph.input if i.name not in self.consts]
            if len(ins) != 1 or len(self.graph.output) != 1:
                raise UnsupportedOpError(
                    f"edgeml designs have exactly one input and one output; got inputs {ins} "
                    f"and outputs {[o.name for o in self.graph.output]}"
                )
        gin = next(i for i in self.graph.input if i.name not in self.consts)
        self.graph_input = gin.name
        dims = [d.dim_value for d in gin.type.tensor_type.shape.dim]
        if len(dims) < 2 or any(d <= 0 for d in dims[1:]):
            raise UnsupportedOpError(
                f"graph input '{gin.name}' needs a static shape (batch, ...); got {dims}"
            )
        input_shape = tuple(int(d) for d in dims[1:])
        self.pending_layout: list[tuple[Any, int]] = []
        self.input_shape = input_shape

        for idx, node in enumerate(self.graph.node):
            self._at = (node, idx)
            self._compile_node(node, idx)
        self._at = None

        if self.input_quant is None:
            raise UnsupportedOpError(
                f"graph input '{self.graph_input}' never reaches a Quant node: edgeml needs an "
                "input quantizer to know the input precision (add a QuantIdentity / Quant on the input)"
            )
        if self._dyn(self.graph.output[0].name) in self.pending_fn:
            self._table_default(self._dyn(self.graph.output[0].name))
        out_name = self._dyn(self.graph.output[0].name)
        if out_name not in self.tensors:
            raise UnsupportedOpError(
                f"graph output '{self.graph.output[0].name}' is not computed by supported ops"
            )
        return GoldenModel(
            ops=self.ops,
            tensors=self.tensors,
            input_name=self.input_name,
            output_name=out_name,
            input_shape=self.input_shape,
            input_quant=self.input_quant,
            input_real_scale=self.input_real_scale,
            source=str(getattr(self.mw, "_edgeml_source", "")),
            notes=self.notes,
        )

    # -- per node
    def _compile_node(self, node: Any, idx: int) -> None:
        op = node.op_type
        name = self._node_name(node, idx)
        ins = list(node.input)
        if op not in SUPPORTED_OPS:
            raise self._unsupported(node, idx, "this op is not supported")
        lo, hi = _ARITY[op]
        if not lo <= len(ins) <= hi or len(node.output) < 1 or not node.output[0]:
            raise self._unsupported(
                node,
                idx,
                f"{len(ins)} input(s) and outputs {list(node.output)}; {op} takes "
                f"{lo}{f'..{hi}' if hi != lo else ''} inputs and one named output",
            )
        out = node.output[0]
        params = _PARAMS.get(op, ())
        dynamic = [
            ins[i]
            for i in range(1, len(ins))
            if i in params and ins[i] and ins[i] not in self.consts
        ]
        if dynamic:
            raise self._unsupported(
                node, idx, f"its scale / zero point / bit width inputs {dynamic} are not constants"
            )
        known = {self.graph_input, *self.consts, *self.tensors, *self.alias, *self.pending_fn}
        missing = [i for i in ins if i and i not in known]
        if missing:
            raise self._unsupported(
                node, idx, f"input(s) {missing} are not computed by any earlier node"
            )

        # constant folding: all inputs constant
        if all((i == "" or i in self.consts) for i in ins):
            self._fold_constant(node, idx)
            return

        # before the input quantizer: only layout ops on the raw graph input
        if self.input_quant is None:
            if op in LAYOUT_OPS:
                self.pending_layout.append((node, idx))
                self.alias[out] = self.graph_input
                return
            if op != "Quant":
                raise self._unsupported(
                    node,
                    idx,
                    "the graph input must be quantized (Quant) before any arithmetic; "
                    "edgeml cannot define the input precision otherwise",
                )
            self._compile_input_quant(node, idx)
            return

        # an elementwise function's table needs its output precision: the Quant after it
        for i in ins:
            if self._dyn(i) in self.pending_fn and not (op == "Quant" and i == ins[0]):
                self._table_default(self._dyn(i))
        if op in GATHER_OPS:
            self._op_gather(node, idx, name, ins, out)
            return
        if op in TABLE_FUNCS:
            self._op_table_fn(node, idx, name, ins, out)
            return
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise self._unsupported(node, idx, "this op is not supported here")
        handler(node, idx, name, ins, out)

    def _fold_constant(self, node: Any, idx: int) -> None:
        op = node.op_type
        vals = [self.consts[i].value if i else None for i in node.input]
        out = node.output[0]
        if op == "Quant":
            x, scale, zp, bw = vals[:4]
            self.consts[out] = self._quant_const(node, idx, x, scale, zp, bw)
            return
        if op == "BipolarQuant":
            x, scale = vals[:2]
            codes = np.where(x >= 0, 1, -1).astype(np.int64)
            s = self._bipolar_scale(node, idx, scale)
            self.consts[out] = _Const(codes * s, codes, s, FixedType(True, 2, 0), node.name)
            return
        if op in ("Identity",):
            self.consts[out] = self.consts[node.input[0]]
            return
        if op == "Transpose":
            perm = self._attr(node, "perm")
            src = self.consts[node.input[0]]
            scale = src.scale
            if scale is not None and scale.size > 1:
                # broadcastable per-channel scales transpose with their tensor
                scale = np.transpose(
                    scale.reshape((1,) * (src.value.ndim - scale.ndim) + scale.shape), perm
                )
            self.consts[out] = _Const(
                np.transpose(src.value, perm),
                None if src.codes is None else np.transpose(src.codes, perm),
                scale,
                src.storage,
                src.node,
            )
            return
        if op in ("Reshape", "Flatten"):
            src = self.consts[node.input[0]]
            if op == "Reshape":
                shape = [int(s) for s in vals[1]]
            else:
                axis = self._attr(node, "axis", 1)
                shape = [int(np.prod(src.value.shape[:axis])), -1]
            keep_scale = src.scale is not None and src.scale.size == 1
            self.consts[out] = _Const(
                src.value.reshape(shape),
                None if src.codes is None else src.codes.reshape(shape),
                src.scale if keep_scale else None,
                src.storage if keep_scale else None,
                src.node,
            )
            return
        if op in ("Mul", "Add", "Sub", "Div"):
            a, b = vals[:2]
            fn = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}[op]
            self.consts[out] = _Const(fn(a, b))
            return
        raise self._unsupported(node, idx, "constant folding of this op is not supported")

    def _quant_params(
        self, node: Any, idx: int, scale: Any, zp: Any, bw: Any
    ) -> tuple[np.ndarray, int, bool, bool, str]:
        if np.any(np.asarray(zp) != 0):
            raise self._unsupported(
                node, idx, f"non-zero zero point {np.asarray(zp).ravel()[:4]} (asymmetric quant)"
            )
        b = np.asarray(bw).reshape(-1)
        if b.size != 1 or b[0] != int(b[0]) or b[0] < 1 or b[0] > 32:
            raise self._unsupported(node, idx, f"bit width must be one integer in 1..32, got {b}")
        signed = bool(self._attr(node, "signed", 1))
        narrow = bool(self._attr(node, "narrow", 0))
        mode = str(self._attr(node, "rounding_mode", "ROUND")).upper()
        mode = "HALF_EVEN" if mode == "ROUND" else mode
        if mode not in ROUNDING_MODES:
            raise self._unsupported(
                node, idx, f"rounding_mode {mode!r}; allowed: ROUND, {', '.join(ROUNDING_MODES)}"
            )
        s = np.asarray(scale, dtype=np.float64)
        if s.size == 0 or np.any(s <= 0) or not np.all(np.isfinite(s)):
            raise self._unsupported(
                node, idx, f"scale must be positive and finite, got {s.ravel()[:4]}"
            )
        if np.any(s < SCALE_RANGE[0]) or np.any(s > SCALE_RANGE[1]):
            raise self._unsupported(
                node,
                idx,
                f"scale {s.ravel()[:4]} is outside [2**-64, 2**64]; no trained quantizer has "
                "such a scale: the model is corrupt or was exported wrongly",
            )
        return s, int(b[0]), signed, narrow, mode

    @staticmethod
    def _int_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
        if signed:
            lo = -(1 << (bits - 1)) + (1 if narrow else 0)
            return lo, (1 << (bits - 1)) - 1
        return 0, (1 << bits) - 1 - (1 if narrow else 0)

    def _quant_const(self, node: Any, idx: int, x: Any, scale: Any, zp: Any, bw: Any) -> _Const:
        s, bits, signed, narrow, mode = self._quant_params(node, idx, scale, zp, bw)
        lo, hi = self._int_range(bits, signed, narrow)
        y = np.clip(x / s, lo, hi)
        rnd = FLOAT_ROUNDING[mode]
        codes = rnd(y).astype(np.int64)
        storage = FixedType(signed, bits, 0)
        return _Const(codes * s, codes, s, storage, self._node_name(node, idx))

    def _compile_input_quant(self, node: Any, idx: int) -> None:
        if self._dyn(node.input[0]) != self.graph_input:
            raise self._unsupported(node, idx, "expected the graph input's quantizer")
        scale, zp, bw = (self.consts[i].value for i in node.input[1:4])
        s, bits, signed, narrow, mode = self._quant_params(node, idx, scale, zp, bw)
        if s.size != 1:
            raise self._unsupported(node, idx, "per-channel input quantizer scales")
        lo, hi = self._int_range(bits, signed, narrow)
        sv = float(s.reshape(-1)[0])
        self.input_real_scale = sv
        self.input_quant = Requant(
            self._node_name(node, idx),
            [self.graph_input],
            node.output[0],
            rounding=mode,
            lo=lo,
            hi=hi,
        )
        # The golden model takes codes in the graph-input layout; layout ops that
        # preceded the quantizer are replayed as integer ops.
        self.input_name = self.graph_input
        scale_arr = np.asarray(sv)
        self._add_tensor(self.graph_input, self.input_shape, lo, hi, scale_arr)
        self.tensors[self.graph_input].type = FixedType(
            signed, bits, self.tensors[self.graph_input].type.frac
        )
        cur = self.graph_input
        shape = self.input_shape
        for lnode, lidx in self.pending_layout:
            nxt = lnode.output[0]
            self.alias.pop(nxt, None)
            shape = self._layout(lnode, lidx, cur, nxt, shape)
            cur = nxt
        self.alias[node.output[0]] = cur

    def _layout(
        self, node: Any, idx: int, src: str, dst: str, shape: tuple[int, ...]
    ) -> tuple[int, ...]:
        op = node.op_type
        name = self._node_name(node, idx)
        lo, hi = self.bounds[src]
        scale = self.tensors[src].scale
        if op == "Identity":
            self.alias[dst] = src
            return shape
        if op == "Transpose":
            # ONNX's default perm reverses the axes (the batch axis included)
            perm_attr = self._attr(node, "perm")
            perm = tuple(
                int(p) for p in (perm_attr if perm_attr is not None else range(len(shape), -1, -1))
            )
            if sorted(perm) != list(range(len(shape) + 1)):
                raise self._unsupported(
                    node, idx, f"perm {perm} for a rank-{len(shape) + 1} tensor"
                )
            if perm[0] != 0:
                raise self._unsupported(node, idx, "transposing the batch axis")
            new_shape = tuple(shape[p - 1] for p in perm[1:])
            if scale.size > 1:
                raise self._unsupported(node, idx, "transpose of a per-channel-scaled tensor")
            self.ops.append(Transpose(name, [src], dst, perm=perm))
        else:
            if op == "Flatten":
                axis = int(self._attr(node, "axis", 1))
                if axis != 1:
                    raise self._unsupported(node, idx, f"Flatten axis={axis} (only axis=1)")
                new_shape = (int(np.prod(shape)),)
            else:
                target = [int(v) for v in self.consts[node.input[1]].value.reshape(-1)]
                rest = target[1:]
                size = int(np.prod(shape))
                # ONNX: 0 copies the input's dimension at that index, one -1 is inferred
                if (
                    not target
                    or rest.count(-1) > 1
                    or any(d < -1 or (d == 0 and i >= len(shape)) for i, d in enumerate(rest))
                ):
                    raise self._unsupported(node, idx, f"reshape target {target} for {shape}")
                rest = [shape[i] if d == 0 else d for i, d in enumerate(rest)]
                if -1 in rest:
                    known = int(np.prod([d for d in rest if d != -1]))
                    if known <= 0 or size % known:
                        raise self._unsupported(node, idx, f"cannot reshape {shape} to {target}")
                    rest[rest.index(-1)] = size // known
                new_shape = tuple(rest)
                if int(np.prod(new_shape)) != int(np.prod(shape)):
                    raise self._unsupported(node, idx, f"cannot reshape {shape} to {target}")
            if scale.size > 1 and new_shape[-1] != shape[-1]:
                raise self._unsupported(node, idx, "reshape of a per-channel-scaled tensor")
            self.ops.append(Reshape(name, [src], dst, shape=new_shape))
        self._add_tensor(dst, new_shape, lo, hi, scale)
        return new_shape

    # handlers for dynamic ops -------------------------------------------------
    def _op_Identity(self, node, idx, name, ins, out):
        self.alias[out] = self._dyn(ins[0])

    def _op_Transpose(self, node, idx, name, ins, out):
        src = self._dyn(ins[0])
        self._layout(node, idx, src, out, self.tensors[src].shape)

    _op_Reshape = _op_Transpose
    _op_Flatten = _op_Transpose

    def _op_Relu(self, node, idx, name, ins, out):
        src = self._dyn(ins[0])
        ti = self.tensors[src]
        if np.any(ti.scale < 0):
            raise self._unsupported(node, idx, "Relu on a negatively scaled tensor")
        lo, hi = self.bounds[src]
        self.ops.append(Relu(name, [src], out))
        self._add_tensor(out, ti.shape, max(lo, 0), max(hi, 0), ti.scale)

    def _op_MaxPool(self, node, idx, name, ins, out):
        src = self._dyn(ins[0])
        ti = self.tensors[src]
        channels_last = "channels_last" in (node.domain or "")
        k = tuple(int(v) for v in self._attr(node, "kernel_shape"))
        st = tuple(int(v) for v in (self._attr(node, "strides") or k))
        pads = tuple(int(v) for v in (self._attr(node, "pads") or [0, 0, 0, 0]))
        dil = tuple(int(v) for v in (self._attr(node, "dilations") or [1, 1]))
        if len(k) != 2 or any(d != 1 for d in dil) or int(self._attr(node, "ceil_mode", 0)):
            raise self._unsupported(node, idx, "only 2-D MaxPool without dilation or ceil_mode")
        if not channels_last:
            raise self._unsupported(
                node, idx, "NCHW MaxPool: run qonnx ConvertToChannelsLastAndClean first"
            )
        if len(ti.shape) != 3:
            raise self._unsupported(node, idx, f"MaxPool of a {ti.shape} tensor (needs H, W, C)")
        h, w, c = ti.shape
        pads4, oh, ow = self._window(node, idx, k, st, pads, h, w)
        self.ops.append(MaxPool(name, [src], out, kernel=k, strides=st, pads=pads4))  # type: ignore[arg-type]
        lo, hi = self.bounds[src]
        self._add_tensor(out, (oh, ow, c), lo, hi, ti.scale)

    def _window(
        self,
        node: Any,
        idx: int,
        k: tuple[int, ...],
        st: tuple[int, ...],
        pads: tuple[int, ...],
        h: int,
        w: int,
    ) -> tuple[tuple[int, int, int, int], int, int]:
        """Check a 2-D window's kernel, strides and pads; return pads and output size."""
        if len(k) != 2 or len(st) != 2 or len(pads) != 4:
            raise self._unsupported(
                node, idx, f"kernel {k}, strides {st}, pads {pads}: needs 2, 2 and 4 values"
            )
        if not all(1 <= v <= MAX_WINDOW for v in (*k, *st)) or not all(
            0 <= p <= MAX_WINDOW for p in pads
        ):
            raise self._unsupported(
                node,
                idx,
                f"kernel {k}, strides {st}, pads {pads}: kernels and strides must be in "
                f"1..{MAX_WINDOW}, pads in 0..{MAX_WINDOW}",
            )
        oh = (h + pads[0] + pads[2] - k[0]) // st[0] + 1
        ow = (w + pads[1] + pads[3] - k[1]) // st[1] + 1
        if oh < 1 or ow < 1:
            raise self._unsupported(
                node, idx, f"kernel {k} with pads {pads} does not fit the {h}x{w} input"
            )
        return (pads[0], pads[1], pads[2], pads[3]), oh, ow

    def _op_Quant(self, node, idx, name, ins, out):
        src = self._dyn(ins[0])
        if src in self.pending_fn:
            self._table_quant(node, idx, src, out, ins)
            return
        scale, zp, bw = (self.consts[i].value for i in ins[1:4])
        s, bits, signed, narrow, mode = self._quant_params(node, idx, scale, zp, bw)
        lo, hi = self._int_range(bits, signed, narrow)
        if bits == 1 and signed:
            raise self._unsupported(node, idx, "1-bit signed Quant (use BipolarQuant)")
        self._requant(
            node, idx, name, src, out, lo, hi, mode, ratio=self.tensors[src].scale / s, s_out=s
        )

    def _op_Trunc(self, node, idx, name, ins, out):
        """QONNX Trunc: drop low bits of an integer tensor (v1: 4 params, v2: 5 params)."""
        src = self._dyn(ins[0])
        ti = self.tensors[src]
        c = [np.asarray(self.consts[i].value, np.float64) for i in ins[1:]]
        if len(c) not in (4, 5):
            raise self._unsupported(
                node, idx, f"{len(ins)} inputs; Trunc takes 5 (v1) or 6 (v2) constant inputs"
            )
        out_sc = c[3] if len(c) == 5 else c[0]
        for label, v in zip(("scale", "output scale"), (c[0], out_sc), strict=True):
            if v.size == 0 or np.any(v < SCALE_RANGE[0]) or np.any(v > SCALE_RANGE[1]):
                raise self._unsupported(
                    node, idx, f"{label} {v.ravel()[:4]} must be positive, in [2**-64, 2**64]"
                )
        for label, v in zip(("input bit width", "output bit width"), (c[2], c[-1]), strict=True):
            b = v.reshape(-1)
            if b.size != 1 or b[0] != int(b[0]) or not 1 <= b[0] <= 32:
                raise self._unsupported(
                    node, idx, f"{label} must be one integer in 1..32, got {b[:4]}"
                )
        if len(c) == 5:  # v2: scale, zeropt, in_bw, out_scale, out_bw
            scale, zp, _in_bw, out_scale, out_bw = c
            # QONNX rounds the code ratio to a power of two (Brevitas TruncIntQuant)
            ratio = 2.0 ** -np.round(np.log2(out_scale / scale))
            s_out = out_scale
        else:  # v1: scale, zeropt, in_bw, out_bw; the output keeps the input scale
            scale, zp, in_bw, out_bw = c
            ratio = 2.0 ** -(float(in_bw) - float(out_bw))
            s_out = scale
        if np.any(zp != 0):
            raise self._unsupported(node, idx, "non-zero zero point")
        if not np.allclose(scale, ti.scale):
            raise self._unsupported(
                node, idx, "Trunc input scale differs from its producer's scale"
            )
        signed = bool(self._attr(node, "signed", 1))
        narrow = bool(self._attr(node, "narrow", 0))
        mode = str(self._attr(node, "rounding_mode", "FLOOR")).upper()
        mode = "HALF_EVEN" if mode == "ROUND" else mode
        if mode not in ROUNDING_MODES:
            raise self._unsupported(
                node, idx, f"rounding_mode {mode!r}; allowed: ROUND, {', '.join(ROUNDING_MODES)}"
            )
        if len(c) == 5:
            lo, hi = self._int_range(int(np.asarray(out_bw).reshape(-1)[0]), signed, narrow)
        else:  # v1 does not clamp
            lo, hi = -(1 << 62), (1 << 62)
        self._requant(node, idx, name, src, out, lo, hi, mode, ratio=np.asarray(ratio), s_out=s_out)

    def _requant(
        self,
        node,
        idx,
        name,
        src,
        out,
        lo: int,
        hi: int,
        mode: str,
        *,
        ratio: np.ndarray,
        s_out: np.ndarray,
    ) -> None:
        """Codes of ``src`` times the real ``ratio``, rounded and clamped; output LSB ``s_out``."""
        ti = self.tensors[src]
        ratio_flat = np.atleast_1d(ratio).astype(np.float64)
        if np.all([_is_pot(float(r)) for r in ratio_flat]) and np.all(ratio_flat == ratio_flat[0]):
            e = _log2_int(float(ratio_flat[0]))  # y = x * 2**e
            mult = np.array(1, np.int64)
            shift = -e
            exact = True
        else:
            # Hardware: fixed-point multiplier with mult_frac_bits fractional bits
            # beyond the largest power of two in the ratio, then a rounding shift.
            k = self.options.mult_frac_bits - _log2_int(float(np.max(ratio_flat)))
            mult = np.rint(np.asarray(ratio) * 2.0**k).astype(np.int64)
            shift = k
            exact = bool(np.all(mult * 2.0**-k == ratio))
            if not exact:
                self.notes.append(
                    f"{name}: requantisation factor {ratio_flat[:4]} approximated as mult/2**{k} "
                    f"(max rel. err {float(np.max(np.abs(mult * 2.0**-k - ratio) / ratio)):.2e})"
                )
        mult = mult.reshape(-1) if mult.size > 1 else mult.reshape(())
        plo, phi = self.bounds[src]
        # the product codes x mult (or x << -shift) must stay exact in int64
        widest = max(abs(plo), abs(phi)) * int(np.max(np.abs(mult))) << max(-shift, 0)
        if abs(shift) > MAX_SHIFT or widest > MAX_CODE:
            raise self._unsupported(
                node,
                idx,
                f"requantisation factor {ratio_flat[:4]} from scale {np.ravel(ti.scale)[:4]} "
                f"to {np.ravel(s_out)[:4]} needs a {abs(shift)}-bit shift and "
                f"{widest.bit_length()}-bit products; edgeml allows {MAX_SHIFT}-bit shifts and "
                f"{MAX_CODE.bit_length()}-bit products (check the scales)",
            )
        cand = [round_shift(np.asarray(v * mult), shift, mode) for v in (plo, phi)]
        ylo = int(np.clip(min(np.min(c) for c in cand), lo, hi))
        yhi = int(np.clip(max(np.max(c) for c in cand), lo, hi))
        if lo < -(1 << 61):  # unclamped (Trunc v1): the clamp is a no-op at the value range
            lo, hi = ylo, yhi
        op = Requant(
            name,
            [src],
            out,
            mult=mult,
            shift=shift,
            rounding=mode,
            lo=lo,
            hi=hi,
            exact_vs_qonnx=exact,
        )
        self.ops.append(op)
        s_out = np.asarray(s_out, np.float64)
        if s_out.size > 1:
            raise self._unsupported(node, idx, "per-channel activation quantizer scales")
        self._add_tensor(out, ti.shape, ylo, yhi, s_out)

    def _bipolar_scale(self, node: Any, idx: int, scale: Any) -> np.ndarray:
        s = np.asarray(scale, np.float64)
        if s.size == 0 or np.any(s < SCALE_RANGE[0]) or np.any(s > SCALE_RANGE[1]):
            raise self._unsupported(
                node, idx, f"scale {s.ravel()[:4]} must be positive, in [2**-64, 2**64]"
            )
        return s

    def _op_BipolarQuant(self, node, idx, name, ins, out):
        src = self._dyn(ins[0])
        s = self._bipolar_scale(node, idx, self.consts[ins[1]].value)
        if s.size > 1:
            raise self._unsupported(node, idx, "per-channel BipolarQuant scale")
        self.ops.append(Bipolar(name, [src], out))
        self._add_tensor(out, self.tensors[src].shape, -1, 1, s)

    def _weight(self, node: Any, idx: int, cname: str) -> tuple[np.ndarray, FixedType, np.ndarray]:
        """Integer codes, storage type and per-output-channel real scale of a weight constant."""
        c = self.consts[cname]
        if c.codes is None or c.scale is None or c.storage is None:
            raise self._unsupported(
                node,
                idx,
                f"weight '{cname}' is a float constant; edgeml needs quantized weights "
                "(a Quant/BipolarQuant node on the initializer)",
            )
        return c.codes, c.storage, c.scale

    def _dense_common(
        self,
        node,
        idx,
        name,
        src,
        out,
        codes,
        storage,
        wscale,
        out_shape,
        make,
    ) -> None:
        ti = self.tensors[src]
        if ti.scale.size > 1:
            raise self._unsupported(node, idx, "MatMul/Conv on a per-channel-scaled input")
        cout = codes.shape[-1]
        ws = (
            np.broadcast_to(np.asarray(wscale, np.float64).reshape(-1), (cout,))
            if np.size(wscale) > 1
            else np.full(cout, float(np.asarray(wscale).reshape(-1)[0]))
        )
        lshift = np.zeros(cout, np.int64)
        if all(_is_pot(float(v)) for v in ws):
            exps = np.array([_log2_int(float(v)) for v in ws])
            lshift = exps - exps.min()  # align to the finest channel scale
            out_scale = np.asarray(float(ti.scale) * 2.0 ** float(exps.min()))
            wtype = FixedType(storage.signed, storage.width, int(-exps.min()))
        else:
            out_scale = float(ti.scale) * ws
            wtype = storage
        lshift_arr = lshift if np.any(lshift) else np.array(0, np.int64)
        op = make(lshift_arr, wtype)
        # interval analysis on codes; first in float64, which cannot wrap around
        xlo, xhi = self.bounds[src]
        wf = np.abs(codes.astype(np.float64).reshape(-1, cout)) * np.exp2(lshift.astype(float))
        widest = float(wf.sum(0).max(initial=0.0)) * max(abs(xlo), abs(xhi))
        if int(np.max(lshift, initial=0)) > MAX_SHIFT or widest > MAX_CODE:
            raise self._unsupported(
                node,
                idx,
                f"its accumulator would need about {math.log2(max(widest, 1.0)):.0f} bits "
                f"(weight scales {ws[:4]}, channel shifts up to {int(np.max(lshift))}); edgeml's "
                f"integer model holds {MAX_CODE.bit_length()} (check the weight scales)",
            )
        w2 = (codes << lshift).reshape(-1, cout)
        lo_c = np.minimum(w2 * xlo, w2 * xhi).sum(0)
        hi_c = np.maximum(w2 * xlo, w2 * xhi).sum(0)
        self.ops.append(op)
        self._add_tensor(out, out_shape, int(lo_c.min()), int(hi_c.max()), out_scale)

    def _op_MatMul(self, node, idx, name, ins, out):
        a, b = ins[0], ins[1]
        if a in self.consts and b not in self.consts:
            raise self._unsupported(
                node, idx, "constant @ activation (weights must be the 2nd input)"
            )
        if b not in self.consts:
            self._matmul_tensors(node, idx, name, a, b, out)
            return
        src = self._dyn(a)
        codes, storage, wscale = self._weight(node, idx, b)
        in_shape = self.tensors[src].shape
        if codes.ndim != 2 or in_shape[-1] != codes.shape[0]:
            raise self._unsupported(
                node,
                idx,
                f"MatMul of {in_shape} by {codes.shape} (weights must be 2-D; a (tokens, "
                "features) input is multiplied per token)",
            )
        wscale = np.asarray(wscale).reshape(-1)
        self._dense_common(
            node,
            idx,
            name,
            src,
            out,
            codes,
            storage,
            wscale,
            (*in_shape[:-1], codes.shape[1]),
            lambda ls, wt: Dense(name, [src], out, weight=codes, weight_type=wt, weight_lshift=ls),
        )

    def _op_Gemm(self, node, idx, name, ins, out):
        """``alpha * A @ op(B) + beta * C`` with constant B, C; alpha/beta fold into their scales."""
        if self._attr(node, "transA", 0):
            raise self._unsupported(
                node,
                idx,
                "Gemm with transA=1 (the activation's batch axis would be its 2nd axis; "
                "edgeml designs take (batch, features) inputs)",
            )
        alpha = float(self._attr(node, "alpha", 1.0))
        beta = float(self._attr(node, "beta", 1.0))
        if not (math.isfinite(alpha) and math.isfinite(beta)) or alpha == 0.0:
            raise self._unsupported(node, idx, f"Gemm with alpha={alpha}, beta={beta}")
        if ins[1] not in self.consts:
            raise self._unsupported(node, idx, "Gemm with a non-constant B (weights)")
        src = self._dyn(ins[0])
        codes, storage, wscale = self._weight(node, idx, ins[1])
        ws = np.asarray(wscale)
        if self._attr(node, "transB", 0):
            codes = codes.T
            ws = ws.T if ws.ndim == 2 else ws
        if alpha != 1.0:  # the weights' real value is codes * scale * alpha
            if alpha < 0:
                codes = -codes
            ws = ws * abs(alpha)
            if not _is_pot(abs(alpha)):
                self.notes.append(f"{name}: Gemm alpha={alpha} folded into the weight scale")
        has_c = len(ins) > 2 and bool(ins[2]) and beta != 0.0
        tmp = out + "__mm" if has_c else out
        self._dense_common(
            node,
            idx,
            name,
            src,
            tmp,
            codes,
            storage,
            ws.reshape(-1),
            (codes.shape[1],),
            lambda ls, wt: Dense(name, [src], tmp, weight=codes, weight_type=wt, weight_lshift=ls),
        )
        if has_c:
            cname = ins[2]
            if beta != 1.0:
                c = self.consts[cname]
                cname = cname + "__beta"
                if c.codes is not None and c.scale is not None and beta > 0:
                    self.consts[cname] = _Const(
                        c.value * beta, c.codes, c.scale * beta, c.storage, c.node
                    )
                elif c.codes is not None and c.scale is not None:
                    self.consts[cname] = _Const(
                        c.value * beta, -c.codes, c.scale * -beta, c.storage, c.node
                    )
                else:
                    self.consts[cname] = _Const(c.value * beta)
            self._add_const(node, idx, name + "_bias", tmp, cname, out)

    def _op_Conv(self, node, idx, name, ins, out):
        src = self._dyn(ins[0])
        ti = self.tensors[src]
        channels_last = "channels_last" in (node.domain or "")
        if not channels_last:
            raise self._unsupported(
                node, idx, "NCHW Conv: run qonnx ConvertToChannelsLastAndClean first"
            )
        group = int(self._attr(node, "group", 1))
        dil = tuple(int(v) for v in (self._attr(node, "dilations") or [1, 1]))
        if any(d != 1 for d in dil):
            raise self._unsupported(node, idx, f"Conv with dilations={dil}")
        codes, storage, wscale = self._weight(node, idx, ins[1])
        st = tuple(int(v) for v in (self._attr(node, "strides") or [1] * (codes.ndim - 2)))
        pads = tuple(int(v) for v in (self._attr(node, "pads") or [0] * 2 * (codes.ndim - 2)))
        if str(self._attr(node, "auto_pad", "NOTSET")) not in ("NOTSET", ""):
            raise self._unsupported(node, idx, "auto_pad (use explicit pads)")
        one_d = codes.ndim == 3
        if one_d:
            # Conv1d on (L, C): a height-1 2-D conv on (1, L, C), exactly
            if len(ti.shape) != 2 or len(st) != 1 or len(pads) != 2:
                raise self._unsupported(node, idx, f"1-D Conv of a {ti.shape} tensor")
            codes = codes[:, None, :, :]  # (O, k, I) -> (O, 1, k, I)
            st, pads = (1, st[0]), (0, pads[0], 0, pads[1])
            src2 = f"{src}__h1"
            if src2 not in self.tensors:
                self.ops.append(Reshape(f"{name}_h1", [src], src2, shape=(1, *ti.shape)))
                self._add_tensor(src2, (1, *ti.shape), *self.bounds[src], ti.scale)
            src, ti = src2, self.tensors[src2]
        elif codes.ndim != 4:
            raise self._unsupported(node, idx, f"{codes.ndim - 2}-D Conv (1-D and 2-D only)")
        if group != 1:
            codes = self._expand_groups(node, idx, codes, group)
            self.notes.append(
                f"{name}: grouped Conv (group={group}) as a full Conv with zero weights between "
                "groups"
            )
        w = np.transpose(codes, (1, 2, 3, 0))  # OHWI (qonnx's channels-last) -> HWIO
        kh, kw = w.shape[:2]
        if len(ti.shape) != 3:
            raise self._unsupported(node, idx, f"Conv of a {ti.shape} tensor (needs H, W, C)")
        h, wd, c = ti.shape
        if c != w.shape[2]:
            raise self._unsupported(
                node, idx, f"input channels {c} != weight channels {w.shape[2]}"
            )
        pads4, oh, ow = self._window(node, idx, (kh, kw), st, pads, h, wd)
        ws = np.asarray(wscale).reshape(-1)
        final = out
        if one_d:
            out = f"{out}__h1"
        tmp = out + "__conv" if len(ins) > 2 and ins[2] else out
        self._dense_common(
            node,
            idx,
            name,
            src,
            tmp,
            w,
            storage,
            ws,
            (oh, ow, w.shape[3]),
            lambda ls, wt: Conv(
                name, [src], tmp, weight=w, weight_type=wt, weight_lshift=ls, strides=st, pads=pads4
            ),  # type: ignore[arg-type]
        )
        if len(ins) > 2 and ins[2]:
            self._add_const(node, idx, name + "_bias", tmp, ins[2], out)
        if one_d:
            t = self.tensors[out]
            self.ops.append(Reshape(f"{name}_1d", [out], final, shape=t.shape[1:]))
            self._add_tensor(final, t.shape[1:], *self.bounds[out], t.scale)

    def _expand_groups(self, node: Any, idx: int, codes: np.ndarray, group: int) -> np.ndarray:
        """(O, kh, kw, I/g) grouped weights -> (O, kh, kw, I), zero between groups."""
        o, ig = codes.shape[0], codes.shape[-1]
        if o % group:
            raise self._unsupported(node, idx, f"{o} output channels in {group} groups")
        og = o // group
        full = np.zeros((*codes.shape[:-1], ig * group), codes.dtype)
        for g in range(group):
            full[g * og : (g + 1) * og, ..., g * ig : (g + 1) * ig] = codes[g * og : (g + 1) * og]
        return full

    def _op_ConvTranspose(self, node, idx, name, ins, out):
        """A strided ConvTranspose as its exact rewrite: zero insertion + padding (one Gather,
        from NCHW to NHWC) then a stride-1 Conv with the flipped, transposed kernel."""
        src = self._dyn(ins[0])
        ti = self.tensors[src]
        codes, storage, wscale = self._weight(node, idx, ins[1])
        group = int(self._attr(node, "group", 1))
        dil = tuple(int(v) for v in (self._attr(node, "dilations") or [1, 1]))
        if codes.ndim != 4 or group != 1 or any(d != 1 for d in dil) or len(ti.shape) != 3:
            raise self._unsupported(
                node, idx, "only 2-D ConvTranspose with group=1, no dilation, on (C, H, W)"
            )
        if str(self._attr(node, "auto_pad", "NOTSET")) not in ("NOTSET", "") or self._attr(
            node, "output_shape"
        ):
            raise self._unsupported(node, idx, "auto_pad / output_shape (use explicit pads)")
        c, h, w = ti.shape
        if codes.shape[0] != c:
            raise self._unsupported(node, idx, f"weight {codes.shape} for {c} input channels")
        kh, kw = codes.shape[2:]
        st = tuple(int(v) for v in (self._attr(node, "strides") or [1, 1]))
        pads = tuple(int(v) for v in (self._attr(node, "pads") or [0, 0, 0, 0]))
        opad = tuple(int(v) for v in (self._attr(node, "output_padding") or [0, 0]))
        if pads[0] > kh - 1 or pads[2] > kh - 1 or pads[1] > kw - 1 or pads[3] > kw - 1:
            raise self._unsupported(node, idx, f"pads {pads} larger than kernel - 1")
        top, left = kh - 1 - pads[0], kw - 1 - pads[1]
        hz = (h - 1) * st[0] + 1 + top + kh - 1 - pads[2] + opad[0]
        wz = (w - 1) * st[1] + 1 + left + kw - 1 - pads[3] + opad[1]
        index = np.full((hz, wz, c), -1, np.int64)
        pos = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0)
        index[
            top : top + (h - 1) * st[0] + 1 : st[0], left : left + (w - 1) * st[1] + 1 : st[1]
        ] = pos
        zin = f"{out}__zeros"
        self.ops.append(
            Gather(f"{name}_zeros", [src], zin, index=index.reshape(-1), shape=(hz, wz, c))
        )
        lo, hi = self.bounds[src]
        self._add_tensor(zin, (hz, wz, c), min(lo, 0), max(hi, 0), ti.scale)
        wconv = np.ascontiguousarray(codes[:, :, ::-1, ::-1].transpose(2, 3, 0, 1))  # HWIO
        oh, ow = hz - kh + 1, wz - kw + 1
        ws = np.asarray(wscale).reshape(-1)
        if ws.size > 1:  # per-output-channel scales sit on axis 1 of a ConvTranspose weight
            ws = np.asarray(wscale).reshape(codes.shape[0], codes.shape[1], -1)[0, :, 0]
        conv_out = f"{out}__nhwc"
        tmp = conv_out + "__conv" if len(ins) > 2 and ins[2] else conv_out
        self._dense_common(
            node,
            idx,
            name,
            zin,
            tmp,
            wconv,
            storage,
            ws,
            (oh, ow, wconv.shape[3]),
            lambda ls, wt: Conv(
                name, [zin], tmp, weight=wconv, weight_type=wt, weight_lshift=ls, strides=(1, 1)
            ),
        )
        if len(ins) > 2 and ins[2]:
            self._add_const(node, idx, name + "_bias", tmp, ins[2], conv_out)
        t = self.tensors[conv_out]
        self.ops.append(Transpose(f"{name}_nchw", [conv_out], out, perm=(0, 3, 1, 2)))
        self._add_tensor(out, (t.shape[2], oh, ow), *self.bounds[conv_out], t.scale)

    def _op_Add(self, node, idx, name, ins, out):
        a, b = ins
        if a in self.consts and b not in self.consts:
            a, b = b, a
        if b in self.consts:
            self._add_const(node, idx, name, self._dyn(a), b, out)
            return
        self._add_tensors(node, idx, name, a, b, out, subtract=False)

    def _add_tensors(self, node, idx, name, a: str, b: str, out: str, *, subtract: bool) -> None:
        """``a + b`` or ``a - b`` of two activations, binary points aligned (broadcasts made explicit)."""
        sa, sb, shape = self._two_dynamic(node, idx, a, b)
        ta, tb = self.tensors[sa], self.tensors[sb]
        if np.array_equal(ta.scale, tb.scale):
            fa = fb = f = 0
            scale = ta.scale
        elif ta.pot and tb.pot:
            fa, fb = ta.type.frac, tb.type.frac
            f = max(fa, fb)
            scale = np.asarray(2.0**-f)
        else:
            raise self._unsupported(
                node,
                idx,
                f"{'subtracting' if subtract else 'adding'} two tensors with different non "
                f"power-of-two scales {float(ta.scale):g} and {float(tb.scale):g}",
            )
        cls = SubTensors if subtract else AddTensors
        op = cls(name, [sa, sb], out, shift_a=f - fa, shift_b=f - fb)
        self.ops.append(op)
        (alo, ahi), (blo, bhi) = self.bounds[sa], self.bounds[sb]
        if subtract:
            blo, bhi = -bhi, -blo
        self._add_tensor(
            out,
            shape,
            (alo << op.shift_a) + (blo << op.shift_b),
            (ahi << op.shift_a) + (bhi << op.shift_b),
            scale,
        )

    def _mul_tensors(self, node, idx, name, a: str, b: str, out: str) -> None:
        """``a * b`` of two activations (a gate): exact product, LSB = product of the LSBs."""
        sa, sb, shape = self._two_dynamic(node, idx, a, b)
        (alo, ahi), (blo, bhi) = self.bounds[sa], self.bounds[sb]
        corners = [alo * blo, alo * bhi, ahi * blo, ahi * bhi]
        self.ops.append(MulTensors(name, [sa, sb], out))
        self._add_tensor(
            out, shape, min(corners), max(corners), self.tensors[sa].scale * self.tensors[sb].scale
        )

    def _matmul_tensors(self, node, idx, name, a: str, b: str, out: str) -> None:
        """``a @ b`` of two activations over the last two axes (no broadcasting of leading axes)."""
        sa, sb = self._dyn(a), self._dyn(b)
        ta, tb = self.tensors[sa], self.tensors[sb]
        if ta.scale.size > 1 or tb.scale.size > 1:
            raise self._unsupported(node, idx, "MatMul of per-channel-scaled tensors")
        if (
            len(ta.shape) < 2
            or len(ta.shape) != len(tb.shape)
            or ta.shape[:-2] != tb.shape[:-2]
            or ta.shape[-1] != tb.shape[-2]
        ):
            raise self._unsupported(
                node,
                idx,
                f"activation MatMul of {ta.shape} by {tb.shape} (needs (..., M, K) @ (..., K, N) "
                "with equal leading axes)",
            )
        (alo, ahi), (blo, bhi) = self.bounds[sa], self.bounds[sb]
        corners = [alo * blo, alo * bhi, ahi * blo, ahi * bhi]
        k = ta.shape[-1]
        self.ops.append(MatMulTensors(name, [sa, sb], out))
        self._add_tensor(
            out,
            (*ta.shape[:-1], tb.shape[-1]),
            k * min(corners),
            k * max(corners),
            ta.scale * tb.scale,
        )

    def _op_Sub(self, node, idx, name, ins, out):
        a, b = ins
        if a in self.consts and b not in self.consts:
            # c - x = (-x) + c: an exact negation, then the constant add
            src = self._dyn(b)
            neg = f"{out}__neg"
            lo, hi = self.bounds[src]
            self.ops.append(Affine(f"{name}_neg", [src], neg, mult=np.array(-1, np.int64)))
            self._add_tensor(neg, self.tensors[src].shape, -hi, -lo, self.tensors[src].scale)
            self._add_const(node, idx, name, neg, a, out)
            return
        if b not in self.consts:
            self._add_tensors(node, idx, name, a, b, out, subtract=True)
            return
        c = self.consts[b]
        self.consts[b + "__neg"] = _Const(
            -c.value, None if c.codes is None else -c.codes, c.scale, c.storage, c.node
        )
        self._add_const(node, idx, name, self._dyn(a), b + "__neg", out)

    def _fuse_bias(self, src: str) -> Dense | None:
        """The Dense/Conv producing ``src`` if its output has no other consumer yet."""
        if not self.ops or self.ops[-1].output != src or not isinstance(self.ops[-1], Dense):
            return None
        op = self.ops[-1]
        return op if op.bias is None else None

    def _add_const(self, node, idx, name, src, cname, out):
        ti = self.tensors[src]
        c = self.consts[cname]
        cval = np.asarray(c.value, np.float64)
        if cval.size > 1:
            cval = cval.reshape(-1)
            if cval.size != ti.shape[-1]:
                raise self._unsupported(
                    node, idx, f"constant of shape {c.value.shape} (per-channel or scalar only)"
                )
        dense = self._fuse_bias(src)
        if (
            c.codes is not None
            and c.scale is not None
            and ti.pot
            and c.scale.size == 1
            and _is_pot(float(c.scale.reshape(-1)[0]))
        ):
            # Quantized bias with power-of-two scale: exact integer add after aligning binary points.
            fb = -_log2_int(float(c.scale.reshape(-1)[0]))
            fa = ti.type.frac
            f = max(fa, fb)
            if f - min(fa, fb) > MAX_SHIFT:
                raise self._unsupported(
                    node,
                    idx,
                    f"aligning the binary points of '{src}' (2**-{fa}) and the constant "
                    f"'{cname}' (2**-{fb}) needs a {f - min(fa, fb)}-bit shift; edgeml allows "
                    f"{MAX_SHIFT} (check the scales)",
                )
            codes = np.broadcast_to(c.codes.reshape(-1), (ti.shape[-1],)).astype(np.int64)
            btype = FixedType(
                c.storage.signed if c.storage else True, c.storage.width if c.storage else 32, fb
            )
            lo, hi = self.bounds[src]
            if dense is not None:
                dense.bias = codes.copy()
                dense.bias_type = btype
                dense.bias_shift = f - fb
                dense.acc_shift = f - fa
                dense.output = out
                del self.tensors[src]
                del self.bounds[src]
                self._add_tensor(
                    out,
                    ti.shape,
                    (lo << (f - fa)) + int((codes << (f - fb)).min()),
                    (hi << (f - fa)) + int((codes << (f - fb)).max()),
                    np.asarray(2.0**-f),
                )
                return
            op = Affine(
                name, [src], out, mult=np.array(1 << (f - fa), np.int64), offset=codes << (f - fb)
            )
            self.ops.append(op)
            self._add_tensor(
                out,
                ti.shape,
                (lo << (f - fa)) + int(op.offset.min()),
                (hi << (f - fa)) + int(op.offset.max()),
                np.asarray(2.0**-f),
            )
            return
        # Float constant: fixed-point affine with affine_frac_bits fractional bits.
        self._affine(
            node, idx, name, src, out, np.ones_like(np.atleast_1d(cval)), np.atleast_1d(cval)
        )

    def _merge_affine(
        self, name: str, src: str, a: np.ndarray, b: np.ndarray
    ) -> tuple[str, np.ndarray, np.ndarray]:
        """Fold ``y = x*a + b`` into the affine op that computed ``x`` (Sub then Div of a
        normalisation, BatchNorm then Mul): one fixed-point multiplier, one rounding."""
        prev = self.ops[-1] if self.ops else None
        readers = [n for n in self.graph.node if src in n.input]
        if (
            not isinstance(prev, Affine)
            or prev.output != src
            or src not in self.affine_real
            or len(readers) != 1
            or src in self.alias.values()
            or src in {o.name for o in self.graph.output}
        ):
            return src, a, b
        src0, a1, b1 = self.affine_real.pop(src)
        self.ops.pop()
        del self.tensors[src], self.bounds[src]
        self.notes = [n for n in self.notes if not n.startswith(f"{prev.name}:")]
        self.notes.append(f"{name}: merged with the constant op {prev.name} before it")
        return src0, np.asarray(a1 * a, np.float64), np.asarray(b1 * a + b, np.float64)

    def _affine(self, node, idx, name, src, out, a: np.ndarray, b: np.ndarray) -> None:
        """y = x*a + b (real, per channel) as fixed point: codes*mult + offset at 2**-F."""
        src, a, b = self._merge_affine(name, src, np.asarray(a), np.asarray(b))
        self.affine_real[out] = (src, a, b)
        ti = self.tensors[src]
        F = self.options.affine_frac_bits
        real_mult = np.asarray(ti.scale, np.float64) * a  # value per input code
        top = float(np.max(np.abs(real_mult), initial=0.0))
        if 0.0 < top < 1.0:
            # keep affine_frac_bits significant bits in the largest multiplier (up to
            # affine_extra_bits more fractional bits): after a fine LSB (an earlier affine
            # op, FINN's Mul(1/255)) a multiplier of order 1 would otherwise keep 1-2 bits
            F = min(
                self.options.affine_frac_bits - _log2_int(top),
                self.options.affine_frac_bits + self.options.affine_extra_bits,
            )
            if np.all(np.rint(np.ldexp(real_mult, F)) == 0):  # tinier still: never all-zero
                F = self.options.affine_frac_bits - _log2_int(top)
            # ...but a multiplier that is exact at a coarser binary point (a bias Add after
            # an affine op multiplies by the input's LSB, a power of two) keeps that point,
            # so chains of constant ops do not widen by F bits each
            for f_exact in range(self.options.affine_frac_bits, F):
                if np.all(np.ldexp(real_mult, f_exact) == np.rint(np.ldexp(real_mult, f_exact))):
                    F = f_exact
                    break
        lo, hi = self.bounds[src]
        widest = (np.max(np.abs(real_mult), initial=0.0) * max(abs(lo), abs(hi))) + np.max(
            np.abs(b), initial=0.0
        )
        if not widest * 2.0**F < MAX_CODE:
            raise self._unsupported(
                node,
                idx,
                f"float constants {np.ravel(a)[:4]} x / + {np.ravel(b)[:4]} give values up to "
                f"{widest:.3g}, beyond what {F} fractional bits hold in "
                f"{MAX_CODE.bit_length()} bits (check the constants)",
            )
        mult = np.rint(real_mult * 2.0**F).astype(np.int64)
        offset = np.rint(b * 2.0**F).astype(np.int64)
        exact = bool(np.all(mult * 2.0**-F == real_mult) and np.all(offset * 2.0**-F == b))
        if np.all(mult == 0):
            raise self._unsupported(node, idx, f"constant too small for {F} fractional bits")
        if not exact:
            self.notes.append(f"{name}: float constants rounded to {F} fractional bits")
        mult = mult.reshape(-1) if mult.size > 1 else mult.reshape(())
        offset = offset.reshape(-1) if offset.size > 1 else offset.reshape(())
        op = Affine(name, [src], out, mult=mult, offset=offset, exact_vs_qonnx=exact)
        self.ops.append(op)
        c1, c2 = lo * mult + offset, hi * mult + offset
        self._add_tensor(
            out,
            ti.shape,
            int(np.minimum(c1, c2).min()),
            int(np.maximum(c1, c2).max()),
            np.asarray(2.0**-F),
        )

    def _op_Mul(self, node, idx, name, ins, out):
        a, b = ins
        if a in self.consts and b not in self.consts:
            a, b = b, a
        if b not in self.consts:
            self._mul_tensors(node, idx, name, a, b, out)
            return
        src = self._dyn(a)
        ti = self.tensors[src]
        c = np.asarray(self.consts[b].value, np.float64)
        if c.size == 1 and _is_pot(abs(float(c.reshape(-1)[0]))) and float(c.reshape(-1)[0]) > 0:
            # Power-of-two scaling is free in hardware: only the binary point moves,
            # so the codes pass through unchanged (a zero-cost reshape) with a new LSB.
            self.ops.append(Reshape(name, [src], out, shape=ti.shape))
            lo, hi = self.bounds[src]
            self._add_tensor(out, ti.shape, lo, hi, ti.scale * float(c.reshape(-1)[0]))
            return
        if c.size == 1 and float(c.reshape(-1)[0]) > 0 and self._rescale_ok(out):
            # A positive real scalar (FINN's Mul(1/255), a dequantising tail) only changes
            # what one code is worth: the codes pass unchanged with a real-valued LSB, and
            # the next quantizer or affine op folds it into its one fixed-point multiplier
            # (exact here; multiplying codes by a rounded 1/255 would lose precision).
            self.ops.append(Reshape(name, [src], out, shape=ti.shape))
            lo, hi = self.bounds[src]
            self._add_tensor(out, ti.shape, lo, hi, ti.scale * float(c.reshape(-1)[0]))
            return
        cv = c.reshape(-1)
        if cv.size not in (1, ti.shape[-1]):
            raise self._unsupported(
                node, idx, f"constant of shape {c.shape} (per-channel or scalar only)"
            )
        self._affine(node, idx, name, src, out, cv, np.zeros_like(cv))

    #: Ops that take a tensor with a real-valued (non power-of-two) scalar LSB as it is.
    _REAL_SCALE_READERS = frozenset(
        {"MatMul", "Gemm", "Conv", "Quant", "Mul", "Div", "BatchNormalization", "Relu", "MaxPool"}
        | {"AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "ConvTranspose"}
        | set(LAYOUT_OPS)
        | set(TABLE_FUNCS)
    )

    def _rescale_ok(self, tensor: str) -> bool:
        """True if every reader of ``tensor`` handles a real-valued LSB (a graph output does:
        its scale is reported with the codes); an Add of two tensors needs aligned scales."""
        readers = [n for n in self.graph.node if tensor in n.input]
        for n in readers:
            if n.op_type in ("Add", "Sub") and all(i not in self.consts for i in n.input):
                return False
            if (
                n.op_type not in self._REAL_SCALE_READERS
                and n.op_type not in ("Add", "Sub")
                and n.op_type not in GATHER_OPS
            ):
                return False
            if n.op_type in GATHER_OPS and (
                n.op_type == "Concat" or not self._rescale_ok(n.output[0])
            ):
                return False
            if n.op_type in LAYOUT_OPS and not self._rescale_ok(n.output[0]):
                return False
        return True

    def _op_Div(self, node, idx, name, ins, out):
        """Tensor / constant: a multiply by the reciprocal (exact for powers of two)."""
        a, b = ins
        if b not in self.consts:
            raise self._unsupported(node, idx, "Div by a tensor (only tensor / constant)")
        c = np.asarray(self.consts[b].value, np.float64)
        if np.any(c == 0):
            raise self._unsupported(node, idx, "division by a zero constant")
        self.consts[b + "__recip"] = _Const(1.0 / c)
        self._op_Mul(node, idx, name, [a, b + "__recip"], out)

    def _op_Sign(self, node, idx, name, ins, out):
        src = self._dyn(ins[0])
        self.ops.append(Sign(name, [src], out))
        self._add_tensor(out, self.tensors[src].shape, -1, 1, np.asarray(1.0))

    def _op_Clip(self, node, idx, name, ins, out):
        """Clip to constant bounds: saturation on codes (exact when the bounds are on the code grid)."""
        src = self._dyn(ins[0])
        ti = self.tensors[src]
        bounds = []
        for pos, attr in ((1, "min"), (2, "max")):
            if len(ins) > pos and ins[pos]:
                if ins[pos] not in self.consts:
                    raise self._unsupported(node, idx, f"its {attr} input is not a constant")
                v = np.asarray(self.consts[ins[pos]].value, np.float64).reshape(-1)
                if v.size != 1:
                    raise self._unsupported(node, idx, f"non-scalar {attr} {v[:4]}")
                bounds.append(float(v[0]))
            else:
                a = self._attr(node, attr)  # opset < 11 keeps them as attributes
                bounds.append(None if a is None else float(a))
        if ti.scale.size > 1:
            raise self._unsupported(node, idx, "Clip of a per-channel-scaled tensor")
        s = float(ti.scale)
        plo, phi = self.bounds[src]
        lo = plo if bounds[0] is None else max(plo, math.ceil(bounds[0] / s))
        hi = phi if bounds[1] is None else min(phi, math.floor(bounds[1] / s))
        if lo > hi:
            raise self._unsupported(node, idx, f"empty range [{bounds[0]}, {bounds[1]}]")
        on_grid = all(b is None or (b / s).is_integer() for b in bounds)
        if not on_grid:
            self.notes.append(
                f"{name}: Clip bounds {bounds} are not multiples of the LSB {s:g}; saturated "
                f"to the nearest codes inside ([{lo}, {hi}] x {s:g}), which differs from QONNX "
                "where a value is clipped to an off-grid bound"
            )
        self.ops.append(
            Requant(name, [src], out, rounding="FLOOR", lo=lo, hi=hi, exact_vs_qonnx=on_grid)
        )
        self._add_tensor(out, ti.shape, lo, hi, ti.scale)

    def _op_LeakyRelu(self, node, idx, name, ins, out):
        """``x`` if ``x >= 0`` else ``alpha * x``: exact for power-of-two alpha, else fixed point."""
        src = self._dyn(ins[0])
        ti = self.tensors[src]
        alpha = float(self._attr(node, "alpha", 0.01))
        if not math.isfinite(alpha):
            raise self._unsupported(node, idx, f"alpha {alpha}")
        if alpha == 0.0:
            pos, neg, k, exact = 1, 0, 0, True
        elif _is_pot(abs(alpha)):
            e = _log2_int(abs(alpha))
            k = max(-e, 0)  # fractional bits added to keep alpha * x exact
            pos, neg, exact = 1 << k, int(math.copysign(1, alpha)) << (e + k), True
        else:
            k = self.options.affine_frac_bits
            neg = int(np.rint(alpha * 2.0**k))
            pos, exact = 1 << k, neg * 2.0**-k == alpha
            while k and pos % 2 == 0 and neg % 2 == 0:
                pos, neg, k = pos // 2, neg // 2, k - 1
            if not exact:
                self.notes.append(
                    f"{name}: LeakyRelu alpha {alpha} approximated as {neg}/2**{k} "
                    f"(abs. err {abs(neg * 2.0**-k - alpha):.2e})"
                )
        lo, hi = self.bounds[src]
        cand = [max(lo, 0) * pos, max(hi, 0) * pos, min(lo, 0) * neg, min(hi, 0) * neg]
        self.ops.append(
            LeakyRelu(name, [src], out, pos_mult=pos, neg_mult=neg, exact_vs_qonnx=exact)
        )
        self._add_tensor(out, ti.shape, min(cand), max(cand), ti.scale * 2.0**-k)

    def _op_Softmax(self, node, idx, name, ins, out):
        """Softmax over the last axis, as hls4ml 1.3's ``softmax_stable`` computes it."""
        src = self._dyn(ins[0])
        ti = self.tensors[src]
        rank = len(ti.shape) + 1
        default_axis = -1 if self._opset() >= 13 else 1
        axis = int(self._attr(node, "axis", default_axis))
        if axis not in (-1, rank - 1) and not (self._opset() < 13 and axis == rank - 1):
            raise self._unsupported(
                node, idx, f"Softmax over axis {axis} of a rank-{rank} tensor (only the last axis)"
            )
        if self._opset() < 13 and len(ti.shape) > 1 and axis != rank - 1:
            raise self._unsupported(node, idx, "opset < 13 Softmax over several axes")
        if ti.scale.size > 1:
            raise self._unsupported(node, idx, "Softmax of a per-channel-scaled tensor")
        o = self.options
        p = softmax_params(
            ti.type,
            float(ti.scale),
            ti.shape[-1],
            table_bits=o.softmax_table_bits,
            inv_table_bits=o.softmax_inv_table_bits,
            range_bits=o.softmax_range_bits,
            table_width=o.softmax_table_width,
            out_width=o.softmax_table_width,
        )
        op = Softmax.create(name, src, out, p)
        self.ops.append(op)
        self.notes.append(
            f"{name}: Softmax as hls4ml softmax_stable: x_max - x saturates at "
            f"2**{o.softmax_range_bits}, exp table {p.exp_table_size} x {p.exp_type.hls()}, "
            f"inverse table {p.inv_table_size} x {p.inv_type.hls()}, output {p.out_type.hls()}"
        )
        self._add_tensor(out, ti.shape, 0, 1 << p.out_type.frac, np.asarray(2.0**-p.out_type.frac))
        self.tensors[out].type = p.out_type

    # -- fixed index maps ---------------------------------------------------------
    def _const_array(self, cname: str) -> np.ndarray:
        """A constant in its original dtype (int64 for shapes and pads), for ONNX's reference."""
        if cname in self.const_raw:
            return self.const_raw[cname]
        v = np.asarray(self.consts[cname].value)
        return v.astype(np.int64 if np.all(v == np.rint(v)) else np.float32)

    def _index_map(self, node: Any, idx: int, ins: list[str], dyn: list[int]) -> list[np.ndarray]:
        """Run the node in ONNX's reference implementation on tensors holding ``1 + position``.

        Every output element then names the input element it copies (0: a padded zero),
        so the op's index map, with every attribute and opset rule, is ONNX's own.
        """
        from onnx import TensorProto, helper, numpy_helper
        from onnx.reference import ReferenceEvaluator

        feeds: dict[str, np.ndarray] = {}
        inits = []
        names: list[str] = []
        off = 0
        for k, i in enumerate(ins):
            if not i:
                names.append("")
                continue
            nm = f"in{k}"
            names.append(nm)
            if k in dyn:
                shape = self.tensors[self._dyn(i)].shape
                size = int(np.prod(shape))
                feeds[nm] = (np.arange(size, dtype=np.float64) + 1 + off).reshape((1, *shape))
                off += size
            else:
                inits.append(numpy_helper.from_array(self._const_array(i), nm))
        outs = [f"out{j}" for j in range(len(node.output))]
        one = helper.make_node(node.op_type, names, outs)
        one.attribute.extend(node.attribute)
        graph = helper.make_graph(
            [one],
            "index_map",
            [helper.make_tensor_value_info(nm, TensorProto.DOUBLE, None) for nm in feeds],
            [helper.make_tensor_value_info(o, TensorProto.DOUBLE, None) for o in outs],
            initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self._opset())])
        res = ReferenceEvaluator(model).run(None, feeds)
        maps = []
        for r in res:
            r = np.asarray(r, np.float64)
            if r.ndim == 0 or r.shape[0] != 1:
                raise self._unsupported(
                    node, idx, f"it acts on the batch axis (output shape {r.shape} for batch 1)"
                )
            if not np.all(r == np.rint(r)) or r.min(initial=0) < 0 or r.max(initial=0) > off:
                raise self._unsupported(
                    node, idx, "it computes new values instead of moving its inputs' values"
                )
            maps.append(r[0].astype(np.int64) - 1)
        return maps

    def _op_gather(self, node, idx, name, ins, out):
        op = node.op_type
        if op == "Pad":
            mode = str(self._attr(node, "mode", "constant"))
            value = float(self._attr(node, "value", 0.0))
            if len(ins) > 2 and ins[2]:
                value = float(np.max(np.abs(self.consts[ins[2]].value), initial=0.0))
            if mode != "constant" or value != 0.0:
                raise self._unsupported(
                    node, idx, f"Pad mode={mode!r} value={value}; only constant zero padding"
                )
        if op in ("Resize", "Upsample") and str(self._attr(node, "mode", "nearest")) != "nearest":
            raise self._unsupported(
                node, idx, f"{op} mode={self._attr(node, 'mode')!r}; only nearest"
            )
        dyn = [k for k, i in enumerate(ins) if i and i not in self.consts]
        if op != "Concat" and dyn != [0]:
            raise self._unsupported(node, idx, "its shape / index inputs must be constants")
        if op == "Concat" and len(dyn) != len(ins):
            raise self._unsupported(node, idx, "Concat of an activation with a constant")
        srcs = [self._dyn(ins[k]) for k in dyn]
        infos = [self.tensors[t] for t in srcs]
        if any(t.scale.size > 1 for t in infos):
            raise self._unsupported(node, idx, "moving a per-channel-scaled tensor")
        shifts = [0] * len(srcs)
        scale = infos[0].scale
        if len(srcs) > 1 and not all(np.array_equal(t.scale, scale) for t in infos):
            if not all(t.pot for t in infos):
                raise self._unsupported(
                    node, idx, "joining tensors with different non power-of-two scales"
                )
            f = max(t.type.frac for t in infos)
            shifts = [f - t.type.frac for t in infos]
            scale = np.asarray(2.0**-f)
        maps = self._index_map(node, idx, ins, dyn)
        lo = min(self.bounds[t][0] << sh for t, sh in zip(srcs, shifts, strict=True))
        hi = max(self.bounds[t][1] << sh for t, sh in zip(srcs, shifts, strict=True))
        for j, m in enumerate(maps):
            o = node.output[j]
            if not o:
                continue
            flat = m.reshape(-1)
            shape = tuple(int(d) for d in m.shape)
            op_name = name if len(maps) == 1 else f"{name}_{j}"
            if (
                len(srcs) == 1
                and np.array_equal(flat, np.arange(flat.size))
                and flat.size == int(np.prod(infos[0].shape))
            ):
                # a pure reshape (Squeeze, Unsqueeze, a full Slice): no data moves
                if shape == infos[0].shape:
                    self.alias[o] = srcs[0]
                    continue
                self.ops.append(Reshape(op_name, [srcs[0]], o, shape=shape))
            else:
                self.ops.append(
                    Gather(op_name, list(srcs), o, index=flat, shape=shape, shifts=tuple(shifts))
                )
            pad = bool(np.any(flat < 0))
            self._add_tensor(o, shape, min(lo, 0) if pad else lo, max(hi, 0) if pad else hi, scale)

    def _broadcast(self, node: Any, idx: int, src: str, shape: tuple[int, ...]) -> str:
        """``src`` broadcast to ``shape`` (numpy rules) by a Gather; ``src`` if already equal."""
        ti = self.tensors[src]
        if ti.shape == shape:
            return src
        try:
            m = np.broadcast_to(np.arange(int(np.prod(ti.shape))).reshape(ti.shape), shape)
        except ValueError:
            raise self._unsupported(
                node, idx, f"shapes {ti.shape} and {shape} do not broadcast"
            ) from None
        out = f"{src}__bcast_{'x'.join(map(str, shape))}"
        if out not in self.tensors:
            name = f"{self._node_name(node, idx)}_bcast"
            self.ops.append(Gather(name, [src], out, index=m.reshape(-1).copy(), shape=shape))
            lo, hi = self.bounds[src]
            self._add_tensor(out, shape, lo, hi, ti.scale)
        return out

    def _two_dynamic(self, node: Any, idx: int, a: str, b: str) -> tuple[str, str, tuple[int, ...]]:
        sa, sb = self._dyn(a), self._dyn(b)
        ta, tb = self.tensors[sa], self.tensors[sb]
        if ta.scale.size > 1 or tb.scale.size > 1:
            raise self._unsupported(node, idx, f"{node.op_type} of per-channel-scaled tensors")
        try:
            shape = tuple(int(d) for d in np.broadcast_shapes(ta.shape, tb.shape))
        except ValueError:
            raise self._unsupported(
                node, idx, f"shapes {ta.shape} and {tb.shape} do not broadcast"
            ) from None
        return self._broadcast(node, idx, sa, shape), self._broadcast(node, idx, sb, shape), shape

    # -- elementwise functions as tables -------------------------------------------
    def _op_table_fn(self, node, idx, name, ins, out):
        src = self._dyn(ins[0])
        ti = self.tensors[src]
        if ti.scale.size > 1:
            raise self._unsupported(node, idx, f"{node.op_type} of a per-channel-scaled tensor")
        if ti.type.width > MAX_TABLE_BITS:
            raise self._unsupported(
                node,
                idx,
                f"its input '{src}' is {ti.type.width} bits wide ({ti.type.hls()}); edgeml "
                f"tabulates elementwise functions of inputs up to {MAX_TABLE_BITS} bits: put an "
                "activation quantizer (QuantIdentity / Quant) of at most that width before it",
            )
        self.pending_fn[out] = (node, idx, name, src)

    def _table_values(self, fn_node: Any, fn_idx: int, src: str) -> tuple[np.ndarray, np.ndarray]:
        """(input codes over the whole input type, the function's real values there)."""
        ti = self.tensors[src]
        t = ti.type
        codes = np.arange(t.qmin, t.qmax + 1, dtype=np.int64)
        attrs = {a.name: self._attr(fn_node, a.name) for a in fn_node.attribute}
        fn = TABLE_FUNCS[fn_node.op_type](attrs)
        # QONNX and Brevitas compute in float32: tabulate the same float32 values
        x = (codes * float(ti.scale)).astype(np.float32)
        with np.errstate(all="ignore"):
            y = np.asarray(fn(x), np.float32).astype(np.float64)
        if not np.all(np.isfinite(y)):
            bad = codes[~np.isfinite(y)][0]
            raise self._unsupported(
                fn_node,
                fn_idx,
                f"{fn_node.op_type} is not finite at input code {int(bad)} "
                f"(value {bad * float(ti.scale):g}); narrow its input quantizer",
            )
        return codes, y

    def _table_quant(self, node, idx, src_fn: str, out: str, ins: list[str]) -> None:
        """The elementwise function before this Quant and the Quant, as one exact table."""
        fn_node, fn_idx, fn_name, src = self.pending_fn.pop(src_fn)
        scale, zp, bw = (self.consts[i].value for i in ins[1:4])
        s, bits, signed, narrow, mode = self._quant_params(node, idx, scale, zp, bw)
        if s.size > 1:
            raise self._unsupported(node, idx, "per-channel activation quantizer scales")
        lo, hi = self._int_range(bits, signed, narrow)
        codes, y = self._table_values(fn_node, fn_idx, src)
        q = y.astype(np.float32) / np.float32(float(s.reshape(-1)[0]))
        table = np.clip(FLOAT_ROUNDING[mode](q.astype(np.float64)), lo, hi).astype(np.int64)
        self._add_lookup(fn_node, fn_name, src, out, table, codes, s.reshape(()), True)

    def _table_default(self, src_fn: str) -> None:
        """A function whose output no Quant defines: tabulated at DEFAULT_TABLE_BITS."""
        fn_node, fn_idx, fn_name, src = self.pending_fn.pop(src_fn)
        codes, y = self._table_values(fn_node, fn_idx, src)
        top = float(np.max(np.abs(y), initial=0.0))
        int_bits = max(1, math.frexp(top)[1] + 1) if top > 0 else 1
        frac = DEFAULT_TABLE_BITS - int_bits
        table = np.rint(np.ldexp(y, frac)).astype(np.int64)
        self.notes.append(
            f"{fn_name}: {fn_node.op_type} has no output quantizer; tabulated with "
            f"{frac} fractional bits ({DEFAULT_TABLE_BITS}-bit signed)"
        )
        self._add_lookup(fn_node, fn_name, src, src_fn, table, codes, np.asarray(2.0**-frac), False)

    def _add_lookup(
        self,
        fn_node: Any,
        name: str,
        src: str,
        out: str,
        table: np.ndarray,
        codes: np.ndarray,
        scale: np.ndarray,
        exact: bool,
    ) -> None:
        op = Lookup(
            name,
            [src],
            out,
            table=table,
            lo=int(codes[0]),
            fn=fn_node.op_type.lower(),
            exact_vs_qonnx=exact,
        )
        self.ops.append(op)
        self._add_tensor(out, self.tensors[src].shape, int(table.min()), int(table.max()), scale)

    # -- sums: average pools and means as structural (wiring-only) ops -------------
    def _structural_sum(
        self, node, idx, name, src: str, out: str, weight: np.ndarray, out_shape, n: int, conv=None
    ) -> None:
        """``sum(x)`` over a fixed set (weight codes 0/1) with LSB ``scale / n``: a mean."""
        ti = self.tensors[src]
        if ti.scale.size > 1:
            raise self._unsupported(node, idx, "a mean of a per-channel-scaled tensor")
        wtype = FixedType(False, 1, 0)
        if conv is None:
            op: Dense = Dense(name, [src], out, weight=weight, weight_type=wtype, structural=True)
        else:
            op = Conv(
                name,
                [src],
                out,
                weight=weight,
                weight_type=wtype,
                strides=conv[0],
                pads=conv[1],
                structural=True,
            )
        self.ops.append(op)
        lo, hi = self.bounds[src]
        k = int(weight.reshape(-1, weight.shape[-1]).sum(0).max())
        self._add_tensor(out, out_shape, min(lo * k, 0), max(hi * k, 0), ti.scale / n)
        if n & (n - 1):
            self.notes.append(
                f"{name}: mean over {n} values = exact sum with a real-valued LSB "
                f"(scale / {n}); the next quantizer rounds it"
            )

    def _op_AveragePool(self, node, idx, name, ins, out):
        src = self._dyn(ins[0])
        ti = self.tensors[src]
        glob = node.op_type == "GlobalAveragePool"
        channels_last = "channels_last" in (node.domain or "")
        if len(ti.shape) != 3:
            raise self._unsupported(node, idx, f"pooling a {ti.shape} tensor (needs 3-D)")
        if not channels_last:
            # NCHW between the Transposes qonnx leaves around ops it does not convert
            c, h, w = ti.shape
            tname = f"{src}__nhwc"
            if tname not in self.tensors:
                self.ops.append(Transpose(f"{name}_nhwc", [src], tname, perm=(0, 2, 3, 1)))
                self._add_tensor(tname, (h, w, c), *self.bounds[src], ti.scale)
            src = tname
        h, w, c = self.tensors[src].shape
        if glob:
            k, st, pads = (h, w), (1, 1), (0, 0, 0, 0)
        else:
            k = tuple(int(v) for v in self._attr(node, "kernel_shape"))
            st = tuple(int(v) for v in (self._attr(node, "strides") or k))
            pads = tuple(int(v) for v in (self._attr(node, "pads") or [0] * 2 * len(k)))
            if len(k) == 1:
                k, st, pads = (1, k[0]), (1, st[0]), (0, pads[0], 0, pads[1])
            if any(pads) and not int(self._attr(node, "count_include_pad", 0)):
                raise self._unsupported(
                    node, idx, "padded AveragePool with count_include_pad=0 (divisor varies)"
                )
            if int(self._attr(node, "ceil_mode", 0)):
                raise self._unsupported(node, idx, "AveragePool with ceil_mode=1")
        pads4, oh, ow = self._window(node, idx, k, st, pads, h, w)
        weight = np.zeros((k[0], k[1], c, c), np.int64)
        weight[:, :, np.arange(c), np.arange(c)] = 1
        target = out if channels_last else f"{out}__nhwc"
        self._structural_sum(
            node, idx, name, src, target, weight, (oh, ow, c), k[0] * k[1], conv=(st, pads4)
        )
        if not channels_last:
            self.ops.append(Transpose(f"{name}_nchw", [target], out, perm=(0, 3, 1, 2)))
            self._add_tensor(out, (c, oh, ow), *self.bounds[target], self.tensors[target].scale)

    _op_GlobalAveragePool = _op_AveragePool

    def _op_ReduceMean(self, node, idx, name, ins, out):
        src = self._dyn(ins[0])
        ti = self.tensors[src]
        rank = len(ti.shape)
        axes = self._attr(node, "axes")
        if len(ins) > 1 and ins[1]:
            axes = [int(v) for v in self.consts[ins[1]].value.reshape(-1)]
        if axes is None or len(axes) == 0:
            if int(self._attr(node, "noop_with_empty_axes", 0)):
                self.alias[out] = src
                return
            axes = list(range(1, rank + 1))
        axes = sorted({int(a) % (rank + 1) for a in axes})
        if 0 in axes:
            raise self._unsupported(node, idx, "reducing over the batch axis")
        keep = bool(self._attr(node, "keepdims", 1))
        red = [a - 1 for a in axes]
        out_shape = tuple(
            1 if i in red else d for i, d in enumerate(ti.shape) if keep or i not in red
        )
        out_shape = out_shape or (1,)
        size = int(np.prod(ti.shape))
        pos = np.arange(size).reshape(ti.shape)
        keep_shape = tuple(1 if i in red else d for i, d in enumerate(ti.shape))
        # output position of every input element
        tgt = np.ravel_multi_index(
            tuple(
                np.zeros_like(ix) if i in red else ix for i, ix in enumerate(np.indices(ti.shape))
            ),
            keep_shape,
        ).reshape(-1)
        n_out = int(np.prod(keep_shape))
        if size * n_out > 1 << 22:
            raise self._unsupported(
                node, idx, f"a {size}-to-{n_out} reduction is too large for a dense sum"
            )
        weight = np.zeros((size, n_out), np.int64)
        weight[pos.reshape(-1), tgt] = 1
        n = size // n_out if node.op_type == "ReduceMean" else 1
        flat_in, flat_out = f"{src}__flat", f"{out}__flat"
        if flat_in not in self.tensors:
            self.ops.append(Reshape(f"{name}_flat", [src], flat_in, shape=(size,)))
            self._add_tensor(flat_in, (size,), *self.bounds[src], ti.scale)
        self._structural_sum(node, idx, name, flat_in, flat_out, weight, (n_out,), n)
        self.ops.append(Reshape(f"{name}_shape", [flat_out], out, shape=out_shape))
        self._add_tensor(out, out_shape, *self.bounds[flat_out], self.tensors[flat_out].scale)

    _op_ReduceSum = _op_ReduceMean

    def _opset(self) -> int:
        for imp in self.mw.model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return int(imp.version)
        return 13

    def _op_BatchNormalization(self, node, idx, name, ins, out):
        src = self._dyn(ins[0])
        ti = self.tensors[src]
        gamma, beta, mean, var = (
            np.asarray(self.consts[i].value, np.float64).reshape(-1) for i in ins[1:5]
        )
        eps = float(self._attr(node, "epsilon", 1e-5))
        if not np.all(var + eps > 0):
            raise self._unsupported(
                node, idx, f"variance + epsilon must be positive, got {(var + eps)[:4]}"
            )
        if (
            len(ti.shape) == 3
            and "channels_last" not in (node.domain or "")
            and ti.shape[-1] != gamma.size
        ):
            raise self._unsupported(
                node, idx, "NCHW BatchNormalization: run ConvertToChannelsLastAndClean first"
            )
        a = gamma / np.sqrt(var + eps)
        b = beta - mean * a
        self._affine(node, idx, name, src, out, a, b)


def load_model_wrapper(model: Any) -> Any:
    """Accept a path, ModelProto or ModelWrapper; refuse unreadable files clearly."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper

    if isinstance(model, ModelWrapper):
        return model
    if isinstance(model, onnx.ModelProto):
        return ModelWrapper(model)
    path = Path(model)
    if not path.is_file():
        raise CorruptFileError(f"ONNX file '{path}' does not exist")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError / various on garbage
        raise CorruptFileError(f"'{path}' is not a readable ONNX model: {exc}") from exc
    if len(proto.graph.node) == 0:
        raise CorruptFileError(f"'{path}' has an empty graph (truncated or not an ONNX model)")
    mw = ModelWrapper(proto)
    mw._edgeml_source = str(path)
    return mw
