"""Activation statistics: additive sufficient statistics of each target linear's inputs.

For every LoRA target module and one task we keep, over the task's non-padding tokens,
``xtx = Σ x xᵀ`` (d_in × d_in), ``xsum = Σ x`` (d_in,) and ``count`` (tokens), accumulated in
float64. The statistics are additive, so OSRM's leave-one-out covariance (method.md §2-3),
RegMean's Gram matrices and interference diagnostics are exact arithmetic on saved files.
"""

from osrm.stats.collect import (
    capture_inputs,
    collect_stats,
    find_target_modules,
    input_dim,
    module_fingerprints,
    weight_fingerprint,
)
from osrm.stats.files import FORMAT, StatsMeta, load_stats, save_stats, stats_digest
from osrm.stats.layer import MASK_POLICIES, LayerStats

__all__ = [
    "FORMAT",
    "MASK_POLICIES",
    "LayerStats",
    "StatsMeta",
    "capture_inputs",
    "collect_stats",
    "find_target_modules",
    "input_dim",
    "load_stats",
    "module_fingerprints",
    "save_stats",
    "stats_digest",
    "weight_fingerprint",
]
