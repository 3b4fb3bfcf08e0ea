"""The data plane's front door: /serve/{environment}/{service}/v{major}[/predict].

In order: token (401), route (404), grant (403), the grant's rate limit and daily quota (429,
gateway/limits.py), body size (413), JSON (400), input schema (422, naming each failing
field), a live instance (503), the upstream's time limit (504).
Every error is application/problem+json. No database, no Django: routes, token digests and
grants come from Redis (gateway/state.py, in the shapes of gateway/contract.py); a pooled,
lean HTTP/1.1 client (gateway/upstream.py) talks to the model servers, over their unix sockets
or TCP, balancing by fewest requests in flight; an aiohttp session makes the health checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import aiohttp
from multidict import CIMultiDict

from gateway import contract
from gateway import upstream as upstream_client
from gateway.checker import Checker, refusal
from gateway.exposition import Exposition
from gateway.limits import RATE, Limiter, Refusal
from gateway.load import LoadReporter
from gateway.metrics import Metrics
from gateway.predictions import PredictionLog, new_id
from gateway.state import Route, State, Upstream

log = logging.getLogger("gateway")

PROBLEM = [(b"content-type", b"application/problem+json")]
NO_TOKEN = "Send 'Authorization: Bearer <token>' with a token that has the invoke scope."  # noqa: S105 (a message)
BAD_TOKEN = "The token is unknown, revoked, expired, or lacks the invoke scope."  # noqa: S105 (a message)
EMPTY_TOKEN = (
    "The Authorization header says 'Bearer' with no token after it: whatever was to print the token printed "  # noqa: S105 (a message)
    "nothing (is `portal` on your PATH?). Send 'Authorization: Bearer <token>'."
)
# The shape of a token as accounts/tokens.py makes it (tests/gateway keeps the two in step):
# `ptl_`, 8 characters, `_`, 40 characters. Only a refused token is measured against it.
TOKEN_PREFIX = b"ptl_"
TOKEN_BODY_LENGTH = 49
JSON = [(b"content-type", b"application/json")]
INLINE_CHECK_BYTES = 256 * 1024  # larger bodies are parsed and checked in a checker process
# What every forwarded prediction carries, built once: aiohttp copies it into each request.
# `identity`: the answer's bytes are passed on as they come (the session does not
# decompress them), so the model server must not be invited to compress them.
UPSTREAM_HEADERS = CIMultiDict({"Content-Type": "application/json", "Accept-Encoding": "identity"})


class Gateway:
    def __init__(
        self,
        *,
        redis_url: str,
        max_body_bytes: int = 10 * 1024 * 1024,
        upstream_timeout: float = 30.0,
        stale_after: float = 30.0,
        poll_interval: float = 0.2,
        log_buffer: int = 20_000,
        metrics_token: str = "",
        check_processes: int = 1,
        cold_start_seconds: float = 30.0,
        limits_interval: float = contract.LIMITS_SYNC_SECONDS,
        shadow_concurrency: int = 8,
    ):
        self.state = State(redis_url, poll_interval=poll_interval, stale_after=stale_after)
        self.load = LoadReporter(redis_url, self.state)
        self.limits = Limiter(redis_url, self.state.id, interval=limits_interval)
        # How long a request for a route scaled to zero is held while an instance starts.
        self.cold_start_seconds = cold_start_seconds
        self.metrics = Metrics(redis_url)
        self.predictions = PredictionLog(redis_url, capacity=log_buffer)
        self.checker = Checker(check_processes)
        # Prometheus metrics for operators: only with a token to read them (nothing counted otherwise).
        self.exposition = (
            Exposition(token=metrics_token, state=self.state, dropped=self.predictions.dropped_by_route.copy)
            if metrics_token
            else None
        )
        self.max_body_bytes = max_body_bytes
        self.upstream_timeout = aiohttp.ClientTimeout(total=upstream_timeout)
        self.session: aiohttp.ClientSession | None = None
        # Lean clients for plain http:// instances, by instance URL (None: use the session).
        self._pools: dict[str, upstream_client.Pool | None] = {}
        self._health_task: asyncio.Task | None = None
        # Shadow copies in flight at most (more are dropped and counted), and those running.
        self.shadow_concurrency = shadow_concurrency
        self._shadows_in_flight = 0
        self._shadow_tasks: set[asyncio.Task] = set()

    # -------------------------------------------------------------- lifecycle

    async def startup(self) -> None:
        connector = upstream_client.UpstreamConnector(
            limit=0, limit_per_host=256, keepalive_timeout=30, ttl_dns_cache=None
        )
        self.session = aiohttp.ClientSession(connector=connector, timeout=self.upstream_timeout, auto_decompress=False)
        await self.state.start()
        await self.load.start()
        await self.limits.start()
        await self.metrics.start()
        await self.predictions.start()
        self.checker.warm()
        self._health_task = asyncio.create_task(self._health_loop())

    async def shutdown(self) -> None:
        if self._health_task:
            self._health_task.cancel()
        for task in list(self._shadow_tasks):
            task.cancel()
        await self.load.stop()
        await self.limits.stop()
        await self.metrics.stop()
        await self.predictions.stop()
        self.checker.close()
        if self.exposition is not None:
            self.exposition.close()
        await self.state.stop()
        for pool in self._pools.values():
            if pool is not None:
                pool.close()
        if self.session:
            await self.session.close()

    async def _health_loop(self) -> None:
        """Bring back upstreams taken out after a failure, once they answer ready again."""
        while True:
            await asyncio.sleep(0.5)
            self._prune_pools()
            for upstream in self.state.all_upstreams():
                if upstream.healthy:
                    continue
                try:
                    async with self.session.get(
                        f"{upstream.base}/health/ready", timeout=aiohttp.ClientTimeout(total=1)
                    ) as r:
                        if r.status == 200:
                            upstream.healthy = True
                except (TimeoutError, aiohttp.ClientError):
                    pass

    def _prune_pools(self) -> None:
        """Close connections idle too long, and the pools of instances no longer routed to."""
        live = {upstream.url for upstream in self.state.all_upstreams()}
        now = time.monotonic()
        for url, pool in list(self._pools.items()):
            if url not in live:
                del self._pools[url]
                if pool is not None:
                    pool.close()
            elif pool is not None:
                pool.prune(now)

    async def _post(self, upstream: Upstream, body: bytes) -> tuple[int, bytes]:
        """(status, body) of an instance's answer to the prediction request `body`."""
        try:
            pool = self._pools[upstream.url]
        except KeyError:
            pool = self._pools[upstream.url] = upstream_client.pool_for(upstream.url)
        if pool is not None:
            return await pool.post(body)
        async with self.session.post(f"{upstream.base}/predict", data=body, headers=UPSTREAM_HEADERS) as response:
            return response.status, await response.read()

    # -------------------------------------------------------------- ASGI

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self.startup()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        exposition = self.exposition
        if exposition is None:
            status, series = await self._handle(scope, receive, send, started)
        else:
            exposition.in_flight.inc()
            try:
                status, series = await self._handle(scope, receive, send, started)
            finally:
                exposition.in_flight.dec()
            route = scope.get("portal.route")
            if route is not None:
                exposition.observe(route, status, time.perf_counter() - started)
            elif scope["path"] not in ("/health", "/metrics"):
                exposition.refuse(status)
        if series:
            self.metrics.record(series, status, time.perf_counter() - started)

    async def _handle(self, scope: dict, receive, send, started: float) -> tuple[int, str | None]:
        path: str = scope["path"]
        if path == "/health":
            fresh = self.state.fresh
            health = {"status": "ok" if fresh else "stale", "generation": self.state.snapshot.generation}
            await _send(send, 200 if fresh else 503, JSON, json.dumps(health).encode())
            return 200, None
        if path == "/metrics":
            return await self._metrics(scope, send), None
        parts = path.strip("/").split("/")
        # serve / env / service / vN [/ predict]
        if (
            len(parts) not in (4, 5)
            or parts[0] != "serve"
            or not parts[3].startswith("v")
            or not parts[3][1:].isdigit()
        ):
            return await _problem(
                send, 404, "Not found", "Paths look like /serve/{environment}/{service}/v{major}/predict."
            ), None
        predict = len(parts) == 5
        if predict and parts[4] != "predict":
            return await _problem(
                send, 404, "Not found", "Paths look like /serve/{environment}/{service}/v{major}/predict."
            ), None
        if not self.state.fresh:
            return await _problem(
                send,
                503,
                "Routing unavailable",
                "The gateway has lost contact with its routing store for too long to trust what it knows. "
                "Try again shortly.",
                retry_after=5,
            ), None
        snapshot = self.state.snapshot

        token = _bearer(scope)
        if not token:
            return await _problem(send, 401, "Unauthorized", EMPTY_TOKEN if token == b"" else NO_TOKEN, auth=True), None
        digest = hashlib.sha256(token).hexdigest()
        holder = snapshot.tokens.get(digest)
        if holder is None or (holder.expires is not None and holder.expires <= time.time()):
            detail = _token_shape_problem(token) or BAD_TOKEN
            return await _problem(send, 401, "Unauthorized", detail, auth=True, error="invalid_token"), None

        key = contract.route_key(parts[1], parts[2], parts[3][1:])
        route = snapshot.routes.get(key)
        if route is None:
            return await _problem(
                send,
                404,
                "No such service",
                f"Nothing is live at {key}. Check the environment, the service name and the major version.",
            ), None
        # Whether this request is copied to a shadow candidate (once it is answered).
        shadow = route.shadow
        if shadow is not None and random.random() * 100 >= route.shadow_percent:  # noqa: S311
            shadow = None
        if route.canary is not None:
            # The version this request goes to, chosen here from the snapshot (no Redis call),
            # before anything is counted: every outcome, refusals included, counts for the
            # version that would have answered, so each version's rates compare like for like.
            if route.canary_sticky:
                chosen = contract.sticky_bucket(digest, key) < route.canary_percent * 100
            else:
                chosen = random.random() * 100 < route.canary_percent  # noqa: S311 - a share, not a secret
            if chosen:
                route = route.canary
        scope["portal.route"] = route  # for the operators' metrics
        series = contract.series(route.environment, route.service, route.major, route.version, holder.username)
        grant = snapshot.grants.get(route.service)
        if grant is None or holder.user not in grant.users:
            return await _problem(
                send,
                403,
                "Forbidden",
                f"'{holder.username}' has no grant to call '{route.service}'. Ask its team for one.",
            ), series
        allowance = grant.allowances.get(holder.user)
        if allowance is not None:
            refused = self.limits.take(route.service, allowance)
            if refused is not None:
                return await _too_many(send, refused), series

        method = scope["method"]
        if not predict:
            if method != "GET":
                return await _problem(send, 405, "Method not allowed", "Use GET here, or POST to .../predict."), series
            await _send(send, 200, route.ok_headers, route.info)
            return 200, series
        if method != "POST":
            return await _problem(send, 405, "Method not allowed", 'POST {"instances": [...]} to this URL.'), series
        return await self._predict(scope, receive, send, route, started, shadow, holder.username), series

    async def _metrics(self, scope: dict, send) -> int:
        if self.exposition is None:
            return await _problem(send, 404, "Not found", "Metrics are off: set GATEWAY_METRICS_TOKEN to turn them on.")
        if not self.exposition.authorised(_header_bytes(scope, b"authorization")):
            return await _problem(
                send, 401, "Unauthorized", "Send 'Authorization: Bearer <GATEWAY_METRICS_TOKEN>'.", auth=True
            )
        content_type, body = self.exposition.render()
        await _send(send, 200, [(b"content-type", content_type)], body)
        return 200

    async def _predict(
        self,
        scope: dict,
        receive,
        send,
        route: Route,
        started: float,
        shadow: Route | None = None,
        consumer: str = "",
    ) -> int:
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return await _problem(
                send, 413, "Payload too large", f"Requests may be at most {self.max_body_bytes} bytes."
            )
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                return await _problem(
                    send, 413, "Payload too large", f"Requests may be at most {self.max_body_bytes} bytes."
                )
            if not message.get("more_body"):
                break
        # A large body is parsed and checked in a checker process, so that other services'
        # callers keep being answered meanwhile (parsing is bounded by max_body_bytes, and the
        # number of instances by the service's cap before any of them is checked).
        data = bytes(body)  # one copy, for the check and the upstream
        if len(data) > INLINE_CHECK_BYTES:
            try:
                verdict = await self.checker.check(asyncio.get_running_loop(), data, route)
            except BrokenProcessPool:
                return await _problem(send, 503, "Check unavailable", "Checking this request failed. Try again.")
        else:
            verdict = refusal(data, route)
        if not isinstance(verdict, int):
            status, title, detail, extra = verdict
            return await _problem(send, status, title, detail, **extra)
        if not route.upstreams and route.scale_to_zero:
            warm = await self._cold_start(route)
            if warm is None:
                return await _problem(
                    send,
                    503,
                    "Starting up",
                    f"{route.key} was scaled to zero when idle and no instance was ready within "
                    f"{self.cold_start_seconds:g} s. Try again shortly.",
                    retry_after=5,
                )
            route = warm
        prediction_id = new_id()
        status, answer = await self._forward(send, route, data, prediction_id)
        # Only the caller's answer is logged; a shadow copy never is.
        self.predictions.record(route, prediction_id, status, time.perf_counter() - started, verdict, data, answer)
        if shadow is not None and status == 200:
            self._copy(shadow, data, answer, consumer)
        return status

    # -------------------------------------------------------------- shadow copies

    def _copy(self, route: Route, body: bytes, answer: bytes, consumer: str) -> None:
        """Copy a request stable answered (the caller has its answer already) to the shadow
        candidate `route` in the background, or count it dropped when this gateway has its
        fill of copies in flight: a copy never waits, so it never delays anyone's answer."""
        series = contract.series(route.environment, route.service, route.major, route.version, consumer)
        if self._shadows_in_flight >= self.shadow_concurrency:
            self.metrics.shadow(series, contract.SHADOW_DROPPED)
            return
        self._shadows_in_flight += 1
        task = asyncio.create_task(self._shadow(route, series, body, answer))
        self._shadow_tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._shadow_done)

    def _shadow_done(self, task: asyncio.Task) -> None:
        self._shadows_in_flight -= 1
        self._shadow_tasks.discard(task)

    async def _shadow(self, route: Route, series: str, body: bytes, answer: bytes) -> None:
        """Send one copy to a candidate instance and compare its predictions with the ones the
        caller got from stable. No retry on another instance: a copy is a sample."""
        started = time.perf_counter()
        status, data = 0, b""
        upstream = _choose(route, set())
        if upstream is not None:
            upstream.outstanding += 1
            try:
                async with asyncio.timeout(self.upstream_timeout.total):
                    status, data = await self._post(upstream, body)
            except TimeoutError:
                pass
            except (aiohttp.ClientError, upstream_client.UpstreamError):
                upstream.healthy = False
            except Exception:  # a copy must never take anything else down with it
                log.exception("a shadow copy to %s failed", upstream.url)
            finally:
                upstream.outstanding -= 1
        seconds = time.perf_counter() - started
        try:
            candidate = json.loads(data)["predictions"] if status == 200 else None
        except (ValueError, KeyError, TypeError):
            candidate = None
        if candidate is None:
            self.metrics.shadow(series, contract.SHADOW_ERRORS, seconds)
            return
        try:
            stable = json.loads(answer)["predictions"]
        except (ValueError, KeyError, TypeError):
            return  # not an answer to compare with (a model server always sends "predictions")
        if contract.predictions_agree(stable, candidate):
            self.metrics.shadow(series, contract.SHADOW_AGREE, seconds)
            return
        self.metrics.shadow(series, contract.SHADOW_DISAGREE, seconds)
        try:
            instances = json.loads(body)["instances"]
        except (ValueError, KeyError, TypeError):
            instances = None
        example = contract.ShadowExample(ts=time.time(), instances=instances, stable=stable, candidate=candidate)
        self.metrics.shadow_example(route.deployment, example)

    async def _cold_start(self, route: Route) -> Route | None:
        """Hold a request for a route with no instances until a snapshot brings one (the held
        request, in this gateway's load report, is what asks the autoscaler for it)."""
        started = time.perf_counter()
        with self.load.holding(route.key):
            warm = await self.state.wait_for_instances(route.key, self.cold_start_seconds)
        if self.exposition is not None:
            self.exposition.cold_start(route, time.perf_counter() - started, warm is not None)
        return warm

    async def _forward(self, send, route: Route, body: bytes, prediction_id: str) -> tuple[int, bytes | None]:
        """Send the prediction to an instance and its answer to the caller: (status, the
        model's answer if it gave one)."""
        id_header = (b"x-prediction-id", prediction_id.encode())
        tried: set[str] = set()
        # `route` is the version chosen for this request (the stable one or a canary), and a
        # retry stays among its own instances: a candidate's failures must reach its callers
        # and its counts in proportion to its share, not be hidden by answering from stable.
        # Only a connection refused or reset is tried again (on another instance of the same
        # version), as before canaries: an answer that is an error is passed on.
        for _attempt in range(2):
            upstream = _choose(route, tried)
            if upstream is None:
                break
            tried.add(upstream.url)
            upstream.outstanding += 1
            try:
                async with asyncio.timeout(self.upstream_timeout.total):
                    status, data = await self._post(upstream, body)
            except TimeoutError:
                return await _problem(
                    send,
                    504,
                    "Gateway timeout",
                    f"The model did not answer within {self.upstream_timeout.total:g} s.",
                    header=id_header,
                ), None
            except (aiohttp.ClientError, upstream_client.UpstreamError):
                # Connection refused or reset: take it out until it is ready again, and
                # try another instance (a prediction is safe to repeat).
                upstream.healthy = False
                continue
            finally:
                upstream.outstanding -= 1
            if status == 200:
                # The model server's answer is a JSON object: the id goes in as its last member.
                if data.endswith(b"}") and len(data) > 2:
                    data = b'%s,"prediction_id":"%s"}' % (data[:-1], id_header[1])
                await _send(send, 200, [*route.ok_headers, id_header], data)
                return 200, data
            detail = _upstream_error(data)
            # The version that answered, as on a success (a canary's failures say they are its own).
            answered = (id_header, (b"x-model-version", route.version.encode()))
            if status in (400, 422):
                return await _problem(send, 422, "The model refused the input", detail, header=answered), data
            return await _problem(send, 502, "The model failed", detail, header=answered), data
        detail = f"No instance of {route.key} is ready right now. Try again shortly."
        return await _problem(send, 503, "No instance available", detail, retry_after=2, header=id_header), None


def _choose(route: Route, tried: set[str]) -> Upstream | None:
    best = None
    for upstream in route.upstreams:
        if upstream.healthy and upstream.url not in tried and (best is None or upstream.outstanding < best.outstanding):
            best = upstream
    return best


def _upstream_error(data: bytes) -> str:
    try:
        return str(json.loads(data).get("error", ""))[:500]
    except (ValueError, AttributeError):
        return ""


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _header_bytes(scope: dict, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _bearer(scope: dict) -> bytes | None:
    """The bearer token; b"" for 'Bearer' with nothing after it; None without a bearer header."""
    for key, value in scope["headers"]:
        if key == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


def _token_shape_problem(token: bytes) -> str | None:
    """Why a refused token with the portal's prefix cannot be one (cut short when copied, most
    often); None when it has a token's shape (then it is unknown, revoked or expired)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) - len(TOKEN_PREFIX) == TOKEN_BODY_LENGTH:
        return None
    return (
        f"This is not a whole Portal token: it should be ptl_ followed by {TOKEN_BODY_LENGTH} characters "
        f"(this one has {len(token) - len(TOKEN_PREFIX)}); copy it again or create a new one."
    )


async def _send(send, status: int, headers: list, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _problem(
    send,
    status: int,
    title: str,
    detail: str,
    *,
    auth: bool = False,
    error: str = "",
    retry_after: int | None = None,
    header: tuple[bytes, bytes] | tuple[tuple[bytes, bytes], ...] | None = None,
    **extra: Any,
) -> int:
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}).encode()
    headers = list(PROBLEM)
    if header:
        headers.extend(header if isinstance(header[0], tuple) else [header])
    if auth:
        value = 'Bearer realm="portal"' + (f', error="{error}"' if error else "")
        headers.append((b"www-authenticate", value.encode()))
    if retry_after:
        headers.append((b"retry-after", str(retry_after).encode()))
    await _send(send, status, headers, body)
    return status


async def _too_many(send, refused: Refusal) -> int:
    """429 for a grant's rate limit or daily quota, saying which and when to come back, with
    the RateLimit-* fields of the IETF draft (limit, none remaining, seconds to reset)."""
    title = "Rate limit exceeded" if refused.kind == RATE else "Daily quota used up"
    body = json.dumps(
        {
            "type": "about:blank",
            "title": title,
            "status": 429,
            "detail": refused.detail,
            "limit": refused.kind,
            "retry_after": refused.retry_after,
        }
    ).encode()
    retry = str(refused.retry_after).encode()
    headers = [
        *PROBLEM,
        (b"retry-after", retry),
        (b"ratelimit-limit", b"%d" % refused.limit),
        (b"ratelimit-remaining", b"0"),
        (b"ratelimit-reset", retry),
    ]
    await _send(send, 429, headers, body)
    return 429


def from_environment() -> Gateway:
    return Gateway(
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        max_body_bytes=int(os.environ.get("GATEWAY_MAX_BODY_BYTES", 10 * 1024 * 1024)),
        upstream_timeout=float(os.environ.get("GATEWAY_UPSTREAM_TIMEOUT", 30)),
        stale_after=float(os.environ.get("GATEWAY_STALE_SECONDS", 30)),
        log_buffer=int(os.environ.get("GATEWAY_LOG_BUFFER", 20_000)),
        metrics_token=os.environ.get("GATEWAY_METRICS_TOKEN", ""),
        check_processes=int(os.environ.get("GATEWAY_CHECK_PROCESSES", 1)),
        cold_start_seconds=float(os.environ.get("GATEWAY_COLD_START_SECONDS", 30)),
        shadow_concurrency=int(os.environ.get("GATEWAY_SHADOW_CONCURRENCY", 8)),
    )


app = from_environment()
