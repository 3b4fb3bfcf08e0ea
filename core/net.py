"""A free TCP port on 127.0.0.1, optionally from a range of the caller's own."""

from __future__ import annotations

import random
import socket
import threading

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
