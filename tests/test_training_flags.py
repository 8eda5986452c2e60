"""Bad flags fail before anything loads; an out-of-memory step fails with advice naming the flags to change."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import slakevqa.training.train as train_module
from slakevqa.cli import main
from slakevqa.config import make_config
from slakevqa.errors import UserError
from slakevqa.training.config import TrainConfig
from slakevqa.training.loss import out_of_memory_advice

BAD = [
    ({"lr": 0.0}, "--lr must be positive"),
    ({"num_epochs": 0, "max_steps": -1}, "nothing to train"),
    ({"save_steps": 0}, "--save_steps must be at least 1"),
    ({"lora_r": 0}, "--lora_r must be at least 1"),
    ({"unfreeze_last_llm_layers": -1}, "--unfreeze_last_llm_layers must be >= 0"),
    ({"mask_pad_ratio": -0.1}, "--mask_pad_ratio must be >= 0"),
    ({"qlora": True, "use_lora": False}, "--qlora .* needs --use_lora"),
    ({"prompt_style": "shrot"}, "unknown prompt style 'shrot'.*Did you mean: short"),
    ({"mask_mode": "crap"}, "--mask_mode must be one of none, crop, masked"),  # YAML skips argparse choices
    ({"tb_hist_every": 0}, "--tb_hist_every must be at least 1"),
    ({"warmup_ratio": 1.5}, r"--warmup_ratio must be in \[0, 1\]"),
    ({"resume_from_checkpoint": "/no/such/checkpoint"}, "not a slakevqa checkpoint"),
    ({"kernels": "triton"}, "--kernels must be one of plain, liger, auto"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[next(iter(o)) for o, _ in BAD])
def test_bad_values_are_rejected_when_the_config_is_made(overrides: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        make_config(TrainConfig, model_id="/no/such/model", **overrides)


def test_defaults_and_epoch_or_step_budgets_are_accepted() -> None:
    TrainConfig()
    make_config(TrainConfig, num_epochs=0, max_steps=5)
    make_config(TrainConfig, use_lora=False, lora_r=8, eval_steps=0, tb_probe_size=0)


def test_cli_reports_the_flag_not_the_missing_model(synth_root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr("slakevqa.models.loading.load_model", no_loading)
    base = ["train", "--model_id", str(tmp_path / "no-such-model"), "--slake_root", str(synth_root),
            "--output_dir", str(tmp_path / "out")]
    assert main(base + ["--lr", "0", "--lora_r", "8"]) == 2
    assert capsys.readouterr().err.strip() == "error: --lr must be positive, got 0.0"
    (tmp_path / "bad.yaml").write_text("mask_mode: crap\n")
    assert main(base + ["--config", str(tmp_path / "bad.yaml")]) == 2
    assert "--mask_mode must be one of" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # rejected before the run wrote anything


def test_out_of_memory_in_a_step_becomes_advice(synth_root: Path, tmp_path: Path, tiny_model, monkeypatch) -> None:
    def answer_loss(model: torch.nn.Module, batch: dict) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_module, "answer_loss", answer_loss)
    cfg = make_config(TrainConfig, model_id="tiny", slake_root=str(synth_root), output_dir=str(tmp_path), max_steps=2, batch_size=4,
                      grad_accum=1, final_eval=False, tb=False, eval_steps=0)
    with pytest.raises(UserError) as caught:
        train_module.train(cfg, *tiny_model)
    message = str(caught.value)
    assert message.startswith("out of memory at step 1 with --batch_size 4 --grad_accum 1, gradient checkpointing off")
    assert "--batch_size 2 --grad_accum 2 (same effective batch)" in message
    assert "--gradient_checkpointing" in message and "--qlora" in message and "--max_prompt_len (now 512)" in message
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)


def test_cpu_allocator_failure_is_advised_and_other_errors_pass_through() -> None:
    cfg = make_config(TrainConfig, batch_size=1, grad_accum=8, gradient_checkpointing=True, use_lora=False)
    with pytest.raises(UserError, match="out of memory at step 3") as caught:
        with out_of_memory_advice(cfg, 3):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: not enough memory")
    assert "same effective batch" not in str(caught.value)  # a batch of 1 cannot be halved
    assert "--use_lora" in str(caught.value) and "--gradient_checkpointing (" not in str(caught.value)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with out_of_memory_advice(cfg, 3):
            raise RuntimeError("shape mismatch")
