"""Activation statistics: additive sufficient statistics of each target linear's inputs.

For every LoRA target module and one task we keep, over the task's non-padding tokens,
``xtx = Σ x xᵀ`` (d_in × d_in), ``xsum = Σ x`` (d_in,) and ``count`` (tokens), accumulated in
float64. The statistics are additive, so OSRM's leave-one-out covariance (method.md §2-3),
RegMean's Gram matrices and interference diagnostics are exact arithmetic on saved files.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import check_target_module_exists
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from osrm import __version__
from osrm.atomic import atomic_file
from osrm.errors import OsrmError

FORMAT = "osrm.stats/1"
MASK_POLICIES = ("attention", "none")


@dataclass(frozen=True)
class LayerStats:
    """Sufficient statistics of one module's inputs over one set of tokens.

    Attributes:
        xtx: (d_in, d_in) float64, Σ x xᵀ.
        xsum: (d_in,) float64, Σ x.
        count: number of tokens (rows x).
    """

    xtx: Tensor
    xsum: Tensor
    count: int

    def __add__(self, other: LayerStats) -> LayerStats:
        if not isinstance(other, LayerStats):
            return NotImplemented
        if other.xtx.shape != self.xtx.shape:
            raise OsrmError(f"cannot add statistics of d_in {other.d_in} to d_in {self.d_in}")
        return LayerStats(self.xtx + other.xtx, self.xsum + other.xsum, self.count + other.count)

    def __radd__(self, other: object) -> LayerStats:
        # lets sum(list_of_stats) start from 0
        return self if other == 0 else self.__add__(other)  # type: ignore[arg-type]

    @property
    def d_in(self) -> int:
        return self.xtx.shape[0]

    def second_moment(self) -> Tensor:
        """(d_in, d_in) uncentred second moment E[x xᵀ]."""
        return self.xtx / max(self.count, 1)

    def mean(self) -> Tensor:
        """(d_in,) mean input E[x]."""
        return self.xsum / max(self.count, 1)

    def covariance(self) -> Tensor:
        """(d_in, d_in) centred covariance E[x xᵀ] − μ μᵀ."""
        mu = self.mean()
        return self.second_moment() - torch.outer(mu, mu)


@dataclass(frozen=True)
class StatsMeta:
    """What a statistics file says about its provenance (stored as safetensors metadata)."""

    base_model: str
    fingerprint: str
    task: str
    n_examples: int
    n_tokens: int
    max_length: int | None = None
    mask: str = "attention"
    osrm_version: str = __version__


def find_target_modules(model: nn.Module, target_modules: Sequence[str] | str) -> dict[str, nn.Module]:
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
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise OsrmError(f"target_modules {target_modules!r} matches no linear layer; linear names: {linear}")
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
                digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@contextmanager
def capture_inputs(
    modules: Mapping[str, nn.Module], fn: Callable[[str, Tensor], None]
) -> Iterator[None]:
    """Call ``fn(name, x)`` with each module's input ``x`` on every forward; hooks always removed."""

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            fn(name, args[0] if args else next(iter(kwargs.values())))

        return hook

    handles = [m.register_forward_pre_hook(make_hook(n), with_kwargs=True) for n, m in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Accumulator:
    """Per-run mutable state behind :func:`collect_stats` (private; results are frozen)."""

    def __init__(self, modules: Mapping[str, nn.Module], device: torch.device, dtype: torch.dtype):
        self.sums = {
            n: [torch.zeros(input_dim(m), input_dim(m), dtype=dtype, device=device),
                torch.zeros(input_dim(m), dtype=dtype, device=device), 0]
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
        own = {n: LayerStats(xtx.cpu(), xsum.cpu(), int(c)) for n, (xtx, xsum, c) in self.sums.items()
               if self.leader.get(n, n) == n}
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
    """Accumulate input statistics of every target linear over the batches.

    Args:
        model: a frozen transformers model (no adapter); run in eval mode under no_grad.
        batches: dicts with ``input_ids`` (batch, seq), ``attention_mask`` (batch, seq) and any
            other forward inputs (``labels`` and unknown keys are dropped).
        target_modules: peft-style names, suffixes or a regex (e.g. ``["query", "value"]``).
        mask: ``"attention"`` counts only non-padding tokens; ``"none"`` counts every position
            (the reference code's behaviour).
        dtype: accumulation dtype (float64 by default).

    Returns:
        module name -> :class:`LayerStats`. Modules fed the identical input tensor (q/k/v of one
        layer) share one accumulation: their entries are the same object.
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
                    raise OsrmError("batch has no 'attention_mask'; pass mask='none' to count all tokens")
                acc.start_batch(attn.bool() if mask == "attention" else None)
                model(**inputs)
                acc.first_batch = False
    finally:
        model.train(was_training)
    return acc.result()


def _unique(stats: Mapping[str, LayerStats]) -> tuple[dict[str, LayerStats], dict[str, str]]:
    """Split into one entry per distinct accumulation plus an alias -> owner map."""
    owner_of: dict[int, str] = {}
    owned, aliases = {}, {}
    for name in sorted(stats):
        key = id(stats[name])
        if key in owner_of:
            aliases[name] = owner_of[key]
        else:
            owner_of[key] = name
            owned[name] = stats[name]
    return owned, aliases


def save_stats(path: str | Path, stats: Mapping[str, LayerStats], meta: StatsMeta) -> None:
    """Write statistics and their provenance to one safetensors file (atomically)."""
    owned, aliases = _unique(stats)
    tensors = {}
    for name, s in owned.items():
        tensors[f"{name}.xtx"] = s.xtx.contiguous()
        tensors[f"{name}.xsum"] = s.xsum.contiguous()
        tensors[f"{name}.count"] = torch.tensor(s.count, dtype=torch.int64)
    metadata = {"format": FORMAT, "meta": json.dumps(asdict(meta)), "aliases": json.dumps(aliases)}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_stats(path: str | Path) -> tuple[dict[str, LayerStats], StatsMeta]:
    """Read and validate a statistics file written by :func:`save_stats`.

    Raises:
        OsrmError: a missing, corrupt or inconsistent file (one line naming the file and field).
    """
    path = Path(path)
    if not path.is_file():
        raise OsrmError(f"{path}: statistics file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise OsrmError(f"{path}: not a readable safetensors file ({e})") from None
    if metadata.get("format") != FORMAT:
        raise OsrmError(f"{path}: metadata 'format' is {metadata.get('format')!r}, expected {FORMAT!r}")
    meta = _parse_meta(path, metadata)
    aliases = _parse_json(path, metadata, "aliases")
    stats = {}
    for key in sorted(tensors):
        name, _, field = key.rpartition(".")
        if field == "xtx":
            stats[name] = _layer_from(path, name, tensors, meta)
    if not stats:
        raise OsrmError(f"{path}: holds no module statistics")
    for alias, owner in aliases.items():
        if owner not in stats:
            raise OsrmError(f"{path}: alias {alias!r} points to missing module {owner!r}")
        stats[alias] = stats[owner]
    return dict(sorted(stats.items())), meta


def _parse_json(path: Path, metadata: Mapping[str, str], key: str) -> dict:
    try:
        value = json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError):
        raise OsrmError(f"{path}: metadata {key!r} is missing or not JSON") from None
    if not isinstance(value, dict):
        raise OsrmError(f"{path}: metadata {key!r} must be a JSON object")
    return value


def _parse_meta(path: Path, metadata: Mapping[str, str]) -> StatsMeta:
    raw = _parse_json(path, metadata, "meta")
    names = {f.name for f in fields(StatsMeta)}
    missing = sorted(names - raw.keys() - {"max_length", "mask", "osrm_version"})
    if missing:
        raise OsrmError(f"{path}: metadata 'meta' lacks fields {missing}")
    meta = StatsMeta(**{k: v for k, v in raw.items() if k in names})
    for key in ("n_examples", "n_tokens"):
        if not isinstance(getattr(meta, key), int) or getattr(meta, key) < 0:
            raise OsrmError(f"{path}: metadata {key!r} must be a non-negative integer")
    if meta.mask not in MASK_POLICIES:
        raise OsrmError(f"{path}: metadata 'mask' is {meta.mask!r}, expected one of {list(MASK_POLICIES)}")
    return meta


def _layer_from(path: Path, name: str, tensors: Mapping[str, Tensor], meta: StatsMeta) -> LayerStats:
    try:
        xtx, xsum, count = (tensors[f"{name}.{f}"] for f in ("xtx", "xsum", "count"))
    except KeyError as e:
        raise OsrmError(f"{path}: module {name!r} lacks tensor {e.args[0]!r}") from None
    d = xtx.shape[0] if xtx.ndim == 2 else -1
    if xtx.shape != (d, d) or xsum.shape != (d,) or count.shape != ():
        raise OsrmError(
            f"{path}: module {name!r} has shapes xtx {tuple(xtx.shape)}, xsum {tuple(xsum.shape)}, "
            f"count {tuple(count.shape)}; expected (d, d), (d,), ()"
        )
    if not (xtx.is_floating_point() and xsum.is_floating_point()) or count.is_floating_point():
        raise OsrmError(f"{path}: module {name!r} expected float xtx/xsum and an integer count")
    if not (torch.isfinite(xtx).all() and torch.isfinite(xsum).all()):
        raise OsrmError(f"{path}: module {name!r} holds NaN or Inf values")
    if int(count) < 0 or int(count) != meta.n_tokens:
        raise OsrmError(f"{path}: module {name!r} count {int(count)} != metadata n_tokens {meta.n_tokens}")
    if not torch.allclose(xtx, xtx.T, rtol=1e-6, atol=1e-8 * float(xtx.diagonal().abs().max().clamp_min(1))):
        raise OsrmError(f"{path}: module {name!r} xtx is not symmetric")
    return LayerStats(xtx, xsum, int(count))


def stats_digest(stats: Mapping[str, LayerStats]) -> str:
    """Short content hash of a statistics mapping (equal for byte-identical statistics)."""
    owned, aliases = _unique(stats)
    digest = hashlib.sha256(json.dumps(aliases, sort_keys=True).encode())
    for name, s in owned.items():
        digest.update(f"{name}:{s.count}".encode())
        digest.update(s.xtx.contiguous().numpy().tobytes())
        digest.update(s.xsum.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
