"""``tcp://host:port`` / ``tls://host:port``: connect to a scheduler someone else started."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

from cluster.base import ClusterBackend, ClusterUnavailable, close_quietly
from cluster.security import make_security

if TYPE_CHECKING:
    from distributed import Client


class TCPBackend(ClusterBackend):
    """An existing scheduler; this process only connects a client (and never closes workers)."""

    name: ClassVar[str] = "tcp"
    description: ClassVar[str] = "an existing scheduler at tcp://host:port or tls://host:port"

    def render(self) -> str:
        tls = "TLS with the profile's certificates" if self.profile.tls_enabled else "no TLS"
        return f"# connect to the existing scheduler {self.profile.address} ({tls})\n"

    def dashboard_link(self, client: Client) -> str | None:
        return client.dashboard_link  # the remote scheduler decides where it listens

    @contextmanager
    def client(self) -> Iterator[Client]:
        from distributed import Client

        security = make_security(self.profile) if self.profile.tls.has_files else None
        try:
            client = Client(self.profile.address, security=security, timeout="30s")
        except OSError as e:  # nobody listens there (or the TLS handshake failed)
            raise ClusterUnavailable(f"tcp: no scheduler answered at {self.profile.address} "
                                     f"({e})") from e
        try:
            yield client
        finally:
            close_quietly(client)
