"""Evaluation throughput at the real LLaVA-Med-7B shape: per-question loop vs the batched engine.

    # GPU box (bench_data/ from benchmarks/prepare_bench_data.py, carried):
    SLAKEVQA_MISTRAL_TOKENIZER=bench_data/tokenizer.model PYTHONPATH=src \\
        python benchmarks/eval_throughput.py --slake_root bench_data/Slake1.0 --naive_limit 200
    # CPU smoke test at toy size:
    PYTHONPATH=src python benchmarks/eval_throughput.py --tiny --slake_root DIR --naive_limit 20

Both paths answer the same questions with the same prompts, images and token budgets:

* **naive**, in the style of LLaVA-Med's ``model_vqa.py`` and the reference toolkit:
  one question at a time; OPEN by ``generate``; CLOSED by one full forward (image
  included) per candidate;
* **engine**: :class:`slakevqa.evaluation.engine.Engine`, batches of ``--batch_size``
  (questions grouped by image, as ``slakevqa eval`` batches them): each image encoded
  once per batch and its prompt prefix shared, batched generation, CLOSED candidates
  from one shared prompt encoding; and the same engine with ``share_prefix=False``.

Prints questions per second for each, the speed-up, and the share of identical answers
on the questions both answered. A random model never says EOS, so every OPEN answer runs
its full budget (16 or 48 tokens): the worst case. ``--trained_lengths`` adds a pass of the
engine in which each OPEN row stops after its gold answer's token count + 1 (the EOS a
fine-tuned model would say), by per-row budgets (``greedy_tokens``' ``row_budgets``, or a
stopping criterion given to ``generate`` on the old path); a batch still decodes until its
longest row is done, as with a trained model. Benchmark only: ``slakevqa eval`` has no such mode. The naive loop runs on the first ``--naive_limit``
questions (its rate is per question, so a subset measures it; the whole split would
take minutes at 7B).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def build_model(tiny: bool, device: str):
    if tiny:
        from slakevqa.models.tiny import build_tiny_llava

        model, processor = build_tiny_llava("mistral")
        return model.to(device), processor
    from slakevqa.models.random_llava import build_random_llava_med_7b

    return build_random_llava_med_7b(device=device, dtype="bf16")


def naive_answer(engine, sample):
    """One question, no batching, no shared prompt encoding."""
    import torch

    from slakevqa.evaluation.extract import extract_answer

    item = engine.prepare(sample)
    ids = torch.tensor([item.prompt_ids], device=engine.device)
    pixels = item.pixel_values[None].to(engine.device, next(engine.model.parameters()).dtype)
    route = item.view.route
    with torch.inference_mode():
        if not route.candidates:
            out = engine.model.generate(input_ids=ids, pixel_values=pixels, do_sample=False,
                                        max_new_tokens=engine.settings.budget(sample),
                                        eos_token_id=engine.tokenizer.eos_token_id,
                                        pad_token_id=engine.tokenizer.pad_token_id)
            return extract_answer(engine.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
        scores = []
        for variants in engine.candidate_ids([item])[0]:
            best = float("-inf")
            for candidate in variants:
                full = torch.tensor([item.prompt_ids + candidate], device=engine.device)
                logprobs = engine.model(input_ids=full, pixel_values=pixels).logits[0].float().log_softmax(-1)
                start = len(item.prompt_ids) - 1
                best = max(best, sum(float(logprobs[start + j, t]) for j, t in enumerate(candidate)) / len(candidate))
            scores.append(best)
        return route.candidates[scores.index(max(scores))]


@contextlib.contextmanager
def trained_lengths(engine):
    """``engine`` answering OPEN questions as if each row said EOS after its gold answer's tokens + 1.

    On the default path (:mod:`slakevqa.evaluation.row_decoding`) through ``greedy_tokens``'
    per-row budgets; on the ``generate`` path by a per-row stopping criterion.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    import slakevqa.evaluation.fast_backend as engine_module  # where the rows decode (greedy_tokens)

    class GoldLengthStop(StoppingCriteria):
        def __init__(self, start: int, limits: torch.Tensor) -> None:
            self.start, self.limits = start, limits

        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids.shape[1] - self.start) >= self.limits  # one bool per row

    generate, model_generate, greedy, limits = engine.generate, engine.model.generate, engine_module.greedy_tokens, []

    def gold_lengths(items, max_new_tokens, prefixes=None, budgets=None):
        budgets = budgets or [max_new_tokens] * len(items)
        limits[:] = [min(budget, len(engine.tokenizer(item.sample.answer, add_special_tokens=False).input_ids) + 1)
                     for item, budget in zip(items, budgets)]
        return generate(items, max_new_tokens, prefixes, budgets)

    def stopping(**kwargs):
        ids = kwargs["input_ids"]
        stop = GoldLengthStop(ids.shape[1], torch.tensor(limits, device=ids.device))
        return model_generate(**kwargs, stopping_criteria=StoppingCriteriaList([stop]))

    def greedy_gold(*args, row_budgets=None, **kwargs):  # the gold lengths, within each row's own budget
        return greedy(*args, **kwargs, row_budgets=torch.tensor(limits))

    engine.generate, engine.model.generate, engine_module.greedy_tokens = gold_lengths, stopping, greedy_gold
    reused = engine.fast.reused if engine.fast is not None else None  # decoding calls that share a workspace
    if reused is not None:
        tokens = reused.tokens
        reused.tokens = lambda encoded, rows, budget, row_budgets=None: tokens(encoded, rows, budget,
                                                                                torch.tensor(limits))
    try:
        yield engine
    finally:
        engine.__dict__.pop("generate", None)  # back to the class's methods
        engine.model.__dict__.pop("generate", None)
        engine_module.greedy_tokens = greedy
        if reused is not None:
            reused.__dict__.pop("tokens", None)


def timed(fn, device: str):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    began = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - began


def main() -> None:
    import torch

    from slakevqa.data.slake import find_layout, load_split
    from slakevqa.evaluation.engine import Engine
    from slakevqa.inputs.builder import InputBuilder
    from slakevqa.inputs.vocab import ClosedVocab

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slake_root", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--tiny", action="store_true", help="toy model on CPU, to test the script")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--naive_limit", type=int, default=200)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--trained_lengths", action="store_true",
                        help="also time the engine with OPEN answers stopping at their gold length + 1")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    # grouped by image, as evaluate() batches them, so batches share image prefixes
    samples = sorted(load_split(args.slake_root, args.split), key=lambda s: (s.image_key, s.qid))
    builder = InputBuilder.create(find_layout(args.slake_root), ClosedVocab.empty())
    (model, processor), build_s = timed(lambda: build_model(args.tiny, device), device)
    engine = Engine(model, processor, builder, share_prefix=True)
    engine.answer(samples[:4])  # warm-up: kernels, caches, allocator
    [naive_answer(engine, s) for s in samples[:2]]

    naive, naive_s = timed(lambda: [naive_answer(engine, s) for s in samples[: args.naive_limit]], device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batched, engine_s = timed(lambda: [p for i in range(0, len(samples), args.batch_size)
                                       for p in engine.answer(samples[i: i + args.batch_size])], device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    plain = Engine(model, processor, builder, share_prefix=False)  # issue 7's comparison: every question its own image
    unshared, unshared_s = timed(lambda: [p for i in range(0, len(samples), args.batch_size)
                                          for p in plain.answer(samples[i: i + args.batch_size])], device)
    same_paths = sum(a.prediction == b.prediction for a, b in zip(batched, unshared))
    trained = None
    if args.trained_lengths:
        with trained_lengths(engine):
            answered, trained_s = timed(lambda: [p for i in range(0, len(samples), args.batch_size)
                                                 for p in engine.answer(samples[i: i + args.batch_size])], device)
        raw = [len(engine.tokenizer(p.raw_output, add_special_tokens=False).input_ids) for p in answered
               if p.answer_type == "OPEN"]  # the decoded OPEN answers' tokens
        trained = {"seconds": round(trained_s, 2), "q_per_s": round(len(answered) / trained_s, 2),
                   "mean_open_tokens": round(sum(raw) / max(len(raw), 1), 2)}
    same = sum(a == b.prediction for a, b in zip(naive, batched))
    report = {
        "card": torch.cuda.get_device_name() if device == "cuda" else "cpu", "tiny": args.tiny,
        "torch": torch.__version__, "questions": len(samples), "model_build_s": round(build_s, 1),
        "naive": {"questions": len(naive), "seconds": round(naive_s, 2), "q_per_s": round(len(naive) / naive_s, 2)},
        "engine": {"questions": len(batched), "seconds": round(engine_s, 2),
                   "q_per_s": round(len(batched) / engine_s, 2), "batch_size": args.batch_size,
                   "peak_gib": None if peak is None else round(peak, 1)},
        "engine_unshared": {"seconds": round(unshared_s, 2), "q_per_s": round(len(unshared) / unshared_s, 2),
                            "identical_to_shared": f"{same_paths}/{len(batched)}"},
        "engine_trained_lengths": trained,
        "speedup": round((len(batched) / engine_s) / (len(naive) / naive_s), 2),
        "identical_answers": f"{same}/{len(naive)}",
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "eval_throughput.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
