"""A training run's output folder: its fingerprint, claimed before the model loads, and what ``--overwrite`` clears.

A rerun resumes only into a folder whose recorded fingerprint (model weights, data, prompt version,
closed vocabulary, schedule and data-order versions, the global batch and the answer-changing flags)
matches its own (:mod:`slakevqa.runs.fingerprint`); anything else is refused with what differs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from slakevqa.inputs.builder import InputBuilder
from slakevqa.models.model_files import MODEL_FILE_PATTERNS, finish_publish
from slakevqa.runs.results import sha256_file
from slakevqa.training.checkpoint import list_checkpoints
from slakevqa.training.config import TrainConfig
from slakevqa.training.schedule import DATA_ORDER_VERSION, SCHEDULE_VERSION


def claim_train_folder(cfg: TrainConfig, out: Path, split_file: Path, builder: InputBuilder, accelerator) -> None:
    """Record this run's fingerprint in ``out``, or refuse a folder that holds another run's checkpoints/model.

    An interrupted save is finished first (its files are whole: see ``models.model_files.publish``).
    """
    from slakevqa.runs.fingerprint import claim_folder, config_values, make_fingerprint, model_values, vocab_sha256
    from slakevqa.training.config import RESULT_FIELDS

    if accelerator.is_main_process:
        finish_publish(out)
    values = {**model_values(cfg.model_id), "split_file": split_file.name, "split_sha256": sha256_file(split_file),
              "prompt_version": builder.style.tag, "closed_vocab_sha256": vocab_sha256(builder.vocab.answers),
              "schedule_version": SCHEDULE_VERSION,  # the learning rate at each step
              "data_order_version": DATA_ORDER_VERSION,  # which questions make each step
              # how many: the step's mathematics; how they are cut into micro-batches and processes is not (elastic.py)
              "global_batch_size": cfg.batch_size * cfg.grad_accum * accelerator.num_processes,
              **config_values(cfg, RESULT_FIELDS)}
    claim_folder(out, make_fingerprint("train", values), lambda: has_train_results(out),
                 lambda: clear_train_outputs(cfg, out), overwrite=cfg.overwrite, write=accelerator.is_main_process)
    accelerator.wait_for_everyone()  # nobody looks for a checkpoint before the main process cleared them


def has_train_results(out: Path) -> bool:
    """Checkpoints or a saved model: what a rerun would continue from or replace."""
    saved = any(any(out.glob(pattern)) for pattern in MODEL_FILE_PATTERNS)
    return bool(list_checkpoints(out)) or saved or (out / "run_config.json").is_file()


def clear_train_outputs(cfg: TrainConfig, out: Path) -> None:
    """``--overwrite``: our checkpoints (``checkpoint-<step>``) and the TensorBoard logs go; the saved model is
    replaced when the new one is whole, and evaluation folders keep their own fingerprints. Nothing else in the
    folder is touched (a ``checkpoint-best`` of the user's stays)."""
    import re

    ours = re.compile(r"\.?checkpoint-\d+(\.tmp)?")  # finished, or left by a killed save
    for folder in [p for p in out.iterdir() if ours.fullmatch(p.name) and p.is_dir()]:
        shutil.rmtree(folder, ignore_errors=True)
    if cfg.tb_logdir is None:
        shutil.rmtree(out / "tb", ignore_errors=True)
