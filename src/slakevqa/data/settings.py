"""`DataSettings`: which SLAKE is read and how, defined once for every verb that loads records.

``train`` and ``eval`` hold one as ``data`` (flat keys of their YAML and flags, see
``slakevqa.config``); ``stats``, ``kg``, ``routes``, ``masks``, ``score`` and ``convert-sft`` get
the same flags from :func:`slakevqa.commands.dataset_args.add_dataset_arguments`::

    slakevqa stats --slake_root data/Slake1.0 --language all --missing_images skip
    slakevqa eval --data_source hf ...          # BoKelvin/SLAKE from the hub, unpacked into a cache
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from slakevqa.config import check_choices
from slakevqa.data.hub import HUB_REPO
from slakevqa.data.slake import LANGUAGE_FILTERS, MISSING_IMAGE_POLICIES, MISSING_IMAGES_HELP


def _help(text: str, **extra: object) -> dict:
    return {"help": text, **extra}


@dataclass(frozen=True)
class DataSettings:
    data_source: str = field(default="local", metadata=_help(
        "local folder, or the Hugging Face hub repo --hf_repo", choices=("local", "hf")))
    slake_root: str | None = field(default=None, metadata=_help(
        "SLAKE folder in any known layout (default: $SLAKE_ROOT)"))
    hf_repo: str = field(default=HUB_REPO, metadata=_help("hub dataset repo for --data_source hf"))
    language: str = field(default="en", metadata=_help(
        "question language (en: the split published numbers use)", choices=LANGUAGE_FILTERS))
    missing_images: str = field(default="error", metadata=_help(MISSING_IMAGES_HELP,
                                                                choices=MISSING_IMAGE_POLICIES))

    def __post_init__(self) -> None:
        check_choices(self)

    def root(self) -> Path:
        """The local folder to read: ``slake_root`` (or ``$SLAKE_ROOT``), or the unpacked hub snapshot."""
        from slakevqa.data.hub import dataset_root

        return dataset_root(self.data_source, self.slake_root, self.hf_repo)
