"""The official-checkpoint workflow, replayed on a CPU with a tiny model: what users run on a GPU with
LLaVA-Med v1.5 (convert -> check -> train in the GPU's bf16 layout with fp32 adapters -> merge -> plain
transformers).

Two things CI cannot see with tiny fp32 models made by slakevqa itself, both of which
once broke the main job on a GPU:

* the official checkpoint's own tokenizer files: its tokenizer_config.json carries
  Mistral-Instruct's text-only chat template (``'[INST] ' + message['content'] + ...``),
  which fails on image+text messages. The tiny original-format checkpoint here carries
  it too, and goes through convert -> check -> train -> merge -> plain transformers;
* the GPU's dtype layout: bf16 base weights, fp32 LoRA adapters, bf16 autocast, which
  ``--precision bf16`` gives on a CPU as well. Training runs with TensorBoard probes
  inside the run and the final evaluation, the two places inference meets those dtypes.

One training run (4 steps, probes at steps 2 and 4) is shared by the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("mistral_common")

from conftest import slake_row, write_mini_slake  # noqa: E402
from slakevqa.cli import main  # noqa: E402

# Mistral-7B-Instruct-v0.2's chat template in its tokenizer_config.json of December 2023 (public format),
# which LLaVA-Med v1.5's tokenizer_config.json carries: string content only.
MISTRAL_INSTRUCT = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


def mini_splits() -> dict[str, list[dict]]:
    """Two images per split; yes/no and OPEN questions (probe and final evaluation see both routes)."""
    def rows(first_qid: int, first_img: int) -> list[dict]:
        return [slake_row(first_qid + i, first_img + i // 3, question=q, answer=a, answer_type=t)
                for i, (q, a, t) in enumerate([("Does the picture contain liver?", "Yes", "CLOSED"),
                                               ("What organ is shown?", "Liver", "OPEN"),
                                               ("Is this a CT image?", "No", "CLOSED")] * 2)]

    return {"train": rows(0, 0), "validation": rows(10, 2), "test": rows(20, 4)}


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Original-format tiny checkpoint (LLaVA-Med's tokenizer files), converted, trained in bf16, merged."""
    from slakevqa.models.tiny import build_tiny_llava
    from slakevqa.models.tiny_original import save_llava_med_original

    root = tmp_path_factory.mktemp("gpu_path")
    original = save_llava_med_original(*build_tiny_llava("mistral", seed=0), root / "orig")
    config = json.loads((original / "tokenizer_config.json").read_text())  # as the official file has it
    (original / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": MISTRAL_INSTRUCT}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLAKEVQA_CACHE", str(root / "cache"))
        paths = {"original": original,
                 "data": write_mini_slake(root / "Slake1.0", mini_splits()), "converted": root / "hf",
                 "run": root / "run", "merged": root / "merged"}
        paths["convert_rc"] = main(["convert-checkpoint", str(paths["original"]), str(paths["converted"])])
        paths["train_rc"] = main(["train", "--model_id", str(paths["original"]), "--slake_root", str(paths["data"]),
                                  "--output_dir", str(paths["run"]), "--precision", "bf16", "--max_steps", "4",
                                  "--batch_size", "3", "--lr", "1e-3", "--lora_r", "4", "--lora_alpha", "8",
                                  "--tb_log_text_every", "2", "--eval_steps", "2", "--tb_probe_size", "6",
                                  "--tb_log_images_every", "100", "--logging_steps", "2"])
        paths["merge_rc"] = main(["merge", str(paths["run"]), str(paths["merged"])])
    return paths


def test_original_checkpoints_are_written_with_llava_med_tokenizer_files(tmp_path) -> None:
    from slakevqa.models.tiny import build_tiny_llava
    from slakevqa.models.tiny_original import save_llava_med_original

    folder = save_llava_med_original(*build_tiny_llava("mistral", seed=0), tmp_path / "orig")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["chat_template"] == MISTRAL_INSTRUCT
    assert config["pad_token"] == "<unk>" and "<image>" not in json.dumps(config)


def test_check_passes_on_the_converted_official_layout(walk, capsys) -> None:
    assert walk["convert_rc"] == 0
    assert main(["check", "--model", str(walk["converted"]), "--max_new_tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert "apply_chat_template gives slakevqa's prompt ids token for token" in printed
    assert "check passed" in printed


def test_bf16_weights_with_fp32_adapters_train_probe_and_evaluate(walk) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert walk["train_rc"] == 0
    run_config = json.loads((walk["run"] / "run_config.json").read_text())
    assert run_config["precision"] == {"weights": "bfloat16", "adapters": "float32", "autocast": "bf16"}
    events = EventAccumulator(str(walk["run"] / "tb")).Reload()
    assert [event.step for event in events.Scalars("probe/exact/OPEN")][:2] == [2, 4]  # answered inside the run
    assert [event.step for event in events.Scalars("eval/loss")][:2] == [2, 4]
    results = json.loads((walk["run"] / "eval_test" / "results.json").read_text())
    assert (results["counts"]["total"], results["counts"]["OPEN"]) == (6, 2)  # the final evaluation
    report = (walk["run"] / "eval_test" / "report.md").read_text()  # the train command writes the final report
    assert "| exact |" in report and (walk["run"] / "eval_test" / "report.html").is_file()


def hf_inputs(folder: Path, question: str) -> tuple[object, dict]:
    """``(processor, inputs)`` exactly as a Hugging Face user prompts a folder: AutoProcessor + its chat template."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(folder))
    message = {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (40, 24), (200, 40, 40))},
                                           {"type": "text", "text": question}]}
    return processor, processor.apply_chat_template([message], add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt")


@pytest.mark.parametrize("folder", ["converted", "run", "merged"])
def test_every_written_folder_renders_llava_med_for_image_and_string_messages(walk, folder) -> None:
    from slakevqa.inputs.encoding import encode_prompt
    from slakevqa.models.families.llava_clip import image_token_count
    from slakevqa.models.families.llava_med import CHAT as LLAVA_MED_CHAT

    question = "Which organ is abnormal, the heart or the liver? "
    processor, inputs = hf_inputs(walk[folder], question)
    ours, _ = encode_prompt(processor.tokenizer, question.strip(), image_token_count(processor), chat=LLAVA_MED_CHAT)
    assert inputs["input_ids"][0].tolist() == ours  # BOS once, ▁ around the image, [/INST] last
    text_only = processor.tokenizer.apply_chat_template([{"role": "user", "content": "Is there a mass? "}],
                                                        tokenize=False)
    assert text_only == "<s>[INST] Is there a mass? [/INST]"


def test_plain_transformers_generates_from_the_merged_folder(walk) -> None:
    import torch
    from transformers import AutoModelForImageTextToText

    assert walk["merge_rc"] == 0
    model = AutoModelForImageTextToText.from_pretrained(str(walk["merged"])).eval()
    _, inputs = hf_inputs(walk["merged"], "Is this a CT image?")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_convert_checkpoint_takes_the_hub_id_as_the_readme_writes_it(walk, tmp_path, monkeypatch, capsys) -> None:
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--microsoft--llava-med-v1.5-mistral-7b"
    shutil.copytree(walk["original"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read at call time, unlike the env
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["convert-checkpoint", "microsoft/llava-med-v1.5-mistral-7b", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "chat_template.jinja").is_file()
