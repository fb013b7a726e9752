"""The cohort store: one Zarr v3 group per participant on a local filesystem.

Layout and attributes are fixed by :mod:`schemas.layout`.  This module is the only code that
touches the store's files; every stage reads and writes through it.

Guarantees
----------
* **Atomic groups.**  :func:`write_group` writes a whole participant group under a temporary
  name (``schemas.layout.TMP_PREFIX``) beside its final place and renames it into place only
  when every array and attribute is on disk.  A group being replaced is moved aside, the new
  one moved in, then the old one deleted.  Readers therefore see either the old group or the
  new one, never a half-written one; :func:`participant_ids` ignores temporary names, so a
  crashed task leaves only invisible debris (removed by the next write of that participant).
* **Atomic arrays.**  :func:`write_array` adds or replaces one array of an existing group the
  same way (temporary name inside the group folder, then rename).
* **Whole shards.**  Arrays are chunked by ``CHUNK_SHAPE`` (3-D access) inside shards of
  ``SHARD_SHAPE``, both clipped to the array's shape.  One task always writes an array whole,
  so no shard is ever written by two tasks: partial-shard writes from several tasks race on
  the shard's read-modify-write and silently lose data.
* **Compression.**  Blosc with the zstd compressor and bit shuffle inside each
  shard (``clevel`` 1: bit-shuffled zstd-1 compresses MR magnitudes about as well as
  zstd-5 at several times its speed, so writing keeps pace with reading .nii.gz inputs),
  one Blosc block per inner chunk (``_BLOSC_BLOCKSIZE``).
* **Scaled integers.**  An image written with its sources' ``(slope, intercept)`` pairs
  (:meth:`GroupWriter.add` ``value_maps``) is stored as the integers ``q`` wherever
  ``float32(q * slope + intercept)`` reproduces it bit for bit (:func:`quantise_exact`);
  :func:`read_array` and :func:`open_array` decode it to the identical float32 values.
* **Direct shard writes.**  Zarr writes the array metadata; the shard files are encoded here
  (:func:`_write_shards`: same bytes layout as zarr's, about three times faster).
* **Viewers.**  Every image array is also described by OME-Zarr 0.5 (NGFF) ``multiscales``
  metadata under ``attrs["ome"]`` (axes ``x, y, z`` in mm, scale = voxel spacing,
  translation = the world position of voxel 0), so napari (napari-ome-zarr) or neuroglancer can
  open it.  NGFF 0.5 has no rotation: for an oblique acquisition the exact affine is the one
  in ``attrs["myocohort"]["affine"]``.

``store`` arguments are a path (``str`` or :class:`~pathlib.Path`) to the store folder;
everything sent to Dask workers is therefore a plain path and pickles.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from schemas import SCHEMA_VERSION
from schemas.layout import (
    ARRAY_DTYPES,
    ATTRS_KEY,
    CHUNK_SHAPE,
    FF_ARRAY,
    IMAGE_ARRAYS,
    SHARD_SHAPE,
    TMP_PREFIX,
    GroupAttrs,
)
from schemas.manifest import check_participant_id

if TYPE_CHECKING:
    import dask.array

log = logging.getLogger(__name__)

#: Axis names of every stored 3-D array (array axis 0 -> x = Right, 1 -> y = Anterior,
#: 2 -> z = Superior), also the Zarr ``dimension_names``.
DIMENSION_NAMES: tuple[str, str, str] = ("x", "y", "z")
#: Arrays described by OME-Zarr multiscales metadata (continuous images).
OME_ARRAYS: tuple[str, ...] = (*IMAGE_ARRAYS, FF_ARRAY)
OME_VERSION = "0.5"
_ZARR_JSON = "zarr.json"
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


def _read_json(path: Path) -> dict:
    with path.open() as fh:
        return json.load(fh)


def _write_json_atomic(path: Path, doc: dict) -> None:
    """Write ``doc`` to ``path`` through a temporary file and ``os.replace`` (atomic on POSIX)."""
    tmp = path.with_name(_tmp_name(path.name))
    try:
        with tmp.open("w") as fh:
            json.dump(doc, fh, indent=2, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
        "attributes": {ATTRS_KEY: {"schema_version": SCHEMA_VERSION, "kind": "cohort"}},
    }
    _write_json_atomic(meta, doc)
    return root


def chunking(shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(chunk shape, shard shape) for an array of ``shape`` (voxels).

    Chunks are ``CHUNK_SHAPE`` clipped to the array; shards are ``SHARD_SHAPE`` clipped to the
    array rounded up to whole chunks (a shard is always a whole number of chunks).
    """
    if len(shape) != 3:
        raise ValueError(f"arrays in the store are 3-D; got shape {tuple(shape)}")
    if any(int(s) <= 0 for s in shape):
        raise ValueError(f"array shape {tuple(shape)} has an empty axis")
    chunks = tuple(min(int(c), int(s)) for c, s in zip(CHUNK_SHAPE, shape, strict=True))
    shards = tuple(
        min(int(sh), -(-int(s) // c) * c) for sh, s, c in zip(SHARD_SHAPE, shape, chunks, strict=True)
    )
    shards = tuple(max(c, (sh // c) * c) for sh, c in zip(shards, chunks, strict=True))
    return chunks, shards


#: Blosc block size (bytes): a whole 64x64x64 chunk of up to 4-byte voxels is one block.
#: Blosc's automatic choice at clevel 1 is 32 KiB, tuned for the L1 cache, but then zstd's
#: per-block set-up dominates: one block per chunk compresses MR images 2-3x faster, decodes
#: 2-4x faster and a little smaller (NIfTI-derived float32 0.271 -> 0.263, rescaled DICOM
#: 0.817 -> 0.803 of raw).  Any Blosc decoder reads the block size from the chunk header.
_BLOSC_BLOCKSIZE = 1 << 20


def _compressor():
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", blocksize=_BLOSC_BLOCKSIZE)


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


def _zarr_array(path: Path, data: np.ndarray, attributes: dict | None = None) -> None:
    """Write ``data`` as a standalone Zarr v3 array rooted at folder ``path`` (whole shards).

    Zarr writes the metadata; the shards themselves are encoded here (:func:`_write_shards`,
    about three times zarr's own sharded write path) when the metadata is the layout that
    function produces, else by zarr."""
    import zarr
    from zarr.storage import LocalStore

    chunks, shards = chunking(data.shape)
    fill = 0 if data.dtype.kind in "iu" else 0.0
    arr = zarr.create_array(
        store=LocalStore(path),
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks,
        shards=shards,
        compressors=_compressor(),
        fill_value=fill,
        dimension_names=DIMENSION_NAMES,
        attributes=attributes,
        zarr_format=3,
        overwrite=True,
    )
    if _direct_shards_ok(_read_json(path / _ZARR_JSON)):
        _write_shards(path, data, chunks, shards)
    else:  # pragma: no cover - another zarr version's defaults
        arr[...] = np.ascontiguousarray(data)


def _direct_shards_ok(meta: dict) -> bool:
    """True when the array metadata is exactly the layout :func:`_write_shards` writes."""
    try:
        (shard,) = meta["codecs"]
        conf = shard["configuration"]
        inner = [c["name"] for c in conf["codecs"]]
        index = [c["name"] for c in conf["index_codecs"]]
        return (
            shard["name"] == "sharding_indexed" and conf["index_location"] == "end"
            and inner == ["bytes", "blosc"]
            and conf["codecs"][0].get("configuration", {}).get("endian", "little") == "little"
            and index == ["bytes", "crc32c"]
            and meta["chunk_key_encoding"] == {"name": "default",
                                               "configuration": {"separator": "/"}}
        )
    except (KeyError, TypeError, ValueError):
        return False


_EMPTY = np.uint64(2**64 - 1)


#: Threads that encode one array's chunks (Blosc releases the GIL): the last channel of a
#: participant is then compressed on two cores instead of one while nothing else runs.
_ENCODE_THREADS = 2


def _write_shards(path: Path, data: np.ndarray, chunks, shards) -> None:
    """Encode and write every shard file of ``data`` (Zarr v3 ``sharding_indexed``: Blosc-zstd
    inner chunks, then the little-endian uint64 (offset, nbytes) index and its CRC32C).

    Inner chunks equal to the fill value (all bits zero) are left out, as zarr does; edge
    chunks are padded with zeros to the full chunk shape.  Chunks are encoded in
    ``_ENCODE_THREADS`` threads; the bytes written do not depend on the thread count."""
    from concurrent.futures import ThreadPoolExecutor

    import google_crc32c
    from numcodecs import Blosc

    codec = Blosc(cname="zstd", clevel=1, shuffle=Blosc.BITSHUFFLE, blocksize=_BLOSC_BLOCKSIZE)
    data = np.asarray(data, dtype=data.dtype.newbyteorder("<"))
    bits = data.view(f"<u{data.dtype.itemsize}")
    per = tuple(sh // c for sh, c in zip(shards, chunks, strict=True))
    n_shards = tuple(-(-s // sh) for s, sh in zip(data.shape, shards, strict=True))
    full = tuple(chunks)

    def encode(box: tuple[slice, ...]) -> bytes | None:
        # copy first, then test the contiguous copy for non-zero bits (cheaper than testing
        # the strided box, and the copy is needed anyway for every non-empty chunk)
        block = data[box]
        if block.shape != full:
            pad = np.zeros(full, dtype=data.dtype)
            pad[tuple(slice(0, b) for b in block.shape)] = block
            block = pad
        else:
            block = np.ascontiguousarray(block)
        if not block.view(bits.dtype).any():
            return None
        return codec.encode(block)

    with ThreadPoolExecutor(_ENCODE_THREADS, thread_name_prefix="store-encode") as pool:
        for si in np.ndindex(*n_shards):
            cells, boxes = [], []
            for ci in np.ndindex(*per):
                lo = [(s * p + c) * ch for s, p, c, ch in zip(si, per, ci, chunks, strict=True)]
                if any(x >= n for x, n in zip(lo, data.shape, strict=True)):
                    continue
                cells.append(ci)
                boxes.append(tuple(slice(x, min(x + ch, n))
                                   for x, ch, n in zip(lo, chunks, data.shape, strict=True)))
            index = np.full((*per, 2), _EMPTY, dtype="<u8")
            parts, offset = [], 0
            for ci, enc in zip(cells, pool.map(encode, boxes), strict=True):
                if enc is None:
                    continue
                index[ci] = (offset, len(enc))
                parts.append(enc)
                offset += len(enc)
            if not parts:
                continue
            raw = index.tobytes()
            parts.append(raw)
            parts.append(np.uint32(google_crc32c.value(raw)).astype("<u4").tobytes())
            f = path.joinpath("c", *(str(i) for i in si))
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"".join(bytes(p) for p in parts))


def _create_array(path: Path, data: np.ndarray, *, value_maps=()) -> None:
    """Write ``data`` as a standalone Zarr v3 array rooted at folder ``path``.

    With ``value_maps`` (candidate ``(slope, intercept)`` pairs) a float32 array whose z-slices
    are exactly ``float32(q * slope + intercept)`` for integers ``q`` is stored as the integers
    (see :func:`quantise_exact`); otherwise, or when that is not exact, as float32.
    """
    if value_maps and data.dtype == np.float32:
        enc = quantise_exact(data, value_maps)
        if enc is not None:
            q, meta, floats = enc
            _zarr_array(path, q, {ENCODING_KEY: meta})
            if floats is not None:
                _zarr_array(path / FLOAT_SLICES, floats)
            return
    _zarr_array(path, data)


# --------------------------------------------------------------------------------------------
# exact integer encoding of scaled images (DICOM RescaleSlope/Intercept, NIfTI scl_slope)

#: Zarr attribute of an array stored as integers ``q``: the values are
#: ``float32(float64(q) * slope + intercept)`` per z-slice (see :func:`quantise_exact`).
ENCODING_KEY = "myocohort_encoding"
#: Sub-array (inside the array's folder) holding the z-slices that are stored as float32.
FLOAT_SLICES = "float_slices"
_MAX_VALUE_MAPS = 64
_Q_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.int32)


def _decode_slab(q: np.ndarray, slopes: np.ndarray, inters: np.ndarray) -> np.ndarray:
    """``float32(float64(q) * slope[z] + intercept[z])`` (the readers' own arithmetic)."""
    if np.all(slopes == 1.0) and np.all(inters == 0.0):
        return q.astype(np.float32)  # int -> float32 rounds like int -> float64 -> float32
    out = q.astype(np.float64)
    out *= slopes
    out += inters
    return out.astype(np.float32)


def quantise_exact(data: np.ndarray, value_maps, *, x_block: int = 16):
    """Integers ``q`` with ``data == float32(float64(q) * slope + intercept)`` bit for bit.

    Scanner images are integers mapped to real values by a slope and intercept (DICOM
    RescaleSlope/RescaleIntercept or a Real World Value Mapping; NIfTI ``scl_slope``).  The
    float32 result of that mapping fills every mantissa bit, which no lossless compressor can
    undo, while the integers compress several times smaller.  Each z-slice (axis 2) may use its
    own pair from ``value_maps``; a slice no pair reproduces exactly (e.g. a blended overlap of
    two stations) is kept as float32.

    Parameters
    ----------
    data : 3-D float32 array.
    value_maps : candidate ``(slope, intercept)`` pairs (at most 64 are tried).

    Returns
    -------
    ``(q, meta, floats)`` or None when fewer than half of the slices are exact (then storing
    float32 is as good).  ``q`` is the smallest integer dtype that holds the values (0 in
    float slices); ``meta`` is the JSON encoding (``maps``: list of ``[slope, intercept]``;
    ``map_index``: per z-slice index into ``maps``, -1 for a float slice; ``dtype``);
    ``floats`` holds the float slices (shape ``(nx, ny, n_float)``) or is None.
    """
    if data.ndim != 3 or data.dtype != np.float32 or not data.size:
        return None
    maps = []
    for s, c in value_maps:
        s, c = float(s), float(c)
        if np.isfinite(s) and np.isfinite(c) and s != 0 and (s, c) not in maps:
            maps.append((s, c))
    maps = maps[:_MAX_VALUE_MAPS]
    if not maps:
        return None
    orig = data
    # Work in the array's own memory order (the stitched arrays of ingest are views laid out
    # like their sources): x and y flips are undone (the test is per z-slice, so their order
    # does not matter; q is flipped back at the end) and blocks are cut along the slower of x
    # and z, so every pass runs straight through memory.
    flips = tuple(ax for ax in (0, 1) if data.strides[ax] < 0)
    if flips:
        data = np.flip(data, flips)
    nx, ny, nz = data.shape
    bits = data.view(np.uint32)
    axis = 2 if abs(data.strides[2]) > abs(data.strides[0]) else 0
    # per slice: the first pair exact on a sparse sample (cheap), verified below on every voxel
    sample = data[::7, ::7, :]
    choice = np.full(nz, -1, dtype=np.int64)
    for m, (s, c) in enumerate(maps):
        todo = choice < 0
        if not todo.any():
            break
        sub = sample[:, :, todo]
        q = np.rint((sub.astype(np.float64) - c) / s)
        ok = np.all(_decode_slab(q, s, c).view(np.uint32) == sub.view(np.uint32), axis=(0, 1))
        choice[np.flatnonzero(todo)[ok]] = m
    if np.count_nonzero(choice >= 0) * 2 < nz:
        return None
    slopes = np.array([maps[m][0] if m >= 0 else 1.0 for m in choice])
    inters = np.array([maps[m][1] if m >= 0 else 0.0 for m in choice])
    inters32, inv_slopes32 = inters.astype(np.float32), (1.0 / slopes).astype(np.float32)
    identity = bool(np.all(slopes == 1.0) and np.all(inters == 0.0))
    q32 = np.empty_like(data, dtype=np.int32)  # laid out like data (positive strides)
    bad = choice < 0
    for i in range(0, data.shape[axis], x_block):  # cache-sized temporaries
        cut = slice(i, i + x_block)
        box = (cut, slice(None), slice(None)) if axis == 0 else (slice(None), slice(None), cut)
        zs = cut if axis == 2 else slice(None)  # the z-slices of this block
        src = data[box]
        qb = q32[box]
        if identity:  # integers stored as float32: int32 and back is the whole test
            with np.errstate(invalid="ignore"):  # garbage when not an integer: caught below
                np.copyto(qb, src, casting="unsafe")
            same = qb.astype(np.float32).view(np.uint32) == bits[box]
        else:
            # q in float32 arithmetic: exact enough to round to the right integer for the
            # usual |q| < 2**21; a wrong q (or one out of int32 range) fails the test below
            blk = src - inters32[zs]
            blk *= inv_slopes32[zs]
            np.rint(blk, out=blk)
            np.clip(blk, -2.0**31, 2.0**31 - 128, out=blk)
            np.copyto(qb, blk, casting="unsafe")
            same = _decode_slab(qb, slopes[zs], inters[zs]).view(np.uint32) == bits[box]
        bad[zs] |= ~np.all(same, axis=(0, 1))
    for k in np.flatnonzero(bad & (choice >= 0)):  # sample was lucky: try the other pairs
        col = data[:, :, k]
        choice[k] = -1
        for m, (s, c) in enumerate(maps):
            q = np.clip(np.rint((col.astype(np.float64) - c) / s), -2.0**31, 2.0**31 - 1)
            q = q.astype(np.int32)  # test the integers that are stored (-0.0 becomes 0)
            if np.array_equal(_decode_slab(q, s, c).view(np.uint32), col.view(np.uint32)):
                choice[k], q32[:, :, k] = m, q
                break
    floats_idx = np.flatnonzero(choice < 0)
    if floats_idx.size * 2 > nz:
        return None
    q32[:, :, floats_idx] = 0
    lo, hi = int(q32.min()), int(q32.max())
    qdtype = next(t for t in _Q_DTYPES if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
    q = q32.astype(qdtype, copy=False)
    del q32
    if flips:
        q = np.flip(q, flips)
    meta = {
        "kind": "scaled_integer",
        "dtype": "float32",
        "maps": [[s, c] for s, c in maps],
        "map_index": [int(m) for m in choice],
    }
    floats = np.ascontiguousarray(orig[:, :, floats_idx]) if floats_idx.size else None
    # Bit-exactness was checked above on every voxel of every integer slice, with the very
    # decoding arithmetic of read_array/open_array (_decode_slab of the int32 q; the narrowing
    # cast is exact by the range check); float slices are copied.
    return q, meta, floats


def _slab_maps(meta: dict, z0: int, z1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slopes, intercepts, map indices) of z-slices ``z0:z1``."""
    idx = np.asarray(meta["map_index"][z0:z1], dtype=np.int64)
    maps = np.asarray(meta["maps"], dtype=np.float64).reshape(-1, 2)
    slopes = np.where(idx >= 0, maps[np.maximum(idx, 0), 0], 1.0)
    inters = np.where(idx >= 0, maps[np.maximum(idx, 0), 1], 0.0)
    return slopes, inters, idx


def _decode(q: np.ndarray, meta: dict, floats, z0: int = 0,
            xy: tuple[slice, slice] = (slice(None), slice(None))) -> np.ndarray:
    """Float32 values of the integer block ``q`` whose first z-slice is ``z0`` and whose x/y
    extent in the whole array is ``xy``; ``floats`` is the float-slices array (NumPy or zarr,
    whole array's x/y, indexed by float-slice number along z) or None."""
    z1 = z0 + q.shape[2]
    slopes, inters, idx = _slab_maps(meta, z0, z1)
    out = _decode_slab(q, slopes, inters)
    where = np.flatnonzero(idx < 0)
    if where.size:
        if floats is None:
            raise ValueError("scaled-integer array without its float slices")
        # float-slice number of each float z-slice = float slices before it
        number = np.cumsum(np.asarray(meta["map_index"], dtype=np.int64) < 0) - 1
        f = number[z0 + where]
        block = np.asarray(floats[xy[0], xy[1], int(f[0]):int(f[-1]) + 1])
        out[:, :, where] = block[:, :, f - f[0]]
    return out


def ome_metadata(names: list[str] | tuple[str, ...], affine) -> dict:
    """OME-Zarr 0.5 ``attrs["ome"]``: one single-level multiscale image per image array.

    Scale = voxel spacing (mm, the column norms of the affine); translation = world position
    (mm) of voxel (0, 0, 0).  Axes are named like the arrays' ``dimension_names``.
    """
    a = np.asarray(affine, dtype=float)
    spacing = [float(v) for v in np.linalg.norm(a[:3, :3], axis=0)]
    origin = [float(v) for v in a[:3, 3]]
    axes = [{"name": n, "type": "space", "unit": "millimeter"} for n in DIMENSION_NAMES]
    multiscales = []
    for name in [n for n in OME_ARRAYS if n in names]:
        multiscales.append({
            "name": name,
            "axes": axes,
            "datasets": [{
                "path": name,
                "coordinateTransformations": [
                    {"type": "scale", "scale": spacing},
                    {"type": "translation", "translation": origin},
                ],
            }],
        })
    return {"version": OME_VERSION, "multiscales": multiscales}


def _group_doc(attrs_json: dict, names) -> dict:
    doc_attrs: dict[str, Any] = {ATTRS_KEY: attrs_json}
    ome = ome_metadata(list(names), attrs_json["affine"])
    if ome["multiscales"]:
        doc_attrs["ome"] = ome
    return {"zarr_format": 3, "node_type": "group", "attributes": doc_attrs}


def _array_names(gdir: Path) -> list[str]:
    return sorted(
        p.name for p in gdir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / _ZARR_JSON).is_file()
    )


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
    return (gdir / _ZARR_JSON).is_file() and (gdir / name / _ZARR_JSON).is_file()


def _open_zarr(store: str | Path, pid: str, name: str):
    import zarr
    from zarr.storage import LocalStore

    if not has_array(store, pid, name):
        raise KeyError(f"participant {pid}: no array {name!r} in store {_root(store)}")
    return zarr.open_array(LocalStore(_group_dir(store, pid) / name, read_only=True), mode="r")


def _encoding(z, store: str | Path, pid: str, name: str) -> tuple[dict | None, Any]:
    """(scaled-integer encoding, float-slices zarr array or None) of stored array ``z``."""
    import zarr
    from zarr.storage import LocalStore

    meta = z.attrs.get(ENCODING_KEY)
    if meta is None:
        return None, None
    floats = None
    if any(int(m) < 0 for m in meta["map_index"]):
        path = _group_dir(store, pid) / name / FLOAT_SLICES
        floats = zarr.open_array(LocalStore(path, read_only=True), mode="r")
    return meta, floats


def read_array(store: str | Path, pid: str, name: str) -> np.ndarray:
    """Array ``name`` of participant ``pid``, read whole into memory (NumPy).

    Images stored as scaled integers (see :func:`quantise_exact`) come back as the exact
    float32 values that were written."""
    z = _open_zarr(store, pid, name)
    meta, floats = _encoding(z, store, pid, name)
    if meta is None:
        return z[...]
    return _decode(z[...], meta, floats)


def _decode_block(q: np.ndarray, meta: dict, floats, block_info=None) -> np.ndarray:
    loc = block_info[0]["array-location"]
    return _decode(q, meta, floats, z0=loc[2][0],
                   xy=(slice(*loc[0]), slice(*loc[1])))


def open_array(store: str | Path, pid: str, name: str) -> dask.array.Array:
    """Array ``name`` of participant ``pid`` as a lazy dask array chunked like the stored
    (inner) chunks.  The graph holds only the zarr array (store path + metadata), so it
    pickles and can be sent to workers.  Scaled-integer images are decoded chunk by chunk to
    their exact float32 values."""
    import dask.array as da

    z = _open_zarr(store, pid, name)
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
        if value_maps:
            _create_array(self.tmp / name, arr, value_maps=value_maps)
        else:
            _create_array(self.tmp / name, arr)
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
        _write_json_atomic(self.tmp / _ZARR_JSON, _group_doc(attrs.to_json(), self.names))
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
    ``attrs["myocohort"]``.

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
    for p in _debris(gdir, name):
        shutil.rmtree(p, ignore_errors=True)
    tmp = gdir / _tmp_name(name)
    try:
        _create_array(tmp, arr)
        _replace_dir(tmp, gdir / name)
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
    _write_json_atomic(meta, new_doc)


def delete_group(store: str | Path, pid: str) -> None:
    """Remove participant ``pid``'s group (moved to a temporary name first, so it vanishes
    from :func:`participant_ids` at once)."""
    gdir = _group_dir(store, pid)
    if not gdir.exists():
        return
    old = gdir.with_name(_tmp_name(f"old-{pid}"))
    os.replace(gdir, old)
    shutil.rmtree(old, ignore_errors=True)
