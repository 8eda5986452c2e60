"""Two CPU processes (DDP over gloo) train and evaluate like one process: the same command, launched.

Training. ``micro_batch_indices`` gives process ``r`` of ``w`` the slice
``[r*B, (r+1)*B)`` of each chunk of ``w*B`` examples, so 2 processes with
``--batch_size 2`` see exactly the rows of 1 process with ``--batch_size 4``, and
the step count (``total_steps`` divides by the world size) is the same. Each
process's loss is a token mean over its own rows and DDP averages gradients, so
``slakevqa.distributed.global_token_mean`` reweights by token counts: the
gradient and the logged loss are then those of the token mean over all 4 rows.
What still differs is floating-point order (each rank pads its 2 rows to its own
longest, sums in another order), so losses agree to 1e-5 and, after Adam
(which divides by sqrt(v) and so magnifies tiny differences in tiny gradients),
adapter weights to 1e-3. LoRA dropout is 0: a dropout mask drawn for 4 rows is
not the two masks drawn for 2 rows each.

Evaluation. Process ``r`` answers questions ``r, r+2, ...``; the main process
merges the shards in qid order. Predictions, routes, candidates and every
metric equal the single-process run; candidate log-probabilities agree to 1e-5
(batches are made of other questions, so padding and summation order differ).
"""

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
LAUNCHERS = {
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CPU), "-m"],
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"],
}
TRAIN_FLAGS = ["--max_steps", "4", "--save_steps", "2", "--lr", "5e-3", "--warmup_ratio", "0.25",
               "--lora_dropout", "0", "--seed", "3", "--no-tb", "--final_eval_split", "test"]


def launch(args: list[str], launcher: str | None = None, timeout: float = 180) -> str:
    """Run ``slakevqa ARGS`` (under ``launcher`` if given); kill its whole process group on timeout."""
    command = [*LAUNCHERS[launcher], "slakevqa", *args] if launcher else [sys.executable, "-m", "slakevqa", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    # A new session, so a hung worker can be killed with its launcher and no other process.
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{command} timed out:\n{output[-3000:]}")
    assert process.returncode == 0, f"{command} failed:\n{output[-3000:]}"
    return output


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "model"
    launch(["init-tiny", str(folder), "--tokenizer", "bpe"])
    return folder


@pytest.fixture(scope="module")
def single_run(tiny_dir: Path, synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, batch 4: the reference for training, and the model the evaluations answer with."""
    out = tmp_path_factory.mktemp("single") / "run"
    launch(["train", "--model_id", str(tiny_dir), "--slake_root", str(synth_root), "--output_dir", str(out),
            "--batch_size", "4", "--no_final_eval", *TRAIN_FLAGS])
    return out


def losses(out: Path) -> list[list[float]]:
    return json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["losses"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_ddp_training_equals_single_process_with_the_whole_batch(single_run: Path, tiny_dir: Path,
                                                                  synth_root: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "ddp"
    launch(["train", "--model_id", str(tiny_dir), "--slake_root", str(synth_root), "--output_dir", str(out),
            "--batch_size", "2", *TRAIN_FLAGS], launcher="accelerate")

    # written once, by the main process: one adapter, the two checkpoints, no temp folders
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2", "checkpoint-4"]
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "run_config.json").read_text())["world_size"] == 2

    ddp, single = losses(out), losses(single_run)
    assert [s for s, _ in ddp] == [1, 2, 3, 4]
    for (step, got), (_, expected) in zip(ddp, single):
        assert abs(got - expected) <= 1e-5, f"step {step}: 2x2 rows {got} vs 1x4 rows {expected}"
    ours, reference = load_file(out / "adapter_model.safetensors"), load_file(single_run / "adapter_model.safetensors")
    assert ours.keys() == reference.keys()
    assert max((ours[k] - reference[k]).abs().max().item() for k in ours) <= 1e-3

    # the final evaluation ran sharded over the same two processes and was merged in qid order
    evaluated = out / "eval_test"
    rows = read_jsonl(evaluated / "predictions.jsonl")
    test_qids = sorted(r["qid"] for r in json.loads((synth_root / "test.json").read_text()) if r["q_lang"] == "en")
    assert [r["qid"] for r in rows] == test_qids
    assert not list(evaluated.glob("predictions.rank*.jsonl"))
    assert json.loads((evaluated / "results.json").read_text())["provenance"]["world_size"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_ddp_evaluation_equals_single_process(single_run: Path, synth_root: Path, tmp_path: Path,
                                              launcher: str) -> None:
    common = ["eval", "--model_id_or_ckpt", str(single_run), "--slake_root", str(synth_root), "--split", "test",
              "--batch_size", "8"]
    launch([*common, "--output_dir", str(tmp_path / "one")])
    launch([*common, "--output_dir", str(tmp_path / "two")], launcher=launcher)

    one, two = read_jsonl(tmp_path / "one" / "predictions.jsonl"), read_jsonl(tmp_path / "two" / "predictions.jsonl")
    assert [r["qid"] for r in two] == [r["qid"] for r in one] == sorted(r["qid"] for r in one)
    numeric = {"scores", "margin"}
    for a, b in zip(one, two):
        assert {k: v for k, v in a.items() if k not in numeric} == {k: v for k, v in b.items() if k not in numeric}
        assert max((abs(x - y) for x, y in zip(a["scores"], b["scores"])), default=0.0) <= 1e-5, a["qid"]
    assert not list((tmp_path / "two").glob("predictions.rank*.jsonl"))

    first, second = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert second["provenance"]["world_size"] == 2
    for key in ("metrics", "slices", "scorers", "counts"):
        assert first[key] == second[key], key
