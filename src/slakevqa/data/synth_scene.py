"""Scenes of the synthetic SLAKE: which organs sit where, and how they are drawn.

A scene is everything the questions may ask about: the modality, and for each
organ its side (image half), its row and its size. Drawing a scene gives the
``source.jpg`` pixels and the ``mask.png`` label map from the same shapes, so
answers, masks and boxes agree by construction.

The picture, for a 64 px image (one organ per 32 px quadrant at most)::

    +--------+--------+     background texture = modality:
    | Liver  |        |       CT     gray noise
    |  (red) | Heart  |       MRI    horizontal stripes, period 8 px
    +--------+ (green)|       X-Ray  vertical gradient, dark at the top
    |        |        |
    +--------+--------+     "Left"/"Right" mean the image's halves, as in
                             SLAKE ("Where is the liver?" -> "Left" when it is
                             drawn in the left half).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

MODALITIES: tuple[str, ...] = ("CT", "MRI", "X-Ray")
SIDES: tuple[str, ...] = ("Left", "Right")
# Radii (in 64 px units) of the three sizes: areas differ by 2.1x at least, so "which is
# larger" stays visible after CLIP's resize to 32 px.
SIZE_LEVELS: tuple[int, ...] = (5, 9, 13)
MRI_STRIPE_PERIOD = 8  # pixels; half bright, half dark


@dataclass(frozen=True)
class OrganKind:
    """One synthetic organ: its SLAKE class name, mask gray value, colour and Chinese name."""

    name: str
    gray: int  # class id in mask.txt, the value real SLAKE uses for this class
    rgb: tuple[int, int, int]
    zh: str


# Real SLAKE class names and gray values (mask.txt), so mask and KG code paths see familiar
# classes. Saturated, well separated colours survive JPEG and a 2x downscale.
ORGANS: tuple[OrganKind, ...] = (
    OrganKind("Liver", 70, (220, 50, 50), "肝脏"),
    OrganKind("Heart", 180, (50, 200, 60), "心脏"),
    OrganKind("Spleen", 230, (60, 90, 230), "脾脏"),
    OrganKind("Stomach", 165, (230, 200, 40), "胃"),
    OrganKind("Colon", 235, (190, 60, 210), "结肠"),
)
ORGAN_BY_NAME: dict[str, OrganKind] = {organ.name: organ for organ in ORGANS}


@dataclass(frozen=True)
class PlacedOrgan:
    """One organ in one image: its quadrant (side + row), size level and ellipse."""

    name: str
    side: str  # "Left" or "Right": the image half it is drawn in
    row: int  # 0 = upper quadrant, 1 = lower quadrant
    size: int  # index into SIZE_LEVELS; organs of one image never share a size
    box: tuple[int, int, int, int]  # ellipse bounding box (left, top, right, bottom), inclusive


@dataclass(frozen=True)
class Scene:
    """What one synthetic image shows."""

    modality: str
    organs: tuple[PlacedOrgan, ...]
    image_size: int

    def names(self) -> list[str]:
        return [organ.name for organ in self.organs]

    def on_side(self, side: str) -> list[PlacedOrgan]:
        return [organ for organ in self.organs if organ.side == side]

    def largest(self) -> PlacedOrgan:
        return max(self.organs, key=lambda organ: organ.size)

    def location(self) -> str:
        """SLAKE's ``location`` field: a heart makes it a chest image, otherwise abdomen."""
        return "Chest_heart" if "Heart" in self.names() else "Abdomen"


def sample_scene(rng: np.random.Generator, image_size: int = 64) -> Scene:
    """Draw a random scene: a modality and 1-3 distinct organs in distinct quadrants.

    Each organ's quadrant is uniform, so each organ is left or right half the time and
    yes/no, left/right and A-or-B answers come out balanced per question.
    """
    modality = MODALITIES[int(rng.integers(len(MODALITIES)))]
    count = int(rng.integers(1, 4))
    kinds = rng.choice(len(ORGANS), size=count, replace=False)
    quadrants = rng.choice(4, size=count, replace=False)
    sizes = rng.choice(len(SIZE_LEVELS), size=count, replace=False)
    organs = tuple(
        _place(ORGANS[int(k)].name, int(q), int(s), rng, image_size)
        for k, q, s in sorted(zip(kinds, quadrants, sizes), key=lambda t: int(t[1]))
    )
    return Scene(modality=modality, organs=organs, image_size=image_size)


def _place(name: str, quadrant: int, size: int, rng: np.random.Generator, image_size: int) -> PlacedOrgan:
    # Quadrants 0, 1 are the left half (upper, lower), 2, 3 the right half.
    half = image_size // 2
    scale = image_size / 64
    radius = SIZE_LEVELS[size] * scale
    aspect = float(rng.uniform(0.9, 1.1))  # mild ellipses; the area stays pi * radius^2
    rx, ry = radius * aspect, radius / aspect
    cx = half * (quadrant // 2) + half / 2 + float(rng.uniform(-1, 1)) * scale
    cy = half * (quadrant % 2) + half / 2 + float(rng.uniform(-1, 1)) * scale
    box = (round(cx - rx), round(cy - ry), round(cx + rx), round(cy + ry))
    return PlacedOrgan(name=name, side=SIDES[quadrant // 2], row=quadrant % 2, size=size, box=box)


def background(modality: str, rng: np.random.Generator, image_size: int) -> np.ndarray:
    """The modality texture as a ``(size, size)`` uint8 gray image."""
    y = np.arange(image_size, dtype=np.float64)[:, None] * np.ones((1, image_size))
    if modality == "CT":
        gray = 45 + rng.normal(0, 18, size=(image_size, image_size))
    elif modality == "MRI":
        gray = np.where((y % MRI_STRIPE_PERIOD) < MRI_STRIPE_PERIOD / 2, 85.0, 15.0)
    elif modality == "X-Ray":
        gray = 10 + 110 * y / max(image_size - 1, 1)
    else:
        raise ValueError(f"unknown modality {modality!r}: expected one of {MODALITIES}")
    return np.clip(np.round(gray), 0, 255).astype(np.uint8)


def draw_scene(scene: Scene, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """Render a scene: the RGB picture and its label map (gray value = class id, 0 = background).

    Both come from the same ellipses, drawn without anti-aliasing, so every
    label-map pixel of an organ is painted in that organ's colour in the picture.
    """
    gray = background(scene.modality, rng, scene.image_size)
    picture = Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB")
    labels = Image.new("L", (scene.image_size, scene.image_size), 0)
    paint, label = ImageDraw.Draw(picture), ImageDraw.Draw(labels)
    for organ in scene.organs:
        kind = ORGAN_BY_NAME[organ.name]
        paint.ellipse(organ.box, fill=kind.rgb)
        label.ellipse(organ.box, fill=kind.gray)
    return picture, labels


def detection_boxes(labels: Image.Image, scene: Scene) -> list[dict[str, list[float]]]:
    """``detection.json`` content: each organ's tight box ``[x, y, w, h]`` from the label map.

    ``w``/``h`` count pixels, so every pixel of the label lies in ``[x, x + w) x [y, y + h)``::

        [{"Liver": [4.0, 3.0, 27.0, 25.0]}, {"Heart": [38.0, 40.0, 11.0, 10.0]}]
    """
    values = np.asarray(labels)
    boxes = []
    for organ in scene.organs:
        ys, xs = np.nonzero(values == ORGAN_BY_NAME[organ.name].gray)
        x0, y0 = int(xs.min()), int(ys.min())
        width, height = int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1
        boxes.append({organ.name: [float(x0), float(y0), float(width), float(height)]})
    return boxes


def mask_txt() -> str:
    """``mask.txt`` for the synthetic classes: ``value:Name`` lines by value, no trailing newline.

    >>> print(mask_txt())
    70:Liver
    165:Stomach
    180:Heart
    230:Spleen
    235:Colon
    """
    kinds = sorted(ORGANS, key=lambda kind: kind.gray)
    return "\n".join(f"{kind.gray}:{kind.name}" for kind in kinds)
