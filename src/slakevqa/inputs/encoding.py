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
from slakevqa.inputs.chat_format import ChatFormat

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedExample:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    prompt_tokens: int  # before image expansion
    answer_tokens: int
    prompt_truncated: bool
    answer_truncated: bool


def truncate_prompt(ids: list[int], image_end_id: int, limit: int) -> tuple[list[int], bool]:
    """Keep everything up to the image block's last token and the last ``limit - len(head)`` tokens
    (the question's end and the assistant's opening)."""
    if len(ids) <= limit:
        return ids, False
    head = ids[: len(ids) - ids[::-1].index(image_end_id)]
    if limit <= len(head):
        raise UserError(f"--max_prompt_len {limit} leaves no room after the image")
    return head + ids[len(ids) - (limit - len(head)):], True


def expand_image_token(ids: list[int], image_id: int, image_tokens: int) -> list[int]:
    """Replace the single image placeholder id by ``image_tokens`` copies (what ``LlavaProcessor`` does to text)."""
    at = ids.index(image_id)
    return ids[:at] + [image_id] * image_tokens + ids[at + 1:]


def tokenize_all(tokenizer, chat: ChatFormat, texts: list[str]) -> list[list[int]]:
    """Ids of each rendered text, in one call (a fast tokenizer encodes the list as a batch): BOS from the tokenizer
    or from the template, as the format says."""
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=chat.bos_from_tokenizer).input_ids] if texts else []


def bos_for(tokenizer, chat: ChatFormat) -> str:
    return "" if chat.bos_from_tokenizer else (tokenizer.bos_token or "")


def encode_prompt(tokenizer, user_text: str, image_tokens: int, max_prompt_len: int = 512, *,
                  chat: ChatFormat) -> tuple[list[int], bool]:
    """Ids of the generation prompt with the image expanded to ``image_tokens``; and whether it was truncated.

    LLaVA-Med: ``<s>[INST] <image>×N\n{text} [/INST]``. Formats whose placeholder repeats (``image_text``
    None) are expanded on ids after truncation; the others are expanded in the text before tokenising,
    as their processors do.
    """
    return encode_prompts(tokenizer, [(user_text, image_tokens)], max_prompt_len, chat=chat)[0]


def encode_prompts(tokenizer, prompts: list[tuple[str, int]], max_prompt_len: int = 512, *,
                   chat: ChatFormat) -> list[tuple[list[int], bool]]:
    """:func:`encode_prompt` of every ``(user_text, image_tokens)``, tokenised in one call."""
    bos, texts = bos_for(tokenizer, chat), []
    for user_text, image_tokens in prompts:
        text = chat.generation_prompt(user_text, bos)
        texts.append(text if chat.image_text is None else text.replace(chat.marker, chat.image_text(image_tokens), 1))
    image_end, image_id = (tokenizer.convert_tokens_to_ids(t) for t in (chat.image_end, chat.image_token))
    encoded = []
    for ids, (_, image_tokens) in zip(tokenize_all(tokenizer, chat, texts), prompts, strict=True):
        # the limit counts an image as one token whichever way it expands (--max_prompt_len: image tokens excluded)
        limit = max_prompt_len if chat.image_text is None else max_prompt_len + image_tokens - 1
        ids, cut = truncate_prompt(ids, image_end, limit)
        encoded.append((expand_image_token(ids, image_id, image_tokens) if chat.image_text is None else ids, cut))
    return encoded


def encode_answer(tokenizer, user_text: str, answer: str, *, chat: ChatFormat) -> list[int]:
    """Ids the training text adds after the prompt, through the format's stop token (LLaVA-Med: `` {answer} </s>``).

    What a template writes after the stop token (Qwen's and Gemma's newline) is left out: generation
    stops at the stop token, so the model never predicts it. Raises UserError when the tokenizer
    merges the prompt's end with the answer, since then no split into prompt and answer exists.
    """
    return encode_answers(tokenizer, [(user_text, [answer])], chat=chat)[0][0]


def encode_answers(tokenizer, questions: list[tuple[str, list[str]]], *, chat: ChatFormat) -> list[list[list[int]]]:
    """:func:`encode_answer` of every answer of every ``(user_text, answers)``, tokenised in one call.

    Each prompt is tokenised once, not once per answer, and a fast tokenizer encodes the whole list
    in one batch: the English test split's 965 CLOSED spellings took 1.0 s one call per text and
    scoring asked twice (2 CPU cores), most of the CLOSED stage's ~0.9 s on the GPU box.

    >>> encode_answers(tokenizer, [("Is it CT?", ["yes", "no"])], chat=LLAVA_MED)   # doctest: +SKIP
    [[[5081, 2], [708, 2]]]
    """
    bos = bos_for(tokenizer, chat)
    texts = [text for user_text, answers in questions
             for text in [chat.generation_prompt(user_text, bos)] + [chat.training_text(user_text, a, bos) for a in answers]]
    ids = iter(tokenize_all(tokenizer, chat, texts))
    stop = tokenizer.convert_tokens_to_ids(chat.stop_token)
    encoded = []
    for _, answers in questions:
        prompt_ids = next(ids)
        encoded.append([answer_tail(prompt_ids, next(ids), answer, stop) for answer in answers])
    return encoded


def answer_tail(prompt_ids: list[int], full_ids: list[int], answer: str, stop: int) -> list[int]:
    """What ``full_ids`` adds after ``prompt_ids``, through ``stop``."""
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise UserError(f"the tokenizer merges the prompt end with the answer {answer!r}; "
                        "the chat template cannot be split into prompt and answer")
    tail = full_ids[len(prompt_ids):]
    return tail[: tail.index(stop) + 1] if stop in tail else tail


def encode_example(tokenizer, user_text: str, answer: str, image_tokens: int, max_prompt_len: int = 512,
                   max_answer_len: int = 64, *, chat: ChatFormat) -> EncodedExample:
    """Token ids and labels of one training example (see the module docstring)."""
    return encode_examples(tokenizer, [(user_text, answer, image_tokens)], max_prompt_len, max_answer_len,
                           chat=chat)[0]


def encode_examples(tokenizer, examples: list[tuple[str, str, int]], max_prompt_len: int = 512,
                    max_answer_len: int = 64, *, chat: ChatFormat) -> list[EncodedExample]:
    """:func:`encode_example` of every ``(user_text, answer, image_tokens)``: the prompts in one tokenizer call,
    the answers (each with its prompt) in another. One call per text cost a LLaVA-Med training batch of 64 new
    questions ~40 ms on the 2-core CPU, in every step of the first epoch."""
    answers = encode_answers(tokenizer, [(user_text, [answer]) for user_text, answer, _ in examples], chat=chat)
    prompts = encode_prompts(tokenizer, [(user_text, tokens) for user_text, _, tokens in examples], max_prompt_len,
                             chat=chat)
    encoded = []
    for (prompt_ids, prompt_cut), [answer_ids], (_, _, image_tokens) in zip(prompts, answers, examples, strict=True):
        answer_cut = len(answer_ids) > max_answer_len
        if answer_cut:  # keep the stop token so the model still learns to stop
            answer_ids = answer_ids[: max_answer_len - 1] + answer_ids[-1:]
        encoded.append(EncodedExample(tuple(prompt_ids + answer_ids), tuple([IGNORE_INDEX] * len(prompt_ids) + answer_ids),
                                      len(prompt_ids) - image_tokens + 1, len(answer_ids), prompt_cut, answer_cut))
    return encoded


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
