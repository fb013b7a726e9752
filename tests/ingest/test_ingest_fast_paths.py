"""The readers' fast paths give exactly what the general (pydicom / nibabel) paths give.

* DICOM: classic native little-endian files are parsed from their bytes (:func:`_fast_header`)
  and their pixels taken as a view; every other file goes through pydicom.  Checked on every
  pydicom and pydicom-data test file: where the fast path is taken, pixels (dtype included)
  and every header value it reads equal pydicom's; compressed, big-endian, enhanced and
  truncated files are left to pydicom.
* Integer pixels are mapped to float32 by a lookup table straight into the slice stack: equal,
  bit for bit, to the float64 rescale of the general path.
* NIfTI: ``.nii.gz`` inflated in one call, unscaled integers kept through stitching: equal to
  ``nib.load``'s path.
* Hashes computed from the bytes the readers parse equal :func:`hash_source`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ingest_fixtures import affine_ras, smooth_volume, write_dicom_series, write_nifti
from pydicom.uid import JPEG2000Lossless, RLELossless

from pipelines.ingest.geometry import Grid, common_grid, stitch
from pipelines.ingest.readers import ReaderError, dicom, hash_source, nifti, read_nifti, read_volume
from pipelines.ingest.readers.dicom import _raw_text
from pipelines.ingest.readers.dicom_fast import _FAST_TEXT_TAGS, _fast_header

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _test_files() -> list[Path]:
    dirs = [PYDICOM_FILES]
    try:
        import data_store  # pydicom-data, when installed (never downloaded here)

        dirs.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return [f for d in dirs for f in sorted(d.rglob("*")) if f.is_file()]


def _general_path(monkeypatch):
    """Make every DICOM file and NIfTI file take the general (pre-fast-path) route."""
    monkeypatch.setattr(dicom, "_fast_header", lambda buf: None)
    monkeypatch.setattr(nifti, "_nifti_from_bytes", lambda *args: None)


def test_fast_header_equals_pydicom_on_every_test_file():
    taken = []
    for f in _test_files():
        header = _fast_header(f.read_bytes())
        if header is None:
            continue
        taken.append(f.name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(f)
            expected = ds.pixel_array
        got = header.pixel_array
        assert got.dtype == expected.dtype and got.shape == expected.shape, f.name
        np.testing.assert_array_equal(got, expected, err_msg=f.name)
        for keyword in _FAST_TEXT_TAGS:
            assert header.text(keyword) == _raw_text(ds, keyword), (f.name, keyword)
        assert (header.Rows, header.Columns) == (ds.Rows, ds.Columns), f.name
    # explicit and implicit VR, signed and unsigned, 16-bit with BitsStored 12 (unused high
    # bits), 8- and 32-bit: all read on the fast path
    assert {"MR_small.dcm", "MR_small_implicit.dcm", "CT_small.dcm",
            "rtdose_1frame.dcm"} <= set(taken)


@pytest.mark.parametrize("name", [
    "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_truncated.dcm", "JPEG2000.dcm",
    "image_dfl.dcm", "no_meta.dcm", "ExplVR_LitEndNoMeta.dcm", "SC_rgb_small_odd.dcm",
])
def test_fast_header_leaves_other_files_to_pydicom(name):
    f = PYDICOM_FILES / name
    if not f.is_file():
        pytest.skip(f"{name} not in this pydicom")
    assert _fast_header(f.read_bytes()) is None


def test_fast_header_refuses_enhanced_rwvm_and_truncated(tmp_path):
    data = np.round(smooth_volume((6, 5, 3)))
    files = write_dicom_series(tmp_path / "s", data, affine_ras((1.0, 1.0, 2.0)))
    blob = files[0].read_bytes()
    assert _fast_header(blob) is not None
    for cut in (1, 50, len(blob) // 2, len(blob) - 200):  # inside pixels or any header element
        assert _fast_header(blob[:-cut]) is None
    ds = pydicom.dcmread(files[0])
    item = pydicom.Dataset()
    item.RealWorldValueSlope, item.RealWorldValueIntercept = 2.0, 1.0
    ds.RealWorldValueMappingSequence = pydicom.Sequence([item])
    ds.save_as(tmp_path / "rwvm.dcm", enforce_file_format=True)
    assert _fast_header((tmp_path / "rwvm.dcm").read_bytes()) is None
    ds = pydicom.dcmread(files[0])
    ds.NumberOfFrames = 2
    ds.save_as(tmp_path / "frames.dcm", enforce_file_format=True)
    assert _fast_header((tmp_path / "frames.dcm").read_bytes()) is None


def _rewrite_signed_12bit(files: list[Path], rng) -> None:
    """Make a series signed 12-bit in 16-bit words with garbage in the unused high bits (which
    pydicom's pixel handler shifts away) and a slope that differs from slice to slice."""
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        q = ds.pixel_array.astype(np.int32) - 1000
        garbage = rng.integers(0, 16, q.shape) << 12
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 12, 11
        ds.PixelData = ((q & 0x0FFF) | garbage).astype(np.uint16).tobytes()
        ds.RescaleSlope = f"{0.25 + 0.125 * (k % 3):g}"
        ds.RescaleIntercept = "-3.5"
        ds.save_as(f, enforce_file_format=True)


@pytest.mark.parametrize("axcodes_affine", [
    affine_ras((1.5, 1.25, 4.0), (-20.0, 15.0, 40.0)),  # axial
    np.array([[0, 0, 3.0, 1], [1.5, 0, 0, 2], [0, 1.25, 0, 3], [0, 0, 0, 1]]),  # sagittal
    np.array([[-1.5, 0, 0, 1], [0, 0, 3.0, 2], [0, -1.25, 0, 3], [0, 0, 0, 1]]),  # coronal
])
def test_dicom_fast_path_and_lookup_table_equal_general_path(tmp_path, monkeypatch, axcodes_affine):
    data = np.round(smooth_volume((12, 10, 9)))
    files = write_dicom_series(tmp_path / "s", data, axcodes_affine, slope=0.5, intercept=-10.0)
    _rewrite_signed_12bit(files, np.random.default_rng(1))
    fast = read_volume(tmp_path / "s")
    with monkeypatch.context() as m:
        _general_path(m)
        m.setattr(dicom, "_value_lut", lambda dtype, value_map: None)  # float64 rescale
        general = read_volume(tmp_path / "s")
    assert fast.data.dtype == general.data.dtype == np.float32
    np.testing.assert_array_equal(fast.data.view(np.uint32), general.data.view(np.uint32))
    np.testing.assert_array_equal(fast.affine, general.affine)
    assert fast.value_maps == general.value_maps and len(fast.value_maps) == 3


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "MR_small_implicit.dcm"])
def test_dicom_single_files_fast_equals_general(monkeypatch, name):
    fast = read_volume(PYDICOM_FILES / name)
    with monkeypatch.context() as m:
        _general_path(m)
        m.setattr(dicom, "_value_lut", lambda dtype, value_map: None)
        general = read_volume(PYDICOM_FILES / name)
    np.testing.assert_array_equal(fast.data.view(np.uint32), general.data.view(np.uint32))
    np.testing.assert_array_equal(fast.affine, general.affine)


def test_series_mixing_fast_and_pydicom_files(tmp_path):
    """A series with some compressed files: those go through pydicom, the rest do not; the
    values and the hash are those of the whole series."""
    data = np.round(smooth_volume((12, 10, 9)))
    aff = affine_ras((1.5, 1.25, 4.0), (-20.0, 15.0, 40.0))
    write_dicom_series(tmp_path / "plain", data, aff, series_uid="1.2.3", slope=0.5)
    write_dicom_series(tmp_path / "rle", data, aff, series_uid="1.2.3", slope=0.5,
                       transfer_syntax=RLELossless)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for k, (a, b) in enumerate(zip(sorted((tmp_path / "plain").iterdir()),
                                   sorted((tmp_path / "rle").iterdir()), strict=True)):
        src = a if k % 2 else b
        (mixed / src.name).write_bytes(src.read_bytes())
    v = read_volume(mixed, sha256=True)
    np.testing.assert_array_equal(v.data, read_volume(tmp_path / "plain").data)
    assert v.sha256 == hash_source(mixed)


def test_dicom_compressed_and_labels_paths_unchanged(tmp_path):
    data = np.round(smooth_volume((40, 36, 4)))  # big enough for the JPEG 2000 encoder
    aff = affine_ras((1.0, 1.0, 2.0))
    write_dicom_series(tmp_path / "j", data, aff, transfer_syntax=JPEG2000Lossless)
    np.testing.assert_array_equal(read_volume(tmp_path / "j").data, data)
    write_dicom_series(tmp_path / "l", data, aff)
    lab = read_volume(tmp_path / "l", labels=True)
    assert lab.data.dtype == np.int32
    np.testing.assert_array_equal(lab.data, data.astype(np.int32))


@pytest.mark.parametrize("dtype, axcodes", [
    (np.int16, "LAS"), (np.uint8, "RAS"), (np.uint16, "LPI"), (np.float32, "LAS"),
])
def test_nifti_fast_and_integer_volumes_equal_nibabel_path(tmp_path, monkeypatch, dtype,
                                                            axcodes):
    data = np.round(smooth_volume((9, 8, 7), scale=50.0)).astype(dtype)
    p = write_nifti(tmp_path / "a.nii.gz", data, affine_ras(), axcodes=axcodes)
    ints = read_nifti(p, integers=True, sha256=True)
    fast = read_nifti(p)
    with monkeypatch.context() as m:
        _general_path(m)
        general = read_nifti(p)
    assert general.data.dtype == fast.data.dtype == np.float32
    np.testing.assert_array_equal(fast.data.view(np.uint32), general.data.view(np.uint32))
    np.testing.assert_array_equal(fast.affine, general.affine)
    if dtype == np.float32:
        assert ints.data.dtype == np.float32
    else:  # the integers themselves, as a view in RAS order
        assert ints.data.dtype == dtype
    np.testing.assert_array_equal(ints.data.astype(np.float32), general.data)
    assert ints.sha256 == hash_source(p) and fast.sha256 is None


def test_nifti_scaled_integers_become_float32(tmp_path):
    import nibabel as nib

    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(raw, affine_ras())
    img.header.set_slope_inter(2.5, 10.0)
    nib.save(img, tmp_path / "s.nii.gz")
    v = read_nifti(tmp_path / "s.nii.gz", integers=True)
    assert v.data.dtype == np.float32
    np.testing.assert_array_equal(v.data, (raw * 2.5 + 10.0).astype(np.float32))


def test_nifti_files_of_nibabel_fast_equals_general(monkeypatch):
    import nibabel

    data_dir = Path(nibabel.__file__).parent / "tests" / "data"
    names = ["anatomical.nii", "example_nifti2.nii.gz", "standard.nii.gz",
             "example4d.nii.gz", "functional.nii"]
    read = 0
    for name in names:
        p = data_dir / name
        if not p.is_file():
            continue
        outcomes = []
        for general in (False, True):
            with monkeypatch.context() as m:
                if general:
                    _general_path(m)
                try:
                    outcomes.append(read_nifti(p))
                except ReaderError as e:  # the same refusal either way (4-D files here)
                    outcomes.append(str(e))
        fast, general = outcomes
        if isinstance(general, str):
            assert fast == general
            continue
        read += 1
        np.testing.assert_array_equal(fast.data, general.data)
        np.testing.assert_array_equal(fast.affine, general.affine)
    if not read:
        pytest.skip("no 3-D NIfTI test file in this nibabel")


def test_stitch_of_integer_volumes_equals_float32(tmp_path):
    rng = np.random.default_rng(0)
    shape = (6, 5, 10)
    vols = [rng.integers(-300, 3000, shape).astype(np.int16) for _ in range(3)]
    grids = [Grid(shape, affine_ras((1.0, 1.0, 2.0), (0.0, 0.0, 16.0 * k))) for k in range(3)]
    grid = common_grid(grids)
    ints = stitch(vols, grids, grid)
    floats = stitch([v.astype(np.float32) for v in vols], grids, grid)
    np.testing.assert_array_equal(ints.view(np.uint32), floats.view(np.uint32))
    # stations that are flipped Fortran-order views (a reoriented NIfTI): same values, and
    # the output is laid out like them
    views = [np.asfortranarray(v[::-1, :, ::-1])[::-1, :, ::-1] for v in vols]
    flipped = stitch(views, grids, grid)
    assert flipped.strides[0] < 0 and abs(flipped.strides[0]) < abs(flipped.strides[2])
    np.testing.assert_array_equal(flipped.view(np.uint32), floats.view(np.uint32))
    # a station off the lattice: resampled (interpolated as float32)
    odd = [*grids[:2], Grid(shape, affine_ras((1.0, 1.0, 2.0), (0.3, 0.0, 32.0)))]
    grid = common_grid(odd)
    np.testing.assert_array_equal(
        stitch(vols, odd, grid).view(np.uint32),
        stitch([v.astype(np.float32) for v in vols], odd, grid).view(np.uint32))


def test_shard_bytes_do_not_depend_on_encode_threads(tmp_path, monkeypatch):
    from pipelines.store import shards

    data = np.round(smooth_volume((70, 66, 300))) * 0.37  # two shards along z
    data[:, :, :70] = 0  # empty chunks are left out
    data = data.astype(np.float32)
    shards._create_array(tmp_path / "two", data)
    monkeypatch.setattr(shards, "_ENCODE_THREADS", 1)
    shards._create_array(tmp_path / "one", data)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*")
                   if p.is_file())
    assert len(files) == 3  # zarr.json and two shards
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()


def test_quantise_exact_works_in_any_memory_layout():
    """Stitched arrays reach the store as views laid out like their sources (flipped,
    Fortran-ordered); the exact integer encoding is the same as for a C-ordered copy."""
    from pipelines.store import quantise_exact

    rng = np.random.default_rng(3)
    slopes = [(0.37, -2.0), (0.5, 1.25)]
    q = rng.integers(0, 3000, (40, 30, 24))
    data = np.empty(q.shape, np.float32)
    for k in range(q.shape[2]):
        s, c = slopes[k % 2]
        data[:, :, k] = (q[:, :, k].astype(np.float64) * s + c).astype(np.float32)
    data[:, :, 5] += 0.001  # a slice no pair reproduces: kept as float32
    reference = quantise_exact(data, slopes, x_block=7)
    for view in (np.asfortranarray(data[::-1, ::-1])[::-1, ::-1],
                 np.asfortranarray(data[::-1])[::-1], np.asfortranarray(data)):
        got = quantise_exact(view, slopes, x_block=7)
        assert got[1] == reference[1] and got[0].dtype == reference[0].dtype
        np.testing.assert_array_equal(got[0], reference[0])
        np.testing.assert_array_equal(got[2], reference[2])
