"""The files of a merged LoRA adapter: factors concatenated exactly, the head, peft's config."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from osrm.errors import OsrmError
from osrm.merging.deltas import CONFIG_FILE, WEIGHTS_FILE, LoraDeltas


def concat_factors(
    sources: Sequence[LoraDeltas], coeffs: Tensor | Mapping[str, Tensor]
) -> dict[str, tuple[Tensor, Tensor]]:
    """Module -> B (d_out, Σ r_i), A (Σ r_i, d_in) with B A = Σ c_i s_i B_i A_i exactly
    (``coeffs``: k coefficients, or module -> k coefficients).

    The outputs are allocated first and filled one adapter at a time, so only one adapter
    file is mapped at once (a missing module is a zero delta: it adds no rank).
    """
    out, filled = {}, {}
    for name in sorted(set().union(*sources)):
        having = [s for s in sources if name in s]
        rank = sum(s.modules[name].rank for s in having)
        d_out, d_in = having[0].shape(name)
        out[name] = (torch.empty(d_out, rank), torch.empty(rank, d_in))
        filled[name] = 0

    def coeff(name: str, i: int) -> float:
        return float((coeffs[name] if isinstance(coeffs, Mapping) else coeffs)[i])

    for i, source in enumerate(sources):
        with source.opened():
            for name in source:
                b, a = source.factors(name)
                c = coeff(name, i)
                lo, hi = filled[name], filled[name] + a.shape[0]
                torch.mul(b, c, out=out[name][0][:, lo:hi])
                out[name][1][lo:hi].copy_(a)
                filled[name] = hi
    return out


def pick_head(adapters: Sequence[LoraDeltas], tasks: Sequence[str], head: str | bool) -> str | None:
    with_heads = [t for a, t in zip(adapters, tasks, strict=True) if a.head_keys]
    if head is False or not with_heads:
        return None
    if head is True:
        return with_heads[0]
    if head not in with_heads:
        raise OsrmError(f"head {head!r}: expected one of the tasks with a head {with_heads}")
    return head


def write_adapter(
    directory: Path, template: Mapping, factors: Mapping, heads: Mapping[str, Tensor]
) -> None:
    """peft files for factors whose scale is folded into B (lora_alpha = r: scaling 1)."""
    tensors = {f"base_model.model.{name}": t.contiguous() for name, t in heads.items()}
    ranks = {}
    for name, (b, a) in factors.items():
        module = name.removesuffix(".weight")
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
        ranks[module] = a.shape[0]
    r = max(ranks.values())
    # full dotted names, regex-escaped: peft reads pattern keys as regexes
    pattern = {re.escape(m): rm for m, rm in ranks.items() if rm != r}
    config = dict(template)
    config.update(
        r=r,
        lora_alpha=r,
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        use_rslora=False,
        target_modules=sorted(ranks),
        init_lora_weights=True,
        modules_to_save=template.get("modules_to_save") if heads else None,
        inference_mode=True,
        layers_to_transform=None,
        layers_pattern=None,
        exclude_modules=None,
    )
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
