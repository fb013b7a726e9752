"""What every reader returns and shares: :class:`Volume`, :class:`ReaderError`, the RAS+
reorientation, the source files of an image and their SHA-256, and the final value check
(labels kept as exact integers, images as float32)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines._io import sha256_files

#: Files in a DICOM folder that are never slices.
_SKIP_NAMES = frozenset({"DICOMDIR", "LOCKFILE", "VERSION"})


class ReaderError(ValueError):
    """An image file or folder cannot be read as a 3-D volume; the message names it."""


@dataclass(frozen=True)
class Volume:
    """One 3-D image in canonical RAS+ orientation.

    Parameters
    ----------
    data : 3-D array (float32 for images; integers for label images).
    affine : 4x4 float64, voxel index -> RAS+ world (mm).
    path : the file or folder it came from.
    fmt : ``"nifti"`` or ``"dicom"``.
    value_maps : the ``(slope, intercept)`` pairs that mapped the file's stored integers to
        ``data`` (DICOM rescale or Real World Value Mapping, NIfTI ``scl_slope``/``scl_inter``;
        one per distinct pair of the series), empty for float sources.  The store uses them to
        keep images as their integers where that is bit-exact.
    sha256 : SHA-256 (hex) of the source bytes, as :func:`hash_source` computes it, when the
        reader was asked for it (``read_volume(sha256=True)``: hashed from the very bytes it
        parsed, so the files are read once); else None.
    """

    data: np.ndarray
    affine: np.ndarray
    path: str
    fmt: str
    value_maps: tuple[tuple[float, float], ...] = ()
    sha256: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


# --------------------------------------------------------------------------------------------
# orientation


def reorient_to_ras(
    data: np.ndarray, affine: np.ndarray, *, copy: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip array axes so the affine is closest to RAS+ (nibabel's
    ``as_closest_canonical``); the world position of every voxel is unchanged and an oblique
    affine keeps its exact rotation.  ``copy=False`` returns a strided view."""
    from nibabel.orientations import (
        apply_orientation,
        axcodes2ornt,
        inv_ornt_aff,
        io_orientation,
        ornt_transform,
    )

    ornt = io_orientation(affine)
    xform = ornt_transform(ornt, axcodes2ornt(("R", "A", "S")))
    if np.array_equal(xform, [[0, 1], [1, 1], [2, 1]]):
        return data, np.asarray(affine, dtype=np.float64)
    out = apply_orientation(data, xform)
    if copy:
        out = np.ascontiguousarray(out)
    return out, np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(xform, data.shape)


# --------------------------------------------------------------------------------------------
# hashing


def source_files(path: str | Path) -> list[Path]:
    """The files an image is read from: the file itself, or a DICOM folder's files sorted by
    name (hidden files and DICOMDIR excluded)."""
    p = Path(path)
    if p.is_dir():
        return sorted(
            (f for f in p.iterdir()
             if f.is_file() and not f.name.startswith(".") and f.name.upper() not in _SKIP_NAMES),
            key=lambda f: f.name,
        )
    if not p.exists():
        raise ReaderError(f"{p}: file not found")
    return [p]


def hash_source(path: str | Path) -> str:
    """SHA-256 of an image's source file, or of all files of a DICOM series (sorted by name)."""
    files = source_files(path)
    if not files:
        raise ReaderError(f"{path}: DICOM folder contains no files")
    return sha256_files(files)


# --------------------------------------------------------------------------------------------
# shared by the readers


def _read_bytes(f: Path) -> bytes | None:
    """The whole file; None when it cannot be read (the library reading it then reports)."""
    try:
        with open(f, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def _finish(data: np.ndarray, path: Path, labels: bool) -> np.ndarray:
    """Check a decoded volume and give it its stored dtype."""
    if labels:
        if data.dtype.kind == "f":
            if not np.all(np.isfinite(data)):
                raise ReaderError(f"{path}: label image contains NaN or Inf")
            rounded = np.round(data)
            if not np.array_equal(rounded, data):
                raise ReaderError(f"{path}: label image has non-integer values")
            data = rounded
        if data.dtype.kind not in "iuf" and data.dtype != np.bool_:
            raise ReaderError(f"{path}: label image has dtype {data.dtype}")
        if data.size and data.min() < 0:
            raise ReaderError(f"{path}: label image has negative values (min {data.min()})")
        if data.size and data.max() > np.iinfo(np.int32).max:
            raise ReaderError(f"{path}: label values too large (max {data.max()})")
        return np.ascontiguousarray(data, dtype=np.int32)
    # float32 in the file's own memory order (a reoriented view when already float32): the
    # stitching copy is the one pass that reorders voxels
    return np.asarray(data, dtype=np.float32)
