"""Per-minute request counts, errors and latency histograms, batched to Redis.

Shadow copies are counted apart (contract's SHADOW_* kinds, under the candidate's version),
and a shadow candidate's latest disagreeing examples go out in the same flush.

Requests are counted in memory and flushed once a second in one pipeline: a Redis round
trip per request would cost more than everything else the gateway does.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import defaultdict

import redis.asyncio as aioredis

from gateway.contract import (
    BUCKET,
    BUCKETS_MS,
    CLIENT_ERRORS,
    METRICS_RETENTION_SECONDS,
    REQUESTS,
    SERVER_ERRORS,
    SHADOW_BUCKET,
    SHADOW_EXAMPLES_MAX,
    SHADOW_EXAMPLES_RETENTION_SECONDS,
    SHADOW_REQUESTS,
    ShadowExample,
    metric_field,
    minute_key,
    shadow_examples_key,
)

log = logging.getLogger("gateway.metrics")


class Batched:
    """Something the gateway keeps in memory and sends to Redis every `flush_interval`
    seconds in one round trip (its `flush`), and once more when it stops."""

    socket_timeout = 1.0

    def __init__(self, redis_url: str, *, flush_interval: float):
        self.redis_url = redis_url
        self.flush_interval = flush_interval
        self._redis: aioredis.Redis | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> None:
        self._redis = aioredis.from_url(
            self.redis_url, socket_timeout=self.socket_timeout, socket_connect_timeout=1, max_connections=2
        )
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self._stopping = True  # ends the loop even if a cancellation were lost in a Redis call
        if self._task:
            self._task.cancel()
        await self.flush()
        if self._redis:
            await self._redis.aclose()

    async def _loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def flush(self) -> None:
        raise NotImplementedError


class Metrics(Batched):
    def __init__(self, redis_url: str, *, flush_interval: float = 1.0):
        super().__init__(redis_url, flush_interval=flush_interval)
        self._counts: dict[tuple[str, str], int] = defaultdict(int)
        # The current minute's hash key, and each series' field names in it, made once per
        # minute rather than once per request.
        self._minute = ""
        self._minute_ends = 0.0
        self._fields: dict[str, tuple[str, str, str, tuple[str, ...]]] = {}
        # Disagreeing shadow examples waiting for the flush, encoded, per candidate deployment.
        self._examples: dict[int, list[str]] = defaultdict(list)

    def record(self, series: str, status: int, seconds: float) -> None:
        """Count one request of a series (contract.series) that ended with `status`."""
        now = time.time()
        if now >= self._minute_ends or now < self._minute_ends - 60:
            self._minute = minute_key(now)
            self._minute_ends = (now // 60 + 1) * 60
            self._fields = {}
        minute = self._minute
        fields = self._fields.get(series)
        if fields is None:
            fields = self._fields[series] = _fields(series)
        requests, server_errors, client_errors, buckets = fields
        counts = self._counts
        counts[(minute, requests)] += 1
        if status >= 500:
            counts[(minute, server_errors)] += 1
        elif status >= 400:
            counts[(minute, client_errors)] += 1
        counts[(minute, buckets[bisect.bisect_left(BUCKETS_MS, seconds * 1000)])] += 1

    # -------------------------------------------------------------- shadow copies

    def shadow(self, series: str, kind: str, seconds: float | None = None) -> None:
        """Count one shadow copy of a request of `series` (the candidate's version, the caller
        whose request was copied): `kind` is one of contract's SHADOW_* kinds; a copy that was
        sent (not SHADOW_DROPPED) also counts as SHADOW_REQUESTS, with its latency."""
        minute = minute_key(time.time())
        counts = self._counts
        counts[(minute, metric_field(series, kind))] += 1
        if seconds is not None:
            counts[(minute, metric_field(series, SHADOW_REQUESTS))] += 1
            bucket = bisect.bisect_left(BUCKETS_MS, seconds * 1000)
            counts[(minute, metric_field(series, f"{SHADOW_BUCKET}{bucket}"))] += 1

    def shadow_example(self, deployment: int, example: ShadowExample) -> None:
        """Keep a disagreeing example of a shadow candidate, for the next flush (the latest
        SHADOW_EXAMPLES_MAX per candidate; older ones are dropped here already)."""
        examples = self._examples[deployment]
        examples.append(example.encode())
        if len(examples) > SHADOW_EXAMPLES_MAX:
            del examples[0]

    async def flush(self) -> None:
        if not (self._counts or self._examples) or self._redis is None:
            return
        counts, self._counts = self._counts, defaultdict(int)
        examples, self._examples = self._examples, defaultdict(list)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                keys = set()
                for (key, name), value in counts.items():
                    pipe.hincrby(key, name, value)
                    keys.add(key)
                for key in keys:
                    pipe.expire(key, METRICS_RETENTION_SECONDS)
                for deployment, encoded in examples.items():
                    key = shadow_examples_key(deployment)
                    pipe.lpush(key, *encoded)  # oldest first: the newest ends up at the head
                    pipe.ltrim(key, 0, SHADOW_EXAMPLES_MAX - 1)
                    pipe.expire(key, SHADOW_EXAMPLES_RETENTION_SECONDS)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - metrics must never break serving
            log.warning("could not flush metrics (%s); keeping them for the next try", exc)
            for k, v in counts.items():
                self._counts[k] += v
            for deployment, encoded in examples.items():
                self._examples[deployment] = (encoded + self._examples[deployment])[-SHADOW_EXAMPLES_MAX:]


def _fields(series: str) -> tuple[str, str, str, tuple[str, ...]]:
    """A series' field names: requests, server errors, client errors, each latency bucket."""
    return (
        metric_field(series, REQUESTS),
        metric_field(series, SERVER_ERRORS),
        metric_field(series, CLIENT_ERRORS),
        tuple(metric_field(series, f"{BUCKET}{bucket}") for bucket in range(len(BUCKETS_MS) + 1)),
    )
