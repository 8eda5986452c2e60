"""Every command a user types works for each new model family (LLaVA-1.5, Qwen2.5-VL, Gemma 3), end to end on a CPU.

One module-scoped :func:`workflow` per family does the expensive part once, as a user would::

    slakevqa init-tiny --family      BASE      (the family module's build_tiny, written as save_llava writes it)
    slakevqa check --skip_generate   BASE
    slakevqa train --use_lora        ADAPTER   (--dry_run: 2 steps of 4 questions, and the final evaluation on 8)
    slakevqa eval  ADAPTER           A         (24 test questions, batches of 8)
    slakevqa merge ADAPTER MERGED
    slakevqa check                   MERGED    (with a generation)
    slakevqa eval  MERGED            B
    slakevqa convert-sft --family    (a test of its own: the family's LLaMA-Factory template)

and the tests assert on what it left: which weights moved, provenance, answers of A equal B, and B equal to
what plain transformers (the family's own processor and ``AutoModelForImageTextToText``) makes of MERGED.
Tokenizers: LLaVA-1.5 uses the byte-level BPE (no Vicuna tokenizer is available here); Qwen2.5-VL and Gemma 3
the real ones from ``$SLAKEVQA_TOKENIZERS`` (default ``../shared/tokenizers``, xz-compressed; skipped without).
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import family_fixtures
from slakevqa.cli import main
from slakevqa.data.slake import find_layout, load_split
from slakevqa.evaluation.engine import Engine, GenerationSettings
from slakevqa.evaluation.store import recover_predictions
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.vocab import load_closed_vocab
from slakevqa.models.families import ModelFamily, family_named
from slakevqa.models.families.family import stop_ids
from slakevqa.records import Prediction, VQASample

FAMILY_NAMES = ("llava_1_5", "qwen2_5_vl", "gemma3")
TOKENIZER_FOLDERS = {"qwen2_5_vl": "qwen2_5", "gemma3": "gemma3"}  # llava_1_5: the byte-level BPE
QUESTIONS = 24  # the synthetic test split's first 3 images: 12 OPEN, 12 CLOSED (yes/no and options)
BATCH = 8  # eval's batch: left padding of prompts of different lengths
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")  # train's default --lora_target_modules


@dataclass(frozen=True)
class Workflow:
    """What one family's run through the commands left behind."""

    family: ModelFamily
    root: Path  # the synthetic SLAKE
    base: Path
    adapter: Path
    merged: Path
    eval_a: Path  # eval of ADAPTER
    eval_b: Path  # eval of MERGED
    printed: dict[str, str]  # stdout of init-tiny, check (BASE, --skip_generate), check merged (a generation)


def cli(*argv: str | Path) -> str:
    """``slakevqa ARGV`` in this process; its stdout. A non-zero exit fails here, with what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main([str(arg) for arg in argv])
    assert code == 0, f"slakevqa {' '.join(map(str, argv))} exited {code}:\n{printed.getvalue()[-3000:]}"
    return printed.getvalue()


def tokenizer_folder(name: str, folder: Path) -> list[str]:
    """``init-tiny``'s tokenizer flags: none for LLaVA-1.5 (the byte-level BPE); for Qwen2.5-VL and Gemma 3 the
    real tokenizer files, decompressed into ``folder``."""
    if name == "llava_1_5":
        return []
    return ["--tokenizer_dir", str(family_fixtures.tokenizer_folder(TOKENIZER_FOLDERS[name], folder))]


def eval_command(model: Path, root: Path, out: Path) -> list[str | Path]:
    return ["eval", "--model_id_or_ckpt", model, "--slake_root", root, "--split", "test", "--limit", str(QUESTIONS),
            "--batch_size", str(BATCH), "--output_dir", out, "--no-report"]


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def workflow(request: pytest.FixtureRequest, synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Workflow:
    """Each command once, in a user's order (module docstring); every step must exit 0."""
    family = family_named(request.param)
    work = tmp_path_factory.mktemp(family.name)
    base = work / "base"  # the family module's build_tiny(tokenizer, seed=0), written as save_llava writes it
    printed = {"init-tiny": cli("init-tiny", base, "--family", family.name, "--seed", "0",
                                *tokenizer_folder(family.name, work / "tokenizer"))}
    printed["check"] = cli("check", "--model", base, "--skip_generate")
    adapter, merged = work / "runs" / "lora", work / "runs" / "lora-merged"
    # --dry_run: 2 optimiser steps on 8 questions, and the final evaluation on 8 (train has no other limit on it:
    # the whole synthetic test split would cost a minute). --lr 1e-3: every trained weight visibly moves.
    cli("train", "--model_id", base, "--slake_root", synth_root, "--output_dir", adapter, "--use_lora",
        "--tune_mm_projector", "--freeze_vision_tower", "--dry_run", "--batch_size", "4", "--lr", "1e-3",
        "--report_to", "none", "--tb_probe_size", "0")
    cli(*eval_command(adapter, synth_root, work / "eval_adapter"))
    cli("merge", adapter, merged)
    printed["check merged"] = cli("check", "--model", merged, "--max_new_tokens", "8")
    cli(*eval_command(merged, synth_root, work / "eval_merged"))
    return Workflow(family, synth_root, base, adapter, merged, work / "eval_adapter", work / "eval_merged", printed)


@pytest.fixture(scope="module")
def in_transformers(workflow: Workflow):
    """MERGED as plain transformers loads it: ``(AutoModelForImageTextToText, the family's own processor)``."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(workflow.merged)).eval()
    return model, transformers_processor(workflow.family.name, workflow.merged)


def transformers_processor(name: str, folder: Path):
    """``AutoProcessor`` with the PIL image processor named, as slakevqa loads every folder (the folder names the
    backend-free class; with torchvision, AutoProcessor would take the torchvision one, whose resize differs). Qwen2.5-VL: ``AutoProcessor`` cannot build its processor without torchvision even for
    images (its video processor), so slakevqa's ``load_processor`` composes transformers' own
    ``Qwen2_5_VLProcessor`` from the folder's tokenizer and image processor instead: its ``apply_chat_template``
    and image-token expansion are still transformers' code."""
    import transformers

    if name == "qwen2_5_vl":
        from slakevqa.models.processor import load_processor

        return load_processor(folder)
    image_processor = {"llava_1_5": transformers.LlavaImageProcessorPil,
                       "gemma3": transformers.Gemma3ImageProcessorPil}[name]
    return transformers.AutoProcessor.from_pretrained(str(folder), image_processor=image_processor.from_pretrained(str(folder)))


def builder_of(run: Workflow) -> InputBuilder:
    """The inputs eval builds for MERGED: default settings, the training vocabulary merge copied beside it."""
    return InputBuilder.create(find_layout(run.root), load_closed_vocab(run.merged / "closed_vocab.json"))


def questions(run: Workflow) -> list[VQASample]:
    return load_split(run.root, "test")[:QUESTIONS]  # what eval --limit answers


def answers(folder: Path) -> dict[int, Prediction]:
    return {p.qid: p for p in recover_predictions(folder / "predictions.jsonl")}


def provenance(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text(encoding="utf-8"))["provenance"]


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: parameter.detach() for name, parameter in model.named_parameters()}


def assert_same_answers(got: list[Prediction], want: list[Prediction], scores: float = 1e-5) -> None:
    assert [p.qid for p in got] == [p.qid for p in want]
    for a, b in zip(got, want, strict=True):
        assert (a.prediction, a.raw_output) == (b.prediction, b.raw_output), a.qid
        assert a.scores == pytest.approx(b.scores, abs=scores), a.qid


# ---------------------------------------------------------------- the commands


def test_init_tiny_and_check_name_the_family(workflow: Workflow) -> None:
    assert f"wrote a tiny {workflow.family.title}" in workflow.printed["init-tiny"]
    for command in ("check", "check merged"):
        printed = workflow.printed[command]
        assert "check passed" in printed and workflow.family.title in printed, command
        # the folder's own chat template renders our prompt ids: what a transformers or vLLM user gets
        assert "apply_chat_template gives slakevqa's prompt ids token for token" in printed, command
    assert "generation on" not in workflow.printed["check"] and "generation on" in workflow.printed["check merged"]


def test_training_moves_lora_in_the_language_model_and_the_projector_only(
        workflow: Workflow, in_transformers) -> None:
    from transformers import AutoModelForImageTextToText

    parts = workflow.family.parts
    assert (workflow.adapter / "adapter_config.json").is_file()
    saved = load_file(str(workflow.adapter / "adapter_model.safetensors"))
    lora = {name: tensor for name, tensor in saved.items() if "lora_" in name}
    assert lora and all(parts.in_language_model(name.removeprefix("base_model.model.")) for name in lora)
    assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in lora} == set(ATTENTION)
    assert all(tensor.abs().sum() > 0 for name, tensor in lora.items() if "lora_B" in name)  # B starts at zero
    assert {parts.component_of(name) for name in saved if "lora_" not in name} == {"projector"}  # modules_to_save

    # MERGED against BASE: the attention projections of the language model and the projector moved, nothing else
    base = parameters(AutoModelForImageTextToText.from_pretrained(str(workflow.base)))
    merged = parameters(in_transformers[0])
    assert base.keys() == merged.keys()
    moved = {name for name in base if not torch.equal(base[name], merged[name])}
    # every projector weight, Gemma 3's norm included (no gradient reaches it while the matrix after it is zero,
    # as transformers initialises it: gemma3.build_tiny draws that matrix at random)
    expected = {name for name in base if parts.component_of(name) == "projector"
                or (parts.in_language_model(name) and name.endswith(tuple(f"{p}.weight" for p in ATTENTION)))}
    assert moved == expected
    assert any(parts.component_of(name) == "vision_tower" for name in base)  # the frozen tower is there, unmoved


def test_eval_and_training_record_the_family(workflow: Workflow) -> None:
    backend = "fast" if workflow.family.fast.shared_prefix_eval else "plain"
    for folder in (workflow.eval_a, workflow.eval_b, workflow.adapter / "eval_test"):  # the last: train's own
        recorded = provenance(folder)
        assert recorded["model_family"] == workflow.family.name, folder
        assert recorded["eval_backend"] == backend, folder
    assert len(answers(workflow.eval_a)) == QUESTIONS and len(answers(workflow.adapter / "eval_test")) == 8
    run_config = json.loads((workflow.adapter / "run_config.json").read_text(encoding="utf-8"))
    assert run_config["model_family"] == workflow.family.name
    assert run_config["speed_levers"]["packed"] is True  # every family trains on rows packed by image


def test_merged_model_answers_as_the_adapter(workflow: Workflow) -> None:
    adapter, merged = answers(workflow.eval_a), answers(workflow.eval_b)
    assert adapter.keys() == merged.keys() == {s.qid for s in questions(workflow)}
    assert {p.route for p in merged.values()} == {"open", "yesno", "options"}
    assert_same_answers(list(merged.values()), list(adapter.values()))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_convert_sft_names_the_family_template(name: str, synth_root: Path, tmp_path: Path) -> None:
    cli("convert-sft", "--slake_root", synth_root, "--output_dir", tmp_path, "--splits", "train,test", "--family", name)
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert info.keys() == {"slake_train", "slake_test"}
    assert {entry["slakevqa_template"] for entry in info.values()} == {family_named(name).llama_factory_template}


# ---------------------------------------------------------------- plain transformers on MERGED


def first_open(run: Workflow) -> VQASample:
    return next(s for s in questions(run) if s.answer_type == "OPEN")


def test_transformers_processor_gives_our_prompt(workflow: Workflow, in_transformers) -> None:
    model, processor = in_transformers
    builder, sample = builder_of(workflow), first_open(workflow)
    inputs = transformers_inputs(processor, builder, sample)
    ours = Engine(model, processor, builder).prepare(sample)
    assert inputs["input_ids"][0].tolist() == ours.prompt_ids
    for name, tensor in ours.image.tensors.items():  # the same pixels (and Qwen's image grid)
        assert torch.equal(inputs[name].reshape(tensor.shape), tensor), name


def transformers_inputs(processor, builder: InputBuilder, sample: VQASample) -> dict:
    """The family's processor on the image and user text slakevqa feeds, as a transformers user writes it."""
    message = {"role": "user", "content": [{"type": "image", "image": builder.image(sample)},
                                           {"type": "text", "text": builder.view(sample).user_text}]}
    return processor.apply_chat_template([message], add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt")


def test_transformers_generate_gives_our_answer(workflow: Workflow, in_transformers) -> None:
    model, processor = in_transformers
    builder, sample = builder_of(workflow), first_open(workflow)
    inputs = transformers_inputs(processor, builder, sample)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=GenerationSettings().budget(sample), do_sample=False,
                             eos_token_id=stop_ids(workflow.family, processor.tokenizer))
    text = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    ours = answers(workflow.eval_b)[sample.qid].raw_output
    assert ours.strip() and text.strip() == ours.strip()


# ---------------------------------------------------------------- backends


def test_backends_give_the_same_answers(workflow: Workflow, in_transformers) -> None:
    """The fast backend equals the plain one for every family (LLaVA-1.5's packed prefill, Qwen2.5-VL's and
    Gemma 3's prefix through the model's forward), and a question answered alone gets eval's answer from its
    batch of 8 (left padding and rows change nothing)."""
    model, processor = in_transformers
    builder, samples = builder_of(workflow), questions(workflow)
    engine, plain = Engine(model, processor, builder), Engine(model, processor, builder, share_prefix=False)
    assert workflow.family.fast.shared_prefix_eval and engine.fast is not None and plain.fast is None
    assert engine.on_rows([engine.prepare(s) for s in samples])
    assert_same_answers(engine.answer(samples), plain.answer(samples))
    batched = answers(workflow.eval_b)
    first = {batched[s.qid].route: s for s in reversed(samples)}  # the first question of each route
    assert first.keys() == {"open", "yesno", "options"}
    alone = sorted(first.values(), key=lambda s: s.qid)
    assert_same_answers([engine.answer([s])[0] for s in alone], [batched[s.qid] for s in alone])
