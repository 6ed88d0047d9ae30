"""Representation similarity (CKA) between layers and models, and ensemble diversity.

CKA follows Kornblith et al., "Similarity of Neural Network Representations
Revisited" (ICML 2019): ``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``
on centred Gram matrices. Linear CKA uses the feature-space identity
``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` (no n x n matrix); the RBF
kernel width is ``sigma_frac`` times the square root of the median squared
pairwise distance, as in the paper's code. ``unbiased=True`` uses the unbiased
HSIC estimator (Song et al. 2012, as in Nguyen et al. 2021), which needs n >= 4.
All arithmetic is float64. A constant representation has no variance and CKA
with it is undefined: it returns NaN.

Activations come from forward hooks on every weight layer (``nn.Linear``,
``nn.Conv1d/2d/3d`` and Brevitas' ``QuantLinear``/``QuantConv*``, which subclass
them), keyed by module name, so a float model and its QAT twin built with the
same attribute names line up layer for layer.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeml.errors import ConfigError

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
KINDS = ("linear", "rbf")


# ------------------------------------------------------------------ CKA


def _features(x: Any, name: str) -> np.ndarray:
    """``x`` as a float64 (n, features) matrix; >2-D inputs are flattened per sample."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim < 1 or a.shape[0] == 0:
        raise ConfigError(f"{name} must have at least one sample, got shape {a.shape}")
    a = a.reshape(a.shape[0], -1)
    if not np.all(np.isfinite(a)):
        raise ConfigError(f"{name} holds {int(np.sum(~np.isfinite(a)))} NaN/Inf values")
    return a


def _pair(x: Any, y: Any, names: tuple[str, str] = ("X", "Y")) -> tuple[np.ndarray, np.ndarray]:
    a, b = _features(x, names[0]), _features(y, names[1])
    if a.shape[0] != b.shape[0]:
        raise ConfigError(
            f"{names[0]} and {names[1]} must hold the same samples: {names[0]} has "
            f"{a.shape[0]} rows (shape {a.shape}), {names[1]} has {b.shape[0]} (shape {b.shape})"
        )
    return a, b


def _hsic_unbiased(k: np.ndarray, lmat: np.ndarray) -> float:
    """Unbiased HSIC estimator (Song et al. 2012) of two Gram matrices (up to a factor)."""
    n = k.shape[0]
    if n < 4:
        raise ConfigError(f"unbiased HSIC needs at least 4 samples, got {n}")
    k = k.copy()
    lmat = lmat.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(lmat, 0.0)
    ks, ls = k.sum(0), lmat.sum(0)
    t = np.sum(k * lmat) + ks.sum() * ls.sum() / ((n - 1) * (n - 2)) - 2.0 * ks @ ls / (n - 2)
    return float(t / (n * (n - 3)))


def _center_gram(k: np.ndarray) -> np.ndarray:
    mean_r = k.mean(0, keepdims=True)
    return k - mean_r - mean_r.T + k.mean()


def _cka_from_grams(k: np.ndarray, lmat: np.ndarray, unbiased: bool) -> float:
    if unbiased:
        kl, kk, ll = _hsic_unbiased(k, lmat), _hsic_unbiased(k, k), _hsic_unbiased(lmat, lmat)
    else:
        kc, lc = _center_gram(k), _center_gram(lmat)
        kl, kk, ll = float(np.sum(kc * lc)), float(np.sum(kc * kc)), float(np.sum(lc * lc))
    den = np.sqrt(kk * ll) if kk > 0 and ll > 0 else 0.0
    if den <= 0 or not np.isfinite(den):
        return float("nan")
    return float(kl / den)


def linear_cka(X: Any, Y: Any, *, unbiased: bool = False) -> float:
    """Linear CKA of features ``X`` (n, p) and ``Y`` (n, q); 1 for identical representations.

    Invariant to orthogonal transforms and isotropic scaling of either input.
    """
    a, b = _pair(X, Y)
    if unbiased:
        return _cka_from_grams(a @ a.T, b @ b.T, unbiased=True)
    a = a - a.mean(0)
    b = b - b.mean(0)
    # scale to unit Frobenius norm first: keeps the products in range for any input scale
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return float("nan")
    a, b = a / na, b / nb
    xy = np.linalg.norm(b.T @ a) ** 2
    xx = np.linalg.norm(a.T @ a)
    yy = np.linalg.norm(b.T @ b)
    return float(xy / (xx * yy))


def _rbf_gram(a: np.ndarray, sigma_frac: float) -> np.ndarray:
    sq = np.sum(a * a, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (a @ a.T), 0.0)
    med = float(np.median(d2))
    if med == 0:
        return np.ones_like(d2)  # (nearly) all points equal: a constant kernel
    return np.exp(-d2 / (2.0 * sigma_frac**2 * med))


def rbf_cka(X: Any, Y: Any, *, sigma_frac: float = 0.5, unbiased: bool = False) -> float:
    """RBF-kernel CKA; bandwidth = ``sigma_frac`` * sqrt(median squared distance). O(n^2)."""
    if not np.isfinite(sigma_frac) or sigma_frac <= 0:
        raise ConfigError(f"sigma_frac must be a finite number > 0, got {sigma_frac!r}")
    a, b = _pair(X, Y)
    return _cka_from_grams(_rbf_gram(a, sigma_frac), _rbf_gram(b, sigma_frac), unbiased)


# ------------------------------------------------------------------ activations


def _as_tensor(out: Any) -> torch.Tensor:
    """A module output as a plain tensor (Brevitas QuantTensor -> its ``.value``)."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if hasattr(out, "value") and isinstance(out.value, torch.Tensor):
        out = out.value
    return out


def weight_layer_names(model: nn.Module) -> list[str]:
    """Names of the model's weight layers (Linear/Conv, Brevitas ones included).

    A layer factorised by ``edgeml compress --low-rank`` (an :class:`edgeml.lowrank.LowRank`)
    counts as the one layer it replaces, under the same name, so a factorised model's
    layers line up with its unfactorised float model's.
    """
    from edgeml.lowrank import LowRank

    names: list[str] = []
    for n, mod in model.named_modules():
        if not n or any(n.startswith(f"{done}.") for done in names):
            continue
        if isinstance(mod, (LowRank, *WEIGHT_LAYERS)):
            names.append(n)
    return names


def layer_activations(
    model: nn.Module,
    x: Any,
    *,
    layers: list[str] | None = None,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Output of each weight layer on ``x``, flattened per sample, in forward order.

    ``layers`` picks module names (default: every Linear/Conv layer). The model
    runs on ``device`` in eval mode without gradients; its mode and device are
    restored afterwards.
    Returns ``{name: float64 array (n_samples, features)}``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    available = weight_layer_names(model)
    modules = dict(model.named_modules())
    if layers is None:
        names = available
    else:
        unknown = [n for n in layers if n not in modules]
        if unknown:
            raise ConfigError(
                f"layers {unknown} are not modules of {type(model).__name__}; "
                f"its weight layers are {available}"
            )
        names = list(layers)
    if not names:
        raise ConfigError(f"{type(model).__name__} has no Linear/Conv layer to read activations")
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if xt.ndim == 0 or xt.shape[0] == 0:
        raise ConfigError(f"x must hold at least one sample, got shape {tuple(xt.shape)}")
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    order: list[str] = []

    def hook_for(name: str):
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if name not in order:
                order.append(name)
            t = _as_tensor(out).detach().to("cpu", torch.float64)
            chunks[name].append(t.reshape(t.shape[0], -1).numpy())

        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    was_training = model.training
    home = next((p.device for p in model.parameters()), None)
    model.to(device)
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, xt.shape[0], batch_size):
                model(xt[s : s + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        if home is not None:
            model.to(home)
    missing = [n for n in names if n not in order]
    if missing:
        raise ConfigError(f"layers {missing} were not called in the forward pass")
    return {n: np.concatenate(chunks[n], axis=0) for n in order}


def _cka_fn(kind: str, unbiased: bool, sigma_frac: float):
    if kind == "linear":
        return lambda a, b: linear_cka(a, b, unbiased=unbiased)
    if kind == "rbf":
        return lambda a, b: rbf_cka(a, b, sigma_frac=sigma_frac, unbiased=unbiased)
    raise ConfigError(f"kind must be one of {list(KINDS)}, got {kind!r}")


def cka_matrix(
    model_a: nn.Module,
    model_b: nn.Module,
    x: Any,
    *,
    kind: str = "linear",
    layers_a: list[str] | None = None,
    layers_b: list[str] | None = None,
    unbiased: bool = False,
    sigma_frac: float = 0.5,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """CKA of every weight layer of ``model_a`` against every one of ``model_b`` on ``x``.

    Returns ``{"kind", "names_a", "names_b", "matrix", "diagonal"}``: ``matrix[i][j]``
    = CKA(layer ``names_a[i]``, layer ``names_b[j]``) as nested lists, and
    ``diagonal`` = ``{name: CKA}`` for the layer names present in both models
    (``model_a``'s forward order). NaN where a layer's output is constant.
    """
    fn = _cka_fn(kind, unbiased, sigma_frac)
    acts_a = layer_activations(model_a, x, layers=layers_a, batch_size=batch_size, device=device)
    acts_b = layer_activations(model_b, x, layers=layers_b, batch_size=batch_size, device=device)
    mat = [[fn(acts_a[na], acts_b[nb]) for nb in acts_b] for na in acts_a]
    names_a, names_b = list(acts_a), list(acts_b)
    diag = {n: mat[i][names_b.index(n)] for i, n in enumerate(names_a) if n in acts_b}
    return {"kind": kind, "names_a": names_a, "names_b": names_b, "matrix": mat, "diagonal": diag}


def cka_diagonal(
    model_a: nn.Module,
    model_b: nn.Module,
    x: Any,
    *,
    kind: str = "linear",
    unbiased: bool = False,
    sigma_frac: float = 0.5,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """CKA of each weight layer of ``model_a`` with the same-named layer of ``model_b``.

    Returns ``{name: CKA}`` over the weight layers present in both, in ``model_a``'s
    forward order (a float model and its QAT twin share names); raises ConfigError
    if no name matches.
    """
    fn = _cka_fn(kind, unbiased, sigma_frac)
    names_b = set(weight_layer_names(model_b))
    common = [n for n in weight_layer_names(model_a) if n in names_b]
    if not common:
        raise ConfigError(
            f"no weight layer name is shared: model_a has {weight_layer_names(model_a)}, "
            f"model_b has {sorted(names_b)}"
        )
    acts_a = layer_activations(model_a, x, layers=common, batch_size=batch_size, device=device)
    acts_b = layer_activations(model_b, x, layers=common, batch_size=batch_size, device=device)
    return {n: fn(acts_a[n], acts_b[n]) for n in acts_a}


# ------------------------------------------------------------------ disagreement, ensembles


def _logits(out: Any, name: str) -> np.ndarray:
    a = np.asarray(out, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] < 2:
        raise ConfigError(f"{name} must be (n_samples, n_classes >= 2) outputs, got {a.shape}")
    return a


def disagreement(out_a: Any, out_b: Any) -> float:
    """Fraction of samples whose top-1 class differs between two (n, classes) outputs."""
    a, b = _logits(out_a, "out_a"), _logits(out_b, "out_b")
    if a.shape != b.shape:
        raise ConfigError(f"out_a and out_b must have the same shape, got {a.shape} and {b.shape}")
    return float(np.mean(a.argmax(1) != b.argmax(1)))


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ensemble_gain(member_outputs: list[Any], y: Any) -> dict[str, Any]:
    """Accuracy gain of an ensemble (mean of member softmaxes) over its members.

    ``member_outputs`` are (n, classes) logits; ``y`` integer labels (n,) or one-hot
    (n, classes). Returns member accuracies, their mean, the ensemble accuracy,
    ``gain`` = ensemble - mean member, and the mean pairwise disagreement.
    """
    if len(member_outputs) < 1:
        raise ConfigError("member_outputs must hold at least one member's outputs")
    outs = [_logits(o, f"member_outputs[{i}]") for i, o in enumerate(member_outputs)]
    for i, o in enumerate(outs[1:], 1):
        if o.shape != outs[0].shape:
            raise ConfigError(
                f"member_outputs[{i}] has shape {o.shape}, member_outputs[0] has {outs[0].shape}"
            )
    labels = np.asarray(y)
    if labels.ndim == 2:
        labels = labels.argmax(1)
    if labels.shape != (outs[0].shape[0],):
        raise ConfigError(
            f"y must be (n,) labels or (n, classes) one-hot with n = {outs[0].shape[0]}, "
            f"got shape {np.asarray(y).shape}"
        )
    accs = [float(np.mean(o.argmax(1) == labels)) for o in outs]
    ens = np.mean([_softmax(o) for o in outs], axis=0)
    ens_acc = float(np.mean(ens.argmax(1) == labels))
    pairs = [disagreement(a, b) for a, b in itertools.combinations(outs, 2)]
    mean_acc = float(np.mean(accs))
    return {
        "member_accuracy": accs,
        "mean_member_accuracy": mean_acc,
        "ensemble_accuracy": ens_acc,
        "gain": ens_acc - mean_acc,
        "mean_pairwise_disagreement": float(np.mean(pairs)) if pairs else 0.0,
        "n_members": len(outs),
    }


# ------------------------------------------------------------------ plot


def plot_cka(result: dict[str, Any], ax: Any = None) -> Any:
    """Heatmap of a :func:`cka_matrix` result with the value in each cell."""
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(
            figsize=(1.0 + 0.8 * len(result["names_b"]), 1.0 + 0.7 * len(result["names_a"]))
        )
    else:
        fig = ax.figure
    mat = np.asarray(result["matrix"], dtype=np.float64)
    im = ax.imshow(mat, vmin=0.0, vmax=1.0, cmap="viridis", origin="upper")
    for i, j in itertools.product(range(mat.shape[0]), range(mat.shape[1])):
        v = mat[i, j]
        ax.text(
            j,
            i,
            "nan" if np.isnan(v) else f"{v:.2f}",
            ha="center",
            va="center",
            color="w" if not np.isnan(v) and v < 0.6 else "k",
            fontsize=8,
        )
    ax.set_xticks(range(mat.shape[1]), result["names_b"], rotation=45, ha="right")
    ax.set_yticks(range(mat.shape[0]), result["names_a"])
    ax.set_xlabel("model b")
    ax.set_ylabel("model a")
    ax.set_title(f"{result.get('kind', 'linear')} CKA")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig
