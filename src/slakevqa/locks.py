"""One writer per output folder: an advisory lock beside the folder, naming its holder.

Two jobs writing one folder (two ``eval`` runs of different models, two ``train`` runs, an
``eval`` into a folder that a ``train`` is writing) silently mix their files. Every verb that
writes a folder therefore holds its lock while it writes::

    with writing("runs/lora", "train"):
        ...                                  # the second writer gets one line:

    runs/lora is being written by `slakevqa train` (pid 4242 on gpu-node-3, since 2026-12-07 08:01:13 UTC);
    wait for it to finish, or give another output folder

The lock is ``fcntl.flock`` on ``.<folder name>.slakevqa-lock`` beside the folder (inside it when only
the folder is ours to write: :func:`lock_path`), holding the holder's
pid, host, verb and start time as JSON. The kernel drops a flock when its process dies, however it
dies, so a killed holder never blocks the next run and nothing is taken over by guesswork; on NFS,
Linux maps flock to POSIX locks, which the server tracks across hosts. Beside, not inside: verbs that
replace their output folder whole (``merge``, ``convert-checkpoint``) would otherwise swap the lock away
with the folder. The same process may take a lock it already holds (training's final evaluation,
``eval`` writing its report).
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from slakevqa.errors import UserError
from slakevqa.files import INSIDE_LOCK_NAME, check_output_dir, temp_stem

LOCK_SUFFIX = ".slakevqa-lock"
_held: dict[str, tuple[int, int]] = {}  # lock path -> (file descriptor, how many times this process took it)


def lock_path(folder: str | Path) -> Path:
    """Where ``folder``'s lock lives: beside it, named after it (resolved, so two spellings share one lock).

    >>> lock_path("/runs/lora")
    PosixPath('/runs/.lora.slakevqa-lock')

    Inside the folder (``.slakevqa-lock``) when it exists and its parent is not writable (``--output_dir ~``
    on a cluster whose /home is the admin's): every process finds it by the same rule, and such a
    folder cannot be replaced whole anyway.
    """
    folder = Path(folder).expanduser().resolve()
    if folder.is_dir() and folder.parent.is_dir() and not os.access(folder.parent, os.W_OK | os.X_OK):
        return folder / INSIDE_LOCK_NAME
    return folder.parent / f".{temp_stem(folder)}{LOCK_SUFFIX}"  # a long name: a prefix and a hash, as temp files


def current_holder(folder: str | Path) -> dict | None:
    """Who holds ``folder``'s lock (``{"pid", "host", "verb", "since"}``), None when nobody does.

    A holder in this process counts as nobody: it is the caller itself; so does the main process of
    the caller's own launch (training's final evaluation on every rank reads the folder rank 0 holds).
    """
    path = lock_path(folder)
    if str(path) in _held or not path.is_file():
        return None
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        return None if holder.get("job") and holder.get("job") == launch_id() else holder
    finally:
        os.close(fd)  # also drops the shared lock, when it was taken
    return None


def launch_id() -> str | None:
    """What names this launch of ``torchrun``/``accelerate launch`` on each of its processes, on every node
    (the rendezvous address and port, and its run id); None without a launcher."""
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        return None
    return f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}:{os.environ.get('TORCHELASTIC_RUN_ID', '')}"


def refuse_if_being_written(folder: str | Path, what: str) -> None:
    """A UserError when another process is writing ``folder`` (a model folder a training extends, say).

    Read now, its weights might be the old ones or a mix; fingerprinted at the end, the new ones.
    """
    if folder and Path(folder).is_dir() and (holder := current_holder(folder)) is not None:
        raise UserError(f"{what} {folder} is being written by {describe(holder)}; "
                        "use it once that has finished (or a finished copy of it)")


@contextmanager
def writing(folder: str | Path, verb: str, flag: str = "--output_dir") -> Iterator[Path]:
    """Hold ``folder``'s lock for the block; a UserError naming the holder when another process has it.

    ``folder`` is checked first (:func:`~slakevqa.files.check_output_dir`; ``flag`` names it in the refusal).

    Under a launcher (``torchrun``, ``accelerate launch``) only the main process (``RANK`` 0) takes it:
    the others write into the same folder as part of one job, and the launcher stops them when the main
    process is refused.
    """
    folder = check_output_dir(folder, flag)
    if int(os.environ.get("RANK", "0")) != 0:
        yield folder
        return
    path = lock_path(folder)
    _acquire(path, folder, verb)
    try:
        yield folder
    finally:
        _release(path)


def describe(holder: dict) -> str:
    """``` `slakevqa train` (pid 4242 on gpu-node-3, since ...)```; unreadable fields are shown as '?'."""
    return (f"`slakevqa {holder.get('verb', '?')}` (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('since', '?')})")


def _acquire(path: Path, folder: Path, verb: str) -> None:
    import fcntl

    if str(path) in _held:
        fd, count = _held[str(path)]
        _held[str(path)] = (fd, count + 1)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(f"{folder} is being written by {describe(holder)}; wait for it to finish, "
                            "or give another output folder") from None
        if _same_file(fd, path):  # else the previous holder removed it between our open and our lock: retry
            break
        os.close(fd)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "verb": verb,
              "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "job": launch_id()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    _held[str(path)] = (fd, 1)


def _release(path: Path) -> None:
    fd, count = _held[str(path)]
    if count > 1:
        _held[str(path)] = (fd, count - 1)
        return
    del _held[str(path)]
    # Removed while still locked: a process that opened the old file finds it gone (_same_file) and retries.
    path.unlink(missing_ok=True)
    os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
