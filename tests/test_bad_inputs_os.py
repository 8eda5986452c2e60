"""Failures from outside slakevqa (src/slakevqa/cli.py, os_errors.py, files.py): a full disk, a read-only or
unwritable folder, a name too long, a dangling link, memory, and SIGTERM.

Each ends in one line naming the path and the reason, exit 2 (75 for a stop signal where the rerun resumes, else 143 for SIGTERM), no traceback,
every file that was there byte-for-byte unchanged, and nothing left that a rerun would trust
(a temporary file, a half-published model, a torn answer line a rerun keeps).

A full disk is injected where the bytes are written: the writer puts down part of them and
raises ENOSPC, as a filling disk does (safetensors' own error for model weights, an OSError
from ``fsync`` for whole files; delayed allocation reports a full disk there): the point of
failure is chosen, which a small tmpfs (where mounting is allowed) would leave to chance. Read-only
folders are real: a read-only bind mount in a user namespace (``unshare -rm``), else
``chmod 0o555`` for a non-root user; as root without namespaces the test is skipped, since
chmod does not stop root's writes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import slake_row, write_image, write_mini_slake
from slakevqa import files
from slakevqa.cli import main

ENOSPC = OSError(errno.ENOSPC, "No space left on device")
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def answerable_slake(root: Path, test_questions: int = 4, open_questions: bool = True) -> Path:
    """A SLAKE the tiny model answers without a vocabulary: every CLOSED question is yes/no (odd qids; even ones
    are OPEN, or CLOSED too without ``open_questions``: quick to answer, no generation)."""
    def rows(start: int, count: int) -> list[dict]:
        return [slake_row(q, q % 3, question="Is there a liver?", answer="Yes", answer_type="CLOSED")
                if q % 2 or not open_questions else slake_row(q, q % 3, question="Which organ is this?")
                for q in range(start, start + count)]
    return write_mini_slake(root, {"train": rows(0, 4), "validation": rows(100, 2),
                                   "test": rows(200, test_questions)})


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def untrusted(folder: Path) -> list[str]:
    """What a failed write may not leave: temporary files and folders, a model staged but not in place."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if re.search(r"\.(tmp|partial|old)-[0-9]", p.name) or p.name == ".trained.ready")


def one_line(capsys: pytest.CaptureFixture) -> str:
    """The one line on stderr (progress bars of a model that loaded aside)."""
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip() and not re.search(r"\d%\|", line)]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- a full disk where the bytes are written

def fsync_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fsync`` of a temporary file that write_text_atomic fills says the disk is full."""
    fsync = os.fsync

    def full(fd: int) -> None:
        if ".tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise ENOSPC
        fsync(fd)
    monkeypatch.setattr(os, "fsync", full)


def weights_full(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """safetensors writes half the weights file, then says the disk is full (transformers' or peft's save)."""
    import importlib

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    def half_then_full(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        save_file(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(Path(filename).read_bytes()[: Path(filename).stat().st_size // 2])
        raise SafetensorError(SAFETENSORS_FULL)
    monkeypatch.setattr(importlib.import_module(module), "safe_save_file", half_then_full)


def test_eval_disk_full_while_answering_then_rerun_resumes(saved_tiny: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from slakevqa.evaluation.store import PredictionWriter

    root, out = answerable_slake(tmp_path / "Slake1.0"), tmp_path / "eval"
    argv = ["eval", "--model_id_or_ckpt", str(saved_tiny), "--slake_root", str(root), "--output_dir", str(out),
            "--device", "cpu", "--batch_size", "1", "--no-report", "--max_new_tokens_open_default", "2"]
    write, calls = PredictionWriter.write, []

    def fills_up(self: PredictionWriter, rows: list) -> None:  # the second answer gets half-way to disk
        calls.append(len(rows))
        if len(calls) < 2:
            return write(self, rows)
        line = json.dumps(rows[0].to_json()) + "\n"
        self.handle.write(line[: len(line) // 2])
        self.handle.flush()
        raise ENOSPC
    monkeypatch.setattr(PredictionWriter, "write", fills_up)
    inputs = snapshot(saved_tiny), snapshot(root)
    assert main(argv) == 2
    line = one_line(capsys)
    assert re.search(rf"cannot write (into {out}|{out}/predictions.jsonl): no space left on the device", line), line
    assert "what was written is kept and the rerun resumes" in line, line
    assert not (out / "predictions.jsonl").read_bytes().endswith(b"\n")  # torn, as a full disk leaves it
    assert not (out / "results.json").exists() and untrusted(out) == []

    monkeypatch.undo()
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    assert "dropped a partly written last line" in caplog.text
    qids = [json.loads(row)["qid"] for row in (out / "predictions.jsonl").read_text().splitlines()]
    assert qids == [200, 201, 202, 203]  # the torn line dropped, the first answer kept, none twice
    assert (snapshot(saved_tiny), snapshot(root)) == inputs


def test_train_final_save_disk_full_publishes_nothing_then_rerun_saves(saved_tiny: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    from slakevqa.models.model_files import safetensors_problem

    root, out = answerable_slake(tmp_path / "Slake1.0"), tmp_path / "lora"
    argv = ["train", "--model_id", str(saved_tiny), "--slake_root", str(root), "--output_dir", str(out),
            "--max_steps", "1", "--save_steps", "1", "--batch_size", "2", "--no-tb", "--no-final_eval"]
    weights_full(monkeypatch, "peft.peft_model")
    inputs = snapshot(saved_tiny), snapshot(root)
    assert main(argv) == 2
    line = one_line(capsys)
    assert f"cannot write into {out}: no space left on the device" in line, line
    assert "the rerun resumes" in line, line
    assert not (out / "adapter_model.safetensors").exists() and untrusted(out) == []
    assert (snapshot(saved_tiny), snapshot(root)) == inputs

    monkeypatch.undo()
    assert main(argv) == 0
    assert safetensors_problem(out / "adapter_model.safetensors") is None


def test_merge_disk_full_leaves_no_output(lora: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    before = {name: snapshot(folder) for name, folder in lora.items()}
    weights_full(monkeypatch, "transformers.modeling_utils")
    out = tmp_path / "merged"
    assert main(["merge", str(lora["adapter"]), str(out), "--device", "cpu"]) == 2
    line = one_line(capsys)
    assert f"cannot write into {out}: no space left on the device (free space and rerun" in line, line
    assert not out.exists() and untrusted(tmp_path) == []
    assert {name: snapshot(folder) for name, folder in lora.items()} == before


def previous_results(work: Path) -> list[str]:
    """``score --output_dir`` over an earlier score's results, which must stay whole."""
    answers = work / "answers.jsonl"
    answers.write_text(json.dumps({"qid": 201, "question": "Is there a liver?", "answer": "Yes",
                                   "answer_type": "CLOSED", "prediction": "Yes"}) + "\n")
    (work / "scored").mkdir()
    (work / "scored" / "results.json").write_text('{"earlier": true}\n')
    return ["score", str(answers), "--output_dir", str(work / "scored")]


def previous_export(work: Path) -> list[str]:
    """``convert-sft`` over an earlier export, which must stay whole."""
    (work / "sft").mkdir()
    (work / "sft" / "slake_test_llava_sft.json").write_text("[]\n")
    return ["convert-sft", "--slake_root", str(work / "Slake1.0"), "--output_dir", str(work / "sft"),
            "--splits", "test"]


@pytest.mark.parametrize("setup, written", [(previous_results, "scored/results.json"),
                                            (previous_export, "sft/slake_test_llava_sft.json")],
                         ids=["score", "convert-sft"])
def test_whole_file_write_on_a_full_disk_keeps_the_old_file(setup, written: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    answerable_slake(tmp_path / "Slake1.0")
    argv = setup(tmp_path)
    before = snapshot(tmp_path)
    fsync_full(monkeypatch)
    assert main(argv) == 2
    line = one_line(capsys)
    assert f"error: cannot write {tmp_path / written}: no space left on the device" in line, line
    assert "nothing half-written was left" in line, line
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before and untrusted(tmp_path) == []


# ---------------------------------------------------------------- output paths refused before anything loads

def dangling(work: Path) -> str:
    (work / "out").symlink_to(work / "gone")
    return str(work / "out")


def link_loop(work: Path) -> str:
    (work / "out").symlink_to(work / "out2")
    (work / "out2").symlink_to(work / "out")
    return str(work / "out")


def under_dangling(work: Path) -> str:
    (work / "runs").symlink_to(work / "unmounted-scratch")
    return str(work / "runs" / "eval")


def through_a_file(work: Path) -> str:
    (work / "notes.txt").write_text("notes\n")
    return str(work / "notes.txt" / "eval")


PATH_CASES = {
    "name-300-bytes": (lambda work: str(work / ("x" * 300)), ("--output_dir: the name 'xxx", "300 bytes long",
                                                             "this file system allows 255")),
    "dangling-symlink": (dangling, ("out is a symbolic link to a missing folder", "gone")),
    "symlink-loop": (link_loop, ("out is a symbolic link in a loop",)),
    "under-a-dangling-symlink": (under_dangling, ("runs/eval: ", "runs is a symbolic link to a missing folder")),
    "through-a-file": (through_a_file, ("notes.txt is a file, not a folder",)),
}


@pytest.mark.parametrize("verb", ["eval", "convert-sft"])
@pytest.mark.parametrize("case", PATH_CASES)
def test_output_path_that_cannot_be_written_is_refused_first(case: str, verb: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    import slakevqa.models.loading as loading

    make, fragments = PATH_CASES[case]
    root = answerable_slake(tmp_path / "Slake1.0")
    output = make(tmp_path)
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    before = snapshot(tmp_path)
    argv = [verb, "--slake_root", str(root), "--output_dir", output]
    assert main(argv + (["--model_id_or_ckpt", "no-model", "--device", "cpu"] if verb == "eval" else [])) == 2
    line = one_line(capsys)
    for fragment in fragments:
        assert fragment in line, line
    assert snapshot(tmp_path) == before


def test_unwritable_output_folder_is_refused_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    """Issue 14's open cases (convert-sft and eval into a folder without write permission)."""
    root, locked = answerable_slake(tmp_path / "Slake1.0"), tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: the check is shown a folder root may not write
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and access(path, mode, **kw))
    else:
        locked.chmod(0o555)
    before = snapshot(tmp_path)
    for argv in (["convert-sft", "--slake_root", str(root), "--output_dir", str(locked / "sft")],
                 ["eval", "--model_id_or_ckpt", "no-model", "--slake_root", str(root), "--output_dir", str(locked)]):
        assert main(argv) == 2
        line = one_line(capsys)
        assert f"cannot write into {locked}: permission denied" in line, line
    assert snapshot(tmp_path) == before


def test_permission_denied_at_the_write_itself_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """The check can be passed and the write still refused (ACLs, a folder changed meanwhile)."""
    answerable_slake(tmp_path / "Slake1.0")
    argv = previous_export(tmp_path)
    before = snapshot(tmp_path)
    monkeypatch.setattr(files.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, "Permission denied", str(Path(kw["dir"]) / "x"))))
    assert main(argv) == 2
    line = one_line(capsys)
    assert f"cannot write {tmp_path / 'sft' / 'slake_test_llava_sft.json'}: permission denied" in line, line
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- long names: 245 bytes is a valid name

LONG = "é" * 120 + "-run"  # 244 bytes, 124 characters: our temporary names must not overflow 255 bytes


def test_long_valid_names_are_written(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"qid": 201, "question": "Is there a liver?", "answer": "Yes",
                                   "answer_type": "CLOSED", "prediction": "Yes"}) + "\n")
    assert main(["score", str(answers), "--out", str(tmp_path / f"{LONG}.json")]) == 0  # a 249-byte file
    assert main(["init-tiny", str(tmp_path / LONG), "--tokenizer", "bpe"]) == 0  # a folder replaced whole
    assert main(["init-tiny", str(tmp_path / LONG), "--tokenizer", "bpe", "--seed", "1", "--overwrite"]) == 0
    capsys.readouterr()
    assert (tmp_path / f"{LONG}.json").is_file() and (tmp_path / LONG / "model.safetensors").is_file()
    assert untrusted(tmp_path) == []


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_a_long_name_are_found_and_only_its_own(tmp_path: Path) -> None:
    target, sibling = tmp_path / (LONG + "a"), tmp_path / (LONG + "b")  # the same first 215 bytes
    stem, other = files.temp_stem(target), files.temp_stem(sibling)
    assert stem != other and len(os.fsencode(f".{stem}.partial-4194304")) <= 255
    pid = dead_pid()
    ours = [tmp_path / f".{stem}.tmp-{pid}-abcd1234", tmp_path / f".{stem}.partial-{pid}"]
    theirs = [tmp_path / f".{other}.tmp-{pid}-abcd1234", tmp_path / f".{other}.partial-{pid}"]
    for path in ours + theirs:
        path.mkdir() if ".partial-" in path.name else path.write_text("half")
    files.write_text_atomic(target, "whole\n")
    files.recover_folder(target)
    assert target.read_text() == "whole\n"
    assert not any(path.exists() for path in ours) and all(path.exists() for path in theirs)


def test_a_name_that_only_starts_like_the_target_is_not_its_leftover(tmp_path: Path) -> None:
    pid = dead_pid()
    other = tmp_path / f".out.tmp-x.tmp-{pid}-abcd1234"  # a leftover of "out.tmp-x", not of "out"
    other.write_text("someone else's")
    files.write_text_atomic(tmp_path / "out", "ours\n")
    assert other.exists()


# ---------------------------------------------------------------- convert-sft: an image outside imgs/

def test_convert_sft_takes_an_image_elsewhere_in_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 14's open case: an image stored in the dataset folder but outside imgs/ (a ValueError traceback)."""
    root = tmp_path / "Slake1.0"
    write_mini_slake(root, {"test": [slake_row(20, 3), slake_row(21, 9, img_name="../extra/top.jpg")]})
    write_image(root / "extra" / "top.jpg")
    assert main(["convert-sft", "--slake_root", str(root), "--output_dir", str(tmp_path / "sft"),
                 "--splits", "test"]) == 0
    records = json.loads((tmp_path / "sft" / "slake_test_llava_sft.json").read_text())
    assert [r["image"] for r in records] == ["xmlab3/source.jpg", "../extra/top.jpg"]
    assert (root / "imgs" / records[1]["image"]).resolve() == (root / "extra" / "top.jpg").resolve()


def test_sft_record_refuses_an_image_outside_the_dataset(tmp_path: Path) -> None:
    from slakevqa.data.sft import image_field
    from slakevqa.errors import DataError

    sample = SimpleNamespace(qid=7, image_path=tmp_path / "elsewhere" / "x.jpg")
    with pytest.raises(DataError, match=r"test.json: qid 7: field 'img_name': image .* lies outside the dataset"):
        image_field(sample, tmp_path / "Slake1.0" / "imgs", tmp_path / "Slake1.0", "test.json")
