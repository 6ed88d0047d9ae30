"""Tests of ``edgeml sweep`` (edgeml/sweep.py) on the digits MLP with very few epochs."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeml import sweep as sw
from edgeml.errors import ConfigError

# 2 seeds x bits {2, 6} x sparsity {0, 0.9}; epochs scale 0.05 -> float 3, QAT 2, fine-tune 2
TINY = ["--design", "mlp", "--bits", "2,6", "--sparsity", "0", "0.9", "--seeds", "2"]
TINY += ["--epochs-scale", "0.05", "-q"]
EPOCHS = {"float": 3, "qat": 2, "finetune": 2}


def _load(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One serial tiny sweep, shared by the tests below (read-only: copy before changing)."""
    out = tmp_path_factory.mktemp("sweep") / "serial"
    assert sw.main([*TINY, "--workers", "1", "--out", str(out)]) == 0
    return out


def test_sweep_json_has_every_point_and_real_relations(serial: Path) -> None:
    doc = _load(serial)
    assert doc["format"] == sw.SWEEP_FORMAT
    assert doc["epochs"] == EPOCHS
    assert doc["mode"] == "serial"
    assert doc["stats"] == {
        "points": 8,
        "cached": 0,
        "float_trained": 2,
        "qat_trained": 4,
        "pruned_trained": 8,
    }
    pts = doc["points"]
    assert sorted((p["seed"], p["bits"], p["sparsity"]) for p in pts) == [
        (s, b, p) for s in (0, 1) for b in (2, 6) for p in (0.0, 0.9)
    ]
    for p in pts:
        assert p["design"] == "mlp" and p["metric_name"] == "accuracy"
        assert p["metrics"]["accuracy"] == p["metric"]
        assert 0.0 <= p["metric"] <= 1.0 and p["seconds"] > 0
        # accuracy on a 360-image test split is a multiple of 1/360
        assert abs(p["metric"] * 360 - round(p["metric"] * 360)) < 1e-9
        assert (serial / "points" / f"{p['key']}.json").is_file()
        if p["sparsity"] == 0.9:  # per-layer magnitude pruning: ~90 % zero weight codes
            assert 0.895 <= p["measured_sparsity"] <= 0.91
    for seed in (0, 1):
        mine = [p for p in pts if p["seed"] == seed]
        # one float model per seed, shared by all its points; it learned something
        assert len({p["float_metric"] for p in mine}) == 1
        assert mine[0]["float_metric"] > 0.7
        for bits in (2, 6):  # one QAT model per (seed, bits), shared by its sparsities
            assert len({p["qat_metric"] for p in mine if p["bits"] == bits}) == 1

    def mean(bits: int, sparsity: float) -> float:
        return float(
            np.mean([p["metric"] for p in pts if (p["bits"], p["sparsity"]) == (bits, sparsity)])
        )

    # measured on this grid: 6-bit 0 % ~ 0.90, 2-bit 90 % ~ 0.14
    assert mean(6, 0.0) > mean(2, 0.9) + 0.4
    assert mean(6, 0.0) > 0.8
    assert mean(6, 0.0) >= mean(6, 0.9) and mean(2, 0.0) >= mean(2, 0.9)


def test_summary_matches_points(serial: Path) -> None:
    doc = _load(serial)
    rows = doc["summary"]["rows"]
    assert [(r["bits"], r["sparsity"]) for r in rows] == [(2, 0.0), (2, 0.9), (6, 0.0), (6, 0.9)]
    for r in rows:
        ps = [p for p in doc["points"] if (p["bits"], p["sparsity"]) == (r["bits"], r["sparsity"])]
        vals = np.array([p["metric"] for p in ps])
        assert r["n"] == 2
        assert r["mean"] == pytest.approx(vals.mean(), abs=1e-12)
        assert r["std"] == pytest.approx(vals.std(ddof=1), abs=1e-12)
        assert (r["min"], r["max"]) == (vals.min(), vals.max())
        diffs = [p["metric"] - p["float_metric"] for p in ps]
        assert r["delta_float"] == pytest.approx(np.mean(diffs), abs=1e-12)
    fl = doc["summary"]["float"]
    assert fl["n"] == 2 and set(fl["by_seed"]) == {"0", "1"}


def test_outputs_plots_html_and_table(serial: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("metric_vs_bits.png", "metric_vs_sparsity.png"):
        assert (serial / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (serial / "sweep.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert 'src="http' not in page and "<script" not in page  # self-contained
    assert page.count("<tr>") >= 1 + 4 + 8  # summary rows + every point
    text = sw.format_table(_load(serial)["summary"])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["bits", "sparsity", "seeds"]
    assert lines[2].split()[0] == "float" and len(lines) == 2 + 1 + 4 + 1


def test_resume_skips_completed_points(serial: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(serial, out)
    before = _load(serial)["points"]
    assert sw.main([*TINY, "--workers", "1", "--out", str(out)]) == 0
    doc = _load(out)
    assert doc["stats"] == {
        "points": 8,
        "cached": 8,
        "float_trained": 0,
        "qat_trained": 0,
        "pruned_trained": 0,
    }
    assert doc["mode"] == "cached" and doc["points"] == before

    # lose one point: only its chain (float of seed 1, QAT 6 bits, one prune) is redone,
    # and retraining reproduces it exactly (training is deterministic per seed)
    victim = next(p for p in before if (p["seed"], p["bits"], p["sparsity"]) == (1, 6, 0.9))
    (out / "points" / f"{victim['key']}.json").unlink()
    (out / "points" / f"{before[0]['key']}.json").write_text("{truncated")  # corrupt -> redo
    assert sw.main([*TINY, "--workers", "1", "--out", str(out)]) == 0
    doc = _load(out)
    assert doc["stats"] == {
        "points": 8,
        "cached": 6,
        "float_trained": 2,
        "qat_trained": 2,
        "pruned_trained": 2,
    }
    for old, new in zip(before, doc["points"], strict=True):
        assert {k: v for k, v in new.items() if "seconds" not in k} == {
            k: v for k, v in old.items() if "seconds" not in k
        }

    # a different epoch budget is a different cache key: nothing is reused
    cfg = sw.SweepConfig(design="mlp", bits=(6,), sparsities=(0.0,), seeds=(0,), epochs_scale=0.1)
    assert sw.point_key("mlp", 0, 6, 0.0, cfg.epochs()) == "mlp-s0-b6-p0-e6.4.4"
    assert not (out / "points" / "mlp-s0-b6-p0-e6.4.4.json").exists()


@pytest.mark.slow
def test_dask_local_cluster_matches_serial(serial: Path, tmp_path: Path) -> None:
    """Two worker processes give bit-identical metrics: single-threaded, seeded training."""
    out = tmp_path / "dask"
    assert sw.main([*TINY, "--workers", "2", "--out", str(out)]) == 0
    doc = _load(out)
    assert doc["mode"] == "local-cluster x2"
    assert doc["stats"]["pruned_trained"] == 8 and doc["stats"]["cached"] == 0
    ref = {p["key"]: p for p in _load(serial)["points"]}
    assert len(doc["points"]) == 8
    for p in doc["points"]:
        r = ref[p["key"]]
        for k in ("metric", "float_metric", "qat_metric", "measured_sparsity"):
            assert p[k] == r[k], (p["key"], k, p[k], r[k])


# ------------------------------------------------------------------ bad options


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--bits", "9"], "integers from 2 to 8; got 9"),
        (["--bits", "1-3"], "integers from 2 to 8; got 1"),
        (["--bits", "six"], "--bits takes integers"),
        (["--bits", "8-2"], "is empty"),
        (["--sparsity", "0.96"], "fraction in [0, 0.95]; got 0.96"),
        (["--sparsity", "-0.1"], "fraction in [0, 0.95]"),
        (["--sparsity", "50"], "give fractions"),
        (["--sparsity", "half"], "is not a number"),
        (
            ["--design", "resnet50"],
            ("must be one of: ", "jet", "mlp", "econt", "rn08", "'resnet50'"),
        ),
        (["--seeds", "0"], "count must be >= 1"),
        (["--epochs-scale", "0"], "epochs_scale must be a number in (0, 10]"),
        (["--workers", "0"], "workers must be an integer >= 1"),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], "not both"),
    ],
)
def test_bad_options_are_clear_errors(
    argv: list[str],
    needle: str | tuple[str, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "never"
    assert sw.main([*argv, "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgeml: error: "), err
    for part in (needle,) if isinstance(needle, str) else needle:
        assert part in err, err
    assert not out.exists()  # rejected before any work


def test_parse_helpers() -> None:
    assert sw.parse_bits(["2-8"]) == (2, 3, 4, 5, 6, 7, 8)
    assert sw.parse_bits(["2-4,8", "6"]) == (2, 3, 4, 8, 6)
    assert sw.parse_sparsities(["0,0.25", "0.9"]) == (0.0, 0.25, 0.9)
    assert sw.parse_seeds(["3"]) == (0, 1, 2)
    assert sw.parse_seeds(["4,7"]) == (4, 7)
    assert sw.parse_seeds(["5-5"]) == (5,)
    cfg = sw.SweepConfig(design="mlp", bits=(8, 2, 2), sparsities=(0.9, 0), seeds=(1, 0))
    assert (cfg.bits, cfg.sparsities, cfg.seeds) == ((2, 8), (0.0, 0.9), (0, 1))
    assert cfg.out == Path("runs/sweeps/mlp") and cfg.epochs() == {
        "float": 60,
        "qat": 40,
        "finetune": 40,
    }
    with pytest.raises(ConfigError, match="must not be empty"):
        sw.SweepConfig(design="mlp", bits=())


def test_subcommand_parser_for_the_edgeml_cli() -> None:
    parser = argparse.ArgumentParser(prog="edgeml")
    sub = parser.add_subparsers(dest="command")
    sw.add_sweep_parser(sub)
    args = parser.parse_args(["sweep", "--design", "mlp", "--bits", "2-8", "--no-resume", "-q"])
    assert args.command == "sweep" and args.resume is False and args.quiet
    cfg = sw.config_from_args(args)
    assert cfg.bits == sw.DEFAULT_BITS and cfg.sparsities == sw.DEFAULT_SPARSITIES
    assert cfg.seeds == (0, 1, 2) and cfg.workers == sw.default_workers() and not cfg.resume
    help_text = sub.choices["sweep"].format_help()
    for flag in ("--bits", "--sparsity", "--seeds", "--epochs-scale", "--workers", "--scheduler"):
        assert flag in help_text


@pytest.mark.slow
def test_existing_dask_scheduler(serial: Path, tmp_path: Path) -> None:
    """--scheduler ADDRESS runs the chains on a cluster the sweep did not start."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        out = tmp_path / "sched"
        argv = ["--design", "mlp", "--bits", "6", "--sparsity", "0,0.9", "--seeds", "1"]
        argv += ["--epochs-scale", "0.05", "--scheduler", cluster.scheduler_address]
        assert sw.main([*argv, "--out", str(out), "-q"]) == 0
    doc = _load(out)
    assert doc["mode"] == f"scheduler {cluster.scheduler_address}"
    ref = {p["key"]: p["metric"] for p in _load(serial)["points"]}
    assert {p["key"]: p["metric"] for p in doc["points"]} == {
        k: v for k, v in ref.items() if k.startswith("mlp-s0-b6-")
    }


def test_unreachable_scheduler_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sw, "SCHEDULER_TIMEOUT_S", 1)
    argv = ["--bits", "6", "--sparsity", "0", "--seeds", "1", "--epochs-scale", "0.05", "-q"]
    assert sw.main([*argv, "--scheduler", "tcp://127.0.0.1:9", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cannot reach a Dask scheduler at 'tcp://127.0.0.1:9'" in err, err
