"""Images prepared by worker threads ahead of the model (slakevqa.inputs.image_prefetch): the same tensors, mask
counts, answers and losses as preparing them in the caller's thread; each image once; a worker's error raised where
the caller needs that image; the worker count the device calls for."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from slakevqa.data.slake import find_layout, load_split
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.image_prefetch import MAX_WORKERS, ImagePrefetch, worker_count
from slakevqa.inputs.settings import InputSettings
from slakevqa.inputs.vocab import ClosedVocab
from slakevqa.models.families import family_named


@pytest.fixture(scope="module")
def processor():
    from slakevqa.models.tiny import build_tiny_llava

    return build_tiny_llava("bpe", seed=0)[1]


def counting_builder(root: Path, settings: InputSettings = InputSettings()) -> tuple[InputBuilder, list]:
    """A builder whose :meth:`image` records each call's (thread, pixel key)."""
    builder = InputBuilder.create(find_layout(root), ClosedVocab.empty(), settings=settings)
    calls, image = [], builder.image

    def counted(sample):
        calls.append((threading.current_thread().name, builder.pixel_key(sample)))
        return image(sample)

    builder.image = counted
    return builder, calls


def prepared(builder: InputBuilder, samples: list, processor, workers: int) -> dict:
    family = family_named("llava_med")
    with ImagePrefetch(builder, family, processor, workers) as images:
        images.submit(samples[: len(samples) // 2])
        images.submit(samples)  # again, overlapping: nothing is submitted twice
        images.wait(samples)
        for sample in samples:
            builder.image_inputs(sample, family, processor)
    return builder.pixel_cache


def test_workers_prepare_each_image_once_and_the_same_tensors(synth_root: Path, processor) -> None:
    samples = load_split(synth_root, "test")
    serial, serial_calls = counting_builder(synth_root)
    threaded, threaded_calls = counting_builder(synth_root)
    expected = prepared(serial, samples, processor, workers=0)
    got = prepared(threaded, samples, processor, workers=3)
    distinct = {serial.pixel_key(s) for s in samples}
    assert len(distinct) < len(samples)  # several questions per image: the cache is what is shared
    assert sorted(key for _, key in serial_calls) == sorted(distinct)
    assert sorted(key for _, key in threaded_calls) == sorted(distinct)  # once each, none by the caller
    assert all(name.startswith("slakevqa-images") for name, _ in threaded_calls)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k].pixel_values, got[k].pixel_values) and expected[k].tokens == got[k].tokens
               for k in expected)


def test_mask_counts_are_the_same_with_workers(synth_root: Path, processor) -> None:
    samples = load_split(synth_root, "test")
    settings = InputSettings(mask_mode="crop")  # per question: one image each, most conditioned
    serial, _ = counting_builder(synth_root, settings)
    threaded, _ = counting_builder(synth_root, settings)
    prepared(serial, samples, processor, workers=0)
    prepared(threaded, samples, processor, workers=4)
    assert serial.mask_stats.as_dict() == threaded.mask_stats.as_dict()
    assert sum(threaded.mask_stats.counts.values()) == len(samples)


def test_a_workers_error_is_raised_where_the_image_is_needed(mini_slake: Path, processor) -> None:
    samples = load_split(mini_slake, "test")
    broken = samples[-1]
    Path(broken.image_path).write_bytes(b"not a png")
    builder, _ = counting_builder(mini_slake)
    family = family_named("llava_med")
    with ImagePrefetch(builder, family, processor, workers=2) as images:
        images.submit(samples)
        fine = [s for s in samples if s.image_path != broken.image_path]
        images.wait(fine)  # the others are ready
        with pytest.raises(Exception, match=Path(broken.image_path).name):
            images.wait([broken])
    assert all(builder.image_key(s, family) in builder.pixel_cache for s in fine)
    assert builder.image_key(broken, family) not in builder.pixel_cache


def test_answers_are_the_same_with_workers(tiny_engine, synth_root: Path) -> None:
    samples = load_split(synth_root, "test")[:24]
    tiny_engine.builder.pixel_cache.clear()
    serial = [p for batch in tiny_engine.answer_batches(samples, 8) for p in batch]
    tiny_engine.builder.pixel_cache.clear()
    threaded = [p for batch in tiny_engine.answer_batches(samples, 8, workers=2) for p in batch]
    assert [p.qid for p in threaded] == [s.qid for s in samples]
    assert [(p.prediction, p.scores) for p in threaded] == [(p.prediction, p.scores) for p in serial]


def test_the_worker_count_follows_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert worker_count(-1, "cpu") == 0  # the cores run the model
    assert worker_count(-1, "cuda") == MAX_WORKERS
    assert worker_count(5, "cpu") == 5 and worker_count(0, "cuda") == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four processes share the host's 16 cores
    assert worker_count(-1, "cuda") == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert worker_count(-1, "cuda") == 1


def test_training_losses_are_the_same_with_workers(synth_root: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from slakevqa.config import make_config
    from slakevqa.models.tiny import build_tiny_llava
    from slakevqa.training.config import TrainConfig
    from slakevqa.training.train import train

    threads, image = [], InputBuilder.image
    monkeypatch.setattr(InputBuilder, "image", lambda self, s: threads.append(threading.current_thread().name)
                        or image(self, s))
    losses = {}
    for workers in (0, 2):
        threads.clear()
        cfg = make_config(TrainConfig, model_id="tiny", slake_root=str(synth_root), output_dir=str(tmp_path / str(workers)),
                          max_steps=3, batch_size=8, lr=5e-3, tb=False, final_eval=False, prefetch_workers=workers)
        losses[workers] = train(cfg, *build_tiny_llava("bpe", seed=0)).losses
        prepared_by_workers = [name.startswith("slakevqa-images") for name in threads]
        assert prepared_by_workers and all(prepared_by_workers) == (workers > 0)  # every step's images, the first's too
    assert len(losses[0]) == 3 and losses[2] == losses[0]
