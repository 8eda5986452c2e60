"""Which image files a report may embed: only those of the dataset the answers were made from.

The HTML report inlines thumbnails, so whatever file it opens ends up inside a page that gets
mailed and archived. results.json and predictions.jsonl are editable text, so neither may decide
alone which folder is read. A folder is used when:

* it is the folder of the split file results.json records (``provenance.split_file``), and that
  file still has the sha256 recorded beside it (``split_sha256``): checked here, at report time;
* or the user names it with ``--image_root`` (a run that moved machines); when results.json
  records a split file and its sha256, the folder must hold a file of that name with that sha256.

An image is embedded only when its file lies inside such a dataset's image folder (``imgs/``):
symlinks resolved, or named through the folder's own path with ``..`` folded away. ``imgs/`` or
single image files linked to another disk are common layouts (the loader reads them), while an
``image_path`` or an ``img_name`` with ``..`` that leads elsewhere is refused. When no folder
qualifies, :attr:`ImageSource.note` says why in one line (printed as a warning and written into
both reports).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from slakevqa.data.slake import find_layout
from slakevqa.errors import DataError, UserError
from slakevqa.escaping import printable
from slakevqa.records import Prediction
from slakevqa.runs.results import sha256_file

NO_FOLDER_NOTE = ("No images embedded: the run records no dataset folder (no split_file in results.json); "
                  "pass --image_root DATASET to embed the images inside it.")


@dataclass(frozen=True)
class ImageSource:
    """The dataset roots images may come from, their resolved image folders, and why not when none may."""

    roots: tuple[Path, ...] = ()
    folders: tuple[Path, ...] = ()
    note: str | None = NO_FOLDER_NOTE  # None when images are embedded
    refused: bool = False  # a folder was named (results.json or --image_root) and failed its check
    named: tuple[Path, ...] = ()  # the same image folders as the dataset names them (imgs/), links unresolved

    def names_inside(self, path: Path) -> bool:
        """Whether ``path``, ``..`` folded away but links kept, lies in an image folder: the dataset's own link."""
        lexical = Path(os.path.normpath(os.path.abspath(path)))
        return any(lexical.is_relative_to(folder) for folder in self.named)


def image_source(provenance: dict, image_root: str | Path | None = None) -> ImageSource:
    """The folders a report of a run with ``provenance`` may take images from (see the module doc).

    Raises UserError for an ``--image_root`` that is not a folder.
    """
    checks = [_recorded_folder(provenance)]
    if image_root is not None:
        checks.append(_named_folder(Path(image_root).expanduser(), provenance))
    accepted = [(root, folder) for root, folder, _ in checks if root is not None]
    if accepted:
        roots = tuple(r for r, _ in accepted)
        return ImageSource(roots, tuple(f for _, f in accepted), None,
                           named=tuple(Path(os.path.normpath(find_layout(r).image_dir)) for r in roots))
    reasons = [reason for _, _, reason in checks if reason]
    if not reasons:
        return ImageSource()
    return ImageSource(note=f"No images embedded: {reasons[-1]}.", refused=True)  # --image_root's, when it has one


def _recorded_folder(provenance: dict) -> tuple[Path | None, Path | None, str | None]:
    """``(root, image folder, None)`` of the split file results.json records, or ``(None, None, why not)``."""
    split_file = provenance.get("split_file")
    if not split_file:
        return None, None, None
    if not isinstance(split_file, str):
        return None, None, "results.json's split_file is not a path"
    recorded = provenance.get("split_sha256")
    if not isinstance(recorded, str) or not recorded:
        return None, None, (f"results.json names the split file {printable(split_file)} but records no "
                            "split_sha256 to check it against")
    path = Path(split_file).expanduser()
    found = _sha256(path)
    if found is None:
        return None, None, (f"{printable(split_file)}, the split file results.json records, cannot be read "
                            "(pass --image_root DATASET if the dataset moved)")
    if found != recorded:
        return None, None, (f"{printable(split_file)} no longer has the sha256 results.json records "
                            f"(split_sha256 {printable(recorded[:12])}...): the dataset changed since the answers "
                            "were made, or results.json names another folder")
    try:
        layout = find_layout(path.parent)
        folder = layout.image_dir.resolve()
    except (DataError, OSError, RuntimeError) as error:  # RuntimeError: a symlink loop, up to Python 3.12
        return None, None, f"the dataset folder of {printable(split_file)} is unusable ({printable(error)})"
    if layout.root != path.parent.resolve():  # find_layout stepped into a Slake1.0/ below it
        return None, None, f"{printable(split_file)} is not a split file of its folder"
    return layout.root, folder, None


def _named_folder(root: Path, provenance: dict) -> tuple[Path | None, Path | None, str | None]:
    """``(root, image folder, None)`` of ``--image_root``, or ``(None, None, why not)``."""
    if not root.is_dir():
        raise UserError(f"--image_root {printable(root)}: no such folder")
    layout = find_layout(root)  # a one-line DataError for a dangling imgs/ link or a non-UTF-8 name
    try:
        folder = layout.image_dir.resolve()
    except (OSError, RuntimeError) as error:
        raise UserError(f"--image_root {printable(root)}: cannot resolve {layout.image_dir} ({error})") from None
    split_file, recorded = provenance.get("split_file"), provenance.get("split_sha256")
    if isinstance(split_file, str) and split_file and isinstance(recorded, str) and recorded:
        name = Path(split_file).name
        if _sha256(layout.root / name) != recorded:
            return None, None, (f"--image_root {printable(layout.root)} has no {printable(name)} with the sha256 "
                                "results.json records for the split the answers were made from")
    return layout.root, folder, None


def _sha256(path: Path) -> str | None:
    try:
        return sha256_file(path) if path.is_file() else None
    except (OSError, ValueError):  # unreadable, a NUL byte in the name
        return None


def safe_name(img_name: str) -> bool:
    """May ``img_name`` be joined to an image folder? Relative, no ``..``, no NUL byte.

    >>> safe_name("xmlab1/source.jpg"), safe_name("../private/x.png"), safe_name("/etc/x.png")
    (True, False, False)
    """
    path = Path(img_name)
    return bool(img_name) and "\0" not in img_name and not path.is_absolute() and ".." not in path.parts


def image_file(row: Prediction, source: ImageSource) -> tuple[Path | None, bool]:
    """``(image on disk or None, refused)``: ``row.image_path``, else ``img_name`` in each image folder.

    ``image_path`` counts when, symlinks resolved, it lies inside one of ``source.folders``, or when it
    names a file of such a folder through the dataset's own ``imgs/`` (``..`` folded away first): a
    file the dataset's owner linked to another disk, as the loader reads it (data/slake.py). One that
    lies elsewhere is refused, and with no folder every one is. ``img_name`` (relative, no ``..``)
    joined to an image folder names a file of that folder.
    """
    candidates = [(Path(row.image_path), source.names_inside(Path(row.image_path)))] if row.image_path else []
    if safe_name(row.img_name):
        candidates += [(folder / row.img_name, True) for folder in source.folders]
    refused = False
    for candidate, named_inside in candidates:
        try:
            if not candidate.is_file():
                continue
            real = candidate.resolve()
        except (OSError, ValueError, RuntimeError):  # symlink loops, NUL bytes
            continue
        if named_inside or any(real.is_relative_to(folder) for folder in source.folders):
            return candidate, False
        refused = True
    return None, refused
