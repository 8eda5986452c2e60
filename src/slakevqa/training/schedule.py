"""Step arithmetic, data order and the learning-rate schedule, all pure functions of the config.

The order of examples is a function of (seed, epoch) alone, and the examples of
micro-batch ``g`` are found from ``g`` without replaying earlier ones: a resumed
run sees exactly the batches the uninterrupted run would have seen.

>>> steps_per_epoch(4919, batch_size=2, grad_accum=8, world_size=1)
308

The learning rate is ``transformers.get_scheduler``'s (Hugging Face semantics, the
same numbers as a ``Trainer`` run with the same settings): ``--lr_scheduler`` names
map to Hugging Face's in :data:`HF_SCHEDULERS`, and warmup is
``ceil(warmup_ratio * steps)`` unless ``--warmup_steps`` is given. Optimiser step
``s`` (0-based) uses ``lr * factor(s)``. Warmup rises linearly from 0 (the first step
of a run with warmup has learning rate 0: Adam's moments update, the weights do not)
and decay ends at 0 one step after the last:

>>> import torch
>>> def rates(kind, total, warmup):
...     optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
...     scheduler = build_scheduler(optimizer, kind, total, warmup)
...     out = []
...     for _ in range(total):
...         out.append(round(optimizer.param_groups[0]["lr"], 3))
...         optimizer.step()
...         scheduler.step()
...     return out
>>> rates("linear", 6, warmup_steps(6, -1, 0.3))   # ceil(0.3 * 6) = 2 warmup steps
[0.0, 0.5, 1.0, 0.75, 0.5, 0.25]
>>> rates("cosine", 6, 2)
[0.0, 0.5, 1.0, 0.854, 0.5, 0.146]
>>> rates("constant", 4, 2)                       # Hugging Face's constant_with_warmup
[0.0, 0.5, 1.0, 1.0]
"""

from __future__ import annotations

import math

from slakevqa.distributed import largest_first


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


def step_rows(step: int, micro: int, n_examples: int, batch_size: int, grad_accum: int, seed: int,
              rank: int = 0, world_size: int = 1, groups: list[int] | None = None) -> list[int]:
    """Example indices of micro-batch ``micro`` of optimiser step ``step`` on process ``rank``.

    A step takes the next ``batch_size * grad_accum * world_size`` examples of the epoch's order
    (its *global batch*; a short last chunk wraps around into the start of the same epoch's order,
    so every step is full). The global batch is cut into ``grad_accum * world_size`` slots; process
    ``rank`` takes slots ``rank * grad_accum`` to ``rank * grad_accum + grad_accum - 1``, one per
    micro-batch. With ``groups`` (see :func:`epoch_order`) the slots hold whole groups
    (:func:`share_by_group`), so a slot may hold a few questions more or fewer than ``batch_size``.

    Which examples make a step depends on the global batch only: 2 processes x ``batch_size`` 8,
    1 process x 8 x ``grad_accum`` 2 and 4 processes x 4 train on the same 16 questions, which is
    what lets a checkpoint resume on another number of processes (``training/elastic.py``).

    >>> two_processes = step_rows(0, 0, 8, 2, 1, 0, rank=0, world_size=2) + step_rows(0, 0, 8, 2, 1, 0, 1, 2)
    >>> two_micro_batches = step_rows(0, 0, 8, 2, 2, seed=0) + step_rows(0, 1, 8, 2, 2, seed=0)
    >>> two_processes == two_micro_batches
    True
    """
    chunk = batch_size * grad_accum * world_size
    per_epoch = math.ceil(n_examples / chunk)
    epoch, position = divmod(step, per_epoch)
    order = epoch_order(n_examples, seed, epoch, groups)
    indices = [order[(position * chunk + i) % n_examples] for i in range(chunk)]
    slots, slot = grad_accum * world_size, rank * grad_accum + micro
    if groups is not None and slots > 1:
        return share_by_group(indices, groups, slot, slots)
    return indices[slot * batch_size:(slot + 1) * batch_size]


def micro_batch_indices(micro_batch: int, n_examples: int, batch_size: int, seed: int, rank: int = 0,
                        world_size: int = 1, groups: list[int] | None = None) -> list[int]:
    """:func:`step_rows` of a run without gradient accumulation: micro-batch ``micro_batch`` is step ``micro_batch``."""
    return step_rows(micro_batch, 0, n_examples, batch_size, 1, seed, rank, world_size, groups)


# What one packed row's image prefix (576 image tokens + the template, ~578) costs, counted in question
# segments (~30 tokens each): the unit share_by_group balances processes in.
PREFIX_COST = 20


def share_by_group(indices: list[int], groups: list[int], rank: int, world_size: int) -> list[int]:
    """Process ``rank``'s part of a global batch: whole runs of one group (image), balanced in cost.

    Slicing a packed batch at fixed positions splits the image on each boundary over two
    processes, each computing its prefix (7.5% more image rows at 2 GPUs on SLAKE's train
    split, 11.5% at 4), and leaves the processes' work to chance (a slice of 64 questions holds
    5 to 9 images), while each step waits for the slowest process. Here each run of consecutive
    questions on one image goes whole to the process with the least work so far, largest runs
    first, a run costing :data:`PREFIX_COST` + its questions. With fewer runs than processes
    (tiny data) the fixed slices are kept, so no process is ever left without rows. Every
    process computes the same split, and the union is the global batch, so the loss and the
    gradients equal one process's with the whole batch.

    >>> share_by_group([0, 1, 2, 3, 4, 5], [7, 7, 7, 8, 9, 9], 0, 2), share_by_group([0, 1, 2, 3, 4, 5], [7, 7, 7, 8, 9, 9], 1, 2)
    ([0, 1, 2], [3, 4, 5])
    """
    runs: list[list[int]] = []
    for index in indices:
        if runs and groups[runs[-1][-1]] == groups[index]:
            runs[-1].append(index)
        else:
            runs.append([index])
    if len(runs) < world_size:
        size = len(indices) // world_size
        return indices[rank * size:(rank + 1) * size]
    owner = largest_first([PREFIX_COST + len(run) for run in runs], world_size)
    return [i for run, process in zip(runs, owner) if process == rank for i in run]


# --lr_scheduler -> the name transformers.get_scheduler knows. Our "constant" keeps its warmup, so it is
# Hugging Face's constant_with_warmup (HF's own "constant" ignores warmup); HF's name is accepted too.
HF_SCHEDULERS: dict[str, str] = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup",
                                 "constant_with_warmup": "constant_with_warmup"}
# Recorded in the run fingerprint: a checkpoint written under another data order is not resumed.
# v1 (before): micro-batches of batch_size * world_size cut the epoch, so with --grad_accum > 1 which questions
# made a step depended on how the step was split; v2: the step's global batch is cut first (step_rows).
DATA_ORDER_VERSION = "global-batch@v2"
# Recorded in the run fingerprint: a checkpoint written under another schedule definition is not resumed.
# v1 (before): hand-written, warmup from 1/warmup, decay reaching 0 one step early, warmup round(ratio * steps).
SCHEDULE_VERSION = "hf-get_scheduler@v2"


def warmup_steps(total: int, steps: int, ratio: float) -> int:
    """Warmup optimiser steps: ``steps`` when >= 0, else ``ceil(ratio * total)`` (Hugging Face Trainer's rule).

    >>> warmup_steps(308, -1, 0.03), warmup_steps(308, 50, 0.03), warmup_steps(308, -1, 0.0)
    (10, 50, 0)
    """
    return steps if steps >= 0 else math.ceil(total * ratio)


def build_scheduler(optimizer, kind: str, total: int, warmup: int):
    """``transformers.get_scheduler`` for our ``--lr_scheduler`` name: a ``LambdaLR`` stepped once per optimiser step."""
    from transformers import get_scheduler

    return get_scheduler(HF_SCHEDULERS[kind], optimizer, num_warmup_steps=warmup, num_training_steps=total)
