"""A cheap fingerprint of the weights a run used, for results.json and the report.

Hashing 15 GB of weights per evaluation is too slow, so the fingerprint reads what
names the weights instead: ``config.json``, ``adapter_config.json``, the safetensors
index, each ``*.safetensors`` header (every tensor's name, dtype, shape and byte
offsets), and ``SAMPLES`` small blocks of weight bytes spread evenly over each file's
data (a few dozen reads, milliseconds for a 15 GB checkpoint). It tells models of
different shapes, dtypes, configs or adapters apart, and two trainings of one
architecture too: their weights differ everywhere, so in the sampled blocks. A folder that ``huggingface_hub.snapshot_download`` wrote
(``.../snapshots/<commit>/``) also names its hub commit, which does identify the bytes.
Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

# Files whose whole bytes are hashed, when present: what the model is and how its weights are split.
CONFIG_FILES: tuple[str, ...] = ("config.json", "adapter_config.json", "model.safetensors.index.json")
_COMMIT = re.compile(r"[0-9a-f]{40}")
SAMPLES, SAMPLE_BYTES = 16, 4096  # weight bytes read per safetensors file: 16 blocks of 4 KiB


def safetensors_header(path: Path) -> bytes:
    """The JSON header of a safetensors file: its first 8 bytes give the length (little-endian u64)."""
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        return handle.read(min(length, path.stat().st_size))  # a corrupt length reads to the end, no further


def safetensors_samples(path: Path) -> bytes:
    """``SAMPLES`` blocks of ``SAMPLE_BYTES`` from evenly spaced offsets of the file's data section."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        start = min(8 + int.from_bytes(handle.read(8), "little"), size)
        span = max(size - start - SAMPLE_BYTES, 0)
        blocks = []
        for i in range(SAMPLES):
            handle.seek(start + span * i // max(SAMPLES - 1, 1))
            blocks.append(handle.read(SAMPLE_BYTES))
    return b"".join(blocks)


def hub_revision(folder: str | Path) -> str | None:
    """The commit of a hub snapshot folder (``.../snapshots/<40 hex>/``), else None."""
    path = Path(folder)
    return path.name if path.parent.name == "snapshots" and _COMMIT.fullmatch(path.name) else None


def folder_parts(folder: Path) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` that stand for one model folder: its config files, then each safetensors header and samples."""
    parts = [(name, (folder / name).read_bytes()) for name in CONFIG_FILES if (folder / name).is_file()]
    parts += [(path.name, safetensors_header(path) + safetensors_samples(path))
              for path in sorted(folder.glob("*.safetensors"))]
    return parts


def model_fingerprint(*folders: str | Path | None) -> dict:
    """sha256 over :func:`folder_parts` of each folder (a base, then its LoRA adapter), and hub commits.

    Folder paths are not hashed: the same weights copied elsewhere keep their fingerprint.
    None entries (no adapter) are skipped.

    >>> model_fingerprint("runs/lora-base", "runs/lora")  # doctest: +SKIP
    {'sha256': '5e0c...', 'covers': ['runs/lora-base', 'runs/lora'], 'hub_revisions': {}}
    """
    covered = [Path(folder) for folder in folders if folder is not None]
    digest = hashlib.sha256()
    for folder in covered:
        for name, data in folder_parts(folder):
            # lengths keep the boundaries: ("ab", "c") and ("a", "bc") must not hash alike
            digest.update(f"{name}:{len(data)}:".encode())
            digest.update(data)
    revisions = {str(folder): hub_revision(folder) for folder in covered if hub_revision(folder)}
    return {"sha256": digest.hexdigest(), "covers": [str(folder) for folder in covered], "hub_revisions": revisions}


def describe_fingerprint(fingerprint: dict) -> str:
    """One line for a report.

    >>> describe_fingerprint({"sha256": "5e0c", "covers": ["/m"], "hub_revisions": {"/m": "c0ffee"}})
    'sha256 5e0c of the configs, safetensors headers and sampled weights in /m; hub revision c0ffee'
    """
    text = f"sha256 {fingerprint['sha256']} of the configs, safetensors headers and sampled weights in "
    text += " + ".join(fingerprint.get("covers", []))
    revisions = fingerprint.get("hub_revisions") or {}
    if revisions:
        text += "; hub revision " + ", ".join(revisions.values())
    return text
