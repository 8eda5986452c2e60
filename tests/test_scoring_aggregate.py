"""Groups, slices, counts and bootstrap intervals; the paired comparison."""

from __future__ import annotations

import numpy as np
import pytest

from slakevqa.errors import DataError
from slakevqa.records import Prediction
from slakevqa.scoring.aggregate import resample_index, score_rows, summarize
from slakevqa.scoring.paired import align, compare


def _row(qid: int, answer: str, answer_type: str, prediction: str, modality: str = "CT",
         **extra: object) -> Prediction:
    return Prediction(qid=qid, question="q", answer=answer, answer_type=answer_type,
                      prediction=prediction, modality=modality, **extra)


ROWS = [
    _row(1, "Liver", "OPEN", "liver"),
    _row(2, "Left Lung", "OPEN", "lung lung lung", modality="MRI"),
    _row(3, "No", "CLOSED", "nodule", candidates=("yes", "no"), scores=(-3.0, -0.1)),
    _row(4, "Yes", "CLOSED", "no", modality="MRI", candidates=("yes", "no"), scores=(-2.0, -0.2)),
    _row(5, "No", "CLOSED", "no", candidates=("yes", "no"), scores=(-2.0, -0.1)),
]


def test_score_rows_per_scorer() -> None:
    scores = score_rows(ROWS, ["llava_med", "exact", "choice"])
    # qid 2: pred {lung: 3}, gold {left, lung}: tp = 3, fn = 1 -> 0.75.
    assert scores["llava_med"].tolist() == [1.0, 0.75, 1.0, 0.0, 1.0]
    assert scores["exact"].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert np.isnan(scores["choice"][:2]).all() and scores["choice"][2:].tolist() == [1.0, 0.0, 1.0]


def test_summarize_values_counts_and_empty_cells() -> None:
    table = summarize(score_rows(ROWS, ["llava_med", "choice"]), ROWS, ["modality"], resamples=200)
    llava = table["metrics"]["llava_med"]
    assert (llava["OPEN"]["value"], llava["OPEN"]["n"]) == (pytest.approx(0.875), 2)
    assert (llava["CLOSED"]["value"], llava["CLOSED"]["n"]) == (pytest.approx(2 / 3), 3)
    assert (llava["overall"]["value"], llava["overall"]["n"]) == (pytest.approx(3.75 / 5), 5)
    assert table["metrics"]["choice"]["OPEN"] == {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    assert table["metrics"]["choice"]["overall"] == table["metrics"]["choice"]["CLOSED"]  # same rows
    ct = table["slices"]["llava_med"]["modality"]["CT"]
    assert list(table["slices"]["llava_med"]["modality"]) == ["CT", "MRI"]  # by falling count
    assert (ct["OPEN"]["n"], ct["CLOSED"]["n"], ct["overall"]["n"]) == (1, 2, 3)
    assert ct["OPEN"]["ci_low"] == ct["OPEN"]["ci_high"] == 1.0    # one question: no spread


def test_intervals_bracket_the_value_and_follow_the_seed() -> None:
    rows = [_row(i, "Yes", "CLOSED", "yes" if i % 4 else "no") for i in range(400)]
    scores = score_rows(rows, ["exact"])
    cell = summarize(scores, rows, [], resamples=500, seed=0)["metrics"]["exact"]["overall"]
    assert cell["value"] == 0.75 and cell["n"] == 400
    # Binomial standard error sqrt(.75 * .25 / 400) = 0.0217: the 95% interval is about +-0.042.
    assert 0.70 < cell["ci_low"] < 0.725 and 0.775 < cell["ci_high"] < 0.80
    again = summarize(scores, rows, [], resamples=500, seed=0)["metrics"]["exact"]["overall"]
    other = summarize(scores, rows, [], resamples=500, seed=1)["metrics"]["exact"]["overall"]
    assert again == cell and other != cell


def test_resamples_depend_on_the_questions_not_the_call_order() -> None:
    qids = np.array([3, 5, 8])
    first = resample_index(qids, 50, seed=0)
    assert first.shape == (50, 3) and first.min() >= 0 and first.max() <= 2
    assert (resample_index(qids, 50, seed=0) == first).all()
    assert not (resample_index(np.array([3, 5, 9]), 50, seed=0) == first).all()


def test_paired_comparison_of_a_run_with_itself_and_a_better_run() -> None:
    rows_a = [_row(i, "Yes", "CLOSED", "yes" if i % 2 else "no") for i in range(200)]
    rows_b = [_row(i, "Yes", "CLOSED", "yes" if i % 10 else "no") for i in range(200)]
    same = compare(score_rows(rows_a, ["exact"]), score_rows(rows_a, ["exact"]), rows_a, [], 300)
    assert same["metrics"]["exact"]["overall"] == {
        "a": 0.5, "b": 0.5, "delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0, "n": 200}
    better = compare(score_rows(rows_a, ["exact"]), score_rows(rows_b, ["exact"]), rows_a, [], 300)
    cell = better["metrics"]["exact"]["overall"]
    assert cell["delta"] == pytest.approx(0.4) and cell["ci_low"] > 0.3 and cell["p_value"] == 0.0
    assert better["metrics"]["exact"]["OPEN"]["n"] == 0


def test_align_orders_run_b_by_run_a_and_checks_gold() -> None:
    a = [_row(1, "Yes", "CLOSED", "yes"), _row(2, "No", "CLOSED", "no")]
    _, b = align(a, list(reversed(a)))
    assert [row.qid for row in b] == [1, 2]
    with pytest.raises(DataError, match="different questions"):
        align(a, a[:1])
    with pytest.raises(DataError, match="qid 2: field 'answer'"):
        align(a, [a[0], _row(2, "Yes", "CLOSED", "no")])
