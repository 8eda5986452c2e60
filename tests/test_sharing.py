"""How work is shared between processes (training/schedule.py, evaluation/evaluate.py), and what a run records of
its own speed (training/throughput.py, evaluation/evaluate.py's answer timing).

Training: ``share_by_group`` gives each process whole images of the global batch, balanced in
cost, and the union is exactly the batch one process would take. Evaluation: ``shard_by_image``
gives each process whole images, every question once. Both are pure functions, checked here on
SLAKE-like group sizes; ``tests/test_distributed.py`` runs them in real 2-process runs.
"""

from __future__ import annotations

import itertools
import random
import sys
from collections import Counter
from types import SimpleNamespace

import pytest

from slakevqa.evaluation.evaluate import answer_timing, shard_by_image
from slakevqa.training.schedule import PREFIX_COST, epoch_order, micro_batch_indices, share_by_group
from slakevqa.training.throughput import throughput_summary


def slake_like_groups(images: int, seed: int) -> list[int]:
    """A group (image) id per question, 5-20 questions an image, as in SLAKE's English splits."""
    rng = random.Random(seed)
    return [image for image in range(images) for _ in range(rng.randint(5, 20))]


def runs_of(indices: list[int], groups: list[int]) -> list[list[int]]:
    """Consecutive questions of one image."""
    return [list(run) for _, run in itertools.groupby(indices, key=lambda i: groups[i])]


@pytest.mark.parametrize("world", [2, 3, 4, 8])
def test_processes_share_a_packed_batch_by_whole_images_and_together_take_exactly_it(world: int) -> None:
    groups = slake_like_groups(120, seed=world)  # ~1,500 questions: 6 steps of 16 x 8 never wrap the epoch
    batch = 16
    for step in range(6):
        parts = [micro_batch_indices(step, len(groups), batch, 5, rank, world, groups) for rank in range(world)]
        whole = micro_batch_indices(step, len(groups), batch * world, 5, 0, 1, groups)
        assert Counter(i for part in parts for i in part) == Counter(whole)  # the one-process batch, no more
        assert all(parts), "a process without rows would hang the others"
        owners: dict[int, set[int]] = {}
        for rank, part in enumerate(parts):
            for i in part:
                owners.setdefault(groups[i], set()).add(rank)
        assert all(len(ranks) == 1 for ranks in owners.values())  # no image computed on two processes
        # balanced: the busiest process exceeds the mean by less than the largest image's cost
        cost = [PREFIX_COST * len(runs_of(part, groups)) + len(part) for part in parts]
        largest = max(PREFIX_COST + len(run) for run in runs_of(whole, groups))
        assert max(cost) - sum(cost) / world < largest


def test_fewer_images_than_processes_keeps_fixed_slices() -> None:
    # one image in the whole batch: two processes still get two questions each
    assert share_by_group([4, 5, 6, 7], [0] * 8, 0, 2) == [4, 5]
    assert share_by_group([4, 5, 6, 7], [0] * 8, 1, 2) == [6, 7]


def test_sharing_by_image_puts_fewer_image_rows_in_a_step_than_fixed_slices() -> None:
    groups = slake_like_groups(400, seed=0)
    order = epoch_order(len(groups), 0, 0, groups)
    chunk, world = 128, 2
    fixed = shared = 0
    for step in range(len(groups) // chunk):
        indices = order[step * chunk:(step + 1) * chunk]
        fixed += sum(len({groups[i] for i in indices[r * 64:(r + 1) * 64]}) for r in range(world))
        shared += sum(len({groups[i] for i in share_by_group(indices, groups, r, world)}) for r in range(world))
    assert shared < fixed


def test_one_process_and_ungrouped_batches_are_unchanged() -> None:
    groups = slake_like_groups(30, seed=1)
    order = epoch_order(len(groups), 3, 0, groups)
    assert micro_batch_indices(0, len(groups), 8, 3, 0, 1, groups) == order[:8]
    plain = epoch_order(len(groups), 3, 0)
    assert micro_batch_indices(0, len(groups), 8, 3, 1, 2) == plain[8:16]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_shards_hold_whole_images_and_every_question_once(world: int) -> None:
    groups = slake_like_groups(40, seed=7)
    samples = [SimpleNamespace(qid=q, image_key=f"xmlab{g}") for q, g in enumerate(groups)]
    shards = [shard_by_image(samples, rank, world) for rank in range(world)]
    assert sorted(s.qid for shard in shards for s in shard) == list(range(len(samples)))
    images = [{s.image_key for s in shard} for shard in shards]
    assert sum(len(i) for i in images) == len({s.image_key for s in samples})  # no image on two processes
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 20  # within one image's questions
    assert all(shard == sorted(shard, key=lambda s: s.qid) for shard in shards)


def test_throughput_and_timing_records() -> None:
    summary = throughput_summary([3.0, 1.0, 2.0, 1.0], 32, 2, [2**30 * 22.5, 2**30 * 23.0])
    assert summary["train_runtime"] == 7.0 and summary["train_samples_per_second"] == pytest.approx(128 / 7, abs=1e-3)
    assert summary["median_step_seconds"] == 1.0 and summary["steady_samples_per_second"] == 32.0  # first step left out
    assert summary["peak_memory_gib_per_process"] == [22.5, 23.0]
    assert "peak_memory_gib_per_process" not in throughput_summary([1.0], 8, 1, None)
    assert answer_timing(100, 4.0, 2) == {"questions_answered": 100, "answer_seconds": 4.0, "world_size": 2,
                                          "questions_per_second": 25.0}
    assert answer_timing(0, 0.0, 1)["questions_per_second"] is None  # a resumed run with nothing left


def test_a_command_leaves_no_process_group_and_imports_nothing_for_it(monkeypatch) -> None:
    from slakevqa.distributed import finish_process_group

    finish_process_group()  # no group: nothing to do
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    finish_process_group()  # a command that never imported torch does not import it to say so
    assert "torch" not in sys.modules
