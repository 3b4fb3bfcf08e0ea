"""How the gateway reaches model servers: over TCP (`http://host:port`), or over a unix
socket (`unix:/path/to/model.sock`), which is how sandboxed `local` model servers answer:
they have no network at all.

aiohttp pools connections per host, so a socket upstream gets a host name of its own that
encodes its path (hex, in DNS-sized labels, under `.unix`); the connector turns that host
back into the path when it opens a connection. No shared table, nothing to keep in step.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp.client_exceptions import UnixClientConnectorError
from aiohttp.helpers import ceil_timeout

UNIX = "unix:"
SUFFIX = ".unix"


def request_base(url: str) -> str:
    """The base URL the gateway's HTTP client uses for an upstream published as `url`."""
    if not url.startswith(UNIX):
        return url
    encoded = url[len(UNIX) :].encode().hex()
    return "http://" + ".".join(encoded[i : i + 60] for i in range(0, len(encoded), 60)) + SUFFIX


def socket_path(host: str) -> str | None:
    """The socket path a host name from request_base stands for, or None for a TCP host."""
    if not host.endswith(SUFFIX):
        return None
    try:
        return bytes.fromhex(host[: -len(SUFFIX)].replace(".", "")).decode()
    except ValueError:
        return None


class UpstreamConnector(aiohttp.TCPConnector):
    """A TCP connector that opens unix-socket connections for hosts under `.unix`."""

    async def _create_connection(self, req, traces, timeout):
        path = socket_path(req.url.raw_host or "")
        if path is None:
            return await super()._create_connection(req, traces, timeout)
        try:
            async with ceil_timeout(timeout.sock_connect, ceil_threshold=timeout.ceil_threshold):
                _, proto = await self._loop.create_unix_connection(self._factory, path)
        except OSError as exc:
            if exc.errno is None and isinstance(exc, asyncio.TimeoutError):
                raise
            raise UnixClientConnectorError(path, req.connection_key, exc) from exc
        return proto
