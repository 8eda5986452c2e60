"""The machinery of ``benchmarks/gpu_walkthrough.py``: run steps as processes, time them, measure GPU memory.

A step runs its commands from the work folder with its output in ``logs/<step>.log``;
:class:`Walk` records ``PASS|FAIL|SKIP  <step>  <seconds> s  <peak GPU>`` per step and
prints the log's last 30 lines when one fails (the device tool returns only the last
12,000 characters of output, so passing steps stay one line).

Peak GPU memory (:class:`GpuPeak`): ``nvidia-smi --query-gpu=index,memory.used -lms 500`` runs
beside each step and the largest value of the cards ``CUDA_VISIBLE_DEVICES`` names (all without it;
set ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so the two number cards alike) is kept. It is the whole card's used memory while
that step's processes ran (nothing else runs on the card: the driver never touches CUDA),
so it includes the CUDA context (~0.5 GiB) and PyTorch's cached-but-free blocks: what the
card must have free, an upper bound of ``torch.cuda.max_memory_allocated``. The caching
allocator keeps blocks until the process ends, so the 0.5 s interval misses little.
"-" means no nvidia-smi (CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
TAIL_LINES = 30


class StepFailed(Exception):
    """A step's check did not hold; the message is its note."""


@dataclass
class Outcome:
    step: str
    status: str  # PASS, FAIL or SKIP
    seconds: float
    peak_gpu_gib: float | None
    note: str


class GpuPeak:
    """Largest ``memory.used`` of each card that nvidia-smi reports every 0.5 s while the ``with`` block runs.

    Only the cards ``CUDA_VISIBLE_DEVICES`` names (by index) count, so two walkthroughs can share a
    2-GPU machine, one card each; ``per_gpu`` keeps each card's peak (multi-GPU benchmarks)."""

    def __init__(self) -> None:
        self.per_gpu: dict[int, float] = {}
        self.process = None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        self.visible = {int(v) for v in visible.split(",") if v.strip().isdigit()} or None

    def __enter__(self) -> GpuPeak:
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits", "-lms", "500"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            fields = [v.strip() for v in line.split(",")]
            if len(fields) != 2 or not fields[0].isdigit() or not fields[1].replace(".", "", 1).isdigit():
                continue
            index, used = int(fields[0]), float(fields[1])
            if self.visible is None or index in self.visible:
                self.per_gpu[index] = max(self.per_gpu.get(index, 0.0), used)

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            time.sleep(0.6)  # one more sample after the step's processes are gone is harmless
            self.process.terminate()
            self.process.wait()

    @property
    def peak_mib(self) -> float | None:
        return max(self.per_gpu.values()) if self.per_gpu else None

    @property
    def gib(self) -> float | None:
        return None if self.peak_mib is None else round(self.peak_mib / 1024, 1)


class Walk:
    """The work folder, the environment every step runs in, and the outcomes so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.tiny, self.work, self.keep = args.tiny, Path(args.work).resolve(), args.keep
        self.part = getattr(args, "part", "readme")
        self.steps = getattr(args, "steps", "")  # name prefixes to run (gpu_walkthrough.py --steps)
        self.family = getattr(args, "family", "")  # --part family: which model family
        self.speed_root = str(Path(args.speed_root).resolve()) if getattr(args, "speed_root", "") else ""
        self.speed_limit = getattr(args, "speed_limit", 0)
        self.out = Path(args.out or os.environ.get("OUT") or ROOT / "work_walkthrough_out").resolve()
        self.slake = str(Path(args.slake_root).resolve())
        self.deadline = time.monotonic() + args.budget
        self.logs = self.work / "logs"
        self.outcomes: list[Outcome] = []
        self.measured: dict[str, dict] = {}  # numbers steps record for the results (benchmarks/multi_gpu.py)
        self.env = subprocess_env(self.work)

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "slakevqa", *args]

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, cmd: list[str], log: Path) -> str:
        """Run ``cmd`` in the work folder, output appended to ``log``; its output, or StepFailed."""
        with log.open("a", encoding="utf-8") as handle:
            handle.write(f"$ {' '.join(cmd)}\n")
            start = handle.tell()
            handle.flush()
            try:
                rc = subprocess.run(cmd, cwd=self.work, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                                    timeout=max(self.remaining(), 1)).returncode
            except subprocess.TimeoutExpired:
                raise StepFailed(f"timed out (walkthrough budget spent): {' '.join(cmd[2:5])}") from None
        output = log.read_text(encoding="utf-8", errors="replace")[start:]
        if rc != 0:
            raise StepFailed(f"exit {rc}: {last_line(output)}")
        return output

    def step(self, name: str, needs: list[str], work: Callable[[Path], str]) -> None:
        """Run one step unless its inputs are missing or time is up; record and print its outcome."""
        missing = [n for n in needs if not (self.work / n).exists()]
        if missing or self.remaining() < 5:
            why = f"needs {', '.join(missing)}" if missing else "out of time"
            return self.record(Outcome(name, "SKIP", 0.0, None, why))
        log = self.logs / f"{name.split()[0]}.log"
        began, status, note = time.monotonic(), "PASS", ""
        with GpuPeak() as gpu:
            try:
                note = work(log) or ""
            except StepFailed as error:
                status, note = "FAIL", str(error)
            except Exception as error:  # a bug in this script must not hide the other steps
                status, note = "FAIL", f"{type(error).__name__}: {error}"
        self.record(Outcome(name, status, round(time.monotonic() - began, 1), gpu.gib, note))
        if status == "FAIL":
            print_tail(log)

    def record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        peak = "-" if outcome.peak_gpu_gib is None else f"{outcome.peak_gpu_gib:.1f} GiB"
        print(f"{outcome.status}  {outcome.step}  {outcome.seconds:.1f} s  {peak}  {outcome.note}", flush=True)


def subprocess_env(work: Path) -> dict[str, str]:
    """Absolute PYTHONPATH and tokenizer path (steps run from the work folder), a private cache, no hub."""
    env = dict(os.environ)
    paths = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *paths])
    if env.get("SLAKEVQA_MISTRAL_TOKENIZER"):
        env["SLAKEVQA_MISTRAL_TOKENIZER"] = str(Path(env["SLAKEVQA_MISTRAL_TOKENIZER"]).resolve())
    env.update(SLAKEVQA_CACHE=str(work / "cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def last_line(text: str) -> str:
    lines = [line.split("\r")[-1].strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


def print_tail(log: Path) -> None:
    """The last lines of a failed step's log (progress-bar redraws collapsed)."""
    if not log.is_file():
        return
    lines = [line.split("\r")[-1] for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    print(f"    --- last {TAIL_LINES} lines of {log.name} ---")
    for line in lines[-TAIL_LINES:]:
        print(f"    | {line[:300]}")
    sys.stdout.flush()



def environment(walk: Walk) -> dict:
    """Versions and card, without importing torch here (the driver stays off the GPU)."""
    env = {"mode": "tiny (CPU)" if walk.tiny else "7B shape, random bf16 weights",
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": sys.version.split()[0]}
    for package in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            env[package] = version(package)
        except Exception:  # not installed (bitsandbytes on CPU)
            env[package] = "-"
    if shutil.which("nvidia-smi"):
        env["card"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                     capture_output=True, text=True).stdout.strip()
    return env


def table(outcomes: list[Outcome]) -> str:
    rows = ["| step | result | seconds | peak GPU GiB | note |", "| --- | --- | ---: | ---: | --- |"]
    for o in outcomes:
        peak = "-" if o.peak_gpu_gib is None else f"{o.peak_gpu_gib:.1f}"
        rows.append(f"| {o.step} | {o.status} | {o.seconds:.1f} | {peak} | {o.note.replace('|', '/')} |")
    return "\n".join(rows)


def write_results(walk: Walk, env: dict, total: float) -> None:
    """walkthrough.md, walkthrough.json and logs.tar.gz in the output folder (3 small files)."""
    walk.out.mkdir(parents=True, exist_ok=True)
    head = "\n".join(f"- {k}: {v}" for k, v in env.items())
    text = (f"# GPU walkthrough ({env['mode']})\n\n{head}\n- total: {total:.0f} s\n\n{table(walk.outcomes)}\n\n"
            "Peak GPU: largest nvidia-smi memory.used (whole card, 0.5 s samples) while the step ran.\n")
    (walk.out / "walkthrough.md").write_text(text, encoding="utf-8")
    data = {"environment": env, "total_seconds": round(total, 1), "steps": [asdict(o) for o in walk.outcomes]}
    (walk.out / "walkthrough.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    with tarfile.open(walk.out / "logs.tar.gz", "w:gz") as tar:
        tar.add(walk.logs, arcname="logs")

