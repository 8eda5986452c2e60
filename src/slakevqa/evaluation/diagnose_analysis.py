"""What diagnose mode measures, as pure functions of Predictions (no model, no files).

Each function takes the rows of one run and returns a JSON-ready dict; the
numbers behind them (confusion counts, yes/no margins, worst errors) come from
:mod:`slakevqa.scoring.analysis` and :mod:`slakevqa.scoring`, so the report and
the diagnostics cannot disagree. Yes/no and answers are compared with
:func:`~slakevqa.scoring.normalize.normalize_answer` (the ``exact`` scorer's
normaliser); routes and candidates with :func:`~slakevqa.inputs.answer_keys.match_key`
(what routing itself uses), as noted where each is used.

>>> rows = [Prediction(qid=1, question="Is it?", answer="No", answer_type="CLOSED", prediction="Yes",
...                    candidates=("Yes", "No"), scores=(-0.50, -0.55), route="yesno")]
>>> yes_no_bias(rows)["margins"]["tiny"]["0.1"]
{'count': 1, 'share': 1.0}
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Sequence

import numpy as np

from slakevqa.evaluation.extract import GENERIC_ANSWERS
from slakevqa.inputs.answer_keys import match_key
from slakevqa.inputs.routing import predict_answer_type
from slakevqa.records import Prediction
from slakevqa.scoring.aggregate import RESAMPLES, SEED, resample_index, score_rows
from slakevqa.scoring.analysis import OTHER, closed_confusion, worst_errors, yes_no_margins
from slakevqa.scoring.normalize import normalize_answer
from slakevqa.scoring.paired import align, paired_cell

# Signed yes-minus-no margin bin edges; the outer bins are open-ended.
MARGIN_EDGES: tuple[float, ...] = (-2.0, -1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 1.0, 2.0)
TINY_MARGINS: tuple[float, ...] = (0.1, 0.5)
ERROR_SLICES: tuple[str, ...] = ("content_type", "modality", "answer_type", "base_type", "location")
ABLATION_SCORERS: tuple[str, ...] = ("exact", "llava_med")
# "Image 1", "scan 2": the numbered form LLaVA-Med is known to fall into.
_NUMBERED = re.compile(r"^(.*?)\s*\d+$")


# ---------------------------------------------------------------- small statistics

def distribution(values: Sequence[float]) -> dict:
    """``{"n", "mean", "median", "p10", "p90", "min", "max"}``; every statistic None when empty.

    >>> distribution([1.0, 2.0, 3.0])["median"]
    2.0
    """
    if len(values) == 0:
        return {"n": 0, **{k: None for k in ("mean", "median", "p10", "p90", "min", "max")}}
    data = np.asarray(values, dtype=np.float64)
    p10, median, p90 = np.quantile(data, [0.1, 0.5, 0.9])
    return {"n": int(data.size), "mean": float(data.mean()), "median": float(median), "p10": float(p10),
            "p90": float(p90), "min": float(data.min()), "max": float(data.max())}


def histogram(values: Sequence[float], edges: Sequence[float] = MARGIN_EDGES) -> list[dict]:
    """Counts per bin ``[low, high)``; the first bin has ``low`` None, the last ``high`` None.

    >>> bins = histogram([-3.0, 0.05, 0.05], (-1.0, 0.0, 1.0))
    >>> bins[0], [b["count"] for b in bins]
    ({'low': None, 'high': -1.0, 'count': 1}, [1, 0, 2, 0])
    """
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="right")
    counts = np.bincount(bins, minlength=len(edges) + 1)
    bounds = [None, *edges, None]
    return [{"low": bounds[i], "high": bounds[i + 1], "count": int(counts[i])} for i in range(len(edges) + 1)]


def share(count: int, total: int) -> float | None:
    """``count / total``, None when there is nothing to divide."""
    return count / total if total else None


def chosen_text(row: Prediction) -> str:
    """The answer a row committed to: the best-scored candidate, else the generated prediction."""
    return row.chosen if row.chosen is not None else row.prediction


def brief(row: Prediction, **extra: object) -> dict:
    """The fields an example needs to be read on its own."""
    return {"qid": row.qid, "question": row.question, "answer": row.answer, "prediction": row.prediction,
            "route": row.route, **extra}


# ---------------------------------------------------------------- yes/no bias

def yes_no_bias(rows: Sequence[Prediction], tiny: Sequence[float] = TINY_MARGINS,
                edges: Sequence[float] = MARGIN_EDGES, limit: int = 10) -> dict:
    """Does the model lean to "yes"? Over CLOSED questions whose gold is yes or no.

    Margins are score("yes") - score("no") (positive leans yes), from rows whose
    candidates hold both. Output::

        {"questions": 40, "gold": {"yes": 22, "no": 18},
         "confusion": {"yes": {"yes": 20, "no": 2, "other": 0}, "no": {"yes": 11, "no": 7, "other": 0}},
         "accuracy": {"yes": 0.91, "no": 0.39, "overall": 0.68, "balanced": 0.65},
         "predicted_yes_rate": 0.78, "gold_yes_rate": 0.55, "yes_bias": 0.23,
         "margins": {"scored": 40, "signed": {distribution}, "abs": {...}, "by_gold": {"yes": {...}, "no": {...}},
                     "histogram": [{"low": null, "high": -2.0, "count": 0}, ...],
                     "tiny": {"0.1": {"count": 9, "share": 0.225}, "0.5": {...}}},
         "confident_errors": [{"qid": ..., "margin": 1.9, ...}]}
    """
    yes_no = [r for r in rows if r.answer_type == "CLOSED" and normalize_answer(r.answer) in ("yes", "no")]
    confusion = yes_no_confusion(yes_no)
    gold = {g: sum(confusion[g].values()) for g in ("yes", "no")}
    predicted_yes = confusion["yes"]["yes"] + confusion["no"]["yes"]
    margins = yes_no_margins(yes_no)
    signed = margins["yes"] + margins["no"]
    return {"questions": len(yes_no), "gold": gold, "confusion": confusion,
            "accuracy": yes_no_accuracy(confusion), "predicted_yes_rate": share(predicted_yes, len(yes_no)),
            "gold_yes_rate": share(gold["yes"], len(yes_no)),
            "yes_bias": share(predicted_yes - gold["yes"], len(yes_no)),
            "margins": margin_summary(margins, signed, tiny, edges),
            "confident_errors": confident_errors(yes_no, limit)}


def yes_no_confusion(rows: Sequence[Prediction]) -> dict[str, dict[str, int]]:
    """``{gold: {"yes": n, "no": n, "other": n}}`` from :func:`closed_confusion` (normalised answers)."""
    labels, matrix = closed_confusion(rows, max_labels=2)
    table = {g: {"yes": 0, "no": 0, "other": 0} for g in ("yes", "no")}
    for i, gold in enumerate(labels):
        for j, chosen in enumerate(labels):
            if gold in table and matrix[i][j]:
                table[gold]["other" if chosen == OTHER else chosen] += matrix[i][j]
    return table


def yes_no_accuracy(confusion: dict[str, dict[str, int]]) -> dict[str, float | None]:
    """Per-class accuracy (recall of each gold class), overall, and their mean (balanced)."""
    per = {g: share(confusion[g][g], sum(confusion[g].values())) for g in ("yes", "no")}
    hits = confusion["yes"]["yes"] + confusion["no"]["no"]
    total = sum(sum(c.values()) for c in confusion.values())
    present = [v for v in per.values() if v is not None]
    return {**per, "overall": share(hits, total), "balanced": sum(present) / len(present) if present else None}


def margin_summary(margins: dict[str, list[float]], signed: list[float], tiny: Sequence[float],
                   edges: Sequence[float]) -> dict:
    """Distributions, histogram and tiny-margin shares of the signed yes-minus-no margins."""
    absolute = [abs(m) for m in signed]
    tiny_shares = {str(t): {"count": sum(a < t for a in absolute), "share": share(sum(a < t for a in absolute),
                                                                                 len(absolute))} for t in tiny}
    return {"scored": len(signed), "signed": distribution(signed), "abs": distribution(absolute),
            "by_gold": {g: distribution(margins[g]) for g in ("yes", "no")},
            "histogram": histogram(signed, edges), "tiny": tiny_shares}


def confident_errors(rows: Sequence[Prediction], limit: int) -> list[dict]:
    """Wrong yes/no answers, the most confident (largest margin) first."""
    wrong = [r for r in rows if normalize_answer(chosen_text(r)) != normalize_answer(r.answer)]
    wrong.sort(key=lambda r: (-(r.margin or 0.0), r.qid))
    return [brief(r, margin=r.margin, prompt=r.prompt) for r in wrong[:limit]]


# ---------------------------------------------------------------- generic answers

def generic_word(text: str) -> str | None:
    """The generic word an answer consists of ("image", "scan", also "Image 1"), else None.

    >>> generic_word("Image 1"), generic_word("X-ray."), generic_word("Liver")
    ('image', 'xray', None)
    """
    key = match_key(text)
    numbered = _NUMBERED.match(key)
    for candidate in (key, numbered.group(1) if numbered else None):
        if candidate in GENERIC_ANSWERS:
            return candidate
    return None


def generic_answers(rows: Sequence[Prediction], limit: int = 10, top: int = 10) -> dict:
    """How often OPEN answers describe the input ("image", "scan") instead of answering it.

    A generic word that *is* the gold answer ("X-Ray" to "Which modality ...?") is
    a right answer, not a generic one: it is counted apart as ``generic_but_gold``.
    Output::

        {"open_questions": 200, "generic": 14, "rate": 0.07, "generic_but_gold": 3, "generic_set": ["image", ...],
         "by_word": {"image": 12, "scan": 2}, "by_content_type": {"Organ": {"open": 60, "generic": 9, "rate": 0.15}},
         "top_predictions": [["liver", 30], ...], "examples": [{"qid": ..., "raw_output": ...}]}
    """
    open_rows = [r for r in rows if r.answer_type == "OPEN"]
    words = [(r, generic_word(r.prediction)) for r in open_rows]
    hits = [(r, w) for r, w in words if w is not None and w != generic_word(r.answer)]
    gold_hits = sum(w is not None and w == generic_word(r.answer) for r, w in words)
    return {"open_questions": len(open_rows), "generic": len(hits), "rate": share(len(hits), len(open_rows)),
            "generic_but_gold": gold_hits, "generic_set": sorted(GENERIC_ANSWERS),
            "by_word": dict(Counter(w for _, w in hits).most_common()),
            "by_content_type": generic_by_content_type(open_rows, [r for r, _ in hits]),
            "top_predictions": Counter(match_key(r.prediction) for r in open_rows).most_common(top),
            "examples": [brief(r, raw_output=r.raw_output, content_type=r.content_type) for r, _ in hits[:limit]]}


def generic_by_content_type(open_rows: list[Prediction], generic: list[Prediction]) -> dict[str, dict]:
    """``{"Organ": {"open": 60, "generic": 9, "rate": 0.15}, ...}``, content types in name order."""
    total, hit = Counter(r.content_type for r in open_rows), Counter(r.content_type for r in generic)
    return {t: {"open": total[t], "generic": hit[t], "rate": share(hit[t], total[t])} for t in sorted(total)}


# ---------------------------------------------------------------- routing

def routing_errors(rows: Sequence[Prediction], limit: int = 10) -> dict:
    """Routes taken, gold answers the candidates miss, OPEN/CLOSED disagreements, vocabulary routes.

    Output::

        {"routes": {"CLOSED": {"yesno": 349, "options": 61, "vocab": 6}, "OPEN": {"open": 645}},
         "gold_not_in_candidates": {"count": 9, "of": 416, "by_route": {"options": 8, "vocab": 1},
                                    "exact_reachable": 1, "items": [...]},
         "answer_type_disagreement": {"count": 12, "matrix": {"OPEN": {"OPEN": 600, "CLOSED": 45}, ...},
                                      "items": [...]},
         "vocab_routed": {"count": 6, "gold_in_vocab": 5, "correct": 2, "items": [...]}}
    """
    routes: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        routes[r.answer_type][r.route or "(none)"] += 1
    return {"routes": {t: dict(c.most_common()) for t, c in sorted(routes.items())},
            "gold_not_in_candidates": gold_not_in_candidates(rows, limit),
            "answer_type_disagreement": answer_type_disagreement(rows, limit),
            "vocab_routed": vocab_routed(rows, limit)}


def gold_in_candidates(row: Prediction) -> bool:
    """The gold answer equals a candidate under :func:`match_key` (routing's own comparison)."""
    return match_key(row.answer) in {match_key(c) for c in row.candidates}


def gold_not_in_candidates(rows: Sequence[Prediction], limit: int) -> dict:
    """CLOSED rows answered from candidates none of which is the gold answer.

    ``match_key`` keeps articles and number words, so "the liver" misses "Liver";
    ``exact_reachable`` counts misses where a candidate still scores 1 under the
    ``exact`` scorer's looser normaliser (not a real ceiling loss).
    """
    closed = [r for r in rows if r.answer_type == "CLOSED" and r.candidates]
    missing = [r for r in closed if not gold_in_candidates(r)]
    reachable = {r.qid for r in missing
                 if normalize_answer(r.answer) in {normalize_answer(c) for c in r.candidates}}
    items = [brief(r, candidates=list(r.candidates), exact_reachable=r.qid in reachable) for r in missing[:limit]]
    return {"count": len(missing), "of": len(closed), "by_route": dict(Counter(r.route for r in missing)),
            "exact_reachable": len(reachable), "items": items}


def answer_type_disagreement(rows: Sequence[Prediction], limit: int) -> dict:
    """SLAKE's ``answer_type`` against :func:`predict_answer_type` (the question-only classifier)."""
    matrix = {t: {"OPEN": 0, "CLOSED": 0} for t in ("OPEN", "CLOSED")}
    items = []
    for r in rows:
        predicted = predict_answer_type(r.question)
        matrix[r.answer_type][predicted] += 1
        if predicted != r.answer_type:
            items.append({"qid": r.qid, "question": r.question, "answer": r.answer,
                          "answer_type": r.answer_type, "predicted_answer_type": predicted, "route": r.route})
    return {"count": len(items), "matrix": matrix, "items": items[:limit]}


def vocab_routed(rows: Sequence[Prediction], limit: int) -> dict:
    """Questions answered from the closed vocabulary: the route of last resort."""
    vocab = [r for r in rows if r.route == "vocab"]
    correct = [r for r in vocab if normalize_answer(chosen_text(r)) == normalize_answer(r.answer)]
    items = [brief(r, gold_in_vocab=gold_in_candidates(r), candidates=len(r.candidates)) for r in vocab[:limit]]
    return {"count": len(vocab), "gold_in_vocab": sum(gold_in_candidates(r) for r in vocab),
            "correct": len(correct), "items": items}


# ---------------------------------------------------------------- errors per slice

def errors_by_slice(rows: Sequence[Prediction], fields: Sequence[str] = ERROR_SLICES, limit: int = 10) -> dict:
    """The worst ``exact`` misses of every slice value (ranked by :func:`worst_errors`).

    Output::

        {"scorer": "exact", "limit": 10,
         "slices": {"modality": {"CT": {"questions": 40, "errors": 12, "exact": 0.7,
                                        "worst": [{"qid": ..., "prediction": ..., "token_f1": 0.0,
                                                   "margin": 1.2, "prompt": "[INST] ..."}]}}}}
    """
    scores = score_rows(rows, ["exact", "token_f1"])
    slices: dict[str, dict] = {}
    for name in fields:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            groups[str(getattr(r, name))].append(i)
        slices[name] = {value: slice_errors([rows[i] for i in index], scores["exact"][index],
                                            scores["token_f1"][index], limit)
                        for value, index in sorted(groups.items())}
    return {"scorer": "exact", "limit": limit, "slices": slices}


def slice_errors(rows: list[Prediction], exact: np.ndarray, token_f1: np.ndarray, limit: int) -> dict:
    """One slice value: its size, misses, ``exact`` accuracy and worst misses."""
    worst = worst_errors(rows, exact, token_f1, limit)
    items = [brief(rows[i], raw_output=rows[i].raw_output, candidates=list(rows[i].candidates),
                   margin=rows[i].margin, token_f1=float(token_f1[i]), prompt=rows[i].prompt) for i in worst]
    return {"questions": len(rows), "errors": int((exact == 0).sum()), "exact": float(exact.mean()),
            "worst": items}


# ---------------------------------------------------------------- KG ablation

def kg_ablation(with_kg: Sequence[Prediction], without_kg: Sequence[Prediction], limit: int = 10,
                scorers: Sequence[str] = ABLATION_SCORERS) -> dict:
    """Paired scores of the same questions answered with and without KG facts in the prompt.

    ``fixed``: the facts raised the question's score; ``broken``: they lowered it.
    ``delta`` = with - without, with a paired bootstrap 95% interval. Output::

        {"questions": 6, "changed_answers": 2,
         "scores": {"exact": {"with": 0.5, "without": 0.33, "delta": 0.17, "ci_low": 0.0, "ci_high": 0.5,
                              "p_value": 0.4, "fixed": 1, "broken": 0, "unchanged": 5}, "llava_med": {...}},
         "examples": [{"qid": ..., "with_kg": "Liver", "without_kg": "lung", "exact": [1.0, 0.0], ...}]}
    """
    with_kg, without_kg = align(with_kg, without_kg, "with KG", "without KG")
    on, off = score_rows(with_kg, scorers), score_rows(without_kg, scorers)
    qids = np.array([r.qid for r in with_kg], dtype=np.int64)
    index = resample_index(qids, RESAMPLES, SEED) if len(qids) else None
    table = {name: paired_scores(on[name], off[name], index) for name in scorers}
    changed = [i for i, (a, b) in enumerate(zip(with_kg, without_kg)) if a.prediction != b.prediction]
    examples = [ablation_example(with_kg[i], without_kg[i], {n: (on[n][i], off[n][i]) for n in scorers})
                for i in changed[:limit]]
    return {"questions": len(with_kg), "changed_answers": len(changed), "scores": table, "examples": examples}


def paired_scores(on: np.ndarray, off: np.ndarray, index: np.ndarray | None) -> dict:
    """One scorer's paired cell (:func:`paired_cell`, a = without, b = with) plus fixed/broken counts."""
    cell = paired_cell(off, on, index)
    return {"with": cell["b"], "without": cell["a"], "delta": cell["delta"], "ci_low": cell["ci_low"],
            "ci_high": cell["ci_high"], "p_value": cell["p_value"], "n": cell["n"],
            "fixed": int((on > off).sum()), "broken": int((on < off).sum()), "unchanged": int((on == off).sum())}


def ablation_example(on: Prediction, off: Prediction, scores: dict[str, tuple[float, float]]) -> dict:
    """A question whose answer changed: both answers, ``[with, without]`` per scorer, the prompt with facts."""
    return {"qid": on.qid, "question": on.question, "answer": on.answer, "answer_type": on.answer_type,
            "with_kg": on.prediction, "without_kg": off.prediction,
            **{name: [float(a), float(b)] for name, (a, b) in scores.items()}, "prompt_with_kg": on.prompt}
