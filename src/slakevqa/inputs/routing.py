"""Route a question to its answer candidates from the question text alone.

The gold answer is never read: every function here takes a question string
(and, for the fallback, a vocabulary of *training* answers), never a
:class:`~slakevqa.records.VQASample`. A CLOSED question takes the first route
that applies, in this order:

* ``options``: the question lists its alternatives::

      "Which is the biggest in this image,lung,liver or heart?" -> ("lung", "liver", "heart")
      "Is this a T1 weighted or T2 weighted MRI image?"         -> ("T1", "T2")

  Explicit alternatives win over the yes/no shape: "Is this a CT or MRI image?"
  opens with "Is" but is a choice.
* ``yesno``: the question opens with an auxiliary verb ("Does the picture
  contain liver?") -> ``("Yes", "No")``, written as SLAKE writes them.
* ``vocab``: anything else -> every answer of the closed vocabulary
  (``closed_vocab.json``, built from training CLOSED answers that are not yes/no).

OPEN vs CLOSED follows SLAKE's ``answer_type`` (``route_source="answer_type"``,
the metadata every published number uses) or :func:`predict_answer_type`
(``route_source="predicted"``); the :class:`Route` records which.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from slakevqa.errors import UserError
from slakevqa.inputs.answer_keys import match_key

if TYPE_CHECKING:
    from slakevqa.inputs.vocab import ClosedVocab

ROUTE_KINDS: tuple[str, ...] = ("open", "yesno", "options", "vocab")
ROUTE_SOURCES: tuple[str, ...] = ("answer_type", "predicted")
YES_NO: tuple[str, str] = ("Yes", "No")
# Words that open a yes/no question ("Does the picture contain liver?").
AUXILIARIES: frozenset[str] = frozenset({
    "is", "are", "am", "was", "were", "do", "does", "did", "can", "could", "will", "would",
    "shall", "should", "has", "have", "had", "may", "might", "must"})
WH_WORDS: frozenset[str] = frozenset({"which", "what", "where", "how", "who", "whose", "when", "why"})
ARTICLES: frozenset[str] = frozenset({"the", "a", "an", "either"})

# SLAKE writes number agreement with a slash ("Is/Are there ...", "Which organs/organ ...");
# such pairs are one word, not alternatives.
_AUX_SLASH = re.compile(r"\b(is|are|was|were|do|does|has|have)/(?:is|are|was|were|do|does|has|have)\b", re.I)
_WORD_SLASH = re.compile(r"\b([A-Za-z]+)/([A-Za-z]+)\b")
_CONNECTOR = re.compile(r"\s+(?:or|vs\.?|versus)\s+", re.I)
_LETTER_MARK = re.compile(r"(?:^|(?<=\s))\(?([A-H]|[1-9])[.):]\s+")
_SLASH_LIST = re.compile(r"(?<!\S)[^\s/]+(?:/[^\s/]+)+(?!\S)")
# Trailing context after the last alternative, not part of it ("..., liver or heart in this image").
_TAIL_CONTEXT = re.compile(r"\s+(?:(?:in|on|of)\s+(?:this|the)\s+(?:image|picture|scan|photo|film|slice)"
                           r"|(?:relative|compared)\s+(?:to|with)|than)\b.*$", re.I)
_EDGE_PUNCTUATION = " \t\"'`.,;:!?()[]{}"
@dataclass(frozen=True)
class Route:
    """How one question is answered: its route, its candidates and where they came from.

    ``kind`` is ``open`` (generate freely), ``yesno``, ``options`` or ``vocab``;
    ``candidates`` are in display form (empty for ``open``); ``source_text`` says
    what the candidates were read from; ``route_source`` says who decided OPEN vs
    CLOSED (``answer_type`` = SLAKE's metadata, ``predicted`` = the question-only
    classifier).

    >>> from slakevqa.inputs.vocab import ClosedVocab
    >>> route_closed("Which organ is abnormal, heart or lung?", ClosedVocab.empty())
    Route(kind='options', candidates=('heart', 'lung'), source_text='heart or lung', route_source='answer_type')
    """

    kind: str
    candidates: tuple[str, ...] = ()
    source_text: str = ""
    route_source: str = "answer_type"

    def to_json(self) -> dict:  # the fields a results file records per question
        return {"route": self.kind, "candidates": list(self.candidates),
                "route_source": self.route_source, "route_source_text": self.source_text}


def clean_question(question: str) -> str:
    """Collapse whitespace, drop trailing ``?``/``.``, and merge number-agreement slashes.

    >>> clean_question("Is/Are there abnormalities in the patient's left lung?")
    "Is there abnormalities in the patient's left lung"
    >>> clean_question("Which organs/organ in the picture belong to the circulatory system ?")
    'Which organs in the picture belong to the circulatory system'
    """
    text = _AUX_SLASH.sub(lambda m: m.group(1), " ".join(question.split()))
    text = _WORD_SLASH.sub(_merge_plural_slash, text)
    return text.rstrip(" ?.!")


def _merge_plural_slash(match: re.Match) -> str:
    a, b = match.group(1).lower(), match.group(2).lower()
    return match.group(1) if a in (b + "s", b + "es") or b in (a + "s", a + "es") else match.group(0)


def parse_options(question: str) -> list[str]:
    """The alternatives a question lists, in its own casing; ``[]`` when it lists none.

    Forms read, first match wins: lettered (``A. CT B. MRI``), slash (``CT/MRI``),
    then ``or``/``vs``/``versus`` with comma lists or a bare pair.

    >>> parse_options("Which is the biggest in this image,lung,liver or heart?")
    ['lung', 'liver', 'heart']
    >>> parse_options("Is this a T1 weighted or T2 weighted MRI image?")
    ['T1', 'T2']
    >>> parse_options("Is the abnormality hyperdense or hypodense?")
    ['hyperdense', 'hypodense']
    >>> parse_options("Does the picture contain liver?")
    []
    """
    return find_options(question)[0]


def find_options(question: str) -> tuple[list[str], str]:
    """:func:`parse_options` plus the span of the question the options were read from."""
    text = clean_question(question)
    for rule in (_lettered_options, _slash_options, _connector_options):
        items, span = rule(text)
        options = finalise_options(items)
        if len(options) >= 2:
            return options, span
    return [], ""


def finalise_options(items: list[str]) -> list[str]:
    """Trim punctuation and leading articles, drop empties and duplicates (compared by :func:`match_key`)."""
    options: dict[str, str] = {}
    for item in items:
        words = item.strip(_EDGE_PUNCTUATION).split()
        while len(words) > 1 and words[0].lower() in ARTICLES:
            words = words[1:]
        option = " ".join(words).strip(_EDGE_PUNCTUATION)
        if match_key(option) and match_key(option) not in options:
            options[match_key(option)] = option
    return list(options.values())


def _lettered_options(text: str) -> tuple[list[str], str]:
    """``Which modality? A. CT B. MRI C. X-Ray``: markers must run A, B, C... or 1, 2, 3..."""
    marks = list(_LETTER_MARK.finditer(text))
    labels = [m.group(1) for m in marks]
    if len(marks) < 2 or labels not in ([chr(ord("A") + i) for i in range(len(marks))],
                                         [str(i + 1) for i in range(len(marks))]):
        return [], ""
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [text[m.end():end] for m, end in zip(marks, ends)], text[marks[0].start():]


def _slash_options(text: str) -> tuple[list[str], str]:
    """``Is this an MRI/CT image?`` (spaces around the slash allowed)."""
    match = _SLASH_LIST.search(re.sub(r"\s*/\s*", "/", text))
    return (match.group(0).split("/"), match.group(0)) if match else ([], "")


def _connector_options(text: str) -> tuple[list[str], str]:
    """Alternatives joined by ``or``/``vs``: a comma list after a stem, or a bare ``X or Y`` pair.

    ``Which is bigger in this image, liver, heart or lung`` -> comma list after the
    stem "Which is bigger in this image". Without such a stem the pair is read
    word-parallel by :func:`parallel_pair`.
    """
    parts = _CONNECTOR.split(text)
    if len(parts) < 2:
        return [], ""
    head, middle, tail = parts[0], parts[1:-1], parts[-1]
    segments = [s.strip() for s in re.split(r"[,:;]", head)]
    # The stem is the last segment that opens like a question; the segments after it are listed items.
    stem_at = max((i for i, s in enumerate(segments) if starts_question(s)), default=-1)
    listed = [s for s in segments[stem_at + 1:] if s]
    if not listed:  # "Is the abnormality hyperdense or hypodense": no list, a bare pair
        first, last = parallel_pair(segments[stem_at], parts[1])
        items = [first, last] if not middle else [first, *middle, _TAIL_CONTEXT.sub("", tail)]
        return items, _span(text, first, tail)
    items = listed + middle + [_TAIL_CONTEXT.sub("", tail)]
    if stem_at >= 0 and first_word(segments[stem_at]) in AUXILIARIES:
        # "Is this CT, MRI or X-Ray": a yes/no-shaped stem holds the first alternative.
        items.insert(0, parallel_pair(segments[stem_at], items[0])[0])
    return items, _span(text, items[0], tail)


def parallel_pair(left: str, right: str) -> tuple[str, str]:
    """The two alternatives around a bare ``or``, read word-parallel.

    Each side is one word, unless the left's last word recurs a few words into
    the right: then both sides run that long and the shared trailing words belong
    to the question ("T1 weighted or T2 weighted" means "T1 or T2, weighted").

    >>> parallel_pair("Is this a T1 weighted", "T2 weighted MRI image")
    ('T1', 'T2')
    >>> parallel_pair("Is brain tumor white", "gray relative to other tissues")
    ('white', 'gray')
    """
    left_words = left.split()
    right_words = (finalise_options([right]) or [""])[0].split() or [""]
    for j in range(1, min(len(left_words), len(right_words))):
        if right_words[j].lower() == left_words[-1].lower():
            a, b = left_words[-(j + 1):], right_words[:j + 1]
            while len(a) > 1 and len(b) > 1 and a[-1].lower() == b[-1].lower():
                a, b = a[:-1], b[:-1]
            return " ".join(a), " ".join(b)
    return left_words[-1] if left_words else "", right_words[0]


def _span(text: str, first: str, tail: str) -> str:
    """The question text from the first alternative to the end, for :attr:`Route.source_text`."""
    start = text.rfind(first.strip(_EDGE_PUNCTUATION), 0, len(text) - len(tail))
    return text[start:] if start >= 0 else tail


def first_word(text: str) -> str:
    words = text.split()
    return words[0].lower().strip(_EDGE_PUNCTUATION) if words else ""


def starts_question(text: str) -> bool:
    """True when ``text`` opens with an auxiliary verb or a wh-word."""
    return first_word(text) in AUXILIARIES | WH_WORDS


def is_yes_no_question(question: str) -> bool:
    """True for a question answered yes or no; one that lists alternatives never is.

    The question (or, after a leading clause like "In this image,", its main
    clause) must open with an auxiliary verb.

    >>> is_yes_no_question("Does the picture contain liver?"), is_yes_no_question("Is this a CT or MRI image?")
    (True, False)
    >>> is_yes_no_question("Is/Are there abnormalities in the patient's left lung?")
    True
    """
    if parse_options(question):
        return False
    clauses = clean_question(question).split(",")
    return first_word(clauses[0]) in AUXILIARIES or (
        len(clauses) > 1 and first_word(clauses[1]) in AUXILIARIES)


def route_closed(question: str, vocab: ClosedVocab) -> Route:
    """The route of a CLOSED question: options, then yes/no, then the vocabulary.

    Raises UserError when the vocabulary is needed but empty.

    >>> from slakevqa.inputs.vocab import ClosedVocab
    >>> route_closed("Does the picture contain liver?", ClosedVocab.empty()).candidates
    ('Yes', 'No')
    """
    options, span = find_options(question)
    if options:
        return Route("options", tuple(options), span)
    if is_yes_no_question(question):
        return Route("yesno", YES_NO, f"opens with '{first_word(clean_question(question))}'")
    if not vocab.answers:
        raise UserError(f"no candidates for the CLOSED question {question!r}: it is neither yes/no nor lists "
                        "alternatives, and the closed vocabulary is empty (pass --closed_vocab_path or "
                        "--allow_build_vocab)")
    return Route("vocab", vocab.answers, f"closed vocabulary v{vocab.version} ({len(vocab.answers)} answers)")


def predict_answer_type(question: str) -> str:
    """``CLOSED`` when the question is yes/no or lists alternatives, else ``OPEN``.

    >>> predict_answer_type("Which organ is abnormal, heart or lung?")
    'CLOSED'
    >>> predict_answer_type("What is the mr weighting in this image?")
    'OPEN'
    """
    return "CLOSED" if parse_options(question) or is_yes_no_question(question) else "OPEN"


def check_route_source(route_source: str) -> str:
    """``route_source`` itself, or a UserError that suggests the nearest valid name."""
    if route_source not in ROUTE_SOURCES:
        close = difflib.get_close_matches(route_source, ROUTE_SOURCES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown route source '{route_source}': use {' or '.join(ROUTE_SOURCES)}.{hint}")
    return route_source


def route_question(question: str, dataset_answer_type: str, vocab: ClosedVocab,
                   route_source: str = "answer_type") -> Route:
    """The route of any question, OPEN or CLOSED, recording who decided which.

    ``dataset_answer_type`` is SLAKE's ``answer_type`` metadata (never the answer);
    it is ignored when ``route_source == "predicted"``.

    >>> from slakevqa.inputs.vocab import ClosedVocab
    >>> route_question("What modality is used to take this image?", "OPEN", ClosedVocab.empty())
    Route(kind='open', candidates=(), source_text='', route_source='answer_type')
    """
    check_route_source(route_source)
    answer_type = dataset_answer_type if route_source == "answer_type" else predict_answer_type(question)
    if answer_type not in ("OPEN", "CLOSED"):
        raise UserError(f"answer_type must be OPEN or CLOSED, got {answer_type!r} for {question!r}")
    route = Route("open") if answer_type == "OPEN" else route_closed(question, vocab)
    return replace(route, route_source=route_source)
