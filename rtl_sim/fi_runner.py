"""Build and run the cocotb SEU bench (:mod:`edgeml.rtl_sim.fi_tb`) on a fault-injection build.

The bench deposits register flips by VPI (``dut.r<k>.value = old ^ (1 << bit)``)
at chosen cycles, independently of the compiled harness' mask ports, and
checks each output against the golden model's prediction for that flip.
Only the FI top's own signals (its registers and ports) are made VPI-visible
(``--public-depth 1``), so the build costs about as much as the plain bench.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeml.errors import ConfigError, DependencyError, EdgemlError, InputRangeError

if TYPE_CHECKING:
    from edgeml.fault_injection.rtl_fi_build import FiDesign

log = logging.getLogger(__name__)

TEST_MODULE = "edgeml.rtl_sim.fi_tb"


@dataclass
class FiCocotbResult:
    """Outcome of one SEU bench run (vectors are indices into the streamed batch)."""

    n_vectors: int
    n_flips: int
    passed: bool
    mismatching_vectors: list[int]
    changed_vectors: list[int]  # vectors whose outputs differ from the fault-free ones
    deposits: list[dict[str, int]] = field(default_factory=list)
    first_mismatches: list[dict[str, Any]] = field(default_factory=list)
    build_seconds: float = 0.0
    seconds: float = 0.0
    log_file: str = ""


def run_fi_cocotb(
    design: FiDesign,
    x_codes: np.ndarray,
    flips: Sequence[tuple[int, str, int]],
    expected_codes: np.ndarray,
    fault_free_codes: np.ndarray,
    build_dir: str | Path,
    *,
    seed: int = 0,
    force_build: bool = False,
) -> FiCocotbResult:
    """Stream ``x_codes`` through ``design`` under cocotb, depositing ``flips`` = (cycle, register, bit).

    ``expected_codes`` are the outputs the golden model predicts with the
    flips applied (each hits vector ``cycle - rank``), ``fault_free_codes``
    the outputs without. Mismatches come back in the result, never raised.
    """
    try:
        import cocotb_tools.runner  # noqa: F401
    except ImportError as exc:
        raise DependencyError(
            "the cocotb bench needs cocotb 2.x: pip install cocotb==2.1.0"
        ) from exc
    from cocotb_tools.check_results import get_results

    from edgeml.rtl_sim.runner import _build, _runner, _simulator_env, _tail, copy_memfiles
    from edgeml.toolchain import file_lock

    x = np.asarray(x_codes)
    n = len(x)
    exp = np.asarray(expected_codes).reshape(n, -1)
    ff = np.asarray(fault_free_codes).reshape(n, -1)
    if n == 0 or exp.shape[1] != design.n_outputs or ff.shape != exp.shape:
        raise InputRangeError(
            f"need >= 1 vector and expected/fault-free codes of shape ({n}, {design.n_outputs})"
        )
    rows = []
    for c, reg, b in flips:
        r = design.register(reg)
        if not 0 <= b < r.width or c < 0:
            raise ConfigError(f"flip (cycle {c}, {reg}, bit {b}) is outside {reg} ({r.width} bits)")
        rows.append((int(c), r.rank, int(b)))
    codes = design.input_codes(x)
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    vectors = build_dir / "fi_vectors.npz"
    result_json = build_dir / "fi_result.json"
    results_xml = build_dir / "fi_results.xml"
    meta = np.array(
        [design.input_type.width, design.out_width, int(design.out_signed), design.latency],
        np.int64,
    )
    with file_lock(build_dir / ".edgeml_cocotb.lock"):
        np.savez(
            vectors,
            codes=codes.astype(np.int64),
            expected=exp.astype(np.int64),
            fault_free=ff.astype(np.int64),
            flips=np.array(rows, np.int64).reshape(-1, 3),
            meta=meta,
        )
        result_json.unlink(missing_ok=True)
        results_xml.unlink(missing_ok=True)
        with _simulator_env():
            runner = _runner(public_internals=False)  # --public-depth 1: the FI top's registers
            build_s = _build(
                design, build_dir, runner, design.name, design.verilog_files, force_build, False
            )
            copy_memfiles(design, build_dir)
            t0 = time.perf_counter()
            try:
                runner.test(
                    test_module=TEST_MODULE,
                    hdl_toplevel=design.name,
                    hdl_toplevel_lang="verilog",
                    build_dir=str(build_dir / "sim_build"),
                    test_dir=str(build_dir),
                    results_xml=str(results_xml),
                    extra_env={
                        "EDGEML_FI_TB_VECTORS": str(vectors),
                        "EDGEML_FI_TB_RESULT": str(result_json),
                    },
                    seed=seed,
                    log_file=str(build_dir / "fi_sim.log"),
                )
            except SystemExit as exc:
                log.warning("cocotb simulator exited with %s", exc.code)
            seconds = time.perf_counter() - t0
        try:
            _, n_failed = get_results(results_xml)
        except RuntimeError as exc:
            raise EdgemlError(
                f"the SEU bench produced no results ({exc}); log tail:\n{_tail(build_dir / 'fi_sim.log')}"
            ) from exc
        info = json.loads(result_json.read_text()) if result_json.is_file() else {}
    bad = info.get("mismatching_vectors", list(range(n)))
    return FiCocotbResult(
        n_vectors=int(info.get("n_vectors", n)),
        n_flips=len(rows),
        passed=n_failed == 0 and not bad,
        mismatching_vectors=bad,
        changed_vectors=info.get("changed_vectors", []),
        deposits=info.get("deposits", []),
        first_mismatches=info.get("first_mismatches", []),
        build_seconds=round(build_s, 2),
        seconds=round(seconds, 3),
        log_file=str(build_dir / "fi_sim.log"),
    )
