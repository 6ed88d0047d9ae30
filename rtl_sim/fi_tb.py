"""cocotb bench: SEUs deposited into the registers of an FI build, checked against the golden model.

Loaded by the simulator (see :func:`edgeml.rtl_sim.fi_runner.run_fi_cocotb`),
not by pytest. The DUT is an FI top (:mod:`edgeml.fault_injection.rtl_fi_build`):
``clk``, ``model_inp``, ``fi_mask_<k>`` (held at zero here), ``model_out`` and
the register ranks ``r0 .. rK`` (``K`` = latency).

Vectors stream back to back: vector ``j`` is driven before rising edge ``j``
and sampled on it. An SEU "at cycle ``c`` in ``r<k>``" is a deposit
``dut.r<k>.value = old ^ (1 << bit)`` on the falling edge between edges ``c``
and ``c + 1``, when ``r<k>`` holds vector ``c - k``; the next edge carries
the corrupted value downstream, so vector ``c - k``'s output changes and no
other. ``model_out`` is read at the end of each cycle (what a consumer
samples on the next edge), so a flip of the output register itself shows too. The bench compares every output with the expectation the runner
computed from the golden model (flipped vectors: the golden model re-run
from the flipped activation bit; others: fault-free), and records which
vectors differ from the fault-free outputs, so a flip that "takes no effect"
cannot pass unnoticed unless the golden model says it is masked.

Input ``.npz`` (``EDGEML_FI_TB_VECTORS``): ``codes`` (N, n_in) input codes,
``expected`` / ``fault_free`` (N, n_out) output codes, ``flips`` (F, 3) rows
``(cycle, rank, bit)``, ``meta`` = [in_width, out_width, out_signed, latency].
A JSON summary goes to ``EDGEML_FI_TB_RESULT``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge


def _pack(row: list[int], width: int) -> int:
    mask = (1 << width) - 1
    word = 0
    for j, v in enumerate(row):
        word |= (int(v) & mask) << (j * width)
    return word


def _decode(word: int, n: int, width: int, signed: bool) -> list[int]:
    mask = (1 << width) - 1
    out = []
    for j in range(n):
        r = (word >> (j * width)) & mask
        if signed and r >> (width - 1):
            r -= 1 << width
        out.append(r)
    return out


@cocotb.test()
async def deposit_seus(dut: Any) -> None:
    """Stream every vector; deposit each scheduled register flip; check every output."""
    data = np.load(os.environ["EDGEML_FI_TB_VECTORS"])
    codes = data["codes"].astype(np.int64)
    expected = data["expected"].astype(np.int64).tolist()
    fault_free = data["fault_free"].astype(np.int64).tolist()
    flips = data["flips"].astype(np.int64).tolist()
    in_w, out_w, out_signed, latency = (int(v) for v in data["meta"])
    n, n_out = len(codes), len(expected[0])
    packed = [_pack(row, in_w) for row in codes.tolist()]
    by_cycle: dict[int, list[tuple[int, int]]] = {}
    for c, k, b in flips:
        by_cycle.setdefault(c, []).append((k, b))
    regs = [getattr(dut, f"r{k}") for k in range(latency + 1)]
    for k in range(latency + 1):
        getattr(dut, f"fi_mask_{k}").value = 0
    dut.model_inp.value = 0
    Clock(dut.clk, 10, unit="ns").start()
    await FallingEdge(dut.clk)
    dut.model_inp.value = packed[0]

    outputs: list[list[int]] = []
    deposits: list[dict[str, int]] = []
    for t in range(n + latency):
        await RisingEdge(dut.clk)  # edge t samples vector t; r<k> now holds vector t - k
        await FallingEdge(dut.clk)  # mid-cycle t: the SEUs of cycle t, then the next input
        for k, b in by_cycle.get(t, []):
            old = regs[k].value.to_unsigned()
            regs[k].value = old ^ (1 << b)
            deposits.append({"cycle": t, "rank": k, "bit": b, "vector": t - k})
        dut.model_inp.value = packed[t + 1] if t + 1 < n else 0
        await ReadOnly()  # end of the cycle: what a consumer samples on edge t + 1
        if t >= latency:
            outputs.append(
                _decode(dut.model_out.value.to_unsigned(), n_out, out_w, bool(out_signed))
            )

    bad = [j for j in range(n) if outputs[j] != expected[j]]
    changed = [j for j in range(n) if outputs[j] != fault_free[j]]
    result = {
        "n_vectors": n,
        "n_flips": len(flips),
        "deposits": deposits,
        "mismatching_vectors": bad,
        "changed_vectors": changed,
        "first_mismatches": [
            {"vector": j, "expected": expected[j], "got": outputs[j]} for j in bad[:10]
        ],
    }
    Path(os.environ["EDGEML_FI_TB_RESULT"]).write_text(json.dumps(result, indent=1))
    assert not bad, f"{len(bad)} vector(s) differ from the golden prediction: {bad[:10]}"
