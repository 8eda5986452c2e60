"""Loading SLAKE in every layout, and a precise message for every kind of bad input."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import default_splits, slake_row, write_mini_slake
from slakevqa.cli import main
from slakevqa.data.slake import cross_language_leak, find_layout, load_split, load_training_split
from slakevqa.errors import DataError, UserError

# ---------------------------------------------------------------- layouts

def test_official_layout_loads_records_sorted_with_resolved_images(mini_slake: Path) -> None:
    train = load_split(mini_slake, "train")
    assert [s.qid for s in train] == [0, 1, 2, 3]
    assert all(s.image_path.is_file() and s.image_path.is_relative_to(mini_slake) for s in train)
    assert train[0].image_path == (mini_slake / "imgs/xmlab0/source.jpg").resolve()
    assert train[0].triple == ("vhead", "_", "_") and train[0].split == "train"


def test_numeric_answers_become_strings(mini_slake: Path) -> None:
    sample = next(s for s in load_split(mini_slake, "train") if s.qid == 3)
    assert sample.answer == "2" and isinstance(sample.answer, str)


def test_language_filter_and_split_aliases(mini_slake: Path) -> None:
    assert [s.qid for s in load_split(mini_slake, "train", "zh")] == [4, 5]
    assert len(load_split(mini_slake, "train", "all")) == 6
    assert [s.qid for s in load_split(mini_slake, "validate")] == [10, 11]
    assert [s.qid for s in load_split(mini_slake, "validation")] == [10, 11]
    assert load_split(mini_slake, "validation")[0].split == "validation"


@pytest.mark.parametrize("image_dir,validation_name", [("imgs", "validation.json"), ("img", "validation.json"),
                                                       ("img", "validate.json")])
def test_hf_and_reference_layouts(tmp_path: Path, image_dir: str, validation_name: str) -> None:
    root = write_mini_slake(tmp_path / "SLAKE", image_dir=image_dir, validation_name=validation_name)
    layout = find_layout(root)
    assert layout.image_dir == (root / image_dir).resolve()
    assert [s.qid for s in load_split(root, "validation")] == [10, 11]
    assert load_split(root, "test")[0].image_path.parent.parent.name == image_dir


def test_parent_folder_of_slake10_is_accepted(tmp_path: Path) -> None:
    write_mini_slake(tmp_path / "download" / "Slake1.0")
    assert len(load_split(tmp_path / "download", "test")) == 2


def test_unknown_split_and_language_are_user_errors(mini_slake: Path) -> None:
    with pytest.raises(UserError, match="unknown split 'dev2'"):
        load_split(mini_slake, "dev2")
    with pytest.raises(UserError, match="unknown language 'fr'"):
        load_split(mini_slake, "test", "fr")


# ---------------------------------------------------------------- bad input

def write_train(tmp_path: Path, rows: object) -> Path:
    splits = default_splits()
    splits["train"] = rows
    return write_mini_slake(tmp_path / "bad", splits)


def expect_data_error(root: Path, *fragments: str, split: str = "train") -> DataError:
    with pytest.raises(DataError) as caught:
        load_split(root, split)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return caught.value


def test_missing_split_file(tmp_path: Path) -> None:
    splits = default_splits()
    del splits["test"]
    root = write_mini_slake(tmp_path / "s", splits)
    expect_data_error(root, str(root.resolve()), "no test split file", "test.json", split="test")


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    root = write_train(tmp_path, [])
    (root / "train.json").write_text('[\n  {"qid": 1,\n  oops}\n]', encoding="utf-8")
    expect_data_error(root, "train.json", "invalid JSON at line 3")


def test_top_level_must_be_an_array(tmp_path: Path) -> None:
    root = write_train(tmp_path, {"qid": 1})
    expect_data_error(root, "train.json", "expected a JSON array")


def test_missing_field(tmp_path: Path) -> None:
    root = write_train(tmp_path, [slake_row(0), slake_row(7, answer_type=None)])
    expect_data_error(root, "train.json", "qid 7", "field 'answer_type'", "missing")


@pytest.mark.parametrize("field,value,expected", [
    ("question", 12, "expected a string, found int"),
    ("triple", "vhead,_,_", "expected a list of 3 strings"),
    ("qid", 3.5, "expected an integer"),
    ("answer", None, "missing"),
    ("answer", ["Yes"], "expected a string or number, found list"),
    ("img_id", "x", "expected an integer"),
])
def test_mistyped_fields(tmp_path: Path, field: str, value: object, expected: str) -> None:
    row = slake_row(8)
    if value is None:
        row.pop(field)
    else:
        row[field] = value
    root = write_train(tmp_path, [slake_row(0), row])
    label = "record #1" if field == "qid" else "qid 8"
    expect_data_error(root, "train.json", label, f"field '{field}'", expected)


def test_unknown_answer_type(tmp_path: Path) -> None:
    root = write_train(tmp_path, [slake_row(9, answer_type="MULTI")])
    expect_data_error(root, "qid 9", "field 'answer_type'", "'MULTI'", "OPEN or CLOSED")


def test_answer_type_whitespace_and_case_are_tolerated(tmp_path: Path) -> None:
    root = write_train(tmp_path, [slake_row(9, answer_type="closed ")])
    assert load_split(root, "train")[0].answer_type == "CLOSED"


@pytest.mark.parametrize("img_name", ["../../outside.jpg", "/etc/passwd", "xmlab0/../../../x.jpg"])
def test_image_path_cannot_escape_the_dataset(tmp_path: Path, img_name: str) -> None:
    root = write_train(tmp_path, [slake_row(0), slake_row(6, img_name=img_name)])
    expect_data_error(root, "qid 6", "field 'img_name'")


def test_missing_image_error_and_skip_policy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_train(tmp_path, [slake_row(0, 0), slake_row(1, 0), slake_row(2, 1)])
    (root / "imgs/xmlab1/source.jpg").unlink()
    expect_data_error(root, "qid 2", "field 'img_name'", "image file not found", "--missing_images skip")
    with caplog.at_level(logging.WARNING):
        kept = load_split(root, "train", missing_images="skip")
    assert [s.qid for s in kept] == [0, 1]
    assert "skipped 1 records" in caplog.text


def test_unreadable_image(tmp_path: Path) -> None:
    root = write_train(tmp_path, [slake_row(0, 0), slake_row(1, 1)])
    (root / "imgs/xmlab1/source.jpg").write_bytes(b"not a jpeg at all")
    expect_data_error(root, "qid 1", "image unreadable")
    assert [s.qid for s in load_split(root, "train", missing_images="skip")] == [0]


def test_duplicate_qid(tmp_path: Path) -> None:
    root = write_train(tmp_path, [slake_row(0), slake_row(1), slake_row(1, 1)])
    expect_data_error(root, "qid 1 (record #2)", "field 'qid'", "duplicate qid (also record #1)")


def test_empty_answer_dropped_for_training_with_a_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_train(tmp_path, [slake_row(0), slake_row(1, answer=""), slake_row(2)])
    assert len(load_split(root, "train")) == 3  # evaluation and statistics keep it
    with caplog.at_level(logging.WARNING):
        kept = load_training_split(root)
    assert [s.qid for s in kept] == [0, 2]
    assert "dropped 1 training records with an empty answer (qids 1)" in caplog.text


def test_both_languages_for_training_warn_about_leaked_test_images(mini_slake: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    # zh train qid 5 sits on image 4, which the English test split... does not use; zh test does.
    assert cross_language_leak(mini_slake) == set()
    splits = default_splits()
    splits["train"].append(slake_row(6, 3, q_lang="zh", answer="是"))  # image 3 is an English test image
    root = write_mini_slake(mini_slake.parent / "leaky", splits)
    with caplog.at_level(logging.WARNING):
        load_training_split(root, language="all")
    assert "1 images of the English test split carry Chinese training questions" in caplog.text


# ---------------------------------------------------------------- the CLI turns errors into one line

def test_cli_prints_one_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_train(tmp_path, [slake_row(9, answer_type="MULTI")])
    assert main(["stats", "--slake_root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "qid 9" in err[0] and "answer_type" in err[0]


def test_cli_debug_shows_the_traceback(tmp_path: Path) -> None:
    root = write_train(tmp_path, [slake_row(9, answer_type="MULTI")])
    with pytest.raises(DataError):
        main(["stats", "--slake_root", str(root), "--debug"])


def test_cli_subprocess_has_no_traceback(tmp_path: Path) -> None:
    root = write_train(tmp_path, [slake_row(0), slake_row(0, 1)])
    done = subprocess.run([sys.executable, "-m", "slakevqa", "stats", "--slake_root", str(root)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "duplicate qid" in done.stderr


# ---------------------------------------------------------------- real SLAKE

EXPECTED = {"train": (4919, 2976, 1943, 450), "validation": (1053, 631, 422, 96), "test": (1061, 645, 416, 96)}


@pytest.mark.real_data
@pytest.mark.parametrize("split", list(EXPECTED))
def test_real_slake_english_counts(slake_root: Path, split: str) -> None:
    samples = load_split(slake_root, split)
    records, open_, closed, images = EXPECTED[split]
    assert len(samples) == records
    assert sum(s.answer_type == "OPEN" for s in samples) == open_
    assert sum(s.answer_type == "CLOSED" for s in samples) == closed
    assert len({s.image_key for s in samples}) == images
    assert all(isinstance(s.answer, str) for s in samples)


@pytest.mark.real_data
def test_real_slake_quirks(slake_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    train = load_split(slake_root, "train")
    assert next(s for s in train if s.qid == 1622).answer == ""
    with caplog.at_level(logging.WARNING):
        both = load_training_split(slake_root, language="all")
    assert len(both) == 9834 and 1622 not in {s.qid for s in both}
    assert "72 images of the English test split carry Chinese training questions" in caplog.text
    assert len(load_split(slake_root, "test", "zh")) == 1033


@pytest.mark.real_data
def test_real_slake_stats_json(slake_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["stats", "--slake_root", str(slake_root), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert list(stats) == ["train", "validation", "test"]
    assert stats["test"]["records"] == 1061 and stats["test"]["images"] == 96
    assert stats["test"]["answer_type"] == {"OPEN": 645, "CLOSED": 416}
    assert stats["test"]["modality"] == {"CT": 472, "X-Ray": 361, "MRI": 228}
    assert stats["train"]["base_type"] == {"vqa": 4337, "kvqa": 582}
    assert stats["test"]["content_type"]["Organ"] == 253
