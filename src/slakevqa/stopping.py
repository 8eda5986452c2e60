"""Stop signals: what SIGTERM, SIGUSR1 and Ctrl-C do to a running verb, and the exit code a rerun resumes from.

A cluster stops a job with SIGTERM (``scancel``, preemption, the time limit), and warns it first with
SIGUSR1 when asked to (``sbatch --signal=B:USR1@120``; ``configs/slurm/train.sbatch`` passes it on).

* **Inside a graceful section** (training's step loop, :func:`graceful`): SIGTERM, SIGUSR1 and SIGINT
  (Ctrl-C) are recorded, not raised. The loop finishes the step it is in, every process agrees
  (``slakevqa.distributed.agreed_signal``), a checkpoint is written and :class:`Stopped` is raised with
  what was kept. A second Ctrl-C (two seconds or more after the first: a launcher passing on the same
  Ctrl-C is not a second one) interrupts at once.
* **Anywhere else** (loading, evaluation, saving): SIGTERM and SIGUSR1 raise :class:`Stopped` at once;
  evaluation has flushed every answer it made, files are written atomically, so nothing half-written is
  left. Ctrl-C is Python's KeyboardInterrupt.

A verb whose rerun resumes (``train``, ``eval``, ``demo``) then exits with :data:`RESUMABLE_EXIT_CODE`, the
code the sbatch script turns into ``scontrol requeue``; the others exit with 128 + the signal's number.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Iterator

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry": the rerun resumes.
RESUMABLE_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# A Ctrl-C reaches a launcher's whole process group, and torchrun passes it on to its workers again:
# repeats within this many seconds are the same Ctrl-C.
REPEAT_SECONDS = 2.0


class Stopped(BaseException):
    """A stop signal arrived. A BaseException, as KeyboardInterrupt is: a library's ``except Exception`` must
    not swallow it, and every ``finally`` and atomic write on the way out still cleans up.

    ``note``: what was kept, when the code that stopped knows it (training: the checkpoint it wrote)."""

    def __init__(self, signum: int = signal.SIGTERM, note: str | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.note = signum, note

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class _Section:
    """The state the handlers share: whether a graceful section is open, and the signal it recorded."""

    graceful = False
    pending: int | None = None
    at = 0.0
    raised = False


_section = _Section()


def install() -> dict:
    """Handle SIGTERM and SIGUSR1 as the module docstring says (main thread only: signals go there).

    Returns the previous handlers for :func:`restore`. A forked child (a data loader's worker) inherits
    the handlers but not the job: it dies of the signal as before.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    _section.graceful, _section.pending, _section.raised = False, None, False
    ours = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != ours:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if _section.graceful:
            _record(signum)
        elif not _section.raised:  # a second signal while the first unwinds: cleanup is not cut short
            _section.raised = True
            raise Stopped(signum)

    return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}


def restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python


def _record(signum: int) -> None:
    now = time.monotonic()
    if _section.pending is None:
        _section.pending, _section.at = signum, now
        print(f"{signal.Signals(signum).name}: finishing this step, then a checkpoint and exit "
              f"(code {RESUMABLE_EXIT_CODE}; rerun to resume)", flush=True)
    elif signum == signal.SIGINT and now - _section.at >= REPEAT_SECONDS:
        raise KeyboardInterrupt


def pending() -> int | None:
    """The stop signal recorded in the open graceful section (None: none came)."""
    return _section.pending


@contextlib.contextmanager
def graceful() -> Iterator[None]:
    """A section that stop signals do not interrupt: they are recorded (:func:`pending`) for the code inside to act
    on at a safe point. One still pending when the section ends raises :class:`Stopped` there.

    Outside the main thread (a notebook's worker thread) signals never reach the code: nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_int = signal.signal(signal.SIGINT, lambda signum, frame: _record(signum))
    _section.graceful, _section.pending = True, None
    try:
        yield
    finally:
        _section.graceful = False
        signal.signal(signal.SIGINT, previous_int)
        left, _section.pending = _section.pending, None
    if left is not None:
        raise Stopped(left)


def exit_code(signum: int, resumes: bool) -> int:
    """:data:`RESUMABLE_EXIT_CODE` for a verb whose rerun resumes, else the shell's 128 + the signal's number.

    >>> exit_code(signal.SIGUSR1, resumes=True), exit_code(signal.SIGTERM, resumes=False)
    (75, 143)
    """
    return RESUMABLE_EXIT_CODE if resumes else 128 + signum
