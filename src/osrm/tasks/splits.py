"""Standardise raw task data and cut deterministic train/validation/test splits.

:func:`standardise` renames the spec's columns to ``text`` / ``text_pair`` / ``label``, drops rows
with an empty text or a missing label and maps labels to ids in ``label_names`` order.
:func:`prepare_splits` then

1. keeps source-provided validation/test splits as they are (comparable with published numbers);
2. deduplicates the training pool by whitespace-normalised input: repeats collapse to the first
   occurrence, inputs seen with different labels are dropped (ambiguous), and inputs that also
   occur in a source-provided evaluation split are removed (no train/test leakage);
3. carves each missing validation/test share out of the pool in a seeded order.

The seeded order sorts examples by ``blake2b(salt, seed, input)``: it depends only on content and
seed, not on row order or library versions, so a seed gives the same split on every machine.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from datasets import ClassLabel, Dataset, Features, Value

from osrm.errors import OsrmError
from osrm.tasks.spec import SPLITS, TaskSpec, label_key

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "text_pair")


def column(dataset: Dataset, name: str) -> list:
    """One column as a Python list (fast: iterating ``dataset[name]`` decodes row by row)."""
    return dataset.with_format("arrow")[name].to_pylist()


def _clean_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _label_converter(spec: TaskSpec, where: str) -> Callable[[Any], float | int | None]:
    """A function raw label -> id (or float for regression), ``None`` when missing."""
    if spec.label_names is None:

        def to_float(value: Any) -> float | None:
            key = label_key(value)
            try:
                value = math.nan if key is None else float(key)
            except ValueError:
                raise OsrmError(
                    f"task '{spec.name}': {where} column '{spec.label_field}' has value "
                    f"'{key}', expected a number (regression task)"
                ) from None
            return value if math.isfinite(value) else None

        return to_float
    ids = {v: i for i, v in enumerate(spec.label_values or spec.label_names)}

    def to_id(value: Any) -> int | None:
        key = label_key(value)
        if key is not None and key not in ids:
            raise OsrmError(
                f"task '{spec.name}': {where} column '{spec.label_field}' has value '{key}', "
                f"expected one of {list(ids)}"
            )
        return None if key is None else ids[key]

    return to_id


def standardise(spec: TaskSpec, raw: Dataset, *, origin: str = "data") -> Dataset:
    """Map a raw source split to the standard columns ``text``, ``text_pair``, ``label``.

    Args:
        spec: the task.
        raw: one split with the source's own column names.
        origin: what ``raw`` is (a file path, a source split), named in error messages.
    """
    columns = [*spec.text_fields, spec.label_field]
    missing = [c for c in columns if c not in raw.column_names]
    if missing:
        have = ", ".join(raw.column_names) or "none"
        raise OsrmError(f"task '{spec.name}': {origin} has no column '{missing[0]}' (has: {have})")
    texts = [[_clean_text(v) for v in column(raw, f)] for f in spec.text_fields]
    convert = _label_converter(spec, origin)
    labels = [convert(v) for v in column(raw, spec.label_field)]
    keep = [i for i, y in enumerate(labels) if y is not None and all(t[i] for t in texts)]
    if not keep:
        raise OsrmError(
            f"task '{spec.name}': {origin} is empty: no row with non-empty "
            f"{' and '.join(spec.text_fields)} and a '{spec.label_field}' label"
        )
    if len(keep) < len(labels):
        dropped = len(labels) - len(keep)
        logger.info(
            "task %s: %s: dropped %d rows without text or label", spec.name, origin, dropped
        )
    data = {name: [t[i] for i in keep] for name, t in zip(TEXT_COLUMNS, texts, strict=False)}
    data["label"] = [labels[i] for i in keep]
    return Dataset.from_dict(data, features=_features(spec))


def _features(spec: TaskSpec) -> Features:
    label = (
        Value("float32") if spec.label_names is None else ClassLabel(names=list(spec.label_names))
    )
    texts = {c: Value("string") for c in TEXT_COLUMNS[: len(spec.text_fields)]}
    return Features({**texts, "label": label})


def input_keys(dataset: Dataset) -> list[str]:
    """Whitespace-normalised input of each example (pairs joined by a separator)."""
    columns = [column(dataset, c) for c in TEXT_COLUMNS if c in dataset.column_names]
    return ["\x1e".join(" ".join(t.split()) for t in texts) for texts in zip(*columns, strict=True)]


def _hash_order(keys: Sequence[str], seed: int, salt: str) -> list[int]:
    """Indices sorted by a keyed hash of their content: a seeded, platform-independent shuffle."""
    digests = [
        hashlib.blake2b(f"{salt}\x1f{seed}\x1f{k}".encode(), digest_size=8).digest() for k in keys
    ]
    return sorted(range(len(keys)), key=lambda i: (digests[i], i))


def _dedupe(pool: Dataset, exclude: set[str], name: str) -> Dataset:
    """Drop repeats, inputs with conflicting labels and inputs listed in ``exclude``."""
    first: dict[str, int] = {}
    conflicting: set[str] = set()
    labels = column(pool, "label")
    for i, key in enumerate(input_keys(pool)):
        if key not in first:
            first[key] = i
        elif labels[first[key]] != labels[i]:
            conflicting.add(key)
    keep = sorted(i for key, i in first.items() if key not in conflicting and key not in exclude)
    counts = (len(pool) - len(first), len(conflicting), len(first.keys() & exclude))
    logger.info("task %s: train pool drops %d repeats, %d conflicting, %d held-out", name, *counts)
    return pool.select(keep)


def prepare_splits(
    spec: TaskSpec, raw: Mapping[str, Dataset], *, seed: int = 0
) -> dict[str, Dataset]:
    """Standardise the raw source splits and return ``{"train", "validation", "test"}``.

    Args:
        spec: the task; ``spec.splits`` names the source splits to use.
        raw: ``{source split name: Dataset}``, e.g. from :func:`osrm.tasks.sources.read_raw`.
        seed: seed of the carved splits.
    """
    policy = spec.splits
    names = policy.source_names()
    absent = [src for src in names.values() if src not in raw]
    if absent:
        have = ", ".join(raw) or "none"
        raise OsrmError(f"task '{spec.name}': source has no split '{absent[0]}' (has: {have})")
    files = dict(spec.files)
    std = {
        ours: standardise(spec, raw[src], origin=files.get(src) or f"{spec.source} split '{src}'")
        for ours, src in names.items()
    }
    given = {ours: ds for ours, ds in std.items() if ours != "train"}
    held_out = {key for ds in given.values() for key in input_keys(ds)}
    pool = _dedupe(std["train"], held_out, spec.name)
    order = _hash_order(input_keys(pool), seed, salt="split")
    shares = {"test": policy.test_fraction, "validation": policy.validation_fraction}
    out, start = dict(given), 0
    for split, share in shares.items():
        if split not in out:  # carve: at least one example for a non-zero share
            n = max(1, round(share * len(pool))) if share > 0 else 0
            out[split] = pool.select(sorted(order[start : start + n]))
            start += n
    out["train"] = pool.select(sorted(order[start:]))
    if len(out["train"]) == 0:
        raise OsrmError(f"task '{spec.name}': {len(pool)} distinct examples are too few to split")
    return {split: out[split] for split in SPLITS}


def subsample(dataset: Dataset, n: int, *, seed: int = 0, salt: str = "") -> Dataset:
    """A seeded, deterministic subset of ``n`` examples (in their original order)."""
    if n >= len(dataset):
        return dataset
    order = _hash_order(input_keys(dataset), seed, salt=f"subset:{salt}")
    return dataset.select(sorted(order[:n]))
