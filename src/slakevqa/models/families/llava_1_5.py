"""LLaVA-1.5: LLaVA with a Vicuna-7B v1.5 (Llama-2) language model, in llava-hf's format.

Checkpoints: ``llava-hf/llava-1.5-7b-hf`` (``LlavaForConditionalGeneration``, ``LlavaProcessor``), and any
HF-format LLaVA folder whose ``text_config.model_type`` is ``llama``. Same classes and module paths as
LLaVA-Med (:mod:`.llava_med`); the language model and the chat format differ.

Chat format: llava-hf's ``chat_template.json``, verbatim (:data:`CHAT_TEMPLATE`), image first::

    <s>USER: <image>×576\\n{text} ASSISTANT:              (generation; BOS from the tokenizer)
    <s>USER: <image>×576\\n{text} ASSISTANT: {answer}</s>  (training; the loss covers `` {answer}</s>``)

The template closes an assistant turn with a space and no EOS; LLaVA-1.5 was trained with Vicuna v1's
``sep2`` ``</s>`` straight after the answer, and generation stops at ``</s>``, so our training text ends
the answer with ``</s>`` instead of that space (``ChatFormat.answer_close``).

Tokenizer: real checkpoints carry Vicuna v1.5's Llama-2 SentencePiece vocabulary (32000) plus ``<image>``
32000 and ``<pad>`` 32001, which transformers' ``convert_llava_weights_to_hf.py`` adds (embeddings padded to
32064), as a ``LlamaTokenizer`` that adds BOS and no EOS. Its ``legacy`` flag decides one token: transformers 5
(5.24 read) rebuilds a ``LlamaTokenizer``'s pre-tokenizer from ``legacy`` alone (tokenizer.json's normalizer
is dropped; no flag means false), and false puts ``▁`` before the first text segment only, so
``<image>\\n{text}`` becomes ``[32000, 13, ...]``, whereas upstream LLaVA-1.5 tokenised the text after the
image on its own (``[-200, 29871, 13, ...]``, what ``legacy=True`` gives). Our encoder tokenises with the
checkpoint's own tokenizer, so our ids equal its processor's either way (both tested); loading with
``legacy=True``, as LLaVA-Med's family does, would give upstream's ids.

Images: LLaVA-1.5 was trained and evaluated with ``image_aspect_ratio: pad`` (``expand2square`` with the
CLIP mean colour, then CLIP 336 resize and centre crop); llava-hf's ``preprocessor_config.json`` is a
plain ``CLIPImageProcessor`` that crops without padding. We pad, as the model was trained: 576 tokens,
CLIP layer -2, CLS dropped (``default``), the pipeline of :mod:`.llava_med`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slakevqa.inputs.chat_format import ChatFormat
from slakevqa.models.families import llava_clip
from slakevqa.models.families.family import (
    FastPaths,
    ImagePipeline,
    LigerKernels,
    ModelFamily,
    continue_positions,
    left_padded_positions,
    stacked,
)
from slakevqa.models.families.llava_med import LLAVA_PARTS, process

if TYPE_CHECKING:  # annotations only: importing transformers at module load would cost seconds
    from transformers import PreTrainedTokenizerBase

IMAGE_TOKEN = llava_clip.IMAGE_TOKEN
STOP_TOKEN = "</s>"  # Vicuna v1's sep2; Llama-2's EOS, id 2
IMAGE_SIZE, PATCH_SIZE = 336, 14  # openai/clip-vit-large-patch14-336: 576 image tokens
TINY_INIT = 0.1  # the tiny model's initialisation std (tiny_config says why)

# llava-hf/llava-1.5-7b-hf chat_template.json, verbatim (the "\n" is a newline inside the Jinja string, as
# the JSON file decodes to). Read in transformers' tests/models/llava/test_processing_llava.py
# (prepare_processor_dict, "tiny processor created ... from llava-hf/llava-1.5-7b-hf") and in
# openvinotoolkit/openvino.genai src/cpp/src/tokenizer.cpp (chat_template_fallback_map: "llava-1.5,
# llava-v1.6-vicuna (chat_template.json)").
# It writes no BOS (the processor's tokenizer adds it: apply_chat_template tokenises with
# add_special_tokens unless the text starts with BOS) and no system prompt unless given a system message,
# which it would write bare before "USER:", i.e. upstream's "{system} USER: ...".
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
    "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


# The template ends an answer with ' ' and no EOS; a model trained on that would never learn to stop.
# Upstream LLaVA-1.5 (conv_vicuna_v1: sep " ", sep2 "</s>") wrote "ASSISTANT: {answer}</s>", so training
# writes the stop token where the template writes that space (answer_close); prompts are the template's own.
#     CHAT.training_text("Is there a mass?", "Yes") == 'USER: <image>\nIs there a mass? ASSISTANT: Yes</s>'
CHAT = ChatFormat(name="llava_1.5_vicuna", template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN, image_end=IMAGE_TOKEN,
                  stop_token=STOP_TOKEN, bos_from_tokenizer=True, answer_close=(" ", STOP_TOKEN))


def build_processor(tokenizer: PreTrainedTokenizerBase, image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE):
    """A ``LlavaProcessor`` with pad-to-square CLIP preprocessing (PIL backend) and :data:`CHAT_TEMPLATE`.

    llava-hf's processor_config.json: ``patch_size`` 14, ``vision_feature_select_strategy`` default,
    ``num_additional_image_tokens`` 1 (CLS, dropped), so 576 ``<image>`` per image at 336 px.
    """
    return llava_clip.build_processor(tokenizer, image_size=image_size, patch_size=patch_size,
                                      chat_template=CHAT_TEMPLATE)


def tiny_config(tokenizer: PreTrainedTokenizerBase, image_size: int = 32, patch_size: int = 8):
    """A tiny random LLaVA-1.5: CLIP (32 px, patch 8: 16 image tokens, 3 layers) + Llama (64 hidden, 2 layers,
    GQA 4/2).

    Vicuna's choices where they matter: RMS eps 1e-5, RoPE theta 10000 (Llama's default), untied head,
    GELU projector with biases, CLIP layer -2 with the ``default`` strategy. Initialisation std 0.1 and 3
    vision layers, as :data:`slakevqa.models.shapes.TINY`: with transformers' 0.02 and 2 layers (layer -2
    then leaves one in use) the demo's training stalls at 0.55 held-out CLOSED after 1,000 steps, against
    0.76 with these (tests/test_families_learning.py; shared reference/learnability.md).
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from slakevqa.models.shapes import padded_vocab_size

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=image_size, patch_size=patch_size, projection_dim=32,
                              hidden_act="quick_gelu", initializer_range=TINY_INIT)
    text = LlamaConfig(vocab_size=padded_vocab_size(len(tokenizer)), hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       initializer_range=TINY_INIT,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    return LlavaConfig(vision_config=vision, text_config=text,
                       image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), projector_hidden_act="gelu",
                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                       image_seq_length=(image_size // patch_size) ** 2, multimodal_projector_bias=True,
                       tie_word_embeddings=False)


def build_tiny(tokenizer: PreTrainedTokenizerBase, seed: int = 0):
    """``(model, processor)``: a tiny random LLaVA-1.5 (fp32, eval mode) and its 32 px processor."""
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(tiny_config(tokenizer)).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, build_processor(tokenizer, image_size=32, patch_size=8)



def published_config(tokenizer):
    """llava-hf/llava-1.5-7b-hf's published config.json (7.06 B parameters), for random-weight models at the real shape (benchmarks/family_shapes.py)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000, projector_hidden_act="gelu",
                       vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=576,
                       tie_word_embeddings=False)

# Liger (read for liger-kernel 0.8.5): the Llama decoder's RMSNorm, SwiGLU and RoPE, as for Mistral
LIGER = LigerKernels(function="apply_liger_kernel_to_llama", modeling="transformers.models.llama.modeling_llama",
                     replaced=("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"), text_model_types=("llama",))

FAMILY = ModelFamily(
    name="llava_1_5", title="LLaVA-1.5 (LLaVA, Vicuna v1.5 / Llama language model)",
    hub_ids=("llava-hf/llava-1.5-7b-hf",), model_type="llava", text_model_types=("llama",),
    model_class="LlavaForConditionalGeneration", processor_class="LlavaProcessor", chat=CHAT,
    images=ImagePipeline(build_processor=build_processor, process=process, collate=stacked,
                         tower_features=llava_clip.tower_features,
                         image_tokens_note="336 px after pad-to-square, 576 tokens (CLIP ViT-L/14, layer -2, no CLS)",
                         pad_to_square="padded with the CLIP mean colour (122, 116, 104), centred, as LLaVA-1.5 "
                                       "trained (image_aspect_ratio pad); llava-hf's own preprocessing crops"),
    parts=LLAVA_PARTS,
    # Llama decoder: the shared-prefix rows, packing, varlen and CUDA graphs take it as they take Mistral
    fast=FastPaths(shared_prefix_eval=True, packed_prefill=True, packing=True, varlen_attention=True,
                   cuda_graphs=True, feature_cache=True, liger=LIGER),
    llama_factory_template="llava", position_ids=left_padded_positions, next_positions=continue_positions,
    notes="prompts follow llava-hf's template, which has no system prompt; upstream LLaVA-1.5 trained and "
          "evaluated with Vicuna v1's ('A chat between a curious user and an artificial intelligence "
          "assistant. ...') before 'USER:'. Images are padded to square as LLaVA-1.5 trained, whereas "
          "llava-hf's preprocessor_config.json centre-crops. Training closes each answer with </s>, which "
          "the template does not write. LLaMA-Factory's 'llava' template adds that Vicuna system prompt "
          "unless run with default_system set to ''.")
