"""The injector: *how* a bit fault corrupts stored integer codes.

Codes are the golden model's int64 parameter codes; the hardware stores each
one as a ``bits``-wide two's-complement (or unsigned) word. A fault acts on that
word, not on the int64: take the low ``bits`` bits, flip / clear / set one bit,
then sign-extend back. So flipping the sign bit of a 6-bit code 5 gives
``5 - 32 = -27``, and bit ``bits - 1`` is the sign bit. Everything is numpy
bitwise arithmetic (no ``bin()`` strings) and returns new arrays: the model's
codes are never mutated.
"""

from __future__ import annotations

import numpy as np

from edgeml.errors import ConfigError

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
) -> np.ndarray:
    """Elementwise faulty value of each code: ``values``, ``bit`` and ``kind`` broadcast.

    ``kind`` is ``"flip"``, ``"stuck0"``, ``"stuck1"`` or an array of their
    :data:`KIND_CODES`. This is the vectorised core the campaign engine uses
    to corrupt many (index, bit) pairs at once.
    """
    _check_word(bits, signed)
    v = np.asarray(values, dtype=np.int64)
    _check_codes(v, bits, signed)
    b = np.asarray(bit, dtype=np.int64)
    if b.size and (b.min() < 0 or b.max() >= bits):
        raise ConfigError(f"bit positions must be in [0, {bits - 1}], got [{b.min()}, {b.max()}]")
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
    m = np.left_shift(np.int64(1), b)
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
) -> np.ndarray:
    """A copy of ``codes`` with one bit of one stored word corrupted.

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
    flat[i] = fault_values(flat[i], bits, signed, bit, kind)
    return out


def apply_bit_faults(
    codes: np.ndarray,
    bits: int,
    signed: bool,
    index: np.ndarray,
    bit: np.ndarray,
    kind: np.ndarray | str = "flip",
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
    out[rows, idx] = fault_values(out[rows, idx], bits, signed, b, kind)
    return out.reshape((idx.size, *codes.shape))


def fault_deltas(
    codes: np.ndarray,
    bits: int,
    signed: bool,
    index: np.ndarray,
    bit: np.ndarray,
    kind: np.ndarray | str = "flip",
) -> np.ndarray:
    """``faulty - original`` code of each (flat index, bit) fault: what linear layers need."""
    flat = np.asarray(codes, dtype=np.int64).reshape(-1)
    idx = np.asarray(index, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= flat.size):
        raise ConfigError(
            f"indices must be in [0, {flat.size - 1}], got [{idx.min()}, {idx.max()}]"
        )
    v = flat[idx]
    return fault_values(v, bits, signed, bit, kind) - v
