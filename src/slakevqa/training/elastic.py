"""Resuming a checkpoint on another number of processes, with the mathematics of every step kept.

What makes an optimiser step is its **global batch**: ``batch_size x grad_accum x processes`` questions.

* *Which* questions: :func:`~slakevqa.training.schedule.step_rows` takes the step's global batch from the
  epoch's order first and only then cuts it into micro-batches and processes, so the set does not
  depend on the cut.
* *How they are weighed*: the step's loss is the mean over every answer token of the global batch
  (:func:`~slakevqa.distributed.step_share`), whatever the cut.
* *The state*: the trainable weights, AdamW's moments and the schedule are the same on every DDP process
  and saved once; under FSDP they are sharded through torch's distributed checkpoint (DCP), which reshards
  on load.

So a checkpoint written by N processes resumes on M. The run keeps the global batch its folder recorded
(``run_fingerprint.json``'s ``global_batch_size``) by choosing ``batch_size`` and ``grad_accum`` for the
new number of processes (:func:`split_global_batch`), and says so in one line. What differs from the
uninterrupted run:

* **fp32, dropout 0, the SFT objective**: the sums run in another order; losses agree to float rounding
  (~1e-7 relative on CPU), not bit for bit (the same number of processes resumes bit for bit).
* **dropout > 0**: each process draws its own masks, so another cut draws other masks. After a resume on
  another number of processes every process reseeds from ``(seed, step, rank)`` (:func:`elastic_seed`):
  deterministic, but not the uninterrupted run's draws.
* **the mc and hybrid objectives**: a micro-batch's choice loss is a mean over its own questions, weighed
  by its share of the step's questions; the same up to how the choices fall into micro-batches.
* **bf16 on GPU**: the same, within bf16 noise.

What still does not resume, each refused in one line: a global batch that M processes cannot split evenly;
a DDP checkpoint under FSDP or the reverse (resume with the accelerate config that wrote it).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from slakevqa.errors import UserError

log = logging.getLogger(__name__)


def split_global_batch(global_batch: int, batch_size: int, processes: int) -> tuple[int, int] | None:
    """``(batch_size, grad_accum)`` for ``processes`` that make ``global_batch``, the micro-batch no larger than
    ``batch_size`` (it fits in memory) and as few accumulation steps as that allows; None when no even split exists.

    >>> split_global_batch(32, 16, 1), split_global_batch(32, 16, 4), split_global_batch(24, 16, 2), split_global_batch(6, 4, 4)
    ((16, 2), (8, 1), (12, 1), None)
    """
    if global_batch % processes:
        return None
    per_process = global_batch // processes
    micro = next(size for size in range(min(batch_size, per_process), 0, -1) if per_process % size == 0)
    return micro, per_process // micro


def keep_global_batch(cfg, out: Path, processes: int):
    """``cfg`` with ``batch_size`` / ``grad_accum`` that keep the global batch recorded in ``out`` on ``processes``.

    Unchanged when nothing is recorded, the run starts afresh (``--overwrite``, ``--resume_from_checkpoint
    none``) or the flags already give the recorded batch. A batch ``processes`` cannot split is refused.
    """
    from slakevqa.runs.fingerprint import FINGERPRINT_NAME, read_fingerprint
    from slakevqa.training.checkpoint import resume_wanted

    recorded = read_fingerprint(out / FINGERPRINT_NAME)
    resumes = not cfg.overwrite and resume_wanted(cfg.resume_from_checkpoint)
    wanted = (recorded or {}).get("values", {}).get("global_batch_size") if recorded and resumes else None
    if not isinstance(wanted, int) or wanted == cfg.batch_size * cfg.grad_accum * processes:
        return cfg
    split = split_global_batch(wanted, cfg.batch_size, processes)
    if split is None:
        raise UserError(f"{out / FINGERPRINT_NAME}: this run trains on {wanted} questions per optimiser step, which "
                        f"{processes} processes cannot share evenly; resume with a number of processes that "
                        f"divides {wanted}, or pass --overwrite to start afresh")
    batch_size, grad_accum = split
    log.warning("resuming with %d process(es): the run's global batch of %d questions per step is kept as "
                "--batch_size %d x --grad_accum %d x %d process(es)", processes, wanted, batch_size, grad_accum,
                processes)
    return replace(cfg, batch_size=batch_size, grad_accum=grad_accum)


def elastic_seed(seed: int, step: int, rank: int) -> int:
    """The seed of process ``rank``'s generators after a resume at ``step`` on another number of processes.

    >>> elastic_seed(3, 4, 0) != elastic_seed(3, 4, 1) != elastic_seed(3, 5, 1)
    True
    """
    return (seed * 1_000_003 + step * 10_007 + rank) % 2**32


def written_by(checkpoint: Path) -> int:
    """How many processes wrote ``checkpoint`` (one ``random_states_{rank}.pkl`` each)."""
    return len(list(checkpoint.glob("random_states_*.pkl")))
