"""What a training run measured of its own speed and memory: ``run_config.json``'s ``throughput``.

Hugging Face Trainer ends a run with ``train_runtime`` and ``train_samples_per_second``;
we record those (whole loop, this run's steps only: a resumed run counts what it
ran) and the steady state that a benchmark or a cluster budget needs: the median
optimiser step without the first one (which allocates AdamW's state and warms the
kernels), in questions per second over all processes, and each process's peak GPU
memory (``torch.cuda.max_memory_allocated``; absent on CPU).

    {"steps_timed": 12, "train_runtime": 7.41, "train_samples_per_second": 51.8,
     "median_step_seconds": 0.58, "steady_samples_per_second": 55.2,
     "samples_per_step": 32, "world_size": 2, "peak_memory_gib_per_process": [49.8, 50.1]}
"""

from __future__ import annotations

import statistics


def throughput_summary(step_seconds: list[float], samples_per_step: int, world_size: int,
                       peak_bytes: list[float] | None) -> dict:
    """The ``throughput`` record from each optimiser step's seconds (this process's clock).

    >>> throughput_summary([2.0, 0.5, 0.5, 1.0], 16, 2, None)["steady_samples_per_second"]
    32.0
    >>> throughput_summary([], 16, 1, None)["train_samples_per_second"] is None
    True
    """
    runtime = sum(step_seconds)
    steady = step_seconds[1:] or step_seconds
    median = statistics.median(steady) if steady else None
    summary = {
        "steps_timed": len(step_seconds), "train_runtime": round(runtime, 3),
        "train_samples_per_second": round(samples_per_step * len(step_seconds) / runtime, 3) if runtime else None,
        "median_step_seconds": round(median, 4) if median else None,
        "steady_samples_per_second": round(samples_per_step / median, 3) if median else None,
        "samples_per_step": samples_per_step, "world_size": world_size,
    }
    if peak_bytes is not None:
        summary["peak_memory_gib_per_process"] = [round(b / 2**30, 2) for b in peak_bytes]
    return summary


def peak_memory_per_process(accelerator) -> list[float] | None:
    """Every process's ``torch.cuda.max_memory_allocated`` in bytes (a collective: all ranks call it); None on CPU."""
    import torch

    if accelerator.device.type != "cuda":
        return None
    mine = torch.tensor([float(torch.cuda.max_memory_allocated(accelerator.device))], device=accelerator.device)
    return accelerator.gather(mine).tolist()
