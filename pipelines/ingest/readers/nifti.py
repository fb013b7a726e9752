"""NIfTI-1 and NIfTI-2 files (``.nii``, ``.nii.gz``) through nibabel, the compressed ones
inflated in one call, and what their headers claim checked first (:mod:`.guard`)."""

from __future__ import annotations

import hashlib
import math
import zlib
from pathlib import Path

import numpy as np

from pipelines._io import sha256_file
from pipelines.ingest.readers.guard import DEFAULT_MAX_VOXELS, Claim, check_claim, size_text
from pipelines.ingest.readers.volume import (
    ReaderError,
    Volume,
    _finish,
    _read_bytes,
    reorient_to_ras,
)

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: bytes that hold a NIfTI-1 (348) or NIfTI-2 (540) header
_HEADER_BYTES = 540
#: step in which the part of a gzip stream past the image is inflated (checked, not kept)
_GZIP_STEP = 1 << 24


def _gzip_extent(path: Path) -> tuple[int, bool]:
    """(bytes the gzip stream of ``path`` inflates to, whether it ends cleanly): the count
    stops where the stream ends early or turns corrupt (a CRC or length check fails)."""
    import gzip

    n, buf = 0, bytearray(1 << 20)
    try:
        with gzip.open(path, "rb") as fh:
            while k := fh.readinto(buf):
                n += k
    except (EOFError, OSError, zlib.error):
        return n, False
    return n, True


def _gunzip(raw: bytes, keep: int) -> tuple[bytes, int]:
    """The first ``keep`` bytes of the gzip file ``raw`` inflated, and the size of its whole
    inflated stream: every member (as ``gzip.decompress``), each member's CRC and length
    checked by zlib.  At most ``keep`` bytes plus one step are held, whatever the stream
    inflates to.

    Raises
    ------
    zlib.error, EOFError
        when the stream is corrupt or ends early.
    """
    parts, kept, total = [], 0, 0
    data = raw
    while True:
        member = zlib.decompressobj(wbits=31)  # gzip wrapper: zlib checks CRC and ISIZE
        while not member.eof:
            room = keep - kept
            chunk = member.decompress(data, room if room > 0 else _GZIP_STEP)
            data = member.unconsumed_tail
            if not chunk and not data:
                raise EOFError("gzip stream ends before the end of its last member")
            if room > 0:
                parts.append(chunk)
                kept += len(chunk)
            total += len(chunk)
        data = member.unused_data.lstrip(b"\0")  # zero padding between or after members
        if not data:
            return b"".join(parts), total


def _gzip_truncated(path: Path) -> bool:
    """True when the gzip stream of ``path`` ends early or is corrupt."""
    return not _gzip_extent(path)[1]


#: Integer dtypes whose every value is exact in float32 (see ``read_volume(integers=True)``).
_SMALL_INTS = frozenset(np.dtype(t) for t in ("int8", "uint8", "int16", "uint16"))


def _nifti_class(head: bytes):
    """nibabel's image class for a file starting with ``head``, by nibabel's own sniffing:
    NIfTI-1 (sizeof_hdr 348, magic n+1) or NIfTI-2 (540, n+2); None for anything else."""
    import nibabel as nib

    if head[344:348] == b"n+1\0" and head[:4] in (b"\x5c\x01\0\0", b"\0\0\x01\x5c"):
        return nib.Nifti1Image
    if head[4:8] == b"n+2\0" and head[:4] in (b"\x1c\x02\0\0", b"\0\0\x02\x1c"):
        return nib.Nifti2Image
    return None


def _claim(hdr) -> Claim:
    """What a NIfTI header claims: its shape and data type, from its ``vox_offset`` (at least
    the end of a single-file header, as nibabel reads it)."""
    shape = tuple(int(n) for n in hdr.get_data_shape())
    dtype = np.dtype(hdr.get_data_dtype())
    voxels = math.prod(shape) if min(shape, default=0) > 0 else 0
    offset = max(int(hdr.get_data_offset()), int(hdr.single_vox_offset))
    what = f"{'x'.join(str(n) for n in shape)} {dtype.name} voxels"
    return Claim(what, voxels, voxels * dtype.itemsize, offset)


def _nifti_from_bytes(p: Path, raw: bytes, max_voxels: int):
    """(image, its data array) of a NIfTI-1/2 file decompressed in one call from its bytes
    ``raw``, or None to leave the file to ``nib.load`` (and its error messages).

    nibabel reads a ``.nii.gz`` through a streaming gzip reader in 64 KiB steps; inflating
    the whole file at once is the same zlib work with less overhead around it.  The header,
    affine, scaling and data come from nibabel's own image class as with ``nib.load``.  What
    the header claims is checked first (against ``max_voxels`` before inflating anything past
    the header, then against the inflated size), so a lying header never makes nibabel
    allocate its claim.

    Raises
    ------
    ReaderError
        when the header claims more than ``max_voxels`` or than the file holds.
    """
    import io

    gz = p.name.lower().endswith(".gz")
    try:
        # the header from the start of the stream (a gzip header longer than 64 KiB leaves
        # the file to nib.load, whose route is guarded too)
        head = zlib.decompressobj(wbits=31).decompress(raw[:1 << 16], _HEADER_BYTES) if gz \
            else raw[:_HEADER_BYTES]
        klass = _nifti_class(head)
        if klass is None:
            return None
        hdr = klass.header_class(head[:klass.header_class.sizeof_hdr], check=False)
        claim = _claim(hdr)
    except Exception:  # any problem: nib.load reads the file again and names the problem
        return None
    stored = size_text(len(raw))
    holds = f"the file holds {stored}" + (", gzip-compressed" if gz else "")
    check_claim(p, claim, max_voxels=max_voxels, holds=holds, held=None if gz else len(raw))
    try:
        size = len(raw)
        if gz:  # kept up to the claim: a stream longer than its header says costs no more
            raw, size = _gunzip(raw, claim.need)
            holds = f"the file holds {size_text(size)} inflated ({stored}, gzip-compressed)"
        img = klass.from_stream(io.BytesIO(raw))
    except Exception:
        return None
    # nibabel's own reading of the header (a vox_offset of 0 moved past the extensions)
    check_claim(p, _claim(img.header), max_voxels=max_voxels, held=size, holds=holds)
    try:
        return img, np.asanyarray(img.dataobj)
    except Exception:
        return None


def _check_loaded(p: Path, img, max_voxels: int) -> None:
    """The claim of an image ``nib.load`` opened (the fallback route), checked before its
    data are read: against ``max_voxels``, then against the file's (inflated) size."""
    claim = _claim(img.header)
    size = p.stat().st_size
    check_claim(p, claim, max_voxels=max_voxels, holds=f"the file holds {size_text(size)}",
                held=None if p.name.lower().endswith(".gz") else size)
    if not p.name.lower().endswith(".gz"):
        return
    inflated, complete = _gzip_extent(p)
    if not complete and inflated < claim.need:
        raise ReaderError(
            f"{p}: truncated or corrupt image data: the header claims {claim}, but the gzip "
            f"stream breaks off after {size_text(inflated)}")
    if not complete:
        # nibabel reads only the bytes the header announces and never reaches the end of the
        # gzip stream, where its CRC is checked: a cut-off end or a corrupt byte that still
        # inflates would otherwise pass (the one-call inflate refuses such a file too)
        raise ReaderError(f"{p}: truncated or corrupt gzip stream (ends early or fails its CRC)")
    check_claim(p, claim, max_voxels=max_voxels, held=inflated,
                holds=f"the file holds {size_text(inflated)} inflated "
                      f"({size_text(size)}, gzip-compressed)")


def read_nifti(
    path: str | Path, *, labels: bool = False, integers: bool = False, sha256: bool = False,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> Volume:
    """Read a NIfTI-1 or NIfTI-2 file (``.nii`` or ``.nii.gz``).

    The affine is nibabel's best affine: the sform when ``sform_code > 0``, else the qform when
    ``qform_code > 0``; a file with neither has no position in space and is refused.  Scaling
    (``scl_slope``/``scl_inter``) is applied.  A 4-D file whose extra axes have length 1 is
    read as 3-D; any other dimensionality is an error.  A header claiming more than
    ``max_voxels`` voxels, or more bytes than the file holds, is refused before its data are
    read (:mod:`.guard`).  ``integers``, ``sha256``: see :func:`read_volume`.
    """
    import nibabel as nib

    p = Path(path)
    buf = _read_bytes(p)
    digest = hashlib.sha256(buf).hexdigest() if sha256 and buf is not None else None
    fast = _nifti_from_bytes(p, buf, max_voxels) if buf is not None else None
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
    if raw is None:
        _check_loaded(p, img, max_voxels)
        try:
            raw = np.asanyarray(img.dataobj)
        except Exception as e:  # EOFError, zlib.error, OSError, ValueError
            raise ReaderError(
                f"{p}: truncated or corrupt image data ({type(e).__name__}: {e})") from e
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
