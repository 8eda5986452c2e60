"""Training precision: the table in training/precision.py, and adapters that run outside the training step."""

from __future__ import annotations

import pytest
import torch

from slakevqa.config import make_config
from slakevqa.training.config import TrainConfig
from slakevqa.training.params import configure_trainable
from slakevqa.training.precision import (
    adapter_layers,
    adapters_under_autocast,
    autocast_precision,
    precision_layout,
    weight_dtype,
)


@pytest.mark.parametrize("precision,device,lora,expected", [
    ("bf16", "cpu", True, ("bf16", "bf16")), ("bf16", "cuda", False, ("bf16", "no")),
    ("fp16", "cuda", True, ("fp32", "fp16")), ("fp32", "cuda", True, ("fp32", "no")),
    ("auto", "cpu", True, ("fp32", "no"))])
def test_precision_table(precision: str, device: str, lora: bool, expected: tuple[str, str]) -> None:
    cfg = make_config(TrainConfig, precision=precision, use_lora=lora)
    assert (weight_dtype(precision, device), autocast_precision(cfg, device)) == expected


def test_bf16_lora_layout_and_adapters_that_work_outside_the_step(tiny_model) -> None:
    model, _ = tiny_model
    model = configure_trainable(model.to(torch.bfloat16), True, 4, 8, 0.0, "q_proj,v_proj", "language_model",
                                True, True, 0)
    assert precision_layout(model, "bf16") == {"weights": "bfloat16", "adapters": "float32", "autocast": "bf16"}
    layers = adapter_layers(model)
    ids = torch.tensor([[1, 5, 6, 7]])
    with adapters_under_autocast(layers), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not any(layer.cast_input_dtype_enabled for layer in layers)
        model(input_ids=ids)
    assert all(layer.cast_input_dtype_enabled for layer in layers)
    assert model(input_ids=ids).logits.dtype == torch.bfloat16  # no autocast: peft casts for its fp32 adapters


def test_several_base_dtypes_are_all_named() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).to(torch.bfloat16))
    assert precision_layout(model, "no") == {"weights": "bfloat16+float32", "adapters": "none", "autocast": "no"}
