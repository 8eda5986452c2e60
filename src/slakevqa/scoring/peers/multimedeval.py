"""MultiMedEval's SLAKE metrics, reimplemented quirk for quirk.

Source of truth: corentin-ryr/MultiMedEval commit ``d9ac283``
(d9ac283f5ad989d4f78b709f7076f432de4aa69e): ``multimedeval/task_families.py::VQA.evaluate``
(with ``VQA._preprocess`` and the ``BLEUScore(n_gram=1)`` it builds in ``VQA.__init__``),
``multimedeval/utils.py::clean_str`` and ``multimedeval/vqa.py::SLAKE`` (English test rows of
``BoKelvin/SLAKE``, 1,061 questions; gold = ``answer.lower().strip()``). BLEU is
torchmetrics 1.6.1 (the version in their ``poetry.lock``), ``functional/text/bleu.py``.
This is our own code; it was checked equal to theirs, run in a scratch environment, per
question (132 hand-written, 26,525 built from the real English test split, 5,000 random) and
on the headline of 28 runs (bit-equal), with torch 2.13 CPU.

Per question, both texts go through ``clean_str`` (the VQA-v2 normaliser that LLaVA-Med's
``normalize_word`` also is) and become *sets* of words. Quirks, each moving a number:

* **Groups by the gold text, not by SLAKE's answer_type.** A question is "closed" when the
  cleaned gold is exactly ``"yes"`` or ``"no"``; everything else is "open", so a SLAKE CLOSED
  question with gold ``"Left"`` is scored as open, and ``answer_type`` is ignored everywhere.
* **Closed correct = set recall >= 0.4, gold "no" widened to {"no", "not"}**: ``"not
  enlarged"`` is right for gold ``"no"`` (recall 1/2); ``"yes and no"`` is right for both
  golds; ``"nodule"`` is wrong (whole words, unlike LLaVA-Med's substring).
* **Recall, precision and F1 use word sets**: repeats count once (``"lung lung"`` vs gold
  ``"lung"`` has precision 1.0), and F1 is ``2pr / (p + r + 1e-8)`` (1.0 scores 0.99999999...).
* **Open accuracy = recall >= 0.75**: ``"left and right lung"`` is right for gold ``"right
  lung"``; a three-word gold needs all three words (2/3 < 0.75).
* **Empty texts score 0**: an empty cleaned prediction or gold gives recall and F1 0, and a
  gold that cleans to ``""`` (``"The"``) is never right.
* **BLEU-1 is per question, float32**: torchmetrics ``BLEUScore(n_gram=1)`` (uniform weight
  1.0, no smoothing, ``str.split`` tokens) called on the one cleaned pair. Unlike the rest it
  counts repeats: clipped unigram matches over prediction length, times the brevity penalty
  ``exp(1 - r/c)`` when the prediction is not *longer* than the gold (``c <= r``). All of it
  runs in float32 tensors, so ``"left"`` vs ``"left lung"`` scores
  ``float32(exp(-1))`` = 0.3678794503211975, not ``math.exp(-1)``. torch's float32 ``log``
  and ``exp`` are not correctly rounded, and their last bit depends on the CPU (precision 1/14
  gives ``exp(log p)`` = 0.07142858207..., one ULP above ``float32(1/14)``, on one machine and
  ``float32(1/14)`` on another), so the last step runs on torch when it is installed, as
  MultiMedEval's does on the same machine; without torch a pure-Python fallback can be one
  float32 ULP off.
* **Headline numbers are plain means** of the per-question values over all questions
  (``bleu``, ``F1``, ``recall``) or over the group (the rest), as fractions; an empty group
  gives 0. ``openQuestionsRecall`` is the mean recall of the open group.
* Upstream's prompt reads the gold too (yes/no golds get "Answer the following question with
  yes or no."); that changes the prediction, not the metric, so it is not reproduced here.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from typing import Sequence

from slakevqa.scoring.llava_med import normalize_word

# Bump when anything below changes a number.
VERSION = "multimedeval-d9ac283/1"

HEADLINE_KEYS: tuple[str, ...] = (
    "bleu", "F1", "recall", "closedQuestionsAccuracy", "openQuestionsRecall",
    "openQuestionsAccuracy",
)
_CLOSED_GOLDS = frozenset({"yes", "no"})
_CLOSED_THRESHOLD = 0.4
_OPEN_THRESHOLD = 0.75
_F1_EPSILON = 1e-8


def clean_str(text: str) -> str:
    """Upstream ``clean_str``: lowercase, then the VQA-v2 normaliser.

    Upstream lowercases first and LLaVA-Med's ``normalize_word`` lowercases after its mark
    pass; lowercasing never makes or removes a mark, space or digit, so both agree (checked
    against upstream on 100,000 random strings and every text of the verification run).

    >>> clean_str("The left-lung, two.")
    'left lung 2'
    """
    return normalize_word(text.lower())


def _gold(answer: str) -> str:
    """The cleaned gold: SLAKE's ``get_correct_answer`` strips, then ``clean_str``.

    The strip matters: ``"x-ray "`` would otherwise delete the hyphen (it touches a space).
    """
    return clean_str(answer.lower().strip())


def _words(text: str) -> set[str]:
    """Upstream ``_preprocess``: the set of whitespace-separated words."""
    return set(text.split())


def _recall_precision(prediction: str, answer: str) -> tuple[float, float]:
    """(recall, precision) of the word sets; 0 for an empty side, as upstream guards."""
    predicted, gold = _words(clean_str(prediction)), _words(_gold(answer))
    shared = len(predicted & gold)
    recall = shared / len(gold) if gold else 0
    precision = shared / len(predicted) if predicted else 0
    return float(recall), float(precision)


def is_closed(answer: str) -> bool:
    """MultiMedEval's closed group: the cleaned gold is exactly "yes" or "no".

    >>> is_closed("Left"), is_closed(" No ")
    (False, True)
    """
    return _gold(answer) in _CLOSED_GOLDS


def recall(prediction: str, answer: str, answer_type: str) -> float:
    """Share of the gold's distinct words found in the prediction; answer_type is ignored.

    >>> recall("Left lung and liver", "the left lung", "OPEN")
    1.0
    """
    return _recall_precision(prediction, answer)[0]


def f1(prediction: str, answer: str, answer_type: str) -> float:
    """Set F1 with upstream's ``+ 1e-8`` in the denominator; answer_type is ignored.

    >>> f1("lung", "left lung", "OPEN")  # p = 1, r = 0.5
    0.6666666622222223
    """
    rec, prec = _recall_precision(prediction, answer)
    return 2 * (prec * rec) / (prec + rec + _F1_EPSILON)


def closed_accuracy(prediction: str, answer: str, answer_type: str) -> float | None:
    """1.0/0.0 for yes/no golds (recall >= 0.4, "no" widened to "not"); None for the others.

    >>> closed_accuracy("Not enlarged", "No", "CLOSED"), closed_accuracy("Left", "Left", "CLOSED")
    (1.0, None)
    """
    gold_text = _gold(answer)
    if gold_text not in _CLOSED_GOLDS:
        return None
    gold = {"no", "not"} if gold_text == "no" else {gold_text}
    hit = len(_words(clean_str(prediction)) & gold) / len(gold)
    return 1.0 if hit >= _CLOSED_THRESHOLD else 0.0


def open_accuracy(prediction: str, answer: str, answer_type: str) -> float | None:
    """1.0/0.0 for non-yes/no golds (recall >= 0.75); None for yes/no golds.

    >>> open_accuracy("right", "Left", "CLOSED"), open_accuracy("yes", "Yes", "CLOSED")
    (0.0, None)
    """
    if is_closed(answer):
        return None
    return 1.0 if recall(prediction, answer, answer_type) >= _OPEN_THRESHOLD else 0.0


def _f32(value: float) -> float:
    """Round to the nearest float32, as one float32 +, -, * or / does."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _bleu_from_counts_python(matches: int, pred_len: int, gold_len: int) -> float:
    """The torchmetrics formula in float32 with correctly rounded log/exp (no torch).

    torch's float32 ``log`` is a ~1-ULP SIMD kernel, not correctly rounded, so this differs
    from upstream by one float32 ULP on ~7% of precisions (e.g. 1/14): a fallback only.
    """
    precision = _f32(matches / pred_len)
    mean = _f32(math.exp(_f32(math.log(precision))))  # weight 1.0: exp(1.0 * log p)
    if pred_len > gold_len:
        return mean
    return _f32(_f32(math.exp(_f32(1 - _f32(gold_len / pred_len)))) * mean)


def _bleu_from_counts_torch(matches: int, pred_len: int, gold_len: int) -> float:
    """torchmetrics ``_bleu_score_compute`` on one sentence, with torch's own float32 kernels.

    Same tensor shapes and op order as torchmetrics (1-element numerator/denominator,
    0-d lengths), because only torch's kernels give its exact bits.
    """
    import torch  # deferred: the scoring core must import without torch

    precision = torch.tensor([float(matches)]) / torch.tensor([float(pred_len)])
    mean = torch.exp(torch.sum(torch.tensor([1.0]) * torch.log(precision)))
    preds_len, target_len = torch.tensor(float(pred_len)), torch.tensor(float(gold_len))
    penalty = torch.tensor(1.0) if preds_len > target_len else torch.exp(1 - (target_len / preds_len))
    return float((penalty * mean).item())


def _bleu_from_counts(matches: int, pred_len: int, gold_len: int) -> float:
    """torch's bits when torch is installed (it is with the model extras), else the fallback."""
    try:
        return _bleu_from_counts_torch(matches, pred_len, gold_len)
    except ImportError:
        return _bleu_from_counts_python(matches, pred_len, gold_len)


def bleu1(prediction: str, answer: str, answer_type: str) -> float:
    """torchmetrics ``BLEUScore(n_gram=1)([cleaned prediction], [[cleaned gold]])``, float32.

    >>> bleu1("left", "Left lung", "OPEN")  # precision 1, brevity penalty exp(1 - 2/1)
    0.3678794503211975
    >>> bleu1("lung lung lung", "lung", "OPEN")  # one clipped match over three words
    0.3333333134651184
    """
    predicted, gold = clean_str(prediction).split(), _gold(answer).split()
    matches = sum((Counter(predicted) & Counter(gold)).values())
    if matches == 0:  # torchmetrics returns 0 before taking a log; covers empty texts too
        return 0.0
    return _bleu_from_counts(matches, len(predicted), len(gold))


def _mean(values: list[float]) -> float:
    """Upstream's ``sum(v) / len(v)``, 0 when empty (same summation order, same result)."""
    return sum(values) / len(values) if values else 0.0


def headline(rows: Sequence[tuple[str, str, str]]) -> dict[str, float]:
    """What ``VQA.evaluate`` returns for one run, keyed by ``HEADLINE_KEYS``, as fractions.

    ``rows`` are ``(prediction, answer, answer_type)``.

    >>> run = [("yes", "Yes", "CLOSED"), ("left", "Left", "CLOSED"), ("lung", "Liver", "OPEN")]
    >>> headline(run)["closedQuestionsAccuracy"], headline(run)["openQuestionsAccuracy"]
    (1.0, 0.5)
    """
    closed = [closed_accuracy(*row) for row in rows]
    recalls = [recall(*row) for row in rows]
    open_recalls = [value for value, hit in zip(recalls, closed) if hit is None]
    closed_hits = [hit for hit in closed if hit is not None]
    return {
        "bleu": _mean([bleu1(*row) for row in rows]),
        "F1": _mean([f1(*row) for row in rows]),
        "recall": _mean(recalls),
        "closedQuestionsAccuracy": _mean(closed_hits),
        "openQuestionsRecall": _mean(open_recalls),
        "openQuestionsAccuracy": _mean([1.0 if r >= _OPEN_THRESHOLD else 0.0 for r in open_recalls]),
    }


def question_values(rows: Sequence[tuple[str, str, str]]) -> dict[str, list[float | None]]:
    """Each headline key's value for each question, ``None`` where the question is outside that key's group:
    every key of :func:`headline` is the mean of its values (``tests/test_peer_intervals.py``), which lets
    ``slakevqa compare`` bootstrap the headline (:mod:`slakevqa.scoring.peer_intervals`)."""
    values: dict[str, list[float | None]] = {key: [] for key in HEADLINE_KEYS}
    for row in rows:
        hit, found = closed_accuracy(*row), recall(*row)
        values["bleu"].append(bleu1(*row))
        values["F1"].append(f1(*row))
        values["recall"].append(found)
        values["closedQuestionsAccuracy"].append(hit)
        values["openQuestionsRecall"].append(found if hit is None else None)
        values["openQuestionsAccuracy"].append((1.0 if found >= _OPEN_THRESHOLD else 0.0) if hit is None else None)
    return values


__all__ = ["HEADLINE_KEYS", "VERSION", "bleu1", "clean_str", "closed_accuracy", "f1", "headline",
           "is_closed", "open_accuracy", "question_values", "recall"]
