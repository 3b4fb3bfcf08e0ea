"""The `docker` backend: every model version an image, every instance a container.

Containers run with the environment's memory and CPU limits, a read-only root filesystem
(a small tmpfs for /tmp), no capabilities and no privilege escalation, as nobody, with a
health check, labels tying them to their deployment, and their port published on
127.0.0.1 only (or on a user-defined network the gateway shares, with DOCKER_NETWORK).
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime

import docker
import docker.errors
from django.conf import settings

from deployments.runtime.base import BackendUnavailable, InstanceSpec, InstanceStatus
from deployments.runtime.images import CONTAINER_PORT, ensure_model_image

LABEL = "portal.instance"


class DockerBackend:
    name = "docker"

    def __init__(self, client):
        self.client = client

    @classmethod
    def default(cls) -> DockerBackend:
        try:
            client = docker.from_env(timeout=30)
            client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means "no usable engine", said with the reason
            raise BackendUnavailable(
                f"No Docker Engine answers at DOCKER_HOST or the local socket ({type(exc).__name__}: {exc})."
            ) from None
        return cls(client)

    def _container(self, name: str):
        with contextlib.suppress(docker.errors.NotFound):
            return self.client.containers.get(name)
        return None

    def _url(self, container) -> str:
        if settings.DOCKER_NETWORK:
            return f"http://{container.name}:{CONTAINER_PORT}"
        ports = container.attrs["NetworkSettings"]["Ports"].get(f"{CONTAINER_PORT}/tcp") or []
        return f"http://127.0.0.1:{ports[0]['HostPort']}" if ports else ""

    def start(self, spec: InstanceSpec) -> InstanceStatus:
        existing = self._container(spec.name)
        if existing is not None:
            if existing.status == "running":
                return InstanceStatus(name=spec.name, running=True, url=self._url(existing))
            existing.remove(force=True)  # a dead container of that name: replace it
        image = ensure_model_image(
            self.client,
            base=settings.DOCKER_BASE_IMAGE,
            service=spec.service,
            version=spec.version,
            sha256=spec.artifact_sha256,
            artifact=spec.artifact,
            flavor=spec.flavor,
            field_order=spec.field_order,
            log=spec.log,
        )
        options = {
            "name": spec.name,
            "detach": True,
            "labels": {
                LABEL: spec.name,
                "portal.deployment": str(spec.deployment),
                "portal.service": spec.service,
                "portal.version": spec.version,
            },
            "mem_limit": f"{spec.memory_mb}m",
            "nano_cpus": int(spec.cpus * 1e9),
            "read_only": True,
            "tmpfs": {"/tmp": "size=64m"},  # noqa: S108 - inside the container
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "user": "65534:65534",
            "stop_signal": "SIGTERM",
            "pids_limit": 256,
            "log_config": {"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}},
            # Drain for as long as `stop` waits before it kills the container.
            "command": ["--drain-seconds", str(settings.RUNTIME_DRAIN_SECONDS)],
        }
        if settings.DOCKER_NETWORK:
            options["network"] = settings.DOCKER_NETWORK
        else:
            options["ports"] = {f"{CONTAINER_PORT}/tcp": ("127.0.0.1", None)}
        container = self.client.containers.run(image, **options)
        for _ in range(50):  # the published port is known once the container runs
            container.reload()
            if self._url(container) or container.status != "created":
                break
            time.sleep(0.1)
        return InstanceStatus(name=spec.name, running=container.status == "running", url=self._url(container))

    def stop(self, name: str, *, drain_seconds: float) -> None:
        container = self._container(name)
        if container is None:
            return
        with contextlib.suppress(Exception):
            container.stop(timeout=int(drain_seconds))  # SIGTERM: the model server drains, then exits
        with contextlib.suppress(Exception):
            container.remove(force=True)

    def status(self, name: str) -> InstanceStatus:
        container = self._container(name)
        if container is None:
            return InstanceStatus(name=name, running=False, detail="unknown")
        running = container.status == "running"
        exit_code = container.attrs.get("State", {}).get("ExitCode")
        return InstanceStatus(
            name=name,
            running=running,
            url=self._url(container) if running else "",
            exit_code=None if running else exit_code,
            detail=container.status,
        )

    def logs(self, name: str, *, tail: int = 200) -> str:
        container = self._container(name)
        if container is None:
            return ""
        return container.logs(tail=tail).decode(errors="replace")

    def list(self) -> list[str]:
        return sorted(c.name for c in self.client.containers.list(all=True, filters={"label": LABEL}))

    def created_at(self, name: str) -> float | None:
        container = self._container(name)
        if container is None:
            return None
        created = container.attrs["Created"].split(".")[0].rstrip("Z")
        return datetime.fromisoformat(created + "+00:00").timestamp()
