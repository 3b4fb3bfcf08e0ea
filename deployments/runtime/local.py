"""The `local` backend: model servers as supervised processes on this machine.

Each instance is `python -m modelserver ...` in a bubblewrap sandbox (core/sandbox.py) and
its own session (it outlives the worker that started it, so a worker restart does not take
services down). It has no network: it answers on a unix socket in a directory of its own,
the only writable place it shares with this machine, and the gateway connects there. Its
log file and a small state file live under RUNTIME_DIR. The state file is what makes
`start` idempotent: a worker that died after starting an instance finds it again by name
instead of starting a second one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from django.conf import settings

from core import sandbox
from core.net import UNIX
from deployments.runtime.base import BackendUnavailable, InstanceSpec, InstanceStatus
from deployments.runtime.sockets import instance_socket_dir, private_dir, remove_socket_dir, socket_in, socket_root
from registry.model_check import CODE, unsandboxed_refusal

SOCKET_INSIDE = "/run/model/model.sock"


class LocalBackend:
    name = "local"

    def __init__(self, root: Path, sockets: Path | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets = private_dir(Path(sockets) if sockets else socket_root(self.root))

    @classmethod
    def default(cls) -> LocalBackend:
        return cls(settings.RUNTIME_DIR, Path(settings.RUNTIME_SOCKET_DIR) if settings.RUNTIME_SOCKET_DIR else None)

    def socket_dir(self, name: str) -> Path:
        return instance_socket_dir(self.sockets, name)

    def _sandbox(self, spec: InstanceSpec) -> sandbox.Sandbox:
        refusal = unsandboxed_refusal("model servers", "'Allow unsandboxed' on the environment, in the admin")
        if refusal and not spec.allow_unsandboxed:
            raise BackendUnavailable(refusal)
        return sandbox.Sandbox(
            name=spec.name,
            bwrap="" if refusal else settings.SANDBOX_BWRAP,
            limits=sandbox.Limits(
                memory_mb=spec.memory_mb,
                processes=settings.SANDBOX_MAX_PROCESSES,
                cpus=spec.cpus,
                tmp_mb=settings.SANDBOX_TMP_MB,
            ),
        )

    # -------------------------------------------------------------- state files

    def _state_path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def _read(self, name: str) -> dict | None:
        try:
            return json.loads(self._state_path(name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _process(self, state: dict | None) -> psutil.Process | None:
        """The live process a state file describes (same pid and start time), if any."""
        if not state:
            return None
        try:
            proc = psutil.Process(state["pid"])
            if abs(proc.create_time() - state["created"]) > 1 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (psutil.NoSuchProcess, KeyError):
            return None

    # -------------------------------------------------------------- interface

    def start(self, spec: InstanceSpec) -> InstanceStatus:
        current = self.status(spec.name)
        if current.running:
            return current
        box = self._sandbox(spec)
        workdir = self.root / spec.name
        workdir.mkdir(exist_ok=True)
        sockets = private_dir(self.socket_dir(spec.name))
        socket_path = socket_in(sockets)
        if box.sandboxed:
            box.read_only[Path(spec.artifact)] = "/model/artifact"
            box.writable[sockets] = str(Path(SOCKET_INSIDE).parent)
            artifact, listen = "/model/artifact", SOCKET_INSIDE
        else:
            artifact, listen = str(spec.artifact), str(socket_path)
        # Recorded before the process exists: a worker killed right after spawning still
        # leaves a trace that list() (and so the reconciler) sees.
        self._write(spec.name, {"pending": True, "created": time.time()})
        args = [
            sys.executable,
            "-m", "modelserver",
            "--artifact", artifact,
            "--flavor", spec.flavor,
            "--uds", listen,
            "--version", spec.version,
            "--instance-name", spec.name,
            "--drain-seconds", str(settings.RUNTIME_DRAIN_SECONDS),
            "--max-processes", str(settings.SANDBOX_MAX_PROCESSES),
        ]  # fmt: skip
        if spec.field_order:
            args += ["--field-order", ",".join(spec.field_order)]
        with open(self.log_path(spec.name), "ab") as log:
            how = "sandboxed" if box.sandboxed else "UNSANDBOXED (allowed for this environment)"
            log.write(f"--- starting {spec.name} ({spec.version}), {how}, on {socket_path}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                box.command(args, code=CODE),
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **box.popen_kwargs(code=CODE),
            )
        state = {
            "pid": proc.pid,
            "created": psutil.Process(proc.pid).create_time(),
            "url": f"{UNIX}{socket_path}",
            "version": spec.version,
            "sandboxed": box.sandboxed,
        }
        self._write(spec.name, state)
        return InstanceStatus(name=spec.name, running=True, url=state["url"])

    def _write(self, name: str, state: dict) -> None:
        tmp = self._state_path(name).with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self._state_path(name))

    def _find(self, name: str) -> psutil.Process | None:
        """The instance's process from its state file, or (if the worker died before writing
        it) by its name and working directory."""
        proc = self._process(self._read(name))
        if proc is not None:
            return proc
        workdir = str(self.root / name)
        for candidate in psutil.process_iter(["cmdline", "cwd"]):
            cmdline = candidate.info["cmdline"] or []
            if "--instance-name" in cmdline and name in cmdline and candidate.info["cwd"] == workdir:
                return candidate
        return None

    def created_at(self, name: str) -> float | None:
        state = self._read(name)
        return state.get("created") if state else None

    def stop(self, name: str, *, drain_seconds: float) -> None:
        proc = self._find(name)
        if proc is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                # The model server drains, then exits, and its sandbox with it. (A sandbox's
                # init ignores signals from outside; the server itself gets this one.)
                for each in [proc, *proc.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        each.send_signal(signal.SIGTERM)
                if not _exited(proc, drain_seconds + 5):
                    for each in [*proc.children(recursive=True), proc]:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            each.kill()
                    if not _exited(proc, 5):
                        raise psutil.TimeoutExpired(5, proc.pid)
        self._state_path(name).unlink(missing_ok=True)
        sandbox.release_cgroups(name)
        remove_socket_dir(self.socket_dir(name))

    def status(self, name: str) -> InstanceStatus:
        state = self._read(name)
        proc = self._process(state)
        if proc is None:
            return InstanceStatus(name=name, running=False, detail="not running" if state else "unknown")
        return InstanceStatus(name=name, running=True, url=state["url"])

    def logs(self, name: str, *, tail: int = 200) -> str:
        path = self.log_path(name)
        if not path.exists():
            return ""
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            lines = handle.read().decode(errors="replace").splitlines()
        return "\n".join(lines[-tail:])

    def list(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json"))

    def stop_all(self) -> int:
        """Stop every instance this backend started (used when `make run` stops)."""
        names = self.list()
        for name in names:
            self.stop(name, drain_seconds=2)
        return len(names)


def wait_for(check, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


def _exited(proc: psutil.Process, timeout: float) -> bool:
    """Whether `proc` exits within `timeout` seconds. A zombie has exited: the process that
    started it (another worker, or the autoscaler) reaps it, and waiting for that here would
    never end, since only a parent can reap its child."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc.wait(timeout=0.1)
            return True
        except psutil.TimeoutExpired:
            pass
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
