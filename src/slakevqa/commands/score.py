"""`slakevqa score`: rescore a predictions file without a model.

    slakevqa score runs/test/predictions.jsonl [--out results.json] [--scorers exact llava_med]

Writes results.json beside the predictions (or to ``--out``) and prints the
headline table. The run's provenance is kept when a results.json is already there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slakevqa.commands.scoring_args import add_scoring_arguments, check_scoring_arguments
from slakevqa.reporting.tables import headline_table
from slakevqa.results import (RESULTS_NAME, build_results, make_provenance, read_predictions,
                              read_results, write_results)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("predictions", help="predictions.jsonl (one Prediction per line)")
    parser.add_argument("--out", default=None,
                        help=f"results file to write (default: {RESULTS_NAME} beside the predictions)")
    add_scoring_arguments(parser)


def run_provenance(results_path: Path) -> dict:
    """The provenance of the run that wrote the predictions, or all-unknown items."""
    if results_path.is_file():
        return read_results(results_path).get("provenance", {})
    unknown = {key: None for key in make_provenance()}
    return {**unknown, "note": "rescored from predictions alone; the run's own provenance was not found"}


def run(args: argparse.Namespace) -> int:
    check_scoring_arguments(args)
    predictions = Path(args.predictions)
    rows = read_predictions(predictions)
    out = Path(args.out) if args.out else predictions.parent / RESULTS_NAME
    results = build_results(rows, run_provenance(predictions.parent / RESULTS_NAME), args.scorers,
                            args.slices, args.resamples, args.seed, args.text_field, predictions)
    write_results(out, results)
    print(f"{len(rows)} predictions from {predictions}")
    print(headline_table(results))
    print(f"wrote {out}")
    return 0
