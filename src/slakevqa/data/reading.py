"""Dataset text files read with every failure turned into one located DataError.

Split files, ``detection.json``, ``mask.txt`` and the KG csv files all come through here:
bytes that are not UTF-8 name their line, invalid JSON its line and column, and JSON
nested deeper than Python's recursion limit (``[[[[...`` 200,000 levels) is refused
instead of ending in a RecursionError traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from slakevqa.errors import DataError


def read_utf8(path: str | Path) -> str:
    """The text of ``path``; DataError naming the file (and the line of a byte that is not UTF-8).

    A UTF-8 byte-order mark is dropped (spreadsheet exports write one).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise DataError(path, f"cannot read the file ({error})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise DataError(path, f"not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); "
                              "save the file as UTF-8", record=f"line {line}") from None


def parse_json(text: str, path: str | Path) -> object:
    """``json.loads(text)``; invalid or too deeply nested JSON is a DataError naming ``path``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(path, f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    except RecursionError:
        raise DataError(path, "invalid JSON: nested too deeply for a dataset file") from None


def read_json(path: str | Path) -> object:
    """:func:`read_utf8` then :func:`parse_json`."""
    return parse_json(read_utf8(path), path)
