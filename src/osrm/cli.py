"""Command line: argument parsing only; the work happens in :mod:`osrm.pipeline`.

User mistakes (:class:`osrm.errors.OsrmError`) print one line on stderr and exit with status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from osrm import __version__
from osrm.errors import OsrmError

EXAMPLES = {
    "demo": "examples:\n  osrm demo\n  osrm demo --run-dir /tmp/osrm-demo stats.examples=64",
}


def _demo(args: argparse.Namespace) -> int:
    from osrm import pipeline

    pipeline.demo(args.run_dir, args.overrides)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="osrm", description="Merge-ready LoRA fine-tuning with OSRM orthogonal subspaces."
    )
    parser.add_argument("--version", action="version", version=f"osrm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="statistics and OSRM subspaces on real offline data (all-MiniLM-L6-v2)",
        description="Collect activation statistics of 6 real tasks on all-MiniLM-L6-v2, build "
        "OSRM subspaces in every mode and print how much input energy each captures.",
        epilog=EXAMPLES["demo"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--run-dir", default=None, help="where artifacts go (default: runs/demo)")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    demo.set_defaults(func=_demo)
    return parser


def quiet_libraries() -> None:
    """Keep our own progress bars and logs; silence per-file load reports and map bars."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    quiet_libraries()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except OsrmError as e:
        if args.debug:
            raise
        print(f"osrm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("osrm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
