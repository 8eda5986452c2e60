"""Copy what a GPU benchmark needs from real SLAKE into the git-ignored ``bench_data/`` (travels with `carry`).

    python benchmarks/prepare_bench_data.py --slake_root ../shared/slake/Slake1.0 --splits test

Copies the split files, mask.txt, KG/ and the images (with masks and boxes) of the
English questions of the chosen splits, plus the Mistral-7B tokenizer.model from
mistral-common (the GPU box cannot install that package). Never commit bench_data/.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from slakevqa.data.slake import find_layout, load_split  # noqa: E402
from slakevqa.models.tokenizer import mistral_tokenizer_file  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slake_root", required=True)
    parser.add_argument("--splits", default="test")
    parser.add_argument("--out", default="bench_data")
    args = parser.parse_args()
    layout = find_layout(args.slake_root)
    target = Path(args.out) / "Slake1.0"
    (target / "imgs").mkdir(parents=True, exist_ok=True)
    for name in ("train.json", "validate.json", "test.json", "mask.txt"):
        shutil.copyfile(layout.root / name, target / name)
    shutil.copytree(layout.kg_dir, target / "KG", dirs_exist_ok=True)
    folders = {s.image_path.parent for split in args.splits.split(",") for s in load_split(layout.root, split)}
    for folder in sorted(folders):
        shutil.copytree(folder, target / "imgs" / folder.name, dirs_exist_ok=True)
    shutil.copyfile(mistral_tokenizer_file(), Path(args.out) / "tokenizer.model")
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    print(f"{len(folders)} image folders, {size / 2**20:.1f} MiB in {args.out}")


if __name__ == "__main__":
    main()
