"""Tests for the HGCAL-like map generator (models/calo.py) and the ECON-T design (models/econt.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import dblquad

from edgeml.errors import ConfigError
from edgeml.export import export_qonnx
from edgeml.golden import GoldenModel
from edgeml.models import calo, econt, training, zoo
from edgeml.models.calo import CaloConfig

# ------------------------------------------------------------------- generator


@pytest.fixture(scope="module")
def maps() -> calo.CaloMaps:
    return calo.generate(600, seed=3)


def test_generator_shapes_dtypes_and_input_grid(maps: calo.CaloMaps) -> None:
    n = len(maps)
    assert maps.x.shape == (n, 1, 8, 8) and maps.x.dtype == np.float32
    assert maps.codes.shape == (n, 8, 8) and maps.codes.dtype == np.int64
    assert maps.codes.min() >= 0 and maps.codes.max() <= 255
    # x is exactly on the encoder's ap_ufixed<8,0> input grid
    np.testing.assert_array_equal(maps.x[:, 0] * 256, maps.codes)
    assert np.all(maps.total > 0)
    np.testing.assert_allclose(maps.total, maps.energy.sum(axis=(1, 2)), rtol=1e-5)
    # the codes are the normalised map rounded to 8 fractional bits
    frac = maps.energy / maps.total[:, None, None]
    assert np.abs(np.clip(frac, 0, 255 / 256) - maps.codes / 256).max() <= 0.5 / 256 + 1e-6
    assert set(np.unique(maps.n_showers)) == {1, 2, 3}
    assert set(np.unique(maps.kind)) == {-1, 0, 1}


def test_generator_deterministic_from_seed(maps: calo.CaloMaps) -> None:
    again = calo.generate(600, seed=3)
    for name in ("x", "energy", "clean", "shower_energy", "position", "kind"):
        np.testing.assert_array_equal(getattr(maps, name), getattr(again, name))
    other = calo.generate(600, seed=4)
    assert not np.array_equal(maps.codes, other.codes)


def test_cell_integrals_match_numerical_integration() -> None:
    r = 0.45
    frac = calo.cell_integrals(np.array(3.3), np.array(4.8), np.array(r), 8)

    def f(y: float, x: float) -> float:
        return r * r / (np.pi * (r * r + (x - 3.3) ** 2 + (y - 4.8) ** 2) ** 2)

    for i, j in [(4, 3), (4, 4), (0, 7), (5, 2)]:  # (row, column)
        num = dblquad(f, j, j + 1, i, i + 1, epsabs=1e-12)[0]
        assert frac[i, j] == pytest.approx(num, rel=1e-9, abs=1e-14)
    # normalised: on a 401 x 401 grid (half-width L = 200.5) the mass lies between the
    # masses inside the inscribed and circumscribed circles, r^2 / (r^2 + R^2)
    big = calo.cell_integrals(np.array(200.5), np.array(200.5), np.array(1.0), 401).sum()
    half = 200.5
    assert half**2 / (half**2 + 1) < big < 2 * half**2 / (2 * half**2 + 1)


def test_energy_conservation() -> None:
    # No noise or threshold on a large patch: deposits add up to the shower energies.
    cfg = CaloConfig(size=48, margin=20.0, noise_sigma=0.0, threshold=None, energy_range=(50, 50))
    m = calo.generate(200, seed=1, config=cfg)
    contained = m.expected.sum(axis=(1, 2)) / m.true_energy
    assert contained.min() > 0.985 and contained.max() <= 1 + 1e-6
    np.testing.assert_allclose(m.energy, m.clean)
    # sampling fluctuations are unbiased: sum(clean) - sum(expected) averages to 0
    diff = m.clean.sum(axis=(1, 2)) - m.expected.sum(axis=(1, 2))
    assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(len(diff))
    # and without fluctuations the deposits are the exact integrals
    exact = calo.generate(50, seed=1, config=CaloConfig(quantum_em=0, quantum_had=0))
    np.testing.assert_allclose(exact.clean, exact.expected, rtol=1e-6)
    # On the 8x8 patch: total == clean deposits + noise, within the noise of 64 cells.
    nz = calo.generate(2000, seed=2, config=CaloConfig(threshold=None))
    resid = nz.total - nz.clean.sum(axis=(1, 2))
    assert resid.std() == pytest.approx(8 * 0.3, rel=0.08)
    assert abs(resid.mean()) < 0.1


def test_noise_level_and_zero_suppression() -> None:
    m = calo.generate(2000, seed=5, config=CaloConfig(threshold=None))
    noise = (m.energy - m.clean).ravel()
    assert noise.std() == pytest.approx(0.3, rel=0.02)
    assert abs(noise.mean()) < 0.005
    zs = calo.generate(500, seed=5)
    kept = zs.energy[zs.energy != 0]
    assert kept.min() >= 1.35
    assert 0.05 < np.mean(zs.energy != 0) < 0.6  # sparse maps, as trigger cells are


def test_em_showers_narrower_than_hadronic() -> None:
    em = calo.generate(1500, seed=6, config=CaloConfig(n_showers=(1, 1), p_em=1.0))
    had = calo.generate(1500, seed=6, config=CaloConfig(n_showers=(1, 1), p_em=0.0))
    s_em = calo.second_moment(em.clean).mean()
    s_had = calo.second_moment(had.clean).mean()
    assert s_em < 0.6 * s_had, (s_em, s_had)
    # hadronic showers also fluctuate more in shape
    assert calo.second_moment(had.clean).std() > calo.second_moment(em.clean).std()
    assert np.all(em.kind[:, 0] == 0) and np.all(had.kind[:, 0] == 1)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="p_em"):
        CaloConfig(p_em=1.5)
    with pytest.raises(ConfigError, match="n_showers"):
        CaloConfig(n_showers=(0, 4))
    with pytest.raises(ConfigError, match="threshold"):
        CaloConfig(threshold=-1.0)
    with pytest.raises(ConfigError, match="non-negative integer"):
        calo.generate(-1)


# ------------------------------------------------------------------------- EMD


def _one(points: dict[tuple[int, int], float]) -> np.ndarray:
    m = np.zeros((1, 8, 8))
    for (i, j), v in points.items():
        m[0, i, j] = v
    return m


@pytest.mark.parametrize("backend", ["pot", "linprog"])
def test_emd_hand_cases(backend: str) -> None:
    if backend == "pot":
        pytest.importorskip("ot", reason="POT (pot==0.9.7.post1) not installed")

    def d(p: dict, q: dict) -> float:
        return float(econt.emd(_one(p), _one(q), backend=backend)[0])

    assert d({(3, 3): 1}, {(3, 4): 1}) == pytest.approx(1.0, abs=1e-12)  # one cell over
    assert d({(3, 3): 1}, {(4, 4): 1}) == pytest.approx(np.sqrt(2), abs=1e-12)
    assert d({(0, 0): 1}, {(7, 7): 1}) == pytest.approx(7 * np.sqrt(2), abs=1e-12)
    assert d({(2, 5): 1, (6, 1): 3}, {(2, 5): 1, (6, 1): 3}) == 0.0
    # half the mass moves one cell, half two cells
    assert d({(0, 0): 1}, {(0, 1): 0.5, (0, 2): 0.5}) == pytest.approx(1.5, abs=1e-12)
    # maps are normalised: only the shapes count
    assert d({(1, 1): 10}, {(1, 2): 0.1}) == pytest.approx(1.0, abs=1e-12)


def test_emd_symmetric_and_backends_agree() -> None:
    rng = np.random.default_rng(0)
    p = rng.random((20, 1, 8, 8)) * (rng.random((20, 1, 8, 8)) < 0.3)
    p[:, 0, 4, 4] += 0.1
    q = rng.random((20, 8, 8))
    a = econt.emd(p, q)  # POT when installed, else the linear program
    np.testing.assert_allclose(a, econt.emd(q, p), atol=1e-12)
    np.testing.assert_allclose(a, econt.emd(p, q, backend="linprog"), atol=1e-9)
    assert np.all(a > 0)
    with pytest.raises(ConfigError, match="zero total energy"):
        econt.emd(np.zeros((1, 8, 8)), q[:1])
    with pytest.raises(ConfigError, match="non-negative"):
        econt.emd(-q[:1], q[:1])
    with pytest.raises(ConfigError, match="backend"):
        econt.emd(q[:1], q[:1], backend="sinkhorn")


# ---------------------------------------------------------------------- design


def test_architecture_and_registry() -> None:
    spec = zoo.get("econt")
    assert spec.primary == "emd" and spec.higher_is_better is False
    assert spec.task == "autoencoder" and spec.input_shape == (1, 8, 8)
    f, q = spec.build_float(), spec.build_qat(6)
    assert econt.encoder_parameters(f) == 2144 == econt.encoder_parameters(q)  # 80 + 2,064
    assert spec.edge(q) is q.encoder
    assert set(spec.prunable(q)) == {"conv", "dense"}
    training.init_from_float(q, f)  # same parameter names and shapes
    out = f(torch.rand(5, 1, 8, 8))
    assert out.shape == (5, 1, 8, 8)
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), torch.ones(5))
    with pytest.raises(ConfigError, match="bit_width"):
        spec.build_qat(9)


@pytest.fixture(scope="module")
def trained() -> dict:
    """A short float + QAT + pruning run on a small generated set (enough to test, not to publish)."""
    data = calo.generate(4000, seed=11)
    test = calo.generate(300, seed=12)
    spec = zoo.get("econt")
    d = training.Dataset(data.x, data.total, test.x, test.total)
    f = zoo.train_float(spec, d, epochs=12, seed=0)
    q = zoo.train_qat(spec, d, f, bit_width=6, epochs=1, seed=0)
    p = zoo.prune(spec, d, q, 0.5, epochs=1, seed=0)
    return {"data": d, "test": test, "float": f, "qat": q, "pruned": p, "spec": spec}


def test_short_training_reaches_emd_ceiling(trained: dict) -> None:
    spec, d, f = trained["spec"], trained["data"], trained["float"]
    got = zoo.evaluate(spec, f, d.x_test, d.x_test)
    uniform = econt.emd(d.x_test, np.ones_like(d.x_test)).mean()
    # 12 epochs on 4,000 maps: EMD about 0.67 cell pitch; the uniform map costs about 2.9
    assert got["emd"] < 0.9, got
    assert got["emd"] < 0.35 * uniform
    assert got["emd_median"] <= got["emd"] <= got["emd_p90"]
    sparsity = zoo.edge_sparsity(spec, trained["pruned"])
    assert 0.5 <= sparsity < 0.6


@pytest.mark.parametrize("which", ["qat", "pruned"])
def test_golden_equals_brevitas_encoder(trained: dict, which: str, tmp_path) -> None:
    model = trained[which]
    enc = econt.edge(model)
    g = GoldenModel.from_onnx(export_qonnx(enc, (1, *econt.INPUT_SHAPE), tmp_path / "enc.onnx"))
    assert g.input_type.hls() == "ap_ufixed<8,0>"
    assert not g.output_type.signed and g.output_type.width == econt.LATENT_BITS
    scale = float(np.asarray(g.output_scale).reshape(-1)[0])
    rng = np.random.default_rng(7)
    x_rand = rng.integers(0, 256, size=(10_000, *g.input_shape)).astype(np.int64)
    x_maps = g.quantize_input(trained["test"].x)
    for xc in (x_rand, x_maps):
        ref = g.predict(xc)
        y = training.predict(enc, xc.astype(np.float64) * g.input_real_scale) / scale
        q = np.rint(y)
        assert np.count_nonzero(q != y) == 0  # torch outputs lie on the latent grid
        assert np.count_nonzero(q.astype(np.int64).reshape(ref.shape) != ref) == 0
        assert ref.max() > 0
    # the host decoder on the golden latents gives the full model's EMD exactly
    latent = g.predict(x_maps).reshape(len(x_maps), -1) * scale
    spec, d = trained["spec"], trained["data"]
    via_chip = spec.edge_metrics(latent, model, d.x_test, d.y_test)
    direct = zoo.evaluate(spec, model, d.x_test, d.x_test)
    assert via_chip["emd"] == pytest.approx(direct["emd"], abs=1e-9)
