"""Guarded inputs: what an image's header claims (shape, voxels, bytes) is checked against
what its file holds and against a ceiling *before* anything of the claimed size is allocated.

A header is a promise the reader's library trusts: nibabel allocates the bytes a NIfTI header
announces before it reads them (a 1,376-byte file claiming 1500 x 1500 x 1000 int16 voxels
took 4.4 GiB and 6-12 s to fail; larger claims fail with a bare ``MemoryError``), pydicom
allocates the decoded size of compressed frames before decoding them, and the reader itself
builds one slice object per claimed frame.

Guarantees (every reader, through :func:`.read_volume`):

* no buffer of a header's claimed size is allocated before the claim has passed both checks:

  - the **ceiling**: the voxels of one image (a NIfTI file; a DICOM series or multi-frame file,
    all frames) are at most ``max_voxels`` (:data:`DEFAULT_MAX_VOXELS`), checked first and from
    the header alone (a ``.nii.gz`` is not inflated beyond its header);
  - the **bytes held**: a ``.nii`` file holds ``vox_offset`` plus the data bytes; a ``.nii.gz``
    inflates to that many bytes, counted while inflating (every gzip member, CRCs checked; the
    gzip trailer's ISIZE is the size modulo 4 GiB of the last member only, so it is never
    trusted); a native DICOM file's PixelData holds Rows x Columns x frames x BitsAllocated
    (pydicom's own rule); encapsulated (compressed) DICOM holds at least one fragment per frame
    (PS3.5 A.4), RLE at most 64 decoded bytes per encoded byte (a 2-byte PackBits run gives at
    most 128), and the first frame's JPEG, JPEG-LS or JPEG 2000 codestream is Rows x Columns;

* the checks refuse only claims the file cannot meet, which nibabel or pydicom would refuse too
  (after allocating) or decode wrongly; every file that passes reads exactly as before;
* a refusal is a :class:`.ReaderError` naming the file (or the series folder), what its header
  claims and what the file holds; it names no other header value.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from pipelines.ingest.readers.dicom_fast import _FastHeader
from pipelines.ingest.readers.volume import ReaderError

#: Default ceiling on the voxels of one image (``IngestConfig.max_voxels``): 500 million voxels
#: (2 GB as float32).  Whole-body MRI needs far fewer: a UK Biobank Dixon station is about 2.4
#: million voxels (224 x 168 x 64), a stitched whole body about 14 million, and even a whole
#: body at 1 mm isotropic resolution in one image (500 x 350 x 2000 mm) 350 million.
DEFAULT_MAX_VOXELS = 500_000_000

#: an RLE segment decodes to at most 64 bytes per encoded byte (PS3.5 G.3.1: a 2-byte
#: replicate run gives at most 128 bytes; a literal run gives fewer than it takes)
_RLE_MAX_RATIO = 64
#: JPEG and JPEG-LS start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15; JPEG-LS SOF55)
_JPEG_SOF = frozenset(
    bytes([0xFF, m]) for m in (*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC),
                               *range(0xCD, 0xD0), 0xF7))
_BE16 = struct.Struct(">H")
_SIZ = struct.Struct(">4L")  # JPEG 2000 SIZ: Xsiz, Ysiz, XOsiz, YOsiz


@dataclass(frozen=True)
class Claim:
    """What a header says an image needs.

    Parameters
    ----------
    what : the claimed shape in the format's words, e.g. ``"1500x1500x1000 int16 voxels"``.
    voxels : voxels (pixels x frames) claimed.
    nbytes : bytes of image data claimed (as stored; for compressed DICOM, decoded).
    offset : where the data start in the file (NIfTI ``vox_offset``), bytes.
    """

    what: str
    voxels: int
    nbytes: int
    offset: int = 0

    @property
    def need(self) -> int:
        """Bytes the (inflated) file must hold: the offset plus the data."""
        return self.offset + self.nbytes

    def __str__(self) -> str:
        at = f" from byte {self.offset:,}" if self.offset else ""
        return f"{self.what} ({self.voxels:,} voxels, {size_text(self.nbytes)}{at})"


def size_text(n: int) -> str:
    """``n`` bytes, with the binary unit that makes it readable when it is large."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= scale:
            return f"{n:,} bytes = {n / scale:.1f} {unit}"
    return f"{n:,} bytes"


def check_claim(where: str | Path, claim: Claim, *, max_voxels: int, holds: str,
                held: int | None = None, whose: str = "its header claims") -> None:
    """Refuse ``claim`` when it exceeds ``max_voxels``, or when ``held`` (the bytes the file
    holds, None when not known yet) is less than :attr:`Claim.need`.

    ``holds`` says what the file holds, for the message (``"the file holds 1,376 bytes"``);
    ``whose`` says who claims (a series: ``"its files' headers claim"``).

    Raises
    ------
    ReaderError
        naming ``where``, the claim and what the file holds.
    """
    if claim.voxels > max_voxels:
        raise ReaderError(
            f"{where}: {whose} {claim}, more than the ceiling of {max_voxels:,} voxels per "
            f"image (max_voxels); {holds}")
    if held is not None and held < claim.need:
        raise ReaderError(
            f"{where}: truncated or lying header: it claims {claim}, but {holds}")


# --------------------------------------------------------------------------------------------
# DICOM


@dataclass(frozen=True)
class PixelClaim:
    """What one DICOM file's header claims of its pixel data, and what the file holds.

    Parameters
    ----------
    claim : frames x Rows x Columns and the bytes they take (decoded).
    rows, columns, frames : the claimed values.
    held : bytes of the pixel data element (encoded, for compressed transfer syntaxes).
    """

    claim: Claim
    rows: int
    columns: int
    frames: int
    held: int


def check_dicom_pixels(ds, f: Path, *, max_voxels: int) -> PixelClaim | None:
    """Check what a DICOM file's header claims of its pixel data against what the file holds
    and against ``max_voxels``, before any pixel is decoded.

    ``ds`` is a pydicom ``Dataset`` or the fast parser's header.  Returns the claim, or None
    when the header lacks what a claim needs (Rows, Columns, BitsAllocated, ...: pydicom's own
    decoding then names the problem).

    Raises
    ------
    ReaderError
        when the claim exceeds the ceiling or the file cannot hold it.
    """
    if isinstance(ds, _FastHeader):  # its pixel data length was checked against the claim
        rows, cols, bits = ds.Rows, ds.Columns, ds.BitsAllocated
        claim = Claim(f"{rows}x{cols} pixels (Rows x Columns) of {bits} bits", rows * cols,
                      rows * cols * bits // 8)
        check_claim(f, claim, max_voxels=max_voxels, holds=_holds_native(claim.nbytes))
        return PixelClaim(claim, rows, cols, 1, claim.nbytes)
    try:
        keyword = next(k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
                       if k in ds)
        value = ds[keyword].value
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = ds.get("NumberOfFrames", 1)
        frames = int(frames) if frames not in (None, "") else 1
        syntax = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in getattr(
            ds, "file_meta", ()) else None
        # a private or unknown transfer syntax: pydicom's decoding names the problem
        encapsulated = syntax.is_encapsulated if syntax is not None else False
    except (StopIteration, AttributeError, KeyError, TypeError, ValueError):
        return None
    if min(rows, cols, bits, samples) < 1 or not isinstance(value, bytes | bytearray):
        return None
    frames = max(frames, 1)  # pydicom reads a NumberOfFrames of 0 as 1
    voxels = rows * cols * frames
    stored = voxels * samples
    # pydicom's rule (DecodeRunner.frame_length): 1-bit pixels are packed, others whole bytes
    nbytes = -(-stored // 8) if bits == 1 else stored * (bits // 8)
    shape = f"{rows}x{cols} pixels (Rows x Columns) of {bits} bits"
    if frames > 1:
        shape = f"{frames:,} frames (NumberOfFrames) of {shape}"
    if samples > 1:
        shape += f", {samples} samples per pixel"
    claim = Claim(shape, voxels, nbytes)
    if not encapsulated:
        # native: the element must hold every byte (pydicom refuses a shorter one too, after
        # reading it); YBR_FULL_422 stores 2 bytes per 3 samples, and colour is refused anyway
        check_claim(f, claim, max_voxels=max_voxels, holds=_holds_native(len(value)),
                    held=len(value) if samples == 1 else None)
        return PixelClaim(claim, rows, cols, frames, len(value))
    holds = f"its encapsulated pixel data hold {size_text(len(value))} (compressed)"
    check_claim(f, claim, max_voxels=max_voxels, holds=holds)
    _check_encapsulated(f, claim, value, syntax, rows, cols, frames)
    return PixelClaim(claim, rows, cols, frames, len(value))


def _holds_native(n: int) -> str:
    return f"its pixel data element holds {size_text(n)}"


def check_dicom_series(path: Path, pixels: list[PixelClaim], *, max_voxels: int) -> None:
    """Refuse a series whose files together claim more than ``max_voxels`` (each file has
    passed :func:`check_dicom_pixels`)."""
    voxels = sum(c.claim.voxels for c in pixels)
    if voxels <= max_voxels:
        return
    sizes = {(c.rows, c.columns) for c in pixels}
    what = (f"{len(pixels):,} files of {pixels[0].rows}x{pixels[0].columns} pixels (Rows x "
            "Columns)" if len(sizes) == 1 else f"{len(pixels):,} files of mixed matrix sizes")
    claim = Claim(what, voxels, sum(c.claim.nbytes for c in pixels))
    check_claim(path, claim, max_voxels=max_voxels, whose="its files' headers claim",
                holds=f"the files hold {size_text(sum(c.held for c in pixels))} of pixel data")


def _check_encapsulated(f: Path, claim: Claim, value: bytes, syntax, rows: int, cols: int,
                        frames: int) -> None:
    """What compressed pixel data can hold: the encoded size says little about the decoded
    one, except that each frame has a fragment of its own, RLE inflates at most 64-fold and
    a JPEG-family codestream states its own size."""
    from pydicom.encaps import parse_fragments
    from pydicom.uid import (
        JPEG2000TransferSyntaxes,
        JPEGLSTransferSyntaxes,
        JPEGTransferSyntaxes,
        RLELossless,
    )

    try:
        items, offsets = parse_fragments(value)
    except (ValueError, struct.error):
        return  # not a valid item sequence: pydicom's own decoding names the problem
    fragments = items - 1  # the first item is the Basic Offset Table
    if frames > fragments:
        raise ReaderError(
            f"{f}: truncated or lying header: it claims {claim}, but its encapsulated pixel "
            f"data hold {max(fragments, 0):,} fragment(s), and every frame has one at least")
    if syntax == RLELossless and claim.nbytes > _RLE_MAX_RATIO * len(value):
        raise ReaderError(
            f"{f}: truncated or lying header: it claims {claim}, but its RLE data hold "
            f"{len(value):,} bytes, which decode to {_RLE_MAX_RATIO * len(value):,} bytes at "
            "most")
    first = offsets[1]
    length = struct.unpack_from("<L", value, first + 4)[0]
    head = value[first + 8:first + 8 + min(length, 1 << 16)]
    kind = ("JPEG 2000" if syntax in JPEG2000TransferSyntaxes else
            "JPEG-LS" if syntax in JPEGLSTransferSyntaxes else
            "JPEG" if syntax in JPEGTransferSyntaxes else None)
    size = _codestream_size(head) if kind is not None else None
    if size is not None and size != (rows, cols):
        raise ReaderError(
            f"{f}: header does not match its pixel data: it claims {claim}, but the {kind} "
            f"codestream of its first frame is {size[0]}x{size[1]} pixels")


def _codestream_size(head: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG, JPEG-LS or JPEG 2000 codestream states in its frame header
    (SOF, SOF55, SIZ), or None when ``head`` does not show one plainly (a JP2 wrapper, a
    height left to a DNL marker, a header past ``head``)."""
    try:
        if head[:4] == b"\xff\x4f\xff\x51":  # JPEG 2000: SOC, then SIZ (15444-1 A.5.1)
            x, y, x0, y0 = _SIZ.unpack_from(head, 8)
            return (y - y0, x - x0) if y > y0 and x > x0 else None
        if head[:2] != b"\xff\xd8":  # JPEG / JPEG-LS: SOI, then segments up to the SOF
            return None
        pos = 2
        while head[pos:pos + 2] not in _JPEG_SOF:
            if head[pos] != 0xFF:
                return None
            if head[pos + 1] == 0xFF:  # a fill byte before a marker
                pos += 1
                continue
            pos += 2 + _BE16.unpack_from(head, pos + 2)[0]
        rows, cols = _BE16.unpack_from(head, pos + 5)[0], _BE16.unpack_from(head, pos + 7)[0]
    except (IndexError, struct.error):
        return None
    return (rows, cols) if rows and cols else None
