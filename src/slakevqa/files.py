"""Output folders that are really folders, files written so that a killed run never leaves a half-written one,
and JSON-lines files read with every bad line located."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from slakevqa.errors import DataError, UserError
from slakevqa.os_errors import describe_os_error, require_utf8_name


def check_output_dir(path: str | Path, flag: str) -> Path:
    """``path`` as a Path, or a one-line UserError naming ``flag`` when it cannot become an output folder.

    Refused: a name longer than the file system allows; the path, or a folder above it, is a
    file or a symbolic link that leads nowhere; the nearest existing folder is not writable
    (permissions, a read-only file system). Nothing is created: configs call this before any
    data or model is loaded, so a refusal costs nothing (without it, ``mkdir`` ends in a
    traceback after the model loaded).

    >>> check_output_dir("runs/new-run", "--output_dir")
    PosixPath('runs/new-run')
    """
    path = Path(path)
    require_utf8_name(path, f"{flag} folder")  # results files and terminals carry UTF-8 only
    check_name_lengths(path, flag)
    try:
        _check_nearest_folder(path, flag)
    except OSError as error:  # a path longer than the system takes (4096 bytes), a folder we may not search
        raise UserError(f"{flag} {path}: {describe_os_error(error)}") from None
    return path


def _check_nearest_folder(path: Path, flag: str) -> None:
    for folder in (path, *path.parents):  # the nearest existing one decides
        if folder.is_symlink() and not folder.exists():
            where = "" if folder == path else f": {folder}"
            leads = "in a loop" if _stat_errno(folder) == errno.ELOOP else "to a missing folder"
            raise UserError(f"{flag} {path}{where} is a symbolic link {leads} ({os.readlink(folder)}); "
                            "create its target or give another path")
        if folder.exists():
            if not folder.is_dir():
                where = "" if folder == path else f": {folder}"
                raise UserError(f"{flag} {path}{where} is a file, not a folder; give a folder path")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise UserError(f"{flag} {path}: cannot write into {folder}: {_unwritable_reason(folder)}; "
                                "give a folder you can write to")
            return


def check_name_lengths(path: Path, flag: str) -> None:
    """A UserError naming ``flag`` when a part of ``path`` is longer (in bytes) than its file system allows.

    >>> check_name_lengths(Path("runs") / ("x" * 300), "--output_dir")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    slakevqa.errors.UserError: --output_dir: the name 'xxx...' is 300 bytes long; this file system allows 255
    """
    limit = name_max(_nearest_existing(path))
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > limit:
            shown = part if len(part) <= 32 else part[:32] + "..."
            raise UserError(f"{flag}: the name {shown!r} is {size} bytes long; this file system allows {limit}")


def name_max(folder: Path) -> int:
    """The longest file name, in bytes, that ``folder``'s file system takes (255 when it cannot say)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def _nearest_existing(path: Path) -> Path:
    for folder in (path, *path.parents):
        try:
            if folder.is_dir():
                return folder
        except OSError:  # a name too long, a folder we may not search: look further up
            continue
    return Path(".")


def _stat_errno(path: Path) -> int | None:
    try:
        path.stat()
    except OSError as error:
        return error.errno
    return None


def _unwritable_reason(folder: Path) -> str:
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "read-only file system" if read_only else "permission denied"


def make_output_dir(path: str | Path, flag: str) -> Path:
    """:func:`check_output_dir`, then create the folder (and its parents)."""
    path = check_output_dir(path, flag)
    path.mkdir(parents=True, exist_ok=True)
    return path


# The lock a writer holds inside its output folder when the folder's parent is not writable (locks.lock_path).
INSIDE_LOCK_NAME = ".slakevqa-lock"


def holds_files(folder: Path) -> bool:
    """Whether ``folder`` holds anything but the lock of the writer now writing it."""
    return any(entry.name != INSIDE_LOCK_NAME for entry in folder.iterdir())


def check_replaceable(path: str | Path, overwrite: bool, flag: str) -> Path:
    """:func:`check_output_dir`, then a UserError when ``path`` holds files and ``overwrite`` is off.

    Call it before the slow part (loading a model), so a refusal costs nothing.
    """
    path = check_output_dir(path, flag)
    if path.is_dir() and holds_files(path) and not overwrite:
        raise UserError(f"{path} exists and is not empty; pass --overwrite to replace it")
    if path.exists():  # replaced by a new folder written beside it (atomic_folder)
        check_output_dir(path.parent, flag)
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
        for leftover, pid in _leftovers(target, kind, r"([0-9]+)"):
            if _alive(pid):
                continue
            if kind == "old" and not (target.exists() or target.is_symlink()):
                os.rename(leftover, target)
            elif leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _sibling(target: Path, kind: str, pid: int) -> Path:
    return target.parent / f".{temp_stem(target)}.{kind}-{pid}"


# Bytes a temporary name adds to its stem: "." + ".partial-" + a pid + "-" + mkstemp's 8 random characters,
# with room to spare. A stem longer than the file system's limit minus this is shortened (temp_stem).
TEMP_NAME_RESERVE = 40


def temp_stem(target: Path) -> str:
    """The part of ``target``'s temporary names that says whose they are: its name, or, when that name is too
    long to take a prefix and a suffix (245 bytes of 255), a prefix of it and a hash of the whole.

    The same target always gets the same stem, so a later write finds what an earlier one left.

    >>> temp_stem(Path("runs/report.md"))
    'report.md'
    >>> stem = temp_stem(Path("runs") / ("é" * 120))   # 240 bytes
    >>> len(stem.encode()), stem[-9:]
    (215, '~bb658d82')
    """
    name = target.name
    limit = name_max(_nearest_existing(target.parent)) - TEMP_NAME_RESERVE
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) <= limit:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:8]
    prefix = encoded[:limit - 9].decode("utf-8", "ignore")  # "ignore": a character cut in two is dropped whole
    return f"{prefix}~{digest}"


def _leftovers(target: Path, kind: str, rest: str) -> Iterator[tuple[Path, int]]:
    """``(path, pid)`` of each ``.<stem>.<kind>-<rest>`` beside ``target`` (rest: a pattern with the pid first).

    Matched in full, so the leftovers of another target whose name starts like this one
    (``out`` and ``out.partial-7``) are never taken for ours.
    """
    stem = temp_stem(target)
    pattern = re.compile(re.escape(f".{stem}.{kind}-") + rest)
    for leftover in sorted(target.parent.glob(f".{_glob_escape(stem)}.{kind}-*")):
        match = pattern.fullmatch(leftover.name)
        if match:
            yield leftover, int(match.group(1))


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

    The temporary file is ``.<name>.tmp-<pid>-<random>`` (a long name shortened: :func:`temp_stem`);
    one a killed writer left is deleted by the next write of the same ``path``. A failed write
    (a full disk) deletes it and leaves ``path`` as it was; its OSError names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_file(path)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{temp_stem(path)}.tmp-{os.getpid()}-", dir=path.parent)
    except OSError as error:
        raise _write_error(error, path) from error
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None:
            raise _write_error(error, path) from error
        raise
    return path


def _write_error(error: OSError, path: Path) -> OSError:
    """``error`` naming the file asked for, not a temporary one (a write to an open file names none at all),
    and marked as a write for :func:`describe_os_error` (``permission denied`` alone does not say which)."""
    named = OSError(error.errno, error.strerror, str(path))
    named.writing = True
    return named


def recover_file(path: str | Path) -> None:
    """Delete the temporary files a killed :func:`write_text_atomic` of ``path`` left (not a live writer's)."""
    path = Path(path)
    for leftover, pid in _leftovers(path, "tmp", r"([0-9]+)-[A-Za-z0-9_]+"):
        mine = pid == os.getpid()  # another thread of ours may be writing it now
        if not mine and not _alive(pid) and leftover.is_file() and not leftover.is_symlink():
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
