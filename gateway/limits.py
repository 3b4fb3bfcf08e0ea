"""Rate limits and daily quotas per grant, without a Redis round trip per request.

Every gateway keeps a token bucket per (service, grant) in memory and answers from it at
once. Every LIMITS_SYNC_SECONDS it reconciles all its buckets with the other gateways in one
pipelined call (contract.py says what the keys hold):

- Rate: each gateway notes in the grant's rate hash when it last had requests under it; the
  gateways seen there within LIMITS_ACTIVE_SECONDS share the rate and the burst equally (a
  bucket of its own refills at rate / n and holds burst / n, at least one request). So n
  gateways that all receive a consumer's traffic admit about the rate together, and a
  consumer whose calls all reach one gateway gets the whole rate there. Traffic spread
  unevenly gets less than the rate, never more (beyond the moment before a reconcile notices
  a new gateway: a bucket first seen starts with the share of every live gateway).
- Daily quota: each gateway adds the requests it admitted to the day's usage hash and reads
  the total back (HINCRBY answers it). It admits while the last total it read plus what it
  admitted since stay under the quota, so together gateways can overshoot a quota by at most
  what each admits in one reconcile interval.

Every grant's admitted and refused requests are counted per UTC day the same way, limited or
not: the portal shows them per consumer on the service page.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway import contract
from gateway.contract import Allowance

log = logging.getLogger("gateway.limits")

RATE = "rate"
QUOTA = "quota"


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused with 429, with what its headers and message need."""

    kind: str  # RATE or QUOTA
    retry_after: int  # seconds, at least 1
    limit: float  # the burst (rate) or the daily quota
    detail: str


class Bucket:
    """One grant's requests on one service, on this gateway."""

    __slots__ = (
        "active",
        "admitted",
        "born",
        "day",
        "idle",
        "level",
        "limited",
        "quota_used",
        "rated",
        "refused",
        "sending",
        "share",
        "stamp",
    )

    def __init__(self, share: float, capacity: float, day: int):
        self.share = share  # of the rate and burst: 1 / gateways with requests under the grant
        self.level = capacity * share  # tokens (requests) available now
        self.stamp = self.born = time.monotonic()  # when the level was last brought up to date; made
        self.day = day  # epoch day of the counts below
        self.admitted = 0  # requests admitted since the last reconcile
        self.refused = 0  # requests refused with 429 since the last reconcile
        self.quota_used = 0  # requests admitted today by every gateway, as of the last reconcile
        self.sending = 0  # admitted requests on their way to Redis in the reconcile under way
        self.active = False  # had requests since the last reconcile
        self.idle = 0  # reconciles since it last had requests
        self.limited = False  # its grant has a rate or a quota (as of its last request)
        self.rated = False  # its grant has a rate


# A bucket without requests for this many reconciles is forgotten (a new one starts from the
# shared burst, and learns the day's total at the next reconcile).
FORGET_AFTER = 300
# A gateway whose heartbeat is older than this has stopped (or lost Redis): it takes no share.
GATEWAY_FRESH_SECONDS = 5.0


class Limiter:
    """Token buckets per (service, grant), reconciled through Redis in the background."""

    socket_timeout = 1.0

    def __init__(self, redis_url: str, gateway_id: str, *, interval: float = contract.LIMITS_SYNC_SECONDS):
        self.redis_url = redis_url
        self.gateway_id = gateway_id
        self.interval = interval
        self._stopping = False
        self.buckets: dict[tuple[str, int], Bucket] = {}
        # Counts not yet in Redis of a day that has ended: (day, service, grant, admitted, refused).
        self._carried: list[tuple[int, str, int, int, int]] = []
        self._gateways = 1  # live gateways, this one too, from their heartbeats (a new bucket's first share)
        self._redis: aioredis.Redis | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._redis = aioredis.from_url(
            self.redis_url, socket_timeout=self.socket_timeout, socket_connect_timeout=1, max_connections=2
        )
        await self.sync()  # learn the live gateways before the first bucket takes its share
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self._stopping = True  # ends the loop even if a cancellation were lost in a Redis call
        if self._task:
            self._task.cancel()
        await self.sync()
        if self._redis:
            await self._redis.aclose()

    async def _loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.interval)
            try:
                await self.sync()
            except Exception:  # a reply it could not read: the next reconcile tries again
                log.exception("could not reconcile rate limits")

    # -------------------------------------------------------------- the hot path

    def take(self, service: str, allowance: Allowance) -> Refusal | None:
        """Count one request under `allowance`; a Refusal if a limit is reached (then it is
        counted as refused, not admitted)."""
        now = time.time()
        day = int(now // 86400)
        key = (service, allowance.grant)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Bucket(1.0 / self._gateways, allowance.capacity, day)
        elif bucket.day != day:
            self._next_day(service, allowance.grant, bucket, day)
        bucket.active = True
        quota = allowance.daily_quota
        rate = allowance.rate_per_second
        bucket.limited = quota is not None or rate is not None
        bucket.rated = rate is not None
        if quota is not None and bucket.quota_used + bucket.sending + bucket.admitted >= quota:
            bucket.refused += 1
            return Refusal(
                kind=QUOTA,
                retry_after=max(1, math.ceil((day + 1) * 86400 - now)),
                limit=quota,
                detail=f"Daily quota of {quota} requests used up; it resets at 00:00 UTC.",
            )
        if rate is not None:
            moment = time.monotonic()
            share = bucket.share
            capacity = max(1.0, allowance.capacity * share)
            level = min(capacity, bucket.level + (moment - bucket.stamp) * rate * share)
            bucket.stamp = moment
            if level < 1.0:
                bucket.level = level
                bucket.refused += 1
                return Refusal(
                    kind=RATE,
                    retry_after=max(1, math.ceil((1.0 - level) / (rate * share))) if rate > 0 else 86400,
                    limit=allowance.capacity,
                    detail=(
                        f"Rate limit of {rate:g} requests per second (burst {allowance.capacity:g}) "
                        "for this service exceeded. Retry after the time in Retry-After, or ask the "
                        "service's team for a higher limit."
                    ),
                )
            bucket.level = level - 1.0
        bucket.admitted += 1
        return None

    def _next_day(self, service: str, grant: int, bucket: Bucket, day: int) -> None:
        if bucket.admitted or bucket.refused:
            self._carried.append((bucket.day, service, grant, bucket.admitted, bucket.refused))
        bucket.day = day
        bucket.admitted = bucket.refused = bucket.quota_used = bucket.sending = 0

    # -------------------------------------------------------------- reconciling

    async def sync(self) -> None:
        """Send every bucket's counts and learn the day's totals and the shares, in one round trip."""
        if self._redis is None:
            return
        now = time.time()
        # (service, grant, bucket, admitted, refused, day, active, rated), as sent: requests
        # answered meanwhile change the bucket, not this.
        sent: list[tuple[str, int, Bucket, int, int, int, bool, bool]] = []
        for key, bucket in list(self.buckets.items()):
            if bucket.active:
                bucket.idle = 0
            else:
                bucket.idle += 1
                if not bucket.admitted and not bucket.refused and (bucket.idle > FORGET_AFTER or not bucket.limited):
                    if bucket.idle > FORGET_AFTER:
                        del self.buckets[key]
                    continue  # nothing to send, and nothing to learn for it
            sent.append((*key, bucket, bucket.admitted, bucket.refused, bucket.day, bucket.active, bucket.rated))
            # Still counted against the quota until the day's total that includes them is back.
            bucket.sending = bucket.admitted
            bucket.admitted = bucket.refused = 0
            bucket.active = False
        carried, self._carried = self._carried, []
        try:
            replies = await self._exchange(now, sent, carried)
        except Exception as exc:  # noqa: BLE001 - limits go on locally; the counts wait for the next try
            log.warning("could not reconcile rate limits (%s); keeping the counts for the next try", exc)
            for service, grant, bucket, admitted, refused, day, active, _rated in sent:
                if bucket.day == day:
                    bucket.sending = 0
                    bucket.admitted += admitted
                    bucket.refused += refused
                    bucket.active = bucket.active or active
                elif admitted or refused:
                    self._carried.append((day, service, grant, admitted, refused))
            self._carried.extend(carried)
            return
        beats = next(replies)
        self._gateways = 1 + sum(
            1
            for gateway, raw in beats.items()
            if gateway.decode() != self.gateway_id and contract.Heartbeat.decode(raw).at >= now - GATEWAY_FRESH_SECONDS
        )
        horizon = now - contract.LIMITS_ACTIVE_SECONDS
        for _service, _grant, bucket, _admitted, refused, day, active, rated in sent:
            total = int(next(replies))
            if refused:
                next(replies)
            if bucket.day == day:
                bucket.quota_used = total
                bucket.sending = 0
            if rated:
                if active:
                    next(replies)
                    next(replies)
                seen = next(replies)
                others = sum(
                    1 for gateway, at in seen.items() if float(at) >= horizon and gateway.decode() != self.gateway_id
                )
                share = 1.0 / (1 + others)
                # A young bucket keeps its first, conservative share until the other gateways
                # have had time to mark the grant (they may have its first requests unsent).
                if time.monotonic() - bucket.born < contract.LIMITS_ACTIVE_SECONDS:
                    share = min(share, bucket.share)
                bucket.share = share

    async def _exchange(self, now: float, sent: list, carried: list) -> object:
        """One pipeline: the gateways' heartbeats; per bucket its counts added to the day's usage
        (the admitted total comes back), and for a rated one this gateway's mark in its rate
        hash and the hash read back; the counts of days that ended; the usage hashes' expiry."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(contract.KEY_GATEWAYS)
            days = set()
            for service, grant, _bucket, admitted, refused, day, active, rated in sent:
                usage = contract.usage_key(contract.utc_day(day * 86400))
                days.add(usage)
                pipe.hincrby(usage, contract.usage_field(service, grant), admitted)
                if refused:
                    pipe.hincrby(usage, contract.usage_field(service, grant, refused=True), refused)
                if rated:
                    rate = contract.rate_key(service, grant)
                    if active:
                        pipe.hset(rate, self.gateway_id, f"{now:.3f}")
                        pipe.expire(rate, contract.RATE_RETENTION_SECONDS)
                    pipe.hgetall(rate)
            for day, service, grant, admitted, refused in carried:
                usage = contract.usage_key(contract.utc_day(day * 86400))
                days.add(usage)
                pipe.hincrby(usage, contract.usage_field(service, grant), admitted)
                pipe.hincrby(usage, contract.usage_field(service, grant, refused=True), refused)
            for usage in days:
                pipe.expire(usage, contract.USAGE_RETENTION_SECONDS)
            return iter(await pipe.execute())
