"""Campaigns on Dask: a LocalCluster of worker *processes* on loopback gives the serial results."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import qonnx_builders as qb

from edgeml.cli import EXIT_OK, main
from edgeml.errors import ConfigError
from edgeml.fault_injection import runner
from edgeml.fault_injection.store import FaultStore


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> runner.RunInputs:
    tmp = tmp_path_factory.mktemp("faultdask")
    p = qb.save(qb.mlp_pot(np.random.default_rng(2)), tmp / "ext.onnx")
    assert main(["export", "--onnx", str(p), "--out", str(tmp / "run"), "-q"]) == EXIT_OK
    return runner.load_run_inputs(tmp / "run", 400)


@pytest.fixture(scope="module")
def serial(inputs, tmp_path_factory):
    camp = runner.build_campaign(inputs.g, inputs.x, inputs.labels)
    path = tmp_path_factory.mktemp("serial") / "serial.sqlite"
    res = runner.run_store_campaign(
        inputs.g, inputs.x, inputs.labels, camp, path, workers=0, chunk=5000, progress=False
    )
    assert res.complete and len(res) == 1260 and res.sdc_rate.max() > 0.5
    return camp, res


def _assert_same(a, b) -> None:
    assert a.complete and b.complete and a.fault_ids() == b.fault_ids()
    np.testing.assert_array_equal(a.sdc_rate, b.sdc_rate)
    np.testing.assert_array_equal(a.acc_drop, b.acc_drop)
    np.testing.assert_array_equal(a.max_dev, b.max_dev)


def test_existing_cluster_on_loopback_matches_serial(inputs, serial, tmp_path):
    """--scheduler ADDRESS: two worker processes; a partly filled store is finished there."""
    from distributed import Client, LocalCluster

    camp, ref = serial
    environ = dict(os.environ)  # a Nanny sets OMP_NUM_THREADS=1 etc. in this process
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    os.environ.clear()
    os.environ.update(environ)
    with cluster:
        addr = cluster.scheduler_address
        assert addr.startswith("tcp://127.0.0.1:")
        with Client(cluster) as client:
            pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids  # real processes, not threads

        path = tmp_path / "dask.sqlite"
        cfg = runner.campaign_config(inputs.g, inputs.x, inputs.labels, camp)
        sites = list(camp.sites)
        with FaultStore.create(path, cfg, sites) as st:  # an earlier, interrupted serial run
            st.append(
                sites[:100],
                *runner.evaluate_chunk(inputs.g, inputs.x, inputs.labels, sites[:100]),
                chunk=0,
            )
        res = runner.run_store_campaign(
            inputs.g,
            inputs.x,
            inputs.labels,
            camp,
            path,
            scheduler=addr,
            chunk=100,
            progress=False,
        )
    _assert_same(res, ref)
    with FaultStore.open(path) as st:
        assert st.count() == 1260 and len(st.done_ids()) == 1260 and st.next_chunk() == 13


def test_default_local_cluster_matches_serial(inputs, serial, tmp_path, monkeypatch):
    """The default executor starts its own worker processes; nothing is evaluated in-process."""
    camp, ref = serial
    environ = dict(os.environ)

    def in_process(*a, **k):
        raise AssertionError("a chunk was evaluated in the driver, not on a Dask worker")

    # Workers import an unpatched runner; only an in-process evaluation would call this.
    monkeypatch.setattr(runner, "evaluate_chunk", in_process)
    res = runner.run_store_campaign(
        inputs.g,
        inputs.x,
        inputs.labels,
        camp,
        tmp_path / "local.sqlite",
        workers=2,
        chunk=300,
        progress=False,
    )
    _assert_same(res, ref)
    assert dict(os.environ) == environ  # the runner's own cluster left the environment alone


def test_unreachable_scheduler_is_a_clear_error(inputs, serial, tmp_path, monkeypatch):
    camp, _ = serial
    monkeypatch.setattr(runner, "SCHEDULER_TIMEOUT_S", 1.0)
    small = runner.make_campaign(list(camp.sites)[:400], seed=0)
    with pytest.raises(ConfigError, match=r"cannot connect to the Dask scheduler.*127\.0\.0\.1:9"):
        runner.run_store_campaign(
            inputs.g,
            inputs.x,
            inputs.labels,
            small,
            Path(tmp_path / "x.sqlite"),
            scheduler="tcp://127.0.0.1:9",
            chunk=100,
            progress=False,
        )
