"""What a command checks before it writes, and what it never does to a run folder.

Issue 8: a refused command leaves the run folder byte-identical; per-command
switches do not stick to the run; options are checked before any training;
the machine's errors (permissions, a full disk, a missing tool) are user errors
with the path and the cause; any file name gives a valid design identifier;
NaN/Inf and absurd shapes are refused at export; a verification mismatch is
never masked by a later stage's failure; a failed `faults run` can be retried.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import qonnx_builders as qb
from onnx import numpy_helper

from edgeml.cli import EXIT_DEPENDENCY, EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, EXIT_USER, main
from edgeml.config import design_identifier
from edgeml.errors import CorruptFileError, InvalidTensorError, MismatchError, UnsupportedOpError
from edgeml.golden import GoldenModel


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative path -> hash)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("models")
    out = {
        "ext": qb.save(qb.mlp_pot(np.random.default_rng(1)), tmp / "ext.onnx"),
        "other": qb.save(qb.mlp_pot(np.random.default_rng(2)), tmp / "other.onnx"),
    }
    data = out["ext"].read_bytes()
    (tmp / "trunc.onnx").write_bytes(data[: len(data) // 3])
    (tmp / "random.onnx").write_bytes(np.random.default_rng(0).bytes(2000))
    out["trunc"], out["random"] = tmp / "trunc.onnx", tmp / "random.onnx"
    return out


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, models) -> Path:
    """A run folder of the external QONNX MLP after `export` (no training)."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert main(["export", "--onnx", str(models["ext"]), "--out", str(out), "-q"]) == EXIT_OK
    return out


@pytest.fixture
def ext_run(base_run, tmp_path) -> Path:
    """A private copy of the base run folder."""
    return Path(shutil.copytree(base_run, tmp_path / "run"))


# ----------------------------------------------------------------------------- 1: nothing written


@pytest.mark.parametrize(
    ("command", "model", "message"),
    [
        ("flow", "random", "cannot be parsed"),
        ("faults", "trunc", "cannot be parsed"),
        ("export", "trunc", "cannot be parsed"),
        ("verify", "other", "use a new --out folder, or add --force"),
        ("export", "other", "is not the file the run was exported from"),
    ],
)
def test_refused_command_leaves_run_folder_byte_identical(
    ext_run, models, capsys, command, model, message
):
    before = snapshot(ext_run)
    code, _, err = run(capsys, command, "--onnx", models[model], "--out", ext_run, "-q")
    assert code == EXIT_USER, err
    assert err.startswith("edgeml: error:") and message in err.replace("Use", "use")
    assert "Traceback" not in err
    assert snapshot(ext_run) == before
    # the run still works afterwards (before the fix config.json had been rewritten)
    code, _, err = run(
        capsys, "verify", "--out", ext_run, "--no-hls", "--no-rtl", "--vectors", "50", "-q"
    )
    assert code == EXIT_OK, err


def test_another_model_needs_a_new_folder_or_force(ext_run, models, capsys):
    code, _, err = run(capsys, "export", "--onnx", models["other"], "--out", ext_run, "-q")
    assert code == EXIT_USER
    other_sha = hashlib.sha256(models["other"].read_bytes()).hexdigest()
    assert other_sha[:12] in err and "manifest.json" in err and "--force" in err
    code, _, err = run(capsys, "verify", "--design", "cnn", "--out", ext_run, "-q")
    assert code == EXIT_USER and "the run's design is 'ext', this command's 'cnn'" in err
    # the same file again is fine, and keeps the run's design name
    copy = models["ext"].parent / "copy of ext.onnx"
    shutil.copy(models["ext"], copy)
    code, _, err = run(capsys, "export", "--onnx", copy, "--out", ext_run, "-q")
    assert code == EXIT_OK, err
    assert json.loads((ext_run / "config.json").read_text())["design"] == "ext"
    # --force replaces the run's model
    code, _, err = run(
        capsys, "export", "--onnx", models["other"], "--out", ext_run, "--force", "-q"
    )
    assert code == EXIT_OK, err
    inputs = json.loads((ext_run / "manifest.json").read_text())["stages"]["export"]["inputs"]
    assert list(inputs.values()) == [other_sha]


def test_builtin_run_refuses_an_external_model(tmp_path, models, capsys):
    run_dir = tmp_path / "builtin"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"design": "mlp"}))
    (run_dir / "manifest.json").write_text(json.dumps({"stages": {"train": {"inputs": {}}}}))
    before = snapshot(run_dir)
    code, _, err = run(capsys, "export", "--onnx", models["ext"], "--out", run_dir, "-q")
    assert code == EXIT_USER and "built-in design 'mlp'" in err
    assert snapshot(run_dir) == before


# ----------------------------------------------------------------------------- 2: switches


def test_no_hls_and_no_rtl_hold_for_one_command(ext_run, capsys):
    code, _, err = run(
        capsys, "verify", "--out", ext_run, "--no-hls", "--no-rtl", "--vectors", "100", "-q"
    )
    assert code == EXIT_OK, err
    cfg = json.loads((ext_run / "config.json").read_text())
    assert cfg["hls"]["enabled"] is True and cfg["rtl"]["enabled"] is True
    assert cfg["verify"]["n_random"] == 100  # a real option does persist
    levels = {lv["level"]: lv for lv in json.loads((ext_run / "verify.json").read_text())["levels"]}
    assert levels["hls4ml C-sim"]["status"] == levels["RTL (Verilator)"]["status"] == "SKIPPED"
    # a plain verify runs the hls4ml level again: it needs the convert stage's output
    code, _, err = run(capsys, "verify", "--out", ext_run, "-q")
    assert code == EXIT_USER and "hls.json" in err and "'convert' stage" in err


def test_help_says_switches_are_per_command(capsys):
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "in this command only; not saved in the run's config.json" in out
    assert "--force" in out


# ----------------------------------------------------------------------------- 3: options first


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--bits", "16"], ["compress.bit_width", "(--bits)", "2..8", "got 16"]),
        (["--sparsity", "1.5"], ["compress.sparsity", "0.95", "--sparsity"]),
        (["--vectors", "-1"], ["verify.n_random", "--vectors"]),
        (["--seed", "-3"], ["'seed'", "--seed"]),
    ],
)
def test_options_are_checked_before_training(tmp_path, capsys, args, fragments):
    out = tmp_path / "r"
    code, _, err = run(capsys, "flow", "--design", "mlp", *args, "--out", out, "-q")
    assert code == EXIT_USER, err
    for f in fragments:
        assert f in err
    assert not out.exists()  # nothing trained, nothing written


def test_bad_option_type_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as ei:
        main(["train", "--bits", "six", "--out", str(tmp_path / "r")])
    assert ei.value.code == EXIT_USAGE


# ----------------------------------------------------------------------------- 4: environment


def test_run_folder_under_a_file_is_a_user_error(tmp_path, models, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, err = run(capsys, "export", "--onnx", models["ext"], "--out", blocker / "run")
    assert code == EXIT_USER
    assert "not writable" in err and "not a folder" in err and "ENOTDIR" in err
    assert str(blocker / "run") in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("exc", "code", "fragments"),
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/ro/run/report.html"),
            EXIT_USER,
            ["'/ro/run/report.html'", "permission denied", "EACCES"],
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "/ro/run/report.html"),
            EXIT_USER,
            ["'/ro/run/report.html'", "read-only file system", "EROFS"],
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "/full/run/report.html"),
            EXIT_USER,
            ["'/full/run/report.html'", "no space left", "ENOSPC"],
        ),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "model.pt"),
            EXIT_USER,
            ["'model.pt'", "no such file or folder", "ENOENT"],
        ),
        (None, EXIT_DEPENDENCY, ["'no_such_tool_x9' is not installed or not on PATH"]),
    ],
)
def test_environment_errors_map_to_user_or_dependency_exit(
    ext_run, capsys, monkeypatch, exc, code, fragments
):
    import subprocess

    from edgeml import flow

    def fail(ctx):
        if exc is None:  # a toolchain binary that is not installed
            subprocess.run(["no_such_tool_x9", "--version"], check=True)
        raise exc

    monkeypatch.setitem(flow.STAGE_FUNCS, "report", fail)
    rc, _, err = run(capsys, "report", "--out", ext_run, "-q")
    assert rc == code, err
    for f in fragments:
        assert f in err
    assert "internal error" not in err and "Traceback" not in err


# ----------------------------------------------------------------------------- 5: identifiers


def test_design_identifier_is_ascii_and_collision_free():
    import re

    names = ["modèle jet", "modele jet", "modele_jet", "my-net", "my net", "3x", "module", "日本"]
    idents = [design_identifier(n) for n in names]
    for i in idents:
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", i) and "__" not in i, i
    assert len(set(idents)) == len(names)
    assert design_identifier("modèle jet").startswith("modele_jet_")
    for keep in ("jet", "mlp", "rn08", "ext_2"):
        assert design_identifier(keep) == keep


def test_unicode_file_name_keeps_its_name_and_gets_an_ascii_folder(
    tmp_path, models, capsys, monkeypatch
):
    src = tmp_path / "modèle jet.onnx"
    shutil.copy(models["ext"], src)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "export", "--onnx", src, "-q")
    assert code == EXIT_OK, err
    out = Path("runs") / design_identifier("modèle jet")
    assert json.loads((out / "config.json").read_text())["design"] == "modèle jet"


def test_rtl_refuses_a_run_folder_with_spaces_up_front(tmp_path, models, capsys):
    out = tmp_path / "my run"
    code, _, err = run(capsys, "export", "--onnx", models["ext"], "--out", out, "-q")
    assert code == EXIT_OK, err
    before = snapshot(out)
    code, _, err = run(capsys, "rtl", "--out", out, "-q")
    assert code == EXIT_USER and "has a space" in err and "--no-rtl" in err
    assert snapshot(out) == before


@pytest.mark.rtl
@pytest.mark.slow
def test_unicode_design_name_builds_rtl(tmp_path, models, capsys):
    """Before: `_ident` kept 'è' and the space, and da4ml refused 'modèle_jet'."""
    src = tmp_path / "modèle jet.onnx"
    shutil.copy(models["ext"], src)
    out = tmp_path / "run"
    code, _, err = run(capsys, "export", "--onnx", src, "--out", out, "-q")
    assert code == EXIT_OK, err
    code, _, err = run(capsys, "rtl", "--out", out, "-q")
    assert code == EXIT_OK, err
    top = json.loads((out / "rtl.json").read_text())["top"]
    assert top.startswith("modele_jet_") and top.isascii()


# ----------------------------------------------------------------------------- 6: NaN / Inf


def _poisoned(tmp_path: Path, value: float) -> tuple[Path, str, str]:
    """mlp_pot with one weight set to ``value``; returns the file, tensor and consumer names."""
    m = qb.mlp_pot(np.random.default_rng(1))
    quant = next(
        n
        for n in m.graph.node
        if n.op_type == "Quant" and m.get_initializer(n.input[0]) is not None
    )
    w = m.get_initializer(quant.input[0]).copy()
    w.flat[3] = value
    m.set_initializer(quant.input[0], w)
    return qb.save(m, tmp_path / "poisoned.onnx"), quant.input[0], quant.name


@pytest.mark.parametrize(("value", "what"), [(np.nan, "1 NaN"), (np.inf, "1 infinite")])
def test_nan_or_inf_weight_is_refused_at_export(tmp_path, capsys, value, what):
    path, tensor, node = _poisoned(tmp_path, value)
    code, _, err = run(capsys, "export", "--onnx", path, "--out", tmp_path / "r", "-q")
    assert code == EXIT_USER, err
    assert f"initializer '{tensor}'" in err and f"node '{node}' (op Quant, input)" in err
    assert what in err and "Warning" not in err
    assert not (tmp_path / "r").exists()


def test_nan_in_graph_objects_is_refused_by_the_golden_compiler(tmp_path):
    path, tensor, _ = _poisoned(tmp_path, np.nan)
    proto = onnx.load(str(path))
    from qonnx.core.modelwrapper import ModelWrapper

    for model in (proto, ModelWrapper(proto)):
        with pytest.raises(InvalidTensorError, match=f"initializer '{tensor}'.*NaN"):
            GoldenModel.from_onnx(model)


def test_nan_quant_scale_in_a_constant_node_is_refused(tmp_path):
    m = qb.mlp_pot(np.random.default_rng(1))
    quant = m.graph.node[0]
    scale = numpy_helper.from_array(np.array(np.nan, np.float32), "nan_scale")
    const = onnx.helper.make_node("Constant", [], ["nan_scale"], name="ScaleConst", value=scale)
    m.graph.node.insert(0, const)
    quant.input[1] = "nan_scale"
    with pytest.raises(InvalidTensorError, match=r"node 'ScaleConst' .*Quant_.*scale.*NaN"):
        GoldenModel.from_onnx(m)


@pytest.mark.parametrize(
    ("dim", "message"),
    [(0, "dimension 1 = 0"), (-4, "dimension 1 = -4"), (2**40, "must be in 1..")],
)
def test_absurd_dimensions_are_refused(tmp_path, capsys, dim, message):
    m = qb.mlp_pot(np.random.default_rng(1))
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = dim
    path = qb.save(m, tmp_path / "dims.onnx")
    code, _, err = run(capsys, "export", "--onnx", path, "--out", tmp_path / "r", "-q")
    assert code == EXIT_USER and "graph input 'inp'" in err and message in err, err


def test_huge_initializer_shape_is_refused_before_decoding(tmp_path):
    m = qb.mlp_pot(np.random.default_rng(1))
    t = m.graph.initializer[3]
    del t.dims[:]
    t.dims.extend([1 << 20, 1 << 20])
    with pytest.raises(InvalidTensorError, match=f"initializer '{t.name}'.*elements"):
        GoldenModel.from_onnx(m.model)


# ---- what the fuzzer found (tests/test_fuzz_onnx.py), one regression test each


def test_duplicate_value_info_is_a_corrupt_file(tmp_path, capsys):
    """qonnx's ModelWrapper asserted ("Multiple ValueInfoProto") -> exit 5 before."""
    m = qb.mlp_pot(np.random.default_rng(1))
    m.graph.value_info.append(m.graph.value_info[0])
    path = qb.save(m, tmp_path / "dup.onnx")
    code, _, err = run(capsys, "export", "--onnx", path, "--out", tmp_path / "r", "-q")
    assert code == EXIT_USER and "more than once" in err and "value_info" in err


def test_absurd_finite_scale_is_refused_not_cast_to_garbage():
    """A 3.4e38 input scale became INT64_MIN fixed-point constants with a numpy warning."""
    m = qb.bn_float_scales(np.random.default_rng(7))
    scale = m.graph.node[0].input[1]
    m.set_initializer(scale, np.array(3.4e38, np.float32))
    with pytest.raises(UnsupportedOpError, match=r"'Quant_\d+'.*outside \[2\*\*-64, 2\*\*64\]"):
        GoldenModel.from_onnx(m)


def test_zero_bipolar_scale_is_refused():
    """A zero BipolarQuant scale divided by zero (ZeroDivisionError) in the compiler."""
    m = qb.bipolar_trunc(np.random.default_rng(7))
    bq = next(n for n in m.graph.node if n.op_type == "BipolarQuant")
    m.set_initializer(bq.input[1], np.array(0.0, np.float32))
    with pytest.raises(UnsupportedOpError, match=r"BipolarQuant.*scale"):
        GoldenModel.from_onnx(m)


def test_quant_with_missing_input_names_the_node():
    """A Quant with three inputs failed with 'not enough values to unpack'."""
    m = qb.mlp_pot(np.random.default_rng(1))
    q = next(n for n in m.graph.node if n.op_type == "Quant" and n.input[0] != "inp")
    del q.input[3]
    with pytest.raises(UnsupportedOpError, match=rf"'{q.name}'.*3 input\(s\).*takes 4 inputs"):
        GoldenModel.from_onnx(m)


def test_non_utf8_rounding_mode_names_the_node():
    """A rounding_mode of undecodable bytes raised UnicodeDecodeError in the compiler."""
    m = qb.mlp_pot(np.random.default_rng(1))
    q = m.graph.node[0]
    next(a for a in q.attribute if a.name == "rounding_mode").s = b"\xff\xfe"
    with pytest.raises(UnsupportedOpError, match=rf"'{q.name}'.*rounding_mode"):
        GoldenModel.from_onnx(m)


def test_huge_conv_padding_is_refused_before_qonnx(tmp_path, capsys):
    """pads of 2**31 made qonnx's channels-last pass try to allocate a huge array."""
    m = qb.cnn_nchw(np.random.default_rng(7))
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    pads = next(a for a in conv.attribute if a.name == "pads")
    pads.ints[0] = 2**31 + 5
    path = qb.save(m, tmp_path / "pads.onnx")
    code, _, err = run(capsys, "export", "--onnx", path, "--out", tmp_path / "r", "-q")
    assert code == EXIT_USER and f"'{conv.name}'" in err and "pads" in err, err


def test_compiler_guard_names_the_node_for_unforeseen_errors(monkeypatch):
    """Last resort: an unexpected exception while compiling a node becomes a clear error."""
    from edgeml import golden

    def boom(self, node, idx, name, ins, out):
        raise KeyError("surprise")

    monkeypatch.setattr(golden._Compiler, "_op_Relu", boom)
    with pytest.raises(
        UnsupportedOpError, match=r"node 'Relu_\d+' \(op Relu\): cannot be compiled"
    ):
        GoldenModel.from_onnx(qb.mlp_pot(np.random.default_rng(1)))


# ----------------------------------------------------------------------------- 7: run-level exit


def _flow_with(monkeypatch, ext_run, capsys, models, **stages):
    from edgeml import flow

    for name, fn in stages.items():
        monkeypatch.setitem(flow.STAGE_FUNCS, name, fn)
    return run(
        capsys, "flow", "--onnx", models["ext"], "--out", ext_run, "--no-hls", "--no-rtl",
        "--vectors", "50", "-q",
    )  # fmt: skip


def _mismatch(ctx):
    raise MismatchError("RTL (Verilator): 3/100 vectors differ, first divergent layer MatMul_0")


def _bad_faults(ctx):
    raise CorruptFileError("weight codes out of range")


def _buggy_faults(ctx):
    raise RuntimeError("a bug in the faults stage")


@pytest.mark.parametrize("faults", [_bad_faults, _buggy_faults])
def test_mismatch_is_not_masked_by_a_later_failure(ext_run, models, capsys, monkeypatch, faults):
    code, _, err = _flow_with(monkeypatch, ext_run, capsys, models, verify=_mismatch, faults=faults)
    assert code == EXIT_MISMATCH, err
    assert "MISMATCH" in err and "3/100 vectors differ" in err
    assert "the faults stage failed" in err
    html = (ext_run / "report.html").read_text()
    assert "FAILED: the faults stage of this run failed" in html


def test_later_failure_still_writes_the_report(ext_run, models, capsys, monkeypatch):
    (ext_run / "report.html").unlink(missing_ok=True)
    code, _, err = _flow_with(monkeypatch, ext_run, capsys, models, faults=_bad_faults)
    assert code == EXIT_USER and "weight codes out of range" in err
    assert "FAILED: the faults stage" in (ext_run / "report.html").read_text()


def test_failure_before_verify_stops_the_flow(ext_run, models, capsys, monkeypatch):
    (ext_run / "report.html").unlink(missing_ok=True)

    def bad_export(ctx):
        raise CorruptFileError("export broke")

    code, _, err = _flow_with(monkeypatch, ext_run, capsys, models, export=bad_export)
    assert code == EXIT_USER and "export broke" in err
    assert not (ext_run / "report.html").exists()


# ----------------------------------------------------------------------------- 8: faults retry


def test_failed_faults_run_can_be_retried(ext_run, capsys, monkeypatch):
    from edgeml.fault_injection import runner

    def crash(*args, **kwargs):
        raise MemoryError("out of memory in the first chunk")

    args = ["faults", "run", "--run-dir", ext_run, "--workers", "0", "--samples", "100", "-q"]
    with monkeypatch.context() as mp:
        mp.setattr(runner, "_timed_chunk", crash)
        code, _, err = run(capsys, *args)
    assert code != EXIT_OK and (ext_run / "faults" / "campaign.sqlite").exists()
    code, out, err = run(capsys, *args)  # before: "already exists; add --resume" (exit 2)
    assert code == EXIT_OK, err
    assert "1260 of 1260 faults" in out
    code, _, err = run(capsys, *args)  # a store with results is still kept
    assert code == EXIT_USAGE and "already exists" in err and "--resume" in err
