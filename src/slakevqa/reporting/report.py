"""``report.md`` and a self-contained ``report.html`` for one run directory.

Both come from the run's files alone: ``predictions.jsonl`` and, when present,
``results.json`` (otherwise the predictions are scored here with default settings).
Sections: provenance, headline table, per-slice bars with 95% intervals, CLOSED
confusion matrix, yes/no margin histogram, and a gallery of the worst errors with
image thumbnails and the prompt.

Every piece of data or model text (questions, answers, predictions, names from
results.json, file names) enters report.md through :mod:`slakevqa.escaping`: as text
(:func:`~slakevqa.escaping.md_text`), as inline code, or as the prompt's fenced block, so
none of it can add a heading, a link, a table row or an HTML tag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from slakevqa.escaping import md_code, md_code_block, md_text
from slakevqa.files import write_text_atomic
from slakevqa.records import Prediction
from slakevqa.reporting.html import render_html
from slakevqa.reporting.tables import headline_table, markdown_table, peers_table, slice_table
from slakevqa.reporting.view import BAR_SCORERS, PEERS_NOTE, RunView, load_run, provenance_lines, slice_fields
from slakevqa.scoring import analysis


def render_markdown(view: RunView) -> str:
    """The whole report as Markdown (figures as tables; images by path)."""
    provenance = [(name, md_text(value)) for name, value in provenance_lines(view.results)]
    out = [f"# SLAKE evaluation report: {md_text(view.run_dir.name)}", "",
           f"Results: {md_text(view.results_source)}. {len(view.rows)} predictions.", "",
           markdown_table(["item", "value"], provenance), "",
           "## Headline (percent, 95% bootstrap interval, count)", "",
           headline_table(view.results), "", md_text(view.comparability), ""]
    if view.results.get("peers"):
        out += ["## Other pipelines' numbers (percent)", "", PEERS_NOTE, "", peers_table(view.results), ""]
    for scorer in [s for s in BAR_SCORERS if s in view.results.get("slices", {})]:
        out += [f"## Slices under `{scorer}`", ""]
        for field in slice_fields(view.results):
            out += [slice_table(view.results, scorer, field), ""]
    out += _confusion_markdown(view.rows) + _margins_markdown(view.rows) + _worst_markdown(view)
    return "\n".join(out)


def _confusion_markdown(rows: Sequence[Prediction]) -> list[str]:
    labels, matrix = analysis.closed_confusion(rows)
    table = markdown_table(["gold \\ chosen"] + labels,
                           [[md_text(label)] + [str(c) for c in counts] for label, counts in zip(labels, matrix)])
    return ["## CLOSED confusion matrix (normalised answers)", "", table, ""]


def _margins_markdown(rows: Sequence[Prediction]) -> list[str]:
    margins = analysis.yes_no_margins(rows)
    lines = ["## Yes/no margin: score(yes) - score(no)", ""]
    if not any(margins.values()):
        return lines + ["No yes/no candidate scores in this run.", ""]
    table = [[f"gold {gold}", str(len(m)), f"{np.median(m):+.3f}", str(sum(v > 0 for v in m))]
             for gold, m in margins.items() if m]
    return lines + [markdown_table(["", "n", "median margin", "leaning yes"], table), ""]


def _worst_markdown(view: RunView) -> list[str]:
    out = [f"## Worst errors ({len(view.worst)} shown)", ""]
    if view.images.note:  # report.md links no image, but says why report.html embeds none
        out += [md_text(view.images.note), ""]
    for i in view.worst:
        row = view.rows[i]
        margin = row.margin if row.margin is not None else "-"
        out += [f"### qid {md_text(row.qid)}: {md_text(row.question)}", "",
                f"- gold: {md_code(row.answer)}; prediction: {md_code(row.prediction)}; "
                f"token F1 {view.token_f1[i]:.2f}",
                f"- route: {md_text(row.route or '-')}; margin: {md_text(margin)}; "
                f"{md_text(row.modality)} / {md_text(row.location)} / {md_text(row.content_type)}",
                f"- image: {md_code(row.img_name or row.image_path)}", "",
                *md_code_block(row.prompt or "(no prompt)"), ""]
    return out


def write_report(run: str | Path, out_dir: str | Path | None = None, worst: int = 24,
                 image_root: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html``; returns their paths."""
    view = load_run(run, worst, image_root)
    out = Path(out_dir) if out_dir is not None else view.run_dir
    md_path, html_path = out / "report.md", out / "report.html"
    write_text_atomic(md_path, render_markdown(view))
    write_text_atomic(html_path, render_html(view))
    return md_path, html_path
