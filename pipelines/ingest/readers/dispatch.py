"""One entry point for every format: :func:`read_volume` chooses the reader by the path
(a folder, a NIfTI suffix, or the DICOM magic bytes)."""

from __future__ import annotations

from pathlib import Path

from pipelines.ingest.readers.dicom import read_dicom
from pipelines.ingest.readers.guard import DEFAULT_MAX_VOXELS
from pipelines.ingest.readers.nifti import _NIFTI_SUFFIXES, read_nifti
from pipelines.ingest.readers.volume import ReaderError, Volume


def _is_dicom_file(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_volume(
    path: str | Path, *, labels: bool = False, integers: bool = False, sha256: bool = False,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> Volume:
    """Read a NIfTI file, a DICOM series folder or a single (multi-frame) DICOM file.

    Parameters
    ----------
    path : ``.nii``/``.nii.gz`` file, DICOM folder, or DICOM file.
    labels : read a label image (integer values kept, no float conversion).
    integers : an unscaled 8- or 16-bit integer NIfTI image may keep its integer dtype (as a
        strided RAS+ view) instead of becoming float32: its values as float32 are exactly
        those integers, so a caller that converts while copying (stitching) saves a pass.
    sha256 : also give the SHA-256 of the source bytes (``Volume.sha256``, equal to
        :func:`hash_source`), hashed from the bytes the reader reads anyway.
    max_voxels : ceiling on the voxels the image's header may claim (all frames of a DICOM
        series or multi-frame file), checked before anything of that size is allocated
        (:mod:`.guard`; default :data:`.guard.DEFAULT_MAX_VOXELS`).

    Returns
    -------
    Volume in RAS+ orientation.

    Raises
    ------
    ReaderError
        naming the file and the problem (missing, truncated, not 3-D, a header claiming
        more than the file holds or than ``max_voxels``, ...).
    """
    p = Path(path)
    if p.is_dir():
        return read_dicom(p, labels=labels, sha256=sha256, max_voxels=max_voxels)
    if not p.exists():
        raise ReaderError(f"{p}: file not found")
    name = p.name.lower()
    if name.endswith(_NIFTI_SUFFIXES):
        return read_nifti(p, labels=labels, integers=integers, sha256=sha256,
                          max_voxels=max_voxels)
    if _is_dicom_file(p):
        return read_dicom(p, labels=labels, sha256=sha256, max_voxels=max_voxels)
    raise ReaderError(
        f"{p}: not a NIfTI file (.nii, .nii.gz), a DICOM file or a DICOM series folder"
    )
