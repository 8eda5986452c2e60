"""Segmentation-mask conditioning that works on real SLAKE.

Where a region comes from, per image, first that yields one:

1. a mask file (:func:`mask_candidates`). SLAKE keeps ``mask.png`` beside
   ``source.jpg``; CT/MRI masks are **label maps**, gray value = class id from
   ``mask.txt`` (RGB/RGBA with R=G=B: one channel is read)::

       70:Liver          pixels of gray value 70 are liver
       135:Left Kidney

   Files with only 0 and 255 (or 0 and 1) are **binary** masks. Colour drawings,
   such as SLAKE's X-ray ``mask.png`` (the X-ray with boxes painted on it), are
   not masks and are skipped.
2. ``detection.json`` **boxes** beside the image (``[{"Effusion": [x, y, w, h]}]``):
   the only real region source for SLAKE X-rays.

Which classes form the region follows the question
(:func:`slakevqa.data.mask_classes.region_classes`, re-exported here).
An image whose region is empty (61 SLAKE CT/MRI label maps are all background)
or that has no source at all is left unmodified, and :class:`MaskStats` counts it.

Caveat: the regions come from ground-truth annotations, so conditioning is an
oracle region of interest; e.g. whether "Does the picture contain liver?" crops
to a liver depends on the annotation. Report results with that in mind.

Parsed files are cached per path (SLAKE has ~11 questions per image); call
:func:`clear_caches` after changing files on disk.
"""

from __future__ import annotations

import difflib
import math
import threading
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from slakevqa.data.annotations import DETECTION_FILE, Box, load_class_map, load_detections
from slakevqa.data.images import describe_error, open_image, to_rgb
from slakevqa.data.mask_classes import choose_region, region_classes  # noqa: F401 - re-exported
from slakevqa.data.slake import IMAGE_DIRS, SlakeLayout
from slakevqa.errors import DataError, UserError
from slakevqa.records import VQASample

MASK_MODES: tuple[str, ...] = ("none", "crop", "masked")
SOURCES: tuple[str, ...] = ("label_map", "boxes", "binary", "none")
MASK_DIRS: tuple[str, ...] = ("mask", "masks", "seg", "segmentation")
MASK_SUFFIXES: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff")
IMAGE_SUFFIXES: tuple[str, ...] = MASK_SUFFIXES + (".jpg", ".jpeg")
# A gray file with more distinct values than this is a picture, not a label map.
MAX_LABEL_VALUES = 64


# ---------------------------------------------------------------- finding mask files

@lru_cache(maxsize=256)
def _listing(folder: Path) -> tuple[Path, ...]:
    # Cached: a flat folder of N images would otherwise be listed N times.
    return tuple(sorted(p for p in folder.iterdir() if p.is_file()))


def _beside_image(image_path: Path) -> list[Path]:
    """Files with ``mask`` in their name beside the image, this image's first.

    In a folder shared by several images only masks named after this image
    (``ct7_mask.png`` for ``ct7.jpg``) count; in a per-image folder (SLAKE's
    ``xmlabN/``) any ``*mask*`` file does.
    """
    files = [p for p in _listing(image_path.parent) if p != image_path]
    masks = [p for p in files if "mask" in p.stem.lower() and p.suffix.lower() in MASK_SUFFIXES]
    own = [p for p in masks if p.name.lower().startswith(image_path.stem.lower())]
    shared_folder = any(p.suffix.lower() in IMAGE_SUFFIXES and p not in masks for p in files)
    return own if shared_folder else own + [p for p in masks if p not in own]


def _keyed(image_path: Path, root: Path) -> list[Path]:
    """``{mask,masks,seg,segmentation}/`` candidates keyed by relative path, image folder, file stem.

    For ``imgs/xmlab7/source.jpg``: ``masks/xmlab7/source.png``, ``masks/xmlab7.png``,
    ``masks/xmlab7/mask.png``, any single file in ``masks/xmlab7/``, ``masks/source.png``,
    ``masks/source_mask.png``; the same under ``mask/``, ``seg/``, ``segmentation/``.
    """
    try:
        rel = image_path.relative_to(root)
    except ValueError:
        rel = Path(image_path.name)
    if len(rel.parts) > 1 and rel.parts[0] in IMAGE_DIRS:
        rel = Path(*rel.parts[1:])
    folder = rel.parent.name  # "" for a flat image folder: no folder key then
    found: list[Path] = []
    for base in (root / d for d in MASK_DIRS if (root / d).is_dir()):
        names = [str(rel.with_suffix(s)) for s in MASK_SUFFIXES]
        if folder:
            names += [folder + s for s in MASK_SUFFIXES] + [f"{folder}/mask{s}" for s in MASK_SUFFIXES]
        found += [base / n for n in names if (base / n).is_file()]
        if folder and (base / folder).is_dir():
            inside = sorted(p for p in (base / folder).iterdir() if p.suffix.lower() in MASK_SUFFIXES)
            found += inside if len(inside) == 1 else []
        found += [base / f"{rel.stem}{tail}{s}" for tail in ("", "_mask") for s in MASK_SUFFIXES
                  if (base / f"{rel.stem}{tail}{s}").is_file()]
    return found


@lru_cache(maxsize=4096)
def mask_candidates(image_path: Path, dataset_root: Path) -> tuple[Path, ...]:
    """Existing mask files for an image, most specific first (beside the image, then keyed folders)."""
    image_path, root = Path(image_path), Path(dataset_root)
    return tuple(dict.fromkeys(_beside_image(image_path) + _keyed(image_path, root)))


def find_mask(image_path: str | Path, dataset_root: str | Path) -> Path | None:
    """The first mask file of an image, or None.

    Example: SLAKE's ``imgs/xmlab0/source.jpg`` -> ``imgs/xmlab0/mask.png``; a flat
    ``images/ct7.jpg`` -> ``images/ct7_mask.png`` or ``masks/ct7.png`` (also ``mask/``,
    ``seg/``, ``segmentation/``). Whether it holds a usable mask is decided on reading.
    """
    candidates = mask_candidates(Path(image_path), Path(dataset_root))
    return candidates[0] if candidates else None


# ---------------------------------------------------------------- reading masks

@dataclass(frozen=True, eq=False)
class MaskFile:
    """One decoded mask file: ``kind`` is ``label_map`` or ``binary``; ``values`` the non-zero ones."""

    kind: str
    array: np.ndarray
    values: frozenset[int]


@lru_cache(maxsize=64)
def read_mask(path: Path, known_values: frozenset[int] = frozenset()) -> MaskFile | None:
    """Decode a mask file; None when it is a picture rather than a mask.

    A gray file (or RGB/RGBA with R=G=B) whose non-zero values are ``mask.txt``
    keys is a label map; one with only 0/255 or 0/1 is binary; else up to
    :data:`MAX_LABEL_VALUES` distinct values is a label map of unnamed classes.
    Colour (SLAKE's X-ray drawings) or photographic content gives None.
    """
    try:
        with open_image(path) as image:  # the pixel limit of source images holds for masks too
            image = image.getchannel(0) if image.mode in ("LA", "PA", "La") else image
            array = np.asarray(image.convert("L") if image.mode == "1" else image)
    except DataError as error:
        raise DataError(path, f"mask {error.problem}") from None
    except Exception as error:  # truncated or corrupt data: PIL raises OSError, ValueError, SyntaxError, ...
        raise DataError(path, f"mask image unreadable ({describe_error(error)})") from None
    if array.ndim == 3:
        color = array[..., :3]
        if not (color == color[..., :1]).all():
            return None
        array = color[..., 0]
    array.flags.writeable = False  # shared by every question on the image through the cache
    values = frozenset(int(v) for v in np.unique(array)) - {0}
    if known_values and values <= known_values:
        return MaskFile("label_map", array, values)
    if values <= {255} or values <= {1}:
        return MaskFile("binary", array, values)
    return MaskFile("label_map", array, values) if len(values) <= MAX_LABEL_VALUES else None


@lru_cache(maxsize=8)
def _class_map(path: Path | None) -> dict[int, str]:
    return load_class_map(path) if path is not None else {}


@lru_cache(maxsize=1024)
def _image_size(path: Path) -> tuple[int, int]:
    with open_image(path) as image:
        return image.size


@lru_cache(maxsize=1024)
def _boxes(path: Path) -> tuple[Box, ...] | None:
    """The boxes of one ``detection.json``; None when the file does not exist."""
    return tuple(load_detections(path)) if path.is_file() else None


def clear_caches() -> None:
    """Forget every parsed file (after masks change on disk)."""
    for cached in (_listing, mask_candidates, read_mask, _class_map, _image_size, _boxes):
        cached.cache_clear()


# ---------------------------------------------------------------- regions

@dataclass(frozen=True, eq=False)
class MaskResult:
    """The region of one question.

    ``region`` is a boolean H×W array in source-image pixels (None: no source at
    all); ``source`` one of :data:`SOURCES`; ``classes`` the classes it unites
    (sorted; empty for binary masks); ``rule`` ``named``/``lesion``/``all``
    (see :func:`region_classes`), ``binary``, or ``none`` when nothing is
    labelled; ``path`` the file read.
    """

    region: np.ndarray | None
    source: str
    classes: tuple[str, ...] = ()
    rule: str = "none"
    path: Path | None = None

    @property
    def status(self) -> str:
        """``applied`` (non-empty region), ``empty`` (a source, no pixels) or ``missing`` (no source)."""
        if self.region is None:
            return "missing"
        return "applied" if self.region.any() else "empty"


def _fit(region: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``region`` resized (nearest) to ``size`` = (width, height) when it differs."""
    if region.shape == (size[1], size[0]):
        return region
    return np.asarray(Image.fromarray(region.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0


def box_region(boxes: list[Box] | tuple[Box, ...], size: tuple[int, int]) -> np.ndarray:
    """Union of boxes as a boolean (height, width) array; float edges round outwards."""
    region = np.zeros((size[1], size[0]), dtype=bool)
    for box in boxes:
        left, top, right, bottom = box.corners()
        x0, y0 = max(0, math.floor(left)), max(0, math.floor(top))
        x1, y1 = min(size[0], max(math.ceil(right), x0 + 1)), min(size[1], max(math.ceil(bottom), y0 + 1))
        region[y0:y1, x0:x1] = True
    return region


def _from_file(sample: VQASample, mask: MaskFile, class_map: dict[int, str], path: Path) -> MaskResult:
    size = _image_size(sample.image_path)
    if mask.kind == "binary":
        return MaskResult(_fit(mask.array > 0, size), "binary", (), "binary", path)
    names = {class_map.get(v, f"class {v}"): v for v in mask.values}
    chosen, rule = choose_region(sample.question, sample.content_type, set(names), set(class_map.values()))
    chosen = set(names) if chosen is None else chosen
    region = np.isin(mask.array, [names[c] for c in chosen])
    return MaskResult(_fit(region, size), "label_map", tuple(sorted(chosen)), rule, path)


def _from_boxes(sample: VQASample, boxes: tuple[Box, ...], vocabulary: set[str], path: Path) -> MaskResult:
    labels = {box.label for box in boxes}
    chosen, rule = choose_region(sample.question, sample.content_type, labels, vocabulary)
    chosen = labels if chosen is None else chosen
    region = box_region([b for b in boxes if b.label in chosen], _image_size(sample.image_path))
    return MaskResult(region, "boxes", tuple(sorted(chosen)), rule, path)


def _empty(sample: VQASample, source: str, path: Path) -> MaskResult:
    """A source exists but labels nothing (61 SLAKE CT/MRI label maps are all background)."""
    return MaskResult(np.zeros(_image_size(sample.image_path)[::-1], bool), source, (), "none", path)


def region_mask(sample: VQASample, layout: SlakeLayout) -> MaskResult:
    """The region of ``sample``'s image its question is about.

    A usable mask file with labelled pixels wins (label map: the classes chosen by
    :func:`region_classes` from ``layout.mask_map``; binary: all its pixels); else
    ``detection.json`` boxes (SLAKE X-rays), chosen the same way. When a source
    exists but holds nothing, the result is ``empty`` under that source; with no
    source it is ``missing``.
    """
    class_map = _class_map(layout.mask_map)
    first_empty: MaskResult | None = None
    for path in mask_candidates(sample.image_path, layout.root):
        mask = read_mask(path, frozenset(class_map))
        if mask is None:
            continue  # a drawing (SLAKE X-ray mask.png), not a mask: fall through to the boxes
        if mask.values:
            return _from_file(sample, mask, class_map, path)
        first_empty = first_empty or _empty(sample, mask.kind, path)
    detection = sample.image_path.parent / DETECTION_FILE
    boxes = _boxes(detection)
    if boxes:
        return _from_boxes(sample, boxes, set(class_map.values()), detection)
    if first_empty is None and boxes is not None:
        first_empty = _empty(sample, "boxes", detection)
    return first_empty or MaskResult(None, "none")


# ---------------------------------------------------------------- applying

def check_mode(mode: str, pad_ratio: float = 0.0) -> None:
    """UserError for an unknown mask mode (with a suggestion) or a negative pad ratio."""
    if mode not in MASK_MODES:
        close = difflib.get_close_matches(mode, MASK_MODES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown mask mode '{mode}': use one of {', '.join(MASK_MODES)}.{hint}")
    if not pad_ratio >= 0:
        raise UserError(f"--mask_pad_ratio must be >= 0, got {pad_ratio}")


def crop_box(region: np.ndarray, pad_ratio: float) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the region's bounding box, padded and clipped.

    Each side grows by ``pad_ratio`` × the box size along that axis, rounded half
    up, then is clipped to the image. Rows 10-19 and columns 20-39 of a 100×100
    region with ``pad_ratio=0.1`` give ``(18, 9, 42, 21)``.
    """
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    pad_x, pad_y = int(pad_ratio * (right - left) + 0.5), int(pad_ratio * (bottom - top) + 0.5)
    height, width = region.shape
    return max(0, left - pad_x), max(0, top - pad_y), min(width, right + pad_x), min(height, bottom + pad_y)


def apply_mask(image: Image.Image, region: np.ndarray | None, mode: str, pad_ratio: float = 0.10) -> Image.Image:
    """Condition an image on a region.

    ``none`` returns ``image`` itself; ``crop`` the padded bounding box
    (:func:`crop_box`); ``masked`` the image with every pixel outside the region
    black. An empty or None region returns ``image`` itself in every mode (the
    reference toolkit blacked out whole images here). A region of another size is
    resized (nearest) to the image first.
    """
    check_mode(mode, pad_ratio)
    if mode == "none" or region is None or not region.any():
        return image
    region = _fit(region, image.size)
    if mode == "crop":
        return image.crop(crop_box(region, pad_ratio))
    stencil = Image.fromarray(region.astype(np.uint8) * 255)
    return Image.composite(image, Image.new(image.mode, image.size), stencil)


@dataclass
class MaskStats:
    """How many images were conditioned, and why the others were left unmodified.

    ``counts[(modality, status)]`` with status ``applied``/``empty``/``missing``;
    ``sources`` and ``rules`` count :attr:`MaskResult.source` and ``rule``.
    """

    counts: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)
    rules: Counter = field(default_factory=Counter)
    # images are prepared by worker threads too (slakevqa.inputs.image_prefetch): one count at a time
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, result: MaskResult, modality: str) -> None:
        with self.lock:
            self.counts[(modality, result.status)] += 1
            self.sources[result.source] += 1
            self.rules[result.rule] += 1

    def total(self, status: str) -> int:
        """Records of one status over all modalities."""
        with self.lock:
            return status_total(self.counts, status)

    @property
    def unmodified(self) -> int:
        return self.total("empty") + self.total("missing")

    def as_dict(self) -> dict:
        """``{"applied": 5, "empty": 1, "missing": 0, "by_modality": {"CT": {...}}, "sources": {...}, ...}``."""
        with self.lock:  # a snapshot: a worker may be recording
            counts, sources, rules = Counter(self.counts), dict(self.sources), dict(self.rules)
        by_modality: dict[str, dict[str, int]] = {}
        for (modality, status), n in sorted(counts.items()):
            by_modality.setdefault(modality, {"applied": 0, "empty": 0, "missing": 0})[status] = n
        totals = {status: status_total(counts, status) for status in ("applied", "empty", "missing")}
        return {**totals, "by_modality": by_modality, "sources": sources, "rules": rules}


def status_total(counts: Counter, status: str) -> int:
    """``counts[(modality, status)]`` summed over the modalities."""
    return sum(n for (_, s), n in counts.items() if s == status)


def condition_image(sample: VQASample, image: Image.Image, mode: str, pad_ratio: float,
                    layout: SlakeLayout, stats: MaskStats | None = None) -> Image.Image:
    """The one entry point training and evaluation share: ``sample``'s image conditioned on its region.

    ``mode="none"`` returns ``image`` untouched without reading any mask (and
    counts nothing). Otherwise the result is recorded in ``stats`` when given.

    Example::

        stats = MaskStats()
        image = condition_image(sample, images.load_rgb(sample.image_path), "crop", 0.1, layout, stats)
        print(stats.as_dict())   # {"applied": 1, "empty": 0, "missing": 0, ...}
    """
    check_mode(mode, pad_ratio)
    if mode == "none":
        return image
    result = region_mask(sample, layout)
    if stats is not None:
        stats.record(result, sample.modality)
    return apply_mask(image, result.region, mode, pad_ratio)


def overlay(image: Image.Image, result: MaskResult, pad_ratio: float) -> Image.Image:
    """The image with the region tinted red (alpha 0.4) and the crop box outlined in yellow."""
    shown = to_rgb(image)
    if result.status != "applied":
        return shown
    red = Image.new("RGB", shown.size, (255, 0, 0))
    stencil = Image.fromarray(result.region.astype(np.uint8) * 102)  # 102/255 = alpha 0.4
    shown = Image.composite(red, shown, stencil)
    left, top, right, bottom = crop_box(result.region, pad_ratio)
    ImageDraw.Draw(shown).rectangle((left, top, right - 1, bottom - 1), outline=(255, 255, 0), width=2)
    return shown
