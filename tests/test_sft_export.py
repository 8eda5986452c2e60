"""SFT export: LLaVA conversation records, through the package CLI and the reference-compatible shim."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import default_splits, slake_row, write_mini_slake
from slakevqa.cli import main

REPO = Path(__file__).resolve().parents[1]


def read(out: Path, split: str) -> list[dict]:
    return json.loads((out / f"slake_{split}_llava_sft.json").read_text(encoding="utf-8"))


def test_schema_and_english_default(mini_slake: Path, tmp_path: Path) -> None:
    assert main(["convert-sft", "--data_root", str(mini_slake), "--output_dir", str(tmp_path / "o")]) == 0
    train = read(tmp_path / "o", "train")
    assert [r["id"] for r in train] == [0, 1, 2, 3]
    first = train[0]
    assert set(first) == {"id", "image", "conversations", "answer_type", "q_lang", "content_type", "modality"}
    assert first["image"] == "xmlab0/source.jpg"
    assert first["conversations"] == [{"from": "human", "value": "<image>\nQuestion 0?"},
                                      {"from": "gpt", "value": "Liver"}]
    assert (mini_slake / "imgs" / first["image"]).is_file()
    assert [r["id"] for r in read(tmp_path / "o", "validation")] == [10, 11]
    assert [r["id"] for r in read(tmp_path / "o", "test")] == [20, 21]


def test_shim_flags_im_start_end_and_empty_answers(tmp_path: Path) -> None:
    splits = default_splits()
    splits["train"].append(slake_row(7, 1, answer=""))
    root = write_mini_slake(tmp_path / "s", splits)
    done = subprocess.run([sys.executable, str(REPO / "slake_to_llava_sft.py"), "--data_root", str(root),
                           "--output_dir", str(tmp_path / "o"), "--mm_use_im_start_end"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "dropped 1 training records with an empty answer (qids 7)" in done.stderr
    train = read(tmp_path / "o", "train")
    assert 7 not in [r["id"] for r in train]
    assert train[0]["conversations"][0]["value"].startswith("<im_start><image><im_end>\n")


def test_shim_help_lists_the_reference_flags() -> None:
    done = subprocess.run([sys.executable, str(REPO / "slake_to_llava_sft.py"), "--help"],
                          capture_output=True, text=True)
    for flag in ("--data_root", "--output_dir", "--use_hf", "--mm_use_im_start_end"):
        assert flag in done.stdout


@pytest.mark.real_data
def test_real_slake_export_counts(slake_root: Path, tmp_path: Path) -> None:
    assert main(["convert-sft", "--data_root", str(slake_root), "--output_dir", str(tmp_path)]) == 0
    assert len(read(tmp_path, "train")) == 4918  # qid 1622 (empty answer) dropped
    assert len(read(tmp_path, "test")) == 1061
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in read(tmp_path, "validation"))
