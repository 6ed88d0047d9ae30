"""hls4ml's **Catapult** project beside the Vitis one, for ASIC users, with an exact C-sim.

:func:`write_catapult_project` converts the same cleaned QONNX graph as
:func:`edgeml.hls.convert_hls` with hls4ml's Catapult backend (``io_parallel``,
``Latency`` strategy, ``Technology: asic`` with a Catapult standard-cell library
name, ``nangate-45nm`` by default) and compiles its C++ emulation with g++ against
the ``ac_types`` / ``ac_math`` headers hls4ml ships. No Catapult install is needed
to write or check the project; Catapult HLS is needed only to synthesise it.

What an ASIC user takes to Catapult (:func:`catapult_shipped_files`):

* ``build_prj.tcl``: the Catapult script (``catapult -product ultra -shell -f
  build_prj.tcl``); it sets the clock period and the technology library
  (``setup_asic_libs {nangate-45nm}``, or ``setup_xilinx_part`` for ``tech="fpga"``);
* ``firmware/``: ``<name>.cpp`` / ``.h`` (top function, ``#pragma hls_design top``),
  ``defines.h`` (every ``ac_fixed`` type), ``parameters.h``, ``weights/`` (``.h``
  for synthesis, ``.txt`` loaded by C-sim), ``nnet_utils/`` and the ``ac_types``,
  ``ac_math`` and ``ac_simutils`` headers;
* ``<name>_test.cpp`` and ``tb_data/`` (SCVerify testbench; :meth:`HlsDesign.write_testbench`
  fills ``tb_data``), ``<name>_bridge.cpp`` and ``build_lib.sh`` (the C-sim library
  this module calls through ctypes) and ``hls4ml_config.yml``.

Why C-sim is exact, and what differs from the Vitis project:

* the types are the Vitis project's, written as ``ac_fixed<W,I,signed,Q,O>``:
  QONNX ``ROUND`` -> ``AC_RND_CONV`` (half to even), saturation ``AC_SAT`` /
  ``AC_SAT_SYM`` (``narrow=1``), accumulators ``AC_TRN, AC_WRAP`` at worst-case
  width. The input layer's type is exactly ``input_type`` and the output layer's
  result type is ``output_type`` (the same checks as the Vitis project, from
  :mod:`edgeml.hls`), re-wrapped as ``ac_fixed``;
* hls4ml writes a 1-bit ``ac_fixed`` as 2 bits (``ACFixedPrecisionDefinition``), which
  changes a rounding / saturating type's grid: such a layer is refused by name;
* the bridge is the same as Vitis' (``<name>_double``, trace functions), so
  :class:`CatapultDesign` is an :class:`~edgeml.hls.HlsDesign` with its own metadata
  file (:data:`METADATA_FILE`);
* Softmax: edgeml sets the Vitis Softmax tables from the golden model, which has no
  Catapult counterpart yet; a Softmax layer, and any layer whose op has a Vitis
  function template but none in the Catapult backend (Einsum, EinsumDense,
  LayerNormalization, Cropping, ...), raises :class:`~edgeml.errors.UnsupportedOpError`
  naming the layer and the op, instead of a project that silently drops it;
* graphs that hls4ml's QONNX front end converts wrongly without an error
  (:func:`edgeml.hls.qonnx_route_hazards`) are refused: the golden-IR route
  (:mod:`edgeml.hls_ir`) writes Vitis projects only.

Measured on the jet tagger (16-64-32-32-5, 6-bit; 2 shared cores): hls4ml conversion
0.02 s, g++ compile of C-sim 3.5-4.5 s, 0 / 20,521 mismatches against the golden model,
C-sim 130,000-200,000 vectors/s (``ac_fixed`` at ``-O3``; the Vitis ``ap_fixed`` C-sim of
the same model ran 19,500 vectors/s in the same process), weight headers 4,389 / 4,389
elements equal to the ``.txt`` files, and the shipped testbench built with g++
reproduced C-sim on 1,000 vectors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.errors import ConfigError, CorruptFileError, EdgemlError, UnsupportedOpError
from edgeml.fixed import FixedType
from edgeml.hls import (
    DEFAULT_PART,
    MAX_EXACT_DOUBLE_BITS,
    NAME_RE,
    HlsDesign,
    TracedLayer,
    fixed_from_hls4ml,
    fixed_from_json,
    fixed_to_json,
    prepare_project_dir,
    qonnx_route_hazards,
    quiet_hls4ml,
    require_gxx,
    sources_sha256,
)
from edgeml.manifest import sha256

logger = logging.getLogger(__name__)

#: edgeml's metadata in a Catapult project (the Vitis project's is ``edgeml_hls.json``)
METADATA_FILE = "edgeml_catapult.json"
#: the name of the verify level this module's C-sim is compared under
VERIFY_LEVEL = "hls4ml Catapult C-sim"
#: Catapult's name of the open 45 nm library (hls4ml's default for ``tech="asic"``)
DEFAULT_ASIC_LIBS = "nangate-45nm"
TECHS = ("asic", "fpga")
#: the run-folder record :func:`catapult_for_run` writes with ``record=True``
RUN_RECORD = "catapult.json"


# --------------------------------------------------------------------------- design


@contextlib.contextmanager
def shipped_ac_types() -> Iterator[None]:
    """Hide ``MGC_HOME`` while g++ runs: hls4ml's ``build_lib.sh`` puts an installed
    Catapult's headers first, and C-sim must use the ``ac_types`` shipped in the project."""
    saved = os.environ.pop("MGC_HOME", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["MGC_HOME"] = saved


@dataclass
class CatapultDesign(HlsDesign):
    """A compiled hls4ml Catapult project and its C-sim (``ac_fixed``), called through ctypes.

    Same prediction API as :class:`~edgeml.hls.HlsDesign` (``predict_int``,
    ``predict_float``, ``trace_int``, ``write_testbench``); build one with
    :func:`write_catapult_project` or reopen one with :meth:`load`.
    """

    tech: str = "asic"
    asic_libs: str = DEFAULT_ASIC_LIBS

    @classmethod
    def load(cls, project_dir: Path) -> CatapultDesign:
        """Reopen a project written by :func:`write_catapult_project` (no hls4ml import).

        The C-sim library is rebuilt with the project's ``build_lib.sh`` (g++) when the
        project moved (the library holds the absolute weights path) or when a compiled
        source changed since it was built (``sources_sha256``).
        """
        project_dir = Path(project_dir)
        meta_path = project_dir / METADATA_FILE
        if not meta_path.is_file():
            raise CorruptFileError(
                f"{meta_path} is missing: {project_dir} was not written by "
                "edgeml.hls_catapult.write_catapult_project. Write the Catapult project again."
            )
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("backend") != "Catapult":
                raise ValueError(f"backend is {meta.get('backend')!r}, not 'Catapult'")
            design = cls(
                project_dir=project_dir,
                name=meta["name"],
                input_type=fixed_from_json(meta["input_type"]),
                output_type=fixed_from_json(meta["output_type"]),
                input_shape=tuple(meta["input_shape"]),
                output_shape=tuple(meta["output_shape"]),
                lib_path=project_dir / meta["lib"],
                traced=[
                    TracedLayer(
                        t["name"],
                        tuple(t["shape"]),
                        fixed_from_json(t["type"]) if t["type"] else None,
                    )
                    for t in meta["traced"]
                ],
                output_layer=meta.get("output_layer", ""),
                compile_seconds=float(meta.get("compile_seconds", 0.0)),
                tech=meta["tech"],
                asic_libs=meta.get("asic_libs") or "",
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptFileError(
                f"{meta_path} is not valid edgeml Catapult metadata ({exc}); write the project again."
            ) from exc
        sources = sources_sha256(project_dir)
        design.rebuilt_because = ""
        if meta.get("compiled_in") != str(project_dir.resolve()) or not design.lib_path.is_file():
            design.rebuilt_because = "project moved or library missing"
        elif meta.get("sources_sha256") != sources:
            design.rebuilt_because = "firmware sources changed since the C-sim library was built"
        if design.rebuilt_because:
            design._rebuild(meta, meta_path, sources)
        design._open()
        return design

    def _rebuild(self, meta: dict[str, Any], meta_path: Path, sources: str) -> None:
        """Re-run ``build_lib.sh`` after regenerating the bridge's absolute weights path."""
        bridge = self.project_dir / f"{self.name}_bridge.cpp"
        if bridge.is_file():
            weights = str((self.project_dir / "firmware" / "weights").resolve())
            text = bridge.read_text()
            new = _WEIGHTS_DIR_RE.sub(
                lambda m: f"{m.group(1)}{json.dumps(weights)};", text, count=1
            )
            if new != text:
                bridge.write_text(new)
                sources = sources_sha256(self.project_dir)
        with shipped_ac_types():
            super()._rebuild(meta, meta_path, sources)

    def write_testbench(self, x_codes: np.ndarray) -> Path:
        """Write ``tb_data/`` (inputs and C-sim outputs) and point SCVerify's run at it.

        hls4ml's ``build_prj.tcl`` passes only the weights folder to the testbench
        (which then feeds random frames); the ``INVOKE_ARGS`` line is rewritten to add
        ``tb_data/tb_input_features.dat`` and ``tb_data/tb_output_predictions.dat``,
        so Catapult's C simulation and SCVerify run these vectors and log their
        outputs to ``tb_data/csim_results.log`` / ``rtl_cosim_results.log``.
        """
        tb = super().write_testbench(x_codes)
        tcl = self.project_dir / "build_prj.tcl"
        text = tcl.read_text()
        new, n = _INVOKE_ARGS_RE.subn(
            'flow package option set /SCVerify/INVOKE_ARGS "$sfd/firmware/weights '
            '$sfd/tb_data/tb_input_features.dat $sfd/tb_data/tb_output_predictions.dat"',
            text,
        )
        if n != 1:
            raise EdgemlError(
                f"{tcl} has {n} active SCVerify INVOKE_ARGS lines (expected 1); cannot point it at tb_data."
            )
        tcl.write_text(new)
        return tb

    def run_testbench(self, timeout: float = 600.0) -> dict[str, Any]:
        """Compile the shipped ``<name>_test.cpp`` with g++ (no Catapult) and run it on ``tb_data/``.

        This is the C simulation Catapult runs first, with the shipped ``mc_scverify.h``
        (``ac_simutils``): it proves the testbench, weights ``.txt`` and ``tb_data``
        files a user takes to Catapult reproduce this C-sim. The testbench writes
        ``tb_data/csim_results.log``; its rows are compared with
        ``tb_output_predictions.dat`` as exact codes of ``output_type``.

        Returns ``{"vectors", "mismatching_vectors", "compile_seconds", "run_seconds"}``.
        Raises EdgemlError when ``tb_data`` is missing (call :meth:`write_testbench`)
        or g++ / the testbench fails.
        """
        import subprocess
        import tempfile

        tb = self.project_dir / "tb_data"
        inp, pred = tb / "tb_input_features.dat", tb / "tb_output_predictions.dat"
        if not (inp.is_file() and pred.is_file()):
            raise EdgemlError(
                f"{tb} holds no testbench vectors; call write_testbench(x_codes) first."
            )
        require_gxx()
        fw = "firmware"
        inc = [f"-I{fw}/ac_types/include", f"-I{fw}/ac_math/include", f"-I{fw}/ac_simutils/include"]
        with tempfile.TemporaryDirectory(prefix="edgeml-catapult-tb-") as tmp:
            exe = Path(tmp) / f"{self.name}_tb"
            cmd = [
                "g++",
                "-O2",
                "-std=c++11",
                *inc,
                f"-I{fw}/nnet_utils",
                f"-I{fw}",
                "-I.",
                f"{self.name}_test.cpp",
                f"{fw}/{self.name}.cpp",
                "-o",
                str(exe),
            ]
            t0 = time.perf_counter()
            proc = subprocess.run(
                cmd,
                cwd=self.project_dir,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            compile_s = time.perf_counter() - t0
            if proc.returncode != 0:
                raise EdgemlError(
                    f"g++ failed on {self.name}_test.cpp in {self.project_dir}:\n{proc.stderr[-2000:]}"
                )
            log = tb / "csim_results.log"
            log.unlink(missing_ok=True)
            t0 = time.perf_counter()
            proc = subprocess.run(
                [
                    str(exe),
                    f"{fw}/weights",
                    str(inp.relative_to(self.project_dir)),
                    str(pred.relative_to(self.project_dir)),
                ],
                cwd=self.project_dir,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            run_s = time.perf_counter() - t0
        if proc.returncode != 0 or not log.is_file():
            raise EdgemlError(
                f"the testbench {self.name}_test.cpp failed (exit {proc.returncode}):\n"
                f"{(proc.stdout + proc.stderr)[-2000:]}"
            )
        want = np.atleast_2d(np.loadtxt(pred, dtype=np.float64, ndmin=2))
        got = np.atleast_2d(np.loadtxt(log, dtype=np.float64, ndmin=2))
        if got.shape != want.shape:
            raise EdgemlError(
                f"the testbench wrote {got.shape} values to {log}, expected {want.shape}."
            )
        t = self.output_type
        bad = (t.from_float_exact(got) != t.from_float_exact(want)).any(axis=1)
        return {
            "vectors": len(want),
            "mismatching_vectors": int(bad.sum()),
            "compile_seconds": round(compile_s, 2),
            "run_seconds": round(run_s, 3),
        }

    def shipped_files(self) -> list[Path]:
        """The project's files an ASIC user takes to Catapult (see :func:`catapult_shipped_files`)."""
        return catapult_shipped_files(self.project_dir)


#: the active (not commented) ``flow package option set /SCVerify/INVOKE_ARGS ...`` line
_INVOKE_ARGS_RE = re.compile(r"^flow package option set /SCVerify/INVOKE_ARGS .*$", re.M)
#: ``static std::string s_weights_dir = "...";`` in hls4ml's bridge (the C-sim weights folder)
_WEIGHTS_DIR_RE = re.compile(r'(static\s+std::string\s+s_weights_dir\s*=\s*)"[^"\n]*"\s*;')


def catapult_shipped_files(project_dir: Path) -> list[Path]:
    """Every file of a Catapult project a user takes to Catapult HLS, sorted.

    That is all but the C-sim libraries and objects and edgeml's own metadata
    (``tb_data/`` is kept: SCVerify's testbench reads it).
    """
    project_dir = Path(project_dir)
    return [
        p
        for p in sorted(project_dir.rglob("*"))
        if p.is_file()
        and p.suffix not in (".so", ".o")
        and p.name != METADATA_FILE
        and "__pycache__" not in p.relative_to(project_dir).parts
    ]


# --------------------------------------------------------------------------- checks


def _catapult_function_classes() -> tuple[set[str], set[str]]:
    """Layer classes with a C++ function template in (Vitis, Catapult) hls4ml backends."""
    from hls4ml.backends import get_backend
    from hls4ml.backends.template import FunctionCallTemplate
    from hls4ml.model.optimizer import get_optimizer

    def classes(backend: str) -> set[str]:
        out: set[str] = set()
        for opt_name in get_backend(backend)._get_layer_templates():
            opt = get_optimizer(opt_name)
            if isinstance(opt, FunctionCallTemplate):
                lcs = opt.layer_class
                for lc in lcs if isinstance(lcs, (list, tuple)) else [lcs]:
                    out.add(lc.__name__)
        return out

    return classes("Vitis"), classes("Catapult")


def _check_catapult_layers(hls_model: Any) -> None:
    """Refuse layers the Catapult project would compute wrongly or not at all, naming each.

    * an op with a Vitis function template but none in the Catapult backend (no C++
      call would be written: the layer would vanish from the design);
    * Softmax (edgeml's exact Softmax tables are set for the Vitis templates only);
    * a 1-bit ``ac_fixed`` result / weight type, which hls4ml writes as 2 bits.
    """
    from hls4ml.model.types import FixedPrecisionType

    vitis, catapult = _catapult_function_classes()
    bad: list[str] = []
    for layer in hls_model.get_layers():
        cls = layer.class_name
        op = layer.attributes.get("class_name", cls)
        if cls == "Softmax":
            bad.append(
                f"{layer.name} (op {op}): edgeml configures exact Softmax tables for the "
                "Vitis templates only"
            )
            continue
        if cls in vitis and cls not in catapult:
            bad.append(
                f"{layer.name} (op {op}): hls4ml 1.3's Catapult backend has no template for {cls}"
            )
            continue
        if cls != "Input" and not layer.get_attr("function_cpp", None):
            var = layer.get_output_variable()
            if type(var).__name__.find("Inplace") < 0:
                bad.append(f"{layer.name} (op {op}): the Catapult backend wrote no C++ call for it")
                continue
        for tname, t in layer.types.items():
            prec = t.precision
            if isinstance(prec, FixedPrecisionType) and prec.width == 1:
                bad.append(
                    f"{layer.name} (op {op}): its {tname} {prec} is 1 bit wide, which hls4ml "
                    "writes as a 2-bit ac_fixed (another grid)"
                )
    if bad:
        raise UnsupportedOpError(
            "hls4ml's Catapult backend cannot build this graph exactly: "
            + "; ".join(bad)
            + ". The Vitis project (edgeml convert) and the RTL still cover it."
        )


# --------------------------------------------------------------------------- conversion


def write_catapult_project(
    onnx_path: Path,
    project_dir: Path,
    *,
    name: str,
    input_type: FixedType,
    output_type: FixedType,
    layer_types: dict[str, FixedType] | None = None,
    clock_period: float = 5.0,
    reuse_factor: int = 1,
    tech: str = "asic",
    asic_libs: str = DEFAULT_ASIC_LIBS,
    part: str = DEFAULT_PART,
    default_precision: str = "fixed<16,6>",
    trace: bool = True,
) -> CatapultDesign:
    """Write hls4ml's Catapult project (io_parallel, Latency) for a cleaned QONNX model; compile C-sim.

    Args:
        onnx_path: cleaned QONNX file (the run's ``model.qonnx.onnx``).
        project_dir: where the project is written; must be missing, empty or an
            earlier hls4ml project (which is replaced).
        name: top-function name (a C identifier).
        input_type, output_type: types of the input and output codes, as for
            :func:`edgeml.hls.convert_hls` (the golden model's ``input_type`` /
            ``output_type``).
        layer_types: force cleaned-QONNX nodes' result types, as in ``convert_hls``
            (written as ``ac_fixed<W,I,signed>``: truncate, wrap).
        clock_period: ns, written into ``build_prj.tcl``.
        reuse_factor: hls4ml ReuseFactor on every layer (1: fully parallel).
        tech: ``"asic"`` (``setup_asic_libs {asic_libs}``) or ``"fpga"`` (``setup_xilinx_part {part}``).
        asic_libs: Catapult library name(s) for ``tech="asic"``.
        part: FPGA part for ``tech="fpga"``.
        default_precision: hls4ml's fallback type (a layer left with it is logged).
        trace: compile per-layer output recording into C-sim (``#ifndef __SYNTHESIS__``).

    Raises:
        ConfigError: bad name, tech, types, reuse_factor or project_dir.
        CorruptFileError: the ONNX file is missing or unreadable.
        UnsupportedOpError: a node hls4ml cannot convert, or converts inexactly for
            Catapult (named with its op).
        DependencyError: g++ is missing.
        EdgemlError: g++ failed on the written project.
    """
    from hls4ml.backends.fpga.fpga_types import ACTypeConverter

    from edgeml.hls import (
        audit_types,
        check_forced_types,
        check_input_type,
        check_supported_ops,
        conversion_error,
        graph_io,
        layer_config,
        set_output_type,
    )

    onnx_path, project_dir = Path(onnx_path), Path(project_dir)
    if not NAME_RE.match(name):
        raise ConfigError(
            f"name {name!r} must be a C identifier ([A-Za-z_][A-Za-z0-9_]*): it names the top function."
        )
    if tech not in TECHS:
        raise ConfigError(f"tech must be one of {', '.join(TECHS)}; got {tech!r}.")
    if tech == "asic" and not asic_libs.strip():
        raise ConfigError(
            "asic_libs must name a Catapult library (e.g. 'nangate-45nm') for tech='asic'."
        )
    for label, t in (("input_type", input_type), ("output_type", output_type)):
        if t.width > MAX_EXACT_DOUBLE_BITS:
            raise ConfigError(
                f"{label} {t.hls()} is wider than {MAX_EXACT_DOUBLE_BITS} bits; C-sim values pass "
                "through double and would round. Use a narrower type."
            )
    if reuse_factor < 1:
        raise ConfigError(f"reuse_factor must be >= 1; got {reuse_factor}.")
    if not clock_period > 0:
        raise ConfigError(f"clock_period must be > 0 ns; got {clock_period}.")
    if not onnx_path.is_file():
        raise CorruptFileError(
            f"QONNX file {onnx_path} does not exist; run the export stage first."
        )
    with quiet_hls4ml("import"):
        import hls4ml
        from qonnx.core.modelwrapper import ModelWrapper

    try:
        model = ModelWrapper(str(onnx_path))
    except Exception as exc:
        raise CorruptFileError(f"cannot read QONNX model {onnx_path}: {exc}") from exc
    in_name, in_shape, _out_name, out_shape = graph_io(model)
    check_supported_ops(model)
    hazards = qonnx_route_hazards(model.model)
    if hazards:
        raise UnsupportedOpError(
            "hls4ml's QONNX front end would convert this graph wrongly without an error, and the "
            "golden-IR route writes Vitis projects only: " + "; ".join(hazards)
        )
    require_gxx()
    prepare_project_dir(project_dir)

    cfg = layer_config(
        model,
        onnx_path,
        "Catapult",
        in_name,
        input_type,
        layer_types,
        default_precision,
        reuse_factor,
    )
    cfg["Model"]["Strategy"] = "Latency"

    try:
        with quiet_hls4ml("convert_from_onnx_model (Catapult)"):
            hls_model = hls4ml.converters.convert_from_onnx_model(
                model,
                output_dir=str(project_dir),
                project_name=name,
                backend="Catapult",
                io_type="io_parallel",
                clock_period=clock_period,
                hls_config=cfg,
                tech=tech,
                asiclibs=asic_libs if tech == "asic" else None,
                part=part,
            )
    except Exception as exc:
        raise conversion_error(exc, onnx_path) from exc

    check_input_type(hls_model, input_type)
    check_forced_types(hls_model, layer_types or {})
    _check_catapult_layers(hls_model)
    audit_types(hls_model, default_precision)
    output_layer = set_output_type(hls_model, output_type, ACTypeConverter())

    hls_in = hls_model.get_input_variables()
    if len(hls_in) != 1 or hls_in[0].size() != int(np.prod(in_shape[1:])):
        raise UnsupportedOpError(
            f"hls4ml's input {[v.shape for v in hls_in]} does not match the QONNX input {in_shape}."
        )
    hls_out = hls_model.get_output_variables()
    if len(hls_out) != 1 or hls_out[0].size() != int(np.prod(out_shape[1:])):
        raise UnsupportedOpError(
            f"hls4ml's output {[v.shape for v in hls_out]} does not match the QONNX output {out_shape}."
        )

    # ---- compile C-sim (g++ against the shipped ac_types), record, open
    traced: list[TracedLayer] = []
    if trace:
        hls_model.config.trace_output = True
        for layer in hls_model.get_layers():
            layer.set_attr("trace", True)
    t0 = time.perf_counter()
    try:
        with quiet_hls4ml("compile (Catapult)"), shipped_ac_types():
            hls_model.compile()
    except Exception as exc:
        raise EdgemlError(
            f"g++ failed to compile the Catapult C-sim of {onnx_path.name} in {project_dir}: {exc}. "
            f"Run {project_dir}/build_lib.sh there to see the compiler output."
        ) from exc
    compile_seconds = time.perf_counter() - t0
    if trace:
        for layer in hls_model.get_layers():
            if layer.get_attr("function_cpp", None) and layer.get_attr("trace", False):
                var = layer.get_output_variable()
                traced.append(
                    TracedLayer(
                        layer.name,
                        tuple(int(d) for d in var.shape),
                        fixed_from_hls4ml(var.type.precision),
                    )
                )
    lib = project_dir / "firmware" / f"{name}-{hls_model.config.get_config_value('Stamp')}.so"
    missing = [
        p
        for p in ("build_prj.tcl", "build_lib.sh", f"firmware/{name}.cpp", "firmware/weights")
        if not (project_dir / p).exists()
    ]
    if missing or not lib.is_file():
        raise EdgemlError(
            f"hls4ml wrote an incomplete Catapult project in {project_dir}: missing {missing or [lib.name]}."
        )
    design = CatapultDesign(
        project_dir=project_dir,
        name=name,
        input_type=input_type,
        output_type=output_type,
        input_shape=tuple(in_shape[1:]),
        output_shape=tuple(out_shape[1:]),
        lib_path=lib,
        traced=traced,
        output_layer=output_layer,
        compile_seconds=compile_seconds,
        tech=tech,
        asic_libs=asic_libs if tech == "asic" else "",
    )
    record = {
        "backend": "Catapult",
        "name": name,
        "lib": str(lib.relative_to(project_dir)),
        "input_type": fixed_to_json(input_type),
        "output_type": fixed_to_json(output_type),
        "input_shape": list(design.input_shape),
        "output_shape": list(design.output_shape),
        "output_layer": output_layer,
        "traced": [
            {
                "name": t.name,
                "shape": list(t.shape),
                "type": fixed_to_json(t.type) if t.type else None,
            }
            for t in traced
        ],
        "layers": {
            layer.name: {
                "class": layer.class_name,
                **{k: _type_text(v.precision) for k, v in layer.types.items()},
            }
            for layer in hls_model.get_layers()
        },
        "route": "qonnx",
        "onnx": str(onnx_path),
        "onnx_sha256": sha256(onnx_path),
        "tech": tech,
        "asic_libs": asic_libs if tech == "asic" else None,
        "part": part if tech == "fpga" else None,
        "clock_period": clock_period,
        "reuse_factor": reuse_factor,
        "strategy": "Latency",
        "io_type": "io_parallel",
        "layer_types": {k: fixed_to_json(v) for k, v in (layer_types or {}).items()},
        "compile_seconds": compile_seconds,
        "compiled_in": str(project_dir.resolve()),
        "sources_sha256": sources_sha256(project_dir),
        "hls4ml_version": hls4ml.__version__,
        "python": sys.version.split()[0],
    }
    (project_dir / METADATA_FILE).write_text(json.dumps(record, indent=2))
    logger.info(
        "hls4ml Catapult project of %s written to %s; C-sim compiled in %.1f s",
        onnx_path.name,
        project_dir,
        compile_seconds,
    )
    design._open()
    return design


def _type_text(precision: Any) -> str:
    """The C++ type hls4ml writes for a precision (``ac_fixed<...>``), or its str()."""
    try:
        return str(precision.definition_cpp())
    except Exception:
        return str(precision)


# --------------------------------------------------------------------------- run integration


def catapult_project_dir(ctx: Any) -> Path:
    """Where a run's Catapult project goes: beside its Vitis project, ``<vitis dir>_catapult``."""
    vitis = Path(ctx.hls_dir)
    return vitis.with_name(vitis.name + "_catapult")


def catapult_for_run(
    run_dir: str | Path | Any,
    project_dir: Path | None = None,
    *,
    tech: str = "asic",
    asic_libs: str = DEFAULT_ASIC_LIBS,
    n_random: int | None = None,
    tb_vectors: int = 1000,
    record: bool = False,
) -> tuple[CatapultDesign, dict[str, Any]]:
    """Write and check a run's Catapult project: the integration for ``edgeml implement --asic``.

    ``run_dir`` is a run folder (or a :class:`edgeml.flow.Context`). The types are
    the golden model's (as the convert stage gives the Vitis project), the name is
    the design identifier, clock period and reuse factor come from the run's
    ``hls`` config. C-sim is compared with the golden model on the run's
    verification vectors (:func:`edgeml.flow.verify_inputs`) as the verify level
    :data:`VERIFY_LEVEL`. The first ``tb_vectors`` of them and their C-sim outputs
    go to ``tb_data/`` for Catapult's own C simulation / SCVerify
    (:meth:`CatapultDesign.write_testbench`), and the shipped testbench is built
    with g++ and run on them (:meth:`CatapultDesign.run_testbench`). With ``record=True`` the summary is written to
    ``<run>/catapult.json``.

    Returns the design and a summary: ``project_dir``, ``files`` (relative),
    ``compile_seconds``, ``convert_seconds``, ``weight_headers`` (the ``.h`` arrays
    Catapult synthesises against the ``.txt`` C-sim loads, element for element) and ``level`` (a
    :class:`edgeml.verify.LevelResult` as a dict: vectors, mismatching_vectors, status, ...).
    """
    from edgeml.config import design_identifier
    from edgeml.flow import Context, run_context, verify_inputs, write_json

    ctx = run_dir if isinstance(run_dir, Context) else run_context(run_dir, n_random)
    g = ctx.golden()
    onnx_path = ctx.run.require("model.qonnx.onnx")
    project_dir = Path(project_dir) if project_dir is not None else catapult_project_dir(ctx)
    h = ctx.cfg.hls
    t0 = time.perf_counter()
    design = write_catapult_project(
        onnx_path,
        project_dir,
        name=design_identifier(ctx.name),
        input_type=g.input_type,
        output_type=g.output_type,
        clock_period=h.clock_period,
        reuse_factor=h.reuse_factor,
        tech=tech,
        asic_libs=asic_libs,
        part=h.part,
    )
    convert_seconds = time.perf_counter() - t0
    x, counts = verify_inputs(ctx, n_random)
    from edgeml.flow import hls_trace_codes  # hls4ml layer names -> golden tensors

    level = catapult_level(g, design, x, lambda xc: hls_trace_codes(ctx, design, xc))
    level.extra["inputs"] = counts
    from edgeml.hls import check_weight_headers

    testbench = None
    if tb_vectors > 0:
        design.write_testbench(x[:tb_vectors])
        testbench = design.run_testbench()
    compared, bad = check_weight_headers(project_dir, design.name)
    files = [str(p.relative_to(project_dir)) for p in design.shipped_files()]
    info = {
        # relative to the run folder (as hls.json records the Vitis project), and absolute
        "project_dir": os.path.relpath(project_dir.resolve(), ctx.run.path.resolve()),
        "project_dir_abs": str(project_dir.resolve()),
        "backend": "Catapult",
        "tech": design.tech,
        "asic_libs": design.asic_libs or None,
        "name": design.name,
        "onnx_sha256": sha256(onnx_path),
        "convert_seconds": round(convert_seconds, 2),
        "compile_seconds": round(design.compile_seconds, 2),
        "files": files,
        # the shipped <name>_test.cpp, built with g++, run on tb_data/ (None: not written)
        "testbench": testbench,
        "level": level.to_dict(),
        # the firmware/weights/*.h arrays Catapult synthesises == the .txt files C-sim loads
        "weight_headers": {
            "elements": compared,
            "mismatches": len(bad),
            "first": [b.describe() for b in bad[:5]],
        },
    }
    if record:
        write_json(ctx.run.file(RUN_RECORD), info)
    if not level.passed:
        logger.error(
            "%s differs from the golden model on %d/%d vectors (first divergent layer %s)",
            VERIFY_LEVEL,
            level.mismatching_vectors,
            level.vectors,
            level.first_divergent_layer,
        )
    return design, info


def verify_level_for_run(ctx: Any, x_codes: np.ndarray, ref: np.ndarray | None = None) -> Any:
    """The :data:`VERIFY_LEVEL` row of ``edgeml verify`` for a run, or None without a Catapult project.

    Reads ``<run>/catapult.json`` (written by :func:`catapult_for_run` with
    ``record=True``), reopens the project (C-sim recompiled if it moved or its
    sources changed, noted on the row) and compares it with the golden model on
    ``x_codes`` (``ref``: the golden outputs, if already computed).
    """
    from edgeml import verify as V
    from edgeml.flow import hls_trace_codes, read_json

    path = ctx.run.file(RUN_RECORD)
    if not path.is_file():
        return None
    info = read_json(path)
    pdir = (ctx.run.path / info["project_dir"]).resolve()
    design = CatapultDesign.load(pdir)
    g = ctx.golden()
    ref = g.predict(x_codes) if ref is None else ref
    res = V.run_level(
        VERIFY_LEVEL,
        g,
        x_codes,
        ref,
        design.predict_int,
        lambda xc: hls_trace_codes(ctx, design, xc),
    )
    if design.rebuilt_because:
        res.note = f"C-sim recompiled: {design.rebuilt_because}"
    return res


def catapult_level(
    g: Any,
    design: CatapultDesign,
    x_codes: np.ndarray,
    trace: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
) -> Any:
    """Compare Catapult C-sim with the golden model on ``x_codes``: an
    :class:`edgeml.verify.LevelResult` named :data:`VERIFY_LEVEL`.

    ``trace`` (C-sim per-layer codes keyed by golden tensor name, e.g.
    ``lambda xc: edgeml.flow.hls_trace_codes(ctx, design, xc)``) names the first
    divergent golden op on a mismatch.
    """
    from edgeml import verify as V

    ref = g.predict(x_codes)
    return V.run_level(VERIFY_LEVEL, g, x_codes, ref, design.predict_int, trace)


__all__ = [
    "DEFAULT_ASIC_LIBS",
    "METADATA_FILE",
    "VERIFY_LEVEL",
    "CatapultDesign",
    "catapult_for_run",
    "catapult_level",
    "catapult_project_dir",
    "catapult_shipped_files",
    "verify_level_for_run",
    "write_catapult_project",
]
