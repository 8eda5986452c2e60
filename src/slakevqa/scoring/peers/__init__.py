"""Other pipelines' SLAKE metrics, reproduced per question and with each peer's own headline.

One module per peer, each our own code written from reading the peer's (never copied), pinned
to the commit it reproduces (in its ``VERSION``), and checked against the peer's code run in a
scratch environment outside this repository. Every module offers the same three things:

* per-question scorers ``(prediction, answer, answer_type) -> float | None`` (None where the
  peer defines no value for that question);
* ``HEADLINE_KEYS`` and ``headline(rows)``: the peer's own summary numbers, with its own key
  names, grouping and aggregation, as fractions in [0, 1];
* where the peer writes answer files, a reader of them.
"""

from __future__ import annotations

from types import ModuleType
from typing import Sequence

from slakevqa.records import Prediction


def peer_modules() -> dict[str, ModuleType]:
    """``{peer: module}`` in the order results and reports show them (imported on use)."""
    from slakevqa.scoring.peers import llava_med_v1, lmms_eval, multimedeval, reference

    return {"llava_med": llava_med_v1, "lmms_eval": lmms_eval, "multimedeval": multimedeval, "reference": reference}


def peer_headlines(rows: Sequence[Prediction], text_field: str = "prediction") -> dict[str, dict]:
    """Each peer's headline numbers for ``rows``: ``{peer: {its key: fraction or None}}``.

    The peers read the text our scorers read (``text_field``). A peer whose own code prints
    nothing for such a run (LLaVA-Med's script needs both OPEN and CLOSED questions) gets
    None for each key.
    """
    items = [(getattr(row, text_field), row.answer, row.answer_type) for row in rows]
    out = {}
    for name, module in peer_modules().items():
        try:
            out[name] = {key: float(value) for key, value in module.headline(items).items()}
        except ValueError:  # a group the peer divides by is empty: it prints no table
            out[name] = {key: None for key in module.HEADLINE_KEYS}
    return out


def peer_versions() -> dict[str, str]:
    """``{peer: VERSION}``: the pinned commit each peer's numbers reproduce."""
    return {name: module.VERSION for name, module in peer_modules().items()}
