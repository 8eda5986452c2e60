"""A chat format: the Jinja template a model family was trained with, and how its prompts become token ids.

The facts of each format (its template text, placeholder, stop token) live in the family's module
(:mod:`slakevqa.models.families`); this module holds the mechanism every family shares, so our
encoder and the ``chat_template`` written into every folder we save are one definition (decision 12).

One question becomes a user turn with one image, image first::

    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]}]

rendered with ``add_generation_prompt=True`` for evaluation, and followed by an assistant turn
holding the answer for training. How the image placeholder becomes the model's image tokens is the
format's :attr:`ChatFormat.image_text`: ``None`` when the placeholder token repeats once per image
token (LLaVA's ``<image>``, Qwen's ``<|image_pad|>``: expanded on ids), else a function giving the
text one image expands to before tokenising (Gemma 3 wraps its soft tokens in ``\\n\\n``, which merge
with the newlines around them, so only text expansion gives its processor's ids).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ChatFormat:
    """How one model family's prompts are written and tokenised.

    Args:
        name: short name for messages (``llava_med_v1.5``).
        template: the Jinja chat template (Hugging Face's ``apply_chat_template`` renders it too).
        image_token: the placeholder token the model replaces by image features.
        image_end: the last token of one image's block (the placeholder itself when nothing follows it);
            truncation keeps the prompt up to it.
        stop_token: ends the assistant turn: generation stops at it and the loss covers it.
        bos_from_tokenizer: True when the template is rendered without BOS and the tokenizer adds it
            (LLaVA-Med's SentencePiece tokenizer, as upstream tokenises); False when the template writes
            ``bos_token`` itself (or has none) and the text is tokenised without special tokens, as
            ``processor.apply_chat_template(..., tokenize=True)`` does.
        image_text: ``None`` (the placeholder repeats per image token, expanded on ids) or the text one
            image of ``n`` tokens becomes, replacing the template's placeholder string ``image_marker``.
        image_marker: the string the template writes for an image (default: ``image_token``).
        reserved: strings that must not come from question text (placeholders): replaced by a space.
        answer_close: ``(what the template writes after an answer, what training writes instead)``, for a
            template that closes an answer without the stop token (llava-hf's LLaVA-1.5 writes a space; the
            model was trained with ``</s>`` there and generation stops at it); ``()`` for none.
    """

    name: str
    template: str
    image_token: str
    image_end: str
    stop_token: str
    bos_from_tokenizer: bool = False
    image_text: Callable[[int], str] | None = None
    image_marker: str = ""
    reserved: tuple[str, ...] = ()
    answer_close: tuple[str, str] | tuple[()] = ()

    @property
    def marker(self) -> str:
        return self.image_marker or self.image_token

    def render(self, messages: list[dict], add_generation_prompt: bool, bos_token: str = "") -> str:
        """``messages`` rendered as Hugging Face renders a chat template (sandboxed Jinja, same options)."""
        return compiled(self.template).render(messages=messages, bos_token=bos_token,
                                              add_generation_prompt=add_generation_prompt)

    def generation_prompt(self, user_text: str, bos_token: str = "") -> str:
        """One image-first user turn and the assistant's opening: what the model continues."""
        return self.render([user_turn(self.clean(user_text))], True, bos_token)

    def training_text(self, user_text: str, answer: str, bos_token: str = "") -> str:
        """The user turn and the assistant's answer turn, as the template closes it."""
        answer_turn = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
        text = self.render([user_turn(self.clean(user_text)), answer_turn], False, bos_token)
        if self.answer_close:
            written, instead = self.answer_close
            text = text.removesuffix(written) + instead
        return text

    def clean(self, user_text: str) -> str:
        """``user_text`` without placeholders: an image token in a question would splice image features twice."""
        for reserved in (self.marker, self.image_token, *self.reserved):
            user_text = user_text.replace(reserved, " ")
        return user_text


def user_turn(user_text: str) -> dict:
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]}


@functools.cache
def compiled(template: str):
    """A template compiled once per process, in the sandbox Hugging Face renders chat templates in."""
    from jinja2 import nodes
    from jinja2.exceptions import TemplateError
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        # transformers' {% generation %} marks assistant text for return_assistant_tokens_mask; rendering keeps it
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    def raise_exception(message: str):
        raise TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[Generation, loopcontrols])
    environment.globals["raise_exception"] = raise_exception
    return environment.from_string(template)
