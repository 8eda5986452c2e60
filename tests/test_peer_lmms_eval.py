"""lmms-eval's SLAKE metric (commit 75571cf), rule by rule, on hand-derived cases.

Each expected value was worked out by reading upstream ``lmms_eval/tasks/slake/utils.py``
and ``lmms_eval/api/reasoning.py`` with the CLI's default ``--reasoning_tags``, and the same
cases were run once through that code in a scratch copy outside this repository (all agree,
as do 127,320 cases built from the real English test split and 200,000 random strings).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slakevqa.errors import UserError
from slakevqa.scoring.peers.lmms_eval import (
    HEADLINE_KEYS,
    VERSION,
    headline,
    normalize_answer,
    read_log_samples,
    score,
    strip_reasoning,
)


@pytest.mark.parametrize("prediction, answer, expected", [
    # Parentheses and their content go, whatever they hold.
    ("CT (computed tomography)", "CT", 1.0),
    ("(yes)", "", 1.0),                       # both normalise to ""
    ("a (b (c) d) e", "a d e", 1.0),          # not balanced: the first ")" closes
    ("lung (left", "lung left", 1.0),         # an unclosed "(" is only a mark
    ("胸腔（肺部）", "胸腔", 1.0),              # full-width pair likewise
    ("胸腔(肺部）", "胸腔", 0.0),               # a mixed pair is not removed
    # No number words, no articles.
    ("two", "2", 0.0),
    ("Two", "two", 1.0),
    ("the liver", "Liver", 0.0),
    ("The Liver", "the liver", 1.0),
    # Yes/no synonyms, whole string only.
    ("True.", "Yes", 1.0),
    ("yep!", "Yes", 1.0),
    ("Nope", "No", 1.0),
    ("false", "no", 1.0),
    ("Yes, it is", "Yes", 0.0),
    ("yes yes", "yes", 0.0),
    ("是的。", "是", 1.0),
    ("有", "Yes", 1.0),
    ("正常", "yes", 1.0),                      # "normal" is a yes ...
    ("异常", "No", 1.0),                       # ... and "abnormal" a no
    ("不正常", "否", 1.0),
    ("是 的", "yes", 0.0),                     # the space makes it another string
    # Reasoning tags (CLI default: <think> then <analysis>).
    ("<think>no</think> Yes", "Yes", 1.0),
    ("<think>no</think>", "No", 0.0),          # the block goes, nothing is left
    ("reasoning</think>Yes", "Yes", 1.0),      # prefilled opening tag: keep after the last close
    ("<think>a</think>b</think>Liver", "Liver", 1.0),
    ("<THINK>x</THINK> yes", "yes", 0.0),      # case-sensitive: tags stay as words
    ("<think>no", "no", 0.0),                  # unclosed: "think no"
    ("<thinking>x</thinking> yes", "yes", 0.0),  # not one of the CLI's tags
    ("x</analysis>Liver", "liver", 1.0),
    ("</think>a<think>b", "a b", 0.0),         # close before open: nothing cut, tags become words
    ("<thi<think>x</think>nk>y</think>z", "z", 1.0),  # a cut forms a new tag, rescanned
    ("<think>a</think>b<think>c</think> d", "b d", 1.0),
    # Empty and whitespace-only output.
    ("", "", 1.0),
    ("", "Liver", 0.0),
    ("\n\t", ".", 1.0),
    # Unicode: only the listed marks are punctuation; lower() is Python's.
    ("Ｌｉｖｅｒ", "liver", 0.0),                # full-width letters are other letters
    ("liver．", "liver", 0.0),                 # U+FF0E is missing from upstream's list
    ("liver。", "liver", 1.0),
    ("“yes”", "yes", 0.0),                     # curly quotes are kept
    ("x\u3000ray", "X-Ray", 1.0),              # ideographic space is whitespace
    # Long outputs are compared whole.
    (" ".join(["liver"] * 40), "liver", 0.0),
    ("liver   " * 40, " ".join(["liver"] * 40), 1.0),
    # Word order, substrings.
    ("lung left", "left lung", 0.0),
    ("Right Lung, Left", "Left Lung, Right", 0.0),
    ("Left Lung, Right", "left lung right", 1.0),
    ("nodule", "no", 0.0),
    ("liver and spleen", "liver", 0.0),
    # X-ray spellings: whole-string alias only.
    ("xray", "X-Ray", 1.0),
    ("X ray", "x_ray", 1.0),
    ("chest x-ray", "chest xray", 0.0),
    ("x-rays", "xray", 0.0),
    ("X–Ray", "xray", 0.0),                    # an en dash is not ASCII punctuation
])
def test_score_golden(prediction: str, answer: str, expected: float) -> None:
    for answer_type in ("OPEN", "CLOSED"):  # the type never changes the value
        assert score(prediction, answer, answer_type) == expected


def test_normalize_and_strip_examples() -> None:
    assert normalize_answer(" Left Lung, Right ") == "left lung right"
    assert normalize_answer("X-Ray") == "xray"
    assert strip_reasoning("  <analysis>a</analysis> Liver ") == "Liver"
    assert VERSION == "lmms_eval-75571cf/1"


def test_headline_keys_and_values() -> None:
    rows = [("<think>?</think>Yes", "Yes", "CLOSED"), ("No", "Yes", "CLOSED"), ("true", "Yes", "closed "),
            ("Liver", "Liver", "OPEN"), ("lung", "Liver", "OPEN"), ("x", "x", "OTHER")]
    result = headline(rows)
    assert tuple(result) == HEADLINE_KEYS
    # 4 of 6 right overall; "closed " counts as CLOSED (strip + lower); OTHER only overall.
    assert result == {"slake_accuracy": 4 / 6, "slake_open_accuracy": 1 / 2, "slake_closed_accuracy": 2 / 3}


def test_headline_empty_groups_report_zero() -> None:
    assert headline([("yes", "Yes", "CLOSED")])["slake_open_accuracy"] == 0.0
    assert headline([]) == dict.fromkeys(HEADLINE_KEYS, 0.0)


def _log_line(qid: str, filtered: str, raw: str | None = None) -> str:
    """One line as lmms-eval's save_results_samples writes it (the doc itself is dropped)."""
    record = {"id": qid, "prediction": filtered, "is_correct": False}
    line: dict = {"doc_id": 0, "target": "Yes"}
    if raw is not None:  # written only when the reasoning strip changed the text
        line["resps"] = raw
    line |= {"filtered_resps": filtered, "token_counts": [None], "doc_hash": "h"}
    line |= {key: record for key in HEADLINE_KEYS} | {"input": "Is it?"}
    return json.dumps(line, ensure_ascii=False)


def test_read_log_samples(tmp_path: Path) -> None:
    path = tmp_path / "20261201_130000_samples_slake_en.jsonl"
    lines = [_log_line("11934", "CT"), _log_line("11935", "Yes", "<think>a</think> Yes"), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    # The raw text is returned where one was logged: score() strips it the way the run did.
    assert read_log_samples(path) == [(11934, "CT"), (11935, "<think>a</think> Yes")]


@pytest.mark.parametrize("line, field", [
    ("[1, 2]", "<line>"),
    (_log_line("slake_3", "CT"), "slake_accuracy.id"),
    (_log_line("11934", "CT").replace('s": "CT"', 's": ["CT"]'), "filtered_resps"),  # a list, not text
])
def test_read_log_samples_malformed(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text(_log_line("1", "CT") + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(UserError) as error:
        read_log_samples(path)
    message = str(error.value)
    assert "\n" not in message and f"{path}: line 2: field '{field}'" in message


def test_read_log_samples_not_json(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text(_log_line("1", "CT") + "\n{not json\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"samples.jsonl: line 2: not JSON"):
        read_log_samples(path)


def test_every_real_answer_matches_itself(slake_root: Path) -> None:
    rows = json.loads((slake_root / "test.json").read_text(encoding="utf-8"))
    english = [row for row in rows if row["q_lang"] == "en"]
    assert len(english) == 1061
    for row in english:
        for prediction in (row["answer"], row["answer"].upper() + ".", f"<think>?</think> {row['answer']}"):
            assert score(prediction, row["answer"], row["answer_type"]) == 1.0, row["qid"]
