"""`InputSettings`: what the model is shown, shared by training and evaluation and defined once.

Both :class:`~slakevqa.training.config.TrainConfig` and
:class:`~slakevqa.evaluation.config.EvalConfig` hold one as ``inputs``; its fields are flat keys
and flags of both (``slakevqa.config`` flattens groups), so a YAML file says::

    prompt_style: short
    mask_mode: crop
    mask_pad_ratio: 0.1

and a training run's final evaluation passes its own ``inputs`` on unchanged: the model is asked
exactly as it was taught. Values are checked here, once, for YAML, flags and Python callers alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slakevqa.config import check_choices, check_rules
from slakevqa.data.masks import MASK_MODES

TRIPLES_MODES: tuple[str, ...] = ("off", "real_only", "kvqa_real_only")


def _help(text: str, **extra: object) -> dict:
    return {"help": text, **extra}


@dataclass(frozen=True)
class InputSettings:
    prompt_style: str = field(default="short", metadata=_help("named prompt style (slakevqa.inputs.prompts)"))
    max_prompt_len: int = field(default=512, metadata=_help("prompt tokens kept, image tokens excluded"))
    mask_mode: str = field(default="none", metadata=_help("segmentation conditioning", choices=MASK_MODES))
    mask_pad_ratio: float = field(default=0.10, metadata=_help("crop margin as a share of the region size"))
    blank_images: bool = field(default=False, metadata=_help(
        "replace every image by a blank one: the question-only baseline"))
    triples_mode: str = field(default="real_only", metadata=_help(
        "KG facts in prompts: off, real_only (every record with a real triple), kvqa_real_only (only "
        "knowledge-based questions)", choices=TRIPLES_MODES))

    def __post_init__(self) -> None:
        from slakevqa.inputs.prompts import get_prompt_style

        check_choices(self)
        check_rules(self, RULES)
        get_prompt_style(self.prompt_style)  # an unknown style raises with the nearest names


RULES = (
    ("max_prompt_len", lambda v: v >= 1, "at least 1"),
    ("mask_pad_ratio", lambda v: v >= 0, ">= 0"),
)
