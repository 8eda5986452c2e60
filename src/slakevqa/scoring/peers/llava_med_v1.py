"""Everything LLaVA-Med v1.0's batch evaluation prints, per question and in its own headline.

Source of truth: microsoft/LLaVA-Med tag ``v1.0.0`` = commit
``b9a98a736d2ef05bcf5ff345be6403fb3a664eaf``: ``llava/eval/run_eval_batch.py``
(``evaluate``), ``llava/eval/eval_metrics/evaluate_metrics.py`` (``calculate_f1score``,
``calculate_exactmatch``), ``eval_metrics/glossary.py`` (``normalize_word``) and
``eval_metrics/utils.py`` (``split_sentence``). Answer files: ``llava/eval/model_vqa.py``
and ``model_vqa_med.py`` at that tag, and ``llava/eval/model_vqa.py`` of v1.5
(commit ``d406e3f``). This is our own code written from reading theirs; the normaliser
and the OPEN recall are :mod:`slakevqa.scoring.llava_med`'s, whose quirks apply here too.

Quirks of the extra numbers (on top of the normaliser's, listed in ``docs/metrics.md``):

* Each side is lowercased and normalised once; every unigram metric normalises again.
* ``precision`` = tp / (number of prediction words), with tp counted on the
  prediction's side like the recall: repeating a right word raises both.
* ``f1`` = 2·P·R/(P+R) from those two; 0 when either side is empty or nothing is shared.
* ``"exact match score"`` is no exact match: distinct answer words found in the
  prediction / number of prediction words ("lung lung" vs "lung" scores 0.5).
* ``"open accuracy"`` is the CLOSED rule applied to OPEN: normalised answer is a
  substring of the normalised prediction ("lung" hits "lungs").
* An answer that normalises to ``""`` (``"The"``) hits every prediction in both
  accuracies, yet scores 0 in every unigram metric, even against itself.
* ``"yes/no accuracy"`` averages the substring hit over *every* CLOSED question, not
  only yes/no ones; ``"recall_closed"`` averages the unigram recall over CLOSED.
* ``"exact match score"``, ``"f1 score"``, ``"precision"`` and ``"recall"`` average
  over OPEN questions only.
* The script prints percentages (value × 100); :func:`headline` returns fractions.
* With no OPEN or no CLOSED question the script divides by zero and prints no
  table at all; :func:`headline` raises ``ValueError`` there.
* Rows of another answer type are skipped upstream; here they raise ``ValueError``.
* BLEU rows are also printed; they need nltk and are not reproduced.

Checked against that code (run in a scratch folder with real nltk and tabulate): 23,389
golden and SLAKE-test-derived cases plus 60,000 random strings agree per question;
headline on 301 runs agrees within 2e-16 (after their × 100).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

from slakevqa.errors import DataError
from slakevqa.files import json_lines
from slakevqa.scoring.llava_med import normalize_word, open_recall

# Bump the suffix when anything below changes a number.
VERSION = "llava_med_v1-b9a98a7/1"

HEADLINE_KEYS: tuple[str, ...] = (
    "exact match score", "f1 score", "precision", "recall",
    "open accuracy", "yes/no accuracy", "recall_closed",
)
_ANSWER_TYPES: tuple[str, ...] = ("OPEN", "CLOSED")


def _first_pass(text: str) -> str:
    """What ``evaluate`` does to both sides before any metric: lowercase, normalise once."""
    return normalize_word(text.lower())


def _check_type(answer_type: str) -> None:
    """The script silently skips other types; ours are data errors, so they fail loudly."""
    if answer_type not in _ANSWER_TYPES:
        raise ValueError(f"answer_type must be OPEN or CLOSED, got {answer_type!r}")


def _f1score(prediction: str, answer: str) -> tuple[float, float, float]:
    """``calculate_f1score(prediction, answer)`` on first-pass strings: (f1, precision, recall).

    >>> _f1score("lung lung liver", "lung")   # tp = 2 of 3 prediction words
    (0.8, 0.6666666666666666, 1.0)
    """
    predicted = Counter(normalize_word(prediction).split())
    reference = Counter(normalize_word(answer).split())
    tp = sum(count for word, count in predicted.items() if word in reference)
    if not predicted or not reference or tp == 0:
        return 0.0, 0.0, 0.0
    # tp + fp is every prediction word; same operation order as upstream, same floats.
    precision = tp / sum(predicted.values())
    recall = open_recall(prediction, answer)
    return 2 * precision * recall / (precision + recall), precision, recall


def _exact_match(prediction: str, answer: str) -> float:
    """``calculate_exactmatch`` on first-pass strings: distinct answer words hit / prediction words."""
    predicted = Counter(normalize_word(prediction).split())
    reference = Counter(normalize_word(answer).split())
    total = sum(predicted.values())
    return sum(1 for word in reference if word in predicted) / total if total else 0.0


def _substring_hit(prediction: str, answer: str) -> float:
    """The OPEN "open accuracy" and CLOSED "yes/no accuracy" rule on first-pass strings."""
    return 1.0 if answer in prediction else 0.0


def f1(prediction: str, answer: str, answer_type: str) -> float | None:
    """llava_med_f1: unigram F1 as ``evaluate`` computes it (OPEN and CLOSED alike).

    >>> f1("The left lung, liver.", "Left Lung", "OPEN")   # P = 2/3, R = 1
    0.8
    """
    _check_type(answer_type)
    return _f1score(_first_pass(prediction), _first_pass(answer))[0]


def precision(prediction: str, answer: str, answer_type: str) -> float | None:
    """llava_med_precision: shared prediction words / prediction words.

    >>> precision("lung lung", "left lung", "CLOSED")
    1.0
    """
    _check_type(answer_type)
    return _f1score(_first_pass(prediction), _first_pass(answer))[1]


def open_hit(prediction: str, answer: str, answer_type: str) -> float | None:
    """llava_med_open_hit: OPEN normalised-substring hit; None for CLOSED (not computed there).

    >>> open_hit("Lungs", "lung", "OPEN"), open_hit("yes", "yes", "CLOSED")
    (1.0, None)
    """
    _check_type(answer_type)
    if answer_type == "CLOSED":
        return None
    return _substring_hit(_first_pass(prediction), _first_pass(answer))


def _mean(values: list[float], key: str) -> float:
    """Upstream's ``sum(xs) / len(xs)``, refusing where upstream dies of a ZeroDivisionError."""
    if not values:
        raise ValueError(f"run_eval_batch.py prints no table without questions for {key!r} "
                         "(it divides by zero); score a run with OPEN and CLOSED questions")
    return sum(values) / len(values)


def headline(rows: Sequence[tuple[str, str, str]]) -> dict[str, float]:
    """The seven rows ``run_eval_batch.evaluate`` prints, as fractions (it prints × 100).

    ``rows`` holds ``(prediction, answer, answer_type)`` for every question of one run.

    >>> headline([("left lung", "Left Lung", "OPEN"), ("no", "No", "CLOSED")])["yes/no accuracy"]
    1.0
    """
    columns: dict[str, list[float]] = {key: [] for key in HEADLINE_KEYS}
    for prediction, answer, answer_type in rows:
        _check_type(answer_type)
        pred, gold = _first_pass(prediction), _first_pass(answer)
        f1_value, prec, rec = _f1score(pred, gold)
        if answer_type == "OPEN":
            columns["exact match score"].append(_exact_match(pred, gold))
            columns["f1 score"].append(f1_value)
            columns["precision"].append(prec)
            columns["recall"].append(rec)
            columns["open accuracy"].append(_substring_hit(pred, gold))
        else:
            columns["yes/no accuracy"].append(_substring_hit(pred, gold))
            columns["recall_closed"].append(rec)
    # The two accuracies fall back to 0.0 on an empty group upstream; the rest divide by zero.
    out = {key: sum(values) / len(values) if values else 0.0 for key, values in columns.items()}
    for key in ("exact match score", "f1 score", "precision", "recall", "recall_closed"):
        out[key] = _mean(columns[key], key)
    return out


def question_values(rows: Sequence[tuple[str, str, str]]) -> dict[str, list[float | None]]:
    """Each headline key's value for each question, ``None`` where the question is outside that key's group:
    every key of :func:`headline` is the mean of its values (``tests/test_peer_intervals.py``), which lets
    ``slakevqa compare`` bootstrap the headline (:mod:`slakevqa.scoring.peer_intervals`)."""
    values: dict[str, list[float | None]] = {key: [] for key in HEADLINE_KEYS}
    for prediction, answer, answer_type in rows:
        _check_type(answer_type)
        pred, gold = _first_pass(prediction), _first_pass(answer)
        f1_value, prec, rec = _f1score(pred, gold)
        if answer_type == "OPEN":
            row = {"exact match score": _exact_match(pred, gold), "f1 score": f1_value, "precision": prec,
                   "recall": rec, "open accuracy": _substring_hit(pred, gold)}
        else:
            row = {"yes/no accuracy": _substring_hit(pred, gold), "recall_closed": rec}
        for key in HEADLINE_KEYS:
            values[key].append(None if key not in row else float(row[key]))
    return values


def _answer_row(record: object, path: Path, line_no: int) -> tuple[int, str]:
    """``(question_id, text)`` of one decoded answer line, or a DataError naming the field."""
    where = f"line {line_no}"
    if not isinstance(record, dict):
        raise DataError(path, "expected a JSON object", record=where)
    question_id, text = record.get("question_id"), record.get("text")
    # model_vqa*.py copies the question file's id unchanged (v1.0 med: ``id``; v1.5:
    # ``question_id``). LLaVA-Med ships no SLAKE question file, so the id is whatever the
    # converter wrote: our SFT export writes SLAKE's int qid; digit strings are accepted too.
    if isinstance(question_id, str) and question_id.isdecimal():
        question_id = int(question_id)
    if not isinstance(question_id, int) or isinstance(question_id, bool):
        raise DataError(path, f"expected an integer, got {question_id!r}", record=where,
                        field="question_id")
    if not isinstance(text, str):
        raise DataError(path, f"expected a string, got {text!r}", record=where, field="text")
    return question_id, text


def read_answers(path: Path) -> list[tuple[int, str]]:
    """``(question_id, text)`` per line of a LLaVA-Med ``model_vqa*.py`` answer file, in file order.

    Each line is ``{"question_id": 17, "prompt": ..., "text": "<generation>",
    "answer_id": ..., "model_id": ..., "metadata": {}}`` (v1.0 and v1.5 write the same
    keys); only ``question_id`` and ``text`` are read. Blank lines are skipped and
    duplicates kept: upstream pairs answers with questions by position, after asserting
    that the id lists are equal; the caller joins by id.
    """
    return [_answer_row(record, Path(path), number) for number, record in json_lines(path)]


__all__ = ["HEADLINE_KEYS", "VERSION", "f1", "headline", "open_hit", "precision", "question_values", "read_answers"]
