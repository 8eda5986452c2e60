"""Decoding calls that share one workspace and its captured step (src/slakevqa/evaluation/decode_workspace.py), on
the tiny model in fp32: each call's tokens equal a fresh greedy_tokens call's, whether the workspace is built for it,
grown for it or reused (padding rows, free image slots, stale columns of the call before), and whole answers equal
the engine's without it. On CPU the step runs eagerly on the workspace's buffers; the CUDA test replays the graph.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slakevqa.data.slake import load_split
from slakevqa.evaluation.decode_workspace import Capacity, ReusedDecoding, padded_images
from slakevqa.evaluation.engine import Engine
from slakevqa.evaluation.row_decoding import STOP_CHECK_EVERY, greedy_tokens
from slakevqa.kernels.compat import cache_argument


@pytest.fixture(scope="module")
def engine(tiny_engine: Engine) -> Engine:
    return tiny_engine


def open_items(engine: Engine, synth_root: Path, images: int) -> list:
    """OPEN questions of the first ``images`` test images that ask any, in image order."""
    samples = [s for s in load_split(synth_root, "test") if not s.is_closed]
    keys = list(dict.fromkeys(s.image_key for s in samples))[:images]
    return [engine.prepare(s) for s in sorted(samples, key=lambda s: keys.index(s.image_key) if s.image_key in keys
                                              else len(keys)) if s.image_key in keys]


def test_padding_rows_fill_free_image_slots() -> None:
    need = Capacity.needed([0, 0, 0, 2], images=3, tail=20, answer=8, prefix=5)
    assert need == Capacity(rows=32, images=3, members=3, tail=32, answer=8, prefix=5)
    capacity = need.with_padding_room()
    assert capacity == Capacity(rows=32, images=3, members=11, tail=32, answer=8, prefix=5)
    images = padded_images([0, 0, 0, 2], capacity)
    assert images[:4] == [0, 0, 0, 2] and len(images) == 32
    assert max(images.count(i) for i in range(3)) <= capacity.members
    assert capacity.covers(Capacity(32, 3, 11, 32, 8, 5)) and not capacity.covers(Capacity(32, 3, 11, 32, 8, 6))
    assert not capacity.covers(Capacity(64, 1, 1, 1, 1, 5))
    # growing: the most of both, with headroom for what is asked (one step of rows; half again of the rest)
    assert capacity.grown(Capacity(128, 2, 40, 16, 16, 5)) == Capacity(160, 3, 60, 32, 16, 5)
    assert need.grown(need) == Capacity(64, 5, 5, 48, 8, 5)


@pytest.mark.parametrize("kernel", [False, True], ids=["grouped-matmuls", "varlen-prefix"])
def test_reused_workspace_decodes_as_a_fresh_call_each_time(engine: Engine, synth_root: Path, kernel: bool,
                                                            request: pytest.FixtureRequest) -> None:
    """Three calls: built, grown (more images), reused (a smaller batch); rows stop at their ``</s>`` (made
    likely) or their own budget, so stale state from the call before would change tokens. ``varlen-prefix``:
    the prefixes read through flash attention's variable-length contract (the GPU's path; conftest.py's
    reference kernel), unused image slots and padding rows included."""
    calls_of_kernel = request.getfixturevalue("reference_kernel") if kernel else []
    model, pad, eos = engine.model, engine.tokenizer.pad_token_id, engine.tokenizer.eos_token_id
    small, large = open_items(engine, synth_root, 2), open_items(engine, synth_root, 5)
    calls = [(small, 10, None), (large, 12, [12, 3, 7] * 20), (small[1:4], 6, None)]
    reused = ReusedDecoding(model, cache_argument(model), [eos], pad, cuda_graphs=False)
    head = model.lm_head.weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            head[eos] *= 1.8
        with torch.inference_mode():
            for items, budget, limits in calls:
                encoded, order = engine.fast.rows_of(items, None)
                limits = None if limits is None else torch.tensor(limits[:len(items)])
                fresh = greedy_tokens(model, cache_argument(model), encoded.select(order, budget), budget, [eos], pad,
                                      cuda_graphs=False, row_budgets=limits)
                before = len(calls_of_kernel)
                ours = reused.tokens(encoded, order, budget, limits)
                assert ours.tolist() == fresh.tolist()
                assert (len(calls_of_kernel) > before) == kernel  # the workspace's step took the kernel too
                assert (fresh == eos).any(dim=1).sum() >= 2 and not (fresh == eos).any(dim=1).all()
    finally:
        with torch.no_grad():
            head.copy_(saved)
    assert len({len(small), len(large)}) == 2 and reused.workspace.capacity.images >= 5
    assert (reused.builds, reused.calls) == (2, 3)
    assert bool(calls_of_kernel) == kernel and engine.attention.varlen_attention


def test_padding_rows_do_not_keep_a_call_running(engine: Engine, synth_root: Path) -> None:
    """When every real row has used its budget, the call ends at the next stop check (padding rows count as ended)."""
    model, pad, eos = engine.model, engine.tokenizer.pad_token_id, engine.tokenizer.eos_token_id
    reused = ReusedDecoding(model, cache_argument(model), [eos], pad, cuda_graphs=False)
    with torch.inference_mode():
        encoded, order = engine.fast.rows_of(open_items(engine, synth_root, 2), None)
        tokens = reused.tokens(encoded, order, 40, torch.full((len(order),), 2))
    assert (tokens[:, 2:] == pad).all() and (tokens[:, 1] != pad).sum() >= 5
    assert int(reused.workspace.state.step) <= 1 + STOP_CHECK_EVERY  # steps run, far below the budget of 40


def test_engine_answers_equal_with_and_without_reuse(engine: Engine, synth_root: Path) -> None:
    from dataclasses import replace

    samples = load_split(synth_root, "test")[:36]
    samples[3] = replace(samples[3], content_type="Abnormality")  # two budgets in one decoding call
    reusing = Engine(engine.model, engine.processor, engine.builder, reuse_decoding=True)
    for start in (0, 12, 24):
        batch = samples[start:start + 12]
        for a, b in zip(engine.answer(batch), reusing.answer(batch)):
            assert (a.prediction, a.raw_output, a.scores) == (b.prediction, b.raw_output, b.scores)
    assert reusing.fast.reused.calls == 3 and reusing.fast.reused.builds < 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the GPU box)")
def test_reused_graph_replays_as_eager_fresh_calls(engine: Engine, synth_root: Path) -> None:
    model, pad, eos = engine.model, engine.tokenizer.pad_token_id, engine.tokenizer.eos_token_id
    model.to("cuda")
    try:
        reused = ReusedDecoding(model, cache_argument(model), [eos], pad, cuda_graphs=True)
        with torch.inference_mode():
            for items, budget in ((open_items(engine, synth_root, 5), 12), (open_items(engine, synth_root, 2), 9)):
                encoded, order = engine.fast.rows_of(items, None)
                fresh = greedy_tokens(model, cache_argument(model), encoded.select(order, budget), budget, [eos], pad,
                                      cuda_graphs=False)
                assert reused.tokens(encoded, order, budget).tolist() == fresh.tolist()
        assert (reused.builds, reused.calls) == (1, 2) and reused.workspace.replay is not reused.workspace.step
    finally:
        model.to("cpu")
