"""What preparing images costs the host, per family, and what worker threads make of it
(slakevqa.inputs.image_prefetch).

    PYTHONPATH=src SLAKEVQA_MISTRAL_TOKENIZER=bench_data/tokenizer.model SLAKEVQA_TOKENIZERS=bench_data/tokenizers \\
        python benchmarks/image_prefetch.py --slake_root bench_data/Slake1.0 --workers 0,2,4,8

For each family, every image of the split's questions (the English test split: 96 images for 1,061
questions) is loaded and processed as ``slakevqa eval`` does (``InputBuilder.image_inputs``, the
family's real image processor), from an empty cache: in the caller's thread (``workers 0``), then by
``ImagePrefetch`` with N threads. Every run's tensors are asserted equal to the serial run's. No model
runs here: this is the host work that, without threads, stands in front of the model's (GPU) work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

FAMILIES = ("llava_med", "qwen2_5_vl", "gemma3")  # LLaVA-1.5 processes images as LLaVA-Med does


def family_processor(name: str, work: Path):
    """The family's real processor (the image side is what matters; LLaVA-Med's tokenizer is Mistral's file)."""
    import importlib

    from family_shapes import family_tokenizer

    module = importlib.import_module(f"slakevqa.models.families.{name}")
    return module.build_processor(family_tokenizer("llava_1_5" if name == "llava_med" else name, work))


def prepare_all(samples, family, processor, layout, workers: int) -> tuple[float, dict]:
    """Seconds to prepare every image of ``samples`` from an empty cache, and the cache."""
    from slakevqa.inputs.builder import InputBuilder
    from slakevqa.inputs.image_prefetch import ImagePrefetch
    from slakevqa.inputs.vocab import ClosedVocab

    builder = InputBuilder.create(layout, ClosedVocab.empty())
    began = time.perf_counter()
    with ImagePrefetch(builder, family, processor, workers) as images:
        images.submit(samples)
        images.wait(samples)
        for sample in samples:  # workers 0: all of it here; else every image is cached already
            builder.image_inputs(sample, family, processor)
    return time.perf_counter() - began, builder.pixel_cache


def same_tensors(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(
        a[k].tokens == b[k].tokens and all(torch.equal(a[k].tensors[n], b[k].tensors[n]) for n in a[k].tensors)
        for k in a)


def reported(reports: list, report: dict) -> None:
    """``report`` kept and printed as it comes (a run stopped at its limit still shows what it measured)."""
    reports.append(report)
    print(json.dumps(report), flush=True)


def write_reports(reports: list, out: str | None) -> None:
    if out:
        Path(out).write_text(json.dumps(reports, indent=1))


def main() -> None:
    from slakevqa.data.slake import find_layout, load_split
    from slakevqa.models.families import family_named

    parser = argparse.ArgumentParser()
    parser.add_argument("--slake_root", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--workers", default="0,2,4,8")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    layout, samples = find_layout(args.slake_root), load_split(args.slake_root, args.split)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    reports = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.families.split(","):
            family, processor = family_named(name), family_processor(name, Path(work))
            serial = None
            for workers in (int(w) for w in args.workers.split(",")):
                seconds, cache = prepare_all(samples, family, processor, layout, workers)
                serial = serial or cache
                report = {"family": name, "workers": workers, "images": len(cache), "questions": len(samples),
                          "seconds": round(seconds, 3), "images_per_s": round(len(cache) / seconds, 1),
                          "equal_to_serial": same_tensors(serial, cache), "cores": cores}
                assert report["equal_to_serial"], f"{name}: {workers} workers prepared other tensors"
                reported(reports, report)
    write_reports(reports, args.out)


if __name__ == "__main__":
    main()
