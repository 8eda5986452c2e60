"""Flags every record-loading verb shares: ``--missing_images`` everywhere, and output folders that are files."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from conftest import default_splits, slake_row, write_mini_slake
from slakevqa.cli import main
from test_kg import write_kg

MISSING_IMG = 9  # the image every split refers to once and that is not on disk


@pytest.fixture
def gappy_slake(tmp_path: Path) -> Path:
    """The mini SLAKE plus one English record per split (qids 90, 91, 92) whose image is missing."""
    splits = default_splits()
    for qid, split in enumerate(("train", "validation", "test"), start=90):
        splits[split].append(slake_row(qid, MISSING_IMG))
    for row in [row for rows in splits.values() for row in rows if row["q_lang"] == "en"]:
        if row["answer_type"] == "CLOSED":  # yes/no questions: candidates without a vocabulary
            row["question"] = "Is there a liver?"
    root = write_mini_slake(tmp_path / "Slake1.0", splits)
    (root / "imgs" / f"xmlab{MISSING_IMG}" / "source.jpg").unlink()
    return root


def suggested_flag(stderr: str) -> list[str]:
    """The one-line error's suggestion, e.g. ``["--missing_images", "skip"]``."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    assert f"xmlab{MISSING_IMG}/source.jpg" in lines[0]
    return re.search(r"use (--\w+ \w+)", lines[0]).group(1).split()


def fails_then_runs_with_the_suggestion(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """``argv`` stops at the missing image; with the flag its error suggests, it runs (exit 0)."""
    assert main(argv) == 2
    flag = suggested_flag(capsys.readouterr().err)
    assert flag == ["--missing_images", "skip"]
    assert main(argv + flag) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_convert_sft_masks_and_kg_take_missing_images(gappy_slake: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sft"
    fails_then_runs_with_the_suggestion(["convert-sft", "--data_root", str(gappy_slake), "--output_dir", str(out)],
                                        capsys)
    for split, dropped in (("train", 90), ("validation", 91), ("test", 92)):
        records = json.loads((out / f"slake_{split}_llava_sft.json").read_text(encoding="utf-8"))
        assert records and dropped not in {r["id"] for r in records}
    printed = fails_then_runs_with_the_suggestion(["masks", "--slake_root", str(gappy_slake), "--all"], capsys)
    assert "left unmodified: 8 of 8 records" in printed  # 4 + 2 + 2 English records with images, no masks
    fails_then_runs_with_the_suggestion(["masks", "--slake_root", str(gappy_slake), "--qid", "20", "--out",
                                         str(tmp_path / "png")], capsys)
    assert (tmp_path / "png" / "20_original.png").is_file()
    write_kg(gappy_slake)
    printed = fails_then_runs_with_the_suggestion(["kg", "--slake_root", str(gappy_slake), "--qid", "20"], capsys)
    assert printed.startswith("qid 20 (test, vqa)")


def test_eval_takes_missing_images_for_data_and_vocabulary(gappy_slake: Path, tmp_path: Path, tiny_model,
                                                           monkeypatch, capsys) -> None:
    monkeypatch.setattr("slakevqa.evaluation.evaluate.load_for_eval", lambda cfg, rank: (*tiny_model, None))
    out = tmp_path / "eval"
    fails_then_runs_with_the_suggestion(["eval", "--model_id_or_ckpt", "tiny", "--slake_root", str(gappy_slake),
                                         "--output_dir", str(out), "--allow_build_vocab", "--no-report"], capsys)
    qids = [json.loads(line)["qid"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert qids == [20, 21]
    config = json.loads((out / "results.json").read_text())["provenance"]["config"]
    assert config["missing_images"] == "skip"


def test_train_takes_missing_images_for_data_probe_and_final_eval(gappy_slake: Path, tmp_path: Path, tiny_model,
                                                                  monkeypatch, capsys, caplog) -> None:
    monkeypatch.setattr("slakevqa.training.train.load_for_training", lambda cfg, device: tiny_model)
    out = tmp_path / "train"
    argv = ["train", "--model_id", "tiny", "--slake_root", str(gappy_slake), "--output_dir", str(out), "--dry_run",
            "--no-tb", "--batch_size", "2", "--eval_steps", "1", "--resume_from_checkpoint", "none"]
    with caplog.at_level(logging.WARNING):
        fails_then_runs_with_the_suggestion(argv, capsys)
    assert "not usable" not in caplog.text  # the probe's held-out split loaded under the same policy
    final = [json.loads(line)["qid"] for line in (out / "eval_test" / "predictions.jsonl").read_text().splitlines()]
    assert final == [20, 21]  # the final evaluation skipped qid 92 too
    provenance = json.loads((out / "eval_test" / "results.json").read_text())["provenance"]
    assert provenance["model_fingerprint"]["covers"] == [str(out)]  # the saved adapter of the in-memory model


# ---------------------------------------------------------------- output folders that are files

# verb -> (the name the error gives the folder, the command line)
OUTPUT_FOLDER_VERBS = {
    "train": ("--output_dir", ["train", "--model_id", "m", "--output_dir", "{out}"]),
    "eval": ("--output_dir", ["eval", "--model_id_or_ckpt", "m", "--output_dir", "{out}"]),
    "convert-sft": ("--output_dir", ["convert-sft", "--data_root", "{root}", "--output_dir", "{out}"]),
    "masks": ("--out", ["masks", "--slake_root", "{root}", "--qid", "20", "--out", "{out}"]),
    "synth": ("--out", ["synth", "--out", "{out}"]),
    "report": ("--out_dir", ["report", "{root}", "--out_dir", "{out}"]),
    "init-tiny": ("DIR", ["init-tiny", "{out}"]),
    "convert-checkpoint": ("DST", ["convert-checkpoint", "{root}", "{out}"]),
    "demo": ("--out", ["demo", "--out", "{out}"]),
    "merge": ("OUT", ["merge", "{root}", "{out}"]),
}


@pytest.mark.parametrize("below", [False, True], ids=["is-a-file", "under-a-file"])
@pytest.mark.parametrize("verb", sorted(OUTPUT_FOLDER_VERBS))
def test_output_folder_that_is_a_file_is_one_line(verb: str, below: bool, mini_slake: Path, tmp_path: Path,
                                                  capsys) -> None:
    blocker = tmp_path / "taken.txt"
    blocker.write_text("not a folder")
    out = blocker / "run" if below else blocker
    label, argv = OUTPUT_FOLDER_VERBS[verb]
    assert main([part.format(out=out, root=mini_slake) for part in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {label} {out}") and f"{blocker} is a file, not a folder" in err
    assert blocker.read_text() == "not a folder"


def test_demo_reruns_resume_and_overwrite_replaces_an_older_folder(tmp_path: Path, capsys) -> None:
    """A demo folder from before run fingerprints is refused with a way out the demo itself offers."""
    pytest.importorskip("mistral_common")
    argv = ["demo", "--out", str(tmp_path / "demo"), "--steps", "2", "--images", "12"]
    assert main(argv) == 0
    (tmp_path / "demo" / "untrained" / "run_fingerprint.json").unlink()  # as an older slakevqa left it
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "an older slakevqa" in err and "--overwrite" in err
    assert main([*argv, "--overwrite"]) == 0
    assert (tmp_path / "demo" / "untrained" / "run_fingerprint.json").is_file()
