"""Live progress per stage on stderr, a structured JSON-lines log, and the end-of-run summary."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines._dask import Outcome

LOG_NAME = "run.log.jsonl"


def _iso(ts: float) -> str:
    """ISO 8601 local time with its UTC offset, to the millisecond."""
    from datetime import datetime

    ms = round(ts * 1000)
    t = datetime.fromtimestamp(ms // 1000).replace(microsecond=ms % 1000 * 1000)
    return t.astimezone().isoformat(timespec="milliseconds")


class EventLog:
    """Structured run log: one JSON object per line (``ts`` epoch seconds, ``time`` the same
    instant in ISO 8601 with its UTC offset, ``event``, fields).

    It also receives ``logging`` records of the ``pipelines``, ``cluster`` and ``jobs``
    loggers at INFO and above (as ``event="log"``), so warnings from stages land in the same
    file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")
        self._handler = _JsonHandler(self)
        self._loggers = [logging.getLogger(n) for n in ("pipelines", "cluster", "jobs")]
        self._levels = [lg.level for lg in self._loggers]
        # INFO records reach this file; the terminal keeps the root logger's level (-v)
        root = logging.getLogger()
        self._root_filter = _AtLeast(root.getEffectiveLevel())
        self._root_handlers = list(root.handlers)
        for h in self._root_handlers:
            h.addFilter(self._root_filter)
        for lg in self._loggers:
            lg.addHandler(self._handler)
            if lg.level == logging.NOTSET or lg.level > logging.INFO:
                lg.setLevel(logging.INFO)

    def event(self, event: str, **fields: Any) -> None:
        now = round(time.time(), 3)
        rec = {"ts": now, "time": _iso(now), "event": event, **fields}
        self._fh.write(json.dumps(rec, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        for lg, level in zip(self._loggers, self._levels, strict=True):
            lg.removeHandler(self._handler)
            lg.setLevel(level)
        for h in self._root_handlers:
            h.removeFilter(self._root_filter)
        self._fh.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AtLeast(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


class _JsonHandler(logging.Handler):
    def __init__(self, log: EventLog) -> None:
        super().__init__(logging.INFO)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._log.event("log", level=record.levelname, logger=record.name,
                            message=record.getMessage())
        except Exception:  # logging must never break the run
            self.handleError(record)


def _fmt_seconds(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


@dataclass
class StageProgress:
    """Counts and timing of one stage; prints a live line on ``stream``.

    On a terminal the line is redrawn in place; otherwise one plain line is written at most
    every ``interval`` seconds and at the end, so CI logs stay short.  ``quiet``: count only
    (a command that prints its own line per participant).
    """

    stage: str
    total: int
    skipped: int = 0
    stream: IO[str] | None = None
    interval: float = 5.0
    quiet: bool = False
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.perf_counter)
    busy_seconds: float = 0.0
    _last: float = 0.0
    finished: float | None = None

    def __post_init__(self) -> None:
        if self.stream is None:
            self.stream = sys.stderr
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    @property
    def remaining(self) -> int:
        return self.total - self.done - self.failed

    @property
    def elapsed(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def rate(self) -> float:
        """Participants finished per second (done + failed)."""
        n = self.done + self.failed
        return n / self.elapsed if self.elapsed > 0 and n else 0.0

    @property
    def eta(self) -> float:
        return self.remaining / self.rate if self.rate > 0 else float("nan")

    def line(self) -> str:
        return (f"{self.stage:<9} {self.done}/{self.total} done  {self.failed} failed  "
                f"{self.remaining} remaining  {self.rate:.2f}/s  ETA {_fmt_seconds(self.eta)}"
                + (f"  ({self.skipped} up to date)" if self.skipped else ""))

    def update(self, outcome: Outcome) -> None:
        if outcome.ok:
            self.done += 1
        else:
            self.failed += 1
        self.busy_seconds += outcome.seconds
        now = time.perf_counter()
        if self.quiet:
            return
        if self._tty:
            self.stream.write("\r" + self.line() + "\033[K")
            self.stream.flush()
        elif now - self._last >= self.interval and self.remaining:
            self._last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        self.finished = time.perf_counter()
        if not self.quiet and (self.total or self.skipped):
            self.stream.write(("\r" if self._tty else "") + self.line()
                              + ("\033[K" if self._tty else "") + "\n")
            self.stream.flush()

    def summary(self) -> dict[str, Any]:
        n = self.done + self.failed
        return {
            "stage": self.stage, "processed": self.total, "done": self.done,
            "failed": self.failed, "up_to_date": self.skipped,
            "wall_s": round(self.elapsed, 3),
            "throughput_per_s": round(n / self.elapsed, 4) if self.elapsed > 0 and n else 0.0,
            "mean_task_s": round(self.busy_seconds / n, 4) if n else 0.0,
        }


def format_summary(stages: list[dict[str, Any]], total_s: float, n_failures: int,
                   warnings: list[str] = ()) -> str:
    """The end-of-run table: per stage counts, wall time and throughput, then the warnings a
    finished run should be read with (a reduced fit)."""
    head = f"{'stage':<10}{'done':>6}{'failed':>8}{'up-to-date':>12}{'wall':>10}{'rate/s':>9}{'task s':>9}"
    lines = ["", "run summary", head, "-" * len(head)]
    for s in stages:
        lines.append(f"{s['stage']:<10}{s['done']:>6}{s['failed']:>8}{s['up_to_date']:>12}"
                     f"{_fmt_seconds(s['wall_s']):>10}{s['throughput_per_s']:>9.2f}"
                     f"{s['mean_task_s']:>9.2f}")
    lines.append(f"total {_fmt_seconds(total_s)}; "
                 + (f"{n_failures} failure(s), see failures.parquet" if n_failures
                    else "no failures"))
    lines += [f"warning: {w}" for w in warnings]
    return "\n".join(lines)
