"""The `swarm` backend: every instance a Docker Swarm service of one task, on any node.

One service per instance (one replica, restarted on failure by the swarm), named like the
instance, so blue/green, rollback, scaling, the reconciler and logs work as with `docker`: the
rollout starts and stops instances, the swarm's scheduler decides where each runs, honouring
the environment's placement constraints and the CPU and memory each reserves. Images come from
DOCKER_REGISTRY (pushed there by the worker that built them), which a swarm of more than one
node requires: a node pulls what it runs.

How the gateway reaches an instance on another host: each service publishes the model
server's port in *host* mode, on the node running its task, on a port from SWARM_PORTS chosen
here, and the instance's URL is that node's address and port. Not the ingress routing mesh: it
needs the kernel's IPVS (missing on the machines this is tested on, where a mesh port accepts
nothing), adds a hop and would open every instance's port on every node; and not an
attachable overlay network: the gateway and the worker's readiness checks are processes on
their hosts, not containers, and a host process cannot join an overlay. The price, said
plainly: a task with a published port sits on the node's default bridge (docker0), which has
a route out. Model code is untrusted, so on every node the firewall must close it (the
DOCKER-USER and INPUT rules in docs/scaling.md, checked on a real node) and admit callers to
SWARM_PORTS from the gateways' and workers' addresses only. If a task moves (its node died),
its URL changes; `status` reports the new one and the reconciler republishes it.

Tasks run with the environment's CPU and memory limits (memory reserved in full, a quarter of
the CPU limit reserved), a read-only root filesystem with a small /tmp, no capabilities, as
nobody, a process limit, the image's health check stated in the spec, and labels tying them to
their deployment. Swarm services gained `no-new-privileges` only with API 1.46; where the
engine is older, model images carry no set-user-id programs instead (images.py).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from datetime import datetime

import docker
import docker.errors
from django.conf import settings
from docker import types

from deployments.runtime.base import BackendUnavailable, InstanceSpec, InstanceStatus
from deployments.runtime.images import CONTAINER_PORT, ensure_model_image

# On the service. Its task's containers carry `portal.swarm-instance` instead, so the docker
# backend (which lists containers by `portal.instance`) never takes them for its own orphans.
LABEL = "portal.instance"
TASK_LABEL = "portal.swarm-instance"
# A task's states, in order (https://docs.docker.com/engine/swarm/how-swarm-mode-works/swarm-task-states/).
UNPLACED = {"new", "pending"}
ALIVE = UNPLACED | {"assigned", "accepted", "preparing", "ready", "starting", "running"}
SECOND = 1_000_000_000  # the engine counts durations in nanoseconds


class SwarmStartFailed(Exception):
    pass


def _when(stamp: str) -> tuple[str, str]:
    """A task's CreatedAt, comparable (the engine prints a varying number of fraction digits)."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return whole, fraction.ljust(9, "0")


def _port_range() -> range:
    low, _, high = settings.SWARM_PORTS.partition("-")
    try:
        return range(int(low), int(high or low) + 1)
    except ValueError:
        raise BackendUnavailable(f"SWARM_PORTS is {settings.SWARM_PORTS!r}; write a range like 30000-32767.") from None


class SwarmBackend:
    name = "swarm"

    def __init__(self, client):
        self.client = client

    @classmethod
    def default(cls) -> SwarmBackend:
        try:
            client = docker.from_env(timeout=30)
            swarm = client.info().get("Swarm") or {}
        except Exception as exc:  # noqa: BLE001 - any failure means "no usable engine", said with the reason
            raise BackendUnavailable(
                f"No Docker Engine answers at DOCKER_HOST or the local socket ({type(exc).__name__}: {exc})."
            ) from None
        if swarm.get("LocalNodeState") != "active":
            raise BackendUnavailable(
                "The Docker Engine at DOCKER_HOST is not in a swarm: `docker swarm init` there, or point "
                "DOCKER_HOST at a manager of the swarm (docs/scaling.md)."
            )
        if not swarm.get("ControlAvailable"):
            raise BackendUnavailable(
                "The Docker Engine at DOCKER_HOST is a swarm worker; services are created through a manager: "
                "point DOCKER_HOST at one."
            )
        return cls(client)

    # ------------------------------------------------------------ reading the swarm

    def _service(self, name: str):
        with contextlib.suppress(docker.errors.NotFound):
            service = self.client.services.get(name)
            if service.name == name:  # get() also matches an id prefix
                return service
        return None

    def _task(self, service) -> dict | None:
        """The service's current task: the newest of those meant to run, else the newest."""
        tasks = [t for t in self.client.api.tasks(filters={"service": service.id}) if t.get("ServiceID") == service.id]
        if not tasks:
            return None
        return max(tasks, key=lambda t: (t.get("DesiredState") == "running", _when(t.get("CreatedAt", ""))))

    def _port(self, service) -> int:
        ports = service.attrs.get("Spec", {}).get("EndpointSpec", {}).get("Ports") or [{}]
        return int(ports[0].get("PublishedPort") or 0)

    def _node_address(self, node_id: str) -> str:
        """Where callers reach a node: its `portal.address` label if an admin set one (say, a
        private interface), else the address it joined the swarm with."""
        try:
            node = self.client.nodes.get(node_id).attrs
        except docker.errors.NotFound:
            return ""
        address = (node.get("Spec", {}).get("Labels") or {}).get("portal.address") or node.get("Status", {}).get(
            "Addr", ""
        )
        if address in ("", "0.0.0.0") and node.get("ManagerStatus"):  # noqa: S104 - a value we read, not bind
            address = node["ManagerStatus"].get("Addr", "").rsplit(":", 1)[0]
        return f"[{address}]" if ":" in address else address

    def _url(self, service, task: dict | None) -> str:
        if not task or not task.get("NodeID"):
            return ""
        address = self._node_address(task["NodeID"])
        return f"http://{address}:{self._port(service)}" if address else ""

    def _status(self, name: str, service, task: dict | None) -> InstanceStatus:
        if task is None:
            return InstanceStatus(name=name, running=False, detail="no task")
        state = task.get("Status", {}).get("State", "")
        error = task.get("Status", {}).get("Err", "")
        if state in ALIVE and not (state in UNPLACED and error):
            return InstanceStatus(name=name, running=True, url=self._url(service, task), detail=state)
        exit_code = task.get("Status", {}).get("ContainerStatus", {}).get("ExitCode")
        return InstanceStatus(
            name=name, running=False, exit_code=exit_code, detail=f"{state}: {error}" if error else state
        )

    # ------------------------------------------------------------ the interface

    def start(self, spec: InstanceSpec) -> InstanceStatus:
        service = self._service(spec.name)
        if service is not None:
            task = self._task(service)
            if task is not None and task.get("Status", {}).get("State") in ALIVE:
                return self._await_placement(spec, service)
            # The swarm gave up on it (its restarts are spent): a fresh task, same port and spec.
            service.force_update()
            return self._await_placement(spec, service)
        if not settings.DOCKER_REGISTRY and len(self.client.nodes.list()) > 1:
            raise SwarmStartFailed(
                "This swarm has more than one node: set DOCKER_REGISTRY to a registry they all pull from, "
                "so that any node can run the version's image."
            )
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
            registry=settings.DOCKER_REGISTRY,
        )
        # Two rollouts may pick the same port at once; the scheduler then refuses the second
        # ("host-mode port already in use"): take another.
        for attempt in range(3):
            service = self._create(spec, image)
            try:
                return self._await_placement(spec, service)
            except SwarmStartFailed as exc:
                if "port" not in str(exc) or attempt == 2:
                    raise
                service.remove()
        raise AssertionError("unreachable")

    def _create(self, spec: InstanceSpec, image: str):
        drain = settings.RUNTIME_DRAIN_SECONDS
        labels = {
            "portal.deployment": str(spec.deployment),
            "portal.service": spec.service,
            "portal.version": spec.version,
        }
        container = types.ContainerSpec(
            image,
            # Drain for as long as the swarm waits before it kills the task.
            args=["--drain-seconds", str(drain), "--host", "0.0.0.0", "--port", str(CONTAINER_PORT)],  # noqa: S104 - in its container
            user="65534:65534",
            labels={TASK_LABEL: spec.name, **labels},
            mounts=[types.Mount("/tmp", None, type="tmpfs", tmpfs_size=64 * 1024 * 1024)],  # noqa: S108 - inside the container
            stop_grace_period=drain * SECOND,
            stop_signal="SIGTERM",
            read_only=True,
            cap_drop=["ALL"],
            healthcheck=types.Healthcheck(
                test=["CMD", "python", "-m", "modelserver.health"],
                interval=2 * SECOND,
                timeout=3 * SECOND,
                retries=3,
                start_period=5 * SECOND,
            ),
        )
        if docker.utils.version_gte(self.client.api._version, "1.46"):
            container["Privileges"] = {"NoNewPrivileges": True}
        memory = spec.memory_mb * 1024 * 1024
        resources = types.Resources(
            cpu_limit=int(spec.cpus * SECOND),
            mem_limit=memory,
            # Memory cannot be taken back from a task, so the scheduler keeps all of it free for
            # each; CPU is shared in time, and blue/green runs two versions at once for a while.
            cpu_reservation=int(spec.cpus * SECOND / 4),
            mem_reservation=memory,
        )
        resources["Limits"]["Pids"] = 256
        template = types.TaskTemplate(
            container,
            resources=resources,
            restart_policy=types.RestartPolicy(condition="on-failure", delay=2 * SECOND, max_attempts=3),
            placement=types.Placement(constraints=list(spec.placement)),
            log_driver=types.DriverConfig("json-file", {"max-size": "10m", "max-file": "3"}),
        )
        created = self.client.api.create_service(
            template,
            name=spec.name,
            labels={LABEL: spec.name, **labels},
            mode=types.ServiceMode("replicated", replicas=1),
            endpoint_spec=types.EndpointSpec(ports={self._free_port(): (CONTAINER_PORT, "tcp", "host")}),
        )
        return self.client.services.get(created["ID"])

    def _free_port(self) -> int:
        taken = {
            port.get("PublishedPort")
            for service in self.client.api.services()
            for port in (service.get("Spec", {}).get("EndpointSpec", {}).get("Ports") or [])
        }
        free = [port for port in _port_range() if port not in taken]
        if not free:
            raise SwarmStartFailed(f"Every port of SWARM_PORTS ({settings.SWARM_PORTS}) is published already.")
        return secrets.choice(free)

    def _await_placement(self, spec: InstanceSpec, service) -> InstanceStatus:
        """Wait until the swarm has put the task on a node (then its URL is known); readiness
        is the rollout's to wait for. A task the scheduler cannot place fails here, saying why."""
        deadline = time.monotonic() + settings.RUNTIME_READY_TIMEOUT_SECONDS
        while True:
            task = self._task(service)
            status = task.get("Status", {}) if task else {}
            state, error = status.get("State", ""), status.get("Err", "")
            if state in ALIVE - UNPLACED:
                return self._status(spec.name, service, task)
            if state in UNPLACED and error:
                constraints = ", ".join(spec.placement) or "none"
                raise SwarmStartFailed(
                    f"The swarm cannot place it: {error}. This environment's placement constraints: {constraints} "
                    "(docker node ls; docker node inspect NODE shows a node's labels)."
                )
            if task and state not in ALIVE:
                raise SwarmStartFailed(f"Its task {state}: {error or 'no reason given'}.")
            if time.monotonic() > deadline:
                raise SwarmStartFailed(
                    f"The swarm did not place it within {settings.RUNTIME_READY_TIMEOUT_SECONDS} s "
                    f"(its task is {state or 'not created'})."
                )
            time.sleep(0.2)

    def stop(self, name: str, *, drain_seconds: float) -> None:
        service = self._service(name)
        if service is None:
            return
        # No task first (SIGTERM: the model server drains, then exits), then no service.
        with contextlib.suppress(docker.errors.APIError):
            service.scale(0)
        deadline = time.monotonic() + drain_seconds + 5
        while time.monotonic() < deadline:
            try:
                tasks = self.client.api.tasks(filters={"service": service.id})
            except docker.errors.APIError:
                break
            if not any(t.get("Status", {}).get("State") in ALIVE - UNPLACED for t in tasks):
                break
            time.sleep(0.2)
        with contextlib.suppress(docker.errors.NotFound):
            service.remove()

    def status(self, name: str) -> InstanceStatus:
        service = self._service(name)
        if service is None:
            return InstanceStatus(name=name, running=False, detail="unknown")
        return self._status(name, service, self._task(service))

    def logs(self, name: str, *, tail: int = 200) -> str:
        """The service's log (its tasks' output, across restarts), and what the swarm last said
        about its task when that went wrong (an image it could not pull, no node to run on)."""
        service = self._service(name)
        if service is None:
            return ""
        text = self._service_logs(service, tail)
        task = self._task(service)
        if not text and task and task.get("Status", {}).get("ContainerStatus", {}).get("ContainerID"):
            # The swarm's log broker can come back empty-handed while it is still subscribing
            # to the node (seen on a freshly made swarm): then the container's own log, where
            # it is on this engine.
            with contextlib.suppress(docker.errors.APIError):
                container = self.client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
                text = container.logs(tail=tail).decode(errors="replace")
        error = (task or {}).get("Status", {}).get("Err")
        if error:
            text += f"[swarm] task {task['Status'].get('State', '')}: {error}\n"
        return text

    def _service_logs(self, service, tail: int) -> str:
        for attempt in range(3):
            with contextlib.suppress(docker.errors.APIError):
                text = b"".join(service.logs(stdout=True, stderr=True, tail=tail)).decode(errors="replace")
                if text:
                    return text
            if attempt < 2:
                time.sleep(0.2)
        return ""

    def list(self) -> list[str]:
        return sorted(s.name for s in self.client.services.list(filters={"label": LABEL}))

    def created_at(self, name: str) -> float | None:
        service = self._service(name)
        if service is None:
            return None
        whole, fraction = _when(service.attrs["CreatedAt"])
        return datetime.fromisoformat(whole + "+00:00").timestamp() + int(fraction[:6]) / 1e6
