"""The `docker` backend: every model version an image, every instance a container.

Containers run with the environment's memory and CPU limits, a read-only root filesystem
(a small tmpfs for /tmp), no capabilities and no privilege escalation, as nobody, with a
health check and labels tying them to their deployment. They have no network at all: each
answers on a unix socket in a host directory of its own, bind-mounted into it, where the
gateway connects (the engine runs on this machine). With DOCKER_NETWORK they join that
network instead, which must be internal (no route out), to be reached by a gateway on it.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path

import docker
import docker.errors
from django.conf import settings

from core.net import UNIX
from deployments.runtime.base import BackendUnavailable, InstanceSpec, InstanceStatus
from deployments.runtime.images import CONTAINER_PORT, CONTAINER_SOCKET_DIR, ensure_model_image
from deployments.runtime.sockets import (
    SOCKET_NAME,
    instance_socket_dir,
    private_dir,
    remove_socket_dir,
    socket_in,
    socket_root,
)

LABEL = "portal.instance"


class DockerBackend:
    name = "docker"

    def __init__(self, client, sockets: Path | None = None):
        self.client = client
        root = Path(settings.RUNTIME_DIR) / "docker"
        root.mkdir(parents=True, exist_ok=True)
        self.sockets = private_dir(sockets or socket_root(root))

    @classmethod
    def default(cls) -> DockerBackend:
        try:
            client = docker.from_env(timeout=30)
            client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means "no usable engine", said with the reason
            raise BackendUnavailable(
                f"No Docker Engine answers at DOCKER_HOST or the local socket ({type(exc).__name__}: {exc})."
            ) from None
        return cls(client, Path(settings.RUNTIME_SOCKET_DIR) / "docker" if settings.RUNTIME_SOCKET_DIR else None)

    def _container(self, name: str):
        with contextlib.suppress(docker.errors.NotFound):
            return self.client.containers.get(name)
        return None

    def _url(self, container) -> str:
        if container.attrs.get("HostConfig", {}).get("NetworkMode") == "none":
            return f"{UNIX}{instance_socket_dir(self.sockets, container.name) / SOCKET_NAME}"
        return f"http://{container.name}:{CONTAINER_PORT}"

    def _network(self) -> str:
        """DOCKER_NETWORK, checked to be internal: a model container has no route out."""
        try:
            network = self.client.networks.get(settings.DOCKER_NETWORK)
        except docker.errors.NotFound:
            raise BackendUnavailable(
                f"The Docker network {settings.DOCKER_NETWORK} (DOCKER_NETWORK) does not exist."
            ) from None
        if not network.attrs.get("Internal"):
            raise BackendUnavailable(
                f"The Docker network {settings.DOCKER_NETWORK} (DOCKER_NETWORK) is not internal, so model code could "
                "reach the outside: create it with `docker network create --internal`."
            )
        return network.name

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
            options["network"] = self._network()
            options["command"] += ["--host", "0.0.0.0", "--port", str(CONTAINER_PORT)]  # noqa: S104 - its network
        else:
            # No network; the socket directory is the one thing it shares with this machine
            # (writable by the container's user; only the portal's user can reach it here).
            sockets = private_dir(instance_socket_dir(self.sockets, spec.name), mode=0o777)
            socket_in(sockets)
            options["network_mode"] = "none"
            options["volumes"] = {str(sockets): {"bind": CONTAINER_SOCKET_DIR, "mode": "rw"}}
            options["command"] += ["--uds", f"{CONTAINER_SOCKET_DIR}/{SOCKET_NAME}"]
        container = self.client.containers.run(image, **options)
        container.reload()
        return InstanceStatus(name=spec.name, running=container.status == "running", url=self._url(container))

    def stop(self, name: str, *, drain_seconds: float) -> None:
        container = self._container(name)
        if container is None:
            return
        with contextlib.suppress(Exception):
            container.stop(timeout=int(drain_seconds))  # SIGTERM: the model server drains, then exits
        with contextlib.suppress(Exception):
            container.remove(force=True)
        remove_socket_dir(instance_socket_dir(self.sockets, name))

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
