"""Hugging Face, LLaMA-Factory and lmms-eval names are other spellings of our settings; each setting is defined once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from slakevqa.config import config_from_args, config_from_dict, config_to_dict, settings_of
from slakevqa.data.settings import DataSettings
from slakevqa.errors import UserError
from slakevqa.evaluation.config import EvalConfig
from slakevqa.inputs.settings import InputSettings
from slakevqa.kernels.attention import AttentionSettings
from slakevqa.training.config import TrainConfig

OURS = {"model_id": "tiny", "lr": 5e-3, "num_epochs": 2.0, "batch_size": 4, "grad_accum": 2,
        "lr_scheduler": "linear", "precision": "fp32", "lora_r": 4, "lora_target_modules": "all-linear",
        "tune_mm_projector": False, "use_lora": True, "overwrite": True, "final_eval": False, "max_steps": 3}
HF_NAMES = {"model_name_or_path": "tiny", "learning_rate": 5e-3, "num_train_epochs": 2, "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 2, "lr_scheduler_type": "linear", "bf16": False, "lora_rank": 4,
            "lora_target": "all", "freeze_multi_modal_projector": True, "finetuning_type": "lora",
            "overwrite_output_dir": True, "run_final_eval": False, "max_steps": 3}


def parse(verb: str, argv: list[str]):
    from slakevqa.cli import _verb_parser

    cls = TrainConfig if verb == "train" else EvalConfig
    return config_from_args(cls, _verb_parser(verb)[0].parse_args(argv))


def test_hf_and_llama_factory_names_give_our_config(tmp_path: Path) -> None:
    common = {"slake_root": str(tmp_path), "output_dir": str(tmp_path / "run")}
    assert config_from_dict(TrainConfig, {**HF_NAMES, **common}) == config_from_dict(TrainConfig, {**OURS, **common})
    (tmp_path / "hf.yaml").write_text(yaml.safe_dump({**HF_NAMES, **common}))
    assert parse("train", ["--config", str(tmp_path / "hf.yaml")]) == config_from_dict(TrainConfig, {**OURS, **common})
    flags = parse("train", ["--learning_rate", "0.001", "--per_device_train_batch_size", "8", "--bf16",
                            "--lora_target", "q_proj,v_proj", "--no-run_final_eval"])
    assert (flags.lr, flags.batch_size, flags.precision, flags.lora_target_modules, flags.final_eval) == (
        0.001, 8, "bf16", "q_proj,v_proj", False)


def test_a_config_with_hf_names_trains_the_same_run(synth_root: Path, tmp_path: Path) -> None:
    from slakevqa.models.tiny import build_tiny_llava
    from slakevqa.training.train import train

    runs = {}
    for name, keys in (("ours", OURS), ("hf", HF_NAMES)):
        cfg = config_from_dict(TrainConfig, {**keys, "slake_root": str(synth_root), "output_dir": str(tmp_path / name),
                                             "tb": False, "seed": 5})
        runs[name] = train(cfg, *build_tiny_llava("bpe", seed=0))
    assert runs["ours"].steps == runs["hf"].steps == 3
    assert runs["ours"].losses == runs["hf"].losses


def test_translated_and_aliased_keys_refuse_a_second_spelling() -> None:
    with pytest.raises(UserError, match="'bf16' and 'precision' both set precision"):
        config_from_dict(TrainConfig, {"precision": "fp32", "bf16": True}, "my.yaml")
    with pytest.raises(UserError, match="'learning_rate' and 'lr' both set lr"):
        config_from_dict(TrainConfig, {"lr": 1e-4, "learning_rate": 2e-4}, "my.yaml")
    with pytest.raises(UserError, match="finetuning_type 'freeze'"):
        config_from_dict(TrainConfig, {"finetuning_type": "freeze"}, "my.yaml")
    with pytest.raises(UserError, match="quantization_bit 8"):
        config_from_dict(TrainConfig, {"quantization_bit": 8}, "my.yaml")
    assert config_from_dict(TrainConfig, {"quantization_bit": 4}).qlora


def test_one_name_for_precision_everywhere() -> None:
    from slakevqa.cli import _verb_parser

    for argv in (["--precision", "fp16"], ["--dtype", "fp16"], ["--torch_dtype", "fp16"]):
        assert parse("eval", argv).precision == "fp16"
        assert parse("train", argv).precision == "fp16"
    for verb, extra in (("merge", ["a", "b"]), ("check", ["--model", "m"])):
        for flag in ("--precision", "--dtype"):
            assert _verb_parser(verb)[0].parse_args([*extra, flag, "bf16"]).precision == "bf16"


def test_closed_candidate_mode_did_two_jobs_and_is_now_two_settings() -> None:
    generate = parse("eval", ["--closed_candidate_mode", "generate"])
    assert (generate.closed_candidates, generate.closed_answering) == ("auto", "generate")
    yesno = config_from_dict(EvalConfig, {"closed_candidate_mode": "yesno"})
    assert (yesno.closed_candidates, yesno.closed_answering) == ("yesno", "score")
    both = config_from_dict(EvalConfig, {"closed_candidates": "vocab", "closed_answering": "generate"})
    assert (both.closed_candidates, both.closed_answering) == ("vocab", "generate")
    with pytest.raises(UserError, match="'closed_candidate_mode' and 'closed_answering' both set closed_answering"):
        config_from_dict(EvalConfig, {"closed_answering": "score", "closed_candidate_mode": "generate"})
    assert parse("eval", ["--model_args", "pretrained=runs/lora,dtype=auto"]).model_id_or_ckpt == "runs/lora"


@pytest.mark.parametrize("key,value", [("mode", "evaluate"), ("data_source", "s3"), ("mask_mode", "cropped"),
                                       ("triples_mode", "all"), ("closed_candidates", "generate"),
                                       ("language", "fr"), ("precision", "int8"), ("route", "gold")])
def test_choices_are_checked_for_yaml_and_python_alike(key: str, value: str, tmp_path: Path) -> None:
    (tmp_path / "eval.yaml").write_text(f"{key}: {value}\n")
    with pytest.raises(UserError, match=f"--{key} must be one of .*, got '{value}'"):
        parse("eval", ["--config", str(tmp_path / "eval.yaml")])
    with pytest.raises(SystemExit):  # argparse's own choices on the command line
        parse("eval", [f"--{key}", value])


def test_every_shared_setting_is_defined_once() -> None:
    for group in (InputSettings, DataSettings, AttentionSettings):
        names = {f.name for f in dataclasses.fields(group)}
        for cls in (TrainConfig, EvalConfig):
            top = {f.name for f in dataclasses.fields(cls)}
            assert not names & top, f"{cls.__name__} repeats {names & top}"
            assert names <= {s.name for s in settings_of(cls)}
    assert {"prompt_style", "max_prompt_len", "mask_mode", "mask_pad_ratio", "blank_images",
            "triples_mode"} == {f.name for f in dataclasses.fields(InputSettings)}
    assert {"cudnn_attention", "varlen_attention"} == {f.name for f in dataclasses.fields(AttentionSettings)}


def test_groups_are_flat_keys_and_flat_records() -> None:
    cfg = parse("train", ["--mask_mode", "crop", "--slake_root", "/data/Slake1.0", "--prompt_style", "plain"])
    assert cfg.inputs == InputSettings(mask_mode="crop", prompt_style="plain")
    assert cfg.data.slake_root == "/data/Slake1.0"
    record = config_to_dict(cfg)
    assert record["mask_mode"] == "crop" and "inputs" not in record and record["slake_root"] == "/data/Slake1.0"
    assert config_from_dict(TrainConfig, record) == cfg  # run_config.json reads back as the same config


def test_final_evaluation_asks_as_training_taught(monkeypatch, tmp_path: Path) -> None:
    import slakevqa.evaluation.evaluate as evaluate_module
    from slakevqa.training.train import final_evaluation

    seen = {}
    monkeypatch.setattr(evaluate_module, "evaluate", lambda cfg, *a, **k: seen.setdefault("cfg", cfg))
    cfg = config_from_dict(TrainConfig, {"mask_mode": "masked", "cudnn_attention": True, "blank_images": True,
                                         "language": "all", "missing_images": "skip", "triples_mode": "off",
                                         "varlen_attention": False})
    final_evaluation(cfg, tmp_path, None, None, tmp_path / "run")
    assert seen["cfg"].inputs == cfg.inputs
    assert seen["cfg"].attention == cfg.attention == AttentionSettings(cudnn_attention=True, varlen_attention=False)
    assert (seen["cfg"].data.language, seen["cfg"].data.missing_images) == ("all", "skip")


def test_eval_loads_quantised_only_on_a_gpu(synth_root: Path, tmp_path: Path) -> None:
    from slakevqa.evaluation.evaluate import evaluate
    from slakevqa.models.tiny import build_tiny_llava, save_llava

    model = save_llava(*build_tiny_llava("bpe", seed=0), tmp_path / "tiny")
    with pytest.raises(UserError, match="choose one"):
        parse("eval", ["--load_in_4bit", "--load_in_8bit"])
    for bits in (4, 8):
        cfg = parse("eval", ["--model", str(model), "--slake_root", str(synth_root), f"--load_in_{bits}bit",
                             "--output_dir", str(tmp_path / f"e{bits}"), "--device", "cpu", "--limit", "2"])
        with pytest.raises(UserError, match=f"{bits}-bit loading .*needs a CUDA GPU"):
            evaluate(cfg)


def test_hf_constant_schedule_has_no_warmup_as_in_hf() -> None:
    hf = config_from_dict(TrainConfig, {"lr_scheduler_type": "constant"})
    assert (hf.lr_scheduler, hf.warmup_steps) == ("constant", 0)
    assert config_from_dict(TrainConfig, {"lr_scheduler_type": "cosine"}).warmup_steps == -1  # the ratio decides
    with pytest.raises(UserError, match="both set warmup_steps"):
        config_from_dict(TrainConfig, {"lr_scheduler_type": "constant", "warmup_steps": 10})
