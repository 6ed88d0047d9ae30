"""Per-layer mixed precision (edgeml/mixed.py), its checkpoints (models/zoo.py) and sweep axis.

The digits MLP (``mlp``: 64-32-32-10) with a few epochs keeps this file fast;
the jet tagger is built (not trained) to check forward-order tracing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeml import mixed
from edgeml import sweep as sw
from edgeml.errors import ConfigError
from edgeml.golden import Dense, GoldenModel, Requant
from edgeml.models import training, zoo

LAYER_BITS = {"fc1": 3, "fc2": 5}  # fc3 (logits, no output quantizer) stays at 6


@pytest.fixture(scope="module")
def mlp() -> dict:
    """The digits MLP: data, a float model (6 epochs) and a mixed-precision QAT twin (4 epochs)."""
    torch.set_num_threads(1)
    spec = zoo.get("mlp")
    data = spec.load_data(0)
    float_model = zoo.train_float(spec, data, 6, seed=0)
    qat = zoo.train_qat(spec, data, float_model, 6, 4, seed=0, layer_bits=LAYER_BITS)
    return {"spec": spec, "data": data, "float": float_model, "qat": qat}


@pytest.fixture(scope="module")
def golden(mlp: dict, tmp_path_factory: pytest.TempPathFactory) -> GoldenModel:
    from edgeml.export import export_qonnx

    spec = mlp["spec"]
    path = tmp_path_factory.mktemp("mixed") / "mixed.qonnx.onnx"
    export_qonnx(spec.edge(mlp["qat"]), (1, *spec.input_shape), path)
    return GoldenModel.from_onnx(path)


def test_layers_and_their_requantisers(mlp: dict) -> None:
    qat = mlp["qat"]
    assert mixed.quant_layers(qat) == ["fc1", "fc2", "fc3"]
    assert mixed.output_quantizers(qat) == {"fc1": "relu1", "fc2": "relu2", "fc3": None}
    assert mixed.layer_widths(qat) == {
        "fc1": {"weight": 3, "activation": 3},
        "fc2": {"weight": 5, "activation": 5},
        "fc3": {"weight": 6, "activation": None},
    }
    assert qat.layer_bits == LAYER_BITS
    # the trained weight codes use the narrow signed range of each layer's own width
    codes = training.weight_codes(qat)
    assert int(np.abs(codes["fc1"]).max()) == 3  # 2**(3-1) - 1
    assert int(np.abs(codes["fc2"]).max()) <= 15 and int(np.abs(codes["fc2"]).max()) > 3
    assert int(np.abs(codes["fc3"]).max()) <= 31 and int(np.abs(codes["fc3"]).max()) > 15
    # parameter names are the float model's: init_from_float and state dicts still work
    assert set(mlp["float"].state_dict()) <= set(qat.state_dict())


def test_widths_reach_the_exported_qonnx(golden: GoldenModel) -> None:
    dense = [op for op in golden.ops if isinstance(op, Dense)]
    assert [op.weight_type.width for op in dense] == [3, 5, 6]
    acts = [op for op in golden.ops if isinstance(op, Requant)]
    assert [golden.tensors[op.output].type.width for op in acts] == [3, 5]
    assert [(op.lo, op.hi) for op in acts] == [(0, 7), (0, 31)]  # unsigned 3 and 5 bits


def test_golden_equals_brevitas_bit_exact(mlp: dict, golden: GoldenModel) -> None:
    data, qat = mlp["data"], mlp["qat"]
    x = np.concatenate([data.x_train, data.x_test])
    assert len(x) >= 1000
    codes = golden.quantize_input(x)
    ref = golden.predict(codes)
    scale = float(np.asarray(golden.output_scale).reshape(-1)[0])
    y = training.predict(qat, codes.astype(np.float64) * golden.input_real_scale) / scale
    assert np.array_equal(np.rint(y), y)  # Brevitas outputs lie on the output grid
    assert np.array_equal(y.astype(np.int64), ref)
    # the mixed model is a different integer model from the uniform 6-bit one
    assert len(np.unique(ref)) > 10


def test_unknown_layer_and_bad_width_name_the_field(mlp: dict) -> None:
    spec = mlp["spec"]
    with pytest.raises(ConfigError, match=r"unknown layer 'fc9'.*fc1, fc2, fc3"):
        mixed.apply_layer_bits(spec.build_qat(6), {"fc9": 4})
    with pytest.raises(ConfigError, match=r"compress\.layers\.fc2\.bit_width .* from 2 to 8.* 9"):
        mixed.apply_layer_bits(spec.build_qat(6), {"fc2": 9})
    with pytest.raises(ConfigError, match=r"compress\.layers\.fc1\.bit_width"):
        zoo.train_qat(spec, mlp["data"], mlp["float"], 6, 1, layer_bits={"fc1": 1})
    with pytest.raises(ConfigError, match="fc1=4,fc4=8"):
        mixed.parse_layer_bits("fc1:4")


def test_checkpoint_round_trip_rebuilds_widths(mlp: dict, tmp_path: Path) -> None:
    spec, qat, data = mlp["spec"], mlp["qat"], mlp["data"]
    path = zoo.save_checkpoint(spec, qat, tmp_path / "mixed.pt")
    model, meta, _ = zoo.load_checkpoint(path)
    assert meta["layer_bits"] == LAYER_BITS and meta["bit_width"] == 6
    assert mixed.layer_widths(model) == mixed.layer_widths(qat)
    assert np.array_equal(training.predict(model, data.x_test), training.predict(qat, data.x_test))
    # pruning fine-tunes a copy: the widths and their record survive into model.pt
    pruned = zoo.prune(spec, data, qat, 0.5, 1, seed=0)
    assert mixed.layer_widths(pruned) == mixed.layer_widths(qat)
    meta = zoo.load_checkpoint(zoo.save_checkpoint(spec, pruned, tmp_path / "p.pt"))[1]
    assert meta["layer_bits"] == LAYER_BITS
    # a uniform checkpoint (as before mixed precision) has no layer_bits and still loads
    uni = zoo.train_qat(spec, data, mlp["float"], 4, 1, seed=0)
    path = zoo.save_checkpoint(spec, uni, tmp_path / "uniform.pt")
    model, meta, _ = zoo.load_checkpoint(path)
    assert "layer_bits" not in meta
    assert {v["weight"] for v in mixed.layer_widths(model).values()} == {4}


class _Shuffled(nn.Module):
    """Registers fc_b before fc_a but calls fc_a first: forward order needs a trace."""

    def __init__(self) -> None:
        super().__init__()
        from edgeml.models.digits import _qinput, qlinear, qrelu

        self.inp = _qinput()
        self.fc_b = qlinear(16, 4, 6, last=True)
        self.act_b = qrelu(6)
        self.fc_a = qlinear(8, 16, 6)
        self.act_a = qrelu(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_b(self.act_a(self.fc_a(self.inp(x))))


def test_forward_order_is_traced() -> None:
    m = _Shuffled()
    assert mixed.quant_layers(m) == ["fc_b", "fc_a"]  # registration order
    assert mixed.quant_layers(m, (8,)) == ["fc_a", "fc_b"]
    # act_b is never called: the traced requantiser of fc_a is act_a, fc_b has none
    assert mixed.output_quantizers(m, (8,)) == {"fc_a": "act_a", "fc_b": None}
    mixed.apply_layer_bits(m, {"fc_a": 4}, input_shape=(8,))
    assert mixed.layer_widths(m, (8,))["fc_a"] == {"weight": 4, "activation": 4}
    assert mixed.proxy_bit_width(m.act_b, "act_quant") == 6
    jet = zoo.get("jet")
    qj = jet.build_qat(6)
    assert mixed.quant_layers(qj, jet.input_shape) == ["fc1", "fc2", "fc3", "fc4"]
    assert mixed.output_quantizers(qj, jet.input_shape) == {
        "fc1": "relu1", "fc2": "relu2", "fc3": "relu3", "fc4": None,
    }  # fmt: skip


def test_hessian_traces_positive_reproducible_and_scale_covariant(mlp: dict) -> None:
    spec, data, fm = mlp["spec"], mlp["data"], mlp["float"]
    kw = {"n_probes": 8, "n_samples": 400, "seed": 3}
    t1 = mixed.layer_hessian_traces(spec, data, fm, **kw)
    t2 = mixed.layer_hessian_traces(spec, data, fm, **kw)
    assert list(t1) == ["fc1", "fc2", "fc3"]
    assert t1 == t2
    assert all(np.isfinite(v) and v > 0 for v in t1.values())
    assert mixed.layer_hessian_traces(spec, data, fm, **{**kw, "seed": 4}) != t1
    # Rescale fc1 by c (weights and bias) and fc2 by 1/c: a ReLU net computes the same
    # function, but the loss curvature w.r.t. fc1 falls by c**2 and w.r.t. fc2 rises by c**2.
    # Pick c so that fc1, the less sensitive layer per weight, becomes the more sensitive.
    lo, hi = sorted(("fc1", "fc2"), key=lambda n: t1[n])
    c = float(np.sqrt(10 * t1[hi] / t1[lo])) ** (1 if lo == "fc2" else -1)
    scaled = zoo.get("mlp").build_float()
    scaled.load_state_dict(fm.state_dict())
    with torch.no_grad():
        scaled.fc1.weight.mul_(c)
        scaled.fc1.bias.mul_(c)
        scaled.fc2.weight.div_(c)
    x = data.x_test
    assert np.allclose(training.predict(scaled, x), training.predict(fm, x), atol=1e-4)
    ts = mixed.layer_hessian_traces(spec, data, scaled, **kw)
    assert ts["fc1"] == pytest.approx(t1["fc1"] / c**2, rel=1e-3)
    assert ts["fc2"] == pytest.approx(t1["fc2"] * c**2, rel=1e-3)
    assert ts["fc3"] == pytest.approx(t1["fc3"], rel=1e-3)
    assert ts[lo] > ts[hi]  # the order changed
    # and the allocation follows the sensitivity: at a tight budget the sensitive layer keeps more
    n = mixed.weight_counts(fm)
    for traces in (t1, ts):
        top = max(("fc1", "fc2"), key=lambda k: traces[k])
        other = "fc2" if top == "fc1" else "fc1"
        sub = {k: traces[k] for k in ("fc1", "fc2")}
        cands = mixed.allocate_bits(sub, {k: 1000 for k in sub}, (3, 6))
        assert {k: cands[1][k] for k in sub} == {top: 6, other: 3}
    assert n == {"fc1": 2048, "fc2": 1024, "fc3": 320}


def test_allocate_bits_pareto_budget_and_determinism(mlp: dict) -> None:
    traces = {"a": 5.0, "b": 0.5, "c": 0.05}
    n = {"a": 100, "b": 400, "c": 1600}
    choices = (2, 4, 6, 8)
    front = mixed.allocate_bits(traces, n, choices)
    assert front == mixed.allocate_bits(traces, n, choices)  # deterministic
    costs = [mixed.assignment_cost(a, traces, n) for a in front]
    bits = [b for b, _ in costs]
    omegas = [o for _, o in costs]
    assert front[0] == {"a": 8, "b": 8, "c": 8} and front[-1] == {"a": 2, "b": 2, "c": 2}
    assert bits == sorted(bits, reverse=True) and len(set(bits)) == len(bits)
    assert omegas == sorted(omegas)
    # Pareto: no enumerated assignment has fewer-or-equal bits and a lower Omega
    import itertools

    for combo in itertools.product(choices, repeat=3):
        b, o = mixed.assignment_cost(dict(zip("abc", combo, strict=True)), traces, n)
        assert not any(b <= fb and o < fo - 1e-15 for fb, fo in costs)
    budget = 2100 * 5
    under = mixed.allocate_bits(traces, n, choices, budget_bits=budget)
    assert under and all(mixed.assignment_cost(a, traces, n)[0] <= budget for a in under)
    assert under == [a for a, (b, _) in zip(front, costs, strict=True) if b <= budget]
    # the most sensitive layer per weight keeps the most bits at the budget's best point
    assert under[0]["a"] >= under[0]["b"] >= under[0]["c"]
    assert len(mixed.allocate_bits(traces, n, choices, max_candidates=3)) == 3
    with pytest.raises(ConfigError, match="below the narrowest assignment"):
        mixed.allocate_bits(traces, n, choices, budget_bits=100)
    # measured perturbations of the float model's weights are used where given
    pert = mixed.quant_perturbation(mlp["float"], (3, 6))
    assert all(pert[k][3] > pert[k][6] > 0 for k in pert)
    tr = {"fc1": 1.0, "fc2": 1.0, "fc3": 1.0}
    got = mixed.allocate_bits(tr, mixed.weight_counts(mlp["float"]), (3, 6), perturbation=pert)
    assert got[0] == {"fc1": 6, "fc2": 6, "fc3": 6}


def test_allocate_bits_greedy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    traces = {f"l{i}": float(10 - i) for i in range(6)}
    n = {k: 100 for k in traces}
    monkeypatch.setattr(mixed, "EXHAUSTIVE_LIMIT", 10)
    front = mixed.allocate_bits(traces, n, (4, 6, 8))
    assert front[0] == {k: 8 for k in traces} and front[-1] == {k: 4 for k in traces}
    assert len(front) == 1 + 6 * 2  # one step per layer per lower width
    # the least sensitive layer (l5) is lowered first
    assert front[1] == {**{k: 8 for k in traces}, "l5": 6}


def test_sweep_layer_axis_keys_cache_and_table(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = ["--design", "mlp", "--bits", "6", "--sparsity", "0", "--seeds", "1"]
    args += ["--layer-bits", "uniform", "--layer-bits", "fc2=3,fc1=4"]
    args += ["--epochs-scale", "0.05", "-q", "--workers", "1", "--out", str(out)]
    assert sw.main(args) == 0
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["grid"]["layer_bits"] == ["", "fc1=4,fc2=3"]
    keys = [p["key"] for p in doc["points"]]
    assert keys == ["mlp-s0-b6-p0-e3.2.2", "mlp-s0-b6-p0-e3.2.2-Lfc1=4,fc2=3"]
    uni, mix = doc["points"]
    assert "layer_bits" not in uni and mix["layer_bits"] == {"fc1": 4, "fc2": 3}
    assert uni["float_metric"] == mix["float_metric"]
    assert doc["stats"]["qat_trained"] == 2
    rows = doc["summary"]["rows"]
    assert [r.get("layer_bits") for r in rows] == [None, "fc1=4,fc2=3"]
    table = sw.format_table(doc["summary"])
    assert table.splitlines()[0].split()[:2] == ["bits", "layers"]
    assert "fc1=4,fc2=3" in table and "uniform" in table
    assert "fc1=4,fc2=3" in (out / "sweep.html").read_text()
    # rerun: both points come from the cache
    assert sw.main(args) == 0
    doc2 = json.loads((out / "sweep.json").read_text())
    assert doc2["stats"]["cached"] == 2 and doc2["points"] == doc["points"]
    # a layer the design lacks is a clear error listing the real ones
    cfg_err = ["--design", "mlp", "--layer-bits", "fc4=3", "--out", str(tmp_path / "x"), "-q"]
    with pytest.raises(ConfigError, match=r"unknown layer 'fc4'.*fc1, fc2, fc3"):
        sw.config_from_args(_parse(cfg_err))


def _parse(argv: list[str]) -> object:
    import argparse

    p = argparse.ArgumentParser()
    sw._add_arguments(p)
    return p.parse_args(argv)


@pytest.mark.hls
def test_hls4ml_csim_of_mixed_model_is_bit_exact(
    mlp: dict, golden: GoldenModel, tmp_path: Path
) -> None:
    """hls4ml reads the per-layer widths from the QONNX graph: C-sim == golden."""
    from edgeml.hls import convert_hls, require_gxx

    require_gxx()
    from edgeml.export import export_qonnx

    spec = mlp["spec"]
    path = export_qonnx(spec.edge(mlp["qat"]), (1, *spec.input_shape), tmp_path / "m.onnx")
    design = convert_hls(
        path,
        tmp_path / "prj",
        name="mixed",
        input_type=golden.input_type,
        output_type=golden.output_type,
    )
    data = mlp["data"]
    codes = golden.quantize_input(np.concatenate([data.x_train, data.x_test]))
    got = design.predict_int(codes)
    ref = golden.predict(codes)
    assert got.shape == ref.shape and len(codes) >= 1000
    assert int(np.count_nonzero(got != ref)) == 0
