"""The campaign store: append-only, keyed by fault id, crash-safe, resumable to identical results."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import qonnx_builders as qb

from edgeml.cli import EXIT_OK, main
from edgeml.errors import ConfigError, CorruptFileError
from edgeml.fault_injection import runner, samplers
from edgeml.fault_injection.campaign import run_param_campaign
from edgeml.fault_injection.store import FaultStore, StoreMismatchError, fault_id

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder holding an external QONNX MLP 16-12-5 (1,260 weight/bias bits), no training."""
    tmp = tmp_path_factory.mktemp("faultstore")
    p = qb.save(qb.mlp_pot(np.random.default_rng(1)), tmp / "ext.onnx")
    out = tmp / "run"
    assert main(["export", "--onnx", str(p), "--out", str(out), "-q"]) == EXIT_OK
    return out


@pytest.fixture(scope="module")
def inputs(run_dir) -> runner.RunInputs:
    return runner.load_run_inputs(run_dir, 300)


@pytest.fixture(scope="module")
def reference(inputs):
    """The whole exhaustive campaign in one engine call: what every store must hold."""
    camp = runner.build_campaign(inputs.g, inputs.x, inputs.labels)
    res = run_param_campaign(
        inputs.g, inputs.x, inputs.labels, sites=list(camp.sites), progress=False
    )
    return camp, res


def _rows(store: Path) -> tuple[int, int]:
    with sqlite3.connect(store) as c:
        return c.execute("SELECT COUNT(*), COUNT(DISTINCT fault_id) FROM results").fetchone()


def _assert_equal(res, ref) -> None:
    assert res.complete and len(res) == len(ref.sdc_rate)
    np.testing.assert_array_equal(res.sdc_rate, ref.sdc_rate)
    np.testing.assert_array_equal(res.acc_drop, ref.acc_drop)
    np.testing.assert_array_equal(res.max_dev, ref.max_dev)
    assert res.fault_ids() == [fault_id(s) for s in ref.sites()]


def test_store_round_trip_in_campaign_order(inputs, reference, tmp_path):
    camp, ref = reference
    assert len(camp.sites) == 1260
    res = runner.run_store_campaign(
        inputs.g,
        inputs.x,
        inputs.labels,
        camp,
        tmp_path / "s.sqlite",
        chunk=97,
        workers=0,
        progress=False,
        config=inputs.identity,
    )
    _assert_equal(res, ref)
    assert ref.sdc_rate.max() > 0.5 and ref.sdc_rate.min() == 0.0  # real spread, not all zero
    assert _rows(tmp_path / "s.sqlite") == (1260, 1260)
    cfg = res.config
    assert cfg["seed"] == 0 and cfg["n_samples"] == 300 and cfg["sampler"] == "exhaustive"
    assert cfg["design"] == "ext" and len(cfg["model_sha256"]) == 64 and cfg["chunk"] == 97
    assert res.baseline_accuracy == 1.0  # external model: labels are the golden top-1
    assert res.seconds > 0  # summed chunk evaluation times
    cr = res.to_campaign_result()  # for the metrics / plots that take a CampaignResult
    assert cr.fault_ids() == res.fault_ids() and cr.per_layer() == ref.per_layer()
    assert cr.per_bit("weight") == ref.per_bit("weight") and cr.top(5) == ref.top(5)


def test_partial_store_resumes_to_identical_results(inputs, reference, tmp_path):
    """Rows written by an earlier run (some chunks, out of order) are kept, the rest filled in."""
    camp, ref = reference
    path = tmp_path / "s.sqlite"
    cfg = runner.campaign_config(inputs.g, inputs.x, inputs.labels, camp, extra=inputs.identity)
    sites = list(camp.sites)
    with FaultStore.create(path, cfg, sites) as st:
        for k, (a, b) in enumerate(((700, 900), (0, 150))):
            scores = runner.evaluate_chunk(inputs.g, inputs.x, inputs.labels, sites[a:b])
            st.append(sites[a:b], *scores, chunk=k)
        assert st.count() == 350 and st.next_chunk() == 2
        part = st.results()
        assert not part.complete and part.done.sum() == 350
        assert np.isnan(part.sdc_rate[~part.done]).all() and (part.max_dev[~part.done] == -1).all()
        with pytest.raises(ConfigError, match=r"350 of 1260 faults.*edgeml faults resume"):
            part.to_campaign_result()
    res = runner.run_store_campaign(
        inputs.g,
        inputs.x,
        inputs.labels,
        camp,
        path,
        chunk=400,
        workers=0,
        progress=False,
        config=inputs.identity,
    )
    _assert_equal(res, ref)
    with sqlite3.connect(path) as c:
        chunks = dict(c.execute("SELECT chunk, COUNT(*) FROM results GROUP BY chunk").fetchall())
    assert chunks == {0: 200, 1: 150, 2: 400, 3: 400, 4: 110}  # 910 new rows in 3 new chunks


def test_store_is_append_only(inputs, reference, tmp_path):
    camp, _ = reference
    sites = list(camp.sites)[:10]
    path = tmp_path / "s.sqlite"
    with FaultStore.create(path, {"seed": 0}, sites) as st:
        scores = runner.evaluate_chunk(inputs.g, inputs.x, inputs.labels, sites[:5])
        st.append(sites[:5], *scores, chunk=0)
        with pytest.raises(ConfigError, match=r"refused chunk 1.*UNIQUE"):
            st.append(
                sites[3:6], *runner.evaluate_chunk(inputs.g, inputs.x, None, sites[3:6]), chunk=1
            )
        assert st.count() == 5  # the whole refused chunk rolled back, fault 5 included
        other = camp.sites[500]
        with pytest.raises(ConfigError, match="FOREIGN KEY"):  # not in the plan
            st.append([other], [0.0], [0.0], [0], chunk=2)
    with sqlite3.connect(path) as c:
        for sql in (
            "UPDATE results SET sdc_rate = 0",
            "DELETE FROM results",
            "DELETE FROM plan",
            "UPDATE campaign SET value = '1' WHERE key = 'seed'",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                c.execute(sql)
    with pytest.raises(ConfigError, match="already exists"):
        FaultStore.create(path, {"seed": 0}, sites)
    with pytest.raises(ConfigError, match="twice"):
        FaultStore.create(tmp_path / "dup.sqlite", {}, [sites[0], sites[1], sites[0]])
    assert not (tmp_path / "dup.sqlite").exists()  # nothing half-made left behind


def test_store_for_another_campaign_names_differing_fields(inputs, reference, tmp_path):
    camp, _ = reference
    path = tmp_path / "s.sqlite"
    small = runner.make_campaign(list(camp.sites)[:50], seed=0, meta=camp.meta)
    runner.run_store_campaign(
        inputs.g, inputs.x, inputs.labels, small, path, workers=0, progress=False
    )
    other_seed = runner.make_campaign(list(camp.sites)[:50], seed=7, meta=camp.meta)
    with pytest.raises(StoreMismatchError) as ei:
        runner.run_store_campaign(
            inputs.g,
            inputs.x[:200],
            inputs.labels[:200],
            other_seed,
            path,
            workers=0,
            progress=False,
        )
    msg = str(ei.value)
    assert "seed: store has 0, requested 7" in msg
    assert "samples_sha256" in msg and "n_samples: store has 300, requested 200" in msg
    assert "sites_sha256" not in msg and str(path) in msg
    fewer = runner.make_campaign(list(camp.sites)[:40], seed=0, meta=camp.meta)
    with pytest.raises(
        StoreMismatchError, match=r"sites_sha256.*n_faults: store has 50, requested 40"
    ):
        runner.run_store_campaign(
            inputs.g, inputs.x, inputs.labels, fewer, path, workers=0, progress=False
        )
    with pytest.raises(ConfigError, match=r"already exists.*--resume"):
        runner.run_store_campaign(
            inputs.g,
            inputs.x,
            inputs.labels,
            small,
            path,
            workers=0,
            resume=False,
            progress=False,
        )


def test_corrupt_or_foreign_files_are_refused(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 10)
    with pytest.raises(CorruptFileError, match="not an SQLite database"):
        FaultStore.open(junk)
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE t (x)")
    with pytest.raises(CorruptFileError, match="not an edgeml fault store"):
        FaultStore.open(foreign)
    with pytest.raises(CorruptFileError, match="does not exist"):
        FaultStore.open(tmp_path / "missing.sqlite")


def test_truncated_store_is_refused(inputs, reference, tmp_path):
    camp, _ = reference
    path = tmp_path / "s.sqlite"
    runner.run_store_campaign(
        inputs.g, inputs.x, inputs.labels, camp, path, workers=0, progress=False, chunk=300
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=str(path.name)):
        FaultStore.open(path).results()


def test_second_writer_is_refused(inputs, reference, tmp_path):
    camp, _ = reference
    path = tmp_path / "s.sqlite"
    small = runner.make_campaign(list(camp.sites)[:20], seed=0)
    cfg = runner.campaign_config(inputs.g, inputs.x, inputs.labels, small)
    with FaultStore.open_for(path, cfg, small.sites) as st:
        st.lock_for_writing()
        with pytest.raises(ConfigError, match="being written by another run"):
            runner.run_store_campaign(
                inputs.g, inputs.x, inputs.labels, small, path, workers=0, progress=False
            )
    res = runner.run_store_campaign(  # lock released with the first store
        inputs.g, inputs.x, inputs.labels, small, path, workers=0, progress=False
    )
    assert res.complete


def test_random_sampler_is_a_leveugle_sized_subset(inputs, reference):
    camp, _ = reference
    n = samplers.leveugle_sample_size(1260, 0.05, 0.95)
    assert n == 295  # 1260 / (1 + 0.05^2 * 1259 / (1.96^2 * 0.25))
    a = runner.build_campaign(
        inputs.g, inputs.x, inputs.labels, sampler="random", margin=0.05, seed=3
    )
    b = runner.build_campaign(
        inputs.g, inputs.x, inputs.labels, sampler="random", margin=0.05, seed=3
    )
    c = runner.build_campaign(
        inputs.g, inputs.x, inputs.labels, sampler="random", margin=0.05, seed=4
    )
    ids = [fault_id(s) for s in a.sites]
    assert len(ids) == n == len(set(ids)) and a.sites == b.sites and a.sites != c.sites
    order = {fault_id(s): k for k, s in enumerate(camp.sites)}
    assert [order[i] for i in ids] == sorted(order[i] for i in ids)  # graph order kept
    assert a.meta["sampler_params"] == {"margin": 0.05, "confidence": 0.95}
    with pytest.raises(ConfigError, match="sampler must be one of exhaustive, random"):
        runner.build_campaign(inputs.g, inputs.x, inputs.labels, sampler="hessian2")
    with pytest.raises(ConfigError, match="targets must be"):
        runner.build_campaign(inputs.g, inputs.x, inputs.labels, targets=("weights",))


def test_sigkill_midway_then_resume_is_identical(run_dir, tmp_path, capsys):
    """SIGKILL a CLI run mid-chunk: no half chunk stored; resume gives the uninterrupted result."""
    store = tmp_path / "killed.sqlite"
    chunk = 60
    env = dict(os.environ)
    # Test hook: sleep 2 ms after each row *inside* a chunk's transaction, so the kill
    # almost surely lands in an open transaction (and the run lasts ~3 s).
    env[runner.TEST_ROW_DELAY_ENV] = "0.002"
    cmd = [sys.executable, "-m", "edgeml.cli", "faults", "run", "--run-dir", str(run_dir)]
    cmd += ["--store", str(store), "--chunk", str(chunk), "--workers", "0", "-q"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        rows = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if store.exists():
                try:
                    rows = _rows(store)[0]
                except sqlite3.OperationalError:  # schema not visible yet
                    rows = 0
                if rows >= 3 * chunk:
                    break
            time.sleep(0.01)
        assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    killed_rows, distinct = _rows(store)
    assert 3 * chunk <= killed_rows < 1260 and distinct == killed_rows
    assert killed_rows % chunk == 0  # whole chunks only: the one in flight is gone entirely

    code = main(
        ["faults", "resume", "--store", str(store), "--workers", "0", "--chunk", "5000", "-q"]
    )
    out = capsys.readouterr().out
    assert code == EXIT_OK and "1260 of 1260 faults" in out
    assert _rows(store) == (1260, 1260)

    whole = tmp_path / "whole.sqlite"
    assert (
        main(
            [
                "faults",
                "run",
                "--run-dir",
                str(run_dir),
                "--store",
                str(whole),
                "--workers",
                "0",
                "-q",
            ]
        )
        == EXIT_OK
    )
    with FaultStore.open(store) as a, FaultStore.open(whole) as b:
        ra, rb = a.results(), b.results()
        assert a.config["samples_sha256"] == b.config["samples_sha256"]
    assert ra.complete and rb.complete and ra.fault_ids() == rb.fault_ids()
    np.testing.assert_array_equal(ra.sdc_rate, rb.sdc_rate)
    np.testing.assert_array_equal(ra.acc_drop, rb.acc_drop)
    np.testing.assert_array_equal(ra.max_dev, rb.max_dev)
    with sqlite3.connect(store) as c:
        n_chunks = c.execute("SELECT COUNT(DISTINCT chunk) FROM results").fetchone()[0]
    assert n_chunks == killed_rows // chunk + 1  # the resume wrote the rest as one chunk


def test_new_store_ignores_a_stale_wal_of_a_deleted_one(inputs, reference, tmp_path):
    """Deleting a store but not its -wal must not leak the old rows into a new store."""
    import shutil

    camp, _ = reference
    sites = list(camp.sites)[:20]
    path = tmp_path / "s.sqlite"
    st = FaultStore.create(path, {"seed": 0}, sites)
    st.append(
        sites[:5], *runner.evaluate_chunk(inputs.g, inputs.x, inputs.labels, sites[:5]), chunk=0
    )
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > 0  # the rows live in the WAL until a checkpoint
    shutil.copy(wal, tmp_path / "saved-wal")
    st.close()
    path.unlink()
    shutil.copy(tmp_path / "saved-wal", wal)
    with FaultStore.create(path, {"seed": 1}, sites) as fresh:
        assert fresh.count() == 0 and fresh.config["seed"] == 1
