"""RTL fault campaigns: SEUs in the flip-flops of the Verilated design, and their golden equivalents.

A :class:`RtlFaultSite` names register bits of an FI build
(:mod:`edgeml.fault_injection.rtl_fi_build`) and *when* they flip:

* ``cycle=None``: every vector of the campaign gets one SEU, as it passes
  through the register (a transient per inference, like the golden model's
  ``act`` faults, which are applied to every sample);
* ``cycle=c``: one SEU on rising edge ``c`` of the fault-free stream in which
  vector ``j`` is sampled on edge ``j``. It hits exactly one vector in flight,
  ``c - rank`` (none if that is outside the batch: the fault is masked).

:func:`run_rtl_campaign` runs them through the compiled harness, scoring each
fault against the fault-free RTL: SDC rate (top-1 change, or any output change
with ``sdc="any"``) over the vectors the fault hit, max output deviation in
output LSBs, accuracy drop with labels.

The golden side (:func:`golden_register_flip`, :func:`golden_act_flip`)
recomputes the golden model from the flipped tensor onward
(``GoldenModel.run(trace=True)`` + ``run_from``). For the layer build a flip
of a register bit that maps ``exact`` (:mod:`.rtl_regmap`) must give the
golden outputs of the flip of that activation bit, integer for integer; the
tests check it on hundreds of sites.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgeml.errors import ConfigError, CorruptFileError, InputRangeError

if TYPE_CHECKING:
    from edgeml.golden import GoldenModel

    from .rtl_fi_build import FiDesign
    from .rtl_regmap import RegisterMap

log = logging.getLogger(__name__)

SDC_MODES: tuple[str, ...] = ("top1", "any")
FORMAT = "edgeml.rtl_fault_campaign"
FORMAT_VERSION = 1
#: Slots (fault x vector pairs) per harness call: bounds memory, sets the progress granularity.
_CHUNK_SLOTS = 1 << 17


@dataclass(frozen=True, slots=True)
class RtlFaultSite:
    """SEU in bits ``bit .. bit + nbits - 1`` of FI register ``register``, at ``cycle`` (None: every vector)."""

    register: str
    bit: int
    nbits: int = 1
    cycle: int | None = None

    def __post_init__(self) -> None:
        if self.bit < 0 or self.nbits < 1:
            raise ConfigError(
                f"RtlFaultSite bit must be >= 0 and nbits >= 1, got bit={self.bit}, nbits={self.nbits}"
            )
        if self.cycle is not None and self.cycle < 0:
            raise ConfigError(f"RtlFaultSite cycle must be >= 0 or None, got {self.cycle}")

    @property
    def fault_id(self) -> str:
        """Stable id, e.g. ``rtl/r3/17/1/all`` or ``rtl/r3/17/1/@42``."""
        when = "all" if self.cycle is None else f"@{self.cycle}"
        return f"rtl/{self.register}/{self.bit}/{self.nbits}/{when}"

    def bits(self) -> tuple[int, ...]:
        return tuple(range(self.bit, self.bit + self.nbits))


def enumerate_rtl_sites(
    design: FiDesign,
    *,
    registers: Sequence[str] | None = None,
    cycle: int | None = None,
    regmap: RegisterMap | None = None,
    classes: Sequence[str] | None = None,
) -> list[RtlFaultSite]:
    """Every single-bit SEU site of ``design`` (register, then bit order).

    ``registers`` restricts to named registers; ``classes`` (with ``regmap``)
    to bits of those map classes, e.g. ``("exact",)``.
    """
    names = [r.name for r in design.registers]
    if registers is not None:
        bad = [r for r in registers if r not in names]
        if bad:
            raise ConfigError(f"unknown register(s) {bad}; '{design.name}' has {names}")
    keep = None
    if classes is not None:
        if regmap is None:
            raise ConfigError("classes= needs regmap= (from rtl_regmap.map_registers)")
        keep = {(b.register, b.bit) for b in regmap.bits if b.cls in classes}
    out = []
    for r in design.registers:
        if registers is not None and r.name not in registers:
            continue
        for b in range(r.width):
            if keep is None or (r.name, b) in keep:
                out.append(RtlFaultSite(r.name, b, 1, cycle))
    return out


def sample_rtl_sites(
    design: FiDesign, n: int, seed: int, *, cycle: int | None = None
) -> list[RtlFaultSite]:
    """``n`` distinct single-bit sites drawn uniformly over all flip-flops (seeded)."""
    total = design.n_register_bits
    if not 0 <= n <= total:
        raise ConfigError(f"n must lie in [0, {total}] (the design's flip-flop bits), got {n}")
    pick = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    starts = np.cumsum([0] + [r.width for r in design.registers])
    out = []
    for p in pick.tolist():
        k = int(np.searchsorted(starts, p, side="right") - 1)
        out.append(RtlFaultSite(design.registers[k].name, int(p - starts[k]), 1, cycle))
    return out


def rtl_site_for(
    design: FiDesign,
    tensor: str,
    index: int,
    bit: int,
    nbits: int = 1,
    *,
    g: GoldenModel,
    cycle: int | None = None,
) -> RtlFaultSite:
    """The register flip equal to flipping golden code bits ``bit..bit+nbits-1`` of ``tensor[index]``.

    Uses the register where the tensor is first held (its producer's rank).
    In a field wider than the golden type, a flip that reaches the golden sign
    bit also flips the field's extra sign-extension bits, so the RTL site may
    have more bits than the golden one. Raises :class:`ConfigError` when no
    register holds the element (the da4ml build, or a tensor inside a segment).
    """
    if tensor not in g.tensors:
        raise ConfigError(f"unknown golden tensor {tensor!r}")
    ti = g.tensors[tensor]
    if bit < 0 or nbits < 1 or bit + nbits > ti.type.width:
        raise ConfigError(
            f"bits {bit}..{bit + nbits - 1} do not fit the {ti.type.width}-bit type of {tensor!r}"
        )
    for r in design.registers:
        for el in r.elements:
            if el.tensor == tensor and el.index == index:
                if el.frac != 0:
                    break
                top = bit + nbits - 1
                if ti.type.signed and top == ti.type.width - 1:
                    top = el.width - 1  # sign-extend the flip through a widened field
                elif top >= el.width:
                    break
                return RtlFaultSite(r.name, el.offset + bit, top - bit + 1, cycle)
    raise ConfigError(
        f"no register of '{design.name}' holds {tensor}[{index}] in golden format; "
        "generate a layer build whose boundaries include that tensor"
    )


def rtl_site_for_fault(design: FiDesign, site: Any, *, g: GoldenModel) -> RtlFaultSite:
    """RTL twin of a golden ``FaultSite(layer, param="act"|"acc", index, bit, nbits=...)``.

    ``layer`` names the golden op whose output tensor is flipped.
    """
    if getattr(site, "param", None) not in ("act", "acc"):
        raise ConfigError(
            f"only activation/accumulator sites have register twins; got param={getattr(site, 'param', None)!r}"
        )
    if getattr(site, "kind", "flip") != "flip":
        raise ConfigError("RTL SEUs are bit flips; stuck-at sites have no register twin")
    ops = {op.name: op for op in g.ops}
    if site.layer not in ops:
        raise ConfigError(f"unknown golden op {site.layer!r}")
    return rtl_site_for(
        design,
        ops[site.layer].output,
        int(site.index),
        int(site.bit),
        int(getattr(site, "nbits", 1)),
        g=g,
    )


# --------------------------------------------------------------------------- golden side


def trace_env(g: GoldenModel, x: np.ndarray) -> dict[str, np.ndarray]:
    _, tr = g.run(x, trace=True)
    return {g.input_name: np.asarray(x, np.int64), **tr}


def golden_act_flip(
    g: GoldenModel,
    x_codes: np.ndarray,
    tensor: str,
    index: int,
    bit: int,
    nbits: int = 1,
    *,
    env: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Golden outputs with code bits ``bit..bit+nbits-1`` of ``tensor[index]`` flipped on every sample.

    The flip is applied in the tensor's golden type (two's complement when
    signed), then every op after the producer is re-run (``run_from``).
    ``env`` is a cached ``{input, **trace}`` of ``x_codes``.
    """
    ti = g.tensors.get(tensor)
    if ti is None:
        raise ConfigError(f"unknown golden tensor {tensor!r}")
    t = ti.type
    if bit < 0 or nbits < 1 or bit + nbits > t.width:
        raise ConfigError(f"bits {bit}..{bit + nbits - 1} do not fit {tensor!r} ({t.hls()})")
    env = env if env is not None else trace_env(g, x_codes)
    mask = ((1 << nbits) - 1) << bit
    return _rerun_with(g, env, tensor, index, t.signed, t.width, 0, mask, _start_after(g, tensor))


def _start_after(g: GoldenModel, tensor: str) -> int:
    if tensor == g.input_name:
        return 0
    for i, op in enumerate(g.ops):
        if op.output == tensor:
            return i + 1
    raise ConfigError(f"tensor {tensor!r} is produced by no golden op")


def _flip_codes(v: np.ndarray, signed: bool, width: int, frac: int, mask: int) -> np.ndarray:
    """Flip ``mask`` in the packed form ``value * 2**frac`` (``width`` bits) of codes ``v``."""
    sh = -frac
    full = (1 << width) - 1
    u = (v >> sh) & full
    u = u ^ mask
    if signed:
        u = np.where(u >= (1 << (width - 1)), u - (1 << width), u)
    return u << sh


def _rerun_with(
    g: GoldenModel,
    env: dict[str, np.ndarray],
    tensor: str,
    index: int,
    signed: bool,
    width: int,
    frac: int,
    mask: int,
    start: int,
    more: list[tuple[str, int, bool, int, int, int]] | None = None,
) -> np.ndarray:
    env2 = dict(env)
    for t, i, s, w, f, m in [(tensor, index, signed, width, frac, mask), *(more or [])]:
        a = env2[t].copy()
        flat = a.reshape(len(a), -1)
        if not 0 <= i < flat.shape[1]:
            raise ConfigError(f"index {i} out of range for tensor {t!r} ({flat.shape[1]} elements)")
        flat[:, i] = _flip_codes(flat[:, i], s, w, f, m)
        env2[t] = a
    if tensor == g.output_name and start >= len(g.ops):
        return env2[g.output_name]
    return g.run_from(start, env2)


def golden_register_flip(
    g: GoldenModel,
    design: FiDesign,
    x_codes: np.ndarray,
    site: RtlFaultSite,
    *,
    env: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """What the golden model predicts for an RTL register flip ``site`` on every vector.

    The flipped bits are applied to the golden code in the register's own
    format (width, signedness, dropped zero LSBs), so this also covers bits
    with no golden-bit twin (``value`` bits). The golden model is re-run from
    the first op the register feeds: for the layer build, the next segment
    (exact for every bit the register map calls exact, value or copy); for
    the da4ml build, the op after the element's producer (exact only when no
    logic read the value before this register, which the campaign measures).
    Raises :class:`ConfigError` for bits that hold no golden element, and for
    da4ml forwarded copies (class ``copy``), which have no golden twin.
    """
    reg = design.register(site.register)
    if site.bit + site.nbits > reg.width:
        raise ConfigError(f"bits {site.bits()} exceed register {reg.name} ({reg.width} bits)")
    groups: dict[Any, int] = {}
    for b in site.bits():
        hit = reg.element_at(b)
        if hit is None or hit[0].tensor is None:
            raise ConfigError(
                f"bit {b} of {reg.name} holds no golden quantity; it has no golden twin"
            )
        el, j = hit
        groups[el] = groups.get(el, 0) | (1 << j)
    if design.kind != "layers":
        from .rtl_regmap import first_ranks

        first = first_ranks(design)
        for el in groups:
            if first[(el.tensor, el.index)] < reg.rank:
                raise ConfigError(
                    f"{reg.name} holds a forwarded copy of {el.tensor}[{el.index}] (rank "
                    f"{first[(el.tensor, el.index)]} holds it first); earlier logic read that copy, "
                    "so no golden flip matches this register flip"
                )
    env = env if env is not None else trace_env(g, x_codes)
    if design.kind == "layers":
        k = reg.rank
        if k + 1 < len(design.segments):
            first = design.segments[k + 1][0]
            start = next(i for i, op in enumerate(g.ops) if op.name == first)
        else:
            start = len(g.ops)
    else:
        start = min(_start_after(g, el.tensor) for el in groups)
    items = [(el.tensor, el.index, el.signed, el.width, el.frac, m) for el, m in groups.items()]
    t0 = items[0]
    return _rerun_with(g, env, *t0, start, more=items[1:])


# --------------------------------------------------------------------------- campaign


@dataclass
class RtlCampaignResult:
    """Per-fault scores of an RTL campaign (arrays in site order).

    ``n_hit``: vectors the fault struck (N for ``cycle=None``, 0 or 1 for one
    SEU); ``n_sdc``: struck vectors whose top-1 (``sdc="top1"``) or any output
    (``"any"``) changed vs the fault-free RTL; ``n_changed``: struck vectors
    with any output changed; ``sdc_rate`` = ``n_sdc / n_hit`` (0 when nothing
    was hit); ``max_dev``: largest |output - fault-free| in output LSBs;
    ``acc_drop``: fault-free minus faulty accuracy over all N vectors (NaN
    without labels). ``outputs`` (F, N, ...) only with ``return_outputs``.
    """

    sites: list[RtlFaultSite]
    n_vectors: int
    n_hit: np.ndarray
    n_sdc: np.ndarray
    n_changed: np.ndarray
    max_dev: np.ndarray
    acc_drop: np.ndarray
    reference: np.ndarray  # fault-free RTL outputs (N, ...)
    sdc: str = "top1"
    seconds: float = 0.0
    slots: int = 0
    design: str = ""
    outputs: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.sites)

    @property
    def sdc_rate(self) -> np.ndarray:
        return np.where(self.n_hit > 0, self.n_sdc / np.maximum(self.n_hit, 1), 0.0)

    @property
    def faults_per_s(self) -> float:
        return len(self.sites) / self.seconds if self.seconds > 0 else math.inf

    @property
    def vectors_per_s(self) -> float:
        """Simulated (fault, vector) pairs per second."""
        return self.slots / self.seconds if self.seconds > 0 else math.inf

    def per_register(self) -> dict[str, dict[str, float]]:
        """Mean SDC rate and fraction of faults with any SDC, per register."""
        out: dict[str, dict[str, float]] = {}
        regs = np.array([s.register for s in self.sites])
        rate = self.sdc_rate
        for r in dict.fromkeys(regs.tolist()):
            m = regs == r
            out[r] = {
                "faults": int(m.sum()),
                "mean_sdc_rate": float(rate[m].mean()),
                "faults_with_sdc": float((self.n_sdc[m] > 0).mean()),
            }
        return out

    def summary(self) -> dict[str, Any]:
        rate = self.sdc_rate
        return {
            "design": self.design,
            "faults": len(self.sites),
            "vectors": self.n_vectors,
            "sdc": self.sdc,
            "mean_sdc_rate": float(rate.mean()) if len(rate) else 0.0,
            "faults_with_sdc": int((self.n_sdc > 0).sum()),
            "masked_faults": int((self.n_changed == 0).sum()),
            "seconds": round(self.seconds, 3),
            "faults_per_s": round(self.faults_per_s, 1),
            "vectors_per_s": round(self.vectors_per_s, 1),
            "per_register": self.per_register(),
        }

    def save(self, path: str | Path) -> Path:
        """npz with the per-fault arrays, the sites and a format header."""
        path = Path(path)
        sites = np.array(
            [(s.register, s.bit, s.nbits, -1 if s.cycle is None else s.cycle) for s in self.sites],
            dtype=[("register", "U64"), ("bit", "i8"), ("nbits", "i8"), ("cycle", "i8")],
        )
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "n_vectors": self.n_vectors,
            "sdc": self.sdc,
            "seconds": self.seconds,
            "slots": self.slots,
            "design": self.design,
        }
        with open(path, "wb") as fh:
            np.savez_compressed(
                fh,
                header=np.array(json.dumps(header)),
                sites=sites,
                n_hit=self.n_hit,
                n_sdc=self.n_sdc,
                n_changed=self.n_changed,
                max_dev=self.max_dev,
                acc_drop=self.acc_drop,
                reference=self.reference,
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> RtlCampaignResult:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                if header.get("format") != FORMAT:
                    raise CorruptFileError(
                        f"{path} is not an RTL fault campaign ({header.get('format')!r})"
                    )
                sites = [
                    RtlFaultSite(str(r), int(b), int(n), None if c < 0 else int(c))
                    for r, b, n, c in z["sites"].tolist()
                ]
                return cls(
                    sites=sites,
                    n_vectors=int(header["n_vectors"]),
                    n_hit=z["n_hit"],
                    n_sdc=z["n_sdc"],
                    n_changed=z["n_changed"],
                    max_dev=z["max_dev"],
                    acc_drop=z["acc_drop"],
                    reference=z["reference"],
                    sdc=header["sdc"],
                    seconds=float(header["seconds"]),
                    slots=int(header["slots"]),
                    design=header.get("design", ""),
                )
        except CorruptFileError:
            raise
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise CorruptFileError(f"cannot read RTL campaign {path}: {exc}") from exc


def _fault_arrays(
    design: FiDesign, sites: Sequence[RtlFaultSite]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rank_of = {r.name: (r.rank, r.width) for r in design.registers}
    ranks = np.empty(len(sites), np.int32)
    counts = np.empty(len(sites), np.int64)
    bits: list[int] = []
    for i, s in enumerate(sites):
        if not isinstance(s, RtlFaultSite):
            raise ConfigError(f"sites must be RtlFaultSite values, got {type(s).__name__}")
        if s.register not in rank_of:
            raise ConfigError(
                f"site {s.fault_id}: unknown register {s.register!r}; '{design.name}' has {list(rank_of)}"
            )
        rank, width = rank_of[s.register]
        if s.bit + s.nbits > width:
            raise ConfigError(
                f"site {s.fault_id}: bits {s.bit}..{s.bit + s.nbits - 1} exceed {s.register} ({width} bits)"
            )
        ranks[i] = rank
        counts[i] = s.nbits
        bits.extend(range(s.bit, s.bit + s.nbits))
    ptr = np.zeros(len(sites) + 1, np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ranks, ptr, np.asarray(bits, np.int32)


def run_rtl_campaign(
    design: FiDesign,
    x_codes: np.ndarray,
    sites: Sequence[RtlFaultSite],
    *,
    labels: np.ndarray | None = None,
    sdc: Literal["top1", "any"] = "top1",
    progress: bool = True,
    n_threads: int = 0,
    return_outputs: bool = False,
) -> RtlCampaignResult:
    """Run every site through the FI harness on ``x_codes``; scores vs the fault-free RTL.

    (fault, vector) pairs are streamed back to back through the pipeline in
    chunks of ~131k, many faults per harness call; a ``cycle`` site costs one
    pair (only the vector it hits is simulated; the pipeline holds no other
    state), a ``cycle=None`` site N pairs.
    """
    from tqdm.auto import tqdm

    if sdc not in SDC_MODES:
        raise ConfigError(f"sdc must be one of {SDC_MODES}, got {sdc!r}")
    if not design.built:
        design.build()
    x = design.input_codes(x_codes)
    n = len(x)
    if n == 0:
        raise InputRangeError("run_rtl_campaign needs at least one vector")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise InputRangeError(
                f"labels must be a 1-D integer array with one class per vector ({n}), got {labels.shape}"
            )
    sites = list(sites)
    ranks, ptr, bits = _fault_arrays(design, sites)
    t0 = time.perf_counter()
    ref = design.predict_int(x, n_threads=n_threads).reshape(n, -1)
    ref_top = ref.argmax(axis=1)
    n_correct_ref = 0 if labels is None else int((ref_top == labels).sum())
    f_total = len(sites)
    n_hit = np.zeros(f_total, np.int64)
    n_sdc = np.zeros(f_total, np.int64)
    n_changed = np.zeros(f_total, np.int64)
    max_dev = np.zeros(f_total, np.int64)
    d_correct = np.zeros(f_total, np.int64)
    outputs = None
    if return_outputs:
        outputs = np.broadcast_to(ref, (f_total, *ref.shape)).copy()
    # slots per fault: all vectors, or the one vector the SEU hits
    cyc = np.array([-1 if s.cycle is None else s.cycle for s in sites], np.int64)
    per_fault = np.where(cyc < 0, n, ((cyc - ranks >= 0) & (cyc - ranks < n)).astype(np.int64))
    total_slots = int(per_fault.sum())
    bar = tqdm(
        total=f_total, desc=f"RTL faults ({design.name})", unit="fault", disable=not progress
    )
    f0 = 0
    try:
        while f0 < f_total:
            cum = np.cumsum(per_fault[f0:])
            f1 = f0 + max(1, int(np.searchsorted(cum, _CHUNK_SLOTS, side="right")))
            f1 = min(f1, f_total)
            fids = np.arange(f0, f1)
            pf = per_fault[f0:f1]
            slot_fault = np.repeat(fids, pf).astype(np.int32)
            all_vec = cyc[slot_fault] < 0
            starts = np.cumsum(pf) - pf
            within = np.arange(len(slot_fault)) - np.repeat(starts, pf)
            slot_vec = np.where(all_vec, within, cyc[slot_fault] - ranks[slot_fault]).astype(
                np.int64
            )
            out = design.run_slots(
                x, slot_vec, slot_fault, ranks, ptr, bits, n_threads=n_threads
            ).astype(np.int64)
            base = ref[slot_vec]
            diff = np.abs(out - base)
            changed = diff.any(axis=1)
            top = out.argmax(axis=1)
            flip = (top != ref_top[slot_vec]) if sdc == "top1" else changed
            # slots of one fault are contiguous: segment sums / maxima, no Python loop
            li = slot_fault - f0
            m = f1 - f0
            n_hit[f0:f1] += pf
            n_sdc[f0:f1] += np.bincount(li, weights=flip, minlength=m).astype(np.int64)
            n_changed[f0:f1] += np.bincount(li, weights=changed, minlength=m).astype(np.int64)
            nz = np.flatnonzero(pf)
            if nz.size:
                seg_max = np.maximum.reduceat(diff.max(axis=1), starts[nz])
                max_dev[f0 + nz] = np.maximum(max_dev[f0 + nz], seg_max)
            if labels is not None:
                lab = labels[slot_vec]
                delta = (top == lab).astype(np.int64) - (ref_top[slot_vec] == lab).astype(np.int64)
                d_correct[f0:f1] += np.bincount(li, weights=delta, minlength=m).astype(np.int64)
            if outputs is not None:
                outputs[slot_fault, slot_vec] = out
            bar.update(f1 - f0)
            f0 = f1
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    acc_drop = (
        np.full(f_total, math.nan)
        if labels is None
        else n_correct_ref / n - (n_correct_ref + d_correct) / n
    )
    res = RtlCampaignResult(
        sites=sites,
        n_vectors=n,
        n_hit=n_hit,
        n_sdc=n_sdc,
        n_changed=n_changed,
        max_dev=max_dev,
        acc_drop=acc_drop,
        reference=ref.reshape(n, *design.output_shape),
        sdc=sdc,
        seconds=seconds,
        slots=total_slots + n,
        design=design.name,
        outputs=None if outputs is None else outputs.reshape(f_total, n, *design.output_shape),
    )
    log.info(
        "RTL campaign %s: %d faults x %d vectors in %.2f s (%.0f faults/s, %.0f vectors/s)",
        design.name,
        f_total,
        n,
        seconds,
        res.faults_per_s,
        res.vectors_per_s,
    )
    return res
