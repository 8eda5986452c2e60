"""`slakevqa routes`: how the CLOSED questions of a split are routed, and whether the gold is reachable.

    slakevqa routes --slake_root ../shared/slake/Slake1.0 --split test --allow_build_vocab [--json]

Routing reads the question only (:mod:`slakevqa.inputs.routing`); this report is the one
place that then looks at the gold answer, to count how often it is among the
candidates. Answers and candidates are compared by :func:`slakevqa.inputs.answer_keys.match_key`:
lowercase, punctuation removed, whitespace collapsed, ``y``/``true`` = ``yes`` and
``n``/``false`` = ``no``. ``--json`` prints::

    {"questions": 416, "routes": {"yesno": 355, "options": 61, "vocab": 0},
     "gold_in_candidates": 0.9976, "candidates": {"median": 2, "max": 3},
     "missing": [{"qid": 12130, "question": "...", "answer": "Liver", "candidates": ["kidney", "spleen"]}]}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from typing import Sequence

from slakevqa.commands.dataset_args import add_dataset_arguments, resolve_dataset_root
from slakevqa.data.slake import find_layout, load_split
from slakevqa.escaping import printable
from slakevqa.inputs.answer_keys import match_key
from slakevqa.inputs.routing import Route, route_closed
from slakevqa.inputs.vocab import ClosedVocab, load_or_build_vocab
from slakevqa.records import VQASample

CLOSED_ROUTES: tuple[str, ...] = ("yesno", "options", "vocab")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser, split="test")
    parser.add_argument("--closed_vocab_path", default=None,
                        help="closed_vocab.json to read (written there when built with --allow_build_vocab)")
    parser.add_argument("--allow_build_vocab", action="store_true",
                        help="build the closed vocabulary from the train split of the same dataset "
                             "when no vocabulary file exists")
    parser.add_argument("--json", action="store_true", help="print one JSON object (schema in the module doc)")


def run(args: argparse.Namespace) -> int:
    root = resolve_dataset_root(args)
    vocab = load_or_build_vocab(args.closed_vocab_path, root, args.allow_build_vocab, args.missing_images)
    warn_if_other_source(vocab, root)
    samples = load_split(root, args.split, args.language, args.missing_images)
    table = route_table([s for s in samples if s.is_closed], vocab)
    print(json.dumps(table, indent=2, ensure_ascii=False) if args.json
          else printable(format_route_table(table, args.split), keep_newlines=True))  # data text: no escapes
    return 0


def route_table(closed: Sequence[VQASample], vocab: ClosedVocab) -> dict:
    """Route counts, gold-in-candidates share, candidate counts and every miss.

    The routes are computed from ``sample.question`` alone; ``sample.answer`` is
    read afterwards, only to check the candidates.
    """
    routes = [route_closed(sample.question, vocab) for sample in closed]
    missing = [miss_record(sample, route) for sample, route in zip(closed, routes) if not gold_in(sample, route)]
    sizes = [len(route.candidates) for route in routes]
    return {
        "questions": len(closed),
        "routes": {kind: sum(route.kind == kind for route in routes) for kind in CLOSED_ROUTES},
        "gold_in_candidates": (len(closed) - len(missing)) / len(closed) if closed else 0.0,
        "candidates": {"median": statistics.median(sizes) if sizes else 0, "max": max(sizes, default=0)},
        "missing": missing,
    }


def gold_in(sample: VQASample, route: Route) -> bool:
    return match_key(sample.answer) in {match_key(candidate) for candidate in route.candidates}


def miss_record(sample: VQASample, route: Route) -> dict:
    return {"qid": sample.qid, "question": sample.question, "answer": sample.answer,
            "candidates": list(route.candidates)}


def format_route_table(table: dict, split: str) -> str:
    """The table as text: route counts, the share, candidate counts, then each miss."""
    n, share = table["questions"], table["gold_in_candidates"]
    lines = [f"CLOSED questions in {split}: {n}", "route      questions"]
    lines += [f"{kind:<10} {count:>9}" for kind, count in table["routes"].items()]
    lines.append(f"gold answer among the candidates: {n - len(table['missing'])}/{n} ({share:.2%})")
    lines.append(f"candidates per question: median {table['candidates']['median']}, "
                 f"max {table['candidates']['max']}")
    lines.append(f"gold answer missing ({len(table['missing'])}):")
    lines += [f"  qid {m['qid']}: {m['question']!r} gold {m['answer']!r}, candidates {' | '.join(m['candidates'])}"
              for m in table["missing"]]
    return "\n".join(lines)


def warn_if_other_source(vocab: ClosedVocab, root: object) -> None:
    """A vocabulary built from another copy of the train split still works, but say so."""
    train_file = find_layout(root).split_file("train")
    sha = hashlib.sha256(train_file.read_bytes()).hexdigest()
    if vocab.source_sha256 and vocab.source_sha256 != sha:
        print(f"note: the closed vocabulary was built from a train split other than {train_file} "
              f"(sha256 {vocab.source_sha256[:12]}... vs {sha[:12]}...)", file=sys.stderr)
