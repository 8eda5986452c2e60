"""How a loaded model fits together: parameter counts, image tokens, one generation.

Used by ``slakevqa check`` and the root ``test.py``. Prompts are slakevqa's own, in the model
family's chat format (what training and evaluation feed), not whatever chat template a checkpoint
carries; parts are the family's (:mod:`slakevqa.models.families`). Every mismatch that would make
training or evaluation fail later (no ``<image>`` token, the processor expanding an
image to a different number of tokens than the vision tower produces) raises a
:class:`UserError` with what to change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from slakevqa.errors import UserError

if TYPE_CHECKING:  # annotations only: importing transformers at module load would cost seconds
    import torch
    from transformers import LlavaConfig, PreTrainedModel, ProcessorMixin


COMPONENTS = ("vision tower", "projector", "language model", "LoRA")


@dataclass(frozen=True)
class ImageTokenLayout:
    """Where one image's tokens sit in a rendered prompt."""

    token: str
    token_id: int
    per_image: int  # what the processor inserts for one <image>
    expected: int  # what the vision tower + strategy produce
    first: int  # position of the first image token
    prompt_length: int


SHOWN = {"lora": "LoRA", "vision_tower": "vision tower", "projector": "projector", "language_model": "language model"}


def parameter_counts(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``{component: (parameters, trainable)}`` for the four components of the model's family (tied weights once)."""
    from slakevqa.models.families import family_of

    parts = family_of(model).parts
    counts = {name: [0, 0] for name in COMPONENTS}
    seen: set[int] = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        entry = counts[SHOWN[parts.component_of(name)]]
        entry[0] += parameter.numel()
        entry[1] += parameter.numel() if parameter.requires_grad else 0
    return {name: (total, trainable) for name, (total, trainable) in counts.items()}


def expected_image_tokens(config: LlavaConfig) -> int:
    """Image features per image: patches, plus CLS under the ``full`` strategy."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (getattr(config, "vision_feature_select_strategy", "default") == "full")


def image_token_id(token: str, tokenizer, model: PreTrainedModel) -> int:
    """The id of the family's image token; it must exist in the tokenizer and match the model config."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise UserError(f"the tokenizer has no '{token}' token, so images cannot be placed in prompts; "
                        "convert the checkpoint with 'slakevqa convert-checkpoint' (it adds one)")
    config_id = getattr(model.config, "image_token_id", None)
    config_id = getattr(model.config, "image_token_index", None) if config_id is None else config_id
    if config_id != token_id:
        raise UserError(f"the tokenizer's '{token}' is id {token_id} but the model config says "
                        f"image_token_index {config_id}; fix config.json so they agree")
    return token_id


def synthetic_image(size: int = 336) -> Image.Image:
    """A deterministic RGB gradient with a bright disc, for checks without a real image."""
    import numpy as np

    y, x = np.mgrid[0:size, 0:size]
    disc = ((x - size * 0.6) ** 2 + (y - size * 0.4) ** 2) < (size * 0.15) ** 2
    pixels = np.stack([x * 255 // size, y * 255 // size, np.where(disc, 255, 40)], axis=-1)
    return Image.fromarray(pixels.astype("uint8"), "RGB")


def image_token_layout(processor: ProcessorMixin, model: PreTrainedModel, family,
                       question: str = "Is there a mass?") -> ImageTokenLayout:
    """Encode one prompt with one image in the family's format and locate its image tokens; mismatches raise."""
    from slakevqa.inputs.encoding import encode_prompt

    token = family.chat.image_token
    token_id = image_token_id(token, processor.tokenizer, model)
    image = family.images.process(processor, synthetic_image(64))
    ids, _ = encode_prompt(processor.tokenizer, question, image.tokens, 10 ** 6, chat=family.chat)
    positions = [i for i, t in enumerate(ids) if t == token_id]
    expected = vision_token_count(model.config, image.tokens)
    if len(positions) != expected:
        hint = ("; set num_additional_image_tokens to 1 in processor_config.json (CLIP has a CLS token)"
                if len(positions) == expected - 1 else "; processor and model disagree on image size or patch size")
        raise UserError(f"the processor expands one '{token}' into {len(positions)} tokens but the vision "
                        f"tower yields {expected} features per image{hint}")
    if positions != list(range(positions[0], positions[0] + len(positions))):
        raise UserError(f"the {len(positions)} image tokens are not contiguous in the prompt")
    return ImageTokenLayout(token, token_id, len(positions), expected, positions[0], len(ids))


def vision_token_count(config, processed: int) -> int:
    """Features the vision side yields per image: LLaVA's patches (+ CLS under ``full``), Gemma 3's
    ``mm_tokens_per_image``; a count that follows the image (Qwen2.5-VL) is the processor's own."""
    if config.model_type == "llava":
        return expected_image_tokens(config)
    return int(getattr(config, "mm_tokens_per_image", None) or processed)


def generate_once(model: PreTrainedModel, processor: ProcessorMixin, family, image: Image.Image, question: str,
                  max_new_tokens: int = 32) -> tuple[str, int, float]:
    """Greedy answer to one question in the family's format: ``(text, new token count, seconds)``."""
    import torch

    from slakevqa.inputs.encoding import encode_prompt
    from slakevqa.models.families.family import prompt_batch, stop_ids

    inputs = family.images.process(processor, image)
    ids, _ = encode_prompt(processor.tokenizer, question, inputs.tokens, 10 ** 6, chat=family.chat)
    batch = prompt_batch(family, [ids], [inputs], processor.tokenizer.pad_token_id, model)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=stop_ids(family, processor.tokenizer),
                             pad_token_id=processor.tokenizer.pad_token_id)
    new = out[0, batch["input_ids"].shape[1]:]
    text = processor.tokenizer.decode(new, skip_special_tokens=True).strip()
    return text, len(new), time.perf_counter() - start
