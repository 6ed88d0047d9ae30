"""Generate the five-class jet-tagging sample (gluon, light quark, W, Z, top) with Pythia8 + FastJet.

This module rebuilds, offline and from a seed, the 16 high-level features of the
hls4ml LHC jet-tagging data set (Coleman et al. 2018, arXiv:1709.08705; Duarte
et al. 2018, arXiv:1804.06913), which the hls4ml papers use for the
16-64-32-32-5 MLP. Nothing is downloaded: Pythia 8 (``pythia8mc`` wheel, which
ships its ``xmldoc``) generates pp collisions at 13 TeV, FastJet (``fastjet``
wheel) clusters them, and the substructure is computed here in numpy.

Command line (``--help`` lists all options); this made the committed sample::

    python -m edgeml.models.jetgen --per-class 7000 --seed 2026 --workers 2 --out models/data/jets_v1.npz

It writes the ``.npz`` (35,000 jets, 2.3 MB) plus a ``.json`` beside it (command,
seed, counts, events, tool versions, wall time, sha256 of the ``.npz``). Cost:
about 93 ms of CPU per jet (Pythia's event generation dominates; the features
take a few ms), i.e. 3,260 CPU-s for the sample, 27 min wall with 2 workers on a
shared 2-core machine (21 jets/s).

Processes (hadronisation, ISR/FSR, multiple interactions and hadron decays on)
------------------------------------------------------------------------------
label 0 ``g``  gluon:       HardQCD gg -> gg and q qbar -> gg, pTHat in [700, 1300] GeV.
label 1 ``q``  light quark: HardQCD qg -> qg, qq -> qq, q qbar -> q' qbar' (u, d, s),
                            pTHat in [700, 1300] GeV; only jets matched to u/d/s count.
label 2 ``w``  W boson:     RS graviton G*(2 TeV) -> W+ W-, W -> q q' forced.
label 3 ``z``  Z boson:     RS graviton G*(2 TeV) -> Z Z, Z -> q qbar (u, d, s, c, b) forced.
label 4 ``t``  top quark:   Z'(2 TeV) -> t tbar, W -> q q' forced (so t -> b q q').

A 2 TeV resonance gives decay products with pT up to about 1 TeV (Jacobian
peak), so all five classes populate the same jet-pT window.

Jets and truth matching
-----------------------
Jets are anti-kT, R = 0.8 (E-scheme) on all final-state *visible* particles of the
event (``Particle.isVisible``: neutrinos excluded; no detector simulation, no
pile-up). A jet is kept when 800 <= pT <= 1200 GeV, |eta| < 2.5 and it is matched,
DeltaR(jet, object) < 0.8 in (rapidity, phi), to an object of its class:

* g / q: an outgoing parton of the hard 2 -> 2 process (``pythia.process``, status
  23) that is a gluon / a u, d or s (anti)quark;
* W / Z / top: the last copy (after recoils, just before its decay) of a W / Z /
  top quark in the event record; their decays are forced hadronic.

Jets are taken in decreasing pT; each truth object matches at most one jet (the
first, i.e. hardest, within 0.8), so an event gives 0, 1 or 2 jets.

Features (names as in the hls4ml data set; order = :data:`FEATURES`)
--------------------------------------------------------------------
Grooming (mMDT = modified mass-drop tagger = soft drop with beta = 0, z_cut = 0.1,
mu = 1): the jet's constituents are reclustered with Cambridge/Aachen (R = 1000, so
one jet); the last clustering step is undone, giving subjets j1, j2; if
``min(pT1, pT2) / (pT1 + pT2) > 0.1`` the jet is kept, otherwise the softer subjet
is dropped and the procedure repeats on the harder one (a single particle is kept
as is). ``*_mmdt`` features use the constituents of the groomed jet.

Energy correlation functions (Larkoski, Salam, Thaler 2013; Moult, Necib, Thaler
2016) on the n groomed constituents with ``z_i = pT_i / sum_k pT_k`` and
``R_ij = sqrt(Delta y_ij^2 + Delta phi_ij^2)`` (FastJet's pt_R measure):

* ``e2^b  = sum_{i<j} z_i z_j R_ij^b``
* ``e3^b  = sum_{i<j<k} z_i z_j z_k (R_ij R_ik R_jk)^b``
* ``1e3^b = sum_{i<j<k} z_i z_j z_k min(R_ij, R_ik, R_jk)^b``       (generalised, v = 1)
* ``2e3^b = sum_{i<j<k} z_i z_j z_k (product of the two smallest of R_ij, R_ik, R_jk)^b`` (v = 2)
* ``1e2^b = e2^b``.

=====================  ==========================================================
``j_zlogz``            ``sum_i z_i log z_i`` over all (ungroomed) constituents
``j_c1_b0_mmdt``       ``C1^(0) = e2^0 = sum_{i<j} z_i z_j``
``j_c1_b1_mmdt``       ``C1^(1) = e2^1``
``j_c1_b2_mmdt``       ``C1^(2) = e2^2``
``j_c2_b1_mmdt``       ``C2^(1) = e3^1 / (e2^1)^2``
``j_c2_b2_mmdt``       ``C2^(2) = e3^2 / (e2^2)^2``
``j_d2_b1_mmdt``       ``D2^(1) = e3^1 / (e2^1)^3``
``j_d2_b2_mmdt``       ``D2^(2) = e3^2 / (e2^2)^3``
``j_d2_a1_b1_mmdt``    ``D2^(1,1) = e3^1 / (e2^1)^(3*1/1)`` (equal to ``D2^(1)`` by definition)
``j_d2_a1_b2_mmdt``    ``D2^(1,2) = e3^1 / (e2^2)^(3*1/2)``
``j_m2_b1_mmdt``       ``M2^(1) = 1e3^1 / 1e2^1``
``j_m2_b2_mmdt``       ``M2^(2) = 1e3^2 / 1e2^2``
``j_n2_b1_mmdt``       ``N2^(1) = 2e3^1 / (1e2^1)^2``
``j_n2_b2_mmdt``       ``N2^(2) = 2e3^2 / (1e2^2)^2``
``j_mass_mmdt``        invariant mass of the groomed jet (GeV)
``j_multiplicity``     number of (ungroomed) constituents
=====================  ==========================================================

These are FastJet-contrib's ``EnergyCorrelatorC1/C2/D2/GeneralizedD2/M2/N2``
definitions; ``tests/test_jets.py`` checks the numpy values against FastJet's
own contrib implementation (reached through its awkward interface) on real jets.
A ratio whose denominator is 0 (a groomed jet of one particle) is defined as 0.

Determinism
-----------
Each class is generated in chunks of :data:`CHUNK_JETS` jets; chunk ``k`` of
class ``c`` runs its own Pythia instance with ``Random:seed`` derived from
``(seed, c, k)`` (:func:`chunk_seed`). The output is therefore identical for a
given seed whatever the number of worker processes, and a run with fewer jets per
class is a prefix of a run with more (per class).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.errors import ConfigError, CorruptFileError, DependencyError

log = logging.getLogger(__name__)

#: Class keys in label order (the hls4ml order j_g, j_q, j_w, j_z, j_t).
CLASSES: tuple[str, ...] = ("g", "q", "w", "z", "t")
CLASS_NAMES: tuple[str, ...] = ("gluon", "light quark", "W boson", "Z boson", "top quark")
#: The 16 input features of the hls4ml jet-tagging MLP, in the data set's order.
FEATURES: tuple[str, ...] = (
    "j_zlogz",
    "j_c1_b0_mmdt",
    "j_c1_b1_mmdt",
    "j_c1_b2_mmdt",
    "j_c2_b1_mmdt",
    "j_c2_b2_mmdt",
    "j_d2_b1_mmdt",
    "j_d2_b2_mmdt",
    "j_d2_a1_b1_mmdt",
    "j_d2_a1_b2_mmdt",
    "j_m2_b1_mmdt",
    "j_m2_b2_mmdt",
    "j_n2_b1_mmdt",
    "j_n2_b2_mmdt",
    "j_mass_mmdt",
    "j_multiplicity",
)
#: Ungroomed jet kinematics stored beside the features (not model inputs).
KINEMATICS: tuple[str, ...] = ("j_pt", "j_eta", "j_mass")

JET_R = 0.8
PT_WINDOW: tuple[float, float] = (800.0, 1200.0)
ETA_MAX = 2.5
MATCH_DR = 0.8
MMDT_ZCUT = 0.1
#: Jets per generation chunk (one Pythia instance and seed per chunk).
CHUNK_JETS = 500
#: A chunk gives up (clear error) after this many events per requested jet.
MAX_EVENTS_PER_JET = 50
#: Pythia's Random:seed must lie in [1, 900_000_000] (0 would mean "seed from the clock").
_PYTHIA_SEED_MAX = 900_000_000
FORMAT = "edgeml-jets-v1"

_COMMON = (
    "Beams:eCM = 13000.",
    "Print:quiet = on",
    "Next:numberCount = 0",
    "Random:setSeed = on",
)
_QCD_PTHAT = ("PhaseSpace:pTHatMin = 700.", "PhaseSpace:pTHatMax = 1300.")
_W_HADRONIC = ("24:onMode = off", "24:onIfAny = 1 2 3 4 5")
_Z_HADRONIC = ("23:onMode = off", "23:onIfAny = 1 2 3 4 5")
_GRAVITON = (
    "ExtraDimensionsG*:gg2G* = on",
    "ExtraDimensionsG*:ffbar2G* = on",
    "5100039:m0 = 2000.",
)
#: Pythia settings per class (added to the common beam/print/seed settings).
PROCESSES: dict[str, tuple[str, ...]] = {
    "g": ("HardQCD:gg2gg = on", "HardQCD:qqbar2gg = on", *_QCD_PTHAT),
    "q": (
        "HardQCD:qg2qg = on",
        "HardQCD:qq2qq = on",
        "HardQCD:qqbar2qqbarNew = on",
        "HardQCD:nQuarkNew = 3",
        *_QCD_PTHAT,
    ),
    "w": (*_GRAVITON, "5100039:onMode = off", "5100039:onIfMatch = 24 -24", *_W_HADRONIC),
    "z": (*_GRAVITON, "5100039:onMode = off", "5100039:onIfMatch = 23 23", *_Z_HADRONIC),
    "t": (
        "NewGaugeBoson:ffbar2gmZZprime = on",
        "Zprime:gmZmode = 3",
        "32:m0 = 2000.",
        "32:onMode = off",
        "32:onIfAny = 6",
        *_W_HADRONIC,
    ),
}
#: Truth objects a jet of each class must match: ("parton", ids) in the hard process,
#: or ("resonance", |id|) in the event record.
_TRUTH: dict[str, tuple[str, tuple[int, ...]]] = {
    "g": ("parton", (21,)),
    "q": ("parton", (1, 2, 3)),
    "w": ("resonance", (24,)),
    "z": ("resonance", (23,)),
    "t": ("resonance", (6,)),
}


def _import_physics() -> tuple[Any, Any]:
    """Import Pythia 8 and FastJet lazily (only the generator needs them)."""
    try:
        import fastjet
        import pythia8mc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DependencyError(
            f"jet generation needs the 'pythia8mc' and 'fastjet' wheels ({exc}); "
            "pip install pythia8mc==8.317.2 fastjet==3.5.2.0"
        ) from exc
    _silence_fastjet_banner(fastjet)
    return pythia8mc, fastjet


def _silence_fastjet_banner(fastjet: Any) -> None:
    """FastJet prints a banner on stdout at its first clustering; print it nowhere."""
    try:
        fastjet._swig.ClusterSequence.set_fastjet_banner_stream(None)
    except (AttributeError, TypeError):  # pragma: no cover - other bindings
        log.debug("could not silence the FastJet banner")


# ------------------------------------------------------------------------- seeds


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or value < lo
        or (hi is not None and value > hi)
    ):
        allowed = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def chunk_seed(seed: int, label: int, chunk: int) -> int:
    """Pythia ``Random:seed`` of chunk ``chunk`` of class ``label`` for master ``seed``.

    Derived with numpy's SeedSequence, so seeds of different (class, chunk) pairs
    are independent and the mapping is stable across platforms.
    """
    seed = _check_int("seed", seed, 0)
    state = np.random.SeedSequence([seed, label, chunk]).generate_state(1, np.uint32)[0]
    return int(state) % _PYTHIA_SEED_MAX + 1


def pythia_settings(cls: str, seed: int) -> list[str]:
    """All Pythia ``readString`` settings of class ``cls`` with ``Random:seed = seed``."""
    if cls not in PROCESSES:
        raise ConfigError(f"unknown jet class {cls!r}; allowed: {', '.join(CLASSES)}")
    return [*_COMMON, f"Random:seed = {seed}", *PROCESSES[cls]]


# ---------------------------------------------------------------------- geometry


def rapidity_phi(p4: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pT, rapidity, phi)`` of ``(n, 4)`` four-momenta ``(px, py, pz, E)`` (FastJet's conventions)."""
    p4 = np.asarray(p4, dtype=np.float64).reshape(-1, 4)
    px, py, pz, e = p4.T
    pt = np.hypot(px, py)
    # Rapidity as FastJet computes it (massless limits stay finite for pT > 0).
    with np.errstate(divide="ignore", invalid="ignore"):
        rap = 0.5 * np.log((e + pz) / (e - pz))
    rap = np.where(np.isfinite(rap), rap, np.sign(pz) * 1e5)
    phi = np.arctan2(py, px)
    phi = np.where(phi < 0, phi + 2 * np.pi, phi)
    return pt, rap, phi


def delta_r_matrix(rap: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Pairwise ``R_ij = sqrt(dy^2 + dphi^2)`` with dphi wrapped into [-pi, pi]."""
    dy = rap[:, None] - rap[None, :]
    dphi = np.abs(phi[:, None] - phi[None, :])
    dphi = np.where(dphi > np.pi, 2 * np.pi - dphi, dphi)
    return np.sqrt(dy * dy + dphi * dphi)


def _delta_r(rap1: float, phi1: float, rap2: float, phi2: float) -> float:
    dphi = abs(phi1 - phi2) % (2 * math.pi)
    dphi = min(dphi, 2 * math.pi - dphi)
    return math.hypot(rap1 - rap2, dphi)


def invariant_mass(p4: np.ndarray) -> float:
    """Mass of the summed four-momentum (0 when numerically space-like)."""
    px, py, pz, e = np.asarray(p4, dtype=np.float64).reshape(-1, 4).sum(axis=0)
    return float(math.sqrt(max(e * e - px * px - py * py - pz * pz, 0.0)))


# ------------------------------------------------------------ energy correlators


def _triple_sums(z: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Sums over i<j<k of ``z_i z_j z_k * f(R_ij, R_ik, R_jk)`` for six ``f``.

    Returns ``[e3^1, e3^2, 1e3^1, 1e3^2, 2e3^1, 2e3^2]``. For each ``i`` the pairs
    ``j, k > i`` are handled as one dense block (both orders, hence the final
    halving; ``j == k`` contributes 0 because ``R_jj = 0``): O(n^3) work in
    O(n) numpy calls and O(n^2) memory. Sums are elementwise (``np.sum``), not
    BLAS dots: OpenBLAS threads oversubscribe shared cores and change the
    summation order with the thread count.
    """
    n = len(z)
    out = np.zeros(6)
    zz = np.multiply.outer(z, z)
    for i in range(n - 2):
        a = theta[i, i + 1 :]
        c = theta[i + 1 :, i + 1 :]
        w = z[i] * zz[i + 1 :, i + 1 :]
        prod = np.multiply.outer(a, a) * c
        lo = np.minimum(np.minimum.outer(a, a), c)
        hi = np.maximum(np.maximum.outer(a, a), c)
        two = np.divide(prod, hi, out=np.zeros_like(prod), where=hi > 0)  # two smallest
        wp, wl, wt = w * prod, w * lo, w * two
        out += [wp.sum(), (wp * prod).sum(), wl.sum(), (wl * lo).sum(), wt.sum(), (wt * two).sum()]
    return out / 2


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def ecf_features(pt: np.ndarray, rap: np.ndarray, phi: np.ndarray) -> dict[str, float]:
    """The 13 energy-correlation features (``j_c1_b0_mmdt`` .. ``j_n2_b2_mmdt``) of one jet.

    ``pt``, ``rap``, ``phi`` are the (groomed) constituents; see the module
    docstring for the definitions.
    """
    pt = np.asarray(pt, dtype=np.float64)
    if pt.ndim != 1 or len(pt) == 0 or not np.all(pt > 0):
        raise ConfigError("ecf_features needs a non-empty 1-d array of positive pT")
    z = pt / pt.sum()
    theta = delta_r_matrix(np.asarray(rap, np.float64), np.asarray(phi, np.float64))
    e2_0 = 0.5 * (1.0 - float(np.sum(z * z)))
    zz = np.multiply.outer(z, z)  # elementwise sums, no BLAS (see _triple_sums)
    e2_1 = 0.5 * float(np.sum(zz * theta))
    e2_2 = 0.5 * float(np.sum(zz * theta * theta))
    e3_1, e3_2, m3_1, m3_2, n3_1, n3_2 = _triple_sums(z, theta)
    return {
        "j_c1_b0_mmdt": e2_0,
        "j_c1_b1_mmdt": e2_1,
        "j_c1_b2_mmdt": e2_2,
        "j_c2_b1_mmdt": _ratio(e3_1, e2_1**2),
        "j_c2_b2_mmdt": _ratio(e3_2, e2_2**2),
        "j_d2_b1_mmdt": _ratio(e3_1, e2_1**3),
        "j_d2_b2_mmdt": _ratio(e3_2, e2_2**3),
        "j_d2_a1_b1_mmdt": _ratio(e3_1, e2_1**3),
        "j_d2_a1_b2_mmdt": _ratio(e3_1, e2_2**1.5),
        "j_m2_b1_mmdt": _ratio(m3_1, e2_1),
        "j_m2_b2_mmdt": _ratio(m3_2, e2_2),
        "j_n2_b1_mmdt": _ratio(n3_1, e2_1**2),
        "j_n2_b2_mmdt": _ratio(n3_2, e2_2**2),
    }


# -------------------------------------------------------------------- grooming


def mmdt_groom(p4: np.ndarray, zcut: float = MMDT_ZCUT, fastjet: Any = None) -> np.ndarray:
    """Indices (into ``p4``) of the constituents that survive mMDT grooming.

    Reclusters ``p4`` (``(n, 4)`` px, py, pz, E) with Cambridge/Aachen and walks
    the clustering history from the top: stop at the first splitting with
    ``min(pT1, pT2) / (pT1 + pT2) > zcut``, else follow the harder branch
    (soft drop with beta = 0).
    """
    if not 0.0 < zcut < 0.5:
        raise ConfigError(f"zcut must lie in (0, 0.5), got {zcut!r}")
    p4 = np.asarray(p4, dtype=np.float64).reshape(-1, 4)
    if len(p4) == 0:
        raise ConfigError("mmdt_groom needs at least one constituent")
    if fastjet is None:
        _, fastjet = _import_physics()
    if len(p4) == 1:
        return np.zeros(1, dtype=np.int64)
    parts = []
    for i, (px, py, pz, e) in enumerate(p4.tolist()):
        pj = fastjet.PseudoJet(px, py, pz, e)
        pj.set_user_index(i)
        parts.append(pj)
    jet_def = fastjet.JetDefinition(fastjet.cambridge_algorithm, 1000.0)
    cs = fastjet.ClusterSequence(parts, jet_def)
    jets = cs.inclusive_jets()
    if len(jets) != 1:  # pragma: no cover - C/A with R = 1000 always gives one jet
        raise RuntimeError(f"C/A reclustering gave {len(jets)} jets, expected 1")
    jet = jets[0]
    p1, p2 = fastjet.PseudoJet(), fastjet.PseudoJet()
    while jet.has_parents(p1, p2):
        pt1, pt2 = p1.pt(), p2.pt()
        if min(pt1, pt2) / (pt1 + pt2) > zcut:
            break
        jet = p1 if pt1 >= pt2 else p2
        p1, p2 = fastjet.PseudoJet(), fastjet.PseudoJet()
    idx = np.array(sorted(c.user_index() for c in jet.constituents()), dtype=np.int64)
    del cs  # the jets reference the sequence; keep it alive until here
    return idx


def jet_features(p4: np.ndarray, fastjet: Any = None) -> np.ndarray:
    """The 16 features (:data:`FEATURES` order, float64) of a jet's constituents ``(n, 4)``."""
    p4 = np.asarray(p4, dtype=np.float64).reshape(-1, 4)
    pt, rap, phi = rapidity_phi(p4)
    keep = pt > 0
    if not np.any(keep):
        raise ConfigError("a jet needs at least one constituent with pT > 0")
    p4, pt, rap, phi = p4[keep], pt[keep], rap[keep], phi[keep]
    z_all = pt / pt.sum()
    groomed = mmdt_groom(p4, fastjet=fastjet)
    feats = ecf_features(pt[groomed], rap[groomed], phi[groomed])
    feats["j_zlogz"] = float(np.sum(z_all * np.log(z_all)))
    feats["j_mass_mmdt"] = invariant_mass(p4[groomed])
    feats["j_multiplicity"] = float(len(p4))
    return np.array([feats[name] for name in FEATURES], dtype=np.float64)


# -------------------------------------------------------------------- generation


@dataclass
class ChunkResult:
    """Jets of one generation chunk (one Pythia instance)."""

    label: int
    chunk: int
    features: np.ndarray
    kinematics: np.ndarray
    events: int
    seconds: float


def _visible_final(event: Any) -> np.ndarray:
    """``(n, 4)`` px, py, pz, E of the final-state visible particles (no neutrinos)."""
    rows = [
        (p.px(), p.py(), p.pz(), p.e()) for p in event.particles() if p.isFinal() and p.isVisible()
    ]
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def _truth_objects(pythia: Any, cls: str) -> list[tuple[float, float]]:
    """(rapidity, phi) of the objects a jet of class ``cls`` may be matched to."""
    kind, ids = _TRUTH[cls]
    out = []
    if kind == "parton":
        for p in pythia.process.particles():
            if p.status() == 23 and p.idAbs() in ids:
                out.append((p.y(), p.phi()))
    else:
        event = pythia.event
        for i, p in enumerate(event.particles()):
            # Particle copies from particles() lack the event pointer that
            # iBotCopyId() needs, so ask the record itself.
            if p.idAbs() in ids and event[i].iBotCopyId() == i:
                out.append((p.y(), p.phi()))
    return out


def _event_jets(
    pythia: Any, fastjet: Any, cls: str, jet_def: Any
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Selected, truth-matched jets of the current event: ``(constituents (n, 4), kinematics)``."""
    parts4 = _visible_final(pythia.event)
    pjs = []
    for i, (px, py, pz, e) in enumerate(parts4.tolist()):
        pj = fastjet.PseudoJet(px, py, pz, e)
        pj.set_user_index(i)
        pjs.append(pj)
    cs = fastjet.ClusterSequence(pjs, jet_def)
    jets = fastjet.sorted_by_pt(cs.inclusive_jets(PT_WINDOW[0]))
    truth = _truth_objects(pythia, cls)
    used: set[int] = set()
    for jet in jets:
        pt = jet.pt()
        if pt > PT_WINDOW[1] or abs(jet.eta()) >= ETA_MAX:
            continue
        match = [
            k
            for k, (y, phi) in enumerate(truth)
            if k not in used and _delta_r(jet.rap(), jet.phi(), y, phi) < MATCH_DR
        ]
        if not match:
            continue
        best = min(match, key=lambda k: _delta_r(jet.rap(), jet.phi(), *truth[k]))
        used.add(best)
        idx = np.array([c.user_index() for c in jet.constituents()], dtype=np.int64)
        kin = np.array([pt, jet.eta(), jet.m()], dtype=np.float64)
        yield parts4[idx], kin
    del cs


def _make_pythia(label: int, seed: int, chunk: int) -> Any:
    pythia8mc, _ = _import_physics()
    cls = CLASSES[label]
    pythia = pythia8mc.Pythia("", False)
    for setting in pythia_settings(cls, chunk_seed(seed, label, chunk)):
        if not pythia.readString(setting):  # pragma: no cover - settings are fixed
            raise RuntimeError(f"Pythia rejected setting {setting!r}")
    if not pythia.init():  # pragma: no cover
        raise RuntimeError(f"Pythia failed to initialise for class {cls!r}")
    return pythia


def iter_jets(
    label: int, seed: int, chunk: int = 0, max_events: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Selected jets of class ``CLASSES[label]``, in generation order, without end.

    Yields ``(constituents (n, 4) px/py/pz/E, kinematics [pT, eta, mass], event
    number)``. Pythia is seeded with ``chunk_seed(seed, label, chunk)``.
    Stops with an error after ``max_events`` events (default: unlimited).
    """
    label = _check_int("label", label, 0, len(CLASSES) - 1)
    cls = CLASSES[label]
    _, fastjet = _import_physics()
    pythia = _make_pythia(label, seed, chunk)
    jet_def = fastjet.JetDefinition(fastjet.antikt_algorithm, JET_R)
    events = 0
    while True:
        if max_events is not None and events >= max_events:
            raise RuntimeError(
                f"class {cls!r}: no more jets within {max_events} events; "
                "the selection is broken (check the Pythia settings)"
            )
        events += 1
        if not pythia.next():
            continue
        for const, kin in _event_jets(pythia, fastjet, cls, jet_def):
            yield const, kin, events


def generate_chunk(
    label: int, n_jets: int, seed: int, chunk: int = 0, progress: Any = None
) -> ChunkResult:
    """``n_jets`` jets (features + kinematics) of class ``CLASSES[label]`` from one Pythia run."""
    label = _check_int("label", label, 0, len(CLASSES) - 1)
    n_jets = _check_int("n_jets", n_jets, 1)
    _, fastjet = _import_physics()
    t0 = time.perf_counter()
    feats: list[np.ndarray] = []
    kins: list[np.ndarray] = []
    events = 0
    jets = iter_jets(label, seed, chunk, max_events=MAX_EVENTS_PER_JET * n_jets + 1000)
    for const, kin, n_events in jets:
        events = n_events
        feats.append(jet_features(const, fastjet=fastjet))
        kins.append(kin)
        if progress is not None:
            progress.update(1)
        if len(feats) == n_jets:
            break
    jets.close()
    return ChunkResult(
        label=label,
        chunk=chunk,
        features=np.stack(feats),
        kinematics=np.stack(kins),
        events=events,
        seconds=time.perf_counter() - t0,
    )


def _run_task(task: tuple[int, int, int, int]) -> ChunkResult:
    label, n_jets, seed, chunk = task
    return generate_chunk(label, n_jets, seed, chunk)


@dataclass(frozen=True)
class JetSample:
    """Generated jets: features ``(N, 16)`` float32, labels ``(N,)`` int64, kinematics ``(N, 3)``."""

    features: np.ndarray
    labels: np.ndarray
    kinematics: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def _tasks(per_class: int, seed: int) -> list[tuple[int, int, int, int]]:
    tasks = []
    for label in range(len(CLASSES)):
        for chunk in range(math.ceil(per_class / CHUNK_JETS)):
            n = min(CHUNK_JETS, per_class - chunk * CHUNK_JETS)
            tasks.append((label, n, seed, chunk))
    return tasks


def generate(per_class: int, seed: int, workers: int = 1, progress: bool = True) -> JetSample:
    """Generate ``per_class`` jets of each of the five classes from master ``seed``.

    ``workers`` processes generate chunks in parallel; the result does not depend
    on it. Jets are ordered by class, then in generation order.
    """
    per_class = _check_int("per_class", per_class, 1)
    seed = _check_int("seed", seed, 0)
    workers = _check_int("workers", workers, 1, 64)
    from tqdm.auto import tqdm

    tasks = _tasks(per_class, seed)
    t0 = time.perf_counter()
    results: list[ChunkResult] = []
    with tqdm(
        total=per_class * len(CLASSES),
        desc="jets",
        unit="jet",
        disable=not progress,
        smoothing=0.05,
    ) as bar:
        if workers == 1:
            for label, n, s, chunk in tasks:
                bar.set_postfix_str(CLASS_NAMES[label])
                results.append(generate_chunk(label, n, s, chunk, progress=bar))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # spawn (not fork): Pythia/FastJet state is not fork-safe, and a broken
            # worker raises BrokenProcessPool here instead of hanging a Pool.
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=ctx) as pool:
                futures = [pool.submit(_run_task, task) for task in tasks]
                for fut in as_completed(futures):
                    res = fut.result()
                    results.append(res)
                    bar.update(len(res.features))
    wall = time.perf_counter() - t0
    results.sort(key=lambda r: (r.label, r.chunk))
    features = np.concatenate([r.features for r in results]).astype(np.float32)
    kinematics = np.concatenate([r.kinematics for r in results]).astype(np.float32)
    labels = np.concatenate([np.full(len(r.features), r.label, np.int64) for r in results])
    events = {
        CLASSES[k]: sum(r.events for r in results if r.label == k) for k in range(len(CLASSES))
    }
    meta = {
        "format": FORMAT,
        "seed": seed,
        "per_class": per_class,
        "counts": {CLASSES[k]: int(np.sum(labels == k)) for k in range(len(CLASSES))},
        "events": events,
        "wall_s": round(wall, 1),
        "cpu_s": round(sum(r.seconds for r in results), 1),
        "workers": workers,
        "jets_per_s": round(len(labels) / wall, 2) if wall > 0 else None,
    }
    return JetSample(features, labels, kinematics, meta)


# ------------------------------------------------------------------------- files


def versions() -> dict[str, str]:
    """Versions of the tools that determine the sample."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("pythia8mc", "fastjet", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(sample: JetSample, path: str | Path, command: str | None = None) -> tuple[Path, Path]:
    """Write ``sample`` as a compressed ``.npz`` and its metadata ``.json`` beside it."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError(f"output must end in .npz, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        features=sample.features.astype(np.float32),
        labels=sample.labels.astype(np.int8),
        kinematics=sample.kinematics.astype(np.float32),
        feature_names=np.array(FEATURES),
        kinematic_names=np.array(KINEMATICS),
        class_names=np.array(CLASS_NAMES),
    )
    meta = dict(sample.meta)
    meta.update(
        file=path.name,
        sha256=sha256(path),
        bytes=path.stat().st_size,
        command=command,
        versions=versions(),
        classes=dict(zip(CLASSES, CLASS_NAMES, strict=True)),
        features=list(FEATURES),
        kinematics=list(KINEMATICS),
        selection={
            "jets": f"anti-kT R={JET_R}, E-scheme, visible final-state particles",
            "pt_gev": list(PT_WINDOW),
            "abs_eta_max": ETA_MAX,
            "match_delta_r": MATCH_DR,
            "mmdt_zcut": MMDT_ZCUT,
            "chunk_jets": CHUNK_JETS,
        },
        pythia={k: [*_COMMON, "Random:seed = <chunk_seed>", *PROCESSES[k]] for k in CLASSES},
    )
    meta_path = path.with_suffix(".json")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return path, meta_path


def load(path: str | Path) -> JetSample:
    """Read a sample written by :func:`save`; refuse missing, corrupt or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(
            f"jet sample {path} does not exist; generate it with "
            f"python -m edgeml.models.jetgen --per-class 7000 --seed 2026 --out {path}"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise CorruptFileError(
            f"jet sample {path} cannot be read ({type(exc).__name__}: {exc}); regenerate it"
        ) from exc
    need = ("features", "labels", "kinematics", "feature_names")
    missing = [k for k in need if k not in arrays]
    if missing:
        raise CorruptFileError(f"jet sample {path} lacks arrays {missing}")
    names = tuple(str(s) for s in arrays["feature_names"])
    feats, labels, kin = arrays["features"], arrays["labels"], arrays["kinematics"]
    if names != FEATURES or feats.ndim != 2 or feats.shape[1] != len(FEATURES):
        raise CorruptFileError(f"jet sample {path} has features {names}, expected {FEATURES}")
    if labels.shape != (len(feats),) or kin.shape != (len(feats), len(KINEMATICS)):
        raise CorruptFileError(
            f"jet sample {path}: labels {labels.shape} / kinematics {kin.shape} do not match "
            f"{len(feats)} jets"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise CorruptFileError(f"jet sample {path} has labels outside 0..{len(CLASSES) - 1}")
    if not np.all(np.isfinite(feats)):
        raise CorruptFileError(f"jet sample {path} has non-finite features")
    meta: dict[str, Any] = {}
    meta_path = path.with_suffix(".json")
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
    return JetSample(
        feats.astype(np.float32), labels.astype(np.int64), kin.astype(np.float32), meta
    )


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edgeml.models.jetgen",
        description=(
            "Generate gluon / light-quark / W / Z / top jets (pT 800-1200 GeV, anti-kT R=0.8) "
            "with Pythia8 + FastJet and compute the 16 hls4ml jet-tagging features. "
            "Deterministic from --seed (independent of --workers)."
        ),
    )
    p.add_argument(
        "--per-class", type=int, required=True, help="jets per class (the committed sample: 7000)"
    )
    p.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    p.add_argument(
        "--out", type=Path, required=True, help="output .npz (a .json is written beside it)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (default 1; the result does not depend on it)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = "python -m edgeml.models.jetgen " + " ".join(shlex.quote(a) for a in argv_list)
    try:
        sample = generate(args.per_class, args.seed, workers=args.workers, progress=not args.quiet)
        npz, js = save(sample, args.out, command=command)
    except (ConfigError, DependencyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    m = sample.meta
    print(
        f"wrote {npz} ({npz.stat().st_size / 1e6:.2f} MB, {len(sample.labels)} jets, "
        f"{m['wall_s']} s wall, {m['jets_per_s']} jets/s) and {js}"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
