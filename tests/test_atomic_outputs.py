"""Outputs are replaced only once the new one is whole; damaged weights and mistyped model paths are one line;
reports embed only images inside the dataset (issue 14)."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scoring_fixtures import synthetic_rows
from slakevqa.cli import main
from slakevqa.commands.merge import merge_adapter
from slakevqa.errors import UserError
from slakevqa.files import atomic_folder, recover_folder, write_text_atomic
from slakevqa.models import tiny
from slakevqa.models.loading import load_model, resolve_folder
from slakevqa.runs.results import build_results, write_predictions, write_results

quiet = {"log": lambda line: None}


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


# --- merge and init-tiny ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base folder and a LoRA adapter folder that names it."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("lora")
    base = tiny.save_llava(*tiny.build_tiny_llava("bpe", seed=3), root / "base")
    peft_model = get_peft_model(tiny.build_tiny_llava("bpe", seed=3)[0],
                                LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                                           init_lora_weights=False))
    adapter = root / "runs" / "lora"
    peft_model.save_pretrained(str(adapter))
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))
    (adapter / "closed_vocab.json").write_text('["left", "right"]\n')
    return {"base": base, "adapter": adapter}


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
    with pytest.raises(OSError, match="No space left"):
        main(["init-tiny", str(out), "--tokenizer", "bpe", "--seed", "1", "--overwrite"])
    assert contents(out) == before and leftovers(out) == []
    monkeypatch.undo()
    assert main(["init-tiny", str(out), "--tokenizer", "bpe", "--seed", "1", "--overwrite"]) == 0
    assert contents(out)["model.safetensors"] != before["model.safetensors"] and leftovers(out) == []


# --- damaged weights ----------------------------------------------------------------------------------------------

class Payload:
    def __reduce__(self) -> tuple:
        return (print, ("this ran",))


def cut_in_half(folder: Path) -> Path:
    path = next(folder.glob("*.safetensors"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def pickled_bin(folder: Path) -> Path:
    for path in folder.glob("*.safetensors"):
        path.unlink()
    path = folder / "pytorch_model.bin"
    path.write_bytes(pickle.dumps({"weight": Payload()}))
    return path


DAMAGE = {  # which folder is damaged, how -> the file the message names, what it says
    "model safetensors cut short": ("base", cut_in_half, "damaged weights file (cut short"),
    "model .bin with a pickled object": ("base", pickled_bin, "refused: this pickle holds more than tensors"),
    "adapter safetensors cut short": ("adapter", cut_in_half, "damaged weights file (cut short"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_weights_are_one_line_naming_the_file(lora: dict, tmp_path: Path, case: str) -> None:
    import shutil

    which, damage, says = DAMAGE[case]
    folders = {name: shutil.copytree(folder, tmp_path / name) for name, folder in lora.items()}
    path = damage(folders[which])
    with pytest.raises(UserError) as error:
        load_model(folders["adapter"], base=str(folders["base"]), device="cpu", **quiet)
    assert str(error.value).startswith(f"{path}: {says}") and "\n" not in str(error.value)


# --- model arguments: local folder or hub id ----------------------------------------------------------------------

MODEL_ARGUMENTS = {  # argument -> (hub repo asked for, or None; the error's start when one is expected)
    "runs/lora": (None, "runs/lora: no such model folder ('runs' exists here"),
    "./runs/lora": (None, "./runs/lora: no such model folder"),
    "runs/lora/checkpoint-100": (None, "runs/lora/checkpoint-100: no such model folder"),
    "lora": (None, "lora: no such model folder"),
    "runs/real": (None, None),
    "microsoft/llava-med-v1.5-mistral-7b": ("microsoft/llava-med-v1.5-mistral-7b", None),
    "hf://runs/lora": ("runs/lora", None),
}


@pytest.mark.parametrize("argument", MODEL_ARGUMENTS)
def test_a_model_argument_is_local_unless_it_is_clearly_a_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 argument: str) -> None:
    import huggingface_hub

    repo, error = MODEL_ARGUMENTS[argument]
    (tmp_path / "runs" / "real").mkdir(parents=True)
    (tmp_path / "snapshot").mkdir()
    (tmp_path / "snapshot" / "model.safetensors").write_bytes(b"")
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **_: calls.append(repo_id)
                        or str(tmp_path / "snapshot"))
    monkeypatch.chdir(tmp_path)
    if error:
        with pytest.raises(UserError) as raised:
            resolve_folder(argument)
        assert str(raised.value).startswith(error) and "\n" not in str(raised.value)
        if "exists here" in error:
            assert f"hf://{argument}" in str(raised.value)  # says how to ask for the hub
    else:
        assert resolve_folder(argument) == (tmp_path / "snapshot" if repo else Path(argument))
    assert calls == ([repo] if repo else [])


def test_the_readme_hub_id_resolves_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--microsoft--llava-med-v1.5-mistral-7b"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "snapshots" / commit / "model.safetensors").write_bytes(b"")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    assert resolve_folder("microsoft/llava-med-v1.5-mistral-7b") == repo / "snapshots" / commit


# --- report images ------------------------------------------------------------------------------------------------

def test_report_embeds_only_images_inside_the_dataset(tmp_path: Path) -> None:
    from PIL import Image

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
    write_results(run / "results.json", build_results(rows, {"split_file": str(dataset / "test.json")},
                                                      resamples=10))
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
