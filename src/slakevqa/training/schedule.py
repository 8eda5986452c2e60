"""Step arithmetic, data order and the learning-rate schedule, all pure functions of the config.

The order of examples is a function of (seed, epoch) alone, and the examples of
micro-batch ``g`` are found from ``g`` without replaying earlier ones: a resumed
run sees exactly the batches the uninterrupted run would have seen.

>>> steps_per_epoch(4919, batch_size=2, grad_accum=8, world_size=1)
308
>>> [round(lr_factor(s, 100, 10, "cosine"), 3) for s in (0, 9, 10, 99)]
[0.1, 1.0, 1.0, 0.0]
"""

from __future__ import annotations

import math


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int, world_size: int = 1) -> int:
    """Optimiser steps in one pass over the data (the last, partial step counts)."""
    per_step = batch_size * grad_accum * world_size
    return max(1, math.ceil(n_examples / per_step))


def total_steps(n_examples: int, batch_size: int, grad_accum: int, num_epochs: float, max_steps: int = -1,
                world_size: int = 1) -> int:
    if max_steps > 0:
        return max_steps
    return max(1, math.ceil(steps_per_epoch(n_examples, batch_size, grad_accum, world_size) * num_epochs))


def epoch_order(n_examples: int, seed: int, epoch: int, groups: list[int] | None = None) -> list[int]:
    """A permutation of ``range(n_examples)``, fixed by ``seed`` and ``epoch``.

    With ``groups`` (a group id per example, e.g. its image) the groups come in a
    random order and each group's examples together, themselves shuffled:

    >>> order = epoch_order(6, seed=0, epoch=0, groups=[0, 0, 1, 1, 2, 2])
    >>> sorted(order) == list(range(6)) and all({order[i], order[i + 1]} in ({0, 1}, {2, 3}, {4, 5}) for i in (0, 2, 4))
    True
    """
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_examples, generator=generator).tolist()
    if groups is None:
        return order
    rank = {group: r for r, group in enumerate(torch.randperm(max(groups) + 1, generator=generator).tolist())}
    return sorted(order, key=lambda i: rank[groups[i]])  # stable: within a group, the shuffled order


def micro_batch_indices(micro_batch: int, n_examples: int, batch_size: int, seed: int, rank: int = 0,
                        world_size: int = 1, groups: list[int] | None = None) -> list[int]:
    """Example indices of global micro-batch ``micro_batch`` for process ``rank``.

    Each epoch is cut into chunks of ``batch_size * world_size``; process ``rank``
    takes its slice of the chunk. A short final chunk wraps around into the
    start of the same epoch's order, so every batch is full and every process
    gets the same number of rows. ``groups``: see :func:`epoch_order`.
    """
    chunk = batch_size * world_size
    per_epoch = math.ceil(n_examples / chunk)
    epoch, position = divmod(micro_batch, per_epoch)
    order = epoch_order(n_examples, seed, epoch, groups)
    start = position * chunk + rank * batch_size
    return [order[(start + i) % n_examples] for i in range(batch_size)]


def lr_factor(step: int, total: int, warmup: int, kind: str = "cosine") -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup - 1)
    progress = min(1.0, max(0.0, progress))
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
