"""The convection PINN of the LossLens / loss-landscape studies, and its Tanh edge form.

**Problem** (Krishnapriyan et al., "Characterizing possible failure modes in
physics-informed neural networks", NeurIPS 2021; the PINN case of LossLens):
1-D convection ``u_t + beta u_x = 0`` on ``x in [0, 2 pi)``, ``t in [0, 1]``,
periodic in ``x``, ``u(x, 0) = sin x``; the analytic solution is
``u = sin(x - beta t)``. A plain PINN (a Tanh MLP trained on the PDE residual,
the initial condition and the periodic boundary, all by autograd) solves it at
small ``beta`` and fails at ``beta >= ~20-30``: it settles on a smooth wrong
solution. *Curriculum regularisation* (train at a small ``beta`` first, then
raise it, warm-starting each stage) is the paper's remedy. :func:`finding`
measures the relative L2 error against ``beta``, plain, with the curriculum and
with L-BFGS instead of Adam.

**Coordinates.** The networks see normalised coordinates ``xn = x / pi - 1`` and
``tn = 2 t - 1`` in ``[-1, 1]`` (host-side preprocessing; the chain rule turns
derivatives back into physical ones: ``u_x = u_xn / pi``, ``u_t = 2 u_tn``). The
edge form's input is signed 8-bit with the constant scale ``2**-7``: the 256
codes of ``xn`` are exactly the grid ``x_k = 2 pi k / 256``, and ``tn = 1``
saturates at ``127/128`` (``t = 0.996``). :func:`load_data` snaps every point
to that grid, so the on-chip inputs are the data.

**Edge form** (:class:`EdgePINN`, zoo design ``pinn``): 2 -> 16 -> Tanh -> 16 ->
Tanh -> 1 (337 parameters). In the Brevitas twin every Tanh is preceded by a
signed ``bit_width``-bit power-of-two quantizer (learned scale; the table's
index) and followed by a constant signed 8-bit quantizer with scale ``2**-7``
(``[-1, 127/128]``), so QONNX holds ``Quant -> Tanh -> Quant`` and edgeml
computes each Tanh as an exact lookup table. Weights are ``bit_width``-bit
power-of-two, biases ``Int16Bias``; the output is the last accumulator (no
output quantizer). The zoo trains both the float model and its QAT twin on the
*physics loss* (no solution data): in training mode with gradients enabled,
the model's forward returns ``[u, residual, periodic gap, initial error]`` per
point (:func:`physics_terms`) and :func:`pinn_loss` is their mean square; in
eval mode it returns ``u``. The QAT derivatives are those of the
straight-through surrogate. Float32 torch is exact for the QAT twin: the widest
accumulator (16 inputs x 127 x 127 + 2**15) is far below 2**24.

**Measured** (seed 0, CPU, one thread; relative L2 on a 256 x 100 grid)::

    beta                     1       5       10      20     30
    plain PINN, Adam         0.014   0.0077  0.0071  0.638  0.824
    beta 30 remedies: curriculum (Adam, 1-5-10-15-20-25-30) 0.150,
                      plain PINN with L-BFGS (900 iterations) 0.107

(full mode: 2-50-50-50-1, 2,000 collocation points, 3,000 Adam steps at lr 3e-3
per run.) Quick mode (2-32-32-32-1, 500 points, 400 Adam steps, 17 s): beta 1
0.039, beta 30 1.18; at beta 30 the curriculum gives 0.89 and 300 L-BFGS
iterations 0.83. So the failure mode reproduces with Adam (error below 1.5 % at
beta <= 10, 64 % at 20 and 82 % at 30), and the curriculum cuts the beta-30 error
5.5x (to 15 %, with 3.5x the steps: 1,500 per stage). It is partly an
optimisation failure: L-BFGS, which the failure-mode paper used, reaches 11 % at
beta 30 unaided here. Full mode took 20 min of wall time on heavily shared cores
(load average about 11 on 2 cores); quick mode 17 s on a quiet core.

Zoo design ``pinn`` (``edgeml flow --design pinn --bits 8``; float 200 epochs,
QAT 20, pruning 25 % + 20): relative L2 float 0.021, 8-bit QAT 0.056, pruned
0.039 (6-bit QAT: 0.17); golden IR, hls4ml C-sim (built from the golden IR:
hls4ml's own Tanh is not the QONNX function), Verilator RTL and the trained
Brevitas model all agree on 18,199 / 18,199 vectors; yosys 3,159 LUT, 763 FF,
0 DSP, 5 cycles of latency; exhaustive single-bit fault AVF 0.247 over 7,056
bits (Tanh table bits 0.04-0.05, output layer bits 0.99-1.0).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeml.errors import ConfigError

from . import training
from .training import Dataset, TrainSettings

with warnings.catch_warnings():
    # Brevitas warns at import about optional kernels it does not need here.
    warnings.simplefilter("ignore")
    from brevitas import nn as qnn
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant import (
        Int8ActPerTensorFixedPoint,
        Int8WeightPerTensorFixedPoint,
        Int16Bias,
    )

#: Convection coefficients of the full sweep and of the quick one.
BETAS: tuple[float, ...] = (1.0, 5.0, 10.0, 20.0, 30.0)
QUICK_BETAS: tuple[float, ...] = (1.0, 30.0)
#: beta of the zoo design ``pinn`` (on chip).
ZOO_BETA = 5.0
#: Hidden widths of the study's float PINN and of the edge form.
STUDY_WIDTHS: tuple[int, ...] = (50, 50, 50)
EDGE_WIDTHS: tuple[int, ...] = (16, 16)
INPUT_SHAPE: tuple[int] = (2,)
#: Input format: signed 8 bits, scale 2**-7 (normalised coordinates in [-1, 127/128]).
INPUT_FRAC = 7
DEFAULT_BIT_WIDTH = 8
ACT_COLLECT_STATS_STEPS = training.ACT_COLLECT_STATS_STEPS
#: Collocation points of the zoo data set; the test set is the 128 x 64 code grid.
N_TRAIN = 4096
TEST_GRID: tuple[int, int] = (128, 64)


# ----------------------------------------------------------------------- problem


def exact_solution(x: np.ndarray, t: np.ndarray, beta: float) -> np.ndarray:
    """``u(x, t) = sin(x - beta t)`` (physical coordinates), float64."""
    return np.sin(np.asarray(x, np.float64) - float(beta) * np.asarray(t, np.float64))


def normalise(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Physical ``(x, t)`` -> network input ``(N, 2)`` float32: ``(x / pi - 1, 2 t - 1)``."""
    return np.stack([np.asarray(x) / np.pi - 1.0, 2.0 * np.asarray(t) - 1.0], axis=-1).astype(
        np.float32
    )


def physical(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Network input ``(N, 2)`` -> physical ``(x, t)`` float64 (inverse of :func:`normalise`)."""
    p = np.asarray(points, np.float64)
    return (p[:, 0] + 1.0) * np.pi, (p[:, 1] + 1.0) / 2.0


def snap(points: np.ndarray) -> np.ndarray:
    """Round normalised points to the edge input grid ``k / 128``, ``k in [-128, 127]``."""
    q = np.clip(np.rint(np.asarray(points, np.float64) * 2**INPUT_FRAC), -128, 127)
    return (q / 2**INPUT_FRAC).astype(np.float32)


def eval_grid(nx: int = 256, nt: int = 100) -> np.ndarray:
    """An ``nx x nt`` evaluation grid of normalised points, x periodic (no x = 2 pi), t in [0, 1]."""
    if nx < 2 or nt < 2:
        raise ConfigError(f"eval_grid needs nx, nt >= 2, got {nx}, {nt}")
    x = np.arange(nx) * (2 * np.pi / nx)
    t = np.linspace(0.0, 1.0, nt)
    xx, tt = np.meshgrid(x, t, indexing="ij")
    return normalise(xx.ravel(), tt.ravel())


def relative_l2(pred: np.ndarray, truth: np.ndarray) -> float:
    """``||pred - truth||_2 / ||truth||_2`` over all points (the PINN papers' error)."""
    p = np.asarray(pred, np.float64).reshape(-1)
    q = np.asarray(truth, np.float64).reshape(-1)
    if p.shape != q.shape:
        raise ConfigError(f"relative_l2 needs equal sizes, got {p.size} and {q.size}")
    return float(np.linalg.norm(p - q) / np.linalg.norm(q))


# ----------------------------------------------------------------------- physics


def _u(model: nn.Module, pts: torch.Tensor) -> torch.Tensor:
    return training.value(model.net(pts)).reshape(-1)


def physics_terms(model: nn.Module, pts: torch.Tensor, beta: float) -> torch.Tensor:
    """``(N, 4)``: ``[u, residual, periodic gap, initial error]`` at normalised ``pts``.

    residual ``u_t + beta u_x`` at ``pts``; periodic gap ``u(0, t) - u(2 pi, t)``
    at the points' ``t``; initial error ``u(x, 0) - sin x`` at the points' ``x``.
    ``model.net`` maps ``(N, 2)`` normalised points to ``(N, 1)``.
    """
    with torch.enable_grad():
        p = pts.detach().clone().requires_grad_(True)
        u = _u(model, p)
        (g,) = torch.autograd.grad(u.sum(), p, create_graph=True)
        u_x, u_t = g[:, 0] / math.pi, 2.0 * g[:, 1]
        residual = u_t + beta * u_x
        tn = pts[:, 1:2].detach()
        left = torch.cat([torch.full_like(tn, -1.0), tn], dim=1)
        right = torch.cat([torch.full_like(tn, 1.0), tn], dim=1)
        gap = _u(model, left) - _u(model, right)
        xn = pts[:, 0:1].detach()
        start = torch.cat([xn, torch.full_like(xn, -1.0)], dim=1)
        init = _u(model, start) - torch.sin((xn.reshape(-1) + 1.0) * math.pi)
    return torch.stack([u, residual, gap, init], dim=1)


def pinn_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean square of residual + periodic gap + initial error (``out`` from :func:`physics_terms`).

    ``y`` (the analytic solution) is not used: a PINN learns from the physics alone.
    """
    if out.ndim != 2 or out.shape[1] != 4:
        raise ConfigError(
            f"pinn_loss needs the (N, 4) physics terms of a PINN in training mode, got "
            f"{tuple(out.shape)}; train a pinn design model (its forward computes them)"
        )
    return (out[:, 1:] ** 2).mean(dim=0).sum()


class _PhysicsForward(nn.Module):
    """Forward = ``net(x)`` in eval mode; the physics terms in training mode with grad enabled."""

    beta: float
    net: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return physics_terms(self, x, self.beta)
        return training.value(self.net(x))


# ----------------------------------------------------------------------- models


class PINN(_PhysicsForward):
    """Float Tanh MLP ``2 -> widths -> 1`` on normalised ``(x, t)`` (the study's PINN)."""

    def __init__(self, widths: Sequence[int] = STUDY_WIDTHS, beta: float = ZOO_BETA) -> None:
        super().__init__()
        widths = tuple(widths)
        if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
            raise ConfigError(f"widths must be positive ints, got {widths!r}")
        self.beta = float(beta)
        layers: list[nn.Module] = []
        n_in = INPUT_SHAPE[0]
        for w in widths:
            layers += [nn.Linear(n_in, w), nn.Tanh()]
            n_in = w
        layers.append(nn.Linear(n_in, 1))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):  # Xavier, as in the PINN papers
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)


class InputQuant(Int8ActPerTensorFixedPoint):
    """Constant signed 8-bit input quantizer, scale ``2**-7``: ``ap_fixed<8,1>``."""

    scaling_impl_type = ScalingImplType.CONST
    min_val = -1.0
    max_val = 1.0


class TanhOutQuant(Int8ActPerTensorFixedPoint):
    """Constant signed 8-bit Tanh output quantizer, scale ``2**-7`` (``[-1, 127/128]``)."""

    scaling_impl_type = ScalingImplType.CONST
    min_val = -1.0
    max_val = 1.0


def _check_bit_width(bit_width: int) -> None:
    if isinstance(bit_width, bool) or not isinstance(bit_width, int) or not 4 <= bit_width <= 8:
        raise ConfigError(
            f"bit_width of design 'pinn' must be an integer from 4 to 8, got {bit_width!r}"
        )


class EdgePINN(_PhysicsForward):
    """The on-chip PINN ``2 -> 16 -> Tanh -> 16 -> Tanh -> 1``; Brevitas twin when ``bit_width``.

    Layer names match between the float model and the QAT twin
    (``net.0`` the input quantizer, ``net.{1,3,5}`` linear, ``net.{2,4}`` Tanh), so QAT starts from float weights.
    """

    def __init__(
        self,
        bit_width: int | None = None,
        widths: Sequence[int] = EDGE_WIDTHS,
        beta: float = ZOO_BETA,
    ) -> None:
        super().__init__()
        if bit_width is not None:
            _check_bit_width(bit_width)
            self.bit_width = bit_width
        self.beta = float(beta)
        widths = tuple(widths)
        layers: list[nn.Module] = []
        n_in = INPUT_SHAPE[0]
        for w in widths:
            layers += [self._linear(n_in, w, bit_width, True), self._tanh(bit_width)]
            n_in = w
        layers.append(self._linear(n_in, 1, bit_width, False))
        inp = (
            nn.Identity()
            if bit_width is None
            else qnn.QuantIdentity(act_quant=InputQuant, return_quant_tensor=True)
        )
        self.net = nn.Sequential(inp, *layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _linear(n_in: int, n_out: int, bit_width: int | None, quant_out: bool) -> nn.Module:
        if bit_width is None:
            return nn.Linear(n_in, n_out)
        return qnn.QuantLinear(
            n_in,
            n_out,
            bias=True,
            weight_quant=Int8WeightPerTensorFixedPoint,
            weight_bit_width=bit_width,
            bias_quant=Int16Bias,
            return_quant_tensor=quant_out,
        )

    @staticmethod
    def _tanh(bit_width: int | None) -> nn.Module:
        if bit_width is None:
            return nn.Tanh()
        # Quant (table index, learned PoT scale) -> Tanh -> Quant (constant 2**-7).
        return qnn.QuantTanh(
            input_quant=Int8ActPerTensorFixedPoint,
            input_bit_width=bit_width,
            input_collect_stats_steps=ACT_COLLECT_STATS_STEPS,
            act_quant=TanhOutQuant,
            return_quant_tensor=True,
        )


def build_float() -> EdgePINN:
    """The float edge-form PINN (zoo design ``pinn``)."""
    return EdgePINN(None)


def build_qat(bit_width: int = DEFAULT_BIT_WIDTH) -> EdgePINN:
    """Its Brevitas QAT twin at ``bit_width`` (4..8)."""
    _check_bit_width(bit_width)
    return EdgePINN(bit_width)


def edge(model: nn.Module) -> nn.Module:
    """The whole model goes on chip (its eval-mode forward is ``net``)."""
    return model


# ----------------------------------------------------------------------- data


@lru_cache(maxsize=4)
def _data(seed: int, beta: float) -> Dataset:
    rng = np.random.default_rng(seed)
    x_train = snap(rng.uniform(-1.0, 1.0, (N_TRAIN, 2)))
    nx, nt = TEST_GRID
    cx = np.arange(-128, 128, 256 // nx)
    ct = np.arange(-128, 128, 256 // nt)
    gx, gt = np.meshgrid(cx, ct, indexing="ij")
    x_test = (np.stack([gx.ravel(), gt.ravel()], axis=1) / 2**INPUT_FRAC).astype(np.float32)

    def target(p: np.ndarray) -> np.ndarray:
        return exact_solution(*physical(p), beta).astype(np.float32)[:, None]

    return Dataset(
        x_train=x_train,
        y_train=target(x_train),
        x_test=x_test,
        y_test=target(x_test),
        info={
            "source": f"convection u_t + {beta:g} u_x = 0, u = sin(x - {beta:g} t) (seed {seed})",
            "beta": beta,
            "input": "normalised (x / pi - 1, 2 t - 1) on the 2**-7 grid",
            "n_train": N_TRAIN,
            "n_test": int(nx * nt),
        },
    )


def load_data(seed: int = 0, beta: float = ZOO_BETA) -> Dataset:
    """Collocation points (train, uniform, snapped) and the 128 x 64 code grid (test).

    ``x``: normalised ``(N, 2)`` points on the input grid; ``y``: ``(N, 1)`` analytic
    ``u`` (for metrics only; training uses the physics loss).
    """
    return _data(int(seed), float(beta))


def metrics(outputs: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Relative L2 and max abs error of ``outputs`` against the analytic ``y``."""
    out = np.asarray(outputs, np.float64).reshape(-1)
    ref = np.asarray(y, np.float64).reshape(-1)
    return {"rel_l2": relative_l2(out, ref), "max_abs": float(np.abs(out - ref).max())}


def edge_metrics(
    edge_outputs: np.ndarray, model: nn.Module, x: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """The same figures from on-chip outputs (real values: codes x output scale)."""
    return metrics(edge_outputs, x, y)


# ----------------------------------------------------------------------- the study


def _device(device: str | torch.device | None) -> torch.device:
    return training.device() if device is None else torch.device(device)


OPTIMIZERS: tuple[str, ...] = ("adam", "lbfgs")


def train_pinn(
    beta: float,
    steps: int,
    seed: int = 0,
    widths: Sequence[int] = STUDY_WIDTHS,
    n_points: int = 1000,
    lr: float = 1e-3,
    curriculum: Sequence[float] = (),
    optimizer: str = "adam",
    device: str | torch.device | None = None,
) -> nn.Module:
    """Train a float PINN on the physics loss (full batch); returns it on the CPU in eval mode.

    ``optimizer``: ``"adam"`` (``steps`` Adam steps at ``lr``) or ``"lbfgs"`` (one
    L-BFGS run of at most ``steps`` iterations, strong-Wolfe line search, ``lr`` 1).
    ``curriculum``: betas trained first, each for ``steps`` and warm-started, before
    ``beta`` (Krishnapriyan et al.'s curriculum regularisation); empty for a plain
    PINN. The ``n_points`` collocation points are drawn once from ``seed``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    dev = _device(device)
    training.seed_all(seed)
    net = PINN(widths, beta)
    rng = np.random.default_rng(seed)
    pts = torch.from_numpy(rng.uniform(-1.0, 1.0, (n_points, 2)).astype(np.float32)).to(dev)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net.to(dev).train()
        for b in [*map(float, curriculum), float(beta)]:
            net.beta = b

            def closure(b: float = b) -> torch.Tensor:
                net.zero_grad(set_to_none=True)
                loss = pinn_loss(physics_terms(net, pts, b), pts)
                loss.backward()
                return loss

            if optimizer == "lbfgs":
                opt = torch.optim.LBFGS(
                    net.parameters(),
                    lr=1.0,
                    max_iter=steps,
                    history_size=50,
                    tolerance_grad=1e-9,
                    tolerance_change=1e-12,
                    line_search_fn="strong_wolfe",
                )
                opt.step(closure)
            else:
                opt = torch.optim.Adam(net.parameters(), lr=lr)
                for _ in range(steps):
                    closure()
                    opt.step()
    finally:
        torch.set_num_threads(threads)
    net.beta = float(beta)
    return net.cpu().eval()


def evaluate_pinn(model: nn.Module, beta: float, nx: int = 256, nt: int = 100) -> float:
    """Relative L2 error of ``model`` against ``sin(x - beta t)`` on an ``nx x nt`` grid."""
    pts = eval_grid(nx, nt)
    pred = training.predict(model, pts)
    return relative_l2(pred, exact_solution(*physical(pts), beta))


def finding(
    seed: int = 0, quick: bool = False, device: str | torch.device | None = None
) -> dict[str, float]:
    """The failure mode, measured: relative L2 against beta, plain and with remedies.

    Keys: ``rel_l2_beta{b}`` (plain PINN, Adam) for each beta of the sweep; at the
    largest beta ``B``: ``rel_l2_beta{B}_curriculum`` (Adam through betas
    1, 5, 10, 15, 20, 25, half the steps per stage) and ``rel_l2_beta{B}_lbfgs``
    (plain PINN, L-BFGS); ``adam_steps``, ``lbfgs_iterations`` and ``seconds``.
    Full: betas 1..30, 2-50-50-50-1, 2,000 points, 3,000 Adam steps, 900 L-BFGS
    iterations; quick: betas 1 and 30, 2-32-32-32-1, 500 points, 400 / 300.
    """
    t0 = time.perf_counter()
    betas = QUICK_BETAS if quick else BETAS
    widths = (32, 32, 32) if quick else STUDY_WIDTHS
    steps, iters = (400, 300) if quick else (3000, 900)
    n_points = 500 if quick else 2000
    run = {"seed": seed, "widths": widths, "n_points": n_points, "device": device}
    out: dict[str, float] = {}
    for b in betas:
        out[f"rel_l2_beta{b:g}"] = evaluate_pinn(train_pinn(b, steps, lr=3e-3, **run), b)
    top = max(betas)
    ladder = [b for b in (1.0, 5.0, 10.0, 15.0, 20.0, 25.0) if b < top]
    m = train_pinn(top, steps // 2, lr=3e-3, curriculum=ladder, **run)
    out[f"rel_l2_beta{top:g}_curriculum"] = evaluate_pinn(m, top)
    m = train_pinn(top, iters, optimizer="lbfgs", **run)
    out[f"rel_l2_beta{top:g}_lbfgs"] = evaluate_pinn(m, top)
    out["adam_steps"] = float(steps)
    out["lbfgs_iterations"] = float(iters)
    out["seconds"] = time.perf_counter() - t0
    return out


def _spec() -> Any:
    from . import zoo

    return zoo.DesignSpec(
        name="pinn",
        title=f"convection PINN (beta {ZOO_BETA:g}) 2-16-16-1 Tanh, physics loss",
        task="regression",
        input_shape=INPUT_SHAPE,
        load_data=load_data,
        build_float=build_float,
        build_qat=build_qat,
        loss=pinn_loss,
        metrics=metrics,
        primary="rel_l2",
        higher_is_better=False,
        edge=edge,
        edge_metrics=edge_metrics,
        epochs={"float": 200, "qat": 20, "finetune": 20},
        settings=TrainSettings(lr=1e-3, batch_size=256),
        float_settings=TrainSettings(lr=3e-3, batch_size=256),
        bit_widths=(4, 8),
        sparsity=0.25,
        notes=(
            "trained on the PDE residual, periodic boundary and initial condition only; "
            "Tanh as exact lookup tables (Quant -> Tanh -> Quant); metric: relative L2 "
            "against the analytic solution on the 128 x 64 input-code grid"
        ),
    )


DESIGNS = {"pinn": _spec()}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgeml.models.pinn [--quick] [--seed N]``: print the beta sweep."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sweep (betas 1, 30)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    res = finding(args.seed, args.quick)
    print(f"{'beta':>6}  {'plain PINN (Adam) rel L2':>24}")
    for k, v in res.items():
        if k.startswith("rel_l2_beta") and k[len("rel_l2_beta") :].replace(".", "").isdigit():
            print(f"{k[len('rel_l2_beta') :]:>6}  {v:24.4f}")
    for k, v in res.items():
        if k.endswith(("_curriculum", "_lbfgs")):
            beta, how = k[len("rel_l2_beta") :].split("_")
            print(f"beta {beta}, {how}: rel L2 {v:.4f}")
    print(
        f"({int(res['adam_steps'])} Adam steps, {int(res['lbfgs_iterations'])} L-BFGS "
        f"iterations per run; {res['seconds']:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
