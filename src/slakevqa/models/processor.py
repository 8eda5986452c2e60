"""The model-specific transform: LLaVA-Med v1.5 chat format and image preprocessing.

Everything that turns (image, question) into model inputs for a LLaVA-Med-style model
lives here, so training and evaluation cannot disagree.

Chat format: :data:`slakevqa.inputs.prompts.LLAVA_MED_CHAT_TEMPLATE` (``[INST] <image>\\n{text} [/INST]``),
the one definition our encoder renders too. :func:`save_processor` writes it into every
folder slakevqa saves, whatever template the checkpoint came with (LLaVA-Med's own
tokenizer_config.json carries Mistral-Instruct's text-only one).

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

from slakevqa.data.images import to_rgb
from slakevqa.errors import UserError
from slakevqa.inputs.prompts import LLAVA_MED_CHAT_TEMPLATE
from slakevqa.models.tokenizer import IMAGE_TOKEN, check_image_token, save_tokenizer

if TYPE_CHECKING:  # annotations only: importing transformers at module load would cost seconds
    from transformers import PreTrainedTokenizerBase, ProcessorMixin


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # openai/clip-vit-large-patch14-336
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_COLOUR = tuple(int(255 * m) for m in CLIP_MEAN)  # (122, 116, 104), as upstream truncates

def expand_to_square(image: Image.Image, colour: tuple[int, int, int] = PAD_COLOUR) -> Image.Image:
    """Pad ``image`` to a square with ``colour``, centred (LLaVA-Med ``expand2square``).

    Example: a 300x200 RGB image becomes 300x300 with 50 rows of (122, 116, 104) above.
    """
    image = to_rgb(image)  # 16-bit and float scans scaled to 8 bit, not clipped to white
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


class ProcessorUnreadable(UserError):
    """No processor could be built from the folder's files at all (as opposed to one that lacks a part)."""


def load_processor(folder: str | Path, trust_remote_code: bool = False):
    """``AutoProcessor`` from ``folder`` with the PIL image backend (see :func:`pil_image_processor`).

    Refused in one line: files that make no processor (:class:`ProcessorUnreadable`), no image
    processor, no tokenizer, or a tokenizer without the image token.
    """
    from transformers import AutoProcessor

    try:
        image_processor = pil_image_processor(folder)
        extra = {"image_processor": image_processor} if image_processor is not None else {}
        processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError, KeyError) as error:
        raise ProcessorUnreadable(f"{folder}: cannot load a processor ({error})") from error
    if getattr(processor, "image_processor", None) is None:
        raise UserError(f"{folder}: the processor has no image processor; is this a vision-language model?")
    if getattr(processor, "tokenizer", None) is None:
        raise UserError(f"{folder}: the processor has no tokenizer; copy the model's tokenizer files into it")
    check_image_token(processor.tokenizer, folder, getattr(processor, "image_token", None) or IMAGE_TOKEN)
    # from_pretrained hands the image_processor kwarg to the tokenizer too, which then cannot be saved again
    processor.tokenizer.init_kwargs.pop("image_processor", None)
    return processor


def save_processor(processor: ProcessorMixin, folder: str | Path) -> None:
    """Write ``processor`` with LLaVA-Med's chat template and the tokenizer flags ``save_pretrained`` forgets.

    The template goes to the processor and to its tokenizer: a checkpoint's own
    template (Mistral-Instruct's ``'[INST] ' + message['content'] + ' [/INST]'`` in
    LLaVA-Med's tokenizer_config.json) takes string content only, so image+text
    messages fail with it in ``apply_chat_template`` and in vLLM.
    """
    processor.chat_template = LLAVA_MED_CHAT_TEMPLATE
    processor.tokenizer.chat_template = LLAVA_MED_CHAT_TEMPLATE
    processor.save_pretrained(str(folder))
    save_tokenizer(processor.tokenizer, folder)  # after: persists `legacy` (see tokenizer.py)


def generation_prompt(processor: ProcessorMixin, question: str) -> str:
    """Render one image-first user turn with the processor's own chat template.

    >>> generation_prompt(processor, "Is there a mass?")
    '<s>[INST] <image>\\nIs there a mass? [/INST]'
    """
    if not getattr(processor, "chat_template", None):
        raise UserError("the processor has no chat template; convert the checkpoint with "
                        "'slakevqa convert-checkpoint' or add one")
    return processor.apply_chat_template([image_question(question)], add_generation_prompt=True, tokenize=False)


def image_question(question: str, image: object = None) -> dict:
    """A user message with an image (a PIL image, or none when only rendering text) and a question."""
    image_item = {"type": "image", "image": image} if image is not None else {"type": "image"}
    return {"role": "user", "content": [image_item, {"type": "text", "text": question}]}


def chat_template_problem(processor: ProcessorMixin, question: str = "Is there a mass?") -> str | None:
    """Why the processor's own chat template does not give slakevqa's prompt ids, or None when it does.

    Renders and tokenises an image+text message exactly as a Hugging Face user would
    (``apply_chat_template(..., tokenize=True)``) and compares the ids with
    :func:`slakevqa.inputs.encoding.encode_prompt`, token for token.
    """
    from slakevqa.inputs.encoding import encode_prompt, image_token_count

    if not getattr(processor, "chat_template", None):
        return "no chat template"
    size = processor.image_processor.crop_size["height"]
    try:
        batch = processor.apply_chat_template([image_question(question, Image.new("RGB", (size, size)))],
                                              add_generation_prompt=True, tokenize=True, return_dict=True)
    except Exception as error:  # a foreign template fails in Jinja with any error type
        return f"it cannot render an image+text message ({type(error).__name__}: {error})"
    ids = list(batch["input_ids"][0])
    expected, _ = encode_prompt(processor.tokenizer, question, image_token_count(processor))
    if ids != expected:
        return f"it renders {processor.tokenizer.decode(ids[:8])!r}..., not LLaVA-Med v1.5's format"
    return None
