"""`slakevqa report`: report.md and a self-contained report.html for a run.

    slakevqa report runs/test [--out_dir DIR] [--worst 24] [--image_root ../shared/slake/Slake1.0]

Reads the run's predictions.jsonl and results.json (scoring the predictions when
results.json is missing). Thumbnails come from each prediction's ``image_path``,
or from ``--image_root`` joined with ``img_name`` when the run moved machines, and
only from the image folder of the dataset the answers were made from: the folder of
the split file results.json records, whose sha256 must still match, or ``--image_root``
(which must hold that split file when results.json records one). Otherwise the
reports are written without images, with a warning and a line saying why
(:mod:`slakevqa.reporting.images`).
"""

from __future__ import annotations

import argparse

from slakevqa.errors import UserError
from slakevqa.locks import writing
from slakevqa.reporting.report import write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory holding predictions.jsonl (and results.json)")
    parser.add_argument("--out_dir", default=None, help="where to write the reports (default: run_dir)")
    parser.add_argument("--worst", type=int, default=24, help="errors in the gallery (default: 24)")
    parser.add_argument("--image_root", default=None,
                        help="SLAKE folder to find images by img_name when image_path is stale (it must hold "
                             "the split file the answers were made from, when results.json records one)")


def run(args: argparse.Namespace) -> int:
    if args.worst < 0:
        raise UserError(f"--worst must be 0 or more, got {args.worst}")
    with writing(args.out_dir or args.run_dir, "report", "--out_dir" if args.out_dir else "RUN_DIR"):
        md_path, html_path = write_report(args.run_dir, args.out_dir, args.worst, args.image_root)
    print(f"wrote {md_path}\nwrote {html_path}")
    return 0
