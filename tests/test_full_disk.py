"""A disk that really fills: a small tmpfs in a user namespace (``unshare -rm``) under ``eval``, ``train`` and ``merge``.

tests/test_bad_inputs_os.py injects ENOSPC at chosen points; here the kernel says it, wherever the
bytes run out. Each command runs on a tmpfs too small for its outputs: one line naming the path
and "no space left on the device", exit 2, nothing a rerun would trust. Then the tmpfs grows
(``mount -o remount,size=``) and the same command finishes, resuming where it could: every question
answered exactly once, the trained adapter and the merged model whole. Skipped where user
namespaces or tmpfs mounts are not allowed.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _namespaces_work(probe: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(probe))}"],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory):
    """Run ``argv`` (a slakevqa command line) twice on a tmpfs: first of ``first`` bytes, then grown to 64 MiB."""
    base = tmp_path_factory.mktemp("disk")
    if not _namespaces_work(base / "probe"):
        pytest.skip("no user namespaces with tmpfs mounts here (unshare -rm)")

    def run(disk: Path, first: str, argv: list[str]) -> tuple[subprocess.CompletedProcess, ...]:
        disk.mkdir(parents=True, exist_ok=True)
        command = shlex.join([sys.executable, "-m", "slakevqa", *argv])
        script = (f"mount -t tmpfs -o size={first} tmpfs {shlex.quote(str(disk))} || exit 99\n"
                  f"{command} > {shlex.quote(str(base / 'first.err'))} 2>&1; echo $? > {shlex.quote(str(base / 'first.rc'))}\n"
                  f"find {shlex.quote(str(disk))} -type f | sort > {shlex.quote(str(base / 'first.files'))}\n"
                  f"mount -o remount,size=64m {shlex.quote(str(disk))}\n"
                  f"{command} > {shlex.quote(str(base / 'second.err'))} 2>&1; echo $? > {shlex.quote(str(base / 'second.rc'))}\n"
                  f"cp -r {shlex.quote(str(disk))}/. {shlex.quote(str(base / 'kept'))}/\n")
        shutil.rmtree(base / "kept", ignore_errors=True)
        (base / "kept").mkdir()
        done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        read = {name: (base / name).read_text() for name in ("first.err", "first.rc", "first.files",
                                                             "second.err", "second.rc")}
        return read, base / "kept"

    return run


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def assert_full_disk_line(read: dict, path_part: str) -> None:
    assert read["first.rc"].strip() == "2", read["first.err"][-2000:]
    assert "Traceback" not in read["first.err"], read["first.err"][-3000:]
    line = last_line(read["first.err"])
    assert line.startswith("error: ") and "no space left on the device" in line and path_part in line, line


def test_eval_on_a_full_disk_then_on_a_bigger_one_answers_every_question_once(small_disk, saved_tiny: Path,
                                                                                synth_root: Path,
                                                                                tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    argv = ["eval", "--model_id_or_ckpt", str(saved_tiny), "--slake_root", str(synth_root), "--output_dir",
            str(disk / "eval"), "--device", "cpu", "--limit", "90", "--batch_size", "8"]
    read, kept = small_disk(disk, "40k", argv)
    assert_full_disk_line(read, str(disk / "eval"))
    assert read["second.rc"].strip() == "0", read["second.err"][-3000:]
    qids = [json.loads(line)["qid"] for line in (kept / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(qids) == 90 and len(set(qids)) == 90  # nothing lost, nothing answered twice
    assert json.loads((kept / "eval" / "results.json").read_text())["counts"]["total"] == 90


def test_train_on_a_full_disk_publishes_nothing_then_saves_whole(small_disk, saved_tiny: Path, synth_root: Path,
                                                                 tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    argv = ["train", "--model_id", str(saved_tiny), "--slake_root", str(synth_root), "--output_dir", str(disk / "run"),
            "--max_steps", "2", "--save_steps", "1", "--batch_size", "2", "--no-tb", "--no-final_eval"]
    read, kept = small_disk(disk, "48k", argv)
    assert_full_disk_line(read, str(disk))
    assert "adapter_model.safetensors" not in read["first.files"]  # no adapter, whole or half
    assert read["second.rc"].strip() == "0", read["second.err"][-3000:]
    from safetensors.torch import load_file

    assert load_file(kept / "run" / "adapter_model.safetensors")  # whole: every tensor reads back
    assert not [p.name for p in (kept / "run").iterdir() if ".partial" in p.name or p.name.startswith(".trained")]


def test_merge_on_a_full_disk_leaves_no_output_then_writes_it_whole(small_disk, lora: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    read, kept = small_disk(disk, "256k", ["merge", str(lora["adapter"]), str(disk / "merged")])
    assert_full_disk_line(read, str(disk))
    assert read["first.files"].strip() == ""  # no partial folder, no half-written weights
    assert read["second.rc"].strip() == "0", read["second.err"][-3000:]
    from safetensors.torch import load_file

    assert load_file(next((kept / "merged").glob("*.safetensors")))
