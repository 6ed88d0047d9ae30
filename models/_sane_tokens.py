"""Weight tokens, per-tensor normalisation, the on-disk cache and SANE's autoencoder network.

Private helper of :mod:`edgeml.models.sane` (Schürholt, Mahoney, Borth, ICML 2024,
arXiv:2406.09997): how a zoo member 64-16-10 becomes a sequence of weight tokens and
back (exactly), the function-preserving neuron permutation used as augmentation, and
the sequential transformer autoencoder. Public names are re-exported by ``sane``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeml.errors import ConfigError

log = logging.getLogger("edgeml.models.sane")

#: The zoo member (and edge) architecture: 64 inputs -> HIDDEN ReLU -> 10 logits.
N_IN = 64
HIDDEN = 16
N_CLASSES = 10
#: (name, fan-in, fan-out) of the weight layers, in forward order.
LAYERS: tuple[tuple[str, int, int], ...] = (("fc1", N_IN, HIDDEN), ("fc2", HIDDEN, N_CLASSES))
N_WEIGHTS = sum(o * (i + 1) for _, i, o in LAYERS)
#: Values per weight token (a neuron's ``fan_in + 1`` values are cut into chunks of this size).
TOKEN_SIZE = 24
#: Autoencoder widths.
D_MODEL = 48
D_LATENT = 16
CACHE_FORMAT = "edgeml-sane-v2"


def _layer_slices() -> dict[str, tuple[slice, slice]]:
    """name -> (weight slice, bias slice) into the flat vector."""
    out, off = {}, 0
    for name, fan_in, fan_out in LAYERS:
        w = slice(off, off + fan_in * fan_out)
        off += fan_in * fan_out
        b = slice(off, off + fan_out)
        off += fan_out
        out[name] = (w, b)
    return out


# ------------------------------------------------------------------ tokenisation


@dataclass(frozen=True)
class TokenLayout:
    """Where every flat parameter goes in the token sequence.

    ``index[t, j]`` is the flat index held by entry ``j`` of token ``t`` (-1 for
    padding); ``pos[t] = (token, layer, position in layer)`` are SANE's three
    position codes. Tokens are per output neuron: ``[w[n, :], b[n]]`` cut into
    ``ceil((fan_in + 1) / token_size)`` chunks, the last one zero-padded.
    """

    index: np.ndarray
    pos: np.ndarray
    token_size: int

    @property
    def n_tokens(self) -> int:
        return int(self.index.shape[0])

    @property
    def mask(self) -> np.ndarray:
        """``(tokens, token_size)`` True where an entry holds a parameter."""
        return self.index >= 0


def token_layout(token_size: int = TOKEN_SIZE) -> TokenLayout:
    """The token layout of the member architecture at ``token_size`` values per token."""
    if isinstance(token_size, bool) or not isinstance(token_size, int) or token_size < 1:
        raise ConfigError(f"token_size must be a positive integer, got {token_size!r}")
    rows, pos = [], []
    for li, (name, fan_in, fan_out) in enumerate(LAYERS):
        wsl, bsl = _layer_slices()[name]
        k = 0
        for n in range(fan_out):
            vals = [wsl.start + n * fan_in + i for i in range(fan_in)] + [bsl.start + n]
            for c in range(0, len(vals), token_size):
                chunk = vals[c : c + token_size]
                rows.append(chunk + [-1] * (token_size - len(chunk)))
                pos.append((len(pos), li, k))
                k += 1
    return TokenLayout(np.asarray(rows, np.int64), np.asarray(pos, np.int64), token_size)


def tokenize(flat: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """``(N, P)`` flat vectors -> ``(N, tokens, token_size)`` tokens (padding is 0)."""
    flat = np.asarray(flat)
    if flat.ndim != 2 or flat.shape[1] != N_WEIGHTS:
        raise ConfigError(f"flat must have shape (N, {N_WEIGHTS}), got {flat.shape}")
    tok = flat[:, np.maximum(layout.index, 0)]
    tok[:, ~layout.mask] = 0
    return tok


def detokenize(tokens: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """Inverse of :func:`tokenize` (padding entries are ignored)."""
    tokens = np.asarray(tokens)
    want = (layout.n_tokens, layout.token_size)
    if tokens.ndim != 3 or tokens.shape[1:] != want:
        raise ConfigError(f"tokens must have shape (N, {want[0]}, {want[1]}), got {tokens.shape}")
    flat = np.zeros((len(tokens), N_WEIGHTS), tokens.dtype)
    m = layout.mask
    flat[:, layout.index[m]] = tokens[:, m]
    return flat


def permute_hidden(flat: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Reorder the hidden neurons (fc1 rows and bias, fc2 columns): the function is unchanged."""
    flat = np.asarray(flat)
    perm = np.asarray(perm)
    if sorted(perm.tolist()) != list(range(HIDDEN)):
        raise ConfigError(f"perm must be a permutation of range({HIDDEN})")
    sl = _layer_slices()
    out = flat.copy()
    w1 = flat[..., sl["fc1"][0]].reshape(*flat.shape[:-1], HIDDEN, N_IN)
    out[..., sl["fc1"][0]] = w1[..., perm, :].reshape(*flat.shape[:-1], -1)
    out[..., sl["fc1"][1]] = flat[..., sl["fc1"][1]][..., perm]
    w2 = flat[..., sl["fc2"][0]].reshape(*flat.shape[:-1], N_CLASSES, HIDDEN)
    out[..., sl["fc2"][0]] = w2[..., :, perm].reshape(*flat.shape[:-1], -1)
    return out


@dataclass(frozen=True)
class Normalizer:
    """Per-tensor z-scoring of flat vectors (mean and std of each parameter tensor over a zoo)."""

    mean: np.ndarray  # (P,) broadcast of each tensor's mean
    std: np.ndarray

    @classmethod
    def fit(cls, flat: np.ndarray) -> Normalizer:
        flat = np.asarray(flat, np.float64)
        mean, std = np.zeros(N_WEIGHTS), np.ones(N_WEIGHTS)
        for wsl, bsl in _layer_slices().values():
            for s in (wsl, bsl):
                mean[s] = flat[:, s].mean()
                std[s] = max(flat[:, s].std(), 1e-8)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def __call__(self, flat: np.ndarray) -> np.ndarray:
        return ((np.asarray(flat, np.float32) - self.mean) / self.std).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float32) * self.std + self.mean).astype(np.float32)


# -------------------------------------------------------------------------- cache


def _cache_root() -> Path:
    from edgeml.toolchain import cache_dir

    return cache_dir() / "sane"


def _key(kind: str, settings: dict[str, Any]) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, "kind": kind, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Atomic write: a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        log.warning("SANE cache %s unreadable (%s); rebuilding it", path, exc)
        return None


# -------------------------------------------------------------------- autoencoder


class SaneAE(nn.Module):
    """SANE's sequential autoencoder over weight tokens.

    ``encode(tokens (B, T, S)) -> (B, T, d_latent)``: linear token embedding plus
    learned embeddings of SANE's three position codes, a transformer encoder and a
    linear bottleneck per token. ``decode`` mirrors it back to ``(B, T, S)``.
    ``project`` is the contrastive head on the mean-pooled embedding.
    """

    def __init__(
        self,
        layout: TokenLayout,
        d_model: int = D_MODEL,
        d_latent: int = D_LATENT,
        layers: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__()
        if d_model % heads:
            raise ConfigError(f"d_model ({d_model}) must be a multiple of heads ({heads})")
        s, t = layout.token_size, layout.n_tokens
        self.register_buffer("pos", torch.from_numpy(layout.pos.copy()))
        n_layer = int(layout.pos[:, 1].max()) + 1
        n_in = int(layout.pos[:, 2].max()) + 1

        def embeds() -> nn.ModuleList:
            return nn.ModuleList(
                [
                    nn.Embedding(t, d_model),
                    nn.Embedding(n_layer, d_model),
                    nn.Embedding(n_in, d_model),
                ]
            )

        def stack() -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(
                d_model, heads, 2 * d_model, dropout=0.0, batch_first=True, norm_first=True
            )
            return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

        self.tok_in = nn.Linear(s, d_model)
        self.pos_enc = embeds()
        self.encoder = stack()
        self.to_latent = nn.Linear(d_model, d_latent)
        self.from_latent = nn.Linear(d_latent, d_model)
        self.pos_dec = embeds()
        self.decoder = stack()
        self.tok_out = nn.Linear(d_model, s)
        self.proj = nn.Sequential(nn.Linear(d_latent, 32), nn.ReLU(), nn.Linear(32, 16))

    def _pos(self, emb: nn.ModuleList) -> torch.Tensor:
        return sum(e(self.pos[:, i]) for i, e in enumerate(emb))

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.encoder(self.tok_in(tokens) + self._pos(self.pos_enc)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.tok_out(self.decoder(self.from_latent(z) + self._pos(self.pos_dec)))

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return self.proj(z.mean(dim=1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(tokens))


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent (SimCLR) loss between two batches of views: row ``i`` of ``a`` matches row ``i`` of ``b``."""
    z = nn.functional.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / temperature
    n = len(a)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), -1e9)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return nn.functional.cross_entropy(sim, target)
