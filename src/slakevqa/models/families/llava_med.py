"""LLaVA-Med v1.5, and LLaVA with a Mistral language model: the family slakevqa started with.

Checkpoints: ``microsoft/llava-med-v1.5-mistral-7b`` (original format, converted once by
:mod:`slakevqa.models.convert`), and HF-format ``LlavaForConditionalGeneration`` folders whose
``text_config.model_type`` is ``mistral`` (our converted, trained and merged folders).

Chat format: LLaVA-Med v1.5's ``conv_mistral_instruct`` (LLAMA_2 separator style, empty system prompt,
sep2 ``</s>``), image first::

    <s>[INST] <image>×576\\n{text} [/INST]                (generation)
    <s>[INST] <image>×576\\n{text} [/INST] {answer} </s>  (training; the loss covers `` {answer} </s>``)

Images: padded to square with the CLIP mean colour, CLIP resize and crop at 336 px, 576 tokens from
layer -2 without CLS (:mod:`slakevqa.models.processor`). Every fast path applies.
"""

from __future__ import annotations

from slakevqa.inputs.chat_format import ChatFormat
from slakevqa.models.families import llava_clip
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

IMAGE_TOKEN = llava_clip.IMAGE_TOKEN

# LLaVA-Med v1.5's chat format (llava/conversation.py, conv_mistral_instruct: LLAMA_2 separator style,
# empty system prompt, sep2 "</s>"), as a Hugging Face chat template of our own writing. Content is a
# string or a list of {"type": "image"} / {"type": "text"} items; the image always goes first, as
# upstream moves it there. Text is stripped, as upstream's model_vqa.py strips the question (SLAKE has
# questions ending in a space). A system message is wrapped LLAMA_2-style into the first turn. BOS comes
# from ``bos_token``: Hugging Face and vLLM pass the tokenizer's and then add no special tokens; our
# encoder renders with an empty one and lets the tokenizer add BOS (the same ids, tested).
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
    "{%- set text = items | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') | trim -%}"
    "{%- set has_image = items | selectattr('type', 'equalto', 'image') | list | length > 0 -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = '<<SYS>>\\n' ~ text ~ '\\n<</SYS>>\\n\\n' -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '[INST] ' ~ ns.system ~ ('" + IMAGE_TOKEN + "\\n' if has_image else '') ~ text ~ ' [/INST]' -}}"
    "{%- set ns.system = '' -%}"
    "{%- else -%}{{- ' ' ~ text ~ ' </s>' -}}{%- endif -%}"
    "{%- endfor -%}"
)

CHAT = ChatFormat(name="llava_med_v1.5", template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN, image_end=IMAGE_TOKEN,
                  stop_token="</s>", bos_from_tokenizer=True)


def build_processor(tokenizer, image_size: int = 336, patch_size: int = 14):
    """LLaVA's processor with LLaVA-Med's template: ``(image_size // patch_size) ** 2`` image tokens."""
    return llava_clip.build_processor(tokenizer, image_size=image_size, patch_size=patch_size,
                                      chat_template=CHAT_TEMPLATE)


def process(processor, image) -> ImageInputs:
    """CLIP pixels of one image (pad to square first) and its token count ``(size // patch) ** 2``."""
    pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
    return ImageInputs({"pixel_values": pixels}, llava_clip.image_token_count(processor))


LLAVA_PARTS = Parts(vision="model.vision_tower", projector="model.multi_modal_projector",
                    language_model="model.language_model")
# Liger (read for liger-kernel 0.8.5): RMSNorm, SwiGLU and RoPE; 1.14x LoRA steps at 7B (benchmarks/RESULTS.md)
LIGER = LigerKernels(function="apply_liger_kernel_to_mistral", modeling="transformers.models.mistral.modeling_mistral",
                     replaced=("apply_rotary_pos_emb", "MistralRMSNorm", "MistralMLP"), text_model_types=("mistral",))

FAMILY = ModelFamily(
    name="llava_med", title="LLaVA-Med v1.5 (LLaVA, Mistral language model)",
    hub_ids=("microsoft/llava-med-v1.5-mistral-7b",), model_type="llava", text_model_types=("mistral",),
    model_class="LlavaForConditionalGeneration", processor_class="LlavaProcessor", chat=CHAT,
    images=ImagePipeline(build_processor=build_processor, process=process, collate=stacked,
                         tower_features=llava_clip.tower_features,
                         image_tokens_note="336 px after pad-to-square, 576 tokens (CLIP ViT-L/14, layer -2, no CLS)",
                         pad_to_square="padded with the CLIP mean colour (122, 116, 104), centred, as LLaVA-Med"),
    parts=LLAVA_PARTS,
    fast=FastPaths(shared_prefix_eval=True, packed_prefill=True, packing=True, varlen_attention=True,
                   cuda_graphs=True, feature_cache=True, liger=LIGER),
    # LLaMA-Factory has no template of LLaVA-Med v1.5's format: its llava_next_mistral and mistral write
    # "[INST] {content}[/INST]" (no space before [/INST]; mistral has no image plugin), so none is named
    llama_factory_template="", position_ids=left_padded_positions, next_positions=continue_positions,
    notes="original-format checkpoints (model_type llava_mistral) are converted once into the cache")
