"""Packed rows laid end to end in one row, no padding (kernels/packing.py's ``flatten_packed``,
``SegmentLayout.flattened``), on the tiny model in fp32 with conftest.py's reference kernel
standing in for flash attention's variable-length one (the only attention a flat batch may take): everything the
prefill hands to scoring and decoding equals the padded rows' (tests/test_evaluation_paths.py runs whole answers
on it), and where the kernel cannot serve, the rows stay padded and a flat batch is refused, never attended wrongly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slakevqa.data.slake import find_layout, load_split
from slakevqa.evaluation.engine import Engine
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.vocab import build_closed_vocab
from slakevqa.kernels.packing import flat_for_kernel, flatten_packed, mask_stand_in, segment_batch
from slakevqa.kernels.segment_attention import segment_attention, varlen_serves


@pytest.fixture(scope="module")
def engine(tiny_engine: Engine) -> Engine:
    return tiny_engine


def encoded(engine: Engine, items: list, flat: bool) -> tuple:
    """The prefill's rows, and the shape of the token batch the language model ran."""
    shapes = []
    hook = engine.model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    engine.fast.flat_packing = flat
    try:
        return engine.fast.encode(items).rows, shapes
    finally:
        engine.fast.flat_packing = True
        hook.remove()


def test_flat_prefill_hands_on_what_the_padded_rows_do(engine: Engine, synth_root: Path, reference_kernel) -> None:
    samples = sorted(load_split(synth_root, "test"), key=lambda s: s.image_key)[:30]
    items = [engine.prepare(s) for s in samples]
    assert varlen_serves(engine.model)
    rows, row_shapes = encoded(engine, items, flat=False)
    flat, flat_shapes = encoded(engine, items, flat=True)
    images = len({s.image_key for s in samples})
    assert row_shapes[0][0] == images > 2 and flat_shapes[0][0] == 1  # one row: no padding to the longest
    assert flat_shapes[0][1] < row_shapes[0][0] * row_shapes[0][1]
    assert flat.tail_width == rows.tail_width and torch.equal(flat.valid, rows.valid)
    assert torch.equal(flat.next_position, rows.next_position)
    torch.testing.assert_close(flat.last_logits, rows.last_logits, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(flat.cache.keys + flat.cache.values, rows.cache.keys + rows.cache.values):
        torch.testing.assert_close(ours * flat.valid[:, None, :, None], theirs * rows.valid[:, None, :, None],
                                   atol=1e-5, rtol=1e-5)  # left-padding columns hold nothing anyone reads
    for ours, theirs in zip(flat.groups.keys + flat.groups.values, rows.groups.keys + rows.groups.values):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert flat.groups.image_of_row == rows.groups.image_of_row


def test_without_the_kernel_rows_stay_padded_and_a_flat_batch_is_refused(engine: Engine) -> None:
    assert not varlen_serves(engine.model)  # CPU: flash attention cannot run, so the prefill keeps its rows
    rows = [([1, 5, 6], [-100] * 3, [0, 1, 2], [0, 1, 1]), ([1, 7], [-100] * 2, [0, 1], [0, 1])]
    batch = flatten_packed(segment_batch(rows, pad_id=0))
    mask = mask_stand_in(5)
    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, 5)
    assert mask.shape == (1, 1, 5, 5) and mask.untyped_storage().nbytes() == 1  # a view of one element: no T x T
    assert batch["segment_layout"].flat and not segment_batch(rows, 0)["segment_layout"].flat
    attention = engine.model.model.language_model.layers[0].self_attn
    query, key = torch.zeros(1, 4, 5, 32), torch.zeros(1, 2, 5, 32)
    with pytest.raises(RuntimeError, match="flattened packed batch"):
        segment_attention(attention, query, key, key, mask, segment_layout=batch["segment_layout"])


def test_flat_prefill_in_bf16_answers_as_the_plain_backend(engine: Engine, synth_root: Path, reference_kernel) -> None:
    """The GPU's dtype on CPU: bf16 weights, the flat prefill and the rows on the (reference) kernel. The backends
    round differently, so choices may flip only where the plain backend's margin is small; scores stay close."""
    import copy

    model = copy.deepcopy(engine.model).to(torch.bfloat16)
    samples = sorted(load_split(synth_root, "test"), key=lambda s: s.image_key)[:40]
    fast = Engine(model, engine.processor, engine.builder)
    assert varlen_serves(model) and fast.fast.flat_packing
    got = fast.answer(samples)
    want = Engine(model, engine.processor, engine.builder, share_prefix=False).answer(samples)
    assert reference_kernel
    closed = [(a, b) for a, b in zip(got, want, strict=True) if b.route != "open"]
    assert len(closed) >= 10
    for a, b in closed:
        assert a.scores == pytest.approx(b.scores, rel=1e-2, abs=1e-2), a.qid  # measured: 0.025 at -6.2 (bf16)
        assert a.prediction == b.prediction or b.margin < 4e-2, a.qid
    opened = [(a.raw_output, b.raw_output) for a, b in zip(got, want, strict=True) if b.route == "open"]
    assert opened and sum(a == b for a, b in opened) >= len(opened) // 3  # near-ties flip; a wrong prefix: none agree


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash attention's kernel needs a GPU (run on the GPU box)")
def test_flat_prefill_on_the_flash_kernel_equals_padded_rows(engine: Engine, synth_root: Path) -> None:
    from slakevqa.models.tiny import build_tiny_llava

    model, processor = build_tiny_llava("bpe", seed=0)
    on_gpu = Engine(model.to("cuda", torch.bfloat16), processor, engine.builder)  # a model of its own: bf16 rounds
    items = [on_gpu.prepare(s) for s in sorted(load_split(synth_root, "test"), key=lambda s: s.image_key)[:30]]
    assert varlen_serves(on_gpu.model)
    with torch.inference_mode():
        (rows, row_shapes), (flat, flat_shapes) = encoded(on_gpu, items, False), encoded(on_gpu, items, True)
    assert flat_shapes[0][0] == 1 < row_shapes[0][0]
    torch.testing.assert_close(flat.last_logits.float(), rows.last_logits.float(), atol=2e-2, rtol=2e-2)
    for ours, theirs in zip(flat.groups.keys, rows.groups.keys):
        torch.testing.assert_close(ours.float(), theirs.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("cached", [False, True], ids=["pixels", "feature-cache"])
def test_flat_training_batch_gives_the_padded_rows_loss_and_gradients(synth_root: Path, tiny_model,
                                                                     reference_kernel, cached: bool) -> None:
    """Training's packed batch laid flat (``ExampleEncoder(flat=True)``, what ``slakevqa train`` builds where the
    kernel serves): the loss, every question's own loss and every gradient equal the padded rows' through the
    same kernel, gradient checkpointing on; the per-question losses keep their questions. ``feature-cache``: the
    images' cached features go in as the flat row's image tokens, in order (training's default for LLaVA)."""
    from slakevqa.kernels.segment_attention import segments_attended
    from slakevqa.models.image_features import ImageFeatureCache
    from slakevqa.training.examples import ExampleEncoder
    from slakevqa.training.loss import answer_loss
    from slakevqa.training.params import configure_trainable

    model, processor = tiny_model
    model = configure_trainable(model, use_lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                freeze_vision_tower=cached)  # the cache serves a frozen tower only
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    builder = InputBuilder.create(find_layout(synth_root), build_closed_vocab(load_split(synth_root, "train")))
    samples = sorted(load_split(synth_root, "train"), key=lambda s: (s.image_key, s.qid))[:40]
    runs = {}
    for flat in (False, True):
        features = ImageFeatureCache(model) if cached else None
        encoder = ExampleEncoder(builder, processor, 512, 64, pack=True, flat=flat, features=features)
        batch, _ = encoder.batch(samples)
        assert ("image_features" in batch) == cached
        assert ("attention_mask" in batch) != flat  # flat rows: the layout only, no dense mask built
        if flat:
            batch = flat_for_kernel(batch)
            assert encoder.flat and batch["input_ids"].shape[0] == 1 and batch["attention_mask"].shape[0] == 1
            assert int((batch["input_ids"] == processor.tokenizer.pad_token_id).sum()) == 0
        else:
            assert batch["input_ids"].shape[0] > 2 and int((batch["input_ids"] == processor.tokenizer.pad_token_id).sum())
        model.zero_grad(set_to_none=True)
        with segments_attended(model):
            result = answer_loss(model, batch)
            result.loss.backward()
        runs[flat] = (float(result.loss.detach()), result.row_losses,
                      {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert runs[True][0] == pytest.approx(runs[False][0], abs=1e-5)
    torch.testing.assert_close(runs[True][1], runs[False][1], atol=1e-5, rtol=1e-5)
    assert runs[True][2].keys() == runs[False][2].keys() and any("lora_A" in n for n in runs[True][2])
    for name, grad in runs[False][2].items():
        torch.testing.assert_close(runs[True][2][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert len(reference_kernel) == 4 * model.config.text_config.num_hidden_layers  # both runs, recompute included


def test_train_lays_packed_rows_flat_where_the_kernel_serves(synth_root: Path, tmp_path: Path, reference_kernel,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``slakevqa train`` itself: with the (reference) kernel serving, its packed batches are flat, run_config.json
    says so, and the losses of every step equal a run whose rows stay padded (same seed, same batches)."""
    import json

    import slakevqa.training.train as train_module
    from slakevqa.config import make_config
    from slakevqa.models.tiny import build_tiny_llava
    from slakevqa.training.config import TrainConfig

    runs = {}
    for flat in (True, False):
        if not flat:
            monkeypatch.setattr(train_module, "varlen_serves", lambda model: False)
        out = tmp_path / str(flat)
        cfg = make_config(TrainConfig, model_id="tiny", slake_root=str(synth_root), output_dir=str(out), max_steps=3,
                          batch_size=8, final_eval=False, tb=False, eval_steps=0, lora_r=4,
                          lora_target_modules="all-linear", gradient_checkpointing=True)
        runs[flat] = train_module.train(cfg, *build_tiny_llava("bpe", seed=0)).losses
        levers = json.loads((out / "run_config.json").read_text())["speed_levers"]
        assert levers["packed"] and levers["flat_packing"] == flat
    steps, losses = zip(*runs[True])
    # equal up to fp32 rounding, which two updates carry on (other GEMM shapes sum in another order)
    assert steps == (1, 2, 3) and losses == pytest.approx([loss for _, loss in runs[False]], rel=2e-5)
    assert reference_kernel  # the packed rows went through the kernel in both runs


@pytest.mark.parametrize("name,tokenizer", [("qwen2_5_vl", "qwen2_5"), ("gemma3", "gemma3")])
def test_train_in_the_gpu_layout_lays_every_family_flat(name: str, tokenizer: str, synth_root: Path, tmp_path: Path,
                                                        reference_kernel, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    """``slakevqa train``'s default GPU path on CPU, as far as CPU goes: bf16 weights, fp32 adapters under bf16
    autocast, gradient checkpointing, packed rows laid flat through the (reference) kernel with the family's own
    inputs (Qwen2.5-VL's ``(3, 1, T)`` M-RoPE positions, Gemma 3's non-causal image block) and the images joined
    on the model's device. Its losses are a padded run's within bf16 rounding."""
    import importlib
    import json

    import family_fixtures
    import slakevqa.training.train as train_module
    from slakevqa.config import make_config
    from slakevqa.training.config import TrainConfig

    module = importlib.import_module(f"slakevqa.models.families.{name}")
    real = family_fixtures.real_tokenizer(tokenizer, tmp_path_factory)
    runs, causal_flags = {}, {}
    for flat in (True, False):
        if not flat:
            monkeypatch.setattr(train_module, "varlen_serves", lambda model: False)
        model, processor = module.build_tiny(real, seed=2)
        out = tmp_path / str(flat)
        cfg = make_config(TrainConfig, model_id="tiny", slake_root=str(synth_root), output_dir=str(out), max_steps=3,
                          batch_size=8, final_eval=False, tb=False, eval_steps=0, lora_r=4, precision="bf16",
                          lora_target_modules="all-linear", gradient_checkpointing=True)
        before = len(reference_kernel)
        runs[flat] = train_module.train(cfg, model.to(torch.bfloat16), processor).losses
        causal_flags[flat] = reference_kernel[before:]
        config = json.loads((out / "run_config.json").read_text())
        assert config["speed_levers"]["packed"] and config["speed_levers"]["flat_packing"] == flat
        assert config["precision"] == {"weights": "bfloat16", "adapters": "float32", "autocast": "bf16"}
    steps, losses = zip(*runs[True])
    assert steps == (1, 2, 3) and all(loss == loss and loss > 0 for loss in losses)  # finite, not NaN
    assert losses == pytest.approx([loss for _, loss in runs[False]], rel=1e-3)  # bf16: other sums, other roundings
    assert causal_flags[True] and (False in causal_flags[True]) == (name == "gemma3")  # Gemma's block: non-causal
