"""`slakevqa convert-sft`: SLAKE splits as LLaVA conversation JSON (schema in slakevqa.data.sft),
described for LLaMA-Factory in a dataset_info.json beside them (slakevqa.data.llama_factory).

    slakevqa convert-sft --data_root ../shared/slake/Slake1.0 --output_dir work_sft
"""

from __future__ import annotations

import argparse

from slakevqa.commands.dataset_args import add_dataset_arguments, resolve_dataset_root
from slakevqa.data.llama_factory import DATASET_INFO, entry_name, read_dataset_info, update_dataset_info
from slakevqa.data.sft import export_sft
from slakevqa.data.slake import SPLITS, canonical_split, find_layout
from slakevqa.files import check_output_dir
from slakevqa.locks import writing

EPILOG = (f"Beside the JSON files, {DATASET_INFO} describes each split for LLaMA-Factory (entries "
          "slake_train, slake_validation, slake_test; entries already in the file are kept): set its "
          "dataset_dir to --output_dir and its media_dir to the image folder this command prints, because "
          "image paths are relative to that folder. Not written with --mm_use_im_start_end, whose wrapped "
          "image token LLaMA-Factory would read as text.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG  # not a flag: docs/flags.md lists flags only
    add_dataset_arguments(parser, root_aliases=("--data_root",))
    parser.add_argument("--output_dir", default="work_slake_llava_med", help="where the JSON files go")
    parser.add_argument("--use_hf", action="store_true", help="fetch BoKelvin/SLAKE from the Hugging Face hub "
                                                              "(the reference's spelling of --data_source hf)")
    parser.add_argument("--mm_use_im_start_end", action="store_true",
                        help="wrap the image token as <im_start><image><im_end> (off for LLaVA-Med v1.5)")
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma list (default: all three)")
    parser.add_argument("--family", default="llava_med",
                        help="the model family you will train with LLaMA-Factory: its template name goes into "
                             f"{DATASET_INFO} and the printed command (llava_med, llava_1_5, qwen2_5_vl, gemma3)")


def run(args: argparse.Namespace) -> int:
    from slakevqa.models.families import family_named

    family = family_named(args.family)
    template = family.llama_factory_template
    out = check_output_dir(args.output_dir, "--output_dir")  # before the dataset is read, not at the first write
    read_dataset_info(out)  # likewise: a broken dataset_info.json is refused before anything is written
    if args.use_hf:
        args.data_source = "hf"
    root = resolve_dataset_root(args)
    splits = tuple(canonical_split(s.strip()) for s in args.splits.split(",") if s.strip())
    with writing(out, "convert-sft"):
        written = export_sft(root, out, args.language, splits, args.mm_use_im_start_end, args.missing_images)
        info = update_dataset_info(out, written, describe=not args.mm_use_im_start_end, template=template)
    for split, path in written.items():
        print(f"{split:<11} {path}")
    image_dir = find_layout(root).image_dir
    print(f"image folder (LLaVA --image_folder, LLaMA-Factory media_dir): {image_dir}")
    if args.mm_use_im_start_end:
        print(f"{DATASET_INFO}: no entries for these files (LLaMA-Factory wants a bare <image>; "
              "export without --mm_use_im_start_end)")
    elif info is not None:
        names = ", ".join(entry_name(split) for split in written)
        named = f"template {template}" if template else f"no LLaMA-Factory template writes {family.title}'s format"
        print(f"{DATASET_INFO} {info} (LLaMA-Factory: dataset_dir {out.resolve()}, media_dir {image_dir}, "
              f"dataset {names}, {named})")
    return 0
