"""The one comparison of answers and candidates: :func:`match_key`.

Routing, the closed vocabulary, answer extraction, training's choice targets and the
diagnose report all compare answers in this form, so it lives in a leaf module that
imports nothing from slakevqa (routing imports the vocabulary; both need this).
"""

from __future__ import annotations

import re

_BOOLEAN_WORDS: dict[str, str] = {"y": "yes", "true": "yes", "n": "no", "false": "no"}


def match_key(text: str) -> str:
    """The form answers and candidates are compared in.

    Lowercase; every character that is not a letter, digit or space removed
    (so ``X-Ray`` == ``xray``); whitespace collapsed; ``y``/``true`` -> ``yes``,
    ``n``/``false`` -> ``no``.

    >>> match_key(" Small  Bowel. "), match_key("X-Ray"), match_key("True")
    ('small bowel', 'xray', 'yes')
    """
    key = " ".join(re.sub(r"[^\w\s]|_", "", text.lower()).split())
    return _BOOLEAN_WORDS.get(key, key)
