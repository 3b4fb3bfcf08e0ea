"""What the autoscaler reads: each route's requests in flight, reported to Redis every second.

Nothing is done per request: the gateway already counts each instance's outstanding requests
to balance by them (gateway/state.py `Upstream.outstanding`), so a route's load is the sum over
its instances, sampled a few times a second, plus the requests held for a route scaled to
zero. Each gateway process writes its own field of one hash (contract.KEY_LOAD), so gateways
on one port (GATEWAY_WORKERS) or on many hosts never overwrite each other; the autoscaler
sums the fresh fields. A held request reports at once rather than at the next second: it is
what wakes a route, and a caller is waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Iterator

import redis.asyncio as aioredis

from gateway import contract
from gateway.state import State

log = logging.getLogger("gateway.load")

SAMPLES = max(1, round(contract.LOAD_WINDOW_SECONDS / contract.LOAD_SAMPLE_SECONDS))


class LoadReporter:
    def __init__(self, redis_url: str, state: State):
        self.redis_url = redis_url
        self.state = state
        self._samples: dict[str, deque[int]] = {}
        self._held: dict[str, int] = defaultdict(int)
        self._held_since: dict[str, list[float]] = defaultdict(list)
        self._redis: aioredis.Redis | None = None
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False

    async def start(self) -> None:
        self._redis = aioredis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1, max_connections=2)
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self._stopping = True  # ends the loop even if a cancellation were lost
        if self._task:
            self._task.cancel()
        if self._redis:
            # Leaving: the autoscaler must not count this gateway's last report for seconds.
            with contextlib.suppress(Exception):
                await self._redis.hdel(contract.KEY_LOAD, self.state.id)
            await self._redis.aclose()

    @contextlib.contextmanager
    def holding(self, key: str) -> Iterator[None]:
        """Count a request held for a cold route while it waits, and report it now."""
        arrived = time.time()
        self._held[key] += 1
        self._held_since[key].append(arrived)
        if self._wake is not None:
            self._wake.set()
        try:
            yield
        finally:
            self._held[key] -= 1
            self._held_since[key].remove(arrived)
            if not self._held[key]:
                del self._held[key], self._held_since[key]

    def sample(self) -> None:
        """Add one sample of every route's requests in flight."""
        routes = self.state.snapshot.routes
        for key, route in routes.items():
            in_flight = self._held.get(key, 0)
            for upstream in route.upstreams:
                in_flight += upstream.outstanding
            samples = self._samples.get(key)
            if samples is None:
                if not in_flight:
                    continue  # idle routes cost nothing
                samples = self._samples[key] = deque(maxlen=SAMPLES)
            samples.append(in_flight)
        for key in [key for key, samples in self._samples.items() if key not in routes or not any(samples)]:
            del self._samples[key]

    def report(self) -> contract.Load:
        routes = {}
        for key, samples in self._samples.items():
            since = self._held_since.get(key)
            routes[key] = contract.RouteLoad(
                in_flight=samples[-1],
                average=sum(samples) / len(samples),
                peak=max(samples),
                held=self._held.get(key, 0),
                held_since=min(since) if since else None,
            )
        return contract.Load(at=time.time(), routes=routes)

    async def _loop(self) -> None:
        reported = 0.0
        while not self._stopping:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that arrives as the event is set, and this loop would outlive
                # the gateway's shutdown.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(contract.LOAD_SAMPLE_SECONDS):
                        await self._wake.wait()
                woken = self._wake.is_set()
                self._wake.clear()
                self.sample()
                if woken or time.monotonic() - reported >= contract.LOAD_REPORT_SECONDS:
                    reported = time.monotonic()
                    await self._redis.hset(contract.KEY_LOAD, self.state.id, self.report().encode())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the load report must never break serving
                log.warning("could not report the load to Redis (%s)", exc)
                await asyncio.sleep(contract.LOAD_SAMPLE_SECONDS)
