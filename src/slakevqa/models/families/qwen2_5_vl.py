"""Qwen2.5-VL (3B/7B/32B/72B Instruct) and checkpoints built on it, e.g. Lingshu-7B: one architecture.

Checkpoints: ``config.json`` ``model_type`` ``qwen2_5_vl``, ``text_config.model_type`` ``qwen2_5_vl_text``;
``Qwen2_5_VLForConditionalGeneration`` with the vision tower at ``model.visual`` (its ``merger`` is the
projector), the language model at ``model.language_model`` and ``lm_head``.

Chat format: ChatML with the processor's default system prompt, the image first::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|><|image_pad|>×N<|vision_end|>{text}<|im_end|>\\n
    <|im_start|>assistant\\n                                     (generation)
    <|im_start|>assistant\\n{answer}<|im_end|>\\n                (training; the loss covers ``{answer}<|im_end|>``)

Images: dynamic resolution. Each image is resized (bicubic, aspect ratio kept) to multiples of
28 px inside [min_pixels, max_pixels], cut into 14 px patches (each repeated twice in time), and every
2x2 patches become one token: ``N = (H / 28) * (W / 28)``, different per image (SLAKE's 512x512 →
504x504 → 324 tokens). ``image_grid_thw`` (1, H/14, W/14) travels with the pixels, and positions are
3-D (M-RoPE): text tokens count up on all three axes, an image's tokens take (t, row, column).

Two traps, each tested:

* the tokenizer files carry Qwen2.5's **text-only** chat template ("You are Qwen, created by Alibaba
  Cloud..."; a list content fails or renders no image); the image-aware template is the processor's.
  Loading must take :data:`CHAT_TEMPLATE`, never ``tokenizer.chat_template``.
* ``forward`` without ``position_ids`` builds M-RoPE positions only when it gets ``mm_token_type_ids``
  (transformers 5.x); without them it silently uses 1-D positions. :func:`text_inputs` supplies them;
  the plain evaluation backend passes explicit :func:`position_ids`, which also keeps the model's
  mutable ``rope_deltas`` out of the way.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slakevqa.inputs.chat_format import ChatFormat
from slakevqa.models.families.family import FastPaths, ImageInputs, ImagePipeline, LigerKernels, ModelFamily, Parts

if TYPE_CHECKING:  # annotations only: importing torch/transformers at module load would cost seconds
    from PIL.Image import Image
    from torch import Tensor

IMAGE_TOKEN, VIDEO_TOKEN = "<|image_pad|>", "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_TOKEN_ID = 151655  # Qwen2.5's vocabulary (config.json image_token_id); vision_start 151652, end 151653
PROCESSOR_CLASS = "Qwen2_5_VLProcessor"

# Verbatim from Qwen/Qwen2.5-VL-7B-Instruct's chat_template.json (the processor's template; sha256 of the
# text a0bc6f6f...2fddb), read in the GitHub mirror binarrii/qwen_vl_object_detect,
# Qwen/Qwen2.5-VL-7B-Instruct/chat_template.json; the same text is the Qwen2-VL processor template in
# transformers' tests/models/qwen2_vl/test_processing_qwen2_vl.py (prepare_processor_dict). Split into
# pieces only for line length.
CHAT_TEMPLATE = (
    '{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}'
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}'
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    '{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}'
    'Picture {{ image_count.value }}: {% endif %}'
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    '{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}'
    'Video {{ video_count.value }}: {% endif %}'
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    '{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}'
)

CHAT = ChatFormat(name="qwen2_5_vl", template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN, image_end=VISION_END,
                  stop_token="<|im_end|>", bos_from_tokenizer=False,  # Qwen has no BOS
                  reserved=(VISION_START, VISION_END, VIDEO_TOKEN, "<|vision_pad|>"))

# Qwen/Qwen2.5-VL-7B-Instruct's preprocessor_config.json (the mirror above): CLIP mean/std, bicubic (the PIL class's
# default resample).
MIN_PIXELS, MAX_PIXELS = 3136, 12845056
PATCH_SIZE, TEMPORAL_PATCH_SIZE, MERGE_SIZE = 14, 2, 2
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The tiny model's images: 56x56 .. 112x112 px, i.e. 4 to 16 tokens (512x512 → 112x112 → 16).
TINY_MIN_PIXELS, TINY_MAX_PIXELS = 56 * 56, 112 * 112


@functools.cache
def processor_class() -> type:
    """``transformers.Qwen2_5_VLProcessor`` without its video half.

    transformers cannot build the real processor without torchvision (its video processor, even when
    ``None`` is passed: the argument check reads the video-processor registry and raises AttributeError
    ``VIDEO_PROCESSOR_MAPPING ... _extra_content``). This subclass takes only the image processor and the
    tokenizer and inherits everything else: the placeholder expansion of ``__call__`` and
    ``apply_chat_template`` (each ``<|image_pad|>`` → ``image_grid_thw.prod() // merge_size**2`` copies,
    ``Qwen2_5_VLProcessor.replace_image_token``), ``mm_token_type_ids``, ``model_input_names``. It is named
    like the real class, so every file it saves names ``Qwen2_5_VLProcessor``, which ``AutoProcessor``
    builds, video part included, on machines with torchvision.
    """
    from transformers import Qwen2_5_VLProcessor as Full
    from transformers.processing_utils import ProcessorMixin

    class Qwen2_5_VLProcessor(Full):
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                     **kwargs: Any):
            # Full.__init__ without the video processor
            self.image_token, self.video_token = IMAGE_TOKEN, VIDEO_TOKEN
            self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
            self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

        def save_pretrained(self, save_directory: str | Path, push_to_hub: bool = False, **kwargs: Any):
            files = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
            # The published checkpoints have no video config: AutoProcessor derives the video processor from
            # preprocessor_config.json (Qwen2VLImageProcessor → Qwen2VLVideoProcessor). processor_config.json
            # alone leaves it nothing to read ("Can't load video processor").
            self.image_processor.save_pretrained(save_directory)
            return files

    Qwen2_5_VLProcessor.__qualname__ = Qwen2_5_VLProcessor.__name__
    return Qwen2_5_VLProcessor


def build_image_processor(min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS, patch_size: int = PATCH_SIZE,
                          temporal_patch_size: int = TEMPORAL_PATCH_SIZE, merge_size: int = MERGE_SIZE):
    """Qwen2.5-VL's default preprocessing with the PIL backend (``Qwen2VLImageProcessorPil``)."""
    from transformers import Qwen2VLImageProcessorPil

    # size=, not min_pixels=/max_pixels=: in transformers 5.17 those write into the class-level default dict,
    # changing every later processor built with defaults.
    return Qwen2VLImageProcessorPil(size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
                                    patch_size=patch_size, temporal_patch_size=temporal_patch_size,
                                    merge_size=merge_size, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def build_processor(tokenizer: Any, **sizes: int):
    """The family's processor: ``tokenizer`` + :func:`build_image_processor` ``(**sizes)`` + :data:`CHAT_TEMPLATE`.

    >>> processor = build_processor(tokenizer)                 # doctest: +SKIP
    >>> process(processor, Image.new("RGB", (512, 512))).tokens  # doctest: +SKIP
    324
    """
    return compose_processor(None, tokenizer, build_image_processor(**sizes), CHAT_TEMPLATE)


def compose_processor(folder: str | Path | None, tokenizer: Any, image_processor: Any, chat_template: str | None):
    """The processor of a saved folder from its parts (``folder`` itself is not read again).

    Never the tokenizer's own template (module docstring): a folder without one gets :data:`CHAT_TEMPLATE`.
    """
    return processor_class()(image_processor=image_processor, tokenizer=tokenizer,
                             chat_template=chat_template or CHAT_TEMPLATE)


def process(processor: Any, image: Image) -> ImageInputs:
    """Patches ``(H/14 * W/14, 1176)`` and ``image_grid_thw`` ``(1, 3)`` of one PIL image; ``N = prod // 4`` tokens."""
    out = processor.image_processor(images=[image], return_tensors="pt")
    grid = out["image_grid_thw"]
    tokens = int(grid.prod()) // processor.image_processor.merge_size ** 2
    return ImageInputs({"pixel_values": out["pixel_values"], "image_grid_thw": grid}, tokens)


def collate(images: list[ImageInputs]) -> dict:
    """Patches of all images concatenated (they differ in count) and one ``image_grid_thw`` row each, in row order."""
    import torch

    return {name: torch.cat([image.tensors[name] for image in images]) for name in ("pixel_values", "image_grid_thw")}


@functools.cache
def _forward_takes_token_types() -> bool:
    from transformers import Qwen2_5_VLForConditionalGeneration

    return "mm_token_type_ids" in inspect.signature(Qwen2_5_VLForConditionalGeneration.forward).parameters


def token_types(input_ids: Tensor) -> Tensor:
    """``mm_token_type_ids``: 1 at image tokens, 0 elsewhere (the processor's values; 2 would be video)."""
    return (input_ids == IMAGE_TOKEN_ID).long()


def text_inputs(input_ids: Tensor) -> dict:
    """``{"mm_token_type_ids": ...}`` where the forward takes it: without it transformers 5.x gives 1-D positions."""
    return {"mm_token_type_ids": token_types(input_ids)} if _forward_takes_token_types() else {}


def _rope_model(model: Any) -> Any:
    """The module holding ``get_rope_index`` (``Qwen2_5_VLModel``), through peft, DDP and the LM-head wrapper."""
    while not hasattr(model, "get_rope_index"):
        model = model.module if hasattr(model, "module") else model.model
    return model


def position_ids(model: Any, input_ids: Tensor, attention_mask: Tensor, batch_images: dict) -> Tensor:
    """M-RoPE positions ``(3, B, T)`` (temporal, height, width) of a left-padded prompt batch; padding at 0.

    The model's own ``get_rope_index`` over the real tokens of each row (its signature differs between
    releases: ``mm_token_type_ids`` is passed where it takes it). For one row
    ``<|vision_start|>`` at text position p-1 and a 2x3-token image::

        text   ... p-1 | image t: p p p p p p  h: p p p p+1 p+1 p+1  w: p p+1 p+2 p p+1 p+2 | text p+3 ...

    (text after an image continues at ``p + max(rows, columns)`` on all three axes).
    """
    owner = _rope_model(model)
    kwargs = {"image_grid_thw": batch_images["image_grid_thw"].to(input_ids.device), "attention_mask": attention_mask}
    if "mm_token_type_ids" in inspect.signature(owner.get_rope_index).parameters:
        kwargs["mm_token_type_ids"] = token_types(input_ids)
    positions, _ = owner.get_rope_index(input_ids, **kwargs)
    return positions


def packed_positions(model: Any, batch: dict) -> Tensor:
    """M-RoPE positions ``(3, R, T)`` of packed rows (slakevqa.kernels.packing: the image prefix, then each
    question as a segment whose 1-D positions go on from the prefix's length).

    The prefix (up to the row's last image token, P tokens) takes the model's own positions; a token after
    it takes its 1-D position plus the prefix's shift (its largest position + 1 - P) on every axis, which
    is what the unpacked row gives that token: text after an image counts on from ``max + 1``.
    """
    import torch

    ids, flat = batch["input_ids"], batch["position_ids"]
    columns = torch.arange(ids.shape[1], device=ids.device)
    image = ids == IMAGE_TOKEN_ID
    length = (torch.where(image, columns, -1).amax(-1) + 1)[:, None]  # P per row
    in_prefix = columns < length
    positions = position_ids(model, ids, in_prefix.long(), batch)  # the prefix's (others: filler)
    shift = torch.where(in_prefix, positions, -1).amax(dim=(0, 2))[:, None] + 1 - length  # (R, 1)
    return torch.where(in_prefix, positions, (flat + shift)[None])


def next_positions(positions: Tensor, steps: int) -> Tensor:
    """``(3, B, steps)`` positions of ``steps`` tokens after the prompt: each row's largest position + 1, 2, ...
    on every axis (what ``generate`` continues with: its ``rope_deltas`` are ``max + 1 - length``)."""
    import torch

    start = positions.amax(dim=(0, 2)) + 1  # (B,)
    steps_after = start[:, None] + torch.arange(steps, device=positions.device)  # (B, steps)
    return steps_after[None].repeat(3, 1, 1)


def text_rotary(decoder: Any, hidden: Tensor, positions: Tensor) -> list:
    """Rotary embeddings of text tokens at 1-D ``positions`` ``(rows, L)``: the same value on all three M-RoPE
    axes (text after an image goes on from ``max + 1`` on every axis), the same for every layer."""
    embeddings = decoder.rotary_emb(hidden, positions[None].expand(3, -1, -1))  # 5.17 takes only (3, rows, L)
    return [embeddings] * decoder.config.num_hidden_layers


def tiny_config(tokenizer: Any):
    """A tiny random Qwen2.5-VL: text 64 hidden, 2 layers, 4 heads (head_dim 16, M-RoPE sections 2+3+3),
    2 KV heads; vision 32 hidden, 2 blocks (the second with full attention), patch 14, merge 2. Token ids
    are the tokenizer's; the vocabulary is padded to a multiple of 64."""
    from transformers import Qwen2_5_VLConfig

    vocab = -(-len(tokenizer) // 64) * 64
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", IMAGE_TOKEN), ("video_token_id", VIDEO_TOKEN),
        ("vision_start_token_id", VISION_START), ("vision_end_token_id", VISION_END))}
    text = {"vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                                       "mrope_section": [2, 3, 3]},
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tokenizer.convert_tokens_to_ids(CHAT.stop_token), "pad_token_id": tokenizer.pad_token_id}
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
              "patch_size": PATCH_SIZE, "spatial_merge_size": MERGE_SIZE, "temporal_patch_size": TEMPORAL_PATCH_SIZE,
              "window_size": 112, "fullatt_block_indexes": [1], "tokens_per_second": 2}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def build_tiny(tokenizer: Any, seed: int = 0) -> tuple[Any, Any]:
    """``(model, processor)``: :func:`tiny_config` with random weights (fp32, eval) and a processor whose
    images are 56..112 px (``TINY_MIN_PIXELS``..``TINY_MAX_PIXELS``), i.e. 4 to 16 tokens."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = build_processor(tokenizer, min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
    return model.float().eval(), processor


PARTS = Parts(vision="model.visual", projector="model.visual.merger", language_model="model.language_model")


def published_config(tokenizer):
    """Qwen/Qwen2.5-VL-7B-Instruct's published config.json (8.29 B parameters), for random-weight models at the real shape (benchmarks/family_shapes.py)."""
    from transformers import Qwen2_5_VLConfig

    text = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
                tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                            "mrope_section": [16, 24, 24]})
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu")
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=151655, video_token_id=151656,
                            vision_start_token_id=151652, vision_end_token_id=151653, tie_word_embeddings=False)

# Liger (read for liger-kernel 0.8.5), handed the text model: its RMSNorm and SwiGLU. Its M-RoPE kernel replaces
# apply_multimodal_rotary_pos_emb, which transformers 5.x no longer calls (the rotary embedding interleaves the
# three sections into cos/sin, and the attention calls the plain apply_rotary_pos_emb): RoPE stays PyTorch's.
# The vision tower (frozen by default) keeps its own norms.
LIGER = LigerKernels(function="apply_liger_kernel_to_qwen2_5_vl",
                     modeling="transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",
                     replaced=("apply_multimodal_rotary_pos_emb", "Qwen2RMSNorm", "Qwen2_5_VLRMSNorm", "Qwen2MLP"),
                     text_model_types=("qwen2_5_vl_text",))

FAMILY = ModelFamily(
    name="qwen2_5_vl", title="Qwen2.5-VL (and Lingshu)",
    hub_ids=("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-32B-Instruct",
             "Qwen/Qwen2.5-VL-72B-Instruct", "lingshu-medical-mllm/Lingshu-7B"),
    model_type="qwen2_5_vl", text_model_types=("qwen2_5_vl_text",),
    model_class="Qwen2_5_VLForConditionalGeneration", processor_class=PROCESSOR_CLASS, chat=CHAT,
    images=ImagePipeline(
        build_processor=build_processor, process=process, collate=collate, text_inputs=text_inputs,
        compose_processor=compose_processor,
        image_tokens_note="dynamic: resized to multiples of 28 px within 3136..12845056 pixels, "
                          "(H/28)*(W/28) tokens per image (SLAKE 512x512 -> 504x504 -> 324)",
        pad_to_square="none: each image keeps its aspect ratio and gets its own token grid", tokens_follow_size=True),
    parts=PARTS, fast=FastPaths(shared_prefix_eval=True, packing=True, varlen_attention=True, cuda_graphs=True,
                               liger=LIGER),
    llama_factory_template="qwen2_vl", position_ids=position_ids, next_positions=next_positions,
    text_rotary=text_rotary, packed_positions=packed_positions,
    notes="the image-aware chat template is the processor's (system 'You are a helpful assistant.'); the "
          "tokenizer files' template is Qwen2.5's text-only one and is never used; image token counts vary "
          "with image size (324 for SLAKE's 512x512); positions are 3-D (M-RoPE)")
