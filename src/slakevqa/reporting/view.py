"""What a report shows, read from a run's files and computed once (:class:`RunView`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from slakevqa.models.fingerprint import describe_fingerprint
from slakevqa.records import SLICE_FIELDS, Prediction
from slakevqa.reporting.images import ImageSource, image_source
from slakevqa.runs.results import build_results, read_predictions, read_results, run_files
from slakevqa.scoring import analysis
from slakevqa.scoring.aggregate import score_rows

log = logging.getLogger(__name__)

BAR_SCORERS: tuple[str, ...] = ("llava_med", "exact")
PEERS_NOTE = ("The same answers as each other pipeline's own code scores them (its key names, its OPEN/CLOSED "
              "grouping and averaging; docs/metrics.md says which of our numbers compares with which).")
# The LLaVA-Med paper's SLAKE test split: English test questions of Slake1.0.
PAPER_SPLIT = {"total": 1061, "OPEN": 645, "CLOSED": 416}
PAPER_NUMBERS = "83.08 OPEN recall / 85.34 CLOSED accuracy (LLaVA-Med 7B, SLAKE-fine-tuned 15 epochs)"


@dataclass(frozen=True)
class RunView:
    """Everything a report shows, computed once."""

    run_dir: Path
    rows: list[Prediction]
    results: dict
    results_source: str
    exact: np.ndarray
    token_f1: np.ndarray
    worst: list[int]
    images: ImageSource

    @property
    def comparability(self) -> str:
        """:func:`paper_comparability` of this run."""
        return paper_comparability(self.rows, self.results.get("provenance", {}).get("text_field"))


def load_run(run: str | Path, worst: int = 24, image_root: str | Path | None = None) -> RunView:
    """Read a run directory (or predictions file) and compute what the report needs.

    Images: see :mod:`slakevqa.reporting.images`; a dataset folder that fails its check is
    warned about here, once, and the reports are drawn without images.
    """
    predictions_path, results_path = run_files(run)
    rows = read_predictions(predictions_path)
    if results_path.is_file():
        results, source = read_results(results_path), str(results_path)
    else:
        results = build_results(rows, provenance={}, predictions_file=predictions_path)
        source = f"computed from {predictions_path.name} (no results.json)"
    scores = score_rows(rows, ["exact", "token_f1"])
    worst_rows = analysis.worst_errors(rows, scores["exact"], scores["token_f1"], worst)
    provenance = results.get("provenance")
    images = image_source(provenance if isinstance(provenance, dict) else {}, image_root)
    if images.refused:
        log.warning("%s", images.note)
    return RunView(predictions_path.parent, rows, results, source, scores["exact"],
                   scores["token_f1"], worst_rows, images)


def paper_comparability(rows: Sequence[Prediction], text_field: str | None = "prediction") -> str:
    """One sentence: may these llava_med numbers be set beside the paper's?

    Only for the paper's question set: English test, 1,061 questions, 645 OPEN / 416 CLOSED.
    """
    counts = {"total": len(rows), "OPEN": sum(row.answer_type == "OPEN" for row in rows),
              "CLOSED": sum(row.answer_type == "CLOSED" for row in rows)}
    english = all(row.q_lang == "en" for row in rows)
    test_split = {row.split for row in rows} <= {"test", ""}   # "" = not recorded
    if counts == PAPER_SPLIT and english and test_split:
        return ("Same question set as the paper (English test, 645 OPEN / 416 CLOSED): "
                f"llava_med OPEN and CLOSED may be set beside {PAPER_NUMBERS}; scored text: "
                f"{text_field} (the paper scored free generations; docs/metrics.md lists what differs).")
    return (f"Not the paper's question set ({counts['total']} questions, {counts['OPEN']} OPEN / "
            f"{counts['CLOSED']} CLOSED, {'English' if english else 'not only English'}, "
            f"splits {sorted({row.split or '?' for row in rows})}): "
            f"do not compare llava_med with {PAPER_NUMBERS}.")


def provenance_lines(results: dict) -> list[tuple[str, str]]:
    """The provenance items worth a glance, as (name, value) pairs (values as found: escape them to show them)."""
    prov = results.get("provenance")
    prov = prov if isinstance(prov, dict) else {}
    lines = [("model", str(prov["model"]))] if prov.get("model") else []
    if prov.get("model_fingerprint"):  # which weights: the model line alone names a folder, not its contents
        lines.append(("model_fingerprint", describe_fingerprint(prov["model_fingerprint"])))
    keys = ("package_version", "git_commit", "prompt_version", "route_source", "batch_size",
            "device", "split_file", "split_sha256", "text_field", "predictions_sha256", "scored_utc", "note")
    lines += [(key, str(prov.get(key))) for key in keys if prov.get(key) is not None]
    answer_file = prov.get("answer_file")  # another tool's answers: what their format cannot carry
    caveat = answer_file.get("caveat") if isinstance(answer_file, dict) else None
    if caveat and str(caveat) not in str(prov.get("note") or ""):
        lines.append(("answer_file_caveat", str(caveat)))
    versions = prov.get("scorer_versions") or {k: v["version"] for k, v in results.get("scorers", {}).items()}
    lines.append(("scorer_versions", ", ".join(f"{k}={v}" for k, v in versions.items())))
    boot = prov.get("bootstrap")
    if boot:
        lines.append(("bootstrap", f"{boot['resamples']} resamples, seed {boot['seed']}, {boot['method']}"))
    return lines


def slice_fields(results: dict) -> list[str]:
    """Slice fields present in the results, in the canonical order."""
    present = {field for fields in results.get("slices", {}).values() for field in fields}
    return [field for field in SLICE_FIELDS if field in present]
