"""NIfTI-1 and NIfTI-2 files (``.nii``, ``.nii.gz``) through nibabel, the compressed ones
inflated in one call."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipelines._io import sha256_file
from pipelines.ingest.readers.volume import (
    ReaderError,
    Volume,
    _finish,
    _read_bytes,
    reorient_to_ras,
)

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _gzip_truncated(path: Path) -> bool:
    """True when the gzip stream of ``path`` ends early or is corrupt."""
    import gzip
    import zlib

    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (EOFError, OSError, zlib.error):
        return True
    return False


#: Integer dtypes whose every value is exact in float32 (see ``read_volume(integers=True)``).
_SMALL_INTS = frozenset(np.dtype(t) for t in ("int8", "uint8", "int16", "uint16"))


def _nifti_from_bytes(p: Path, raw: bytes):
    """(image, its data array) of a NIfTI-1/2 file decompressed in one call from its bytes
    ``raw``, or None to leave the file to ``nib.load`` (and its error messages).

    nibabel reads a ``.nii.gz`` through a streaming gzip reader in 64 KiB steps; inflating
    the whole file at once is the same zlib work with less overhead around it.  The header,
    affine, scaling and data come from nibabel's own image class as with ``nib.load``."""
    import gzip
    import io

    import nibabel as nib

    try:
        if p.name.lower().endswith(".gz"):
            raw = gzip.decompress(raw)
        if len(raw) < 348:
            return None
        # nibabel's own sniffing: NIfTI-1 (sizeof_hdr 348, magic n+1) or NIfTI-2 (540, n+2)
        if raw[344:348] == b"n+1\0" and raw[:4] in (b"\x5c\x01\0\0", b"\0\0\x01\x5c"):
            klass = nib.Nifti1Image
        elif raw[4:8] == b"n+2\0" and raw[:4] in (b"\x1c\x02\0\0", b"\0\0\x02\x1c"):
            klass = nib.Nifti2Image
        else:
            return None
        img = klass.from_stream(io.BytesIO(raw))
        return img, np.asanyarray(img.dataobj)
    except Exception:  # any problem: nib.load reads the file again and names the problem
        return None


def read_nifti(
    path: str | Path, *, labels: bool = False, integers: bool = False, sha256: bool = False
) -> Volume:
    """Read a NIfTI-1 or NIfTI-2 file (``.nii`` or ``.nii.gz``).

    The affine is nibabel's best affine: the sform when ``sform_code > 0``, else the qform when
    ``qform_code > 0``; a file with neither has no position in space and is refused.  Scaling
    (``scl_slope``/``scl_inter``) is applied.  A 4-D file whose extra axes have length 1 is
    read as 3-D; any other dimensionality is an error.  ``integers``, ``sha256``: see
    :func:`read_volume`.
    """
    import nibabel as nib

    p = Path(path)
    buf = _read_bytes(p)
    digest = hashlib.sha256(buf).hexdigest() if sha256 and buf is not None else None
    fast = _nifti_from_bytes(p, buf) if buf is not None else None
    del buf
    raw = None
    try:
        img, raw = fast if fast is not None else (nib.load(p), None)
    except FileNotFoundError:
        raise ReaderError(f"{p}: file not found") from None
    except Exception as e:  # nibabel raises many types for a bad header
        if p.name.lower().endswith(".gz") and _gzip_truncated(p):
            raise ReaderError(f"{p}: truncated or corrupt gzip stream") from e
        raise ReaderError(f"{p}: unreadable NIfTI header ({type(e).__name__}: {e})") from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ReaderError(f"{p}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) > 3 and all(s == 1 for s in shape[3:]):
        shape3 = shape[:3]
    elif len(shape) == 4:
        raise ReaderError(
            f"{p}: 4-D image with {shape[3]} volumes (shape {shape}); give one 3-D volume per file"
        )
    elif len(shape) != 3:
        raise ReaderError(f"{p}: {len(shape)}-D image (shape {shape}); expected a 3-D volume")
    else:
        shape3 = shape
    if min(shape3) < 1:
        raise ReaderError(f"{p}: empty image (shape {shape})")
    hdr = img.header
    if int(hdr["sform_code"]) <= 0 and int(hdr["qform_code"]) <= 0:
        raise ReaderError(
            f"{p}: qform_code and sform_code are both 0, so the image has no position in "
            "space; set a qform or sform (scanner or aligned coordinates)"
        )
    try:
        if raw is None:
            raw = np.asanyarray(img.dataobj)
    except Exception as e:  # truncated gzip: EOFError, zlib.error, OSError, ValueError
        raise ReaderError(f"{p}: truncated or corrupt image data ({type(e).__name__}: {e})") from e
    if fast is None and p.name.lower().endswith(".gz") and _gzip_truncated(p):
        # nibabel reads only the bytes the header announces and never reaches the end of the
        # gzip stream, where its CRC is checked: a cut-off end or a corrupt byte that still
        # inflates would otherwise pass (the one-call inflate above had already refused it)
        raise ReaderError(f"{p}: truncated or corrupt gzip stream (ends early or fails its CRC)")
    raw = raw.reshape(shape3)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ReaderError(f"{p}: affine is singular or not finite")
    maps = ()
    if np.dtype(img.get_data_dtype()).kind in "iu":
        slope, inter = img.dataobj.slope, img.dataobj.inter
        maps = ((float(slope), float(inter)),)
    data, affine = reorient_to_ras(raw, affine, copy=False)
    if not (integers and not labels and data.dtype in _SMALL_INTS):
        data = _finish(data, p, labels)
    if sha256 and digest is None:  # nibabel read a file we could not
        digest = sha256_file(p)
    return Volume(data, affine, str(p), "nifti", maps, digest)
