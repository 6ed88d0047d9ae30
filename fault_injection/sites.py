"""Fault sites: *where* and *what* to corrupt (the fault model), as small frozen values.

A :class:`FaultSite` names one storage word of the golden model and the fault
that hits it:

* ``param="weight"`` / ``"bias"``: a stored parameter code of the Dense/Conv
  op ``layer``; ``index`` is the flat (C order) index into the op's code array
  (``(in, out)`` for Dense, ``(kh, kw, cin, cout)`` for Conv). The fault is
  permanent: every sample of a campaign sees it.
* ``param="act"``: a *transient* upset of the activation tensor produced by op
  ``layer`` (a Requant / ReLU / MaxPool ... output: the values the hardware
  holds between layers); ``index`` is the flat per-sample element index (C
  order of the golden tensor, NHWC for convolutional tensors). The graph input
  can be hit too, by naming the input tensor (``g.input_name``) as ``layer``.
  One transient per inference: every sample of the campaign gets the upset
  once, on its own pass.
* ``param="acc"``: the same for the accumulator output of a Dense/Conv op
  (before requantisation, bias included), in the accumulator's golden width.
* ``param="table"``: an entry of the ROM of a :class:`~edgeml.golden.Lookup` op
  ``layer`` (Tanh, Sigmoid, ... as a table over every input code); ``index`` is
  the entry (input code ``lo + index``, reported as ``<op>.table[index]``),
  stored in the op's output type. Permanent, like a weight.

The weights of a ``Dense.structural`` op (a mean's ones, the zeros outside a
group of a grouped conv expanded to a full Conv) are wiring, not memory: they
are no fault sites (their bias and accumulator still are).

``bit`` is the bit position in the storage word (0 = LSB, ``width - 1`` = the
sign bit of signed storage); ``kind`` is a flip (SEU), stuck-at-0 or
stuck-at-1; ``nbits > 1`` is a multi-bit upset of the adjacent bits
``bit .. bit + nbits - 1`` (all flipped, or all stuck), which must fit in the
word. *How* a site is applied lives in :mod:`edgeml.fault_injection.inject`.

A :class:`MultiFault` is several sites that strike at once (a bit-error-rate
trial, a burst): a sorted tuple of distinct sites, itself a frozen value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgeml.errors import ConfigError

if TYPE_CHECKING:
    from edgeml.fixed import FixedType
    from edgeml.golden import Dense, GoldenModel, Lookup

Param = Literal["weight", "bias", "act", "acc", "table"]
FaultKind = Literal["flip", "stuck0", "stuck1"]
#: Every site parameter; the position in this tuple is the code stored in result files
#: (new parameters are appended, so older files keep their codes).
PARAMS: tuple[str, ...] = ("weight", "bias", "act", "acc", "table")
#: Stored parameters of Dense/Conv ops (permanent faults) and tensors (transient faults).
STORED_PARAMS: tuple[str, ...] = ("weight", "bias")
TENSOR_PARAMS: tuple[str, ...] = ("act", "acc")
#: Read-only tables (Lookup ROM contents): permanent faults, like weights.
ROM_PARAMS: tuple[str, ...] = ("table",)
#: Every permanent (stored) fault target: what a faulty copy of the model holds.
PERMANENT_PARAMS: tuple[str, ...] = STORED_PARAMS + ROM_PARAMS
FAULT_KINDS: tuple[str, ...] = ("flip", "stuck0", "stuck1")


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"FaultSite.{name} must be an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class FaultSite:
    """One storage word of the golden model and the fault applied to it (see the module doc)."""

    layer: str
    param: Param
    index: int
    bit: int
    kind: FaultKind = "flip"
    nbits: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer:
            raise ConfigError(f"FaultSite.layer must be a non-empty op name, got {self.layer!r}")
        if self.param not in PARAMS:
            raise ConfigError(f"FaultSite.param must be one of {PARAMS}, got {self.param!r}")
        if self.kind not in FAULT_KINDS:
            raise ConfigError(f"FaultSite.kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        # numpy integers are accepted and stored as int, so sites hash, compare and
        # serialise the same whichever way they were built
        for name in ("index", "bit", "nbits"):
            v = getattr(self, name)
            if type(v) is not int:
                object.__setattr__(self, name, _as_int(name, v))
        if self.index < 0:
            raise ConfigError(f"FaultSite.index must be >= 0, got {self.index}")
        if self.bit < 0:
            raise ConfigError(f"FaultSite.bit must be >= 0 (0 = LSB), got {self.bit}")
        if self.nbits < 1:
            raise ConfigError(f"FaultSite.nbits must be >= 1 (adjacent bits hit), got {self.nbits}")

    @property
    def fault_id(self) -> str:
        """Stable string id ``layer/param/index/bit/kind/nbits``, e.g. ``fc1/weight/123/5/flip/1``."""
        return f"{self.layer}/{self.param}/{self.index}/{self.bit}/{self.kind}/{self.nbits}"

    @classmethod
    def from_id(cls, fault_id: str) -> FaultSite:
        """Inverse of :attr:`fault_id` (layer names may themselves contain ``/``)."""
        parts = str(fault_id).rsplit("/", 5)
        if len(parts) != 6:
            raise ConfigError(f"fault id {fault_id!r} is not 'layer/param/index/bit/kind/nbits'")
        layer, param, index, bit, kind, nbits = parts
        try:
            return cls(layer, param, int(index), int(bit), kind, int(nbits))  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError(
                f"fault id {fault_id!r}: index, bit and nbits must be integers"
            ) from exc

    @property
    def label(self) -> str:
        """Human-readable word name, e.g. ``fc1.weight[12] bit 5`` or ``tanh.table[200] bit 3``."""
        return f"{self.layer}.{self.param}[{self.index}] bit {self.bit}"

    @property
    def transient(self) -> bool:
        """True for activation/accumulator upsets (one per inference), False for stored codes."""
        return self.param in TENSOR_PARAMS

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "param": self.param,
            "index": self.index,
            "bit": self.bit,
            "kind": self.kind,
            "nbits": self.nbits,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaultSite:
        """Build from :meth:`to_dict` output; unknown or missing keys are a :class:`ConfigError`."""
        if not isinstance(d, dict):
            raise ConfigError(f"a fault site must be a mapping, got {type(d).__name__}")
        allowed = {"layer", "param", "index", "bit", "kind", "nbits"}
        extra = sorted(set(d) - allowed)
        missing = sorted({"layer", "param", "index", "bit"} - set(d))
        if extra or missing:
            raise ConfigError(
                f"fault site {d!r}: unknown keys {extra}, missing keys {missing}; "
                f"allowed keys are {sorted(allowed)}"
            )
        return cls(**d)


def _sort_key(s: FaultSite) -> tuple:
    return (s.layer, PARAMS.index(s.param), s.index, s.bit, s.kind, s.nbits)


@dataclass(frozen=True, slots=True)
class MultiFault:
    """Several sites that strike together in one trial (e.g. one bit-error-rate draw).

    ``sites`` is stored sorted and without duplicates, so two MultiFaults with
    the same set of sites are equal and hash alike. All stored-parameter sites
    are applied to one faulty copy of the model (sites on the same word apply
    in order); transient sites strike every sample's inference. An empty
    MultiFault is allowed (a BER trial that drew no error) and is fault-free.
    """

    sites: tuple[FaultSite, ...]

    def __post_init__(self) -> None:
        sites = tuple(self.sites)
        bad = [s for s in sites if not isinstance(s, FaultSite)]
        if bad:
            raise ConfigError(f"MultiFault.sites must be FaultSite values, got {bad[0]!r}")
        object.__setattr__(self, "sites", tuple(sorted(set(sites), key=_sort_key)))

    def __len__(self) -> int:
        return len(self.sites)

    @property
    def fault_id(self) -> str:
        """Stable id ``multi/<n sites>/<sha1 of the site ids>`` (content-addressed)."""
        h = hashlib.sha1("\n".join(s.fault_id for s in self.sites).encode()).hexdigest()[:16]
        return f"multi/{len(self.sites)}/{h}"

    def to_dict(self) -> dict[str, Any]:
        return {"sites": [s.to_dict() for s in self.sites]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MultiFault:
        if not isinstance(d, dict) or not isinstance(d.get("sites"), list):
            raise ConfigError("a multi-fault must be a mapping with a 'sites' list")
        return cls(tuple(FaultSite.from_dict(s) for s in d["sites"]))


# ----------------------------------------------------------------------------- storage


def param_storage(op: Dense, param: str) -> tuple[np.ndarray, FixedType]:
    """The stored codes and storage type a fault in ``op.<param>`` hits.

    Raises :class:`ConfigError` for a bias fault on an op without a bias and for
    a weight fault on a structural op (its weights are wiring, not memory).
    """
    if param == "weight":
        if getattr(op, "structural", False):
            raise ConfigError(
                f"layer '{op.name}' has structural weights (fixed by the graph: a mean's "
                "ones, a grouped conv's zeros outside its groups); they are wiring, not "
                "memory, and hold no fault sites. Its bias and accumulator ('acc') do"
            )
        return op.weight, op.weight_type
    if param == "bias":
        if op.bias is None or op.bias_type is None:
            raise ConfigError(f"layer '{op.name}' has no bias; it cannot hold a bias fault")
        return op.bias, op.bias_type
    raise ConfigError(f"param must be one of {STORED_PARAMS} here, got {param!r}")


def lookup_ops(g: GoldenModel) -> list[Lookup]:
    """The design's Lookup ops (ROM tables), in graph order."""
    from edgeml.golden import Lookup

    return [op for op in g.ops if isinstance(op, Lookup)]


def lookup_op(g: GoldenModel, layer: str) -> Lookup:
    """The Lookup op named ``layer``; a clear error if it holds no table."""
    for op in lookup_ops(g):
        if op.name == layer:
            return op
    raise ConfigError(
        f"a 'table' fault site names layer '{layer}', which holds no lookup table; "
        f"the design's lookup ops are {[op.name for op in lookup_ops(g)]}"
    )


def table_storage(g: GoldenModel, op: Lookup) -> tuple[np.ndarray, FixedType]:
    """The ROM codes of a Lookup op and their storage word: the op's output type.

    The entries are output codes of the quantizer fused with the function, so
    the output type holds each of them; a table that does not fit is refused.
    """
    t = g.tensors[op.output].type
    codes = np.asarray(op.table)
    if codes.size and (int(codes.min()) < t.qmin or int(codes.max()) > t.qmax):
        raise ConfigError(
            f"lookup '{op.name}': table codes span [{codes.min()}, {codes.max()}] but its "
            f"output type {t.hls()} holds [{t.qmin}, {t.qmax}]; the ROM word is undefined"
        )
    return codes, t


def stored_words(g: GoldenModel, layer: str, param: str) -> tuple[np.ndarray, FixedType]:
    """The stored codes and word type a permanent site ``layer.param`` hits (weight, bias, table)."""
    if param in STORED_PARAMS:
        return param_storage(param_op(g, layer), param)
    if param in ROM_PARAMS:
        return table_storage(g, lookup_op(g, layer))
    raise ConfigError(f"param must be one of {PERMANENT_PARAMS} here, got {param!r}")


def site_tensor(g: GoldenModel, layer: str, param: str) -> str:
    """Name of the golden tensor an ``act`` / ``acc`` site on ``layer`` hits.

    ``act``: the output of any op that is not Dense/Conv, or the graph input
    itself; ``acc``: the output of a Dense/Conv op. Errors list what is allowed.
    """
    from edgeml.golden import Dense

    by_name = {op.name: op for op in g.ops}
    if param == "acc":
        op = by_name.get(layer)
        if not isinstance(op, Dense):
            names = [o.name for o in g.param_ops]
            raise ConfigError(
                f"an 'acc' fault site needs a Dense/Conv layer, got {layer!r}; "
                f"the design's accumulating layers are {names}"
            )
        return op.output
    if param == "act":
        if layer == g.input_name and layer not in by_name:
            return layer
        op = by_name.get(layer)
        if op is None or isinstance(op, Dense):
            names = [o.name for o in g.ops if not isinstance(o, Dense)]
            raise ConfigError(
                f"an 'act' fault site needs a non-Dense op (or the input '{g.input_name}'), "
                f"got {layer!r}; allowed: {names} (Dense/Conv outputs are 'acc' sites)"
            )
        return op.output
    raise ConfigError(f"param must be one of {TENSOR_PARAMS} here, got {param!r}")


def site_word(g: GoldenModel, site: FaultSite) -> tuple[int, FixedType]:
    """(number of words per sample or parameter array, storage type) that ``site`` hits."""
    if site.param in PERMANENT_PARAMS:
        codes, ftype = stored_words(g, site.layer, site.param)
        return int(codes.size), ftype
    t = g.tensors[site_tensor(g, site.layer, site.param)]
    return int(np.prod(t.shape, dtype=np.int64)), t.type


def param_op(g: GoldenModel, layer: str) -> Dense:
    """The Dense/Conv op named ``layer``; a clear error if it holds no weights."""
    for op in g.param_ops:
        if op.name == layer:
            return op
    raise ConfigError(
        f"fault site names layer '{layer}', which holds no weights; "
        f"the design's weight layers are {[op.name for op in g.param_ops]}"
    )


def check_site(g: GoldenModel, site: FaultSite) -> None:
    """Raise :class:`ConfigError` if ``site`` does not fit ``g`` (layer, index, bit range)."""
    size, ftype = site_word(g, site)
    if site.index >= size:
        raise ConfigError(
            f"fault site {site.fault_id}: index {site.index} is out of range; "
            f"{site.layer}.{site.param} has {size} words (allowed 0..{size - 1})"
        )
    if site.bit + site.nbits > ftype.width:
        raise ConfigError(
            f"fault site {site.fault_id}: bits {site.bit}..{site.bit + site.nbits - 1} do not fit "
            f"the {ftype.width}-bit word of {site.layer}.{site.param} (allowed bit + nbits <= "
            f"{ftype.width})"
        )


# ----------------------------------------------------------------------------- enumeration


def activation_layers(g: GoldenModel) -> list[str]:
    """Ops whose output the hardware *stores* between layers: the default ``act`` sites.

    That is every op that is not Dense/Conv (accumulators are ``acc`` sites),
    not a pure layout op (Reshape/Transpose/Gather move values without storing
    new ones: a Slice, Concat or Pad reads registers that are already sites),
    and whose output is not only fed to further elementwise ops (a ReLU
    followed by its requantiser is one stored activation: the requantiser's
    output). Lookup, Sub/Mul/MatMul-of-tensors outputs are stored like an add's.
    """
    from edgeml.golden import Affine, Bipolar, Dense, Gather, Relu, Requant, Reshape, Transpose

    elementwise = (Relu, Requant, Affine, Bipolar)
    consumers: dict[str, list[Any]] = {}
    for op in g.ops:
        for i in op.inputs:
            consumers.setdefault(i, []).append(op)
    names = []
    for op in g.ops:
        if isinstance(op, (Dense, Reshape, Transpose, Gather)):
            continue
        users = consumers.get(op.output, [])
        if (
            op.output == g.output_name
            or not users
            or any(not isinstance(u, elementwise) for u in users)
        ):
            names.append(op.name)
    return names


def _check_kind(kind: str, nbits: int) -> None:
    if kind not in FAULT_KINDS:
        raise ConfigError(f"kind must be one of {FAULT_KINDS}, got {kind!r}")
    if isinstance(nbits, bool) or not isinstance(nbits, (int, np.integer)) or nbits < 1:
        raise ConfigError(f"nbits must be an integer >= 1, got {nbits!r}")


def _site_layers(
    g: GoldenModel, param: str, layers: list[str] | None
) -> list[tuple[int, str, int, FixedType]]:
    """(graph position, layer, words, type) of each word array ``param`` sites can hit."""
    from edgeml.golden import Dense

    order = {g.input_name: -1} | {op.name: k for k, op in enumerate(g.ops)}
    if param == "weight":
        allowed = cand = [op.name for op in g.param_ops if not op.structural]
    elif param == "bias":
        allowed = [op.name for op in g.param_ops]
        cand = [op.name for op in g.param_ops if op.bias is not None]
    elif param in ROM_PARAMS:
        allowed = cand = [op.name for op in lookup_ops(g)]
    elif param == "acc":
        allowed = cand = [op.name for op in g.param_ops]
    else:
        allowed = [g.input_name] + [op.name for op in g.ops if not isinstance(op, Dense)]
        cand = activation_layers(g) if layers is None else allowed
    if layers is not None:
        unknown = [n for n in layers if n not in allowed]
        if unknown:
            raise ConfigError(f"unknown layer(s) {unknown} for '{param}' sites; allowed: {allowed}")
        cand = [n for n in cand if n in set(layers)]
    out = []
    for name in cand:
        size, ftype = site_word(g, FaultSite(name, param, 0, 0))  # type: ignore[arg-type]
        out.append((order[name], name, size, ftype))
    return out


def enumerate_sites(
    g: GoldenModel,
    params: tuple[str, ...] | list[str] = PERMANENT_PARAMS,
    kind: FaultKind = "flip",
    nbits: int = 1,
    layers: Iterable[str] | None = None,
) -> list[FaultSite]:
    """Every site of the given kind over the words of ``params``, in a fixed order.

    Default: every stored bit (weights, biases, lookup tables; structural
    weights are wiring and excluded). Order: layer in graph order (the input
    tensor first), then parameter in the order given, then flat index, then
    the lowest bit hit, from LSB up; ``enumerate_sites(g)`` equals
    :func:`enumerate_param_sites`. With
    ``nbits > 1`` every run of ``nbits`` adjacent bits that fits the word is
    one site. ``layers`` restricts the sites to the named ops (for ``act``:
    any non-Dense op or the input tensor; default :func:`activation_layers`).
    """
    _check_kind(kind, nbits)
    params = tuple(params)
    bad = [p for p in params if p not in PARAMS]
    if bad or not params:
        raise ConfigError(f"params must be a non-empty selection from {PARAMS}, got {list(params)}")
    layers = None if layers is None else list(layers)
    rows = []
    for pi, param in enumerate(params):
        rows += [
            (pos, pi, param, name, size, ft)
            for pos, name, size, ft in _site_layers(g, param, layers)
        ]
    rows.sort(key=lambda r: (r[0], r[1]))
    nb = int(nbits)
    sites: list[FaultSite] = []
    for _, _, param, name, size, ftype in rows:
        n_bits = ftype.width - nb + 1
        if n_bits < 1:
            raise ConfigError(
                f"nbits={nb} does not fit the {ftype.width}-bit words of {name}.{param} "
                f"(allowed 1..{ftype.width})"
            )
        sites.extend(
            FaultSite(name, param, i, b, kind, nb)  # type: ignore[arg-type]
            for i in range(size)
            for b in range(n_bits)
        )
    return sites


def enumerate_param_sites(
    g: GoldenModel,
    *,
    params: tuple[str, ...] = PERMANENT_PARAMS,
    kind: FaultKind = "flip",
    layers: list[str] | None = None,
) -> list[FaultSite]:
    """Every bit of every stored code of ``g``: weights and biases of its Dense/Conv ops
    (structural weights excluded) and entries of its lookup tables, in graph order.

    Order: layer, then parameter (weight before bias), then flat index, then
    bit from LSB (0) to MSB (width - 1, the sign bit of signed storage).
    ``layers`` restricts the campaign to the named ops.
    """
    _check_kind(kind, 1)
    bad = [p for p in params if p not in PERMANENT_PARAMS]
    if bad:
        raise ConfigError(f"params must be drawn from {PERMANENT_PARAMS}, got {bad}")
    from edgeml.golden import Dense, Lookup

    ops: list[Any] = [op for op in g.ops if isinstance(op, Dense | Lookup)]
    names = [op.name for op in ops]
    if layers is not None:
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ConfigError(
                f"unknown layer(s) {unknown}; the design's weight layers are {names} "
                "(Dense/Conv ops and lookup tables)"
            )
        ops = [op for op in ops if op.name in layers]
    sites: list[FaultSite] = []
    for op in ops:
        for param in PERMANENT_PARAMS:
            if param not in params or not _holds(op, param):
                continue
            codes, ftype = stored_words(g, op.name, param)
            sites.extend(
                FaultSite(op.name, param, i, b, kind)  # type: ignore[arg-type]
                for i in range(codes.size)
                for b in range(ftype.width)
            )
    return sites


def _holds(op: Any, param: str) -> bool:
    """True if ``op`` has fault sites of the permanent ``param``."""
    from edgeml.golden import Dense, Lookup

    if param == "weight":
        return isinstance(op, Dense) and not op.structural
    if param == "bias":
        return isinstance(op, Dense) and op.bias is not None and op.bias_type is not None
    return param in ROM_PARAMS and isinstance(op, Lookup)


def count_param_sites(g: GoldenModel) -> int:
    """Number of single-bit sites over all stored words: weights (structural ones excluded),
    biases and lookup tables, sum(size * storage width)."""
    n = 0
    for op in g.param_ops:
        if not op.structural:
            n += op.weight.size * op.weight_type.width
        if op.bias is not None and op.bias_type is not None:
            n += op.bias.size * op.bias_type.width
    for op in lookup_ops(g):
        codes, ftype = table_storage(g, op)
        n += codes.size * ftype.width
    return n
