"""The README's tiny-model walk-through runs as written, and its facts match the code."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def walkthrough_commands() -> list[list[str]]:
    """The shell commands of the "Tiny-model walk-through" section, continuation lines joined."""
    section = README.read_text(encoding="utf-8").split("## Tiny-model walk-through", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line]


def test_readme_opens_with_the_two_commands() -> None:
    head = README.read_text(encoding="utf-8").splitlines()[:6]
    assert head[3].startswith("make demo") and head[4].startswith("make test")


@pytest.mark.slow
def test_tiny_walkthrough_runs_as_written(tmp_path: Path) -> None:
    commands = walkthrough_commands()
    assert [c[1] for c in commands] == ["synth", "init-tiny", "train", "eval", "report"]
    for command in commands:
        assert command[0] == "slakevqa"
        done = subprocess.run([sys.executable, "-m", "slakevqa", *command[1:]], cwd=tmp_path,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{shlex.join(command)}\n{done.stderr[-3000:]}"
        if command[1] == "eval":  # the eval command writes the report itself, before `report` redraws it
            assert (tmp_path / "work/run/eval/report.html").is_file()
    results = json.loads((tmp_path / "work/run/eval/results.json").read_text())
    assert results["counts"]["total"] > 600
    assert (tmp_path / "work/run/eval/report.html").is_file()
    # the train command writes its final evaluation's report
    assert (tmp_path / "work/run/eval_test/report.html").is_file()
    assert (tmp_path / "work/run/model.safetensors").is_file()


def test_flags_doc_is_current() -> None:
    from slakevqa.commands.flags_doc import render

    current = (README.parent / "docs" / "flags.md").read_text(encoding="utf-8")
    assert current == render(), "docs/flags.md is stale: python -m slakevqa.commands.flags_doc > docs/flags.md"
    for flag in ("--model_id", "--lora_target_modules", "--closed_candidate_mode", "--check_batch_invariance",
                 "--mm_use_im_start_end", "--skip_generate", "--tb_probe_size", "--run_final_eval", "--learning_rate"):
        assert f"`{flag}`" in current
