"""Output folders that are really folders, files written so that a killed run never leaves a half-written one,
and JSON-lines files read with every bad line located."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from slakevqa.errors import DataError, UserError


def check_output_dir(path: str | Path, flag: str) -> Path:
    """``path`` as a Path, or a UserError naming ``flag`` when it, or a folder above it, is a file.

    Nothing is created: configs call this before any data or model is loaded.
    Without it, ``mkdir(parents=True, exist_ok=True)`` ends in a FileExistsError traceback.

    >>> check_output_dir("runs/new-run", "--output_dir")
    PosixPath('runs/new-run')
    """
    path = Path(path)
    for folder in (path, *path.parents):  # the nearest existing one decides
        if folder.exists():
            if not folder.is_dir():
                where = "" if folder == path else f": {folder}"
                raise UserError(f"{flag} {path}{where} is a file, not a folder; give a folder path")
            break
    return path


def make_output_dir(path: str | Path, flag: str) -> Path:
    """:func:`check_output_dir`, then create the folder (and its parents)."""
    path = check_output_dir(path, flag)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data: object, indent: int | None = 2) -> Path:
    """:func:`write_text_atomic` for JSON (UTF-8, Chinese kept readable)."""
    return write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def json_lines(path: str | Path) -> Iterator[tuple[int, object]]:
    """``(line number, record)`` for each non-blank line of a JSON-lines file.

    Only newlines end a line (not U+2028, which ``str.splitlines`` would split at). A line
    that is not JSON, or a file that cannot be read as UTF-8, raises a DataError naming
    the file and the line.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(path, f"not JSON ({error.msg})", record=f"line {number}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read the file ({error})") from None
