"""The numbers behind the report's figures: confusion counts, yes/no margins, worst errors."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from slakevqa.records import Prediction
from slakevqa.scoring.normalize import normalize_answer

OTHER = "(other)"


def closed_confusion(rows: Sequence[Prediction],
                     max_labels: int = 8) -> tuple[list[str], list[list[int]]]:
    """Gold x chosen answer counts over CLOSED questions, normalised answers.

    The ``max_labels`` most frequent gold answers get their own row and column;
    everything else falls into ``(other)``. ``matrix[i][j]`` counts gold ``labels[i]``
    answered ``labels[j]``.

    >>> rows = [Prediction(qid=1, question="q", answer="Yes", answer_type="CLOSED", prediction="no")]
    >>> closed_confusion(rows)
    (['yes', '(other)'], [[0, 1], [0, 0]])
    """
    closed = [row for row in rows if row.answer_type == "CLOSED"]
    gold = [normalize_answer(row.answer) for row in closed]
    chosen = [normalize_answer(row.chosen if row.chosen is not None else row.prediction)
              for row in closed]
    labels = [label for label, _ in Counter(gold).most_common(max_labels)] + [OTHER]
    position = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, c in zip(gold, chosen):
        matrix[position.get(g, len(labels) - 1)][position.get(c, len(labels) - 1)] += 1
    return labels, matrix


def yes_no_margins(rows: Sequence[Prediction]) -> dict[str, list[float]]:
    """Score of "yes" minus score of "no", split by the gold answer.

    Only CLOSED questions whose candidates include both yes and no and whose gold
    is yes or no take part. Positive means the model leaned to yes.

    >>> rows = [Prediction(qid=1, question="q", answer="No", answer_type="CLOSED", prediction="yes",
    ...                    candidates=("Yes", "No"), scores=(-0.5, -2.0))]
    >>> yes_no_margins(rows)
    {'yes': [], 'no': [1.5]}
    """
    margins: dict[str, list[float]] = {"yes": [], "no": []}
    for row in rows:
        gold = normalize_answer(row.answer)
        if row.answer_type != "CLOSED" or gold not in margins or not row.scores:
            continue
        by_answer = {normalize_answer(c): s for c, s in zip(row.candidates, row.scores)}
        if "yes" in by_answer and "no" in by_answer:
            margins[gold].append(by_answer["yes"] - by_answer["no"])
    return margins


def worst_errors(rows: Sequence[Prediction], exact: np.ndarray, token_f1: np.ndarray,
                 limit: int = 24) -> list[int]:
    """Indices of the worst misses (``exact == 0``): least word overlap first, then
    the most confident (largest candidate margin), then qid."""
    misses = [i for i in range(len(rows)) if exact[i] == 0]
    misses.sort(key=lambda i: (token_f1[i], -(rows[i].margin or 0.0), rows[i].qid))
    return misses[:limit]
