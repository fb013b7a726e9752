"""Where the work runs: one backend per kind of cluster, chosen by a profile.

>>> from cluster import get_backend, load_profile
>>> profile = load_profile("local")
>>> backend = get_backend(profile.backend)(profile)
>>> with backend.client() as client:  # doctest: +SKIP
...     ...

Backends: ``local`` (:class:`distributed.LocalCluster`), ``local-cuda``
(``dask_cuda.LocalCUDACluster``), ``slurm`` (``dask_jobqueue.SLURMCluster``), ``kubernetes``
(``dask_kubernetes.operator.KubeCluster``) and ``tcp`` (an existing scheduler).  The optional
packages are imported only inside their backend's methods.
"""

from __future__ import annotations

from cluster.base import ClusterBackend, ClusterUnavailable
from cluster.profile import (
    BACKEND_NAMES,
    BUILTIN_PROFILES,
    Profile,
    ProfileError,
    load_profile,
    profile_from_dict,
    profile_to_dict,
)
from cluster.registry import BACKENDS, backend_for, get_backend

__all__ = [
    "BACKENDS", "BACKEND_NAMES", "BUILTIN_PROFILES", "ClusterBackend", "ClusterUnavailable",
    "Profile", "ProfileError", "backend_for", "get_backend", "load_profile", "profile_from_dict",
    "profile_to_dict",
]
