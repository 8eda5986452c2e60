"""Prediction lines, results.json, and the `score` / `compare` verbs on files alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scoring_fixtures import synthetic_rows
from slakevqa.cli import main
from slakevqa.errors import DataError, UserError
from slakevqa.records import Prediction, VQASample
from slakevqa.runs.results import (
    build_results,
    make_provenance,
    read_predictions,
    read_results,
    write_predictions,
    write_results,
)
from slakevqa.scoring import DEFAULT_SCORERS


def test_prediction_round_trips_through_json() -> None:
    sample = VQASample(qid=7, img_id=1, img_name="xmlab1/source.jpg", question="Is it CT?",
                       answer="Yes", q_lang="en", location="Abdomen", modality="CT",
                       answer_type="CLOSED", base_type="vqa", content_type="Modality",
                       triple=("vhead", "_", "_"), image_path=Path("/d/imgs/xmlab1/source.jpg"), split="test")
    row = Prediction.from_sample(sample, "yes", route="yesno", candidates=("yes", "no"),
                                 scores=(-0.1, -2.5), margin=2.4, prompt="[INST] <image>\nIs it CT? [/INST]")
    line = json.loads(json.dumps(row.to_json()))
    assert line["answer"] == "Yes" and line["image_path"] == "/d/imgs/xmlab1/source.jpg"
    assert line["candidates"] == ["yes", "no"] and line["modality"] == "CT"
    assert Prediction.from_json(line) == row
    assert row.chosen == "yes"


@pytest.mark.parametrize("change, message", [
    ({"qid": "7"}, "line 3: field 'qid': bad value '7': expected an integer"),
    ({"answer_type": "YESNO"}, "line 3: field 'answer_type': must be one of"),
    ({"scores": [0.1]}, "line 3: field 'scores': needs one score per candidate"),
    ({"candidates": "yes"}, "line 3: field 'candidates': bad value 'yes': expected a list"),
])
def test_bad_prediction_fields_are_named(change: dict, message: str) -> None:
    line = {"qid": 7, "question": "q", "answer": "Yes", "answer_type": "CLOSED", "prediction": "yes",
            "candidates": ["yes", "no"], "scores": [-0.1, -2.0]}
    with pytest.raises(DataError, match=message):
        Prediction.from_json({**line, **change}, "p.jsonl", "line 3")


def test_missing_field_and_derived_int_answers() -> None:
    with pytest.raises(DataError, match="field 'prediction': required field is missing"):
        Prediction.from_json({"qid": 1, "question": "q", "answer": "2", "answer_type": "OPEN"})
    row = Prediction.from_json({"qid": 1, "question": "q", "answer": 2, "answer_type": "OPEN",
                                "prediction": "two", "extra_key": 1})
    assert row.answer == "2"


def test_read_predictions_locates_bad_lines(tmp_path: Path) -> None:
    good = json.dumps(synthetic_rows(1)[0].to_json())
    path = tmp_path / "predictions.jsonl"
    path.write_text(good + "\n\n{not json\n")
    with pytest.raises(DataError, match=r"predictions.jsonl: line 3: not JSON"):
        read_predictions(path)
    path.write_text(good + "\n" + good + "\n")
    with pytest.raises(DataError, match="line 2: field 'qid': duplicate qid"):
        read_predictions(path)
    path.write_text("")
    with pytest.raises(DataError, match="no predictions"):
        read_predictions(path)
    with pytest.raises(UserError, match="no such predictions file"):
        read_predictions(tmp_path / "absent.jsonl")


def test_results_schema_and_provenance(tmp_path: Path) -> None:
    rows = synthetic_rows(120, seed=3)
    write_predictions(tmp_path / "predictions.jsonl", rows)
    split = tmp_path / "test.json"
    split.write_text("[]")
    provenance = make_provenance(config={"model": "tiny"}, prompt_version="slake/1", split_file=split,
                                 route_source="answer_type", batch_size=8, device="cpu")
    results = build_results(rows, provenance, predictions_file=tmp_path / "predictions.jsonl")
    n_open = sum(row.answer_type == "OPEN" for row in rows)
    counts = {"OPEN": n_open, "CLOSED": 120 - n_open, "overall": 120}
    for scorer in DEFAULT_SCORERS:
        # `choice` covers CLOSED questions only.
        expected = {**counts, "OPEN": 0, "overall": 120 - n_open} if scorer == "choice" else counts
        for group, n in expected.items():
            cell = results["metrics"][scorer][group]
            assert set(cell) == {"value", "ci_low", "ci_high", "n"} and cell["n"] == n
            if n:
                assert 0.0 <= cell["ci_low"] <= cell["value"] <= cell["ci_high"] <= 1.0
            else:
                assert cell["value"] is None
    prov = results["provenance"]
    assert prov["split_sha256"] == "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"
    assert (prov["route_source"], prov["batch_size"], prov["device"]) == ("answer_type", 8, "cpu")
    assert prov["scorer_versions"]["llava_med"] == "llava_med-v1.0.0/1" and prov["package_version"]
    assert prov["bootstrap"] == {"resamples": 1000, "seed": 0, "confidence": 0.95, "method": "percentile"}
    assert results["counts"] == {"total": 120, "OPEN": n_open, "CLOSED": 120 - n_open,
                                 "routes": {"open": n_open, "yesno": 120 - n_open}}
    assert {peer: list(numbers) for peer, numbers in results["peers"].items()} == {
        "llava_med": ["exact match score", "f1 score", "precision", "recall", "open accuracy", "yes/no accuracy",
                      "recall_closed"],
        "lmms_eval": ["slake_accuracy", "slake_open_accuracy", "slake_closed_accuracy"],
        "multimedeval": ["bleu", "F1", "recall", "closedQuestionsAccuracy", "openQuestionsRecall",
                         "openQuestionsAccuracy"],
        "reference": ["open/token_f1", "open/exact_match", "closed/accuracy", "overall/score"]}
    assert all(0.0 <= v <= 1.0 for numbers in results["peers"].values() for v in numbers.values())
    assert set(prov["peer_versions"]) == set(results["peers"])
    write_results(tmp_path / "results.json", results)
    assert read_results(tmp_path / "results.json") == results
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl", "results.json", "test.json"]


def test_score_verb_rescores_a_file_and_keeps_run_provenance(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    rows = synthetic_rows(80, seed=5)
    write_predictions(tmp_path / "predictions.jsonl", rows)
    assert main(["score", str(tmp_path / "predictions.jsonl"), "--resamples", "100"]) == 0
    first = read_results(tmp_path / "results.json")
    assert first["provenance"]["note"].startswith("rescored from predictions alone")
    assert "| llava_med |" in capsys.readouterr().out
    expected = build_results(rows, {}, resamples=100)["metrics"]
    assert first["metrics"] == expected
    first["provenance"]["device"] = "cuda:0"
    write_results(tmp_path / "results.json", first)
    assert main(["score", str(tmp_path / "predictions.jsonl"), "--scorers", "exact"]) == 0
    again = read_results(tmp_path / "results.json")
    assert again["provenance"]["device"] == "cuda:0" and list(again["metrics"]) == ["exact"]


def test_score_verb_reports_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_predictions(tmp_path / "predictions.jsonl", synthetic_rows(5))
    assert main(["score", str(tmp_path / "predictions.jsonl"), "--scorers", "exakt"]) == 2
    assert "Did you mean: exact" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "predictions.jsonl"), "--slices", "organ"]) == 2
    assert "unknown field(s) organ" in capsys.readouterr().err


def test_compare_verb_on_two_run_directories(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for name, accuracy, model_seed in (("a", 0.5, 1), ("b", 0.9, 2)):
        write_predictions(tmp_path / name / "predictions.jsonl",
                          synthetic_rows(150, seed=0, accuracy=accuracy, model_seed=model_seed))
    out = tmp_path / "compare.json"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out),
                 "--resamples", "200"]) == 0
    printed = capsys.readouterr().out
    comparison = json.loads(out.read_text())
    cell = comparison["metrics"]["exact"]["overall"]
    assert cell["n"] == 150 and cell["delta"] == pytest.approx(cell["b"] - cell["a"])
    assert cell["delta"] > 0.2 and cell["p_value"] < 0.05
    assert "| exact | overall | 150 |" in printed
    assert set(comparison["slices"]["exact"]) == {"answer_type", "content_type", "modality",
                                                  "location", "base_type", "q_lang"}
    write_predictions(tmp_path / "c" / "predictions.jsonl", synthetic_rows(150, seed=9))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "c")]) == 2
    assert "field 'answer'" in capsys.readouterr().err
