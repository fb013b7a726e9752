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


def _profile(tmp_path: Path, **extra):
    from cluster import profile_from_dict

    return profile_from_dict({
        "backend": "slurm", "dashboard_address": "127.0.0.1:0",
        "slurm": {
            "cores": 1, "memory": "1GiB", "processes": 1, "walltime": "00:10:00",
            "min_jobs": 1, "max_jobs": 2, "shared_temp_directory": str(tmp_path / "tls"),
            "log_directory": str(tmp_path / "slurm-logs"),
            # the fake stages live in the test tree; same machine = shared filesystem
            "job_script_prologue": [f"export PYTHONPATH={RUN_TESTS}:{Path.cwd()}"],
            **extra,
        },
    }, name="test-slurm")


def test_slurm_runs_a_cohort_with_tls(slurm_cluster, tmp_path):
    from fake_stages import fake_stage_functions, make_cohort

    from cluster import backend_for
    from jobs.run_cmd import run_pipeline

    profile = _profile(tmp_path)
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
