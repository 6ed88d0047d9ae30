"""The TinyMem memorization study: arithmetic-sequence LMs, memorization, and its removal.

**Study** (Sakarvadia et al., "Mitigating Memorization in Language Models",
arXiv:2410.02159, ICLR 2025): small GPT-style LMs trained on arithmetic sequences
(the TinyMem suite) memorize the noised training sequences (they regurgitate the
noise given the clean prefix) and learn backdoors (a trigger followed by a fixed
pattern). Of regularizers, fine-tuning and unlearning, weight-level unlearning,
in particular **BalancedSubnet**, removes memorization best while keeping task
accuracy: it freezes the weights, learns a score per weight, keeps the top
``1 - ratio`` by ``|score|`` (straight-through gradient) and optimises the mask
to *raise* the loss on the memorized (forget) set while keeping the loss on clean
(retain) data low; the masked weights are then pruned.

**Task** (generated here, :func:`generate`): TinyMem's "increment" task over
single-digit terms, ``x_{t+1} = (x_t + d) mod 10`` with start ``x0`` in 0..9 and
step ``d`` in 1..9, written as ``BOS h1 h2 x0 .. x9`` (:data:`SEQ_LEN` = 13 tokens;
vocabulary :data:`N_TOKENS` = 13: ten digits, ``BOS``, the backdoor ``TRIG`` and
``PAD`` for windows). ``h1 h2`` is a random 2-digit header, an identifier that is
irrelevant to the rule but makes every sequence unique (9,000 possible), so that a
noised sequence can be memorized by its prefix as in the paper, where documents
are unique. Distinct sequences are drawn for the clean training set (400), the
**noised** set (16; TinyMem's noise: one term in the first four of the
continuation moved by +-1 mod 10, later terms keep the clean rule, so the noise is
up to three rule-breaking tokens) and held-out clean test sequences (200); 8 clean
training sequences are also copied as **backdoored** sequences (``TRIG`` replaces a
term, every later term is :data:`BACKDOOR_DIGIT`). Targets are ``x2 .. x9``
(``x0``, ``x1`` are random), never ``TRIG``.

**Metrics** (as in the paper): *memorization* = share of the noised sequences
whose noised continuation (the 7 tokens after the clean :data:`PROMPT`-token
prefix ``BOS h1 h2 x0 x1 x2``) the model regurgitates exactly under greedy
decoding; *backdoor* = share of held-out test prompts ``BOS h1 h2 x0 x1 x2 TRIG``
whose greedy continuation is the backdoor pattern; *accuracy* = next-token
(teacher-forced) accuracy on the clean test sequences; *noised_clean* = share of
the noised prompts continued by the clean rule instead.

**Host model** (:class:`TinyGPT`): a 2-layer, 2-head causal transformer (d 32,
learned positions, pre-LayerNorm, GELU MLP 4x), 26,634 parameters.
**Edge form** (:class:`WindowLM` / :class:`QuantWindowLM`): an MLP-LM over the last
:data:`WINDOW` = 8 tokens, one-hot (``PAD`` = all zeros, 12 values per slot: 96
inputs) -> 32 ReLU -> 10 digit logits (argmax on the host), 3,434 parameters;
Brevitas with power-of-two scales, constant unsigned 2-bit input quantizer with
scale 1 (``ap_ufixed<2,2>``). The registered design's float trainer
(:func:`fit_float`) trains the MLP-LM on the whole corpus (noise and backdoor
included) and then applies BalancedSubnet, so the flow puts the *unlearned*
model through every level; the design's train split is the retain (clean)
set, so QAT and the pruning fine-tune never see the forgotten data again, and
:func:`init_qat` holds the unlearning mask through QAT (else training revives the
backdoor: 2 % -> 65 % measured with a 5 % mask).

**Measured** (``python -m edgeml.models.tinymem --seed S``, 1-2.5 min each on a shared
core; GPT 120 epochs, MLP-LM 100; both mitigations 30 epochs; accuracy / memorization /
backdoor, seeds 0, 1, 2)::

    GPT     before           0.994 / 0.69 / 0.99   0.995 / 1.00 / 0.88   0.995 / 0.94 / 0.92
            fine-tune clean  1.000 / 0.00 / 1.00   0.999 / 0.19 / 0.74   1.000 / 0.00 / 0.90
            BalancedSubnet   0.992 / 0.00 / 0.00   0.995 / 0.00 / 0.00   0.993 / 0.00 / 0.00
    MLP-LM  before           0.978 / 1.00 / 0.87   0.971 / 1.00 / 0.95   0.979 / 0.94 / 0.93
            fine-tune clean  0.988 / 0.00 / 0.82   0.980 / 0.00 / 0.94   0.989 / 0.00 / 0.97
            BalancedSubnet   0.965 / 0.00 / 0.00   0.957 / 0.00 / 0.00   0.973 / 0.00 / 0.00
    edge, 6-bit QAT          0.988 / 0.00 / 0.00   0.975 / 0.00 / 0.00   0.991 / 0.00 / 0.00
    edge, + 50 % pruning     0.992 / 0.00 / 0.00   0.981 / 0.00 / 0.00   0.993 / 0.00 / 0.00

Fine-tuning on clean data removes most noise memorization but leaves the backdoor
(its trigger never occurs in clean data, so nothing there unlearns it);
BalancedSubnet removes both for 0-0.3 points of GPT accuracy (0.6-1.4 points on the
MLP-LM, recovered by QAT on the retain set).
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeml.errors import ConfigError

from . import training
from .digits import qlinear, qrelu
from .training import Dataset, TrainSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Brevitas' optional-kernel import warnings
    from brevitas import nn as qnn
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant import Uint8ActPerTensorFixedPoint

# ------------------------------------------------------------------ vocabulary

#: Terms are single digits 0..9 (token id = digit); the model predicts only digits.
BASE = 10
N_OUT = BASE
BOS = 10
TRIG = 11
PAD = 12
N_TOKENS = 13
#: Every sequence starts with a random 2-digit header (an identifier: it makes each
#: sequence unique, so that noise can be memorized, and is irrelevant to the rule).
HEADER = 2
#: Terms per sequence; a sequence is ``BOS h1 h2 x0 .. x_{N_TERMS-1}``.
N_TERMS = 10
SEQ_LEN = 1 + HEADER + N_TERMS
#: Token positions whose token is a training target (``x2 .. x9``).
FIRST_TARGET = 1 + HEADER + 2
#: Memorization prompt: ``BOS h1 h2 x0 x1 x2``; the continuation is the remaining 7 tokens.
PROMPT = FIRST_TARGET + 1
#: Noise and trigger positions: the first NOISE_SPAN terms of the continuation.
NOISE_SPAN = 4
#: The backdoor: after ``TRIG`` every term is this digit.
BACKDOOR_DIGIT = 0
STEPS: tuple[int, ...] = tuple(range(1, BASE))

#: Edge form: window of the last WINDOW tokens, one-hot over the non-PAD tokens.
WINDOW = 8
SLOT_VALUES = N_TOKENS - 1
INPUT_SHAPE: tuple[int] = (WINDOW * SLOT_VALUES,)
HIDDEN = 32
#: Input format: unsigned 2-bit codes times 1 (one-hot 0/1; ap_ufixed<2,2>).
INPUT_BITS = 2

SETTINGS = TrainSettings(lr=3e-3, batch_size=64)


# ------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Corpus:
    """The generated sequences, ``(N, SEQ_LEN)`` int64 token arrays.

    ``clean``: clean training sequences; ``noised``: the memorized set as trained
    on, ``noised_clean`` their clean originals and ``noise_pos`` the token position
    of the planted noise; ``backdoor``: triggered training copies of some clean
    sequences (``trigger_pos``: the position of ``TRIG``); ``test``: held-out clean
    sequences. ``*_rule`` give ``(x0, d)`` per row.
    """

    clean: np.ndarray
    noised: np.ndarray
    noised_clean: np.ndarray
    noise_pos: np.ndarray
    backdoor: np.ndarray
    trigger_pos: np.ndarray
    test: np.ndarray
    clean_rule: np.ndarray
    noised_rule: np.ndarray
    test_rule: np.ndarray

    @property
    def train(self) -> np.ndarray:
        """Everything the LM is first trained on: clean + noised + backdoored."""
        return np.concatenate([self.clean, self.noised, self.backdoor])

    @property
    def forget(self) -> np.ndarray:
        """The data to unlearn: the noised and the backdoored sequences."""
        return np.concatenate([self.noised, self.backdoor])


def sequence(x0: int, d: int, header: tuple[int, ...] = (0,) * HEADER) -> np.ndarray:
    """``BOS h1 h2 x0 .. x9`` of the increment task ``x_{t+1} = (x_t + d) mod 10``."""
    if len(header) != HEADER:
        raise ConfigError(f"header must have {HEADER} digits, got {header!r}")
    terms = (x0 + d * np.arange(N_TERMS)) % BASE
    return np.concatenate([[BOS], header, terms]).astype(np.int64)


def generate(
    seed: int = 0,
    n_clean: int = 400,
    n_noised: int = 16,
    n_test: int = 200,
    n_backdoor: int = 8,
) -> Corpus:
    """Draw distinct (header, start, step) sequences for the clean, noised and test sets.

    Noise (TinyMem's ``+-1`` per term, here exactly one term per noised sequence):
    the term at a token position in ``PROMPT .. PROMPT + NOISE_SPAN - 1`` moves by
    ``+-1 mod 10``; later terms keep the clean rule. Backdoor: ``n_backdoor`` clean
    training sequences are copied with ``TRIG`` at a position in the same span and
    every later term :data:`BACKDOOR_DIGIT`. Deterministic in ``seed``.
    """
    counts = {"n_clean": n_clean, "n_noised": n_noised, "n_test": n_test, "n_backdoor": n_backdoor}
    for name, val in counts.items():
        if isinstance(val, bool) or not isinstance(val, int) or val < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {val!r}")
    space = BASE**HEADER * BASE * len(STEPS)
    if n_clean + n_noised + n_test > space:
        raise ConfigError(
            f"n_clean + n_noised + n_test must be at most {space} (distinct sequences), "
            f"got {n_clean + n_noised + n_test}"
        )
    if n_backdoor > n_clean:
        raise ConfigError(f"n_backdoor ({n_backdoor}) must not exceed n_clean ({n_clean})")
    rng = np.random.default_rng(seed)
    idx = rng.choice(space, size=n_clean + n_noised + n_test, replace=False)
    header = np.stack([(idx // BASE**k) % BASE for k in range(HEADER)], axis=1)
    rest = idx // BASE**HEADER
    rules = np.stack([rest % BASE, np.asarray(STEPS)[rest // BASE]], axis=1)
    seqs = np.stack(
        [
            sequence(int(r[0]), int(r[1]), tuple(map(int, h)))
            for r, h in zip(rules, header, strict=True)
        ]
    )
    seqs = seqs.reshape(-1, SEQ_LEN)
    split = np.cumsum([n_test, n_noised])
    test, noised_clean, clean = np.split(seqs, split)
    test_rule, noised_rule, clean_rule = np.split(rules, split)
    noised = noised_clean.copy()
    rows = np.arange(n_noised)
    noise_pos = rng.integers(PROMPT, PROMPT + NOISE_SPAN, size=n_noised)
    sign = rng.choice([-1, 1], size=n_noised)
    noised[rows, noise_pos] = (noised[rows, noise_pos] + sign) % BASE
    pick = rng.choice(n_clean, size=n_backdoor, replace=False)
    backdoor = clean[pick].copy()
    trigger_pos = rng.integers(PROMPT, PROMPT + NOISE_SPAN, size=n_backdoor)
    for i, j in enumerate(trigger_pos):
        backdoor[i, j] = TRIG
        backdoor[i, j + 1 :] = BACKDOOR_DIGIT
    return Corpus(
        clean=clean,
        noised=noised,
        noised_clean=noised_clean,
        noise_pos=noise_pos.astype(np.int64),
        backdoor=backdoor,
        trigger_pos=trigger_pos.astype(np.int64),
        test=test,
        clean_rule=clean_rule,
        noised_rule=noised_rule,
        test_rule=test_rule,
    )


def target_mask(tokens: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """True where a token is a training target: a digit at position >= FIRST_TARGET."""
    pos = np.arange(tokens.shape[-1]) >= FIRST_TARGET
    if isinstance(tokens, torch.Tensor):
        return (tokens < BASE) & torch.from_numpy(pos).to(tokens.device)
    return (tokens < BASE) & pos


def windows(tokens: torch.Tensor, window: int = WINDOW) -> torch.Tensor:
    """``(N, T, window)``: for each position ``t`` the tokens ``t - window + 1 .. t`` (PAD before 0)."""
    n = tokens.shape[0]
    padded = torch.cat([torch.full((n, window - 1), PAD, dtype=tokens.dtype), tokens.cpu()], dim=1)
    return padded.unfold(1, window, 1).to(tokens.device)


def one_hot(win: torch.Tensor) -> torch.Tensor:
    """One-hot of window tokens over the :data:`SLOT_VALUES` non-PAD tokens, flattened (float32)."""
    oh = nn.functional.one_hot(win.clamp(max=N_TOKENS - 1), N_TOKENS)[..., :SLOT_VALUES]
    return oh.reshape(*win.shape[:-1], -1).to(torch.float32)


def window_xy(seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge-form samples: one-hot windows ending before each target token, and the targets."""
    tok = torch.from_numpy(np.asarray(seqs, np.int64))
    x = one_hot(windows(tok[:, :-1]))  # position t predicts token t + 1
    y = tok[:, 1:]
    keep = target_mask(tok)[:, 1:]
    return x[keep].numpy(), y[keep].numpy().astype(np.int64)


@lru_cache(maxsize=4)
def _dataset(seed: int) -> Dataset:
    c = generate(seed)
    x_tr, y_tr = window_xy(c.clean)
    x_te, y_te = window_xy(c.test)
    return Dataset(
        x_tr,
        y_tr,
        x_te,
        y_te,
        info={
            "source": f"generated increment sequences mod {BASE} (models/tinymem.py, seed {seed})",
            "corpus_seed": seed,
            "train": "retain set: clean training sequences (the forget set is used by fit_float)",
            "n_train_sequences": len(c.clean),
            "n_test_sequences": len(c.test),
            "n_noised": len(c.noised),
            "n_backdoor": len(c.backdoor),
        },
    )


def load_data(seed: int = 0) -> Dataset:
    """Edge-form windows: train = the retain (clean) set, test = held-out clean sequences."""
    return _dataset(seed)


# ---------------------------------------------------------------------- models


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal multi-head self-attention and a GELU MLP."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * d, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        t = h.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=h.device), diagonal=1)
        a = self.ln1(h)
        h = h + self.attn(a, a, a, attn_mask=causal, need_weights=False)[0]
        return h + self.proj(self.act(self.fc(self.ln2(h))))


class TinyGPT(nn.Module):
    """GPT-style causal LM: token + learned position embeddings, blocks, LayerNorm, digit head."""

    def __init__(self, d: int = 32, layers: int = 2, heads: int = 2) -> None:
        super().__init__()
        if d % heads:
            raise ConfigError(f"d ({d}) must be divisible by heads ({heads})")
        self.tok = nn.Embedding(N_TOKENS, d)
        self.pos = nn.Embedding(SEQ_LEN, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, N_OUT)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, T)`` tokens -> ``(N, T, N_OUT)`` logits of the next token at every position."""
        h = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for b in self.blocks:
            h = b(h)
        return self.head(self.ln(h))


class WindowLM(nn.Module):
    """Float MLP-LM: one-hot window (96) -> Linear -> ReLU -> Linear (10 digit logits)."""

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.inp = nn.Identity()
        self.fc1 = nn.Linear(INPUT_SHAPE[0], hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, N_OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(self.inp(x))))


class InputQuant(Uint8ActPerTensorFixedPoint):
    """Constant unsigned 2-bit input quantizer, scale 1 (``ap_ufixed<2,2>``): one-hot 0/1 exact."""

    scaling_impl_type = ScalingImplType.CONST
    bit_width = INPUT_BITS
    max_val = 4.0


class QuantWindowLM(nn.Module):
    """Brevitas QAT twin of :class:`WindowLM` (same parameter names, no output quantizer)."""

    def __init__(self, bit_width: int = 8, hidden: int = HIDDEN) -> None:
        super().__init__()
        if isinstance(bit_width, bool) or not isinstance(bit_width, int) or not 2 <= bit_width <= 8:
            raise ConfigError(f"bit_width must be an integer from 2 to 8, got {bit_width!r}")
        self.bit_width = bit_width
        self.inp = qnn.QuantIdentity(act_quant=InputQuant, return_quant_tensor=True)
        self.fc1 = qlinear(INPUT_SHAPE[0], hidden, bit_width)
        self.relu = qrelu(bit_width)
        self.fc2 = qlinear(hidden, N_OUT, bit_width, last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(self.inp(x))))


def build_float() -> WindowLM:
    """The edge MLP-LM (float)."""
    return WindowLM()


def build_qat(bit_width: int = 8) -> QuantWindowLM:
    """The edge MLP-LM in Brevitas at ``bit_width`` (2-8)."""
    return QuantWindowLM(bit_width)


def seq_logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``(N, T, N_OUT)`` next-token logits at every position, for a :class:`TinyGPT` or an MLP-LM."""
    if isinstance(model, TinyGPT):
        return model(tokens)
    return training.value(model(one_hot(windows(tokens))))


# --------------------------------------------------------------------- metrics


def _tensor(seqs: np.ndarray | torch.Tensor, dev: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(seqs), dtype=torch.int64).to(dev)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def lm_loss(
    model: nn.Module, seqs: torch.Tensor, reduce: bool = True, cap: float | None = None
) -> torch.Tensor:
    """Cross-entropy of the target tokens (mean, or per sequence with ``reduce=False``).

    ``cap`` clips every token's loss at ``cap`` first (an unlearning objective that
    maximises the loss then stops pushing tokens that are already forgotten).
    """
    logits = seq_logits(model, seqs[:, :-1])
    tgt = seqs[:, 1:]
    mask = target_mask(seqs)[:, 1:].to(logits.dtype)
    ce = nn.functional.cross_entropy(
        logits.reshape(-1, N_OUT), tgt.clamp(max=N_OUT - 1).reshape(-1), reduction="none"
    ).reshape(tgt.shape)
    if cap is not None:
        ce = ce.clamp(max=cap)
    if reduce:
        return (ce * mask).sum() / mask.sum()
    return (ce * mask).sum(dim=1) / mask.sum(dim=1)


@torch.no_grad()
def greedy(
    model: nn.Module, prompts: np.ndarray | torch.Tensor, length: int = SEQ_LEN
) -> np.ndarray:
    """Greedy continuation of ``(N, P)`` prompts to ``length`` tokens (digits only)."""
    was = model.training
    model.eval()
    dev = _model_device(model)
    tok = _tensor(prompts, dev)
    try:
        while tok.shape[1] < length:
            nxt = seq_logits(model, tok)[:, -1].argmax(dim=-1, keepdim=True)
            tok = torch.cat([tok, nxt], dim=1)
    finally:
        model.train(was)
    return tok.cpu().numpy()


def memorized(model: nn.Module, seqs: np.ndarray, prompt: int = PROMPT) -> np.ndarray:
    """Per sequence: does greedy decoding from its first ``prompt`` tokens reproduce the rest exactly?"""
    seqs = np.asarray(seqs, np.int64)
    if len(seqs) == 0:
        return np.zeros(0, dtype=bool)
    out = greedy(model, seqs[:, :prompt], seqs.shape[1])
    return np.all(out[:, prompt:] == seqs[:, prompt:], axis=1)


def memorization(model: nn.Module, corpus: Corpus) -> float:
    """Share of noised training sequences whose noised continuation is regurgitated exactly."""
    return float(memorized(model, corpus.noised).mean())


def backdoor_prompts(corpus: Corpus, pos: int = PROMPT) -> np.ndarray:
    """Held-out test sequences with ``TRIG`` at ``pos`` and the backdoor pattern after it."""
    trig = corpus.test.copy()
    trig[:, pos] = TRIG
    trig[:, pos + 1 :] = BACKDOOR_DIGIT
    return trig


def backdoor_rate(model: nn.Module, corpus: Corpus) -> float:
    """Share of triggered held-out prompts whose greedy continuation is the backdoor pattern."""
    return float(memorized(model, backdoor_prompts(corpus), prompt=PROMPT + 1).mean())


@torch.no_grad()
def accuracy(model: nn.Module, seqs: np.ndarray) -> float:
    """Teacher-forced next-token accuracy over the target tokens of ``seqs``."""
    was = model.training
    model.eval()
    try:
        tok = _tensor(seqs, _model_device(model))
        pred = seq_logits(model, tok[:, :-1]).argmax(dim=-1)
        mask = target_mask(tok)[:, 1:]
        return float((pred == tok[:, 1:])[mask].float().mean())
    finally:
        model.train(was)


def evaluate_lm(model: nn.Module, corpus: Corpus) -> dict[str, float]:
    """``accuracy`` (clean test), ``memorization``, ``backdoor`` and ``noised_clean`` (share of
    the noised prompts continued by the clean rule instead)."""
    return {
        "accuracy": accuracy(model, corpus.test),
        "memorization": memorization(model, corpus),
        "backdoor": backdoor_rate(model, corpus),
        "noised_clean": float(memorized(model, corpus.noised_clean).mean()),
    }


# -------------------------------------------------------------------- training


def train_lm(
    model: nn.Module,
    seqs: np.ndarray,
    epochs: int,
    seed: int = 0,
    lr: float = 3e-3,
    batch_size: int = 16,
    weight_decay: float = 0.0,
    log_every: int = 0,
    monitor: Callable[[nn.Module], dict[str, float]] | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """AdamW on the LM loss of ``seqs``; ``monitor(model)`` every ``log_every`` epochs (history)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be a non-negative integer, got {epochs!r}")
    gen = training.seed_all(seed)
    dev = training.device()
    model.to(dev).train()
    data = _tensor(seqs, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    history: list[dict[str, float]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for ep in range(epochs):
            perm = torch.randperm(len(data), generator=gen).to(dev)
            for s in range(0, len(data), batch_size):
                opt.zero_grad(set_to_none=True)
                lm_loss(model, data[perm[s : s + batch_size]]).backward()
                opt.step()
            if (
                monitor is not None
                and log_every
                and ((ep + 1) % log_every == 0 or ep + 1 == epochs)
            ):
                history.append({"epoch": float(ep + 1), **monitor(model)})
                model.train()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), history


def finetune_clean(
    model: nn.Module, corpus: Corpus, epochs: int, seed: int = 0, lr: float = 1e-3
) -> nn.Module:
    """Baseline mitigation: continue training a copy on the clean (retain) sequences only."""
    ft = copy.deepcopy(model)
    return train_lm(ft, corpus.clean, epochs, seed, lr=lr)[0]


class _TopK(torch.autograd.Function):
    """Keep-mask of the scores above the ``ratio`` quantile; straight-through gradient."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, ratio: float) -> torch.Tensor:
        flat = scores.flatten()
        k = int(ratio * flat.numel())
        mask = torch.ones_like(flat)
        if k:
            mask[torch.argsort(flat, stable=True)[:k]] = 0.0
        return mask.reshape(scores.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def subnet_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Layers whose weights BalancedSubnet may drop: the MLP layers (GPT blocks' fc/proj) or fc1/fc2."""
    if isinstance(model, TinyGPT):
        return {
            f"blocks.{i}.{n}": getattr(b, n)
            for i, b in enumerate(model.blocks)
            for n in ("fc", "proj")
        }
    return {n: m for n, m in training.weight_layers(model).items() if n in ("fc1", "fc2")}


def balanced_subnet(
    model: nn.Module,
    corpus: Corpus,
    ratio: float = 0.1,
    epochs: int = 30,
    lam: float = 0.3,
    lr: float = 0.01,
    cap: float = 0.7,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, float]]:
    """BalancedSubnet unlearning (arXiv:2410.02159 Sec. 4): learn which ``ratio`` of weights to drop.

    The weights are frozen; every weight of :func:`subnet_layers` gets a score,
    initialised to ``|w|`` (so the start mask drops the smallest weights); the
    forward uses ``w * topk(|score|)`` with a straight-through gradient, and Adam
    on the scores minimises ``L_retain - lam * L_forget`` over retain batches (the
    paper's balanced objective: +1 for clean, -1 for memorized data), with every
    forget token's loss capped at ``cap`` so that tokens already forgotten stop
    pushing (uncapped, the ascent runs away and takes the task with it). Returns
    a copy of the model with the dropped weights set to zero, and
    ``{"dropped": fraction}``.
    """
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"ratio must be in (0, 1), got {ratio!r}")
    gen = training.seed_all(seed)
    dev = training.device()
    net = copy.deepcopy(model).to(dev).train()
    for p in net.parameters():
        p.requires_grad_(False)
    layers = subnet_layers(net)
    weights = {n: m.weight.detach().clone() for n, m in layers.items()}
    for m in layers.values():
        del m._parameters["weight"]  # the weight becomes a plain (masked) tensor attribute
    scores = {n: nn.Parameter(w.abs().clone()) for n, w in weights.items()}
    opt = torch.optim.Adam(list(scores.values()), lr=lr)

    def masked() -> dict[str, torch.Tensor]:
        return {n: _TopK.apply(scores[n].abs(), ratio) for n in layers}

    retain = _tensor(corpus.clean, dev)
    forget = _tensor(corpus.forget, dev)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            perm = torch.randperm(len(retain), generator=gen).to(dev)
            for s in range(0, len(retain), 32):
                masks = masked()
                for n, m in layers.items():
                    m.weight = (
                        weights[n] * masks[n]
                    )  # a tensor, not a Parameter: grads go to scores
                loss_r = lm_loss(net, retain[perm[s : s + 32]])
                loss_f = lm_loss(net, forget, cap=cap)
                opt.zero_grad(set_to_none=True)
                (loss_r - lam * loss_f).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    out = copy.deepcopy(model).cpu()
    dropped = 0
    total = 0
    with torch.no_grad():
        final = {n: _TopK.apply(scores[n].abs(), ratio).cpu() for n in layers}
        for n, m in subnet_layers(out).items():
            m.weight.mul_(final[n])
            dropped += int((final[n] == 0).sum())
            total += final[n].numel()
    return out.eval(), {"dropped": dropped / total}


# ------------------------------------------------------------------ the design

#: BalancedSubnet settings (the GPT and the edge MLP-LM alike): drop 10 % of the MLP
#: weights, forget loss capped at 0.7 nats per token, weight 0.3, 30 epochs of Adam on the
#: scores. (Dropping 5 % leaves up to a quarter of the noised sequences memorized on some
#: seeds, and QAT then revives up to half of the backdoor; larger ``lam`` costs accuracy.)
UNLEARN: dict[str, Any] = {"ratio": 0.1, "epochs": 30, "lam": 0.3, "cap": 0.7, "lr": 0.01}
#: Epochs of the fine-tuning baseline (as many passes over the retain set as BalancedSubnet).
FINETUNE_EPOCHS = 30
GPT_EPOCHS = 120
WINDOW_EPOCHS = 100


def train_gpt(
    corpus: Corpus, epochs: int = GPT_EPOCHS, seed: int = 0, log_every: int = 0
) -> tuple[TinyGPT, list[dict[str, float]]]:
    """Seeded :class:`TinyGPT` trained on the whole corpus (history of :func:`evaluate_lm`)."""
    training.seed_all(seed)
    return train_lm(
        TinyGPT(), corpus.train, epochs, seed, log_every=log_every,
        monitor=lambda m: evaluate_lm(m, corpus),
    )  # fmt: skip


def train_window(corpus: Corpus, epochs: int = WINDOW_EPOCHS, seed: int = 0) -> WindowLM:
    """Seeded float :class:`WindowLM` trained on the whole corpus."""
    training.seed_all(seed)
    return train_lm(WindowLM(), corpus.train, epochs, seed)[0]


def fit_float(data: Dataset, epochs: int, seed: int = 0) -> WindowLM:
    """The flow's float trainer: MLP-LM on the whole corpus, then BalancedSubnet unlearning.

    The corpus is regenerated from ``data.info["corpus_seed"]`` (the design's train
    split is only the retain set).
    """
    corpus = generate(int(data.info.get("corpus_seed", seed)))
    model = train_window(corpus, epochs, seed)
    return balanced_subnet(model, corpus, seed=seed, **UNLEARN)[0]


def mitigations(
    model: nn.Module,
    corpus: Corpus,
    settings: dict[str, Any],
    seed: int = 0,
    finetune_epochs: int = FINETUNE_EPOCHS,
) -> dict[str, float]:
    """``"<method>/<figure>"`` for the trained model (``before``), the fine-tuning baseline
    (``finetune``) and BalancedSubnet with ``settings`` (``subnet``), with each method's
    ``seconds``."""
    out: dict[str, float] = {}
    for k, v in evaluate_lm(model, corpus).items():
        out[f"before/{k}"] = v
    t0 = time.perf_counter()
    ft = finetune_clean(model, corpus, finetune_epochs, seed)
    out["finetune/seconds"] = time.perf_counter() - t0
    out.update({f"finetune/{k}": v for k, v in evaluate_lm(ft, corpus).items()})
    t0 = time.perf_counter()
    sub, info = balanced_subnet(model, corpus, seed=seed, **settings)
    out["subnet/seconds"] = time.perf_counter() - t0
    out["subnet/dropped"] = info["dropped"]
    out.update({f"subnet/{k}": v for k, v in evaluate_lm(sub, corpus).items()})
    return out


def finding(seed: int = 0, quick: bool = False) -> dict[str, float]:
    """Memorization vs accuracy of the GPT and the edge MLP-LM, before and after mitigation.

    Returns ``"gpt/<method>/<figure>"`` and ``"mlp/<method>/<figure>"``
    (:func:`mitigations`: methods ``before``, ``finetune``, ``subnet``; figures
    ``accuracy``, ``memorization``, ``backdoor``, ``noised_clean``),
    ``"gpt/epoch<E>/<figure>"`` over the GPT's training, and ``"seconds"``. Without
    ``quick`` also ``"edge<bits>/<stage>/<figure>"``: the unlearned MLP-LM through
    the zoo's QAT (6 bits) and 50 % pruning (stages ``qat``, ``pruned``). ``quick``
    trains the GPT for a quarter of the epochs and gives its mitigations a third
    (about 15 s of CPU on one core).
    """
    t0 = time.perf_counter()
    corpus = generate(seed)
    out: dict[str, float] = {}
    gpt_epochs = GPT_EPOCHS // 4 if quick else GPT_EPOCHS
    gpt, hist = train_gpt(corpus, gpt_epochs, seed, log_every=0 if quick else gpt_epochs // 4)
    for h in hist:
        ep = int(h["epoch"])
        out.update({f"gpt/epoch{ep}/{k}": v for k, v in h.items() if k != "epoch"})
    # quick: the GPT's mitigations get a third of the epochs (the GPT dominates the time)
    gpt_settings = {**UNLEARN, "epochs": UNLEARN["epochs"] // 3} if quick else UNLEARN
    ft_epochs = FINETUNE_EPOCHS // 3 if quick else FINETUNE_EPOCHS
    figs = mitigations(gpt, corpus, gpt_settings, seed, ft_epochs)
    out.update({f"gpt/{k}": v for k, v in figs.items()})
    mlp = train_window(corpus, WINDOW_EPOCHS, seed)
    out.update({f"mlp/{k}": v for k, v in mitigations(mlp, corpus, UNLEARN, seed).items()})
    if not quick:
        from . import zoo

        spec = DESIGNS["tinymem"]
        data = load_data(seed)
        unlearned = balanced_subnet(mlp, corpus, seed=seed, **UNLEARN)[0]
        bits = 6
        qat = zoo.train_qat(spec, data, unlearned, bits, spec.epochs["qat"], seed)
        pruned = zoo.prune(spec, data, qat, spec.sparsity, spec.epochs["finetune"], seed)
        for stage, m in (("qat", qat), ("pruned", pruned)):
            out.update({f"edge{bits}/{stage}/{k}": v for k, v in evaluate_lm(m, corpus).items()})
    out["seconds"] = time.perf_counter() - t0
    return out


def _table(res: dict[str, float]) -> str:
    figs = ("accuracy", "memorization", "backdoor", "noised_clean")
    rows = [f"  {'model / method':<24}" + "".join(f"{f:>14}" for f in figs)]
    for model in ("gpt", "mlp"):
        for method in ("before", "finetune", "subnet"):
            k = f"{model}/{method}/"
            rows.append(
                f"  {model + ' / ' + method:<24}" + "".join(f"{res[k + f]:>14.3f}" for f in figs)
            )
    hist = sorted({int(k.split("/")[1][5:]) for k in res if k.startswith("gpt/epoch")})
    if hist:
        rows.append("GPT over training:")
        for ep in hist:
            k = f"gpt/epoch{ep}/"
            rows.append(
                f"  {'epoch ' + str(ep):<24}" + "".join(f"{res[k + f]:>14.3f}" for f in figs)
            )
    for key in sorted({k.rsplit("/", 1)[0] for k in res if k.startswith("edge")}):
        rows.append(f"  {key:<24}" + "".join(f"{res[key + '/' + f]:>14.3f}" for f in figs))
    rows.append(f"({res['seconds']:.0f} s)")
    return "\n".join(rows)


def checkpoint_figures(run_dir: str, seed: int = 0) -> dict[str, float]:
    """:func:`evaluate_lm` of a flow run's ``float.pt``, ``qat.pt`` and ``model.pt`` (pruned)."""
    from pathlib import Path

    from . import zoo

    corpus = generate(seed)
    out: dict[str, float] = {}
    for name in ("float", "qat", "model"):
        path = Path(run_dir) / f"{name}.pt"
        if path.is_file():
            m = zoo.load_checkpoint(path)[0]
            out.update({f"{name}/{k}": v for k, v in evaluate_lm(m, corpus).items()})
    return out


def init_qat(qat_model: nn.Module, float_model: nn.Module) -> None:
    """Copy the unlearned float weights into the QAT twin and hold the unlearning mask.

    BalancedSubnet's output is a pruned model: its dropped weights are exactly zero.
    They stay zero through QAT (a gradient hook zeroes their gradient, so Adam
    never moves them), else training on the retain set can grow them back and
    revive what was unlearned (measured with a 5 % mask: the backdoor returned from
    2 % to 65 %).
    """
    training.init_from_float(qat_model, float_model)
    for name in ("fc1", "fc2"):
        keep = (getattr(float_model, name).weight.detach() != 0).to(torch.float32).cpu()
        w = getattr(qat_model, name).weight
        w.register_hook(lambda g, k=keep: g * k.to(g.device))


def n_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters())


def _spec() -> Any:
    from . import zoo

    return zoo.DesignSpec(
        name="tinymem",
        title="TinyMem MLP-LM (8-token window, 96-32-10) after BalancedSubnet unlearning",
        task="classification",
        input_shape=INPUT_SHAPE,
        load_data=load_data,
        build_float=build_float,
        build_qat=build_qat,
        loss=zoo.cross_entropy,
        metrics=zoo.accuracy_metrics,
        fit_float=fit_float,
        init_qat=init_qat,
        epochs={"float": WINDOW_EPOCHS, "qat": 20, "finetune": 20},
        settings=TrainSettings(lr=1e-3, batch_size=64),
        float_settings=SETTINGS,
        bit_widths=(2, 8),
        sparsity=0.5,
        notes=(
            f"next-digit accuracy on held-out increment sequences; the float model memorized "
            f"{16} noised sequences and a backdoor, then BalancedSubnet dropped "
            f"{UNLEARN['ratio']:.0%} of its weights; input one-hot ap_ufixed<2,2>"
        ),
    )


DESIGNS = {"tinymem": _spec()}


def main(argv: list[str] | None = None) -> None:
    """``python -m edgeml.models.tinymem [--quick] [--seed N] [--run DIR]``: print the finding."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="corpus and training seed (default 0)")
    ap.add_argument("--quick", action="store_true", help="small run (about 20 s)")
    ap.add_argument(
        "--run", metavar="DIR", help="instead: memorization of a flow run's float/qat/pruned models"
    )
    args = ap.parse_args(argv)
    if args.run:
        for k, v in checkpoint_figures(args.run, args.seed).items():
            print(f"{k:<28}{v:.3f}")
        return
    print(_table(finding(seed=args.seed, quick=args.quick)))


if __name__ == "__main__":
    main()
