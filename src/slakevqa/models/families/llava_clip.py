"""LLaVA's image side, shared by the LLaVA families (LLaVA-Med v1.5, LLaVA-1.5): CLIP preprocessing, pad to square.

Images: padded to square with the CLIP mean colour (122, 116, 104), then CLIP's
resize (shortest edge, bicubic), centre crop, rescale and normalise, all with the
PIL backend (torchvision's resize differs by ~0.015 per pixel and moves logits).
LLaVA's ``expand2square`` pastes at a random offset ``randint(d//2, d//2 + 1)``
(±1 px jitter); we centre exactly (offset ``d//2``), which is its most likely draw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image

from slakevqa.data.images import to_rgb

if TYPE_CHECKING:  # annotations only: importing transformers at module load would cost seconds
    from transformers import PreTrainedTokenizerBase, ProcessorMixin

IMAGE_TOKEN = "<image>"
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


def build_processor(tokenizer: PreTrainedTokenizerBase, image_size: int, patch_size: int,
                    chat_template: str) -> ProcessorMixin:
    """A ``LlavaProcessor`` that expands ``<image>`` to ``(image_size // patch_size) ** 2`` tokens.

    ``num_additional_image_tokens=1`` accounts for CLIP's CLS token, which the
    ``default`` strategy then drops (576 tokens at 336 px / patch 14). ``chat_template``: the
    family's (LLaVA-Med v1.5's, LLaVA-1.5's).
    """
    from transformers import LlavaProcessor

    return LlavaProcessor(image_processor=build_image_processor(image_size), tokenizer=tokenizer,
                          patch_size=patch_size, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
                          chat_template=chat_template)


def image_token_count(processor) -> int:
    """Tokens one image expands to (576 for CLIP-L/14 at 336 px, 16 for the tiny model)."""
    count = getattr(processor, "num_image_tokens", None)
    if count:
        return int(count)
    size = processor.image_processor.crop_size["height"]
    return (size // processor.patch_size) ** 2 + processor.num_additional_image_tokens - (
        1 if processor.vision_feature_select_strategy == "default" else 0)


def tower_features(vision, config, pixel_values):
    """The hidden states LLaVA hands its projector: ``(B, N, D)`` from ``vision_feature_layer`` (one layer or
    several concatenated), CLS dropped under the ``default`` strategy (576 patches of a 336 px image)."""
    import torch

    layer = config.vision_feature_layer
    hidden = vision(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
    layers = [hidden[layer]] if isinstance(layer, int) else [hidden[i] for i in layer]
    if config.vision_feature_select_strategy == "default":
        layers = [h[:, 1:] for h in layers]  # drop CLS
    return layers[0] if len(layers) == 1 else torch.cat(layers, dim=-1)
