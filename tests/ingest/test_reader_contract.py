"""What every image reader promises, written once (the way zarr-python tests its stores with
``StoreTests``): :class:`ReaderContract` holds the tests, and each reader's subclass only says
how to write a test image in its format.  A new reader (or a new route through one) gets the
whole contract by subclassing it and writing one ``write`` method.

The contract, for every reader, through :func:`read_volume` (the one entry point the stage
uses):

* values and RAS+ affine of an image stored in a non-RAS layout (and obliquely) equal the
  truth, with the ``shape``, ``spacing``, ``path`` and ``fmt`` that go with them, also when
  called the way the stage calls it (``integers=True, sha256=True``);
* ``labels=True`` keeps integer label values exactly (int32);
* the SHA-256 a reader computes while reading equals :func:`hash_source` and an independent
  hash of the same files, and is None when not asked for;
* a missing path, a truncated file and a corrupt file raise :class:`ReaderError` naming the
  path or file (never nibabel's, pydicom's or zlib's own exception types), without any
  identifying value in the message;
* guarded inputs: a header claiming far more image data than its file holds is refused
  before anything of the claimed size is allocated, naming the file, the claim and what the
  file holds; an image above ``max_voxels`` is refused (naming the path, the claim and the
  ceiling), one at the ceiling is read;
* the volume and the errors survive a pickle round trip (they cross Dask worker boundaries);
* no identifying DICOM value (PatientName, PatientID, ...) reaches the volume, its repr, its
  pickle, the log or a warning.

Format-specific behaviour (nibabel's and pydicom's test files, 4-D refusals, slice sorting
rules, transfer syntaxes, fast paths against general paths) stays in
``test_ingest_nifti_reader.py``, ``test_ingest_dicom_reader.py`` and
``test_ingest_fast_paths.py``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import pickle
import re
import shutil
import tracemalloc
import warnings
from pathlib import Path
from typing import ClassVar

import nibabel as nib
import numpy as np
import pydicom
import pytest
from ingest_fixtures import (
    IDENTITY,
    affine_ras,
    set_nifti_shape,
    smooth_volume,
    store_along,
    write_dicom_series,
    write_enhanced_dicom,
    write_nifti,
)
from pydicom.uid import RLELossless

from pipelines.ingest.readers import (
    ReaderError,
    Volume,
    dicom,
    hash_source,
    read_volume,
    source_files,
)

SHAPE = (7, 6, 5)  # all different: a swapped axis cannot go unnoticed
SPACING = (1.5, 1.25, 4.0)  # mm
ORIGIN = (-20.0, 15.0, 40.0)  # mm
ATOL_MM = 1e-5  # DICOM positions are written as 6-decimal strings, NIfTI affines as float32


def _oblique(affine: np.ndarray, degrees: float = 12.0) -> np.ndarray:
    t = np.deg2rad(degrees)
    rot = np.eye(4)
    rot[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return rot @ affine


#: how the truth is laid out in the file: voxel axes along these codes, optionally oblique
LAYOUTS = {"LPS": ("LPS", False), "LAS": ("LAS", False), "ASL": ("ASL", False),
           "oblique LPS": ("LPS", True)}

#: ways to cut a file short: name -> bytes kept, from the file's length
CUTS = {
    "empty": lambda n: 0,
    "first 200 bytes": lambda n: 200,
    "half": lambda n: n // 2,
    "all but 8 bytes": lambda n: n - 8,
    "all but 1 byte": lambda n: n - 1,
}


def _identity_free(text: str) -> bool:
    return not any(v.lower() in text.lower() for v in IDENTITY.values())


class ReaderContract:
    """The tests every reader passes.  Subclass it as ``Test<Reader>`` and give:

    * ``fmt``: the :attr:`Volume.fmt` the reader reports;
    * ``write(folder, data, affine)``: write ``data`` (voxel -> RAS+ ``affine``, in mm) in
      the reader's format *as laid out* (no reorientation), putting the identifying values
      of ``ingest_fixtures.IDENTITY`` wherever the format can hold them, and return the
      path :func:`read_volume` is given (a file or a series folder);
    * ``lie(target)``: rewrite the header of ``target`` (the file :meth:`damage_target`
      picks) to claim about 40-100 MB of image data (under the default ceiling) that the file
      does not hold, and return the claim as the reader's message words it;
    * optionally ``route(monkeypatch)``, to force one route through the reader.
    """

    fmt: ClassVar[str]
    #: cuts (names of ``CUTS``) after which this format still holds every voxel and its
    #: library still reads the file, each with the reason: the reader must then give the
    #: exact image instead of an error (never a wrong one)
    complete_after_cut: ClassVar[dict[str, str]] = {}

    def write(self, folder: Path, data: np.ndarray, affine: np.ndarray) -> Path:
        raise NotImplementedError

    def lie(self, target: Path) -> str:
        raise NotImplementedError

    def route(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Force the route under test (default: the one the reader picks itself)."""

    @pytest.fixture(autouse=True)
    def _route(self, monkeypatch):
        self.route(monkeypatch)

    # helpers ----------------------------------------------------------------------------------

    @staticmethod
    def truth(layout: str = "LPS") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(data, affine) of an RAS+ image with integer values that every format stores
        exactly, and the same image stored along ``layout``."""
        axcodes, oblique = LAYOUTS[layout]
        data = np.round(smooth_volume(SHAPE))
        affine = affine_ras(SPACING, ORIGIN)
        if oblique:
            affine = _oblique(affine)
        return (data, affine, *store_along(data, affine, axcodes))

    def written(self, tmp_path: Path, layout: str = "LPS") -> tuple[Path, np.ndarray, np.ndarray]:
        data, affine, stored, stored_affine = self.truth(layout)
        return self.write(tmp_path / "image", stored, stored_affine), data, affine

    @staticmethod
    def damage_target(path: Path) -> Path:
        """The file to damage: the image file, or the first file of a series folder."""
        return source_files(path)[0]

    # values and geometry ----------------------------------------------------------------------

    @pytest.mark.parametrize("layout", LAYOUTS)
    def test_values_and_ras_affine_equal_truth(self, tmp_path, layout):
        path, data, affine = self.written(tmp_path, layout)
        v = read_volume(path)
        assert isinstance(v, Volume)
        assert v.data.dtype == np.float32
        np.testing.assert_array_equal(v.data, data)
        assert v.affine.shape == (4, 4) and v.affine.dtype == np.float64
        np.testing.assert_allclose(v.affine, affine, atol=ATOL_MM)
        assert nib.aff2axcodes(v.affine) == ("R", "A", "S")
        assert v.shape == SHAPE
        assert v.spacing == pytest.approx(SPACING, abs=ATOL_MM)
        assert v.path == str(path) and v.fmt == self.fmt

    def test_stage_call_gives_the_same_volume(self, tmp_path):
        """The stage reads with ``integers=True, sha256=True``: same values as float32, same
        affine; a ``str`` path reads like a ``Path``."""
        path, data, affine = self.written(tmp_path)
        v = read_volume(str(path), integers=True, sha256=True)
        np.testing.assert_array_equal(np.asarray(v.data, dtype=np.float32), data)
        np.testing.assert_allclose(v.affine, affine, atol=ATOL_MM)
        assert v.path == str(path)

    def test_labels_keep_integer_values(self, tmp_path):
        rng = np.random.default_rng(1)
        values = np.array([0, 1, 2, 7, 255, 256, 1000, 4095, 65535], dtype=np.uint16)
        labels = rng.choice(values, SHAPE).astype(np.uint16)
        affine = affine_ras(SPACING, ORIGIN)
        stored, stored_affine = store_along(labels, affine, "LPS")
        v = read_volume(self.write(tmp_path / "labels", stored, stored_affine), labels=True)
        assert v.data.dtype == np.int32
        np.testing.assert_array_equal(v.data, labels.astype(np.int32))
        np.testing.assert_allclose(v.affine, affine, atol=ATOL_MM)

    # hashing ----------------------------------------------------------------------------------

    def test_digest_read_with_the_image_equals_hash_source(self, tmp_path):
        path, _, _ = self.written(tmp_path)
        independent = hashlib.sha256()
        for f in sorted([path] if path.is_file() else path.iterdir(), key=lambda f: f.name):
            independent.update(f.read_bytes())
        assert read_volume(path, sha256=True).sha256 == hash_source(path) \
            == independent.hexdigest()
        assert read_volume(path).sha256 is None

    # errors -----------------------------------------------------------------------------------

    def _missing(self, tmp_path) -> tuple[Path, ReaderError]:
        path, _, _ = self.written(tmp_path)
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        with pytest.raises(ReaderError, match=re.escape(str(path))) as e:
            read_volume(path, sha256=True)
        return path, e.value

    def test_missing_path_names_it(self, tmp_path):
        path, _ = self._missing(tmp_path)
        with pytest.raises(ReaderError, match=re.escape(str(path))):
            hash_source(path)

    @pytest.mark.parametrize("cut", CUTS)
    def test_truncated_file_names_it(self, tmp_path, cut):
        path, _, _ = self.written(tmp_path)
        target = self.damage_target(path)
        blob = target.read_bytes()
        target.write_bytes(blob[:CUTS[cut](len(blob))])
        if cut in self.complete_after_cut:
            data, affine = self.truth()[:2]
            v = read_volume(path)
            np.testing.assert_array_equal(v.data, data)
            np.testing.assert_allclose(v.affine, affine, atol=ATOL_MM)
            return
        with pytest.raises(ReaderError, match=re.escape(str(target))) as e:
            read_volume(path, sha256=True)
        assert _identity_free(str(e.value))

    def test_corrupt_file_names_it(self, tmp_path):
        """Everything after the first 132 bytes (DICOM preamble and magic, a NIfTI header's
        dimensions, the start of a gzip stream) replaced by random bytes."""
        path, _, _ = self.written(tmp_path)
        target = self.damage_target(path)
        blob = target.read_bytes()
        junk = np.random.default_rng(7).integers(0, 256, len(blob) - 132, dtype=np.uint8)
        target.write_bytes(blob[:132] + junk.tobytes())
        with pytest.raises(ReaderError, match=re.escape(str(target))) as e:
            read_volume(path)
        assert _identity_free(str(e.value))

    # guarded inputs ---------------------------------------------------------------------------

    def test_lying_header_is_refused_before_allocating_its_claim(self, tmp_path):
        path, _, _ = self.written(tmp_path)
        target = self.damage_target(path)
        claimed = self.lie(target)
        tracemalloc.start()
        try:
            with pytest.raises(ReaderError) as e:
                read_volume(path, sha256=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        message = str(e.value)
        assert message.startswith(f"{target}: "), message
        assert f"claims {claimed}" in message and " hold" in message, message
        assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated for a claim the file lacks"
        assert _identity_free(message)

    def test_ceiling_refuses_an_image_above_it(self, tmp_path):
        path, data, affine = self.written(tmp_path)
        n = data.size
        with pytest.raises(ReaderError) as e:
            read_volume(path, sha256=True, max_voxels=n - 1)
        message = str(e.value)
        assert re.match(rf"{re.escape(str(path))}: its (header claims|files' headers claim) ",
                        message), message
        assert f"({n:,} voxels, " in message, message
        assert f"more than the ceiling of {n - 1:,} voxels per image (max_voxels)" in message
        assert " hold" in message and _identity_free(message)
        v = read_volume(path, max_voxels=n)
        np.testing.assert_array_equal(v.data, data)
        np.testing.assert_allclose(v.affine, affine, atol=ATOL_MM)

    # pickling ---------------------------------------------------------------------------------

    def test_volume_pickles(self, tmp_path):
        path, _, _ = self.written(tmp_path)
        for v in (read_volume(path, sha256=True), read_volume(path, labels=True)):
            back = pickle.loads(pickle.dumps(v))
            assert type(back) is Volume
            for field in dataclasses.fields(Volume):
                a, b = getattr(v, field.name), getattr(back, field.name)
                if isinstance(a, np.ndarray):
                    assert a.dtype == b.dtype
                    np.testing.assert_array_equal(a, b)
                else:
                    assert a == b, field.name
            assert back.shape == v.shape and back.spacing == v.spacing

    def test_errors_pickle(self, tmp_path):
        _, missing = self._missing(tmp_path / "missing")
        path, _, _ = self.written(tmp_path / "truncated")
        target = self.damage_target(path)
        target.write_bytes(target.read_bytes()[:300])
        with pytest.raises(ReaderError) as truncated:
            read_volume(path)
        for err in (missing, truncated.value):
            back = pickle.loads(pickle.dumps(err))
            assert type(back) is type(err) and back.args == err.args and str(back) == str(err)

    # de-identification ------------------------------------------------------------------------

    def test_no_identifying_value_reaches_volume_log_or_warnings(self, tmp_path, caplog):
        path, _, _ = self.written(tmp_path)
        # the files do hold them (else this test would prove nothing)
        plain = [gzip.decompress(b) if f.name.endswith(".gz") else b
                 for f in source_files(path) for b in [f.read_bytes()]]
        assert all(IDENTITY["PatientID"].encode() in b for b in plain)
        caplog.set_level(logging.DEBUG)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            volumes = [read_volume(path, sha256=True), read_volume(path, labels=True)]
        for v in volumes:
            assert set(vars(v)) == {f.name for f in dataclasses.fields(Volume)}
            assert _identity_free(repr(v)) and _identity_free(str(v))
            blob = pickle.dumps(v)
            for value in IDENTITY.values():
                assert value.encode() not in blob
        assert _identity_free(caplog.text)
        assert all(_identity_free(str(w.message)) for w in caught)


# ---------------------------------------------------------------------------------------------
# the readers


class TestNiftiReader(ReaderContract):
    """NIfTI-1, uncompressed ``.nii``."""

    fmt = "nifti"
    suffix = ".nii"

    def write(self, folder, data, affine):
        # NIfTI has no patient fields; ``descrip`` is where converters put free text
        descrip = " ".join(IDENTITY.values())
        return write_nifti(folder / f"image{self.suffix}", data, affine, descrip=descrip)

    def lie(self, target):
        set_nifti_shape(target, (2500, 2000, 5))  # 100 MB of float32
        return "2500x2000x5 float32 voxels (25,000,000 voxels, 100,000,000 bytes"


class TestNiftiGzReader(TestNiftiReader):
    """NIfTI-1, gzip-compressed ``.nii.gz`` (the one-call inflate)."""

    suffix = ".nii.gz"


class _ClassicDicom(ReaderContract):
    """A classic single-frame series (one file per slice, shuffled names)."""

    fmt = "dicom"
    transfer_syntax: ClassVar[str | None] = None
    #: whether the files are meant to go through the fast parser (checked, so that a change
    #: of route cannot leave a subclass testing another route than it says)
    fast_parser: ClassVar[bool]

    def write(self, folder, data, affine):
        # the writer puts every value of IDENTITY in every file
        write_dicom_series(folder, data, affine, transfer_syntax=self.transfer_syntax)
        return folder

    def lie(self, target):
        ds = pydicom.dcmread(target)
        ds.Rows = ds.Columns = 5000  # 50 MB of 16-bit pixels
        ds.save_as(target)
        return "5000x5000 pixels (Rows x Columns) of 16 bits (25,000,000 voxels, 50,000,000 bytes"

    def test_route(self, tmp_path):
        path, _, _ = self.written(tmp_path)
        for f in source_files(path):
            assert (dicom._fast_header(f.read_bytes()) is not None) == self.fast_parser


class TestDicomClassicFastReader(_ClassicDicom):
    """Explicit VR little endian: the fast parser (:mod:`.dicom_fast`)."""

    fast_parser = True


class TestDicomClassicPydicomReader(_ClassicDicom):
    """The same files with the fast parser switched off: pydicom's dcmread and pixel
    handler."""

    fast_parser = False

    def route(self, monkeypatch):
        monkeypatch.setattr(dicom, "_fast_header", lambda buf: None)


class TestDicomClassicCompressedReader(_ClassicDicom):
    """RLE Lossless, which only pydicom decodes."""

    transfer_syntax = RLELossless
    fast_parser = False
    complete_after_cut = {
        "all but 1 byte": "the cut takes only the last byte of the length of the sequence "
                          "delimiter item that closes the encapsulated pixel data; pydicom "
                          "reads the file without a warning",
    }


class TestDicomEnhancedReader(ReaderContract):
    """One enhanced MR multi-frame file (functional groups, frames in shuffled order)."""

    fmt = "dicom"

    def write(self, folder, data, affine):
        return write_enhanced_dicom(folder / "enhanced.dcm", data, affine, identity=IDENTITY)

    def lie(self, target):
        ds = pydicom.dcmread(target)
        ds.NumberOfFrames = 500_000  # 42 MB of 16-bit pixels in 6x7-pixel frames
        ds.save_as(target)
        return ("500,000 frames (NumberOfFrames) of 6x7 pixels (Rows x Columns) of 16 bits "
                "(21,000,000 voxels, 42,000,000 bytes")
