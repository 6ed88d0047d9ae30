"""RTL fault campaigns: register enumeration and mapping, SEUs through the compiled harness,
the cross-check against the golden model, and the cocotb deposit bench.

The design is the digits MLP 64-32-32-10 (tests/brevitas_models.py), briefly trained, with the
first layer's rows for always-zero pixels pruned (so some input flip-flops are dead). Builds are
module fixtures and are cached by hash under ``<edgeml cache>/rtl_fi_builds`` (the cocotb
simulator under ``<edgeml cache>/test_rtl_faults``): a second session builds nothing.
Measurements are printed (``-s``), never asserted.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import brevitas_models as bm
import numpy as np
import pytest

from edgeml.errors import ConfigError, CorruptFileError, InputRangeError
from edgeml.golden import GoldenModel
from edgeml.verify import verification_vectors

# --------------------------------------------------------------------------- fixtures


def _digits_mlp(folder: Path) -> tuple[GoldenModel, np.ndarray, np.ndarray]:
    """Trained digits MLP; rows of the first weight matrix for always-zero pixels pruned."""
    import torch

    torch.manual_seed(0)
    x, y = bm.digits()
    model = bm.mlp()
    bm.train(model, x, y, epochs=6)
    dead = np.flatnonzero(x.reshape(len(x), -1).max(axis=0) == 0)
    with torch.no_grad():
        model[2].weight[:, torch.as_tensor(dead)] = 0.0  # Linear(64, 32): weight (out, in)
    g = GoldenModel.from_onnx(bm.export_clean(model, (1, 8, 8), folder, "digits_mlp"))
    codes = g.quantize_input(x, on_overflow="saturate")
    return g, codes, y


class _Site(NamedTuple):  # the shape of fault_injection.sites.FaultSite (act/acc)
    layer: str
    param: str
    index: int
    bit: int
    kind: str = "flip"
    nbits: int = 1


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rtl_faults")


@pytest.fixture(scope="module")
def digits(work):
    return _digits_mlp(work)


@pytest.fixture(scope="module")
def g(digits) -> GoldenModel:
    return digits[0]


@pytest.fixture(scope="module")
def xs(digits) -> np.ndarray:
    """Campaign vectors: 128 digits, 128 uniformly random codes, 69 corner cases."""
    g, codes, _ = digits
    x, _ = verification_vectors(g, codes[:128], 128, seed=7)
    return x


@pytest.fixture(scope="module")
def env(g, xs):
    from edgeml.fault_injection.rtl_faults import trace_env

    return trace_env(g, xs)


@pytest.fixture(scope="module")
def fi_layers(g, work):
    """Layer build, a register after every non-layout op (accumulators, ReLU, requant)."""
    from edgeml.fault_injection.rtl_fi_build import generate_fi_rtl

    t0 = time.perf_counter()
    d = generate_fi_rtl(g, work / "fi_layers", "digits_fi", boundaries="ops")
    t1 = time.perf_counter()
    s = d.build()
    print(
        f"\n[rtl-fi] layer build: {len(d.registers)} ranks, {d.n_register_bits} register bits, "
        f"trace+write {t1 - t0:.1f} s, build {s:.1f} s ({'cached' if s == 0 else 'fresh'})"
    )
    return d


@pytest.fixture(scope="module")
def layers_map(fi_layers, g):
    from edgeml.fault_injection.rtl_regmap import map_registers

    return map_registers(fi_layers, g)


@pytest.fixture(scope="module")
def da4ml_pair(g, work):
    """The flow's pipelined da4ml design and its FI build (mask ports on da4ml's stage registers),
    written but not compiled (the register map needs no Verilator)."""
    from edgeml.fault_injection.rtl_fi_build import wrap_da4ml_pipeline
    from edgeml.rtl import generate_rtl

    t0 = time.perf_counter()
    design = generate_rtl(g, work / "da4ml", "digits_pipe", pipelined=True)
    fi = wrap_da4ml_pipeline(design, work / "da4ml_fi", g=g)
    print(
        f"\n[rtl-fi] da4ml design: latency {design.latency}, trace+write {time.perf_counter() - t0:.1f} s"
    )
    return design, fi


@pytest.fixture(scope="module")
def da4ml_built(da4ml_pair):
    design, fi = da4ml_pair
    s = fi.build()
    print(f"\n[rtl-fi] da4ml FI build: {s:.1f} s ({'cached' if s == 0 else 'fresh'})")
    return design, fi


@pytest.fixture(scope="module")
def tiny_g(work) -> GoldenModel:
    """A 16-12-5 MLP (qonnx builder): Dense, ReLU, requant, Dense."""
    import qonnx_builders as qb

    from edgeml.export import clean_qonnx

    p = qb.save(qb.mlp_pot(np.random.default_rng(2)), work / "tiny.onnx")
    return GoldenModel.from_onnx(clean_qonnx(p, work / "tiny.clean.onnx"))


@pytest.fixture(scope="module")
def tiny(tiny_g, work):
    """The tiny MLP's layer build, for the cocotb bench (a quick build)."""
    from edgeml.fault_injection.rtl_fi_build import generate_fi_rtl

    return tiny_g, generate_fi_rtl(tiny_g, work / "tiny_fi", "tiny_fi", boundaries="ops")


def _n_bad(a: np.ndarray, b: np.ndarray) -> int:
    return int((np.asarray(a) != np.asarray(b)).reshape(len(a), -1).any(axis=1).sum())


def _visible_bit(fi, g, x, env, reg: str, vector: int, order: str = "msb") -> int:
    """A bit of ``reg`` whose flip the golden model says changes ``vector``'s outputs."""
    from edgeml.fault_injection.rtl_faults import RtlFaultSite, golden_register_flip

    ref = g.run(x[vector : vector + 1])[0]
    r = fi.register(reg)
    live = [e for e in r.elements if e.live]
    for el in live[::3] + live:
        j = el.width - 1 if order == "msb" else 0
        out = golden_register_flip(g, fi, x, RtlFaultSite(reg, el.offset + j), env=env)
        if not np.array_equal(out[vector], ref):
            return el.offset + j
    raise AssertionError(f"no visible flip found in {reg} for vector {vector}")


# --------------------------------------------------------------------------- no Verilator


def test_boundary_plans(tiny_g):
    from edgeml.fault_injection.rtl_fi_build import plan_boundaries

    g = tiny_g
    kinds = [op.kind for op in g.ops]
    assert kinds == ["dense", "relu", "requant", "dense"]
    dense0, relu, requant, _ = g.ops
    # the activation the second Dense reads (the requantiser's output) and the output
    assert plan_boundaries(g, "layers") == [requant.output, g.output_name]
    assert plan_boundaries(g, "ops") == [op.output for op in g.ops]
    assert plan_boundaries(g, [relu.output, dense0.output]) == [
        dense0.output,
        relu.output,
        g.output_name,
    ]
    with pytest.raises(ConfigError, match=r"unknown boundary tensor.*closest"):
        plan_boundaries(g, [relu.output + "x"])
    with pytest.raises(ConfigError, match=r"boundaries must be one of \('layers', 'ops'\)"):
        plan_boundaries(g, "stages")


def test_site_validation():
    from edgeml.fault_injection.rtl_faults import RtlFaultSite

    s = RtlFaultSite("r3", 17, 2, 40)
    assert s.fault_id == "rtl/r3/17/2/@40" and s.bits() == (17, 18)
    assert RtlFaultSite("r3", 17).fault_id == "rtl/r3/17/1/all"
    with pytest.raises(ConfigError, match="nbits >= 1"):
        RtlFaultSite("r3", 0, 0)
    with pytest.raises(ConfigError, match="cycle must be >= 0"):
        RtlFaultSite("r3", 0, 1, -2)


@pytest.mark.parametrize(
    "el_signed, el_width, el_frac, g_signed, g_width",
    [
        (True, 8, 0, True, 8),  # golden format
        (True, 16, 0, True, 15),  # field widened for flipped codes (signed)
        (False, 15, 0, False, 14),  # widened, unsigned
        (True, 6, -2, True, 9),  # da4ml: narrower, two always-zero LSBs dropped
        (False, 5, -1, True, 8),  # da4ml: unsigned slot of a signed tensor
        (True, 9, 0, False, 8),  # da4ml: signed slot of an unsigned tensor
    ],
)
def test_bit_classes_hold_for_every_code(el_signed, el_width, el_frac, g_signed, g_width):
    """An 'exact' register bit flips like golden bits tbit..tbit+nbits-1 for every code both hold;
    a non-exact one differs for some code."""
    from edgeml.fault_injection.rtl_faults import _flip_codes
    from edgeml.fault_injection.rtl_regmap import _bit_class

    sh = -el_frac
    g_lo, g_hi = (
        (-(1 << (g_width - 1)), (1 << (g_width - 1)) - 1) if g_signed else (0, (1 << g_width) - 1)
    )
    e_lo = -(1 << (el_width - 1)) << sh if el_signed else 0
    e_hi = (((1 << (el_width - 1)) if el_signed else (1 << el_width)) - 1) << sh
    codes = np.arange(max(g_lo, e_lo), min(g_hi, e_hi) + 1, dtype=np.int64)
    codes = codes[codes % (1 << sh) == 0]
    n_exact = 0
    for j in range(el_width):
        exact, c, nb = _bit_class(el_signed, el_width, el_frac, j, g_signed, g_width)
        rtl = _flip_codes(codes, el_signed, el_width, el_frac, 1 << j)
        if c >= g_width:
            assert not exact
            continue
        gold = _flip_codes(codes, g_signed, g_width, 0, ((1 << nb) - 1) << c)
        assert np.array_equal(rtl, gold) == exact, (j, c, nb)
        n_exact += exact
    assert n_exact >= min(el_width, g_width) - 2


def test_rtlil_flipflop_parser():
    """Register names from $dff Q connections (whole, sliced), instance paths from the top."""
    from edgeml.fault_injection.rtl_regmap import _flipflops_from_rtlil

    text = "\n".join(
        [
            "module \\core",
            "  wire width 8 \\stage1_inp",
            "  cell $dff $procdff$1",
            "    parameter \\WIDTH 8",
            "    connect \\Q \\stage1_inp",
            "  end",
            "  cell $adffe $procdff$2",
            "    parameter \\WIDTH 3",
            "    connect \\Q \\acc [6:4]",
            "  end",
            "  cell $paramod$0dff12\\shift_adder op_1",
            "  end",
            "end",
            "module $paramod$0dff12\\shift_adder",
            "end",
            "module \\top",
            "  cell \\core op",
            "  end",
            "  cell $dff $procdff$3",
            "    parameter \\WIDTH 1",
            "    connect \\Q \\valid",
            "  end",
            "end",
        ]
    )
    ffs = _flipflops_from_rtlil(text, "top")
    assert [(f.path, f.width, f.cell_type) for f in ffs] == [
        ("op.acc[6:4]", 3, "$adffe"),
        ("op.stage1_inp", 8, "$dff"),
        ("valid", 1, "$dff"),
    ]


# --------------------------------------------------------------------------- FI builds


def _check_10k(g, codes, d) -> None:
    x, counts = verification_vectors(g, codes, 10_000, seed=11)
    assert len(x) >= 10_000 and counts["corner"] >= 5
    ref = g.predict(x)
    t0 = time.perf_counter()
    got = d.predict_int(x)
    dt = time.perf_counter() - t0
    n_bad = _n_bad(got, ref)
    print(f"\n[rtl-fi] {d.name}: {n_bad} of {len(x)} mismatching, {len(x) / dt:,.0f} vectors/s")
    assert got.dtype == np.int64 and got.shape == ref.shape
    assert n_bad == 0


@pytest.mark.rtl
def test_fault_free_layer_build_equals_golden_10k(g, digits, fi_layers):
    """All masks zero: the FI build is the plain design, bit for bit."""
    _check_10k(g, digits[1], fi_layers)


@pytest.mark.rtl
@pytest.mark.slow
def test_fault_free_da4ml_build_equals_golden_10k(g, digits, da4ml_built):
    _check_10k(g, digits[1], da4ml_built[1])


@pytest.mark.rtl
def test_register_map_of_layer_build(fi_layers, layers_map, g):
    """yosys finds exactly the declared registers; every bit maps to a golden element bit."""
    rm = layers_map
    s = rm.summary()
    print(f"\n[rtl-fi] layer build map: { ({k: v for k, v in s.items() if k != 'per_register'}) }")
    assert rm.yosys_flipflops == fi_layers.n_register_bits == rm.n_bits
    c = rm.counts()
    assert c["internal"] == 0 and c["copy"] == 0
    assert c["exact"] + c["value"] + c["dead"] == rm.n_bits
    # pruned always-zero pixels: their 8-bit input fields feed nothing
    assert c["dead"] > 0 and c["dead"] % 8 == 0
    assert all(b.register == "r0" for b in rm.bits if b.cls == "dead")
    # one rank per non-layout op output, in op order
    held = [r.holds for r in fi_layers.registers]
    assert held[0] == g.input_name and held[-1] == g.output_name
    # an exact bit names a real bit of its golden type
    for b in rm.select("exact"):
        t = g.tensors[b.tensor].type
        assert 0 <= b.tbit and b.tbit + b.nbits <= t.width


@pytest.mark.rtl
def test_rtl_flip_equals_golden_activation_flip(fi_layers, layers_map, g, xs, env):
    """The key cross-check: >= 300 random register bits across every rank, plus every bit of
    one element of every registered tensor, each flipped in the RTL on all 325 vectors, equal
    the golden model's outputs with that activation bit flipped: integer for integer."""
    from edgeml.fault_injection.rtl_faults import (
        RtlFaultSite,
        golden_act_flip,
        golden_register_flip,
        run_rtl_campaign,
    )

    rm = layers_map
    rng = np.random.default_rng(0)
    exact = rm.select("exact")
    by_reg: dict[str, list] = {}
    for b in exact:
        by_reg.setdefault(b.register, []).append(b)
    picks = []
    for bits in by_reg.values():  # >= 40 per rank, every rank covered
        picks += [bits[i] for i in rng.choice(len(bits), min(40, len(bits)), replace=False)]
    # every bit of one live element per register (exact and value bits alike)
    whole = []
    for r in fi_layers.registers:
        el = next(e for e in r.elements if e.live)
        whole += [RtlFaultSite(r.name, el.offset + j) for j in range(el.width)]
    sites = [RtlFaultSite(b.register, b.bit) for b in picks] + whole
    res = run_rtl_campaign(fi_layers, xs, sites, return_outputs=True, progress=False)
    bad = []
    for i, b in enumerate(picks):
        want = golden_act_flip(g, xs, b.tensor, b.index, b.tbit, b.nbits, env=env)
        if not np.array_equal(res.outputs[i], want):
            bad.append(b)
    for i, s in enumerate(whole, start=len(picks)):
        want = golden_register_flip(g, fi_layers, xs, s, env=env)
        if not np.array_equal(res.outputs[i], want):
            bad.append(s)
    changed = float((res.n_changed > 0).mean())
    print(
        f"\n[rtl-fi] cross-check: {len(sites)} sites ({len(picks)} random exact bits over "
        f"{len(by_reg)} ranks + {len(whole)} whole-element bits) x {len(xs)} vectors, "
        f"{len(bad)} mismatches; {changed:.0%} of faults change some output; "
        f"{res.faults_per_s:,.0f} faults/s, {res.vectors_per_s:,.0f} fault-vectors/s"
    )
    assert len(picks) >= 200 and len(by_reg) == len(fi_layers.registers)
    assert not bad, bad[:5]
    assert changed > 0.5  # the check discriminates: most flips do change outputs


@pytest.mark.rtl
def test_golden_fault_sites_have_register_twins(fi_layers, g, xs, env):
    """FaultSite(layer, "act"/"acc", index, bit[, nbits]) -> register flip; sign bits of fields
    widened for flipped codes flip the whole sign extension."""
    from edgeml.fault_injection.rtl_faults import (
        golden_act_flip,
        rtl_site_for_fault,
        run_rtl_campaign,
    )

    sites = []
    for op in g.ops:
        if op.kind in ("reshape", "transpose"):
            continue
        t = g.tensors[op.output].type
        param = "acc" if op.kind == "dense" else "act"
        n = int(np.prod(g.tensors[op.output].shape))
        for bit in {0, t.width // 2, t.width - 1}:
            sites.append(_Site(op.name, param, (7 * bit + 3) % n, bit))
        if t.width >= 3:
            sites.append(_Site(op.name, param, 5 % n, t.width - 3, nbits=3))  # adjacent MBU
    rtl = [rtl_site_for_fault(fi_layers, s, g=g) for s in sites]
    widened = sum(r.nbits > s.nbits for r, s in zip(rtl, sites, strict=True))
    res = run_rtl_campaign(fi_layers, xs, rtl, return_outputs=True, progress=False)
    ops = {op.name: op for op in g.ops}
    for i, s in enumerate(sites):
        want = golden_act_flip(g, xs, ops[s.layer].output, s.index, s.bit, s.nbits, env=env)
        assert np.array_equal(res.outputs[i], want), (s, rtl[i])
    print(
        f"\n[rtl-fi] {len(sites)} golden act/acc sites matched; {widened} needed a widened sign flip"
    )
    signed_widened = any(
        g.tensors[el.tensor].type.signed and el.width > g.tensors[el.tensor].type.width
        for r in fi_layers.registers
        for el in r.elements
    )
    assert (widened > 0) == signed_widened
    with pytest.raises(ConfigError, match="stuck-at"):
        rtl_site_for_fault(fi_layers, sites[0]._replace(kind="stuck1"), g=g)
    with pytest.raises(ConfigError, match="no register"):
        rtl_site_for_fault(fi_layers, _Site("Reshape_0", "act", 0, 0), g=g)


@pytest.mark.rtl
def test_single_seu_hits_exactly_one_vector(fi_layers, g, xs, env):
    """An SEU on edge c in rank k corrupts vector c - k and nothing else."""
    from edgeml.fault_injection.rtl_faults import (
        RtlFaultSite,
        golden_register_flip,
        run_rtl_campaign,
    )

    ranks = {r.name: r.rank for r in fi_layers.registers}
    sites, expect = [], []
    for j, reg in enumerate(["r0", "r1", "r3", fi_layers.registers[-1].name]):
        c = 11 + 17 * j
        v = c - ranks[reg]
        sites.append(RtlFaultSite(reg, _visible_bit(fi_layers, g, xs, env, reg, v), 1, c))
        expect.append(v)
    sites.append(RtlFaultSite("r2", 0, 1, len(xs) + 50))  # after the stream: hits nothing
    res = run_rtl_campaign(fi_layers, xs, sites, return_outputs=True, progress=False)
    ref = g.run(xs)
    for i, (s, v) in enumerate(zip(sites, expect, strict=False)):
        full = golden_register_flip(g, fi_layers, xs, RtlFaultSite(s.register, s.bit), env=env)
        assert not np.array_equal(full[v], ref[v]), s  # these flips are visible
        diff = np.flatnonzero((res.outputs[i] != ref).reshape(len(xs), -1).any(axis=1))
        assert diff.tolist() == [v], (s, diff)
        assert np.array_equal(res.outputs[i][v], full[v])
        assert res.n_hit[i] == 1
    assert res.n_hit[-1] == 0 and res.n_changed[-1] == 0 and res.sdc_rate[-1] == 0
    # the literal stream: every vector sampled on its own edge, the mask raised on edge c only
    from edgeml.fault_injection.rtl_faults import _fault_arrays

    ranks_arr, ptr, bits = _fault_arrays(fi_layers, sites[:1])
    slot_fault = np.full(len(xs), -1, np.int32)
    slot_fault[expect[0]] = 0  # slot s enters on edge s; rank k captures it on edge s + k = c
    lit = fi_layers.run_slots(xs, np.arange(len(xs)), slot_fault, ranks_arr, ptr, bits)
    assert np.array_equal(lit.reshape(res.outputs[0].shape), res.outputs[0])


@pytest.mark.rtl
def test_dead_flipflops_are_masked(fi_layers, layers_map, xs):
    from edgeml.fault_injection.rtl_faults import enumerate_rtl_sites, run_rtl_campaign

    sites = enumerate_rtl_sites(fi_layers, regmap=layers_map, classes=("dead",))
    res = run_rtl_campaign(fi_layers, xs, sites, progress=False)
    assert len(sites) == layers_map.counts()["dead"] > 0
    assert int(res.n_changed.sum()) == 0 and int(res.max_dev.max()) == 0


@pytest.mark.rtl
def test_campaign_metrics_and_persistence(fi_layers, digits, tmp_path):
    """Scores equal what the returned outputs say; labels give accuracy drops; npz round trip."""
    from edgeml.fault_injection.rtl_faults import (
        RtlCampaignResult,
        run_rtl_campaign,
        sample_rtl_sites,
    )

    g, codes, labels = digits
    x, y = codes[:300], labels[:300]
    sites = sample_rtl_sites(fi_layers, 120, seed=3)
    assert len({s.fault_id for s in sites}) == 120
    res = run_rtl_campaign(fi_layers, x, sites, labels=y, return_outputs=True, progress=False)
    out = res.outputs.reshape(len(sites), len(x), -1)
    ref = g.run(x).reshape(len(x), -1)
    assert np.array_equal(res.reference.reshape(len(x), -1), ref)
    top = out.argmax(axis=2)
    assert np.array_equal(res.n_sdc, (top != ref.argmax(axis=1)).sum(axis=1))
    assert np.array_equal(res.max_dev, np.abs(out - ref).max(axis=(1, 2)))
    acc = (ref.argmax(axis=1) == y).mean()
    assert np.allclose(res.acc_drop, acc - (top == y).mean(axis=1))
    assert acc > 0.8  # a trained model: accuracy drops mean something
    assert np.all(res.n_hit == len(x))
    anyres = run_rtl_campaign(fi_layers, x, sites, sdc="any", progress=False)
    assert np.all(anyres.n_sdc >= res.n_sdc) and np.array_equal(anyres.n_sdc, res.n_changed)
    p = res.save(tmp_path / "rtl.npz")
    back = RtlCampaignResult.load(p)
    assert back.sites == res.sites and np.array_equal(back.n_sdc, res.n_sdc)
    assert np.array_equal(back.reference, res.reference) and back.sdc == "top1"
    print(
        f"\n[rtl-fi] 120 random flip-flops x 300 digits: {res.summary()['mean_sdc_rate']:.4f} mean SDC rate"
    )
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(CorruptFileError):
        RtlCampaignResult.load(tmp_path / "junk.npz")


@pytest.mark.rtl
def test_campaign_input_errors(fi_layers, xs):
    from edgeml.fault_injection.rtl_faults import RtlFaultSite, run_rtl_campaign

    with pytest.raises(ConfigError, match=r"unknown register 'r99'.*has \['r0'"):
        run_rtl_campaign(fi_layers, xs, [RtlFaultSite("r99", 0)], progress=False)
    w = fi_layers.registers[1].width
    with pytest.raises(ConfigError, match=rf"exceed r1 \({w} bits\)"):
        run_rtl_campaign(fi_layers, xs, [RtlFaultSite("r1", w - 1, 2)], progress=False)
    with pytest.raises(ConfigError, match="sdc must be one of"):
        run_rtl_campaign(fi_layers, xs, [], sdc="top5", progress=False)
    with pytest.raises(InputRangeError, match="input codes span"):
        run_rtl_campaign(fi_layers, xs + 1000, [], progress=False)


@pytest.mark.rtl
def test_fi_build_reloads_from_disk(fi_layers, xs, g):
    from edgeml.fault_injection.rtl_fi_build import FiDesign

    d2 = FiDesign.load(fi_layers.out_dir)
    assert d2.registers == fi_layers.registers and d2.build_key() == fi_layers.build_key()
    assert d2.build() == 0.0
    assert _n_bad(d2.predict_int(xs), g.run(xs)) == 0


# --------------------------------------------------------------------------- da4ml's own pipeline


@pytest.mark.rtl
def test_da4ml_pipeline_register_map(da4ml_pair, g):
    """yosys' flip-flops of the plain da4ml top = the FI build's registers; the input and output
    registers map to golden elements, mid-pipeline cuts hold partial sums and forwarded copies."""
    from edgeml.fault_injection.rtl_regmap import map_registers

    design, fi = da4ml_pair
    rm = map_registers(fi, g, source_files=design.verilog_files, source_top=design.top)
    s = rm.summary()
    print(f"\n[rtl-fi] da4ml build map: { ({k: v for k, v in s.items() if k != 'per_register'}) }")
    for r, c in s["per_register"].items():
        print(f"    {r}: {c}")
    assert rm.source_flipflops == rm.yosys_flipflops == fi.n_register_bits
    per = rm.per_register()
    first, last = fi.registers[0].name, fi.registers[-1].name
    assert per[first]["internal"] == per[first]["copy"] == 0
    assert per[last]["internal"] == per[last]["copy"] == per[last]["dead"] == 0
    assert per[first]["exact"] + per[first]["dead"] == fi.registers[0].width
    assert sum(per[r.name]["internal"] for r in fi.registers[1:-1]) > 0
    # every mapped element's value really is that golden element's (on fresh vectors)
    x, _ = verification_vectors(g, None, 500, seed=5)
    _, tr = g.run(x, trace=True)
    tr[g.input_name] = x
    vals = x.reshape(len(x), -1).astype(np.float64)
    from edgeml.fault_injection.rtl_fi_build import load_pipeline

    stage = [vals]
    for sol in load_pipeline(design).solutions:
        stage.append(sol.predict(stage[-1], n_threads=1))
    n_checked = 0
    for r, v in zip(fi.registers, stage, strict=True):
        for j, el in enumerate(r.elements):
            if el.tensor is not None:
                assert np.array_equal(v[:, j], tr[el.tensor].reshape(len(x), -1)[:, el.index])
                n_checked += 1
    assert n_checked >= fi.n_outputs + 1


@pytest.mark.rtl
@pytest.mark.slow
def test_da4ml_pipeline_flips(da4ml_built, g, xs, env):
    """Flips of da4ml's input and output registers equal the golden flips, every one; those of a
    forwarded copy have no golden twin (refused)."""
    from edgeml.fault_injection.rtl_faults import (
        RtlFaultSite,
        golden_register_flip,
        run_rtl_campaign,
    )
    from edgeml.fault_injection.rtl_regmap import map_registers

    _, fi = da4ml_built
    rm = map_registers(fi, g, yosys=False)
    rng = np.random.default_rng(1)
    twins = [b for b in rm.bits if b.cls in ("exact", "value")]
    pick = [twins[i] for i in rng.choice(len(twins), min(200, len(twins)), replace=False)]
    sites = [RtlFaultSite(b.register, b.bit) for b in pick]
    res = run_rtl_campaign(fi, xs, sites, return_outputs=True, progress=False)
    agree: Counter = Counter()
    total: Counter = Counter()
    for i, b in enumerate(pick):
        want = golden_register_flip(g, fi, xs, sites[i], env=env)
        total[b.register] += 1
        agree[b.register] += bool(np.array_equal(res.outputs[i], want))
    print(
        f"\n[rtl-fi] da4ml build, golden twins agreeing: { {r: f'{agree[r]}/{total[r]}' for r in total} }, "
        f"{res.faults_per_s:,.0f} faults/s x {len(xs)} vectors"
    )
    first, last = fi.registers[0].name, fi.registers[-1].name
    assert agree[first] == total[first] > 0 and agree[last] == total[last] > 0
    copies = rm.select("copy")
    if copies:
        with pytest.raises(ConfigError, match="forwarded copy"):
            golden_register_flip(
                g, fi, xs, RtlFaultSite(copies[0].register, copies[0].bit), env=env
            )


@pytest.mark.rtl
def test_wrapping_a_combinational_design_is_refused(g, work):
    from edgeml.fault_injection.rtl_fi_build import wrap_da4ml_pipeline
    from edgeml.rtl import RtlDesign

    d = RtlDesign.__new__(RtlDesign)
    d.name, d.pipelined = "comb", False
    with pytest.raises(ConfigError, match="combinational"):
        wrap_da4ml_pipeline(d, work / "nope", g=g)


# --------------------------------------------------------------------------- cocotb


@pytest.mark.rtl
def test_cocotb_deposit_seus(tiny):
    """Register flips deposited by VPI at chosen cycles change exactly the vector in flight, as the
    golden model predicts; one flip (a ReLU LSB the requantiser rounds away) is masked."""
    from edgeml.fault_injection.rtl_faults import RtlFaultSite, golden_register_flip, trace_env
    from edgeml.rtl_sim.fi_runner import run_fi_cocotb
    from edgeml.toolchain import cache_dir

    g, fi = tiny
    x, _ = verification_vectors(g, None, 48, seed=9)
    x = x[:48]
    env = trace_env(g, x)
    ref = g.run(x)
    ranks = {r.name: r.rank for r in fi.registers}
    last = fi.registers[-1].name
    flips = [
        (c, reg, _visible_bit(fi, g, x, env, reg, c - ranks[reg], order))
        for c, reg, order in [
            (5, "r3", "msb"),
            (9, "r1", "msb"),
            (14, "r0", "msb"),
            (19, last, "lsb"),
        ]
    ]
    # a masked flip: the first ReLU LSB whose flip the requantiser rounds away on its vector
    relu = fi.registers[2]
    assert relu.holds == next(op.output for op in g.ops if op.kind == "relu")
    v = 30 - relu.rank
    masked = next(
        (30, relu.name, el.offset)
        for el in relu.elements
        if np.array_equal(
            golden_register_flip(g, fi, x, RtlFaultSite(relu.name, el.offset), env=env)[v], ref[v]
        )
    )
    flips.append(masked)
    expected = ref.copy()
    visible = []
    for c, reg, b in flips:
        v = c - ranks[reg]
        out = golden_register_flip(g, fi, x, RtlFaultSite(reg, b), env=env)
        expected[v] = out[v]
        if not np.array_equal(out[v], ref[v]):
            visible.append(v)
    assert len(visible) == 4 and len({c - ranks[r] for c, r, _ in flips}) == 5
    bench = cache_dir() / "test_rtl_faults" / "cocotb_tiny"
    res = run_fi_cocotb(fi, x, flips, expected, ref, bench)
    print(
        f"\n[cocotb-fi] {res.n_flips} deposits {[(c, r, b) for c, r, b in flips]}, changed vectors "
        f"{res.changed_vectors}, mismatches {res.mismatching_vectors}, sim {res.seconds:.1f} s, "
        f"build {res.build_seconds:.1f} s"
    )
    assert res.passed and res.mismatching_vectors == []
    assert sorted(res.changed_vectors) == sorted(visible)
    assert [d["vector"] for d in res.deposits] == [c - ranks[r] for c, r, _ in flips]
    # the bench fails when the prediction is wrong: claim the masked flip acted
    wrong = expected.copy()
    mv = masked[0] - ranks[masked[1]]
    wrong[mv, 0] += 1
    bad = run_fi_cocotb(fi, x, flips, wrong, ref, bench)
    assert not bad.passed and bad.mismatching_vectors == [mv]


# --------------------------------------------------------------------------- CNN


@pytest.mark.rtl
@pytest.mark.slow
def test_cnn_layer_build_cross_check(work):
    """Conv-ReLU-pool-dense: registers after the pool (NHWC) and the output; flips equal golden."""
    import torch

    from edgeml.fault_injection.rtl_faults import golden_act_flip, run_rtl_campaign
    from edgeml.fault_injection.rtl_fi_build import generate_fi_rtl
    from edgeml.fault_injection.rtl_regmap import map_registers

    torch.manual_seed(0)
    x, y = bm.digits()
    model = bm.cnn()
    bm.train(model, x, y, epochs=3)
    g = GoldenModel.from_onnx(bm.export_clean(model, (1, 8, 8), work, "digits_cnn"))
    d = generate_fi_rtl(g, work / "cnn_fi", "digits_cnn_fi", boundaries="layers")
    pool = next(op for op in g.ops if op.kind == "maxpool")
    assert [r.holds for r in d.registers] == [g.input_name, pool.output, g.output_name]
    s = d.build()
    codes = g.quantize_input(x, on_overflow="saturate")
    xv, _ = verification_vectors(g, codes, 10_000, seed=12)
    assert _n_bad(d.predict_int(xv), g.predict(xv)) == 0
    rm = map_registers(d, g)
    exact = rm.select("exact")
    rng = np.random.default_rng(2)
    picks = [exact[i] for i in rng.choice(len(exact), 150, replace=False)]
    from edgeml.fault_injection.rtl_faults import RtlFaultSite, trace_env

    xc = xv[:200]
    env = trace_env(g, xc)
    res = run_rtl_campaign(
        d, xc, [RtlFaultSite(b.register, b.bit) for b in picks], return_outputs=True, progress=False
    )
    bad = [
        b
        for i, b in enumerate(picks)
        if not np.array_equal(
            res.outputs[i], golden_act_flip(g, xc, b.tensor, b.index, b.tbit, b.nbits, env=env)
        )
    ]
    print(
        f"\n[rtl-fi] CNN layer build ({'cached' if s == 0 else f'built in {s:.0f} s'}): "
        f"{rm.counts()} of {rm.n_bits} register bits; {len(picks)} flips cross-checked, "
        f"{len(bad)} mismatches; {res.faults_per_s:,.0f} faults/s x {len(xc)} vectors"
    )
    assert not bad
    assert {b.register for b in picks} == {r.name for r in d.registers}
