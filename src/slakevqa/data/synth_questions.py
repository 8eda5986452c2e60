"""Questions about a synthetic scene, in English and Chinese, each answerable only from the picture.

Per image (9 questions with one organ, 11 with two or three)::

    content     type    English template                                     answers
    Modality    OPEN    What modality is used to take this image?            CT | MRI | X-Ray
    Modality    CLOSED  Is this a CT or MRI image?  /  Is this an MRI?       CT | MRI | X-Ray, Yes | No
    Organ       CLOSED  Does the picture contain liver?      (one yes, one no) Yes | No
    Position    CLOSED  Is the heart on the left or right?                   Left | Right
    Position    OPEN    Where is the liver?                                  Left | Right
    Quantity    OPEN    How many organs are in this image?                   1 | 2 | 3
    Size        CLOSED  Which is larger in this image, liver or heart?       an organ name   (2+ organs)
    Size        OPEN    What is the largest organ in this image?             an organ name   (2+ organs)
    KG          OPEN    What is the function of the organ on the left of this image?   a KG value
    KG          OPEN    Which system does the largest organ in this image belong to?   Digestive System, ...
                  (or)  Which organ in this image belongs to the digestive system?     an organ name

"Left"/"Right" are the image's halves. Chinese copies follow SLAKE's zh conventions:
presence answers 包含/不包含, other yes/no answers 是的/不是, sides 左侧/右侧, organ
names in Chinese, modality names kept in Latin letters, kvqa relations in Chinese.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from slakevqa.data.synth_kg import ORGAN_FACTS
from slakevqa.data.synth_scene import MODALITIES, ORGAN_BY_NAME, ORGANS, SIDES, Scene

SIDE_ZH: dict[str, str] = {"Left": "左侧", "Right": "右侧"}
NO_RELATION: tuple[str, str, str] = ("vhead", "_", "_")


@dataclass(frozen=True)
class Question:
    """One question about one image, with its English and Chinese wording and answers."""

    content_type: str  # Modality, Organ, Position, Quantity, Size or KG
    answer_type: str  # CLOSED for yes/no and "A or B", OPEN otherwise
    en: str
    en_answer: str
    zh: str
    zh_answer: str
    en_triple: tuple[str, str, str] = NO_RELATION
    zh_triple: tuple[str, str, str] = NO_RELATION

    @property
    def base_type(self) -> str:
        return "kvqa" if self.content_type == "KG" else "vqa"


T = TypeVar("T")


def _pick(rng: np.random.Generator, items: list[T]) -> T:
    return items[int(rng.integers(len(items)))]


def _article(word: str) -> str:
    # "an MRI", "an X-Ray", "a CT": the article follows the spoken first letter.
    return "an" if word[0] in "AEFHILMNORSX" else "a"


def _zh(organ: str) -> str:
    return ORGAN_BY_NAME[organ].zh


def modality_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    """The OPEN modality question and one CLOSED one ("A or B", or yes/no half the time each)."""
    truth = scene.modality
    open_q = Question("Modality", "OPEN", "What modality is used to take this image?", truth,
                      "这张图片是用什么成像方式拍摄的?", truth)
    other = _pick(rng, [m for m in MODALITIES if m != truth])
    if rng.random() < 0.5:
        first, second = (truth, other) if rng.random() < 0.5 else (other, truth)
        closed = Question("Modality", "CLOSED", f"Is this {_article(first)} {first} or {second} image?", truth,
                          f"这是{first}图像还是{second}图像?", truth)
    else:
        # Ask about the true modality half the time, so Yes and No are equally likely per wording.
        asked = truth if rng.random() < 0.5 else other
        yes = asked == truth
        closed = Question("Modality", "CLOSED", f"Is this {_article(asked)} {asked}?", "Yes" if yes else "No",
                          f"这是一张{asked}图像吗?", "是的" if yes else "不是")
    return [open_q, closed]


def presence_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    """One organ that is there (Yes) and one that is not (No), in random order.

    Each organ is then asked with Yes and with No equally often (1/5 of images each),
    so the wording alone never tells the answer.
    """
    present = scene.names()
    absent = [kind.name for kind in ORGANS if kind.name not in present]
    asked = [(_pick(rng, present), True), (_pick(rng, absent), False)]
    if rng.random() < 0.5:
        asked.reverse()
    return [Question("Organ", "CLOSED", f"Does the picture contain {name.lower()}?", "Yes" if yes else "No",
                     f"图片中包含{_zh(name)}吗?", "包含" if yes else "不包含")
            for name, yes in asked]


def side_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    """Which half an organ is in: a CLOSED "left or right" and an OPEN "where", about different organs if possible."""
    closed_organ = _pick(rng, list(scene.organs))
    others = [organ for organ in scene.organs if organ is not closed_organ] or [closed_organ]
    open_organ = _pick(rng, others)
    closed = Question("Position", "CLOSED", f"Is the {closed_organ.name.lower()} on the left or right?",
                      closed_organ.side, f"{_zh(closed_organ.name)}在图片的左侧还是右侧?",
                      SIDE_ZH[closed_organ.side])
    open_q = Question("Position", "OPEN", f"Where is the {open_organ.name.lower()}?", open_organ.side,
                      f"{_zh(open_organ.name)}在哪一侧?", SIDE_ZH[open_organ.side])
    return [closed, open_q]


def count_question(scene: Scene) -> list[Question]:
    """How many organs; the answer is a digit string, as in SLAKE."""
    count = str(len(scene.organs))
    return [Question("Quantity", "OPEN", "How many organs are in this image?", count,
                     "图片中有几个器官?", count)]


def size_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    """Which of two organs is larger (CLOSED) and the largest organ (OPEN); none with one organ."""
    if len(scene.organs) < 2:
        return []
    a, b = (scene.organs[int(i)] for i in rng.choice(len(scene.organs), size=2, replace=False))
    larger = a if a.size > b.size else b
    largest = scene.largest().name
    return [
        Question("Size", "CLOSED", f"Which is larger in this image, {a.name.lower()} or {b.name.lower()}?",
                 larger.name, f"图中{_zh(a.name)}和{_zh(b.name)}哪个更大?", _zh(larger.name)),
        Question("Size", "OPEN", "What is the largest organ in this image?", largest,
                 "图中最大的器官是什么?", _zh(largest)),
    ]


def _reference(scene: Scene, rng: np.random.Generator) -> tuple[str, str, str]:
    """Name one organ by where it is, not what it is: ``(organ, English phrase, Chinese phrase)``.

    A side holding exactly one organ names it ("the organ on the left of this image");
    when no side does (two organs on one side), the largest organ is named instead.
    """
    sides = [side for side in SIDES if len(scene.on_side(side)) == 1]
    if sides:
        side = _pick(rng, sides)
        return (scene.on_side(side)[0].name, f"the organ on the {side.lower()} of this image",
                f"图片{SIDE_ZH[side]}的器官")
    return scene.largest().name, "the largest organ in this image", "图中最大的器官"


def _shared_systems(scene: Scene) -> list[str]:
    # Only systems with several KG organs: "which organ belongs to the circulatory system"
    # would be answered "Heart" without looking. Exactly one of them must be visible.
    systems = []
    for name in scene.names():
        system = ORGAN_FACTS[name].system
        members = [organ for organ, facts in ORGAN_FACTS.items() if facts.system == system]
        visible = [organ for organ in members if organ in scene.names()]
        if len(members) > 1 and len(visible) == 1:
            systems.append(system)
    return systems


def kg_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    """Two kvqa questions: the function of a located organ, then its system (or a system's organ)."""
    organ, phrase, phrase_zh = _reference(scene, rng)
    facts = ORGAN_FACTS[organ]
    function = Question("KG", "OPEN", f"What is the function of {phrase}?", facts.function,
                        f"{phrase_zh}有什么功能?", facts.function_zh,
                        ("vhead", "function", "ktail"), ("vhead", "功能", "ktail"))
    systems = _shared_systems(scene)
    if systems and rng.random() < 0.5:
        system = _pick(rng, systems)
        member = next(name for name in scene.names() if ORGAN_FACTS[name].system == system)
        system_zh = ORGAN_FACTS[member].system_zh
        second = Question("KG", "OPEN", f"Which organ in this image belongs to the {system.lower()}?", member,
                          f"图中哪个器官属于{system_zh}?", _zh(member),
                          ("vhead", "belong to", system.lower()), ("vhead", "属于", system_zh))
    else:
        organ, phrase, phrase_zh = _reference(scene, rng)
        facts = ORGAN_FACTS[organ]
        second = Question("KG", "OPEN", f"Which system does {phrase} belong to?", facts.system,
                          f"{phrase_zh}属于哪个系统?", facts.system_zh,
                          ("vhead", "belong to", "ktail"), ("vhead", "属于", "ktail"))
    return [function, second]


def make_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    """All questions about one scene, in a fixed order (modality, organ, position, quantity, size, KG).

    >>> from slakevqa.data.synth_scene import sample_scene
    >>> questions = make_questions(sample_scene(np.random.default_rng(0)), np.random.default_rng(1))
    >>> questions[0].en, questions[0].content_type
    ('What modality is used to take this image?', 'Modality')
    """
    return (modality_questions(scene, rng) + presence_questions(scene, rng) + side_questions(scene, rng)
            + count_question(scene) + size_questions(scene, rng) + kg_questions(scene, rng))
