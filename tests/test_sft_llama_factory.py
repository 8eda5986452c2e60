"""convert-sft's dataset_info.json, read the way LLaMA-Factory reads it (its data/README.md schema).

LLaMA-Factory: ``dataset_dir/dataset_info.json`` maps names to entries; a sharegpt entry's
``columns``/``tags`` name the record keys and roles (documented defaults below); user turns sit at
odd positions and assistant turns at even ones, in pairs; a conversation holds one ``<image>``
per image; image paths are joined to ``media_dir``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slakevqa.cli import main
from slakevqa.data.slake import find_layout

# LLaMA-Factory's documented defaults for what an entry leaves out.
DEFAULT_COLUMNS = {"messages": "conversations", "images": None}
DEFAULT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
SPLIT_FILES = {"slake_train": "slake_train_llava_sft.json", "slake_validation": "slake_validation_llava_sft.json",
               "slake_test": "slake_test_llava_sft.json"}


def record_problems(record: dict, columns: dict, tags: dict, media_dir: Path) -> list[str]:
    """What LLaMA-Factory's sharegpt converter and image check would reject in one record."""
    messages = record.get(columns["messages"])
    if not isinstance(messages, list) or not messages or len(messages) % 2:
        return [f"messages column {columns['messages']!r} is not an even, non-empty list"]
    problems = []
    for turn, message in enumerate(messages):
        want = tags["user_tag"] if turn % 2 == 0 else tags["assistant_tag"]
        if message.get(tags["role_tag"]) != want or not isinstance(message.get(tags["content_tag"]), str):
            problems.append(f"turn {turn} is not {tags['role_tag']}={want!r} with a {tags['content_tag']!r} string")
            break  # LLaMA-Factory drops the record at its first bad turn
    images = record.get(columns["images"]) if columns["images"] else None
    images = [] if images is None else images if isinstance(images, list) else [images]
    placeholders = sum(str(m.get(tags["content_tag"], "")).count("<image>") for m in messages)
    if placeholders != len(images):
        problems.append(f"{placeholders} <image> placeholders for {len(images)} images")
    problems += [f"image {p} is not a file under media_dir" for p in images if not (media_dir / p).is_file()]
    return problems


def dataset_info_problems(dataset_dir: Path, media_dir: Path) -> list[str]:
    """Every problem LLaMA-Factory would meet loading each entry of ``dataset_dir/dataset_info.json``."""
    problems = []
    for name, entry in json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8")).items():
        if entry.get("formatting") != "sharegpt" or not (dataset_dir / entry["file_name"]).is_file():
            problems.append(f"{name}: not a sharegpt entry of an existing file")
            continue
        columns = {**DEFAULT_COLUMNS, **entry.get("columns", {})}
        tags = {**DEFAULT_TAGS, **entry.get("tags", {})}
        records = json.loads((dataset_dir / entry["file_name"]).read_text(encoding="utf-8"))
        for record in records:
            problems += [f"{name}: id {record.get('id')}: {p}" for p in record_problems(record, columns, tags,
                                                                                        media_dir)]
    return problems


def export(root: Path, out: Path, *flags: str) -> int:
    return main(["convert-sft", "--data_root", str(root), "--output_dir", str(out), *flags])


def read_info(out: Path) -> dict:
    return json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))


def test_dataset_info_describes_every_exported_record(mini_slake: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "o"
    assert export(mini_slake, out, "--language", "all") == 0
    info = read_info(out)
    assert {name: entry["file_name"] for name, entry in info.items()} == SPLIT_FILES
    for entry in info.values():  # explicit, not left to LLaMA-Factory's defaults
        assert entry["formatting"] == "sharegpt"
        assert entry["columns"] == {"messages": "conversations", "images": "image"}
        assert entry["tags"] == {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                                 "assistant_tag": "gpt"}
    media_dir = mini_slake / "imgs"
    assert dataset_info_problems(out, media_dir) == []
    assert len(json.loads((out / SPLIT_FILES["slake_train"]).read_text(encoding="utf-8"))) == 6
    printed = capsys.readouterr().out
    assert f"media_dir {media_dir.resolve()}" in printed and "dataset slake_train, slake_validation" in printed
    assert dataset_info_problems(out, out) != []  # image paths need media_dir: dataset_dir alone is not enough


@pytest.mark.parametrize("breakage, expected", [
    (lambda r: r["conversations"].reverse(), "turn 0 is not from='human'"),
    (lambda r: r["conversations"][0].update(value="no placeholder"), "0 <image> placeholders for 1 images"),
    (lambda r: r.update(image="xmlab9/missing.jpg"), "is not a file under media_dir"),
    (lambda r: r["conversations"].pop(), "not an even, non-empty list"),
])
def test_the_checker_catches_what_llama_factory_rejects(mini_slake: Path, tmp_path: Path, breakage,
                                                        expected: str) -> None:
    out = tmp_path / "o"
    assert export(mini_slake, out, "--splits", "test") == 0
    path = out / SPLIT_FILES["slake_test"]
    records = json.loads(path.read_text(encoding="utf-8"))
    breakage(records[1])
    path.write_text(json.dumps(records), encoding="utf-8")
    problems = dataset_info_problems(out, mini_slake / "imgs")
    assert len(problems) == 1 and expected in problems[0] and "slake_test: id 21" in problems[0]


def test_other_entries_are_kept_and_ours_replaced(mini_slake: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    theirs = {"my_data": {"file_name": "mine.json", "formatting": "sharegpt", "columns": {"messages": "msgs"}},
              "alpaca_zh": {"file_name": "中文.json"}}
    (out / "dataset_info.json").write_text(json.dumps({**theirs, "slake_train": {"file_name": "old.json"}}),
                                           encoding="utf-8")
    assert export(mini_slake, out, "--splits", "train") == 0
    info = read_info(out)
    assert list(info) == ["my_data", "alpaca_zh", "slake_train"]
    assert {k: info[k] for k in theirs} == theirs
    assert info["slake_train"]["file_name"] == SPLIT_FILES["slake_train"]
    assert export(mini_slake, out, "--splits", "test") == 0  # a later split joins, the train entry stays
    assert list(read_info(out)) == ["my_data", "alpaca_zh", "slake_train", "slake_test"]


@pytest.mark.parametrize("text, problem", [("{\"a\": 1,", "not valid JSON"), ("[1, 2]", "a JSON list")])
def test_a_broken_dataset_info_is_refused_in_one_line(mini_slake: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture, text: str, problem: str) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "dataset_info.json").write_text(text, encoding="utf-8")
    assert export(mini_slake, out) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: {out / 'dataset_info.json'}: {problem}")
    assert (out / "dataset_info.json").read_text(encoding="utf-8") == text
    assert sorted(p.name for p in out.iterdir()) == ["dataset_info.json"]  # refused before any export file


def test_wrapped_image_token_gets_no_entry(mini_slake: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert export(mini_slake, out, "--mm_use_im_start_end") == 0
    assert not (out / "dataset_info.json").exists()
    assert export(mini_slake, out) == 0
    info = read_info(out)
    info["other"] = {"file_name": "other.json"}
    (out / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    assert export(mini_slake, out, "--mm_use_im_start_end", "--splits", "train") == 0
    assert list(read_info(out)) == ["slake_validation", "slake_test", "other"]  # no stale entry for train


def test_help_says_what_to_pass(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["convert-sft", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "dataset_info.json" in text and "dataset_dir to --output_dir" in text and "media_dir" in text


@pytest.mark.real_data
def test_real_slake_export_loads_in_llama_factory(slake_root: Path, tmp_path: Path) -> None:
    assert export(slake_root, tmp_path) == 0
    assert list(read_info(tmp_path)) == list(SPLIT_FILES)
    assert dataset_info_problems(tmp_path, find_layout(slake_root).image_dir) == []
