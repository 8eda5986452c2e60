"""User-facing errors: one line that names the file, the record and the field.

The CLI prints ``str(error)`` and exits non-zero without a traceback (``--debug``
shows it). Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Something the user can fix: bad input, a missing file, a wrong flag."""


class DataError(UserError):
    """Bad dataset input, located precisely.

    >>> str(DataError("Slake1.0/train.json", "field has the wrong type", record="qid 17", field="triple"))
    "Slake1.0/train.json: qid 17: field 'triple': field has the wrong type"
    """

    def __init__(self, path: str | Path, problem: str, record: str | None = None,
                 field: str | None = None) -> None:
        self.path, self.problem, self.record, self.field = str(path), problem, record, field
        parts = [self.path]
        if record is not None:
            parts.append(record)
        if field is not None:
            parts.append(f"field '{field}'")
        super().__init__(": ".join(parts + [problem]))
