"""What every benchmark script in bench/ shares: its command line, its thread setup, printing its
measurements, writing its JSON result, and the environment stamp bench/all.py records beside it.

Importing this module imports neither torch nor osrm (bench/all.py and bench/report.py use it
without them); the functions that need them import them when called.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).parents[1]
RESULTS = REPO / "bench" / "results"
JSON_HELP = "also write the result here"
PACKAGES = ("osrm", "torch", "transformers", "peft", "accelerate", "safetensors", "scikit-learn")
# what counts as uncommitted changes: everything but the outputs that every benchmark run rewrites
SOURCES = (
    "--",
    ".",
    ":(exclude)bench/results",
    ":(exclude)docs/results",
    ":(exclude)docs/RESULTS.md",
)


def new_parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's parser, described by the first line of its module docstring."""
    return argparse.ArgumentParser(description=(doc or "").splitlines()[0])


def add_json(
    parser: argparse.ArgumentParser, help: str | None = JSON_HELP, default: str | None = None
) -> None:
    """The ``--json`` option every benchmark has: where to write its result."""
    parser.add_argument("--json", default=default, help=help)


def variant_args(
    doc: str | None, json_default: str, flags: Mapping[str, str] | None = None
) -> tuple[argparse.Namespace, str]:
    """Parse the options of a benchmark with full / --quick / --smoke variants (``--run-root``,
    ``--json``, and the benchmark's own on/off ``flags``: name -> help); returns the arguments
    and the variant's name."""
    parser = new_parser(doc)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-root", default=None)
    for name, text in (flags or {}).items():
        parser.add_argument(name, action="store_true", help=text)
    add_json(parser, help=f"default: {json_default}")
    args = parser.parse_args()
    return args, next((n for n in ("smoke", "quick") if getattr(args, n)), "full")


def setup_torch(threads: int = 2) -> None:
    """At most ``threads`` torch threads (capped by the CPUs), and quiet library logging."""
    import torch

    from osrm.cli import quiet_libraries

    torch.set_num_threads(min(threads, os.cpu_count() or 1))
    quiet_libraries()


def print_summary(title: str, lines: Sequence[str]) -> None:
    """The measurements on the console: a title line, then each line indented by two spaces."""
    print(title)
    for line in lines:
        print("  " + line)


def write_json(path: str | Path | None, result: object, indent: int = 2) -> None:
    """Write ``result`` as JSON to ``path`` (nothing when it is None), atomically: a temporary
    sibling then a rename, so an interrupted run never leaves half a file."""
    if path is None:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=indent))
    tmp.replace(out)


def environment() -> dict:
    """Package versions and the machine, recorded beside every result (in index.json)."""
    return {
        "packages": {p: version(p) for p in PACKAGES},
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no", *SOURCES)),
    }


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return out.stdout.strip()
