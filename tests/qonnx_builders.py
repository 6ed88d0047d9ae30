"""QONNX graphs built with onnx/qonnx helpers (not edgeml's exporter), as other tools emit them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.util.basic import qonnx_make_model

QD = "qonnx.custom_op.general"


class GraphBuilder:
    """Tiny helper: add nodes and initializers, then make a ModelWrapper with shapes inferred."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.in_shape = in_shape
        self.out_shape = out_shape
        self.n = 0

    def const(self, value: np.ndarray | float, name: str | None = None, dtype=np.float32) -> str:
        self.n += 1
        name = name or f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(
        self, op: str, inputs: list[str], domain: str = "", out: str | None = None, **attrs
    ) -> str:
        self.n += 1
        out = out or f"t{self.n}"
        self.nodes.append(
            helper.make_node(op, inputs, [out], name=f"{op}_{self.n}", domain=domain, **attrs)
        )
        return out

    def quant(
        self,
        x: str,
        scale,
        bits: int,
        signed: bool = True,
        narrow: bool = False,
        rounding: str = "ROUND",
    ) -> str:
        return self.node(
            "Quant",
            [x, self.const(scale), self.const(0.0), self.const(float(bits))],
            QD,
            signed=int(signed),
            narrow=int(narrow),
            rounding_mode=rounding,
        )

    def qweight(self, w: np.ndarray, scale, bits: int, narrow: bool = True) -> str:
        return self.quant(self.const(w), scale, bits, signed=True, narrow=narrow)

    def build(self, out: str) -> ModelWrapper:
        self.nodes[-1].output[0] = "out"
        for nd in self.nodes[:-1]:
            for i, name in enumerate(nd.input):
                if name == out:
                    nd.input[i] = "out"
        g = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info("inp", TensorProto.FLOAT, [1, *self.in_shape])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, *self.out_shape])],
            self.inits,
        )
        m = ModelWrapper(qonnx_make_model(g, producer_name="tests"))
        from qonnx.transformation.infer_shapes import InferShapes

        return m.transform(InferShapes())


def mlp_pot(rng: np.random.Generator, rounding: str = "ROUND") -> ModelWrapper:
    """Quant -> MatMul -> Add(bias) -> Relu -> Quant -> MatMul -> Add, power-of-two scales."""
    b = GraphBuilder((16,), (5,))
    x = b.quant("inp", 2.0**-4, 8)
    w1 = b.qweight(rng.integers(-7, 8, (16, 12)) * 2.0**-3, 2.0**-3, 4)
    h = b.node("MatMul", [x, w1])
    h = b.node("Add", [h, b.quant(b.const(rng.integers(-50, 50, 12) * 2.0**-7), 2.0**-7, 16)])
    h = b.node("Relu", [h])
    h = b.quant(h, 2.0**-2, 4, signed=False, rounding=rounding)
    w2 = b.qweight(rng.integers(-7, 8, (12, 5)) * 2.0**-3, 2.0**-3, 4)
    y = b.node("MatMul", [h, w2])
    y = b.node("Add", [y, b.quant(b.const(rng.integers(-20, 20, 5) * 2.0**-5), 2.0**-5, 12)])
    return b.build(y)


def cnn_nchw(rng: np.random.Generator) -> ModelWrapper:
    """NCHW Conv -> Relu -> Quant -> MaxPool -> Flatten -> Gemm(transB), as FINN/Brevitas emit before cleanup."""
    b = GraphBuilder((2, 6, 6), (4,))
    x = b.quant("inp", 2.0**-5, 8)
    w = b.qweight(rng.integers(-3, 4, (3, 2, 3, 3)) * 2.0**-2, 2.0**-2, 3)
    h = b.node(
        "Conv",
        [x, w, b.quant(b.const(rng.integers(-9, 9, 3) * 2.0**-7), 2.0**-7, 16)],
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
        strides=[1, 1],
        dilations=[1, 1],
        group=1,
    )
    h = b.node("Relu", [h])
    h = b.quant(h, 2.0**-3, 5, signed=False)
    h = b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0])
    h = b.node("Flatten", [h], axis=1)
    w2 = b.qweight(rng.integers(-7, 8, (4, 27)) * 2.0**-3, 2.0**-3, 4)
    y = b.node(
        "Gemm", [h, w2, b.quant(b.const(rng.integers(-9, 9, 4) * 2.0**-6), 2.0**-6, 16)], transB=1
    )
    return b.build(y)


def bn_float_scales(rng: np.random.Generator) -> ModelWrapper:
    """Per-channel float weight scales, BatchNormalization and a Mul by a float constant."""
    b = GraphBuilder((8,), (6,))
    x = b.quant("inp", 0.05, 8)  # non power-of-two input scale
    ws = (rng.uniform(0.01, 0.05, 6)).astype(np.float32)
    w = b.quant(b.const(rng.normal(0, 0.1, (8, 6))), ws.reshape(1, 6), 5, narrow=True)
    h = b.node("MatMul", [x, w])
    h = b.node(
        "BatchNormalization",
        [
            h,
            b.const(rng.uniform(0.5, 2, 6)),
            b.const(rng.normal(0, 0.1, 6)),
            b.const(rng.normal(0, 0.1, 6)),
            b.const(rng.uniform(0.5, 2, 6)),
        ],
        epsilon=1e-5,
    )
    h = b.node("Relu", [h])
    h = b.quant(h, 0.03, 6, signed=False)
    y = b.node("Mul", [h, b.const(0.75)])
    y = b.quant(y, 2.0**-6, 8)
    return b.build(y)


def bipolar_trunc(rng: np.random.Generator) -> ModelWrapper:
    """BipolarQuant weights, a residual Add, Transpose/Reshape and a Trunc, as FINN graphs use."""
    b = GraphBuilder((4, 3), (12,))
    x = b.quant("inp", 2.0**-3, 6)
    x = b.node("Transpose", [x], perm=[0, 2, 1])
    x = b.node("Reshape", [x, b.const(np.array([1, 12]), dtype=np.int64)])
    wb = b.node("BipolarQuant", [b.const(rng.normal(0, 1, (12, 12))), b.const(2.0**-2)], QD)
    h = b.node("MatMul", [x, wb])
    h = b.node("Add", [h, x])  # residual: aligned binary points
    # Trunc (v1, qonnx's default opset): drop 3 low bits, keep the input scale
    h = b.node(
        "Trunc",
        [h, b.const(2.0**-5), b.const(0.0), b.const(12.0), b.const(9.0)],
        QD,
        rounding_mode="FLOOR",
    )
    return b.build(h)


def unsupported(rng: np.random.Generator) -> ModelWrapper:
    b = GraphBuilder((4,), (4,))
    x = b.quant("inp", 2.0**-4, 8)
    y = b.node("LRN", [x], size=3)  # local response normalisation: not in edgeml's op set
    return b.build(y)


def save(m: ModelWrapper, path: Path) -> Path:
    m.save(str(path))
    return path
