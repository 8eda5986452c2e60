"""A learnable synthetic SLAKE, written in the official layout.

Every answer can only be known by looking at the image: which coloured organs
are drawn, in which half, how many, which is larger, and the modality drawn as
a background texture (see :mod:`slakevqa.data.synth_scene`). kvqa questions
ask for a KG fact about an organ named by its position, so they need the image
and the KG. It is the embedded default dataset of the demo and the proof that
training learns: a tiny LLaVA learns it on 2 CPU cores in a few minutes.

Layout written under ``out`` (as real ``Slake1.0/``, plus ``synthetic.json``)::

    train.json  validate.json  test.json     bilingual; qid blocks train en, train zh, val en, ...
    mask.txt                                 70:Liver ... (real SLAKE gray values)
    KG/en_disease.csv en_organ.csv en_organ_rel.csv disease.csv organ.csv organ_rel.csv
    imgs/xmlabN/source.jpg                   64x64 RGB JPEG
    imgs/xmlabN/mask.png                     CT/MRI only: label map, R=G=B=class id
    imgs/xmlabN/detection.json               [{"Liver": [x, y, w, h]}, ...]
    imgs/xmlabN/question.json                the image's records in both languages, without qid
    synthetic.json                           how it was made: seed, images, image size, version

Like real SLAKE, the English splits are image-disjoint and so are the Chinese
ones, but the two languages partition images slightly differently: a few
English test images carry Chinese training questions (and the reverse), so
:func:`slakevqa.data.slake.cross_language_leak` has something to find.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from slakevqa.data.synth_kg import kg_files
from slakevqa.data.synth_questions import Question, make_questions
from slakevqa.data.synth_scene import Scene, detection_boxes, draw_scene, mask_txt, sample_scene
from slakevqa.errors import UserError
from slakevqa.files import holds_files
from slakevqa.records import SLAKE_FIELDS

# 430 images -> 302 / 64 / 64: about 300 training images x 10 questions, the size a tiny
# LLaVA learns on 2 CPU cores in ~5 minutes (shared/reference/learnability.md).
DEFAULT_IMAGES = 430
DEFAULT_IMAGE_SIZE = 64
SPLIT_FILES: dict[str, str] = {"train": "train.json", "validate": "validate.json", "test": "test.json"}
HELD_OUT_SHARE = 0.15  # of images, for each of validate and test
MARKER_FILE = "synthetic.json"
FORMAT_VERSION = 1  # bump when the same seed would write different files
JPEG_QUALITY = 95  # with 4:4:4 chroma the organ colours stay within a few levels


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synthetic_slake` wrote: image and record counts per split and language."""

    out: Path
    seed: int
    images: int
    image_size: int
    split_images: dict[str, int]  # English partition: {"train": 302, "validate": 64, "test": 64}
    records: dict[str, dict[str, int]]  # {"train": {"en": 3104, "zh": 3102}, ...}
    seconds: float

    def lines(self) -> list[str]:
        """A small table for the terminal."""
        rows = [f"wrote a synthetic SLAKE to {self.out} (seed {self.seed}, {self.images} images of "
                f"{self.image_size} px) in {self.seconds:.1f} s",
                f"  {'split':<9} {'images':>6} {'en':>6} {'zh':>6}"]
        for split, count in self.split_images.items():
            langs = self.records[split]
            rows.append(f"  {split:<9} {count:>6} {langs['en']:>6} {langs['zh']:>6}")
        return rows


def partition(images: int, seed: int) -> dict[str, list[int]]:
    """The English split of image ids: 70 / 15 / 15 % at random, each list sorted.

    >>> {split: len(ids) for split, ids in partition(430, seed=0).items()}
    {'train': 302, 'validate': 64, 'test': 64}
    """
    held_out = max(1, round(images * HELD_OUT_SHARE))
    order = [int(i) for i in np.random.default_rng([seed, 0]).permutation(images)]
    test, validate, train = order[:held_out], order[held_out:2 * held_out], order[2 * held_out:]
    return {"train": sorted(train), "validate": sorted(validate), "test": sorted(test)}


def chinese_partition(english: dict[str, list[int]]) -> dict[str, list[int]]:
    """The Chinese split: the English one with a few train and test images swapped (1 in 20 of test).

    Real SLAKE's languages use different partitions (72 English test images carry Chinese
    training questions); this keeps that trap, small, so leak checks are exercised.
    """
    swap = max(1, len(english["test"]) // 20)
    train, test = english["train"], english["test"]
    return {"train": sorted(train[swap:] + test[:swap]), "validate": list(english["validate"]),
            "test": sorted(test[swap:] + train[:swap])}


def image_records(img_id: int, scene: Scene, questions: list[Question], lang: str) -> list[dict]:
    """The SLAKE records of one image in one language, every field but ``qid``. One record::

        {"img_id": 7, "img_name": "xmlab7/source.jpg", "question": "Does the picture contain liver?",
         "answer": "Yes", "q_lang": "en", "location": "Abdomen", "modality": "CT", "answer_type": "CLOSED",
         "base_type": "vqa", "content_type": "Organ", "triple": ["vhead", "_", "_"]}
    """
    rows = []
    for q in questions:
        english = lang == "en"
        rows.append({"img_id": img_id, "img_name": f"xmlab{img_id}/source.jpg",
                     "question": q.en if english else q.zh, "answer": q.en_answer if english else q.zh_answer,
                     "q_lang": lang, "location": scene.location(), "modality": scene.modality,
                     "answer_type": q.answer_type, "base_type": q.base_type, "content_type": q.content_type,
                     "triple": list(q.en_triple if english else q.zh_triple)})
    return rows


def split_files(questions: dict[int, list[dict]], english: dict[str, list[int]],
                chinese: dict[str, list[int]]) -> dict[str, list[dict]]:
    """Assemble the three split files with SLAKE's qid blocks (train en, train zh, validate en, ...).

    ``questions[img_id]`` holds that image's records of both languages, without qid.
    """
    files: dict[str, list[dict]] = {}
    qid = 0
    for split in SPLIT_FILES:
        records = []
        for lang, ids in (("en", english[split]), ("zh", chinese[split])):
            for img_id in ids:
                for row in questions[img_id]:
                    if row["q_lang"] == lang:
                        records.append({name: row[name] for name in SLAKE_FIELDS[:-1]} | {"qid": qid})
                        qid += 1
        files[split] = records
    return files


def _dumps(value: object) -> str:
    # One line, raw UTF-8 Chinese, as the release files are.
    return json.dumps(value, ensure_ascii=False)


def write_image(folder: Path, img_id: int, seed: int, image_size: int) -> list[dict]:
    """Draw image ``img_id`` into ``folder`` and return its records (both languages, no qid).

    Each image has its own random stream ``(seed, img_id)``, so an image does not change
    when ``images`` grows. X-ray folders get no ``mask.png``: real SLAKE's X-ray masks are
    box drawings, not label maps, and are left out of the shared copy.
    """
    rng = np.random.default_rng([seed, 1, img_id])
    scene = sample_scene(rng, image_size)
    picture, labels = draw_scene(scene, rng)
    questions = make_questions(scene, rng)
    records = image_records(img_id, scene, questions, "en") + image_records(img_id, scene, questions, "zh")
    folder.mkdir(parents=True)
    picture.save(folder / "source.jpg", format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    if scene.modality != "X-Ray":
        labels.convert("RGB").save(folder / "mask.png", format="PNG")
    (folder / "detection.json").write_text(_dumps(detection_boxes(labels, scene)), encoding="utf-8")
    (folder / "question.json").write_text(_dumps(records), encoding="utf-8")
    return records


def _check_arguments(seed: int, images: int, image_size: int) -> None:
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, got {seed}")
    if images < 3:
        raise UserError(f"--images must be at least 3 (one per split), got {images}")
    if image_size < 32:
        raise UserError(f"--image_size must be at least 32 px, got {image_size}")


def _prepare_target(out: Path, overwrite: bool) -> None:
    # Only ever delete a folder this generator wrote (it carries the marker file).
    if not out.exists() or (out.is_dir() and not holds_files(out)):
        return
    if not (out / MARKER_FILE).is_file():
        raise UserError(f"{out} exists and is not a synthetic SLAKE written by slakevqa synth; "
                        "choose an empty or new folder")
    if not overwrite:
        raise UserError(f"{out} already holds a synthetic SLAKE; pass --overwrite to replace it")


def _write_dataset(tmp: Path, seed: int, images: int, image_size: int) -> dict[str, list[dict]]:
    """Write every file into ``tmp``; return the split files' records."""
    tmp.mkdir(parents=True)
    questions = {img_id: write_image(tmp / "imgs" / f"xmlab{img_id}", img_id, seed, image_size)
                 for img_id in tqdm(range(images), desc="synth", unit="img", delay=1.0)}
    english = partition(images, seed)
    files = split_files(questions, english, chinese_partition(english))
    for split, name in SPLIT_FILES.items():
        (tmp / name).write_text(_dumps(files[split]), encoding="utf-8")
    (tmp / "mask.txt").write_text(mask_txt(), encoding="utf-8")
    (tmp / "KG").mkdir()
    for name, text in kg_files().items():
        (tmp / "KG" / name).write_text(text, encoding="utf-8")
    marker = {"generator": "slakevqa synth", "format_version": FORMAT_VERSION, "seed": seed,
              "images": images, "image_size": image_size, "splits": english}
    (tmp / MARKER_FILE).write_text(_dumps(marker), encoding="utf-8")
    return files


def write_synthetic_slake(out: Path, seed: int = 0, images: int = DEFAULT_IMAGES,
                          image_size: int = DEFAULT_IMAGE_SIZE, overwrite: bool = False) -> SynthSummary:
    """Write a complete synthetic SLAKE under ``out``; same seed, same bytes.

    Args:
        out: the dataset folder; created, or replaced when it holds an earlier synthetic
            SLAKE and ``overwrite`` is set. Anything else there is never touched.
        seed: picks scenes, questions and the split; any integer >= 0.
        images: number of images over all splits (70 / 15 / 15 %); ~10 English questions each.
        image_size: side of the square images in pixels (64 by default; shapes scale with it).
        overwrite: replace an earlier synthetic SLAKE at ``out``.

    Files are written to a temporary sibling folder and moved into place at the end,
    so an interrupted run leaves nothing half-written at ``out``.

    Example:
        >>> summary = write_synthetic_slake(Path("/tmp/synth"), seed=0)   # doctest: +SKIP
        >>> summary.split_images   # doctest: +SKIP
        {'train': 302, 'validate': 64, 'test': 64}
    """
    _check_arguments(seed, images, image_size)
    out = Path(out).expanduser()
    _prepare_target(out, overwrite)
    start = time.perf_counter()
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        files = _write_dataset(tmp, seed, images, image_size)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    records = {split: {lang: sum(r["q_lang"] == lang for r in rows) for lang in ("en", "zh")}
               for split, rows in files.items()}
    split_images = {split: len({r["img_id"] for r in rows if r["q_lang"] == "en"}) for split, rows in files.items()}
    return SynthSummary(out=out.resolve(), seed=seed, images=images, image_size=image_size,
                        split_images=split_images, records=records, seconds=time.perf_counter() - start)
