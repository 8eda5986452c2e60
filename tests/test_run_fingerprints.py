"""Run fingerprints: a rerun resumes only the same run; trained outputs are published whole."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from slakevqa.cli import main
from slakevqa.config import make_config, setting_value, settings_of
from slakevqa.errors import UserError
from slakevqa.evaluation.config import EvalConfig
from slakevqa.evaluation.evaluate import evaluate
from slakevqa.models.fingerprint import model_fingerprint
from slakevqa.runs.fingerprint import FINGERPRINT_NAME


def eval_cfg(root: Path, out: Path, **overrides) -> EvalConfig:
    return make_config(EvalConfig, **{"model_id_or_ckpt": "tiny", "slake_root": str(root), "output_dir": str(out), "limit": 4,
                         "batch_size": 4, "report": False, "device": "cpu", **overrides})


def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(cfg, rank):
        raise AssertionError("the model was loaded before the fingerprint check")

    monkeypatch.setattr("slakevqa.evaluation.evaluate.load_for_eval", refuse)


@pytest.mark.parametrize("module", ["slakevqa.evaluation.config", "slakevqa.training.config"])
def test_every_config_field_is_decided_once(module: str) -> None:
    import importlib

    config = importlib.import_module(module)
    cls = config.EvalConfig if hasattr(config, "EvalConfig") else config.TrainConfig
    names = {s.name for s in settings_of(cls)}
    assert not set(config.RESULT_FIELDS) & set(config.NEUTRAL_FIELDS)
    assert set(config.RESULT_FIELDS) | set(config.NEUTRAL_FIELDS) == names


def test_another_model_into_a_used_folder_is_refused_before_loading(synth_root: Path, tmp_path: Path,
                                                                     monkeypatch, capsys) -> None:
    from slakevqa.models.tiny import build_tiny_llava, save_llava

    a, b = save_llava(*build_tiny_llava("bpe", seed=0), tmp_path / "A"), save_llava(
        *build_tiny_llava("bpe", seed=1), tmp_path / "B")
    out = tmp_path / "eval"
    argv = ["eval", "--slake_root", str(synth_root), "--output_dir", str(out), "--limit", "3", "--no-report",
            "--device", "cpu"]
    assert main([*argv, "--model_id_or_ckpt", str(a)]) == 0, capsys.readouterr().err
    before = (out / "predictions.jsonl").read_bytes()
    capsys.readouterr()
    no_loading(monkeypatch)
    assert main([*argv, "--model_id_or_ckpt", str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"model: {a} (weights " in err and f"-> {b} (weights " in err and "--overwrite" in err
    assert (out / "predictions.jsonl").read_bytes() == before
    # the same model moved elsewhere is the same model: it resumes
    monkeypatch.undo()
    a.rename(tmp_path / "A-moved")
    assert main([*argv, "--model_id_or_ckpt", str(tmp_path / "A-moved")]) == 0
    assert (out / "predictions.jsonl").read_bytes() == before


@pytest.mark.parametrize("field, value", [("prompt_style", "plain"), ("mask_mode", "crop"),
                                          ("split", "validation"), ("max_new_tokens_open_default", 4)])
def test_a_changed_setting_is_refused_naming_the_field(field: str, value, synth_root: Path, tmp_path: Path,
                                                       tiny_model, monkeypatch) -> None:
    evaluate(eval_cfg(synth_root, tmp_path), *tiny_model)
    old = setting_value(eval_cfg(synth_root, tmp_path), field)
    no_loading(monkeypatch)
    with pytest.raises(UserError) as refused:
        evaluate(eval_cfg(synth_root, tmp_path, **{field: value}))
    assert f"{field}: {old!r} -> {value!r}" in str(refused.value) and "\n" not in str(refused.value)


def test_same_settings_resume_and_overwrite_answers_afresh(synth_root: Path, tmp_path: Path, tiny_model,
                                                           caplog) -> None:
    evaluate(eval_cfg(synth_root, tmp_path), *tiny_model)
    with caplog.at_level(logging.INFO):
        evaluate(eval_cfg(synth_root, tmp_path, batch_size=2), *tiny_model)  # batch size does not change answers
    assert "resuming: 4 questions already answered, 0 to go" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        results = evaluate(eval_cfg(synth_root, tmp_path, prompt_style="plain", overwrite=True), *tiny_model)
    assert "resuming" not in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and results["provenance"]["prompt_version"].startswith("plain@")
    recorded = json.loads((tmp_path / FINGERPRINT_NAME).read_text())["values"]
    assert recorded["prompt_style"] == "plain"


def test_a_folder_with_answers_but_no_fingerprint_is_refused(synth_root: Path, tmp_path: Path, tiny_model) -> None:
    evaluate(eval_cfg(synth_root, tmp_path), *tiny_model)
    (tmp_path / FINGERPRINT_NAME).unlink()  # as an older slakevqa left it
    with pytest.raises(UserError, match="without a fingerprint"):
        evaluate(eval_cfg(synth_root, tmp_path), *tiny_model)


def test_a_garbage_middle_line_is_one_line_a_torn_last_line_is_cut(tmp_path: Path) -> None:
    from slakevqa.evaluation.store import recover_predictions

    good = {"qid": 1, "question": "q", "answer": "a", "answer_type": "OPEN", "prediction": "a", "route": "open"}
    path = tmp_path / "predictions.jsonl"
    line = json.dumps(good)
    path.write_text(f"{line}\n{line.replace('1', '2', 1)}\n" + '{"qid": 3, "quest')
    assert [p.qid for p in recover_predictions(path)] == [1, 2]
    assert path.read_text().endswith("\n")  # the torn tail is gone
    path.write_text(f"{line}\nnot json at all\n{line.replace('1', '3', 1)}\n")
    with pytest.raises(UserError) as bad:
        recover_predictions(path)
    assert str(bad.value).startswith(f"{path}: line 2: not JSON") and "\n" not in str(bad.value)
    path.write_bytes(line.encode() + b"\n\xff\xfe\n")
    with pytest.raises(UserError, match="line 2: not UTF-8"):
        recover_predictions(path)


@pytest.fixture
def yes_no_slake(tmp_path: Path) -> Path:
    """The conftest mini SLAKE with yes/no CLOSED questions (they need no closed vocabulary)."""
    from conftest import default_splits, write_mini_slake

    splits = {split: [{**row, "question": "Does the picture contain liver?"} if row["answer_type"] == "CLOSED"
                      else row for row in rows] for split, rows in default_splits().items()}
    return write_mini_slake(tmp_path / "Slake1.0", splits)


def train_cfg(root: Path, out: Path, steps: int, **overrides):
    from slakevqa.training.config import TrainConfig

    return make_config(TrainConfig, **{"model_id": "tiny", "slake_root": str(root), "output_dir": str(out), "max_steps": steps,
                          "save_steps": 2, "batch_size": 2, "lr": 5e-3, "tb": False, "final_eval": True, **overrides})


def test_a_longer_run_resumes_and_evaluates_its_own_model(yes_no_slake: Path, tmp_path: Path, caplog) -> None:
    from slakevqa.models.tiny import build_tiny_llava
    from slakevqa.training.train import train

    out = tmp_path / "run"
    first = train(train_cfg(yes_no_slake, out, 2), *build_tiny_llava("bpe", seed=0))
    two_steps = model_fingerprint(out)["sha256"]
    assert first.results["provenance"]["model_fingerprint"]["sha256"] == two_steps
    with caplog.at_level(logging.INFO):
        second = train(train_cfg(yes_no_slake, out, 6), *build_tiny_llava("bpe", seed=0))
    assert "resumed from" in caplog.text and "at step 2 of 6" in caplog.text
    assert "resuming:" not in caplog.text  # the final evaluation answered afresh
    six_steps = model_fingerprint(out)["sha256"]
    assert six_steps != two_steps
    assert second.results["provenance"]["model_fingerprint"]["sha256"] == six_steps
    recorded = json.loads((out / "eval_test" / FINGERPRINT_NAME).read_text())["values"]
    assert recorded["model_weights"] == model_fingerprint(out)["sha256"]
    # a shorter run into the longer one's folder is refused, not published as the 6-step model
    with pytest.raises(UserError, match="already took 6 optimiser steps, more than the 2"):
        train(train_cfg(yes_no_slake, out, 2), *build_tiny_llava("bpe", seed=0))
    # a changed training setting is refused before loading, naming it
    with pytest.raises(UserError, match=r"lora_r: 8 -> 4"):
        train(train_cfg(yes_no_slake, out, 6, lora_r=4), *build_tiny_llava("bpe", seed=0))
    # --overwrite trains afresh (no resume) and replaces the saved model
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train(train_cfg(yes_no_slake, out, 2, lora_r=4, overwrite=True, final_eval=False),
              *build_tiny_llava("bpe", seed=0))
    assert "resumed from" not in caplog.text
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4


def test_a_failing_save_leaves_the_previous_output_whole(yes_no_slake: Path, tmp_path: Path, monkeypatch) -> None:
    import slakevqa.training.trained_output as trained_output
    from slakevqa.models.model_files import READY_NAME
    from slakevqa.models.tiny import build_tiny_llava
    from slakevqa.training.train import train
    from slakevqa.training.trained_output import save_trained

    out = tmp_path / "run"
    result = train(train_cfg(yes_no_slake, out, 2, final_eval=False), *build_tiny_llava("bpe", seed=0))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    model, processor = build_tiny_llava("bpe", seed=5)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(trained_output, "save_processor", broken)
    with pytest.raises(OSError):
        save_trained(model, processor, out, "tiny")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not (out / READY_NAME).exists() and result.steps == 2


def test_a_save_killed_after_its_commit_is_finished_by_the_next_run(tmp_path: Path, monkeypatch) -> None:
    import os

    from slakevqa.models import model_files

    out = tmp_path / "run"
    out.mkdir()
    (out / "adapter_model.safetensors").write_text("old weights")
    (out / "adapter_config.json").write_text("old config")
    stage = model_files.start_publish(out)
    (stage / "model.safetensors").write_text("new weights")  # a full model replaces an adapter
    (stage / "config.json").write_text("new config")
    real_replace, calls = os.replace, []

    def killed(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the kill lands between two moves
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        model_files.publish(stage, out)
    monkeypatch.undo()
    assert (out / model_files.READY_NAME).is_dir()  # evaluation refuses such a folder (check_not_half_saved)
    with pytest.raises(UserError, match="interrupted"):
        evaluate(make_config(EvalConfig, model_id_or_ckpt=str(out), output_dir=str(tmp_path / "e")))
    model_files.finish_publish(out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_text() == "new weights"
