"""HGQ2 (learned per-weight precision) through edgeml's route: exactness, figures, errors.

A tiny HGQ2 jet tagger (16-8-5, a few epochs on a subset of the jet data) is trained
in a separate Python process (importing ``qkeras.qlayers`` anywhere in this process
would rewrite HGQ2's layers) and saved as ``.keras``; the tests load it from the file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

from edgeml.errors import ConfigError, UnsupportedOpError
from edgeml.hgq_compare import (
    compare,
    edgeml_jet_row,
    evaluate_hgq,
    keras_vs_golden,
    quantize_features,
    storage_bits,
)

TRAIN = """
import sys
from edgeml.hgq_compare import train_hgq_jet
from edgeml.models import zoo
m = train_hgq_jet(zoo.get("jet").load_data(0), epochs=20, beta=1e-5, seed=0, n_train=8000,
                  hidden=(8,), batch_size=256)
assert m.edgeml_history["n_train"] == 8000 and len(m.edgeml_history["loss"]) == 20
m.save(sys.argv[1])
"""


@pytest.fixture(scope="module")
def jet_data():
    from edgeml.models import zoo

    return zoo.get("jet").load_data(0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, jet_data) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("hgq")
    path = root / "tiny.keras"
    env = {**os.environ, "KERAS_BACKEND": "torch", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", TRAIN, str(path)], check=True, env=env, timeout=300)
    res = evaluate_hgq(path, jet_data, root / "eval", name="tiny", n_random=2000, verify_rtl=True)
    return res, root


@pytest.mark.slow
@pytest.mark.rtl
def test_golden_equals_keras_forward_exactly(tiny, jet_data):
    res, _ = tiny
    ex = res["exact"]
    assert ex["test_vectors"] == len(jet_data.y_test) == 10_500
    assert ex["vectors"] == 12_500 and ex["random_vectors"] == 2000
    print(f"\n[hgq] {ex['mismatches']}/{ex['vectors']} vectors differ (Keras forward vs golden)")
    assert ex["mismatches"] == 0 and ex["max_abs_diff"] == 0.0
    # exact also means the same top-1 on every test jet
    assert res["keras_accuracy"] == res["accuracy"]
    # and the da4ml Verilog, built with Verilator, equals the golden model
    assert res["rtl_exact"]["vectors"] == 10_500 + 10_000
    assert res["rtl_exact"]["mismatches"] == 0


@pytest.mark.slow
@pytest.mark.rtl
def test_exactness_check_catches_one_flipped_weight_bit(tiny, jet_data):
    """Negative control: the same comparison on a golden model with one weight code changed."""
    from edgeml.golden import GoldenModel

    res, _ = tiny
    g = GoldenModel.from_onnx(res["golden_onnx"])
    codes = g.quantize_input(quantize_features(jet_data.x_test[:2000]))
    ok, _, _ = keras_vs_golden(res["keras"], g, codes)
    assert ok["vectors"] == 2000 and ok["mismatches"] == 0
    op = g.param_ops[0]
    j = int(np.argmax(np.abs(op.weight).sum(axis=1)))  # the input feature weighted most
    op.weight[j, int(np.argmax(np.abs(op.weight[j])))] ^= 1 << (op.weight_type.width - 2)
    bad, _, _ = keras_vs_golden(res["keras"], g, codes)
    assert bad["mismatches"] > 200 and bad["max_abs_diff"] > 0


@pytest.mark.slow
@pytest.mark.rtl
def test_figures_are_real(tiny):
    res, root = tiny
    assert res["accuracy"] > 0.45  # 5 balanced classes: chance is 0.2
    assert res["lut"] > 0 and res["ff"] >= 0
    f = res["faults"]
    assert f["samples"] == 1000
    # exhaustive single-bit campaign: one fault per stored bit of every weight and bias
    assert f["faults"] == res["stored_bits"]
    assert 0.0 < res["mean_sdc_rate"] < 1.0 and 0.0 < f["critical_fraction"] <= 1.0
    assert f["baseline_accuracy"] == pytest.approx(res["accuracy"], abs=0.05)
    assert res["params"] == 16 * 8 + 8 + 8 * 5 + 5
    assert 0 < res["nonzero"] <= res["params"]
    assert 0 < res["effective_bits"] <= res["stored_bits"]
    assert (root / "eval" / "tiny.keras").is_file() and (root / "eval" / "hgq_eval.json").is_file()
    # per-weight widths: the first layer's stored word is as wide as its widest weight
    assert set(res["layer_types"]) == {"MatMul_0 (dense)", "MatMul_1 (dense)"}


@pytest.mark.slow
@pytest.mark.rtl
def test_compare_table(tiny):
    res, _ = tiny
    table = compare([{**res, "name": "HGQ2 tiny"}, {"name": "no figures"}])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| design | test accuracy | LUT | FF |")
    assert f"| {100 * res['accuracy']:.2f} % | {res['lut']:,} | {res['ff']:,} |" in lines[2]
    mass = res["mean_sdc_rate"] * res["faults"]["faults"]
    assert f"| {res['mean_sdc_rate']:.4f} | {mass:.1f} |" in lines[2]
    assert lines[3] == "| no figures | n/a % | n/a | n/a | n/a | n/a | n/a | n/a | n/a |"
    with pytest.raises(ConfigError, match="at least one row"):
        compare([])


def test_storage_bits_counts_each_code():
    from types import SimpleNamespace

    from edgeml.fixed import FixedType

    w = np.array([[0, 1, -1, 3], [-4, 6, 0, 7]])  # own widths: -,2,1,3 | 1 (-1<<2), 3 (3<<1), -, 4
    op = SimpleNamespace(
        weight=w,
        weight_type=FixedType(True, 8, 4),
        bias=np.array([0, -8]),
        bias_type=FixedType(True, 6, 2),
        structural=False,
    )
    g = SimpleNamespace(param_ops=[op])
    got = storage_bits(g)
    assert got == {
        "stored_bits": 8 * 8 + 2 * 6,
        "effective_bits": 2 + 1 + 3 + 1 + 3 + 4 + 1,  # bias -8 = -1<<3: 1 bit
        "nonzero": 7,
        "params": 10,
    }


def test_quantize_features_grid():
    x = np.array([[0.0, 1 / 256, 3 / 256, -100.0, 100.0, 0.3]])
    q = quantize_features(x)
    assert q.dtype == np.float32
    # ties to even on the 2**-7 grid, saturated to ap_fixed<12,5>
    assert q.tolist() == [[0.0, 0.0, 2 / 128, -16.0, 2047 / 128, 38 / 128]]


def test_unsupported_layer_is_named(tmp_path, jet_data):
    import keras
    from hgq.config import QuantizerConfig
    from hgq.layers import QDense

    iq = QuantizerConfig(
        "kif", "datalane", k0=1, i0=4, f0=7, round_mode="RND_CONV", overflow_mode="SAT",
        homogeneous_axis=None, heterogeneous_axis=(), trainable=False,
    )  # fmt: skip
    model = keras.Sequential(
        [
            keras.Input((16,)),
            QDense(8, iq_conf=iq, name="fc1"),
            keras.layers.LayerNormalization(name="norm"),
            keras.layers.Dense(5, name="head"),
        ],
        name="with_norm",
    )
    with pytest.raises(UnsupportedOpError) as exc:
        evaluate_hgq(model, jet_data, tmp_path, rtl=False)
    msg = str(exc.value)
    assert "layer 'norm' (LayerNormalization) is not supported" in msg
    assert "supported layers: InputLayer, Quantizer (QActivation), QDense" in msg


def test_bad_arguments(tmp_path):
    from edgeml.hgq_compare import build_hgq_jet

    with pytest.raises(ConfigError, match="beta must be a finite number >= 0"):
        build_hgq_jet(float("nan"))
    with pytest.raises(ConfigError, match="hidden must be a non-empty tuple"):
        build_hgq_jet(1e-5, hidden=())
    with pytest.raises(ConfigError, match=r"lacks .*compress\.json"):
        edgeml_jet_row(tmp_path / "no_run")
