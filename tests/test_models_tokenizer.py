"""Prompt token ids equal LLaVA-Med's own tokenisation, with the real Mistral tokenizer."""

from __future__ import annotations

import pytest
from PIL import Image

pytest.importorskip("mistral_common")
pytest.importorskip("sentencepiece")

from models_helpers import SLAKE_QUESTIONS, sentencepiece_model, upstream_prompt_ids  # noqa: E402
from slakevqa.models.families.llava_med import build_processor  # noqa: E402
from slakevqa.models.processor import generation_prompt, load_processor  # noqa: E402
from slakevqa.models.tokenizer import build_mistral_tokenizer, save_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    tokenizer = build_mistral_tokenizer(tmp_path_factory.mktemp("tok"))
    return build_processor(tokenizer, image_size=32, patch_size=8)  # 16 image tokens


@pytest.fixture(scope="module")
def sp():
    return sentencepiece_model()


def ids_of(processor, text: str) -> list[int]:
    """Ids of a prompt rendered by the chat template, which carries BOS itself (so no special tokens added)."""
    batch = processor(images=[Image.new("RGB", (32, 32))], text=[text], return_tensors="pt", add_special_tokens=False)
    return batch["input_ids"][0].tolist()


def test_special_token_ids_match_the_hf_llava_conversion(processor):
    tok = processor.tokenizer
    assert (tok.bos_token_id, tok.eos_token_id, tok.convert_tokens_to_ids("<image>"), tok.pad_token_id) == \
        (1, 2, 32000, 32001)
    assert len(tok) == 32002


def test_golden_ids_for_one_question(processor):
    # BOS, "[INST] " (ends in ▁ 28705), 16 x <image>, then "▁\nIs there a mass? [/INST]":
    # upstream tokenises the chunk after <image> on its own, so it starts with ▁ (28705).
    expected = [1, 733, 16289, 28793, 28705] + [32000] * 16 + \
        [28705, 13, 2301, 736, 264, 3042, 28804, 733, 28748, 16289, 28793]
    assert ids_of(processor, generation_prompt(processor, "Is there a mass?")) == expected


@pytest.mark.parametrize("question", SLAKE_QUESTIONS)
def test_generation_prompt_ids_equal_upstream(processor, sp, question):
    prompt = generation_prompt(processor, question)
    assert prompt == f"<s>[INST] <image>\n{question.strip()} [/INST]"  # upstream strips the question
    assert ids_of(processor, prompt) == upstream_prompt_ids(sp, prompt.removeprefix("<s>"), 16)


@pytest.mark.parametrize("question,answer", [(SLAKE_QUESTIONS[0], "MRI"), (SLAKE_QUESTIONS[2], "Yes"),
                                             (SLAKE_QUESTIONS[4], "2")])
def test_training_prompt_ids_equal_upstream(processor, sp, question, answer):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    assert text == f"<s>[INST] <image>\n{question} [/INST] {answer} </s>"
    ids = ids_of(processor, text)
    assert ids == upstream_prompt_ids(sp, text.removeprefix("<s>"), 16)
    assert ids[-1] == 2 and ids.count(1) == 1  # one EOS at the end, one BOS at the start


def test_ids_survive_save_and_reload(processor, tmp_path, sp):
    processor.save_pretrained(str(tmp_path))
    save_tokenizer(processor.tokenizer, tmp_path)  # writes legacy=True, which save_pretrained drops
    reloaded = load_processor(tmp_path)
    prompt = generation_prompt(reloaded, SLAKE_QUESTIONS[1])
    assert ids_of(reloaded, prompt) == upstream_prompt_ids(sp, prompt.removeprefix("<s>"), 16)


def test_chat_template_and_our_encoder_give_the_same_ids_for_every_prompt_style(processor):
    """One definition: apply_chat_template(tokenize=True) equals encode_prompt on every golden user text."""
    import json
    from pathlib import Path

    from slakevqa.inputs.encoding import encode_prompt
    from slakevqa.models.families.llava_med import CHAT as LLAVA_MED_CHAT

    golden = json.loads((Path(__file__).parent / "golden" / "prompts.json").read_text(encoding="utf-8"))
    for case in golden.values():
        user_text = case["generation"].removeprefix("[INST] <image>\n").removesuffix(" [/INST]")
        message = {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (32, 32))},
                                               {"type": "text", "text": user_text}]}
        ids = processor.apply_chat_template([message], add_generation_prompt=True, tokenize=True)
        assert ids[0] == encode_prompt(processor.tokenizer, user_text, 16, chat=LLAVA_MED_CHAT)[0]
