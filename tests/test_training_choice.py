"""The CLOSED choice objective: candidates scored inside one packed forward exactly as evaluation
scores them, the answer loss untouched by the extra segments, and both objectives training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slakevqa.config import make_config
from slakevqa.data.slake import find_layout, load_split
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.vocab import build_closed_vocab
from slakevqa.training.choice import needed_positions, prompt_ends
from slakevqa.training.config import TrainConfig
from slakevqa.training.examples import ExampleEncoder
from slakevqa.training.loss import answer_loss, logits_where, packed_loss
from slakevqa.training.train import train


def encoder_for(root: Path, processor, objective: str) -> ExampleEncoder:
    vocab = build_closed_vocab(load_split(root, "train"))
    builder = InputBuilder.create(find_layout(root), vocab)
    return ExampleEncoder(builder, processor, 512, 64, objective)


def test_packed_candidate_scores_equal_separate_forwards(synth_root: Path, tiny_model, mask_slicing: bool) -> None:
    model, processor = tiny_model
    encoder = encoder_for(synth_root, processor, "hybrid")
    samples = [s for s in load_split(synth_root, "train") if s.is_closed][:3] + load_split(synth_root, "train")[:1]
    batch, _ = encoder.batch(samples)
    need = needed_positions(batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values")}
    with torch.no_grad():
        logprobs = logits_where(model, inputs, need).float().log_softmax(-1)
    lookup = torch.full(need.shape, -1, dtype=torch.long)
    lookup[need] = torch.arange(int(need.sum()))
    for row, sample in enumerate(samples):
        choice = encoder.choices[sample.qid]
        if sample.answer_type == "OPEN":
            assert choice is None
            continue
        example = encoder.encode(sample)
        prompt = list(example.input_ids[: example.labels.count(-100)])
        end = int(prompt_ends(batch)[row])
        assert end == len(prompt) - 1
        for k, candidate in enumerate(choice.candidates):
            where = torch.nonzero(batch["choice_segments"][row] == k + 2).flatten()
            predictors = torch.cat([torch.tensor([end]), where[:-1]])
            packed = logprobs[lookup[row, predictors], batch["input_ids"][row, where]].mean()
            ids = torch.tensor([prompt + list(candidate)])
            with torch.no_grad():
                full = model(input_ids=ids, pixel_values=batch["pixel_values"][row:row + 1]).logits[0].log_softmax(-1)
            alone = torch.stack([full[len(prompt) - 1 + j, t] for j, t in enumerate(candidate)]).mean()
            assert float(packed) == pytest.approx(float(alone), abs=1e-5)


def test_candidate_segments_leave_the_answer_loss_unchanged(synth_root: Path, tiny_model) -> None:
    model, processor = tiny_model
    samples = load_split(synth_root, "train")[:6]
    plain, _ = encoder_for(synth_root, processor, "sft").batch(samples)
    packed, _ = encoder_for(synth_root, processor, "hybrid").batch(samples)
    assert packed["input_ids"].shape[1] > plain["input_ids"].shape[1]  # the candidate segments
    with torch.no_grad():
        reference = answer_loss(model, plain)
        combined, stats = packed_loss(model, packed, mc_weight=0.0)
    assert float(combined.loss) == pytest.approx(float(reference.loss), abs=1e-5)
    assert combined.tokens == reference.tokens and stats["mc_rows"] >= 1


def test_mc_objective_supervises_open_answers_and_closed_choices_only(synth_root: Path, tiny_model) -> None:
    _, processor = tiny_model
    samples = load_split(synth_root, "train")[:8]
    batch, _ = encoder_for(synth_root, processor, "mc").batch(samples)
    for row in range(len(samples)):
        supervised = bool((batch["labels"][row] != -100).any())
        chosen = int(batch["choice_gold"][row]) >= 0
        assert supervised != chosen  # CLOSED with a choice: no answer tokens; everything else: answer tokens


@pytest.mark.parametrize("objective", ["mc", "hybrid"])
def test_choice_objectives_train(synth_root: Path, tmp_path: Path, tiny_model, objective: str) -> None:
    model, processor = tiny_model
    cfg = make_config(TrainConfig, model_id="tiny", slake_root=str(synth_root), output_dir=str(tmp_path), max_steps=3,
                      batch_size=8, lr=1e-3, final_eval=False, tb=True, logging_steps=1,
                      closed_train_objective=objective)
    result = train(cfg, model, processor)
    assert len(result.losses) == 3 and all(loss == loss for _, loss in result.losses)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    assert {"train/mc_loss", "train/mc_accuracy"} <= set(events.Tags()["scalars"])
