"""Training throughput on 1 and 2 GPUs at LLaVA-Med-7B shape (random weights): samples/s per GPU, memory, MFU.

    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 1 benchmarks/train_scaling.py
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 benchmarks/train_scaling.py
    accelerate launch --config_file configs/accelerate/ddp_cpu.yaml benchmarks/train_scaling.py --tiny   # CPU smoke

What one step is, per process: a padded batch of ``--batch_size`` (16) questions of
SLAKE length (576 image tokens + 24..64 text tokens, ~620 in all, padded to the
longest), one 336 px image each, forward + backward through slakevqa's
``answer_loss`` (logits only at answer positions), AdamW step. The model is
Mistral-7B (4096 hidden, 14336 MLP, 32 layers, 32 heads / 8 KV, vocab 32064) +
CLIP ViT-L/14-336 (1024 / 4096 / 24 layers / 16 heads) + GELU projector in bf16,
LoRA r=64 on every linear layer of the language model and on the projector;
the vision tower is frozen. DDP over processes (weak scaling: each GPU takes its
own 16 questions), so scaling efficiency = per-GPU samples/s at 2 GPUs / at 1.

MFU counts the FLOPs the step must do, not what it recomputes (gradient
checkpointing's extra forward is excluded): per text token 2N forward + 2N for
input gradients through the frozen language model (its weight gradients are not
computed) + 6 N_lora, plus attention 4·L·s·d forward and 8·L·s·d backward; the
frozen vision tower and projector forward only (2 N_vision per patch + attention).
Peak: 989 TFLOP/s dense bf16 for H100/H200 SXM (``--peak_tflops`` otherwise).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import torch

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
LORA_TARGETS = (r".*(language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
                r"|multi_modal_projector\.linear_[12])")


@dataclass(frozen=True)
class Shape:
    hidden: int = 4096
    mlp: int = 14336
    layers: int = 32
    heads: int = 32
    kv_heads: int = 8
    vocab: int = 32064
    vision_hidden: int = 1024
    vision_mlp: int = 4096
    vision_layers: int = 24
    vision_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    text_tokens: tuple[int, int] = (24, 64)  # prompt + answer tokens around the image, per question

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


TINY = Shape(hidden=64, mlp=128, layers=2, heads=4, kv_heads=2, vocab=512, vision_hidden=32, vision_mlp=64,
             vision_layers=2, vision_heads=2, image_size=32, patch_size=8, text_tokens=(8, 24))


def build_model(shape: Shape, dtype: torch.dtype, device: torch.device):
    """Random-weight LLaVA at ``shape``, built directly on ``device`` in ``dtype`` (no CPU copy of 7B)."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, MistralConfig

    vision = CLIPVisionConfig(hidden_size=shape.vision_hidden, intermediate_size=shape.vision_mlp,
                              num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
                              image_size=shape.image_size, patch_size=shape.patch_size, hidden_act="quick_gelu",
                              projection_dim=768)
    text = MistralConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.mlp,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, max_position_embeddings=4096, rope_theta=1e6,
                         sliding_window=None, tie_word_embeddings=False, pad_token_id=0)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=shape.vocab - 64,
                         projector_hidden_act="gelu", vision_feature_layer=-2,
                         vision_feature_select_strategy="default", image_seq_length=shape.image_tokens,
                         multimodal_projector_bias=True, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def add_lora(model, r: int):
    """LoRA r on every language-model linear layer and the projector; everything else frozen."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules=LORA_TARGETS))


def make_batch(shape: Shape, batch_size: int, image_token: int, device: torch.device, dtype: torch.dtype,
               generator: torch.Generator) -> dict:
    """Right-padded rows ``[bos, image x 576, text...]``; the last 4 text tokens of each row are the answer."""
    lengths = torch.randint(*shape.text_tokens, (batch_size,), generator=generator) + shape.image_tokens + 1
    width = int(lengths.max())
    ids = torch.randint(100, image_token - 1, (batch_size, width), generator=generator)
    ids[:, 0] = 1
    ids[:, 1:1 + shape.image_tokens] = image_token
    mask = torch.arange(width)[None, :] < lengths[:, None]
    ids[~mask] = 0
    labels = torch.full_like(ids, -100)
    for row, length in enumerate(lengths.tolist()):
        labels[row, length - 4:length] = ids[row, length - 4:length]
    pixels = torch.randn(batch_size, 3, shape.image_size, shape.image_size, generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": mask.long().to(device), "labels": labels.to(device),
            "pixel_values": pixels.to(device, dtype)}


def step_flops(model, shape: Shape, batch: dict) -> float:
    """Model FLOPs of one forward+backward (see the module docstring), for this process's batch."""
    n_lm = sum(p.numel() for n, p in model.named_parameters() if "language_model" in n and "lora_" not in n)
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    n_vision = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n)
    mask = batch["attention_mask"]
    tokens, rows, s = int(mask.sum()), mask.shape[0], mask.shape[1]
    text = tokens * (4 * n_lm + 6 * n_lora + 12 * shape.layers * s * shape.hidden)
    patches = shape.image_tokens + 1
    vision = rows * patches * (2 * n_vision + 4 * shape.vision_layers * patches * shape.vision_hidden)
    return float(text + vision)


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

    accelerator = Accelerator(cpu=use_cpu())
    shape = TINY if args.tiny else Shape()
    device = accelerator.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = add_lora(build_model(shape, dtype, device), args.lora_r)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(1000 + accelerator.process_index)  # each rank its own questions
    image_token = shape.vocab - 64
    batches = [make_batch(shape, args.batch_size, image_token, device, dtype, generator) for _ in range(4)]
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
