"""The workdir is trusted no further than it can be checked: one run at a time, a killed run
taken over, clear one-line refusals (exit 2) for a workdir that is a file, read-only or has a
damaged ledger, and participants erased on request (consent withdrawal)."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from fake_stages import fake_stage_functions, make_cohort
from typer.testing import CliRunner

from jobs.cli import app
from jobs.run_cmd import run_pipeline
from jobs.workdir import WorkdirError

ROOT = Path(__file__).parents[2]
SCRIPT = Path(__file__).parent / "run_fake.py"


def run(man, cov, workdir, profile, **kw):
    return run_pipeline(man, cov, workdir, profile=profile, stages=fake_stage_functions(),
                        stream=io.StringIO(), echo=lambda m: None, **kw)


def _start_slow_run(man, cov, wd) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(man), str(cov), str(wd), "0.5",
                             "1"], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    log = wd / "run.log.jsonl"  # the run is registered in the ledger before it logs this
    while not (log.exists() and b"run_started" in log.read_bytes()) \
            and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before the test could see it"
        time.sleep(0.05)
    return proc


def test_a_second_run_on_a_busy_workdir_is_refused_naming_the_holder(tmp_path, local_profile):
    man, cov = make_cohort(tmp_path / "cohort", 4)
    wd = tmp_path / "work"
    proc = _start_slow_run(man, cov, wd)
    try:
        with pytest.raises(WorkdirError, match=rf"workdir {wd} is in use by pid {proc.pid} on "
                                               r"host .* started 20\d\d-"):
            run(man, cov, wd, local_profile)
        res = CliRunner().invoke(app, ["ingest", str(man), "--store", str(wd / "store.zarr")])
        assert res.exit_code == 2 and f"pid {proc.pid}" in res.output, res.output
    finally:
        assert proc.wait(timeout=120) == 0  # the first run is undisturbed
    assert len(pd.read_parquet(wd / "tables" / "participant_metrics.parquet")) == 4


def test_a_killed_run_is_taken_over_and_marked_interrupted(tmp_path, local_profile):
    man, cov = make_cohort(tmp_path / "cohort", 4)
    wd = tmp_path / "work"
    proc = _start_slow_run(man, cov, wd)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    messages = []
    res = run_pipeline(man, cov, wd, profile=local_profile, stages=fake_stage_functions(),
                       stream=io.StringIO(), echo=messages.append)
    assert res.exit_code == 0
    assert any("did not finish" in m and "interrupted" in m for m in messages), messages
    db = sqlite3.connect(wd / "ledger.sqlite")
    statuses = [r[0] for r in db.execute("SELECT status FROM runs ORDER BY run_id")]
    db.close()
    assert statuses == ["interrupted", "finished"]


def _cli_run(*args):
    return subprocess.run([sys.executable, "-m", "jobs.cli", "run", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_a_workdir_that_is_a_file_is_one_line_exit_2(tmp_path):
    man, cov = make_cohort(tmp_path / "cohort", 1)
    f = tmp_path / "afile"
    f.write_text("x")
    for wd, words in ((f, "is a file, not a folder"), (f / "work", f"{f} is a file")):
        r = _cli_run(str(man), "--covariates", str(cov), "--workdir", str(wd))
        assert r.returncode == 2, r.stderr
        assert words in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_read_only_workdir_is_one_line_exit_2(tmp_path):
    man, cov = make_cohort(tmp_path / "cohort", 1)
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {r.stderr.decode().strip()}")
    try:
        r = _cli_run(str(man), "--covariates", str(cov), "--workdir", str(ro))
        assert r.returncode == 2, r.stderr
        assert "not writable" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_a_damaged_ledger_is_refused_and_says_what_to_do(tmp_path, local_profile):
    man, cov = make_cohort(tmp_path / "cohort", 2)
    wd = tmp_path / "work"
    assert run(man, cov, wd, local_profile).exit_code == 0
    (wd / "ledger.sqlite").write_bytes(b"not a database " * 200)
    for suffix in ("-wal", "-shm"):
        Path(str(wd / "ledger.sqlite") + suffix).unlink(missing_ok=True)
    before = {p: p.stat().st_mtime_ns for p in wd.rglob("*") if p.is_file()}
    r = _cli_run(str(man), "--covariates", str(cov), "--workdir", str(wd))
    assert r.returncode == 2, r.stderr
    assert "is damaged" in r.stderr and "--rebuild-ledger" in r.stderr
    assert "Traceback" not in r.stderr
    after = {p: p.stat().st_mtime_ns for p in wd.rglob("*") if p.is_file()
             if not p.name.endswith(".myocohort.lock") and p.name != ".myocohort.lock"}
    assert after == {p: t for p, t in before.items() if p in after}  # nothing rewritten


def test_forget_erases_every_trace_and_rebuilds_the_results(tmp_path, local_profile,
                                                          monkeypatch):
    import jobs.stages

    fakes = {s.name: s for s in fake_stage_functions()}
    monkeypatch.setattr(jobs.stages, "FIT", fakes["fit"])  # the fake tables fit no real model
    monkeypatch.setattr(jobs.stages, "REPORT", fakes["report"])
    man, cov = make_cohort(tmp_path / "cohort", 4, bad=(3,))
    wd = tmp_path / "work"
    assert run(man, cov, wd, local_profile).exit_code == 1  # P0003 failed at ingest
    tb = wd / "tracebacks" / "ingest-P0003.txt"
    assert tb.exists()
    res = CliRunner().invoke(app, ["forget", "P0001", "P0003", "--workdir", str(wd)])
    assert res.exit_code == 0, res.output
    assert not (wd / "store.zarr" / "P0001").exists()
    assert not list((wd / "tables" / "parts").glob("P0001.*"))
    assert not tb.exists()
    db = sqlite3.connect(wd / "ledger.sqlite")
    assert db.execute("SELECT count(*) FROM stages WHERE participant_id IN "
                      "('P0001','P0003')").fetchone()[0] == 0
    db.close()
    assert pd.read_parquet(wd / "failures.parquet").empty
    for name in ("participant_metrics", "muscle_metrics", "cohort"):
        ids = set(pd.read_parquet(wd / "tables" / f"{name}.parquet").participant_id)
        assert ids == {"P0000", "P0002"}, name
    assert json.loads((wd / "results" / "fit.json").read_text())["n"] == 2  # refitted
    events = [json.loads(x) for x in (wd / "run.log.jsonl").read_text().splitlines()]
    gone = [e for e in events if e["event"] == "participant_forgotten"]
    assert {e["participant_id"] for e in gone} == {"P0001", "P0003"}
    assert all(set(e) <= {"ts", "time", "event", "participant_id", "reason"} for e in gone)
    # the store, not the manifest, decides what exists: forgetting twice is harmless
    res = CliRunner().invoke(app, ["forget", "P0001", "--workdir", str(wd)])
    assert res.exit_code == 0, res.output


def test_forget_removes_results_it_cannot_rebuild(tmp_path, local_profile):
    """The real fit cannot model the fake tables: the old fit and report, computed with the
    erased participant, must not survive the erasure."""
    man, cov = make_cohort(tmp_path / "cohort", 3)
    wd = tmp_path / "work"
    assert run(man, cov, wd, local_profile).exit_code == 0
    assert (wd / "results" / "fit.json").exists() and (wd / "results" / "report.html").exists()
    res = CliRunner().invoke(app, ["forget", "P0001", "--workdir", str(wd)])
    assert res.exit_code == 1, res.output
    assert "fit failed" in res.output and "removed the results" in res.output
    assert not [f for f in (wd / "results").iterdir() if f.is_file()]


def test_participants_leaving_the_manifest_are_listed_then_pruned(tmp_path, local_profile):
    man, cov = make_cohort(tmp_path / "cohort", 3)
    wd = tmp_path / "work"
    assert run(man, cov, wd, local_profile).exit_code == 0
    rows = pd.read_csv(man, dtype=str)
    rows[rows.participant_id != "P0002"].to_csv(man, index=False)
    messages = []
    run_pipeline(man, cov, wd, profile=local_profile, stages=fake_stage_functions(),
                 stream=io.StringIO(), echo=messages.append)
    assert any("no longer in the manifest (P0002)" in m for m in messages), messages
    assert (wd / "store.zarr" / "P0002").exists()  # kept until asked
    run(man, cov, wd, local_profile, prune=True)
    assert not (wd / "store.zarr" / "P0002").exists()
    assert not list((wd / "tables" / "parts").glob("P0002.*"))
