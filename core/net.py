"""A free TCP port on 127.0.0.1, optionally from a range of the caller's own; plain HTTP
requests to a URL that may be a unix socket (`unix:/path/to.sock`, how `local` model
servers answer)."""

from __future__ import annotations

import http.client
import random
import socket
import threading
import urllib.parse

UNIX = "unix:"

_next: dict[tuple[int, int], int] = {}
_lock = threading.Lock()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(ports: range | None = None) -> int:
    """A port nothing listens on now: any the OS offers, or one from `ports`.

    From a range, ports are handed out in turn (starting anywhere in it), so a port given to
    a process that has not bound it yet is not given again before the range comes round; and
    processes with ranges of their own (parallel test workers) never race for one.
    """
    if ports is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    key = (ports.start, ports.stop)
    with _lock:
        start = _next.get(key, random.randrange(len(ports)))  # noqa: S311 - spreading, not secrecy
        for step in range(len(ports)):
            index = (start + step) % len(ports)
            if _bindable(ports[index]):
                _next[key] = index + 1
                return ports[index]
    raise RuntimeError(f"No free port between {ports.start} and {ports.stop - 1}.")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def http_request(
    base: str, path: str, *, method: str = "GET", body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """(status, body) of one request to `base` + `path`, where `base` is `http://host:port`
    or `unix:/path/to.sock`. Raises OSError when nothing answers."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if base.startswith(UNIX):
        connection: http.client.HTTPConnection = _UnixConnection(base[len(UNIX) :], timeout)
    else:
        parts = urllib.parse.urlsplit(base)
        if parts.scheme != "http" or not parts.hostname:
            raise OSError(f"Not an http:// or unix: URL: {base}")
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
        path = parts.path.rstrip("/") + path
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except http.client.HTTPException as exc:
        raise OSError(f"Not an HTTP answer: {exc}") from None
    finally:
        connection.close()
