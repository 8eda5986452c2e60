"""Turning a model's raw output into the answer that is scored. Pure string functions.

>>> extract_answer("\\n Answer: Left lung\\nBecause the opacity ...")
'Left lung'
>>> match_candidate("It is on the right side.", ("Left", "Right"))
'Right'
"""

from __future__ import annotations

import re

from slakevqa.inputs.answer_keys import match_key

_ANSWER_PREFIX = re.compile(r"^\s*(?:the\s+)?answer\s*(?:is)?\s*[:\-]\s*", re.I)
GENERIC_ANSWERS: frozenset[str] = frozenset({"image", "picture", "photo", "scan", "xray", "x ray", "x-ray"})


def extract_answer(raw: str) -> str:
    """The first non-empty line, without a leading ``Answer:`` and surrounding whitespace."""
    for line in raw.splitlines():
        line = _ANSWER_PREFIX.sub("", line).strip()
        if line:
            return line
    return ""


def match_candidate(text: str, candidates: tuple[str, ...] | list[str]) -> str | None:
    """The candidate a free-form answer names (``generate`` mode); None when none or several match.

    An exact normalised match wins; otherwise the one candidate whose words all
    occur in the answer, preferring the longest ("left lung" over "lung").
    """
    key = match_key(text)
    for candidate in candidates:
        if match_key(candidate) == key:
            return candidate
    words = set(key.split())
    hits = [c for c in candidates if match_key(c) and set(match_key(c).split()) <= words]
    hits.sort(key=lambda c: -len(match_key(c)))
    if len(hits) == 1 or (len(hits) > 1 and len(match_key(hits[0])) > len(match_key(hits[1]))):
        return hits[0]
    return None
