"""``RunConfig``: every stage's settings for ``myocohort run``, built at once, typed, frozen.

An optional YAML file (``--config``) has one section per stage of the registry
(:mod:`jobs.stages`) plus a ``run`` section; each section's keys are the fields of that
stage's frozen config class (``IngestConfig``, ``SegmentConfig``, ``QuantifyConfig``,
``ModelSpec`` for ``stats``, ``ReportConfig`` for ``report``)::

    run:
      max_in_flight: 8        # participants submitted at once (default: 2 per worker thread)
      gpu: auto               # auto | on | off: route segment/quantify to GPU workers
    quantify:
      fat_threshold: 0.5
    stats:
      outcome: cbp

Loading builds every stage's config object, so an unknown section or key, a value of the
wrong type or out of range is found before a cluster starts or an image is read: a
:class:`ConfigError` listing every problem, each naming the file, section, key, value and
the valid keys (or values).  Each stage's config hash (part of the ledger key) is computed
from its dataclass fields, so changing a setting reprocesses exactly the stages it affects.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jobs.ledger import stable_hash

GPU_MODES = ("auto", "on", "off")
RUN_SECTION = "run"


def pipeline_version() -> str:
    """The installed myocohort version (part of every ledger key)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("myocohort")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0+unknown"


@dataclass(frozen=True)
class RunOptions:
    """Settings of the run itself (not of a stage).

    Parameters
    ----------
    max_in_flight : most participants submitted at once (None: 2 per worker thread).
    gpu : route GPU-capable stages to workers offering ``GPU``: ``auto`` (when some worker
        offers it), ``on`` (always; fails without GPU workers), ``off`` (never).
    """

    max_in_flight: int | None = None
    gpu: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self) -> None:
        if self.gpu not in GPU_MODES:
            raise ValueError(f"run.gpu {self.gpu!r}; valid: {list(GPU_MODES)}")
        if self.max_in_flight is not None and (
            isinstance(self.max_in_flight, bool) or not isinstance(self.max_in_flight, int)
            or self.max_in_flight < 1
        ):
            raise ValueError(f"run.max_in_flight must be an integer >= 1, got "
                             f"{self.max_in_flight!r}")


# --------------------------------------------------------------------------------------------
# errors


@dataclass(frozen=True)
class ConfigProblem:
    """One problem of a run config: where it is and what is wrong."""

    source: str
    section: str
    key: str | None
    value: Any
    problem: str
    valid: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        where = f"{self.source}: section {self.section!r}"
        if self.key is not None:
            where += f": key {self.key!r}: value {self.value!r}"
        text = f"{where}: {self.problem}"
        if self.valid:
            text += f"; valid: {', '.join(self.valid)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.source, "section": self.section, "key": self.key,
                "value": repr(self.value), "problem": self.problem, "valid": list(self.valid)}


class ConfigError(ValueError):
    """A run config that cannot be used; ``problems`` lists every problem found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(p.message for p in self.problems))


# --------------------------------------------------------------------------------------------
# typed values


class _Mismatch(ValueError):
    """A value does not fit its annotation; the message says what was expected."""


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp in (Path,):
        return "a path"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a)
                           for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any) -> Any:
    """``value`` (as YAML gives it) converted to annotation ``tp``; lists become tuples.

    Raises
    ------
    _Mismatch
        the value does not fit (the message says what was expected).
    """
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch(f"expected {_describe(tp)}")
    if origin is Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise _Mismatch(f"expected {_describe(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch("expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch("expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("expected a string")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value).expanduser()
        raise _Mismatch("expected a path")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, dict):  # {column: level} for pairs
            value = list(value.items())
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise _Mismatch(f"expected {_describe(tp)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise _Mismatch(f"expected {_describe(tp)}")
        return tuple(coerce(v, a) for v, a in zip(value, args, strict=True))
    return value  # an annotation we do not check: the class validates it


def _field_types(cls: type) -> dict[str, Any]:
    module = importlib.import_module(cls.__module__)
    hints = typing.get_type_hints(cls, globalns=vars(module))
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def build_config(cls: type, values: dict[str, Any] | None, *, source: str, section: str
                 ) -> tuple[Any, list[ConfigProblem]]:
    """Build the frozen config ``cls`` from a mapping of field values (defaults for the rest).

    Returns the object (None when a problem was found) and every problem found: unknown
    keys (with the closest valid name), values of the wrong type, and values the class
    itself refuses (its ``__post_init__``), each attributed to its key.
    """
    values = dict(values or {})
    types_ = _field_types(cls)
    valid = tuple(sorted(types_))
    problems: list[ConfigProblem] = []
    typed: dict[str, Any] = {}
    for key, value in values.items():
        if key not in types_:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"unknown key{f' (did you mean {close[0]!r}?)' if close else ''}"
            problems.append(ConfigProblem(source, section, str(key), value, hint, valid))
            continue
        try:
            typed[key] = coerce(value, types_[key])
        except _Mismatch as e:
            problems.append(ConfigProblem(source, section, key, value, str(e)))
    try:
        obj = cls(**typed)
    except (TypeError, ValueError) as e:
        # attribute the refusal to the key(s) that cause it alone
        refused = []
        for key, value in typed.items():
            try:
                cls(**{key: value})
            except (TypeError, ValueError) as e1:
                refused.append(ConfigProblem(source, section, key, values[key], str(e1)))
        problems += refused or [ConfigProblem(source, section, None, None, str(e))]
        obj = None
    return (None, problems) if problems else (obj, [])


def config_hash(config: Any) -> str:
    """A stable hash of a config dataclass's fields (the ledger's ``config_hash``); fields
    whose metadata says ``ledger: False`` (covered by another part of the key, or not
    changing any output) are left out, and so are fields marked ``ledger: "non_default"``
    while they hold their default (a field added later then leaves existing ledgers valid)."""
    if config is None:
        return ""
    if dataclasses.is_dataclass(config):
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                  if f.metadata.get("ledger", True) is True
                  or (f.metadata.get("ledger") == "non_default"
                      and getattr(config, f.name) != f.default)}
        return stable_hash(type(config).__name__, _plain(values))
    return stable_hash(type(config).__name__, repr(config))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# the run config


def _config_class(path: str) -> type:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _sections() -> dict[str, str]:
    """Section name -> ``module:Class`` of its config, for every stage of the registry."""
    from jobs.stages import config_sections

    return config_sections()


@dataclass(frozen=True)
class RunConfig:
    """All settings of one ``myocohort run``: the run's own options and one frozen config
    object per configurable section, all built (and checked) when the config is loaded.

    ``sections`` maps a section name (``ingest``, ``segment``, ``quantify``, ``stats``,
    ``report``) to its config object; a section left out gets its class's defaults.
    """

    run: RunOptions = field(default_factory=RunOptions)
    sections: tuple[tuple[str, Any], ...] = ()
    source: str = "defaults"

    def stage(self, section: str) -> Any:
        """The frozen config object of ``section`` (its class's defaults when not given)."""
        for name, cfg in self.sections:
            if name == section:
                return cfg
        known = _sections()
        if section not in known:
            raise KeyError(f"no config section {section!r}; valid: {sorted(known)}")
        return _config_class(known[section])()

    def replace(self, section: str, config: Any) -> RunConfig:
        """A copy with ``section``'s config replaced (command-line overrides)."""
        rest = tuple((n, c) for n, c in self.sections if n != section)
        return dataclasses.replace(self, sections=(*rest, (section, config)))

    def to_dict(self) -> dict[str, Any]:
        """Every section's settings (defaults included), for logs and provenance."""
        out: dict[str, Any] = {RUN_SECTION: dataclasses.asdict(self.run)}
        for name in _sections():
            cfg = self.stage(name)
            out[name] = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else repr(cfg)
        return out


def parse_run_config(data: Any, source: str) -> RunConfig:
    """A :class:`RunConfig` from an already parsed YAML document (a mapping of sections)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(source, "(top level)", None, None,
                                         "expected a mapping of sections")])
    known = _sections()
    valid = (RUN_SECTION, *known)
    problems: list[ConfigProblem] = []
    for name in data:
        if name not in valid:
            close = difflib.get_close_matches(str(name), valid, n=1)
            problems.append(ConfigProblem(
                source, str(name), None, None,
                f"unknown section{f' (did you mean {close[0]!r}?)' if close else ''}",
                tuple(valid)))
    run = RunOptions()
    built: list[tuple[str, Any]] = []
    for name in valid:
        section = data.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            problems.append(ConfigProblem(source, name, None, None,
                                          f"expected a mapping of keys, got {section!r}"))
            continue
        cls = RunOptions if name == RUN_SECTION else _config_class(known[name])
        obj, found = build_config(cls, section, source=source, section=name)
        problems += found
        if obj is None:
            continue
        if name == RUN_SECTION:
            run = obj
        else:
            built.append((name, obj))
    if problems:
        raise ConfigError(problems)
    # sections left out are built too, so every stage's defaults are checked now
    for name, path in known.items():
        if name not in dict(built):
            built.append((name, _config_class(path)()))
    return RunConfig(run=run, sections=tuple(built), source=source)


def load_run_config(path: str | Path | None) -> RunConfig:
    """Read and check a run config YAML (every stage's defaults when ``path`` is None).

    Raises
    ------
    ConfigError
        naming the file, section, key, value and the valid keys of every problem.
    """
    if path is None:
        return parse_run_config({}, "defaults")
    import yaml

    path = Path(path)
    source = f"run config {path}"
    if not path.is_file():
        raise ConfigError([ConfigProblem(source, "(file)", None, None, "no such file")])
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError([ConfigProblem(source, "(file)", None, None,
                                         f"not valid YAML: {e}")]) from e
    return parse_run_config(data, source)
