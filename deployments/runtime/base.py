"""The interface every runtime backend implements, and what it takes and reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class InstanceSpec:
    name: str  # unique and stable: starting the same name twice adopts the running one
    artifact: Path
    flavor: str
    version: str
    field_order: list[str] = field(default_factory=list)
    service: str = ""
    deployment: int = 0
    artifact_sha256: str = ""
    memory_mb: int = 1024
    cpus: float = 1.0
    # An admin's explicit choice for this environment: run model code even where no sandbox
    # can be had (a single-user machine). Otherwise a backend without one refuses to start.
    allow_unsandboxed: bool = False
    # Swarm placement constraints (node.labels.tier==prod, ...); other backends run on one machine.
    placement: tuple[str, ...] = ()
    # Where a backend reports long work (an image build) while it happens.
    log: Callable[[str], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class InstanceStatus:
    name: str
    running: bool
    url: str = ""
    exit_code: int | None = None
    detail: str = ""


class BackendUnavailable(Exception):
    pass


class RuntimeBackend(Protocol):
    name: str

    def start(self, spec: InstanceSpec) -> InstanceStatus:
        """Start an instance, or return the running one of that name (idempotent)."""

    def stop(self, name: str, *, drain_seconds: float) -> None:
        """Stop taking new requests, finish those in flight (up to drain_seconds), then stop."""

    def status(self, name: str) -> InstanceStatus: ...

    def logs(self, name: str, *, tail: int = 200) -> str: ...

    def list(self) -> list[str]:
        """Names of the instances this backend runs, including ones the database forgot."""

    def created_at(self, name: str) -> float | None:
        """When the instance was started (epoch seconds), if known."""
