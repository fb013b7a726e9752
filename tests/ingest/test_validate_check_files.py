"""``myocohort validate --check-files`` reports every planted problem in one go: a misspelled
path, a file that is no image, a 4-D image, a fat image on another grid, a header claiming
more than its file holds, an unknown label-map preset (with the presets listed), a row
error and a missing fat row; and a site that differs between manifest and covariates."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from jobs.cli import app


def _nifti(path, shape=(8, 6, 5), affine=None, dtype=np.float32):
    img = nib.Nifti1Image(np.ones(shape, dtype), np.diag([2.0, 2.0, 3.0, 1.0])
                          if affine is None else affine)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, path)
    return path


def _cohort(tmp_path):
    d = tmp_path
    for pid in ("P1", "P2", "P3", "P4", "P5", "P6"):
        _nifti(d / f"{pid}_water.nii.gz")
        _nifti(d / f"{pid}_fat.nii.gz")
    (d / "P2_fat.nii.gz").write_bytes(b"not an image at all")
    _nifti(d / "P3_fat.nii.gz", shape=(8, 6, 5, 2))  # 4-D
    shifted = np.diag([2.0, 2.0, 3.0, 1.0])
    shifted[:3, 3] = 5.0
    _nifti(d / "P4_fat.nii.gz", affine=shifted)  # another grid
    lying = d / "P5_fat.nii"
    _nifti(lying)
    lying.write_bytes(lying.read_bytes()[:400])  # the header claims more than is left
    _nifti(d / "P6_labels.nii.gz", dtype=np.uint8)
    rows = ["participant_id,site,station,channel,path,label_map"]
    for pid in ("P1", "P2", "P3", "P4", "P5", "P6"):
        water = f"{pid}_water.nii.gz" if pid != "P1" else "P1_watr.nii.gz"  # misspelled
        fat = f"{pid}_fat.nii.gz" if pid != "P5" else "P5_fat.nii"
        rows += [f"{pid},A,0,water,{water},", f"{pid},A,0,fat,{fat},"]
    rows += ["P6,A,0,labels,P6_labels.nii.gz,totalmr",  # unknown preset
             "P7,A,0,water,P1_water.nii.gz,",  # no fat row
             "P8,A,0,,P1_water.nii.gz,"]  # empty channel
    (d / "manifest.csv").write_text("\n".join(rows) + "\n")
    (d / "cov.csv").write_text("participant_id,site,age\nP1,A,50\nP2,B,60\n")
    return d


def test_every_planted_problem_in_one_go(tmp_path):
    d = _cohort(tmp_path)
    res = CliRunner().invoke(app, ["validate", str(d / "manifest.csv"), "--covariates",
                                   str(d / "cov.csv"), "--check-files"])
    out = res.output
    assert res.exit_code == 2, out
    expect = [
        ("P1_watr.nii.gz", "does not exist"),
        ("P2_fat.nii.gz", "not a readable NIfTI"),
        ("P3_fat.nii.gz", "3-D image is needed"),
        ("P4_fat.nii.gz", "differs from the water image"),
        ("P5_fat.nii", "the file holds"),
        ("totalmr", "did you mean 'total_mr'"),
        ("P7, station 0", "no 'fat' row"),
        ("column 'channel'", "is empty"),
    ]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    for where, what in expect:
        assert any(where in e and what in e for e in errors), (where, what, out)
    assert "presets: total_mr" in out
    assert "8 problem(s)" in out
    assert "another site in the covariates than in the manifest" in out and "P2" in out
    assert "Traceback" not in out


def test_a_clean_cohort_is_valid_with_its_files(tmp_path):
    for ch in ("water", "fat"):
        _nifti(tmp_path / f"P1_{ch}.nii.gz")
    (tmp_path / "m.csv").write_text("participant_id,site,station,channel,path\n"
                                    "P1,A,0,water,P1_water.nii.gz\nP1,A,0,fat,P1_fat.nii.gz\n")
    res = CliRunner().invoke(app, ["validate", str(tmp_path / "m.csv"), "--check-files"])
    assert res.exit_code == 0, res.output
    assert "checked 2 image(s) of 1 participant(s): 0 problem(s)" in res.output
    # without --check-files no image is opened: a missing file is not noticed
    (tmp_path / "P1_fat.nii.gz").unlink()
    assert CliRunner().invoke(app, ["validate", str(tmp_path / "m.csv")]).exit_code == 0
