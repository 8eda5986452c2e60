"""What training refuses before it starts, and what stops it before anything wrong is saved.

* The output folder must lie apart from the model it trains: saving publishes ``config.json`` and weights
  into the output folder (``models.model_files.publish``), so an output that *is* the model folder
  would replace the base model with an adapter naming itself as its base. ``--overwrite`` does not
  change that: it replaces what an earlier run wrote, never the input.
* FSDP is refused what would run the sharded model on one process alone.
* A non-finite loss or gradient norm stops training at once, before the optimiser step and before any
  checkpoint; the trainable weights are checked again before each save, so nothing non-finite is ever
  published (a huge ``--lr`` turns weights into infinities in one step, and the next loss into NaN).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from slakevqa.errors import UserError
from slakevqa.files import refuse_overlap
from slakevqa.training.config import TrainConfig


def refuse_output_over_model(model_id: str, output_dir: str | Path) -> None:
    """A UserError when ``output_dir`` is, holds or lies inside ``model_id`` (or an adapter's base folder).

    >>> refuse_output_over_model("owner/hub-model", "runs/lora")   # a hub id is no folder: nothing to protect
    """
    model = Path(model_id).expanduser()
    if not model.is_dir():
        return
    refuse_overlap(Path(output_dir), model, "--output_dir", "--model_id")
    base = _adapter_base(model)
    if base is not None and base.is_dir():
        refuse_overlap(Path(output_dir), base, "--output_dir", "the base model folder of --model_id")


def check_fsdp_settings(cfg: TrainConfig) -> None:
    """Refuse what FSDP cannot do here: anything that runs the sharded model on one rank alone.

    A sharded model's forward gathers each layer's shards from every rank, so a
    forward on the main process alone (TensorBoard's eval loss and probes) waits
    forever. The final evaluation runs on the saved model, loaded whole by every rank
    (see :func:`slakevqa.training.train.train`). Checkpoints and resume work as without FSDP (accelerate's
    save_state writes each rank's shards).
    """
    if cfg.tensorboard:
        raise UserError("under FSDP pass --no-tb: TensorBoard probes run the model on the main process alone, "
                        "which waits forever for the other ranks' shards")


def _adapter_base(folder: Path) -> Path | None:
    try:
        named = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(named).expanduser() if isinstance(named, str) and named else None


def stop_on_nonfinite_step(step: int, loss: float, grad_norm, lr: float, output_dir: Path) -> None:
    """A UserError when optimiser step ``step``'s loss or gradient norm is NaN or infinite.

    Raised before the optimiser step, so the weights in memory and on disk are the last finite ones.

    >>> stop_on_nonfinite_step(3, 0.7, 1.2, 2e-4, Path("runs/new"))
    >>> stop_on_nonfinite_step(3, float("nan"), None, 10.0, Path("runs/new"))
    Traceback (most recent call last):
    slakevqa.errors.UserError: step 3: the loss is nan (learning rate 10); stopped before this step changed any weight, nothing of it was saved (no checkpoint yet); lower --lr or check the data
    """
    norm = float(grad_norm) if grad_norm is not None else 0.0
    if math.isfinite(loss) and math.isfinite(norm):
        return
    what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {norm}"
    from slakevqa.training.checkpoint import list_checkpoints

    checkpoints = list_checkpoints(output_dir)  # listed only now: a folder listing per step costs on network disks
    kept = f"the last checkpoint is {checkpoints[-1]}" if checkpoints else "no checkpoint yet"
    raise UserError(f"step {step}: {what} (learning rate {lr:g}); stopped before this step changed any weight, "
                    f"nothing of it was saved ({kept}); lower --lr or check the data")


def nonfinite_parameters(model) -> list[str]:
    """Names of trainable parameters holding NaN or infinity (this process's shards under FSDP)."""
    import torch

    def local(p):  # an FSDP shard (DTensor) is checked where it lies, without gathering it
        return p.detach().to_local() if hasattr(p, "to_local") else p.detach()

    return [name for name, p in model.named_parameters()
            if p.requires_grad and p.numel() and not bool(torch.isfinite(local(p)).all())]


def refuse_nonfinite_weights(model, step: int, accelerator=None) -> None:
    """A UserError, on every process alike, when any trainable weight is not finite: nothing is saved."""
    import torch

    bad = nonfinite_parameters(model)
    if accelerator is not None and accelerator.num_processes > 1:  # every process must stop, or the save hangs
        count = torch.tensor([len(bad)], device=accelerator.device)
        if int(accelerator.reduce(count, reduction="sum").item()) == 0:
            return
    elif not bad:
        return
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    raise UserError(f"step {step}: trainable weights are not finite ({shown or 'on another process'}); nothing was "
                    "saved; lower --lr or check the data")
