"""hls4ml C-sim against Brevitas: bit-exact integer codes, half-even ties, fault sensitivity.

The models come from ``brevitas_models`` (Brevitas, power-of-two scales, Int16Bias),
re-initialised and calibrated here, exported with ``export_qonnx`` and cleaned with
``edgeml.export.clean_qonnx``. Every compile is cached for the session (about 5-15 s
each with g++ on 2 cores).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import brevitas_models as bm
import numpy as np
import pytest

from edgeml.errors import (
    ConfigError,
    CorruptFileError,
    DependencyError,
    EdgemlError,
    InputRangeError,
    UnsupportedOpError,
)
from edgeml.fixed import FixedType, type_for_range
from edgeml.hls import HlsDesign, convert_hls

logger = logging.getLogger(__name__)

N_RANDOM = 10_000  # >= 2,000 required; 10k also measures C-sim throughput
QONNX_DOMAIN = "qonnx.custom_op.general"


# --------------------------------------------------------------------------- model building


def _scale_frac(scale: float) -> int:
    """frac of a power-of-two scale 2**-frac (the flow's precondition for exactness)."""
    frac = -math.log2(float(scale))
    if frac != round(frac):
        raise AssertionError(f"scale {scale} is not a power of two")
    return round(frac)


def _io_types(onnx_path: Path) -> tuple[FixedType, FixedType]:
    """Input type from the first activation Quant; output frac from the last Add's bias Quant."""
    from qonnx.core.modelwrapper import ModelWrapper

    model = ModelWrapper(str(onnx_path))
    inits = {i.name for i in model.graph.initializer}
    first = next(n for n in model.graph.node if n.op_type == "Quant" and n.input[0] not in inits)
    bits = int(model.get_initializer(first.input[3]))
    signed = next(a.i for a in first.attribute if a.name == "signed")
    in_type = FixedType(bool(signed), bits, _scale_frac(model.get_initializer(first.input[1])))
    last = model.find_producer(model.graph.output[0].name)
    assert last.op_type == "Add"
    bias_q = model.find_producer(last.input[1])
    out_frac = _scale_frac(np.ravel(model.get_initializer(bias_q.input[1]))[0])
    # 32 bits: far above the worst case of these small nets (checked against hls4ml's accum).
    return in_type, FixedType(True, 32, out_frac)


@dataclass
class Built:
    """A Brevitas model, its cleaned QONNX file and its I/O types."""

    torch_model: object
    onnx: Path
    input_type: FixedType
    output_type: FixedType
    input_shape: tuple[int, ...]

    def reference_codes(self, x_codes: np.ndarray) -> np.ndarray:
        """Brevitas float outputs * 2**out_frac; must be integers (float32 is exact here)."""
        import torch

        x = torch.tensor(
            np.ldexp(x_codes.astype(np.float64), -self.input_type.frac), dtype=torch.float32
        )
        with torch.no_grad():
            y = self.torch_model(x)
        y = np.asarray(getattr(y, "value", y), dtype=np.float64)
        return self.output_type.from_float_exact(y)


def _build(model, input_shape: tuple[int, ...], folder: Path, stem: str) -> Built:
    import torch

    torch.manual_seed(0)
    bm.init_uniform(model, 0.3)
    bm.calibrate(model, input_shape, batches=20, batch=128)  # inputs in [0, 1) like pixel/16
    clean = bm.export_clean(model, input_shape, folder, stem)
    in_type, out_type = _io_types(clean)
    return Built(model, clean, in_type, out_type, input_shape)


def _codes(built: Built, n: int = N_RANDOM, seed: int = 1) -> np.ndarray:
    """Random input codes over the whole input type, plus the all-min and all-max extremes."""
    rng = np.random.default_rng(seed)
    t = built.input_type
    x = rng.integers(t.qmin, t.qmax + 1, size=(n, *built.input_shape), dtype=np.int64)
    x[0] = t.qmin
    x[1] = t.qmax
    return x


def _needs_gxx() -> None:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed (hls4ml C-sim needs it)")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hls")


@pytest.fixture(scope="session")
def mlp(work) -> Built:
    return _build(bm.mlp(flatten=False), (64,), work, "mlp")


@pytest.fixture(scope="session")
def cnn(work) -> Built:
    return _build(bm.cnn(), (1, 8, 8), work, "cnn")


def _compile(built: Built, project: Path, **kw) -> HlsDesign:
    _needs_gxx()
    t0 = time.perf_counter()
    design = convert_hls(
        built.onnx,
        project,
        name=project.name,
        input_type=built.input_type,
        output_type=built.output_type,
        **kw,
    )
    logger.info("%s: convert + compile %.1f s", project.name, time.perf_counter() - t0)
    return design


@pytest.fixture(scope="session")
def mlp_design(mlp, work) -> HlsDesign:
    return _compile(mlp, work / "mlp_prj")


@pytest.fixture(scope="session")
def cnn_design(cnn, work) -> HlsDesign:
    return _compile(cnn, work / "cnn_prj")


def _tie_graph(path: Path) -> Path:
    """global_in -> Quant(8b signed, 2**-4) -> Quant(8b signed, 2**-1, ROUND) -> out.

    The second Quant drops 3 fractional bits, so every input code with
    code % 8 == 4 is an exact tie; half-even and half-up disagree on half of them.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    def const(name: str, value: float):
        return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)

    def quant(src: str, scale: str, dst: str):
        return helper.make_node(
            "Quant", [src, scale, "zero", "bits"], [dst], domain=QONNX_DOMAIN,
            signed=1, narrow=0, rounding_mode="ROUND",
        )  # fmt: skip

    graph = helper.make_graph(
        [quant("global_in", "s_in", "q_in"), quant("q_in", "s_out", "global_out")],
        "ties",
        [helper.make_tensor_value_info("global_in", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("global_out", TensorProto.FLOAT, [1, 16])],
        initializer=[
            const("s_in", 2**-4),
            const("s_out", 0.5),
            const("zero", 0.0),
            const("bits", 8.0),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QONNX_DOMAIN, 1)]
    )
    onnx.checker.check_model(model)
    cleanup_model(ModelWrapper(model)).save(str(path))
    return path


@pytest.fixture(scope="session")
def tie_design(work) -> HlsDesign:
    _needs_gxx()
    onnx_path = _tie_graph(work / "ties.onnx")
    return convert_hls(
        onnx_path,
        work / "ties_prj",
        name="ties",
        input_type=FixedType(True, 8, 4),
        output_type=FixedType(True, 8, 1),
    )


# --------------------------------------------------------------------------- exactness


def _check_exact(built: Built, design: HlsDesign, record_property) -> None:
    x = _codes(built)
    ref = built.reference_codes(x)
    t0 = time.perf_counter()
    got = design.predict_int(x)
    dt = time.perf_counter() - t0
    mismatches = int(np.count_nonzero(np.any(got != ref, axis=1)))
    rate = len(x) / dt
    logger.info(
        "%s: %d/%d vectors mismatch; C-sim %.0f vectors/s; compile %.1f s",
        design.name, mismatches, len(x), rate, design.compile_seconds,
    )  # fmt: skip
    record_property("mismatches", mismatches)
    record_property("csim_vectors_per_s", round(rate))
    record_property("compile_s", round(design.compile_seconds, 1))
    assert got.dtype == np.int64 and got.shape == ref.shape
    assert mismatches == 0
    assert len(np.unique(ref, axis=0)) > len(x) // 2  # outputs really depend on the input


@pytest.mark.hls
def test_mlp_csim_bit_exact(mlp, mlp_design, record_property):
    _check_exact(mlp, mlp_design, record_property)


@pytest.mark.hls
def test_cnn_csim_bit_exact(cnn, cnn_design, record_property):
    assert cnn_design.input_shape == (1, 8, 8)  # NCHW, as the QONNX graph input
    _check_exact(cnn, cnn_design, record_property)


@pytest.mark.hls
def test_reload_compiled_project(mlp, mlp_design, work):
    x = _codes(mlp, 200, seed=3)
    again = HlsDesign.load(mlp_design.project_dir)
    assert np.array_equal(again.predict_int(x), mlp_design.predict_int(x))
    assert again.layer_types == mlp_design.layer_types
    # A moved project is recompiled on load: the .so holds the absolute weights path,
    # and hls4ml's C-sim exit(1)s the process when it cannot read a weights file.
    moved = shutil.copytree(mlp_design.project_dir, work / "mlp_moved")
    moved_design = HlsDesign.load(moved)
    assert moved_design.project_dir == moved
    assert np.array_equal(moved_design.predict_int(x), mlp.reference_codes(x))
    built = moved_design.lib_path.stat().st_mtime_ns
    HlsDesign.load(moved)  # recorded as compiled there now: no second rebuild
    assert moved_design.lib_path.stat().st_mtime_ns == built


@pytest.mark.hls
@pytest.mark.parametrize("which", ["mlp_design", "cnn_design"])
def test_project_is_complete_for_vitis(which, request):
    design: HlsDesign = request.getfixturevalue(which)
    root = design.project_dir
    for rel in (
        "build_prj.tcl",
        "project.tcl",
        "build_opt.tcl",
        f"firmware/{design.name}.cpp",
        f"firmware/{design.name}.h",
        "firmware/defines.h",
        "firmware/parameters.h",
        "firmware/nnet_utils",
        "firmware/ap_types",
        "firmware/weights",
        f"{design.name}_test.cpp",
        "hls4ml_config.yml",
    ):
        assert (root / rel).exists(), rel
    project_tcl = (root / "project.tcl").read_text()
    assert "xcvu13p-flga2577-2-e" in project_tcl
    assert 'backend "vitis"' in project_tcl
    assert (
        f"typedef {design.output_type.hls()} result_t;" in (root / "firmware/defines.h").read_text()
    )
    tb = design.write_testbench(np.zeros((3, *design.input_shape), dtype=np.int64))
    assert len((tb / "tb_output_predictions.dat").read_text().splitlines()) == 3


# --------------------------------------------------------------------------- rounding


@pytest.mark.hls
def test_quant_round_is_half_even_in_csim(tie_design):
    codes = np.arange(-128, 128, dtype=np.int64).reshape(16, 16)  # every input code
    got = tie_design.predict_int(codes)
    half_even = np.round(codes / 8).astype(np.int64)  # QONNX ROUND (numpy/torch round)
    half_up = np.floor(codes / 8 + 0.5).astype(np.int64)  # AP_RND
    ties = codes % 8 == 4
    assert ties.sum() == 32
    assert np.array_equal(got, half_even)
    assert np.count_nonzero(got != half_up) == 16  # the test would catch AP_RND
    kinds = {t.name: t.type for t in tie_design.traced}
    assert kinds[tie_design.output_layer] == FixedType(True, 8, 1)
    defines = (tie_design.project_dir / "firmware/defines.h").read_text()
    assert "AP_RND_CONV" in defines and "AP_RND," not in defines


@pytest.mark.hls
def test_mlp_relu_quant_ties_are_half_even_layer_by_layer(mlp, mlp_design):
    """Trace Dense -> ReLU+Quant inside C-sim: ties occur and round to even."""
    x = _codes(mlp, 3000, seed=5)
    trace = mlp_design.trace_int(x, codes=True)
    types = mlp_design.layer_types
    assert list(trace) == [t.name for t in mlp_design.traced]
    total_ties = 0
    for dense, relu in (("Dense_MatMul_0", "Relu_0"), ("Dense_MatMul_1", "Relu_1")):
        acc, act = trace[dense], trace[relu]
        shift = types[dense].frac - types[relu].frac
        assert shift > 0
        real = np.maximum(acc, 0) / 2.0**shift  # exact in float64
        ties = real - np.floor(real) == 0.5
        total_ties += int(ties.sum())
        expect = np.clip(np.round(real), 0, types[relu].qmax).astype(np.int64)
        assert np.array_equal(act, expect)
    logger.info("MLP: %d exact ties in ReLU quantizers over %d vectors", total_ties, len(x))
    assert total_ties > 0
    out = trace[mlp_design.output_layer]
    assert np.array_equal(out, mlp_design.predict_int(x))


# --------------------------------------------------------------------------- sensitivity


@pytest.mark.hls
def test_perturbed_weight_is_caught(mlp, mlp_design, work):
    """+-1 code on one last-layer weight: C-sim must move by exactly that weight's input."""
    import torch
    from qonnx.core.modelwrapper import ModelWrapper

    model = ModelWrapper(str(mlp.onnx))
    last = model.find_producer(model.graph.output[0].name)
    matmul = model.find_producer(last.input[0])
    wq = model.find_producer(matmul.input[1])
    w = model.get_initializer(wq.input[0]).copy()
    scale = float(model.get_initializer(wq.input[1]))
    x = _codes(mlp, 2000, seed=7)
    xr = torch.tensor(np.ldexp(x.astype(np.float64), -mlp.input_type.frac), dtype=torch.float32)
    with torch.no_grad():
        hidden = mlp.torch_model[:-1](xr)
    h_codes = np.rint((hidden.value / hidden.scale).numpy()).astype(np.int64)
    k, j = int(np.argmax((h_codes > 0).sum(axis=0))), 3
    code = int(np.rint(w[k, j] / scale))
    step = 1 if code < 31 else -1  # 6-bit narrow range: [-31, 31]
    w[k, j] = (code + step) * scale
    model.set_initializer(wq.input[0], w)
    bad_onnx = work / "mlp_perturbed.onnx"
    model.save(str(bad_onnx))
    bad = convert_hls(
        bad_onnx,
        work / "mlp_bad_prj",
        name="mlp_bad",
        input_type=mlp.input_type,
        output_type=mlp.output_type,
        trace=False,
    )
    ref = mlp.reference_codes(x)
    got = bad.predict_int(x)
    diff = got - ref
    mismatches = int(np.count_nonzero(np.any(diff != 0, axis=1)))
    logger.info(
        "perturbed weight [%d, %d] %+d code: %d/%d vectors mismatch", k, j, step, mismatches, len(x)
    )
    assert mismatches > 0
    assert np.all(np.delete(diff, j, axis=1) == 0)
    # out_frac = w_frac + act_frac, so one weight code moves output j by the activation code.
    assert np.array_equal(diff[:, j], step * h_codes[:, k])
    assert np.array_equal(mlp_design.predict_int(x), ref)  # the unperturbed design still agrees
    with pytest.raises(EdgemlError, match="trace=False"):
        bad.trace_int(x[:1])


# --------------------------------------------------------------------------- layer_types


def _exact_matmul_type(onnx_path: Path, in_type: FixedType) -> FixedType:
    """The golden model's exact type of the first MatMul's output (the weights actually present)."""
    from qonnx.core.modelwrapper import ModelWrapper

    model = ModelWrapper(str(onnx_path))
    mm = next(n for n in model.graph.node if n.op_type == "MatMul")
    wq = model.find_producer(mm.input[1])
    w_frac = _scale_frac(model.get_initializer(wq.input[1]))
    w = np.rint(np.ldexp(model.get_initializer(wq.input[0]).astype(np.float64), w_frac))
    lo = (np.minimum(w, 0).sum(axis=0) * in_type.qmax).min()
    hi = (np.maximum(w, 0).sum(axis=0) * in_type.qmax).max()
    return type_for_range(int(lo), int(hi), w_frac + in_type.frac)


@pytest.mark.hls
def test_layer_types_force_a_tighter_exact_type(mlp, work, record_property):
    """Forcing MatMul_0 (the QONNX MatMul node's output) to the golden model's tight type.

    hls4ml then keeps the bias Add out of the Dense (it fuses a bias only into a Dense
    whose result type it infers itself): the Add becomes an ApplyAlpha layer with an
    inferred exact type, so the design stays exact at the cost of a separate adder.
    """
    tight = _exact_matmul_type(mlp.onnx, mlp.input_type)
    design = _compile(mlp, work / "mlp_forced", layer_types={"MatMul_0": tight})
    types = design.layer_types
    record_property("forced_type", tight.hls())
    record_property("layers", ", ".join(types))
    assert types["Dense_MatMul_0"] == tight
    assert "bn_Add_0" in types  # the unfused bias add
    x = _codes(mlp, 2000, seed=11)
    assert np.array_equal(design.predict_int(x), mlp.reference_codes(x))


@pytest.mark.hls
def test_layer_types_on_a_fused_node_is_refused(mlp, work):
    _needs_gxx()
    with pytest.raises(ConfigError, match="did not reach any hls4ml layer"):
        convert_hls(
            mlp.onnx, work / "mlp_fused", name="m", input_type=mlp.input_type,
            output_type=mlp.output_type, layer_types={"Quant_7": FixedType(False, 8, 8)},
        )  # fmt: skip
    with pytest.raises(ConfigError, match="not a layer"):
        convert_hls(
            mlp.onnx, work / "mlp_fused", name="m", input_type=mlp.input_type,
            output_type=mlp.output_type, layer_types={"nope": FixedType(True, 24, 16)},
        )  # fmt: skip


@pytest.mark.hls
def test_output_type_that_drops_fraction_bits_is_refused(mlp, work):
    _needs_gxx()
    short = FixedType(True, 32, mlp.output_type.frac - 1)
    with pytest.raises(ConfigError, match="truncate"):
        convert_hls(
            mlp.onnx, work / "mlp_short", name="m", input_type=mlp.input_type, output_type=short
        )


@pytest.mark.hls
def test_quantizer_output_needs_its_own_type(work, tie_design):
    _needs_gxx()
    with pytest.raises(ConfigError, match="quantizer"):
        convert_hls(
            work / "ties.onnx", work / "ties_wrong", name="t",
            input_type=FixedType(True, 8, 4), output_type=FixedType(True, 16, 1),
        )  # fmt: skip


@pytest.mark.hls
def test_hls4ml_failure_names_the_layer(work):
    """DESIGN.md pitfall: per-channel float weight scales leave an orphan Constant that
    makes hls4ml's infer_precision raise IndexError; edgeml names the layer."""
    import torch
    from brevitas.quant import Int8WeightPerChannelFloat

    _needs_gxx()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        bm.quant_input(), bm.quant_linear(8, 4, last=True, weight_quant=Int8WeightPerChannelFloat)
    )
    model.eval()
    clean = bm.export_clean(model, (8,), work, "per_channel")
    with pytest.raises(UnsupportedOpError, match=r"at layer \w+: IndexError"):
        convert_hls(
            clean, work / "per_channel_prj", name="pc", input_type=FixedType(False, 8, 8),
            output_type=FixedType(True, 32, 16),
        )  # fmt: skip


# --------------------------------------------------------------------------- input checks


@pytest.mark.hls
def test_input_validation(mlp_design):
    ok = np.zeros((2, 64), dtype=np.int64)
    assert mlp_design.predict_int(ok[0]).shape == (1, 10)  # one vector without batch axis
    assert mlp_design.predict_int(ok[:0]).shape == (0, 10)
    with pytest.raises(InputRangeError, match=r"\[0, 256\]"):
        mlp_design.predict_int(ok + np.eye(2, 64, dtype=np.int64) * 256)
    with pytest.raises(InputRangeError, match="outside"):
        mlp_design.predict_int(ok - 1)
    with pytest.raises(InputRangeError, match="dtype"):
        mlp_design.predict_int(ok.astype(np.float64))
    with pytest.raises(EdgemlError, match="shape"):
        mlp_design.predict_int(np.zeros((2, 63), dtype=np.int64))


def test_bad_name_and_missing_file(tmp_path):
    t = FixedType(False, 8, 8)
    with pytest.raises(ConfigError, match="C identifier"):
        convert_hls(
            tmp_path / "x.onnx", tmp_path / "p", name="1bad-name", input_type=t, output_type=t
        )
    with pytest.raises(CorruptFileError, match="does not exist"):
        convert_hls(tmp_path / "x.onnx", tmp_path / "p", name="ok", input_type=t, output_type=t)
    with pytest.raises(CorruptFileError, match=r"edgeml_hls\.json"):
        HlsDesign.load(tmp_path)


def test_missing_gxx_is_a_dependency_error(tmp_path, monkeypatch):
    path = _tie_graph(tmp_path / "t.onnx")
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda cmd, *a, **k: None if cmd == "g++" else real_which(cmd, *a, **k)
    )
    with pytest.raises(DependencyError, match="install g\\+\\+"):
        convert_hls(
            path, tmp_path / "p", name="t", input_type=FixedType(True, 8, 4),
            output_type=FixedType(True, 8, 1),
        )  # fmt: skip


def test_unsupported_op_names_the_node(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sin", ["global_in"], ["global_out"], name="Sin_0")],
        "unsupported",
        [helper.make_tensor_value_info("global_in", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("global_out", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "u.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    t = FixedType(True, 8, 4)
    with pytest.raises(UnsupportedOpError, match=r"Sin_0 \(Sin\)"):
        convert_hls(path, tmp_path / "p", name="u", input_type=t, output_type=t)


def test_refuses_to_overwrite_unrelated_folder(tmp_path):
    _needs_gxx()
    path = _tie_graph(tmp_path / "t.onnx")
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        convert_hls(
            path,
            folder,
            name="t",
            input_type=FixedType(True, 8, 4),
            output_type=FixedType(True, 8, 1),
        )
    assert (folder / "notes.txt").read_text() == "keep me"
