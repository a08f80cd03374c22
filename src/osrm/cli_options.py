"""The arguments of each ``osrm`` command (one function per command, used by
:data:`osrm.cli.COMMANDS`); numeric flags are checked by :mod:`osrm.argtypes`."""

from __future__ import annotations

import argparse

from osrm.argtypes import (
    finite_float,
    int_range,
    label_list,
    non_negative_float,
    positive_int,
    seed_int,
    weight_arg,
)


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. lora.rank=16")


def eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config", nargs="?", help="YAML config: evaluate its base/individual/merged models"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--adapter", help="a peft adapter directory (with its task head)")
    p.add_argument("--merged", help="a merged output (dense or LoRA) written by `osrm merge`")
    p.add_argument("--task", help="task name (registry) for --adapter/--merged")
    p.add_argument(
        "--base", help="base model for --adapter/--merged (default: the one they record)"
    )
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--max-examples", type=positive_int, default=None)
    p.add_argument("--max-length", type=int_range(2), default=128)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--seed", type=seed_int, default=0, help="split seed")


def merge_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "adapters", nargs="+", metavar="ADAPTER", help="adapter dirs (or hub names online)"
    )
    p.add_argument("--method", required=True, help="merge method, e.g. task_arithmetic, ties")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument(
        "--weights", type=weight_arg, nargs="+", metavar="W",
        help="one weight per adapter (default 1), or `auto` / `auto-per-module`: the λ that "
        "minimise the merged update's error on every task's inputs (needs --stats)",
    )  # fmt: skip
    p.add_argument("--scale", type=finite_float, help="λ: scale of the merged delta")
    p.add_argument("--density", type=finite_float, help="fraction kept (TIES, DARE, pruning)")
    p.add_argument("--seed", type=seed_int, help="seed of random methods (DARE)")
    p.add_argument(
        "--normalize", action="store_true",
        help="TIES/DARE-TIES: divide by the agreeing tasks' summed weights (mergekit), "
        "not by their count",
    )  # fmt: skip
    p.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE", help="other hyperparameters")
    p.add_argument("--format", choices=["dense", "lora"], default="dense")
    p.add_argument("--rank", type=positive_int, help="LoRA output: truncate to this rank (SVD)")
    p.add_argument("--base", help="dense output: base model (default: the adapters' base)")
    p.add_argument(
        "--stats", nargs="+", help="regmean and --weights auto: one statistics file per adapter"
    )
    p.add_argument("--tasks", nargs="+", help="task names of the adapters (default: from them)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def retrofit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "adapters", nargs="+", metavar="ADAPTER",
        help="adapter dirs, or TASK=DIR for adapters that carry no osrm task name",
    )  # fmt: skip
    p.add_argument("--stats", nargs="+", required=True, help="one statistics file per task")
    p.add_argument("--mu", type=non_negative_float, required=True,
                   help="weight of the other tasks' output removed (0: unchanged)")  # fmt: skip
    p.add_argument("--out", required=True, help="output directory: one adapter per task inside")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a trained run directory (`osrm run`)")
    p.add_argument("task", metavar="TASK", help="a built-in task, or the name of a task block")
    p.add_argument(
        "fields", nargs="*", metavar="KEY=VALUE",
        help="the task block's fields (values as YAML), as in a config's tasks list",
    )  # fmt: skip
    p.add_argument(
        "--retrofit-mu", type=non_negative_float, metavar="MU",
        help="also retrofit the existing adapters against the new task's inputs",
    )  # fmt: skip


def predict_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL_DIR",
                   help="an `osrm merge` output (dense or LoRA) or one peft adapter")  # fmt: skip
    p.add_argument("--task", required=True, help="which head to use (`osrm predict` lists them)")
    p.add_argument("--input", required=True, help="a .csv, .tsv, .jsonl or .parquet file")
    p.add_argument(
        "--text-field",
        action="append",
        metavar="COLUMN",
        help="the text column; twice for pair tasks (default: text [and text_pair])",
    )
    p.add_argument(
        "--labels",
        type=label_list,
        default=None,
        metavar="NAME,NAME,...",
        help="class names of a task that is not built in, in head order",
    )
    p.add_argument("--out", required=True, help="predictions, one JSON line per input row")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--base", help="base model (default: the one the model records)")
    p.add_argument("--max-length", type=int_range(2), default=128)
    p.add_argument("--batch-size", type=positive_int, default=64)


def report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory")
    p.add_argument("--seeds", nargs="+", default=[], metavar="RUN_DIR",
                   help="runs of the same config with other seeds: the verdict pools them "
                   "(mean ± spread over seeds)")  # fmt: skip


def demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="3 tasks, small limits (< 5 minutes)")
    p.add_argument("--run-dir", default=None, help="where artifacts go (default: runs/demo)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
