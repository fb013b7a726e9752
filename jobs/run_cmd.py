"""``myocohort run`` (the whole pipeline over a cohort) and ``myocohort cluster`` (profiles).

``run`` wires the stages: ingest -> segment (skipped for participants with ``labels`` rows)
-> quantify on the cluster, one task per participant; then, in this process, aggregate ->
fit -> report from all participants' persisted results.  The ledger (``ledger.sqlite``)
decides what is already up to date, so reruns only do new or changed work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import typer

from jobs.ledger import LEDGER_NAME, Ledger, StageKey, stable_hash
from jobs.progress import LOG_NAME, EventLog, StageProgress, format_summary

if TYPE_CHECKING:
    from distributed import Client

    from cluster.profile import Profile
    from jobs.runconfig import RunConfig
    from pipelines._dask import Outcome
    from schemas.failures import Failure
    from schemas.manifest import Manifest, ParticipantImages

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURES, EXIT_BAD_INPUT, EXIT_NO_CLUSTER = 0, 1, 2, 3
COHORT_ID = "cohort"  # participant_id of failures that concern the whole cohort (fit, report)


# --------------------------------------------------------------------------------------
# The stage functions (real ones by default; tests pass small fakes)
# --------------------------------------------------------------------------------------
def _hash_path(path: Path) -> str:
    """SHA-256 of a file, or of every file under a folder (relative names and bytes)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def real_model_hash(model_path: Path | None) -> str:
    """Hash of the segmentation model's weights (the shipped default when None)."""
    if model_path is not None:
        if not Path(model_path).exists():
            raise ValueError(f"model {model_path}: no such file")
        return _hash_path(Path(model_path))[:32]
    from pipelines.segment import DEFAULT_MODEL_PATH

    default = Path(DEFAULT_MODEL_PATH)
    if not default.exists():
        raise ValueError(f"no default segmentation model shipped at {default}; pass --model")
    return _hash_path(default)[:32]


def _real_ingest(item: ParticipantImages, *, store: str, config: Any) -> Any:
    from pipelines.ingest import ingest_participant

    return ingest_participant(item, store=store, config=config)


def _real_segment(item: str, *, store: str, model_path: str | None, config: Any) -> Any:
    from pipelines.segment import segment_participant

    return segment_participant(item, store=store, model_path=model_path, config=config)


def _real_store_ids(store: Path) -> set[str]:
    from pipelines.store import participant_ids

    if not Path(store).exists():
        return set()
    return set(participant_ids(store))


def _real_fit(table: Any, spec: Any) -> Any:
    from pipelines.stats.model import fit_model

    return fit_model(table, spec)


def _real_report(workdir: Path, stats: Any = None) -> Path:
    from pipelines.report import build_report
    from pipelines.report.build import ReportConfig

    # the report's main model is the run's `stats` model, so report and fit.json agree
    config = ReportConfig(main=stats, nagq=stats.nagq) if stats is not None else None
    return build_report(workdir, config)


def _quantify_task(item: tuple[str, dict | None], *, store: str, config: Any) -> Any:
    from pipelines.aggregate import quantify_task

    return quantify_task(item, store=store, config=config)


@dataclass(frozen=True)
class StageFunctions:
    """The per-participant functions run on workers (module-level, so they pickle) and the
    cohort-level ones run here.  Tests replace them with small fakes."""

    ingest: Callable[..., Any] = _real_ingest
    segment: Callable[..., Any] = _real_segment
    quantify: Callable[..., Any] = _quantify_task
    store_ids: Callable[[Path], set[str]] = _real_store_ids
    model_hash: Callable[[Path | None], str] = real_model_hash
    fit: Callable[[Any, Any], Any] | None = _real_fit
    report: Callable[..., Path] | None = _real_report
    #: stage -> config object, replacing ``RunConfig.stage(name)`` (tests use their own)
    configs: tuple[tuple[str, Any], ...] = ()

    def config(self, run_config: RunConfig, stage: str) -> Any:
        for name, cfg in self.configs:
            if name == stage:
                return cfg
        return run_config.stage(stage)


# --------------------------------------------------------------------------------------
# Inputs -> ledger keys
# --------------------------------------------------------------------------------------
def _file_stamp(path: Path) -> list[Any]:
    try:
        if path.is_dir():
            return [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns]
                    for p in sorted(path.rglob("*")) if p.is_file()]
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return ["missing"]  # ingest reports the missing file with the participant's name


def input_fingerprint(images: ParticipantImages) -> str:
    """Cheap fingerprint of a participant's input files (paths, sizes, mtimes, label maps).

    It decides whether ingest must look at the files again; ingest's own content hash
    (``input_hash``) then decides whether anything downstream changed.
    """
    parts = [images.site]
    for ref in images.images:
        lm = getattr(ref.label_map, "name", None) if ref.label_map is not None else None
        parts.append([ref.station, ref.channel, str(ref.path), _file_stamp(ref.path), str(lm)])
    return stable_hash(*parts)


def _cov_row(covariates: Any, pid: str) -> dict[str, Any] | None:
    if covariates is None or pid not in covariates.index:
        return None
    row = {}
    for k, v in covariates.loc[pid].items():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            row[k] = None
        elif hasattr(v, "item"):
            row[k] = v.item()
        else:
            row[k] = v if not isinstance(v, str) else str(v)
        if row[k] is not None and type(row[k]).__name__ == "NAType":
            row[k] = None
    return row


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------
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

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURES if self.failures else EXIT_OK


class _LazyClient:
    """Starts the cluster only when some stage has work (a rerun with nothing to do never
    starts one)."""

    def __init__(self, profile: Profile, stack: ExitStack, echo: Callable[[str], None],
                 events: EventLog) -> None:
        self.profile, self.stack, self.echo, self.events = profile, stack, echo, events
        self.client: Client | None = None
        self.dashboard_link: str | None = None

    def get(self) -> Client:
        if self.client is None:
            from cluster.registry import backend_for

            backend = backend_for(self.profile)
            self.echo(f"starting cluster: profile {self.profile.name!r} ({backend.description})")
            self.client = self.stack.enter_context(backend.client())
            self.dashboard_link = backend.dashboard_link(self.client)
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
            self.echo(f"dashboard: {self.dashboard_link}  ({len(workers)} worker(s))")
            self.events.event("cluster_started", profile=self.profile.name,
                              backend=self.profile.backend, dashboard=self.dashboard_link,
                              workers=len(workers))
        return self.client


def run_pipeline(
    manifest_path: Path,
    covariates_path: Path | None,
    workdir: Path,
    *,
    profile: Profile,
    model_path: Path | None = None,
    config: RunConfig | None = None,
    stages: StageFunctions | None = None,
    stream: IO[str] | None = None,
    echo: Callable[[str], None] | None = None,
) -> RunResult:
    """Run every stage over the cohort, incrementally.

    Parameters
    ----------
    manifest_path, covariates_path : the cohort's manifest and covariates (CSV/Parquet).
    workdir : output folder (layout in ``docs/run.md``); created when missing.
    profile : where the work runs (:func:`cluster.load_profile`).
    model_path : segmentation weights; None for the shipped default model.
    config : stage settings; defaults for all stages when None.
    stages : the stage functions (tests pass fakes).
    stream : where live progress goes (stderr by default).
    echo : prints one user message (``print`` to stderr by default).

    Raises
    ------
    schemas.manifest.ManifestError
        the manifest or covariates break their contract (nothing is run).
    ValueError
        the segmentation model is missing (nothing is run).
    cluster.ClusterUnavailable
        the profile's cluster cannot start.
    """
    from jobs.runconfig import RunConfig, config_hash, pipeline_version
    from schemas.covariates import load_covariates
    from schemas.manifest import load_manifest

    t_run = time.perf_counter()
    stream = stream if stream is not None else sys.stderr
    echo = echo or (lambda msg: print(msg, file=stream, flush=True))
    stages = stages or StageFunctions()
    config = config or RunConfig()
    manifest = load_manifest(manifest_path)
    covariates = load_covariates(covariates_path) if covariates_path is not None else None
    # the model is checked before anything runs (its hash is part of the segment key)
    needs_model = any(not p.has_labels for p in manifest)
    model_hash = stages.model_hash(model_path) if needs_model else ""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "store.zarr"
    tables_dir = workdir / "tables"
    parts_dir = tables_dir / "parts"
    tb_dir = workdir / "tracebacks"
    version = pipeline_version()
    result = RunResult(workdir=workdir, n_participants=len(manifest))
    max_in_flight = config.run.max_in_flight or profile.max_in_flight

    with ExitStack() as stack:
        ledger = stack.enter_context(Ledger(workdir / LEDGER_NAME))
        events = stack.enter_context(EventLog(workdir / LOG_NAME))
        run_id = ledger.start_run(str(manifest.source), profile.name)
        events.event("run_started", run_id=run_id, manifest=str(manifest.source),
                     participants=len(manifest), profile=profile.name, version=version,
                     workdir=str(workdir))
        if covariates is not None:
            missing = [p for p in manifest.participant_ids if p not in covariates.index]
            if missing:
                echo(f"warning: {len(missing)} participant(s) have no covariates row (first: "
                     f"{missing[0]}); their covariates are empty in tables/cohort.parquet")
                events.event("covariates_missing", participants=missing)
        cluster_stack = stack.enter_context(ExitStack())
        lazy = _LazyClient(profile, cluster_stack, echo, events)
        status = "failed"
        try:
            current = _run_stages(
                manifest, covariates, store, parts_dir, tb_dir, ledger, events, lazy, result,
                stages=stages, config=config, model_path=model_path, model_hash_value=model_hash,
                version=version, max_in_flight=max_in_flight, stream=stream,
                config_hash=config_hash, echo=echo)
            cluster_stack.close()  # free the workers before the cohort-level stages
            _cohort_stages(manifest, current, covariates, workdir, tables_dir, parts_dir,
                           tb_dir, ledger, events, result, stages=stages, config=config,
                           stream=stream, echo=echo)
            status = "finished"
        finally:
            result.dashboard_link = lazy.dashboard_link
            result.seconds = time.perf_counter() - t_run
            _write_failures(workdir, result.failures)
            summary = {"stages": result.stages, "failures": len(result.failures),
                       "seconds": round(result.seconds, 3)}
            ledger.finish_run(run_id, status, summary)
            events.event("run_finished", run_id=run_id, status=status, **summary)
    return result


def _stage(stage: str, fn: Callable[..., Any], items: list[Any], *, lazy: _LazyClient,
           events: EventLog, stream: IO[str], up_to_date: int,
           on_outcome: Callable[[Outcome], None], participant_id: Callable[[Any], str],
           resources: Callable[[Client], dict[str, float] | None] | None = None,
           max_in_flight: int | None, tb_dir: Path, **kwargs: Any
           ) -> tuple[list[Outcome], StageProgress]:
    """Fan one stage out over ``items`` with progress, ledger callbacks and the JSON log."""
    from pipelines._dask import map_participants

    events.event("stage_started", stage=stage, todo=len(items), up_to_date=up_to_date)
    client = lazy.get() if items else None  # stage timings exclude the cluster's start-up
    progress = StageProgress(stage, total=len(items), skipped=up_to_date, stream=stream)

    def on_done(outcome: Outcome) -> None:
        on_outcome(outcome)
        progress.update(outcome)
        if outcome.ok:
            events.event("participant_done", stage=stage, participant_id=outcome.participant_id,
                         seconds=round(outcome.seconds, 4))
        else:
            f = outcome.failure
            events.event("participant_failed", stage=stage, participant_id=f.participant_id,
                         error_type=f.error_type, message=f.message,
                         traceback_file=f.traceback_file)

    outcomes: list[Outcome] = []
    if client is not None:
        from cluster.base import ClusterUnavailable
        from pipelines._dask import check_resources

        res = resources(client) if resources is not None else None
        try:
            check_resources(client, res)
        except RuntimeError as e:  # no worker could ever run these tasks
            raise ClusterUnavailable(f"{stage}: {e}") from e
        if res:
            events.event("stage_resources", stage=stage, resources=res)
        outcomes = map_participants(
            fn, items, stage=stage, participant_id=participant_id, client=client,
            resources=res, max_in_flight=max_in_flight, traceback_dir=tb_dir, on_done=on_done,
            **kwargs,
        )
    progress.close()
    events.event("stage_finished", **progress.summary())
    return outcomes, progress


def _gpu_resources(mode: str) -> Callable[[Client], dict[str, float] | None]:
    def pick(client: Client) -> dict[str, float] | None:
        from pipelines._dask import workers_offering

        if mode == "off":
            return None
        if mode == "on" or workers_offering(client, {"GPU": 1}):
            return {"GPU": 1}  # "on" without GPU workers fails in check_resources, clearly
        return None

    return pick


def _run_stages(manifest: Manifest, covariates: Any, store: Path, parts_dir: Path,
                tb_dir: Path, ledger: Ledger, events: EventLog, lazy: _LazyClient,
                result: RunResult, *, stages: StageFunctions, config: RunConfig,
                model_path: Path | None, model_hash_value: str, version: str,
                max_in_flight: int | None, stream: IO[str], config_hash: Callable[[Any], str],
                echo: Callable[[str], None]) -> list[str]:
    """ingest -> segment -> quantify on the cluster, each only for what is not up to date.

    Returns the participants (manifest order) whose quantify result is current: only they
    go into the tables (an old part of a participant whose new input failed is stale)."""
    from pipelines.aggregate import has_part, remove_part, write_part

    common = dict(lazy=lazy, events=events, stream=stream, max_in_flight=max_in_flight,
                  tb_dir=tb_dir)
    by_id = {p.participant_id: p for p in manifest}
    order = list(manifest.participant_ids)

    # ---- ingest -------------------------------------------------------------------------
    ingest_cfg = stages.config(config, "ingest")
    ingest_keys = {pid: StageKey(input_fingerprint(by_id[pid]), version, "",
                                 config_hash(ingest_cfg)) for pid in order}
    in_store = stages.store_ids(store)
    todo = [pid for pid in order
            if not ledger.is_current(pid, "ingest", ingest_keys[pid]) or pid not in in_store]

    def ingest_done(o: Outcome) -> None:
        pid = o.participant_id
        if not o.ok:
            ledger.record(pid, "ingest", ingest_keys[pid], "failed", seconds=o.seconds)
            return
        content = getattr(o.value, "input_hash", None) or ingest_keys[pid].input_hash
        written = bool(getattr(o.value, "written", True))
        if written:  # a rewritten group has lost its labels/ff: everything downstream is stale
            ledger.forget(pid, "segment")
            ledger.forget(pid, "quantify")
        ledger.record(pid, "ingest", ingest_keys[pid], "done", seconds=o.seconds,
                      detail={"content_hash": content, "written": written})

    outcomes, prog = _stage("ingest", stages.ingest, [by_id[p] for p in todo],
                            up_to_date=len(order) - len(todo), on_outcome=ingest_done,
                            participant_id=lambda it: it.participant_id,
                            store=str(store), config=ingest_cfg, **common)
    result.stages.append(prog.summary())
    result.failures += [o.failure for o in outcomes if not o.ok]
    ingested = [pid for pid in order if ledger.is_current(pid, "ingest", ingest_keys[pid])]
    content = {pid: ledger.detail(pid, "ingest").get("content_hash", "") for pid in ingested}

    # ---- segment ------------------------------------------------------------------------
    seg_cfg = stages.config(config, "segment")
    labelled = [pid for pid in ingested if by_id[pid].has_labels]
    to_segment = [pid for pid in ingested if not by_id[pid].has_labels]
    model_hash = model_hash_value
    seg_keys = {pid: StageKey(content[pid], version, model_hash, config_hash(seg_cfg))
                for pid in to_segment}
    for pid in labelled:  # labels come from the manifest: nothing to segment
        key = StageKey(content[pid], version, "manifest-labels", "")
        if not ledger.is_current(pid, "segment", key):
            ledger.record(pid, "segment", key, "skipped", detail={"reason": "labels in manifest"})
    todo = ledger.todo(to_segment, "segment", seg_keys)

    def segment_done(o: Outcome) -> None:
        pid = o.participant_id
        if o.ok:
            ledger.forget(pid, "quantify")
        ledger.record(pid, "segment", seg_keys[pid], "done" if o.ok else "failed",
                      seconds=o.seconds)

    outcomes, prog = _stage("segment", stages.segment, todo,
                            up_to_date=len(to_segment) - len(todo), on_outcome=segment_done,
                            participant_id=lambda it: it,
                            resources=_gpu_resources(config.run.gpu),
                            store=str(store), model_path=str(model_path) if model_path else None,
                            config=seg_cfg, **common)
    result.stages.append(prog.summary())
    result.failures += [o.failure for o in outcomes if not o.ok]
    segmented = [pid for pid in ingested
                 if (row := ledger.get(pid, "segment")) is not None
                 and row.state in ("done", "skipped")
                 and (pid in labelled or row.key == seg_keys[pid].key)]

    # ---- quantify -----------------------------------------------------------------------
    q_cfg = stages.config(config, "quantify")
    covs = {pid: _cov_row(covariates, pid) for pid in segmented}
    q_keys = {pid: StageKey(stable_hash(content[pid], ledger.get(pid, "segment").key, covs[pid]),
                            version, "", config_hash(q_cfg)) for pid in segmented}
    todo = [pid for pid in segmented
            if not ledger.is_current(pid, "quantify", q_keys[pid]) or not has_part(parts_dir, pid)]
    q_device = str(getattr(q_cfg, "device", "cpu"))

    def quantify_done(o: Outcome) -> None:
        pid = o.participant_id
        if o.ok:
            try:
                write_part(parts_dir, pid, o.value.muscle_metrics, o.value.participant_metrics)
            except Exception as e:  # a malformed result fails this participant, not the run
                from schemas.failures import Failure

                remove_part(parts_dir, pid)
                f = Failure(pid, "quantify", type(e).__name__,
                            f"participant {pid}: quantify: result not storable: {e}")
                result.failures.append(f)
                ledger.record(pid, "quantify", q_keys[pid], "failed", seconds=o.seconds)
                return
        else:
            remove_part(parts_dir, pid)
        ledger.record(pid, "quantify", q_keys[pid], "done" if o.ok else "failed",
                      seconds=o.seconds)

    gpu_mode = config.run.gpu if q_device in ("gpu", "auto") else "off"
    outcomes, prog = _stage("quantify", stages.quantify, [(pid, covs[pid]) for pid in todo],
                            up_to_date=len(segmented) - len(todo), on_outcome=quantify_done,
                            participant_id=lambda it: it[0],
                            resources=_gpu_resources(gpu_mode) if q_device == "gpu" else None,
                            store=str(store), config=q_cfg, **common)
    result.stages.append(prog.summary())
    result.failures += [o.failure for o in outcomes if not o.ok]
    return [pid for pid in segmented
            if ledger.is_current(pid, "quantify", q_keys[pid]) and has_part(parts_dir, pid)]


def _cohort_stages(manifest: Manifest, current: list[str], covariates: Any, workdir: Path, tables_dir: Path,
                   parts_dir: Path, tb_dir: Path, ledger: Ledger, events: EventLog,
                   result: RunResult, *, stages: StageFunctions, config: RunConfig,
                   stream: IO[str], echo: Callable[[str], None]) -> None:
    """aggregate -> fit -> report, in this process, from every participant's parts."""
    import traceback

    from pipelines.aggregate import build_cohort_table, read_parts, write_cohort_tables
    from schemas.failures import Failure

    def cohort_failure(stage: str, e: BaseException) -> None:
        path = tb_dir / f"{stage}-{COHORT_ID}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(e)))
        msg = f"{COHORT_ID}: {stage}: {e}"
        result.failures.append(Failure(COHORT_ID, stage, type(e).__name__, msg, str(path)))
        events.event("cohort_failed", stage=stage, error_type=type(e).__name__, message=msg)
        echo(f"error: {stage} failed: {e} (traceback: {path})")

    t0 = time.perf_counter()
    muscle_df, participant_df = read_parts(parts_dir, current)
    result.n_in_tables = len(participant_df)
    if participant_df.empty:
        cohort_failure("aggregate", RuntimeError("no participant was quantified; no tables"))
        return
    sites = {p.participant_id: p.site for p in manifest}
    cohort_df = build_cohort_table(participant_df, covariates, sites)
    paths = write_cohort_tables(tables_dir, muscle_df, participant_df, cohort_df)
    dt = time.perf_counter() - t0
    result.stages.append(_cohort_summary("aggregate", dt))
    events.event("stage_finished", **result.stages[-1],
                 tables={k: str(v) for k, v in paths.items()})
    echo(f"tables: {len(participant_df)} participant(s) in {tables_dir}")

    results_dir = workdir / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "fit.json").unlink(missing_ok=True)  # never leave a stale fit beside new tables
    fit_ok = False
    if stages.fit is not None:
        t0 = time.perf_counter()
        try:
            spec = stages.config(config, "stats")
            fit = stages.fit(cohort_df, spec)
            text = fit.to_json() if hasattr(fit, "to_json") else _json_dumps(fit)
            tmp = results_dir / ".fit.json.tmp"
            tmp.write_text(text if isinstance(text, str) else _json_dumps(text))
            tmp.replace(results_dir / "fit.json")
            fit_ok = True
        except Exception as e:  # the tables are written; report the fit failure and go on
            cohort_failure("fit", e)
        result.stages.append(_cohort_summary("fit", time.perf_counter() - t0, ok=fit_ok))
        events.event("stage_finished", **result.stages[-1])
    if stages.report is not None:  # the report runs its own analyses: it does not need fit.json
        t0 = time.perf_counter()
        ok = False
        try:
            path = stages.report(workdir, stats=stages.config(config, "stats"))
            echo(f"report: {path}")
            ok = True
        except Exception as e:
            cohort_failure("report", e)
        result.stages.append(_cohort_summary("report", time.perf_counter() - t0, ok=ok))
        events.event("stage_finished", **result.stages[-1])


def _json_dumps(obj: Any) -> str:
    import json

    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, indent=2, default=str)


def _cohort_summary(stage: str, seconds: float, ok: bool = True) -> dict[str, Any]:
    return {"stage": stage, "processed": 1, "done": int(ok), "failed": int(not ok),
            "up_to_date": 0, "wall_s": round(seconds, 3),
            "throughput_per_s": round(1 / seconds, 4) if seconds > 0 else 0.0,
            "mean_task_s": round(seconds, 4)}


def _write_failures(workdir: Path, failures: list[Failure]) -> Path:
    """``failures.parquet`` of this run (typed and empty when nothing failed), atomically."""
    import os

    from schemas.failures import failures_frame

    path = workdir / "failures.parquet"
    tmp = path.with_name(f".failures.parquet.tmp-{os.getpid()}")
    failures_frame(failures).to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
def run(
    manifest: Path = typer.Argument(..., help="Manifest CSV or Parquet (one row per image)."),
    covariates: Path = typer.Option(..., "--covariates",
                                    help="Covariates CSV/Parquet (one row per participant)."),
    workdir: Path = typer.Option(..., "--workdir", help="Output folder: store.zarr, tables/, "
                                 "results/, failures.parquet, ledger.sqlite, run.log.jsonl."),
    cluster: str = typer.Option("local", "--cluster", help="Cluster profile: local, local-cuda, "
                                "slurm, kubernetes, a YAML profile file, or tcp://host:port."),
    model: Path | None = typer.Option(None, "--model", help="Segmentation model weights "
                                      "(default: the shipped model)."),
    config: Path | None = typer.Option(None, "--config", help="Run config YAML with per-stage "
                                       "settings (sections run, ingest, segment, quantify, "
                                       "stats; see docs/run.md)."),
    max_in_flight: int | None = typer.Option(None, "--max-in-flight", min=1, help="Most "
                                             "participants submitted at once (default: 2 per "
                                             "worker thread)."),
    gpu: str | None = typer.Option(None, "--gpu", help="Route segmentation to GPU workers: "
                                   "auto (when some worker offers GPU), on, off."),
) -> None:
    """Run ingest, segment, quantify, aggregate, fit and report over a cohort.

    Incremental: participants already done with the same inputs, model and settings are not
    redone.  Exit code 0 when everything succeeded, 1 when some participant or the fit
    failed (see failures.parquet), 2 for invalid input, 3 when the cluster cannot start.
    """
    from cluster.base import ClusterUnavailable
    from cluster.profile import ProfileError, load_profile
    from jobs.runconfig import load_run_config
    from schemas.manifest import ManifestError

    try:
        profile = load_profile(cluster)
        cfg = load_run_config(config)
        if max_in_flight is not None or gpu is not None:
            run_opts = dataclasses.replace(
                cfg.run, **({"max_in_flight": max_in_flight} if max_in_flight else {}),
                **({"gpu": gpu} if gpu is not None else {}))
            cfg = dataclasses.replace(cfg, run=run_opts)
        if model is not None and not model.exists():
            raise ValueError(f"model {model}: no such file")
    except (ProfileError, ManifestError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    try:
        res = run_pipeline(manifest, covariates, workdir, profile=profile, model_path=model,
                           config=cfg)
    except (ManifestError, ValueError) as e:  # bad manifest, covariates, model or settings
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except ClusterUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(EXIT_NO_CLUSTER) from None
    print(format_summary(res.stages, res.seconds, len(res.failures)), file=sys.stderr)
    print(f"workdir: {res.workdir}  ({res.n_in_tables} of {res.n_participants} participant(s) "
          "in the tables)")
    raise typer.Exit(res.exit_code)


cluster_app = typer.Typer(
    help="Cluster profiles: list them, render what they would start, check one.",
    no_args_is_help=True,
)


@cluster_app.command("render")
def cluster_render(
    profile: str = typer.Argument(..., help="Profile: built-in name, YAML file or "
                                  "tcp://host:port."),
) -> None:
    """Print the SLURM job script or the Kubernetes manifest (or the local cluster's
    arguments) of PROFILE without starting anything."""
    from cluster.profile import ProfileError, load_profile
    from cluster.registry import backend_for

    try:
        print(backend_for(load_profile(profile)).render(), end="")
    except ProfileError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_INPUT) from None


@cluster_app.command("list")
def cluster_list() -> None:
    """List the built-in profiles and the backends."""
    from cluster.profile import BUILTIN_PROFILES, load_profile
    from cluster.registry import BACKENDS

    print("built-in profiles:")
    for name in BUILTIN_PROFILES:
        p = load_profile(name)
        print(f"  {name:<12} backend {p.backend:<11} TLS {'on' if p.tls_enabled else 'off'}")
    print("backends:")
    for name, cls in sorted(BACKENDS.items()):
        print(f"  {name:<12} {cls.description}")


@cluster_app.command("check")
def cluster_check(
    profile: str = typer.Argument("local", help="Profile: built-in name, YAML file or "
                                  "tcp://host:port."),
) -> None:
    """Start PROFILE's cluster, print its workers and their resources, and stop it."""
    from cluster.base import ClusterUnavailable
    from cluster.profile import ProfileError, load_profile
    from cluster.registry import backend_for

    try:
        backend = backend_for(load_profile(profile))
        with backend.client() as client:
            info = client.scheduler_info(n_workers=-1)
            print(f"scheduler: {info.get('address')}  dashboard: "
                  f"{backend.dashboard_link(client)}")
            for addr, w in sorted(info.get("workers", {}).items()):
                print(f"  {addr}  threads {w.get('nthreads')}  resources "
                      f"{w.get('resources') or {}}")
    except ProfileError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except ClusterUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(EXIT_NO_CLUSTER) from None


def register(app: typer.Typer) -> None:
    """Add ``run`` and the ``cluster`` sub-app to the typer app."""
    app.command("run")(run)
    app.add_typer(cluster_app, name="cluster")
