"""The schema of a user task block in a config's ``tasks`` list (types only).

A block is validated here and kept as written; :func:`osrm.tasks.registry.task_from_dict` gives it
its meaning. Checking the types first makes every type error one line naming ``tasks.N.field``
instead of a traceback deep in data loading.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, field_validator

from osrm.errors import OsrmError
from osrm.safety import check_name
from osrm.schema import Section, first_error


def _as_list(value: Any) -> Any:
    """``text_fields: review`` means ``[review]`` (TaskSpec accepts both)."""
    return [value] if isinstance(value, str) else value


def _scalar(value: Any) -> Any:
    """A label as YAML writes it (``1``, ``1.0``, ``yes``), kept as is (spec.label_key)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite label value, got {value!r}")
    if not isinstance(value, str | int | float | bool):
        raise ValueError(f"expected a label value (string or number), got {type(value).__name__}")
    return value


Names = Annotated[list[str], BeforeValidator(_as_list), Field(min_length=1)]
Labels = Annotated[list[Annotated[Any, AfterValidator(_scalar)]], Field(min_length=1)]
Fraction = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]


class SplitsBlock(Section):
    """The ``splits`` of a user task block (osrm.tasks.spec.SplitPolicy)."""

    train: str = "train"
    validation: str | None = None
    test: str | None = None
    validation_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1


class TaskBlock(Section):
    """The types of a user task block; its meaning is checked by task_from_dict."""

    # absent and null differ for task_from_dict (a key given is used): a default of None here is
    # never validated, but an explicit null is refused where task_from_dict has no meaning for it
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
    format: Literal["classify", "generate"] = "classify"
    prompt: str | None = None
    verbalisers: Names | None = None

    @field_validator("name")
    @classmethod
    def _file_name(cls, value: str) -> str:  # stats/<name>.safetensors, adapters/<init>/<name>
        return check_name(value, "tasks: name")


# a block with only these keys extends a built-in task (``{name: trec, format: generate}``)
OPTION_KEYS = ("name", "format", "prompt", "verbalisers")


class TaskOptions(Section):
    """The types of a block that extends a built-in task: how it is learnt and scored."""

    name: str
    format: Literal["classify", "generate"] = "classify"
    prompt: str | None = None
    verbalisers: Names | None = None


def is_options_block(entry: Any) -> bool:
    """Whether a ``tasks`` entry extends a built-in task rather than defining one."""
    return isinstance(entry, dict) and set(entry) <= set(OPTION_KEYS)


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
        schema = TaskOptions if is_options_block(entry) else TaskBlock
        try:
            schema.model_validate(entry)
        except ValidationError as e:
            raise OsrmError(f"{source}: {first_error(e, schema, ('tasks', i))}") from None
