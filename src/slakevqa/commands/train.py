"""`slakevqa train`: fine-tune on SLAKE (flags = the reference toolkit's; `--config FILE.yaml` too).

    slakevqa train --model_id microsoft/llava-med-v1.5-mistral-7b --slake_root data/Slake1.0 \\
        --output_dir runs/lora --use_lora --lora_r 64 --lora_target_modules all-linear
    accelerate launch --config_file configs/accelerate/ddp.yaml -m slakevqa train --config configs/lora_single_gpu.yaml
"""

from __future__ import annotations

import argparse
import os

from slakevqa.cli import set_stop_note
from slakevqa.config import add_config_arguments, config_from_args
from slakevqa.locks import writing
from slakevqa.training.config import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    from slakevqa.reporting.report import write_report
    from slakevqa.training.train import train

    cfg = config_from_args(TrainConfig, args)
    set_stop_note(lambda: kept_checkpoint(cfg.output_dir))
    with writing(cfg.output_dir, "train"):
        result = train(cfg)
        if os.environ.get("RANK", "0") != "0":  # one summary per run, not one per process
            return 0
        if result.results:  # the final evaluation ran
            write_report(result.final_eval_dir)
    last = f"{result.losses[-1][1]:.4f}" if result.losses else "n/a"
    print(f"trained {result.steps} steps, final loss {last}; outputs in {result.output_dir}")
    return 0


def kept_checkpoint(output_dir: str) -> str:
    """What a rerun resumes from, said when a SIGTERM stops training."""
    from slakevqa.training.checkpoint import list_checkpoints

    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        return f"no checkpoint was written yet in {output_dir} (a rerun starts from step 0)"
    return f"the last checkpoint, {checkpoints[-1]}, is kept"

