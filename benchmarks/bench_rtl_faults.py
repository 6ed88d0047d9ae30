"""RTL register-campaign throughput on the digits MLP fault-injection build.

Builds (or reuses from the Verilator cache) the layer build of a trained digits
MLP, maps its flip-flops, then flips every flip-flop over 1,000 vectors (one
upset per vector as it passes) and, separately, one SEU per flip-flop at a
single cycle. Prints faults/s for both.

    python benchmarks/bench_rtl_faults.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    from test_rtl_faults import _digits_mlp

    from edgeml.fault_injection.rtl_faults import (
        RtlFaultSite,
        enumerate_rtl_sites,
        run_rtl_campaign,
    )
    from edgeml.fault_injection.rtl_fi_build import generate_fi_rtl
    from edgeml.fault_injection.rtl_regmap import map_registers

    work = Path(tempfile.mkdtemp())
    g, codes, y = _digits_mlp(work)
    design = generate_fi_rtl(g, work / "fi_layers", "digits_fi", boundaries="ops")
    t0 = time.perf_counter()
    design.build()
    print(f"build: {time.perf_counter() - t0:.1f} s (0 if cached)")
    summary = map_registers(design, g).summary()
    print({k: v for k, v in summary.items() if k != "per_register"})
    x, lab = codes[:1000], y[:1000]
    sites = enumerate_rtl_sites(design)
    res = run_rtl_campaign(design, x, sites, labels=lab, progress=False)
    print(
        f"whole-stream faults: {len(sites)} x {len(x)} vectors in {res.seconds:.1f} s = "
        f"{res.faults_per_s:,.0f} faults/s ({res.vectors_per_s:,.0f} fault-vectors/s)"
    )
    one = [RtlFaultSite(s.register, s.bit, 1, 500) for s in sites]
    res1 = run_rtl_campaign(design, x, one, progress=False)
    print(
        f"single-cycle SEUs: {len(one)} in {res1.seconds:.2f} s = {res1.faults_per_s:,.0f} faults/s"
    )


if __name__ == "__main__":
    main()
