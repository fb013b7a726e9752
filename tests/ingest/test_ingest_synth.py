"""Ingest on synthetic cohorts from pipelines.synth (NIfTI and DICOM): voxel values and world
coordinates round-trip, stitched stations equal the phantom's truth, and nothing
identifying from DICOM headers reaches the store or the logs."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from ingest_fixtures import write_manifest
from typer.testing import CliRunner

from pipelines import store as S
from pipelines.ingest import export_nifti
from schemas.manifest import load_manifest

synth = pytest.importorskip("pipelines.synth.cohort")
writers = pytest.importorskip("pipelines.synth.writers")


def ingest_cohort(manifest, store, **kw):
    """The ingest stage of the registry (what `myocohort ingest` runs): its outcomes."""
    from jobs.driver import run_stage

    return run_stage("ingest", store=store, manifest=manifest, **kw).outcomes


SHAPE = (24, 16, 48)
SPACING = (8.0, 8.0, 8.0)


def _config(fmt: str, **kw):
    return synth.SynthConfig(participants=2, seed=3, stations=3, format=fmt, shape=SHAPE,
                             spacing_mm=SPACING, sites=2, **kw)


@pytest.fixture(scope="module")
def nifti_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_nifti")
    cfg = _config("nifti")
    res = synth.build_cohort(cfg, out)
    store = out / "store.zarr"
    outcomes = ingest_cohort(load_manifest(res.manifest_with_labels), store)
    assert all(o.ok for o in outcomes), [o.failure for o in outcomes if not o.ok]
    return cfg, res, store


def test_nifti_cohort_round_trips_values_and_world_coordinates(nifti_cohort, tmp_path):
    cfg, res, store = nifti_cohort
    assert S.participant_ids(store) == sorted(res.participant_ids)
    for index, pid in enumerate(res.participant_ids):
        _, ph = synth.cohort_phantom(cfg, index)
        attrs = S.read_attrs(store, pid)
        np.testing.assert_allclose(np.array(attrs.affine), ph.affine, atol=1e-4)
        assert attrs.shape == ph.water.shape and attrs.stations == 3
        assert attrs.channels == ("water", "fat", "in_phase", "opposed_phase")
        for ch, vol in ph.channels().items():
            # the files hold int16-rounded magnitudes; identical overlaps blend back exactly
            expected = np.clip(np.round(vol), -32768, 32767).astype(np.float32)
            np.testing.assert_allclose(S.read_array(store, pid, ch), expected, rtol=1e-6,
                                       atol=1e-4)
        np.testing.assert_array_equal(S.read_array(store, pid, "labels"), ph.labels)
    # export: values and world coordinates match the phantom
    pid = res.participant_ids[0]
    _, ph = synth.cohort_phantom(cfg, 0)
    img = nib.load(export_nifti(store, pid, "labels", tmp_path / "labels.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), ph.labels)
    np.testing.assert_allclose(img.affine, ph.affine, atol=1e-4)


def test_noise_free_stations_stitch_to_the_phantom_truth(tmp_path):
    """Stations cut from the noise-free arrays, stored in mixed orientations, overlapping:
    the stitched volume equals the truth (float32 rounding) and labels equal it exactly."""
    cfg = _config("nifti")
    _, ph = synth.cohort_phantom(cfg, 0)
    ranges = writers.station_slices(SHAPE[2], 3, 0.2)
    assert any(b > c for (_, b), (c, _) in zip(ranges, ranges[1:], strict=False))  # overlaps
    rows = []
    for station, (k0, k1) in enumerate(ranges[::-1]):
        aff = ph.affine.copy()
        aff[:3, 3] = ph.affine[:3, :3] @ [0, 0, k0] + ph.affine[:3, 3]
        for ch, vol in (("water", ph.water_true), ("fat", ph.fat_true), ("labels", ph.labels)):
            p = tmp_path / f"s{station}_{ch}.nii.gz"
            writers.write_nifti(p, vol[:, :, k0:k1], aff, axcodes=("LAS", "RPI", "PSR")[station])
            rows.append(dict(participant_id="T1", site="S", station=station, channel=ch,
                             path=p.name))
    m = load_manifest(write_manifest(tmp_path / "m.csv", rows))
    outcomes = ingest_cohort(m, tmp_path / "s.zarr")
    assert outcomes[0].ok, outcomes[0].failure
    np.testing.assert_allclose(S.read_array(tmp_path / "s.zarr", "T1", "water"), ph.water_true,
                               rtol=3e-7, atol=1e-5)
    np.testing.assert_allclose(S.read_array(tmp_path / "s.zarr", "T1", "fat"), ph.fat_true,
                               rtol=3e-7, atol=1e-5)
    np.testing.assert_array_equal(S.read_array(tmp_path / "s.zarr", "T1", "labels"), ph.labels)
    np.testing.assert_allclose(np.array(S.read_attrs(tmp_path / "s.zarr", "T1").affine),
                               ph.affine, atol=1e-4)


def _identifying_values(folder: Path) -> set[str]:
    """PS3.15 basic-profile values the synth wrote into the DICOM headers (read back)."""
    values: set[str] = set()
    for f in sorted(folder.rglob("*.dcm"))[::25]:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName",
                   "AccessionNumber", "ReferringPhysicianName", "StudyInstanceUID",
                   "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
                   "SeriesDescription"):
            v = str(ds.get(kw, "") or "")
            if v:
                values.add(v)
                values.update(part for part in v.split("^") if len(part) >= 4)
    return values


def test_dicom_cohort_deidentified(tmp_path, caplog):
    from jobs.cli import app

    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    out = tmp_path / "cohort"
    r = runner.invoke(app, ["synth", "--out", str(out), "-n", "2", "--format", "dicom",
                            "--shape", ",".join(map(str, SHAPE)),
                            "--spacing", ",".join(map(str, SPACING)), "--stations", "3",
                            "--seed", "5"])
    assert r.exit_code == 0, r.output
    secrets = _identifying_values(out / "images")
    assert any(v.startswith("MRN") for v in secrets) and len(secrets) > 10
    store = tmp_path / "store.zarr"
    r = runner.invoke(app, ["-vv", "ingest", str(out / "manifest_with_labels.csv"),
                            "--store", str(store)])
    assert r.exit_code == 0, r.output
    ids = S.participant_ids(store)
    assert len(ids) == 2
    # values round-trip (the DICOM writer stores uint16 with a per-series rescale)
    cfg = synth.SynthConfig(participants=2, seed=5, stations=3, format="dicom", shape=SHAPE,
                            spacing_mm=SPACING)
    _, ph = synth.cohort_phantom(cfg, 0)
    water = S.read_array(store, ids[0], "water")
    scale = float(ph.water.max()) / 65000.0
    np.testing.assert_allclose(water, ph.water, atol=scale)
    np.testing.assert_allclose(np.array(S.read_attrs(store, ids[0]).affine), ph.affine, atol=1e-3)
    # nothing identifying anywhere: store files (arrays and attributes), logs, CLI output
    blobs = [p.read_bytes() for p in store.rglob("*") if p.is_file()]
    text = caplog.text + r.output
    for v in secrets:
        assert not any(v.encode() in b for b in blobs), f"{v!r} reached the store"
        assert v not in text, f"{v!r} reached the logs"
    attrs = S.read_attrs(store, ids[0])
    assert set(dict(attrs.sources)) >= {"station0/water", "station2/labels"}
    assert attrs.participant_id == ids[0]
