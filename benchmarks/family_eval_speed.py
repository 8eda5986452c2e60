"""Evaluation speed of a model family at its published shape: the fast backend against the plain one, same run.

    # GPU box (bench_data/ carried: Slake1.0, tokenizers, tokenizer.model):
    PYTHONPATH=src python benchmarks/family_eval_speed.py --family gemma3 --slake_root bench_data/Slake1.0 \\
        --plain_limit 256 --out $OUT/gemma3
    # CPU smoke test at the tiny shape:
    PYTHONPATH=src python benchmarks/family_eval_speed.py --family qwen2_5_vl --tiny --slake_root DIR --plain_limit 16

A random-weight model of the family's published shape (benchmarks/family_shapes.py) in bf16 answers the
English test split twice, batches of ``--batch_size`` grouped by image as ``slakevqa eval`` batches them:

* **fast**: the default :class:`~slakevqa.evaluation.engine.Engine` (each image's prefix once, rows after it,
  one decoding call per batch, CUDA graphs), over the whole split;
* **fast, reused decoding**: the same with ``reuse_decoding=True`` (one captured decoding step for every
  call, :mod:`slakevqa.evaluation.decode_workspace`), its answers compared with the fast pass's;
* **plain**: ``share_prefix=False`` (left padding, ``generate``, every question with its own image), over the
  first ``--plain_limit`` questions (its rate is per question, so a subset measures it).

Reports questions per second and peak memory of each, the speed-up, and how the answers agree on the
questions both answered, per route (OPEN, yes/no, options), with the plain backend's CLOSED margins at
the questions that flip (bf16 rounds differently along the two paths; flips should sit at small margins).
A random model never says its stop token, so every OPEN answer runs its whole budget (16 or 48 tokens):
the worst case; ``--trained_lengths`` adds a fast pass in which OPEN rows stop at their gold length + 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def answer_all(engine, samples: list, batch_size: int) -> list:
    return [p for i in range(0, len(samples), batch_size) for p in engine.answer(samples[i: i + batch_size])]


def agreement(fast: list, plain: list) -> dict:
    """Per route: identical predictions, and the plain backend's margins at CLOSED flips."""
    routes: dict = {}
    for a, b in zip(fast, plain):
        entry = routes.setdefault(b.route, {"questions": 0, "identical": 0, "flip_margins": []})
        entry["questions"] += 1
        entry["identical"] += a.prediction == b.prediction
        if a.prediction != b.prediction and b.margin is not None:
            entry["flip_margins"].append(round(b.margin, 4))
    return routes


def main() -> None:
    import torch

    from eval_throughput import timed, trained_lengths
    from family_shapes import random_family_model
    from slakevqa.data.slake import find_layout, load_split
    from slakevqa.evaluation.engine import Engine
    from slakevqa.inputs.builder import InputBuilder
    from slakevqa.inputs.vocab import ClosedVocab
    from slakevqa.models.image_features import kept_pixel_dtype

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True, choices=("llava_1_5", "qwen2_5_vl", "gemma3"))
    parser.add_argument("--slake_root", required=True)
    parser.add_argument("--tiny", action="store_true", help="the tiny model on CPU, to test the script")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--plain_limit", type=int, default=256)
    parser.add_argument("--limit", type=int, default=0, help="the first N questions only (0: the whole split)")
    parser.add_argument("--trained_lengths", action="store_true")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = sorted((s for s in load_split(args.slake_root, "test") if s.q_lang == "en"),
                     key=lambda s: (s.image_key, s.qid))  # grouped by image, as evaluate() batches them
    samples = samples[:args.limit] if args.limit else samples
    builder = InputBuilder.create(find_layout(args.slake_root), ClosedVocab.empty())
    (model, processor), build_s = timed(lambda: random_family_model(args.family, out, args.tiny), device)
    builder.pixel_dtype = kept_pixel_dtype(model)  # as slakevqa eval keeps them
    fast, plain = Engine(model, processor, builder), Engine(model, processor, builder, share_prefix=False)
    assert fast.fast is not None, f"{args.family}: no fast backend"
    fast.answer(samples[:4]), plain.answer(samples[:2])  # warm-up: kernels, caches, allocator

    def measured(engine, questions):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        answers, seconds = timed(lambda: answer_all(engine, questions, args.batch_size), device)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        return answers, {"questions": len(answers), "seconds": round(seconds, 2),
                         "q_per_s": round(len(answers) / seconds, 2), "peak_gib": peak and round(peak, 1)}

    fast_answers, fast_report = measured(fast, samples)
    plain_answers, plain_report = measured(plain, samples[:args.plain_limit])
    # the same fast path with one captured decoding step for all its calls (evaluation/decode_workspace.py)
    reusing = Engine(model, processor, builder, reuse_decoding=True)
    reuse_answers, reuse_report = measured(reusing, samples)
    reuse_report["decoding_calls"], reuse_report["workspaces_built"] = reusing.fast.reused.calls, reusing.fast.reused.builds
    trained = None
    if args.trained_lengths:
        with trained_lengths(fast):
            _, trained = measured(fast, samples)
    report = {"family": args.family, "card": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "model_build_s": round(build_s, 1), "batch_size": args.batch_size,
              "fast": fast_report, "plain": plain_report, "fast_trained_lengths": trained,
              "fast_reused_decoding": reuse_report,
              "reused_identical": sum(a.prediction == b.prediction for a, b in zip(fast_answers, reuse_answers)),
              "speedup": round(fast_report["q_per_s"] / plain_report["q_per_s"], 2),
              "agreement": agreement(fast_answers, plain_answers)}
    (out / "family_eval_speed.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
