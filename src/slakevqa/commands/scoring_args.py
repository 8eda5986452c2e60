"""The scoring flags ``score`` and ``compare`` share, and how they are checked."""

from __future__ import annotations

import argparse

from slakevqa.config import check_seed
from slakevqa.errors import UserError
from slakevqa.records import SLICE_FIELDS
from slakevqa.scoring import DEFAULT_SCORERS, SCORERS, TEXT_FIELDS, get_scorer
from slakevqa.scoring.aggregate import RESAMPLES, SEED


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--scorers``, ``--slices``, ``--resamples``, ``--seed``, ``--text_field``."""
    group = parser.add_argument_group("scoring")
    group.add_argument("--scorers", nargs="+", default=list(DEFAULT_SCORERS), metavar="NAME",
                       help=f"scorers to tabulate with intervals (default: {' '.join(DEFAULT_SCORERS)}; also: "
                            f"{' '.join(n for n in SCORERS if n not in DEFAULT_SCORERS)}); every peer's "
                            "own headline is in results.json either way")
    group.add_argument("--slices", nargs="*", default=list(SLICE_FIELDS), metavar="FIELD",
                       help=f"fields to slice by (default: {' '.join(SLICE_FIELDS)}; none: --slices)")
    group.add_argument("--resamples", type=int, default=RESAMPLES,
                       help=f"bootstrap resamples per cell (default: {RESAMPLES})")
    group.add_argument("--seed", type=int, default=SEED, help=f"bootstrap seed (default: {SEED})")
    group.add_argument("--text_field", choices=TEXT_FIELDS, default="prediction",
                       help="text the scorers read: the extracted answer (default) or the raw "
                            "generation, as the LLaVA-Med paper scored it ('choice' always reads "
                            "the best-scored candidate)")


def check_scoring_arguments(args: argparse.Namespace) -> None:
    """Reject unknown scorers or slice fields and a non-positive resample count."""
    for name in args.scorers:
        get_scorer(name)
    unknown = [field for field in args.slices if field not in SLICE_FIELDS]
    if unknown:
        raise UserError(f"--slices: unknown field(s) {', '.join(unknown)}; "
                        f"known: {', '.join(SLICE_FIELDS)}")
    check_seed(args.seed)
    if args.resamples < 1:
        raise UserError(f"--resamples must be at least 1, got {args.resamples}")
