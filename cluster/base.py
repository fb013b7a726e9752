"""The small interface every cluster backend implements."""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from distributed import Client

    from cluster.profile import Profile

log = logging.getLogger(__name__)


class ClusterUnavailable(RuntimeError):
    """The backend cannot start here (no GPU, no SLURM, a missing optional package)."""


class ClusterBackend(abc.ABC):
    """Where the work runs.

    Subclasses set :attr:`name` and :attr:`description` and implement :meth:`render` (what
    would be started, as text, starting nothing) and :meth:`client` (a context manager that
    starts the cluster, yields a connected ``distributed.Client`` and tears everything down).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    #: whether :meth:`render` shows something a scheduler system would run (a job script, a
    #: manifest) rather than a summary of Python arguments
    renders_artifact: ClassVar[bool] = False

    def __init__(self, profile: Profile) -> None:
        if profile.backend != self.name:
            raise ValueError(f"profile {profile.name!r} is for backend {profile.backend!r}, "
                             f"not {self.name!r}")
        self.profile = profile

    @abc.abstractmethod
    def render(self) -> str:
        """What this profile would start (job script, manifest, arguments), starting nothing."""

    @abc.abstractmethod
    def client(self) -> AbstractContextManager[Client]:
        """Start the cluster; yield a connected client; close both on exit."""

    def dashboard_link(self, client: Client) -> str | None:
        """The dashboard URL as bound by this profile (``client.dashboard_link`` names the
        scheduler's network address even when the dashboard listens on localhost only)."""
        port = client.scheduler_info().get("services", {}).get("dashboard")
        host = self.profile.dashboard_address.rsplit(":", 1)[0].strip("[]")
        if port is None:
            return None
        if self.name == "kubernetes" or host in ("", "0.0.0.0", "::"):
            return client.dashboard_link
        return f"http://{host}:{port}/status"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(profile={self.profile.name!r})"


def wait_for_workers(client: Client, n: int, timeout: float, what: str) -> None:
    """Wait until ``n`` workers joined, with an error that says what did not start."""
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError as e:
        have = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        raise ClusterUnavailable(
            f"{what}: {have} of {n} worker(s) joined within {timeout:.0f} s"
        ) from e


@contextmanager
def quiet_distributed_logs() -> Iterator[None]:
    """Keep the in-process scheduler's INFO chatter off the terminal (unless ``-v`` asked for
    INFO) and its shutdown warnings (workers killed after 4 s) entirely; restored on exit."""
    import distributed  # noqa: F401  (its first import configures the "distributed" logger)

    lg = logging.getLogger("distributed")
    level = lg.level
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        lg.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        lg.setLevel(level)


def close_quietly(*objs: object) -> None:
    """Close clients/clusters in order, logging (not raising) errors so the real one shows."""
    for obj in objs:
        if obj is None:
            continue
        try:
            obj.close()  # type: ignore[attr-defined]
        except Exception:  # closing must not mask the real error
            log.debug("closing %r failed", obj, exc_info=True)


#: Scheduler settings of every cluster we start.  ``worker-saturation`` 1.0: a worker holds
#: only as many participants as it has threads.  With Dask's default (1.1: two on a one-thread
#: worker) a participant waits on the worker behind the running one; when the running one
#: kills the worker (out of memory, a crash in native code) the waiting one is counted as
#: suspicious too, and after ``allowed-failures`` such deaths an innocent participant fails
#: with KilledWorker.  Participants take seconds, so holding none in reserve costs nothing.
SCHEDULER_CONFIG: dict[str, object] = {"distributed.scheduler.worker-saturation": 1.0}


def scheduler_env() -> list[dict[str, str]]:
    """:data:`SCHEDULER_CONFIG` as environment variables for a scheduler started elsewhere
    (the Kubernetes scheduler pod)."""
    out = []
    for key, value in SCHEDULER_CONFIG.items():
        name = "DASK_" + "__".join(part.upper().replace("-", "_") for part in key.split("."))
        out.append({"name": name, "value": str(value)})
    return out


@contextmanager
def scheduler_config() -> Iterator[None]:
    """Apply :data:`SCHEDULER_CONFIG` while a scheduler is created in this process (it reads
    the settings when it starts)."""
    import dask

    with dask.config.set(SCHEDULER_CONFIG):
        yield


#: What ``tls.enabled: false`` costs on a machine shared with other users (``local``,
#: ``local-cuda``): said in the render and logged when such a cluster starts.
PLAIN_LOCAL_RISK = ("any user of this machine can connect to the scheduler on 127.0.0.1 and "
                    "run code on its workers as you")


def tls_summary(profile: Profile) -> str:
    """How a cluster started in this process is secured, in one line of its render."""
    if not profile.tls_enabled:
        return f"off (tls.enabled: false): {PLAIN_LOCAL_RISK}"
    if profile.tls.has_files:
        return f"on: mutual TLS with CA {profile.tls.ca_file} and certificate {profile.tls.cert}"
    return ("on: mutual TLS with a CA and certificate made for this run (only this process "
            "and its workers hold the key)")


def free_dashboard_address(address: str) -> str:
    """``address`` (``host:port``) when its port is free; otherwise the same host with a free
    port, and one warning line that says which port is taken and which one is used (instead
    of distributed's "Perhaps you already have a cluster running?")."""
    import socket

    host, _, port_text = str(address).rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        return address
    if port == 0:
        return address
    bind_host = host.strip("[]") or "0.0.0.0"
    with socket.socket(socket.AF_INET6 if ":" in bind_host else socket.AF_INET) as sock:
        try:
            sock.bind((bind_host, port))
            return address
        except OSError:
            pass
    with socket.socket(socket.AF_INET6 if ":" in bind_host else socket.AF_INET) as sock:
        sock.bind((bind_host, 0))
        free = sock.getsockname()[1]
    log.warning("dashboard: port %d is in use (another Dask cluster or program); using port %d",
                port, free)
    return f"{host}:{free}"


def serve_in_process_cluster(make_cluster, kwargs: dict, profile) -> Iterator:
    """Start a cluster that lives in this process (``LocalCluster``, ``LocalCUDACluster``) with
    the profile's TLS, yield a client, and close both quietly (busy workers are killed on
    shutdown and would otherwise log noisy tracebacks over the real outcome).

    With TLS (the default) the scheduler, nannies and workers accept only peers that present a
    certificate signed by this run's CA, whose key never leaves this process and its worker
    processes: other users of the machine cannot connect, although every port is on 127.0.0.1.
    """
    from distributed import Client

    from cluster.security import make_security

    security = make_security(profile)
    if kwargs.get("dashboard_address"):
        kwargs = {**kwargs, "dashboard_address": free_dashboard_address(
            kwargs["dashboard_address"])}
    if security is not None:
        kwargs = {**kwargs, "security": security, "protocol": "tls://"}
    else:
        log.warning("profile %s: TLS is off: %s", profile.name, PLAIN_LOCAL_RISK)
    with scheduler_config():
        cluster = make_cluster(**kwargs)
    client = None
    try:
        client = Client(cluster, security=security)
        yield client
    finally:
        lg = logging.getLogger("distributed")
        level = lg.level
        lg.setLevel(logging.ERROR)
        try:
            close_quietly(client, cluster)
        finally:
            lg.setLevel(level)
