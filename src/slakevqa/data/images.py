"""Images as the model sees them (8-bit RGB), and the check that every image of a split decodes.

:func:`load_rgb` is the one way an image file becomes pixels for the model: training,
evaluation and mask conditioning all call it, so a mode is converted the same way
everywhere (:func:`to_rgb`). :func:`image_problem` decodes an image completely, once
per file version, so a truncated file or a decompression bomb is found when the
records are loaded, not at the training step that first needs the image.

The pixel limit is :data:`MAX_IMAGE_PIXELS`, PIL's default (89,478,485 pixels, about
9459x9459; SLAKE's largest image is 1024x1024): a larger image is refused from its
header, before any pixel is decoded.
"""

from __future__ import annotations

import errno
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from slakevqa.errors import DataError

# PIL's own default (Image.MAX_IMAGE_PIXELS): it warns above it and raises above twice it;
# we refuse anything above it, from the header, with one message.
MAX_IMAGE_PIXELS: int = 89_478_485
# Verdicts of image_problem, keyed by (path, size, mtime): a file changed on disk is decoded again.
_VERDICTS: dict[tuple[str, int, int], str | None] = {}
# warnings.catch_warnings swaps process-wide state: threads must not interleave it.
_OPEN_LOCK = threading.Lock()


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` with the pixel limit checked on the header; DataError when it cannot be opened."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():  # our limit below is the check; PIL's warning repeats it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise DataError(path, f"image too large (over {2 * Image.MAX_IMAGE_PIXELS:,} pixels; "
                              f"the limit is {MAX_IMAGE_PIXELS:,})") from None
    except Image.UnidentifiedImageError:  # its message repeats the path
        raise DataError(path, "image unreadable (empty, or not an image format PIL knows)") from None
    except Exception as error:  # PIL plugins raise OSError, SyntaxError, ValueError, ... on bad headers
        raise DataError(path, f"image unreadable ({describe_error(error)})") from None
    with image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise DataError(path, f"image too large ({width}x{height} = {width * height:,} pixels; "
                                  f"the limit is {MAX_IMAGE_PIXELS:,})")
        if width == 0 or height == 0:
            raise DataError(path, f"image is empty ({width}x{height})")
        yield image


def load_rgb(path: str | Path) -> Image.Image:
    """The 8-bit RGB image the model sees, fully decoded; DataError naming the file when it cannot be.

    Example: a 16-bit gray PNG holding 0..65535 becomes RGB with R=G=B=0..255 (see :func:`to_rgb`).
    """
    path = Path(path)
    with open_image(path) as image:
        try:
            image.load()
            return to_rgb(image)
        except DataError:
            raise
        except Exception as error:  # truncated or corrupt data: OSError, ValueError, SyntaxError, ...
            raise DataError(path, f"image unreadable ({describe_error(error)})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, each mode scaled by its own range (``convert("RGB")`` clips 16-bit to white).

    * ``I;16``/``I;16B``/``I;16L``/``I;16N`` (16-bit PNG, TIFF): ``round(v * 255 / 65535)``,
      so 0, 257, 65535 become 0, 1, 255;
    * ``I`` (32-bit integers; older Pillow opens 16-bit PNGs so): the same when all values lie in
      0..65535, else stretched from its minimum..maximum to 0..255;
    * ``F`` (float TIFF): values in [0, 1] times 255, else stretched like ``I``; NaN and infinities are 0;
    * modes with alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency): composited onto black, the
      background of medical images (opaque pixels are unchanged, as with LLaVA-Med's ``convert("RGB")``);
    * ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ...: PIL's ``convert("RGB")``.
    """
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_scaled_to_8bit(np.asarray(image), mode)).convert("RGB")
    if "A" in mode or mode in ("RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _scaled_to_8bit(array: np.ndarray, mode: str) -> np.ndarray:
    """One 8-bit gray array for :func:`to_rgb`'s ``I;16*``, ``I`` and ``F`` rules."""
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255
    elif high == low:  # a constant image: keep its level where it is already in 0..255
        scaled = np.full(array.shape, low)
    else:
        scaled = (values - low) * (255.0 / (high - low))
    scaled[~finite] = 0.0
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def describe_error(error: BaseException) -> str:
    """``OSError: image file is truncated``: the type and PIL's message, on one line."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def image_problem(image_path: Path) -> str | None:
    """None when the image decodes completely to RGB within the pixel limit; else why not.

    The verdict is cached per (path, size, mtime), so a process that loads several
    splits, or one split twice, decodes each image once.
    """
    try:
        info = os.stat(image_path)
    except (OSError, ValueError) as error:
        return "symlink loop" if getattr(error, "errno", None) == errno.ELOOP else "image file not found"
    if not Path(image_path).is_file():
        return "image path is not a file"
    key = (str(image_path), info.st_size, info.st_mtime_ns)
    if key not in _VERDICTS:
        _VERDICTS[key] = _decode_verdict(Path(image_path))
    return _VERDICTS[key]


def _decode_verdict(path: Path) -> str | None:
    try:
        load_rgb(path).close()
    except DataError as error:
        return error.problem
    return None


def image_problems(paths: list[Path], workers: int = 4, desc: str = "checking images") -> dict[Path, str | None]:
    """:func:`image_problem` of each path; uncached images decode in threads (PIL releases the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths)))) as pool:
        verdicts = tqdm(pool.map(image_problem, paths), total=len(paths), desc=desc, unit="image", delay=1.0,
                        leave=False)
        return dict(zip(paths, verdicts))


def clear_verdicts() -> None:
    """Forget every cached verdict (tests; a process that rewrites images in place within one second)."""
    _VERDICTS.clear()
