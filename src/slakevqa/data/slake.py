"""Load SLAKE split files into :class:`VQASample` records, in any known layout.

Layouts found automatically under ``root``:

* the official release ``Slake1.0/``: ``train.json``, ``validate.json``,
  ``test.json``, ``imgs/xmlabN/source.jpg``, ``mask.txt``, ``KG/``;
* the Hugging Face release and the reference toolkit: ``validation.json``
  instead of ``validate.json``, images under ``imgs/`` or ``img/``;
* a folder that holds one of the above as ``Slake1.0/``.

Each split file is a JSON array of flat objects with 12 keys, e.g.::

    {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "What modality is used to take this image?",
     "answer": "MRI", "q_lang": "en", "location": "Abdomen", "modality": "MRI", "answer_type": "OPEN",
     "base_type": "vqa", "content_type": "Modality", "triple": ["vhead", "_", "_"], "qid": 0}

Every defect is reported as one :class:`DataError` naming the file, the record
and the field; nothing is dropped silently.

Every distinct image is decoded completely when a split is loaded
(:func:`slakevqa.data.images.image_problem`; about a second for SLAKE's 642
images, cached per file version within a process), so a truncated file, or one
above the pixel limit :data:`slakevqa.data.images.MAX_IMAGE_PIXELS` (PIL's
default, 89,478,485 pixels), stops the load, or is a counted skip under
``--missing_images skip``, before any training or evaluation step.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from slakevqa.data.images import image_problem, image_problems  # noqa: F401 - image_problem re-exported
from slakevqa.data.reading import read_json
from slakevqa.errors import DataError, UserError
from slakevqa.os_errors import require_utf8_name
from slakevqa.records import ANSWER_TYPES, LANGUAGES, SLAKE_FIELDS, VQASample

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_ALIASES: dict[str, str] = {"train": "train", "validation": "validation", "validate": "validation",
                                 "val": "validation", "dev": "validation", "test": "test"}
# File names per canonical split, in the order they are tried.
SPLIT_FILES: dict[str, tuple[str, ...]] = {"train": ("train.json",),
                                           "validation": ("validate.json", "validation.json"),
                                           "test": ("test.json",)}
IMAGE_DIRS: tuple[str, ...] = ("imgs", "img", "images")
LANGUAGE_FILTERS: tuple[str, ...] = ("en", "zh", "all")
MISSING_IMAGE_POLICIES: tuple[str, ...] = ("error", "skip")
MISSING_IMAGES_HELP = "stop at a missing/unreadable image (error) or skip such records with a count"
_STRING_FIELDS = ("img_name", "question", "q_lang", "location", "modality", "base_type", "content_type")


@dataclass(frozen=True)
class SlakeLayout:
    """Where the parts of one SLAKE copy live on disk."""

    root: Path
    image_dir: Path
    mask_map: Path | None
    kg_dir: Path | None

    def split_file(self, split: str) -> Path:
        """The JSON file of ``split`` (any alias), or a DataError listing what was tried."""
        canonical = canonical_split(split)
        for name in SPLIT_FILES[canonical]:
            if (self.root / name).is_file():
                return self.root / name
        tried = " or ".join(SPLIT_FILES[canonical])
        raise DataError(self.root, f"no {canonical} split file: expected {tried} in this folder")


def canonical_split(split: str) -> str:
    """``validate``/``val``/``validation`` -> ``validation``; unknown names raise UserError."""
    try:
        return SPLIT_ALIASES[split.lower()]
    except KeyError:
        raise UserError(f"unknown split '{split}': use train, validation (or validate) or test") from None


def find_layout(root: str | Path) -> SlakeLayout:
    """Locate split files, the image folder, ``mask.txt`` and ``KG/`` under ``root``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist (set --slake_root or SLAKE_ROOT)")
    if not _has_split_file(root) and _has_split_file(root / "Slake1.0"):
        root = root / "Slake1.0"
    root = root.resolve()
    require_utf8_name(root, "dataset folder")
    # Not resolved: an image folder linked to another disk stays root/imgs (see resolve_image).
    image_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root)
    dangling = [root / d for d in IMAGE_DIRS if (root / d).is_symlink() and not (root / d).exists()]
    if image_dir == root and dangling:  # else every image would be "not found" in the wrong folder
        raise DataError(dangling[0], f"the image folder is a symlink to {os.readlink(dangling[0])}, which does "
                                     "not exist (is that disk mounted?)")
    mask_map = root / "mask.txt" if (root / "mask.txt").is_file() else None
    kg_dir = root / "KG" if (root / "KG").is_dir() else None
    return SlakeLayout(root=root, image_dir=image_dir, mask_map=mask_map, kg_dir=kg_dir)


def _has_split_file(folder: Path) -> bool:
    return any((folder / name).is_file() for names in SPLIT_FILES.values() for name in names)


def load_split(root: str | Path, split: str, language: str = "en",
               missing_images: str = "error") -> list[VQASample]:
    """Load one split of SLAKE, filtered by language, sorted by qid.

    Args:
        root: the dataset folder (any layout in the module docstring).
        split: ``train``, ``validation`` (or ``validate``) or ``test``.
        language: ``en`` (default, the split every published number uses), ``zh`` or ``all``.
        missing_images: ``error`` (default) stops at the first image that is missing, does not
            decode completely (truncated, corrupt, a symlink loop) or is larger than
            :data:`~slakevqa.data.images.MAX_IMAGE_PIXELS` (89,478,485 pixels, PIL's default);
            ``skip`` drops those records and logs how many.

    Example:
        >>> samples = load_split("../shared/slake/Slake1.0", "test")   # doctest: +SKIP
        >>> len(samples), samples[0].qid, samples[0].answer_type
        (1061, 11934, 'OPEN')
    """
    if language not in LANGUAGE_FILTERS:
        raise UserError(f"unknown language '{language}': use one of {', '.join(LANGUAGE_FILTERS)}")
    if missing_images not in MISSING_IMAGE_POLICIES:
        raise UserError(f"unknown missing-image policy '{missing_images}': use error or skip")
    layout = find_layout(root)
    path = layout.split_file(split)
    rows = read_split_file(path)
    samples = [parse_record(row, i, path, layout, canonical_split(split)) for i, row in enumerate(rows)]
    check_unique_qids(samples, path)
    samples = [s for s in samples if language == "all" or s.q_lang == language]
    samples = check_images(samples, path, missing_images)
    return sorted(samples, key=lambda s: s.qid)


LANGUAGE_NAMES: dict[str, str] = {"en": "English", "zh": "Chinese", "all": ""}


def require_questions(samples: list[VQASample], root: str | Path, split: str, language: str = "en") -> list[VQASample]:
    """``samples`` when there is at least one; else a one-line DataError saying why the split is empty.

    Called by evaluation and training right after loading, before any model loads: a
    split with no question of the language asked for (``--language en`` on a file of
    Chinese questions), or whose questions were all dropped (``--missing_images skip``,
    empty answers), would otherwise load a model for nothing. The counts come from the
    split file itself, e.g. ``Slake1.0/test.json: no English questions (--language en);
    its 3 questions are zh 3: pass --language zh or all``.
    """
    if samples:
        return samples
    path = find_layout(root).split_file(split)
    rows = [row for row in read_split_file(path) if isinstance(row, dict)]
    counts = Counter(str(row.get("q_lang", "?")).strip().lower() for row in rows)
    wanted = len(rows) if language == "all" else counts.get(language, 0)
    name = f"{LANGUAGE_NAMES.get(language, language)} questions".strip()
    if not rows:
        raise DataError(path, "no questions: the split file is an empty list")
    if wanted == 0:
        found = ", ".join(f"{lang} {n}" for lang, n in sorted(counts.items()))
        others = " or ".join(sorted(set(counts) - {language, "all"}) + ["all"])
        raise DataError(path, f"no {name} (--language {language}); its {len(rows)} questions are {found}: "
                              f"pass --language {others}")
    raise DataError(path, f"all {wanted} {name} were dropped (images skipped by --missing_images skip, or empty "
                          "answers); nothing is left to use")


def read_split_file(path: Path) -> list:
    """The JSON array of a split file; invalid JSON names the line and column, bad UTF-8 its line."""
    rows = read_json(path)
    if not isinstance(rows, list):
        raise DataError(path, f"expected a JSON array of records, found a JSON {type(rows).__name__}")
    return rows


def parse_record(row: object, index: int, path: Path, layout: SlakeLayout, split: str) -> VQASample:
    """Validate one raw record and turn it into a VQASample.

    Mistyped or missing fields, unknown ``answer_type`` values and image names
    that leave the dataset root all raise DataError naming ``path``, the record
    (its qid when readable, else its index) and the field.
    """
    if not isinstance(row, dict):
        raise DataError(path, f"expected a JSON object, found {type(row).__name__}", record=f"record #{index}")
    where = _record_label(row, index)
    for name in SLAKE_FIELDS:
        if name not in row:
            raise DataError(path, "missing (every SLAKE record has 12 fields)", record=where, field=name)
    qid = _as_int(row["qid"], path, where, "qid")
    img_id = _as_int(row["img_id"], path, where, "img_id")
    for name in _STRING_FIELDS:
        if not isinstance(row[name], str):
            raise DataError(path, f"expected a string, found {type(row[name]).__name__}", record=where, field=name)
    answer = _as_answer(row["answer"], path, where)
    q_lang = _as_language(row["q_lang"], path, where)
    answer_type = _as_answer_type(row["answer_type"], path, where)
    triple = _as_triple(row["triple"], path, where)
    image_path = resolve_image(layout, row["img_name"], path, where)
    return VQASample(qid=qid, img_id=img_id, img_name=row["img_name"], question=row["question"].strip(),
                     answer=answer, q_lang=q_lang, location=row["location"], modality=row["modality"],
                     answer_type=answer_type, base_type=row["base_type"], content_type=row["content_type"],
                     triple=triple, image_path=image_path, split=split)


def _record_label(row: dict, index: int) -> str:
    qid = row.get("qid")
    return f"qid {qid}" if isinstance(qid, (int, str)) and not isinstance(qid, bool) else f"record #{index}"


def _as_int(value: object, path: Path, where: str, name: str) -> int:
    # Digit strings are accepted: CSV- and pandas-derived copies store ids as text. ASCII digits
    # only: str.isdigit() also accepts '²' and '١', which int() then refuses or reads as another id.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value)
    raise DataError(path, f"expected an integer, found {value!r}", record=where, field=name)


def _as_answer(value: object, path: Path, where: str) -> str:
    # SLAKE's files hold strings ("2"), derived copies hold ints: coerce numbers, refuse the rest.
    # Runs of spaces collapse to one: 91 English answers read "Transverse  Plane", which the
    # tokenizer would split differently from "Transverse Plane" and so train a rare spelling.
    # A missing value (null, NaN, or its pandas spelling "nan") is refused: it would become the gold answer "nan".
    if value is None:
        raise DataError(path, "missing value (null); give the answer as a string", record=where, field="answer")
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(path, f"not a finite number ({value!r}; NaN is how exports write a missing value); "
                              "give the answer as a string", record=where, field="answer")
    if isinstance(value, str):
        if value.strip().lower() == "nan":
            raise DataError(path, "reads 'nan', a missing value written by a table export; give the real answer",
                            record=where, field="answer")
        return " ".join(value.split())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() else str(value)
    raise DataError(path, f"expected a string or number, found {type(value).__name__}", record=where, field="answer")


def _as_language(value: object, path: Path, where: str) -> str:
    # SLAKE has only "en" and "zh"; any other value would vanish from every language filter.
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in LANGUAGES:
        raise DataError(path, f"unknown value {value!r} (expected {' or '.join(LANGUAGES)})", record=where,
                        field="q_lang")
    return text


def _as_answer_type(value: object, path: Path, where: str) -> str:
    text = value.strip().upper() if isinstance(value, str) else value
    if text not in ANSWER_TYPES:
        raise DataError(path, f"unknown value {value!r} (expected OPEN or CLOSED)", record=where, field="answer_type")
    return text


def _as_triple(value: object, path: Path, where: str) -> tuple[str, str, str]:
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value):
        return (value[0], value[1], value[2])
    raise DataError(path, f"expected a list of 3 strings, found {value!r}", record=where, field="triple")


def resolve_image(layout: SlakeLayout, img_name: str, path: Path, where: str) -> Path:
    """``image_dir / img_name`` with ``..`` collapsed; refused when it climbs out of the dataset root.

    The name comes from the data, so it is checked as text (decision 9): an absolute path, a
    ``..`` that leaves the root, or a NUL byte is refused. Symlinks are not followed here:
    they are the user's disk layout, not the data's, so ``imgs/`` linked to another disk (or
    image files linked from elsewhere) load, and ``image_path`` stays the path inside the
    dataset (``root/imgs/xmlab1/source.jpg``) in either layout. A symlink loop is reported by
    the image check as an unreadable image.

    >>> layout = SlakeLayout(Path("/d"), Path("/d/imgs"), None, None)
    >>> resolve_image(layout, "xmlab1/../xmlab2/source.jpg", Path("/d/test.json"), "qid 1").as_posix()
    '/d/imgs/xmlab2/source.jpg'
    """
    if "\0" in img_name:
        raise DataError(path, f"contains a NUL byte: {img_name!r}", record=where, field="img_name")
    if Path(img_name).is_absolute() or not img_name:
        raise DataError(path, f"must be a relative path inside the dataset, found {img_name!r}",
                        record=where, field="img_name")
    # Collapsed as text, so the path opened has no '..' for the system to apply after a symlink.
    lexical = Path(os.path.normpath(layout.image_dir / img_name))
    if not lexical.is_relative_to(layout.root):
        raise DataError(path, f"{img_name!r} points outside the dataset root {layout.root}",
                        record=where, field="img_name")
    return lexical


def check_unique_qids(samples: list[VQASample], path: Path) -> None:
    seen: dict[int, int] = {}
    for index, sample in enumerate(samples):
        if sample.qid in seen:
            raise DataError(path, f"duplicate qid (also record #{seen[sample.qid]})",
                            record=f"qid {sample.qid} (record #{index})", field="qid")
        seen[sample.qid] = index


def check_images(samples: list[VQASample], path: Path, policy: str) -> list[VQASample]:
    """Keep samples whose image exists and decodes completely; raise or drop the others per ``policy``.

    Each distinct image is decoded once (:func:`slakevqa.data.images.image_problem`).
    """
    distinct = list(dict.fromkeys(s.image_path for s in samples))
    problems = image_problems(distinct, desc=f"checking images of {path.name}")
    kept = []
    for sample in samples:
        problem = problems[sample.image_path]
        if problem is None:
            kept.append(sample)
        elif policy == "error":
            raise DataError(path, f"{problem}: {sample.image_path} (use --missing_images skip to drop such records)",
                            record=f"qid {sample.qid}", field="img_name")
    if len(kept) < len(samples):
        bad = {s.image_path for s in samples if problems[s.image_path] is not None}
        log.warning("%s: skipped %d records on %d images that are missing, unreadable or too large",
                    path.name, len(samples) - len(kept), len(bad))
    return kept


def drop_empty_answers(samples: list[VQASample]) -> list[VQASample]:
    """Training cannot supervise an empty answer (SLAKE train qid 1622): drop and log them."""
    kept = [s for s in samples if s.answer]
    dropped = [s.qid for s in samples if not s.answer]
    if dropped:
        log.warning("dropped %d training records with an empty answer (qids %s)", len(dropped),
                    ", ".join(map(str, dropped[:10])))
    return kept


def cross_language_leak(root: str | Path) -> set[str]:
    """Images of the English test split that also carry Chinese training questions.

    The two languages of SLAKE use different image partitions, so training on
    both leaks test images (72 on real SLAKE).
    """
    zh_train = {s.image_key for s in load_split(root, "train", "zh", missing_images="skip")}
    en_test = {s.image_key for s in load_split(root, "test", "en", missing_images="skip")}
    return zh_train & en_test


def load_training_split(root: str | Path, split: str = "train", language: str = "en",
                        missing_images: str = "error") -> list[VQASample]:
    """:func:`load_split` for training: drops empty answers and warns about cross-language leakage."""
    samples = drop_empty_answers(load_split(root, split, language, missing_images))
    if language == "all":
        leaked = cross_language_leak(root)
        if leaked:
            log.warning("training on both languages: %d images of the English test split carry Chinese "
                        "training questions, so English test scores will be optimistic", len(leaked))
    return samples

