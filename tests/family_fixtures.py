"""What the model-family tests share: where the real tokenizer files are, and SLAKE-like user texts.

The real Qwen2.5 and Gemma 3 tokenizer files live in ``$SLAKEVQA_TOKENIZERS`` (default ``../shared/tokenizers``,
xz-compressed; see SOURCE.md there). They are never copied into the repository: :func:`tokenizer_folder`
decompresses them into a temporary folder, and tests that need them skip where they are absent.
"""

from __future__ import annotations

import lzma
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TOKENIZERS = Path(os.environ.get("SLAKEVQA_TOKENIZERS", Path(__file__).resolve().parents[2] / "shared" / "tokenizers"))
FILES = ("tokenizer.json", "tokenizer_config.json")

# SLAKE-like user texts as our prompt styles write them: one line, several lines with KG facts and choices,
# a trailing space, Chinese.
USER_TEXTS = [
    "Does the picture contain liver?",
    "Answer the question about this medical image with a single answer and nothing else.\n"
    "Is the lung healthy?\nPick one of: Yes | No",
    "Answer the question about this medical image with a word or a short phrase, and nothing else.\n"
    "Relevant medical knowledge:\n- Heart belong to: circulatory system\nWhich organ is abnormal, heart or lung?",
    "Which is the biggest in this image,lung,liver or heart?\nPick one of: lung | liver | heart ",
    "图片里有肝脏吗?",
]
ANSWERS = ["Yes", "No", "Heart", "Left Lung, Right", "是"]


def tokenizer_folder(source_name: str, folder: Path) -> Path:
    """``folder`` holding the decompressed tokenizer files of ``$SLAKEVQA_TOKENIZERS/<source_name>``; skips
    the test when they are not there."""
    source = TOKENIZERS / source_name
    if not (source / "tokenizer.json.xz").is_file():
        pytest.skip(f"the real {source_name} tokenizer is not at {source} (set SLAKEVQA_TOKENIZERS)")
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (folder / name).write_bytes(lzma.decompress((source / f"{name}.xz").read_bytes()))
    return folder


def real_tokenizer(source_name: str, tmp_path_factory: pytest.TempPathFactory):
    """The real tokenizer of ``$SLAKEVQA_TOKENIZERS/<source_name>`` (``qwen2_5``, ``gemma3``), or a skip."""
    from transformers import AutoTokenizer

    folder = tokenizer_folder(source_name, tmp_path_factory.mktemp(f"{source_name}_tokenizer"))
    return AutoTokenizer.from_pretrained(str(folder))


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Seeded noise of any size: pixels that tell preprocessing differences apart."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(height, width, 3 if mode == "RGB" else 1), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if mode == "L" else array, mode)


def user_message(user_text: str, image: Image.Image) -> dict:
    return {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": user_text}]}
