"""``edgeml analyze`` (models/analysis/run.py): a run folder, a sweep, the statistics, the CLI."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeml import sweep as sw
from edgeml.cli import EXIT_USAGE, EXIT_USER, main
from edgeml.errors import ConfigError
from edgeml.models.analysis import run as R

#: small enough for the test suite, large enough for every stage to do real work
FAST = R.AnalysisOptions(
    samples=300, k=2, matvecs=12, points=9, fault_samples=60, ber_trials=3, progress=False
)
TINY_SWEEP = ["--design", "mlp", "--bits", "4,6", "--sparsity", "0,0.75", "--seeds", "2"]
TINY_SWEEP += ["--epochs-scale", "0.05", "-q"]


# ------------------------------------------------------------------ statistics


def test_spearman_and_bootstrap_interval() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=40)
    assert R.spearman(a, 3 * a + 1) == pytest.approx(1.0)
    assert R.spearman(a, -np.exp(a)) == pytest.approx(-1.0)
    assert math.isnan(R.spearman(a, np.ones_like(a)))  # a constant has no rank order
    lo, hi = R.bootstrap_ci(a, a + 0.3 * rng.normal(size=40), seed=1)
    assert 0.7 < lo < hi <= 1.0
    lo, hi = R.bootstrap_ci(a, rng.normal(size=40), seed=1)
    assert lo < 0 < hi  # independent: the interval covers 0


def _fake_points(n: int = 30) -> list[dict]:
    rng = np.random.default_rng(3)
    pts = []
    for i in range(n):
        eig = float(rng.uniform(1, 100))
        pts.append(
            {
                "analysis": {
                    "top_eigenvalue": eig,
                    "trace": float(rng.uniform(1, 10)),
                    "fisher_trace": float(rng.uniform(1, 10)),
                    "sharpness": float(rng.uniform()),
                    "flat_area": float(rng.uniform()),
                    "n_minima": int(rng.integers(1, 4)),
                    "max_persistence": float(rng.uniform()),
                    "cka_to_float": float(rng.uniform()),
                    # SDC grows with the eigenvalue: a sharper model is less robust
                    "robustness": {
                        "mean_sdc": eig / 1000 + float(rng.normal(0, 0.002)),
                        "acc_ber": float(rng.uniform()),
                        "acc_noise": float(rng.uniform()),
                    },
                },
                "bits": i % 4 + 3,
            }
        )
    return pts


def test_correlations_are_oriented_and_the_best_predictor_is_found() -> None:
    rows = R.correlations(_fake_points())
    assert len(rows) == len(R.SWEEP_METRICS) * len(R.ROBUSTNESS)
    eig_sdc = next(
        r for r in rows if r["metric"] == "top_eigenvalue" and r["robustness"] == "mean_sdc"
    )
    # larger eigenvalue -> more SDC -> *less* robust: oriented rho is strongly negative
    assert eig_sdc["rho"] < -0.9 and eig_sdc["ci"][1] < 0
    assert eig_sdc["rho_within_bits"] < -0.8  # and within each bit width too
    best = R.best_predictors(rows)
    assert best["mean_sdc"]["metric"] == "top_eigenvalue" and best["mean_sdc"]["significant"]
    doc = {"correlations": rows, "best": best}
    text = R.format_correlations(doc)
    assert "best predictor of mean SDC rate (single-bit flips): top Hessian eigenvalue" in text


def test_bad_options_name_the_field() -> None:
    with pytest.raises(ConfigError, match="points must be an integer >= 5"):
        R.AnalysisOptions(points=3)
    with pytest.raises(ConfigError, match="device must be one of"):
        R.AnalysisOptions(device="tpu")
    with pytest.raises(ConfigError, match="ber must be in"):
        R.AnalysisOptions(ber=2.0)


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):  # --run or --sweep is required
        main(["analyze"])
    assert main(["analyze", "--sweep", str(tmp_path)]) == EXIT_USER
    assert "no sweep.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    assert main(["analyze", "--sweep", str(tmp_path), "--workers", "2", "--scheduler", "x"]) in (
        EXIT_USAGE,
        EXIT_USER,
    )


# ------------------------------------------------------------------ a run folder


@pytest.fixture(scope="module")
def analysed_run(mlp_flow_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run, _ = mlp_flow_run
    copy = tmp_path_factory.mktemp("analyze") / "run"
    shutil.copytree(run, copy)
    R.analyze_run(copy, replace(FAST, points=21))  # 21 points: merge trees are drawn too
    return copy


@pytest.mark.slow
def test_analyze_run_writes_every_model_and_the_report(analysed_run: Path) -> None:
    doc = json.loads((analysed_run / "analysis" / "analysis.json").read_text())
    assert doc["format"] == R.ANALYSIS_FORMAT and doc["design"] == "mlp"
    assert set(doc["models"]) == {"float", "qat", "pruned"}
    for label, m in doc["models"].items():
        assert m["top_eigenvalue"] > 0, label  # a trained classifier sits in a convex-ish bowl
        assert len(m["eigenvalues"]) == FAST.k
        assert m["n_minima"] >= 1 and 0 <= m["flat_area"] <= 1
    # the landscape's centre is the model itself
    for label in doc["models"]:
        z = np.load(analysed_run / "analysis" / f"landscape_{label}.npz")
        assert z["loss"].shape == (21, 21)
        assert z["loss"][21 // 2, 21 // 2] == pytest.approx(doc["models"][label]["loss"])
    assert doc["quantized"] is not None and "flatness" in doc["quantized"]
    files = {f["file"] for f in doc["figures"]}
    assert all((analysed_run / "analysis" / f).is_file() for f in files)
    assert {"curvature", "landscape", "topology", "similarity"} <= {
        f["section"] for f in doc["figures"]
    }
    assert "landscape_tree_pruned.png" in files  # the shipped model's slice beside its tree
    report = (analysed_run / "report.html").read_text()
    assert "Curvature" in report


# ------------------------------------------------------------------ a sweep


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep-analyze") / "sweep"
    assert sw.main([*TINY_SWEEP, "--workers", "1", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_analyze_sweep_reproduces_points_and_correlates(tiny_sweep: Path) -> None:
    doc = R.analyze_sweep(tiny_sweep, replace(FAST, points=7), workers=1)
    assert len(doc["points"]) == 8
    # every re-trained point reproduces the sweep's metric exactly (deterministic chains)
    assert doc["reproduced"] == 8
    for p in doc["points"]:
        rob = p["analysis"]["robustness"]
        assert 0 <= rob["mean_sdc"] <= 1 and 0 <= rob["acc_ber"] <= 1
        assert rob["faults"] > 1000  # every weight/bias bit of the digits MLP
    finite = [r for r in doc["correlations"] if math.isfinite(r["rho"])]
    assert finite and all(-1 <= r["rho"] <= 1 for r in finite)
    out = tiny_sweep / "analysis"
    assert (out / "sweep_analysis.json").is_file() and (out / "scatter_mean_sdc.png").is_file()
    html = (out / "sweep_analysis.html").read_text()
    assert "which analysis metric predicts fault robustness" in html
    # resumable: a second run reads every point from its cache...
    again = R.analyze_sweep(tiny_sweep, replace(FAST, points=7), workers=1)
    assert again["stats"]["cached"] == 8
    # ...which belongs to these options only
    assert R.points_subdir(replace(FAST, points=7)) != R.points_subdir(replace(FAST, points=9))
    assert R.points_subdir(replace(FAST, progress=True)) == R.points_subdir(FAST)
    # the same numbers from the cache (compared as JSON: NaN, for an undefined rho, != NaN)
    assert json.dumps(again["correlations"]) == json.dumps(doc["correlations"])
