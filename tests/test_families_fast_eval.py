"""The fast evaluation backend for Qwen2.5-VL and Gemma 3 (evaluation/prefix_prefill.py) equals the plain one.

Their image prefixes run through the model's own forward (Gemma 3's bidirectional image block, Qwen2.5-VL's
M-RoPE positions), once per image; the questions run as rows that read them. On tiny fp32 models with the
real tokenizers, over the three routes, each path must give the plain backend's predictions and raw outputs,
and scores within 1e-5:

* with the reference variable-length kernel standing in for flash attention's (the rows' prefix parts);
* with images of different sizes in one batch (Qwen2.5-VL: one prefix per token count, one prefill each);
* Gemma 3 with a sliding window shorter than the prompts: the rows would attend past it, so the plain
  backend answers, silently and correctly.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
from PIL import Image

import family_fixtures
from slakevqa.data.slake import find_layout, load_split
from slakevqa.evaluation.engine import Engine
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.vocab import build_closed_vocab
from slakevqa.kernels.shared_prefix import ATTENTION_NAME as ROWS
from slakevqa.models.families import family_named

QUESTIONS = 24  # the synthetic test split's first 3 images
TOKENIZERS = {"qwen2_5_vl": "qwen2_5", "gemma3": "gemma3"}


@pytest.fixture(scope="module")
def mixed_sizes(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic SLAKE with the second test image stretched to 2:1 (Qwen2.5-VL: 8 tokens, not 4)."""
    root = tmp_path_factory.mktemp("mixed") / "slake"
    shutil.copytree(synth_root, root)
    second = sorted({s.image_path for s in load_split(root, "test")[:QUESTIONS]})[1]
    image = Image.open(second)
    image.resize((image.width * 2, image.height)).save(second)
    return root


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def setup(request: pytest.FixtureRequest, mixed_sizes: Path, tmp_path_factory: pytest.TempPathFactory):
    """``(family, model, processor, builder, samples, plain answers)`` of one family's tiny model."""
    family = family_named(request.param)
    tokenizer = family_fixtures.real_tokenizer(TOKENIZERS[family.name], tmp_path_factory)
    model, processor = importlib.import_module(f"slakevqa.models.families.{family.name}").build_tiny(tokenizer, seed=1)
    builder = InputBuilder.create(find_layout(mixed_sizes), build_closed_vocab(load_split(mixed_sizes, "train")))
    samples = load_split(mixed_sizes, "test")[:QUESTIONS]
    plain = Engine(model, processor, builder, share_prefix=False)
    return family, model, processor, builder, samples, plain.answer(samples)


def assert_same(got, want) -> None:
    assert [p.qid for p in got] == [p.qid for p in want]
    assert {p.route for p in got} == {"open", "yesno", "options"}
    for a, b in zip(got, want, strict=True):
        assert (a.prediction, a.raw_output) == (b.prediction, b.raw_output), a.qid
        assert a.scores == pytest.approx(b.scores, abs=1e-5), a.qid


def attention_calls(model) -> tuple[list, object]:
    seen: list[str] = []
    layer = family_named(model.config.model_type).parts.module(model, "language_model").layers[0].self_attn
    return seen, layer.register_forward_hook(lambda module, *_: seen.append(module.config._attn_implementation))


@pytest.mark.parametrize("kernel", [True, False], ids=["reference-varlen-kernel", "grouped-matmuls"])
def test_rows_give_the_plain_answers(setup, request: pytest.FixtureRequest, kernel: bool) -> None:
    family, model, processor, builder, samples, expected = setup
    calls = request.getfixturevalue("reference_kernel") if kernel else None
    engine = Engine(model, processor, builder)
    items = [engine.prepare(s) for s in samples]
    parts = engine.fast.partitions(items)
    # Qwen2.5-VL's stretched image has its own token count, hence its own prefix; Gemma 3's are all 256 / 16
    assert len(parts) == (2 if family.name == "qwen2_5_vl" else 1)
    assert all(engine.on_rows(part) for part in parts)
    seen, hook = attention_calls(model)
    try:
        assert_same(engine.answer(samples), expected)
    finally:
        hook.remove()
    assert seen[0] == "sdpa" and ROWS in seen  # the prefix through the model's own attention, then rows
    assert model.config.text_config._attn_implementation == "sdpa"  # the model is left as it was
    if kernel:
        assert calls and not any(calls)  # the rows read their prefixes through it (no causal mask there)


def test_a_question_alone_gets_its_batch_answer(setup) -> None:
    family, model, processor, builder, samples, expected = setup
    engine = Engine(model, processor, builder)
    for i in (0, 9, 17):  # one question of each image
        assert_same_one(engine.answer([samples[i]])[0], expected[i])


def assert_same_one(got, want) -> None:
    assert (got.prediction, got.raw_output) == (want.prediction, want.raw_output), got.qid
    assert got.scores == pytest.approx(want.scores, abs=1e-5), got.qid


@pytest.mark.parametrize("setup", ["gemma3"], indirect=True)  # Gemma 3's sliding layers
def test_gemma3_rows_step_aside_for_a_window_shorter_than_the_prompts(setup) -> None:
    family, model, processor, builder, samples, expected = setup
    text = model.config.text_config
    items = [Engine(model, processor, builder).prepare(s) for s in samples]
    assert Engine(model, processor, builder).on_rows(items)
    assert max(len(p.prompt_ids) for p in items) + 48 <= text.sliding_window  # the tiny model's, as at 4B
    window, text.sliding_window = text.sliding_window, 32  # shorter than every prompt
    try:
        engine = Engine(model, processor, builder)
        assert not engine.on_rows(items)
        plain = Engine(model, processor, builder, share_prefix=False)
        for got, want in zip(engine.answer(samples[:8]), plain.answer(samples[:8]), strict=True):
            assert_same_one(got, want)
    finally:
        text.sliding_window = window


def test_sliding_window_reads_each_config_as_its_model_does() -> None:
    from transformers import Gemma3TextConfig, MistralConfig, Qwen2_5_VLTextConfig

    from slakevqa.kernels.segment_attention import sliding_window

    assert sliding_window(Gemma3TextConfig(sliding_window=1024)) == 1024
    assert sliding_window(MistralConfig(sliding_window=4096)) == 4096  # every layer (Mistral-7B v0.1 and its default)
    assert sliding_window(MistralConfig(sliding_window=None)) is None  # v0.2 and later: none
    assert sliding_window(Qwen2_5_VLTextConfig()) is None  # a window named, no layer using it


def test_rows_in_bf16_agree_with_the_plain_backend(setup, reference_kernel) -> None:
    """The GPU's dtype on CPU: bf16 weights, the rows' prefix parts through the (reference) kernel in bf16. Both
    backends round differently, so answers may flip where the plain backend's margin is small; scores stay close."""
    import copy

    import torch

    family, model, processor, builder, samples, _ = setup
    model = copy.deepcopy(model).to(torch.bfloat16)
    got = Engine(model, processor, builder).answer(samples)
    want = Engine(model, processor, builder, share_prefix=False).answer(samples)
    assert reference_kernel  # the rows ran on the kernel, in bf16
    closed = [(a, b) for a, b in zip(got, want, strict=True) if b.route != "open"]
    assert len(closed) == 12
    for a, b in closed:  # measured: within 3e-3 (the tiny models' first-token log-probabilities)
        assert a.scores == pytest.approx(b.scores, abs=1e-2), a.qid
        assert a.prediction == b.prediction or b.margin < 2e-2, a.qid
    # a random model's greedy continuations flip at near-ties within 16 steps (measured: 6 and 10 of 12 agree, Gemma 3
    # and Qwen2.5-VL); rows that read a wrong prefix would agree on none
    opened = [(a.raw_output, b.raw_output) for a, b in zip(got, want, strict=True) if b.route == "open"]
    assert all(a for a, _ in opened) and sum(a == b for a, b in opened) >= len(opened) // 3
