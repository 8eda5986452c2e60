"""Random-weight LLaVA models built straight on the device, for benchmarks and memory planning.

A random model's answers are noise, but at :data:`~slakevqa.models.shapes.LLAVA_MED_7B`
every tensor shape, kernel and byte moved is the real model's (about 7.57 B parameters).

    model, processor = build_random_llava_med_7b(device="cuda", dtype="bf16")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slakevqa.models.families.llava_med import build_processor
from slakevqa.models.shapes import LLAVA_MED_7B, llava_config
from slakevqa.models.tiny import build_tokenizer

if TYPE_CHECKING:  # annotations only: importing transformers at module load would cost seconds
    from transformers import LlavaConfig, LlavaForConditionalGeneration


def random_llava(config: LlavaConfig, device: str = "cuda", dtype: str = "bf16", seed: int = 0,
                 attn_implementation: str = "sdpa") -> LlavaForConditionalGeneration:
    """The model of ``config`` with N(0, initializer_range) weights, allocated on ``device`` in ``dtype``.

    Built on the device directly: a 7B model never passes through host memory in fp32.
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    with torch.device(device):
        return LlavaForConditionalGeneration._from_config(config, dtype=torch_dtype)


def build_random_llava_med_7b(device: str = "cuda", dtype: str = "bf16", seed: int = 0,
                              attn_implementation: str = "sdpa"):
    """The LLaVA-Med-7B-shaped model with random weights, on ``device``, in eval mode; and its processor.

    Uses the real Mistral tokenizer (needs ``mistral-common``), so token ids are LLaVA-Med's.
    """
    tokenizer = build_tokenizer("mistral")
    model = random_llava(llava_config(LLAVA_MED_7B, tokenizer), device, dtype, seed, attn_implementation)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = build_processor(tokenizer, image_size=LLAVA_MED_7B.image_size, patch_size=LLAVA_MED_7B.patch_size)
    return model.eval(), processor
