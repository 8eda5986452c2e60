"""Prompts: the user text of one question, and LLaVA-Med v1.5's chat format around it.

Two layers, both pure string functions:

1. :func:`build_user_text` writes ``{text}``: an instruction chosen by the route
   (OPEN or CLOSED), optional knowledge-graph facts, the question, and for choice
   questions the candidates. The wording is a named, versioned :class:`PromptStyle`.
2. :func:`render_generation_prompt` / :func:`render_training_text` wrap it in
   LLaVA-Med v1.5's chat format (``conv_mistral_instruct``), image first::

       [INST] <image>\n{text} [/INST]                     (generation)
       [INST] <image>\n{text} [/INST] {answer} </s>      (training)

   The format has one definition, :data:`LLAVA_MED_CHAT_TEMPLATE`: the Jinja chat
   template written into every model folder slakevqa saves (so Hugging Face's
   ``processor.apply_chat_template`` and vLLM render it), and the template our own
   encoder renders. They cannot drift apart.

Example, style ``short`` for an options question::

    [INST] <image>
    Answer the question about this medical image with a single answer and nothing else.
    Which is the biggest in this image,lung,liver or heart?
    Pick one of: lung | liver | heart [/INST]

The model layer tokenises these strings with the tokenizer's BOS added (as
upstream ``tokenizer_image_token`` does) and expands ``<image>`` into the image
features; these functions add no BOS themselves. The gold answer never enters a
prompt: the builder takes the question and its :class:`~slakevqa.inputs.routing.Route`,
both computed from the question alone.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Sequence

from slakevqa.errors import UserError
from slakevqa.inputs.routing import Route

IMAGE_TOKEN = "<image>"

# LLaVA-Med v1.5's chat format (conv_mistral_instruct: LLAMA_2 separator style, empty system
# prompt, sep2 "</s>"), as a Hugging Face chat template. Content is a string or a list of
# {"type": "image"} / {"type": "text"} items; the image always goes first, as upstream moves it
# there. Text is stripped, as upstream's model_vqa.py strips the question (SLAKE has questions
# ending in a space). A system message is wrapped LLAMA_2-style into the first turn. BOS comes
# from ``bos_token``: Hugging Face and vLLM pass the tokenizer's and then add no special tokens;
# our encoder renders with an empty one and lets the tokenizer add BOS (the same ids, tested).
LLAVA_MED_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
    "{%- set text = items | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') | trim -%}"
    "{%- set has_image = items | selectattr('type', 'equalto', 'image') | list | length > 0 -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = '<<SYS>>\\n' ~ text ~ '\\n<</SYS>>\\n\\n' -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '[INST] ' ~ ns.system ~ ('" + IMAGE_TOKEN + "\\n' if has_image else '') ~ text ~ ' [/INST]' -}}"
    "{%- set ns.system = '' -%}"
    "{%- else -%}{{- ' ' ~ text ~ ' </s>' -}}{%- endif -%}"
    "{%- endfor -%}"
)


@dataclass(frozen=True)
class PromptStyle:
    """The wording of ``{text}``; bump ``version`` on any change, since it changes scores.

    Args:
        name: registry key, recorded in results as :attr:`tag` (``short@v1``).
        version: integer, bumped whenever any string below changes.
        open_instruction: first line for OPEN questions ("" = none).
        closed_instruction: first line for CLOSED questions ("" = none).
        options_line: the candidates line, ``{options}`` is replaced by the
            candidates joined with ``options_separator`` ("" = never listed).
        options_separator: between candidates; `` | `` because SLAKE answers
            contain commas ("Left Lung, Right").
        list_options_for: route kinds whose candidates are listed. ``vocab`` is
            left out by default: thirty-odd training answers would swamp the prompt.
        kg_intro: the line that introduces knowledge-graph facts.
        kg_fact_prefix: put before each fact, one fact per line.
        description: one line for ``--help`` and reports.
    """

    name: str
    version: int
    open_instruction: str
    closed_instruction: str
    options_line: str
    options_separator: str = " | "
    list_options_for: tuple[str, ...] = ("yesno", "options")
    kg_intro: str = "Relevant medical knowledge:"
    kg_fact_prefix: str = "- "
    description: str = ""

    @property
    def tag(self) -> str:
        """``name@vN``: what results files record."""
        return f"{self.name}@v{self.version}"


PROMPT_STYLES: dict[str, PromptStyle] = {
    "short": PromptStyle(
        name="short", version=1,
        open_instruction="Answer the question about this medical image with a word or a short phrase, "
                         "and nothing else.",
        closed_instruction="Answer the question about this medical image with a single answer "
                           "and nothing else.",
        options_line="Pick one of: {options}",
        description="default: one instruction line, KG facts, the question, the choices"),
    "plain": PromptStyle(
        name="plain", version=1, open_instruction="", closed_instruction="", options_line="",
        kg_intro="Background:",
        description="the question alone, as in LLaVA-Med's own instruction data (plus KG facts when given)"),
}
DEFAULT_STYLE = "short"


def get_prompt_style(name: str) -> PromptStyle:
    """The registered style ``name``, or a UserError that suggests the nearest names.

    >>> get_prompt_style("short").tag
    'short@v1'
    """
    try:
        return PROMPT_STYLES[name]
    except KeyError:
        close = difflib.get_close_matches(name, PROMPT_STYLES, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserError(f"unknown prompt style '{name}'; known: {', '.join(PROMPT_STYLES)}.{hint}") from None


def build_user_text(question: str, route: Route, style: PromptStyle, kg_context: Sequence[str] = ()) -> str:
    """The ``{text}`` of one question: instruction, KG facts, question, choices (each if any).

    ``kg_context`` is plain fact sentences (``slakevqa.data.kg.kg_facts_for``);
    it is used for OPEN and CLOSED routes alike. A stray ``<image>`` in the
    question is removed, as upstream LLaVA-Med does, so the image comes once and first.

    >>> from slakevqa.inputs.routing import Route
    >>> print(build_user_text("Which organ is abnormal, heart or lung?",
    ...       Route("options", ("heart", "lung")), PROMPT_STYLES["short"], ["Heart belong to: circulatory system"]))
    Answer the question about this medical image with a single answer and nothing else.
    Relevant medical knowledge:
    - Heart belong to: circulatory system
    Which organ is abnormal, heart or lung?
    Pick one of: heart | lung
    >>> build_user_text("Does the picture contain liver?", Route("yesno", ("Yes", "No")), PROMPT_STYLES["plain"])
    'Does the picture contain liver?'
    """
    instruction = style.open_instruction if route.kind == "open" else style.closed_instruction
    lines = [instruction] if instruction else []
    lines += kg_lines(kg_context, style)
    lines.append(" ".join(question.replace(IMAGE_TOKEN, " ").split()))
    if style.options_line and route.kind in style.list_options_for and route.candidates:
        lines.append(style.options_line.format(options=style.options_separator.join(route.candidates)))
    return "\n".join(lines)


def kg_lines(kg_context: Sequence[str], style: PromptStyle) -> list[str]:
    """The intro line and one line per non-empty fact; nothing when there are no facts."""
    facts = [" ".join(fact.split()) for fact in kg_context if fact.strip()]
    if not facts:
        return []
    return ([style.kg_intro] if style.kg_intro else []) + [style.kg_fact_prefix + fact for fact in facts]


def render_chat(messages: list[dict], bos_token: str = "") -> str:
    """``messages`` rendered by :data:`LLAVA_MED_CHAT_TEMPLATE`, as Hugging Face renders it.

    >>> render_chat([{"role": "user", "content": "Hi"}], bos_token="<s>")
    '<s>[INST] Hi [/INST]'
    """
    return _chat_template().render(messages=messages, bos_token=bos_token, add_generation_prompt=True)


def render_generation_prompt(user_text: str) -> str:
    """LLaVA-Med v1.5's generation prompt for one image and ``user_text``; the model continues after ``[/INST]``.

    The model layer tokenises this with BOS added by the tokenizer.

    >>> render_generation_prompt("Is this a CT image?")
    '[INST] <image>\\nIs this a CT image? [/INST]'
    """
    return render_chat([_user_turn(user_text)])


def render_training_text(user_text: str, answer: str) -> str:
    """The supervised sequence: the generation prompt, then `` {answer} </s>``.

    The loss covers ``{answer} </s>`` only; the model layer tokenises with BOS
    added by the tokenizer and masks the prompt tokens.

    >>> render_training_text("Is this a CT image?", "Yes")
    '[INST] <image>\\nIs this a CT image? [/INST] Yes </s>'
    """
    return render_chat([_user_turn(user_text), {"role": "assistant", "content": [{"type": "text", "text": answer}]}])


def _user_turn(user_text: str) -> dict:
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _checked(user_text)}]}


@functools.cache
def _chat_template():
    # The sandbox Hugging Face renders chat templates in; compiled once per process.
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(LLAVA_MED_CHAT_TEMPLATE)


def _checked(user_text: str) -> str:
    # A second <image> would make the model layer splice image features twice.
    if IMAGE_TOKEN in user_text:
        raise ValueError(f"user text must not contain {IMAGE_TOKEN}: the template puts the image first")
    return user_text
