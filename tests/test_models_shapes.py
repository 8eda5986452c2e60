"""One definition of every model size: LlavaShape, its two instances, and everything built from them."""

from __future__ import annotations

import doctest
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from slakevqa.models import shapes
from slakevqa.models.shapes import LLAVA_MED_7B, TINY, llava_config, token_ids
from slakevqa.models.tokenizer import mistral_tokenizer_file

ROOT = Path(__file__).resolve().parents[1]
# microsoft/llava-med-v1.5-mistral-7b config.json (reference §2.1), leftover keys included: the
# real values, written out here so that the shape is checked against them, not against itself.
LLAVA_MED_CONFIG = {
    "_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2", "architectures": ["LlavaMistralForCausalLM"],
    "model_type": "llava_mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu", "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0, "sliding_window": None, "max_position_embeddings": 32768, "vocab_size": 32000,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "attention_dropout": 0.0,
    "initializer_range": 0.02, "torch_dtype": "bfloat16", "transformers_version": "4.36.2", "use_cache": True,
    "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": 1024,
    "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
    "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
    "mm_projector_lr": None, "use_mm_proj": True, "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False,
    "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right", "feature_outs": "encoder+decoder",
    "img_size": 640, "vision_backbone": "convnextlarge", "segtok_posembed": "sincos",
    "proj_vis_to_txt_tokens": False, "prompt_segtok_w_instruct": False, "tune_vision_tokenizer": "none",
    "vision_tokenizer_lr": None,
}
CLIP_VIT_L_14_336 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                     "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768,
                     "hidden_act": "quick_gelu"}
CONFIG_CONSTRUCTORS = re.compile(r"\b(MistralConfig|CLIPVisionConfig|LlavaConfig|LlamaConfig)\(")


def benchmark(name: str) -> ModuleType:
    """A script of benchmarks/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_shapes_doctests_pass():
    assert doctest.testmod(shapes).failed == 0


def test_7b_shape_gives_the_real_llava_med_config():
    config = llava_config(LLAVA_MED_7B)
    text, vision = config.text_config, config.vision_config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "hidden_act", "rms_norm_eps", "sliding_window", "max_position_embeddings", "initializer_range",
                "bos_token_id", "eos_token_id"):
        assert getattr(text, key) == LLAVA_MED_CONFIG[key], key
    assert text.rope_parameters["rope_theta"] == LLAVA_MED_CONFIG["rope_theta"]
    assert (text.vocab_size, config.image_token_index, text.pad_token_id) == (32064, 32000, 32001)
    assert {key: getattr(vision, key) for key in CLIP_VIT_L_14_336} == CLIP_VIT_L_14_336
    assert (config.projector_hidden_act, config.vision_feature_layer, config.vision_feature_select_strategy,
            config.image_seq_length, config.multimodal_projector_bias) == ("gelu", -2, "default", 576, True)


def test_the_converter_knows_the_7b_vision_tower_as_the_shape_says():
    from slakevqa.models.original import KNOWN_CLIP_TOWERS

    tower = KNOWN_CLIP_TOWERS[LLAVA_MED_CONFIG["mm_vision_tower"]]
    assert tower == {key: value for key, value in CLIP_VIT_L_14_336.items() if key != "hidden_act"}


@pytest.mark.skipif(mistral_tokenizer_file() is None, reason="needs mistral-common")
def test_shape_ids_without_a_tokenizer_are_the_real_mistral_ones():
    from slakevqa.models.tiny import build_tokenizer

    assert token_ids(LLAVA_MED_7B, build_tokenizer("mistral")) == token_ids(LLAVA_MED_7B)


def test_7b_random_model_has_7_57b_parameters_on_meta():
    from slakevqa.models.random_llava import random_llava

    model = random_llava(llava_config(LLAVA_MED_7B), device="meta", dtype="bf16")
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == 7.57


def test_tiny_shape_is_what_the_tests_were_made_with():
    assert (TINY.text_hidden, TINY.text_intermediate, TINY.text_layers, TINY.text_heads, TINY.text_kv_heads) == \
        (128, 256, 2, 4, 2)
    assert (TINY.max_position_embeddings, TINY.rms_norm_eps, TINY.rope_theta, TINY.initializer_range) == \
        (2048, 1e-6, 1e6, 0.1)
    assert (TINY.vision_hidden, TINY.vision_intermediate, TINY.vision_layers, TINY.vision_heads,
            TINY.vision_projection_dim, TINY.image_size, TINY.patch_size) == (64, 128, 3, 2, 64, 32, 8)


def test_tiny_builder_takes_its_config_from_the_tiny_shape():
    from slakevqa.models.tiny import build_tiny_llava

    model, processor = build_tiny_llava("bpe")
    expected = llava_config(TINY, processor.tokenizer)
    for part in ("text_config", "vision_config"):
        built, wanted = getattr(model.config, part).to_dict(), getattr(expected, part).to_dict()
        assert {k: v for k, v in built.items() if k != "dtype"} == {k: v for k, v in wanted.items() if k != "dtype"}
    assert model.config.image_token_index == expected.image_token_index


def test_no_benchmark_or_model_builder_writes_a_config_of_its_own():
    sources = sorted((ROOT / "benchmarks").glob("*.py")) + [
        ROOT / "src/slakevqa/models" / name for name in ("tiny.py", "tiny_original.py", "random_llava.py")]
    for path in sources:
        assert not CONFIG_CONSTRUCTORS.search(path.read_text(encoding="utf-8")), path.name


def test_convert_7b_writes_the_upstream_config_from_the_shape():
    module = benchmark("convert_7b")
    assert module.original_config(llava_config(LLAVA_MED_7B), LLAVA_MED_7B, tiny=False) == LLAVA_MED_CONFIG
    tiny = module.original_config(llava_config(TINY), TINY, tiny=True)
    assert (tiny["hidden_size"], tiny["max_position_embeddings"], tiny["mm_vision_tower"]) == (128, 2048, "clip-vision")


def test_train_scaling_builds_the_shape_and_trains_what_training_trains():
    module = benchmark("train_scaling")
    model = module.build_model(TINY, torch.float32, torch.device("cpu"), lora_r=4)
    text = model.config.text_config
    assert (text.hidden_size, text.max_position_embeddings, text.rms_norm_eps) == (128, 2048, 1e-6)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in name or "multi_modal_projector" in name for name in trainable)
    assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable if "lora_" in name} == \
        {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # all-linear, language model
    assert any("multi_modal_projector" in name and "lora_" not in name for name in trainable)  # trained fully
    assert not any("vision_tower" in name for name in trainable)
    batch = module.make_batch(TINY, (8, 24), 3, torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0))
    assert ((batch["input_ids"] == model.config.image_token_index).sum(dim=1) == TINY.image_tokens).all()
