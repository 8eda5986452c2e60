"""`slakevqa <verb>`: one subcommand per job, imported lazily.

Each verb lives in a module of :mod:`slakevqa.commands` that exposes
``add_arguments(parser)`` and ``run(args) -> int``. Only the chosen verb's module
is imported, so ``slakevqa stats`` or ``slakevqa score`` never pay for torch.
User errors print one line and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys

from slakevqa import __version__
from slakevqa.distributed import finish_process_group
from slakevqa.errors import UserError

# verb -> (module under slakevqa.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    # data (issue: foundation)
    "stats": ("stats", "per-split counts of a SLAKE copy (records, images, OPEN/CLOSED, modality, ...)"),
    "synth": ("synth", "write a learnable synthetic SLAKE in the official layout"),
    "convert-sft": ("convert_sft", "export SLAKE splits as LLaVA conversation JSON"),
    "masks": ("masks", "write the original, the mask and the masked image of one question"),
    "kg": ("kg", "show the knowledge-graph facts a kvqa question's prompt would carry"),
    # prompts, routing, scoring, reports
    "routes": ("routes", "how CLOSED questions are routed (yes/no, options, vocabulary) and the gold-in-candidates share"),
    "score": ("score", "rescore a predictions.jsonl without a model"),
    "compare": ("compare", "paired bootstrap comparison of two runs"),
    "report": ("report", "write report.md and a self-contained report.html for a run"),
    # models
    "init-tiny": ("init_tiny", "write a tiny random LLaVA for tests and the demo"),
    "convert-checkpoint": ("convert_checkpoint", "convert an original LLaVA-Med checkpoint to Hugging Face format"),
    "check": ("check", "load a model and print how it fits together, then generate once"),
    "merge": ("merge", "fold a trained LoRA adapter into its base and write a plain Hugging Face folder"),
    # training and evaluation
    "train": ("train", "fine-tune on SLAKE with LoRA, QLoRA or fully, on one GPU or many"),
    "eval": ("eval", "answer a SLAKE split with a model, score it with intervals, write a report"),
    # the main job
    "demo": ("demo", "the main job on the embedded default dataset"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slakevqa", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"slakevqa {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_text) in COMMANDS.items():
        # add_help=False: the real parser with arguments is built once the verb is known.
        subparsers.add_parser(verb, help=help_text, add_help=False)
    return parser


def _verb_parser(verb: str) -> tuple[argparse.ArgumentParser, object]:
    module = importlib.import_module(f"slakevqa.commands.{COMMANDS[verb][0]}")
    parser = argparse.ArgumentParser(prog=f"slakevqa {verb}", description=COMMANDS[verb][1])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    module.add_arguments(parser)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        build_parser().parse_args(argv or ["--help"])
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in COMMANDS:
        close = difflib.get_close_matches(verb, COMMANDS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        print(f"slakevqa: unknown command '{verb}'.{hint} Run 'slakevqa --help' for the list.",
              file=sys.stderr)
        return 2
    parser, module = _verb_parser(verb)
    args = parser.parse_args(rest)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s: %(message)s")
    return run_verb(module, args)


def run_verb(module: object, args: argparse.Namespace) -> int:
    """Run one verb, turning user errors into a one-line message and exit code 2."""
    try:
        code = int(module.run(args) or 0)
        finish_process_group()  # every rank leaves together, after the main one has written everything
        return code
    except UserError as error:
        if getattr(args, "debug", False):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
