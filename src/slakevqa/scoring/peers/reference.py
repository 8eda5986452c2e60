"""The reference toolkit's SLAKE metrics (``DKAI9/Llava-Med``), reproduced quirk for quirk.

Source of truth: GitHub ``DKAI9/Llava-Med`` at commit ``efe35e146b238dc7b25bcdf5ad18c6bdd79289bd``
("Added README"; the metric code is unchanged since ``cf2448f``): ``utils/text_norm.py``
(``normalize_answer``, ``extract_first_non_empty_line``, ``open_token_f1``),
``eval_llava_med.py`` (``strip_answer_prefix``, ``update_metrics``, ``finalize_metrics``,
``run_evaluation``, which writes ``preds.jsonl`` and ``metrics.json``) and
``models/llava_med_trainable.py`` (``generate_open``: first-line extraction of the decoded
text; ``score_closed``: the CLOSED prediction is the best-scored candidate *label*). This is
our own code; it was checked equal to theirs, run in a scratch folder, on hand-written
cases and on cases built from the real SLAKE test split.

What each metric reads:

* OPEN questions: the model's free text, cut down to its answer line by
  :func:`extract_open` (their ``extracted_pred``); ``token_f1`` and ``exact`` read it.
* CLOSED questions: the chosen candidate label (``best_label``), never free text and never
  the winning spelling variant (``chosen_variant``); ``closed_accuracy`` and ``exact`` read it.

Quirks (each moves a number):

1. Trailing-space bug: whitespace is collapsed *before* end punctuation is stripped, so a
   space in front of the stripped mark survives: ``"Liver ."`` -> ``"liver "``, which is not
   ``"liver"`` (exact 0.0); ``"yes ."`` -> ``"yes "``, not mapped to ``"yes"``.
2. Only ``"'`.,;:!?()[]{}`` are stripped, and only at the two ends: ``"left-lung"`` and
   ``"left lung"`` differ; ``"lung, liver"`` keeps its comma (token ``"lung,"``).
3. Articles are kept and number words are not mapped: ``"the liver"`` != ``"liver"``,
   ``"two"`` != ``"2"``.
4. Yes/no: only the whole answer ``y``/``true`` -> ``yes`` and ``n``/``false`` -> ``no``
   (``"Yes, it is"`` stays as it is).
5. Token F1 splits on whitespace only, as multisets; empty on either side scores 0.0 (two
   empty answers too): ``token_f1("liver, heart", "heart liver")`` = 0.5.
6. OPEN extraction runs "first non-empty line after the first ``answer:``" twice and then
   drops one more leading ``answer:``: ``"Answer: answer: answer: liver"`` -> ``"liver"``,
   and ``"Final answer: lung"`` -> ``"lung"`` (the marker may be anywhere).
7. ``overall/score`` = 0.5 * ``closed/accuracy`` + 0.5 * ``open/token_f1``, whatever the
   group sizes; an empty group counts as 0.0.
8. Rows whose image failed to load are left out of every metric (their ``invalid_image``).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Sequence

from slakevqa.errors import UserError
from slakevqa.files import json_lines

# Bump the suffix when anything below changes a number.
VERSION = "reference-efe35e1/1"
HEADLINE_KEYS: tuple[str, ...] = ("open/token_f1", "open/exact_match", "closed/accuracy",
                                  "overall/score")

# Marks stripped from both ends of the whole (already whitespace-collapsed) answer.
_END_MARKS = "\"'`.,;:!?()[]{}"
_YES, _NO = frozenset({"yes", "y", "true"}), frozenset({"no", "n", "false"})
_ANSWER_MARKER = re.compile(r"answer:\s*", flags=re.IGNORECASE)
# Said when their preds.jsonl is scored (printed and in results.json): a CLOSED row has no chosen label, only
# normalize(label), so every scorer but theirs reads lower-cased text stripped of end marks, y/true as yes.
CLOSED_TEXT_CAVEAT = ("the reference toolkit's preds.jsonl keeps only the normalised text of CLOSED answers "
                      "(normalized_pred), so other pipelines' CLOSED numbers computed from it are approximations")


def normalize(text: str) -> str:
    """Their ``normalize_answer``: lowercase, collapse whitespace, strip end marks, yes/no.

    >>> normalize("  Liver . "), normalize("TRUE"), normalize("The Liver!")
    ('liver ', 'yes', 'the liver')
    """
    stripped = " ".join(text.lower().strip().split()).strip(_END_MARKS)
    if stripped in _YES:
        return "yes"
    if stripped in _NO:
        return "no"
    return stripped


def _first_line_after_marker(text: str) -> str:
    """Their ``extract_first_non_empty_line``: first non-empty line after the first ``answer:``."""
    span = text.lstrip()
    match = _ANSWER_MARKER.search(span)
    if match:
        span = span[match.end():]
    return next((line.strip() for line in span.splitlines() if line.strip()), "")


def extract_open(raw: str) -> str:
    """The OPEN answer text their metrics read (``extracted_pred``) from the model's free text.

    ``generate_open`` extracts once, ``strip_answer_prefix`` extracts again and then drops a
    leading ``answer:``, so three markers can go:

    >>> extract_open("Answer: answer: answer: Liver\\nmore")
    'Liver'
    """
    line = _first_line_after_marker(_first_line_after_marker(raw))
    if line.lower().startswith("answer:"):
        return line.split(":", 1)[1].strip()
    return line


def _group(answer_type: str) -> str:
    """OPEN or CLOSED, the way their evaluation routes (``answer_type.upper()``)."""
    group = answer_type.upper()
    if group not in ("OPEN", "CLOSED"):
        raise ValueError(f"answer_type must be OPEN or CLOSED, got {answer_type!r}")
    return group


def _f1(prediction: str, answer: str) -> float:
    """Their ``open_token_f1`` on already extracted text."""
    predicted, gold = normalize(prediction).split(), normalize(answer).split()
    if not predicted or not gold:
        return 0.0
    overlap = sum((Counter(predicted) & Counter(gold)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact(prediction: str, answer: str, answer_type: str) -> float | None:
    """Their ``normalized_pred == normalized_gt``, defined on OPEN and CLOSED questions.

    OPEN reads the free text (extracted first); CLOSED reads the chosen candidate label.

    >>> exact("Answer: Liver.", "liver", "OPEN"), exact("Liver .", "liver", "OPEN")
    (1.0, 0.0)
    """
    if _group(answer_type) == "OPEN":
        prediction = extract_open(prediction)
    return 1.0 if normalize(prediction) == normalize(answer) else 0.0


def token_f1(prediction: str, answer: str, answer_type: str) -> float | None:
    """Their OPEN token F1 on the extracted free text; None for CLOSED questions.

    >>> token_f1("left lung", "Left Lung.", "OPEN"), token_f1("yes", "yes", "CLOSED")
    (1.0, None)
    """
    if _group(answer_type) != "OPEN":
        return None
    return _f1(extract_open(prediction), answer)


def closed_accuracy(prediction: str, answer: str, answer_type: str) -> float | None:
    """Their CLOSED hit: the chosen candidate label normalises to the gold; None for OPEN.

    >>> closed_accuracy("Yes", "yes", "CLOSED"), closed_accuracy("liver", "liver", "OPEN")
    (1.0, None)
    """
    if _group(answer_type) != "CLOSED":
        return None
    return 1.0 if normalize(prediction) == normalize(answer) else 0.0


def _mean(total: float, count: int) -> float:
    """Their empty-group rule: 0.0, not undefined."""
    return total / count if count else 0.0


def headline(rows: Sequence[tuple[str, str, str]]) -> dict[str, float]:
    """``finalize_metrics`` for ``(prediction, answer, answer_type)`` rows, as fractions.

    Their numbers are already fractions (no percentages). Sums run in row order with
    ``+=``, as theirs do, so the floats agree to the last bit.

    >>> headline([("liver", "Liver", "OPEN"), ("No", "yes", "CLOSED")])["overall/score"]
    0.5
    """
    f1_sum, open_hits, open_count, closed_hits, closed_count = 0.0, 0.0, 0, 0.0, 0
    for prediction, answer, answer_type in rows:
        if _group(answer_type) == "OPEN":
            f1_sum += token_f1(prediction, answer, answer_type) or 0.0
            open_hits += exact(prediction, answer, answer_type) or 0.0
            open_count += 1
        else:
            closed_hits += closed_accuracy(prediction, answer, answer_type) or 0.0
            closed_count += 1
    open_f1, closed_acc = _mean(f1_sum, open_count), _mean(closed_hits, closed_count)
    return {"open/token_f1": open_f1, "open/exact_match": _mean(open_hits, open_count),
            "closed/accuracy": closed_acc, "overall/score": 0.5 * closed_acc + 0.5 * open_f1}


# The headline key that is no mean of question values but a sum of two keys' means.
DERIVED = {"overall/score": lambda means: 0.5 * means["closed/accuracy"] + 0.5 * means["open/token_f1"]}


def question_values(rows: Sequence[tuple[str, str, str]]) -> dict[str, list[float | None]]:
    """Each headline key's value for each question, ``None`` where the question is outside that key's group:
    every key of :func:`headline` but ``overall/score`` (:data:`DERIVED`) is the mean of its values (``tests/test_peer_intervals.py``), which lets
    ``slakevqa compare`` bootstrap the headline (:mod:`slakevqa.scoring.peer_intervals`)."""
    values: dict[str, list[float | None]] = {key: [] for key in HEADLINE_KEYS if key not in DERIVED}
    for prediction, answer, answer_type in rows:
        is_open = _group(answer_type) == "OPEN"
        values["open/token_f1"].append((token_f1(prediction, answer, answer_type) or 0.0) if is_open else None)
        values["open/exact_match"].append((exact(prediction, answer, answer_type) or 0.0) if is_open else None)
        values["closed/accuracy"].append(None if is_open else closed_accuracy(prediction, answer, answer_type) or 0.0)
    return values


def _field(path: Path, line_no: int, row: dict, name: str, kind: type) -> object:
    """``row[name]`` checked for type, or a one-line UserError naming file, line and field."""
    value = row.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{path}:{line_no}: field '{name}': expected {kind.__name__}, "
                        f"got {type(value).__name__}")
    return value


def _pred_text(path: Path, line_no: int, row: dict) -> str:
    """The text our scorers expect: free text for OPEN rows, the normalised label for CLOSED.

    OPEN rows carry ``raw_generation`` (decoded output), ``extracted_pred`` and
    ``normalized_pred``; re-extracting ``raw_generation`` gives ``extracted_pred`` exactly,
    where re-extracting ``extracted_pred`` may not (quirk 6). CLOSED rows carry only
    ``normalized_pred`` (= ``normalize(best_label)``), ``chosen_variant`` and scores; every
    label their router builds on SLAKE is left unchanged by ``normalize``.
    """
    answer_type = str(_field(path, line_no, row, "answer_type", str))
    if answer_type.upper() not in ("OPEN", "CLOSED"):
        raise UserError(f"{path}:{line_no}: field 'answer_type': expected OPEN or CLOSED, "
                        f"got {answer_type!r}")
    name = "raw_generation" if answer_type.upper() == "OPEN" else "normalized_pred"
    return str(_field(path, line_no, row, name, str))


def read_preds(path: Path) -> list[tuple[int, str]]:
    """``(qid, text)`` per scored row of their ``preds.jsonl``, in file order.

    Rows with ``"invalid_image": true`` are skipped: their metrics leave them out. A line
    like ``{"qid": 11, "raw_generation": "Answer: Lung", "extracted_pred": "Lung",
    "normalized_pred": "lung", "answer_type": "OPEN", "gen_settings_hash": "...",
    "invalid_image": false}`` gives ``(11, "Answer: Lung")``; a CLOSED line
    ``{"qid": 12, "route": "yesno", "chosen_variant": " yes.", "best_score": -0.2,
    "second_score": -1.7, "margin": 1.5, "normalized_pred": "yes", "answer_type": "CLOSED",
    ...}`` gives ``(12, "yes")``.
    """
    pairs: list[tuple[int, str]] = []
    for line_no, row in json_lines(path):
        if not isinstance(row, dict):
            raise UserError(f"{path}:{line_no}: not a JSON object")
        if row.get("invalid_image") is True:
            continue
        qid = int(_field(path, line_no, row, "qid", int))  # type: ignore[arg-type]
        pairs.append((qid, _pred_text(path, line_no, row)))
    return pairs


__all__ = ["CLOSED_TEXT_CAVEAT", "HEADLINE_KEYS", "VERSION", "closed_accuracy", "exact", "extract_open", "headline",
           "normalize", "read_preds", "token_f1"]
