"""Tests for the DLWP comparison study: the Navier-Stokes solver, the three backbones, the edge forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from scipy.integrate import solve_ivp

from edgeml.errors import ConfigError
from edgeml.export import export_qonnx
from edgeml.golden import GoldenModel
from edgeml.models import _ns_solver as ns
from edgeml.models import dlwp, training, zoo

# ----------------------------------------------------------------------- solver


def _single_shell(n: int) -> np.ndarray:
    """``cos(2 pi x) + sin(2 pi y) + 0.5 cos(2 pi (x + ...))``: modes on one |k| shell only."""
    x, y = ns.grid(n)
    return np.cos(2 * np.pi * x) + np.sin(2 * np.pi * y) + 0.5 * np.sin(2 * np.pi * (x - 0.1))


def test_single_shell_decays_exactly_as_the_heat_equation() -> None:
    # w = f(psi) linear: the advection u.grad(w) vanishes, so w(t) = w0 exp(-4 pi^2 nu t).
    cfg = ns.NSConfig(n=16, visc=0.01, dt=0.01, forcing=0.0, steps=1, save_every=0.01)
    w0 = _single_shell(16)[None]
    w = ns.Solver(cfg).advance(w0, 1.0)
    exact = w0 * np.exp(-4 * np.pi**2 * 0.01 * 1.0)
    np.testing.assert_allclose(w, exact, atol=1e-6)
    # ... and to rounding, Crank-Nicolson's own amplification factor over 100 steps
    a = 0.5 * 0.01 * 0.01 * 4 * np.pi**2
    np.testing.assert_allclose(w, w0 * ((1 - a) / (1 + a)) ** 100, atol=1e-12)
    # with forcing on, the forcing's own shell (|k| = 2 pi sqrt 2) is driven: the field changes
    forced = ns.Solver(ns.NSConfig(n=16, visc=0.01, dt=0.01)).advance(w0, 1.0)
    assert np.abs(forced - exact).max() > 0.05


def test_time_stepping_is_second_order_against_a_reference_integrator() -> None:
    n = 16
    cfg = ns.NSConfig(n=n, visc=1e-3, dt=0.02, save_every=0.4)
    solver = ns.Solver(cfg)
    w0 = ns.gaussian_random_field(1, n, np.random.default_rng(4))
    shape = solver.k2.shape

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:  # the same semi-discrete system, in R^2m
        w_hat = (y[: y.size // 2] + 1j * y[y.size // 2 :]).reshape(1, *shape)
        d = solver._rhs(w_hat) - cfg.visc * solver.k2 * w_hat
        return np.concatenate([d.real.ravel(), d.imag.ravel()])

    h0 = np.fft.rfft2(w0)
    sol = solve_ivp(rhs, (0, 0.4), np.concatenate([h0.real.ravel(), h0.imag.ravel()]),
                    method="DOP853", rtol=1e-11, atol=1e-12)  # fmt: skip
    yv = sol.y[:, -1]
    ref = np.fft.irfft2((yv[: yv.size // 2] + 1j * yv[yv.size // 2 :]).reshape(1, *shape), s=(n, n))
    errs = []
    for dt in (0.04, 0.02, 0.01):
        w = ns.Solver(ns.NSConfig(n=n, visc=1e-3, dt=dt, save_every=0.4)).advance(w0, 0.4)
        errs.append(np.abs(w - ref).max())
    assert errs[-1] < 1e-5 * np.abs(ref).max()
    # halving dt divides the error by about 4 (Heun + Crank-Nicolson are second order)
    assert 3.0 < errs[0] / errs[1] < 5.0 and 3.0 < errs[1] / errs[2] < 5.0, errs


def test_inviscid_unforced_flow_conserves_energy_and_enstrophy() -> None:
    # The dealiased Galerkin system conserves both; only the time stepping errs.
    cfg = ns.NSConfig(n=32, visc=0.0, dt=0.01, forcing=0.0)
    w0 = ns.gaussian_random_field(3, 32, np.random.default_rng(1))
    solver = ns.Solver(cfg)
    w = solver.advance(w0, 2.0)
    assert np.abs(w - w0).max() > 0.1 * np.abs(w0).max()  # the flow really moved
    np.testing.assert_allclose(ns.energy(w), ns.energy(w0), rtol=1e-4)
    np.testing.assert_allclose(ns.enstrophy(w), ns.enstrophy(w0), rtol=1e-3)
    # zero-mean vorticity stays zero-mean; the velocity is divergence-free
    assert np.abs(w.mean(axis=(1, 2))).max() < 1e-12
    u, v = solver.velocity(np.fft.rfft2(w))
    div = np.fft.irfft2(1j * solver.kx * np.fft.rfft2(u) + 1j * solver.ky * np.fft.rfft2(v))
    assert np.abs(div).max() < 1e-10
    # viscosity dissipates enstrophy
    wv = ns.Solver(ns.NSConfig(n=32, visc=1e-2, dt=0.01, forcing=0.0)).advance(w0, 2.0)
    assert np.all(ns.enstrophy(wv) < 0.9 * ns.enstrophy(w0))


def test_gaussian_random_field_has_the_fno_spectrum() -> None:
    n, alpha, tau = 32, 2.5, 7.0
    w = ns.gaussian_random_field(400, n, np.random.default_rng(0), alpha, tau)
    assert w.shape == (400, n, n)
    assert np.abs(w.mean(axis=(1, 2))).max() < 1e-12
    power = (np.abs(np.fft.rfft2(w)) ** 2).mean(axis=0)
    kx, ky = ns.wavenumbers(n)
    k2 = kx**2 + ky**2
    law = (k2 + tau**2) ** (-alpha)
    for a, b in [((1, 0), (4, 0)), ((0, 1), (3, 3)), ((2, 1), (0, 6))]:  # (ky, kx) index pairs
        expected = law[a] / law[b]
        assert power[a] / power[b] == pytest.approx(expected, rel=0.2)


def test_forcing_and_coarsening() -> None:
    f = ns.forcing_field(32)
    x, y = ns.grid(32)
    np.testing.assert_allclose(f, 0.1 * (np.sin(2 * np.pi * (x + y)) + np.cos(2 * np.pi * (x + y))))
    # a band-limited field is sampled exactly at the coarse points
    fine = _single_shell(32) + np.sin(2 * np.pi * 3 * y)
    np.testing.assert_allclose(ns.coarsen(fine[None], 8)[0], fine[::4, ::4], atol=1e-12)
    with pytest.raises(ConfigError, match="n dividing"):
        ns.coarsen(fine, 12)


def test_simulate_is_seeded_and_shaped() -> None:
    cfg = ns.NSConfig(n=16, steps=3, save_every=0.5, spin_up=0.5, dt=0.05)
    a = ns.simulate(2, seed=3, config=cfg)
    assert a.shape == (2, 4, 16, 16) and a.dtype == np.float64
    np.testing.assert_array_equal(a, ns.simulate(2, seed=3, config=cfg))
    assert not np.array_equal(a, ns.simulate(2, seed=4, config=cfg))


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="n must be an even"):
        ns.NSConfig(n=15)
    with pytest.raises(ConfigError, match="whole number of dt"):
        ns.NSConfig(dt=0.03, save_every=1.0)
    with pytest.raises(ConfigError, match="n_traj"):
        ns.simulate(0)
    with pytest.raises(ConfigError, match="unet, convgru, fno"):
        dlwp.build_study_model("transformer")
    with pytest.raises(ConfigError, match="bit_width"):
        dlwp.QuantTileGRU(9)


# ----------------------------------------------------------------------- study


def test_study_data_is_normalised_and_moving() -> None:
    train, test = dlwp.study_data(0, quick=True)
    assert train.shape == (32, 15, 16, 16) and test.shape == (12, 15, 16, 16)
    assert train.dtype == np.float32 and np.abs(train).max() < 1.0
    p = dlwp.persistence_errors(test)
    assert 0.05 < p[1] < p[5] < p[10] < 1.0  # the flow decorrelates with the horizon


def test_backbones_are_periodic_and_the_protocol_is_teacher_forced() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16)
    for kind, shift in (("unet", 4), ("convgru", 2)):
        m = dlwp.build_study_model(kind, quick=True).eval()
        with torch.no_grad():
            a = torch.roll(m(x), (shift, shift), dims=(2, 3))
            b = m(torch.roll(x, (shift, shift), dims=(2, 3)))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    seq = torch.randn(2, 5, 16, 16)
    fno = dlwp.build_study_model("fno", quick=True).eval()
    with torch.no_grad():
        got = dlwp.one_step_predictions(fno, seq)
        want = torch.stack([fno(seq[:, t : t + 1])[:, 0] for t in range(4)], dim=1)
    torch.testing.assert_close(got, want)
    gru = dlwp.build_study_model("convgru", quick=True).eval()
    with torch.no_grad():  # the ConvGRU's forecast depends on the past it has seen
        p1 = dlwp.one_step_predictions(gru, seq)[:, -1]
        seq2 = seq.clone()
        seq2[:, 0] += 1.0
        p2 = dlwp.one_step_predictions(gru, seq2)[:, -1]
    assert (p1 - p2).abs().max() > 1e-4
    with pytest.raises(ConfigError, match="needs 16 frames"):
        dlwp.rollout(fno, np.zeros((1, 10, 16, 16), np.float32), t0=5, steps=10)


@pytest.mark.slow
def test_finding_quick_all_backbones_beat_persistence() -> None:
    res = dlwp.finding(seed=0, quick=True)
    for kind in dlwp.STUDY_MODELS:
        errs = [res[f"{kind}_l2_{h}"] for h in dlwp.HORIZONS]
        assert errs[0] < errs[1] < errs[2]  # errors grow along the rollout
        for h in (1, 5):
            assert res[f"{kind}_l2_{h}"] < 0.85 * res[f"persistence_l2_{h}"], (kind, h, res)
    # the study's direction (arXiv:2407.14129, synthetic Navier-Stokes): the FNO rolls out best
    assert res["fno_l2_10"] < min(res["convgru_l2_10"], res["unet_l2_10"]), res
    table = dlwp.finding_table(res)
    assert "convgru" in table and "L2@10" in table


# ------------------------------------------------------------------- edge forms


def test_fno_fold_is_exact() -> None:
    torch.manual_seed(1)
    f = dlwp.FloatFNOTile()
    with torch.no_grad():
        for p in f.parameters():
            p.normal_()
    w1, b1, w2, b2 = dlwp.fold_fno(f)
    x = torch.randn(20, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        fd = f.double()
        want = fd(x).reshape(20, -1).numpy()
        layer = fd.layer(x).reshape(20, -1).numpy()
        f.float()
    xf = x.reshape(20, -1).numpy()
    np.testing.assert_allclose(xf @ w1.T + b1, layer, atol=1e-10)
    np.testing.assert_allclose(xf + np.maximum(xf @ w1.T + b1, 0) @ w2.T + b2, want, atol=1e-10)
    # the QAT twin takes the folded matrices (before quantization, exactly)
    q = dlwp.QuantFNOTile()
    dlwp.init_fno_qat(q, f)
    np.testing.assert_allclose(q.fc1.weight.detach().double().numpy(), w1, atol=1e-6)
    with pytest.raises(ConfigError, match="FloatFNOTile"):
        dlwp.init_fno_qat(q, dlwp.FloatTileGRU())


def _calibrate(model: torch.nn.Module, x: np.ndarray) -> torch.nn.Module:
    """Collect the activation statistics (train mode, no weight update), then eval."""
    model.train()
    with torch.no_grad():
        for i in range(0, 40 * 64, 64):
            model(torch.from_numpy(x[i % len(x) : i % len(x) + 64]))
    return model.eval()


def _random_grid_inputs(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    codes = np.random.default_rng(seed).integers(-128, 128, size=(n, *shape))
    return (codes / 128.0).astype(np.float32)


EDGE_CASES = {
    "dlwp": (dlwp.QuantTileGRU, (2, 8, 8), {"Slice", "Concat", "Sigmoid", "Tanh", "Mul", "Sub"}),
    "dlwp_fno": (dlwp.QuantFNOTile, (1, 8, 8), {"MatMul", "Relu", "Add"}),
    "dlwp_unet": (dlwp.QuantTileUNet, (2, 8, 8), {"Resize", "Concat", "MaxPool", "Add"}),
}


@pytest.mark.parametrize(
    "name",
    [
        # Brevitas' export of the gated graphs takes about 20 s each here
        pytest.param("dlwp", marks=pytest.mark.slow),
        "dlwp_fno",
        pytest.param("dlwp_unet", marks=pytest.mark.slow),
    ],
)
def test_edge_form_exports_and_golden_equals_brevitas(name: str, tmp_path: Path) -> None:
    cls, shape, ops = EDGE_CASES[name]
    torch.manual_seed(0)
    model = cls(8)
    x = _random_grid_inputs(shape, 2000, seed=1)
    x[:1000] = dlwp.to_input_grid(x[:1000] * 0.5)  # half at the data's smaller amplitude
    _calibrate(model, x)
    path = export_qonnx(model, (1, *shape), tmp_path / f"{name}.onnx")
    got_ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops <= got_ops, got_ops
    g = GoldenModel.from_onnx(str(path))
    y_gold = g.predict(g.quantize_input(x)) * g.output_scale
    y_brev = training.predict(model, x)
    assert y_brev.shape == (2000, 1, 8, 8)
    assert np.count_nonzero(y_gold.reshape(y_brev.shape) != y_brev) == 0
    assert np.unique(y_brev).size > 50  # a real output, not a saturated constant


def test_designs_are_registered_specs() -> None:
    assert set(dlwp.DESIGNS) == {"dlwp", "dlwp_fno", "dlwp_unet"}
    for name, sp in dlwp.DESIGNS.items():
        assert isinstance(sp, zoo.DesignSpec) and sp.name == name
        assert sp.task == "regression" and sp.primary == "rel_l2" and not sp.higher_is_better
        q = sp.build_qat(6)
        assert training.is_brevitas(q) and q.bit_width == 6
        out = training.predict(sp.build_float(), np.zeros((3, *sp.input_shape), np.float32))
        assert out.shape == (3, 1, 8, 8)
    assert dlwp.DESIGNS["dlwp_fno"].init_qat is dlwp.init_fno_qat


@pytest.mark.slow
def test_dlwp_design_learns_and_qat_stays_close(tmp_path: Path) -> None:
    sp = dlwp.DESIGNS["dlwp"]
    data = sp.load_data(0)
    assert data.x_train.shape[1:] == (2, 8, 8) and data.y_train.shape[1:] == (1, 8, 8)
    np.testing.assert_array_equal(data.x_train * 128, np.round(data.x_train * 128))
    # x's second channel is the frame y follows: persistence is a real baseline
    m0 = dlwp.forecast_metrics(data.x_test[:, 1:2], data.x_test, data.y_test)
    assert 0.05 < m0["rel_l2_persistence"] < 0.3
    f = zoo.train_float(sp, data, 10)
    mf = zoo.evaluate(sp, f, data.x_test, data.y_test)
    assert mf["rel_l2"] < 0.85 * mf["rel_l2_persistence"], mf
    q = zoo.train_qat(sp, data, f, 8, 5)
    mq = zoo.evaluate(sp, q, data.x_test, data.y_test)
    assert mq["rel_l2"] < 0.85 * mq["rel_l2_persistence"], mq
    # the on-chip forecast, through the golden model, gives the same metric exactly
    path = export_qonnx(sp.edge(q), (1, *sp.input_shape), tmp_path / "dlwp.onnx")
    g = GoldenModel.from_onnx(str(path))
    y_gold = g.predict(g.quantize_input(data.x_test)) * g.output_scale
    me = sp.edge_metrics(y_gold, q, data.x_test, data.y_test)
    assert me["rel_l2"] == mq["rel_l2"]
