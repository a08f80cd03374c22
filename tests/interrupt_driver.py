"""Run the osrm CLI and SIGKILL it at a chosen point (test helper; no hook lives in osrm itself).

Usage: ``python tests/interrupt_driver.py POINT N osrm-args...``. The N-th time the process
reaches POINT it kills itself with SIGKILL, like an OOM killer or a pre-empted node would:

- ``stats``: half-way through writing a statistics file (its temporary file is half written);
- ``train``: right after a training checkpoint is saved, in the middle of an adapter's steps;
- ``result``: half-way through appending a line to results.jsonl (a truncated last line);
- ``merged``: inside the atomic write of a merged model, after its weights are written.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _on_nth(n: int, before, after=None):
    """Wrap a function: the n-th call runs ``before`` (or the call and then ``after``) and dies."""
    calls = {"n": 0}

    def wrap(real):
        def inner(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] != n:
                return real(*args, **kwargs)
            if before is not None:
                before(real, *args, **kwargs)
            else:
                real(*args, **kwargs)
            _die()

        return inner

    return wrap


def install(point: str, n: int) -> None:
    """Patch the function behind ``point`` so that its n-th call ends the process."""
    if point == "none":  # a clean run, in its own process
        return
    if point == "stats":
        import safetensors.torch

        def half_file(real, tensors, filename, metadata=None):
            real(tensors, filename, metadata=metadata)
            size = os.path.getsize(filename)
            with open(filename, "r+b") as f:
                f.truncate(size // 2)

        real = safetensors.torch.save_file
        wrapped = _on_nth(n, half_file)(real)
        safetensors.torch.save_file = (  # only statistics files count
            lambda t, f, metadata=None: (
                wrapped(t, f, metadata=metadata)
                if Path(f).parent.name == "stats"
                else real(t, f, metadata=metadata)
            )
        )
    elif point == "train":
        import osrm.train

        osrm.train.save_checkpoint = _on_nth(n, None)(osrm.train.save_checkpoint)
    elif point == "result":
        import osrm.stages.evaluation as evaluation

        def half_line(real, path, results):
            import json
            from dataclasses import asdict

            line = json.dumps(asdict(list(results)[0])) + "\n"
            with open(path, "a") as f:
                f.write(line[: len(line) // 2])

        evaluation.append_results = _on_nth(n, half_line)(evaluation.append_results)
    elif point == "merged":
        import osrm.merging.outputs as outputs  # merge.save writes through write_dense

        skip = _on_nth(n, lambda real, *args, **kwargs: None)  # die before the manifest
        outputs.write_manifest = skip(outputs.write_manifest)
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    torch.set_num_threads(min(2, os.cpu_count() or 1))  # as conftest: same reductions, same bits
    install(sys.argv[1], int(sys.argv[2]))
    from osrm.cli import main

    sys.exit(main(sys.argv[3:]))
