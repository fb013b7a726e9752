"""A small cohort through a real single-node SLURM (``--cluster slurm``), TLS on."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pandas as pd
import pytest

RUN_TESTS = Path(__file__).parents[1] / "run"
sys.path.insert(0, str(RUN_TESTS))

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_slurm_runs_a_cohort_with_tls(slurm_cluster, slurm_profile, tmp_path):
    from fake_stages import fake_stage_functions, make_cohort

    from cluster import backend_for
    from jobs.run_cmd import run_pipeline

    # the fake stages live in the test tree; same machine = shared filesystem
    profile = slurm_profile(job_script_prologue=[f"export PYTHONPATH={RUN_TESTS}:{Path.cwd()}"])
    assert profile.tls_enabled
    script = backend_for(profile).render()
    assert "#SBATCH --cpus-per-task=1" in script and "--tls-ca-file" in script

    man, cov = make_cohort(tmp_path / "cohort", 4, labelled=(1,))
    wd = tmp_path / "work"
    res = run_pipeline(man, cov, wd, profile=profile, stages=fake_stage_functions(),
                       stream=io.StringIO(), echo=lambda m: None)
    assert res.exit_code == 0, res.failures
    assert res.dashboard_link and res.dashboard_link.startswith("http://127.0.0.1:")
    pm = pd.read_parquet(wd / "tables" / "participant_metrics.parquet")
    assert sorted(pm.participant_id) == ["P0000", "P0001", "P0002", "P0003"]
    calls = (wd / "calls.log").read_text().splitlines()
    # the work ran in SLURM jobs (worker processes), not in this process
    assert calls and all(line.split()[2] != "client" for line in calls)
    assert list((tmp_path / "slurm-logs").glob("*.err")), "no SLURM job log: no job ran"


def test_myocohort_run_cluster_slurm_real_stages(slurm_cluster, tmp_path):
    """``myocohort run --cluster PROFILE.yaml`` (backend slurm) with the real stages."""
    import subprocess

    import yaml

    root = Path(__file__).parents[2]
    cohort = tmp_path / "cohort"
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "synth", "--out", str(cohort),
                        "--participants", "2", "--stations", "2", "--shape", "40,28,64"],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    profile = tmp_path / "slurm-test.yaml"
    profile.write_text(yaml.safe_dump({
        "backend": "slurm", "dashboard_address": "127.0.0.1:0",
        "slurm": {"cores": 1, "memory": "2GiB", "walltime": "00:10:00", "max_jobs": 2,
                  "shared_temp_directory": str(tmp_path / "tls"),
                  "log_directory": str(tmp_path / "slurm-logs"),
                  "job_script_prologue": [f"export PYTHONPATH={root}"]},
    }))
    wd = tmp_path / "work"
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "run",
                        str(cohort / "manifest_with_labels.csv"), "--covariates",
                        str(cohort / "covariates.csv"), "--workdir", str(wd), "--cluster",
                        str(profile)], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1), r.stderr  # the fit may not be estimable on 2 participants
    assert "dashboard: http://127.0.0.1:" in r.stderr
    fails = pd.read_parquet(wd / "failures.parquet")
    assert set(fails.stage) <= {"fit"}, fails.to_dict("records")
    assert len(pd.read_parquet(wd / "tables" / "participant_metrics.parquet")) == 2
    assert list((tmp_path / "slurm-logs").glob("*.err"))


def test_slurm_certificates_under_home_as_documented(slurm_cluster, slurm_profile, tmp_path,
                                                     monkeypatch):
    """docs/run.md's ``shared_temp_directory: ~/.myocohort-tls``: certificates go into a
    private folder under the real home (not a folder named ``~`` here), the workers find them,
    and the folder is gone when the run ends."""
    import os
    import stat

    from cluster import backend_for

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    profile = slurm_profile(shared_temp_directory="~/.myocohort-tls")
    base = home / ".myocohort-tls"
    assert profile.slurm.shared_temp_directory == str(base)
    with backend_for(profile).client() as client:
        assert client.scheduler.address.startswith("tls://")
        assert client.submit(os.getpid).result(timeout=120) != os.getpid()
        (folder,) = base.iterdir()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert sorted(p.name.split(".")[3] for p in folder.iterdir()) == ["ca_file", "cert", "key"]
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
    assert list(base.iterdir()) == []
    assert not (tmp_path / "~").exists()
