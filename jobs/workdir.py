"""A run's workdir as a whole: opening it safely (one writer, clear errors), rebuilding a lost
ledger from the store, and erasing participants (consent withdrawal).

Errors that concern the workdir itself (a file where the folder should be, no write
permission, a damaged ledger, another run holding it) are :class:`WorkdirError`, one line
each, raised before anything is written, so the CLI exits 2 with nothing half-done.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.ledger import LEDGER_NAME, Ledger, LedgerCorrupt
from jobs.lock import FolderLock, LockHeld

if TYPE_CHECKING:
    from jobs.stages import Stage, StageInputs

log = logging.getLogger(__name__)

STORE_NAME = "store.zarr"


class WorkdirError(ValueError):
    """The workdir cannot be used as it is; the message says why and what to do."""


def check_workdir(workdir: str | Path, *, parents: bool = False) -> Path:
    """``workdir`` as an absolute path, created when missing, and writable.

    Raises
    ------
    WorkdirError
        it is a file, a parent of it is a file or missing (unless ``parents``), it cannot be
        created, or it is read-only.
    """
    return check_output_dir(workdir, "workdir", parents=parents).resolve()


def check_output_dir(path: str | Path, what: str, *, parents: bool = False) -> Path:
    """An output folder (``what`` names it in messages: ``workdir``, ``--out``) as an
    absolute path, created when missing (its missing parents too only with ``parents``), and
    writable; one-line :class:`WorkdirError` otherwise, before anything is written."""
    wd = Path(path).expanduser().absolute()
    if wd.exists() and not wd.is_dir():
        raise WorkdirError(f"{what} {wd}: is a file, not a folder")
    blocker = next((p for p in wd.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise WorkdirError(f"{what} {wd}: {blocker} is a file, not a folder")
    if not wd.exists() and not wd.parent.exists() and not parents:
        raise WorkdirError(f"{what} {wd}: its parent folder {wd.parent} does not exist "
                           "(create it, or pass --parents)")
    try:
        wd.mkdir(parents=parents, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"{what} {wd}: cannot be created ({e.strerror or e})") from None
    if not os.access(wd, os.W_OK | os.X_OK):
        raise WorkdirError(f"{what} {wd}: not writable by this user")
    return wd


def check_output_file(path: str | Path, what: str) -> Path:
    """An output file's path (absolute) whose folder exists (or is created, when its own
    parent exists) and is writable; one-line :class:`WorkdirError` otherwise."""
    out = Path(path).expanduser().absolute()
    if out.is_dir():
        raise WorkdirError(f"{what} {out}: is a folder, not a file")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise WorkdirError(f"{what} {out}: {blocker} is a file, not a folder")
    if not out.parent.exists():
        if not out.parent.parent.is_dir():  # the output's own folder is made, no more
            raise WorkdirError(f"{what} {out}: its folder {out.parent} does not exist")
        try:
            out.parent.mkdir()
        except OSError as e:
            raise WorkdirError(f"{what} {out}: its folder {out.parent} cannot be created "
                               f"({e.strerror or e})") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise WorkdirError(f"{what} {out}: its folder {out.parent} is not writable by this "
                           "user")
    return out


def lock(stack: ExitStack, folder: Path, what: str) -> FolderLock:
    """Hold ``folder``'s lock until ``stack`` closes (a store's lock file sits beside it).

    Raises
    ------
    WorkdirError
        another live process holds it (named), or the folder cannot hold a lock file.
    """
    try:
        return stack.enter_context(FolderLock(folder, what=what, beside=what == "store"))
    except LockHeld as e:
        raise WorkdirError(str(e)) from None
    except OSError as e:
        raise WorkdirError(f"{what} {folder}: not writable ({e.strerror or e})") from None


def open_ledger(workdir: Path, *, rebuild: bool = False) -> tuple[Ledger, Path | None]:
    """The workdir's ledger; with ``rebuild`` a damaged one is moved aside first (returned as
    the second value) and a new one started.

    Raises
    ------
    WorkdirError
        the ledger is damaged and ``rebuild`` was not asked for, or cannot be written.
    """
    path = workdir / LEDGER_NAME
    try:
        return Ledger(path), None
    except LedgerCorrupt as e:
        if not rebuild:
            raise WorkdirError(str(e)) from None
        aside = path.with_name(f"{LEDGER_NAME}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        log.warning("ledger %s was damaged: moved to %s, rebuilding", path, aside)
        return Ledger(path), aside
    except Exception as e:  # sqlite3: read-only file or folder, disk full
        raise WorkdirError(f"ledger {path}: cannot be opened for writing ({e})") from None


def rebuild_ledger(ledger: Ledger, inputs: StageInputs, stages: tuple[Stage, ...]) -> int:
    """Rebuild what the store itself proves: each participant's segmentation.

    For every participant of the manifest with a group in the store, a ``segment`` row is
    recorded when its labels came from the manifest, or from exactly the models of this run
    (same ``labels_source``): then segmentation, the expensive step, is not redone.  Ingest
    re-hashes each participant's sources and rewrites nothing when they are unchanged (so the
    rebuilt rows stay current); quantify, cheap, runs again.  Returns the rows recorded.
    """
    from jobs.stages import ParticipantStage
    from pipelines.store import participant_ids, read_attrs

    seg = next((s for s in stages if isinstance(s, ParticipantStage) and s.name == "segment"),
               None)
    if seg is None or inputs.manifest is None:
        return 0
    expected = expected_labels_source(inputs.models)
    present = set(participant_ids(inputs.store))
    n = 0
    for pid in inputs.manifest.participant_ids:
        if pid not in present:
            continue
        attrs = read_attrs(inputs.store, pid)
        if not attrs.input_hash:
            continue
        # the segment key reads ingest's content hash from the ledger: seed it from the store
        ledger.record(pid, "ingest", _placeholder_key(attrs.input_hash), "failed",
                      detail={"content_hash": attrs.input_hash, "rebuilt": True})
        key = seg.key(inputs, pid)
        if seg.skip(inputs, pid) and attrs.labels_source == "manifest":
            ledger.record(pid, "segment", key, "skipped",
                          detail={"reason": "labels in manifest", "rebuilt": True})
            n += 1
        elif expected and attrs.labels_source == expected:
            ledger.record(pid, "segment", key, "done", detail={"rebuilt": True})
            n += 1
    return n


def _placeholder_key(content_hash: str):
    from jobs.ledger import StageKey

    # never current (state "failed"): ingest re-checks the sources and writes nothing new
    return StageKey(content_hash, "rebuilt")


def expected_labels_source(models: Any) -> str:
    """The ``labels_source`` the given resolved models write (empty when unknown)."""
    if not models:
        return ""
    from pipelines.segment.segmenters import labels_source_of

    return "+".join(labels_source_of(m) for m in models)


# --------------------------------------------------------------------------------------------
# forgetting participants


@dataclass
class Forgotten:
    """What :func:`forget_participants` removed (participant ids only)."""

    participants: list[str] = field(default_factory=list)
    store_groups: int = 0
    parts: int = 0
    ledger_rows: int = 0
    tracebacks: int = 0
    failure_rows: int = 0
    table_rows: int = 0


def stale_participants(workdir: Path, manifest_ids) -> list[str]:
    """Participants with data in the workdir (store group, part or ledger row) that the
    manifest no longer lists."""
    from pipelines.aggregate import parts_present
    from pipelines.store import participant_ids

    keep = set(manifest_ids)
    found = set(participant_ids(workdir / STORE_NAME)) | parts_present(workdir / "tables"
                                                                      / "parts")
    if (workdir / LEDGER_NAME).exists():
        with Ledger(workdir / LEDGER_NAME) as led:
            found |= set(led.participants())
    return sorted(found - keep - {"cohort"})


def forget_participants(workdir: Path, participant_ids, ledger: Ledger | None = None
                        ) -> Forgotten:
    """Erase every trace of these participants from the workdir: store group (images,
    labels, fat maps), quantify parts, ledger rows, traceback files, failure rows and their
    rows in the tables.  The caller holds the workdir lock and rebuilds fit and report."""
    import pandas as pd

    from pipelines.aggregate import part_paths, remove_part
    from pipelines.store import delete_group
    from pipelines.store import participant_ids as store_ids
    from pipelines.store.integrity import damaged_copies

    out = Forgotten(participants=list(dict.fromkeys(participant_ids)))
    ids = set(out.participants)
    store = workdir / STORE_NAME
    in_store = set(store_ids(store)) if store.exists() else set()
    for pid in out.participants:
        if pid in in_store:
            delete_group(store, pid)
            out.store_groups += 1
        elif (store / pid).exists():  # a half-written or unreadable group: still theirs
            shutil.rmtree(store / pid)
            out.store_groups += 1
        for copy in damaged_copies(store, pid) if store.exists() else ():
            shutil.rmtree(copy, ignore_errors=True)
        if any(p.exists() for p in part_paths(workdir / "tables" / "parts", pid)):
            remove_part(workdir / "tables" / "parts", pid)
            out.parts += 1
        tb = workdir / "tracebacks"
        if tb.is_dir():
            for f in tb.iterdir():
                stage, _, rest = f.name.partition("-")
                if rest == f"{pid}.txt":
                    f.unlink()
                    out.tracebacks += 1
    own = ledger is None and (workdir / LEDGER_NAME).exists()
    led = Ledger(workdir / LEDGER_NAME) if own else ledger
    if led is not None:
        for pid in out.participants:
            out.ledger_rows += led.forget_participant(pid)
        if own:
            led.close()
    failures = workdir / "failures.parquet"
    if failures.exists():
        from pipelines._io import write_parquet_atomic

        df = pd.read_parquet(failures)
        keep = ~df["participant_id"].astype(str).isin(ids)
        out.failure_rows = int((~keep).sum())
        if out.failure_rows:
            write_parquet_atomic(df[keep].reset_index(drop=True), failures)
    out.table_rows = _drop_table_rows(workdir / "tables", ids)
    return out


def _drop_table_rows(tables: Path, ids: set[str]) -> int:
    import pandas as pd

    from pipelines.aggregate import TABLE_FILES, write_metrics_tables

    paths = {k: tables / v for k, v in TABLE_FILES.items()}
    if not all(p.exists() for p in paths.values()):
        return 0
    frames = {k: pd.read_parquet(p) for k, p in paths.items()}
    n = sum(int(f["participant_id"].astype(str).isin(ids).sum()) for f in frames.values())
    if n:
        kept = {k: f[~f["participant_id"].astype(str).isin(ids)].reset_index(drop=True)
                for k, f in frames.items()}
        write_metrics_tables(tables, kept["muscle_metrics"], kept["participant_metrics"],
                             kept["cohort"])
    return n
