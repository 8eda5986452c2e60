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
