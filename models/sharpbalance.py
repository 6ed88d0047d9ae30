"""SharpBalance: the sharpness-diversity trade-off of deep ensembles, and an ensemble on chip.

**Study** (Lu, Liu, Zhou, Li, Keutzer, Mahoney, Yan, Yang, Yang, "Sharpness-diversity
tradeoff: improving flat ensembles with SharpBalance", NeurIPS 2024, arXiv:2407.12996):

* training every member of a deep ensemble with SAM (sharpness-aware minimisation,
  Foret et al., ICLR 2021, arXiv:2010.01412) makes each member flatter but the
  members more alike (less diverse), which eats into what ensembling gains;
* **SharpBalance** trains each member with the SAM objective on only a subset of
  the data, chosen from the other members' per-sample sharpness, and plain ERM on
  the rest, to keep the members flat *and* diverse.

**Our reading of the rule** (the paper's text was not reachable here; this follows the
authors' code, ``haiquanlu/SharpBalance``: ``main.py`` calls
``engine.boosting_sam_split(..., ascend=True)`` after ``initial_epochs`` of full SAM):

1. warm-up: every member trains with SAM on all samples for ``warmup`` of the epochs
   (the authors: 100 of 200);
2. per-sample sharpness of member ``j``: the per-sample Fisher, ``||grad_theta l(x_n,
   y_n)||^2`` (:func:`per_sample_fisher`, exact in closed form for these MLPs);
   ``S_j`` is the ``fraction`` (authors: 0.5) of samples ranked lowest
   (``select="flattest"``, what ``ascend=True`` does) or highest (``"sharpest"``);
3. member ``i`` applies SAM on ``(U_{j != i} S_j) U R_i``, where ``R`` are the samples in
   no ``S_j`` (sorted) dealt round-robin to the members (``R_i = R[i::M]``), and ERM
   on the rest (:func:`sharpbalance_subsets`), until the end of training. So each
   member is flattened where the *others* sit (their flat/sharp sets), and the samples
   nobody covers are split, which makes the members' SAM sets differ.

A mini-batch step minimises ``(n_erm / B) mean l(w) + (n_sam / B) mean l(w + e)`` with
``e = rho g_sam / ||g_sam||`` from the gradient of the SAM part at ``w``
(:func:`sam_gradients`), one Adam step (the authors take two SGD steps per batch;
one combined step is the same objective).

**Setting here** (generated or shipped data, no downloads): the hls4ml jets
(16 features, 5 classes; :mod:`edgeml.models.jets`) and scikit-learn's 8x8 digits
(:mod:`edgeml.models.digits`), each with corrupted test sets made here
(:func:`corrupt`): jets: Gaussian feature noise, feature dropout (set to the training
mean), a jet-energy-scale-like shift (raw ``j_mass_mmdt`` and ``j_multiplicity``
scaled by ``1 + s``); digits: pixel noise, Gaussian blur, pixel dropout, translation;
three severities each. Ensembles of ``M = 3`` one-hidden-layer MLPs (jets 16-16-5,
digits 64-32-10), trained all at once as one batched model (:class:`BatchedMLP`, own
initialisation and batch order per member) by ERM (deep ensemble), SAM and
SharpBalance. Measured per ensemble (:func:`ensemble_report`): sharpness (top Hessian
eigenvalue per member, Lanczos on :class:`~edgeml.models.analysis.curvature.ModelHessian`),
diversity (mean pairwise top-1 disagreement and ``1 - linear CKA`` of the hidden
features, :mod:`edgeml.models.analysis.similarity`), member and ensemble (mean of
softmaxes) accuracy, in distribution and averaged over the corrupted sets.

**Edge form** (:class:`EnsembleMLP`, the registered design ``sharpbalance``): the
three members as branches on one constant ``ap_fixed<12,5>`` input quantizer
(QuantLinear 16->16, QuantReLU, QuantLinear 16->5), whose logits go through *one*
shared signed ``OUT_BITS``-bit power-of-two quantizer and are added (the residual-Add
pattern of :mod:`edgeml.models.resnet`: equal scales, so the adds are plain integer
adds at every level). The chip outputs the logit sum (argmax = logit averaging;
softmax stays on the host). 1,008 weights + 63 biases. ``fit_float`` trains the
SharpBalance ensemble; QAT and pruning fine-tune the whole ensemble on the summed
logits (the flow's trainer).

**Robustness** (:func:`robustness`): exhaustive single-bit campaigns over every stored
weight and bias bit on the golden model of the quantized ensemble and of one MLP with
the same weight count (16-48-5), same bit width: mean SDC (top-1 change) and accuracy.

**Measured** (``python -m edgeml.models.sharpbalance --seed 0``, 353 s on a heavily
shared core; sharpness = mean top Hessian eigenvalue, diversity = pairwise top-1
disagreement and 1 - CKA of hidden features on the test set, accuracies in %, OOD =
mean over the 9 (jets) / 12 (digits) corrupted test sets; jets rho 0.1, digits rho
0.3, SAM-set fraction 0.5, warm-up half the epochs)::

    jets, mean of seeds 0-2  sharpness  disagree  1-CKA   member  ens    member-OOD  ens-OOD
    erm                      8.37       0.086     0.122   64.74   65.30  50.21       50.86
    sam                      2.76       0.087     0.070   63.23   63.71  50.64       51.13
    sharpbalance             3.25       0.082     0.079   63.58   64.06  50.76       51.25
    digits, seed 0
    erm                      1.64       0.009     0.016   96.57   96.94  63.57       63.66
    sam                      0.64       0.013     0.049   97.41   97.50  63.84       64.58
    sharpbalance             0.77       0.009     0.041   97.04   97.22  64.22       64.86

Jets reproduce the trade-off in feature space: SAM cuts sharpness 3x and 1 - CKA from
0.122 to 0.070 (rho 0.02 / 0.05 / 0.1 at seed 0: 1 - CKA 0.166 / 0.128 / 0.086 against
ERM's 0.185, monotone); top-1 disagreement hardly moves. SharpBalance lands between
(sharpness 3.25, 1 - CKA 0.079) with the best OOD ensemble accuracy (51.25 % against
51.13 % SAM and 50.86 % ERM), but the margins over SAM are 0.1-0.4 pp, within the
seed-to-seed spread, and ERM has the best in-distribution accuracy (these 16-unit
members underfit the jets; SAM costs 1.6 pp ID). SAM-set fraction 0.3 / 0.5 / 0.7
(3-seed means): sharpness 3.40 / 3.25 / 3.08, 1 - CKA 0.081 / 0.079 / 0.083, OOD
ensemble 51.10 / 51.25 / 51.29 %. ``select="sharpest"`` is nearly plain SAM (the ERM
set then holds the low-Fisher samples, whose gradients are small). On digits the
trade-off does **not** reproduce: SAM makes the members flatter *and* more diverse
(1 - CKA 0.016 -> 0.049 at rho 0.3; also at rho 0.05 and 1.0); SharpBalance again
has the best OOD ensemble accuracy (64.86 %).

Fault robustness (6-bit, unpruned QAT, 1,000 test jets, every weight and bias bit):
the SharpBalance ensemble (golden accuracy 64.17 %) has mean SDC 3.93 % (weight bits
3.65 %, bias bits 25.5 %) against 3.39 % (weight bits 2.68 %, bias bits 8.5 %) for the
16-48-5 MLP (63.28 %); 61 % vs 52 % of faults change more than 1 % of predictions.
The ensemble does *not* degrade more gracefully at this size: a flipped high bit in a
16-unit branch moves that branch's logits as much as in the wide MLP, and summing the
branches does not dilute it. ``edgeml flow --design sharpbalance`` (6 bits, 50 %
pruned): float 63.59 %, QAT 64.17 %, pruned 65.09 %; golden vs hls4ml C-sim / RTL /
Brevitas 0 / 0 / 0 mismatching of 20,521 vectors; yosys 8,876 LUT, 1,552 FF; mean SDC
0.0366 over 6,128 stored bits.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from edgeml.errors import ConfigError

from . import digits, jets, training
from .training import Dataset, TrainSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Brevitas' optional-kernel import warnings
    from brevitas import nn as qnn
    from brevitas.quant import Int8ActPerTensorFixedPoint

METHODS: tuple[str, ...] = ("erm", "sam", "sharpbalance")
DATASETS: tuple[str, ...] = ("jets", "digits")
SELECTS: tuple[str, ...] = ("flattest", "sharpest")
#: Ensemble members and hidden width of each member per data set.
N_MEMBERS = 3
HIDDEN: dict[str, int] = {"jets": 16, "digits": 32}
#: Hidden width of the single-MLP comparator with the ensemble's weight count (16-48-5).
SINGLE_HIDDEN = N_MEMBERS * HIDDEN["jets"]
#: Bits of the shared quantizer on the members' logits before the on-chip add.
OUT_BITS = 10
ACT_COLLECT_STATS_STEPS = training.ACT_COLLECT_STATS_STEPS
DEFAULT_BIT_WIDTH = 6
#: Corruption kinds and their three severities (jets in standardised units).
CORRUPTIONS: dict[str, dict[str, tuple[float, ...]]] = {
    "jets": {
        "noise": (0.25, 0.5, 1.0),
        "dropout": (0.1, 0.25, 0.5),
        "scale": (0.1, 0.2, 0.4),
    },
    "digits": {
        "noise": (0.1, 0.2, 0.4),
        "blur": (0.5, 0.8, 1.2),
        "dropout": (0.1, 0.25, 0.4),
        "shift": (1.0, 2.0, 3.0),
    },
}
#: Raw jet features scaled by the energy-scale-like shift.
SCALED_FEATURES: tuple[str, ...] = ("j_mass_mmdt", "j_multiplicity")


@dataclass(frozen=True)
class Recipe:
    """Training settings of one ensemble (all members at once, Adam)."""

    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 256
    rho: float = 0.1
    fraction: float = 0.5
    warmup: float = 0.5
    select: Literal["flattest", "sharpest"] = "flattest"

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"Recipe.epochs must be an integer >= 1, got {self.epochs!r}")
        if not self.rho >= 0:
            raise ConfigError(f"Recipe.rho must be >= 0, got {self.rho!r}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ConfigError(f"Recipe.fraction must be in [0, 1], got {self.fraction!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"Recipe.warmup must be in [0, 1), got {self.warmup!r}")
        if self.select not in SELECTS:
            raise ConfigError(f"Recipe.select must be one of {SELECTS}, got {self.select!r}")
        if self.lr <= 0 or self.batch_size < 1:
            raise ConfigError(
                f"Recipe.lr must be > 0 and batch_size >= 1, got {self.lr!r}, {self.batch_size!r}"
            )


#: Per data set: the recipe of :func:`finding` (full run).
RECIPES: dict[str, Recipe] = {
    "jets": Recipe(epochs=30, lr=3e-3, batch_size=256, rho=0.1),
    "digits": Recipe(epochs=60, lr=3e-3, batch_size=64, rho=0.3),
}


# --------------------------------------------------------------------------- data


def load_data(seed: int = 0) -> Dataset:
    """The registered design's data: the jets split of :func:`edgeml.models.jets.load_data`."""
    return _jets(seed)


@lru_cache(maxsize=2)
def _jets(seed: int) -> Dataset:
    return jets.load_data(seed)


@lru_cache(maxsize=2)
def _digits(seed: int) -> Dataset:
    d = digits.load_digits_split(seed=seed)
    return Dataset(
        d.x_train, d.y_train, d.x_test, d.y_test, {"source": "scikit-learn digits (pixel/16)"}
    )


def dataset(name: str, seed: int = 0) -> Dataset:
    """``"jets"`` or ``"digits"`` (train/test split fixed by ``seed``)."""
    if name not in DATASETS:
        raise ConfigError(f"dataset must be one of {DATASETS}, got {name!r}")
    return _jets(seed) if name == "jets" else _digits(seed)


def corrupt(
    name: str, data: Dataset, x: np.ndarray, kind: str, severity: float, seed: int = 0
) -> np.ndarray:
    """A corrupted copy of ``x`` (float32, same shape), within the edge input's range.

    jets (standardised features): ``noise`` adds N(0, severity^2); ``dropout`` sets each
    feature to 0 (the training mean) with probability ``severity``; ``scale``
    multiplies the raw :data:`SCALED_FEATURES` by ``1 + severity`` (through the
    split's standardisation constants). digits (``pixel/16`` in [0, 1]): ``noise``
    adds N(0, severity^2) and clips to [0, 1]; ``blur`` is a Gaussian filter of sigma
    ``severity`` pixels; ``dropout`` zeroes pixels with probability ``severity``;
    ``shift`` translates by ``severity`` pixels right (and ``severity - 1`` down),
    filling with 0.
    """
    if name not in DATASETS:
        raise ConfigError(f"dataset must be one of {DATASETS}, got {name!r}")
    if kind not in CORRUPTIONS[name]:
        raise ConfigError(
            f"corruption kind for {name} must be one of {tuple(CORRUPTIONS[name])}, got {kind!r}"
        )
    if not severity >= 0:
        raise ConfigError(f"severity must be >= 0, got {severity!r}")
    rng = np.random.default_rng(seed)
    a = np.asarray(x, np.float64).copy()
    if name == "jets":
        if kind == "noise":
            a = a + severity * rng.standard_normal(a.shape)
        elif kind == "dropout":
            a[rng.random(a.shape) < severity] = 0.0
        else:
            std = data.info["standardize"]
            mean, sd = np.asarray(std["mean"]), np.asarray(std["std"])
            feats = list(data.info["features"])
            for f in SCALED_FEATURES:
                k = feats.index(f)
                raw = a[:, k] * sd[k] + mean[k]
                a[:, k] = (raw * (1.0 + severity) - mean[k]) / sd[k]
        return np.clip(a, jets.INPUT_LO, jets.INPUT_HI).astype(np.float32)
    if kind == "noise":
        a = a + severity * rng.standard_normal(a.shape)
    elif kind == "blur":
        a = ndimage.gaussian_filter(a, sigma=(0, 0, severity, severity), mode="constant")
    elif kind == "dropout":
        a[rng.random(a.shape) < severity] = 0.0
    else:
        s = round(severity)
        a = ndimage.shift(a, (0, 0, max(s - 1, 0), s), order=0, mode="constant", cval=0.0)
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def ood_sets(name: str, data: Dataset, seed: int = 0) -> dict[str, np.ndarray]:
    """``"<kind>/<severity>"`` -> corrupted test inputs, for every kind and severity."""
    out: dict[str, np.ndarray] = {}
    for k, (kind, sevs) in enumerate(CORRUPTIONS[name].items()):
        for j, sev in enumerate(sevs):
            out[f"{kind}/{sev:g}"] = corrupt(name, data, data.x_test, kind, sev, seed + 31 * k + j)
    return out


# ------------------------------------------------------------------ SAM, the rule


def sam_gradients(
    params: list[torch.Tensor], loss_fn: Any, rho: float
) -> tuple[list[torch.Tensor], float]:
    """SAM's gradient: ``grad L(w + e)`` with ``e = rho g / ||g||``, ``g = grad L(w)``.

    ``params`` are leaf tensors whose first axis indexes ensemble members: the norm
    ``||g||`` is taken per member (over all of that member's slices), so each member
    gets its own ascent step. ``loss_fn()`` evaluates the loss at the current
    parameters (a sum over members). The parameters are restored afterwards.
    Returns the gradients at ``w + e`` and ``L(w)``.
    """
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    eps = _ascent(grads, rho)
    with torch.no_grad():
        for p, e in zip(params, eps, strict=True):
            p.add_(e)
    try:
        loss2 = loss_fn()
        g2 = torch.autograd.grad(loss2, params, allow_unused=True)
    finally:
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.sub_(e)
    return [
        torch.zeros_like(p) if g is None else g for p, g in zip(params, g2, strict=True)
    ], float(loss.detach())


def _ascent(grads: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """``rho g / ||g||`` per member (first axis); zero where a member's gradient is zero."""
    m = grads[0].shape[0]
    sq = sum(g.reshape(m, -1).pow(2).sum(1) for g in grads)
    scale = rho / (sq.sqrt() + 1e-12)
    scale = torch.where(sq > 0, scale, torch.zeros_like(scale))
    return [g * scale.reshape(m, *([1] * (g.ndim - 1))) for g in grads]


def sharpbalance_subsets(
    scores: np.ndarray, fraction: float, select: Literal["flattest", "sharpest"] = "flattest"
) -> np.ndarray:
    """SharpBalance's SAM sets: ``(M, N)`` bool, True where member ``i`` uses SAM.

    ``scores[j, n]``: member ``j``'s per-sample sharpness. ``S_j``: the
    ``floor(fraction * N)`` samples member ``j`` ranks lowest (``"flattest"``) or
    highest (``"sharpest"``; stable order). Member ``i``'s SAM set is the union of
    the other members' ``S_j`` plus ``R[i::M]`` of the samples ``R`` in no ``S_j``.
    """
    s = np.asarray(scores, np.float64)
    if s.ndim != 2 or s.shape[0] < 2:
        raise ConfigError(f"scores must be (members >= 2, samples), got shape {s.shape}")
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"fraction must be in [0, 1], got {fraction!r}")
    if select not in SELECTS:
        raise ConfigError(f"select must be one of {SELECTS}, got {select!r}")
    m, n = s.shape
    total = int(n * fraction)
    sets = np.zeros((m, n), bool)
    for j in range(m):
        order = np.argsort(s[j] if select == "flattest" else -s[j], kind="stable")
        sets[j, order[:total]] = True
    rest = np.flatnonzero(~sets.any(axis=0))
    out = np.zeros((m, n), bool)
    for i in range(m):
        out[i] = np.delete(sets, i, axis=0).any(axis=0)
        out[i, rest[i::m]] = True
    return out


# -------------------------------------------------------------- batched ensemble


class BatchedMLP(nn.Module):
    """``M`` one-hidden-layer MLPs evaluated at once: ``(M, B, in) -> (M, B, classes)``.

    Weights ``w1 (M, in, hidden)``, ``b1``, ``w2 (M, hidden, classes)``, ``b2``,
    initialised per member like ``nn.Linear`` (uniform in ``+-1/sqrt(fan_in)``).
    """

    def __init__(self, members: int, n_in: int, hidden: int, n_classes: int) -> None:
        super().__init__()
        for what, v in (("members", members), ("n_in", n_in), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{what} must be a positive integer, got {v!r}")
        b1, b2 = 1 / math.sqrt(n_in), 1 / math.sqrt(hidden)
        self.w1 = nn.Parameter(torch.empty(members, n_in, hidden).uniform_(-b1, b1))
        self.b1 = nn.Parameter(torch.empty(members, hidden).uniform_(-b1, b1))
        self.w2 = nn.Parameter(torch.empty(members, hidden, n_classes).uniform_(-b2, b2))
        self.b2 = nn.Parameter(torch.empty(members, n_classes).uniform_(-b2, b2))

    @property
    def members(self) -> int:
        return int(self.w1.shape[0])

    def hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre- and post-ReLU hidden activations ``(M, B, hidden)`` of ``x`` ``(M, B, in)``."""
        a = torch.einsum("mbi,mih->mbh", x, self.w1) + self.b1[:, None]
        return a, torch.relu(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.hidden(x)
        return torch.einsum("mbh,mhc->mbc", h, self.w2) + self.b2[:, None]

    def to_ensemble(self) -> EnsembleMLP:
        """The float :class:`EnsembleMLP` (logit sum) with these weights."""
        m, n_in, h = self.w1.shape
        ens = EnsembleMLP(n_in, int(self.w2.shape[2]), hidden=h, members=m)
        with torch.no_grad():
            for i, mem in enumerate(ens.members):
                mem.fc1.weight.copy_(self.w1[i].T)
                mem.fc1.bias.copy_(self.b1[i])
                mem.fc2.weight.copy_(self.w2[i].T)
                mem.fc2.bias.copy_(self.b2[i])
        return ens.eval()


def _flat(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, np.float32)) if not isinstance(x, torch.Tensor) else x
    return t.reshape(len(t), -1).float()


def per_sample_fisher(model: BatchedMLP, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``||grad_theta CE(f_m(x_n), y_n)||^2`` for every member and sample: ``(M, N)``.

    Closed form for a one-hidden-layer ReLU MLP: with ``d2 = softmax - onehot`` and
    ``d1 = (W2 d2) * relu'(a1)``, the squared norm is ``(||h||^2 + 1) ||d2||^2 +
    (||x||^2 + 1) ||d1||^2`` (weights and biases of both layers).
    """
    xt = _flat(x).to(model.w1.device)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.int64, device=xt.device)
    with torch.no_grad():
        xm = xt.expand(model.members, *xt.shape)
        a, h = model.hidden(xm)
        logits = torch.einsum("mbh,mhc->mbc", h, model.w2) + model.b2[:, None]
        d2 = torch.softmax(logits, -1)
        d2[:, torch.arange(len(yt)), yt] -= 1.0
        d1 = torch.einsum("mbc,mhc->mbh", d2, model.w2) * (a > 0)
        fis = (h.pow(2).sum(-1) + 1) * d2.pow(2).sum(-1)
        fis = fis + (xt.pow(2).sum(-1) + 1)[None] * d1.pow(2).sum(-1)
    return fis.cpu().numpy().astype(np.float64)


def train_ensemble(
    x: np.ndarray,
    y: np.ndarray,
    method: str,
    recipe: Recipe = Recipe(),
    *,
    hidden: int,
    n_classes: int,
    members: int = N_MEMBERS,
    seed: int = 0,
) -> tuple[BatchedMLP, dict[str, Any]]:
    """Train ``members`` MLPs by ``method`` (``"erm"``, ``"sam"``, ``"sharpbalance"``).

    Each member has its own initialisation and batch order (from ``seed``).
    ``sharpbalance``: SAM on everything for ``recipe.warmup`` of the epochs, then the
    per-sample Fisher of each member (:func:`per_sample_fisher`) picks the SAM sets
    (:func:`sharpbalance_subsets`), ERM elsewhere. Returns the model (CPU, eval) and
    ``{"sam_fraction": [...per member], "overlap": mean pairwise Jaccard of the SAM sets}``.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    torch.manual_seed(seed)
    dev = training.device()
    model = BatchedMLP(members, int(np.prod(np.shape(x)[1:])), hidden, n_classes).to(dev)
    xt = _flat(x).to(dev)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.int64, device=dev)
    n = len(xt)
    sam = torch.full((members, n), method != "erm", dtype=torch.bool, device=dev)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    params = list(model.parameters())
    gens = [torch.Generator().manual_seed(seed * 1000 + 17 * m + 1) for m in range(members)]
    switch = round(recipe.warmup * recipe.epochs) if method == "sharpbalance" else -1
    info: dict[str, Any] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for epoch in range(recipe.epochs):
            if epoch == switch:
                scores = per_sample_fisher(model, x, y)
                sets = sharpbalance_subsets(scores, recipe.fraction, recipe.select)
                sam = torch.as_tensor(sets, device=dev)
                info.update(_set_stats(sets))
            perms = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(dev)
            for start in range(0, n, recipe.batch_size):
                idx = perms[:, start : start + recipe.batch_size]
                _step(model, params, opt, xt[idx], yt[idx], sam.gather(1, idx).float(), recipe.rho)
    finally:
        torch.set_num_threads(threads)
    if method != "sharpbalance":
        info.update(_set_stats(sam.cpu().numpy()))
    return model.cpu().eval(), info


def _set_stats(sets: np.ndarray) -> dict[str, Any]:
    jac = [
        float((sets[a] & sets[b]).sum() / max((sets[a] | sets[b]).sum(), 1))
        for a, b in itertools.combinations(range(len(sets)), 2)
    ]
    return {
        "sam_fraction": [float(s.mean()) for s in sets],
        "overlap": float(np.mean(jac)) if jac else 1.0,
    }


def _step(
    model: BatchedMLP,
    params: list[nn.Parameter],
    opt: torch.optim.Optimizer,
    xb: torch.Tensor,
    yb: torch.Tensor,
    mask: torch.Tensor,
    rho: float,
) -> None:
    """One update on ``(M, B)`` batches: ERM part at ``w``, SAM part at ``w + e``."""
    b = xb.shape[1]
    c = model.w2.shape[-1]

    def losses() -> torch.Tensor:
        out = model(xb)
        return nn.functional.cross_entropy(
            out.reshape(-1, c), yb.reshape(-1), reduction="none"
        ).reshape(yb.shape)

    opt.zero_grad(set_to_none=True)
    grads = [torch.zeros_like(p) for p in params]
    n_sam = int(mask.sum())
    if n_sam < mask.numel():
        erm = (losses() * (1 - mask)).sum() / b
        grads = [g + d for g, d in zip(grads, torch.autograd.grad(erm, params), strict=True)]
    if n_sam:
        g_sam, _ = sam_gradients(params, lambda: (losses() * mask).sum() / b, rho)
        grads = [g + d for g, d in zip(grads, g_sam, strict=True)]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt.step()


# ------------------------------------------------------------------ measurement


def member_outputs(model: BatchedMLP, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(M, N, classes)`` and hidden features ``(M, N, hidden)`` (float64)."""
    xt = _flat(x)
    with torch.no_grad():
        xm = xt.expand(model.members, *xt.shape)
        _, h = model.hidden(xm)
        out = torch.einsum("mbh,mhc->mbc", h, model.w2) + model.b2[:, None]
    return out.double().numpy(), h.double().numpy()


def top_eigenvalues(
    model: BatchedMLP, x: np.ndarray, y: np.ndarray, n: int = 2000, seed: int = 0
) -> list[float]:
    """Top Hessian eigenvalue of each member's mean training CE (Lanczos, ``n`` samples)."""
    from .analysis.curvature import ModelHessian

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(x), size=min(n, len(x)), replace=False)
    xs, ys = _flat(x[pick]).numpy(), np.asarray(y)[pick]
    ens = model.to_ensemble()
    vals = []
    for mem in ens.members:
        h = ModelHessian(nn.Sequential(nn.Flatten(), mem).double(), xs, ys, _ce, hvp_mode="exact")
        lam, _ = h.eigenpairs(1, method="lanczos", seed=seed)
        vals.append(float(lam[0]))
    return vals


def _ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


def ensemble_report(
    model: BatchedMLP,
    data: Dataset,
    ood: dict[str, np.ndarray],
    *,
    sharpness: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Sharpness, diversity and accuracy (ID, mean over ``ood``) of one trained ensemble.

    Keys: ``sharpness`` (mean top Hessian eigenvalue over members), ``disagreement``
    (mean pairwise top-1 disagreement on the test set), ``cka_div`` (mean pairwise
    ``1 - linear CKA`` of hidden features, test set), ``member_acc`` / ``ens_acc``
    (mean member / ensemble accuracy, ID), ``member_ood`` / ``ens_ood`` (the same
    averaged over the corrupted sets) and ``disagreement_ood``.
    """
    from .analysis.similarity import ensemble_gain, linear_cka

    logits, feats = member_outputs(model, data.x_test)
    g = ensemble_gain(list(logits), data.y_test)
    pairs = list(itertools.combinations(range(model.members), 2))
    out = {
        "disagreement": g["mean_pairwise_disagreement"],
        "cka_div": float(np.mean([1.0 - linear_cka(feats[a], feats[b]) for a, b in pairs])),
        "member_acc": g["mean_member_accuracy"],
        "ens_acc": g["ensemble_accuracy"],
    }
    accs, ens, dis = [], [], []
    for xo in ood.values():
        lo, _ = member_outputs(model, xo)
        go = ensemble_gain(list(lo), data.y_test)
        accs.append(go["mean_member_accuracy"])
        ens.append(go["ensemble_accuracy"])
        dis.append(go["mean_pairwise_disagreement"])
    out.update(
        member_ood=float(np.mean(accs)),
        ens_ood=float(np.mean(ens)),
        disagreement_ood=float(np.mean(dis)),
    )
    if sharpness:
        out["sharpness"] = float(
            np.mean(top_eigenvalues(model, data.x_train, data.y_train, seed=seed))
        )
    return out


# ---------------------------------------------------------------- the edge form


class Member(nn.Module):
    """One member: ``fc1`` -> ReLU -> ``fc2`` (float ``nn.Linear`` or Brevitas twins)."""

    def __init__(self, n_in: int, hidden: int, n_classes: int, bit_width: int | None) -> None:
        super().__init__()
        if bit_width is None:
            self.fc1: nn.Module = nn.Linear(n_in, hidden)
            self.relu1: nn.Module = nn.ReLU()
            self.fc2: nn.Module = nn.Linear(hidden, n_classes)
        else:
            self.fc1 = digits.qlinear(n_in, hidden, bit_width)
            self.relu1 = digits.qrelu(bit_width)
            self.fc2 = digits.qlinear(hidden, n_classes, bit_width, last=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu1(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


def _check_bit_width(bit_width: int) -> None:
    if isinstance(bit_width, bool) or not isinstance(bit_width, int) or not 2 <= bit_width <= 8:
        raise ConfigError(
            f"bit_width of design 'sharpbalance' must be an integer from 2 to 8, got {bit_width!r}"
        )


class EnsembleMLP(nn.Module):
    """``members`` MLP branches on one input; their logits are summed.

    Float (``bit_width=None``) or Brevitas QAT twin (same parameter names): a constant
    ``ap_fixed<12,5>`` input quantizer (the jets' :class:`~edgeml.models.jets.InputQuant`),
    per branch QuantLinear -> QuantReLU -> QuantLinear (Int16Bias, power-of-two
    scales), and one shared signed :data:`OUT_BITS`-bit power-of-two quantizer
    ``out_quant`` on every branch's logits, so the adds join equal scales.
    """

    def __init__(
        self,
        n_in: int = jets.N_FEATURES,
        n_classes: int = jets.N_CLASSES,
        hidden: int = HIDDEN["jets"],
        members: int = N_MEMBERS,
        bit_width: int | None = None,
    ) -> None:
        super().__init__()
        if bit_width is not None:
            _check_bit_width(bit_width)
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise ConfigError(f"members must be a positive integer, got {members!r}")
        self.bit_width = bit_width
        self.members = nn.ModuleList(
            Member(n_in, hidden, n_classes, bit_width) for _ in range(members)
        )
        if bit_width is None:
            self.inp: nn.Module = nn.Identity()
            self.out_quant: nn.Module = nn.Identity()
        else:
            self.inp = qnn.QuantIdentity(act_quant=jets.InputQuant, return_quant_tensor=True)
            self.out_quant = qnn.QuantIdentity(
                act_quant=Int8ActPerTensorFixedPoint,
                bit_width=OUT_BITS,
                collect_stats_steps=ACT_COLLECT_STATS_STEPS,
                return_quant_tensor=False,
            )

    def member_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each branch's logits after the shared output quantizer (plain tensors)."""
        h = self.inp(x)
        return [training.value(self.out_quant(training.value(m(h)))) for m in self.members]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.member_logits(x)
        total = outs[0]
        for o in outs[1:]:
            total = total + o
        return total


def build_float() -> EnsembleMLP:
    """The registered design's float ensemble (3 x 16-16-5)."""
    return EnsembleMLP()


def build_qat(bit_width: int = DEFAULT_BIT_WIDTH) -> EnsembleMLP:
    """The registered design's Brevitas edge form at ``bit_width`` (2-8)."""
    _check_bit_width(bit_width)
    return EnsembleMLP(bit_width=bit_width)


def build_single(bit_width: int | None = None) -> EnsembleMLP:
    """The comparator: one 16-48-5 MLP (the ensemble's weight count), same quantizers."""
    return EnsembleMLP(hidden=SINGLE_HIDDEN, members=1, bit_width=bit_width)


def n_weights(model: nn.Module) -> int:
    """Weights (not biases) of the dense layers."""
    return sum(m.weight.numel() for m in training.weight_layers(model).values())


def fit_float(data: Dataset, epochs: int, seed: int = 0) -> EnsembleMLP:
    """The design's float trainer: a SharpBalance ensemble (``epochs`` epochs, jets recipe)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be an integer >= 1, got {epochs!r}")
    r = RECIPES["jets"]
    recipe = Recipe(
        epochs=epochs, lr=r.lr, batch_size=r.batch_size, rho=r.rho, fraction=r.fraction,
        warmup=r.warmup, select=r.select,
    )  # fmt: skip
    model, _ = train_ensemble(
        data.x_train,
        data.y_train,
        "sharpbalance",
        recipe,
        hidden=HIDDEN["jets"],
        n_classes=jets.N_CLASSES,
        seed=seed,
    )
    return model.to_ensemble()


def qat(
    float_model: EnsembleMLP, data: Dataset, bit_width: int, epochs: int, seed: int = 0
) -> EnsembleMLP:
    """Brevitas QAT of ``float_model`` (same shape) with the design's settings."""
    first = float_model.members[0]
    q = EnsembleMLP(
        first.fc1.in_features,
        first.fc2.out_features,
        hidden=first.fc1.out_features,
        members=len(float_model.members),
        bit_width=bit_width,
    )
    training.init_from_float(q, float_model)
    gen = training.seed_all(seed)
    return training.fit(q, data.x_train, data.y_train, _ce, epochs, gen, SETTINGS)


SETTINGS = TrainSettings(lr=1e-3, batch_size=256)


# ------------------------------------------------------------------- robustness


def robustness(
    seed: int = 0,
    bit_width: int = DEFAULT_BIT_WIDTH,
    n_samples: int = 1000,
    epochs: tuple[int, int] = (30, 10),
    quick: bool = False,
) -> dict[str, float]:
    """Single-bit weight/bias campaigns: the quantized SharpBalance ensemble vs one MLP.

    Both have 1,008 weights (3 x 16-16-5 vs 16-48-5), are trained float for
    ``epochs[0]`` epochs (the ensemble by SharpBalance, the MLP by Adam/ERM) and QAT
    for ``epochs[1]`` at ``bit_width``, exported to QONNX and compiled into the golden
    model; every stored weight and bias bit is flipped once (exhaustive) and scored
    on ``n_samples`` test jets. Keys ``"<model>/<figure>"`` for ``ensemble`` and
    ``single``: ``acc`` (golden model, whole test set), ``mean_sdc`` (top-1 change
    rate averaged over all faults), ``mean_acc_drop``, ``p_sdc_gt1`` (share of faults
    changing > 1 % of predictions), ``weight_sdc`` / ``bias_sdc`` (mean SDC over the
    weight / bias bits alone), ``sites`` and ``weights``.
    """
    from edgeml.fault_injection.campaign import run_campaign
    from edgeml.fault_injection.sites import PERMANENT_PARAMS, enumerate_sites
    from edgeml.golden import GoldenModel

    data = _jets(seed)
    ens_f = fit_float(data, epochs[0], seed)
    gen = training.seed_all(seed)
    single_f = training.fit(
        build_single(), data.x_train, data.y_train, _ce, epochs[0], gen, SETTINGS
    )
    out: dict[str, float] = {}
    x_eval = data.x_test[: (300 if quick else n_samples)]
    y_eval = data.y_test[: len(x_eval)]
    for name, fm in (("ensemble", ens_f), ("single", single_f)):
        q = qat(fm, data, bit_width, epochs[1], seed)
        g = GoldenModel.from_torch(q, (jets.N_FEATURES,))
        codes = g.quantize_input(data.x_test)
        acc = float(np.mean(g.predict(codes).reshape(len(codes), -1).argmax(1) == data.y_test))
        sites = enumerate_sites(g, PERMANENT_PARAMS)
        res = run_campaign(g, g.quantize_input(x_eval), y_eval, sites, progress=False, sdc="top1")
        out.update(
            {
                f"{name}/acc": acc,
                f"{name}/float_acc": training.top1_accuracy(
                    training.predict(fm, data.x_test), data.y_test
                ),
                f"{name}/mean_sdc": float(np.mean(res.sdc_rate)),
                f"{name}/mean_acc_drop": float(np.mean(res.acc_drop)),
                f"{name}/p_sdc_gt1": float(np.mean(res.sdc_rate > 0.01)),
                f"{name}/weight_sdc": float(np.mean(res.sdc_rate[res.param == 0])),
                f"{name}/bias_sdc": float(np.mean(res.sdc_rate[res.param == 1])),
                f"{name}/sites": float(len(sites)),
                f"{name}/weights": float(n_weights(q)),
            }
        )
    return out


# ---------------------------------------------------------------------- finding


def study(
    name: str,
    seed: int = 0,
    quick: bool = False,
    recipe: Recipe | None = None,
    methods: tuple[str, ...] = METHODS,
) -> dict[str, float]:
    """Train the three ensembles on ``name`` and report them: ``"<method>/<figure>"``."""
    data = dataset(name, seed)
    r = recipe or RECIPES[name]
    if quick and recipe is None:
        r = Recipe(
            epochs=max(4, r.epochs // 3), lr=r.lr, batch_size=r.batch_size, rho=r.rho,
            fraction=r.fraction, warmup=r.warmup, select=r.select,
        )  # fmt: skip
    ood = ood_sets(name, data, seed)
    n_classes = int(np.max(data.y_train)) + 1
    out: dict[str, float] = {}
    for method in methods:
        model, info = train_ensemble(
            data.x_train,
            data.y_train,
            method,
            r,
            hidden=HIDDEN[name],
            n_classes=n_classes,
            seed=seed,
        )
        rep = ensemble_report(model, data, ood, seed=seed)
        rep["sam_fraction"] = float(np.mean(info["sam_fraction"]))
        rep["sam_overlap"] = float(info["overlap"])
        out.update({f"{method}/{k}": v for k, v in rep.items()})
    return out


def finding(seed: int = 0, quick: bool = False) -> dict[str, float]:
    """The trade-off on both data sets and (full run) the fault-robustness comparison.

    ``"<dataset>/<method>/<figure>"`` (see :func:`ensemble_report`) for ERM / SAM /
    SharpBalance ensembles. ``quick``: jets only, a third of the epochs (~15 s).
    Full: jets at seeds ``seed .. seed + 2`` (``"jets/..."`` is ``seed``,
    ``"jets_mean/..."`` the mean over the three), digits at ``seed``, and
    ``"robust/<model>/<figure>"`` (:func:`robustness`); 3-5 minutes on one core.
    """
    t0 = time.perf_counter()
    out: dict[str, float] = {}
    out.update({f"jets/{k}": v for k, v in study("jets", seed, quick).items()})
    if not quick:
        runs = [{k.removeprefix("jets/"): v for k, v in out.items()}]
        runs += [study("jets", seed + k) for k in (1, 2)]
        out.update({f"jets_mean/{k}": float(np.mean([r[k] for r in runs])) for k in runs[0]})
        out.update({f"digits/{k}": v for k, v in study("digits", seed).items()})
        out.update({f"robust/{k}": v for k, v in robustness(seed).items()})
    out["seconds"] = time.perf_counter() - t0
    return out


FIGURES: tuple[str, ...] = (
    "sharpness",
    "disagreement",
    "cka_div",
    "member_acc",
    "ens_acc",
    "member_ood",
    "ens_ood",
)


def _table(res: dict[str, float]) -> str:
    rows = []
    for name in ("jets", "jets_mean", "digits"):
        if f"{name}/erm/ens_acc" not in res:
            continue
        rows.append(
            f"{name}: ensembles of {N_MEMBERS} MLPs (accuracies in %, OOD = mean of corruptions)"
        )
        rows.append(f"  {'method':<14}" + "".join(f"{f:>13}" for f in FIGURES))
        for m in METHODS:
            vals = []
            for f in FIGURES:
                v = res[f"{name}/{m}/{f}"]
                vals.append(f"{100 * v:>13.2f}" if "acc" in f or "ood" in f else f"{v:>13.4f}")
            rows.append(f"  {m:<14}" + "".join(vals))
    if "robust/ensemble/mean_sdc" in res:
        rows.append(f"single-bit weight/bias faults, {DEFAULT_BIT_WIDTH}-bit, golden model:")
        for k in ("ensemble", "single"):
            rows.append(
                f"  {k:<9} acc {100 * res[f'robust/{k}/acc']:.2f} %  mean SDC "
                f"{100 * res[f'robust/{k}/mean_sdc']:.3f} %  mean acc drop "
                f"{100 * res[f'robust/{k}/mean_acc_drop']:.3f} pp  faults with SDC > 1 %: "
                f"{100 * res[f'robust/{k}/p_sdc_gt1']:.2f} %  weight / bias bits "
                f"{100 * res[f'robust/{k}/weight_sdc']:.2f} / {100 * res[f'robust/{k}/bias_sdc']:.2f} %"
                f"  ({res[f'robust/{k}/sites']:.0f} sites)"
            )
    rows.append(f"({res['seconds']:.0f} s)")
    return "\n".join(rows)


# ---------------------------------------------------------------------- registry


def _spec() -> Any:
    from . import zoo

    return zoo.DesignSpec(
        name="sharpbalance",
        title=f"SharpBalance ensemble of {N_MEMBERS} jet MLPs 16-{HIDDEN['jets']}-5, logits "
        "added on chip through one shared quantizer",
        task="classification",
        input_shape=jets.INPUT_SHAPE,
        load_data=load_data,
        build_float=build_float,
        build_qat=build_qat,
        loss=zoo.cross_entropy,
        metrics=zoo.accuracy_metrics,
        fit_float=fit_float,
        epochs={"float": 30, "qat": 10, "finetune": 10},
        settings=SETTINGS,
        sparsity=0.5,
        notes=(
            f"{N_MEMBERS} branches x (16-{HIDDEN['jets']}-5), 1,008 weights; SharpBalance "
            f"(rho {RECIPES['jets'].rho:g}, SAM-set fraction {RECIPES['jets'].fraction:g}); "
            f"logits through one shared {OUT_BITS}-bit quantizer, summed; input ap_fixed<12,5>"
        ),
    )


DESIGNS = {"sharpbalance": _spec()}


def main(argv: list[str] | None = None) -> None:
    """``python -m edgeml.models.sharpbalance [--quick] [--seed N]``: print the finding."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="data split and training seed")
    ap.add_argument("--quick", action="store_true", help="jets only, short training (~15 s)")
    args = ap.parse_args(argv)
    print(_table(finding(seed=args.seed, quick=args.quick)))


if __name__ == "__main__":
    main()
