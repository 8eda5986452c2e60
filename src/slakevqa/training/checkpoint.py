"""Checkpoints that resume exactly: trainable weights, optimiser, scheduler, RNG and the step.

Layout of ``OUTPUT_DIR/checkpoint-{step}/``::

    trainable.safetensors   every parameter with requires_grad (LoRA, projector copy, ...), by name
    optimizer.pt            AdamW state        scheduler.pt   LambdaLR state
    rng.pt                  torch / CUDA / python / numpy generator states
    trainer_state.json      {"step": 40, "total_steps": 120, "losses": [[1, 2.31], ...]}

A checkpoint is written into ``.checkpoint-{step}.tmp`` and renamed when
complete, so the newest *complete* checkpoint is always the one resumed; a run
killed mid-write leaves only a temp folder, which the next save removes.
The data order is a pure function of (seed, step), so it needs no state.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

from slakevqa.errors import UserError

_NAME = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()
             and (p / "trainer_state.json").is_file()]
    return [path for _, path in sorted(found)]


def resolve_resume(spec: str, output_dir: str | Path) -> Path | None:
    """``auto`` -> the last checkpoint (or None), ``none`` -> None, else that folder."""
    if spec in ("", "none", "no", "false"):
        return None
    if spec == "auto":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(spec)
    if not (path / "trainer_state.json").is_file():
        raise UserError(f"{path}: not a slakevqa checkpoint (no trainer_state.json)")
    return path


def rng_state() -> dict:
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # Plain tensors, lists and numbers only, so torch.load(weights_only=True) can read it back.
    state = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(output_dir: str | Path, step: int, model, optimizer, scheduler, state: dict,
                    keep: int = 2) -> Path:
    """Write ``checkpoint-{step}`` atomically and keep only the newest ``keep`` checkpoints."""
    import torch
    from safetensors.torch import save_file

    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    temp = output_dir / f".checkpoint-{step}.tmp"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    save_file(trainable_state(model), str(temp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), temp / "optimizer.pt")
    torch.save(scheduler.state_dict(), temp / "scheduler.pt")
    torch.save(rng_state(), temp / "rng.pt")
    (temp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=1), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    temp.rename(final)
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore everything :func:`save_checkpoint` wrote; returns the trainer state."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    expected = {name for name, p in params.items() if p.requires_grad}
    if set(saved) != expected:
        missing, extra = sorted(expected - set(saved))[:3], sorted(set(saved) - expected)[:3]
        raise UserError(f"{path}: checkpoint does not match this run's trainable parameters "
                        f"(missing {missing}, unexpected {extra}); were the LoRA/freeze flags changed?")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))


# ---- the trained model's files, published whole
#
# save_trained writes into OUTPUT_DIR/.trained.partial, renames it .trained.ready when every file is
# written and synced (the commit point), then moves each file over the old one and removes the folder.
# A kill before the commit leaves the old output untouched (the partial folder is removed by the next
# save); a kill after it leaves .trained.ready, which the next training run (or save) finishes moving,
# and which evaluation refuses to load until then.
PARTIAL_NAME, READY_NAME, MANIFEST_NAME = ".trained.partial", ".trained.ready", ".files.json"
# Files of a saved model of either kind: the ones the new save lacks are removed with the old output.
MODEL_FILE_PATTERNS = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "config.json",
                       "generation_config.json", "model.safetensors", "model-*.safetensors",
                       "model.safetensors.index.json", "pytorch_model*.bin")


def start_publish(output_dir: str | Path) -> Path:
    """An empty staging folder beside the output (a stale one from a killed save is removed first)."""
    finish_publish(output_dir)
    stage = Path(output_dir) / PARTIAL_NAME
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage


def publish(stage: Path, output_dir: str | Path) -> None:
    """Commit the staged files (list, sync, rename the folder), then move them into ``output_dir``."""
    import os

    files = sorted(path.name for path in stage.iterdir())
    (stage / MANIFEST_NAME).write_text(json.dumps(files), encoding="utf-8")
    for path in stage.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    stage.rename(Path(output_dir) / READY_NAME)
    finish_publish(output_dir)


def finish_publish(output_dir: str | Path) -> None:
    """Move a committed save's files into place; idempotent, so a kill here is finished by the next call.

    Old model files the new save does not have (a full model replaced by an adapter, or the
    reverse) are removed first: left beside the new ones they would change what loads.
    """
    import os

    out = Path(output_dir)
    ready = out / READY_NAME
    if not ready.is_dir():
        return
    names = set(json.loads((ready / MANIFEST_NAME).read_text(encoding="utf-8")))
    for pattern in MODEL_FILE_PATTERNS:
        for old in out.glob(pattern):
            if old.name not in names:
                old.unlink()
    moving = [path for path in ready.iterdir() if path.name != MANIFEST_NAME]
    for path in sorted(moving, key=lambda p: (p.suffix != ".safetensors", p.name)):  # weights first
        target = out / path.name
        if path.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(path, target)
    (ready / MANIFEST_NAME).unlink()
    ready.rmdir()
