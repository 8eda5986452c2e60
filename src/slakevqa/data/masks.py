"""Segmentation-mask conditioning that works on real SLAKE.

Where a region comes from, per image, first that yields one:

1. a mask file (:func:`mask_candidates`). SLAKE keeps ``mask.png`` beside
   ``source.jpg``; CT/MRI masks are **label maps**, gray value = class id from
   ``mask.txt`` (RGB/RGBA with R=G=B: one channel is read)::

       70:Liver          pixels of gray value 70 are liver
       135:Left Kidney

   Files with only 0 and 255 (or 0 and 1) are **binary** masks. Colour drawings,
   such as SLAKE's X-ray ``mask.png`` (the X-ray with boxes painted on it), are
   not masks and are skipped.
2. ``detection.json`` **boxes** beside the image (``[{"Effusion": [x, y, w, h]}]``):
   the only real region source for SLAKE X-rays.

Which classes form the region follows the question (:func:`region_classes`).
An image whose region is empty (61 SLAKE CT/MRI label maps are all background)
or that has no source at all is left unmodified, and :class:`MaskStats` counts it.

Caveat: the regions come from ground-truth annotations, so conditioning is an
oracle region of interest; e.g. whether "Does the picture contain liver?" crops
to a liver depends on the annotation. Report results with that in mind.

Parsed files are cached per path (SLAKE has ~11 questions per image); call
:func:`clear_caches` after changing files on disk.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from slakevqa.data.annotations import DETECTION_FILE, Box, load_class_map, load_detections
from slakevqa.data.slake import IMAGE_DIRS, SlakeLayout
from slakevqa.errors import DataError, UserError
from slakevqa.records import VQASample

MASK_MODES: tuple[str, ...] = ("none", "crop", "masked")
SOURCES: tuple[str, ...] = ("label_map", "boxes", "binary", "none")
MASK_DIRS: tuple[str, ...] = ("mask", "masks", "seg", "segmentation")
MASK_SUFFIXES: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff")
IMAGE_SUFFIXES: tuple[str, ...] = MASK_SUFFIXES + (".jpg", ".jpeg")
# A gray file with more distinct values than this is a picture, not a label map.
MAX_LABEL_VALUES = 64
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


def _phrase_labels(vocabulary: set[str]) -> dict[tuple[str, ...], set[str]]:
    """Every phrase a question may use, with the classes it names.

    A class name names itself; a bare organ (``kidney``) names both sides and its
    lesions; a sided organ (``left kidney``) names that side and the organ's
    lesions, since a lesion is carved out of its organ's pixels and its side is
    unknown.
    """
    phrases: dict[tuple[str, ...], set[str]] = {}
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
    phrases = _phrase_labels(vocabulary)
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
        return lesions, "lesion"
    return None, "all"


def region_classes(question: str, content_type: str, available_labels: set[str],
                   vocabulary: set[str] = frozenset()) -> set[str] | None:
    """The classes a question is about, among those annotated on its image.

    1. Organs or findings the question names, case-insensitively, plurals and
       sides handled: "kidneys" -> Left Kidney + Right Kidney (+ Kidney Cancer);
       "left lung" -> Left Lung (+ Lung Cancer); "lung cancer" -> Lung Cancer only.
    2. Else, for an abnormality question, every lesion class present.
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
