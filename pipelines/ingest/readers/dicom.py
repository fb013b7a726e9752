"""DICOM series through pydicom (classic single-frame files and enhanced multi-frame
files): value mappings, slice sorting and stacking, and the filter that keeps pydicom's
messages (which may quote header values) out of the logs.  Classic native little-endian
files are parsed by :mod:`.dicom_fast` instead; anything it refuses comes here."""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines._io import sha256_files
from pipelines.ingest.readers.dicom_fast import _fast_header, _FastHeader
from pipelines.ingest.readers.guard import (
    DEFAULT_MAX_VOXELS,
    check_dicom_pixels,
    check_dicom_series,
)
from pipelines.ingest.readers.volume import (
    ReaderError,
    Volume,
    _finish,
    _read_bytes,
    reorient_to_ras,
    source_files,
)

log = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
    n = int(ds.get("NumberOfFrames", 0) or 0)
    if n < 1:  # (its pixel data would be read as one frame, whatever the groups say)
        raise ReaderError(f"{f}: multi-frame file without a NumberOfFrames of 1 or more")
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


def read_dicom(path: str | Path, *, labels: bool = False, sha256: bool = False,
               max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read one DICOM series (a folder of classic single-frame files, or one enhanced
    multi-frame file, alone or in a folder) as a 3-D volume.

    Slices are sorted along the slice normal (row x column direction cosines) by
    ImagePositionPatient, never by file name or InstanceNumber.  Compressed transfer syntaxes
    are decoded by pydicom's pixel handlers (pylibjpeg: RLE, JPEG 2000, JPEG-LS, JPEG).
    Values are real-world values when a Real World Value Mapping (slope/intercept) is given,
    else modality values (RescaleSlope/RescaleIntercept), else stored values.  Before any
    pixel is decoded, what each header claims is checked against what its file holds and the
    series against ``max_voxels`` (:mod:`.guard`).

    Raises
    ------
    ReaderError
        on several series in one folder, several images at one position (4-D, multi-echo),
        missing slices, uneven spacing, mixed orientations or matrix sizes, unreadable or
        truncated files, a header claiming more pixel data than its file holds, a series of
        more than ``max_voxels`` voxels.
    """
    p = Path(path)
    with _withhold_pydicom_messages(p):
        if sha256:
            return _read_dicom(p, labels, max_voxels, sha256=True)
        return _read_dicom(p, labels, max_voxels)


def _read_dicom(p: Path, labels: bool, max_voxels: int, *, sha256: bool = False) -> Volume:
    from concurrent.futures import ThreadPoolExecutor

    files = source_files(p)
    if not files:
        raise ReaderError(f"{p}: DICOM folder contains no files")
    headers, pixels = [], []
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
            # a lying header fails here, before the next file is read or a pixel decoded
            claim = check_dicom_pixels(ds, f, max_voxels=max_voxels)
            if claim is not None:
                pixels.append(claim)
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
    check_dicom_series(p, pixels, max_voxels=max_voxels)
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
