"""The Gemma 3 / MedGemma family: our encoder's ids, our pixels and our KV-cache continuation equal
transformers' own ``Gemma3Processor`` and ``Gemma3ForConditionalGeneration``, with the real Gemma 3 tokenizer.

The tokenizer files come from ``$SLAKEVQA_TOKENIZERS/gemma3`` (default ``../shared/tokenizers``, xz-compressed,
see SOURCE.md there); every test that needs them is skipped when they are absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from family_fixtures import ANSWERS, USER_TEXTS, noise_image, real_tokenizer, user_message
from slakevqa.inputs.encoding import encode_answer, encode_prompt
from slakevqa.kernels.compat import cache_argument, returned_cache
from slakevqa.models.families import FAMILIES, family_for_config, gemma3
from slakevqa.models.families.gemma3 import CHAT, FAMILY


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return real_tokenizer("gemma3", tmp_path_factory)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return gemma3.build_processor(tokenizer)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return gemma3.build_tiny(tokenizer)


def processor_ids(processor, messages: list[dict], generation: bool) -> dict:
    out = processor.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True, return_dict=True)
    return {"input_ids": list(out["input_ids"][0]), "token_type_ids": list(out["token_type_ids"][0])}


def test_template_is_the_official_one_shipped_with_the_tokenizer(tokenizer):
    path = Path(tokenizer.name_or_path) / "tokenizer_config.json"
    assert CHAT.template == json.loads(path.read_text())["chat_template"]


def test_image_block_text_is_the_processors(processor):
    assert gemma3.image_text(gemma3.IMAGE_TOKENS) == processor.full_image_sequence
    assert processor.image_seq_length == gemma3.IMAGE_TOKENS
    assert processor.tokenizer.image_token_id == gemma3.IMAGE_TOKEN_ID


@pytest.mark.parametrize("user_text", USER_TEXTS)
def test_prompt_ids_equal_the_processors_chat_template(tokenizer, processor, user_text):
    expected = processor_ids(processor, [user_message(user_text, noise_image(32, 32))], generation=True)
    ids, cut = encode_prompt(tokenizer, user_text, gemma3.IMAGE_TOKENS, 4096, chat=CHAT)
    assert not cut
    assert ids == expected["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert ids.count(gemma3.IMAGE_TOKEN_ID) == gemma3.IMAGE_TOKENS
    token_types = gemma3.text_inputs(torch.tensor([ids]))["token_type_ids"]
    assert token_types.dtype == torch.long and token_types[0].tolist() == expected["token_type_ids"]


@pytest.mark.parametrize("user_text,answer", list(zip(USER_TEXTS, ANSWERS)))
def test_training_ids_equal_the_processors_chat_template_cut_after_the_stop_token(tokenizer, processor, user_text,
                                                                                   answer):
    messages = [user_message(user_text, noise_image(32, 32)),
                {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    full = processor_ids(processor, messages, generation=False)["input_ids"]
    stop = tokenizer.convert_tokens_to_ids(gemma3.STOP_TOKEN)
    last_stop = len(full) - 1 - full[::-1].index(stop)
    assert full[last_stop + 1:] == tokenizer.encode("\n", add_special_tokens=False)  # left out on purpose
    prompt, _ = encode_prompt(tokenizer, user_text, gemma3.IMAGE_TOKENS, 4096, chat=CHAT)
    answer_ids = encode_answer(tokenizer, user_text, answer, chat=CHAT)
    assert prompt + answer_ids == full[: last_stop + 1]
    assert answer_ids[-1] == stop and tokenizer.decode(answer_ids[:-1]) == answer


def test_placeholders_in_question_text_cannot_add_an_image(tokenizer):
    ids, _ = encode_prompt(tokenizer, "Is <start_of_image> a <end_of_image> liver <image_soft_token>?", 16, 4096,
                           chat=CHAT)
    assert ids.count(tokenizer.convert_tokens_to_ids(gemma3.IMAGE_MARKER)) == 1
    assert ids.count(tokenizer.convert_tokens_to_ids(gemma3.IMAGE_END)) == 1
    assert ids.count(gemma3.IMAGE_TOKEN_ID) == 16


def test_truncation_keeps_the_image_block_and_the_turn_end(tokenizer):
    user_text = "Which organ is abnormal? " * 40
    full, _ = encode_prompt(tokenizer, user_text, 16, 4096, chat=CHAT)
    ids, cut = encode_prompt(tokenizer, user_text, 16, 40, chat=CHAT)
    head = full.index(tokenizer.convert_tokens_to_ids(gemma3.IMAGE_END)) + 1
    # --max_prompt_len counts the image as one token, as for the families expanded on ids: 40 + 16 - 1
    assert cut and len(ids) == 55
    assert ids[:head] == full[:head] and ids[head:] == full[len(full) - (55 - head):]


@pytest.mark.parametrize("width,height,mode", [(512, 512, "RGB"), (300, 200, "RGB"), (64, 64, "L"), (37, 90, "RGB")])
def test_pixels_equal_the_processors(processor, width, height, mode):
    image = noise_image(width, height, mode).convert("RGB")
    text = CHAT.generation_prompt("Is this a CT?", processor.tokenizer.bos_token)
    expected = processor(images=[image], text=[text], return_tensors="pt")
    ours = gemma3.process(processor, image)
    assert ours.tokens == gemma3.IMAGE_TOKENS
    assert ours.pixel_values.shape == (3, gemma3.IMAGE_SIZE, gemma3.IMAGE_SIZE)
    assert torch.equal(ours.pixel_values, expected["pixel_values"][0])
    assert torch.equal(gemma3.text_inputs(expected["input_ids"])["token_type_ids"], expected["token_type_ids"])
    # what pad_to_square says: stretched to 896x896 with PIL's bilinear filter, not padded, then scaled to [-1, 1]
    stretched = np.asarray(image.resize((896, 896), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    assert np.abs(ours.pixel_values.numpy() - ((stretched - 0.5) / 0.5).transpose(2, 0, 1)).max() < 1e-6


def test_collate_stacks_a_batch(processor):
    images = [gemma3.process(processor, noise_image(40, 30, seed=seed)) for seed in range(2)]
    batch = FAMILY.images.collate(images)
    assert set(batch) == {"pixel_values"} and batch["pixel_values"].shape == (2, 3, 896, 896)
    assert torch.equal(batch["pixel_values"][1], images[1].pixel_values)


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return ids, mask


@pytest.fixture(scope="module")
def tiny_batch(tokenizer, tiny):
    """Two prompts of different lengths (33 and 55 ids: both beyond the sliding window of 8) and their images."""
    _, processor = tiny
    rows = [encode_prompt(tokenizer, text, processor.image_seq_length, 512, chat=CHAT)[0]
            for text in (USER_TEXTS[0], USER_TEXTS[1])]
    images = [gemma3.process(processor, noise_image(50, 70, seed=1)), gemma3.process(processor, noise_image(64, 64))]
    return rows, FAMILY.images.collate(images)["pixel_values"]


def forward_alone(model, ids: list[int], pixels: torch.Tensor, keep: int) -> torch.Tensor:
    full = torch.tensor([ids])
    return model(input_ids=full, pixel_values=pixels[None], attention_mask=torch.ones_like(full),
                 logits_to_keep=keep, **gemma3.text_inputs(full)).logits[0]


@torch.no_grad()
def test_left_padded_prefill_then_cached_tokens_equal_one_full_forward_per_row(tokenizer, tiny, tiny_batch):
    model, _ = tiny
    rows, pixels = tiny_batch
    assert len(rows[0]) != len(rows[1])
    ids, mask = left_padded(rows, tokenizer.pad_token_id)
    positions = FAMILY.position_ids(model, ids, mask, {"pixel_values": pixels})
    prefill = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1, **FAMILY.images.text_inputs(ids))
    steps = torch.tensor([tokenizer.encode(" Left Lung", add_special_tokens=False)[:2] + [106],
                          tokenizer.encode(" Yes", add_special_tokens=False)[:1] + [106, 1]])
    more = model(input_ids=steps, attention_mask=torch.cat([mask, torch.ones_like(steps)], 1),
                 position_ids=FAMILY.next_positions(positions, steps.shape[1]), use_cache=True,
                 token_type_ids=torch.zeros_like(steps), **{cache_argument(model): returned_cache(prefill)})
    ours = torch.cat([prefill.logits, more.logits], 1)
    for row, prompt in enumerate(rows):
        expected = forward_alone(model, prompt + steps[row].tolist(), pixels[row], keep=steps.shape[1] + 1)
        torch.testing.assert_close(ours[row], expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_token_type_ids_make_the_image_block_bidirectional(tiny, tiny_batch):
    # Without them the forward silently falls back to a causal mask: text_inputs is not optional for Gemma 3.
    model, _ = tiny
    rows, pixels = tiny_batch
    full = torch.tensor([rows[0]])
    causal = model(input_ids=full, pixel_values=pixels[:1], logits_to_keep=1).logits[0]
    assert (causal - forward_alone(model, rows[0], pixels[0], keep=1)).abs().max() > 1e-4


def test_processor_round_trip_through_saved_files(tmp_path, tokenizer, processor):
    from transformers import AutoProcessor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    processor.save_pretrained(str(tmp_path))
    assert (tmp_path / "chat_template.jinja").read_text() == CHAT.template
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == FAMILY.processor_class == "Gemma3Processor"
    assert saved.get("image_processor", saved)["image_processor_type"] == "Gemma3ImageProcessor"
    assert FAMILY.images.compose_processor is None  # AutoProcessor builds it without torchvision
    loaded = AutoProcessor.from_pretrained(str(tmp_path),
                                           image_processor=Gemma3ImageProcessorPil.from_pretrained(str(tmp_path)))
    assert type(loaded).__name__ == "Gemma3Processor" and loaded.chat_template == CHAT.template
    image = noise_image(300, 200)
    messages = [user_message(USER_TEXTS[1], image)]
    assert processor_ids(loaded, messages, True) == processor_ids(processor, messages, True)
    ours, theirs = gemma3.process(loaded, image), gemma3.process(processor, image)
    assert ours.tokens == theirs.tokens == 256 and torch.equal(ours.pixel_values, theirs.pixel_values)


def test_checkpoints_are_recognised_and_parameters_fall_in_their_parts(tokenizer, tiny):
    model, _ = tiny
    assert FAMILIES["gemma3"] is FAMILY
    assert family_for_config(model.config.to_dict()) is FAMILY
    assert family_for_config({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text"}}) is FAMILY
    parts = FAMILY.parts
    for name, _ in model.named_parameters():
        expected = ("vision_tower" if name.startswith("model.vision_tower.") else
                    "projector" if name.startswith("model.multi_modal_projector.") else "language_model")
        assert parts.component_of(name) == expected, name
        assert parts.component_of("base_model.model." + name) == expected, name  # peft's wrapping
    components = {parts.component_of(name) for name, _ in model.named_parameters()}
    assert components == {"vision_tower", "projector", "language_model"}
    assert parts.component_of("model.multi_modal_projector.mm_input_projection_weight") == "projector"
    modules = dict(model.named_modules())
    assert all(name in modules for name in (parts.vision, parts.projector, parts.language_model, parts.lm_head))
    lora_leaves = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "fc1", "fc2", "gate_proj", "up_proj",
                   "down_proj")
    leaves = [name for name in modules if name.rsplit(".", 1)[-1] in lora_leaves]
    vision = [name for name in leaves if name.startswith(parts.vision + ".")]
    assert vision and not any(parts.in_language_model(name) for name in vision)
    assert all(parts.in_language_model(name) for name in leaves if name not in vision)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied


def test_tiny_config_shapes(tokenizer, tiny):
    model, processor = tiny
    config = model.config
    assert config.mm_tokens_per_image == processor.image_seq_length == 16
    assert config.image_token_id == gemma3.IMAGE_TOKEN_ID and config.text_config.vocab_size == len(tokenizer)
    assert processor.image_processor.size["height"] == config.vision_config.image_size == 64
    assert model.generation_config.eos_token_id == [1, 106] and model.generation_config.pad_token_id == 0
    assert not model.training
