"""Ports of this test worker's own (no Django here: the gateway's tests use them too).

Parallel test workers (pytest-xdist) each take 1,000 ports of 20000-29999, below the
ephemeral range the kernel hands out for port 0, so no worker ever picks a port another is
about to bind for the servers it starts. (Model servers a deployment starts answer on unix
sockets, not ports.)
"""

from __future__ import annotations

import os

from core.net import free_port

WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
assert WORKER < 10, "at most ten test workers have ports of their own"
_BASE = 20000 + 1000 * WORKER
SERVER_PORTS = range(_BASE, _BASE + 1000)


def port() -> int:
    """A free port of this worker's own, for a server a test starts (or a port nobody serves)."""
    return free_port(SERVER_PORTS)
