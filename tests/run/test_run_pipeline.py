"""run_pipeline with fake stages on a real LocalCluster: incremental reruns, failures,
labels participants, resume after SIGKILL."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from fake_stages import fake_stage_functions, make_cohort

from jobs.run_cmd import run_pipeline


def calls(workdir: Path) -> Counter:
    log = workdir / "calls.log"
    if not log.exists():
        return Counter()
    return Counter(tuple(line.split()[:2]) for line in log.read_text().splitlines())


def run(man, cov, workdir, profile, **kw):
    stream = io.StringIO()
    res = run_pipeline(man, cov, workdir, profile=profile, stages=kw.pop("stages", None)
                       or fake_stage_functions(), stream=stream, echo=lambda m: None, **kw)
    return res, stream.getvalue()


def tables(workdir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    t = workdir / "tables"
    return (pd.read_parquet(t / "participant_metrics.parquet"),
            pd.read_parquet(t / "muscle_metrics.parquet"), pd.read_parquet(t / "cohort.parquet"))


def store_snapshot(workdir: Path) -> dict[str, int]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns
            for p in (workdir / "store.zarr").rglob("*")}


def test_first_run_then_rerun_does_nothing(tmp_path, local_profile):
    man, cov = make_cohort(tmp_path / "cohort", 6, labelled=(2,))
    wd = tmp_path / "work"
    res, progress = run(man, cov, wd, local_profile)
    assert res.exit_code == 0, res.failures
    c = calls(wd)
    assert sum(v for (s, _), v in c.items() if s == "ingest") == 6
    # P0002 has labels in the manifest: never segmented
    assert ("segment", "P0002") not in c
    assert sum(v for (s, _), v in c.items() if s == "segment") == 5
    assert all(v == 1 for v in c.values())
    pm, mm, cohort = tables(wd)
    assert sorted(pm.participant_id) == [f"P{i:04d}" for i in range(6)]
    assert len(mm) == 18
    assert {"age", "sex", "site", "cbp"} <= set(cohort.columns)
    assert cohort.set_index("participant_id").loc["P0003", "site"] == "S1"
    assert (wd / "results" / "fit.json").exists() and (wd / "results" / "report.html").exists()
    assert pd.read_parquet(wd / "failures.parquet").empty
    assert "ingest" in progress and "6/6 done" in progress
    events = [json.loads(line)["event"] for line in (wd / "run.log.jsonl").read_text().splitlines()]
    assert events[0] == "run_started" and events[-1] == "run_finished"
    assert "cluster_started" in events and events.count("participant_done") == 6 + 5 + 6

    before_store, before_calls = store_snapshot(wd), calls(wd)
    res2, _ = run(man, cov, wd, local_profile)
    assert res2.exit_code == 0
    assert calls(wd) == before_calls, "a rerun did image work"
    assert store_snapshot(wd) == before_store, "a rerun rewrote the store"
    assert res2.dashboard_link is None, "a rerun with nothing to do started a cluster"
    pd.testing.assert_frame_equal(tables(wd)[0], pm)
    assert [s["up_to_date"] for s in res2.stages[:3]] == [6, 5, 6]


def test_new_participants_changed_input_and_model(tmp_path, local_profile):
    man, cov = make_cohort(tmp_path / "cohort", 4)
    wd = tmp_path / "work"
    assert run(man, cov, wd, local_profile)[0].exit_code == 0
    c0 = calls(wd)

    make_cohort(tmp_path / "cohort", 2, start=4)  # two new participants
    assert run(man, cov, wd, local_profile)[0].exit_code == 0
    new = calls(wd) - c0
    assert {pid for _, pid in new} == {"P0004", "P0005"}
    assert len(tables(wd)[0]) == 6
    c1 = calls(wd)

    (tmp_path / "cohort" / "P0001_fat.nii").write_text("changed content")
    assert run(man, cov, wd, local_profile)[0].exit_code == 0
    new = calls(wd) - c1
    assert set(new) == {("ingest", "P0001"), ("segment", "P0001"), ("quantify", "P0001")}
    c2 = calls(wd)

    model = tmp_path / "model.pt"
    model.write_bytes(b"weights v2")
    from jobs.options import with_segment_options
    from jobs.runconfig import load_run_config

    config = with_segment_options(load_run_config(None), [str(model)], None, False)
    assert run(man, cov, wd, local_profile, config=config)[0].exit_code == 0
    new = calls(wd) - c2
    assert not any(s == "ingest" for s, _ in new)
    assert sorted(pid for s, pid in new if s == "segment") == [f"P{i:04d}" for i in range(6)]
    assert sorted(pid for s, pid in new if s == "quantify") == [f"P{i:04d}" for i in range(6)]
    db = sqlite3.connect(wd / "ledger.sqlite")
    hashes = {r[0] for r in db.execute("SELECT model_hash FROM stages WHERE stage='segment'")}
    assert len(hashes) == 1 and "default" not in hashes


def test_failing_participant_is_recorded_and_run_goes_on(tmp_path, local_profile):
    man, cov = make_cohort(tmp_path / "cohort", 5, bad=(1,))
    wd = tmp_path / "work"
    res, _ = run(man, cov, wd, local_profile)
    assert res.exit_code == 1
    fails = pd.read_parquet(wd / "failures.parquet")
    assert list(fails.participant_id) == ["P0001"]
    row = fails.iloc[0]
    assert row.stage == "ingest" and row.error_type == "ValueError"
    assert "P0001" in row.message and "P0001_water.nii" in row.message
    assert Path(row.traceback_file).exists()
    assert sorted(tables(wd)[0].participant_id) == ["P0000", "P0002", "P0003", "P0004"]
    # fixed input: the rerun processes exactly the failed participant
    (tmp_path / "cohort" / "P0001_water.nii").write_text("fixed")
    (tmp_path / "cohort" / "P0001_fat.nii").write_text("fixed")
    c0 = calls(wd)
    res, _ = run(man, cov, wd, local_profile)
    assert res.exit_code == 0
    assert {pid for _, pid in calls(wd) - c0} == {"P0001"}
    assert pd.read_parquet(wd / "failures.parquet").empty
    assert len(tables(wd)[0]) == 5


def test_participant_whose_new_input_fails_leaves_the_tables(tmp_path, local_profile):
    man, cov = make_cohort(tmp_path / "cohort", 4)
    wd = tmp_path / "work"
    assert run(man, cov, wd, local_profile)[0].exit_code == 0
    (tmp_path / "cohort" / "P0002_water.nii").write_text("BAD now")
    res, _ = run(man, cov, wd, local_profile)
    assert res.exit_code == 1
    assert list(pd.read_parquet(wd / "failures.parquet").participant_id) == ["P0002"]
    # its old results came from the old input: stale, so not in the tables
    assert sorted(tables(wd)[0].participant_id) == ["P0000", "P0001", "P0003"]


def test_fit_failure_is_a_cohort_failure(tmp_path, local_profile):
    man, cov = make_cohort(tmp_path / "cohort", 1)
    wd = tmp_path / "work"
    res, _ = run(man, cov, wd, local_profile)
    assert res.exit_code == 1
    fails = pd.read_parquet(wd / "failures.parquet")
    assert list(fails.stage) == ["fit"] and list(fails.participant_id) == ["cohort"]
    assert (wd / "tables" / "participant_metrics.parquet").exists()
    assert not (wd / "results" / "fit.json").exists()
    assert (wd / "results" / "report.html").exists()  # the report does not need the fit


def _ledger_done(workdir: Path, stage: str) -> int:
    try:
        db = sqlite3.connect(workdir / "ledger.sqlite", timeout=5)
        n = db.execute("SELECT count(*) FROM stages WHERE stage=? AND state='done'",
                       (stage,)).fetchone()[0]
        db.close()
        return n
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_resume_after_sigkill_gives_same_tables(tmp_path):
    man, cov = make_cohort(tmp_path / "cohort", 8, labelled=(3,))
    script = Path(__file__).parent / "run_fake.py"
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, str(script), str(man), str(cov), str(ref), "0", "2"],
                   check=True, timeout=120)
    wd = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, str(script), str(man), str(cov), str(wd), "0.4", "2"],
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while _ledger_done(wd, "segment") < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.1)
        assert _ledger_done(wd, "segment") >= 2
        os.killpg(proc.pid, signal.SIGKILL)  # the client and its whole local cluster
    finally:
        proc.wait(timeout=30)
    assert not (wd / "tables" / "participant_metrics.parquet").exists()
    done_before = _ledger_done(wd, "ingest")
    c0 = calls(wd)
    subprocess.run([sys.executable, str(script), str(man), str(cov), str(wd), "0", "2"],
                   check=True, timeout=120)
    ingested_again = [pid for (s, pid) in calls(wd) - c0 if s == "ingest"]
    assert len(ingested_again) <= 8 - done_before, "resume redid finished ingest work"
    for a, b in zip(tables(ref), tables(wd), strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert sorted(p.name for p in (wd / "store.zarr").iterdir() if not p.name.startswith(".")) \
        == [f"P{i:04d}" for i in range(8)]


def test_covariate_change_redoes_only_the_tables(tmp_path, local_profile):
    """Quantify's key holds no covariates: a new BMI changes lmm_index in the tables without
    any image work."""
    man, cov = make_cohort(tmp_path / "cohort", 3)
    wd = tmp_path / "work"
    assert run(man, cov, wd, local_profile)[0].exit_code == 0
    before_calls = calls(wd)
    pm0 = tables(wd)[0].set_index("participant_id")
    covs = pd.read_csv(cov, dtype=str)
    covs.loc[covs.participant_id == "P0001", "bmi"] = "40"
    covs.to_csv(cov, index=False)
    res, _ = run(man, cov, wd, local_profile)
    assert res.exit_code == 0 and calls(wd) == before_calls, "a covariate change did image work"
    assert res.dashboard_link is None  # not even a cluster
    pm1 = tables(wd)[0].set_index("participant_id")
    assert pm1.loc["P0001", "lmm_index"] == pytest.approx(pm1.loc["P0001", "lmm_cm3"] / 40)
    assert pm1.loc["P0001", "lmm_index"] != pm0.loc["P0001", "lmm_index"]
    assert pm1.loc["P0002", "lmm_index"] == pm0.loc["P0002", "lmm_index"]
    cohort = tables(wd)[2].set_index("participant_id")
    assert cohort.loc["P0001", "bmi"] == 40
