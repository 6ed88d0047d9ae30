"""``edgeml faults rtl``: a register campaign on a run folder's RTL, cross-checked against golden.

Builds the fault-injection layer build of the run's golden model
(:func:`.rtl_fi_build.generate_fi_rtl`: one register rank per layer output,
each with an XOR-mask port), maps every flip-flop back to the golden quantity
it holds (:func:`.rtl_regmap.map_registers`, checked against yosys' flip-flop
list), flips register bits during Verilator simulation
(:func:`.rtl_faults.run_rtl_campaign`) and checks, for a sample of exactly
mapped bits, that the RTL outputs equal the golden model's outputs with that
activation bit flipped, integer for integer. Writes
``faults/rtl/{rtl_campaign.npz, rtl_summary.json}``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.errors import ConfigError, MismatchError
from edgeml.manifest import write_json


def run_rtl_from_run(
    run_dir: str | Path,
    *,
    n_samples: int | None = None,
    n_sites: int | None = None,
    n_check: int = 200,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Register campaign + golden cross-check on ``run_dir``; raises MismatchError on disagreement.

    ``n_sites`` samples that many flip-flops (default: every one);
    ``n_check`` exactly mapped bits are compared with golden activation flips.
    """
    from .rtl_faults import (
        RtlFaultSite,
        enumerate_rtl_sites,
        golden_act_flip,
        run_rtl_campaign,
        sample_rtl_sites,
    )
    from .rtl_fi_build import generate_fi_rtl
    from .rtl_regmap import map_registers
    from .runner import load_run_inputs

    for name, v in (("n_sites", n_sites), ("n_check", n_check)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ConfigError(f"{name} must be an integer >= 0, got {v!r}")
    t0 = time.time()
    inp = load_run_inputs(run_dir, n_samples)
    g, x, y = inp.g, inp.x, inp.labels
    out = Path(run_dir) / "faults" / "rtl"
    out.mkdir(parents=True, exist_ok=True)
    ident = "".join(c if c.isalnum() else "_" for c in str(inp.identity["design"]))
    design = generate_fi_rtl(g, out / "build", f"fi_{ident}")
    build_s = design.build()
    regmap = map_registers(design, g)
    sites = (
        enumerate_rtl_sites(design) if n_sites is None else sample_rtl_sites(design, n_sites, seed)
    )
    sdc = "top1" if y is not None else "any"
    res = run_rtl_campaign(design, x, sites, labels=y, sdc=sdc, progress=progress)
    res.save(out / "rtl_campaign.npz")

    # cross-check: RTL register flip == golden activation-bit flip, on every sample
    exact = regmap.select("exact")
    rng = np.random.default_rng(seed)
    picks = [exact[i] for i in rng.choice(len(exact), min(n_check, len(exact)), replace=False)]
    chk = run_rtl_campaign(
        design,
        x,
        [RtlFaultSite(b.register, b.bit) for b in picks],
        return_outputs=True,
        progress=False,
    )
    bad = []
    for i, b in enumerate(picks):
        want = golden_act_flip(g, x, b.tensor, b.index, b.tbit, b.nbits)
        if not np.array_equal(chk.outputs[i], want):
            bad.append(f"{b.register}[{b.bit}] = {b.tensor}[{b.index}] bit {b.tbit}")
    summary = {
        "flipflops": len(regmap.bits),
        "register_map": regmap.counts(),
        "build_seconds": round(float(build_s or 0.0), 2),
        "campaign": {k: v for k, v in res.summary().items() if k != "per_register"},
        "per_register": res.per_register(),
        "cross_check": {"sites": len(picks), "vectors": len(x), "mismatching_sites": len(bad)},
        "seconds": round(time.time() - t0, 2),
    }
    write_json(out / "rtl_summary.json", summary)
    if bad:
        raise MismatchError(
            f"{len(bad)} of {len(picks)} RTL register flips differ from the golden model's "
            f"activation flips, first: {bad[0]} (see {out / 'rtl_summary.json'})"
        )
    return summary
