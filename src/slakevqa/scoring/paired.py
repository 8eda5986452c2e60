"""Paired bootstrap comparison of runs on the same questions.

All runs are resampled with the *same* question indices, so the interval is on the
difference B - A of per-question scores, and the test asks whether that difference
could be zero. The two-sided p-value is
``min(1, 2 * min(P(delta* <= 0), P(delta* >= 0)))`` over the bootstrap deltas
(the percentile test: p < 0.05 exactly when the 95% interval excludes 0).

With more than two runs, each later run is compared with the first
(:func:`compare_many`); the p-values are not corrected for the number of comparisons.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from slakevqa.errors import DataError
from slakevqa.records import SLICE_FIELDS, Prediction
from slakevqa.scoring.aggregate import (
    RESAMPLES,
    SEED,
    cell_masks,
    interval,
    make_cell,
    place,
    resample_index,
)


def align(rows_a: Sequence[Prediction], rows_b: Sequence[Prediction],
          name_a: str = "A", name_b: str = "B") -> tuple[list[Prediction], list[Prediction]]:
    """Both runs in one qid order; they must hold the same questions with the same gold.

    A refusal is one line naming run B, how many of A's qids it lacks and how many it adds.
    """
    by_qid = {row.qid: row for row in rows_b}
    qids_a = {row.qid for row in rows_a}
    missing, extra = sorted(qids_a - set(by_qid)), sorted(set(by_qid) - qids_a)
    if missing or extra:
        raise DataError(name_b, f"runs cover different questions: {len(missing)} of {name_a}'s qids missing "
                        f"(first {missing[:5]}), {len(extra)} extra (first {extra[:5]})", field="qid")
    paired_b = [by_qid[row.qid] for row in rows_a]
    for a, b in zip(rows_a, paired_b):
        if (a.answer, a.answer_type) != (b.answer, b.answer_type):
            raise DataError(name_b, f"gold differs from {name_a}: {b.answer!r} vs {a.answer!r}",
                            record=f"qid {a.qid}", field="answer")
    return list(rows_a), paired_b


def align_many(runs: Sequence[Sequence[Prediction]], names: Sequence[str]) -> list[list[Prediction]]:
    """Every run in the first run's qid order (:func:`align` of each later run against the first)."""
    return [list(runs[0])] + [align(runs[0], rows, names[0], name)[1] for rows, name in zip(runs[1:], names[1:])]


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


def compare_many(scores: Sequence[dict[str, np.ndarray]], rows: Sequence[Prediction],
                 slice_fields: Sequence[str] = SLICE_FIELDS, resamples: int = RESAMPLES,
                 seed: int = SEED, summaries: bool = True) -> dict:
    """Each run's own cells and each later run's paired cells against the first.

    ``scores`` holds one :func:`~slakevqa.scoring.aggregate.score_rows` table per run, all
    aligned with ``rows`` (the first run's rows after :func:`align_many`). Returns::

        {"runs":  [{"metrics": ..., "slices": ...} per run],          # cells as in results.json
         "pairs": [{"metrics": ..., "slices": ...} per later run]}    # paired cells, run k vs run 0

    A run's cells equal :func:`~slakevqa.scoring.aggregate.summarize`'s for it (same seed, same
    resamples of the same questions); a pair covers the questions both runs have a score for.
    ``summaries=False`` leaves ``runs`` empty.
    """
    qids = np.array([row.qid for row in rows], dtype=np.int64)
    runs = [{"metrics": {}, "slices": {}} for _ in scores] if summaries else []
    pairs = [{"metrics": {}, "slices": {}} for _ in scores[1:]]
    for path, mask in cell_masks(rows, slice_fields):
        cache: dict[bytes, np.ndarray] = {}  # one cell's resamples, shared by the runs that cover the same rows
        for name, first in scores[0].items():
            for table, run in zip(runs, scores):
                keep = mask & ~np.isnan(run[name])
                place(table, name, path, make_cell(run[name][keep], _index(cache, qids, keep, resamples, seed)))
            for table, run in zip(pairs, scores[1:]):
                keep = mask & ~np.isnan(first) & ~np.isnan(run[name])
                index = _index(cache, qids, keep, resamples, seed)
                place(table, name, path, paired_cell(first[keep], run[name][keep], index))
    return {"runs": runs, "pairs": pairs}


def _index(cache: dict[bytes, np.ndarray], qids: np.ndarray, keep: np.ndarray, resamples: int,
           seed: int) -> np.ndarray | None:
    """:func:`resample_index` of the kept questions, computed once per set of rows (None for none)."""
    if not keep.any():
        return None
    key = keep.tobytes()
    if key not in cache:
        cache[key] = resample_index(qids[keep], resamples, seed)
    return cache[key]


def compare(scores_a: dict[str, np.ndarray], scores_b: dict[str, np.ndarray],
            rows: Sequence[Prediction], slice_fields: Sequence[str] = SLICE_FIELDS,
            resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """``metrics[scorer][group]`` and ``slices[scorer][field][value][group]`` paired cells of B against A.

    ``rows`` gives the slices (run A's rows after :func:`align`); the score arrays
    are aligned with it.
    """
    return compare_many([scores_a, scores_b], rows, slice_fields, resamples, seed, summaries=False)["pairs"][0]
