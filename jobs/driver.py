"""The one driver of a stage: ``myocohort run`` and every per-stage command run a stage of the
registry (:mod:`jobs.stages`) through :func:`run_participant_stage` or
:func:`run_cohort_stage`.

For a participant stage it decides what is to do (from the ledger when there is one), checks
that the stage can run (``prepare``) and that some worker offers the resources it asks for,
fans out with :func:`pipelines._dask.map_participants`, and for each participant as it
finishes persists the result, updates the ledger (invalidating later stages when the output
was rewritten), the live progress and the structured log.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from jobs.progress import StageProgress

if TYPE_CHECKING:
    from distributed import Client

    from cluster.profile import Profile
    from jobs.progress import EventLog
    from jobs.stages import CohortStage, ParticipantStage, StageInputs
    from pipelines._dask import Outcome
    from schemas.failures import Failure

log = logging.getLogger(__name__)

#: ``participant_id`` of failures that concern the whole cohort (aggregate, fit, report).
COHORT_ID = "cohort"


class Clients:
    """The cluster a run or command uses, started only when some stage has work (a rerun with
    nothing to do never starts one).  ``profile`` None: run in this process, one participant
    after another (no cluster, ``get()`` returns None), unless an already connected
    ``client`` is given (Python callers with their own cluster)."""

    def __init__(self, profile: Profile | None, stack: ExitStack | None = None,
                 echo: Callable[[str], None] = lambda msg: None,
                 events: EventLog | None = None, client: Client | None = None) -> None:
        self.profile, self.echo, self.events = profile, echo, events
        self.stack = stack if stack is not None else ExitStack()
        self.client: Client | None = client
        self.dashboard_link: str | None = None

    @property
    def max_in_flight(self) -> int | None:
        return self.profile.max_in_flight if self.profile is not None else None

    def get(self) -> Client | None:
        if self.client is None and self.profile is not None:
            from cluster.registry import backend_for

            backend = backend_for(self.profile)
            self.echo(f"starting cluster: profile {self.profile.name!r} ({backend.description})")
            self.client = self.stack.enter_context(backend.client())
            self.dashboard_link = backend.dashboard_link(self.client)
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
            self.echo(f"dashboard: {self.dashboard_link}  ({len(workers)} worker(s))")
            _event(self.events, "cluster_started", profile=self.profile.name,
                   backend=self.profile.backend, dashboard=self.dashboard_link,
                   workers=len(workers))
        return self.client


def _event(events: EventLog | None, name: str, **fields: Any) -> None:
    if events is not None:
        events.event(name, **fields)


def command_inputs(stage_name: str, store: str | Path, config: Any, **fields: Any) -> StageInputs:
    """The :class:`jobs.stages.StageInputs` of a one-stage command (no ledger: every given
    participant is processed; ``config`` is that stage's config object)."""
    from jobs.runconfig import RunConfig, pipeline_version
    from jobs.stages import StageInputs, get_stage

    section = get_stage(stage_name).section
    return StageInputs(store=Path(store), config=RunConfig(sections=((section, config),),
                                                           source="command line"),
                       version=pipeline_version(), **fields)


def gpu_resources(stage: ParticipantStage, config: Any, mode: str,
                  client: Client | None) -> dict[str, float] | None:
    """``{"GPU": 1}`` when the stage's work should run on GPU workers: it wants a GPU for
    this config and ``mode`` is ``on``, or ``auto`` and some worker offers one."""
    if client is None or mode == "off" or not stage.wants_gpu(config):
        return None
    from pipelines._dask import workers_offering

    if mode == "on" or workers_offering(client, {"GPU": 1}):
        return {"GPU": 1}  # "on" without GPU workers is refused by check_resources, clearly
    return None


@dataclass
class StageRun:
    """What one stage did: its outcomes (completion order), summary and the participants
    whose output of this stage is current afterwards (input order)."""

    stage: str
    outcomes: list[Outcome] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    current: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Failure]:
        return [o.failure for o in self.outcomes if not o.ok]


def _set_aside(inputs: StageInputs, pid: str, message: str, events: EventLog | None) -> None:
    """A stage found ``pid``'s stored arrays damaged while reading them (a damaged byte the
    cheap check cannot see): move the group aside so the next run rebuilds it from its
    sources instead of failing on it for ever."""
    from pipelines.store import quarantine_group

    moved = quarantine_group(inputs.store, pid, [message])
    if moved is not None:
        log.warning("participant %s: the store is damaged (%s): its group was moved to %s; "
                    "the next run rebuilds it from its sources", pid, message, moved)
        _event(events, "store_damaged", participant_id=pid, moved_to=str(moved))


def run_participant_stage(
    stage: ParticipantStage,
    participants: list[str],
    inputs: StageInputs,
    *,
    clients: Clients,
    events: EventLog | None = None,
    stream: IO[str] | None = None,
    quiet: bool = False,
    traceback_dir: str | Path | None = None,
    max_in_flight: int | None = None,
    gpu: str = "auto",
    on_done: Callable[[Outcome], None] | None = None,
) -> StageRun:
    """Run ``stage`` for ``participants``: with ``inputs.ledger``, only those not up to date.

    Raises
    ------
    cluster.ClusterUnavailable
        no worker offers a resource the stage asks for (the tasks would wait forever).
    ValueError
        from the stage's ``prepare`` check (e.g. a model no participant's data fits).
    """
    from pipelines._dask import Outcome, map_participants
    from schemas.failures import Failure

    config = inputs.config.stage(stage.section)
    ledger = inputs.ledger
    name = stage.name
    if ledger is not None:
        keys = {pid: stage.key(inputs, pid) for pid in participants}
        skipped = {pid: r for pid in participants if (r := stage.skip(inputs, pid))}
        for pid, reason in skipped.items():
            if not ledger.is_current(pid, name, keys[pid]):
                ledger.record(pid, name, keys[pid], "skipped", detail={"reason": reason})
        eligible = [pid for pid in participants if pid not in skipped]
        present = stage.outputs(inputs) if stage.outputs is not None else None
        todo = [pid for pid in eligible if not ledger.is_current(pid, name, keys[pid])
                or (present is not None and pid not in present)]
    else:
        keys, eligible, todo, present = {}, list(participants), list(participants), None
    up_to_date = len(eligible) - len(todo)
    _event(events, "stage_started", stage=name, todo=len(todo), up_to_date=up_to_date)
    if todo:
        stage.prepare(inputs, todo)
    client = clients.get() if todo else None  # stage timings exclude the cluster's start-up
    progress = StageProgress(name, total=len(todo), skipped=up_to_date, stream=stream,
                             quiet=quiet)
    finished: list[Outcome] = []
    ok_now: set[str] = set()

    def done(outcome: Outcome) -> None:
        pid = outcome.participant_id
        if outcome.ok and stage.persist is not None:
            try:
                stage.persist(inputs, pid, outcome.value)
            except Exception as e:  # a malformed result fails this participant, not the run
                outcome = Outcome(pid, name, None, Failure(
                    pid, name, type(e).__name__,
                    f"participant {pid}: {name}: result not storable: {e}"), outcome.seconds)
        if not outcome.ok and stage.discard is not None:
            stage.discard(inputs, pid)
        if ledger is not None:
            if outcome.ok:
                if stage.changed(outcome.value):
                    for later in stage.invalidates:
                        ledger.forget(pid, later)
                ledger.record(pid, name, keys[pid], "done", seconds=outcome.seconds,
                              detail=stage.detail(outcome.value))
            else:
                ledger.record(pid, name, keys[pid], "failed", seconds=outcome.seconds)
                if outcome.failure.error_type == "StoreDamaged" and name != "ingest":
                    _set_aside(inputs, pid, outcome.failure.message, events)
        if outcome.ok:
            ok_now.add(pid)
            _event(events, "participant_done", stage=name, participant_id=pid,
                   seconds=round(outcome.seconds, 4))
        else:
            f = outcome.failure
            _event(events, "participant_failed", stage=name, participant_id=f.participant_id,
                   error_type=f.error_type, message=f.message, traceback_file=f.traceback_file)
        finished.append(outcome)
        progress.update(outcome)
        if on_done is not None:
            on_done(outcome)

    if todo:
        from cluster.base import ClusterUnavailable
        from pipelines._dask import check_resources

        resources = gpu_resources(stage, config, gpu, client)
        if client is not None:
            try:
                check_resources(client, resources)
            except RuntimeError as e:  # no worker could ever run these tasks
                raise ClusterUnavailable(f"{name}: {e}") from e
        if resources:
            _event(events, "stage_resources", stage=name, resources=resources)
        map_participants(
            stage.task, [stage.item(inputs, pid) for pid in todo], stage=name,
            participant_id=stage.participant_id, client=client, resources=resources,
            max_in_flight=max_in_flight, traceback_dir=traceback_dir, on_done=done,
            store=str(inputs.store), config=config, **stage.kwargs(inputs),
        )
    progress.close()
    summary = progress.summary()
    _event(events, "stage_finished", **summary)
    if ledger is not None:
        current = [pid for pid in participants if ledger.is_current(pid, name, keys[pid])
                   and (present is None or pid in present or pid in ok_now
                        or pid not in eligible)]
    else:
        current = [pid for pid in participants if pid in ok_now]
    return StageRun(name, finished, summary, current)


@dataclass
class CohortRun:
    """What a cohort stage did: its result (the exception it raised when it failed), its
    failure and summary."""

    stage: str
    value: Any = None
    failure: Failure | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failure is None


def run_cohort_stage(stage: CohortStage, inputs: StageInputs, upstream: dict[str, Any], *,
                     events: EventLog | None = None,
                     echo: Callable[[str], None] = lambda msg: None) -> CohortRun:
    """Run a cohort stage in this process; a failure is returned (with its traceback written
    to ``tracebacks/<stage>-cohort.txt``), never raised, so later stages still run."""
    from schemas.failures import Failure

    _event(events, "stage_started", stage=stage.name, todo=1, up_to_date=0)
    t0 = time.perf_counter()
    value, failure = None, None
    try:
        value = stage.run(stage, inputs, upstream)
    except Exception as e:  # the tables are written; report the failure and go on
        path = inputs.traceback_dir / f"{stage.name}-{COHORT_ID}.txt"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(traceback.format_exception(e)))
        except OSError:  # a failing disk must not hide the original error
            log.warning("could not write traceback to %s", path)
        msg = f"{COHORT_ID}: {stage.name}: {e}"
        failure = Failure(COHORT_ID, stage.name, type(e).__name__, msg, str(path))
        _event(events, "cohort_failed", stage=stage.name, error_type=type(e).__name__,
               message=msg)
        echo(f"error: {stage.name} failed: {e} (traceback: {path})")
        value = e  # later stages may want it (the report shows why the fit failed)
    seconds = time.perf_counter() - t0
    ok = failure is None
    summary = {"stage": stage.name, "processed": 1, "done": int(ok), "failed": int(not ok),
               "up_to_date": 0, "wall_s": round(seconds, 3),
               "throughput_per_s": round(1 / seconds, 4) if seconds > 0 else 0.0,
               "mean_task_s": round(seconds, 4)}
    _event(events, "stage_finished", **summary)
    return CohortRun(stage.name, value, failure, summary)


def run_stage(name: str, participants: list[str] | None = None, *, store: str | Path,
              config: Any = None, client: Client | None = None,
              traceback_dir: str | Path | None = None,
              on_done: Callable[[Outcome], None] | None = None, **inputs: Any) -> StageRun:
    """One participant stage of the registry for Python callers (what the stage's command
    runs, without a ledger): ``run_stage("segment", ids, store=..., model_path=...)``.

    Parameters
    ----------
    name : ``ingest``, ``segment`` or ``quantify``.
    participants : ids to process (default: every participant of ``inputs["manifest"]``).
    store : the cohort store.
    config : the stage's config object (default: its class's defaults).
    client : a connected ``distributed.Client``; None runs in this process.
    traceback_dir : where failing participants' tracebacks go.
    on_done : called with each Outcome as it completes.
    inputs : further :class:`jobs.stages.StageInputs` fields (``manifest``, ``covariates``,
        ``parts_dir``; ``models`` are resolved from the config when not given).
    """
    from jobs.stages import ParticipantStage, get_stage

    stage = get_stage(name)
    if not isinstance(stage, ParticipantStage):
        raise ValueError(f"stage {name!r} runs once per cohort, not per participant")
    if config is None:
        from jobs.runconfig import load_run_config

        config = load_run_config(None).stage(stage.section)
    if participants is None:
        participants = list(inputs["manifest"].participant_ids)
    if stage.resolve_models is not None and "models" not in inputs:
        inputs["models"] = stage.resolve_models(config)[0]
    return run_participant_stage(
        stage, list(participants), command_inputs(name, store, config, **inputs),
        clients=Clients(None, client=client), quiet=True, traceback_dir=traceback_dir,
        on_done=on_done)
