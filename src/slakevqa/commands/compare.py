"""`slakevqa compare`: paired bootstrap comparison of two runs on the same questions.

    slakevqa compare runs/baseline runs/lora [--out compare.json] [--all_slices]

Each run is a run directory or a predictions.jsonl. Prints B - A per scorer and
group with a 95% interval and a two-sided p-value (``*`` marks p < 0.05), then
every other pipeline's own headline for both runs side by side; the JSON written
by ``--out`` holds every slice as well.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from slakevqa.commands.scoring_args import add_scoring_arguments, check_scoring_arguments
from slakevqa.files import write_text_atomic
from slakevqa.reporting.tables import comparison_table, peers_comparison_table
from slakevqa.runs.results import read_predictions, run_files
from slakevqa.scoring import scorer_versions
from slakevqa.scoring.aggregate import score_rows
from slakevqa.scoring.paired import align, compare
from slakevqa.scoring.peers import peer_headlines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", help="baseline run directory or predictions.jsonl (A)")
    parser.add_argument("run_b", help="run directory or predictions.jsonl to compare (B)")
    parser.add_argument("--out", default=None, help="write the full comparison as JSON here")
    parser.add_argument("--all_slices", action="store_true",
                        help="print every slice, not only the headline groups")
    add_scoring_arguments(parser)


def run(args: argparse.Namespace) -> int:
    check_scoring_arguments(args)
    path_a, path_b = run_files(args.run_a)[0], run_files(args.run_b)[0]
    rows_a, rows_b = align(read_predictions(path_a), read_predictions(path_b), str(path_a), str(path_b))
    scores_a = score_rows(rows_a, args.scorers, args.text_field)
    scores_b = score_rows(rows_b, args.scorers, args.text_field)
    table = compare(scores_a, scores_b, rows_a, args.slices, args.resamples, args.seed)
    comparison = {"a": str(path_a), "b": str(path_b), "n": len(rows_a),
                  "scorer_versions": scorer_versions(args.scorers), "text_field": args.text_field,
                  "bootstrap": {"resamples": args.resamples, "seed": args.seed, "method": "paired percentile"},
                  **table, "peers": {"a": peer_headlines(rows_a, args.text_field),
                                     "b": peer_headlines(rows_b, args.text_field)}}
    print(f"A = {path_a}\nB = {path_b}\n{len(rows_a)} paired questions; B - A in percent points")
    print(comparison_table(comparison, slices=args.all_slices))
    print("\nOther pipelines' own numbers for the same answers (percent):")
    print(peers_comparison_table(comparison["peers"]["a"], comparison["peers"]["b"]))
    if args.out:
        write_text_atomic(Path(args.out), json.dumps(comparison, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")
    return 0
