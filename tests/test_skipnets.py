"""ResNet-style nets with and without skips (models/skipnets.py): landscape tools, finding, edge form."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeml.errors import ConfigError
from edgeml.export import export_qonnx
from edgeml.golden import AddTensors, GoldenModel
from edgeml.models import skipnets, training, zoo

SKIP, NOSKIP = skipnets.DESIGNS["resnet_skip"], skipnets.DESIGNS["resnet_noskip"]


# --------------------------------------------------------------------------- architecture


def test_designs_and_same_parameters_with_and_without_skips():
    assert SKIP.task == NOSKIP.task == "classification" and SKIP.input_shape == (1, 8, 8)
    for name, spec in (("resnet_skip", SKIP), ("resnet_noskip", NOSKIP)):
        if name in zoo.MODULES:
            assert zoo.get(name) is spec
    f_s, f_n = SKIP.build_float(), NOSKIP.build_float()
    assert f_s.skip and not f_n.skip
    names = {k: v.shape for k, v in f_s.named_parameters()}
    assert names == {k: v.shape for k, v in f_n.named_parameters()}
    assert sum(p.numel() for p in f_s.parameters()) == 1578
    for spec in (SKIP, NOSKIP):
        q = spec.build_qat(6)
        spec.init_qat(q, spec.build_float())  # twin parameter names
    # the skip is the only difference: zero the residual branches and the nets differ
    x = torch.from_numpy(skipnets.load_data(0).x_test[:16])
    f_n.load_state_dict(f_s.state_dict())
    with torch.no_grad():
        for b in (*f_s.blocks, *f_n.blocks):
            b.conv2.weight.zero_()
            b.conv2.bias.zero_()
        # without skips every block outputs relu(0) = 0: the logits are the fc bias
        assert torch.allclose(f_n(x), f_n.fc.bias.expand(16, -1))
        assert not torch.allclose(f_s(x), f_s.fc.bias.expand(16, -1))


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match="must be an integer from 2 to 8"):
        skipnets.build_qat(9)
    with pytest.raises(ConfigError, match="blocks must be a positive integer"):
        skipnets.SkipNet(None, True, 0)


# --------------------------------------------------------------------------- landscape tools


class _Quadratic(nn.Module):
    """Logits ``W x`` for a fixed x: the cross-entropy Hessian is known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.T


def test_hessian_top_eigenvalue_matches_the_dense_hessian():
    torch.manual_seed(0)
    m = _Quadratic()
    with torch.no_grad():
        m.w.normal_()
    x = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 20)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def loss(w: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(xt @ w.reshape(3, 2).T, yt)

    h = torch.autograd.functional.hessian(loss, m.w.detach().reshape(-1))
    top = float(torch.linalg.eigvalsh(h).max())
    est = skipnets.hessian_top_eigenvalue(m, x, y, iters=100)
    assert est == pytest.approx(top, rel=1e-3)


def test_filter_normalised_direction_and_slice():
    m = skipnets.build_float()
    d = skipnets.filter_normalised_direction(m, seed=3)
    for p, v in zip(m.parameters(), d, strict=True):
        if p.dim() <= 1:
            assert torch.count_nonzero(v) == 0  # biases left out
        else:
            assert torch.allclose(
                v.reshape(len(v), -1).norm(dim=1), p.reshape(len(p), -1).norm(dim=1), rtol=1e-5
            )
    data = skipnets.load_data(0)
    before = [p.detach().clone() for p in m.parameters()]
    ls = skipnets.loss_slice(m, data.x_train[:64], data.y_train[:64], d, np.array([-1.0, 0.0, 1.0]))
    assert ls.shape == (3,) and np.all(np.isfinite(ls))
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))
    assert skipnets.slice_roughness(np.array([3.0, 1.0, 0.5, 2.0])) == 0.0
    assert skipnets.slice_roughness(np.array([3.0, 1.0, 2.0, 0.5, 2.0])) == pytest.approx(2.0)


# --------------------------------------------------------------------------- finding / edge


@pytest.mark.slow
def test_finding_quick_skips_give_the_smoother_landscape():
    res = skipnets.finding(seed=0, quick=True)
    for b in (3, 6):
        assert res[f"skip_b{b}_accuracy"] > 0.85 and res[f"noskip_b{b}_accuracy"] > 0.8
        assert res[f"skip_b{b}_lambda_max"] < res[f"noskip_b{b}_lambda_max"]
        assert res[f"skip_b{b}_slice_rise"] < res[f"noskip_b{b}_slice_rise"]
    # the gap grows with depth (measured: lambda_max 85 vs 130 at 3 blocks, 6.6 vs 127 at 6)
    assert (
        res["noskip_b6_lambda_max"] / res["skip_b6_lambda_max"]
        > res["noskip_b3_lambda_max"] / res["skip_b3_lambda_max"]
    )


@pytest.fixture(scope="module")
def trained() -> dict[str, nn.Module]:
    data = SKIP.load_data(0)
    out = {}
    for spec in (SKIP, NOSKIP):
        f = zoo.train_float(spec, data, 10, seed=0)
        out[spec.name] = zoo.train_qat(spec, data, f, 6, 2, seed=0)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet_skip", "resnet_noskip"])
def test_edge_form_golden_equals_brevitas(trained, name, tmp_path):
    """Golden == Brevitas logits on the 360 test digits + 10,000 random input codes."""
    spec = SKIP if name == "resnet_skip" else NOSKIP
    model = trained[name]
    data = spec.load_data(0)
    assert zoo.evaluate(spec, model, data.x_test, data.y_test)["accuracy"] > 0.5
    path = export_qonnx(spec.edge(model), (1, 1, 8, 8), tmp_path / f"{name}.qonnx.onnx")
    assert sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node) == 7
    g = GoldenModel.from_onnx(path)
    rng = np.random.default_rng(0)
    x = np.concatenate([data.x_test, rng.integers(0, 256, (10_000, 1, 8, 8)) / 128.0]).astype(
        np.float32
    )
    ref = training.predict(model, x)
    out = g.predict(g.quantize_input(x)).astype(np.float64) * np.asarray(g.output_scale)
    mismatches = int((out.reshape(len(x), -1) != ref.reshape(len(x), -1)).any(axis=1).sum())
    assert mismatches == 0, f"{mismatches} of {len(x)} vectors differ"
    # residual adds of two activations (3 blocks) exist only in the skip variant
    n_adds = sum(isinstance(op, AddTensors) for op in g.ops)
    assert n_adds == (skipnets.BLOCKS if name == "resnet_skip" else 0)
