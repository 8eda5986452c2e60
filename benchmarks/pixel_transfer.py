"""What moving a batch's images to the model costs, per family: joined and cast on the host (the old way) against
each image copied as it is and joined and cast on the device (``slakevqa.models.families.family.images_on`` and
``to_device``).

    PYTHONPATH=src SLAKEVQA_MISTRAL_TOKENIZER=bench_data/tokenizer.model SLAKEVQA_TOKENIZERS=bench_data/tokenizers \\
        python benchmarks/pixel_transfer.py --slake_root bench_data/Slake1.0

Every image of the split (the English test split: 96) is prepared once with the family's real image processor;
then the images, in the split's order, are cut into batches of ``--images`` (23: a 256-question evaluation batch;
6: a packed 64-question training batch) and each batch is moved to the device in bf16 both ways, timed with the
device synchronised, tensors asserted equal. On a CPU both ways do the same work (nothing crosses).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from image_prefetch import FAMILIES, family_processor, prepare_all, reported, write_reports  # noqa: E402


def host_join(family, images, device, dtype) -> dict:
    """The old way: ``collate`` here, then one ``to(device, dtype)`` per tensor (the cast runs on the host)."""
    return {name: value.to(device, dtype) if value.is_floating_point() else value.to(device)
            for name, value in family.images.collate(images).items()}


def device_join(family, images, device, dtype) -> dict:
    from slakevqa.models.families.family import images_on, to_device

    return {name: to_device(value, device, dtype if value.is_floating_point() else None)
            for name, value in family.images.collate(images_on(images, device)).items()}


def compared(family, batches, device, dtype) -> tuple[float, float]:
    """Median seconds per batch of the two ways, taken in turns (each batch both ways, the first alternating), the
    tensors asserted equal and dropped before the next batch (kept, they would crowd the host's memory)."""
    import torch

    def once(move, images) -> tuple[float, dict]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        out = move(family, images, device, dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began, out

    old, new = [], []
    for i, images in enumerate(batches):
        order = (host_join, device_join) if i % 2 == 0 else (device_join, host_join)
        (first, a), (second, b) = once(order[0], images), once(order[1], images)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), family.name
        old.append(first if order[0] is host_join else second)
        new.append(second if order[0] is host_join else first)
        del a, b
    return statistics.median(old), statistics.median(new)


def main() -> None:
    import torch

    from slakevqa.data.slake import find_layout, load_split
    from slakevqa.models.families import family_named

    parser = argparse.ArgumentParser()
    parser.add_argument("--slake_root", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--images", default="23,6", help="images per batch, comma-separated")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    layout, samples = find_layout(args.slake_root), load_split(args.slake_root, args.split)
    reports = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.families.split(","):
            family, processor = family_named(name), family_processor(name, Path(work))
            _, cache = prepare_all(samples, family, processor, layout, 0)
            images = list(cache.values())
            for per in (int(n) for n in args.images.split(",")):
                batches = [images[i:i + per] for i in range(0, len(images) - per + 1, per)]
                once_each = compared(family, batches[:1], device, torch.bfloat16)  # warm-up: allocator, context
                del once_each
                old, new = compared(family, batches, device, torch.bfloat16)
                megabytes = statistics.median(
                    sum(v.numel() * 2 if v.is_floating_point() else v.nbytes for v in family.images.collate(b).values())
                    for b in batches) / 1e6
                report = {"family": name, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                          "images_per_batch": per, "batches": len(batches), "bf16_mb_median": round(megabytes, 1),
                          "host_join_ms": round(old * 1000, 2), "device_join_ms": round(new * 1000, 2),
                          "equal": True}
                reported(reports, report)
    write_reports(reports, args.out)


if __name__ == "__main__":
    main()
