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


def test_unknown_key_gets_a_suggestion_from_every_spelling() -> None:
    with pytest.raises(UserError, match="unknown key 'lora_rnk'; did you mean lora_rank or lora_r"):
        config_from_dict(TrainConfig, {"lora_rnk": 8}, "my.yaml")
    with pytest.raises(UserError, match="unknown key 'learnig_rate'; did you mean learning_rate"):
        config_from_dict(TrainConfig, {"learnig_rate": 1e-4}, "my.yaml")
    with pytest.raises(UserError, match="unknown key 'closed_candidate'; did you mean closed_candidates"):
        config_from_dict(EvalConfig, {"closed_candidate": "auto"}, "eval.yaml")


def test_eval_takes_base_as_another_spelling_of_model_base(tmp_path: Path) -> None:
    from slakevqa.cli import _verb_parser
    from slakevqa.config import config_from_args

    parser = _verb_parser("eval")[0]
    for argv in (["--model_base", "org/base"], ["--base", "org/base"]):
        assert config_from_args(EvalConfig, parser.parse_args(argv)).model_base == "org/base"
    for text in ("model_base: org/base\n", "base: org/base\n"):
        (tmp_path / "eval.yaml").write_text(text)
        assert config_from_args(EvalConfig, parser.parse_args(["--config", str(tmp_path / "eval.yaml")])
                                ).model_base == "org/base"
    with pytest.raises(UserError, match="'base' and 'model_base' both set model_base"):
        config_from_dict(EvalConfig, {"model_base": "a", "base": "b"}, "eval.yaml")


def test_adapter_without_base_names_a_flag_eval_accepts(tmp_path: Path) -> None:
    import re

    from slakevqa.cli import _verb_parser
    from slakevqa.models.loading import adapter_base

    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError) as error:
        adapter_base(tmp_path, None)
    flag = re.search(r"pass (--\w+)", str(error.value)).group(1)
    assert vars(_verb_parser("eval")[0].parse_args([flag, "org/base"]))["model_base"] == "org/base"
