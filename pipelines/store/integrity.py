"""Store integrity: a checksum record for every shard file, written with the array, and the
checks that use it.

Guarantees
----------
* **Recorded when written.**  Right after an array's shard files are written (by this
  package, into the array's temporary folder), each file's size, the CRC32C of its tail (the
  Zarr sharding index and the index's own checksum) and the CRC32C of the whole file are
  recorded in the array's ``zarr.json`` attributes (``myocohort_integrity``), so the record
  is published atomically with the array.
* **Cheap check** (what every run does before relying on a stored array): the array's
  ``zarr.json`` parses, every recorded shard file exists with its recorded size and shard
  index, and no unrecorded shard file appeared.  A deleted or truncated shard, a damaged
  index or a lost array folder is found at a cost of one ``stat`` and one small read per
  shard.
* **Full check** (every :func:`~pipelines.store.read_array` / ``open_array`` before it reads,
  and ``myocohort verify --full``): every byte of every shard against its recorded CRC32C
  (~15 GB/s, so a few milliseconds per participant, and the bytes are then cached for the
  decoder).  A damaged byte is found even where the codec would decode it silently.
* Arrays written before checksums were recorded are reported as *unverified*, never as
  damaged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

INTEGRITY_KEY = "myocohort_integrity"
_ZARR_JSON = "zarr.json"


class StoreDamaged(ValueError):
    """A stored array is missing or damaged; the message names the participant, the array
    and the file."""


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


def _shard_files(array_dir: Path) -> list[Path]:
    chunks = array_dir / "c"
    return sorted(p for p in chunks.rglob("*") if p.is_file()) if chunks.is_dir() else []


def _index_bytes(meta: dict) -> int:
    """Bytes of the sharding index at the end of every shard file (16 per inner chunk, plus
    its 4-byte CRC32C)."""
    (shard,) = meta["codecs"]
    conf = shard["configuration"]
    per = [s // c for s, c in zip(meta["chunk_grid"]["configuration"]["chunk_shape"],
                                  conf["chunk_shape"], strict=True)]
    return 16 * int(np.prod(per)) + 4


def record(array_dir: Path) -> None:
    """Record the checksums of the array's shard files in its ``zarr.json`` (called by the
    writer right after the shards are written, before the array is published)."""
    from pipelines._io import write_json_atomic

    meta_path = array_dir / _ZARR_JSON
    meta = json.loads(meta_path.read_text())
    tail = _index_bytes(meta)
    shards = {}
    for f in _shard_files(array_dir):
        data = f.read_bytes()
        shards[f.relative_to(array_dir).as_posix()] = [len(data), _crc32c(data[-tail:]),
                                                       _crc32c(data)]
    meta.setdefault("attributes", {})[INTEGRITY_KEY] = {
        "algorithm": "crc32c", "index_bytes": tail, "shards": shards}
    write_json_atomic(meta_path, meta, fsync=True, allow_nan=False)


@dataclass(frozen=True)
class Problem:
    """One damaged or missing thing: which participant, array and file, and what is wrong."""

    store: str
    participant_id: str
    array: str
    file: str
    what: str

    @property
    def message(self) -> str:
        return (f"store {self.store}: participant {self.participant_id}: array "
                f"{self.array!r}: {self.file}: {self.what}")


@dataclass
class GroupReport:
    """What :func:`verify_group` found."""

    problems: list[Problem] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged_arrays(self) -> list[str]:
        return sorted({p.array for p in self.problems})


def verify_array(array_dir: Path, *, full: bool = False) -> tuple[list[tuple[str, str]], bool]:
    """([(file, what is wrong)], whether a record existed) for one array folder."""
    meta_path = array_dir / _ZARR_JSON
    if not array_dir.is_dir():
        return [(str(array_dir), "array folder missing")], True
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return [(str(meta_path), "metadata file missing")], True
    except (OSError, ValueError) as e:
        return [(str(meta_path), f"metadata unreadable ({e})")], True
    rec = (meta.get("attributes") or {}).get(INTEGRITY_KEY)
    problems: list[tuple[str, str]] = []
    nested = array_dir / "float_slices"
    if nested.is_dir():  # the scaled-integer codec's side array
        sub, _ = verify_array(nested, full=full)
        problems += sub
    if not rec:
        return problems, False
    recorded = rec.get("shards", {})
    tail = int(rec.get("index_bytes", 0))
    seen = {f.relative_to(array_dir).as_posix() for f in _shard_files(array_dir)}
    for name in sorted(seen - set(recorded)):
        problems.append((str(array_dir / name), "shard file not in the checksum record"))
    for name, (size, index_crc, file_crc) in sorted(recorded.items()):
        f = array_dir / name
        if name not in seen:
            problems.append((str(f), "shard file missing"))
            continue
        actual = f.stat().st_size
        if actual != size:
            problems.append((str(f), f"size {actual} bytes, {size} when written"))
            continue
        try:
            if full:
                data = f.read_bytes()
                if _crc32c(data[-tail:]) != index_crc:
                    problems.append((str(f), "shard index damaged (checksum differs)"))
                elif _crc32c(data) != file_crc:
                    problems.append((str(f), "chunk data damaged (checksum differs)"))
            else:
                with f.open("rb") as fh:
                    fh.seek(size - tail)
                    if _crc32c(fh.read(tail)) != index_crc:
                        problems.append((str(f), "shard index damaged (checksum differs)"))
        except OSError as e:
            problems.append((str(f), f"unreadable ({e.strerror or e})"))
    return problems, True


def expected_arrays(attrs) -> list[str]:
    """The arrays a group's attributes say it holds: its image channels, ``labels`` when a
    source is recorded, ``ff`` when quantify recorded its settings."""
    names = list(attrs.channels)
    if attrs.labels_source:
        names.append("labels")
    if "quantify" in dict(attrs.extra):
        names.append("ff")
    return names


def verify_group(store: str | Path, pid: str, *, full: bool = False,
                 arrays: list[str] | None = None) -> GroupReport:
    """Check participant ``pid``'s arrays (default: every array its attributes say it holds),
    by their logical names, wherever the layout puts them (``labels`` at
    ``labels/muscles/0``, or where a store not migrated yet has it)."""
    from pipelines.store.groups import _array_dir_in, _group_dir, read_attrs

    report = GroupReport()
    gdir = _group_dir(store, pid)
    try:
        attrs = read_attrs(store, pid)
    except (KeyError, OSError, ValueError) as e:
        report.problems.append(Problem(str(store), pid, "(group)", str(gdir / _ZARR_JSON),
                                       f"group metadata unreadable ({e})"))
        return report
    for name in arrays if arrays is not None else expected_arrays(attrs):
        problems, recorded = verify_array(_array_dir_in(gdir, name), full=full)
        if not recorded:
            report.unverified.append(name)
        report.problems += [Problem(str(store), pid, name, f, what) for f, what in problems]
    return report


DAMAGE_NOTE = "DAMAGE.txt"


def quarantine_group(store: str | Path, pid: str, problems: list[str] = ()) -> Path | None:
    """Move a damaged group out of the way (hidden ``.damaged-<pid>-<time>`` folder, never
    listed as a participant) so its participant is rebuilt from its sources; kept, not
    deleted, since for a participant whose sources are gone it is the only copy.  What was
    found damaged (``problems``) is written beside it in ``DAMAGE.txt``.  Returns where it
    went (None when there was no group)."""
    import os
    import time

    from pipelines.store.groups import _group_dir

    gdir = _group_dir(store, pid)
    if not gdir.exists():
        return None
    dest = gdir.with_name(f".damaged-{pid}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(gdir, dest)
    if problems:
        (dest / DAMAGE_NOTE).write_text("\n".join(problems) + "\n")
    return dest


def damage_note(store: str | Path, pid: str) -> tuple[Path, str] | None:
    """(the newest quarantined copy of ``pid``'s group, what was damaged in it), or None."""
    copies = damaged_copies(store, pid)
    if not copies:
        return None
    note = copies[-1] / DAMAGE_NOTE
    text = note.read_text().strip() if note.is_file() else ""
    return copies[-1], "; ".join(text.splitlines()) or "damage not recorded"


def damaged_copies(store: str | Path, pid: str) -> list[Path]:
    """The quarantined copies of participant ``pid``'s group."""
    import re

    root = Path(store)
    if not root.is_dir():
        return []
    pat = re.compile(rf"^\.damaged-{re.escape(pid)}-\d{{8}}-\d{{6}}-\d+$")
    return sorted(p for p in root.iterdir() if pat.match(p.name))


def explain(store: str | Path, pid: str, name: str, error: BaseException) -> StoreDamaged:
    """A decoding error of array ``name`` turned into :class:`StoreDamaged` naming the
    damaged file (found by a full check of the array), or the array folder when the record
    cannot tell."""
    from pipelines.store.groups import _array_dir

    array_dir = _array_dir(store, pid, name)
    try:
        problems, _ = verify_array(array_dir, full=True)
    except Exception:  # the check itself failed: name the folder
        problems = []
    where = "; ".join(f"{f}: {what}" for f, what in problems) or str(array_dir)
    return StoreDamaged(f"store {store}: participant {pid}: array {name!r}: {where}: "
                        f"cannot be decoded ({type(error).__name__}: {error})")
