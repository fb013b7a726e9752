"""What another user of the machine (or of the network) can try against a running cluster."""

from __future__ import annotations

import asyncio

import psutil


def identity(address: str, security=None) -> dict:
    """What the Dask server at ``address`` says about itself to a fresh connection made with
    no certificate (``security=None``) or with ``security``'s; raises ``OSError`` when the
    server refuses the connection."""
    from distributed.core import rpc

    args = security.get_connection_args("client") if security is not None else None

    async def ask() -> dict:
        async with rpc(address, timeout=5, connection_args=args) as server:
            return await server.identity()

    return asyncio.run(ask())


def listening(pid: int) -> set[tuple[str, int]]:
    """The (ip, port) pairs the process ``pid`` and its children listen on."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return {(c.laddr.ip, c.laddr.port) for p in procs for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}
