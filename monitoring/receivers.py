"""Counts every Celery task's outcome in Redis, for the portal's /metrics."""

from __future__ import annotations

import contextlib

import redis
from celery.signals import task_postrun
from django.conf import settings

from monitoring.exposition import KEY_TASKS

_client: redis.Redis | None = None


@task_postrun.connect
def count_outcome(sender=None, state=None, **_kwargs) -> None:
    global _client
    with contextlib.suppress(redis.RedisError):
        if _client is None:
            _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        _client.hincrby(KEY_TASKS, f"{getattr(sender, 'name', 'unknown')}|{state or 'UNKNOWN'}", 1)
