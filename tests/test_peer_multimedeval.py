"""MultiMedEval (d9ac283) SLAKE metrics, rule by rule, on hand-computed cases.

Each expected value was worked out from upstream ``VQA.evaluate`` / ``clean_str`` /
``SLAKE.get_correct_answer`` and torchmetrics 1.6.1 ``BLEUScore(n_gram=1)``, and the module
was checked once against that code run in a scratch folder (132 golden + 26,525 cases built
from the real English test split: 100% per question, headlines bit-equal).

BLEU here goes through the pure-Python fallback (no torch import, so the file stays fast) on
cases where it is bit-equal to torch; the one case where torch's float32 ``log`` differs is
marked slow.
"""

from __future__ import annotations

import pytest

from slakevqa.scoring.peers import multimedeval as mme


@pytest.fixture(autouse=True)
def _python_bleu(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Keep torch out of the fast tests; the slow test below checks the torch path."""
    if "slow" not in request.keywords:
        monkeypatch.setattr(mme, "_bleu_from_counts", mme._bleu_from_counts_python)


def test_version_pins_the_commit() -> None:
    assert mme.VERSION == "multimedeval-d9ac283/1"


@pytest.mark.parametrize("text, expected", [
    ("The Left-Lung.", "left lung"),          # lowercase, mark -> space, period and article dropped
    ("chest x-ray - pa", "chest xray pa"),    # a mark touching a space is deleted everywhere
    ("Two nodules", "2 nodules"),             # number words become digits
    ("3.5 cm.", "3.5 cm"),                    # a period before a digit stays
    ("", ""),
])
def test_clean_str(text: str, expected: str) -> None:
    assert mme.clean_str(text) == expected


@pytest.mark.parametrize("prediction, answer, expected", [
    ("Left lung and liver", "the left lung", 1.0),   # articles dropped, extra words free
    ("lung, left", "Left Lung", 1.0),                # word sets: order does not matter
    ("lung", "left lung", 0.5),
    ("lung lung", "lung lung liver", 0.5),           # sets: repeats count once on both sides
    ("", "Liver", 0.0),                              # empty prediction
    ("liver", "The", 0.0),                           # gold cleans to "": 0, not a division error
    ("two", "2", 1.0),                               # number words mapped on both sides
    ("x-ray", "X-Ray ", 1.0),                        # gold is stripped before cleaning ("x ray")
    ("xray", "X-Ray", 0.0),                          # ... so the hyphen became a space, not nothing
])
def test_recall(prediction: str, answer: str, expected: float) -> None:
    assert mme.recall(prediction, answer, "OPEN") == expected


@pytest.mark.parametrize("prediction, answer, expected", [
    ("left lung", "Left Lung", 2 / (2 + 1e-8)),            # the 1e-8 keeps a perfect F1 below 1
    ("lung", "left lung", 2 * 0.5 / (1.5 + 1e-8)),          # p = 1, r = 0.5
    ("lung lung lung", "lung", 2 / (2 + 1e-8)),             # sets: repeats cost no precision
    ("", "lung", 0.0),
])
def test_f1(prediction: str, answer: str, expected: float) -> None:
    assert mme.f1(prediction, answer, "OPEN") == expected


@pytest.mark.parametrize("prediction, answer, expected", [
    ("Yes.", "yes", 1.0),
    ("no", "No", 1.0),
    ("Not enlarged", "No", 1.0),       # gold "no" widened to {no, not}: recall 1/2 >= 0.4
    ("no, not here", "No", 1.0),       # both words: recall 1
    ("nodule", "No", 0.0),             # whole words only (LLaVA-Med's substring rule would hit)
    ("yes and no", "Yes", 1.0),        # hedging hits both golds
    ("yes and no", "No", 1.0),
    ("not", "Yes", 0.0),
    ("", "No", 0.0),
])
def test_closed_accuracy(prediction: str, answer: str, expected: float) -> None:
    assert mme.closed_accuracy(prediction, answer, "CLOSED") == expected


@pytest.mark.parametrize("prediction, answer, expected", [
    ("left and right lung", "Right Lung", 1.0),      # recall 1 >= 0.75
    ("right lung", "right lung, left", 0.0),         # recall 2/3 < 0.75
    ("left upper lobe", "Left upper lobe, lung", 1.0),  # 3/4 = 0.75: the bound is inclusive
])
def test_open_accuracy(prediction: str, answer: str, expected: float) -> None:
    assert mme.open_accuracy(prediction, answer, "OPEN") == expected


def test_groups_follow_the_gold_text_not_answer_type() -> None:
    # A SLAKE CLOSED question whose gold is "Left" is in MultiMedEval's open group ...
    assert mme.closed_accuracy("Left", "Left", "CLOSED") is None
    assert mme.open_accuracy("Left", "Left", "CLOSED") == 1.0
    # ... and a yes/no gold is closed whatever answer_type says (it is ignored).
    assert mme.closed_accuracy("yes", "Yes", "OPEN") == 1.0
    assert mme.open_accuracy("yes", "Yes", "OPEN") is None
    assert mme.is_closed(" No. ") and not mme.is_closed("No effusion")


@pytest.mark.parametrize("prediction, answer, expected", [
    ("left lung", "Left Lung", 1.0),
    ("lung left", "left lung", 1.0),                       # unigrams: order free
    ("left", "left lung", 0.3678794503211975),             # BP float32(exp(1 - 2/1))
    ("lung lung lung", "lung", 0.3333333134651184),        # clipping 1/3; float32 exp(log p) ends 1 ULP low
    ("lung liver", "lung", 0.5),                           # longer prediction: no brevity penalty
    ("lung liver", "lung heart", 0.5),                     # equal lengths: BP exp(0) = 1
    ("liver", "lung", 0.0),                                # no match: 0 before any log
    ("", "lung", 0.0),
    ("lung", "the", 0.0),                                  # gold cleans to ""
])
def test_bleu1(prediction: str, answer: str, expected: float) -> None:
    assert mme.bleu1(prediction, answer, "OPEN") == expected


@pytest.mark.slow
def test_bleu1_uses_torch_float32_log(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    # 1 match in 14 words. torch's float32 log/exp are not correctly rounded and their last bit depends on
    # the CPU: exp(log(1/14)) was 0.071428582072258 (one ULP above float32(1/14)) on one CI machine and
    # float32(1/14) itself on another. MultiMedEval computes it with torch on the user's machine, so the
    # score must be torch's own bits here: torchmetrics' _bleu_score_compute, written out in its op order.
    precision = torch.tensor([1.0]) / torch.tensor([14.0])
    torchmetrics_bits = (torch.tensor(1.0) * torch.exp(torch.sum(torch.tensor([1.0]) * torch.log(precision)))).item()
    prediction = "lung " + " ".join(f"w{i}" for i in range(13))
    monkeypatch.setattr(mme, "_bleu_from_counts_python", None)  # the fallback must not be what answers
    assert mme.bleu1(prediction, "lung", "OPEN") == torchmetrics_bits
    monkeypatch.undo()
    assert mme._bleu_from_counts_python(1, 14, 1) == 0.0714285671710968  # correctly rounded: float32(1/14)


def test_headline_on_a_small_run() -> None:
    rows = [
        ("Yes", "yes", "CLOSED"),              # closed hit; recall 1, F1 ~1, BLEU 1
        ("Not enlarged", "No", "CLOSED"),      # closed hit via "not"; recall 0 (gold {no}), BLEU 0
        ("left", "Left", "CLOSED"),            # open group (gold not yes/no): recall 1, BLEU 1
        ("left", "Left Lung", "OPEN"),         # open: recall 0.5, miss; BLEU exp(-1)
    ]
    got = mme.headline(rows)
    assert tuple(got) == mme.HEADLINE_KEYS
    perfect = 2 / (2 + 1e-8)
    half = 2 * 0.5 / (1.5 + 1e-8)
    assert got["bleu"] == (1.0 + 0.0 + 1.0 + 0.3678794503211975) / 4
    assert got["F1"] == (perfect + 0 + perfect + half) / 4
    assert got["recall"] == 2.5 / 4
    assert got["closedQuestionsAccuracy"] == 1.0
    assert got["openQuestionsRecall"] == 0.75
    assert got["openQuestionsAccuracy"] == 0.5


def test_headline_of_nothing_is_zero() -> None:
    # Upstream guards every mean with "if len(...) > 0 else 0".
    assert mme.headline([]) == {key: 0.0 for key in mme.HEADLINE_KEYS}
    only_open = mme.headline([("liver", "Liver", "OPEN")])
    assert only_open["closedQuestionsAccuracy"] == 0.0 and only_open["openQuestionsAccuracy"] == 1.0
