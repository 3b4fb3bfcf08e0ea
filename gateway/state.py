"""What the gateway knows: routes, token digests and grants, loaded from Redis.

The control plane publishes three hashes and bumps a generation counter on every change
(deployments/publish.py; key names and payloads are gateway/contract.py's). The gateway
polls the counter a few times a second and reloads when it moves, so a revoked token or
grant stops working well within a second. If Redis
is unreachable, the last snapshot keeps serving for `stale_after` seconds; after that the
gateway answers 503 rather than act on information that may be long out of date.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any

import fastjsonschema
import re2
import redis.asyncio as aioredis
from jsonschema import Draft202012Validator, ValidationError, validators
from redis.exceptions import RedisError
from referencing import Registry

from gateway import contract
from gateway.upstream import request_base

log = logging.getLogger("gateway")


@dataclass
class Upstream:
    url: str  # as published: http://host:port or unix:/path/to/model.sock
    outstanding: int = 0
    healthy: bool = True
    base: str = ""  # what the HTTP client asks for (gateway/upstream.py)

    def __post_init__(self) -> None:
        self.base = self.base or request_base(self.url)


@dataclass
class Route:
    key: str
    service: str
    environment: str
    major: int
    version: str
    deployment: int
    upstreams: list[Upstream]
    input_schema: dict
    output_schema: dict
    fast_validate: Any  # compiled once per schema
    info: bytes = b""
    max_instances: int = contract.DEFAULT_MAX_INSTANCES
    logging: contract.Logging | None = None  # how its predictions are logged; None: not at all
    scale_to_zero: bool = False  # no instances means cold: hold requests while one starts
    schema_text: str = ""  # the input schema as canonical JSON (what the checker processes compile)
    # Headers of a successful answer: the content type, plus Deprecation and Sunset for a
    # deprecated major (built once per snapshot, not per request).
    ok_headers: list[tuple[bytes, bytes]] = field(default_factory=lambda: [(b"content-type", b"application/json")])
    # A version tried beside this one (contract.Candidate), as a Route of its own that shares
    # this one's key, service, schemas and logging: `canary` serves `canary_percent` % of the
    # requests (per caller when `canary_sticky`), `shadow` gets a copy of `shadow_percent` % of
    # them. None when the route has no candidate of that mode, or it has no instance.
    canary: Route | None = None
    canary_percent: float = 0.0
    canary_sticky: bool = False
    shadow: Route | None = None
    shadow_percent: float = 0.0

    def pick(self) -> Upstream | None:
        """The healthy upstream with the fewest requests in flight."""
        best = None
        for upstream in self.upstreams:
            if upstream.healthy and (best is None or upstream.outstanding < best.outstanding):
                best = upstream
        return best


@dataclass
class Snapshot:
    generation: int = -1
    routes: dict[str, Route] = field(default_factory=dict)
    tokens: dict[str, contract.Token] = field(default_factory=dict)
    grants: dict[str, contract.Grant] = field(default_factory=dict)  # service -> who may call it, and their limits


# Keywords whose meaning fastjsonschema (drafts 4 to 7) does not know: such schemas are
# checked with jsonschema's draft 2020-12 validator, the one the registry checked them with.
_DRAFT_2020_ONLY = {
    "prefixItems",
    "$dynamicRef",
    "$dynamicAnchor",
    "dependentRequired",
    "dependentSchemas",
    "unevaluatedItems",
    "unevaluatedProperties",
    "minContains",
    "maxContains",
}


# ---------------------------------------------------------------- schemas, walked and compiled safely

# Deeper schemas are refused, not compiled: the registry refuses far shallower ones (64
# levels), so only a route the registry never checked gets here, and compiling or walking
# it must not exhaust the stack of the one process every service goes through.
SCHEMA_MAX_DEPTH = 100


class UnusableRoute(ValueError):
    """A published route this gateway will not serve (it is skipped, the others are not)."""


def _walk(schema: Any, what: str = "input schema") -> tuple[set[str], set[str]]:
    """The keys of every object in the schema, and the values of its `pattern` keywords,
    found without recursion and to a bounded depth."""
    keys: set[str] = set()
    patterns: set[str] = set()
    stack = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > SCHEMA_MAX_DEPTH:
            raise UnusableRoute(f"its {what} is nested deeper than {SCHEMA_MAX_DEPTH} levels")
        if isinstance(node, dict):
            keys.update(node)
            if isinstance(node.get("pattern"), str):
                patterns.add(node["pattern"])
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in node)
    return keys, patterns


# A schema's `pattern` runs on what callers send. Python's `re` backtracks: one caller's
# string against a pattern such as ^(a+)+$ could hold this process, and with it every
# service, for minutes. Patterns run with RE2 instead, in time linear in the input, in both
# engines. `patternProperties` is refused (the registry refuses it too): both engines would
# match property names with Python's `re`, in places RE2 cannot be put.


@functools.lru_cache(maxsize=4096)
def _re2(pattern: str):
    try:
        return re2.compile(pattern)
    except re2.error:
        raise UnusableRoute(f"its pattern {pattern[:80]!r} needs a backtracking regex engine") from None


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not _re2(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


# Draft 2020-12 with `pattern` matched by RE2 (and an empty registry: no $ref is fetched).
LinearValidator = validators.extend(Draft202012Validator, {"pattern": _pattern})


def _compile(schema: dict) -> Any:
    """A fast validator that accepts exactly what the registry's draft 2020-12 check accepts
    (formats are annotations there, so they are not enforced here either), with every
    `pattern` matched by RE2."""
    keywords, patterns = _walk(schema)
    if "patternProperties" in keywords:
        raise UnusableRoute("its input schema uses patternProperties, which only a backtracking engine evaluates")
    for pattern in patterns:
        _re2(pattern)  # refuse the route now, not in the middle of a request
    if not keywords & _DRAFT_2020_ONLY:
        try:
            validate = fastjsonschema.compile(schema, use_formats=False)
        except Exception as exc:  # noqa: BLE001 - a schema it cannot compile: use the reference validator
            log.info("fastjsonschema cannot compile a schema (%s); using jsonschema for it", exc)
        else:
            # The generated code looks its patterns up here, by their text in the schema.
            compiled = validate.__globals__["REGEX_PATTERNS"]
            for text in list(compiled):
                compiled[text] = _re2(text)
            return validate
    validator = LinearValidator(schema, registry=Registry())

    def validate(instance):
        if not validator.is_valid(instance):
            raise fastjsonschema.JsonSchemaValueException("invalid")

    return validate


def _deprecation_headers(deprecation: contract.Deprecation | None) -> list[tuple[bytes, bytes]]:
    """`Deprecation: @<unix time>` (RFC 9745) and `Sunset: <HTTP date>` (RFC 8594)."""
    if deprecation is None:
        return []
    headers = [(b"deprecation", f"@{int(deprecation.since)}".encode())]
    if deprecation.sunset:
        headers.append((b"sunset", formatdate(deprecation.sunset, usegmt=True).encode()))
    return headers


def _ok_headers(version: str, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers of a successful answer from `version` (built once per snapshot)."""
    return [(b"content-type", b"application/json"), (b"x-model-version", version.encode()), *extra]


def _deprecation_info(deprecation: contract.Deprecation | None) -> dict | None:
    if deprecation is None:
        return None
    iso = lambda t: datetime.fromtimestamp(t, UTC).isoformat() if t else None  # noqa: E731
    return {"since": iso(deprecation.since), "sunset": iso(deprecation.sunset), "note": deprecation.note}


class State:
    def __init__(self, redis_url: str, *, poll_interval: float = 0.2, stale_after: float = 30.0):
        self.redis_url = redis_url
        self.poll_interval = poll_interval
        self.stale_after = stale_after
        self.snapshot = Snapshot()
        self.last_contact = 0.0  # monotonic time of the last read from Redis that left a current snapshot
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self._validators: dict[str, Any] = {}
        self._upstreams: dict[str, Upstream] = {}
        self._redis: aioredis.Redis | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        # Called after every poll, whatever it found (the metrics keep their gauges current).
        self.listeners: list[Callable[[], None]] = []
        # Set (and replaced) whenever a new snapshot is loaded: what held requests wait on.
        self._changed = asyncio.Event()

    @property
    def fresh(self) -> bool:
        return time.monotonic() - self.last_contact <= self.stale_after

    async def start(self) -> None:
        # Its own small pool: the state poller never waits behind request traffic.
        self._redis = aioredis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1, max_connections=4)
        try:
            await self.refresh()
        except Exception as exc:  # noqa: BLE001 - start anyway; the loop keeps trying
            log.warning("could not load routes from Redis at start: %s", exc)
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self._stopping = True  # ends the loop even if a cancellation were lost in a Redis call
        if self._task:
            self._task.cancel()
        if self._redis:
            # Leaving: rollouts must not wait for this gateway to load new routes.
            with contextlib.suppress(Exception):
                await self._redis.hdel(contract.KEY_GATEWAYS, self.id)
            await self._redis.aclose()

    async def _loop(self) -> None:
        beat = 0.0
        while not self._stopping:
            try:
                # The heartbeat names the generation in use: it is written after the snapshot
                # has replaced the last one (requests read `self.snapshot` as they arrive), at
                # once when it changed, so a control plane waiting for every gateway to serve a
                # change (a switch to a new version, a new grant) waits one poll, not a second.
                changed = await self.refresh()
                if changed or time.monotonic() - beat >= 1.0:
                    beat = time.monotonic()
                    heartbeat = contract.Heartbeat(generation=self.snapshot.generation, at=time.time())
                    await self._redis.hset(contract.KEY_GATEWAYS, self.id, heartbeat.encode())
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                log.warning("Redis unreachable, serving the last routes (%s)", exc)
            except Exception:
                log.exception("could not load the routes; serving the last ones")
            for listener in self.listeners:
                try:
                    listener()
                except Exception:
                    log.exception("a state listener failed")
            await asyncio.sleep(self.poll_interval)

    async def refresh(self) -> bool:
        """Load the snapshot if its generation moved (True when it did). Contact counts only
        once the snapshot in memory is the current one: a gateway that can read Redis but not
        build what it holds goes stale (503, and /health 503) instead of serving old grants
        for ever."""
        generation = int(await self._redis.get(contract.KEY_GENERATION) or 0)
        if generation == self.snapshot.generation:
            self.last_contact = time.monotonic()
            return False
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(contract.KEY_GENERATION)
            pipe.hgetall(contract.KEY_ROUTES)
            pipe.hgetall(contract.KEY_TOKENS)
            pipe.hgetall(contract.KEY_GRANTS)
            generation, routes, tokens, grants = await pipe.execute()
        self.snapshot = self._build(int(generation or 0), routes, tokens, grants)
        self.last_contact = time.monotonic()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    async def wait_for_instances(self, key: str, timeout: float) -> Route | None:
        """The route `key` once a snapshot gives it an instance, or None after `timeout`
        seconds (or if it stops being served meanwhile)."""
        deadline = time.monotonic() + timeout
        while True:
            route = self.snapshot.routes.get(key)
            if route is None:
                return None
            if route.upstreams:
                return route
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the event is set, and a cancelled request would wait on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    def _build(self, generation: int, routes: dict, tokens: dict, grants: dict) -> Snapshot:
        """The snapshot of what Redis holds. An entry that cannot be used (malformed, or a
        schema too deep to walk) is skipped and logged: one bad route must not keep every
        other service's routes, grants and revocations from every gateway."""
        snapshot = Snapshot(generation=generation)
        upstreams: dict[str, Upstream] = {}
        for raw_key, raw in routes.items():
            key = raw_key.decode(errors="replace")
            try:
                snapshot.routes[key] = self._route(key, raw, upstreams)
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                log.error("skipping route %s of generation %d: %s", key, generation, exc)
        self._upstreams = upstreams
        for digest, raw in tokens.items():
            try:
                snapshot.tokens[digest.decode()] = contract.Token.decode(raw)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("skipping a token of generation %d: %s", generation, exc)
        for service, raw in grants.items():
            try:
                snapshot.grants[service.decode()] = contract.Grant.decode(raw)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("skipping the grants of %s in generation %d: %s", service, generation, exc)
        return snapshot

    def _route(self, key: str, raw: bytes, upstreams: dict[str, Upstream]) -> Route:
        published = contract.Route.decode(raw)
        if not isinstance(published.input_schema, dict | bool) or not isinstance(published.instances, tuple):
            raise UnusableRoute("its input schema or instances are not what the contract says")
        _walk(published.output_schema, "output schema")  # bounded before the info body is built
        schema_text = json.dumps(published.input_schema, sort_keys=True)
        if schema_text not in self._validators:
            self._validators[schema_text] = _compile(published.input_schema)
        info = {
            "service": published.service,
            "environment": published.environment,
            "major": published.major,
            "model_version": published.version,
            "input_schema": published.input_schema,
            "output_schema": published.output_schema,
            "deprecation": _deprecation_info(published.deprecation),
        }
        route_upstreams = [self._upstream(url, upstreams) for url in published.instances]
        deprecation_headers = _deprecation_headers(published.deprecation)
        route = Route(
            key=key,
            service=published.service,
            environment=published.environment,
            major=published.major,
            version=published.version,
            deployment=published.deployment,
            upstreams=route_upstreams,
            input_schema=published.input_schema,
            output_schema=published.output_schema,
            fast_validate=self._validators[schema_text],
            schema_text=schema_text,
            info=json.dumps(info).encode(),
            max_instances=published.max_instances,
            logging=published.logging,
            scale_to_zero=published.scale_to_zero,
            ok_headers=_ok_headers(published.version, deprecation_headers),
        )
        candidate = published.candidate
        if candidate is not None and candidate.instances and candidate.percent > 0:
            tried = dataclasses.replace(
                route,
                version=candidate.version,
                deployment=candidate.deployment,
                upstreams=[self._upstream(url, upstreams) for url in candidate.instances],
                info=json.dumps({**info, "model_version": candidate.version}).encode(),
                scale_to_zero=False,
                ok_headers=_ok_headers(candidate.version, deprecation_headers),
            )
            if candidate.mode == contract.SHADOW:
                route.shadow, route.shadow_percent = tried, candidate.percent
            else:
                route.canary, route.canary_percent, route.canary_sticky = tried, candidate.percent, candidate.sticky
        return route

    def _upstream(self, url: str, upstreams: dict[str, Upstream]) -> Upstream:
        """The upstream at `url`, keeping its counters and health if it survives a reload."""
        upstream = upstreams.get(url) or self._upstreams.get(url) or Upstream(url=str(url))
        upstreams[url] = upstream
        return upstream

    def all_upstreams(self) -> list[Upstream]:
        return list(self._upstreams.values())
