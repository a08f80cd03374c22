"""Collect input statistics of target linears with forward pre-hooks (padding masked out)."""

from __future__ import annotations

import hashlib
import inspect
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import check_target_module_exists
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from osrm.errors import OsrmError
from osrm.progress import tqdm
from osrm.stats.layer import MASK_POLICIES, LayerStats


def find_target_modules(
    model: nn.Module, target_modules: Sequence[str] | str
) -> dict[str, nn.Module]:
    """Linear modules matched by peft-style ``target_modules`` (names, suffixes or a regex).

    Uses peft's own matching rule, so the set is exactly the one a ``LoraConfig`` with the same
    ``target_modules`` would adapt.
    """
    config = LoraConfig(target_modules=target_modules)
    found = {}
    for name, module in model.named_modules():
        if not name or not check_target_module_exists(config, name):
            continue
        if not isinstance(module, (nn.Linear, Conv1D)):
            raise OsrmError(
                f"target_modules {target_modules!r} matches {name} "
                f"({type(module).__name__}), expected only linear layers"
            )
        found[name] = module
    if not found:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise OsrmError(
            f"target_modules {target_modules!r} matches no linear layer; linear names: {linear}"
        )
    return found


def input_dim(module: nn.Module) -> int:
    """d_in of a linear layer (transformers' Conv1D stores its weight as (d_in, d_out))."""
    return module.weight.shape[0] if isinstance(module, Conv1D) else module.in_features


def weight_fingerprint(model: nn.Module, names: Iterable[str]) -> str:
    """Short hash of the named modules' weights (as float32, so an exact dtype cast keeps it)."""
    digest = hashlib.sha256()
    for name in sorted(names):
        module = model.get_submodule(name)
        digest.update(name.encode())
        for param in (module.weight, getattr(module, "bias", None)):
            if param is not None:
                digest.update(
                    param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
                )
    return digest.hexdigest()[:16]


def module_fingerprints(model: nn.Module, names: Iterable[str]) -> dict[str, str]:
    """Module name -> :func:`weight_fingerprint` of that module alone.

    Recorded per adapter (provenance ``base_fingerprints``), so two adapters of one base model
    trained on different target modules are compared on the modules they share.
    """
    return {name: weight_fingerprint(model, [name]) for name in sorted(names)}


@contextmanager
def capture_inputs(
    modules: Mapping[str, nn.Module], fn: Callable[[str, Tensor], None]
) -> Iterator[None]:
    """Call ``fn(name, x)`` with each module's input ``x`` on every forward; hooks removed after."""

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            fn(name, args[0] if args else next(iter(kwargs.values())))

        return hook

    handles = [
        m.register_forward_pre_hook(make_hook(n), with_kwargs=True) for n, m in modules.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Accumulator:
    """Per-run mutable state behind :func:`collect_stats` (private; results are frozen)."""

    def __init__(self, modules: Mapping[str, nn.Module], device: torch.device, dtype: torch.dtype):
        self.sums = {
            n: [
                torch.zeros(input_dim(m), input_dim(m), dtype=dtype, device=device),
                torch.zeros(input_dim(m), dtype=dtype, device=device),
                0,
            ]
            for n, m in modules.items()
        }
        self.dtype = dtype
        self.mask: Tensor | None = None  # (batch, seq) bool for the batch in flight
        self.leader: dict[str, str] = {}  # module -> module whose accumulation it shares
        self.seen: dict[int, tuple[weakref.ref, str]] = {}  # id(input) -> (input, first module)
        self.first_batch = True

    def __call__(self, name: str, x: Tensor) -> None:
        hit = self.seen.get(id(x))
        leader = hit[1] if hit is not None and hit[0]() is x else name
        if leader == name:
            self.seen[id(x)] = (weakref.ref(x), name)
        if self.first_batch:
            self.leader[name] = leader
        elif self.leader.get(name) != leader:
            raise RuntimeError(f"{name}: input sharing with other modules changed between batches")
        if leader == name:
            self._add(name, x)

    def _add(self, name: str, x: Tensor) -> None:
        rows = x.reshape(-1, x.shape[-1])  # (batch*seq, d_in)
        if self.mask is not None:
            if x.shape[:-1] != self.mask.shape:
                raise OsrmError(
                    f"{name}: input shape {tuple(x.shape)} does not match attention_mask "
                    f"{tuple(self.mask.shape)}; use mask='none' for this module"
                )
            rows = rows[self.mask.reshape(-1)]
        rows = rows.to(self.dtype)
        acc = self.sums[name]
        acc[0].addmm_(rows.T, rows)
        acc[1].add_(rows.sum(0))
        acc[2] += rows.shape[0]

    def start_batch(self, mask: Tensor | None) -> None:
        self.mask = mask
        self.seen.clear()

    def result(self) -> dict[str, LayerStats]:
        own = {
            n: LayerStats(xtx.cpu(), xsum.cpu(), int(c))
            for n, (xtx, xsum, c) in self.sums.items()
            if self.leader.get(n, n) == n
        }
        return {n: own[self.leader.get(n, n)] for n in self.sums}


def collect_stats(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    target_modules: Sequence[str] | str,
    *,
    mask: str = "attention",
    dtype: torch.dtype = torch.float64,
    progress: bool = True,
) -> dict[str, LayerStats]:
    """Module name -> :class:`LayerStats` of every target linear's inputs over the batches.

    ``model`` is a frozen transformers model (no adapter), run in eval mode under no_grad; the
    batches hold ``input_ids`` and ``attention_mask`` (batch, seq) and other forward inputs
    (``labels`` and unknown keys are dropped). ``mask="attention"`` counts only non-padding
    tokens, ``"none"`` every position (the reference code's behaviour). Modules fed the identical
    input tensor (q/k/v of one layer) share one accumulation: their entries are the same object.
    """
    if mask not in MASK_POLICIES:
        raise OsrmError(f"mask {mask!r}: expected one of {list(MASK_POLICIES)}")
    modules = find_target_modules(model, target_modules)
    device = next(model.parameters()).device
    accepted = set(inspect.signature(model.forward).parameters) - {"labels"}
    acc = _Accumulator(modules, device, dtype)
    was_training = model.training
    model.eval()
    try:
        with capture_inputs(modules, acc), torch.no_grad():
            for batch in tqdm(batches, desc="statistics", unit="batch", disable=not progress):
                inputs = {k: v.to(device) for k, v in batch.items() if k in accepted}
                attn = inputs.get("attention_mask")
                if mask == "attention" and attn is None:
                    raise OsrmError(
                        "batch has no 'attention_mask'; pass mask='none' to count all tokens"
                    )
                acc.start_batch(attn.bool() if mask == "attention" else None)
                model(**inputs)
                acc.first_batch = False
    finally:
        model.train(was_training)
    return acc.result()
