"""Where model servers' unix sockets live: one private directory per instance.

A sandboxed model server (local) or a container (docker) has no network; it answers on
`model.sock` in a directory of its own that is bind-mounted into it, and the gateway
connects there. The directories sit under one root only the portal's user may enter.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path

from deployments.runtime.base import BackendUnavailable

# A unix socket's address holds at most 107 bytes.
SOCKET_PATH_MAX = 100
SOCKET_NAME = "model.sock"


def socket_root(runtime: Path) -> Path:
    """RUNTIME_DIR/sockets, or (when that path leaves too little room in a socket address) a
    directory of this user's own in the temporary directory."""
    default = runtime.resolve() / "sockets"
    if len(str(default)) <= SOCKET_PATH_MAX - 30:
        return default
    digest = hashlib.sha256(str(runtime.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"portal-{os.getuid()}-{digest}"


def private_dir(path: Path, mode: int = 0o700) -> Path:
    """`path` as a directory of this user's with `mode`, refusing one someone else made. (An
    instance's directory may be open to the container's user: its parent is private.)"""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise BackendUnavailable(f"{path} is not a directory of the portal's own user; remove it or choose another.")
    if stat.S_IMODE(info.st_mode) != mode:
        path.chmod(mode)
    return path


def instance_socket_dir(root: Path, name: str) -> Path:
    return root / hashlib.sha256(name.encode()).hexdigest()[:16]


def socket_in(directory: Path) -> Path:
    """The socket path in an instance's directory (removing a stale socket left there)."""
    path = directory / SOCKET_NAME
    if len(str(path)) > SOCKET_PATH_MAX:
        raise BackendUnavailable(
            f"The socket path {path} is too long for a unix socket: set RUNTIME_SOCKET_DIR to a shorter directory."
        )
    path.unlink(missing_ok=True)
    return path


def remove_socket_dir(directory: Path) -> None:
    (directory / SOCKET_NAME).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()
