"""Small models using each op of the extended op set, written the way other tools write them.

Two producers: hand-written QONNX graphs (onnx.helper with qonnx's conventions: ``Quant``
in ``qonnx.custom_op.general``, NCHW tensors, opset 13 inputs for Slice / Pad / Resize
with torch's empty ``roi``) and Brevitas 0.13 exports (``brevitas.export.export_qonnx``).
Each builder writes the raw file ``<name>.raw.onnx`` and the cleaned file ``path`` (through
``edgeml.export.clean_qonnx``) and returns ``path``. Every scale is a power of two, so the
golden model must equal QONNX's execution exactly.

``OP_MODELS`` maps a family name to its builder; ``OPS_OF`` says which ops each exercises.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qonnx_builders import GraphBuilder

from edgeml.export import clean_qonnx
from edgeml.ingest import normalise


def raw_path(path: Path) -> Path:
    """Where a builder writes the file as the other tool wrote it (before cleaning)."""
    return path.with_name(path.stem + ".raw.onnx")


def _val(t: Any) -> Any:
    """The plain tensor of a Brevitas QuantTensor (slicing and reductions need it)."""
    return t.value if hasattr(t, "value") else t


def _finish(b: GraphBuilder, out: str, path: Path, opset: int = 13) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = b.build(out)
    for imp in m.model.opset_import:
        if imp.domain == "":
            imp.version = opset
    m.save(str(raw_path(path)))
    clean_qonnx(normalise(str(raw_path(path))).model, path)  # as `edgeml flow --onnx` does
    return path


def _w(rng: np.random.Generator, *shape: int, bits: int = 6) -> tuple[np.ndarray, float]:
    """Weights already on a 2**-(bits-1) grid, and that scale."""
    s = 2.0 ** -(bits - 1)
    lim = (1 << (bits - 1)) - 1
    return rng.integers(-lim, lim + 1, size=shape).astype(np.float32) * s, s


def _dense(b: GraphBuilder, rng: np.random.Generator, x: str, n_in: int, n_out: int) -> str:
    w, s = _w(rng, n_in, n_out)
    return b.node("MatMul", [x, b.qweight(w, s, 6)])


def tables(path: Path, seed: int = 0) -> Path:
    """Dense -> 8-bit Quant -> Tanh / Sigmoid / HardSigmoid -> Quant, gated by Mul, and ``1 - z``."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((16,), (8,))
    x = b.quant("inp", 2.0**-6, 8)
    h = b.quant(_dense(b, rng, x, 16, 8), 2.0**-5, 8)
    t = b.quant(b.node("Tanh", [h]), 2.0**-7, 8)
    g = b.quant(b.node("Sigmoid", [h]), 2.0**-8, 8, signed=False)
    hs = b.quant(b.node("HardSigmoid", [h], alpha=0.25, beta=0.5), 2.0**-7, 8, signed=False)
    one_minus = b.node("Sub", [b.const(np.float32(1.0)), g])  # 1 - z: constant first
    gated = b.node("Add", [b.node("Mul", [g, t]), b.node("Mul", [one_minus, hs])])
    out = b.quant(gated, 2.0**-6, 10)
    return _finish(b, out, path)


def movement(path: Path, seed: int = 0) -> Path:
    """Slice, Concat (two scales), Split, Pad, Unsqueeze/Squeeze, Tile, then a Dense."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((16,), (6,))
    x = b.quant("inp", 2.0**-6, 8)
    h = b.quant(b.node("Relu", [_dense(b, rng, x, 16, 12)]), 2.0**-4, 6, signed=False)
    i64 = np.int64
    a = b.node(
        "Slice", [h, b.const([0], dtype=i64), b.const([5], dtype=i64), b.const([1], dtype=i64)]
    )
    c = b.node(
        "Slice",
        [
            h,
            b.const([11], dtype=i64),
            b.const([1], dtype=i64),
            b.const([1], dtype=i64),
            b.const([-2], dtype=i64),
        ],
    )
    cat = b.node("Concat", [c, x, a], axis=1)  # scales 2**-4 and 2**-6: aligned
    b.n += 1
    s1, s2 = f"t{b.n}a", f"t{b.n}b"
    from onnx import helper

    b.nodes.append(helper.make_node("Split", [cat], [s1, s2], name="Split_x", axis=1))  # 13 + 13

    padded = b.node("Pad", [s1, b.const([0, 2, 0, 1], dtype=i64)], mode="constant")  # 16
    u = b.node("Unsqueeze", [padded, b.const([1], dtype=i64)])  # (1, 1, 16)
    t = b.node("Tile", [u, b.const([1, 2, 1], dtype=i64)])  # (1, 2, 16)
    sq = b.node("Flatten", [t], axis=1)  # (1, 32)
    joined = b.node("Concat", [sq, s2], axis=1)  # 45
    out = b.quant(_dense(b, rng, joined, 45, 6), 2.0**-3, 12)
    return _finish(b, out, path)


def pooling(path: Path, seed: int = 0) -> Path:
    """NCHW Conv -> Relu -> Quant -> Resize nearest x2 (torch's empty roi) -> Concat ->
    AveragePool 2 -> GlobalAveragePool -> ReduceMean -> Dense."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((2, 4, 4), (3,))
    x = b.quant("inp", 2.0**-6, 8)
    w, s = _w(rng, 4, 2, 3, 3)
    h = b.node("Conv", [x, b.qweight(w, s, 6)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.quant(b.node("Relu", [h]), 2.0**-4, 6, signed=False)
    up = b.node(
        "Resize",
        [h, "", b.const(np.array([1, 1, 2, 2], np.float32))],
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )
    xup = b.node("Resize", [x, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    cat = b.node("Concat", [up, xup], axis=1)  # (6, 8, 8)
    ap = b.quant(b.node("AveragePool", [cat], kernel_shape=[2, 2], strides=[2, 2]), 2.0**-6, 8)
    gap = b.node("GlobalAveragePool", [ap])  # (6, 1, 1)
    mean = b.node("ReduceMean", [ap], axes=[1], keepdims=0)  # (4, 4): mean over channels
    flat = b.quant(b.node("Flatten", [mean], axis=1), 2.0**-7, 10)  # mean of 6: real LSB
    g = b.node("Flatten", [gap], axis=1)
    both = b.quant(b.node("Concat", [g, flat], axis=1), 2.0**-7, 10)  # 6 + 16
    out = b.quant(_dense(b, rng, both, 22, 3), 2.0**-4, 12)
    return _finish(b, out, path)


def attention(path: Path, seed: int = 0) -> Path:
    """Per-token Dense on (tokens, features), Q @ K^T and scores @ V (activation MatMuls)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((4, 8), (4, 6))
    x = b.quant("inp", 2.0**-6, 8)
    q = b.quant(_dense(b, rng, x, 8, 6), 2.0**-4, 8)
    k = b.quant(_dense(b, rng, x, 8, 6), 2.0**-4, 8)
    v = b.quant(_dense(b, rng, x, 8, 6), 2.0**-4, 8)
    kt = b.node("Transpose", [k], perm=[0, 2, 1])
    scores = b.quant(b.node("MatMul", [q, kt]), 2.0**-3, 8)
    ctx = b.quant(b.node("MatMul", [scores, v]), 2.0**-3, 10)
    out = b.quant(b.node("Sub", [ctx, v]), 2.0**-3, 12)
    return _finish(b, out, path)


def deconv(path: Path, seed: int = 0) -> Path:
    """NCHW ConvTranspose (stride 2, kernel 3, pads 1, output_padding 1) with bias."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((2, 4, 4), (3, 8, 8))
    x = b.quant("inp", 2.0**-6, 8)
    w, s = _w(rng, 2, 3, 3, 3)
    bias = rng.integers(-64, 64, size=3).astype(np.float32) * 2.0**-11
    h = b.node(
        "ConvTranspose",
        [x, b.qweight(w, s, 6), b.quant(b.const(bias), 2.0**-11, 16)],
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        output_padding=[1, 1],
    )
    out = b.quant(h, 2.0**-5, 10)
    return _finish(b, out, path)


# ------------------------------------------------------------------ Brevitas exports


def _brevitas() -> Any:
    import brevitas.nn as qnn
    import torch
    from brevitas.quant import (
        Int8ActPerTensorFixedPoint,
        Int8WeightPerTensorFixedPoint,
        Int16Bias,
        Uint8ActPerTensorFixedPoint,
    )

    return (
        qnn,
        torch,
        Int8ActPerTensorFixedPoint,
        Uint8ActPerTensorFixedPoint,
        Int8WeightPerTensorFixedPoint,
        Int16Bias,
    )


def _export(model: Any, shape: tuple[int, ...], path: Path) -> Path:
    import torch
    from brevitas.export import export_qonnx

    from edgeml.export import quiet_tools

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with quiet_tools(), torch.no_grad():
        export_qonnx(model, args=torch.zeros(shape), export_path=str(raw_path(path)))
    clean_qonnx(str(raw_path(path)), path)
    return path


def gru_cell_module(seed: int = 0) -> Any:
    """A GRU-style cell step in Brevitas: input = concat(x, h) as one tensor,
    sigmoid / tanh gates (8-bit quantizers around them), ``z*h + (1-z)*n``."""
    qnn, torch, A8, U8, W8, B16 = _brevitas()
    torch.manual_seed(seed)
    nx, nh = 4, 6
    wq = {"weight_quant": W8, "weight_bit_width": 6, "bias_quant": B16, "return_quant_tensor": True}

    def act(q: Any = A8) -> Any:
        return qnn.QuantIdentity(act_quant=q, bit_width=8, return_quant_tensor=True)

    class Cell(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = act()
            self.lz = qnn.QuantLinear(nx + nh, nh, **wq)
            self.ln = qnn.QuantLinear(nx + nh, nh, **wq)
            self.qz, self.qn = act(), act()
            self.sig = qnn.QuantSigmoid(act_quant=U8, bit_width=8, return_quant_tensor=True)
            self.tanh = qnn.QuantTanh(act_quant=A8, bit_width=8, return_quant_tensor=True)
            self.out = act()

        def forward(self, xh: Any) -> Any:
            xh = self.inp(xh)
            z = self.sig(self.qz(self.lz(xh)))
            n = self.tanh(self.qn(self.ln(xh)))
            h = _val(xh)[:, nx:]
            z = _val(z)
            return _val(self.out(z * h + (1 - z) * _val(n)))

    cell = Cell()
    for p in cell.parameters():
        torch.nn.init.uniform_(p, -0.5, 0.5)
    cell(torch.rand(64, nx + nh) * 2 - 1)  # calibrate the activation scales
    return cell.eval()


def brevitas_gru_cell(path: Path, seed: int = 0) -> Path:
    """:func:`gru_cell_module` exported by Brevitas."""
    return _export(gru_cell_module(seed), BREVITAS_INPUTS["brevitas_gru_cell"], path)


def conv1d_module(seed: int = 0) -> Any:
    """Depthwise causal Conv1d (groups = channels, left padding by a zero Pad) + pointwise Conv1d,
    ReLU, mean over time, Linear head: an SSM's FIR edge form, as Brevitas exports it."""
    qnn, torch, A8, U8, W8, B16 = _brevitas()
    torch.manual_seed(seed)
    wq = {"weight_quant": W8, "weight_bit_width": 6, "bias_quant": B16, "return_quant_tensor": True}

    class Fir(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=A8, bit_width=8, return_quant_tensor=True)
            self.dw = qnn.QuantConv1d(3, 3, 5, groups=3, padding=0, **wq)
            self.pw = qnn.QuantConv1d(3, 4, 1, **wq)
            self.relu = qnn.QuantReLU(act_quant=U8, bit_width=6, return_quant_tensor=True)
            self.pool = qnn.QuantIdentity(act_quant=A8, bit_width=8, return_quant_tensor=False)
            self.head = qnn.QuantLinear(4, 2, **{**wq, "return_quant_tensor": False, "bias": False})

        def forward(self, x: Any) -> Any:
            x = self.inp(x)
            x = torch.nn.functional.pad(x, (4, 0))
            x = self.relu(self.pw(self.dw(x)))
            return self.head(self.pool(_val(x).mean(dim=2)))

    m = Fir()
    for p in m.parameters():
        torch.nn.init.uniform_(p, -0.5, 0.5)
    m(torch.rand(64, 3, 16) * 2 - 1)
    return m.eval()


def brevitas_conv1d(path: Path, seed: int = 0) -> Path:
    """:func:`conv1d_module` exported by Brevitas."""
    return _export(conv1d_module(seed), BREVITAS_INPUTS["brevitas_conv1d"], path)


def unrolled_module(seed: int = 0) -> Any:
    """One QuantLinear + QuantTanh cell applied 3 times (a recurrent net unrolled in time)."""
    qnn, torch, A8, _, W8, B16 = _brevitas()
    torch.manual_seed(seed)
    wq = {"weight_quant": W8, "weight_bit_width": 6, "bias_quant": B16, "return_quant_tensor": True}

    class Unrolled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=A8, bit_width=8, return_quant_tensor=True)
            self.cell = qnn.QuantLinear(4, 4, **wq)
            self.pre = qnn.QuantIdentity(act_quant=A8, bit_width=8, return_quant_tensor=True)
            self.act = qnn.QuantTanh(act_quant=A8, bit_width=8, return_quant_tensor=True)

        def forward(self, x: Any) -> Any:
            h = self.inp(x)
            for _ in range(3):
                h = self.act(self.pre(self.cell(h)))
            return _val(h)

    m = Unrolled()
    m(torch.rand(64, 4) * 2 - 1)
    return m.eval()


def brevitas_unrolled(path: Path, seed: int = 0) -> Path:
    """:func:`unrolled_module` exported by Brevitas (one weight Quant read by three Gemms)."""
    return _export(unrolled_module(seed), BREVITAS_INPUTS["brevitas_unrolled"], path)


#: Input shape (with batch) of each Brevitas family, and its module builder.
BREVITAS_INPUTS: dict[str, tuple[int, ...]] = {
    "brevitas_gru_cell": (1, 10),
    "brevitas_conv1d": (1, 3, 16),
    "brevitas_unrolled": (1, 4),
}
BREVITAS_MODULES: dict[str, Callable[[int], Any]] = {
    "brevitas_gru_cell": gru_cell_module,
    "brevitas_conv1d": conv1d_module,
    "brevitas_unrolled": unrolled_module,
}


OP_MODELS: dict[str, Callable[..., Path]] = {
    "tables": tables,
    "movement": movement,
    "pooling": pooling,
    "attention": attention,
    "deconv": deconv,
    "brevitas_gru_cell": brevitas_gru_cell,
    "brevitas_conv1d": brevitas_conv1d,
    "brevitas_unrolled": brevitas_unrolled,
}
OPS_OF: dict[str, tuple[str, ...]] = {
    "tables": ("Tanh", "Sigmoid", "HardSigmoid", "Mul", "Sub", "Add"),
    "movement": ("Slice", "Concat", "Split", "Pad", "Unsqueeze", "Tile"),
    "pooling": ("Resize", "Concat", "AveragePool", "GlobalAveragePool", "ReduceMean"),
    "attention": ("MatMul",),
    "deconv": ("ConvTranspose",),
    "brevitas_gru_cell": ("Sigmoid", "Tanh", "Slice", "Mul", "Sub", "Add"),
    "brevitas_conv1d": ("Conv", "Pad", "ReduceMean"),
    "brevitas_unrolled": ("Tanh",),
}
