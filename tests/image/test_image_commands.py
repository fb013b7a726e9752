"""``segment-image`` and ``quantify-image``: one scan through the cohort's stage code, with
the same labels and metrics as the cohort path, in the input file's own grid, leaving no
store behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from jobs.cli import app
from pipelines import store as S
from pipelines.ingest.export import export_nifti

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """One synthetic participant through the cohort path (ingest, segment with the shipped
    model, quantify with the manifest labels) and its images exported as NIfTI."""
    from jobs.driver import run_stage
    from schemas.manifest import load_manifest

    root = tmp_path_factory.mktemp("cohort")
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "synth", "--out", str(root / "c"),
                        "--participants", "1", "--stations", "1", "--shape", "40,28,64",
                        "--sites", "1", "--seed", "4"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    man = load_manifest(root / "c" / "manifest_with_labels.csv")
    pid = man.participant_ids[0]
    store = root / "store.zarr"
    assert run_stage("ingest", store=store, manifest=man).summary["failed"] == 0
    out = root / "nifti"
    out.mkdir()
    for name in ("water", "fat", "labels"):
        export_nifti(store, pid, name, out / f"{name}.nii.gz")
    assert run_stage("quantify", [pid], store=store, parts_dir=root / "parts").summary[
        "failed"] == 0
    mm = pd.read_parquet(root / "parts" / f"{pid}.muscle.parquet")
    model_store = root / "model.zarr"
    man2 = load_manifest(root / "c" / "manifest.csv")
    assert run_stage("ingest", store=model_store, manifest=man2).summary["failed"] == 0
    assert run_stage("segment", [pid], store=model_store).summary["failed"] == 0
    return {"pid": pid, "store": model_store, "nifti": out, "muscle": mm}


def _run(*args, tmp_path):
    import os

    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=env)
    assert not list((tmp_path / "tmp").glob("myocohort-image-*")), "a store was left behind"
    return r


def test_segment_image_equals_the_cohort_path(cohort, tmp_path):
    n = cohort["nifti"]
    out = tmp_path / "labels.nii.gz"
    r = _run("segment-image", "-i", n / "water.nii.gz", "--fat", n / "fat.nii.gz", "-o", out,
             tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "muscles" in r.stdout and str(out) in r.stdout
    got = nib.load(out)
    want = S.read_array(cohort["store"], cohort["pid"], "labels")
    np.testing.assert_array_equal(np.asarray(got.dataobj), want)
    assert got.get_data_dtype() == np.uint8
    np.testing.assert_allclose(got.affine, nib.load(n / "water.nii.gz").affine, atol=1e-5)


def test_labels_come_back_in_the_input_files_own_grid(cohort, tmp_path):
    """An LPS-oriented input (as scanners and ITK write them): the labels file has its shape
    and affine, and equals the store labels reoriented."""
    n = cohort["nifti"]
    lps = nib.orientations.axcodes2ornt(("L", "P", "S"))
    for name in ("water", "fat"):
        img = nib.load(n / f"{name}.nii.gz")
        nib.save(img.as_reoriented(lps), tmp_path / f"{name}_lps.nii.gz")
    out = tmp_path / "lab.nii.gz"
    r = _run("segment-image", "-i", tmp_path / "water_lps.nii.gz", "--fat",
             tmp_path / "fat_lps.nii.gz", "-o", out, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    src, got = nib.load(tmp_path / "water_lps.nii.gz"), nib.load(out)
    assert nib.aff2axcodes(got.affine) == ("L", "P", "S")
    np.testing.assert_allclose(got.affine, src.affine, atol=1e-5)
    want = S.read_array(cohort["store"], cohort["pid"], "labels")[::-1, ::-1, :]
    np.testing.assert_array_equal(np.asarray(got.dataobj), want)


def test_a_folder_of_scans_pairs_channels_and_one_bad_scan_fails_alone(cohort, tmp_path):
    import shutil

    n = cohort["nifti"]
    src = tmp_path / "in"
    src.mkdir()
    for scan in ("a", "b"):
        shutil.copy(n / "water.nii.gz", src / f"{scan}_water.nii.gz")
        shutil.copy(n / "fat.nii.gz", src / f"{scan}_fat.nii.gz")
    (src / "c_water.nii.gz").write_bytes(b"not an image")
    (src / "c_fat.nii.gz").write_bytes(b"not an image")
    r = _run("segment-image", "-i", src, "-o", tmp_path / "out", tmp_path=tmp_path)
    assert r.returncode == 1, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    assert "c_water.nii.gz" in r.stderr and "Traceback" not in r.stderr
    a = np.asarray(nib.load(tmp_path / "out" / "a.nii.gz").dataobj)
    np.testing.assert_array_equal(a, S.read_array(cohort["store"], cohort["pid"], "labels"))


def test_segment_image_refuses_unusable_input_in_one_line(cohort, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["segment-image", "-i", str(tmp_path / "nope.nii.gz"), "-o",
                              str(tmp_path / "o.nii.gz")])
    assert res.exit_code == 2 and "does not exist" in res.output
    n = cohort["nifti"]
    res = runner.invoke(app, ["segment-image", "-i", str(n / "water.nii.gz"), "-o",
                              str(tmp_path / "o.nii.gz")])  # the shipped model needs fat
    assert res.exit_code == 2 and "fat" in res.output, res.output
    res = runner.invoke(app, ["segment-image", "-i", str(n / "water.nii.gz"), "-o",
                              str(tmp_path / "o.nii.gz"), "--channel", "bogus"])
    assert res.exit_code == 2 and "water, fat, in_phase, opposed_phase" in res.output


def test_quantify_image_equals_the_cohort_path(cohort, tmp_path):
    n = cohort["nifti"]
    out = tmp_path / "m.csv"
    r = _run("quantify-image", "--water", n / "water.nii.gz", "--fat", n / "fat.nii.gz",
             "--labels", n / "labels.nii.gz", "-o", out, "--ff-out", tmp_path / "ff.nii.gz",
             "--keep-store", tmp_path / "kept.zarr", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(out)
    want = cohort["muscle"]
    assert list(got.muscle) == list(want.muscle)
    for col in ("volume_cm3", "lean_cm3", "intermat_pct", "ff_mean_pct", "mercuri_grade"):
        np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float),
                                   rtol=1e-9, err_msg=col)
    part = pd.read_csv(tmp_path / "m.participant.csv")
    assert len(part) == 1 and part.participant_id[0] == "water"
    assert (tmp_path / "ff.nii.gz").exists()
    assert S.participant_ids(tmp_path / "kept.zarr") == ["image"]  # kept when asked


def test_quantify_image_names_a_missing_or_bad_input(cohort, tmp_path):
    n = cohort["nifti"]
    res = CliRunner().invoke(app, ["quantify-image", "--water", str(n / "water.nii.gz"),
                                   "--fat", str(n / "fat.nii.gz"), "--labels",
                                   str(tmp_path / "missing.nii.gz")])
    assert res.exit_code == 2 and "missing.nii.gz" in res.output
    res = CliRunner().invoke(app, ["quantify-image", "--water", str(n / "water.nii.gz"),
                                   "--fat", str(n / "fat.nii.gz"), "--labels",
                                   str(n / "labels.nii.gz"), "--label-map", "nosuchpreset"])
    assert res.exit_code == 2 and "nosuchpreset" in res.output
