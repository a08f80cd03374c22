"""osrm's progress bars: tqdm, switched off everywhere by ``osrm -q``."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm as _tqdm

_quiet = False


def set_quiet(quiet: bool) -> None:
    """``True``: every bar made by :func:`tqdm` from now on is disabled, and the hub's download
    bars too (datasets' and transformers' bars are always off in the CLI)."""
    global _quiet
    _quiet = quiet
    if quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def tqdm(*args: Any, disable: bool = False, **kwargs: Any) -> _tqdm:
    """``tqdm.auto.tqdm``, disabled when quiet."""
    return _tqdm(*args, disable=disable or _quiet, **kwargs)
