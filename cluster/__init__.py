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
from cluster.kubernetes import KubernetesBackend
from cluster.local import LocalBackend
from cluster.local_cuda import LocalCUDABackend
from cluster.profile import (
    BACKEND_NAMES,
    BUILTIN_PROFILES,
    Profile,
    ProfileError,
    load_profile,
    profile_from_dict,
    profile_to_dict,
)
from cluster.slurm import SlurmBackend
from cluster.tcp import TCPBackend

BACKENDS: dict[str, type[ClusterBackend]] = {
    cls.name: cls
    for cls in (LocalBackend, LocalCUDABackend, SlurmBackend, KubernetesBackend, TCPBackend)
}


def get_backend(name: str) -> type[ClusterBackend]:
    """The backend class registered under ``name``.

    Raises
    ------
    ValueError
        naming the valid backends.
    """
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown cluster backend {name!r}; valid: {sorted(BACKENDS)}") from None


def backend_for(profile: Profile) -> ClusterBackend:
    """The backend instance for a loaded profile."""
    return get_backend(profile.backend)(profile)


__all__ = [
    "BACKENDS", "BACKEND_NAMES", "BUILTIN_PROFILES", "ClusterBackend", "ClusterUnavailable",
    "Profile", "ProfileError", "backend_for", "get_backend", "load_profile", "profile_from_dict",
    "profile_to_dict",
]
