"""DICOM reader on pydicom's and pydicom-data's real files (MR_small in several transfer
syntaxes, enhanced multi-frame emri_small*, truncated files) and on hand-made series that
break one rule each."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ingest_fixtures import LPS, affine_ras, smooth_volume, write_dicom_series
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import RLELossless

from pipelines.ingest.readers import ReaderError, read_volume

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _local_testdata(name: str) -> Path:
    """A pydicom or pydicom-data test file, from local disk only (never downloaded)."""
    candidates = [PYDICOM_FILES / name]
    try:
        import data_store  # pydicom-data

        candidates.append(Path(data_store.__file__).parent / "data" / name)
    except ImportError:
        pass
    for p in candidates:
        if p.is_file():
            return p
    pytest.skip(f"{name} is not available locally (pydicom/pydicom-data); not downloading it")


@pytest.fixture(scope="module")
def mr_small():
    return read_volume(_local_testdata("MR_small.dcm"))


def test_mr_small_geometry(mr_small):
    ds = pydicom.dcmread(_local_testdata("MR_small.dcm"))
    assert mr_small.shape == (64, 64, 1)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    # the voxel that sits on the first stored pixel (LPS position IPP) holds its value
    lps_first = LPS @ np.array([*ipp, 1.0])
    vox = np.linalg.solve(mr_small.affine, lps_first)
    np.testing.assert_allclose(vox[:3], np.round(vox[:3]), atol=1e-9)
    assert tuple(np.round(vox[:3]).astype(int)) == (63, 63, 0)
    assert mr_small.data[63, 63, 0] == ds.pixel_array[0, 0]
    np.testing.assert_array_equal(mr_small.data[::-1, ::-1, 0], ds.pixel_array.T)
    assert mr_small.spacing[:2] == pytest.approx((0.3125, 0.3125))


@pytest.mark.parametrize("name", [
    "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm",
])
def test_mr_small_transfer_syntaxes_decode_identically(name, mr_small):
    v = read_volume(_local_testdata(name))
    np.testing.assert_array_equal(v.data, mr_small.data)
    np.testing.assert_array_equal(v.affine, mr_small.affine)


def test_mr_truncated_is_a_clear_error():
    p = _local_testdata("MR_truncated.dcm")
    # pydicom reads the file whole but its PixelData element is 62 bytes short of Rows x
    # Columns x BitsAllocated: refused before decoding, saying what is claimed and held
    with pytest.raises(ReaderError, match=r"MR_truncated.dcm: truncated or lying header: it "
                                          r"claims 64x64 pixels \(Rows x Columns\) of 16 bits "
                                          r".*holds 8,130 bytes"):
        read_volume(p)


def test_too_short_enhanced_file():
    p = _local_testdata("emri_small_jpeg_2k_lossless_too_short.dcm")
    with pytest.raises(ReaderError, match="too_short.dcm: truncated DICOM file"):
        read_volume(p)


def test_enhanced_without_geometry_is_refused():
    p = _local_testdata("emri_small.dcm")
    with pytest.raises(ReaderError, match="emri_small.dcm frame 1: no ImagePositionPatient"):
        read_volume(p)


def _add_enhanced_geometry(src: Path, dst: Path, order: np.ndarray, slope=1.0, rwv=None):
    """Copy ``src`` (emri_small*, which has no functional groups) adding shared pixel
    measures and orientation and per-frame positions: frame f lies at slice ``order[f]``.
    Pixel data (compressed or not) is kept byte for byte."""
    ds = pydicom.dcmread(src)
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [0.9, 1.1]  # between rows, between columns
    pm.SliceThickness = 1.2
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = Sequence([pm])
    shared.PlaneOrientationSequence = Sequence([po])
    pvt = Dataset()
    pvt.RescaleSlope = slope
    pvt.RescaleIntercept = 0
    pvt.RescaleType = "US"
    shared.PixelValueTransformationSequence = Sequence([pvt])
    if rwv is not None:
        m = Dataset()
        m.RealWorldValueSlope, m.RealWorldValueIntercept = rwv
        m.RealWorldValueFirstValueMapped, m.RealWorldValueLastValueMapped = 0, 4095
        shared.RealWorldValueMappingSequence = Sequence([m])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for f in range(int(ds.NumberOfFrames)):
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [-10.0, 20.0, 5.0 + 1.2 * float(order[f])]
        item.PlanePositionSequence = Sequence([pp])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.save_as(dst, enforce_file_format=True)
    return ds


ENHANCED = ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm",
            "emri_small_jpeg_ls_lossless.dcm", "emri_small_big_endian.dcm"]


@pytest.mark.parametrize("name", ENHANCED)
def test_enhanced_multiframe_sorted_by_position(tmp_path, name):
    src = _local_testdata(name)
    reference = pydicom.dcmread(_local_testdata("emri_small.dcm")).pixel_array  # (f, r, c)
    order = np.array([3, 0, 9, 1, 8, 2, 7, 4, 6, 5])  # frame f -> slice order[f]
    _add_enhanced_geometry(src, tmp_path / "e.dcm", order)
    v = read_volume(tmp_path / "e.dcm")
    assert v.shape == (64, 64, 10)
    for f, k in enumerate(order):
        # RAS: columns run to -x (L->R flip) and rows to -y, so both in-plane axes flip
        np.testing.assert_array_equal(v.data[::-1, ::-1, k], reference[f].T.astype(np.float32))
    np.testing.assert_allclose(v.spacing, (1.1, 0.9, 1.2))
    corner = v.affine @ np.array([63, 63, 0, 1.0])  # the first stored pixel of slice 0
    np.testing.assert_allclose(corner[:3], [10.0, -20.0, 5.0], atol=1e-9)
    # a folder holding only that file reads the same
    (tmp_path / "series").mkdir()
    shutil.copy(tmp_path / "e.dcm", tmp_path / "series" / "e.dcm")
    np.testing.assert_array_equal(read_volume(tmp_path / "series").data, v.data)


def test_enhanced_value_mappings(tmp_path):
    src = _local_testdata("emri_small.dcm")
    raw = pydicom.dcmread(src).pixel_array.astype(np.float64)
    order = np.arange(10)
    _add_enhanced_geometry(src, tmp_path / "r.dcm", order, slope=2.0)
    v = read_volume(tmp_path / "r.dcm")
    np.testing.assert_array_equal(v.data[::-1, ::-1, 0], (raw[0] * 2.0).T.astype(np.float32))
    # real-world value mapping wins over the modality rescale
    _add_enhanced_geometry(src, tmp_path / "w.dcm", order, slope=2.0, rwv=(0.5, 3.0))
    w = read_volume(tmp_path / "w.dcm")
    np.testing.assert_array_equal(w.data[::-1, ::-1, 0], (raw[0] * 0.5 + 3.0).T.astype(np.float32))


def test_enhanced_4d_is_refused(tmp_path):
    order = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    _add_enhanced_geometry(_local_testdata("emri_small.dcm"), tmp_path / "d.dcm", order)
    with pytest.raises(ReaderError, match="10 images at only 5 distinct slice positions"):
        read_volume(tmp_path / "d.dcm")


# ---------------------------------------------------------------------------------------------
# classic single-frame series written here


@pytest.fixture
def truth():
    return np.round(smooth_volume((12, 10, 9))), affine_ras((1.5, 1.25, 4.0), (-20.0, 15.0, 40.0))


def test_classic_series_sorted_by_position_not_names(tmp_path, truth):
    data, aff = truth
    write_dicom_series(tmp_path / "s", data, aff, slope=0.5, intercept=-10.0)
    v = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(v.data, data.astype(np.float32))
    np.testing.assert_allclose(v.affine, aff, atol=1e-6)


def test_classic_series_compressed(tmp_path, truth):
    data, aff = truth
    write_dicom_series(tmp_path / "s", data, aff, transfer_syntax=RLELossless)
    assert pydicom.dcmread(next((tmp_path / "s").iterdir())).file_meta.TransferSyntaxUID == \
        RLELossless
    v = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(v.data, data.astype(np.float32))


def test_classic_oblique_series(tmp_path):
    data = np.round(smooth_volume((8, 7, 6)))
    t = np.deg2rad(20.0)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([2.0, 2.0, 3.0])
    aff[:3, 3] = [1.0, 2.0, 3.0]
    write_dicom_series(tmp_path / "o", data, aff)
    v = read_volume(tmp_path / "o")
    np.testing.assert_array_equal(v.data, data)
    np.testing.assert_allclose(v.affine, aff, atol=1e-5)


def test_missing_slice(tmp_path, truth):
    data, aff = truth
    files = write_dicom_series(tmp_path / "s", data, aff, shuffle_seed=None)
    files[4].unlink()
    with pytest.raises(ReaderError, match=r"missing slices: 1 slice\(s\) missing"):
        read_volume(tmp_path / "s")


def test_uneven_spacing(tmp_path, truth):
    data, aff = truth
    files = write_dicom_series(tmp_path / "s", data, aff, shuffle_seed=None)
    ds = pydicom.dcmread(files[3])
    ipp = [float(x) for x in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 1.0]
    ds.save_as(files[3])
    with pytest.raises(ReaderError, match="uneven slice spacing"):
        read_volume(tmp_path / "s")


def test_mixed_orientations(tmp_path, truth):
    data, aff = truth
    files = write_dicom_series(tmp_path / "s", data, aff, shuffle_seed=None)
    ds = pydicom.dcmread(files[2])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(files[2])
    with pytest.raises(ReaderError, match="mixed orientations"):
        read_volume(tmp_path / "s")


def test_several_series_in_one_folder(tmp_path, truth):
    data, aff = truth
    write_dicom_series(tmp_path / "s", data, aff, patient_name="Mustermann^Erika")
    for p in write_dicom_series(tmp_path / "t", data[:, :, :3], aff):
        shutil.move(p, tmp_path / "s" / f"other_{p.name}")
    with pytest.raises(ReaderError, match=r"2 DICOM series in one folder \(files per series: "
                                          r"\[9, 3\]") as e:
        read_volume(tmp_path / "s")
    assert "Mustermann" not in str(e.value)


def test_4d_classic_series(tmp_path, truth):
    data, aff = truth
    write_dicom_series(tmp_path / "s", data, aff, series_uid="1.2.3.4")
    for p in write_dicom_series(tmp_path / "t", data, aff, series_uid="1.2.3.4"):
        shutil.move(p, tmp_path / "s" / f"echo2_{p.name}")
    with pytest.raises(ReaderError, match="18 images at only 9 distinct slice positions"):
        read_volume(tmp_path / "s")


def test_unreadable_and_truncated_files_in_series(tmp_path, truth):
    data, aff = truth
    files = write_dicom_series(tmp_path / "s", data, aff)
    (tmp_path / "s" / "notes.txt").write_text("not dicom")
    with pytest.raises(ReaderError, match="notes.txt: not a DICOM file"):
        read_volume(tmp_path / "s")
    (tmp_path / "s" / "notes.txt").unlink()
    blob = files[0].read_bytes()
    files[0].write_bytes(blob[: len(blob) - 50])
    with pytest.raises(ReaderError, match=f"{files[0].name}: (cannot decode pixel data|truncated)"):
        read_volume(tmp_path / "s")


def test_empty_folder(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(ReaderError, match="contains no files"):
        read_volume(tmp_path / "e")


def test_pydicom_messages_quoting_header_values_are_withheld(tmp_path, truth, caplog,
                                                            monkeypatch):
    """pydicom warns (and logs) with the offending value when a header value is invalid;
    such messages must not reach our logs."""
    import logging

    from pydicom.misc import warn_and_log

    from pipelines.ingest.readers import dicom

    caplog.set_level(logging.DEBUG)
    data, aff = truth
    write_dicom_series(tmp_path / "s", data, aff)
    real = dicom._read_dicom

    def noisy(p, labels, *args, **kwargs):
        warn_and_log("Invalid value for VR PN: 'Geheim^Person'")
        return real(p, labels, *args, **kwargs)

    monkeypatch.setattr(dicom, "_read_dicom", noisy)
    v = read_volume(tmp_path / "s")
    assert v.shape == data.shape
    assert "Geheim" not in caplog.text
    assert "pydicom warning(s) withheld" in caplog.text
    # outside a read, pydicom's logging is untouched
    assert not logging.getLogger("pydicom").filters
