"""``run_config.json``: what a training run was, written beside its saved model."""

from __future__ import annotations

from pathlib import Path

from slakevqa.config import config_to_dict
from slakevqa.data.slake import find_layout
from slakevqa.files import write_json_atomic
from slakevqa.inputs.builder import InputBuilder
from slakevqa.training.config import TrainConfig


def write_run_config(cfg: TrainConfig, out: Path, n_steps: int, losses: list, counts: dict,
                     builder: InputBuilder, accelerator, precision: dict[str, str], throughput: dict,
                     speed: dict | None = None, family: str = "") -> None:
    """``run_config.json``: provenance, precision layout, losses, counts, throughput and the speed levers applied.

    ``speed`` is what ``--kernels``/``--compile_layers`` resolved to (training/speed_levers.py), e.g.
    ``{"kernels": "liger", "liger_version": "0.8.5", "compile_layers": true}``; ``family`` the model family's
    registry name (``slakevqa.models.families``).
    """
    from slakevqa.runs.results import make_provenance

    provenance = make_provenance(config=config_to_dict(cfg), prompt_version=builder.style.tag,
                                 split_file=find_layout(builder.layout.root).split_file(cfg.split),
                                 route_source=builder.route_source, batch_size=cfg.batch_size,
                                 device=str(accelerator.device))
    write_json_atomic(out / "run_config.json", {
        **provenance, "model_family": family or None, "world_size": accelerator.num_processes, "steps": n_steps, "precision": precision,
        "final_loss": losses[-1][1] if losses else None, "parameters": counts,
        "closed_vocab": {"file": "closed_vocab.json", "version": builder.vocab.version,
                         "answers": len(builder.vocab.answers)},
        "mask_stats": builder.mask_stats.as_dict(), "throughput": throughput, "speed_levers": speed})
