"""``slakevqa synth``: write a learnable synthetic SLAKE in the official layout.

Example::

    slakevqa synth --out data/synth --seed 0 --images 430
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slakevqa.config import check_seed
from slakevqa.data.synth import DEFAULT_IMAGE_SIZE, DEFAULT_IMAGES, write_synthetic_slake
from slakevqa.locks import writing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                        help=f"images over all splits, 70/15/15 %% (default {DEFAULT_IMAGES})")
    parser.add_argument("--image_size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help=f"image side in pixels (default {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier synthetic SLAKE at --out (nothing else is ever replaced)")


def run(args: argparse.Namespace) -> int:
    check_seed(args.seed)
    with writing(args.out, "synth", "--out"):
        summary = write_synthetic_slake(args.out, seed=args.seed, images=args.images,
                                        image_size=args.image_size, overwrite=args.overwrite)
    print("\n".join(summary.lines()))
    return 0
