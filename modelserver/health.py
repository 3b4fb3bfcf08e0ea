"""python -m modelserver.health: exit 0 if this container's model server answers ready.

The container's health check. It asks on the unix socket the server answers on when it has
no network (/run/model/model.sock), else on its TCP port.
"""

from __future__ import annotations

import os
import socket
import sys

SOCKET = "/run/model/model.sock"
PORT = 8000


def main() -> int:
    if os.path.exists(SOCKET):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: str | tuple[str, int] = SOCKET
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = ("127.0.0.1", PORT)
    sock.settimeout(2)
    try:
        sock.connect(address)
        sock.sendall(b"GET /health/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")
        status_line = sock.recv(64).split(b"\r\n", 1)[0]
    except OSError:
        return 1
    finally:
        sock.close()
    return 0 if status_line.split(b" ")[1:2] == [b"200"] else 1


if __name__ == "__main__":
    sys.exit(main())
