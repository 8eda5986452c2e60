"""The runs of a comparison (``slakevqa compare``): short labels, who made each, and the Markdown report.

A run is named by its folder (``runs/lora/eval/predictions.jsonl`` -> ``eval``), with as many parent
folders as tell it apart from the others (``lora/eval``, ``full/eval``); the same run given twice is
numbered (``eval#2``). Its model family and model come from its own files, where they were recorded:

* ``results.json``: ``provenance.model_family`` (``llava_med``, ``qwen2_5_vl``, ...), the model as it
  was given (``provenance.config.model_id_or_ckpt``) and its one-line description (``provenance.model``);
* ``run_fingerprint.json`` beside it: ``values.model_family`` and ``values.model`` where results.json
  has none.

A file that cannot be read only costs its run the ``-`` it shows instead (a warning says why); the
comparison itself needs nothing but the predictions.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

from slakevqa.errors import UserError
from slakevqa.escaping import md_code, md_text
from slakevqa.reporting.tables import (
    comparison_header,
    comparison_metric_rows,
    comparison_peer_rows,
    comparison_slice_rows,
    markdown_table,
    runs_table,
)
from slakevqa.runs.fingerprint import FINGERPRINT_NAME, FORMAT
from slakevqa.runs.results import PREDICTIONS_NAME, read_results

log = logging.getLogger(__name__)

PEERS_NOTE = ("Rows `peer: NAME` are that pipeline's own headline numbers for the same answers (its key names, "
              "grouping and averaging), with 95% intervals and paired tests from the same question resamples as "
              "the scorers' (each headline is a mean of per-question values, or a sum of such means); n counts "
              "the questions of the number's group. docs/metrics.md says which number compares with which.")


def _name_parts(predictions: Path) -> tuple[str, ...]:
    """The folders that name a run, outermost first; a file not called predictions.jsonl adds its stem."""
    path = Path(os.path.abspath(predictions))  # not resolve(): a symlinked run keeps the name it was given
    parts = path.parent.parts[1:]  # without the root
    return parts if path.name == PREDICTIONS_NAME else (*parts, path.stem)


def run_labels(predictions: Sequence[Path]) -> list[str]:
    """Short, distinct names for runs: the folder name, and parent folders only where two would collide.

    >>> run_labels([Path("/r/lora/eval/predictions.jsonl"), Path("/r/full/eval/predictions.jsonl"),
    ...             Path("/r/zero_shot/predictions.jsonl"), Path("/r/zero_shot/predictions.jsonl")])
    ['lora/eval', 'full/eval', 'zero_shot', 'zero_shot#2']
    >>> run_labels([Path("/r/answers_a.jsonl"), Path("/r/answers_b.jsonl")])
    ['answers_a', 'answers_b']
    """
    parts = [_name_parts(path) or (f"run{i + 1}",) for i, path in enumerate(predictions)]
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        paths_named: dict[str, set] = {}
        for label, path in zip(labels, parts):
            paths_named.setdefault(label, set()).add(path)
        grow = [i for i, label in enumerate(labels) if len(paths_named[label]) > 1 and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: Counter = Counter()
    out = []
    for label in labels:  # what is still equal is the same path given twice
        seen[label] += 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def _recorded_provenance(results_path: Path) -> dict:
    if not results_path.is_file():
        return {}
    try:
        provenance = read_results(results_path).get("provenance")
    except UserError as error:
        log.warning("%s; its run shows no model", error)
        return {}
    return provenance if isinstance(provenance, dict) else {}


def _recorded_fingerprint(folder: Path) -> dict:
    path = folder / FINGERPRINT_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        log.warning("%s: unreadable run fingerprint (%s); its run shows no model", path, type(error).__name__)
        return {}
    values = data.get("values") if isinstance(data, dict) and data.get("format") == FORMAT else None
    return values if isinstance(values, dict) else {}


def _text(value: object) -> str | None:
    """A recorded name as text; anything else (missing, empty, a list) counts as not recorded."""
    return str(value) if isinstance(value, (str, int, float)) and str(value) else None


def run_identity(predictions: Path, results_path: Path) -> dict:
    """``{"model_family", "model_id", "model", "results_file"}`` as the run's files record them (else None)."""
    provenance = _recorded_provenance(results_path)
    values = _recorded_fingerprint(predictions.parent)
    config = provenance.get("config") if isinstance(provenance.get("config"), dict) else {}
    model_id = next((text for text in (_text(config.get("model_id_or_ckpt")), _text(config.get("model_id")),
                                       _text(values.get("model")), _text(provenance.get("model"))) if text), None)
    return {"model_family": _text(provenance.get("model_family")) or _text(values.get("model_family")),
            "model_id": model_id, "model": _text(provenance.get("model")),
            "results_file": str(results_path) if provenance else None}


def render_markdown(comparison: dict) -> str:
    """The comparison as a Markdown report: the runs, one headline table, one table of every slice.

    Run labels, model names and paths are data: they enter through :mod:`slakevqa.escaping`.
    """
    runs, boot = comparison["runs"], comparison["bootstrap"]
    first = md_text(runs[0]["label"])
    versions = ", ".join(f"{md_text(k)}={md_text(v)}" for k, v in comparison["scorer_versions"].items())
    peers = ", ".join(f"{md_text(k)}={md_text(v)}" for k, v in comparison.get("peer_versions", {}).items())
    out = ["# SLAKE run comparison", "",
           f"{md_text(comparison['n'])} questions answered by all {len(runs)} runs; scored text: "
           f"{md_code(comparison['text_field'])}. Percent, with 95% bootstrap intervals ({md_text(boot['resamples'])} "
           f"resamples, seed {md_text(boot['seed'])}). Each later run is compared with {first}: the difference "
           "in percent points with its paired 95% interval and two-sided p-value; `*` marks p < 0.05, not "
           "corrected for the number of comparisons.", "",
           "## Runs", "", runs_table(comparison), "",
           "## Headline", "",
           markdown_table(comparison_header(comparison),
                          comparison_metric_rows(comparison) + comparison_peer_rows(comparison)), "",
           PEERS_NOTE, ""]
    slices = comparison_slice_rows(comparison)
    if slices:
        out += ["## Slices", "", markdown_table(comparison_header(comparison), slices), ""]
    out += ["## Versions", "", f"- scorers: {versions}", f"- other pipelines: {peers or '-'}", ""]
    return "\n".join(out)
