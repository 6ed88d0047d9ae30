"""Selective hardening: the protection plan, the protected RTL (TMR / SECDED) measured against its
prediction, and the hardened hls4ml project.

The design is the 16-12-5 MLP of tests/qonnx_builders.py (``mlp_pot``), its layer FI build (3
register ranks, 231 flip-flops) and 2,000 uniformly random input codes. Verilator builds are cached
by hash under ``<edgeml cache>/rtl_fi_builds``.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeml.errors import ConfigError
from edgeml.golden import GoldenModel

N_VEC = 2000


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("harden")


@pytest.fixture(scope="module")
def tiny(work) -> tuple[GoldenModel, np.ndarray]:
    import qonnx_builders as qb

    from edgeml.export import clean_qonnx

    p = qb.save(qb.mlp_pot(np.random.default_rng(2)), work / "tiny.onnx")
    g = GoldenModel.from_onnx(clean_qonnx(p, work / "tiny.clean.onnx"))
    t = g.input_type
    x = np.random.default_rng(5).integers(t.qmin, t.qmax + 1, size=(N_VEC, *g.input_shape))
    return g, x


@pytest.fixture(scope="module")
def base(tiny, work):
    """Unprotected layer build, built, and its campaign over every register bit."""
    from edgeml.fault_injection.harden import scores_from_campaign
    from edgeml.fault_injection.rtl_faults import enumerate_rtl_sites, run_rtl_campaign
    from edgeml.fault_injection.rtl_fi_build import generate_fi_rtl

    g, x = tiny
    d = generate_fi_rtl(g, work / "base", "harden_tiny")
    d.build()
    res = run_rtl_campaign(d, x, enumerate_rtl_sites(d), sdc="top1", progress=False)
    return d, res, scores_from_campaign(d, res)


@pytest.fixture(scope="module")
def hard(base, work):
    """Protected build: every bit whose SDC rate exceeds 5 %, SECDED words in r1 (1-3 bits each),
    the cheaper code (TMR here) elsewhere."""
    from edgeml.fault_injection.harden import generate_hardened_fi_rtl, plan_protection

    d, _, scores = base
    plan = plan_protection(scores, "sdc>0.05", words=d.registers, scheme={"r1": "secded"})
    h = generate_hardened_fi_rtl(d, plan, work / "hard")
    h.build()
    return plan, h


# --------------------------------------------------------------------------- plan (no tools)


def _fake_registers():
    from edgeml.fault_injection.rtl_fi_build import RegElement, Register

    els = tuple(RegElement(6 * j, 6, True, 0, "t", j) for j in range(4))
    return [Register("r0", 0, 24, "t", els)]


def test_cost_model_and_scheme_choice():
    from edgeml.fault_injection.harden import choose_scheme, hamming_r, word_cost

    assert [hamming_r(m) for m in (1, 2, 4, 5, 11, 12, 26, 27)] == [2, 3, 3, 4, 4, 5, 5, 6]
    assert word_cost("tmr", 3) == (6, 3)
    assert word_cost("secded", 6)[0] == 5  # r = 4 check bits + overall parity
    assert choose_scheme(1) == "tmr" and choose_scheme(2) == "tmr"
    assert choose_scheme(6) == "secded"  # 12 replica flip-flops against 5 check flip-flops
    with pytest.raises(ConfigError, match="scheme must be one of"):
        choose_scheme(3, "parity")


def test_plan_budgets_and_prediction():
    from edgeml.fault_injection.harden import plan_protection, protection_curve

    regs = _fake_registers()
    s = np.zeros(24)
    s[[5, 11, 17, 23]] = [0.5, 0.4, 0.3, 0.2]  # sign bits of the 4 words
    s[[4, 10]] = [0.1, 0.05]
    s[0] = 0.0
    p = plan_protection(s, 0.25, words=regs)  # ceil(0.25 * 24) = 6 bits, all non-zero
    assert p.n_protected == 6
    assert sorted(np.flatnonzero(p.protected).tolist()) == [4, 5, 10, 11, 17, 23]
    assert [w.bits for w in p.words] == [(4, 5), (10, 11), (17,), (23,)]
    assert p.predicted_after == 0.0 and p.predicted_before == pytest.approx(1.55 / 24)
    p = plan_protection(s, 0.5, words=regs)  # 12 bits asked, only 6 score > 0
    assert p.n_protected == 6
    p = plan_protection(s, "sdc>0.25", words=regs)
    assert sorted(np.flatnonzero(p.protected).tolist()) == [5, 11, 17]
    assert p.predicted_after == pytest.approx((0.2 + 0.1 + 0.05) / 24)
    p = plan_protection(s, "5%", words=regs)  # ceil(1.2) = 2 bits
    assert p.n_protected == 2
    w = plan_protection(s, 0.25, words=regs, scheme="secded").words
    assert [x.extra_offset for x in w] == [0, 4, 8, 11]  # r+1 = 4, 4, 3, 3 check flip-flops
    curve = protection_curve(s, [0.0, 0.25])
    assert curve[0]["predicted_mean_sdc"] == pytest.approx(1.55 / 24)
    assert curve[1] == {"fraction": 0.25, "bits": 6, "predicted_mean_sdc": 0.0}
    with pytest.raises(ConfigError, match="budget"):
        plan_protection(s, 1.5, words=regs)
    with pytest.raises(ConfigError, match="budget 'top5' is not understood"):
        plan_protection(s, "top5", words=regs)
    with pytest.raises(ConfigError, match="one value per register bit"):
        plan_protection(s[:10], 0.1, words=regs)
    with pytest.raises(ConfigError, match="registers"):
        plan_protection(s, 0.1, words=regs, scheme={"r9": "tmr"})


# --------------------------------------------------------------------------- protected RTL


@pytest.mark.rtl
def test_fault_free_protected_build_equals_golden(tiny, hard):
    g, x = tiny
    plan, h = hard
    assert plan.n_protected == int((plan.scores > 0.05).sum()) > 20
    assert {w.scheme for w in plan.words} == {"tmr", "secded"}
    assert h.n_register_bits == plan.n_bits + plan.extra_ff
    assert np.array_equal(h.predict_int(x), g.predict(x))


@pytest.mark.rtl
def test_golden_scores_equal_measured_scores(tiny, base):
    from edgeml.fault_injection.harden import golden_bit_scores

    g, x = tiny
    d, _, scores = base
    assert np.array_equal(golden_bit_scores(g, d, x), scores)


@pytest.mark.rtl
def test_fault_in_protected_register_is_masked(tiny, base, hard):
    """The most sensitive bit: unprotected it corrupts many vectors; protected (TMR), none,
    and neither do SEUs in its two replicas."""
    from edgeml.fault_injection.rtl_faults import RtlFaultSite, run_rtl_campaign

    _, x = tiny
    d, res, scores = base
    plan, h = hard
    word = next(w for w in plan.words if w.scheme == "tmr")
    bit = max(word.bits, key=lambda b: scores[_flat(d, word.register, b)])
    i = _flat(d, word.register, bit)
    assert res.sites[i] == RtlFaultSite(word.register, bit)
    n_before = int(res.n_sdc[i])
    assert n_before > 100  # top-1 changed on > 5 % of the 2,000 vectors
    width = dict(plan.registers)[word.register]
    j = word.bits.index(bit)
    m = len(word.bits)
    sites = [
        RtlFaultSite(word.register, b)
        for b in (bit, width + word.extra_offset + j, width + word.extra_offset + m + j)
    ]
    after = run_rtl_campaign(h, x, sites, sdc="top1", progress=False)
    assert after.n_hit.tolist() == [N_VEC] * 3
    assert after.n_changed.tolist() == [0, 0, 0]  # no output changed, on any vector
    again = run_rtl_campaign(d, x, [RtlFaultSite(word.register, bit)], progress=False)
    assert int(again.n_sdc[0]) == n_before


def _flat(d, register: str, bit: int) -> int:
    base = 0
    for r in d.registers:
        if r.name == register:
            return base + bit
        base += r.width
    raise KeyError(register)


@pytest.mark.rtl
def test_measured_sdc_equals_prediction(tiny, base, hard):
    """Every flip-flop of the protected build (231 original + the extra ones), one SEU per vector.

    Tolerance: the SDC *counts* must be equal exactly (single flips have no interactions: a
    protected word corrects them and unprotected paths compute what they did before); the means
    may differ by float summation order only (1e-12).
    """
    from edgeml.fault_injection.harden import physical_sites
    from edgeml.fault_injection.rtl_faults import run_rtl_campaign

    _, x = tiny
    _, res, _ = base
    plan, h = hard
    roles = physical_sites(h, plan)
    assert len(roles["plain"]) == 231 - plan.n_protected and len(roles["extra"]) == plan.extra_ff
    sites = roles["plain"] + roles["protected"] + roles["extra"]
    after = run_rtl_campaign(h, x, sites, sdc="top1", progress=False)
    n_pl = len(roles["plain"])
    assert int(after.n_sdc[n_pl:].sum()) == 0
    assert int(after.n_changed[n_pl:].sum()) == 0
    want = res.n_sdc[~plan.protected]
    assert after.n_sdc[:n_pl].tolist() == want.tolist()
    measured = float(after.sdc_rate.sum() / plan.n_bits)
    assert abs(measured - plan.predicted_after) < 1e-12
    assert (
        plan.predicted_after < 0.5 * plan.predicted_before
    )  # the bits over 5 % hold > half the SDC


@pytest.mark.rtl
def test_secded_corrects_every_single_flip(tiny, hard):
    from edgeml.fault_injection.harden import hamming_r
    from edgeml.fault_injection.rtl_faults import RtlFaultSite, run_rtl_campaign

    _, x = tiny
    plan, h = hard
    words = [w for w in plan.words if w.scheme == "secded"]
    assert {w.register for w in words if len(w.bits) <= 3} == {"r1"}  # forced in r1 only
    widths = dict(plan.registers)
    singles, doubles = [], []
    for w in words:
        singles += [RtlFaultSite(w.register, b) for b in w.bits]
        n_check = hamming_r(len(w.bits)) + 1
        assert w.extra_ff == n_check
        off = widths[w.register] + w.extra_offset
        singles += [RtlFaultSite(w.register, off + j) for j in range(n_check)]
        if len(w.bits) >= 2:
            doubles.append((w.rank, w.bits[:2]))
    res = run_rtl_campaign(h, x, singles, sdc="any", progress=False)
    assert len(singles) > 40 and max(len(w.bits) for w in words) >= 3
    assert res.n_changed.tolist() == [0] * len(singles)
    # two flipped data bits of one word: detected, not corrected (SECDED corrects one error)
    assert doubles
    nf, n = len(doubles), len(x)
    out = h.run_slots(
        x,
        np.tile(np.arange(n), nf),
        np.repeat(np.arange(nf), n).astype(np.int32),
        np.array([k for k, _ in doubles], np.int32),
        np.arange(0, 2 * nf + 1, 2),
        np.array([b for _, bits in doubles for b in bits], np.int32),
    ).reshape(nf, n, -1)
    ref = h.predict_int(x).reshape(1, n, -1)
    assert int((out != ref).any(axis=2).sum()) > 0


# --------------------------------------------------------------------------- hls4ml


@pytest.mark.hls
def test_hls_hardened_project_is_exact_and_outvotes_a_corrupted_word(tiny, work):
    """TMR on the 7 weight/bias words the golden campaign ranks highest and the top weight word:
    C-sim stays exact, and with the sign bit of that weight's primary copy flipped in the stored
    weights, the hardened C-sim still equals the fault-free golden model, while the plain project
    with the same flip equals the golden model with it (which differs on some vectors).

    (A bias word is not used for the corruption: a flipped bias MSB moves the output by a multiple
    of the 11-bit output type's range, which C-sim wraps away.)"""
    import copy
    import shutil

    from edgeml.fault_injection.campaign import run_campaign
    from edgeml.golden import Dense
    from edgeml.hls import convert_hls
    from edgeml.hls_harden import (
        flip_txt_word,
        harden_hls_project,
        param_arrays,
        rank_parameter_words,
        reload_csim,
    )

    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed (apt-get install g++)")
    g, x = tiny
    plain = convert_hls(
        work / "tiny.clean.onnx",
        work / "hls_tiny",
        name="tiny",
        input_type=g.input_type,
        output_type=g.output_type,
        trace=False,
    )
    ref = g.predict(x)
    assert np.array_equal(plain.predict_int(x), ref)
    camp = run_campaign(g, x, None, progress=False, sdc="any").save(work / "campaign.npz")
    ranked = rank_parameter_words(g, camp, plain.project_dir, "tiny")
    n_words = sum(a.size for a in param_arrays(plain.project_dir, "tiny"))
    assert len(ranked) == n_words == 16 * 12 + 12 + 12 * 5 + 5
    assert [s for *_, s in ranked] == sorted((s for *_, s in ranked), reverse=True)
    protect: dict[str, list[int]] = {}
    top_w = next(r for r in ranked if r[0].startswith("w"))  # the top weight word
    for arr, i, _ in [*ranked[:7], top_w]:
        protect.setdefault(arr, []).append(i)
    hard, summary = harden_hls_project(plain.project_dir, work / "hls_tiny_tmr", protect)
    assert summary["protected_words"] == len(set(ranked[:7]) | {top_w}) == 8
    cpp = (hard.project_dir / "firmware" / "tiny.cpp").read_text()
    assert all(f"{a}_v" in cpp for a in protect)
    assert np.array_equal(hard.predict_int(x), ref)  # 2,000 vectors, integer equality

    # corrupt the primary copy of the top weight word: flip its sign bit
    arr, idx, _ = top_w
    a = next(p for p in param_arrays(plain.project_dir, "tiny") if p.name == arr)
    op = [o for o in g.ops if isinstance(o, Dense)][a.layer]
    t = op.weight_type if a.param == "weight" else op.bias_type
    codes = (op.weight if a.param == "weight" else op.bias).reshape(-1)
    vals = np.loadtxt(hard.project_dir / "firmware" / "weights" / f"{arr}.txt", delimiter=",")
    scale = vals[codes != 0][0] / codes[codes != 0][0]
    code = int(codes[idx])
    u = (code & ((1 << t.width) - 1)) ^ (1 << (t.width - 1))
    flipped = u - (1 << t.width) if t.signed and u >= 1 << (t.width - 1) else u
    g2 = copy.deepcopy(g)
    op2 = [o for o in g2.ops if isinstance(o, Dense)][a.layer]
    if a.param == "weight":
        w = op2.weight.copy()
        w.reshape(-1)[idx] = flipped
        op2.weight = w
    else:
        b = op2.bias.copy()
        b.reshape(-1)[idx] = flipped
        op2.bias = b
    assert int((g2.predict(x) != ref).any(axis=1).sum()) > 0  # the flip matters
    flip_txt_word(hard.project_dir, arr, idx, flipped * scale)
    assert np.array_equal(reload_csim(hard, "flip").predict_int(x), ref)
    flip_txt_word(plain.project_dir, arr, idx, flipped * scale)  # unprotected: it shows
    assert np.array_equal(reload_csim(plain, "flip").predict_int(x), g2.predict(x))
