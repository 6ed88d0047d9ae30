"""Verify checks the artifacts that ship, as they are on disk (issue 8).

Each test edits a copy of one complete run folder (the session's digits-MLP
flow, ``mlp_flow_run`` in conftest.py) the way a user could, and asserts what
``edgeml verify`` says: the exit code, the level that fails, the layer or the
file and line it names, and the drift it lists. Before this, an edited Verilog
constant and an edited hls4ml weight header both passed (verify regenerated the
Verilog and C-sim never reads the headers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeml.cli import EXIT_MISMATCH, EXIT_OK, EXIT_USER, main
from edgeml.golden import GoldenModel
from edgeml.manifest import sha256
from edgeml.mutate import copy_run

pytestmark = [pytest.mark.slow, pytest.mark.hls, pytest.mark.rtl]


def _verify(run: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    code = main(["verify", "--out", str(run), "-q"])
    err = capsys.readouterr().err
    info = json.loads((run / "verify.json").read_text()) if (run / "verify.json").exists() else {}
    return code, info, err


def _levels(info: dict) -> dict[str, dict]:
    return {lv["level"]: lv for lv in info["levels"]}


def _project(run: Path) -> Path:
    return (run / json.loads((run / "hls.json").read_text())["project_dir"]).resolve()


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(mlp_flow_run, tmp_path) -> Path:
    run, _ = mlp_flow_run
    return copy_run(run, tmp_path / "copy")


def test_unchanged_copy_verifies_from_any_directory(run_copy, tmp_path, monkeypatch, capsys):
    """The hls4ml project is found through hls.json (relative to the run), not the cwd."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, info, err = _verify(run_copy, capsys)
    assert code == EXIT_OK, err
    assert info["passed"] and info["drift"] == [] and info["rtl_source_changes"] == []
    lv = _levels(info)
    for name in (
        "golden IR (golden.npz)",
        "hls4ml weight headers",
        "hls4ml C-sim",
        "RTL (Verilator)",
    ):
        assert lv[name]["status"] == "PASS", lv[name]
    assert not (elsewhere / "hls_projects").exists()


def test_edited_verilog_constant_fails_and_is_not_overwritten(run_copy, capsys):
    """One shift-adder parameter changed in a pipeline stage: RTL FAIL naming file and line."""
    stage = sorted((run_copy / "rtl" / "src").glob("*_stage1.v"))[0]
    text = stage.read_text()
    lines = text.splitlines(keepends=True)
    k = next(i for i, ln in enumerate(lines) if "shift_adder #(" in ln and ", 0, 0) op_" in ln)
    lines[k] = lines[k].replace(", 0, 0) op_", ", 1, 0) op_", 1)  # the shift: x + (y << 1)
    stage.write_text("".join(lines))
    edited = stage.read_bytes()

    code, info, err = _verify(run_copy, capsys)
    assert code == EXIT_MISMATCH, err
    rtl = _levels(info)["RTL (Verilator)"]
    assert rtl["status"] == "FAIL" and rtl["mismatching_vectors"] > 100
    # stage 1 of the digits MLP is the first Dense's adder tree (edgeml.rtl.wire_layers)
    g = GoldenModel.load(run_copy / "golden.npz")
    assert rtl["first_divergent_layer"].startswith(
        f"{g.param_ops[0].name} (dense) at rtl/src/{stage.name}:{k + 1} "
    ), rtl["first_divergent_layer"]
    assert [d["file"] for d in info["drift"]] == [f"rtl/src/{stage.name}"]
    assert info["rtl_source_changes"][0]["line"] == k + 1
    assert _levels(info)["hls4ml C-sim"]["status"] == "PASS"  # only the RTL changed
    assert stage.read_bytes() == edited, "verify must never regenerate the shipped Verilog"
    assert "RTL (Verilator)" in err and "MISMATCH" in err


def test_edited_weight_header_fails_naming_file_index_and_layer(run_copy, capsys):
    """Vitis compiles the .h arrays; C-sim loads the .txt. An edit to the header alone is caught."""
    g = GoldenModel.load(run_copy / "golden.npz")
    weights = _project(run_copy) / "firmware" / "weights"
    header = sorted(weights.glob("w*.h"))[1]  # the second Dense's weights
    text = header.read_text()
    body_at = text.index("= {") + 3
    end = text.index(",", body_at)
    header.write_text(text[:body_at] + "0.5" + text[end:])

    code, info, err = _verify(run_copy, capsys)
    assert code == EXIT_MISMATCH, err
    lv = _levels(info)
    h = lv["hls4ml weight headers"]
    assert h["status"] == "FAIL" and h["mismatching_elements"] == 1
    assert h["first_divergent_layer"] == f"{g.param_ops[1].name} (dense)"
    assert f"{header.name}[0] = 0.5" in h["note"]
    assert lv["hls4ml C-sim"]["status"] == "PASS"  # C-sim never saw the header
    assert any(d["file"].endswith(f"firmware/weights/{header.name}") for d in info["drift"])


def test_edited_weight_txt_fails_at_csim_and_headers(run_copy, capsys):
    weights = _project(run_copy) / "firmware" / "weights"
    txt = sorted(weights.glob("w*.txt"))[-1]
    values = txt.read_text().split(",")
    i = next(k for k, v in enumerate(values) if float(v) != 0.0)
    values[i] = " " + repr(-float(values[i]))
    txt.write_text(",".join(values))
    g = GoldenModel.load(run_copy / "golden.npz")

    code, info, _ = _verify(run_copy, capsys)
    assert code == EXIT_MISMATCH
    lv = _levels(info)
    assert lv["hls4ml C-sim"]["status"] == "FAIL"
    assert lv["hls4ml C-sim"]["first_divergent_layer"] == f"{g.param_ops[-1].name} (dense)"
    assert lv["hls4ml weight headers"]["status"] == "FAIL"


def test_equivalent_firmware_edit_passes_with_drift_named(run_copy, capsys):
    """A comment added to the firmware: C-sim is recompiled from it, still exact; PASS, drift named."""
    project = _project(run_copy)
    cpp = next(project.glob("firmware/*.cpp"))
    cpp.write_text(cpp.read_text() + "\n// reviewed by a user\n")
    code, info, err = _verify(run_copy, capsys)
    assert code == EXIT_OK, err
    csim = _levels(info)["hls4ml C-sim"]
    assert csim["status"] == "PASS" and "recompiled" in csim["note"]
    assert [d["file"].split("/")[-1] for d in info["drift"]] == [cpp.name]


def test_edited_golden_ir_is_caught_and_named(run_copy, capsys):
    g = GoldenModel.load(run_copy / "golden.npz")
    op = g.param_ops[0]
    idx = np.unravel_index(int(np.argmax(np.abs(op.weight))), op.weight.shape)
    op.weight[idx] = -op.weight[idx]
    g.save(run_copy / "golden.npz")
    code, info, _ = _verify(run_copy, capsys)
    assert code == EXIT_MISMATCH
    ir = _levels(info)["golden IR (golden.npz)"]
    assert ir["status"] == "FAIL" and ir["first_divergent_layer"] == f"{op.name} (dense)"
    assert ir["extra"]["changed_constants"] == [f"{op.name}.weight[{idx[0]}, {idx[1]}]"]
    assert [d["file"] for d in info["drift"]] == ["golden.npz"]


def test_project_converted_from_another_model_is_refused(run_copy, capsys):
    project = _project(run_copy)
    meta_path = project / "edgeml_hls.json"
    meta = json.loads(meta_path.read_text())
    meta["onnx_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    before = _snapshot(run_copy)
    code = main(["verify", "--out", str(run_copy), "-q"])
    err = capsys.readouterr().err
    assert code == EXIT_USER
    assert "converted from another model" in err and "edgeml convert" in err
    assert "Traceback" not in err
    assert _snapshot(run_copy) == before


def test_changed_qonnx_is_named_at_its_layer_in_every_level(run_copy, capsys):
    """The QONNX (the oracle) changes, the firmware does not: every level names the same layer.

    The RTL is not an edit here: its sources equal what golden.npz generates, so the
    trace of that program names the layer (not the lines where the Verilog of the
    changed model would differ).
    """
    import onnx
    from onnx import numpy_helper

    path = run_copy / "model.qonnx.onnx"
    model = onnx.load(str(path))
    quant_inputs = {n.input[0]: n for n in model.graph.node if n.op_type == "Quant" and n.input}
    g = GoldenModel.load(run_copy / "golden.npz")
    init = next(i for i in model.graph.initializer if i.name in quant_inputs and len(i.dims) == 2)
    w = numpy_helper.to_array(init).copy()
    k = np.unravel_index(int(np.argmax(np.abs(w))), w.shape)
    w[k] = -w[k]
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))

    code, info, _ = _verify(run_copy, capsys)
    assert code == EXIT_MISMATCH
    lv = _levels(info)
    first = f"{g.param_ops[0].name} (dense)"
    for name in ("golden IR (golden.npz)", "hls4ml C-sim", "RTL (Verilator)"):
        assert lv[name]["status"] == "FAIL", lv[name]
        assert lv[name]["first_divergent_layer"] == first, (name, lv[name])
    assert "the model changed since" in lv["RTL (Verilator)"]["note"]
    assert [d["file"] for d in info["drift"]] == ["model.qonnx.onnx"]
