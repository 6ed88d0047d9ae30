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
    GoldenModel,
    MaxPool,
    Relu,
    Requant,
    Reshape,
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


class _Builder:
    """Walks the golden ops and emits hls4ml layer dicts plus per-layer precision config."""

    def __init__(self, g: GoldenModel) -> None:
        self.g = g
        self.layers: list[dict[str, Any]] = []
        self.precision: dict[str, dict[str, str]] = {}
        self.used: set[str] = set()
        self.layer_of: dict[str, str] = {}  # golden tensor -> hls4ml layer computing it

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
        w, fw, b, fb, accum, result = self._dense_types(op)
        name = _layer_name(op.name, self.used)
        self.emit(
            {
                "class_name": "Dense",
                "name": name,
                "inputs": [self.layer_of[op.inputs[0]]],
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
        self.layer_of[op.output] = name

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
    layers, precisions, in_layer, out_layer = hls_layer_list(g)
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
            k: {"Precision": dict(v), "ReuseFactor": reuse_factor} for k, v in precisions.items()
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
) -> tuple[HlsDesign, dict[str, Any]]:
    """The hls4ml project for a golden model: the QONNX route if it is exact, else the golden-IR route.

    hls4ml's QONNX front end is tried first (its project is what hls4ml users
    know). It is kept only if it converts and its C-sim equals golden on
    ``check_vectors`` random input codes (integer compare); otherwise the
    project is rebuilt from the golden IR (:func:`convert_hls_from_golden`).

    Returns the design and a record for ``hls.json``: ``route`` (``"qonnx"`` or
    ``"golden-ir"``), ``route_reason`` (one line: why the QONNX route was not
    used, or None) and ``check`` (vectors compared and mismatches of the kept route).

    Raises:
        UnsupportedOpError: neither route can build this graph (both reasons, one line each).
        MismatchError: the golden-IR route's C-sim differs from golden (a bug in this module).
    """
    from edgeml.errors import DependencyError, MismatchError
    from edgeml.hls import convert_hls

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
        design = convert_hls(
            onnx_path, project_dir, input_type=g.input_type, output_type=g.output_type, **common
        )
    except DependencyError:
        raise
    except EdgemlError as exc:
        reason = f"hls4ml's QONNX front end failed: {_one_line(exc)}"
    else:
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
