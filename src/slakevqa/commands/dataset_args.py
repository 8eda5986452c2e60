"""The dataset flags every data-reading verb shares, and how they resolve to a folder.

``--slake_root`` defaults to the ``SLAKE_ROOT`` environment variable;
``--data_source hf`` fetches ``BoKelvin/SLAKE`` from the hub into a cache first.
``train`` and ``eval`` take the same names from their configs (TrainConfig, EvalConfig).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from slakevqa.data.slake import LANGUAGE_FILTERS, MISSING_IMAGE_POLICIES, MISSING_IMAGES_HELP


def add_dataset_arguments(parser: argparse.ArgumentParser, split: str | None = None,
                          root_aliases: tuple[str, ...] = ()) -> None:
    """Add ``--data_source``, ``--slake_root``, ``--language``, ``--missing_images`` (and ``--split``).

    ``root_aliases`` are other spellings of ``--slake_root`` (``convert-sft`` keeps the
    reference toolkit's ``--data_root``).
    """
    group = parser.add_argument_group("dataset")
    group.add_argument("--data_source", choices=("local", "hf"), default="local",
                       help="local folder, or the Hugging Face hub repo BoKelvin/SLAKE (default: local)")
    group.add_argument(*root_aliases, "--slake_root", dest="slake_root", default=os.environ.get("SLAKE_ROOT"),
                       help="SLAKE folder in any known layout (default: $SLAKE_ROOT)")
    group.add_argument("--hf_repo", default="BoKelvin/SLAKE", help="hub dataset repo for --data_source hf")
    group.add_argument("--language", choices=LANGUAGE_FILTERS, default="en",
                       help="question language (default: en, the split published numbers use)")
    group.add_argument("--missing_images", choices=MISSING_IMAGE_POLICIES, default="error",
                       help=f"{MISSING_IMAGES_HELP} (default: error)")
    if split is not None:
        group.add_argument("--split", default=split, help=f"train, validation (validate) or test (default: {split})")


def resolve_dataset_root(args: argparse.Namespace) -> Path:
    """The local folder to read: ``--slake_root``, or the unpacked hub snapshot."""
    from slakevqa.data.hub import dataset_root

    return dataset_root(args.data_source, args.slake_root, getattr(args, "hf_repo", "BoKelvin/SLAKE"))
