"""It learns: the tiny model, trained on the synthetic SLAKE with the demo's settings, answers
held-out CLOSED questions that need the image, and the same model trained on blanked images cannot.

Measured on the 2-core CI machine (benchmarks/RESULTS.md, "Learning on CPU"): held-out CLOSED
accuracy 0.66 after 1,000 steps, 0.71 after 2,200, 0.79 after 3,000, 0.86 after 4,000; about
11 steps/s, so 3,000 steps take 4-5 minutes. The issue's target (0.90 within 5 minutes) is not
reached yet; these thresholds pin what is, so a regression fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from slakevqa.commands.demo import DEMO_TRAINING
from slakevqa.data.synth import write_synthetic_slake
from slakevqa.evaluation.config import EvalConfig
from slakevqa.evaluation.evaluate import evaluate
from slakevqa.models.tiny import build_tiny_llava
from slakevqa.training.config import TrainConfig
from slakevqa.training.train import train

STEPS, BLANK_STEPS = 3000, 1500


def closed_accuracy(root: Path, out: Path, steps: int, blank: bool) -> float:
    model, processor = build_tiny_llava("mistral", seed=0)
    settings = {**DEMO_TRAINING, "save_steps": steps, "tb": False}
    train(TrainConfig(model_id="tiny", slake_root=str(root), output_dir=str(out), max_steps=steps,
                      final_eval=False, blank_images=blank, **settings), model, processor)
    results = evaluate(EvalConfig(model_id_or_ckpt=str(out), slake_root=str(root), output_dir=str(out / "eval"),
                                  prompt_style=DEMO_TRAINING["prompt_style"], blank_images=blank, report=False,
                                  batch_size=64), model, processor)
    return results["metrics"]["choice"]["CLOSED"]["value"]


@pytest.mark.slow
def test_tiny_model_learns_what_only_the_image_tells(tmp_path: Path) -> None:
    root = write_synthetic_slake(tmp_path / "data", seed=0).out
    with_images = closed_accuracy(root, tmp_path / "images", STEPS, blank=False)
    blank = closed_accuracy(root, tmp_path / "blank", BLANK_STEPS, blank=True)
    print(f"held-out CLOSED accuracy: {with_images:.3f} with images, {blank:.3f} with blank images")
    assert with_images >= 0.75
    assert blank <= 0.60
    assert with_images - blank >= 0.15
