"""`slakevqa stats`: per-split counts of a SLAKE copy.

    slakevqa stats --slake_root ../shared/slake/Slake1.0 [--language en|zh|all] [--json]
"""

from __future__ import annotations

import argparse
import json

from slakevqa.commands.dataset_args import add_dataset_arguments, resolve_dataset_root
from slakevqa.data.slake import SPLITS, load_split
from slakevqa.data.stats import format_stats_table, split_stats
from slakevqa.escaping import printable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object keyed by split: {"train": {"records": n, "images": n, ...}}')


def run(args: argparse.Namespace) -> int:
    root = resolve_dataset_root(args)
    stats = {split: split_stats(load_split(root, split, args.language, args.missing_images)) for split in SPLITS}
    if args.json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
    else:
        print(f"SLAKE at {root} (language: {args.language})")
        print(printable(format_stats_table(stats), keep_newlines=True))  # split names, modalities: data text
    return 0
