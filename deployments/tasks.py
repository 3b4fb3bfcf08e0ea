"""Celery tasks: thin, by id, idempotent; the work is in deployments.rollout."""

from __future__ import annotations

import socket

import redis
from celery import shared_task
from django.db import InterfaceError, OperationalError

from deployments import publish, services, strategies
from deployments import rollout as engine

# Retried with backoff: a database or Redis that is briefly unreachable. Anything else is
# a bug or a real failure, which the rollout records on the deployment itself.
TRANSIENT = (OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError)

_DEPLOY = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": TRANSIENT,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "max_retries": 8,
    "soft_time_limit": 900,
    "time_limit": 960,
}


def _owner(task) -> str:
    return f"{socket.gethostname()}:{task.request.id}"


@shared_task(bind=True, name="deployments.rollout", **_DEPLOY)
def rollout(self, deployment_id: int) -> str:
    return engine.rollout(deployment_id, owner=_owner(self))


@shared_task(bind=True, name="deployments.scale", **_DEPLOY)
def scale(self, deployment_id: int) -> str:
    return engine.scale(deployment_id, owner=_owner(self))


@shared_task(
    name="deployments.reconcile",
    acks_late=True,
    autoretry_for=TRANSIENT,
    max_retries=3,
    soft_time_limit=100,
    time_limit=120,
)
def reconcile() -> dict:
    """Every few seconds: resume rollouts whose worker died, restart crashed instances."""
    resumed = engine.stale_rollouts()
    for deployment_id in resumed:
        rollout.delay(deployment_id)
    return {"resumed": resumed, "supervised": engine.supervise()}


@shared_task(bind=True, name="deployments.advance_candidate", **_DEPLOY)
def advance_candidate(self, deployment_id: int) -> str:
    """One look at one canary or shadow candidate (judge, step, promote, roll back, withdraw)."""
    return strategies.advance(deployment_id, owner=_owner(self))


@shared_task(
    bind=True,
    name="deployments.advance_candidates",
    acks_late=True,
    autoretry_for=TRANSIENT,
    max_retries=3,
    soft_time_limit=100,
    time_limit=120,
)
def advance_candidates(self) -> dict:
    """Every CANARY_TICK_SECONDS: look at each candidate being tried (each under its lease)."""
    return {str(pk): strategies.advance(pk, owner=_owner(self)) for pk in strategies.pending()}


@shared_task(name=publish.REPUBLISH_TASK, autoretry_for=TRANSIENT, max_retries=3, soft_time_limit=50, time_limit=60)
def publish_dataplane() -> int | None:
    return publish.publish()


@shared_task(
    name="deployments.expire_grants", autoretry_for=TRANSIENT, max_retries=3, soft_time_limit=50, time_limit=60
)
def expire_grants() -> list[int]:
    """Every GRANT_EXPIRY_INTERVAL_SECONDS: remove grants whose expiry has passed (idempotent)."""
    return services.grants_expire()
