"""A small real-SLAKE subset for ``benchmarks/gpu_walkthrough.sh``, in the git-ignored ``bench_data/``.

    python benchmarks/prepare_walk_data.py --slake_root ../shared/slake/Slake1.0

Writes ``bench_data/walk/Slake1.0`` in the official layout (train.json, validate.json,
test.json, mask.txt, KG/, imgs/xmlabN/{source.jpg,mask.png,detection.json}) holding the
English questions of whole images (8 train, 3 validation, 4 test by default), every
record copied field for field, and ``bench_data/tokenizer.model`` (the Mistral-7B file
from mistral-common; the GPU box cannot install that package). Images are picked
deterministically across CT, MRI and X-Ray, preferring images with OPEN, CLOSED and kvqa
questions; the train split also keeps xmlab281, whose qid 1622 has an empty answer (training
drops it with a logged count). Never commit bench_data/: it is SLAKE (CC BY 4.0), not ours.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from slakevqa.models.tokenizer import mistral_tokenizer_file  # noqa: E402

SPLIT_FILES = {"train": "train.json", "validation": "validate.json", "test": "test.json"}
MODALITIES = ("CT", "MRI", "X-Ray")
EMPTY_ANSWER_IMAGE = "xmlab281/source.jpg"  # train qid 1622: answer "" (an edge case worth replaying)


def by_image(records: list[dict]) -> dict[str, list[dict]]:
    """English records grouped by ``img_name``, in file order."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        if record["q_lang"] == "en":
            groups.setdefault(record["img_name"], []).append(record)
    return groups


def richness(questions: list[dict]) -> int:
    """0-3: how many of OPEN, CLOSED and kvqa an image's questions cover."""
    return (any(q["answer_type"] == "OPEN" for q in questions) + any(q["answer_type"] == "CLOSED" for q in questions)
            + any(q["base_type"] == "kvqa" for q in questions))


def pick_images(groups: dict[str, list[dict]], n: int, must: tuple[str, ...] = ()) -> list[str]:
    """``n`` images: ``must`` first, then round-robin over modalities, richest (then lowest id) first."""
    picked = [name for name in must if name in groups]
    queues = {m: sorted((name for name, qs in groups.items() if qs[0]["modality"] == m and name not in picked),
                        key=lambda name: (-richness(groups[name]), groups[name][0]["img_id"])) for m in MODALITIES}
    while len(picked) < n and any(queues.values()):
        for modality in MODALITIES:
            if queues[modality] and len(picked) < n:
                picked.append(queues[modality].pop(0))
    return picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slake_root", required=True, help="the official Slake1.0 folder")
    parser.add_argument("--out", default="bench_data", help="bench_data folder (git-ignored)")
    parser.add_argument("--images", default="8,3,4", help="images per split: train,validation,test")
    args = parser.parse_args(argv)
    source, out = Path(args.slake_root), Path(args.out)
    target = out / "walk" / "Slake1.0"
    shutil.rmtree(target, ignore_errors=True)
    (target / "imgs").mkdir(parents=True)
    counts = dict(zip(SPLIT_FILES, (int(n) for n in args.images.split(","))))
    for split, file_name in SPLIT_FILES.items():
        groups = by_image(json.loads((source / file_name).read_text(encoding="utf-8")))
        names = pick_images(groups, counts[split], (EMPTY_ANSWER_IMAGE,) if split == "train" else ())
        records = sorted((r for name in names for r in groups[name]), key=lambda r: r["qid"])
        (target / file_name).write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        for name in names:  # the whole image folder: source.jpg, mask.png, detection.json, question.json
            folder = Path(name).parent
            shutil.copytree(source / "imgs" / folder, target / "imgs" / folder)
        print(f"{split}: {len(records)} English questions on {len(names)} images "
              f"({', '.join(str(Path(n).parent) for n in names)})")
    shutil.copyfile(source / "mask.txt", target / "mask.txt")
    shutil.copytree(source / "KG", target / "KG")
    tokenizer = mistral_tokenizer_file()
    if tokenizer is None:
        print("mistral-common is not installed: no bench_data/tokenizer.model (pip install mistral-common)")
        return 1
    shutil.copyfile(tokenizer, out / "tokenizer.model")
    for path in target.rglob("*"):  # the source tree is read-only; copies must be removable
        path.chmod(0o755 if path.is_dir() else 0o644)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{size / 2**20:.1f} MiB in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
