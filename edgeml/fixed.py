"""Fixed-point types shared by every level (golden model, hls4ml, RTL, faults).

A tensor in edgeml is an integer array plus a :class:`FixedType`: the real
value of code ``q`` is ``q * 2**-frac``. Integer codes are what every level is
compared on, so exactness never depends on float formatting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FixedType:
    """Two's-complement (or unsigned) fixed-point type.

    ``width`` counts all bits including the sign bit; ``frac`` is the number of
    fractional bits (may be negative or exceed ``width``). This is ap_fixed<W, W-frac>
    (signed) or ap_ufixed<W, W-frac> (unsigned) in HLS terms.
    """

    signed: bool
    width: int
    frac: int

    @property
    def integer(self) -> int:
        """Integer bits including the sign bit (the I of ap_fixed<W, I>)."""
        return self.width - self.frac

    @property
    def qmin(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def lsb(self) -> float:
        return 2.0**-self.frac

    def hls(self) -> str:
        """The HLS type string, e.g. ``ap_fixed<8,1>``."""
        kind = "ap_fixed" if self.signed else "ap_ufixed"
        return f"{kind}<{self.width},{self.integer}>"

    def to_float(self, q: np.ndarray) -> np.ndarray:
        """Exact float64 value of integer codes (exact while width <= 53)."""
        return np.ldexp(np.asarray(q, dtype=np.float64), -self.frac)

    def from_float_exact(self, x: np.ndarray) -> np.ndarray:
        """Codes of values that must lie on this type's grid; raises if any does not."""
        scaled = np.ldexp(np.asarray(x, dtype=np.float64), self.frac)
        q = np.rint(scaled)
        if not np.array_equal(q, scaled):
            bad = int(np.count_nonzero(q != scaled))
            raise ValueError(f"{bad} value(s) are not multiples of 2**-{self.frac} ({self.hls()})")
        return q.astype(np.int64)

    def contains(self, q: np.ndarray) -> np.ndarray:
        """Boolean mask of codes representable in this type without wrapping."""
        q = np.asarray(q)
        return (q >= self.qmin) & (q <= self.qmax)


def type_for_range(lo: int, hi: int, frac: int) -> FixedType:
    """Smallest FixedType holding every integer code in [lo, hi] at ``frac`` fractional bits."""
    signed = lo < 0
    width = 1
    while True:
        t = FixedType(signed, width, frac)
        if t.qmin <= lo and hi <= t.qmax:
            return t
        width += 1
