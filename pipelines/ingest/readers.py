"""Image readers: NIfTI files and DICOM series, each returned as a :class:`Volume` in the
canonical RAS+ orientation with its exact affine.

Pure functions of one file or folder; they know nothing of participants, stations or Dask.
Errors are :class:`ReaderError` (a ``ValueError``) whose message names the file and the
problem; the stage adds the participant.

De-identification: the DICOM reader reads geometry (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, slice spacing), pixel data and value mappings only.
No other tag value is returned, logged or put in an error message.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Files in a DICOM folder that are never slices.
_SKIP_NAMES = frozenset({"DICOMDIR", "LOCKFILE", "VERSION"})
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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


def sha256_files(paths: Sequence[Path]) -> str:
    """SHA-256 (hex) over the bytes of ``paths`` in the given order (1 MiB blocks)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


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
# dispatch


def _is_dicom_file(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_volume(
    path: str | Path, *, labels: bool = False, integers: bool = False, sha256: bool = False
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

    Returns
    -------
    Volume in RAS+ orientation.

    Raises
    ------
    ReaderError
        naming the file and the problem (missing, truncated, not 3-D, ...).
    """
    p = Path(path)
    if p.is_dir():
        return read_dicom(p, labels=labels, sha256=sha256)
    if not p.exists():
        raise ReaderError(f"{p}: file not found")
    name = p.name.lower()
    if name.endswith(_NIFTI_SUFFIXES):
        return read_nifti(p, labels=labels, integers=integers, sha256=sha256)
    if _is_dicom_file(p):
        return read_dicom(p, labels=labels, sha256=sha256)
    raise ReaderError(
        f"{p}: not a NIfTI file (.nii, .nii.gz), a DICOM file or a DICOM series folder"
    )


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


# --------------------------------------------------------------------------------------------
# NIfTI


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
        digest = sha256_files([p])
    return Volume(data, affine, str(p), "nifti", maps, digest)


# --------------------------------------------------------------------------------------------
# DICOM


@dataclass
class _Slice:
    """One 2-D image of a series: geometry plus a function returning its values."""

    ipp: np.ndarray
    iop: np.ndarray
    spacing: tuple[float, float]  # (between rows, between columns) mm
    rows: int
    cols: int
    values: Callable[[], np.ndarray]
    where: str  # "file X" or "file X frame n" (no tag values)
    slice_gap: float | None = None  # SpacingBetweenSlices or SliceThickness, single-slice case
    value_map: tuple[float, float] | None = None  # (slope, intercept) of integer pixels
    raw: Callable[[], np.ndarray] | None = None  # the stored integers (when value_map is set)


# Fast path for the common case: a classic single-frame file in a native little-endian
# transfer syntax.  pydicom's dcmread (file meta, every element, a Dataset of them) and its
# pixel handler cost about twice a bare read of the bytes in Python; walking the element
# headers with struct and taking the pixel value as a NumPy view of the file's bytes costs a
# fraction of that.  Only the tags below are looked at (their raw bytes); every other value,
# identifying or not, is skipped by its length and never decoded.  Anything unusual (another
# transfer syntax, an undefined length, a sequence we would need, an unknown VR, a value
# running past the end of the file, a pixel data length that is not exactly rows x columns,
# ...) returns None and the file goes through pydicom exactly as before, so every error
# message and every decoding rule stays pydicom's.

_EXPLICIT_HEADER = struct.Struct("<HH2sH")
_IMPLICIT_HEADER = struct.Struct("<HHL")
_UINT32 = struct.Struct("<L")
_UINT16 = struct.Struct("<H")
#: transfer syntax UID -> implicit VR?  (native, little endian: pixels are the raw bytes)
_FAST_SYNTAXES = {"1.2.840.10008.1.2.1": False, "1.2.840.10008.1.2": True}
#: explicit VRs with a 2-byte reserved field and a 4-byte length (pydicom's
#: EXPLICIT_VR_LENGTH_32); every other known VR has a 2-byte length
_LONG_VRS = frozenset(
    v.encode() for v in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                         "UT", "UV"))
_SHORT_VRS = frozenset(
    v.encode() for v in ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO",
                         "LT", "PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"))
#: the only values the fast path keeps (raw bytes)
_FAST_TEXT_TAGS = {
    "SeriesInstanceUID": 0x0020000E, "NumberOfFrames": 0x00280008,
    "ImagePositionPatient": 0x00200032, "ImageOrientationPatient": 0x00200037,
    "PixelSpacing": 0x00280030, "RescaleSlope": 0x00281053, "RescaleIntercept": 0x00281052,
    "SpacingBetweenSlices": 0x00180088, "SliceThickness": 0x00180050,
    "PhotometricInterpretation": 0x00280004,
}
_FAST_US_TAGS = {
    "SamplesPerPixel": 0x00280002, "Rows": 0x00280010, "Columns": 0x00280011,
    "BitsAllocated": 0x00280100, "BitsStored": 0x00280101, "PixelRepresentation": 0x00280103,
}
_PIXEL_DATA = 0x7FE00010
_KEEP_TAGS = frozenset({*_FAST_TEXT_TAGS.values(), *_FAST_US_TAGS.values(), _PIXEL_DATA})
#: tags that need pydicom's handling: real-world value mapping, enhanced multi-frame
#: functional groups, float pixel data
_REFUSE_TAGS = frozenset({0x00409096, 0x52009229, 0x52009230, 0x7FE00008, 0x7FE00009})


class _FastHeader:
    """The few elements of a classic single-frame DICOM file that the reader uses, parsed
    from the file's bytes by :func:`_fast_header`; quacks like the parts of a pydicom
    ``Dataset`` that :func:`_classic_slice` and :func:`_read_dicom` touch."""

    __slots__ = ("Columns", "Rows", "SamplesPerPixel", "_dtype", "_pixels", "_shift", "_text")

    def __init__(self, text: dict[int, bytes], us: dict[str, int], pixels, dtype, shift):
        self._text = text
        self.Rows = us["Rows"]
        self.Columns = us["Columns"]
        self.SamplesPerPixel = 1
        self._pixels = pixels
        self._dtype = dtype
        self._shift = shift

    def __contains__(self, keyword: str) -> bool:
        if keyword == "PixelData":
            return True
        tag = _FAST_TEXT_TAGS.get(keyword)
        return tag is not None and tag in self._text

    def text(self, keyword: str) -> str | None:
        """Like :func:`_raw_text` on the pydicom dataset."""
        value = self._text.get(_FAST_TEXT_TAGS[keyword])
        if value is None:
            return None
        return value.decode("latin-1").strip(" \0") or None

    @property
    def pixel_array(self) -> np.ndarray:
        """``Dataset.pixel_array`` of a native single-frame image: the stored integers, with
        pydicom's correction of unused high bits (``correct_unused_bits``) when BitsStored <
        BitsAllocated (a shift left and back: masks unsigned, sign-extends signed values)."""
        arr = np.frombuffer(self._pixels, dtype=self._dtype, count=self.Rows * self.Columns)
        arr = arr.reshape(self.Rows, self.Columns)
        if self._shift:
            arr = arr.copy()
            np.left_shift(arr, self._shift, out=arr)
            np.right_shift(arr, self._shift, out=arr)
        return arr


def _fast_header(buf: bytes) -> _FastHeader | None:
    """Parse ``buf`` (a whole DICOM file) on the fast path, or None to leave it to pydicom."""
    n = len(buf)
    if n < 132 or buf[128:132] != b"DICM":
        return None
    explicit = _EXPLICIT_HEADER.unpack_from
    long_vrs, short_vrs = _LONG_VRS, _SHORT_VRS
    pos, syntax = 132, None
    while pos + 8 <= n:  # file meta group: explicit VR little endian
        group, elem, vr, length = explicit(buf, pos)
        if group != 2:
            break
        if vr in long_vrs:
            if pos + 12 > n:
                return None
            length = _UINT32.unpack_from(buf, pos + 8)[0]
            pos += 12
        elif vr in short_vrs:
            pos += 8
        else:
            return None
        if length == 0xFFFFFFFF or pos + length > n:
            return None
        if elem == 0x0010:
            syntax = buf[pos:pos + length].decode("latin-1").strip(" \0")
        pos += length
    implicit = _FAST_SYNTAXES.get(syntax)
    if implicit is None:
        return None
    keep, refuse = _KEEP_TAGS, _REFUSE_TAGS
    found: dict[int, tuple[bytes | None, int, int]] = {}  # tag -> (VR, value start, length)
    if implicit:
        if pos + 6 <= n and (buf[pos + 4:pos + 6] in long_vrs or buf[pos + 4:pos + 6] in short_vrs):
            return None  # pydicom would read it as explicit VR
        header = _IMPLICIT_HEADER.unpack_from
        while pos < n:
            if pos + 8 > n:
                return None
            group, elem, length = header(buf, pos)
            pos += 8
            if length == 0xFFFFFFFF or pos + length > n or group == 0xFFFE:
                return None
            tag = group << 16 | elem
            if tag in keep:
                found[tag] = (None, pos, length)
            elif tag in refuse:
                return None
            pos += length
    else:
        while pos < n:
            if pos + 8 > n:
                return None
            group, elem, vr, length = explicit(buf, pos)
            if vr in long_vrs:
                if pos + 12 > n:
                    return None
                length = _UINT32.unpack_from(buf, pos + 8)[0]
                pos += 12
            elif vr in short_vrs:
                pos += 8
            else:
                return None
            if length == 0xFFFFFFFF or pos + length > n or group == 0xFFFE:
                return None
            tag = group << 16 | elem
            if tag in keep:
                found[tag] = (vr, pos, length)
            elif tag in refuse:
                return None
            pos += length
    us = {}
    for name, tag in _FAST_US_TAGS.items():
        item = found.get(tag)
        if item is None or item[0] not in (None, b"US") or item[2] != 2:
            return None
        us[name] = _UINT16.unpack_from(buf, item[1])[0]
    pix = found.get(_PIXEL_DATA)
    if pix is None or pix[0] not in (None, b"OB", b"OW") or _FAST_TEXT_TAGS[
            "PhotometricInterpretation"] not in found:
        return None
    text = {tag: buf[found[tag][1]:found[tag][1] + found[tag][2]]
            for tag in _FAST_TEXT_TAGS.values() if tag in found}
    frames = text.get(_FAST_TEXT_TAGS["NumberOfFrames"])
    if frames is not None and frames.decode("latin-1").strip(" \0") not in ("", "1"):
        return None
    allocated, stored, signed = us["BitsAllocated"], us["BitsStored"], us["PixelRepresentation"]
    if us["SamplesPerPixel"] != 1 or allocated not in (8, 16, 32) or signed not in (0, 1) \
            or not 1 <= stored <= allocated or us["Rows"] < 1 or us["Columns"] < 1:
        return None
    expected = us["Rows"] * us["Columns"] * (allocated // 8)
    if pix[2] not in (expected, expected + expected % 2):
        return None
    dtype = np.dtype(f"<{'iu'[signed == 0]}{allocated // 8}")
    pixels = memoryview(buf)[pix[1]:pix[1] + expected]
    return _FastHeader(text, us, pixels, dtype, allocated - stored)


def _raw_text(ds, keyword: str) -> str | None:
    """A text (DS/IS/UI/CS) element's value without pydicom's per-value conversion, which
    dominates the cost of reading a series header by header; None when absent or empty."""
    from pydicom.datadict import tag_for_keyword

    if isinstance(ds, _FastHeader):
        return ds.text(keyword)
    try:
        elem = ds.get_item(tag_for_keyword(keyword))
    except KeyError:
        return None
    if elem is None:
        return None
    value = elem.value
    if value is None:
        return None
    if isinstance(value, bytes):
        text = value.decode("latin-1").strip(" \0")
    elif isinstance(value, str):
        text = value.strip()
    else:
        try:
            text = "\\".join(str(v) for v in value)
        except TypeError:
            text = str(value)
    return text or None


def _floats(value, n: int, what: str, where: str) -> np.ndarray:
    if isinstance(value, str):
        value = value.split("\\")
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise ReaderError(f"{where}: {what} is not numeric") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise ReaderError(f"{where}: {what} must have {n} finite values")
    return arr


def _value_map(rwvm, rescale, where: str) -> tuple[float, float]:
    """(slope, intercept) mapping stored pixel values to the values we store.

    A Real World Value Mapping (slope/intercept) wins over the modality rescale, as it maps
    stored values to physical values; otherwise RescaleSlope/RescaleIntercept; else (1, 0).
    ``rwvm`` is a RealWorldValueMappingSequence item (or None); ``rescale`` the dataset or
    PixelValueTransformationSequence item holding the rescale tags (or None).
    """
    if rwvm is not None:
        if "RealWorldValueSlope" in rwvm:
            slope = float(rwvm.RealWorldValueSlope)
            inter = float(rwvm.get("RealWorldValueIntercept", 0.0) or 0.0)
            if not np.isfinite(slope) or not np.isfinite(inter) or slope == 0:
                raise ReaderError(f"{where}: invalid Real World Value slope/intercept")
            return slope, inter
        if "RealWorldValueLUTData" in rwvm:
            raise ReaderError(f"{where}: Real World Value Mapping by LUT is not supported")
    slope = rescale.get("RescaleSlope", None) if rescale is not None else None
    inter = rescale.get("RescaleIntercept", None) if rescale is not None else None
    try:
        slope = 1.0 if slope in (None, "") else float(slope)
        inter = 0.0 if inter in (None, "") else float(inter)
    except (TypeError, ValueError):
        raise ReaderError(f"{where}: rescale slope/intercept is not numeric") from None
    if not np.isfinite(slope) or not np.isfinite(inter) or slope == 0:
        raise ReaderError(f"{where}: invalid rescale slope/intercept")
    return slope, inter


def _first(ds, name: str):
    seq = ds.get(name, None)
    return seq[0] if seq else None


def _apply_map(arr: np.ndarray, slope: float, inter: float, labels: bool) -> np.ndarray:
    """Mapped values: float64 for labels (checked and made integer later), else float32."""
    if slope == 1.0 and inter == 0.0:
        return arr.astype(np.float64 if labels else np.float32)
    out = arr.astype(np.float64)
    out *= slope
    out += inter
    return out if labels else out.astype(np.float32)


def _dcmread(f: Path, *, pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(f, stop_before_pixels=not pixels)
    except InvalidDicomError as e:
        raise ReaderError(f"{f}: not a DICOM file ({e})") from e
    except Exception as e:  # truncated files raise EOFError, OSError, struct errors...
        raise ReaderError(f"{f}: unreadable or truncated DICOM file ({type(e).__name__})") from e
    # pydicom returns what it could parse of a cut-off file with only a warning
    for w in caught:
        if "end of file" in str(w.message).lower():
            raise ReaderError(f"{f}: truncated DICOM file (ends before its last element)")
    return ds


def _pixels(ds, f: Path) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ReaderError(f"{f}: DICOM file has no pixel data")
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise ReaderError(f"{f}: colour DICOM image (SamplesPerPixel > 1); expected MR magnitudes")
    try:
        return ds.pixel_array
    except Exception as e:  # truncated pixel data, missing codec, ...
        raise ReaderError(
            f"{f}: cannot decode pixel data, truncated or corrupt? (transfer syntax "
            f"{getattr(getattr(ds, 'file_meta', None), 'TransferSyntaxUID', '?')}; "
            f"{type(e).__name__}: {e})"
        ) from e


def _fg(ds, index: int, name: str):
    """Functional-group item ``name`` for frame ``index`` (per-frame wins over shared)."""
    per = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if per is not None and index < len(per) and name in per[index]:
        seq = per[index][name]
        if seq.value:
            return seq.value[0]
    shared = getattr(ds, "SharedFunctionalGroupsSequence", None)
    if shared and name in shared[0]:
        seq = shared[0][name]
        if seq.value:
            return seq.value[0]
    return None


def _enhanced_slices(ds, f: Path, labels: bool) -> list[_Slice]:
    n = int(ds.NumberOfFrames)
    pix: dict[str, np.ndarray] = {}

    def frames() -> np.ndarray:
        if "a" not in pix:
            arr = _pixels(ds, f)
            pix["a"] = arr.reshape((n, int(ds.Rows), int(ds.Columns)))
        return pix["a"]

    out = []
    for i in range(n):
        where = f"{f} frame {i + 1}"
        pos = _fg(ds, i, "PlanePositionSequence")
        ori = _fg(ds, i, "PlaneOrientationSequence")
        meas = _fg(ds, i, "PixelMeasuresSequence")
        if pos is None or "ImagePositionPatient" not in pos:
            raise ReaderError(f"{where}: no ImagePositionPatient (PlanePositionSequence)")
        if ori is None or "ImageOrientationPatient" not in ori:
            raise ReaderError(f"{where}: no ImageOrientationPatient (PlaneOrientationSequence)")
        if meas is None or "PixelSpacing" not in meas:
            raise ReaderError(f"{where}: no PixelSpacing (PixelMeasuresSequence)")
        rwvm = _fg(ds, i, "RealWorldValueMappingSequence") or _first(
            ds, "RealWorldValueMappingSequence")
        pvt = _fg(ds, i, "PixelValueTransformationSequence")
        slope, inter = _value_map(rwvm, pvt if pvt is not None else ds, where)
        gap = meas.get("SpacingBetweenSlices") or meas.get("SliceThickness")
        ps = _floats(meas.PixelSpacing, 2, "PixelSpacing", where)
        out.append(_Slice(
            ipp=_floats(pos.ImagePositionPatient, 3, "ImagePositionPatient", where),
            iop=_floats(ori.ImageOrientationPatient, 6, "ImageOrientationPatient", where),
            spacing=(float(ps[0]), float(ps[1])), rows=int(ds.Rows), cols=int(ds.Columns),
            values=lambda i=i, s=slope, c=inter: _apply_map(frames()[i], s, c, labels),
            where=where, slice_gap=float(gap) if gap not in (None, "") else None,
            value_map=(slope, inter) if _integer_pixels(ds) else None,
            raw=lambda i=i: frames()[i],
        ))
    return out


def _integer_pixels(ds) -> bool:
    """True for integer PixelData (not FloatPixelData / DoubleFloatPixelData)."""
    return "PixelData" in ds


def _classic_slice(ds, f: Path, labels: bool) -> _Slice:
    where = f"{f}"
    geo = {}
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        geo[tag] = _raw_text(ds, tag)
        if geo[tag] is None:
            raise ReaderError(f"{where}: no {tag}; cannot place the slice in space")
    rwvm = _first(ds, "RealWorldValueMappingSequence") if "RealWorldValueMappingSequence" in ds \
        else None
    rescale = {k: _raw_text(ds, k) for k in ("RescaleSlope", "RescaleIntercept")}
    slope, inter = _value_map(rwvm, rescale, where)
    ps = _floats(geo["PixelSpacing"], 2, "PixelSpacing", where)
    gap = _raw_text(ds, "SpacingBetweenSlices") or _raw_text(ds, "SliceThickness")

    def raw() -> np.ndarray:
        arr = _pixels(ds, f)
        if arr.ndim != 2:
            raise ReaderError(f"{f}: expected one 2-D frame, decoded shape {arr.shape}")
        return arr

    return _Slice(
        ipp=_floats(geo["ImagePositionPatient"], 3, "ImagePositionPatient", where),
        iop=_floats(geo["ImageOrientationPatient"], 6, "ImageOrientationPatient", where),
        spacing=(float(ps[0]), float(ps[1])), rows=int(ds.Rows), cols=int(ds.Columns),
        values=lambda: _apply_map(raw(), slope, inter, labels), where=where,
        slice_gap=float(gap) if gap not in (None, "") else None,
        value_map=(slope, inter) if _integer_pixels(ds) else None, raw=raw,
    )


class _WithheldFilter(logging.Filter):
    """Drops pydicom's log records (its warnings may quote header values) and counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.count += 1
        return False


@contextmanager
def _withhold_pydicom_messages(path: Path):
    """While reading ``path``, keep pydicom's own warnings and log records (which may quote
    identifying header values, e.g. an invalid PatientBirthDate) out of the logs; report only
    how many there were."""
    pydicom_log = logging.getLogger("pydicom")
    dropped = _WithheldFilter()
    pydicom_log.addFilter(dropped)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        pydicom_log.removeFilter(dropped)
    n = max(dropped.count, len(caught))
    if n:
        log.debug("%s: %d pydicom warning(s) withheld (they may quote header values)", path, n)


def read_dicom(path: str | Path, *, labels: bool = False, sha256: bool = False) -> Volume:
    """Read one DICOM series (a folder of classic single-frame files, or one enhanced
    multi-frame file, alone or in a folder) as a 3-D volume.

    Slices are sorted along the slice normal (row x column direction cosines) by
    ImagePositionPatient, never by file name or InstanceNumber.  Compressed transfer syntaxes
    are decoded by pydicom's pixel handlers (pylibjpeg: RLE, JPEG 2000, JPEG-LS, JPEG).
    Values are real-world values when a Real World Value Mapping (slope/intercept) is given,
    else modality values (RescaleSlope/RescaleIntercept), else stored values.

    Raises
    ------
    ReaderError
        on several series in one folder, several images at one position (4-D, multi-echo),
        missing slices, uneven spacing, mixed orientations or matrix sizes, unreadable or
        truncated files.
    """
    p = Path(path)
    with _withhold_pydicom_messages(p):
        if sha256:
            return _read_dicom(p, labels, sha256=True)
        return _read_dicom(p, labels)


def _read_dicom(p: Path, labels: bool, *, sha256: bool = False) -> Volume:
    from concurrent.futures import ThreadPoolExecutor

    files = source_files(p)
    if not files:
        raise ReaderError(f"{p}: DICOM folder contains no files")
    headers = []
    digest, unread = hashlib.sha256(), False
    # the SHA-256 of the files (in name order) is updated in a helper thread from the bytes
    # parsed here (hashlib releases the GIL), so hashing overlaps parsing
    with ThreadPoolExecutor(1, thread_name_prefix="dicom-hash") if sha256 \
            else nullcontext() as hasher:
        for f in files:
            # each file is read once; pydicom reads it (again) only off the fast path
            buf = _read_bytes(f)
            if sha256 and buf is not None:
                hasher.submit(digest.update, buf)
            unread = unread or buf is None
            ds = _fast_header(buf) if buf is not None else None
            if ds is None:
                ds = _dcmread(f, pixels=True)
            if not any(t in ds for t in ("PixelData", "FloatPixelData",
                                         "DoubleFloatPixelData")):
                raise ReaderError(
                    f"{f}: DICOM file has no pixel data (truncated, or not an image)")
            headers.append((f, ds))
    series: dict[str, list] = {}
    for f, ds in headers:
        series.setdefault(_raw_text(ds, "SeriesInstanceUID") or "", []).append(f)
    if len(series) > 1:
        counts = sorted((len(v) for v in series.values()), reverse=True)
        raise ReaderError(
            f"{p}: {len(series)} DICOM series in one folder (files per series: {counts}, "
            "told apart by SeriesInstanceUID); put each series in its own folder"
        )
    multi = [(f, ds) for f, ds in headers if int(_raw_text(ds, "NumberOfFrames") or 1) > 1
             or "PerFrameFunctionalGroupsSequence" in ds]
    if multi and len(headers) > 1:
        raise ReaderError(
            f"{p}: {len(headers)} files of which {len(multi)} are multi-frame: several "
            "multi-frame images in one series (4-D?); give one volume per folder"
        )
    if multi:
        f, ds = multi[0]
        slices = _enhanced_slices(ds, f, labels)
    else:
        slices = [_classic_slice(ds, f, labels) for f, ds in headers]
    slices, affine = _sort_slices(slices, p)
    data, affine = reorient_to_ras(_stack(slices, labels), _LPS_TO_RAS @ affine, copy=False)
    if labels:
        data = _finish(data, p, labels)
    # images stay a reoriented view of the slice-major stack: the stitching copy is the one
    # pass over them, and it runs straight along this memory order
    log.debug("%s: DICOM series of %d slices -> %s", p, len(slices), data.shape)
    maps = [] if labels else [s.value_map for s in slices]
    maps = () if None in maps else tuple(dict.fromkeys(maps))
    if not sha256:
        return Volume(data, affine, str(p), "dicom", maps)
    # a file we could not read but pydicom could (never, in practice): hash them all again
    return Volume(data, affine, str(p), "dicom", maps,
                  sha256_files(files) if unread else digest.hexdigest())


def _read_bytes(f: Path) -> bytes | None:
    """The whole file; None when it cannot be read (the library reading it then reports)."""
    try:
        with open(f, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def _sort_slices(slices: list[_Slice], path: Path) -> tuple[list[_Slice], np.ndarray]:
    """Check that 2-D slices make one regular 3-D volume; return them sorted along the slice
    normal and the LPS affine of the volume (axes: column, row, slice)."""
    first = slices[0]
    iops = np.stack([s.iop for s in slices])
    bad = np.flatnonzero(np.any(np.abs(iops - first.iop) > 1e-4, axis=1))
    if bad.size:
        s = slices[bad[0]]
        raise ReaderError(
            f"{path}: mixed orientations: {s.where} has ImageOrientationPatient "
            f"{np.round(s.iop, 4).tolist()}, {first.where} has {np.round(first.iop, 4).tolist()}"
        )
    for s in slices[1:]:
        if (s.rows, s.cols) != (first.rows, first.cols):
            raise ReaderError(
                f"{path}: mixed matrix sizes: {s.where} is {s.rows}x{s.cols}, "
                f"{first.where} is {first.rows}x{first.cols}"
            )
        if abs(s.spacing[0] - first.spacing[0]) > 1e-4 or abs(s.spacing[1] - first.spacing[1]) > 1e-4:
            raise ReaderError(
                f"{path}: mixed pixel spacings: {s.where} {s.spacing} mm, {first.where} "
                f"{first.spacing} mm"
            )
    row_dir, col_dir = first.iop[:3], first.iop[3:]
    if abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3 \
            or abs(float(row_dir @ col_dir)) > 1e-3:
        raise ReaderError(f"{path}: ImageOrientationPatient is not two orthonormal directions")
    normal = np.cross(row_dir, col_dir)
    dist = np.array([float(s.ipp @ normal) for s in slices])
    order = np.argsort(dist, kind="stable")
    dist = dist[order]
    slices = [slices[i] for i in order]
    n = len(slices)
    if n >= 2:
        diffs = np.diff(dist)
        n_pos = 1 + int(np.sum(diffs > 1e-3))
        if n_pos < n:
            raise ReaderError(
                f"{path}: {n} images at only {n_pos} distinct slice positions: several images "
                "per position (a 4-D, multi-echo or mixed-contrast series); give one 3-D "
                "volume per series folder"
            )
        step = float(diffs.min())
        tol = max(0.01, 0.01 * step)
        ratio = diffs / step
        big = ratio > 1.5
        if np.any(big):
            if np.all(np.abs(ratio[big] - np.round(ratio[big])) < 0.1):
                k = int(np.argmax(big))
                n_missing = int(np.sum(np.round(ratio[big]) - 1))
                raise ReaderError(
                    f"{path}: missing slices: {n_missing} slice(s) missing (first gap of "
                    f"{diffs[k]:.3f} mm after slice position {dist[k]:.3f} mm, spacing "
                    f"{step:.3f} mm)"
                )
            raise ReaderError(
                f"{path}: uneven slice spacing: gaps from {diffs.min():.3f} to "
                f"{diffs.max():.3f} mm"
            )
        if diffs.max() - diffs.min() > tol:
            raise ReaderError(
                f"{path}: uneven slice spacing: gaps from {diffs.min():.4f} to "
                f"{diffs.max():.4f} mm"
            )
        step_vec = (slices[-1].ipp - slices[0].ipp) / (n - 1)
        expected = slices[0].ipp + np.arange(n)[:, None] * step_vec
        actual = np.stack([s.ipp for s in slices])
        if np.max(np.abs(actual - expected)) > tol:
            raise ReaderError(
                f"{path}: slice positions do not lie on a line (deviation "
                f"{np.max(np.abs(actual - expected)):.3f} mm); uneven or mixed positions"
            )
    else:
        gap = first.slice_gap if first.slice_gap and first.slice_gap > 0 else 1.0
        step_vec = normal * gap
    affine = np.eye(4)
    affine[:3, 0] = row_dir * first.spacing[1]  # axis 0: column index, along the row direction
    affine[:3, 1] = col_dir * first.spacing[0]  # axis 1: row index, along the column direction
    affine[:3, 2] = step_vec
    affine[:3, 3] = slices[0].ipp
    return slices, affine


def _stack(slices: list[_Slice], labels: bool = False) -> np.ndarray:
    """The sorted slices' mapped values as a volume (axes: column, row, slice; a strided
    view of a slice-major stack): float32 for images, float64 for labels.

    Images with 8- or 16-bit integer pixels are mapped through a lookup table
    (:func:`_value_lut`) written straight into the stack, instead of a float64 pass per slice:
    the same values bit for bit."""
    first = slices[0]
    size = (first.rows, first.cols)
    stack = None
    luts: dict = {}
    for k, s in enumerate(slices):
        arr = s.raw() if not labels and s.raw is not None and s.value_map is not None else None
        lut = None
        if arr is not None:
            key = (arr.dtype.str, s.value_map)
            if key not in luts:
                luts[key] = _value_lut(arr.dtype, s.value_map)
            lut = luts[key]
        vals = arr if lut is not None else s.values()
        if vals.shape != size:
            raise ReaderError(f"{s.where}: decoded shape {vals.shape} != {size[0]}x{size[1]}")
        if stack is None:  # dtype of the mapped values (float32 images, float64 labels)
            dtype = np.float32 if lut is not None else vals.dtype
            stack = np.empty((len(slices), *size), dtype=dtype)
        if lut is not None:
            np.take(lut, arr.view(f"u{arr.dtype.itemsize}"), out=stack[k], mode="clip")
        else:
            stack[k] = vals  # contiguous writes
    return stack.transpose(2, 1, 0)


def _value_lut(dtype: np.dtype, value_map: tuple[float, float]) -> np.ndarray | None:
    """float32 lookup table from the stored integers of an 8- or 16-bit ``dtype`` (indexed by
    their unsigned bit pattern) to ``float32(float64(q) * slope + intercept)``: exactly
    :func:`_apply_map`'s values, computed once per table instead of once per voxel.  None for
    wider or non-integer types."""
    if dtype.kind not in "iu" or dtype.itemsize > 2:
        return None
    q = np.arange(1 << (8 * dtype.itemsize), dtype=f"u{dtype.itemsize}").view(dtype)
    return _apply_map(q, *value_map, False)
