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


def step_total(weight: float, accelerator) -> float:
    """The sum of ``weight`` over every process: one collective per optimiser step (``weight`` itself alone)."""
    if accelerator.num_processes == 1:
        return float(weight)
    import torch

    total = accelerator.reduce(torch.tensor([float(weight)], device=accelerator.device), reduction="sum")
    return float(total[0])


def step_share(loss, weight: float, total: float, processes: int):
    """The part of a micro-batch's ``loss`` (a mean over its ``weight`` items) in the step's loss to backpropagate.

    The step's loss is the mean over every item (answer token) of the global batch, however the batch is
    split into micro-batches and processes: each micro-batch's mean weighs ``weight / total``, and the
    factor ``processes`` undoes DDP's averaging of gradients over processes. So N processes with
    accumulation A compute the gradient of one process with the whole global batch, which is what lets a
    checkpoint resume on another number of processes (``training/elastic.py``). One micro-batch of one
    process: ``loss`` itself, unchanged.
    """
    if processes == 1 and weight == total:
        return loss
    return loss * (weight * processes / max(total, 1.0))


def agreed_signal(signum: int | None, accelerator) -> int | None:
    """The stop signal any process received (the largest number when several did), None when none did: a
    collective, so every process calls it at the same point and all stop at the same step, the signal named."""
    if accelerator.num_processes == 1:
        return signum
    import torch
    import torch.distributed as dist

    value = torch.tensor([signum or 0], device=accelerator.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item()) or None


def is_fsdp(accelerator) -> bool:
    """Whether ``accelerator`` shards parameters (FSDP 1 or 2)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP
