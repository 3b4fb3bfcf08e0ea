"""Runtime backends: where model-server instances run.

Every backend implements the same small interface, so a rollout does not care whether an
instance is a local process, a container, a swarm service or a Kubernetes pod.
"""

from __future__ import annotations

from deployments.runtime.base import BackendUnavailable, InstanceSpec, InstanceStatus, RuntimeBackend
from deployments.runtime.docker import DockerBackend
from deployments.runtime.local import LocalBackend
from deployments.runtime.swarm import SwarmBackend

__all__ = ["BackendUnavailable", "InstanceSpec", "InstanceStatus", "RuntimeBackend", "get_backend"]


def get_backend(name: str) -> RuntimeBackend:
    if name == "local":
        return LocalBackend.default()
    if name == "docker":
        return DockerBackend.default()
    if name == "swarm":
        return SwarmBackend.default()
    raise BackendUnavailable(f"The '{name}' runtime is not available in this installation yet.")
