"""Output folders that are really folders, files written so that a killed run never leaves a half-written one,
and JSON-lines files read with every bad line located."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from slakevqa.errors import DataError, UserError


def check_output_dir(path: str | Path, flag: str) -> Path:
    """``path`` as a Path, or a UserError naming ``flag`` when it, or a folder above it, is a file.

    Nothing is created: configs call this before any data or model is loaded.
    Without it, ``mkdir(parents=True, exist_ok=True)`` ends in a FileExistsError traceback.

    >>> check_output_dir("runs/new-run", "--output_dir")
    PosixPath('runs/new-run')
    """
    path = Path(path)
    for folder in (path, *path.parents):  # the nearest existing one decides
        if folder.exists():
            if not folder.is_dir():
                where = "" if folder == path else f": {folder}"
                raise UserError(f"{flag} {path}{where} is a file, not a folder; give a folder path")
            break
    return path


def make_output_dir(path: str | Path, flag: str) -> Path:
    """:func:`check_output_dir`, then create the folder (and its parents)."""
    path = check_output_dir(path, flag)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_replaceable(path: str | Path, overwrite: bool, flag: str) -> Path:
    """:func:`check_output_dir`, then a UserError when ``path`` holds files and ``overwrite`` is off.

    Call it before the slow part (loading a model), so a refusal costs nothing.
    """
    path = check_output_dir(path, flag)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"{path} exists and is not empty; pass --overwrite to replace it")
    return path


def refuse_overlap(out: Path, source: Path, flag: str, what: str) -> None:
    """A UserError when ``out`` is ``source``, lies inside it, or contains it: replacing it would delete the source.

    >>> refuse_overlap(Path("runs/lora/merged"), Path("runs/lora"), "OUT", "ADAPTER")
    Traceback (most recent call last):
    slakevqa.errors.UserError: OUT runs/lora/merged is inside ADAPTER runs/lora; write to a folder of its own
    """
    out_real, source_real = Path(out).expanduser().resolve(), Path(source).expanduser().resolve()
    if out_real == source_real:
        relation = "is"
    elif out_real.is_relative_to(source_real):
        relation = "is inside"
    elif source_real.is_relative_to(out_real):
        relation = "contains"
    else:
        return
    raise UserError(f"{flag} {out} {relation} {what} {source}; write to a folder of its own")


@contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``target`` to write into; on success it replaces ``target``.

    The old ``target`` stays whole until the new folder is: the writer fills
    ``.<name>.partial-<pid>``; then (1) the old folder is renamed to ``.<name>.old-<pid>``,
    (2) the new one is renamed to ``<name>``, (3) the old one is deleted. A failure
    inside the block deletes the partial folder and leaves ``target`` untouched. What a
    kill -9 leaves, and how the next write of the same ``target`` (:func:`recover_folder`)
    cleans it up:

    * while writing, or before (1): the old ``target``, and a ``.partial-<pid>`` that is deleted;
    * between (1) and (2): no ``target`` for that instant; the old folder is renamed back;
    * between (2) and (3): the new ``target``, and an ``.old-<pid>`` that is deleted.

    Leftovers of a process still alive are left alone (two writers of one target).
    Kill-safe, not power-loss-proof (no fsync of the whole tree).

    >>> with atomic_folder("runs/merged") as partial:   # doctest: +SKIP
    ...     model.save_pretrained(partial)
    """
    target = Path(target)
    recover_folder(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = _sibling(target, "partial", os.getpid())
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    replace_folder(partial, target)


def replace_folder(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is renamed aside first, then deleted."""
    if not (target.exists() or target.is_symlink()):
        os.rename(new, target)
        return
    old = _sibling(target, "old", os.getpid())
    os.rename(target, old)  # (1)
    os.rename(new, target)  # (2)
    if old.is_dir() and not old.is_symlink():  # (3)
        shutil.rmtree(old)
    else:
        old.unlink()


def recover_folder(target: str | Path) -> None:
    """Clean up what a killed :func:`atomic_folder` left beside ``target`` (see there)."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for kind in ("old", "partial"):  # "old" first: a missing target gets its old folder back
        for leftover in sorted(target.parent.glob(f".{_glob_escape(target.name)}.{kind}-*")):
            pid = leftover.name.rsplit("-", 1)[-1]
            if not pid.isascii() or not pid.isdigit() or _alive(int(pid)):
                continue
            if kind == "old" and not (target.exists() or target.is_symlink()):
                os.rename(leftover, target)
            elif leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _sibling(target: Path, kind: str, pid: int) -> Path:
    return target.parent / f".{target.name}.{kind}-{pid}"


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _alive(pid: int) -> bool:
    """Whether another process ``pid`` runs (our own pid counts as dead: its writes ended or failed)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    return True


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place.

    The temporary file is ``.<name>.tmp-<pid>-<random>``; one a killed writer left is
    deleted by the next write of the same ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_file(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def recover_file(path: str | Path) -> None:
    """Delete the temporary files a killed :func:`write_text_atomic` of ``path`` left (not a live writer's)."""
    path = Path(path)
    for leftover in path.parent.glob(f".{_glob_escape(path.name)}.tmp-*"):
        pid = leftover.name.rsplit(".tmp-", 1)[-1].split("-", 1)[0]
        mine = pid == str(os.getpid())  # another thread of ours may be writing it now
        if pid.isascii() and pid.isdigit() and not mine and not _alive(int(pid)) and leftover.is_file():
            leftover.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, data: object, indent: int | None = 2) -> Path:
    """:func:`write_text_atomic` for JSON (UTF-8, Chinese kept readable)."""
    return write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def json_lines(path: str | Path) -> Iterator[tuple[int, object]]:
    """``(line number, record)`` for each non-blank line of a JSON-lines file.

    Only newlines end a line (not U+2028, which ``str.splitlines`` would split at). A line
    that is not JSON, or a file that cannot be read as UTF-8, raises a DataError naming
    the file and the line.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:  # binary lines end at b"\n" only
            for number, raw in enumerate(handle, start=1):
                if raw.strip():
                    yield number, _json_line(raw, path, number)
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise DataError(path, f"cannot read the file ({error})") from None


def _json_line(raw: bytes, path: Path, number: int) -> object:
    try:
        return json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
    except UnicodeDecodeError as error:
        raise DataError(path, f"not UTF-8 text (byte 0x{raw[error.start]:02x}); save the file as UTF-8",
                        record=f"line {number}") from None
    except json.JSONDecodeError as error:
        raise DataError(path, f"not JSON ({error.msg})", record=f"line {number}") from None
    except RecursionError:
        raise DataError(path, "invalid JSON: nested too deeply", record=f"line {number}") from None


def sync_files(folder: Path) -> None:
    """fsync every file under ``folder``: renamed into place after this, it is on disk, not only in the cache."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
