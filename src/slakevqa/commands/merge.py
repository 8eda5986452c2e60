"""`slakevqa merge`: fold a trained LoRA adapter into its base model and write a plain HF folder.

    slakevqa merge runs/lora runs/lora-merged
    slakevqa merge runs/lora runs/lora-merged --base microsoft/llava-med-v1.5-mistral-7b --dtype bf16

The result needs neither peft nor slakevqa: ``AutoModelForImageTextToText`` and
``AutoProcessor`` load it (safetensors weights, the adapter's processor). The
adapter's ``closed_vocab.json`` and ``run_config.json`` are copied beside it, so
``slakevqa eval --model_id_or_ckpt runs/lora-merged`` routes CLOSED questions with
the training vocabulary. The base comes from ``--base``, else from the adapter's
``base_model_name_or_path`` (training records ``--model_id`` there).

OUT is written beside itself and renamed into place (:func:`slakevqa.files.atomic_folder`):
with ``--overwrite`` the previous OUT stays whole until the new one is, so a failing or
killed merge never loses it. OUT may not be, contain, or lie inside ADAPTER or a local base.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from slakevqa.errors import UserError
from slakevqa.files import atomic_folder, check_output_dir, check_replaceable, refuse_overlap
from slakevqa.locks import writing
from slakevqa.models.loading import MODEL_HELP, PRECISIONS

COPIED = ("closed_vocab.json", "run_config.json")  # training outputs that travel with the weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="a LoRA adapter folder (adapter_config.json), e.g. a training output_dir")
    parser.add_argument("out", help="output folder (Hugging Face format, safetensors)")
    parser.add_argument("--base", default=None,
                        help="base model (default: the adapter's base_model_name_or_path): " + MODEL_HELP)
    parser.add_argument("--precision", "--dtype", dest="precision", default="auto", choices=PRECISIONS,
                        help="dtype of the merged weights (auto: bf16 on GPUs that support it, else fp32)")
    parser.add_argument("--device", default="auto", help="where to merge: auto, cpu, cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty OUT (the old one is kept until the new one is whole)")


def merge_adapter(adapter: str | Path, out: str | Path, base: str | None = None, dtype: str = "auto",
                  device: str = "auto", overwrite: bool = False) -> Path:
    """Load ``base`` + ``adapter`` merged and write them, the processor and the training files to ``out``."""
    from slakevqa.models.loading import adapter_base, load_model
    from slakevqa.models.tiny import write_llava

    adapter, out = Path(adapter), check_output_dir(out, "OUT")
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json); "
                        "a full fine-tune is already a plain Hugging Face folder")
    refuse_overlap(out, adapter, "OUT", "ADAPTER")
    base_path = Path(adapter_base(adapter, base)).expanduser()
    if base_path.is_dir():
        refuse_overlap(out, base_path, "OUT", "the base model folder")
    check_replaceable(out, overwrite, "OUT")  # before the slow load: a refusal costs nothing
    loaded = load_model(adapter, base=base, merge_adapter=True, dtype=dtype, device=device)
    with atomic_folder(out) as partial:  # the old OUT stays whole until this one is
        write_llava(loaded.model, loaded.processor, partial)  # safetensors + processor, tokenizer flags
        for name in COPIED:
            if (adapter / name).is_file():
                shutil.copy2(adapter / name, partial / name)
    return out


def run(args: argparse.Namespace) -> int:
    with writing(args.out, "merge", "OUT"):
        out = merge_adapter(args.adapter, args.out, args.base, args.precision, args.device, args.overwrite)
    print(f"merged {args.adapter} into its base; wrote {out}")
    return 0
