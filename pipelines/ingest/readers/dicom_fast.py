"""The fast path of the DICOM reader: a classic single-frame file in a native little-endian
transfer syntax, parsed from its bytes.

pydicom's dcmread (file meta, every element, a Dataset of them) and its pixel handler cost
about twice a bare read of the bytes in Python; walking the element headers with struct and
taking the pixel value as a NumPy view of the file's bytes costs a fraction of that.  Only
the tags below are looked at (their raw bytes); every other value, identifying or not, is
skipped by its length and never decoded.  Anything unusual (another transfer syntax, an
undefined length, a sequence we would need, an unknown VR, a value running past the end of
the file, a pixel data length that is not exactly rows x columns, ...) returns None and the
file goes through pydicom (:mod:`.dicom`) exactly as before, so every error message and
every decoding rule stays pydicom's.
"""

from __future__ import annotations

import struct

import numpy as np

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
    ``Dataset`` that :func:`.dicom._classic_slice` and :func:`.dicom._read_dicom` touch."""

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

    @property
    def BitsAllocated(self) -> int:  # noqa: N802 - pydicom's keyword
        return 8 * self._dtype.itemsize

    def text(self, keyword: str) -> str | None:
        """Like :func:`.dicom._raw_text` on the pydicom dataset."""
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
