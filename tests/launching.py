"""Launching `slakevqa` as a user does (a subprocess; under `accelerate launch` or `torchrun` for several
processes), with a timeout that kills the whole process group: shared by the multi-process tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DDP_CPU = REPO / "configs" / "accelerate" / "ddp_cpu.yaml"
FSDP = REPO / "configs" / "accelerate" / "fsdp.yaml"
LAUNCHERS = {
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CPU), "-m"],
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"],
}
TRAIN_FLAGS = ["--max_steps", "4", "--save_steps", "2", "--lr", "5e-3", "--warmup_ratio", "0.25",
               "--lora_dropout", "0", "--seed", "3", "--no-tb", "--final_eval_split", "test"]


def launch(args: list[str], launcher: str | None = None, timeout: float = 180) -> str:
    """Run ``slakevqa ARGS`` (under ``launcher`` if given); kill its whole process group on timeout."""
    command = [*LAUNCHERS[launcher], "slakevqa", *args] if launcher else [sys.executable, "-m", "slakevqa", *args]
    returncode, output = run(command, timeout=timeout)
    assert returncode == 0, f"{command} failed:\n{output[-3000:]}"
    return output


def run(command: list[str], timeout: float = 180, **env: str) -> tuple[int, str]:
    """``command``'s exit status and output; on timeout its whole process group is killed and the test fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), **env}
    # A new session, so a hung worker can be killed with its launcher and no other process.
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{command} timed out:\n{output[-3000:]}")
    return process.returncode, output


def losses(out: Path, step: int = 4) -> list[list[float]]:
    history = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())["log_history"]
    return [[entry["step"], entry["loss"]] for entry in history]
