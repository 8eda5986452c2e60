"""training/loss.py: the answer loss computes the LM head only where an answer token is predicted, and
equals transformers' own shifted cross-entropy, through either way of slicing logits (kernels/compat.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from slakevqa.data.slake import load_split


def test_answer_loss_rows_match_separate_forwards(synth_root: Path, tiny_model, mask_slicing: bool) -> None:
    from slakevqa.data.slake import find_layout
    from slakevqa.inputs.builder import InputBuilder
    from slakevqa.inputs.vocab import ClosedVocab
    from slakevqa.training.examples import ExampleEncoder
    from slakevqa.training.loss import answer_loss

    model, processor = tiny_model
    builder = InputBuilder.create(find_layout(synth_root), ClosedVocab.empty())
    encoder = ExampleEncoder(builder, processor, 512, 64)
    samples = load_split(synth_root, "train")[:3]
    batch, _ = encoder.batch(samples)
    with torch.no_grad():
        loss, tokens, rows = answer_loss(model, batch)
        reference = model(**batch).loss  # transformers' own shifted token-mean cross-entropy
        alone = [answer_loss(model, encoder.batch([s])[0]).loss for s in samples]
    assert torch.allclose(loss, reference, atol=1e-5) and tokens == int((batch["labels"] != -100).sum())
    assert torch.allclose(rows, torch.stack(alone), atol=1e-5)
