"""Guarded inputs (issue 13, item 3): what a header claims is checked against what its file
holds and against ``max_voxels`` before anything of the claimed size is allocated
(:mod:`pipelines.ingest.readers.guard`).

The generic cases (every reader: a header claiming more than its file holds, an image above
the ceiling) are in the reader contract (``test_reader_contract.py``); here are the hostile
files of the issue, the format-specific claims (gzip streams, NumberOfFrames, compressed
transfer syntaxes, whose decoders allocate, abort or decode wrongly), the proof that no valid
test file of nibabel, pydicom or pydicom-data is refused, and the stage and settings.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from ingest_fixtures import (
    affine_ras,
    smooth_volume,
    write_dicom_series,
    write_enhanced_dicom,
    write_lying_nifti,
    write_manifest,
    write_nifti,
)

from pipelines.errors import ParticipantError
from pipelines.ingest import IngestConfig, ingest_participant
from pipelines.ingest.readers import ReaderError, nifti, read_volume
from schemas.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[2]
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
#: the claim of the issue's 1,376-byte file: 4.5 GB of int16
ISSUE_SHAPE = (1500, 1500, 1000)
#: a claim under the default ceiling that the same file cannot hold either: 96 MB of int16
SHORT_SHAPE = (400, 400, 300)

#: Reads each file given on the command line in a fresh interpreter whose address space is
#: capped at 2 GiB (so the old behaviour, allocating the claim, fails at once instead of
#: taking gigabytes from the machine) and prints, per file, the message, the seconds and the
#: peak RSS of the process so far (VmHWM).
_ISOLATED = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from pipelines.ingest.readers import read_volume
out = []
for path in sys.argv[1:]:
    t0 = time.perf_counter()
    try:
        read_volume(path, integers=True, sha256=True)
        message = "read"
    except BaseException as e:
        message = f"{type(e).__name__}: {e}"
    # VmHWM, not ru_maxrss: the latter keeps the peak of the parent (pytest) across exec
    with open("/proc/self/status") as fh:
        hwm = next(int(x.split()[1]) for x in fh if x.startswith("VmHWM:"))
    out.append({"message": message, "seconds": time.perf_counter() - t0,
                "peak_rss_mib": hwm / 1024})
print(json.dumps(out))
"""


def _read_isolated(*paths: Path) -> list[dict]:
    res = subprocess.run([sys.executable, "-c", _ISOLATED, *map(str, paths)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, f"reader process died ({res.returncode}): {res.stderr[-2000:]}"
    return json.loads(res.stdout.splitlines()[-1])


def _traced_peak(fn) -> tuple[BaseException | None, int]:
    """(the exception ``fn()`` raised or None, peak bytes Python and NumPy allocated)."""
    tracemalloc.start()
    try:
        fn()
        error = None
    except Exception as e:  # noqa: BLE001 - returned to the test, which checks its type
        error = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak


def _local_testdata(name: str) -> Path:
    p = PYDICOM_FILES / name
    if not p.is_file():
        pytest.skip(f"pydicom does not ship {name}")
    return p


# ---------------------------------------------------------------------------------------------
# NIfTI


def test_issue_file_fails_fast_without_allocating_its_claim(tmp_path):
    """The 1,376-byte file claiming 1500 x 1500 x 1000 int16 voxels (4.5 GB): before, 4.4 GiB
    of RSS for 6-12 s (31 s through ingest on a loaded box), and a bare MemoryError for larger
    claims; now refused from its header, by the ceiling, saying what it claims and holds."""
    nii = write_lying_nifti(tmp_path / "liar.nii", ISSUE_SHAPE)
    gz = write_lying_nifti(tmp_path / "liar.nii.gz", ISSUE_SHAPE)
    huge = write_lying_nifti(tmp_path / "huge.nii", (32767, 32767, 32767))
    assert nii.stat().st_size == 1376
    results = _read_isolated(nii, gz, huge)
    claim = ("its header claims 1500x1500x1000 int16 voxels (2,250,000,000 voxels, "
             "4,500,000,000 bytes = 4.2 GiB from byte 352), more than the ceiling of "
             "500,000,000 voxels per image (max_voxels)")
    assert results[0]["message"] == f"ReaderError: {nii}: {claim}; the file holds 1,376 bytes"
    assert results[1]["message"] == (
        f"ReaderError: {gz}: {claim}; the file holds {gz.stat().st_size} bytes, gzip-compressed")
    assert results[2]["message"].startswith(
        f"ReaderError: {huge}: its header claims 32767x32767x32767 int16 voxels "
        "(35,181,150,961,663 voxels, 70,362,301,923,326 bytes = 64.0 TiB from byte 352)")
    for r in results:
        assert r["seconds"] < 5 and r["peak_rss_mib"] < 1024, r


@pytest.mark.parametrize("route", ["one-call inflate", "nib.load"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_header_claiming_more_than_the_file_holds(tmp_path, monkeypatch, suffix, route):
    """Under the ceiling (96 MB claimed, 1,024 bytes of data): refused by the bytes check on
    either route, before nibabel allocates the claim."""
    if route == "nib.load":
        monkeypatch.setattr(nifti, "_nifti_from_bytes", lambda *args: None)
    path = write_lying_nifti(tmp_path / f"short{suffix}", SHORT_SHAPE)
    error, peak = _traced_peak(lambda: read_volume(path, sha256=True))
    assert isinstance(error, ReaderError)
    held = ("the file holds 1,376 bytes" if suffix == ".nii" else
            f"the file holds 1,376 bytes inflated ({path.stat().st_size} bytes, gzip-compressed)")
    assert str(error) == (
        f"{path}: truncated or lying header: it claims 400x400x300 int16 voxels (48,000,000 "
        f"voxels, 96,000,000 bytes = 91.6 MiB from byte 352), but {held}")
    assert peak < 4 << 20


def test_gzip_bomb_above_the_ceiling_is_not_inflated(tmp_path):
    """An honest header, 3.9 MiB of zeros in 18 KiB of gzip: refused from its header alone when
    it claims more than max_voxels, with only the header inflated."""
    path = tmp_path / "bomb.nii.gz"
    write_nifti(path, np.zeros((160, 160, 160), np.uint8), affine_ras())
    assert path.stat().st_size < 40_000
    error, peak = _traced_peak(lambda: read_volume(path, max_voxels=1_000_000))
    assert isinstance(error, ReaderError)
    assert str(error) == (
        f"{path}: its header claims 160x160x160 uint8 voxels (4,096,000 voxels, 4,096,000 "
        "bytes = 3.9 MiB from byte 352), more than the ceiling of 1,000,000 voxels per image "
        f"(max_voxels); the file holds {path.stat().st_size:,} bytes, gzip-compressed")
    assert peak < 1 << 20
    assert read_volume(path, max_voxels=160 ** 3).shape == (160, 160, 160)


@pytest.mark.parametrize("route", ["one-call inflate", "nib.load"])
def test_gzip_sizes_are_counted_never_taken_from_the_trailer(tmp_path, monkeypatch, route):
    """Several gzip members (the trailer's ISIZE then gives the last member's size only: 7
    bytes here), zero padding after them, and bytes past the image in the stream: the
    inflated stream is counted, so every such valid file reads exactly."""
    if route == "nib.load":
        monkeypatch.setattr(nifti, "_nifti_from_bytes", lambda *args: None)
    data = np.round(smooth_volume((9, 8, 7)))
    write_nifti(tmp_path / "one.nii.gz", data, affine_ras())
    raw = gzip.decompress((tmp_path / "one.nii.gz").read_bytes()) + b"trailing bytes"
    cuts = [0, 200, 1000, len(raw) - 7, len(raw)]
    members = b"".join(gzip.compress(raw[a:b]) for a, b in zip(cuts, cuts[1:], strict=False))
    (tmp_path / "members.nii.gz").write_bytes(members + b"\0" * 12)
    assert int.from_bytes(members[-4:], "little") == 7
    v = read_volume(tmp_path / "members.nii.gz")
    np.testing.assert_array_equal(v.data, data)


def test_truncated_gzip_on_the_nib_load_route_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(nifti, "_nifti_from_bytes", lambda *args: None)
    write_nifti(tmp_path / "full.nii.gz", smooth_volume((20, 20, 20)), affine_ras())
    blob = (tmp_path / "full.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ReaderError, match=re.escape(
            f"{tmp_path / 'cut.nii.gz'}: truncated or corrupt image data: the header claims "
            "20x20x20 float32 voxels (8,000 voxels, 32,000 bytes from byte 352), but the gzip "
            "stream breaks off after ")):
        read_volume(tmp_path / "cut.nii.gz")


def test_no_nifti_of_nibabel_is_refused_by_the_guard():
    """Every NIfTI file nibabel ships whose data nibabel reads passes the claim checks."""
    files = sorted(f for f in (Path(nib.__file__).parent / "tests" / "data").rglob("*")
                   if f.name.endswith((".nii", ".nii.gz")))
    if not files:
        pytest.skip("nibabel's wheel ships no test data")
    for f in files:
        try:
            read_volume(f)
        except ReaderError as e:
            assert "claims" not in str(e), str(e)


# ---------------------------------------------------------------------------------------------
# DICOM


def _rewrite(path: Path, **values) -> Path:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def test_enhanced_number_of_frames_is_checked_before_one_slice_per_frame(tmp_path):
    """NumberOfFrames 100,000 over 1,536 bytes of pixels, every frame placed by the shared
    functional groups: before, one slice object per claimed frame until the slice sort gave up
    (for 1,000,000 frames: 82 s and 1.7 GB); now refused from the header."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    f = write_enhanced_dicom(tmp_path / "e.dcm", np.round(smooth_volume((16, 12, 4))),
                             affine_ras())
    ds = pydicom.dcmread(f)
    pos = Dataset()
    pos.ImagePositionPatient = ["0", "0", "0"]
    ds.SharedFunctionalGroupsSequence[0].PlanePositionSequence = Sequence([pos])
    del ds.PerFrameFunctionalGroupsSequence
    ds.NumberOfFrames = 100_000
    ds.save_as(f)
    with pytest.raises(ReaderError, match=re.escape(
            f"{f}: truncated or lying header: it claims 100,000 frames (NumberOfFrames) of "
            "12x16 pixels (Rows x Columns) of 16 bits (19,200,000 voxels, 38,400,000 bytes = "
            "36.6 MiB), but its pixel data element holds 1,536 bytes")):
        read_volume(f)


@pytest.mark.parametrize("frames", [0, None])
def test_enhanced_without_frames_is_refused(tmp_path, frames):
    """A per-frame functional group sequence but NumberOfFrames 0 or absent: was an IndexError
    (0) or AttributeError (absent) out of the reader."""
    f = write_enhanced_dicom(tmp_path / "e.dcm", np.round(smooth_volume((16, 12, 4))),
                             affine_ras())
    ds = pydicom.dcmread(f)
    if frames is None:
        del ds.NumberOfFrames
    else:
        ds.NumberOfFrames = frames
    ds.save_as(f)
    with pytest.raises(ReaderError, match=re.escape(
            f"{f}: multi-frame file without a NumberOfFrames of 1 or more")):
        read_volume(f)


def test_jpeg_ls_claiming_a_larger_frame_is_refused_not_aborted(tmp_path):
    """Rows x Columns 128 x 128 over a 64 x 64 JPEG-LS codestream: GDCM, pydicom's first
    JPEG-LS decoder here, aborted the whole process (``terminate called after throwing an
    instance of 'gdcm::Exception'``): a Dask worker lost, not one participant failed.  Read in
    a separate process so that the old behaviour fails this test instead of killing pytest."""
    f = _rewrite(_copy(_local_testdata("MR_small_jpeg_ls_lossless.dcm"), tmp_path), Rows=128,
                 Columns=128)
    (result,) = _read_isolated(f)
    assert result["message"] == (
        f"ReaderError: {f}: header does not match its pixel data: it claims 128x128 pixels "
        "(Rows x Columns) of 16 bits (16,384 voxels, 32,768 bytes), but the JPEG-LS "
        "codestream of its first frame is 64x64 pixels")


@pytest.mark.parametrize("name,kind,size", [
    ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS", 32),  # larger: see the test above
    ("MR_small_jp2klossless.dcm", "JPEG 2000", 32),
    ("MR_small_jp2klossless.dcm", "JPEG 2000", 4000),
])
def test_compressed_frame_size_is_checked_against_its_codestream(tmp_path, name, kind, size):
    """A smaller claim was decoded silently wrong (GDCM gave JPEG-LS as 32 x 32 pixels of a
    64 x 64 image); a larger one made pydicom allocate the claimed frame before failing."""
    f = _rewrite(_copy(_local_testdata(name), tmp_path), Rows=size, Columns=size)
    with pytest.raises(ReaderError, match=re.escape(
            f"{f}: header does not match its pixel data: it claims {size}x{size} pixels (Rows x "
            f"Columns) of 16 bits ({size * size:,} voxels, ")) as e:
        read_volume(f)
    assert str(e.value).endswith(f"the {kind} codestream of its first frame is 64x64 pixels")


def test_rle_claim_beyond_what_its_runs_can_decode(tmp_path):
    """RLE (PackBits) decodes to at most 64 bytes per byte: a 12000 x 12000 claim (144
    million voxels, under the ceiling) over about 330 bytes made pydicom allocate its 288 MB
    first."""
    data = np.round(smooth_volume((16, 12, 4)))
    files = write_dicom_series(tmp_path / "s", data, affine_ras(),
                               transfer_syntax=pydicom.uid.RLELossless)
    first = sorted(files)[0]
    _rewrite(first, Rows=12000, Columns=12000)
    error, peak = _traced_peak(lambda: read_volume(tmp_path / "s"))
    assert isinstance(error, ReaderError)
    assert re.fullmatch(
        re.escape(f"{first}: truncated or lying header: it claims 12000x12000 pixels (Rows x "
                  "Columns) of 16 bits (144,000,000 voxels, 288,000,000 bytes = 274.7 MiB), "
                  "but its RLE data hold ") + r"\d+ bytes, which decode to [\d,]+ bytes at most",
        str(error)), str(error)
    assert peak < 4 << 20


def test_encapsulated_frames_need_a_fragment_each(tmp_path):
    f = _rewrite(_copy(_local_testdata("MR_small_RLE.dcm"), tmp_path), NumberOfFrames=1000)
    with pytest.raises(ReaderError, match=re.escape(
            f"{f}: truncated or lying header: it claims 1,000 frames (NumberOfFrames) of 64x64 "
            "pixels (Rows x Columns) of 16 bits (4,096,000 voxels, 8,192,000 bytes = 7.8 MiB), "
            "but its encapsulated pixel data hold 1 fragment(s), and every frame has one at "
            "least")):
        read_volume(f)


@pytest.mark.parametrize("route", ["fast parser", "pydicom"])
def test_series_ceiling_counts_every_file(tmp_path, monkeypatch, route):
    from pipelines.ingest.readers import dicom

    if route == "pydicom":
        monkeypatch.setattr(dicom, "_fast_header", lambda buf: None)
    data = np.round(smooth_volume((16, 12, 10)))
    write_dicom_series(tmp_path / "s", data, affine_ras())
    with pytest.raises(ReaderError, match=re.escape(
            f"{tmp_path / 's'}: its files' headers claim 10 files of 12x16 pixels (Rows x Columns) "
            "(1,920 voxels, 3,840 bytes), more than the ceiling of 1,919 voxels per image "
            "(max_voxels); the files hold 3,840 bytes of pixel data")):
        read_volume(tmp_path / "s", max_voxels=1919)
    np.testing.assert_array_equal(read_volume(tmp_path / "s", max_voxels=1920).data, data)


def _copy(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / src.name).write_bytes(src.read_bytes())
    return folder / src.name


def _dicom_test_files() -> list[Path]:
    dirs = [PYDICOM_FILES]
    try:
        import data_store  # pydicom-data, when installed (never downloaded here)

        dirs.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return [f for d in dirs for f in sorted(d.rglob("*")) if f.is_file()]


def test_guard_refuses_only_what_pydicom_cannot_decode():
    """Every pydicom and pydicom-data test file with pixel data: where the guard refuses the
    header's claim, pydicom cannot decode the pixels either (a refusal never costs a valid
    image); 2 of about 160 are refused (a truncated native file, a corrupt JPEG 2000)."""
    from pipelines.ingest.readers.guard import DEFAULT_MAX_VOXELS, check_dicom_pixels

    checked, refused = 0, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in _dicom_test_files():
            try:
                ds = pydicom.dcmread(f)
            except Exception:  # noqa: BLE001 - not DICOM, or not readable: not ours to check
                continue
            if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
                continue
            checked += 1
            try:
                check_dicom_pixels(ds, f, max_voxels=DEFAULT_MAX_VOXELS)
            except ReaderError as e:
                refused.append(f.name)
                with pytest.raises(Exception):  # noqa: B017, PT011 - any decoding failure
                    _ = ds.pixel_array
                assert str(e).startswith(f"{f}: ")
    assert checked > 100 and len(refused) <= 5, (checked, refused)


# ---------------------------------------------------------------------------------------------
# the stage and its setting


def _participant(root: Path, pid: str, water: Path):
    write_nifti(root / f"{pid}_fat.nii.gz", smooth_volume((8, 8, 8)), affine_ras())
    write_manifest(root / f"{pid}.csv", [
        dict(participant_id=pid, site="S", station=0, channel="water", path=water.name),
        dict(participant_id=pid, site="S", station=0, channel="fat", path=f"{pid}_fat.nii.gz"),
    ])
    return load_manifest(root / f"{pid}.csv").participants[0]


def test_stage_names_participant_file_claim_and_holding(tmp_path):
    liar = write_lying_nifti(tmp_path / "liar.nii.gz", SHORT_SHAPE)
    with pytest.raises(ParticipantError) as e:
        ingest_participant(_participant(tmp_path, "P0042", liar), store=tmp_path / "s.zarr")
    assert e.value.error_type == "ReaderError"
    assert str(e.value).startswith(
        f"participant P0042: ingest: station 0 water: {liar}: truncated or lying header: it "
        "claims 400x400x300 int16 voxels (48,000,000 voxels, 96,000,000 bytes = 91.6 MiB from "
        "byte 352), but the file holds 1,376 bytes inflated")


def test_stage_applies_the_configured_ceiling(tmp_path):
    water = write_nifti(tmp_path / "w.nii.gz", smooth_volume((8, 8, 8)), affine_ras())
    item = _participant(tmp_path, "P0043", water)
    with pytest.raises(ParticipantError, match=re.escape(
            f"participant P0043: ingest: station 0 water: {water}: its header claims 8x8x8 "
            "float32 voxels (512 voxels, 2,048 bytes from byte 352), more than the ceiling of "
            "511 voxels per image (max_voxels)")):
        ingest_participant(item, store=tmp_path / "s.zarr", config=IngestConfig(max_voxels=511))
    res = ingest_participant(item, store=tmp_path / "s.zarr", config=IngestConfig(max_voxels=512))
    assert res.written and res.shape == (8, 8, 8)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "500"])
def test_max_voxels_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=r"max_voxels .* must be an integer >= 1"):
        IngestConfig(max_voxels=bad)


def test_max_voxels_from_the_run_config_and_not_in_the_ledger_key(tmp_path):
    from jobs.runconfig import ConfigError, config_hash, load_run_config
    from pipelines.ingest.readers import DEFAULT_MAX_VOXELS

    assert IngestConfig().max_voxels == DEFAULT_MAX_VOXELS == 500_000_000
    f = tmp_path / "run.yaml"
    f.write_text("ingest:\n  max_voxels: 1000000000\n")
    cfg = load_run_config(f).stage("ingest")
    assert cfg.max_voxels == 1_000_000_000
    # raising the ceiling changes no stored array: completed participants stay done
    assert config_hash(cfg) == config_hash(IngestConfig())
    f.write_text("ingest:\n  max_voxels: 0\n")
    with pytest.raises(ConfigError, match="max_voxels"):
        load_run_config(f)
