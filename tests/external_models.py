"""ONNX files written the way other tools write them, for the ingestion tests.

Each builder takes a seed and a path and writes one small model (16-64 inputs,
<= 2k weights) in its producer's conventions, pitfalls included:

* :func:`finn_mlp` - an older FINN export: custom ops in ``finn.custom_op.general``
  and ``finn`` with no opset import for either, a float input annotated UINT8
  (``quantization_annotation``) with ``Mul(1/255)`` preprocessing, BipolarQuant
  weights, BatchNorm after MatMul, an INT2-annotated weight with no Quant, and a
  trailing ``Mul`` / ``Add``.
* :func:`brevitas_old_mlp` - a Brevitas < 0.8 export: ``onnx.brevitas`` domain,
  symbolic batch ``batch_size``, ``Sub`` / ``Div`` normalisation before the first
  Quant, quantized bias, a trailing ``Div`` by a constant.
* :func:`torch_float_mlp` - ``torch.onnx.export`` (TorchScript exporter) of a float
  MLP with ``dynamic_axes`` (batch ``batch``): Gemm nodes, float weights, no Quant.
* :func:`conv_nchw` - a channels-first Conv net (symbolic batch ``N``), optionally
  with a channels-last float input and a Transpose in front (as tf2onnx writes).
* :func:`qkeras_mlp` - what qonnx's Keras converter writes for a QKeras MLP:
  tf-style names (``sequential/dense/MatMul``, ``...:0``), Quant after each MatMul /
  Add, an ``unk__`` batch, and a trailing Softmax.

Weights are random normal, quantized by the files' own Quant nodes.
:func:`qonnx_reference` executes a file with qonnx after only the domain / opset
fix, the reference the tests compare the golden model with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QD = "qonnx.custom_op.general"


class _G:
    """Minimal graph writer with explicit domains (no qonnx helpers: raw files as tools wrote them)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.k = 0

    def c(self, value: np.ndarray | float, name: str | None = None) -> str:
        self.k += 1
        name = name or f"Constant_{self.k}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def n(self, op: str, ins: list[str], domain: str = "", name: str | None = None, out=None, **at):
        self.k += 1
        name = name or f"{op}_{self.k}"
        out = out or f"{name}_out0"
        self.nodes.append(helper.make_node(op, ins, [out], name=name, domain=domain, **at))
        return out

    def quant(self, x, scale, bits, domain, signed=True, narrow=False, name=None):
        return self.n(
            "Quant",
            [x, self.c(scale), self.c(0.0), self.c(float(bits))],
            domain,
            name=name,
            signed=int(signed),
            narrow=int(narrow),
            rounding_mode="ROUND",
        )

    def save(self, path, inp, in_shape, out, out_shape, opsets, annotations=None, producer=""):
        g = helper.make_graph(
            self.nodes,
            "main_graph",
            [helper.make_tensor_value_info(inp, TensorProto.FLOAT, in_shape)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
            self.inits,
        )
        for tensor, dt in (annotations or {}).items():
            a = onnx.TensorAnnotation(tensor_name=tensor)
            a.quant_parameter_tensor_names.append(
                onnx.StringStringEntryProto(key="finn_datatype", value=dt)
            )
            g.quantization_annotation.append(a)
        m = helper.make_model(
            g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], producer_name=producer
        )
        m.ir_version = 7
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(m, str(path))
        return Path(path)


def finn_mlp(
    seed: int,
    path: str | Path,
    n_in: int = 16,
    hidden: int = 32,
    n_out: int = 10,
    preprocess: bool = True,
) -> Path:
    """Old FINN export (see the module docstring). Input: UINT8 codes 0..255 as floats.

    ``preprocess=False`` leaves out the ``Mul(1/255)`` in front.
    """
    rng = np.random.default_rng(seed)
    g = _G(rng)
    x = g.n("Mul", ["global_in", g.c(1 / 255)], name="Mul_0") if preprocess else "global_in"
    w1 = g.n(
        "BipolarQuant", [g.c(rng.normal(size=(n_in, hidden))), g.c(1.0)], "finn.custom_op.general"
    )
    h = g.n("MatMul", [x, w1], name="MatMul_0")
    h = g.n(
        "BatchNormalization",
        [
            h,
            g.c(rng.uniform(0.5, 1.5, hidden)),
            g.c(rng.normal(0, 0.2, hidden)),
            g.c(rng.normal(0, 1.0, hidden)),
            g.c(rng.uniform(1.0, 4.0, hidden)),
        ],
        name="BatchNormalization_0",
        epsilon=1e-4,
    )
    h = g.quant(h, 0.25, 4, "finn", signed=True, name="Quant_0")  # 4-bit act, old 'finn' domain
    # INT2 weight with an annotation and no Quant node (FINN's convention for integer weights)
    w2 = g.c(rng.integers(-2, 2, size=(hidden, n_out)).astype(np.float32), "W2_int2")
    y = g.n("MatMul", [h, w2], name="MatMul_1")
    y = g.n("Mul", [y, g.c(0.37)], name="Mul_1")
    g.n("Add", [y, g.c(rng.normal(0, 0.5, n_out))], name="Add_0", out="global_out")
    return g.save(
        path,
        "global_in",
        [1, n_in],
        "global_out",
        [1, n_out],
        [("", 11)],  # no opset import for the custom domains
        annotations={"global_in": "UINT8", "W2_int2": "INT2"},
        producer="FINN",
    )


def brevitas_old_mlp(
    seed: int, path: str | Path, n_in: int = 24, hidden: int = 20, n_out: int = 6, div: float = 2.5
) -> Path:
    """Brevitas < 0.8 export: domain onnx.brevitas, Sub/Div before the first Quant, trailing Div."""
    rng = np.random.default_rng(seed)
    g = _G(rng)
    D = "onnx.brevitas"
    x = g.n("Sub", ["inp.1", g.c(rng.normal(0, 1, n_in))], name="Sub_0")
    x = g.n("Div", [x, g.c(rng.uniform(0.5, 2.0, n_in))], name="Div_0")
    x = g.quant(x, 2.0**-4, 8, D, name="Quant_0")
    w1 = g.quant(g.c(rng.normal(0, 0.3, (n_in, hidden))), 2.0**-5, 6, D, narrow=True)
    h = g.n("MatMul", [x, w1], name="MatMul_0")
    b1 = g.quant(g.c(rng.normal(0, 0.5, hidden)), 2.0**-9, 16, D)
    h = g.n("Add", [h, b1], name="Add_0")
    h = g.n("Relu", [h], name="Relu_0")
    h = g.quant(h, 2.0**-3, 6, D, signed=False, name="Quant_3")
    w2 = g.quant(g.c(rng.normal(0, 0.3, (hidden, n_out))), 2.0**-5, 6, D, narrow=True)
    y = g.n("MatMul", [h, w2], name="MatMul_1")
    b2 = g.quant(g.c(rng.normal(0, 0.5, n_out)), 2.0**-8, 16, D)
    y = g.n("Add", [y, b2], name="Add_1")
    g.n("Div", [y, g.c(div)], name="Div_1", out="79")
    return g.save(
        path,
        "inp.1",
        ["batch_size", n_in],
        "79",
        ["batch_size", n_out],
        [("", 9)],  # Brevitas did not import its own domain
        producer="pytorch",
    )


def torch_float_mlp(
    seed: int, path: str | Path, n_in: int = 16, hidden: int = 24, n_out: int = 5
) -> Path:
    """``torch.onnx.export`` (TorchScript exporter, opset 13) of a float MLP, batch axis dynamic."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out)
    ).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, n_in),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=13,
        )
    return path


def conv_nchw(seed: int, path: str | Path, nhwc_input: bool = False, hw: int = 8) -> Path:
    """Channels-first Conv-Relu-Quant-MaxPool-Flatten-MatMul, symbolic batch ``N``.

    ``nhwc_input=False``: NCHW input with an 8-bit unsigned Quant on it (as Brevitas
    writes). ``nhwc_input=True``: a float NHWC input, a Transpose to NCHW in front
    and no input Quant (as tf2onnx writes); give the precision with ``input_type``.
    """
    rng = np.random.default_rng(seed)
    g = _G(rng)
    if nhwc_input:
        x = g.n("Transpose", ["input_1"], name="Transpose_0", perm=[0, 3, 1, 2])
    else:
        x = g.quant("input_1", 2.0**-8, 8, QD, signed=False, name="Quant_in")
    w = g.quant(g.c(rng.normal(0, 0.4, (4, 1, 3, 3))), 2.0**-4, 5, QD, narrow=True)
    b = g.quant(g.c(rng.normal(0, 0.2, 4)), 2.0**-12, 16, QD)
    h = g.n("Conv", [x, w, b], name="Conv_0", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = g.n("Relu", [h], name="Relu_0")
    h = g.quant(h, 2.0**-3, 6, QD, signed=False, name="Quant_relu")
    h = g.n("MaxPool", [h], name="MaxPool_0", kernel_shape=[2, 2], strides=[2, 2])
    h = g.n("Flatten", [h], name="Flatten_0", axis=1)
    n_flat = 4 * (hw // 2) ** 2
    w2 = g.quant(g.c(rng.normal(0, 0.2, (n_flat, 5))), 2.0**-5, 5, QD, narrow=True)
    g.n("MatMul", [h, w2], name="MatMul_0", out="output")
    in_shape = ["N", hw, hw, 1] if nhwc_input else ["N", 1, hw, hw]
    return g.save(path, "input_1", in_shape, "output", ["N", 5], [("", 13), (QD, 1)])


def qkeras_mlp(
    seed: int, path: str | Path, n_in: int = 16, hidden: int = 32, n_out: int = 5
) -> Path:
    """qonnx's Keras converter on a QKeras MLP: tf names, Quant after MatMul/Add, Softmax at the end."""
    rng = np.random.default_rng(seed)
    g = _G(rng)
    x = g.quant(
        "input_1", 2.0**-5, 10, QD, name="input_1_quant"
    )  # QActivation(quantized_bits(10, 4))
    w1 = g.quant(g.c(rng.normal(0, 0.3, (n_in, hidden))), 2.0**-5, 6, QD, narrow=True)
    h = g.n("MatMul", [x, w1], name="sequential/dense/MatMul", out="sequential/dense/MatMul:0")
    b1 = g.quant(g.c(rng.normal(0, 0.3, hidden)), 2.0**-10, 16, QD)
    h = g.n("Add", [h, b1], name="sequential/dense/BiasAdd", out="sequential/dense/BiasAdd:0")
    h = g.n("Relu", [h], name="sequential/dense/Relu", out="sequential/dense/Relu:0")
    h = g.quant(h, 2.0**-3, 6, QD, signed=False, name="sequential/dense/Relu_quant")
    w2 = g.quant(g.c(rng.normal(0, 0.3, (hidden, n_out))), 2.0**-5, 6, QD, narrow=True)
    y = g.n("MatMul", [h, w2], name="sequential/dense_1/MatMul", out="sequential/dense_1/MatMul:0")
    b2 = g.quant(g.c(rng.normal(0, 0.3, n_out)), 2.0**-8, 16, QD)
    y = g.n("Add", [y, b2], name="sequential/dense_1/BiasAdd", out="sequential/dense_1/BiasAdd:0")
    g.n("Softmax", [y], name="sequential/dense_1/Softmax", out="dense_1", axis=-1)
    return g.save(
        path,
        "input_1",
        ["unk__6", n_in],
        "dense_1",
        ["unk__7", n_out],
        [("", 13), (QD, 1)],
        producer="qonnx-keras",
    )


def qonnx_reference(path: str | Path, x: np.ndarray, tensor: str | None = None) -> np.ndarray:
    """qonnx's execution of the ORIGINAL file (after only the domain / opset fix) on batch ``x``.

    The batch dimension is set to ``len(x)`` so the whole batch runs at once;
    ``tensor`` returns an intermediate tensor instead of the graph output.
    """
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    from edgeml.ingest import fix_domains

    proto = onnx.load(str(path))
    fix_domains(proto)
    n = len(x)
    inits = {t.name for t in proto.graph.initializer}
    for vi in [*proto.graph.input, *proto.graph.output]:
        if vi.name in inits:
            continue
        d0 = vi.type.tensor_type.shape.dim[0]
        d0.Clear()
        d0.dim_value = n
    del proto.graph.value_info[:]
    model = ModelWrapper(proto).transform(InferShapes())
    inp = model.graph.input[0].name
    ctx = execute_onnx(
        model, {inp: x.astype(np.float32)}, return_full_exec_context=tensor is not None
    )
    return np.asarray(ctx[tensor or model.graph.output[0].name], np.float64)


def brevitas_float_input_mlp(seed: int, path: str | Path, n_in: int = 16, n_out: int = 5) -> Path:
    """A real ``brevitas.export.export_qonnx`` of a QuantLinear net with NO input quantizer.

    The float input goes straight into the first MatMul (a QuantLinear without
    ``input_quant``). The file is then post-edited to look like an older export: the
    Quant nodes moved to the ``onnx.brevitas`` domain and that domain's opset import
    removed.
    """
    import contextlib
    import io
    import warnings

    import torch
    from brevitas.export import export_qonnx
    from brevitas.nn import QuantLinear, QuantReLU
    from brevitas.quant import Int8WeightPerTensorFixedPoint, Uint8ActPerTensorFixedPoint

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        QuantLinear(
            n_in, 24, bias=False, weight_quant=Int8WeightPerTensorFixedPoint, weight_bit_width=6
        ),
        QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, bit_width=6),
        QuantLinear(
            24, n_out, bias=False, weight_quant=Int8WeightPerTensorFixedPoint, weight_bit_width=6
        ),
    ).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        torch.no_grad(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        model(torch.randn(64, n_in) * 2)  # calibrate the activation scale a little
        export_qonnx(model, args=torch.zeros(1, n_in), export_path=str(path))
    proto = onnx.load(str(path))
    for n in proto.graph.node:
        if n.domain == QD:
            n.domain = "onnx.brevitas"
    keep = [o for o in proto.opset_import if o.domain != QD]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    onnx.save(proto, str(path))
    return path
