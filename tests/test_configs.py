"""Every shipped YAML preset validates against its config class, and opens with the command that runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slakevqa.config import config_from_dict
from slakevqa.errors import UserError
from slakevqa.evaluation.config import EvalConfig
from slakevqa.training.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = {"lora_single_gpu.yaml": TrainConfig, "eval_test.yaml": EvalConfig}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_validates(name: str) -> None:
    path = CONFIGS / name
    assert path.read_text(encoding="utf-8").startswith("# slakevqa ")
    config = config_from_dict(PRESETS[name], yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
    assert isinstance(config, PRESETS[name])


def test_every_preset_is_covered() -> None:
    assert {p.name for p in CONFIGS.glob("*.yaml")} == set(PRESETS)
    for path in (CONFIGS / "accelerate").glob("*.yaml"):
        assert path.read_text(encoding="utf-8").startswith("# accelerate launch")


def test_unknown_key_gets_a_suggestion() -> None:
    with pytest.raises(UserError, match="unknown key 'lora_rank'; did you mean lora_r"):
        config_from_dict(TrainConfig, {"lora_rank": 8}, "my.yaml")
