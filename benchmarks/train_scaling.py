"""Training throughput on 1 and 2 GPUs at LLaVA-Med-7B shape (random weights): samples/s per GPU, memory, MFU.

    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 1 benchmarks/train_scaling.py
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 benchmarks/train_scaling.py
    accelerate launch --config_file configs/accelerate/ddp_cpu.yaml benchmarks/train_scaling.py --tiny   # CPU smoke

What one step is, per process: a padded batch of ``--batch_size`` (16) questions of
SLAKE length (576 image tokens + 24..64 text tokens, ~620 in all, padded to the
longest), one 336 px image each, forward + backward through slakevqa's
``answer_loss`` (logits only at answer positions), AdamW step. The model is
``slakevqa.models.shapes.LLAVA_MED_7B`` (Mistral-7B: 4096 hidden, 14336 MLP, 32 layers,
32 heads / 8 KV, vocab 32064; CLIP ViT-L/14-336: 1024 / 4096 / 24 layers / 16 heads;
GELU projector) in bf16, what trains set by ``slakevqa.training.params.configure_trainable``
as ``slakevqa train`` sets it: LoRA r=64 on every linear layer of the language model
(``all-linear``), the projector trained fully, the vision tower frozen. DDP over
processes (weak scaling: each GPU takes its own 16 questions), so scaling efficiency =
per-GPU samples/s at 2 GPUs / at 1. ``--tiny`` is ``slakevqa.models.shapes.TINY``.

MFU counts the FLOPs the step must do, not what it recomputes (gradient
checkpointing's extra forward is excluded): per text token 2N forward + 2N for
input gradients through the frozen language model (its weight gradients are not
computed) + 6 N_lora, plus attention 4·L·s·d forward and 8·L·s·d backward; per image
token 4 N_projector (forward + weight gradients; its input needs none); the frozen
vision tower forward only (2 N_vision per patch + attention).
Peak: 989 TFLOP/s dense bf16 for H100/H200 SXM (``--peak_tflops`` otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

if TYPE_CHECKING:
    from slakevqa.models.shapes import LlavaShape

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
TEXT_TOKENS = {"7b": (24, 64), "tiny": (8, 24)}  # prompt + answer tokens around the image, per question


def build_model(shape: LlavaShape, dtype: torch.dtype, device: torch.device, lora_r: int):
    """Random-weight LLaVA at ``shape`` on ``device`` in ``dtype`` (no CPU copy of 7B), trainable as training sets it."""
    from slakevqa.models.random_llava import random_llava
    from slakevqa.models.shapes import llava_config
    from slakevqa.training.params import configure_trainable

    name = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    model = random_llava(llava_config(shape), device=str(device), dtype=name, seed=0)
    return configure_trainable(model, use_lora=True, lora_r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.05,
                               lora_target_modules="all-linear", lora_scope="language_model",
                               tune_mm_projector=True, freeze_vision_tower=True)


def make_batch(shape: LlavaShape, text_tokens: tuple[int, int], batch_size: int, device: torch.device,
               dtype: torch.dtype, generator: torch.Generator) -> dict:
    """Right-padded rows ``[bos, image x 576, text...]``; the last 4 text tokens of each row are the answer."""
    from slakevqa.models.shapes import token_ids

    special = token_ids(shape)
    lengths = torch.randint(*text_tokens, (batch_size,), generator=generator) + shape.image_tokens + 1
    width = int(lengths.max())
    ids = torch.randint(100, special["image"] - 1, (batch_size, width), generator=generator)
    ids[:, 0] = special["bos"]
    ids[:, 1:1 + shape.image_tokens] = special["image"]
    mask = torch.arange(width)[None, :] < lengths[:, None]
    ids[~mask] = special["pad"]
    labels = torch.full_like(ids, -100)
    for row, length in enumerate(lengths.tolist()):
        labels[row, length - 4:length] = ids[row, length - 4:length]
    pixels = torch.randn(batch_size, 3, shape.image_size, shape.image_size, generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": mask.long().to(device), "labels": labels.to(device),
            "pixel_values": pixels.to(device, dtype)}


def step_flops(model, shape: LlavaShape, batch: dict) -> float:
    """Model FLOPs of one forward+backward (see the module docstring), for this process's batch."""
    named = list(model.named_parameters())
    n_lm = sum(p.numel() for n, p in named if "language_model" in n and "lora_" not in n)
    n_lora = sum(p.numel() for n, p in named if "lora_" in n)
    n_projector = sum(p.numel() for n, p in named if "multi_modal_projector" in n and p.requires_grad)
    n_vision = sum(p.numel() for n, p in named if "vision_tower" in n)
    mask = batch["attention_mask"]
    tokens, rows, s = int(mask.sum()), mask.shape[0], mask.shape[1]
    text = tokens * (4 * n_lm + 6 * n_lora + 12 * shape.text_layers * s * shape.text_hidden)
    projector = rows * shape.image_tokens * 4 * n_projector
    patches = shape.image_tokens + 1
    vision = rows * patches * (2 * n_vision + 4 * shape.vision_layers * patches * shape.vision_hidden)
    return float(text + projector + vision)


def peak_tflops(device: torch.device, override: float) -> float | None:
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_TFLOPS.items() if key in name), None)


@dataclass
class Report:
    device: str
    processes: int
    batch_per_process: int
    mean_tokens_per_row: float
    steps: int
    step_seconds: float
    samples_per_s_per_gpu: float
    samples_per_s_total: float
    peak_memory_gib: float | None
    mfu: float | None
    trainable_params: int
    total_params: int
    gradient_checkpointing: bool


def timed_steps(model, optimizer, accelerator, batches: list[dict], warmup: int, steps: int) -> float:
    """Seconds per step over ``steps`` after ``warmup`` untimed ones (CUDA synchronised)."""
    from slakevqa.training.loss import answer_loss

    def one(batch: dict) -> None:
        with accelerator.autocast():
            loss = answer_loss(model, batch)[0]
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(warmup):
        one(batches[i % len(batches)])
    synchronise(accelerator.device)
    accelerator.wait_for_everyone()
    began = time.perf_counter()
    for i in range(steps):
        one(batches[(warmup + i) % len(batches)])
    synchronise(accelerator.device)
    return (time.perf_counter() - began) / steps


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> Report:
    from accelerate import Accelerator

    from slakevqa.distributed import use_cpu
    from slakevqa.models.shapes import LLAVA_MED_7B, TINY

    accelerator = Accelerator(cpu=use_cpu())
    shape = TINY if args.tiny else LLAVA_MED_7B
    device = accelerator.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(shape, dtype, device, args.lora_r)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(1000 + accelerator.process_index)  # each rank its own questions
    text_tokens = TEXT_TOKENS["tiny" if args.tiny else "7b"]
    batches = [make_batch(shape, text_tokens, args.batch_size, device, dtype, generator) for _ in range(4)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed_steps(model, optimizer, accelerator, batches, args.warmup, args.steps)
    flops = sum(step_flops(accelerator.unwrap_model(model), shape, b) for b in batches) / len(batches)
    peak = peak_tflops(device, args.peak_tflops)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    # The slowest rank sets the pace; memory is the largest of any rank.
    stats = accelerator.gather(torch.tensor([[seconds, memory or 0.0]], device=device))
    seconds, memory_max = float(stats[:, 0].max()), float(stats[:, 1].max())
    tokens = sum(float(b["attention_mask"].sum()) for b in batches) / (len(batches) * args.batch_size)
    return Report(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  processes=accelerator.num_processes, batch_per_process=args.batch_size,
                  mean_tokens_per_row=round(tokens, 1), steps=args.steps, step_seconds=round(seconds, 4),
                  samples_per_s_per_gpu=round(args.batch_size / seconds, 3),
                  samples_per_s_total=round(args.batch_size * accelerator.num_processes / seconds, 3),
                  peak_memory_gib=round(memory_max, 2) if memory is not None else None,
                  mfu=round(flops / seconds / (peak * 1e12), 4) if peak else None,
                  trainable_params=trainable, total_params=total,
                  gradient_checkpointing=args.gradient_checkpointing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="toy shapes, fp32: a CPU smoke test of this script")
    parser.add_argument("--batch_size", type=int, default=16, help="questions per process per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, kernels)")
    parser.add_argument("--lora_r", type=int, default=64)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--peak_tflops", type=float, default=0.0, help="peak dense bf16 TFLOP/s (default: by card)")
    parser.add_argument("--json", default="", help="also append the report as one JSON line to this file")
    args = parser.parse_args()
    report = run(args)
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    state.destroy_process_group()  # leaving with a live gloo/nccl group aborts the process at exit
    if not state.is_main_process:
        return
    for key, value in asdict(report).items():
        print(f"{key:>24}: {value}")
    if args.json:
        with open(args.json, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(report)) + "\n")


if __name__ == "__main__":
    main()
