"""`slakevqa demo` (what `make demo` runs): the main job end to end on the embedded default.

1. data: the learnable synthetic SLAKE (``slakevqa synth``), or real SLAKE when ``SLAKE_ROOT`` is set;
2. model: a tiny random LLaVA with the real Mistral-7B tokenizer (``slakevqa init-tiny``);
3. evaluate it untrained on the test split;
4. train it (every parameter, the settings that make a tiny model learn on 2 CPU cores);
5. evaluate the trained model (the training's final evaluation) and write the report;
6. print both headline tables side by side, and where the report is.

    slakevqa demo [--out demo_out] [--steps 3000]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from slakevqa.config import make_config
from slakevqa.errors import UserError
from slakevqa.locks import writing

# Measured in benchmarks/RESULTS.md ("learning on CPU"): full fine-tuning with initializer_range 0.1,
# lr 1e-3, beta2 0.98, 50 warmup steps then linear decay to 0, batch 16, the plain prompt (LLaVA-Med's
# own: the question alone) and image-packed batches reach >= 0.90 held-out CLOSED within 3,000 steps
# (about 3.5 minutes on 2 cores); a constant rate plateaued near 0.85 (its noise never settles).
DEMO_TRAINING = dict(batch_size=16, lr=1e-3, warmup_steps=50, lr_scheduler="linear", adam_beta2=0.98,
                     use_lora=False, freeze_vision_tower=False, tune_mm_projector=True, prompt_style="plain",
                     save_steps=500, logging_steps=50, tb_hist_every=500)
DEMO_STEPS = 3000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="folder for data, model, runs and reports")
    parser.add_argument("--steps", type=int, default=DEMO_STEPS, help=f"training steps (default {DEMO_STEPS})")
    parser.add_argument("--slake_root", default=os.environ.get("SLAKE_ROOT"),
                        help="real SLAKE instead of the synthetic set (default: $SLAKE_ROOT)")
    parser.add_argument("--images", type=int, default=430, help="synthetic images (default 430)")
    parser.add_argument("--overwrite", action="store_true",
                        help="answer and train afresh in --out (a rerun otherwise resumes what is there, and "
                             "refuses a folder written with other settings)")


def run(args: argparse.Namespace) -> int:
    from slakevqa.reporting.report import write_report

    began = time.perf_counter()
    with writing(args.out, "demo", "--out") as out:  # checks the folder first
        root = dataset(args, out)
        model_dir = tiny_model(out / "tiny")
        untrained = evaluate_untrained(model_dir, root, out / "untrained", args.overwrite)
        trained = train_tiny(model_dir, root, out / "trained", args.steps, args.overwrite)
        for folder in (out / "untrained", out / "trained" / "eval_test"):
            write_report(folder)
    print_comparison(untrained, trained)
    print(f"\nreport: {(out / 'trained' / 'eval_test' / 'report.html').resolve()}")
    print(f"demo finished in {time.perf_counter() - began:.0f} s")
    return 0


def dataset(args: argparse.Namespace, out: Path) -> Path:
    from slakevqa.data.synth import write_synthetic_slake

    if args.slake_root:
        print(f"[1/5] data: real SLAKE at {args.slake_root}")
        return Path(args.slake_root)
    target = out / "data" / "Slake1.0"
    if not (target / "train.json").is_file():
        write_synthetic_slake(target, seed=0, images=args.images)
    print(f"[1/5] data: synthetic SLAKE at {target} ({args.images} images)")
    return target


def tiny_model(folder: Path) -> Path:
    from slakevqa.models.tiny import build_tiny_llava, save_llava
    from slakevqa.models.tokenizer import mistral_tokenizer_file

    if mistral_tokenizer_file() is None:
        raise UserError("the demo uses the real Mistral-7B tokenizer: pip install mistral-common (make install does)")
    if not (folder / "config.json").is_file():
        save_llava(*build_tiny_llava("mistral", seed=0), folder)
    print(f"[2/5] model: tiny LLaVA with the Mistral-7B tokenizer at {folder}")
    return folder


def evaluate_untrained(model_dir: Path, root: Path, out: Path, overwrite: bool = False) -> dict:
    from slakevqa.evaluation.config import EvalConfig
    from slakevqa.evaluation.evaluate import evaluate

    print("[3/5] evaluating the untrained model on the test split")
    return evaluate(make_config(EvalConfig, model_id_or_ckpt=model_dir, slake_root=root, output_dir=out,
                                batch_size=64, prompt_style=DEMO_TRAINING["prompt_style"], device="cpu",
                                overwrite=overwrite))


def train_tiny(model_dir: Path, root: Path, out: Path, steps: int, overwrite: bool = False) -> dict:
    from slakevqa.training.config import TrainConfig
    from slakevqa.training.train import train

    print(f"[4/5] training every parameter for {steps} steps (batch 16) on {root}")
    cfg = make_config(TrainConfig, model_id=model_dir, slake_root=root, output_dir=out, max_steps=steps,
                      final_eval=True, final_eval_split="test", overwrite=overwrite, **DEMO_TRAINING)
    result = train(cfg)
    print("[5/5] evaluated the trained model on the test split")
    return result.results


def print_comparison(before: dict, after: dict) -> None:
    """Untrained vs trained, every scorer and group, in percent with 95% intervals."""
    def cell(results: dict, scorer: str, group: str) -> str:
        c = results["metrics"][scorer][group]
        return "-" if c["value"] is None else f"{100 * c['value']:5.1f} [{100 * c['ci_low']:.1f}, {100 * c['ci_high']:.1f}]"

    print(f"\n{'scorer':<10} {'group':<8} {'untrained':>22} {'trained':>22}   n")
    for scorer, groups in after["metrics"].items():
        for group, value in groups.items():
            print(f"{scorer:<10} {group:<8} {cell(before, scorer, group):>22} {cell(after, scorer, group):>22}"
                  f"   {value['n']}")
