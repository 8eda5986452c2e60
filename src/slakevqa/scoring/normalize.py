"""Our own answer normaliser and the strict scorers built on it: ``exact``, ``token_f1``.

Unlike the LLaVA-Med normaliser (:mod:`slakevqa.scoring.llava_med`), this one treats
every punctuation mark the same way wherever it stands, so two spellings of one
answer always meet:

>>> normalize_answer("The X-Ray.")
'xray'
>>> normalize_answer("Left Lung, Right")
'left lung right'
>>> normalize_answer("TRUE")
'yes'
"""

from __future__ import annotations

import re
from collections import Counter

# Bump when anything below changes a number.
VERSION = "normalize/1"

# "x-ray", "x ray", "xray", "X‐ray" (Unicode hyphens) all become one word.
_XRAY = re.compile(r"\bx[\s\-\u2010-\u2015]*ray", re.IGNORECASE)
# Everything that is not a letter or digit (in any script) separates words.
_NON_WORD = re.compile(r"[\W_]+")
_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS: dict[str, str] = {
    word: str(value) for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split())
}
# British spellings that SLAKE itself mixes ("Gray ball", "Grey circle").
_SPELLINGS: dict[str, str] = {"grey": "gray"}
# Whole-answer synonyms only: "no" inside "no lesion" is a different answer.
_YES_NO: dict[str, str] = {
    "yes": "yes", "y": "yes", "true": "yes", "correct": "yes", "yeah": "yes", "yep": "yes",
    "no": "no", "n": "no", "false": "no", "incorrect": "no", "nope": "no",
}


def normalize_answer(text: str) -> str:
    """Lowercase, unify x-ray spellings, drop punctuation and articles, map number words.

    "none" is *not* mapped to 0: SLAKE answers "None" to "what diseases" and
    "0" to "how many", and the two must not be confused.

    >>> normalize_answer("  Two   nodules! ")
    '2 nodules'
    """
    text = _XRAY.sub("xray", text.lower())
    words = [word for word in _NON_WORD.sub(" ", text).split() if word not in _ARTICLES]
    words = [_SPELLINGS.get(word, _NUMBER_WORDS.get(word, word)) for word in words]
    joined = " ".join(words)
    return _YES_NO.get(joined, joined)


def exact(prediction: str, answer: str, answer_type: str) -> float:
    """1.0 when both normalise to the same string.

    >>> exact("yes.", "Yes", "CLOSED"), exact("no nodule", "No", "CLOSED")
    (1.0, 0.0)
    """
    return 1.0 if normalize_answer(prediction) == normalize_answer(answer) else 0.0


def token_f1(prediction: str, answer: str, answer_type: str) -> float:
    """SQuAD-style F1 of normalised word multisets (shared count = the smaller count).

    Both empty scores 1.0, one empty 0.0.

    >>> round(token_f1("left lung", "Lower Left Lung", "OPEN"), 6)  # P = 2/2, R = 2/3
    0.8
    """
    predicted = Counter(normalize_answer(prediction).split())
    reference = Counter(normalize_answer(answer).split())
    if not predicted or not reference:
        return 1.0 if predicted == reference else 0.0
    shared = sum((predicted & reference).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / sum(predicted.values()), shared / sum(reference.values())
    return 2 * precision * recall / (precision + recall)


def choice(prediction: str, answer: str, answer_type: str) -> float:
    """CLOSED accuracy of the chosen candidate: ``exact`` on CLOSED questions only.

    The caller passes the candidate with the best score (see
    :attr:`slakevqa.records.Prediction.chosen`), not the free text.
    """
    if answer_type != "CLOSED":
        raise ValueError(f"scorer 'choice' applies to CLOSED questions only, got {answer_type!r}")
    return exact(prediction, answer, answer_type)
