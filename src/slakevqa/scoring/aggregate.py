"""Per-question scores -> means with counts and 95% bootstrap intervals, per group and slice.

Every number is a *cell* ``{"value", "ci_low", "ci_high", "n"}`` (fractions in
[0, 1]; all ``None`` when n == 0). Cells are addressed by a path: a group
(``OPEN``, ``CLOSED``, ``overall``) for the headline, or ``(field, value, group)``
for a slice such as ``("modality", "CT", "OPEN")``.

Intervals are percentile bootstraps. A cell draws its resamples from a generator
seeded with ``(seed, crc32 of the cell's qids)``: the interval does not depend on
which other cells or scorers were computed, and the same questions are always
resampled the same way (``choice`` CLOSED and overall agree; so do scorers that
cover the same rows, and both runs of a paired comparison).
"""

from __future__ import annotations

import zlib
from typing import Iterator, Sequence

import numpy as np

from slakevqa.records import SLICE_FIELDS, Prediction
from slakevqa.scoring import get_scorer, scored_text

GROUPS: tuple[str, ...] = ("OPEN", "CLOSED", "overall")
RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95
CellPath = tuple[str, ...]


def score_rows(rows: Sequence[Prediction], scorers: Sequence[str],
               text_field: str = "prediction") -> dict[str, np.ndarray]:
    """One float per row and scorer; NaN where the scorer does not cover the row or defines no value.

    >>> rows = [Prediction(qid=1, question="q", answer="No", answer_type="CLOSED", prediction="nodule")]
    >>> score_rows(rows, ["llava_med", "exact"])["llava_med"].tolist()
    [1.0]
    """
    table = {}
    for name in scorers:
        spec = get_scorer(name)
        values = [spec.fn(scored_text(name, row, text_field), row.answer, row.answer_type)
                  if row.answer_type in spec.answer_types else None for row in rows]
        table[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return table


def cell_masks(rows: Sequence[Prediction],
               slice_fields: Sequence[str] = SLICE_FIELDS) -> Iterator[tuple[CellPath, np.ndarray]]:
    """Yield ``(path, row mask)`` for the headline groups, then every slice's groups.

    Slice values come in order of falling count, then name.
    """
    types = np.array([row.answer_type for row in rows])
    by_group = {"OPEN": types == "OPEN", "CLOSED": types == "CLOSED",
                "overall": np.ones(len(rows), dtype=bool)}
    for group in GROUPS:
        yield (group,), by_group[group]
    for field in slice_fields:
        labels = np.array([str(getattr(row, field)) for row in rows])
        values, counts = np.unique(labels, return_counts=True)
        for _, value in sorted(zip(-counts, values.tolist())):
            for group in GROUPS:
                yield (field, value, group), by_group[group] & (labels == value)


def resample_index(qids: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, len(qids))`` positions drawn with replacement, fixed by seed and qids."""
    key = zlib.crc32(np.ascontiguousarray(qids, dtype=np.int64).tobytes())
    return np.random.default_rng([seed, key]).integers(0, len(qids), size=(resamples, len(qids)))


def interval(means: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of bootstrap means."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def make_cell(values: np.ndarray, index: np.ndarray | None) -> dict:
    """``{"value", "ci_low", "ci_high", "n"}`` for the given scores and resample index."""
    if len(values) == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    low, high = interval(values[index].mean(axis=1))
    return {"value": float(values.mean()), "ci_low": low, "ci_high": high, "n": int(len(values))}


def place(table: dict, scorer: str, path: CellPath, cell: dict) -> None:
    """Store a cell at ``metrics[scorer][group]`` or ``slices[scorer][field][value][group]``."""
    if len(path) == 1:
        table["metrics"].setdefault(scorer, {})[path[0]] = cell
    else:
        field, value, group = path
        table["slices"].setdefault(scorer, {}).setdefault(field, {}).setdefault(value, {})[group] = cell


def summarize(scores: dict[str, np.ndarray], rows: Sequence[Prediction],
              slice_fields: Sequence[str] = SLICE_FIELDS, resamples: int = RESAMPLES,
              seed: int = SEED) -> dict:
    """The ``metrics`` and ``slices`` parts of results.json.

    ``metrics[scorer][group]`` and ``slices[scorer][field][value][group]`` are cells.
    """
    qids = np.array([row.qid for row in rows], dtype=np.int64)
    table: dict = {"metrics": {}, "slices": {}}
    for path, mask in cell_masks(rows, slice_fields):
        cached: dict[int, np.ndarray] = {}
        for name, column in scores.items():
            keep = mask & ~np.isnan(column)
            n = int(keep.sum())
            # Within a cell, the same count means the same rows (only `choice` drops any).
            if n and n not in cached:
                cached[n] = resample_index(qids[keep], resamples, seed)
            place(table, name, path, make_cell(column[keep], cached.get(n)))
    return table
