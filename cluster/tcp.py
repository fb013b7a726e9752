"""``tcp://host:port`` / ``tls://host:port``: connect to a scheduler someone else started."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

from cluster.base import ClusterBackend, ClusterUnavailable, close_quietly
from cluster.security import make_security

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


class TCPBackend(ClusterBackend):
    """An existing scheduler; this process only connects a client (and never closes workers).

    TLS is used exactly when the profile says so (:attr:`cluster.profile.Profile.tls_enabled`),
    always with the profile's own certificates (the profile refuses TLS without them), and the
    connection then goes to ``tls://`` whatever scheme the address was written with: it never
    falls back to plain TCP.
    """

    name: ClassVar[str] = "tcp"
    description: ClassVar[str] = "an existing scheduler at tcp://host:port or tls://host:port"

    @property
    def address(self) -> str:
        """The address the client connects to: ``tls://`` exactly when TLS is on."""
        hostport = str(self.profile.address).split("://", 1)[1]
        return ("tls://" if self.profile.tls_enabled else "tcp://") + hostport

    def render(self) -> str:
        p = self.profile
        if p.tls_enabled:
            how = (f"mutual TLS: CA {p.tls.ca_file}, client certificate {p.tls.cert}, key "
                   f"{p.tls.key}")
            if self.address != p.address:
                how += f" (the profile's address {p.address} is given as tls://)"
        else:
            how = ("no TLS: plain TCP, so anyone who can reach it can run code on its workers; "
                   "set tls.ca_file, tls.cert and tls.key to use TLS")
        return f"# connect to the existing scheduler {self.address}\n# {how}\n"

    def dashboard_link(self, client: Client) -> str | None:
        return client.dashboard_link  # the remote scheduler decides where it listens

    @contextmanager
    def client(self) -> Iterator[Client]:
        from distributed import Client

        security = make_security(self.profile)
        if security is None:
            log.info("profile %s: connecting to %s without TLS", self.profile.name,
                     self.address)
        try:
            client = Client(self.address, security=security, timeout="30s")
        # OSError: nobody listens there, or the TLS handshake failed; ValueError: tornado's
        # "IOStream is not idle; cannot convert to SSL", when a plain scheduler answers TLS
        except (OSError, ValueError) as e:
            raise ClusterUnavailable(f"tcp: no scheduler answered at {self.address} "
                                     f"({type(e).__name__}: {e})") from e
        try:
            yield client
        finally:
            close_quietly(client)
