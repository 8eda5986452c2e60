"""`slakevqa convert-checkpoint`: original LLaVA-Med checkpoint -> Hugging Face folder.

    slakevqa convert-checkpoint microsoft/llava-med-v1.5-mistral-7b llava-med-hf   # from the hub
    slakevqa convert-checkpoint llava-med-v1.5-mistral-7b llava-med-hf             # a local folder
    slakevqa convert-checkpoint SRC DST --vision_from clip-vit-large-patch14-336

The result loads with plain transformers (``LlavaForConditionalGeneration`` /
``AutoProcessor``). By default the vision weights stored in the checkpoint are used;
``--vision_from`` takes them from a CLIP folder instead (what upstream's loader does)
and prints the largest difference between the two.
"""

from __future__ import annotations

import argparse

from slakevqa.files import check_output_dir
from slakevqa.locks import writing
from slakevqa.models.loading import DTYPES, MODEL_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="original checkpoint: a folder (config.json with model_type llava_mistral) "
                                    "or a hub id such as microsoft/llava-med-v1.5-mistral-7b: " + MODEL_HELP)
    parser.add_argument("dst", help="output folder (Hugging Face format, safetensors)")
    parser.add_argument("--vision_from", "--vision-from", default=None, metavar="CLIP_FOLDER",
                        help="take the vision tower weights from this CLIP folder")
    parser.add_argument("--tokenizer", default=None, metavar="FOLDER",
                        help="folder with tokenizer.model, if SRC has none")
    parser.add_argument("--precision", "--dtype", dest="precision", choices=tuple(DTYPES), default=None,
                        help="output dtype, bf16, fp16 or fp32 (default: the checkpoint's torch_dtype)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")


def run(args: argparse.Namespace) -> int:
    from slakevqa.models.convert import convert_checkpoint
    from slakevqa.models.loading import resolve_folder

    check_output_dir(args.dst, "DST")
    dtype = DTYPES[args.precision] if args.precision else None
    with writing(args.dst, "convert-checkpoint", "DST"):
        report = convert_checkpoint(resolve_folder(args.src), args.dst, vision_from=args.vision_from,
                                    tokenizer_folder=args.tokenizer, dtype=dtype, overwrite=args.overwrite)
    print(f"converted {report.n_tensors} tensors in {report.seconds:.1f} s: vocabulary {report.vocab[0]} -> "
          f"{report.vocab[1]} rows, {report.dtype}, vision weights from {report.vision_source}")
    print(f"wrote {report.destination}")
    return 0
