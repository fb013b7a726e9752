"""The stage registry: every stage of the pipeline wired once, as a small frozen spec.

``myocohort run`` walks :data:`STAGES` in order; the per-stage commands (``ingest``,
``segment``, ``quantify``, ``fit``, ``report``) run their one spec through the same driver
(:mod:`jobs.driver`), so a stage (or a new segmenter backend) is added in one place.

A **participant stage** (:class:`ParticipantStage`: ingest, segment, quantify) runs its pure
per-participant function on the cluster, one task per participant; its spec says what the
task's argument is, what its ledger key depends on, whether it wants GPU workers, and how its
result is persisted.  A **cohort stage** (:class:`CohortStage`: aggregate, fit, report) runs
once, in the calling process, on what the stages before it produced.

Every hook takes the :class:`StageInputs` of the run (paths, manifest, covariates, ledger,
configs) and is a plain module-level function, so tests replace a stage's function with
``dataclasses.replace(spec, task=fake)`` and keep all the wiring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.ledger import StageKey, stable_hash

if TYPE_CHECKING:
    from jobs.ledger import Ledger
    from jobs.runconfig import RunConfig
    from schemas.manifest import Manifest, ParticipantImages


@dataclass(frozen=True)
class StageInputs:
    """What the stage hooks may use: where things are, what the cohort is, what was done.

    ``manifest`` and ``ledger`` are None for a single-stage command (then every given
    participant is processed and nothing is recorded).  ``models`` are the segmentation models
    resolved (weights found and hashed) before the run starts, and ``model_hash`` their
    identity (empty when nothing is segmented).
    """

    store: Path
    config: RunConfig
    version: str
    parts_dir: Path | None = None
    workdir: Path | None = None
    manifest: Manifest | None = None
    covariates: Any = None
    ledger: Ledger | None = None
    models: tuple[Any, ...] | None = None
    model_hash: str = ""

    def images(self, pid: str) -> ParticipantImages:
        if self.manifest is None:
            raise RuntimeError("this stage needs the manifest")
        return self.manifest.get(pid)

    @property
    def tables_dir(self) -> Path:
        return self._workdir / "tables"

    @property
    def results_dir(self) -> Path:
        return self._workdir / "results"

    @property
    def traceback_dir(self) -> Path:
        return self._workdir / "tracebacks"

    @property
    def _workdir(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("this stage needs a workdir")
        return self.workdir


def _nothing(*_: Any) -> None:
    return None


def _no_kwargs(_: StageInputs) -> dict[str, Any]:
    return {}


def _never(_: Any) -> bool:
    return False


def _always(_: Any) -> bool:
    return True


def _no_detail(_: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class ParticipantStage:
    """A stage that runs once per participant on the cluster.

    Attributes
    ----------
    name : stage name (ledger, failures, progress, log).
    section : run config section of its settings; ``config_class`` (``module:Class``) is
        the frozen config built from it.
    task : the pure per-participant function, ``task(item, *, store, config, **kwargs)``;
        module-level so it pickles to workers.
    item : the task's first argument for one participant.
    key : the participant's ledger key: everything the stage's output depends on.
    participant_id : a task item's participant id.
    kwargs : extra keyword arguments of every task (e.g. the model path).
    wants_gpu : whether the stage's work runs on GPU workers for this config (routed by
        ``run.gpu``: auto, on, off).
    prepare : checks before the stage submits anything, with the participants to process;
        raising fails them all with its message.
    skip : why the stage does not apply to a participant (recorded as ``skipped``), or None.
    outputs : the participants whose output exists on disk (a participant without one is
        redone even when its ledger row is current); None when not tracked.
    persist : stores a successful result in the calling process (e.g. the quantify parts);
        raising fails the participant.
    discard : removes a participant's output that is no longer valid.
    changed : whether a result rewrote the stage's output (then ``invalidates`` are redone).
    invalidates : later stages whose ledger rows are forgotten when this one rewrites.
    detail : what the ledger keeps of a result (read by later stages' keys).
    """

    name: str
    section: str
    config_class: str
    task: Callable[..., Any]
    item: Callable[[StageInputs, str], Any]
    key: Callable[[StageInputs, str], StageKey]
    participant_id: Callable[[Any], str] = str
    kwargs: Callable[[StageInputs], dict[str, Any]] = _no_kwargs
    wants_gpu: Callable[[Any], bool] = _never
    prepare: Callable[[StageInputs, list[str]], None] = _nothing
    skip: Callable[[StageInputs, str], str | None] = _nothing
    outputs: Callable[[StageInputs], set[str]] | None = None
    persist: Callable[[StageInputs, str, Any], None] | None = None
    discard: Callable[[StageInputs, str], None] | None = None
    changed: Callable[[Any], bool] = _always
    invalidates: tuple[str, ...] = ()
    detail: Callable[[Any], dict[str, Any]] = _no_detail
    #: the stage's models found and hashed from its config, once, before any work:
    #: ``(resolved models, identity for the ledger)``; raises ValueError (a missing or
    #: unusable model) so that nothing runs (only the segment stage has models)
    resolve_models: Callable[[Any], tuple[tuple[Any, ...], str]] | None = None


@dataclass(frozen=True)
class CohortStage:
    """A stage that runs once for the whole cohort, in the calling process.

    ``function`` is the pure function (``build_cohort_table``, ``fit_model``,
    ``build_report``); ``run(stage, inputs, upstream)`` calls it on what the earlier cohort
    stages returned (``upstream``: stage name -> result) and persists its result.
    """

    name: str
    section: str | None
    config_class: str | None
    function: Callable[..., Any]
    run: Callable[[CohortStage, StageInputs, dict[str, Any]], Any]
    #: earlier cohort stages whose failure makes this one pointless
    needs: tuple[str, ...] = ()


Stage = ParticipantStage | CohortStage


# --------------------------------------------------------------------------------------------
# ingest


def _ingest_task(images: Any, *, store: str, config: Any) -> Any:
    from pipelines.ingest import ingest_participant
    from pipelines.store.integrity import StoreDamaged, damage_note

    try:
        return ingest_participant(images, store=store, config=config)
    except Exception as e:
        found = damage_note(store, images.participant_id)
        if found is None:
            raise
        copy, what = found
        raise StoreDamaged(
            f"participant {images.participant_id}: its stored arrays were damaged ({what}; "
            f"kept in {copy}) and cannot be rebuilt from its sources: {e}") from e


def _ingest_key(inputs: StageInputs, pid: str) -> StageKey:
    from jobs.runconfig import config_hash

    return StageKey(input_fingerprint(inputs.images(pid)), inputs.version, "",
                    config_hash(inputs.config.stage("ingest")))


def _ingest_prepare(inputs: StageInputs, _: list[str]) -> None:
    from pipelines.store import ensure_store, migrate_store

    ensure_store(inputs.store)
    migrate_store(inputs.store)  # a store of an older layout, in place (nothing once current)


def _intact(inputs: StageInputs, stage: str, arrays, among: set[str] | None = None) -> set[str]:
    """The participants of the run (``among`` them, when given) whose arrays
    (``arrays(pid, attrs)``; None when the stage has not written them yet) pass the store's
    cheap integrity check; a damaged group is moved aside (kept, never listed) so its
    participant is rebuilt from its sources, and the log says so.  A store of an older
    layout is first migrated in place (:func:`pipelines.store.migrate_store`)."""
    import logging

    from pipelines.store import (
        migrate_store,
        participant_ids,
        quarantine_group,
        read_attrs,
        verify_group,
    )

    if not Path(inputs.store).exists():
        return set()
    migrate_store(inputs.store)  # a store of an older layout, in place (nothing once current)
    wanted = set(inputs.manifest.participant_ids) if inputs.manifest is not None else None
    intact = set()
    for pid in participant_ids(inputs.store):
        if (wanted is not None and pid not in wanted) or (among is not None
                                                           and pid not in among):
            continue
        try:
            names = arrays(pid, read_attrs(inputs.store, pid))
        except (KeyError, OSError, ValueError):  # verify_group names the unreadable metadata
            names = None
        else:
            if names is None:  # not written yet: to do, nothing damaged
                continue
        report = verify_group(inputs.store, pid, arrays=names)
        if report.ok:
            intact.add(pid)
            continue
        where = "; ".join(p.message for p in report.problems[:3])
        if stage == "ingest":
            moved = quarantine_group(inputs.store, pid, [p.message for p in report.problems])
            logging.getLogger(__name__).warning(
                "participant %s: the store is damaged (%s): its group was moved to %s and is "
                "rebuilt from its sources", pid, where, moved)
        else:
            logging.getLogger(__name__).warning(
                "participant %s: %s output damaged (%s): redone", pid, stage, where)
    return intact


def _ingest_outputs(inputs: StageInputs) -> set[str]:
    """Participants whose ingested arrays (images, and labels from the manifest) are intact."""
    def arrays(pid: str, attrs: Any) -> list[str]:
        has_labels = inputs.manifest is not None and inputs.images(pid).has_labels
        return [*attrs.channels, *(["labels"] if has_labels else [])]

    return _intact(inputs, "ingest", arrays)


def _ingest_detail(result: Any) -> dict[str, Any]:
    return {"content_hash": result.input_hash, "written": bool(result.written)}


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
    parts: list[Any] = [images.site]
    for ref in images.images:
        lm = getattr(ref.label_map, "name", None) if ref.label_map is not None else None
        parts.append([ref.station, ref.channel, str(ref.path), _file_stamp(ref.path), str(lm)])
    return stable_hash(*parts)


def _content_hash(inputs: StageInputs, pid: str) -> str:
    return inputs.ledger.detail(pid, "ingest").get("content_hash", "") if inputs.ledger else ""


INGEST = ParticipantStage(
    name="ingest", section="ingest", config_class="pipelines.ingest:IngestConfig",
    task=_ingest_task, item=lambda inputs, pid: inputs.images(pid), key=_ingest_key,
    participant_id=lambda images: images.participant_id, prepare=_ingest_prepare,
    outputs=_ingest_outputs, changed=lambda result: bool(result.written),
    invalidates=("segment", "quantify"), detail=_ingest_detail,
)


# --------------------------------------------------------------------------------------------
# segment


def _segment_task(pid: str, *, store: str, models: tuple[Any, ...] | None, config: Any) -> Any:
    from pipelines.segment import segment_participant

    return segment_participant(pid, store=store, models=models, config=config)


MANIFEST_LABELS = "manifest-labels"


def _segment_key(inputs: StageInputs, pid: str) -> StageKey:
    from jobs.runconfig import config_hash

    content = _content_hash(inputs, pid)
    if _segment_skip(inputs, pid):
        return StageKey(content, inputs.version, MANIFEST_LABELS, "")
    return StageKey(content, inputs.version, inputs.model_hash,
                    config_hash(inputs.config.stage("segment")))


def _segment_skip(inputs: StageInputs, pid: str) -> str | None:
    if inputs.manifest is not None and inputs.images(pid).has_labels:
        return "labels in manifest"
    return None


def _segment_outputs(inputs: StageInputs) -> set[str]:
    """Participants whose segmentation (the ``labels`` array) is intact."""
    return _intact(inputs, "segment",
                   lambda pid, attrs: ["labels"] if attrs.labels_source else None)


def _segment_kwargs(inputs: StageInputs) -> dict[str, Any]:
    return {"models": inputs.models}


def _segment_prepare(inputs: StageInputs, pids: list[str]) -> None:
    import logging

    from pipelines.segment import check_model_for_cohort

    if inputs.models is None:
        return
    lacking = check_model_for_cohort(inputs.store, pids, inputs.models)
    if lacking:
        logging.getLogger(__name__).warning(
            "%d participant(s) lack the model's channels and will fail: %s", len(lacking),
            ", ".join(lacking[:10]))


def resolve_segment_models(config: Any) -> tuple[tuple[Any, ...], str]:
    """The segment config's models found and hashed, and their identity for the ledger.

    Raises
    ------
    ValueError
        a model that is missing (naming the folder searched and the tool's download
        command) or unusable.
    """
    from pipelines.segment import resolve_segment_models as resolve
    from pipelines.segment.segmenters import combined_identity

    resolved = resolve(config)
    return resolved, combined_identity(resolved)[:32]


SEGMENT = ParticipantStage(
    name="segment", section="segment", config_class="pipelines.segment:SegmentConfig",
    task=_segment_task, item=lambda inputs, pid: pid, key=_segment_key,
    kwargs=_segment_kwargs, wants_gpu=_always, prepare=_segment_prepare, skip=_segment_skip,
    outputs=_segment_outputs, invalidates=("quantify",), resolve_models=resolve_segment_models,
)


# --------------------------------------------------------------------------------------------
# quantify


def _quantify_item(inputs: StageInputs, pid: str) -> Any:
    from pipelines.quantify import QuantifyItem

    # no covariates: the two metrics that need them are computed at aggregation, so a
    # changed covariate never redoes a participant's images
    return QuantifyItem(pid)


def _quantify_task(item: Any, *, store: str, config: Any) -> Any:
    from pipelines.quantify import quantify_item

    return quantify_item(item, store=store, config=config)


def _quantify_key(inputs: StageInputs, pid: str) -> StageKey:
    from jobs.runconfig import config_hash

    segment = inputs.ledger.get(pid, "segment") if inputs.ledger else None
    return StageKey(stable_hash(_content_hash(inputs, pid), segment.key if segment else ""),
                    inputs.version, "", config_hash(inputs.config.stage("quantify")))


def _parts(inputs: StageInputs) -> Path:
    if inputs.parts_dir is None:
        raise RuntimeError("the quantify stage needs a parts folder")
    return inputs.parts_dir


def _quantify_outputs(inputs: StageInputs) -> set[str]:
    """Participants with a complete quantify part and, when fat maps are written, an intact
    ``ff`` array."""
    from pipelines.aggregate import parts_present

    parts = parts_present(_parts(inputs))
    if not getattr(inputs.config.stage("quantify"), "write_ff", False):
        return parts
    return _intact(inputs, "quantify", lambda pid, attrs: ["ff"], among=parts)


def _write_part(inputs: StageInputs, pid: str, result: Any) -> None:
    from pipelines.aggregate import write_part

    write_part(_parts(inputs), pid, result.muscle_metrics, result.participant_metrics)


def _remove_part(inputs: StageInputs, pid: str) -> None:
    from pipelines.aggregate import remove_part

    remove_part(_parts(inputs), pid)


QUANTIFY = ParticipantStage(
    name="quantify", section="quantify", config_class="pipelines.quantify:QuantifyConfig",
    task=_quantify_task, item=_quantify_item, key=_quantify_key,
    participant_id=lambda item: item.participant_id,
    wants_gpu=lambda config: getattr(config, "device", "cpu") == "gpu",
    outputs=_quantify_outputs, persist=_write_part, discard=_remove_part,
)


# --------------------------------------------------------------------------------------------
# aggregate, fit, report


def _aggregate(stage: CohortStage, inputs: StageInputs, upstream: dict[str, Any]) -> Any:
    """Tables from the parts of the participants whose quantify result is current, with the
    covariate-dependent metrics computed from the current covariates."""
    from pipelines.aggregate import read_parts, write_metrics_tables
    from pipelines.quantify.tables import with_covariates

    current = upstream["quantify"]
    muscle_df, participant_df = read_parts(_parts(inputs), current)
    if participant_df.empty:
        raise RuntimeError("no participant was quantified; no tables")
    participant_df = with_covariates(participant_df, inputs.covariates,
                                     inputs.config.stage("quantify"))
    sites = {p.participant_id: p.site for p in inputs.manifest} if inputs.manifest else None
    cohort_df = stage.function(participant_df, inputs.covariates, sites)
    write_metrics_tables(inputs.tables_dir, muscle_df, participant_df, cohort_df)
    return cohort_df


FIT_FILE = "fit.json"


def write_fit(fit: Any, path: Path) -> Path:
    """``fit.json`` (the fit's own JSON), atomically."""
    from pipelines._io import write_text_atomic

    text = fit.to_json()
    return write_text_atomic(path, text if isinstance(text, str) else str(text))


def read_fit(path: Path) -> tuple[Any, Any] | None:
    """(model spec, fit) of a ``fit.json`` that records its spec; None when there is none or
    it cannot be read (the caller then fits again)."""
    import json

    from pipelines.stats import FitResult

    try:
        fit = FitResult.from_dict(json.loads(Path(path).read_text()))
        spec = fit.model_spec()
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return (spec, fit) if spec is not None else None


def _fit(stage: CohortStage, inputs: StageInputs, upstream: dict[str, Any]) -> Any:
    inputs.results_dir.mkdir(parents=True, exist_ok=True)
    path = inputs.results_dir / FIT_FILE
    path.unlink(missing_ok=True)  # never leave a stale fit beside new tables
    fit = stage.function(upstream["aggregate"], inputs.config.stage("stats"))
    write_fit(fit, path)
    if getattr(fit, "status", "ok") != "ok":  # a reduced or sparse fit is a result, not a failure
        import logging

        # INFO: into run.log.jsonl; the terminal gets them once, under the run summary
        logger = logging.getLogger(__name__)
        logger.info("fit: status %s (details in %s)", fit.status, path)
        for w in fit.warnings:
            logger.info("fit: %s", w)
    return fit


def _report(stage: CohortStage, inputs: StageInputs, upstream: dict[str, Any]) -> Any:
    spec = inputs.config.stage("stats")
    done = upstream.get("fit")
    fitted = {spec: done} if done is not None and spec is not None else None
    return stage.function(inputs.workdir, inputs.config.stage("report"), model=spec,
                          fitted=fitted, run_config=inputs.config.to_dict())


def _build_cohort_table(*args: Any, **kwargs: Any) -> Any:
    from pipelines.aggregate import build_cohort_table

    return build_cohort_table(*args, **kwargs)


def _fit_model(*args: Any, **kwargs: Any) -> Any:
    from pipelines.stats import fit_model

    return fit_model(*args, **kwargs)


def _build_report(*args: Any, **kwargs: Any) -> Any:
    from pipelines.report import build_report

    return build_report(*args, **kwargs)


AGGREGATE = CohortStage(name="aggregate", section=None, config_class=None,
                        function=_build_cohort_table, run=_aggregate)
FIT = CohortStage(name="fit", section="stats", config_class="pipelines.stats.model:ModelSpec",
                  function=_fit_model, run=_fit, needs=("aggregate",))
REPORT = CohortStage(name="report", section="report",
                     config_class="pipelines.report.build:ReportConfig",
                     function=_build_report, run=_report, needs=("aggregate",))

#: Every stage, in the order ``myocohort run`` runs them.
STAGES: tuple[Stage, ...] = (INGEST, SEGMENT, QUANTIFY, AGGREGATE, FIT, REPORT)


def get_stage(name: str, stages: tuple[Stage, ...] = STAGES) -> Stage:
    """The stage registered under ``name``.

    Raises
    ------
    KeyError
        naming the valid stages.
    """
    for s in stages:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; valid: {[s.name for s in stages]}")


def replace_stage(stages: tuple[Stage, ...], name: str, **changes: Any) -> tuple[Stage, ...]:
    """``stages`` with stage ``name``'s fields replaced (tests swap in fake functions)."""
    get_stage(name, stages)
    return tuple(dataclasses.replace(s, **changes) if s.name == name else s for s in stages)


def config_sections(stages: tuple[Stage, ...] = STAGES) -> dict[str, str]:
    """Run config section -> ``module:Class`` of its frozen config, in stage order."""
    return {s.section: s.config_class for s in stages if s.section and s.config_class}


__all__ = [
    "AGGREGATE", "FIT", "INGEST", "QUANTIFY", "REPORT", "SEGMENT", "STAGES", "CohortStage",
    "ParticipantStage", "Stage", "StageInputs", "config_sections", "get_stage",
    "resolve_segment_models",
    "input_fingerprint", "read_fit", "replace_stage", "write_fit",
]
