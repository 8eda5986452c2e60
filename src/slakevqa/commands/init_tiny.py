"""`slakevqa init-tiny`: write a tiny random LLaVA for tests and the demo.

    slakevqa init-tiny work/tiny                       # Hugging Face format
    slakevqa init-tiny work/tiny-orig --format llava_med   # original LLaVA-Med format
    slakevqa convert-checkpoint work/tiny-orig work/tiny-hf

The real Mistral-7B tokenizer is used when ``mistral-common`` is installed
(``--tokenizer auto``), else a byte-level BPE trained on the fly.
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
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty DIR (the old one is kept until the new one is whole)")


def run(args: argparse.Namespace) -> int:
    from slakevqa.models.tiny import build_tiny_llava, resolve_tokenizer_kind, write_llava
    from slakevqa.models.tiny_original import save_llava_med_original

    check_seed(args.seed)
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
