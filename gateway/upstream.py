"""How the gateway reaches model servers, over TCP (`http://host:port`) or over a unix socket
(`unix:/path/to/model.sock`, how sandboxed `local` model servers and Docker containers answer:
they have no network at all).

A lean HTTP/1.1 client for the one request a prediction makes: POST {instance}/predict.

aiohttp's ClientSession is general (cookies, redirects, proxies, auth, tracing, payload
registry, per-request header merging) and costs the gateway about 160 us of CPU for each
forwarded prediction on a 2-CPU machine; this client does the same exchange for about 50 us.
Each instance gets a pool of kept-alive connections; a request is one write (head and
body), and the answer is parsed with httptools (the parser uvicorn already uses).

Plain `http://host:port[/prefix]` and `unix:` instances are served here (`pool_for` says None
for anything else, and the gateway keeps using its aiohttp session for those). The aiohttp
session also makes the health checks; for `unix:` instances it asks for a host name that
encodes the socket's path (`request_base`), which `UpstreamConnector` turns back into the path. Errors: a refused,
reset or closed connection, or a malformed answer, is `UpstreamError`; time limits are the
caller's (`asyncio.timeout` around `Pool.post`), and a request cut short by one closes its
connection, so a late answer is never read as the next request's.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import aiohttp
import httptools
from aiohttp.client_exceptions import UnixClientConnectorError
from aiohttp.helpers import ceil_timeout

UNIX = "unix:"
SUFFIX = ".unix"

# Connections idle longer than this are closed rather than reused: the model server
# closes its side after 30 s (uvicorn's timeout_keep_alive), and a request written on a
# connection the server is closing at that moment would fail.
IDLE_SECONDS = 15.0
# Bodies up to this size are joined to the head and written in one call.
JOIN_BYTES = 64 * 1024


class UpstreamError(Exception):
    """The connection was refused, reset or closed before a whole answer came, or the answer
    was not HTTP."""


class _Connection(asyncio.Protocol):
    """One kept-alive connection: one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.body: list[bytes] = []
        self.received = False  # a byte of the current answer has come
        self.framed = False  # the answer says its length (Content-Length or chunked)
        self.headers_done = False
        self.keep_alive = False  # read when the answer is complete (the parser resets after)
        self.closed = False
        self.idle_since = 0.0

    # -------------------------------------------------------------- asyncio

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.framed:
            # An answer without a length ends with its connection.
            self._done((self.parser.get_status_code(), b"".join(self.body)))
        else:
            self._fail(UpstreamError(f"the connection closed before a whole answer came ({exc or 'EOF'})"))

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"the answer is not HTTP: {exc}"))
            self.close()

    # -------------------------------------------------------------- httptools

    def on_header(self, name: bytes, _value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        self._done((self.parser.get_status_code(), b"".join(self.body)))

    # -------------------------------------------------------------- use

    def send(self, head: bytes, body: bytes) -> asyncio.Future:
        self.waiter = asyncio.get_running_loop().create_future()
        self.body = []
        self.received = self.framed = self.headers_done = self.keep_alive = False
        if len(body) <= JOIN_BYTES:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))
        return self.waiter

    def reusable(self) -> bool:
        return not self.closed and self.keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _done(self, result: tuple[int, bytes]) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(result)

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)


class Pool:
    """Kept-alive connections to one instance, and its request head (all but the length)."""

    def __init__(self, *, netloc: str, path: str, host: str = "", port: int = 0, socket_path: str = "") -> None:
        self.host, self.port, self.socket_path = host, port, socket_path
        self._head = (
            f"POST {path}/predict HTTP/1.1\r\nHost: {netloc}\r\nContent-Type: application/json\r\n"
            "Accept-Encoding: identity\r\nContent-Length: "
        ).encode("latin-1")
        self._idle: list[_Connection] = []
        self._closed = False

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """(status, body) of the instance's answer to POST .../predict with `body`."""
        head = self._head + b"%d\r\n\r\n" % len(body)
        while self._idle:
            connection = self._idle.pop()
            if not connection.reusable() or time.monotonic() - connection.idle_since > IDLE_SECONDS:
                connection.close()
                continue
            try:
                return await self._exchange(connection, head, body)
            except UpstreamError:
                if connection.received:
                    raise
                # Closed by the instance while it sat idle here: once more on a new
                # connection (a prediction is safe to repeat).
                break
        return await self._exchange(await self._connect(), head, body)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            if self.socket_path:
                _, connection = await loop.create_unix_connection(_Connection, self.socket_path)
            else:
                _, connection = await loop.create_connection(_Connection, self.host, self.port)
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.socket_path or f'{self.host}:{self.port}'}: {exc}") from exc
        return connection

    async def _exchange(self, connection: _Connection, head: bytes, body: bytes) -> tuple[int, bytes]:
        try:
            result = await connection.send(head, body)
        except BaseException:  # refused, reset, or cut short by the caller's time limit
            connection.close()
            raise
        if connection.reusable() and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
        return result

    def prune(self, now: float) -> None:
        """Close the connections idle too long (the rest stay, newest last)."""
        keep = []
        for connection in self._idle:
            if connection.reusable() and now - connection.idle_since <= IDLE_SECONDS:
                keep.append(connection)
            else:
                connection.close()
        self._idle = keep

    def close(self) -> None:
        """Close the idle connections; those in use close when their answer is in."""
        self._closed = True
        for connection in self._idle:
            connection.close()
        self._idle = []


def pool_for(url: str) -> Pool | None:
    """A pool for an instance at a plain http:// base URL or a unix: socket; None for any other
    kind of URL."""
    if url.startswith(UNIX):
        socket_path = url[len(UNIX) :]
        return Pool(socket_path=socket_path, netloc="localhost", path="") if socket_path.startswith("/") else None
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError:
        return None
    if parts.scheme != "http" or not parts.hostname or parts.username or parts.password or parts.query:
        return None
    if parts.fragment or any(c in parts.path for c in " \r\n"):
        return None
    return Pool(host=parts.hostname, port=port, netloc=parts.netloc, path=parts.path)


# ---------------------------------------------------------------- the aiohttp session's view


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
