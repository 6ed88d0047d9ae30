"""The CLI: help, exit codes and the error messages users see for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import qonnx_builders as qb

from edgeml.cli import EXIT_OK, EXIT_USAGE, EXIT_USER, main
from edgeml.config import FlowConfig, apply_overrides, load_config, validate_config
from edgeml.errors import ConfigError, MissingRunError
from edgeml.manifest import RunFolder


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_help_lists_every_stage_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    for stage in (
        "train",
        "compress",
        "export",
        "convert",
        "rtl",
        "verify",
        "faults",
        "report",
        "flow",
    ):
        assert stage in out
    assert "Exit codes" in out and "3  verification mismatch" in out
    assert main([]) == EXIT_USAGE


def test_bad_config_value_names_field_and_allowed_range(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("compress:\n  bit_width: 40\n")
    code, _, err = run(capsys, "export", "--config", cfg, "--out", tmp_path / "r")
    assert code == EXIT_USER
    assert "compress.bit_width" in err and "less than or equal to 16" in err and "40" in err


def test_unknown_config_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError) as ei:
        validate_config({"compress": {"bitwidth": 4}})
    msg = str(ei.value)
    assert "unknown config field 'compress.bitwidth'" in msg and "bit_width" in msg
    with pytest.raises(ConfigError, match="sparsity"):
        apply_overrides(FlowConfig(), {"compress.sparsity": 1.5})


def test_unknown_design_lists_builtins(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--design", "resnet", "--out", tmp_path / "r")
    assert code == EXIT_USER
    assert "'resnet'" in err and "mlp, cnn" in err and "--onnx" in err


def test_corrupt_config_file_refused(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("{not json")
    with pytest.raises(Exception, match=r"c\.json"):
        load_config(p)


def test_missing_run_folder_is_a_clear_error(tmp_path, capsys):
    code, _, err = run(capsys, "verify", "--design", "mlp", "--out", tmp_path / "nowhere")
    assert code == EXIT_USER
    assert "nowhere" in err and "does not exist" in err
    (tmp_path / "half").mkdir()
    with pytest.raises(MissingRunError, match="'export' stage"):
        RunFolder(tmp_path / "half").require("model.qonnx.onnx")


def test_unsupported_op_via_cli(tmp_path, capsys):
    p = qb.save(qb.unsupported(np.random.default_rng(0)), tmp_path / "sig.onnx")
    code, _, err = run(capsys, "export", "--onnx", p, "--out", tmp_path / "r")
    assert code == EXIT_USER
    assert "LRN" in err and "supports" in err


def test_malformed_onnx_via_cli(tmp_path, capsys):
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"\x00\x01\x02 definitely not a model")
    code, _, err = run(capsys, "export", "--onnx", p, "--out", tmp_path / "r")
    assert code == EXIT_USER
    assert "junk.onnx" in err


def test_external_flow_without_hardware_levels(tmp_path, capsys):
    """A qonnx-built model through export, verify (QONNX reference), faults and report."""
    p = qb.save(qb.mlp_pot(np.random.default_rng(1)), tmp_path / "ext.onnx")
    out = tmp_path / "r"
    code, stdout, err = run(
        capsys, "flow", "--onnx", p, "--out", out, "--no-hls", "--no-rtl", "--vectors", "500", "-q"
    )
    assert code == EXIT_OK, err
    assert "report:" in stdout
    v = json.loads((out / "verify.json").read_text())
    ref = next(lv for lv in v["levels"] if lv["level"].startswith("QONNX"))
    assert ref["status"] == "PASS" and ref["mismatching_vectors"] == 0
    m = json.loads((out / "manifest.json").read_text())
    assert {"export", "verify", "faults", "report"} <= set(m["stages"])
    assert m["stages"]["export"]["inputs"]  # input hash recorded
    assert "qonnx" in m["stages"]["export"]["tool_versions"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    # re-running one stage alone works from the run folder
    code, _, err = run(capsys, "report", "--out", out, "-q")
    assert code == EXIT_OK, err


@pytest.mark.hls
def test_verify_exits_3_and_names_layer_when_csim_disagrees(tmp_path, capsys):
    """Change one weight in the run's QONNX after hls4ml compiled it: verify must fail loudly."""
    from qonnx.core.modelwrapper import ModelWrapper

    p = qb.save(qb.mlp_pot(np.random.default_rng(1)), tmp_path / "ext.onnx")
    out, hls = tmp_path / "r", tmp_path / "hls"
    common = ["--out", out, "--hls-dir", hls, "--no-rtl", "-q"]
    for stage in ("export", "convert"):
        code, _, err = run(capsys, stage, "--onnx", p, *common)
        assert code == EXIT_OK, err
    code, _, err = run(capsys, "verify", *common)
    assert code == EXIT_OK, err

    m = ModelWrapper(str(out / "model.qonnx.onnx"))
    quant = next(
        n
        for n in m.graph.node
        if n.op_type == "Quant" and m.get_initializer(n.input[0]) is not None
    )
    w = m.get_initializer(quant.input[0]).copy()
    w.flat[0] += 2.0 * float(m.get_initializer(quant.input[1]))  # two codes up
    m.set_initializer(quant.input[0], w)
    m.save(str(out / "model.qonnx.onnx"))

    code, _, err = run(capsys, "verify", *common)
    assert code == 3
    assert "MISMATCH" in err and "hls4ml C-sim" in err
    v = json.loads((out / "verify.json").read_text())
    lv = next(lv for lv in v["levels"] if lv["level"] == "hls4ml C-sim")
    assert lv["status"] == "FAIL" and lv["mismatching_vectors"] > 0
    assert lv["first_divergent_layer"].startswith("MatMul")


# ----------------------------------------------------------------------------- faults group


@pytest.fixture
def ext_run(tmp_path, capsys):
    """A run folder for an external QONNX MLP 16-12-5 (export only: no training)."""
    p = qb.save(qb.mlp_pot(np.random.default_rng(1)), tmp_path / "ext.onnx")
    out = tmp_path / "r"
    code, _, err = run(capsys, "export", "--onnx", p, "--out", out, "-q")
    assert code == EXIT_OK, err
    return out


def test_faults_group_help(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["faults", "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert "{run,resume,report,rtl,harden}" in out and "Without a sub-command" in out
    with pytest.raises(SystemExit):
        main(["faults", "run", "--help"])
    out = capsys.readouterr().out
    for flag in ("--targets", "--sampler", "--margin", "--scheduler", "--workers", "--resume"):
        assert flag in out
    with pytest.raises(SystemExit):
        main(["faults", "harden", "--help"])
    out = capsys.readouterr().out
    for flag in ("--budget", "--curve", "--scheme", "--no-area"):
        assert flag in out


def test_faults_run_resume_report(ext_run, tmp_path, capsys):
    from edgeml.fault_injection.campaign import CampaignResult
    from edgeml.fault_injection.store import FaultStore

    common = ["--run-dir", ext_run, "--workers", "0", "-q"]
    code, out, err = run(capsys, "faults", "run", *common, "--chunk", "200")
    assert code == EXIT_OK, err
    assert "1260 of 1260 faults" in out and "baseline accuracy 100.00 % on 1000 samples" in out
    store = ext_run / "faults" / "campaign.sqlite"
    with FaultStore.open(store) as st:
        res = st.results()
    assert res.complete and res.config["chunk"] == 200 and res.config["design"] == "ext"

    # the flow's stage (no sub-command) on the same samples gives the same numbers
    code, _, err = run(capsys, "faults", "--out", ext_run, "-q")
    assert code == EXIT_OK, err
    stage = CampaignResult.load(ext_run / "faults" / "campaign.npz")
    assert [s.fault_id for s in stage.sites()] == res.fault_ids()
    np.testing.assert_array_equal(stage.sdc_rate, res.sdc_rate)
    np.testing.assert_array_equal(stage.max_dev, res.max_dev)

    code, _, err = run(capsys, "faults", "run", *common)
    assert code == EXIT_USAGE and "already exists" in err and "--resume" in err
    code, _, err = run(capsys, "faults", "run", *common, "--resume", "--samples", "100")
    assert code == EXIT_USER
    assert "differing fields" in err and "n_samples: store has 1000, requested 100" in err
    code, out, err = run(capsys, "faults", "resume", "--store", store, "-q")
    assert code == EXIT_OK and "1260 of 1260 faults" in out, err

    html = tmp_path / "rep.html"
    code, out, err = run(
        capsys, "faults", "report", "--store", store, "--out", html, "--top", "5", "--no-plots"
    )
    assert code == EXIT_OK, err
    text = html.read_text()
    assert "Per layer" in text and "Per bit: weight" in text and "Top 5 most damaging" in text
    worst = res.fault_ids()[int(np.lexsort((-res.max_dev, -res.sdc_rate))[0])]
    assert worst in text and "MatMul_0" in text and "Incomplete" not in text


def test_faults_random_sampler_and_other_targets(ext_run, tmp_path, capsys):
    from edgeml.fault_injection.store import FaultStore

    store = tmp_path / "rand.sqlite"
    code, _, err = run(
        capsys,
        "faults",
        "run",
        "--run-dir",
        ext_run,
        "--store",
        store,
        "--sampler",
        "random",
        "--margin",
        "0.05",
        "--seed",
        "5",
        "--targets",
        "weight,act",
        "--kind",
        "stuck1",
        "--samples",
        "200",
        "--workers",
        "0",
        "-q",
    )
    assert code == EXIT_OK, err
    with FaultStore.open(store) as st:
        res, cfg = st.results(), st.config
    assert cfg["sampler"] == "random" and cfg["seed"] == 5 and cfg["targets"] == ["weight", "act"]
    assert cfg["sampler_params"] == {"margin": 0.05, "confidence": 0.95}
    assert len(res) < cfg["population"] and res.complete
    assert {s.param for s in res.sites()} == {"weight", "act"} and {
        s.kind for s in res.sites()
    } == {"stuck1"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sampler", "hessian9"], "--sampler must be one of exhaustive, random"),
        (["--targets", "weight,bogus"], "--targets takes a comma list of weight, bias, act, acc"),
        (["--chunk", "0"], "--chunk must be an integer >= 1"),
        (["--workers", "-1"], "--workers must be an integer >= 0"),
        (["--margin", "1.5"], "--margin must be in (0, 1)"),
        (["--nbits", "0"], "--nbits must be an integer >= 1"),
        (["--seed", "-2"], "--seed must be an integer >= 0"),
    ],
)
def test_faults_bad_flags_are_usage_errors(ext_run, capsys, flags, message):
    code, _, err = run(capsys, "faults", "run", "--run-dir", ext_run, *flags)
    assert code == EXIT_USAGE and message in err
    assert not (ext_run / "faults" / "campaign.sqlite").exists()


def test_faults_bad_store_files(tmp_path, capsys):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"\x00" * 100)
    code, _, err = run(capsys, "faults", "report", "--store", junk)
    assert code == EXIT_USER and "junk.sqlite" in err and "not an SQLite database" in err
    code, _, err = run(capsys, "faults", "resume", "--store", tmp_path / "none.sqlite")
    assert code == EXIT_USER and "does not exist" in err
    code, _, err = run(capsys, "faults", "run", "--run-dir", tmp_path / "nowhere")
    assert code == EXIT_USER and "nowhere" in err and "--run-dir" in err
    with pytest.raises(SystemExit) as ei:
        main(["faults", "run", "--kind", "flipflop"])
    assert ei.value.code == EXIT_USAGE


@pytest.mark.slow
def test_faults_report_with_sensitivity_plots(ext_run, capsys):
    """The report re-loads the run folder and adds the Hessian/gradient analysis and its plots."""
    code, _, err = run(
        capsys, "faults", "run", "--run-dir", ext_run, "--samples", "200", "-q", "--workers", "0"
    )
    assert code == EXIT_OK, err
    code, _, err = run(capsys, "faults", "report", "--run-dir", ext_run, "-q")
    assert code == EXIT_OK, err
    text = (ext_run / "faults" / "campaign.html").read_text()
    assert "Fault sensitivity and protection" in text and text.count("data:image/png;base64,") >= 1
    assert "No sensitivity plots" not in text


@pytest.mark.parametrize("sampler", ["stratified", "hessian"])
def test_faults_ranked_and_stratified_samplers(ext_run, tmp_path, capsys, sampler):
    """Leveugle-sized samplers: a stratified sample and the top of the Hessian ranking."""
    from edgeml.fault_injection.samplers import leveugle_sample_size
    from edgeml.fault_injection.store import FaultStore

    store = tmp_path / f"{sampler}.sqlite"
    rc = main(["faults", "run", "--run-dir", str(ext_run), "--store", str(store),
               "--sampler", sampler, "--margin", "0.05", "--workers", "0", "-q"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    st = FaultStore.open(store)
    n_pop, res = st.config["population"], st.results()
    st.close()
    assert res.complete and st.config["sampler"] == sampler
    n = leveugle_sample_size(n_pop, margin=0.05, confidence=0.95)
    # stratified takes >= 2 per stratum, so it may exceed the Leveugle size a little
    assert len(res.sdc_rate) == n if sampler == "hessian" else n <= len(res.sdc_rate) < 2 * n


@pytest.mark.rtl
@pytest.mark.slow
def test_faults_rtl_register_campaign_matches_golden(ext_run, capsys):
    """`edgeml faults rtl`: register flips in Verilator equal golden activation flips."""
    rc = main(["faults", "rtl", "--run-dir", str(ext_run), "--sites", "200", "--check", "60",
               "--samples", "200", "-q"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    summ = json.loads((ext_run / "faults" / "rtl" / "rtl_summary.json").read_text())
    assert summ["cross_check"] == {"sites": 60, "vectors": 200, "mismatching_sites": 0}
    assert summ["campaign"]["faults"] == 200
    assert summ["register_map"]["exact"] > 0.9 * summ["flipflops"]
