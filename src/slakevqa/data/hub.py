"""SLAKE from the Hugging Face hub (``BoKelvin/SLAKE``), unpacked once into a cache.

The hub repo holds the split files (``train.json``, ``validation.json``,
``test.json``), ``mask.txt`` and two archives, ``imgs.zip`` and ``KG.zip``.
``load_dataset`` would give the JSON rows only, without images, so we download
the whole snapshot with ``huggingface_hub`` and unpack it next to the JSON::

    <cache>/BoKelvin--SLAKE/<commit>/
        train.json  validation.json  test.json  mask.txt
        imgs/xmlabN/{source.jpg, mask.png, detection.json, question.json}
        KG/{en_organ.csv, ...}

The unpacked folder is a normal SLAKE layout for :func:`slakevqa.data.slake.load_split`.
Unpacking happens in a temporary folder that is renamed into place at the end,
so a killed run never leaves a half-unpacked cache behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from tqdm import tqdm

from slakevqa.errors import DataError, UserError

log = logging.getLogger(__name__)

HUB_REPO = "BoKelvin/SLAKE"
PLAIN_FILES: tuple[str, ...] = ("train.json", "validation.json", "validate.json", "test.json", "mask.txt")
# archive -> (the folder it becomes, a file name that marks that folder's content)
ARCHIVES: dict[str, tuple[str, str]] = {"imgs.zip": ("imgs", "source.jpg"), "KG.zip": ("KG", "en_organ.csv")}
_DONE_MARKER = ".slakevqa-complete"


def default_cache_dir() -> Path:
    """``$SLAKEVQA_CACHE`` or ``~/.cache/slakevqa``."""
    return Path(os.environ.get("SLAKEVQA_CACHE", Path.home() / ".cache" / "slakevqa"))


def dataset_root(data_source: str, slake_root: str | Path | None, repo_id: str = HUB_REPO) -> Path:
    """The local SLAKE folder a run reads: ``slake_root`` (or ``$SLAKE_ROOT``), or the unpacked hub snapshot."""
    if data_source == "hf":
        return fetch_slake(repo_id)
    root = slake_root or os.environ.get("SLAKE_ROOT")
    if not root:
        raise UserError("no dataset given: pass --slake_root DIR (or set SLAKE_ROOT), or --data_source hf, "
                        "or run 'slakevqa synth --out DIR' for a synthetic one")
    return Path(root)


def fetch_slake(repo_id: str = HUB_REPO, revision: str | None = None, cache_dir: str | Path | None = None,
                hub_cache_dir: str | Path | None = None, local_files_only: bool = False) -> Path:
    """Download (or reuse) the hub snapshot and return the unpacked SLAKE folder.

    ``hub_cache_dir`` and ``local_files_only`` go to ``huggingface_hub``; with
    ``HF_HUB_OFFLINE=1`` the hub's own cache is used without any network.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        snapshot = snapshot_download(repo_id, repo_type="dataset", revision=revision,
                                     cache_dir=hub_cache_dir, local_files_only=local_files_only)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise UserError(f"could not fetch dataset '{repo_id}' from the Hugging Face hub "
                        f"({type(error).__name__}: {str(error).splitlines()[0]}); without network, "
                        "download it elsewhere and pass --data_source local --slake_root DIR") from None
    target = Path(cache_dir or default_cache_dir()) / repo_id.replace("/", "--") / Path(snapshot).name
    return unpack_snapshot(Path(snapshot), target)


def unpack_snapshot(snapshot: Path, target: Path) -> Path:
    """Copy the plain files of ``snapshot`` and unzip its archives into ``target`` (once)."""
    if (target / _DONE_MARKER).is_file():
        return target
    if not any((snapshot / name).is_file() for name in PLAIN_FILES):
        raise DataError(snapshot, "not a SLAKE snapshot: no train.json, validation.json or test.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=target.parent))
    try:
        for name in PLAIN_FILES:
            if (snapshot / name).is_file():
                shutil.copyfile(snapshot / name, staging / name)
        for archive, (folder, marker) in ARCHIVES.items():
            if (snapshot / archive).is_file():
                extract_archive(snapshot / archive, staging, folder, marker)
        (staging / _DONE_MARKER).write_text(str(snapshot), encoding="utf-8")
        if target.exists():  # a concurrent or interrupted run; ours is complete
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("unpacked %s into %s", snapshot, target)
    return target


def extract_archive(archive: Path, staging: Path, folder: str, marker: str) -> None:
    """Unzip ``archive`` so that its content ends up as ``staging/folder``.

    Archives differ in their top level (``imgs/xmlab0/...`` or ``xmlab0/...`` or
    ``Slake1.0/imgs/...``): the folder that holds the content is found by
    ``marker`` and moved into place. Members that would leave the archive root are refused.
    """
    scratch = staging / f".{folder}.zip-contents"
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in tqdm(bundle.infolist(), desc=f"unzip {archive.name}", unit="file",
                               disable=len(bundle.infolist()) < 200):
                check_member(member.filename, archive)
                bundle.extract(member, scratch)
    except zipfile.BadZipFile as error:
        raise DataError(archive, f"not a valid zip archive ({error})") from None
    content = content_root(scratch, marker, archive)
    content.rename(staging / folder)
    shutil.rmtree(scratch, ignore_errors=True)


def check_member(name: str, archive: Path) -> None:
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts:
        raise DataError(archive, f"archive member {name!r} would be written outside the dataset folder")


def content_root(scratch: Path, marker: str, archive: Path) -> Path:
    """The folder under ``scratch`` whose subtree starts the archive's content."""
    hits = sorted(scratch.rglob(marker), key=lambda p: len(p.parts))
    if not hits:
        raise DataError(archive, f"archive holds no {marker}")
    # Images: marker sits in imgs/xmlabN/, so the content root is two levels up. KG: one level up.
    return hits[0].parent.parent if marker == "source.jpg" else hits[0].parent
