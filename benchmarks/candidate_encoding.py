"""Host time of the CLOSED candidates' token ids: one tokenizer call per text (twice) against one batched call.

    SLAKEVQA_TOKENIZERS=../shared/tokenizers SLAKEVQA_MISTRAL_TOKENIZER=bench_data/tokenizer.model PYTHONPATH=src \\
        python benchmarks/candidate_encoding.py --slake_root ../shared/slake/Slake1.0

For each family's walkthrough tokenizer (benchmarks/family_shapes.py; LLaVA-Med's Mistral one), the English
test split's CLOSED questions get their candidates' spellings encoded the way ``Engine.score_candidates`` did
until 2026-12-07 (``encode_answer`` per spelling: prompt and full text tokenised one call each, and the
whole list built twice) and the way it does now (``encode_answers``: each prompt once, every text in one
call). Both must give the same ids. No GPU is involved: this is the scorer's host time, the same on any
machine up to its CPU (the CLOSED stage of benchmarks/RESULTS.md's evaluation tables includes it).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def per_text(tokenizer, chat, items: list, spellings: list) -> list:
    """The old way: ``encode_answer`` per spelling (two tokenizer calls each)."""
    from slakevqa.inputs.encoding import encode_answer

    return [[[encode_answer(tokenizer, item.view.user_text, v, chat=chat) for v in variants] for variants in per_item]
            for item, per_item in zip(items, spellings)]


def best_of(repeats: int, run) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - began)
    return min(times), result


def measure(family: str, root: str, work: Path, repeats: int) -> dict:
    import importlib

    from family_shapes import family_tokenizer
    from slakevqa.data.slake import find_layout, load_split
    from slakevqa.inputs.builder import InputBuilder
    from slakevqa.inputs.vocab import ClosedVocab, candidate_variants

    chat = importlib.import_module(f"slakevqa.models.families.{family}").FAMILY.chat
    if family == "llava_med":  # LLaVA-Med's own: the Mistral tokenizer with LLaVA's image token
        from slakevqa.models.tokenizer import build_mistral_tokenizer

        tokenizer = build_mistral_tokenizer(work / "mistral")
    else:
        tokenizer = family_tokenizer(family, work)
    builder = InputBuilder.create(find_layout(root), ClosedVocab.empty())
    closed = [s for s in load_split(root, "test") if s.q_lang == "en" and s.answer_type == "CLOSED"]
    items = [type("Item", (), {"view": builder.view(s)}) for s in closed]
    items = [i for i in items if i.view.route.candidates]
    spellings = [[candidate_variants(c, builder.vocab) for c in i.view.route.candidates] for i in items]

    def batched():
        from slakevqa.inputs.encoding import encode_answers

        flat = encode_answers(tokenizer, [(i.view.user_text, [v for vs in per for v in vs])
                                          for i, per in zip(items, spellings)], chat=chat)
        return [[[next(it) for _ in vs] for vs in per] for per, it in zip(spellings, map(iter, flat))]

    old_s, old = best_of(repeats, lambda: (per_text(tokenizer, chat, items, spellings),
                                           per_text(tokenizer, chat, items, spellings))[0])
    new_s, new = best_of(repeats, batched)
    assert old == new, f"{family}: the batched ids differ"
    return {"family": family, "tokenizer": type(tokenizer).__name__, "questions": len(items),
            "spellings": sum(len(v) for per in spellings for v in per), "per_text_twice_s": round(old_s, 3),
            "batched_s": round(new_s, 3), "speedup": round(old_s / new_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slake_root", required=True)
    parser.add_argument("--families", default="llava_med,llava_1_5,qwen2_5_vl,gemma3")
    parser.add_argument("--repeats", type=int, default=3, help="the best of this many runs of each way")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for family in args.families.split(","):
            report = measure(family, args.slake_root, Path(work), args.repeats)
            report["cpu"] = platform.processor() or platform.machine()
            print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
