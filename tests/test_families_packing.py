"""Packed training rows for Qwen2.5-VL and Gemma 3 equal one row per question (tiny fp32, real tokenizers).

Each image's questions in one row, the prefix once (slakevqa.kernels.packing), with what each family needs
on top: Qwen2.5-VL's M-RoPE positions (the prefix's own, then each question's 1-D position shifted as the
unpacked row shifts it: ``qwen2_5_vl.packed_positions``), Gemma 3's image block seeing itself both ways in
the dense mask (``kernels.packing.with_image_blocks``). Loss, every question's own loss and the gradient
of every parameter (vision tower included) within 1e-5; images of two sizes for Qwen2.5-VL.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import family_fixtures
from slakevqa.data.slake import find_layout, load_split
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.vocab import build_closed_vocab
from slakevqa.kernels.segment_attention import language_window, segments_attended
from slakevqa.models.families import family_named
from slakevqa.models.families.family import packed_inputs
from slakevqa.training.examples import ExampleEncoder
from slakevqa.training.loss import answer_loss, packed_loss
from slakevqa.training.params import configure_trainable

TOKENIZERS = {"qwen2_5_vl": "qwen2_5", "gemma3": "gemma3"}


@pytest.fixture(scope="module")
def stretched(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic SLAKE with its first training image stretched to 2:1 (Qwen2.5-VL: 8 tokens, not 4)."""
    root = tmp_path_factory.mktemp("stretched") / "slake"
    shutil.copytree(synth_root, root)
    first = sorted(load_split(root, "train"), key=lambda s: (s.image_key, s.qid))[0].image_path
    image = Image.open(first)
    image.resize((image.width * 2, image.height)).save(first)
    return root


def loss_and_grads(model, batch: dict) -> tuple:
    model.zero_grad(set_to_none=True)
    result = answer_loss(model, batch)
    result.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(result.loss.detach()), result.row_losses.detach(), grads


def tiny_setup(name: str, stretched: Path, tmp_path_factory: pytest.TempPathFactory, questions: int = 20) -> tuple:
    """``(family, model, processor, builder, samples)``: the family's tiny model (seed 2, real tokenizer) and the first
    ``questions`` training questions of the stretched synthetic SLAKE, image by image."""
    family = family_named(name)
    tokenizer = family_fixtures.real_tokenizer(TOKENIZERS[name], tmp_path_factory)
    model, processor = importlib.import_module(f"slakevqa.models.families.{name}").build_tiny(tokenizer, seed=2)
    builder = InputBuilder.create(find_layout(stretched), build_closed_vocab(load_split(stretched, "train")))
    samples = sorted(load_split(stretched, "train"), key=lambda s: (s.image_key, s.qid))[:questions]
    return family, model, processor, builder, samples


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_packed_rows_equal_one_row_per_question(name: str, stretched: Path,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    family, model, processor, builder, samples = tiny_setup(name, stretched, tmp_path_factory)
    model = configure_trainable(model.train(), use_lora=False, freeze_vision_tower=False)
    plain, _ = ExampleEncoder(builder, processor, 512, 64, family=family).batch(samples)
    encoder = ExampleEncoder(builder, processor, 512, 64, pack=True, family=family)
    packed, _ = encoder.batch(samples)

    images = len({s.image_key for s in samples})
    assert encoder.pack and packed["input_ids"].shape[0] == images < len(samples)
    if name == "qwen2_5_vl":
        grids = packed["image_grid_thw"].prod(-1).tolist()
        assert len(set(grids)) == 2  # the stretched image has its own token count
        positions = packed_inputs(family, model, packed)["position_ids"]
        assert positions.shape == (3, *packed["input_ids"].shape)
    else:  # the image block sees itself both ways: in the dense mask, and as non-causal varlen sequences
        soft = packed["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids(family.chat.image_token)
        first, last = soft.nonzero()[[0, -1], 0].tolist()
        assert bool(packed["attention_mask"][0, 0, first, last])
        both_ways = packed["segment_layout"].bidirectional
        assert both_ways.cu_q.tolist()[:2] == [0, last + 1 - first] and int(both_ways.q_cols[0]) == first
    want = loss_and_grads(model, plain)
    got = loss_and_grads(model, packed_inputs(family, model, packed))
    assert got[0] == pytest.approx(want[0], abs=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    assert got[2].keys() == want[2].keys()
    assert any(family.parts.component_of(n) == "vision_tower" for n in want[2])
    for parameter in want[2]:
        torch.testing.assert_close(got[2][parameter], want[2][parameter], atol=1e-5, rtol=1e-4, msg=parameter)


def test_gemma_packed_rows_on_the_varlen_layout_equal_the_dense_mask(stretched: Path, reference_kernel: list,
                                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    """Gemma 3's packed rows through the variable-length kernel (``reference_kernel`` stands in for flash attention's):
    the image block as a non-causal call, the rest causal; loss, per-question losses and gradients as the dense mask's
    (itself tested equal to one row per question above), gradient checkpointing on."""
    family, model, processor, builder, samples = tiny_setup("gemma3", stretched, tmp_path_factory)
    model = configure_trainable(model.train(), use_lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    packed, _ = ExampleEncoder(builder, processor, 512, 64, pack=True, family=family).batch(samples)
    dense = loss_and_grads(model, packed)
    assert not reference_kernel
    with segments_attended(model):
        varlen = loss_and_grads(model, packed)
    assert varlen[0] == pytest.approx(dense[0], abs=1e-5)
    torch.testing.assert_close(varlen[1], dense[1], atol=1e-5, rtol=1e-5)
    layers = model.config.text_config.num_hidden_layers
    assert reference_kernel == [True, False] * 2 * layers  # each layer's two calls, again in the backward
    assert varlen[2].keys() == dense[2].keys() and any("lora_A" in n for n in dense[2])
    for parameter in dense[2]:
        torch.testing.assert_close(varlen[2][parameter], dense[2][parameter], atol=1e-5, rtol=1e-4, msg=parameter)


def test_gemma_batch_longer_than_the_sliding_window_stays_one_row_per_question(
        stretched: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A packed row's mask reaches Gemma 3's sliding layers untouched, so an example longer than the window would
    attend past it: such a batch stays one row per question and its loss is the model's own (packed, it is not)."""
    family, model, processor, builder, samples = tiny_setup("gemma3", stretched, tmp_path_factory)
    model = configure_trainable(model.train(), use_lora=False)
    plain, _ = ExampleEncoder(builder, processor, 512, 64, family=family).batch(samples)
    longest = int(plain["attention_mask"].sum(1).max())
    model.config.text_config.sliding_window = window = longest - 8  # the longest examples pass it
    assert language_window(model) == window

    guarded = ExampleEncoder(builder, processor, 512, 64, pack=True, family=family, window=window)
    kept, _ = guarded.batch(samples)
    assert "segment_layout" not in kept and kept["input_ids"].shape[0] == len(samples)
    assert guarded.stats()["unpacked_over_window"] == 1
    short = [s for s in samples if len(guarded.encode(s).input_ids) <= window]
    assert 0 < len(short) < len(samples)
    assert "segment_layout" in guarded.batch(short)[0]  # a batch inside the window still packs
    packed, _ = ExampleEncoder(builder, processor, 512, 64, pack=True, family=family).batch(samples)
    want = answer_loss(model, plain).loss.item()
    assert answer_loss(model, kept).loss.item() == pytest.approx(want, abs=1e-6)
    assert abs(answer_loss(model, packed).loss.item() - want) > 1e-4  # packing would attend past the window


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_images_are_joined_on_the_encoders_device(name: str, stretched: Path,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each image's tensors cross to the device alone and are joined there (``meta`` stands in for a GPU)."""
    family, _, processor, builder, samples = tiny_setup(name, stretched, tmp_path_factory)
    here, _ = ExampleEncoder(builder, processor, 512, 64, pack=True, family=family).batch(samples)
    there, _ = ExampleEncoder(builder, processor, 512, 64, pack=True, family=family, device="meta").batch(samples)
    images = {name for name in here if name in ("pixel_values", "image_grid_thw")}
    assert images == ({"pixel_values", "image_grid_thw"} if name == "qwen2_5_vl" else {"pixel_values"})
    for key in images:
        assert here[key].device.type == "cpu" and there[key].device.type == "meta"
        assert there[key].shape == here[key].shape and there[key].dtype == here[key].dtype
    assert torch.equal(there["input_ids"], here["input_ids"])  # the text stays where it was built


def test_qwen_packed_positions_break_without_the_shift(stretched: Path,
                                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    """The shift matters: 1-D positions in packed Qwen2.5-VL rows (what the LLaVA rule would give) change the loss."""
    family, model, processor, builder, samples = tiny_setup("qwen2_5_vl", stretched, tmp_path_factory, 12)
    packed, _ = ExampleEncoder(builder, processor, 512, 64, pack=True, family=family).batch(samples)
    plain, _ = ExampleEncoder(builder, processor, 512, 64, family=family).batch(samples)
    with torch.no_grad():  # every question's own loss
        want = answer_loss(model, plain).row_losses
        right = answer_loss(model, packed_inputs(family, model, packed)).row_losses
        flat = answer_loss(model, packed).row_losses
    # 1e-6 against ~4e-4 with this seed: the random tiny model's logits move little with positions
    assert float((right - want).abs().max()) < 1e-5 and float((flat - want).abs().max()) > 1e-4


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_choice_rows_leave_the_answer_loss_unchanged(name: str, stretched: Path,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    """``--closed_train_objective hybrid`` packs candidates after each prompt: with the choice loss weighted 0 the
    loss is the answer loss of one row per question (M-RoPE positions and the image block hold there too)."""
    family, model, processor, builder, samples = tiny_setup(name, stretched, tmp_path_factory, 10)
    plain, _ = ExampleEncoder(builder, processor, 512, 64, family=family).batch(samples)
    hybrid, _ = ExampleEncoder(builder, processor, 512, 64, "hybrid", family=family).batch(samples)
    with torch.no_grad():
        reference = answer_loss(model, plain)
        combined, stats = packed_loss(model, packed_inputs(family, model, hybrid), mc_weight=0.0)
    assert stats["mc_rows"] >= 1 and combined.tokens == reference.tokens
    torch.testing.assert_close(combined.row_losses, reference.row_losses, atol=1e-5, rtol=1e-5)


def test_gemma_choice_rows_past_the_sliding_window_are_refused_by_question(
        stretched: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Choice rows have no one-row-per-question form: past the window they are refused, naming the question."""
    from slakevqa.errors import UserError

    family, _, processor, builder, samples = tiny_setup("gemma3", stretched, tmp_path_factory, 10)
    longest = max(len(e.input_ids) for e in ExampleEncoder(builder, processor, 512, 64, family=family).encode_all(samples))
    assert "segment_layout" in ExampleEncoder(builder, processor, 512, 64, "hybrid", family=family,
                                              window=longest + 16).batch(samples)[0]
    with pytest.raises(UserError, match=r"question \d+: .* past the language model's sliding window \(40\)"):
        ExampleEncoder(builder, processor, 512, 64, "hybrid", family=family, window=40).batch(samples)


def test_gemma3_cached_tower_features_equal_the_vision_forward(stretched: Path,
                                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    """A frozen SigLIP's outputs kept per image (``gemma3.tower_features``): packed rows with cached features give
    the loss and the gradients (LoRA, projector) of packed rows with pixels, and a second epoch runs no tower."""
    from slakevqa.models.image_features import ImageFeatureCache

    family, model, processor, builder, samples = tiny_setup("gemma3", stretched, tmp_path_factory)
    model = configure_trainable(model.train(), use_lora=True, lora_dropout=0.0, lora_target_modules="all-linear",
                                tune_mm_projector=True, freeze_vision_tower=True)
    with_pixels, _ = ExampleEncoder(builder, processor, 512, 64, pack=True, family=family).batch(samples)
    calls: list[int] = []
    hook = family.parts.module(model, "vision").register_forward_hook(lambda *_: calls.append(1))
    encoder = ExampleEncoder(builder, processor, 512, 64, pack=True, features=ImageFeatureCache(model), family=family)
    cached, _ = encoder.batch(samples)
    assert "pixel_values" not in cached and cached["image_features"].shape[:2] == (cached["input_ids"].shape[0], 64)
    want = loss_and_grads(model, with_pixels)
    calls.clear()
    got = loss_and_grads(model, cached)
    encoder.batch(samples)  # a second epoch: no tower forward at all
    hook.remove()
    assert calls == []
    assert {family.parts.component_of(n) for n in got[2]} == {"lora", "projector"}
    assert got[0] == pytest.approx(want[0], abs=1e-5)
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_packed_rows_laid_flat_equal_the_padded_rows(name: str, stretched: Path, reference_kernel: list,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    """The rows end to end in one row (``flat_for_kernel``, what training does where flash attention's kernel
    serves), after the family's own packing: Qwen2.5-VL's M-RoPE positions ``(3, 1, T)`` and two image sizes,
    Gemma 3's ``token_type_ids`` and image block (its non-causal sequences flattened with the rest). Loss,
    per-question losses and gradients as the padded rows' through the same (reference) kernel."""
    from slakevqa.kernels.packing import flat_for_kernel

    family, model, processor, builder, samples = tiny_setup(name, stretched, tmp_path_factory)
    model = configure_trainable(model.train(), use_lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    packed, _ = ExampleEncoder(builder, processor, 512, 64, pack=True, family=family).batch(samples)
    bound_flat, _ = ExampleEncoder(builder, processor, 512, 64, pack=True, family=family, flat=True).batch(samples)
    assert packed["attention_mask"].dim() == 4 and "attention_mask" not in bound_flat  # the kernel reads the layout
    padded = packed_inputs(family, model, packed)
    flat = flat_for_kernel(packed_inputs(family, model, bound_flat))
    assert flat["input_ids"].shape[0] == 1 < padded["input_ids"].shape[0]
    assert flat["position_ids"].shape[:-1] == ((3, 1) if name == "qwen2_5_vl" else (1,))
    if name == "gemma3":
        assert flat["token_type_ids"].shape == flat["input_ids"].shape and flat["segment_layout"].bidirectional.flat
    with segments_attended(model):
        want, got = loss_and_grads(model, padded), loss_and_grads(model, flat)
    assert got[0] == pytest.approx(want[0], abs=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    assert got[2].keys() == want[2].keys() and any("lora_A" in n for n in want[2])
    for parameter in want[2]:
        torch.testing.assert_close(got[2][parameter], want[2][parameter], atol=1e-5, rtol=1e-4, msg=parameter)
    assert reference_kernel
