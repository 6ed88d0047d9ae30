"""Fault sites: *where* and *what* to corrupt (the fault model), as small frozen values.

A site names one bit of one stored parameter code: the layer (golden op name),
the parameter (``weight`` or ``bias``), the flat element index into the op's
code array (C order: ``(in, out)`` for Dense, ``(kh, kw, cin, cout)`` for Conv)
and the bit position in the parameter's storage word (0 = LSB, ``width - 1`` =
sign bit for signed storage). *How* a site is applied lives in
:mod:`edgeml.fault_injection.inject`; a campaign is a list of sites, so it can
be written out and replayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from edgeml.errors import ConfigError

if TYPE_CHECKING:
    from edgeml.fixed import FixedType
    from edgeml.golden import Dense, GoldenModel

Param = Literal["weight", "bias"]
FaultKind = Literal["flip", "stuck0", "stuck1"]
PARAMS: tuple[str, ...] = ("weight", "bias")
FAULT_KINDS: tuple[str, ...] = ("flip", "stuck0", "stuck1")


@dataclass(frozen=True, slots=True)
class FaultSite:
    """One bit of one stored weight/bias code, and the fault applied to it."""

    layer: str
    param: Param
    index: int
    bit: int
    kind: FaultKind = "flip"

    def __post_init__(self) -> None:
        if self.param not in PARAMS:
            raise ConfigError(f"FaultSite.param must be one of {PARAMS}, got {self.param!r}")
        if self.kind not in FAULT_KINDS:
            raise ConfigError(f"FaultSite.kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if self.index < 0 or self.bit < 0:
            raise ConfigError(
                f"FaultSite index and bit must be >= 0, got index={self.index}, bit={self.bit}"
            )


def param_storage(op: Dense, param: str) -> tuple[np.ndarray, FixedType]:
    """The stored codes and storage type a fault in ``op.<param>`` hits.

    Raises :class:`ConfigError` for a bias fault on an op without a bias.
    """
    if param == "weight":
        return op.weight, op.weight_type
    if param == "bias":
        if op.bias is None or op.bias_type is None:
            raise ConfigError(f"layer '{op.name}' has no bias; it cannot hold a bias fault")
        return op.bias, op.bias_type
    raise ConfigError(f"param must be one of {PARAMS}, got {param!r}")


def enumerate_param_sites(
    g: GoldenModel,
    *,
    params: tuple[str, ...] = PARAMS,
    kind: FaultKind = "flip",
    layers: list[str] | None = None,
) -> list[FaultSite]:
    """Every bit of every weight (and bias) code of ``g``'s Dense/Conv ops, in graph order.

    Order: layer, then parameter (weight before bias), then flat index, then
    bit from LSB (0) to MSB (width - 1, the sign bit of signed storage).
    ``layers`` restricts the campaign to the named ops.
    """
    if kind not in FAULT_KINDS:
        raise ConfigError(f"kind must be one of {FAULT_KINDS}, got {kind!r}")
    bad = [p for p in params if p not in PARAMS]
    if bad:
        raise ConfigError(f"params must be drawn from {PARAMS}, got {bad}")
    ops = g.param_ops
    names = [op.name for op in ops]
    if layers is not None:
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ConfigError(f"unknown layer(s) {unknown}; the design's weight layers are {names}")
        ops = [op for op in ops if op.name in layers]
    sites: list[FaultSite] = []
    for op in ops:
        for param in PARAMS:
            if param not in params or (param == "bias" and op.bias is None):
                continue
            codes, ftype = param_storage(op, param)
            sites.extend(
                FaultSite(op.name, param, i, b, kind)  # type: ignore[arg-type]
                for i in range(codes.size)
                for b in range(ftype.width)
            )
    return sites


def count_param_sites(g: GoldenModel) -> int:
    """Number of single-bit sites over all weights and biases: sum(size * storage width)."""
    n = 0
    for op in g.param_ops:
        n += op.weight.size * op.weight_type.width
        if op.bias is not None and op.bias_type is not None:
            n += op.bias.size * op.bias_type.width
    return n
