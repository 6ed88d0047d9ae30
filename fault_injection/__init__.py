"""Fault injection: fault sites (where/what), injectors (how) and campaigns (measure).

The fault model (:mod:`.sites`) and the injector (:mod:`.inject`) are kept
apart: a site is a small frozen value, an injector corrupts integer codes with
numpy bitwise ops and returns a copy, and a campaign (:mod:`.campaign`) is a
list of sites plus a seed, scored on the golden model by the fast engine
(:mod:`.engine`) or the naive reference. :mod:`.ber` draws random
bit-error-rate trials (several sites at once) and sweeps accuracy over BER.

Only the engine's own modules are imported here, so a broken sibling module
(store, runner, samplers, RTL) cannot break ``import edgeml.fault_injection``.
"""

from __future__ import annotations

from .ber import BerSweepResult, MultiFaultResult, ber_trials, run_ber_sweep, run_multi_faults
from .campaign import (
    ENGINE_VERSION,
    Campaign,
    CampaignResult,
    FaultRecord,
    clear_engine_cache,
    run_campaign,
    run_campaign_naive,
    run_param_campaign,
    run_param_campaign_naive,
)
from .engine import FaultEngine
from .inject import (
    apply_bit_fault,
    apply_bit_faults,
    fault_deltas,
    fault_values,
    faulty_model,
    run_with_faults,
)
from .sites import (
    FAULT_KINDS,
    PARAMS,
    FaultSite,
    MultiFault,
    activation_layers,
    count_param_sites,
    enumerate_param_sites,
    enumerate_sites,
)

__all__ = [
    "ENGINE_VERSION",
    "FAULT_KINDS",
    "PARAMS",
    "BerSweepResult",
    "Campaign",
    "CampaignResult",
    "FaultEngine",
    "FaultRecord",
    "FaultSite",
    "MultiFault",
    "MultiFaultResult",
    "activation_layers",
    "apply_bit_fault",
    "apply_bit_faults",
    "ber_trials",
    "clear_engine_cache",
    "count_param_sites",
    "enumerate_param_sites",
    "enumerate_sites",
    "fault_deltas",
    "fault_values",
    "faulty_model",
    "run_ber_sweep",
    "run_campaign",
    "run_campaign_naive",
    "run_multi_faults",
    "run_param_campaign",
    "run_param_campaign_naive",
    "run_with_faults",
]
