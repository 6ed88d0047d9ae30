"""RandNLA study: randomized low-rank factorisation and sketched least squares on the jet tagger.

The seed is Derezinski & Mahoney, "Recent and upcoming developments in Randomized
Numerical Linear Algebra for machine learning" (arXiv:2406.11151); the
methods are from Halko, Martinsson & Tropp, "Finding structure with randomness"
(SIAM Review 2011, arXiv:0909.4061: the range finder with power iterations and
its error bounds), Drineas & Mahoney, "RandNLA" (CACM 2016) and Murray et al.,
"Randomized Numerical Linear Algebra: a perspective on the field with an eye to
software" (arXiv:2302.11474: sketch-and-solve and sketch-and-precondition least
squares with Gaussian, SRHT and CountSketch sketches).

Three parts, all on the jet tagger of :mod:`edgeml.models.jets` (same data and
16-64-32-32-5 architecture):

(a) :func:`svd_table`: the randomized SVD (:mod:`edgeml.lowrank`) of each trained
    weight matrix vs the exact SVD, over ranks and power iterations, with HMT's
    expected-error bound; the spectrum summary (top singular value, ``||W||_F^2``,
    stable rank) estimated matrix-free by the analysis stack's Lanczos and Hutch++
    (:mod:`edgeml.models.analysis.curvature`) on the Gram operator ``W^T W``.
(b) :func:`sketch_study`: a ridge least-squares head on random ReLU features of
    the jets, solved exactly and by sketch-and-solve with Gaussian, SRHT and
    CountSketch sketches of size ``m`` (residual ratio vs ``m``, time, accuracy),
    and by sketch-and-precondition (LSQR on ``A R^{-1}``, which reaches the exact
    residual).
(c) :func:`compression_curve`, the finding: accuracy vs da4ml's LUT estimate of
    6-bit QAT models compressed by randomized low rank (+ magnitude pruning)
    against magnitude pruning alone, at matched nonzero weight counts.

The design ``randnla`` is the jet tagger compressed by the flow's ``--low-rank``
stage with rank 8 by default (fc1-fc3 factorised, 4,256 -> 2,080 weights; fc4 is
kept, where rank 8 would add weights), then 50 % pruning: about 1,040 nonzero
weights, as many as the ``jet`` design's 75 % pruning leaves (1,064).

Measured (``python -m edgeml.models.randnla``, seed 0, 328 s on one shared core;
float 67.77 %). (a) One range-finder pass is 1.12-1.65x the optimal spectral error
``sigma_{k+1}``, two power iterations 1.00-1.06x, always inside HMT's bound; Lanczos
and Hutch++ give ``sigma_1`` to 4 digits and the stable rank (2.6-4.3) within 4 %.
(b) The ridge head (n = 24,500, d = 129) sketched to m = 2/4/8/16 d has residual
ratios 1.44/1.14/1.07/1.03 (Gaussian; its theory: 1.42/1.16/1.07/1.03), SRHT and
CountSketch alike; CountSketch takes 22-37 ms, SRHT ~0.3 s, Gaussian 0.25-1.6 s,
the exact QR solve 0.56 s; sketch-and-precondition reaches ratio 1.000000 in 34
LSQR iterations. (c) 6-bit QAT, da4ml's LUT estimate (the combinational CMVM cost)::

    nonzero   pruning alone          rank 8 + pruning       rank 4 + pruning
    ~2,000    67.67 %  27.4k (50 %)   66.25 %  20.5k (0 %)
    ~1,050    67.33 %  18.3k (75 %)   67.10 %  15.7k (50 %)   65.06 %  11.9k (0 %)
    ~530      66.97 %   9.5k (87.5%)  66.67 %   9.1k (75 %)   66.33 %   9.1k (50 %)
    ~260      32.63 %   3.1k (93.75%) 65.50 %   4.4k (87.5%)  64.64 %   4.3k (75 %)

so at equal nonzero weights low rank + pruning costs 0.2-0.3 pp of accuracy down to
~530 weights for 5-14 % fewer LUTs, and below that it is the only one that works
(pruning alone collapses at 94 %: fc4 keeps 10 of 160 weights). ``edgeml flow
--design randnla``: float 67.77 %, QAT 66.25 %, pruned 67.10 %, 0 mismatches of
20,521 vectors at every level, yosys 13,133 LUT / 3,702 FF (``jet``: 67.33 %,
15,476 / 3,010), mean SDC 0.030 over 14,608 stored-bit faults (``jet``: 0.018 over
27,664: 438 against 490 expected SDC faults, in about half the bits).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from typing import Any

import numpy as np
import torch
from scipy import linalg as sla
from scipy import sparse
from scipy.sparse.linalg import LinearOperator, lsqr
from torch import nn

from edgeml import lowrank
from edgeml.errors import ConfigError

from . import jets, training, zoo
from .training import Dataset, TrainSettings

#: The design's default rank (``DesignSpec.low_rank``) and pruning sparsity.
LOW_RANK = 8
SPARSITY = 0.5
SKETCHES: tuple[str, ...] = ("gaussian", "srht", "countsketch")
#: Sketch sizes of part (b) as multiples of the head's column count ``d``.
SKETCH_FACTORS: tuple[int, ...] = (2, 4, 8, 16)
#: Random ReLU features of the jets for the least-squares head, and its ridge weight.
N_FEATURES = 128
RIDGE = 1e-3
#: Part (a): ranks and power iterations; a small oversampling so the range finder is not
#: trivially exact on matrices with 16-64 rows.
SVD_RANKS: tuple[int, ...] = (2, 4, 8)
SVD_POWER_ITERS: tuple[int, ...] = (0, 1, 2)
SVD_OVERSAMPLE = 2
#: Part (c): (low rank or None, sparsity) points; matched nonzero counts are about 2.1k/1.9k,
#: 1.05k, 0.53k and 0.27k weights (rank 4 also factorises fc4: 148 < 160 weights).
CURVE_POINTS: tuple[tuple[int | None, float], ...] = (
    (None, 0.5),
    (None, 0.75),
    (None, 0.875),
    (None, 0.9375),
    (8, 0.0),
    (8, 0.5),
    (8, 0.75),
    (8, 0.875),
    (4, 0.0),
    (4, 0.5),
    (4, 0.75),
)
QUICK_POINTS: tuple[tuple[int | None, float], ...] = ((None, 0.875), (4, 0.5))
BITS = 6
EPOCHS = {"float": 100, "qat": 30, "finetune": 30}
QUICK_EPOCHS = {"float": 8, "qat": 3, "finetune": 3}
QUICK_TRAIN = 6000
SETTINGS = TrainSettings(lr=1e-3, batch_size=256)


# ------------------------------------------------------------------------------- sketches


def fwht(x: np.ndarray) -> np.ndarray:
    """Unnormalised fast Walsh-Hadamard transform along axis 0 (length a power of two).

    Equals ``scipy.linalg.hadamard(n) @ x`` (Sylvester order) in ``O(n log n)`` per column.
    """
    y = np.array(x, dtype=np.float64, copy=True)
    n = y.shape[0]
    if n & (n - 1):
        raise ConfigError(f"fwht needs a power-of-two length, got {n}")
    cols = y.reshape(n, -1)
    h = 1
    while h < n:
        v = cols.reshape(n // (2 * h), 2, h, -1)
        a = v[:, 0].copy()
        v[:, 0] += v[:, 1]
        v[:, 1] = a - v[:, 1]
        h *= 2
    return cols.reshape(y.shape)


def sketch(a: np.ndarray, kind: str, m: int, seed: int = 0) -> np.ndarray:
    """``S a`` for an ``m x n`` random sketch ``S`` with ``E[S^T S] = I``.

    ``gaussian``: i.i.d. ``N(0, 1/m)``, applied in row blocks (``O(mnd)``);
    ``srht``: ``sqrt(N/m) R H D`` (random signs, the Hadamard transform over ``n``
    zero-padded to ``N = 2^j``, ``m`` sampled rows; ``O(nd log n)``);
    ``countsketch``: each row added with a random sign into one of ``m`` buckets
    (``O(nnz)``).
    """
    a = np.asarray(a, dtype=np.float64)
    n = a.shape[0]
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m:
        raise ConfigError(f"sketch size m must be an integer >= 1, got {m!r}")
    rng = np.random.default_rng(seed)
    flat = a.reshape(n, -1)
    if kind == "gaussian":
        out = np.zeros((m, flat.shape[1]))
        block = max(1, 4_000_000 // max(m, 1))
        for start in range(0, n, block):
            g = rng.standard_normal((m, min(block, n - start)))
            out += g @ flat[start : start + block]
        out /= math.sqrt(m)
    elif kind == "srht":
        big = 1 << max(0, (n - 1).bit_length())
        if m > big:
            raise ConfigError(f"srht sketch size m={m} exceeds the padded length {big}")
        pad = np.zeros((big, flat.shape[1]))
        pad[:n] = flat * rng.choice([-1.0, 1.0], size=n)[:, None]
        rows = rng.choice(big, size=m, replace=False)
        out = fwht(pad)[rows] / math.sqrt(m)  # sqrt(N/m) * (H/sqrt(N))
    elif kind == "countsketch":
        bucket = rng.integers(0, m, size=n)
        sign = rng.choice([-1.0, 1.0], size=n)
        s = sparse.csr_matrix((sign, (bucket, np.arange(n))), shape=(m, n))
        out = np.asarray(s @ flat)
    else:
        raise ConfigError(f"sketch kind must be one of {', '.join(SKETCHES)}; got {kind!r}")
    return out.reshape(m, *a.shape[1:])


def ridge_objective(a: np.ndarray, b: np.ndarray, x: np.ndarray, lam: float = 0.0) -> float:
    """``sqrt(||A x - b||_F^2 + lam ||x||_F^2)``: the residual the heads are compared on."""
    r = a @ x - b
    return math.sqrt(float(np.sum(r * r)) + lam * float(np.sum(x * x)))


def solve_exact(a: np.ndarray, b: np.ndarray, lam: float = 0.0) -> np.ndarray:
    """``argmin ||A x - b||^2 + lam ||x||^2`` by a (pivoted) QR least-squares solve."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a.shape[1]
    b2 = b.reshape(len(b), -1)
    if lam > 0:
        a = np.vstack([a, math.sqrt(lam) * np.eye(d)])
        b2 = np.vstack([b2, np.zeros((d, b2.shape[1]))])
    return sla.lstsq(a, b2, lapack_driver="gelsy")[0].reshape(d, *b.shape[1:])


def sketch_and_solve(
    a: np.ndarray, b: np.ndarray, kind: str, m: int, seed: int = 0, lam: float = 0.0
) -> np.ndarray:
    """``argmin ||S (A x - b)||^2 + lam ||x||^2`` for one sketch ``S`` of ``[A b]`` (size ``m``).

    With ``m ~ d / eps`` rows (Gaussian, SRHT up to log factors, CountSketch ``~ d^2``)
    the residual is within ``1 + eps`` of the optimum with high probability.
    """
    b2 = np.asarray(b, np.float64).reshape(len(b), -1)
    sab = sketch(np.hstack([np.asarray(a, np.float64), b2]), kind, m, seed)
    d = a.shape[1]
    return solve_exact(sab[:, :d], sab[:, d:], lam).reshape(d, *np.shape(b)[1:])


def sketch_precondition(
    a: np.ndarray,
    b: np.ndarray,
    kind: str,
    m: int,
    seed: int = 0,
    tol: float = 1e-12,
    max_iter: int = 200,
) -> tuple[np.ndarray, int]:
    """Least squares by sketch-and-precondition (Blendenpik / LSRN): LSQR on ``A R^{-1}``.

    ``R`` from the QR of ``S A`` makes ``A R^{-1}`` well conditioned (condition number
    ``O(1)`` for ``m >= 2d``), so LSQR converges in a few dozen iterations to the
    exact solution. Returns ``(x, iterations of the slowest column)``.
    """
    a = np.asarray(a, np.float64)
    b2 = np.asarray(b, np.float64).reshape(len(b), -1)
    d = a.shape[1]
    _, r = np.linalg.qr(sketch(a, kind, m, seed))
    if np.min(np.abs(np.diag(r))) < 1e-12 * np.max(np.abs(np.diag(r))):
        raise ConfigError("the sketch of A is rank deficient; use a larger sketch size m")
    op = LinearOperator(
        (a.shape[0], d),
        matvec=lambda y: a @ sla.solve_triangular(r, y),
        rmatvec=lambda z: sla.solve_triangular(r, a.T @ z, trans="T"),
        dtype=np.float64,
    )
    xs, iters = [], 0
    for j in range(b2.shape[1]):
        res = lsqr(op, b2[:, j], atol=tol, btol=tol, iter_lim=max_iter)
        xs.append(sla.solve_triangular(r, res[0]))
        iters = max(iters, int(res[2]))
    return np.stack(xs, axis=1).reshape(d, *np.shape(b)[1:]), iters


def random_features(x: np.ndarray, n_features: int = N_FEATURES, seed: int = 0) -> np.ndarray:
    """``[ReLU(x W + c), 1]``: random ReLU features (Gaussian ``W``, ``c``) plus a bias column."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    w = rng.standard_normal((x.shape[1], n_features)) / math.sqrt(x.shape[1])
    c = rng.standard_normal(n_features) * 0.5
    return np.hstack([np.maximum(x @ w + c, 0.0), np.ones((len(x), 1))])


def sketch_study(
    data: Dataset,
    factors: tuple[int, ...] = SKETCH_FACTORS,
    n_features: int = N_FEATURES,
    lam: float = RIDGE,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Part (b): ridge head on random features, exact vs sketched (see module docstring).

    Returns ``"ls/d"``, ``"ls/exact/{residual,seconds,accuracy}"``,
    ``"ls/<kind>/m<f>d/{ratio,seconds,accuracy}"`` (residual ratio to the exact optimum,
    mean over ``repeats`` sketches), ``"ls/gaussian/m<f>d/expected"``
    (``sqrt(1 + d/(m-d-1))``, the exact mean for Gaussian least squares without ridge) and
    ``"ls/precond/<kind>/{ratio,iters,seconds}"`` (sketch-and-precondition at ``m = 4d``).
    """
    a = random_features(data.x_train, n_features, seed)
    a_te = random_features(data.x_test, n_features, seed)
    n_cls = int(max(data.y_train.max(), data.y_test.max())) + 1
    b = np.eye(n_cls)[data.y_train]
    d = a.shape[1]
    out: dict[str, float] = {"ls/d": float(d), "ls/n": float(len(a))}
    t0 = time.perf_counter()
    x_star = solve_exact(a, b, lam)
    out["ls/exact/seconds"] = time.perf_counter() - t0
    best = ridge_objective(a, b, x_star, lam)
    out["ls/exact/residual"] = best
    out["ls/exact/accuracy"] = float(np.mean((a_te @ x_star).argmax(1) == data.y_test))
    for kind in SKETCHES:
        for f in factors:
            m = f * d
            ratios, secs, accs = [], [], []
            for r in range(repeats):
                t0 = time.perf_counter()
                x = sketch_and_solve(a, b, kind, m, seed=seed * 1000 + r, lam=lam)
                secs.append(time.perf_counter() - t0)
                ratios.append(ridge_objective(a, b, x, lam) / best)
                accs.append(float(np.mean((a_te @ x).argmax(1) == data.y_test)))
            key = f"ls/{kind}/m{f}d"
            out[f"{key}/ratio"] = float(np.mean(ratios))
            out[f"{key}/seconds"] = float(np.mean(secs))
            out[f"{key}/accuracy"] = float(np.mean(accs))
            if kind == "gaussian":
                out[f"{key}/expected"] = math.sqrt(1 + d / (m - d - 1))
    for kind in SKETCHES:
        t0 = time.perf_counter()
        x, iters = sketch_precondition(a, b, kind, 4 * d, seed=seed)
        out[f"ls/precond/{kind}/seconds"] = time.perf_counter() - t0
        out[f"ls/precond/{kind}/iters"] = float(iters)
        out[f"ls/precond/{kind}/ratio"] = ridge_objective(a, b, x) / ridge_objective(
            a, b, solve_exact(a, b)
        )
    return out


# ------------------------------------------------------------------- (a) SVD of weights


def _gram_hvp(w: np.ndarray) -> Any:
    wt = torch.from_numpy(np.asarray(w, np.float64))
    return lambda v: wt.T @ (wt @ v)


def svd_table(
    model: nn.Module,
    ranks: tuple[int, ...] = SVD_RANKS,
    power_iters: tuple[int, ...] = SVD_POWER_ITERS,
    oversample: int = SVD_OVERSAMPLE,
    trials: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Part (a): randomized vs exact SVD of every weight matrix of a (float) model.

    ``"svd/<layer>/r<k>/q<q>/ratio"``: mean over ``trials`` of the rank-``k`` rSVD's
    spectral error over ``sigma_{k+1}`` (1 is optimal), ``".../range"``: the range
    finder's error ``||(I - QQ^T) W||`` and ``".../bound"``: HMT's bound on its mean;
    ``"svd/<layer>/{sigma1,frob2,stable_rank}"`` exact and ``..._est`` from the
    analysis stack's Lanczos (top eigenvalue of ``W^T W``) and Hutch++ (its trace).
    """
    from .analysis import curvature

    out: dict[str, float] = {}
    for name, m in training.weight_layers(model).items():
        w = m.weight.detach().double().reshape(m.weight.shape[0], -1).numpy()
        sigma = np.linalg.svd(w, compute_uv=False)
        for k in ranks:
            if k >= min(w.shape):
                continue
            for q in power_iters:
                ratios, ranges = [], []
                for t in range(trials):
                    u, s, vt = lowrank.randomized_svd(w, k, oversample, q, seed=seed + 97 * t)
                    ratios.append(lowrank.svd_errors(w, u, s, vt)["spectral"] / sigma[k])
                    qm = lowrank.randomized_range_finder(w, k + oversample, q, seed=seed + 97 * t)
                    ranges.append(float(np.linalg.norm(w - qm @ (qm.T @ w), 2)))
                key = f"svd/{name}/r{k}/q{q}"
                out[f"{key}/ratio"] = float(np.mean(ratios))
                out[f"{key}/range"] = float(np.mean(ranges))
                out[f"{key}/bound"] = lowrank.hmt_bounds(sigma, k, oversample, q)["spectral"]
                out[f"{key}/sigma_k1"] = float(sigma[k])
        dim = w.shape[1]
        hvp = _gram_hvp(w)
        top, _ = curvature.lanczos(hvp, dim, 1, steps=min(dim, 12), seed=seed)
        tr_est, _ = curvature.hutchpp_trace(hvp, dim, min(30, 3 * dim), seed=seed)
        frob2 = float(np.sum(sigma**2))
        out[f"svd/{name}/sigma1"] = float(sigma[0])
        out[f"svd/{name}/sigma1_est"] = math.sqrt(max(float(top[0]), 0.0))
        out[f"svd/{name}/frob2"] = frob2
        out[f"svd/{name}/frob2_est"] = float(tr_est)
        out[f"svd/{name}/stable_rank"] = frob2 / float(sigma[0] ** 2)
        out[f"svd/{name}/stable_rank_est"] = float(tr_est) / max(float(top[0]), 1e-300)
    return out


# ----------------------------------------------------------------- (c) compression curve


def _fit(model: nn.Module, data: Dataset, epochs: int, seed: int) -> nn.Module:
    gen = training.seed_all(seed)
    return training.fit(model, data.x_train, data.y_train, zoo.cross_entropy, epochs, gen, SETTINGS)


def train_float(data: Dataset, epochs: int, seed: int = 0) -> nn.Module:
    """The float jet tagger trained on ``data`` (initialisation and batches fixed by ``seed``)."""
    training.seed_all(seed)
    return _fit(jets.build_float(), data, epochs, seed)


def qat_model(
    float_model: nn.Module,
    data: Dataset,
    low_rank: int | float | None,
    bits: int,
    epochs: dict[str, int],
    seed: int = 0,
) -> tuple[nn.Module, dict[str, int]]:
    """QAT twin of ``float_model`` (factorised by rSVD and float fine-tuned first when
    ``low_rank`` is set, as the flow's compress stage does); returns ``(model, ranks)``."""
    ranks: dict[str, int] = {}
    src = float_model
    if low_rank:
        src, _ = lowrank.factorize(float_model, low_rank, seed=seed)
        ranks = lowrank.ranks_of(src)
        src = _fit(src, data, epochs["finetune"], seed)
    q = lowrank.restructure(jets.build_qat(bits), ranks, bits)
    training.init_from_float(q, src)
    return _fit(q, data, epochs["qat"], seed), ranks


def da4ml_cost(model: nn.Module, input_shape: tuple[int, ...] = jets.INPUT_SHAPE) -> float:
    """da4ml's own LUT cost estimate of the model's combinational RTL (export -> golden -> trace)."""
    from edgeml import rtl
    from edgeml.golden import GoldenModel

    return float(rtl.trace_golden(GoldenModel.from_torch(model, input_shape)).comb().cost)


def nonzero_weights(model: nn.Module) -> int:
    """Nonzero integer weight codes of a QAT model (what the hardware multiplies by)."""
    return int(sum(np.count_nonzero(c) for c in training.weight_codes(model).values()))


def compression_curve(
    data: Dataset,
    float_model: nn.Module,
    points: tuple[tuple[int | None, float], ...] = CURVE_POINTS,
    bits: int = BITS,
    epochs: dict[str, int] | None = None,
    seed: int = 0,
    cost: bool = True,
) -> list[dict[str, Any]]:
    """Part (c): one record per ``(low_rank, sparsity)`` point: accuracy, weights, LUT estimate.

    One QAT model per low rank (``None``: the dense model), then magnitude pruning +
    fine-tune per sparsity (as the flow does); ``luts`` is :func:`da4ml_cost`.
    """
    epochs = dict(epochs or EPOCHS)
    recs = []
    qats: dict[Any, tuple[nn.Module, dict[str, int]]] = {}
    for rank, sp in points:
        if rank not in qats:
            qats[rank] = qat_model(float_model, data, rank, bits, epochs, seed)
        q, ranks = qats[rank]
        m = q
        if sp > 0:
            m = training.prune_and_finetune(
                q, data.x_train, data.y_train, zoo.cross_entropy, sp, epochs["finetune"], seed,
                SETTINGS,
            )  # fmt: skip
        acc = training.top1_accuracy(training.predict(m, data.x_test), data.y_test)
        rec: dict[str, Any] = {
            "low_rank": rank or 0,
            "sparsity": sp,
            "accuracy": acc,
            "weights": lowrank.n_weights(m),
            "nonzero": nonzero_weights(m),
            "ranks": ranks,
        }
        if cost:
            rec["luts"] = da4ml_cost(m)
        recs.append(rec)
    return recs


def _subset(data: Dataset, n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(data.y_train), size=min(n, len(data.y_train)), replace=False))
    return Dataset(data.x_train[idx], data.y_train[idx], data.x_test, data.y_test, data.info)


def finding(seed: int = 0, quick: bool = False) -> dict[str, float]:
    """All three parts; ``"curve/<p|lr<r>>/s<sparsity>/{accuracy,nonzero,luts}"`` is the finding.

    Also ``"float/accuracy"``, part (a) keys ``"svd/..."`` and part (b) keys ``"ls/..."``
    and ``"seconds"``. ``quick`` uses 6,000 training jets, a few epochs, two curve points
    (pruning alone at 87.5 % vs rank 4 + 50 % pruning, both ~540 nonzero weights) and one
    sketch repeat (under 30 s); the full run takes a few minutes on one core.
    """
    t0 = time.perf_counter()
    data = jets.load_data(seed)
    epochs = QUICK_EPOCHS if quick else EPOCHS
    train = _subset(data, QUICK_TRAIN, seed) if quick else data
    f = train_float(train, epochs["float"], seed)
    out: dict[str, float] = {
        "float/accuracy": training.top1_accuracy(training.predict(f, data.x_test), data.y_test)
    }
    out.update(svd_table(f, trials=2 if quick else 5, seed=seed))
    out.update(
        sketch_study(
            train, factors=(2, 8) if quick else SKETCH_FACTORS, repeats=1 if quick else 3, seed=seed
        )
    )
    pts = QUICK_POINTS if quick else CURVE_POINTS
    for rec in compression_curve(train, f, pts, BITS, epochs, seed):
        tag = f"lr{rec['low_rank']}" if rec["low_rank"] else "p"
        key = f"curve/{tag}/s{rec['sparsity']:g}"
        for k in ("accuracy", "nonzero", "weights", "luts"):
            out[f"{key}/{k}"] = float(rec[k])
    out["seconds"] = time.perf_counter() - t0
    return out


def _table(res: dict[str, float]) -> str:
    rows = [f"float jet tagger: accuracy {res['float/accuracy']:.4f}", ""]
    rows.append(
        "(a) randomized SVD of the trained weights (p=2): error / sigma_{k+1}, q = power its"
    )
    layers = sorted({k.split("/")[1] for k in res if k.startswith("svd/")})
    for name in layers:
        rows.append(
            f"  {name}: sigma1 {res[f'svd/{name}/sigma1']:.3f} (Lanczos {res[f'svd/{name}/sigma1_est']:.3f}), "
            f"stable rank {res[f'svd/{name}/stable_rank']:.2f} (Hutch++ {res[f'svd/{name}/stable_rank_est']:.2f})"
        )
        for k in SVD_RANKS:
            cells = [
                f"q{q} {res[f'svd/{name}/r{k}/q{q}/ratio']:.3f}"
                f" (range {res[f'svd/{name}/r{k}/q{q}/range']:.3f} <= {res[f'svd/{name}/r{k}/q{q}/bound']:.3f})"
                for q in SVD_POWER_ITERS
                if f"svd/{name}/r{k}/q{q}/ratio" in res
            ]
            if cells:
                rows.append(f"    r={k}: " + "  ".join(cells))
    rows.append("")
    d = int(res["ls/d"])
    rows.append(
        f"(b) ridge head on {d - 1} random ReLU features, n={int(res['ls/n'])}: exact residual "
        f"{res['ls/exact/residual']:.2f}, {res['ls/exact/seconds'] * 1e3:.0f} ms, "
        f"accuracy {res['ls/exact/accuracy']:.4f}"
    )
    rows.append(f"  {'sketch':<12}{'m':>8}{'ratio':>9}{'ms':>9}{'accuracy':>10}")
    for kind in SKETCHES:
        for f in SKETCH_FACTORS:
            key = f"ls/{kind}/m{f}d"
            if f"{key}/ratio" not in res:
                continue
            extra = f"  (E={res[key + '/expected']:.3f})" if kind == "gaussian" else ""
            rows.append(
                f"  {kind:<12}{f * d:>8}{res[key + '/ratio']:>9.4f}"
                f"{res[key + '/seconds'] * 1e3:>9.1f}{res[key + '/accuracy']:>10.4f}{extra}"
            )
    for kind in SKETCHES:
        key = f"ls/precond/{kind}"
        rows.append(
            f"  precondition ({kind}, m=4d): ratio {res[key + '/ratio']:.6f} in "
            f"{int(res[key + '/iters'])} LSQR iterations, {res[key + '/seconds'] * 1e3:.0f} ms"
        )
    rows.append("")
    rows.append(f"(c) {BITS}-bit QAT jet tagger: low rank (+ pruning) vs pruning alone")
    rows.append(f"  {'method':<24}{'nonzero':>8}{'accuracy':>10}{'da4ml LUT':>11}")
    keys = sorted(
        {k.rsplit("/", 1)[0] for k in res if k.startswith("curve/")},
        key=lambda k: -res[k + "/nonzero"],
    )
    for key in keys:
        _, tag, sp = key.split("/")
        name = ("prune " if tag == "p" else f"rank {tag[2:]} + prune ") + f"{float(sp[1:]):.1%}"
        rows.append(
            f"  {name:<24}{int(res[key + '/nonzero']):>8}{res[key + '/accuracy']:>10.4f}"
            f"{res.get(key + '/luts', float('nan')):>11.0f}"
        )
    rows.append(f"({res['seconds']:.0f} s)")
    return "\n".join(rows)


# ---------------------------------------------------------------------- registry


def _spec() -> Any:
    return zoo.DesignSpec(
        name="randnla",
        title=f"Jet tagger 16-64-32-32-5 factorised by randomized SVD (rank {LOW_RANK}) + "
        f"{SPARSITY:.0%} pruning",
        task="classification",
        input_shape=jets.INPUT_SHAPE,
        load_data=jets.load_data,
        build_float=jets.build_float,
        build_qat=jets.build_qat,
        loss=zoo.cross_entropy,
        metrics=zoo.accuracy_metrics,
        epochs=dict(EPOCHS),
        sparsity=SPARSITY,
        low_rank=LOW_RANK,
        float_settings=SETTINGS,
        settings=SETTINGS,
        notes=(
            f"rank-{LOW_RANK} randomized-SVD factors of fc1-fc3 (4,256 -> 2,080 weights, a "
            f"signed {BITS}-bit power-of-two quantizer between each pair), then {SPARSITY:.0%} "
            "pruning: ~1,040 nonzero weights, as many as the jet design at 75 %"
        ),
    )


DESIGNS = {"randnla": _spec()}


def main(argv: list[str] | None = None) -> None:
    """``python -m edgeml.models.randnla [--quick] [--seed N]``: print the study's tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small run (under 30 s)")
    args = ap.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        print(_table(finding(seed=args.seed, quick=args.quick)))


if __name__ == "__main__":
    main()
