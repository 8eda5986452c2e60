"""The reference toolkit's metrics (DKAI9/Llava-Med @ efe35e1), rule by rule, on hand-worked cases.

Each expected value was worked out by reading ``utils/text_norm.py`` and ``eval_llava_med.py``
at that commit, and the module was checked equal to that code, run in a scratch folder, on
82,758 per-question cases built from the SLAKE test split and four full runs of their
``run_evaluation`` with a stand-in model (identical ``metrics.json`` headline floats).
"""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

from conftest import write_mini_slake
from slakevqa.cli import main
from slakevqa.errors import UserError
from slakevqa.scoring.peers import reference
from slakevqa.scoring.peers.reference import (
    HEADLINE_KEYS,
    closed_accuracy,
    exact,
    extract_open,
    headline,
    normalize,
    read_preds,
    token_f1,
)


def test_version_pins_the_commit() -> None:
    assert reference.VERSION == "reference-efe35e1/1"


@pytest.mark.parametrize("text, expected", [
    # Whitespace collapses first, end marks go second: the space before "." survives.
    ("Liver .", "liver "),
    ("( liver )", " liver "),
    # Only the whole answer maps to yes/no, and only after the end marks are gone.
    ("TRUE", "yes"), ("N.", "no"), ("yes .", "yes "), ("Yes, it is", "yes, it is"),
    # Articles and number words stay; inner marks stay.
    ("The Liver", "the liver"), ("two", "two"), ("left-lung, right", "left-lung, right"),
    # Unicode: str.lower and str.split, nothing more (the no-break space is whitespace).
    ("Liver\u00a0", "liver"), ("Café!", "café"),
    ("", ""),
])
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize("raw, expected", [
    # First non-empty line, stripped.
    ("\n\n  Liver\nHeart", "Liver"),
    # The first "answer:" anywhere (any case) cuts everything before it.
    ("The final answer: lung", "lung"),
    # Two extraction passes plus a prefix strip: three markers go, a fourth stays.
    ("Answer: answer: answer: liver", "liver"),
    ("Answer: answer: answer: answer: liver", "answer: liver"),
    # A marker with nothing after it on its line: the next non-empty line.
    ("Answer:\n\nLiver", "Liver"),
    ("   ", ""),
])
def test_extract_open(raw: str, expected: str) -> None:
    assert extract_open(raw) == expected


@pytest.mark.parametrize("prediction, answer, answer_type, expected", [
    ("Answer: Liver.", "liver", "OPEN", 1.0),    # prefix and end mark both removed
    ("Liver .", "liver", "OPEN", 0.0),           # trailing-space bug
    ("liver ", "liver", "OPEN", 1.0),            # plain trailing whitespace is stripped first
    ("the liver", "Liver", "OPEN", 0.0),         # articles are kept
    ("2", "two", "OPEN", 0.0),                   # number words are not mapped
    ("Lung, Liver", "liver, lung", "OPEN", 0.0),  # order matters for exact match
    ("No", "nodule", "CLOSED", 0.0),             # no substring hits (unlike llava_med)
    ("y", "Yes", "CLOSED", 1.0),                 # y/true -> yes
    ("yes .", "yes", "CLOSED", 0.0),             # trailing-space bug defeats yes/no mapping
    ("", "", "OPEN", 1.0),                       # two empty strings are equal
    # CLOSED reads the label as given: no first-line extraction, no "answer:" strip.
    ("Answer: yes", "yes", "CLOSED", 0.0),
])
def test_exact(prediction: str, answer: str, answer_type: str, expected: float) -> None:
    assert exact(prediction, answer, answer_type) == expected


@pytest.mark.parametrize("prediction, answer, expected", [
    ("Left Lung.", "left lung", 1.0),            # normalised both sides
    ("lung, liver", "liver lung", 0.5),          # whitespace tokens: "lung," is not "lung"
    ("heart liver", "Liver, Heart", 0.5),        # the gold keeps its comma too
    ("lung lung lung", "left lung", 0.4),        # multiset overlap 1: P 1/3, R 1/2
    ("the liver", "liver", 2 / 3),               # the article costs precision
    ("", "liver", 0.0),                          # empty prediction
    ("", "", 0.0),                               # both empty: still 0.0
    ("Answer: liver\nheart", "liver", 1.0),      # extraction before scoring
    ("liver " * 200, "liver", 2 * (1 / 200) / (1 / 200 + 1)),  # long outputs lose precision
])
def test_token_f1(prediction: str, answer: str, expected: float) -> None:
    assert token_f1(prediction, answer, "OPEN") == pytest.approx(expected)


def test_defined_on() -> None:
    # token_f1 is an OPEN metric, closed_accuracy a CLOSED one; exact covers both.
    assert token_f1("yes", "yes", "CLOSED") is None
    assert closed_accuracy("liver", "liver", "OPEN") is None
    assert closed_accuracy("Yes", "yes", "CLOSED") == 1.0
    assert exact("yes", "yes", "CLOSED") == exact("yes", "yes", "OPEN") == 1.0
    with pytest.raises(ValueError):
        exact("yes", "yes", "MIXED")


def test_headline_on_a_small_run() -> None:
    rows = [("Answer: Liver", "Liver", "OPEN"),      # f1 1, exact 1
            ("left lung", "Left Lung, Right", "OPEN"),  # f1: overlap 1 ("left"), P 1/2 R 1/3
            ("Yes", "Yes", "CLOSED"),                 # hit
            ("No", "Yes", "CLOSED"),                  # miss
            ("Liver", "Liver", "CLOSED")]             # hit
    result = headline(rows)
    assert tuple(result) == HEADLINE_KEYS
    open_f1 = (1.0 + 2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3)) / 2
    assert result["open/token_f1"] == pytest.approx(open_f1)
    assert result["open/exact_match"] == 0.5
    assert result["closed/accuracy"] == pytest.approx(2 / 3)
    # Half and half, whatever the group sizes.
    assert result["overall/score"] == pytest.approx(0.5 * (2 / 3) + 0.5 * open_f1)


def test_headline_empty_groups_are_zero() -> None:
    assert headline([("yes", "yes", "CLOSED")]) == {
        "open/token_f1": 0.0, "open/exact_match": 0.0, "closed/accuracy": 1.0, "overall/score": 0.5}
    assert headline([]) == dict.fromkeys(HEADLINE_KEYS, 0.0)


def _write(path: Path, rows: list[dict | str]) -> Path:
    lines = (row if isinstance(row, str) else json.dumps(row) for row in rows)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


_OPEN_ROW = {"qid": 11, "raw_generation": "Answer: answer: answer: answer: Lung",
             "extracted_pred": "answer: Lung", "normalized_pred": "answer: lung",
             "answer_type": "OPEN", "gen_settings_hash": "abc", "invalid_image": False}
_CLOSED_ROW = {"qid": 12, "route": "yesno", "chosen_variant": " yes.", "best_score": -0.2,
               "second_score": -1.7, "margin": 1.5, "normalized_pred": "yes",
               "answer_type": "CLOSED", "gen_settings_hash": "abc", "invalid_image": False}
_INVALID_ROW = {"qid": 13, "raw_generation": "", "extracted_pred": "", "normalized_pred": "",
                "answer_type": "OPEN", "gen_settings_hash": "abc", "invalid_image": True}


def test_read_preds(tmp_path: Path) -> None:
    path = _write(tmp_path / "preds.jsonl", [_OPEN_ROW, _CLOSED_ROW, _INVALID_ROW, ""])
    pairs = read_preds(path)
    # OPEN: the raw generation (re-extracting it reproduces extracted_pred); CLOSED: the label;
    # the invalid-image row is skipped, as their metrics skip it.
    assert pairs == [(11, "Answer: answer: answer: answer: Lung"), (12, "yes")]
    assert extract_open(pairs[0][1]) == _OPEN_ROW["extracted_pred"]
    assert exact(pairs[0][1], "Lung", "OPEN") == 0.0  # as their normalized_pred "answer: lung"


@pytest.mark.parametrize("bad_line, field", [
    (json.dumps({**_CLOSED_ROW, "qid": "12"}), "field 'qid'"),
    (json.dumps({k: v for k, v in _OPEN_ROW.items() if k != "raw_generation"}),
     "field 'raw_generation'"),
    (json.dumps({**_CLOSED_ROW, "answer_type": "BOTH"}), "field 'answer_type'"),
    ('{"qid": 14, ', "not JSON"),
    ("[1, 2]", "not a JSON object"),
])
def test_read_preds_rejects_malformed_lines(tmp_path: Path, bad_line: str, field: str) -> None:
    path = _write(tmp_path / "preds.jsonl", [_OPEN_ROW, bad_line])
    with pytest.raises(UserError) as error:
        read_preds(path)
    message = str(error.value)
    located = f"{path}:2:" in message or f"{path}: line 2:" in message
    assert located and field in message and "\n" not in message


def test_docstring_examples() -> None:
    assert doctest.testmod(reference).failed == 0


@pytest.mark.parametrize("fmt, rows", [
    ("reference", [{**_OPEN_ROW, "qid": 20, "raw_generation": "Liver"}, {**_CLOSED_ROW, "qid": 21}]),
    ("llava_med", [{"question_id": 20, "text": "Liver"}, {"question_id": 21, "text": "Yes"}]),
    ("lmms_eval", [{"doc_id": i, "filtered_resps": text,
                    "slake_accuracy": {"id": str(qid), "prediction": text, "is_correct": False}}
                   for i, (qid, text) in enumerate([(20, "Liver"), (21, "Yes")])]),
])
def test_scoring_preds_jsonl_says_its_closed_rows_are_normalised(fmt: str, rows: list, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """Their CLOSED rows carry normalize(label) only, so every other pipeline's CLOSED number from them is an
    approximation: said in the printed join summary, results.json and the report, for this format only."""
    slake = write_mini_slake(tmp_path / "Slake1.0")  # test split: qid 20 OPEN "Liver", 21 CLOSED "Yes"
    path = _write(tmp_path / "answers.jsonl", rows)
    assert main(["score", str(path), "--slake_root", str(slake), "--output_dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    said = [(tmp_path / "out" / name).read_text(encoding="utf-8") for name in ("results.json", "report.md")]
    assert f"({fmt} format); 2 scored" in printed
    for text in (printed, *said):
        assert (reference.CLOSED_TEXT_CAVEAT in text) is (fmt == "reference")
    if fmt == "reference":
        results = json.loads(said[0])
        assert results["provenance"]["answer_file"]["caveat"] == reference.CLOSED_TEXT_CAVEAT
        assert f"note: {reference.CLOSED_TEXT_CAVEAT}" in printed.splitlines()
