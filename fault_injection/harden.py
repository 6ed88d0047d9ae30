"""Selective hardening of the RTL: protect the register bits the fault ranking says matter.

Three steps, each checkable on its own:

1. :func:`plan_protection` turns a per-register-bit SDC ranking (measured by
   :func:`.rtl_faults.run_rtl_campaign` on the unprotected layer build, or
   predicted by the golden model with :func:`golden_bit_scores`) into a
   :class:`ProtectionPlan` for a budget: the top fraction of register bits, or
   every bit whose SDC rate exceeds a threshold. Bits are grouped into
   *words* (one golden tensor element's field in one register rank) and each
   word gets TMR (two more flip-flops per protected bit and a bitwise majority
   voter) or SECDED (an extended Hamming code over the protected bits of the
   word: ``r + 1`` check flip-flops, encoder before the register, syndrome
   corrector after it), whichever costs less (:func:`word_cost`: flip-flops,
   plus half a LUT per estimated LUT of voter/codec logic). Single flips of a
   protected word are corrected either way, so the plan **predicts** the mean
   SDC per register bit after protection as the sum of the unprotected bits'
   scores over the number of register bits.
2. :func:`generate_hardened_fi_rtl` writes a protected twin of a layer FI build
   (:func:`.rtl_fi_build.generate_fi_rtl`) without changing it: the same
   combinational segment modules under a new top in which rank ``k`` is
   ``r<k>`` (data bits and TMR replica A, exactly as before) plus ``x<k>``
   (replicas B/C and check bits, ``(* keep *)`` so synthesis does not merge
   replicas), and every read of ``r<k>`` goes through ``v<k>``, its voted or
   corrected value. The mask port ``fi_mask_<k>`` grows by ``x<k>``'s width:
   bit ``b < W`` flips ``r<k>[b]`` (one replica, or one data bit), bit
   ``W + j`` flips ``x<k>[j]`` (a replica or check flip-flop), so the existing
   SEU harness injects into every physical flip-flop of the protected design.
3. :func:`harden_run` measures it on a run folder: the unprotected campaign,
   the plan, the protected build, its campaign over every flip-flop (the
   extra ones included), predicted vs measured mean SDC, and yosys area of both
   FI tops; it writes ``harden/harden.json`` and the protected Verilog.

**Why measured == predicted, exactly.** An SEU is one flipped flip-flop.
A protected word corrects any single flip, and the hardened top computes the
same functions of the corrected values as the plain top; so a flip of an
unprotected bit propagates exactly as before (downstream protected words hold
the computed, faulty value, as the plain registers did) and a flip of any
protected, replica or check flip-flop changes nothing. With per-bit scores from
the same vectors, the measured sum of SDC rates equals the predicted one
integer vector for integer vector. Multi-bit upsets (not modelled by the
plan) could defeat a word's code; these are the "interactions" the plan
ignores.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgeml.errors import ConfigError, UnsupportedOpError

if TYPE_CHECKING:
    from edgeml.golden import GoldenModel

    from .rtl_faults import RtlCampaignResult
    from .rtl_fi_build import FiDesign, Register

log = logging.getLogger(__name__)

SCHEMES: tuple[str, ...] = ("auto", "tmr", "secded")
#: LUTs are weighed at half a flip-flop in the per-word choice (a 7-series slice has 8 FF, 4 LUT6).
LUT_WEIGHT = 0.5
HARDEN_FORMAT = "edgeml.harden"


# --------------------------------------------------------------------------- cost model


def hamming_r(m: int) -> int:
    """Check bits of a Hamming code over ``m`` data bits: the least ``r`` with ``2**r >= m + r + 1``."""
    if m < 1:
        raise ConfigError(f"a protected word needs at least one data bit, got {m}")
    r = 1
    while (1 << r) < m + r + 1:
        r += 1
    return r


def _parity_luts(n_inputs: int) -> int:
    """LUT6 in an XOR tree over ``n_inputs`` signals (a wire for one input)."""
    return 0 if n_inputs <= 1 else math.ceil((n_inputs - 1) / 5)


def _hamming_positions(m: int) -> list[int]:
    """Codeword positions (1-based, powers of two are check bits) of ``m`` data bits."""
    out, p = [], 1
    while len(out) < m:
        if p & (p - 1):
            out.append(p)
        p += 1
    return out


def word_cost(scheme: str, m: int) -> tuple[int, int]:
    """(extra flip-flops, estimated LUT6) to protect ``m`` bits of one word with ``scheme``.

    TMR: two replicas per bit and one 3-input majority LUT per bit. SECDED:
    ``r + 1`` check flip-flops; encoder parity trees, syndrome trees and one
    corrector per data bit (it reads the syndrome, the overall parity and the bit).
    """
    if scheme == "tmr":
        return 2 * m, m
    if scheme != "secded":
        raise ConfigError(f"scheme must be 'tmr' or 'secded', got {scheme!r}")
    r = hamming_r(m)
    pos = _hamming_positions(m)
    cover = [sum(1 for p in pos if p >> j & 1) for j in range(r)]
    even = sum(1 for p in pos if bin(p).count("1") % 2 == 0)
    enc = sum(_parity_luts(c) for c in cover) + _parity_luts(even)
    dec = sum(_parity_luts(c + 1) for c in cover) + _parity_luts(m + r + 1)
    corr = m * max(1, _parity_luts(r + 2))
    return r + 1, enc + dec + corr


def choose_scheme(m: int, scheme: str = "auto") -> str:
    """TMR or SECDED for ``m`` protected bits: the lower ``ff + LUT_WEIGHT * lut`` (TMR on ties)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme != "auto":
        return scheme
    cost = {s: (lambda c: c[0] + LUT_WEIGHT * c[1])(word_cost(s, m)) for s in ("tmr", "secded")}
    return "tmr" if cost["tmr"] <= cost["secded"] else "secded"


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ProtectedWord:
    """Protected bits of one register word (a golden tensor element's field in rank ``rank``).

    ``bits`` are register bit positions; ``extra_offset`` is where the word's
    extra flip-flops (TMR replicas B then C, or the SECDED check bits then the
    overall parity) start in the rank's extra register ``x<rank>``.
    """

    register: str
    rank: int
    tensor: str | None
    index: int
    bits: tuple[int, ...]
    scheme: str
    extra_ff: int
    luts: int
    extra_offset: int
    score: float  # sum of the protected bits' scores


@dataclass
class ProtectionPlan:
    """Which register bits to protect, how, and the SDC the ranking predicts after protection.

    ``scores`` and ``protected`` are per register bit in design order (every
    register, bits 0..width-1: the order of :func:`.rtl_faults.enumerate_rtl_sites`).
    """

    budget: float
    mode: Literal["fraction", "sdc"]
    registers: list[tuple[str, int]]  # (name, width) in order
    scores: np.ndarray
    protected: np.ndarray
    words: list[ProtectedWord]
    scheme: str = "auto"

    @property
    def n_bits(self) -> int:
        return len(self.scores)

    @property
    def n_protected(self) -> int:
        return int(self.protected.sum())

    @property
    def predicted_before(self) -> float:
        """Mean SDC rate per register bit of the unprotected design (the ranking's mean)."""
        return float(self.scores.sum() / max(self.n_bits, 1))

    @property
    def predicted_after(self) -> float:
        """Predicted mean SDC per register bit: unprotected bits' scores summed over all bits."""
        return float(self.scores[~self.protected].sum() / max(self.n_bits, 1))

    @property
    def extra_ff(self) -> int:
        return sum(w.extra_ff for w in self.words)

    def extra_widths(self) -> dict[str, int]:
        """Extra flip-flops per register rank (the width of ``x<rank>``)."""
        out = {name: 0 for name, _ in self.registers}
        for w in self.words:
            out[w.register] += w.extra_ff
        return out

    def summary(self) -> dict[str, Any]:
        schemes = {s: sum(1 for w in self.words if w.scheme == s) for s in ("tmr", "secded")}
        return {
            "budget": self.budget,
            "mode": self.mode,
            "scheme": self.scheme,
            "register_bits": self.n_bits,
            "protected_bits": self.n_protected,
            "protected_words": len(self.words),
            "words_by_scheme": schemes,
            "extra_flipflops": self.extra_ff,
            "extra_luts_estimate": sum(w.luts for w in self.words),
            "predicted_mean_sdc_before": self.predicted_before,
            "predicted_mean_sdc_after": self.predicted_after,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "registers": [list(r) for r in self.registers],
            "words": [asdict(w) for w in self.words],
        }


def _parse_budget(budget: float | str) -> tuple[float, str]:
    if isinstance(budget, str):
        m = re.fullmatch(r"\s*sdc\s*>=?\s*([0-9.eE+-]+)\s*(%?)\s*", budget)
        p = re.fullmatch(r"\s*([0-9.eE+-]+)\s*%\s*", budget)
        try:
            if m:
                v = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
                if not 0.0 <= v <= 1.0:
                    raise ValueError
                return v, "sdc"
            if p:
                budget = float(p.group(1)) / 100.0
        except ValueError:
            pass
        if isinstance(budget, str):
            raise ConfigError(
                f"budget {budget!r} is not understood: give a fraction of register bits "
                "(0.05 or '5%') or an SDC threshold ('sdc>0.01' or 'sdc>1%')"
            )
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 <= budget <= 1:
        raise ConfigError(
            f"budget must be a fraction of register bits in [0, 1] (or 'sdc>X'), got {budget!r}"
        )
    return float(budget), "fraction"


def plan_protection(
    scores: np.ndarray,
    budget: float | str,
    *,
    words: Sequence[Register],
    scheme: str | Mapping[str, str] = "auto",
) -> ProtectionPlan:
    """Choose the register bits to protect and TMR or SECDED per word.

    ``scores``: per-register-bit SDC rates in design order (see
    :class:`ProtectionPlan`), ``words``: the FI design's registers (their
    elements define the words). ``budget``: a fraction of register bits (the
    top ``ceil(budget * bits)`` by score) or ``"sdc>X"`` (every bit scoring
    above ``X``). Bits scoring 0 are never protected (nothing to gain).
    ``scheme``: ``"auto"`` (cheaper per word), ``"tmr"``, ``"secded"``, or a
    mapping register name -> scheme (registers not named: ``"auto"``).
    """
    value, mode = _parse_budget(budget)
    regs = list(words)
    n = sum(r.width for r in regs)
    s = np.asarray(scores, np.float64).reshape(-1)
    if s.shape != (n,):
        raise ConfigError(
            f"scores must hold one value per register bit ({n}, design order), got shape {s.shape}"
        )
    if not np.all(np.isfinite(s)) or s.min(initial=0) < 0:
        raise ConfigError("scores must be finite SDC rates >= 0")
    names = [r.name for r in regs]
    per_reg = dict(scheme) if isinstance(scheme, Mapping) else dict.fromkeys(names, scheme)
    bad = {k: v for k, v in per_reg.items() if k not in names or v not in SCHEMES}
    if bad:
        raise ConfigError(
            f"scheme {bad} is not understood: schemes are {SCHEMES}, registers {names}"
        )
    prot = np.zeros(n, bool)
    if mode == "fraction":
        k = math.ceil(value * n - 1e-9)
        order = np.argsort(-s, kind="stable")[:k]
        prot[order] = True
    else:
        prot = s > value
    prot &= s > 0
    out: list[ProtectedWord] = []
    base = 0
    for r in regs:
        off = 0
        for el in r.elements:
            bits = tuple(b for b in range(el.offset, el.offset + el.width) if prot[base + b])
            if bits:
                sch = choose_scheme(len(bits), per_reg.get(r.name, "auto"))
                ff, luts = word_cost(sch, len(bits))
                sc = float(sum(s[base + b] for b in bits))
                out.append(
                    ProtectedWord(r.name, r.rank, el.tensor, el.index, bits, sch, ff, luts, off, sc)
                )
                off += ff
        covered = {b for el in r.elements for b in range(el.offset, el.offset + el.width)}
        stray = [b for b in range(r.width) if prot[base + b] and b not in covered]
        if stray:  # bits outside any element (cannot happen in a layer build): own words
            for b in stray:
                sch = choose_scheme(1, per_reg.get(r.name, "auto"))
                ff, luts = word_cost(sch, 1)
                out.append(
                    ProtectedWord(
                        r.name, r.rank, None, -1, (b,), sch, ff, luts, off, float(s[base + b])
                    )
                )
                off += ff
        base += r.width
    return ProtectionPlan(
        budget=value,
        mode=mode,  # type: ignore[arg-type]
        registers=[(r.name, r.width) for r in regs],
        scores=s,
        protected=prot,
        words=out,
        scheme=scheme if isinstance(scheme, str) else json.dumps(dict(scheme)),
    )


def protection_curve(scores: np.ndarray, fractions: Sequence[float]) -> list[dict[str, float]]:
    """Predicted mean SDC per register bit after protecting the top ``f`` of bits, per fraction."""
    s = np.sort(np.asarray(scores, np.float64).reshape(-1))[::-1]
    n = len(s)
    cum = np.concatenate([[0.0], np.cumsum(s)])
    out = []
    for f in fractions:
        k = math.ceil(float(f) * n - 1e-9)
        out.append(
            {
                "fraction": float(f),
                "bits": int(k),
                "predicted_mean_sdc": float((cum[-1] - cum[k]) / n),
            }
        )
    return out


def scores_from_campaign(design: FiDesign, result: RtlCampaignResult) -> np.ndarray:
    """Per-register-bit SDC rates (design order) from a single-bit campaign over every bit."""
    idx = {}
    base = 0
    for r in design.registers:
        idx[r.name] = base
        base += r.width
    s = np.full(base, np.nan)
    rate = result.sdc_rate
    for i, site in enumerate(result.sites):
        if site.nbits != 1 or site.register not in idx:
            raise ConfigError(f"site {site.fault_id} is no single-bit site of '{design.name}'")
        s[idx[site.register] + site.bit] = rate[i]
    if np.isnan(s).any():
        raise ConfigError(
            f"the campaign covers {int((~np.isnan(s)).sum())} of {base} register bits; "
            "scores need every bit (run enumerate_rtl_sites(design))"
        )
    return s


def golden_bit_scores(
    g: GoldenModel, design: FiDesign, x_codes: np.ndarray, *, sdc: str = "top1"
) -> np.ndarray:
    """The golden model's prediction of every register bit's SDC rate (design order), no RTL run.

    Each bit's flip is applied to the golden code it holds
    (:func:`.rtl_faults.golden_register_flip`); bits that hold no golden
    element score 0. For the layer build this equals the measured campaign.
    """
    from .rtl_faults import RtlFaultSite, golden_register_flip, trace_env

    if sdc not in ("top1", "any"):
        raise ConfigError(f"sdc must be 'top1' or 'any', got {sdc!r}")
    env = trace_env(g, x_codes)
    ref = np.asarray(env[g.output_name]).reshape(len(x_codes), -1)
    ref_top = ref.argmax(axis=1)
    out = []
    for r in design.registers:
        for b in range(r.width):
            hit = r.element_at(b)
            if hit is None or hit[0].tensor is None:
                out.append(0.0)
                continue
            y = golden_register_flip(g, design, x_codes, RtlFaultSite(r.name, b), env=env)
            y = np.asarray(y).reshape(len(ref), -1)
            bad = (y.argmax(axis=1) != ref_top) if sdc == "top1" else (y != ref).any(axis=1)
            out.append(float(bad.mean()))
    return np.asarray(out)


# --------------------------------------------------------------------------- protected RTL


_ASSIGN_REG = re.compile(r"\br(\d+)\b")


def _xor(terms: Sequence[str]) -> str:
    return " ^ ".join(terms) if terms else "1'b0"


def _word_lines(w: ProtectedWord, k: int) -> tuple[list[str], dict[int, str]]:
    """Encoder (next state of the word's extra flip-flops) and the voted/corrected value of each bit."""
    o = w.extra_offset
    lines: list[str] = []
    vals: dict[int, str] = {}
    if w.scheme == "tmr":
        m = len(w.bits)
        for i, b in enumerate(w.bits):
            lines.append(f"    assign e{k}[{o + i}] = d{k}[{b}];  // replica B")
            lines.append(f"    assign e{k}[{o + m + i}] = d{k}[{b}];  // replica C")
            a, bb, c = f"r{k}[{b}]", f"x{k}[{o + i}]", f"x{k}[{o + m + i}]"
            vals[b] = f"({a} & {bb}) | ({a} & {c}) | ({bb} & {c})"
        return lines, vals
    m = len(w.bits)
    r = hamming_r(m)
    pos = _hamming_positions(m)
    tag = f"h{k}_{o}"
    for j in range(r):
        cov = [b for b, p in zip(w.bits, pos, strict=True) if p >> j & 1]
        lines.append(
            f"    assign e{k}[{o + j}] = {_xor([f'd{k}[{b}]' for b in cov])};  // check {j}"
        )
    even = [b for b, p in zip(w.bits, pos, strict=True) if bin(p).count("1") % 2 == 0]
    lines.append(
        f"    assign e{k}[{o + r}] = {_xor([f'd{k}[{b}]' for b in even])};  // overall parity"
    )
    lines.append(f"    wire [{r - 1}:0] {tag}_s;")
    for j in range(r):
        cov = [f"r{k}[{b}]" for b, p in zip(w.bits, pos, strict=True) if p >> j & 1]
        lines.append(f"    assign {tag}_s[{j}] = {_xor([f'x{k}[{o + j}]', *cov])};")
    allb = [f"r{k}[{b}]" for b in w.bits] + [f"x{k}[{o + j}]" for j in range(r + 1)]
    lines.append(f"    wire {tag}_p = {_xor(allb)};")
    for b, p in zip(w.bits, pos, strict=True):
        vals[b] = f"r{k}[{b}] ^ ({tag}_p & ({tag}_s == {r}'d{p}))"
    return lines, vals


def _hardened_top(
    base_text: str, base_name: str, name: str, regs: Sequence[Register], plan: ProtectionPlan
) -> str:
    extra = plan.extra_widths()
    by_rank: dict[int, list[ProtectedWord]] = {}
    for w in plan.words:
        by_rank.setdefault(w.rank, []).append(w)
    lines = base_text.splitlines()
    out: list[str] = []
    in_always = False
    for ln in lines:
        if ln.startswith(f"module {base_name} ("):
            out.append(f"module {name} (")
            continue
        mm = re.match(r"    input \[(\d+):0\] fi_mask_(\d+),$", ln)
        if mm:
            k = int(mm.group(2))
            w_tot = int(mm.group(1)) + 1 + extra[f"r{k}"]
            out.append(f"    input [{w_tot - 1}:0] fi_mask_{k},")
            continue
        if ln.startswith("// Generated by edgeml.fault_injection.rtl_fi_build."):
            out.append(
                f"// Generated by edgeml.fault_injection.harden from '{base_name}': "
                f"{plan.n_protected} of {plan.n_bits} register bits protected "
                f"({sum(1 for w in plan.words if w.scheme == 'tmr')} TMR words, "
                f"{sum(1 for w in plan.words if w.scheme == 'secded')} SECDED words)."
            )
            out.append(
                "// r<k>: data bits / TMR replica A; x<k>: replicas B, C and SECDED check bits; "
                "v<k>: voted / corrected value read by all logic."
            )
            out.append(
                "// fi_mask_<k>[W-1:0] flips r<k>, fi_mask_<k>[W+E-1:W] flips x<k> (one flip-flop each)."
            )
            continue
        if ln.startswith("    always @(posedge clk) begin"):
            in_always = True
            continue
        if in_always:
            if ln.strip() == "end":
                in_always = False
                out.append("    always @(posedge clk) begin")
                for r in regs:
                    k, w = r.rank, r.width
                    out.append(f"        r{k} <= d{k} ^ fi_mask_{k}[{w - 1}:0];")
                    e = extra[r.name]
                    if e:
                        out.append(f"        x{k} <= e{k} ^ fi_mask_{k}[{w + e - 1}:{w}];")
                out.append("    end")
            continue
        mreg = re.match(r"    reg \[(\d+):0\] r(\d+);", ln)
        if mreg:
            k, w = int(mreg.group(2)), int(mreg.group(1)) + 1
            out.append(ln)
            e = extra[f"r{k}"]
            out.append(f"    wire [{w - 1}:0] v{k};  // value of r{k} read by the logic")
            if k == 0:
                out.append(f"    wire [{w - 1}:0] d0 = model_inp;")
            if e:
                out.append(
                    f'    (* keep = "true" *) reg [{e - 1}:0] x{k};  // replicas / check bits'
                )
                out.append(f"    wire [{e - 1}:0] e{k};")
            continue
        if ln.startswith("    assign "):
            out.append(_ASSIGN_REG.sub(lambda m_: f"v{m_.group(1)}", ln))
            continue
        if ln.startswith("endmodule"):
            for r in regs:
                k = r.rank
                vals: dict[int, str] = {}
                for w in by_rank.get(k, []):
                    wl, wv = _word_lines(w, k)
                    out.extend(wl)
                    vals.update(wv)
                b = 0
                while b < r.width:  # unprotected runs as slices, protected bits one by one
                    if b in vals:
                        out.append(f"    assign v{k}[{b}] = {vals[b]};")
                        b += 1
                        continue
                    e0 = b
                    while b < r.width and b not in vals:
                        b += 1
                    out.append(f"    assign v{k}[{b - 1}:{e0}] = r{k}[{b - 1}:{e0}];")
        out.append(ln)
    text = "\n".join(out) + "\n"
    n = len(regs)
    found = (
        sum(1 for ln in out if re.match(r"    input \[\d+:0\] fi_mask_\d+,$", ln)),
        sum(1 for ln in out if re.match(r"    wire \[\d+:0\] v\d+;", ln)),
        text.count("    always @(posedge clk) begin"),
        text.count(f"module {name} ("),
    )
    if found != (n, n, 1, 1):
        raise UnsupportedOpError(
            f"the layer build's top of '{base_name}' is not in the form edgeml.harden rewrites "
            f"(mask ports, registers, always blocks, module lines: {found}, expected {(n, n, 1, 1)})"
        )
    return text


def generate_hardened_fi_rtl(
    base: FiDesign, plan: ProtectionPlan, out_dir: str | Path, name: str | None = None
) -> FiDesign:
    """Protected twin of the layer FI build ``base`` per ``plan`` in ``out_dir``; returns it unbuilt.

    Segment modules are copied unchanged; the new top (see the module
    docstring) has the same ports except wider masks. Each rank's register in
    the returned design is ``W + E`` bits: ``r<k>`` then ``x<k>``, so an RTL
    site ``(r<k>, W + j)`` is an SEU in extra flip-flop ``j``.
    """
    from .rtl_fi_build import FiDesign, Register, check_ident

    if base.kind != "layers":
        raise UnsupportedOpError(
            "hardening rewrites the layer build's top (generate_fi_rtl); the da4ml build is not supported"
        )
    if [(r.name, r.width) for r in base.registers] != plan.registers:
        raise ConfigError(
            f"the plan was made for registers {plan.registers[:4]}..., not those of '{base.name}'"
        )
    name = name or f"{base.name}_hard"
    check_ident(name)
    out_dir = Path(out_dir).resolve()
    if out_dir == base.out_dir.resolve():
        raise ConfigError("write the hardened build into another folder than its base build")
    src = out_dir / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(base.out_dir / "src", src)
    top_rel = f"src/{base.name}.v"
    base_text = (base.out_dir / top_rel).read_text()
    (src / f"{base.name}.v").unlink()
    text = _hardened_top(base_text, base.name, name, base.registers, plan)
    (src / f"{name}.v").write_text(text)
    extra = plan.extra_widths()
    regs = [
        Register(
            r.name,
            r.rank,
            r.width + extra[r.name],
            r.holds + (f" + {extra[r.name]} protection flip-flops" if extra[r.name] else ""),
            r.elements,
        )
        for r in base.registers
    ]
    d = FiDesign(
        name=name,
        kind="layers",
        out_dir=out_dir,
        registers=regs,
        input_shape=base.input_shape,
        output_shape=base.output_shape,
        input_type=base.input_type,
        output_type=base.output_type,
        out_signed=base.out_signed,
        out_width=base.out_width,
        sources=[s for s in base.sources if s != top_rel] + [f"src/{name}.v"],
        segments=base.segments,
        boundaries=base.boundaries,
    )
    d.save()
    (out_dir / "protection_plan.json").write_text(json.dumps(plan.to_json(), indent=1))
    return d


def physical_sites(design: FiDesign, plan: ProtectionPlan) -> dict[str, list[Any]]:
    """Single-bit SEU sites of a hardened design, by role: ``plain``, ``protected``, ``extra``."""
    from .rtl_faults import RtlFaultSite

    protected = set()
    base = 0
    for name, w in plan.registers:
        for b in range(w):
            if plan.protected[base + b]:
                protected.add((name, b))
        base += w
    widths = dict(plan.registers)
    out: dict[str, list[Any]] = {"plain": [], "protected": [], "extra": []}
    for r in design.registers:
        for b in range(r.width):
            role = (
                "extra"
                if b >= widths[r.name]
                else ("protected" if (r.name, b) in protected else "plain")
            )
            out[role].append(RtlFaultSite(r.name, b))
    return out


# --------------------------------------------------------------------------- run-folder entry


def _area(design: FiDesign) -> dict[str, Any] | None:
    from edgeml.resources import estimate_resources

    est = estimate_resources(design.verilog_files, design.name)
    if est is None:
        return None
    return {
        "lut": est.lut,
        "ff": est.ff,
        "cells": int(sum(est.cells.values())),
        "yosys_s": est.seconds,
    }


def measure_protection(
    base: FiDesign,
    x_codes: np.ndarray,
    scores: np.ndarray,
    budget: float | str,
    out_dir: str | Path,
    *,
    sdc: Literal["top1", "any"] = "top1",
    scheme: str | Mapping[str, str] = "auto",
    area: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Plan at ``budget``, build the protected design, run its campaign on every flip-flop; a summary.

    ``measured_mean_sdc`` is the sum of the protected design's per-flip-flop
    SDC rates over the *original* register bits (comparable with the
    prediction); ``measured_mean_sdc_per_flipflop`` divides by all its
    flip-flops (the extra ones are SEU targets too).
    """
    from .rtl_faults import run_rtl_campaign

    plan = plan_protection(scores, budget, words=base.registers, scheme=scheme)
    t0 = time.perf_counter()
    hard = generate_hardened_fi_rtl(base, plan, out_dir)
    build_s = hard.build()
    roles = physical_sites(hard, plan)
    sites = roles["plain"] + roles["protected"] + roles["extra"]
    res = run_rtl_campaign(hard, x_codes, sites, sdc=sdc, progress=progress)
    rate = res.sdc_rate
    n_pl, n_pr = len(roles["plain"]), len(roles["protected"])
    ref_ok = bool(
        np.array_equal(
            res.reference.reshape(len(x_codes), -1),
            base.predict_int(x_codes).reshape(len(x_codes), -1),
        )
    )
    summary: dict[str, Any] = {
        **plan.summary(),
        "flipflops": hard.n_register_bits,
        "measured_mean_sdc": float(rate.sum() / plan.n_bits),
        "measured_mean_sdc_per_flipflop": float(rate.mean()),
        "measured_sdc_protected_bits": float(rate[n_pl : n_pl + n_pr].sum()),
        "measured_sdc_extra_flipflops": float(rate[n_pl + n_pr :].sum()),
        "faults_with_sdc": int((res.n_sdc > 0).sum()),
        "fault_free_equals_base": ref_ok,
        "vectors": len(x_codes),
        "build_s": round(float(build_s), 2),
        "campaign_s": round(res.seconds, 2),
        "seconds": round(time.perf_counter() - t0, 2),
        "verilog": str(hard.out_dir / "src" / f"{hard.name}.v"),
    }
    if area:
        summary["area"] = _area(hard)
    return summary


def harden_run(
    run_dir: str | Path,
    budget: float | str = 0.05,
    out: str | Path | None = None,
    *,
    budgets: Sequence[float | str] = (),
    n_samples: int | None = None,
    scheme: str = "auto",
    area: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Selective hardening of a run folder's RTL; writes ``<out>/harden.json`` (default ``run_dir/harden``).

    Builds the layer FI build of the run's golden model, measures every
    register bit's SDC (RTL campaign, one SEU per vector on the run's fault
    samples), protects ``budget`` (and each of ``budgets``, for a
    predicted-vs-measured curve), rebuilds, re-measures, and reports yosys area
    of the unprotected and protected FI tops. The protected Verilog of
    ``budget`` is ``<out>/protected/src/``.
    """
    from .rtl_faults import enumerate_rtl_sites, run_rtl_campaign
    from .rtl_fi_build import generate_fi_rtl
    from .runner import load_run_inputs

    t0 = time.perf_counter()
    inp = load_run_inputs(run_dir, n_samples)
    g, x, y = inp.g, inp.x, inp.labels
    out_dir = Path(out) if out is not None else Path(run_dir) / "harden"
    out_dir.mkdir(parents=True, exist_ok=True)
    from edgeml.config import design_identifier

    ident = design_identifier(str(inp.identity["design"]))
    base = generate_fi_rtl(g, out_dir / "base", f"fi_{ident}")
    base_build = base.build()
    if not np.array_equal(base.predict_int(x), g.predict(x)):
        raise UnsupportedOpError("the unprotected FI build differs from the golden model")
    sdc: Literal["top1", "any"] = "top1" if y is not None else "any"
    res = run_rtl_campaign(base, x, enumerate_rtl_sites(base), sdc=sdc, progress=progress)
    scores = scores_from_campaign(base, res)
    report: dict[str, Any] = {
        "format": HARDEN_FORMAT,
        "design": str(inp.identity["design"]),
        "vectors": len(x),
        "sdc": sdc,
        "register_bits": base.n_register_bits,
        "unprotected": {
            "mean_sdc": float(scores.mean()),
            "faults_with_sdc": int((scores > 0).sum()),
            "top1pct_bits_sdc": float(
                np.sort(scores)[::-1][: max(1, math.ceil(0.01 * len(scores)))].mean()
            ),
            "build_s": round(float(base_build), 2),
            "campaign_s": round(res.seconds, 2),
            "area": _area(base) if area else None,
        },
        "curve": protection_curve(scores, [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]),
    }
    runs = []
    for i, b in enumerate([budget, *[b for b in budgets if b != budget]]):
        folder = out_dir / ("protected" if i == 0 else f"protected_{i}")
        s = measure_protection(
            base, x, scores, b, folder, sdc=sdc, scheme=scheme, area=area, progress=progress
        )
        # the base build equals golden (checked above), so this is protected == golden
        s["fault_free_equals_golden"] = s.pop("fault_free_equals_base")
        runs.append(s)
    report["protected"] = runs
    report["seconds"] = round(time.perf_counter() - t0, 2)
    from edgeml.manifest import write_json

    write_json(out_dir / "harden.json", report)
    return report


def harden_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """``harden.json`` as a table: one row unprotected, one per budget measured."""
    head = ["budget", "protected bits (words: TMR / SECDED)", "+FF", "predicted mean SDC",
            "measured mean SDC", "yosys LUT / FF", "fault-free == golden"]  # fmt: skip

    def area(a: dict[str, Any] | None) -> str:
        return f"{a['lut']:,} / {a['ff']:,}" if a else "-"

    u = report["unprotected"]
    rows = [["none", "0", "0", f"{100 * u['mean_sdc']:.3f} %", f"{100 * u['mean_sdc']:.3f} %",
             area(u.get("area")), "yes"]]  # fmt: skip
    for p in report.get("protected", []):
        w = p.get("words_by_scheme", {})
        rows.append(
            [
                f"{100 * p['budget']:.0f} % of bits"
                if p.get("mode") == "fraction"
                else str(p["budget"]),
                f"{p['protected_bits']} ({w.get('tmr', 0)} / {w.get('secded', 0)})",
                f"{p['extra_flipflops']}",
                f"{100 * p['predicted_mean_sdc_after']:.3f} %",
                f"{100 * p['measured_mean_sdc']:.3f} %",
                area(p.get("area")),
                "yes" if p.get("fault_free_equals_golden") else "NO",
            ]
        )
    return head, rows


def harden_summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal: the unprotected SDC and each budget's prediction vs measurement."""
    u = report["unprotected"]
    lines = [
        f"{report['register_bits']} register bits, {report['vectors']} vectors: mean SDC "
        f"{100 * u['mean_sdc']:.3f} % per bit (top 1 % of bits: {100 * u['top1pct_bits_sdc']:.1f} %)"
    ]
    head, rows = harden_rows(report)
    lines += ["  " + " | ".join(r) for r in [head, *rows[1:]]]
    return "\n".join(lines)
