"""hls4ml 1.3's Softmax (``softmax_stable``, io_parallel) as integer arithmetic, and its parameters.

hls4ml computes a Softmax over the last axis as (``nnet_activation.h``)::

    d_i   = inp_norm_t(x_max - x_i)                 # TRN, SAT here (see below)
    e_i   = exp_table[top N bits of d_i]            # exp_table_t, filled with float expf
    s     = sum_i accum_t(e_i)                      # exact: accum_t is wide enough
    inv   = invert_table[top M bits of inv_inp_t(s)]
    y_i   = res_t(e_i * inv)                        # TRN, WRAP (the output type)

with both tables computed in ``float`` and cast to the table type with its rounding
(``AP_RND``: half up) and saturation. :func:`softmax_params` chooses every type
from the logits' fixed-point type so the table is indexed well (hls4ml's ``auto``
precision makes the input so wide that the index is always 0, the known pitfall)
and returns them as :class:`SoftmaxParams`; :func:`softmax_codes` is the golden
integer computation and :func:`hls_softmax_attributes` the hls4ml layer
attributes that make the C-sim compute exactly the same thing.

Differences from hls4ml's defaults, each chosen for faithfulness:

* ``inp_norm_t`` saturates (``AP_SAT``) and spans ``[0, 2**range_bits)``: hls4ml's
  default ``ap_ufixed<W-1, I-1>`` wraps when the logits spread over more than half
  their range (``exp(-9)`` became ``exp(-1)``); differences beyond the range give
  ``exp(-2**range_bits)``, which is about 0 anyway.
* the exp table is indexed by every bit of ``d`` down to ``2**-(N - range_bits)``
  (``N = log2 table_size``), so equal logits and distinct logits stay distinct.
* the inverse table is indexed by the sum at ``inv_table_size`` resolution over
  ``[0, 2**ceil(log2(n+1)))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeml.fixed import FixedType


@dataclass(frozen=True)
class SoftmaxParams:
    """Every constant of one Softmax, in integer form (all shifts are right shifts, floor).

    ``in_frac`` is the fractional bits the logits' codes have (``exp_scale`` corrects a
    non power-of-two LSB). ``d_norm = min((x_max - x) >> norm_shift, norm_max)`` indexes
    ``exp_table`` (codes with ``exp_type.frac`` fractional bits); the sum of the looked-up
    codes ``>> inv_shift`` indexes ``inv_table`` (``inv_type.frac``); the output is
    ``(e * inv) >> out_shift`` in ``out_type``.
    """

    n: int
    in_frac: int
    exp_scale: float
    norm_type: FixedType  # unsigned; its frac / width define the exp table's index
    exp_type: FixedType
    accum_type: FixedType
    inv_inp_type: FixedType
    inv_type: FixedType
    out_type: FixedType

    @property
    def norm_shift(self) -> int:
        return self.in_frac - self.norm_type.frac

    @property
    def norm_max(self) -> int:
        return (1 << self.norm_type.width) - 1

    @property
    def inv_shift(self) -> int:
        return self.exp_type.frac - self.inv_inp_type.frac

    @property
    def out_shift(self) -> int:
        return self.exp_type.frac + self.inv_type.frac - self.out_type.frac

    @property
    def exp_table_size(self) -> int:
        return 1 << self.norm_type.width

    @property
    def inv_table_size(self) -> int:
        return 1 << self.inv_inp_type.width


def _ap_ufixed_from_float(v: np.ndarray, t: FixedType) -> np.ndarray:
    """Cast float values to ``ap_ufixed`` codes with ``AP_RND`` (half up) and ``AP_SAT``."""
    v = np.asarray(v, np.float64)
    hi = (1 << t.width) - 1
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.floor(v * 2.0**t.frac + 0.5)
    scaled = np.where(np.isnan(scaled), 0, scaled)
    return np.clip(scaled, 0, hi).astype(np.int64)


def exp_table(p: SoftmaxParams) -> np.ndarray:
    """``init_exp_table(negative=true)``: ``exp_table_t(expf(-(float)idx_val * exp_scale))``."""
    idx = np.arange(p.exp_table_size, dtype=np.float64)
    x = (idx * 2.0**-p.norm_type.frac).astype(np.float32) * np.float32(p.exp_scale)
    # float32 exp: glibc's expf is within 0.502 ulp; computing in float64 and rounding
    # to float32 gives the correctly rounded value, which is what expf returns here.
    e = np.exp(-x.astype(np.float64)).astype(np.float32)
    return _ap_ufixed_from_float(e, p.exp_type)


def inv_table(p: SoftmaxParams) -> np.ndarray:
    """``init_invert_table``: ``inv_table_t(1 / (float)idx_val)`` (index 0: 1/0 saturates)."""
    idx = np.arange(p.inv_table_size, dtype=np.float64)
    x = (idx * 2.0**-p.inv_inp_type.frac).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.float32(1.0) / x
    return _ap_ufixed_from_float(inv, p.inv_type)


def softmax_params(
    in_type: FixedType,
    in_scale: float,
    n: int,
    *,
    table_bits: int = 10,
    inv_table_bits: int = 12,
    range_bits: int = 3,
    table_width: int = 18,
    out_width: int = 18,
) -> SoftmaxParams:
    """Choose hls4ml Softmax types for ``n`` logits of type ``in_type`` (LSB ``in_scale``).

    ``table_bits`` / ``inv_table_bits``: log2 of the exp / inverse table sizes (hls4ml's
    default is 1024 = 2**10); ``range_bits``: ``x_max - x`` saturates at
    ``2**range_bits`` (``exp(-8)`` = 3.4e-4 for 3); ``table_width``: bits of both tables
    (``ap_ufixed<W, 1>``, hls4ml's default width is 18); ``out_width``: bits of the
    output ``ap_ufixed<out_width, 1>`` (values in [0, 1]).
    """
    if n < 1:
        raise ValueError(f"Softmax over {n} elements")
    # codes' fractional bits: the power of two at or below the LSB, plus a scale factor
    f_in = -math.floor(math.log2(in_scale))
    exp_scale = float(in_scale * 2.0**f_in)  # 1.0 for power-of-two scales, else in (1, 2)
    fn = min(f_in, table_bits - range_bits)
    i_n = max(range_bits, 1 - fn)
    norm = FixedType(False, i_n + fn, fn)
    ext = max(1, math.ceil(math.log2(n))) if n > 1 else 0
    exp_t = FixedType(False, table_width, table_width - 1)
    accum = FixedType(False, table_width + ext, table_width - 1)
    ii = n.bit_length()  # 2**ii > n >= the sum
    inv_inp = FixedType(False, inv_table_bits, min(inv_table_bits - ii, exp_t.frac))
    inv_t = FixedType(False, table_width, table_width - 1)
    out_t = FixedType(False, out_width, out_width - 1)
    return SoftmaxParams(n, f_in, exp_scale, norm, exp_t, accum, inv_inp, inv_t, out_t)


def _shr(x: np.ndarray, s: int) -> np.ndarray:
    return x >> s if s >= 0 else x << (-s)


def softmax_codes(
    x: np.ndarray, p: SoftmaxParams, exp_tab: np.ndarray, inv_tab: np.ndarray
) -> np.ndarray:
    """Output codes of hls4ml's ``softmax_stable`` over the last axis of logit codes ``x``."""
    d = x.max(axis=-1, keepdims=True) - x  # >= 0
    idx = np.minimum(_shr(d, p.norm_shift), p.norm_max)
    e = exp_tab[idx]
    s = e.sum(axis=-1, keepdims=True)
    inv = inv_tab[_shr(s, p.inv_shift) & ((1 << p.inv_inp_type.width) - 1)]
    return _shr(e * inv, p.out_shift) & ((1 << p.out_type.width) - 1)


def hls_softmax_attributes(p: SoftmaxParams, layer_name: str) -> dict[str, Any]:
    """hls4ml Softmax layer attributes (``NamedType`` types, table sizes) reproducing ``p``."""
    from hls4ml.model.types import (
        FixedPrecisionType,
        NamedType,
        RoundingMode,
        SaturationMode,
    )

    def t(ft: FixedType, suffix: str, rnd: bool = False, sat: bool = False) -> Any:
        prec = FixedPrecisionType(
            ft.width,
            ft.width - ft.frac,
            ft.signed,
            rounding_mode=RoundingMode.RND if rnd else RoundingMode.TRN,
            saturation_mode=SaturationMode.SAT if sat else SaturationMode.WRAP,
        )
        return NamedType(f"{layer_name}_{suffix}", prec)

    return {
        "implementation": "stable",
        "exp_table_size": p.exp_table_size,
        "inv_table_size": p.inv_table_size,
        "table_size": max(p.exp_table_size, p.inv_table_size),
        "exp_scale": p.exp_scale,
        "inp_norm_t": t(p.norm_type, "inp_norm_t", sat=True),
        "exp_table_t": t(p.exp_type, "exp_table_t", rnd=True, sat=True),
        "inv_table_t": t(p.inv_type, "inv_table_t", rnd=True, sat=True),
        "accum_t": t(p.accum_type, "accum_t"),
        "inv_inp_t": t(p.inv_inp_type, "inv_inp_t"),
    }


def configure_hls_softmax(hls_model: Any, ops: list[Any]) -> list[str]:
    """Give every hls4ml Softmax layer the types and tables of the golden Softmax op of its name.

    ``ops`` are the golden model's ops; a Softmax layer is matched to the golden op with
    the same (sanitised) node name. Sets ``inp_norm_t``, ``exp_table_t``, ``inv_table_t``,
    ``accum_t``, ``inv_inp_t``, the table sizes, ``exp_scale`` and the result type, so the
    C-sim computes what :func:`softmax_codes` computes. Returns the configured layer names.
    Raises ``UnsupportedOpError`` for a Softmax layer with no golden op.
    """
    from hls4ml.backends.fpga.fpga_types import APTypeConverter, HLSTypeConverter
    from hls4ml.backends.template import Template
    from hls4ml.model.optimizer import get_backend_passes, get_optimizer
    from hls4ml.model.types import FixedPrecisionType

    from edgeml.errors import UnsupportedOpError

    golden = {op.name: op for op in ops if getattr(op, "kind", "") == "softmax"}
    done = []
    for layer in hls_model.get_layers():
        if layer.class_name != "Softmax":
            continue
        op = golden.get(layer.name) or next(
            (o for n, o in golden.items() if n.replace(".", "_").replace("/", "_") == layer.name),
            None,
        )
        if op is None:
            raise UnsupportedOpError(
                f"hls4ml Softmax layer '{layer.name}' has no golden Softmax op of that name "
                f"(golden Softmax ops: {sorted(golden)}); cannot set its tables exactly"
            )
        p = op.params
        conv = HLSTypeConverter(precision_converter=APTypeConverter())
        for key, value in hls_softmax_attributes(p, layer.name).items():
            # types are converted to the backend's ap_ types, as hls4ml's TransformTypes does
            layer.set_attr(key, conv.convert(value) if key.endswith("_t") else value)
        var = layer.get_output_variable()
        ot = p.out_type
        var.type.precision = FixedPrecisionType(ot.width, ot.width - ot.frac, ot.signed)
        var.type.convert_precision(APTypeConverter())
        # hls4ml rendered the layer's C++ config during conversion: render it again
        for opt_name in get_backend_passes(hls_model.config.backend.name):
            opt = get_optimizer(opt_name)
            if isinstance(opt, Template) and opt.match(layer):
                opt.transform(hls_model, layer)
        done.append(layer.name)
    return done
