"""The dataset flags every data-reading verb shares (:class:`slakevqa.data.settings.DataSettings`).

``--slake_root`` defaults to the ``SLAKE_ROOT`` environment variable;
``--data_source hf`` fetches ``BoKelvin/SLAKE`` from the hub into a cache first.
``train`` and ``eval`` hold the same DataSettings in their configs, so the flags are the same.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from slakevqa.config import add_setting_flags
from slakevqa.data.settings import DataSettings


def add_dataset_arguments(parser: argparse.ArgumentParser, split: str | None = None,
                          root_aliases: tuple[str, ...] = ()) -> None:
    """Add ``--data_source``, ``--slake_root``, ``--language``, ``--missing_images`` (and ``--split``).

    ``root_aliases`` are other spellings of ``--slake_root`` (``convert-sft`` keeps the
    reference toolkit's ``--data_root``).
    """
    group = parser.add_argument_group("dataset")
    add_setting_flags(group, DataSettings, {"slake_root": list(root_aliases)})
    if split is not None:
        group.add_argument("--split", default=split, help=f"train, validation (validate) or test (default: {split})")


def resolve_dataset_root(args: argparse.Namespace) -> Path:
    """The local folder to read: ``--slake_root``, or the unpacked hub snapshot."""
    return data_settings(args).root()


def data_settings(args: argparse.Namespace) -> DataSettings:
    """The DataSettings the flags of :func:`add_dataset_arguments` give."""
    names = [f.name for f in dataclasses.fields(DataSettings)]
    return DataSettings(**{name: getattr(args, name) for name in names if hasattr(args, name)})
