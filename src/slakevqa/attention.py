"""Which scaled-dot-product attention kernels PyTorch may pick (``--cudnn_attention``).

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
from typing import Iterator


@contextlib.contextmanager
def attention_kernels(cudnn: bool = False) -> Iterator[None]:
    """Within the block, sdpa may use cuDNN's kernel only when ``cudnn`` is true (CPU: no effect)."""
    if cudnn:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        yield
