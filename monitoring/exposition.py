"""The portal's metrics for operators, in Prometheus's text format (prometheus-client).

    GET /metrics   Authorization: Bearer $PORTAL_METRICS_TOKEN

Off unless PORTAL_METRICS_TOKEN is set. Read from Redis at scrape time, so any web process
answers for the whole portal:

    portal_celery_queue_length{queue}             tasks waiting for a worker
    portal_celery_tasks_total{task,state}         tasks that ended, by how (SUCCESS, FAILURE, RETRY, ...)
    portal_prediction_log_backlog_batches          batches of logged predictions not drained yet
    portal_prediction_log_dropped_total{route}     logged predictions gateways had to drop
"""

from __future__ import annotations

import hmac

import redis
from django.conf import settings
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway import contract

KEY_TASKS = "portal:celery:tasks"  # task name|state -> count, written by monitoring.receivers
QUEUES = ("celery",)


def authorised(header: str) -> bool:
    token = settings.PORTAL_METRICS_TOKEN
    scheme, _, presented = header.partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(presented.strip(), token)


class _FromRedis:
    def __init__(self, client: redis.Redis):
        self.client = client

    def collect(self):
        queue = GaugeMetricFamily("portal_celery_queue_length", "Tasks waiting for a worker.", labels=["queue"])
        for name in QUEUES:
            queue.add_metric([name], self.client.llen(name))
        yield queue
        tasks = CounterMetricFamily("portal_celery_tasks", "Tasks that ended, by how.", labels=["task", "state"])
        for field, count in sorted(self.client.hgetall(KEY_TASKS).items()):
            task, _, state = field.decode().rpartition("|")
            tasks.add_metric([task, state], int(count))
        yield tasks
        backlog = GaugeMetricFamily(
            "portal_prediction_log_backlog_batches", "Batches of logged predictions not drained into Parquet yet."
        )
        backlog.add_metric([], self.client.xlen(contract.KEY_PREDICTIONS))
        yield backlog
        dropped = CounterMetricFamily(
            "portal_prediction_log_dropped", "Logged predictions gateways had to drop, by route.", labels=["route"]
        )
        for route, count in sorted(self.client.hgetall(contract.KEY_PREDICTIONS_DROPPED).items()):
            dropped.add_metric([route.decode()], int(count))
        yield dropped


def render() -> tuple[str, bytes]:
    """(content type, body) of a scrape."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)
    try:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_FromRedis(client))
        return CONTENT_TYPE_LATEST, generate_latest(registry)
    finally:
        client.close()
