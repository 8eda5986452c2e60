"""Token ids of LLaVA-Med prompts and answers, for training and evaluation alike.

Evaluation feeds the prompt ids of :func:`encode_prompt`; training adds the answer
and masks everything before it. One training example is tokenised as LLaVA-Med v1.5
trains it::

    <s> [INST] <image>×N \\n {user text} [/INST] {answer} </s>
    └──────────── labels = -100 ─────────────┘ └─ supervised ─┘

The prompt and the full text are tokenised separately (BOS from the tokenizer);
the answer ids are what the full text adds after the prompt, so the prompt ids are
exactly the ones evaluation feeds the model. ``<image>`` is expanded to the
model's image-token count here, as ``LlavaProcessor`` does at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

from slakevqa.errors import UserError
from slakevqa.inputs.prompts import IMAGE_TOKEN, render_generation_prompt, render_training_text

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedExample:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    prompt_tokens: int  # before image expansion
    answer_tokens: int
    prompt_truncated: bool
    answer_truncated: bool


def image_token_count(processor) -> int:
    """Tokens one image expands to (576 for CLIP-L/14 at 336 px, 16 for the tiny model)."""
    count = getattr(processor, "num_image_tokens", None)
    if count:
        return int(count)
    size = processor.image_processor.crop_size["height"]
    return (size // processor.patch_size) ** 2 + processor.num_additional_image_tokens - (
        1 if processor.vision_feature_select_strategy == "default" else 0)


def truncate_prompt(ids: list[int], image_id: int, limit: int) -> tuple[list[int], bool]:
    """Keep BOS, the image token and the last ``limit - len(head)`` tokens (the question end, ``[/INST]``)."""
    if len(ids) <= limit:
        return ids, False
    head = ids[: ids.index(image_id) + 1]
    if limit <= len(head):
        raise UserError(f"--max_prompt_len {limit} leaves no room after the image token")
    return head + ids[len(ids) - (limit - len(head)):], True


def expand_image_token(ids: list[int], image_id: int, image_tokens: int) -> list[int]:
    """Replace the single ``<image>`` id by ``image_tokens`` copies (what ``LlavaProcessor`` does to text)."""
    at = ids.index(image_id)
    return ids[:at] + [image_id] * image_tokens + ids[at + 1:]


def encode_prompt(tokenizer, user_text: str, image_tokens: int, max_prompt_len: int = 512) -> tuple[list[int], bool]:
    """Ids of the generation prompt ``<s>[INST] <image>×N\n{text} [/INST]``; and whether it was truncated."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids, cut = truncate_prompt(tokenizer(render_generation_prompt(user_text)).input_ids, image_id, max_prompt_len)
    return expand_image_token(ids, image_id, image_tokens), cut


def encode_answer(tokenizer, user_text: str, answer: str) -> list[int]:
    """Ids the training text adds after the prompt: `` {answer} </s>`` (``</s>`` included).

    Raises UserError when the tokenizer merges the prompt's end with the answer,
    since then no split into prompt and answer exists.
    """
    prompt_ids = tokenizer(render_generation_prompt(user_text)).input_ids
    full_ids = tokenizer(render_training_text(user_text, answer)).input_ids
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise UserError(f"the tokenizer merges the prompt end with the answer {answer!r}; "
                        "the chat template cannot be split into prompt and answer")
    return full_ids[len(prompt_ids):]


def encode_example(tokenizer, user_text: str, answer: str, image_tokens: int, max_prompt_len: int = 512,
                   max_answer_len: int = 64) -> EncodedExample:
    """Token ids and labels of one training example (see the module docstring)."""
    answer_ids = encode_answer(tokenizer, user_text, answer)
    prompt_ids, prompt_cut = encode_prompt(tokenizer, user_text, image_tokens, max_prompt_len)
    answer_cut = len(answer_ids) > max_answer_len
    if answer_cut:  # keep </s> so the model still learns to stop
        answer_ids = answer_ids[: max_answer_len - 1] + answer_ids[-1:]
    return EncodedExample(tuple(prompt_ids + answer_ids), tuple([IGNORE_INDEX] * len(prompt_ids) + answer_ids),
                          len(prompt_ids) - image_tokens + 1, len(answer_ids), prompt_cut, answer_cut)


def pad_batch(examples: list[EncodedExample], pad_id: int) -> dict:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def batch_stats(examples: list[EncodedExample]) -> dict[str, float]:
    """What TensorBoard plots about a batch: lengths, supervised tokens, truncation."""
    n = len(examples)
    return {"prompt_len_mean": sum(e.prompt_tokens for e in examples) / n,
            "prompt_len_max": max(e.prompt_tokens for e in examples),
            "answer_len_mean": sum(e.answer_tokens for e in examples) / n,
            "answer_len_max": max(e.answer_tokens for e in examples),
            "supervised_tokens": sum(e.answer_tokens for e in examples),
            "prompt_truncated_pct": 100.0 * sum(e.prompt_truncated for e in examples) / n,
            "answer_truncated_pct": 100.0 * sum(e.answer_truncated for e in examples) / n}
