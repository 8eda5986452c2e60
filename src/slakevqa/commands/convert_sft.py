"""`slakevqa convert-sft`: SLAKE splits as LLaVA conversation JSON (schema in slakevqa.data.sft).

    slakevqa convert-sft --data_root ../shared/slake/Slake1.0 --output_dir work_sft
"""

from __future__ import annotations

import argparse
import os

from slakevqa.commands.dataset_args import resolve_dataset_root
from slakevqa.data.sft import export_sft
from slakevqa.data.slake import SPLITS, canonical_split, find_layout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data_root", "--slake_root", dest="slake_root", default=os.environ.get("SLAKE_ROOT"),
                        help="SLAKE folder in any known layout (default: $SLAKE_ROOT)")
    parser.add_argument("--output_dir", default="work_slake_llava_med", help="where the JSON files go")
    parser.add_argument("--use_hf", action="store_true", help="fetch BoKelvin/SLAKE from the Hugging Face hub")
    parser.add_argument("--hf_repo", default="BoKelvin/SLAKE", help="hub dataset repo for --use_hf")
    parser.add_argument("--mm_use_im_start_end", action="store_true",
                        help="wrap the image token as <im_start><image><im_end> (off for LLaVA-Med v1.5)")
    parser.add_argument("--language", choices=("en", "zh", "all"), default="en", help="default: en")
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma list (default: all three)")


def run(args: argparse.Namespace) -> int:
    args.data_source = "hf" if args.use_hf else "local"
    root = resolve_dataset_root(args)
    splits = tuple(canonical_split(s.strip()) for s in args.splits.split(",") if s.strip())
    written = export_sft(root, args.output_dir, args.language, splits, args.mm_use_im_start_end)
    for split, path in written.items():
        print(f"{split:<11} {path}")
    print(f"image folder (LLaVA --image_folder): {find_layout(root).image_dir}")
    return 0
