"""``edgeml quantize``: post-training quantization of float ONNX files written by other tools.

The float models are torch models trained on sklearn's digits and exported with
``torch.onnx.export(..., dynamo=False)`` (the TorchScript exporter: Gemm, BatchNorm,
Identity-shared BN weights, trailing Softmax), and a Keras 3 model exported with
``model.export(format="onnx")`` under ``KERAS_BACKEND=torch`` (Cast chains, BatchNorm as
Sub/Mul/Add). None of them is built with edgeml's helpers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeml.errors import ConfigError, InvalidTensorError, UnsupportedOpError
from edgeml.quantize import (
    QONNX_DOMAIN,
    QuantizeOptions,
    choose_pot_scale,
    evaluate_quantized,
    golden_outputs,
    prepare_float,
    qonnx_execute,
    quantize_onnx,
)

torch = pytest.importorskip("torch")

ACC_FLOOR_8 = 0.02  # 8-bit top-1 accuracy >= float - 2 pp on the held-out split
ACC_FLOOR_6 = 0.03  # 6-bit: >= float - 3 pp
N_EXACT = 2500  # golden vs qonnx execute_onnx vectors
N_HLS = 10_000  # golden vs hls4ml C-sim vectors


# --------------------------------------------------------------------------- data and models


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx].astype(np.float32), y[idx]
    rng = np.random.default_rng(1)
    # in-range random inputs (pixel values 0..16) beside the real test images
    rand = rng.uniform(0, 16, size=(N_EXACT - (len(x) - 1300), 64)).astype(np.float32)
    return {
        "xtr": x[:1300],
        "ytr": y[:1300],
        "xte": x[1300:],
        "yte": y[1300:],
        "xexact": np.concatenate([x[1300:], rand]),
    }


def _train(model, x: np.ndarray, y: np.ndarray, epochs: int = 30):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()
    return model.eval()


def _export(model, shape: tuple[int, ...], path: Path) -> Path:
    torch.onnx.export(
        model.eval(),
        torch.zeros(1, *shape),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
    )
    return path


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory, digits) -> Path:
    """64-32-10 MLP with BatchNorm1d and a trailing Softmax (exported, not trained with)."""
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    _train(net, digits["xtr"], digits["ytr"])
    full = nn.Sequential(*net, nn.Softmax(-1))
    return _export(full, (64,), tmp_path_factory.mktemp("q") / "mlp.onnx")


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory, digits) -> Path:
    """Conv(1->4, 3x3) - BatchNorm2d - ReLU - MaxPool 2 - Flatten - Linear(64->10)."""
    torch.manual_seed(0)
    nn = torch.nn
    body = [
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    ]
    _train(nn.Sequential(nn.Unflatten(1, (1, 8, 8)), *body), digits["xtr"], digits["ytr"])
    return _export(nn.Sequential(*body), (1, 8, 8), tmp_path_factory.mktemp("q") / "cnn.onnx")


class _Residual(torch.nn.Module):
    """64-32 Relu, then Relu(Linear(h) + Linear(h, bias=False)), then 32-10: a tensor Add."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.a, self.b = nn.Linear(64, 32), nn.Linear(32, 32)
        self.c, self.o = nn.Linear(32, 32, bias=False), nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.o(torch.relu(self.b(h) + self.c(h)))


@pytest.fixture(scope="module")
def residual_onnx(tmp_path_factory, digits) -> Path:
    """Written by the new exporter (``dynamo=True``): bias-free Gemm, a tensor Add."""
    torch.manual_seed(0)
    net = _train(_Residual(), digits["xtr"], digits["ytr"], epochs=20)
    path = tmp_path_factory.mktemp("q") / "residual.onnx"
    torch.onnx.export(net, (torch.zeros(1, 64),), str(path), dynamo=True, verbose=False)
    return path


def _img(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 1, 8, 8)


# --------------------------------------------------------------------------- accuracy + exactness


def _quantize_and_check(onnx_path, xtr, xte, yte, xexact, opts, out):
    res = quantize_onnx(onnx_path, xtr, opts, val_x=xte, val_y=yte, out=out)
    ev = res.report["evaluation"]
    # golden (after clean_qonnx) == qonnx execute_onnx of the written QONNX, exactly
    exact = evaluate_quantized(prepare_float(onnx_path)[0], onnx.load(str(out)), xexact)
    assert exact["vectors"] >= 2000
    assert exact["golden_vs_qonnx"]["mismatching_outputs"] == 0
    assert exact["golden_vs_qonnx"]["max_abs_diff"] == 0.0
    assert ev["golden_vs_qonnx"]["mismatching_outputs"] == 0
    return res, ev


def test_mlp_8bit_accuracy_and_golden_equals_qonnx(mlp_onnx, digits, tmp_path):
    out = tmp_path / "mlp8.qonnx.onnx"
    res, ev = _quantize_and_check(
        mlp_onnx,
        digits["xtr"],
        digits["xte"],
        digits["yte"],
        digits["xexact"],
        QuantizeOptions(bits=8),
        out,
    )
    assert ev["metric"] == "top1_accuracy"
    assert ev["float"] > 0.93
    assert ev["quantized"] >= ev["float"] - ACC_FLOOR_8
    assert ev["quantized"] == ev["golden"]
    # the file is QONNX: Quant nodes in the qonnx domain with its opset import
    m = onnx.load(str(out))
    assert any(o.domain == QONNX_DOMAIN for o in m.opset_import)
    quants = [n for n in m.graph.node if n.op_type == "Quant"]
    assert all(n.domain == QONNX_DOMAIN for n in quants)
    # input + 2 weights + 2 biases + relu + output
    assert len(quants) == 7
    assert not any(n.op_type in ("BatchNormalization", "Softmax", "Gemm") for n in m.graph.node)
    # every scale is a power of two; bias scale = input scale x weight scale, >= 16 bits
    for layer in res.report["layers"].values():
        assert layer["bias_bits"] >= 16
        assert layer["bias_log2_scale"] == layer["weight_log2_scale"] + round(
            np.log2(layer["input_scale"])
        )
    acts = res.report["activations"]
    assert acts["x"]["signed"] is False  # digits are >= 0
    assert any(not a["signed"] for k, a in acts.items() if "Relu" in k)
    assert acts["y"]["signed"] is True
    assert any("Softmax" in n for n in res.report["notes"])
    assert any("BatchNormalization" in n for n in res.report["notes"])
    js = json.loads(res.report_path.read_text())
    assert js["evaluation"]["quantized"] == ev["quantized"]
    assert res.report_path.name == "mlp8.qonnx.quantize.json"


def test_cnn_8bit_accuracy_and_golden_equals_qonnx(cnn_onnx, digits, tmp_path):
    res, ev = _quantize_and_check(
        cnn_onnx,
        _img(digits["xtr"]),
        _img(digits["xte"]),
        digits["yte"],
        _img(digits["xexact"]),
        QuantizeOptions(bits=8),
        tmp_path / "cnn8.qonnx.onnx",
    )
    assert ev["float"] > 0.9
    assert ev["quantized"] >= ev["float"] - ACC_FLOOR_8
    conv = next(v for k, v in res.report["layers"].items() if k.startswith("Conv"))
    assert conv["bias_log2_scale"] == conv["weight_log2_scale"] + round(
        np.log2(conv["input_scale"])
    )


def test_dynamo_exporter_residual(residual_onnx, digits, tmp_path):
    kinds = [n.op_type for n in onnx.load(str(residual_onnx)).graph.node]
    assert "Add" in kinds and kinds.count("Gemm") == 4  # one Gemm without a bias input
    res, ev = _quantize_and_check(
        residual_onnx,
        digits["xtr"],
        digits["xte"],
        digits["yte"],
        digits["xexact"],
        QuantizeOptions(bits=8),
        tmp_path / "res.qonnx.onnx",
    )
    assert ev["float"] > 0.9
    assert ev["quantized"] >= ev["float"] - ACC_FLOOR_8
    assert len(res.report["layers"]) == 4
    assert sum("bias_bits" in v for v in res.report["layers"].values()) == 3


@pytest.mark.parametrize("method", ["minmax", "mse"])
def test_6bit_and_scale_methods_stay_exact(mlp_onnx, digits, tmp_path, method):
    _, ev = _quantize_and_check(
        mlp_onnx,
        digits["xtr"],
        digits["xte"],
        digits["yte"],
        digits["xexact"],
        QuantizeOptions(bits=6, scale_method=method),
        tmp_path / f"mlp6_{method}.qonnx.onnx",
    )
    assert ev["quantized"] >= ev["float"] - ACC_FLOOR_6


def test_per_channel_weight_scales_stay_exact(cnn_onnx, digits, tmp_path):
    res, _ = _quantize_and_check(
        cnn_onnx,
        _img(digits["xtr"]),
        _img(digits["xte"]),
        digits["yte"],
        _img(digits["xexact"]),
        QuantizeOptions(bits=8, per_channel=True),
        tmp_path / "cnn_pc.qonnx.onnx",
    )
    conv = next(v for k, v in res.report["layers"].items() if k.startswith("Conv"))
    assert isinstance(conv["weight_log2_scale"], list) and len(conv["weight_log2_scale"]) == 4
    assert any("hls4ml 1.3 cannot convert" in n for n in res.report["notes"])


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_sparsity_reached(mlp_onnx, digits, tmp_path, scope):
    out = tmp_path / f"mlp_s_{scope}.qonnx.onnx"
    res = quantize_onnx(
        mlp_onnx,
        digits["xtr"],
        QuantizeOptions(bits=8, sparsity=0.5, prune_scope=scope),
        val_x=digits["xte"],
        val_y=digits["yte"],
        out=out,
    )
    sp = res.report["sparsity"]
    assert abs(sp["reached_float"] - 0.5) <= 0.01
    assert sp["reached_codes"] >= sp["reached_float"]
    if scope == "layer":
        assert all(abs(v - 0.5) <= 0.01 for v in sp["per_layer"].values())
    # the zeros are in the written file's weight initializers
    m = onnx.load(str(out))
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    names = {layer["weight"] for layer in res.report["layers"].values()}
    ws = [inits[n.input[0]] for n in m.graph.node if n.op_type == "Quant" and n.input[0] in names]
    assert len(ws) == 2
    zeros = sum(int((w == 0).sum()) for w in ws) / sum(w.size for w in ws)
    assert abs(zeros - 0.5) <= 0.01
    assert res.report["evaluation"]["golden_vs_qonnx"]["mismatching_outputs"] == 0


def test_refit_recovers_pruned_accuracy(cnn_onnx, digits, tmp_path):
    """At 50 % sparsity the least-squares refit keeps the CNN near float; plain pruning does not."""
    acc = {}
    for refit in (True, False):
        _, ev = _quantize_and_check(
            cnn_onnx,
            _img(digits["xtr"]),
            _img(digits["xte"]),
            digits["yte"],
            _img(digits["xexact"]),
            QuantizeOptions(bits=8, sparsity=0.5, refit=refit),
            tmp_path / f"cnn_refit_{refit}.qonnx.onnx",
        )
        acc[refit] = ev["quantized"]
        flt = ev["float"]
    assert acc[True] >= flt - 0.03
    assert acc[True] > acc[False]


def test_val_targets_and_default_agreement(mlp_onnx, digits):
    """Real-valued y -> MSE; no --val -> agreement with the float model on the calib data."""
    x = digits["xte"]
    onehot = np.eye(10)[digits["yte"]] * 10.0
    res = quantize_onnx(mlp_onnx, digits["xtr"], val_x=x, val_y=onehot)
    ev = res.report["evaluation"]
    assert ev["metric"] == "mse" and ev["vectors"] == len(x)
    assert 0 < ev["quantized"] and abs(ev["quantized"] - ev["float"]) < 0.1 * ev["float"]
    with pytest.raises(ConfigError, match="validation y has shape"):
        quantize_onnx(mlp_onnx, digits["xtr"], val_x=x, val_y=onehot[:, :3])
    ev = quantize_onnx(mlp_onnx, digits["xtr"]).report["evaluation"]
    assert "metric" not in ev and ev["vectors"] == len(digits["xtr"])
    assert ev["argmax_agreement_float_vs_quant"] > 0.97
    assert ev["golden_vs_qonnx"]["mismatching_outputs"] == 0


# --------------------------------------------------------------------------- scales


def test_choose_pot_scale():
    v = np.array([0.0, 3.0, 16.0])
    # 8-bit unsigned: 255 * 2**-4 = 15.94 < 16, so 2**-3
    assert choose_pot_scale(v, 8, False, "minmax") == 2.0**-3
    # signed: 127 * 2**-3 = 15.9 < 16 -> 2**-2
    assert choose_pot_scale(v, 8, True, "minmax") == 2.0**-2
    # percentile ignores a rare outlier; minmax does not
    x = np.concatenate([np.random.default_rng(0).uniform(-1, 1, 100_000), [1000.0]])
    assert choose_pot_scale(x, 8, True, "minmax") == 2.0**3
    assert choose_pot_scale(x, 8, True, "percentile", 99.9) == 2.0**-6
    # mse never does worse than min/max on the data it is chosen on
    g = np.random.default_rng(1).standard_normal(50_000)

    def err(s):
        return np.mean((np.clip(np.round(g / s), -128, 127) * s - g) ** 2)

    assert err(choose_pot_scale(g, 4, True, "mse")) <= err(choose_pot_scale(g, 4, True, "minmax"))


# --------------------------------------------------------------------------- errors


def test_unsupported_op_names_op_node_and_list(tmp_path, digits):
    nn = torch.nn
    net = nn.Sequential(nn.Linear(64, 8), nn.Sigmoid(), nn.Linear(8, 10))
    path = _export(net, (64,), tmp_path / "sig.onnx")
    with pytest.raises(UnsupportedOpError) as ei:
        quantize_onnx(path, digits["xtr"][:50])
    msg = str(ei.value)
    assert "Sigmoid" in msg and "/1/Sigmoid" in msg
    assert "MatMul, Gemm, Conv" in msg


def test_bad_calibration_data(mlp_onnx, digits):
    with pytest.raises(ConfigError, match=r"expects \(N, 64\)"):
        quantize_onnx(mlp_onnx, digits["xtr"].reshape(-1, 8, 8))
    bad = digits["xtr"][:100].copy()
    bad[3, 5] = np.nan
    with pytest.raises(InvalidTensorError, match="1 NaN/Inf"):
        quantize_onnx(mlp_onnx, bad)


@pytest.mark.parametrize("bits", [1, 17])
def test_bits_out_of_range(mlp_onnx, digits, bits):
    with pytest.raises(ConfigError, match=r"2\.\.16"):
        quantize_onnx(mlp_onnx, digits["xtr"][:10], QuantizeOptions(bits=bits))


def test_bad_options_named():
    with pytest.raises(ConfigError, match="sparsity"):
        QuantizeOptions(sparsity=0.99).check()
    with pytest.raises(ConfigError, match="minmax, percentile, mse"):
        QuantizeOptions(scale_method="kl").check()


def test_qonnx_input_refused(mlp_onnx, digits, tmp_path):
    out = tmp_path / "once.qonnx.onnx"
    quantize_onnx(mlp_onnx, digits["xtr"][:200], out=out, evaluate=False)
    with pytest.raises(ConfigError, match="already holds Quant"):
        quantize_onnx(out, digits["xtr"][:200])


def test_cli(mlp_onnx, digits, tmp_path, capsys):
    from edgeml.quantize import main

    np.save(tmp_path / "calib.npy", digits["xtr"])
    np.savez(tmp_path / "val.npz", x=digits["xte"], y=digits["yte"])
    out = tmp_path / "cli.qonnx.onnx"
    argv = ["--onnx", str(mlp_onnx), "--calib", str(tmp_path / "calib.npy")]
    argv += ["--val", str(tmp_path / "val.npz"), "--out", str(out), "--sparsity", "0.25"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "top1_accuracy: float" in text and "0 differing outputs" in text
    js = json.loads((tmp_path / "cli.qonnx.quantize.json").read_text())
    assert abs(js["sparsity"]["reached_float"] - 0.25) <= 0.01
    assert main([*argv[:4], "--out", str(out), "--bits", "20"]) == 1
    assert "2..16" in capsys.readouterr().err


def test_cli_registration_as_edgeml_subcommand(mlp_onnx, digits, tmp_path, capsys):
    """How edgeml/cli.py registers it: add_quantize_parser(sub) + quantize_main(args)."""
    import argparse

    from edgeml.quantize import add_quantize_parser, quantize_main

    p = argparse.ArgumentParser(prog="edgeml")
    add_quantize_parser(p.add_subparsers(dest="command"))
    np.save(tmp_path / "calib.npy", digits["xtr"][:300])
    np.save(tmp_path / "bad.npy", digits["xtr"][:300].reshape(-1, 8, 8))
    out = tmp_path / "sub.qonnx.onnx"
    base = ["quantize", "--onnx", str(mlp_onnx), "--out", str(out), "-q"]
    args = p.parse_args([*base, "--calib", str(tmp_path / "calib.npy"), "--scale-method", "mse"])
    assert args.command == "quantize" and args.verbose is False
    assert quantize_main(args) == 0
    assert out.exists()
    args = p.parse_args([*base, "--calib", str(tmp_path / "bad.npy")])
    assert quantize_main(args) == 1
    assert "(N, 64)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        p.parse_args([*base, "--calib", "c.npy", "--scale-method", "kl"])


# --------------------------------------------------------------------------- Keras


def _keras_onnx(kind: str, digits: dict[str, np.ndarray], tmp_path: Path):
    """A Keras 3 (torch backend) float model trained on digits/16, written by ``model.export``.

    Returns (path, x_train, x_test, x_exact) in the model's input layout (NHWC for the CNN).
    """
    if os.environ.get("KERAS_BACKEND", "torch") != "torch":
        pytest.skip("needs KERAS_BACKEND=torch (TensorFlow is not installed)")
    os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras was imported with another backend")
    keras.utils.set_random_seed(0)
    L = keras.layers
    if kind == "mlp":
        shape: tuple[int, ...] = (64,)
        layers = [L.Dense(32), L.BatchNormalization(), L.ReLU(), L.Dense(10, activation="softmax")]
        loss = keras.losses.SparseCategoricalCrossentropy()
    else:
        shape = (8, 8, 1)
        layers = [
            L.Conv2D(4, 3, padding="same"),
            L.BatchNormalization(),
            L.ReLU(),
            L.MaxPooling2D(2),
            L.Flatten(),
            L.Dense(10),
        ]
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    km = keras.Sequential([keras.Input(shape), *layers])
    km.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    xs = {k: digits[k].reshape(-1, *shape) / 16 for k in ("xtr", "xte", "xexact")}
    km.fit(xs["xtr"], digits["ytr"], epochs=15, batch_size=64, verbose=0)
    path = tmp_path / f"keras_{kind}.onnx"
    km.export(str(path), format="onnx", verbose=False)
    return path, xs["xtr"], xs["xte"], xs["xexact"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_keras(kind, tmp_path, digits):
    """Keras ``model.export(format="onnx")``: Cast chains, BatchNorm as Sub/Mul/Add, NHWC
    Transposes around the Conv with its bias Add after the Transpose, a Shape/Gather/Concat
    Reshape, a trailing Softmax."""
    path, xtr, xte, xexact = _keras_onnx(kind, digits, tmp_path)
    kinds = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Cast", "Sub", "Mul"} <= kinds  # what Keras writes
    res, ev = _quantize_and_check(
        path, xtr, xte, digits["yte"], xexact, QuantizeOptions(bits=8), tmp_path / "k.qonnx.onnx"
    )
    assert ev["float"] > 0.9
    assert ev["quantized"] >= ev["float"] - ACC_FLOOR_8
    assert any("Sub" in n and "Mul" in n for n in res.report["notes"])


# --------------------------------------------------------------------------- hls4ml C-sim


@pytest.mark.hls
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "cnn", "residual", "keras_cnn"])
def test_golden_equals_hls_csim(kind, mlp_onnx, cnn_onnx, residual_onnx, digits, tmp_path):
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    from edgeml.hls import convert_hls

    if kind == "keras_cnn":
        src, xtr, xte, _ = _keras_onnx("cnn", digits, tmp_path)
    else:
        src, shape = {
            "mlp": (mlp_onnx, (64,)),
            "cnn": (cnn_onnx, (1, 8, 8)),
            "residual": (residual_onnx, (64,)),
        }[kind]
        xtr, xte = digits["xtr"].reshape(-1, *shape), digits["xte"].reshape(-1, *shape)
    res = quantize_onnx(
        src,
        xtr,
        QuantizeOptions(bits=8, sparsity=0.25),
        out=tmp_path / f"{kind}.qonnx.onnx",
        evaluate=False,
    )
    _, g, cleaned = golden_outputs(res.model, xte)
    cleaned_path = tmp_path / f"{kind}.clean.onnx"
    cleaned.save(str(cleaned_path))
    t0 = time.perf_counter()
    design = convert_hls(
        cleaned_path,
        tmp_path / f"prj_{kind}",
        name=f"quant_{kind}",
        input_type=g.input_type,
        output_type=g.output_type,
    )
    rng = np.random.default_rng(2)
    codes = rng.integers(g.input_type.qmin, g.input_type.qmax + 1, size=(N_HLS, *g.input_shape))
    real = g.quantize_input(xte, on_overflow="saturate")
    codes[: len(real)] = real
    a = g.predict(codes).reshape(N_HLS, -1)
    b = design.predict_int(codes).reshape(N_HLS, -1)
    mismatches = int((a != b).any(1).sum())
    print(f"{kind}: golden vs C-sim {mismatches}/{N_HLS} in {time.perf_counter() - t0:.1f} s")
    assert mismatches == 0
    # and the C-sim matches qonnx execution on the real images (dequantized)
    q = qonnx_execute(res.model, xte).reshape(len(real), -1)
    scale = np.asarray(g.output_scale).reshape(-1)
    assert np.array_equal(b[: len(real)] * scale, q)
