"""`slakevqa check`, `init-tiny` and the root test.py: counts printed, exit codes, actionable errors."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from slakevqa.cli import main as cli
from slakevqa.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """init-tiny --format llava_med, then convert-checkpoint, both through the CLI."""
    work = tmp_path_factory.mktemp("check")
    assert cli(["init-tiny", str(work / "orig"), "--format", "llava_med", "--tokenizer", "auto"]) == 0
    assert cli(["convert-checkpoint", str(work / "orig"), str(work / "hf")]) == 0
    return work / "hf"


def broken_copy(converted: Path, tmp_path: Path, file: str, edit) -> Path:
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(converted, folder)
    data = json.loads((folder / file).read_text())
    edit(data)
    (folder / file).write_text(json.dumps(data))
    return folder


def test_check_on_converted_tiny_llava_med_prints_the_counts(converted, capsys):
    assert cli(["check", "--model", str(converted), "--max_new_tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert f"loaded: hf model from {converted} (float32 on cpu, sdpa)" in out
    assert "image tokens per image: 16 for a 64 px image (expected 16; " in out
    assert "image tokens at positions 5..20; 5 tokens before" in out  # BOS + "[INST] " = 5 ids
    assert "  projector                24,832 / 24,832" in out  # 64*128+128 + 128*128+128
    assert "  LoRA                          0 / 0" in out
    assert "(4 tokens" in out and out.rstrip().endswith("check passed")


def test_image_count_mismatch_exits_2_with_a_fix(converted, tmp_path, capsys):
    folder = broken_copy(converted, tmp_path, "processor_config.json",
                         lambda d: d.update(num_additional_image_tokens=0))
    assert cli(["check", "--model", str(folder), "--skip_generate"]) == 2
    err = capsys.readouterr().err
    assert "expands one '<image>' into 15 tokens but the vision tower yields 16 features" in err
    assert "set num_additional_image_tokens to 1 in processor_config.json" in err
    assert "Traceback" not in err


def test_image_token_id_disagreement_exits_2(converted, tmp_path, capsys):
    folder = broken_copy(converted, tmp_path, "config.json", lambda d: d.update(image_token_index=5))
    assert cli(["check", "--model", str(folder), "--skip_generate"]) == 2
    assert "'<image>' is id 32000 but the model config says image_token_index 5" in capsys.readouterr().err


def test_tokenizer_without_image_token_is_refused():
    from slakevqa.models.inspect import image_token_id

    tokenizer = SimpleNamespace(convert_tokens_to_ids=lambda token: 0, unk_token_id=0)
    with pytest.raises(UserError, match="tokenizer has no '<image>' token.*convert-checkpoint"):
        image_token_id("<image>", tokenizer, model=None)


def test_check_on_an_unknown_folder_exits_2(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    assert cli(["check", "--model", str(tmp_path)]) == 2
    assert "config.json: not valid JSON" in capsys.readouterr().err


def test_root_test_py_accepts_the_reference_flags(converted, tmp_path, monkeypatch, capsys):
    image = tmp_path / "scan.png"
    from PIL import Image

    Image.new("L", (20, 30), 128).save(image)
    argv = ["test.py", "--model_id", str(converted), "--device", "cpu", "--dtype", "fp32", "--max_new_tokens",
            "3", "--image", str(image), "--question", "Is there a mass?", "--device_map", "auto"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "test.py"), run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert f"generation on {image} (greedy, at most 3 new tokens)" in out and "--device_map" in out


def test_init_tiny_bpe_hf_format_and_refuses_to_overwrite(tmp_path, capsys):
    assert cli(["init-tiny", str(tmp_path / "t"), "--tokenizer", "bpe"]) == 0
    assert "hf format, bpe tokenizer" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= \
        {p.name for p in (tmp_path / "t").iterdir()}
    assert cli(["init-tiny", str(tmp_path / "t")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
