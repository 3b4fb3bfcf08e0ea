"""The autoscaler: each autoscaled deployment's instances follow its requests in flight.

Signal. Gateways already count each instance's outstanding requests (to balance by them), so
the load costs the data plane nothing per request: each gateway process samples its routes'
requests in flight four times a second and writes, once a second, the mean and peak over the
last three seconds into its own field of one Redis hash (gateway/load.py, contract.KEY_LOAD).
Requests held for a route scaled to zero count too, and are reported at once: that is how a
cold route asks for an instance. The autoscaler sums the fresh reports (one per gateway
process, however many hosts), so it sees the whole fleet's demand. No report at all (gateways
down, Redis unreachable) means "unknown", never "idle": it then changes nothing.

Decision. desired = ceil(mean in flight / target_in_flight), at least 1 while a request is
held, clamped to [min_replicas, max_replicas]. More than now: scale up at once. Fewer: only
once demand has stayed lower for scale_down_after_seconds, and then to the highest number
wanted during that cool-down (a dip between two bursts does not remove what the next burst
needs). The mean over three seconds, not the instant count, keeps closed-loop clients' gaps
between requests from looking like falling demand.

Where it runs. A small long-running process (`python manage.py autoscale`, started by
`make run` beside the worker, beat, web server and gateway), not a Celery beat task: beat's
one-second ticks would put a task message on the broker every second and wait behind
whatever the worker is doing (a rollout can hold it for minutes), so scaling up could not be
counted on "within seconds". The loop reads one Redis hash and one small query of the
autoscaled deployments every half second; the database is written only when it decides
(the new replicas and an event). Acting takes seconds (starting an instance, waiting for it
to be ready, draining one), so each decision runs in a thread of its own, one at a time per
deployment, and the loop keeps watching the others meanwhile.

Acting. Through the same path as a person's scaling (rollout.rescale → rollout.scale: start,
wait ready, smoke test, publish, drain, stop), under the deployment's lease, so it never races
a rollout or the reconciler, and works the same on `local`, `docker` and `swarm`. Several
autoscalers (one per `make run` host) elect one leader with a Redis key that expires; the
others watch and take over within seconds when it stops.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from deployments import publish, states
from deployments import rollout as engine
from deployments.models import TRYING, Deployment, Status
from gateway import contract

log = logging.getLogger(__name__)

KEY_LEADER = "portal:autoscaler:leader"  # control plane only; gateways never read it
LEADER_SECONDS = 5


@dataclass
class Demand:
    """A route's requests over every fresh gateway report."""

    in_flight: float = 0.0  # the sum of the gateways' means over their window
    held: int = 0
    held_since: float | None = None


@dataclass(frozen=True)
class Target:
    """What the autoscaler needs of one autoscaled live deployment."""

    deployment: int
    route: str
    replicas: int
    min_replicas: int
    max_replicas: int
    target_in_flight: int
    scale_down_after_seconds: int


def read_load(client: redis.Redis, now: float) -> dict[str, Demand] | None:
    """Demand per route key, summed over the fresh gateway reports; None when there are none."""
    demand: dict[str, Demand] = {}
    fresh = 0
    for raw in client.hgetall(contract.KEY_LOAD).values():
        try:
            load = contract.Load.decode(raw)
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        if now - load.at > contract.LOAD_FRESH_SECONDS:
            continue
        fresh += 1
        for key, route in load.routes.items():
            total = demand.setdefault(key, Demand())
            total.in_flight += route.average
            total.held += route.held
            if route.held_since is not None:
                total.held_since = min(total.held_since or route.held_since, route.held_since)
    return demand if fresh else None


class Decider:
    """Desired replicas, from demand and what each deployment has seen lately (no I/O: the
    policy alone, so tests can drive it with numbers)."""

    def __init__(self) -> None:
        # deployment -> (since when demand has stayed below its replicas, the most wanted since)
        self._lower: dict[int, tuple[float, int]] = {}

    def desired(self, target: Target, demand: Demand) -> int:
        wanted = math.ceil(demand.in_flight / target.target_in_flight - 1e-9) if demand.in_flight > 0 else 0
        if demand.held:
            wanted = max(wanted, 1)
        return min(max(wanted, target.min_replicas), target.max_replicas)

    def decide(self, target: Target, demand: Demand, now: float) -> int | None:
        """The replicas to scale to now, or None to stay."""
        wanted = self.desired(target, demand)
        if wanted >= target.replicas:
            self._lower.pop(target.deployment, None)
            return wanted if wanted > target.replicas else None
        since, most = self._lower.get(target.deployment, (now, wanted))
        most = max(most, wanted)
        if now - since >= target.scale_down_after_seconds:
            self._lower.pop(target.deployment, None)
            return most
        self._lower[target.deployment] = (since, most)
        return None

    def forget(self, deployment: int) -> None:
        self._lower.pop(deployment, None)


def targets() -> list[Target]:
    rows = Deployment.objects.filter(status=Status.LIVE, target_in_flight__isnull=False).values_list(
        "pk",
        "environment__name",
        "service__name",
        "major",
        "replicas",
        "min_replicas",
        "max_replicas",
        "target_in_flight",
        "scale_down_after_seconds",
    )
    # A route with a canary or shadow candidate keeps its stable version awake: the candidate is
    # judged against it (its requests in flight, counted per route, include the candidate's share).
    trying = {
        contract.route_key(env, service, major)
        for env, service, major in Deployment.objects.filter(status__in=TRYING).values_list(
            "environment__name", "service__name", "major"
        )
    }
    targets = []
    for pk, env, service, major, replicas, low, high, aim, cooldown in rows:
        route = contract.route_key(env, service, major)
        least = max(low or 0, 1) if route in trying else low or 0
        targets.append(Target(pk, route, replicas, least, high or replicas, aim, cooldown))
    return targets


class Autoscaler:
    def __init__(self, *, interval: float | None = None, threads: int = 4):
        self.interval = interval if interval is not None else settings.AUTOSCALE_INTERVAL_SECONDS
        self.id = f"autoscaler:{socket.gethostname()}:{os.getpid()}"
        self.decider = Decider()
        self.redis = publish.client()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="autoscale")
        self._busy: dict[int, Future] = {}
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        log.info("autoscaler %s started (every %.2f s)", self.id, self.interval)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    self.tick()
                except (redis.RedisError, OSError) as exc:
                    log.warning("autoscaler: Redis unreachable (%s); changing nothing", exc)
                except Exception:
                    log.exception("autoscaler: a look failed; changing nothing")
                    close_old_connections()
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            self._pool.shutdown(wait=True)
            if self.redis.get(KEY_LEADER) == self.id.encode():
                self.redis.delete(KEY_LEADER)

    def leading(self) -> bool:
        if self.redis.set(KEY_LEADER, self.id, nx=True, ex=LEADER_SECONDS):
            return True
        if self.redis.get(KEY_LEADER) == self.id.encode():
            self.redis.expire(KEY_LEADER, LEADER_SECONDS)
            return True
        return False

    def tick(self) -> list[tuple[int, int]]:
        """One look: returns the decisions it started, as (deployment, replicas)."""
        if not self.leading():
            return []
        for pk in [pk for pk, future in self._busy.items() if future.done()]:
            del self._busy[pk]
        now = time.time()
        demand = read_load(self.redis, now)
        if demand is None:
            return []  # no gateway has reported lately: demand unknown, not zero
        decisions = []
        for target in targets():
            if target.deployment in self._busy:
                continue
            route = demand.get(target.route, Demand())
            replicas = self.decider.decide(target, route, now)
            if replicas is None:
                continue
            decisions.append((target.deployment, replicas))
            self._busy[target.deployment] = self._pool.submit(self._act, target, route, replicas)
        return decisions

    def _act(self, target: Target, demand: Demand, replicas: int) -> None:
        try:
            before = target.replicas
            if before == 0:
                why = f"woke from zero: {demand.held} request(s) held at the gateway"
            elif replicas > before:
                why = f"{demand.in_flight:.1f} requests in flight, target {target.target_in_flight} per replica"
            else:
                why = (
                    f"{demand.in_flight:.1f} requests in flight, target {target.target_in_flight} per replica, "
                    f"lower for {target.scale_down_after_seconds} s"
                )
            outcome = engine.rescale(
                target.deployment, replicas, owner=self.id, message=f"Scaled {before} → {replicas}: {why}."
            )
            log.info("deployment %s: %s → %s (%s): %s", target.deployment, before, replicas, why, outcome)
            if before == 0 and outcome == Status.LIVE and demand.held_since is not None:
                self._record_cold_start(target.deployment, time.time() - demand.held_since)
        except Exception:
            log.exception("autoscaling deployment %s to %s failed", target.deployment, replicas)
        finally:
            self.decider.forget(target.deployment)
            connection.close()

    def _record_cold_start(self, deployment_id: int, seconds: float) -> None:
        Deployment.objects.filter(pk=deployment_id).update(
            last_cold_start_seconds=round(seconds, 2), updated_at=timezone.now()
        )
        states.event(
            Deployment(pk=deployment_id),
            f"Cold start: an instance was serving {seconds:.1f} s after the first request reached the gateway.",
        )
