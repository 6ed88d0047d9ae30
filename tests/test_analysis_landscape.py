"""Loss landscapes (issue 11 item 2): directions, slices, the quantized slice, connectivity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import qonnx_builders as qb
import torch
from torch import nn

from edgeml.errors import ConfigError
from edgeml.models.analysis import landscape as ls


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def _toy(seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian blobs in 2-D, labels 0..2."""
    rng = np.random.default_rng(seed)
    centres = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    y = rng.integers(0, 3, n)
    x = centres[y] + rng.normal(0, 0.9, (n, 2))
    return x.astype(np.float32), y.astype(np.int64)


def _mlp(seed: int, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def _train(
    m: nn.Module, x: np.ndarray, y: np.ndarray, steps: int = 300, seed: int = 0
) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(m.parameters(), lr=0.03)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(m(xt), yt).backward()
        opt.step()
    return m


# ----------------------------------------------------------------------------- directions


def test_filter_normalisation_matches_weight_norms() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    d = ls.random_direction(m, seed=3)
    for name, p in m.named_parameters():
        if p.dim() >= 2:
            dn = d[name].reshape(p.shape[0], -1).norm(dim=1)
            wn = p.detach().reshape(p.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(dn, wn, rtol=1e-5, atol=0)
        else:  # biases zeroed, as in Li et al.
            assert torch.count_nonzero(d[name]) == 0
    d_keep = ls.random_direction(m, seed=3, keep_1d=True)
    torch.testing.assert_close(
        d_keep["0.bias"].norm(), m[0].bias.detach().norm(), rtol=1e-5, atol=0
    )
    # deterministic per seed, different across seeds
    assert torch.equal(ls.random_direction(m, seed=3)["0.weight"], d["0.weight"])
    assert not torch.equal(ls.random_direction(m, seed=4)["0.weight"], d["0.weight"])
    layer = ls.random_direction(m, seed=3, norm="layer")
    torch.testing.assert_close(
        layer["3.weight"].norm(), m[3].weight.detach().norm(), rtol=1e-5, atol=0
    )


def test_eigen_directions_split_flat_vectors() -> None:
    m = _mlp(0, hidden=4)
    layout = [(n, tuple(p.shape)) for n, p in m.named_parameters()]
    dim = sum(p.numel() for p in m.parameters())
    vecs = torch.arange(2 * dim, dtype=torch.float32).reshape(2, dim)
    ds = ls.eigen_directions(vecs, layout)
    assert len(ds) == 2
    assert torch.equal(ds[1]["0.weight"], vecs[1, :8].reshape(4, 2))
    assert torch.equal(ds[0]["2.bias"], vecs[0, -3:])
    f = ls.eigen_directions(vecs, m, norm="filter")[0]
    wn = m[0].weight.detach().norm(dim=1)
    torch.testing.assert_close(f["0.weight"].norm(dim=1), wn, rtol=1e-5, atol=0)
    with pytest.raises(ConfigError, match="vecs have 5 entries"):
        ls.eigen_directions(np.ones((1, 5)), layout)


def test_slice_along_the_top_eigenvector_has_its_curvature() -> None:
    """Second difference of the 1-D slice along a unit Hessian eigenvector = its eigenvalue."""
    curvature = pytest.importorskip("edgeml.models.analysis.curvature")
    x, y = _toy(2, n=200)
    m = _train(_mlp(3, hidden=6), x, y, steps=200).double()
    ce = nn.functional.cross_entropy
    h = curvature.ModelHessian(m, x.astype(np.float64), y, ce, hvp_mode="exact")
    vals, vecs = h.eigenpairs(1, method="lanczos", seed=0)
    (d,) = ls.eigen_directions(vecs, h)  # via the ModelHessian's unflatten
    (d_model,) = ls.eigen_directions(vecs, m)  # via the model's parameter order
    assert all(torch.equal(d[n], d_model[n]) for n in d)
    e = 1e-3
    s = ls.slice_1d(m, x.astype(np.float64), y, ce, d, [-e, 0.0, e])["loss"]
    assert (s[0] - 2 * s[1] + s[2]) / e**2 == pytest.approx(float(vals[0]), rel=1e-4)


# ----------------------------------------------------------------------------- slices


def test_slice_centre_is_the_models_own_loss_exactly() -> None:
    x, y = _toy()
    m = _train(_mlp(0), x, y, steps=50)
    own = float(nn.functional.cross_entropy(m(torch.as_tensor(x)), torch.as_tensor(y)))
    d1, d2 = ls.random_direction(m, seed=1), ls.random_direction(m, seed=2)
    l2d = ls.slice_2d(
        m,
        x,
        y,
        nn.functional.cross_entropy,
        d1,
        d2,
        [-0.5, 0.0, 0.5],
        [0.0, 1.0],
        metric=ls.accuracy,
    )
    assert l2d.loss.shape == (3, 2)
    assert l2d.loss[1, 0] == own
    acc = float((m(torch.as_tensor(x)).argmax(1) == torch.as_tensor(y)).double().mean())
    assert l2d.metric[1, 0] == pytest.approx(acc, abs=1e-12)
    assert l2d.loss[0, 1] > own  # moving away from a trained minimum costs loss
    one = ls.slice_1d(m, x, y, nn.functional.cross_entropy, d1, [-0.5, 0.0, 0.5])
    assert one["loss"][1] == own
    assert one["loss"][0] == pytest.approx(l2d.loss[0, 0], rel=1e-6)
    # batched evaluation weights batches by size: same mean loss in 7 uneven batches
    l7 = ls.slice_2d(m, x, y, nn.functional.cross_entropy, d1, d2, [0.5], [1.0], batch_size=61)
    assert l7.loss[0, 0] == pytest.approx(l2d.loss[2, 1], rel=1e-6)
    # vmap over grid points gives the same landscape
    lv = ls.slice_2d(
        m, x, y, nn.functional.cross_entropy, d1, d2, [-0.5, 0.0, 0.5], [0.0, 1.0], vmap_chunk=4
    )
    np.testing.assert_allclose(lv.loss, l2d.loss, rtol=1e-5)
    # the model is left untouched
    assert float(nn.functional.cross_entropy(m(torch.as_tensor(x)), torch.as_tensor(y))) == own


def test_quadratic_model_slice_is_the_known_parabola() -> None:
    """f(x) = x . w with an MSE loss: L(w0 + a d) = A a^2 + B a + C exactly."""

    class Lin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = x @ np.array([1.0, 0.5, -0.25])
    m = Lin()
    d = np.array([0.4, -0.1, 0.9])
    r = x @ m.w.detach().numpy() - y
    s = x @ d
    A, B, C = np.mean(s * s), 2 * np.mean(r * s), np.mean(r * r)
    alphas = np.linspace(-2, 2, 9)
    out = ls.slice_1d(m, x, y, _mse, {"w": torch.as_tensor(d)}, alphas)
    np.testing.assert_allclose(out["loss"], A * alphas**2 + B * alphas + C, rtol=1e-12)
    fl = ls.flatness(out, radii=(0.5,))
    want = np.max((A * alphas**2 + B * alphas)[np.abs(alphas) <= 1.0])
    assert fl["sharpness_alpha_r0.5"] == pytest.approx(want, rel=1e-12)


def test_flatness_definitions_on_a_paraboloid() -> None:
    a = np.linspace(-1, 1, 21)
    b = np.linspace(-1, 1, 21)
    L = 1.0 + a[:, None] ** 2 + 4 * b[None, :] ** 2
    l2d = ls.Landscape2D(a, b, L, metric=1 - 0.1 * L, metric_name="accuracy")
    f = ls.flatness(l2d, radii=(0.5,), eps_abs=0.1, eps_rel=0.015)
    assert f["center_loss"] == 1.0
    assert f["sharpness_alpha_r0.5"] == pytest.approx(0.25)
    assert f["sharpness_beta_r0.5"] == pytest.approx(1.0)
    assert f["max_increase_r0.5"] == pytest.approx(1.0)
    inc = a[:, None] ** 2 + 4 * b[None, :] ** 2
    assert f["flat_area_abs"] == pytest.approx(np.mean(inc <= 0.1))
    assert f["flat_area_rel"] == pytest.approx(np.mean(inc <= 0.015)) == 3 / 441
    assert f["metric_drop_r0.5"] == pytest.approx(0.1)
    assert f["sharpness"] == f["max_increase_r0.5"] and f["flat_area"] == f["flat_area_abs"]
    back = ls.Landscape2D.from_json(json.dumps(l2d.to_json()))
    assert np.array_equal(back.loss, L) and np.array_equal(back.metric, l2d.metric)
    with pytest.raises(ConfigError, match="radii"):
        ls.flatness(l2d, radii=(0.0,))


# ----------------------------------------------------------------------------- quantized


def _golden(tmp_path):
    from edgeml.export import clean_qonnx
    from edgeml.golden import GoldenModel

    p = qb.save(qb.mlp_pot(np.random.default_rng(1)), tmp_path / "mlp.onnx")
    return GoldenModel.from_onnx(clean_qonnx(p, tmp_path / "mlp.clean.onnx"))


def test_quantized_slice_equals_the_golden_model_code_for_code(tmp_path) -> None:
    from edgeml.fault_injection.hessian import FloatMirror

    g = _golden(tmp_path)
    t = g.input_type
    rng = np.random.default_rng(0)
    x = rng.integers(t.qmin, t.qmax + 1, (10_000, *g.input_shape))
    labels = rng.integers(0, 5, 10_000)
    mirror = FloatMirror(g)
    d1 = ls.quantized_direction(mirror, seed=0)
    d2 = ls.quantized_direction(mirror, seed=1)
    for seg in mirror.segments:  # filter-normalised in code units, biases zero
        part = d1[seg.offset : seg.stop].reshape(-1, seg.shape[-1])
        if seg.param == "weight":
            codes = seg.codes.reshape(-1, seg.shape[-1]).astype(float)
            np.testing.assert_allclose(np.linalg.norm(part, axis=0), np.linalg.norm(codes, axis=0))
        else:
            assert not part.any()
    assert np.array_equal(
        ls.grid_codes(mirror, d1, d2, 0.0, 0.0), np.concatenate([s.codes for s in mirror.segments])
    )
    mismatches, clipped = 0, 0
    for al, be in [(0.0, 0.0), (0.3, -0.2), (-0.7, 0.5), (3.0, 2.0)]:
        codes = ls.grid_codes(mirror, d1, d2, al, be)
        gp = ls.perturbed_golden(g, codes)
        want = gp.run(x)
        theta = torch.as_tensor(codes.astype(np.float64)) * torch.as_tensor(mirror.lsb)
        got = mirror.forward(x, theta).numpy()
        assert np.array_equal(got, np.rint(got))
        mismatches += int(np.sum(got.astype(np.int64) != want))
        w = mirror.segments[0]
        clipped += int(np.sum(np.abs(codes[w.offset : w.stop]) == 2 ** (w.width - 1)))
    assert mismatches == 0  # 4 grid points x 10,000 vectors, every output code equal
    assert clipped > 0  # the far point hits the words' limits: clipping is exercised
    l2d = ls.quantized_slice_2d(g, x, labels, d1, d2, [0.0, 0.3], [-0.2, 0.0], batch_size=3000)
    gp = ls.perturbed_golden(g, ls.grid_codes(mirror, d1, d2, 0.3, -0.2))
    logits = gp.run(x).reshape(len(x), -1) * np.asarray(g.output_scale, np.float64).reshape(-1)
    ce = torch.nn.functional.cross_entropy(torch.as_tensor(logits), torch.as_tensor(labels))
    assert l2d.loss[1, 0] == pytest.approx(float(ce), rel=1e-12)
    assert l2d.metric[1, 0] == np.mean(logits.argmax(1) == labels)
    assert l2d.meta["kind"] == "quantized"
    # the short form draws the seeded filter-normalised code directions itself
    short = ls.quantized_slice_2d(g, x[:500], labels[:500], [0.3], [-0.2], seed=0)
    full = ls.quantized_slice_2d(g, x[:500], labels[:500], d1, d2, [0.3], [-0.2])
    assert short.loss[0, 0] == full.loss[0, 0]
    with pytest.raises(ConfigError, match="d1 must be"):
        ls.quantized_slice_2d(g, x, labels, d1[:-1], d2, [0.0], [0.0])
    with pytest.raises(ConfigError, match="units must be one of codes, theta"):
        ls.quantized_slice_2d(g, x, labels, d1, d2, [0.0], [0.0], units="lsb")


# ----------------------------------------------------------------------------- connectivity


@pytest.fixture(scope="module")
def two_solutions() -> tuple[nn.Module, nn.Module, np.ndarray, np.ndarray]:
    x, y = _toy(1)
    return _train(_mlp(1), x, y, seed=1), _train(_mlp(2), x, y, seed=2), x, y


def test_interpolation_endpoints_are_the_models_losses(two_solutions) -> None:
    a, b, x, y = two_solutions
    ce = nn.functional.cross_entropy
    la = float(ce(a(torch.as_tensor(x)), torch.as_tensor(y)))
    lb = float(ce(b(torch.as_tensor(x)), torch.as_tensor(y)))
    path = ls.interpolate(a, b, x, y, ce, n=11, metric=ls.accuracy)
    assert path["loss"][0] == la and path["loss"][-1] == lb
    assert path["matched_by"] == "name" and len(path["t"]) == 11
    lin = np.asarray(path["loss"])
    t = np.asarray(path["t"])
    assert path["barrier"] == pytest.approx(np.max(lin - ((1 - t) * la + t * lb)))
    assert path["barrier"] > 0.05  # two seeds: a real barrier on the straight line


def test_bezier_lowers_the_barrier(two_solutions) -> None:
    a, b, x, y = two_solutions
    ce = nn.functional.cross_entropy
    lin = ls.interpolate(a, b, x, y, ce, n=21)
    bz = ls.bezier_connect(a, b, x, y, ce, steps=150, lr=0.02, seed=0, n=21)
    assert bz["loss"][0] == lin["loss"][0] and bz["loss"][-1] == lin["loss"][-1]
    assert bz["mid_loss_before"] == pytest.approx(lin["loss"][10], rel=1e-6)
    assert bz["mid_loss_after"] < bz["mid_loss_before"]
    assert bz["barrier"] < lin["barrier"]
    again = ls.bezier_connect(a, b, x, y, ce, steps=150, lr=0.02, seed=0, n=21)
    assert again["loss"] == bz["loss"]  # deterministic on the CPU


def test_connectivity_maps_by_order_when_names_differ(two_solutions) -> None:
    a, _, x, y = two_solutions
    torch.manual_seed(5)
    other = nn.Sequential()
    other.add_module("fc1", nn.Linear(2, 16))
    other.add_module("act", nn.ReLU())
    other.add_module("fc2", nn.Linear(16, 3))
    path = ls.interpolate(a, other, x, y, nn.functional.cross_entropy, n=3)
    assert path["matched_by"] == "order"
    assert path["pairs"][0] == ("0.weight", "fc1.weight")
    lo = float(nn.functional.cross_entropy(other(torch.as_tensor(x)), torch.as_tensor(y)))
    assert path["loss"][-1] == pytest.approx(lo, rel=1e-6)
    with pytest.raises(ConfigError, match="no matching parameters"):
        ls.interpolate(a, _mlp(0, hidden=5), x, y, nn.functional.cross_entropy)


# ----------------------------------------------------------------------------- Brevitas / jet


def test_jet_float_and_qat_landscapes(tmp_path) -> None:
    from edgeml.models import zoo

    spec = zoo.get("jet")
    data = spec.load_data(0)
    m = zoo.train_float(spec, data, epochs=1, seed=0)
    q = zoo.train_qat(spec, data, m, 6, 1, 0)
    x, y = data.x_test[:2000], data.y_test[:2000]
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    q.eval()
    with torch.no_grad():
        own = float(spec.loss(q(xt).value if hasattr(q(xt), "value") else q(xt), yt))
    d1, d2 = ls.random_direction(q, seed=0), ls.random_direction(q, seed=1)
    l2d = ls.slice_2d(q, x, y, spec.loss, d1, d2, [0.0, 0.4], [0.0, 0.4], metric=ls.accuracy)
    assert l2d.loss[0, 0] == own and l2d.meta["kind"] == "qat"
    # the perturbed QAT point equals a QAT model holding those float weights (re-quantised)
    import copy

    q2 = copy.deepcopy(q)
    with torch.no_grad():
        for n, p in q2.named_parameters():
            if n in d1:
                p.add_(0.4 * d1[n] + 0.4 * d2[n])
        q2.eval()
        out = q2(xt)
        lq2 = float(spec.loss(out.value if hasattr(out, "value") else out, yt))
    assert l2d.loss[1, 1] == pytest.approx(lq2, rel=1e-6)
    # the integer design exported from this QAT model: its landscape centre is the QAT loss
    from edgeml.export import export_qonnx
    from edgeml.golden import GoldenModel

    g = GoldenModel.from_onnx(export_qonnx(q, (1, *spec.input_shape), tmp_path / "q.onnx"))
    xc = g.quantize_input(x, on_overflow="saturate")
    lq = ls.quantized_slice_2d(g, xc, y, [0.0], [0.0])
    assert lq.loss[0, 0] == pytest.approx(own, rel=1e-3)
    assert lq.metric[0, 0] == pytest.approx(l2d.metric[0, 0], abs=2e-3)
    path = ls.interpolate(m, q, x, y, spec.loss, n=5, evaluate_with="b")
    assert path["matched_by"] == "name" and path["loss"][-1] == pytest.approx(own, rel=1e-6)


# ----------------------------------------------------------------------------- errors, plots


def test_bad_arguments_name_the_field(two_solutions) -> None:
    a, b, x, y = two_solutions
    ce = nn.functional.cross_entropy
    d = ls.random_direction(a, seed=0)
    with pytest.raises(ConfigError, match="norm must be one of filter, layer, none"):
        ls.random_direction(a, seed=0, norm="unit")
    with pytest.raises(ConfigError, match="alphas must be a non-empty"):
        ls.slice_1d(a, x, y, ce, d, [])
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
        ls.slice_2d(a, x, y, ce, d, d, [0.0], [0.0], batch_size=0)
    with pytest.raises(ConfigError, match=r"d2\['0.weight'\] has shape"):
        ls.slice_2d(a, x, y, ce, d, {"0.weight": torch.zeros(3)}, [0.0], [0.0])
    with pytest.raises(ConfigError, match="direction names \\['nope'\\]"):
        ls.slice_1d(a, x, y, ce, {"nope": torch.zeros(1)}, [0.0])
    with pytest.raises(ConfigError, match="params \\['nope'\\]"):
        ls.random_direction(a, seed=0, params=["nope"])
    with pytest.raises(ConfigError, match="n must be an integer >= 2"):
        ls.interpolate(a, b, x, y, ce, n=1)
    with pytest.raises(ConfigError, match="evaluate_with must be one of a, b"):
        ls.interpolate(a, b, x, y, ce, evaluate_with="c")
    with pytest.raises(ConfigError, match="lr must be a positive number"):
        ls.bezier_connect(a, b, x, y, ce, lr=-1.0)
    with pytest.raises(ConfigError, match="x and y need the same"):
        ls.slice_1d(a, x, y[:-1], ce, d, [0.0])
    with pytest.raises(ConfigError, match="loss shape"):
        ls.Landscape2D.from_json({"alphas": [0, 1], "betas": [0], "loss": [[1.0]]})


def test_plots_return_figures(two_solutions) -> None:
    a, b, x, y = two_solutions
    ce = nn.functional.cross_entropy
    d1, d2 = ls.random_direction(a, seed=0), ls.random_direction(a, seed=1)
    grid = np.linspace(-1, 1, 5)
    l2d = ls.slice_2d(a, x, y, ce, d1, d2, grid, grid)
    fig = ls.plot_contour(l2d)
    assert len(fig.axes) == 2  # contour + colour bar
    assert ls.plot_surface(l2d).axes[0].name == "3d"
    one = ls.slice_1d(a, x, y, ce, d1, grid, metric=ls.accuracy)
    assert len(ls.plot_1d([one, one], labels=["a", "b"]).axes) == 2  # loss + metric twin
    lin = ls.interpolate(a, b, x, y, ce, n=5)
    f = ls.plot_path(lin, lin)
    assert len(f.axes[0].get_lines()) == 2
