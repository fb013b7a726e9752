"""``local-cuda``: ``dask_cuda.LocalCUDACluster``, one worker per GPU advertising ``GPU=1``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from cluster.base import (
    ClusterBackend,
    ClusterUnavailable,
    quiet_distributed_logs,
    serve_in_process_cluster,
    tls_summary,
)

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


def count_gpus() -> int:
    """Number of CUDA devices this process may use (0 when none or no driver)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            n = pynvml.nvmlDeviceGetCount()
            pynvml.nvmlShutdown()
        except Exception:  # no driver, no device
            return 0
        if visible:
            return min(n, len([v for v in visible.split(",") if v.strip()]))
        return n
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


class LocalCUDABackend(ClusterBackend):
    """One Dask worker per visible GPU on this machine, each advertising ``GPU=1``."""

    name: ClassVar[str] = "local-cuda"
    description: ClassVar[str] = "dask_cuda.LocalCUDACluster: one worker per GPU (GPU=1 each)"

    def cluster_kwargs(self) -> dict[str, Any]:
        p = self.profile
        resources = {"GPU": 1, **p.resources}
        return {
            "threads_per_worker": p.threads_per_worker,
            "memory_limit": p.memory_limit,
            "dashboard_address": p.dashboard_address,
            "host": "127.0.0.1",
            "resources": resources,
            "silence_logs": logging.ERROR,
        }

    def render(self) -> str:
        kwargs = dict(self.cluster_kwargs())
        kwargs["tls"] = tls_summary(self.profile)
        return ("# dask_cuda.LocalCUDACluster(**kwargs), one worker per visible GPU\n"
                + json.dumps(kwargs, indent=2) + "\n")

    def check_available(self) -> int:
        """The number of GPUs, or a :class:`ClusterUnavailable` that suggests ``local``."""
        try:
            import dask_cuda  # noqa: F401
        except ImportError as e:
            raise ClusterUnavailable(
                "cluster profile 'local-cuda' needs dask-cuda (`make setup-gpu`, i.e. "
                "pip install -e '.[gpu]'); without a GPU use --cluster local"
            ) from e
        n = count_gpus()
        if n == 0:
            raise ClusterUnavailable(
                "cluster profile 'local-cuda': no usable CUDA GPU on this machine "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
                "use --cluster local to run on CPU"
            )
        return n

    @contextmanager
    def client(self) -> Iterator[Client]:
        with quiet_distributed_logs():
            yield from self._client()

    def _client(self) -> Iterator[Client]:
        self.check_available()
        from dask_cuda import LocalCUDACluster

        yield from serve_in_process_cluster(LocalCUDACluster, self.cluster_kwargs(), self.profile)
