"""The metric behind the LLaVA-Med paper tables, reimplemented quirk for quirk.

Source of truth: microsoft/LLaVA-Med tag ``v1.0.0``, ``llava/eval/run_eval_batch.py``
with ``eval_metrics/glossary.py::normalize_word`` and
``eval_metrics/evaluate_metrics.py::calculate_f1score``. This is our own code; it
reproduces what that code computes, down to the bugs, because every one of them
moves the published numbers (83.08 OPEN recall / 85.34 CLOSED accuracy on SLAKE).
``docs/metrics.md`` lists the quirks with examples.

Per question, both sides are lowercased and normalised once; then

* CLOSED: hit (1.0) when the normalised answer is a *substring* of the normalised
  prediction, so ``"no"`` hits ``"nodule"``;
* OPEN: "recall" from a second normalisation pass and unigram counts, where true
  positives are counted on the *prediction's* side (repeating a right word helps).
"""

from __future__ import annotations

import re
from collections import Counter

# Bump when anything below changes a number.
VERSION = "llava_med-v1.0.0/1"

# Marks that normalize_word deletes or turns into a space. Not in the list, so kept:
# ' : * # % & | ~ ^ $ and every non-ASCII mark. Periods have their own rule.
_MARKS: tuple[str, ...] = tuple(';/[]"{}()=+\\_-><@`,?!')
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# Upstream writes "(?!<=\d)(\.)(?!\d)": the first group is a look-*ahead* for the text
# "<=<digit>", which can never start where a "." starts, so only "not before a digit" acts.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# Upstream passes re.UNICODE (== 32) as the positional `count` of Pattern.sub, so one
# normalisation call removes at most 32 periods, the leftmost ones.
_PERIODS_PER_CALL = 32
_NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})


def _expand(table: dict[str, str]) -> dict[str, str]:
    """``{"can't": "cant"}`` -> ``{"cant": "can't"}``: one target, several spellings."""
    return {spelling: target for target, spellings in table.items() for spelling in spellings.split()}


# The upstream contraction table as "written form: spellings rewritten to it". Only
# lowercase spellings are listed: words are lowercased before the lookup, so the
# upstream keys "Im", "Ive", "Id've" and "I'dve" never match. Identity entries
# ("let's", "she's") change nothing and are left out. Note the one reversed entry:
# "somebody'd" becomes "somebodyd".
_CONTRACTIONS: dict[str, str] = _expand({
    "ain't": "aint", "aren't": "arent", "can't": "cant", "could've": "couldve",
    "couldn't": "couldnt", "couldn't've": "couldn'tve couldnt've", "didn't": "didnt",
    "doesn't": "doesnt", "don't": "dont", "hadn't": "hadnt", "hadn't've": "hadnt've hadn'tve",
    "hasn't": "hasnt", "haven't": "havent", "he'd": "hed", "he'd've": "hed've he'dve",
    "he's": "hes", "how'd": "howd", "how'll": "howll", "how's": "hows", "isn't": "isnt",
    "it'd": "itd", "it'd've": "itd've it'dve", "it'll": "itll", "ma'am": "maam",
    "mightn't": "mightnt", "mightn't've": "mightnt've mightn'tve", "might've": "mightve",
    "mustn't": "mustnt", "must've": "mustve", "needn't": "neednt", "not've": "notve",
    "o'clock": "oclock", "oughtn't": "oughtnt", "'ow's'at": "ow's'at 'ows'at 'ow'sat",
    "shan't": "shant", "she'd've": "shed've she'dve", "should've": "shouldve",
    "shouldn't": "shouldnt", "shouldn't've": "shouldnt've shouldn'tve",
    "somebodyd": "somebody'd", "somebody'd've": "somebodyd've somebody'dve",
    "somebody'll": "somebodyll", "somebody's": "somebodys", "someone'd": "someoned",
    "someone'd've": "someoned've someone'dve", "someone'll": "someonell",
    "someone's": "someones", "something'd": "somethingd",
    "something'd've": "somethingd've something'dve", "something'll": "somethingll",
    "that's": "thats", "there'd": "thered", "there'd've": "thered've there'dve",
    "there're": "therere", "there's": "theres", "they'd": "theyd",
    "they'd've": "theyd've they'dve", "they'll": "theyll", "they're": "theyre",
    "they've": "theyve", "'twas": "twas", "wasn't": "wasnt", "we'd've": "wed've we'dve",
    "we've": "weve", "weren't": "werent", "what'll": "whatll", "what're": "whatre",
    "what's": "whats", "what've": "whatve", "when's": "whens", "where'd": "whered",
    "where's": "wheres", "where've": "whereve", "who'd": "whod", "who'd've": "whod've who'dve",
    "who'll": "wholl", "who's": "whos", "who've": "whove", "why'll": "whyll",
    "why're": "whyre", "why's": "whys", "won't": "wont", "would've": "wouldve",
    "wouldn't": "wouldnt", "wouldn't've": "wouldnt've wouldn'tve", "y'all": "yall",
    "y'all'll": "yall'll y'allll", "y'all'd've": "yall'd've y'alld've y'all'dve",
    "you'd": "youd", "you'd've": "youd've you'dve", "you'll": "youll",
    "you're": "youre", "you've": "youve",
})


def _drop_or_space_marks(text: str) -> str:
    """Each mark is deleted everywhere or spaced everywhere, judged on the whole input.

    A mark is deleted when it touches an ASCII space somewhere in the input (a tab or
    newline does not count); *every* mark is deleted when the input holds a
    digit-comma-digit anywhere. Otherwise the mark becomes a space:
    ``"x-ray"`` -> ``"x ray"`` but ``"chest x-ray - pa"`` -> ``"chest xray  pa"``.
    """
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _MARKS:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if delete_all or touches_space else " ")
    return out


def normalize_word(text: str) -> str:
    """One call of upstream ``normalize_word``.

    >>> normalize_word("The left-lung, mostly.")
    'left lung mostly'
    """
    text = _PERIOD_NOT_BEFORE_DIGIT.sub("", _drop_or_space_marks(text), count=_PERIODS_PER_CALL)
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    # Upstream then deletes commas once more; none survive the mark pass, so it is a no-op.
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def open_recall(prediction: str, answer: str) -> float:
    """``calculate_f1score(prediction, answer)[2]`` on already normalised strings.

    It normalises both again (a second pass matters only past 32 periods), counts
    unigrams, and returns tp / (tp + fn) with tp = the *prediction's* count of every
    shared word and fn = the answer's count of every word the prediction lacks. 0.0
    when either side is empty or nothing is shared.

    >>> open_recall("lung lung lung", "left lung")  # tp = 3, fn = 1
    0.75
    """
    predicted = Counter(normalize_word(prediction).split())
    reference = Counter(normalize_word(answer).split())
    tp = sum(count for word, count in predicted.items() if word in reference)
    fn = sum(count for word, count in reference.items() if word not in predicted)
    if not predicted or not reference or tp == 0:
        return 0.0
    return tp / (tp + fn)


def score(prediction: str, answer: str, answer_type: str) -> float:
    """One question under the paper metric: OPEN recall or CLOSED substring hit.

    >>> score("Nodule", "No", "CLOSED")
    1.0
    >>> score("The abnormality is in the left lung.", "Left Lung", "OPEN")
    1.0
    """
    predicted = normalize_word(prediction.lower())
    gold = normalize_word(answer.lower())
    if answer_type == "CLOSED":
        # An answer that normalises to "" ("The") is a substring of anything: a hit.
        return 1.0 if gold in predicted else 0.0
    if answer_type == "OPEN":
        return open_recall(predicted, gold)
    raise ValueError(f"answer_type must be OPEN or CLOSED, got {answer_type!r}")
