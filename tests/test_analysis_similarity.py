"""CKA, layer activations, disagreement and ensemble gain (models/analysis/similarity)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

from edgeml.errors import ConfigError
from edgeml.models.analysis import similarity as S


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _orthogonal(p: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(_rng(seed).standard_normal((p, p)))
    return q * np.sign(np.diag(r))


# ------------------------------------------------------------------ references


def _hsic_ref(k: np.ndarray, lmat: np.ndarray) -> float:
    """Biased HSIC, tr(K H L H), with the explicit centring matrix H."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ lmat @ h))


def _hsic_unbiased_ref(k: np.ndarray, lmat: np.ndarray) -> float:
    """Song et al. (2012) unbiased HSIC written out with explicit loops."""
    n = k.shape[0]
    kt, lt = k.copy(), lmat.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    term1 = sum(kt[i, j] * lt[j, i] for i in range(n) for j in range(n))
    term2 = kt.sum() * lt.sum() / ((n - 1) * (n - 2))
    term3 = sum(kt[i, :].sum() * lt[:, i].sum() for i in range(n)) * 2 / (n - 2)
    return (term1 + term2 - term3) / (n * (n - 3))


def _rbf_ref(x: np.ndarray, frac: float) -> np.ndarray:
    """Gaussian Gram matrix from explicit pairwise loops (Kornblith et al.'s bandwidth)."""
    n = x.shape[0]
    d2 = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])
    sigma2 = frac**2 * np.median(d2)
    return np.exp(-d2 / (2 * sigma2))


def _cka_ref(k: np.ndarray, lmat: np.ndarray, hsic=_hsic_ref) -> float:
    return hsic(k, lmat) / np.sqrt(hsic(k, k) * hsic(lmat, lmat))


# ------------------------------------------------------------------ CKA properties


def test_linear_cka_identity_orthogonal_and_scale_invariance() -> None:
    x = _rng(1).standard_normal((300, 12))
    assert S.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    y = np.tanh(x @ _rng(2).standard_normal((12, 7)))
    base = S.linear_cka(x, y)
    assert 0.2 < base < 0.99
    q = _orthogonal(12, 3)
    assert S.linear_cka(x @ q, y) == pytest.approx(base, abs=1e-12)
    assert S.linear_cka(x * 3.7e4, y * 2.0e-6) == pytest.approx(base, abs=1e-12)
    assert S.linear_cka(x + 5.0, y) == pytest.approx(base, abs=1e-12)  # centring
    assert S.linear_cka(y, x) == pytest.approx(base, abs=1e-12)  # symmetric
    # an anisotropic rescaling is not an invariance of CKA
    assert abs(S.linear_cka(x * np.arange(1, 13), y) - base) > 1e-3


def test_linear_cka_matches_gram_reference_and_unbiased_variant() -> None:
    x = _rng(4).standard_normal((40, 6))
    y = x[:, :3] ** 2 + 0.5 * _rng(5).standard_normal((40, 3))
    assert S.linear_cka(x, y) == pytest.approx(_cka_ref(x @ x.T, y @ y.T), abs=1e-12)
    ref_u = _cka_ref(x @ x.T, y @ y.T, _hsic_unbiased_ref)
    assert S.linear_cka(x, y, unbiased=True) == pytest.approx(ref_u, abs=1e-12)
    assert S.linear_cka(x, x, unbiased=True) == pytest.approx(1.0, abs=1e-12)


def test_cka_of_independent_features_is_small() -> None:
    x = _rng(6).standard_normal((4000, 8))
    y = _rng(7).standard_normal((4000, 8))
    assert S.linear_cka(x, y) < 0.01
    # the unbiased estimator removes the O(p q / n) bias: close to 0 on either side
    assert abs(S.linear_cka(x[:600], y[:600], unbiased=True)) < 0.01
    # biased RBF CKA keeps a visible small-sample bias (0.076 here); the unbiased one does not
    assert S.rbf_cka(x[:600], y[:600]) < 0.1
    assert abs(S.rbf_cka(x[:600], y[:600], unbiased=True)) < 0.01


def test_rbf_cka_matches_direct_quadratic_reference() -> None:
    x = _rng(8).standard_normal((50, 5))
    y = np.sin(x @ _rng(9).standard_normal((5, 4)))
    for frac in (0.2, 0.5, 1.0):
        kx, ky = _rbf_ref(x, frac), _rbf_ref(y, frac)
        assert S.rbf_cka(x, y, sigma_frac=frac) == pytest.approx(_cka_ref(kx, ky), abs=1e-12)
        ref_u = _cka_ref(kx, ky, _hsic_unbiased_ref)
        got_u = S.rbf_cka(x, y, sigma_frac=frac, unbiased=True)
        assert got_u == pytest.approx(ref_u, abs=1e-12)
    assert S.rbf_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    # RBF CKA (median bandwidth) is invariant to orthogonal maps and isotropic scaling
    q = _orthogonal(5, 10)
    assert S.rbf_cka(x @ q * 9.0, y) == pytest.approx(S.rbf_cka(x, y), abs=1e-12)


def test_cka_constant_representation_is_nan_and_errors_name_arrays() -> None:
    x = _rng(11).standard_normal((20, 3))
    assert np.isnan(S.linear_cka(x, np.ones((20, 4))))
    assert np.isnan(S.rbf_cka(x, np.ones((20, 4))))
    with pytest.raises(ConfigError, match=r"X and Y must hold the same samples: X has 20 rows"):
        S.linear_cka(x, x[:19])
    with pytest.raises(ConfigError, match=r"Y has 19"):
        S.rbf_cka(x, x[:19])
    with pytest.raises(ConfigError, match="NaN/Inf"):
        S.linear_cka(x, np.full((20, 2), np.inf))
    with pytest.raises(ConfigError, match="at least 4 samples"):
        S.linear_cka(x[:3], x[:3], unbiased=True)
    with pytest.raises(ConfigError, match="sigma_frac"):
        S.rbf_cka(x, x, sigma_frac=0.0)


# ------------------------------------------------------------------ activations


class _CallOrder(nn.Module):
    """Registers ``late`` before ``early`` but calls ``early`` first, with a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Linear(8, 3)
        self.early = nn.Conv1d(1, 2, kernel_size=3)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.early(x.unsqueeze(1)))  # (n, 2, 4)
        return self.late(h.flatten(1))


def test_layer_activations_exact_values_forward_order_and_batching() -> None:
    torch.manual_seed(0)
    model = _CallOrder()
    model.train()
    x = _rng(12).standard_normal((37, 6))
    acts = S.layer_activations(model, x, batch_size=5)
    assert list(acts) == ["early", "late"]  # forward order, not registration order
    assert model.training  # mode restored
    # reference in the same batches (BLAS results depend on the batch shape)
    chunks = torch.as_tensor(x, dtype=torch.float32).split(5)
    with torch.no_grad():
        early = torch.cat([model.early(c.unsqueeze(1)) for c in chunks])
        late = torch.cat([model(c) for c in chunks])
    assert acts["early"].shape == (37, 8) and acts["late"].shape == (37, 3)
    assert np.array_equal(acts["early"], early.flatten(1).double().numpy())
    assert np.array_equal(acts["late"], late.double().numpy())
    only = S.layer_activations(model, x, layers=["late"], batch_size=5)
    assert list(only) == ["late"] and np.array_equal(only["late"], acts["late"])
    with pytest.raises(ConfigError, match=r"\['nope'\] are not modules.*\['late', 'early'\]"):
        S.layer_activations(model, x, layers=["nope"])
    with pytest.raises(ConfigError, match="batch_size"):
        S.layer_activations(model, x, batch_size=0)


def test_cka_matrix_of_a_model_with_itself_and_plot() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    x = _rng(13).standard_normal((200, 5))
    res = S.cka_matrix(model, model, x)
    assert res["names_a"] == res["names_b"] == ["0", "2", "4"]
    mat = np.array(res["matrix"])
    assert np.allclose(np.diag(mat), 1.0, atol=1e-12)
    assert np.allclose(mat, mat.T, atol=1e-12)
    acts = S.layer_activations(model, x)
    assert mat[0, 2] == pytest.approx(S.linear_cka(acts["0"], acts["4"]), abs=1e-15)
    assert list(res["diagonal"]) == ["0", "2", "4"]
    assert res["diagonal"]["2"] == res["matrix"][1][1]
    assert S.cka_diagonal(model, model, x) == pytest.approx(res["diagonal"], abs=1e-12)
    json.dumps(res, allow_nan=False)
    rbf = S.cka_matrix(model, model, x, kind="rbf")
    assert np.allclose(np.diag(np.array(rbf["matrix"])), 1.0, atol=1e-12)
    from matplotlib.figure import Figure

    fig = S.plot_cka(res)
    assert isinstance(fig, Figure)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("1.00") >= 3 and len(texts) == 9
    with pytest.raises(ConfigError, match=r"kind must be one of \['linear', 'rbf'\]"):
        S.cka_matrix(model, model, x, kind="cosine")


def test_float_and_qat_jet_layers_line_up() -> None:
    """The zoo's float jet tagger and its Brevitas QAT twin (QuantLinear, QuantTensor
    outputs): same layer names, and QAT at 6 bits stays close to the float model."""
    from edgeml.models import zoo

    spec = zoo.get("jet")
    data = spec.load_data(0)
    fm = zoo.train_float(spec, data, epochs=1, seed=0)
    qm = zoo.train_qat(spec, data, fm, 6, 1, 0)
    x = data.x_test[:1500]
    names = ["fc1", "fc2", "fc3", "fc4"]
    assert list(S.layer_activations(fm, x)) == names
    assert list(S.layer_activations(qm, x)) == names
    diag = S.cka_diagonal(fm, qm, x)
    assert list(diag) == names
    assert all(0.8 < v <= 1.0 + 1e-12 for v in diag.values())
    full = S.cka_matrix(fm, qm, x)
    assert [full["matrix"][i][i] for i in range(4)] == list(diag.values())
    assert full["diagonal"] == diag
    # an untrained twin is further from the trained float model than the QAT one
    fresh = S.cka_diagonal(fm, spec.build_qat(6), x)
    assert fresh["fc4"] < diag["fc4"]
    with pytest.raises(ConfigError, match="no weight layer name is shared"):
        S.cka_diagonal(fm, nn.Sequential(nn.Linear(16, 5)), x)


# ------------------------------------------------------------------ disagreement, ensembles


def test_disagreement_and_ensemble_gain_exact() -> None:
    y = np.array([0, 1, 2, 0])
    # one-hot-ish logits: predictions a=[0,1,2,1], b=[0,2,2,0], c=[1,1,2,0]
    a = np.array([[2.0, 0, 0], [0, 2, 0], [0, 0, 2], [0, 2, 0]])
    b = np.array([[2.0, 0, 0], [0, 0, 2], [0, 0, 2], [2, 0, 0]])
    c = np.array([[0.0, 2, 0], [0, 2, 0], [0, 0, 2], [2, 0, 0]])
    assert S.disagreement(a, b) == 0.5
    assert S.disagreement(a, c) == 0.5
    assert S.disagreement(b, c) == 0.5
    assert S.disagreement(a, a) == 0.0
    res = S.ensemble_gain([a, b, c], y)
    assert res["member_accuracy"] == [0.75, 0.75, 0.75]
    assert res["mean_member_accuracy"] == 0.75
    # mean softmax: majority vote wins on every sample -> [0, 1, 2, 0], all correct
    assert res["ensemble_accuracy"] == 1.0
    assert res["gain"] == 0.25
    assert res["mean_pairwise_disagreement"] == 0.5
    assert res["n_members"] == 3
    one_hot = np.eye(3)[y]
    assert S.ensemble_gain([a, b, c], one_hot) == res
    # a confident wrong member can outvote two hesitant right ones
    right = np.array([[0.1, 0.0], [0.0, 0.1]])
    wrong = np.array([[0.0, 9.0], [9.0, 0.0]])
    r2 = S.ensemble_gain([right, right, wrong], np.array([0, 1]))
    assert r2["ensemble_accuracy"] == 0.0
    assert r2["gain"] == pytest.approx(-2 / 3, abs=1e-15)
    for pair in itertools.combinations([a, b, c], 2):
        assert S.disagreement(*pair) == 0.5
    json.dumps(res, allow_nan=False)


def test_disagreement_and_ensemble_errors() -> None:
    a = np.zeros((4, 3))
    with pytest.raises(ConfigError, match=r"out_a and out_b must have the same shape"):
        S.disagreement(a, np.zeros((5, 3)))
    with pytest.raises(ConfigError, match=r"member_outputs\[1\] has shape \(5, 3\)"):
        S.ensemble_gain([a, np.zeros((5, 3))], np.zeros(4, dtype=int))
    with pytest.raises(ConfigError, match=r"y must be \(n,\) labels.*n = 4"):
        S.ensemble_gain([a], np.zeros(3, dtype=int))
    with pytest.raises(ConfigError, match="at least one member"):
        S.ensemble_gain([], np.zeros(3, dtype=int))


def test_a_low_rank_layer_counts_as_the_layer_it_replaces() -> None:
    """``compress --low-rank`` models line up layer by layer with their float model."""
    from edgeml.lowrank import factorize

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5)
    )
    low, _ = factorize(model, 4, seed=0)
    assert S.weight_layer_names(model) == S.weight_layer_names(low) == ["0", "2", "4"]
    assert any(n.endswith(".first") for n, _ in low.named_modules())
    x = torch.randn(200, 16).numpy()
    diag = S.cka_diagonal(model, low, x)
    assert set(diag) == {"0", "2", "4"}
    # the factorised layer's output is the whole factorised product, not its first factor
    acts = S.layer_activations(low, x)
    assert acts["2"].shape == (200, 32)
