"""Exactly which parameters move after two optimiser steps, for every way of choosing them."""

from __future__ import annotations

from pathlib import Path

import pytest

from slakevqa.config import make_config
from slakevqa.errors import UserError
from slakevqa.training.config import TrainConfig
from slakevqa.training.params import component_of, parse_target_spec, resolve_lora_targets
from slakevqa.training.train import train


def snapshot(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def moved(before: dict, model) -> set[str]:
    """Parameter names (peft prefixes and adapter names stripped) whose values changed."""
    after = dict(model.named_parameters())
    changed = set()
    for name, value in after.items():
        key = name.removeprefix("base_model.model.").replace(".base_layer", "")
        key = key.replace(".modules_to_save.default", "")
        reference = before.get(key)
        if reference is None:  # parameters peft added: LoRA and the trained projector copy
            changed.add(name) if "lora_B" in name else None  # lora_B starts at zero: moves iff trained
            continue
        if not bool((reference == value.detach()).all()):
            changed.add(key if "lora_" not in name else name)
    return changed


def run_two_steps(synth_root: Path, tmp_path: Path, tiny_model, **overrides) -> tuple[set[str], object]:
    model, processor = tiny_model
    before = snapshot(model)
    cfg = make_config(TrainConfig, model_id="tiny", slake_root=str(synth_root), output_dir=str(tmp_path / "run"), max_steps=2,
                      batch_size=4, lr=1e-2, warmup_ratio=0.0, final_eval=False, tb=False, lora_dropout=0.0,
                      **overrides)
    result = train(cfg, model, processor)
    trained = result.model if hasattr(result, "model") else None
    return moved(before, trained or model), result


def components(names: set[str]) -> set[str]:
    return {component_of(n) for n in names}


def test_default_lora_trains_language_model_adapters_and_the_projector(synth_root, tmp_path, tiny_model) -> None:
    names, result = run_two_steps(synth_root, tmp_path, tiny_model)
    assert components(names) == {"lora", "projector"}
    lora = sorted(n for n in names if "lora_B" in n)
    assert lora and all("language_model" in n for n in lora)
    assert {n.split(".")[-4] for n in lora} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert not any("vision_tower" in n for n in names)
    assert result.parameter_counts["vision_tower"]["trainable"] == 0
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


def test_lora_without_projector(synth_root, tmp_path, tiny_model) -> None:
    names, _ = run_two_steps(synth_root, tmp_path, tiny_model, tune_mm_projector=False)
    assert components(names) == {"lora"}


def test_lora_regex_targets_and_unfrozen_vision_tower(synth_root, tmp_path, tiny_model) -> None:
    names, _ = run_two_steps(synth_root, tmp_path, tiny_model, lora_target_modules=r"re:.*layers\.1\.mlp\.down_proj",
                             freeze_vision_tower=False)
    lora = {n for n in names if "lora_B" in n}
    assert len(lora) == 1 and "layers.1.mlp.down_proj" in next(iter(lora))
    assert "vision_tower" in components(names) and "projector" in components(names)


def test_full_fine_tuning_moves_the_language_model_only(synth_root, tmp_path, tiny_model) -> None:
    names, _ = run_two_steps(synth_root, tmp_path, tiny_model, use_lora=False, tune_mm_projector=False)
    assert components(names) == {"language_model"}
    assert "lm_head.weight" in names and "model.language_model.layers.0.self_attn.q_proj.weight" in names
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_unfreeze_last_llm_layers(synth_root, tmp_path, tiny_model) -> None:
    names, _ = run_two_steps(synth_root, tmp_path, tiny_model, tune_mm_projector=False, unfreeze_last_llm_layers=1)
    full = {n for n in names if "lora_" not in n}
    assert full and all(".layers.1." in n for n in full)
    assert not any(".layers.0." in n for n in full)


def test_target_spec_forms(tiny_model) -> None:
    model, _ = tiny_model
    assert parse_target_spec('["q_proj", "v_proj"]').names == ("q_proj", "v_proj")
    assert parse_target_spec("list:q_proj").names == ("q_proj",)
    assert len(resolve_lora_targets(model, "q_proj,v_proj")) == 4  # 2 layers, never the CLIP q/v_proj
    assert len(resolve_lora_targets(model, "q_proj", scope="all")) == 2 + 3  # + 3 vision layers
    assert len(resolve_lora_targets(model, "all-linear")) == 2 * 7


def test_zero_matches_lists_close_names(tiny_model) -> None:
    model, _ = tiny_model
    with pytest.raises(UserError, match=r"matches no linear layer.*q_proj"):
        resolve_lora_targets(model, "qproj")


def test_qlora_needs_a_gpu(synth_root, tmp_path) -> None:
    cfg = make_config(TrainConfig, model_id="tiny", slake_root=str(synth_root), output_dir=str(tmp_path), qlora=True, tb=False)
    with pytest.raises(UserError, match="--qlora needs a CUDA GPU"):
        train(cfg)
