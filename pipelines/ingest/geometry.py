"""Placing stations on one common grid and blending them.

Pure NumPy/SciPy kernels on in-memory volumes (RAS+ orientation, body axis = array axis 2).

The common grid is the lattice of the *reference* station (the first one given: same
orientation, spacing and voxel centres), extended to the union of every station's extent.
A station whose lattice coincides with the reference's up to a whole-voxel shift is copied
in place; any other station is resampled onto the common grid (trilinear for images, nearest
neighbour for labels).

Blending: each station weighs its voxels by their distance (in voxels, along the body axis)
to the station's own upper or lower end, ``w = min(k + 0.5, n - 0.5 - k)``.  Where two
stations overlap, the weights sum to a constant, so the normalised weights fall linearly from
1 to 0 across the overlap (linear blending).  Weights are normalised before use, so a voxel
seen by one station is copied bit for bit.  Labels are not blended: each voxel takes the
label of the station with the largest weight there.  Voxels no station covers are 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from schemas.layout import BODY_AXIS

#: Slab thickness (voxels along the body axis) for resampling, to bound temporary memory.
_SLAB = 16


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape (voxels) and affine (voxel index -> RAS+ mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"grid shape {self.shape} must be 3 positive sizes")
        if np.asarray(self.affine).shape != (4, 4):
            raise ValueError("grid affine must be 4x4")

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    def describe(self) -> str:
        """Short text for error messages: shape, spacing and origin."""
        sp = "x".join(f"{v:g}" for v in np.round(self.spacing, 4))
        org = ", ".join(f"{v:.2f}" for v in self.affine[:3, 3])
        return f"{'x'.join(map(str, self.shape))} voxels of {sp} mm at ({org}) mm"


def same_grid(a: Grid, b: Grid, tol_mm: float = 1e-3) -> bool:
    """True when ``a`` and ``b`` have the same shape and their affines agree within
    ``tol_mm`` (mm) on every voxel axis and on the origin."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, atol=tol_mm, rtol=0))


def _corners(shape: Sequence[int]) -> np.ndarray:
    """Homogeneous voxel coordinates (4x8) of the centres of a grid's corner voxels."""
    idx = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1)
    return np.vstack([idx, np.ones((1, idx.shape[1]))])


def common_grid(grids: Sequence[Grid]) -> Grid:
    """The reference (first) grid's lattice extended to cover every grid in ``grids``."""
    ref = grids[0]
    inv = np.linalg.inv(ref.affine)
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for g in grids:
        vox = (inv @ g.affine @ _corners(g.shape))[:3]
        lo = np.minimum(lo, vox.min(axis=1))
        hi = np.maximum(hi, vox.max(axis=1))
    # snap to the reference lattice; 1e-3 voxel forgives rounding in headers
    lo_i = np.floor(lo + 1e-3).astype(int)
    hi_i = np.ceil(hi - 1e-3).astype(int)
    shape = tuple(int(v) for v in hi_i - lo_i + 1)
    shift = np.eye(4)
    shift[:3, 3] = lo_i
    return Grid(shape, ref.affine @ shift)


def integer_shift(station: Grid, grid: Grid, tol: float = 1e-4) -> np.ndarray | None:
    """Whole-voxel offset ``t`` with station voxel = grid voxel + t, or None when the two
    lattices differ by more than a shift."""
    m = np.linalg.inv(station.affine) @ grid.affine
    if not np.allclose(m[:3, :3], np.eye(3), atol=tol):
        return None
    t = m[:3, 3]
    if not np.allclose(t, np.round(t), atol=tol):
        return None
    return np.round(t).astype(int)


def _ramp(n: int) -> np.ndarray:
    """Blending weight of a station's voxels along the body axis (n voxels)."""
    k = np.arange(n, dtype=np.float64)
    return np.minimum(k + 0.5, n - 0.5 - k)


@dataclass
class _Placement:
    """Where a station lands on the common grid."""

    grid_slices: tuple[slice, slice, slice]
    station_slices: tuple[slice, slice, slice] | None  # None: resample
    matrix: np.ndarray  # grid voxel -> station voxel (4x4)


def _place(station: Grid, grid: Grid) -> _Placement | None:
    """Bounding box of ``station`` on ``grid``; None when it does not touch the grid."""
    m = np.linalg.inv(station.affine) @ grid.affine
    t = integer_shift(station, grid)
    if t is not None:
        g_lo = np.maximum(-t, 0)
        g_hi = np.minimum(np.array(station.shape) - t, np.array(grid.shape))
        if np.any(g_hi <= g_lo):
            return None
        gs = tuple(slice(int(a), int(b)) for a, b in zip(g_lo, g_hi, strict=True))
        ss = tuple(slice(int(a + o), int(b + o)) for a, b, o in zip(g_lo, g_hi, t, strict=True))
        return _Placement(gs, ss, m)
    vox = (np.linalg.inv(m) @ _corners(station.shape))[:3]
    lo = np.maximum(np.floor(vox.min(axis=1) - 0.5).astype(int), 0)
    hi = np.minimum(np.ceil(vox.max(axis=1) + 0.5).astype(int) + 1, np.array(grid.shape))
    if np.any(hi <= lo):
        return None
    return _Placement(tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)), None, m)


def _slabs(sl: slice):
    for k0 in range(sl.start, sl.stop, _SLAB):
        yield slice(k0, min(k0 + _SLAB, sl.stop))


def _station_coords(p: _Placement, ks: slice) -> np.ndarray:
    """Station voxel coordinates (3, ni, nj, nk) of the grid voxels in placement box x slab."""
    gi, gj = p.grid_slices[0], p.grid_slices[1]
    ii, jj, kk = np.meshgrid(np.arange(gi.start, gi.stop), np.arange(gj.start, gj.stop),
                             np.arange(ks.start, ks.stop), indexing="ij")
    pts = np.stack([ii, jj, kk]).reshape(3, -1).astype(np.float64)
    out = p.matrix[:3, :3] @ pts + p.matrix[:3, 3:4]
    return out.reshape((3, *ii.shape))


def _weights_resampled(coords: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Blend weight at station coordinates ``coords``; 0 outside the station."""
    eps = 1e-6
    inside = np.ones(coords.shape[1:], dtype=bool)
    for ax in range(3):
        inside &= (coords[ax] >= -0.5 - eps) & (coords[ax] <= shape[ax] - 0.5 + eps)
    k = coords[BODY_AXIS]
    n = shape[BODY_AXIS]
    w = np.minimum(k + 0.5, n - 0.5 - k)
    return np.where(inside, np.maximum(w, 0.0), 0.0)


def _station_weights(station: Grid, p: _Placement, ks: slice):
    """(grid sub-box slices, weights) for the slab ``ks`` of the placement."""
    box = (p.grid_slices[0], p.grid_slices[1], ks)
    if p.station_slices is not None:
        off = p.station_slices[2].start - p.grid_slices[2].start
        ramp = _ramp(station.shape[BODY_AXIS])[ks.start + off:ks.stop + off]
        shape = (p.grid_slices[0].stop - p.grid_slices[0].start,
                 p.grid_slices[1].stop - p.grid_slices[1].start, len(ramp))
        return box, np.broadcast_to(ramp, shape), None
    coords = _station_coords(p, ks)
    return box, _weights_resampled(coords, station.shape), coords


def stitch(
    volumes: Sequence[np.ndarray],
    grids: Sequence[Grid],
    grid: Grid,
    *,
    labels: bool = False,
) -> np.ndarray:
    """Place every station volume on ``grid`` and blend (images) or pick (labels).

    Parameters
    ----------
    volumes : station arrays, each of its grid's shape.  Images may be float32 or integers
        that float32 holds exactly (8/16-bit); they are converted while being placed.
    grids : the stations' grids.
    grid : the common grid (see :func:`common_grid`).
    labels : nearest-neighbour resampling and no blending; keeps the integer dtype.

    Returns
    -------
    float32 array (images) or the labels' dtype, of ``grid.shape`` (in the memory layout of
    the first volume, so possibly a transposed or flipped view).
    """
    if len(volumes) != len(grids) or not volumes:
        raise ValueError("stitch: need one grid per volume and at least one volume")
    for v, g in zip(volumes, grids, strict=True):
        if tuple(v.shape) != g.shape:
            raise ValueError(f"stitch: volume shape {v.shape} != grid shape {g.shape}")
    placements = [_place(g, grid) for g in grids]
    if all(p is not None and p.station_slices is not None
           and p.grid_slices[0] == slice(0, grid.shape[0])
           and p.grid_slices[1] == slice(0, grid.shape[1]) for p in placements):
        return _stitch_slabs(volumes, grids, placements, grid, labels=labels)
    if not labels:  # resampling keeps its input's dtype: interpolate float32 values
        volumes = [v if v.dtype == np.float32 else v.astype(np.float32) for v in volumes]
    return _stitch_general(volumes, grids, placements, grid, labels=labels)


def _stitch_general(volumes, grids, placements, grid: Grid, *, labels: bool) -> np.ndarray:
    """Any placement: per-voxel weights, resampling where lattices differ."""
    from scipy.ndimage import map_coordinates

    order = 0 if labels else 1
    if labels:
        out = np.zeros(grid.shape, dtype=np.result_type(*[v.dtype for v in volumes]))
        best = np.zeros(grid.shape, dtype=np.float64)
    else:
        out = np.zeros(grid.shape, dtype=np.float32)
        wsum = np.zeros(grid.shape, dtype=np.float64)
        # pass 1: total weight per voxel, so pass 2 can use normalised weights
        for g, p in zip(grids, placements, strict=True):
            if p is None:
                continue
            for ks in _slabs(p.grid_slices[2]):
                box, w, _ = _station_weights(g, p, ks)
                wsum[box] += w
    for vol, g, p in zip(volumes, grids, placements, strict=True):
        if p is None:
            continue
        for ks in _slabs(p.grid_slices[2]):
            box, w, coords = _station_weights(g, p, ks)
            if coords is None:
                off = [s.start - gs.start for s, gs in zip(p.station_slices, p.grid_slices,
                                                           strict=True)]
                src = vol[p.station_slices[0], p.station_slices[1],
                          slice(ks.start + off[2], ks.stop + off[2])]
            else:
                src = map_coordinates(vol, coords.reshape(3, -1), order=order, mode="nearest",
                                      prefilter=False).reshape(coords.shape[1:])
            if labels:
                take = w > best[box]
                out[box] = np.where(take, src, out[box])
                best[box] = np.where(take, w, best[box])
            else:
                total = wsum[box]
                alpha = np.divide(w, total, out=np.zeros(total.shape), where=total > 0)
                out[box] += (alpha * src).astype(np.float32)
    return out


def zeros_like_layout(like: np.ndarray, shape, dtype) -> np.ndarray:
    """Zeros of ``shape`` whose memory layout follows ``like``'s: the same order of axes by
    stride and the same flipped axes.  Reoriented volumes are views (flipped, transposed) of
    their file's memory order; copying between arrays laid out alike walks both straight
    through memory, where a transposing or reversing copy is several times slower."""
    order = sorted(range(len(shape)), key=lambda ax: -abs(like.strides[ax]))
    out = np.zeros([shape[ax] for ax in order], dtype=dtype).transpose(np.argsort(order))
    for ax in range(len(shape)):
        if like.strides[ax] < 0:
            out = np.flip(out, ax)
    return out


def _runs(mask: np.ndarray):
    """(start, stop) of the runs of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)


def _stitch_slabs(volumes, grids, placements, grid: Grid, *, labels: bool) -> np.ndarray:
    """Fast path of :func:`stitch` when every station is a whole-voxel shift of the common
    grid covering its full in-plane extent: weights then depend on the body-axis index only,
    so single-covered slices are copied and only overlap slices are blended."""
    nz = grid.shape[BODY_AXIS]
    dtype = np.result_type(*[v.dtype for v in volumes]) if labels else np.float32
    # laid out like the (first) station: each copy below runs straight through memory (and
    # casts integers on the way); the store's chunk copies then reorder, 64^3 voxels at a time
    out = zeros_like_layout(volumes[0], grid.shape, dtype)
    spans = []
    for vol, g, p in zip(volumes, grids, placements, strict=True):
        gk, sk = p.grid_slices[2], p.station_slices[2]
        w = np.zeros(nz)
        w[gk] = _ramp(g.shape[BODY_AXIS])[sk]
        spans.append((vol[p.station_slices[0], p.station_slices[1]], w, gk.start - sk.start))
    if labels:
        best = np.zeros(nz)
        for vol, w, off in spans:
            take = w > best
            best = np.where(take, w, best)
            for a, b in _runs(take):
                out[:, :, a:b] = vol[:, :, a - off:b - off]
        return out
    wsum = np.sum([w for _, w, _ in spans], axis=0)
    for vol, w, off in spans:
        alpha = np.divide(w, wsum, out=np.zeros(nz), where=wsum > 0)
        for a, b in _runs(alpha == 1.0):
            out[:, :, a:b] = vol[:, :, a - off:b - off]
        for a, b in _runs((alpha > 0) & (alpha < 1.0)):
            out[:, :, a:b] += (alpha[a:b] * vol[:, :, a - off:b - off]).astype(np.float32)
    return out
