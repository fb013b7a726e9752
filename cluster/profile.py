"""Cluster profiles: which backend runs the work, and how big it is.

A profile is a YAML file (schema in ``docs/run.md``) or a built-in name (``local``,
``local-cuda``, ``slurm``, ``kubernetes``; the YAML files in ``cluster/profiles/``) or a
scheduler address (``tcp://host:port``, ``tls://host:port``).  It is loaded once, validated,
and passed down as a frozen :class:`Profile`; nothing here starts a cluster.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROFILES_DIR = Path(__file__).parent / "profiles"
BUILTIN_PROFILES: tuple[str, ...] = ("local", "local-cuda", "slurm", "kubernetes")
BACKEND_NAMES: tuple[str, ...] = ("local", "local-cuda", "slurm", "kubernetes", "tcp")


class ProfileError(ValueError):
    """A cluster profile breaks its schema; the message names the file, key and value."""


def _frozen(d: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """A dict as a sorted tuple of pairs, so that frozen dataclasses stay hashable."""
    return tuple(sorted((d or {}).items()))


_VARIABLE = re.compile(r"\$(?:\{([^}]*)\}|(\w+))")


def expand_path(value: str | None, key: str) -> str | None:
    """``$VAR``, ``${VAR}`` and ``~`` expanded in a path of a profile, as a shell would.

    A profile is read once, where the run starts, so its paths mean what they mean there
    (without this, ``~/.myocohort-tls`` was a folder named ``~`` in the current directory).

    Raises
    ------
    ProfileError
        naming the key when a variable is not set or ``~`` cannot be expanded: a path with a
        literal ``$SCRATCH`` or ``~`` in it is never what was meant.
    """
    if value is None:
        return None

    def variable(m: re.Match) -> str:
        name = m.group(1) if m.group(1) is not None else m.group(2)
        if name not in os.environ:
            raise ProfileError(f"{key} {value!r}: environment variable ${name} is not set")
        return os.environ[name]

    out = os.path.expanduser(_VARIABLE.sub(variable, value))
    if out.startswith("~"):
        raise ProfileError(f"{key} {value!r}: cannot expand {out.split('/', 1)[0]!r} (no such "
                           "user, or HOME is not set)")
    return out


def _expand_paths(obj: Any, keys: tuple[str, ...], section: str) -> None:
    """Expand the path fields ``keys`` of a frozen dataclass in place (from __post_init__)."""
    for key in keys:
        object.__setattr__(obj, key, expand_path(getattr(obj, key), f"{section}.{key}"))


@dataclass(frozen=True)
class TLSOptions:
    """Scheduler-worker-client encryption and authentication (mutual TLS).

    ``enabled=None`` means the backend default: on for every backend that starts a cluster
    (``local`` included: its scheduler listens on 127.0.0.1, which every local user can reach),
    and for ``tcp`` when the address is ``tls://`` or certificates are given.  Without
    ``ca_file``/``cert``/``key`` a temporary self-signed CA and certificate are made per run
    (``distributed.security.Security.temporary``).  Paths expand ``~`` and ``$VAR``.
    """

    enabled: bool | None = None
    ca_file: str | None = None
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        _expand_paths(self, ("ca_file", "cert", "key"), "tls")
        given = [x is not None for x in (self.ca_file, self.cert, self.key)]
        if any(given) and not all(given):
            raise ProfileError("tls: give all of ca_file, cert and key, or none of them")
        if self.enabled is False and any(given):
            raise ProfileError("tls: certificate files given but enabled is false")

    @property
    def has_files(self) -> bool:
        return self.ca_file is not None


@dataclass(frozen=True)
class SlurmOptions:
    """One SLURM job = ``processes`` Dask workers sharing ``cores`` and ``memory``."""

    cores: int = 4
    memory: str = "16GiB"
    processes: int = 1
    walltime: str = "01:00:00"
    queue: str | None = None
    account: str | None = None
    gpus_per_job: int = 0
    min_jobs: int = 0
    max_jobs: int = 4
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()
    python: str | None = None
    local_directory: str | None = None
    shared_temp_directory: str | None = None
    log_directory: str | None = None
    interface: str | None = None

    def __post_init__(self) -> None:
        _expand_paths(self, ("python", "local_directory", "shared_temp_directory",
                             "log_directory"), "slurm")
        for name in ("cores", "processes", "max_jobs"):
            if getattr(self, name) < 1:
                raise ProfileError(f"slurm.{name}: must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_job < 0 or self.min_jobs < 0:
            raise ProfileError("slurm.gpus_per_job and slurm.min_jobs must be >= 0")
        if self.min_jobs > self.max_jobs:
            raise ProfileError(f"slurm.min_jobs {self.min_jobs} > max_jobs {self.max_jobs}")
        if self.processes > self.cores:
            raise ProfileError(f"slurm.processes {self.processes} > cores {self.cores}")
        parts = self.walltime.split(":")
        if not 1 <= len(parts) <= 3 or not all(p.strip().isdigit() for p in parts):
            raise ProfileError(f"slurm.walltime {self.walltime!r}: expected HH:MM:SS")


@dataclass(frozen=True)
class KubernetesOptions:
    """A ``DaskCluster`` resource for the Dask Kubernetes operator."""

    image: str = "ghcr.io/myocohort/worker:0.1.0"
    namespace: str | None = None
    n_workers: int = 2
    min_workers: int = 0
    max_workers: int = 8
    cpu: str = "4"
    memory: str = "16Gi"
    gpus: int = 0
    threads_per_worker: int = 1
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[tuple[tuple[str, Any], ...], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    service_type: str = "ClusterIP"
    tls_secret: str | None = None

    def __post_init__(self) -> None:
        if self.n_workers < 0 or self.min_workers < 0 or self.max_workers < 1:
            raise ProfileError("kubernetes: worker counts must be >= 0 (max_workers >= 1)")
        if self.min_workers > self.max_workers:
            raise ProfileError(f"kubernetes.min_workers {self.min_workers} > max_workers")
        if self.gpus < 0:
            raise ProfileError(f"kubernetes.gpus: must be >= 0, got {self.gpus}")
        if self.service_type not in ("ClusterIP", "NodePort", "LoadBalancer"):
            raise ProfileError(f"kubernetes.service_type {self.service_type!r}: expected "
                               "ClusterIP, NodePort or LoadBalancer")


@dataclass(frozen=True)
class Profile:
    """A validated cluster profile.

    Parameters
    ----------
    backend : one of :data:`BACKEND_NAMES`.
    name : a label for logs (the file stem or built-in name).
    n_workers : Dask worker processes (local; ``None`` = one per core, or per GPU).
    threads_per_worker : threads per worker process.
    memory_limit : per worker, e.g. ``"4GiB"`` or ``"auto"``.
    worker_resources : abstract resources each worker advertises, e.g. ``{"GPU": 1}``.
    dashboard_address : where the dashboard binds; localhost unless the profile says otherwise.
    address : scheduler address for the ``tcp`` backend.
    max_in_flight : most participants submitted at once (``None`` = 2 per worker thread).
    tls : scheduler-worker encryption (:class:`TLSOptions`).
    slurm, kubernetes : backend sections.
    """

    backend: str = "local"
    name: str = "local"
    n_workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    worker_resources: tuple[tuple[str, float], ...] = ()
    dashboard_address: str = "127.0.0.1:8787"
    address: str | None = None
    max_in_flight: int | None = None
    tls: TLSOptions = field(default_factory=TLSOptions)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    kubernetes: KubernetesOptions = field(default_factory=KubernetesOptions)

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_NAMES:
            raise ProfileError(
                f"profile {self.name!r}: backend {self.backend!r}; valid: {list(BACKEND_NAMES)}"
            )
        if self.n_workers is not None and self.n_workers < 1:
            raise ProfileError(f"profile {self.name!r}: n_workers must be >= 1")
        if self.threads_per_worker < 1:
            raise ProfileError(f"profile {self.name!r}: threads_per_worker must be >= 1")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ProfileError(f"profile {self.name!r}: max_in_flight must be >= 1")
        if self.backend == "tcp":
            self._check_tcp_tls()
        if (self.backend == "kubernetes" and self.tls_enabled and self.kubernetes.tls_secret
                and not self.tls.has_files):
            raise ProfileError(
                f"profile {self.name!r}: kubernetes.tls_secret {self.kubernetes.tls_secret!r} "
                "holds certificates this process does not have: give the same files as "
                "tls.ca_file, tls.cert and tls.key (the client authenticates with them)")
        if self.backend == "local-cuda" and self.n_workers is not None:
            raise ProfileError(f"profile {self.name!r}: local-cuda starts one worker per GPU; "
                               "remove n_workers (select GPUs with CUDA_VISIBLE_DEVICES)")

    def _check_tcp_tls(self) -> None:
        """A scheduler someone else started is reached with TLS exactly when the profile says
        so, and then only with the profile's certificates: temporary ones cannot be trusted by
        a scheduler that never saw them, and falling back to plain TCP would be silent."""
        if not self.address or "://" not in self.address:
            raise ProfileError(f"profile {self.name!r}: backend tcp needs address "
                               "'tcp://host:port' or 'tls://host:port'")
        scheme = self.address.split("://", 1)[0]
        if scheme not in ("tcp", "tls"):
            raise ProfileError(f"profile {self.name!r}: address {self.address!r}: scheme "
                               f"{scheme!r}; valid: tcp://host:port, tls://host:port")
        if scheme == "tls" and self.tls.enabled is False:
            raise ProfileError(f"profile {self.name!r}: address {self.address} is TLS but "
                               "tls.enabled is false")
        if self.tls_enabled and not self.tls.has_files:
            why = (f"address {self.address}" if scheme == "tls" else "tls.enabled is true")
            raise ProfileError(
                f"profile {self.name!r}: {why}, so it needs tls.ca_file, tls.cert and tls.key: "
                "the scheduler's CA and a client certificate and key that it trusts")

    @property
    def resources(self) -> dict[str, float]:
        return dict(self.worker_resources)

    @property
    def tls_enabled(self) -> bool:
        """Whether scheduler, workers and client speak TLS (see :class:`TLSOptions`)."""
        if self.tls.enabled is not None:
            return self.tls.enabled
        if self.backend == "tcp":
            return self.tls.has_files or (self.address or "").startswith("tls://")
        return True


_SECTIONS = {"tls": TLSOptions, "slurm": SlurmOptions, "kubernetes": KubernetesOptions}


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {unknown}; valid: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        f = fields[key]
        if key in _SECTIONS and cls is Profile:
            value = _build(_SECTIONS[key], value, f"{where}: {key}")
        elif key in ("worker_resources", "node_selector", "env"):
            if not isinstance(value, dict):
                raise ProfileError(f"{where}: {key}: expected a mapping, got {value!r}")
            value = _frozen({str(k): v for k, v in value.items()})
        elif key == "tolerations":
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                raise ProfileError(f"{where}: tolerations: expected a list of mappings")
            value = tuple(_frozen(t) for t in value)
        elif key in ("job_extra_directives", "job_script_prologue"):
            if isinstance(value, str) or not isinstance(value, list):
                raise ProfileError(f"{where}: {key}: expected a list of strings, got {value!r}")
            value = tuple(str(v) for v in value)
        else:
            want = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            if want.startswith("int") and not (value is None and "None" in want):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ProfileError(f"{where}: {key}: expected an integer, got {value!r}")
            if want.startswith("str") and not (value is None and "None" in want):
                if not isinstance(value, str | int | float) or isinstance(value, bool):
                    raise ProfileError(f"{where}: {key}: expected text, got {value!r}")
                value = str(value)
            if want.startswith("bool") and value is not None and not isinstance(value, bool):
                raise ProfileError(f"{where}: {key}: expected true or false, got {value!r}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ProfileError as e:
        raise ProfileError(f"{where}: {e}") from None


def profile_from_dict(data: dict[str, Any], *, name: str = "profile", where: str = "") -> Profile:
    """Validate a profile given as a mapping (a parsed YAML document)."""
    if not isinstance(data, dict):
        raise ProfileError(f"{where or name}: a profile must be a mapping of keys")
    data = dict(data)
    data.setdefault("name", name)
    return _build(Profile, data, where or f"profile {name!r}")


def load_profile(spec: str | Path | None) -> Profile:
    """A :class:`Profile` from a built-in name, a YAML file or a scheduler address.

    Parameters
    ----------
    spec : ``None`` or ``"local"`` (default), another built-in name, ``tcp://host:port`` /
        ``tls://host:port``, or the path of a YAML profile.

    Raises
    ------
    ProfileError
        when the file is missing or breaks the schema; the message lists the valid names.
    """
    import yaml

    if spec is None:
        spec = "local"
    text = str(spec)
    if "://" in text and not Path(text).exists():
        return Profile(backend="tcp", name=text, address=text)
    if text in BUILTIN_PROFILES:
        path = PROFILES_DIR / f"{text}.yaml"
    else:
        path = Path(text)
        if not path.is_file():
            raise ProfileError(
                f"cluster profile {text!r}: not a built-in name, a scheduler address or a YAML "
                f"file; built-in profiles: {list(BUILTIN_PROFILES)}, or tcp://host:port"
            )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ProfileError(f"cluster profile {path}: not valid YAML: {e}") from e
    return profile_from_dict(data, name=path.stem, where=f"cluster profile {path}")


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """The profile as plain YAML-able data (tuples of pairs back to mappings)."""

    def conv(obj: Any, key: str = "") -> Any:
        if dataclasses.is_dataclass(obj):
            return {f.name: conv(getattr(obj, f.name), f.name) for f in dataclasses.fields(obj)}
        if key in ("worker_resources", "node_selector", "env"):
            return dict(obj)
        if key == "tolerations":
            return [dict(t) for t in obj]
        if isinstance(obj, tuple):
            return list(obj)
        return obj

    return conv(profile)
