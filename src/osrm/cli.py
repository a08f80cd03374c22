"""Command line: argument parsing only; the work happens in :mod:`osrm.pipeline`.

Every command is one row of :data:`COMMANDS` (its arguments, its handler, its help, examples).

User mistakes (:class:`osrm.errors.OsrmError`) and failed file operations (``OSError``: a full
disk, a missing or read-only path) print one line on stderr and exit with status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple, NoReturn

from osrm import __version__, progress
from osrm.argtypes import (
    finite_float,
    int_range,
    non_negative_float,
    positive_int,
    seed_int,
    weight_arg,
)
from osrm.errors import OsrmError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. lora.rank=16")


def _cmd_run(args: argparse.Namespace) -> None:
    from osrm import pipeline

    pipeline.print_summary(pipeline.run(args.config, args.overrides))


def _cmd_stats(args: argparse.Namespace) -> None:
    from osrm import pipeline

    out = pipeline.run(args.config, args.overrides, until="stats")
    print(f"\n{out['subspace_table']}\n\nstatistics: {out['run_dir']}/stats/")


def _cmd_train(args: argparse.Namespace) -> None:
    from osrm import pipeline

    out = pipeline.run(args.config, args.overrides, until="train")
    for (init, task), path in out["adapters"].items():
        print(f"{init:10s} {task:22s} {path}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from osrm import pipeline

    if args.config is not None:
        if args.adapter or args.merged:
            raise OsrmError("give a CONFIG or --adapter/--merged, not both")
        out = pipeline.run(args.config, args.overrides, until="eval")
        pipeline.print_summary({**out, "report": None})
        print(f"results: {out['run_dir']}/results.jsonl")
    else:
        from osrm import adapter_commands

        print(json.dumps(adapter_commands.eval_one(args), indent=2))


def _cmd_merge(args: argparse.Namespace) -> None:
    from osrm import adapter_commands, locking
    from osrm.artifacts import keep_existing

    # one osrm merge at a time per --out (the lock file is removed afterwards); without --force
    # an --out that another program creates meanwhile is not replaced either
    keep = contextlib.nullcontext() if args.force else keep_existing(args.out)
    with locking.held(locking.beside(args.out), f"--out {args.out}"), keep:
        print(json.dumps(adapter_commands.merge(args), indent=2))


def _cmd_report(args: argparse.Namespace) -> None:
    from osrm import pipeline

    paths = pipeline.report(args.run_dir)
    print(f"report: {paths['html']} (tables: {paths['markdown']}, {paths['csv']})")


def _cmd_demo(args: argparse.Namespace) -> None:
    from osrm import pipeline

    pipeline.demo(args.run_dir, args.overrides, quick=args.quick)


def _add_eval(p: argparse.ArgumentParser) -> None:
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


def _add_merge(p: argparse.ArgumentParser) -> None:
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


def _add_retrofit(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "adapters", nargs="+", metavar="ADAPTER",
        help="adapter dirs, or TASK=DIR for adapters that carry no osrm task name",
    )  # fmt: skip
    p.add_argument("--stats", nargs="+", required=True, help="one statistics file per task")
    p.add_argument("--mu", type=non_negative_float, required=True,
                   help="weight of the other tasks' output removed (0: unchanged)")  # fmt: skip
    p.add_argument("--out", required=True, help="output directory: one adapter per task inside")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def _cmd_retrofit(args: argparse.Namespace) -> None:
    from osrm import adapter_commands, locking

    with locking.held(locking.beside(args.out), f"--out {args.out}"):
        print(json.dumps(adapter_commands.retrofit(args), indent=2))


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory")


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="3 tasks, small limits (< 5 minutes)")
    p.add_argument("--run-dir", default=None, help="where artifacts go (default: runs/demo)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


class Command(NamedTuple):
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], None]
    help: str
    examples: tuple[str, ...]


# name -> (add_arguments, handler, help, examples): one row per command
COMMANDS: dict[str, Command] = {
    "run": Command(
        _config_args, _cmd_run,
        "the whole job: statistics, OSRM bases, training, merging, evaluation, report",
        ("osrm run configs/demo.yaml",
         "osrm run configs/demo.yaml lora.rank=16 run_dir=runs/r16",
         "osrm run configs/offline-suite.yaml 'merge.methods={ties: {density: [0.1, 0.2]}}'"),
    ),
    "stats": Command(
        _config_args, _cmd_stats,
        "activation statistics per task and the OSRM subspace diagnostics",
        ("osrm stats configs/demo.yaml", "osrm stats configs/demo.yaml stats.examples=512"),
    ),
    "train": Command(
        _config_args, _cmd_train,
        "train one adapter per (init, task) of a config (statistics first if needed)",
        ("osrm train configs/demo.yaml", "osrm train configs/demo.yaml 'lora.inits=[osrm]'"),
    ),
    "eval": Command(
        _add_eval, _cmd_eval,
        "evaluate a config's models, or one adapter / merged model on a task",
        ("osrm eval configs/demo.yaml",
         "osrm eval --adapter runs/demo/adapters/osrm/trec --task trec",
         "osrm eval --merged merged/ta --task sms_spam --split test"),
    ),
    "merge": Command(
        _add_merge, _cmd_merge,
        "merge peft LoRA adapters (any ranks) into a dense model or a LoRA adapter",
        ("osrm merge a/ b/ c/ --method ties --density 0.2 --out merged/ties",
         "osrm merge a/ b/ --method task_arithmetic --scale 0.5 --format lora --out merged/ta",
         "osrm merge a/ b/ --method regmean --stats a.safetensors b.safetensors --out merged/rm"),
    ),
    "retrofit": Command(
        _add_retrofit, _cmd_retrofit,
        "make existing LoRA adapters merge-ready from statistics (no training)",
        ("osrm retrofit runs/demo/adapters/lora/* --stats runs/demo/stats/*.safetensors "
         "--mu 0.5 --out retro/",
         "osrm retrofit sst2=ad/sst2 rte=ad/rte --stats sst2.safetensors rte.safetensors "
         "--mu 1 --out retro/"),
    ),
    "report": Command(
        _add_report, _cmd_report,
        "rebuild results.md/csv, plots and report.html of a run directory",
        ("osrm report runs/demo",),
    ),
    "demo": Command(
        _add_demo, _cmd_demo,
        "the embedded default on real offline data (all-MiniLM-L6-v2, 6 tasks)",
        ("osrm demo", "osrm demo --quick", "osrm demo --run-dir /tmp/demo train.steps=50"),
    ),
}  # fmt: skip


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, like every other input error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"osrm: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="osrm", description="Merge-ready LoRA fine-tuning with OSRM orthogonal subspaces."
    )
    parser.add_argument("--version", action="version", version=f"osrm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(
            name, help=command.help, description=command.help,
            epilog="examples:\n  " + "\n  ".join(command.examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        command.add_arguments(p)
        p.set_defaults(func=command.handler)
    return parser


def no_file_size_signal() -> None:
    """Past a file-size limit (``ulimit -f``) a write fails with EFBIG, reported as one line
    naming the artifact, instead of SIGXFSZ killing the process mid-write."""
    if hasattr(signal, "SIGXFSZ"):
        with contextlib.suppress(ValueError):  # not the main thread (e.g. inside a test runner)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def quiet_libraries() -> None:
    """Keep our own progress bars and logs; silence per-file load reports and map bars."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def error_line(err: BaseException) -> str:
    """The one stderr line for a user or file-system error (whitespace runs collapsed)."""
    if isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename is not None else ""
        text = f"{where}{err.strerror or err}"
    else:
        text = str(err)
    return "osrm: error: " + " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 2 for input errors, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    quiet_libraries()
    no_file_size_signal()
    progress.set_quiet(args.quiet)
    clean = False
    try:
        args.func(args)
        clean = True
        return 0
    except (OsrmError, OSError) as e:
        if args.debug:
            raise
        print(error_line(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("osrm: interrupted", file=sys.stderr)
        return 130
    finally:
        progress.set_quiet(False)
        _end_process_group(clean)


def _end_process_group(clean: bool) -> None:
    """Under a launcher, close the process group before exit (see osrm.distributed.shutdown)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        from osrm.distributed import shutdown

        shutdown(clean)


if __name__ == "__main__":
    sys.exit(main())
