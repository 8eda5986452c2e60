"""Report figures' numbers, report.md / report.html from files alone, images embedded only from inside the
dataset folder, and a real browser render."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scoring_fixtures import synthetic_rows
from slakevqa.cli import main
from slakevqa.records import Prediction
from slakevqa.reporting.plots import histogram, interval_bars
from slakevqa.reporting.view import paper_comparability
from slakevqa.runs.results import build_results, sha256_file, write_predictions, write_results
from slakevqa.scoring import analysis


def _closed(qid: int, answer: str, prediction: str, scores: tuple = (), **extra: object) -> Prediction:
    candidates = ("Yes", "No") if scores else ()
    return Prediction(qid=qid, question="q", answer=answer, answer_type="CLOSED", prediction=prediction,
                      candidates=candidates, scores=scores, **extra)


def test_closed_confusion_counts() -> None:
    rows = [_closed(1, "Yes", "yes"), _closed(2, "Yes", "no"), _closed(3, "No", "No."),
            _closed(4, "Liver", "spleen"), _closed(5, "Yes", "true"),
            Prediction(qid=6, question="q", answer="Lung", answer_type="OPEN", prediction="lung")]
    labels, matrix = analysis.closed_confusion(rows, max_labels=2)
    assert labels == ["yes", "no", "(other)"]
    assert matrix == [[2, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_yes_no_margins_use_candidate_scores() -> None:
    rows = [_closed(1, "Yes", "yes", (-0.5, -2.0)), _closed(2, "No", "yes", (-1.0, -1.25)),
            _closed(3, "No", "no", (-3.0, -0.5)), _closed(4, "Yes", "yes"),        # no scores
            _closed(5, "Liver", "liver", (-1.0, -2.0))]                           # gold not yes/no
    assert analysis.yes_no_margins(rows) == {"yes": [1.5], "no": [0.25, -2.5]}


def test_worst_errors_order() -> None:
    rows = [_closed(1, "Yes", "no", margin=0.5), _closed(2, "Yes", "yes"), _closed(3, "Yes", "no", margin=2.0),
            Prediction(qid=4, question="q", answer="Left Lung", answer_type="OPEN", prediction="lung")]
    exact, f1 = np.array([0.0, 1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0, 2 / 3])
    assert analysis.worst_errors(rows, exact, f1) == [2, 0, 3]
    assert analysis.worst_errors(rows, exact, f1, limit=1) == [2]


def test_svg_figures() -> None:
    cell = {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n": 4}
    bars = interval_bars(["CT", "MRI <b>"], {"exact": [cell, {"n": 0}]})
    assert bars.startswith("<svg") and bars.count("<rect") == 2     # legend + one bar; empty cell draws none
    assert "MRI &lt;b&gt;" in bars and "50.0% n=4" in bars
    assert histogram({"yes": [], "no": []}).count("no data") == 1
    assert histogram({"yes": [1.0, -1.0], "no": [0.5]}, bins=4).count('opacity="0.55"') == 8


def test_paper_comparability_needs_the_papers_question_set() -> None:
    rows = [Prediction(qid=i, question="q", answer="Yes", answer_type="OPEN" if i < 645 else "CLOSED",
                       prediction="yes", split="test") for i in range(1061)]
    assert paper_comparability(rows).startswith("Same question set as the paper")
    assert "scored text: raw_output" in paper_comparability(rows, "raw_output")
    assert paper_comparability(rows[:-1]).startswith("Not the paper's question set (1060 questions")
    zh = rows[:-1] + [Prediction(qid=2000, question="q", answer="是", answer_type="CLOSED",
                                 prediction="是", q_lang="zh", split="test")]
    assert "not only English" in paper_comparability(zh)
    validation = [Prediction(**{**row.to_json(), "split": "validation"}) for row in rows]
    assert "splits ['validation']" in paper_comparability(validation)


def _run_dir(tmp_path: Path, with_results: bool = True) -> Path:
    run = tmp_path / "run"
    rows = synthetic_rows(90, seed=2, image_dir=tmp_path / "imgs")
    write_predictions(run / "predictions.jsonl", rows)
    if with_results:
        write_results(run / "results.json", build_results(rows, {"device": "cpu"}, resamples=100))
    return run


def test_report_from_files_alone(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)  # its results record no dataset folder: --image_root says where images may come from
    assert main(["report", str(run), "--worst", "5", "--image_root", str(tmp_path)]) == 0
    md, html = (run / "report.md").read_text(), (run / "report.html").read_text()
    assert "## Headline" in md and "| llava_med |" in md and "## CLOSED confusion matrix" in md
    assert md.count("### qid ") == 5 and "[INST] <image>" in md
    assert "Not the paper's question set (90 questions" in md
    assert html.count('<div class="card">') == 5 and html.count("data:image/jpeg;base64,") == 5
    assert html.count("<svg") == 2 * 5 + 1      # 5 non-answer_type slice fields x 2 scorers + histogram
    assert not re.search(r'(src|href)="(https?:)?//', html)   # nothing fetched when opened


def test_report_names_the_model_and_its_fingerprint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    rows = synthetic_rows(20, seed=2, image_dir=tmp_path / "imgs")
    model = "hf model from /models/llava-med (bfloat16 on cuda, sdpa)"
    fingerprint = {"sha256": "5e0c" * 16, "covers": ["/models/llava-med"], "hub_revisions": {}}
    write_predictions(run / "predictions.jsonl", rows)
    write_results(run / "results.json", build_results(rows, {"model": model, "model_fingerprint": fingerprint},
                                                      resamples=10))
    assert main(["report", str(run), "--worst", "1"]) == 0
    line = f"sha256 {'5e0c' * 16} of the configs, safetensors headers and sampled weights in /models/llava-med"
    html = (run / "report.html").read_text()
    assert f"<td>model</td><td>{model}</td>" in html and f"<td>model_fingerprint</td><td>{line}</td>" in html
    assert f"| model | {model} |" in (run / "report.md").read_text()


def test_report_without_results_and_without_images(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, with_results=False)
    shutil.rmtree(tmp_path / "imgs")
    assert main(["report", str(run), "--worst", "3", "--out_dir", str(tmp_path / "out")]) == 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert "computed from predictions.jsonl (no results.json)" in html
    assert html.count("image not found") == 3 and "data:image" not in html
    assert not (run / "report.html").exists()


def test_report_finds_moved_images_under_image_root(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    moved = tmp_path / "slake" / "imgs"
    shutil.move(tmp_path / "imgs", moved)
    assert main(["report", str(run), "--worst", "2", "--image_root", str(tmp_path / "slake")]) == 0
    # img_name says source.jpg but the fixture wrote source.png: only image_path would find it.
    assert (run / "report.html").read_text().count("image not found") == 2
    for folder in moved.iterdir():
        Image.open(folder / "source.png").save(folder / "source.jpg")
    assert main(["report", str(run), "--worst", "2", "--image_root", str(tmp_path / "slake")]) == 0
    assert (run / "report.html").read_text().count("data:image/jpeg;base64,") == 2


def test_report_embeds_only_images_inside_the_dataset(tmp_path: Path) -> None:
    dataset, private = tmp_path / "slake", tmp_path / "private"
    rows = synthetic_rows(40, seed=2, image_dir=dataset / "imgs")
    private.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(private / "secret.png")
    outside = {row.qid for row in rows if row.qid % 7 == 0}
    for row in rows:
        if row.qid in outside:
            object.__setattr__(row, "image_path", str(private / "secret.png"))
    (dataset / "test.json").write_text("[]")
    run = tmp_path / "run"
    write_predictions(run / "predictions.jsonl", rows)
    recorded = {"split_file": str(dataset / "test.json"), "split_sha256": sha256_file(dataset / "test.json")}
    write_results(run / "results.json", build_results(rows, recorded, resamples=10))
    assert main(["report", str(run), "--worst", "40"]) == 0
    html = (run / "report.html").read_text()
    shown = [int(q) for q in re.findall(r"<b>qid (\d+)</b>", html)]
    refused = sum(q in outside for q in shown)
    assert refused > 0 and html.count("image outside the dataset folder<br>") == refused
    assert html.count("data:image/jpeg;base64,") == len(shown) - refused
    assert f"{refused} image path(s) outside the dataset folder ({dataset.resolve()}) not embedded" in html
    # a run that records no dataset folder embeds nothing, unless --image_root names one
    write_results(run / "results.json", build_results(rows, {}, resamples=10))
    assert main(["report", str(run), "--worst", "40"]) == 0
    html = (run / "report.html").read_text()
    assert "data:image/jpeg;base64," not in html and "No images embedded: the run records no dataset" in html
    assert main(["report", str(run), "--worst", "40", "--image_root", str(dataset)]) == 0
    assert (run / "report.html").read_text().count("data:image/jpeg;base64,") == len(shown) - refused


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's `chromium` is not on PATH (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    assert main(["report", str(run), "--worst", "6"]) == 0
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1200,2000", (run / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2000, 1200)
    # A blank or error page is near-uniform; the report has text, tables and coloured bars.
    assert pixels.std() > 20 and (pixels < 100).mean() > 0.01
