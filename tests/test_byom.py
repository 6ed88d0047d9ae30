"""Bring your own model: files as other tools write them go through `edgeml flow` exactly.

Each case (``tests/byom_cases.py``) writes a model in its producer's conventions and
runs the command a user types. Asserted: the flow exits 0; golden == hls4ml C-sim ==
RTL on >= 10,000 vectors (integer codes); the golden IR that ships matches; the
user's original file (executed by qonnx, or the Keras model itself) agrees with the
firmware's numbers; what ingestion changed is recorded in ``ingest.json``.
"""

from __future__ import annotations

import pytest
from byom_cases import case, cases, run_case

#: the whole-flow cases need g++ (hls4ml C-sim) and Verilator, and take minutes each
FLOW = [pytest.mark.slow, pytest.mark.hls, pytest.mark.rtl]

VECTORS = 10_000
#: top-1 agreement of the firmware with the user's original file, where the ingestion
#: approximates real-valued preprocessing or scales (exact cases must agree fully)
AGREEMENT_FLOOR = 0.97


@pytest.mark.parametrize("name", [pytest.param(c.name, marks=FLOW) for c in cases()])
def test_flow_exact(name: str, tmp_path) -> None:
    c = case(name)
    res = run_case(c, tmp_path, vectors=VECTORS)
    assert res["rc"] == 0, res
    levels = res["levels"]
    assert res["vectors"] >= VECTORS
    assert levels["golden IR (golden.npz)"]["status"] == "PASS", levels
    for level in c.levels:
        lv = levels[level]
        assert lv["status"] == "PASS", (level, lv)
        assert lv["mismatching_vectors"] == 0 and lv["vectors"] >= VECTORS, (level, lv)
    orig = levels["original model file"]
    assert orig["status"] in ("PASS", "APPROX"), orig
    assert orig["argmax_agreement"] >= AGREEMENT_FLOOR, orig
    ing = res["ingest"]
    assert bool(ing["changes"]) == c.changes, ing["changes"]
    assert ing["input_precision"]
    if c.quantize is not None:  # the float file against the quantized design
        assert res["quantize"]["argmax_agreement_float_vs_quant"] >= AGREEMENT_FLOOR
        assert res["quantize"]["golden_vs_qonnx"]["mismatching_outputs"] == 0
    if c.rtl_skipped:
        assert "rtl.max_build_seconds" in res["rtl"]["skipped"], res["rtl"]
        assert res["rtl"]["estimate"]["nonzero_weights"] > 150_000
        assert levels["RTL (Verilator)"]["status"] == "SKIPPED"
        assert "too big for the RTL route" in levels["RTL (Verilator)"]["note"]


# --------------------------------------------------------------------------- the front door


def _run(capsys, *args) -> tuple[int, str]:
    from edgeml.cli import main

    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out + cap.err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import external_models as ext

    d = tmp_path_factory.mktemp("byom_files")
    return {
        "brevitas": ext.brevitas_old_mlp(0, d / "brevitas.onnx"),
        "qkeras": ext.qkeras_mlp(0, d / "qkeras.onnx"),
        "folder": d,
    }


def test_float_input_without_precision_names_every_way(files, tmp_path, capsys):
    code, out = _run(capsys, "export", "--onnx", files["brevitas"], "--out", tmp_path / "r")
    assert code == 1
    assert "--input-type" in out and "--calib" in out and "quantization_annotation" in out
    assert not (tmp_path / "r").exists(), "a refused command writes nothing"


def test_bad_input_type_names_the_allowed_forms(files, tmp_path, capsys):
    code, out = _run(
        capsys,
        "export",
        "--onnx",
        files["brevitas"],
        "--input-type",
        "float16",
        "--out",
        tmp_path / "r",
    )
    assert code == 1 and "float16" in out and "ap_fixed<W,I>" in out


def test_unknown_output_lists_candidates(files, tmp_path, capsys):
    code, out = _run(
        capsys,
        "export",
        "--onnx",
        files["qkeras"],
        "--output",
        "no_such_node",
        "--out",
        tmp_path / "r",
    )
    assert code == 1 and "no_such_node" in out and "sequential/dense_1" in out


def test_onnx_and_keras_together_is_a_usage_error(files, tmp_path, capsys):
    code, out = _run(
        capsys,
        "export",
        "--onnx",
        files["qkeras"],
        "--keras",
        files["folder"] / "m.keras",
        "--out",
        tmp_path / "r",
    )
    assert code == 2 and "--onnx or --keras" in out


def test_calib_must_be_a_numeric_npy(files, tmp_path, capsys):
    bad = tmp_path / "calib.npy"
    bad.write_bytes(b"not numpy")
    code, out = _run(
        capsys, "export", "--onnx", files["brevitas"], "--calib", bad, "--out", tmp_path / "r"
    )
    assert code == 1 and "calib" in out and str(bad) in out


def test_export_records_what_ingestion_changed(files, tmp_path, capsys):
    import json

    run = tmp_path / "r"
    code, _ = _run(
        capsys,
        "export",
        "--onnx",
        files["brevitas"],
        "--input-type",
        "ap_fixed<12,4>",
        "--out",
        run,
    )
    assert code == 0
    ing = json.loads((run / "ingest.json").read_text())
    assert ing["input_precision"] == "input_type"
    assert (
        ing["changes"][0] == "renamed domain onnx.brevitas -> qonnx.custom_op.general on 6 node(s)"
    )
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["export"]["extra"]["ingest_changes"] == ing["changes"]
    assert (run / "model.ingested.onnx").is_file()
