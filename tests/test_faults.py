"""Fault sites, the bit-fault injector and parameter campaigns on the golden model."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import brevitas_models as bm
import numpy as np
import pytest

from edgeml.errors import ConfigError, CorruptFileError
from edgeml.fault_injection import (
    CampaignResult,
    FaultSite,
    apply_bit_fault,
    apply_bit_faults,
    count_param_sites,
    enumerate_param_sites,
    fault_deltas,
    fault_values,
    run_param_campaign,
    run_param_campaign_naive,
)
from edgeml.golden import GoldenModel

N_TEST = 360  # held-out digits the campaigns run on
KINDS = ("flip", "stuck0", "stuck1")

# --------------------------------------------------------------------------- test designs


def _cnn2():
    """Untrained; covers what ``mlp`` and ``cnn`` do not: per-channel power-of-two weight
    scales (a weight left shift), padding, a per-channel bias affine, conv -> conv and
    signed activations before pooling."""
    from brevitas import nn as qnn
    from brevitas.quant import Int8ActPerTensorFixedPoint
    from torch import nn

    return nn.Sequential(
        bm.quant_input(),
        bm.quant_conv(
            1, 4, 3, padding=1, weight_bit_width=5, weight_scaling_per_output_channel=True
        ),
        bm.quant_relu(),
        bm.quant_conv(4, 4, 3),
        qnn.QuantIdentity(
            act_quant=Int8ActPerTensorFixedPoint, bit_width=6, return_quant_tensor=True
        ),
        nn.MaxPool2d(2),
        nn.Flatten(),
        bm.quant_linear(36, 10, last=True),
    )


def _build_design(kind: str, tmp: Path) -> tuple[GoldenModel, np.ndarray, np.ndarray]:
    """Brevitas model -> QONNX -> cleaned -> golden model, plus test input codes and labels.

    ``mlp`` (64-32-32-10) and ``cnn`` (Conv 1->8 3x3, ReLU, MaxPool 2, Linear 72->10) are
    briefly trained on sklearn digits (see ``brevitas_models``); ``cnn2`` is untrained
    (see ``_cnn2``).
    """
    import torch

    torch.manual_seed(0)
    x_all, y_all = bm.digits()
    model = {"mlp": bm.mlp, "cnn": bm.cnn, "cnn2": _cnn2}[kind]()
    if kind == "cnn2":
        model.eval()
        with torch.no_grad():
            model(torch.rand(16, 1, 8, 8))  # untrained: only calibrate the quantizers
    else:
        bm.train(model, x_all[:-N_TEST], y_all[:-N_TEST])
    g = GoldenModel.from_onnx(bm.export_clean(model, (1, 8, 8), tmp, kind))
    x = g.quantize_input(x_all[-N_TEST:], on_overflow="saturate")
    return g, x, y_all[-N_TEST:]


@pytest.fixture(scope="module")
def designs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torch

    tmp = tmp_path_factory.mktemp("fault_designs")
    threads = torch.get_num_threads()
    # One thread: tiny models, and intra-op threads on a busy 2-core box are ~50x slower.
    torch.set_num_threads(1)
    try:
        return {k: _build_design(k, tmp) for k in ("mlp", "cnn", "cnn2")}
    finally:
        torch.set_num_threads(threads)


def _residual_design(seed: int = 0) -> tuple[GoldenModel, np.ndarray, np.ndarray]:
    """A hand-built integer model with a skip connection, a per-channel affine and a
    transpose: ops the Brevitas designs lack (dense fallback, two live faulty tensors)."""
    from edgeml.fixed import FixedType
    from edgeml.golden import (
        AddTensors,
        Affine,
        Dense,
        Relu,
        Requant,
        Reshape,
        TensorInfo,
        Transpose,
    )

    rng = np.random.default_rng(seed)
    w6, b16 = FixedType(True, 6, 0), FixedType(True, 16, 0)

    def dense(name: str, src: str, out: str, n_in: int, n_out: int, b: int = 2000) -> Dense:
        return Dense(
            name,
            [src],
            out,
            weight=rng.integers(-32, 32, (n_in, n_out)),
            weight_type=w6,
            bias=rng.integers(-b, b, n_out),
            bias_type=b16,
        )

    ops = [
        dense("d1", "x", "h1", 12, 8),
        Relu("r1", ["h1"], "a1"),
        Requant("q1", ["a1"], "q1o", shift=8, lo=0, hi=63),
        dense("d2", "q1o", "h2", 8, 8),
        Requant("q2", ["h2"], "q2o", shift=7, lo=-32, hi=31),
        AddTensors("add", ["q1o", "q2o"], "s", shift_a=1),
        Affine("aff", ["s"], "s2", mult=rng.integers(1, 4, 8), offset=rng.integers(-9, 9, 8)),
        Requant("q3", ["s2"], "q3o", shift=2, lo=-32, hi=31),
        Reshape("r2d", ["q3o"], "q3m", shape=(2, 4)),
        Transpose("t", ["q3m"], "q3t", perm=(0, 2, 1)),
        Reshape("r1d", ["q3t"], "q3f", shape=(8,)),
        dense("d3", "q3f", "out", 8, 4, b=20),
    ]
    shapes = {"x": (12,), "out": (4,), "q3m": (2, 4), "q3t": (4, 2)}
    tensors = {
        name: TensorInfo(name, shapes.get(name, (8,)), FixedType(True, 32, 0), np.asarray(1.0))
        for name in ["x", *(op.output for op in ops)]
    }
    tensors["x"] = TensorInfo("x", (12,), FixedType(False, 8, 0), np.asarray(1.0))
    g = GoldenModel(
        ops=ops,
        tensors=tensors,
        input_name="x",
        output_name="out",
        input_shape=(12,),
        input_quant=Requant("in", ["x"], "x", lo=0, hi=255),
        input_real_scale=1.0,
    )
    x = rng.integers(0, 256, (200, 12))
    y = np.asarray(g.run(x)).argmax(1)
    y[::4] = rng.integers(0, 4, y[::4].size)  # not every golden answer is right
    return g, x, y


def _random_sites(g: GoldenModel, n: int, seed: int) -> list[FaultSite]:
    """``n`` distinct random sites; one in five is a stuck-at fault instead of a flip."""
    sites = enumerate_param_sites(g)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(sites), size=min(n, len(sites)), replace=False)
    kinds = rng.choice(["flip", "flip", "flip", "flip", "stuck0", "stuck1"], size=pick.size)
    return [dataclasses.replace(sites[i], kind=str(k)) for i, k in zip(pick, kinds, strict=True)]


# --------------------------------------------------------------------------- injector


def test_flip_changes_exactly_one_bit_of_the_twos_complement_word() -> None:
    bits = 6
    codes = np.arange(-32, 32, dtype=np.int64)
    mask = (1 << bits) - 1
    for bit in range(bits):
        out = fault_values(codes, bits, True, bit)
        assert out.min() >= -32 and out.max() <= 31
        assert np.all(((out & mask) ^ (codes & mask)) == (1 << bit))
    # Sign bit: 5 = 000101 -> 100101 = -27; -32 = 100000 -> 0; -1 = 111111 -> 011111 = 31.
    assert fault_values(np.array([5, -32, -1]), 6, True, 5).tolist() == [-27, 0, 31]
    # LSB of -1 (111111) -> 111110 = -2; bit 3 of 0 -> 8.
    assert fault_values(np.array([-1, 0]), 6, True, np.array([0, 3])).tolist() == [-2, 8]
    # Unsigned storage: MSB of 3 in 4 bits -> 11.
    assert int(fault_values(np.array(3), 4, False, 3)) == 11


def test_flip_twice_is_the_identity() -> None:
    codes = np.arange(-128, 128, dtype=np.int64)
    for bit in range(8):
        once = fault_values(codes, 8, True, bit)
        assert not np.any(once == codes)
        assert np.array_equal(fault_values(once, 8, True, bit), codes)


def test_stuck_at_sets_or_clears_one_bit() -> None:
    codes = np.arange(-16, 16, dtype=np.int64)
    for bit in range(5):
        s1 = fault_values(codes, 5, True, bit, "stuck1")
        s0 = fault_values(codes, 5, True, bit, "stuck0")
        assert np.all((s1 >> bit) & 1 == 1) and np.all((s0 >> bit) & 1 == 0)
        already = ((codes >> bit) & 1) == 1
        assert np.array_equal(s1[already], codes[already])
        assert np.array_equal(s0[~already], codes[~already])
        assert np.array_equal(fault_values(s1, 5, True, bit, "stuck1"), s1)  # idempotent
    assert int(fault_values(np.array(3), 5, True, 4, "stuck1")) == 3 - 16


def test_apply_bit_fault_returns_a_corrupted_copy() -> None:
    w = np.arange(24, dtype=np.int64).reshape(2, 3, 4) - 12
    before = w.copy()
    out = apply_bit_fault(w, 6, True, 19, 5)  # code 7 -> 7 - 32
    assert np.array_equal(w, before)  # never mutated
    diff = np.flatnonzero(out.reshape(-1) != w.reshape(-1))
    assert diff.tolist() == [19] and out.reshape(-1)[19] == 7 - 32
    assert np.array_equal(apply_bit_fault(w, 6, True, (1, 1, 3), 5), out)
    # Golden Conv weights are transposed views: the flat index is C order of the view.
    wt = w.transpose(2, 0, 1)
    out_t = apply_bit_fault(wt, 6, True, 5, 0)
    assert out_t.reshape(-1)[5] == fault_values(wt.reshape(-1)[5], 6, True, 0)
    assert np.count_nonzero(out_t != wt) == 1


def test_vectorised_injectors_match_the_scalar_one() -> None:
    rng = np.random.default_rng(0)
    w = rng.integers(-32, 32, size=(5, 7))
    idx = rng.integers(0, w.size, size=50)
    bit = rng.integers(0, 6, size=50)
    kinds = rng.integers(0, 3, size=50)
    names = ["flip", "stuck0", "stuck1"]
    stack = apply_bit_faults(w, 6, True, idx, bit, kinds)
    deltas = fault_deltas(w, 6, True, idx, bit, kinds)
    for f in range(50):
        one = apply_bit_fault(w, 6, True, int(idx[f]), int(bit[f]), names[kinds[f]])
        assert np.array_equal(stack[f], one)
        assert deltas[f] == one.reshape(-1)[idx[f]] - w.reshape(-1)[idx[f]]


def test_injector_refuses_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="bit positions"):
        fault_values(np.array([1]), 6, True, 6)
    with pytest.raises(ConfigError, match="6-bit signed word"):
        fault_values(np.array([40]), 6, True, 0)
    with pytest.raises(ConfigError, match="kind"):
        fault_values(np.array([1]), 6, True, 0, "stuck2")
    with pytest.raises(ConfigError, match="out of range"):
        apply_bit_fault(np.zeros(4, np.int64), 6, True, 4, 0)


# --------------------------------------------------------------------------- sites


def test_fault_site_is_a_small_hashable_value() -> None:
    s = FaultSite("MatMul_0", "weight", 3, 5)
    assert s.kind == "flip" and s == FaultSite("MatMul_0", "weight", 3, 5, "flip")
    assert len({s, FaultSite("MatMul_0", "weight", 3, 5)}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.bit = 1  # type: ignore[misc]
    with pytest.raises(ConfigError, match="param"):
        FaultSite("MatMul_0", "gamma", 0, 0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="kind"):
        FaultSite("MatMul_0", "weight", 0, 0, "stuck")  # type: ignore[arg-type]
    # multi-bit upsets and transient sites are values of the same type
    mbu = FaultSite("MatMul_0", "acc", 3, 5, "stuck1", 2)
    assert mbu.fault_id == "MatMul_0/acc/3/5/stuck1/2" and FaultSite.from_id(mbu.fault_id) == mbu
    assert mbu.transient and not s.transient and s.nbits == 1


@pytest.mark.parametrize("kind", ["mlp", "cnn", "cnn2"])
def test_site_count_is_every_weight_and_bias_bit(designs: dict, kind: str) -> None:
    g = designs[kind][0]
    sites = enumerate_param_sites(g)
    expected = sum(
        op.weight.size * op.weight_type.width
        + (0 if op.bias is None else op.bias.size * op.bias_type.width)
        for op in g.param_ops
    )
    assert len(sites) == expected == count_param_sites(g)
    assert len(set(sites)) == len(sites)
    first = g.param_ops[0]
    w = first.weight_type.width
    assert [s.bit for s in sites[:w]] == list(range(w))  # LSB first, sign bit last
    assert all(s.layer == first.name and s.index == 0 for s in sites[:w])


def test_site_enumeration_validates_its_arguments(designs: dict) -> None:
    g = designs["mlp"][0]
    with pytest.raises(ConfigError, match="weight layers are"):
        enumerate_param_sites(g, layers=["MatMul_9"])
    only = enumerate_param_sites(g, params=("bias",), layers=["MatMul_2"])
    assert len(only) == 10 * 16 and {s.param for s in only} == {"bias"}


# --------------------------------------------------------------------------- campaigns


def _assert_same(a: CampaignResult, b: CampaignResult) -> None:
    for name in ("layer", "param", "index", "bit", "kind", "acc_drop", "sdc_rate", "max_dev"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    assert a.baseline_accuracy == b.baseline_accuracy or (
        np.isnan(a.baseline_accuracy) and np.isnan(b.baseline_accuracy)
    )
    assert a.n_samples == b.n_samples and a.layer_names == b.layer_names


@pytest.mark.parametrize("kind", ["mlp", "cnn", "cnn2"])
def test_fast_campaign_equals_naive_exactly(designs: dict, kind: str) -> None:
    g, x, y = designs[kind]
    sites = _random_sites(g, 300, seed=1)
    before = [(op.weight.copy(), None if op.bias is None else op.bias.copy()) for op in g.param_ops]
    fast = run_param_campaign(g, x, y, sites, batch_faults=64, progress=False)
    naive = run_param_campaign_naive(g, x, y, sites, progress=False)
    _assert_same(fast, naive)
    assert fast.sites() == sites
    assert fast.sdc_rate.max() > 0  # the sample is not trivially harmless
    for op, (w, b) in zip(g.param_ops, before, strict=True):  # the model is never mutated
        assert np.array_equal(op.weight, w) and (b is None or np.array_equal(op.bias, b))


def test_fast_campaign_equals_naive_on_a_residual_graph() -> None:
    g, x, y = _residual_design()
    sites = [dataclasses.replace(s, kind=k) for s in enumerate_param_sites(g) for k in KINDS]
    fast = run_param_campaign(g, x, y, sites, batch_faults=96, progress=False)
    _assert_same(fast, run_param_campaign_naive(g, x, y, sites, progress=False))
    assert all(v > 0 for v in fast.per_layer().values())  # faults reach the output


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_exhaustive_fast_campaign_equals_naive(designs: dict, kind: str) -> None:
    g, x, y = designs[kind]
    fast = run_param_campaign(g, x, y, progress=False)
    naive = run_param_campaign_naive(g, x, y, progress=False)
    _assert_same(fast, naive)
    assert naive.seconds > fast.seconds


def test_fast_campaign_equals_naive_without_labels(designs: dict) -> None:
    g, x, _ = designs["cnn"]
    sites = _random_sites(g, 100, seed=2)
    fast = run_param_campaign(g, x[:50], None, sites, progress=False)
    naive = run_param_campaign_naive(g, x[:50], None, sites, progress=False)
    _assert_same(fast, naive)
    assert np.all(np.isnan(fast.acc_drop)) and np.isnan(fast.baseline_accuracy)


def test_sign_bit_flips_hurt_more_than_lsb_flips(designs: dict) -> None:
    """Measured on the trained MLP: flipping the sign bit of a large weight moves it by
    2**(w-1) codes and changes far more decisions than flipping its LSB (one code)."""
    g, x, y = designs["mlp"]
    assert run_param_campaign(g, x, y, [], progress=False).baseline_accuracy > 0.75
    sign, lsb = [], []
    for op in g.param_ops:
        width = op.weight_type.width
        flat = op.weight.reshape(-1)
        large = np.flatnonzero(np.abs(flat) >= np.quantile(np.abs(flat), 0.75))
        sign += [FaultSite(op.name, "weight", int(i), width - 1) for i in large]
        lsb += [FaultSite(op.name, "weight", int(i), 0) for i in large]
    res = run_param_campaign(g, x, y, sign + lsb, progress=False)
    s, lo = slice(0, len(sign)), slice(len(sign), None)
    assert res.sdc_rate[s].mean() > 5 * res.sdc_rate[lo].mean()
    assert res.acc_drop[s].mean() > res.acc_drop[lo].mean()
    assert res.max_dev[s].mean() > res.max_dev[lo].mean()


def test_exhaustive_campaign_aggregates(designs: dict) -> None:
    g, x, y = designs["cnn"]
    res = run_param_campaign(g, x, y, progress=False)
    assert len(res) == count_param_sites(g) and res.seconds > 0
    assert set(res.per_layer()) == {op.name for op in g.param_ops}
    per_bit = res.per_bit("weight")
    assert sorted(per_bit) == list(range(6)) and per_bit[5] > per_bit[0]
    assert set(res.per_bit("bias")) == set(range(16))
    top = res.top(10)
    assert len(top) == 10 and top[0].sdc_rate == res.sdc_rate.max()
    assert all(a.sdc_rate >= b.sdc_rate for a, b in itertools.pairwise(top))
    assert set(res.param_labels()) == {"weight", "bias"}
    assert res.layer_labels()[0] == g.param_ops[0].name


def test_campaign_refuses_bad_sites_and_labels(designs: dict) -> None:
    g, x, y = designs["mlp"]
    with pytest.raises(ConfigError, match="holds no weights"):
        run_param_campaign(g, x, y, [FaultSite("Relu_0", "weight", 0, 0)], progress=False)
    with pytest.raises(ConfigError, match="reach index"):
        run_param_campaign(g, x, y, [FaultSite("MatMul_2", "weight", 320, 0)], progress=False)
    with pytest.raises(ConfigError, match="reach index"):
        run_param_campaign(g, x, y, [FaultSite("MatMul_2", "bias", 0, 16)], progress=False)
    with pytest.raises(ConfigError, match="labels"):
        run_param_campaign(g, x, y[:5], progress=False)
    with pytest.raises(ConfigError, match="batch_faults"):
        run_param_campaign(g, x, y, batch_faults=0, progress=False)


def test_progress_bar_runs(designs: dict, capsys: pytest.CaptureFixture[str]) -> None:
    g, x, y = designs["mlp"]
    res = run_param_campaign(g, x[:20], y[:20], _random_sites(g, 30, seed=3), progress=True)
    assert len(res) == 30
    assert "fault" in capsys.readouterr().err


# --------------------------------------------------------------------------- files


def test_save_load_round_trip(designs: dict, tmp_path: Path) -> None:
    g, x, y = designs["cnn"]
    res = run_param_campaign(g, x, y, _random_sites(g, 200, seed=4), progress=False)
    path = res.save(tmp_path / "faults" / "campaign.npz")
    back = CampaignResult.load(path)
    _assert_same(res, back)
    assert back.seconds == res.seconds and back.meta == res.meta
    assert back.sites() == res.sites()
    assert res.save(tmp_path / "other").name == "other.npz"


def test_load_refuses_corrupt_files(designs: dict, tmp_path: Path) -> None:
    g, x, y = designs["mlp"]
    good = run_param_campaign(g, x[:20], y[:20], _random_sites(g, 20, seed=5), progress=False)
    path = good.save(tmp_path / "c.npz")
    raw = path.read_bytes()

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(raw[: len(raw) // 2])
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.arange(3))
    mismatched = tmp_path / "mismatched.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["sdc_rate"] = arrays["sdc_rate"][:-1]
    np.savez(mismatched, **arrays)

    for bad in (garbage, truncated, foreign, mismatched, tmp_path / "missing.npz"):
        with pytest.raises(CorruptFileError):
            CampaignResult.load(bad)
