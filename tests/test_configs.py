"""Every shipped YAML preset validates against its config class, and opens with the command that runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from slakevqa.config import config_from_dict, load_yaml
from slakevqa.errors import UserError
from slakevqa.evaluation.config import EvalConfig
from slakevqa.training.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = {"lora_single_gpu.yaml": TrainConfig, "eval_test.yaml": EvalConfig}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_validates(name: str) -> None:
    path = CONFIGS / name
    assert path.read_text(encoding="utf-8").startswith("# slakevqa ")
    config = config_from_dict(PRESETS[name], load_yaml(path), str(path))  # our loader: no key twice, no nulls
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


def _from_yaml(cls: type, text: str | bytes, tmp_path: Path, *argv: str):
    from slakevqa.cli import _verb_parser
    from slakevqa.config import config_from_args

    path = tmp_path / "run.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    verb = "train" if cls is TrainConfig else "eval"
    argv = ["--config", str(path), "--output_dir", str(tmp_path / "out"), *argv]
    return config_from_args(cls, _verb_parser(verb)[0].parse_args(argv))


def test_numbers_in_hugging_face_spelling_are_numbers(tmp_path: Path) -> None:
    cfg = _from_yaml(TrainConfig, "learning_rate: 3e-4\nweight_decay: 1E-2\nsave_steps: 1e3\nnum_train_epochs: '2'\n",
                     tmp_path)
    assert (cfg.lr, cfg.weight_decay, cfg.save_steps, cfg.num_epochs) == (0.0003, 0.01, 1000, 2.0)
    assert type(cfg.lr) is float and type(cfg.save_steps) is int and type(cfg.num_epochs) is float
    assert _from_yaml(TrainConfig, "lr: '5e-5'\nlora_r: '16'\n", tmp_path).lora_r == 16
    assert _from_yaml(TrainConfig, "lr: 2\n", tmp_path).lr == 2.0  # an int where a float goes


def test_yaml_and_flag_booleans_in_every_spelling(tmp_path: Path) -> None:
    cfg = _from_yaml(TrainConfig, "use_lora: yes\nbf16: 'True'\ngradient_checkpointing: ON\npack_images: 'off'\n",
                     tmp_path)
    assert (cfg.use_lora, cfg.precision, cfg.gradient_checkpointing, cfg.pack_images) == (True, "bf16", True, False)
    assert not _from_yaml(TrainConfig, "use_lora: no\n", tmp_path).use_lora
    for argv, precision in ((["--bf16", "true"], "bf16"), (["--bf16"], "bf16"), (["--bf16", "False"], "fp32"),
                            (["--no-bf16"], "fp32"), (["--fp16", "yes"], "fp16")):
        assert _from_yaml(TrainConfig, "", tmp_path, *argv).precision == precision, argv
    assert not _from_yaml(TrainConfig, "", tmp_path, "--use_lora", "false", "--lr", "1e-4").use_lora
    assert _from_yaml(TrainConfig, "use_lora: false\n", tmp_path, "--use_lora").use_lora  # a bare flag is true
    assert not _from_yaml(EvalConfig, "", tmp_path, "--report", "off").report


def test_yaml_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    cfg = _from_yaml(EvalConfig, "\ufeffsplit: validation\nbatch_size: 4\n".encode("utf-8"), tmp_path)
    assert (cfg.split, cfg.batch_size) == ("validation", 4)


def test_null_is_a_value_only_of_optional_settings(tmp_path: Path) -> None:
    cfg = _from_yaml(EvalConfig, "model_base: ~\nclosed_vocab_path: null\nslake_root:\n", tmp_path)
    assert (cfg.model_base, cfg.closed_vocab_path, cfg.data.slake_root) == (None, None, None)
    assert _from_yaml(TrainConfig, "tb_logdir: null\n", tmp_path).tb_logdir is None
    with pytest.raises(UserError, match="key 'batch_size': expected int, found no value"):
        _from_yaml(EvalConfig, "batch_size:\n", tmp_path)


def test_python_callers_get_the_flags_refusals() -> None:
    from slakevqa.config import make_config
    from slakevqa.inputs.settings import InputSettings

    with pytest.raises(UserError, match="^--lr must be a finite number, got inf$"):
        make_config(TrainConfig, lr=float("inf"))
    with pytest.raises(UserError, match="^--num_epochs must be a finite number, got nan$"):
        TrainConfig(num_epochs=float("nan"))
    with pytest.raises(UserError, match=r"^--seed must be in \[0, 2\*\*32\)"):
        TrainConfig(seed=-1)
    with pytest.raises(UserError, match=r"^--seed must be in \[0, 2\*\*32\)"):
        make_config(EvalConfig, seed=2**32)
    with pytest.raises(UserError, match="^--mask_pad_ratio must be a finite number, got inf$"):
        InputSettings(mask_pad_ratio=float("inf"))
    with pytest.raises(UserError, match="key 'lr': expected float, found no value"):
        make_config(TrainConfig, lr=None)
    assert make_config(TrainConfig, lr="3e-4", use_lora="no").lr == 0.0003


def test_config_docstring_examples() -> None:
    import doctest

    import slakevqa.config
    import slakevqa.config_yaml

    for module in (slakevqa.config, slakevqa.config_yaml):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_every_number_has_a_range_rule() -> None:
    import typing

    from slakevqa.data.settings import DataSettings
    from slakevqa.evaluation import config as evaluation
    from slakevqa.inputs import settings as inputs
    from slakevqa.kernels.attention import AttentionSettings
    from slakevqa.training import config as training

    # DataSettings and AttentionSettings hold no number; one added there needs rules (and check_rules) too.
    for cls, rules in ((training.TrainConfig, training.RULES), (evaluation.EvalConfig, evaluation.RULES),
                       (inputs.InputSettings, inputs.RULES), (DataSettings, ()), (AttentionSettings, ())):
        numbers = {name for name, kind in typing.get_type_hints(cls).items() if kind in (int, float)}
        assert numbers <= {name for name, _, _ in rules}, (cls.__name__, numbers - {name for name, _, _ in rules})
