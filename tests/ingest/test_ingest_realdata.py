"""Optional checks on real third-party files in ``shared/realdata`` (beside the clone in CI,
``/work/shared/realdata`` on the dev box).  Skipped when the folder is absent."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ingest_fixtures import write_manifest

from pipelines import store as S
from pipelines.errors import ParticipantError
from pipelines.ingest import IngestConfig, ingest_participant
from pipelines.ingest.readers import ReaderError, read_volume
from schemas.manifest import load_manifest


def _realdata() -> Path:
    here = Path(__file__).resolve()
    for cand in (here.parents[2].parent / "shared" / "realdata", Path("/work/shared/realdata")):
        if cand.is_dir():
            return cand
    pytest.skip("shared/realdata is not present (optional real-file checks)")


def test_siemens_xa10_enhanced_matches_dcm2niix():
    root = _realdata() / "dcm_qa_enh"
    src = root / "In" / "Siemens" / "XA10" / "6_1.dcm"
    ref_path = root / "Ref" / "Siemens_REST1_w_SMS_PF7-8_6.nii"
    if not src.is_file() or not ref_path.is_file():
        pytest.skip("dcm_qa_enh Siemens XA10 files missing")
    v = read_volume(src)
    ref = nib.load(ref_path)
    first = nib.Nifti1Image(np.asanyarray(ref.dataobj)[..., 0], ref.affine, ref.header)
    can = nib.as_closest_canonical(first)
    np.testing.assert_array_equal(v.data, np.asanyarray(can.dataobj).astype(np.float32))
    # dcm2niix stores the affine in float32; agree to 1e-3 mm
    np.testing.assert_allclose(v.affine, can.affine, atol=1e-3)


def test_philips_mixed_frames_refused_clearly():
    src = _realdata() / "dcm_qa_enh" / "In" / "Philips" / "IM_0027_fMAP.dcm"
    if not src.is_file():
        pytest.skip("dcm_qa_enh Philips file missing")
    with pytest.raises(ReaderError, match="64 images at only 32 distinct slice positions"):
        read_volume(src)


def test_totalsegmentator_labels_through_total_mr_preset(tmp_path):
    root = _realdata() / "totalsegmentator"
    img, seg = root / "example_mr_sm.nii.gz", root / "example_seg_mr.nii.gz"
    if not img.is_file() or not seg.is_file():
        pytest.skip("TotalSegmentator example files missing")
    rows = [dict(participant_id="TS1", site="S", station=0, channel=c, path=str(img))
            for c in ("water", "fat")]
    rows.append(dict(participant_id="TS1", site="S", station=0, channel="labels", path=str(seg),
                     label_map="total_mr"))
    m = load_manifest(write_manifest(tmp_path / "m.csv", rows))
    # this (non-Dixon) reconstruction dips below zero: refused by default, named clearly
    with pytest.raises(ParticipantError, match=r"example_mr_sm.nii.gz: \d+ negative voxel"):
        ingest_participant(m.participants[0], store=tmp_path / "s.zarr")
    ingest_participant(m.participants[0], store=tmp_path / "s.zarr",
                       config=IngestConfig(negative_tolerance=100.0))
    stored = S.read_array(tmp_path / "s.zarr", "TS1", "labels")
    raw = np.asanyarray(nib.as_closest_canonical(nib.load(seg)).dataobj)
    expected = np.select([raw == 46, raw == 47, raw == 48, raw == 49], [1, 2, 3, 4], 0)
    assert (expected > 0).any()
    np.testing.assert_array_equal(stored, expected)
    water = S.read_array(tmp_path / "s.zarr", "TS1", "water")
    np.testing.assert_array_equal(
        water, np.asanyarray(nib.as_closest_canonical(nib.load(img)).dataobj).astype(np.float32))
