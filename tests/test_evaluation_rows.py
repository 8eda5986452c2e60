"""Greedy decoding and candidate scoring on rows that share image prefixes (src/slakevqa/evaluation/row_decoding.py,
src/slakevqa/kernels/shared_prefix.py), on the tiny model in fp32: each row reads its image's prefix in place, its
attention equals plain attention over that prefix and its own columns, and its tokens equal transformers'
``generate`` on a repeated prefix, rows stopping at their own ``</s>`` or token budget. That whole answers and
candidate scores equal every other evaluation path's: tests/test_evaluation_paths.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slakevqa.data.slake import find_layout, load_split
from slakevqa.evaluation.engine import Engine
from slakevqa.evaluation.row_decoding import greedy_tokens
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.vocab import build_closed_vocab
from slakevqa.kernels.compat import cache_argument
from slakevqa.kernels.shared_prefix import language_parts, supports_shared_prefix


@pytest.fixture(scope="module")
def engine_and_questions(synth_root: Path):
    """One tiny model's engine and the first 48 test questions."""
    from slakevqa.models.tiny import build_tiny_llava

    model, processor = build_tiny_llava("bpe", seed=0)
    builder = InputBuilder.create(find_layout(synth_root), build_closed_vocab(load_split(synth_root, "train")))
    return Engine(model, processor, builder), load_split(synth_root, "test")[:48]


@pytest.mark.parametrize("eos_boost", [1.5, 2.5], ids=["some-rows-run-out", "all-rows-stop"])
def test_greedy_tokens_equal_generate_with_eos_stops(engine_and_questions, eos_boost: float) -> None:
    """Token for token as ``generate``, rows stopping at different steps: ``</s>`` made likely by
    raising its output weight, and after it padding, as ``generate`` pads."""
    engine, samples = engine_and_questions
    items = [engine.prepare(s) for s in samples if not s.is_closed][:12]
    head = engine.model.lm_head.weight
    saved = head.detach().clone()
    eos, pad = engine.tokenizer.eos_token_id, engine.tokenizer.pad_token_id
    try:
        with torch.no_grad():
            head[eos] *= eos_boost
        with torch.inference_mode():
            rows = engine.fast.encode_rows(items, 10)
            ours = greedy_tokens(engine.model, cache_argument(engine.model), rows, 10, [eos], pad, cuda_graphs=False)
            inputs = engine.plain.inputs(items)  # the plain backend's left-padded prompts, each with its image
            theirs = engine.model.generate(**inputs, max_new_tokens=10, do_sample=False, eos_token_id=eos,
                                           pad_token_id=pad)[:, inputs["input_ids"].shape[1]:]
    finally:
        with torch.no_grad():
            head.copy_(saved)
    stops = [(row == eos).nonzero()[0].item() if (row == eos).any() else None for row in ours]
    assert len({s for s in stops if s is not None}) >= 3  # rows end at different steps
    assert (None in stops) == (eos_boost == 1.5)
    assert ours[:, :theirs.shape[1]].tolist() == theirs.tolist()
    assert (ours[:, theirs.shape[1]:] == pad).all()  # generate stops when every row has ended


def test_row_budgets_end_rows_early_without_changing_their_tokens(engine_and_questions) -> None:
    engine, samples = engine_and_questions
    items = [engine.prepare(s) for s in samples if not s.is_closed][:6]
    eos, pad = engine.tokenizer.eos_token_id, engine.tokenizer.pad_token_id
    limits = [1, 3, 8, 2, 8, 5]
    with torch.inference_mode():
        full = greedy_tokens(engine.model, cache_argument(engine.model), engine.fast.encode_rows(items, 8), 8, [eos], pad,
                             cuda_graphs=False)
        cut = greedy_tokens(engine.model, cache_argument(engine.model), engine.fast.encode_rows(items, 8), 8, [eos], pad,
                            cuda_graphs=False, row_budgets=torch.tensor(limits))
    assert sum(int(full[row, limit - 1] != pad) for row, limit in enumerate(limits) if limit < 8) >= 3  # cut short
    for row, limit in enumerate(limits):
        assert cut[row, :limit].tolist() == full[row, :limit].tolist()
        assert (cut[row, limit:] == pad).all()


def test_batch_encoding_keeps_no_autograd_graph(engine_and_questions) -> None:
    """The packed forward runs without autograd (at 7B a batch's saved activations filled an H200)."""
    engine, samples = engine_and_questions
    assert any(p.requires_grad for p in engine.model.parameters())
    batch = engine.fast.encode([engine.prepare(s) for s in samples[:6]])
    assert not batch.rows.last_logits.requires_grad and not batch.rows.cache.keys[0].requires_grad


def test_each_image_prefix_is_stored_once(engine_and_questions, reference_kernel: list) -> None:
    """Back to back for flash attention's kernel, the grouped matmuls' (n_images, kv, P, d) tensors views of the
    same memory; decoding through the kernel (conftest.py's reference) makes no second copy."""
    engine, samples = engine_and_questions
    items = [engine.prepare(s) for s in samples if not s.is_closed][:8]
    eos, pad = engine.tokenizer.eos_token_id, engine.tokenizer.pad_token_id
    with torch.inference_mode():
        rows = engine.fast.encode_rows(items, 3)
        stored = {layer: pair for layer, pair in rows.groups.packed_prefix.items()}
        greedy_tokens(engine.model, cache_argument(engine.model), rows, 3, [eos], pad, cuda_graphs=False)
    layers = engine.model.config.text_config.num_hidden_layers
    assert reference_kernel and len(stored) == layers
    for layer in range(layers):
        assert rows.groups.packed_prefix[layer] is stored[layer]  # the kernel read them where they were
        for view, flat in zip((rows.groups.keys[layer], rows.groups.values[layer]), stored[layer]):
            assert view.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
            assert view.untyped_storage().nbytes() == flat.numel() * flat.element_size()  # nothing else held


def test_attention_equals_plain_attention_over_prefix_and_own_columns() -> None:
    """Each row attends to its image's prefix and its own visible columns, heads sharing keys as in
    grouped-query attention; queries may come in another dtype than the cache (accelerate's fp16 training
    with Liger's dtype-keeping RoPE: fp16 keys, fp32 queries from layers called directly; it crashed on an H200)."""
    from types import SimpleNamespace

    from slakevqa.kernels.shared_prefix import ImageGroups, RowCache, shared_prefix_attention

    torch.manual_seed(0)
    rows, heads, kv, length, dim, prefix, width = 3, 4, 2, 2, 8, 5, 6
    image_of = [1, 0, 1]
    keys, values = torch.randn(2, kv, prefix, dim), torch.randn(2, kv, prefix, dim)
    new_keys, new_values = torch.randn(rows, kv, length, dim), torch.randn(rows, kv, length, dim)
    query = torch.randn(rows, heads, length, dim)
    mask = torch.zeros(rows, length, width, dtype=torch.bool)
    for i in range(length):
        mask[:, i, :i + 1] = True
    mask[0, :, 0] = False  # row 0's first column is padding
    expected = torch.empty(rows, length, heads, dim)
    for r in range(rows):
        for h in range(heads):
            k = torch.cat([keys[image_of[r], h // 2], new_keys[r, h // 2]])
            v = torch.cat([values[image_of[r], h // 2], new_values[r, h // 2]])
            visible = torch.cat([torch.ones(length, prefix, dtype=torch.bool), mask[r, :, :length]], dim=1)
            scores = (query[r, h] @ k.T / dim ** 0.5).masked_fill(~visible, float("-inf"))
            expected[r, :, h] = scores.softmax(-1) @ v
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
        groups = ImageGroups.build(image_of, [keys.to(dtype)], [values.to(dtype)], "cpu")
        cache = RowCache([torch.zeros(rows, kv, width, dim, dtype=dtype)], [torch.zeros(rows, kv, width, dim, dtype=dtype)])
        cached_keys, cached_values = cache.update(new_keys, new_values, 0)  # fp32 written into the cache's dtype
        out, _ = shared_prefix_attention(SimpleNamespace(layer_idx=0), query, cached_keys, cached_values, mask,
                                         scaling=dim ** -0.5, image_groups=groups)
        assert out.dtype == torch.float32 and out.shape == expected.shape
        assert torch.allclose(out, expected, atol=tolerance), dtype


def test_sampling_keeps_the_generate_path(engine_and_questions) -> None:
    """``--do_sample`` answers through ``generate``'s sampling, the batch prefilled for it (not packed rows)."""
    from slakevqa.evaluation.engine import GenerationSettings

    engine, samples = engine_and_questions
    sampling = Engine(engine.model, engine.processor, engine.builder,
                      settings=GenerationSettings(temperature=0.7, do_sample=True))
    torch.manual_seed(0)
    answers = sampling.answer(samples[:12])
    assert not sampling.on_rows([sampling.prepare(s) for s in samples[:12]]) and engine.on_rows(
        [engine.prepare(s) for s in samples[:12]])
    assert {p.route for p in answers} >= {"open", "yesno"} and all(p.raw_output or p.scores for p in answers)


def test_other_model_layouts_keep_the_generate_path() -> None:
    assert not supports_shared_prefix(torch.nn.Linear(2, 2))
    assert language_parts(torch.nn.Linear(2, 2)) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the GPU box)")
def test_cuda_graph_replay_equals_eager_steps_and_generate(engine_and_questions) -> None:
    engine, samples = engine_and_questions
    engine.model.to("cuda")
    try:
        items = [engine.prepare(s) for s in samples if not s.is_closed][:12]
        eos, pad = engine.tokenizer.eos_token_id, engine.tokenizer.pad_token_id
        runs = {}
        with torch.inference_mode():
            for graphs in (True, False):
                rows = engine.fast.encode_rows(items, 12)
                runs[graphs] = greedy_tokens(engine.model, cache_argument(engine.model), rows, 12, [eos], pad, graphs)
            inputs = engine.plain.inputs(items)
            theirs = engine.model.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=eos,
                                           pad_token_id=pad)[:, inputs["input_ids"].shape[1]:]
        assert runs[True].tolist() == runs[False].tolist()
        assert runs[True][:, :theirs.shape[1]].tolist() == theirs.tolist()
    finally:
        engine.model.to("cpu")


def test_one_decoding_call_per_batch_equals_one_call_per_budget(engine_and_questions, synth_root: Path) -> None:
    engine, _ = engine_and_questions
    from dataclasses import replace

    samples = load_split(synth_root, "test")[:40]  # the synthetic SLAKE asks no abnormality question: three become one
    opened = [i for i, s in enumerate(samples) if s.answer_type == "OPEN"]
    for i in opened[1:8:3]:
        samples[i] = replace(samples[i], content_type="Abnormality")
    assert {engine.settings.budget(s) for s in samples if s.answer_type == "OPEN"} == {16, 48}
    calls: list[int] = []
    generate = engine.generate

    def counted(items, max_new_tokens, *args):
        calls.append(max_new_tokens)
        return generate(items, max_new_tokens, *args)

    engine.generate = counted
    try:
        merged = engine.answer(samples)
        engine.one_decode_per_batch = False
        separate = engine.answer(samples)
    finally:
        engine.one_decode_per_batch = True
        del engine.generate
    assert calls == [48, 16, 48]  # one call for the batch's OPEN rows, then one per budget
    assert any(len(p.raw_output.split()) > 0 for p in merged if p.raw_output)
    for a, b in zip(merged, separate):
        assert (a.prediction, a.raw_output) == (b.prediction, b.raw_output)
