"""Checkpoints that resume exactly, through accelerate's ``save_state`` / ``load_state``.

One layout for one process, DDP and FSDP, ``OUTPUT_DIR/checkpoint-{step}/``::

    trainable.safetensors     one process / DDP: every parameter with requires_grad, by name (LoRA,
                              projector, ...); the frozen rest is the model the run starts from
    pytorch_model_fsdp_0/     FSDP: the whole model, one shard per process (fsdp_state_dict_type
                              SHARDED_STATE_DICT; pytorch_model_fsdp.bin, gathered, with FULL_STATE_DICT)
    optimizer.bin             AdamW state (FSDP sharded: optimizer_0/)
    scheduler.bin             the learning-rate schedule's position (transformers.get_scheduler's LambdaLR)
    scaler.pt                 the fp16 loss scaler, when there is one
    random_states_{rank}.pkl  each process's python / numpy / torch / CUDA generators
    trainer_state.json        Hugging Face's TrainerState: global_step, max_steps, log_history, ...

All but the first and the last are accelerate's own files. The data position is ``global_step``:
the data order is a pure function of (seed, step) (:mod:`slakevqa.training.schedule`).
Every process writes into ``.checkpoint-{step}.tmp``; when all have finished, the main process
adds ``trainer_state.json``, syncs the files and renames the folder: a ``checkpoint-N`` folder is
always whole, and a run killed mid-write leaves only a temp folder, which the next save removes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Callable

from slakevqa.errors import UserError
from slakevqa.files import sync_files

_NAME = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE_NAME, TRAINABLE_NAME = "trainer_state.json", "trainable.safetensors"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()
             and (p / TRAINER_STATE_NAME).is_file()]
    return [path for _, path in sorted(found)]


def resume_wanted(spec: str) -> bool:
    """Whether ``--resume_from_checkpoint SPEC`` may resume at all (``none``, ``no``, ``false``, empty: never)."""
    return spec not in ("", "none", "no", "false")


def resolve_resume(spec: str, output_dir: str | Path) -> Path | None:
    """``auto`` -> the last checkpoint (or None), ``none`` -> None, else that folder."""
    if not resume_wanted(spec):
        return None
    if spec == "auto":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(spec)
    if not (path / TRAINER_STATE_NAME).is_file():
        raise UserError(f"{path}: not a slakevqa checkpoint (no {TRAINER_STATE_NAME})")
    return path


def check_checkpoint(path: Path, fsdp: bool) -> None:
    """Refuse, in one line, a checkpoint this run cannot resume (before accelerate half-loads it).

    Another number of processes is no reason (``training/elastic.py``): DDP's state is whole on every
    process, FSDP's is resharded by torch's distributed checkpoint.
    """
    if (path / "rng.pt").is_file():
        raise UserError(f"{path}: a checkpoint of an older slakevqa (its own single-file format), which this "
                        "version cannot resume; pass --resume_from_checkpoint none, or --overwrite")
    if not any(path.glob("random_states_*.pkl")):
        raise UserError(f"{path}: no random_states_*.pkl (every process writes one); not a whole slakevqa checkpoint")
    sharded = any(path.glob("pytorch_model_fsdp*"))
    if fsdp != sharded:
        raise UserError(f"{path}: written {'under' if sharded else 'without'} FSDP, resumed "
                        f"{'under' if fsdp else 'without'} it; resume it with the accelerate config that wrote it")
    if not fsdp and not (path / TRAINABLE_NAME).is_file():
        raise UserError(f"{path}: no {TRAINABLE_NAME}; not a slakevqa checkpoint")


def rng_state() -> dict:
    """Every generator a checkpoint restores (python, numpy, torch, CUDA), for :func:`set_rng_state`.

    Training's held-out diagnostics run between steps inside such a snapshot, so a run
    with them draws the same dropout masks as one without (``probe.held_out_mode``).
    """
    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, path: Path) -> None:
    """Copy ``trainable.safetensors`` into ``model``'s trainable parameters, refusing any other set of names."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(path / TRAINABLE_NAME))
    params = dict(model.named_parameters())
    expected = {name for name, p in params.items() if p.requires_grad}
    if set(saved) != expected:
        missing, extra = sorted(expected - set(saved))[:3], sorted(set(saved) - expected)[:3]
        raise UserError(f"{path}: checkpoint does not match this run's trainable parameters "
                        f"(missing {missing}, unexpected {extra}); were the LoRA/freeze flags changed?")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)


def register_checkpoint_hooks(accelerator) -> None:
    """Checkpoints keep the trainable parameters only (one process / DDP).

    ``save_state`` would copy the whole model, frozen base included (~15 GB at 7B), into
    every checkpoint. Under FSDP accelerate saves and loads the sharded model itself
    (the hooks then see no model): each process holds only its shard.
    """
    def save(models: list, weights: list, folder: str) -> None:
        if not weights:  # FSDP: written by accelerate
            return
        from safetensors.torch import save_file

        if accelerator.is_main_process:
            save_file(trainable_state(accelerator.unwrap_model(models[0])), os.path.join(folder, TRAINABLE_NAME))
        weights.clear()

    def load(models: list, folder: str) -> None:
        for model in models:
            load_trainable(accelerator.unwrap_model(model), Path(folder))
        models.clear()

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def save_checkpoint(accelerator, output_dir: str | Path, step: int, write_state: Callable[[Path], None],
                    keep: int = 2) -> Path:
    """Write ``checkpoint-{step}`` with every process (a collective), atomically; keep the newest ``keep``.

    ``write_state(folder)`` writes ``trainer_state.json`` on the main process.
    """
    output_dir = Path(output_dir)
    final, temp = output_dir / f"checkpoint-{step}", output_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        for stale in output_dir.glob(".checkpoint-*.tmp"):  # left by a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
        temp.mkdir(parents=True)
    accelerator.wait_for_everyone()  # the folder exists for every process
    accelerator.save_state(str(temp))
    accelerator.wait_for_everyone()  # every process's files are written
    if accelerator.is_main_process:
        write_state(temp)
        sync_files(temp)
        shutil.rmtree(final, ignore_errors=True)
        temp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> dict:
    """Restore what :func:`save_checkpoint` wrote (every process); returns the trainer state."""
    from slakevqa.distributed import is_fsdp

    check_checkpoint(path, is_fsdp(accelerator))
    accelerator.load_state(str(path))
    return read_trainer_state(path)


def write_trainer_state(folder: Path, global_step: int, max_steps: int, log_history: list[dict], **fields) -> None:
    """``trainer_state.json`` as Hugging Face's Trainer writes it (``transformers.TrainerState``).

    ``log_history`` holds one entry per optimiser step, e.g.
    ``{"step": 3, "epoch": 0.06, "loss": 2.31, "learning_rate": 1e-05, "grad_norm": 0.8}``;
    ``fields``: other TrainerState fields (``save_steps``, ``train_batch_size``, ...).
    """
    from transformers.trainer_callback import TrainerState

    epoch = log_history[-1].get("epoch", 0.0) if log_history else 0.0
    TrainerState(epoch=epoch, global_step=global_step, max_steps=max_steps, log_history=list(log_history),
                 **fields).save_to_json(str(folder / TRAINER_STATE_NAME))


def read_trainer_state(path: Path) -> dict:
    """``global_step`` and ``log_history`` (and the rest) of a checkpoint's ``trainer_state.json``."""
    state = json.loads((path / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    if not isinstance(state.get("global_step"), int) or not isinstance(state.get("log_history"), list):
        raise UserError(f"{path / TRAINER_STATE_NAME}: no global_step / log_history; not a slakevqa checkpoint")
    return state


