"""Failures from outside slakevqa as the CLI reports them (src/slakevqa/cli.py, os_errors.py): any OSError
escaping a verb, library write errors, memory, SIGTERM, and read-only HOME, cache and output folders.

The companion of tests/test_bad_inputs_os.py (full disks and unwritable paths under each verb).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from slakevqa.cli import run_verb
from test_bad_inputs_os import SAFETENSORS_FULL, answerable_slake, one_line, snapshot

# ---------------------------------------------------------------- memory and SIGTERM, through run_verb

def fake_verb(raises: BaseException | None = None, name: str = "eval",
              signum: int = signal.SIGTERM) -> SimpleNamespace:
    """A verb module whose run raises ``raises``, or sends itself ``signum``."""
    def run(args: argparse.Namespace) -> int:
        if raises is None:
            os.kill(os.getpid(), signum)
            time.sleep(5)
            pytest.fail(f"{signum} did not stop the verb")
        raise raises
    return SimpleNamespace(__name__=f"slakevqa.commands.{name}", run=run)


def dangling_link(work: Path) -> str:
    (work / "predictions.jsonl").symlink_to(work / "scratch" / "gone.jsonl")
    return str(work / "predictions.jsonl")


OS_ERRORS = {  # what escapes a verb -> its line (eval: a verb whose rerun resumes)
    "ENOSPC": (errno.ENOSPC, "runs/eval/predictions.jsonl", "cannot write runs/eval/predictions.jsonl: no space left on "
               "the device (free space and rerun: what was written is kept and the rerun resumes)"),
    "EDQUOT": (errno.EDQUOT, "runs/eval/results.json", "cannot write runs/eval/results.json: disk quota exceeded"),
    "EROFS": (errno.EROFS, "runs/eval", "cannot write runs/eval: read-only file system (write to a folder"),
    "ENAMETOOLONG": (errno.ENAMETOOLONG, "runs/x", "cannot access runs/x: file name too long (use a shorter name"),
    "EACCES": (errno.EACCES, "runs/eval", "cannot access runs/eval: permission denied (check its permissions"),
    "EPERM": (errno.EPERM, "runs/eval", "cannot access runs/eval: permission denied"),
    "ENOTDIR": (errno.ENOTDIR, "notes.txt/eval", "cannot access notes.txt/eval: a folder in the path is a file"),
    "ELOOP": (errno.ELOOP, "runs/loop", "cannot access runs/loop: too many symbolic links"),
    "EIO": (errno.EIO, "/mnt/nfs/runs", "cannot access /mnt/nfs/runs: input/output error"),
    "ENOENT-dangling-link": (errno.ENOENT, dangling_link, "predictions.jsonl: a symbolic link to a missing target "
                             "("),
    "no-path": (errno.ENOSPC, None, "cannot write into runs/eval: no space left on the device"),
}


@pytest.mark.parametrize("case", OS_ERRORS)
def test_os_error_escaping_a_verb_is_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, path, expected = OS_ERRORS[case]
    path = path(tmp_path) if callable(path) else path
    error = OSError(code, os.strerror(code), *([path] if path else []))
    assert run_verb(fake_verb(error), argparse.Namespace(debug=False, output_dir="runs/eval")) == 2
    line = one_line(capsys)
    assert line.startswith("error: ") and expected in line, line
    with pytest.raises(OSError):  # --debug keeps the traceback
        run_verb(fake_verb(error), argparse.Namespace(debug=True, output_dir="runs/eval"))


def test_library_write_errors_are_read_as_os_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from safetensors import SafetensorError

    args = argparse.Namespace(debug=False, out=str(tmp_path / "merged"))
    assert run_verb(fake_verb(SafetensorError(SAFETENSORS_FULL), "merge"), args) == 2
    assert one_line(capsys) == (f"error: cannot write into {tmp_path / 'merged'}: no space left on the device "
                                "(free space and rerun: nothing half-written was left)")
    torch_save = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert run_verb(fake_verb(torch_save, "merge"), args) == 2  # plenty of space here: the write failed otherwise
    assert one_line(capsys) == f"error: cannot write into {tmp_path / 'merged'}: input/output error " \
                               "(a failing disk or network file system?)"


def test_out_of_memory_is_one_line_advising_a_smaller_batch(capsys: pytest.CaptureFixture) -> None:
    import torch

    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you "
                       "tried to allocate 101000000000 bytes. Error code 12 (Cannot allocate memory)")
    gpu = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
                                 "79.19 GiB of which 1.06 GiB is free.")
    args = argparse.Namespace(debug=False, batch_size=100000)
    assert run_verb(fake_verb(cpu), args) == 2
    assert one_line(capsys) == ("error: out of memory (CPU memory, tried to allocate 101.0 GB); "
                                "try a smaller --batch_size")
    assert run_verb(fake_verb(gpu), args) == 2
    assert "out of memory (GPU memory, tried to allocate 20.00 GiB); try a smaller --batch_size" in one_line(capsys)
    assert run_verb(fake_verb(gpu), argparse.Namespace(debug=False)) == 2  # batch size from a YAML config
    assert one_line(capsys).endswith("try a smaller --batch_size")
    assert run_verb(fake_verb(gpu, "merge"), argparse.Namespace(debug=False)) == 2
    assert one_line(capsys).endswith("free memory or use a larger machine")
    with pytest.raises(RuntimeError):  # --debug keeps the traceback
        run_verb(fake_verb(cpu), argparse.Namespace(debug=True, batch_size=1))
    with pytest.raises(ValueError):  # anything else is a bug and keeps it too
        run_verb(fake_verb(ValueError("a bug")), args)


def test_stop_signals_are_one_line_and_the_handlers_are_restored(capsys: pytest.CaptureFixture) -> None:
    from slakevqa.cli import set_stop_note

    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)
    # a verb whose rerun resumes exits 75, which the sbatch script turns into a requeue
    assert run_verb(fake_verb(), argparse.Namespace(debug=False, output_dir="runs/eval")) == 75
    assert one_line(capsys) == ("stopped by SIGTERM: what was written to runs/eval is kept; "
                                "rerun the same command to resume")
    usr1 = fake_verb(signum=signal.SIGUSR1)  # SLURM's warning before the time limit (sbatch --signal=B:USR1@120)
    assert run_verb(usr1, argparse.Namespace(debug=False, output_dir="runs/eval")) == 75
    assert one_line(capsys).startswith("stopped by SIGUSR1: what was written to runs/eval is kept")
    noting = fake_verb()
    noting.run = lambda args, run=noting.run: (set_stop_note(lambda: "checkpoint-8 is kept"), run(args))
    assert run_verb(noting, argparse.Namespace(debug=False, output_dir=None)) == 75
    assert one_line(capsys) == "stopped by SIGTERM: checkpoint-8 is kept; rerun the same command to resume"
    assert run_verb(fake_verb(name="merge"), argparse.Namespace(debug=False, out="runs/merged")) == 143
    assert "nothing half-written was left; rerun the same command" in one_line(capsys)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)) == previous


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])  # 2: images prepared by threads, as on a GPU; they end with the run
def test_sigterm_during_eval_says_so_and_the_rerun_resumes(saved_tiny: Path, tmp_path: Path, workers: str) -> None:
    root, out = answerable_slake(tmp_path / "Slake1.0", test_questions=60, open_questions=False), tmp_path / "eval"
    argv = [sys.executable, "-m", "slakevqa", "eval", "--model_id_or_ckpt", str(saved_tiny), "--slake_root",
            str(root), "--output_dir", str(out), "--device", "cpu", "--batch_size", "1", "--no-report",
            "--prefetch_workers", workers]
    with (tmp_path / "stderr.txt").open("w+") as stderr:  # a file, not a pipe: a full pipe would stall the child
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
        predictions, deadline = out / "predictions.jsonl", time.monotonic() + 120
        while not (predictions.is_file() and predictions.read_bytes().count(b"\n")) and process.poll() is None:
            assert time.monotonic() < deadline, "no answer written in 120 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    err = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 75, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"stopped by SIGTERM: the answers so far are kept in {predictions}; rerun the same command to resume"), err[-2000:]
    kept = predictions.read_bytes().count(b"\n")
    assert 0 < kept < 60 and not (out / "results.json").exists()

    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    qids = [json.loads(line)["qid"] for line in predictions.read_text().splitlines()]
    assert qids == list(range(200, 260))


# ---------------------------------------------------------------- read-only folders, for real

def read_only_runner(tmp_path: Path):
    """``(run, reason)``: a function running a command line with some folders read-only, and what the system will
    say about a write there; or a skip saying why no folder can be made read-only."""
    probe = tmp_path / "probe"
    probe.mkdir()
    mounts = subprocess.run(["unshare", "-rm", "sh", "-c", f"{bind_read_only([probe])} && ! touch {probe}/x"],
                            capture_output=True) if _has("unshare") else None
    if mounts is not None and mounts.returncode == 0:
        def run(argv: list[str], folders: list[Path], cwd: Path, env: dict) -> subprocess.CompletedProcess:
            script = f"{bind_read_only(folders)} && cd {shlex.quote(str(cwd))} && exec {shlex.join(argv)}"
            return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                                  env=env, timeout=120)
        return run, "read-only file system"
    if os.geteuid() == 0:
        pytest.skip("running as root without user namespaces: chmod does not stop root's writes, "
                    "and no read-only mount can be made")

    def run_chmod(argv: list[str], folders: list[Path], cwd: Path, env: dict) -> subprocess.CompletedProcess:
        for folder in folders:
            folder.chmod(0o555)
        try:
            return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
        finally:
            for folder in folders:
                folder.chmod(0o755)
    return run_chmod, "permission denied"


def bind_read_only(folders: list[Path]) -> str:
    return " && ".join(f"mount --bind {q} {q} && mount -o remount,ro,bind {q} {q}"
                       for q in (shlex.quote(str(f)) for f in folders))


def _has(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None


def test_read_only_home_cache_and_current_folder(tmp_path: Path) -> None:
    run, reason = read_only_runner(tmp_path)
    root, home, work = answerable_slake(tmp_path / "Slake1.0"), tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    answers = work / "predictions.jsonl"
    answers.write_text(json.dumps({"qid": 201, "question": "Is there a liver?", "answer": "Yes",
                                   "answer_type": "CLOSED", "prediction": "Yes"}) + "\n")
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "HF_HOME": str(home / "hf"),
           "MPLCONFIGDIR": str(home / "mpl")}
    slakevqa = [sys.executable, "-m", "slakevqa"]
    stats = run([*slakevqa, "stats", "--slake_root", str(root)], [home, root], home, env)
    assert stats.returncode == 0 and "Traceback" not in stats.stderr, stats.stderr[-2000:]
    scored = run([*slakevqa, "score", str(answers)], [home, root], home, env)
    assert scored.returncode == 0 and (work / "results.json").is_file(), scored.stderr[-2000:]
    # An output in the read-only current folder: one line, before anything is written.
    before = snapshot(tmp_path)
    refused = run([*slakevqa, "score", str(answers), "--out", "results.json"], [home, root], home, env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"cannot write {'into .' if '--out' in last else 'results.json'}: {reason}" \
        in last, refused.stderr  # refused by score's own check of --out, or at the write
    assert snapshot(tmp_path) == before


def test_read_only_output_folder_is_refused_first(tmp_path: Path) -> None:
    run, reason = read_only_runner(tmp_path)
    root, out = answerable_slake(tmp_path / "Slake1.0"), tmp_path / "exports"
    out.mkdir()
    refused = run([sys.executable, "-m", "slakevqa", "convert-sft", "--slake_root", str(root), "--output_dir",
                   str(out / "sft")], [out], tmp_path, dict(os.environ))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert f"--output_dir {out / 'sft'}: cannot write into {out}: {reason}" in refused.stderr, refused.stderr
    assert list(out.iterdir()) == []
