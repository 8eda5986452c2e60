"""Export SLAKE as LLaVA conversation records (the format LLaVA/LLaVA-Med training scripts read).

One file per split, ``slake_{split}_llava_sft.json``, a JSON array of::

    {"id": 0,
     "image": "xmlab1/source.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat modality is used to take this image?"},
                       {"from": "gpt", "value": "MRI"}],
     "answer_type": "OPEN", "q_lang": "en", "content_type": "Modality", "modality": "MRI"}

``image`` is relative to the dataset's image folder: pass that folder as LLaVA's
``--image_folder`` (an image stored elsewhere in the dataset folder gets a path that
climbs out of it with ``..``, which LLaVA and LLaMA-Factory join the same way). ``answer_type`` is what LLaVA-Med's own evaluation reads from
its ground-truth file; the other extra keys are ignored by LLaVA's loader.
With ``mm_use_im_start_end`` the image token is wrapped as ``<im_start><image><im_end>``
(LLaVA-Med v1.5 keeps it off).

``slakevqa convert-sft`` also describes these files for LLaMA-Factory in a ``dataset_info.json``
beside them (:mod:`slakevqa.data.llama_factory`, which names the keys and roles written here).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from slakevqa.data.slake import SPLITS, drop_empty_answers, find_layout, load_split
from slakevqa.errors import DataError
from slakevqa.files import write_json_atomic
from slakevqa.records import VQASample

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"


def image_placeholder(mm_use_im_start_end: bool = False) -> str:
    return f"<im_start>{IMAGE_TOKEN}<im_end>" if mm_use_im_start_end else IMAGE_TOKEN


def image_field(sample: VQASample, image_dir: Path, root: Path | None = None, source: str | Path = "") -> str:
    """``sample``'s image as a path relative to ``image_dir``; one elsewhere inside ``root`` climbs out with ``..``.

    An image outside ``root`` (the loader refuses those; a caller's own sample may not be) is a
    DataError naming ``source``, the record and the field.

    >>> from types import SimpleNamespace as S
    >>> image_field(S(image_path=Path("/d/Slake1.0/imgs/xmlab1/source.jpg")), Path("/d/Slake1.0/imgs"))
    'xmlab1/source.jpg'
    >>> image_field(S(image_path=Path("/d/Slake1.0/top.jpg")), Path("/d/Slake1.0/imgs"), Path("/d/Slake1.0"))
    '../top.jpg'
    """
    if sample.image_path.is_relative_to(image_dir):
        return sample.image_path.relative_to(image_dir).as_posix()
    if root is not None and sample.image_path.is_relative_to(root):
        return Path(os.path.relpath(sample.image_path, image_dir)).as_posix()
    raise DataError(source or image_dir, f"image {sample.image_path} lies outside the dataset folder "
                    f"{root or image_dir}", record=f"qid {sample.qid}", field="img_name")


def sft_record(sample: VQASample, image_dir: Path, mm_use_im_start_end: bool = False, root: Path | None = None,
               source: str | Path = "") -> dict:
    """One LLaVA conversation record for ``sample`` (image path relative to ``image_dir``: :func:`image_field`)."""
    return {
        "id": sample.qid,
        "image": image_field(sample, image_dir, root, source),
        "conversations": [
            {"from": "human", "value": f"{image_placeholder(mm_use_im_start_end)}\n{sample.question}"},
            {"from": "gpt", "value": sample.answer},
        ],
        "answer_type": sample.answer_type,
        "q_lang": sample.q_lang,
        "content_type": sample.content_type,
        "modality": sample.modality,
    }


def export_sft(root: str | Path, output_dir: str | Path, language: str = "en",
               splits: tuple[str, ...] = SPLITS, mm_use_im_start_end: bool = False,
               missing_images: str = "error") -> dict[str, Path]:
    """Write ``slake_{split}_llava_sft.json`` for each split; returns the written paths.

    Records with an empty answer (SLAKE train qid 1622) are dropped with a logged count:
    an empty target teaches nothing. ``missing_images`` is :func:`load_split`'s policy.
    """
    layout = find_layout(root)
    written = {}
    for split in splits:
        samples = drop_empty_answers(load_split(layout.root, split, language, missing_images))
        source = layout.split_file(split)
        records = [sft_record(s, layout.image_dir, mm_use_im_start_end, layout.root, source) for s in samples]
        written[split] = write_json_atomic(Path(output_dir) / f"slake_{split}_llava_sft.json", records)
        log.info("wrote %d %s records to %s", len(records), split, written[split])
    return written
