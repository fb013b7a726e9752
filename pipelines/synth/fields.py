"""Smooth random fields defined in world millimetres, the same at any sampling grid.

A field is white noise on a lattice anchored at the world origin (node ``(i, j, k)`` sits at
``step * (i, j, k)`` mm), smoothed by a Gaussian on the lattice and interpolated trilinearly
to the points where it is needed.  The noise value of a node is a hash of its integer
coordinates and the field's seed, not a draw from a stream, so a field does not depend on the
grid it is sampled on, the field of view, or the order in which parts of it are evaluated:
the same seed gives the same continuous function everywhere, which is what lets a phantom be
rendered at several voxel sizes and still be one object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LatticeField", "lattice_field", "sample_grid", "sample_points", "stack_fields"]

# splitmix64 constants (Steele, Lea and Flood 2014) and three odd multipliers that spread the
# node coordinates over the key before mixing.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_KEYS = (np.uint64(0xD6E8FEB86659FD93), np.uint64(0xA0761D6478BD642F),
         np.uint64(0xE7037ED1A0B428DB))
_TRUNCATE = 3.5  # Gaussian kernel radius in sigmas


@dataclass(frozen=True, eq=False)
class LatticeField:
    """Unit-variance field values on a lattice of ``step`` mm whose node ``(0, 0, 0)`` of
    ``values`` is at world ``origin`` (mm); several channels stack along the first axis."""

    values: np.ndarray  # (C, Lx, Ly, Lz) float32
    origin: tuple[float, float, float]
    step: float


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def _node_noise(seed: int, lo: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Uniform noise of unit variance (float32) on nodes ``lo + (0..shape-1)`` per axis."""
    idx = [(np.arange(n, dtype=np.int64) + int(a)).astype(np.uint64) * k
           for a, n, k in zip(lo, shape, _KEYS, strict=True)]
    key = (idx[0][:, None, None] ^ idx[1][None, :, None]) ^ idx[2][None, None, :]
    key = key + _splitmix(np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    h = _splitmix(key)
    u = (h >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)  # [0, 1)
    return (u - np.float32(0.5)) * np.float32(np.sqrt(12.0))


def _kernel_variance(sigma: float) -> float:
    """Variance left after smoothing unit-variance white noise with scipy's truncated
    Gaussian (separable: the product of the 1-D kernels' sums of squares)."""
    radius = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    return float((w**2).sum()) ** 3


def lattice_field(
    seed: int,
    lo_mm: tuple[float, float, float],
    hi_mm: tuple[float, float, float],
    step_mm: float,
    sigma_nodes: float,
) -> LatticeField:
    """A one-channel field covering the world box ``lo_mm..hi_mm`` (mm).

    Parameters
    ----------
    seed : which field (any integer).
    lo_mm, hi_mm : corners of the box the field must cover (mm).
    step_mm : lattice spacing (mm).
    sigma_nodes : Gaussian smoothing in lattice nodes (correlation length ~ step x sigma).

    Returns
    -------
    LatticeField
        values of unit variance (exactly, before interpolation) on the nodes covering the box.
    """
    from scipy.ndimage import gaussian_filter

    if not step_mm > 0 or not sigma_nodes > 0:
        raise ValueError(f"lattice step {step_mm} mm and sigma {sigma_nodes} must be > 0")
    pad = int(_TRUNCATE * sigma_nodes + 0.5) + 1
    lo = tuple(int(np.floor(a / step_mm)) - pad for a in lo_mm)
    hi = tuple(int(np.ceil(b / step_mm)) + pad for b in hi_mm)
    shape = tuple(h - a + 1 for a, h in zip(lo, hi, strict=True))
    noise = _node_noise(seed, lo, shape)
    smooth = gaussian_filter(noise, sigma_nodes, mode="nearest", truncate=_TRUNCATE)
    smooth *= np.float32(1.0 / np.sqrt(_kernel_variance(sigma_nodes)))
    # The outer ``pad - 1`` nodes saw the "nearest" boundary: drop them, keep one node beyond
    # the box for interpolation.
    cut = pad - 1
    core = smooth[cut:smooth.shape[0] - cut, cut:smooth.shape[1] - cut,
                  cut:smooth.shape[2] - cut]
    origin = tuple(float((a + cut) * step_mm) for a in lo)
    return LatticeField(np.ascontiguousarray(core[None]), origin, float(step_mm))


def _axis_weights(coords: np.ndarray, origin: float, step: float, n: int):
    u = (np.asarray(coords, dtype=np.float64) - origin) / step
    i0 = np.clip(np.floor(u).astype(np.int64), 0, n - 2)
    w = np.clip(u - i0, 0.0, 1.0).astype(np.float32)
    return i0, w


def sample_grid(field: LatticeField, xs, ys, zs) -> np.ndarray:
    """Trilinear interpolation of every channel at the grid ``xs x ys x zs`` (mm, 1-D each).

    Returns float32 ``(C, len(xs), len(ys), len(zs))``; points outside the lattice take the
    value of its edge.  Separable: three 2-tap passes, the largest one last.
    """
    v = field.values
    (ix, wx), (iy, wy), (iz, wz) = (
        _axis_weights(c, o, field.step, n)
        for c, o, n in zip((xs, ys, zs), field.origin, v.shape[1:], strict=True))
    if min(ix.size, iy.size, iz.size) == 0:
        return np.zeros((v.shape[0], ix.size, iy.size, iz.size), dtype=np.float32)
    # Crop the lattice to the nodes the grid needs first (cheap), then interpolate.
    sl = tuple(slice(int(i.min()), int(i.max()) + 2) for i in (ix, iy, iz))
    v = v[(slice(None), *sl)]
    ix, iy, iz = ix - sl[0].start, iy - sl[1].start, iz - sl[2].start
    a, b = v[:, :, :, iz], v[:, :, :, iz + 1]
    b -= a
    b *= wz
    a += b
    a, b = a[:, :, iy], a[:, :, iy + 1]
    b -= a
    b *= wy[:, None]
    a += b
    a, b = a[:, ix], a[:, ix + 1]
    b -= a
    b *= wx[:, None, None]
    a += b
    return a


def sample_points(field: LatticeField, x, y, z) -> np.ndarray:
    """Trilinear interpolation of every channel at scattered points (mm, 1-D arrays of one
    length); returns float32 ``(C, n)``."""
    v = field.values
    (ix, wx), (iy, wy), (iz, wz) = (
        _axis_weights(c, o, field.step, n)
        for c, o, n in zip((x, y, z), field.origin, v.shape[1:], strict=True))
    out = np.zeros((v.shape[0], ix.size), dtype=np.float32)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = ((wx if dx else 1 - wx) * (wy if dy else 1 - wy) * (wz if dz else 1 - wz))
                out += w * v[:, ix + dx, iy + dy, iz + dz]
    return out


def stack_fields(fine: LatticeField, *coarser: LatticeField) -> LatticeField:
    """``fine``'s channels plus every ``coarser`` field's channels resampled onto ``fine``'s
    nodes (so one interpolation later samples them all)."""
    nx, ny, nz = fine.values.shape[1:]
    xs, ys, zs = (o + fine.step * np.arange(n) for o, n in zip(fine.origin, (nx, ny, nz),
                                                               strict=True))
    parts = [fine.values] + [sample_grid(c, xs, ys, zs) for c in coarser]
    return LatticeField(np.ascontiguousarray(np.concatenate(parts, axis=0)), fine.origin,
                        fine.step)
