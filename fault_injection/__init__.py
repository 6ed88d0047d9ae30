"""Fault injection: fault sites (where/what), injectors (how) and campaigns (measure).

The fault model (:mod:`.sites`) and the injector (:mod:`.inject`) are kept
apart: a site is a small frozen value, an injector corrupts integer codes with
numpy bitwise ops and returns a copy, and a campaign (:mod:`.campaign`) runs a
list of sites on the golden model.
"""

from __future__ import annotations

from .campaign import (
    CampaignResult,
    FaultRecord,
    run_param_campaign,
    run_param_campaign_naive,
)
from .inject import apply_bit_fault, apply_bit_faults, fault_deltas, fault_values
from .sites import FaultSite, count_param_sites, enumerate_param_sites

__all__ = [
    "CampaignResult",
    "FaultRecord",
    "FaultSite",
    "apply_bit_fault",
    "apply_bit_faults",
    "count_param_sites",
    "enumerate_param_sites",
    "fault_deltas",
    "fault_values",
    "run_param_campaign",
    "run_param_campaign_naive",
]
