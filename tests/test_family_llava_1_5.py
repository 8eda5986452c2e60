"""LLaVA-1.5 family (llava-hf/llava-1.5-7b-hf): our prompt and answer ids are its processor's, our pixels are
LLaVA-1.5's pad-to-square CLIP pixels, the tiny model's left-padded prefill plus cached steps equals one unpadded
forward, a saved processor loads back the same, and checkpoints and parameters are recognised.

No Vicuna / Llama-2 tokenizer is available offline (tokenizers/SOURCE.md). The chat tests run on tiny tokenizers
of the kinds a LLaVA-1.5 folder carries: transformers' ``LlamaTokenizer`` over a SentencePiece-style BPE (byte
fallback, ``▁`` word marks, Llama's ids for ``<unk> <s> </s> <0x00>...``, then ``<image>`` and ``<pad>`` added as
``convert_llava_weights_to_hf.py`` adds them), with ``legacy`` false (llava-hf's) and true; slakevqa's byte-level
BPE; and the real one when ``$SLAKEVQA_TOKENIZERS/vicuna/`` holds ``tokenizer.json.xz`` and
``tokenizer_config.json.xz`` (skipped otherwise).
"""

from __future__ import annotations

import json
import lzma
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from models_helpers import upstream_pixels
from slakevqa.inputs.encoding import encode_answer, encode_prompt
from slakevqa.kernels.compat import cache_argument, returned_cache
from slakevqa.models.families import family_for_config
from slakevqa.models.families.llava_1_5 import CHAT, FAMILY, build_processor, build_tiny, tiny_config
from slakevqa.models.families.llava_clip import image_token_count

TOKENIZERS = Path(os.environ.get("SLAKEVQA_TOKENIZERS", Path(__file__).parents[2] / "shared" / "tokenizers"))

QUESTIONS = (
    "What modality is used to take this image?",
    "Is this a T1 weighted image? ",  # SLAKE has questions ending in a space
    "Answer with one word.\nWhich organ is abnormal, the heart or the liver?\nPick one of: heart | liver",
    "Does the picture contain the Left Lung, Right Lung or both?",
    "图片里有肝脏吗?",
)
ANSWERS = ("CT", "Yes", "Left Lung, Right", "2", "T2 weighted")

# SLAKE-like words, so the toy SentencePiece vocabulary has pieces for them (any text still encodes: byte fallback)
CORPUS = (
    "USER: What modality is used to take this image? ASSISTANT: CT MRI X-Ray",
    "Is the lung healthy? Answer yes or no. Yes No T1 T2 weighted",
    "Which organ is abnormal, the heart or the liver? Pick one of: heart | liver",
    "Where is the abnormality located? Left Lung, Right Lung, brain, abdomen, chest, pelvic cavity",
    "Does the picture contain the spleen, colon, kidney? How many kidneys are in this image?",
)


def llama_style_tokenizer(legacy: bool):
    """A tiny ``LlamaTokenizer`` shaped like Vicuna's: ids 0-2 ``<unk> <s> </s>``, 3-258 byte pieces (so
    ``\\n`` is ``<0x0A>`` = 13, as in Llama-2), BPE pieces, then ``<image>`` and ``<pad>``; BOS added."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, LlamaTokenizer

    core = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{byte:02X}>" for byte in range(256))]
    core.train_from_iterator(list(CORPUS) * 4, trainers.BpeTrainer(vocab_size=640, special_tokens=specials))
    bpe = json.loads(core.to_str())["model"]
    tokenizer = LlamaTokenizer(vocab=bpe["vocab"], merges=[tuple(pair) for pair in bpe["merges"]], legacy=legacy,
                               add_bos_token=True, add_eos_token=False)
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.padding_side = "left"
    return tokenizer


def real_vicuna_tokenizer(folder: Path):
    source = TOKENIZERS / "vicuna"
    if not (source / "tokenizer.json.xz").is_file():
        pytest.skip(f"no Vicuna tokenizer in {source} (none is published offline; see tokenizers/SOURCE.md)")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes(lzma.decompress((source / f"{name}.xz").read_bytes()))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module", params=["llama", "llama_legacy", "bpe", "vicuna"])
def tokenizer(request, tmp_path_factory):
    from slakevqa.models.tokenizer import build_bpe_tokenizer

    if request.param == "vicuna":
        return real_vicuna_tokenizer(tmp_path_factory.mktemp("vicuna"))
    return build_bpe_tokenizer() if request.param == "bpe" else llama_style_tokenizer(request.param == "llama_legacy")


@pytest.fixture(scope="module")
def processor(tokenizer):
    return build_processor(tokenizer)  # the real sizes: 336 px, patch 14, 576 image tokens


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny(llama_style_tokenizer(legacy=False))
    return model, processor


def image_message(text: str, image: Image.Image | None = None) -> dict:
    image = image if image is not None else Image.new("RGB", (512, 512), (40, 80, 120))
    return {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}


def answer_message(answer: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": answer}]}


def hf_ids(processor, messages: list[dict], generation: bool) -> list[int]:
    batch = processor.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True, return_dict=True)
    return [int(i) for i in batch["input_ids"][0]]


def test_the_template_renders_llava_1_5s_vicuna_format():
    assert CHAT.generation_prompt("Is there a mass?") == "USER: <image>\nIs there a mass? ASSISTANT:"
    assert CHAT.training_text("Is there a mass?", "Yes") == "USER: <image>\nIs there a mass? ASSISTANT: Yes</s>"
    assert CHAT.stop_token == "</s>" and CHAT.bos_from_tokenizer


@pytest.mark.parametrize("question", QUESTIONS)
def test_prompt_ids_equal_the_processors(tokenizer, processor, question):
    expected = hf_ids(processor, [image_message(question)], generation=True)
    ours, cut = encode_prompt(tokenizer, question, image_token_count(processor), 4096, chat=CHAT)
    assert ours == expected and not cut
    assert ours[0] == tokenizer.bos_token_id and ours.count(tokenizer.convert_tokens_to_ids("<image>")) == 576


@pytest.mark.parametrize(("question", "answer"), list(zip(QUESTIONS, ANSWERS)))
def test_training_ids_are_the_processors_through_the_answer_then_the_stop_token(tokenizer, processor, question,
                                                                                answer):
    # llava-hf's template ends the answer with " " and no EOS; ours ends it with </s> (VicunaChatFormat)
    prompt, _ = encode_prompt(tokenizer, question, image_token_count(processor), 4096, chat=CHAT)
    answer_ids = encode_answer(tokenizer, question, answer, chat=CHAT)
    expected = hf_ids(processor, [image_message(question), answer_message(answer)], generation=False)
    ours = prompt + answer_ids
    assert answer_ids[-1] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("</s>")
    assert ours[:-1] == expected[: len(ours) - 1]
    # only the template's trailing space (SentencePiece "▁", byte-level "Ġ") is where our stop token goes
    assert tokenizer.convert_ids_to_tokens(expected[len(ours) - 1:]) in (["▁"], ["Ġ"])
    assert tokenizer.decode(answer_ids[:-1]).strip() == answer


def test_text_after_the_image_starts_with_a_word_mark_only_in_legacy_mode():
    # the one token between llava-hf's ids (legacy false) and upstream LLaVA-1.5's (module docstring)
    for legacy, after_image in ((False, ["<0x0A>"]), (True, ["▁", "<0x0A>"])):
        tokenizer = llama_style_tokenizer(legacy)
        ids, _ = encode_prompt(tokenizer, "Is there a mass?", 1, chat=CHAT)
        tokens = tokenizer.convert_ids_to_tokens(ids)
        at = tokens.index("<image>")
        assert tokens[at + 1: at + 1 + len(after_image)] == after_image and tokens[at - 1] == "▁"


@pytest.mark.parametrize(("width", "height", "mode"), [(512, 512, "RGB"), (300, 200, "RGB"), (200, 300, "RGB"),
                                                       (64, 64, "L")])
def test_pixels_are_the_processors_and_llava_1_5s_padded_ones(width, height, mode):
    from slakevqa.models.tokenizer import build_bpe_tokenizer

    processor = build_processor(build_bpe_tokenizer())
    generator = torch.Generator().manual_seed(width * height)
    array = torch.randint(0, 256, (height, width, 3 if mode == "RGB" else 1), generator=generator, dtype=torch.uint8)
    image = Image.fromarray(array.squeeze(-1).numpy() if mode == "L" else array.numpy(), mode).convert("RGB")
    ours = FAMILY.images.process(processor, image)
    theirs = processor(images=[image], text=[CHAT.generation_prompt("Is there a mass?")], return_tensors="pt")
    assert ours.tokens == 576 and ours.pixel_values.shape == (3, 336, 336)
    assert torch.equal(ours.pixel_values, theirs["pixel_values"][0])
    upstream = torch.from_numpy(upstream_pixels(image, 336)).float()  # expand2square + CLIP, as LLaVA-1.5 trained
    assert (ours.pixel_values - upstream).abs().max() < 1e-5
    assert FAMILY.images.collate([ours, ours])["pixel_values"].shape == (2, 3, 336, 336)


def test_left_padded_prefill_and_cached_steps_equal_unpadded_forwards(tiny):
    model, processor = tiny
    tokenizer, n = processor.tokenizer, image_token_count(processor)
    prompts = [encode_prompt(tokenizer, question, n, chat=CHAT)[0] for question in (QUESTIONS[0], QUESTIONS[2])]
    images = [Image.new("RGB", (48, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (20, 90, 160))]
    pixels = FAMILY.images.collate([FAMILY.images.process(processor, image) for image in images])
    width = max(len(prompt) for prompt in prompts)
    ids = torch.full((2, width), tokenizer.pad_token_id)
    mask = torch.zeros((2, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):], mask[row, width - len(prompt):] = torch.tensor(prompt), 1
    steps = torch.tensor([encode_answer(tokenizer, QUESTIONS[0], "CT", chat=CHAT)[:3],
                          encode_answer(tokenizer, QUESTIONS[2], "liver", chat=CHAT)[:3]])
    with torch.no_grad():
        positions = FAMILY.position_ids(model, ids, mask, pixels)
        prefill = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **pixels)
        after = model(input_ids=steps, attention_mask=torch.cat([mask, torch.ones_like(steps)], 1),
                      position_ids=FAMILY.next_positions(positions, steps.shape[1]), use_cache=True,
                      **FAMILY.images.text_inputs(steps), **{cache_argument(model): returned_cache(prefill)})
        for row, prompt in enumerate(prompts):
            alone = model(input_ids=torch.tensor([prompt + steps[row].tolist()]),
                          pixel_values=pixels["pixel_values"][row: row + 1]).logits[0]
            torch.testing.assert_close(prefill.logits[row, width - len(prompt):], alone[: len(prompt)],
                                       atol=1e-5, rtol=0)
            torch.testing.assert_close(after.logits[row], alone[len(prompt):], atol=1e-5, rtol=0)


def test_a_saved_processor_loads_back_with_the_same_ids_pixels_and_template(tokenizer, processor, tmp_path):
    from transformers import AutoProcessor

    from slakevqa.models.processor import pil_image_processor, save_processor

    save_processor(processor, tmp_path, FAMILY)
    loaded = AutoProcessor.from_pretrained(str(tmp_path), image_processor=pil_image_processor(tmp_path))
    assert type(loaded).__name__ == "LlavaProcessor" and type(loaded.image_processor).__name__.endswith("Pil")
    assert loaded.chat_template == CHAT.template == (tmp_path / "chat_template.jinja").read_text()
    image = Image.new("RGB", (300, 200), (10, 200, 60))
    for messages, generation in (([image_message(QUESTIONS[2], image)], True),
                                 ([image_message(QUESTIONS[1], image), answer_message("Yes")], False)):
        assert hf_ids(loaded, messages, generation) == hf_ids(processor, messages, generation)
    assert torch.equal(FAMILY.images.process(loaded, image).pixel_values,
                       FAMILY.images.process(processor, image).pixel_values)


def test_checkpoints_and_parameters_are_recognised(tiny):
    from slakevqa.kernels.shared_prefix import supports_shared_prefix

    model, processor = tiny
    config = tiny_config(processor.tokenizer).to_dict()
    assert family_for_config(config) is FAMILY
    assert family_for_config({"model_type": "llava", "text_config": {"model_type": "mistral"}}).name == "llava_med"
    parts, expected = FAMILY.parts, {"model.vision_tower.": "vision_tower", "model.multi_modal_projector.": "projector",
                                     "model.language_model.": "language_model", "lm_head.": "language_model"}
    seen = set()
    for name, _ in model.named_parameters():
        component = next(value for prefix, value in expected.items() if name.startswith(prefix))
        assert parts.component_of(name) == component == parts.component_of(f"base_model.model.{name}"), name
        seen.add(component)
    assert seen == {"vision_tower", "projector", "language_model"}
    leaves = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "fc1", "fc2", "gate_proj", "up_proj", "down_proj")
    targets = [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in leaves]
    assert any(name.startswith("model.vision_tower.") for name in targets)
    for name in targets:
        assert parts.in_language_model(name) == name.startswith("model.language_model."), name
    assert supports_shared_prefix(model) and FAMILY.fast.shared_prefix_eval  # a Llama decoder: fast rows apply
