"""One writer per run folder: an advisory lock that two `amt train` processes cannot both hold.

A requeued SLURM job that starts while the old one still runs, or the same command started in two
shells, would otherwise train two models into one run folder: both resume from the same checkpoint
and then save over each other's step folders and names. The lock is `flock` on `<folder>/.lock`,
which the kernel releases when its process dies (a `kill -9` leaves no stale lock behind), and
the file records who holds it, for the message the second process prints. Where the file system
does not support locks (ENOLCK), the run goes on with a warning. This module imports nothing from
amt, so every layer may use it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock; the message names it and the way out."""


class FolderLock:
    """`acquire()` the exclusive lock of `folder` for this process (FolderLockedError when another
    holds it), `release()` it; both idempotent. `what` names the folder in messages."""

    def __init__(self, folder: Path, what: str) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        try:
            import fcntl  # why here: POSIX only
        except ImportError:
            log.warning("%s: no file locks on this system; nothing stops a second run from writing here", self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno == errno.ENOLCK:
                log.warning("%s: the file system does not support locks; nothing stops a second run from "
                            "writing here at the same time", self.path.parent)  # fmt: skip
                return
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise FolderLockedError(
                f"{self.path.parent}: {self.what} is in use by another process ({holder or 'unknown'}); wait "
                "for it to end, or choose another folder (two runs writing one folder overwrite each other)"
            ) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
