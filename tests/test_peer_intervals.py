"""Other pipelines' headlines get intervals and paired tests (slakevqa.scoring.peer_intervals).

Each peer's headline must be exactly the mean of its per-question values (or a sum of such means), or the
bootstrap would resample something else than the number shown; and a headline's interval must be what
resampling the questions and calling the peer's own ``headline`` on each resample gives.
"""

from __future__ import annotations

import numpy as np
import pytest

from slakevqa.records import Prediction
from slakevqa.scoring.aggregate import interval, resample_index
from slakevqa.scoring.peer_intervals import peer_cells, question_arrays
from slakevqa.scoring.peers import peer_headlines, peer_modules

# Predictions with every kind of case the peers score differently: exact, partial, extra words, case, yes/no.
CASES = [("Left Lung", "Left Lung", "OPEN"), ("lung", "Left Lung", "OPEN"), ("the liver, mostly", "Liver", "OPEN"),
         ("CT", "MRI", "OPEN"), ("Heart and lung", "Heart", "OPEN"), ("yes", "Yes", "CLOSED"),
         ("No", "Yes", "CLOSED"), ("no.", "No", "CLOSED"), ("T2", "T2", "CLOSED"), ("brain", "Brain", "OPEN")]


def rows(shift: int, n: int = 60) -> list[Prediction]:
    """``n`` predictions cycling through CASES, ``shift`` moving which prediction meets which answer."""
    out = []
    for qid in range(n):
        answer, kind = CASES[qid % len(CASES)][1:]
        prediction = CASES[(qid + shift * (qid % 3 == 0)) % len(CASES)][0]
        out.append(Prediction(qid=qid, img_name=f"img{qid % 7}", question=f"Q{qid}?", answer=answer,
                              answer_type=kind, prediction=prediction))
    return out


@pytest.mark.parametrize("shift", [0, 1, 4])
def test_every_headline_is_the_mean_of_its_question_values(shift: int) -> None:
    run = rows(shift)
    heads, arrays = peer_headlines(run), question_arrays(run, "prediction")
    for name, module in peer_modules().items():
        means = {key: float(np.nanmean(values)) for key, values in arrays[name].items()}
        means.update({key: combine(means) for key, combine in getattr(module, "DERIVED", {}).items()})
        assert means == pytest.approx(heads[name], abs=1e-12), name


def test_intervals_equal_resampling_the_peers_own_headline() -> None:
    run_a, run_b = rows(0), rows(3)
    cells, pairs = peer_cells([run_a, run_b], "prediction", resamples=200, seed=7)
    index = resample_index(np.array([row.qid for row in run_a], dtype=np.int64), 200, 7)
    for name, module in peer_modules().items():
        items = [[(r.prediction, r.answer, r.answer_type) for r in run] for run in (run_a, run_b)]
        own = [[module.headline([run[i] for i in sample]) for sample in index] for run in items]
        for key in module.HEADLINE_KEYS:
            a, b = (np.array([head[key] for head in heads]) for heads in own)
            assert (cells[0][name][key]["ci_low"], cells[0][name][key]["ci_high"]) == pytest.approx(interval(a))
            assert (pairs[0][name][key]["ci_low"], pairs[0][name][key]["ci_high"]) == pytest.approx(interval(b - a))
            assert pairs[0][name][key]["delta"] == pytest.approx(
                peer_headlines(run_b)[name][key] - peer_headlines(run_a)[name][key])


def test_group_counts_and_a_run_the_peer_cannot_score() -> None:
    run = rows(0)
    cells, _ = peer_cells([run, run], "prediction", resamples=50, seed=0)
    opened = sum(r.answer_type == "OPEN" for r in run)
    assert cells[0]["lmms_eval"]["slake_open_accuracy"]["n"] == opened
    assert cells[0]["lmms_eval"]["slake_accuracy"]["n"] == len(run)
    only_open = [r for r in run if r.answer_type == "OPEN"]  # LLaVA-Med's script prints no table without CLOSED
    cells, pairs = peer_cells([only_open, only_open], "prediction", resamples=50, seed=0)
    assert all(cell["value"] is None for cell in cells[0]["llava_med"].values())
    assert all(pair["delta"] is None for pair in pairs[0]["llava_med"].values())
