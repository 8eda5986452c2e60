"""Packed rows through flash attention's variable-length layout (src/slakevqa/kernels/segment_attention.py),
in training and in the rows' reads of their image prefix (kernels/shared_prefix.py).

The CUDA kernel cannot run here, so the layout, gathers, scatter, keyword plumbing (LLaVA, peft,
gradient checkpointing) and the swap are checked with a reference kernel of the same contract
(sequences back to back, causal aligned at the end of each sequence's keys; ``reference_kernel``
in conftest.py) against the dense segment mask; the real kernel against the reference runs where
CUDA is. Evaluation's answers on the layout: tests/test_evaluation_paths.py.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import slakevqa.kernels.segment_attention as segment_module
from slakevqa.data.slake import find_layout, load_split
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.vocab import build_closed_vocab
from slakevqa.kernels.packing import segment_mask
from slakevqa.kernels.segment_attention import SegmentLayout, row_spans, segments_attended, varlen_kernel
from slakevqa.training.examples import ExampleEncoder
from slakevqa.training.loss import answer_loss, packed_loss
from slakevqa.training.params import configure_trainable


def visibility(layout: SegmentLayout, causal: bool = True) -> torch.Tensor:
    """The ``(width, width)`` mask the layout's sequences mean, for a one-row layout (its bidirectional part
    included)."""
    seen = torch.zeros(layout.width, layout.width, dtype=torch.bool)
    for s in range(len(layout.cu_q) - 1):
        queries = layout.q_cols[layout.cu_q[s]:layout.cu_q[s + 1]]
        keys = layout.k_cols[layout.cu_k[s]:layout.cu_k[s + 1]]
        for i, query in enumerate(queries):
            seen[query, keys[:len(keys) - len(queries) + i + 1] if causal else keys] = True
    if layout.bidirectional is not None:
        seen |= visibility(layout.bidirectional, causal=False)
    return seen


def test_layout_sees_exactly_what_the_segment_mask_sees() -> None:
    rng = random.Random(0)
    for _ in range(50):
        row = [0] * rng.randint(0, 6)
        for segment in range(1, rng.randint(1, 5)):
            row += [segment] * rng.randint(1, 4)
        width = len(row) + rng.randint(0, 3)
        layout = SegmentLayout.build([row], width)
        real = torch.tensor([True] * len(row) + [False] * (width - len(row)))
        expected = segment_mask(row, width) & real[:, None] & real[None, :]
        assert torch.equal(visibility(layout), expected), row
        assert layout.max_q == max(len(range(*p)) for p in [row_spans(row)[0], *row_spans(row)[1]] if p[1] > p[0])


def test_layout_with_an_image_block_sees_what_the_dense_mask_with_the_block_sees() -> None:
    """Gemma 3's image block inside the prefix: text before it causal, the block both ways, text after it causal."""
    rng = random.Random(1)
    for _ in range(50):
        prefix = rng.randint(1, 8)
        row = [0] * prefix
        for segment in range(1, rng.randint(2, 5)):
            row += [segment] * rng.randint(1, 4)
        start = rng.randint(0, prefix - 1)
        end = rng.randint(start + 1, prefix)
        width = len(row) + rng.randint(0, 3)
        layout = SegmentLayout.build([row], width).with_blocks([(start, end)])
        real = torch.tensor([True] * len(row) + [False] * (width - len(row)))
        block = torch.zeros(width, dtype=torch.bool)
        block[start:end] = True
        expected = (segment_mask(row, width) | (block[:, None] & block[None, :])) & real[:, None] & real[None, :]
        assert torch.equal(visibility(layout), expected), (row, start, end)
        assert layout.bidirectional.cu_q.tolist() == [0, end - start]
    assert SegmentLayout.build([[0, 0, 1]], 3).with_blocks([(1, 3)]) is None  # a block past the prefix


@pytest.mark.parametrize("row", [[0, 1, 2, 1], [0, 1, -1, 2], [1, 0, 0]], ids=["split", "pad-inside", "prefix-late"])
def test_rows_of_other_shapes_have_no_layout(row: list[int]) -> None:
    assert SegmentLayout.build([[0, 0, 1], row], len(row) + 1) is None


def encoder_and_samples(root: Path, processor, objective: str = "sft", pack: bool = True):
    builder = InputBuilder.create(find_layout(root), build_closed_vocab(load_split(root, "train")))
    samples = sorted(load_split(root, "train"), key=lambda s: (s.image_key, s.qid))[:14]
    return ExampleEncoder(builder, processor, 512, 64, objective, pack=pack), samples


def loss_and_grads(model, batch: dict, loss) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    value = loss(model, batch)
    value.backward()
    return float(value.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("objective", ["sft", "hybrid"], ids=["packed-by-image", "choice-segments"])
def test_varlen_layout_gives_the_dense_masks_loss_and_gradients(synth_root: Path, tiny_model, reference_kernel,
                                                                 objective: str) -> None:
    model, processor = tiny_model
    model = configure_trainable(model, use_lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    encoder, samples = encoder_and_samples(synth_root, processor, objective, pack=objective == "sft")
    batch, _ = encoder.batch(samples)
    assert "segment_layout" in batch
    if objective == "sft":
        def loss(m, b):
            return answer_loss(m, b).loss
    else:
        def loss(m, b):
            return packed_loss(m, b, mc_weight=1.0)[0].loss
    dense = loss_and_grads(model, batch, loss)
    assert not reference_kernel  # outside the block: sdpa with the mask
    with segments_attended(model):
        varlen = loss_and_grads(model, batch, loss)
    layers = model.config.text_config.num_hidden_layers
    assert len(reference_kernel) == 2 * layers  # forward, and again in the checkpointed backward
    assert model.config.text_config._attn_implementation == "sdpa"  # put back
    assert varlen[0] == pytest.approx(dense[0], abs=1e-5)
    assert dense[1].keys() == varlen[1].keys() and any("lora_A" in n for n in dense[1])
    for name in dense[1]:
        torch.testing.assert_close(varlen[1][name], dense[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_cpu_takes_the_dense_mask(synth_root: Path, tiny_model) -> None:
    model, processor = tiny_model
    encoder, samples = encoder_and_samples(synth_root, processor)
    batch, _ = encoder.batch(samples)
    assert varlen_kernel(torch.zeros(1, 2, 3, 8), torch.bfloat16) is None  # CPU: no flash kernel
    with torch.no_grad():
        dense = answer_loss(model, batch).loss
        with segments_attended(model):
            inside = answer_loss(model, batch).loss
    assert float(inside) == float(dense)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash attention's varlen kernel needs CUDA")
def test_flash_kernel_equals_the_reference_on_cuda() -> None:
    torch.manual_seed(0)
    layout = SegmentLayout.build([[0] * 40 + [1] * 7 + [2] * 12 + [-1] * 3, [0] * 40 + [1] * 20 + [-1] * 2], 62)
    query = torch.randn(2, 8, 62, 64, device="cuda", dtype=torch.bfloat16)
    key, value = (torch.randn(2, 2, 62, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    module = torch.nn.Module()
    out, _ = segment_module.segment_attention(module, query, key, value, None, 0.125,
                                              segment_layout=layout.to("cuda"))
    mask = torch.stack([segment_mask(r, 62) for r in ([0] * 40 + [1] * 7 + [2] * 12, [0] * 40 + [1] * 20)])
    dense = F.scaled_dot_product_attention(query.float(), key.float().repeat_interleave(4, 1),
                                           value.float().repeat_interleave(4, 1), attn_mask=mask[:, None].cuda(),
                                           scale=0.125).transpose(1, 2)
    real = torch.tensor([[True] * 59 + [False] * 3, [True] * 60 + [False] * 2]).cuda()
    torch.testing.assert_close(out.float()[real], dense[real], atol=2e-2, rtol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash attention's varlen kernel needs CUDA")
def test_flash_kernel_with_an_image_block_equals_the_dense_mask_on_cuda() -> None:
    """Gemma 3's layout on the real kernel: outputs and the gradients of query, key and value (bf16 vs fp32)."""
    torch.manual_seed(0)
    rows = [[0] * 40 + [1] * 7 + [2] * 12, [0] * 40 + [1] * 20]
    blocks = [(5, 37), (3, 40)]  # text before and after the block in row 0; the block ends the prefix in row 1
    layout = SegmentLayout.build([r + [-1] * (62 - len(r)) for r in rows], 62).with_blocks(blocks).to("cuda")
    inputs = [torch.randn(2, h, 62, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
              for h in (8, 2, 2)]  # Gemma 3's head size
    out, _ = segment_module.segment_attention(torch.nn.Module(), *inputs, None, 0.0625, segment_layout=layout)
    mask = torch.stack([segment_mask(r, 62) for r in rows])
    for r, (start, end) in enumerate(blocks):
        mask[r, start:end, start:end] = True
    fp32 = [t.detach().float().requires_grad_() for t in inputs]
    dense = F.scaled_dot_product_attention(fp32[0], fp32[1].repeat_interleave(4, 1), fp32[2].repeat_interleave(4, 1),
                                           attn_mask=mask[:, None].cuda(), scale=0.0625).transpose(1, 2)
    real = torch.tensor([[True] * 59 + [False] * 3, [True] * 60 + [False] * 2]).cuda()
    torch.testing.assert_close(out.float()[real], dense[real], atol=2e-2, rtol=2e-2)
    weights = torch.randn_like(dense) * real[:, :, None, None]
    (out.float() * weights).sum().backward()
    (dense * weights).sum().backward()
    for got, want in zip(inputs, fp32):
        torch.testing.assert_close(got.grad.float(), want.grad, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("image_of_row", [[0, 2, 0, 2, 2], [0, 2]], ids=["several-rows", "one-row-per-image"])
def test_rows_prefix_attention_on_the_reference_kernel_equals_grouped_matmuls(reference_kernel,
                                                                              image_of_row: list[int]) -> None:
    """Image 1 has no rows: with one row per image a decoding step once asked the kernel for max_q 1."""
    from types import SimpleNamespace

    from slakevqa.kernels.shared_prefix import ImageGroups, shared_prefix_attention

    torch.manual_seed(0)
    prefix_keys, prefix_values = (torch.randn(3, 2, 12, 16) for _ in range(2))
    query = torch.randn(len(image_of_row), 8, 1, 16)
    key, value = (torch.randn(len(image_of_row), 2, 5, 16) for _ in range(2))
    mask = torch.ones(len(image_of_row), 1, 5, dtype=torch.bool)
    mask[:, :, :2] = False  # left padding
    outs = [shared_prefix_attention(SimpleNamespace(layer_idx=0), query, key, value, mask, 0.25,
                                    image_groups=ImageGroups.build(image_of_row, [prefix_keys], [prefix_values],
                                                                   "cpu", varlen=varlen))[0]
            for varlen in (False, True)]
    assert reference_kernel == [False]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash attention's varlen kernel needs CUDA")
@pytest.mark.parametrize("length", [1, 4], ids=["decoding-step", "candidate-tails"])
def test_rows_read_their_prefix_through_flash_as_through_grouped_matmuls_on_cuda(length: int) -> None:
    from types import SimpleNamespace

    from slakevqa.kernels.shared_prefix import ImageGroups, shared_prefix_attention

    torch.manual_seed(0)
    images, kv, prefix, dim, heads, width = 3, 2, 40, 64, 8, 10
    prefix_keys, prefix_values = (torch.randn(images, kv, prefix, dim, device="cuda", dtype=torch.bfloat16)
                                  for _ in range(2))
    image_of_row = [0, 2, 0, 2, 2] if length > 1 else [0, 2]  # image 1 has no rows
    query = torch.randn(len(image_of_row), heads, length, dim, device="cuda", dtype=torch.bfloat16)
    key, value = (torch.randn(len(image_of_row), kv, width, dim, device="cuda", dtype=torch.bfloat16)
                  for _ in range(2))
    mask = torch.ones(len(image_of_row), length, width, dtype=torch.bool, device="cuda").tril(width - length)
    mask[:, :, :2] = False  # left padding
    outs = [shared_prefix_attention(SimpleNamespace(layer_idx=0), query, key, value, mask, 0.125,
                                    image_groups=ImageGroups.build(image_of_row, [prefix_keys], [prefix_values],
                                                                   "cuda", varlen=varlen))[0]
            for varlen in (False, True)]
    torch.testing.assert_close(outs[1].float(), outs[0].float(), atol=2e-2, rtol=2e-2)
