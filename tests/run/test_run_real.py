"""``myocohort run`` end to end with the real stages on a tiny synthetic cohort."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    pytest.importorskip("pipelines.synth.cohort")
    out = tmp_path_factory.mktemp("cohort")
    r = _cli("synth", "--out", str(out), "--participants", "3", "--stations", "2",
             "--shape", "40,28,64", "--sites", "2")
    assert r.returncode == 0, r.stderr
    return out


def test_run_end_to_end_with_manifest_labels_then_rerun(cohort, tmp_path):
    wd = tmp_path / "work"
    man = cohort / "manifest_with_labels.csv"
    r = _cli("run", str(man), "--covariates", str(cohort / "covariates.csv"), "--workdir",
             str(wd), "--cluster", "local")
    # the fit may fail on 3 participants (no contrast); everything else must be there
    assert r.returncode in (0, 1), r.stderr
    assert "dashboard: http://127.0.0.1:" in r.stderr
    assert "run summary" in r.stderr
    pm = pd.read_parquet(wd / "tables" / "participant_metrics.parquet")
    mm = pd.read_parquet(wd / "tables" / "muscle_metrics.parquet")
    cohort_df = pd.read_parquet(wd / "tables" / "cohort.parquet")
    assert len(pm) == 3 and len(mm) >= 3 and {"site", "age"} <= set(cohort_df.columns)
    fails = pd.read_parquet(wd / "failures.parquet")
    assert set(fails.stage) <= {"fit"}, fails.to_dict("records")
    assert (wd / "store.zarr").is_dir() and (wd / "ledger.sqlite").exists()
    events = [json.loads(x) for x in (wd / "run.log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "run_finished"

    before = {p: p.stat().st_mtime_ns for p in (wd / "store.zarr").rglob("*")}
    r2 = _cli("run", str(man), "--covariates", str(cohort / "covariates.csv"), "--workdir",
              str(wd), "--cluster", "local")
    assert r2.returncode == r.returncode, r2.stderr
    assert "starting cluster" not in r2.stderr  # nothing to do: no cluster, no image work
    after = {p: p.stat().st_mtime_ns for p in (wd / "store.zarr").rglob("*")}
    assert after == before
    pd.testing.assert_frame_equal(pd.read_parquet(wd / "tables" / "participant_metrics.parquet"),
                                  pm)


def test_run_bad_inputs_exit_2(cohort, tmp_path):
    r = _cli("run", str(cohort / "nope.csv"), "--covariates", str(cohort / "covariates.csv"),
             "--workdir", str(tmp_path / "w"))
    assert r.returncode == 2 and "nope.csv" in r.stderr
    r = _cli("run", str(cohort / "manifest.csv"), "--covariates", str(cohort / "covariates.csv"),
             "--workdir", str(tmp_path / "w"), "--cluster", "no-such-profile")
    assert r.returncode == 2 and "built-in profiles" in r.stderr
    r = _cli("run", str(cohort / "manifest.csv"), "--covariates", str(cohort / "covariates.csv"),
             "--workdir", str(tmp_path / "w"), "--model", str(tmp_path / "missing.pt"))
    assert r.returncode == 2 and "missing.pt" in r.stderr


def _done(workdir: Path, stage: str) -> int:
    import sqlite3

    try:
        db = sqlite3.connect(workdir / "ledger.sqlite", timeout=5)
        try:
            return db.execute("SELECT count(*) FROM stages WHERE stage=? AND state='done'",
                              (stage,)).fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def test_myocohort_run_killed_with_sigkill_resumes_to_the_same_tables(tmp_path):
    """`myocohort run` SIGKILLed mid-run (client, scheduler and workers), then started again,
    ends with the same tables as an uninterrupted run."""
    import os
    import signal
    import time

    pytest.importorskip("pipelines.synth.cohort")
    cohort = tmp_path / "cohort"
    r = _cli("synth", "--out", str(cohort), "--participants", "6", "--stations", "2",
             "--shape", "40,28,64", "--sites", "2", "--seed", "3")
    assert r.returncode == 0, r.stderr
    args = [str(cohort / "manifest_with_labels.csv"), "--covariates",
            str(cohort / "covariates.csv"), "--cluster", "local"]
    ref = tmp_path / "ref"
    r = _cli("run", *args, "--workdir", str(ref))
    assert r.returncode in (0, 1), r.stderr

    wd = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "run", *args, "--workdir",
                             str(wd)], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _done(wd, "ingest") < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        if proc.poll() is not None:
            pytest.skip("the run finished before it could be killed (machine too fast)")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (wd / "tables" / "participant_metrics.parquet").exists()
    r = _cli("run", *args, "--workdir", str(wd))
    assert r.returncode in (0, 1), r.stderr
    for name in ("participant_metrics", "muscle_metrics", "cohort"):
        a = pd.read_parquet(ref / "tables" / f"{name}.parquet")
        b = pd.read_parquet(wd / "tables" / f"{name}.parquet")
        pd.testing.assert_frame_equal(a, b)
    from pipelines.store import participant_ids

    assert participant_ids(wd / "store.zarr") == participant_ids(ref / "store.zarr")


def test_a_reduced_fit_is_a_result_with_its_warnings_in_the_summary(tmp_path):
    """40 participants: a rare covariate separates the outcome.  The run exits 0, fit.json
    lists the dropped term and its status, and the summary ends with the warnings."""
    pytest.importorskip("pipelines.synth.cohort")
    cohort = tmp_path / "cohort"
    r = _cli("synth", "--out", str(cohort), "--participants", "40", "--stations", "1",
             "--shape", "24,20,32", "--sites", "3", "--seed", "0")
    assert r.returncode == 0, r.stderr
    wd = tmp_path / "work"
    r = _cli("run", str(cohort / "manifest_with_labels.csv"), "--covariates",
             str(cohort / "covariates.csv"), "--workdir", str(wd), "--cluster", "local")
    assert r.returncode == 0, r.stderr
    fit = json.loads((wd / "results" / "fit.json").read_text())
    assert fit["status"] != "ok" and fit["dropped_terms"], fit
    assert set(fit["terms_requested"]) > set(fit["terms_fitted"]) - {"(Intercept)"}
    summary = r.stderr[r.stderr.index("run summary"):]
    assert f"warning: fit: status {fit['status']}" in summary
    assert r.stderr.count(f"status {fit['status']}") == 1  # each warning once
    for term in fit["dropped_terms"]:
        assert term["term"] in summary
    events = [json.loads(x) for x in (wd / "run.log.jsonl").read_text().splitlines()]
    assert any(e["event"] == "fit_warnings" for e in events)
