"""Bad inputs at the data layer (src/slakevqa/data/: splits, images, masks, boxes, KG): every case is one located
line or a counted skip, and no input changes.

One table, one test: each case breaks a fresh mini-SLAKE in one way, runs one entry point
(load a split, read the KG, the class map or the boxes, condition an image, the CLI) and
checks the one-line message names the file, the record (qid or line) and the field, and
that every input file is byte-for-byte what it was. A second table checks pixel values
of every image mode against :func:`slakevqa.data.images.load_rgb`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import struct
import warnings
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from conftest import default_splits, slake_row, write_mini_slake
from slakevqa.cli import main
from slakevqa.data import images, masks
from slakevqa.data.annotations import load_class_map, load_detections
from slakevqa.data.kg import load_kg
from slakevqa.data.slake import find_layout, load_split
from slakevqa.errors import DataError
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.vocab import build_closed_vocab

DEEP_JSON = "[" * 200_000 + "]" * 200_000


# ---------------------------------------------------------------- fixture helpers

def png(width: int, height: int) -> bytes:
    """A valid 1-bit gray PNG of zeros: 30000x30000 is 900 M pixels in ~110 kB (a decompression bomb)."""
    return _png(width, height)


@lru_cache(maxsize=4)
def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, packer = b"\0" * (1 + (width + 7) // 8), zlib.compressobj(9)
    body = b"".join(packer.compress(row * min(1000, height - done)) for done in range(0, height, 1000))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body + packer.flush()) + chunk(b"IEND", b"")


def noisy_jpeg(size: int = 64) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def noisy_png(size: int = 64) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (size, size, 3), np.uint8)).save(out, "PNG")
    return out.getvalue()


def base_slake(root: Path) -> Path:
    """conftest's mini-SLAKE plus boxes for image 0 and a two-language KG."""
    write_mini_slake(root)
    (root / "imgs/xmlab0/detection.json").write_text(json.dumps([{"Liver": [2.0, 3.0, 8.0, 6.0]}]))
    kg = root / "KG"
    kg.mkdir()
    for name, text in {"en_organ.csv": "organ#attribute#value\nLiver#function#detox\nLung#function#breathe\n",
                       "en_organ_rel.csv": "organ#attribute#value\nLiver#belong to#Digestive System\n",
                       "en_disease.csv": "disease#attribute#value\nLiver Cancer#location#Liver\n",
                       "organ.csv": "entity,property,value\n肝脏,功能,解毒\n",
                       "organ_rel.csv": "entity,property,value\n肝脏,属于,消化系统\n",
                       "disease.csv": "disease,relation,object\n肝癌,发病部位,肝脏\n"}.items():
        (kg / name).write_text(text, encoding="utf-8")
    return root


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root`` without following links: file hashes, link targets, folders."""
    seen: dict[str, object] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                seen[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                seen[rel] = "dir"
            else:
                seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


def train_rows(**overrides: object) -> Callable[[Path], None]:
    """Replace train record qid 2 (image 1) with one whose fields are ``overrides``, written as raw JSON."""
    def setup(root: Path) -> None:
        rows = default_splits()["train"]
        rows[2] = {**rows[2], **overrides}
        (root / "train.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return setup


def write_bytes(rel: str, data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / rel).write_bytes(data() if callable(data) else data)
    return setup


def truncated_image(kind: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        data = noisy_jpeg() if kind == "jpeg" else noisy_png()
        (root / "imgs/xmlab1/source.jpg").write_bytes(data[: len(data) * 6 // 10])
    return setup


def symlink_loop(root: Path) -> None:
    shutil.rmtree(root / "imgs/xmlab1")
    (root / "imgs/xmlab1").symlink_to("xmlab1b")
    (root / "imgs/xmlab1b").symlink_to("xmlab1")


def self_link(root: Path) -> None:
    image = root / "imgs/xmlab1/source.jpg"
    image.unlink()
    image.symlink_to("source.jpg")


def image_dir(root: Path) -> None:
    image = root / "imgs/xmlab1/source.jpg"
    image.unlink()
    image.mkdir()


def detections(text: str) -> Callable[[Path], None]:
    return write_bytes("imgs/xmlab0/detection.json", text.encode())


# ---------------------------------------------------------------- entry points

def run_entry(action: str, root: Path) -> object:
    """Call one data-layer entry point on ``root``; what it returns (kept qids, exit code, ...)."""
    if action in ("load", "skip"):
        kept = load_split(root, "train", "en", "error" if action == "load" else "skip")
        return [s.qid for s in kept]
    if action in ("kg_en", "kg_zh"):
        return len(load_kg(root / "KG", action[-2:]).facts)
    if action == "class_map":
        return load_class_map(root / "mask.txt")
    if action == "boxes":
        return load_detections(root / "imgs/xmlab0/detection.json")
    if action == "crop":  # what eval --mask_mode crop does per question
        sample = next(s for s in load_split(root, "train") if s.qid == 0)
        return masks.condition_image(sample, images.load_rgb(sample.image_path), "crop", 0.1, find_layout(root))
    if action.startswith("cli"):
        policy = ["--missing_images", "skip"] if action == "cli_skip" else []
        return main(["stats", "--slake_root", str(root), *policy])
    raise AssertionError(action)


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path], None]
    action: str
    fragments: tuple[str, ...]  # in the one-line message (error) or the log (skip)
    kept: tuple[int, ...] | None = None  # skip cases: the English train qids left

    def __repr__(self) -> str:
        return self.id


IMAGE = ("train.json", "qid 2", "field 'img_name'")
BOX = ("detection.json", "box #0", "field 'Liver'")
SKIPPED = ("train.json: skipped 2 records on 1 images",)
CASES = [
    # images: decoded completely when the records are loaded
    Case("truncated-jpeg", truncated_image("jpeg"), "load", IMAGE + ("image unreadable", "truncated",
                                                                     "xmlab1/source.jpg", "--missing_images skip")),
    Case("truncated-jpeg-skip", truncated_image("jpeg"), "skip", SKIPPED, kept=(0, 1)),
    Case("truncated-png", truncated_image("png"), "load", IMAGE + ("image unreadable",)),
    Case("empty-file", write_bytes("imgs/xmlab1/source.jpg", b""), "load", IMAGE + ("image unreadable",)),
    Case("not-an-image", write_bytes("imgs/xmlab1/source.jpg", b"GIF89a garbage"), "load",
         IMAGE + ("image unreadable",)),
    Case("bomb-30000", write_bytes("imgs/xmlab1/source.jpg", lambda: png(30000, 30000)), "load",
         IMAGE + ("image too large", "89,478,485")),
    Case("bomb-30000-skip", write_bytes("imgs/xmlab1/source.jpg", lambda: png(30000, 30000)), "skip",
         SKIPPED, kept=(0, 1)),
    Case("over-limit-under-pil-error", write_bytes("imgs/xmlab1/source.jpg", lambda: png(10000, 9000)), "load",
         IMAGE + ("image too large (10000x9000 = 90,000,000 pixels; the limit is 89,478,485)",)),
    Case("zero-width-png", write_bytes("imgs/xmlab1/source.jpg", lambda: png(0, 16)), "load", IMAGE),
    Case("symlink-loop-folder", symlink_loop, "load", IMAGE + ("symlink loop",)),
    Case("symlink-loop-folder-skip", symlink_loop, "skip", SKIPPED, kept=(0, 1)),
    Case("symlink-to-itself", self_link, "load", IMAGE + ("symlink loop",)),
    Case("image-is-a-folder", image_dir, "load", IMAGE + ("not a file",)),
    Case("nul-in-img-name", train_rows(img_name="xmlab1/source\u0000.jpg"), "load",
         IMAGE + ("NUL byte",)),
    # ids, languages and answers
    Case("superscript-qid", train_rows(qid="²"), "load",
         ("train.json", "qid ²", "field 'qid'", "expected an integer")),
    Case("arabic-indic-qid", train_rows(qid="١٢"), "load", ("train.json", "qid ١٢", "field 'qid'")),
    Case("fullwidth-img-id", train_rows(img_id="３"), "load", ("train.json", "qid 2", "field 'img_id'", "'３'")),
    Case("unknown-q-lang", train_rows(q_lang="fr"), "load", ("train.json", "qid 2", "field 'q_lang'", "'fr'")),
    Case("empty-q-lang", train_rows(q_lang=""), "load", ("train.json", "qid 2", "field 'q_lang'", "en or zh")),
    Case("numeric-q-lang", train_rows(q_lang=7), "load", ("train.json", "qid 2", "field 'q_lang'")),
    Case("nan-answer", train_rows(answer=float("nan")), "load", ("train.json", "qid 2", "field 'answer'", "nan")),
    Case("infinite-answer", train_rows(answer=float("inf")), "load", ("train.json", "qid 2", "field 'answer'")),
    Case("null-answer", train_rows(answer=None), "load", ("train.json", "qid 2", "field 'answer'", "missing value")),
    Case("pandas-nan-answer", train_rows(answer="NaN"), "load", ("train.json", "qid 2", "field 'answer'", "'nan'")),
    Case("cli-nan-answer", train_rows(answer=float("nan")), "cli", ("error: ", "train.json", "qid 2", "answer")),
    # split files
    Case("deep-json-split", write_bytes("train.json", DEEP_JSON.encode()), "load", ("train.json", "nested too deeply")),
    Case("latin1-split", write_bytes("train.json", '[\n{"question": "caf\xe9"}]'.encode("latin-1")), "load",
         ("train.json", "line 2", "not UTF-8")),
    # detection.json boxes
    Case("nan-box", detections('[{"Liver": [NaN, 3, 8, 6]}]'), "boxes", BOX + ("finite",)),
    Case("infinity-box", detections('[{"Liver": [2, 3, Infinity, 6]}]'), "boxes", BOX + ("finite",)),
    Case("minus-infinity-box", detections('[{"Liver": [-Infinity, 3, 8, 6]}]'), "boxes", BOX + ("finite",)),
    Case("negative-width-box", detections('[{"Liver": [2, 3, -8, 6]}]'), "boxes", BOX + (">= 0",)),
    Case("boolean-box", detections('[{"Liver": [true, 3, 8, 6]}]'), "boxes", BOX + ("numbers",)),
    Case("nan-box-crop", detections('[{"Liver": [NaN, 3, 8, 6]}]'), "crop", BOX + ("finite",)),
    Case("infinity-box-crop", detections('[{"Liver": [2, 3, 8, Infinity]}]'), "crop", BOX + ("finite",)),
    Case("deep-json-boxes", detections(DEEP_JSON), "boxes", ("detection.json", "nested too deeply")),
    Case("latin1-boxes", write_bytes("imgs/xmlab0/detection.json", '[{"L\xe9": [1, 2, 3, 4]}]'.encode("latin-1")),
         "boxes", ("detection.json", "line 1", "not UTF-8")),
    # masks and the class map
    Case("latin1-mask-txt", write_bytes("mask.txt", "70:Liver\n135:R\xe9nal".encode("latin-1")), "class_map",
         ("mask.txt", "line 2", "not UTF-8")),
    Case("fullwidth-mask-value", write_bytes("mask.txt", "７０:Liver".encode()), "class_map",
         ("mask.txt", "line 1", "expected 'value:Name'")),
    Case("latin1-mask-txt-crop", write_bytes("mask.txt", "70:Liver\n135:R\xe9nal".encode("latin-1")), "crop",
         ("mask.txt", "line 2", "not UTF-8")),
    Case("bomb-mask-png", write_bytes("imgs/xmlab0/mask.png", lambda: png(30000, 30000)), "crop",
         ("mask.png", "mask image too large")),
    Case("truncated-mask-png", write_bytes("imgs/xmlab0/mask.png", lambda: noisy_png()[:400]), "crop",
         ("mask.png", "mask image unreadable")),
    # knowledge graph
    Case("latin1-kg-en", write_bytes("KG/en_organ.csv", "organ#attribute#value\nLiver#function#d\xe9tox\n"
                                     .encode("latin-1")), "kg_en", ("en_organ.csv", "line 2", "not UTF-8")),
    Case("gbk-kg-zh", write_bytes("KG/disease.csv", "disease,relation,object\n肝癌,发病部位,肝脏\n"
                                  .encode("gbk")),
         "kg_zh", ("disease.csv", "line 2", "not UTF-8")),
    Case("kg-field-over-csv-limit", write_bytes("KG/en_organ.csv", ("organ#attribute#value\nLiver#function#"
                                                                    + "x" * 200_000 + "\n").encode()),
         "kg_en", ("en_organ.csv", "line 2", "field larger than field limit")),
    # the CLI: one line, exit 2; a counted skip exits 0
    Case("cli-truncated-jpeg", truncated_image("jpeg"), "cli", ("error: ",) + IMAGE + ("truncated",)),
    Case("cli-bomb", write_bytes("imgs/xmlab1/source.jpg", lambda: png(30000, 30000)), "cli",
         ("error: ",) + IMAGE + ("image too large",)),
    Case("cli-truncated-jpeg-skip", truncated_image("jpeg"), "cli_skip", SKIPPED, kept=()),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_located_line_and_changes_nothing(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    root = base_slake(tmp_path / "Slake1.0")
    case.setup(root)
    before = snapshot(root)
    images.clear_verdicts()
    masks.clear_caches()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        if case.action.startswith("cli"):
            code = run_entry(case.action, root)
            err = capsys.readouterr().err
            message = err.strip().splitlines()[-1] if err.strip() else ""
            assert code == (0 if case.action == "cli_skip" else 2), err
            assert "Traceback" not in err and (case.action == "cli_skip" or err.strip().count("\n") == 0), err
            found = caplog.text if case.action == "cli_skip" else message
        elif case.kept is not None:
            assert tuple(run_entry(case.action, root)) == case.kept
            found = caplog.text
        else:
            with pytest.raises(DataError) as error:
                run_entry(case.action, root)
            found = str(error.value)
            assert "\n" not in found
    for fragment in case.fragments:
        assert fragment in found, found
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert snapshot(root) == before


# ---------------------------------------------------------------- image modes: real pixel values

RAMP16 = np.arange(65536, dtype=np.uint32).reshape(256, 256)  # every 16-bit value once
EXPECTED16 = np.round(RAMP16 / 257).astype(np.uint8)  # 65535 / 255 = 257; no value sits on a .5


def save(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def palette_image() -> Image.Image:
    image = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    image.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * 759)
    return image


def rgba(alpha: int) -> Image.Image:
    return Image.fromarray(np.array([[[200, 100, 50, alpha]]], np.uint8), "RGBA")


# (id, file bytes, expected RGB array (H, W, 3) or gray (H, W) broadcast to 3 channels)
MODES = [
    ("I;16-png-ramp", lambda: save(Image.fromarray(RAMP16.astype(np.uint16)), "PNG"), EXPECTED16),
    ("I;16B-tiff-ramp", lambda: save(Image.frombytes("I;16B", (256, 256), RAMP16.astype(">u2").tobytes()), "TIFF"),
     EXPECTED16),
    ("I-tiff-ramp", lambda: save(Image.fromarray(RAMP16.astype(np.int32), "I"), "TIFF"), EXPECTED16),
    ("I-tiff-signed", lambda: save(Image.fromarray(np.array([[-1000, 1000, 3000]], np.int32), "I"), "TIFF"),
     np.array([[0, 128, 255]], np.uint8)),
    ("F-tiff-unit", lambda: save(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F"), "TIFF"),
     np.array([[0, 128, 255]], np.uint8)),
    ("F-tiff-hounsfield", lambda: save(Image.fromarray(np.array([[-1024.0, 0.0, 3071.0]], np.float32), "F"), "TIFF"),
     np.array([[0, 64, 255]], np.uint8)),
    ("F-tiff-nan", lambda: save(Image.fromarray(np.array([[np.nan, 0.2, 0.8, np.inf]], np.float32), "F"), "TIFF"),
     np.array([[0, 51, 204, 0]], np.uint8)),
    ("L-png", lambda: save(Image.fromarray(np.array([[0, 77, 255]], np.uint8)), "PNG"), np.array([[0, 77, 255]])),
    ("1-png", lambda: save(Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1"), "PNG"), np.array([[0, 255]])),
    ("P-png", lambda: save(palette_image(), "PNG"), np.array([[[10, 20, 30], [200, 100, 50]],
                                                             [[0, 255, 0], [200, 100, 50]]])),
    ("RGBA-opaque", lambda: save(rgba(255), "PNG"), np.array([[[200, 100, 50]]])),
    ("RGBA-transparent", lambda: save(rgba(0), "PNG"), np.array([[[0, 0, 0]]])),
    ("RGBA-half", lambda: save(rgba(128), "PNG"), np.array([[[100, 50, 25]]])),
    ("LA-half", lambda: save(Image.fromarray(np.array([[[200, 128]]], np.uint8), "LA"), "PNG"), np.array([[100]])),
    ("CMYK-tiff", lambda: save(Image.new("CMYK", (1, 1), (255, 0, 0, 0)), "TIFF"), np.array([[[0, 255, 255]]])),
]


@pytest.mark.parametrize("name,data,expected", MODES, ids=[m[0] for m in MODES])
def test_every_mode_becomes_8bit_rgb_with_the_right_values(tmp_path: Path, name: str, data: Callable[[], bytes],
                                                            expected: np.ndarray) -> None:
    path = tmp_path / "image"
    path.write_bytes(data())
    assert images.image_problem(path) is None
    out = images.load_rgb(path)
    expected = np.asarray(expected)
    expected = np.repeat(expected[..., None], 3, axis=-1) if expected.ndim == 2 else expected
    assert out.mode == "RGB"
    assert np.abs(np.asarray(out).astype(int) - expected).max() <= (1 if "half" in name else 0), np.asarray(out)


def test_the_model_sees_the_scaled_16bit_image(tmp_path: Path) -> None:
    """InputBuilder.image (training and evaluation) goes through load_rgb: not the all-white convert("RGB")."""
    root = write_mini_slake(tmp_path / "Slake1.0")
    (root / "imgs/xmlab0/source.jpg").write_bytes(save(Image.fromarray(RAMP16.astype(np.uint16)), "PNG"))
    samples = load_split(root, "train")
    builder = InputBuilder.create(find_layout(root), build_closed_vocab(samples))
    pixels = np.asarray(builder.image(next(s for s in samples if s.qid == 0)))
    assert np.array_equal(pixels[..., 0], EXPECTED16) and np.array_equal(pixels[..., 2], EXPECTED16)


def test_each_image_is_decoded_once_until_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_mini_slake(tmp_path / "Slake1.0", {"train": [slake_row(q, q % 2) for q in range(6)]})
    decoded: list[Path] = []
    real = images._decode_verdict
    monkeypatch.setattr(images, "_decode_verdict", lambda path: decoded.append(path) or real(path))
    images.clear_verdicts()
    load_split(root, "train")
    load_split(root, "train", missing_images="skip")
    assert sorted(p.parent.name for p in decoded) == ["xmlab0", "xmlab1"]
    (root / "imgs/xmlab1/source.jpg").write_bytes(noisy_jpeg()[:500])  # new size: decoded again, now refused
    with pytest.raises(DataError, match="qid 1: field 'img_name': image unreadable"):
        load_split(root, "train")
    assert len(decoded) == 3


@pytest.mark.real_data
def test_real_slake_images_all_decode(slake_root: Path) -> None:
    for split, count in (("train", 4919), ("validation", 1053), ("test", 1061)):
        assert len(load_split(slake_root, split)) == count
