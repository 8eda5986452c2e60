"""Named, versioned scorers: one pure function per metric, reported side by side.

>>> score_one("llava_med", "Nodule", "No", "CLOSED")   # the paper metric's substring quirk
1.0
>>> score_one("exact", "Nodule", "No", "CLOSED")
0.0

Which text each scorer reads from a :class:`~slakevqa.records.Prediction` is fixed
by :func:`scored_text`: the ``choice`` scorer reads the best-scored candidate, the
others read ``prediction`` (or ``raw_output`` when asked, to score free text the
way the LLaVA-Med paper did). Definitions: ``docs/metrics.md``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from slakevqa.errors import UserError
from slakevqa.records import ANSWER_TYPES, Prediction
from slakevqa.scoring import llava_med, normalize
from slakevqa.scoring.peers import llava_med_v1, lmms_eval, multimedeval, reference

ScoreFn = Callable[[str, str, str], "float | None"]  # None: the metric defines no value for that question


@dataclass(frozen=True)
class Scorer:
    """A metric: ``fn(prediction, answer, answer_type) -> float`` in [0, 1], or None where it has no value."""

    name: str
    version: str
    fn: ScoreFn
    answer_types: tuple[str, ...]
    description: str


SCORERS: dict[str, Scorer] = {
    scorer.name: scorer for scorer in (
        Scorer("llava_med", llava_med.VERSION, llava_med.score, ANSWER_TYPES,
               "LLaVA-Med v1.0 paper metric: OPEN unigram recall, CLOSED normalised substring hit"),
        Scorer("exact", normalize.VERSION, normalize.exact, ANSWER_TYPES,
               "normalised exact match"),
        Scorer("token_f1", normalize.VERSION, normalize.token_f1, ANSWER_TYPES,
               "F1 of normalised word multisets"),
        Scorer("choice", normalize.VERSION, normalize.choice, ("CLOSED",),
               "CLOSED accuracy of the best-scored candidate (exact match)"),
        # Other pipelines' per-question metrics, each equal to that pipeline's code (scoring/peers/).
        Scorer("lmms_eval", lmms_eval.VERSION, lmms_eval.score, ANSWER_TYPES,
               "lmms-eval SLAKE: reasoning tags stripped, its normalised exact match"),
        Scorer("multimedeval_recall", multimedeval.VERSION, multimedeval.recall, ANSWER_TYPES,
               "MultiMedEval: token recall after its clean_str"),
        Scorer("multimedeval_f1", multimedeval.VERSION, multimedeval.f1, ANSWER_TYPES, "MultiMedEval: token F1"),
        Scorer("multimedeval_bleu1", multimedeval.VERSION, multimedeval.bleu1, ANSWER_TYPES, "MultiMedEval: BLEU-1"),
        Scorer("multimedeval_closed_accuracy", multimedeval.VERSION, multimedeval.closed_accuracy, ANSWER_TYPES,
               "MultiMedEval: questions whose gold is yes/no, recall >= 0.4"),
        Scorer("multimedeval_open_accuracy", multimedeval.VERSION, multimedeval.open_accuracy, ANSWER_TYPES,
               "MultiMedEval: questions whose gold is not yes/no, recall >= 0.75"),
        Scorer("reference_exact", reference.VERSION, reference.exact, ANSWER_TYPES,
               "reference toolkit: exact match after its text_norm"),
        Scorer("reference_token_f1", reference.VERSION, reference.token_f1, ("OPEN",),
               "reference toolkit: OPEN whitespace-token F1"),
        Scorer("reference_closed_accuracy", reference.VERSION, reference.closed_accuracy, ("CLOSED",),
               "reference toolkit: CLOSED accuracy"),
        Scorer("llava_med_f1", llava_med_v1.VERSION, llava_med_v1.f1, ("OPEN",),
               "LLaVA-Med v1.0 run_eval_batch: OPEN token F1"),
        Scorer("llava_med_precision", llava_med_v1.VERSION, llava_med_v1.precision, ("OPEN",),
               "LLaVA-Med v1.0 run_eval_batch: OPEN token precision"),
        Scorer("llava_med_open_hit", llava_med_v1.VERSION, llava_med_v1.open_hit, ("OPEN",),
               "LLaVA-Med v1.0 run_eval_batch: OPEN normalised substring hit ('open accuracy')"),
    )
}
# What results.json and reports tabulate by default: ours. Peers' numbers come with their own grouping
# and aggregation in results.json's "peers" (scoring/peers); their per-question scorers on request.
DEFAULT_SCORERS: tuple[str, ...] = ("llava_med", "exact", "token_f1", "choice")
TEXT_FIELDS: tuple[str, ...] = ("prediction", "raw_output")


def get_scorer(name: str) -> Scorer:
    """Look a scorer up by name, suggesting close names on a typo."""
    if name not in SCORERS:
        close = difflib.get_close_matches(name, SCORERS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserError(f"unknown scorer '{name}'.{hint} Known: {', '.join(SCORERS)}")
    return SCORERS[name]


def score_one(scorer: str, prediction: str, answer: str, answer_type: str) -> float | None:
    """One question's score under the named scorer.

    1.0 or 0.0 for a hit or a miss; for ``llava_med`` on OPEN questions the unigram
    recall; for ``token_f1`` the F1; None where the scorer defines no value for the
    question (a peer's group it is not in). Raises ``ValueError`` for an answer type the
    scorer does not cover (``choice`` on OPEN) or that is not OPEN/CLOSED.
    """
    spec = get_scorer(scorer)
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")
    if answer_type not in spec.answer_types:
        raise ValueError(f"scorer '{scorer}' does not score {answer_type} questions")
    value = spec.fn(prediction, answer, answer_type)
    return None if value is None else float(value)


def scored_text(scorer: str, row: Prediction, text_field: str = "prediction") -> str:
    """The text of ``row`` that ``scorer`` judges.

    ``choice`` takes the best-scored candidate and falls back to ``prediction`` when
    the question was answered by generation (no candidate scores).
    """
    if text_field not in TEXT_FIELDS:
        raise ValueError(f"text_field must be one of {TEXT_FIELDS}, got {text_field!r}")
    if scorer == "choice":
        return row.chosen if row.chosen is not None else row.prediction
    return getattr(row, text_field)


def scorer_versions(names: list[str] | tuple[str, ...] | None = None) -> dict[str, str]:
    """``{"llava_med": "llava_med-v1.0.0/1", ...}`` for results provenance."""
    return {name: get_scorer(name).version for name in (names or SCORERS)}


__all__ = ["DEFAULT_SCORERS", "SCORERS", "Scorer", "TEXT_FIELDS", "get_scorer", "score_one", "scored_text",
           "scorer_versions"]
