"""A real run that is damaged and interrupted still ends with the tables of an undisturbed
run: damaged stored arrays are rebuilt from their sources (and named when the sources are
gone), and SIGKILL of a worker or of the whole run, at random moments, loses nothing."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
TABLES = ("participant_metrics", "muscle_metrics", "cohort")
N = 6


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    pytest.importorskip("pipelines.synth.cohort")
    out = tmp_path_factory.mktemp("cohort")
    r = _cli("synth", "--out", str(out), "--participants", str(N), "--stations", "2",
             "--shape", "40,28,64", "--sites", "2", "--seed", "5")
    assert r.returncode == 0, r.stderr
    return out


def _args(cohort: Path, wd: Path) -> list[str]:
    return ["run", str(cohort / "manifest_with_labels.csv"), "--covariates",
            str(cohort / "covariates.csv"), "--cluster", "local", "--workdir", str(wd)]


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory):
    """An undisturbed run: its tables and its exit code."""
    wd = tmp_path_factory.mktemp("ref") / "work"
    r = _cli(*_args(cohort, wd))
    assert r.returncode in (0, 1), r.stderr  # the fit may not converge on six participants
    assert (wd / "tables" / "participant_metrics.parquet").exists(), r.stderr
    return wd, r.returncode


def _assert_same_tables(ref: Path, wd: Path) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(pd.read_parquet(ref / "tables" / f"{name}.parquet"),
                                      pd.read_parquet(wd / "tables" / f"{name}.parquet"),
                                      obj=name)


def _shards(wd: Path, pid: str, array: str) -> list[Path]:
    return sorted(p for p in (wd / "store.zarr" / pid / array / "c").rglob("*") if p.is_file())


def _flip(path: Path, offset: int = 200, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, min(offset + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_arrays_are_rebuilt_from_their_sources(cohort, reference, tmp_path):
    ref, code = reference
    wd = tmp_path / "work"
    shutil.copytree(ref, wd, symlinks=True)
    for lock in wd.rglob("*.myocohort.lock"):
        lock.unlink()
    _shards(wd, "P0001", "water")[0].unlink()  # a deleted shard: the cheap check sees it
    shutil.rmtree(wd / "store.zarr" / "P0002" / "labels")  # manifest labels lost
    _flip(_shards(wd, "P0003", "fat")[0])  # a damaged byte only a full read sees ...
    for part in (wd / "tables" / "parts").glob("P0003.*"):
        part.unlink()  # ... so make quantify read it again
    r = _cli(*_args(cohort, wd))
    assert r.returncode == code, r.stderr
    assert "P0001: the store is damaged" in r.stderr and "shard file missing" in r.stderr
    assert "P0002: the store is damaged" in r.stderr and "'labels'" in r.stderr
    assert "damaged stored arrays (P0003): rebuilding them" in r.stderr
    _assert_same_tables(ref, wd)
    failures = pd.read_parquet(wd / "failures.parquet")
    assert set(failures.stage) <= {"fit"}, failures.to_dict("records")
    kept = sorted(p.name.split("-")[1] for p in (wd / "store.zarr").glob(".damaged-*"))
    assert kept == ["P0001", "P0002", "P0003"]  # set aside, not deleted
    res = _cli("verify", str(wd), "--full")
    assert res.returncode == 0, res.stdout + res.stderr


def test_damaged_arrays_without_sources_fail_alone_naming_the_file(cohort, tmp_path):
    src = tmp_path / "cohort"
    shutil.copytree(cohort, src)
    wd = tmp_path / "work"
    assert _cli(*_args(src, wd)).returncode in (0, 1)
    gone = _shards(wd, "P0004", "water")[0]
    gone.unlink()
    man = pd.read_csv(src / "manifest_with_labels.csv", dtype=str)
    for p in man.loc[man.participant_id == "P0004", "path"]:
        (src / p).unlink()  # and its sources are gone
    r = _cli(*_args(src, wd))
    assert r.returncode == 1, r.stderr
    failures = pd.read_parquet(wd / "failures.parquet")
    mine = failures[failures.participant_id == "P0004"]
    assert list(mine.stage) == ["ingest"], failures.to_dict("records")
    msg = mine.message.iloc[0]
    assert "stored arrays were damaged" in msg and "'water'" in msg and str(gone) in msg, msg
    assert set(failures.participant_id) <= {"P0004", "cohort"}
    pm = pd.read_parquet(wd / "tables" / "participant_metrics.parquet")
    assert set(pm.participant_id) == {f"P{i:04d}" for i in range(1, N + 1) if i != 4}


def _done_rows(wd: Path) -> int:
    try:
        db = sqlite3.connect(wd / "ledger.sqlite", timeout=5)
        try:
            return db.execute("SELECT count(*) FROM stages WHERE state='done'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def _worker_pids(pid: int) -> list[int]:
    import psutil

    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for k in kids:
        try:
            cmd = " ".join(k.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in cmd or "distributed.cli.dask_worker" in cmd:
            out.append(k.pid)
    return out


def test_chaos_interrupted_and_damaged_run_ends_with_the_undisturbed_tables(
        cohort, reference, tmp_path):
    """Four runs on one workdir: the whole run SIGKILLed at a random moment, one shard
    deleted, a worker SIGKILLed mid-run (the run goes on), another shard deleted, the whole
    run killed again, then a run left alone."""
    ref, code = reference
    seed = int(os.environ.get("MYOCOHORT_CHAOS_SEED", "0")) or random.randrange(1, 10**6)
    rng = random.Random(seed)
    wd = tmp_path / "work"
    log = [f"seed {seed} (MYOCOHORT_CHAOS_SEED={seed} repeats it)"]

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "jobs.cli", *_args(cohort, wd)],
                                cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def events_done(offset: int) -> int:
        path = wd / "run.log.jsonl"
        if not path.exists():
            return 0
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().count(b'"participant_done"')

    def wait_for(proc, ready, timeout: float = 300) -> bool:
        """Wait until ``ready(proc)``; False when the run ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if ready(proc):
                return True
            time.sleep(0.02)
        return False

    def has_workers(proc) -> bool:
        return bool(_worker_pids(proc.pid))

    def damage() -> None:
        store = wd / "store.zarr"
        groups = sorted(p.name for p in store.glob("P*")) if store.is_dir() else []
        if groups:
            pid = rng.choice(groups)
            shards = _shards(wd, pid, rng.choice(["water", "fat"]))
            if shards:
                victim = rng.choice(shards)
                victim.unlink()
                log.append(f"deleted {victim.relative_to(wd)}")

    for step, action in enumerate(("run", "damage", "worker", "damage", "run")):
        if action == "damage":
            damage()
            continue
        log_path = wd / "run.log.jsonl"
        offset = log_path.stat().st_size if log_path.exists() else 0
        proc = start()
        try:
            # the first run has everything to do; later ones what was left or damaged
            target = rng.randint(0, 2 * N - 4 if step == 0 else 2)

            def progressed(_, offset=offset, target=target) -> bool:
                return events_done(offset) >= target

            if action == "worker":
                alive = wait_for(proc, has_workers)
                alive = alive and wait_for(proc, progressed)
                workers = _worker_pids(proc.pid) if alive else []
                if workers:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    log.append(f"killed one of {len(workers)} workers after {target} "
                               "participant(s) done")
                else:
                    log.append("worker: the run finished before a worker could be killed")
                assert proc.wait(timeout=600) in (0, 1), log
            else:
                alive = wait_for(proc, progressed)
                time.sleep(rng.uniform(0, 0.3))
                if alive and proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    log.append(f"killed the run after {events_done(offset)} participant(s) "
                               "done")
                else:
                    log.append("run: finished before the kill")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    r = _cli(*_args(cohort, wd))
    assert r.returncode == code, (log, r.stderr)
    assert (wd / "tables" / "participant_metrics.parquet").exists(), (log, r.stderr)
    _assert_same_tables(ref, wd)
    events = [json.loads(x) for x in (wd / "run.log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "run_finished", log
    res = _cli("verify", str(wd), "--full")
    assert res.returncode == 0, (log, res.stdout)
    print("\n".join(log))  # what happened, shown with -s
