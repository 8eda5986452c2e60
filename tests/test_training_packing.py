"""Training speed-ups that must not change a number: questions of one image packed into one row
(the image prefix once), and the frozen vision tower's features computed once per image.

Both are compared with the plain path on the tiny model in fp32: loss, every question's own
loss and the gradient of every trainable parameter within 1e-5.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from slakevqa.data.slake import find_layout, load_split
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.settings import InputSettings
from slakevqa.inputs.vocab import build_closed_vocab
from slakevqa.models.image_features import ImageFeatureCache
from slakevqa.training.examples import ExampleEncoder
from slakevqa.training.loss import answer_loss
from slakevqa.training.params import configure_trainable
from slakevqa.training.schedule import epoch_order, micro_batch_indices
from slakevqa.training.train import image_group_ids


def builder_for(root: Path) -> InputBuilder:
    return InputBuilder.create(find_layout(root), build_closed_vocab(load_split(root, "train")))


def image_ordered(samples: list, count: int) -> list:
    """The first ``count`` questions in image order: several images, several questions each."""
    return sorted(samples, key=lambda s: (s.image_key, s.qid))[:count]


def loss_and_grads(model, batch: dict) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    result = answer_loss(model, batch)
    result.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return float(result.loss.detach()), result.row_losses, grads


def assert_same(first: tuple, second: tuple) -> None:
    loss_a, rows_a, grads_a = first
    loss_b, rows_b, grads_b = second
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    torch.testing.assert_close(rows_a, rows_b, atol=1e-5, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4, msg=name)


def test_packed_rows_equal_the_unpacked_batch(synth_root: Path, tiny_model, mask_slicing: bool) -> None:
    model, processor = tiny_model
    model = configure_trainable(model, use_lora=False, freeze_vision_tower=False)  # every parameter: all grads
    builder = builder_for(synth_root)
    samples = image_ordered(load_split(synth_root, "train"), 20)
    plain, _ = ExampleEncoder(builder, processor, 512, 64).batch(samples)
    packed, _ = ExampleEncoder(builder, processor, 512, 64, pack=True).batch(samples)

    images = len({s.image_key for s in samples})
    assert packed["input_ids"].shape[0] == images < len(samples)
    pad = processor.tokenizer.pad_token_id
    assert int((packed["input_ids"] != pad).sum()) < int((plain["input_ids"] != pad).sum())
    assert Counter(packed["sample_index"][packed["sample_index"] >= 0].tolist()).keys() == set(range(len(samples)))
    assert_same(loss_and_grads(model, plain), loss_and_grads(model, packed))


def test_packed_positions_continue_from_the_prefix(synth_root: Path, tiny_model) -> None:
    _, processor = tiny_model
    builder = builder_for(synth_root)
    samples = image_ordered(load_split(synth_root, "train"), 3)
    assert len({s.image_key for s in samples}) == 1
    encoder = ExampleEncoder(builder, processor, 512, 64, pack=True)
    batch, _ = encoder.batch(samples)
    examples = [encoder.encode(s) for s in samples]
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    prefix = len(examples[0].input_ids) - examples[0].input_ids[::-1].index(image_id)
    row, positions = batch["input_ids"][0].tolist(), batch["position_ids"][0].tolist()
    at = prefix
    for example in examples:
        n = len(example.input_ids) - prefix
        assert row[at:at + n] == list(example.input_ids[prefix:])
        assert positions[at:at + n] == list(range(prefix, prefix + n))
        mask = batch["attention_mask"][0, 0, at + n - 1]  # the segment's last token sees ...
        assert mask[:prefix].all() and mask[at:at + n].all()  # ... the prefix and its own segment
        assert int(mask.sum()) == prefix + n  # ... and nothing else
        at += n


def test_mask_modes_give_each_question_its_own_row(synth_root: Path, tiny_model) -> None:
    _, processor = tiny_model
    builder = InputBuilder.create(find_layout(synth_root), build_closed_vocab(load_split(synth_root, "train")),
                                  settings=InputSettings(mask_mode="crop"))
    samples = image_ordered(load_split(synth_root, "train"), 4)
    batch, _ = ExampleEncoder(builder, processor, 512, 64, pack=True).batch(samples)
    assert batch["input_ids"].shape[0] == 4


def test_cached_image_features_equal_the_vision_forward(synth_root: Path, tiny_model) -> None:
    model, processor = tiny_model
    model = configure_trainable(model, use_lora=True, lora_dropout=0.0, lora_target_modules="all-linear",
                                tune_mm_projector=True, freeze_vision_tower=True)
    builder = builder_for(synth_root)
    samples = image_ordered(load_split(synth_root, "train"), 20)
    cache = ImageFeatureCache(model)
    calls = []
    tower = model.get_base_model().model.vision_tower
    hook = tower.register_forward_hook(lambda *_: calls.append(1))
    plain, _ = ExampleEncoder(builder, processor, 512, 64).batch(samples)
    cached_encoder = ExampleEncoder(builder, processor, 512, 64, pack=True, features=cache)
    cached, _ = cached_encoder.batch(samples)
    assert "pixel_values" not in cached and cached["image_features"].shape[0] == len({s.image_key for s in samples})
    expected = loss_and_grads(model, plain)
    calls.clear()
    got = loss_and_grads(model, cached)
    cached_encoder.batch(samples)  # a second epoch: no vision forward at all
    hook.remove()
    assert calls == []
    assert any("multi_modal_projector" in name for name in got[2]) and any("lora" in name for name in got[2])
    assert expected[0] == pytest.approx(got[0], abs=1e-5)
    for name in expected[2]:
        torch.testing.assert_close(expected[2][name], got[2][name], atol=1e-5, rtol=1e-4, msg=name)


def test_image_grouped_order_is_a_seeded_permutation_with_images_together(synth_root: Path) -> None:
    samples = load_split(synth_root, "train")
    groups = image_group_ids(samples, builder_for(synth_root))
    order = epoch_order(len(samples), seed=3, epoch=1, groups=groups)
    assert sorted(order) == list(range(len(samples)))
    assert order == epoch_order(len(samples), seed=3, epoch=1, groups=groups)
    assert order != epoch_order(len(samples), seed=3, epoch=2, groups=groups)
    runs = [groups[i] for i in order]
    changes = sum(a != b for a, b in zip(runs, runs[1:]))
    assert changes == len(set(groups)) - 1  # each image's questions are contiguous
    batch = micro_batch_indices(0, len(samples), 16, seed=3, groups=groups)
    assert len({groups[i] for i in batch}) <= 16 // 5 + 2  # ~7 questions per image here: a few images per batch
