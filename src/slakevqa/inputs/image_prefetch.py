"""Images prepared ahead: worker threads run each image's loading, mask conditioning and the family's processing
for the questions to come, while the model works on the current ones.

Preparing an image is host work in front of every batch: loading and processing SLAKE's 96 English test
images takes ~0.9 s of one core for LLaVA's CLIP at 336 px, ~2.2 s for Gemma 3's and ~4.2 s for Qwen2.5-VL's
(2-core CPU, ``benchmarks/image_prefetch.py``), against ~9 s for the whole split's answers at 7B on one GPU. On a GPU the
host mostly waits for the device, and PyTorch releases the GIL inside its operators (PIL inside its
resampling), so threads can do that work meanwhile. On a CPU the cores that would prepare images are the ones
running the model, so by default no thread is started there (:func:`worker_count`).

What the threads compute is what :meth:`~slakevqa.inputs.builder.InputBuilder.image_inputs` would compute in
the caller's thread, into the same cache: each distinct image once, by one worker. The caller waits for the
images of what it is about to use, so it never computes one a second time; a worker's error (an unreadable
image, say) is raised in the caller when it reaches that image, as it would have been without threads::

    with ImagePrefetch(builder, family, processor, workers=8) as images:
        images.submit(samples)                 # every image, in the order they will be needed
        for batch in batches:
            images.wait(batch)                 # this batch's images are in builder's cache now
            answer(batch)
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

from slakevqa.records import VQASample

MAX_WORKERS = 8  # beyond this, threads mostly wait for the GIL held by the image processors' Python parts


def worker_count(requested: int, device_type: str) -> int:
    """Threads for :class:`ImagePrefetch`: ``requested`` when it is >= 0; ``-1`` (auto): on a GPU one per core this
    process may use (its share of the host under a launcher, one core left to the process itself), at most
    :data:`MAX_WORKERS`; on a CPU none.

    >>> worker_count(3, "cpu"), worker_count(-1, "cpu"), worker_count(0, "cuda")
    (3, 0, 0)
    """
    if requested >= 0:
        return requested
    if device_type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # set by torchrun / accelerate launch
    return max(1, min(MAX_WORKERS, cores // processes - 1))


class ImagePrefetch:
    """``builder``'s :meth:`image_inputs` of ``family`` and ``processor``, computed by ``workers`` threads ahead of
    use (``workers=0``: nothing is done ahead; the caller's thread prepares each image when it needs it)."""

    def __init__(self, builder, family, processor, workers: int) -> None:
        self.builder, self.family, self.processor = builder, family, processor
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="slakevqa-images") if workers > 0 else None
        self.submitted: dict[tuple, Future] = {}  # every key submitted (its future holds what the cache holds)

    def key(self, sample: VQASample) -> tuple:
        return self.builder.image_key(sample, self.family)

    def submit(self, samples: list[VQASample]) -> None:
        """Start preparing the images of ``samples`` that are neither cached nor submitted before, in their order."""
        if self.pool is None:
            return
        for sample in samples:
            key = self.key(sample)
            if key not in self.builder.pixel_cache and key not in self.submitted:
                self.submitted[key] = self.pool.submit(self.builder.image_inputs, sample, self.family, self.processor)

    def wait(self, samples: list[VQASample]) -> None:
        """Block until the submitted images of ``samples`` are ready; raise a worker's error for one of them."""
        for sample in samples:
            future = self.submitted.get(self.key(sample))  # kept after use: never submitted again
            if future is not None:
                future.result()

    def close(self) -> None:
        """Drop the images not yet started and wait for those under way (a stopped run exits promptly)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.submitted.clear()

    def __enter__(self) -> "ImagePrefetch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
