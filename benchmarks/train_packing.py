"""Training throughput on real SLAKE batches at the LLaVA-Med-7B shape: one row per question vs packed by image.

    # GPU box (bench_data/ from benchmarks/prepare_bench_data.py, carried):
    SLAKEVQA_MISTRAL_TOKENIZER=bench_data/tokenizer.model PYTHONPATH=src \\
        python benchmarks/train_packing.py --slake_root bench_data/Slake1.0 --split test
    # CPU smoke test at toy size:
    PYTHONPATH=src python benchmarks/train_packing.py --tiny --slake_root DIR --steps 3
    # another family at its published shape (benchmarks/family_shapes.py; bench_data/tokenizers carried):
    PYTHONPATH=src python benchmarks/train_packing.py --family qwen2_5_vl --slake_root bench_data/Slake1.0 \
        --modes naive+ckpt,packed+ckpt+varlen --batch_size 16

Every mode trains the same model (random weights, bf16, sdpa; LoRA r=64 on every linear
layer of the language model, the projector trained fully, the vision tower frozen, as
issue 7 specifies) with slakevqa's own ``ExampleEncoder`` and ``answer_loss`` on the
split's real questions, prompts and images, batches of ``--batch_size`` questions:

* ``naive``: one right-padded row per question, random order (``--no-pack_images
  --no-cache_image_features``), the reference toolkit's layout;
* ``packed``: batches follow the image, one row per image with its questions as
  segments, vision features cached (the defaults);
* ``+ckpt``: gradient checkpointing; ``+peftcast``: peft's default precision handling
  (fp32 adapters, every adapter input cast to fp32), which ``naive`` always uses and
  ``slakevqa train`` replaces by bf16 autocast (``adapters_under_autocast``); ``+cudnn``:
  let sdpa pick cuDNN attention (``naive`` always may; see ``slakevqa.kernels.attention``);
* ``+ckpt2``: gradient checkpointing on every second decoder layer of the language model only
  (less recompute, more memory); ``+liger``: Liger's RMSNorm/SwiGLU/RoPE kernels; ``+compile``:
  each decoder layer compiled (both from ``slakevqa.training.speed_levers``, as ``--kernels liger``
  and ``--compile_layers`` train); ``+varlen``: packed rows' attention through flash attention's
  variable-length kernel (``slakevqa.kernels.segment_attention``, ``--varlen_attention``, the default of
  ``slakevqa train``) instead of sdpa over the dense segment mask; ``+keepN`` (with ``+ckpt``):
  the last N decoder layers keep their activations (no recompute), the others are checkpointed; with
  ``+varlen`` a packed batch's rows lie end to end in one row where the kernel serves (as ``slakevqa train``
  builds them), ``+padded`` keeps them one padded row per image.

Every mode starts from the same weights (the trainable ones are restored and the RNG reseeded,
a new optimiser each time) and records every step's loss (``losses``, warmup included), so
modes with the same batches (every ``packed`` mode) compare loss for loss. Liger and compilation
are undone after their mode, so any order works; a mode that fails records ``error`` and the
next one runs. Compile modes compile in their first (warmup) steps: give them ``--warmup 2``.

Reports samples/s, peak memory and model FLOP utilisation. MFU counts the FLOPs of
the tokens each step actually runs (so packing's saved work is not counted as work):
per text token 4N of the frozen language model (forward + input gradients) + 6N of
the adapters, attention 12·d·L per (query, key) pair the mask allows, and the
vision forward for images not yet cached. Peak: 989 TFLOP/s dense bf16 (H100/H200 SXM). ``--family``
other than ``llava_med`` trains that family's random model at its published shape the same way (its own
packing rules: Qwen2.5-VL's M-RoPE positions, Gemma 3's image block; no feature cache where the family has
none) and reports no FLOPs (the count above is LLaVA's).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PEAK_TFLOPS = 989.0
SUFFIXES = {"ckpt", "ckpt2", "peftcast", "cudnn", "liger", "compile", "varlen", "keepN", "padded"}


def suffix_kind(part: str) -> str:
    """``keep8`` -> ``keepN``; other suffixes are themselves."""
    return "keepN" if part.startswith("keep") and part[4:].isdigit() else part


def build(tiny: bool, device: str, family: str = "llava_med"):
    import tempfile

    import torch

    if family != "llava_med":
        from family_shapes import random_family_model

        return random_family_model(family, Path(tempfile.mkdtemp(prefix="train_packing_")), tiny)
    if tiny:
        from slakevqa.models.tiny import build_tiny_llava

        model, processor = build_tiny_llava("mistral")
        return model.to(device), processor
    from slakevqa.models.random_llava import build_random_llava_med_7b

    model, processor = build_random_llava_med_7b(device=device, dtype="bf16")
    torch.manual_seed(0)
    return model, processor


def attention_pairs(batch: dict) -> int:
    """(query, key) pairs the mask allows: exact for 4-D masks, causal triangles for padded rows; a flat batch's
    from its layout's sequences (its mask is a stand-in)."""
    layout = batch.get("segment_layout")
    if layout is not None and layout.flat:
        pairs = 0
        for part, causal in ((layout, True), (layout.bidirectional, False)):
            if part is None:
                continue
            q, k = (part.cu_q[1:] - part.cu_q[:-1]).long(), (part.cu_k[1:] - part.cu_k[:-1]).long()
            pairs += int((q * k - (q * (q - 1) // 2 if causal else 0)).sum())  # causal: the end-aligned triangle
        return pairs
    mask = batch["attention_mask"]
    if mask.dim() == 4:
        return int(mask.sum())
    lengths = mask.sum(dim=1)
    return int((lengths * (lengths + 1) // 2).sum())


def step_flops(counts: dict, batch: dict, pad_id: int, new_images: int) -> float:
    tokens = int((batch["input_ids"] != pad_id).sum())
    text = tokens * (4 * counts["lm"] + 6 * counts["lora"])
    attention = 12 * counts["hidden"] * counts["layers"] * attention_pairs(batch)
    return float(text + attention + new_images * counts["vision_per_image"])


def profile_steps(step, steps: int = 2) -> str:
    """The top CUDA kernels and the CPU/GPU totals of ``steps`` calls of ``step()`` (after the timed ones)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60)
    return table


def checkpointing(model, every: int, keep: int = 0) -> None:
    """Gradient checkpointing on every ``every``-th decoder layer of the language model (0: none), but not on
    the last ``keep`` layers."""
    from slakevqa.training.speed_levers import language_model

    if not every:
        model.gradient_checkpointing_disable()
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = language_model(model).layers
    for index, layer in enumerate(layers):  # read at each call (transformers 5.17 and 5.24)
        layer.gradient_checkpointing = index % every == 0 and index < len(layers) - keep


def run_mode(model, processor, samples, builder, args, packed: bool, ckpt_every: int, peft_cast: bool,
             cudnn: bool, liger: bool = False, compile: bool = False, varlen: bool = False, keep: int = 0,
             padded: bool = False) -> dict:
    """Train ``args.warmup + args.steps`` steps in one mode; the levers it applies are undone on the way out."""
    from slakevqa.training.speed_levers import apply_speed_levers

    device = next(model.parameters()).device
    levers, undo = apply_speed_levers(model, "liger" if liger else "plain", compile, device.type)
    try:
        return {**train_steps(model, processor, samples, builder, args, packed, ckpt_every, peft_cast, cudnn,
                              varlen, keep, padded), "levers": levers}
    finally:
        undo()


def train_steps(model, processor, samples, builder, args, packed: bool, ckpt_every: int, peft_cast: bool,
                cudnn: bool, varlen: bool = False, keep: int = 0, padded: bool = False) -> dict:
    import contextlib

    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    from slakevqa.kernels.attention import attention_kernels
    from slakevqa.kernels.packing import flat_for_kernel
    from slakevqa.kernels.segment_attention import segments_attended, varlen_serves
    from slakevqa.models.families import family_of
    from slakevqa.models.families.family import packed_inputs
    from slakevqa.models.image_features import ImageFeatureCache
    from slakevqa.training.examples import ExampleEncoder
    from slakevqa.training.loss import answer_loss
    from slakevqa.training.precision import adapter_layers
    from slakevqa.training.schedule import micro_batch_indices
    from slakevqa.training.train import image_group_ids

    device = next(model.parameters()).device
    checkpointing(model, ckpt_every, keep)
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = True
    if not peft_cast:  # what slakevqa train's adapters_under_autocast does inside each step
        for layer in adapter_layers(model):
            layer.cast_input_dtype_enabled = False
    autocast = contextlib.nullcontext() if peft_cast or device.type != "cuda" else torch.autocast("cuda", torch.bfloat16)
    family = family_of(model)
    features = ImageFeatureCache(model) if packed and family.fast.feature_cache else None
    # packed rows laid end to end where the varlen kernel serves, as slakevqa train does (+padded: kept padded)
    encoder = ExampleEncoder(builder, processor, 512, 64, pack=packed, features=features, family=family,
                             flat=varlen and not padded and varlen_serves(model))
    groups = image_group_ids(samples, builder) if packed else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    counts = parameter_counts(model) if family.name == "llava_med" else None  # FLOPs: LLaVA's count only
    pad = processor.tokenizer.pad_token_id
    model.train()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    state = {"step": 0, "seconds": 0.0, "flops": 0.0, "rows": 0, "tokens": 0, "losses": []}

    def one_step(timed: bool = True) -> None:
        began = time.perf_counter()
        cached_before = len(features.cache) if features else 0
        rows = micro_batch_indices(state["step"], len(samples), args.batch_size, 0, groups=groups)
        batch, _ = encoder.batch([samples[i] for i in rows])
        new_images = (len(features.cache) - cached_before) if features else batch["input_ids"].shape[0]  # a row, an image
        batch = {k: v.to(device) for k, v in batch.items() if varlen or k != "segment_layout"}
        batch = packed_inputs(family, model, batch)
        if encoder.flat:
            batch = flat_for_kernel(batch)
        # backward too: checkpointing recomputes attention there
        with autocast, attention_kernels(cudnn), segments_attended(model, varlen):
            loss = answer_loss(model, batch).loss
            loss.backward()
        if timed:  # every step of the mode, warmup included (not the profiled ones); read after the step's sync
            state["losses"].append(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if timed and state["step"] >= args.warmup:
            state["seconds"] += time.perf_counter() - began
            state["flops"] += step_flops(counts, batch, pad, new_images) if counts else 0.0
            state["rows"] += batch["input_ids"].shape[0]
            state["tokens"] += int((batch["input_ids"] != pad).sum())
        state["step"] += 1

    for _ in range(args.warmup + args.steps):
        one_step()
    seconds, flops, rows, tokens = state["seconds"], state["flops"], state["rows"], state["tokens"]
    if args.profile and device.type == "cuda":
        print(f"profile of {2} steps, packed={packed} ckpt_every={ckpt_every}:\n"
              + profile_steps(lambda: one_step(False)))
    optimizer = None  # free its state before the next mode (one_step above holds the name)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"batch": args.batch_size,
            "steps": args.steps, "samples_per_s": round(args.steps * args.batch_size / seconds, 2),
            "rows_per_step": round(rows / args.steps, 2), "tokens_per_step": round(tokens / args.steps),
            "step_s": round(seconds / args.steps, 4), "peak_gib": round(peak, 1) if peak else None,
            "flat": encoder.flat,
            "tflops": round(flops / seconds / 1e12, 1) if counts else None,
            "mfu": round(flops / seconds / 1e12 / PEAK_TFLOPS, 3) if device.type == "cuda" and counts else None,
            "losses": [round(float(loss), 5) for loss in state["losses"]]}


def mode_name(parts: list[str]) -> str:
    """The mode as results name it: ``naive`` always casts like peft and may use cuDNN, so those go unsaid."""
    packed = parts[0] == "packed"
    ckpt = "+ckpt2" if "ckpt2" in parts else "+ckpt" if "ckpt" in parts else ""
    keep = "".join(f"+{p}" for p in parts if suffix_kind(p) == "keepN")
    return (("packed" if packed else "naive") + ckpt + keep + ("+peftcast" if packed and "peftcast" in parts else "")
            + ("+cudnn" if packed and "cudnn" in parts else "") + ("+liger" if "liger" in parts else "")
            + ("+compile" if "compile" in parts else "") + ("+varlen" if "varlen" in parts else "")
            + ("+padded" if "padded" in parts else ""))


def trainable_snapshot(model) -> dict:
    """A copy of every trainable parameter (LoRA, projector): where each mode starts."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def restore(model, snapshot: dict) -> None:
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in snapshot:
                parameter.copy_(snapshot[name])
    model.zero_grad(set_to_none=True)


def parameter_counts(model) -> dict:
    from slakevqa.models.families.family import unwrapped

    config = unwrapped(model).config
    named = list(model.named_parameters())
    vision = sum(p.numel() for n, p in named if "vision_tower" in n)
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1
    text = config.text_config
    return {"lm": sum(p.numel() for n, p in named if "language_model" in n and "lora_" not in n)
            + sum(p.numel() for n, p in named if "lm_head" in n),
            "lora": sum(p.numel() for n, p in named if "lora_" in n or ("multi_modal_projector" in n and p.requires_grad)),
            "hidden": text.hidden_size, "layers": text.num_hidden_layers,
            "vision_per_image": patches * 2 * vision}


def main() -> None:
    import torch

    from slakevqa.data.slake import find_layout, load_split
    from slakevqa.inputs.builder import InputBuilder
    from slakevqa.inputs.vocab import ClosedVocab
    from slakevqa.models.image_features import kept_pixel_dtype
    from slakevqa.training.params import configure_trainable

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slake_root", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--modes", default="naive,packed,packed+ckpt,naive+ckpt",
                        help="comma-separated; MODE@N runs MODE at batch size N")
    parser.add_argument("--lora_dropout", type=float, default=0.05)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--family", default="llava_med", choices=("llava_med", "llava_1_5", "qwen2_5_vl", "gemma3"))
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table per mode")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    unknown = {suffix_kind(part) for mode in args.modes.split(",") for part in mode.partition("@")[0].split("+")[1:]}
    unknown -= SUFFIXES
    if unknown:
        parser.error(f"--modes: unknown suffix {', '.join(sorted(unknown))}; known: {', '.join(sorted(SUFFIXES))}")

    root = Path(args.slake_root)
    samples = load_split(root, args.split, "en")
    builder = InputBuilder.create(find_layout(root), ClosedVocab.empty())  # routes from questions alone
    model, processor = build(args.tiny, device, args.family)
    builder.pixel_dtype = kept_pixel_dtype(model)  # as slakevqa train keeps them
    model = configure_trainable(model, use_lora=True, lora_r=64, lora_alpha=128, lora_dropout=args.lora_dropout,
                                lora_target_modules="all-linear", tune_mm_projector=True, freeze_vision_tower=True)
    results, default_batch = [], args.batch_size
    start = trainable_snapshot(model)
    for mode in args.modes.split(","):  # e.g. packed+ckpt@32: batch size 32
        name, _, size = mode.partition("@")
        args.batch_size = int(size) if size else default_batch
        parts = name.split("+")
        packed = parts[0] == "packed"
        restore(model, start)  # every mode from the same weights and RNG, with a fresh optimiser
        torch.manual_seed(0)
        try:
            result = run_mode(model, processor, samples, builder, args, packed=packed,
                              ckpt_every=2 if "ckpt2" in parts else 1 if "ckpt" in parts else 0,
                              peft_cast=not packed or "peftcast" in parts, cudnn=not packed or "cudnn" in parts,
                              liger="liger" in parts, compile="compile" in parts, varlen="varlen" in parts,
                              keep=sum(int(p[4:]) for p in parts if suffix_kind(p) == "keepN"), padded="padded" in parts)
        except Exception as error:  # one failing lever (a Triton or compile error, out of memory) skips its mode only
            traceback.print_exc()
            result = {"batch": args.batch_size, "error": f"{type(error).__name__}: {error}"[:2000]}
        if device == "cuda" and "error" in result:  # after the except block: its traceback held the mode's tensors
            gc.collect()
            torch.cuda.empty_cache()
        result = {"mode": mode_name(parts), **result,
                  "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                  "lora_dropout": args.lora_dropout}
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
