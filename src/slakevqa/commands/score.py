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
import os
from pathlib import Path

from slakevqa.commands.dataset_args import add_dataset_arguments
from slakevqa.commands.scoring_args import add_scoring_arguments, check_scoring_arguments
from slakevqa.errors import UserError
from slakevqa.files import make_output_dir
from slakevqa.locks import writing
from slakevqa.os_errors import require_utf8_name
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

REPORT_NAMES = ("report.md", "report.html")  # what reporting.report.write_report writes beside results.json


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


def foreign_rows(args: argparse.Namespace, path: Path, fmt: str, root: Path) -> tuple[list, dict]:
    """Another tool's answers as Predictions joined with SLAKE's gold, and the provenance saying how."""
    from slakevqa.data.slake import canonical_split, load_split
    from slakevqa.scoring.answer_files import join_answers, readers

    samples = load_split(root, args.split, "all", args.missing_images)
    rows, join = join_answers(readers()[fmt](path), samples, args.language, path, fmt, canonical_split(args.split))
    for line in join.lines():
        print(line)
    provenance = {**{key: None for key in make_provenance()}, "answer_file": join.as_dict(),
                  "note": f"answers from a {fmt} answer file, joined with SLAKE's {args.split} split by question id"
                          + (f"; {join.caveat}" if join.caveat else "")}
    return rows, provenance


def results_path(args: argparse.Namespace, path: Path, fmt: str) -> Path:
    """Where results.json goes: ``--out``, ``--output_dir``, beside our predictions, or ``<file>.results.json``."""
    if args.out:
        return Path(args.out)
    if args.output_dir:
        return Path(args.output_dir) / RESULTS_NAME
    return path.parent / (RESULTS_NAME if fmt == "slakevqa" else f"{path.stem}.{RESULTS_NAME}")


def planned_outputs(args: argparse.Namespace, out: Path) -> dict[Path, str]:
    """``{file score will write: the flag that chose it}``, known before anything is written."""
    flag = "--out" if args.out else "--output_dir" if args.output_dir else "the default output"
    outputs = {out: flag}
    if args.output_dir:  # predictions and the report go beside results.json
        outputs.update({out.parent / name: "--output_dir" for name in (PREDICTIONS_NAME, *REPORT_NAMES)})
    return outputs


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same after resolving symlinks, or hard links to one inode."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte: not a file score reads
        return False


def score_inputs(args: argparse.Namespace, path: Path, fmt: str) -> tuple[dict[Path, str], Path | None]:
    """``({file score reads: what it is}, dataset root)``; the root is None for our own predictions (no join)."""
    if fmt == "slakevqa":
        return {path: "answer file"}, None
    from slakevqa.commands.dataset_args import resolve_dataset_root
    from slakevqa.data.slake import find_layout

    root = resolve_dataset_root(args)
    return {path: "answer file", find_layout(root).split_file(args.split): "split file"}, root


def check_inputs_spared(outputs: dict[Path, str], inputs: dict[Path, str]) -> None:
    """A one-line UserError, before anything is written, when an output would replace one of score's inputs.

    Our own ``results.json`` beside our own ``predictions.jsonl`` is not an input here: rewriting
    it is what rescoring is for.
    """
    for output, flag in outputs.items():
        for source, what in inputs.items():
            if same_file(output, source):
                advice = f"pass another {flag}" if flag.startswith("--") else "pass --out"
                if flag == "--output_dir" and output.name == PREDICTIONS_NAME:  # our own file, rescored in place
                    advice += " (or leave it out: the results are then written beside the answer file)"
                raise UserError(f"{flag}: writing {output} would replace the {what} {source}; score never writes "
                                f"over its inputs, so {advice}")


def run(args: argparse.Namespace) -> int:
    check_scoring_arguments(args)
    path = Path(args.predictions)
    require_utf8_name(path, "answer file")
    fmt = detect_format(path) if args.format == "auto" else args.format
    out = results_path(args, path, fmt)
    outputs = planned_outputs(args, out)
    for output in outputs:
        require_utf8_name(output, "output")
    inputs, root = score_inputs(args, path, fmt)
    check_inputs_spared(outputs, inputs)
    check_not_a_run_folder(out.parent, path, "--out" if args.out else "--output_dir")
    with writing(out.parent, "score", "--out" if args.out else "--output_dir"):
        return score_into(args, path, fmt, out, root)


def check_not_a_run_folder(folder: Path, answers: Path, flag: str) -> None:
    """The outputs' ``folder`` must not be another eval or train run's folder: its answers are hours of GPU time.

    Those folders hold ``run_fingerprint.json``, which ``score`` never writes: an earlier ``score
    --output_dir`` of the same folder is replaced as before, and a run's own folder may be rescored.
    """
    from slakevqa.runs.fingerprint import FINGERPRINT_NAME

    if (folder / FINGERPRINT_NAME).is_file() and not same_file(folder, answers.parent):
        raise UserError(f"{flag}: {folder} is another eval or train run's folder ({FINGERPRINT_NAME}); "
                        "score writes into a folder of its own")


def score_into(args: argparse.Namespace, path: Path, fmt: str, out: Path, root: Path | None) -> int:
    """Score ``path`` and write ``out`` (and, under ``--output_dir``, the predictions and the report)."""
    if root is None:
        rows, provenance = read_predictions(path), run_provenance(path.parent / RESULTS_NAME)
    else:
        rows, provenance = foreign_rows(args, path, fmt, root)
    if args.output_dir and not args.out:
        make_output_dir(args.output_dir, "--output_dir")
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
