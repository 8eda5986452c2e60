"""SLAKE's per-image annotations: the ``mask.txt`` class map and ``detection.json`` boxes.

``mask.txt`` (dataset root) maps the gray value of CT/MRI ``mask.png`` label maps
to class names, one ``value:Name`` per line (no trailing newline in the release)::

    70:Liver
    135:Left Kidney

``detection.json`` (beside each ``source.jpg``) is a list of one-key objects,
``[x, y, width, height]`` in pixels of the source image, top-left origin; a label
repeats once per connected region::

    [{"Liver": [33.0, 67.0, 98.0, 108.0]}, {"Left Kidney": [148.0, 142.0, 46.0, 32.0]}]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from slakevqa.data.reading import read_json, read_utf8
from slakevqa.errors import DataError

DETECTION_FILE = "detection.json"


@dataclass(frozen=True)
class Box:
    """One labelled region of an image, in source-image pixels."""

    label: str
    x: float
    y: float
    width: float
    height: float

    def corners(self) -> tuple[float, float, float, float]:
        """``(left, top, right, bottom)``."""
        return (self.x, self.y, self.x + self.width, self.y + self.height)


def load_class_map(path: str | Path) -> dict[int, str]:
    """Parse ``mask.txt`` into ``{gray value: class name}``.

    >>> import tempfile, os; p = os.path.join(tempfile.mkdtemp(), "mask.txt")
    >>> _ = open(p, "w").write("70:Liver\\n135:Left Kidney")
    >>> load_class_map(p)
    {70: 'Liver', 135: 'Left Kidney'}
    """
    path = Path(path)
    classes: dict[int, str] = {}
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        value, sep, name = line.partition(":")
        value = value.strip()
        if not sep or not (value.isascii() and value.isdigit()) or not name.strip():  # '７０'.isdigit() is True
            raise DataError(path, f"expected 'value:Name', found {line!r}", record=f"line {number}")
        classes[int(value)] = name.strip()
    return classes


def load_detections(path: str | Path) -> list[Box]:
    """Parse one ``detection.json``; a missing file means no boxes.

    Coordinates must be finite numbers with a width and height >= 0: JSON's ``NaN`` and
    ``Infinity`` (which Python's parser accepts) are refused, naming the box and its label.
    """
    path = Path(path)
    if not path.is_file():
        return []
    items = read_json(path)
    if not isinstance(items, list):
        raise DataError(path, "expected a JSON list of {label: [x, y, w, h]} objects")
    return [_parse_box(item, index, path) for index, item in enumerate(items)]


def _parse_box(item: object, index: int, path: Path) -> Box:
    if not (isinstance(item, dict) and len(item) == 1):
        raise DataError(path, f"expected one {{label: [x, y, w, h]}} object, found {item!r}", record=f"box #{index}")
    (label, coords), = item.items()
    if not (isinstance(coords, list) and len(coords) == 4
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coords)):
        raise DataError(path, f"expected [x, y, w, h] numbers, found {coords!r}", record=f"box #{index}", field=label)
    if not all(math.isfinite(c) for c in coords):
        raise DataError(path, f"expected finite [x, y, w, h] numbers, found {coords!r}", record=f"box #{index}",
                        field=label)
    if coords[2] < 0 or coords[3] < 0:
        raise DataError(path, f"width and height must be >= 0, found {coords!r}", record=f"box #{index}", field=label)
    return Box(label, *(float(c) for c in coords))


def image_labels(image_path: str | Path) -> list[str]:
    """Distinct labels annotated on an image (from ``detection.json`` beside it), in file order."""
    boxes = load_detections(Path(image_path).parent / DETECTION_FILE)
    return list(dict.fromkeys(box.label for box in boxes))
