"""``RunConfig``: every stage's settings for ``myocohort run``, loaded once, frozen.

An optional YAML file (``--config``) has one section per stage; each section's keys are the
fields of that stage's frozen config class (``IngestConfig``, ``SegmentConfig``,
``QuantifyConfig``, ``ModelSpec`` for ``stats``) plus a ``run`` section::

    run:
      max_in_flight: 8        # participants submitted at once (default: 2 per worker thread)
      gpu: auto               # auto | on | off: route segment/quantify to GPU workers
    quantify:
      fat_threshold: 0.5
    stats:
      outcome: cbp

Unknown sections or keys are an error naming the file and the valid keys.  Each stage's
config hash (part of the ledger key) is computed from its dataclass fields, so changing a
setting reprocesses exactly the stages it affects.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.ledger import stable_hash

#: stage -> (module, class) of its frozen config
STAGE_CONFIGS: dict[str, tuple[str, str]] = {
    "ingest": ("pipelines.ingest", "IngestConfig"),
    "segment": ("pipelines.segment", "SegmentConfig"),
    "quantify": ("pipelines.quantify", "QuantifyConfig"),
    "stats": ("pipelines.stats.model", "ModelSpec"),
}
GPU_MODES = ("auto", "on", "off")


def pipeline_version() -> str:
    """The installed myocohort version (part of every ledger key)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("myocohort")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0+unknown"


@dataclass(frozen=True)
class RunOptions:
    """Settings of the run itself (not of a stage)."""

    max_in_flight: int | None = None
    gpu: str = "auto"

    def __post_init__(self) -> None:
        if self.gpu not in GPU_MODES:
            raise ValueError(f"run.gpu {self.gpu!r}; valid: {list(GPU_MODES)}")
        if self.max_in_flight is not None and (
            isinstance(self.max_in_flight, bool) or not isinstance(self.max_in_flight, int)
            or self.max_in_flight < 1
        ):
            raise ValueError(f"run.max_in_flight must be an integer >= 1, got "
                             f"{self.max_in_flight!r}")


def _config_class(stage: str) -> type:
    module, name = STAGE_CONFIGS[stage]
    return getattr(importlib.import_module(module), name)


def _coerce(cls: type, key: str, value: Any) -> Any:
    """YAML lists become tuples (the configs are frozen and hashable)."""
    if isinstance(value, list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value


def build_stage_config(stage: str, values: dict[str, Any] | None = None,
                       where: str = "run config") -> Any:
    """The stage's config dataclass from a mapping of field values (defaults for the rest)."""
    cls = _config_class(stage)
    values = dict(values or {})
    if dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{where}: section {stage!r}: unknown key(s) {unknown}; "
                             f"valid: {sorted(names)}")
    try:
        return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: section {stage!r}: {e}") from e


def config_hash(config: Any) -> str:
    """A stable hash of a config dataclass's fields (the ledger's ``config_hash``)."""
    if config is None:
        return ""
    if dataclasses.is_dataclass(config):
        return stable_hash(type(config).__name__, dataclasses.asdict(config))
    return stable_hash(type(config).__name__, repr(config))


@dataclass(frozen=True)
class RunConfig:
    """All settings of one ``myocohort run``; stage configs are built lazily from ``raw`` so
    that a stage's package is imported only when that stage runs."""

    run: RunOptions = field(default_factory=RunOptions)
    raw: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    source: str = ""

    def section(self, stage: str) -> dict[str, Any]:
        for name, items in self.raw:
            if name == stage:
                return dict(items)
        return {}

    def stage(self, stage: str) -> Any:
        """The frozen config object of ``stage``."""
        return build_stage_config(stage, self.section(stage), self.source or "run config")


def load_run_config(path: str | Path | None) -> RunConfig:
    """Read a run config YAML (or the defaults when ``path`` is None)."""
    if path is None:
        return RunConfig()
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"run config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"run config {path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"run config {path}: expected a mapping of sections")
    valid = ["run", *STAGE_CONFIGS]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"run config {path}: unknown section(s) {unknown}; valid: {valid}")
    run_section = data.get("run") or {}
    if not isinstance(run_section, dict):
        raise ValueError(f"run config {path}: section 'run' must be a mapping")
    bad = sorted(set(run_section) - {f.name for f in dataclasses.fields(RunOptions)})
    if bad:
        raise ValueError(f"run config {path}: section 'run': unknown key(s) {bad}; valid: "
                         f"{[f.name for f in dataclasses.fields(RunOptions)]}")
    try:
        run = RunOptions(**run_section)
    except ValueError as e:
        raise ValueError(f"run config {path}: {e}") from e
    raw = []
    for stage in STAGE_CONFIGS:
        sec = data.get(stage) or {}
        if not isinstance(sec, dict):
            raise ValueError(f"run config {path}: section {stage!r} must be a mapping")
        raw.append((stage, tuple(sorted(sec.items()))))
    cfg = RunConfig(run=run, raw=tuple(raw), source=f"run config {path}")
    return cfg
