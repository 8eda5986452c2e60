"""Bad settings (YAML configs, flags) of `train` and `eval`: one line, exit 2, nothing changed, nothing loaded.

The companion of tests/test_bad_inputs_runs.py (whose helpers it borrows), for issue 25's settings:
YAML that is not UTF-8, null or empty values, a key given twice, numbers that are not finite or
out of range, booleans that are not true or false. Each refusal comes from the config itself,
before any model or dataset is read: the runs are replaced by stand-ins that fail the test if reached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from conftest import write_mini_slake
from test_bad_inputs_runs import Case, assert_refused, config, flags, snapshot


def config_bytes(verb: str, content: bytes) -> Callable[[Path, Path], list[str]]:
    def setup(work: Path, model: Path) -> list[str]:
        (work / "run.yaml").write_bytes(content)
        return [verb, "--config", str(work / "run.yaml"), "--slake_root", str(work / "Slake1.0"),
                "--output_dir", str(work / "out")]
    return setup


FINITE = "must be a finite number, got"

CASES = [
    # the file itself
    Case("yaml-latin1", config_bytes("train", b"lr: 0.1\n# caf\xe9\n"),
         ("run.yaml: not UTF-8 text (byte 0xe9 at offset 13); save the file as UTF-8",)),
    Case("yaml-utf16", config_bytes("eval", "split: test\n".encode("utf-16")), ("run.yaml: not UTF-8 text (byte 0xff",)),
    Case("yaml-key-twice", config("train", "lr: 0.1\nseed: 3\nlr: 0.2\n"),
         ("run.yaml: key 'lr' given twice (lines 1 and 3)",)),
    Case("yaml-key-twice-eval", config("eval", "split: test\nbatch_size: 4\n\nsplit: train\n"),
         ("run.yaml: key 'split' given twice (lines 1 and 4)",)),
    Case("yaml-key-twice-flow", config("train", "{lr: 0.1, lr: 0.2}\n"), ("run.yaml: key 'lr' given twice (line 1)",)),
    Case("yaml-key-not-a-name", config("eval", "1: 2\n"), ("run.yaml: key 1 is not a name",)),
    Case("yaml-syntax-line", config("eval", "split: test\nbatch_size: [1\n"), ("run.yaml: invalid YAML at line 3",)),
    # null and empty values: refused unless the setting is optional
    Case("yaml-null", config("train", "lr: null\n"),
         ("run.yaml: key 'lr': expected float, found no value (null)",)),
    Case("yaml-empty-value", config("train", "num_epochs:\n"),
         ("run.yaml: key 'num_epochs': expected float, found no value",)),
    Case("yaml-tilde-bool", config("train", "use_lora: ~\n"),
         ("run.yaml: key 'use_lora': expected true or false, found no value",)),
    Case("yaml-null-choice", config("eval", "mask_mode: null\n"),
         ("run.yaml: key 'mask_mode': expected one of none, crop, masked, found no value",)),
    Case("yaml-null-text", config("eval", "split:\n"), ("run.yaml: key 'split': expected str, found no value",)),
    Case("yaml-null-int", config("eval", "seed: null\n"), ("run.yaml: key 'seed': expected int, found no value",)),
    Case("yaml-null-translated", config("train", "bf16:\n"),
         ("run.yaml: key 'bf16': expected true or false, found no value",)),
    Case("yaml-null-alias", config("train", "learning_rate: null\n"),
         ("run.yaml: key 'lr': expected float, found no value",)),
    # types: booleans are true or false, numbers are numbers
    Case("yaml-bool-maybe", config("train", "bf16: 'maybe'\n"), ("run.yaml: key 'bf16': expected true or false",)),
    Case("yaml-bool-as-number", config("train", "use_lora: 1\n"),
         ("run.yaml: key 'use_lora': expected true or false, found 1",)),
    Case("yaml-int-as-bool", config("eval", "batch_size: true\n"), ("run.yaml: key 'batch_size': expected int, found True",)),
    Case("yaml-int-fraction", config("eval", "batch_size: 2.5\n"), ("run.yaml: key 'batch_size': expected int, found 2.5",)),
    Case("yaml-float-as-text", config("train", "lr: fast\n"), ("run.yaml: key 'lr': expected float, found 'fast'",)),
    # numbers that are not finite, wherever they come from
    Case("yaml-inf-lr", config("train", "lr: .inf\n"), (f"--lr {FINITE} inf",)),
    Case("yaml-nan-text-lr", config("train", "learning_rate: 'nan'\n"), (f"--lr {FINITE} nan",)),
    Case("yaml-nan-temperature", config("eval", "temperature: .nan\n"), (f"--temperature {FINITE} nan",)),
    Case("yaml-inf-pad", config("eval", "mask_pad_ratio: .inf\n"), (f"--mask_pad_ratio {FINITE} inf",)),
    Case("yaml-inf-int", config("train", "save_steps: .inf\n"), ("run.yaml: key 'save_steps': expected int, found inf",)),
    Case("flag-epochs-nan", flags("train", "--num_epochs", "nan"), (f"--num_epochs {FINITE} nan",)),
    Case("flag-lr-inf", flags("train", "--lr", "inf"), (f"--lr {FINITE} inf",)),
    Case("flag-lr-nan-hf", flags("train", "--learning_rate", "nan"), (f"--lr {FINITE} nan",)),
    Case("flag-pad-inf", flags("eval", "--mask_pad_ratio", "inf"), (f"--mask_pad_ratio {FINITE} inf",)),
    Case("flag-pad-inf-train", flags("train", "--mask_pad_ratio", "inf"), (f"--mask_pad_ratio {FINITE} inf",)),
    Case("flag-weight-decay-inf", flags("train", "--weight_decay", "inf"), (f"--weight_decay {FINITE} inf",)),
    Case("flag-grad-norm-inf", flags("train", "--max_grad_norm", "inf"), (f"--max_grad_norm {FINITE} inf",)),
    Case("flag-mc-weight-nan", flags("train", "--closed_mc_weight", "nan"), (f"--closed_mc_weight {FINITE} nan",)),
    Case("flag-warmup-nan", flags("train", "--warmup_ratio", "nan"), (f"--warmup_ratio {FINITE} nan",)),
    Case("flag-temperature-inf", flags("eval", "--temperature", "inf", "--do_sample"), (f"--temperature {FINITE} inf",)),
    # ranges
    Case("flag-seed-negative", flags("train", "--seed", "-1"), ("--seed must be in [0, 2**32)", "got -1")),
    Case("flag-seed-too-big", flags("eval", "--seed", str(2**32)), ("--seed must be in [0, 2**32)", "got 4294967296")),
    Case("score-seed-negative", lambda work, model: ["score", str(work / "none.jsonl"), "--seed", "-1"],
         ("--seed must be in [0, 2**32)", "got -1")),
    Case("synth-seed-negative", lambda work, model: ["synth", "--out", str(work / "synth"), "--seed", "-1"],
         ("--seed must be in [0, 2**32)",)),
    Case("init-tiny-seed-negative", lambda work, model: ["init-tiny", str(work / "tiny"), "--seed", "-5"],
         ("--seed must be in [0, 2**32)",)),
    Case("flag-epochs-negative", flags("train", "--num_epochs", "-1"), ("--num_epochs must be >= 0", "got -1.0")),
    Case("flag-max-steps", flags("train", "--max_steps", "-2"), ("--max_steps must be >= -1", "got -2")),
    Case("flag-dropout-one", flags("train", "--lora_dropout", "1"), ("--lora_dropout must be in [0, 1)", "got 1.0")),
    Case("flag-warmup-ratio", flags("train", "--warmup_ratio", "-0.5"), ("--warmup_ratio must be in [0, 1]",)),
    Case("flag-lora-r-zero", flags("train", "--lora_r", "0"), ("--lora_r must be at least 1, got 0",)),
    Case("flag-limit-negative", flags("eval", "--limit", "-1"), ("--limit must be >= 0", "got -1")),
    Case("flag-no-new-tokens", flags("eval", "--max_new_tokens_open_default", "0"),
         ("--max_new_tokens_open_default must be at least 1, got 0",)),
    Case("flag-prompt-len-zero", flags("eval", "--max_prompt_len", "0"), ("--max_prompt_len must be at least 1, got 0",)),
    # boolean flags with a value (Hugging Face's --bf16 True)
    Case("flag-bool-maybe", flags("train", "--bf16", "maybe"), ("--bf16 expects true or false", "'maybe'")),
    Case("flag-bool-setting-maybe", flags("eval", "--report", "sometimes"), ("--report expects true or false",)),
    Case("flag-no-with-value", flags("train", "--no-use_lora", "true"),
         ("--no-use_lora takes no value, got 'true'", "--use_lora false")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_setting_is_one_line_and_changes_nothing(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def reached(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run started before the settings were refused")

    monkeypatch.setattr("slakevqa.training.train.train", reached)
    monkeypatch.setattr("slakevqa.evaluation.evaluate.evaluate", reached)
    write_mini_slake(tmp_path / "Slake1.0")
    monkeypatch.chdir(tmp_path)
    argv = case.setup(tmp_path, tmp_path / "no-model")
    before = snapshot(tmp_path)
    assert_refused(argv, case.fragments, capsys)
    assert snapshot(tmp_path) == before  # nothing written, not even the output folder
