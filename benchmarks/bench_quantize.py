"""``edgeml quantize`` on float models from other tools: accuracy at 8 / 6 bits and with pruning.

    python benchmarks/bench_quantize.py            # torch MLP + CNN, Keras MLP + CNN
    python benchmarks/bench_quantize.py --no-keras

Each float model is trained on sklearn's digits (1,300 train / 497 held-out test images,
seeded split), written to ONNX by its own exporter (``torch.onnx.export(dynamo=False)``;
Keras 3 ``model.export(format="onnx")`` with ``KERAS_BACKEND=torch``), and quantized by
:func:`edgeml.quantize.quantize_onnx` with the training images as calibration data. The
held-out top-1 accuracy of the float model (onnxruntime) and of the written QONNX (qonnx
``execute_onnx``) is printed as a table, with the golden-vs-qonnx mismatch count; results
go to ``benchmarks/results-quantize.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("OMP_NUM_THREADS", "1")

CONFIGS: list[tuple[str, dict]] = [
    ("8 bit", {"bits": 8}),
    ("6 bit", {"bits": 6}),
    ("8 bit + 50 % sparsity", {"bits": 8, "sparsity": 0.5}),
    ("8 bit + 50 % sparsity, no refit", {"bits": 8, "sparsity": 0.5, "refit": False}),
    ("6 bit + 75 % sparsity", {"bits": 6, "sparsity": 0.75}),
]


def _digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx].astype(np.float32), y[idx]
    return {"xtr": x[:1300], "ytr": y[:1300], "xte": x[1300:], "yte": y[1300:]}


def _torch_models(d: dict[str, np.ndarray], work: Path) -> dict[str, tuple[Path, tuple]]:
    import torch

    nn = torch.nn

    def train(model):
        torch.manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        xt, yt = torch.tensor(d["xtr"]), torch.tensor(d["ytr"])
        for _ in range(30):
            model.train()
            perm = torch.randperm(len(xt))
            for i in range(0, len(xt), 64):
                b = perm[i : i + 64]
                opt.zero_grad()
                nn.functional.cross_entropy(model(xt[b]), yt[b]).backward()
                opt.step()
        return model.eval()

    def export(model, shape, path):
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

    torch.manual_seed(0)
    mlp = train(nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)))
    torch.manual_seed(0)
    body = [
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    ]
    train(nn.Sequential(nn.Unflatten(1, (1, 8, 8)), *body))
    return {
        "torch MLP 64-32-10 (BN, Softmax)": (
            export(nn.Sequential(*mlp, nn.Softmax(-1)), (64,), work / "mlp.onnx"),
            (64,),
        ),
        "torch CNN conv4-pool-dense (BN)": (
            export(nn.Sequential(*body), (1, 8, 8), work / "cnn.onnx"),
            (1, 8, 8),
        ),
    }


def _keras_models(d: dict[str, np.ndarray], work: Path) -> dict[str, tuple[Path, tuple, float]]:
    import keras

    out = {}
    L = keras.layers
    for name, shape, layers, logits in [
        (
            "Keras MLP 64-32-10 (BN, softmax)",
            (64,),
            [L.Dense(32), L.BatchNormalization(), L.ReLU(), L.Dense(10, activation="softmax")],
            False,
        ),
        (
            "Keras CNN conv4-pool-dense (BN, NHWC)",
            (8, 8, 1),
            [
                L.Conv2D(4, 3, padding="same"),
                L.BatchNormalization(),
                L.ReLU(),
                L.MaxPooling2D(2),
                L.Flatten(),
                L.Dense(10),
            ],
            True,
        ),
    ]:
        keras.utils.set_random_seed(0)
        km = keras.Sequential([keras.Input(shape), *layers])
        km.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=logits),
        )
        km.fit(d["xtr"].reshape(-1, *shape) / 16, d["ytr"], epochs=15, batch_size=64, verbose=0)
        path = work / f"keras_{len(out)}.onnx"
        km.export(str(path), format="onnx", verbose=False)
        out[name] = (path, shape, 1 / 16)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the table; return 0."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-keras", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("results-quantize.json"))
    args = p.parse_args(argv)
    from edgeml.quantize import QuantizeOptions, quantize_onnx

    d = _digits()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = {k: (*v, 1.0) for k, v in _torch_models(d, work).items()}
        if not args.no_keras:
            models.update(_keras_models(d, work))
        for name, (path, shape, norm) in models.items():
            xtr, xte = d["xtr"].reshape(-1, *shape) * norm, d["xte"].reshape(-1, *shape) * norm
            row = {"model": name}
            for label, kw in CONFIGS:
                t0 = time.perf_counter()
                res = quantize_onnx(
                    path, xtr, QuantizeOptions(**kw), val_x=xte, val_y=d["yte"], evaluate=True
                )
                ev = res.report["evaluation"]
                row["float"] = ev["float"]
                row[label] = ev["quantized"]
                row[label + " golden mismatches"] = ev["golden_vs_qonnx"]["mismatching_outputs"]
                row[label + " s"] = round(time.perf_counter() - t0, 2)
                if "sparsity" in kw:
                    row[label + " sparsity"] = res.report["sparsity"]["reached_float"]
            rows.append(row)
    labels = [c[0] for c in CONFIGS]
    print("| model | float | " + " | ".join(labels) + " |")
    print("|---" * (len(labels) + 2) + "|")
    for r in rows:
        cells = [f"{100 * r['float']:.1f}"] + [f"{100 * r[lab]:.1f}" for lab in labels]
        print(f"| {r['model']} | " + " | ".join(cells) + " |")
    bad = sum(r[lab + " golden mismatches"] for r in rows for lab in labels)
    print(f"top-1 % on 497 held-out digits; golden vs qonnx execute_onnx mismatches: {bad}")
    args.out.write_text(json.dumps({"rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
