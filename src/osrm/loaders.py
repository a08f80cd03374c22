"""Checked loaders: the one way osrm reads back its own JSON, YAML and JSON-lines files.

A missing, unreadable or corrupt file is one :class:`~osrm.errors.OsrmError` line naming the
file (and line), never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from osrm.errors import OsrmError, one_line

log = logging.getLogger(__name__)
_REDO = "delete it (or restore it) and re-run"
_KIND = {dict: "object (mapping)", list: "array (list)"}


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise OsrmError(f"{path}: cannot read {what} ({e.strerror or e})") from None


def _read_text(path: Path, what: str) -> str:
    try:
        return _read_bytes(path, what).decode("utf-8")
    except UnicodeDecodeError:
        raise OsrmError(f"{path}: {what} is not UTF-8 text; {_REDO}") from None


def _check_type(path: Path, what: str, data: Any, expect: type | None) -> Any:
    if expect is not None and not isinstance(data, expect):
        raise OsrmError(
            f"{path}: {what} should hold a JSON {_KIND.get(expect, expect.__name__)}, "
            f"got {type(data).__name__}; {_REDO}"
        )
    return data


def read_json(path: str | os.PathLike, what: str, expect: type | None = dict) -> Any:
    """A JSON file osrm wrote (``what`` names it in errors), checked to be an ``expect``."""
    path = Path(path)
    try:
        data = json.loads(_read_text(path, what))
    except json.JSONDecodeError as e:
        raise OsrmError(f"{path}:{e.lineno}: {what} is not valid JSON ({e.msg}); {_REDO}") from None
    return _check_type(path, what, data, expect)


def read_yaml(path: str | os.PathLike, what: str, expect: type | None = dict) -> Any:
    """A YAML file (an empty file reads as an empty ``expect``), checked to be an ``expect``."""
    path = Path(path)
    try:
        data = yaml.safe_load(_read_text(path, what))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = one_line(getattr(e, "problem", None) or e)
        raise OsrmError(f"{path}{where}: {what} is not valid YAML ({problem})") from None
    if data is None and expect is not None:
        data = expect()
    return _check_type(path, what, data, expect)


def read_jsonl(path: str | os.PathLike, what: str) -> list[tuple[int, dict]]:
    """``(line number, object)`` of every complete line of a JSON-lines file (none if the
    file is missing). An unterminated last line is what an interrupted append leaves: it is
    skipped with a warning (its content is computed again)."""
    path = Path(path)
    if not path.is_file():
        return []
    *lines, partial = _read_bytes(path, what).split(b"\n")
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise OsrmError(
                f"{path}:{number}: not a {what} line ({type(e).__name__}); delete that line and "
                "re-run to compute it again"
            ) from None
        if not isinstance(data, dict):
            raise OsrmError(
                f"{path}:{number}: not a {what} line (a JSON {type(data).__name__}, expected an "
                "object); delete that line and re-run to compute it again"
            )
        out.append((number, data))
    if partial.strip():
        log.warning("%s: ignoring an incomplete last line (an interrupted write)", path)
    return out
