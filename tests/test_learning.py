"""It learns: the tiny model, trained on the synthetic SLAKE with the demo's settings, answers
held-out CLOSED questions that need the image, and the same model trained on blanked images cannot.

The target is >= 0.90 held-out CLOSED within 5 minutes of training on the 2-core machine
and >= 0.80 within 3. Time is not asserted (tests are not timed); steps stand for it, from the
rate measured on that machine (benchmarks/RESULTS.md, "Learning on CPU": 13-15 steps/s with the
demo's settings, so 2,000 steps take about 2.5 minutes and 3,000 about 3.5). Measured there:
0.88 after 2,000 steps and 0.94 after 3,000 (0.95 in a 4,000-step run); blank images ~0.5.
Under Hugging Face's schedules (warmup from 0, decay ending one step later; 2026-12-01):
0.853 after 2,000 steps, 0.920 after 3,000, blank images 0.537.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slakevqa.commands.demo import DEMO_TRAINING
from slakevqa.config import make_config
from slakevqa.data.synth import write_synthetic_slake
from slakevqa.evaluation.config import EvalConfig
from slakevqa.evaluation.evaluate import evaluate
from slakevqa.models.tiny import build_tiny_llava
from slakevqa.training.config import TrainConfig
from slakevqa.training.train import train

STEPS, EARLY_STEPS, BLANK_STEPS = 3000, 2000, 1500


def closed_accuracy(model, processor, root: Path, out: Path, blank: bool, name: str = "eval") -> float:
    results = evaluate(make_config(EvalConfig, model_id_or_ckpt=str(out), slake_root=str(root), output_dir=str(out / name),
                                  prompt_style=DEMO_TRAINING["prompt_style"], blank_images=blank, report=False,
                                  batch_size=64), model, processor)
    return results["metrics"]["choice"]["CLOSED"]["value"]


def trained_accuracies(root: Path, out: Path, steps: int, blank: bool, early: int | None = None) -> list[float]:
    """Held-out CLOSED accuracy after ``steps`` (and, from its checkpoint, after ``early`` steps of the same run)."""
    model, processor = build_tiny_llava("mistral", seed=0)
    settings = {**DEMO_TRAINING, "save_steps": early or steps, "save_total_limit": 0, "tb": False}
    train(make_config(TrainConfig, model_id="tiny", slake_root=str(root), output_dir=str(out), max_steps=steps,
                      final_eval=False, blank_images=blank, **settings), model, processor)
    accuracies = [closed_accuracy(model, processor, root, out, blank)]
    if early:
        saved = load_file(str(out / f"checkpoint-{early}" / "trainable.safetensors"))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in saved.items():
                params[name].copy_(tensor)
        accuracies.insert(0, closed_accuracy(model, processor, root, out, blank, "eval_early"))
    return accuracies


@pytest.mark.slow
def test_tiny_model_learns_what_only_the_image_tells(tmp_path: Path) -> None:
    root = write_synthetic_slake(tmp_path / "data", seed=0).out
    early, final = trained_accuracies(root, tmp_path / "images", STEPS, blank=False, early=EARLY_STEPS)
    [blank] = trained_accuracies(root, tmp_path / "blank", BLANK_STEPS, blank=True)
    print(f"held-out CLOSED accuracy: {early:.3f} after {EARLY_STEPS} steps, {final:.3f} after {STEPS}; "
          f"{blank:.3f} with blank images")
    assert early >= 0.80
    assert final >= 0.90
    assert blank <= 0.60
