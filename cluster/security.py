"""TLS for scheduler-worker-client traffic: the profile's own certificates, or temporary ones."""

from __future__ import annotations

import logging
import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distributed.security import Security

    from cluster.profile import Profile

log = logging.getLogger(__name__)


def make_security(profile: Profile) -> Security | None:
    """A ``distributed.security.Security`` for the profile, or None when TLS is off.

    Every role (scheduler, worker, client) presents a certificate and requires one from its
    peer, signed by the profile's CA (mutual TLS): a peer without such a certificate cannot
    connect at all.  With certificate files in ``profile.tls`` they are used for every role;
    otherwise :meth:`Security.temporary` makes a self-signed CA and certificate for this run
    only.  Those live in memory: distributed writes them for a moment into a private (0700)
    temporary folder to load them into an SSL context, and a backend that must ship them to
    workers elsewhere writes them into a private folder of its own (SLURM).

    Raises
    ------
    ClusterUnavailable
        when a certificate file of the profile cannot be read.
    """
    from distributed.security import Security

    if not profile.tls_enabled:
        return None
    if profile.tls.has_files:
        _check_files(profile)
        return files_security(profile)
    log.info("profile %s: temporary TLS certificates for this run", profile.name)
    return Security.temporary()


def files_security(profile: Profile) -> Security:
    """The ``Security`` of the profile's certificate files for every role, without reading
    them (what a render shows)."""
    from distributed.security import Security

    tls = profile.tls
    return Security(
        tls_ca_file=tls.ca_file,
        tls_client_cert=tls.cert,
        tls_client_key=tls.key,
        tls_scheduler_cert=tls.cert,
        tls_scheduler_key=tls.key,
        tls_worker_cert=tls.cert,
        tls_worker_key=tls.key,
        require_encryption=True,
    )


def _check_files(profile: Profile) -> None:
    """Each certificate file is readable here; a private key that others may read is
    reported (anyone holding it can join the cluster and run code on its workers)."""
    from cluster.base import ClusterUnavailable

    tls = profile.tls
    for key in ("ca_file", "cert", "key"):
        path = getattr(tls, key)
        if not os.access(path, os.R_OK) or not os.path.isfile(path):
            raise ClusterUnavailable(f"profile {profile.name!r}: tls.{key} {path}: not a "
                                     "readable file")
    mode = os.stat(tls.key).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("profile %s: tls.key %s is readable by others (mode %s): anyone who can "
                    "read it can join the cluster; chmod 600 it", profile.name, tls.key,
                    oct(stat.S_IMODE(mode)))
