"""How a loaded model fits together: parameter counts, image tokens, one generation.

Used by ``slakevqa check`` and the root ``test.py``. Prompts are slakevqa's own
(:func:`slakevqa.inputs.prompts.render_generation_prompt`, what training and evaluation feed),
not whatever chat template a checkpoint carries. Every mismatch that would make
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
from slakevqa.inputs.prompts import render_generation_prompt

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


def component_of(name: str) -> str:
    """Which component a parameter belongs to, by name (LoRA first: it lives inside the others)."""
    if "lora_" in name:
        return "LoRA"
    if "vision_tower" in name:
        return "vision tower"
    if "multi_modal_projector" in name:
        return "projector"
    return "language model"


def parameter_counts(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``{component: (parameters, trainable)}`` for the four components (tied weights once)."""
    counts = {name: [0, 0] for name in COMPONENTS}
    seen: set[int] = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        entry = counts[component_of(name)]
        entry[0] += parameter.numel()
        entry[1] += parameter.numel() if parameter.requires_grad else 0
    return {name: (total, trainable) for name, (total, trainable) in counts.items()}


def expected_image_tokens(config: LlavaConfig) -> int:
    """Image features per image: patches, plus CLS under the ``full`` strategy."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (getattr(config, "vision_feature_select_strategy", "default") == "full")


def image_token_id(processor: ProcessorMixin, model: PreTrainedModel) -> tuple[str, int]:
    """The image token and its id; it must exist in the tokenizer and match the model config."""
    tokenizer = processor.tokenizer
    token = getattr(processor, "image_token", None) or "<image>"
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise UserError(f"the tokenizer has no '{token}' token, so images cannot be placed in prompts; "
                        "convert the checkpoint with 'slakevqa convert-checkpoint' (it adds one)")
    config_id = getattr(model.config, "image_token_id", None)
    config_id = getattr(model.config, "image_token_index", None) if config_id is None else config_id
    if config_id != token_id:
        raise UserError(f"the tokenizer's '{token}' is id {token_id} but the model config says "
                        f"image_token_index {config_id}; fix config.json so they agree")
    return token, token_id


def synthetic_image(size: int = 336) -> Image.Image:
    """A deterministic RGB gradient with a bright disc, for checks without a real image."""
    import numpy as np

    y, x = np.mgrid[0:size, 0:size]
    disc = ((x - size * 0.6) ** 2 + (y - size * 0.4) ** 2) < (size * 0.15) ** 2
    pixels = np.stack([x * 255 // size, y * 255 // size, np.where(disc, 255, 40)], axis=-1)
    return Image.fromarray(pixels.astype("uint8"), "RGB")


def image_token_layout(processor: ProcessorMixin, model: PreTrainedModel, question: str = "Is there a mass?") -> ImageTokenLayout:
    """Render one prompt with one image and locate its image tokens; mismatches raise."""
    token, token_id = image_token_id(processor, model)
    batch = processor(images=[synthetic_image(64)], text=[render_generation_prompt(question)],
                      return_tensors="pt")
    ids = batch["input_ids"][0].tolist()
    positions = [i for i, t in enumerate(ids) if t == token_id]
    # LLaVA-1.5-style models only: LLaVA-NeXT and others vary the count with the image size.
    expected = expected_image_tokens(model.config) if model.config.model_type == "llava" else len(positions)
    if len(positions) != expected:
        hint = ("; set num_additional_image_tokens to 1 in processor_config.json (CLIP has a CLS token)"
                if len(positions) == expected - 1 else "; processor and model disagree on image size or patch size")
        raise UserError(f"the processor expands one '{token}' into {len(positions)} tokens but the vision "
                        f"tower yields {expected} features per image{hint}")
    if positions != list(range(positions[0], positions[0] + len(positions))):
        raise UserError(f"the {len(positions)} image tokens are not contiguous in the prompt")
    return ImageTokenLayout(token, token_id, len(positions), expected, positions[0], len(ids))


def generate_once(model: PreTrainedModel, processor: ProcessorMixin, image: Image.Image, question: str,
                  max_new_tokens: int = 32) -> tuple[str, int, float]:
    """Greedy answer to one question: ``(text, new token count, seconds)``."""
    import torch

    batch = processor(images=[image], text=[render_generation_prompt(question)], return_tensors="pt")
    batch = batch.to(model.device)
    batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=processor.tokenizer.pad_token_id)
    new = out[0, batch["input_ids"].shape[1]:]
    text = processor.tokenizer.decode(new, skip_special_tokens=True).strip()
    return text, len(new), time.perf_counter() - start
