"""Plain-text tables of results and comparisons (Markdown, for terminals and report.md).

Names that come from a results file (scorers, peers and their keys, slice values) are data: they
go through :func:`~slakevqa.escaping.md_text`, and every cell through
:func:`~slakevqa.escaping.md_cell`, so an edited results.json cannot add rows, links or HTML.
"""

from __future__ import annotations

from typing import Sequence

from slakevqa.escaping import md_cell, md_text
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


def peers_comparison_table(peers_a: dict, peers_b: dict) -> str:
    """Both runs' peer headlines side by side (no intervals: each peer's own aggregate)."""
    rows = [[md_text(peer), md_text(key), percent(value), percent(peers_b.get(peer, {}).get(key))]
            for peer, numbers in peers_a.items() for key, value in numbers.items()]
    return markdown_table(["pipeline", "its number", "A", "B"], rows)


def slice_table(results: dict, scorer: str, field: str) -> str:
    """One row per value of ``field`` under ``scorer``, one column per group."""
    values = results.get("slices", {}).get(scorer, {}).get(field, {})
    rows = [[md_text(value)] + [format_cell(groups.get(group, {})) for group in GROUPS]
            for value, groups in values.items()]
    return markdown_table([md_text(field)] + list(GROUPS), rows)


def format_delta(cell: dict) -> list[str]:
    """``[A, B, delta [CI], p]`` in percent points for one paired cell."""
    if cell.get("n", 0) == 0:
        return ["-", "-", "-", "-"]
    star = " *" if cell["p_value"] < 0.05 else ""
    delta = f"{100 * cell['delta']:+.2f} [{100 * cell['ci_low']:+.2f}, {100 * cell['ci_high']:+.2f}]"
    return [percent(cell["a"]), percent(cell["b"]), delta, f"{cell['p_value']:.3f}{star}"]


def comparison_table(comparison: dict, slices: bool = True) -> str:
    """Rows ``scorer, group (or field=value/group), n, A, B, B-A [CI], p``; ``*`` marks p < 0.05."""
    rows = []
    for scorer, groups in comparison["metrics"].items():
        for group, cell in groups.items():
            rows.append([md_text(scorer), md_text(group), md_text(cell["n"])] + format_delta(cell))
    for scorer, fields in (comparison.get("slices", {}) if slices else {}).items():
        for field, values in fields.items():
            for value, groups in values.items():
                for group, cell in groups.items():
                    if cell["n"]:
                        rows.append([md_text(scorer), md_text(f"{field}={value} / {group}"), md_text(cell["n"])]
                                    + format_delta(cell))
    return markdown_table(["scorer", "cell", "n", "A", "B", "B-A [95% CI]", "p"], rows)
