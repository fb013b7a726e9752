"""Output paths that cannot be used get one line and exit 2 before anything is written: a
workdir under /proc, a workdir or output under a file, a missing parent (created only with
--parents)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from jobs.cli import app

ROOT = Path(__file__).parents[1]


@pytest.fixture
def cohort(tmp_path):
    d = tmp_path / "cohort"
    d.mkdir()
    for ch in ("water", "fat"):
        img = nib.Nifti1Image(np.full((6, 5, 4), 10.0, np.float32), np.eye(4))
        img.set_sform(np.eye(4), code=1)
        nib.save(img, d / f"{ch}.nii.gz")
    (d / "m.csv").write_text("participant_id,site,station,channel,path\n"
                             "P1,A,0,water,water.nii.gz\nP1,A,0,fat,fat.nii.gz\n")
    (d / "cov.csv").write_text("participant_id,age\nP1,50\n")
    (tmp_path / "afile").write_text("x")
    return d


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _one_line(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_run_workdir_paths(cohort, tmp_path):
    run = ("run", cohort / "m.csv", "--covariates", cohort / "cov.csv", "--workdir")
    _one_line(_cli(*run, "/proc/myocohort-work"), "/proc/myocohort-work", "cannot be created")
    _one_line(_cli(*run, tmp_path / "afile" / "work"), "is a file, not a folder")
    _one_line(_cli(*run, tmp_path / "afile"), "is a file, not a folder")
    _one_line(_cli(*run, tmp_path / "no" / "such" / "work"), "does not exist", "--parents")
    assert not (tmp_path / "no").exists()  # nothing created to say it was refused


def test_stage_output_paths(cohort, tmp_path):
    f = tmp_path / "afile"
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", str(cohort / "m.csv"), "--store", str(f / "s.zarr")])
    assert res.exit_code == 2 and "is a file, not a folder" in res.output
    res = runner.invoke(app, ["ingest", str(cohort / "m.csv"), "--store",
                              str(tmp_path / "a" / "b" / "s.zarr")])
    assert res.exit_code == 2 and "--parents" in res.output
    assert not (tmp_path / "a").exists()
    res = runner.invoke(app, ["ingest", str(cohort / "m.csv"), "--store",
                              str(tmp_path / "a" / "b" / "s.zarr"), "--parents"])
    assert res.exit_code == 0, res.output
    store = tmp_path / "a" / "b" / "s.zarr"
    res = runner.invoke(app, ["quantify", "--store", str(store), "--out", str(f / "q")])
    assert res.exit_code == 2 and "is a file, not a folder" in res.output, res.output
    res = runner.invoke(app, ["fit", str(tmp_path / "t.parquet"), "--out",
                              str(f / "fit.json")])
    assert res.exit_code == 2 and "is a file, not a folder" in res.output
    res = runner.invoke(app, ["report", str(tmp_path), "--out",
                              str(tmp_path / "x" / "y" / "r.html")])
    assert res.exit_code == 2 and "does not exist" in res.output
