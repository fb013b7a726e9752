"""The shard encoder: one Zarr v3 array written whole, in whole shards.

Zarr writes the array metadata (``zarr.json``); the shard files themselves are encoded here
(:func:`_write_shards`: the same bytes layout as zarr's ``sharding_indexed`` write path,
about three times faster) whenever the metadata is the layout that function produces
(:func:`_direct_shards_ok`), else by zarr.  :func:`_create_array` also stores scaled images
as exact integers (:mod:`.scaled`).  Nothing here knows about participants or groups.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipelines.store.ome import DIMENSION_NAMES
from pipelines.store.scaled import ENCODING_KEY, FLOAT_SLICES, quantise_exact
from schemas.layout import CHUNK_SHAPE, SHARD_SHAPE

#: Metadata document of every Zarr v3 node (group or array).
_ZARR_JSON = "zarr.json"


def _read_json(path: Path) -> dict:
    with path.open() as fh:
        return json.load(fh)


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
    from pipelines.store.integrity import record

    record(path)  # checksums of the shard files just written (the files are in page cache)


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

