"""Where shared image prefixes win or lose at 7B: candidate scoring and generation timed apart.

    SLAKEVQA_MISTRAL_TOKENIZER=bench_data/tokenizer.model PYTHONPATH=src \\
        python benchmarks/prefix_profile.py --slake_root bench_data/Slake1.0

Takes 64-question batches grouped by image (as ``slakevqa eval`` does), splits them
into CLOSED (scored) and OPEN (generated, 16 new tokens), and times each stage with
and without ``share_prefix``, alternating the order (ABBA) so warm-up favours neither.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def timed(fn) -> float:
    import torch

    torch.cuda.synchronize()
    began = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - began


def main() -> None:
    from slakevqa.data.slake import find_layout, load_split
    from slakevqa.evaluation.engine import Engine
    from slakevqa.inputs import InputBuilder
    from slakevqa.models.shapes import build_random_llava_med_7b
    from slakevqa.vocab import ClosedVocab

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slake_root", required=True)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    samples = sorted(load_split(args.slake_root, "test"), key=lambda s: (s.image_key, s.qid))
    model, processor = build_random_llava_med_7b()
    engine = Engine(model, processor, InputBuilder.create(find_layout(args.slake_root), "short", ClosedVocab.empty()))
    batches = [[engine.prepare(s) for s in samples[i * 64:(i + 1) * 64]] for i in range(args.batches)]
    closed = [[p for p in b if p.view.route.candidates] for b in batches]
    opened = [[p for p in b if not p.view.route.candidates] for b in batches]
    stages = {"score CLOSED": lambda: [engine.score_candidates(b) for b in closed if b],
              "generate OPEN x16": lambda: [engine.generate(b, 16) for b in opened if b],
              "prefill only": lambda: [engine.encode_prompts(b) for b in batches]}
    import torch

    report = {}
    torch.inference_mode().__enter__()  # no autograd graphs (encode_prompts is called directly)
    for name, stage in stages.items():
        times = {True: 0.0, False: 0.0}
        for share in (True, False, False, True):
            engine.share_prefix = share
            times[share] += timed(stage) / 2
        report[name] = {"shared_s": round(times[True], 3), "per_question_s": round(times[False], 3),
                        "images_per_batch": [len({id(p.pixel_values) for p in b}) for b in batches]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
