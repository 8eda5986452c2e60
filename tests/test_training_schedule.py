"""The learning rate of every optimiser step is ``transformers.get_scheduler``'s, through the real training loop."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import slakevqa.training.schedule as schedule
from slakevqa.config import make_config
from slakevqa.errors import UserError
from slakevqa.training.config import TrainConfig
from slakevqa.training.train import train

STEPS, LR = 6, 1e-2
# ours -> Hugging Face's name, written out here rather than read from schedule.HF_SCHEDULERS
HF_NAMES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def test_docstring_examples_hold() -> None:
    failed, attempted = doctest.testmod(schedule, verbose=False)
    assert attempted > 0 and failed == 0


def test_every_choice_maps_to_a_hugging_face_schedule() -> None:
    from transformers import SchedulerType

    field = next(f for f in TrainConfig.__dataclass_fields__.values() if f.name == "lr_scheduler")
    assert set(HF_NAMES) <= set(field.metadata["choices"]) <= set(schedule.HF_SCHEDULERS)
    assert all(SchedulerType(name) for name in schedule.HF_SCHEDULERS.values())


def hf_rates(name: str, warmup: int) -> list[float]:
    """The learning rate at each of STEPS optimiser steps under ``get_scheduler(name, ...)``, by itself."""
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=STEPS)
    rates = []
    for _ in range(STEPS):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def trained_rates(root: Path, out: Path, **settings: object) -> tuple[list[float], list[float]]:
    """``(rate of each optimiser step as AdamW saw it, learning_rate of trainer_state.json's log_history)``."""
    from slakevqa.models.tiny import build_tiny_llava

    seen: list[float] = []
    hook = register_optimizer_step_pre_hook(  # every optimiser, AdamW inside train() included
        lambda optimizer, args, kwargs: seen.append(optimizer.param_groups[0]["lr"]))
    try:
        train(make_config(TrainConfig, model_id="tiny", slake_root=root, output_dir=out, max_steps=STEPS,
                          batch_size=2, lr=LR, save_steps=STEPS, final_eval=False, tb=False, **settings),
              *build_tiny_llava("bpe", seed=0))
    finally:
        hook.remove()
    history = json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())["log_history"]
    return seen, [entry["learning_rate"] for entry in history]


@pytest.mark.parametrize("ours", sorted(HF_NAMES))
def test_each_step_uses_get_schedulers_rate(ours: str, synth_root: Path, tmp_path: Path) -> None:
    seen, logged = trained_rates(synth_root, tmp_path / "run", lr_scheduler=ours, warmup_steps=2)
    expected = hf_rates(HF_NAMES[ours], warmup=2)
    assert seen == pytest.approx(expected, rel=1e-12, abs=0) and logged == seen
    assert seen[0] == 0.0 and seen[2] == LR  # Hugging Face's warmup: from 0, peak at step `warmup`


def test_warmup_ratio_gives_hugging_faces_warmup_steps(synth_root: Path, tmp_path: Path) -> None:
    # Trainer's get_warmup_steps: ceil(ratio * steps) = ceil(1.8) = 2, where round() would give 2 and int() 1
    seen, _ = trained_rates(synth_root, tmp_path / "run", lr_scheduler="linear", warmup_ratio=0.3)
    assert math.ceil(0.3 * STEPS) == 2
    assert seen == pytest.approx(hf_rates("linear", warmup=2), rel=1e-12, abs=0)


def test_a_run_of_the_old_schedule_is_not_resumed(synth_root: Path, tmp_path: Path) -> None:
    """A folder whose fingerprint has no schedule version was trained under the hand-written schedule."""
    out = tmp_path / "run"
    trained_rates(synth_root, out, warmup_steps=2)
    fingerprint = json.loads((out / "run_fingerprint.json").read_text())
    assert fingerprint["values"]["schedule_version"] == schedule.SCHEDULE_VERSION
    del fingerprint["values"]["schedule_version"]
    (out / "run_fingerprint.json").write_text(json.dumps(fingerprint))
    with pytest.raises(UserError, match="schedule_version: '<unset>' -> 'hf-get_scheduler@v2'.*--overwrite"):
        trained_rates(synth_root, out, warmup_steps=2)
