"""Plain-text tables of results and comparisons (Markdown, for terminals and report.md).

Names that come from a results file (scorers, peers and their keys, slice values) are data: they
go through :func:`~slakevqa.escaping.md_text`, and every cell through
:func:`~slakevqa.escaping.md_cell`, so an edited results.json cannot add rows, links or HTML.
"""

from __future__ import annotations

from typing import Sequence

from slakevqa.escaping import md_cell, md_code, md_text
from slakevqa.scoring.aggregate import GROUPS


def percent(value: float | None, digits: int = 2) -> str:
    """``0.8308 -> '83.08'``; ``None -> '-'``."""
    return "-" if value is None else f"{100 * value:.{digits}f}"


def format_cell(cell: dict) -> str:
    """``'83.08 [80.12, 85.90] n=645'``, or ``'- n=0'`` for an empty cell."""
    if not cell or cell.get("n", 0) == 0:
        return "- n=0"
    return (f"{percent(cell['value'])} [{percent(cell['ci_low'])}, {percent(cell['ci_high'])}] "
            f"n={md_text(cell['n'])}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of cells that are already Markdown (ours, or :func:`md_text`'s for data).

    Each cell is kept on one line with its pipes escaped (:func:`md_cell`), whatever a caller passes.
    """
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(md_cell(cell) for cell in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header))] + [line(row) for row in rows])


def headline_table(results: dict) -> str:
    """One row per scorer, one column per group: value [95% CI] n, in percent.

    >>> cell = {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n": 4}
    >>> print(headline_table({"metrics": {"exact": {g: cell for g in GROUPS}}}).splitlines()[2])
    | exact | 50.00 [25.00, 75.00] n=4 | 50.00 [25.00, 75.00] n=4 | 50.00 [25.00, 75.00] n=4 |
    """
    rows = [[md_text(scorer)] + [format_cell(groups.get(group, {})) for group in GROUPS]
            for scorer, groups in results["metrics"].items()]
    return markdown_table(["scorer"] + list(GROUPS), rows)


def peer_rows(peers: dict) -> list[list[str]]:
    """``[peer, its key, value in percent]`` rows of results.json's ``peers``."""
    return [[peer, key, percent(value)] for peer, numbers in peers.items() for key, value in numbers.items()]


def _md_peer_rows(peers: dict) -> list[list[str]]:
    return [[md_text(peer), md_text(key), value] for peer, key, value in peer_rows(peers)]


def peers_table(results: dict) -> str:
    """Each other pipeline's own headline for these answers (its key names, grouping, aggregation).

    >>> print(peers_table({"peers": {"lmms_eval": {"slake_accuracy": 0.5}}}).splitlines()[2])
    | lmms_eval | slake_accuracy | 50.00 |
    """
    return markdown_table(["pipeline", "its number", "value"], _md_peer_rows(results.get("peers", {})))


def slice_table(results: dict, scorer: str, field: str) -> str:
    """One row per value of ``field`` under ``scorer``, one column per group."""
    values = results.get("slices", {}).get(scorer, {}).get(field, {})
    rows = [[md_text(value)] + [format_cell(groups.get(group, {})) for group in GROUPS]
            for value, groups in values.items()]
    return markdown_table([md_text(field)] + list(GROUPS), rows)


# ---------------------------------------------------------------- comparisons of runs (slakevqa compare)
# They read the JSON `slakevqa compare --out` writes: ``runs`` (each run's label, model, cells and peer
# headlines) and ``comparisons`` (each later run's paired cells and peer differences against the first).


def comparison_header(comparison: dict) -> list[str]:
    """``scorer, cell, n``, one column per run, then ``B - A [95% CI]`` and ``p`` per later run.

    >>> comparison_header({"runs": [{"label": "base"}, {"label": "lora"}]})
    ['scorer', 'cell', 'n', 'base', 'lora', 'lora - base [95% CI]', 'p']
    """
    labels = [md_text(run["label"]) for run in comparison["runs"]]
    deltas = [column for label in labels[1:] for column in (f"{label} - {labels[0]} [95% CI]", "p")]
    return ["scorer", "cell", "n", *labels, *deltas]


def _with_n(text: str, n: int, shown: int) -> str:
    """A cell's count is said only where it differs from the row's (the first run's)."""
    return text if n == shown else f"{text} n={md_text(n)}"


def format_run_cell(cell: dict, shown: int) -> str:
    """``'83.08 [80.12, 85.90]'`` (plus ``n=..`` when not ``shown``), ``'-'`` for an empty cell.

    >>> format_run_cell({"value": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n": 4}, 4)
    '50.00 [25.00, 75.00]'
    """
    if not cell or cell.get("n", 0) == 0:
        return "-"
    return _with_n(f"{percent(cell['value'])} [{percent(cell['ci_low'])}, {percent(cell['ci_high'])}]",
                   cell["n"], shown)


def format_delta(cell: dict, shown: int) -> list[str]:
    """``[delta [CI], p]`` in percent points for one paired cell; ``*`` marks p < 0.05.

    >>> format_delta({"delta": 0.1, "ci_low": -0.02, "ci_high": 0.2, "p_value": 0.04, "n": 9}, 9)
    ['+10.00 [-2.00, +20.00]', '0.040 *']
    """
    if not cell or cell.get("n", 0) == 0:
        return ["-", "-"]
    star = " *" if cell["p_value"] < 0.05 else ""
    delta = f"{100 * cell['delta']:+.2f} [{100 * cell['ci_low']:+.2f}, {100 * cell['ci_high']:+.2f}]"
    return [_with_n(delta, cell["n"], shown), f"{cell['p_value']:.3f}{star}"]


def _cells_row(name: str, cell_name: str, cells: list[dict], pairs: list[dict]) -> list[str]:
    shown = cells[0].get("n", 0) if cells[0] else 0
    deltas = [text for pair in pairs for text in format_delta(pair, shown)]
    return [md_text(name), md_text(cell_name), md_text(shown), *(format_run_cell(c, shown) for c in cells), *deltas]


def comparison_metric_rows(comparison: dict) -> list[list[str]]:
    """One row per scorer and headline group: each run's value [95% CI], each later run's difference."""
    runs, pairs = comparison["runs"], comparison["comparisons"]
    return [_cells_row(scorer, group, [run["metrics"][scorer][group] for run in runs],
                       [pair["metrics"][scorer][group] for pair in pairs])
            for scorer, groups in runs[0]["metrics"].items() for group in groups]


def comparison_slice_rows(comparison: dict) -> list[list[str]]:
    """One row per scorer, slice value and group that some run has questions in (``field=value / group``)."""
    runs, pairs = comparison["runs"], comparison["comparisons"]
    rows = []
    for scorer, fields in runs[0].get("slices", {}).items():
        for field, values in fields.items():
            for value, groups in values.items():
                for group in groups:
                    cells = [run["slices"][scorer][field][value][group] for run in runs]
                    if any(cell["n"] for cell in cells):
                        rows.append(_cells_row(scorer, f"{field}={value} / {group}", cells,
                                               [pair["slices"][scorer][field][value][group] for pair in pairs]))
    return rows


def comparison_peer_rows(comparison: dict) -> list[list[str]]:
    """One row per other pipeline's headline number: each run's value [95% CI], each later run's paired difference.

    A comparison written before peers had intervals (no ``peer_cells``) shows the numbers alone (``-``).
    """
    runs, pairs = comparison["runs"], comparison["comparisons"]
    if all("peer_cells" in run for run in runs) and all("peer_tests" in pair for pair in pairs):
        return [_cells_row(f"peer: {peer}", key, [run["peer_cells"][peer][key] for run in runs],
                           [pair["peer_tests"][peer][key] for pair in pairs])
                for peer, keys in runs[0]["peer_cells"].items() for key in keys]
    rows = []
    for peer, numbers in runs[0]["peers"].items():
        for key in numbers:
            values = [percent(run["peers"].get(peer, {}).get(key)) for run in runs]
            deltas = [pair["peers"].get(peer, {}).get(key) for pair in pairs]
            rows.append([md_text(f"peer: {peer}"), md_text(key), "-", *values,
                         *(text for d in deltas for text in ("-" if d is None else f"{100 * d:+.2f}", "-"))])
    return rows


def comparison_table(comparison: dict, slices: bool = True) -> str:
    """The whole comparison in one table: scorer rows, then ``peer:`` rows, then (``slices``) slice rows.

    Each run's column holds its value [95% CI]; each later run has ``run - first [95% CI]`` and
    ``p`` columns (paired bootstrap, percent points). ``n`` is the first run's count; a run or a
    pair with another count says its own.
    """
    rows = comparison_metric_rows(comparison) + comparison_peer_rows(comparison)
    rows += comparison_slice_rows(comparison) if slices else []
    return markdown_table(comparison_header(comparison), rows)


def runs_table(comparison: dict) -> str:
    """One row per run: its label, model family and model (``-`` where not recorded), predictions file."""
    def name(value: object) -> str:
        return md_text(value) if value else "-"

    rows = [[md_text(run["label"]), name(run.get("model_family")), name(run.get("model_id")), md_code(run["path"])]
            for run in comparison["runs"]]
    return markdown_table(["run", "model family", "model", "predictions"], rows)
