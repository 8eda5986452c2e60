"""Paired bootstrap comparison of two runs on the same questions.

Both runs are resampled with the *same* question indices, so the interval is on
the difference B - A of per-question scores, and the test asks whether that
difference could be zero. The two-sided p-value is
``min(1, 2 * min(P(delta* <= 0), P(delta* >= 0)))`` over the bootstrap deltas
(the percentile test: p < 0.05 exactly when the 95% interval excludes 0).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from slakevqa.errors import DataError
from slakevqa.records import SLICE_FIELDS, Prediction
from slakevqa.scoring.aggregate import RESAMPLES, SEED, cell_masks, interval, place, resample_index


def align(rows_a: Sequence[Prediction], rows_b: Sequence[Prediction],
          name_a: str = "A", name_b: str = "B") -> tuple[list[Prediction], list[Prediction]]:
    """Both runs in one qid order; they must hold the same questions with the same gold."""
    by_qid = {row.qid: row for row in rows_b}
    missing = sorted({row.qid for row in rows_a} ^ set(by_qid))
    if missing:
        raise DataError(name_b, f"runs cover different questions ({len(missing)} qids differ, "
                        f"first {missing[:5]})", field="qid")
    paired_b = [by_qid[row.qid] for row in rows_a]
    for a, b in zip(rows_a, paired_b):
        if (a.answer, a.answer_type) != (b.answer, b.answer_type):
            raise DataError(name_b, f"gold differs from {name_a}: {b.answer!r} vs {a.answer!r}",
                            record=f"qid {a.qid}", field="answer")
    return list(rows_a), paired_b


def paired_cell(a: np.ndarray, b: np.ndarray, index: np.ndarray | None) -> dict:
    """``{"a", "b", "delta", "ci_low", "ci_high", "p_value", "n"}`` for one cell."""
    if len(a) == 0:
        return {"a": None, "b": None, "delta": None, "ci_low": None, "ci_high": None,
                "p_value": None, "n": 0}
    deltas = (b - a)[index].mean(axis=1)
    low, high = interval(deltas)
    p_value = min(1.0, 2.0 * min(float(np.mean(deltas <= 0)), float(np.mean(deltas >= 0))))
    return {"a": float(a.mean()), "b": float(b.mean()), "delta": float((b - a).mean()),
            "ci_low": low, "ci_high": high, "p_value": p_value, "n": int(len(a))}


def compare(scores_a: dict[str, np.ndarray], scores_b: dict[str, np.ndarray],
            rows: Sequence[Prediction], slice_fields: Sequence[str] = SLICE_FIELDS,
            resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """``metrics[scorer][group]`` and ``slices[scorer][field][value][group]`` paired cells.

    ``rows`` gives the slices (run A's rows after :func:`align`); the score arrays
    are aligned with it.
    """
    qids = np.array([row.qid for row in rows], dtype=np.int64)
    table: dict = {"metrics": {}, "slices": {}}
    for path, mask in cell_masks(rows, slice_fields):
        for name in scores_a:
            keep = mask & ~np.isnan(scores_a[name])
            n = int(keep.sum())
            index = resample_index(qids[keep], resamples, seed) if n else None
            place(table, name, path, paired_cell(scores_a[name][keep], scores_b[name][keep], index))
    return table
