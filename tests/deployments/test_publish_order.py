"""Publishing to the data plane takes turns, so a stale snapshot never overwrites a newer one."""

import json
import threading
import time

import pytest
import redis

from accounts.services import token_create, token_revoke
from deployments import publish

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


def test_publishing_goes_on_when_the_turn_does_not_come(member, redis_url, monkeypatch):
    """A lock left behind (a publisher that died holding it) delays a publish, never drops it."""
    monkeypatch.setattr(publish, "PUBLISH_LOCK_SECONDS", 1)
    redis.Redis.from_url(redis_url).set(publish.KEY_PUBLISH_LOCK, "someone else", ex=30)
    try:
        token, _ = token_create(actor=None, user=member, name="fresh")
        assert publish.publish(publish.KEY_TOKENS) is not None
        assert token.digest in published_token_digests(redis_url)
        assert json.loads(redis.Redis.from_url(redis_url).hget(publish.KEY_TOKENS, token.digest))["user"] == member.pk
    finally:
        redis.Redis.from_url(redis_url).delete(publish.KEY_PUBLISH_LOCK)
