"""LLaVA-Med v1.0 batch-evaluation numbers (peer ``llava_med_v1``) on hand-computed cases.

Expected values were worked out by reading upstream ``run_eval_batch.evaluate``,
``calculate_f1score`` and ``calculate_exactmatch`` (tag v1.0.0, commit b9a98a7), and
the module was checked once against that code run in a scratch folder (per question on
golden, SLAKE-derived and random strings; headline on 300 runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slakevqa.errors import UserError
from slakevqa.scoring.peers import llava_med_v1 as peer


@pytest.mark.parametrize("prediction, answer, answer_type, f1, precision, hit", [
    # Identical after normalising: every metric is perfect.
    ("Left Lung", "left lung", "OPEN", 1.0, 1.0, 1.0),
    # Extra words lower precision, not recall: P = 2/3, R = 1, F1 = 0.8; the answer is a substring.
    ("The left lung, liver.", "Left Lung", "OPEN", 0.8, 2 / 3, 1.0),
    # tp counts the prediction's repeats: P = 3/3, R = 3/(3+1), F1 = 2·0.75/1.75.
    ("lung lung lung", "left lung", "OPEN", 2 * 0.75 / 1.75, 1.0, 0.0),
    # Reordered words: unigram metrics are perfect, the substring hit fails.
    ("Lung, Left", "Left Lung", "OPEN", 1.0, 1.0, 0.0),
    # Substring, not word: "lung" hits "lungs", while no unigram is shared.
    ("lungs", "lung", "OPEN", 0.0, 0.0, 1.0),
    # Both sides normalise to "" (article only): empty sides score 0, but "" is in "".
    ("the", "The", "OPEN", 0.0, 0.0, 1.0),
    # Empty prediction: 0 everywhere, and "liver" is not in "".
    ("", "Liver", "OPEN", 0.0, 0.0, 0.0),
    # Number words up to ten become digits; "eleven" stays a word.
    ("Two", "2", "OPEN", 1.0, 1.0, 1.0),
    ("eleven", "11", "OPEN", 0.0, 0.0, 0.0),
    # "dont" gains its apostrophe: P = 1/2, R = 1, F1 = 2/3.
    ("dont know", "don't", "OPEN", 2 / 3, 0.5, 1.0),
    # A mark next to a space is deleted everywhere: "chest xray pa" shares nothing with "x ray".
    ("chest x-ray - pa", "X-Ray", "OPEN", 0.0, 0.0, 0.0),
    # Full-width letters are not folded to ASCII.
    ("ＣＴ", "CT", "OPEN", 0.0, 0.0, 0.0),
    # CLOSED: F1/precision are computed too; the open hit is not (None).
    ("Nodule", "No", "CLOSED", 0.0, 0.0, None),
    # "and" is no article: P = 1/3, R = 1, F1 = 0.5.
    ("yes and no", "No", "CLOSED", 0.5, 1 / 3, None),
    ("", "Yes", "CLOSED", 0.0, 0.0, None),
])
def test_per_question(prediction: str, answer: str, answer_type: str, f1: float,
                      precision: float, hit: float | None) -> None:
    assert peer.f1(prediction, answer, answer_type) == pytest.approx(f1, abs=1e-15)
    assert peer.precision(prediction, answer, answer_type) == pytest.approx(precision, abs=1e-15)
    assert peer.open_hit(prediction, answer, answer_type) == hit


def test_unknown_answer_type_is_refused() -> None:
    with pytest.raises(ValueError, match="OPEN or CLOSED"):
        peer.f1("yes", "yes", "open")


# OPEN per row: exact-match score, F1, precision, recall, substring hit.
#   "lung lung" / "lung":        1 distinct of 2 words = 0.5, 1, 1, 1, 1
#   "The left lung, liver.":     2/3, 0.8, 2/3, 1, 1
#   "right lung" / "Left Lung":  1/2, 0.5, 0.5, 0.5, 0
#   "" / "Liver":                0, 0, 0, 0, 0
# CLOSED per row: substring hit, recall.
#   "Nodule" / "No": 1, 0     "yes and no" / "Yes": 1, 1     "No." / "Yes": 0, 0
RUN = [
    ("lung lung", "lung", "OPEN"),
    ("The left lung, liver.", "Left Lung", "OPEN"),
    ("right lung", "Left Lung", "OPEN"),
    ("", "Liver", "OPEN"),
    ("Nodule", "No", "CLOSED"),
    ("yes and no", "Yes", "CLOSED"),
    ("No.", "Yes", "CLOSED"),
]


def test_headline_on_a_small_run() -> None:
    got = peer.headline(RUN)
    assert tuple(got) == peer.HEADLINE_KEYS
    expected = {
        "exact match score": (0.5 + 2 / 3 + 0.5 + 0) / 4,  # not an exact match: word hits / words
        "f1 score": (1 + 0.8 + 0.5 + 0) / 4,
        "precision": (1 + 2 / 3 + 0.5 + 0) / 4,
        "recall": (1 + 1 + 0.5 + 0) / 4,                    # the paper's "open" number
        "open accuracy": 2 / 4,
        "yes/no accuracy": 2 / 3,                           # the paper's "closed": every CLOSED row
        "recall_closed": 1 / 3,
    }
    assert got == pytest.approx(expected, abs=1e-12)


def test_headline_without_closed_questions_is_refused() -> None:
    # Upstream divides by zero for recall_closed and prints no table at all.
    with pytest.raises(ValueError, match="recall_closed"):
        peer.headline(RUN[:4])


def _answer_line(question_id: object, text: object) -> str:
    """One line as LLaVA-Med's model_vqa*.py writes it."""
    return json.dumps({"question_id": question_id, "prompt": "Which organ?\n<image>", "text": text,
                       "answer_id": "aBc123", "model_id": "llava-med", "metadata": {}})


def test_read_answers(tmp_path: Path) -> None:
    path = tmp_path / "test-answer-file.jsonl"
    path.write_text("\n".join([_answer_line(11934, "The liver."), "", _answer_line("12", "Yes")]) + "\n",
                    encoding="utf-8")
    assert peer.read_answers(path) == [(11934, "The liver."), (12, "Yes")]


@pytest.mark.parametrize("bad_line, message", [
    (json.dumps({"question_id": 3}), "line 2: field 'text'"),
    (_answer_line("q3", "Yes"), "line 2: field 'question_id'"),
    ('{"question_id": 3, "text": ', "line 2: not JSON"),
])
def test_read_answers_rejects_malformed_lines(tmp_path: Path, bad_line: str, message: str) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text(_answer_line(1, "Yes") + "\n" + bad_line + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=message) as caught:
        peer.read_answers(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
