"""Keras 3 test models built with the real libraries (HGQ2's qkeras compat API, HGQ2 native).

Each builder returns a built model initialised from ``seed`` (and optionally trained
a few steps on random data), the way a user would make it; tests save it with
``model.save('x.keras')`` and load it back from the file.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from typing import Any

import numpy as np


def _train(model: Any, in_shape: tuple[int, ...], n_out: int, seed: int, steps: int) -> None:
    import keras

    if steps <= 0:
        return
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (64 * steps, *in_shape)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, n_out, len(x)), n_out)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy")
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)


def qkeras_jet_mlp(seed: int = 0, steps: int = 5) -> Any:
    """QKeras-style jet tagger 16-32-32-5: quantized_bits(6,0,alpha=1) weights, quantized_relu(6)."""
    import keras
    from qkeras import quantized_bits, quantized_relu
    from qkeras.qlayers import QActivation, QDense

    keras.utils.set_random_seed(seed)
    wq = dict(
        kernel_quantizer=quantized_bits(6, 0, alpha=1), bias_quantizer=quantized_bits(6, 0, alpha=1)
    )
    model = keras.Sequential(
        [
            keras.Input((16,)),
            QActivation(quantized_bits(8, 3, alpha=1), name="q_in"),
            QDense(32, name="fc1", **wq),
            QActivation(quantized_relu(6), name="relu1"),
            QDense(32, name="fc2", **wq),
            QActivation(quantized_relu(6), name="relu2"),
            QDense(5, name="fc3", **wq),
            QActivation(quantized_bits(10, 4, alpha=1), name="q_out"),
        ],
        name="qkeras_jet",
    )
    _train(model, (16,), 5, seed, steps)
    return model


def qkeras_conv(seed: int = 0, steps: int = 3) -> Any:
    """Small QKeras-style CNN on 8x8x1: QConv2D-relu-MaxPool-Flatten-QDense."""
    import keras
    from qkeras import quantized_bits, quantized_relu
    from qkeras.qlayers import QActivation, QConv2D, QDense

    keras.utils.set_random_seed(seed)
    wq = dict(
        kernel_quantizer=quantized_bits(5, 0, alpha=1), bias_quantizer=quantized_bits(5, 0, alpha=1)
    )
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            QActivation(quantized_bits(6, 1, alpha=1), name="q_in"),
            QConv2D(4, (3, 3), name="conv1", **wq),
            QActivation(quantized_relu(6, 1), name="relu1"),
            keras.layers.MaxPooling2D((2, 2), name="pool1"),
            keras.layers.Flatten(name="flat"),
            QDense(5, name="fc", **wq),
            QActivation(quantized_bits(10, 4, alpha=1), name="q_out"),
        ],
        name="qkeras_cnn",
    )
    _train(model, (8, 8, 1), 5, seed, steps)
    return model


def hgq_dense(seed: int = 0, steps: int = 0) -> Any:
    """HGQ2 native QDense model: heterogeneous (per-weight) kernels, homogeneous SAT activations.

    Activations use HGQ2's default rounding (RND, ties toward +inf) so the converter's
    signed-RND handling is exercised.
    """
    import keras
    from hgq.config import QuantizerConfig
    from hgq.layers import QDense

    keras.utils.set_random_seed(seed)

    def act(k: int, i: int, f: int) -> Any:
        return QuantizerConfig(
            "kif",
            "datalane",
            k0=k,
            i0=i,
            f0=f,
            overflow_mode="SAT",
            homogeneous_axis=None,
            heterogeneous_axis=(),
        )

    model = keras.Sequential(
        [
            keras.Input((16,)),
            QDense(32, activation="relu", iq_conf=act(1, 2, 4), name="fc1"),
            QDense(
                16,
                activation="relu",
                iq_conf=act(0, 2, 3),
                name="fc2",
                enable_oq=True,
                oq_conf=act(0, 3, 3),
            ),
            QDense(5, iq_conf=act(0, 3, 3), name="fc3", enable_oq=True, oq_conf=act(1, 4, 5)),
        ],
        name="hgq_mlp",
    )
    _train(model, (16,), 5, seed, steps)
    # Per-weight bit widths, as HGQ2's bit-width training leaves them (some pruned to 0 bits).
    kq = model.get_layer("fc1").kq.quantizer
    rng = np.random.default_rng(seed)
    kq._b.assign(rng.integers(0, 7, tuple(kq._b.shape)).astype("float32"))
    return model


def qkeras_functional(seed: int = 0, steps: int = 2) -> Any:
    """Functional-API QKeras-style MLP 12-16-4 with an in-layer relu and a plain ReLU layer."""
    import keras
    from qkeras import quantized_bits, quantized_relu
    from qkeras.qlayers import QActivation, QDense

    keras.utils.set_random_seed(seed)
    wq = dict(
        kernel_quantizer=quantized_bits(5, 1, alpha=1), bias_quantizer=quantized_bits(7, 2, alpha=1)
    )
    inp = keras.Input((12,), name="features")
    x = QActivation(quantized_bits(7, 2, alpha=1), name="q_in")(inp)
    x = QDense(16, activation="relu", name="fc1", **wq)(x)
    x = QActivation(quantized_relu(4, 2), name="q1")(x)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    x = QDense(4, name="fc2", **wq)(x)
    x = keras.layers.ReLU(name="relu_out")(x)
    out = QActivation(quantized_bits(8, 3, alpha=1), name="q_out")(x)
    model = keras.Model(inp, out, name="qkeras_functional")
    _train(model, (12,), 4, seed, steps)
    return model


def qkeras_no_input_quant(seed: int = 0) -> Any:
    """QKeras-style MLP whose first layer is a QDense (no input quantizer)."""
    import keras
    from qkeras import quantized_bits, quantized_relu
    from qkeras.qlayers import QActivation, QDense

    keras.utils.set_random_seed(seed)
    wq = dict(
        kernel_quantizer=quantized_bits(4, 0, alpha=1), bias_quantizer=quantized_bits(4, 0, alpha=1)
    )
    return keras.Sequential(
        [
            keras.Input((8,)),
            QDense(8, name="fc1", **wq),
            QActivation(quantized_relu(5, 2), name="relu1"),
            QDense(3, name="fc2", **wq),
        ],
        name="no_iq",
    )


def qkeras_lstm(seed: int = 0) -> Any:
    """A quantized input followed by a plain Keras LSTM (unsupported)."""
    import keras
    from qkeras import quantized_bits
    from qkeras.qlayers import QActivation

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((5, 4)),
            QActivation(quantized_bits(6, 2, alpha=1), name="q_in"),
            keras.layers.LSTM(4, name="lstm"),
            keras.layers.Dense(2, name="head"),
        ],
        name="lstm_model",
    )


def qkeras_lambda(seed: int = 0) -> Any:
    """A quantized input followed by a Lambda layer (Python code in the model file)."""
    import keras
    from qkeras import quantized_bits
    from qkeras.qlayers import QActivation

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((4,)),
            QActivation(quantized_bits(6, 2, alpha=1), name="q_in"),
            keras.layers.Lambda(lambda x: x * 2, name="times_two"),
        ],
        name="lambda_model",
    )


def hgq_default(seed: int = 0) -> Any:
    """HGQ2 native QDense with HGQ2's default configs (per-element, WRAP activations)."""
    import keras
    from hgq.layers import QDense

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((6,)), QDense(4, name="fc1", enable_iq=True)], name="hgq_default"
    )
    # Per-feature fractional bits, as HGQ2's bit-width training leaves them.
    iq = model.get_layer("fc1").iq.quantizer
    iq._f.assign(np.random.default_rng(seed).integers(2, 6, tuple(iq._f.shape)).astype("float32"))
    return model


def hgq_wrap(seed: int = 0) -> Any:
    """HGQ2 native QDense whose homogeneous input quantizer wraps on overflow."""
    import keras
    from hgq.config import QuantizerConfig
    from hgq.layers import QDense

    keras.utils.set_random_seed(seed)
    iq = QuantizerConfig(
        "kif",
        "datalane",
        k0=1,
        i0=2,
        f0=3,
        round_mode="RND_CONV",
        overflow_mode="WRAP",
        homogeneous_axis=None,
        heterogeneous_axis=(),
    )
    return keras.Sequential(
        [keras.Input((6,)), QDense(4, name="fc1", iq_conf=iq, enable_iq=True)], name="hgq_wrap"
    )


#: Builders that use HGQ2 native layers: they must run before ``qkeras.qlayers`` is
#: imported in the same process, because importing it rewraps ``hgq.layers`` classes
#: (unset quantizers become pass-through 'dummy' ones).
HGQ_NATIVE = ("hgq_dense", "hgq_default", "hgq_wrap")


def save_all(out_dir: str, names: list[str]) -> None:
    """Build and ``model.save`` each named model as ``<out_dir>/<name>.keras`` (HGQ2 native first)."""
    from pathlib import Path

    ordered = [n for n in names if n in HGQ_NATIVE] + [n for n in names if n not in HGQ_NATIVE]
    for name in ordered:
        globals()[name]().save(str(Path(out_dir) / f"{name}.keras"))


if __name__ == "__main__":
    import sys

    save_all(sys.argv[1], sys.argv[2:])
