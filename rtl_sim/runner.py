"""Build and run the cocotb bench (:mod:`edgeml.rtl_sim.tb_pipeline`) with Verilator.

cocotb checks protocol and cycle behaviour (reset, valid timing, streaming
with and without bubbles) on a few hundred vectors at ~10-20k vectors/s; the
volume check (>= 10k vectors) belongs to :meth:`edgeml.rtl.RtlDesign.predict_int`,
which is 5-50x faster.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.errors import DependencyError, EdgemlError, InputRangeError
from edgeml.rtl_sim.wrapper import wrapper_top_name, write_wrapper

log = logging.getLogger(__name__)

TEST_MODULE = "edgeml.rtl_sim.tb_pipeline"


@dataclass
class CocotbResult:
    """Outcome of one bench run. ``n_mismatches`` counts vectors (missing outputs included)."""

    n_vectors: int
    n_mismatches: int
    seconds: float  # wall time of the simulation run (excluding the build)
    vectors_per_s: float  # checked outputs per second of simulated streaming
    passed: bool = False
    n_tests: int = 0
    n_failed: int = 0
    build_seconds: float = 0.0
    measured_latency: int | None = None
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    results_xml: str = ""
    log_file: str = ""


@contextlib.contextmanager
def _simulator_env() -> Iterator[None]:
    """Put the Verilator shim into ``os.environ`` for cocotb's runner, then restore it.

    cocotb's runner looks ``verilator`` up on the process PATH and copies
    ``os.environ`` into its subprocesses. ``PYTEST_CURRENT_TEST`` is hidden so
    the runner returns results instead of calling ``sys.exit`` under pytest.
    """
    from edgeml.toolchain import verilator_env

    env = verilator_env()
    keys = ("PATH", "VERILATOR_ROOT", "MAKEFLAGS", "PYTEST_CURRENT_TEST")
    saved = {k: os.environ.get(k) for k in keys}
    try:
        for k in keys[:3]:
            os.environ[k] = env[k]
        os.environ.pop("PYTEST_CURRENT_TEST", None)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _bench_hash(design: Any, wrapper: Path) -> str:
    import cocotb

    h = hashlib.sha256(design.build_key().encode())
    h.update(wrapper.read_bytes())
    h.update(f"cocotb {cocotb.__version__}".encode())
    return h.hexdigest()


def _runner(public_internals: bool) -> Any:
    """cocotb's Verilator runner; by default without ``--public-flat-rw``.

    cocotb makes every signal VPI-visible, which for da4ml's thousands of
    wires multiplies the C++ size and build time by ~5 (MLP: ~200 s -> ~40 s
    on 2 cores). The bench only touches the wrapper's ports, so only the top
    module is made public (``--public-depth 1``). Pass ``public_internals=True``
    to reach internal registers (e.g. for deposit-based fault injection).
    """
    from cocotb_tools.runner import get_runner

    base = type(get_runner("verilator"))

    class _Runner(base):  # type: ignore[misc, valid-type]
        def _build_command(self) -> Any:
            cmds = super()._build_command()
            if not public_internals:
                cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"]
                cmds[0][1:1] = ["--public-depth", "1"]
            return cmds

    runner = _Runner()
    # cocotb pins its runner's logger at INFO (it prints every command line);
    # follow edgeml's own verbosity instead so `-q` means quiet.
    runner.log.setLevel(max(log.getEffectiveLevel(), logging.INFO))
    return runner


def _build(
    design: Any,
    build_dir: Path,
    runner: Any,
    top: str,
    sources: list[Path],
    force: bool,
    public: bool,
) -> float:
    """Verilate the bench once per (design, wrapper, cocotb, visibility) hash; return seconds (0 if cached)."""
    sim_build = build_dir / "sim_build"
    stamp = sim_build / "edgeml_stamp.txt"
    wrapper = sources[-1]
    h = _bench_hash(design, wrapper) + ("-public" if public else "")
    if not force and stamp.is_file() and stamp.read_text() == h and (sim_build / top).is_file():
        return 0.0
    t0 = time.perf_counter()
    try:
        runner.build(
            sources=[str(p) for p in sources],
            hdl_toplevel=top,
            build_dir=str(sim_build),
            build_args=["-Wno-fatal", "-Wno-lint", "-Wno-style", "--output-split-cfuncs", "10000"],
            timescale=("1ns", "1ps"),
            log_file=str(build_dir / "build.log"),
            clean=True,
        )
    except (RuntimeError, SystemExit) as exc:
        tail = _tail(build_dir / "build.log")
        raise EdgemlError(f"cocotb/Verilator build of '{top}' failed ({exc}):\n{tail}") from exc
    # Keep only the simulator executable: precompiled headers and objects are ~150 MB.
    for junk in sim_build.iterdir():
        if junk.suffix in (".gch", ".o", ".a", ".d"):
            junk.unlink(missing_ok=True)
    stamp.write_text(h)
    return time.perf_counter() - t0


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def copy_memfiles(design: Any, build_dir: Path) -> list[Path]:
    """Put the design's lookup-table ``.mem`` files where the simulation reads them.

    da4ml's ``lookup_table.v`` loads its ROM with ``$readmemh`` by a path relative to
    the simulator's working directory (the bench's ``build_dir``); without the files
    every table reads as X and the outputs are wrong (e.g. Softmax designs).
    """
    import shutil

    folders = {Path(f).parent / "memfiles" for f in design.verilog_files}
    copied = []
    for mem in sorted(m for d in folders for m in d.glob("*.mem")):
        dst = Path(build_dir) / mem.name
        shutil.copy2(mem, dst)
        copied.append(dst)
    return copied


def run_cocotb(
    design: Any,
    x_codes: np.ndarray,
    expected_codes: np.ndarray,
    build_dir: str | Path,
    *,
    seed: int = 0,
    bubbles: bool = True,
    force_build: bool = False,
    public_internals: bool = False,
) -> CocotbResult:
    """Run the cocotb bench on ``design`` (a pipelined :class:`edgeml.rtl.RtlDesign`).

    ``x_codes`` are golden input codes (graph-input layout), ``expected_codes``
    the golden output codes for them. Vectors are streamed back to back, then
    again with random idle cycles (``bubbles``), after a reset and latency
    check. Mismatches are reported in the result, never raised: the caller
    decides (the flow raises :class:`edgeml.errors.MismatchError`).
    ``public_internals`` makes every internal signal VPI-visible (slow build).
    The simulator is rebuilt only when the Verilog, wrapper or cocotb change.
    """
    try:
        import cocotb_tools.runner  # noqa: F401
    except ImportError as exc:
        raise DependencyError(
            "the cocotb bench needs cocotb 2.x: pip install cocotb==2.1.0"
        ) from exc

    from edgeml.toolchain import file_lock

    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    # One bench at a time per folder: the build and the per-run files are shared.
    with file_lock(build_dir / ".edgeml_cocotb.lock"):
        return _run_locked(
            design, x_codes, expected_codes, build_dir, seed, bubbles, force_build, public_internals
        )


def _run_locked(
    design: Any,
    x_codes: np.ndarray,
    expected_codes: np.ndarray,
    build_dir: Path,
    seed: int,
    bubbles: bool,
    force_build: bool,
    public_internals: bool,
) -> CocotbResult:
    from cocotb_tools.check_results import get_results

    x = np.asarray(x_codes)
    exp = np.asarray(expected_codes)
    if len(x) == 0:
        raise InputRangeError("run_cocotb needs at least one vector")
    if exp.shape[0] != len(x) or exp[0].size != design.n_outputs:
        raise InputRangeError(
            f"expected_codes must have shape ({len(x)}, {design.output_shape}); got {exp.shape}"
        )
    in_raw = design.encode_inputs(x)
    wrapper = write_wrapper(design, build_dir)
    top = wrapper_top_name(design)
    sources = [*design.verilog_files, wrapper]
    vectors = build_dir / "vectors.npz"
    result_json = build_dir / "bench_result.json"
    results_xml = build_dir / "results.xml"
    k_out, _, f_out = design.output_kif
    meta = np.array(
        [design.input_bits, design.output_bits, k_out, f_out, design.latency, seed, int(bubbles)],
        np.int64,
    )
    np.savez(vectors, in_raw=in_raw, expected=exp.reshape(len(x), -1).astype(np.int64), meta=meta)
    result_json.unlink(missing_ok=True)

    with _simulator_env():
        runner = _runner(public_internals)
        build_seconds = _build(
            design, build_dir, runner, top, sources, force_build, public_internals
        )
        copy_memfiles(design, build_dir)
        t0 = time.perf_counter()
        try:
            runner.test(
                test_module=TEST_MODULE,
                hdl_toplevel=top,
                hdl_toplevel_lang="verilog",
                build_dir=str(build_dir / "sim_build"),
                test_dir=str(build_dir),
                results_xml=str(results_xml),
                extra_env={"EDGEML_TB_VECTORS": str(vectors), "EDGEML_TB_RESULT": str(result_json)},
                seed=seed,
                log_file=str(build_dir / "sim.log"),
            )
        except SystemExit as exc:  # the runner exits when the simulator crashes
            log.warning("cocotb simulator exited with %s; see %s", exc.code, build_dir / "sim.log")
        seconds = time.perf_counter() - t0

    try:
        n_tests, n_failed = get_results(results_xml)
    except RuntimeError as exc:
        raise EdgemlError(
            f"the cocotb bench produced no results ({exc}); log tail:\n{_tail(build_dir / 'sim.log')}"
        ) from exc
    info: dict[str, Any] = json.loads(result_json.read_text()) if result_json.is_file() else {}
    n_vec = int(info.get("n_vectors", len(x)))
    # A bench that died before checking counts every vector as unverified.
    n_bad = int(info.get("n_mismatching_vectors", n_vec))
    rate = info.get("n_checks", 0) / info["stream_seconds"] if info.get("stream_seconds") else 0.0
    res = CocotbResult(
        n_vectors=n_vec,
        n_mismatches=n_bad,
        seconds=round(seconds, 3),
        vectors_per_s=round(rate, 1),
        passed=n_failed == 0 and n_bad == 0,
        n_tests=n_tests,
        n_failed=n_failed,
        build_seconds=round(build_seconds, 2),
        measured_latency=info.get("measured_latency"),
        mismatches=info.get("mismatches", []),
        results_xml=str(results_xml),
        log_file=str(build_dir / "sim.log"),
    )
    log.info(
        "cocotb %s: %d vectors, %d mismatches, %d/%d tests failed, %.0f vectors/s",
        design.name,
        res.n_vectors,
        res.n_mismatches,
        n_failed,
        n_tests,
        res.vectors_per_s,
    )
    return res
