"""Which attention runs: the switches (:class:`AttentionSettings`), the scaled-dot-product kernels PyTorch may
pick (``--cudnn_attention``), and our own attention functions swapped into a model for a block
(:func:`attention_function`).

On H100/H200 PyTorch (2.5+) prefers cuDNN's attention whenever a mask is given, and
cuDNN builds and caches an execution graph for every new shape. Evaluation and
packed training see a new shape at almost every call (each decode step grows the
KV cache by one; each packed batch has its own length), so the graph builds ran
on the CPU while the GPU waited: at the 7B shape on an H200 the first pass over
the English test split took twice as long as a second, identical one
(benchmarks/RESULTS.md). By default we let PyTorch choose among flash,
memory-efficient and math kernels only, which need no per-shape build.

    with attention_kernels(cudnn=False):
        model(**batch)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator


@dataclass(frozen=True)
class AttentionSettings:
    """The attention kernels a run may use: the same answers and losses up to rounding, so no run fingerprint
    counts them (training's and evaluation's configs list them as neutral). Both configs hold one as
    ``attention``; its fields are flat keys and flags (``--no-varlen_attention``), and training's final
    evaluation runs with the training's own."""

    cudnn_attention: bool = field(default=False, metadata={"help": (
        "let PyTorch use cuDNN attention (it builds a graph per new shape: slow when shapes change every call)")})
    varlen_attention: bool = field(default=True, metadata={"help": (
        "packed rows (an image prefix, then its questions) attend through flash attention's variable-length "
        "kernel, each question's keys only, and evaluation's decoding rows read their image's prefix through it "
        "(CUDA, bf16/fp16); off: sdpa over the dense segment mask, grouped matmuls for the rows")})


@contextlib.contextmanager
def attention_kernels(cudnn: bool = False) -> Iterator[None]:
    """Within the block, sdpa may use cuDNN's kernel only when ``cudnn`` is true (CPU: no effect)."""
    if cudnn:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        yield


@contextlib.contextmanager
def attention_function(config, name: str, function) -> Iterator[None]:
    """Within the block, the layers that ``config`` configures call ``function`` for attention.

    ``function`` is registered with transformers' ``AttentionInterface`` as ``name`` and named in the
    config's in-memory ``_attn_implementation`` (never saved: transformers drops it from
    ``config.json``); the implementation before is put back after the block.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(name, function)
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before

