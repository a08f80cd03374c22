"""The pydantic base of every config model, and its validation errors as one line.

Shared by :mod:`osrm.config` (the experiment's sections) and :mod:`osrm.tasks.blocks` (user task
blocks), so that both refuse the same values with the same messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_serializer

MAX_INT = 2**63 - 1  # counts go to torch, itertools and numpy, which take 64-bit integers


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys are an error, every float finite and
    every integer within 64 bits (``stats.batch_size=1e30`` is refused here, not in islice)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    # Fields added after runs were recorded: left out of dumps while at their default, so that
    # config.yaml, run fingerprints and training records of runs that do not use them stay
    # byte-identical to those of earlier versions (a subclass lists its own).
    omit_when_default: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: Any) -> Any:
        data = handler(self)
        for name in self.omit_when_default:
            default = type(self).model_fields[name].get_default(call_default_factory=True)
            if isinstance(data, dict) and name in data and getattr(self, name) == default:
                del data[name]
        return data

    @field_validator("*")
    @classmethod
    def _int64(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise ValueError(f"expected an integer of at most 64 bits, got {value}")
        return value


def first_error(e: ValidationError, root: type[BaseModel], prefix: tuple = ()) -> str:
    """The first error of validating ``root``, one line naming the field (``prefix`` first)."""
    err = e.errors()[0]
    # pydantic marks a bad mapping key with a '[key]' step (the key itself names the place) and
    # the branch of a union with its type ('list[float]'): neither is a field name
    loc = ".".join(str(p) for p in (*prefix, *err["loc"]) if not _branch_tag(p))
    if err["type"] == "extra_forbidden":
        section = _section_at(err["loc"][:-1], root)
        return f"unknown key {loc!r}; valid keys: {sorted(section.model_fields)}"
    if err["type"] == "value_error":  # our own validators: their message says it all
        message = str(err.get("ctx", {}).get("error", err["msg"]))
        return f"field {loc!r}: {message}" if loc else message
    got = repr(err.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    return f"field {loc!r}: {err['msg']} (got {got})"


def _branch_tag(part: object) -> bool:
    """A step of an error location that names no field: '[key]', or a union branch's type."""
    return isinstance(part, str) and "[" in part


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
