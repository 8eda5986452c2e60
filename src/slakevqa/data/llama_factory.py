"""LLaMA-Factory's ``dataset_info.json`` beside the SFT export, so its ``dataset_dir`` can be that folder.

LLaMA-Factory reads one entry per dataset name from ``<dataset_dir>/dataset_info.json``
(schema: its ``data/README.md``; reader: ``src/llamafactory/data/parser.py``, ``DatasetAttr``;
records: ``converter.py``, ``SharegptDatasetConverter``). Ours describe the LLaVA records
of :mod:`slakevqa.data.sft`, one entry per exported split::

    "slake_train": {"file_name": "slake_train_llava_sft.json", "formatting": "sharegpt",
                    "columns": {"messages": "conversations", "images": "image"},
                    "tags": {"role_tag": "from", "content_tag": "value",
                             "user_tag": "human", "assistant_tag": "gpt"}}

``image`` holds one path; LLaMA-Factory's converter wraps a lone path in a list and joins it
to ``media_dir`` (default: ``dataset_dir``) when that file exists. Our paths are relative to
SLAKE's image folder, so train with ``dataset_dir: OUT``, ``media_dir: <the image folder
convert-sft prints>`` and ``dataset: slake_train``. Each user turn starts with one bare
``<image>``, LLaMA-Factory's default image placeholder; its multimodal plugin checks that a
conversation holds as many placeholders as images. ``--mm_use_im_start_end`` exports wrap the
placeholder in LLaVA's own tokens, which LLaMA-Factory would read as text, so they get no entry.
"""

from __future__ import annotations

import json
from pathlib import Path

from slakevqa.errors import DataError
from slakevqa.files import write_json_atomic

DATASET_INFO = "dataset_info.json"

# The keys and roles sft_record writes (tests/test_sft_llama_factory.py checks every record against them).
COLUMNS = {"messages": "conversations", "images": "image"}
TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}


def entry_name(split: str) -> str:
    """The name to pass as LLaMA-Factory's ``dataset:`` for one exported split.

    >>> entry_name("validation")
    'slake_validation'
    """
    return f"slake_{split}"


def sharegpt_entry(file_name: str, template: str | None = None) -> dict:
    """The ``dataset_info.json`` entry for one exported file (a name inside ``dataset_dir``).

    ``template``: LLaMA-Factory's chat template for the model family the export is meant for (its
    ``template:`` training argument); recorded as ``slakevqa_template``, a key LLaMA-Factory's
    ``DatasetAttr`` does not read, so the entry stays valid for it."""
    entry = {"file_name": file_name, "formatting": "sharegpt", "columns": dict(COLUMNS), "tags": dict(TAGS)}
    return {**entry, "slakevqa_template": template} if template else entry


def read_dataset_info(folder: str | Path) -> dict:
    """The entries of ``folder/dataset_info.json``; ``{}`` when there is none.

    A file that is not a JSON object raises a one-line DataError naming it: merging into
    it would destroy what it holds. Call this before writing anything, so a refusal costs nothing.
    """
    path = Path(folder) / DATASET_INFO
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read the file ({error})") from None
    except json.JSONDecodeError as error:
        raise DataError(path, f"not valid JSON ({error.msg} at line {error.lineno}); fix or remove it, "
                              "convert-sft adds its entries to it") from None
    if not isinstance(info, dict):
        raise DataError(path, f"a JSON {type(info).__name__}, not an object of dataset entries; "
                              "fix or remove it, convert-sft adds its entries to it")
    return info


def update_dataset_info(folder: str | Path, written: dict[str, Path], describe: bool = True,
                        template: str | None = None) -> Path | None:
    """Merge entries for the ``written`` split files into ``folder/dataset_info.json``; returns its path.

    Other entries are kept as they are; ours (``slake_<split>``) are replaced. With
    ``describe`` off (an export LLaMA-Factory cannot read as is), ours for these splits are
    removed instead, so no stale entry points at the new files; None when no file is left to write.
    """
    path = Path(folder) / DATASET_INFO
    info = read_dataset_info(folder)
    ours = {entry_name(split): sharegpt_entry(Path(file).name, template) for split, file in written.items()}
    merged = {**info, **ours} if describe else {k: v for k, v in info.items() if k not in ours}
    if merged == info and (path.exists() or not merged):
        return path if path.exists() else None
    return write_json_atomic(path, merged)
