"""`EvalConfig`: the reference toolkit's evaluation flags plus ours, typed, with help.

    # slakevqa eval --config configs/eval_test.yaml
    model_id_or_ckpt: runs/lora
    slake_root: data/Slake1.0
    split: test
    batch_size: 32
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from slakevqa.data.slake import MISSING_IMAGE_POLICIES, MISSING_IMAGES_HELP


def _help(text: str, **extra: object) -> dict:
    return {"help": text, **extra}


CANDIDATE_MODES = ("auto", "yesno", "parse_options", "vocab", "generate")


@dataclass
class EvalConfig:
    model_id_or_ckpt: str | None = field(default=None, metadata=_help(
        "HF folder or hub id, original LLaVA-Med checkpoint, training output dir or LoRA adapter"))
    model_base: str | None = field(default=None, metadata=_help(
        "base model for a LoRA adapter (default: the adapter's base_model_name_or_path)", aliases=("base",)))
    merge_adapter: bool = field(default=True, metadata=_help("merge a LoRA adapter into the weights (faster)"))
    data_source: str = field(default="local", metadata=_help("local folder or the HF hub", choices=("local", "hf")))
    slake_root: str | None = field(default=None, metadata=_help("SLAKE folder (default: $SLAKE_ROOT)"))
    language: str = field(default="en", metadata=_help("question language", choices=("en", "zh", "all")))
    missing_images: str = field(default="error", metadata=_help(MISSING_IMAGES_HELP, choices=MISSING_IMAGE_POLICIES))
    split: str = field(default="test", metadata=_help("split to evaluate"))
    limit: int = field(default=0, metadata=_help("evaluate only the first N questions (0: all)"))
    output_dir: str = field(default="work_slake_llava_med_eval", metadata=_help("run folder"))
    mode: str = field(default="eval", metadata=_help("eval, or diagnose (also writes diagnostics)",
                                                     choices=("eval", "diagnose")))
    # prompts and routing
    prompt_style: str = field(default="short", metadata=_help("named prompt style (slakevqa.prompts)"))
    route: str = field(default="answer_type", metadata=_help(
        "who decides OPEN vs CLOSED: SLAKE's answer_type metadata or the question-only classifier",
        choices=("answer_type", "predicted")))
    closed_candidate_mode: str = field(default="auto", metadata=_help(
        "auto (options, else yes/no, else vocabulary), force one candidate source, or generate freely",
        choices=CANDIDATE_MODES))
    closed_vocab_path: str | None = field(default=None, metadata=_help(
        "closed_vocab.json (default: the one beside the model, if any)"))
    allow_build_vocab: bool = field(default=False, metadata=_help("build the vocabulary from the train split"))
    max_prompt_len: int = field(default=512, metadata=_help("prompt tokens kept, image tokens excluded"))
    mask_mode: str = field(default="none", metadata=_help("segmentation conditioning",
                                                          choices=("none", "crop", "masked")))
    mask_pad_ratio: float = field(default=0.10, metadata=_help("crop margin as a share of the region size"))
    blank_images: bool = field(default=False, metadata=_help(
        "replace every image by a blank one: the question-only baseline"))
    triples_mode: str = field(default="real_only", metadata=_help(
        "KG facts in prompts", choices=("off", "real_only", "kvqa_real_only")))
    # generation
    batch_size: int = field(default=16, metadata=_help("questions per forward pass"))
    max_new_tokens_open_default: int = field(default=16, metadata=_help("OPEN answer budget"))
    max_new_tokens_open_abnormality: int = field(default=48, metadata=_help("budget for abnormality questions"))
    temperature: float = field(default=0.0, metadata=_help("sampling temperature (with --do_sample)"))
    do_sample: bool = field(default=False, metadata=_help("sample instead of greedy decoding"))
    seed: int = field(default=42, metadata=_help("seeds sampling"))
    share_prefix: bool = field(default=True, metadata=_help(
        "encode each image once per batch and share its prompt prefix across its questions (identical answers; "
        "--no-share_prefix: every question encodes its own image, for comparison)"))
    cudnn_attention: bool = field(default=False, metadata=_help(
        "let PyTorch use cuDNN attention (it builds a graph per new shape: slow when shapes change every call)"))
    check_batch_invariance: int = field(default=0, metadata=_help(
        "answer the first N questions again one at a time and report every difference"))
    # runtime
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda, cuda:N"))
    dtype: str = field(default="auto", metadata=_help("auto (bf16 on GPUs that support it, else fp32), bf16, "
                                                      "fp16, fp32"))
    report: bool = field(default=True, metadata=_help("write report.md and report.html at the end"))
    trust_remote_code: bool = field(default=False, metadata=_help("allow model code from the checkpoint"))
    overwrite: bool = field(default=False, metadata=_help(
        "discard the answers and results already in --output_dir (only those files) and answer afresh; "
        "without it a rerun resumes only a run with the same model, data and answer-changing settings"))

    def __post_init__(self) -> None:
        from slakevqa.errors import UserError
        from slakevqa.files import check_output_dir

        for f in fields(self):
            value = getattr(self, f.name)
            if "choices" in f.metadata and value not in f.metadata["choices"]:  # YAML bypasses argparse's choices
                raise UserError(f"--{f.name} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")
        check_output_dir(self.output_dir, "--output_dir")  # a file there fails now, not after loading the model
        if self.batch_size < 1:
            raise UserError(f"--batch_size must be at least 1, got {self.batch_size}")
        if self.do_sample and self.temperature <= 0:
            raise UserError("--do_sample needs --temperature > 0")


# The run fingerprint (slakevqa.run_fingerprint): the fields whose change changes an answer. A rerun
# into a used --output_dir resumes only when these, the model's weights, the split file's sha256,
# the prompt version and the closed vocabulary all match. tests/test_run_fingerprints.py checks that
# every field is in exactly one of the two lists, so a new field needs a decision here.
RESULT_FIELDS: tuple[str, ...] = (
    "model_base", "merge_adapter", "language", "missing_images", "split", "limit", "prompt_style", "route",
    "closed_candidate_mode", "max_prompt_len", "mask_mode", "mask_pad_ratio", "blank_images", "triples_mode",
    "max_new_tokens_open_default", "max_new_tokens_open_abnormality", "temperature", "do_sample", "seed",
    "dtype")
# Fields that do not change an answer, and why.
NEUTRAL_FIELDS: dict[str, str] = {
    "model_id_or_ckpt": "recorded as the model: its weights fingerprint (a folder) or its name (a hub id)",
    "data_source": "the data is identified by the split file's sha256, wherever it lies",
    "slake_root": "the data is identified by the split file's sha256, wherever it lies",
    "closed_vocab_path": "the vocabulary actually used is recorded by content (closed_vocab_sha256)",
    "allow_build_vocab": "the vocabulary actually used is recorded by content (closed_vocab_sha256)",
    "output_dir": "where the files go",
    "mode": "diagnose writes extra files; the answers are the same",
    "batch_size": "answers do not depend on the batch (check_batch_invariance measures it)",
    "share_prefix": "the same answers, computed once per image (engine tests assert equality)",
    "cudnn_attention": "an attention kernel choice, like the device",
    "check_batch_invariance": "an extra check after answering; the answers are not changed",
    "device": "where it runs; dtype is recorded",
    "report": "report.md/html are written from the results",
    "trust_remote_code": "a permission: without it a model that needs remote code fails to load",
    "overwrite": "how to treat the folder, not what is answered",
}
