"""Images reach the model's device as they are, one by one, and are joined and cast there.

PyTorch converts a blocking cross-device copy's dtype on the host (``family.to_device`` has the costs), and a host-side
join copies every byte once more. ``meta`` stands in for the GPU; every aten operation is recorded with the device of
its input and the dtype of its output.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from slakevqa.models.families import family_named
from slakevqa.models.families.family import ImageInputs, on_device, prompt_batch, to_device


class Recorded(TorchDispatchMode):
    """``(operation, first input's device, output dtype)`` of every aten call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, torch.dtype | None]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if first is None and args and isinstance(args[0], (list, tuple)) and args[0]:
            first = args[0][0]
        device = first.device.type if isinstance(first, torch.Tensor) else "-"
        self.calls.append((func.__name__, device, out.dtype if isinstance(out, torch.Tensor) else None))
        return out


class OnMeta(torch.nn.Module):
    """A model whose weights are bf16 on the stand-in device."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(2, device="meta", dtype=torch.bfloat16))


def host_work(calls: list) -> list:
    """The recorded calls that computed on the host: a float cast or a join there."""
    return [c for c in calls if c[1] == "cpu" and (c[2] == torch.bfloat16 or c[0].startswith(("cat", "stack")))]


def test_to_device_copies_then_casts_there() -> None:
    pixels = torch.randn(3, 8, 8)
    with Recorded() as seen:
        moved = to_device(pixels, "meta", torch.bfloat16)
    assert (moved.device.type, moved.dtype) == ("meta", torch.bfloat16)
    assert host_work(seen.calls) == []
    assert ("_to_copy.default", "meta", torch.bfloat16) in seen.calls
    with Recorded() as seen:  # what it replaces: the cast runs where the tensor was
        pixels.to("meta", torch.bfloat16)
    assert host_work(seen.calls) == [("_to_copy.default", "cpu", torch.bfloat16)]
    assert torch.equal(to_device(pixels, "cpu", torch.bfloat16), pixels.to(torch.bfloat16))  # the same rounding


@pytest.mark.parametrize("name", ["llava_med", "qwen2_5_vl"])
def test_prompt_batch_joins_and_casts_images_on_the_models_device(name: str) -> None:
    family = family_named(name)
    if name == "qwen2_5_vl":  # patches of two sizes, concatenated
        images = [ImageInputs({"pixel_values": torch.randn(16 * k, 1176), "image_grid_thw": torch.tensor([[1, 4, 4 * k]])},
                              4 * k) for k in (1, 2)]
    else:
        images = [ImageInputs({"pixel_values": torch.randn(3, 14, 14)}, 1) for _ in range(2)]
    prompts = [[5, 6, 7], [8, 9]]
    with Recorded() as seen:
        batch = prompt_batch(family, prompts, images, 0, OnMeta())
    assert host_work(seen.calls) == []
    host = prompt_batch(family, prompts, images, 0)  # no model: everything stays here, as it was
    assert batch.keys() == host.keys()
    for key, value in batch.items():
        assert value.device.type == "meta" and value.shape == host[key].shape, key
        assert value.dtype == (torch.bfloat16 if host[key].is_floating_point() else host[key].dtype), key
    assert on_device(host, OnMeta())["pixel_values"].dtype == torch.bfloat16


def test_kept_pixel_dtype_follows_the_vision_tower(tiny_model) -> None:
    from slakevqa.models.image_features import kept_pixel_dtype
    from slakevqa.training.params import configure_trainable

    model, _ = tiny_model
    assert kept_pixel_dtype(model) is None  # fp32 tower: the processor's fp32 stays
    half = configure_trainable(model.to(torch.bfloat16), True, 4, 8, 0.0, "q_proj,v_proj", "language_model")
    assert kept_pixel_dtype(half) == torch.bfloat16  # through peft's wrappers


@pytest.mark.parametrize("name,tokenizer", [("llava_med", None), ("qwen2_5_vl", "qwen2_5")])
def test_bf16_pixels_give_a_bf16_model_the_same_losses_and_answers(name: str, tokenizer: str | None, synth_root,
                                                                  tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    """The tower casts its pixels to its own dtype first, so keeping them in bf16 changes no value: ``slakevqa train``
    gives the same losses bit for bit, and the engine the same answers and scores, as with fp32 pixels."""
    import importlib

    import family_fixtures
    import slakevqa.training.train as train_module
    from slakevqa.config import make_config
    from slakevqa.data.slake import find_layout, load_split
    from slakevqa.evaluation.engine import Engine
    from slakevqa.inputs.builder import InputBuilder
    from slakevqa.inputs.vocab import build_closed_vocab
    from slakevqa.models.tiny import build_tiny_llava
    from slakevqa.training.config import TrainConfig

    def build():
        if name == "llava_med":
            return build_tiny_llava("bpe", seed=0)
        real = family_fixtures.real_tokenizer(tokenizer, tmp_path_factory)
        return importlib.import_module(f"slakevqa.models.families.{name}").build_tiny(real, seed=2)

    losses, kept = {}, []
    for half in (True, False):
        if not half:
            monkeypatch.setattr(train_module, "kept_pixel_dtype", lambda model: None)
        monkeypatch.setattr(train_module.ExampleEncoder, "image_inputs",
                            lambda self, s, real=train_module.ExampleEncoder.image_inputs: kept.append(
                                real(self, s).pixel_values.dtype) or real(self, s))
        model, processor = build()
        cfg = make_config(TrainConfig, model_id="tiny", slake_root=str(synth_root), output_dir=str(tmp_path / str(half)),
                          max_steps=2, batch_size=8, final_eval=False, tb=False, eval_steps=0, lora_r=4,
                          precision="bf16")
        losses[half] = train_module.train(cfg, model.to(torch.bfloat16), processor).losses
        assert set(kept) == {torch.bfloat16 if half else torch.float32}
        kept.clear()
    assert losses[True] == losses[False]

    model, processor = build()
    model = model.to(torch.bfloat16)
    samples = load_split(synth_root, "test")[:16]
    answers = {}
    for dtype in (torch.bfloat16, None):
        builder = InputBuilder.create(find_layout(synth_root), build_closed_vocab(load_split(synth_root, "train")))
        builder.pixel_dtype = dtype
        answers[dtype] = [(p.prediction, p.raw_output, p.scores) for p in Engine(model, processor, builder).answer(samples)]
    assert answers[torch.bfloat16] == answers[None]


def test_builder_copies_keep_their_own_pixel_dtype(synth_root, tiny_model) -> None:
    import dataclasses

    from slakevqa.data.slake import find_layout, load_split
    from slakevqa.inputs.builder import InputBuilder
    from slakevqa.inputs.vocab import ClosedVocab

    _, processor = tiny_model
    family, sample = family_named("llava_med"), load_split(synth_root, "test")[0]
    full = InputBuilder.create(find_layout(synth_root), ClosedVocab.empty())
    half = dataclasses.replace(full, pixel_dtype=torch.bfloat16)  # shares the cache, as the probe's builder does
    a, b = full.image_inputs(sample, family, processor), half.image_inputs(sample, family, processor)
    assert (a.pixel_values.dtype, b.pixel_values.dtype) == (torch.float32, torch.bfloat16) and a.tokens == b.tokens
    assert torch.equal(b.pixel_values, a.pixel_values.to(torch.bfloat16)) and len(full.pixel_cache) == 2
