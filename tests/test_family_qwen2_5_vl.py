"""The Qwen2.5-VL family: our encoder's ids, our pixels, our M-RoPE positions and KV-cache continuation equal
transformers' own ``Qwen2_5_VLProcessor`` logic and ``Qwen2_5_VLForConditionalGeneration``, with the real
Qwen2.5 tokenizer.

"The family's processor" is :func:`qwen2_5_vl.processor_class`: transformers' ``Qwen2_5_VLProcessor``
minus its video processor (which needs torchvision, absent here); its ``__call__`` and
``apply_chat_template`` are transformers' own. The tokenizer files come from ``$SLAKEVQA_TOKENIZERS/qwen2_5``
(default ``../shared/tokenizers``, xz-compressed, see SOURCE.md there); tests needing them skip without them.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from family_fixtures import ANSWERS, USER_TEXTS, noise_image, real_tokenizer, user_message
from slakevqa.inputs.encoding import encode_answer, encode_prompt
from slakevqa.kernels.compat import cache_argument, returned_cache
from slakevqa.kernels.shared_prefix import supports_shared_prefix
from slakevqa.models.families import FAMILIES, family_for_config, qwen2_5_vl
from slakevqa.models.families.qwen2_5_vl import CHAT, FAMILY

TEMPLATE_SHA256 = "a0bc6f6fc7a29a80017a433e8f03a1cc1236e838a944a2d034295a60c4f2fddb"  # chat_template.json's text



@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return real_tokenizer("qwen2_5", tmp_path_factory)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return qwen2_5_vl.build_processor(tokenizer)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return qwen2_5_vl.build_tiny(tokenizer)


def processor_ids(processor, messages: list[dict], generation: bool) -> list[int]:
    out = processor.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True, return_dict=True)
    return list(out["input_ids"][0])


def test_template_is_the_official_processor_template(processor):
    assert hashlib.sha256(CHAT.template.encode()).hexdigest() == TEMPLATE_SHA256
    assert processor.chat_template == CHAT.template
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    prompt = CHAT.generation_prompt("Is this a CT?")
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      "<|vision_start|><|image_pad|><|vision_end|>Is this a CT?<|im_end|>\n<|im_start|>assistant\n")


def test_the_tokenizer_files_template_is_text_only_and_never_taken(tokenizer, processor):
    """The trap: tokenizer_config.json's template is Qwen2.5's text one. For an image+text turn it fails
    or writes no image; for plain text it writes another system prompt. Our processor never takes it."""
    assert tokenizer.chat_template != CHAT.template
    text_turn = [{"role": "user", "content": "Is this a CT?"}]
    theirs = tokenizer.apply_chat_template(text_turn, tokenize=False, add_generation_prompt=True)
    ours = CHAT.render(text_turn, True)
    assert "You are Qwen, created by Alibaba Cloud." in theirs and "You are Qwen" not in ours
    assert theirs != ours
    try:
        with_image = tokenizer.apply_chat_template([user_message("Is this a CT?", noise_image(8, 8))], tokenize=False,
                                                   add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a list content is concatenated to a string: the template raises
        with_image = None
    assert with_image is None or "<|vision_start|>" not in with_image
    # built from the same tokenizer object, the processor carries the image-aware template all the same
    assert processor.tokenizer is tokenizer and processor.chat_template == CHAT.template


@pytest.mark.parametrize("user_text", USER_TEXTS)
def test_prompt_ids_equal_the_processor_chat_template(tokenizer, processor, user_text):
    image = noise_image(512, 512, seed=1)
    inputs = qwen2_5_vl.process(processor, image)
    assert inputs.tokens == 324  # SLAKE's 512x512 -> 504x504 -> 36x36 patches -> 18x18 tokens
    assert inputs.tensors["image_grid_thw"].tolist() == [[1, 36, 36]]
    ours, cut = encode_prompt(tokenizer, user_text, inputs.tokens, max_prompt_len=4096, chat=CHAT)
    assert not cut
    assert ours == processor_ids(processor, [user_message(user_text, image)], generation=True)
    assert ours.count(qwen2_5_vl.IMAGE_TOKEN_ID) == 324


@pytest.mark.parametrize("user_text,answer", list(zip(USER_TEXTS, ANSWERS)))
def test_training_ids_equal_the_processor_chat_template_through_the_stop_token(tokenizer, processor, user_text,
                                                                             answer):
    image = noise_image(300, 200, seed=2)
    tokens = qwen2_5_vl.process(processor, image).tokens
    prompt, _ = encode_prompt(tokenizer, user_text, tokens, max_prompt_len=4096, chat=CHAT)
    answer_ids = encode_answer(tokenizer, user_text, answer, chat=CHAT)
    assistant = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
    full = processor_ids(processor, [user_message(user_text, image), assistant], generation=False)
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cut = len(full) - full[::-1].index(stop)  # through the last <|im_end|>; its trailing "\n" is never predicted
    assert prompt + answer_ids == full[:cut]
    assert answer_ids[-1] == stop


@pytest.mark.parametrize("size,mode,tokens", [((512, 512), "RGB", 324), ((300, 200), "RGB", 77),
                                              ((64, 64), "L", 4), ((1000, 120), "RGB", 144)])
def test_process_equals_the_processor_call(processor, size, mode, tokens):
    image = noise_image(*size, mode=mode, seed=3).convert("RGB")
    ours = qwen2_5_vl.process(processor, image)
    theirs = processor(images=[image], text=[f"<|vision_start|>{qwen2_5_vl.IMAGE_TOKEN}<|vision_end|>x"],
                       return_tensors="pt")
    assert torch.equal(ours.tensors["pixel_values"], theirs["pixel_values"])
    assert torch.equal(ours.tensors["image_grid_thw"], theirs["image_grid_thw"])
    assert ours.tokens == tokens == int((theirs["input_ids"] == qwen2_5_vl.IMAGE_TOKEN_ID).sum())
    # the model's extras: mm_token_type_ids as the processor writes them
    assert torch.equal(qwen2_5_vl.text_inputs(theirs["input_ids"])["mm_token_type_ids"],
                       theirs["mm_token_type_ids"])


def test_tiny_images_give_4_to_16_tokens_and_collate_in_row_order(tiny):
    _, processor = tiny
    images = [qwen2_5_vl.process(processor, noise_image(*size, seed=4)) for size in ((512, 512), (300, 200), (64, 64))]
    assert [image.tokens for image in images] == [16, 12, 4]
    batch = qwen2_5_vl.collate(images)
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 6, 8], [1, 4, 4]]
    assert batch["pixel_values"].shape == (64 + 48 + 16, 3 * 2 * 14 * 14)
    assert torch.equal(batch["pixel_values"][64:112], images[1].pixel_values)


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return ids, mask


@pytest.fixture(scope="module")
def prompt_batch(tokenizer, tiny):
    """Two prompts of different lengths and image grids (16 and 12 tokens), left-padded."""
    _, processor = tiny
    images = [qwen2_5_vl.process(processor, noise_image(512, 512, seed=5)),
              qwen2_5_vl.process(processor, noise_image(300, 200, seed=6))]
    rows = [encode_prompt(tokenizer, text, image.tokens, max_prompt_len=4096, chat=CHAT)[0]
            for text, image in zip((USER_TEXTS[1], USER_TEXTS[0]), images)]
    ids, mask = left_padded(rows, tokenizer.pad_token_id)
    return rows, images, ids, mask


def test_position_ids_layout(tiny, prompt_batch):
    model, _ = tiny
    rows, images, ids, mask = prompt_batch
    positions = FAMILY.position_ids(model, ids, mask, qwen2_5_vl.collate(images))
    assert positions.shape == (3, 2, ids.shape[1])
    pad = ids.shape[1] - len(rows[1])
    assert pad > 0 and positions[:, 1, :pad].eq(0).all()
    row = positions[:, 1, pad:]  # the 300x200 image: 12 tokens, 3 rows x 4 columns
    start = rows[1].index(qwen2_5_vl.IMAGE_TOKEN_ID)
    assert row[:, :start].tolist() == [list(range(start))] * 3  # text before: 0, 1, ... on all axes
    block = row[:, start:start + 12] - start
    assert block[0].tolist() == [0] * 12
    assert block[1].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert block[2].tolist() == [0, 1, 2, 3] * 3
    after = row[:, start + 12:]
    assert after[:, 0].tolist() == [start + 4] * 3  # text resumes at start + max(3, 4)
    following = FAMILY.next_positions(positions, 3)
    assert following.shape == (3, 2, 3)
    assert following[:, 1].tolist() == [[int(after[0, -1]) + 1 + k for k in range(3)]] * 3


def test_left_padded_prefill_then_cached_tokens_equal_each_row_alone(tokenizer, tiny, prompt_batch):
    """CLOSED scoring on the plain backend: prefill a left-padded batch with explicit 3-D positions, feed 3
    more tokens on the KV cache; logits equal one full forward per row, unpadded, where the model builds
    its own positions (get_rope_index from mm_token_type_ids)."""
    model, _ = tiny
    rows, images, ids, mask = prompt_batch
    batch_images = qwen2_5_vl.collate(images)
    extra = torch.tensor([tokenizer.encode("Yes, no", add_special_tokens=False)[:3]] * 2)
    assert extra.shape == (2, 3)
    cache_key = cache_argument(model)
    with torch.no_grad():
        positions = FAMILY.position_ids(model, ids, mask, batch_images)
        prefill = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                        **batch_images, **FAMILY.images.text_inputs(ids))
        step = model(input_ids=extra, attention_mask=torch.cat([mask, torch.ones_like(extra)], dim=1),
                     position_ids=FAMILY.next_positions(positions, 3), use_cache=True,
                     **{cache_key: returned_cache(prefill)})
        for row, (prompt, image) in enumerate(zip(rows, images)):
            alone = torch.tensor([prompt + extra[row].tolist()])
            reference = model(input_ids=alone, use_cache=False, **qwen2_5_vl.collate([image]),
                              **FAMILY.images.text_inputs(alone)).logits[0]
            torch.testing.assert_close(prefill.logits[row, -1], reference[len(prompt) - 1], atol=1e-5, rtol=0)
            torch.testing.assert_close(step.logits[row], reference[len(prompt):], atol=1e-5, rtol=0)


def test_forward_without_token_types_silently_uses_1d_positions(tiny, prompt_batch):
    """Why text_inputs exists: without mm_token_type_ids (and without position_ids) transformers 5.x runs
    text-style positions over the image and gives other logits, with no error."""
    model, _ = tiny
    rows, images, _, _ = prompt_batch
    if not qwen2_5_vl.text_inputs(torch.tensor([rows[0]])):
        pytest.skip("this transformers' forward takes no mm_token_type_ids")
    ids = torch.tensor([rows[0]])
    with torch.no_grad():
        with_types = model(input_ids=ids, **qwen2_5_vl.collate(images[:1]), **qwen2_5_vl.text_inputs(ids)).logits
        model.model.rope_deltas = None
        without = model(input_ids=ids, **qwen2_5_vl.collate(images[:1])).logits
    assert not torch.allclose(with_types[0, -1], without[0, -1], atol=1e-4)


def test_processor_save_and_load_round_trip(tmp_path, tokenizer, processor):
    from transformers import AutoTokenizer

    from slakevqa.models.processor import load_processor

    processor.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2_5_VLProcessor"
    assert saved["image_processor"]["image_processor_type"] == "Qwen2VLImageProcessor"
    assert saved["image_processor"]["size"] == {"shortest_edge": 3136, "longest_edge": 12845056}
    legacy = json.loads((tmp_path / "preprocessor_config.json").read_text())  # where AutoProcessor finds video
    assert legacy["image_processor_type"] == "Qwen2VLImageProcessor"
    assert (tmp_path / "chat_template.jinja").read_text() == CHAT.template
    # the saved tokenizer's template is the image-aware one too: the folder no longer holds the trap
    assert AutoTokenizer.from_pretrained(str(tmp_path)).chat_template == CHAT.template

    loaded = load_processor(tmp_path, family=FAMILY)
    assert type(loaded.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert loaded.chat_template == CHAT.template
    image = noise_image(300, 200, seed=7)
    message = [user_message(USER_TEXTS[1], image)]
    assert processor_ids(loaded, message, True) == processor_ids(processor, message, True)
    for key in ("pixel_values", "image_grid_thw"):
        assert torch.equal(qwen2_5_vl.process(loaded, image).tensors[key],
                           qwen2_5_vl.process(processor, image).tensors[key])


def test_recognition_and_parts(tokenizer, tiny):
    model, _ = tiny
    config = qwen2_5_vl.tiny_config(tokenizer)
    assert family_for_config(config.to_dict()) is FAMILY is FAMILIES["qwen2_5_vl"]
    assert config.image_token_id == qwen2_5_vl.IMAGE_TOKEN_ID == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (config.vision_start_token_id, config.vision_end_token_id, config.video_token_id) == (151652, 151653, 151656)
    assert config.text_config.vocab_size % 64 == 0 and config.text_config.vocab_size >= len(tokenizer)
    parts = FAMILY.parts
    for name, _ in model.named_parameters():
        expected = ("projector" if ".visual.merger." in name else "vision_tower" if ".visual." in name
                    else "language_model")
        assert parts.component_of(name) == expected, name
        assert parts.component_of(f"base_model.model.{name}") == expected, name
    vision_leaves = [name for name, _ in model.named_modules()
                     if name.startswith("model.visual.blocks.") and name.rsplit(".", 1)[-1] in
                     ("qkv", "proj", "gate_proj", "up_proj", "down_proj")]
    assert {leaf.rsplit(".", 1)[-1] for leaf in vision_leaves} >= {"qkv", "gate_proj", "up_proj", "down_proj"}
    assert not any(parts.in_language_model(name) for name in vision_leaves)
    assert parts.in_language_model("model.language_model.layers.0.self_attn.q_proj")
    assert FAMILY.llama_factory_template == "qwen2_vl"
    # evaluation rows after a prefix through the model (M-RoPE), no packed prefill, no packed training yet
    assert supports_shared_prefix(tiny[0]) and FAMILY.fast.shared_prefix_eval and not FAMILY.fast.packed_prefill
