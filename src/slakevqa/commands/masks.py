"""`slakevqa masks`: show what mask conditioning does to a question's image, or count it over SLAKE.

One or more questions, written as PNGs under ``--out``::

    slakevqa masks --slake_root ../shared/slake/Slake1.0 --qid 11934,12904 --out mask_debug --mask_mode masked

writes ``{qid}_original.png``, ``{qid}_mask.png`` (the region, white), ``{qid}_{mode}.png``
and ``{qid}_overlay.png`` (region in red over the image, crop box in yellow), and
prints the classes chosen and their source. Every English record::

    slakevqa masks --slake_root ../shared/slake/Slake1.0 --all

conditions each image in both ``crop`` and ``masked`` modes and prints how many
were conditioned, empty or missing, per modality.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from slakevqa.commands.dataset_args import add_dataset_arguments, resolve_dataset_root
from slakevqa.data.images import load_rgb
from slakevqa.data.masks import MaskResult, MaskStats, apply_mask, check_mode, overlay, region_mask
from slakevqa.data.slake import SPLITS, SlakeLayout, find_layout, load_split
from slakevqa.errors import UserError
from slakevqa.escaping import printable
from slakevqa.files import make_output_dir
from slakevqa.locks import writing
from slakevqa.records import VQASample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser)
    parser.add_argument("--qid", action="append", default=[],
                        help="question id; repeat the flag or give a comma list (12904,12905)")
    parser.add_argument("--all", action="store_true",
                        help="condition every record of --language in the three splits in both modes and print the "
                             "counts (applied / empty / missing per modality)")
    parser.add_argument("--out", type=Path, help="folder for the PNGs of --qid")
    parser.add_argument("--mask_mode", choices=("crop", "masked"), default="crop")
    parser.add_argument("--mask_pad_ratio", type=float, default=0.10,
                        help="crop padding per side, as a fraction of the box size (default 0.10)")
    parser.add_argument("--split", default=None, help="split holding the qids (default: search all three)")


def run(args: argparse.Namespace) -> int:
    if not args.qid and not args.all:
        raise UserError("nothing to do: pass --qid N (repeatable, or a comma list) or --all")
    check_mode(args.mask_mode, args.mask_pad_ratio)
    root = resolve_dataset_root(args)
    layout = find_layout(root)
    if args.qid:
        if args.out is None:
            raise UserError("--qid writes PNGs: pass --out DIR")
        out = make_output_dir(args.out, "--out")
        with writing(out, "masks", "--out"):
            for sample in find_samples(root, parse_qids(args.qid), args.split, args.missing_images):
                write_example(sample, layout, out, args.mask_mode, args.mask_pad_ratio)
    if args.all:
        stats = count_all(root, layout, args.mask_pad_ratio, args.language, args.missing_images)
        print(format_stats(stats))
    return 0


def parse_qids(values: list[str]) -> list[int]:
    """``["3", "5,7"]`` -> ``[3, 5, 7]``; anything not a number is a UserError."""
    parts = [p.strip() for value in values for p in value.split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        raise UserError(f"--qid takes whole numbers, got {', '.join(values)}")
    return [int(p) for p in parts]


def find_samples(root: str | Path, qids: list[int], split: str | None,
                 missing_images: str = "error") -> list[VQASample]:
    """The records of ``qids`` (either language: a qid names one record) from ``split``, or from any split."""
    by_qid: dict[int, VQASample] = {}
    for name in [split] if split else SPLITS:
        by_qid.update((s.qid, s) for s in load_split(root, name, "all", missing_images))
    missing = [q for q in qids if q not in by_qid]
    if missing:
        where = f"the {split} split" if split else "train, validation or test"
        raise UserError(f"qid {', '.join(map(str, missing))} not found in {where} of {root}")
    return [by_qid[q] for q in qids]


def describe(sample: VQASample, result: MaskResult) -> str:
    """One line: the question, the region chosen, its source and coverage (data text made printable)."""
    return printable(_describe(sample, result))


def _describe(sample: VQASample, result: MaskResult) -> str:
    head = f"qid {sample.qid} ({sample.modality}, {sample.image_key}) {sample.question!r}"
    if result.status == "missing":
        return f"{head}: no mask file and no detection.json: image left unmodified"
    classes = ", ".join(result.classes) or "all non-zero pixels"
    where = f"{result.source} {result.path.name if result.path else ''}".strip()
    if result.status == "empty":
        return f"{head}: {where} has no labelled pixels: image left unmodified"
    share = 100 * result.region.mean()
    return f"{head}: region {classes} (rule {result.rule}) from {where}, {share:.1f}% of the image"


def write_example(sample: VQASample, layout: SlakeLayout, out: Path, mode: str, pad_ratio: float) -> list[Path]:
    """Write the four PNGs of one question under ``out``; print what was chosen."""
    out.mkdir(parents=True, exist_ok=True)
    image = load_rgb(sample.image_path)
    result = region_mask(sample, layout)
    region = result.region if result.region is not None else np.zeros((image.height, image.width), bool)
    mask = Image.fromarray(region.astype(np.uint8) * 255)
    images = {"original": image, "mask": mask, mode: apply_mask(image, result.region, mode, pad_ratio),
              "overlay": overlay(image, result, pad_ratio)}
    paths = []
    for name, picture in images.items():
        paths.append(out / f"{sample.qid}_{name}.png")
        picture.save(paths[-1])
    print(describe(sample, result))
    print(f"  wrote {', '.join(p.name for p in paths)} to {out}")
    return paths


def count_all(root: str | Path, layout: SlakeLayout, pad_ratio: float, language: str = "en",
              missing_images: str = "error") -> MaskStats:
    """Condition every record of ``language`` in both modes; each image is decoded once."""
    from tqdm import tqdm  # the progress bar is only needed here

    samples = [s for split in SPLITS for s in load_split(root, split, language, missing_images)]
    samples.sort(key=lambda s: (str(s.image_path), s.qid))  # questions of one image together
    stats, image, image_path = MaskStats(), None, None
    for sample in tqdm(samples, desc="masks", unit="question"):
        if sample.image_path != image_path:
            image, image_path = load_rgb(sample.image_path), sample.image_path
        result = region_mask(sample, layout)
        stats.record(result, sample.modality)
        for mode in ("crop", "masked"):
            apply_mask(image, result.region, mode, pad_ratio)
    return stats


def format_stats(stats: MaskStats) -> str:
    """A small table: records conditioned / left unmodified (empty, missing) per modality."""
    summary = stats.as_dict()
    lines = [f"{'modality':<10}{'applied':>9}{'empty':>8}{'missing':>9}{'total':>8}"]
    rows = list(summary["by_modality"].items()) + [("all", summary)]
    for modality, c in rows:
        total = c["applied"] + c["empty"] + c["missing"]
        lines.append(f"{modality:<10}{c['applied']:>9}{c['empty']:>8}{c['missing']:>9}{total:>8}")
    lines.append("sources: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["sources"].items())))
    lines.append("rules: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["rules"].items())))
    lines.append(f"left unmodified: {stats.unmodified} of {sum(stats.counts.values())} records")
    return "\n".join(lines)
