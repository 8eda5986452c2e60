"""The pieces behind preemption and elastic resume, without launching anything (tests/test_cluster.py launches):
stop signals inside and outside a graceful section, a step's questions and loss weights independent of how
the step is cut, and the global batch kept on another number of processes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from slakevqa import stopping
from slakevqa.errors import UserError
from slakevqa.training.schedule import step_rows


@pytest.fixture
def handlers():
    previous = stopping.install()
    yield
    stopping.restore(previous)


def test_inside_a_graceful_section_a_stop_signal_is_recorded_and_raised_when_it_ends(handlers) -> None:
    reached = []
    with pytest.raises(stopping.Stopped) as stopped:
        with stopping.graceful():
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGTERM)  # a second one: the first is what counts
            reached.append(stopping.pending())
    assert reached == [signal.SIGUSR1] and stopped.value.name == "SIGUSR1"
    assert stopping.pending() is None
    with pytest.raises(stopping.Stopped):  # outside: at once
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM did not stop")


def test_ctrl_c_in_a_graceful_section_waits_for_the_step_a_second_one_interrupts(handlers, monkeypatch) -> None:
    monkeypatch.setattr(stopping, "REPEAT_SECONDS", 0.0)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with stopping.graceful():
            os.kill(os.getpid(), signal.SIGINT)
            assert stopping.pending() == signal.SIGINT
            os.kill(os.getpid(), signal.SIGINT)
            pytest.fail("a second Ctrl-C did not interrupt")
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("batch, accum, world", [(8, 1, 2), (4, 2, 2), (16, 1, 1), (4, 4, 1), (2, 1, 8), (8, 2, 1)])
def test_a_steps_questions_depend_on_its_global_batch_only(batch: int, accum: int, world: int) -> None:
    groups = [i // 3 for i in range(50)]  # 3 questions an image, 50 questions: steps wrap around epochs
    for step in range(7):
        slots = [step_rows(step, micro, 50, batch, accum, 5, rank, world, groups)
                 for rank in range(world) for micro in range(accum)]
        whole = step_rows(step, 0, 50, 16, 1, 5, groups=groups)  # one process, one micro-batch of all 16
        assert sorted(i for slot in slots for i in slot) == sorted(whole)
        # an image's questions of the step stay in one slot (with fewer images than slots, fixed slices instead)
        for slot in slots if len({groups[i] for i in whole}) >= len(slots) else []:
            assert all(groups[i] not in {groups[j] for other in slots if other is not slot for j in other}
                       for i in slot)


def test_each_micro_batch_weighs_its_share_of_the_steps_tokens() -> None:
    import torch

    from slakevqa.distributed import step_share

    token_losses = [torch.rand(n, dtype=torch.float64) for n in (3, 7, 1, 5)]  # 4 micro-batches' answer tokens
    total = sum(len(t) for t in token_losses)
    whole_mean = torch.cat(token_losses).mean()
    for processes in (1, 2, 4):  # DDP averages the processes' sums: the factor undoes it
        summed = sum(step_share(t.mean(), len(t), total, processes) for t in token_losses) / processes
        assert float(summed) == pytest.approx(float(whole_mean), rel=1e-12)
    alone = torch.tensor(2.5)
    assert step_share(alone, 6, 6.0, 1) is alone  # one micro-batch of one process: unchanged


def run_folder(tmp_path: Path, global_batch: int) -> Path:
    (tmp_path / "run_fingerprint.json").write_text(json.dumps(
        {"format": "slakevqa.run_fingerprint", "version": 1, "kind": "train", "values": {"global_batch_size": global_batch}}))
    return tmp_path


def test_a_resume_on_another_number_of_processes_keeps_the_recorded_global_batch(tmp_path: Path) -> None:
    from slakevqa.config import make_config
    from slakevqa.training.config import TrainConfig
    from slakevqa.training.elastic import keep_global_batch

    cfg = make_config(TrainConfig, model_id="tiny", output_dir=str(tmp_path), batch_size=16)
    out = run_folder(tmp_path, 32)  # written by 2 processes x 16
    kept = keep_global_batch(cfg, out, 1)
    assert (kept.batch_size, kept.grad_accum) == (16, 2)
    kept = keep_global_batch(cfg, out, 4)
    assert (kept.batch_size, kept.grad_accum) == (8, 1)
    assert keep_global_batch(cfg, out, 2) is cfg  # as written
    assert keep_global_batch(make_config(TrainConfig, model_id="tiny", output_dir=str(tmp_path), batch_size=16,
                                         overwrite=True), out, 1).grad_accum == 1  # a fresh start keeps the flags
    with pytest.raises(UserError, match=r"trains on 32 questions per optimiser step, which 3 processes cannot share"):
        keep_global_batch(cfg, out, 3)


def test_the_cut_of_the_global_batch_is_not_in_the_fingerprint() -> None:
    from slakevqa.training.config import NEUTRAL_FIELDS, RESULT_FIELDS

    assert {"batch_size", "grad_accum"} <= NEUTRAL_FIELDS.keys()
    assert not {"batch_size", "grad_accum"} & set(RESULT_FIELDS)  # run_folder.py records their product
