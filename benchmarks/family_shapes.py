"""Random-weight models of the new families at their published shapes, for the GPU walkthrough.

    python benchmarks/walkthrough_steps.py build-family qwen2_5_vl models/qwen-hf     # GPU box, bf16
    python benchmarks/walkthrough_steps.py build-family qwen2_5_vl models/qwen-hf --tiny   # CPU rehearsal

Shapes are the published ``config.json`` of each family's reference checkpoint, written in the family's
module (``published_config``; the parameter counts the builder prints are the check):

=================  ===================================================================  ==========
family             reference checkpoint and what its config says                         parameters
=================  ===================================================================  ==========
``qwen2_5_vl``     Qwen/Qwen2.5-VL-7B-Instruct: Qwen2 text 3584/18944, 28 layers, 28/4     ~8.29 B
                   heads, vocabulary 152064, M-RoPE [16, 24, 24]; ViT 1280/3420, 32 blocks,
                   window 112, full attention at 7/15/23/31, merger to 3584
``gemma3``         google/gemma-3-4b-it (MedGemma-4B-it the same): text 2560/10240, 34 layers,  ~4.30 B
                   8/4 heads of 256, sliding window 1024 (5 local : 1 global), vocabulary
                   262208; SigLIP 1152/4304, 27 layers, 896 px, patch 14; 256 tokens per image
``llava_1_5``      llava-hf/llava-1.5-7b-hf: Llama-2-7B (Vicuna v1.5) 4096/11008, 32 layers,  ~7.06 B
                   32/32 heads, vocabulary 32064; CLIP ViT-L/14-336 as LLaVA-Med's
=================  ===================================================================  ==========

Tokenizers: Qwen2.5's and Gemma 3's real files (``bench_data/tokenizers/<family>/*.xz``, from
``../shared/tokenizers``); LLaVA-1.5 has no Vicuna tokenizer here, so Mistral-7B's SentencePiece file
(the same 32000-token size, loaded as llava-hf loads Vicuna's: ``legacy=False``) stands in for it.
"""

from __future__ import annotations

import lzma
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZERS = ROOT / "bench_data" / "tokenizers"


def tokenizer_folder(name: str, work: Path) -> Path:
    """``work/<name>`` holding the decompressed ``tokenizer.json`` and ``tokenizer_config.json`` of a family."""
    source = {"qwen2_5_vl": "qwen2_5", "gemma3": "gemma3"}[name]
    folder = work / f"tokenizer-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    for packed in sorted((TOKENIZERS / source).glob("*.xz")):
        (folder / packed.stem).write_bytes(lzma.decompress(packed.read_bytes()))
    return folder


def family_tokenizer(name: str, work: Path):
    """The tokenizer a family's walkthrough model carries (module docstring)."""
    from transformers import AutoTokenizer

    if name != "llava_1_5":
        return AutoTokenizer.from_pretrained(str(tokenizer_folder(name, work)))
    from transformers import LlamaTokenizer

    from slakevqa.models.tokenizer import add_llava_tokens, mistral_tokenizer_file

    stand_in = work / "tokenizer-llava_1_5"
    stand_in.mkdir(parents=True, exist_ok=True)
    (stand_in / "tokenizer.model").write_bytes(Path(mistral_tokenizer_file()).read_bytes())
    tokenizer = LlamaTokenizer.from_pretrained(str(stand_in), legacy=False, add_bos_token=True, add_eos_token=False)
    add_llava_tokens(tokenizer)
    return tokenizer


def random_family_model(name: str, work: Path, tiny: bool):
    """``(model, processor)`` of family ``name`` with random weights: its published shape in bf16 on CUDA, or its
    tiny one in fp32; the tokenizer is the family's walkthrough tokenizer (module docstring), made under ``work``."""
    import importlib

    import torch
    from transformers import AutoModelForImageTextToText

    module = importlib.import_module(f"slakevqa.models.families.{name}")
    tokenizer = family_tokenizer(name, work)
    if tiny:
        return module.build_tiny(tokenizer, seed=0)
    config = module.published_config(tokenizer)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), module.build_processor(tokenizer)


def build_family(name: str, folder: Path, tiny: bool) -> str:
    """Write a random model of family ``name`` (:func:`random_family_model`) to ``folder`` with its processor;
    returns a one-line description."""
    from slakevqa.models.tiny import save_llava

    model, processor = random_family_model(name, folder.parent, tiny)
    save_llava(model.eval(), processor, folder)
    n = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__}: {n / 1e9:.2f} B parameters ({next(model.parameters()).dtype}) -> {folder}"
