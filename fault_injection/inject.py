"""The injector: *how* a bit fault corrupts stored integer codes.

Codes are the golden model's int64 parameter codes; the hardware stores each
one as a ``bits``-wide two's-complement (or unsigned) word. A fault acts on that
word, not on the int64: take the low ``bits`` bits, flip / clear / set one bit,
then sign-extend back. So flipping the sign bit of a 6-bit code 5 gives
``5 - 32 = -27``, and bit ``bits - 1`` is the sign bit. A multi-bit upset
(``nbits > 1``) hits the adjacent bits ``bit .. bit + nbits - 1`` at once.
Everything is numpy bitwise arithmetic (no ``bin()`` strings) and returns new
arrays: the model's codes are never mutated.

:func:`faulty_model` and :func:`run_with_faults` apply whole fault sites to a
golden model: stored-parameter sites to a corrupted copy, transient
activation / accumulator sites to each sample's pass. They are the reference
(naive) semantics every campaign engine is tested against.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgeml.errors import ConfigError

if TYPE_CHECKING:
    from edgeml.golden import GoldenModel

    from .sites import FaultSite

KIND_CODES: dict[str, int] = {"flip": 0, "stuck0": 1, "stuck1": 2}


def _check_word(bits: int, signed: bool) -> None:
    if not 1 <= bits <= 62:
        raise ConfigError(f"storage width must be in [1, 62] bits, got {bits}")
    if signed and bits < 2:
        raise ConfigError(f"a signed storage word needs at least 2 bits, got {bits}")


def _check_codes(codes: np.ndarray, bits: int, signed: bool) -> None:
    lo = -(1 << (bits - 1)) if signed else 0
    hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    if codes.size and (codes.min() < lo or codes.max() > hi):
        kind = "signed" if signed else "unsigned"
        raise ConfigError(
            f"codes span [{codes.min()}, {codes.max()}] but a {bits}-bit {kind} word holds "
            f"[{lo}, {hi}]; pass the parameter's storage width"
        )


def fault_values(
    values: np.ndarray,
    bits: int,
    signed: bool,
    bit: np.ndarray | int,
    kind: np.ndarray | str | int = "flip",
    nbits: np.ndarray | int = 1,
) -> np.ndarray:
    """Elementwise faulty value of each code: ``values``, ``bit``, ``kind``, ``nbits`` broadcast.

    ``kind`` is ``"flip"``, ``"stuck0"``, ``"stuck1"`` or an array of their
    :data:`KIND_CODES`; ``nbits`` adjacent bits from ``bit`` up are hit. This
    is the vectorised core the campaign engines use to corrupt many
    (index, bit) pairs at once.
    """
    _check_word(bits, signed)
    v = np.asarray(values, dtype=np.int64)
    _check_codes(v, bits, signed)
    b = np.asarray(bit, dtype=np.int64)
    if b.size and (b.min() < 0 or b.max() >= bits):
        raise ConfigError(f"bit positions must be in [0, {bits - 1}], got [{b.min()}, {b.max()}]")
    nb = np.asarray(nbits, dtype=np.int64)
    if nb.size and nb.min() < 1:
        raise ConfigError(f"nbits must be >= 1, got {nb.min()}")
    top = b + nb
    if top.size and top.max() > bits:
        raise ConfigError(
            f"a {int(np.max(nb))}-bit upset from bit {int(np.max(b))} does not fit a {bits}-bit "
            f"word (allowed bit + nbits <= {bits})"
        )
    if isinstance(kind, str):
        if kind not in KIND_CODES:
            raise ConfigError(f"kind must be one of {tuple(KIND_CODES)}, got {kind!r}")
        k = np.asarray(KIND_CODES[kind], dtype=np.int64)
    else:
        k = np.asarray(kind, dtype=np.int64)
        if k.size and (k.min() < 0 or k.max() > 2):
            raise ConfigError(f"kind codes must be in {KIND_CODES}, got [{k.min()}, {k.max()}]")
    word_mask = np.int64((1 << bits) - 1)
    u = v & word_mask  # the stored word: two's complement, low `bits` bits
    m = np.left_shift(np.left_shift(np.int64(1), nb) - 1, b)
    u = np.where(k == 0, u ^ m, np.where(k == 1, u & ~m, u | m))
    if signed:
        sign = np.int64(1 << (bits - 1))
        u = (u ^ sign) - sign  # sign-extend the word back to int64
    return u.astype(np.int64, copy=False)


def apply_bit_fault(
    codes: np.ndarray,
    bits: int,
    signed: bool,
    index: int | tuple[int, ...],
    bit: int,
    kind: str = "flip",
    nbits: int = 1,
) -> np.ndarray:
    """A copy of ``codes`` with ``nbits`` adjacent bits of one stored word corrupted.

    ``index`` is a flat (C-order) index or a full index tuple; ``bit`` 0 is the
    LSB and ``bits - 1`` the MSB (the sign bit when ``signed``).
    """
    codes = np.asarray(codes)
    # order="C": golden Conv weights are transposed views; a copy that kept their
    # strides would make reshape(-1) below a copy too, and the write would be lost.
    out = np.array(codes, dtype=np.int64, order="C", copy=True)
    flat = out.reshape(-1)
    i = int(np.ravel_multi_index(index, codes.shape)) if isinstance(index, tuple) else int(index)
    if not 0 <= i < flat.size:
        raise ConfigError(f"index {index} is out of range for codes of shape {codes.shape}")
    flat[i] = fault_values(flat[i], bits, signed, bit, kind, nbits)
    return out


def apply_bit_faults(
    codes: np.ndarray,
    bits: int,
    signed: bool,
    index: np.ndarray,
    bit: np.ndarray,
    kind: np.ndarray | str = "flip",
    nbits: np.ndarray | int = 1,
) -> np.ndarray:
    """``F`` corrupted copies at once: shape ``(F, *codes.shape)``, copy ``f`` has fault ``f``.

    ``index`` (flat) and ``bit`` are length-``F`` arrays; one fault per copy.
    """
    codes = np.asarray(codes, dtype=np.int64)
    idx = np.asarray(index, dtype=np.int64).reshape(-1)
    b = np.asarray(bit, dtype=np.int64).reshape(-1)
    if idx.shape != b.shape:
        raise ConfigError(f"index and bit must have equal length, got {idx.size} and {b.size}")
    if idx.size and (idx.min() < 0 or idx.max() >= codes.size):
        raise ConfigError(
            f"indices must be in [0, {codes.size - 1}] for codes of shape {codes.shape}, "
            f"got [{idx.min()}, {idx.max()}]"
        )
    out = np.broadcast_to(codes.reshape(-1), (idx.size, codes.size)).copy()
    rows = np.arange(idx.size)
    out[rows, idx] = fault_values(out[rows, idx], bits, signed, b, kind, nbits)
    return out.reshape((idx.size, *codes.shape))


def fault_deltas(
    codes: np.ndarray,
    bits: int,
    signed: bool,
    index: np.ndarray,
    bit: np.ndarray,
    kind: np.ndarray | str = "flip",
    nbits: np.ndarray | int = 1,
) -> np.ndarray:
    """``faulty - original`` code of each (flat index, bit) fault: what linear layers need."""
    flat = np.asarray(codes, dtype=np.int64).reshape(-1)
    idx = np.asarray(index, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= flat.size):
        raise ConfigError(
            f"indices must be in [0, {flat.size - 1}], got [{idx.min()}, {idx.max()}]"
        )
    v = flat[idx]
    return fault_values(v, bits, signed, bit, kind, nbits) - v


# ----------------------------------------------------------------------------- whole sites


def _apply_site(codes: np.ndarray, ftype, site: FaultSite) -> np.ndarray:
    return apply_bit_fault(
        codes, ftype.width, ftype.signed, site.index, site.bit, site.kind, site.nbits
    )


def faulty_model(g: GoldenModel, sites: Sequence[FaultSite]) -> GoldenModel:
    """A copy of ``g`` with every permanent site applied (in order); ``g`` is untouched.

    Weight / bias sites corrupt a Dense/Conv op's codes, ``table`` sites a Lookup
    op's ROM entries. Transient (``act`` / ``acc``) sites are ignored here: see
    :func:`run_with_faults`.
    """
    from .sites import PERMANENT_PARAMS, check_site, stored_words

    groups: dict[tuple[str, str], list[FaultSite]] = {}
    for site in sites:
        if site.param in PERMANENT_PARAMS:
            groups.setdefault((site.layer, site.param), []).append(site)
    if not groups:
        return g
    by_op: dict[str, dict[str, np.ndarray]] = {}
    for (layer, param), group in groups.items():
        for site in (group[0], max(group, key=lambda t: (t.index, t.bit + t.nbits))):
            check_site(g, site)  # the first, and the one reaching furthest
        codes, ftype = stored_words(g, layer, param)
        idx = np.array([t.index for t in group], np.int64)
        if np.unique(idx).size == idx.size:  # one site per word: all at once
            out = np.array(codes, dtype=np.int64, order="C", copy=True)
            flat = out.reshape(-1)
            flat[idx] = fault_values(
                flat[idx],
                ftype.width,
                ftype.signed,
                np.array([t.bit for t in group], np.int64),
                np.array([KIND_CODES[t.kind] for t in group], np.int64),
                np.array([t.nbits for t in group], np.int64),
            )
        else:  # several sites on one word: in order
            out = codes
            for site in group:
                out = _apply_site(out, ftype, site)
        by_op.setdefault(layer, {})[param] = out
    new_ops = [
        dataclasses.replace(op, **by_op[op.name]) if op.name in by_op else op for op in g.ops
    ]
    return dataclasses.replace(g, ops=new_ops)


def run_with_faults(g: GoldenModel, x_codes: np.ndarray, sites: Sequence[FaultSite]) -> np.ndarray:
    """Output codes of ``g`` on ``x_codes`` with every site applied: the reference semantics.

    Stored sites (weights, biases, lookup tables) corrupt a copy of the model for all samples;
    ``act`` / ``acc`` sites corrupt their tensor element in each sample's
    pass (one transient per inference) right after the op producing it (or on
    the input codes, for the input tensor), before any consumer reads it.
    """
    from .sites import PERMANENT_PARAMS, check_site, site_tensor

    fm = faulty_model(g, sites)
    transient: dict[str, list[FaultSite]] = {}
    for site in sites:
        if site.param not in PERMANENT_PARAMS:
            check_site(g, site)
            transient.setdefault(site_tensor(g, site.layer, site.param), []).append(site)
    x = np.asarray(x_codes)
    if not transient:
        return np.asarray(fm.run(x))
    fm.run(x[:1])  # input checks (dtype, range) exactly as for a plain run

    def hit(name: str, value: np.ndarray) -> np.ndarray:
        if name not in transient:
            return value
        t = g.tensors[name].type
        flat = np.array(value, dtype=np.int64, copy=True).reshape(value.shape[0], -1)
        for s in transient[name]:
            flat[:, s.index] = fault_values(
                flat[:, s.index], t.width, t.signed, s.bit, s.kind, s.nbits
            )
        return flat.reshape(value.shape)

    env: dict[str, np.ndarray] = {fm.input_name: hit(fm.input_name, x.astype(np.int64))}
    for op in fm.ops:
        env[op.output] = hit(op.output, np.asarray(op(*(env[i] for i in op.inputs))))
    return env[fm.output_name]
