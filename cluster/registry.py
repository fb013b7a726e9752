"""The backend registry: name -> backend class (xarray-backends style).

Import from here (or from :mod:`cluster`): ``get_backend(name)``, ``backend_for(profile)``.
"""

from __future__ import annotations

from cluster.base import ClusterBackend
from cluster.kubernetes import KubernetesBackend
from cluster.local import LocalBackend
from cluster.local_cuda import LocalCUDABackend
from cluster.profile import Profile
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
