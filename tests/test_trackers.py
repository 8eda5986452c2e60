"""--report_to: TensorBoard gets our diagnostics; accelerate's trackers (wandb, mlflow, ...) get config and scalars."""

from __future__ import annotations

from pathlib import Path

import pytest

from slakevqa.config import make_config
from slakevqa.errors import UserError
from slakevqa.training.config import TRACKERS, TrainConfig


class FakeTracker:
    """Stands in for accelerate's WandBTracker: records what the run sends it."""

    name, requires_logging_directory = "wandb", False
    calls: list[tuple] = []

    def __init__(self, run_name: str) -> None:
        self.calls.append(("init", run_name))

    def start(self) -> None:
        self.calls.append(("start",))

    def store_init_configuration(self, config: dict) -> None:
        self.calls.append(("config", config))

    def log(self, values: dict, step: int) -> None:
        self.calls.append(("log", step, values))

    def finish(self) -> None:
        self.calls.append(("finish",))


def test_tracker_names_are_accelerates() -> None:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    assert set(TRACKERS) == set(LOGGER_TYPE_TO_CLASS)
    with pytest.raises(UserError, match="--report_to 'wandb,tensorbord': use none, or a comma list of"):
        make_config(TrainConfig, report_to="wandb,tensorbord")
    assert make_config(TrainConfig, tb=False).trackers() == []
    assert make_config(TrainConfig, report_to="tensorboard, wandb").trackers() == ["tensorboard", "wandb"]


def test_scalars_go_to_another_tracker_without_tensorboard(synth_root: Path, tmp_path: Path, tiny_model,
                                                           monkeypatch) -> None:
    import slakevqa.training.trackers as trackers
    from slakevqa.training.train import train

    monkeypatch.setattr(trackers, "tracker_classes", lambda: {"wandb": FakeTracker})
    monkeypatch.setattr(trackers, "installed_trackers", lambda: {"tensorboard", "wandb"})
    FakeTracker.calls.clear()
    cfg = make_config(TrainConfig, model_id="tiny", slake_root=synth_root, output_dir=tmp_path, max_steps=2,
                      batch_size=4, logging_steps=1, final_eval=False, eval_steps=0, tb_probe_size=0,
                      report_to="wandb")
    train(cfg, *tiny_model)
    kinds = [call[0] for call in FakeTracker.calls]
    assert kinds[:3] == ["init", "start", "config"] and kinds[-1] == "finish"
    assert FakeTracker.calls[0][1] == "slakevqa" and FakeTracker.calls[2][1]["lr"] == cfg.lr
    logged = {(call[1], tag) for call in FakeTracker.calls if call[0] == "log" for tag in call[2]}
    assert {(1, "train/loss"), (2, "train/loss"), (2, "train/learning_rate")} <= logged
    assert not (tmp_path / "tb").exists()  # TensorBoard was not asked for


def test_a_missing_tracker_fails_before_the_model_loads(synth_root: Path, tmp_path: Path, monkeypatch) -> None:
    import slakevqa.training.trackers as trackers
    import slakevqa.training.train as train_module

    monkeypatch.setattr(trackers, "installed_trackers", lambda: {"tensorboard"})
    monkeypatch.setattr(train_module, "load_for_training", lambda *a: pytest.fail("the model was loaded"))
    cfg = make_config(TrainConfig, model_id="tiny", slake_root=synth_root, output_dir=tmp_path, max_steps=1,
                      report_to="tensorboard,mlflow")
    with pytest.raises(UserError, match="--report_to mlflow: not installed here; pip install mlflow"):
        train_module.train(cfg)
