"""Failures from outside slakevqa, in one line a user acts on: a full disk, a read-only folder, a name too
long, memory. :mod:`slakevqa.cli` prints them (``error: ...``, exit 2) instead of a traceback.

Libraries wrap the system's error in their own: safetensors' ``SafetensorError`` carries the
errno as text, torch's zip writer says only ``unexpected pos``; :func:`write_failure` reads
them back as OSErrors. torch is never imported here (``score`` must not load it).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from pathlib import Path

from slakevqa.errors import UserError

# errno -> the reason in words (what os.strerror says, where a user can act on it as it stands)
OS_REASONS: dict[int, str] = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "a folder in the path is a file",
    errno.EISDIR: "a folder, not a file",
    errno.ELOOP: "too many symbolic links (a link loop?)",
    errno.EIO: "input/output error (a failing disk or network file system?)",
    errno.ENOENT: "no such file or folder",
}
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
WRITE_ONLY = (*FULL_DISK, errno.EROFS)  # errors only a write gets


def describe_os_error(error: OSError, fallback: str | Path | None = None) -> str:
    """One line for an OSError: what could not be done to which path, and why in words.

    ``fallback`` is named when the error names no path (a write to an open file).

    >>> describe_os_error(OSError(errno.ENOSPC, "No space left on device", "runs/eval/predictions.jsonl"))
    'cannot write runs/eval/predictions.jsonl: no space left on the device'
    >>> describe_os_error(OSError(errno.EROFS, "Read-only file system"), fallback="runs/eval")
    'cannot write into runs/eval: read-only file system'
    """
    if error.errno is None and error.filename is None:  # not the system's: a library's own message (a hub lookup)
        return " ".join(str(error).split()) or type(error).__name__
    reason = OS_REASONS.get(error.errno) or " ".join(str(error.strerror or error).split()) or type(error).__name__
    path = error.filename
    if error.errno == errno.ENOENT and path is not None and os.path.islink(path):
        reason = f"a symbolic link to a missing target ({os.readlink(path)})"
    action = "cannot write" if error.errno in WRITE_ONLY or getattr(error, "writing", False) else "cannot access"
    if path is None:  # a write to an open file (or a library that lost the name): the output is the place
        return f"cannot write into {fallback}: {reason}" if fallback is not None else f"{action} a file: {reason}"
    if error.filename2 is not None:
        return f"cannot move {_shown(path)} to {_shown(error.filename2)}: {reason}"
    return f"{action} {_shown(path)}: {reason}"


def _shown(name: object) -> str:
    return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else str(name)  # an int: a descriptor


def write_failure(error: Exception, output: str | None) -> OSError | None:
    """The OSError inside a library's own write error (safetensors, torch.save), or None.

    safetensors says ``I/O error: No space left on device (os error 28)``; torch's zip writer
    says only ``unexpected pos`` or ``file write failed``, so a nearly full disk under the
    output is taken as the reason.
    """
    text = str(error)
    code = re.search(r"\(os error (\d+)\)", text)
    if type(error).__name__ == "SafetensorError" and code:
        return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
    if isinstance(error, RuntimeError) and re.search(r"PytorchStreamWriter|inline_container", text) and \
            re.search(r"unexpected pos|write failed", text):
        free = _free_bytes(output)
        if free is not None and free < 1 << 20:
            return OSError(errno.ENOSPC, "No space left on device")
        return OSError(errno.EIO, "Input/output error")
    return None


def _free_bytes(output: str | None) -> int | None:
    for folder in (Path(output), *Path(output).parents) if output else ():
        try:
            if folder.is_dir():
                return shutil.disk_usage(folder).free
        except OSError:
            return None
    return None


def out_of_memory(error: Exception) -> str | None:
    """What ran out, when ``error`` is an allocation failure (torch's, on CPU or GPU, or Python's), else None.

    torch is looked up, not imported: verbs such as ``score`` never load it.
    """
    torch = sys.modules.get("torch")
    text = " ".join(str(error).split())
    tried = re.search(r"tried to allocate ([\d.]+ ?[KMGT]i?B|\d+ bytes)", text, re.IGNORECASE)
    size = f", tried to allocate {_bytes(tried.group(1))}" if tried else ""
    if torch is not None and isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return f"GPU memory{size}"
    if isinstance(error, RuntimeError) and re.search(r"DefaultCPUAllocator|can.t allocate memory", text):  # torch, CPU
        return f"CPU memory{size}"
    if isinstance(error, MemoryError):
        return "memory"
    return None


def _bytes(amount: str) -> str:
    """``101000000000 bytes`` as ``101.0 GB``; sizes with a unit stay as they are."""
    if not amount.endswith(" bytes"):
        return amount
    return f"{int(amount.split()[0]) / 1e9:.1f} GB"


def shown_path(path: str | Path) -> str:
    """``path`` printable in any terminal or JSON file: a byte that is not UTF-8 reads ``\\xff``.

    >>> shown_path(os.fsdecode(b"data\\xff/Slake1.0"))
    'data\\\\xff/Slake1.0'
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def require_utf8_name(path: str | Path, what: str) -> None:
    """A UserError when ``path``'s name is not UTF-8 (``os.fsdecode`` keeps such bytes as surrogates).

    Such a path cannot be written into results.json or printed on a UTF-8 terminal, so it is
    refused when first met, not at the end of a run.
    """
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{shown_path(path)}: the {what}'s path is not UTF-8 text, which results files and "
                        "terminals cannot carry; rename it (convmv renames from other encodings)") from None
