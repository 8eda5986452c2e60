"""The synthetic SLAKE: deterministic, in the official layout, and answerable only from the pixels.

The answerability tests recompute every answer with a pixel oracle that sees
nothing but ``source.jpg`` and the colour legend (organ -> colour), and the KG
files for kvqa answers: if the oracle agrees 100%, the answer lives in the image.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slakevqa.cli import main
from slakevqa.data.annotations import load_class_map, load_detections
from slakevqa.data.slake import cross_language_leak, load_split
from slakevqa.data.synth import write_synthetic_slake
from slakevqa.data.synth_scene import ORGANS
from slakevqa.errors import UserError
from slakevqa.records import SLAKE_FIELDS

SPLIT_FILES = ("train.json", "validate.json", "test.json")
ZH_NAMES = {kind.zh: kind.name for kind in ORGANS}
ZH_WORDS = {"包含": "Yes", "不包含": "No", "是的": "Yes", "不是": "No", "左侧": "Left", "右侧": "Right"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default-size dataset (430 images, well under a second)."""
    out = tmp_path_factory.mktemp("synth") / "slake"
    write_synthetic_slake(out, seed=0)
    return out


def _records(root: Path) -> list[dict]:
    return [row for name in SPLIT_FILES for row in json.loads((root / name).read_text(encoding="utf-8"))]


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- the pixel oracle -------------------------------------------------------------------------


def organ_masks(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Pixels of each legend colour (saturated and within 60 levels of it), for organs clearly drawn."""
    pixels = rgb.astype(np.int32)
    saturated = pixels.max(axis=-1) - pixels.min(axis=-1) > 80
    masks = {}
    for kind in ORGANS:
        near = np.linalg.norm(pixels - np.array(kind.rgb), axis=-1) < 60
        if (near & saturated).sum() >= 20:
            masks[kind.name] = near & saturated
    return masks


def texture(rgb: np.ndarray, masks: dict[str, np.ndarray]) -> str:
    """The modality from the gray background: noise (CT), row stripes (MRI) or a smooth ramp (X-Ray)."""
    gray = rgb.astype(np.float64).mean(axis=-1)
    colour = rgb.astype(np.int32).max(axis=-1) - rgb.astype(np.int32).min(axis=-1) > 25
    for mask in masks.values():
        colour |= mask
    # Grow the organ area by 2 px so JPEG halos at the edges do not count as background.
    for shift in (-2, -1, 1, 2):
        colour = colour | np.roll(colour, shift, axis=0) | np.roll(colour, shift, axis=1)
    rows = [gray[y][~colour[y]] for y in range(gray.shape[0]) if (~colour[y]).sum() >= 8]
    if np.median([row.std() for row in rows]) > 6:
        return "CT"
    means = np.array([row.mean() for row in rows])
    return "MRI" if np.abs(np.diff(means)).mean() > 5 else "X-Ray"


def look(path: Path) -> tuple[str, dict[str, tuple[str, int]]]:
    """``(modality, {organ: (side, area in pixels)})`` read from the picture alone."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    masks = organ_masks(rgb)
    half = rgb.shape[1] / 2
    organs = {name: ("Left" if np.nonzero(mask)[1].mean() < half else "Right", int(mask.sum()))
              for name, mask in masks.items()}
    return texture(rgb, masks), organs


def read_kg(root: Path) -> dict[tuple[str, str], str]:
    """``{(organ, attribute): value}`` from the English organ files."""
    facts = {}
    for name in ("en_organ.csv", "en_organ_rel.csv"):
        with open(root / "KG" / name, encoding="utf-8", newline="") as f:
            for organ, attribute, value in list(csv.reader(f, delimiter="#"))[1:]:
                facts[(organ, attribute)] = value
    return facts


def locate(phrase: str, organs: dict[str, tuple[str, int]]) -> str:
    """The organ a kvqa question points at: by side, or the largest."""
    if phrase == "the largest organ in this image":
        return max(organs, key=lambda name: organs[name][1])
    side = re.fullmatch(r"the organ on the (left|right) of this image", phrase).group(1).title()
    (name,) = [name for name, (where, _) in organs.items() if where == side]
    return name


def oracle(question: str, image: tuple[str, dict[str, tuple[str, int]]], kg: dict) -> str:
    """Answer an English question from what :func:`look` saw (and the KG)."""
    modality, organs = image
    name = {kind.name.lower(): kind.name for kind in ORGANS}
    if question == "What modality is used to take this image?":
        return modality
    if m := re.fullmatch(r"Is this an? (\S+) or (\S+) image\?", question):
        return modality
    if m := re.fullmatch(r"Is this an? (\S+)\?", question):
        return "Yes" if m.group(1) == modality else "No"
    if m := re.fullmatch(r"Does the picture contain (\w+)\?", question):
        return "Yes" if name[m.group(1)] in organs else "No"
    if m := re.fullmatch(r"Is the (\w+) on the left or right\?|Where is the (\w+)\?", question):
        return organs[name[m.group(1) or m.group(2)]][0]
    if question == "How many organs are in this image?":
        return str(len(organs))
    if m := re.fullmatch(r"Which is larger in this image, (\w+) or (\w+)\?", question):
        return max(name[m.group(1)], name[m.group(2)], key=lambda n: organs[n][1])
    if question == "What is the largest organ in this image?":
        return max(organs, key=lambda n: organs[n][1])
    if m := re.fullmatch(r"What is the function of (.+)\?", question):
        return kg[(locate(m.group(1), organs), "function")]
    if m := re.fullmatch(r"Which system does (.+) belong to\?", question):
        return kg[(locate(m.group(1), organs), "belong to")]
    if m := re.fullmatch(r"Which organ in this image belongs to the (.+)\?", question):
        (found,) = [n for n in organs if kg[(n, "belong to")].lower() == m.group(1)]
        return found
    raise AssertionError(f"the oracle does not know this question: {question!r}")


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_writes_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first = _hashes(write_synthetic_slake(tmp_path / "a", seed=3, images=24).out)
    again = _hashes(write_synthetic_slake(tmp_path / "b", seed=3, images=24).out)
    other = _hashes(write_synthetic_slake(tmp_path / "c", seed=4, images=24).out)
    assert first == again
    differing = [name for name in first.keys() & other.keys() if first[name] != other[name]]
    assert "train.json" in differing and sum(name.endswith("source.jpg") for name in differing) >= 20


def test_an_image_does_not_change_when_the_dataset_grows(tmp_path: Path) -> None:
    small = _hashes(write_synthetic_slake(tmp_path / "small", seed=0, images=10).out)
    large = _hashes(write_synthetic_slake(tmp_path / "large", seed=0, images=20).out)
    assert small["imgs/xmlab7/source.jpg"] == large["imgs/xmlab7/source.jpg"]


# --- layout and loaders ------------------------------------------------------------------------


def test_layout_matches_the_official_release(synth: Path) -> None:
    assert sorted(p.name for p in (synth / "KG").iterdir()) == [
        "disease.csv", "en_disease.csv", "en_organ.csv", "en_organ_rel.csv", "organ.csv", "organ_rel.csv"]
    headers = {"en_disease.csv": "disease#attribute#value", "en_organ.csv": "organ#attribute#value",
               "en_organ_rel.csv": "organ#attribute#value", "disease.csv": "disease,relation,object",
               "organ.csv": "entity,property,value", "organ_rel.csv": "entity,property,value"}
    for name, header in headers.items():
        lines = (synth / "KG" / name).read_text(encoding="utf-8").split("\n")
        assert lines[0] == header and len(lines) > 5
        sep = "#" if name.startswith("en_") else ","
        assert all(len(line.split(sep)) == 3 for line in lines)
    assert load_class_map(synth / "mask.txt") == {70: "Liver", 165: "Stomach", 180: "Heart",
                                                  230: "Spleen", 235: "Colon"}
    folders = sorted((synth / "imgs").iterdir(), key=lambda p: int(p.name[5:]))
    assert [p.name for p in folders] == [f"xmlab{i}" for i in range(430)]


def test_records_have_the_12_fields_string_answers_and_qid_blocks(synth: Path) -> None:
    blocks = []
    for name in SPLIT_FILES:
        rows = json.loads((synth / name).read_text(encoding="utf-8"))
        assert all(list(row) == list(SLAKE_FIELDS) for row in rows)
        assert all(isinstance(row["answer"], str) and row["answer"] for row in rows)
        blocks += [(name, row["q_lang"]) for row in rows]
    qids = [row["qid"] for row in _records(synth)]
    assert qids == list(range(len(qids)))
    assert list(dict.fromkeys(blocks)) == [(n, lang) for n in SPLIT_FILES for lang in ("en", "zh")]
    rows = _records(synth)
    assert {(r["answer_type"], r["content_type"], r["base_type"]) for r in rows} == {
        ("OPEN", "Modality", "vqa"), ("CLOSED", "Modality", "vqa"), ("CLOSED", "Organ", "vqa"),
        ("CLOSED", "Position", "vqa"), ("OPEN", "Position", "vqa"), ("OPEN", "Quantity", "vqa"),
        ("CLOSED", "Size", "vqa"), ("OPEN", "Size", "vqa"), ("OPEN", "KG", "kvqa")}
    assert all((r["triple"] == ["vhead", "_", "_"]) == (r["base_type"] == "vqa") for r in rows)


def test_the_loader_reads_every_split_and_language(synth: Path) -> None:
    for split in ("train", "validation", "test"):
        english, chinese = load_split(synth, split, "en"), load_split(synth, split, "zh")
        assert len(english) == len(chinese) > 600
        assert len(load_split(synth, split, "all")) == len(english) + len(chinese)
        assert {s.q_lang for s in chinese} == {"zh"}
    images = {split: {s.image_key for s in load_split(synth, split)} for split in ("train", "validation", "test")}
    assert [len(ids) for ids in images.values()] == [302, 64, 64]
    assert not (images["train"] & images["validation"] or images["train"] & images["test"]
                or images["validation"] & images["test"])
    assert len(cross_language_leak(synth)) == 3  # the small SLAKE-like cross-language trap


def test_label_maps_match_detection_boxes_and_the_picture(synth: Path) -> None:
    classes = {name: value for value, name in load_class_map(synth / "mask.txt").items()}
    modality = {r["img_id"]: r["modality"] for r in _records(synth)}
    for folder in sorted((synth / "imgs").iterdir())[:150]:
        boxes = load_detections(folder / "detection.json")
        assert 1 <= len(boxes) <= 3
        if modality[int(folder.name[5:])] == "X-Ray":
            assert not (folder / "mask.png").exists()
            continue
        labels = np.asarray(Image.open(folder / "mask.png"))
        assert labels.shape[-1] == 3  # RGB with R = G = B, like real SLAKE
        assert (labels == labels[..., :1]).all()
        assert set(np.unique(labels[..., 0])) == {0} | {classes[box.label] for box in boxes}
        picture = np.asarray(Image.open(folder / "source.jpg").convert("RGB")).astype(int)
        for box in boxes:
            ys, xs = np.nonzero(labels[..., 0] == classes[box.label])
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == box.corners()
            rgb = next(kind.rgb for kind in ORGANS if kind.name == box.label)
            # JPEG keeps the organ colour: the median pixel under the label is within a few levels.
            assert np.abs(np.median(picture[ys, xs], axis=0) - rgb).max() <= 6


# --- answerability -----------------------------------------------------------------------------


def test_every_english_answer_is_recomputed_from_the_pixels(synth: Path) -> None:
    kg = read_kg(synth)
    seen: dict[int, tuple] = {}
    wrong = []
    for row in _records(synth):
        if row["q_lang"] != "en":
            continue
        if row["img_id"] not in seen:
            seen[row["img_id"]] = look(synth / "imgs" / row["img_name"])
        if oracle(row["question"], seen[row["img_id"]], kg) != row["answer"]:
            wrong.append((row["qid"], row["question"], row["answer"]))
    assert wrong == []
    assert len(seen) == 430


def test_chinese_records_mirror_the_english_ones(synth: Path) -> None:
    zh_kg = {}
    for name in ("organ.csv", "organ_rel.csv"):
        zh_kg.update({(e, p): v for e, p, v in csv.reader((synth / "KG" / name).open(encoding="utf-8"))})
    for folder in sorted((synth / "imgs").iterdir())[:100]:
        rows = json.loads((folder / "question.json").read_text(encoding="utf-8"))
        english = [r for r in rows if r["q_lang"] == "en"]
        chinese = [r for r in rows if r["q_lang"] == "zh"]
        assert len(english) == len(chinese)
        for en, zh in zip(english, chinese):
            assert (en["answer_type"], en["content_type"]) == (zh["answer_type"], zh["content_type"])
            if en["base_type"] == "kvqa":
                assert zh["triple"][1] in ("功能", "属于")
                assert zh["answer"] in zh_kg.values() or ZH_NAMES.get(zh["answer"]) == en["answer"]
            else:
                assert ZH_WORDS.get(zh["answer"], ZH_NAMES.get(zh["answer"], zh["answer"])) == en["answer"]


def test_the_question_alone_does_not_tell_the_closed_answer(synth: Path) -> None:
    """Majority answer per question text, learnt on train, scores about chance on held-out CLOSED."""
    train = Counter((r["question"], r["answer"]) for r in json.loads((synth / "train.json").read_text())
                    if r["q_lang"] == "en" and r["answer_type"] == "CLOSED")
    majority: dict[str, tuple[int, str]] = defaultdict(lambda: (0, ""))
    for (question, answer), count in sorted(train.items()):
        majority[question] = max(majority[question], (count, answer))
    held_out = [r for name in ("validate.json", "test.json") for r in json.loads((synth / name).read_text())
                if r["q_lang"] == "en" and r["answer_type"] == "CLOSED"]
    hits = sum(majority[r["question"]][1] == r["answer"] for r in held_out)
    assert len(held_out) > 500
    assert hits / len(held_out) <= 0.6
    yes_no = [r["answer"] for r in _records(synth) if r["answer"] in ("Yes", "No")]
    assert 0.45 <= yes_no.count("Yes") / len(yes_no) <= 0.55


def test_kvqa_answers_need_the_image(synth: Path) -> None:
    """kvqa questions name organs by position, so one wording has several answers across images."""
    answers: dict[str, set[str]] = defaultdict(set)
    for row in _records(synth):
        if row["q_lang"] == "en" and row["base_type"] == "kvqa":
            answers[row["question"]].add(row["answer"])
    assert len(answers) >= 6
    assert all(len(values) >= 2 for values in answers.values())


# --- the command -------------------------------------------------------------------------------


def test_cli_writes_refuses_to_clobber_and_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "--images", "12", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "validate" in printed
    assert main(["synth", "--out", str(out), "--images", "12"]) == 2
    assert main(["synth", "--out", str(out), "--images", "9", "--overwrite"]) == 0
    assert len(list((out / "imgs").iterdir())) == 9  # the old, larger dataset is gone
    other = tmp_path / "not_ours"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a synthetic SLAKE"):
        write_synthetic_slake(other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    assert not list(tmp_path.glob(".*partial*"))
