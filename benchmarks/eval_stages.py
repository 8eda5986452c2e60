"""Where evaluation time goes, with and without shared image prefixes, stage by stage.

    SLAKEVQA_MISTRAL_TOKENIZER=bench_data/tokenizer.model PYTHONPATH=src \\
        python benchmarks/eval_stages.py --slake_root bench_data/Slake1.0 --batch_sizes 64,128
    PYTHONPATH=src python benchmarks/eval_stages.py --tiny --slake_root DIR     # CPU smoke test

The English test split is answered by one :class:`~slakevqa.evaluation.engine.Engine`
in ``slakevqa eval``'s order (image by image, images with a long-budget question first), once per setting of
``--settings``, in that order: ``rows`` (the default since issue 15: each image's prefix
prefilled once and read in place by every question's row, :mod:`slakevqa.evaluation.row_decoding`),
``share`` (the path before it: the prefix prefilled once, then copied into one cache row per
question, ``model.generate``), ``noshare`` (every question encodes its image); ``+eager``:
rows without CUDA graphs; ``+cudnn``: sdpa may pick cuDNN attention (:mod:`slakevqa.kernels.attention`);
``+trained``: each OPEN row stops after its gold answer's tokens + 1, what a fine-tuned model
costs (eval_throughput.py's ``trained_lengths``; its answers are not compared); ``+liger``:
Liger's RMSNorm, SwiGLU and RoPE in the model for that setting (CUDA, liger-kernel installed);
``+budgetorder``: batches follow :func:`budget_first_order` (``slakevqa eval``'s order before
issue 15) instead; ``+dense``: ``--no-varlen_attention``: the packed forward's attention is sdpa over the dense
segment mask and the rows read their prefix through grouped matmuls, instead of flash attention's
variable-length kernel for both; ``+pergroup``: one
decoding call per token budget (16, 48) instead of one per batch; ``+reuse``: every decoding call replays one
captured step on a workspace that outlasts the call (:mod:`slakevqa.evaluation.decode_workspace`) instead of
capturing its own; ``+padded``: the packed prefill keeps one row per image, padded to the longest, instead of
laying them end to end in one row (the default where flash attention's variable-length kernel serves).
``+cold``: the images are prepared inside the timing, as a fresh ``slakevqa eval`` prepares them (other settings
find them prepared); ``+cold+prefetch``: by worker threads ahead of the model, as many as ``slakevqa eval``
starts on a GPU (:mod:`slakevqa.inputs.image_prefetch`).
Every setting's answers are compared with the first setting's, per question type. Pixels are
preprocessed before any timing, so no setting but ``+cold`` pays for them. ``--naive_limit`` questions
are also answered one at a time (eval_throughput.py's per-question loop), the reference
toolkit's way. Each stage is timed with CUDA synchronised around it:

* ``prepare``: prompt ids and cached pixels;
* ``score``: CLOSED candidate scoring (prompt prefill + candidate tokens);
* ``generate``: OPEN generation;
* ``encode_batch``: ``rows`` settings' one packed forward per batch of its images and questions (the fast
  backend's ``encode``; ``score_candidates`` and ``generate`` then time only what follows).

Settings: ``rows`` is the fast backend (the default); ``noshare`` (and ``share``, the repeated-prefix path
before issue 26, which now runs as the plain backend) every question with its own image, left-padded, on
transformers' ``generate``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from eval_throughput import build_model, trained_lengths  # noqa: E402  (benchmarks/ is not a package)

STAGES = ("prepare", "score_candidates", "generate")  # the engine's; the fast backend's encode is "encode_batch"


def synchronise() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timing(engine, name: str, times: dict, label: str = "") -> None:
    """Replace ``engine.name`` by a timed wrapper that adds its seconds to ``times[label or name]``."""
    original = getattr(engine, name)

    def timed(*args, **kwargs):
        synchronise()
        began = time.perf_counter()
        result = original(*args, **kwargs)
        synchronise()
        times[label or name] += time.perf_counter() - began
        return result

    setattr(engine, name, timed)


def run(engine, samples, batch_size: int, setting: str) -> dict:
    import torch

    from slakevqa.evaluation.engine import Engine
    from slakevqa.inputs.image_prefetch import worker_count
    from slakevqa.kernels.attention import AttentionSettings

    parts = setting.split("+")
    share, cudnn = parts[0] != "noshare", "cudnn" in parts
    times: dict[str, float] = defaultdict(float)
    # the backend is chosen when the engine is built: one per setting, sharing the model, builder and pixel cache
    engine = Engine(engine.model, engine.processor, engine.builder, settings=engine.settings,
                    share_prefix=share, prefix_attention=parts[0] == "rows", cuda_graphs="eager" not in parts,
                    attention=AttentionSettings(cudnn_attention=cudnn, varlen_attention="dense" not in parts),
                    reuse_decoding="reuse" in parts)
    engine.one_decode_per_batch = "pergroup" not in parts
    if engine.fast is not None:
        engine.fast.flat_packing = "padded" not in parts
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    lengths = trained_lengths(engine) if "trained" in parts else contextlib.nullcontext()
    undo_liger = liger_kernels(engine.model) if "liger" in parts else (lambda: None)
    order = budget_first_order(samples, engine.settings) if "budgetorder" in parts else samples
    with lengths:
        for name in STAGES:
            timing(engine, name, times)
        if engine.fast is not None:
            timing(engine.fast, "encode", times, "encode_batch")
        if "cold" in parts:  # the images prepared inside the timing, as a fresh `slakevqa eval` does
            engine.builder.pixel_cache.clear()
        workers = worker_count(-1, "cuda") if "prefetch" in parts else 0  # the GPU's auto count, on any device
        synchronise()
        began = time.perf_counter()
        answers = [p for answered in engine.answer_batches(order, batch_size, workers) for p in answered]
        synchronise()
        total = time.perf_counter() - began
        by_qid = {p.qid: p for p in answers}
        answers = [by_qid[s.qid] for s in samples]  # in the split's order, for the comparisons
    undo_liger()
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available() else None
    return {"setting": setting, "share_prefix": share, "cudnn_attention": cudnn, "batch_size": batch_size,
            "seconds": round(total, 2), "q_per_s": round(len(samples) / total, 2), "peak_gib": peak,
            **{k: round(v, 2) for k, v in times.items()}, **reuse_counts(engine), "prefetch_workers": workers,
            "answers": answers}


def reuse_counts(engine) -> dict:
    """``+reuse``: decoding calls and how many of them built (and captured) a workspace."""
    reused = engine.fast.reused if engine.fast is not None else None
    return {} if reused is None else {"decoding_calls": reused.calls, "workspaces_built": reused.builds}


def budget_first_order(samples, settings) -> list:
    """``slakevqa eval``'s order before issue 15: by token budget, then image.

    Chosen when a decoding step cost ~100 ms: the 41 abnormality questions fill a batch of their own,
    but their 41 images are prefilled a second time (166 image prefills for 96 images at batch 256,
    against 99 in today's image-first order, evaluation/evaluate.py's ``answer_order``).
    """
    return sorted(samples, key=lambda s: (settings.budget(s), s.image_key, s.qid))


def liger_kernels(model):
    """Liger's RMSNorm, SwiGLU and RoPE in the model (training's ``--kernels liger``); returns the undo.

    Benchmark only: measured in evaluation it was slower (67.7 q/s against 93.1 at batch 256 on the
    H200, benchmarks/RESULTS.md), so ``slakevqa eval`` runs the plain modules."""
    from slakevqa.training.speed_levers import apply_liger, resolve_kernels

    resolve_kernels("liger", model, next(model.parameters()).device.type)  # a clear error where it cannot run
    return apply_liger(model)


def decode_costs(engine, items) -> dict:
    """Seconds of one batch's OPEN decoding at budgets 1, 16 and 48, CUDA graphs and eager: per step and fixed.

    A random model never says ``</s>``, so every call runs its whole budget.
    """
    opened = [p for p in items if not p.view.route.candidates]
    prefixes = engine.fast.encode(items)
    costs: dict = {"open_rows": len(opened)}
    for graphs in (True, False):
        engine.cuda_graphs = graphs
        times = {}
        for budget in (1, 16, 48, 16):  # the second 16 after warm-up is the one kept
            synchronise()
            began = time.perf_counter()
            engine.generate(opened, budget, prefixes)
            synchronise()
            times[budget] = time.perf_counter() - began
        per_step = (times[48] - times[16]) / 32
        name = "graphs" if graphs else "eager"
        costs[name] = {"budget_1_s": round(times[1], 4), "budget_16_s": round(times[16], 4),
                       "budget_48_s": round(times[48], 4), "per_step_ms": round(per_step * 1000, 2),
                       "fixed_s": round(times[16] - 15 * per_step, 4)}
    engine.cuda_graphs = True
    return costs


def agreement(samples, first: str, base: list, setting: str, other: list) -> dict:
    """How many answers ``setting`` shares with ``first``, per question type, and the CLOSED margins of those
    that differ (a near-tie flips under any bf16 rounding change)."""
    pairs = list(zip(samples, base, other))
    closed = [(a, b) for s, a, b in pairs if s.answer_type == "CLOSED"]
    opened = [(a, b) for s, a, b in pairs if s.answer_type != "CLOSED"]
    flipped = [a.margin for a, b in closed if a.prediction != b.prediction and a.margin is not None]
    margins = sorted(a.margin for a, _ in closed if a.margin is not None)
    return {"compare": f"{setting} vs {first}",
            "identical": f"{sum(a.prediction == b.prediction for _, a, b in pairs)}/{len(pairs)}",
            "closed_identical": f"{sum(a.prediction == b.prediction for a, b in closed)}/{len(closed)}",
            "open_identical": f"{sum(a.prediction == b.prediction for a, b in opened)}/{len(opened)}",
            "open_first_word_identical":
                f"{sum(a.prediction.split()[:1] == b.prediction.split()[:1] for a, b in opened)}/{len(opened)}",
            "closed_flipped_max_margin": round(max(flipped), 4) if flipped else None,
            "closed_median_margin": round(margins[len(margins) // 2], 4) if margins else None,
            "differences": [{"qid": s.qid, "type": s.answer_type, first: a.prediction, setting: b.prediction}
                            for s, a, b in pairs if a.prediction != b.prediction][:10]}


def main() -> None:
    import torch

    from slakevqa.data.slake import find_layout, load_split
    from slakevqa.evaluation.engine import Engine, GenerationSettings
    from slakevqa.evaluation.evaluate import answer_order
    from slakevqa.inputs.builder import InputBuilder
    from slakevqa.inputs.vocab import ClosedVocab
    from slakevqa.models.image_features import kept_pixel_dtype

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slake_root", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--settings", default="share,rows,rows+eager,rows",
                        help="comma-separated, SETTING@N at batch size N; answers are compared with the first's")
    parser.add_argument("--naive_limit", type=int, default=0)
    parser.add_argument("--lm_head_scale", type=float, default=1.0,
                        help="multiply the LM head by this: a random model's logits are near-ties that bf16 rounding "
                             "flips; scaled, they are as decisive as a trained model's, so answer agreement tests the "
                             "implementation rather than the noise")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables of one batch (CUDA)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    samples = answer_order(load_split(args.slake_root, args.split), GenerationSettings())  # as slakevqa eval does
    builder = InputBuilder.create(find_layout(args.slake_root), ClosedVocab.empty())
    model, processor = build_model(args.tiny, device)
    if args.lm_head_scale != 1.0:
        with torch.no_grad():
            model.lm_head.weight.mul_(args.lm_head_scale)
    builder.pixel_dtype = kept_pixel_dtype(model)  # as slakevqa eval keeps them
    engine = Engine(model, processor, builder)
    for sample in samples:  # pixels first: no setting pays for preprocessing
        engine.prepare(sample)
    engine.answer(samples[:8])  # kernels, allocator
    reports, answers = [], {}
    settings = args.settings.split(",")
    for setting in settings:  # rows@512: the rows setting at batch size 512
        name, _, size = setting.partition("@")
        result = run(engine, samples, int(size) if size else args.batch_size, name)
        answered = result.pop("answers")
        if "trained" not in setting:
            answers.setdefault(setting, answered)
        result["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        reports.append(result)
        print(json.dumps(result), flush=True)
    for setting in list(answers)[1:]:
        reports.append(agreement(samples, settings[0], answers[settings[0]], setting, answers[setting]))
        reports[-1]["lm_head_scale"] = args.lm_head_scale
        print(json.dumps(reports[-1]), flush=True)
    if args.profile and device == "cuda":  # one batch's packed forward and its answers, by CUDA time
        from train_packing import profile_steps

        batch = samples[:args.batch_size]
        items = [engine.prepare(s) for s in batch]
        print(profile_steps(lambda: engine.fast.encode(items), steps=1), flush=True)
        print(profile_steps(lambda: engine.answer(batch), steps=1), flush=True)
        print(json.dumps(decode_costs(engine, items)), flush=True)
        opened = [p for p in items if not p.view.route.candidates]
        prefixes = engine.fast.encode(items)
        engine.cuda_graphs = engine.fast.cuda_graphs = False  # eager steps: every kernel of a step listed
        print(f"{len(opened)} OPEN rows, 16 eager decoding steps:", flush=True)
        print(profile_steps(lambda: engine.generate(opened, 16, prefixes), steps=1), flush=True)
        engine.cuda_graphs = engine.fast.cuda_graphs = True
    if args.naive_limit:
        from eval_throughput import naive_answer

        synchronise()
        began = time.perf_counter()
        naive = [naive_answer(engine, s) for s in samples[:args.naive_limit]]
        synchronise()
        seconds = time.perf_counter() - began
        reports.append({"setting": "naive per-question loop", "questions": len(naive), "seconds": round(seconds, 2),
                        "q_per_s": round(len(naive) / seconds, 2)})
        print(json.dumps(reports[-1]), flush=True)
    if device == "cuda":
        print(json.dumps({"peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
