"""Task vectors of peft LoRA adapters, read lazily: ΔW = s · B A per target module.

Nothing needs the base model: the factors come from ``adapter_model.safetensors`` (opened with
``safe_open``, so only the requested tensors are read) and the scale from
``adapter_config.json``: s = α / r, or α / √r with ``use_rslora``, with r and α resolved per
module through ``rank_pattern`` / ``alpha_pattern`` exactly as peft resolves them. Every ΔW is
returned in the (d_out, d_in) layout of y = ΔW x, float32, under the base model's parameter
name ``<module>.weight``; modules whose base weight is stored transposed (``fan_in_fan_out``,
GPT-2's Conv1D) are listed in :attr:`LoraDeltas.transposed`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from torch import Tensor

from osrm.artifacts import file_sha256
from osrm.errors import OsrmError
from osrm.loaders import read_json
from osrm.safety import PROVENANCE_FILE, check_name, require_safetensors

log = logging.getLogger(__name__)

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
_PREFIX = "base_model.model."
# config fields that change what the adapter computes beyond s·B·A (or the base weights it
# applies to); merging them as plain LoRA would silently give wrong results (peft #3761)
_UNSUPPORTED = (
    "use_dora", "lora_bias", "use_qalora", "use_bdlora", "kasa_config", "arrow_config",
    "alora_invocation_tokens", "monteclora_config", "velora_config", "target_parameters",
    "layer_replication", "trainable_token_indices", "megatron_config",
)  # fmt: skip
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq")


@dataclass(frozen=True)
class LoraModule:
    """Where one target module's factors live and how they scale."""

    key_a: str
    key_b: str
    rank: int
    scale: float  # lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA
    d_out: int
    d_in: int


def _pattern_value(patterns: Mapping[str, float], module: str, default: float) -> float:
    # peft's rule (utils.other.get_pattern_key): the first key matching a dotted suffix wins
    for key, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        except re.error as e:
            raise OsrmError(f"adapter_config pattern {key!r} is not a valid regex ({e})") from None
    return default


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise OsrmError(f"{path}: adapter config not found (expected a peft LoRA directory)")
    config = read_json(path, "adapter config")
    if config.get("peft_type") != "LORA":
        got = config.get("peft_type")
        raise OsrmError(f"{path}: 'peft_type' is {got!r}, expected 'LORA'")
    for field in _UNSUPPORTED:
        if config.get(field):
            raise OsrmError(f"{path}: '{field}' is set; only plain LoRA adapters can be merged")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.startswith(_BASE_REWRITING_INITS):
        raise OsrmError(
            f"{path}: init_lora_weights {init!r} rewrites the base weights; convert the adapter "
            "to plain LoRA (peft path_initial_model_for_weight_conversion) before merging"
        )
    return config


class LazyMapping(Mapping[str, Tensor]):
    """A mapping whose names are known up front (``index``: name -> where to read it) and whose
    tensors are read on access; membership, order and size never read a tensor."""

    index: Mapping[str, object]

    def __contains__(self, name: object) -> bool:  # Mapping's default would read the tensor
        return name in self.index

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)


class LoraDeltas(LazyMapping):
    """Lazy mapping ``<module>.weight`` -> ΔW (d_out, d_in) float32 of one peft LoRA adapter.

    Args:
        adapter_dir: a directory written by peft ``save_pretrained``.

    Raises:
        OsrmError: missing/corrupt files, unsupported LoRA variants, inconsistent shapes.
    """

    def __init__(self, adapter_dir: str | Path):
        self.path = Path(adapter_dir)
        self.weights_file = self.path / WEIGHTS_FILE
        self.config = _read_config(self.path / CONFIG_FILE)
        self.base_model: str | None = self.config.get("base_model_name_or_path")
        self.fan_in_fan_out = bool(self.config.get("fan_in_fan_out"))
        self.validated = False
        self._handle = None
        shapes = self._read_header()
        self.modules: dict[str, LoraModule] = {}
        self.index = self.modules
        self.head_keys: dict[str, str] = {}  # base parameter name -> stored key
        for key in sorted(shapes):
            self._classify(key, shapes)
        if not self.modules:
            raise OsrmError(f"{self.weights_file}: holds no lora_A/lora_B tensors")
        self.transposed = frozenset(self.modules) if self.fan_in_fan_out else frozenset()

    def _read_header(self) -> dict[str, tuple[int, ...]]:
        require_safetensors(self.path)  # never peft's pickle fallback (adapter_model.bin)
        try:
            with safe_open(str(self.weights_file), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise OsrmError(f"{self.weights_file}: not a readable safetensors file ({e})") from None

    def _classify(self, key: str, shapes: Mapping[str, tuple[int, ...]]) -> None:
        name = key.removeprefix(_PREFIX)
        if ".lora_B." in name:
            return  # read together with its lora_A
        if "lora_embedding" in name or "lora_magnitude" in name:
            raise OsrmError(f"{self.weights_file}: {key}: only linear LoRA layers can be merged")
        if ".lora_A." not in name:
            self.head_keys[name] = key  # modules_to_save: a task head, never merged
            return
        module, _, tail = name.partition(".lora_A.")
        key_b = key.replace(".lora_A.", ".lora_B.")
        shape_a, shape_b = shapes[key], shapes.get(key_b)
        if tail != "weight" or shape_b is None or len(shape_a) != 2 or len(shape_b) != 2:
            raise OsrmError(f"{self.weights_file}: {key}: expected 2-D lora_A/lora_B .weight pairs")
        rank, d_in = shape_a
        d_out = shape_b[0]
        if rank == 0:
            raise OsrmError(
                f"{self.weights_file}: {module}: lora_A has rank 0 (shape {shape_a}); "
                "a LoRA adapter needs rank r >= 1"
            )
        if shape_b[1] != rank:
            raise OsrmError(
                f"{self.weights_file}: {module}: lora_B {shape_b} does not match lora_A {shape_a}"
            )
        rank_pattern = self.config.get("rank_pattern") or {}
        r_cfg = _pattern_value(rank_pattern, module, self.config.get("r", 8))
        if r_cfg != rank:
            raise OsrmError(
                f"{self.weights_file}: {module}: lora_A has rank {rank} but adapter_config "
                f"(r / rank_pattern) says {r_cfg}"
            )
        alpha_default = self.config.get("lora_alpha", 8)  # peft's defaults: r = lora_alpha = 8
        alpha = _pattern_value(self.config.get("alpha_pattern") or {}, module, alpha_default)
        if not _finite_number(alpha):
            raise OsrmError(
                f"{self.path / CONFIG_FILE}: {module}: lora_alpha (or alpha_pattern) is {alpha!r}, "
                "expected a finite number"
            )
        scale = alpha / math.sqrt(rank) if self.config.get("use_rslora") else alpha / rank
        if not math.isfinite(float(torch.tensor(scale, dtype=torch.float32))):
            raise OsrmError(
                f"{self.path / CONFIG_FILE}: {module}: lora_alpha {alpha!r} gives the scale "
                f"{scale:.3g}, beyond float32 (every ΔW = s·B·A would overflow)"
            )
        self.modules[f"{module}.weight"] = LoraModule(key, key_b, rank, scale, d_out, d_in)

    # Mapping interface: the keys are base-model parameter names
    def __getitem__(self, name: str) -> Tensor:
        b, a = self.factors(name)
        return b @ a

    def shape(self, name: str) -> tuple[int, int]:
        """(d_out, d_in) of ΔW for ``name`` without reading any tensor."""
        m = self.modules[name]
        return m.d_out, m.d_in

    def factors(self, name: str) -> tuple[Tensor, Tensor]:
        """``(s·B (d_out, r), A (r, d_in))`` in float32, so that ΔW = (s·B) @ A."""
        if name not in self.modules:
            raise KeyError(name)
        m = self.modules[name]
        if self._handle is not None:
            a, b = self._finite(self._handle, m.key_a), self._finite(self._handle, m.key_b)
        else:
            with safe_open(str(self.weights_file), framework="pt") as f:
                a, b = self._finite(f, m.key_a), self._finite(f, m.key_b)
        return b * m.scale, a

    @contextmanager
    def opened(self) -> Iterator[LoraDeltas]:
        """Keep one memory-mapped handle open for many :meth:`factors` calls (then unmap)."""
        with safe_open(str(self.weights_file), framework="pt") as f:
            self._handle = f
            try:
                yield self
            finally:
                self._handle = None

    def write_delta(self, name: str, out: Tensor) -> None:
        """Compute ΔW for ``name`` straight into ``out`` (d_out, d_in) float32: no temporary."""
        b, a = self.factors(name)
        torch.mm(b, a, out=out)

    def _finite(self, f: safe_open, key: str) -> Tensor:
        try:
            t = f.get_tensor(key).float()
        except (SafetensorError, OSError) as e:
            raise OsrmError(f"{self.weights_file}: cannot read {key} ({e})") from None
        if not self.validated and not torch.isfinite(t).all():
            raise OsrmError(f"{self.weights_file}: {key} holds NaN or Inf values")
        return t

    def validate(self) -> None:
        """Read the weights file once: hash it and fail early on NaN/Inf or unreadable data."""
        try:
            data = self.weights_file.read_bytes()
            tensors = load_safetensors(data)
        except (SafetensorError, OSError) as e:
            raise OsrmError(f"{self.weights_file}: not a readable safetensors file ({e})") from None
        self.__dict__["sha256"] = hashlib.sha256(data).hexdigest()  # fills the cached property
        flat = [t.reshape(-1).float() for t in tensors.values()]
        if flat and not torch.isfinite(torch.cat(flat)).all():  # one check, then find the key
            key = next(k for k, t in tensors.items() if not torch.isfinite(t).all())
            raise OsrmError(f"{self.weights_file}: {key} holds NaN or Inf values")
        self.validated = True  # later reads skip the check

    def heads(self) -> dict[str, Tensor]:
        """Base parameter name -> tensor of the adapter's ``modules_to_save`` (task heads)."""
        with safe_open(str(self.weights_file), framework="pt") as f:
            return {name: self._finite(f, key) for name, key in self.head_keys.items()}

    @cached_property
    def sha256(self) -> str:
        """sha256 of ``adapter_model.safetensors`` (recorded in merge manifests)."""
        return file_sha256(self.weights_file)

    @cached_property
    def provenance(self) -> dict:
        """The adapter's ``osrm_provenance.json`` ({} for adapters not made by osrm)."""
        path = self.path / PROVENANCE_FILE
        return read_json(path, "osrm provenance") if path.is_file() else {}

    @property
    def task(self) -> str:
        """The task name: osrm provenance ``task`` if present, else the directory name."""
        name = self.provenance.get("task")
        if name is not None:  # it names files (heads/<task>.safetensors): one rule for all
            return check_name(name, f"{self.path / PROVENANCE_FILE}: 'task'")
        return self.path.resolve().name

    def __repr__(self) -> str:
        return f"LoraDeltas({str(self.path)!r}, {len(self)} modules)"


def lora_deltas(adapter_dir: str | Path) -> LoraDeltas:
    """Module name -> ΔW = s·B·A (d_out, d_in) float32 of one adapter, computed on access."""
    return LoraDeltas(adapter_dir)
