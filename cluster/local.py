"""``local``: a ``distributed.LocalCluster`` of worker processes on this machine."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from cluster.base import (
    ClusterBackend,
    quiet_distributed_logs,
    serve_in_process_cluster,
    tls_summary,
)

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


class LocalBackend(ClusterBackend):
    """Worker processes on this machine (one per core by default), behind mutual TLS with
    temporary certificates unless the profile turns it off: every port listens on 127.0.0.1,
    and TLS is what keeps the machine's other users from running code on the workers."""

    name: ClassVar[str] = "local"
    description: ClassVar[str] = "distributed.LocalCluster on this machine (default)"

    def cluster_kwargs(self) -> dict[str, Any]:
        p = self.profile
        kwargs: dict[str, Any] = {
            "n_workers": p.n_workers,
            "threads_per_worker": p.threads_per_worker,
            "processes": True,
            "memory_limit": p.memory_limit,
            "dashboard_address": p.dashboard_address,
            "host": "127.0.0.1",
            # worker start/stop chatter stays out of the user's terminal (errors still show)
            "silence_logs": logging.ERROR,
        }
        if p.resources:
            kwargs["resources"] = p.resources
        # each worker gets threads_per_worker cores: keep numba/OpenMP/BLAS pools to that many
        # (dask already pins OMP/MKL/OpenBLAS to 1 thread; numba and torch read these)
        n = str(p.threads_per_worker)
        kwargs["env"] = {"NUMBA_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
                         "OPENBLAS_NUM_THREADS": n}
        return kwargs

    def render(self) -> str:
        kwargs = {k: v for k, v in self.cluster_kwargs().items() if v is not None}
        kwargs["tls"] = tls_summary(self.profile)
        return "# distributed.LocalCluster(**kwargs)\n" + json.dumps(kwargs, indent=2) + "\n"

    @contextmanager
    def client(self) -> Iterator[Client]:
        with quiet_distributed_logs():
            yield from self._client()

    def _client(self) -> Iterator[Client]:
        from distributed import LocalCluster

        kwargs = {k: v for k, v in self.cluster_kwargs().items() if v is not None}
        yield from serve_in_process_cluster(LocalCluster, kwargs, self.profile)
