"""Scheduling on a real LocalCluster: GPU routing (workers advertising GPU=1 on CPU), a
worker killed with SIGKILL mid-task, and a bounded number of participants in flight."""

from __future__ import annotations

import io
import os
import signal
import threading
import time

import pytest
import sched_fns
from distributed import Client, Nanny, SpecCluster
from fake_stages import fake_stage_functions, make_cohort

from cluster.base import ClusterUnavailable
from cluster.profile import profile_from_dict
from pipelines._dask import map_participants


def _mixed_cluster():
    """One CPU-only worker and one worker advertising GPU=1 (processes, on CPU)."""
    workers = {
        "cpu-0": {"cls": Nanny, "options": {"nthreads": 1, "name": "cpu-0"}},
        "gpu-0": {"cls": Nanny, "options": {"nthreads": 1, "name": "gpu-0",
                                            "resources": {"GPU": 1}}},
    }
    scheduler = {"cls": "distributed.Scheduler",
                 "options": {"dashboard_address": ":0", "host": "127.0.0.1"}}
    return SpecCluster(workers=workers, scheduler=scheduler)


def test_gpu_stage_runs_only_on_gpu_workers(tmp_path):
    with _mixed_cluster() as cluster, Client(cluster) as client:
        items = [f"P{i}" for i in range(6)]
        out = map_participants(sched_fns.where, items, stage="segment", participant_id=str,
                               client=client, resources={"GPU": 1}, out=str(tmp_path))
        assert all(o.ok for o in out)
        assert {o.value for o in out} == {"gpu-0"}
        cpu = map_participants(sched_fns.where, items, stage="quantify", participant_id=str,
                               client=client, out=str(tmp_path))
        assert all(o.ok for o in cpu)


def test_run_routes_segment_to_gpu_workers(tmp_path):
    """The whole run against an existing scheduler (tcp backend) with mixed workers."""
    from jobs.run_cmd import run_pipeline

    man, cov = make_cohort(tmp_path / "cohort", 4)
    with _mixed_cluster() as cluster:
        profile = profile_from_dict({"backend": "tcp", "address": cluster.scheduler_address})
        res = run_pipeline(man, cov, tmp_path / "work", profile=profile,
                           stages=fake_stage_functions(), stream=io.StringIO(),
                           echo=lambda m: None)
    assert res.exit_code == 0, res.failures
    rows = [ln.split() for ln in (tmp_path / "work" / "calls.log").read_text().splitlines()]
    seg_workers = {w for stage, _, w, _ in rows if stage == "segment"}
    assert seg_workers == {"gpu-0"}


def test_requested_resource_nobody_offers_is_refused(tmp_path, local_profile):
    from jobs.run_cmd import run_pipeline
    from jobs.runconfig import RunConfig, RunOptions

    with Client(n_workers=1, threads_per_worker=1, dashboard_address=":0",
                processes=False) as client:
        with pytest.raises(RuntimeError, match="no worker offers resources"):
            map_participants(sched_fns.where, ["P1"], stage="segment", participant_id=str,
                             client=client, resources={"GPU": 1}, out=str(tmp_path))
    man, cov = make_cohort(tmp_path / "cohort", 2)
    with pytest.raises(ClusterUnavailable, match="segment: no worker offers"):
        run_pipeline(man, cov, tmp_path / "work", profile=local_profile,
                     config=RunConfig(run=RunOptions(gpu="on")),
                     stages=fake_stage_functions(), stream=io.StringIO(), echo=lambda m: None)


def test_bounded_in_flight(tmp_path):
    with Client(n_workers=1, threads_per_worker=4, dashboard_address=":0",
                processes=False) as client:
        out = map_participants(sched_fns.track_in_flight, [f"P{i}" for i in range(10)],
                               stage="quantify", participant_id=str, client=client,
                               max_in_flight=2, out=str(tmp_path), sleep_s=0.05)
    assert len(out) == 10 and all(o.ok for o in out)
    peak = max(int(x) for x in (tmp_path / "concurrency.log").read_text().split())
    assert peak <= 2


@pytest.mark.slow
def test_worker_killed_mid_task_is_replaced_and_participant_retried(tmp_path):
    from distributed import LocalCluster

    items = [f"P{i}" for i in range(6)]
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0",
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
        killed: list[tuple[str, int]] = []

        def killer():
            deadline = time.monotonic() + 60
            starts = tmp_path / "starts.log"
            while time.monotonic() < deadline:
                if starts.exists():
                    for line in starts.read_text().splitlines():
                        pid_, proc = line.split()
                        if int(proc) in worker_pids:
                            os.kill(int(proc), signal.SIGKILL)
                            killed.append((pid_, int(proc)))
                            return
                time.sleep(0.05)

        t = threading.Thread(target=killer)
        t.start()
        out = map_participants(sched_fns.slow_once, items, stage="segment", participant_id=str,
                               client=client, out=str(tmp_path), sleep_s=1.0)
        t.join()
        client.wait_for_workers(2, timeout=60)  # the nanny replaced the dead worker
        assert len(client.scheduler_info()["workers"]) == 2
    assert killed, "no worker was killed"
    victim = killed[0][0]
    assert sorted(o.participant_id for o in out) == items and all(o.ok for o in out)
    done = (tmp_path / "done.log").read_text().split()
    assert sorted(done) == items, "a participant was lost or its output duplicated"
    starts = [ln.split()[0] for ln in (tmp_path / "starts.log").read_text().splitlines()]
    assert starts.count(victim) == 2, "the killed participant was not retried"


def test_local_profile_with_gpu_workers_routes_segment(tmp_path):
    """A LocalCluster whose workers advertise GPU=1 (on CPU): segment asks for GPU=1."""
    import json

    from jobs.run_cmd import run_pipeline

    man, cov = make_cohort(tmp_path / "cohort", 3)
    profile = profile_from_dict({"backend": "local", "n_workers": 2,
                                 "worker_resources": {"GPU": 1},
                                 "dashboard_address": "127.0.0.1:0"})
    wd = tmp_path / "work"
    res = run_pipeline(man, cov, wd, profile=profile, stages=fake_stage_functions(),
                       stream=io.StringIO(), echo=lambda m: None)
    assert res.exit_code == 0, res.failures
    events = [json.loads(x) for x in (wd / "run.log.jsonl").read_text().splitlines()]
    routed = {e["stage"]: e["resources"] for e in events if e["event"] == "stage_resources"}
    assert routed == {"segment": {"GPU": 1}}  # ingest and quantify (device cpu) run anywhere


@pytest.mark.slow
def test_participant_that_kills_every_worker_fails_alone(tmp_path):
    """A participant that kills its worker at every attempt (an OOM) ends as one failure
    (KilledWorker) once the scheduler gives up; every other participant completes."""
    import dask
    from distributed import LocalCluster

    items = [f"P{i}" for i in range(5)]
    # worker-saturation 1.0: no second task waits on a worker behind the one running; with
    # Dask's default (1.1, i.e. two per one-thread worker) an innocent participant queued
    # behind P2 on both workers P2 kills counts as suspicious twice and fails too
    with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                          "distributed.scheduler.worker-saturation": 1.0}):
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0",
                          host="127.0.0.1") as cluster, Client(cluster) as client:
            out = map_participants(sched_fns.kill_own_worker_for, items, stage="segment",
                                   participant_id=str, client=client, victim="P2")
    by_pid = {o.participant_id: o for o in out}
    assert sorted(by_pid) == items
    assert not by_pid["P2"].ok and by_pid["P2"].failure.error_type == "KilledWorker"
    assert "P2" in by_pid["P2"].failure.message
    assert all(by_pid[p].ok for p in items if p != "P2")
