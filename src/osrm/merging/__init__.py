"""Exact merging of LoRA adapters (and full fine-tunes) in ΔW space, streaming.

Task vectors are read lazily (``lora_deltas``: ΔW = s·B·A per module, any rank, rsLoRA and
rank/alpha patterns honoured; ``full_deltas``: θ_ft − θ_0 without heads), merged one module at a
time by a method of ``METHODS`` (one signature: ``fn(deltas (k, d_out, d_in), weights (k,),
**hp) -> ΔW``, registered with its traits by ``@register`` where it is defined), and written as
a dense backbone with per-task heads or as a peft LoRA adapter (exact concatenation for linear
methods, truncated SVD otherwise), each with a JSON record of the merge.
"""

from osrm.heads import load_head, save_heads
from osrm.merging.deltas import LoraDeltas, file_sha256, lora_deltas
from osrm.merging.full_deltas import HEAD_NAMES, FullDeltas, full_deltas
from osrm.merging.grams import gram_lookup
from osrm.merging.loading import check_same_base, coverage_gaps, load_adapters
from osrm.merging.merge import iter_merged, merge_adapters, merge_deltas
from osrm.merging.methods import (
    breadcrumbs,
    dare_linear,
    dare_ties,
    magnitude_prune,
    task_arithmetic,
    ties,
    weight_average,
)
from osrm.merging.outputs import (
    MergedAdapter,
    apply_deltas,
    save_merged_adapter,
    save_merged_model,
)
from osrm.merging.primitives import (
    disjoint_mean,
    drop_random,
    elect_sign,
    trim_magnitude,
)
from osrm.merging.record import MANIFEST_FILE, read_manifest
from osrm.merging.registry import (
    METHODS,
    Hyper,
    Method,
    check_hyperparameters,
    get_method,
    hyperparameters,
    methods_with,
    register,
    validate_hyperparameters,
)
from osrm.merging.structured import knots, regmean, tsv

__all__ = [
    "HEAD_NAMES",
    "MANIFEST_FILE",
    "METHODS",
    "FullDeltas",
    "Hyper",
    "LoraDeltas",
    "Method",
    "MergedAdapter",
    "apply_deltas",
    "breadcrumbs",
    "check_hyperparameters",
    "check_same_base",
    "coverage_gaps",
    "dare_linear",
    "dare_ties",
    "disjoint_mean",
    "drop_random",
    "elect_sign",
    "file_sha256",
    "full_deltas",
    "get_method",
    "gram_lookup",
    "hyperparameters",
    "iter_merged",
    "knots",
    "load_adapters",
    "load_head",
    "lora_deltas",
    "magnitude_prune",
    "merge_adapters",
    "merge_deltas",
    "methods_with",
    "read_manifest",
    "register",
    "regmean",
    "save_heads",
    "save_merged_adapter",
    "save_merged_model",
    "task_arithmetic",
    "ties",
    "trim_magnitude",
    "tsv",
    "validate_hyperparameters",
    "weight_average",
]
