"""The Redis user gateways connect as (the session's Redis is started as make run starts its
own): it reads the data-plane snapshot and writes heartbeats and counts, and nothing else;
and nobody gets into that Redis without a password."""

import os
import re

import pytest
import redis

from gateway import contract
from scripts.stack import redis_executable, redis_version


@pytest.fixture
def as_gateway(gateway_redis_url, redis_url):
    if gateway_redis_url == redis_url:
        pytest.skip("PORTAL_TEST_REDIS_URL names a Redis of yours: its users are yours to set up")
    client = redis.Redis.from_url(gateway_redis_url)
    yield client
    client.close()


def test_nobody_gets_in_without_a_password(redis_url, as_gateway):
    host, port = re.search(r"@([\d.]+):(\d+)/", redis_url).groups()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=host, port=int(port)).ping()


def test_a_gateway_reads_the_snapshot_and_writes_only_its_own_keys(redis_url, as_gateway):
    portal = redis.Redis.from_url(redis_url)
    portal.set(contract.KEY_GENERATION, 41)
    assert int(as_gateway.get(contract.KEY_GENERATION)) == 41
    assert as_gateway.hset(contract.KEY_GATEWAYS, "probe", "{}") == 1
    as_gateway.hincrby(contract.minute_key(0), "probe", 1)
    # What the portal keeps besides the snapshot (Celery's queue, the sign-in counts) is out of reach.
    for key in ("celery", "portal:cache:anything"):
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_gateway.get(key)
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_gateway.flushdb()
    portal.delete(contract.KEY_GATEWAYS, contract.minute_key(0))


def test_a_gateway_cannot_write_the_snapshot(redis_url, as_gateway):
    """With Redis 7 the user's keys are read-only where the control plane writes (Redis 6 cannot
    tell reads from writes per key; `make test` installs Redis 7)."""
    if redis_version(redis_executable()) < (7, 0):
        reason = "Redis 6 grants keys and commands apart; read-only keys need Redis 7"
        if os.environ.get("CI"):
            pytest.fail(reason + ", and CI installs it.")
        pytest.skip(reason)
    for write in (
        lambda: as_gateway.hset(contract.KEY_TOKENS, "forged-digest", "{}"),
        lambda: as_gateway.hset(contract.KEY_GRANTS, "iris", "[1]"),
        lambda: as_gateway.incr(contract.KEY_GENERATION),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            write()
    assert not redis.Redis.from_url(redis_url).hexists(contract.KEY_TOKENS, "forged-digest")
