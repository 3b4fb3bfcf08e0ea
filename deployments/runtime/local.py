"""The `local` backend: model servers as supervised processes on this machine.

Each instance is `python -m modelserver ...` in its own session (it outlives the worker
that started it, so a worker restart does not take services down), with its log file and
a small state file under RUNTIME_DIR. The state file is what makes `start` idempotent: a
worker that died after starting an instance finds it again by name instead of starting a
second one.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from django.conf import settings

from core.net import free_port
from deployments.runtime.base import InstanceSpec, InstanceStatus
from registry.model_check import model_process_env

ROOT = Path(__file__).resolve().parent.parent.parent


class LocalBackend:
    name = "local"

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def default(cls) -> LocalBackend:
        return cls(settings.RUNTIME_DIR)

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
        port = free_port(settings.RUNTIME_PORTS)
        workdir = self.root / spec.name
        workdir.mkdir(exist_ok=True)
        # Recorded before the process exists: a worker killed right after spawning still
        # leaves a trace that list() (and so the reconciler) sees.
        self._write(spec.name, {"pending": True, "created": time.time()})
        args = [
            sys.executable,
            "-m", "modelserver",
            "--artifact", str(spec.artifact),
            "--flavor", spec.flavor,
            "--port", str(port),
            "--version", spec.version,
            "--instance-name", spec.name,
            "--drain-seconds", str(settings.RUNTIME_DRAIN_SECONDS),
        ]  # fmt: skip
        if spec.field_order:
            args += ["--field-order", ",".join(spec.field_order)]
        # Model code runs here: none of the portal's settings or secrets in its environment,
        # its own empty working directory, and the environment's memory limit.
        env = model_process_env()
        limit = spec.memory_mb * 1024 * 1024

        def limits() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        with open(self.log_path(spec.name), "ab") as log:
            log.write(f"--- starting {spec.name} ({spec.version}) on port {port}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                args,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=limits,
            )
        state = {
            "pid": proc.pid,
            "created": psutil.Process(proc.pid).create_time(),
            "port": port,
            "url": f"http://127.0.0.1:{port}",
            "version": spec.version,
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
                proc.send_signal(signal.SIGTERM)  # the model server drains, then exits
                try:
                    proc.wait(timeout=drain_seconds + 5)
                except psutil.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self._state_path(name).unlink(missing_ok=True)

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
