"""`slakevqa score`: score an answer file without a model, ours or another tool's.

    slakevqa score runs/test/predictions.jsonl [--out results.json] [--scorers exact llava_med]
    slakevqa score answers.jsonl --slake_root data/Slake1.0 --output_dir runs/llava_med_official
    slakevqa score samples_slake_en.jsonl --format lmms_eval --slake_root data/Slake1.0

Our ``predictions.jsonl`` carries its gold answers. Another tool's file (LLaVA-Med's
``model_vqa`` answers, lmms-eval's ``--log_samples`` file, the reference toolkit's
``preds.jsonl``; the format is detected, ``--format`` forces one) is joined with SLAKE's
gold by question id (``--slake_root`` or the hub, ``--split``, ``--language``); what
could not be joined is counted and said (:mod:`slakevqa.scoring.answer_files`).

Writes results.json (every peer's headline under ``peers``) beside the predictions,
to ``--out``, or into ``--output_dir`` with predictions.jsonl and the report, and
prints our headline table and every peer's own numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slakevqa.commands.dataset_args import add_dataset_arguments
from slakevqa.commands.scoring_args import add_scoring_arguments, check_scoring_arguments
from slakevqa.reporting.tables import headline_table, peers_table
from slakevqa.runs.results import (
    PREDICTIONS_NAME,
    RESULTS_NAME,
    build_results,
    make_provenance,
    read_predictions,
    read_results,
    write_predictions,
    write_results,
)
from slakevqa.scoring.answer_files import FORMATS, detect_format


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("predictions", help="an answer file: our predictions.jsonl, LLaVA-Med's answers jsonl, "
                                            "lmms-eval's SLAKE samples jsonl or the reference toolkit's preds.jsonl")
    parser.add_argument("--format", choices=("auto", *FORMATS), default="auto",
                        help="the answer file's format (default: detected from its first record)")
    parser.add_argument("--out", default=None,
                        help=f"results file to write (default: {RESULTS_NAME} beside the predictions)")
    parser.add_argument("--output_dir", default=None,
                        help=f"write {RESULTS_NAME}, {PREDICTIONS_NAME} and the report into this folder")
    add_scoring_arguments(parser)
    add_dataset_arguments(parser, split="test")  # the gold answers another tool's file is joined with


def run_provenance(results_path: Path) -> dict:
    """The provenance of the run that wrote the predictions, or all-unknown items."""
    if results_path.is_file():
        return read_results(results_path).get("provenance", {})
    unknown = {key: None for key in make_provenance()}
    return {**unknown, "note": "rescored from predictions alone; the run's own provenance was not found"}


def foreign_rows(args: argparse.Namespace, path: Path, fmt: str) -> tuple[list, dict]:
    """Another tool's answers as Predictions joined with SLAKE's gold, and the provenance saying how."""
    from slakevqa.commands.dataset_args import resolve_dataset_root
    from slakevqa.data.slake import load_split
    from slakevqa.scoring.answer_files import join_answers, readers

    root = resolve_dataset_root(args)
    samples = load_split(root, args.split, "all", args.missing_images)
    rows, join = join_answers(readers()[fmt](path), samples, args.language, path, fmt)
    for line in join.lines():
        print(line)
    provenance = {**{key: None for key in make_provenance()}, "answer_file": join.as_dict(),
                  "note": f"answers from a {fmt} answer file, joined with SLAKE's {args.split} split by question id"}
    return rows, provenance


def output_paths(args: argparse.Namespace, path: Path, fmt: str) -> Path:
    """Where results.json goes: ``--out``, ``--output_dir``, beside our predictions, or ``<file>.results.json``."""
    from slakevqa.files import make_output_dir

    if args.out:
        return Path(args.out)
    if args.output_dir:
        return make_output_dir(args.output_dir, "--output_dir") / RESULTS_NAME
    return path.parent / (RESULTS_NAME if fmt == "slakevqa" else f"{path.stem}.{RESULTS_NAME}")


def run(args: argparse.Namespace) -> int:
    check_scoring_arguments(args)
    path = Path(args.predictions)
    fmt = detect_format(path) if args.format == "auto" else args.format
    if fmt == "slakevqa":
        rows, provenance = read_predictions(path), run_provenance(path.parent / RESULTS_NAME)
    else:
        rows, provenance = foreign_rows(args, path, fmt)
    out = output_paths(args, path, fmt)
    results = build_results(rows, provenance, args.scorers, args.slices, args.resamples, args.seed,
                            args.text_field, path)
    write_results(out, results)
    print(f"{len(rows)} predictions from {path}")
    print(headline_table(results))
    print("\nOther pipelines' own numbers for these answers (percent):")
    print(peers_table(results))
    print(f"wrote {out}")
    if args.output_dir:
        from slakevqa.reporting.report import write_report

        write_predictions(out.parent / PREDICTIONS_NAME, rows)
        write_report(out.parent)
        print(f"wrote {out.parent / PREDICTIONS_NAME} and the report")
    return 0
