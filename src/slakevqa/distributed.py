"""Process-group plumbing shared by training and evaluation (``accelerate launch`` / ``torchrun``).

Both launchers start one process per device and describe it with environment
variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); nothing happens until
someone joins the process group. Training joins through ``accelerate.Accelerator``,
a standalone evaluation through ``accelerate.PartialState``; both go through
:func:`use_cpu`, because accelerate only joins with gloo on CPU when told to: on a
machine without CUDA, ``torchrun`` (and ``accelerate launch --multi_gpu``, its
wrapper) would otherwise leave every process alone, each thinking it is rank 0
of 1, and a 2-process run would silently train twice on the full data.
"""

from __future__ import annotations

import os
import sys


def world_size() -> int:
    """Processes of this run as the launcher announced them (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def use_cpu() -> bool:
    """Run on CPU (gloo) when no CUDA device exists; with CUDA, one GPU per process (nccl)."""
    import torch

    return not torch.cuda.is_available()


def init_process_group() -> tuple[int, int]:
    """Join the launcher's process group if there is one; returns ``(rank, world_size)``.

    ``PartialState`` is a singleton: inside training the Accelerator already made
    it, and this returns the same group. On GPU it also pins the process to the
    card ``LOCAL_RANK`` names, so ``cuda`` means this process's card.
    """
    if world_size() == 1:
        return 0, 1
    from accelerate import PartialState

    state = PartialState(cpu=use_cpu())
    return state.process_index, state.num_processes


def barrier() -> None:
    """Wait for every process; a no-op without a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def finish_process_group() -> None:
    """At a command's end: wait for every process, then leave the process group (accelerate's ``end_training``).

    Without it the processes that finish first exit while the main one still writes (the
    gathered FSDP model, the merged evaluation) and tear their NCCL communicator down
    under it: at 7B on two H200s a non-main rank died with SIGSEGV at exit in 2 of 3 FSDP
    runs, failing a run whose work was done. A no-op without a process group (and without
    importing torch in a command that never did).
    """
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def largest_first(costs: list[float], world: int) -> list[int]:
    """The process each piece of work goes to: largest first, each to the least-loaded process so far.

    Ties go to the earlier piece and the lower rank, so every process computes the same answer.

    >>> largest_first([3, 1, 2, 2], 2)
    [0, 0, 1, 1]
    """
    loads, owner = [0.0] * world, [0] * len(costs)
    for piece in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        owner[piece] = loads.index(min(loads))
        loads[owner[piece]] += costs[piece]
    return owner


def global_token_mean(loss, tokens: int, accelerator):
    """``(loss to backpropagate, loss to log)`` so that N processes equal one process with N times the batch.

    Each process's ``loss`` is the mean over its own supervised tokens and DDP
    averages gradients over processes; with unequal token counts (answers differ in
    length) that weighs a token on a short-answer rank more. Scaling by
    ``tokens * world / all_tokens`` makes the averaged gradient the gradient of the
    token mean over every process's rows, which is what one process with the
    whole batch computes. The logged value is that global mean, the same on every
    rank. One process: both are ``loss`` itself, unchanged.
    """
    if accelerator.num_processes == 1:
        return loss, loss.detach()
    import torch

    local = torch.stack([loss.detach().float() * tokens, torch.tensor(float(tokens), device=loss.device)])
    total = accelerator.reduce(local, reduction="sum")
    all_tokens = total[1].clamp(min=1.0)
    return loss * (tokens * accelerator.num_processes / all_tokens), total[0] / all_tokens


def is_fsdp(accelerator) -> bool:
    """Whether ``accelerator`` shards parameters (FSDP 1 or 2)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP
