"""Intervals and paired tests for other pipelines' headline numbers, as ``slakevqa compare`` shows them.

A peer's headline (``module.headline(rows)``) is its own aggregate: every key is the mean of a
per-question value over the questions of a group (``module.question_values``), or a sum of such means
(``module.DERIVED``: the reference toolkit's ``overall/score``). So a bootstrap resample of the
questions gives each key's resampled value from those values alone, with no per-question text scoring
again (the peers' normalisers cost ~120 ms a run; a thousand resamples of them would take minutes)::

    values (N,) with NaN outside the group --index (R, N)--> sum of kept values / kept count, per resample

The point value is the peer's own ``headline`` (exact, its empty-group rules included); the resamples
are the scorers' (:func:`slakevqa.scoring.aggregate.resample_index`, same seed and questions), so a
peer's interval is as reproducible as a scorer's.

Example::

    cells, pairs = peer_cells([rows_a, rows_b], "prediction", resamples=1000, seed=0)
    cells[1]["lmms_eval"]["slake_accuracy"]   # {"value", "ci_low", "ci_high", "n"}
    pairs[0]["lmms_eval"]["slake_accuracy"]   # {"a", "b", "delta", "ci_low", "ci_high", "p_value", "n"}
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from slakevqa.records import Prediction
from slakevqa.scoring.aggregate import interval, resample_index
from slakevqa.scoring.peers import peer_headlines, peer_modules


def question_arrays(rows: Sequence[Prediction], text_field: str) -> dict[str, dict[str, np.ndarray]]:
    """``{peer: {key: (N,) values}}``, NaN where a question is outside the key's group."""
    items = [(getattr(row, text_field), row.answer, row.answer_type) for row in rows]
    return {name: {key: np.array([np.nan if v is None else v for v in values], dtype=np.float64)
                   for key, values in module.question_values(items).items()}
            for name, module in peer_modules().items()}


def resampled_means(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``(R,)`` means of the kept (non-NaN) values of each resample; NaN where a resample keeps none."""
    kept = ~np.isnan(values)
    sums = np.where(kept, values, 0.0)[index].sum(axis=1)
    counts = kept[index].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def resampled_keys(arrays: dict[str, np.ndarray], derived: dict, index: np.ndarray) -> dict[str, np.ndarray]:
    """Every headline key's ``(R,)`` resampled values: the means, then the derived keys from them."""
    means = {key: resampled_means(values, index) for key, values in arrays.items()}
    return {**means, **{key: combine(means) for key, combine in derived.items()}}


def peer_cells(runs: Sequence[Sequence[Prediction]], text_field: str, resamples: int,
               seed: int) -> tuple[list[dict], list[dict]]:
    """Each run's peer cells and each later run's paired peer cells against the first (module docstring).

    ``runs`` are aligned (the same questions in the same order). A key whose headline is ``None`` (the
    peer prints no table for such a run) gets ``None`` everywhere.
    """
    qids = np.array([row.qid for row in runs[0]], dtype=np.int64)
    index = resample_index(qids, resamples, seed)
    heads = [peer_headlines(rows, text_field) for rows in runs]
    samples, counts = [], []
    for rows in runs:
        arrays = question_arrays(rows, text_field)
        samples.append({name: resampled_keys(arrays[name], getattr(module, "DERIVED", {}), index)
                        for name, module in peer_modules().items()})
        # a mean's questions are its group's; a derived key's, every question
        counts.append({name: {key: int((~np.isnan(arrays[name][key])).sum()) if key in arrays[name] else len(qids)
                              for key in samples[-1][name]} for name in arrays})
    cells = [{peer: {key: run_cell(head[peer][key], sample[peer][key], count[peer][key]) for key in head[peer]}
              for peer in head} for head, sample, count in zip(heads, samples, counts)]
    pairs = [{peer: {key: pair_cell(heads[0][peer][key], head[peer][key], samples[0][peer][key],
                                    sample[peer][key], count[peer][key]) for key in head[peer]} for peer in head}
             for head, sample, count in zip(heads[1:], samples[1:], counts[1:])]
    return cells, pairs


def run_cell(value: float | None, resampled: np.ndarray, n: int) -> dict:
    """``{"value", "ci_low", "ci_high", "n"}``: the peer's own number and its percentile interval."""
    if value is None:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    low, high = interval(resampled[~np.isnan(resampled)]) if not np.isnan(resampled).all() else (None, None)
    return {"value": value, "ci_low": low, "ci_high": high, "n": n}


def pair_cell(a: float | None, b: float | None, resampled_a: np.ndarray, resampled_b: np.ndarray, n: int) -> dict:
    """``{"a", "b", "delta", "ci_low", "ci_high", "p_value", "n"}`` of ``b - a`` over the same resamples."""
    deltas = resampled_b - resampled_a
    deltas = deltas[~np.isnan(deltas)]
    if a is None or b is None or len(deltas) == 0:
        return {"a": a, "b": b, "delta": None, "ci_low": None, "ci_high": None, "p_value": None, "n": 0}
    low, high = interval(deltas)
    p_value = min(1.0, 2.0 * min(float(np.mean(deltas <= 0)), float(np.mean(deltas >= 0))))
    return {"a": a, "b": b, "delta": b - a, "ci_low": low, "ci_high": high, "p_value": p_value, "n": n}
