"""Where evaluation time goes, with and without shared image prefixes, stage by stage.

    SLAKEVQA_MISTRAL_TOKENIZER=bench_data/tokenizer.model PYTHONPATH=src \\
        python benchmarks/eval_stages.py --slake_root bench_data/Slake1.0 --batch_sizes 64,128
    PYTHONPATH=src python benchmarks/eval_stages.py --tiny --slake_root DIR     # CPU smoke test

The English test split is answered by one :class:`~slakevqa.evaluation.engine.Engine`
in batches grouped by image (as ``slakevqa eval`` batches them), once per setting.
Pixels are preprocessed before any timing, so neither setting pays for them; the
setting that goes first alternates from one batch size to the next, so warm-up and
allocator state favour neither. Each stage is timed with CUDA synchronised around it:

* ``prepare``: prompt ids and cached pixels;
* ``score``: CLOSED candidate scoring (prompt prefill + candidate tokens);
* ``generate``: OPEN generation, of which ``prefix`` is the shared-prefix prefill.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from eval_throughput import build_model  # noqa: E402  (benchmarks/ is not a package)


def synchronise() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timing(engine, name: str, times: dict) -> None:
    """Replace ``engine.name`` by a timed wrapper that adds its seconds to ``times[name]``."""
    original = getattr(engine, name)

    def timed(*args, **kwargs):
        synchronise()
        began = time.perf_counter()
        result = original(*args, **kwargs)
        synchronise()
        times[name] += time.perf_counter() - began
        return result

    setattr(engine, name, timed)


def run(engine, samples, batch_size: int, share: bool) -> dict:
    times: dict[str, float] = defaultdict(float)
    engine.share_prefix = share
    for name in ("prepare", "score_candidates", "generate", "encode_shared_prefix"):
        timing(engine, name, times)
    synchronise()
    began = time.perf_counter()
    answers = [p for i in range(0, len(samples), batch_size) for p in engine.answer(samples[i:i + batch_size])]
    synchronise()
    total = time.perf_counter() - began
    for name in ("prepare", "score_candidates", "generate", "encode_shared_prefix"):
        delattr(engine, name)  # back to the class's method
    return {"share_prefix": share, "batch_size": batch_size, "seconds": round(total, 2),
            "q_per_s": round(len(samples) / total, 2), **{k: round(v, 2) for k, v in times.items()},
            "answers": [a.prediction for a in answers]}


def main() -> None:
    import torch

    from slakevqa.data.slake import find_layout, load_split
    from slakevqa.evaluation.engine import Engine
    from slakevqa.inputs import InputBuilder
    from slakevqa.vocab import ClosedVocab

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slake_root", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch_sizes", default="64")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    samples = sorted(load_split(args.slake_root, args.split), key=lambda s: (s.image_key, s.qid))
    builder = InputBuilder.create(find_layout(args.slake_root), "short", ClosedVocab.empty())
    model, processor = build_model(args.tiny, device)
    engine = Engine(model, processor, builder)
    for sample in samples:  # pixels first: no setting pays for preprocessing
        engine.pixel_values(sample)
    engine.answer(samples[:8])  # kernels, allocator
    reports = []
    for b, batch_size in enumerate(int(x) for x in args.batch_sizes.split(",")):
        order = (True, False) if b % 2 == 0 else (False, True)
        runs = [run(engine, samples, batch_size, share) for share in order]
        for mine in runs:
            report = {k: v for k, v in mine.items() if k != "answers"}
            report["first"] = mine is runs[0]
            report["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
            reports.append(report)
            print(json.dumps(report), flush=True)
        shared, unshared = runs[order.index(True)]["answers"], runs[order.index(False)]["answers"]
        same = sum(a == b for a, b in zip(shared, unshared))
        print(json.dumps({"batch_size": batch_size, "identical_answers": f"{same}/{len(shared)}"}), flush=True)
        if device == "cuda":
            print(json.dumps({"peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
