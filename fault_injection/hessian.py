"""Hessian-, gradient- and Taylor-ranked fault sites (FKeras-style), in torch.

Exhaustive campaigns say which bits matter after the fact; this module predicts
it from the loss curvature, so protection can be planned before (or instead of)
injecting every bit.

**Float mirror.** :class:`FloatMirror` executes a :class:`~edgeml.golden.GoldenModel`
in float64 torch. Activations stay in the golden *code* domain, so every
requantisation (round + saturate) is applied exactly where the hardware applies
it; rounding uses a straight-through estimator (forward: the golden rounding mode;
backward: identity) and saturation is ``clamp`` (zero gradient when saturated,
as in hardware). With power-of-two scales the forward pass therefore reproduces
the golden output codes exactly (float64 holds every code and every scaling is
exact; tested); with real-valued scales it agrees up to float rounding at
requantisation ties. Weights and biases are differentiable
leaves in *real* units: ``theta = code * lsb`` with ``lsb`` the real value of one
code LSB, derived from the golden tensors' scales
(weight: ``2**(lshift_j + acc_shift) * s_out_j / s_in``; bias:
``2**bias_shift * s_out_j``). ``theta`` is one flat vector, segment by segment in
``g.param_ops`` order (weight, then bias), each segment in the C order of the op's
code array, i.e. the flat ``index`` of a :class:`FaultSite`; then each Lookup op's
ROM (``table`` segment, lsb = its output scale). A structural Dense/Conv (a mean's
ones, a grouped conv's zeros) has no weight segment: its weights are constants.

**New ops.** Gather (data movement), Sub/Mul/MatMul of two tensors mirror exactly.
A Lookup is its table as a piecewise-constant function in the forward pass
(exact codes) with a straight-through derivative in its input: the table's
central-difference slope at the entry read (see :meth:`FloatMirror._lookup`).

**Curvature.** The loss is the mean cross-entropy of the real-valued logits
(output codes x output scale) on labelled samples. Hessian-vector products are
double backward (Pearlmutter); top-k eigenpairs come from Lanczos with full
reorthogonalisation or power iteration with deflation, and the trace from
Hutchinson's estimator with Rademacher probes. That linear algebra is shared with
the analysis stack: it lives in :mod:`edgeml.models.analysis.curvature` (re-exported
here).

**Parameter scores.**

* Hessian (FKeras): ``s = sum_k |lambda_k (v_k . theta) v_k|`` elementwise, over the
  top-k eigenpairs (largest ``|lambda|``): the part of ``H theta`` in the dominant
  curvature subspace.
* Gradient: ``|g|``. Taylor: ``(g * theta)**2`` (first-order loss change of removing
  the parameter).
* Random: uniform noise (a baseline).

**From parameters to bits** (``rule``):

* ``"delta"`` (the default): site score = parameter score x ``|delta theta|``, the
  real size of the change the fault makes (``2**bit`` code LSBs for a flip; the
  two's-complement sign bit moves the code by ``2**(width-1)`` too). This is
  FKeras' ``rank_bits`` (score x ``2**bit``) with each word's LSB value folded
  in, so a 16-bit bias and a 6-bit weight compare by the real error they make.
* ``"bit_major"`` (FKeras ``convert_param_ranking_to_msb_bit_ranking``): every
  word's most significant bit first, in parameter-score order; then every word's
  next bit, and so on down to the LSBs. Significance counts from each word's MSB
  (a 16-bit bias's bit 15 and a 6-bit weight's bit 5 share the first tier).
* ``"param_major"``: parameters by score, each with all its bits MSB first.

Measured on the digits MLP (64-32-32-10, 6-bit weights, 16-bit biases, 50 %
pruned; 21,536 single-bit flips x 360 test digits), Spearman correlation of the
Hessian ranking with the measured SDC rate / share of all SDC removed by
protecting its top 5 % of bits: ``delta`` 0.73 / 67 %, ``bit_major`` 0.48 / 24 %,
``param_major`` 0.54 / 18 % (oracle: 71 %). ``bit_major`` puts every MSB
first, but a 16-bit bias has ten bits above any weight bit's reach.

Every ranking is a :class:`Ranking` of a given list of weight/bias
:class:`~edgeml.fault_injection.sites.FaultSite`: ``order`` (indices, most
sensitive first) and ``score`` (per site, higher = more sensitive).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeml.errors import ConfigError, UnsupportedOpError
from edgeml.golden import (
    AddTensors,
    Affine,
    Bipolar,
    Conv,
    Dense,
    Gather,
    GoldenModel,
    LeakyRelu,
    Lookup,
    MatMulTensors,
    MaxPool,
    MulTensors,
    Relu,
    Requant,
    Reshape,
    Sign,
    Softmax,
    SubTensors,
    Transpose,
)

# The curvature linear algebra lives in the analysis stack (one implementation for the
# fault rankings and ``edgeml analyze``): LossHessian gets its spectra and traces from it.
from edgeml.models.analysis.curvature import HessianOperator

#: Golden ops the float mirror reproduces (one truth for the check and its message).
MIRRORED_OPS = (
    Dense,
    Requant,
    Affine,
    Relu,
    MaxPool,
    Reshape,
    Transpose,
    AddTensors,
    Bipolar,
    Sign,
    LeakyRelu,
    Softmax,
    Gather,
    Lookup,
    SubTensors,
    MulTensors,
    MatMulTensors,
)

if TYPE_CHECKING:
    import torch

    from .sites import FaultSite

log = logging.getLogger(__name__)

RULES: tuple[str, ...] = ("delta", "bit_major", "param_major")
PARAM_NAMES: tuple[str, ...] = ("weight", "bias", "table")


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a core dependency
        raise ImportError("Hessian rankings need torch: install edgeml with torch") from exc
    return torch


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class ParamSegment:
    """Where one op's weight (or bias) codes live in the flat parameter vector ``theta``."""

    layer: str
    param: str  # "weight" | "bias" | "table"
    offset: int
    shape: tuple[int, ...]
    lsb: np.ndarray  # real value of one code LSB, per element (broadcast to ``shape``), flat
    width: int
    signed: bool
    codes: np.ndarray  # flat int64 codes (C order of the op's array)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def stop(self) -> int:
        return self.offset + self.size


def _param_segments(g: GoldenModel) -> list[ParamSegment]:
    segs: list[ParamSegment] = []
    off = 0
    for op in g.param_ops:
        s_in = np.asarray(g.tensors[op.inputs[0]].scale, np.float64)
        if s_in.size != 1:
            raise UnsupportedOpError(
                f"layer '{op.name}': a per-channel input scale has no float mirror "
                "(the golden model refuses it too)"
            )
        cout = op.weight.shape[-1]
        s_out = np.broadcast_to(
            np.asarray(g.tensors[op.output].scale, np.float64).reshape(-1), (cout,)
        )
        if not op.structural:  # a structural op's weights are wiring: constants, no segment
            ls = np.broadcast_to(np.asarray(op.weight_lshift, np.int64).reshape(-1), (cout,))
            w_lsb = np.ldexp(s_out / float(s_in.reshape(-1)[0]), ls + op.acc_shift)
            w = np.ascontiguousarray(op.weight, dtype=np.int64)
            segs.append(
                ParamSegment(
                    op.name,
                    "weight",
                    off,
                    tuple(w.shape),
                    np.broadcast_to(w_lsb, w.shape).reshape(-1).copy(),
                    op.weight_type.width,
                    op.weight_type.signed,
                    w.reshape(-1).copy(),
                )
            )
            off += w.size
        if op.bias is not None and op.bias_type is not None:
            b = np.ascontiguousarray(op.bias, dtype=np.int64).reshape(-1)
            segs.append(
                ParamSegment(
                    op.name,
                    "bias",
                    off,
                    (b.size,),
                    np.ldexp(s_out, op.bias_shift).reshape(-1).copy(),
                    op.bias_type.width,
                    op.bias_type.signed,
                    b.copy(),
                )
            )
            off += b.size
    for op in g.ops:  # lookup ROMs after every Dense/Conv segment: entries in output LSBs
        if isinstance(op, Lookup):
            t = g.tensors[op.output]
            lsb = np.asarray(t.scale, np.float64).reshape(-1)
            if lsb.size != 1:
                raise UnsupportedOpError(
                    f"lookup '{op.name}': a per-channel output scale has no float mirror"
                )
            codes = np.asarray(op.table, np.int64).reshape(-1)
            segs.append(
                ParamSegment(
                    op.name,
                    "table",
                    off,
                    (codes.size,),
                    np.full(codes.size, float(lsb[0])),
                    t.type.width,
                    t.type.signed,
                    codes.copy(),
                )
            )
            off += codes.size
    if not segs:
        raise ConfigError("the design has no Dense/Conv layer or lookup table: nothing to rank")
    return segs


# ----------------------------------------------------------------------------- mirror


class FloatMirror:
    """Differentiable float64 twin of a golden model with real-valued parameters ``theta``.

    ``ste=True`` rounds in the forward pass (exact golden codes) with an identity
    gradient; ``ste=False`` drops the rounding (the dequantised float graph,
    saturation kept). See the module docstring for the parameter layout.
    """

    def __init__(self, g: GoldenModel, *, ste: bool = True) -> None:
        torch = _torch()
        self.g = g
        self.ste = bool(ste)
        self.segments = _param_segments(g)
        self._seg = {(s.layer, s.param): s for s in self.segments}
        self.dim = self.segments[-1].stop
        theta = np.concatenate([s.codes * s.lsb for s in self.segments])
        self.theta0 = torch.tensor(theta, dtype=torch.float64)
        self.lsb = np.concatenate([s.lsb for s in self.segments])
        # theta -> code-domain contribution: weight x 2**(lshift+acc_shift) (= 1 / lsb * 2**(...)),
        # bias x 2**bias_shift; both are theta / (lsb / 2**shift) = theta * s_in / s_out (weight),
        # theta / s_out (bias).
        self._code_mult: dict[tuple[str, str], Any] = {}
        for op in g.param_ops:
            if (op.name, "weight") in self._seg:
                cout = op.weight.shape[-1]
                ls = np.broadcast_to(np.asarray(op.weight_lshift, np.int64).reshape(-1), (cout,))
                seg = self._seg[(op.name, "weight")]
                mult = np.ldexp(1.0 / seg.lsb.reshape(seg.shape), ls + op.acc_shift)
                self._code_mult[(op.name, "weight")] = torch.tensor(mult.reshape(-1))
            if (op.name, "bias") in self._seg:
                bs = self._seg[(op.name, "bias")]
                self._code_mult[(op.name, "bias")] = torch.tensor(
                    np.ldexp(1.0 / bs.lsb, op.bias_shift)
                )
        self.out_scale = torch.tensor(
            np.asarray(g.tensors[g.output_name].scale, np.float64), dtype=torch.float64
        )
        for op in g.ops:
            if not isinstance(op, MIRRORED_OPS):
                raise UnsupportedOpError(
                    f"op '{op.name}' ({type(op).__name__}) has no float mirror; supported: "
                    f"{', '.join(c.__name__ for c in MIRRORED_OPS)} (and Conv)"
                )

    def segment(self, layer: str, param: str) -> ParamSegment:
        key = (layer, param)
        if key not in self._seg:
            raise ConfigError(
                f"no {param} parameters in layer {layer!r}; parameter segments: "
                f"{[f'{s.layer}/{s.param}' for s in self.segments]}"
            )
        return self._seg[key]

    def param_index(self, sites: Sequence[FaultSite]) -> np.ndarray:
        """Index into ``theta`` of the parameter each (weight/bias) site hits."""
        out = np.empty(len(sites), np.int64)
        for i, s in enumerate(sites):
            seg = self.segment(s.layer, s.param)
            if not 0 <= s.index < seg.size:
                raise ConfigError(
                    f"site {s} index {s.index} out of range for {s.layer}/{s.param} "
                    f"({seg.size} codes)"
                )
            out[i] = seg.offset + s.index
        return out

    # -- forward
    def _round(self, v: torch.Tensor, mode: str) -> torch.Tensor:
        torch = _torch()
        if mode == "HALF_EVEN":
            r = torch.round(v)
        elif mode == "FLOOR":
            r = torch.floor(v)
        elif mode == "CEIL":
            r = torch.ceil(v)
        elif mode == "HALF_UP":
            r = torch.sign(v) * torch.floor(v.abs() + 0.5)
        elif mode == "HALF_DOWN":
            r = torch.sign(v) * torch.ceil(v.abs() - 0.5)
        elif mode == "DOWN":
            r = torch.trunc(v)
        elif mode == "UP":
            r = torch.sign(v) * torch.ceil(v.abs())
        else:
            raise ConfigError(f"unknown rounding mode {mode!r}")
        return v + (r - v).detach()  # straight-through: forward r, gradient identity

    def _dense(self, op: Dense, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        torch = _torch()
        if op.structural:  # wiring (a mean's ones): a constant, not a parameter
            w = np.asarray(op.effective_weight(), np.int64) << op.acc_shift
            w_eff = torch.as_tensor(w.astype(np.float64))
        else:
            seg = self.segment(op.name, "weight")
            # Code-domain weight incl. every shift: W_code * 2**(lshift + acc_shift)
            # = theta * s_in / s_out.
            w_eff = (theta[seg.offset : seg.stop] * self._code_mult[(op.name, "weight")]).reshape(
                seg.shape
            )
        if isinstance(op, Conv):
            top, left, bottom, right = op.pads
            xt = x.permute(0, 3, 1, 2)
            if any(op.pads):
                xt = torch.nn.functional.pad(xt, (left, right, top, bottom))
            y = torch.nn.functional.conv2d(
                xt, w_eff.permute(3, 2, 0, 1), stride=op.strides, groups=getattr(op, "groups", 1)
            )
            y = y.permute(0, 2, 3, 1)
        else:
            y = x @ w_eff
        if op.bias is not None:
            bs = self.segment(op.name, "bias")
            y = y + theta[bs.offset : bs.stop] * self._code_mult[(op.name, "bias")]
        return y

    def forward(self, x_codes: Any, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Output codes (float64, as the golden model's) for input codes ``x_codes``."""
        torch = _torch()
        theta = self.theta0 if theta is None else theta
        x = torch.as_tensor(np.asarray(x_codes), dtype=torch.float64)
        env: dict[str, torch.Tensor] = {self.g.input_name: x}
        for op in self.g.ops:
            xs = [env[i] for i in op.inputs]
            env[op.output] = self._op(op, xs, theta)
        return env[self.g.output_name]

    def _op(self, op: Any, xs: list[torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
        torch = _torch()
        x = xs[0]
        if isinstance(op, Dense):
            return self._dense(op, x, theta)
        if isinstance(op, Requant):
            y = x
            if op.mult.size != 1 or int(op.mult.reshape(-1)[0]) != 1:
                y = y * torch.tensor(op.mult.astype(np.float64))
            if op.offset.size != 1 or int(op.offset.reshape(-1)[0]) != 0:
                y = y + torch.tensor(op.offset.astype(np.float64))
            y = y * float(2.0 ** (-op.shift))
            if self.ste and op.shift > 0:
                y = self._round(y, op.rounding)
            return torch.clamp(y, float(op.lo), float(op.hi))
        if isinstance(op, Affine):
            return x * torch.tensor(op.mult.astype(np.float64)) + torch.tensor(
                op.offset.astype(np.float64)
            )
        if isinstance(op, Relu):
            return torch.relu(x)
        if isinstance(op, MaxPool):
            top, left, bottom, right = op.pads
            xt = x.permute(0, 3, 1, 2)
            if any(op.pads):
                xt = torch.nn.functional.pad(xt, (left, right, top, bottom), value=-math.inf)
            y = torch.nn.functional.max_pool2d(xt, op.kernel, op.strides)
            return y.permute(0, 2, 3, 1)
        if isinstance(op, Reshape):
            return x.reshape((x.shape[0], *op.shape))
        if isinstance(op, Transpose):
            return x.permute(*op.perm)
        if isinstance(op, AddTensors):
            return x * float(2.0**op.shift_a) + xs[1] * float(2.0**op.shift_b)
        if isinstance(op, Bipolar):
            s = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
            return x + (s - x).detach()
        if isinstance(op, Sign):
            return x + (torch.sign(x) - x).detach()
        if isinstance(op, LeakyRelu):
            return torch.where(x >= 0, x * float(op.pos_mult), x * float(op.neg_mult))
        if isinstance(op, Gather):
            n = x.shape[0]
            shifts = op.shifts or (0,) * len(xs)
            parts = [v.reshape(n, -1) * float(2.0**sh) for v, sh in zip(xs, shifts, strict=True)]
            parts.append(torch.zeros((n, 1), dtype=x.dtype))
            flat = torch.cat(parts, dim=1)
            idx = torch.as_tensor(np.asarray(op.index, np.int64).reshape(-1))
            idx = torch.where(idx < 0, flat.shape[1] - 1, idx)  # -1: the constant 0
            return flat[:, idx].reshape((n, *op.shape))
        if isinstance(op, Lookup):
            return self._lookup(op, x, theta)
        if isinstance(op, SubTensors):
            return x * float(2.0**op.shift_a) - xs[1] * float(2.0**op.shift_b)
        if isinstance(op, MulTensors):
            return x * xs[1]
        if isinstance(op, MatMulTensors):
            return torch.matmul(x, xs[1])
        if isinstance(op, Softmax):
            # float softmax of the real logits on the output grid; with STE the forward
            # value is the golden op's exact table arithmetic
            real = x * float(2.0**-op.in_frac * op.exp_scale)
            y = torch.softmax(real, dim=-1) * float(2.0**op.out_type.frac)
            if not self.ste:
                return y
            exact = torch.as_tensor(op(np.rint(x.detach().numpy()).astype(np.int64)))
            return y + (exact.to(y.dtype) - y).detach()
        raise UnsupportedOpError(f"op '{op.name}' ({type(op).__name__}) has no float mirror")

    def _lookup(self, op: Lookup, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """A table as a piecewise-constant function with a straight-through slope.

        Forward: ``table[round(x) - lo]`` (the golden op exactly, on integer codes),
        the entries being the differentiable ``theta`` segment of the ROM (so table
        sites get gradients and curvature like weights). Backward in ``x``: the
        table's central-difference slope at the entry read (one-sided at the ends),
        the derivative of the piecewise-linear interpolation of the table; the
        exact piecewise-constant derivative would be 0 almost everywhere and
        stop every gradient at the lookup.
        """
        torch = _torch()
        seg = self.segment(op.name, "table")
        entries = theta[seg.offset : seg.stop] / torch.as_tensor(seg.lsb)
        codes = seg.codes.astype(np.float64)
        if codes.size > 1:
            slope_np = np.gradient(codes)
        else:
            slope_np = np.zeros(codes.size)
        slope = torch.as_tensor(slope_np)
        i = torch.round(x.detach()).to(torch.int64) - int(op.lo)
        i = torch.clamp(i, 0, seg.size - 1)  # the table covers the input type's codes
        return entries[i] + slope[i] * (x - x.detach())

    def logits(self, x_codes: Any, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Real-valued outputs (codes x output scale), flattened to (N, classes)."""
        out = self.forward(x_codes, theta)
        return (out * self.out_scale).reshape(out.shape[0], -1)


# ----------------------------------------------------------------------------- Hessian


class LossHessian(HessianOperator):
    """Cross-entropy loss of a :class:`FloatMirror` on labelled samples, and its curvature.

    ``labels=None`` uses the fault-free golden top-1 as labels (the loss then
    measures how far a change moves the model from its own decisions).
    ``batch_size`` bounds memory; the loss is the mean over all samples.
    """

    def __init__(
        self,
        mirror: FloatMirror,
        x_codes: np.ndarray,
        labels: np.ndarray | Sequence[int] | None,
        *,
        batch_size: int = 2048,
    ) -> None:
        torch = _torch()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.mirror = mirror
        x = np.asarray(x_codes)
        if x.ndim < 1 or x.shape[0] == 0:
            raise ConfigError("LossHessian needs at least one input sample")
        if labels is None:
            with torch.no_grad():
                y = mirror.logits(x).argmax(dim=1).numpy()
        else:
            y = np.asarray(labels, dtype=np.int64).reshape(-1)
            if y.size != x.shape[0]:
                raise ConfigError(f"got {x.shape[0]} samples but {y.size} labels")
        self.x = torch.as_tensor(x.astype(np.float64))
        self.y = torch.as_tensor(y.astype(np.int64))
        self.n = int(x.shape[0])
        self.batch_size = batch_size
        self.dim = mirror.dim
        self.n_hvp = 0

    def _batches(self) -> list[tuple[Any, Any]]:
        return [
            (self.x[i : i + self.batch_size], self.y[i : i + self.batch_size])
            for i in range(0, self.n, self.batch_size)
        ]

    def _loss(self, theta: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        torch = _torch()
        logits = self.mirror.logits(xb, theta)
        return torch.nn.functional.cross_entropy(logits, yb, reduction="sum") / self.n

    def loss(self, theta: torch.Tensor | None = None) -> float:
        torch = _torch()
        theta = self.mirror.theta0 if theta is None else theta
        with torch.no_grad():
            return float(sum(self._loss(theta, xb, yb) for xb, yb in self._batches()))

    def gradient(self) -> torch.Tensor:
        """dL/dtheta at the trained parameters (real units)."""
        torch = _torch()
        theta = self.mirror.theta0.clone().requires_grad_(True)
        g = torch.zeros_like(theta)
        for xb, yb in self._batches():
            (gb,) = torch.autograd.grad(self._loss(theta, xb, yb), theta)
            g += gb
        return g.detach()

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """Hessian-vector product ``H v`` by double backward (exact, no finite differences)."""
        torch = _torch()
        v = torch.as_tensor(v, dtype=torch.float64)
        if v.shape != (self.dim,):
            raise ConfigError(f"hvp needs a vector of shape ({self.dim},), got {tuple(v.shape)}")
        theta = self.mirror.theta0.clone().requires_grad_(True)
        out = torch.zeros_like(theta)
        for xb, yb in self._batches():
            (gb,) = torch.autograd.grad(self._loss(theta, xb, yb), theta, create_graph=True)
            (hb,) = torch.autograd.grad(gb @ v, theta)
            out += hb
        self.n_hvp += 1
        return out.detach()


# ----------------------------------------------------------------------------- scores


def fkeras_scores(theta: np.ndarray, eigvals: np.ndarray, eigvecs: np.ndarray) -> np.ndarray:
    """FKeras parameter score ``sum_k |lambda_k (v_k . theta) v_k|`` (elementwise)."""
    theta = np.asarray(theta, np.float64).reshape(-1)
    eigvecs = np.atleast_2d(np.asarray(eigvecs, np.float64))
    eigvals = np.asarray(eigvals, np.float64).reshape(-1)
    if eigvecs.shape != (eigvals.size, theta.size):
        raise ConfigError(
            f"eigenvectors {eigvecs.shape} do not match {eigvals.size} eigenvalues and "
            f"{theta.size} parameters"
        )
    proj = eigvals * (eigvecs @ theta)  # lambda_k (v_k . theta), shape (k,)
    return np.abs(proj[:, None] * eigvecs).sum(axis=0)


@dataclass(frozen=True)
class Ranking:
    """An ordering of a list of fault sites, most sensitive first.

    ``order`` indexes the site list it was built from; ``score`` is per site in
    that list's order (higher = more sensitive; used for Spearman correlations).
    """

    name: str
    order: np.ndarray
    score: np.ndarray
    meta: dict[str, Any]

    def ordered(self, sites: Sequence[FaultSite]) -> list[FaultSite]:
        if len(sites) != self.order.size:
            raise ConfigError(
                f"ranking '{self.name}' covers {self.order.size} sites, got a list of {len(sites)}"
            )
        return [sites[int(i)] for i in self.order]

    def __len__(self) -> int:
        return int(self.order.size)


def _site_word(mirror: FloatMirror, sites: Sequence[FaultSite]) -> tuple[np.ndarray, ...]:
    """(theta index, width, signed, code, bit, nbits, kind code) per site."""
    if not sites:
        raise ConfigError("cannot rank an empty list of fault sites")
    bad = [s for s in sites if s.param not in PARAM_NAMES]
    if bad:
        raise ConfigError(
            f"rankings cover weight/bias sites only, plus lookup 'table' sites; got {len(bad)} "
            f"other site(s), e.g. {bad[0]}"
        )
    pidx = mirror.param_index(sites)
    seg_of = {(s.layer, s.param): s for s in mirror.segments}
    width = np.array([seg_of[(s.layer, s.param)].width for s in sites], np.int64)
    signed = np.array([seg_of[(s.layer, s.param)].signed for s in sites], bool)
    code = np.concatenate([s.codes for s in mirror.segments])[pidx]
    bit = np.array([s.bit for s in sites], np.int64)
    nbits = np.array([getattr(s, "nbits", 1) for s in sites], np.int64)
    kinds = {"flip": 0, "stuck0": 1, "stuck1": 2}
    kind = np.array([kinds[s.kind] for s in sites], np.int64)
    if np.any(bit + nbits > width):
        i = int(np.flatnonzero(bit + nbits > width)[0])
        raise ConfigError(f"site {sites[i]} does not fit its {int(width[i])}-bit word")
    return pidx, width, signed, code, bit, nbits, kind


def site_deltas(mirror: FloatMirror, sites: Sequence[FaultSite]) -> np.ndarray:
    """Real-valued change ``faulty - stored`` of the parameter each site corrupts.

    The stored word is two's complement (or unsigned): a flip of bit ``b`` moves
    the code by ``+-2**b``, the sign bit included (``+-2**(width-1)``); a stuck-at
    that matches the stored bit changes nothing (delta 0).
    """
    pidx, width, signed, code, bit, nbits, kind = _site_word(mirror, sites)
    mask = ((np.int64(1) << nbits) - 1) << bit
    u = code & ((np.int64(1) << width) - 1)
    f = np.where(kind == 0, u ^ mask, np.where(kind == 1, u & ~mask, u | mask))
    sign = np.where(signed, np.int64(1) << (width - 1), 0)
    f = np.where(signed, (f ^ sign) - sign, f)
    return (f - code) * mirror.lsb[pidx]


def rank_sites(
    mirror: FloatMirror,
    sites: Sequence[FaultSite],
    param_score: np.ndarray,
    *,
    rule: str = "delta",
    name: str = "ranking",
    meta: dict[str, Any] | None = None,
) -> Ranking:
    """Turn a per-parameter score (over ``theta``) into a site ranking with ``rule``.

    Ties are broken by the size of the change the fault makes (larger first),
    then by site order, so the result is deterministic.
    """
    if rule not in RULES:
        raise ConfigError(f"rule must be one of {RULES}, got {rule!r}")
    param_score = np.asarray(param_score, np.float64).reshape(-1)
    if param_score.size != mirror.dim:
        raise ConfigError(
            f"param_score has {param_score.size} entries, the design has {mirror.dim} parameters"
        )
    pidx, width, *_ = _site_word(mirror, sites)
    top_bit = np.array([s.bit + getattr(s, "nbits", 1) - 1 for s in sites], np.int64)
    mag = np.abs(site_deltas(mirror, sites))
    ps = param_score[pidx]
    tier = width - 1 - top_bit  # 0 = the word's MSB
    pos = np.arange(len(sites))
    if rule == "delta":
        score = ps * mag
        order = np.lexsort((pos, -mag, -score))
    elif rule == "bit_major":
        order = np.lexsort((pos, -mag, -ps, tier))
        score = np.empty(len(sites))
        score[order] = -np.arange(len(sites), dtype=np.float64)
    else:  # param_major: parameters by score, each one's bits MSB first
        order = np.lexsort((pos, tier, pidx, -ps))
        score = np.empty(len(sites))
        score[order] = -np.arange(len(sites), dtype=np.float64)
    return Ranking(name, order.astype(np.int64), score, {"rule": rule, **(meta or {})})


# ----------------------------------------------------------------------------- rankings


def _setup(
    g: GoldenModel, x_codes: np.ndarray, labels: Any, batch_size: int, ste: bool
) -> LossHessian:
    return LossHessian(FloatMirror(g, ste=ste), x_codes, labels, batch_size=batch_size)


def hessian_ranking(
    g: GoldenModel,
    x_codes: np.ndarray,
    labels: np.ndarray | Sequence[int] | None,
    sites: Sequence[FaultSite],
    *,
    k: int = 8,
    method: str = "lanczos",
    rule: str = "delta",
    seed: int = 0,
    batch_size: int = 2048,
    loss_hessian: LossHessian | None = None,
) -> Ranking:
    """FKeras Hessian ranking of ``sites``: top-``k`` eigenpairs -> parameter score -> bits."""
    lh = loss_hessian or _setup(g, x_codes, labels, batch_size, True)
    k = min(k, lh.dim)
    vals, vecs = lh.eigenpairs(k, method=method, seed=seed)
    score = fkeras_scores(lh.mirror.theta0.numpy(), vals, vecs)
    return rank_sites(
        lh.mirror,
        sites,
        score,
        rule=rule,
        name="hessian",
        meta={"k": k, "method": method, "eigenvalues": [float(v) for v in vals]},
    )


def gradient_ranking(
    g: GoldenModel,
    x_codes: np.ndarray,
    labels: np.ndarray | Sequence[int] | None,
    sites: Sequence[FaultSite],
    *,
    rule: str = "delta",
    batch_size: int = 2048,
    loss_hessian: LossHessian | None = None,
) -> Ranking:
    """Rank by ``|dL/dtheta|`` per parameter, then bits by ``rule``."""
    lh = loss_hessian or _setup(g, x_codes, labels, batch_size, True)
    score = lh.gradient().abs().numpy()
    return rank_sites(lh.mirror, sites, score, rule=rule, name="gradient")


def taylor_ranking(
    g: GoldenModel,
    x_codes: np.ndarray,
    labels: np.ndarray | Sequence[int] | None,
    sites: Sequence[FaultSite],
    *,
    rule: str = "delta",
    batch_size: int = 2048,
    loss_hessian: LossHessian | None = None,
) -> Ranking:
    """Rank by ``(g * theta)**2`` per parameter (Molchanov et al.), then bits by ``rule``."""
    lh = loss_hessian or _setup(g, x_codes, labels, batch_size, True)
    score = (lh.gradient() * lh.mirror.theta0).pow(2).numpy()
    return rank_sites(lh.mirror, sites, score, rule=rule, name="taylor")


def random_ranking(sites: Sequence[FaultSite], *, seed: int = 0) -> Ranking:
    """A uniformly random ordering: the baseline every ranking must beat."""
    if not sites:
        raise ConfigError("cannot rank an empty list of fault sites")
    rng = np.random.default_rng(seed)
    score = rng.random(len(sites))
    order = np.argsort(-score, kind="stable")
    return Ranking("random", order.astype(np.int64), score, {"seed": seed})


def oracle_ranking(sites: Sequence[FaultSite], sdc_rate: np.ndarray) -> Ranking:
    """Sites sorted by their measured SDC rate (the best any ranking can do)."""
    sdc = np.asarray(sdc_rate, np.float64).reshape(-1)
    if sdc.size != len(sites):
        raise ConfigError(f"got {len(sites)} sites but {sdc.size} SDC rates")
    order = np.lexsort((np.arange(sdc.size), -sdc))
    return Ranking("oracle", order.astype(np.int64), sdc.copy(), {})
