"""``predictions.jsonl`` as it is being written: appended and flushed per batch, resumable.

A killed run can leave a half-written last line; :func:`recover_predictions`
keeps every complete line and cuts the rest, so a rerun answers exactly the
questions that are missing: none lost, none twice.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from slakevqa.errors import DataError
from slakevqa.records import Prediction

log = logging.getLogger(__name__)


def recover_predictions(path: Path) -> list[Prediction]:
    """Complete predictions already in ``path`` (a missing file is an empty run); a torn tail is cut off."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
    rows, seen = [], set()
    for number, line in enumerate(data[:good_end].split(b"\n"), start=1):  # only newlines end a line
        if not line.strip():
            continue
        prediction = Prediction.from_json(parse_line(line, path, number), str(path), f"line {number}")
        if prediction.qid not in seen:
            seen.add(prediction.qid)
            rows.append(prediction)
    if good_end < len(data):
        log.warning("%s: dropped a partly written last line (%d bytes) from an interrupted run",
                    path, len(data) - good_end)
        with path.open("r+b") as handle:
            handle.truncate(good_end)
    return rows


def parse_line(line: bytes, path: Path, number: int) -> dict:
    """One complete line as JSON; anything else is a DataError naming the file and the line.

    Only the bytes after the last newline can be torn by a kill; a bad line before it was
    written by something else, and resuming past it would hide that.
    """
    try:
        value = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text; this is not a file a slakevqa run wrote (use a fresh --output_dir, "
                        "or --overwrite)", record=f"line {number}") from None
    except json.JSONDecodeError as error:
        raise DataError(path, f"not JSON ({error.msg}); only a torn last line is cut when resuming "
                        "(use a fresh --output_dir, or --overwrite)", record=f"line {number}") from None
    except RecursionError:
        raise DataError(path, "JSON nested too deeply", record=f"line {number}") from None
    if not isinstance(value, dict):
        raise DataError(path, f"a JSON {type(value).__name__}, not a prediction object", record=f"line {number}")
    return value


class PredictionWriter:
    """Appends predictions, one JSON line each, flushed and synced after every batch."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("a", encoding="utf-8")

    def write(self, rows: list[Prediction]) -> None:
        self.handle.write("".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rows))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()
