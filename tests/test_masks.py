"""Mask conditioning: real SLAKE CT/MRI/X-ray records (SLAKE_ROOT) and synthetic layouts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slakevqa.cli import main
from slakevqa.data import masks
from slakevqa.data.mask_classes import region_classes
from slakevqa.data.slake import SlakeLayout, find_layout, load_split
from slakevqa.errors import UserError
from slakevqa.records import VQASample

SLAKE_ROOT = os.environ.get("SLAKE_ROOT")
NO_SLAKE = "SLAKE_ROOT is not set: real-SLAKE mask tests need the Slake1.0 folder (SLAKE_ROOT=.../Slake1.0)"


# ---------------------------------------------------------------- real SLAKE

@pytest.fixture(scope="module")
def slake() -> tuple[SlakeLayout, dict[int, VQASample]]:
    return find_layout(SLAKE_ROOT), {s.qid: s for s in load_split(SLAKE_ROOT, "test")}


def _label_pixels(sample: VQASample, gray: int) -> np.ndarray:
    return np.asarray(Image.open(sample.image_path.parent / "mask.png"))[..., 0] == gray


def _rgb(sample: VQASample) -> Image.Image:
    return Image.open(sample.image_path).convert("RGB")


@pytest.mark.real_data
@pytest.mark.skipif(not SLAKE_ROOT, reason=NO_SLAKE)
class TestRealSlake:
    def test_ct_named_organ_crops_to_its_label_pixels(self, slake):
        layout, samples = slake
        sample = samples[12083]
        assert (sample.modality, sample.question) == ("CT", "Where is the liver?")
        result = masks.region_mask(sample, layout)
        assert (result.source, result.rule, result.classes) == ("label_map", "named", ("Liver",))
        liver = _label_pixels(sample, 70)  # mask.txt: 70:Liver
        assert liver.any() and np.array_equal(result.region, liver)
        rows, cols = np.flatnonzero(liver.any(1)), np.flatnonzero(liver.any(0))
        h, w = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
        pad_y, pad_x = int(0.1 * h + 0.5), int(0.1 * w + 0.5)
        box = (max(0, cols[0] - pad_x), max(0, rows[0] - pad_y), min(512, cols[-1] + 1 + pad_x),
               min(512, rows[-1] + 1 + pad_y))
        stats = masks.MaskStats()
        cropped = masks.condition_image(sample, _rgb(sample), "crop", 0.1, layout, stats)
        assert cropped.size == (box[2] - box[0], box[3] - box[1]) and cropped.size != (512, 512)
        assert np.array_equal(np.asarray(cropped), np.asarray(_rgb(sample).crop(box)))
        assert stats.as_dict()["by_modality"] == {"CT": {"applied": 1, "empty": 0, "missing": 0}}

    def test_mri_masked_keeps_only_the_named_lesion(self, slake):
        layout, samples = slake
        sample = samples[12645]
        assert (sample.modality, sample.question) == ("MRI", "Where is the brain edema?")
        original = np.asarray(_rgb(sample))
        masked = np.asarray(masks.condition_image(sample, _rgb(sample), "masked", 0.1, layout))
        edema = _label_pixels(sample, 95)  # mask.txt: 95:Brain Edema
        assert 0 < edema.sum() < edema.size
        assert (masked[~edema] == 0).all()
        assert np.array_equal(masked[edema], original[edema])

    def test_xray_region_comes_from_detection_boxes(self, slake):
        layout, samples = slake
        sample = samples[12006]
        assert (sample.modality, sample.question) == ("X-Ray", "Where is/are the abnormality located?")
        assert not (sample.image_path.parent / "mask.png").exists()
        result = masks.region_mask(sample, layout)
        assert (result.source, result.rule, result.classes) == ("boxes", "lesion", ("Atelectasis", "Mass"))
        inside = np.zeros((1024, 1024), bool)
        inside[569:678, 170:333] = True  # Atelectasis [170, 569, 163, 109]
        inside[389:503, 336:475] = True  # Mass [336, 389, 139, 114]
        assert np.array_equal(result.region, inside)
        masked = np.asarray(masks.apply_mask(_rgb(sample), result.region, "masked", 0.1))
        assert (masked[~inside] == 0).all() and masked[inside].any()

    def test_empty_label_map_leaves_image_unmodified_and_is_counted(self, slake):
        layout, samples = slake
        sample = samples[12992]
        assert sample.image_key == "xmlab93"
        assert not np.asarray(Image.open(sample.image_path.parent / "mask.png"))[..., :3].any()
        stats = masks.MaskStats()
        original = _rgb(sample)
        for mode in masks.MASK_MODES:
            out = masks.condition_image(sample, original, mode, 0.1, layout, stats)
            assert np.array_equal(np.asarray(out), np.asarray(original))
        assert (stats.total("empty"), stats.total("applied"), stats.unmodified) == (2, 0, 2)  # "none" is not counted
        assert stats.sources == {"label_map": 2}

    @pytest.mark.parametrize("qid, question, classes", [
        (12128, "Where is/are the abnormality located?", ("Liver Cancer",)),
        (12638, "Is the tumor enhancing?", ("Brain Enhancing Tumor", "Brain Non-enhancing Tumor")),
        (12628, "Is the brain healthy?", ("Brain Edema", "Brain Enhancing Tumor", "Brain Non-enhancing Tumor")),
    ])
    def test_abnormality_questions_pick_lesion_classes(self, slake, qid, question, classes):
        layout, samples = slake
        assert samples[qid].question == question
        assert masks.region_mask(samples[qid], layout).classes == classes

    def test_whole_english_test_split_counts(self, slake):
        layout, samples = slake
        stats = masks.MaskStats()
        for sample in samples.values():
            stats.record(masks.region_mask(sample, layout), sample.modality)
        assert stats.as_dict()["by_modality"] == {"CT": {"applied": 424, "empty": 48, "missing": 0},
                                                  "MRI": {"applied": 195, "empty": 33, "missing": 0},
                                                  "X-Ray": {"applied": 361, "empty": 0, "missing": 0}}
        assert stats.sources == {"label_map": 700, "boxes": 361}

    def test_cli_writes_original_mask_and_result(self, tmp_path, capsys):
        assert main(["masks", "--slake_root", SLAKE_ROOT, "--qid", "12083", "--out", str(tmp_path),
                     "--mask_mode", "masked"]) == 0
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == ["12083_mask.png", "12083_masked.png", "12083_original.png", "12083_overlay.png"]
        assert "region Liver (rule named) from label_map mask.png" in capsys.readouterr().out
        assert Image.open(tmp_path / "12083_mask.png").getextrema() == (0, 255)


# ---------------------------------------------------------------- synthetic layouts

def _sample(image_path: Path, question: str = "What is shown?", content_type: str = "Organ",
            modality: str = "CT") -> VQASample:
    return VQASample(qid=1, img_id=1, img_name=image_path.name, question=question, answer="", q_lang="en",
                     location="Abdomen", modality=modality, answer_type="OPEN", base_type="vqa",
                     content_type=content_type, triple=("vhead", "_", "_"), image_path=image_path)


def _dataset(root: Path, image_rel: str, size: int = 40) -> tuple[SlakeLayout, Path]:
    """An image of ``size``² gray 200 at ``root/image_rel``; the layout has no mask.txt unless written."""
    image = root / image_rel
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (200, 200, 200)).save(image)
    mask_map = root / "mask.txt"
    return SlakeLayout(root, root / "imgs", mask_map if mask_map.exists() else None, None), image


def _square(size: int, top: int, left: int, side: int, value: int = 255) -> np.ndarray:
    array = np.zeros((size, size), np.uint8)
    array[top:top + side, left:left + side] = value
    return array


def _write_mask(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("image_rel, mask_rel", [
    ("imgs/ct7.jpg", "mask/ct7.png"),
    ("imgs/ct7.jpg", "seg/ct7_mask.png"),
    ("imgs/case3/scan.jpg", "masks/case3/mask.png"),
    ("imgs/case3/scan.jpg", "masks/case3.png"),
    ("imgs/case3/scan.jpg", "segmentation/case3/scan.png"),
    ("imgs/case3/scan.jpg", "seg/case3/anything.png"),
    ("imgs/ct7.jpg", "imgs/ct7_mask.png"),
    ("imgs/case3/scan.jpg", "imgs/case3/organ_mask.png"),
    ("imgs/case3/scan.jpg", "imgs/case3/mask.png"),
])
def test_masks_found_in_other_layouts(tmp_path, image_rel, mask_rel):
    layout, image = _dataset(tmp_path, image_rel)
    if "case3" not in image_rel:  # a flat folder shared with another image
        Image.new("RGB", (40, 40)).save(image.parent / "other.jpg")
    mask = _write_mask(tmp_path / mask_rel, _square(40, 5, 10, 8))
    assert masks.find_mask(image, tmp_path) == mask
    result = masks.region_mask(_sample(image), layout)
    assert (result.source, result.status, int(result.region.sum())) == ("binary", "applied", 64)
    assert result.region[5:13, 10:18].all()


def test_flat_folder_ignores_other_images_masks(tmp_path):
    layout, image = _dataset(tmp_path, "imgs/ct7.jpg")
    Image.new("RGB", (40, 40)).save(tmp_path / "imgs/ct8.jpg")
    _write_mask(tmp_path / "imgs/ct8_mask.png", _square(40, 0, 0, 4))
    assert masks.find_mask(image, tmp_path) is None
    assert masks.region_mask(_sample(image), layout).status == "missing"


@pytest.mark.parametrize("value", [1, 255])
def test_binary_masks_of_zero_one_and_zero_255(tmp_path, value):
    layout, image = _dataset(tmp_path, "imgs/ct7.jpg")
    _write_mask(tmp_path / "masks/ct7.png", _square(40, 2, 3, 5, value))
    result = masks.region_mask(_sample(image), layout)
    assert (result.source, result.rule, int(result.region.sum())) == ("binary", "binary", 25)


def test_label_map_with_mask_txt_follows_the_question(tmp_path):
    (tmp_path / "mask.txt").write_text("70:Liver\n135:Left Kidney\n155:Right Kidney")
    layout, image = _dataset(tmp_path, "imgs/xmlab0/source.jpg")
    label_map = _square(40, 0, 0, 10, 70) + _square(40, 20, 0, 5, 135) + _square(40, 20, 30, 5, 155)
    rgba = np.dstack([label_map] * 3 + [np.full((40, 40), 255, np.uint8)])  # SLAKE's RGBA form
    _write_mask(tmp_path / "imgs/xmlab0/mask.png", rgba)
    kidneys = masks.region_mask(_sample(image, "How many kidneys are shown?", "Quantity"), layout)
    assert (kidneys.source, kidneys.rule, kidneys.classes) == ("label_map", "named", ("Left Kidney", "Right Kidney"))
    assert np.array_equal(kidneys.region, np.isin(label_map, [135, 155]))
    absent = masks.region_mask(_sample(image, "Does the picture contain heart?"), layout)
    assert (absent.rule, int(absent.region.sum())) == ("all", 100 + 25 + 25)


def test_label_map_without_mask_txt_names_classes_by_value(tmp_path):
    layout, image = _dataset(tmp_path, "imgs/ct7.jpg")
    _write_mask(tmp_path / "segmentation/ct7.png", _square(40, 0, 0, 4, 3) + _square(40, 10, 10, 4, 7))
    result = masks.region_mask(_sample(image), layout)
    assert (result.source, result.classes, int(result.region.sum())) == ("label_map", ("class 3", "class 7"), 32)


def test_colour_drawing_is_not_a_mask_and_boxes_are_used(tmp_path):
    layout, image = _dataset(tmp_path, "imgs/xmlab120/source.jpg")
    drawing = np.zeros((40, 40, 3), np.uint8)
    drawing[..., 0] = np.arange(40)[:, None] * 6  # a coloured picture, like SLAKE's X-ray mask.png
    _write_mask(tmp_path / "imgs/xmlab120/mask.png", drawing)
    (image.parent / "detection.json").write_text(json.dumps([{"Effusion": [4.5, 6.0, 10.0, 5.0]}]))
    result = masks.region_mask(_sample(image, "Where is the effusion?", "Position", "X-Ray"), layout)
    assert (result.source, result.classes) == ("boxes", ("Effusion",))
    assert np.array_equal(np.argwhere(result.region)[[0, -1]], [[6, 4], [10, 14]])  # x 4.5..14.5 rounds outwards


def test_mask_resized_to_the_image(tmp_path):
    layout, image = _dataset(tmp_path, "imgs/ct7.jpg", size=40)
    _write_mask(tmp_path / "mask/ct7.png", _square(20, 0, 0, 10))
    result = masks.region_mask(_sample(image), layout)
    assert result.region.shape == (40, 40) and int(result.region.sum()) == 400


def test_missing_mask_is_counted_and_image_untouched(tmp_path):
    layout, image = _dataset(tmp_path, "imgs/ct7.jpg")
    stats = masks.MaskStats()
    original = Image.open(image)
    out = masks.condition_image(_sample(image, modality="MRI"), original, "masked", 0.1, layout, stats)
    assert out is original
    assert stats.as_dict()["by_modality"] == {"MRI": {"applied": 0, "empty": 0, "missing": 1}}
    assert stats.sources == {"none": 1} and stats.unmodified == 1


# ---------------------------------------------------------------- apply_mask and crop math

def test_crop_box_pads_each_side_and_clips():
    region = np.zeros((100, 100), bool)
    region[10:20, 20:40] = True  # 10 rows, 20 columns
    assert masks.crop_box(region, 0.1) == (18, 9, 42, 21)
    assert masks.crop_box(region, 0.0) == (20, 10, 40, 20)
    assert masks.crop_box(region, 0.25) == (15, 7, 45, 23)  # 2.5 rows round half up to 3
    assert masks.crop_box(region, 2.0) == (0, 0, 80, 40)  # clipped at the top-left edges


def test_masked_blacks_out_everything_outside():
    image = Image.new("RGB", (8, 8), (9, 8, 7))
    region = np.zeros((8, 8), bool)
    region[2:4, 5:7] = True
    out = np.asarray(masks.apply_mask(image, region, "masked", 0.1))
    assert (out[region] == (9, 8, 7)).all() and (out[~region] == 0).all()


@pytest.mark.parametrize("mode", masks.MASK_MODES)
@pytest.mark.parametrize("region", [None, np.zeros((8, 8), bool)], ids=["none", "empty"])
def test_every_mode_leaves_image_untouched_without_region(mode, region):
    image = Image.new("RGB", (8, 8), (9, 8, 7))
    assert masks.apply_mask(image, region, mode, 0.1) is image


def test_bad_mode_and_pad_ratio_are_user_errors():
    image = Image.new("RGB", (8, 8))
    with pytest.raises(UserError, match="Did you mean 'masked'"):
        masks.apply_mask(image, None, "mask", 0.1)
    with pytest.raises(UserError, match="pad_ratio"):
        masks.apply_mask(image, None, "crop", -0.1)


# ---------------------------------------------------------------- which classes a question is about

CT_LABELS = {"Liver", "Liver Cancer", "Left Kidney", "Right Kidney", "Left Lung", "Right Lung", "Lung Cancer",
             "Brain Stem", "Spinal Cord"}


@pytest.mark.parametrize("question, content_type, expected", [
    ("How many kidneys are there?", "Quantity", {"Left Kidney", "Right Kidney"}),
    ("What is the shape of left kidney?", "Shape", {"Left Kidney"}),
    ("Is the lung healthy?", "Abnormality", {"Left Lung", "Right Lung", "Lung Cancer"}),
    ("Does the patient have lung cancer?", "Abnormality", {"Lung Cancer"}),
    ("Which is bigger, LIVER or right lung?", "Size", {"Liver", "Liver Cancer", "Right Lung", "Lung Cancer"}),
    ("Where is the brain stem?", "Position", {"Brain Stem"}),
    ("Does the picture contain spine cord?", "Organ", {"Spinal Cord"}),
    ("Where is/are the abnormality located?", "Position", {"Liver Cancer", "Lung Cancer"}),
    ("Does the picture contain heart?", "Organ", None),
    ("In what plane is this image scanned?", "Plane", None),
])
def test_region_classes_follow_the_question(question, content_type, expected):
    assert region_classes(question, content_type, CT_LABELS) == expected


def test_absent_class_in_vocabulary_shadows_a_shorter_one():
    brain = {"Brain Edema", "Brain Enhancing Tumor"}
    # Without the vocabulary only "brain" is recognised; with it, the absent Brain Stem wins.
    assert region_classes("Where is the brain stem?", "Position", brain) == brain
    assert region_classes("Where is the brain stem?", "Position", brain, vocabulary={"Brain Stem"}) is None
    assert region_classes("Where is the brain tumor?", "Position", brain) == {"Brain Enhancing Tumor"}
