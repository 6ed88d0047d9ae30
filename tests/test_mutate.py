"""Mutation testing of verify (issue 8): single-constant mutants of every artifact kind.

The unit tests check the pieces on their own (the netlist interpreter's
primitives against plain integer arithmetic, the Verilog constant enumeration,
the CLI). The flow tests take the session's digits-MLP run (``mlp_flow_run``
in conftest.py): random golden / QONNX / header mutants must be caught and
named wherever they change an output; hand-made equivalent mutants (a clamp
bound never reached, a QONNX value that rounds to the same code, a wider
unsigned adder input) must pass verify, and must really be equivalent, which
the tests confirm with a check of their own (the recompiled golden model, or a
Verilator build of the mutated Verilog).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeml import mutate as M
from edgeml import netlist as N
from edgeml.manifest import sha256, write_json

# --------------------------------------------------------------------------- unit


def _signed(v: int, w: int) -> int:
    v &= (1 << w) - 1
    return v - (1 << w) if v >> (w - 1) else v


@pytest.mark.parametrize("sub", [0, 1])
@pytest.mark.parametrize("shift", [-2, 0, 3])
@pytest.mark.parametrize(("s0", "s1"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_shift_adder_is_a_plus_minus_b_shifted(sub, shift, s0, s1):
    """``shift_adder`` = a +- (b << shift) (or (a << -shift) +- b), mod 2**BW_OUT, as da4ml means it."""
    rng = np.random.default_rng(0)
    bw0, bw1 = 7, 5
    a = rng.integers(0, 1 << bw0, 500).astype(np.uint64)
    b = rng.integers(0, 1 << bw1, 500).astype(np.uint64)
    bwo = 8  # <= BW_ADD for every combination here (a wider select is undefined)
    got, w = N._primitive("shift_adder", [bw0, bw1, s0, s1, bwo, shift, sub], [(a, bw0), (b, bw1)])
    assert w == bwo
    for ai, bi, gi in zip(a.tolist(), b.tolist(), got.tolist(), strict=True):
        x = _signed(ai, bw0) if s0 else ai
        y = _signed(bi, bw1) if s1 else bi
        if shift >= 0:
            ref = x - (y << shift) if sub else x + (y << shift)
        else:
            ref = (x << -shift) - y if sub else (x << -shift) + y
        assert gi == ref % (1 << bwo)


def test_mux_and_negative_primitives():
    a = np.array([3, 200, 17], np.uint64)
    b = np.array([5, 6, 255], np.uint64)
    key = np.array([1, 0, 0], np.uint64)
    got, _ = N._primitive("mux", [8, 8, 0, 1, 9, 0, 1], [(key, 1), (a, 8), (b, 8)])
    # key ? a : -(sign-extended b), in 9 bits
    assert got.tolist() == [3, (-6) % 512, 1]  # -(-1) = 1
    neg, w = N._primitive("negative", [8, 9, 1], [(b, 8)])
    assert w == 9 and neg.tolist() == [(-5) % 512, (-6) % 512, 1]
    with pytest.raises(M.NetlistUnsupported):  # a part-select beyond the adder is undefined
        N._primitive("shift_adder", [4, 4, 0, 0, 9, 0, 0], [(a, 4), (b, 4)])


STAGE = """`timescale 1 ns / 1 ps

module tiny_stage0 (
    input [15:0] model_inp,
    output [8:0] model_out
);
    wire [7:0] v0; assign v0[7:0] = model_inp[7:0]; // 0.0
    wire [7:0] v1; assign v1[7:0] = model_inp[15:8]; // 0.0
    wire [8:0] v2; shift_adder #(8, 8, 1, 1, 9, -1, 0) op_2 (v0[7:0], v1[7:0], v2[8:0]); // 1.0
    wire [8:0] v3; shift_adder #(9, 6, 1, 0, 9, 0, 1) op_3 (v2[8:0], 6'b101101, v3[8:0]); // 1.0
    wire [5:0] v4; assign v4[5:0] = v3[7:2] & {6{~v3[8]}}; // 1.0
    wire [2:0] v5; assign v5[2:0] = 'b101; // 1.0
    assign model_out[8:0] = v3[8:0];
endmodule
"""


def test_verilog_sites_and_single_token_mutants_stay_valid(tmp_path):
    f = tmp_path / "rtl" / "src" / "tiny_stage0.v"
    f.parent.mkdir(parents=True)
    f.write_text(STAGE)
    sites = M.verilog_sites(tmp_path, files=[f])
    cats = {s.category for s in sites}
    assert cats == {"param", "literal", "select"}
    assert sum(s.category == "param" for s in sites) == 14  # 7 per shift_adder
    assert {s.old for s in sites if s.category == "literal"} == {"6'b101101", "'b101"}
    sel = {s.old for s in sites if s.category == "select"}
    assert "model_inp[15:8]" in sel and "v3[8]" in sel
    # every mutant changes exactly one constant and is still Verilog (pyverilog's AST)
    lines = STAGE.split("\n")
    ref = M.pyverilog_lines(STAGE, tmp_path / "pv")
    rng = np.random.default_rng(1)
    for s in sites:
        new = M._mutate_verilog_token(s, rng)
        if new is None:
            continue
        assert new != s.old
        line = lines[s.line - 1]
        assert line[s.start : s.end] == s.old
        text = "\n".join(
            [*lines[: s.line - 1], line[: s.start] + new + line[s.end :], *lines[s.line :]]
        )
        got = M.pyverilog_lines(text, tmp_path / "pv")
        assert len(got) == len(ref)
        assert sum(a != b for a, b in zip(ref, got, strict=True)) == 1, (s, new)


def test_exact_decimal_and_code_choice():
    assert M._exact_decimal(-3, 4) == "-0.1875"
    assert M._exact_decimal(5, 0) == "5"
    assert M._exact_decimal(3, -2) == "12"
    rng = np.random.default_rng(0)
    for _ in range(200):
        new = M._step_or_flip(-31, -31, 31, rng, bits=6)
        assert new != -31 and -31 <= new <= 31


def _result(kind: str, outcome: str, changes: bool | None, named_ok: bool | None = True):
    m = M.Mutant(kind, "f", "loc", "1", "2", "layer")
    return M.MutantResult(m, outcome, changes_output=changes, named_ok=named_ok, reason="why")


def test_summary_lists_escaped_and_misnamed_mutants_loudly():
    rs = [
        _result("golden", "caught", True),
        _result("golden", "escaped", True),
        _result("golden", "equivalent", False),
        _result("qonnx", "caught", True, named_ok=False),
    ]
    report = {
        "run": "r",
        "vectors": 10,
        "seed": 0,
        "seconds": 1.0,
        "summary": M.summarise(rs),
        "results": [r.to_dict() for r in rs],
        "escaped": [rs[1].to_dict()],
        "misnamed": [rs[3].to_dict()],
    }
    s = report["summary"]["golden"]
    assert (s["mutants"], s["caught"], s["equivalent"], s["escaped"]) == (3, 1, 1, 1)
    assert s["changing_outputs"] == 2 and s["changing_caught"] == 1
    text = M.format_summary(report)
    assert "VERIFY MISSED 1 MUTANT(S)" in text
    assert "not named at the mutated layer (1)" in text
    assert "equivalent mutants" in text and "why" in text


def test_cli_help_and_usage_errors(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "edgeml.mutate", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--kinds" in out.stdout and "--n-verilog" in out.stdout
    assert M.main(["--run", str(tmp_path), "--kinds", "nonsense"]) == 2
    assert M.main(["--run", str(tmp_path / "missing")]) == 1


# --------------------------------------------------------------------------- on a run


def _tree_hashes(*folders: Path) -> dict[str, str]:
    return {str(p): sha256(p) for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def campaign(mlp_flow_run, tmp_path_factory):
    """Random golden, QONNX and header mutants of the session's MLP run (about a minute)."""
    run, hls = mlp_flow_run
    before = _tree_hashes(run, hls)
    report = M.run_mutation_campaign(
        run,
        n_per_kind={"golden": 3, "qonnx": 3, "hls_header": 2},
        seed=7,
        kinds=("hls_header", "qonnx", "golden"),
        progress=False,
        workdir=tmp_path_factory.mktemp("mutants"),
    )
    return report, before, _tree_hashes(run, hls)


@pytest.mark.slow
@pytest.mark.hls
@pytest.mark.rtl
def test_output_changing_mutants_are_caught_and_named(campaign):
    report, _, _ = campaign
    assert report["escaped"] == [], M.format_summary(report)
    results = report["results"]
    assert {r["mutant"]["kind"] for r in results} == {"golden", "qonnx", "hls_header"}
    for r in results:
        assert r["outcome"] in ("caught", "equivalent"), r
        if r["changes_output"]:
            assert r["outcome"] == "caught", r
        if r["outcome"] == "caught":
            assert r["named_ok"], (r["mutant"], r["named"])
    headers = [r for r in results if r["mutant"]["kind"] == "hls_header"]
    # verify compares every header element with the .txt C-sim loads: all caught, by that level
    assert all(r["named_by"] == "hls4ml weight headers" for r in headers)
    assert all(r["drift"] for r in results)  # every mutated file is listed as drifted


@pytest.mark.slow
@pytest.mark.hls
@pytest.mark.rtl
def test_campaign_never_writes_the_run_folder(campaign):
    _, before, after = campaign
    assert before == after


@pytest.fixture(scope="module")
def workspace(mlp_flow_run, tmp_path_factory):
    run, _ = mlp_flow_run
    ws = M.Workspace(run, tmp_path_factory.mktemp("ws"))
    from edgeml.flow import verify_run

    assert verify_run(ws.run)["passed"]
    ws.freeze()
    base = M.Baseline.load(run)
    return ws, base


def _golden_mutant(ws: M.Workspace, op_name: str, field: str, new: int) -> M.Mutant:
    from edgeml.golden import GoldenModel

    path = ws.run / M.GOLDEN_IR
    g = GoldenModel.load(path)
    k, op = next((i, o) for i, o in enumerate(g.ops) if o.name == op_name)
    old = getattr(op, field)
    setattr(op, field, new)
    g.save(path)
    return M.Mutant(
        "golden",
        M.GOLDEN_IR,
        field,
        str(old),
        str(new),
        f"{op.name} ({op.kind})",
        op.name,
        {"op": k, "field": field, "index": None},
    )


@pytest.mark.slow
@pytest.mark.hls
@pytest.mark.rtl
def test_unreachable_clamp_bound_is_an_equivalent_mutant(workspace):
    """A requantiser after a ReLU never sees a negative value: lowering its ``lo`` changes nothing."""
    ws, base = workspace
    g = base.golden
    k = next(
        i
        for i, op in enumerate(g.ops)
        if op.kind == "requant" and i and g.ops[i - 1].kind == "relu"
    )
    op = g.ops[k]
    try:
        m = _golden_mutant(ws, op.name, "lo", op.lo - 1)
        res = M.classify_mutant(ws, M.GoldenMutator(), m, base)
        assert res.outcome == "equivalent", res
        assert "never reached" in res.reason
        # independently: the mutated IR gives every output code unchanged
        from edgeml.golden import GoldenModel

        mutated = GoldenModel.load(ws.run / M.GOLDEN_IR)
        assert np.array_equal(mutated.predict(base.x), base.ref)
        # ... while raising it past 0 clips real values and is caught at that op
        ws.restore()
        m = _golden_mutant(ws, op.name, "lo", op.lo + 1)
        res = M.classify_mutant(ws, M.GoldenMutator(), m, base)
        assert res.outcome == "caught" and res.named_ok, res
    finally:
        ws.restore()


@pytest.mark.slow
@pytest.mark.hls
@pytest.mark.rtl
def test_qonnx_value_that_rounds_to_the_same_code_is_equivalent(workspace):
    import onnx
    from onnx import numpy_helper

    from edgeml.golden import GoldenModel

    ws, base = workspace
    mut = M.QonnxMutator()
    site = next(s for s in mut.sites(ws.run) if s.role == "weight")
    path = ws.run / mut.file
    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if i.name == site.init)
    quant = next(n for n in model.graph.node if n.name == site.quant)
    scale = float(np.asarray(M._quant_params(model, quant)["scale"]).reshape(-1)[0])
    arr = numpy_helper.to_array(init).copy()
    steps = arr.reshape(-1) / scale
    # an element well inside the range whose value sits near the middle of its rounding bin
    k = int(np.flatnonzero((np.abs(steps - np.round(steps)) < 0.1) & (np.abs(steps) < 8))[0])
    old = float(arr.reshape(-1)[k])
    arr.reshape(-1)[k] = np.float32(old + 0.2 * scale)
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(path))
    m = M.Mutant(
        "qonnx",
        mut.file,
        f"{site.init}[{k}]",
        repr(old),
        repr(float(arr.reshape(-1)[k])),
        f"{site.quant} -> {site.consumer}",
        None,
        {"scale": scale, "index": [k]},
    )
    try:
        res = M.classify_mutant(ws, mut, m, base)
        assert res.outcome == "equivalent", res
        assert "same code" in res.reason or "still quantises to 0" in res.reason, res.reason
        # independently: the golden model compiled from the mutated QONNX has the same constants
        g1 = GoldenModel.from_onnx(path)
        c0, c1 = base.golden.constants(), g1.constants()
        assert c0.keys() == c1.keys()
        assert all(np.array_equal(c0[key], c1[key]) for key in c0)
    finally:
        ws.restore()


def _verilog_site(ws: M.Workspace, pred) -> M.VerilogSite:
    return next(s for s in M.verilog_sites(ws.run) if pred(s))


def _apply_verilog(ws: M.Workspace, site: M.VerilogSite, new: str) -> M.Mutant:
    path = ws.run / site.file
    lines = path.read_text().split("\n")
    line = lines[site.line - 1]
    lines[site.line - 1] = line[: site.start] + new + line[site.end :]
    path.write_text("\n".join(lines))
    return M.Mutant(
        "verilog",
        site.file,
        f"line {site.line}",
        site.old,
        new,
        f"{site.file}:{site.line} {site.where}",
        None,
        {
            "line": site.line,
            "category": site.category,
            "instance": site.where,
            "what": site.what,
            "module": Path(site.file).stem,
        },
    )


@pytest.mark.slow
@pytest.mark.hls
@pytest.mark.rtl
def test_verilog_sign_flip_is_caught_at_its_file_and_line(workspace):
    """An adder turned into a subtractor changes outputs: the RTL level fails and names the line."""
    ws, base = workspace

    def first_stage_add(s: M.VerilogSite) -> bool:
        return (
            s.category == "param"
            and s.what == "shift_adder.IS_SUB"
            and s.old == "0"
            and s.file.endswith("_stage0.v")
        )

    # the first such adder whose flip reaches an output (the interpreter screens without a build)
    for site in (s for s in M.verilog_sites(ws.run) if first_stage_add(s)):
        m = _apply_verilog(ws, site, "1")
        changes, _, _ = M.VerilogMutator().check(ws, m, base)
        if changes:
            break
        ws.restore()
    try:
        res = M.classify_mutant(ws, M.VerilogMutator(), m, base)
        assert res.changes_output, res
        assert res.outcome == "caught" and "RTL (Verilator)" in res.failed_levels, res
        assert res.named_ok, res.named
        assert res.golden_layer_ok in (True, None), (res.named, m.detail)
    finally:
        ws.restore()


@pytest.mark.slow
@pytest.mark.hls
@pytest.mark.rtl
def test_wider_unsigned_adder_input_is_equivalent_and_verilator_agrees(workspace):
    """One more zero-extended bit on an unsigned adder input changes no value anywhere."""
    from edgeml.rtl import RtlDesign

    ws, base = workspace
    text = {}

    def unsigned_in0(s: M.VerilogSite) -> bool:
        if s.category != "param" or s.what != "shift_adder.BW_INPUT0":
            return False
        line = text.setdefault(s.file, (ws.run / s.file).read_text().split("\n"))[s.line - 1]
        params = line[line.index("#(") + 2 : line.index(")")].split(",")
        return params[2].strip() == "0"  # SIGNED0 = 0

    site = _verilog_site(ws, unsigned_in0)
    m = _apply_verilog(ws, site, str(int(site.old) + 1))
    try:
        res = M.classify_mutant(ws, M.VerilogMutator(), m, base)
        assert res.outcome == "equivalent", res
        assert "unchanged on every vector" in res.reason
        # independently of verify and of the interpreter: Verilator on the mutated sources
        d = RtlDesign.load(ws.run / "rtl")
        d.build(use_cache=False)
        assert np.array_equal(d.predict_int(base.x), base.ref)
    finally:
        ws.restore()


@pytest.mark.slow
@pytest.mark.hls
@pytest.mark.rtl
def test_netlist_interpreter_is_bit_exact_on_the_shipped_verilog(workspace):
    _, base = workspace
    assert base.netlist is not None, base.netlist_note
    assert np.array_equal(base.netlist.predict(base.x[:2000]), base.ref[:2000])
    # and it maps signals to golden layers: every param op's output is carried by some signal
    lm = M.LayerMap(base.golden, base.x, base.netlist)
    carried = {base.golden.ops[k].name for k in lm.signal_op.values()}
    assert {op.name for op in base.golden.param_ops} <= carried


def test_report_is_json_serialisable(tmp_path):
    rs = [_result("golden", "caught", True)]
    report = {"results": [r.to_dict() for r in rs], "summary": M.summarise(rs)}
    p = tmp_path / "r.json"
    write_json(p, report)
    assert json.loads(p.read_text())["summary"]["golden"]["caught"] == 1
