"""Atomic outputs (src/slakevqa/files.py): a folder or file is replaced only once the new one is whole, and a
writer killed at any point leaves the old one and nothing a later write trips over (``atomic_folder``,
``recover_folder``, ``write_text_atomic``); the commands that replace folders (``merge --overwrite``,
``init-tiny --overwrite``) keep the previous output when they fail and refuse an output that would delete
their input."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from slakevqa.cli import main
from slakevqa.commands.merge import merge_adapter
from slakevqa.errors import UserError
from slakevqa.files import atomic_folder, recover_folder, write_text_atomic
from slakevqa.models import tiny


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path: equal contents, equal folders."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Temporary siblings an atomic write may leave beside its target."""
    return sorted(p.name for p in folder.parent.iterdir() if re.search(r"\.(partial|old|tmp)-", p.name))


def dead_pid() -> int:
    """The pid of a process that has ended (what a kill -9 leaves behind)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --- the mechanism --------------------------------------------------------------------------------------------

KILL_POINTS = {  # what a kill at each point leaves -> what the next write finds after recover_folder
    "while writing": ({"out": "old", ".out.partial-{pid}": "half"}, "old"),
    "between the renames": ({".out.old-{pid}": "old", ".out.partial-{pid}": "new"}, "old"),
    "after the second rename": ({"out": "new", ".out.old-{pid}": "old"}, "new"),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_recover_folder_after_a_kill_at_each_point(tmp_path: Path, point: str) -> None:
    state, expected = KILL_POINTS[point]
    pid = dead_pid()
    for name, text in state.items():
        (tmp_path / name.format(pid=pid)).mkdir()
        (tmp_path / name.format(pid=pid) / "weights").write_text(text)
    recover_folder(tmp_path / "out")
    assert (tmp_path / "out" / "weights").read_text() == expected
    assert leftovers(tmp_path / "out") == []


def test_a_live_writers_partial_folder_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / f".out.partial-{os.getppid()}").mkdir()  # our parent runs: another writer of the same target
    recover_folder(tmp_path / "out")
    assert (tmp_path / f".out.partial-{os.getppid()}").is_dir()


def test_a_failed_write_keeps_the_old_folder_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "weights").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_folder(tmp_path / "out") as partial:
            (partial / "weights").write_text("half")
            raise RuntimeError("disk full")
    assert contents(tmp_path / "out") == {"weights": b"old"} and leftovers(tmp_path / "out") == []
    with atomic_folder(tmp_path / "out") as partial:
        (partial / "weights").write_text("new")
    assert contents(tmp_path / "out") == {"weights": b"new"} and leftovers(tmp_path / "out") == []


WRITER = """
import sys, time
from pathlib import Path
from slakevqa.files import atomic_folder
with atomic_folder(sys.argv[1]) as partial:
    (partial / "weights").write_text("half")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_kill_9_while_writing_keeps_the_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "weights").write_text("old")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert contents(out) == {"weights": b"old"} and leftovers(out) == [f".out.partial-{writer.pid}"]
    with atomic_folder(out) as partial:  # the next run cleans up and writes
        (partial / "weights").write_text("new")
    assert contents(out) == {"weights": b"new"} and leftovers(out) == []


def test_write_text_atomic_cleans_a_killed_writers_temporary_file(tmp_path: Path) -> None:
    stale = tmp_path / f".report.md.tmp-{dead_pid()}-x1y2"
    stale.write_text("half a report")
    write_text_atomic(tmp_path / "report.md", "# report\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


# --- merge and init-tiny (``lora``: conftest.py) --------------------------------------------------------------

@pytest.fixture
def previous(tmp_path: Path) -> Path:
    """An earlier merge output that a failing ``merge --overwrite`` must not lose."""
    out = tmp_path / "merged"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"previous weights")
    return out


def raise_midway(model: object, processor: object, folder: Path) -> None:
    (Path(folder) / "model.safetensors").write_bytes(b"half")
    raise OSError("No space left on device")


MERGE_FAILURES = {
    "bad --base": ({"base": "./no-such-base-folder"}, None, UserError),
    "writer dies midway": ({}, raise_midway, OSError),
}


@pytest.mark.parametrize("case", MERGE_FAILURES)
def test_failing_merge_keeps_the_previous_output(lora: dict, previous: Path, monkeypatch: pytest.MonkeyPatch,
                                                 case: str) -> None:
    kwargs, writer, error = MERGE_FAILURES[case]
    if writer is not None:
        monkeypatch.setattr(tiny, "write_llava", writer)
    before = contents(lora["adapter"])
    with pytest.raises(error):
        merge_adapter(lora["adapter"], previous, device="cpu", dtype="fp32", overwrite=True, **kwargs)
    assert contents(previous) == {"model.safetensors": b"previous weights"}
    assert leftovers(previous) == [] and contents(lora["adapter"]) == before


def test_merge_overwrite_replaces_the_output_once_the_new_one_is_whole(lora: dict, previous: Path) -> None:
    assert main(["merge", str(lora["adapter"]), str(previous), "--overwrite", "--device", "cpu"]) == 0
    merged = contents(previous)
    assert merged["model.safetensors"] != b"previous weights" and "closed_vocab.json" in merged
    assert "adapter_config.json" not in merged and leftovers(previous) == []


OVERLAPS = {  # OUT relative to the adapter folder (runs/lora) or the base -> what the message says
    "OUT is ADAPTER": (lambda m: m["adapter"], "is ADAPTER"),
    "OUT inside ADAPTER": (lambda m: m["adapter"] / "merged", "is inside ADAPTER"),
    "OUT contains ADAPTER": (lambda m: m["adapter"].parent, "contains ADAPTER"),
    "OUT is the base": (lambda m: m["base"], "is the base model folder"),
}


@pytest.mark.parametrize("case", OVERLAPS)
def test_merge_refuses_an_out_that_would_delete_its_input(lora: dict, capsys: pytest.CaptureFixture,
                                                          case: str) -> None:
    out, says = OVERLAPS[case]
    before = {name: contents(folder) for name, folder in lora.items()}
    assert main(["merge", str(lora["adapter"]), str(out(lora)), "--overwrite", "--device", "cpu"]) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and says in message and "write to a folder of its own" in message
    assert {name: contents(folder) for name, folder in lora.items()} == before


def test_init_tiny_overwrite_failing_midway_keeps_the_old_folder(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "tiny"
    assert main(["init-tiny", str(out), "--tokenizer", "bpe"]) == 0
    before = contents(out)
    monkeypatch.setattr(tiny, "write_llava", raise_midway)
    assert main(["init-tiny", str(out), "--tokenizer", "bpe", "--seed", "1", "--overwrite"]) == 2  # one line
    assert contents(out) == before and leftovers(out) == []
    monkeypatch.undo()
    assert main(["init-tiny", str(out), "--tokenizer", "bpe", "--seed", "1", "--overwrite"]) == 0
    assert contents(out)["model.safetensors"] != before["model.safetensors"] and leftovers(out) == []
