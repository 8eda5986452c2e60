"""`slakevqa convert-sft`: SLAKE splits as LLaVA conversation JSON (schema in slakevqa.data.sft).

    slakevqa convert-sft --data_root ../shared/slake/Slake1.0 --output_dir work_sft
"""

from __future__ import annotations

import argparse

from slakevqa.commands.dataset_args import add_dataset_arguments, resolve_dataset_root
from slakevqa.data.sft import export_sft
from slakevqa.data.slake import SPLITS, canonical_split, find_layout
from slakevqa.files import check_output_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser, root_aliases=("--data_root",))
    parser.add_argument("--output_dir", default="work_slake_llava_med", help="where the JSON files go")
    parser.add_argument("--use_hf", action="store_true", help="fetch BoKelvin/SLAKE from the Hugging Face hub "
                                                              "(the reference's spelling of --data_source hf)")
    parser.add_argument("--mm_use_im_start_end", action="store_true",
                        help="wrap the image token as <im_start><image><im_end> (off for LLaVA-Med v1.5)")
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma list (default: all three)")


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.output_dir, "--output_dir")  # before the dataset is read, not at the first write
    if args.use_hf:
        args.data_source = "hf"
    root = resolve_dataset_root(args)
    splits = tuple(canonical_split(s.strip()) for s in args.splits.split(",") if s.strip())
    written = export_sft(root, args.output_dir, args.language, splits, args.mm_use_im_start_end,
                         args.missing_images)
    for split, path in written.items():
        print(f"{split:<11} {path}")
    print(f"image folder (LLaVA --image_folder): {find_layout(root).image_dir}")
    return 0
