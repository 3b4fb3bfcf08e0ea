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
    portal_gateway_prediction_log_dropped_total{route}
    portal_gateway_snapshot_generation, portal_gateway_snapshot_age_seconds
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Exposition:
    def __init__(self, *, token: str, state: Any, dropped: Callable[[], dict[str, int]]):
        self.token = token.encode()
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
            "portal_gateway_requests_in_flight", "Requests being handled now.", registry=self.registry
        )
        self.registry.register(_Snapshot(state, dropped))
        # One child per label set, found once: label lookups would cost more than the counting.
        self._counters: dict[tuple, Any] = {}
        self._histograms: dict[str, Any] = {}

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

    def refuse(self, status: int) -> None:
        self.refused.labels(str(status)).inc()

    def render(self) -> tuple[bytes, bytes]:
        """(content type, body) of a scrape."""
        return CONTENT_TYPE_LATEST.encode(), generate_latest(self.registry)


class _Snapshot:
    """What is read at scrape time: the routing snapshot's generation and age, and the
    prediction-log records dropped so far."""

    def __init__(self, state: Any, dropped: Callable[[], dict[str, int]]):
        self.state, self.dropped = state, dropped

    def collect(self):
        generation = GaugeMetricFamily(
            "portal_gateway_snapshot_generation", "The routing snapshot generation this gateway serves from."
        )
        generation.add_metric([], self.state.snapshot.generation)
        yield generation
        age = GaugeMetricFamily(
            "portal_gateway_snapshot_age_seconds", "Seconds since this gateway last heard from its routing store."
        )
        age.add_metric([], max(0.0, time.monotonic() - self.state.last_contact) if self.state.last_contact else -1)
        yield age
        dropped = CounterMetricFamily(
            "portal_gateway_prediction_log_dropped",
            "Logged predictions dropped (buffer full or Redis unreachable), by route.",
            labels=["route"],
        )
        for route, count in self.dropped().items():
            dropped.add_metric([route], count)
        yield dropped
