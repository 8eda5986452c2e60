"""Training examples encoded together (one tokenizer call for the prompts, one for the answers) equal those encoded
one by one, for every chat format with its real tokenizer, on real SLAKE questions in both languages, with and
without truncation (``inputs.encoding.encode_examples``; ``training.examples.ExampleEncoder.encode_all``)."""

from __future__ import annotations

from pathlib import Path

import pytest

import family_fixtures
from slakevqa.data.slake import find_layout, load_split
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.encoding import encode_example, encode_examples
from slakevqa.inputs.vocab import build_closed_vocab
from slakevqa.models.families import family_named

FAMILIES = {"llava_med": 576, "qwen2_5_vl": 324, "gemma3": 256}  # image tokens: any count the format expands


def family_tokenizer(name: str, tmp_path_factory: pytest.TempPathFactory):
    if name == "llava_med":
        pytest.importorskip("mistral_common")
        from slakevqa.models.tokenizer import build_mistral_tokenizer

        return build_mistral_tokenizer(tmp_path_factory.mktemp("mistral"))
    return family_fixtures.real_tokenizer({"qwen2_5_vl": "qwen2_5", "gemma3": "gemma3"}[name], tmp_path_factory)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_examples_encoded_together_equal_one_by_one(name: str, slake_root: Path,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    chat, tokenizer = family_named(name).chat, family_tokenizer(name, tmp_path_factory)
    samples = [s for language in ("en", "zh") for s in load_split(slake_root, "train", language)[:120]]
    builder = InputBuilder.create(find_layout(slake_root), build_closed_vocab(samples))
    items = [(builder.view(s).user_text, s.answer, FAMILIES[name]) for s in samples]
    for max_prompt_len, max_answer_len in ((512, 64), (30, 3)):  # the defaults; prompts and answers cut
        together = encode_examples(tokenizer, items, max_prompt_len, max_answer_len, chat=chat)
        alone = [encode_example(tokenizer, *item, max_prompt_len, max_answer_len, chat=chat) for item in items]
        assert together == alone
        assert any(e.prompt_truncated for e in together) == (max_prompt_len == 30)
        assert any(e.answer_truncated for e in together) == (max_answer_len == 3)
