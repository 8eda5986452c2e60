"""Prompts: the user text of one question, which every model family's chat format then wraps.

:func:`build_user_text` writes ``{text}``: an instruction chosen by the route (OPEN or CLOSED),
optional knowledge-graph facts, the question, and for choice questions the candidates. The wording
is a named, versioned :class:`PromptStyle`. The chat format around it (LLaVA-Med's
``[INST] <image>\n{text} [/INST]``, Qwen's ``<|im_start|>user ...``) is the model family's
(:class:`slakevqa.inputs.chat_format.ChatFormat`, facts in :mod:`slakevqa.models.families`): one
Jinja template per family, rendered by our encoder and written into every folder we save.

Example, style ``short`` for an options question::

    [INST] <image>
    Answer the question about this medical image with a single answer and nothing else.
    Which is the biggest in this image,lung,liver or heart?
    Pick one of: lung | liver | heart [/INST]

The gold answer never enters a
prompt: the builder takes the question and its :class:`~slakevqa.inputs.routing.Route`,
both computed from the question alone.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Sequence

from slakevqa.errors import UserError
from slakevqa.inputs.routing import Route

IMAGE_TOKEN = "<image>"

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
