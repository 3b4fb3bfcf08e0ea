"""Running the installed `portal` command, and a TCP proxy that can break, for the client's tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT

PORTAL = Path(sys.executable).parent / "portal"


@dataclass
class Cli:
    """Runs the installed `portal` command with its own config and cache directories."""

    home: Path
    url: str

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
        env.update(
            PORTAL_CONFIG=str(self.home / "config" / "config.json"),
            XDG_CACHE_HOME=str(self.home / "cache"),
            PORTAL_URL=self.url,
            COLUMNS="200",
        )
        env.update(extra)
        return env

    def __call__(self, *args: str, input: str | None = None, timeout: float = 300, **env: str):
        return subprocess.run(
            [str(PORTAL), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=self.env(**env),
        )

    def popen(self, *args: str, **env: str) -> subprocess.Popen:
        return subprocess.Popen(
            [str(PORTAL), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=self.env(**env),
        )


class Proxy:
    """A TCP proxy in front of the portal that counts the bytes clients send and can break.

    `cut_at(n)` drops every connection once n bytes have gone upstream in total (a network
    that fails mid-upload); `stall_at(n)` stops forwarding after n bytes but keeps reading
    (a connection that hangs), until the client gives up or is killed.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.sent = 0
        self.cuts = 0
        self._cut_at: int | None = None
        self._stall_at: int | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.sent, self._cut_at, self._stall_at = 0, None, None

    def cut_at(self, n: int) -> None:
        self._cut_at = n

    def stall_at(self, n: int) -> None:
        self._stall_at = n

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        for conn in self._conns:
            conn.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._conns += [client, upstream]
            threading.Thread(target=self._pump_up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(upstream, client), daemon=True).start()

    def _pump_up(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(256 * 1024):
                with self._lock:
                    if self._stall_at is not None and self.sent >= self._stall_at:
                        continue  # swallow: the client sees a hung connection
                    self.sent += len(data)
                    cut = self._cut_at is not None and self.sent >= self._cut_at
                    if cut:
                        self._cut_at = None
                        self.cuts += 1
                dst.sendall(data)
                if cut:
                    break
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _pump_down(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(256 * 1024):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
