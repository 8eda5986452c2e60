"""Routing from the question alone: every SLAKE wording, the vocabulary file, and the route table on real SLAKE."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import slake_row, write_mini_slake
from slakevqa.cli import main
from slakevqa.commands.routes import route_table
from slakevqa.data.slake import load_split
from slakevqa.errors import DataError, UserError
from slakevqa.inputs import routing
from slakevqa.inputs.answer_keys import match_key
from slakevqa.inputs.routing import (
    Route,
    is_yes_no_question,
    parse_options,
    predict_answer_type,
    route_closed,
    route_question,
)
from slakevqa.inputs.vocab import (
    VOCAB_VERSION,
    ClosedVocab,
    build_closed_vocab,
    load_closed_vocab,
    load_or_build_vocab,
    save_closed_vocab,
)

VOCAB = ClosedVocab((("Lung", 3), ("T2", 2), ("Transverse Plane", 1)), "train", "0" * 64)

OPTION_CASES = [
    # every choice wording of real SLAKE (train/validate/test), then the other listed forms
    ("Which is the biggest in this image,lung,liver or heart?", ["lung", "liver", "heart"]),
    ("Which is the biggest in this image, spleen,lung, or liver?", ["spleen", "lung", "liver"]),
    ("Which is the smallest in this image,small bowel,right kidney or liver?",
     ["small bowel", "right kidney", "liver"]),
    ("Which type of modality is shown about this image, MRI, CT or X-Ray?", ["MRI", "CT", "X-Ray"]),
    ("Is this a T1 weighted or T2 weighted MRI image?", ["T1", "T2"]),
    ("Is the abnormality hyperdense or hypodense?", ["hyperdense", "hypodense"]),
    ("Is the brain non-enhancing tumor hyperdense or hypodense?", ["hyperdense", "hypodense"]),
    ("Is brain tumor white or gray relative to other tissues?", ["white", "gray"]),
    ("Where is the liver in this image,left,top or upper left?", ["left", "top", "upper left"]),
    ("Where is the spleen in this image, right or lower right?", ["right", "lower right"]),
    ("Which is bigger in this image, liver or heart ?", ["liver", "heart"]),
    ("Which is bigger in this image,left lung or left kidney?", ["left lung", "left kidney"]),
    ("Which is bigger, left kidney or spleen ?", ["left kidney", "spleen"]),
    ("Which plane is the image scanned, transverse plane or coronal plane?", ["transverse plane", "coronal plane"]),
    ("Which kind of weighting is this image generated with, t1 or t2?", ["t1", "t2"]),
    ("Which hemisphere is abnormal,left or right?", ["left", "right"]),
    ("Which organ is abnormal, heart or lung?", ["heart", "lung"]),
    ("Is this a CT or MRI image?", ["CT", "MRI"]),
    ("Is this CT, MRI or X-Ray?", ["CT", "MRI", "X-Ray"]),
    ("Is the lesion in the left lung or the right lung?", ["left", "right"]),
    ("Is this an MRI/CT image?", ["MRI", "CT"]),
    ("Which modality is this, CT / MRI / X-Ray?", ["CT", "MRI", "X-Ray"]),
    ("Which modality is used? A. CT B. MRI C. X-Ray", ["CT", "MRI", "X-Ray"]),
    ("Which organ is enlarged? (A) liver (B) spleen", ["liver", "spleen"]),
    ("Which plane: 1) axial 2) coronal 3) sagittal?", ["axial", "coronal", "sagittal"]),
    ("Is this CT vs MRI?", ["CT", "MRI"]),
    ("Which is larger: liver versus spleen?", ["liver", "spleen"]),
    ("Which is bigger in this image, heart or right lung in this image?", ["heart", "right lung"]),
]
NOT_OPTIONS = [
    "Does the picture contain liver?",
    "Is/Are there abnormalities in the patient's left lung?",
    "Are/Is there kidneys in the picture?",
    "Which organs/organ in the picture belong to the circulatory system?",
    "Where is/are the abnormality located?",
    "What modality is used to take this image?",
    "Is this a T1 image?",
]
YES_NO = ["Does the picture contain liver?", "Is the lung healthy?", "Are there kidneys in this image?",
          "Do the organs in the image exist in the chest?", "Can pneumonia be observed on the upper left lung?",
          "Is/Are there abnormalities in the patient's left lung?", "Are/Is the kidney normal in this image?",
          "In this image, is there a liver?"]
NOT_YES_NO = ["Is this a CT or MRI image?", "Is the abnormality hyperdense or hypodense?",
              "What modality is used to take this image?", "Which organ is abnormal, heart or lung?",
              "Where is/are the abnormality located?", "How many kidneys are in this image?"]


@pytest.mark.parametrize("question, expected", OPTION_CASES)
def test_parse_options_reads_every_slake_wording(question: str, expected: list[str]):
    assert parse_options(question) == expected


@pytest.mark.parametrize("question", NOT_OPTIONS)
def test_number_agreement_slashes_and_plain_questions_list_no_options(question: str):
    assert parse_options(question) == []


@pytest.mark.parametrize("question", YES_NO)
def test_yes_no_questions(question: str):
    assert is_yes_no_question(question)
    assert route_closed(question, VOCAB) == Route("yesno", ("Yes", "No"), route_closed(question, VOCAB).source_text)


@pytest.mark.parametrize("question", NOT_YES_NO)
def test_not_yes_no_questions(question: str):
    assert not is_yes_no_question(question)


def test_options_win_over_the_yes_no_shape():
    route = route_closed("Is this a CT or MRI image?", VOCAB)
    assert (route.kind, route.candidates) == ("options", ("CT", "MRI"))
    assert "CT or MRI" in route.source_text


def test_vocabulary_is_the_fallback_and_an_empty_one_is_an_error():
    route = route_closed("Which kind of weighting is this image generated with?", VOCAB)
    assert (route.kind, route.candidates) == ("vocab", ("Lung", "T2", "Transverse Plane"))
    with pytest.raises(UserError, match="--allow_build_vocab"):
        route_closed("Which kind of weighting is this image generated with?", ClosedVocab.empty())


def test_route_question_records_who_decided_open_or_closed():
    question = "Which organ is abnormal, heart or lung?"
    assert route_question(question, "OPEN", VOCAB) == Route("open")
    predicted = route_question(question, "OPEN", VOCAB, route_source="predicted")
    assert (predicted.kind, predicted.route_source) == ("options", "predicted")
    assert predicted.to_json()["route_source"] == "predicted"
    with pytest.raises(UserError, match="Did you mean 'predicted'"):
        route_question(question, "CLOSED", VOCAB, route_source="predicted_")


@pytest.mark.parametrize("question, expected", [
    ("Does the picture contain liver?", "CLOSED"), ("Which organ is abnormal, heart or lung?", "CLOSED"),
    ("What modality is used to take this image?", "OPEN"), ("Which organs/organ in the picture belong to "
                                                            "the circulatory system?", "OPEN"),
    ("Where is/are the abnormality located?", "OPEN"), ("In what plane is this image scanned?", "OPEN")])
def test_predict_answer_type_from_the_question(question: str, expected: str):
    assert predict_answer_type(question) == expected


def test_match_key_normalisation():
    assert match_key(" Small  Bowel. ") == match_key("small bowel") == "small bowel"
    assert match_key("X-Ray") == match_key("xray")
    assert [match_key(w) for w in ("Yes", "y", "TRUE", "No", "n", "false")] == ["yes"] * 3 + ["no"] * 3


# --- the gold answer is never read -------------------------------------------------------------

def test_routing_functions_take_questions_never_samples():
    # build_closed_vocab reads *training* answers by design, and refuses other splits.
    for name, function in inspect.getmembers(routing, inspect.isfunction):
        if function.__module__ != routing.__name__ or name == "build_closed_vocab":
            continue
        annotations = [str(p.annotation) for p in inspect.signature(function).parameters.values()]
        assert not any("VQASample" in a for a in annotations), name


def test_routes_do_not_change_when_answers_are_garbage(mini_slake: Path):
    samples = load_split(write_mini_slake(mini_slake.parent / "choices", choice_splits()), "test")
    garbage = [dataclasses.replace(s, answer="zz garbage zz") for s in samples]
    assert [route_question(s.question, s.answer_type, VOCAB) for s in samples] == \
           [route_question(s.question, s.answer_type, VOCAB) for s in garbage]


# --- closed_vocab.json --------------------------------------------------------------------------

def choice_splits() -> dict[str, list[dict]]:
    rows = [slake_row(0, 0, question="Which organ is abnormal, heart or lung?", answer="Lung", answer_type="CLOSED"),
            slake_row(1, 0, question="Which is bigger, liver or lung?", answer="lung", answer_type="CLOSED"),
            slake_row(2, 1, question="Does the picture contain liver?", answer="Yes", answer_type="CLOSED"),
            slake_row(3, 1, question="Which kind of weighting?", answer="T2", answer_type="CLOSED"),
            slake_row(4, 1, question="What modality?", answer="MRI", answer_type="OPEN")]
    return {"train": rows, "validation": rows[:1], "test": [dict(r, qid=r["qid"] + 100) for r in rows]}


def test_vocab_keeps_closed_non_yes_no_training_answers_by_count(tmp_path: Path):
    samples = load_split(write_mini_slake(tmp_path / "s", choice_splits()), "train")
    vocab = build_closed_vocab(samples, "ab" * 32)
    assert vocab.entries == (("Lung", 2), ("T2", 1))
    assert (vocab.source_split, vocab.source_sha256, vocab.version) == ("train", "ab" * 32, VOCAB_VERSION)


def test_vocab_refuses_answers_of_other_splits(tmp_path: Path):
    samples = load_split(write_mini_slake(tmp_path / "s", choice_splits()), "test")
    with pytest.raises(UserError, match="training answers only"):
        build_closed_vocab(samples)


def test_vocab_file_round_trip_and_version_check(tmp_path: Path):
    path = save_closed_vocab(VOCAB, tmp_path / "closed_vocab.json")
    assert load_closed_vocab(path) == VOCAB
    data = json.loads(path.read_text())
    assert data["format"] == "slakevqa.closed_vocab" and data["source"] == {"split": "train", "sha256": "0" * 64}
    path.write_text(json.dumps(dict(data, version=VOCAB_VERSION + 1)))
    with pytest.raises(DataError, match="rebuild it with --allow_build_vocab"):
        load_closed_vocab(path)
    path.write_text("[]")
    with pytest.raises(DataError, match="not a closed vocabulary"):
        load_closed_vocab(path)


def test_load_or_build_needs_a_file_or_permission(tmp_path: Path):
    root = write_mini_slake(tmp_path / "s", choice_splits())
    target = tmp_path / "out" / "closed_vocab.json"
    with pytest.raises(UserError, match="--closed_vocab_path .* or --allow_build_vocab"):
        load_or_build_vocab(target, root, allow_build=False)
    built = load_or_build_vocab(target, root, allow_build=True)
    assert target.is_file() and built.answers == ("Lung", "T2") and len(built.source_sha256) == 64
    assert load_or_build_vocab(target, None, allow_build=False) == built


def test_routes_cli_without_vocab_says_what_to_pass(tmp_path: Path, capsys: pytest.CaptureFixture):
    root = write_mini_slake(tmp_path / "s", choice_splits())
    assert main(["routes", "--slake_root", str(root)]) == 2
    assert "--allow_build_vocab" in capsys.readouterr().err


def test_routes_cli_json_on_a_tiny_dataset(tmp_path: Path, capsys: pytest.CaptureFixture):
    root = write_mini_slake(tmp_path / "s", choice_splits())
    assert main(["routes", "--slake_root", str(root), "--allow_build_vocab", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["routes"] == {"yesno": 1, "options": 2, "vocab": 1} and table["questions"] == 4
    assert table["gold_in_candidates"] == 1.0 and table["missing"] == []


def test_prompts_and_routing_do_not_import_torch():
    code = "import sys, slakevqa.inputs.prompts, slakevqa.inputs.routing, slakevqa.commands.routes; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --- real SLAKE (SLAKE_ROOT) -------------------------------------------------------------------

EXPECTED = {"test": {"questions": 416, "routes": {"yesno": 355, "options": 61, "vocab": 0}, "missing": [12130]},
            "validation": {"questions": 422, "routes": {"yesno": 358, "options": 64, "vocab": 0}, "missing": []}}


@pytest.fixture(scope="module")
def real_vocab() -> ClosedVocab:
    from conftest import REAL_SLAKE

    if not REAL_SLAKE or not Path(REAL_SLAKE).is_dir():
        pytest.skip("real SLAKE not available: set SLAKE_ROOT=../shared/slake/Slake1.0 to run this test")
    return load_or_build_vocab(None, REAL_SLAKE, allow_build=True)


@pytest.mark.real_data
def test_real_vocab_is_the_31_training_choice_answers(real_vocab: ClosedVocab):
    assert len(real_vocab.answers) == 31 and real_vocab.answers[:3] == ("Lung", "Liver", "Heart")
    assert not {"yes", "no"} & {match_key(a) for a in real_vocab.answers}


@pytest.mark.real_data
@pytest.mark.parametrize("split", ["test", "validation"])
def test_real_route_table(slake_root: Path, real_vocab: ClosedVocab, split: str):
    closed = [s for s in load_split(slake_root, split) if s.is_closed]
    table = route_table(closed, real_vocab)
    expected = EXPECTED[split]
    assert (table["questions"], table["routes"]) == (expected["questions"], expected["routes"])
    assert [m["qid"] for m in table["missing"]] == expected["missing"]
    assert table["gold_in_candidates"] >= 0.99
    for sample in closed:
        gold_yes_no = match_key(sample.answer) in ("yes", "no")
        assert (route_closed(sample.question, real_vocab).kind == "yesno") == gold_yes_no, sample.question


@pytest.mark.real_data
@pytest.mark.parametrize("split", ["test", "validation"])
def test_real_routes_ignore_the_answer(slake_root: Path, real_vocab: ClosedVocab, split: str):
    samples = load_split(slake_root, split)
    garbage = [dataclasses.replace(s, answer="Yes" if s.answer != "Yes" else "Liver") for s in samples]
    routes = [route_question(s.question, s.answer_type, real_vocab, "predicted") for s in samples]
    assert routes == [route_question(s.question, s.answer_type, real_vocab, "predicted") for s in garbage]


@pytest.mark.real_data
@pytest.mark.parametrize("split", ["test", "validation"])
def test_real_predicted_answer_type_matches_slake(slake_root: Path, split: str):
    samples = load_split(slake_root, split)
    assert [predict_answer_type(s.question) for s in samples] == [s.answer_type for s in samples]


@pytest.mark.real_data
def test_real_routes_cli_json_schema(slake_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    vocab_path = tmp_path / "closed_vocab.json"
    argv = ["routes", "--slake_root", str(slake_root), "--split", "test", "--json",
            "--closed_vocab_path", str(vocab_path), "--allow_build_vocab"]
    assert main(argv) == 0 and vocab_path.is_file()
    table = json.loads(capsys.readouterr().out)
    assert set(table) == {"questions", "routes", "gold_in_candidates", "candidates", "missing"}
    assert table["routes"] == EXPECTED["test"]["routes"] and table["candidates"] == {"median": 2, "max": 3}
    assert table["missing"] == [{"qid": 12130, "question": "Which is bigger in this image, kidney or spleen?",
                                 "answer": "Liver", "candidates": ["kidney", "spleen"]}]
    assert main(argv[:-1]) == 0  # the saved file is read back without --allow_build_vocab


def test_answer_keys_is_a_leaf_and_vocab_does_not_import_routing():
    import ast

    from slakevqa.inputs import answer_keys

    tree = ast.parse(Path(answer_keys.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.startswith("slakevqa") for name in imported)
    code = "import sys, slakevqa.inputs.vocab; print('slakevqa.inputs.routing' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"  # routing -> vocab only: no cycle
