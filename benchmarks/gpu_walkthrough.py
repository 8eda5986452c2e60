"""Replay the README's GPU steps at the real LLaVA-Med-7B shape (random weights), one line per step.

    python benchmarks/gpu_walkthrough.py            # GPU box; run it through gpu_walkthrough.sh
    python benchmarks/gpu_walkthrough.py --tiny     # CPU rehearsal: tiny model of the same architecture

Every step is a separate process started from the work folder (``--work``, default
/tmp/walk), as a user would type it (``python -m slakevqa VERB ...``, the README's
``slakevqa VERB``), logging into ``logs/<step>.log``. A step prints

    PASS|FAIL|SKIP  <step>  <seconds> s  <peak GPU GiB>

and, on FAIL, the last 30 lines of its log. A step whose inputs are missing (an earlier
step failed) is SKIPped; all others run. At the end the table is printed and written to
``$OUT/walkthrough.md`` and ``$OUT/walkthrough.json``, all logs to ``$OUT/logs.tar.gz``;
the work folder is deleted (``--keep`` keeps it). Exit code 1 if any step did not pass.

Peak GPU memory is the largest ``nvidia-smi`` ``memory.used`` of the whole card, sampled
every 0.5 s while the step's processes ran: CUDA context and PyTorch's cached blocks
included, so an upper bound of ``torch.cuda.max_memory_allocated`` (details in
``walkthrough_runner.py``). "-" means no nvidia-smi (CPU).

Time on one H200: 462 s and 515 s in two runs (2026-12-01). Each of the 16 processes
spends ~15-25 s importing and loading the 7B weights; the work itself is a few seconds.
The device tool allows 10 minutes per command: ``--budget`` (560 s) stops starting steps
once spent and kills a step still running then, so the table always comes back.

``--part extra`` runs the README's other GPU lines in a second call: zero-shot evaluation of
the original-format folder (converted once into the cache, reused by training), ``score``,
full fine-tuning, the hybrid CLOSED objective and ``--mode diagnose`` (289 s on an H200,
2026-12-01; full fine-tuning needs ~90 GB of disk: its last checkpoint holds AdamW's state).

Disk: the original checkpoint is deleted once converted, so at most two 15 GB folders
(converted + merged) exist at once. ``--part extra`` keeps the original folder, its converted
cache, the fully fine-tuned model and that run's last checkpoint (43 GB with AdamW's state):
~90 GB, more than a 1-GPU machine's 64 GiB disk; use a 2-GPU machine (128 GB) or ``--work``
under /dev/shm.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from walkthrough_runner import ROOT, Outcome, StepFailed, Walk, environment, last_line, table, write_results  # noqa: E402

STEPS_PY = str(ROOT / "benchmarks" / "walkthrough_steps.py")
CONFIG = str(ROOT / "configs" / "lora_single_gpu.yaml")
ORIG, HF, LORA, MERGED = "models/llava-med-original", "models/llava-med-hf", "runs/lora", "runs/lora-merged"
# Diagnostics small enough that probes and eval loss come at least twice in 8 steps.
TB_FLAGS = ["--eval_steps", "2", "--logging_steps", "1", "--tb_log_text_every", "2", "--tb_log_images_every", "4",
            "--tb_hist_every", "4", "--tb_probe_size", "8", "--tb_eval_generate_size", "8"]
NOT_IN_TINY = "not in --tiny mode (needs CUDA)"


def predictions(path: Path) -> dict:
    """qid -> record of a predictions.jsonl."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row["qid"]: row for row in rows}


def answer_differences(a: Path, b: Path) -> tuple[int, int]:
    """(answers that differ, questions) between two predictions.jsonl; StepFailed if the qids differ."""
    left, right = predictions(a), predictions(b)
    if set(left) != set(right):
        raise StepFailed(f"{a} and {b} answer different questions ({len(left)} vs {len(right)})")
    return sum(left[q]["prediction"] != right[q]["prediction"] for q in left), len(left)


def first_question(slake: str) -> tuple[str, str]:
    """(image path, question) of the first English test question: a real image for check and plain."""
    record = next(r for r in json.loads(Path(slake, "test.json").read_text(encoding="utf-8")) if r["q_lang"] == "en")
    return str(Path(slake, "imgs", record["img_name"])), record["question"]


# ---- the steps: each takes its log file, returns a note or raises StepFailed

def step_build(walk: Walk, log: Path) -> str:
    walk.run([sys.executable, STEPS_PY, "build", ORIG] + (["--tiny"] if walk.tiny else []), log)
    return "original llava_mistral checkpoint with LLaVA-Med's tokenizer files and chat_template"


def step_convert(walk: Walk, log: Path) -> str:
    walk.run(walk.cli("convert-checkpoint", ORIG, HF), log)
    shutil.rmtree(walk.work / ORIG)  # disk: never three 15 GB folders at once
    return f"{HF} written; original deleted"


def step_check_model(model: str) -> Callable[[Walk, Path], str]:
    def run(walk: Walk, log: Path) -> str:
        image, question = first_question(walk.slake)
        output = walk.run(walk.cli("check", "--model", model, "--image", image, "--question", question,
                                   "--max_new_tokens", "16"), log)
        return last_line(output)
    return run


def train_command(walk: Walk, output_dir: str, max_steps: int, save_steps: int, *extra: str,
                  model: str = HF) -> list[str]:
    return walk.cli("train", "--config", CONFIG, "--model_id", model, "--slake_root", walk.slake,
                    "--output_dir", output_dir, "--max_steps", str(max_steps), "--save_steps", str(save_steps),
                    *TB_FLAGS, *extra)


def step_train_resume_of(model: str, lora: str, *extra: str, stop: int = signal.SIGKILL) -> Callable[[Walk, Path], str]:
    return lambda walk, log: train_stop_resume(walk, log, model, lora, *extra, stop=stop)


def train_stop_resume(walk: Walk, log: Path, model: str, lora: str, *extra: str, stop: int = signal.SIGKILL) -> str:
    """Start training, send ``stop`` once a mid-run checkpoint exists, run the same command again: it must resume.

    SIGKILL: no cleanup, as a job dies when killed. SIGTERM (a scheduler's stop, a preemption): the run must
    finish its step, write that step's checkpoint and exit with 75 (slakevqa.stopping)."""
    cmd = train_command(walk, lora, 8, 2, *extra, model=model)
    name = signal.Signals(stop).name
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(cmd)}   # to be sent {name} at the first checkpoint\n")
        handle.flush()
        process = subprocess.Popen(cmd, cwd=walk.work, env=walk.env, stdout=handle, stderr=subprocess.STDOUT)
        stopped_at = None
        while process.poll() is None and walk.remaining() > 5:
            if checkpoints(walk, lora):
                process.send_signal(stop)
                code = process.wait()
                stopped_at = max(checkpoints(walk, lora), key=lambda p: int(p.name.split("-")[1])).name
                handle.write(f"\n### walkthrough: {name} after the first checkpoint; exit {code}; {stopped_at}\n")
                break
            time.sleep(0.1)
    if stopped_at is None:
        if process.poll() is None:  # the loop gave up: budget spent
            process.kill()
            process.wait()
            raise StepFailed("timed out (walkthrough budget spent) before the first checkpoint")
        raise StepFailed(f"the first run ended (exit {process.returncode}) before any checkpoint appeared")
    if stopped_at == "checkpoint-8":
        raise StepFailed("the run reached its last step before it could be stopped")
    if stop != signal.SIGKILL and code != 75:
        raise StepFailed(f"exit {code} after {name}, not 75 (stopped at a checkpoint; the rerun resumes)")
    output = walk.run(cmd, log)
    resumed = [line for line in output.splitlines() if "resumed from" in line]
    if not resumed:
        raise StepFailed(f"stopped after {stopped_at}, but the second run did not say it resumed")
    results = walk.work / lora / "eval_test" / "results.json"
    if not results.is_file():
        raise StepFailed(f"no {results.relative_to(walk.work)} after the resumed run")
    return (f"{name} after {stopped_at}; {resumed[-1].split('INFO: ')[-1].strip()}; eval_test/results.json; "
            f"{precision(walk, lora)}; {throughput(walk, lora)}")


def checkpoints(walk: Walk, output_dir: str) -> list[Path]:
    """The complete checkpoints of a run folder."""
    return [p for p in (walk.work / output_dir).glob("checkpoint-*") if (p / "trainer_state.json").is_file()]


def throughput(walk: Walk, output_dir: str) -> str:
    """Training samples/s and peak memory the run recorded (run_config.json)."""
    recorded = run_config(walk, output_dir).get("throughput") or {}
    keys = ["steady_samples_per_second", "peak_memory_gib_per_process"]
    return ", ".join(f"{k} {recorded[k]}" for k in keys if k in recorded) or "no throughput recorded"


def step_tensorboard(walk: Walk, log: Path) -> str:
    output = walk.run([sys.executable, STEPS_PY, "tb", f"{LORA}/tb"], log)
    return next((line for line in output.splitlines() if line.startswith("probe/llava_med/OPEN")), "")


def eval_command(walk: Walk, model: str, output_dir: str, *extra: str) -> list[str]:
    return walk.cli("eval", "--model_id_or_ckpt", model, "--slake_root", walk.slake, "--split", "test",
                    "--output_dir", output_dir, *extra)


def step_eval(model: str, output_dir: str, *extra: str) -> Callable[[Walk, Path], str]:
    def run(walk: Walk, log: Path) -> str:
        walk.run(eval_command(walk, model, output_dir, *extra), log)
        n = len(predictions(walk.work / output_dir / "predictions.jsonl"))
        if not (walk.work / output_dir / "results.json").is_file():
            raise StepFailed(f"{n} predictions but no results.json")
        return f"{n} predictions + results.json"
    return run


def step_merge(walk: Walk, log: Path) -> str:
    walk.run(walk.cli("merge", LORA, MERGED), log)
    return f"{MERGED} written"


def step_eval_merged_of(lora: str, merged: str) -> Callable[[Walk, Path], str]:
    def run(walk: Walk, log: Path) -> str:
        """Evaluating the merged folder must give the answers of the adapter folder (merged at load)."""
        step_eval(merged, f"{merged}/eval")(walk, log)
        reference = walk.work / lora / "eval" / "predictions.jsonl"
        if not reference.is_file():
            raise StepFailed("no predictions of the adapter folder to compare with")
        differ, n = answer_differences(reference, walk.work / merged / "eval" / "predictions.jsonl")
        if differ:
            raise StepFailed(f"{differ}/{n} answers differ from the LoRA folder's evaluation")
        return f"{n}/{n} answers equal to the LoRA folder's evaluation"
    return run


def step_plain_of(merged: str) -> Callable[[Walk, Path], str]:
    def run(walk: Walk, log: Path) -> str:
        image, question = first_question(walk.slake)
        output = walk.run([sys.executable, STEPS_PY, "plain", merged, image, question]
                          + (["--tiny"] if walk.tiny else []), log)
        return last_line(output)
    return run


def step_compare(walk: Walk, log: Path) -> str:
    walk.run(walk.cli("compare", f"{LORA}/eval", f"{MERGED}/eval", "--out", "runs/compare.json"), log)
    return "runs/compare.json written"


def step_report(walk: Walk, log: Path) -> str:
    walk.run(walk.cli("report", f"{LORA}/eval"), log)
    if not (walk.work / LORA / "eval" / "report.html").is_file():
        raise StepFailed("no report.html")
    return "report.md + report.html"


def step_train(output_dir: str, *extra: str, model: str = HF) -> Callable[[Walk, Path], str]:
    """A short training run (4 steps, probes and final evaluation on) that must write its adapter or model."""
    def run(walk: Walk, log: Path) -> str:
        walk.run(train_command(walk, output_dir, 4, 4, *extra, model=model), log)
        written = "config.json" if "--no-use_lora" in extra else "adapter_config.json"
        if not (walk.work / output_dir / written).is_file():
            raise StepFailed(f"no {written} written")
        if not (walk.work / output_dir / "eval_test" / "results.json").is_file():
            raise StepFailed("no eval_test/results.json")
        note = f"{'model' if written == 'config.json' else 'adapter'} + eval_test/results.json; " \
               f"{precision(walk, output_dir)}"
        return note + (f"; {four_bit_evidence(walk, output_dir)}" if "--qlora" in extra else "")
    return run


def run_config(walk: Walk, output_dir: str) -> dict:
    path = walk.work / output_dir / "run_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def precision(walk: Walk, output_dir: str) -> str:
    """The dtype layout the run recorded (weights, adapters, autocast), if it records one."""
    layout = run_config(walk, output_dir).get("precision")
    return " ".join(f"{k}={v}" for k, v in layout.items()) if isinstance(layout, dict) else "no precision recorded"


def four_bit_evidence(walk: Walk, output_dir: str) -> str:
    """QLoRA really ran on 4-bit weights: bitsandbytes packs two NF4 values per element, so the
    language model's recorded parameter count is about half of the bf16 LoRA run's."""
    def lm_total(folder: str) -> int:
        return run_config(walk, folder).get("parameters", {}).get("language_model", {}).get("total", 0)

    quantised, full = lm_total(output_dir), lm_total(LORA)
    if not quantised or not full:
        return "4-bit not verified (no parameter counts)"
    if quantised > 0.6 * full:
        raise StepFailed(f"language model counts {quantised:,} elements, {full:,} in bf16: not 4-bit")
    return f"4-bit: language model {quantised:,} packed elements vs {full:,} in bf16"


def step_eval_dtype(dtype: str) -> Callable[[Walk, Path], str]:
    def run(walk: Walk, log: Path) -> str:
        note = step_eval("runs/lora-fp16", f"runs/lora-fp16/eval-{dtype}", "--precision", dtype)(walk, log)
        other = walk.work / "runs/lora-fp16/eval-fp16/predictions.jsonl"
        if dtype == "fp32" and other.is_file():  # information only: fp16 and fp32 may round differently
            differ, n = answer_differences(other, walk.work / "runs/lora-fp16/eval-fp32/predictions.jsonl")
            note += f"; {n - differ}/{n} answers equal to --precision fp16"
        return note
    return run


def plan(walk: Walk) -> list[tuple[str, list[str], Callable[[Walk, Path], str] | None]]:
    """(step name, paths it needs in the work folder, what it does); None: not run in this mode."""
    cuda = not walk.tiny  # QLoRA needs bitsandbytes on CUDA
    adapter = f"{LORA}/adapter_config.json"
    return [
        ("0_build_original", [], step_build),
        ("1a_convert_checkpoint", [f"{ORIG}/config.json"], step_convert),
        ("1b_check", [f"{HF}/config.json"], step_check_model(HF)),
        ("2a_train_kill_resume", [f"{HF}/config.json"], step_train_resume_of(HF, LORA)),
        ("2b_tensorboard_probes", [f"{LORA}/tb"], step_tensorboard),
        ("2c_train_sigterm_resume", [f"{HF}/config.json"],
         step_train_resume_of(HF, "runs/preempted", stop=signal.SIGTERM)),
        ("3_eval_lora", [adapter], step_eval(LORA, f"{LORA}/eval")),
        ("4_merge", [adapter], step_merge),
        ("5_eval_merged", [f"{MERGED}/config.json"], step_eval_merged_of(LORA, MERGED)),
        ("6_plain_transformers", [f"{MERGED}/config.json"], step_plain_of(MERGED)),
        ("7a_compare", [f"{LORA}/eval/predictions.jsonl", f"{MERGED}/eval/predictions.jsonl"], step_compare),
        ("7b_report", [f"{LORA}/eval/predictions.jsonl"], step_report),
        ("8a_train_qlora", [f"{HF}/config.json"], step_train("runs/qlora", "--qlora") if cuda else None),
        ("8b_eval_qlora", ["runs/qlora/adapter_config.json"],
         step_eval("runs/qlora", "runs/qlora/eval") if cuda else None),
        ("9a_train_fp16", [f"{HF}/config.json"], step_train("runs/lora-fp16", "--precision", "fp16")),
        ("9b_eval_fp16", ["runs/lora-fp16/adapter_config.json"], step_eval_dtype("fp16")),
        ("9c_eval_fp32", ["runs/lora-fp16/adapter_config.json"], step_eval_dtype("fp32")),
    ]


def step_score(walk: Walk, log: Path) -> str:
    output = walk.run(walk.cli("score", "runs/zero_shot/predictions.jsonl", "--out", "runs/zero_shot/rescored.json"),
                      log)
    if not (walk.work / "runs/zero_shot/rescored.json").is_file():
        raise StepFailed("no rescored results")
    return last_line(output)


def step_diagnose(walk: Walk, log: Path) -> str:
    note = step_eval("runs/hybrid", "runs/hybrid/diagnose", "--mode", "diagnose")(walk, log)
    written = sorted(p.name for p in (walk.work / "runs/hybrid/diagnose/diagnose").glob("*"))
    if not written:
        raise StepFailed("no diagnose/ files")
    return f"{note}; diagnose/: {len(written)} files"


def plan_extra(walk: Walk) -> list[tuple[str, list[str], Callable[[Walk, Path], str] | None]]:
    """The README's GPU lines that part ``readme`` leaves out, from the original-format folder itself:
    zero-shot evaluation of it (converted once into the cache, which training then reuses), full
    fine-tuning, the hybrid CLOSED objective, diagnose mode and rescoring from the file alone."""
    original = f"{ORIG}/config.json"
    return [
        ("0_build_original", [], step_build),
        ("e1_eval_original_zero_shot", [original], step_eval(ORIG, "runs/zero_shot")),
        ("e2_score", ["runs/zero_shot/predictions.jsonl"], step_score),
        ("e3_train_full", [original], step_train("runs/full", "--no-use_lora", model=ORIG)),
        ("e4_train_hybrid", [original], step_train("runs/hybrid", "--closed_train_objective", "hybrid", model=ORIG)),
        ("e5_eval_diagnose", ["runs/hybrid/adapter_config.json"], step_diagnose),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (a rehearsal of the script)")
    parser.add_argument("--work", default=None,
                        help="work folder, deleted first (default /tmp/walk[-tiny])")
    parser.add_argument("--out", default=None, help="results folder (default $OUT, else work_walkthrough_out)")
    parser.add_argument("--slake_root", default=str(ROOT / "bench_data" / "walk" / "Slake1.0"),
                        help="the SLAKE subset (benchmarks/prepare_walk_data.py)")
    parser.add_argument("--budget", type=float, default=560.0,
                        help="seconds for all steps; later steps are skipped once spent")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--steps", default="",
                        help="comma-separated name prefixes: run only these steps (and give what they need "
                             "yourself), e.g. 0_,1a_,9 re-runs the fp16 steps after a fix")
    parser.add_argument("--part", choices=("readme", "extra", "family"), default="readme",
                        help="readme: the README's main GPU path (~510 s on an H200); extra: zero-shot eval of "
                             "the original folder, score, full fine-tuning, hybrid objective, diagnose; family: "
                             "another model family's path (--family)")
    parser.add_argument("--family", default="qwen2_5_vl", help="--part family: llava_1_5, qwen2_5_vl or gemma3")
    parser.add_argument("--speed_root", default="",
                        help="--part family: a SLAKE folder whose test split an eval times (q/s, peak memory)")
    parser.add_argument("--speed_limit", type=int, default=0, help="questions of --speed_root's test split (0: all)")
    args = parser.parse_args(argv)
    args.work = args.work or ("/tmp/walk-tiny" if args.tiny else "/tmp/walk")
    return args


def main(argv: list[str] | None = None) -> int:
    walk = Walk(parse_args(argv))
    if not Path(walk.slake, "train.json").is_file():
        print(f"no SLAKE subset at {walk.slake}: run benchmarks/prepare_walk_data.py first")
        return 2
    shutil.rmtree(walk.work, ignore_errors=True)
    walk.logs.mkdir(parents=True)
    env = environment(walk)
    print(" | ".join(f"{k} {v}" for k, v in env.items()), f"| work {walk.work}", flush=True)
    began = time.monotonic()
    chosen = [prefix for prefix in walk.steps.split(",") if prefix]
    from walkthrough_family import plan_family  # it builds on this module's steps

    plans = {"extra": plan_extra, "family": plan_family, "readme": plan}
    for name, needs, work in plans[walk.part](walk):
        if chosen and not name.startswith(tuple(chosen)):
            continue
        if work is None:
            walk.record(Outcome(name, "SKIP", 0.0, None, NOT_IN_TINY))
        else:
            walk.step(name, needs, lambda log, work=work: work(walk, log))
    total = time.monotonic() - began
    write_results(walk, env, total)
    print(f"\n{table(walk.outcomes)}\n\ntotal {total:.0f} s; results in {walk.out}")
    if not walk.keep:
        shutil.rmtree(walk.work, ignore_errors=True)
    return 0 if all(o.status == "PASS" for o in walk.outcomes if o.note != NOT_IN_TINY) else 1


if __name__ == "__main__":
    raise SystemExit(main())
