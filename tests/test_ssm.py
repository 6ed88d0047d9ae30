"""Tests for the SSM frequency-bias study (models/ssm.py): data, S4D, finding, edge form."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from scipy import signal

from edgeml.errors import ConfigError
from edgeml.export import export_qonnx
from edgeml.golden import GoldenModel
from edgeml.models import ssm, training, zoo

# ------------------------------------------------------------------------ data


@pytest.fixture(scope="module")
def waves() -> ssm.Waves:
    return ssm.generate(800, seed=5)


def test_generator_shapes_delay_and_noise(waves: ssm.Waves) -> None:
    n, length, cfg = 800, ssm.SEQ_LEN, ssm.WaveConfig()
    assert waves.x.shape == waves.y.shape == (n, 1, length)
    assert waves.x.dtype == waves.y.dtype == np.float32
    clean = waves.low + waves.high
    # the target is the clean signal delayed by DELAY samples, zeros before the window
    np.testing.assert_allclose(
        waves.y[:, 0, cfg.delay :], clean[:, : length - cfg.delay], atol=1e-6
    )
    assert np.all(waves.y[:, 0, : cfg.delay] == 0)
    # white noise of the configured level, zero mean, uncorrelated in time
    noise = waves.x[:, 0].astype(np.float64) - clean
    assert noise.std() == pytest.approx(cfg.noise, rel=0.03)
    assert abs(noise.mean()) < 0.01
    lag1 = np.mean(noise[:, 1:] * noise[:, :-1]) / noise.var()
    assert abs(lag1) < 0.03
    # within the edge input format, never clipped at these amplitudes
    assert np.abs(waves.x).max() < ssm.INPUT_LIMIT
    assert np.abs(clean).max() <= 2 * cfg.waves_per_band * cfg.amplitude[1] + 1e-9
    # frequencies and amplitudes drawn from their bands
    k = cfg.waves_per_band
    assert np.all((waves.freqs[:, :k] >= 1) & (waves.freqs[:, :k] <= 5))
    assert np.all((waves.freqs[:, k:] >= 20) & (waves.freqs[:, k:] <= 28))
    assert np.all((waves.amps >= 0.3) & (waves.amps <= 1.0))


def test_generator_bands_are_spectrally_separate(waves: ssm.Waves) -> None:
    # Parseval: the band components' energy sits on their side of SPLIT_BIN (leakage only).
    for comp, side in ((waves.low, "low"), (waves.high, "high")):
        e = np.abs(np.fft.rfft(comp, axis=-1)) ** 2
        lo, hi = e[:, : ssm.SPLIT_BIN].sum(), e[:, ssm.SPLIT_BIN :].sum()
        frac = lo / (lo + hi) if side == "low" else hi / (lo + hi)
        assert frac > 0.97, (side, frac)
    # energy of a sinusoid of amplitude a over the window is a^2 L / 2 (up to leakage)
    e_low = (waves.low**2).sum(axis=1).mean()
    a = waves.amps[:, :2]
    assert e_low == pytest.approx((a**2).sum(axis=1).mean() * ssm.SEQ_LEN / 2, rel=0.05)


def test_generator_deterministic_and_validated() -> None:
    a, b, c = ssm.generate(50, seed=1), ssm.generate(50, seed=1), ssm.generate(50, seed=2)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    d = ssm.load_data(0)
    assert d.x_train.shape == (ssm.N_TRAIN, 1, ssm.SEQ_LEN)
    assert d.x_test.shape == d.y_test.shape == (ssm.N_TEST, 1, ssm.SEQ_LEN)
    assert not np.array_equal(d.x_train[: ssm.N_TEST], d.x_test)
    with pytest.raises(ConfigError, match="high_band"):
        ssm.WaveConfig(high_band=(20.0, 40.0))
    with pytest.raises(ConfigError, match="low_band"):
        ssm.WaveConfig(low_band=(1.0, 25.0))
    with pytest.raises(ConfigError, match="delay"):
        ssm.WaveConfig(delay=64)
    with pytest.raises(ConfigError, match="noise"):
        ssm.WaveConfig(noise=-0.1)
    with pytest.raises(ConfigError, match="non-negative integer"):
        ssm.generate(-3)


def test_band_errors_hand_cases() -> None:
    t = np.arange(64)
    low = np.sin(2 * np.pi * 2 * t / 64)[None, None]
    high = np.sin(2 * np.pi * 24 * t / 64)[None, None]
    target = low + high
    assert ssm.band_errors(target, target) == (0.0, 0.0)
    assert ssm.band_errors(np.zeros_like(target), target) == pytest.approx((1.0, 1.0))
    # missing the high band entirely: high error 1, low error 0
    lo, hi = ssm.band_errors(low, target)
    assert lo == pytest.approx(0.0, abs=1e-20) and hi == pytest.approx(1.0)
    m = ssm.metrics(low + 0.5 * high, None, target)
    assert m["high_err"] == pytest.approx(0.25) and m["nmse"] == pytest.approx(0.125)
    with pytest.raises(ConfigError, match="split"):
        ssm.band_errors(target, target, split=40)


# ------------------------------------------------------------------------- S4D


def _scipy_kernel(s4d: ssm.S4D, length: int, method: str) -> np.ndarray:
    """Kernel from scipy.signal.cont2discrete on the real 2x2 form of every mode."""
    dt = s4d.log_dt.exp().detach().double().numpy()
    re = -s4d.log_a_re.exp().detach().double().numpy()
    im = s4d.a_im.detach().double().numpy()
    c = torch.view_as_complex(s4d.c.detach()).numpy().astype(np.complex128)
    out = np.zeros((len(dt), length))
    for h in range(len(dt)):
        for n in range(re.shape[1]):
            a = np.array([[re[h, n], -im[h, n]], [im[h, n], re[h, n]]])
            b = np.array([[1.0], [0.0]])
            cc = 2 * np.array([[c[h, n].real, -c[h, n].imag]])
            ad, bd, *_ = signal.cont2discrete((a, b, cc, np.zeros((1, 1))), dt[h], method=method)
            x = bd[:, 0]
            for step in range(length):
                out[h, step] += float(cc[0] @ x)
                x = ad @ x
    return out


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_s4d_kernel_matches_scipy_discretisation(method: str) -> None:
    torch.manual_seed(0)
    s4d = ssm.S4D(channels=3, states=8, alpha=1.5, dt_range=(0.01, 0.2), discretization=method)
    ref = _scipy_kernel(s4d, 40, method)
    got = s4d.kernel(40).detach().double().numpy()
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-5 * np.abs(ref).max())


def test_s4d_forward_is_causal_convolution_plus_skip() -> None:
    torch.manual_seed(1)
    s4d = ssm.S4D(channels=2, states=8)
    u = torch.randn(3, 2, 64)
    y = s4d(u).detach().double().numpy()
    k = s4d.kernel(64).detach().double().numpy()
    d = s4d.d.detach().double().numpy()
    un = u.double().numpy()
    for b in range(3):
        for h in range(2):
            ref = np.convolve(un[b, h], k[h])[:64] + d[h] * un[b, h]
            np.testing.assert_allclose(y[b, h], ref, atol=1e-4)
    # causal: changing the input at t=40 leaves outputs before 40 untouched
    u2 = u.clone()
    u2[..., 40] += 1.0
    torch.testing.assert_close(s4d(u2)[..., :40], s4d(u)[..., :40])


def test_sobolev_filter_and_alpha_scaling() -> None:
    torch.manual_seed(2)
    plain = ssm.S4D(channels=4, states=16)
    torch.manual_seed(2)
    filt = ssm.S4D(channels=4, states=16, beta=1.0)
    w = ssm.sobolev_weights(64, 1.0)
    assert w[int(ssm.FILTER_REF)] == pytest.approx(1.0) and w[0] == pytest.approx(1 / 9)
    torch.testing.assert_close(
        torch.fft.rfft(filt.kernel(64)), torch.fft.rfft(plain.kernel(64)) * w, atol=1e-4, rtol=1e-4
    )
    # initialisation: Im(a_n) = alpha * pi * n; a larger alpha moves the kernel's spectrum up
    centroid = {}
    for alpha in (0.5, 1.0, 2.0, 4.0):
        torch.manual_seed(3)
        s = ssm.S4D(channels=16, states=16, alpha=alpha)
        np.testing.assert_allclose(
            s.a_im[0].detach().numpy(), alpha * np.pi * np.arange(8), rtol=1e-6
        )
        e = torch.fft.rfft(s.kernel(64)).abs().square().sum(dim=0).detach().numpy()
        centroid[alpha] = float((np.arange(len(e)) * e).sum() / e.sum())
    vals = [centroid[a] for a in (0.5, 1.0, 2.0, 4.0)]
    assert vals == sorted(vals) and vals[-1] > 2 * vals[0], centroid
    with pytest.raises(ConfigError, match="discretization"):
        ssm.S4D(discretization="euler")
    with pytest.raises(ConfigError, match="states"):
        ssm.S4D(states=7)


# ----------------------------------------------------------------- the finding


@pytest.fixture(scope="module")
def quick() -> dict[str, float]:
    return ssm.finding(seed=0, quick=True)


def test_finding_quick_reproduces_bias_and_tuning(quick: dict[str, float]) -> None:
    r = {k.removeprefix("short/"): v for k, v in quick.items()}
    # at a fixed budget the untuned S4D has learnt the low band far better than the high one
    assert r["standard/low_err"] < 0.1 and r["standard/bias"] > 1.5, r
    for name in ssm.CONFIGS:
        assert r[f"{name}/low_err"] < 0.2, (name, r)
    # the initialisation scale sets the innate bias: alpha 0.5 > standard > alpha 2
    assert r["alpha=0.5/high_err"] > r["standard/high_err"] > r["alpha=2/high_err"], r
    assert r["alpha=0.5/high_err"] > 3 * r["alpha=2/high_err"], r
    assert r["alpha=0.5/bias"] > 5.0
    # the Sobolev filter tilts it through training: beta = -2 strengthens the low bias,
    # beta = +2 reverses it (the low band pays: high / low error below 1)
    assert r["alpha=2,beta=-2/high_err"] > 2 * r["alpha=2/high_err"], r
    assert r["alpha=2,beta=+2/low_err"] > 1.5 * r["alpha=2/low_err"], r
    assert r["alpha=2,beta=+2/bias"] < 0.7 * r["alpha=2/bias"] < 0.7 * r["alpha=2,beta=-2/bias"]
    # the float model learns: the tuned model beats predicting zero (nmse 1) by far
    assert r["alpha=2/nmse"] < 0.15
    # truncating the kernel to the edge form's 32 taps costs little
    assert r[f"fir{ssm.FIR_TAPS}/nmse"] < r[f"fir{ssm.SEQ_LEN}/nmse"] + 0.03
    assert not any(k.startswith(("long/", "edge")) for k in quick)


# ------------------------------------------------------------------ edge form


def test_fir_identity_and_init_qat_materialises_kernel() -> None:
    torch.manual_seed(4)
    f = ssm.FloatSSM(alpha=2.0, beta=0.5)
    x = torch.randn(5, 1, ssm.SEQ_LEN)
    # a full-length causal FIR is the S4D layer exactly
    torch.testing.assert_close(ssm.FirSSM(f, ssm.SEQ_LEN)(x), f(x), atol=1e-4, rtol=1e-4)
    q = ssm.build_qat(8)
    ssm.init_qat(q, f)
    k = f.s4d.kernel(ssm.SEQ_LEN).detach()
    w = q.fir.weight.detach()[:, 0, :]  # (channels, taps), correlation order
    torch.testing.assert_close(w[:, -1], k[:, 0] + f.s4d.d.detach())
    torch.testing.assert_close(w[:, :-1], torch.flip(k[:, 1 : ssm.FIR_TAPS], dims=[-1]))
    torch.testing.assert_close(q.mix.bias, f.mix.bias)
    with pytest.raises(ConfigError, match="FloatSSM and an EdgeSSM"):
        ssm.init_qat(q, torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="bit_width"):
        ssm.build_qat(9)


@pytest.fixture(scope="module")
def trained() -> dict:
    spec = ssm.DESIGNS["ssm"]
    data = ssm._dataset(3, 1000, 300)
    f = ssm.train_float(data, epochs=6, seed=0)
    q = zoo.train_qat(spec, data, f, bit_width=6, epochs=2, seed=0)
    return {"spec": spec, "data": data, "float": f, "qat": q}


def test_registry_spec_and_qat_training(trained: dict) -> None:
    spec, d = trained["spec"], trained["data"]
    assert spec.name == "ssm" and spec.task == "regression" and spec.input_shape == (1, 64)
    assert spec.primary == "nmse" and spec.higher_is_better is False
    assert spec.targets("train", d) is d.y_train
    q = trained["qat"]
    assert spec.edge(q) is q
    assert set(spec.prunable(q)) == {"enc", "fir", "mix", "head"}
    assert ssm.n_parameters(spec.build_float()) == 4 + 4 * (1 + 8 + 8 + 16 + 1) + 40 + 9
    on_chip = sum(
        m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        for m in training.weight_layers(q).values()
    )
    assert on_chip == 4 + 4 * ssm.FIR_TAPS + 40 + 9  # enc, depthwise FIR, mix, head
    fm = zoo.evaluate(spec, trained["float"], d.x_test, d.y_test)
    qm = zoo.evaluate(spec, q, d.x_test, d.y_test)
    assert fm["nmse"] < 0.35 and qm["nmse"] < 0.35, (fm, qm)


@pytest.mark.slow
def test_golden_equals_brevitas_edge_form(trained: dict, tmp_path) -> None:
    q = trained["qat"]
    path = export_qonnx(q, (1, *ssm.INPUT_SHAPE), tmp_path / "ssm.onnx")
    # the causal FIR is one depthwise Conv padded on the left only
    convs = [n for n in onnx.load(path).graph.node if n.op_type == "Conv"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in convs[1].attribute}
    assert attrs["group"] == ssm.CHANNELS and list(attrs["pads"]) == [ssm.FIR_TAPS - 1, 0]
    g = GoldenModel.from_onnx(path)
    assert g.input_type.hls() == f"ap_fixed<{ssm.INPUT_BITS},{ssm.INPUT_BITS - ssm.INPUT_FRAC}>"
    scale = float(np.asarray(g.output_scale).reshape(-1)[0])
    rng = np.random.default_rng(9)
    lim = 2 ** (ssm.INPUT_BITS - 1)
    x_rand = rng.integers(-lim, lim, size=(10_000, *g.input_shape)).astype(np.int64)
    x_data = g.quantize_input(trained["data"].x_test)
    for xc in (x_rand, x_data):
        ref = g.predict(xc)
        y = training.predict(q, xc.astype(np.float64) * g.input_real_scale) / scale
        assert np.count_nonzero(np.rint(y) != y) == 0  # Brevitas outputs lie on the output grid
        got = np.rint(y).astype(np.int64).reshape(ref.shape)
        assert np.count_nonzero(got != ref) == 0
        assert np.abs(ref).max() > 0
    # the study metric from golden (on-chip) outputs equals the Brevitas model's
    d, spec = trained["data"], trained["spec"]
    out = g.predict(x_data).reshape(len(x_data), 1, -1) * scale
    assert spec.edge_metrics(out, q, d.x_test, d.y_test)["nmse"] == pytest.approx(
        zoo.evaluate(spec, q, d.x_test, d.y_test)["nmse"], abs=1e-9
    )
