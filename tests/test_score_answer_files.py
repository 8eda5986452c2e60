"""`slakevqa score` on other tools' answer files: format detection, the join with SLAKE's gold, peers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_mini_slake
from slakevqa.cli import main

# mini SLAKE test split (conftest.default_splits): qid 21 (CLOSED, "Yes") and 20 (OPEN, "Liver") in
# English, 22 (CLOSED) in Chinese.


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def llava_med_answers(path: Path, answers: dict[int, str]) -> Path:
    """LLaVA-Med's model_vqa*.py answer lines."""
    return write_jsonl(path, [{"question_id": qid, "prompt": "Q?\n<image>", "text": text, "answer_id": "x",
                               "model_id": "llava-med", "metadata": {}} for qid, text in answers.items()])


def lmms_eval_samples(path: Path, answers: dict[int, str]) -> Path:
    """lmms-eval's --log_samples lines for slake_en (the qid logged as a string under each metric)."""
    keys = ("slake_accuracy", "slake_open_accuracy", "slake_closed_accuracy")
    return write_jsonl(path, [{"doc_id": i, "target": "?", "filtered_resps": text,
                               **{k: {"id": str(qid), "prediction": text, "is_correct": False} for k in keys}}
                              for i, (qid, text) in enumerate(answers.items())])


def reference_preds(path: Path, answers: dict[int, tuple[str, str]]) -> Path:
    """The reference toolkit's preds.jsonl: OPEN rows carry the generation, CLOSED rows the chosen label."""
    rows = []
    for qid, (answer_type, text) in answers.items():
        common = {"qid": qid, "answer_type": answer_type, "gen_settings_hash": "h", "invalid_image": False}
        rows.append({**common, "raw_generation": text, "extracted_pred": text, "normalized_pred": text.lower()}
                    if answer_type == "OPEN" else {**common, "route": "yesno", "normalized_pred": text.lower()})
    return write_jsonl(path, rows)


@pytest.fixture
def slake(tmp_path: Path) -> Path:
    return write_mini_slake(tmp_path / "Slake1.0")


@pytest.mark.parametrize("writer,answers", [
    (llava_med_answers, {20: "The liver", 21: "Yes", 22: "是"}),
    (lmms_eval_samples, {20: "The liver", 21: "Yes", 22: "是"}),
    (reference_preds, {20: ("OPEN", "The liver"), 21: ("CLOSED", "yes"), 22: ("CLOSED", "是")}),
], ids=["llava_med", "lmms_eval", "reference"])
def test_foreign_files_are_detected_joined_and_scored_by_every_peer(writer, answers, slake, tmp_path, capsys):
    path = writer(tmp_path / "answers.jsonl", answers)
    out = tmp_path / "scored"
    assert main(["score", str(path), "--slake_root", str(slake), "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    fmt = {"llava_med_answers": "llava_med", "lmms_eval_samples": "lmms_eval", "reference_preds": "reference"}
    assert f"3 answers in {path} ({fmt[writer.__name__]} format); 2 scored" in printed  # detected
    assert "1 answers to questions of another language not scored" in printed  # qid 22 is Chinese
    results = json.loads((out / "results.json").read_text())
    assert results["counts"]["total"] == 2 and results["provenance"]["answer_file"]["other_language"] == 1
    assert results["peers"]["lmms_eval"]["slake_closed_accuracy"] == 1.0  # "Yes" / "yes" against "Yes"
    assert results["metrics"]["exact"]["OPEN"]["value"] == 1.0  # "The liver" ~ "Liver" once articles go
    assert (out / "predictions.jsonl").is_file() and (out / "report.html").is_file()
    for peer in ("llava_med", "lmms_eval", "multimedeval", "reference"):
        assert peer in printed


def test_unanswered_questions_are_counted_not_hidden(slake, tmp_path, capsys) -> None:
    path = llava_med_answers(tmp_path / "answers.jsonl", {21: "Yes"})
    assert main(["score", str(path), "--slake_root", str(slake)]) == 0
    assert "1 questions of the split have no answer in the file and are not scored (qids 20)" in \
        capsys.readouterr().out
    results = json.loads((tmp_path / "answers.results.json").read_text())
    assert results["provenance"]["answer_file"]["unanswered_qids"] == [20]


@pytest.mark.parametrize("answers,message", [
    ({21: "Yes", 999: "No"}, "1 answers name question ids that are not in the split (e.g. [999])"),
], ids=["unknown-qid"])
def test_answers_that_cannot_be_joined_stop_with_one_line(answers, message, slake, tmp_path, capsys) -> None:
    path = llava_med_answers(tmp_path / "answers.jsonl", answers)
    assert main(["score", str(path), "--slake_root", str(slake)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_question_answered_twice_stops(slake, tmp_path, capsys) -> None:
    path = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": 21, "text": "Yes"},
                                                    {"question_id": 21, "text": "No"}])
    assert main(["score", str(path), "--slake_root", str(slake)]) == 2
    assert "answered more than once (e.g. [21])" in capsys.readouterr().err


def test_an_unknown_format_asks_for_format(tmp_path, capsys) -> None:
    path = write_jsonl(tmp_path / "odd.jsonl", [{"id": 1, "answer": "x"}])
    assert main(["score", str(path)]) == 2
    assert "pass --format" in capsys.readouterr().err
