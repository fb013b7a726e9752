"""``slurm``: ``dask_jobqueue.SLURMCluster`` with adaptive scaling.

Each SLURM job runs ``processes`` Dask workers (``cores``/``memory`` shared between them);
GPU jobs (``gpus_per_job > 0``) ask for ``--gres=gpu:N`` and run ``dask cuda worker``, which
starts one worker per GPU, each advertising ``GPU=1``.  Scheduler-worker traffic is TLS:
temporary certificates are written (mode 0600) into a private folder made for the run (mode
0700) inside ``shared_temp_directory``, which the compute nodes must see, and removed with it
when the run ends.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cluster.base import ClusterBackend, ClusterUnavailable, close_quietly, scheduler_config
from cluster.security import files_security, make_security

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

#: how long to wait for the first SLURM job's workers before giving up, s
FIRST_WORKER_TIMEOUT_S = 300.0
#: name prefix of the per-run certificate folder in ``slurm.shared_temp_directory``
CERT_FOLDER_PREFIX = "myocohort-tls-"


class SlurmBackend(ClusterBackend):
    """Dask workers as SLURM batch jobs, scaled adaptively between min and max jobs."""

    name: ClassVar[str] = "slurm"
    description: ClassVar[str] = "dask_jobqueue.SLURMCluster, adaptive (batch jobs of workers)"
    renders_artifact: ClassVar[bool] = True

    @property
    def shared_temp_directory(self) -> str:
        """Where the run's certificate folder is made: the profile's (``~`` and ``$VAR``
        already expanded) or ``./.myocohort-slurm``, as an absolute path for the job script."""
        o = self.profile.slurm
        return str(Path(o.shared_temp_directory or ".myocohort-slurm").absolute())

    def job_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``SLURMCluster``/``SLURMJob`` (no scheduler options)."""
        o = self.profile.slurm
        directives = list(o.job_extra_directives)
        worker_extra_args: list[str] = []
        resources = dict(self.profile.resources)
        kwargs: dict[str, Any] = {
            "cores": o.cores,
            "memory": o.memory,
            "processes": o.processes,
            "walltime": o.walltime,
            "queue": o.queue,
            "account": o.account,
            "python": o.python or sys.executable,
            "job_script_prologue": list(o.job_script_prologue),
            "local_directory": o.local_directory,
            "log_directory": o.log_directory,
            "interface": o.interface,
            "job_name": "myocohort-worker",
        }
        if self.profile.threads_per_worker and o.processes * self.profile.threads_per_worker != o.cores:
            log.debug("slurm: cores/processes sets threads per worker; threads_per_worker ignored")
        if o.gpus_per_job > 0:
            directives.append(f"--gres=gpu:{o.gpus_per_job}")
            # dask-cuda starts one worker per GPU it sees and pins each to its device
            kwargs["worker_command"] = "dask_cuda.cli worker"
            kwargs["processes"] = 1
            resources.setdefault("GPU", 1)
        if resources:
            worker_extra_args += ["--resources",
                                  ",".join(f"{k}={v:g}" for k, v in sorted(resources.items()))]
        kwargs["job_extra_directives"] = directives
        kwargs["worker_extra_args"] = worker_extra_args
        return {k: v for k, v in kwargs.items() if v is not None}

    def _render_security(self):
        """Certificate *paths* as the job script will see them (nothing is written)."""
        from distributed.security import Security

        if not self.profile.tls_enabled:
            return None
        tls = self.profile.tls
        if tls.has_files:
            return files_security(self.profile)
        d = f"{self.shared_temp_directory}/{CERT_FOLDER_PREFIX}XXXX"
        return Security(
            tls_ca_file=f"{d}/.dask-jobqueue.worker.ca_file.XXXX",
            tls_worker_cert=f"{d}/.dask-jobqueue.worker.cert.XXXX",
            tls_worker_key=f"{d}/.dask-jobqueue.worker.key.XXXX",
            require_encryption=True,
        )

    def render(self) -> str:
        """The SLURM batch script one worker job runs (scheduler address is a placeholder)."""
        try:
            from dask_jobqueue.slurm import SLURMJob
        except ImportError as e:  # pragma: no cover - dask-jobqueue is a dependency
            raise ClusterUnavailable("the slurm backend needs dask-jobqueue") from e
        security = self._render_security()
        protocol = "tls://" if security is not None else "tcp://"
        job = SLURMJob(
            scheduler=f"{protocol}SCHEDULER-ADDRESS:PORT", name="myocohort-worker",
            security=security, protocol=protocol, **self.job_kwargs(),
        )
        script = job.job_script()
        o = self.profile.slurm
        header = (f"# myocohort profile {self.profile.name!r}: adaptive between {o.min_jobs} "
                  f"and {o.max_jobs} job(s); TLS {'on' if security is not None else 'off'}")
        if security is not None and not self.profile.tls.has_files:
            header += (f"\n# temporary certificates are written (0600) into a private folder "
                       f"{self.shared_temp_directory}/{CERT_FOLDER_PREFIX}XXXX (0700) when the "
                       "run starts, and removed when it ends (XXXX = random suffix)")
        lines = script.splitlines()
        if lines and lines[0].startswith("#!"):
            return "\n".join([lines[0], header, *lines[1:]]) + "\n"
        return header + "\n" + script

    @contextmanager
    def client(self) -> Iterator[Client]:
        if shutil.which("sbatch") is None:
            raise ClusterUnavailable("cluster profile 'slurm': sbatch is not on PATH; run on a "
                                     "SLURM login node, or use --cluster local")
        from dask_jobqueue import SLURMCluster
        from distributed import Client

        o = self.profile.slurm
        security = make_security(self.profile)
        kwargs = self.job_kwargs()
        certs = None
        cluster = client = None
        try:
            if security is not None:
                if not self.profile.tls.has_files:
                    certs = self._certificate_folder()
                    kwargs["shared_temp_directory"] = certs
                kwargs.update(security=security, protocol="tls://")
            scheduler_options = {"dashboard_address": self.profile.dashboard_address}
            with scheduler_config():  # (the scheduler runs in this process)
                cluster = SLURMCluster(scheduler_options=scheduler_options, **kwargs)
            workers_per_job = max(1, o.gpus_per_job or o.processes)
            # keep at least one job: GPU routing checks the workers' resources before submitting
            cluster.adapt(minimum_jobs=max(1, o.min_jobs), maximum_jobs=o.max_jobs)
            log.info("slurm: job script\n%s", cluster.job_script())
            client = Client(cluster, security=security)
            try:
                client.wait_for_workers(1, timeout=FIRST_WORKER_TIMEOUT_S)
            except TimeoutError as e:
                raise ClusterUnavailable(
                    f"slurm: no worker joined within {FIRST_WORKER_TIMEOUT_S:.0f} s (is the queue "
                    f"{o.queue or 'default'} full? check squeue and the job logs); "
                    f"{workers_per_job} worker(s) per job expected"
                ) from e
            yield client
        finally:
            close_quietly(client, cluster)
            if certs is not None:
                _remove_certificates(cluster, certs)

    def _certificate_folder(self) -> str:
        """A new private folder (0700) for this run's certificates inside
        :attr:`shared_temp_directory`, which is made (0700) when missing and otherwise left as
        it is (it may be a shared scratch folder or the home directory)."""
        base = Path(self.shared_temp_directory)
        try:
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            return tempfile.mkdtemp(prefix=CERT_FOLDER_PREFIX, dir=base)
        except OSError as e:
            raise ClusterUnavailable(f"slurm: cannot make a folder for the TLS certificates in "
                                     f"slurm.shared_temp_directory {base} ({e})") from e


def _remove_certificates(cluster: Any, folder: str) -> None:
    """Delete the run's certificate folder.  dask-jobqueue keeps each certificate file open
    as a ``NamedTemporaryFile`` on the cluster object, deleted when that is garbage collected;
    closing them first deletes them now (and keeps their finalizers from complaining later)."""
    for value in list(vars(cluster).values()) if cluster is not None else []:
        name = getattr(value, "name", None)
        if isinstance(name, str) and name.startswith(folder + os.sep) and hasattr(value, "close"):
            try:
                value.close()
            except OSError:
                log.debug("closing %s failed", name, exc_info=True)
    shutil.rmtree(folder, ignore_errors=True)
