"""The supervised loss, computing the LM head only where an answer token is predicted.

With a 32k vocabulary the LM head over every position dominates a small model's
step and a large one's memory (a 700-token sequence of fp32 logits is 90 MB per
row at 7B). Only answer positions carry loss, so we ask the model for logits at
those positions alone through ``logits_to_keep``: a boolean ``(B, T)`` mask of
exactly the supervised positions where transformers accepts one (5.2x), else a 1-D
index tensor shared by the batch (the union of every row's answer positions, which
with right padding is several times more rows of logits). The call goes through
the model's own ``forward``, so DDP/FSDP wrappers see it.

The value equals the usual token-mean cross-entropy over supervised tokens
(tested against ``model(**batch, labels=...)``). The same forward also gives each
row's own token-mean loss, which TensorBoard plots per sample and per answer type.

When a step does not fit in memory, :func:`out_of_memory_advice` turns the
allocator's error into a :class:`~slakevqa.errors.UserError` that names the flags
to change.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, NamedTuple

from slakevqa.errors import UserError
from slakevqa.inputs.encoding import IGNORE_INDEX
from slakevqa.kernels import compat
from slakevqa.kernels.packing import per_sample_losses
from slakevqa.models.image_features import with_image_embeddings

if TYPE_CHECKING:  # annotations only: torch is imported inside functions to keep imports cheap
    import torch

    from slakevqa.training.config import TrainConfig


class AnswerLoss(NamedTuple):
    """``loss``: token-mean over the batch (differentiable); ``tokens``: supervised tokens;
    ``row_losses``: each question's token-mean loss, detached, shape ``(questions,)`` (one per row,
    or per packed segment when the batch has ``sample_index``)."""

    loss: torch.Tensor
    tokens: int
    row_losses: torch.Tensor


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions ``t`` whose logits predict a supervised token ``t + 1`` in any row (1-D, sorted)."""
    import torch

    supervised = (labels[:, 1:] != IGNORE_INDEX).any(dim=0)
    return torch.nonzero(supervised, as_tuple=False).flatten()


def answer_tokens(labels: torch.Tensor) -> int:
    """Supervised tokens of a batch, known before its forward: the count :func:`answer_loss` divides by."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def answer_loss(model: torch.nn.Module, batch: dict) -> AnswerLoss:
    """Cross-entropy on answer tokens: the batch's token mean, its token count and every row's own mean.

    Example::

        loss, tokens, row_losses = answer_loss(model, batch)
        loss.backward()            # row_losses are detached: for logging only
    """
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]
    inputs = model_inputs(model, {k: v for k, v in batch.items() if k not in ("labels", "sample_index")})
    if compat.MASK_SLICING:
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # position t predicts token t + 1
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits  # (N, V), row-major over keep
        targets = torch.full_like(labels, IGNORE_INDEX)
        targets[keep] = labels[:, 1:][keep[:, :-1]]
        flat = F.cross_entropy(logits.float(), targets[keep], reduction="none")
        per_token = torch.zeros(labels.shape, dtype=flat.dtype, device=flat.device).masked_scatter(keep, flat)
    else:
        positions = supervised_positions(labels)
        logits = model(**inputs, logits_to_keep=positions, use_cache=False).logits  # (B, P, V)
        picked = labels[:, positions + 1]  # (B, P)
        flat = F.cross_entropy(logits.float().flatten(0, 1), picked.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="none").view(picked.shape)  # 0 where ignored
        per_token = torch.zeros(labels.shape, dtype=flat.dtype, device=flat.device)
        per_token[:, positions] = flat
        targets = torch.full_like(labels, IGNORE_INDEX)
        targets[:, positions] = picked
    counts = (targets != IGNORE_INDEX).sum(dim=1)
    loss = per_token.sum() / counts.sum()  # 0/0 = nan for a batch without answers, as mean reduction gives
    if "sample_index" in batch:  # packed rows (kernels/packing.py): one loss per question, not per row
        owners = batch["sample_index"]
        rows = per_sample_losses(per_token.detach(), targets, owners, int(owners.max()) + 1)
    else:
        rows = per_token.detach().sum(dim=1) / counts
    return AnswerLoss(loss, int(counts.sum()), rows)



def model_inputs(model: torch.nn.Module, inputs: dict) -> dict:
    """The forward's keyword arguments: cached ``image_features`` become ``inputs_embeds`` (models/image_features.py)."""
    return with_image_embeddings(model, inputs) if "image_features" in inputs else inputs


def logits_where(model: torch.nn.Module, inputs: dict, need: torch.Tensor) -> torch.Tensor:
    """Logits at the ``need`` positions only, ``(N, V)`` in row-major order of ``need``."""
    import torch

    if compat.MASK_SLICING:
        return model(**inputs, logits_to_keep=need, use_cache=False).logits
    positions = torch.nonzero(need.any(dim=0)).flatten()  # the union; then pick each row's own
    logits = model(**inputs, logits_to_keep=positions, use_cache=False).logits  # (B, P, V)
    rows, columns = torch.nonzero(need, as_tuple=True)
    return logits[rows, torch.searchsorted(positions, columns)]


def packed_loss(model: torch.nn.Module, batch: dict, mc_weight: float) -> tuple[AnswerLoss, dict]:
    """Answer-token loss plus ``mc_weight`` times the CLOSED choice loss, from one forward of packed rows.

    ``batch`` comes from :func:`slakevqa.training.choice.pack_batch`. Returns the
    :class:`AnswerLoss` of the sum (``tokens`` and ``row_losses`` count answer tokens
    only; rows without supervised answer tokens log NaN) and the choice statistics.
    """
    import torch

    from slakevqa.training.choice import choice_loss, needed_positions

    need = needed_positions(batch)
    # everything the forward takes (the family's image inputs and per-token extras too), not the choice bookkeeping
    inputs = model_inputs(model, {k: v for k, v in batch.items()
                                  if k not in ("labels", "sample_index", "choice_gold", "choice_segments")})
    logprobs = logits_where(model, inputs, need).float().log_softmax(-1)
    lookup = torch.full(need.shape, -1, dtype=torch.long, device=need.device)
    lookup[need] = torch.arange(int(need.sum()), device=need.device)
    labels = batch["labels"][:, 1:]
    supervised = labels != IGNORE_INDEX
    per_token = torch.zeros(labels.shape, device=logprobs.device)
    per_token[supervised] = -logprobs[lookup[:, :-1][supervised], labels[supervised]]
    counts = supervised.sum(dim=1)
    sft = per_token.sum() / counts.sum() if int(counts.sum()) else per_token.sum() * 0.0
    mc, rows, correct = choice_loss(logprobs, lookup, batch)
    total = sft + mc_weight * mc
    row_losses = (per_token.sum(dim=1) / counts).detach()  # NaN where a row has no answer tokens
    stats = {"mc_loss": float(mc.detach()), "mc_rows": rows, "mc_accuracy": correct / rows if rows else float("nan")}
    return AnswerLoss(total, int(counts.sum()), row_losses), stats


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError ("not enough memory" / "out of memory")."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "not enough memory" in text)


def memory_advice(cfg: TrainConfig, step: int) -> str:
    """What to try when step ``step`` does not fit, naming the run's current values."""
    smaller = max(1, cfg.batch_size // 2)
    accum = cfg.grad_accum * cfg.batch_size // smaller  # the same questions per optimiser step
    tries = [f"--batch_size {smaller} --grad_accum {accum} (same effective batch)"] if smaller < cfg.batch_size else []
    if not cfg.gradient_checkpointing:
        tries.append("--gradient_checkpointing (recompute activations in the backward pass)")
    elif cfg.gradient_checkpointing_keep:
        tries.append(f"a smaller --gradient_checkpointing_keep (now {cfg.gradient_checkpointing_keep}; 0 recomputes "
                     "every layer)")
    if not cfg.use_lora:
        tries.append("--use_lora (train adapters instead of every LLM weight; no AdamW state for the base)")
    elif not cfg.qlora:
        tries.append("--qlora (4-bit base weights, CUDA only)")
    tries.append(f"a shorter --max_prompt_len (now {cfg.inputs.max_prompt_len})")
    lora = "QLoRA" if cfg.qlora else ("LoRA" if cfg.use_lora else "full fine-tuning")
    return (f"out of memory at step {step} with --batch_size {cfg.batch_size} --grad_accum {cfg.grad_accum}, "
            f"gradient checkpointing {'on' if cfg.gradient_checkpointing else 'off'}, {lora}. Try: "
            + "; ".join(tries))


@contextlib.contextmanager
def out_of_memory_advice(cfg: TrainConfig, step: int) -> Iterator[None]:
    """Re-raise an out-of-memory error inside the block as a UserError with :func:`memory_advice`."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - only OOM is translated; everything else re-raises unchanged
        if not is_out_of_memory(error):
            raise
        raise UserError(memory_advice(cfg, step)) from error
