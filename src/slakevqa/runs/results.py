"""Run files: ``predictions.jsonl`` in, ``results.json`` out, with provenance.

A run directory holds ``predictions.jsonl`` (one :class:`~slakevqa.records.Prediction`
per line) and ``results.json``::

    {"schema_version": 1,
     "metrics":  {"llava_med": {"OPEN": {"value": 0.83, "ci_low": 0.80, "ci_high": 0.86, "n": 645},
                                "CLOSED": {...}, "overall": {...}},
                  "exact": {...}, "token_f1": {...}, "choice": {...}},
     "slices":   {"exact": {"modality": {"CT": {"OPEN": {...}, "CLOSED": {...}, "overall": {...}}}}},
     "scorers":  {"llava_med": {"version": "llava_med-v1.0.0/1", "description": "..."}, ...},
     "counts":   {"total": 1061, "OPEN": 645, "CLOSED": 416, "routes": {"yesno": 355, ...}},
     "peers":    {"lmms_eval": {"slake_accuracy": 0.79, "slake_open_accuracy": 0.74, ...},
                  "multimedeval": {...}, "reference": {...}, "llava_med": {"recall": 0.83, ...}},
     "provenance": {"package_version": "0.1.0", "git_commit": "3c19dcc...", "config": {...},
                    "prompt_version": "...", "split_file": ".../test.json", "split_sha256": "...",
                    "route_source": "answer_type", "batch_size": 8, "device": "cuda:0 (NVIDIA H100)",
                    "scorer_versions": {...}, "bootstrap": {"resamples": 1000, "seed": 0, ...},
                    "text_field": "prediction", "predictions_sha256": "...", "scored_utc": "...",
                    "peer_versions": {"lmms_eval": "lmms_eval-75571cf/1", ...}}}

Values are fractions in [0, 1]; a cell with ``n == 0`` (``choice`` on OPEN) holds ``None``.
``peers`` holds each other pipeline's own headline numbers for the same answers, under its own
key names, grouping and aggregation (:mod:`slakevqa.scoring.peers`, docs/metrics.md).
This module never imports torch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import subprocess
from collections import Counter
from pathlib import Path
from typing import Sequence

from slakevqa import __version__
from slakevqa.errors import DataError, UserError
from slakevqa.files import json_lines, write_text_atomic
from slakevqa.records import SLICE_FIELDS, Prediction
from slakevqa.scoring import DEFAULT_SCORERS, get_scorer, scorer_versions
from slakevqa.scoring.aggregate import CONFIDENCE, RESAMPLES, SEED, score_rows, summarize
from slakevqa.scoring.peers import peer_headlines, peer_versions

SCHEMA_VERSION = 1
PREDICTIONS_NAME = "predictions.jsonl"
RESULTS_NAME = "results.json"


def read_predictions(path: str | Path) -> list[Prediction]:
    """All predictions of a ``predictions.jsonl``; blank lines are skipped, qids must be unique."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such predictions file")
    rows, seen = [], set()
    for number, row in json_lines(path):
        if not isinstance(row, dict):
            raise DataError(path, "expected a JSON object", record=f"line {number}")
        prediction = Prediction.from_json(row, str(path), f"line {number}")
        if prediction.qid in seen:
            raise DataError(path, "duplicate qid", record=f"line {number}", field="qid")
        seen.add(prediction.qid)
        rows.append(prediction)
    if not rows:
        raise DataError(path, "no predictions in the file")
    return rows


def write_predictions(path: str | Path, rows: Sequence[Prediction]) -> None:
    """Write a whole predictions file atomically (the evaluator appends line by line instead)."""
    text = "".join(json.dumps(row.to_json(), ensure_ascii=False) + "\n" for row in rows)
    write_text_atomic(path, text)


def write_results(path: str | Path, results: dict) -> None:
    """Write results.json atomically (pretty-printed, keys in build order)."""
    write_text_atomic(path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")


def read_results(path: str | Path) -> dict:
    """Load a results.json and check it is one of ours."""
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: cannot read results ({error})") from None
    if not isinstance(results, dict) or results.get("schema_version") != SCHEMA_VERSION:
        raise DataError(path, f"expected schema_version {SCHEMA_VERSION}", field="schema_version")
    if not isinstance(results.get("metrics"), dict):
        raise DataError(path, "missing", field="metrics")
    return results


def run_files(run: str | Path) -> tuple[Path, Path]:
    """``(predictions.jsonl, results.json)`` of a run directory or of a predictions file."""
    run = Path(run)
    predictions = run / PREDICTIONS_NAME if run.is_dir() else run
    if not predictions.is_file():
        raise UserError(f"{run}: expected a run directory with {PREDICTIONS_NAME} or a .jsonl file")
    return predictions, predictions.parent / RESULTS_NAME


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, or None outside git."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def make_provenance(config: dict | None = None, prompt_version: str | None = None,
                    split_file: str | Path | None = None, route_source: str | None = None,
                    batch_size: int | None = None, device: str | None = None) -> dict:
    """What produced the predictions; evaluators call this once per run.

    ``route_source`` says what decided OPEN vs CLOSED handling (``"answer_type"``
    metadata or ``"classifier"``). Unknown items stay ``None``.
    """
    split_sha = sha256_file(split_file) if split_file and Path(split_file).is_file() else None
    return {
        "package_version": __version__, "git_commit": git_commit(),
        "python": platform.python_version(), "created_utc": _now(),
        "config": config, "prompt_version": prompt_version,
        "split_file": None if split_file is None else str(split_file), "split_sha256": split_sha,
        "route_source": route_source, "batch_size": batch_size, "device": device,
    }


def build_results(rows: Sequence[Prediction], provenance: dict,
                  scorers: Sequence[str] = DEFAULT_SCORERS, slice_fields: Sequence[str] = SLICE_FIELDS,
                  resamples: int = RESAMPLES, seed: int = SEED, text_field: str = "prediction",
                  predictions_file: str | Path | None = None) -> dict:
    """Score ``rows`` with every scorer and assemble results.json (see the module docstring)."""
    table = summarize(score_rows(rows, scorers, text_field), rows, slice_fields, resamples, seed)
    scoring = {
        "scorer_versions": scorer_versions(tuple(scorers)),
        "bootstrap": {"resamples": resamples, "seed": seed, "confidence": CONFIDENCE,
                      "method": "percentile"},
        "text_field": text_field, "slice_fields": list(slice_fields),
        "predictions_file": None if predictions_file is None else str(predictions_file),
        "predictions_sha256": sha256_file(predictions_file) if predictions_file else None,
        "scored_utc": _now(), "scored_with": {"package_version": __version__, "git_commit": git_commit()},
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "metrics": table["metrics"],
        "slices": table["slices"],
        "scorers": {name: {"version": get_scorer(name).version,
                           "description": get_scorer(name).description} for name in scorers},
        "counts": count_rows(rows),
        "peers": peer_headlines(rows, text_field),
        "provenance": {**provenance, **scoring, "peer_versions": peer_versions()},
    }


def count_rows(rows: Sequence[Prediction]) -> dict:
    """Totals per answer type and per route."""
    types = Counter(row.answer_type for row in rows)
    routes = Counter(row.route or "unknown" for row in rows)
    return {"total": len(rows), "OPEN": types["OPEN"], "CLOSED": types["CLOSED"],
            "routes": dict(sorted(routes.items()))}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
