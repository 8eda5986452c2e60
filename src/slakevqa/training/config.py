"""`TrainConfig`: every training knob, its default and its help, in one typed place.

The names are the reference toolkit's flags (so its commands keep working); YAML
files under ``configs/`` use the same keys. Example::

    # slakevqa train --config configs/lora_single_gpu.yaml
    model_id: microsoft/llava-med-v1.5-mistral-7b
    slake_root: data/Slake1.0
    use_lora: true
    lora_r: 64
    lora_target_modules: all-linear
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from slakevqa.config import SEED_RULE, Translation, check_choices, check_rules
from slakevqa.data.settings import DataSettings
from slakevqa.inputs.settings import InputSettings
from slakevqa.kernels.attention import AttentionSettings
from slakevqa.models.loading import PRECISIONS


def _help(text: str, **extra: object) -> dict:
    return {"help": text, **extra}


@dataclass
class TrainConfig:
    # model and data
    model_id: str = field(default="microsoft/llava-med-v1.5-mistral-7b",
                          metadata=_help("HF LLaVA checkpoint, original LLaVA-Med checkpoint, or hub id",
                                        aliases=("model_name_or_path",)))
    data: DataSettings = field(default_factory=DataSettings)  # data_source, slake_root, language, ...
    split: str = field(default="train", metadata=_help("split to train on"))
    eval_split: str = field(default="validation", metadata=_help("split for the evaluation loss"))
    output_dir: str = field(default="work_slake_llava_med_train", metadata=_help("where everything is written"))
    seed: int = field(default=42, metadata=_help("seeds data order, dropout and initialisation"))
    # schedule
    num_epochs: float = field(default=1.0, metadata=_help("epochs (fractions allowed)",
                                                          aliases=("num_train_epochs",)))
    max_steps: int = field(default=-1, metadata=_help("stop after this many optimiser steps (-1: epochs decide)"))
    batch_size: int = field(default=2, metadata=_help("questions per forward pass (per process)",
                                                      aliases=("per_device_train_batch_size",)))
    grad_accum: int = field(default=1, metadata=_help("forward passes per optimiser step",
                                                      aliases=("gradient_accumulation_steps",)))
    lr: float = field(default=2e-5, metadata=_help("peak learning rate", aliases=("learning_rate",)))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    warmup_ratio: float = field(default=0.03, metadata=_help(
        "share of steps with linear warmup from 0: ceil(ratio x steps), as HF Trainer"))
    warmup_steps: int = field(default=-1, metadata=_help("warmup steps; overrides warmup_ratio when >= 0"))
    adam_beta2: float = field(default=0.999, metadata=_help("AdamW beta2 (0.98 helps small models)"))
    lr_scheduler: str = field(default="cosine", metadata=_help(
        "schedule after linear warmup from 0, Hugging Face's (transformers.get_scheduler; our constant is HF's "
        "constant_with_warmup); see docs/training.md",
        choices=("cosine", "linear", "constant", "constant_with_warmup")))
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping (0: off)"))
    precision: str = field(default="auto", metadata=_help(
        "auto: bf16 on GPUs that support it, else fp32", choices=PRECISIONS, aliases=("dtype", "torch_dtype")))
    gradient_checkpointing: bool = field(default=False, metadata=_help("trade compute for activation memory"))
    gradient_checkpointing_keep: int = field(default=0, metadata=_help(
        "with --gradient_checkpointing, the last N decoder layers keep their activations instead of recomputing "
        "them: faster, ~1.9 GiB more per layer at 7B and batch 64 (benchmarks/RESULTS.md)"))
    pack_images: bool = field(default=True, metadata=_help(
        "batches follow the image and each image's questions share one row, its prefix computed once "
        "(sft objective; --no-pack_images: one row per question in random order)"))
    cache_image_features: bool = field(default=True, metadata=_help(
        "with a frozen vision tower, keep each image's vision features and skip the tower after the first time"))
    prefetch_workers: int = field(default=-1, metadata=_help(
        "threads that prepare the next step's images (loading, masks, the model's processing) while a step runs: "
        "-1 auto (on a GPU one per core, at most 8; on a CPU none: its cores run the model), 0 none"))
    kernels: str = field(default="auto", metadata=_help(
        "the language model's RMSNorm, gated MLP and RoPE: liger (Liger-Kernel's Triton kernels, CUDA, the gpu "
        "extra, every family; LoRA steps 1.14x as fast for LLaVA-Med 7B, the same loss curve), plain (PyTorch's), or auto (liger where it runs, "
        "else plain; plain under FSDP, where Liger is untested); see training/speed_levers.py",
        choices=("plain", "liger", "auto")))
    compile_layers: bool = field(default=False, metadata=_help(
        "experimental: torch.compile each decoder layer for the training steps (one graph for all layers); "
        "1.24x as fast at 7B with checkpointing, but its loss curve left the eager one after the first step "
        "there (benchmarks/RESULTS.md), so it is off; with it the packed rows' attention stays sdpa over the dense mask "
        "(--varlen_attention does not apply)"))
    # what the model is shown (the same keys as evaluation's)
    inputs: InputSettings = field(default_factory=InputSettings)
    # which attention kernels run (the same keys as evaluation's; fingerprint-neutral)
    attention: AttentionSettings = field(default_factory=AttentionSettings)
    max_answer_len: int = field(default=64, metadata=_help("answer tokens kept, </s> included"))
    closed_train_objective: str = field(default="sft", metadata=_help(
        "CLOSED questions: sft (answer tokens), mc (candidate cross-entropy), hybrid (both)",
        choices=("sft", "mc", "hybrid")))
    closed_mc_weight: float = field(default=0.1, metadata=_help("weight of the mc loss in hybrid"))
    # what trains
    freeze_vision_tower: bool = field(default=True, metadata=_help("keep CLIP frozen"))
    tune_mm_projector: bool = field(default=True, metadata=_help("train the projector (with or without LoRA)"))
    use_lora: bool = field(default=True, metadata=_help("LoRA adapters; off = full fine-tuning of the LLM"))
    qlora: bool = field(default=False, metadata=_help("4-bit base weights (bitsandbytes, CUDA only)"))
    lora_r: int = field(default=8, metadata=_help("LoRA rank", aliases=("lora_rank",)))
    lora_alpha: int = field(default=16, metadata=_help("LoRA scale numerator"))
    lora_dropout: float = field(default=0.05, metadata=_help("dropout on the LoRA path"))
    lora_target_modules: str = field(default="q_proj,k_proj,v_proj,o_proj", metadata=_help(
        "names, list:a,b, JSON list, re:REGEX or all-linear; matched inside the language model"))
    # (LLaMA-Factory's lora_target is a translation: its "all" is our all-linear)
    lora_scope: str = field(default="language_model", metadata=_help(
        "where LoRA targets may match", choices=("language_model", "all")))
    unfreeze_last_llm_layers: int = field(default=0, metadata=_help("also train the last N decoder layers fully"))
    # checkpoints and logs
    logging_steps: int = field(default=25, metadata=_help("log scalars every N optimiser steps"))
    save_steps: int = field(default=200, metadata=_help("checkpoint every N optimiser steps (and at the end)"))
    eval_steps: int = field(default=200, metadata=_help("evaluation loss every N steps (0: off)"))
    save_total_limit: int = field(default=2, metadata=_help("checkpoints kept"))
    resume_from_checkpoint: str = field(default="auto", metadata=_help(
        "auto (last checkpoint in output_dir), none, or a checkpoint folder"))
    dry_run: bool = field(default=False, metadata=_help("2 optimiser steps on 8 records, then stop"))
    report_to: str = field(default="tensorboard", metadata=_help(
        "where the run is logged, a comma list: tensorboard (every diagnostic: probes, grids, histograms), "
        "and/or any tracker accelerate knows (wandb, mlflow, trackio, comet_ml, aim, clearml, dvclive, swanlab: "
        "scalars and the config, when installed), or none"))
    tb_logdir: str | None = field(default=None, metadata=_help("TensorBoard's folder (default: OUTPUT_DIR/tb)",
                                                               aliases=("logging_dir",)))
    tb_log_images_every: int = field(default=500, metadata=_help("probe images every N steps"))
    tb_log_text_every: int = field(default=200, metadata=_help("probe answers every N steps"))
    tb_probe_size: int = field(default=32, metadata=_help("fixed probe questions"))
    tb_eval_generate_size: int = field(default=128, metadata=_help("probe questions answered at most"))
    tb_hist_every: int = field(default=200, metadata=_help("histograms every N steps"))
    final_eval: bool = field(default=True, metadata=_help("evaluate on final_eval_split after training"))
    final_eval_split: str = field(default="test", metadata=_help("split of the final evaluation"))
    trust_remote_code: bool = field(default=False, metadata=_help("allow model code from the checkpoint"))
    overwrite: bool = field(default=False, metadata=_help(
        "discard the checkpoints and TensorBoard logs already in --output_dir and train afresh (the saved model "
        "there is replaced only once the new one is whole); without it a rerun resumes only the same run",
        aliases=("overwrite_output_dir",)))

    # Other tools' keys whose values map onto ours (slakevqa.config.Translation).
    TRANSLATIONS: ClassVar[dict[str, Translation]] = {
        "bf16": Translation(bool, "HF Trainer's bf16: the same as --precision bf16 (--no-bf16: fp32)",
                            lambda on: {"precision": "bf16" if on else "fp32"}),
        "fp16": Translation(bool, "HF Trainer's fp16: the same as --precision fp16 (--no-fp16: fp32)",
                            lambda on: {"precision": "fp16" if on else "fp32"}),
        "finetuning_type": Translation(str, "LLaMA-Factory's lora or full: the same as --use_lora / --no-use_lora",
                                       lambda kind: _finetuning_type(kind)),
        "lora_target": Translation(str, "LLaMA-Factory's lora_target (its 'all' is our all-linear)",
                                   lambda value: {"lora_target_modules": "all-linear" if value == "all" else value}),
        "quantization_bit": Translation(int, "LLaMA-Factory's quantization_bit: 4 is --qlora",
                                        lambda bits: _quantization_bit(bits)),
        "freeze_multi_modal_projector": Translation(
            bool, "LLaMA-Factory's freeze_multi_modal_projector: the opposite of --tune_mm_projector",
            lambda frozen: {"tune_mm_projector": not frozen}),
        "tb": Translation(bool, "TensorBoard diagnostics: --tb is --report_to tensorboard, --no-tb --report_to none",
                          lambda on: {"report_to": "tensorboard" if on else "none"}),
        "lr_scheduler_type": Translation(str, "HF Trainer's name of --lr_scheduler; its constant has no warmup, "
                                         "so it also sets --warmup_steps 0", lambda kind: _hf_scheduler(kind)),
        "run_final_eval": Translation(bool, "the reference toolkit's spelling of --final_eval",
                                      lambda on: {"final_eval": on}),
    }

    def __post_init__(self) -> None:
        """Reject bad values and combinations here, before any data or model is loaded."""
        from slakevqa.errors import UserError
        from slakevqa.files import check_output_dir

        check_choices(self)
        check_rules(self, RULES)
        unknown = [name for name in self.trackers() if name not in TRACKERS]
        if unknown or not self.report_to.strip():
            raise UserError(f"--report_to {self.report_to!r}: use none, or a comma list of {', '.join(TRACKERS)}")
        if self.gradient_checkpointing_keep and not self.gradient_checkpointing:
            raise UserError(f"--gradient_checkpointing_keep {self.gradient_checkpointing_keep} says which layers are "
                            "not recomputed under --gradient_checkpointing: turn that on, or drop the keep")
        if self.qlora and not self.use_lora:
            raise UserError("--qlora trains LoRA adapters on 4-bit weights: it needs --use_lora")
        if self.num_epochs <= 0 and self.max_steps <= 0:
            raise UserError(f"nothing to train: --num_epochs {self.num_epochs} and --max_steps {self.max_steps}; "
                            "give a positive --num_epochs or --max_steps")
        if self.resume_from_checkpoint not in ("auto", "none", "", "no", "false"):
            from slakevqa.training.checkpoint import resolve_resume

            resolve_resume(self.resume_from_checkpoint, self.output_dir)  # a wrong folder fails now, not after loading
        check_output_dir(self.output_dir, "--output_dir")  # a file there fails now, not after loading the model

    def trackers(self) -> list[str]:
        """``report_to`` as a list (``none``: empty)."""
        return [] if self.report_to.strip() == "none" else [n.strip() for n in self.report_to.split(",") if n.strip()]

    @property
    def tensorboard(self) -> bool:
        return "tensorboard" in self.trackers()


# (field, test, what the flag must be): ranges that no combination makes valid.
# Every float is also checked finite (slakevqa.config.check_rules): --lr inf would train an adapter of NaNs.
RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    SEED_RULE,
    ("num_epochs", lambda v: v >= 0, ">= 0 (0 only with a positive --max_steps)"),
    ("max_steps", lambda v: v >= -1, ">= -1 (-1 or 0: --num_epochs decides)"),
    ("batch_size", lambda v: v >= 1, "at least 1"),
    ("grad_accum", lambda v: v >= 1, "at least 1"),
    ("lr", lambda v: v > 0, "positive"),
    ("weight_decay", lambda v: v >= 0, ">= 0"),
    ("warmup_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("warmup_steps", lambda v: v >= -1, ">= 0, or -1 to use --warmup_ratio"),
    ("adam_beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("max_grad_norm", lambda v: v >= 0, ">= 0 (0 turns clipping off)"),
    ("max_answer_len", lambda v: v >= 1, "at least 1 (the answer's </s>)"),
    ("closed_mc_weight", lambda v: v >= 0, ">= 0"),
    ("lora_r", lambda v: v >= 1, "at least 1"),
    ("lora_alpha", lambda v: v > 0, "positive"),
    ("lora_dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("unfreeze_last_llm_layers", lambda v: v >= 0, ">= 0"),
    ("gradient_checkpointing_keep", lambda v: v >= 0, ">= 0 (0 recomputes every layer)"),
    ("prefetch_workers", lambda v: v >= -1, ">= -1 (-1: auto, 0: none)"),
    ("logging_steps", lambda v: v >= 1, "at least 1"),
    ("save_steps", lambda v: v >= 1, "at least 1"),
    ("eval_steps", lambda v: v >= 0, ">= 0 (0 turns the evaluation loss off)"),
    ("save_total_limit", lambda v: v >= 0, ">= 0 (0 keeps every checkpoint)"),
    ("tb_log_images_every", lambda v: v >= 1, "at least 1"),
    ("tb_log_text_every", lambda v: v >= 1, "at least 1"),
    ("tb_hist_every", lambda v: v >= 1, "at least 1"),
    ("tb_probe_size", lambda v: v >= 0, ">= 0 (0 turns the probe off)"),
    ("tb_eval_generate_size", lambda v: v >= 0, ">= 0"),
)




# --report_to: our TensorBoard diagnostics, and the trackers accelerate.tracking knows (test_config_names checks).
TRACKERS: tuple[str, ...] = ("tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "aim", "clearml", "dvclive",
                             "swanlab")


def _hf_scheduler(kind: object) -> dict:
    """HF's ``constant`` is a flat rate from step 0; ours (like HF's ``constant_with_warmup``) warms up first."""
    return {"lr_scheduler": "constant", "warmup_steps": 0} if kind == "constant" else {"lr_scheduler": kind}


def _finetuning_type(kind: object) -> dict:
    from slakevqa.errors import UserError

    if kind not in ("lora", "full"):
        raise UserError(f"finetuning_type {kind!r}: slakevqa trains lora or full (LLaMA-Factory's freeze and oft "
                        "have no equivalent here; --unfreeze_last_llm_layers trains the last decoder layers fully)")
    return {"use_lora": kind == "lora"}


def _quantization_bit(bits: object) -> dict:
    from slakevqa.errors import UserError

    if bits != 4:
        raise UserError(f"quantization_bit {bits!r}: training quantises to 4 bits only (QLoRA); use 4")
    return {"qlora": True}


# The run fingerprint (slakevqa.runs.fingerprint): the fields whose change changes the trained weights.
# A rerun into a used --output_dir continues from its checkpoint only when these, the base model's
# weights, the split file's sha256, the prompt version and the closed vocabulary all match.
# tests/test_run_fingerprints.py checks that every field is in exactly one of the two lists.
RESULT_FIELDS: tuple[str, ...] = (
    "language", "missing_images", "split", "seed", "lr", "weight_decay",
    "warmup_ratio", "warmup_steps", "adam_beta2", "lr_scheduler", "max_grad_norm", "precision", "pack_images",
    "prompt_style", "max_prompt_len", "max_answer_len", "mask_mode", "mask_pad_ratio", "blank_images",
    "triples_mode", "closed_train_objective", "closed_mc_weight", "freeze_vision_tower", "tune_mm_projector",
    "use_lora", "qlora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_scope",
    "unfreeze_last_llm_layers", "dry_run")
# Fields that do not change the trained weights, and why. The questions per optimiser step (batch_size x
# grad_accum x processes) do: train records that product, global_batch_size, in the fingerprint itself.
NEUTRAL_FIELDS: dict[str, str] = {
    "batch_size": "how the step's global batch (recorded) is cut into micro-batches: the same step up to rounding "
                  "(training/elastic.py)",
    "grad_accum": "as batch_size",
    "model_id": "recorded as the model: its weights fingerprint (a folder) or its name (a hub id)",
    "data_source": "the data is identified by the split file's sha256, wherever it lies",
    "slake_root": "the data is identified by the split file's sha256, wherever it lies",
    "hf_repo": "the data is identified by the split file's sha256, wherever it lies",
    "eval_split": "the held-out loss is logged, never trained on",
    "output_dir": "where the files go",
    "num_epochs": "a longer run legitimately continues from its checkpoint (the final evaluation is redone: "
                  "its own fingerprint names the trained weights)",
    "max_steps": "as num_epochs",
    "gradient_checkpointing": "recomputes activations (RNG state preserved): the same step, less memory",
    "gradient_checkpointing_keep": "recomputes fewer activations: the same step, more memory",
    "cudnn_attention": "an attention kernel choice, like the device",
    "varlen_attention": "an attention kernel choice over the same keys (the same math up to rounding)",
    "kernels": "a kernel choice, like the device (the same math up to rounding)",
    "compile_layers": "compiled kernels for the same layers, like the device (the same math up to rounding)",
    "cache_image_features": "reuses the frozen tower's own outputs: the same features",
    "prefetch_workers": "the same images prepared by other threads, earlier (a test asserts equal pixels and losses)",
    "logging_steps": "logging cadence", "save_steps": "checkpoint cadence", "eval_steps": "logging cadence",
    "save_total_limit": "how many checkpoints are kept", "resume_from_checkpoint": "a resume flag",
    "report_to": "logging", "tb_logdir": "logging", "tb_log_images_every": "logging", "tb_log_text_every": "logging",
    "tb_probe_size": "logging", "tb_eval_generate_size": "logging", "tb_hist_every": "logging",
    "final_eval": "the final evaluation has its own fingerprint in its own folder",
    "final_eval_split": "the final evaluation has its own fingerprint in its own folder",
    "trust_remote_code": "a permission: without it a model that needs remote code fails to load",
    "overwrite": "how to treat the folder, not what is trained",
}
