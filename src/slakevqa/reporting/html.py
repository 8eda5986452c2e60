"""The self-contained HTML report: inline CSS, inline SVG, images as data URIs.

Nothing is fetched when the page is opened, so it can be mailed or archived. Thumbnails
are made only of images inside the image folder of the dataset the answers were made from
(:mod:`slakevqa.reporting.images`): an ``image_path`` elsewhere is counted and said, not
embedded. Every piece of data text is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
from html import escape as html_escape
from pathlib import Path

from slakevqa.escaping import printable
from slakevqa.records import Prediction
from slakevqa.reporting import plots
from slakevqa.reporting.images import image_file
from slakevqa.reporting.tables import format_cell, peer_rows
from slakevqa.reporting.view import BAR_SCORERS, PEERS_NOTE, RunView, provenance_lines, slice_fields
from slakevqa.scoring import analysis
from slakevqa.scoring.aggregate import GROUPS

THUMBNAIL_PX = 160
_CSS = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1150px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f2f2f2; }
.note { background: #fff8e1; border-left: 4px solid #d9822b; padding: 6px 10px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 12px; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 8px; font-size: 12px; }
.card img, .card .noimg { width: 160px; height: 160px; object-fit: contain; background: #000;
  float: left; margin: 0 8px 4px 0; }
.card .noimg { color: #eee; font-size: 11px; display: flex; align-items: center; justify-content: center; }
.card pre { clear: both; white-space: pre-wrap; background: #f6f6f6; padding: 4px; max-height: 120px;
  overflow: auto; font-size: 11px; }
.bad { color: #b00020; font-weight: bold; } .good { color: #1b7d3a; font-weight: bold; }
"""


def escape(text: object) -> str:
    """Data text as HTML text: tags and quotes escaped, control characters shown as ``\\x1b`` (lines kept)."""
    return html_escape(printable(text, keep_newlines=True))


def render_html(view: RunView) -> str:
    """The whole report as one HTML document."""
    body = [f"<h1>SLAKE evaluation report: {escape(view.run_dir.name)}</h1>",
            f"<p>Results: {escape(view.results_source)}. {len(view.rows)} predictions.</p>",
            _table(["item", "value"], provenance_lines(view.results)),
            "<h2>Headline</h2><p>Percent, 95% bootstrap interval, count.</p>", _headline(view.results),
            f'<p class="note">{escape(view.comparability)}</p>', _peers(view.results),
            _slices(view.results), _confusion(view.rows), _margins(view.rows), _gallery(view)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>SLAKE report {escape(view.run_dir.name)}</title><style>{_CSS}</style></head>"
            "<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _table(header: list[str], rows: list) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    lines = ["<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows]
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def _headline(results: dict) -> str:
    rows = [[scorer] + [format_cell(groups.get(group, {})) for group in GROUPS]
            for scorer, groups in results["metrics"].items()]
    return _table(["scorer"] + list(GROUPS), rows)


def _peers(results: dict) -> str:
    if not results.get("peers"):
        return ""
    return (f"<h2>Other pipelines' numbers</h2><p>Percent. {escape(PEERS_NOTE)}</p>"
            + _table(["pipeline", "its number", "value"], peer_rows(results["peers"])))


def _slices(results: dict) -> str:
    parts = ["<h2>Slices</h2><p>Bars: value per group; whiskers: 95% bootstrap interval.</p>"]
    for scorer in [s for s in BAR_SCORERS if s in results.get("slices", {})]:
        # answer_type slices repeat the headline; tables in report.md still list them.
        for field in [f for f in slice_fields(results) if f != "answer_type"]:
            values = results["slices"][scorer][field]
            series = {group: [values[v].get(group, {}) for v in values] for group in GROUPS}
            parts.append(f"<h3>{escape(field)} under <code>{escape(scorer)}</code></h3>")
            parts.append(plots.interval_bars(list(values), series))
    return "\n".join(parts)


def _confusion(rows: list[Prediction]) -> str:
    labels, matrix = analysis.closed_confusion(rows)
    head = "<th>gold \\ chosen</th>" + "".join(f"<th>{escape(label)}</th>" for label in labels)
    lines = []
    for label, counts in zip(labels, matrix):
        total = max(1, sum(counts))
        cells = "".join(
            f'<td style="background: rgba(59,110,168,{c / total:.2f})">{c}</td>' for c in counts)
        lines.append(f"<tr><th>{escape(label)}</th>{cells}</tr>")
    return ("<h2>CLOSED confusion matrix</h2><p>Normalised gold answer (rows) against the chosen "
            f"answer (columns); shade = share of the row.</p><table><tr>{head}</tr>{''.join(lines)}</table>")


def _margins(rows: list[Prediction]) -> str:
    margins = analysis.yes_no_margins(rows)
    figure = plots.histogram(margins, x_label="score(yes) - score(no)")
    return ("<h2>Yes/no margin</h2><p>Candidate score of yes minus no on yes/no questions, "
            f"by gold answer; right of the dashed line the model chose yes.</p>{figure}")


def _gallery(view: RunView) -> str:
    found = [image_file(view.rows[i], view.images) for i in view.worst]
    refusal = "image outside the dataset folder" if view.images.folders else "image not embedded"
    cards = [_card(view, i, path, refusal if refused else "image not found") for i, (path, refused)
             in zip(view.worst, found)]
    outside = sum(refused for _, refused in found)
    if view.images.note:
        note = f'<p class="note">{escape(view.images.note)}</p>'
    elif outside:
        note = (f"<p class=\"note\">{outside} image path(s) outside the dataset folder "
                f"({escape(', '.join(str(r) for r in view.images.roots))}) not embedded.</p>")
    else:
        note = ""
    return (f"<h2>Worst errors ({len(cards)} shown)</h2><p>Exact-match misses, least word overlap "
            f"first, then the most confident.</p>{note}<div class=\"gallery\">{''.join(cards)}</div>")


def _card(view: RunView, i: int, path: Path | None, missing: str) -> str:
    """One worst-error card; ``missing`` says why there is no image when ``path`` is None."""
    row = view.rows[i]
    uri = thumbnail_uri(path)
    image = (f'<img src="{uri}" alt="{escape(row.img_name)}">' if uri
             else f'<div class="noimg">{missing}<br>{escape(row.img_name)}</div>')
    margin = "-" if row.margin is None else f"{row.margin:.3f}"
    raw = (f"<div>raw: {escape(row.raw_output[:300])}</div>"
           if row.raw_output and row.raw_output != row.prediction else "")
    return (f'<div class="card">{image}<div><b>qid {row.qid}</b> {escape(row.question)}</div>'
            f'<div>gold: <span class="good">{escape(row.answer)}</span></div>'
            f'<div>predicted: <span class="bad">{escape(row.prediction)}</span></div>{raw}'
            f"<div>route {escape(row.route or '-')}, margin {margin}, token F1 {view.token_f1[i]:.2f}</div>"
            f"<div>{escape(row.modality)} / {escape(row.location)} / {escape(row.content_type)}</div>"
            f"<pre>{escape(row.prompt or '(no prompt)')}</pre></div>")


def thumbnail_uri(path: Path | None, size: int = THUMBNAIL_PX) -> str | None:
    """A ``data:image/jpeg;base64,...`` thumbnail, or None when the image cannot be read."""
    if path is None:
        return None
    from slakevqa.data.images import load_rgb  # 16-bit scans scaled, bombs refused
    from slakevqa.errors import DataError

    try:
        image = load_rgb(path)
    except DataError:
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
