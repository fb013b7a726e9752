"""The ingest stage end to end on small hand-made participants: stitching, attributes,
idempotence, bad input, export round trip, de-identification and the CLI."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ingest_fixtures import (
    affine_ras,
    smooth_volume,
    write_dicom_series,
    write_lying_nifti,
    write_manifest,
    write_nifti,
)
from typer.testing import CliRunner

from pipelines import store as S
from pipelines.errors import ParticipantError
from pipelines.ingest import IngestConfig, export_nifti, ingest_participant
from schemas.manifest import load_manifest


def ingest_cohort(manifest, store, **kw):
    """The ingest stage of the registry (what `myocohort ingest` runs): its outcomes."""
    from jobs.driver import run_stage

    return run_stage("ingest", store=store, manifest=manifest, **kw).outcomes


SHAPE = (14, 12, 40)  # the whole participant; stations are cut from it along k
PARTS = [(0, 16), (12, 28), (24, 40)]
AFF = affine_ras((2.0, 2.5, 3.0), (-13.0, -14.0, -300.0))


def _station_affine(k0: int) -> np.ndarray:
    a = AFF.copy()
    a[:3, 3] = AFF[:3, :3] @ [0, 0, k0] + AFF[:3, 3]
    return a


@pytest.fixture(scope="module")
def truth():
    water = np.round(smooth_volume(SHAPE, seed=1, scale=80.0))
    fat = np.round(smooth_volume(SHAPE, seed=2, scale=30.0))
    labels = np.zeros(SHAPE, np.uint8)
    labels[3:7, 2:9, 5:35] = 11  # "their" value 11 -> our 1 (autochthon_left)
    labels[8:12, 2:9, 10:30] = 12  # -> our 2
    labels[1, 1, 1] = 99  # unmapped -> background
    return {"water": water, "fat": fat, "labels": labels}


def _write_participant(root: Path, pid: str, truth, *, fmt="nifti", axcodes=("RAS", "LPS", "LAS"),
                       labels=True, parts=PARTS) -> list[dict]:
    rows = []
    for s, (k0, k1) in enumerate(parts):
        aff = _station_affine(k0)
        for ch in ("water", "fat", "labels"):
            if ch == "labels" and not labels:
                continue
            data = truth[ch][:, :, k0:k1]
            if fmt == "dicom" and ch != "labels":
                path = root / pid / f"station{s}" / ch
                write_dicom_series(path, data, aff, patient_name="Musterfrau^Erika",
                                   patient_id="MRN9988776", shuffle_seed=s)
            else:
                path = root / pid / f"s{s}_{ch}.nii.gz"
                write_nifti(path, data, aff, axcodes=axcodes[s % len(axcodes)])
            row = dict(participant_id=pid, site="SITE1", station=s, channel=ch,
                       path=str(path.relative_to(root)))
            if ch == "labels":
                row["label_map"] = "labels_map.csv"
            rows.append(row)
    (root / "labels_map.csv").write_text(
        "value,name\n11,autochthon_left\n12,autochthon_right\n")
    return rows


def _manifest(root: Path, rows):
    return load_manifest(write_manifest(root / "manifest.csv", rows))


def test_stitched_participant_equals_truth(tmp_path, truth):
    m = _manifest(tmp_path, _write_participant(tmp_path, "P001", truth))
    store = tmp_path / "store.zarr"
    res = ingest_participant(m.participants[0], store=store)
    assert res.written and res.shape == SHAPE and len(res.input_hash) == 64
    for ch in ("water", "fat"):
        got = S.read_array(store, "P001", ch)
        assert got.dtype == np.float32
        # overlaps of identical noise-free data blend back to the data (float32 rounding)
        np.testing.assert_allclose(got, truth[ch], rtol=2e-7)
        single = np.r_[0:12, 16:24, 28:40]
        np.testing.assert_array_equal(got[:, :, single], truth[ch][:, :, single])
    lab = S.read_array(store, "P001", "labels")
    expected = np.select([truth["labels"] == 11, truth["labels"] == 12], [1, 2], 0)
    np.testing.assert_array_equal(lab, expected)
    a = S.read_attrs(store, "P001")
    np.testing.assert_allclose(np.array(a.affine), AFF, atol=1e-5)
    assert a.spacing_mm == pytest.approx((2.0, 2.5, 3.0))
    assert a.orientation == "RAS" and a.stations == 3 and a.site == "SITE1"
    assert a.channels == ("water", "fat") and a.labels_source == "manifest"
    assert sorted(dict(a.sources)) == sorted(
        f"station{s}/{c}" for s in range(3) for c in ("water", "fat", "labels"))
    assert all(len(h) == 64 for _, h in a.sources)
    assert a.schema_version and a.software_version
    assert dict(a.extra)["ingest"]["resampled_stations"] == []


def test_reingest_unchanged_rewrites_nothing_and_changed_input_replaces(tmp_path, truth):
    rows = _write_participant(tmp_path, "P001", truth, labels=False)
    m = _manifest(tmp_path, rows)
    store = tmp_path / "store.zarr"
    first = ingest_participant(m.participants[0], store=store)
    stamp = {p: p.stat().st_mtime_ns for p in (store / "P001").rglob("*")}
    again = ingest_participant(m.participants[0], store=store)
    assert not again.written and again.input_hash == first.input_hash
    assert {p: p.stat().st_mtime_ns for p in (store / "P001").rglob("*")} == stamp
    # change one input: the group is replaced
    new_fat = truth["fat"].copy()
    new_fat[:, :, 12:28] += 1.0
    write_nifti(tmp_path / "P001" / "s1_fat.nii.gz", new_fat[:, :, 12:28], _station_affine(12))
    third = ingest_participant(m.participants[0], store=store)
    assert third.written and third.input_hash != first.input_hash
    assert S.read_attrs(store, "P001").input_hash == third.input_hash
    got = S.read_array(store, "P001", "fat")
    np.testing.assert_array_equal(got[:, :, 17:23], new_fat[:, :, 17:23])
    # force rewrites even when unchanged
    assert ingest_participant(m.participants[0], store=store,
                              config=IngestConfig(force=True)).written


def test_dicom_participant_round_trips_through_export(tmp_path, truth, caplog):
    caplog.set_level(logging.DEBUG)
    rows = _write_participant(tmp_path, "P002", truth, fmt="dicom", labels=False)
    m = _manifest(tmp_path, rows)
    store = tmp_path / "store.zarr"
    ingest_participant(m.participants[0], store=store)
    water = S.read_array(store, "P002", "water")
    np.testing.assert_allclose(water, truth["water"], rtol=2e-7)
    out = export_nifti(store, "P002", "water", tmp_path / "exp" / "water.nii.gz")
    img = nib.load(out)
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), water)
    np.testing.assert_allclose(img.affine, AFF, atol=1e-4)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    # de-identification: no identifying DICOM value anywhere in the store or the logs
    secrets = [b"Musterfrau", b"Erika", b"MRN9988776", b"19700101", b"Secret Hospital"]
    for p in store.rglob("*"):
        if p.is_file():
            blob = p.read_bytes()
            assert not any(s in blob for s in secrets), p
    assert not any(s.decode() in caplog.text for s in secrets)


def test_nifti_single_station_voxels_and_world_coordinates_round_trip(tmp_path):
    data = smooth_volume((9, 8, 7))
    aff = affine_ras((1.1, 1.3, 2.7), (5.5, -6.5, 7.5))
    write_nifti(tmp_path / "w.nii.gz", data, aff, axcodes="LPI")
    write_nifti(tmp_path / "f.nii.gz", data * 0.5, aff, axcodes="LPI")
    rows = [dict(participant_id="P9", site="S", station=0, channel=c, path=f"{c[0]}.nii.gz")
            for c in ("water", "fat")]
    m = _manifest(tmp_path, rows)
    ingest_participant(m.participants[0], store=tmp_path / "s.zarr")
    out = export_nifti(tmp_path / "s.zarr", "P9", "fat", tmp_path / "fat.nii")
    src, back = nib.load(tmp_path / "f.nii.gz"), nib.load(out)
    # every voxel's world position and value agree with the source file
    src_data = src.get_fdata(dtype=np.float32)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in back.shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ back.affine[:3, :3].T + back.affine[:3, 3]
    src_idx = (world - src.affine[:3, 3]) @ np.linalg.inv(src.affine[:3, :3]).T
    np.testing.assert_allclose(src_idx, np.round(src_idx), atol=1e-4)
    src_idx = np.round(src_idx).astype(int)
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32).reshape(-1),
                                  src_data[tuple(src_idx.T)])


def test_resampled_labels_from_another_grid(tmp_path, truth):
    """A labels image on a coarser grid (another tool's output) is placed by nearest
    neighbour."""
    rows = _write_participant(tmp_path, "P003", truth, labels=False, parts=[(0, 40)])
    lab = np.zeros((7, 6, 20), np.uint8)
    lab[1:4, 1:5, 2:15] = 11
    coarse = AFF.copy()
    coarse[:3, :3] = AFF[:3, :3] * 2
    coarse[:3, 3] = AFF[:3, 3] + 0.5 * np.diag(AFF)[:3]  # voxel centres between fine ones
    write_nifti(tmp_path / "lab.nii.gz", lab, coarse)
    rows.append(dict(participant_id="P003", site="SITE1", station=0, channel="labels",
                     path="lab.nii.gz", label_map="labels_map.csv"))
    m = _manifest(tmp_path, rows)
    ingest_participant(m.participants[0], store=tmp_path / "s.zarr")
    got = S.read_array(tmp_path / "s.zarr", "P003", "labels")
    assert got.shape == SHAPE and set(np.unique(got)) == {0, 1}
    expected = np.repeat(np.repeat(np.repeat(lab, 2, 0), 2, 1), 2, 2)[:14, :12, :40] == 11
    np.testing.assert_array_equal(got == 1, expected)


def _bad_participants(root: Path, truth) -> dict[str, tuple[str, str]]:
    """pid -> (expected message fragment, expected error type)."""
    rows: list[dict] = []
    cases: dict[str, tuple[str, str]] = {}
    good = _write_participant(root, "GOOD", truth, labels=False, parts=[(0, 20)])
    rows += good

    def one(pid, water, fat=None, water_aff=AFF, fat_aff=AFF, expect=("", "")):
        d = root / pid
        d.mkdir(parents=True, exist_ok=True)
        wpath, fpath = d / "w.nii.gz", d / "f.nii.gz"
        if water is not None:
            write_nifti(wpath, water, water_aff)
        write_nifti(fpath, fat if fat is not None else np.ones((4, 4, 4), np.float32), fat_aff)
        rows.extend([
            dict(participant_id=pid, site="S", station=0, channel="water",
                 path=str(wpath.relative_to(root))),
            dict(participant_id=pid, site="S", station=0, channel="fat",
                 path=str(fpath.relative_to(root))),
        ])
        cases[pid] = expect

    vol = np.ones((4, 4, 4), np.float32)
    nan = vol.copy()
    nan[0, 0, 0] = np.nan
    one("NAN", nan, expect=("w.nii.gz: 1 NaN/Inf voxel", "ImageValueError"))
    inf = vol.copy()
    inf[1, 1, 1] = np.inf
    one("INF", inf, expect=("w.nii.gz: 1 NaN/Inf voxel", "ImageValueError"))
    neg = vol.copy()
    neg[2, 2, 2] = -5
    one("NEG", neg, expect=("w.nii.gz: 1 negative voxel(s) (min -5)", "ImageValueError"))
    one("MISSING", None, expect=("w.nii.gz: file not found", "ReaderError"))
    one("FOURD", np.ones((4, 4, 4, 3), np.float32), expect=("4-D image with 3 volumes",
                                                            "ReaderError"))
    one("TWOD", np.ones((4, 4), np.float32), expect=("2-D image", "ReaderError"))
    shifted = AFF.copy()
    shifted[2, 3] += 6.0
    one("GRID", vol, vol, fat_aff=shifted,
        expect=("station 0: fat image", "GridMismatchError"))
    one("TRUNC", vol, expect=("w.nii.gz: truncated or corrupt gzip", "ReaderError"))
    blob = (root / "TRUNC" / "w.nii.gz").read_bytes()
    (root / "TRUNC" / "w.nii.gz").write_bytes(blob[: len(blob) // 2])
    one("TRUNC2", np.ones((40, 40, 40), np.float32) + np.arange(40),
        expect=("w.nii.gz: truncated or corrupt image data", "ReaderError"))
    blob = (root / "TRUNC2" / "w.nii.gz").read_bytes()
    (root / "TRUNC2" / "w.nii.gz").write_bytes(blob[: len(blob) // 2])
    # a 1,376-byte file whose header claims 96 MB (under the ceiling): refused before reading
    one("LIAR", vol, expect=("w.nii.gz: truncated or lying header: it claims 400x400x300 int16 "
                             "voxels (48,000,000 voxels, 96,000,000 bytes = 91.6 MiB from byte "
                             "352), but the file holds 1,376 bytes inflated", "ReaderError"))
    write_lying_nifti(root / "LIAR" / "w.nii.gz", (400, 400, 300))
    # an unreadable DICOM series
    d = root / "BADDCM" / "water"
    write_dicom_series(d, np.ones((4, 4, 4), np.float32), AFF)
    first = sorted(d.iterdir())[0]
    first.write_bytes(first.read_bytes()[:200])
    write_nifti(root / "BADDCM" / "f.nii.gz", vol, AFF)
    rows += [dict(participant_id="BADDCM", site="S", station=0, channel="water",
                  path="BADDCM/water"),
             dict(participant_id="BADDCM", site="S", station=0, channel="fat",
                  path="BADDCM/f.nii.gz")]
    cases["BADDCM"] = (f"{first.name}: DICOM file has no pixel data (truncated", "ReaderError")
    write_manifest(root / "manifest.csv", rows)
    return cases


def test_bad_participants_fail_alone_with_clear_messages(tmp_path, truth):
    cases = _bad_participants(tmp_path, truth)
    m = load_manifest(tmp_path / "manifest.csv")
    store = tmp_path / "store.zarr"
    outcomes = ingest_cohort(m, store, traceback_dir=tmp_path / "tb")
    by_pid = {o.participant_id: o for o in outcomes}
    assert by_pid["GOOD"].ok and S.participant_ids(store) == ["GOOD"]
    for pid, (fragment, error_type) in cases.items():
        o = by_pid[pid]
        assert not o.ok, pid
        f = o.failure
        assert f.stage == "ingest" and f.error_type == error_type, (pid, f)
        assert f.message.startswith(f"participant {pid}: ingest: station 0"), f.message
        assert fragment in f.message, (pid, f.message)
        assert Path(f.traceback_file).is_file()
    assert "different grid than the water image" in by_pid["GRID"].failure.message


def test_channel_missing_for_some_stations(tmp_path, truth):
    rows = _write_participant(tmp_path, "P004", truth, labels=True, parts=PARTS[:2])
    rows = [r for r in rows if not (r["channel"] == "labels" and r["station"] == 1)]
    m = _manifest(tmp_path, rows)
    with pytest.raises(ParticipantError, match=r"P004: ingest: channel 'labels' is given for "
                                               r"station\(s\) \[0\] but not \[1\]"):
        ingest_participant(m.participants[0], store=tmp_path / "s.zarr")


def test_what_goes_to_workers_pickles(tmp_path, truth):
    m = _manifest(tmp_path, _write_participant(tmp_path, "P005", truth, parts=PARTS[:1]))
    item = pickle.loads(pickle.dumps(m.participants[0]))
    cfg = pickle.loads(pickle.dumps(IngestConfig(negative_tolerance=1.0)))
    res = ingest_participant(item, store=str(tmp_path / "s.zarr"), config=cfg)
    assert pickle.loads(pickle.dumps(res)) == res
    err = ParticipantError("P005", "ingest", "x")
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_cli_ingest_failures_and_export(tmp_path, truth):
    from jobs.cli import app

    _bad_participants(tmp_path, truth)
    runner = CliRunner()
    store = tmp_path / "store.zarr"
    result = runner.invoke(app, ["ingest", str(tmp_path / "manifest.csv"), "--store", str(store)])
    assert result.exit_code == 1, result.output
    assert "GOOD: ingested" in result.output and "NAN: FAILED (ImageValueError)" in result.output
    import pandas as pd

    table = pd.read_csv(tmp_path / "ingest-failures.csv")
    assert list(table.columns) == ["participant_id", "stage", "error_type", "message",
                                   "traceback_file"]
    assert "GOOD" not in set(table.participant_id) and "NAN" in set(table.participant_id)
    # rerun: GOOD is unchanged
    result = runner.invoke(app, ["ingest", str(tmp_path / "manifest.csv"), "--store", str(store),
                                 "--failures", str(tmp_path / "f.parquet")])
    assert "GOOD: unchanged" in result.output and (tmp_path / "f.parquet").is_file()
    out = tmp_path / "good_water.nii.gz"
    result = runner.invoke(app, ["export", str(store), "GOOD", "--channel", "water",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(nib.load(out).get_fdata(dtype=np.float32),
                                  S.read_array(store, "GOOD", "water"))
    result = runner.invoke(app, ["export", str(store), "NAN", "--channel", "water",
                                 "--out", str(out)])
    assert result.exit_code == 2 and "no participant 'NAN'" in result.output
    result = runner.invoke(app, ["export", str(store), "GOOD", "--channel", "ff",
                                 "--out", str(out)])
    assert result.exit_code == 2 and "no array 'ff'" in result.output


def test_cli_bad_manifest_exit_2(tmp_path):
    from jobs.cli import app

    (tmp_path / "m.csv").write_text("participant_id,site\nP1,A\n")
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "m.csv"), "--store",
                                      str(tmp_path / "s.zarr")])
    assert result.exit_code == 2 and "missing column" in result.output


@pytest.mark.slow
def test_cli_ingest_on_local_cluster(tmp_path, truth):
    """Participants run in worker processes (everything they receive must pickle)."""
    from jobs.cli import app

    rows = []
    for pid in ("C1", "C2"):
        rows += _write_participant(tmp_path, pid, truth, labels=False, parts=PARTS[:2])
    write_manifest(tmp_path / "manifest.csv", rows)
    profile = tmp_path / "two.yaml"
    profile.write_text("backend: local\nn_workers: 2\nthreads_per_worker: 1\n"
                       "memory_limit: 2GiB\ndashboard_address: \"127.0.0.1:0\"\n")
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "manifest.csv"), "--store",
                                      str(tmp_path / "s.zarr"), "--cluster", str(profile)])
    assert result.exit_code == 0, result.output
    assert S.participant_ids(tmp_path / "s.zarr") == ["C1", "C2"]
    np.testing.assert_allclose(S.read_array(tmp_path / "s.zarr", "C2", "water"),
                               truth["water"][:, :, :28], rtol=2e-7)


def test_store_group_metadata_is_viewer_ready(tmp_path, truth):
    m = _manifest(tmp_path, _write_participant(tmp_path, "P006", truth, labels=False,
                                               parts=PARTS[:1]))
    ingest_participant(m.participants[0], store=tmp_path / "s.zarr")
    doc = json.loads((tmp_path / "s.zarr" / "P006" / "zarr.json").read_text())
    ms = doc["attributes"]["ome"]["multiscales"]
    assert [x["name"] for x in ms] == ["water", "fat"]
    tr = ms[0]["datasets"][0]["coordinateTransformations"]
    assert tr[0]["scale"] == pytest.approx([2.0, 2.5, 3.0])
    assert tr[1]["translation"] == pytest.approx(AFF[:3, 3].tolist())
    assert not [p for p in os.listdir(tmp_path / "s.zarr") if p.startswith(".")]


def test_scaled_dicom_is_stored_as_integers_and_reads_back_identically(tmp_path, truth):
    """Each station's series has its own RescaleSlope/Intercept: single-station slices are
    stored as the DICOM integers, blended overlaps as float32, and every reader returns the
    same float32 bits as a plain float32 store."""
    rows = []
    for s, (k0, k1) in enumerate(PARTS):
        for ch in ("water", "fat"):
            path = tmp_path / "P003" / f"station{s}" / ch
            write_dicom_series(path, truth[ch][:, :, k0:k1], _station_affine(k0),
                               slope=(0.0173, 0.0211, 0.0139)[s], intercept=(0.0, -2.5, 1.75)[s],
                               shuffle_seed=s)
            rows.append(dict(participant_id="P003", site="SITE1", station=s, channel=ch,
                             path=str(path.relative_to(tmp_path))))
    m = _manifest(tmp_path, rows)
    ints, floats = tmp_path / "ints.zarr", tmp_path / "floats.zarr"
    a = ingest_participant(m.participants[0], store=ints,
                           config=IngestConfig(integer_storage=True))
    b = ingest_participant(m.participants[0], store=floats)  # float32 is the default
    assert a.input_hash != b.input_hash  # switching the setting re-ingests
    for ch in ("water", "fat"):
        meta = json.loads((ints / "P003" / ch / "zarr.json").read_text())
        assert meta["data_type"] in ("uint16", "int16", "int32")
        index = meta["attributes"][S.ENCODING_KEY]["map_index"]
        assert [z for z, i in enumerate(index) if i < 0] == [*range(12, 16), *range(24, 28)]
        assert sorted(set(index) - {-1}) == [0, 1, 2]
        assert json.loads((floats / "P003" / ch / "zarr.json").read_text())["data_type"] \
            == "float32"
        want = S.read_array(floats, "P003", ch)
        np.testing.assert_allclose(want, truth[ch], atol=0.02)
        for got in (S.read_array(ints, "P003", ch), S.open_array(ints, "P003", ch).compute()):
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    out = export_nifti(ints, "P003", "water", tmp_path / "w.nii.gz")
    np.testing.assert_array_equal(nib.load(out).get_fdata(dtype=np.float32),
                                  S.read_array(floats, "P003", "water"))
