"""Prompt styles and LLaVA-Med's chat format, pinned by golden snapshots.

Every style x route (open, yesno, options, vocab) x KG (off, on) is rendered and
compared with ``tests/golden/prompts.json``. Any wording change fails here; to
accept one deliberately, bump the style's ``version`` and regenerate::

    SLAKEVQA_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_prompts.py
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from pathlib import Path

import pytest

from slakevqa.errors import UserError
from slakevqa.inputs.prompts import (
    IMAGE_TOKEN,
    PROMPT_STYLES,
    build_user_text,
    get_prompt_style,
)
from slakevqa.inputs.routing import Route
from slakevqa.models.families.llava_med import CHAT

render_generation_prompt, render_training_text = CHAT.generation_prompt, CHAT.training_text

GOLDEN = Path(__file__).parent / "golden" / "prompts.json"
UPDATE = os.environ.get("SLAKEVQA_UPDATE_GOLDEN") == "1"
KG_FACTS = ["Lung belong to: Respiratory System", "Heart function: pump blood around the body"]
# One question per route, with the route computed from it by slakevqa.inputs.routing (pinned in test_routing).
CASES: dict[str, tuple[str, Route, str]] = {
    "open": ("What modality is used to take this image?", Route("open"), "MRI"),
    "yesno": ("Does the picture contain liver?", Route("yesno", ("Yes", "No")), "Yes"),
    "options": ("Which is the biggest in this image,lung,liver or heart?",
                Route("options", ("lung", "liver", "heart")), "Lung"),
    "vocab": ("Which kind of weighting is this image generated with?",
              Route("vocab", ("Lung", "Liver", "T2", "Transverse Plane")), "T2"),
}


def render_case(style_name: str, route_name: str, with_kg: bool) -> dict[str, str]:
    question, route, answer = CASES[route_name]
    text = build_user_text(question, route, PROMPT_STYLES[style_name], KG_FACTS if with_kg else ())
    return {"style": PROMPT_STYLES[style_name].tag, "generation": render_generation_prompt(text),
            "training": render_training_text(text, answer)}


def all_cases() -> dict[str, dict[str, str]]:
    return {f"{style}/{route}/kg_{'on' if kg else 'off'}": render_case(style, route, kg)
            for style in PROMPT_STYLES for route in CASES for kg in (False, True)}


def test_golden_snapshots_match_every_style_route_and_kg():
    rendered = all_cases()
    if UPDATE:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(rendered, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert sorted(golden) == sorted(rendered), "cases added or removed: regenerate with SLAKEVQA_UPDATE_GOLDEN=1"
    for key, expected in golden.items():
        assert rendered[key] == expected, f"{key} changed: bump the style version, then SLAKEVQA_UPDATE_GOLDEN=1"
    assert len(golden) == len(PROMPT_STYLES) * 4 * 2


def test_golden_style_tags_match_versions():
    # A snapshot written under short@v1 must not silently stand for short@v2.
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    for key, case in golden.items():
        assert case["style"] == PROMPT_STYLES[key.split("/")[0]].tag


def test_generation_and_training_formats_are_llava_med_v15():
    assert render_generation_prompt("Q?") == "[INST] <image>\nQ? [/INST]"
    assert render_training_text("Q?", " Yes ") == "[INST] <image>\nQ? [/INST] Yes </s>"


def test_image_comes_first_and_once():
    text = build_user_text("Is this <image> a CT?", Route("yesno", ("Yes", "No")), PROMPT_STYLES["short"])
    prompt = render_generation_prompt(text)
    assert prompt.startswith("[INST] <image>\n") and prompt.count(IMAGE_TOKEN) == 1
    # a placeholder in user text would splice image features twice: the format removes it
    assert render_generation_prompt("<image>\nQ?") == "[INST] <image>\nQ? [/INST]"


@pytest.mark.parametrize("style", sorted(PROMPT_STYLES))
@pytest.mark.parametrize("route", sorted(CASES))
def test_kg_facts_reach_open_and_closed_prompts(style: str, route: str):
    with_kg, without = render_case(style, route, True), render_case(style, route, False)
    assert all(fact in with_kg["generation"] for fact in KG_FACTS)
    assert not any(fact in without["generation"] for fact in KG_FACTS)


def test_short_lists_choices_for_yesno_and_options_only():
    listed = {route: "Pick one of:" in render_case("short", route, False)["generation"] for route in CASES}
    assert listed == {"open": False, "yesno": True, "options": True, "vocab": False}
    assert "Pick one of: lung | liver | heart [/INST]" in render_case("short", "options", False)["generation"]


def test_open_and_closed_instructions_differ():
    short = PROMPT_STYLES["short"]
    assert short.open_instruction and short.closed_instruction and short.open_instruction != short.closed_instruction
    assert render_case("short", "open", False)["generation"].count(short.open_instruction) == 1
    assert short.closed_instruction in render_case("short", "vocab", False)["generation"]


def test_plain_is_the_question_alone():
    for route, (question, _, _) in CASES.items():
        assert render_case("plain", route, False)["generation"] == f"[INST] <image>\n{question} [/INST]"


def test_empty_kg_facts_add_nothing():
    question, route, _ = CASES["open"]
    style = PROMPT_STYLES["short"]
    assert build_user_text(question, route, style, ["", "  "]) == build_user_text(question, route, style)


def test_wording_is_our_own_not_the_reference_toolkits():
    # Phrases of the reference toolkit's templates (reference doc §1.3) must not appear.
    reference_phrases = ("You are answering a medical VQA question", "Return ONLY", "Keep it short",
                         "No explanations", "Context triples", "Options:", "Answer:")
    for style in PROMPT_STYLES.values():
        text = " ".join(str(value) for value in dataclasses.asdict(style).values())
        assert not [phrase for phrase in reference_phrases if phrase.lower() in text.lower()], style.name


def test_styles_are_named_and_versioned():
    assert {"short", "plain"} <= set(PROMPT_STYLES)
    for name, style in PROMPT_STYLES.items():
        assert style.name == name and isinstance(style.version, int) and style.version >= 1
        assert style.tag == f"{name}@v{style.version}"


def test_unknown_style_suggests_the_nearest_name():
    assert get_prompt_style("short") is PROMPT_STYLES["short"]
    with pytest.raises(UserError, match="Did you mean: short"):
        get_prompt_style("shrot")


def test_the_prompt_builder_cannot_see_an_answer():
    assert "answer" not in inspect.signature(build_user_text).parameters
