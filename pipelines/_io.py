"""File helpers every stage shares: SHA-256 of files and folders, and atomic writes.

Guarantees
----------
* **Atomic files.**  :func:`atomic_path` yields a temporary path beside the target (a hidden
  name unique to this process, thread and call); the caller writes it completely, and only then is
  it renamed onto the target with ``os.replace`` (atomic on POSIX).  A reader therefore sees
  the old file or the new one, never half of one; a writer that fails or is killed leaves
  at most hidden debris (removed here on failure).  Parent folders are created.
* **Hashes** are SHA-256 hex digests read in 1 MiB blocks; a folder's digest covers every
  file below it (relative names and bytes, sorted by name), so renaming, adding or changing
  a file changes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_BLOCK = 1 << 20


# --------------------------------------------------------------------------------------------
# hashing


def sha256_files(paths: Iterable[str | Path], digest: Any = None) -> str:
    """SHA-256 (hex) over the bytes of ``paths`` in the given order.

    ``digest``: an existing ``hashlib`` object to update (its hex digest is returned).
    """
    h = digest if digest is not None else hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            while block := fh.read(_BLOCK):
                h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """SHA-256 (hex) of one file's bytes."""
    return sha256_files([path])


def sha256_tree(path: str | Path) -> str:
    """SHA-256 (hex) of a file (its name and bytes), or of every file under a folder (each
    file's path relative to the folder, then its bytes, in sorted order)."""
    root = Path(path)
    h = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(root) if f != root else f.name).encode())
        sha256_files([f], h)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# atomic writes


def temporary_name(path: str | Path) -> Path:
    """A hidden temporary path beside ``path``, unique to this process and thread, and with a
    random part so that writers on other machines sharing the folder never collide.  The
    suffix holds no dot: torch names a checkpoint's archive folder after the file name up to
    its last dot, so ``.model.pt.tmp-...`` gives the same bytes as ``model.pt``'s own."""
    p = Path(path)
    return p.with_name(f".{p.name}.tmp-{os.getpid()}-{threading.get_ident()}-"
                       f"{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it onto ``path``.

    ``fsync``: flush the file to disk before the rename (for files whose loss after a power
    failure would be worse than their absence).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | Path, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path``."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path``."""
    return write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


def write_json_atomic(path: str | Path, doc: Any, *, fsync: bool = False, **dumps: Any) -> Path:
    """Write ``json.dumps(doc, **dumps)`` to ``path`` atomically (``indent=2`` by default)."""
    dumps.setdefault("indent", 2)
    return write_text_atomic(path, json.dumps(doc, **dumps), fsync=fsync)


def write_parquet_atomic(df: Any, path: str | Path) -> Path:
    """Write a pandas DataFrame (without its index) or a pyarrow Table as Parquet,
    atomically; return ``path``."""
    with atomic_path(path) as tmp:
        if hasattr(df, "to_parquet"):
            df.to_parquet(tmp, index=False)
        else:
            import pyarrow.parquet as pq

            pq.write_table(df, tmp)
    return Path(path)
