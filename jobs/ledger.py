"""The run ledger: what was done for which participant, from which inputs, with which code.

A small SQLite file (``workdir/ledger.sqlite``), one row per (participant, stage), written
only by the client process (never by Dask workers), one committed transaction per finished
participant so a run killed at any moment keeps everything it finished.

A stage is redone for a participant when its row is missing, not ``done``, or its ``key``
(the hash of everything the stage's output depends on: input hashes, pipeline version,
model hash, config hash, upstream keys) differs from what the current run would use.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEDGER_NAME = "ledger.sqlite"
STATES = ("done", "failed", "skipped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stages (
    participant_id   TEXT NOT NULL,
    stage            TEXT NOT NULL,
    key              TEXT NOT NULL,
    input_hash       TEXT NOT NULL,
    pipeline_version TEXT NOT NULL,
    model_hash       TEXT NOT NULL,
    config_hash      TEXT NOT NULL,
    state            TEXT NOT NULL,
    started          REAL,
    finished         REAL,
    seconds          REAL,
    detail           TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (participant_id, stage)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    started     REAL NOT NULL,
    finished    REAL,
    manifest    TEXT NOT NULL,
    profile     TEXT NOT NULL,
    status      TEXT NOT NULL,
    summary     TEXT NOT NULL DEFAULT ''
);
"""


def stable_hash(*parts: Any) -> str:
    """A short SHA-256 of JSON-serialised parts (dicts sorted), for keys and config hashes."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class StageKey:
    """Everything a stage's output for one participant depends on."""

    input_hash: str
    pipeline_version: str
    model_hash: str = ""
    config_hash: str = ""

    @property
    def key(self) -> str:
        return stable_hash(self.input_hash, self.pipeline_version, self.model_hash,
                           self.config_hash)


@dataclass(frozen=True)
class LedgerRow:
    participant_id: str
    stage: str
    key: str
    input_hash: str
    pipeline_version: str
    model_hash: str
    config_hash: str
    state: str
    started: float | None
    finished: float | None
    seconds: float | None
    detail: str


class LedgerCorrupt(ValueError):
    """The ledger file cannot be used; the message says what to do."""


class Ledger:
    """Per-participant, per-stage state in SQLite.  Use as a context manager or call close().

    Raises
    ------
    LedgerCorrupt
        the file is not a usable SQLite database (damaged, or not a ledger).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we commit explicitly, one transaction per record
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("SELECT count(*) FROM stages").fetchone()
            self._db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as e:
            self._db.close()
            if "readonly" in str(e) or "unable to open" in str(e):
                raise
            raise LedgerCorrupt(
                f"ledger {self.path} is damaged ({e}): run again with --rebuild-ledger, which "
                "moves it aside and rebuilds it from the store's own attributes (nothing "
                "already segmented is redone)") from e

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # -- reading -------------------------------------------------------------------------
    def get(self, participant_id: str, stage: str) -> LedgerRow | None:
        cur = self._db.execute(
            "SELECT * FROM stages WHERE participant_id = ? AND stage = ?", (participant_id, stage)
        )
        row = cur.fetchone()
        return LedgerRow(*row) if row else None

    def rows(self, stage: str | None = None) -> list[LedgerRow]:
        q, args = "SELECT * FROM stages", ()
        if stage is not None:
            q, args = q + " WHERE stage = ?", (stage,)
        return [LedgerRow(*r) for r in self._db.execute(q + " ORDER BY participant_id", args)]

    def is_current(self, participant_id: str, stage: str, key: StageKey) -> bool:
        """True when the stage is done (or skipped) for this participant with this key."""
        row = self.get(participant_id, stage)
        return row is not None and row.state in ("done", "skipped") and row.key == key.key

    def todo(self, participant_ids: Iterable[str], stage: str,
             keys: dict[str, StageKey]) -> list[str]:
        """The participants whose stage must run (in the order given)."""
        return [p for p in participant_ids if not self.is_current(p, stage, keys[p])]

    def detail(self, participant_id: str, stage: str) -> dict[str, Any]:
        row = self.get(participant_id, stage)
        if row is None or not row.detail:
            return {}
        return json.loads(row.detail)

    # -- writing -------------------------------------------------------------------------
    def record(self, participant_id: str, stage: str, key: StageKey, state: str, *,
               seconds: float | None = None, detail: dict[str, Any] | None = None,
               started: float | None = None) -> None:
        """Record one (participant, stage) result and commit it at once."""
        if state not in STATES:
            raise ValueError(f"ledger state {state!r}; valid: {list(STATES)}")
        now = time.time()
        self._db.execute(
            "INSERT OR REPLACE INTO stages VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (participant_id, stage, key.key, key.input_hash, key.pipeline_version,
             key.model_hash, key.config_hash, state, started, now, seconds,
             json.dumps(detail or {}, sort_keys=True, default=str)),
        )

    def forget(self, participant_id: str, stage: str) -> None:
        self._db.execute("DELETE FROM stages WHERE participant_id = ? AND stage = ?",
                         (participant_id, stage))

    def start_run(self, manifest: str, profile: str) -> int:
        cur = self._db.execute(
            "INSERT INTO runs (started, manifest, profile, status) VALUES (?,?,?,?)",
            (time.time(), manifest, profile, "running"),
        )
        return int(cur.lastrowid)

    def mark_interrupted(self) -> list[int]:
        """Runs still marked ``running`` (their process ended without finishing them: the
        caller holds the workdir lock) become ``interrupted``; returns their ids."""
        ids = [r[0] for r in self._db.execute(
            "SELECT run_id FROM runs WHERE status = 'running'")]
        self._db.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")
        return ids

    def forget_participant(self, participant_id: str) -> int:
        """Delete every row of one participant; returns how many."""
        cur = self._db.execute("DELETE FROM stages WHERE participant_id = ?", (participant_id,))
        return int(cur.rowcount)

    def participants(self) -> list[str]:
        """Every participant with a row."""
        return [r[0] for r in self._db.execute(
            "SELECT DISTINCT participant_id FROM stages ORDER BY participant_id")]

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE runs SET finished = ?, status = ?, summary = ? WHERE run_id = ?",
            (time.time(), status, json.dumps(summary, default=str), run_id),
        )

    def runs(self) -> list[dict[str, Any]]:
        cur = self._db.execute("SELECT run_id, started, finished, manifest, profile, status, "
                               "summary FROM runs ORDER BY run_id")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
