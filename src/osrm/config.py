"""Experiment configuration: YAML mapped onto frozen pydantic models, unknown keys rejected.

``load_config(path, overrides)`` reads a YAML file, applies dotted ``key=value`` overrides
(values parsed as YAML, e.g. ``lora.rank=16`` or ``tasks=[trec,sms_spam]``) and validates the
result. Every error names the file or field and the expected value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from osrm.errors import OsrmError
from osrm.inits import INITS, MEAN_BASES, MODES, WEIGHTINGS
from osrm.safety import check_name

# torch, numpy and the seeded data order all take a seed that fits in 32 bits
MAX_SEED = 2**32 - 1
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")


MAX_INT = 2**63 - 1  # counts go to torch, itertools and numpy, which take 64-bit integers

# names defined once in osrm.inits; Literal of a tuple is the Literal of its items, in order
InitName = Literal[tuple(INITS)]  # type: ignore[valid-type]
ModeName = Literal[MODES]  # type: ignore[valid-type]


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys are an error, every float finite and
    every integer within 64 bits (``stats.batch_size=1e30`` is refused here, not in islice)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _int64(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise ValueError(f"expected an integer of at most 64 bits, got {value}")
        return value


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
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"], min_length=1)
    inits: list[InitName] = Field(
        default_factory=lambda: ["lora", "osrm"],
        min_length=1,
        description="; ".join(f"{name}: {init.doc}" for name, init in INITS.items()),
    )


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
        return self


class MergeSection(Section):
    """Merging grid: method -> hyperparameter -> value or list of values (their product is run)."""

    methods: dict[str, dict[str, Any] | None] = Field(
        default_factory=lambda: {"task_arithmetic": {"scale": [0.3, 0.5, 0.7, 1.0]}}, min_length=1
    )
    weights: list[float] | None = Field(None, description="per-task weights, in tasks order")
    save: bool = Field(False, description="also write each merged dense model under merged/")


class EvalSection(Section):
    split: Literal["train", "validation", "test"] = "test"
    batch_size: int = Field(64, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)


def _as_list(value: Any) -> Any:
    """``text_fields: review`` means ``[review]`` (osrm.tasks accepts both)."""
    return [value] if isinstance(value, str) else value


def _scalar(value: Any) -> Any:
    """A label as YAML writes it (``1``, ``1.0``, ``yes``), kept as is (osrm.splits.label_key)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite label value, got {value!r}")
    if not isinstance(value, str | int | float | bool):
        raise ValueError(f"expected a label value (string or number), got {type(value).__name__}")
    return value


Names = Annotated[list[str], BeforeValidator(_as_list), Field(min_length=1)]
Labels = Annotated[list[Annotated[Any, AfterValidator(_scalar)]], Field(min_length=1)]
Fraction = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]


class SplitsBlock(Section):
    """The ``splits`` of a user task block (osrm.splits.SplitPolicy)."""

    train: str = "train"
    validation: str | None = None
    test: str | None = None
    validation_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1


class TaskBlock(Section):
    """The types of a user task block; its meaning is checked by osrm.tasks.task_from_dict.

    Validated only (the block itself is kept as written), so that every type error is one line
    naming ``tasks.N.field`` instead of a traceback deep in data loading.
    """

    # absent and null differ for osrm.tasks (a key given is used): a default of None here is
    # never validated, but an explicit null is refused where osrm.tasks has no meaning for it
    name: str
    text_fields: Names
    label_field: str
    label_names: Labels = None  # type: ignore[assignment]
    label_values: Labels | None = None
    regression: bool = False
    metrics: Names = None  # type: ignore[assignment]
    main_metric: str = None  # type: ignore[assignment]
    source: str = None  # type: ignore[assignment]
    subset: str | None = None
    files: dict[Literal["train", "validation", "test"], str] = None  # type: ignore[assignment]
    splits: SplitsBlock | None = None
    size: int | None = Field(None, ge=0)
    description: str = ""
    license: str = ""

    @field_validator("name")
    @classmethod
    def _file_name(cls, value: str) -> str:  # stats/<name>.safetensors, adapters/<init>/<name>
        return check_name(value, "tasks: name")


def check_task_blocks(tasks: Any, source: str) -> None:
    """Every ``tasks`` entry is a registry name or a well-typed task block, else OsrmError."""
    if not isinstance(tasks, list):
        return  # the schema reports it (field 'tasks': Input should be a valid list)
    for i, entry in enumerate(tasks):
        if isinstance(entry, str):
            continue
        if not isinstance(entry, dict):
            got = repr(entry)[:60]
            raise OsrmError(
                f"{source}: field 'tasks.{i}': expected a registry task name or a task block "
                f"(a mapping with name, files, text_fields, label_field, ...), got {got}"
            )
        try:
            TaskBlock.model_validate(entry)
        except ValidationError as e:
            raise OsrmError(f"{source}: {_first_error(e, ('tasks', i), TaskBlock)}") from None


class ExperimentConfig(Section):
    """The whole experiment (one run directory)."""

    run_dir: str = "runs/default"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    model: ModelConfig = ModelConfig()
    tasks: list[str | dict[str, Any]] = Field(
        min_length=2,
        description="registry names, or user task blocks (see osrm.tasks.task_from_dict)",
    )
    lora: LoraSection = LoraSection()
    stats: StatsSection = StatsSection()
    subspace: SubspaceSection = SubspaceSection()
    train: TrainSection = TrainSection()
    merge: MergeSection = MergeSection()
    eval: EvalSection = EvalSection()

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
        if self.merge.weights is not None and len(self.merge.weights) != len(names):
            raise ValueError(
                f"merge.weights has {len(self.merge.weights)} values for {len(names)} tasks"
            )
        return self


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied (values as YAML)."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise OsrmError(f"override {item!r}: expected key=value, e.g. lora.rank=16")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:  # a ReaderError (control characters) has no .problem
            problem = " ".join(str(getattr(e, "problem", None) or e).split())
            raise OsrmError(f"override {item!r}: value is not valid YAML ({problem})") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise OsrmError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def parse_config(data: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a mapping; the first error becomes one line naming the field."""
    check_task_blocks(data.get("tasks"), source)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise OsrmError(f"{source}: {_first_error(e)}") from None


def _first_error(
    e: ValidationError, prefix: tuple = (), root: type[BaseModel] | None = None
) -> str:
    err = e.errors()[0]
    # pydantic marks a bad mapping key with a '[key]' step: the key itself names the place
    loc = ".".join(str(p) for p in (*prefix, *err["loc"]) if p != "[key]")
    if err["type"] == "extra_forbidden":
        section = _section_at(err["loc"][:-1], root or ExperimentConfig)
        return f"unknown key {loc!r}; valid keys: {sorted(section.model_fields)}"
    if err["type"] == "value_error":  # our own validators: their message says it all
        message = str(err.get("ctx", {}).get("error", err["msg"]))
        return f"field {loc!r}: {message}" if loc else message
    got = repr(err.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    return f"field {loc!r}: {err['msg']} (got {got})"


def _section_at(path: Sequence[Any], root: type[BaseModel]) -> type[BaseModel]:
    model = root
    for part in path:
        field = model.model_fields.get(str(part))
        if field is None:
            break
        annotation = field.annotation
        for arg in getattr(annotation, "__args__", ()):  # ``SplitsBlock | None``: the model
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                annotation = arg
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return model


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
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise OsrmError(f"{path}: not valid YAML ({problem})") from None
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
