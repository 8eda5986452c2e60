"""Random-weight models of the real LLaVA-Med-7B shape, for benchmarks and memory planning.

The shape of microsoft/llava-med-v1.5-mistral-7b after conversion: Mistral-7B text
(4096 hidden, 14336 MLP, 32 layers, 32 heads, 8 KV heads, rope_theta 1e6, vocabulary
padded to 32064), CLIP ViT-L/14 at 336 px (1024 hidden, 24 layers, 16 heads, 576
image tokens from layer -2 without CLS), 2-layer GELU projector 1024 -> 4096 -> 4096.
About 7.57 B parameters.

    model, processor = build_random_llava_med_7b(device="cuda", dtype="bf16")
"""

from __future__ import annotations

from slakevqa.models.processor import build_processor
from slakevqa.models.tiny import build_tokenizer, padded_vocab_size
from slakevqa.models.tokenizer import IMAGE_TOKEN

IMAGE_SIZE, PATCH_SIZE = 336, 14


def llava_med_7b_config(tokenizer):
    """``LlavaConfig`` of the converted LLaVA-Med v1.5 7B."""
    from transformers import CLIPVisionConfig, LlavaConfig, MistralConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=768, hidden_act="quick_gelu")
    text = MistralConfig(vocab_size=padded_vocab_size(len(tokenizer)), hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rope_theta=1e6,
                         max_position_embeddings=32768, sliding_window=None, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlavaConfig(vision_config=vision, text_config=text,
                       image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), projector_hidden_act="gelu",
                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                       image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2, multimodal_projector_bias=True,
                       tie_word_embeddings=False)


def build_random_llava_med_7b(device: str = "cuda", dtype: str = "bf16", seed: int = 0,
                              attn_implementation: str = "sdpa"):
    """The real-shape model with random weights, built directly on ``device``; and its processor.

    Weights are N(0, 0.02) as the config's initializer says; a random model's
    answers are noise, but every tensor shape, kernel and byte moved is real.
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    tokenizer = build_tokenizer("mistral")
    config = llava_med_7b_config(tokenizer)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, torch_dtype=torch_dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), build_processor(tokenizer, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
