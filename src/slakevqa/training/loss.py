"""The supervised loss, computing the LM head only where an answer token is predicted.

With a 32k vocabulary the LM head over every position dominates a small model's
step and a large one's memory (a 700-token sequence of fp32 logits is 90 MB per
row at 7B). Only answer positions carry loss, so we ask the model for logits at
those positions alone (``logits_to_keep``, a 1-D index tensor shared by the
batch: the union of every row's answer positions). The call goes through the
model's own ``forward``, so DDP/FSDP wrappers see it.

The value equals the usual token-mean cross-entropy over supervised tokens
(tested against ``model(**batch, labels=...)``).
"""

from __future__ import annotations

from slakevqa.encoding import IGNORE_INDEX


def supervised_positions(labels):
    """Positions ``t`` whose logits predict a supervised token ``t + 1`` in any row (1-D, sorted)."""
    import torch

    supervised = (labels[:, 1:] != IGNORE_INDEX).any(dim=0)
    return torch.nonzero(supervised, as_tuple=False).flatten()


def answer_loss(model, batch: dict):
    """Token-mean cross-entropy on answer tokens; returns ``(loss, supervised token count)``."""
    import torch.nn.functional as F

    labels = batch["labels"]
    positions = supervised_positions(labels)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=positions, use_cache=False).logits  # (B, P, V)
    targets = labels[:, positions + 1]
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    return loss, int((targets != IGNORE_INDEX).sum())
