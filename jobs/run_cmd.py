"""``myocohort run``: every stage of the registry over a cohort, incrementally.

The participant stages (ingest -> segment, skipped for participants with ``labels`` rows ->
quantify) run on the cluster, one task per participant; then, in this process, the cohort
stages (aggregate -> fit -> report) run on all participants' persisted results.  The ledger
(``ledger.sqlite``) decides what is already up to date, so reruns only do new or changed work.
Each stage is wired once, in :mod:`jobs.stages`, and driven by :mod:`jobs.driver`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import typer

from jobs.driver import COHORT_ID, Clients, run_cohort_stage, run_participant_stage
from jobs.options import (
    EXIT_BAD_INPUT,
    EXIT_FAILURES,
    EXIT_NO_CLUSTER,
    EXIT_OK,
    PlainHelpCommand,
    cluster_option,
    config_option,
    download_weights_option,
    error,
    model_input_option,
    model_option,
    with_segment_options,
)
from jobs.progress import LOG_NAME, EventLog, format_summary
from jobs.stages import STAGES, CohortStage, ParticipantStage, Stage, StageInputs
from jobs.workdir import (
    STORE_NAME,
    WorkdirError,
    check_workdir,
    forget_participants,
    lock,
    open_ledger,
    stale_participants,
)
from jobs.workdir import rebuild_ledger as rebuild_ledger_rows

if TYPE_CHECKING:
    from cluster.profile import Profile
    from jobs.runconfig import RunConfig
    from schemas.failures import Failure

__all__ = ["COHORT_ID", "EXIT_BAD_INPUT", "EXIT_FAILURES", "EXIT_NO_CLUSTER", "EXIT_OK",
           "RunResult", "run_pipeline"]


@dataclass
class RunResult:
    """What a run did: per-stage summaries, failures and the exit code."""

    workdir: Path
    stages: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    dashboard_link: str | None = None
    n_participants: int = 0
    n_in_tables: int = 0
    #: what the run finished with but should be read (a reduced or sparse fit)
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURES if self.failures else EXIT_OK


def _resolve_models(stages: tuple[Stage, ...], manifest: Any, config: RunConfig,
                    store: Path) -> tuple[tuple[Any, ...] | None, str]:
    """The segmentation models found and hashed before anything runs (their identity is part
    of the segment key); (None, "") when no participant needs segmenting."""
    for stage in stages:
        if isinstance(stage, ParticipantStage) and stage.resolve_models is not None:
            probe = StageInputs(store=store, config=config, version="", manifest=manifest)
            if any(not stage.skip(probe, pid) for pid in manifest.participant_ids):
                return stage.resolve_models(config.stage(stage.section))
    return None, ""


def run_pipeline(
    manifest_path: Path,
    covariates_path: Path | None,
    workdir: Path,
    *,
    profile: Profile,
    config: RunConfig | None = None,
    stages: tuple[Stage, ...] = STAGES,
    stream: IO[str] | None = None,
    echo: Callable[[str], None] | None = None,
    rebuild_ledger: bool = False,
    prune: bool = False,
    parents: bool = False,
) -> RunResult:
    """Run every stage over the cohort, incrementally.

    Parameters
    ----------
    manifest_path, covariates_path : the cohort's manifest and covariates (CSV/Parquet).
    workdir : output folder (layout in ``docs/run.md``); created when missing.
    profile : where the work runs (:func:`cluster.load_profile`).
    config : every stage's settings (the segmentation models: ``segment.models``) (:func:`jobs.runconfig.load_run_config`); defaults when
        None.
    stages : the stages to run, in order (default: the registry; tests swap in fakes).
    stream : where live progress goes (stderr by default).
    echo : prints one user message (``print`` to stderr by default).
    rebuild_ledger : a damaged ledger is moved aside and rebuilt from the store's own
        attributes (:func:`jobs.workdir.rebuild_ledger`) instead of refused.
    prune : erase participants the manifest no longer lists (store group, parts, ledger
        rows, tracebacks, failure rows), as ``myocohort forget`` does.
    parents : create the workdir's missing parent folders (default: refuse, naming them).

    Raises
    ------
    schemas.manifest.ManifestError
        the manifest or covariates break their contract (nothing is run).
    jobs.workdir.WorkdirError
        the workdir is a file, read-only, in use by another run, or its ledger is damaged
        (nothing is run).
    ValueError
        a segmentation model is missing or unusable (nothing is run).
    cluster.ClusterUnavailable
        the profile's cluster cannot start.
    """
    from jobs.runconfig import load_run_config, pipeline_version
    from schemas.covariates import load_covariates
    from schemas.manifest import load_manifest

    t_run = time.perf_counter()
    stream = stream if stream is not None else sys.stderr
    echo = echo or (lambda msg: print(msg, file=stream, flush=True))
    config = config or load_run_config(None)
    manifest = load_manifest(manifest_path)
    covariates = load_covariates(covariates_path) if covariates_path is not None else None
    workdir = Path(workdir).expanduser().absolute()
    store = workdir / STORE_NAME
    models, model_hash = _resolve_models(stages, manifest, config, store)
    workdir = check_workdir(workdir, parents=parents)
    store = workdir / STORE_NAME
    result = RunResult(workdir=workdir, n_participants=len(manifest))
    version = pipeline_version()

    with ExitStack() as stack:
        held = lock(stack, workdir, "workdir")
        lock(stack, store, "store")
        ledger, damaged = open_ledger(workdir, rebuild=rebuild_ledger)
        stack.callback(ledger.close)
        events = stack.enter_context(EventLog(workdir / LOG_NAME))
        inputs = StageInputs(store=store, config=config, version=version,
                             parts_dir=workdir / "tables" / "parts", workdir=workdir,
                             manifest=manifest, covariates=covariates, ledger=ledger,
                             models=models, model_hash=model_hash)
        interrupted = ledger.mark_interrupted()
        run_id = ledger.start_run(str(manifest.source), profile.name)
        events.event("run_started", run_id=run_id, manifest=str(manifest.source),
                     participants=len(manifest), profile=profile.name, version=version,
                     workdir=str(workdir), config_source=config.source)
        if interrupted or held.previous:
            echo(f"warning: an earlier run on this workdir did not finish (run(s) "
                 f"{interrupted or '?'}); marked interrupted, resuming from what it finished")
            events.event("runs_interrupted", run_ids=interrupted)
        if damaged is not None:
            n = rebuild_ledger_rows(ledger, inputs, stages)
            echo(f"warning: the ledger was damaged and moved to {damaged}; rebuilt {n} "
                 "segmentation record(s) from the store")
            events.event("ledger_rebuilt", damaged=str(damaged), rows=n)
        stale = stale_participants(workdir, manifest.participant_ids)
        if stale and prune:
            gone = forget_participants(workdir, stale, ledger)
            echo(f"pruned {len(stale)} participant(s) no longer in the manifest")
            for pid in stale:
                events.event("participant_forgotten", participant_id=pid, reason="prune")
            events.event("pruned", **gone.__dict__)
            stale = []
        if covariates is not None:
            missing = [p for p in manifest.participant_ids if p not in covariates.index]
            if missing:
                echo(f"warning: {len(missing)} participant(s) have no covariates row (first: "
                     f"{missing[0]}); their covariates are empty in tables/cohort.parquet")
                events.event("covariates_missing", participants=missing)
            in_manifest = set(manifest.participant_ids)
            extra = [str(p) for p in covariates.index if p not in in_manifest]
            if extra:
                echo(f"warning: {len(extra)} covariates row(s) name no participant of the "
                     f"manifest (first: {extra[0]}); they are left out")
                events.event("covariates_extra", participants=extra)
        cluster_stack = stack.enter_context(ExitStack())
        clients = Clients(profile, cluster_stack, echo, events)
        status = "failed"
        try:
            _run_stages(stages, inputs, clients, events, result, stream, echo)
            status = "finished"
            if stale:
                echo(f"note: {len(stale)} participant(s) in the workdir are no longer in the "
                     f"manifest ({', '.join(stale[:5])}{', ...' if len(stale) > 5 else ''}): "
                     "their data are kept; erase them with `myocohort forget` or "
                     "`myocohort run --prune`")
                events.event("participants_not_in_manifest", participants=stale)
        finally:
            result.dashboard_link = clients.dashboard_link
            result.seconds = time.perf_counter() - t_run
            _write_failures(workdir, result.failures)
            summary = {"stages": result.stages, "failures": len(result.failures),
                       "seconds": round(result.seconds, 3)}
            ledger.finish_run(run_id, status, summary)
            events.event("run_finished", run_id=run_id, status=status, **summary)
    return result


def _run_stages(stages: tuple[Stage, ...], inputs: StageInputs, clients: Clients,
                events: EventLog, result: RunResult, stream: IO[str],
                echo: Callable[[str], None]) -> None:
    """Each stage in order: participant stages on the cluster, each for the participants the
    stage before left current; cohort stages here, after the cluster is shut down."""
    upstream: dict[str, Any] = {}
    failed: set[str] = set()
    max_in_flight = inputs.config.run.max_in_flight or clients.max_in_flight
    per_participant = [s for s in stages if isinstance(s, ParticipantStage)]

    order = list(inputs.manifest.participant_ids)

    def participant_stages(participants: list[str]) -> None:
        """Every participant stage for ``participants``, each stage for those the stage
        before left current; ``upstream[stage]`` gathers the current ones of every pass."""
        current, redo = participants, set(participants)
        for stage in per_participant:
            run = run_participant_stage(
                stage, current, inputs, clients=clients, events=events, stream=stream,
                traceback_dir=inputs.traceback_dir, max_in_flight=max_in_flight,
                gpu=inputs.config.run.gpu)
            result.stages.append(run.summary)
            result.failures += run.failures
            now = (set(upstream.get(stage.name, ())) - redo) | set(run.current)
            upstream[stage.name] = [p for p in order if p in now]
            current = run.current

    participant_stages(list(inputs.manifest.participant_ids))
    # a stage that found a participant's stored arrays damaged while reading them set the
    # group aside (jobs.driver): rebuild those participants from their sources once, now
    damaged = sorted({f.participant_id for f in result.failures
                      if f.error_type == "StoreDamaged" and f.stage != "ingest"})
    if damaged:
        echo(f"warning: {len(damaged)} participant(s) had damaged stored arrays "
             f"({', '.join(damaged[:5])}{', ...' if len(damaged) > 5 else ''}): rebuilding "
             "them from their sources")
        events.event("rebuilding_damaged", participants=damaged)
        result.failures = [f for f in result.failures if f.participant_id not in damaged]
        participant_stages(damaged)
    for stage in stages:
        if isinstance(stage, ParticipantStage):
            continue
        assert isinstance(stage, CohortStage)
        clients.stack.close()  # free the workers before the cohort stages
        if any(n in failed for n in stage.needs):
            continue
        run = run_cohort_stage(stage, inputs, upstream, events=events, echo=echo)
        result.stages.append(run.summary)
        upstream[stage.name] = run.value
        if not run.ok:
            result.failures.append(run.failure)
            failed.add(stage.name)
        elif stage.name == "aggregate":
            result.n_in_tables = len(run.value)
            echo(f"tables: {len(run.value)} participant(s) in {inputs.tables_dir}")
        elif stage.name == "fit" and getattr(run.value, "status", "ok") != "ok":
            fit = run.value
            result.warnings += [f"fit: status {fit.status}", *(f"fit: {w}" for w in
                                                              fit.warnings)]
            events.event("fit_warnings", status=fit.status, warnings=list(fit.warnings))
        elif stage.name == "report":
            echo(f"report: {run.value}")


def _write_failures(workdir: Path, failures: list[Failure]) -> Path:
    """``failures.parquet`` of this run (typed and empty when nothing failed), atomically."""
    from pipelines._io import write_parquet_atomic
    from schemas.failures import failures_frame

    return write_parquet_atomic(failures_frame(failures), workdir / "failures.parquet")


def _log_refusal(workdir: Path, message: str, **fields: Any) -> None:
    """Record why a run was refused in ``run.log.jsonl`` (when the workdir can hold it)."""
    wd = Path(workdir).expanduser()
    if not wd.is_dir() and not wd.parent.is_dir():  # never create missing parents for this
        return
    try:
        wd.mkdir(exist_ok=True)
        with EventLog(Path(workdir) / LOG_NAME) as events:
            events.event("run_refused", message=message, **fields)
    except OSError:  # the workdir itself is unusable: the terminal has the message
        pass


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
def run(
    manifest: Path = typer.Argument(..., metavar="MANIFEST",
                                    help="Manifest CSV or Parquet (one row per image)."),
    covariates: Path = typer.Option(..., "--covariates", metavar="COVARIATES",
                                    help="Covariates CSV or Parquet (one row per "
                                    "participant)."),
    workdir: Path = typer.Option(..., "--workdir", metavar="DIR",
                                 help="Output folder: store.zarr, tables/, results/, "
                                 "failures.parquet, ledger.sqlite, run.log.jsonl."),
    cluster: str = cluster_option("local"),
    model: list[str] | None = model_option(),
    model_input: str | None = model_input_option(),
    download_weights: bool = download_weights_option(),
    config: Path | None = config_option(),
    max_in_flight: int | None = typer.Option(None, "--max-in-flight", min=1, metavar="N",
                                             help="Most participants submitted at once "
                                             "(default: 2 per worker thread)."),
    gpu: str | None = typer.Option(None, "--gpu", metavar="MODE",
                                   help="Route segmentation (and GPU quantify) to workers "
                                   "offering a GPU: auto (when some worker offers one), on, "
                                   "off."),
    prune: bool = typer.Option(False, "--prune",
                               help="Erase participants the manifest no longer lists (store "
                               "group, results, ledger rows), as `myocohort forget` does."),
    parents: bool = typer.Option(False, "--parents",
                                 help="Create the workdir's missing parent folders."),
    rebuild_ledger: bool = typer.Option(False, "--rebuild-ledger",
                                        help="Move a damaged ledger aside and rebuild it from "
                                        "the store (segmentations are not redone)."),
) -> None:
    """Run ingest, segment, quantify, aggregate, fit and report over a cohort.

    Incremental: participants already done with the same inputs, model and settings are not
    redone. Exit code 0 when everything succeeded, 1 when some participant or the fit
    failed (see failures.parquet), 2 for invalid input (nothing is run), 3 when the cluster
    cannot start.
    """
    from cluster.base import ClusterUnavailable
    from cluster.profile import ProfileError, load_profile
    from jobs.runconfig import ConfigError, RunOptions, load_run_config
    from schemas.manifest import ManifestError

    try:
        profile = load_profile(cluster)
        cfg = load_run_config(config)
        overrides = {k: v for k, v in (("max_in_flight", max_in_flight), ("gpu", gpu))
                     if v is not None}
        if overrides:
            try:
                cfg = dataclasses.replace(cfg, run=RunOptions(**{
                    **dataclasses.asdict(cfg.run), **overrides}))
            except ValueError as e:
                raise ValueError(f"--gpu/--max-in-flight: {e}") from None
        cfg = with_segment_options(cfg, model, model_input, download_weights)
    except ConfigError as e:
        error(str(e))
        _log_refusal(workdir, str(e), problems=[p.to_dict() for p in e.problems])
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except (ProfileError, ValueError) as e:
        error(str(e))
        _log_refusal(workdir, str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    try:
        res = run_pipeline(manifest, covariates, workdir, profile=profile, config=cfg,
                           rebuild_ledger=rebuild_ledger, prune=prune, parents=parents)
    except WorkdirError as e:  # a file, read-only, in use, damaged ledger: nothing written
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except (ManifestError, ValueError) as e:  # bad manifest, covariates, model or store
        error(str(e))
        _log_refusal(workdir, str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except ClusterUnavailable as e:
        error(str(e))
        raise typer.Exit(EXIT_NO_CLUSTER) from None
    print(format_summary(res.stages, res.seconds, len(res.failures), res.warnings),
          file=sys.stderr)
    print(f"workdir: {res.workdir}  ({res.n_in_tables} of {res.n_participants} participant(s) "
          "in the tables)")
    raise typer.Exit(res.exit_code)


def register(app: typer.Typer) -> None:
    """Add ``run`` to the typer app."""
    app.command("run", cls=PlainHelpCommand, short_help="Every stage over a cohort, incrementally.")(run)
