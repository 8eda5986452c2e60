"""`slakevqa <verb>`: one subcommand per job, imported lazily.

Each verb lives in a module of :mod:`slakevqa.commands` that exposes
``add_arguments(parser)`` and ``run(args) -> int``. Only the chosen verb's module
is imported, so ``slakevqa stats`` or ``slakevqa score`` never pay for torch.
User errors, and the failures a user fixes outside slakevqa (a full disk, a read-only
folder, a name too long, memory), print one line and exit 2; ``--debug`` shows the
traceback. A stop signal (SIGTERM: a cluster's time limit, ``kill``; SIGUSR1: SLURM's warning) prints what was
kept and exits 75 where a rerun resumes (:mod:`slakevqa.stopping`), else 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import logging
import sys
from typing import Callable

from slakevqa import __version__, stopping
from slakevqa.distributed import finish_process_group
from slakevqa.errors import UserError
from slakevqa.escaping import printable
from slakevqa.os_errors import FULL_DISK, describe_os_error, out_of_memory, write_failure
from slakevqa.stopping import Stopped

# Verbs whose rerun picks up where a stopped run ended (answers, checkpoints); the others write whole or nothing.
RESUMING_VERBS = frozenset({"eval", "train", "demo"})
# Where a verb's output goes, by flag, for a line about an error that names no path.
OUTPUT_FLAGS = ("output_dir", "out", "out_dir", "dst", "dir")

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
    "compare": ("compare", "one table of two or more runs (one per model family, say): every scorer with intervals, paired tests against the first"),
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


_stop_note: str | Callable[[], str] | None = None


def set_stop_note(note: str | Callable[[], str]) -> None:
    """What the line after a SIGTERM says was kept, once the verb knows it (its output folder from a YAML config);
    a function is called when the SIGTERM comes (training's last checkpoint by then). Reset for each verb.

    >>> set_stop_note("the answers so far are kept in runs/eval/predictions.jsonl")   # doctest: +SKIP
    """
    global _stop_note
    _stop_note = note


def run_verb(module: object, args: argparse.Namespace) -> int:
    """Run one verb, turning user errors and OS failures into a one-line message and exit code 2."""
    global _stop_note
    _stop_note = None
    previous = stopping.install()
    try:
        code = int(module.run(args) or 0)
        finish_process_group()  # every rank leaves together, after the main one has written everything
        return code
    except UserError as error:
        if getattr(args, "debug", False):
            raise
        say(f"error: {printable(str(error))}")  # a field's value quoted from data: no terminal escapes
        return 2
    except Stopped as stop:
        say(stop_line(_verb(module), args, stop))
        return stopping.exit_code(stop.signum, _verb(module) in RESUMING_VERBS)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception as error:
        line = failure_line(error, _verb(module), args)
        if line is None or getattr(args, "debug", False):
            raise  # anything else is a bug: keep its traceback
        say(f"error: {printable(line)}")
        return 2
    finally:
        stopping.restore(previous)


def say(line: str) -> None:
    """Print ``line`` to stderr on a line of its own: a progress bar the failure left open is closed first
    (else the line would be glued to it, and the bar redrawn after it when it is garbage-collected)."""
    progress = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(progress, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the line
            pass
    print(line, file=sys.stderr)


def _verb(module: object) -> str:
    name = getattr(module, "__name__", "").rsplit(".", 1)[-1]
    return next((verb for verb, (module_name, _) in COMMANDS.items() if module_name == name), name)


def output_of(args: argparse.Namespace) -> str | None:
    """The verb's output path from its flags, when given (a YAML config's is known to the verb only)."""
    return next((str(value) for flag in OUTPUT_FLAGS if (value := getattr(args, flag, None))), None)


def stop_line(verb: str, args: argparse.Namespace, stop: Stopped | None = None) -> str:
    """The one line after a stop signal: what was kept and how to go on.

    >>> stop_line("eval", argparse.Namespace(output_dir="runs/eval"))
    'stopped by SIGTERM: what was written to runs/eval is kept; rerun the same command to resume'
    """
    stop = stop or Stopped()
    if verb not in RESUMING_VERBS:
        return (f"stopped by {stop.name}: outputs are written whole or not at all, so nothing half-written was left; "
                "rerun the same command")
    output = output_of(args)
    kept = stop.note or (_stop_note() if callable(_stop_note) else _stop_note)
    kept = kept or (f"what was written to {output} is kept" if output else "what was written is kept")
    return f"stopped by {stop.name}: {kept}; rerun the same command to resume"


def failure_line(error: Exception, verb: str, args: argparse.Namespace) -> str | None:
    """One line for a failure the user fixes outside slakevqa (disk, permissions, memory); None for anything else."""
    os_error = error if isinstance(error, OSError) else write_failure(error, output_of(args))
    if os_error is not None:
        return describe_os_error(os_error, output_of(args)) + os_advice(os_error, verb)
    memory = out_of_memory(error)
    if memory is None:
        return None
    # eval and train take --batch_size from a YAML file too, where args holds no attribute for it
    batched = verb in ("eval", "train") or hasattr(args, "batch_size")
    smaller = "try a smaller --batch_size" if batched else "free memory or use a larger machine"
    return f"out of memory ({memory}); {smaller}"


def os_advice(error: OSError, verb: str) -> str:
    """What to do about an OSError, in parentheses ('' when the reason says it all)."""
    if error.errno in FULL_DISK:
        kept = "what was written is kept and the rerun resumes" if verb in RESUMING_VERBS else \
            "nothing half-written was left"
        return f" (free space and rerun: {kept})"
    return {errno.EROFS: " (write to a folder on a writable disk)",
            errno.EACCES: " (check its permissions, or use another folder)",
            errno.EPERM: " (check its permissions, or use another folder)",
            errno.ENAMETOOLONG: " (use a shorter name: at most 255 bytes per folder or file name)"}.get(error.errno, "")


if __name__ == "__main__":
    raise SystemExit(main())
