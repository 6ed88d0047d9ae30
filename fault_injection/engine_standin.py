"""A deterministic stand-in for the 6-bit jet tagger MLP 16-64-32-32-5 (fault engine tests, benchmark).

The real jet tagger (hls4ml's 16-64-32-32-5 with 75 % pruning) is trained
elsewhere; the fault engine only needs its *shape and number formats*, which
decide how faults propagate: 16-bit signed input codes, 6-bit signed
(narrow-range) power-of-two weights with 75 % of the codes pruned to 0 by
magnitude, 16-bit biases at the accumulator scale, 6-bit unsigned ReLU
activations (half-to-even rounding, saturation) and a linear 5-class output.

The model is written as a QONNX graph (``Quant`` / ``MatMul`` / ``Add`` /
``Relu`` nodes, as Brevitas or QKeras exports look after cleanup) with seeded
random weights, and compiled with :meth:`GoldenModel.from_onnx` like any other
design. Labels are the model's own top-1 with a seeded 20 % replaced at random,
so accuracy drops are measured against an imperfect baseline, as on real data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeml.golden import GoldenModel

#: Layer widths of the hls4ml jet-tagging MLP.
JET_SHAPE: tuple[int, ...] = (16, 64, 32, 32, 5)
_QD = "qonnx.custom_op.general"
#: Fractional bits: input codes (16-bit signed), weights (6-bit), hidden activations (6-bit).
_IN_FRAC, _W_FRAC, _ACT_FRAC = 10, 5, 4


def _pruned_weights(rng: np.random.Generator, n_in: int, n_out: int, sparsity: float) -> np.ndarray:
    """Gaussian 6-bit narrow-range codes with the smallest ``sparsity`` fraction set to 0."""
    w = np.clip(np.rint(rng.normal(0.0, 9.0, (n_in, n_out))), -31, 31)
    k = round(sparsity * w.size)
    if k:
        order = np.argsort(np.abs(w).reshape(-1) + rng.uniform(0, 0.5, w.size), kind="stable")
        w.reshape(-1)[order[:k]] = 0
    return w


def jet_standin_qonnx(
    seed: int = 0, sparsity: float = 0.75, shape: tuple[int, ...] = JET_SHAPE
) -> Any:
    """The stand-in as a qonnx ``ModelWrapper`` (cleaned form: MatMul + Add bias + Relu + Quant)."""
    from onnx import TensorProto, helper, numpy_helper
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model

    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    inits: list[Any] = []
    count = [0]

    def const(value: Any) -> str:
        count[0] += 1
        name = f"c{count[0]}"
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def node(op: str, inputs: list[str], domain: str = "", **attrs: Any) -> str:
        count[0] += 1
        out = f"t{count[0]}"
        nodes.append(
            helper.make_node(op, inputs, [out], name=f"{op}_{count[0]}", domain=domain, **attrs)
        )
        return out

    def quant(x: str, frac: int, bits: int, signed: bool = True, narrow: bool = False) -> str:
        return node(
            "Quant",
            [x, const(2.0**-frac), const(0.0), const(float(bits))],
            _QD,
            signed=int(signed),
            narrow=int(narrow),
            rounding_mode="ROUND",
        )

    h = quant("inp", _IN_FRAC, 16)
    in_frac = _IN_FRAC
    n_layers = len(shape) - 1
    for k in range(n_layers):
        w = _pruned_weights(rng, shape[k], shape[k + 1], sparsity)
        wq = quant(const(w * 2.0**-_W_FRAC), _W_FRAC, 6, narrow=True)
        h = node("MatMul", [h, wq])
        acc_frac = in_frac + _W_FRAC
        b = rng.integers(-(1 << (acc_frac - 2)), 1 << (acc_frac - 2), shape[k + 1])
        h = node("Add", [h, quant(const(b * 2.0**-acc_frac), acc_frac, 16)])
        if k < n_layers - 1:
            h = node("Relu", [h])
            h = quant(h, _ACT_FRAC, 6, signed=False)
            in_frac = _ACT_FRAC
    nodes[-1].output[0] = "out"
    graph = helper.make_graph(
        nodes,
        "jet_standin",
        [helper.make_tensor_value_info("inp", TensorProto.FLOAT, [1, shape[0]])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, shape[-1]])],
        inits,
    )
    from qonnx.transformation.infer_shapes import InferShapes

    return ModelWrapper(qonnx_make_model(graph, producer_name="edgeml-standin")).transform(
        InferShapes()
    )


def jet_standin(
    seed: int = 0,
    n_samples: int = 1000,
    sparsity: float = 0.75,
    shape: tuple[int, ...] = JET_SHAPE,
) -> tuple[GoldenModel, np.ndarray, np.ndarray]:
    """Golden model, ``n_samples`` input codes and labels of the jet-tagger stand-in.

    Input codes are standardised-feature-like (normal, sigma = 1 real = 2**10
    codes, saturated to the 16-bit input type), drawn from ``seed + 1``.
    ``shape`` changes the layer widths (smaller models for quick tests).
    """
    if len(shape) < 2 or any(int(w) < 1 for w in shape):
        raise ValueError(f"shape needs >= 2 positive layer widths, got {shape}")
    g = GoldenModel.from_onnx(jet_standin_qonnx(seed, sparsity, tuple(int(w) for w in shape)))
    rng = np.random.default_rng(seed + 1)
    t = g.input_type
    x = np.clip(
        np.rint(rng.normal(0.0, 2.0**_IN_FRAC, (n_samples, *g.input_shape))), t.qmin, t.qmax
    )
    x = x.astype(np.int64)
    y = np.asarray(g.run(x)).reshape(n_samples, -1).argmax(axis=1)
    noisy = rng.random(n_samples) < 0.2
    y[noisy] = rng.integers(0, shape[-1], int(noisy.sum()))
    return g, x, y.astype(np.int64)
