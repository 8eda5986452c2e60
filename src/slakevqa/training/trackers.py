"""``--report_to``: our TensorBoard diagnostics, and any experiment tracker accelerate knows.

TensorBoard gets every tag of :mod:`slakevqa.training.tensorboard` (text, histograms, the
probe grid). The other trackers (wandb, mlflow, trackio, comet_ml, aim, clearml, dvclive,
swanlab) get the run's config at the start and every scalar tag as it is written, through
accelerate's own tracker classes (``accelerate.tracking``); they log under the project name
``slakevqa``, the way each tracker's own settings (``WANDB_*``, ``MLFLOW_TRACKING_URI``, ...) say::

    slakevqa train --config configs/lora_single_gpu.yaml --report_to tensorboard,wandb
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from slakevqa.errors import UserError

if TYPE_CHECKING:
    from slakevqa.training.config import TrainConfig

PROJECT = "slakevqa"
PIP_NAMES = {"comet_ml": "comet-ml"}  # where the package's pip name is not the tracker's


def tracker_classes() -> dict[str, type]:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return dict(LOGGER_TYPE_TO_CLASS)


def installed_trackers() -> set[str]:
    from accelerate.tracking import get_available_trackers

    return {str(tracker) for tracker in get_available_trackers()}


def other_trackers(cfg: TrainConfig) -> list[str]:
    """The trackers of ``--report_to`` besides TensorBoard."""
    return [name for name in cfg.trackers() if name != "tensorboard"]


def check_trackers_installed(cfg: TrainConfig) -> None:
    """A one-line error before any model loads when a tracker's package is missing (accelerate would drop it silently)."""
    missing = [name for name in other_trackers(cfg) if name not in installed_trackers()]
    if missing:
        packages = " ".join(PIP_NAMES.get(name, name) for name in missing)
        raise UserError(f"--report_to {','.join(missing)}: not installed here; pip install {packages}, "
                        "or leave it out of --report_to")


def start_trackers(cfg: TrainConfig, out: Path, config: dict) -> list:
    """Started trackers of ``--report_to`` (TensorBoard aside) with ``config`` stored; call on the main process."""
    check_trackers_installed(cfg)
    trackers = []
    for name in other_trackers(cfg):
        cls = tracker_classes()[name]
        tracker = cls(PROJECT, out / "trackers") if cls.requires_logging_directory else cls(PROJECT)
        tracker.start()
        tracker.store_init_configuration(config)
        trackers.append(tracker)
    return trackers


class LogWriters:
    """One writer for the logger: TensorBoard (``tensorboard``, may be None) gets every call, ``trackers`` the scalars.

    It has the ``SummaryWriter`` methods the logger uses, so the logger writes each tag once.
    """

    def __init__(self, tensorboard, trackers: list) -> None:
        self.tensorboard, self.trackers = tensorboard, trackers

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(tag, value, step)
        for tracker in self.trackers:
            tracker.log({tag: float(value)}, step=step)

    def __getattr__(self, name: str) -> Callable:
        """``add_text``, ``add_histogram``, ``add_image``: TensorBoard only (the trackers take scalars)."""
        if not name.startswith("add_"):
            raise AttributeError(name)
        return getattr(self.tensorboard, name) if self.tensorboard is not None else (lambda *args, **kwargs: None)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        for tracker in self.trackers:
            tracker.finish()
