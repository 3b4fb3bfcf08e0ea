"""Publish what the data plane needs to Redis: routes, token digests and grants (with each
caller's allowance: the grant their requests count against and its limits).

The gateway never reads the database. It reads three Redis hashes and a generation
counter; the control plane rewrites a hash whole (in one MULTI, so the gateway never sees
half of it) after every change that affects it, and bumps the counter. A periodic task and
`manage.py publish_dataplane` republish everything, which also heals a Redis restart. Key
names and payloads are the data-plane contract's (gateway/contract.py).
"""

from __future__ import annotations

import contextlib
import logging
import time

import redis
from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from guardian.shortcuts import get_users_with_perms

from accounts.models import ApiToken, Membership, TokenScope
from deployments.models import Deployment, Deprecation, Grant, InstanceState, PredictionLogging, Service, Status
from gateway import contract
from gateway.contract import KEY_GRANTS, KEY_ROUTES, KEY_TOKENS

log = logging.getLogger(__name__)

__all__ = ["KEY_GRANTS", "KEY_ROUTES", "KEY_TOKENS", "publish", "publish_on_commit"]

KEY_PUBLISH_LOCK = "portal:dp:publish-lock"  # between publishers only; gateways never read it
PUBLISH_LOCK_SECONDS = 120  # a turn longer than this is discarded and taken again
PUBLISH_WAIT_SECONDS = 10  # how long a publisher waits for its turn (a request may be waiting)
REPUBLISH_TASK = "deployments.publish_dataplane"  # deployments/tasks.py; queued by name, as tasks import this


def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)


def _routes() -> dict[str, str]:
    deprecated = {
        (d.service_id, d.major): contract.Deprecation(
            since=d.created_at.timestamp(), sunset=d.sunset_at.timestamp() if d.sunset_at else None, note=d.note
        )
        for d in Deprecation.objects.all()
    }
    policies = {(p.service_id, p.environment_id): p for p in PredictionLogging.objects.all()}
    defaults = contract.Logging(
        sample_rate=settings.PREDICTION_LOG_SAMPLE_RATE, payloads=settings.PREDICTION_LOG_PAYLOADS
    )
    routes: dict[str, str] = {}
    candidates = _candidates()
    live = Deployment.objects.filter(status=Status.LIVE).select_related("service", "environment", "version")
    for d in live.prefetch_related("instances"):
        route = contract.Route(
            deployment=d.pk,
            service=d.service.name,
            environment=d.environment.name,
            major=d.major,
            version=d.version.version,
            instances=tuple(i.url for i in d.instances.all() if i.state == InstanceState.READY and i.url),
            input_schema=d.version.input_schema,
            output_schema=d.version.output_schema,
            deprecation=deprecated.get((d.service_id, d.major)),
            max_instances=d.service.max_instances,
            logging=_logging(policies.get((d.service_id, d.environment_id)), defaults),
            scale_to_zero=d.autoscaled and d.min_replicas == 0,
            candidate=candidates.get((d.service_id, d.environment_id, d.major)),
        )
        routes[route.key] = route.encode()
    return routes


def _candidates() -> dict[tuple[int, int, int], contract.Candidate]:
    """The version tried beside each route's live one (canary or shadow), by route.

    Only deployments in `canary` or `shadow` are candidates: one that was promoted, rolled
    back or aborted is never published again, so consecutive canaries of a route cannot leak
    traffic to a version that is no longer part of the rollout. Paused canaries keep their share.
    """
    found: dict[tuple[int, int, int], contract.Candidate] = {}
    trying = Deployment.objects.filter(status__in=[Status.CANARY, Status.SHADOW]).select_related("version")
    for d in trying.prefetch_related("instances").order_by("created_at", "id"):
        instances = tuple(i.url for i in d.instances.all() if i.state == InstanceState.READY and i.url)
        if not instances:
            continue
        found[(d.service_id, d.environment_id, d.major)] = contract.Candidate(
            deployment=d.pk,
            version=d.version.version,
            instances=instances,
            percent=d.percent,
            mode=contract.SHADOW if d.status == Status.SHADOW else contract.CANARY,
            sticky=d.sticky and d.status == Status.CANARY,
        )
    return found


def _logging(policy: PredictionLogging | None, defaults: contract.Logging) -> contract.Logging | None:
    if policy is None:
        return defaults if settings.PREDICTION_LOG_ENABLED else None
    if not policy.enabled:
        return None
    return contract.Logging(sample_rate=policy.sample_rate, payloads=policy.keep_payloads)


def _tokens() -> dict[str, str]:
    tokens = {}
    active = ApiToken.objects.active().filter(user__is_active=True).select_related("user")
    for t in active:
        if TokenScope.INVOKE in t.scopes:
            tokens[t.digest] = contract.Token(
                user=t.user_id,
                username=t.user.username,
                expires=t.expires_at.timestamp() if t.expires_at else None,
            ).encode()
    return tokens


def _grants() -> dict[str, str]:
    rows: dict[int, list[Grant]] = {}
    for grant in Grant.objects.order_by("id"):
        rows.setdefault(grant.service_id, []).append(grant)
    teams = {g.team_id for gs in rows.values() for g in gs if g.team_id}
    members: dict[int, list[int]] = {}
    for team_id, user_id in Membership.objects.filter(team_id__in=teams).values_list("team_id", "user_id"):
        members.setdefault(team_id, []).append(user_id)
    grants = {}
    for service in Service.objects.all():
        users = get_users_with_perms(
            service, with_group_users=True, only_with_perms_in=["invoke_service"], with_superusers=False
        )
        allowed = frozenset(users.filter(is_active=True).values_list("id", flat=True))
        grants[service.name] = contract.Grant(
            users=allowed, allowances=_allowances(rows.get(service.pk, []), members, allowed)
        ).encode()
    return grants


def _allowances(
    grants: list[Grant], members: dict[int, list[int]], allowed: frozenset[int]
) -> dict[int, contract.Allowance]:
    """Which grant each caller's requests count against. Limits are per grant: a team's grant
    is one allowance its members share. A caller's own grant comes first; a caller in several
    granted teams gets the most generous of their grants (no limit beats any limit, then the
    higher rate, then the larger quota). Callers with no grant row behind their permission
    (none today) have no allowance: never limited, not counted per grant."""

    def generosity(grant: Grant) -> tuple:
        unlimited = float("inf")
        rate = unlimited if grant.rate_per_second is None else grant.rate_per_second
        quota = unlimited if grant.daily_quota is None else grant.daily_quota
        return (grant.user_id is not None, rate, quota, -grant.pk)

    chosen: dict[int, Grant] = {}
    for grant in grants:
        for user in [grant.user_id] if grant.user_id else members.get(grant.team_id, []):
            if user in allowed and (user not in chosen or generosity(grant) > generosity(chosen[user])):
                chosen[user] = grant
    return {
        user: contract.Allowance(
            grant=grant.pk,
            rate_per_second=grant.rate_per_second,
            burst=grant.burst,
            daily_quota=grant.daily_quota,
        )
        for user, grant in chosen.items()
    }


BUILDERS = {KEY_ROUTES: _routes, KEY_TOKENS: _tokens, KEY_GRANTS: _grants}
ALL = contract.SNAPSHOT_KEYS


def publish(*keys: str) -> int | None:
    """Rewrite the given hashes (all by default) and bump the generation. Returns it, or
    None when it could not be written now (the periodic republish will catch up).

    Publishers take turns, and each reads the database inside its turn: the last to write
    is then the last to have read, so a slow full republish that read a token before it
    was revoked can never write it back after the revocation's own publish. A write only
    happens while its turn still holds (checked in the same MULTI), so a turn that
    outlasted the lock is discarded and taken again instead of landing late.
    """
    keys = keys or ALL
    try:
        r = client()
        for _attempt in range(3):
            lock = r.lock(KEY_PUBLISH_LOCK, timeout=PUBLISH_LOCK_SECONDS, blocking_timeout=PUBLISH_WAIT_SECONDS)
            if not lock.acquire():
                break
            try:
                generation = _write(r, keys, lock)
            finally:
                with contextlib.suppress(redis.exceptions.LockError):
                    lock.release()
            if generation is not None:
                return generation
            log.warning("publishing %s outlasted its turn; taking another", ", ".join(keys))
        # No turn in time (a very slow publisher, or a lock left by a dead one until it
        # expires): a worker publishes everything as soon as it can, never out of turn here.
        log.warning("no turn to publish %s; queued a full republish", ", ".join(keys))
        _queue_republish()
        return None
    except redis.RedisError as exc:
        log.warning("could not publish %s to Redis: %s", ", ".join(keys), exc)
        return None


def _write(r: redis.Redis, keys: tuple[str, ...], lock) -> int | None:
    """Build and write the hashes; None if the turn was lost before the write."""
    data = {key: BUILDERS[key]() for key in keys}
    with r.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(KEY_PUBLISH_LOCK)
            if pipe.get(KEY_PUBLISH_LOCK) != lock.local.token:
                return None
            pipe.multi()
            for key, values in data.items():
                pipe.delete(key)
                if values:
                    pipe.hset(key, mapping=values)
            pipe.incr(contract.KEY_GENERATION)
            result = pipe.execute()
        except redis.WatchError:  # the lock expired and changed hands between the check and the write
            return None
    return int(result[-1])


def _queue_republish() -> None:
    try:
        current_app.send_task(REPUBLISH_TASK)
    except Exception as exc:  # noqa: BLE001 - the periodic republish still comes within a minute
        log.warning("could not queue a republish: %s", exc)


def publish_on_commit(*keys: str, wait: float | None = None) -> None:
    """Publish after the current transaction commits, so the data plane never sees a change
    that was rolled back; then wait (at most `wait` seconds, GATEWAYS_WAIT_SECONDS by
    default) until every live gateway has loaded it, so that a new grant or token works, and
    a revoked one is refused, at the gateways by the time the caller of the change is
    answered."""
    wait = GATEWAYS_WAIT_SECONDS if wait is None else wait

    def run() -> None:
        generation = publish(*keys)
        if generation is not None and wait > 0:
            await_gateways(generation, timeout=wait)

    transaction.on_commit(run)


# How long a change waits for the gateways to load it before its caller is answered anyway
# (a gateway loads a new generation within its poll interval, 0.2 s by default).
GATEWAYS_WAIT_SECONDS = 3.0


def await_gateways(generation: int, *, timeout: float) -> tuple[int, int]:
    """Wait until every live gateway has loaded `generation` (heartbeats name the generation
    a gateway serves, written as soon as it does), at most `timeout` seconds: (seen, alive)."""
    deadline = time.monotonic() + timeout
    seen, alive = 0, 0
    while True:
        with contextlib.suppress(Exception):
            seen, alive = gateways_seen(generation)
            if seen >= alive:
                return seen, alive
        if time.monotonic() >= deadline:
            return seen, alive
        time.sleep(0.02)


class Turn:
    """The publishers' turn, held across a change that must reach the gateways before it is
    committed (rollout._switch: "live" only once every gateway routes to the new version).
    `write` publishes as the current transaction sees the database (its own uncommitted
    writes included); other publishers wait for the turn, and so read after the commit:
    none can write back what the change replaces in between. Release it after the commit."""

    def __init__(self, lock_seconds: float = 30) -> None:
        self._redis: redis.Redis | None = None
        self._lock = None
        try:
            self._redis = client()
            lock = self._redis.lock(KEY_PUBLISH_LOCK, timeout=lock_seconds, blocking_timeout=PUBLISH_WAIT_SECONDS)
            if lock.acquire():
                self._lock = lock
        except redis.RedisError as exc:
            log.warning("could not take a turn to publish: %s", exc)

    def write(self, *keys: str) -> int | None:
        """Publish `keys` in this turn: the generation, or None (no turn, or Redis away)."""
        if self._lock is None:
            return None
        try:
            return _write(self._redis, keys or ALL, self._lock)
        except redis.RedisError as exc:
            log.warning("could not publish %s to Redis: %s", ", ".join(keys), exc)
            return None

    def release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(redis.RedisError, redis.exceptions.LockError):
                self._lock.release()
            self._lock = None


def gateways_seen(generation: int, *, max_age_seconds: float = 5) -> tuple[int, int]:
    """(gateways that loaded `generation` or later, gateways alive), from their heartbeats."""
    now = timezone.now().timestamp()
    alive = seen = 0
    for raw in client().hgetall(contract.KEY_GATEWAYS).values():
        heartbeat = contract.Heartbeat.decode(raw)
        if now - heartbeat.at > max_age_seconds:
            continue
        alive += 1
        seen += heartbeat.generation >= generation
    return seen, alive
