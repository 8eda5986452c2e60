"""Tiny models: the architecture choices of LLaVA-Med v1.5 at toy size, deterministic, runnable."""

from __future__ import annotations

from dataclasses import replace

import torch
from PIL import Image

from slakevqa.models.families.llava_med import CHAT
from slakevqa.models.shapes import TINY, padded_vocab_size
from slakevqa.models.tiny import build_tiny_llava

render_generation_prompt = CHAT.generation_prompt


def test_tiny_config_follows_llava_med_and_learnability_defaults():
    model, processor = build_tiny_llava("bpe")
    config = model.config
    assert (config.vision_feature_layer, config.vision_feature_select_strategy, config.projector_hidden_act) == \
        (-2, "default", "gelu")
    assert config.vision_config.num_hidden_layers == 3
    assert config.text_config.initializer_range == 0.1 and config.vision_config.initializer_range == 0.1
    assert config.image_token_index == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert config.text_config.vocab_size == padded_vocab_size(len(processor.tokenizer)) and \
        config.text_config.vocab_size % 64 == 0


def test_tiny_forward_counts_16_image_tokens_and_is_seeded():
    model, processor = build_tiny_llava("bpe", seed=3)
    again, _ = build_tiny_llava("bpe", seed=3)
    batch = processor(images=[Image.new("RGB", (40, 30), (9, 80, 200))],
                      text=[render_generation_prompt("Is there a mass?")], return_tensors="pt")
    assert (batch["input_ids"] == model.config.image_token_index).sum().item() == 16
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[-1] == model.config.text_config.vocab_size
    assert torch.equal(logits, again(**batch).logits)


def test_tiny_image_size_and_patch_size_set_the_token_count():
    model, processor = build_tiny_llava("bpe", image_size=48, patch_size=16, shape=replace(TINY, text_layers=1))
    batch = processor(images=[Image.new("RGB", (48, 48))], text=[render_generation_prompt("Q?")],
                      return_tensors="pt")
    assert (batch["input_ids"] == model.config.image_token_index).sum().item() == 9
    assert model.config.text_config.num_hidden_layers == 1
    model(**batch)  # the vision tower yields as many features as the prompt has image tokens
