"""Clusters: a run stopped by the scheduler's signal resumes, on as many processes or on another number; two
nodes on one machine; the sbatch script's requeue (src/slakevqa/stopping.py, training/elastic.py, configs/slurm/).

Every run is the tiny model on the synthetic SLAKE, fp32 on CPU, LoRA dropout 0; the reference is
``single_run`` (one process, batch 4, 4 steps). A signal is sent from inside the training, by the
launched script ``SIGNALLING`` at a chosen loss computation, so the step it lands in is known.

* Same number of processes: the resumed run ends bit for bit where the uninterrupted one does.
* Another number (2 -> 1, 1 -> 2): the run keeps its global batch of 4 questions per step (batch 2 x
  accumulation 2 on one process, batch 2 on each of two); the sums run in another order, so losses agree
  to 1e-5 and adapter weights to 1e-3 (Adam divides by sqrt(v), magnifying rounding in tiny gradients),
  the tolerances of the DDP test (test_distributed.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
from pathlib import Path

import pytest

from launching import DDP_CPU, FSDP, REPO, TRAIN_FLAGS, losses, run

pytestmark = pytest.mark.slow

# `python SIGNALLING train ...`: slakevqa's CLI; rank 0 sends SLAKEVQA_TEST_SIGNAL at its
# SLAKEVQA_TEST_SIGNAL_AT-th loss computation, to itself or (SLAKEVQA_TEST_SIGNAL_TO=grandparent) to the
# sbatch script that started torchrun that started it, and goes on when the signal has reached it.
SIGNALLING = """
import os, signal, sys
import slakevqa.training.train as T

at, calls, original = int(os.environ.get("SLAKEVQA_TEST_SIGNAL_AT", 0)), [0], T.answer_loss

def target():
    if os.environ.get("SLAKEVQA_TEST_SIGNAL_TO") != "grandparent":
        return os.getpid()
    with open(f"/proc/{os.getppid()}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])

def answer_loss(model, batch):
    calls[0] += 1
    if calls[0] == at and os.environ.get("RANK", "0") == "0":
        os.kill(target(), getattr(signal, "SIG" + os.environ.get("SLAKEVQA_TEST_SIGNAL", "TERM")))
        # the tiny model would finish its steps before a signal passed on by the script and torchrun arrives
        import time
        import slakevqa.stopping as S
        deadline = time.monotonic() + 60
        while S.pending() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    return original(model, batch)

T.answer_loss = answer_loss
from slakevqa.cli import main

sys.exit(main(sys.argv[1:]))
"""


# FSDP on CPU: accelerate switches FSDP on for GPU process groups only, so the gloo group is declared one
# (as test_distributed.py's FSDP test does); PyTorch's FSDP2 itself runs on CPU.
FSDP_ON_CPU = """
from accelerate import PartialState
from accelerate.utils import DistributedType
PartialState(cpu=True)
PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
"""


@pytest.fixture(scope="module")
def signalling(tmp_path_factory: pytest.TempPathFactory) -> Path:
    script = tmp_path_factory.mktemp("scripts") / "signalling.py"
    script.write_text(SIGNALLING)
    return script


@pytest.fixture(scope="module")
def signalling_fsdp(signalling: Path) -> Path:
    script = signalling.parent / "signalling_fsdp.py"
    script.write_text(FSDP_ON_CPU + SIGNALLING)
    return script


def flags(tiny_dir: Path, synth_root: Path, out: Path, batch_size: int) -> list[str]:
    """``single_run``'s flags (tests/conftest.py) with another batch size and output folder."""
    return ["train", "--model_id", str(tiny_dir), "--slake_root", str(synth_root), "--output_dir", str(out),
            "--batch_size", str(batch_size), "--no-final_eval", *TRAIN_FLAGS]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "adapter_model.safetensors")


def assert_matches_single_run(out: Path, single_run: Path, exact: bool) -> None:
    ours, reference = losses(out), losses(single_run)
    assert [s for s, _ in ours] == [1, 2, 3, 4]
    got, expected = adapter(out), adapter(single_run)
    assert got.keys() == expected.keys()
    if exact:
        assert ours == reference
        assert all((got[k] == expected[k]).all() for k in got)
    else:
        assert all(abs(a - b) <= 1e-5 for (_, a), (_, b) in zip(ours, reference)), (ours, reference)
        assert max((got[k] - expected[k]).abs().max().item() for k in got) <= 1e-3


def stop_line(output: str) -> str:
    return [line for line in output.splitlines() if line.startswith("stopped by")][-1]


@pytest.mark.parametrize("signal_name", ["TERM", "INT"])
def test_a_stop_signal_finishes_the_step_checkpoints_and_the_rerun_ends_as_an_uninterrupted_run(
        signal_name: str, signalling: Path, tiny_dir: Path, synth_root: Path, single_run: Path,
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, str(signalling), *flags(tiny_dir, synth_root, out, 4)]
    code, output = run(command, SLAKEVQA_TEST_SIGNAL=signal_name, SLAKEVQA_TEST_SIGNAL_AT="3")
    assert code == 75, output[-3000:]  # the code the sbatch script requeues on
    # step 3 finished and was saved, though save_steps is 2; nothing after it ran
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2", "checkpoint-3"]
    assert not (out / "adapter_model.safetensors").exists()
    assert stop_line(output) == (f"stopped by SIG{signal_name}: after step 3 of 4, {out / 'checkpoint-3'} was "
                                 "written; rerun the same command to resume")
    code, output = run(command)
    assert code == 0 and "at step 3 of 4" in output, output[-3000:]
    assert_matches_single_run(out, single_run, exact=True)


def test_two_processes_stopped_by_sigusr1_resume_on_one(signalling: Path, tiny_dir: Path, synth_root: Path,
                                                         single_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(signalling)]
    # rank 0 alone gets the signal: both processes stop after the same step
    code, output = run([*two, *flags(tiny_dir, synth_root, out, 2)], SLAKEVQA_TEST_SIGNAL="USR1",
                       SLAKEVQA_TEST_SIGNAL_AT="3")
    assert code != 0 and "stopped by SIGUSR1: after step 3 of 4" in output, output[-3000:]
    assert sorted(p.name for p in (out / "checkpoint-3").glob("random_states_*")) == ["random_states_0.pkl",
                                                                                     "random_states_1.pkl"]
    # the same command on one process: batch 2 x accumulation 2 keeps the 4 questions of each step
    code, output = run([sys.executable, "-m", "slakevqa", *flags(tiny_dir, synth_root, out, 2)])
    assert code == 0, output[-3000:]
    assert "global batch of 4 questions per step is kept as --batch_size 2 x --grad_accum 2 x 1" in output
    assert "written by 2 process(es)) at step 3 of 4 on 1" in output
    assert_matches_single_run(out, single_run, exact=False)


def test_one_process_resumes_on_two_nodes_of_one_machine(signalling: Path, tiny_dir: Path, synth_root: Path,
                                                          single_run: Path, tmp_path: Path) -> None:
    """1 -> 2, and the 2 as two torchrun launchers (--nnodes 2, c10d rendezvous) talking over localhost."""
    out = tmp_path / "run"
    code, output = run([sys.executable, str(signalling), *flags(tiny_dir, synth_root, out, 4)],
                       SLAKEVQA_TEST_SIGNAL="TERM", SLAKEVQA_TEST_SIGNAL_AT="2")
    assert code == 75 and (out / "checkpoint-2").is_dir(), output[-3000:]

    port = free_port()
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "two-nodes",
            "-m", "slakevqa", *flags(tiny_dir, synth_root, out, 4)]
    (code, output), (second_code, second_output) = two_nodes(node, node)
    assert code == 0 and second_code == 0, output[-2000:] + second_output[-2000:]
    both = output + second_output
    assert "global batch of 4 questions per step is kept as --batch_size 2 x --grad_accum 1 x 2" in both
    assert json.loads((out / "run_config.json").read_text())["world_size"] == 2
    assert_matches_single_run(out, single_run, exact=False)


def test_fsdp_stopped_by_sigterm_resumes_its_sharded_checkpoint_on_one_process(
        signalling_fsdp: Path, tiny_dir: Path, synth_root: Path, single_run: Path, tmp_path: Path) -> None:
    """FSDP2 with sharded checkpoints (configs/accelerate/fsdp.yaml): torch's distributed checkpoint reshards the
    model and AdamW's state of 2 processes for 1."""
    out = tmp_path / "run"

    def fsdp(processes: int) -> list[str]:
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP), "--num_processes",
                str(processes), str(signalling_fsdp), *flags(tiny_dir, synth_root, out, 2)]

    code, output = run(fsdp(2), timeout=300, SLAKEVQA_TEST_SIGNAL="TERM", SLAKEVQA_TEST_SIGNAL_AT="3")
    assert code != 0 and "stopped by SIGTERM: after step 3 of 4" in output, output[-3000:]
    assert {p.name for p in (out / "checkpoint-3").iterdir()} >= {"pytorch_model_fsdp_0", "optimizer_0"}
    code, output = run(fsdp(1), timeout=300)
    assert code == 0, output[-3000:]
    assert "kept as --batch_size 2 x --grad_accum 2 x 1" in output and "(written by 2 process(es)) at step 3" in output
    assert_matches_single_run(out, single_run, exact=False)


def test_two_accelerate_launchers_as_two_machines_train_as_one_process(tiny_dir: Path, synth_root: Path,
                                                                      single_run: Path, tmp_path: Path) -> None:
    """The README's multi-node accelerate command, each machine one CPU process: batch 2 on each = batch 4 on one."""
    out, port = tmp_path / "run", free_port()

    def machine(rank: int) -> list[str]:
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CPU), "--num_machines",
                "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                "--num_processes", "2", "-m", "slakevqa", *flags(tiny_dir, synth_root, out, 2)]

    (code, output), (second_code, second_output) = two_nodes(machine(0), machine(1))
    assert code == 0 and second_code == 0, output[-2000:] + second_output[-2000:]
    assert json.loads((out / "run_config.json").read_text())["world_size"] == 2
    assert_matches_single_run(out, single_run, exact=False)


def two_nodes(first: list[str], second: list[str]) -> tuple[tuple[int, str], tuple[int, str]]:
    """Run two launchers at once, as two nodes would; each one's exit code and output."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    other = subprocess.Popen(second, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        result = run(first, timeout=240)
    finally:
        try:
            other_output, _ = other.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(other.pid, signal.SIGKILL)
            other_output, _ = other.communicate()
    return result, (other.returncode, other_output)


def fake_slurm(folder: Path) -> Path:
    """``srun`` that runs its command here (one node) and ``scontrol`` that records a requeue in ``requeued.txt``."""
    folder.mkdir()
    tools = {
        "srun": '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n',
        "scontrol": f'#!/usr/bin/env bash\nif [ "$1" = show ]; then echo 127.0.0.1; else echo "$@" >> '
                    f'{folder / "requeued.txt"}; fi\n',
    }
    for name, text in tools.items():
        (folder / name).write_text(text)
        (folder / name).chmod((folder / name).stat().st_mode | stat.S_IEXEC)
    return folder


def test_the_sbatch_script_passes_sigusr1_on_and_requeues_and_the_requeued_job_finishes(
        signalling: Path, tiny_dir: Path, synth_root: Path, single_run: Path, tmp_path: Path) -> None:
    slurm = fake_slurm(tmp_path / "slurm")
    out = tmp_path / "run"
    command = ["bash", str(REPO / "configs" / "slurm" / "train.sbatch"), *flags(tiny_dir, synth_root, out, 4)[1:]]
    env = {"PATH": f"{slurm}:{Path(sys.executable).parent}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLAKEVQA_GPUS_PER_NODE": "1",
           "SLAKEVQA_RDZV_PORT": str(free_port()), "SLAKEVQA_PROGRAM": str(signalling)}
    # SLURM's warning before the time limit reaches the script (the worker's grandparent), not the training
    code, output = run(command, **env, SLAKEVQA_TEST_SIGNAL="USR1", SLAKEVQA_TEST_SIGNAL_AT="3",
                       SLAKEVQA_TEST_SIGNAL_TO="grandparent")
    assert code == 0, output[-3000:]
    assert "slurm: SIGUSR1 received, passing it on" in output and "requeueing job 4242" in output, output[-3000:]
    assert (slurm / "requeued.txt").read_text() == "requeue 4242\n"
    assert (out / "checkpoint-3").is_dir() and not (out / "adapter_model.safetensors").exists()

    code, output = run(command, **{**env, "SLAKEVQA_RDZV_PORT": str(free_port())})  # the requeued job, no signal
    assert code == 0 and "at step 3 of 4" in output, output[-3000:]
    assert (slurm / "requeued.txt").read_text() == "requeue 4242\n"  # no second requeue
    assert_matches_single_run(out, single_run, exact=True)
