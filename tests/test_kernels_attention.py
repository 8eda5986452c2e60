"""sdpa kernel choice: cuDNN attention (a graph build per new shape) is off in evaluation and
training unless asked for; measured 2x slower at 7B on an H200 (benchmarks/RESULTS.md)."""

from __future__ import annotations

import torch

from slakevqa.data.slake import find_layout, load_split
from slakevqa.evaluation.engine import Engine
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.vocab import build_closed_vocab
from slakevqa.kernels.attention import AttentionSettings, attention_kernels


def test_cudnn_attention_is_excluded_inside_the_block_and_restored_after() -> None:
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with attention_kernels(cudnn=False):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with attention_kernels(cudnn=True):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_the_engine_answers_without_cudnn_attention_by_default(synth_root, tiny_model) -> None:
    model, processor = tiny_model
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cuda.cudnn_sdp_enabled()))
    vocab = build_closed_vocab(load_split(synth_root, "train"))
    samples = load_split(synth_root, "test")[:6]
    Engine(model, processor, InputBuilder.create(find_layout(synth_root), vocab)).answer(samples)
    assert seen and not any(seen)
    seen.clear()
    builder = InputBuilder.create(find_layout(synth_root), vocab)
    Engine(model, processor, builder, attention=AttentionSettings(cudnn_attention=True)).answer(samples)
    assert seen and all(seen) == torch.backends.cuda.cudnn_sdp_enabled()
