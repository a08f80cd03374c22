"""What a task is, as data: :class:`TaskSpec` and its :class:`SplitPolicy`.

A spec names a raw source and the columns to read from it; :mod:`osrm.tasks.sources` reads the
source, :mod:`osrm.tasks.splits` turns it into the standard columns and splits, and
:mod:`osrm.tasks.registry` holds the built-in specs. This module depends on none of them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from osrm.errors import OsrmError
from osrm.metrics import METRICS

SPLITS = ("train", "validation", "test")
# how a task is learnt and scored: a classification head per task, or prompt -> answer on a
# decoder with no head (osrm.generative; prompts and verbalisers: osrm.tasks.prompts)
FORMATS = ("classify", "generate")


@dataclass(frozen=True)
class SplitPolicy:
    """Where a task's train/validation/test come from.

    Attributes:
        train: source split holding the training pool.
        validation: source split used as is, or ``None`` to carve ``validation_fraction`` of
            the (deduplicated) pool.
        test: likewise, with ``test_fraction``.
    """

    train: str = "train"
    validation: str | None = None
    test: str | None = None
    validation_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        fractions = (self.validation_fraction, self.test_fraction)
        if not all(0 <= f < 1 for f in fractions) or sum(fractions) >= 1:
            raise OsrmError(f"split fractions must be in [0, 1) with sum < 1, got {fractions}")

    def source_names(self) -> dict[str, str]:
        """``{our split: source split}`` for the splits the source provides."""
        named = {"train": self.train, "validation": self.validation, "test": self.test}
        return {ours: src for ours, src in named.items() if src is not None}


def label_key(value: Any) -> str | None:
    """Canonical string of a raw label (``1``, ``1.0`` and ``"1"`` agree); ``None`` if missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    key = str(value).strip()
    return key or None


@dataclass(frozen=True)
class TaskSpec:
    """A task as data. Lists passed in are stored as tuples, so specs are hashable.

    Attributes:
        name: registry key.
        source: reader in ``osrm.tasks.sources.SOURCES`` (e.g. ``"glue"``, ``"bigbench"``,
            ``"files"``); checked by that registry, the only list of sources.
        text_fields: one raw column (single sentence) or two (pair: ``text``, ``text_pair``).
        label_field: raw label column.
        label_names: class names; their order fixes the label ids. ``None`` means regression.
        metrics: names in ``osrm.metrics.METRICS``; ``main_metric`` is the one reported/averaged.
        subset: source argument (GLUE config, BIG-bench task path, VADER file, R package).
        label_values: raw label values in ``label_names`` order (default: the names themselves).
        splits: how train/validation/test are formed (:class:`SplitPolicy`).
        files: ``(split, path)`` pairs for ``source="files"``.
        size: documented number of examples over all splits after cleaning (``None``: unknown).
        description, license: where the data come from and under which terms.
        format: one of :data:`FORMATS`.
        prompt, verbalisers: a generative task's template and one answer per label (None:
            the defaults of :mod:`osrm.tasks.prompts`).
    """

    name: str
    source: str
    text_fields: tuple[str, ...]
    label_field: str
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    subset: str | None = None
    label_values: tuple[str, ...] | None = None
    splits: SplitPolicy = field(default_factory=SplitPolicy)
    files: tuple[tuple[str, str], ...] = ()
    size: int | None = None
    description: str = ""
    license: str = ""
    format: str = "classify"
    prompt: str | None = None
    verbalisers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        norm = {"text_fields": as_tuple(self.text_fields), "metrics": as_tuple(self.metrics)}
        if self.label_names is not None:
            norm["label_names"] = tuple(label_key(v) for v in as_tuple(self.label_names))
        if self.label_values is not None:
            norm["label_values"] = tuple(label_key(v) for v in as_tuple(self.label_values))
        if self.verbalisers is not None:
            norm["verbalisers"] = as_tuple(self.verbalisers)
        files = self.files.items() if isinstance(self.files, Mapping) else self.files
        norm["files"] = tuple((str(s), os.fspath(p)) for s, p in files)
        for key, value in norm.items():
            object.__setattr__(self, key, value)
        problem = _spec_problem(self)
        if problem:
            raise OsrmError(f"task '{self.name}': {problem}")

    @property
    def is_pair(self) -> bool:
        """Whether examples are sentence pairs (``text``, ``text_pair``)."""
        return len(self.text_fields) == 2

    @property
    def is_regression(self) -> bool:
        """Whether the label is a float target rather than a class id."""
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """Classifier outputs: number of classes, or 1 for regression."""
        return 1 if self.label_names is None else len(self.label_names)


def generative(specs: Iterable[TaskSpec]) -> bool:
    """Whether a run's tasks are generative; a run mixing formats is refused (a merged model
    either has a head per task or answers every task from its prompt)."""
    formats = {s.name: s.format for s in specs}
    if len(set(formats.values())) > 1:
        raise OsrmError(f"tasks: every task of a run must have the same format, got {formats}")
    return "generate" in formats.values()


def as_tuple(value: Any) -> tuple[str, ...]:
    """One name or several as a tuple (``text_fields: review`` means ``(review,)``)."""
    return (value,) if isinstance(value, str) else tuple(value)


def _spec_problem(spec: TaskSpec) -> str | None:
    """The first inconsistency of a spec, as a phrase, or ``None``."""
    if not isinstance(spec.name, str) or not spec.name:
        return "name must be a non-empty string"
    if len(spec.text_fields) not in (1, 2):
        return f"text_fields must name 1 or 2 columns, got {list(spec.text_fields)}"
    names = spec.label_names
    if names is not None and (len(names) < 2 or len(set(names)) != len(names)):
        return f"label_names must be 2 or more distinct values, got {list(names)}"
    values = spec.label_values
    if values is not None and (names is None or len(set(values)) != len(names)):
        return f"label_values must be {len(names or ())} distinct values, one per label_names entry"
    unknown = [m for m in spec.metrics if m not in METRICS] or ([] if spec.metrics else ["(none)"])
    if unknown:
        return f"unknown metric '{unknown[0]}'; valid metrics: {', '.join(METRICS)}"
    if spec.main_metric not in spec.metrics:
        return f"main_metric '{spec.main_metric}' is not one of metrics {list(spec.metrics)}"
    if spec.format not in FORMATS:
        return f"format must be one of {list(FORMATS)}, got {spec.format!r}"
    if spec.format == "generate" and spec.is_regression:
        return "a regression task cannot be generated (no labels to verbalise); keep it head-only"
    if spec.format == "classify" and (spec.prompt is not None or spec.verbalisers is not None):
        return "prompt and verbalisers apply to format: generate only"
    have, want = {s for s, _ in spec.files}, set(spec.splits.source_names().values())
    if spec.source == "files" and have != want:
        return f"files cover splits {sorted(have)} but the split policy reads {sorted(want)}"
    return None
