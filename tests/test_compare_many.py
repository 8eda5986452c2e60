"""`slakevqa compare` on more than two runs: one table, each later run against the first."""

from __future__ import annotations

import contextlib
import doctest
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

import slakevqa.commands.compare
import slakevqa.reporting.compare_report
from scoring_fixtures import synthetic_rows
from slakevqa.cli import main
from slakevqa.errors import DataError
from slakevqa.records import Prediction
from slakevqa.reporting.compare_report import run_labels
from slakevqa.reporting.tables import comparison_table
from slakevqa.runs.results import build_results, write_predictions
from slakevqa.scoring.aggregate import score_rows
from slakevqa.scoring.paired import align_many, compare, compare_many
from slakevqa.scoring.peers import peer_headlines

RESAMPLES = 200
RUNS = (("a/eval", 0.5, 1), ("b/eval", 0.9, 2), ("c", 0.7, 3))  # folder, accuracy, model seed


def run_rows(accuracy: float, model_seed: int, n: int = 120) -> list[Prediction]:
    return synthetic_rows(n, seed=0, accuracy=accuracy, model_seed=model_seed)


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three runs of the same questions: a records nothing, b a run fingerprint, c a results.json."""
    root = tmp_path_factory.mktemp("runs")
    for folder, accuracy, model_seed in RUNS:
        write_predictions(root / folder / "predictions.jsonl", run_rows(accuracy, model_seed))
    fingerprint = {"format": "slakevqa.run_fingerprint", "version": 1, "kind": "eval",
                   "values": {"model": "microsoft/llava-med-v1.5-mistral-7b", "model_weights": None}}
    (root / "b/eval/run_fingerprint.json").write_text(json.dumps(fingerprint))
    results = build_results(run_rows(0.7, 3), {"model": "hf model from /m/qwen (bfloat16 on cuda, sdpa)",
                                              "model_family": "qwen2_5_vl",
                                              "config": {"model_id_or_ckpt": "Qwen/Qwen2.5-VL-7B-Instruct"}},
                            resamples=10)
    (root / "c/results.json").write_text(json.dumps(results))
    return root


@pytest.fixture(scope="module")
def compared(three_runs: Path) -> tuple[dict, str, str]:
    """``(--out JSON, printed text, --report text)`` of comparing the three runs."""
    out, report = three_runs / "compare.json", three_runs / "compare.md"
    stream = io.StringIO()  # capsys is function-scoped: this module-scoped run captures its own output
    with contextlib.redirect_stdout(stream):
        code = main(["compare", *(str(three_runs / folder) for folder, _, _ in RUNS), "--out", str(out),
                     "--report", str(report), "--resamples", str(RESAMPLES), "--all_slices"])
    assert code == 0
    return json.loads(out.read_text()), stream.getvalue(), report.read_text()


def test_each_run_has_its_own_cells_equal_to_its_results_json(compared: tuple[dict, str, str]) -> None:
    comparison, _, _ = compared
    assert [run["label"] for run in comparison["runs"]] == ["a/eval", "b/eval", "c"]
    assert comparison["baseline"] == "a/eval" and comparison["n"] == 120
    for run, (_, accuracy, model_seed) in zip(comparison["runs"], RUNS):
        expected = build_results(run_rows(accuracy, model_seed), {}, resamples=RESAMPLES)
        assert run["metrics"] == expected["metrics"] and run["slices"] == expected["slices"]
        assert run["peers"] == expected["peers"]


def test_each_later_run_is_paired_with_the_first_as_two_runs_would_be(compared: tuple[dict, str, str]) -> None:
    comparison, _, _ = compared
    rows = [run_rows(accuracy, model_seed) for _, accuracy, model_seed in RUNS]
    first = score_rows(rows[0], ["llava_med", "exact", "token_f1", "choice"])
    assert [pair["run"] for pair in comparison["comparisons"]] == ["b/eval", "c"]
    for pair, later in zip(comparison["comparisons"], rows[1:]):
        two = compare(first, score_rows(later, list(first)), rows[0], resamples=RESAMPLES)
        assert pair["baseline"] == "a/eval"
        assert pair["metrics"] == two["metrics"] and pair["slices"] == two["slices"]
        peers_first, peers_later = peer_headlines(rows[0]), peer_headlines(later)
        assert pair["peers"]["lmms_eval"]["slake_accuracy"] == pytest.approx(
            peers_later["lmms_eval"]["slake_accuracy"] - peers_first["lmms_eval"]["slake_accuracy"])
    better = comparison["comparisons"][0]["metrics"]["exact"]["overall"]
    assert better["delta"] > 0.2 and better["p_value"] < 0.05
    assert not {"a", "b", "metrics", "slices", "peers"} & set(comparison)  # the two-run keys: two runs only


def test_runs_show_the_model_family_and_model_their_files_record(compared: tuple[dict, str, str]) -> None:
    comparison, printed, _ = compared
    a, b, c = comparison["runs"]
    assert (a["model_family"], a["model_id"], a["results_file"]) == (None, None, None)
    assert (b["model_family"], b["model_id"]) == (None, "microsoft/llava-med-v1.5-mistral-7b")
    assert (c["model_family"], c["model_id"]) == ("qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct")
    assert c["model"] == "hf model from /m/qwen (bfloat16 on cuda, sdpa)" and c["results_file"].endswith("results.json")
    assert "| a/eval | - | - | `" in printed
    assert "| c | qwen2_5_vl | Qwen/Qwen2.5-VL-7B-Instruct | `" in printed


def test_one_printed_table_holds_scorers_peers_and_slices(compared: tuple[dict, str, str]) -> None:
    comparison, printed, _ = compared
    header = "| scorer | cell | n | a/eval | b/eval | c | b/eval - a/eval [95% CI] | p | c - a/eval [95% CI] | p |"
    lines = printed.splitlines()
    start = lines.index(header)
    table = lines[start:lines.index("", start)]  # one table, up to the first blank line
    assert all(line.count(" | ") == 9 for line in table)
    cell = comparison["runs"][1]["metrics"]["exact"]["overall"]
    pair = comparison["comparisons"][0]["metrics"]["exact"]["overall"]
    row = next(line for line in table if line.startswith("| exact | overall | 120 |")).split(" | ")
    assert row[4] == f"{100 * cell['value']:.2f} [{100 * cell['ci_low']:.2f}, {100 * cell['ci_high']:.2f}]"
    assert row[6] == f"{100 * pair['delta']:+.2f} [{100 * pair['ci_low']:+.2f}, {100 * pair['ci_high']:+.2f}]"
    assert row[7] == f"{pair['p_value']:.3f} *"
    peer = comparison["runs"][1]["peer_cells"]["lmms_eval"]["slake_accuracy"]
    test = comparison["comparisons"][0]["peer_tests"]["lmms_eval"]["slake_accuracy"]
    row = next(line for line in table if line.startswith("| peer: lmms_eval | slake_accuracy | 120 |")).split(" | ")
    assert peer["value"] == comparison["runs"][1]["peers"]["lmms_eval"]["slake_accuracy"]  # the peer's own number
    assert row[4] == f"{100 * peer['value']:.2f} [{100 * peer['ci_low']:.2f}, {100 * peer['ci_high']:.2f}]"
    assert row[6] == f"{100 * test['delta']:+.2f} [{100 * test['ci_low']:+.2f}, {100 * test['ci_high']:+.2f}]"
    assert any(line.startswith("| exact | modality=CT / OPEN |") for line in table)


def test_markdown_report_has_the_runs_headline_and_slices(compared: tuple[dict, str, str]) -> None:
    _, _, report = compared
    assert report.startswith("# SLAKE run comparison\n")
    for heading in ("## Runs", "## Headline", "## Slices", "## Versions"):
        assert f"\n{heading}\n" in report
    assert "| exact | overall | 120 |" in report and "| exact | modality=CT / OPEN |" in report
    assert "| c | qwen2_5_vl | Qwen/Qwen2.5-VL-7B-Instruct |" in report


def test_two_runs_keep_the_keys_they_always_had(three_runs: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "compare.json"
    assert main(["compare", str(three_runs / "a/eval"), str(three_runs / "c"), "--out", str(out),
                 "--resamples", str(RESAMPLES), "--slices", "modality"]) == 0
    comparison = json.loads(out.read_text())
    assert comparison["a"] == str(three_runs / "a/eval/predictions.jsonl")
    assert comparison["b"] == str(three_runs / "c/predictions.jsonl")
    assert comparison["metrics"] == comparison["comparisons"][0]["metrics"]
    assert comparison["slices"] == comparison["comparisons"][0]["slices"]
    assert comparison["peers"] == {"a": comparison["runs"][0]["peers"], "b": comparison["runs"][1]["peers"]}
    assert {"n", "scorer_versions", "text_field", "bootstrap"} <= set(comparison)
    assert comparison["bootstrap"]["method"] == "paired percentile"
    assert "| scorer | cell | n | eval | c | c - eval [95% CI] | p |" in capsys.readouterr().out


def test_a_run_with_other_questions_is_refused_by_name(three_runs: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    rows = run_rows(0.7, 4)
    shifted = rows[3:] + [Prediction(**{**row.to_json(), "qid": 1000 + i}) for i, row in enumerate(rows[:2])]
    write_predictions(tmp_path / "d" / "predictions.jsonl", shifted)
    runs = [str(three_runs / "a/eval"), str(three_runs / "b/eval"), str(tmp_path / "d")]
    assert main(["compare", *runs, "--resamples", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(tmp_path / "d" / "predictions.jsonl") in err
    assert "3 of" in err and "qids missing (first [0, 1, 2])" in err and "2 extra (first [1000, 1001])" in err


def test_a_run_with_other_gold_is_refused(three_runs: Path, tmp_path: Path) -> None:
    runs = [run_rows(0.5, 1), run_rows(0.5, 1), synthetic_rows(120, seed=9)]
    with pytest.raises(DataError, match="run3: qid .*: field 'answer': gold differs from run1"):
        align_many(runs, ["run1", "run2", "run3"])


def test_runs_need_two_and_outputs_may_not_overwrite_them(three_runs: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["compare", str(three_runs / "a/eval")])
    predictions = three_runs / "a/eval/predictions.jsonl"
    before = predictions.read_bytes()
    assert main(["compare", str(three_runs / "a/eval"), str(three_runs / "c"), "--out", str(predictions)]) == 2
    assert "--out" in capsys.readouterr().err and predictions.read_bytes() == before


def _row(qid: int, modality: str = "CT") -> Prediction:
    return Prediction(qid=qid, question="q", answer="Yes", answer_type="CLOSED", prediction="yes", modality=modality)


def test_pairs_cover_the_questions_both_runs_score_and_say_their_count() -> None:
    rows = [_row(i) for i in range(40)]
    first = {"s": np.array([1.0, 0.0] * 20)}
    later = {"s": np.array([1.0] * 30 + [np.nan] * 10)}  # the later run has no score for 10 questions
    tables = compare_many([first, later], rows, [], resamples=50)
    pair = tables["pairs"][0]["metrics"]["s"]["overall"]
    assert pair["n"] == 30 and pair["a"] == pytest.approx(0.5) and pair["delta"] == pytest.approx(0.5)
    assert tables["runs"][1]["metrics"]["s"]["overall"]["n"] == 30
    comparison = {"runs": [{"label": "x", **tables["runs"][0], "peers": {}},
                           {"label": "y", **tables["runs"][1], "peers": {}}],
                  "comparisons": [{**tables["pairs"][0], "peers": {}}]}
    row = comparison_table(comparison).splitlines()[-1]
    assert row.startswith("| s | overall | 40 | 50.00 [") and "] n=30 | +50.00 [" in row


def test_labels_are_folder_names_told_apart() -> None:
    paths = [Path("/r/lora/eval/predictions.jsonl"), Path("/r/full/eval/predictions.jsonl"),
             Path("/x/lora/eval/predictions.jsonl"), Path("/r/qwen/predictions.jsonl")]
    assert run_labels(paths) == ["r/lora/eval", "full/eval", "x/lora/eval", "qwen"]
    assert run_labels([Path("/r/qwen/predictions.jsonl")] * 3) == ["qwen", "qwen#2", "qwen#3"]


def test_report_escapes_names_from_paths_and_files(tmp_path: Path) -> None:
    rows = run_rows(0.5, 1, n=30)
    for folder in ("base", "x|y <b>"):
        write_predictions(tmp_path / folder / "predictions.jsonl", rows)
    evil = {"model_family": "[x](javascript:alert(1))", "config": {"model_id_or_ckpt": "a\n# owned | <script>"}}
    (tmp_path / "x|y <b>" / "results.json").write_text(json.dumps(build_results(rows, evil, resamples=5)))
    report = tmp_path / "compare.md"
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "x|y <b>"), "--report", str(report),
                 "--resamples", "20", "--slices"]) == 0
    text = report.read_text()
    assert "`" + str(tmp_path / "x\\|y <b>" / "predictions.jsonl") + "`" in text  # a code span shows it verbatim
    outside_code = re.sub(r"`[^`]*`", "", text)
    assert "<script" not in outside_code and "<b>" not in outside_code
    assert "| \\[x\\](javascript:alert(1)) |" in text and "| [x](" not in text  # escaped: no link
    assert "\n# owned" not in text and "\\# owned \\| &lt;script&gt;" in text
    runs = text.split("## Runs\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(runs) == 4 and all(line.replace("\\|", "").count("|") == 5 for line in runs)


@pytest.mark.parametrize("module", [slakevqa.commands.compare, slakevqa.reporting.compare_report])
def test_docstring_examples_hold(module: object) -> None:
    failed, attempted = doctest.testmod(module, verbose=False)
    assert attempted > 0 and failed == 0


def test_an_unreadable_results_json_only_costs_its_run_the_model(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                  capsys: pytest.CaptureFixture) -> None:
    rows = run_rows(0.5, 1, n=30)
    for folder in ("a", "b"):
        write_predictions(tmp_path / folder / "predictions.jsonl", rows)
    (tmp_path / "b" / "results.json").write_text("{")
    (tmp_path / "b" / "run_fingerprint.json").write_text(json.dumps(
        {"format": "slakevqa.run_fingerprint", "values": {"model": "runs/lora", "model_family": "llava_med"}}))
    out = tmp_path / "compare.json"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--resamples", "20"]) == 0
    assert "cannot read results" in caplog.text
    b = json.loads(out.read_text())["runs"][1]
    assert (b["model_family"], b["model_id"], b["results_file"]) == ("llava_med", "runs/lora", None)
    assert "| b | llava_med | runs/lora | `" in capsys.readouterr().out
