"""`slakevqa init-tiny`: write a tiny random model of any family, for tests and the demo.

    slakevqa init-tiny work/tiny                       # LLaVA-Med, Hugging Face format
    slakevqa init-tiny work/tiny-orig --format llava_med   # original LLaVA-Med format
    slakevqa convert-checkpoint work/tiny-orig work/tiny-hf
    slakevqa init-tiny work/tiny-qwen --family qwen2_5_vl --tokenizer_dir TOKENIZER_FOLDER

LLaVA-Med: the real Mistral-7B tokenizer is used when ``mistral-common`` is installed
(``--tokenizer auto``), else a byte-level BPE trained on the fly. LLaVA-1.5: the byte-level BPE
(no Vicuna tokenizer ships on PyPI). Qwen2.5-VL and Gemma 3: the tokenizer files of ``--tokenizer_dir``
(``tokenizer.json`` and ``tokenizer_config.json`` of the family's checkpoint).
"""

from __future__ import annotations

import argparse

from slakevqa.config import check_seed
from slakevqa.files import atomic_folder, check_replaceable
from slakevqa.locks import writing

FORMATS = ("hf", "llava_med")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="output folder")
    parser.add_argument("--format", choices=FORMATS, default="hf",
                        help="hf: LlavaForConditionalGeneration folder; llava_med: original llava_mistral layout")
    parser.add_argument("--tokenizer", choices=("auto", "mistral", "bpe"), default="auto",
                        help="auto: the real Mistral tokenizer if mistral-common is installed, else bpe")
    parser.add_argument("--image_size", "--image-size", type=int, default=32, help="input side in pixels")
    parser.add_argument("--patch_size", "--patch-size", type=int, default=8, help="CLIP patch size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--family", default="llava_med",
                        help="model family (slakevqa.models.families: llava_med, llava_1_5, qwen2_5_vl, gemma3)")
    parser.add_argument("--tokenizer_dir", "--tokenizer-dir", default=None,
                        help="qwen2_5_vl and gemma3: a folder with the family's tokenizer.json and tokenizer_config.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty DIR (the old one is kept until the new one is whole)")


def run(args: argparse.Namespace) -> int:
    from slakevqa.models.families import family_named
    from slakevqa.models.tiny import build_tiny_llava, resolve_tokenizer_kind, write_llava
    from slakevqa.models.tiny_original import save_llava_med_original

    check_seed(args.seed)
    family = family_named(args.family)
    if family.name != "llava_med":
        return write_other_family(args, family)
    folder = check_replaceable(args.dir, args.overwrite, "DIR")
    kind = resolve_tokenizer_kind(args.tokenizer)
    model, processor = build_tiny_llava(kind, image_size=args.image_size, patch_size=args.patch_size,
                                        seed=args.seed)
    with writing(folder, "init-tiny", "DIR"), atomic_folder(folder) as partial:  # the old DIR stays whole until this one is
        if args.format == "hf":
            write_llava(model, processor, partial)
        else:
            save_llava_med_original(model, processor, partial)
    n_params = sum(p.numel() for p in model.parameters())
    n_image = (args.image_size // args.patch_size) ** 2
    print(f"wrote a tiny LLaVA ({args.format} format, {kind} tokenizer of {len(processor.tokenizer)} tokens, "
          f"{n_params:,} parameters, {n_image} image tokens) to {folder}")
    return 0


def write_other_family(args: argparse.Namespace, family) -> int:
    """A tiny random model of ``family`` (its module's ``build_tiny``) in Hugging Face format."""
    import importlib

    from slakevqa.errors import UserError
    from slakevqa.models.tiny import write_llava

    if args.format != "hf":
        raise UserError(f"--format {args.format}: only LLaVA-Med has an original format; {family.name} is written as hf")
    module = importlib.import_module(f"slakevqa.models.families.{family.name}")
    folder = check_replaceable(args.dir, args.overwrite, "DIR")
    tokenizer = tiny_tokenizer(family, args.tokenizer_dir)
    model, processor = module.build_tiny(tokenizer, seed=args.seed)
    with writing(folder, "init-tiny", "DIR"), atomic_folder(folder) as partial:
        write_llava(model, processor, partial)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote a tiny {family.title} ({len(processor.tokenizer)} tokens, {n_params:,} parameters) to {folder}")
    return 0


def tiny_tokenizer(family, folder: str | None):
    """LLaVA-1.5: the byte-level BPE; Qwen2.5-VL and Gemma 3: the real tokenizer files of ``folder``."""
    from pathlib import Path

    from slakevqa.errors import UserError

    if family.name == "llava_1_5":
        from slakevqa.models.tokenizer import build_bpe_tokenizer

        return build_bpe_tokenizer()
    if folder is None or not (Path(folder) / "tokenizer.json").is_file():
        raise UserError(f"--family {family.name} needs --tokenizer_dir: a folder with the family's tokenizer.json "
                        "and tokenizer_config.json (no hub here to fetch them from)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
