"""TLS for scheduler-worker traffic: the profile's own certificates, or temporary ones."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distributed.security import Security

    from cluster.profile import Profile

log = logging.getLogger(__name__)


def make_security(profile: Profile) -> Security | None:
    """A ``distributed.security.Security`` for the profile, or None when TLS is off.

    With certificate files in ``profile.tls`` they are used for scheduler, workers and client
    alike; otherwise :meth:`Security.temporary` makes a self-signed CA and certificate in
    memory for this run only (they never touch the disk unless a backend must ship them to
    its workers, as SLURM does).
    """
    from distributed.security import Security

    if not profile.tls_enabled:
        return None
    tls = profile.tls
    if tls.has_files:
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
    log.info("profile %s: temporary TLS certificates for this run", profile.name)
    return Security.temporary()
