"""Verilog from the golden integer model, via da4ml, simulated bit-exactly with Verilator.

Route: every golden op (:mod:`edgeml.golden`) is re-applied to da4ml symbolic
fixed-point variables (:func:`trace_golden`), da4ml turns the resulting
dataflow graph into shift-add Verilog (combinational, or pipelined with a
fixed latency), and Verilator compiles it into a shared library that runs
batches from Python (:meth:`RtlDesign.predict_int`).

**Code space.** The trace runs on integer *codes*, not real values: each
input element is a variable with range ``[qmin, qmax]`` of the golden input
type and step 1. A binary point only renames bits, so the Verilog is the same
bit for bit as a trace in real units, and every port carries exactly the
golden model's codes (two's complement when signed). No float conversion is
involved anywhere, so exactness never depends on float formatting.

**Ports.** ``model_inp`` of the generated top holds the graph input
flattened in C order of the *graph-input layout* (``g.input_shape``, e.g.
NCHW ``(1, 8, 8)`` -> element ``j = c*64 + h*8 + w``), element ``j`` at bits
``[j*w_in +: w_in]`` of ``{name}_wrapper`` (da4ml's uniform-width wrapper;
the bare ``{name}`` top packs elements at their minimal widths). Outputs
follow ``g.output_shape`` flattened the same way.

**Ops.** Constant matrices (Dense, Conv, also per token on (tokens, features)
inputs) become da4ml's shift-add constant-matrix logic; Gather (Slice, Concat,
Pad, Split, Resize, broadcasts) is pure wiring with constant-zero pads;
Lookup (Tanh, Sigmoid, ...) is a ROM (``src/memfiles/*.mem``) over the
input's reachable codes; MulTensors / MatMulTensors of two activations are
variable-by-variable multipliers (``static/multiplier.v``) and adder trees.

**Per-op localisation.** Internal Verilog wires carry no golden names, so
Verilator cannot report a layer. :meth:`RtlDesign.trace_int` instead
evaluates the traced da4ml program (the exact graph the Verilog is emitted
from) up to every golden tensor with da4ml's interpreter. If the RTL output
disagrees with golden while every traced tensor agrees, the fault is in code
generation / simulation rather than in an op's mirror; otherwise the first
divergent tensor names the layer (see :func:`edgeml.verify.run_level`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.errors import (
    ConfigError,
    DependencyError,
    EdgemlError,
    InputRangeError,
    UnsupportedOpError,
)
from edgeml.fixed import FixedType
from edgeml.golden import (
    ROUNDING_MODES,
    AddTensors,
    Affine,
    Bipolar,
    Conv,
    Dense,
    Gather,
    GoldenModel,
    LeakyRelu,
    Lookup,
    MatMulTensors,
    MaxPool,
    MulTensors,
    Op,
    Relu,
    Requant,
    Reshape,
    Sign,
    Softmax,
    SubTensors,
    Transpose,
)

log = logging.getLogger(__name__)

#: Golden op kinds :func:`trace_golden` mirrors.
SUPPORTED_RTL_OPS: tuple[str, ...] = (
    "requant",
    "affine",
    "dense",
    "conv",
    "relu",
    "maxpool",
    "reshape",
    "transpose",
    "add",
    "bipolar",
    "sign",
    "leakyrelu",
    "softmax",
    "gather",
    "lookup",
    "sub",
    "mul",
    "matmul",
)
#: Golden op kinds that only move data (wiring, no logic): skipped when naming the op a
#: wire or register belongs to, since their values are their producers' values.
LAYOUT_KINDS: tuple[str, ...] = ("reshape", "transpose", "gather")
#: Rounding modes of Requant the RTL implements exactly: all of the golden model's.
SUPPORTED_ROUNDING: tuple[str, ...] = ROUNDING_MODES
#: da4ml's Verilator binder moves every port element through an int32.
MAX_PORT_BITS = 32
#: da4ml's constant-matrix solver takes the matrix as float32: integers must stay exact.
_MAX_WEIGHT = 1 << 24
_META_FILE = "edgeml_rtl.json"
_BUILD_FILE = "edgeml_build.json"


class RtlBuildError(EdgemlError):
    """Verilator / the C++ compiler failed on generated RTL (the log tail is in the message)."""


# --------------------------------------------------------------------------- symbolic kernels


def _fv():  # lazy: da4ml is heavy to import
    from da4ml.trace import FixedVariable

    return FixedVariable


def _wrap(v: Any, k: int, i: int, f: int) -> Any:
    """``v.quantize(k, i, f, "WRAP", "TRN")`` (drop bits: free in hardware), constants folded exactly.

    da4ml 0.6 folds the wrap of a *constant* modulo ``2**(i + 1)`` whether or not the
    target is signed, one bit too wide for unsigned (``k=0``) targets, which hold
    ``2**i`` values: ``floor(11.48)`` wrapped to one unsigned bit came out 3, not 1.
    Constants appear wherever a channel is dead (all-zero weights: the bias alone),
    so a constant is wrapped here as the golden model does; variables go to da4ml.
    """
    if v.low != v.high:
        return v.quantize(k, i, f, "WRAP", "TRN")
    if k + i + f <= 0:
        return _fv().from_const(0, v.hwconf)
    scale = Fraction(2) ** f  # codes of the target's LSB 2**-f
    lo = -(1 << (i + f)) if k else 0
    code = (math.floor(Fraction(v.low) * scale) - lo) % (1 << (k + i + f)) + lo
    return _fv().from_const(float(code / scale), v.hwconf)  # a dyadic code: exact in a float


def _canon(v: Any) -> Any:
    """A constant as a plain da4ml constant (scale factor 1); anything else unchanged.

    da4ml folds e.g. ``-floor(v)`` of a range that floors to 0 into a zero carrying a
    scale factor of -1; as a branch of ``msb_mux`` its Python interpreter then returned
    -1 where the C++ one (and golden) give +1 (HALF_UP of ``[-1, 4] / 8`` at 4).
    """
    if v.low != v.high or (v._factor == 1 and v.opr == "const"):
        return v
    return _fv().from_const(float(v.low), v.hwconf)


def _floor(v: Any) -> Any:
    """``floor(v)`` as a truncation of fractional bits (free in hardware: wires are dropped).

    Integer and sign bits are given one bit of margin, so nothing wraps; da4ml
    keeps the exact (tight) range afterwards. A variable within ``(-1, 1)`` (integer
    bits ``i < 0``) has no integer bit for da4ml to keep: its ``quantize`` to
    ``f = 0`` returns the constant 0, though ``floor`` of a negative value is -1.
    Its floor is the sign bit, negated; a constant is folded exactly.
    """
    k, i, f = v.kif
    if f <= 0:
        return v
    if v.low == v.high:
        return _fv().from_const(float(math.floor(Fraction(v.low))), v.hwconf)
    if i < 0:
        return -v.is_negative() if v.low < 0 else _fv().from_const(0, v.hwconf)
    return _canon(_wrap(v, k, i + 1, 0))


def _round_shift(y: Any, shift: int, mode: str) -> Any:
    """Symbolic twin of :func:`edgeml.golden.round_shift` on one variable.

    A right shift by ``d`` is a move of the binary point (``y * 2**-d``) followed
    by dropping the fractional bits. Half-to-even (QONNX ``ROUND``) is built
    as ``floor(z + 0.5 - 2**-d + lsb*2**-d)`` with ``z = y/2**d`` and
    ``lsb = floor(z) mod 2`` (bit ``d`` of ``y``): hardware rounds half up with
    one adder, and the extra ``lsb`` term turns ties toward the even result,
    as ``numpy.round`` / QONNX do. da4ml only offers truncation and half-up
    rounding, so this costs one more narrow adder per element, but matching the
    golden model bit for bit is the point (half-up differs on ~5 % of outputs).
    """
    if shift <= 0:
        return y * float(2**-shift)
    d = shift
    ulp = 2.0**-d
    if mode == "FLOOR":
        return _floor(y * ulp)
    if mode == "CEIL":
        return _canon(-_floor((-y) * ulp))
    if mode == "HALF_EVEN":
        z = y * ulp
        lsb = _wrap(_floor(z), 0, 1, 0)  # floor(z) mod 2
        return _floor(z + (0.5 - ulp) + lsb * ulp)
    # Sign-symmetric modes: round |y| then restore the sign with a 2:1 mux.
    bias = {"HALF_UP": 2 ** (d - 1), "HALF_DOWN": 2 ** (d - 1) - 1, "DOWN": 0, "UP": 2**d - 1}.get(
        mode
    )
    if bias is None:
        raise UnsupportedOpError(
            f"rounding mode {mode!r}; the RTL supports {', '.join(SUPPORTED_ROUNDING)}"
        )
    pos = _floor((y + bias) * ulp)
    if y.low >= 0:
        return pos
    neg = _canon(-_floor((-y + bias) * ulp))
    if y.high < 0:
        return neg
    return y.is_negative().msb_mux(neg, pos)


#: Widest value (bits) da4ml 0.6's C++ interpreter (``CombLogic.predict``) wraps correctly: its
#: ``DType::int_min`` is ``1 << (width - 1)`` in int32, so a wrap, ReLU, mux or input op wider
#: than 32 bits maps negative values to positive ones (off by ``2**width`` in the op's LSB).
#: da4ml's Python ``CombLogic.__call__`` is right. (Its wrapped wide products also left a
#: clamp mux on a constant at a ``2**36`` LSB that the Verilog evaluates differently from
#: that Python model: see :func:`_cmul`.)
_INTERP_WRAP_BITS = 32


def _cmul(v: Any, c: int | float) -> Any:
    """``v * c`` for a constant ``c``, exact in da4ml's C++ interpreter at any width.

    da4ml's ``*`` sums the canonical-signed-digit terms of ``c`` and wraps every partial
    sum to its exact range, which is free in hardware but, above 32 bits, evaluated
    wrongly by da4ml's interpreter (see ``_INTERP_WRAP_BITS``). When the product is that
    wide, the same digit terms are summed without the wraps (a balanced adder tree):
    identical values, ranges a bit or two looser. Measured on a LeakyRelu(0.1) -> Div 3
    -> Quant chain with 44-bit LeakyRelu codes and 61-bit requantisation products, 10,000
    vectors: with da4ml's ``*`` 6,334 differ from golden in the C++ interpreter and 4,557
    in Verilator (the netlist interpreter agrees with Verilator: a clamp mux on a
    constant with a ``2**36`` LSB); with this, 0 and 0, for about 2 % more LUTs.
    """
    c = float(c)
    if c == 1.0:
        return v
    y = v * c
    if v.low == v.high or c == 0 or sum(y.kif) <= _INTERP_WRAP_BITS - 2:
        return y
    from da4ml.trace.fixed_variable import to_csd_powers

    return _tree_sum([v * p for p in to_csd_powers(c)])  # powers of two: no new op, no wrap


def _tree_sum(terms: list[Any]) -> Any:
    """Sum of da4ml variables as a balanced adder tree (depth ``ceil(log2 n)``, no wraps).

    A left-to-right chain (``functools.reduce``) would be ``n - 1`` adders deep: the
    same values and adders, but a longer critical path and more pipeline stages.
    """
    if not terms:
        raise ValueError("_tree_sum of no terms")
    while len(terms) > 1:
        terms = [a + b for a, b in zip(terms[::2], terms[1::2], strict=False)] + terms[
            len(terms) & ~1 :
        ]
    return terms[0]


def _interp_wide_ops(comb: Any) -> int:
    """How many ops of ``comb`` da4ml's C++ interpreter may evaluate wrongly (wraps over 32 bits).

    Inputs (-1), ReLU (2), wraps (3) and muxes (+-6) go through its ``quantize``;
    adders, constant adds and multipliers are plain int64 arithmetic.
    """
    from da4ml.types import minimal_kif

    return sum(
        1
        for o in comb.ops
        if o.opcode in (-1, 2, 3, 6, -6) and sum(minimal_kif(o.qint)) > _INTERP_WRAP_BITS
    )


def _clip(v: Any, lo: int, hi: int) -> Any:
    """Saturate to ``[lo, hi]``: two compare-and-mux stages, skipped when the range already fits.

    Hardware saturates (rather than wraps) because the quantizer clamps; a
    wrapped code would turn a large activation into a large one of opposite sign.
    """
    return v.max_of(lo).min_of(hi)


def _ew(fn: Callable[..., Any], x: np.ndarray, *params: Any) -> np.ndarray:
    """Apply ``fn(var, *ints)`` element-wise; ``params`` broadcast like numpy (per channel = last axis)."""
    ps = [np.broadcast_to(np.asarray(p, dtype=np.int64), x.shape) for p in params]
    out = np.empty(x.shape, dtype=object)
    for idx in np.ndindex(x.shape):
        out[idx] = fn(x[idx], *(int(p[idx]) for p in ps))
    return out


def _const_matmul(rows: np.ndarray, w: np.ndarray, cache: dict | None = None) -> np.ndarray:
    """``rows (..., K) @ w (K, M)`` with a constant integer matrix (da4ml CMVM: shift-adds, no DSPs).

    Every row (a token of a (tokens, features) input, an output pixel of a Conv) gets
    its own adders. What is shared is only the *solution* of da4ml's CMVM problem (which
    adder graph computes ``x @ w``): it depends only on ``w`` and on the rows' value
    ranges and arrival latencies, so rows with identical ones reuse it instead of
    solving again (as da4ml's ``@`` would, once per row). The solver is deterministic,
    so the netlist is the same as solving each row (checked: identical da4ml ops);
    only the trace is faster. ``cache`` carries solutions across calls (a Conv's pixels).
    """
    from da4ml.cmvm import solve
    from da4ml.trace.fixed_variable import QInterval

    if w.size and int(np.abs(w).max()) >= _MAX_WEIGHT:
        raise UnsupportedOpError(
            f"weight codes up to {int(np.abs(w).max())} exceed 2**24; da4ml's constant-matrix "
            "solver takes float32 matrices, so weights must stay below 24 bits"
        )
    k, m = w.shape
    if rows.shape[-1] != k:
        raise UnsupportedOpError(f"matrix product of {rows.shape} with a ({k}, {m}) matrix")
    if all(v.low == v.high for v in rows.reshape(-1)):  # constants only: a constant result
        hw = rows.reshape(-1)[0].hwconf
        c = np.array([float(v.low) for v in rows.reshape(-1)]).reshape(rows.shape) @ w
        return np.vectorize(lambda z: _fv().from_const(float(z), hw), otypes=[object])(c)
    mat = np.ascontiguousarray(w.astype(np.float32))  # what da4ml's cmvm hands its solver
    wkey = (w.shape, mat.tobytes())
    cache = {} if cache is None else cache
    flat = rows.reshape(-1, k)
    out = np.empty((len(flat), m), dtype=object)
    for r, vec in enumerate(flat):
        qints = [QInterval(float(v.low), float(v.high), float(v.step)) for v in vec]
        lats = [float(v.latency) for v in vec]
        key = (wkey, tuple(qints), tuple(lats))
        sol = cache.get(key)
        if sol is None:
            hw = vec[0].hwconf
            sol = cache[key] = solve(
                mat,
                qintervals=qints,
                latencies=lats,
                adder_size=hw.adder_size,
                carry_size=hw.carry_size,
            )
        out[r] = sol(vec)
    return out.reshape((*rows.shape[:-1], m))


def _dense_tail(acc: np.ndarray, op: Dense) -> np.ndarray:
    bias = np.broadcast_to(np.asarray(op.effective_bias(), np.int64), acc.shape[-1:])
    scale = float(2**op.acc_shift)
    return _ew(lambda v, b: (v * scale if op.acc_shift else v) + b, acc, bias)


def _trace_dense(op: Dense, x: np.ndarray) -> np.ndarray:
    w = np.asarray(op.effective_weight(), np.int64)
    return _dense_tail(_const_matmul(x, w), op)


def _trace_conv(op: Conv, x: np.ndarray) -> np.ndarray:
    """Conv as one constant-matrix product per output pixel (im2col); zero padding drops taps."""
    w = np.asarray(op.effective_weight(), np.int64)  # (kh, kw, cin, cout)
    kh, kw, _, cout = w.shape
    _, h, wd, _ = x.shape
    t, left, b, r = op.pads
    sh, sw = op.strides
    oh = (h + t + b - kh) // sh + 1
    ow = (wd + left + r - kw) // sw + 1
    acc = np.empty((1, oh, ow, cout), dtype=object)
    cache: dict = {}  # interior pixels share one CMVM solution (see _const_matmul)
    for oy in range(oh):
        for ox in range(ow):
            taps, wrows = [], []
            for ky in range(kh):
                iy = oy * sh + ky - t
                if not 0 <= iy < h:
                    continue
                for kx in range(kw):
                    ix = ox * sw + kx - left
                    if not 0 <= ix < wd:
                        continue
                    taps.append(x[0, iy, ix, :])
                    wrows.append(w[ky, kx])
            if not taps:  # a pixel that sees only padding: bias alone
                acc[0, oy, ox, :] = [
                    _fv().from_const(0, x.reshape(-1)[0].hwconf) for _ in range(cout)
                ]
                continue
            vec = np.concatenate(taps)
            acc[0, oy, ox, :] = _const_matmul(vec, np.concatenate(wrows).reshape(-1, cout), cache)
    return _dense_tail(acc, op)


def _trace_maxpool(op: MaxPool, x: np.ndarray) -> np.ndarray:
    """Max over each window (comparator tree); padded taps are skipped, like ONNX's -inf padding."""
    _, h, wd, c = x.shape
    t, left, b, r = op.pads
    kh, kw = op.kernel
    sh, sw = op.strides
    oh = (h + t + b - kh) // sh + 1
    ow = (wd + left + r - kw) // sw + 1
    out = np.empty((1, oh, ow, c), dtype=object)
    for oy in range(oh):
        for ox in range(ow):
            ys = [oy * sh + ky - t for ky in range(kh) if 0 <= oy * sh + ky - t < h]
            xs = [ox * sw + kx - left for kx in range(kw) if 0 <= ox * sw + kx - left < wd]
            for ch in range(c):
                vals = [x[0, iy, ix, ch] for iy in ys for ix in xs]
                out[0, oy, ox, ch] = functools.reduce(lambda a, b_: a.max_of(b_), vals)
    return out


def _trace_requant(op: Requant, x: np.ndarray) -> np.ndarray:
    if op.rounding not in SUPPORTED_ROUNDING:
        raise UnsupportedOpError(
            f"op '{op.name}': rounding mode {op.rounding!r}; the RTL supports {', '.join(SUPPORTED_ROUNDING)}"
        )

    def one(v: Any, m: int, o: int) -> Any:
        y = _cmul(v, m)
        if o:
            y = y + o
        return _clip(_round_shift(y, op.shift, op.rounding), op.lo, op.hi)

    return _ew(one, x, op.mult, op.offset)


def _trace_bipolar(v: Any) -> Any:
    if v.low >= 0:
        return _fv().from_const(1, v.hwconf)
    if v.high < 0:
        return _fv().from_const(-1, v.hwconf)
    return v.is_negative() * -2.0 + 1  # +1 if v >= 0 else -1


def _trace_sign(v: Any) -> Any:
    """ONNX Sign on codes: ``(v > 0) - (v < 0)``, two sign-bit extractions."""
    pos = v.is_positive() if v.high > 0 else None
    neg = v.is_negative() if v.low < 0 else None
    if pos is None and neg is None:
        return _fv().from_const(0, v.hwconf)
    if neg is None:
        return pos
    if pos is None:
        return -neg
    return pos - neg


def _trace_leakyrelu(op: LeakyRelu, v: Any) -> Any:
    """``max(v, 0) * pos_mult + min(v, 0) * neg_mult``: two clamps and constant products.

    (A sign-bit mux of ``v * pos_mult`` and ``v * neg_mult`` would mix two da4ml
    variables of different scale factors, which its mux does not reconcile.)
    """
    pos = _cmul(v.max_of(0), op.pos_mult) if v.high > 0 and op.pos_mult else None
    neg = _cmul(v.min_of(0), op.neg_mult) if v.low < 0 and op.neg_mult else None
    if pos is None and neg is None:
        return _fv().from_const(0, v.hwconf)
    if pos is None or neg is None:
        return pos if neg is None else neg
    return pos + neg


def _unsigned(v: Any, width: int | None = None) -> Any:
    """Reinterpret an integer-step variable known to be ``>= 0`` as unsigned (free: drops the sign bit).

    da4ml's interval arithmetic cannot see that e.g. ``max(x) - x_i >= 0``; wrapping to
    ``width`` unsigned bits (default: just enough for ``v.high``) is exact for such
    values and gives the tight range a lookup table needs. With ``width`` smaller than
    the value needs, this is the golden model's ``& (2**width - 1)``.
    """
    bits = width if width is not None else max(int(v.high).bit_length(), 1)
    return _wrap(v, 0, bits, 0)


def _shr(v: Any, s: int) -> Any:
    """``v >> s`` (floor) for ``s >= 0``, ``v << -s`` otherwise, on an integer-step variable."""
    if s <= 0:
        return v * float(2**-s) if s else v
    return _floor(v * 2.0**-s)


def _lookup(v: Any, table: np.ndarray, base: int = 0) -> Any:
    """``table[v - base]`` for an integer variable in ``[base, base + len(table))``: a da4ml ROM.

    Only the entries the variable can reach go into the ROM (its ``.mem`` file),
    indexed by the variable's own bits, so no subtractor is needed for ``base``.
    """
    lo, hi, step = int(v.low) - base, int(v.high) - base, int(v.step)
    if lo < 0 or hi >= len(table):
        raise UnsupportedOpError(
            f"lookup index range [{lo + base}, {hi + base}] outside the table's "
            f"[{base}, {base + len(table) - 1}]"
        )
    if lo == hi:
        return _fv().from_const(float(table[lo]), v.hwconf)
    return v.lookup(np.asarray(table[lo : hi + 1 : step], np.float64))


def _trace_softmax(op: Softmax, x: np.ndarray) -> np.ndarray:
    """:func:`edgeml.softmax.softmax_codes` over the last axis: max tree, two ROMs, one product each.

    ``d = max - x_i`` (a comparator tree and a subtractor) indexes the exp table after the
    shift and saturation of ``inp_norm_t``; the sum of the looked-up codes indexes the
    inverse table; each output is ``e_i * inv`` (a variable-by-variable multiplier)
    shifted and wrapped into the output type, bit for bit as the golden model.
    """
    p = op.params
    exp_tab = np.asarray(op.exp_table, np.int64)
    inv_tab = np.asarray(op.inv_table, np.int64)
    out = np.empty(x.shape, dtype=object)
    for lead in np.ndindex(x.shape[:-1]):
        xs = list(x[lead])
        x_max = functools.reduce(lambda a, b: a.max_of(b), xs)
        es = []
        for v in xs:
            d = _unsigned(x_max - v)
            idx = _shr(d, p.norm_shift)
            if idx.high > p.norm_max:
                idx = idx.min_of(p.norm_max)
            es.append(_lookup(idx, exp_tab))
        s = functools.reduce(lambda a, b: a + b, es)
        inv_idx = _unsigned(_shr(s, p.inv_shift), p.inv_inp_type.width)
        inv = _lookup(inv_idx, inv_tab)
        for j, e in enumerate(es):
            y = _shr(e * inv, p.out_shift)
            out[(*lead, j)] = _unsigned(y, p.out_type.width)
    return out


def _trace_gather(op: Gather, xs: list[np.ndarray]) -> np.ndarray:
    """Golden ``Gather`` as wiring: pick variables by ``index``; ``-1`` is a constant-zero variable.

    ``shifts`` are exact left shifts (a power-of-two scale on the variable: no logic,
    the binary point moves). Nothing is computed, so a Slice, Concat, Pad, Resize or
    broadcast costs no LUTs.
    """
    shifts = tuple(op.shifts) or (0,) * len(xs)
    if len(shifts) != len(xs):
        raise UnsupportedOpError(
            f"op '{op.name}' (gather): {len(shifts)} shifts for {len(xs)} inputs"
        )
    flat: list[Any] = []
    for x, s in zip(xs, shifts, strict=True):
        if s < 0:
            raise UnsupportedOpError(
                f"op '{op.name}' (gather): negative shift {s}; only left shifts (>= 0) are exact"
            )
        flat.extend(v * float(2**s) if s else v for v in x.reshape(-1))
    index = np.asarray(op.index, np.int64).reshape(-1)
    if index.size and (index.min() < -1 or index.max() >= len(flat)):
        raise UnsupportedOpError(
            f"op '{op.name}' (gather): index range [{index.min()}, {index.max()}] outside "
            f"[-1, {len(flat) - 1}] (-1 = constant zero)"
        )
    hw = xs[0].reshape(-1)[0].hwconf
    src = np.empty(len(flat) + 1, dtype=object)
    src[: len(flat)] = flat
    src[-1] = _fv().from_const(0, hw)  # index -1
    return src[index].reshape((1, *op.shape))


def _trace_lookup(op: Lookup, x: np.ndarray) -> np.ndarray:
    """Golden ``Lookup`` (``table[x - lo]``): one da4ml ROM per element, shared table contents.

    The ROM holds only the entries the element's range can reach (via :func:`_lookup`).
    A variable whose range exceeds the table (an FI build's register widened for
    flipped upstream codes) is first wrapped to the table's type, as a register of
    the golden input type would hold it; the table covers that type's every code.
    """
    table = np.asarray(op.table, np.int64).reshape(-1)
    n, lo = len(table), int(op.lo)
    width = n.bit_length() - 1
    whole_type = n == 1 << width and lo in (0, -(n >> 1)) and width > 0

    def one(v: Any) -> Any:
        if v.low < lo or v.high > lo + n - 1:
            if not whole_type:
                raise UnsupportedOpError(
                    f"op '{op.name}' (lookup): input range [{v.low}, {v.high}] exceeds the "
                    f"table's codes [{lo}, {lo + n - 1}], which are not a whole fixed-point type"
                )
            signed = lo < 0
            v = _wrap(v, int(signed), width - int(signed), 0)
        return _lookup(v, table, lo)

    return _ew(one, x)


def _binary(fn: Callable[[Any, Any], Any], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``fn`` element by element over two variable arrays, broadcast like numpy (as golden does)."""
    a, b = np.broadcast_arrays(a, b)
    out = np.empty(a.shape, dtype=object)
    for idx in np.ndindex(a.shape):
        out[idx] = fn(a[idx], b[idx])
    return out


def _trace_matmul(op: MatMulTensors, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` of two activations: ``K`` variable-by-variable multipliers and an adder tree per output."""
    if a.ndim < 3 or b.ndim < 3:
        raise UnsupportedOpError(
            f"op '{op.name}' (matmul): operands need >= 2 axes besides the batch, got shapes "
            f"{a.shape[1:]} and {b.shape[1:]}"
        )
    (m, k), (k2, n) = a.shape[-2:], b.shape[-2:]
    if k != k2:
        raise UnsupportedOpError(
            f"op '{op.name}' (matmul): inner dimensions differ ({a.shape[1:]} @ {b.shape[1:]})"
        )
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = np.broadcast_to(a, (*lead, m, k))
    b = np.broadcast_to(b, (*lead, k, n))
    out = np.empty((*lead, m, n), dtype=object)
    for idx in np.ndindex(*lead, m, n):
        *ld, i, j = idx
        out[idx] = _tree_sum([a[(*ld, i, t)] * b[(*ld, t, j)] for t in range(k)])
    return out


def _trace_op(op: Op, xs: list[np.ndarray]) -> np.ndarray:
    """Apply one golden op to object arrays of da4ml variables (leading batch axis of 1)."""
    if isinstance(op, Conv):  # before Dense: Conv subclasses Dense
        return _trace_conv(op, xs[0])
    if isinstance(op, Dense):
        return _trace_dense(op, xs[0])
    if isinstance(op, Requant):
        return _trace_requant(op, xs[0])
    if isinstance(op, Affine):
        return _ew(lambda v, m, o: _cmul(v, m) + o, xs[0], op.mult, op.offset)
    if isinstance(op, Relu):
        return _ew(lambda v: v.max_of(0), xs[0])
    if isinstance(op, MaxPool):
        return _trace_maxpool(op, xs[0])
    if isinstance(op, Reshape):
        return xs[0].reshape((1, *op.shape))
    if isinstance(op, Transpose):
        return np.ascontiguousarray(np.transpose(xs[0], op.perm))
    if isinstance(op, AddTensors):
        sa, sb = float(2**op.shift_a), float(2**op.shift_b)
        return _binary(lambda u, v: u * sa + v * sb, *xs)
    if isinstance(op, Bipolar):
        return _ew(_trace_bipolar, xs[0])
    if isinstance(op, Sign):
        return _ew(_trace_sign, xs[0])
    if isinstance(op, LeakyRelu):
        return _ew(lambda v: _trace_leakyrelu(op, v), xs[0])
    if isinstance(op, Softmax):
        return _trace_softmax(op, xs[0])
    if isinstance(op, Gather):
        return _trace_gather(op, xs)
    if isinstance(op, Lookup):
        return _trace_lookup(op, xs[0])
    if isinstance(op, SubTensors):
        sa, sb = float(2**op.shift_a), float(2**op.shift_b)
        return _binary(lambda u, v: u * sa - v * sb, *xs)
    if isinstance(op, MulTensors):
        return _binary(lambda u, v: u * v, *xs)
    if isinstance(op, MatMulTensors):
        return _trace_matmul(op, *xs)
    raise UnsupportedOpError(
        f"golden op '{op.name}' of kind '{op.kind}' ({type(op).__name__}) has no RTL mirror; "
        f"edgeml.rtl supports: {', '.join(SUPPORTED_RTL_OPS)}"
    )


# --------------------------------------------------------------------------- trace


@dataclass
class TracedGolden:
    """The golden model replayed on da4ml symbolic variables.

    ``inputs`` / ``outputs`` are 1-D object arrays of ``FixedVariable`` in port
    order; ``tensors`` maps every golden tensor name to its symbolic value
    (batch axis dropped), for per-op checks.
    """

    inputs: np.ndarray
    outputs: np.ndarray
    tensors: dict[str, np.ndarray]
    order: list[str]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    _combs: dict[str, Any] = field(default_factory=dict, repr=False)

    def comb(self, tensor: str | None = None) -> Any:
        """da4ml ``CombLogic`` computing the output (or one golden tensor) from the inputs."""
        from da4ml.trace import comb_trace

        key = tensor or "__output__"
        if key not in self._combs:
            outs = self.outputs if tensor is None else self.tensors[tensor].reshape(-1)
            self._combs[key] = comb_trace(list(self.inputs), list(outs), keep_dead_inputs=True)
        return self._combs[key]

    def _run(self, comb: Any, x_codes: np.ndarray, n_threads: int) -> np.ndarray:
        x = np.asarray(x_codes).reshape(len(x_codes), -1).astype(np.float64)
        wide = _interp_wide_ops(comb)
        if wide:  # da4ml's C++ interpreter would be wrong: its exact Python one (slower)
            log.info(
                "%d da4ml ops wrap wider than %d bits; evaluating with da4ml's Python interpreter",
                wide,
                _INTERP_WRAP_BITS,
            )
            y = np.array([comb(row) for row in x], dtype=np.float64).reshape(len(x), -1)
        else:
            y = comb.predict(x, n_threads=n_threads)
        out = np.rint(y).astype(np.int64)
        if not np.array_equal(out, y):  # codes are integers by construction
            raise EdgemlError(
                "da4ml interpreter returned non-integer codes; the trace is inconsistent"
            )
        return out

    def predict_int(self, x_codes: np.ndarray, n_threads: int = 0) -> np.ndarray:
        """Output codes from da4ml's C++ interpreter of the traced program (no Verilog, no build)."""
        y = self._run(self.comb(), x_codes, n_threads)
        return y.reshape(len(y), *self.output_shape)

    def trace_int(self, x_codes: np.ndarray, n_threads: int = 0) -> dict[str, np.ndarray]:
        """Every golden tensor's codes as computed by the traced program (same keys as ``g.run(trace=True)``)."""
        out = {}
        for name in self.order:
            shape = self.tensors[name].shape
            y = self._run(self.comb(name), x_codes, n_threads)
            out[name] = y.reshape(len(y), *shape)
        return out


def trace_golden(g: GoldenModel) -> TracedGolden:
    """Replay every golden op on da4ml symbolic variables, exactly mirroring the integer semantics.

    The input is one variable per element of ``g.input_shape`` (C order) with
    range ``[qmin, qmax]`` of ``g.input_type`` and step 1 (codes). Raises
    :class:`UnsupportedOpError` naming the op for kinds that have no mirror.
    """
    from da4ml.trace import FixedVariableArray, HWConfig

    for op in g.ops:  # fail fast, before any (slow) tracing
        if op.kind not in SUPPORTED_RTL_OPS:
            raise UnsupportedOpError(
                f"golden op '{op.name}' of kind '{op.kind}' has no RTL mirror; "
                f"edgeml.rtl supports: {', '.join(SUPPORTED_RTL_OPS)}"
            )
    t = g.input_type
    shape = (1, *g.input_shape)
    inp = FixedVariableArray.from_lhs(
        low=np.full(shape, float(t.qmin)),
        high=np.full(shape, float(t.qmax)),
        step=np.ones(shape),
        hwconf=HWConfig(1, -1, -1),
    )._vars
    env: dict[str, np.ndarray] = {g.input_name: inp}
    t0 = time.perf_counter()
    for op in g.ops:
        try:
            env[op.output] = _trace_op(op, [env[i] for i in op.inputs])
        except EdgemlError:
            raise
        except Exception as exc:  # da4ml asserts on impossible shapes/ranges: name the op
            raise UnsupportedOpError(
                f"tracing golden op '{op.name}' ({op.kind}) into da4ml failed: {type(exc).__name__}: {exc}"
            ) from exc
        log.debug("traced %s (%s) at %.1fs", op.name, op.kind, time.perf_counter() - t0)
    out = env[g.output_name]
    tensors = {op.output: env[op.output].reshape(env[op.output].shape[1:]) for op in g.ops}
    return TracedGolden(
        inputs=inp.reshape(-1),
        outputs=out.reshape(-1),
        tensors=tensors,
        order=[op.output for op in g.ops],
        input_shape=tuple(g.input_shape),
        output_shape=tuple(g.output_shape),
    )


# --------------------------------------------------------------------------- design


def _io_format(qints: list[Any]) -> tuple[int, int, int]:
    """(signed, integer bits excl. sign, fractional bits) of da4ml's uniform port element."""
    from da4ml.types import minimal_kif

    kifs = [minimal_kif(q) for q in qints]
    k = max(int(x[0]) for x in kifs)
    i = max(int(x[1]) for x in kifs)
    f = max(int(x[2]) for x in kifs)
    return k, i, f


def _hash_files(paths: list[Path], root: Path, extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in sorted(paths):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


@dataclass
class RtlDesign:
    """A generated Verilog design and its Verilator batch harness.

    ``top`` is da4ml's top module (``clk``, ``model_inp``, ``model_out`` when
    pipelined; packed minimal-width ports); ``wrapper_top`` is da4ml's
    ``{top}_wrapper`` with uniform ``input_bits`` / ``output_bits`` per
    element, which the batch harness and the cocotb bench drive. ``latency``
    is in clock cycles (0 when combinational): an input sampled at rising edge
    ``t`` appears on ``model_out`` after edge ``t + latency``.
    """

    name: str
    out_dir: Path
    pipelined: bool
    latency: int
    n_inputs: int
    n_outputs: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_type: FixedType
    output_type: FixedType
    input_kif: tuple[int, int, int]
    output_kif: tuple[int, int, int]
    latency_cutoff: float
    cost_luts: float
    verilog_hash: str = ""
    #: extra Verilator arguments (e.g. a cell library for a post-synthesis netlist), in the build key
    verilator_args: str = ""
    traced: TracedGolden | None = field(default=None, repr=False, compare=False)
    #: da4ml's program the Verilog is written from (Pipeline or CombLogic); not saved
    solution: Any = field(default=None, repr=False, compare=False)
    _lib: Any = field(default=None, repr=False, compare=False)

    # ---- files
    @property
    def top(self) -> str:
        return self.name

    @property
    def wrapper_top(self) -> str:
        return f"{self.name}_wrapper"

    @property
    def src_dir(self) -> Path:
        return self.out_dir / "src"

    @property
    def sim_dir(self) -> Path:
        return self.out_dir / "sim"

    @property
    def verilog_files(self) -> list[Path]:
        """Every Verilog source of the design (static primitives, stages, top, io wrapper)."""
        own = [self.src_dir / f"{self.name}.v", *sorted(self.src_dir.glob(f"{self.name}_stage*.v"))]
        own.append(self.src_dir / f"{self.wrapper_top}.v")
        return sorted((self.src_dir / "static").glob("*.v")) + [p for p in own if p.is_file()]

    @property
    def mem_files(self) -> list[Path]:
        """The ROM contents (``src/memfiles/*.mem``) of da4ml lookup tables (e.g. Softmax's).

        ``static/lookup_table.v`` reads them with ``$readmemh`` by bare file name, so a
        simulator or synthesis tool must run in (or be given) this folder.
        """
        return sorted((self.src_dir / "memfiles").glob("*.mem"))

    @property
    def input_bits(self) -> int:
        return sum(self.input_kif)

    @property
    def output_bits(self) -> int:
        return sum(self.output_kif)

    def _hash_inputs(self) -> list[Path]:
        files = self.verilog_files + self.mem_files
        return files + sorted(self.sim_dir.glob("*_binder.cc"))

    def compute_hash(self) -> str:
        """SHA-256 of the design's sources: Verilog, table memories and binder C++."""
        return _hash_files(self._hash_inputs(), self.out_dir, "")

    def build_key(self) -> str:
        """The build cache key: source hash + Verilator version + build flags."""
        from edgeml.toolchain import find_verilator

        extra = f"verilator {find_verilator().version}; flags {self._flags}; opt {_OPT_TARGET}"
        return hashlib.sha256((self.compute_hash() + extra).encode()).hexdigest()

    @property
    def _flags(self) -> str:
        return f"{_VERILATOR_FLAGS} {self.verilator_args}".strip()

    # ---- persistence
    def save(self) -> Path:
        skip = ("traced", "solution", "_lib")
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        d["out_dir"] = str(self.out_dir)
        d["input_type"] = asdict(self.input_type)
        d["output_type"] = asdict(self.output_type)
        path = self.out_dir / _META_FILE
        path.write_text(json.dumps(d, indent=2))
        return path

    @classmethod
    def load(cls, out_dir: str | Path) -> RtlDesign:
        """Re-open a design written by :func:`generate_rtl` (a later stage run alone)."""
        from edgeml.errors import MissingRunError

        out_dir = Path(out_dir)
        path = out_dir / _META_FILE
        if not path.is_file():
            raise MissingRunError(f"{path} not found: run the rtl stage (generate_rtl) first")
        d = json.loads(path.read_text())
        d["out_dir"] = out_dir
        d["input_type"] = FixedType(**d["input_type"])
        d["output_type"] = FixedType(**d["output_type"])
        for k in ("input_shape", "output_shape", "input_kif", "output_kif"):
            d[k] = tuple(d[k])
        return cls(**d)

    # ---- build
    def build(
        self, *, n_jobs: int | None = None, use_cache: bool = True, force: bool = False
    ) -> float:
        """Compile with Verilator into a shared library; return the seconds spent (0.0 if cached).

        Cached by :meth:`build_key`: a library built from identical Verilog
        (here, or anywhere under ``<edgeml cache>/rtl_builds``) is reused.
        """
        from edgeml.toolchain import file_lock

        with file_lock(self.sim_dir / ".edgeml_build.lock"):
            return self._build_locked(n_jobs=n_jobs, use_cache=use_cache, force=force)

    def _build_locked(self, *, n_jobs: int | None, use_cache: bool, force: bool) -> float:
        from edgeml.toolchain import cache_dir, verilator_env

        self.verilog_hash = self.compute_hash()
        h = self.build_key()
        tag = f"h{h[:24]}"
        lib = self.sim_dir / f"lib{self.wrapper_top}_{tag}.so"
        global_lib = cache_dir() / "rtl_builds" / f"{h}.so"
        t0 = time.perf_counter()
        if not force and not lib.is_file() and use_cache and global_lib.is_file():
            shutil.copy2(global_lib, lib)
            log.info("RTL %s: reusing cached Verilator build %s", self.name, global_lib)
        if force or not lib.is_file():
            env = verilator_env()
            env.update(
                VM_PREFIX=self.wrapper_top,
                STAMP=tag,
                EXTRA_CXXFLAGS="-fopenmp",
                VERILATOR_FLAGS=self._flags,
                N_JOBS=str(n_jobs or os.cpu_count() or 1),
            )
            if (
                shutil.which("make", path=env["PATH"]) is None
                or shutil.which("g++", path=env["PATH"]) is None
            ):
                raise DependencyError(
                    "building RTL needs `make` and `g++` (apt-get install build-essential)"
                )
            log.info("RTL %s: building with Verilator (hash %s)", self.name, h[:12])
            subprocess.run(["rm", "-rf", "obj_dir"], cwd=self.sim_dir, check=False)
            res = subprocess.run(
                ["make", "-f", "build_binder.mk", _OPT_TARGET],
                cwd=self.sim_dir,
                env=env,
                capture_output=True,
                text=True,
            )
            if res.returncode != 0 or not lib.is_file():
                tail = (res.stdout[-3000:] + "\n" + res.stderr[-3000:]).strip()
                raise RtlBuildError(
                    f"Verilator build of '{self.name}' in {self.sim_dir} failed (exit {res.returncode}):\n{tail}"
                )
            shutil.rmtree(self.sim_dir / "obj_dir", ignore_errors=True)
            if use_cache:
                try:
                    global_lib.parent.mkdir(parents=True, exist_ok=True)
                    tmp = global_lib.with_name(f".{h}.{os.getpid()}.tmp")
                    shutil.copy2(lib, tmp)
                    tmp.replace(global_lib)
                except OSError as exc:  # the cache is an optimisation only
                    log.warning("could not store the RTL build in the cache: %s", exc)
            seconds = time.perf_counter() - t0
            log.info("RTL %s: built in %.1f s", self.name, seconds)
        else:
            seconds = 0.0
        (self.sim_dir / _BUILD_FILE).write_text(json.dumps({"hash": h, "lib": lib.name}))
        self._lib = _load_binder(lib)
        self.save()
        return seconds

    @property
    def built(self) -> bool:
        return self._lib is not None

    # ---- run
    def encode_inputs(self, x_codes: np.ndarray) -> np.ndarray:
        """Golden input codes (graph-input layout) -> raw port integers (N, n_inputs) int64."""
        x = np.asarray(x_codes)
        if x.dtype.kind not in "iu":
            raise InputRangeError(f"RTL inputs must be integer codes, got dtype {x.dtype}")
        if x.ndim < 1:
            raise InputRangeError(
                f"RTL inputs must be a batch (N, {self.input_shape}), got a scalar"
            )
        x = x.reshape(len(x), -1).astype(np.int64)
        if x.shape[1] != self.n_inputs:
            raise InputRangeError(
                f"RTL input vectors must have {self.n_inputs} elements (shape {self.input_shape}); got {x.shape[1]}"
            )
        t = self.input_type
        if x.size and (x.min() < t.qmin or x.max() > t.qmax):
            raise InputRangeError(
                f"input codes span [{x.min()}, {x.max()}] but the RTL input type {t.hls()} holds [{t.qmin}, {t.qmax}]"
            )
        f = self.input_kif[2]
        return x << f if f >= 0 else x >> -f

    def decode_outputs(self, raw: np.ndarray) -> np.ndarray:
        """Raw port integers (any int dtype, only the low ``output_bits`` bits used) -> golden output codes."""
        k, _, f = self.output_kif
        bw = self.output_bits
        r = np.asarray(raw).astype(np.int64) & ((1 << bw) - 1)
        if k:
            r = np.where(r >= (1 << (bw - 1)), r - (1 << bw), r)
        if f > 0:
            if np.any(r & ((1 << f) - 1)):
                raise EdgemlError(
                    "RTL output has fractional bits set; the output is not an integer code"
                )
            r = r >> f
        elif f < 0:
            r = r << -f
        return r.reshape(len(r), *self.output_shape)

    def predict_int(self, x_codes: np.ndarray, n_threads: int = 0) -> np.ndarray:
        """Run the Verilated design on a batch: golden input codes -> golden output codes (int64).

        ``n_threads=0`` uses every core (OpenMP, one simulator per thread).
        Pipelined designs are streamed one vector per clock.
        """
        if self._lib is None:
            self.build()
        raw_in = self.encode_inputs(x_codes)
        n = len(raw_in)
        if n == 0:
            return np.zeros((0, *self.output_shape), np.int64)
        inp = np.ascontiguousarray(raw_in.astype(np.int32))
        out = np.zeros((n, self.n_outputs), np.int32)
        with memfiles_cwd(self.src_dir / "memfiles"):
            self._lib.inference(
                inp.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                out.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                ctypes.c_size_t(n),
                ctypes.c_size_t(max(int(n_threads), 0)),
            )
        return self.decode_outputs(out)

    def trace_int(self, x_codes: np.ndarray) -> dict[str, np.ndarray]:
        """Per golden tensor codes from the traced da4ml program (for naming a divergent layer)."""
        if self.traced is None:
            raise EdgemlError(
                "this design was loaded from disk; re-run generate_rtl (or trace_golden) to get per-op traces"
            )
        return self.traced.trace_int(x_codes)


# --output-split-cfuncs: da4ml's combinational logic becomes one huge C++ function that g++
# compiles super-linearly; splitting it cut a combinational CNN's build from ~170 s to ~20 s
# at the same simulation speed (3000: ~15 s but 30 % slower; 30000: ~110 s).
_VERILATOR_FLAGS = "-Wall -Wno-fatal --output-split-cfuncs 10000"
_OPT_TARGET = "slow"  # da4ml's binder Makefile: "slow" = -O, "fast" = -O3 (2-3x longer C++ compile)


@contextlib.contextmanager
def memfiles_cwd(memdir: Path) -> Iterator[None]:
    """Run a Verilated model from ``memdir`` when it holds lookup-table ``.mem`` files.

    da4ml's ROMs ``$readmemh`` their contents by bare file name, so the simulator
    must run in the folder holding them; a design without ROMs runs where it is.
    """
    if not (memdir.is_dir() and any(memdir.glob("*.mem"))):
        yield
        return
    cwd = Path.cwd()
    os.chdir(memdir)
    try:
        yield
    finally:
        os.chdir(cwd)


def _load_binder(lib: Path) -> Any:
    try:
        so = ctypes.CDLL(str(lib))
    except OSError as exc:
        raise RtlBuildError(f"cannot load the Verilator library {lib}: {exc}") from exc
    so.inference.argtypes = [
        ctypes.POINTER(ctypes.c_int32),
        ctypes.POINTER(ctypes.c_int32),
        ctypes.c_size_t,
        ctypes.c_size_t,
    ]
    so.inference.restype = None
    return so


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def generate_rtl(
    g: GoldenModel,
    out_dir: str | Path,
    name: str,
    *,
    pipelined: bool = False,
    latency_cutoff: float = 5.0,
    clock_period: float = 5.0,
    part_name: str = "xcvu13p-flga2577-2-e",
) -> RtlDesign:
    """Trace ``g`` and write its Verilog (da4ml) into ``out_dir``; returns an unbuilt :class:`RtlDesign`.

    ``out_dir`` (the run folder's ``rtl/``) receives da4ml's project: ``src/``
    (Verilog; replaced on every call), ``sim/`` (binder sources and builds),
    ``model/``, Vivado/Quartus scripts and ``edgeml_rtl.json`` (for
    :meth:`RtlDesign.load`).

    ``pipelined`` inserts registers so no stage exceeds ``latency_cutoff``
    (da4ml's delay estimate, in units of roughly one LUT + carry-chain level);
    otherwise the design is purely combinational. ``clock_period`` (ns) and
    ``part_name`` only go into the Vivado/Quartus scripts da4ml writes beside
    the sources.
    """
    from da4ml.codegen import RTLModel
    from da4ml.types import Pipeline

    if not _IDENT.match(name):
        raise ConfigError(
            f"RTL module name {name!r} is not a Verilog identifier; use letters, digits and '_' "
            "(not starting with a digit)"
        )
    if pipelined and not latency_cutoff > 0:
        raise ConfigError(
            f"latency_cutoff must be > 0 for a pipelined design, got {latency_cutoff}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    traced = trace_golden(g)
    comb = traced.comb()
    t1 = time.perf_counter()
    try:
        model = RTLModel(
            comb,
            name,
            out_dir,
            flavor="verilog",
            latency_cutoff=latency_cutoff if pipelined else -1,
            print_latency=True,
            part_name=part_name,
            clock_period=clock_period,
        )
    except AssertionError as exc:
        raise ConfigError(
            f"da4ml cannot pipeline '{name}' at latency_cutoff={latency_cutoff}: {exc}. Use a larger cutoff."
        ) from exc
    sol = model._pipe if model._pipe is not None else comb
    in_kif = _io_format(list(sol.inp_qint))
    out_kif = _io_format(list(sol.out_qint))
    for what, kif in (("input", in_kif), ("output", out_kif)):
        if sum(kif) > MAX_PORT_BITS:
            raise UnsupportedOpError(
                f"RTL {what} elements need {sum(kif)} bits (signed={bool(kif[0])}, integer={kif[1]}, "
                f"fraction={kif[2]}), over the {MAX_PORT_BITS}-bit limit of da4ml's Verilator binder "
                "(it moves each element through an int32). Narrow the design's "
                f"{what} quantizer (the golden {what} type is "
                f"{(g.input_type if what == 'input' else g.output_type).hls()})."
            )
    for stale in ("src", "model"):  # a previous design's stage files must not linger
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    try:
        model.write()
    except AssertionError as exc:  # da4ml 0.6.0's Verilog writer asserts on some MSB muxes
        raise UnsupportedOpError(
            f"da4ml could not write Verilog for this design (internal assertion in its code "
            f"generator: {exc!r}); the golden model and hls4ml levels still apply"
        ) from exc
    latency = len(sol.solutions) if isinstance(sol, Pipeline) else 0
    design = RtlDesign(
        name=name,
        out_dir=out_dir.resolve(),
        pipelined=isinstance(sol, Pipeline),
        latency=latency,
        n_inputs=int(sol.shape[0]),
        n_outputs=int(sol.shape[1]),
        input_shape=tuple(g.input_shape),
        output_shape=tuple(g.output_shape),
        input_type=g.input_type,
        output_type=g.output_type,
        input_kif=in_kif,
        output_kif=out_kif,
        # the cut asked for (what regenerates this Verilog); da4ml reports a rounded "actual" one
        latency_cutoff=float(latency_cutoff) if isinstance(sol, Pipeline) else -1.0,
        cost_luts=float(sol.cost),
        traced=traced,
        solution=sol,
    )
    design.verilog_hash = design.compute_hash()
    design.save()
    log.info(
        "RTL %s: traced in %.1f s, wrote Verilog in %.1f s (%s, latency %d, ~%d LUTs)",
        name,
        t1 - t0,
        time.perf_counter() - t1,
        "pipelined" if design.pipelined else "combinational",
        latency,
        round(design.cost_luts),
    )
    return design


# --------------------------------------------------------------------------- wires -> layers

_WIRE = re.compile(r"\bv(\d+)\b")


def stage_files(design: RtlDesign) -> list[Path]:
    """The Verilog file of each da4ml stage, in order (one file when combinational)."""
    if design.pipelined:
        return [design.src_dir / f"{design.name}_stage{k}.v" for k in range(design.latency)]
    return [design.src_dir / f"{design.name}.v"]


def wire_layers(
    design: RtlDesign, g: GoldenModel, n_vectors: int = 24, seed: int = 0
) -> list[list[str]]:
    """The golden op each wire ``v<i>`` of each stage file computes part of, e.g. ``"MatMul_1 (dense)"``.

    da4ml's netlist carries no layer names, so they are recovered from values:
    every wire of the (freshly generated) da4ml program is evaluated on random
    input codes with da4ml's own interpreter, and a wire whose values equal one
    golden tensor's element up to da4ml's power-of-two scaling and sign *is*
    that element (constant wires are never matched). Other wires (partial sums,
    rounding terms) belong to the op that consumes the latest complete tensor
    among their operands. Returns, per stage, one label per wire index.
    """
    from da4ml.types import Pipeline

    sol = design.solution
    if sol is None:
        raise EdgemlError("wire_layers needs a design from generate_rtl (its da4ml program)")
    stages = list(sol.solutions) if isinstance(sol, Pipeline) else [sol]
    q = g.input_quant
    x = np.random.default_rng(seed).integers(
        max(q.lo, g.input_type.qmin),
        min(q.hi, g.input_type.qmax) + 1,
        size=(n_vectors, *g.input_shape),
    )
    _, trace = g.run(x, trace=True)

    def key(v: np.ndarray) -> tuple[float, ...] | None:
        nz = np.flatnonzero(v)
        if len(nz) == 0 or np.all(v == v[0]):
            return None  # constants say nothing about where a wire belongs
        return tuple((v / v[nz[0]]).tolist())

    producer: dict[tuple[float, ...], int] = {}
    inp = np.asarray(x, np.float64).reshape(n_vectors, -1)
    for j in range(inp.shape[1]):
        k = key(inp[:, j])
        if k is not None:
            producer.setdefault(k, -1)
    for i, op in enumerate(g.ops):
        t = np.asarray(trace[op.output], np.float64).reshape(n_vectors, -1)
        for j in range(t.shape[1]):
            k = key(t[:, j])
            if k is not None:
                producer.setdefault(k, i)

    def consumer(i: int) -> int:
        """First golden op that computes with op ``i``'s tensor (the graph input for -1).

        Layout ops (reshape, transpose, gather) only move elements, so the search goes on
        through them to the op that really consumes the values.
        """
        name = g.input_name if i < 0 else g.ops[i].output
        for j in range(i + 1, len(g.ops)):
            if name in g.ops[j].inputs:
                if g.ops[j].kind in LAYOUT_KINDS:
                    name = g.ops[j].output
                    continue
                return j
        return min(max(i, 0), len(g.ops) - 1)

    labels: list[list[str]] = []
    cur = [row for row in inp]
    prev: list[tuple[int, bool]] = [(-1, True)] * inp.shape[1]  # (op index, complete tensor?)
    for st in stages:
        bufs = [st(v, dump=True) for v in cur]
        vals = np.array([[float(b) for b in buf] for buf in bufs]).T  # (n_ops, n_vectors)
        info: list[tuple[int, bool]] = []
        for i, op in enumerate(st.ops):
            k = key(vals[i])
            if k is not None and k in producer:
                info.append((producer[k], True))
                continue
            if op.opcode == -1:  # a register from the previous stage (or the input port)
                info.append(prev[op.id0])
                continue
            operands = [op.id0] if op.id0 >= 0 else []
            if op.opcode in (0, 1, 7, 10, 6, -6) and op.id1 >= 0:
                operands.append(op.id1)
            if op.opcode in (6, -6):
                operands.append(op.data & 0xFFFFFFFF)
            cands = [consumer(info[o][0]) if info[o][1] else info[o][0] for o in operands]
            info.append((max(cands), False) if cands else (-2, False))  # -2: a constant
        # a constant (a clamp bound, a rounding term) belongs to the op of its first reader
        readers: dict[int, int] = {}
        for i, op in enumerate(st.ops):
            if op.opcode == -1:
                continue
            ids = [op.id0, op.id1] + ([op.data & 0xFFFFFFFF] if op.opcode in (6, -6) else [])
            for o in ids:
                if 0 <= o < i:
                    readers.setdefault(o, i)
        for i in reversed(range(len(info))):
            if info[i][0] == -2:
                r = readers.get(i)
                info[i] = (info[r][0] if r is not None else 0, False)
        labels.append([g.ops[i].label if i >= 0 else "input" for i, _ in info])
        prev = [info[o] if o >= 0 else (0, False) for o in st.out_idxs]
        cur = [np.asarray(st(v), np.float64) for v in cur]
    return labels


def locate_wire(design: RtlDesign, g: GoldenModel, file: str, line: str) -> str | None:
    """The golden op that the wire on ``line`` of a stage ``file`` belongs to, if it names one."""
    names = [p.name for p in stage_files(design)]
    m = _WIRE.search(line)
    if Path(file).name not in names or m is None:
        return None
    stage, wire = names.index(Path(file).name), int(m.group(1))
    layers = wire_layers(design, g)
    if stage < len(layers) and wire < len(layers[stage]):
        return layers[stage][wire]
    return None
