"""One image of probe thumbnails, each captioned with its question, target and prediction.

TensorBoard shows one image per tag and step, so a grid in a single image lets
a reader compare several questions at a glance and scrub through training steps.
With a mask mode on, the region the question was conditioned on is tinted red on
the thumbnail (the model saw a crop or a masked copy; the tint shows of what)::

    ┌──────────┬──────────┬──────────┐
    │  image   │  image   │  image   │
    │ Q: ...   │ Q: ...   │ Q: ...   │
    │ T: Liver │ T: Yes   │ T: CT    │
    │ P: Liver │ P: No    │ P: CT    │   prediction green when exactly right, red when not
    └──────────┴──────────┴──────────┘
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

THUMB = 160  # thumbnail side in pixels
LINE = 13  # caption line height at the 11 px font
CAPTION_LINES = 5  # question (up to 3 lines), target, prediction
CHARS_PER_LINE = 26  # what fits in THUMB pixels at 11 px
TINT = (255, 0, 0)
TINT_ALPHA = 0.35


@dataclass
class Thumbnail:
    """One probe question as drawn: the source image, the texts, and the mask region (H×W bool) or None."""

    image: Image.Image
    question: str
    target: str
    prediction: str
    correct: bool
    region: np.ndarray | None = None


def tinted(image: Image.Image, region: np.ndarray | None) -> Image.Image:
    """``image`` with ``region`` blended towards red; unchanged without a region or when its size differs."""
    if region is None or region.shape != (image.height, image.width) or not region.any():
        return image
    pixels = np.asarray(image, dtype=np.float32)
    pixels[region] = (1 - TINT_ALPHA) * pixels[region] + TINT_ALPHA * np.array(TINT, dtype=np.float32)
    return Image.fromarray(pixels.round().astype(np.uint8))


def caption_lines(item: Thumbnail) -> list[tuple[str, tuple[int, int, int]]]:
    """``(text, colour)`` per caption line: the question wrapped to 3 lines, then target and prediction."""
    question = textwrap.wrap("Q: " + " ".join(item.question.split()), CHARS_PER_LINE, max_lines=3,
                             placeholder=" …") or ["Q:"]
    verdict = (40, 160, 40) if item.correct else (200, 40, 40)
    return [(line, (20, 20, 20)) for line in question] + [
        ("T: " + _short(item.target), (20, 20, 20)), ("P: " + _short(item.prediction), verdict)]


def _short(text: str) -> str:
    return textwrap.shorten(text or "∅", CHARS_PER_LINE - 3, placeholder="…")


def probe_grid(items: list[Thumbnail], columns: int = 4) -> np.ndarray:
    """The grid as an ``(H, W, 3)`` uint8 array (``SummaryWriter.add_image(..., dataformats="HWC")``)."""
    font = ImageFont.load_default(size=11)
    rows = max(1, -(-len(items) // columns))
    cell_h = THUMB + CAPTION_LINES * LINE + 6
    canvas = Image.new("RGB", (columns * THUMB, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for index, item in enumerate(items):
        x, y = (index % columns) * THUMB, (index // columns) * cell_h
        thumb = ImageOps.contain(tinted(item.image, item.region), (THUMB - 4, THUMB - 4))  # up or down, aspect kept
        canvas.paste(thumb, (x + (THUMB - thumb.width) // 2, y + 2))
        for line, (text, colour) in enumerate(caption_lines(item)):
            draw.text((x + 3, y + THUMB + line * LINE), text, fill=colour, font=font)
    return np.asarray(canvas)
