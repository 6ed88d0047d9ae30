import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def mlp_flow_run(tmp_path_factory) -> tuple[Path, Path]:
    """One `edgeml flow --design mlp` run per test session: (run folder, hls4ml project root).

    Shared by every test that needs a complete run folder (tests/test_flow.py,
    tests/test_verify_disk.py, tests/test_mutate.py); tests that edit artifacts
    work on copies (:func:`edgeml.mutate.copy_run`).
    """
    from edgeml.cli import EXIT_OK, main

    root = tmp_path_factory.mktemp("flow-mlp")
    out, hls = root / "run", root / "hls"
    code = main(["flow", "--design", "mlp", "--out", str(out), "--hls-dir", str(hls), "-q"])
    assert code == EXIT_OK, f"edgeml flow --design mlp exited {code}"
    return out, hls
