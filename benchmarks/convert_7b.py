"""Convert a random-weight LLaVA-Med-7B-shaped original checkpoint and load it: time and memory.

    python benchmarks/convert_7b.py                 # GPU box: real shape, ~15 GB bf16 on disk
    python benchmarks/convert_7b.py --tiny          # CPU: same code path at toy size, seconds

Builds ``model_type: llava_mistral`` shards as microsoft/llava-med-v1.5-mistral-7b
ships them (the shape ``slakevqa.models.shapes.LLAVA_MED_7B``: Mistral-7B text
4096/14336/32 layers/32 heads/8 kv/vocab 32000/rope_theta 1e6; CLIP ViT-L/14-336 vision;
projector 1024->4096->4096; 4 bf16 safetensors shards + index + config.json +
tokenizer.model; ``--tiny``: the shape ``TINY``), then:

1. converts it with ``slakevqa.models.convert.convert_checkpoint`` (streaming, one shard
   in memory) and, as the baseline, the naive way (every tensor in memory at once);
2. loads the result with ``slakevqa.models.loading.load_model`` (auto dtype/device);
3. generates once on a synthetic image.

Prints conversion time, load time, generation time and peak memory (host RSS sampled
from /proc, GPU from torch) per phase; writes ``results.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

if TYPE_CHECKING:  # annotations only: torch and transformers are imported when a phase runs
    import torch
    from transformers import LlavaConfig

    from slakevqa.models.shapes import LlavaShape

SHARD_BYTES = 4_950_000_000  # upstream's shards are ~4.9-5.0 GB

# What microsoft/llava-med-v1.5-mistral-7b's config.json (reference §2.1) holds besides the fields
# slakevqa.models.tiny_original.original_config derives from the model: its dtype, its CLIP tower's
# hub name and the leftover keys of LLaVA-Med's training code.
UPSTREAM_KEYS = {
    "torch_dtype": "bfloat16", "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_projector_lr": None,
    "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False, "feature_outs": "encoder+decoder",
    "img_size": 640, "vision_backbone": "convnextlarge", "segtok_posembed": "sincos",
    "proj_vis_to_txt_tokens": False, "prompt_segtok_w_instruct": False, "tune_vision_tokenizer": "none",
    "vision_tokenizer_lr": None,
}
CLIP_FOLDER = "clip-vision"  # --tiny: its CLIP config is no hub tower, so it lives beside the checkpoint


class PeakRSS:
    """Samples this process's resident memory every 20 ms; ``peak`` in bytes since ``reset``."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, False
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def current() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self.current())
            time.sleep(0.02)

    def reset(self) -> None:
        self.peak = self.current()


def gpu_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak() -> int:
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def shape_of(tiny: bool) -> LlavaShape:
    """The model shape this benchmark writes: LLaVA-Med-7B, or the tests' tiny one for ``--tiny``."""
    from slakevqa.models.shapes import LLAVA_MED_7B, TINY

    return TINY if tiny else LLAVA_MED_7B


def original_config(llava: LlavaConfig, shape: LlavaShape, tiny: bool) -> dict:
    """The upstream ``llava_mistral`` config.json of ``llava`` (for ``--tiny`` its CLIP tower is a local folder)."""
    from slakevqa.models.tiny_original import original_config as derived_config

    config = {**derived_config(llava, base_vocab=shape.vocab_size), **UPSTREAM_KEYS}
    if tiny:
        config["mm_vision_tower"] = CLIP_FOLDER
    return config


def original_shapes(llava: LlavaConfig, base_vocab: int) -> dict[str, tuple[int, ...]]:
    """Original tensor names and shapes: the HF model of ``llava`` on ``meta``, names reverse-mapped,
    vocabulary rows cut to ``base_vocab`` (as ``tiny_original.original_tensors`` cuts them)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from slakevqa.models.tiny_original import original_name

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava)
    shapes = {}
    for name, parameter in model.named_parameters():
        target = original_name(name)
        rows = base_vocab if target in ("model.embed_tokens.weight", "lm_head.weight") else parameter.shape[0]
        shapes[target] = (rows, *parameter.shape[1:])
    return shapes


def random_tensor(name: str, shape: tuple[int, ...], device: str) -> torch.Tensor:
    """Norm weights 1, biases 0, everything else N(0, 0.02) in bf16."""
    import torch

    if name.endswith("norm.weight") or "layer_norm" in name or "layrnorm" in name:
        return torch.ones(shape, dtype=torch.bfloat16)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=torch.bfloat16)
    return (torch.randn(shape, device=device, dtype=torch.bfloat16) * 0.02).cpu()


def write_original(folder: Path, tiny: bool, device: str) -> float:
    """Write the random original checkpoint; returns its size in GB."""
    from safetensors.torch import save_file

    from slakevqa.models.shapes import llava_config
    from slakevqa.models.tiny_original import write_tokenizer
    from slakevqa.models.tokenizer import build_mistral_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    shape = shape_of(tiny)
    llava = llava_config(shape)
    if tiny:
        llava.vision_config.save_pretrained(str(folder / CLIP_FOLDER))
    config = original_config(llava, shape, tiny)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_tokenizer(build_mistral_tokenizer(folder / ".tok"), folder)
    shutil.rmtree(folder / ".tok")
    shapes = original_shapes(llava, shape.vocab_size)
    shards, current, size = [], [], 0
    for name in shapes:  # module order, as upstream's shards are
        nbytes = 2 * _numel(shapes[name])
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    shards.append(current)
    weight_map = {}
    for i, names in enumerate(shards):
        shard = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: random_tensor(n, shapes[n], device) for n in names}, str(folder / shard),
                  metadata={"format": "pt"})
        weight_map.update({n: shard for n in names})
    total = sum(2 * _numel(s) for s in shapes.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total / 1e9


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def naive_convert(source: Path, destination: Path) -> None:
    """Baseline: every tensor in memory at once (what a load-everything script does), one write."""
    import torch
    from safetensors.torch import save_file

    from slakevqa.models import original
    from slakevqa.models.convert import convert_tensors

    tensors = {}
    for path in original.weight_files(source):
        tensors.update(original.load_tensors(path))
    converted = convert_tensors(tensors, 32064, torch.bfloat16, skip_vision=False)
    destination.mkdir(parents=True, exist_ok=True)
    save_file(converted, str(destination / "model.safetensors"), metadata={"format": "pt"})


def phase(name: str, rss: PeakRSS, results: dict, work: Callable[[], object]) -> object:
    """Run ``work()``, recording seconds, peak host RSS and peak GPU memory under ``name``."""
    import torch

    gpu_reset()
    rss.reset()
    start = time.perf_counter()
    value = work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    results[name] = {"seconds": round(time.perf_counter() - start, 2), "peak_host_rss_gb": round(rss.peak / 1e9, 2),
                     "peak_gpu_gb": round(gpu_peak() / 1e9, 2)}
    print(f"{name:<22} {results[name]['seconds']:>8.2f} s   host RSS peak {results[name]['peak_host_rss_gb']:>6.2f} GB"
          f"   GPU peak {results[name]['peak_gpu_gb']:>6.2f} GB", flush=True)
    return value


def environment() -> dict:
    import torch
    import transformers

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "card": card,
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="work_convert_7b", help="scratch folder (~45 GB at full size)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for a CPU dry run")
    parser.add_argument("--device", default="auto", help="device for random init and loading")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--no_baseline", action="store_true", help="skip the naive in-memory conversion")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints (default: delete them)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    from slakevqa.models.convert import convert_checkpoint
    from slakevqa.models.families import family_named
    from slakevqa.models.inspect import generate_once, synthetic_image
    from slakevqa.models.loading import load_model, pick_device

    args = parse_args(argv)
    out, rss, results = Path(args.out), PeakRSS(), {"environment": environment(), "tiny": args.tiny}
    device = pick_device(args.device)
    print(f"{results['environment']}\nscratch: {out}", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    size = phase("build original", rss, results, lambda: write_original(out / "original", args.tiny, device))
    results["checkpoint_gb"] = round(size, 2)
    report = phase("convert (streaming)", rss, results,
                   lambda: convert_checkpoint(out / "original", out / "hf", log=lambda line: None))
    results["converted_tensors"] = report.n_tensors
    if not args.no_baseline:
        phase("convert (naive)", rss, results, lambda: naive_convert(out / "original", out / "naive"))
        shutil.rmtree(out / "naive")
    loaded = phase("load", rss, results, lambda: load_model(out / "hf", device=device, log=lambda line: None))
    results["load_dtype"], results["parameters"] = loaded.dtype, sum(p.numel() for p in loaded.model.parameters())
    image_side = loaded.model.config.vision_config.image_size
    text, n_new, _ = phase("generate", rss, results, lambda: generate_once(
        loaded.model, loaded.processor, family_named(loaded.family), synthetic_image(image_side), "Is there a mass?",
        args.max_new_tokens))
    results["generated_tokens"], results["generated_text"] = n_new, text
    print(f"{results['parameters']:,} parameters ({loaded.dtype} on {device}); checkpoint {size:.2f} GB; "
          f"generated {n_new} tokens: {text!r}")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}")
    if not args.keep:
        for name in ("original", "hf"):
            shutil.rmtree(out / name, ignore_errors=True)
    loaded = None  # drop the model before emptying the CUDA cache (the lambdas above hold the name)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
