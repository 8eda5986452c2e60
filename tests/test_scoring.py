"""Scorer registry, score_one, our normaliser, and that scoring never pulls in torch."""

from __future__ import annotations

import doctest
import subprocess
import sys

import pytest

import slakevqa.reporting.tables
import slakevqa.scoring
import slakevqa.scoring.aggregate
import slakevqa.scoring.analysis
import slakevqa.scoring.llava_med
import slakevqa.scoring.normalize
from slakevqa.errors import UserError
from slakevqa.records import Prediction
from slakevqa.scoring import DEFAULT_SCORERS, SCORERS, score_one, scored_text, scorer_versions
from slakevqa.scoring.normalize import normalize_answer


def test_registry_names_and_versions() -> None:
    assert list(DEFAULT_SCORERS) == ["llava_med", "exact", "token_f1", "choice"]
    assert scorer_versions(DEFAULT_SCORERS) == {"llava_med": "llava_med-v1.0.0/1", "exact": "normalize/1",
                                                "token_f1": "normalize/1", "choice": "normalize/1"}
    peers = {"lmms_eval", "multimedeval_recall", "multimedeval_f1", "multimedeval_bleu1",
             "multimedeval_closed_accuracy", "multimedeval_open_accuracy", "reference_exact", "reference_token_f1",
             "reference_closed_accuracy", "llava_med_f1", "llava_med_precision", "llava_med_open_hit"}
    assert set(SCORERS) == set(DEFAULT_SCORERS) | peers
    assert all("-" in SCORERS[name].version and "/" in SCORERS[name].version for name in peers)  # commit/rev


def test_peer_scorers_say_none_outside_their_group() -> None:
    # MultiMedEval's groups follow the gold (yes/no or not), not SLAKE's answer_type.
    assert score_one("multimedeval_closed_accuracy", "Left", "Left", "CLOSED") is None
    assert score_one("multimedeval_open_accuracy", "Left", "Left", "CLOSED") == 1.0
    assert score_one("multimedeval_open_accuracy", "yes", "Yes", "CLOSED") is None


def test_unknown_scorer_suggests_close_names() -> None:
    with pytest.raises(UserError, match="Did you mean: llava_med"):
        score_one("llava-med", "yes", "Yes", "CLOSED")


@pytest.mark.parametrize("scorer, prediction, answer, answer_type, expected", [
    ("llava_med", "nodule", "No", "CLOSED", 1.0),
    ("exact", "nodule", "No", "CLOSED", 0.0),
    ("llava_med", "lung lung lung", "Left Lung", "OPEN", 0.75),
    ("exact", "The left lung.", "Left Lung", "OPEN", 1.0),
    ("token_f1", "left lung", "Lower Left Lung", "OPEN", 0.8),
    ("token_f1", "spleen", "Liver", "OPEN", 0.0),
    ("choice", "true", "Yes", "CLOSED", 1.0),
    ("choice", "T1", "T2", "CLOSED", 0.0),
])
def test_score_one(scorer: str, prediction: str, answer: str, answer_type: str, expected: float) -> None:
    assert score_one(scorer, prediction, answer, answer_type) == pytest.approx(expected)


def test_score_one_rejects_uncovered_answer_types() -> None:
    with pytest.raises(ValueError, match="does not score OPEN"):
        score_one("choice", "liver", "Liver", "OPEN")
    with pytest.raises(ValueError, match="answer_type"):
        score_one("exact", "liver", "Liver", "closed")


@pytest.mark.parametrize("text, expected", [
    ("Yes.", "yes"), ("TRUE", "yes"), ("y", "yes"), ("correct", "yes"),
    ("No!", "no"), ("false", "no"), ("incorrect", "no"),
    ("no lesion", "no lesion"),                     # synonyms only for the whole answer
    ("X-Ray", "xray"), ("x ray", "xray"), ("Xray", "xray"), ("chest x\u2010ray", "chest xray"),
    ("Two", "2"), ("twenty nodules", "20 nodules"), ("None", "none"),  # "none" is not 0 here
    ("The Left Lung, Right", "left lung right"), ("Transverse  Plane", "transverse plane"),
    ("Grey", "gray"), ("U-shaped", "u shaped"), ("body's", "body s"),
    ("腹部", "腹部"), ("", ""),
])
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("prediction, answer, expected", [
    ("", "", 1.0), ("", "liver", 0.0), ("liver", "", 0.0),
    ("left lung left", "left lung", 0.8),           # P = 2/3, R = 1
    ("lung", "Left Lung, Right", 0.5),              # P = 1, R = 1/3
])
def test_token_f1_edges(prediction: str, answer: str, expected: float) -> None:
    assert score_one("token_f1", prediction, answer, "OPEN") == pytest.approx(expected)


def test_scored_text_picks_the_field_each_scorer_reads() -> None:
    row = Prediction(qid=1, question="Is it?", answer="No", answer_type="CLOSED", prediction="yes",
                     raw_output="Answer: no", candidates=("yes", "no"), scores=(-2.0, -0.5))
    assert scored_text("exact", row) == "yes"
    assert scored_text("llava_med", row, "raw_output") == "Answer: no"
    assert scored_text("choice", row) == "no"     # the best-scored candidate, not the prediction
    generated = Prediction(qid=2, question="Is it?", answer="No", answer_type="CLOSED", prediction="no")
    assert scored_text("choice", generated) == "no"
    with pytest.raises(ValueError, match="text_field"):
        scored_text("exact", row, "answer")


@pytest.mark.parametrize("module", [
    slakevqa.scoring, slakevqa.scoring.llava_med, slakevqa.scoring.normalize,
    slakevqa.scoring.aggregate, slakevqa.scoring.analysis, slakevqa.reporting.tables,
])
def test_docstring_examples_hold(module: object) -> None:
    failed, attempted = doctest.testmod(module, verbose=False)
    assert attempted > 0 and failed == 0


def test_scoring_and_reports_do_not_import_torch() -> None:
    modules = ["slakevqa.scoring", "slakevqa.scoring.aggregate", "slakevqa.scoring.paired",
               "slakevqa.runs.results", "slakevqa.reporting.report", "slakevqa.commands.score",
               "slakevqa.commands.compare", "slakevqa.commands.report"]
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False False"
