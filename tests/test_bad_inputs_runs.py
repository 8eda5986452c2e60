"""Bad inputs around runs (the commands, src/slakevqa/commands/ through slakevqa.cli): configs, answer files,
checkpoints and output folders.

The companion of tests/test_bad_inputs_data.py (data files, images, masks, boxes, KG): one
table, one test. Each case builds what it needs in a fresh folder, runs one command line and
checks that it ends in exit code 2 with one line naming the file (and the key, line or flag
that is wrong), with no traceback, and that every file that was there before is
byte-for-byte what it was. Nothing here loads model weights: each refusal comes first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import write_mini_slake
from slakevqa.cli import main


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def assert_refused(argv: list[str], fragments: tuple[str, ...], capsys: pytest.CaptureFixture) -> str:
    """Run ``slakevqa ARGV``: exit 2, one stderr line holding every fragment, no traceback; returns the line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


# ---------------------------------------------------------------- setups: each returns the command line

def config(verb: str, text: str, *extra: str) -> Callable[[Path, Path], list[str]]:
    def setup(work: Path, model: Path) -> list[str]:
        (work / "run.yaml").write_text(text, encoding="utf-8")
        return [verb, "--config", str(work / "run.yaml"), "--slake_root", str(work / "Slake1.0"),
                "--output_dir", str(work / "out"), *extra]
    return setup


def flags(verb: str, *extra: str) -> Callable[[Path, Path], list[str]]:
    def setup(work: Path, model: Path) -> list[str]:
        return [verb, "--slake_root", str(work / "Slake1.0"), "--output_dir", str(work / "out"),
                *[part.format(model=model, work=work) for part in extra]]
    return setup


def answers(content: bytes | str, *extra: str) -> Callable[[Path, Path], list[str]]:
    def setup(work: Path, model: Path) -> list[str]:
        path = work / "answers.jsonl"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return ["score", str(path), "--slake_root", str(work / "Slake1.0"), *extra]
    return setup


PREDICTION = {"qid": 20, "question": "Is there a liver?", "answer": "Yes", "answer_type": "CLOSED",
              "prediction": "Yes"}


def model_copy(change: Callable[[Path], None], verb: str = "eval") -> Callable[[Path, Path], list[str]]:
    """A copy of the tiny model, changed; then ``eval`` (or ``merge``) of it."""
    def setup(work: Path, model: Path) -> list[str]:
        copy = work / "model"
        shutil.copytree(model, copy)
        change(copy)
        if verb == "merge":
            return ["merge", str(copy), str(work / "merged")]
        return ["eval", "--model_id_or_ckpt", str(copy), "--slake_root", str(work / "Slake1.0"),
                "--output_dir", str(work / "out"), "--device", "cpu"]
    return setup


def truncate_weights(folder: Path) -> None:
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])


def pickle_weights(folder: Path) -> None:
    import pickle

    next(folder.glob("*.safetensors")).unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"not": "tensors", "call": print}))


def undeclared_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["model_type"] = "qwen2"  # a LLaVA no family declares (LLaVA-OneVision's language model)
    (folder / "config.json").write_text(json.dumps(config))


def half_published(folder: Path) -> None:
    from slakevqa.models.model_files import READY_NAME

    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(folder)}))
    (folder / READY_NAME).write_text("")


def into_itself(work: Path, model: Path) -> list[str]:
    adapter = work / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model)}))
    return ["merge", str(adapter), str(adapter / "merged")]


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path, Path], list[str]]
    fragments: tuple[str, ...]

    def __repr__(self) -> str:
        return self.id


CASES = [
    # YAML configs: the file, the key, what it must be
    Case("yaml-syntax", config("train", "lr: [1, 2\n"), ("run.yaml: invalid YAML",)),
    Case("yaml-not-a-mapping", config("eval", "- split\n- test\n"), ("run.yaml: expected a mapping", "list")),
    Case("yaml-unknown-key", config("train", "learnig_rate: 0.1\n"),
         ("run.yaml: unknown key 'learnig_rate'; did you mean learning_rate",)),
    Case("yaml-wrong-type", config("eval", "batch_size: big\n"), ("run.yaml: key 'batch_size': expected int",)),
    Case("yaml-bool-as-text", config("train", "bf16: 'maybe'\n"), ("run.yaml: key 'bf16': expected true or false",)),
    Case("yaml-input-choice", config("train", "mask_mode: cropped\n"),
         ("--mask_mode must be one of none, crop, masked, got 'cropped'",)),
    Case("yaml-eval-mode", config("eval", "mode: evaluate\n"), ("--mode must be one of eval, diagnose",)),
    Case("yaml-data-source", config("eval", "data_source: s3\n"), ("--data_source must be one of local, hf",)),
    Case("yaml-triples-mode", config("eval", "triples_mode: all\n"), ("--triples_mode must be one of",)),
    Case("yaml-two-spellings", config("train", "lr: 0.1\nlearning_rate: 0.2\n"),
         ("run.yaml: 'learning_rate' and 'lr' both set lr",)),
    Case("yaml-precision-twice", config("train", "precision: fp32\nbf16: true\n"),
         ("run.yaml: 'bf16' and 'precision' both set precision",)),
    Case("yaml-finetuning-freeze", config("train", "finetuning_type: freeze\n"), ("finetuning_type 'freeze'",)),
    Case("yaml-8bit-training", config("train", "quantization_bit: 8\n"), ("quantization_bit 8", "4 bits only")),
    Case("yaml-negative-pad", config("eval", "mask_pad_ratio: -0.1\n"), ("--mask_pad_ratio must be >= 0",)),
    Case("yaml-prompt-style", config("eval", "prompt_style: fancy\n"), ("prompt style", "fancy")),
    Case("yaml-missing", lambda work, model: ["eval", "--config", str(work / "nope.yaml")],
         ("nope.yaml: config file not found",)),
    # flags: ranges and combinations
    Case("flag-negative-lr", flags("train", "--lr", "-1"), ("--lr must be positive, got -1.0",)),
    Case("flag-zero-batch", flags("eval", "--batch_size", "0"), ("--batch_size must be at least 1, got 0",)),
    Case("flag-sampling-cold", flags("eval", "--do_sample"), ("--do_sample needs --temperature > 0",)),
    Case("flag-unknown-tracker", flags("train", "--report_to", "wandb,tensorbord"),
         ("--report_to 'wandb,tensorbord': use none, or a comma list of",)),
    Case("flag-two-quantisations", flags("eval", "--load_in_4bit", "--load_in_8bit"), ("choose one",)),
    Case("flag-qlora-without-lora", flags("train", "--qlora", "--no-use_lora"), ("--qlora", "--use_lora")),
    Case("flag-lmms-model-args", flags("eval", "--model_args", "dtype=bf16"), ("--model_args", "pretrained=")),
    # answer files given to `score`: the file and the line
    Case("answers-bad-middle-line", answers(json.dumps(PREDICTION) + "\n{broken\n" + json.dumps(PREDICTION) + "\n"),
         ("answers.jsonl", "line 2")),
    Case("answers-latin1", answers(b'{"question_id": 20, "text": "caf\xe9"}\n'), ("answers.jsonl", "not UTF-8")),
    Case("answers-empty", answers(""), ("answers.jsonl",)),
    Case("answers-array", answers("[" + json.dumps(PREDICTION) + "]"), ("answers.jsonl",)),
    # checkpoints: refused before any weight is read
    Case("weights-truncated", model_copy(truncate_weights), ("model.safetensors",)),
    Case("weights-pickle", model_copy(pickle_weights), ("pytorch_model.bin",)),
    Case("weights-undeclared-family", model_copy(undeclared_config),
         ("a llava with a qwen2 language model checkpoint", "no slakevqa model family declares", "docs/families.md")),
    Case("weights-half-published-eval", model_copy(half_published), ("last save was interrupted",)),
    Case("weights-half-published-merge", model_copy(half_published, "merge"), ("last save was interrupted",)),
    Case("model-path-typo", flags("eval", "--model_id_or_ckpt", "runs/lora"), ("runs/lora",)),
    Case("merge-into-its-input", into_itself, ("OUT", "inside")),
    Case("merge-not-an-adapter", lambda work, model: ["merge", str(model), str(work / "merged")],
         ("not a LoRA adapter folder",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_run_input_is_one_line_and_changes_nothing(case: Case, tmp_path: Path, saved_tiny: Path,
                                                       capsys: pytest.CaptureFixture, monkeypatch) -> None:
    write_mini_slake(tmp_path / "Slake1.0")
    monkeypatch.chdir(tmp_path)  # a relative model path is looked up here, not in the repository
    argv = case.setup(tmp_path, saved_tiny)
    before, model_before = snapshot(tmp_path), snapshot(saved_tiny)
    assert_refused(argv, case.fragments, capsys)
    after = snapshot(tmp_path)
    assert {name: digest for name, digest in after.items() if name in before} == before
    assert snapshot(saved_tiny) == model_before
