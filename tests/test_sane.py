"""SANE study: weight tokens, the autoencoder, the zoo cache, probes, sampling, golden == Brevitas."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from edgeml.errors import ConfigError
from edgeml.export import export_qonnx
from edgeml.golden import GoldenModel
from edgeml.models import sane, training, zoo


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private edgeml cache for this module (the zoo and autoencoder land here)."""
    root = tmp_path_factory.mktemp("sane-cache")
    old = os.environ.get("EDGEML_CACHE")
    os.environ["EDGEML_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("EDGEML_CACHE", None)
    else:
        os.environ["EDGEML_CACHE"] = old


@pytest.fixture(scope="module")
def quick(cache) -> dict:
    z = sane.train_zoo(sane.QUICK_ZOO)
    ae = sane.train_autoencoder(z, sane.QUICK_AE)
    return {"zoo": z, "ae": ae, "data": sane.load_data(0)}


# ------------------------------------------------------------------ tokenisation


def test_tokenize_detokenize_round_trip_is_exact() -> None:
    layout = sane.token_layout()
    # fc1: 16 neurons x ceil(65 / 24) = 3 tokens; fc2: 10 neurons x 1 token (17 values)
    assert layout.n_tokens == 16 * 3 + 10
    assert int(layout.mask.sum()) == sane.N_WEIGHTS == 64 * 16 + 16 + 16 * 10 + 10
    # every parameter appears exactly once
    assert sorted(layout.index[layout.mask].tolist()) == list(range(sane.N_WEIGHTS))
    rng = np.random.default_rng(0)
    flat = rng.standard_normal((7, sane.N_WEIGHTS)).astype(np.float32)
    tok = sane.tokenize(flat, layout)
    assert tok.shape == (7, 58, sane.TOKEN_SIZE)
    assert np.all(tok[:, ~layout.mask] == 0)
    assert np.array_equal(sane.detokenize(tok, layout), flat)
    # neuron 0 of fc1: its 64 weights then its bias, in three tokens
    m = sane.member_from_flat(flat[0])
    row = np.concatenate([m.fc1.weight[0].detach().numpy(), m.fc1.bias[:1].detach().numpy()])
    assert np.array_equal(tok[0, :3][layout.mask[:3]], row)
    assert layout.pos[:4].tolist() == [[0, 0, 0], [1, 0, 1], [2, 0, 2], [3, 0, 3]]
    assert layout.pos[48].tolist() == [48, 1, 0]
    # other token sizes are exact too
    for size in (1, 7, 65, 100):
        lay = sane.token_layout(size)
        assert np.array_equal(sane.detokenize(sane.tokenize(flat, lay), lay), flat)
    with pytest.raises(ConfigError, match="token_size"):
        sane.token_layout(0)
    with pytest.raises(ConfigError, match="shape"):
        sane.tokenize(flat[:, :10], layout)


def test_flat_parameters_and_permutation_keep_the_function() -> None:
    torch.manual_seed(0)
    m = sane.FloatNet()
    flat = sane.flatten_params(m)
    assert np.array_equal(sane.flatten_params(sane.member_from_flat(flat)), flat)
    perm = np.random.default_rng(1).permutation(sane.HIDDEN)
    p = sane.permute_hidden(flat, perm)
    assert not np.array_equal(p, flat)
    x = torch.rand(50, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(m(x), sane.member_from_flat(p)(x), atol=1e-5)
    assert np.array_equal(sane.permute_hidden(p, np.argsort(perm)), flat)
    with pytest.raises(ConfigError, match="permutation"):
        sane.permute_hidden(flat, np.zeros(sane.HIDDEN, int))
    with pytest.raises(ConfigError, match="shape"):
        sane.load_params(m, flat[:-1])
    norm = sane.Normalizer.fit(np.stack([flat, p, 2 * flat]))
    assert np.allclose(norm.inverse(norm(flat)), flat, atol=1e-6)


def test_nt_xent_prefers_matching_views() -> None:
    a = torch.eye(4)
    assert float(sane.nt_xent(a[:1], a[:1])) == pytest.approx(0.0, abs=1e-6)
    good = float(sane.nt_xent(a, a))
    bad = float(sane.nt_xent(a, a.roll(1, dims=0)))
    assert good < 0.01 < 5.0 < bad


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"ZooConfig\.runs"):
        sane.ZooConfig(runs=1)
    with pytest.raises(ConfigError, match=r"ZooConfig\.checkpoints"):
        sane.ZooConfig(checkpoints=(3, 1))
    with pytest.raises(ConfigError, match=r"AEConfig\.gamma"):
        sane.AEConfig(gamma=1.5)
    with pytest.raises(ConfigError, match="anchor_fraction"):
        sane.sample_models(None, None, 1, anchor_fraction=0.0)  # type: ignore[arg-type]


# -------------------------------------------------------------- zoo and cache


def test_zoo_is_diverse_and_cached(quick: dict, cache) -> None:
    z = quick["zoo"]
    assert len(z) == 6 * 3 and z.flat.shape == (18, sane.N_WEIGHTS)
    assert set(z.epoch.tolist()) == {1, 4, 12}
    assert z.test_acc.min() < 0.5 < 0.85 < z.test_acc.max()  # chance-level to trained
    # within a run, accuracy grows with the checkpoint epoch (on average over runs)
    by_epoch = [z.test_acc[z.epoch == e].mean() for e in (1, 4, 12)]
    assert by_epoch[0] < by_epoch[1] < by_epoch[2]
    files = sorted(p.name for p in (cache / "sane").glob("zoo-*.npz"))
    assert files == [f"zoo-{sane.QUICK_ZOO.key()}.npz"]
    again = sane.train_zoo(sane.QUICK_ZOO)
    assert again.trained is False
    assert np.array_equal(again.flat, z.flat) and np.array_equal(again.test_acc, z.test_acc)
    ae2 = sane.train_autoencoder(z, sane.QUICK_AE)
    assert ae2.trained is False
    for k, v in quick["ae"].model.state_dict().items():
        assert torch.equal(v, ae2.model.state_dict()[k])
    # probe folds hold out whole runs and cover every member once
    folds = sane.run_folds(z)
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(len(z)))
    for tr, te in folds:
        assert not set(z.run[tr]) & set(z.run[te])
    with pytest.raises(ConfigError, match="folds"):
        sane.run_folds(z, 1)
    # a different setting is a different cache entry
    assert sane.ZooConfig(runs=7).key() != sane.QUICK_ZOO.key()
    assert not list((cache / "sane").glob("*.tmp.npz"))  # atomic writes leave no partials


def test_autoencoder_learns_to_reconstruct(quick: dict) -> None:
    z, ae = quick["zoo"], quick["ae"]
    loss = np.asarray(ae.history["loss"])
    assert loss[-10:].mean() < 0.3 * loss[:10].mean()
    fresh = sane.TrainedAE(sane.SaneAE(ae.layout), ae.layout, ae.norm)
    assert ae.reconstruction_error(z.flat) < 0.3 * fresh.reconstruction_error(z.flat)
    emb = ae.embed(z.flat)
    assert emb.shape == (len(z), ae.layout.n_tokens, sane.D_LATENT)
    assert sane.pooled_embeddings(ae, z.flat).shape == (len(z), 4 * sane.D_LATENT)
    assert sane.pooled_embeddings(ae, z.flat, std=False).shape == (len(z), 2 * sane.D_LATENT)
    # training is a function of the config alone, whatever the global RNG state was
    tiny = sane.AEConfig(steps=3)
    runs = []
    for junk in (1, 2):
        torch.manual_seed(junk)
        np.random.seed(junk)
        runs.append(sane.train_autoencoder(z, tiny, cache=False).model.state_dict())
    assert all(torch.equal(v, runs[1][k]) for k, v in runs[0].items())


def test_member_mean_sdc_is_a_rate(quick: dict) -> None:
    z, d = quick["zoo"], quick["data"]
    best = int(np.argmax(z.test_acc))
    sdc, q_acc = sane.member_mean_sdc(z.flat[best], 6, d, 100)
    assert 0.0 < sdc < 0.2
    assert q_acc > 0.75  # the 6-bit calibrated twin keeps most of the accuracy


# -------------------------------------------------------------------- finding


def test_finding_quick_reproduces_the_direction(quick: dict) -> None:
    res = sane.finding(quick=True)
    assert res["zoo_members"] == 18
    assert res["zoo_sdc_max"] > res["zoo_sdc_min"] > 0
    # embeddings predict held-out runs' accuracy (3-fold over runs), unlike a shuffled-label probe
    assert res["probe/acc/sane/r2"] > 0.2
    assert res["probe/acc/sane/r2"] > res["probe/acc/shuffled/r2"] + 0.3
    assert res["probe/acc/sane/spearman"] > 0.6
    # one epoch from a SANE sample beats one epoch from random init
    assert res["sample/ft1"] > res["random/ft1"]


# ----------------------------------------------------------------- the design


def test_sampled_model_edge_form_golden_equals_brevitas(quick: dict, tmp_path) -> None:
    z, ae, d = quick["zoo"], quick["ae"], quick["data"]
    flat = sane.sample_models(ae, z, 1, seed=3)[0]
    m = sane.member_from_flat(flat)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "fc1.weight": (16, 64),
        "fc1.bias": (16,),
        "fc2.weight": (10, 16),
        "fc2.bias": (10,),
    }
    assert np.all(np.isfinite(flat))
    q = sane.quantize_member(flat, 6, d.x_train)
    path = export_qonnx(q, (1, *sane.INPUT_SHAPE), tmp_path / "sane.onnx")
    g = GoldenModel.from_onnx(path)
    assert g.input_type.hls() == "ap_ufixed<8,1>"
    scale = float(np.asarray(g.output_scale).reshape(-1)[0])
    rng = np.random.default_rng(5)
    x_rand = rng.integers(0, 256, size=(5000, *g.input_shape)).astype(np.int64)
    for xc in (x_rand, g.quantize_input(d.x_test)):
        ref = g.predict(xc)
        y = training.predict(q, xc.astype(np.float64) * g.input_real_scale) / scale
        assert np.count_nonzero(np.rint(y) != y) == 0
        got = np.rint(y).astype(np.int64).reshape(ref.shape)
        assert np.count_nonzero(got != ref) == 0
        assert np.abs(ref).max() > 0


def test_design_fit_float_samples_from_sane(quick: dict, monkeypatch) -> None:
    monkeypatch.setattr(sane, "FLOW_ZOO", sane.QUICK_ZOO)
    monkeypatch.setattr(sane, "FLOW_AE", sane.QUICK_AE)
    spec = zoo.get("sane")
    assert spec.fit_float is sane.fit_float and spec.task == "classification"
    d = quick["data"]
    model = zoo.train_float(spec, d, 1, seed=0)
    assert isinstance(model, sane.FloatNet)
    assert zoo.evaluate(spec, model, d.x_test, d.y_test)["accuracy"] > 0.8
    q = zoo.train_qat(spec, d, model, 6, 2, seed=0)
    assert zoo.evaluate(spec, q, d.x_test, d.y_test)["accuracy"] > 0.75
    with pytest.raises(ConfigError, match="epochs"):
        sane.fit_float(d, -1)
