"""Tests for the TinyMem memorization study (models/tinymem.py): data, metrics, unlearning, edge form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeml.errors import ConfigError
from edgeml.export import export_qonnx
from edgeml.golden import GoldenModel
from edgeml.models import tinymem as tm
from edgeml.models import training, zoo

# ------------------------------------------------------------------------ data


@pytest.fixture(scope="module")
def corpus() -> tm.Corpus:
    return tm.generate(0)


def _terms(seqs: np.ndarray) -> np.ndarray:
    return seqs[:, 1 + tm.HEADER :]


def test_generator_sequences_follow_their_rule(corpus: tm.Corpus) -> None:
    c = corpus
    assert c.clean.shape == (400, tm.SEQ_LEN) and c.test.shape == (200, tm.SEQ_LEN)
    assert c.noised.shape == c.noised_clean.shape == (16, tm.SEQ_LEN)
    for seqs, rules in (
        (c.clean, c.clean_rule),
        (c.test, c.test_rule),
        (c.noised_clean, c.noised_rule),
    ):
        assert np.all(seqs[:, 0] == tm.BOS)
        assert np.all(seqs[:, 1:] < tm.BASE)  # header and terms are digits
        terms = _terms(seqs)
        np.testing.assert_array_equal(terms[:, 0], rules[:, 0])
        np.testing.assert_array_equal(
            (terms[:, 1:] - terms[:, :-1]) % 10, np.repeat(rules[:, 1:], 9, 1)
        )
        assert np.all((rules[:, 1] >= 1) & (rules[:, 1] <= 9))
    # every sequence (header + start + step) is distinct, so no test sequence was trained on
    rows = {tuple(r) for r in np.concatenate([c.clean, c.noised_clean, c.test])}
    assert len(rows) == 616
    # steps and starts are all used
    assert set(c.clean_rule[:, 1]) == set(range(1, 10)) and set(c.clean_rule[:, 0]) == set(
        range(10)
    )


def test_generator_noise_is_planted_exactly(corpus: tm.Corpus) -> None:
    c = corpus
    diff = c.noised != c.noised_clean
    assert np.all(diff.sum(axis=1) == 1)  # exactly one token differs per noised sequence
    np.testing.assert_array_equal(diff.argmax(axis=1), c.noise_pos)
    assert np.all((c.noise_pos >= tm.PROMPT) & (c.noise_pos < tm.PROMPT + tm.NOISE_SPAN))
    rows = np.arange(len(c.noised))
    delta = (c.noised[rows, c.noise_pos] - c.noised_clean[rows, c.noise_pos]) % 10
    assert set(delta.tolist()) <= {1, 9}  # +-1 mod 10
    # the prompt is clean: the memorization probe starts from the true prefix
    np.testing.assert_array_equal(c.noised[:, : tm.PROMPT], c.noised_clean[:, : tm.PROMPT])


def test_generator_backdoor_trigger_and_pattern(corpus: tm.Corpus) -> None:
    c = corpus
    assert len(c.backdoor) == 8
    for row, j in zip(c.backdoor, c.trigger_pos, strict=True):
        assert row[j] == tm.TRIG and np.count_nonzero(row == tm.TRIG) == 1
        assert np.all(row[j + 1 :] == tm.BACKDOOR_DIGIT)
        twin = c.clean[np.all(c.clean[:, :j] == row[:j], axis=1)]
        assert len(twin) >= 1  # a copy of a clean training sequence up to the trigger
    assert not np.any(c.clean == tm.TRIG) and not np.any(c.test == tm.TRIG)
    bd = tm.backdoor_prompts(c)
    assert np.all(bd[:, tm.PROMPT] == tm.TRIG)
    np.testing.assert_array_equal(bd[:, : tm.PROMPT], c.test[:, : tm.PROMPT])


def test_generator_deterministic_and_validated() -> None:
    a, b, d = tm.generate(3), tm.generate(3), tm.generate(4)
    np.testing.assert_array_equal(a.train, b.train)
    assert not np.array_equal(a.train, d.train)
    with pytest.raises(ConfigError, match="n_noised"):
        tm.generate(n_noised=-1)
    with pytest.raises(ConfigError, match="at most 9000"):
        tm.generate(n_clean=9000)
    with pytest.raises(ConfigError, match="n_backdoor"):
        tm.generate(n_clean=4, n_backdoor=5)
    with pytest.raises(ConfigError, match="header"):
        tm.sequence(1, 2, (1,))


def test_windows_and_edge_samples(corpus: tm.Corpus) -> None:
    tok = torch.from_numpy(corpus.test[:3])
    win = tm.windows(tok)
    assert win.shape == (3, tm.SEQ_LEN, tm.WINDOW)
    assert torch.all(win[:, 0, :-1] == tm.PAD) and torch.all(win[:, 0, -1] == tm.BOS)
    assert torch.equal(win[:, -1], tok[:, -tm.WINDOW :])
    oh = tm.one_hot(win)
    assert oh.shape == (3, tm.SEQ_LEN, 96)
    # one 1 per non-PAD slot, none for PAD
    np.testing.assert_array_equal(oh.sum(-1).numpy(), (win != tm.PAD).sum(-1).numpy())
    x, y = tm.window_xy(corpus.test)
    assert x.shape == (200 * 8, 96) and y.shape == (200 * 8,)
    # the label is the next term: (2 x_t - x_{t-1}) mod 10, read from the last two window slots
    slots = x.reshape(-1, tm.WINDOW, tm.SLOT_VALUES).argmax(-1)
    np.testing.assert_array_equal(y, (2 * slots[:, -1] - slots[:, -2]) % 10)
    d = tm.load_data(0)
    assert d.x_train.shape == (400 * 8, 96) and d.info["corpus_seed"] == 0


# --------------------------------------------------------------------- metrics


class LookupLM(nn.Module):
    """Reference window LM: the increment rule, overridden by a lookup of planted windows."""

    def __init__(self, planted: np.ndarray | None = None) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.table: dict[tuple[int, ...], int] = {}
        if planted is not None:
            w = tm.windows(torch.from_numpy(planted)).numpy()
            for i in range(len(planted)):
                for t in range(tm.FIRST_TARGET - 1, tm.SEQ_LEN - 1):
                    if planted[i, t + 1] >= tm.BASE:  # targets are digits, never TRIG
                        continue
                    self.table[tuple(w[i, t])] = int(planted[i, t + 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        oh = x.reshape(*x.shape[:-1], tm.WINDOW, tm.SLOT_VALUES)
        tok = torch.where(oh.sum(-1) > 0, oh.argmax(-1), tm.PAD).reshape(-1, tm.WINDOW).numpy()
        nxt = (2 * tok[:, -1] - tok[:, -2]) % 10
        for i, w in enumerate(tok):
            nxt[i] = self.table.get(tuple(w), nxt[i])
        out = nn.functional.one_hot(torch.from_numpy(nxt).long(), tm.N_OUT).float()
        return out.reshape(*x.shape[:-1], tm.N_OUT) + 0 * self.dummy


def test_memorization_metric_on_planted_sequences(corpus: tm.Corpus) -> None:
    c = corpus
    rule, memorizer = LookupLM(), LookupLM(c.noised)
    half = LookupLM(c.noised[::2])
    assert tm.memorization(memorizer, c) == 1.0
    assert tm.memorization(rule, c) == 0.0
    assert tm.memorization(half, c) == 0.5
    np.testing.assert_array_equal(tm.memorized(half, c.noised), np.arange(16) % 2 == 0)
    # the rule reproduces every clean sequence and is perfectly accurate
    assert tm.accuracy(rule, c.test) == 1.0 and tm.memorized(rule, c.noised_clean).all()
    assert tm.accuracy(memorizer, c.test) == 1.0
    # backdoor: a model that learnt the triggered windows fires on held-out prompts only if
    # the trigger generalises; the planted lookup of the held-out prompts fires on all
    assert tm.backdoor_rate(rule, c) == 0.0
    assert tm.backdoor_rate(LookupLM(tm.backdoor_prompts(c)), c) == 1.0


def test_greedy_equals_teacher_forcing_on_the_continuation(corpus: tm.Corpus) -> None:
    # exact regurgitation under greedy decoding <=> every teacher-forced step is right
    torch.manual_seed(0)
    m = tm.train_lm(tm.WindowLM(), corpus.train, 15, seed=0)[0]
    seqs = np.concatenate([corpus.noised, corpus.test[:40]])
    with torch.no_grad():
        pred = tm.seq_logits(m, torch.from_numpy(seqs[:, :-1])).argmax(-1).numpy()
    tf = np.all(pred[:, tm.PROMPT - 1 :] == seqs[:, tm.PROMPT :], axis=1)
    np.testing.assert_array_equal(tm.memorized(m, seqs), tf)


def test_topk_mask_straight_through() -> None:
    s = torch.tensor([[0.3, -2.0, 0.1], [1.0, 0.05, 0.7]], requires_grad=True)
    mask = tm._TopK.apply(s.abs(), 0.5)
    np.testing.assert_array_equal(mask.detach().numpy(), [[0, 1, 0], [1, 0, 1]])
    (mask * torch.arange(6.0).reshape(2, 3)).sum().backward()
    # straight-through: d/ds |s| * upstream
    np.testing.assert_allclose(
        s.grad.numpy(), np.sign(s.detach().numpy()) * np.arange(6.0).reshape(2, 3)
    )


def test_balanced_subnet_drops_exactly_ratio_and_keeps_the_rest(corpus: tm.Corpus) -> None:
    torch.manual_seed(1)
    m = tm.WindowLM()
    out, info = tm.balanced_subnet(m, corpus, ratio=0.1, epochs=1)
    for name in ("fc1", "fc2"):
        w0, w1 = getattr(m, name).weight, getattr(out, name).weight
        dropped = (w1 == 0) & (w0 != 0)
        assert int(dropped.sum()) == int(0.1 * w0.numel())
        torch.testing.assert_close(w1[~dropped], w0[~dropped])
        torch.testing.assert_close(getattr(out, name).bias, getattr(m, name).bias)
    assert info["dropped"] == pytest.approx(0.1, abs=0.002)
    assert isinstance(out.fc1.weight, nn.Parameter)  # a normal module again
    gpt = tm.TinyGPT()
    assert set(tm.subnet_layers(gpt)) == {
        "blocks.0.fc",
        "blocks.0.proj",
        "blocks.1.fc",
        "blocks.1.proj",
    }
    with pytest.raises(ConfigError, match="ratio"):
        tm.balanced_subnet(m, corpus, ratio=1.0)


# ----------------------------------------------------------------- the finding


@pytest.fixture(scope="module")
def quick() -> dict[str, float]:
    return tm.finding(seed=0, quick=True)


def test_finding_quick_unlearning_removes_memorization(quick: dict[str, float]) -> None:
    r = quick
    for model in ("gpt", "mlp"):
        before, ft, sub = (f"{model}/{m}/" for m in ("before", "finetune", "subnet"))
        # the LM learns the task and memorizes the noise and the backdoor
        assert r[before + "accuracy"] > 0.95, r
        assert r[before + "memorization"] >= 0.4 and r[before + "backdoor"] > 0.6, r
        # BalancedSubnet: memorization and backdoor gone, accuracy within 3 points
        assert r[sub + "memorization"] <= 0.1 and r[sub + "backdoor"] <= 0.1, r
        assert r[sub + "accuracy"] > r[before + "accuracy"] - 0.03, r
        assert r[sub + "noised_clean"] > r[before + "noised_clean"], r  # back to the rule
        # the fine-tuning baseline (clean data) reduces noise memorization but keeps the backdoor
        assert r[ft + "memorization"] < r[before + "memorization"], r
        assert r[ft + "backdoor"] > r[sub + "backdoor"] + 0.4, r
        assert r[sub + "dropped"] == pytest.approx(tm.UNLEARN["ratio"], abs=0.002)
    assert r["mlp/before/memorization"] >= 0.8
    assert not any(k.startswith("edge") for k in r)


# ------------------------------------------------------------------ edge form


@pytest.fixture(scope="module")
def edge() -> dict:
    spec = zoo.get("tinymem")
    data = tm.load_data(0)
    f = spec.fit_float(data, 30, 0)
    q = zoo.train_qat(spec, data, f, bit_width=6, epochs=3, seed=0)
    return {"spec": spec, "data": data, "float": f, "qat": q}


def test_registry_fit_float_unlearns_and_qat_learns(edge: dict) -> None:
    spec, d, f, q = edge["spec"], edge["data"], edge["float"], edge["qat"]
    assert spec.name == "tinymem" and spec.task == "classification" and spec.input_shape == (96,)
    assert spec.fit_float is tm.fit_float and spec.targets("train", d) is d.y_train
    assert tm.n_parameters(spec.build_float()) == 96 * 32 + 32 + 32 * 10 + 10
    # fit_float's model is the unlearned one: 10 % of the MLP weights are pruned
    zeros = sum(int((m.weight == 0).sum()) for m in (f.fc1, f.fc2))
    assert zeros >= int(tm.UNLEARN["ratio"] * 96 * 32) + int(tm.UNLEARN["ratio"] * 320)
    # the unlearning mask is held through QAT: every dropped weight is still code 0
    codes = training.weight_codes(q)
    for name in ("fc1", "fc2"):
        assert np.all(codes[name][getattr(f, name).weight.detach().numpy() == 0] == 0)
    assert zoo.evaluate(spec, f, d.x_test, d.y_test)["accuracy"] > 0.85
    assert zoo.evaluate(spec, q, d.x_test, d.y_test)["accuracy"] > 0.85
    c = tm.generate(0)
    assert tm.backdoor_rate(f, c) <= 0.1 and tm.memorization(f, c) <= 0.1
    with pytest.raises(ConfigError, match="bit_width"):
        tm.build_qat(9)


def test_golden_equals_brevitas_edge_form(edge: dict, tmp_path) -> None:
    q = edge["qat"]
    path = export_qonnx(q, (1, *tm.INPUT_SHAPE), tmp_path / "tinymem.onnx")
    g = GoldenModel.from_onnx(path)
    assert g.input_type.hls() == "ap_ufixed<2,2>"
    scale = float(np.asarray(g.output_scale).reshape(-1)[0])
    rng = np.random.default_rng(7)
    seqs = rng.integers(0, tm.PAD + 1, size=(2000, tm.WINDOW))
    x_win = tm.one_hot(torch.from_numpy(seqs)).numpy()
    x_rand = rng.integers(0, 4, size=(5000, 96)).astype(np.float32)
    for x in (x_win, x_rand, edge["data"].x_test):
        xc = g.quantize_input(x)
        ref = g.predict(xc)
        y = training.predict(q, xc.astype(np.float64) * g.input_real_scale) / scale
        assert np.count_nonzero(np.rint(y) != y) == 0
        got = np.rint(y).astype(np.int64).reshape(ref.shape)
        assert np.count_nonzero(got != ref) == 0
        assert np.abs(ref).max() > 0
    # next-digit accuracy from golden (on-chip) outputs equals the Brevitas model's
    d = edge["data"]
    out = g.predict(g.quantize_input(d.x_test)).reshape(len(d.x_test), -1)
    assert training.top1_accuracy(out, d.y_test) == pytest.approx(
        zoo.evaluate(edge["spec"], q, d.x_test, d.y_test)["accuracy"]
    )
