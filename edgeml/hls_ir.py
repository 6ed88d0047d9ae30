"""hls4ml project built from the golden integer IR: the route for graphs hls4ml's QONNX front end gets wrong.

hls4ml's ONNX front end crashes on, or silently mis-converts, many real QONNX
files (per-channel float weight scales, ``BipolarQuant`` weights, float
normalisation tails, half-up rounding; see DESIGN.md, "hls4ml pitfalls").
:func:`convert_hls_from_golden` skips that front end: it writes hls4ml's own
layer list (the dicts its Keras / PyTorch / ONNX handlers produce) from the
golden model's ops and hands it to ``ModelGraph.from_layer_list``, so hls4ml
writes a normal Vitis ``io_parallel`` project that :class:`~edgeml.hls.HlsDesign`
compiles, traces and runs exactly like a QONNX-route project.

Every tensor ``t`` is carried as ``code * 2**-frac`` with the golden type's
``frac``; every layer's result type is the golden tensor type, every weight,
bias and scale type holds its constant exactly, and accumulators are sized for
the worst case, so hls4ml's arithmetic is golden's integer arithmetic:

====================  =====================================================
golden op             hls4ml layer (name = the golden op's name)
====================  =====================================================
Dense / Conv          ``Dense`` / ``Conv2D`` (channels last, HWIO weights =
                      codes << weight_lshift at ``2**-(fo - fx - acc_shift)``)
Requant               ``ApplyAlpha`` (``x*S + B``, S = mult, B = offset at
                      the right binary point) cast to the output type with the
                      rounding of golden's mode (HALF_EVEN ``AP_RND_CONV``,
                      FLOOR ``AP_TRN``, HALF_UP ``AP_RND_INF``, HALF_DOWN
                      ``AP_RND_ZERO``, DOWN ``AP_TRN_ZERO``, CEIL as FLOOR of
                      ``x + 2**shift - 1``) and ``AP_SAT`` / ``AP_SAT_SYM``;
                      a pure power-of-two requant is a ``linear`` cast
Affine                ``ApplyAlpha`` with an exact result type
Relu / MaxPool        ``Activation`` relu / ``MaxPooling2D``
AddTensors            ``Merge`` add
Reshape / Transpose   ``Reshape`` (+ ``ApplyAlpha`` when a power-of-two Mul
                      moved the binary point) / ``Transpose``
Bipolar               ``Activation`` binary_tanh (``x >= 0 ? 1 : -1``), rescaled
Sign                  ``ApplyAlpha`` (the code) + ``Activation`` ternary_tanh
LeakyRelu             ``LeakyReLU`` with the dyadic alpha ``neg_mult / pos_mult``
Softmax               ``Softmax`` (stable) with the golden op's tables and types
                      (:func:`edgeml.softmax.configure_hls_softmax`)
Lookup                ``UnaryLUT``: the golden table reordered to the raw-bit
                      order ``nnet::unary_lut`` indexes by (codes 0..qmax, then
                      the negatives), ``table_t`` = the output type
SubTensors            ``Merge`` subtract (binary points checked aligned)
MulTensors            ``Merge`` multiply (output LSB = product of the LSBs)
MatMulTensors         ``Einsum`` (``[b]ij,[b]jk->[b]ik``, full-precision
                      products, worst-case ``accum_t``); broadcasting refused
Gather                hls4ml's own layer where its index map is one:
                      Reshape, ``Concatenate`` (2 inputs, one axis),
                      ``ZeroPadding1D/2D``, ``Cropping1D/2D``, ``Resize``
                      nearest (also channels first, between two Transposes);
                      any other map (Split, Tile, broadcast, several inputs,
                      zero insertion) is Reshape to flat (+ Concatenate) + a
                      ``Dense`` of 0/1 weights (one product per output) + Reshape
Dense on (T, F)       ``Dense`` on the multi-dim input: hls4ml makes it a
                      pointwise Conv1D / Conv2D (per token); rank > 3 folded
Conv with H == 1      ``Conv2D`` of height 1 (Conv1d, causal FIR), exact as is
====================  =====================================================

A clamp no overflow mode expresses (a ``Clip`` to [0, 96], say) is computed as
``lo + relu(t - lo) - relu(t - hi)`` after rounding into a type wide enough.
Golden ops with no such layer (a future op class, rounding mode ``UP``) are
refused in one line naming the op. :func:`convert_for_golden` picks the route:
hls4ml's QONNX front end where it converts and its C-sim equals golden on a
random check, this route otherwise.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.errors import ConfigError, EdgemlError, UnsupportedOpError
from edgeml.fixed import FixedType, type_for_range
from edgeml.golden import (
    AddTensors,
    Affine,
    Bipolar,
    Conv,
    Dense,
    Gather,
    GoldenModel,
    Lookup,
    MatMulTensors,
    MaxPool,
    MulTensors,
    Relu,
    Requant,
    Reshape,
    SubTensors,
    Transpose,
)
from edgeml.hls import (
    DEFAULT_PART,
    MAX_EXACT_DOUBLE_BITS,
    METADATA_FILE,
    NAME_RE,
    HlsDesign,
    finish_project,
    prepare_project_dir,
    quiet_hls4ml,
    require_gxx,
)
from edgeml.manifest import sha256

logger = logging.getLogger(__name__)

#: golden rounding mode -> ap_fixed quantisation mode (CEIL is FLOOR after an offset)
AP_ROUNDING: dict[str, str] = {
    "HALF_EVEN": "AP_RND_CONV",
    "FLOOR": "AP_TRN",
    "CEIL": "AP_TRN",
    "HALF_UP": "AP_RND_INF",
    "HALF_DOWN": "AP_RND_ZERO",
    "DOWN": "AP_TRN_ZERO",
}
#: golden op classes this route maps to hls4ml layers
SUPPORTED_IR_OPS: tuple[str, ...] = (
    "Dense",
    "Conv",
    "Requant",
    "Affine",
    "Relu",
    "MaxPool",
    "AddTensors",
    "Reshape",
    "Transpose",
    "Bipolar",
    "Sign",
    "LeakyRelu",
    "Softmax",
    "Lookup",
    "SubTensors",
    "MulTensors",
    "MatMulTensors",
    "Gather",
)


def _ap(t: FixedType, rounding: str = "", saturation: str = "") -> str:
    """``ap_fixed<W,I[,Q,O]>`` of a FixedType (unsigned: ``ap_ufixed``)."""
    kind = "ap_fixed" if t.signed else "ap_ufixed"
    modes = f",{rounding or 'AP_TRN'},{saturation}" if saturation else ""
    if rounding and not saturation:
        modes = f",{rounding}"
    return f"{kind}<{t.width},{t.integer}{modes}>"


def _const_type(codes: np.ndarray, frac: int, signed: bool | None = None) -> FixedType:
    """Smallest type holding every integer code (at least 2 bits, so 0 and 1 fit)."""
    c = np.asarray(codes, dtype=np.int64)
    lo, hi = (int(c.min()), int(c.max())) if c.size else (0, 0)
    t = type_for_range(min(lo, -1) if signed else lo, max(hi, 1), frac)
    return FixedType(t.signed, max(t.width, 2), t.frac)


def _value(codes: np.ndarray, frac: int) -> np.ndarray:
    """Exact float64 value of integer codes at ``2**-frac`` (checked: <= 53 significant bits)."""
    c = np.asarray(codes, dtype=np.int64)
    if c.size and int(np.max(np.abs(c))) >= 1 << MAX_EXACT_DOUBLE_BITS:
        raise UnsupportedOpError(
            f"a constant needs {int(np.max(np.abs(c))).bit_length()} bits; hls4ml writes weights "
            f"through float64, exact up to {MAX_EXACT_DOUBLE_BITS} bits"
        )
    return np.ldexp(c.astype(np.float64), -frac)


def _signed_width(bound: int) -> int:
    """Bits of a signed type holding [-bound, bound]."""
    return max(int(bound).bit_length() + 1, 2)


def _layer_name(op_name: str, used: set[str]) -> str:
    """The golden op's name as an hls4ml layer (C identifier, unique), so verify can match them."""
    name = (
        op_name if NAME_RE.match(op_name) else "".join(c if c.isalnum() else "_" for c in op_name)
    )
    if not NAME_RE.match(name):
        name = "L_" + name
    base, i = name, 1
    while name in used:
        name = f"{base}_{i}"
        i += 1
    used.add(name)
    return name


def _saturation(op: Requant, xt: FixedType, to: FixedType) -> tuple[str | None, tuple[int, int]]:
    """The ap_fixed overflow mode that clamps like golden's ``clip(., lo, hi)`` into ``to``.

    Golden types are interval-analysis ranges, so ``to`` may be narrower than the
    quantizer's [lo, hi] on a side no value reaches; a side matches when the
    bounds are equal there or no value (over the whole input type) crosses it.
    Returns the mode (None: none matches) and the range of the unclamped values.
    """
    from edgeml.golden import round_shift

    mult = np.asarray(op.mult, np.int64).reshape(-1)
    offset = np.asarray(op.offset, np.int64).reshape(-1)
    ends = [
        round_shift(np.asarray(v * mult + offset, np.int64), int(op.shift), op.rounding)
        for v in (xt.qmin, xt.qmax)
    ]
    vlo, vhi = min(int(e.min()) for e in ends), max(int(e.max()) for e in ends)
    modes = [("AP_SAT", to.qmin, to.qmax)]
    if to.signed:
        modes.append(("AP_SAT_SYM", -to.qmax, to.qmax))
    modes.append(("AP_WRAP", vlo, vhi))  # no clamp in range: a wrap never happens
    for mode, qlo, qhi in modes:
        low_ok = qlo == op.lo or vlo >= max(op.lo, qlo)
        high_ok = qhi == op.hi or vhi <= min(op.hi, qhi)
        if low_ok and high_ok and to.qmin <= max(op.lo, qlo) and min(op.hi, qhi) <= to.qmax:
            return mode, (vlo, vhi)
    return None, (vlo, vhi)


def _match_spatial(
    shape: tuple[int, ...], out_shape: tuple[int, ...], index: np.ndarray
) -> tuple[str, tuple[int, int, int], tuple[int, int], dict[str, Any]] | None:
    """The hls4ml channels-last layer whose index map is ``index`` (rank 2 (W, C) or 3 (H, W, C)).

    Returns ``(class_name, (h, w, c), (oh, ow), attributes)`` for ZeroPadding1D/2D,
    Cropping1D/2D or Resize (nearest, as ``nnet::resize_nearest`` indexes), or None.
    """
    if len(shape) not in (2, 3) or len(out_shape) != len(shape) or shape[-1] != out_shape[-1]:
        return None
    one_d = len(shape) == 2
    (h, w), (oh, ow) = (
        (shape[-3:-1] if not one_d else (1, shape[0])),
        (out_shape[-3:-1] if not one_d else (1, out_shape[0])),
    )
    c = shape[-1]
    grid = np.arange(h * w * c).reshape(h, w, c)
    if index.size != oh * ow * c:
        return None
    if oh >= h and ow >= w and index.min() < 0 and (index >= 0).any():
        first = int(np.argmax(index >= 0))
        top, left = first // (ow * c), (first // c) % ow
        if top + h <= oh and left + w <= ow:
            want = np.full((oh, ow, c), -1, np.int64)
            want[top : top + h, left : left + w] = grid
            if np.array_equal(want.reshape(-1), index):
                pads = {"pad_left": left, "pad_right": ow - w - left}
                if not one_d:
                    pads.update(pad_top=top, pad_bottom=oh - h - top)
                cls = "ZeroPadding1D" if one_d else "ZeroPadding2D"
                return cls, (h, w, c), (oh, ow), pads
    if oh <= h and ow <= w and index.min() >= 0:
        top, left = int(index[0]) // (w * c), (int(index[0]) // c) % w
        want = grid[top : top + oh, left : left + ow]
        if want.shape == (oh, ow, c) and np.array_equal(want.reshape(-1), index):
            crops = {"crop_left": left, "crop_right": w - ow - left}
            if not one_d:
                crops.update(crop_top=top, crop_bottom=h - oh - top)
            return ("Cropping1D" if one_d else "Cropping2D"), (h, w, c), (oh, ow), crops
    if oh >= h and ow >= w and index.min() >= 0 and (oh, ow) != (h, w):
        # nnet::resize_nearest: source = (dst * ((in << 16) / out + 1)) >> 16
        ry, rx = ((h << 16) // oh) + 1, ((w << 16) // ow) + 1
        ys, xs = (np.arange(oh) * ry) >> 16, (np.arange(ow) * rx) >> 16
        if np.array_equal(grid[ys][:, xs].reshape(-1), index):
            return "Resize", (h, w, c), (oh, ow), {"algorithm": "nearest", "align_corners": False}
    return None


class _Builder:
    """Walks the golden ops and emits hls4ml layer dicts plus per-layer precision config."""

    def __init__(self, g: GoldenModel) -> None:
        self.g = g
        self.layers: list[dict[str, Any]] = []
        self.precision: dict[str, dict[str, str]] = {}
        self.used: set[str] = set()
        self.layer_of: dict[str, str] = {}  # golden tensor -> hls4ml layer computing it
        #: per-layer config keys outside ``Precision`` (UnaryLUT's ``table_t``)
        self.extra: dict[str, dict[str, str]] = {}
        #: how each Gather was mapped (op name -> hls4ml layer kind), for the record
        self.gather_kinds: dict[str, str] = {}

    def t(self, name: str) -> FixedType:
        return self.g.tensors[name].type

    def emit(self, layer: dict[str, Any], precision: dict[str, str]) -> str:
        self.layers.append(layer)
        self.precision[layer["name"]] = precision
        return layer["name"]

    def build(self) -> tuple[list[dict[str, Any]], str, str]:
        g = self.g
        in_name = _layer_name(g.input_name, self.used)
        self.emit(
            {"class_name": "InputLayer", "name": in_name, "input_shape": list(g.input_shape)},
            {"result": _ap(g.input_type)},
        )
        self.layer_of[g.input_name] = in_name
        for op in g.ops:
            handler = getattr(self, f"_op_{type(op).__name__}", None)
            if handler is None or type(op).__name__ not in SUPPORTED_IR_OPS:
                raise UnsupportedOpError(
                    f"golden op {op.label}: hls4ml has no layer edgeml maps {type(op).__name__} to "
                    f"(golden-IR route supports {', '.join(SUPPORTED_IR_OPS)})"
                )
            handler(op)
        return self.layers, in_name, self.layer_of[g.output_name]

    # -- helpers
    def _alpha(
        self,
        name: str,
        src_layer: str,
        shape: tuple[int, ...],
        scale_codes: np.ndarray,
        scale_frac: int,
        bias_codes: np.ndarray,
        bias_frac: int,
        result: str,
    ) -> str:
        """``y = x * scale + bias`` per element (channels on the last axis), cast to ``result``."""
        n = int(np.prod(shape))
        sc = np.broadcast_to(np.asarray(scale_codes, np.int64), shape).reshape(-1)
        bc = np.broadcast_to(np.asarray(bias_codes, np.int64), shape).reshape(-1)
        st, bt = _const_type(sc, scale_frac), _const_type(bc, bias_frac)
        return self.emit(
            {
                "class_name": "ApplyAlpha",
                "name": name,
                "inputs": [src_layer],
                "n_in": n,
                "n_filt": -1,
                "scale_data": _value(sc, scale_frac),
                "bias_data": _value(bc, bias_frac),
            },
            {"result": result, "scale": _ap(st), "bias": _ap(bt)},
        )

    def _dense_types(self, op: Dense) -> tuple[np.ndarray, int, np.ndarray, int, str, str]:
        src, out = op.inputs[0], op.output
        fx, to = self.t(src).frac, self.t(out)
        fo = to.frac
        w = np.asarray(op.effective_weight(), np.int64)
        fw = fo - fx - op.acc_shift
        if op.bias is not None:
            b = np.asarray(op.bias, np.int64)
            fb = fo - op.bias_shift
        else:
            b = np.zeros(w.shape[-1], np.int64)
            fb = fo
        xt = self.t(src)
        xmax = max(abs(xt.qmin), abs(xt.qmax))
        col = np.abs(w.reshape(-1, w.shape[-1])).sum(0) * xmax
        bound = int(col.max(initial=0)) << op.acc_shift
        bound += int(np.abs(b).max(initial=0)) << op.bias_shift
        width = max(_signed_width(bound), to.width + (0 if to.signed else 1))
        accum = _ap(FixedType(True, width, fo))
        return w, fw, b, fb, accum, _ap(to)

    # -- ops
    def _op_Dense(self, op: Dense) -> None:
        # a (tokens, features) or (H, W, features) input: hls4ml's Dense acts per
        # position over the last axis (ReplaceMultidimensionalDenseWithConv makes it a
        # pointwise Conv1D / Conv2D), as golden's ``x @ W``; deeper inputs are folded to 2-D
        w, fw, b, fb, accum, result = self._dense_types(op)
        src_shape = tuple(self.g.tensors[op.inputs[0]].shape)
        out_shape = tuple(self.g.tensors[op.output].shape)
        src = self.layer_of[op.inputs[0]]
        if len(src_shape) > 3:
            src = self._reshape(
                op.name + "_tokens", src, [int(np.prod(src_shape[:-1])), int(src_shape[-1])],
                _ap(self.t(op.inputs[0])),
            )  # fmt: skip
        name = _layer_name(op.name, self.used)
        self.emit(
            {
                "class_name": "Dense",
                "name": name,
                "inputs": [src],
                "n_in": int(w.shape[0]),
                "n_out": int(w.shape[1]),
                "weight_data": _value(w, fw),
                "bias_data": _value(b, fb),
                "use_bias": True,
            },
            {
                "weight": _ap(_const_type(w, fw)),
                "bias": _ap(_const_type(b, fb)),
                "accum": accum,
                "result": result,
            },
        )
        if len(src_shape) > 3:
            name = self._reshape(op.name + "_shape", name, list(out_shape), result)
        self.layer_of[op.output] = name

    def _reshape(self, label: str, src: str, shape: list[int], result: str) -> str:
        """A ``Reshape`` layer (a no-op hls4ml drops in io_parallel; row-major order kept)."""
        return self.emit(
            {
                "class_name": "Reshape",
                "name": _layer_name(label, self.used),
                "inputs": [src],
                "target_shape": [int(d) for d in shape],
            },
            {"result": result},
        )

    def _op_Conv(self, op: Conv) -> None:
        w, fw, b, fb, accum, result = self._dense_types(op)
        name = _layer_name(op.name, self.used)
        h, wd, c = self.g.tensors[op.inputs[0]].shape
        oh, ow, co = self.g.tensors[op.output].shape
        kh, kw = op.weight.shape[:2]
        top, left, bottom, right = op.pads
        self.emit(
            {
                "class_name": "Conv2D",
                "name": name,
                "inputs": [self.layer_of[op.inputs[0]]],
                "data_format": "channels_last",
                "in_height": int(h),
                "in_width": int(wd),
                "n_chan": int(c),
                "out_height": int(oh),
                "out_width": int(ow),
                "n_filt": int(co),
                "filt_height": int(kh),
                "filt_width": int(kw),
                "stride_height": int(op.strides[0]),
                "stride_width": int(op.strides[1]),
                "pad_top": int(top),
                "pad_bottom": int(bottom),
                "pad_left": int(left),
                "pad_right": int(right),
                "dilation": 1,
                "weight_data": _value(w, fw),
                "bias_data": _value(b, fb),
            },
            {
                "weight": _ap(_const_type(w, fw)),
                "bias": _ap(_const_type(b, fb)),
                "accum": accum,
                "result": result,
            },
        )
        self.layer_of[op.output] = name

    def _op_Requant(self, op: Requant) -> None:
        src, out = op.inputs[0], op.output
        xt, to = self.t(src), self.t(out)
        fx, fy = xt.frac, to.frac
        if op.rounding not in AP_ROUNDING:
            raise UnsupportedOpError(
                f"golden op {op.label}: rounding mode {op.rounding} has no ap_fixed equivalent "
                f"(golden-IR route supports {', '.join(AP_ROUNDING)})"
            )
        mult = np.asarray(op.mult, np.int64)
        offset = np.asarray(op.offset, np.int64)
        shift = int(op.shift)
        rnd = AP_ROUNDING[op.rounding] if shift > 0 else "AP_TRN"
        if op.rounding == "CEIL" and shift > 0:
            offset = offset + ((1 << shift) - 1)
        sat, (vlo, vhi) = _saturation(op, xt, to)
        shape = self.g.tensors[out].shape
        src_layer = self.layer_of[src]
        s_frac = fy + shift - fx
        if sat is None:
            # a clamp no overflow mode expresses (e.g. Clip to [0, 96]): round into a type
            # holding every value, then lo + relu(t - lo) - relu(t - hi)
            wide = type_for_range(min(vlo, op.lo, 0), max(vhi, op.hi, 0), fy)
            wide = FixedType(True, wide.width + 1, fy)
            t = self._round_stage(
                op.name + "_round", src_layer, shape, mult, s_frac, offset, fy + shift,
                _ap(wide, rnd, "AP_WRAP"),
            )  # fmt: skip
            self.layer_of[out] = self._clip(op, t, shape, wide, to)
            return
        self.layer_of[out] = self._round_stage(
            op.name, src_layer, shape, mult, s_frac, offset, fy + shift, _ap(to, rnd, sat)
        )

    def _round_stage(
        self,
        op_name: str,
        src_layer: str,
        shape: tuple[int, ...],
        mult: np.ndarray,
        s_frac: int,
        offset: np.ndarray,
        b_frac: int,
        result: str,
    ) -> str:
        """``(x_code * mult + offset) * 2**-b_frac`` cast to ``result`` (which rounds ``shift`` bits)."""
        name = _layer_name(op_name, self.used)
        if mult.size == 1 and int(mult.reshape(-1)[0]) == 1 and not np.any(offset) and s_frac == 0:
            return self.emit(
                {
                    "class_name": "Activation",
                    "activation": "linear",
                    "name": name,
                    "inputs": [src_layer],
                    "n_in": int(np.prod(shape)),
                },
                {"result": result},
            )
        return self._alpha(name, src_layer, shape, mult, s_frac, offset, b_frac, result)

    def _clip(
        self, op: Requant, t: str, shape: tuple[int, ...], wide: FixedType, to: FixedType
    ) -> str:
        """``clip(t, lo, hi)`` exactly, from ApplyAlpha, ReLU and Merge layers."""
        f = wide.frac
        big = FixedType(True, wide.width + 2, f)
        parts = []
        for tag, bound in (("lo", op.lo), ("hi", op.hi)):
            shifted = self._alpha(
                _layer_name(f"{op.name}_{tag}_sub", self.used), t, shape, np.array(1), 0,
                np.array(-bound), f, _ap(big),
            )  # fmt: skip
            parts.append(
                self.emit(
                    {
                        "class_name": "Activation",
                        "activation": "relu",
                        "name": _layer_name(f"{op.name}_{tag}_relu", self.used),
                        "inputs": [shifted],
                        "n_in": int(np.prod(shape)),
                    },
                    {"result": _ap(big)},
                )
            )
        diff = self.emit(
            {
                "class_name": "Merge",
                "op": "subtract",
                "name": _layer_name(f"{op.name}_span", self.used),
                "inputs": parts,
            },
            {"result": _ap(big)},
        )
        return self._alpha(
            _layer_name(op.name, self.used), diff, shape, np.array(1), 0, np.array(op.lo), f,
            _ap(to),
        )  # fmt: skip

    def _op_Affine(self, op: Affine) -> None:
        src, out = op.inputs[0], op.output
        fx, to = self.t(src).frac, self.t(out)
        name = _layer_name(op.name, self.used)
        shape = self.g.tensors[out].shape
        self._alpha(
            name,
            self.layer_of[src],
            shape,
            np.asarray(op.mult),
            to.frac - fx,
            np.asarray(op.offset),
            to.frac,
            _ap(to),
        )
        self.layer_of[out] = name

    def _op_Relu(self, op: Relu) -> None:
        name = _layer_name(op.name, self.used)
        self.emit(
            {
                "class_name": "Activation",
                "activation": "relu",
                "name": name,
                "inputs": [self.layer_of[op.inputs[0]]],
                "n_in": int(np.prod(self.g.tensors[op.output].shape)),
            },
            {"result": _ap(self.t(op.output))},
        )
        self.layer_of[op.output] = name

    def _op_MaxPool(self, op: MaxPool) -> None:
        name = _layer_name(op.name, self.used)
        h, w, c = self.g.tensors[op.inputs[0]].shape
        oh, ow, _ = self.g.tensors[op.output].shape
        top, left, bottom, right = op.pads
        xt = self.t(op.inputs[0])
        self.emit(
            {
                "class_name": "MaxPooling2D",
                "name": name,
                "inputs": [self.layer_of[op.inputs[0]]],
                "data_format": "channels_last",
                "in_height": int(h),
                "in_width": int(w),
                "n_filt": int(c),
                "out_height": int(oh),
                "out_width": int(ow),
                "pool_height": int(op.kernel[0]),
                "pool_width": int(op.kernel[1]),
                "stride_height": int(op.strides[0]),
                "stride_width": int(op.strides[1]),
                "pad_top": int(top),
                "pad_bottom": int(bottom),
                "pad_left": int(left),
                "pad_right": int(right),
            },
            {"result": _ap(self.t(op.output)), "accum": _ap(xt)},
        )
        self.layer_of[op.output] = name

    def _op_AddTensors(self, op: AddTensors) -> None:
        name = _layer_name(op.name, self.used)
        self.emit(
            {
                "class_name": "Merge",
                "op": "add",
                "name": name,
                "inputs": [self.layer_of[i] for i in op.inputs],
            },
            {"result": _ap(self.t(op.output))},
        )
        self.layer_of[op.output] = name

    def _op_Reshape(self, op: Reshape) -> None:
        src, out = op.inputs[0], op.output
        fin, to = self.t(src).frac, self.t(out)
        cur = self.layer_of[src]
        in_shape = self.g.tensors[src].shape
        out_shape = self.g.tensors[out].shape
        moved = to.frac != fin
        if tuple(in_shape) != tuple(out_shape):
            rname = _layer_name(op.name + ("_shape" if moved else ""), self.used)
            cur = self.emit(
                {
                    "class_name": "Reshape",
                    "name": rname,
                    "inputs": [cur],
                    "target_shape": [int(d) for d in out_shape],
                },
                {"result": _ap(self.t(src))},
            )
        if moved:
            # a power-of-two Mul: codes unchanged, binary point moved
            name = _layer_name(op.name, self.used)
            cur = self._alpha(
                name, cur, out_shape, np.array(1), to.frac - fin, np.array(0), to.frac, _ap(to)
            )
        self.layer_of[out] = cur

    def _op_Transpose(self, op: Transpose) -> None:
        name = _layer_name(op.name, self.used)
        self.emit(
            {
                "class_name": "Transpose",
                "name": name,
                "inputs": [self.layer_of[op.inputs[0]]],
                "perm": [int(p) - 1 for p in op.perm[1:]],
            },
            {"result": _ap(self.t(op.inputs[0]))},
        )
        self.layer_of[op.output] = name

    def _op_Bipolar(self, op: Bipolar) -> None:
        to = self.t(op.output)
        shape = self.g.tensors[op.output].shape
        pm1 = FixedType(True, 2, 0)
        name = _layer_name(op.name + ("_sign" if to.frac else ""), self.used)
        cur = self.emit(
            {
                "class_name": "Activation",
                "activation": "binary_tanh",
                "name": name,
                "inputs": [self.layer_of[op.inputs[0]]],
                "n_in": int(np.prod(shape)),
            },
            {"result": _ap(pm1 if to.frac else to)},
        )
        if to.frac:
            name = _layer_name(op.name, self.used)
            cur = self._alpha(name, cur, shape, np.array(1), to.frac, np.array(0), to.frac, _ap(to))
        self.layer_of[op.output] = cur

    def _op_Sign(self, op: Any) -> None:
        # t = the input code (one more bit, as ternary_tanh doubles it in the input type);
        # ternary_tanh: 2t > 1 -> 1, 2t <= -1 -> -1, else 0: exactly sign(code)
        src, out = op.inputs[0], op.output
        xt = self.t(src)
        shape = self.g.tensors[out].shape
        pre = FixedType(True, xt.width + 2, 0)
        cur = self._alpha(
            _layer_name(op.name + "_code", self.used),
            self.layer_of[src],
            shape,
            np.array(1),
            -xt.frac,
            np.array(0),
            0,
            _ap(pre),
        )
        name = _layer_name(op.name, self.used)
        self.emit(
            {
                "class_name": "Activation",
                "activation": "ternary_tanh",
                "name": name,
                "inputs": [cur],
                "n_in": int(np.prod(shape)),
            },
            {"result": _ap(self.t(out))},
        )
        self.layer_of[out] = name

    def _op_LeakyRelu(self, op: Any) -> None:
        # golden: x*pos (x >= 0) else x*neg, pos a power of two; hls4ml: t = x*pos at the
        # output's binary point, then leaky_relu(t, alpha = neg/pos) (exact: dyadic alpha)
        src, out = op.inputs[0], op.output
        xt, to = self.t(src), self.t(out)
        shape = self.g.tensors[out].shape
        pos, neg = int(op.pos_mult), int(op.neg_mult)
        if pos <= 0 or pos & (pos - 1):
            raise UnsupportedOpError(
                f"golden op {op.label}: positive multiplier {pos} is not a power of two; "
                "hls4ml's leaky_relu passes positive values through unchanged"
            )
        cur = self.layer_of[src]
        if pos * 2.0 ** (xt.frac - to.frac) != 1.0:
            cur = self._alpha(
                _layer_name(op.name + "_pos", self.used),
                cur,
                shape,
                np.array(pos),
                to.frac - xt.frac,
                np.array(0),
                to.frac,
                _ap(FixedType(True, to.width + 1, to.frac)),
            )
        k = pos.bit_length() - 1
        name = _layer_name(op.name, self.used)
        self.emit(
            {
                "class_name": "LeakyReLU",
                "activation": "LeakyReLU",
                "name": name,
                "inputs": [cur],
                "n_in": int(np.prod(shape)),
                "activ_param": float(neg * 2.0**-k),
            },
            {"result": _ap(to), "param": _ap(_const_type(np.array([neg]), k, signed=True))},
        )
        self.layer_of[out] = name

    def _op_Softmax(self, op: Any) -> None:
        # the tables and types are set after the graph is built (edgeml.softmax), from this op
        name = _layer_name(op.name, self.used)
        self.emit(
            {
                "class_name": "Softmax",
                "activation": "softmax",
                "name": name,
                "inputs": [self.layer_of[op.inputs[0]]],
                "n_in": int(np.prod(self.g.tensors[op.output].shape)),
                "axis": -1,
            },
            {"result": _ap(self.t(op.output))},
        )
        self.layer_of[op.output] = name

    # -- issue 10's ops: tables, gates, attention products, data movement
    def _op_Lookup(self, op: Lookup) -> None:
        # hls4ml's unary_lut indexes the table by the input's raw bits,
        # ``(unsigned) x(W-1, 0)``: codes 0 .. qmax, then the negative codes
        src, out = op.inputs[0], op.output
        xt, to = self.t(src), self.t(out)
        table = np.asarray(op.table, np.int64).reshape(-1)
        n = 1 << xt.width
        if int(op.lo) != xt.qmin or table.size != n:
            raise UnsupportedOpError(
                f"golden op {op.label}: its table has {table.size} entries from code {op.lo}, "
                f"but hls4ml's UnaryLUT needs one per code of the input type {xt.hls()} "
                f"({n} from {xt.qmin})"
            )
        raw = np.arange(n, dtype=np.int64)
        codes = np.where(raw > xt.qmax, raw - n, raw)
        hls_table = table[codes - xt.qmin]
        name = _layer_name(op.name, self.used)
        self.emit(
            {
                "class_name": "UnaryLUT",
                "activation": "unary_lut",
                "name": name,
                "inputs": [self.layer_of[src]],
                "n_in": int(np.prod(self.g.tensors[out].shape)),
                "table_data": _value(hls_table, to.frac),
            },
            {"result": _ap(to), "table": _ap(to)},
        )
        self.extra[name] = {"table_t": _ap(to)}
        self.layer_of[out] = name

    def _check_frac(self, op: Any, want: int, what: str) -> None:
        fo = self.t(op.output).frac
        if fo != want:
            raise UnsupportedOpError(
                f"golden op {op.label}: output binary point 2**-{fo} is not {what} (2**-{want}); "
                "hls4ml's layer computes on real values, so the codes would differ"
            )

    def _merge(self, op: Any, kind: str) -> None:
        shapes = {tuple(self.g.tensors[i].shape) for i in op.inputs}
        if len(shapes) != 1:
            raise UnsupportedOpError(
                f"golden op {op.label}: inputs of shapes {sorted(shapes)}; hls4ml's Merge "
                f"{kind} needs equal shapes (make the broadcast an explicit Gather)"
            )
        name = _layer_name(op.name, self.used)
        self.emit(
            {
                "class_name": "Merge",
                "op": kind,
                "name": name,
                "inputs": [self.layer_of[i] for i in op.inputs],
            },
            {"result": _ap(self.t(op.output))},
        )
        self.layer_of[op.output] = name

    def _op_SubTensors(self, op: SubTensors) -> None:
        a, b = op.inputs
        self._check_frac(op, self.t(a).frac + op.shift_a, "the first input's, aligned")
        self._check_frac(op, self.t(b).frac + op.shift_b, "the second input's, aligned")
        self._merge(op, "subtract")

    def _op_MulTensors(self, op: MulTensors) -> None:
        a, b = op.inputs
        self._check_frac(op, self.t(a).frac + self.t(b).frac, "the sum of the inputs'")
        self._merge(op, "multiply")

    def _op_MatMulTensors(self, op: MatMulTensors) -> None:
        # hls4ml's Einsum layer (nnet_einsum.h): full-precision products summed in accum_t
        a, b = op.inputs
        at, bt, to = self.t(a), self.t(b), self.t(op.output)
        sa, sb = tuple(self.g.tensors[a].shape), tuple(self.g.tensors[b].shape)
        so = tuple(self.g.tensors[op.output].shape)
        if len(sa) < 2 or len(sa) != len(sb) or sa[:-2] != sb[:-2] or len(sa) > 6:
            raise UnsupportedOpError(
                f"golden op {op.label}: operands {sa} @ {sb}; hls4ml's Einsum route takes "
                "two operands of equal rank (2..6) with equal batch axes (no broadcasting)"
            )
        self._check_frac(op, at.frac + bt.frac, "the sum of the operands'")
        batch = "abcd"[: len(sa) - 2]
        equation = f"{batch}ij,{batch}jk->{batch}ik"
        amax = max(abs(at.qmin), abs(at.qmax))
        bmax = max(abs(bt.qmin), abs(bt.qmax))
        bound = int(sa[-1]) * amax * bmax
        accum = FixedType(True, max(_signed_width(bound), to.width + 1), to.frac)
        name = _layer_name(op.name, self.used)
        self.emit(
            {
                "class_name": "Einsum",
                "name": name,
                "inputs": [self.layer_of[a], self.layer_of[b]],
                "equation": equation,
                "inp0_shape": tuple(int(d) for d in sa),
                "inp1_shape": tuple(int(d) for d in sb),
                "out_shape": tuple(int(d) for d in so),
            },
            {"result": _ap(to), "accum": _ap(accum)},
        )
        self.layer_of[op.output] = name

    def _op_Gather(self, op: Gather) -> None:
        """hls4ml's own layer where the index map is one of its layers' maps; else 0/1 Dense."""
        index = np.asarray(op.index, np.int64).reshape(-1)
        out_shape = tuple(int(d) for d in self.g.tensors[op.output].shape)
        if index.size != int(np.prod(out_shape)):
            raise UnsupportedOpError(
                f"golden op {op.label}: {index.size} indices for an output of shape {out_shape}"
            )
        shifts = tuple(int(v) for v in op.shifts) or (0,) * len(op.inputs)
        if len(shifts) != len(op.inputs):
            raise UnsupportedOpError(
                f"golden op {op.label}: {len(shifts)} shifts for {len(op.inputs)} inputs"
            )
        to = self.t(op.output)
        same = all(s == 0 and self.t(i) == to for i, s in zip(op.inputs, shifts, strict=True))
        aligned = all(self.t(i).frac + s == to.frac for i, s in zip(op.inputs, shifts, strict=True))
        native = None
        if same:
            native = self._gather_native(op, index, out_shape)
        elif aligned and len(op.inputs) == 2:
            native = self._gather_concat(op, index, out_shape)
        if native is not None:
            kind, layer = native
        else:
            kind, layer = "Dense", self._gather_dense(op, index, out_shape, shifts)
        self.gather_kinds[op.name] = kind
        self.layer_of[op.output] = layer

    def _gather_native(
        self, op: Gather, index: np.ndarray, out_shape: tuple[int, ...]
    ) -> tuple[str, str] | None:
        """Identity / Reshape, Concatenate, ZeroPadding, Cropping or Resize when one matches.

        A rank-3 map that matches only channels-first (a Resize / Pad / Slice left
        between the NCHW Transposes of a cleaned QONNX graph) is wrapped in two
        ``Transpose`` layers (wiring) around the channels-last layer.
        """
        to = self.t(op.output)
        if len(op.inputs) == 2:
            return self._gather_concat(op, index, out_shape)
        if len(op.inputs) != 1:
            return None
        src = op.inputs[0]
        shape = tuple(int(d) for d in self.g.tensors[src].shape)
        n = int(np.prod(shape))
        if index.size == n and np.array_equal(index, np.arange(n)):
            if shape == out_shape:
                return "Identity", self.layer_of[src]
            return "Reshape", self._reshape(op.name, self.layer_of[src], list(out_shape), _ap(to))
        if len(shape) not in (2, 3) or len(out_shape) != len(shape):
            return None
        found = _match_spatial(shape, out_shape, index)
        if found is not None:
            cls, hwc, ohw, attrs = found
            return cls, self._spatial(op.name, self.layer_of[src], cls, hwc, ohw, attrs, _ap(to))
        if len(shape) != 3 or shape[0] != out_shape[0]:
            return None
        # channels first: (C, H, W) -> (H, W, C); the map in transposed coordinates
        c, h, w = shape
        pos = np.arange(n).reshape(shape).transpose(1, 2, 0).reshape(-1)  # (h,w,c) -> flat chw
        where = np.empty(n, np.int64)
        where[pos] = np.arange(n)  # flat chw -> flat hwc
        idx_t = index.reshape(out_shape).transpose(1, 2, 0).reshape(-1)
        idx_t = np.where(idx_t >= 0, where[np.maximum(idx_t, 0)], -1)
        hwc_out = (out_shape[1], out_shape[2], c)
        found = _match_spatial((h, w, c), hwc_out, idx_t)
        if found is None:
            return None
        cls, hwc, ohw, attrs = found
        xt = _ap(self.t(src))
        cur = self._transpose(op.name + "_cl", self.layer_of[src], [1, 2, 0], xt)
        cur = self._spatial(op.name + "_" + cls, cur, cls, hwc, ohw, attrs, _ap(to))
        return cls + " (channels first)", self._transpose(op.name, cur, [2, 0, 1], _ap(to))

    def _transpose(self, label: str, src: str, perm: list[int], result: str) -> str:
        return self.emit(
            {
                "class_name": "Transpose",
                "name": _layer_name(label, self.used),
                "inputs": [src],
                "perm": perm,
            },
            {"result": result},
        )

    def _spatial(
        self,
        label: str,
        src: str,
        cls: str,
        in_hwc: tuple[int, int, int],
        out_hw: tuple[int, int],
        attrs: dict[str, Any],
        result: str,
    ) -> str:
        h, w, c = in_hwc
        layer = {
            "class_name": cls,
            "name": _layer_name(label, self.used),
            "inputs": [src],
            "data_format": "channels_last",
            "in_height": int(h),
            "in_width": int(w),
            "out_height": int(out_hw[0]),
            "out_width": int(out_hw[1]),
            "n_chan": int(c),
            **{
                k: int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v
                for k, v in attrs.items()
            },
        }
        return self.emit(layer, {"result": result})

    def _gather_concat(
        self, op: Gather, index: np.ndarray, out_shape: tuple[int, ...]
    ) -> tuple[str, str] | None:
        """``Concatenate`` (rank 1-3) when the map is the concatenation along one axis."""
        if len(op.inputs) != 2:
            return None
        s0, s1 = (tuple(int(d) for d in self.g.tensors[i].shape) for i in op.inputs)
        if len(s0) != len(s1) or not 1 <= len(s0) <= 3 or len(out_shape) != len(s0):
            return None
        n0, n1 = int(np.prod(s0)), int(np.prod(s1))
        for axis in range(len(s0)):
            if any(a != b for k, (a, b) in enumerate(zip(s0, s1, strict=True)) if k != axis):
                continue
            want = np.concatenate(
                [np.arange(n0).reshape(s0), (n0 + np.arange(n1)).reshape(s1)], axis=axis
            )
            if want.shape == out_shape and np.array_equal(want.reshape(-1), index):
                name = self.emit(
                    {
                        "class_name": "Concatenate",
                        "op": f"concatenate{len(s0)}d",
                        "name": _layer_name(op.name, self.used),
                        "inputs": [self.layer_of[i] for i in op.inputs],
                        "axis": axis + 1,
                    },
                    {"result": _ap(self.t(op.output))},
                )
                return "Concatenate", name
        return None

    def _gather_dense(
        self, op: Gather, index: np.ndarray, out_shape: tuple[int, ...], shifts: tuple[int, ...]
    ) -> str:
        """Any index map: flatten (and concatenate) the inputs, a Dense of 0/1 weights, reshape.

        Each output is one product ``x * 1`` (or nothing: a padding zero), so the
        accumulator only needs the input's range at the output's binary point.
        """
        to = self.t(op.output)
        fo = to.frac
        parts: list[str] = []
        lo = hi = 0
        for k, (src, s) in enumerate(zip(op.inputs, shifts, strict=True)):
            xt = self.t(src)
            shape = tuple(self.g.tensors[src].shape)
            cur = self.layer_of[src]
            if len(shape) != 1:
                n = int(np.prod(shape))
                cur = self._reshape(f"{op.name}_flat{k}", cur, [n], _ap(xt))
            parts.append(cur)
            lo, hi = min(lo, xt.qmin << s), max(hi, xt.qmax << s)
        if len(parts) == 1:
            xt, s = self.t(op.inputs[0]), shifts[0]
            fw = fo - xt.frac - s  # weight 2**(fx + s - fo): golden's ``code << s`` in real terms
            cat = parts[0]
        else:
            if any(self.t(i).frac + s != fo for i, s in zip(op.inputs, shifts, strict=True)):
                raise UnsupportedOpError(
                    f"golden op {op.label}: input shifts {shifts} do not align the inputs' binary "
                    f"points with the output's (2**-{fo}); hls4ml concatenates real values"
                )
            union = _ap(type_for_range(lo, hi, fo))
            cat = parts[0]
            for k, nxt in enumerate(parts[1:], 1):
                cat = self.emit(
                    {
                        "class_name": "Concatenate",
                        "op": "concatenate1d",
                        "name": _layer_name(f"{op.name}_cat{k}", self.used),
                        "inputs": [cat, nxt],
                        "axis": 1,
                    },
                    {"result": union},
                )
            fw = 0
        n_in = sum(int(np.prod(self.g.tensors[i].shape)) for i in op.inputs)
        n_out = int(index.size)
        w = np.zeros((n_in, n_out), np.int64)
        keep = index >= 0
        w[index[keep], np.nonzero(keep)[0]] = 1
        acc = type_for_range(min(lo, -1), max(hi, 1), fo)
        accum = FixedType(True, max(acc.width + (0 if acc.signed else 1), to.width + 1), fo)
        name = self.emit(
            {
                "class_name": "Dense",
                "name": _layer_name(op.name, self.used),
                "inputs": [cat],
                "n_in": n_in,
                "n_out": n_out,
                "weight_data": _value(w, fw),
                "bias_data": np.zeros(n_out),
                "use_bias": True,
            },
            {
                "weight": _ap(_const_type(w, fw)),
                "bias": _ap(FixedType(False, 2, fo)),
                "accum": _ap(accum),
                "result": _ap(to),
            },
        )
        if len(out_shape) != 1:
            name = self._reshape(op.name + "_shape", name, list(out_shape), _ap(to))
        return name


def hls_layer_list(
    g: GoldenModel,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]], str, str]:
    """hls4ml layer dicts and per-layer ``Precision`` config for a golden model.

    Returns ``(layers, precisions, input_layer, output_layer)``; raises
    :class:`UnsupportedOpError` naming the first op hls4ml has no layer for.
    """
    b = _Builder(g)
    layers, in_name, out_name = b.build()
    return layers, b.precision, in_name, out_name


def convert_hls_from_golden(
    g: GoldenModel,
    project_dir: Path,
    *,
    name: str,
    part: str = DEFAULT_PART,
    clock_period: float = 5.0,
    reuse_factor: int = 1,
    trace: bool = True,
    onnx_path: Path | None = None,
) -> HlsDesign:
    """Write an hls4ml Vitis project (io_parallel) from the golden IR and compile its C-sim.

    Args:
        g: the golden model; every layer's types are its tensor types.
        project_dir: missing, empty or an earlier hls4ml project (replaced).
        name: project / top-function name (a C identifier).
        part, clock_period, reuse_factor: passed to hls4ml (ReuseFactor on every layer).
        trace: per-layer output recording in C-sim (``#ifndef __SYNTHESIS__`` only).
        onnx_path: the QONNX file ``g`` was compiled from; its SHA-256 goes into the
            project's metadata, so verify can tell whose firmware it is.

    Raises:
        UnsupportedOpError: a golden op has no exact hls4ml layer (named, one line).
        ConfigError: bad name / reuse factor, or an I/O type wider than 53 bits.
        DependencyError: g++ is missing.
    """
    project_dir = Path(project_dir)
    if not NAME_RE.match(name):
        raise ConfigError(
            f"name {name!r} must be a C identifier ([A-Za-z_][A-Za-z0-9_]*): it names the top function."
        )
    if reuse_factor < 1:
        raise ConfigError(f"reuse_factor must be >= 1; got {reuse_factor}.")
    for label, t in (("input type", g.input_type), ("output type", g.output_type)):
        if t.width > MAX_EXACT_DOUBLE_BITS:
            raise ConfigError(
                f"the golden model's {label} {t.hls()} is wider than {MAX_EXACT_DOUBLE_BITS} bits; "
                "C-sim values pass through double and would round."
            )
    builder = _Builder(g)
    layers, in_layer, out_layer = builder.build()
    precisions = builder.precision
    require_gxx()
    prepare_project_dir(project_dir)
    with quiet_hls4ml("import"):
        import hls4ml
        from hls4ml.model.graph import ModelGraph

    config = hls4ml.utils.config.create_config(
        output_dir=str(project_dir),
        project_name=name,
        backend="Vitis",
        part=part,
        clock_period=clock_period,
        io_type="io_parallel",
    )
    config["HLSConfig"] = {
        "Model": {
            "Precision": "ap_fixed<16,6>",
            "ReuseFactor": reuse_factor,
            "Strategy": "Latency",
        },
        "LayerName": {
            k: {"Precision": dict(v), "ReuseFactor": reuse_factor, **builder.extra.get(k, {})}
            for k, v in precisions.items()
        },
    }
    try:
        with quiet_hls4ml("ModelGraph.from_layer_list"):
            hls_model = ModelGraph.from_layer_list(config, layers, [in_layer], [out_layer])
    except EdgemlError:
        raise
    except Exception as exc:
        raise UnsupportedOpError(
            f"hls4ml could not build the golden-IR layer list: {type(exc).__name__}: {exc}"
        ) from exc
    if any(lay.class_name == "Softmax" for lay in hls_model.get_layers()):
        from edgeml.softmax import configure_hls_softmax

        configure_hls_softmax(hls_model, g.ops)
    _check_types(hls_model, precisions)

    output_layer = next(
        (lay.name for lay in hls_model.get_layers() if hls_model.outputs[0] in lay.outputs),
        out_layer,
    )
    return finish_project(
        hls_model,
        project_dir,
        name=name,
        what="the golden-IR hls4ml C-sim",
        trace=trace,
        input_type=g.input_type,
        output_type=g.output_type,
        input_shape=tuple(g.input_shape),
        output_shape=tuple(g.output_shape),
        output_layer=output_layer,
        meta={
            "route": "golden-ir",
            "onnx": str(onnx_path) if onnx_path else g.source,
            "onnx_sha256": sha256(onnx_path) if onnx_path else None,
            "part": part,
            "clock_period": clock_period,
            "reuse_factor": reuse_factor,
            "layer_types": {},
            "gather_layers": dict(builder.gather_kinds),
        },
    )


def _check_types(hls_model: Any, precisions: dict[str, dict[str, str]]) -> None:
    """Every layer we built must still be there with the result type we gave it.

    hls4ml's optimizers fuse layers whose types are unspecified; ours are all
    explicit, and this proves that none was fused away or retyped.
    """
    from edgeml.hls import fixed_from_hls4ml as fx

    layers = {lay.name: lay for lay in hls_model.get_layers()}
    conv = hls_model.config.backend.convert_precision_string
    for lname, prec in precisions.items():
        lay = layers.get(lname)
        if lay is None:
            continue  # hls4ml dropped a no-op (a Reshape / single-channel Transpose in io_parallel)
        want = fx(conv(prec["result"]))
        got = fx(lay.get_output_variable().type.precision)
        if want != got:
            raise EdgemlError(
                f"hls4ml changed the result type of layer {lname} from {prec['result']} to "
                f"{lay.get_output_variable().type.precision}; the golden-IR route needs it exact"
            )


#: random input vectors the QONNX route's C-sim must match golden on before it is kept
CHECK_VECTORS = 2000


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An error as one line, without convert_hls's pointer to the README (this route continues)."""
    text = " ".join(str(exc).split()).split(" See the README")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mismatches(g: GoldenModel, design: HlsDesign, x: np.ndarray) -> int:
    """Vectors whose C-sim output codes differ from golden's (an off-grid output counts as all)."""
    ref = g.predict(x).reshape(len(x), -1)
    try:
        got = design.predict_int(x).reshape(len(x), -1)
    except ValueError:
        return len(x)
    return int((ref != got).any(axis=1).sum())


def convert_for_golden(
    onnx_path: Path,
    g: GoldenModel,
    project_dir: Path,
    *,
    name: str,
    part: str = DEFAULT_PART,
    clock_period: float = 5.0,
    reuse_factor: int = 1,
    trace: bool = True,
    check_vectors: int = CHECK_VECTORS,
    seed: int = 0,
    accum_types: dict[str, str] | None = None,
) -> tuple[HlsDesign, dict[str, Any]]:
    """The hls4ml project for a golden model: the QONNX route if it is exact, else the golden-IR route.

    hls4ml's QONNX front end is tried first (its project is what hls4ml users
    know), unless :func:`edgeml.hls.qonnx_route_hazards` finds ops it converts
    wrongly without an error (table activations such as Tanh / Sigmoid, a MatMul
    of two activations, torch's Resize): then the reason names those nodes and
    the QONNX route is skipped. It is kept only if it converts and its C-sim
    equals golden on ``check_vectors`` random input codes (integer compare);
    otherwise the project is rebuilt from the golden IR
    (:func:`convert_hls_from_golden`).

    ``accum_types`` (hls4ml ``Precision.accum`` per Dense/Conv node) applies to the
    QONNX route. Returns the design and a record for ``hls.json``: ``route`` (``"qonnx"`` or
    ``"golden-ir"``), ``route_reason`` (one line: why the QONNX route was not
    used, or None) and ``check`` (vectors compared and mismatches of the kept route).

    Raises:
        UnsupportedOpError: neither route can build this graph (both reasons, one line each).
        MismatchError: the golden-IR route's C-sim differs from golden (a bug in this module).
    """
    from edgeml.errors import DependencyError, MismatchError
    from edgeml.hls import convert_hls, qonnx_route_hazards

    onnx_path, project_dir = Path(onnx_path), Path(project_dir)
    rng = np.random.default_rng(seed)
    t = g.input_type
    x = rng.integers(t.qmin, t.qmax + 1, size=(check_vectors, *g.input_shape), dtype=np.int64)
    common = {
        "name": name,
        "part": part,
        "clock_period": clock_period,
        "reuse_factor": reuse_factor,
        "trace": trace,
    }
    reason: str | None = None
    try:
        hazards = qonnx_route_hazards(onnx_path)
    except Exception as exc:  # an unreadable file: convert_hls says so in its own words
        logger.debug("hls: pre-check skipped: %s", exc)
        hazards = []
    if hazards:
        more = f" (+{len(hazards) - 3} more)" if len(hazards) > 3 else ""
        reason = (
            "hls4ml's QONNX front end would convert this graph wrongly without an error: "
            + "; ".join(hazards[:3])
            + more
        )
    else:
        try:
            design = convert_hls(
                onnx_path,
                project_dir,
                input_type=g.input_type,
                output_type=g.output_type,
                accum_types=accum_types,
                **common,
            )
        except DependencyError:
            raise
        except EdgemlError as exc:
            reason = f"hls4ml's QONNX front end failed: {_one_line(exc)}"
    if reason is None:
        bad = _mismatches(g, design, x)
        if not bad:
            _tag_route(project_dir, "qonnx")
            return design, {
                "route": "qonnx",
                "route_reason": None,
                "check": {"vectors": check_vectors, "mismatches": 0},
            }
        reason = (
            f"hls4ml's QONNX-route C-sim differs from the golden model on {bad}/{check_vectors} "
            "random input vectors"
        )
    logger.info("hls: %s; building the project from the golden IR", reason)
    try:
        design = convert_hls_from_golden(g, project_dir, onnx_path=onnx_path, **common)
    except UnsupportedOpError as exc:
        raise UnsupportedOpError(f"{reason}; golden-IR route: {_one_line(exc)}") from exc
    bad = _mismatches(g, design, x)
    if bad:
        raise MismatchError(
            f"golden-IR hls4ml C-sim differs from the golden model on {bad}/{check_vectors} "
            f"random vectors ({project_dir}); {reason}"
        )
    return design, {
        "route": "golden-ir",
        "route_reason": reason,
        "check": {"vectors": check_vectors, "mismatches": 0},
    }


def _tag_route(project_dir: Path, route: str) -> None:
    """Record which route wrote a project in its ``edgeml_hls.json``."""
    meta_path = Path(project_dir) / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["route"] = route
    meta_path.write_text(json.dumps(meta, indent=2))
