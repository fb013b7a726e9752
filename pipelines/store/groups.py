"""Participant groups and their arrays: paths, atomic publication, reading back.

Every function here takes the store path and a participant id; the arrays' bytes are written
by :mod:`.shards`, scaled images decoded by :mod:`.scaled` and the group's OME listing made
by :mod:`.ome`.  Whole temporary *folders* (a group or an array being written) are named with
``schemas.layout.TMP_PREFIX`` (:func:`_tmp_name`) and cleaned up by the next write of the
same participant or array; single metadata files are replaced through
:func:`pipelines._io.write_json_atomic`, whose hidden temporary files are no folders and so
are never taken for a group or an array.

Arrays are named by their logical names (``water``, ``labels``, ``ff``, ...); their folders
come from :func:`schemas.layout.array_path` (``labels`` -> ``labels/muscles/0``, inside the
OME-Zarr labels group written with it), with a layout-1 ``labels`` array (a plain array at
``<pid>/labels``, see :mod:`.migrate`) found where it is (:func:`_array_dir_in`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines._io import write_json_atomic
from pipelines.store.ome import _group_doc, label_image_doc, labels_group_doc
from pipelines.store.scaled import ENCODING_KEY, FLOAT_SLICES, _decode, _decode_block
from pipelines.store.shards import _ZARR_JSON, _create_array, _read_json
from schemas import SCHEMA_VERSION
from schemas.layout import (
    ARRAY_DTYPES,
    ATTRS_KEY,
    LABEL_IMAGE,
    LABELS_ARRAY,
    LAYOUT_VERSION,
    TMP_PREFIX,
    GroupAttrs,
    array_path,
    top_entry,
)
from schemas.manifest import check_participant_id

if TYPE_CHECKING:
    import dask.array

log = logging.getLogger(__name__)

_ARRAY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: Label arrays may be uint8 or uint16 (schemas.layout names uint8 the default).
_LABEL_DTYPES = ("uint8", "uint16")


# --------------------------------------------------------------------------------------------
# paths and small helpers


def _root(store: str | Path) -> Path:
    return Path(store)


def _group_dir(store: str | Path, pid: str) -> Path:
    check_participant_id(pid)
    return _root(store) / pid


def _array_dir_in(gdir: Path, name: str) -> Path:
    """Folder of logical array ``name`` in group folder ``gdir`` (:func:`schemas.layout.
    array_path`); for ``labels`` not found there, a layout-1 labels array at ``<gdir>/labels``
    when there is one (a store not migrated yet reads the same)."""
    path = gdir / array_path(name)
    if name == LABELS_ARRAY and not (path / _ZARR_JSON).is_file():
        legacy = gdir / LABELS_ARRAY
        if _node_type(legacy) == "array":
            return legacy
    return path


def _array_dir(store: str | Path, pid: str, name: str) -> Path:
    """Folder of logical array ``name`` of participant ``pid`` (see :func:`_array_dir_in`)."""
    return _array_dir_in(_group_dir(store, pid), name)


def _node_type(folder: Path) -> str | None:
    """``"array"`` or ``"group"`` for a folder with a readable ``zarr.json``, else None."""
    try:
        return _read_json(folder / _ZARR_JSON).get("node_type")
    except (OSError, ValueError, AttributeError):
        return None


def _write_label_docs(labels_dir: Path, affine) -> None:
    """The OME-Zarr metadata of a labels group folder whose array is in place: the
    image-label's ``zarr.json``, then the ``labels`` group's (written last: a labels folder
    with it is complete)."""
    write_json_atomic(labels_dir / LABEL_IMAGE / _ZARR_JSON, label_image_doc(affine),
                      fsync=True, allow_nan=False)
    write_json_atomic(labels_dir / _ZARR_JSON, labels_group_doc(), fsync=True,
                      allow_nan=False)


def _check_array_name(name: str) -> str:
    if not isinstance(name, str) or not _ARRAY_NAME_RE.match(name):
        raise ValueError(
            f"array name {name!r} must start with a letter or digit and contain only "
            "letters, digits, '-' or '_' (at most 64 characters)"
        )
    return name


def _tmp_name(label: str) -> str:
    return f"{TMP_PREFIX}{label}-{uuid.uuid4().hex[:12]}"


def _debris(folder: Path, label: str) -> list[Path]:
    """Temporary folders named by :func:`_tmp_name` for exactly ``label`` (or ``old-label``)."""
    pat = re.compile(rf"^{re.escape(TMP_PREFIX)}(old-)?{re.escape(label)}-[0-9a-f]{{12}}$")
    return [p for p in folder.iterdir() if pat.match(p.name)] if folder.is_dir() else []


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the complete folder ``tmp`` to ``final``; an existing ``final`` is moved aside
    first and deleted only after the new one is in place."""
    old = None
    if final.exists():
        old = final.with_name(_tmp_name(f"old-{final.name}"))
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None and not final.exists():
            os.replace(old, final)  # put the old one back rather than lose it
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_store(store: str | Path) -> Path:
    """Create the store's root group (``attrs["myocohort"] = {schema_version, kind}``) if it
    does not exist yet; return the store path.  Safe to call from several tasks at once."""
    root = _root(store)
    meta = root / _ZARR_JSON
    if meta.is_file():
        return root
    if root.exists() and any(p for p in root.iterdir() if not p.name.startswith(".")):
        if not meta.is_file():
            raise ValueError(f"store {root}: folder exists, is not empty and is not a Zarr store")
    root.mkdir(parents=True, exist_ok=True)
    doc = {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {ATTRS_KEY: {"schema_version": SCHEMA_VERSION, "kind": "cohort",
                                   "layout": LAYOUT_VERSION}},
    }
    write_json_atomic(meta, doc, fsync=True, allow_nan=False)
    return root


# --------------------------------------------------------------------------------------------
# arrays of a group


def _as_stored_dtype(name: str, array: np.ndarray, pid: str) -> np.ndarray:
    """Cast to the layout's dtype for ``name``; refuse casts that would change values."""
    array = np.asarray(array)
    if name == "labels":
        if array.dtype.name in _LABEL_DTYPES:
            return array
        if array.dtype.kind not in "iuf" and array.dtype != np.bool_:
            raise ValueError(f"participant {pid}: labels have dtype {array.dtype}")
        if array.dtype.kind == "f" and not (
            np.all(np.isfinite(array)) and np.array_equal(array, np.round(array))
        ):
            raise ValueError(f"participant {pid}: labels are not finite integers")
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if lo < 0 or hi > np.iinfo(np.uint16).max:
            raise ValueError(f"participant {pid}: label values {lo}..{hi} outside 0..65535")
        return array.astype(np.uint8 if hi <= 255 else np.uint16)
    dtype = ARRAY_DTYPES.get(name)
    if dtype is None:
        return array
    return array.astype(dtype, copy=False)


def _array_names(gdir: Path) -> list[str]:
    """Logical names of the complete arrays in group folder ``gdir``, sorted: sub-folders
    that are Zarr arrays, and ``labels`` when its array is there (either layout); hidden
    entries (temporary folders and files) are skipped."""
    names = {
        p.name for p in gdir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and _node_type(p) == "array"
    }
    if (_array_dir_in(gdir, LABELS_ARRAY) / _ZARR_JSON).is_file():
        names.add(LABELS_ARRAY)
    return sorted(names)


# --------------------------------------------------------------------------------------------
# public API


def participant_ids(store: str | Path) -> list[str]:
    """Ids of the complete participant groups in ``store``, sorted.

    Temporary (in-progress or abandoned) groups are never listed.  A store that does not exist
    yet has no participants.
    """
    root = _root(store)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.name.startswith(".") or not p.is_dir():
            continue
        meta = p / _ZARR_JSON
        if not meta.is_file():
            continue
        try:
            doc = _read_json(meta)
        except (OSError, ValueError):
            continue
        if doc.get("node_type") == "group" and ATTRS_KEY in doc.get("attributes", {}):
            out.append(p.name)
    return sorted(out)


def _group_meta(store: str | Path, pid: str) -> tuple[Path, dict]:
    gdir = _group_dir(store, pid)
    meta = gdir / _ZARR_JSON
    if not meta.is_file():
        raise KeyError(f"participant {pid}: no group in store {_root(store)}")
    return meta, _read_json(meta)


def read_attrs(store: str | Path, pid: str) -> GroupAttrs:
    """The participant's :class:`~schemas.layout.GroupAttrs`.

    Raises
    ------
    KeyError
        when the store has no (complete) group for ``pid``.
    """
    _, doc = _group_meta(store, pid)
    return GroupAttrs.from_json(doc["attributes"][ATTRS_KEY])


def has_array(store: str | Path, pid: str, name: str) -> bool:
    """True when participant ``pid`` has a complete array ``name``."""
    _check_array_name(name)
    gdir = _group_dir(store, pid)
    return (gdir / _ZARR_JSON).is_file() and (_array_dir_in(gdir, name) / _ZARR_JSON).is_file()


def array_names(store: str | Path, pid: str) -> list[str]:
    """Logical names of participant ``pid``'s complete arrays, sorted (``fat``, ``labels``,
    ``water``, ...).

    Raises
    ------
    KeyError
        when the store has no (complete) group for ``pid``.
    """
    meta, _ = _group_meta(store, pid)
    return _array_names(meta.parent)


def _open_zarr(store: str | Path, pid: str, name: str):
    import zarr
    from zarr.storage import LocalStore

    if not has_array(store, pid, name):
        raise KeyError(f"participant {pid}: no array {name!r} in store {_root(store)}")
    return zarr.open_array(LocalStore(_array_dir(store, pid, name), read_only=True), mode="r")


def _encoding(z, store: str | Path, pid: str, name: str) -> tuple[dict | None, Any]:
    """(scaled-integer encoding, float-slices zarr array or None) of stored array ``z``."""
    import zarr
    from zarr.storage import LocalStore

    meta = z.attrs.get(ENCODING_KEY)
    if meta is None:
        return None, None
    floats = None
    if any(int(m) < 0 for m in meta["map_index"]):
        path = _array_dir(store, pid, name) / FLOAT_SLICES
        floats = zarr.open_array(LocalStore(path, read_only=True), mode="r")
    return meta, floats


def read_array(store: str | Path, pid: str, name: str) -> np.ndarray:
    """Array ``name`` of participant ``pid``, read whole into memory (NumPy).

    Images stored as scaled integers (see :func:`quantise_exact`) come back as the exact
    float32 values that were written."""
    from pipelines.store.integrity import explain

    z = _open_zarr(store, pid, name)
    _check_intact(store, pid, name)
    meta, floats = _encoding(z, store, pid, name)
    try:
        if meta is None:
            return z[...]
        return _decode(z[...], meta, floats)
    except Exception as e:  # a codec's error (Blosc, CRC32C): say which file is damaged
        raise explain(store, pid, name, e) from e


def _check_intact(store: str | Path, pid: str, name: str, *, full: bool = True) -> None:
    """The full integrity check of one array before it is read: every shard file against the
    CRC32C recorded when it was written (a missing shard would otherwise read as zeros, and a
    damaged byte in an incompressible chunk as a wrong value).  CRC32C runs at ~15 GB/s, and
    the files it reads are then in the page cache for the decoder.  ``full=False``: the cheap
    check (each shard file there, with its size and sharding index), which reads no voxel.

    Raises
    ------
    StoreDamaged
        naming the participant, the array and the file.
    """
    from pipelines.store.integrity import StoreDamaged, verify_array

    problems, _ = verify_array(_array_dir(store, pid, name), full=full)
    if problems:
        raise StoreDamaged("; ".join(f"store {_root(store)}: participant {pid}: array "
                                     f"{name!r}: {f}: {what}" for f, what in problems))


def open_array(store: str | Path, pid: str, name: str) -> dask.array.Array:
    """Array ``name`` of participant ``pid`` as a lazy dask array chunked like the stored
    (inner) chunks.  The graph holds only the zarr array (store path + metadata), so it
    pickles and can be sent to workers.  Scaled-integer images are decoded chunk by chunk to
    their exact float32 values."""
    return _lazy_array(store, pid, name, full_check=True)


def _lazy_array(store: str | Path, pid: str, name: str, *, full_check: bool):
    """:func:`open_array` after the full (``full_check``) or the cheap integrity check."""
    import dask.array as da

    z = _open_zarr(store, pid, name)
    _check_intact(store, pid, name, full=full_check)
    x = da.from_zarr(z, chunks=z.chunks)
    meta, floats = _encoding(z, store, pid, name)
    if meta is None:
        return x
    return x.map_blocks(_decode_block, meta, floats, dtype=np.float32,
                        meta=np.empty((0, 0, 0), dtype=np.float32))


def write_group(
    store: str | Path, pid: str, arrays: dict[str, np.ndarray], attrs: GroupAttrs
) -> None:
    """Write participant ``pid``'s whole group atomically, replacing any old group.

    Parameters
    ----------
    store : store path (created when missing).
    pid : participant id; must equal ``attrs.participant_id``.
    arrays : name -> 3-D array, all of shape ``attrs.shape``.  Known names are cast to the
        layout's dtypes (float32 images, uint8/uint16 labels).
    attrs : the group's attributes (stored under ``attrs["myocohort"]``).
    """
    check_participant_id(pid)
    if not arrays:
        raise ValueError(f"participant {pid}: no arrays to write")
    if attrs.participant_id != pid:
        raise ValueError(f"participant {pid}: attrs are for participant {attrs.participant_id!r}")
    with GroupWriter(store, pid, shape=attrs.shape) as writer:
        for name, arr in arrays.items():
            writer.check(name, arr)
        for name, arr in arrays.items():
            writer.add(name, arr)
        writer.commit(attrs)


class GroupWriter:
    """Write one participant group array by array, then publish it atomically.

    Arrays go into a temporary group folder (invisible to :func:`participant_ids`);
    :meth:`commit` writes the group metadata and renames the folder into place (replacing an
    old group).  Leaving the ``with`` block without :meth:`commit` (an error) deletes the
    temporary folder, so the old group, if any, stays as it was.  :meth:`add` may be called
    from another thread (e.g. to compress one channel while the next is being read), but a
    given array is always written whole by one call.

    Parameters
    ----------
    store : store path (created when missing).
    pid : participant id.
    shape : the group's array shape (voxels); every array must have it.
    """

    def __init__(self, store: str | Path, pid: str, *, shape) -> None:
        check_participant_id(pid)
        self.pid = pid
        self.shape = tuple(int(s) for s in shape)
        self.root = ensure_store(store)
        self.names: list[str] = []
        self.tmp: Path | None = None
        self.committed = False

    def __enter__(self) -> GroupWriter:
        _remove_debris(self.root, self.pid)
        self.tmp = self.root / _tmp_name(self.pid)
        self.tmp.mkdir()
        return self

    def __exit__(self, *exc) -> None:
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def check(self, name: str, array: np.ndarray) -> np.ndarray:
        """Validate ``name`` and shape; return the array in its stored dtype."""
        _check_array_name(name)
        arr = _as_stored_dtype(name, array, self.pid)
        if arr.shape != self.shape:
            raise ValueError(f"participant {self.pid}: array {name!r} has shape {arr.shape}, "
                             f"group shape is {self.shape}")
        return arr

    def add(self, name: str, array: np.ndarray, *, value_maps=()) -> None:
        """Write array ``name`` whole (every shard) into the temporary group.

        ``value_maps``: the ``(slope, intercept)`` pairs that mapped the source's integers to
        this image's values; when given, the array is stored as those integers wherever that
        is bit-exact (:func:`quantise_exact`) and reads back as the same float32 values."""
        if self.tmp is None:
            raise RuntimeError("GroupWriter.add outside its with block")
        arr = self.check(name, array)
        if name in self.names:
            raise ValueError(f"participant {self.pid}: array {name!r} written twice")
        dest = self.tmp / array_path(name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if value_maps:
            _create_array(dest, arr, value_maps=value_maps)
        else:
            _create_array(dest, arr)
        self.names.append(name)

    def commit(self, attrs: GroupAttrs) -> None:
        """Write the group attributes and rename the group into place."""
        if self.tmp is None or self.committed:
            raise RuntimeError("GroupWriter.commit outside its with block or twice")
        if attrs.participant_id != self.pid:
            raise ValueError(
                f"participant {self.pid}: attrs are for participant {attrs.participant_id!r}")
        if tuple(int(s) for s in attrs.shape) != self.shape:
            raise ValueError(f"participant {self.pid}: attrs shape {attrs.shape} differs from "
                             f"the arrays' {self.shape}")
        if not self.names:
            raise ValueError(f"participant {self.pid}: no arrays to write")
        if LABELS_ARRAY in self.names:
            _write_label_docs(self.tmp / top_entry(LABELS_ARRAY), attrs.affine)
        doc = _group_doc(attrs.to_json(), self.names)
        write_json_atomic(self.tmp / _ZARR_JSON, doc, fsync=True, allow_nan=False)
        _replace_dir(self.tmp, self.root / self.pid)
        self.committed = True
        log.debug("participant %s: wrote group with arrays %s", self.pid, sorted(self.names))


def _remove_debris(root: Path, pid: str) -> None:
    """Delete temporary groups a crashed earlier write of ``pid`` left behind."""
    for p in _debris(root, pid):
        shutil.rmtree(p, ignore_errors=True)


def write_array(
    store: str | Path,
    pid: str,
    name: str,
    array: np.ndarray,
    attrs_update: dict | None = None,
) -> None:
    """Add or replace one array of an existing group atomically.

    The array is written whole (every shard by this one call) under a temporary name inside
    the group folder, then renamed into place; ``attrs_update`` (if given) is then merged into
    ``attrs["myocohort"]``.  ``labels`` are written as the whole OME-Zarr ``labels`` group
    (its image-label metadata and array), which also replaces a layout-1 labels array.

    Raises
    ------
    KeyError
        when the group does not exist.
    ValueError
        when the array's shape differs from the group's.
    """
    _check_array_name(name)
    meta, doc = _group_meta(store, pid)
    gdir = meta.parent
    shape = tuple(int(s) for s in doc["attributes"][ATTRS_KEY]["shape"])
    arr = _as_stored_dtype(name, array, pid)
    if arr.shape != shape:
        raise ValueError(
            f"participant {pid}: array {name!r} has shape {arr.shape}, group shape is {shape}"
        )
    top = top_entry(name)
    for p in _debris(gdir, top):
        shutil.rmtree(p, ignore_errors=True)
    tmp = gdir / _tmp_name(top)
    try:
        # the folder renamed into place holds the array at its path below ``top``
        staged = tmp.joinpath(*array_path(name).split("/")[1:])
        staged.parent.mkdir(parents=True, exist_ok=True)
        _create_array(staged, arr)
        if name == LABELS_ARRAY:
            _write_label_docs(tmp, doc["attributes"][ATTRS_KEY]["affine"])
        _replace_dir(tmp, gdir / top)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    # refresh the OME listing (and merge the caller's keys) in one atomic metadata write
    update_attrs(store, pid, attrs_update or {})


def update_attrs(store: str | Path, pid: str, extra: dict) -> None:
    """Merge ``extra`` into participant ``pid``'s ``attrs["myocohort"]`` (atomic rewrite of the
    group's ``zarr.json``).  Values must be JSON-serialisable (no NaN)."""
    meta, doc = _group_meta(store, pid)
    attrs_json = dict(doc["attributes"][ATTRS_KEY])
    attrs_json.update(extra)
    GroupAttrs.from_json(attrs_json)  # still valid?
    other = {k: v for k, v in doc["attributes"].items() if k not in (ATTRS_KEY, "ome")}
    new_doc = _group_doc(attrs_json, _array_names(meta.parent))
    new_doc["attributes"].update(other)
    write_json_atomic(meta, new_doc, fsync=True, allow_nan=False)


def delete_group(store: str | Path, pid: str) -> None:
    """Remove participant ``pid``'s group (moved to a temporary name first, so it vanishes
    from :func:`participant_ids` at once)."""
    gdir = _group_dir(store, pid)
    if not gdir.exists():
        return
    old = gdir.with_name(_tmp_name(f"old-{pid}"))
    os.replace(gdir, old)
    shutil.rmtree(old, ignore_errors=True)
