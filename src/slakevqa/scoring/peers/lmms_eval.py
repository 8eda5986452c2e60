"""lmms-eval's SLAKE metric, reimplemented quirk for quirk.

Source of truth: EvolvingLMMs-Lab/lmms-eval commit ``75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3``
(2026-08-06; the SLAKE task came with PR #1392, commit ``0a75d6b``):
``lmms_eval/tasks/slake/utils.py`` (``slake_process_results``, ``normalize_answer``,
``slake_aggregate_*``), ``_default_template_yaml`` (no ``filter_list``, so the response is
the first generation unchanged), and the reasoning-tag strip of ``lmms_eval/api/reasoning.py``
that ``lmms_eval/evaluator.py`` applies before ``process_results`` whenever a tag list is
configured. The CLI (``lmms-eval ...`` / ``lmms-eval eval ...``, ``__main__.py``) configures
one by default: ``--reasoning_tags '[["<think>", "</think>"], ["<analysis>", "</analysis>"]]'``.
Calling ``evaluator.simple_evaluate`` from Python (``cli_args=None``) or passing
``--reasoning_tags none`` skips the strip; this module reproduces the CLI default.

Per question, the response is stripped of reasoning blocks, both sides are normalised, and
the question is right (1.0) when the normalised strings are *equal*; otherwise 0.0. Every
question gets a value whatever its ``answer_type``, so :func:`score` never returns None.

Quirks (each moves a number; examples are ``score(prediction, answer)``):

* Reasoning strip, per tag pair in order (``<think>`` first, then ``<analysis>``): remove from
  the first opening tag to the first closing tag after it, rescanning the whole text after
  each cut (so a cut can form a new tag); then, if a closing tag remains and no opening tag
  does, keep only the text after the *last* closing tag. Case-sensitive, ``<thinking>`` is
  not a tag, an opening tag with no closing tag after it is left in place:
  ``"<think>no</think> Yes"`` -> ``"Yes"``; ``"long reasoning</think>Yes"`` -> ``"Yes"``;
  ``"<THINK>x</THINK> yes"`` and ``"<think>no"`` stay and score 0 against "Yes".
* Parentheses and their content are deleted up to the first ``)``, before any other rule:
  ``"CT (computed tomography)"`` == ``"CT"``; ``"(yes)"`` normalises to "" and so equals an
  empty response; nesting is not balanced (``"a (b (c) d) e"`` -> ``"a d e"``); an unclosed
  ``(`` is only spaced. Full-width ``（…）`` likewise, but a mixed ``(…）`` pair is not.
* ASCII punctuation and a fixed list of Chinese marks become spaces, then whitespace is
  collapsed: ``"Left Lung, Right"`` == ``"left lung right"``, ``"x-ray"`` -> ``"x ray"``.
  Not in the list, so kept: curly quotes and apostrophes (``"’"``, ``"“yes”"`` != "yes"),
  the full-width full stop ``"．"``, ``"…"``, ``"·"``, ``"「」"``.
* Whole-string aliases only: ``"x ray"`` and ``"xray"`` -> ``"xray"``, so "X-Ray" == "xray",
  but "chest x-ray" != "chest xray".
* Whole-string yes/no synonyms only: yes/yeah/yep/true -> yes, no/nope/false -> no, and the
  Chinese 是/是的/有/包含/可以/能/会/正常 -> yes, 否/不是/没有/无/不包含/不能/不会/不可以/不正常/异常 -> no;
  so "True." == "Yes", "正常" (normal) == "yes" and "异常" (abnormal) == "no", while
  "Yes, it is" != "Yes".
* Nothing else: no article removal ("the liver" != "liver"), no number words ("two" != "2"),
  no word reordering ("lung left" != "left lung"), no substring credit ("nodule" != "no").
* Headline numbers are fractions (printed ``%.4f`` in the table, full precision in
  ``results.json``). OPEN/CLOSED come from ``answer_type`` lowercased and stripped; a group
  with no questions reports 0.0, not a missing value; questions of any other type count in
  ``slake_accuracy`` only.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any, Sequence

from slakevqa.errors import UserError
from slakevqa.files import json_lines

# Bump when anything below changes a number.
VERSION = "lmms_eval-75571cf/1"

HEADLINE_KEYS: tuple[str, ...] = ("slake_accuracy", "slake_open_accuracy", "slake_closed_accuracy")

# The default of the CLI's --reasoning_tags (not StripThinkingFilter's <think>/<thinking>
# list, which only tasks with `auto_strip_thinking: true` use; SLAKE does not).
REASONING_TAGS: tuple[tuple[str, str], ...] = (("<think>", "</think>"), ("<analysis>", "</analysis>"))

# Full-width twins of the ASCII marks, except U+FF0E "．" which upstream's list lacks, plus
# the ideographic marks upstream names. ASCII marks themselves come from string.punctuation.
_ZH_MARKS = {chr(ord(mark) + 0xFEE0) for mark in string.punctuation} - {"．"} | set("、。｡《》【】")
_TO_SPACE = str.maketrans(dict.fromkeys(string.punctuation + "".join(sorted(_ZH_MARKS)), " "))
_PARENTHESISED = re.compile(r"\([^)]*\)")
_FULLWIDTH_PARENTHESISED = re.compile(r"（[^）]*）")
_WHITESPACE = re.compile(r"\s+")
_ALIASES: dict[str, str] = {"x ray": "xray", "xray": "xray"}
_YES_NO: dict[str, str] = {
    **dict.fromkeys(("yes", "yeah", "yep", "true", "是", "是的", "有", "包含", "可以", "能", "会", "正常"), "yes"),
    **dict.fromkeys(("no", "nope", "false", "否", "不是", "没有", "无", "不包含", "不能", "不会",
                     "不可以", "不正常", "异常"), "no"),
}


def _cut_blocks(text: str, opening: str, closing: str) -> str:
    """Remove ``opening…closing`` blocks, leftmost first, rescanning after every cut."""
    while opening in text and closing in text:
        start = text.find(opening)
        end = text.find(closing, start)
        if end < 0:  # the only closing tags come before the first opening tag
            return text
        text = text[:start] + text[end + len(closing):]
    return text


def strip_reasoning(response: str, tags: Sequence[tuple[str, str]] = REASONING_TAGS) -> str:
    """The response ``process_results`` sees after the CLI's default reasoning strip.

    >>> strip_reasoning("<think>It looks dark.</think> Yes")
    'Yes'
    >>> strip_reasoning("prefilled reasoning</think>Liver")   # template opened the tag
    'Liver'
    """
    for opening, closing in tags:
        response = _cut_blocks(response, opening, closing)
        if closing in response and opening not in response:
            response = response.rsplit(closing, 1)[-1]
    return response.strip()


def normalize_answer(text: str) -> str:
    """Upstream ``normalize_answer``: what is compared for equality.

    >>> normalize_answer(" CT (computed tomography). ")
    'ct'
    >>> normalize_answer("X-Ray")
    'xray'
    """
    text = text.strip().lower()
    text = _FULLWIDTH_PARENTHESISED.sub(" ", _PARENTHESISED.sub(" ", text))
    text = _WHITESPACE.sub(" ", text.translate(_TO_SPACE)).strip()
    text = _ALIASES.get(text, text)
    return _YES_NO.get(text, text)


def score(prediction: str, answer: str, answer_type: str) -> float | None:
    """1.0 when the stripped, normalised response equals the normalised answer, else 0.0.

    ``answer_type`` does not change the value (it only groups the headline).

    >>> score("<think>Dark lung field.</think> True.", "Yes", "CLOSED")
    1.0
    >>> score("the liver", "Liver", "OPEN")
    0.0
    """
    return 1.0 if normalize_answer(strip_reasoning(prediction)) == normalize_answer(answer) else 0.0


def _accuracy(hits: Sequence[float]) -> float:
    """Upstream ``_accuracy``: the mean, 0.0 for no questions (count / n equals numpy's mean)."""
    return sum(hits) / len(hits) if hits else 0.0


def headline(rows: Sequence[tuple[str, str, str]]) -> dict[str, float]:
    """``slake_accuracy`` and its OPEN/CLOSED splits for one run, as lmms-eval aggregates them.

    >>> headline([("yes", "Yes", "CLOSED"), ("lung", "Liver", "OPEN"), ("liver", "Liver", "OPEN")])
    {'slake_accuracy': 0.6666666666666666, 'slake_open_accuracy': 0.5, 'slake_closed_accuracy': 1.0}
    """
    scored = [(score(prediction, answer, kind) or 0.0, kind.strip().lower())
              for prediction, answer, kind in rows]
    return {
        "slake_accuracy": _accuracy([hit for hit, _ in scored]),
        "slake_open_accuracy": _accuracy([hit for hit, kind in scored if kind == "open"]),
        "slake_closed_accuracy": _accuracy([hit for hit, kind in scored if kind == "closed"]),
    }


def question_values(rows: Sequence[tuple[str, str, str]]) -> dict[str, list[float | None]]:
    """Each headline key's value for each question, ``None`` where the question is outside that key's group:
    every key of :func:`headline` is the mean of its values (``tests/test_peer_intervals.py``), which lets
    ``slakevqa compare`` bootstrap the headline (:mod:`slakevqa.scoring.peer_intervals`)."""
    values: dict[str, list[float | None]] = {key: [] for key in HEADLINE_KEYS}
    for prediction, answer, kind in rows:
        hit, group = score(prediction, answer, kind) or 0.0, kind.strip().lower()
        values["slake_accuracy"].append(hit)
        values["slake_open_accuracy"].append(hit if group == "open" else None)
        values["slake_closed_accuracy"].append(hit if group == "closed" else None)
    return values


def _sample_fields(record: Any, path: Path, line_no: int) -> tuple[int, str]:
    """(qid, raw response) of one decoded ``--log_samples`` line, or a one-line UserError."""
    def fail(field: str, problem: str) -> UserError:
        return UserError(f"{path}: line {line_no}: field '{field}': {problem}")

    if not isinstance(record, dict):
        raise fail("<line>", "expected a JSON object")
    metric = record.get("slake_accuracy")
    qid = metric.get("id") if isinstance(metric, dict) else None
    if not isinstance(qid, str) or not (qid.isascii() and qid.isdigit()):
        raise fail("slake_accuracy.id", f"expected the SLAKE qid as a digit string, got {qid!r}")
    # "resps" (the raw generation) is written only when the reasoning strip changed it; the
    # strip is not idempotent, so score() must see the raw text, not "filtered_resps".
    field = "resps" if "resps" in record else "filtered_resps"
    response = record.get(field)
    if not isinstance(response, str):
        raise fail(field, f"expected a string, got {type(response).__name__}")
    return int(qid), response


def read_log_samples(path: Path) -> list[tuple[int, str]]:
    """``(qid, raw response)`` per line of an lmms-eval ``--log_samples`` file for slake_en.

    The file is ``<output_path>/<model>/<YYYYmmdd_HHMMSS>_samples_slake_en.jsonl``, one JSON
    object per question (in rank-gather order, not qid order), e.g.::

        {"doc_id": 0, "target": "CT", "filtered_resps": "CT", "token_counts": [null],
         "doc_hash": "…", "input": "What modality…", "slake_accuracy": {"id": "11934",
         "prediction": "CT", "is_correct": true, …}, "slake_open_accuracy": {…}, …}

    ``doc_id`` indexes the English-filtered test split of BoKelvin/SLAKE; the question id is
    the SLAKE ``qid`` that ``process_results`` logs as ``slake_accuracy.id``.
    """
    return [_sample_fields(record, Path(path), number) for number, record in json_lines(path)]
