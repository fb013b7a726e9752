"""Module-level task functions for the scheduling tests (they must pickle by reference)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def where(item, *, out: str) -> str:
    from distributed import get_worker

    w = get_worker()
    with open(Path(out) / f"{item}.where", "w") as fh:
        fh.write(w.name if isinstance(w.name, str) else str(w.name))
    return str(w.name)


def slow_once(item, *, out: str, sleep_s: float) -> str:
    """Marks a start (with this process id), sleeps, then appends one "done" line."""
    d = Path(out)
    with open(d / "starts.log", "a") as fh:
        fh.write(f"{item} {os.getpid()}\n")
    time.sleep(sleep_s)
    with open(d / "done.log", "a") as fh:
        fh.write(f"{item}\n")
    return item


def track_in_flight(item, *, out: str, sleep_s: float) -> str:
    d = Path(out)
    marker = d / f"running-{item}"
    marker.touch()
    n = len(list(d.glob("running-*")))
    with open(d / "concurrency.log", "a") as fh:
        fh.write(f"{n}\n")
    time.sleep(sleep_s)
    marker.unlink()
    return item


def kill_own_worker_for(item, *, victim: str) -> str:
    """Kills its own worker process (like the OOM killer) when given the victim participant."""
    import signal

    if item == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    return item
