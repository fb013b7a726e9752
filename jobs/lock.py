"""One writer per workdir (and per store): a lock file that names its holder.

Guarantees
----------
* **One holder.**  The lock is an exclusive ``flock`` on ``.myocohort.lock`` in the folder
  (for a store: ``.<store name>.myocohort.lock`` beside it, so the store's content is not
  touched),
  held for as long as the holder's process lives: a second ``myocohort run`` on the same
  workdir (or a stage command on the same store) is refused, naming the holder's pid, host,
  command and start time.
* **Nothing stale.**  The operating system releases a ``flock`` when its process ends, however
  it ends (SIGKILL included), so a lock whose holder is gone is simply taken over; the file
  still names the previous holder, which is reported as a warning ("did not finish").
* **Clean-up is safe.**  Only the holder writes in the folder, so the debris it removes
  (temporary groups, parts) can never be a live run's files.

``flock`` works on local filesystems and on NFS mounted with lock support (NFSv4, or v3 with
lockd); on a filesystem without locking it fails loudly, never silently.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = ".myocohort.lock"


class LockHeld(RuntimeError):
    """Another live process holds the lock; the message names it."""


class FolderLock:
    """An exclusive lock on ``folder`` (created when missing) for this process.

    Use as a context manager.  ``previous`` is the holder record of a holder that ended
    without releasing it (None when the last holder finished cleanly or there was none).
    """

    def __init__(self, folder: str | Path, *, what: str = "workdir",
                 beside: bool = False) -> None:
        self.folder = Path(folder)
        self.what = what
        # ``beside``: the lock file sits next to the folder (a store's own content stays
        # untouched by runs that change nothing)
        self.path = (self.folder.parent / f".{self.folder.name}{LOCK_NAME}" if beside
                     else self.folder / LOCK_NAME)
        self.previous: dict[str, Any] | None = None
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise LockHeld(f"{self.what} {self.folder} is in use by {describe(holder)}; wait "
                           "for it to finish (one run per workdir)") from None
        except OSError as e:
            os.close(fd)
            raise OSError(f"{self.what} {self.folder}: cannot lock {self.path} ({e}); the "
                          "filesystem must support file locks") from e
        previous = _read(fd)
        if previous and not previous.get("released"):
            self.previous = previous
            log.warning("%s %s: taking over the lock of %s, which did not finish", self.what,
                        self.folder, describe(previous))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join(sys.argv[:2]) or "python", "released": False}
        _write(fd, record)
        self._fd = fd
        self._record = record
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            _write(self._fd, {**self._record, "released": True, "finished": time.time()})
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def describe(holder: dict[str, Any] | None) -> str:
    """``pid 123 on host h (myocohort run, started 2026-12-02 10:20:11)``."""
    if not holder:
        return "another process (no record)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return (f"pid {holder.get('pid')} on host {holder.get('host')} "
            f"({holder.get('command', '?')}, started {started})")


def _read(fd: int) -> dict[str, Any] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 1 << 16)
        return json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return None


def _write(fd: int, record: dict[str, Any]) -> None:
    data = json.dumps(record).encode()
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)
    os.fsync(fd)
