"""It learns, as LLaVA-1.5: the family's tiny model (byte-level BPE tokenizer), trained on the synthetic SLAKE
with the demo's settings, answers held-out CLOSED questions that only the image tells.

Untrained, the same model is at chance; and the answer a question's text alone predicts best (the most frequent
training answer for that text) is at about half, so an accuracy well above that is read off the images.
Steps: measured on the 2-core machine, seed 0/1/2, about 38 steps/s (so 1,500 steps take ~40 s):

=====  ==================  ======================
steps  held-out CLOSED     note
=====  ==================  ======================
1000   0.760               too close to 0.75
1250   0.787 / 0.773
1500   0.817 / 0.810 / 0.807  chosen
2000   0.857
=====  ==================  ======================

With transformers' default initialisation (std 0.02) and 2 vision layers the tiny model stalled at 0.55
after 1,000 steps; ``llava_1_5.tiny_config`` now takes the learnability-tested 0.1 and 3.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from slakevqa.commands.demo import DEMO_TRAINING
from slakevqa.config import make_config
from slakevqa.data.slake import load_split
from slakevqa.data.synth import write_synthetic_slake
from slakevqa.evaluation.config import EvalConfig
from slakevqa.evaluation.evaluate import evaluate
from slakevqa.inputs.answer_keys import match_key
from slakevqa.models.families import llava_1_5
from slakevqa.models.tokenizer import build_bpe_tokenizer
from slakevqa.training.config import TrainConfig
from slakevqa.training.train import train

STEPS = 1500


def closed_accuracy(model, processor, root: Path, out: Path) -> float:
    results = evaluate(make_config(EvalConfig, model_id_or_ckpt=str(out), slake_root=str(root), output_dir=str(out),
                                   prompt_style=DEMO_TRAINING["prompt_style"], report=False, batch_size=64),
                       model, processor)
    return results["metrics"]["choice"]["CLOSED"]["value"]


def text_only_accuracy(root: Path) -> float:
    """Held-out CLOSED accuracy of the most frequent training answer for the same question text (0 if unseen)."""
    seen: dict[str, Counter] = defaultdict(Counter)
    for sample in load_split(root, "train"):
        seen[sample.question].update([match_key(sample.answer)])
    closed = [s for s in load_split(root, "test") if s.answer_type == "CLOSED"]
    hits = [bool(seen[s.question]) and seen[s.question].most_common(1)[0][0] == match_key(s.answer) for s in closed]
    return sum(hits) / len(hits)


@pytest.mark.slow
def test_tiny_llava_1_5_learns_what_only_the_image_tells(tmp_path: Path) -> None:
    root = write_synthetic_slake(tmp_path / "data", seed=0).out
    model, processor = llava_1_5.build_tiny(build_bpe_tokenizer(), seed=0)
    run = tmp_path / "run"
    untrained = closed_accuracy(model, processor, root, tmp_path / "untrained")
    settings = {**DEMO_TRAINING, "save_steps": STEPS, "save_total_limit": 0, "tb": False}
    train(make_config(TrainConfig, model_id="tiny", slake_root=str(root), output_dir=str(run), max_steps=STEPS,
                      final_eval=False, **settings), model, processor)
    trained = closed_accuracy(model, processor, root, run / "eval")
    text_only = text_only_accuracy(root)
    print(f"LLaVA-1.5 tiny, held-out CLOSED accuracy: {trained:.3f} after {STEPS} steps, {untrained:.3f} untrained, "
          f"{text_only:.3f} from the question text alone")
    assert trained >= 0.75
    assert trained >= untrained + 0.2 and trained >= text_only + 0.2
