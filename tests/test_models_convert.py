"""The converter: a tiny original-format LLaVA-Med checkpoint -> HF folder with identical logits."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

pytest.importorskip("mistral_common")

from models_helpers import IMAGE_TOKEN_INDEX, sentencepiece_model, upstream_logits, upstream_pixels, upstream_prompt_ids  # noqa: E402
from slakevqa.cli import main as cli  # noqa: E402
from slakevqa.errors import UserError  # noqa: E402
from slakevqa.models.convert import convert_checkpoint  # noqa: E402
from slakevqa.models.families.llava_med import CHAT  # noqa: E402
from slakevqa.models.processor import load_processor  # noqa: E402
from slakevqa.models.tiny import build_tiny_llava  # noqa: E402
from slakevqa.models.tiny_original import save_llava_med_original  # noqa: E402

render_generation_prompt = CHAT.generation_prompt

QUESTION = "Which organ is abnormal, the heart or the liver?"


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    model, processor = build_tiny_llava("mistral", seed=1)
    return save_llava_med_original(model, processor, tmp_path_factory.mktemp("orig") / "llava-med-tiny")


@pytest.fixture(scope="module")
def converted(original, tmp_path_factory):
    destination = tmp_path_factory.mktemp("conv") / "hf"
    convert_checkpoint(original, destination, log=lambda line: None)
    return destination


def hf_model(folder):
    from transformers import LlavaForConditionalGeneration

    model, info = LlavaForConditionalGeneration.from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return model.eval()


def converted_logits(folder, image):
    processor = load_processor(folder)  # plain AutoProcessor, PIL backend
    batch = processor(images=[image], text=[render_generation_prompt(QUESTION)], return_tensors="pt")
    with torch.no_grad():
        return hf_model(folder)(**batch).logits, batch


@pytest.mark.parametrize("size", [(32, 32), (45, 28)])
def test_converted_logits_equal_the_original_forward(original, converted, size):
    image = Image.effect_noise(size, 60).convert("RGB")
    logits, batch = converted_logits(converted, image)
    prompt = f"[INST] <image>\n{QUESTION} [/INST]"
    upstream_ids = upstream_prompt_ids(sentencepiece_model(), prompt, 1, image_id=IMAGE_TOKEN_INDEX)
    pixels = torch.tensor(upstream_pixels(image, 32), dtype=torch.float32)[None]
    assert torch.allclose(batch["pixel_values"], pixels, atol=1e-6)
    reference = upstream_logits(original, upstream_ids, pixels)
    assert logits.shape[:2] == reference.shape[:2]  # same sequence: ids line up one to one
    diff = (logits[..., :32000] - reference).abs().max().item()
    print(f"max |converted - original| logits = {diff:.3g}")
    assert diff < 1e-4


def test_vocabulary_grows_to_32064_with_mean_rows(converted):
    model = hf_model(converted)
    for weight in (model.get_input_embeddings().weight, model.lm_head.weight):
        assert weight.shape[0] == 32064
        mean = weight[:32000].mean(dim=0)
        assert torch.allclose(weight[32000:], mean.expand(64, -1), atol=1e-6)
    config = json.loads((converted / "config.json").read_text())
    assert (config["model_type"], config["image_token_index"], config["text_config"]["pad_token_id"]) == \
        ("llava", 32000, 32001)


def test_vision_weights_from_a_clip_folder_report_the_difference(original, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    clip = tmp_path / "clip"
    shutil.copytree(original / "clip-vision", clip)
    tensors = load_file(str(clip / "model.safetensors"))
    name = "vision_model.encoder.layers.0.mlp.fc1.weight"
    tensors[name] = tensors[name] + 0.25
    save_file(tensors, str(clip / "model.safetensors"))
    assert cli(["convert-checkpoint", str(original), str(tmp_path / "out"), "--vision_from", str(clip)]) == 0
    assert "largest |checkpoint - CLIP| = 0.25 (in vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight)" \
        in capsys.readouterr().out
    converted = load_file(str(tmp_path / "out" / "model-00002-of-00002.safetensors")) | \
        load_file(str(tmp_path / "out" / "model-00001-of-00002.safetensors"))
    assert torch.equal(converted["vision_tower." + name], tensors[name])


def test_bin_checkpoint_converts_to_the_same_weights(original, converted, tmp_path):
    from safetensors.torch import load_file

    source = tmp_path / "bin"
    shutil.copytree(original, source, ignore=shutil.ignore_patterns("*.safetensors*"))
    tensors = {}
    for shard in sorted(original.glob("model-*.safetensors")):
        tensors.update(load_file(str(shard)))
    torch.save(tensors, source / "pytorch_model.bin")
    convert_checkpoint(source, tmp_path / "out", log=lambda line: None)
    assert not list((tmp_path / "out").glob("*.bin"))
    ours = load_file(str(tmp_path / "out" / "model.safetensors"))
    reference = {}
    for shard in sorted(converted.glob("model-*.safetensors")):
        reference.update(load_file(str(shard)))
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)


def edited_copy(original, tmp_path, edit):
    source = tmp_path / "src"
    shutil.copytree(original, source)
    edit(source)
    return source


def test_not_a_llava_med_folder_is_refused(converted, tmp_path, capsys):
    assert cli(["convert-checkpoint", str(converted), str(tmp_path / "out")]) == 2
    assert "model_type is 'llava', not 'llava_mistral'" in capsys.readouterr().err


def test_missing_shard_is_named(original, tmp_path):
    source = edited_copy(original, tmp_path, lambda s: (s / "model-00002-of-00002.safetensors").unlink())
    with pytest.raises(UserError, match="1 of 2 shards listed in model.safetensors.index.json are missing "
                                        r"\(model-00002-of-00002.safetensors\)"):
        convert_checkpoint(source, tmp_path / "out")


def test_unexpected_keys_are_listed_before_anything_is_written(original, tmp_path):
    from safetensors.torch import save_file

    def add_stray(source):
        save_file({"model.segtok_head.weight": torch.zeros(2)}, str(source / "extra.safetensors"))
        index = json.loads((source / "model.safetensors.index.json").read_text())
        index["weight_map"]["model.segtok_head.weight"] = "extra.safetensors"
        (source / "model.safetensors.index.json").write_text(json.dumps(index))

    with pytest.raises(UserError, match="1 unexpected tensors.*model.segtok_head.weight"):
        convert_checkpoint(edited_copy(original, tmp_path, add_stray), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_config_shapes_are_reported(original, tmp_path):
    def shrink(source):
        config = json.loads((source / "config.json").read_text())
        config["intermediate_size"] = 64
        (source / "config.json").write_text(json.dumps(config))

    with pytest.raises(UserError, match="unexpected shapes.*does config.json match the weights"):
        convert_checkpoint(edited_copy(original, tmp_path, shrink), tmp_path / "out")


def test_existing_destination_needs_overwrite(original, converted):
    with pytest.raises(UserError, match="pass --overwrite"):
        convert_checkpoint(original, converted)
