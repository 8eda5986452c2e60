"""`EvalConfig`: the reference toolkit's evaluation flags plus ours, typed, with help.

    # slakevqa eval --config my_eval.yaml     (configs/eval_test.yaml is a full example)
    model_id_or_ckpt: runs/lora
    slake_root: data/Slake1.0
    split: test
    batch_size: 64
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from slakevqa.config import SEED_RULE, Translation, check_choices, check_rules
from slakevqa.data.settings import DataSettings
from slakevqa.inputs.builder import CANDIDATE_SOURCES
from slakevqa.inputs.settings import InputSettings
from slakevqa.kernels.attention import AttentionSettings
from slakevqa.models.loading import PRECISIONS

# --closed_answering: how a CLOSED question with candidates is answered.
CLOSED_ANSWERING: tuple[str, ...] = ("score", "generate")


def _help(text: str, **extra: object) -> dict:
    return {"help": text, **extra}


def _reference_candidate_mode(value: object) -> dict:
    """The reference toolkit's ``closed_candidate_mode`` did two jobs; ``generate`` is our ``closed_answering``."""
    return {"closed_answering": "generate"} if value == "generate" else {"closed_candidates": value}


def _lmms_eval_model_args(value: object) -> dict:
    """lmms-eval's ``--model_args pretrained=PATH[,key=value...]``: only ``pretrained`` has a meaning here."""
    from slakevqa.errors import UserError

    pairs = dict(part.split("=", 1) for part in str(value).split(",") if "=" in part)
    if "pretrained" not in pairs:
        raise UserError(f"--model_args {value!r}: expected pretrained=MODEL (lmms-eval's spelling of --model)")
    return {"model_id_or_ckpt": pairs["pretrained"]}


@dataclass
class EvalConfig:
    model_id_or_ckpt: str | None = field(default=None, metadata=_help(
        "HF folder or hub id, original LLaVA-Med checkpoint, training output dir or LoRA adapter",
        aliases=("model_name_or_path",)))
    model_base: str | None = field(default=None, metadata=_help(
        "base model for a LoRA adapter (default: the adapter's base_model_name_or_path)", aliases=("base",)))
    merge_adapter: bool = field(default=True, metadata=_help("merge a LoRA adapter into the weights (faster)"))
    data: DataSettings = field(default_factory=DataSettings)  # data_source, slake_root, language, ...
    split: str = field(default="test", metadata=_help("split to evaluate"))
    limit: int = field(default=0, metadata=_help("evaluate only the first N questions (0: all)"))
    output_dir: str = field(default="work_slake_llava_med_eval", metadata=_help("run folder",
                                                                                 aliases=("output_path",)))
    mode: str = field(default="eval", metadata=_help("eval, or diagnose (also writes diagnostics)",
                                                     choices=("eval", "diagnose")))
    # what the model is shown (the same keys as training's)
    inputs: InputSettings = field(default_factory=InputSettings)
    # which attention kernels run (the same keys as training's; fingerprint-neutral)
    attention: AttentionSettings = field(default_factory=AttentionSettings)
    # routing and CLOSED questions
    route: str = field(default="answer_type", metadata=_help(
        "who decides OPEN vs CLOSED: SLAKE's answer_type metadata or the question-only classifier",
        choices=("answer_type", "predicted")))
    closed_candidates: str = field(default="auto", metadata=_help(
        "where CLOSED candidates come from: auto (options parsed from the question, else yes/no, else the "
        "vocabulary), or one source forced", choices=CANDIDATE_SOURCES))
    closed_answering: str = field(default="score", metadata=_help(
        "how CLOSED questions are answered: score every candidate by likelihood, or generate freely and map "
        "the answer onto a candidate", choices=CLOSED_ANSWERING))
    closed_vocab_path: str | None = field(default=None, metadata=_help(
        "closed_vocab.json (default: the one beside the model, if any)"))
    allow_build_vocab: bool = field(default=False, metadata=_help("build the vocabulary from the train split"))
    # generation
    batch_size: int = field(default=16, metadata=_help("questions per forward pass",
                                                       aliases=("per_device_eval_batch_size",)))
    max_new_tokens_open_default: int = field(default=16, metadata=_help("OPEN answer budget"))
    max_new_tokens_open_abnormality: int = field(default=48, metadata=_help("budget for abnormality questions"))
    temperature: float = field(default=0.0, metadata=_help("sampling temperature (with --do_sample)"))
    do_sample: bool = field(default=False, metadata=_help("sample instead of greedy decoding"))
    seed: int = field(default=42, metadata=_help("seeds sampling"))
    share_prefix: bool = field(default=True, metadata=_help(
        "the fast backend where the model family allows it (LLaVA-Med, LLaVA-1.5): each image encoded once per batch "
        "and its prompt prefix shared by its questions (identical answers; --no-share_prefix: the plain backend, "
        "every question with its own image and transformers' generate, as for every other family)"))
    prefix_attention: bool = field(default=True, metadata=_help(
        "with share_prefix, run each batch's images and questions in one packed forward and answer on rows that "
        "read their image's prefix in place (the fast backend; the same answers; --no-prefix_attention: the plain "
        "backend)"))
    cuda_graphs: bool = field(default=True, metadata=_help(
        "replay each greedy decoding step as a CUDA graph (CUDA only, not with --load_in_4bit/8bit; "
        "--no-cuda_graphs: launch every kernel, slower)"))
    prefetch_workers: int = field(default=-1, metadata=_help(
        "threads that prepare images (loading, masks, the model's processing) ahead of the model: -1 auto (on a "
        "GPU one per core, at most 8; on a CPU none: its cores run the model), 0 none"))
    check_batch_invariance: int = field(default=0, metadata=_help(
        "answer the first N questions again one at a time and report every difference"))
    # runtime
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda, cuda:N"))
    precision: str = field(default="auto", metadata=_help(
        "weights' dtype: auto (bf16 on GPUs that support it, else fp32), bf16, fp16, fp32",
        choices=PRECISIONS, aliases=("dtype", "torch_dtype")))
    load_in_4bit: bool = field(default=False, metadata=_help(
        "NF4-quantise the language model (bitsandbytes, CUDA): a 7B model on a 16-24 GB card; answers may differ "
        "slightly from bf16, and an adapter stays unmerged"))
    load_in_8bit: bool = field(default=False, metadata=_help(
        "int8-quantise the language model (bitsandbytes, CUDA); an adapter stays unmerged"))
    report: bool = field(default=True, metadata=_help("write report.md and report.html at the end"))
    trust_remote_code: bool = field(default=False, metadata=_help("allow model code from the checkpoint"))
    overwrite: bool = field(default=False, metadata=_help(
        "discard the answers and results already in --output_dir (only those files) and answer afresh; "
        "without it a rerun resumes only a run with the same model, data and answer-changing settings",
        aliases=("overwrite_output_dir",)))

    # Other tools' keys whose values map onto ours (slakevqa.config.Translation).
    TRANSLATIONS: ClassVar[dict[str, Translation]] = {
        "closed_candidate_mode": Translation(str, "the reference toolkit's flag: auto, yesno, parse_options or "
                                             "vocab set --closed_candidates; generate sets --closed_answering "
                                             "generate", _reference_candidate_mode),
        "model_args": Translation(str, "lmms-eval's pretrained=MODEL: the same as --model_id_or_ckpt",
                                  _lmms_eval_model_args),
    }

    def __post_init__(self) -> None:
        from slakevqa.errors import UserError
        from slakevqa.files import check_output_dir

        check_choices(self)
        check_rules(self, RULES)
        check_output_dir(self.output_dir, "--output_dir")  # a file there fails now, not after loading the model
        if self.do_sample and self.temperature <= 0:
            raise UserError("--do_sample needs --temperature > 0")
        if self.load_in_4bit and self.load_in_8bit:
            raise UserError("--load_in_4bit and --load_in_8bit: choose one")


# Every float is also checked finite (slakevqa.config.check_rules).
RULES = (
    SEED_RULE,
    ("batch_size", lambda v: v >= 1, "at least 1"),
    ("limit", lambda v: v >= 0, ">= 0 (0: every question)"),
    ("max_new_tokens_open_default", lambda v: v >= 1, "at least 1"),
    ("max_new_tokens_open_abnormality", lambda v: v >= 1, "at least 1"),
    ("temperature", lambda v: v >= 0, ">= 0"),
    ("check_batch_invariance", lambda v: v >= 0, ">= 0"),
    ("prefetch_workers", lambda v: v >= -1, ">= -1 (-1: auto, 0: none)"),
)


# The run fingerprint (slakevqa.runs.fingerprint): the fields whose change changes an answer. A rerun
# into a used --output_dir resumes only when these, the model's weights, the split file's sha256,
# the prompt version and the closed vocabulary all match. tests/test_run_fingerprints.py checks that
# every field is in exactly one of the two lists, so a new field needs a decision here.
RESULT_FIELDS: tuple[str, ...] = (
    "model_base", "merge_adapter", "language", "missing_images", "split", "limit", "prompt_style", "route",
    "closed_candidates", "closed_answering", "max_prompt_len", "mask_mode", "mask_pad_ratio", "blank_images",
    "triples_mode", "max_new_tokens_open_default", "max_new_tokens_open_abnormality", "temperature", "do_sample",
    "seed", "precision", "load_in_4bit", "load_in_8bit")
# Fields that do not change an answer, and why.
NEUTRAL_FIELDS: dict[str, str] = {
    "model_id_or_ckpt": "recorded as the model: its weights fingerprint (a folder) or its name (a hub id)",
    "data_source": "the data is identified by the split file's sha256, wherever it lies",
    "slake_root": "the data is identified by the split file's sha256, wherever it lies",
    "hf_repo": "the data is identified by the split file's sha256, wherever it lies",
    "closed_vocab_path": "the vocabulary actually used is recorded by content (closed_vocab_sha256)",
    "allow_build_vocab": "the vocabulary actually used is recorded by content (closed_vocab_sha256)",
    "output_dir": "where the files go",
    "mode": "diagnose writes extra files; the answers are the same",
    "batch_size": "answers do not depend on the batch (check_batch_invariance measures it)",
    "share_prefix": "the same answers, computed once per image (engine tests assert equality)",
    "prefix_attention": "the same answers, the image prefix read in place (tests assert equality with generate)",
    "cuda_graphs": "the same decoding steps, replayed (a GPU test asserts equality)",
    "cudnn_attention": "an attention kernel choice, like the device",
    "varlen_attention": "an attention kernel choice over the same keys (the same math up to rounding)",
    "check_batch_invariance": "an extra check after answering; the answers are not changed",
    "prefetch_workers": "the same images prepared by other threads, earlier (a test asserts equal pixels and answers)",
    "device": "where it runs; dtype is recorded",
    "report": "report.md/html are written from the results",
    "trust_remote_code": "a permission: without it a model that needs remote code fails to load",
    "overwrite": "how to treat the folder, not what is answered",
}
