"""Celery tasks of the prediction log: drain the gateways' stream into Parquet, sweep old days."""

from __future__ import annotations

import logging
import time

import redis
from celery import shared_task
from django.conf import settings

from deployments.models import Environment, PredictionLogging, Service
from gateway import contract
from monitoring.store import PredictionStore

log = logging.getLogger(__name__)

GROUP = "portal-drain"
# A batch read but not acknowledged this long ago (its worker died) is taken over.
CLAIM_IDLE_MS = 60_000


def store() -> PredictionStore:
    return PredictionStore(settings.PREDICTION_LOG_ROOT)


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=2)


@shared_task(name="monitoring.drain_predictions", ignore_result=True)
def drain_predictions(max_seconds: float = 20.0, count: int = 50) -> int:
    """Move logged predictions from the stream into Parquet files; how many records moved.

    Reads as one consumer of a consumer group, so several workers can drain at once, and
    acknowledges (and deletes) entries only once their records are on disk: a worker that
    dies in between leaves them pending, and the next drain takes them over.
    """
    client = _client()
    try:
        client.xgroup_create(contract.KEY_PREDICTIONS, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    consumer = f"drain-{time.time_ns():x}"
    moved = 0
    deadline = time.monotonic() + max_seconds
    _, claimed, _ = client.xautoclaim(contract.KEY_PREDICTIONS, GROUP, consumer, CLAIM_IDLE_MS, count=count)
    entries = list(claimed)
    while True:
        if not entries:
            answer = client.xreadgroup(GROUP, consumer, {contract.KEY_PREDICTIONS: ">"}, count=count)
            entries = answer[0][1] if answer else []
        if not entries:
            break
        records = []
        for _entry_id, fields in entries:
            try:
                records += contract.PredictionBatch.decode(fields[b"records"]).records
            except (KeyError, ValueError, TypeError):
                log.warning("skipped a prediction-log entry that is not a batch of records")
        if records:
            store().write(records)
        ids = [entry_id for entry_id, _ in entries]
        client.xack(contract.KEY_PREDICTIONS, GROUP, *ids)
        client.xdel(contract.KEY_PREDICTIONS, *ids)
        moved += len(records)
        entries = []
        if time.monotonic() > deadline:
            break
    return moved


@shared_task(name="monitoring.sweep_predictions", ignore_result=True)
def sweep_predictions() -> int:
    """Remove logged predictions older than each service's retention; how many days removed."""
    log_store = store()
    services = {s.name: s for s in Service.objects.all()}
    environments = {e.name: e for e in Environment.objects.all()}
    policies = {(p.service_id, p.environment_id): p for p in PredictionLogging.objects.all()}
    removed = 0
    for service_name, environment_name in log_store.services():
        service, environment = services.get(service_name), environments.get(environment_name)
        if service is None or environment is None:
            keep = settings.PREDICTION_LOG_RETENTION_DAYS  # a deleted service: the default retention
        else:
            policy = policies.get((service.pk, environment.pk))
            keep = policy.retention_days if policy else settings.PREDICTION_LOG_RETENTION_DAYS
        removed += log_store.sweep(service_name, environment_name, keep)
    return removed
