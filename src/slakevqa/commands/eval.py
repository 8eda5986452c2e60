"""`slakevqa eval`: answer a SLAKE split, score it, write predictions, results and a report.

    slakevqa eval --model_id_or_ckpt runs/lora --slake_root data/Slake1.0 --split test --output_dir runs/lora/eval
    accelerate launch -m slakevqa eval --config configs/eval_test.yaml     # sharded over GPUs
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slakevqa.cli import set_stop_note
from slakevqa.config import add_config_arguments, config_from_args
from slakevqa.evaluation.config import EvalConfig
from slakevqa.locks import writing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, EvalConfig, {"model_id_or_ckpt": ["--model"]})


def run(args: argparse.Namespace) -> int:
    from slakevqa.evaluation.evaluate import evaluate
    from slakevqa.reporting.report import write_report
    from slakevqa.reporting.tables import headline_table

    cfg = config_from_args(EvalConfig, args)
    set_stop_note(f"the answers so far are kept in {Path(cfg.output_dir) / 'predictions.jsonl'}")
    with writing(cfg.output_dir, "eval"):
        results = evaluate(cfg)
        if results and cfg.report:  # the main process only
            write_report(cfg.output_dir)
    if results:
        print(headline_table(results))
        print(f"predictions, results.json and report.html in {cfg.output_dir}")
    return 0
