"""Pixels equal LLaVA-Med's pad-to-square + CLIP preprocessing; the chat template renders its format."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models_helpers import CLIP_MEAN, CLIP_STD, upstream_pixels
from slakevqa.models.families.llava_med import CHAT_TEMPLATE as LLAVA_MED_CHAT_TEMPLATE
from slakevqa.models.processor import PAD_COLOUR, build_image_processor, expand_to_square


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    array = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)


@pytest.mark.parametrize("size,width,height,mode", [
    (32, 32, 32, "RGB"),     # square: no padding
    (32, 50, 30, "RGB"),     # wide: bands above and below
    (32, 23, 61, "RGB"),     # tall, odd padding (19 left, 19 right... (61-23)//2 = 19)
    (32, 40, 25, "L"),       # grayscale: converted to RGB first, as upstream does
    (336, 500, 375, "RGB"),  # the real model's input size, a typical photo shape
    (336, 336, 336, "RGB"),
])
def test_pixels_equal_pad_to_square_then_clip(size, width, height, mode):
    image = noise_image(width, height, mode)
    ours = build_image_processor(size)(images=[image], return_tensors="np")["pixel_values"][0]
    assert ours.shape == (3, size, size)
    assert np.abs(ours - upstream_pixels(image, size)).max() < 1e-6


def test_padding_uses_the_clip_mean_colour():
    assert PAD_COLOUR == (122, 116, 104)
    image = Image.new("RGB", (64, 16), (255, 0, 0))  # 24 rows of padding above and below
    pixels = build_image_processor(32)(images=[image], return_tensors="np")["pixel_values"][0]
    corner = pixels[:, 0, 0]
    assert np.allclose(corner, (np.array(PAD_COLOUR) / 255 - CLIP_MEAN) / CLIP_STD, atol=1e-6)


def test_expand_to_square_centres_exactly():
    square = expand_to_square(Image.new("RGB", (30, 20), (255, 255, 255)))
    assert square.size == (30, 30)
    array = np.asarray(square)
    assert (array[4, 0] == PAD_COLOUR).all() and (array[5, 0] == 255).all() and (array[25, 0] == PAD_COLOUR).all()


def render(messages: list[dict], generation: bool = True) -> str:
    from jinja2 import Template

    return Template(LLAVA_MED_CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=generation,
                                                    bos_token="<s>")


def test_template_generation_and_training_formats():
    user = {"role": "user", "content": [{"type": "text", "text": "Is the lung healthy?"}, {"type": "image"}]}
    assert render([user]) == "<s>[INST] <image>\nIs the lung healthy? [/INST]"  # image moved first
    answer = {"role": "assistant", "content": [{"type": "text", "text": "Yes"}]}
    assert render([user, answer], False) == "<s>[INST] <image>\nIs the lung healthy? [/INST] Yes </s>"


def test_template_plain_strings_system_and_second_turn():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi "},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Again?"}]
    assert render(messages) == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s>[INST] Again? [/INST]"
