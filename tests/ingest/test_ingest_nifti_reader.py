"""NIfTI reader on nibabel's own test files (big-endian, qform/sform variants, 4-D, NIfTI-2)
and on hand-made edge cases."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ingest_fixtures import affine_ras, smooth_volume, write_nifti

from pipelines.ingest.readers import ReaderError, Volume, read_volume

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


def _nib_file(name: str) -> Path:
    p = NIB_DATA / name
    if not p.is_file():
        pytest.skip(f"nibabel's wheel does not ship tests/data/{name}")
    return p


def _world(affine, shape, idx):
    return (affine @ np.array([*idx, 1.0]))[:3]


def _assert_same_image(vol: Volume, img) -> None:
    """Every voxel of ``vol`` holds the value the original file has at the same world point."""
    data = np.asanyarray(img.dataobj).astype(np.float32)
    assert vol.data.dtype == np.float32
    assert sorted(vol.data.shape) == sorted(data.shape[:3])
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    inv = np.linalg.inv(img.affine)
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = tuple(int(rng.integers(n)) for n in vol.data.shape)
        src = np.round((inv @ np.array([*_world(vol.affine, vol.shape, idx), 1.0]))[:3]).astype(int)
        assert vol.data[idx] == data[tuple(src)]
    can = nib.as_closest_canonical(img)
    np.testing.assert_array_equal(vol.data, np.asanyarray(can.dataobj).astype(np.float32))
    np.testing.assert_allclose(vol.affine, can.affine, atol=1e-9)


@pytest.mark.parametrize("name", ["anatomical.nii", "reoriented_anat_moved.nii"])
def test_big_endian_files(name):
    p = _nib_file(name)
    img = nib.load(p)
    assert img.header.endianness == ">"
    _assert_same_image(read_volume(p), img)


def test_sform_only_file():
    p = _nib_file("standard.nii.gz")
    img = nib.load(p)
    assert int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) > 0
    _assert_same_image(read_volume(p), img)


def test_qform_only_and_sform_wins(tmp_path):
    src = nib.load(_nib_file("anatomical.nii"))
    data = np.asanyarray(src.dataobj)
    q_aff = src.affine.copy()
    s_aff = q_aff.copy()
    s_aff[:3, 3] += [5.0, -7.0, 11.0]
    # qform only: the qform is used
    img = nib.Nifti1Image(data, None)
    img.set_qform(q_aff, code=1)
    img.set_sform(np.eye(4), code=0)
    nib.save(img, tmp_path / "q.nii")
    v = read_volume(tmp_path / "q.nii")
    np.testing.assert_allclose(v.affine, nib.as_closest_canonical(nib.load(src.get_filename())).affine,
                               atol=1e-4)
    # both: the sform wins (nibabel's rule)
    img = nib.Nifti1Image(data, None)
    img.set_qform(q_aff, code=1)
    img.set_sform(s_aff, code=2)
    nib.save(img, tmp_path / "qs.nii")
    v2 = read_volume(tmp_path / "qs.nii")
    np.testing.assert_allclose(v2.affine[:3, 3] - v.affine[:3, 3], [5.0, -7.0, 11.0], atol=1e-4)
    # neither: no position in space
    img = nib.Nifti1Image(data, None)
    img.set_qform(q_aff, code=0)
    img.set_sform(s_aff, code=0)
    nib.save(img, tmp_path / "none.nii")
    with pytest.raises(ReaderError, match="none.nii.*qform_code and sform_code are both 0"):
        read_volume(tmp_path / "none.nii")


@pytest.mark.parametrize("name", ["example4d.nii.gz", "example_nifti2.nii.gz", "functional.nii"])
def test_4d_files_are_refused(name):
    p = _nib_file(name)
    with pytest.raises(ReaderError, match=rf"{name}: 4-D image with \d+ volumes"):
        read_volume(p)


def test_nifti2_volume(tmp_path):
    src = nib.load(_nib_file("example_nifti2.nii.gz"))
    assert isinstance(src, nib.Nifti2Image)
    vol0 = np.asanyarray(src.dataobj)[..., 0]
    img = nib.Nifti2Image(vol0, src.affine, src.header)
    nib.save(img, tmp_path / "one.nii.gz")
    loaded = nib.load(tmp_path / "one.nii.gz")
    assert isinstance(loaded, nib.Nifti2Image)
    _assert_same_image(read_volume(tmp_path / "one.nii.gz"), loaded)


def test_scaling_applied(tmp_path):
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(raw, affine_ras())
    img.header.set_slope_inter(2.5, 10.0)
    nib.save(img, tmp_path / "s.nii.gz")
    v = read_volume(tmp_path / "s.nii.gz")
    np.testing.assert_array_equal(v.data, (raw * 2.5 + 10.0).astype(np.float32))


def test_lps_stored_file_is_reoriented_with_world_coordinates_kept(tmp_path):
    data = smooth_volume((6, 7, 8))
    aff = affine_ras((1.5, 2.0, 3.0), (10.0, -20.0, 30.0))
    write_nifti(tmp_path / "lps.nii.gz", data, aff, axcodes="LPS")
    assert nib.aff2axcodes(nib.load(tmp_path / "lps.nii.gz").affine) == ("L", "P", "S")
    v = read_volume(tmp_path / "lps.nii.gz")
    np.testing.assert_array_equal(v.data, data)
    np.testing.assert_allclose(v.affine, aff, atol=1e-5)


def test_oblique_affine_kept_exactly(tmp_path):
    theta = np.deg2rad(12.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0],
                    [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([2.0, 2.0, 4.0])
    aff[:3, 3] = [3.0, 4.0, 5.0]
    data = smooth_volume((5, 6, 7))
    write_nifti(tmp_path / "obl.nii", data, aff, axcodes="LAS")
    v = read_volume(tmp_path / "obl.nii")
    np.testing.assert_array_equal(v.data, data)
    np.testing.assert_allclose(v.affine, aff, atol=1e-5)


def test_singleton_4th_axis_is_3d(tmp_path):
    data = smooth_volume((4, 5, 6))[..., None]
    nib.save(nib.Nifti1Image(data, affine_ras()), tmp_path / "x.nii")
    assert read_volume(tmp_path / "x.nii").shape == (4, 5, 6)


@pytest.mark.parametrize("shape,msg", [((4, 5), "2-D image"), ((2, 3, 4, 2, 2), "5-D image")])
def test_wrong_dimensionality(tmp_path, shape, msg):
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), affine_ras()), tmp_path / "bad.nii")
    with pytest.raises(ReaderError, match=f"bad.nii: {msg}"):
        read_volume(tmp_path / "bad.nii")


def test_truncated_gzip(tmp_path):
    write_nifti(tmp_path / "full.nii.gz", smooth_volume((20, 20, 20)), affine_ras())
    blob = (tmp_path / "full.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ReaderError, match="cut.nii.gz: truncated or corrupt image data"):
        read_volume(tmp_path / "cut.nii.gz")
    # a gzip stream that ends cleanly but holds too few bytes
    raw = gzip.decompress(blob)
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(raw[: len(raw) - 1000]))
    with pytest.raises(ReaderError, match="short.nii.gz: truncated"):
        read_volume(tmp_path / "short.nii.gz")


def test_gzip_crc_failure_is_refused(tmp_path):
    """A flipped bit that still inflates gives wrong voxels that only the gzip CRC at the
    end of the stream reveals; nibabel alone never reads that far."""
    write_nifti(tmp_path / "full.nii.gz", smooth_volume((20, 20, 20)), affine_ras())
    blob = (tmp_path / "full.nii.gz").read_bytes()
    for pos in range(300, len(blob) - 8, 1999):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        (tmp_path / "flip.nii.gz").write_bytes(bytes(bad))
        with pytest.raises(ReaderError, match="flip.nii.gz: truncated or corrupt"):
            read_volume(tmp_path / "flip.nii.gz")


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(ReaderError, match="nope.nii.gz: file not found"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ReaderError, match="notes.txt: not a NIfTI file"):
        read_volume(tmp_path / "notes.txt")
    (tmp_path / "junk.nii").write_bytes(b"\0" * 10)
    with pytest.raises(ReaderError, match="junk.nii: unreadable NIfTI header"):
        read_volume(tmp_path / "junk.nii")


def test_label_images_keep_integers(tmp_path):
    lab = np.zeros((4, 5, 6), np.uint16)
    lab[1, 2, 3] = 300
    nib.save(nib.Nifti1Image(lab, affine_ras()), tmp_path / "lab.nii.gz")
    v = read_volume(tmp_path / "lab.nii.gz", labels=True)
    assert v.data.dtype.kind == "i" and v.data[1, 2, 3] == 300
    nib.save(nib.Nifti1Image(lab.astype(np.float32) + 0.5, affine_ras()), tmp_path / "f.nii")
    with pytest.raises(ReaderError, match="non-integer"):
        read_volume(tmp_path / "f.nii", labels=True)
