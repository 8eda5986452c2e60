"""The LLaVA-Med v1.0 paper metric, rule by rule, on hand-computed cases.

Each expected value was worked out by hand from upstream ``normalize_word`` /
``calculate_f1score`` / ``run_eval_batch.evaluate`` (tag v1.0.0), and cross-checked
once against a scratch retype of that code on 200,000 random strings.
"""

from __future__ import annotations

import pytest

from slakevqa.scoring.llava_med import normalize_word, open_recall, score


@pytest.mark.parametrize("text, expected", [
    # Marks that touch no space become spaces.
    ("x-ray", "x ray"),
    ("left/right", "left right"),
    ("(liver)", "liver"),
    # A mark that touches an ASCII space anywhere is deleted everywhere, even where it touches none.
    ("chest x-ray - pa view", "chest xray pa view"),
    ("x-ray -pa", "xray pa"),
    # ... but a newline is not a space: the same string with "\n" keeps the spacing rule.
    ("x-ray\n-pa", "x ray pa"),
    # One digit-comma-digit anywhere deletes every mark, not only commas.
    ("1,000 cells/mm", "1000 cellsmm"),
    ("cells/mm", "cells mm"),
    # Commas follow the same rule as other marks.
    ("Right Lung,Upper Left", "right lung upper left"),
    ("left lung, right", "left lung right"),
    # Periods not before a digit are deleted (not spaced); before a digit they stay.
    ("lung.", "lung"),
    ("x.ray", "xray"),
    ("3.5 cm.", "3.5 cm"),
    ("5.", "5"),
    (".5", ".5"),
    # At most 32 periods per call, the leftmost ones.
    ("." * 40 + "lung", "." * 8 + "lung"),
    # Lowercase, split on any whitespace, join with one space.
    ("Transverse  Plane\tMRI", "transverse plane mri"),
    # Number words zero..ten and "none" -> digits; nothing past ten.
    ("None two ten eleven", "0 2 10 eleven"),
    # Articles a/an/the are dropped as whole words only.
    ("The Left Lung, a lobe, an anomaly, theory", "left lung lobe anomaly theory"),
    # Contractions: apostrophe-less spellings gain one; one entry runs backwards.
    ("dont wont somebody'd", "don't won't somebodyd"),
    # Keys spelled with capitals upstream never match lowercased words.
    ("Im Ive", "im ive"),
    # Not in the mark list, so kept: colon, apostrophe, asterisk, percent.
    ("answer: body's *50%*", "answer: body's *50%*"),
])
def test_normalize_word_rules(text: str, expected: str) -> None:
    assert normalize_word(text) == expected


@pytest.mark.parametrize("prediction, answer, expected", [
    ("nodule", "No", 1.0),                       # "no" is a substring of "nodule"
    ("The eyes are normal.", "Yes", 1.0),        # "yes" inside "eyes"
    ("Not seen", "No", 1.0),                     # "no" inside "not"
    ("yes", "No", 0.0),
    ("no, not really", "Yes", 0.0),
    ("yes and no", "No", 1.0),                   # both answers named: a hit for either gold
    ("Lung", "Liver", 0.0),
    ("left lung", "Left", 1.0),                  # a choice answer inside a longer one
    ("anything", "The", 1.0),                    # gold normalises to "": substring of everything
    ("." * 31 + "left. lung", "Left Lung", 1.0),  # 32 periods: all removed in the one CLOSED pass
    ("." * 32 + "left. lung", "Left Lung", 0.0),  # 33: "left. lung" keeps its period
])
def test_closed_is_a_substring_hit(prediction: str, answer: str, expected: float) -> None:
    assert score(prediction, answer, "CLOSED") == expected


@pytest.mark.parametrize("prediction, answer, expected", [
    ("The abnormality is in the left lung.", "Left Lung", 1.0),  # extra words cost nothing
    ("x-ray image", "X-Ray", 1.0),
    ("chest x-ray - pa view", "X-Ray", 0.0),     # "xray" vs "x ray": no shared word
    ("lung lung lung", "left lung", 0.75),       # tp counts the prediction's 3 lungs, fn = 1
    ("lung lung", "left lung", 2 / 3),
    ("right lung", "Left Lung, Right", 2 / 3),   # tp = 2 (right, lung), fn = 1 (left)
    ("0", "None", 1.0),                          # "none" -> "0" on the gold side
    ("two kidneys", "2", 1.0),
    ("transverse plane", "Transverse  Plane", 1.0),
    ("A little", "A Little", 1.0),
    ("", "Liver", 0.0),                          # empty prediction
    ("liver", "", 0.0),                          # empty gold (SLAKE train qid 1622) scores 0 even against itself
    ("", "", 0.0),
    ("the", "The", 0.0),                         # both normalise to nothing
    ("spleen", "Liver", 0.0),
    ("." * 40 + "lung", "lung", 1.0),            # the second pass in open_recall removes the 8 left over
    ("." * 70 + "lung", "lung", 0.0),            # 64 removed in two passes, "......lung" remains
])
def test_open_is_unigram_recall(prediction: str, answer: str, expected: float) -> None:
    assert score(prediction, answer, "OPEN") == pytest.approx(expected, abs=1e-12)


def test_open_recall_counts_true_positives_on_the_prediction_side() -> None:
    # Upstream tp sums the *candidate's* counts: recall can exceed the share of gold words found.
    assert open_recall("lung lung lung lung", "left right lung") == 4 / 6
    assert open_recall("left", "left left lung") == 1 / 2  # tp = 1 (pred count), fn = 1 (lung)


def test_unknown_answer_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="OPEN or CLOSED"):
        score("yes", "Yes", "open")
