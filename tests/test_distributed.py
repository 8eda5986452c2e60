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

FSDP. ``configs/accelerate/fsdp.yaml`` (FSDP2, sharded checkpoints) runs here on two
CPU processes over gloo: accelerate switches FSDP on for GPU process groups only, so
the launched script (``FSDP_CPU``) declares its gloo group a GPU one before slakevqa
starts; PyTorch's FSDP2 itself runs on CPU. A run killed with SIGKILL resumes from its
sharded checkpoint and ends with the same losses, learning rates and adapter, bit for bit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from launching import FSDP, TRAIN_FLAGS, launch, losses, run


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
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["world_size"] == 2
    # the run's own speed record counts both processes' questions (4 a step) over its 4 steps
    throughput = run_config["throughput"]
    assert (throughput["steps_timed"], throughput["samples_per_step"], throughput["world_size"]) == (4, 4, 2)
    assert throughput["steady_samples_per_second"] == pytest.approx(4 / throughput["median_step_seconds"], rel=1e-2)

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
    assert (second["timing"]["questions_answered"], second["timing"]["world_size"]) == (len(one), 2)
    assert first["timing"]["questions_answered"] == len(one) and first["timing"]["questions_per_second"] > 0
    for key in ("metrics", "slices", "scorers", "counts"):
        assert first[key] == second[key], key


# Run by `accelerate launch --config_file configs/accelerate/fsdp.yaml`: `slakevqa ARGV` with FSDP on the
# gloo group, and, when SLAKEVQA_TEST_KILL_AT=N, a SIGKILL of rank 0 at its Nth loss computation.
FSDP_CPU = """
import os, signal, sys
from accelerate import PartialState
from accelerate.utils import DistributedType

state = PartialState(cpu=True)
PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU  # accelerate: FSDP needs a GPU group
import slakevqa.training.train as T

kill_at, calls, original = int(os.environ.get("SLAKEVQA_TEST_KILL_AT", 0)), [0], T.answer_loss

def answer_loss(model, batch):
    calls[0] += 1
    if state.process_index == 0 and calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(model, batch)

T.answer_loss = answer_loss
from slakevqa.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_fsdp_run_killed_with_sigkill_resumes_exactly(tiny_dir: Path, synth_root: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    script = tmp_path / "fsdp_cpu.py"
    script.write_text(FSDP_CPU)
    # lora_dropout > 0: each process's dropout masks come from its own RNG, which must be restored too
    flags = ["--model_id", str(tiny_dir), "--slake_root", str(synth_root), "--batch_size", "2", "--max_steps", "6",
             "--save_steps", "2", "--lr", "5e-3", "--warmup_steps", "2", "--lora_dropout", "0.1", "--seed", "3",
             "--no-tb", "--no-final_eval"]
    fsdp = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP), str(script), "train"]

    def train(out: Path, kill_at: int = 0) -> tuple[int, str]:
        return run([*fsdp, *flags, "--output_dir", str(out)], timeout=300, SLAKEVQA_TEST_KILL_AT=str(kill_at))

    code, output = train(tmp_path / "a")
    assert code == 0, output[-3000:]
    assert "Saving FSDP model" in output  # the sharded path, not DDP's
    code, output = train(tmp_path / "b", kill_at=5)  # rank 0, during step 5: after checkpoint-4
    assert code != 0, output[-3000:]
    assert sorted(p.name for p in (tmp_path / "b").iterdir() if "checkpoint" in p.name) == ["checkpoint-2",
                                                                                          "checkpoint-4"]
    assert not (tmp_path / "b" / "adapter_model.safetensors").exists()
    assert {p.name for p in (tmp_path / "b" / "checkpoint-4").iterdir()} >= {
        "pytorch_model_fsdp_0", "optimizer_0", "scheduler.bin", "random_states_0.pkl", "random_states_1.pkl",
        "trainer_state.json"}

    # the resumed run also evaluates at the end: the saved model, loaded whole by both processes
    code, output = run([*fsdp, *flags[:-1], "--final_eval_split", "test", "--output_dir", str(tmp_path / "b")],
                       timeout=300, SLAKEVQA_TEST_KILL_AT="0")
    assert code == 0, output[-3000:]
    assert "at step 4 of 6" in output
    evaluated = json.loads((tmp_path / "b" / "eval_test" / "results.json").read_text())
    test_qids = sorted(r["qid"] for r in json.loads((synth_root / "test.json").read_text()) if r["q_lang"] == "en")
    assert evaluated["provenance"]["world_size"] == 2 and evaluated["counts"]["total"] == len(test_qids)
    assert [r["qid"] for r in read_jsonl(tmp_path / "b" / "eval_test" / "predictions.jsonl")] == test_qids
    reference, resumed = (json.loads((tmp_path / run / "checkpoint-6" / "trainer_state.json").read_text())
                          for run in ("a", "b"))
    assert [e["step"] for e in resumed["log_history"]] == list(range(1, 7))
    for key in ("loss", "learning_rate", "grad_norm"):
        assert [e[key] for e in resumed["log_history"]] == [e[key] for e in reference["log_history"]], key
    ours, expected = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("b", "a"))
    assert ours.keys() == expected.keys() and all((ours[k] == expected[k]).all() for k in ours)
