"""The trained model's output folder: the adapter or full model with its processor, published whole."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from slakevqa.files import write_json_atomic
from slakevqa.models.families import family_of
from slakevqa.models.model_files import publish, start_publish
from slakevqa.models.processor import save_processor


def save_trained(model, processor, out: Path, base: str = "", state_dict: dict | None = None,
                 extra: Callable[[Path], None] | None = None) -> None:
    """The adapter (peft format) under LoRA, else the full model; the processor beside it.

    Written into a staging folder beside ``out`` with ``extra(stage)`` (``run_config.json``), then
    moved into place (:func:`~slakevqa.models.model_files.publish`): a kill leaves either the old
    output or the new one, never half a model, and the old output stays until the new one is whole.

    An adapter names ``base`` (``--model_id``; an absolute path when it is a local
    folder) as its base model, so ``load_model(out)`` and ``slakevqa merge`` find it
    from anywhere; peft would otherwise record the resolved cache folder, or nothing
    for a model built in memory.
    """
    stage = start_publish(out)
    try:
        # state_dict: the gathered one under FSDP (peft keeps only the adapter's keys of it).
        model.save_pretrained(str(stage), safe_serialization=True, state_dict=state_dict)
        save_processor(processor, stage, family_of(model))
        adapter_config = stage / "adapter_config.json"
        if base and hasattr(model, "peft_config"):  # set after saving: set before, peft looks the name up on the hub
            config = json.loads(adapter_config.read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = str(Path(base).resolve()) if Path(base).is_dir() else base
            write_json_atomic(adapter_config, config)
        if extra is not None:
            extra(stage)
    except BaseException:  # a full disk, say: the staged half is never trusted, and it holds the space a rerun needs
        shutil.rmtree(stage, ignore_errors=True)
        raise
    publish(stage, out)
