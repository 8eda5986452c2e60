"""Checkpoints through accelerate's save_state / load_state: trainable weights only, atomic, HF's trainer_state.json.

Whole runs killed and resumed: tests/test_training_resume.py (one process) and
tests/test_distributed.py (FSDP, two processes).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from slakevqa.errors import UserError
from slakevqa.training.checkpoint import (
    TRAINABLE_NAME,
    check_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_trainer_state,
    register_checkpoint_hooks,
    resolve_resume,
    save_checkpoint,
    write_trainer_state,
)

HISTORY = [{"step": 1, "epoch": 0.5, "loss": 2.5, "learning_rate": 0.0, "grad_norm": 1.5},
           {"step": 2, "epoch": 1.0, "loss": 2.25, "learning_rate": 1e-3, "grad_norm": 1.25}]


def prepared():
    """A fresh accelerator with a model (one frozen, one trainable layer), AdamW and a Hugging Face schedule."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from slakevqa.training.schedule import build_scheduler

    AcceleratorState._reset_state()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 1))
    model[0].requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = build_scheduler(optimizer, "cosine", 10, 2)
    accelerator = Accelerator(cpu=True, step_scheduler_with_optimizer=False)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    register_checkpoint_hooks(accelerator)
    return accelerator, model, optimizer, scheduler


def step(model, optimizer, scheduler) -> float:
    loss = model(torch.randn(8, 4)).pow(2).mean()  # randn and dropout: both draw from the RNG
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return loss.item()


def test_resumed_steps_equal_uninterrupted_ones(tmp_path: Path) -> None:
    accelerator, model, optimizer, scheduler = prepared()
    for n in range(1, 4):
        step(model, optimizer, scheduler)
        save_checkpoint(accelerator, tmp_path, n, lambda folder, n=n: write_trainer_state(folder, n, 10, HISTORY[:1]), 2)
    expected = [step(model, optimizer, scheduler) for _ in range(3)] + [random.random()]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]  # save_total_limit
    files = {p.name for p in (tmp_path / "checkpoint-3").iterdir()}
    assert {TRAINABLE_NAME, "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "trainer_state.json"} <= files
    assert not any(name.startswith("model") for name in files)  # the frozen layer is never copied
    from safetensors.torch import load_file

    assert sorted(load_file(tmp_path / "checkpoint-3" / TRAINABLE_NAME)) == ["2.bias", "2.weight"]

    # A fresh start: the frozen layer is the base the run started from, the trainable one untrained,
    # the optimiser empty, the schedule at 0, the RNG elsewhere; the checkpoint restores all but the first.
    accelerator, model, optimizer, scheduler = prepared()
    torch.manual_seed(123)
    load_checkpoint(accelerator, tmp_path / "checkpoint-3")
    assert scheduler.scheduler.last_epoch == 3
    assert [step(model, optimizer, scheduler) for _ in range(3)] + [random.random()] == expected


def test_a_killed_save_leaves_no_checkpoint_and_the_next_save_clears_it(tmp_path: Path) -> None:
    accelerator, *_ = prepared()
    (tmp_path / ".checkpoint-5.tmp").mkdir()  # what a kill during save 5 leaves
    assert list_checkpoints(tmp_path) == [] and resolve_resume("auto", tmp_path) is None
    save_checkpoint(accelerator, tmp_path, 6, lambda folder: write_trainer_state(folder, 6, 10, HISTORY), 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6"]
    assert resolve_resume("auto", tmp_path) == tmp_path / "checkpoint-6"


def test_trainer_state_is_hugging_faces(tmp_path: Path) -> None:
    from transformers.trainer_callback import TrainerState

    write_trainer_state(tmp_path, 2, 10, HISTORY, save_steps=2, train_batch_size=4)
    state = TrainerState.load_from_json(str(tmp_path / "trainer_state.json"))
    assert (state.global_step, state.max_steps, state.epoch, state.save_steps) == (2, 10, 1.0, 2)
    assert state.log_history == HISTORY
    assert read_trainer_state(tmp_path)["log_history"] == HISTORY


def fake_checkpoint(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True)
    for name in ("trainer_state.json", *names):
        (folder / name).write_text("{}")
    return folder


@pytest.mark.parametrize("names, fsdp, message", [
    (("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt"), False, "older slakevqa"),
    ((TRAINABLE_NAME, "optimizer.bin"), False, "no random_states"),
    (("pytorch_model_fsdp_0", "random_states_0.pkl"), False, "written under FSDP, resumed without it"),
    ((TRAINABLE_NAME, "random_states_0.pkl"), True, "written without FSDP, resumed under it"),
    (("random_states_0.pkl", "optimizer.pt", "rng_state.pth"), False, "no trainable.safetensors"),
])
def test_checkpoints_this_run_cannot_resume_are_refused(tmp_path: Path, names: tuple, fsdp: bool,
                                                        message: str) -> None:
    with pytest.raises(UserError, match=message):
        check_checkpoint(fake_checkpoint(tmp_path / "checkpoint-4", *names), fsdp)


def test_resumable_checkpoints_pass(tmp_path: Path) -> None:
    # written by 1 or 2 processes: either resumes on any number (training/elastic.py)
    check_checkpoint(fake_checkpoint(tmp_path / "a", TRAINABLE_NAME, "random_states_0.pkl"), False)
    check_checkpoint(fake_checkpoint(tmp_path / "c", TRAINABLE_NAME, "random_states_0.pkl", "random_states_1.pkl"),
                     False)
    check_checkpoint(fake_checkpoint(tmp_path / "b", "pytorch_model_fsdp_0", "random_states_0.pkl",
                                     "random_states_1.pkl"), True)
    with pytest.raises(UserError, match="not a slakevqa checkpoint"):
        resolve_resume(str(tmp_path / "nothing"), tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "trainer_state.json").write_text(json.dumps({"step": 4, "losses": []}))  # the old schema
    with pytest.raises(UserError, match="no global_step"):
        read_trainer_state(tmp_path / "bad")
