"""The model-specific transform: LLaVA-Med v1.5 chat format and image preprocessing.

Everything that turns (image, question) into model inputs for a LLaVA-Med-style model
lives here, so training and evaluation cannot disagree.

Chat format (``conv_mistral_instruct``: LLAMA_2 style, empty system, ``sep2="</s>"``),
image first::

    generation: "[INST] <image>\\n{text} [/INST]"
    training:   "[INST] <image>\\n{text} [/INST] {answer} </s>"

BOS comes from the tokenizer, not the template.

Images: padded to square with the CLIP mean colour (122, 116, 104), then CLIP's
resize (shortest edge, bicubic), centre crop, rescale and normalise, all with the
PIL backend (torchvision's resize differs by ~0.015 per pixel and moves logits).
LLaVA-Med's ``expand2square`` pastes at a random offset ``randint(d//2, d//2 + 1)``
(±1 px jitter); we centre exactly (offset ``d//2``), which is its most likely draw.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from slakevqa.errors import UserError
from slakevqa.models.tokenizer import IMAGE_TOKEN

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # openai/clip-vit-large-patch14-336
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_COLOUR = tuple(int(255 * m) for m in CLIP_MEAN)  # (122, 116, 104), as upstream truncates

# Jinja for processor.apply_chat_template. Accepts content as a string or as a list of
# {"type": "image"} / {"type": "text"} items; the image always goes first, as upstream
# moves it there. A system message is wrapped LLAMA_2-style into the first turn.
LLAVA_MED_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
    "{%- set text = items | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
    "{%- set has_image = items | selectattr('type', 'equalto', 'image') | list | length > 0 -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = '<<SYS>>\\n' ~ text ~ '\\n<</SYS>>\\n\\n' -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '[INST] ' ~ ns.system ~ ('<image>\\n' if has_image else '') ~ text ~ ' [/INST]' -}}"
    "{%- set ns.system = '' -%}"
    "{%- else -%}{{- ' ' ~ text ~ ' </s>' -}}{%- endif -%}"
    "{%- endfor -%}"
)


def expand_to_square(image: Image.Image, colour: tuple[int, int, int] = PAD_COLOUR) -> Image.Image:
    """Pad ``image`` to a square with ``colour``, centred (LLaVA-Med ``expand2square``).

    Example: a 300x200 RGB image becomes 300x300 with 50 rows of (122, 116, 104) above.
    """
    image = image.convert("RGB")
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), colour)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def build_image_processor(image_size: int):
    """CLIP preprocessing at ``image_size`` with pad-to-square first, PIL backend.

    ``LlavaImageProcessorPil(do_pad=True)`` pads with ``int(255 * image_mean)`` =
    (122, 116, 104), centred, before resizing: the same pixels as
    :func:`expand_to_square` followed by CLIP's processor.
    """
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    return LlavaImageProcessorPil(
        do_pad=True, do_resize=True, size={"shortest_edge": image_size}, resample=3,  # bicubic
        do_center_crop=True, crop_size={"height": image_size, "width": image_size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True)


def build_processor(tokenizer, image_size: int, patch_size: int):
    """A ``LlavaProcessor`` that expands ``<image>`` to ``(image_size // patch_size) ** 2`` tokens.

    ``num_additional_image_tokens=1`` accounts for CLIP's CLS token, which the
    ``default`` strategy then drops (576 tokens at 336 px / patch 14).
    """
    from transformers import LlavaProcessor

    return LlavaProcessor(image_processor=build_image_processor(image_size), tokenizer=tokenizer,
                          patch_size=patch_size, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
                          chat_template=LLAVA_MED_CHAT_TEMPLATE)


def load_processor(folder: str | Path, trust_remote_code: bool = False):
    """``AutoProcessor`` from ``folder``, forcing the PIL image backend.

    With torchvision installed, transformers would otherwise pick its torchvision
    image processor, whose resize gives different pixels.
    """
    from transformers import AutoImageProcessor, AutoProcessor

    try:
        image_processor = AutoImageProcessor.from_pretrained(
            str(folder), backend="pil", trust_remote_code=trust_remote_code)
        processor = AutoProcessor.from_pretrained(
            str(folder), image_processor=image_processor, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{folder}: cannot load a processor ({error})") from error
    if getattr(processor, "image_processor", None) is None:
        raise UserError(f"{folder}: the processor has no image processor; is this a vision-language model?")
    return processor


def generation_prompt(processor, question: str) -> str:
    """Render one image-first user turn with the processor's chat template.

    >>> generation_prompt(processor, "Is there a mass?")
    '[INST] <image>\\nIs there a mass? [/INST]'
    """
    if not getattr(processor, "chat_template", None):
        raise UserError("the processor has no chat template; convert the checkpoint with "
                        "'slakevqa convert-checkpoint' or add one")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
