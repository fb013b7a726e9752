"""Exact integer storage of scaled images (DICOM RescaleSlope/Intercept, NIfTI ``scl_slope``).

A float32 image that is ``float32(float64(q) * slope + intercept)`` of integers ``q`` (one
``(slope, intercept)`` pair per z-slice) is stored as ``q`` plus the pairs
(:func:`quantise_exact`); :func:`_decode` turns stored integers back into the identical
float32 values, for a whole array or one dask block at a time (:func:`_decode_block`).
Pure NumPy: nothing here touches files or zarr.
"""

from __future__ import annotations

import numpy as np

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


def _decode_block(q: np.ndarray, meta: dict, floats, block_info=None) -> np.ndarray:
    """:func:`_decode` of one ``map_blocks`` block (its place in the array from ``block_info``)."""
    loc = block_info[0]["array-location"]
    return _decode(q, meta, floats, z0=loc[2][0],
                   xy=(slice(*loc[0]), slice(*loc[1])))
