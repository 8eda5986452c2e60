"""Which annotated classes a question is about: pure text, no files.

Used by :mod:`slakevqa.data.masks` to pick the region of an image. The rules, in
order (see :func:`region_classes`): classes the question names (sides, plurals
and a few spelling variants handled), else the lesion classes for an
abnormality question, else every labelled region.

Example, a CT with ``Liver``, ``Liver Cancer``, ``Left Kidney``, ``Right Kidney``::

    "Which is bigger, liver or kidneys?"  -> Liver, Liver Cancer, Left Kidney, Right Kidney   (named)
    "Where is/are the abnormality located?" -> Liver Cancer                               (lesion)
    "Which plane is this image taken?"    -> None: every labelled region                  (all)
"""

from __future__ import annotations

import re
from functools import lru_cache

SIDES = frozenset({"left", "right"})
# Words naming a finding rather than an anatomical structure (singular, as _words makes them).
_LESION = ("cancer", "tumor", "edema", "mass", "nodule", "effusion", "pneumonia", "atelectasis",
           "cardiomegaly", "pneumothorax", "infiltrate", "lesion", "fracture", "hemorrhage", "cyst")
_ABNORMAL = ("abnormal", "abnormality", "disease", "healthy", "unhealthy", "normal")
# Question spellings that differ from the class names (after _words).
SYNONYMS: dict[str, str] = {"teeth": "tooth", "spine cord": "spinal cord", "infiltration": "infiltrate",
                            "tumour": "tumor", "oedema": "edema", "large bowel": "colon",
                            "large intestine": "colon", "small intestine": "small bowel"}


def _singular(word: str) -> str:
    # Plural handling for matching only: both the question and the class names go
    # through it, so "atelectasis" staying as is on both sides is what matters.
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@lru_cache(maxsize=8192)
def _words(text: str) -> tuple[str, ...]:
    """Lower-case singular words, synonyms folded: ``"Where are the kidneys?"`` -> ``(..., "kidney")``."""
    joined = " " + " ".join(_singular(w) for w in re.findall(r"[a-z0-9]+", text.lower())) + " "
    for spelling, name in SYNONYMS.items():
        joined = joined.replace(f" {spelling} ", f" {name} ")
    return tuple(joined.split())


LESION_WORDS = frozenset(_singular(w) for w in _LESION)
ABNORMAL_WORDS = frozenset(_singular(w) for w in _ABNORMAL) | LESION_WORDS


def is_lesion(label: str) -> bool:
    """``Liver Cancer``, ``Brain Edema``, ``Effusion`` are lesions; ``Liver`` is not."""
    return bool(LESION_WORDS & set(_words(label)))


def _organ(label: str) -> tuple[str, ...]:
    """The organ a class belongs to: ``Left Kidney`` -> kidney, ``Liver Cancer`` -> liver, ``Mass`` -> ()."""
    words = _words(label)
    words = words[1:] if words[:1] and words[0] in SIDES else words
    if is_lesion(label):
        return () if not words or words[0] in LESION_WORDS else words[:1]
    return words


@lru_cache(maxsize=256)
def _phrase_labels(vocabulary: frozenset[str]) -> dict[tuple[str, ...], set[str]]:
    """Every phrase a question may use, with the classes it names.

    A class name names itself; a bare organ (``kidney``) names both sides and its
    lesions; a sided organ (``left kidney``) names that side and the organ's
    lesions, since a lesion is carved out of its organ's pixels and its side is
    unknown.
    """
    phrases: dict[tuple[str, ...], set[str]] = {}  # cached: callers only read it
    for label in vocabulary:
        phrases.setdefault(_words(label), set()).add(label)
        organ = _organ(label)
        if not organ:
            continue
        side = _words(label)[0] if _words(label)[0] in SIDES else None
        phrases.setdefault(organ, set()).add(label)
        for named_side in SIDES:
            if side in (named_side, None):
                phrases.setdefault((named_side, *organ), set()).add(label)
    return phrases


def named_labels(question: str, vocabulary: set[str]) -> set[str]:
    """Classes of ``vocabulary`` the question names; the longest phrase wins.

    >>> sorted(named_labels("Which is bigger, liver or kidneys?", {"Liver", "Left Kidney", "Right Kidney", "Spleen"}))
    ['Left Kidney', 'Liver', 'Right Kidney']
    >>> sorted(named_labels("Where is the brain stem?", {"Brain Stem", "Brain Edema"}))
    ['Brain Stem']
    """
    words = _words(question)
    phrases = _phrase_labels(frozenset(vocabulary))
    spans = [(i, i + len(p), p) for p in phrases for i in range(len(words) - len(p) + 1)
             if words[i:i + len(p)] == p]
    # "brain stem" also contains "brain", "left kidney" contains "kidney": keep maximal spans.
    kept = [s for s in spans if not any(o[0] <= s[0] and s[1] <= o[1] and o[1] - o[0] > s[1] - s[0] for o in spans)]
    chosen = set().union(*(phrases[p] for _, _, p in kept))
    # "brain tumor": of the brain's classes keep those the lesion word names.
    asked = LESION_WORDS & set(words)
    narrowed = {label for label in chosen if asked & set(_words(label))}
    return narrowed or chosen


def is_abnormality_question(question: str, content_type: str) -> bool:
    """SLAKE's ``Abnormality`` content type, or a question about disease/normality in any other type."""
    return content_type.lower() == "abnormality" or bool(ABNORMAL_WORDS & set(_words(question)))


def choose_region(question: str, content_type: str, available_labels: set[str],
                  vocabulary: set[str] = frozenset()) -> tuple[set[str] | None, str]:
    """:func:`region_classes` plus the rule that decided: ``named``, ``lesion`` or ``all``."""
    available = set(available_labels)
    named = named_labels(question, available | set(vocabulary)) & available
    if named:
        return named, "named"
    lesions = {label for label in available if is_lesion(label)}
    if lesions and is_abnormality_question(question, content_type):
        # "Is the tumor enhancing?": of the lesions keep those the question's lesion words name.
        asked = LESION_WORDS & set(_words(question))
        return {label for label in lesions if asked & set(_words(label))} or lesions, "lesion"
    return None, "all"


def region_classes(question: str, content_type: str, available_labels: set[str],
                   vocabulary: set[str] = frozenset()) -> set[str] | None:
    """The classes a question is about, among those annotated on its image.

    1. Organs or findings the question names, case-insensitively, plurals and
       sides handled: "kidneys" -> Left Kidney + Right Kidney (+ Kidney Cancer);
       "left lung" -> Left Lung (+ Lung Cancer); "lung cancer" -> Lung Cancer only.
    2. Else, for an abnormality question, the lesion classes present (those its
       lesion words name when any do: "Is the tumor enhancing?" -> the tumors).
    3. Else ``None``: every labelled region (also when the named organ is absent).

    ``vocabulary`` (all class names the dataset knows, e.g. ``mask.txt``) makes an
    absent class shadow a shorter one: "brain stem" never falls back to "brain".

    >>> sorted(region_classes("Is the liver healthy?", "Abnormality", {"Liver", "Liver Cancer", "Spleen"}))
    ['Liver', 'Liver Cancer']
    >>> sorted(region_classes("Is this image normal?", "Abnormality", {"Brain Edema", "Brain Stem"}))
    ['Brain Edema']
    >>> region_classes("Where is the heart?", "Position", {"Liver"}) is None
    True
    """
    return choose_region(question, content_type, available_labels, vocabulary)[0]
