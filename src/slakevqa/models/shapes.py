"""Every LLaVA model size slakevqa builds: one :class:`LlavaShape`, two named instances, one config function.

The architecture is LLaVA-Med v1.5's throughout: a CLIP vision tower (features of layer -2
without CLS), a 2-layer GELU projector, a Mistral text model. A shape only says how big:

* :data:`LLAVA_MED_7B`: microsoft/llava-med-v1.5-mistral-7b, i.e. Mistral-7B-Instruct-v0.2
  (4096 hidden, 14336 MLP, 32 layers, 32 heads, 8 KV heads, 32768 positions, RMS eps 1e-5,
  rope_theta 1e6, vocabulary 32000 before ``<image>``/``<pad>``) + CLIP ViT-L/14 at 336 px
  (1024 hidden, 4096 MLP, 24 layers, 16 heads, 576 image tokens) + projector 1024 -> 4096 -> 4096.
  About 7.57 B parameters once the vocabulary is padded to 32064.
* :data:`TINY`: the tests' and the demo's model (a few million parameters); its values are the
  learnability-tested ones (``initializer_range=0.1``, 3 vision layers, 32 px, patch 8).

:func:`llava_config` turns a shape into the transformers ``LlavaConfig``; every model builder
(``models/tiny.py``, ``models/random_llava.py``, the benchmarks) goes through it, and the
original ``llava_mistral`` config.json is derived from that (``models/tiny_original.original_config``).

    >>> LLAVA_MED_7B.image_tokens, TINY.image_tokens
    (576, 16)
    >>> from dataclasses import replace
    >>> replace(TINY, text_layers=1).text_layers   # a variant is a replace(), never a new definition
    1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from slakevqa.models.tokenizer import IMAGE_TOKEN, MISTRAL_VOCAB_SIZE

if TYPE_CHECKING:  # annotations only: importing transformers at module load would cost seconds
    from transformers import LlavaConfig, PreTrainedTokenizerBase

VOCAB_MULTIPLE = 64  # the HF LLaVA conversion pads embedding rows to a multiple of 64 (32002 -> 32064)
MISTRAL_BOS, MISTRAL_EOS = 1, 2


@dataclass(frozen=True)
class LlavaShape:
    """How big each part of a LLaVA-Med-architecture model is."""

    # text model (Mistral)
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    vocab_size: int  # the base tokenizer's; <image> and <pad> follow it, rows padded to VOCAB_MULTIPLE
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    # vision tower (CLIP)
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    vision_projection_dim: int  # CLIP's text-image projection: unused by LLaVA, part of the tower's config
    image_size: int  # px
    patch_size: int
    # projector, feature choice and initialisation
    vision_feature_layer: int = -2
    projector_act: str = "gelu"
    initializer_range: float = 0.02

    @property
    def image_tokens(self) -> int:
        """Image tokens per picture: one per patch (CLS dropped)."""
        return (self.image_size // self.patch_size) ** 2


LLAVA_MED_7B = LlavaShape(
    text_hidden=4096, text_intermediate=14336, text_layers=32, text_heads=32, text_kv_heads=8,
    vocab_size=MISTRAL_VOCAB_SIZE, max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1e6,
    vision_hidden=1024, vision_intermediate=4096, vision_layers=24, vision_heads=16, vision_projection_dim=768,
    image_size=336, patch_size=14)

# Toy sizes with LLaVA-Med's choices. 2048 positions and RMS eps 1e-6 (not Mistral's 32768 / 1e-5)
# are what the tiny model has always had: every tiny-model number in the tests was made with them.
TINY = LlavaShape(
    text_hidden=128, text_intermediate=256, text_layers=2, text_heads=4,
    text_kv_heads=2,  # grouped-query attention, as Mistral-7B (32 heads / 8 kv)
    vocab_size=MISTRAL_VOCAB_SIZE, max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=1e6,
    vision_hidden=64, vision_intermediate=128,
    vision_layers=3,  # feature layer -2 then uses two of them (with 2, only one)
    vision_heads=2, vision_projection_dim=64,
    image_size=32, patch_size=8,  # 16 image tokens
    initializer_range=0.1)  # 0.02 stalls learning at this size (reference/learnability.md)


def padded_vocab_size(n_tokens: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Round the vocabulary up as the HF LLaVA conversion does (32002 -> 32064)."""
    return -(-n_tokens // multiple) * multiple


def token_ids(shape: LlavaShape, tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, int]:
    """Vocabulary size and special ids: the tokenizer's, or without one the Mistral layout of ``shape``.

    Without a tokenizer the ids are those ``add_llava_tokens`` gives the Mistral vocabulary:
    ``<image>`` right after the base vocabulary, ``<pad>`` after it, BOS 1, EOS 2.

    >>> token_ids(LLAVA_MED_7B)
    {'vocab_size': 32064, 'image': 32000, 'bos': 1, 'eos': 2, 'pad': 32001}
    """
    if tokenizer is None:
        base = shape.vocab_size
        return {"vocab_size": padded_vocab_size(base + 2), "image": base, "bos": MISTRAL_BOS, "eos": MISTRAL_EOS,
                "pad": base + 1}
    return {"vocab_size": padded_vocab_size(len(tokenizer)), "image": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}


def llava_config(shape: LlavaShape, tokenizer: PreTrainedTokenizerBase | None = None) -> LlavaConfig:
    """The transformers ``LlavaConfig`` of ``shape``; token ids as :func:`token_ids` says.

    Example::

        >>> config = llava_config(LLAVA_MED_7B)
        >>> config.text_config.max_position_embeddings, config.vision_config.image_size
        (32768, 336)
    """
    from transformers import CLIPVisionConfig, LlavaConfig, MistralConfig

    ids = token_ids(shape, tokenizer)
    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
        num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
        image_size=shape.image_size, patch_size=shape.patch_size, projection_dim=shape.vision_projection_dim,
        hidden_act="quick_gelu", initializer_range=shape.initializer_range)
    text = MistralConfig(
        vocab_size=ids["vocab_size"], hidden_size=shape.text_hidden, intermediate_size=shape.text_intermediate,
        num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_kv_heads, max_position_embeddings=shape.max_position_embeddings,
        rms_norm_eps=shape.rms_norm_eps, rope_theta=shape.rope_theta, sliding_window=None,
        initializer_range=shape.initializer_range, tie_word_embeddings=False,
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=ids["image"],
        projector_hidden_act=shape.projector_act, vision_feature_layer=shape.vision_feature_layer,
        vision_feature_select_strategy="default", image_seq_length=shape.image_tokens,
        multimodal_projector_bias=True, tie_word_embeddings=False)
