"""cocotb bench for a pipelined edgeml design inside its valid/reset wrapper.

Loaded by the simulator (see :func:`edgeml.rtl_sim.runner.run_cocotb`), not by
pytest. Inputs come from the ``.npz`` named by ``EDGEML_TB_VECTORS``:

* ``in_raw`` (N, n_inputs) raw port integers, ``expected`` (N, n_outputs)
  golden output codes;
* ``meta`` = [input_bits, output_bits, output_signed, output_frac, latency,
  seed, bubbles].

A JSON summary (vectors, mismatches, first mismatches, timings) is written to
``EDGEML_TB_RESULT``; a test fails when anything mismatches, so the xUnit
``results.xml`` carries the verdict too.

Timing convention: inputs are driven after the falling edge, the DUT samples
them on the next rising edge, and outputs are read in the read-only phase just
after a rising edge.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

_MAX_REPORTED = 20


class _Bench:
    def __init__(self, dut: Any) -> None:
        self.dut = dut
        data = np.load(os.environ["EDGEML_TB_VECTORS"])
        self.in_raw = data["in_raw"].astype(np.int64)
        self.expected = data["expected"].astype(np.int64)
        (self.in_bits, self.out_bits, signed, self.out_frac, self.latency, self.seed, bubbles) = (
            int(v) for v in data["meta"]
        )
        self.out_signed = bool(signed)
        self.bubbles = bool(bubbles)
        self.n_out = self.expected.shape[1]
        mask = (1 << self.in_bits) - 1
        # Pack each vector once: element j at bits [j*W +: W].
        self.packed = []
        for row in self.in_raw.tolist():
            word = 0
            for j, v in enumerate(row):
                word |= (int(v) & mask) << (j * self.in_bits)
            self.packed.append(word)
        self.in_width = len(self.dut.in_data)
        self.rng = random.Random(self.seed)

    def decode(self, word: int) -> list[int]:
        bw, mask = self.out_bits, (1 << self.out_bits) - 1
        out = []
        for j in range(self.n_out):
            r = (word >> (j * bw)) & mask
            if self.out_signed and r >> (bw - 1):
                r -= 1 << bw
            out.append(r >> self.out_frac if self.out_frac >= 0 else r << -self.out_frac)
        return out

    async def start(self) -> None:
        Clock(self.dut.clk, 10, unit="ns").start()
        self.dut.rst.value = 1
        self.dut.in_valid.value = 0
        self.dut.in_data.value = 0
        await FallingEdge(self.dut.clk)

    async def cycle(self) -> tuple[bool, int]:
        """Let one rising edge pass; return (out_valid, out_data) sampled just after it."""
        await RisingEdge(self.dut.clk)
        await ReadOnly()
        valid = str(self.dut.out_valid.value) == "1"
        word = self.dut.out_data.value.to_unsigned() if valid else 0
        await FallingEdge(self.dut.clk)
        return valid, word

    async def reset(self, cycles: int = 3) -> None:
        self.dut.rst.value = 1
        self.dut.in_valid.value = 1  # must be ignored while in reset
        for _ in range(cycles):
            valid, _ = await self.cycle()
            assert not valid, "out_valid asserted during reset"
        self.dut.rst.value = 0
        self.dut.in_valid.value = 0

    async def stream(self, pattern: list[bool]) -> tuple[list[int], int]:
        """Send every vector, in order, on the cycles where ``pattern`` is True.

        On idle cycles in_data carries random garbage (it must be ignored).
        Returns the output words seen with out_valid, and the cycles spent.
        """
        outputs: list[int] = []
        n = len(self.packed)
        sent = cycles = 0
        drain = 0
        while len(outputs) < n and drain <= self.latency + 4:
            if sent < n and pattern[cycles % len(pattern)]:
                self.dut.in_data.value = self.packed[sent]
                self.dut.in_valid.value = 1
                sent += 1
            else:
                self.dut.in_data.value = self.rng.getrandbits(self.in_width)
                self.dut.in_valid.value = 0
                if sent >= n:
                    drain += 1
            valid, word = await self.cycle()
            cycles += 1
            if valid:
                outputs.append(word)
        self.dut.in_valid.value = 0
        return outputs, cycles

    def check(self, outputs: list[int], phase: str, bad: dict[int, dict[str, Any]]) -> int:
        """Compare outputs with expectations; missing outputs count as mismatches."""
        n_bad = 0
        for i, exp in enumerate(self.expected.tolist()):
            got = self.decode(outputs[i]) if i < len(outputs) else None
            if got != exp:
                n_bad += 1
                if i not in bad and len(bad) < _MAX_REPORTED:
                    bad[i] = {"vector": i, "phase": phase, "expected": exp, "got": got}
                elif i not in bad:
                    bad[i] = {}
        if len(outputs) > len(self.expected):
            n_bad += len(outputs) - len(self.expected)
        return n_bad


def _write_result(update: dict[str, Any]) -> None:
    path = Path(os.environ["EDGEML_TB_RESULT"])
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.update(update)
    path.write_text(json.dumps(result, indent=1))


@cocotb.test()
async def reset_and_latency(dut: Any) -> None:
    """No out_valid in or after reset until a vector is sent; it appears exactly `latency` cycles later."""
    b = _Bench(dut)
    await b.start()
    await b.reset()
    for _ in range(b.latency + 3):  # pipeline flushes garbage but must not flag it valid
        valid, _ = await b.cycle()
        assert not valid, "out_valid asserted with no input sent"
    dut.in_data.value = b.packed[0]
    dut.in_valid.value = 1
    valid, word = await b.cycle()  # edge that samples the vector
    dut.in_valid.value = 0
    dut.in_data.value = b.rng.getrandbits(b.in_width)
    waited = 0
    while not valid and waited < b.latency + 5:
        valid, word = await b.cycle()
        waited += 1
    _write_result({"measured_latency": waited if valid else None})
    assert valid, f"no out_valid within {b.latency + 5} cycles"
    assert waited == b.latency, f"out_valid after {waited} cycles, design latency is {b.latency}"
    got, exp = b.decode(word), b.expected[0].tolist()
    assert got == exp, f"vector 0: expected {exp}, got {got}"
    valid, _ = await b.cycle()
    assert not valid, "out_valid stayed high for more than one cycle per vector"


@cocotb.test()
async def stream_vectors(dut: Any) -> None:
    """Back-to-back streaming, then the same vectors with random bubbles; every output checked."""
    b = _Bench(dut)
    await b.start()
    await b.reset()
    bad: dict[int, dict[str, Any]] = {}
    n_checks = n_bad = cycles_total = 0
    t0 = time.perf_counter()
    outputs, cycles = await b.stream([True])
    n_bad += b.check(outputs, "back_to_back", bad)
    n_checks += len(b.expected)
    cycles_total += cycles
    if b.bubbles:
        pattern = [b.rng.random() < 0.7 for _ in range(997)]
        pattern[0] = True
        outputs, cycles = await b.stream(pattern)
        n_bad += b.check(outputs, "bubbles", bad)
        n_checks += len(b.expected)
        cycles_total += cycles
    seconds = time.perf_counter() - t0
    _write_result(
        {
            "n_vectors": len(b.expected),
            "n_checks": n_checks,
            "n_mismatching_vectors": len(bad),
            "n_mismatching_checks": n_bad,
            "mismatches": [v for v in bad.values() if v],
            "cycles": cycles_total,
            "stream_seconds": seconds,
        }
    )
    assert n_bad == 0, f"{len(bad)} of {len(b.expected)} vectors mismatched the golden model"
