"""The randomized SVD against the exact SVD, model factorisation, and the ``--low-rank`` stage."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeml import lowrank
from edgeml.cli import EXIT_OK, EXIT_USAGE, main
from edgeml.config import validate_config
from edgeml.errors import ConfigError
from edgeml.export import export_qonnx
from edgeml.golden import GoldenModel
from edgeml.models import jets, training, zoo

warnings.filterwarnings("ignore", module="brevitas")


def known_spectrum(m: int, n: int, sigma: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, len(sigma))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(sigma))))
    return (u * sigma) @ v.T


# ------------------------------------------------------------------------ randomized SVD


def test_rsvd_fast_decay_within_hmt_bounds_and_near_optimal() -> None:
    sigma = 0.7 ** np.arange(60)
    a = known_spectrum(200, 120, sigma)
    k, p = 10, 5
    bounds = lowrank.hmt_bounds(sigma, k, p, 0)
    assert bounds["sigma_k1"] == pytest.approx(sigma[k])
    spec, frob = [], []
    for seed in range(8):
        q = lowrank.randomized_range_finder(a, k + p, power_iters=0, seed=seed)
        assert q.shape == (200, k + p)
        np.testing.assert_allclose(q.T @ q, np.eye(k + p), atol=1e-12)
        r = a - q @ (q.T @ a)
        spec.append(np.linalg.norm(r, 2))
        frob.append(np.linalg.norm(r, "fro"))
        # never better than the best rank-(k+p) approximation (Eckart-Young)
        assert spec[-1] >= sigma[k + p] * (1 - 1e-9)
    # HMT Thm 10.5/10.6 bound the mean error; the empirical mean of 8 trials is well below
    assert np.mean(spec) <= bounds["spectral"]
    assert np.mean(frob) <= bounds["frobenius"]
    u, s, vt = lowrank.randomized_svd(a, k, oversample=p, power_iters=0, seed=1)
    np.testing.assert_allclose(s, sigma[:k], rtol=0.03)  # one pass: the tail is rough
    err = lowrank.svd_errors(a, u, s, vt)
    # the truncated rSVD: optimal <= error <= optimal + range-finder error (HMT Sec. 9.3)
    assert sigma[k] * (1 - 1e-9) <= err["spectral"] <= sigma[k] + max(spec)
    assert err["rel_spectral"] == pytest.approx(err["spectral"] / sigma[0])
    u, s, vt = lowrank.randomized_svd(a, k, oversample=p, power_iters=2, seed=1)
    np.testing.assert_allclose(s, sigma[:k], rtol=1e-6)  # two power iterations: near exact
    assert lowrank.svd_errors(a, u, s, vt)["spectral"] <= 1.001 * sigma[k]


def test_power_iterations_help_on_slowly_decaying_spectrum() -> None:
    sigma = 1.0 / np.arange(1, 101)
    a = known_spectrum(300, 150, sigma, seed=3)
    k = 10
    ratio = {}
    for q in (0, 1, 2):
        errs = []
        for seed in range(5):
            u, s, vt = lowrank.randomized_svd(a, k, oversample=5, power_iters=q, seed=seed)
            errs.append(lowrank.svd_errors(a, u, s, vt)["spectral"] / sigma[k])
            qm = lowrank.randomized_range_finder(a, k + 5, q, seed=seed)
            assert (
                np.linalg.norm(a - qm @ (qm.T @ a), 2)
                <= lowrank.hmt_bounds(sigma, k, 5, q)["spectral"] * 3
            )  # Markov: a single trial exceeds 3x the mean bound with prob <= 1/3
        ratio[q] = float(np.mean(errs))
    assert ratio[0] > 1.5  # one pass is far from optimal on a flat spectrum
    assert ratio[2] < ratio[1] < ratio[0]
    assert ratio[2] < 1.15
    # the bound itself tightens with q
    b = [lowrank.hmt_bounds(sigma, k, 5, q)["spectral"] for q in (0, 1, 2)]
    assert b[2] < b[1] < b[0]


def test_rsvd_deterministic_accepts_torch_and_validates() -> None:
    a = known_spectrum(40, 30, 0.5 ** np.arange(30), seed=2)
    one = lowrank.randomized_svd(a, 5, seed=7)
    two = lowrank.randomized_svd(torch.from_numpy(a).float(), 5, seed=7)
    np.testing.assert_allclose(one[1], two[1], rtol=1e-5)
    np.testing.assert_array_equal(one[0], lowrank.randomized_svd(a, 5, seed=7)[0])
    # rank above min(m, n) is capped; with the full range the SVD is exact
    u, s, vt = lowrank.randomized_svd(a, 100, seed=0)
    assert s.shape == (30,)
    np.testing.assert_allclose((u * s) @ vt, a, atol=1e-10)
    for bad, msg in ((0, "rank must be an integer >= 1"), (2.5, "rank must be"), (True, "rank")):
        with pytest.raises(ConfigError, match=msg):
            lowrank.randomized_svd(a, bad)
    with pytest.raises(ConfigError, match="power_iters"):
        lowrank.randomized_svd(a, 3, power_iters=-1)
    with pytest.raises(ConfigError, match="2-D"):
        lowrank.randomized_svd(np.ones(5), 1)
    with pytest.raises(ConfigError, match="oversample >= 2"):
        lowrank.hmt_bounds(np.ones(5), 2, 1)


def test_choose_rank_and_low_rank_values() -> None:
    s = np.array([3.0, 2.0, 1.0, 0.0])
    assert lowrank.choose_rank(s, 2) == 2
    assert lowrank.choose_rank(s, 10) == 4
    assert lowrank.choose_rank(s, 9 / 14) == 1  # 9 of 14 energy: sigma_1 alone
    assert lowrank.choose_rank(s, 0.65) == 2
    assert lowrank.choose_rank(s, 1.0) == 3  # the zero singular value adds no energy
    assert lowrank.check_low_rank(0) is None and lowrank.check_low_rank(None) is None
    for bad in (-1, 0.0, 1.5, float("nan"), "8", True):
        with pytest.raises(ConfigError, match="allowed: null or 0"):
            lowrank.check_low_rank(bad)
    assert lowrank.saves_weights(16, 64, 12) and not lowrank.saves_weights(16, 64, 13)


# ------------------------------------------------------------------------ factorisation


def test_factorized_dense_equals_truncated_svd_product() -> None:
    torch.manual_seed(0)
    f = jets.build_float().eval()
    fac, reps = lowrank.factorize(f, 8)
    assert lowrank.ranks_of(fac) == {"fc1": 8, "fc2": 8, "fc3": 8}  # fc4 (5x32) would grow
    by = {r.layer: r for r in reps}
    assert not by["fc4"].factorised and by["fc4"].weights_after == 160
    assert sum(r.weights_after for r in reps) == 640 + 768 + 512 + 160
    assert lowrank.n_weights(fac) == 2080 and lowrank.n_weights(f) == 4256
    x = torch.randn(256, 16)
    ref = x
    for i, name in enumerate(("fc1", "fc2", "fc3", "fc4")):
        w = getattr(f, name).weight.detach().double().numpy()
        r = lowrank.ranks_of(fac).get(name)
        if r is not None:
            lr = getattr(fac, name)
            prod = (lr.second.weight @ lr.first.weight).detach().double().numpy()
            # factorize's rSVD (seed + layer index, p=10, q=2), split as sqrt(s) on both sides
            u, s, vt = lowrank.randomized_svd(w, r, 10, 2, seed=i)
            np.testing.assert_allclose(prod, (u * s) @ vt, atol=1e-6)
            np.testing.assert_allclose(
                lr.first.weight.detach().double().numpy(), np.sqrt(s)[:, None] * vt, atol=1e-6
            )
            err = lowrank.svd_errors(w, u, s, vt)
            assert by[name].rel_spectral == pytest.approx(err["rel_spectral"], rel=1e-9)
            sig = np.linalg.svd(w, compute_uv=False)
            assert by[name].optimal_rel_spectral == pytest.approx(sig[r] / sig[0], rel=1e-9)
            assert by[name].rel_spectral >= by[name].optimal_rel_spectral * (1 - 1e-9)
            if name == "fc1":  # 18 probes span all 16 columns: the exact truncated SVD
                ue, se, vte = np.linalg.svd(w, full_matrices=False)
                np.testing.assert_allclose(prod, (ue[:, :r] * se[:r]) @ vte[:r], atol=1e-6)
            torch.testing.assert_close(lr.second.bias, getattr(f, name).bias)
            w = (u * s) @ vt
        ref = ref.double() @ torch.from_numpy(w).T + getattr(f, name).bias.double()
        if name != "fc4":
            ref = torch.relu(ref)
    with torch.no_grad():
        torch.testing.assert_close(fac(x).double(), ref, atol=1e-4, rtol=1e-4)
    # the original is untouched, and an energy target picks per-layer ranks
    assert lowrank.ranks_of(f) == {}
    _, reps95 = lowrank.factorize(f, 0.95)
    assert all(r.energy >= 0.95 for r in reps95)


@pytest.mark.parametrize("conv", ["1d", "2d"])
def test_factorized_conv_equals_kxk_then_1x1(conv: str) -> None:
    torch.manual_seed(1)
    layer = (
        nn.Conv2d(6, 16, 3, padding=1, stride=2)
        if conv == "2d"
        else nn.Conv1d(6, 16, 5, padding=2, dilation=1)
    )
    net = nn.Sequential(layer).eval()
    fac, reps = lowrank.factorize(net, 4)
    assert lowrank.ranks_of(fac) == {"0": 4}
    k = int(np.prod(layer.kernel_size))
    assert reps[0].weights_before == 16 * 6 * k and reps[0].weights_after == 4 * (6 * k + 16)
    w = layer.weight.detach().double().reshape(16, -1).numpy()
    u, s, vt = lowrank.randomized_svd(w, 4, 10, 2, seed=0)  # what factorize computes
    best = torch.from_numpy((u * s) @ vt).float().reshape(layer.weight.shape)
    ref_layer = type(layer)(6, 16, layer.kernel_size, padding=layer.padding, stride=layer.stride)
    with torch.no_grad():
        ref_layer.weight.copy_(best)
        ref_layer.bias.copy_(layer.bias)
        x = torch.randn(8, 6, 12, 12) if conv == "2d" else torch.randn(8, 6, 40)
        torch.testing.assert_close(fac(x), ref_layer(x), atol=1e-4, rtol=1e-4)
    assert fac[0].second.kernel_size == (1, 1) if conv == "2d" else (1,)


def test_factorize_validates() -> None:
    f = jets.build_float()
    with pytest.raises(ConfigError, match="not a factorable"):
        lowrank.factorize(f, 4, layers=["relu1"])
    with pytest.raises(ConfigError, match="rank >= 1"):
        lowrank.factorize(f, 0)
    with pytest.raises(ConfigError, match="takes a float model"):
        lowrank.factorize(jets.build_qat(6), 4)
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    assert lowrank.factorable_layers(grouped) == {}  # a grouped conv is left alone
    with pytest.raises(ConfigError, match="not a factorable"):
        lowrank.factorize(grouped, 1, layers=["0"])
    with pytest.raises(ConfigError, match="groups=1"):
        lowrank.restructure(grouped, {"0": 1})
    with pytest.raises(ConfigError, match="not in the model"):
        lowrank.restructure(jets.build_qat(6), {"fc9": 2})


@pytest.fixture(scope="module")
def factorised_qat() -> dict:
    data = jets.load_data(0)
    gen = training.seed_all(0)
    f = training.fit(
        jets.build_float(), data.x_train[:4000], data.y_train[:4000], zoo.cross_entropy, 3, gen
    )
    fac, _ = lowrank.factorize(f, 6)
    q = lowrank.restructure(jets.build_qat(6), lowrank.ranks_of(fac), 6)
    training.init_from_float(q, fac)
    q = training.fit(q, data.x_train[:4000], data.y_train[:4000], zoo.cross_entropy, 2, gen)
    return {"data": data, "float": fac, "qat": q}


def test_factorised_qat_golden_equals_brevitas(factorised_qat: dict, tmp_path: Path) -> None:
    q, data = factorised_qat["qat"], factorised_qat["data"]
    mids = [m for m in q.modules() if isinstance(m, lowrank.LowRank)]
    assert len(mids) == 3 and all(m.mid.act_quant.is_quant_enabled for m in mids)
    path = export_qonnx(q, (1, *jets.INPUT_SHAPE), tmp_path / "lr.onnx")
    g = GoldenModel.from_onnx(path)
    # a requant between every pair of factors: dense -> requant -> dense -> relu -> ...
    kinds = [op.kind for op in g.ops]
    assert kinds.count("dense") == 7 and kinds[:3] == ["dense", "requant", "dense"]
    scale = float(np.asarray(g.output_scale).reshape(-1)[0])
    rng = np.random.default_rng(5)
    lim = 2 ** (jets.INPUT_BITS - 1)
    x_rand = rng.integers(-lim, lim, size=(2_000, *g.input_shape)).astype(np.int64)
    for xc in (x_rand, g.quantize_input(data.x_test)):
        ref = g.predict(xc)
        y = training.predict(q, xc.astype(np.float64) * g.input_real_scale) / scale
        assert np.count_nonzero(np.rint(y) != y) == 0
        got = np.rint(y).astype(np.int64).reshape(ref.shape)
        assert len(xc) >= 1000 and np.count_nonzero(got != ref) == 0
        assert np.abs(ref).max() > 0
    acc = training.top1_accuracy(g.predict(g.quantize_input(data.x_test)), data.y_test)
    assert acc > 0.45  # 5 classes: well above chance after a few epochs


def test_checkpoint_round_trip_of_factorised_models(factorised_qat: dict, tmp_path: Path) -> None:
    spec = zoo.get("jet")
    x = factorised_qat["data"].x_test[:500]
    for kind in ("float", "qat"):
        m = factorised_qat[kind]
        path = zoo.save_checkpoint(spec, m, tmp_path / f"{kind}.pt")
        back, meta, _ = zoo.load_checkpoint(path)
        assert meta["low_rank"] == {"fc1": 6, "fc2": 6, "fc3": 6} and meta["kind"] == kind
        assert lowrank.ranks_of(back) == meta["low_rank"]
        np.testing.assert_array_equal(training.predict(back, x), training.predict(m, x))
    # a plain model's checkpoint records no low_rank
    plain = zoo.save_checkpoint(spec, jets.build_float(), tmp_path / "plain.pt")
    assert "low_rank" not in zoo.load_checkpoint(plain)[1]


# ------------------------------------------------------------------------ config and CLI


def test_config_low_rank_names_field_and_allowed_values() -> None:
    assert validate_config({"compress": {"low_rank": 8}}).compress.low_rank == 8
    assert validate_config({"compress": {"low_rank": 0.9}}).compress.low_rank == 0.9
    assert validate_config({"compress": {"low_rank": 8.0}}).compress.low_rank == 8
    assert validate_config({"compress": {"low_rank": 0}}).compress.low_rank == 0
    assert validate_config({}).compress.low_rank is None
    for bad in (-3, 1.5, "eight", True, [8]):
        with pytest.raises(ConfigError) as ei:
            validate_config({"compress": {"low_rank": bad}})
        msg = str(ei.value)
        assert "compress.low_rank" in msg and "energy fraction in (0, 1]" in msg, msg


def test_cli_low_rank_flag(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["compress", "--low-rank", "abc", "--out", str(tmp_path / "r")])
    assert ei.value.code == EXIT_USAGE
    assert "--low-rank: takes an integer rank" in capsys.readouterr().err
    code = main(["compress", "--design", "jet", "--low-rank", "2.5", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code != EXIT_OK and "compress.low_rank" in err and "--low-rank" in err


def test_compress_low_rank_on_a_tiny_run(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "tiny.json"
    cfg.write_text(
        json.dumps({"train": {"epochs_float": 2, "epochs_qat": 1, "epochs_finetune": 1}})
    )
    out = tmp_path / "run"
    common = ["--design", "jet", "--out", str(out), "--config", str(cfg), "-q"]
    assert main(["train", *common]) == EXIT_OK, capsys.readouterr().err
    assert main(["compress", *common, "--low-rank", "4", "--bits", "6"]) == EXIT_OK, (
        capsys.readouterr().err
    )
    info = json.loads((out / "compress.json").read_text())
    low = info["low_rank"]
    assert low["ranks"] == {"fc1": 4, "fc2": 4, "fc3": 4, "fc4": 4}
    assert low["weights_before"] == 4256 and low["weights_after"] == 4 * (80 + 96 + 64 + 37)
    assert {r["layer"] for r in low["layers"]} == {"fc1", "fc2", "fc3", "fc4"}
    assert all(0 < r["rel_spectral"] < 1 for r in low["layers"])
    for name in ("qat.pt", "model.pt", "lowrank_float.pt"):
        _, meta, _ = zoo.load_checkpoint(out / name)
        assert meta["low_rank"] == low["ranks"]
    assert 0.74 <= info["sparsity"] <= 0.76  # then pruned as the jet design says
    assert json.loads((out / "config.json").read_text())["compress"]["low_rank"] == 4
