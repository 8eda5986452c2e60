"""`slakevqa compare`: paired bootstrap comparison of runs on the same questions.

    slakevqa compare runs/baseline runs/lora [more runs ...] [--out compare.json] [--report compare.md]
                     [--all_slices]

Each run is a run directory or a predictions.jsonl; the first is the baseline. Prints the runs (a
short label each: the folder name, with parent folders where two would collide; the model family
and model where the run's results.json or run_fingerprint.json records them), then one table: per
scorer and group each run's value with its 95% interval, and each later run's difference from the
first with a paired 95% interval and a two-sided p-value (``*`` marks p < 0.05, uncorrected for the
number of comparisons); then every other pipeline's own headline per run (``peer:`` rows), with the same
intervals and paired tests (bootstrapped from its per-question values: slakevqa.scoring.peer_intervals). Slices
are printed with ``--all_slices``; the JSON written by ``--out`` and the Markdown report written by
``--report`` hold every slice. All runs must hold the same questions with the same gold answers.

The JSON: ``runs`` (label, path, model_family, model_id, model, results_file, each run's own
``metrics`` / ``slices`` cells as in results.json, ``peers`` numbers and ``peer_cells`` with intervals),
``comparisons`` (one per later run: ``run``, ``baseline``, paired ``metrics`` / ``slices`` cells ``{"a", "b",
"delta", "ci_low", "ci_high", "p_value", "n"}``, ``peers`` differences and ``peer_tests`` paired cells), ``n``, ``scorer_versions``, ``peer_versions``,
``text_field``, ``bootstrap``. With exactly two runs it also keeps the keys it always had: ``a`` and
``b`` (the paths), ``metrics`` and ``slices`` (the paired cells) and ``peers`` ``{"a": ..., "b": ...}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from slakevqa.commands.scoring_args import add_scoring_arguments, check_scoring_arguments
from slakevqa.errors import UserError
from slakevqa.escaping import md_text
from slakevqa.files import write_text_atomic
from slakevqa.records import Prediction
from slakevqa.reporting.compare_report import PEERS_NOTE, render_markdown, run_identity, run_labels
from slakevqa.reporting.tables import comparison_table, runs_table
from slakevqa.runs.results import read_predictions, run_files
from slakevqa.scoring import scorer_versions
from slakevqa.scoring.aggregate import CONFIDENCE, score_rows
from slakevqa.scoring.paired import align_many, compare_many
from slakevqa.scoring.peer_intervals import peer_cells
from slakevqa.scoring.peers import peer_headlines, peer_versions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("baseline", metavar="RUN",
                        help="the baseline: a run directory or predictions.jsonl that every other run is compared with")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="one or more runs to compare with the baseline (one per model family, say)")
    parser.add_argument("--out", default=None, help="write the full comparison as JSON here")
    parser.add_argument("--report", default=None, metavar="PATH.md",
                        help="write the comparison as a Markdown report here (every slice included)")
    parser.add_argument("--all_slices", action="store_true",
                        help="print every slice, not only the headline groups")
    add_scoring_arguments(parser)


def check_outputs(args: argparse.Namespace, files: Sequence[tuple[Path, Path]]) -> None:
    """Refuse an output that would overwrite a run's own file, or the other output."""
    inputs = {path.resolve(): flag for predictions, results in files
              for path, flag in ((predictions, "a run's predictions"), (results, "a run's results.json"))}
    outputs = [(flag, Path(value)) for flag, value in (("--out", args.out), ("--report", args.report)) if value]
    for flag, path in outputs:
        if path.resolve() in inputs:
            raise UserError(f"{flag} {path}: that is {inputs[path.resolve()]}; write the comparison elsewhere")
    if len(outputs) == 2 and outputs[0][1].resolve() == outputs[1][1].resolve():
        raise UserError(f"--out and --report name the same file ({args.out}); give each its own")


def peer_differences(first: dict, other: dict) -> dict:
    """``{peer: {key: other - first}}`` of two runs' peer headlines (None where either has no number).

    >>> peer_differences({"lmms_eval": {"slake_accuracy": 0.5}}, {"lmms_eval": {"slake_accuracy": 0.75}})
    {'lmms_eval': {'slake_accuracy': 0.25}}
    """
    def minus(value: float | None, base: float | None) -> float | None:
        return None if value is None or base is None else value - base

    return {peer: {key: minus(other.get(peer, {}).get(key), base) for key, base in numbers.items()}
            for peer, numbers in first.items()}


def build_comparison(files: Sequence[tuple[Path, Path]], rows: Sequence[list[Prediction]],
                     args: argparse.Namespace) -> dict:
    """The comparison as ``--out`` writes it (see the module docstring)."""
    scores = [score_rows(run_rows, args.scorers, args.text_field) for run_rows in rows]
    tables = compare_many(scores, rows[0], args.slices, args.resamples, args.seed)
    labels = run_labels([predictions for predictions, _ in files])
    peers = [peer_headlines(run_rows, args.text_field) for run_rows in rows]
    cells, tests = peer_cells(rows, args.text_field, args.resamples, args.seed)
    runs = [{"label": label, "path": str(predictions), **run_identity(predictions, results), **table, "peers": peer,
             "peer_cells": cell}
            for label, (predictions, results), table, peer, cell in zip(labels, files, tables["runs"], peers, cells)]
    comparisons = [{"run": label, "baseline": labels[0], **pair, "peers": peer_differences(peers[0], peer),
                    "peer_tests": test}
                   for label, pair, peer, test in zip(labels[1:], tables["pairs"], peers[1:], tests)]
    common = {"n": len(rows[0]), "scorer_versions": scorer_versions(args.scorers), "text_field": args.text_field,
              "bootstrap": {"resamples": args.resamples, "seed": args.seed, "confidence": CONFIDENCE,
                            "method": "paired percentile"}}
    rest = {"peer_versions": peer_versions(), "baseline": labels[0], "runs": runs, "comparisons": comparisons}
    if len(files) != 2:
        return {**common, **rest}
    legacy = {"metrics": tables["pairs"][0]["metrics"], "slices": tables["pairs"][0]["slices"],
              "peers": {"a": peers[0], "b": peers[1]}}
    return {"a": str(files[0][0]), "b": str(files[1][0]), **common, **legacy, **rest}


def run(args: argparse.Namespace) -> int:
    check_scoring_arguments(args)
    files = [run_files(run) for run in (args.baseline, *args.runs)]
    check_outputs(args, files)
    rows = align_many([read_predictions(predictions) for predictions, _ in files],
                      [str(predictions) for predictions, _ in files])
    comparison = build_comparison(files, rows, args)
    labels = [md_text(run["label"]) for run in comparison["runs"]]
    print(f"{len(files)} runs; the first, {labels[0]}, is the baseline:")
    print(runs_table(comparison))
    print(f"\n{comparison['n']} paired questions. Percent [95% CI] per run; each later run - {labels[0]} in "
          "percent points [paired 95% CI] with its p-value (* p < 0.05, not corrected for several runs):")
    print(comparison_table(comparison, slices=args.all_slices))
    print(f"\n{PEERS_NOTE}")
    if args.out:
        write_text_atomic(Path(args.out), json.dumps(comparison, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")
    if args.report:
        write_text_atomic(Path(args.report), render_markdown(comparison))
        print(f"wrote {args.report}")
    return 0
