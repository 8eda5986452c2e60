"""Tiny random LLaVA models (small CLIP + small Mistral) for tests and the demo.

Same architecture as LLaVA-Med v1.5 (CLIP vision, features from layer -2 without
CLS, 2-layer GELU projector, Mistral text), a few hundred thousand to a few million
parameters. Defaults follow the learnability notes: ``initializer_range=0.1`` (with
0.02 the tiny model never learns colour and side on the synthetic task), 3 vision
layers (with 2, feature layer -2 leaves one in use), 32 px images, patch 8 -> 16
image tokens.

Two tokenizers: the real Mistral-7B one when ``mistral-common`` is installed (32002
tokens, exact LLaVA-Med ids), or a byte-level BPE trained on the fly (~500 tokens,
3-5x faster training).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from slakevqa.errors import UserError
from slakevqa.models.processor import build_processor, save_processor
from slakevqa.models.tokenizer import (IMAGE_TOKEN, build_bpe_tokenizer, build_mistral_tokenizer,
                                       mistral_tokenizer_file)

if TYPE_CHECKING:  # annotations only: importing transformers at module load would cost seconds
    from transformers import LlavaConfig, PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

TOKENIZER_KINDS = ("mistral", "bpe", "auto")


@dataclass(frozen=True)
class TinySizes:
    """Shapes of the tiny model; the defaults are the learnability-tested ones."""

    image_size: int = 32  # px; 32 / 8 -> 16 image tokens
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 3  # feature layer -2 then uses two of them
    vision_heads: int = 2
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2  # grouped-query attention, as Mistral-7B (32 heads / 8 kv)
    initializer_range: float = 0.1  # 0.02 stalls learning at this size


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


def padded_vocab_size(n_tokens: int, multiple: int = 64) -> int:
    """Round the vocabulary up as the HF LLaVA conversion does (32002 -> 32064)."""
    return -(-n_tokens // multiple) * multiple


def tiny_llava_config(tokenizer: PreTrainedTokenizerBase, sizes: TinySizes = TinySizes()) -> LlavaConfig:
    """A ``LlavaConfig`` with LLaVA-Med v1.5's choices at toy sizes."""
    from transformers import CLIPVisionConfig, LlavaConfig, MistralConfig

    vision = CLIPVisionConfig(
        hidden_size=sizes.vision_hidden, intermediate_size=2 * sizes.vision_hidden,
        num_hidden_layers=sizes.vision_layers, num_attention_heads=sizes.vision_heads,
        image_size=sizes.image_size, patch_size=sizes.patch_size, projection_dim=sizes.vision_hidden,
        hidden_act="quick_gelu", initializer_range=sizes.initializer_range)
    text = MistralConfig(
        vocab_size=padded_vocab_size(len(tokenizer)), hidden_size=sizes.text_hidden,
        intermediate_size=2 * sizes.text_hidden, num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads, num_key_value_heads=sizes.text_kv_heads,
        max_position_embeddings=2048, rope_theta=1e6, sliding_window=None,
        initializer_range=sizes.initializer_range, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return LlavaConfig(
        vision_config=vision, text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(sizes.image_size // sizes.patch_size) ** 2,
        multimodal_projector_bias=True, tie_word_embeddings=False)


def build_tiny_llava(tokenizer_kind: str = "auto", image_size: int = 32, patch_size: int = 8,
                     seed: int = 0, sizes: TinySizes | None = None):
    """Build a tiny random ``LlavaForConditionalGeneration`` and its processor, in memory.

    Args:
        tokenizer_kind: ``mistral`` (needs mistral-common), ``bpe``, or ``auto``.
        image_size: input side in pixels (a multiple of ``patch_size``).
        patch_size: CLIP patch size; ``(image_size // patch_size) ** 2`` image tokens.
        seed: seeds the random weights, so two builds are identical.
        sizes: every other shape; ``image_size``/``patch_size`` override its fields.

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

    if image_size % patch_size:
        raise UserError(f"image size {image_size} is not a multiple of patch size {patch_size}")
    sizes = replace(sizes or TinySizes(), image_size=image_size, patch_size=patch_size)
    tokenizer = build_tokenizer(tokenizer_kind)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(tiny_llava_config(tokenizer, sizes))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = build_processor(tokenizer, image_size=image_size, patch_size=patch_size)
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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    save_processor(processor, folder)
    return folder
