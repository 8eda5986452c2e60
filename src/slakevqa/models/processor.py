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

import json
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from slakevqa.errors import UserError
from slakevqa.models.tokenizer import IMAGE_TOKEN

if TYPE_CHECKING:  # annotations only: importing transformers at module load would cost seconds
    from transformers import PreTrainedTokenizerBase, ProcessorMixin


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # openai/clip-vit-large-patch14-336
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_COLOUR = tuple(int(255 * m) for m in CLIP_MEAN)  # (122, 116, 104), as upstream truncates

# Jinja for processor.apply_chat_template. Accepts content as a string or as a list of
# {"type": "image"} / {"type": "text"} items; the image always goes first, as upstream
# moves it there. Text is stripped, as upstream's model_vqa.py strips the question
# (SLAKE has questions ending in a space). A system message is wrapped LLAMA_2-style
# into the first turn.
LLAVA_MED_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
    "{%- set text = items | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') | trim -%}"
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


def build_processor(tokenizer: PreTrainedTokenizerBase, image_size: int, patch_size: int) -> ProcessorMixin:
    """A ``LlavaProcessor`` that expands ``<image>`` to ``(image_size // patch_size) ** 2`` tokens.

    ``num_additional_image_tokens=1`` accounts for CLIP's CLS token, which the
    ``default`` strategy then drops (576 tokens at 336 px / patch 14).
    """
    from transformers import LlavaProcessor

    return LlavaProcessor(image_processor=build_image_processor(image_size), tokenizer=tokenizer,
                          patch_size=patch_size, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
                          chat_template=LLAVA_MED_CHAT_TEMPLATE)


def pil_image_processor(folder: str | Path):
    """The PIL-backend class of the image processor saved in ``folder``, or None.

    Saved files name the backend-free class (``LlavaImageProcessor``); with
    torchvision installed, ``AutoProcessor`` would pick the torchvision class, whose
    resize gives different pixels. We pick ``<Name>Pil`` explicitly instead
    (``AutoImageProcessor`` cannot be used: in 5.17 it requires torchvision).
    """
    import transformers

    for name in ("processor_config.json", "preprocessor_config.json"):
        path = Path(folder) / name
        if path.is_file():
            raw = json.loads(path.read_text())
            saved = raw.get("image_processor", raw).get("image_processor_type", "")
            base = saved.removesuffix("Fast").removesuffix("Pil")
            cls = getattr(transformers, f"{base}Pil", None)
            return cls.from_pretrained(str(folder)) if cls is not None and base else None
    return None


def load_processor(folder: str | Path, trust_remote_code: bool = False):
    """``AutoProcessor`` from ``folder`` with the PIL image backend (see :func:`pil_image_processor`)."""
    from transformers import AutoProcessor

    try:
        image_processor = pil_image_processor(folder)
        extra = {"image_processor": image_processor} if image_processor is not None else {}
        processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{folder}: cannot load a processor ({error})") from error
    if getattr(processor, "image_processor", None) is None:
        raise UserError(f"{folder}: the processor has no image processor; is this a vision-language model?")
    # from_pretrained hands the image_processor kwarg to the tokenizer too, which then cannot be saved again
    processor.tokenizer.init_kwargs.pop("image_processor", None)
    return processor


def generation_prompt(processor: ProcessorMixin, question: str) -> str:
    """Render one image-first user turn with the processor's chat template.

    >>> generation_prompt(processor, "Is there a mass?")
    '[INST] <image>\\nIs there a mass? [/INST]'
    """
    if not getattr(processor, "chat_template", None):
        raise UserError("the processor has no chat template; convert the checkpoint with "
                        "'slakevqa convert-checkpoint' or add one")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
