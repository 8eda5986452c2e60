"""TensorBoard diagnostics, read back from the event file of a short tiny-model run.

One run (4 steps, crop masks, probe every 2 steps, grid at step 4, eval loss every
2 steps) is shared by the tag tests; a second run without TensorBoard proves the
diagnostics leave training untouched (same losses: RNG restored, train mode back).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slakevqa.config import make_config
from slakevqa.data.slake import load_split
from slakevqa.training import probe as probe_module
from slakevqa.training.config import TrainConfig
from slakevqa.training.grid import Thumbnail, probe_grid, tinted
from slakevqa.training.train import train

SETTINGS = dict(max_steps=4, batch_size=4, lr=1e-2, warmup_ratio=0.0, lora_dropout=0.1, final_eval=False,
                mask_mode="crop", logging_steps=2, tb_hist_every=2, tb_log_text_every=2, tb_log_images_every=4,
                eval_steps=2, tb_probe_size=8)
GUIDANCE = {kind: 0 for kind in ("scalars", "histograms", "images", "tensors", "compressedHistograms", "audio")}


@pytest.fixture(scope="module")
def logged(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """``(event accumulator, TrainResult)`` of the shared run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from slakevqa.models.tiny import build_tiny_llava

    out = tmp_path_factory.mktemp("tb") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(probe_module, "EVAL_LOSS_RECORDS", 16)  # the eval loss path, at a tenth of the cost
        result = train(make_config(TrainConfig, model_id="tiny", slake_root=str(synth_root), output_dir=str(out), **SETTINGS),
                       *build_tiny_llava("bpe", seed=0))
    return EventAccumulator(str(out / "tb"), size_guidance=GUIDANCE).Reload(), result


def text(accumulator, tag: str) -> str:
    return accumulator.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


def test_every_tag_family_is_written(logged) -> None:
    accumulator, _ = logged
    tags = accumulator.Tags()
    scalars = set(tags["scalars"])
    assert {"data/answer_type/OPEN", "data/answer_type/CLOSED", "data/modality/CT", "train/params/lora/trainable",
            "train/params/projector/trainable", "train/params/vision_tower/total"} <= scalars
    assert {"train/loss", "train/loss/OPEN", "train/loss/CLOSED", "train/learning_rate", "train/grad_norm",
            "train/samples_per_sec", "train/tokens_per_sec", "train/supervised_tokens", "data/prompt_len_mean",
            "data/answer_len_max", "eval/loss", "train/param_norm/lora"} <= scalars
    probe = {f"probe/{s}/{g}" for s in ("llava_med", "exact", "token_f1") for g in ("OPEN", "CLOSED")}
    assert probe | {"probe/choice/CLOSED"} <= scalars and "probe/choice/OPEN" not in scalars
    assert {"data/prompt_len_hist", "data/answer_len_hist", "train/loss_per_sample",
            "probe/closed_margin"} <= set(tags["histograms"])
    assert tags["images"] == ["probe/grid"]
    assert {f"{t}/text_summary" for t in ("run/config", "data/answer_type_table", "data/prompt_preview",
                                         "probe/source", "probe/questions", "probe/answers",
                                         "run/summary")} <= set(tags["tensors"])


def test_scalars_have_sane_values_at_the_right_steps(logged) -> None:
    accumulator, result = logged
    loss = {e.step: e.value for e in accumulator.Scalars("train/loss")}
    assert loss == pytest.approx({step: value for step, value in result.losses if step in (1, 2, 4)})
    assert [e.step for e in accumulator.Scalars("eval/loss")] == [2, 4]
    assert all(e.value > 0 for e in accumulator.Scalars("train/tokens_per_sec"))
    for tag in ("probe/llava_med/OPEN", "probe/exact/CLOSED", "probe/choice/CLOSED", "probe/token_f1/OPEN"):
        events = accumulator.Scalars(tag)
        assert [e.step for e in events] == [2, 4] and all(0.0 <= e.value <= 1.0 for e in events)
    per_type = [accumulator.Scalars(f"train/loss/{g}")[-1].value for g in ("OPEN", "CLOSED")]
    assert all(np.isfinite(per_type))


def test_probe_is_balanced_and_held_out(logged, synth_root: Path) -> None:
    accumulator, _ = logged
    assert text(accumulator, "probe/source") == "8 questions from split `validation`"
    answers = text(accumulator, "probe/answers").splitlines()[2:]
    assert len(answers) == 8
    validation = {s.qid: s for s in load_split(synth_root, "validation")}
    picked = [validation[int(row.split("|")[1])] for row in answers]  # every probe qid is a validation question
    assert {s.answer_type for s in picked} == {"OPEN", "CLOSED"}
    groups = {(s.answer_type, s.content_type) for s in picked}
    assert len(groups) == min(8, len({(s.answer_type, s.content_type) for s in validation.values()}))


def test_prompt_preview_shows_the_supervised_text(logged) -> None:
    preview = text(logged[0], "data/prompt_preview")
    assert preview.count("[INST] <image>\n") == 4 and preview.count(" </s>\n```") == 4


def test_grid_is_one_captioned_image(logged) -> None:
    event = logged[0].Images("probe/grid")[-1]
    assert event.step == 4 and (event.width, event.height) == (4 * 160, 2 * (160 + 5 * 13 + 6))
    grid = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    assert (grid[160 + 2:160 + 5 * 13, :, :] < 100).any()  # caption text drawn under the thumbnails


def test_tint_marks_the_region_only() -> None:
    image = Image.new("RGB", (4, 4), (0, 0, 255))
    region = np.zeros((4, 4), bool)
    region[1:3, 1:3] = True
    pixels = np.asarray(tinted(image, region))
    assert (pixels[region][:, 0] > 0).all() and (pixels[~region] == (0, 0, 255)).all()
    item = Thumbnail(image, "Where is the liver? " * 5, "Left", "Right", False, region)
    assert probe_grid([item], columns=2).shape == (160 + 5 * 13 + 6, 320, 3)


def test_diagnostics_leave_training_unchanged(logged, synth_root: Path, tmp_path: Path, tiny_model) -> None:
    """Probe and eval loss between steps restore RNG and train mode: the losses equal a run without them."""
    plain = train(make_config(TrainConfig, model_id="tiny", slake_root=str(synth_root), output_dir=str(tmp_path),
                              **{**SETTINGS, "tb": False, "eval_steps": 0}), *tiny_model)
    assert plain.losses == logged[1].losses


def test_held_out_mode_restores_rng_and_mode(tiny_model) -> None:
    model, _ = tiny_model
    model.train()
    torch.manual_seed(7)
    with probe_module.held_out_mode(model):
        assert not model.training and not torch.is_grad_enabled()
        torch.rand(5)
    after = torch.rand(3)
    torch.manual_seed(7)
    assert model.training and torch.equal(after, torch.rand(3))
