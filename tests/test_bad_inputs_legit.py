"""Inputs that are legitimate but were refused, and wrong ones that were accepted (issue 25, points 6 and 7).

Legitimate, so they must work: ``imgs/`` as a symlink to another disk (or image files linked from
elsewhere) reads the same samples, pixels, masks, statistics, SFT export and answers as the plain
layout; an answer file that opens with a UTF-8 byte-order mark scores as it would without.

Wrong, so each is one line, exit 2, and every file that was there before is byte-for-byte what it
was (the table reuses tests/test_bad_inputs_runs.py's ``Case`` and ``snapshot``): an answer file that
matches no question of the split and language; ``score`` writing over one of its inputs; an adapter
folder without weights; a tokenizer without ``<image>``; a folder whose name is not UTF-8; an image
folder symlink whose target is gone; a name that climbs out with ``..`` past a symlinked ``imgs/``.
Only the tokenizer case and the eval of the symlinked layout load the tiny model (one per module).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import slake_row, write_image, write_mini_slake
from slakevqa.cli import main
from slakevqa.errors import DataError
from test_bad_inputs_runs import Case, assert_refused, snapshot

# mini SLAKE (conftest.default_splits): test qid 21 (CLOSED "Yes") and 20 (OPEN "Liver") in English, 22 in Chinese
ANSWER = {"question_id": 21, "text": "Yes"}
NOT_UTF8 = os.fsdecode(b"data\xff")  # a folder name in Latin-1, as an old archive unpacks it


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def link_images(root: Path, disk: Path) -> Path:
    """Move ``root/imgs`` to ``disk/imgs`` and leave a symlink in its place (a common cluster layout)."""
    disk.mkdir(parents=True, exist_ok=True)
    shutil.move(root / "imgs", disk / "imgs")
    (root / "imgs").symlink_to(disk / "imgs", target_is_directory=True)
    return root


# ---------------------------------------------------------------- setups: each returns the command line

def score(content: str, *extra: str, name: str = "answers.jsonl") -> Callable[[Path, Path], list[str]]:
    def setup(work: Path, model: Path) -> list[str]:
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        return ["score", str(path), "--slake_root", str(work / "Slake1.0"),
                *[part.format(work=work) for part in extra]]
    return setup


def score_through_link(work: Path, model: Path) -> list[str]:
    argv = score(jsonl([ANSWER]))(work, model)
    (work / "results.json").symlink_to(work / "answers.jsonl")
    return [*argv, "--out", str(work / "results.json")]


def own_predictions_into_own_folder(work: Path, model: Path) -> list[str]:
    row = {"qid": 21, "question": "Question 21?", "answer": "Yes", "answer_type": "CLOSED", "prediction": "Yes"}
    (work / "run").mkdir()
    (work / "run" / "predictions.jsonl").write_text(jsonl([row]), encoding="utf-8")
    return ["score", str(work / "run" / "predictions.jsonl"), "--output_dir", str(work / "run")]


def adapter_without_weights(work: Path, model: Path) -> list[str]:
    adapter = work / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(work / "base"),
                                                             "peft_type": "LORA"}))
    return ["eval", "--model_id_or_ckpt", str(adapter), "--slake_root", str(work / "Slake1.0"),
            "--output_dir", str(work / "out"), "--device", "cpu"]


def tokenizer_without_image_token(work: Path, model: Path) -> list[str]:
    copy = work / "model"
    shutil.copytree(model, copy)
    tokenizer = json.loads((copy / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["content"] != "<image>"]
    tokenizer["model"]["vocab"]["<imagex>"] = tokenizer["model"]["vocab"].pop("<image>")
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config.pop("extra_special_tokens", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    return ["eval", "--model_id_or_ckpt", str(copy), "--slake_root", str(work / "Slake1.0"),
            "--output_dir", str(work / "out"), "--device", "cpu"]


def dataset_not_utf8(verb: str) -> Callable[[Path, Path], list[str]]:
    def setup(work: Path, model: Path) -> list[str]:
        shutil.copytree(work / "Slake1.0", work / NOT_UTF8)
        if verb == "score":
            (work / "answers.jsonl").write_text(jsonl([ANSWER]), encoding="utf-8")
            return ["score", str(work / "answers.jsonl"), "--slake_root", str(work / NOT_UTF8)]
        return [verb, "--slake_root", str(work / NOT_UTF8)]
    return setup


def model_not_utf8(work: Path, model: Path) -> list[str]:
    (work / NOT_UTF8).mkdir()
    (work / NOT_UTF8 / "config.json").write_text("{}")
    return ["eval", "--model_id_or_ckpt", str(work / NOT_UTF8), "--slake_root", str(work / "Slake1.0"),
            "--output_dir", str(work / "out"), "--device", "cpu"]


def dangling_image_link(work: Path, model: Path) -> list[str]:
    link_images(work / "Slake1.0", work / "disk")
    shutil.rmtree(work / "disk")  # the other disk is not mounted
    return ["stats", "--slake_root", str(work / "Slake1.0")]


def climbing_out_of_linked_images(work: Path, model: Path) -> list[str]:
    root = work / "Slake1.0"
    link_images(root, work / "disk")
    write_image(work / "disk" / "secret.jpg")  # beside the linked folder: outside the dataset as named
    rows = json.loads((root / "test.json").read_text())
    (root / "test.json").write_text(json.dumps([*rows, slake_row(30, 9, img_name="../../disk/secret.jpg")]))
    return ["stats", "--slake_root", str(root)]


NONE_MATCHES = "none of its {n} answers matches an English question of the test split ({why}); check --split and --language"
OVER_INPUT = "score never writes over its inputs"

CASES = [
    Case("answers-all-unknown-ids", score(jsonl([{"question_id": 900 + i, "text": "x"} for i in range(5)])),
         ("answers.jsonl: " + NONE_MATCHES.format(n=5, why="5 unknown ids"),)),
    Case("answers-all-chinese", score(jsonl([{"question_id": 22, "text": "是"}])),
         (NONE_MATCHES.format(n=1, why="1 to Chinese questions"),)),
    Case("answers-unknown-and-chinese", score(jsonl([{"question_id": 22, "text": "是"}, {"question_id": 999, "text": "x"}])),
         (NONE_MATCHES.format(n=2, why="1 unknown ids, 1 to Chinese questions"),)),
    Case("answers-wrong-split", score(jsonl([ANSWER]), "--split", "validation"),
         ("none of its 1 answers matches an English question of the validation split (1 unknown ids)",)),
    Case("score-out-is-the-answer-file", score(jsonl([ANSWER]), "--out", "{work}/answers.jsonl"),
         ("--out", "would replace the answer file", OVER_INPUT)),
    Case("score-out-links-to-the-answer-file", score_through_link,
         ("--out", "results.json would replace the answer file", OVER_INPUT)),
    Case("score-out-is-the-split-file", score(jsonl([ANSWER]), "--out", "{work}/Slake1.0/test.json"),
         ("--out", "would replace the split file", "test.json", OVER_INPUT)),
    Case("score-output-dir-of-foreign-predictions",
         score(jsonl([ANSWER]), "--output_dir", "{work}/theirs", name="theirs/predictions.jsonl"),
         ("--output_dir", "predictions.jsonl would replace the answer file", OVER_INPUT)),
    Case("score-own-predictions-output-dir-itself", own_predictions_into_own_folder,
         ("--output_dir", "would replace the answer file", "or leave it out")),
    Case("adapter-without-weights", adapter_without_weights,
         ("adapter: an adapter folder (adapter_config.json) without its weights",
          "adapter_model.safetensors or adapter_model.bin")),
    Case("tokenizer-without-image-token", tokenizer_without_image_token,
         ("model: its tokenizer has no <image> token",)),
    Case("dataset-not-utf8-stats", dataset_not_utf8("stats"), ("data\\xff", "path is not UTF-8")),
    Case("dataset-not-utf8-score", dataset_not_utf8("score"), ("data\\xff", "path is not UTF-8")),
    Case("model-not-utf8-eval", model_not_utf8, ("data\\xff", "model folder's path is not UTF-8")),
    Case("image-link-dangling", dangling_image_link,
         ("Slake1.0/imgs: the image folder is a symlink to", "which does not exist (is that disk mounted?)")),
    Case("image-name-climbs-out-of-linked-imgs", climbing_out_of_linked_images,
         ("test.json: qid 30: field 'img_name'", "points outside the dataset root")),
]
NEEDS_MODEL = {"tokenizer-without-image-token"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_wrong_input_is_one_line_and_changes_nothing(case: Case, tmp_path: Path, request: pytest.FixtureRequest,
                                                     capsys: pytest.CaptureFixture, monkeypatch) -> None:
    write_mini_slake(tmp_path / "Slake1.0")
    monkeypatch.chdir(tmp_path)
    model = request.getfixturevalue("saved_tiny") if case.id in NEEDS_MODEL else tmp_path / "no-model"
    argv = case.setup(tmp_path, model)
    before = snapshot(tmp_path)
    capsys.readouterr()  # the tiny model's first save prints progress
    assert_refused(argv, case.fragments, capsys)
    after = snapshot(tmp_path)
    assert {name: digest for name, digest in after.items() if name in before} == before


# ---------------------------------------------------------------- an empty split, refused before any model loads

@pytest.mark.parametrize("language,fragments", [
    ("en", ("test.json: no English questions (--language en); its 2 questions are zh 2: pass --language zh or all",)),
    ("zh", ("test.json: no Chinese questions (--language zh); its 1 questions are en 1: pass --language en or all",)),
], ids=["english-asked", "chinese-asked"])
def test_a_split_empty_after_filtering_is_refused_with_its_counts(language, fragments, tmp_path: Path) -> None:
    from slakevqa.data.slake import load_split, require_questions

    test = ([slake_row(21, 3, q_lang="zh"), slake_row(22, 3, q_lang="zh")] if language == "en"
            else [slake_row(21, 3)])
    root = write_mini_slake(tmp_path / "Slake1.0", {"train": [slake_row(0)], "test": test})
    with pytest.raises(DataError) as caught:
        require_questions(load_split(root, "test", language), root, "test", language)
    assert all(fragment in str(caught.value) for fragment in fragments), caught.value
    other = "zh" if language == "en" else "en"
    assert len(require_questions(load_split(root, "test", other), root, "test", other)) == len(test)


def test_a_split_whose_questions_were_all_skipped_says_so(tmp_path: Path) -> None:
    from slakevqa.data.slake import load_split, require_questions

    root = write_mini_slake(tmp_path / "Slake1.0", {"train": [slake_row(0)], "test": [slake_row(21, 3)]})
    (root / "imgs/xmlab3/source.jpg").unlink()
    with pytest.raises(DataError, match="all 1 English questions were dropped"):
        require_questions(load_split(root, "test", missing_images="skip"), root, "test")
    with pytest.raises(DataError, match="no questions: the split file is an empty list"):
        empty = write_mini_slake(tmp_path / "empty", {"train": [slake_row(0)], "test": []})
        require_questions([], empty, "test")


# ---------------------------------------------------------------- legitimate: symlinked images

@pytest.fixture
def layouts(tmp_path: Path) -> dict[str, Path]:
    """The same mini SLAKE three ways: plain, ``imgs/`` linked to another disk, each image file linked."""
    plain = write_mini_slake(tmp_path / "plain" / "Slake1.0")
    linked = link_images(write_mini_slake(tmp_path / "linked" / "Slake1.0"), tmp_path / "disk")
    files = write_mini_slake(tmp_path / "files" / "Slake1.0")
    for image in sorted((files / "imgs").rglob("*.jpg")):
        stored = tmp_path / "store" / image.relative_to(files)
        stored.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(image, stored)
        image.symlink_to(stored)
    for root in (linked, files):
        (root / "imgs" / "xmlab0" / "mask.png").write_bytes(b"")  # masks are looked up beside the image
    (plain / "imgs" / "xmlab0" / "mask.png").write_bytes(b"")
    return {"plain": plain, "linked": linked, "files": files}


@pytest.mark.parametrize("layout", ["linked", "files"])
def test_symlinked_images_load_the_same_samples_pixels_and_masks(layouts: dict[str, Path], layout: str) -> None:
    from slakevqa.data.images import load_rgb
    from slakevqa.data.masks import find_mask
    from slakevqa.data.slake import load_split

    plain, other = layouts["plain"], layouts[layout]
    for split in ("train", "validation", "test"):
        a, b = load_split(plain, split, "all"), load_split(other, split, "all")
        assert [s.to_json() for s in a] == [s.to_json() for s in b]
        for x, y in zip(a, b):
            assert y.image_path == other.resolve() / "imgs" / y.img_name  # the path inside the dataset
            assert np.array_equal(np.asarray(load_rgb(x.image_path)), np.asarray(load_rgb(y.image_path)))
            mask_a, mask_b = find_mask(x.image_path, plain.resolve()), find_mask(y.image_path, other.resolve())
            assert (mask_a and mask_a.relative_to(plain.resolve())) == (mask_b and mask_b.relative_to(other.resolve()))


def test_symlinked_images_give_the_same_stats_and_sft_export(layouts: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    printed = {}
    for name in ("plain", "linked"):
        assert main(["stats", "--slake_root", str(layouts[name]), "--language", "all", "--json"]) == 0
        printed[name] = json.loads(capsys.readouterr().out)
        assert main(["convert-sft", "--slake_root", str(layouts[name]), "--out", str(tmp_path / f"sft-{name}")]) == 0
        capsys.readouterr()
    assert printed["plain"] == printed["linked"]
    exported = {name: sorted(p.name for p in (tmp_path / f"sft-{name}").iterdir()) for name in ("plain", "linked")}
    assert exported["plain"] == exported["linked"] and exported["plain"]
    for file in exported["plain"]:
        assert (tmp_path / "sft-plain" / file).read_bytes() == (tmp_path / "sft-linked" / file).read_bytes()


def test_eval_reads_a_symlinked_image_folder_as_the_plain_one(saved_tiny: Path, tmp_path: Path) -> None:
    yes_no = {"train": [slake_row(0, 0, question="Is there a liver?"), slake_row(1, 1, question="Is there a liver?")],
              "test": [slake_row(21, 3, question="Is the liver healthy?"), slake_row(20, 3)]}
    answers = {}
    for name in ("plain", "linked"):
        root = write_mini_slake(tmp_path / name / "Slake1.0", yes_no)
        if name == "linked":
            link_images(root, tmp_path / "disk")
        out = tmp_path / f"eval-{name}"
        assert main(["eval", "--model_id_or_ckpt", str(saved_tiny), "--slake_root", str(root), "--output_dir",
                     str(out), "--device", "cpu", "--batch_size", "2"]) == 0
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        answers[name] = [(r["qid"], r["prediction"], r["image_path"].split("/Slake1.0/")[1]) for r in rows]
    assert answers["plain"] == answers["linked"] and len(answers["plain"]) == 2


# ---------------------------------------------------------------- legitimate: a byte-order mark

@pytest.mark.parametrize("kind", ["llava_med", "ours"])
def test_an_answer_file_with_a_byte_order_mark_scores_as_without(kind: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    root = write_mini_slake(tmp_path / "Slake1.0")
    if kind == "llava_med":
        text = jsonl([{"question_id": 21, "text": "Yes"}, {"question_id": 20, "text": "The liver"}])
    else:
        text = jsonl([{"qid": 21, "question": "Question 21?", "answer": "Yes", "answer_type": "CLOSED",
                       "prediction": "Yes"}, {"qid": 20, "question": "Question 20?", "answer": "Liver",
                                              "answer_type": "OPEN", "prediction": "liver"}])
    results = {}
    for name, data in (("plain", text.encode()), ("bom", b"\xef\xbb\xbf" + text.encode())):
        (tmp_path / name).mkdir()
        path = tmp_path / name / ("predictions.jsonl" if kind == "ours" else "answers.jsonl")
        path.write_bytes(data)
        assert main(["score", str(path), "--slake_root", str(root), "--out", str(tmp_path / f"{name}.json")]) == 0, \
            capsys.readouterr().err
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
        assert path.read_bytes() == data
    assert results["bom"]["metrics"] == results["plain"]["metrics"]
    assert results["bom"]["counts"] == results["plain"]["counts"] and results["plain"]["counts"]["total"] == 2


def test_scoring_our_own_predictions_in_their_folder_still_writes_results_beside_them(tmp_path: Path) -> None:
    row = {"qid": 21, "question": "Question 21?", "answer": "Yes", "answer_type": "CLOSED", "prediction": "Yes"}
    path = tmp_path / "predictions.jsonl"
    path.write_text(jsonl([row]), encoding="utf-8")
    before = path.read_bytes()
    assert main(["score", str(path)]) == 0
    assert main(["score", str(path), "--out", str(tmp_path / "results.json")]) == 0  # the default, named
    assert (tmp_path / "results.json").is_file() and path.read_bytes() == before


def test_real_slake_with_its_image_folder_linked_loads_the_same_test_split(slake_root: Path, tmp_path: Path) -> None:
    from slakevqa.data.slake import load_split

    linked = tmp_path / "Slake1.0"
    linked.mkdir()
    for name in ("test.json", "train.json", "validate.json", "mask.txt", "imgs"):
        (linked / name).symlink_to(slake_root.resolve() / name)
    plain, other = load_split(slake_root, "test"), load_split(linked, "test")
    assert len(other) == 1061 and [s.to_json() for s in plain] == [s.to_json() for s in other]
    assert all(s.image_path.is_relative_to(linked.resolve() / "imgs") for s in other)


@pytest.mark.parametrize("verb", ["eval", "train"])
def test_eval_and_train_refuse_an_empty_split_before_the_model_or_the_folder(verb: str, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    splits = {name: [slake_row(21, 3, q_lang="zh"), slake_row(22, 3, q_lang="zh")] for name in ("train", "test")}
    root = write_mini_slake(tmp_path / "Slake1.0", {**splits, "validation": splits["test"]})
    model_flag = "--model_id_or_ckpt" if verb == "eval" else "--model_id"
    code = main([verb, model_flag, str(tmp_path / "no-model-here"), "--slake_root", str(root),
                 "--split", "test", "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "test.json: no English questions (--language en); its 2 questions are zh 2" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("verb", ["eval", "train"])
def test_an_output_folder_name_that_is_not_utf8_is_refused_first(verb: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/runs\xff")
    model_flag = "--model_id_or_ckpt" if verb == "eval" else "--model_id"
    code = main([verb, model_flag, str(tmp_path / "none"), "--slake_root", str(tmp_path / "none"), "--output_dir", out])
    err = capsys.readouterr().err
    assert code == 2 and "runs\\xff: the --output_dir folder's path is not UTF-8 text" in err, err
    assert os.listdir(tmp_path) == []
