"""Experiment configuration: YAML mapped onto frozen pydantic models, unknown keys rejected.

``load_config(path, overrides)`` reads a YAML file, applies dotted ``key=value`` overrides
(values parsed as YAML, e.g. ``lora.rank=16`` or ``tasks=[trec,sms_spam]``) and validates the
result. Every error names the file or field and the expected value.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from osrm.errors import OsrmError, one_line
from osrm.inits import INITS, MEAN_BASES, MODES, WEIGHTINGS
from osrm.safety import check_name
from osrm.schema import Section, first_error
from osrm.tasks.blocks import check_task_blocks

# torch, numpy and the seeded data order all take a seed that fits in 32 bits
MAX_SEED = 2**32 - 1
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")

# names defined once in osrm.inits; Literal of a tuple is the Literal of its items, in order
InitName = Literal[tuple(INITS)]  # type: ignore[valid-type]
ModeName = Literal[MODES]  # type: ignore[valid-type]
# task weights solved from the statistics (osrm.merging.auto_weights reads its modes from here)
WeightMode = Literal["auto", "auto-per-module"]


class ModelConfig(Section):
    name: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2", description="hub name, alias or local dir"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field(
        "auto", description="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ..."
    )
    trust_remote_code: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not DEVICE.fullmatch(value):
            raise ValueError(f"expected 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N', got {value!r}")
        return value


class LoraSection(Section):
    omit_when_default = frozenset({"a_subspace"})

    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"], min_length=1)
    inits: list[InitName] = Field(
        default_factory=lambda: ["lora", "osrm"],
        min_length=1,
        description="; ".join(f"{name}: {init.doc}" for name, init in INITS.items()),
    )
    a_subspace: int | None = Field(
        None,
        ge=1,
        description="OSRM inits: A stays in the span of its basis' k best directions "
        "(k >= rank; k = rank: A's row space fixed; null or k >= d_in: free A)",
    )

    @field_validator("a_subspace")
    @classmethod
    def _a_subspace(cls, value: int | None, info: ValidationInfo) -> int | None:
        rank = info.data.get("rank")
        if value is not None and rank is not None and value < rank:
            raise ValueError(f"expected null or an integer >= lora.rank ({rank}), got {value}")
        return value


class StatsSection(Section):
    examples: int = Field(256, ge=1, description="training examples per task for the statistics")
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(64, ge=2)
    mask: Literal["attention", "none"] = "attention"
    dtype: Literal["float64", "float32"] = Field("float64", description="accumulation dtype")


class SubspaceSection(Section):
    modes: list[ModeName] = Field(default_factory=lambda: ["cov"], min_length=1)
    weighting: Literal[WEIGHTINGS] = "equal"  # type: ignore[valid-type]
    center: bool = False
    basis: Literal[MEAN_BASES] = "svd"  # type: ignore[valid-type]
    ridge: float = Field(1e-2, gt=0)


class TrainSection(Section):
    """One explicit loop (osrm.train): AdamW, linear schedule with warm-up, accumulation."""

    omit_when_default = frozenset({"checkpoints", "interference_penalty"})

    steps: int = Field(300, ge=1, description="optimizer steps per adapter (unless epochs is set)")
    epochs: float | None = Field(
        None, gt=0, le=1e6, description="if set: steps = ceil(epochs * n / batch)"
    )
    lr: float = Field(1e-3, gt=0, le=1)
    batch_size: int = Field(16, ge=1, description="examples per optimizer step (global batch)")
    grad_accum: int = Field(
        1, ge=1, description="micro-batches per step; batch_size % grad_accum == 0"
    )
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; null = off")
    max_length: int = Field(128, ge=2)
    max_train_examples: int | None = Field(None, ge=1)
    group_by_length: bool = False
    freeze_a: bool = Field(False, description="freeze A for every init (only B trains)")
    frozen_a_lr: float | None = Field(
        None, gt=0, le=1, description="lr of adapters whose A is frozen; null = lr"
    )
    frozen_a_steps: int | None = Field(
        None, ge=1, description="steps of adapters whose A is frozen; null = steps"
    )
    checkpoint_every: int = Field(50, ge=0, description="steps between checkpoints; 0 = never")
    interference_penalty: float = Field(
        0.0,
        ge=0,
        description="OSRM inits: loss += μ · mean over modules of E_other‖BAx‖² / E_own‖BAx‖²",
    )
    checkpoints: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list,
        description="budgets: steps at which the adapter is also saved (same schedule), increasing",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on GPU"
    )

    @model_validator(mode="after")
    def _divisible(self) -> TrainSection:
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}"
            )
        if self.frozen_a_steps is not None and self.epochs is not None:
            raise ValueError("frozen_a_steps counts steps; it cannot be combined with epochs")
        if self.checkpoints and self.epochs is None and self.checkpoints[-1] > self.steps:
            raise ValueError(
                f"checkpoints: step {self.checkpoints[-1]} is beyond the run's {self.steps} steps"
            )
        return self

    @field_validator("checkpoints")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError(f"expected strictly increasing steps, got {value}")
        return value


class RetrofitSection(Section):
    """``merge.retrofit``: each listed init's adapters (final and budgets) retrofitted from the
    statistics at every μ (osrm.retrofit), then scored and merged as one more init,
    ``<init>+rf<μ>``."""

    mu: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(min_length=1)
    inits: list[InitName] | None = Field(None, description="default: every init of lora.inits")


class MergeSection(Section):
    """Merging grid: method -> hyperparameter -> value or list of values (their product is run)."""

    omit_when_default = frozenset({"retrofit"})

    methods: dict[str, dict[str, Any] | list[dict[str, Any]] | None] = Field(
        default_factory=lambda: {"task_arithmetic": {"scale": [0.3, 0.5, 0.7, 1.0]}}, min_length=1
    )
    weights: list[float] | WeightMode | None = Field(
        None,
        description="per-task weights in tasks order, or auto / auto-per-module (from the "
        "statistics); a method's grid may also list `weights: [given, auto, auto-per-module]`",
    )
    save: bool = Field(False, description="also write each merged dense model under merged/")
    retrofit: RetrofitSection | None = None

    @field_validator("weights", mode="before")
    @classmethod
    def _weights_kind(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in get_args(WeightMode):
            raise ValueError(f"expected numbers (one per task) or one of {get_args(WeightMode)}")
        return value


class EvalSection(Section):
    split: Literal["train", "validation", "test"] = "test"
    batch_size: int = Field(64, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)
    exact_match: bool = Field(
        False, description="generative tasks: also score greedy answers by exact match (slower)"
    )


class AddedTask(Section):
    """A task joined to the run after its first training (``osrm add-task``)."""

    task: str
    retrofit_mu: float | None = Field(
        None, ge=0, allow_inf_nan=False,
        description="the earlier adapters were retrofitted against this task's statistics",
    )  # fmt: skip


class ExperimentConfig(Section):
    """The whole experiment (one run directory)."""

    omit_when_default = frozenset({"added_tasks"})

    run_dir: str = "runs/default"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    model: ModelConfig = ModelConfig()
    tasks: list[str | dict[str, Any]] = Field(
        min_length=2,
        description="registry names, or user task blocks (see osrm.tasks.registry.task_from_dict)",
    )
    lora: LoraSection = LoraSection()
    stats: StatsSection = StatsSection()
    subspace: SubspaceSection = SubspaceSection()
    train: TrainSection = TrainSection()
    merge: MergeSection = MergeSection()
    eval: EvalSection = EvalSection()
    added_tasks: list[AddedTask] = Field(
        default_factory=list,
        description="the last tasks of `tasks`, in order, were added later by `osrm add-task`",
    )

    @property
    def task_names(self) -> list[str]:
        """Task names in config order (a user block contributes its ``name``)."""
        return [t if isinstance(t, str) else str(t.get("name")) for t in self.tasks]

    @model_validator(mode="after")
    def _unique_tasks(self) -> ExperimentConfig:
        names = self.task_names
        for name in names:  # they become file names: stats/<task>.safetensors, adapters/...
            check_name(name, "tasks: name")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"task names must be unique, repeated: {repeated}")
        if isinstance(self.merge.weights, list) and len(self.merge.weights) != len(names):
            raise ValueError(
                f"merge.weights has {len(self.merge.weights)} values for {len(names)} tasks"
            )
        return self

    def known_tasks(self, task: str) -> list[str]:
        """The tasks whose statistics ``task``'s adapter was built against: every task of the
        run but those added (``added_tasks``) after it."""
        names, later = self.task_names, len(self.added_tasks)
        return names[: max(len(names) - later, names.index(task) + 1)]

    @model_validator(mode="after")
    def _added_last(self) -> ExperimentConfig:
        added = [a.task for a in self.added_tasks]
        if added and self.task_names[-len(added) :] != added:
            raise ValueError(f"added_tasks {added}: expected the last tasks of `tasks`, in order")
        return self

    @model_validator(mode="after")
    def _retrofit_inits(self) -> ExperimentConfig:
        listed = (self.merge.retrofit.inits or []) if self.merge.retrofit else []
        missing = [i for i in listed if i not in self.lora.inits]
        if missing:
            raise ValueError(f"merge.retrofit.inits: {missing} not in lora.inits {self.lora.inits}")
        return self

    @model_validator(mode="after")
    def _frozen_budgets(self) -> ExperimentConfig:
        train = self.train
        frozen = train.freeze_a or any(INITS[i].freeze_a for i in self.lora.inits)
        steps = train.frozen_a_steps
        if frozen and steps is not None and train.checkpoints[-1:] > [steps]:
            raise ValueError(
                f"train.checkpoints: step {train.checkpoints[-1]} is beyond train.frozen_a_steps "
                f"({steps}), the steps of the adapters whose A is frozen"
            )
        return self


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied (values as YAML)."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise OsrmError(f"override {item!r}: expected key=value, e.g. lora.rank=16")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise OsrmError(f"override {item!r}: value is not valid YAML ({_problem(e)})") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise OsrmError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _problem(e: yaml.YAMLError) -> str:
    """YAML's complaint on one line (a ReaderError, from control characters, has no .problem)."""
    return one_line(getattr(e, "problem", None) or e)


def parse_config(data: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a mapping; the first error becomes one line naming the field."""
    check_task_blocks(data.get("tasks"), source)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise OsrmError(f"{source}: {first_error(e, ExperimentConfig)}") from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML config, apply overrides, validate."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise OsrmError(f"{path}: cannot read config ({e.strerror})") from None
    except UnicodeDecodeError:
        raise OsrmError(f"{path}: cannot read config (not UTF-8 text)") from None
    except yaml.YAMLError as e:
        raise OsrmError(f"{path}: not valid YAML ({_problem(e)})") from None
    if not isinstance(data, dict):
        raise OsrmError(f"{path}: expected a mapping of sections at the top level")
    data = apply_overrides(data, overrides)
    check_task_blocks(data.get("tasks"), str(path))  # types first: the paths below are str
    for task in data.get("tasks") or []:  # user task files are relative to the config file
        if isinstance(task, dict) and isinstance(task.get("files"), dict):
            task["files"] = {
                s: str(path.parent / Path(f).expanduser()) for s, f in task["files"].items()
            }
    return parse_config(data, str(path))


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML (what a run directory records)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
