"""The gateway's metrics for operators, in Prometheus's text format (prometheus-client).

    GET /metrics   Authorization: Bearer $GATEWAY_METRICS_TOKEN

Off unless GATEWAY_METRICS_TOKEN is set (then only with it). Labels are bounded by what is
deployed: environment, service, major and version of a route and the HTTP status, never the
caller (the per-consumer counts are in the portal's usage charts). Requests refused before a
route is known (no token, unknown path) are counted by status alone.

    portal_gateway_requests_total{environment,service,major,version,code}
    portal_gateway_request_duration_seconds{environment,service,major}      histogram
    portal_gateway_requests_refused_total{code}
    portal_gateway_requests_in_flight
    portal_gateway_cold_start_wait_seconds{environment,service,major,outcome}   histogram
    portal_gateway_prediction_log_dropped_total{route}
    portal_gateway_snapshot_generation, portal_gateway_snapshot_age_seconds
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Exposition:
    """The gateway's metrics. With several worker processes on one port (`GATEWAY_WORKERS`),
    prometheus-client's multiprocess mode is on (PROMETHEUS_MULTIPROC_DIR, set by
    `python -m gateway`): every worker writes its counts to shared files, and a scrape, whichever
    worker answers it, reads them all. The snapshot's generation is then the oldest any live
    worker serves from, and its age the largest."""

    def __init__(self, *, token: str, state: Any, dropped: Callable[[], dict[str, int]]):
        self.token = token.encode()
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "portal_gateway_requests",
            "Requests for a route, by its outcome.",
            ["environment", "service", "major", "version", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "portal_gateway_request_duration_seconds",
            "Time from a request's arrival to its answer, by route.",
            ["environment", "service", "major"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.refused = Counter(
            "portal_gateway_requests_refused",
            "Requests answered before a route was known (no token, unknown path, stale routes).",
            ["code"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "portal_gateway_requests_in_flight",
            "Requests being handled now.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.generation = Gauge(
            "portal_gateway_snapshot_generation",
            "The routing snapshot generation this gateway serves from.",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.age = Gauge(
            "portal_gateway_snapshot_age_seconds",
            "Seconds since this gateway last heard from its routing store (-1: never).",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.dropped_total = Counter(
            "portal_gateway_prediction_log_dropped",
            "Logged predictions dropped (buffer full or Redis unreachable), by route.",
            ["route"],
            registry=self.registry,
        )
        self.cold_starts = Histogram(
            "portal_gateway_cold_start_wait_seconds",
            "How long requests for a route scaled to zero were held until an instance was ready "
            "(outcome served), or until the gateway gave up (outcome timeout: answered 503).",
            ["environment", "service", "major", "outcome"],
            buckets=(0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0),
            registry=self.registry,
        )
        self.state, self.dropped = state, dropped
        self._dropped_seen: dict[str, int] = {}
        state.listeners.append(self.sample)
        # One child per label set, found once: label lookups would cost more than the counting.
        self._counters: dict[tuple, Any] = {}
        self._histograms: dict[str, Any] = {}

    def sample(self) -> None:
        """Bring the gauges read from the gateway's state up to date (after every poll, and
        before a scrape)."""
        state = self.state
        self.generation.set(state.snapshot.generation)
        self.age.set(max(0.0, time.monotonic() - state.last_contact) if state.last_contact else -1)
        for route, count in self.dropped().items():
            delta = count - self._dropped_seen.get(route, 0)
            if delta > 0:
                self.dropped_total.labels(route).inc(delta)
                self._dropped_seen[route] = count

    def close(self) -> None:
        """This worker leaves: its live gauges stop counting (its counters stay in the totals)."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())

    def enabled(self) -> bool:
        return bool(self.token)

    def authorised(self, authorization: bytes | None) -> bool:
        scheme, _, presented = (authorization or b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(presented.strip(), self.token)

    def observe(self, route: Any, status: int, seconds: float) -> None:
        key = (route.key, route.version, status)
        counter = self._counters.get(key)
        if counter is None:
            labels = (route.environment, route.service, str(route.major), route.version, str(status))
            counter = self._counters[key] = self.requests.labels(*labels)
        counter.inc()
        histogram = self._histograms.get(route.key)
        if histogram is None:
            histogram = self._histograms[route.key] = self.duration.labels(
                route.environment, route.service, str(route.major)
            )
        histogram.observe(seconds)

    def cold_start(self, route: Any, seconds: float, served: bool) -> None:
        labels = (route.environment, route.service, str(route.major), "served" if served else "timeout")
        self.cold_starts.labels(*labels).observe(seconds)

    def refuse(self, status: int) -> None:
        self.refused.labels(str(status)).inc()

    def render(self) -> tuple[bytes, bytes]:
        """(content type, body) of a scrape: of every worker, in multiprocess mode."""
        self.sample()
        if not self.multiprocess:
            return CONTENT_TYPE_LATEST.encode(), generate_latest(self.registry)
        _forget_dead_workers(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return CONTENT_TYPE_LATEST.encode(), generate_latest(registry)


def _forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of workers that are gone (killed, or restarted by uvicorn without a
    clean shutdown): a dead worker's last in-flight count must not linger in the sum."""
    for name in os.listdir(directory):
        if not name.startswith("gauge_live"):
            continue
        pid = name.rsplit("_", 1)[-1].removesuffix(".db")
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(int(pid), directory)
        except PermissionError:  # alive, someone else's
            pass
