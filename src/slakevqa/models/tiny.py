"""Tiny random LLaVA models (small CLIP + small Mistral) for tests and the demo.

Same architecture as LLaVA-Med v1.5 (CLIP vision, features from layer -2 without
CLS, 2-layer GELU projector, Mistral text), a few hundred thousand to a few million
parameters. The sizes are :data:`slakevqa.models.shapes.TINY` (the learnability-tested
ones: ``initializer_range=0.1``, 3 vision layers, 32 px images, patch 8 -> 16 image
tokens), the config comes from :func:`slakevqa.models.shapes.llava_config`.

Two tokenizers: the real Mistral-7B one when ``mistral-common`` is installed (32002
tokens, exact LLaVA-Med ids), or a byte-level BPE trained on the fly (~500 tokens,
3-5x faster training).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from slakevqa.errors import UserError
from slakevqa.models.families.llava_med import build_processor
from slakevqa.models.processor import save_processor
from slakevqa.models.shapes import TINY, LlavaShape, llava_config, padded_vocab_size
from slakevqa.models.tokenizer import build_bpe_tokenizer, build_mistral_tokenizer, mistral_tokenizer_file

if TYPE_CHECKING:  # annotations only: importing transformers at module load would cost seconds
    from transformers import PreTrainedModel, ProcessorMixin

TOKENIZER_KINDS = ("mistral", "bpe", "auto")
__all__ = ["TOKENIZER_KINDS", "build_tiny_llava", "build_tokenizer", "padded_vocab_size",
           "resolve_tokenizer_kind", "save_llava", "write_llava"]  # padded_vocab_size: convert.py imports it here


def resolve_tokenizer_kind(kind: str) -> str:
    """``auto`` -> ``mistral`` when mistral-common is installed, else ``bpe``."""
    if kind not in TOKENIZER_KINDS:
        raise UserError(f"unknown tokenizer kind '{kind}'; choose one of {', '.join(TOKENIZER_KINDS)}")
    if kind == "auto":
        return "mistral" if mistral_tokenizer_file() is not None else "bpe"
    return kind


def build_tokenizer(kind: str):
    """The tokenizer of a tiny model: ``mistral`` (real, 32002 tokens) or ``bpe`` (toy)."""
    if resolve_tokenizer_kind(kind) == "bpe":
        return build_bpe_tokenizer()
    with tempfile.TemporaryDirectory() as work_dir:  # the .model file is read at load time
        return build_mistral_tokenizer(work_dir)


def build_tiny_llava(tokenizer_kind: str = "auto", image_size: int | None = None, patch_size: int | None = None,
                     seed: int = 0, shape: LlavaShape = TINY):
    """Build a tiny random ``LlavaForConditionalGeneration`` and its processor, in memory.

    Args:
        tokenizer_kind: ``mistral`` (needs mistral-common), ``bpe``, or ``auto``.
        image_size: input side in pixels (a multiple of ``patch_size``); default the shape's (32).
        patch_size: CLIP patch size; ``(image_size // patch_size) ** 2`` image tokens; default the shape's (8).
        seed: seeds the random weights, so two builds are identical.
        shape: every other size (default :data:`~slakevqa.models.shapes.TINY`);
            ``image_size``/``patch_size`` override its fields.

    Returns:
        ``(model, processor)``, the model in fp32 and eval mode.

    Example::

        >>> model, processor = build_tiny_llava("bpe")
        >>> batch = processor(images=[img], text=["[INST] <image>\\nIs there a mass? [/INST]"],
        ...                   return_tensors="pt")
        >>> model(**batch).logits.shape[-1] == model.config.text_config.vocab_size
        True
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    shape = replace(shape, image_size=shape.image_size if image_size is None else image_size,
                    patch_size=shape.patch_size if patch_size is None else patch_size)
    if shape.image_size % shape.patch_size:
        raise UserError(f"image size {shape.image_size} is not a multiple of patch size {shape.patch_size}")
    tokenizer = build_tokenizer(tokenizer_kind)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(llava_config(shape, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = build_processor(tokenizer, image_size=shape.image_size, patch_size=shape.patch_size)
    return model.eval(), processor


def save_llava(model: PreTrainedModel, processor: ProcessorMixin, folder: str | Path) -> Path:
    """Write a model and its processor as a Hugging Face folder (safetensors), atomically.

    The folder is written beside ``folder`` and renamed into place
    (:func:`slakevqa.files.atomic_folder`): an existing ``folder`` is replaced only once the
    new one is whole, and a kill never leaves half a model under its name.
    ``AutoModelForImageTextToText.from_pretrained(folder)`` and
    :func:`slakevqa.models.loading.load_model` read it back.
    """
    from slakevqa.files import atomic_folder

    folder = Path(folder)
    with atomic_folder(folder) as partial:
        write_llava(model, processor, partial)
    return folder


def write_llava(model: PreTrainedModel, processor: ProcessorMixin, folder: str | Path) -> Path:
    """:func:`save_llava` in place, into an existing (temporary) folder: the step inside an atomic write."""
    from slakevqa.models.families import family_of

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    save_processor(processor, folder, family_of(model))  # the family's chat template, whatever the model
    return folder
