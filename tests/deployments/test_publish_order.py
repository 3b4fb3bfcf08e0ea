"""Publishing to the data plane takes turns, so a stale snapshot never overwrites a newer one."""

import json
import threading
import time

import pytest
import redis

from accounts.services import token_create, token_revoke
from deployments import publish
from gateway import contract

pytestmark = pytest.mark.django_db(transaction=True)


def published_token_digests(redis_url: str) -> set[str]:
    return {k.decode() for k in redis.Redis.from_url(redis_url).hkeys(publish.KEY_TOKENS)}


def test_a_slow_full_republish_cannot_put_back_a_token_revoked_meanwhile(member, redis_url, monkeypatch):
    from django.db import connection

    token, _ = token_create(actor=None, user=member, name="to be revoked")
    original = publish.BUILDERS[publish.KEY_TOKENS]
    has_read = threading.Event()

    def slow_tokens():
        data = original()  # reads the token while it is still active…
        has_read.set()
        time.sleep(1.0)  # …and takes its time before writing
        return data

    monkeypatch.setitem(publish.BUILDERS, publish.KEY_TOKENS, slow_tokens)

    def republish():
        try:
            publish.publish()
        finally:
            connection.close()

    slow = threading.Thread(target=republish)
    slow.start()
    assert has_read.wait(10)
    monkeypatch.setitem(publish.BUILDERS, publish.KEY_TOKENS, original)
    token_revoke(actor=member, token=token)  # publishes the tokens once its transaction commits
    slow.join(15)
    assert not slow.is_alive()
    assert token.digest not in published_token_digests(redis_url)


def test_a_turn_that_outlasts_the_lock_is_taken_again_not_written_late(member, redis_url, monkeypatch):
    """A publisher whose turn expired mid-build must not write its (now old) data."""
    monkeypatch.setattr(publish, "PUBLISH_LOCK_SECONDS", 1)
    original = publish.BUILDERS[publish.KEY_TOKENS]
    builds = []

    def slow_once():
        builds.append(time.monotonic())
        if len(builds) == 1:
            time.sleep(1.5)  # the lock expires meanwhile
        return original()

    monkeypatch.setitem(publish.BUILDERS, publish.KEY_TOKENS, slow_once)
    before = int(redis.Redis.from_url(redis_url).get(contract.KEY_GENERATION) or 0)
    generation = publish.publish(publish.KEY_TOKENS)
    assert len(builds) == 2  # the first build was discarded, the second written
    assert generation == before + 1


def test_no_turn_in_time_queues_a_republish_instead_of_writing_out_of_turn(member, redis_url, monkeypatch):
    """A lock left behind (a publisher that died holding it) delays a publish, never drops it."""
    monkeypatch.setattr(publish, "PUBLISH_WAIT_SECONDS", 0.2)
    r = redis.Redis.from_url(redis_url)
    r.delete("celery")  # the broker's default queue, in the test Redis
    r.set(publish.KEY_PUBLISH_LOCK, "someone else", ex=30)
    try:
        before = r.get(contract.KEY_GENERATION)
        assert publish.publish(publish.KEY_TOKENS) is None
        assert r.get(contract.KEY_GENERATION) == before
        queued = [json.loads(message)["headers"]["task"] for message in r.lrange("celery", 0, -1)]
        assert queued == [publish.REPUBLISH_TASK] == ["deployments.publish_dataplane"]
    finally:
        r.delete(publish.KEY_PUBLISH_LOCK, "celery")
    token, _ = token_create(actor=None, user=member, name="fresh")
    assert publish.publish(publish.KEY_TOKENS) is not None  # once the turn is free again
    assert json.loads(r.hget(publish.KEY_TOKENS, token.digest))["user"] == member.pk
