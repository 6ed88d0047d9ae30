"""SANE weight-space learning: a model zoo, a sequential weight-token autoencoder, probes, sampling.

**Study** (Schürholt, Mahoney, Borth, "Towards Scalable and Versatile Weight Space
Learning", ICML 2024, arXiv:2406.09997): a trained network is flattened into a
*sequence of weight tokens* (each output neuron's incoming weights and bias, cut
into chunks of a fixed token size and zero-padded, with position encodings for
token index, layer and position in the layer); a transformer autoencoder maps the
tokens to per-token embeddings and back, trained with a reconstruction loss plus a
contrastive (NT-Xent) term between two augmented views of each model (neuron
permutation, which leaves the function unchanged, and weight noise). The pooled
embeddings predict model properties with a linear probe, and new models are
*sampled* by drawing embeddings around those of good zoo members (a kernel density
estimate, "anchor" sampling) and decoding them.

**Zoo** (:func:`train_zoo`, cached under ``edgeml``'s cache as
``sane/zoo-<hash>.npz``, keyed by :class:`ZooConfig`): digits MLPs 64-16-10
(:data:`N_WEIGHTS` = 1,210 parameters), one run per seed with a random learning
rate and training-set fraction, checkpointed at several epochs, so accuracy
ranges from chance to ~96 %. Each member's test accuracy is recorded, and
(:func:`zoo_robustness`, cached separately) its *fault robustness*: its Brevitas
twin at :data:`ZOO_BITS` bits (weights copied, activation scales calibrated, no
QAT) is exported to QONNX, compiled to the golden integer model and hit with an
exhaustive single-bit campaign over every stored weight and bias bit; the mean
SDC rate (top-1 changes) is the label. Predicting it from weights is the new use
of SANE here.

**Autoencoder** (:class:`SaneAE`): linear token embedding + learned position
embeddings (token, layer, position-in-layer), a 2-layer transformer encoder,
a per-token linear bottleneck (:data:`D_LATENT`), a 2-layer transformer decoder
and a linear head back to tokens; masked MSE on non-padded entries of the
per-layer standardised weights.

**Probes** (:func:`probe`): ridge regression from the layer-wise pooled embeddings
(mean, as in SANE, and mean + std over each layer's tokens), against the
weight-statistics baseline of Unterthiner et al.
("Predicting Neural Network Accuracy from Weights", arXiv:2002.11448: mean, std
and quantiles per parameter tensor), cross-validated over *runs* (all checkpoints
of a run are on one side of each split, :func:`run_folds`).

**Edge form** (design ``sane``): the zoo member architecture as a Brevitas MLP
64-16-10 (power-of-two scales, ``Int16Bias``, constant ``ap_ufixed<8,1>``
input); :func:`fit_float` returns a model *sampled from SANE* (zoo and
autoencoder trained or loaded from the cache, best of :data:`FLOW_SAMPLES`
samples by training accuracy, then ``epochs`` epochs of fine-tuning), which
the flow quantizes, prunes, exports and verifies through every level.

**Measured** (``python -m edgeml.models.sane --seed 0`` / ``--seed 1``; cold cache
about 3.5 min CPU on one core each, most of it 96 exports + campaigns and 1,500
autoencoder steps; probes 3-fold over runs, 8 of 24 runs = 32 members per fold)::

                                         seed 0            seed 1
    zoo test accuracy                    0.083..0.964      0.050..0.964
    zoo mean SDC (6-bit)                 0.0068..0.0301    0.0035..0.0336
    AE reconstruction loss               1.786 -> 0.080    1.631 -> 0.091
    ridge probe (R^2 / Spearman)
      accuracy  SANE mean+std pool       0.372 / 0.726     0.034 / 0.689
      accuracy  SANE mean pool          -0.821 / 0.558     0.153 / 0.720
      accuracy  weight statistics        0.633 / 0.855     0.439 / 0.887
      accuracy  SANE + statistics        0.618 / 0.819     0.479 / 0.795
      accuracy  shuffled labels         -0.145 / -0.453    0.006 / 0.090
      mean SDC  SANE mean+std pool       0.225 / 0.486     0.067 / 0.325
      mean SDC  weight statistics        0.211 / 0.448     0.088 / 0.385
      mean SDC  SANE + statistics        0.229 / 0.534    -0.063 / 0.317
      mean SDC  test accuracy only       0.159 / 0.434    -0.038 / 0.050
      mean SDC  shuffled labels         -0.014 / -0.009   -0.032 / 0.024
    sampled models, zero-shot            0.796 (anchors 0.881)  0.759 (0.842)
      after 1 epoch / random init        0.878 / 0.278     0.857 / 0.256

On this small zoo (96 members of 24 runs) the embeddings *rank* held-out runs'
accuracy (Spearman 0.69-0.73) but their R^2 is unstable (0.03-0.37; an earlier,
differently initialised autoencoder gave 0.62-0.70), and the weight-statistics
baseline is better (R^2 0.44-0.63): the paper's probe advantage needs larger zoos
than this. Fault robustness (mean SDC) is weakly predictable from weights by
either (Spearman 0.33-0.49, R^2 <= 0.23), a little more than accuracy alone
explains and clearly above shuffled labels. Sampling is the robust result:
decoded models reach 0.76-0.80 zero-shot and 0.86-0.88 after one epoch, where
random init is at 0.26-0.28.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeml.errors import ConfigError

from . import digits, training
from ._sane_tokens import (
    D_LATENT,
    D_MODEL,
    HIDDEN,
    LAYERS,
    N_CLASSES,
    N_IN,
    N_WEIGHTS,
    TOKEN_SIZE,
    Normalizer,
    SaneAE,
    TokenLayout,
    _cache_root,
    _key,
    _layer_slices,
    _load_npz,
    _save_npz,
    detokenize,
    nt_xent,
    permute_hidden,
    token_layout,
    tokenize,
)
from .training import Dataset, TrainSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Brevitas' optional-kernel import warnings
    from brevitas import nn as qnn

log = logging.getLogger(__name__)

INPUT_SHAPE: tuple[int, int, int] = digits.INPUT_SHAPE
#: Bit width at which zoo members' fault robustness is measured.
ZOO_BITS = 6
#: Samples drawn by :func:`fit_float`; the best on the *training* set is kept.
FLOW_SAMPLES = 8
ACT_COLLECT_STATS_STEPS = digits.ACT_COLLECT_STATS_STEPS


# --------------------------------------------------------------------------- data


def load_data(seed: int = 0) -> Dataset:
    """The digits split of :mod:`edgeml.models.digits` (``pixel / 16``, stratified by ``seed``)."""
    d = digits.load_digits_split(seed=seed)
    return Dataset(
        d.x_train,
        d.y_train,
        d.x_test,
        d.y_test,
        {"source": f"sklearn digits (seed {seed}); float model sampled from a SANE autoencoder"},
    )


# -------------------------------------------------------------------- the member


class FloatNet(nn.Module):
    """Float zoo member 64-16-10 (the float twin of :class:`QuantNet`; same names)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Identity()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(N_IN, HIDDEN)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(HIDDEN, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu1(self.fc1(self.flatten(self.inp(x)))))


class QuantNet(nn.Module):
    """Brevitas edge form of :class:`FloatNet`: PoT scales, Int16Bias, constant 8-bit input."""

    def __init__(self, bit_width: int = 6) -> None:
        super().__init__()
        if isinstance(bit_width, bool) or not isinstance(bit_width, int) or not 2 <= bit_width <= 8:
            raise ConfigError(f"bit_width must be an integer from 2 to 8, got {bit_width!r}")
        self.bit_width = bit_width
        self.inp = qnn.QuantIdentity(act_quant=digits.InputQuant, return_quant_tensor=True)
        self.flatten = nn.Flatten()
        self.fc1 = digits.qlinear(N_IN, HIDDEN, bit_width)
        self.relu1 = digits.qrelu(bit_width)
        self.fc2 = digits.qlinear(HIDDEN, N_CLASSES, bit_width, last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu1(self.fc1(self.flatten(self.inp(x)))))


def build_float() -> FloatNet:
    """A freshly initialised zoo member."""
    return FloatNet()


def build_qat(bit_width: int = 6) -> QuantNet:
    """The Brevitas edge form at ``bit_width`` (2-8)."""
    return QuantNet(bit_width)


def flatten_params(model: nn.Module) -> np.ndarray:
    """``fc1.weight, fc1.bias, fc2.weight, fc2.bias`` of a member as one float32 vector."""
    parts = []
    for name, _, _ in LAYERS:
        layer = getattr(model, name)
        parts += [layer.weight.detach().cpu().reshape(-1), layer.bias.detach().cpu().reshape(-1)]
    return torch.cat(parts).numpy().astype(np.float32)


def load_params(model: nn.Module, flat: np.ndarray) -> nn.Module:
    """Write a flat vector (:func:`flatten_params` order) into ``model``'s layers."""
    flat = np.asarray(flat, np.float32)
    if flat.shape != (N_WEIGHTS,):
        raise ConfigError(f"flat parameter vector must have shape ({N_WEIGHTS},), got {flat.shape}")
    off = 0
    with torch.no_grad():
        for name, _, _ in LAYERS:
            layer = getattr(model, name)
            for p in (layer.weight, layer.bias):
                n = p.numel()
                p.copy_(torch.from_numpy(flat[off : off + n].copy()).reshape(p.shape))
                off += n
    return model


def member_from_flat(flat: np.ndarray) -> FloatNet:
    """A :class:`FloatNet` holding the flat parameter vector ``flat``."""
    return load_params(FloatNet(), flat).eval()


# ---------------------------------------------------------------------------- zoo


@dataclass(frozen=True)
class ZooConfig:
    """A zoo: ``runs`` training runs of the member, each checkpointed at ``checkpoints`` epochs.

    Run ``r`` draws its learning rate from ``lrs`` and its training-set fraction
    from ``fractions`` with ``numpy.random.default_rng([seed, r])`` and
    initialises the member with torch seed ``1000 * seed + r``.
    """

    runs: int = 24
    checkpoints: tuple[int, ...] = (1, 3, 8, 20)
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    fractions: tuple[float, ...] = (0.15, 0.4, 1.0)
    data_seed: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.runs, bool) or not isinstance(self.runs, int) or self.runs < 2:
            raise ConfigError(f"ZooConfig.runs must be an integer >= 2, got {self.runs!r}")
        c = list(self.checkpoints)
        if not c or c != sorted(set(c)) or c[0] < 1 or not all(isinstance(e, int) for e in c):
            raise ConfigError(
                f"ZooConfig.checkpoints must be increasing positive integers, got {self.checkpoints!r}"
            )
        if not self.lrs or min(self.lrs) <= 0:
            raise ConfigError(f"ZooConfig.lrs must be positive, got {self.lrs!r}")
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"ZooConfig.fractions must lie in (0, 1], got {self.fractions!r}")

    def key(self) -> str:
        return _key("zoo", asdict(self))


QUICK_ZOO = ZooConfig(runs=6, checkpoints=(1, 4, 12))


@dataclass(frozen=True)
class Zoo:
    """Trained members: flat parameters ``(M, P)`` and per-member labels ``(M,)``."""

    flat: np.ndarray
    test_acc: np.ndarray
    train_acc: np.ndarray
    epoch: np.ndarray
    run: np.ndarray
    lr: np.ndarray
    fraction: np.ndarray
    config: ZooConfig
    trained: bool = False  # True when this call trained it (False: read from the cache)

    def __len__(self) -> int:
        return len(self.flat)


def train_zoo(cfg: ZooConfig = ZooConfig(), cache: bool = True) -> Zoo:
    """Train (or load from the cache) the zoo of :class:`ZooConfig` ``cfg``."""
    path = _cache_root() / f"zoo-{cfg.key()}.npz"
    names = ("flat", "test_acc", "train_acc", "epoch", "run", "lr", "fraction")
    got = _load_npz(path) if cache else None
    if got is not None and all(k in got for k in names):
        return Zoo(**{k: got[k] for k in names}, config=cfg, trained=False)
    t0 = time.perf_counter()
    d = digits.load_digits_split(seed=cfg.data_seed)
    rows: dict[str, list] = {k: [] for k in names}
    for r in range(cfg.runs):
        rng = np.random.default_rng([cfg.seed, r])
        lr = float(rng.choice(cfg.lrs))
        frac = float(rng.choice(cfg.fractions))
        n = max(N_CLASSES * 4, round(frac * len(d.x_train)))
        sub = np.sort(rng.permutation(len(d.x_train))[:n])
        gen = training.seed_all(1000 * cfg.seed + r)
        model = FloatNet()
        done = 0
        for ep in cfg.checkpoints:
            training.fit(
                model,
                d.x_train[sub],
                d.y_train[sub],
                digits.zoo_loss,
                ep - done,
                gen,
                TrainSettings(lr=lr, batch_size=32),
            )
            done = ep
            rows["flat"].append(flatten_params(model))
            rows["test_acc"].append(_acc(model, d.x_test, d.y_test))
            rows["train_acc"].append(_acc(model, d.x_train, d.y_train))
            rows["epoch"].append(ep)
            rows["run"].append(r)
            rows["lr"].append(lr)
            rows["fraction"].append(frac)
    arrays = {k: np.asarray(v) for k, v in rows.items()}
    arrays["flat"] = arrays["flat"].astype(np.float32)
    if cache:
        _save_npz(path, arrays)
    log.info("SANE zoo: %d members in %.1f s", len(arrays["flat"]), time.perf_counter() - t0)
    return Zoo(**arrays, config=cfg, trained=True)


def _acc(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return training.top1_accuracy(training.predict(model, x), y)


def quantize_member(
    flat: np.ndarray, bit_width: int, x_calib: np.ndarray, steps: int = ACT_COLLECT_STATS_STEPS + 2
) -> QuantNet:
    """The Brevitas twin of a zoo member: weights copied, activation scales calibrated, no QAT.

    ``steps`` forward passes in training mode (no gradient) let the ReLU quantizer
    collect its statistics and fix its power-of-two scale; the weights stay the
    member's own (rounded to ``bit_width`` bits by the weight quantizer).
    """
    q = QuantNet(bit_width)
    training.init_from_float(q, member_from_flat(flat))
    x = torch.from_numpy(np.ascontiguousarray(x_calib, np.float32))
    rng = np.random.default_rng(0)
    q.train()
    with torch.no_grad():
        for _ in range(steps):
            q(x[rng.choice(len(x), size=min(64, len(x)), replace=False)])
    return q.eval()


def member_mean_sdc(
    flat: np.ndarray, bit_width: int, data: Dataset, fault_samples: int
) -> tuple[float, float]:
    """``(mean SDC, quantized accuracy)`` of one member: exhaustive weight/bias bit flips.

    Exports the quantized member to QONNX, compiles the golden integer model and runs
    :func:`edgeml.fault_injection.campaign.run_campaign` over every stored weight and
    bias bit with ``fault_samples`` test digits (SDC: top-1 changes).
    """
    from edgeml.fault_injection.campaign import run_campaign
    from edgeml.fault_injection.sites import PERMANENT_PARAMS, enumerate_sites
    from edgeml.golden import GoldenModel

    g = GoldenModel.from_torch(quantize_member(flat, bit_width, data.x_train), INPUT_SHAPE)
    xs, ys = data.x_test[:fault_samples], data.y_test[:fault_samples]
    codes = g.quantize_input(xs, on_overflow="saturate")
    res = run_campaign(g, codes, ys, enumerate_sites(g, PERMANENT_PARAMS), progress=False)
    return float(np.mean(res.sdc_rate)), float(res.baseline_accuracy)


def zoo_robustness(
    zoo: Zoo, bit_width: int = ZOO_BITS, fault_samples: int = 200, cache: bool = True
) -> dict[str, np.ndarray]:
    """``{"mean_sdc", "q_acc"}`` per member (:func:`member_mean_sdc`), cached by zoo and settings."""
    key = _key("sdc", {"zoo": zoo.config.key(), "bits": bit_width, "samples": fault_samples})
    path = _cache_root() / f"sdc-{key}.npz"
    got = _load_npz(path) if cache else None
    if got is not None and got.get("mean_sdc", np.zeros(0)).shape == (len(zoo),):
        return got
    d = digits.load_digits_split(seed=zoo.config.data_seed)
    data = Dataset(d.x_train, d.y_train, d.x_test, d.y_test)
    t0 = time.perf_counter()
    res = np.array([member_mean_sdc(f, bit_width, data, fault_samples) for f in zoo.flat])
    out = {"mean_sdc": res[:, 0], "q_acc": res[:, 1]}
    if cache:
        _save_npz(path, out)
    log.info("SANE zoo robustness: %d members in %.1f s", len(zoo), time.perf_counter() - t0)
    return out


@dataclass(frozen=True)
class AEConfig:
    """Autoencoder training: Adam steps, batch, contrastive weight ``gamma``, view noise."""

    steps: int = 1500
    batch: int = 32
    lr: float = 2e-3
    gamma: float = 0.05
    noise: float = 0.05
    d_model: int = D_MODEL
    d_latent: int = D_LATENT
    token_size: int = TOKEN_SIZE
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "d_model", "d_latent", "token_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"AEConfig.{name} must be a positive integer, got {v!r}")
        if not 0.0 <= self.gamma < 1.0:
            raise ConfigError(f"AEConfig.gamma must be in [0, 1), got {self.gamma!r}")


QUICK_AE = AEConfig(steps=200)
#: The zoo and autoencoder :func:`fit_float` (the flow's train stage) uses.
FLOW_ZOO = ZooConfig()
FLOW_AE = AEConfig()


@dataclass
class TrainedAE:
    """A trained autoencoder with its layout and normaliser; ``history`` holds the loss curve."""

    model: SaneAE
    layout: TokenLayout
    norm: Normalizer
    history: dict[str, list[float]] = field(default_factory=dict)
    trained: bool = False

    def tokens(self, flat: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(tokenize(self.norm(flat), self.layout))

    def embed(self, flat: np.ndarray) -> np.ndarray:
        """Per-token embeddings ``(N, T, d_latent)`` of flat parameter vectors."""
        self.model.eval()
        with torch.no_grad():
            return self.model.cpu().encode(self.tokens(flat)).numpy()

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Flat parameter vectors decoded from embeddings ``(N, T, d_latent)``."""
        self.model.eval()
        with torch.no_grad():
            tok = self.model.cpu().decode(torch.from_numpy(np.asarray(z, np.float32))).numpy()
        return self.norm.inverse(detokenize(tok, self.layout))

    def reconstruction_error(self, flat: np.ndarray) -> float:
        """Mean squared error of the reconstruction, in normalised units (masked)."""
        rec = self.decode(self.embed(flat))
        return float(np.mean((self.norm(rec) - self.norm(flat)) ** 2))


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2 * mask).sum() / (mask.sum() * len(pred))


def train_autoencoder(zoo: Zoo, cfg: AEConfig = AEConfig(), cache: bool = True) -> TrainedAE:
    """Train SANE on ``zoo`` (reconstruction + ``gamma`` x NT-Xent over augmented views), cached.

    Each step draws ``batch`` members; each gets two views (a random hidden-neuron
    permutation plus Gaussian noise of ``noise`` normalised units); the loss is
    ``(1 - gamma)`` x the masked MSE of reconstructing each view's *clean*
    permuted tokens plus ``gamma`` x NT-Xent between the views' projections.
    """
    layout = token_layout(cfg.token_size)
    norm = Normalizer.fit(zoo.flat)
    training.seed_all(cfg.seed)  # the initial weights depend on cfg.seed only
    model = SaneAE(layout, cfg.d_model, cfg.d_latent)
    path = _cache_root() / f"ae-{_key('ae', {'zoo': zoo.config.key(), **asdict(cfg)})}.npz"
    got = _load_npz(path) if cache else None
    if got is not None:
        state = {k: torch.from_numpy(v) for k, v in got.items() if not k.startswith("_")}
        try:
            model.load_state_dict(state)
            hist = {"loss": got["_loss"].tolist()} if "_loss" in got else {}
            return TrainedAE(model.eval(), layout, norm, hist, trained=False)
        except RuntimeError as exc:
            log.warning("SANE autoencoder cache %s does not fit (%s); retraining", path, exc)
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    dev = training.device()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    normed = norm(zoo.flat)
    mask = torch.from_numpy(layout.mask.astype(np.float32)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps)
    model.to(dev).train()
    losses: list[float] = []
    try:
        for _ in range(cfg.steps):
            idx = rng.choice(len(normed), size=min(cfg.batch, len(normed)), replace=False)
            views, clean = [], []
            for _v in range(2):
                perms = np.stack([rng.permutation(HIDDEN) for _ in idx])
                p = np.stack(
                    [permute_hidden(normed[i], pm) for i, pm in zip(idx, perms, strict=True)]
                )
                clean.append(torch.from_numpy(tokenize(p, layout)).to(dev))
                noisy = p + cfg.noise * rng.standard_normal(p.shape).astype(np.float32)
                views.append(torch.from_numpy(tokenize(noisy, layout)).to(dev))
            z = [model.encode(v) for v in views]
            rec = (
                sum(_masked_mse(model.decode(zi), c, mask) for zi, c in zip(z, clean, strict=True))
                / 2
            )
            loss = (1 - cfg.gamma) * rec
            if cfg.gamma > 0:
                loss = loss + cfg.gamma * nt_xent(model.project(z[0]), model.project(z[1]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(rec.detach()))
    finally:
        torch.set_num_threads(threads)
    model = model.cpu().eval()
    if cache:
        arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        arrays["_loss"] = np.asarray(losses)
        _save_npz(path, arrays)
    log.info("SANE autoencoder: %d steps in %.1f s", cfg.steps, time.perf_counter() - t0)
    return TrainedAE(model, layout, norm, {"loss": losses}, trained=True)


# ------------------------------------------------------------------------- probes


def pooled_embeddings(ae: TrainedAE, flat: np.ndarray, std: bool = True) -> np.ndarray:
    """Layer-wise pooled embeddings: per layer the mean (and with ``std`` the std) over tokens.

    ``(N, layers * d_latent * (2 if std else 1))``; both poolings are invariant to the
    order of a layer's neurons. SANE's probe uses the mean; the std adds the spread of
    the tokens, as the weight-statistics baseline does for the weights.
    """
    z = ae.embed(flat)
    layer = ae.layout.pos[:, 1]
    parts = [z[:, layer == li].mean(axis=1) for li in np.unique(layer)]
    if std:
        parts += [z[:, layer == li].std(axis=1) for li in np.unique(layer)]
    return np.concatenate(parts, axis=1)


def weight_statistics(flat: np.ndarray) -> np.ndarray:
    """Baseline features (Unterthiner et al.): mean, std and 0/25/50/75/100 % quantiles per tensor."""
    flat = np.asarray(flat, np.float64)
    feats = []
    for wsl, bsl in _layer_slices().values():
        for s in (wsl, bsl):
            v = flat[:, s]
            feats += [v.mean(1), v.std(1), *np.quantile(v, [0, 0.25, 0.5, 0.75, 1], axis=1)]
    return np.stack(feats, axis=1)


def probe(
    features: np.ndarray,
    target: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    shuffle: np.random.Generator | None = None,
) -> dict[str, float]:
    """Ridge probe, cross-validated: R^2 and Spearman of the out-of-fold predictions.

    For each ``(train, test)`` split a ridge regression (standardised features, alpha
    by leave-one-out CV on the training part) predicts the test members; the scores
    are over all test members together. With ``shuffle`` the training targets of
    each split are permuted first (the chance-level control).
    """
    from scipy.stats import spearmanr
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    idx, preds = [], []
    for train, test in splits:
        y = target[train] if shuffle is None else shuffle.permutation(target[train])
        reg = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        reg.fit(features[train], y)
        idx.append(test)
        preds.append(reg.predict(features[test]))
    i, pred = np.concatenate(idx), np.concatenate(preds)
    rho = spearmanr(pred, target[i]).statistic
    return {"r2": float(r2_score(target[i], pred)), "spearman": float(np.nan_to_num(rho))}


def run_folds(zoo: Zoo, folds: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` train/test splits of the members; fold ``k`` holds out runs ``r % folds == k``.

    All checkpoints of a run are on one side, so a probe never sees a sibling of a
    test member.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= zoo.config.runs:
        raise ConfigError(f"folds must be an integer from 2 to {zoo.config.runs}, got {folds!r}")
    held = [zoo.run % folds == k for k in range(folds)]
    return [(np.flatnonzero(~h), np.flatnonzero(h)) for h in held]


# ----------------------------------------------------------------------- sampling


def sample_models(
    ae: TrainedAE,
    zoo: Zoo,
    n: int,
    seed: int = 0,
    anchor_fraction: float = 0.3,
    bandwidth: float = 0.25,
) -> np.ndarray:
    """``n`` new flat parameter vectors decoded from embeddings drawn around good members.

    SANE's anchor sampling: the embeddings of the best ``anchor_fraction`` of the
    zoo (by test accuracy) define a Gaussian kernel density per token (bandwidth
    ``bandwidth`` x the anchors' per-dimension std); a sample picks an anchor, adds
    kernel noise to every token embedding and decodes.
    """
    if not 0.0 < anchor_fraction <= 1.0:
        raise ConfigError(f"anchor_fraction must be in (0, 1], got {anchor_fraction!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    k = max(2, round(anchor_fraction * len(zoo)))
    anchors = np.argsort(-zoo.test_acc, kind="stable")[:k]
    z = ae.embed(zoo.flat[anchors])
    sd = z.std(axis=0, keepdims=True)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, k, size=n)
    zs = z[pick] + bandwidth * sd[0] * rng.standard_normal((n, *z.shape[1:]))
    return ae.decode(zs.astype(np.float32))


def finetune(
    model: nn.Module, data: Dataset, epochs: int, seed: int = 0, lr: float = 1e-3
) -> nn.Module:
    """``epochs`` epochs of Adam on the training split (batch 32)."""
    gen = training.seed_all(seed)
    return training.fit(
        model,
        data.x_train,
        data.y_train,
        digits.zoo_loss,
        epochs,
        gen,
        TrainSettings(lr=lr, batch_size=32),
    )


def fit_float(data: Dataset, epochs: int, seed: int = 0) -> FloatNet:
    """The design's float model: *sampled from SANE*, then fine-tuned ``epochs`` epochs.

    Trains (or loads from the cache) :data:`FLOW_ZOO` on the digits split of ``seed``
    (the flow's ``load_data(seed)``) and :data:`FLOW_AE`, draws
    :data:`FLOW_SAMPLES` models (:func:`sample_models`, seeded by ``seed``) and keeps
    the one with the best accuracy on ``data``'s *training* split.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be a non-negative integer, got {epochs!r}")
    zoo = train_zoo(replace(FLOW_ZOO, data_seed=seed))  # no member has seen data's test split
    ae = train_autoencoder(zoo, FLOW_AE)
    flats = sample_models(ae, zoo, FLOW_SAMPLES, seed=seed)
    accs = [_acc(member_from_flat(f), data.x_train, data.y_train) for f in flats]
    best = int(np.argmax(accs))
    log.info("SANE samples: train accuracy %s; kept #%d", np.round(accs, 3).tolist(), best)
    return finetune(member_from_flat(flats[best]), data, epochs, seed)


# ------------------------------------------------------------------------ finding


def finding(seed: int = 0, quick: bool = False) -> dict[str, float]:
    """Probes of accuracy and mean SDC, and sampled models against random init.

    Returns ``zoo_members``, the zoo's accuracy / SDC ranges, ``ae_rec_first`` /
    ``ae_rec_last`` (reconstruction loss at the first / last 5 % of steps),
    ``probe/<target>/<features>/<r2|spearman>`` for targets ``acc`` and
    ``sdc`` with features ``sane`` (layer-wise mean and std of the embeddings),
    ``sane_mean`` (mean only), ``stats`` (weight statistics), ``combined`` (both)
    and ``shuffled`` (``sane`` features, permuted training labels), plus
    ``probe/sdc/acc_only`` (the member's test accuracy as the only feature),
    ``sample/zero_shot``, ``sample/ft1`` (after 1 epoch), ``random/ft1``
    (random init, same epoch), ``anchor_acc`` (mean accuracy of the anchors),
    and ``seconds``. ``quick`` uses :data:`QUICK_ZOO`, :data:`QUICK_AE` and 100
    fault samples.
    """
    t0 = time.perf_counter()
    zcfg = QUICK_ZOO if quick else ZooConfig()
    zcfg = ZooConfig(**{**asdict(zcfg), "seed": seed})
    acfg = AEConfig(**{**asdict(QUICK_AE if quick else AEConfig()), "seed": seed})
    zoo = train_zoo(zcfg)
    rob = zoo_robustness(zoo, ZOO_BITS, 100 if quick else 200)
    ae = train_autoencoder(zoo, acfg)
    out: dict[str, float] = {"zoo_members": float(len(zoo))}
    out["zoo_acc_min"], out["zoo_acc_max"] = float(zoo.test_acc.min()), float(zoo.test_acc.max())
    out["zoo_sdc_min"] = float(rob["mean_sdc"].min())
    out["zoo_sdc_max"] = float(rob["mean_sdc"].max())
    loss = np.asarray(ae.history.get("loss", [np.nan]))
    w = max(1, len(loss) // 20)
    out["ae_rec_first"], out["ae_rec_last"] = float(loss[:w].mean()), float(loss[-w:].mean())
    splits = run_folds(zoo)
    feats = {
        "sane": pooled_embeddings(ae, zoo.flat),
        "sane_mean": pooled_embeddings(ae, zoo.flat, std=False),
        "stats": weight_statistics(zoo.flat),
    }
    feats["combined"] = np.concatenate([feats["sane"], feats["stats"]], axis=1)
    rng = np.random.default_rng(seed)
    for k, v in probe(zoo.test_acc[:, None], rob["mean_sdc"], splits).items():
        out[f"probe/sdc/acc_only/{k}"] = v
    for tname, target in (("acc", zoo.test_acc), ("sdc", rob["mean_sdc"])):
        for fname, f in feats.items():
            for k, v in probe(f, target, splits).items():
                out[f"probe/{tname}/{fname}/{k}"] = v
        for k, v in probe(feats["sane"], target, splits, shuffle=rng).items():
            out[f"probe/{tname}/shuffled/{k}"] = v
    # sampling: zero-shot and one epoch of fine-tuning against random init
    data = load_data(zcfg.data_seed)
    n_samples = 3 if quick else 5
    flats = sample_models(ae, zoo, n_samples, seed=seed)
    zero, ft, rnd = [], [], []
    for i, f in enumerate(flats):
        m = member_from_flat(f)
        zero.append(_acc(m, data.x_test, data.y_test))
        ft.append(_acc(finetune(m, data, 1, seed + i), data.x_test, data.y_test))
        training.seed_all(10_000 + seed + i)
        ft_r = finetune(FloatNet(), data, 1, seed + i)
        rnd.append(_acc(ft_r, data.x_test, data.y_test))
    k = max(2, round(0.3 * len(zoo)))
    out["anchor_acc"] = float(np.sort(zoo.test_acc)[::-1][:k].mean())
    out["sample/zero_shot"] = float(np.mean(zero))
    out["sample/ft1"] = float(np.mean(ft))
    out["random/ft1"] = float(np.mean(rnd))
    out["seconds"] = time.perf_counter() - t0
    return out


def _table(res: dict[str, float]) -> str:
    rows = [
        f"zoo: {res['zoo_members']:.0f} digits MLPs 64-{HIDDEN}-10, test accuracy "
        f"{res['zoo_acc_min']:.3f}..{res['zoo_acc_max']:.3f}, mean SDC ({ZOO_BITS}-bit, "
        f"every weight/bias bit) {res['zoo_sdc_min']:.4f}..{res['zoo_sdc_max']:.4f}",
        f"autoencoder reconstruction loss: {res['ae_rec_first']:.3f} -> {res['ae_rec_last']:.3f}",
        "ridge probe, 3-fold over runs      R^2    Spearman",
    ]
    for tname, label in (("acc", "accuracy"), ("sdc", "mean SDC")):
        for fname, flabel in (
            ("sane", "SANE mean+std pool"),
            ("sane_mean", "SANE mean pool"),
            ("stats", "weight statistics"),
            ("combined", "SANE + statistics"),
            ("shuffled", "shuffled labels"),
            ("acc_only", "test accuracy only"),
        ):
            if f"probe/{tname}/{fname}/r2" not in res:
                continue
            k = f"probe/{tname}/{fname}/"
            rows.append(
                f"  {label:<9} {flabel:<22}{res[k + 'r2']:>7.3f}{res[k + 'spearman']:>9.3f}"
            )
    rows += [
        f"sampled models: zero-shot accuracy {res['sample/zero_shot']:.3f} (anchors "
        f"{res['anchor_acc']:.3f}); after 1 epoch {res['sample/ft1']:.3f} vs random init "
        f"{res['random/ft1']:.3f}",
        f"({res['seconds']:.0f} s)",
    ]
    return "\n".join(rows)


# ---------------------------------------------------------------------- registry


def _spec() -> Any:
    from . import zoo

    return zoo.DesignSpec(
        name="sane",
        title=f"SANE-sampled digits MLP 64-{HIDDEN}-10 (weights decoded from a weight-token "
        "autoencoder trained on a zoo)",
        task="classification",
        input_shape=INPUT_SHAPE,
        load_data=load_data,
        build_float=build_float,
        build_qat=build_qat,
        loss=zoo.cross_entropy,
        metrics=zoo.accuracy_metrics,
        epochs={"float": 1, "qat": 15, "finetune": 15},
        settings=TrainSettings(lr=1e-3),
        float_settings=TrainSettings(lr=1e-3, batch_size=32),
        fit_float=fit_float,
        notes=(
            "float model sampled from SANE (anchor KDE in embedding space, best of "
            f"{FLOW_SAMPLES} by training accuracy) and fine-tuned 1 epoch"
        ),
    )


DESIGNS = {"sane": _spec()}


def main(argv: list[str] | None = None) -> None:
    """``python -m edgeml.models.sane [--quick] [--seed N]``: print the finding's table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="zoo / autoencoder / sampling seed")
    ap.add_argument("--quick", action="store_true", help="small zoo and short training (~30 s)")
    args = ap.parse_args(argv)
    print(_table(finding(seed=args.seed, quick=args.quick)))


if __name__ == "__main__":
    main()
