"""hls4ml's Catapult project (ac_fixed C-sim) against the golden integer model.

One small MLP (``qonnx_builders.mlp_pot``, cleaned as ``edgeml flow --onnx`` does) is
converted once per module (g++ about 4 s); tests that edit the project work on copies.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import qonnx_builders as qb

from edgeml.errors import ConfigError, CorruptFileError, UnsupportedOpError
from edgeml.golden import GoldenModel
from edgeml.hls import check_weight_headers, fixed_to_json
from edgeml.hls_catapult import (
    METADATA_FILE,
    VERIFY_LEVEL,
    CatapultDesign,
    catapult_level,
    catapult_shipped_files,
    write_catapult_project,
)

pytestmark = pytest.mark.hls

N_VECTORS = 3000
JET_RUN = Path(__file__).resolve().parents[1] / "runs" / "jet"


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> tuple[Path, GoldenModel]:
    from edgeml.export import clean_qonnx

    tmp = tmp_path_factory.mktemp("catapult-mlp")
    raw = qb.save(qb.mlp_pot(np.random.default_rng(7)), tmp / "raw.onnx")
    clean = tmp / "mlp.clean.onnx"
    clean_qonnx(raw, clean)
    return clean, GoldenModel.from_onnx(clean)


@pytest.fixture(scope="module")
def project(mlp, tmp_path_factory) -> tuple[CatapultDesign, GoldenModel]:
    onnx_path, g = mlp
    pdir = tmp_path_factory.mktemp("catapult-prj") / "mlp_catapult"
    design = write_catapult_project(
        onnx_path,
        pdir,
        name="mlp",
        input_type=g.input_type,
        output_type=g.output_type,
        clock_period=4.0,
    )
    return design, g


def _vectors(g: GoldenModel, n: int = N_VECTORS, seed: int = 0) -> np.ndarray:
    t = g.input_type
    rng = np.random.default_rng(seed)
    x = rng.integers(t.qmin, t.qmax + 1, size=(n, *g.input_shape), dtype=np.int64)
    x[0], x[1] = t.qmin, t.qmax  # corner vectors: saturation of every quantizer downstream
    return x


def test_catapult_csim_equals_golden(project):
    design, g = project
    x = _vectors(g)
    got = design.predict_int(x)
    ref = g.predict(x)
    assert got.dtype.kind == "i" and got.shape == ref.shape == (N_VECTORS, 5)
    assert int((got != ref).any(axis=1).sum()) == 0
    assert len(np.unique(ref)) > 50  # the outputs are not constant: the check can see a difference
    level = catapult_level(g, design, x)
    assert (level.level, level.status, level.vectors, level.mismatching_vectors) == (
        VERIFY_LEVEL,
        "PASS",
        N_VECTORS,
        0,
    )

    pdir = design.project_dir
    defines = (pdir / "firmware" / "defines.h").read_text()
    assert "ac_fixed<" in defines and "ap_fixed" not in defines
    assert "AC_RND_CONV" in defines  # QONNX ROUND (half to even), not AC_RND
    assert f"typedef {_ac(g.output_type)} result_t;" in defines
    assert f"typedef {_ac(g.input_type)} input_t;" in defines
    tcl = (pdir / "build_prj.tcl").read_text()
    assert "setup_asic_libs {nangate-45nm}" in tcl and "set hls_clock_period 4.0" in tcl
    shipped = {str(p.relative_to(pdir)) for p in catapult_shipped_files(pdir)}
    assert {
        "build_prj.tcl",
        "build_lib.sh",
        "hls4ml_config.yml",
        "mlp_bridge.cpp",
        "mlp_test.cpp",
        "firmware/mlp.cpp",
        "firmware/mlp.h",
        "firmware/defines.h",
        "firmware/parameters.h",
    } <= shipped
    # two Dense layers: weights and biases, each as .h (synthesis) and .txt (C-sim)
    assert len([s for s in shipped if s.startswith("firmware/weights/")]) == 8
    assert "firmware/ac_types/include/ac_fixed.h" in shipped
    assert not any(s.endswith(".so") or s == METADATA_FILE for s in shipped)
    n, bad = check_weight_headers(pdir, "mlp")
    assert n == 16 * 12 + 12 + 12 * 5 + 5 and bad == []


def _ac(t) -> str:
    return f"ac_fixed<{t.width},{t.width - t.frac},{str(t.signed).lower()}>"


def test_testbench_points_scverify_at_tb_data(project, tmp_path):
    design, g = project
    copy = tmp_path / "prj"
    shutil.copytree(design.project_dir, copy)
    moved = CatapultDesign.load(copy)
    x = _vectors(g, 100, seed=3)
    tb = moved.write_testbench(x)
    rows = np.loadtxt(tb / "tb_output_predictions.dat")
    assert np.array_equal(np.rint(rows * 2.0**g.output_type.frac).astype(np.int64), g.predict(x))
    # the shipped testbench (g++ + the shipped mc_scverify.h) reproduces C-sim on tb_data ...
    pred = tb / "tb_output_predictions.dat"
    lines = pred.read_text().splitlines()
    vals = lines[37].split()
    vals[2] = repr(float(vals[2]) + 2.0**-g.output_type.frac)  # ... and sees a one-LSB edit
    lines[37] = " ".join(vals)
    pred.write_text("\n".join(lines) + "\n")
    res = moved.run_testbench()
    assert (res["vectors"], res["mismatching_vectors"]) == (100, 1)
    logged = np.loadtxt(tb / "csim_results.log")
    assert np.array_equal(np.rint(logged * 2.0**g.output_type.frac).astype(np.int64), g.predict(x))
    tcl = (copy / "build_prj.tcl").read_text()
    assert (
        'INVOKE_ARGS "$sfd/firmware/weights $sfd/tb_data/tb_input_features.dat '
        '$sfd/tb_data/tb_output_predictions.dat"' in tcl
    )


def test_edited_weights_make_csim_differ(project, tmp_path):
    """A copy reloads (rebuilt for its new path) exact; one edited weight makes it differ."""
    design, g = project
    x = _vectors(g, 2000, seed=1)
    ref = g.predict(x)
    clean, edited = tmp_path / "clean", tmp_path / "edited"
    shutil.copytree(design.project_dir, clean)
    shutil.copytree(design.project_dir, edited)

    same = CatapultDesign.load(clean)
    assert same.rebuilt_because == "project moved or library missing"
    assert np.array_equal(same.predict_int(x), ref)

    weights = edited / "firmware" / "weights"
    # the second Dense's weights (12 x 5): the output depends on every one of them
    wfile = max(weights.glob("w*.txt"), key=lambda p: int(p.stem[1:]))
    vals = wfile.read_text().split(",")
    assert len(vals) == 60
    old = float(vals[0])
    vals[0] = "0.5" if old != 0.5 else "-0.5"
    wfile.write_text(",".join(vals))
    broken = CatapultDesign.load(edited)
    level = catapult_level(g, broken, x)
    assert level.status == "FAIL"
    assert 0 < level.mismatching_vectors <= 2000
    # only output 0 reads that weight, and no other output moves
    got = broken.predict_int(x)
    assert np.array_equal(got[:, 1:], ref[:, 1:]) and (got[:, 0] != ref[:, 0]).sum() > 100

    # the weight headers (what Catapult synthesises) now disagree with the .txt C-sim loads
    _, bad = check_weight_headers(edited, "mlp")
    assert [(Path(b.file).name, b.index) for b in bad] == [(wfile.with_suffix(".h").name, 0)]


def test_metadata_reload(project):
    design, g = project
    meta = json.loads((design.project_dir / METADATA_FILE).read_text())
    assert meta["backend"] == "Catapult" and meta["tech"] == "asic"
    assert meta["asic_libs"] == "nangate-45nm" and meta["strategy"] == "Latency"
    assert meta["output_type"] == fixed_to_json(g.output_type)
    assert meta["input_type"] == fixed_to_json(g.input_type)
    again = CatapultDesign.load(design.project_dir)
    assert again.rebuilt_because == ""  # same place, same sources: the library is reused
    assert (again.input_type, again.output_type) == (g.input_type, g.output_type)
    assert again.input_shape == (16,) and again.output_shape == (5,)
    x = _vectors(g, 2000, seed=2)
    assert np.array_equal(again.predict_int(x), g.predict(x))
    tr = again.trace_int(x[:10], codes=True)
    assert list(tr)[-1] == again.output_layer
    assert np.array_equal(tr[again.output_layer], g.predict(x[:10]))


def test_load_refuses_other_folders(project, tmp_path):
    design, _ = project
    with pytest.raises(CorruptFileError, match=METADATA_FILE):
        CatapultDesign.load(tmp_path)
    copy = tmp_path / "vitis_like"
    shutil.copytree(design.project_dir, copy)
    meta = json.loads((copy / METADATA_FILE).read_text())
    meta["backend"] = "Vitis"
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(CorruptFileError, match="not 'Catapult'"):
        CatapultDesign.load(copy)


def test_bad_config_and_unsupported_ops(mlp, tmp_path):
    onnx_path, g = mlp
    kw = {"name": "mlp", "input_type": g.input_type, "output_type": g.output_type}
    with pytest.raises(ConfigError, match="tech must be one of asic, fpga"):
        write_catapult_project(onnx_path, tmp_path / "a", tech="gpu", **kw)
    with pytest.raises(ConfigError, match="C identifier"):
        write_catapult_project(onnx_path, tmp_path / "a", **{**kw, "name": "1x"})

    b = qb.GraphBuilder((8,), (4,))
    x = b.quant("inp", 2.0**-4, 8)
    w = b.qweight(np.random.default_rng(0).integers(-7, 8, (8, 4)) * 2.0**-3, 2.0**-3, 4)
    y = b.node("MatMul", [x, w])
    y = b.node("Softmax", [y], axis=-1)
    path = qb.save(b.build(y), tmp_path / "softmax.onnx")
    from edgeml.export import clean_qonnx

    clean_qonnx(path, tmp_path / "softmax.clean.onnx")
    with pytest.raises(UnsupportedOpError, match=r"Softmax_\d+ \(op Softmax\)"):
        write_catapult_project(tmp_path / "softmax.clean.onnx", tmp_path / "sm", **kw)


@pytest.mark.skipif(not (JET_RUN / "model.qonnx.onnx").is_file(), reason="runs/jet not built here")
def test_jet_run_catapult(tmp_path):
    """The lead's integration on the jet tagger (a copy of its run folder): 0 mismatches over
    the run's verification set, the shipped testbench reproduces C-sim, verify's row reads it."""
    from edgeml.flow import run_context, verify_inputs
    from edgeml.hls_catapult import RUN_RECORD, catapult_for_run, verify_level_for_run

    run = tmp_path / "run"
    run.mkdir()
    for f in ("config.json", "model.qonnx.onnx"):
        shutil.copy2(JET_RUN / f, run / f)
    design, info = catapult_for_run(run, tmp_path / "jet_catapult", record=True)
    lv = info["level"]
    assert lv["status"] == "PASS" and lv["vectors"] >= 20_000 and lv["mismatching_vectors"] == 0
    assert info["weight_headers"]["mismatches"] == 0 and info["weight_headers"]["elements"] == 4389
    assert "build_prj.tcl" in info["files"] and "firmware/jet.cpp" in info["files"]
    assert info["testbench"]["vectors"] == 1000 and info["testbench"]["mismatching_vectors"] == 0
    assert json.loads((run / RUN_RECORD).read_text())["project_dir"] == "../jet_catapult"
    assert design.tech == "asic" and info["compile_seconds"] == round(design.compile_seconds, 2)

    ctx = run_context(run)
    x, _ = verify_inputs(ctx)
    row = verify_level_for_run(ctx, x[:3000])
    assert (row.level, row.status, row.vectors, row.note) == (VERIFY_LEVEL, "PASS", 3000, "")


def test_rounding_mode_matters(project, tmp_path):
    """QONNX ROUND is half to even (AC_RND_CONV); a project edited to half up (AC_RND)
    is recompiled on load (its sources changed) and differs from golden on the ties."""
    design, g = project
    copy = tmp_path / "rnd"
    shutil.copytree(design.project_dir, copy)
    defines = copy / "firmware" / "defines.h"
    text = defines.read_text()
    assert text.count("AC_RND_CONV") >= 2
    defines.write_text(text.replace("AC_RND_CONV", "AC_RND"))
    meta = json.loads((copy / METADATA_FILE).read_text())
    meta["compiled_in"] = str(copy.resolve())  # as if built here: only the sources differ
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    half_up = CatapultDesign.load(copy)
    assert half_up.rebuilt_because == "firmware sources changed since the C-sim library was built"
    x = _vectors(g, 2000, seed=4)
    level = catapult_level(g, half_up, x)
    assert level.status == "FAIL" and level.mismatching_vectors > 0
    assert level.max_abs_diff_lsb >= 1


class _Layer:
    """The few attributes of an hls4ml layer that the Catapult op check reads."""

    def __init__(self, name: str, cls: str, op: str) -> None:
        self.name, self.class_name = name, cls
        self.attributes = {"class_name": op}
        self.types: dict = {}

    def get_attr(self, key: str, default=None):
        return f"nnet::{self.class_name.lower()}(...);" if key == "function_cpp" else default

    def get_output_variable(self):
        return object()


def test_vitis_only_ops_are_named():
    """Ops with a Vitis template but none in hls4ml 1.3's Catapult backend are refused by name."""
    from edgeml.hls_catapult import _catapult_function_classes, _check_catapult_layers

    vitis, catapult = _catapult_function_classes()
    assert {"Einsum", "EinsumDense", "LayerNormalization"} <= vitis - catapult
    assert {"Dense", "Activation", "Conv2D", "Pooling2D", "Merge"} <= vitis & catapult

    class Model:
        def __init__(self, layers):
            self.layers = layers

        def get_layers(self):
            return self.layers

    ok = [_Layer("Dense_MatMul_0", "Dense", "Dense"), _Layer("Relu_0", "Activation", "Relu")]
    _check_catapult_layers(Model(ok))  # nothing to refuse
    bad = [*ok, _Layer("LayerNormalization_3", "LayerNormalization", "LayerNormalization")]
    with pytest.raises(
        UnsupportedOpError,
        match=r"LayerNormalization_3 \(op LayerNormalization\): hls4ml 1.3's Catapult backend has no template",
    ):
        _check_catapult_layers(Model(bad))
