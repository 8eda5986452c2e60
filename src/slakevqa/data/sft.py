"""Export SLAKE as LLaVA conversation records (the format LLaVA/LLaVA-Med training scripts read).

One file per split, ``slake_{split}_llava_sft.json``, a JSON array of::

    {"id": 0,
     "image": "xmlab1/source.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat modality is used to take this image?"},
                       {"from": "gpt", "value": "MRI"}],
     "answer_type": "OPEN", "q_lang": "en", "content_type": "Modality", "modality": "MRI"}

``image`` is relative to the dataset's image folder: pass that folder as LLaVA's
``--image_folder``. ``answer_type`` is what LLaVA-Med's own evaluation reads from
its ground-truth file; the other extra keys are ignored by LLaVA's loader.
With ``mm_use_im_start_end`` the image token is wrapped as ``<im_start><image><im_end>``
(LLaVA-Med v1.5 keeps it off).

``slakevqa convert-sft`` also describes these files for LLaMA-Factory in a ``dataset_info.json``
beside them (:mod:`slakevqa.data.llama_factory`, which names the keys and roles written here).
"""

from __future__ import annotations

import logging
from pathlib import Path

from slakevqa.data.slake import SPLITS, drop_empty_answers, find_layout, load_split
from slakevqa.files import write_json_atomic
from slakevqa.records import VQASample

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"


def image_placeholder(mm_use_im_start_end: bool = False) -> str:
    return f"<im_start>{IMAGE_TOKEN}<im_end>" if mm_use_im_start_end else IMAGE_TOKEN


def sft_record(sample: VQASample, image_dir: Path, mm_use_im_start_end: bool = False) -> dict:
    """One LLaVA conversation record for ``sample`` (image path relative to ``image_dir``)."""
    return {
        "id": sample.qid,
        "image": sample.image_path.relative_to(image_dir).as_posix(),
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
        records = [sft_record(s, layout.image_dir, mm_use_im_start_end) for s in samples]
        written[split] = write_json_atomic(Path(output_dir) / f"slake_{split}_llava_sft.json", records)
        log.info("wrote %d %s records to %s", len(records), split, written[split])
    return written
