"""``myocohort synth`` from the command line."""

from __future__ import annotations

import nibabel as nib
from typer.testing import CliRunner

from jobs.cli import app
from schemas.manifest import load_manifest

runner = CliRunner()


def test_synth_command_builds_a_valid_cohort(tmp_path):
    out = tmp_path / "cohort"
    result = runner.invoke(app, ["synth", "--out", str(out), "--participants", "2",
                                 "--stations", "3", "--shape", "30,20,48",
                                 "--spacing", "16,16,20", "--orientation", "RAS",
                                 "--seed", "5"])
    assert result.exit_code == 0, result.stdout
    assert "2 participants" in result.stdout
    m = load_manifest(out / "manifest.csv")
    assert len(m) == 2 and m.participants[0].stations == (0, 1, 2)
    img = nib.load(m.participants[0].get(0, "water").path)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert (out / "truth" / "planted.json").exists()


def test_synth_command_refuses_bad_options(tmp_path):
    for args, word in ((["--shape", "10,10"], "--shape"), (["--format", "png"], "format"),
                       (["--stations", "500"], "stations")):
        result = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), *args])
        assert result.exit_code == 2, args
        assert word in result.stdout
