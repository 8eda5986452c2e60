"""Several GPUs at the LLaVA-Med-7B shape (issue 17): DDP LoRA scaling with packed batches, sharded
evaluation, FSDP full fine-tuning with checkpoint + resume. Every run is ``slakevqa`` itself under
``accelerate launch`` with the shipped configs, as the README's multi-GPU lines type it.

    # GPU box with N GPUs (bench_data/ from prepare_bench_data.py --splits test, carried):
    CUDA_DEVICE_ORDER=PCI_BUS_ID SLAKEVQA_MISTRAL_TOKENIZER=bench_data/tokenizer.model PYTHONPATH=src \\
        python benchmarks/multi_gpu.py --slake_root bench_data/Slake1.0
    # CPU rehearsal (tiny model, gloo; FSDP is GPU-only in accelerate, so its steps run under ddp_cpu.yaml):
    PYTHONPATH=src python benchmarks/multi_gpu.py --tiny --slake_root DIR --gpus 1,2
    # CPU only: what packing loses when a batch's images straddle ranks (real SLAKE train split)
    PYTHONPATH=src python benchmarks/multi_gpu.py --straddle --slake_root ../shared/slake/Slake1.0

Data: the English test split's 1,061 questions on 96 images stand in for the training split (the
450 training images do not fit the device tool's 64 MiB carry); each image has ~11 questions
either way, which is what packing depends on. The staged folder uses them as train, validation
and test split files.

Steps (each a row ``PASS|FAIL|SKIP step seconds peak-GPU note``, budgeted like the walkthrough):

* ``ddp_lora_<n>gpu``: ``configs/lora_single_gpu.yaml`` (batch 64 questions per GPU, packed,
  gradient checkpointing, LoRA r=64 all-linear), ``--max_steps 12``; samples/s is the run's own
  ``run_config.json`` ``throughput.steady_samples_per_second`` (median step without the first,
  all processes), memory its per-process ``torch.cuda.max_memory_allocated``.
* ``eval_<n>gpu``: ``slakevqa eval`` of the 1-GPU adapter on the 1,061 test questions,
  ``results.json`` ``timing.questions_per_second`` (answering only, model loading excluded).
* ``fsdp_full_<n>gpu`` then (last) ``fsdp_resume``: ``configs/accelerate/fsdp.yaml``, ``--no-use_lora``,
  2 steps with a sharded checkpoint at step 2, then the same command with ``--max_steps 3`` must
  resume from it and end with the final evaluation; samples/s and memory per GPU as above.
* ``eval_4bit_1gpu``, ``eval_8bit_1gpu``: zero-shot evaluation of the base folder with
  ``--load_in_4bit`` / ``--load_in_8bit`` (bitsandbytes; its wheel carried as for the walkthrough);
  ``qlora_1gpu``: ``--qlora`` training on one GPU, for comparison with FSDP.

Results: ``$OUT/multi_gpu.md`` / ``.json`` (table, scaling efficiency), logs in ``$OUT/logs.tar.gz``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from walkthrough_runner import ROOT, StepFailed, Walk, environment, last_line, table, write_results  # noqa: E402

STEPS_PY = str(ROOT / "benchmarks" / "walkthrough_steps.py")
CONFIG = str(ROOT / "configs" / "lora_single_gpu.yaml")
ORIG, HF, DATA = "models/llava-med-original", "models/llava-med-hf", "slake"
QUIET = ["--no-tb", "--no-final_eval", "--save_total_limit", "1"]


def stage_data(source: Path, target: Path) -> int:
    """``target``: English test records as train/validate/test files, with the images and KG; the question count."""
    records = [r for r in json.loads((source / "test.json").read_text(encoding="utf-8")) if r["q_lang"] == "en"]
    target.mkdir(parents=True)
    for name in ("train.json", "validate.json", "test.json"):
        (target / name).write_text(json.dumps(records), encoding="utf-8")
    for name in ("imgs", "KG"):  # copies: images must lie inside the dataset root (15 MiB)
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name)
    if (source / "mask.txt").is_file():
        shutil.copyfile(source / "mask.txt", target / "mask.txt")
    return len(records)


def launch(walk: Walk, config: str, processes: int, *args: str) -> list[str]:
    accelerate = "ddp_cpu.yaml" if walk.tiny else config
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "configs" / "accelerate" / accelerate), "--num_processes", str(processes),
            "-m", "slakevqa", *args]


def train_args(walk: Walk, model: str, out: str, steps: int, *extra: str) -> list[str]:
    return ["train", "--config", CONFIG, "--model_id", model, "--slake_root", DATA, "--output_dir", out,
            "--max_steps", str(steps), "--save_steps", str(steps), *QUIET, *(["--batch_size", "8"] if walk.tiny else []),
            *extra]


def throughput(walk: Walk, out: str) -> dict:
    path = walk.work / out / "run_config.json"
    if not path.is_file():
        raise StepFailed(f"no {out}/run_config.json")
    return json.loads(path.read_text(encoding="utf-8"))["throughput"]


def describe(t: dict) -> str:
    memory = t.get("peak_memory_gib_per_process")
    return (f"{t['steady_samples_per_second']} samples/s steady ({t['samples_per_step']}/step, "
            f"median {t['median_step_seconds']} s); memory/GPU {memory if memory else '-'} GiB")


def step_build(walk: Walk, log: Path) -> str:
    walk.run([sys.executable, STEPS_PY, "build", ORIG] + (["--tiny"] if walk.tiny else []), log)
    walk.run(walk.cli("convert-checkpoint", ORIG, HF), log)
    shutil.rmtree(walk.work / ORIG)
    return f"{HF}; {stage_data(Path(walk.slake), walk.work / DATA)} English test questions staged as every split"


def step_ddp(n: int):
    def run(walk: Walk, log: Path) -> str:
        out = f"runs/ddp-{n}"
        walk.run(launch(walk, "ddp.yaml", n, *train_args(walk, HF, out, 12)), log)
        t = throughput(walk, out)
        walk.measured[f"ddp_{n}"] = t
        one = walk.measured.get("ddp_1")
        scaling = "" if n == 1 or not one else \
            f"; {t['steady_samples_per_second'] / one['steady_samples_per_second']:.2f}x 1 GPU " \
            f"({t['steady_samples_per_second'] / one['steady_samples_per_second'] / n:.0%} efficiency)"
        return describe(t) + scaling
    return run


def step_eval(n: int):
    def run(walk: Walk, log: Path) -> str:
        out = f"runs/eval-{n}"
        walk.run(launch(walk, "ddp.yaml", n, "eval", "--model_id_or_ckpt", "runs/ddp-1", "--slake_root", DATA,
                        "--split", "test", "--output_dir", out, "--no-report"), log)
        timing = json.loads((walk.work / out / "results.json").read_text(encoding="utf-8"))["timing"]
        walk.measured[f"eval_{n}"] = timing
        one = walk.measured.get("eval_1")
        scaling = "" if n == 1 or not one else \
            f"; {timing['questions_per_second'] / one['questions_per_second']:.2f}x 1 GPU"
        return f"{timing['questions_answered']} questions, {timing['questions_per_second']} q/s{scaling}"
    return run


def step_quantised_eval(bits: int):
    """Zero-shot evaluation of the base folder with its language model in 4 or 8 bits (README hardware table)."""
    def run(walk: Walk, log: Path) -> str:
        out = f"runs/eval-{bits}bit"
        walk.run(launch(walk, "ddp.yaml", 1, "eval", "--model_id_or_ckpt", HF, "--slake_root", DATA, "--split", "test",
                        "--output_dir", out, "--no-report", f"--load_in_{bits}bit"), log)
        timing = json.loads((walk.work / out / "results.json").read_text(encoding="utf-8"))["timing"]
        walk.measured[f"eval_{bits}bit"] = timing
        return f"{timing['questions_answered']} questions, {timing['questions_per_second']} q/s"
    return run


def step_qlora(walk: Walk, log: Path) -> str:
    out = "runs/qlora-1"
    walk.run(launch(walk, "ddp.yaml", 1, *train_args(walk, HF, out, 12, "--qlora")), log)
    t = throughput(walk, out)
    walk.measured["qlora_1"] = t
    return describe(t)


def step_fsdp(n: int, steps: int):
    def run(walk: Walk, log: Path) -> str:
        out = "runs/fsdp-full"
        if steps > 2:  # the resume: the first run's finished model goes (disk), its checkpoint-2 stays
            for path in (walk.work / out).glob("*.safetensors"):
                path.unlink()
        args = train_args(walk, HF, out, steps, "--no-use_lora", "--save_steps", "2")
        if steps > 2:  # the resumed run ends with the final evaluation: the saved model, loaded whole by every rank
            args.remove("--no-final_eval")
        output = walk.run(launch(walk, "fsdp.yaml", n, *args), log)
        if steps > 2 and "resumed from" not in output:
            raise StepFailed("the second run did not say it resumed")
        if steps > 2 and not (walk.work / out / "eval_test" / "results.json").is_file():
            raise StepFailed("no eval_test/results.json after the resumed run")
        t = throughput(walk, out)
        walk.measured[f"fsdp_{n}_{steps}"] = t
        note = describe(t)
        return (f"resumed at step 2; {note}" if steps > 2 else note) + "; " + last_line(output)[:80]
    return run


def straddle(slake_root: str, batch: int, worlds: list[int], language: str = "en") -> list[dict]:
    """Packed rows and the slowest process's work per step, fixed slices vs whole images (first epoch).

    One process with the whole batch computes each image's prefix once. Fixed slices of ``batch``
    questions per process compute an image that straddles a boundary on both sides and leave the
    work per process to chance; ``share_by_group`` (what training does) gives whole images to the
    least-loaded process. Work = ``PREFIX_COST`` per row + questions; a step waits for the largest.
    """
    from slakevqa.data.slake import load_training_split
    from slakevqa.training.schedule import PREFIX_COST, epoch_order, share_by_group

    samples = load_training_split(slake_root, "train", language)
    keys = {k: i for i, k in enumerate(dict.fromkeys(s.image_key for s in samples))}
    groups = [keys[s.image_key] for s in samples]
    order = epoch_order(len(samples), 0, 0, groups)

    def work(part: list[int]) -> int:
        return PREFIX_COST * len({groups[i] for i in part}) + len(part)

    rows = []
    for world in worlds:
        chunk = batch * world
        steps = -(-len(samples) // chunk)
        totals = {"whole": 0, "fixed_rows": 0, "shared_rows": 0, "fixed_max": 0.0, "shared_max": 0.0}
        for step in range(steps):
            indices = [order[(step * chunk + i) % len(samples)] for i in range(chunk)]
            fixed = [indices[r * batch:(r + 1) * batch] for r in range(world)]
            shared = [share_by_group(indices, groups, r, world) for r in range(world)]
            totals["whole"] += len({groups[i] for i in indices})
            for name, parts in (("fixed", fixed), ("shared", shared)):
                totals[f"{name}_rows"] += sum(len({groups[i] for i in part}) for part in parts)
                totals[f"{name}_max"] += max(work(part) for part in parts) / (sum(map(work, parts)) / world)
        rows.append({"world": world, "batch_per_gpu": batch, "questions": len(samples),
                     "rows_one_process": round(totals["whole"] / steps, 2),
                     "rows_fixed_slices": round(totals["fixed_rows"] / steps, 2),
                     "rows_whole_images": round(totals["shared_rows"] / steps, 2),
                     "slowest_over_mean_fixed": round(totals["fixed_max"] / steps, 3),
                     "slowest_over_mean_whole_images": round(totals["shared_max"] / steps, 3)})
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU over gloo (a rehearsal)")
    parser.add_argument("--straddle", action="store_true", help="only the CPU packing analysis, then exit")
    parser.add_argument("--gpus", default=None, help="process counts for DDP/eval, e.g. 1,2 (default: 1 and all)")
    parser.add_argument("--slake_root", default=str(ROOT / "bench_data" / "Slake1.0"))
    parser.add_argument("--work", default=None, help="work folder, deleted first (default /tmp/multi_gpu[-tiny])")
    parser.add_argument("--out", default=None, help="results folder (default $OUT, else work_multi_gpu_out)")
    parser.add_argument("--budget", type=float, default=560.0, help="seconds for all steps")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--steps", default=None,
                        help="only the steps whose names start with one of these, comma-separated (0_build always)")
    args = parser.parse_args(argv)
    args.work = args.work or ("/tmp/multi_gpu-tiny" if args.tiny else "/tmp/multi_gpu")
    args.out = args.out or os.environ.get("OUT") or str(ROOT / "work_multi_gpu_out")
    return args


def process_counts(args: argparse.Namespace) -> list[int]:
    if args.gpus:
        return [int(n) for n in args.gpus.split(",")]
    import torch

    available = torch.cuda.device_count()
    return sorted({1, *[n for n in (2, 4, 8) if n <= available]})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.straddle:
        for row in straddle(args.slake_root, 64, [1, 2, 4, 8]):
            print(json.dumps(row))
        return 0
    counts = process_counts(args)
    walk = Walk(args)
    shutil.rmtree(walk.work, ignore_errors=True)
    walk.logs.mkdir(parents=True)
    env = {**environment(walk), "process counts": counts}
    print(" | ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    began = time.monotonic()
    plan = [("0_build", [], step_build)]
    plan += [(f"ddp_lora_{n}gpu", [f"{HF}/config.json"], step_ddp(n)) for n in counts]
    plan += [(f"eval_{n}gpu", ["runs/ddp-1/adapter_config.json"], step_eval(n)) for n in counts]
    n = max(counts)  # --tiny: accelerate runs FSDP on GPU processes only, so ddp_cpu.yaml rehearses its steps
    plan += [(f"fsdp_full_{n}gpu", [f"{HF}/config.json"], step_fsdp(n, 2))] if n > 1 else []
    if not args.tiny:  # bitsandbytes needs CUDA
        plan += [("eval_4bit_1gpu", [f"{HF}/config.json"], step_quantised_eval(4)),
                 ("eval_8bit_1gpu", [f"{HF}/config.json"], step_quantised_eval(8)),
                 ("qlora_1gpu", [f"{HF}/config.json"], step_qlora)]
    plan += [("fsdp_resume", ["runs/fsdp-full/checkpoint-2"], step_fsdp(n, 3))] if n > 1 else []
    if args.steps:
        wanted = ("0_build", *args.steps.split(","))
        plan = [step for step in plan if step[0].startswith(wanted)]
    for name, needs, work in plan:
        walk.step(name, needs, lambda log, work=work: work(walk, log))
    total = time.monotonic() - began
    write_results(walk, env, total)
    (walk.out / "measured.json").write_text(json.dumps(walk.measured, indent=2) + "\n", encoding="utf-8")
    print(f"\n{table(walk.outcomes)}\n\n{json.dumps(walk.measured)}\n\ntotal {total:.0f} s; results in {walk.out}")
    if not walk.keep:
        shutil.rmtree(walk.work, ignore_errors=True)
    return 0 if all(o.status == "PASS" for o in walk.outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
