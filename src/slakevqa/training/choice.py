"""The CLOSED multiple-choice objective (``--closed_train_objective mc|hybrid``), one forward per batch.

For a CLOSED question whose candidates (routed from the question alone) contain
the gold answer, the candidates are scored the way evaluation scores them, the
mean log-probability of `` {candidate} </s>`` after the prompt, and a
cross-entropy over those scores pushes the gold candidate up and the others down.

The prompt is encoded **once**: each candidate is appended to the row as its own
segment that sees the prompt and itself only, with positions continuing from the
end of the prompt, through a 4-D attention mask::

    tokens     <s> [INST] <image>×N ... [/INST] | Left </s> | Right </s> | ...
    positions  0 ..................... p-1      | p  p+1    | p  p+1     |
    sees       causal                           | prompt+own| prompt+own |

The answer the SFT loss supervises is itself such a segment, so ``hybrid`` costs
one forward with a few more tokens, and DDP sees a single forward per step.

``sft``: answer tokens only (default); ``mc``: answer tokens of OPEN questions plus
the choice loss on CLOSED ones; ``hybrid``: answer tokens of all questions plus
``closed_mc_weight`` times the choice loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from slakevqa.inputs.answer_keys import match_key
from slakevqa.inputs.encoding import IGNORE_INDEX, EncodedExample, encode_answer
from slakevqa.inputs.routing import Route
from slakevqa.inputs.vocab import ClosedVocab, candidate_variants
from slakevqa.kernels.packing import Row, segment_batch

OBJECTIVES: tuple[str, ...] = ("sft", "mc", "hybrid")


@dataclass(frozen=True)
class Choice:
    """The candidate segments of one CLOSED question and which one is right."""

    candidates: tuple[tuple[int, ...], ...]
    gold: int


def training_spelling(candidate: str, answer: str, vocab: ClosedVocab) -> str:
    """The gold candidate as the dataset writes it; others in their training spelling (``left`` -> ``Left``)."""
    if match_key(candidate) == match_key(answer):
        return answer
    return candidate_variants(candidate, vocab)[-1]


def make_choice(tokenizer, user_text: str, route: Route, answer: str, vocab: ClosedVocab, chat) -> Choice | None:
    """The choice of a CLOSED question, or None when it has no candidates or the gold is not among them.

    ``chat``: the model family's :class:`~slakevqa.inputs.chat_format.ChatFormat`."""
    keys = [match_key(c) for c in route.candidates]
    if route.kind == "open" or match_key(answer) not in keys:
        return None
    segments = tuple(tuple(encode_answer(tokenizer, user_text, training_spelling(c, answer, vocab), chat=chat))
                     for c in route.candidates)
    return Choice(segments, keys.index(match_key(answer)))


def pack_row(example: EncodedExample, choice: Choice | None, supervise: bool) -> Row:
    """Tokens, labels, positions and segment ids (0 = prompt, 1 = answer, 2.. = candidates) of one row."""
    prompt = [t for t, label in zip(example.input_ids, example.labels) if label == IGNORE_INDEX]
    answer = list(example.input_ids[len(prompt):])
    p = len(prompt)
    tokens, labels = prompt + answer, [IGNORE_INDEX] * p + (answer if supervise else [IGNORE_INDEX] * len(answer))
    positions, segments = list(range(p + len(answer))), [0] * p + [1] * len(answer)
    for k, candidate in enumerate(choice.candidates if choice else ()):
        tokens += candidate
        labels += [IGNORE_INDEX] * len(candidate)
        positions += list(range(p, p + len(candidate)))
        segments += [2 + k] * len(candidate)
    return tokens, labels, positions, segments


def pack_batch(examples: list[EncodedExample], choices: list[Choice | None], objective: str, pad_id: int) -> dict:
    """Right-padded rows with candidate segments and a ``(B, 1, T, T)`` mask (module docstring)."""
    import torch

    rows = [pack_row(e, c, supervise=objective != "mc" or c is None) for e, c in zip(examples, choices)]
    batch = segment_batch(rows, pad_id)
    width = batch["input_ids"].shape[1]
    batch["choice_gold"] = torch.tensor([c.gold if c else -1 for c in choices])
    batch["choice_segments"] = torch.tensor([r[3] + [-1] * (width - len(r[3])) for r in rows])
    return batch


def needed_positions(batch: dict):
    """``(B, T)`` bool: positions whose logits a loss reads (answer targets, and every candidate token's predictor)."""
    import torch

    labels, segments = batch["labels"], batch["choice_segments"]
    need = torch.zeros_like(labels, dtype=torch.bool)
    need[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    inside = (segments[:, :-1] >= 2) & (segments[:, 1:] == segments[:, :-1])
    need[:, :-1] |= inside
    chosen = batch["choice_gold"] >= 0
    need[chosen, prompt_ends(batch)[chosen]] = True
    return need


def prompt_ends(batch: dict):
    """Index of each row's last prompt token (it predicts the first token of every segment)."""
    return (batch["choice_segments"] == 0).sum(dim=1) - 1


def choice_loss(logprobs, lookup, batch: dict) -> tuple:
    """Cross-entropy over candidate scores; ``logprobs[lookup[b, t]]`` are the log-probs predicted at ``(b, t)``.

    A candidate's first token is predicted from the last prompt position, the
    others from the previous token of the same segment; its score is their mean,
    as evaluation scores it. Returns ``(loss, rows, correct)``; 0 without choices.
    """
    import torch
    import torch.nn.functional as F

    tokens, segments, ends = batch["input_ids"], batch["choice_segments"], prompt_ends(batch)
    losses, correct = [], 0
    for b in torch.nonzero(batch["choice_gold"] >= 0).flatten().tolist():
        scores = []
        for k in range(2, int(segments[b].max()) + 1):
            where = torch.nonzero(segments[b] == k).flatten()
            predictors = torch.cat([ends[b:b + 1], where[:-1]])
            scores.append(logprobs[lookup[b, predictors], tokens[b, where]].mean())
        scores = torch.stack(scores)
        gold = int(batch["choice_gold"][b])
        losses.append(F.cross_entropy(scores[None], torch.tensor([gold], device=scores.device)))
        correct += int(scores.argmax()) == gold
    if not losses:
        return logprobs.sum() * 0.0, 0, 0
    return torch.stack(losses).mean(), len(losses), correct
