"""RN08-style tiny ResNet on scikit-learn's 8x8 digits, with residual ``Add`` nodes on chip.

The shape follows MLPerf Tiny's ResNet-8 (a conv stem, residual stacks of two
3x3 convolutions joined to an identity or 1x1-conv shortcut by an elementwise
add with a ReLU after it, a downsampling stack, a dense classifier), scaled to
8x8 inputs and small enough for hls4ml's C-sim and a da4ml RTL build on two cores:

====================  ===================================  ===========
layer                 op                                   output
====================  ===================================  ===========
``stem``              conv 3x3, 1->4, pad 1, ReLU          8x8x4
``pool``              max-pool 2                           4x4x4
``stack1``            conv 3x3 4->4, ReLU, conv 3x3 4->4;  4x4x4
                      + identity shortcut; ReLU
``stack2``            conv 3x3 4->8 stride 2, ReLU,        2x2x8
                      conv 3x3 8->8; + 1x1 conv 4->8
                      stride 2 shortcut; ReLU
``flatten`` / ``fc``  dense 32->10 (logits)                10
====================  ===================================  ===========

1,586 parameters, 10,816 multiplies per image. At 6 bits and 50 % pruning the
pipelined RTL (``latency_cutoff`` 5) is about 1.2 MB of Verilog, 12-13 cycles of
latency and ~66k LUTs by da4ml's estimate (yosys ``synth_xilinx``: 54k LUT, 12k FF,
0 DSP after 4.5 min of CPU, so the flow's 600 s yosys limit is tight on busy
cores); its Verilator build takes about 45 s of CPU. There is no BatchNorm
(a float BatchNorm becomes a 16-fractional-bit fixed-point affine in the golden
model, which is not exact against QONNX; these nets train well without it) and
no average pooling (the golden model and the RTL have no AveragePool op;
MaxPool is supported): the end is a flatten of the 2x2x8 map.

**Exact residual adds.** In the Brevitas twin the two inputs of every add pass
through *one* shared ``QuantIdentity`` instance (``stackN.add_quant``: signed,
``bit_width`` bits, power-of-two scale). Both operands therefore carry the same
scale and format, so the add is a plain integer add at every level: the golden
model's ``AddTensors`` with no shift, hls4ml's ``Merge`` (``add``) whose inferred
type is one bit wider than its identical inputs, and da4ml's adder. The sum goes
through a ``QuantReLU`` (unsigned, ``bit_width`` bits) as in ResNet.

The rest is the recipe of :mod:`edgeml.models.digits`: power-of-two weight
scales, ``Int16Bias``, a constant unsigned 8-bit input quantizer with scale
``2**-7``, no output quantizer on ``fc``. Float32 torch is exact: the widest
accumulator (stack 2's second conv at 8 bits: 72 taps x 255 x 127) is below 2**22.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from edgeml.errors import ConfigError

from . import training, zoo
from .digits import INPUT_SHAPE, N_CLASSES, InputQuant, load_digits_split
from .training import Dataset, TrainSettings

with warnings.catch_warnings():
    # Brevitas warns at import about optional kernels it does not need here.
    warnings.simplefilter("ignore")
    from brevitas import nn as qnn
    from brevitas.quant import (
        Int8ActPerTensorFixedPoint,
        Int8WeightPerTensorFixedPoint,
        Int16Bias,
        Uint8ActPerTensorFixedPoint,
    )

#: Channels of the stem / stack 1 and of stack 2.
WIDTHS: tuple[int, int] = (4, 8)
ACT_COLLECT_STATS_STEPS = training.ACT_COLLECT_STATS_STEPS
DEFAULT_BIT_WIDTH = 6


def _check_bit_width(bit_width: int) -> None:
    if isinstance(bit_width, bool) or not isinstance(bit_width, int) or not 2 <= bit_width <= 8:
        raise ConfigError(
            f"bit_width of design 'rn08' must be an integer from 2 to 8 (8-bit quantizer "
            f"families), got {bit_width!r}"
        )


class Layers:
    """Makes the float layers, or their Brevitas twins at ``bit_width`` (same parameter names)."""

    def __init__(self, bit_width: int | None) -> None:
        self.bit_width = bit_width

    def conv(self, cin: int, cout: int, k: int, stride: int = 1) -> nn.Module:
        if self.bit_width is None:
            return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)
        return qnn.QuantConv2d(
            cin,
            cout,
            k,
            stride=stride,
            padding=k // 2,
            bias=True,
            weight_quant=Int8WeightPerTensorFixedPoint,
            weight_bit_width=self.bit_width,
            bias_quant=Int16Bias,
            return_quant_tensor=False,
        )

    def linear(self, n_in: int, n_out: int) -> nn.Module:
        if self.bit_width is None:
            return nn.Linear(n_in, n_out)
        # no output quantizer: the logits are (acc + bias) at scale input x weight
        return qnn.QuantLinear(
            n_in,
            n_out,
            bias=True,
            weight_quant=Int8WeightPerTensorFixedPoint,
            weight_bit_width=self.bit_width,
            bias_quant=Int16Bias,
            return_quant_tensor=False,
        )

    def relu(self) -> nn.Module:
        if self.bit_width is None:
            return nn.ReLU()
        return qnn.QuantReLU(
            act_quant=Uint8ActPerTensorFixedPoint,
            bit_width=self.bit_width,
            collect_stats_steps=ACT_COLLECT_STATS_STEPS,
            return_quant_tensor=True,
        )

    def add_quant(self) -> nn.Module:
        """The quantizer shared by both operands of a residual add (identity for float)."""
        if self.bit_width is None:
            return nn.Identity()
        return qnn.QuantIdentity(
            act_quant=Int8ActPerTensorFixedPoint,
            bit_width=self.bit_width,
            collect_stats_steps=ACT_COLLECT_STATS_STEPS,
            return_quant_tensor=False,
        )

    def inp(self) -> nn.Module:
        if self.bit_width is None:
            return nn.Identity()
        return qnn.QuantIdentity(act_quant=InputQuant, return_quant_tensor=True)


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.value if hasattr(x, "value") else x


class ResidualStack(nn.Module):
    """conv3x3 (stride s) -> ReLU -> conv3x3, plus a shortcut, added, then ReLU.

    The shortcut is the identity when shape is kept, else a 1x1 conv with stride
    ``s`` (RN08's projection shortcut). In the QAT twin both add operands go
    through the one ``add_quant`` instance, so they share a power-of-two scale.
    """

    def __init__(self, layers: Layers, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = layers.conv(cin, cout, 3, stride)
        self.relu1 = layers.relu()
        self.conv2 = layers.conv(cout, cout, 3)
        self.shortcut = (
            layers.conv(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        )
        self.add_quant = layers.add_quant()
        self.relu = layers.relu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.relu1(self.conv1(x)))
        s = _plain(self.shortcut(x))
        return self.relu(_plain(self.add_quant(_plain(h))) + _plain(self.add_quant(s)))


class RN08(nn.Module):
    """The tiny ResNet; ``bit_width=None`` is the float model, else its Brevitas QAT twin."""

    def __init__(self, bit_width: int | None = None, widths: tuple[int, int] = WIDTHS) -> None:
        super().__init__()
        if bit_width is not None:
            _check_bit_width(bit_width)
        if len(widths) != 2 or not all(
            isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in widths
        ):
            raise ConfigError(f"widths must be two positive channel counts, got {widths!r}")
        c1, c2 = widths
        layers = Layers(bit_width)
        self.bit_width = bit_width
        self.inp = layers.inp()
        self.stem = layers.conv(INPUT_SHAPE[0], c1, 3)
        self.stem_relu = layers.relu()
        self.pool = nn.MaxPool2d(2)
        self.stack1 = ResidualStack(layers, c1, c1, 1)
        self.stack2 = ResidualStack(layers, c1, c2, 2)
        self.flatten = nn.Flatten()
        side = INPUT_SHAPE[1] // 4
        self.fc = layers.linear(c2 * side * side, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.stem_relu(self.stem(self.inp(x))))
        h = self.stack2(self.stack1(h))
        return self.fc(self.flatten(h))


def build_float() -> nn.Module:
    """A freshly initialised float RN08."""
    return RN08(None)


def build_qat(bit_width: int = DEFAULT_BIT_WIDTH) -> nn.Module:
    """A freshly initialised Brevitas QAT RN08 at ``bit_width`` (2..8)."""
    _check_bit_width(bit_width)
    return RN08(bit_width)


def n_parameters(model: nn.Module) -> int:
    """Trainable weights and biases (quantizer scales excluded)."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if name.endswith(".weight") or name.endswith(".bias")
    )


def _load(seed: int) -> Dataset:
    d = load_digits_split(seed=seed)
    return Dataset(d.x_train, d.y_train, d.x_test, d.y_test, {"source": "digits test set"})


DESIGNS = {
    "rn08": zoo.DesignSpec(
        name="rn08",
        title="digits RN08-style ResNet (stem 4, stacks 4/8, residual adds)",
        task="classification",
        input_shape=INPUT_SHAPE,
        load_data=_load,
        build_float=build_float,
        build_qat=build_qat,
        loss=zoo.cross_entropy,
        metrics=zoo.accuracy_metrics,
        epochs={"float": 60, "qat": 40, "finetune": 40},
        float_settings=TrainSettings(lr=3e-3),
        settings=TrainSettings(lr=1e-3),
        notes="residual adds share one power-of-two quantizer per stack",
    )
}
