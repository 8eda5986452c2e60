"""The GPU walkthrough of another model family at its published shape (``gpu_walkthrough.sh --part family``).

    PYTHONPATH=src bash benchmarks/gpu_walkthrough.sh --part family --family qwen2_5_vl \\
        --speed_root bench_data/Slake1.0 --speed_limit 256 --out $OUT/qwen
    #   carry ["bench_data/walk", "bench_data/tokenizer.model", "bench_data/tokenizers", "bench_data/Slake1.0"]
    bash benchmarks/gpu_walkthrough.sh --tiny --part family --family gemma3      # CPU rehearsal

``bench_data/tokenizers/{qwen2_5,gemma3}/*.xz`` are copies of ``../shared/tokenizers`` (git-ignored, never
committed); LLaVA-1.5 uses the Mistral ``bench_data/tokenizer.model`` (benchmarks/family_shapes.py says why).
The steps are gpu_walkthrough.py's, pointed at the family's folders; results as there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from gpu_walkthrough import (
    STEPS_PY,
    step_check_model,
    step_eval,
    step_eval_merged_of,
    step_plain_of,
    step_train_resume_of,
)
from walkthrough_runner import Walk, last_line


def plan_family(walk: Walk) -> list[tuple[str, list[str], Callable[[Walk, Path], str] | None]]:
    """Another model family at its published shape (``--family``; benchmarks/family_shapes.py): build an HF folder
    with the family's tokenizer, check, LoRA training with probes and final evaluation (killed and resumed),
    eval, merge, the merged folder's answers equal, plain transformers' ids equal, and eval speed on
    ``--speed_root``'s test split when given (measured into walkthrough.json)."""
    model, lora, merged = f"models/{walk.family}-hf", f"runs/{walk.family}-lora", f"runs/{walk.family}-merged"
    adapter = f"{lora}/adapter_config.json"
    steps = [
        ("f0_build", [], lambda w, log: last_line(w.run([sys.executable, STEPS_PY, "build-family", w.family, model]
                                                         + (["--tiny"] if w.tiny else []), log))),
        ("f1_check", [f"{model}/config.json"], step_check_model(model)),
        # 16 x 4: the effective batch of lora_single_gpu.yaml; issue 26 ran it so before packing (batch 64 of
        # Qwen2.5-VL-7B's one-row-per-question ~400-token rows ran out of an H100's 80 GB), kept for comparison
        ("f2a_train_kill_resume", [f"{model}/config.json"],
         step_train_resume_of(model, lora, "--batch_size", "16", "--grad_accum", "4")),
        ("f2b_tensorboard_probes", [f"{lora}/tb"],
         lambda w, log: last_line(w.run([sys.executable, STEPS_PY, "tb", f"{lora}/tb"], log))),
        ("f3_eval_lora", [adapter], step_eval(lora, f"{lora}/eval")),
        ("f4_merge", [adapter], lambda w, log: (w.run(w.cli("merge", lora, merged), log), f"{merged} written")[1]),
        ("f5_eval_merged", [f"{merged}/config.json"], step_eval_merged_of(lora, merged)),
        ("f6_plain_transformers", [f"{merged}/config.json"], step_plain_of(merged)),
    ]
    if walk.speed_root:
        steps.append(("f7_eval_speed", [f"{model}/config.json"], step_speed(model, "runs/speed")))
    return steps


def step_speed(model: str, output_dir: str) -> Callable[[Walk, Path], str]:
    """Evaluation of ``--speed_root``'s test split: questions per second and the backend, from results.json."""
    def run(walk: Walk, log: Path) -> str:
        limit = ["--limit", str(walk.speed_limit)] if walk.speed_limit else []
        walk.run(walk.cli("eval", "--model_id_or_ckpt", model, "--slake_root", walk.speed_root, "--split", "test",
                          "--output_dir", output_dir, "--report", "false", *limit), log)
        results = json.loads((walk.work / output_dir / "results.json").read_text(encoding="utf-8"))
        timing, provenance = results.get("timing", {}), results.get("provenance", {})
        walk.measured["eval_speed"] = {**timing, "backend": provenance.get("eval_backend"),
                                       "family": provenance.get("model_family")}
        return f"{timing.get('questions_answered')} questions, {timing.get('questions_per_second')} q/s " \
               f"({provenance.get('eval_backend')} backend)"
    return run
