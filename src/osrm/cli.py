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
from osrm.cli_options import (
    add_task_options,
    config_args,
    demo_options,
    eval_options,
    merge_options,
    predict_options,
    report_options,
    retrofit_options,
)
from osrm.errors import OsrmError, one_line


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


def _cmd_predict(args: argparse.Namespace) -> None:
    from osrm import adapter_commands

    print(json.dumps(adapter_commands.predict(args), indent=2))


def _cmd_report(args: argparse.Namespace) -> None:
    from osrm import pipeline

    paths = pipeline.report(args.run_dir, args.seeds)
    print(f"report: {paths['html']} (tables: {paths['markdown']}, {paths['csv']})")


def _cmd_demo(args: argparse.Namespace) -> None:
    from osrm import pipeline

    pipeline.demo(args.run_dir, args.overrides, quick=args.quick)


def _cmd_retrofit(args: argparse.Namespace) -> None:
    from osrm import adapter_commands, locking

    with locking.held(locking.beside(args.out), f"--out {args.out}"):
        print(json.dumps(adapter_commands.retrofit(args), indent=2))


def _cmd_add_task(args: argparse.Namespace) -> None:
    from osrm.add_task import add_task
    from osrm.config import apply_overrides
    from osrm.history import change_table

    fields = apply_overrides({}, args.fields)
    out = add_task(args.run_dir, args.task, fields, retrofit_mu=args.retrofit_mu)
    print(f"\n{change_table(out)}\n")
    if out["not_scored"]:
        print(f"not scored after the addition (evaluation data not readable): "
              f"{', '.join(out['not_scored'])}")  # fmt: skip
    print(f"history: {out['history']}; report: {out['report']['html']}")


class Command(NamedTuple):
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], None]
    help: str
    examples: tuple[str, ...]


# name -> (add_arguments, handler, help, examples): one row per command
COMMANDS: dict[str, Command] = {
    "run": Command(
        config_args, _cmd_run,
        "the whole job: statistics, OSRM bases, training, merging, evaluation, report",
        ("osrm run configs/demo.yaml",
         "osrm run configs/demo.yaml lora.rank=16 run_dir=runs/r16",
         "osrm run configs/offline-suite.yaml 'merge.methods={ties: {density: [0.1, 0.2]}}'"),
    ),
    "stats": Command(
        config_args, _cmd_stats,
        "activation statistics per task and the OSRM subspace diagnostics",
        ("osrm stats configs/demo.yaml", "osrm stats configs/demo.yaml stats.examples=512"),
    ),
    "train": Command(
        config_args, _cmd_train,
        "train one adapter per (init, task) of a config (statistics first if needed)",
        ("osrm train configs/demo.yaml", "osrm train configs/demo.yaml 'lora.inits=[osrm]'"),
    ),
    "eval": Command(
        eval_options, _cmd_eval,
        "evaluate a config's models, or one adapter / merged model on a task",
        ("osrm eval configs/demo.yaml",
         "osrm eval --adapter runs/demo/adapters/osrm/trec --task trec",
         "osrm eval --merged merged/ta --task sms_spam --split test"),
    ),
    "merge": Command(
        merge_options, _cmd_merge,
        "merge peft LoRA adapters (any ranks) into a dense model or a LoRA adapter",
        ("osrm merge a/ b/ c/ --method ties --density 0.2 --out merged/ties",
         "osrm merge a/ b/ --method task_arithmetic --scale 0.5 --format lora --out merged/ta",
         "osrm merge a/ b/ --method regmean --stats a.safetensors b.safetensors --out merged/rm"),
    ),
    "retrofit": Command(
        retrofit_options, _cmd_retrofit,
        "make existing LoRA adapters merge-ready from statistics (no training)",
        ("osrm retrofit runs/demo/adapters/lora/* --stats runs/demo/stats/*.safetensors "
         "--mu 0.5 --out retro/",
         "osrm retrofit sst2=ad/sst2 rte=ad/rte --stats sst2.safetensors rte.safetensors "
         "--mu 1 --out retro/"),
    ),
    "add-task": Command(
        add_task_options, _cmd_add_task,
        "add a task to a trained run from the old tasks' statistics only, then merge again",
        ("osrm add-task runs/demo vitaminc",
         "osrm add-task runs/demo vitaminc --retrofit-mu 0.5",
         "osrm add-task runs/demo reviews 'files={train: reviews.csv}' text_fields=review "
         "label_field=stars 'label_names=[1, 2, 3, 4, 5]'"),
    ),
    "predict": Command(
        predict_options, _cmd_predict,
        "predict with a merged model (or one adapter) on a file of texts, for one task",
        ("osrm predict merged/ties --task trec --input questions.csv --out trec.jsonl",
         "osrm predict merged/ta --task epistemic_reasoning --input pairs.jsonl "
         "--text-field premise --text-field hypothesis --out pairs.predictions.jsonl"),
    ),
    "report": Command(
        report_options, _cmd_report,
        "rebuild results.md/csv, plots and report.html of a run directory",
        ("osrm report runs/demo", "osrm report runs/s0 --seeds runs/s1 runs/s2"),
    ),
    "demo": Command(
        demo_options, _cmd_demo,
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
    return "osrm: error: " + one_line(text)


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
