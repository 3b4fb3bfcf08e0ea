"""The parts the gateway's tests drive it with: an ASGI server in a thread, a snapshot writer that
writes Redis the way the control plane does, real model-server processes, and the cast of tokens.

Nothing here imports Django or a portal app: the gateway is tested as the data plane runs it,
with Redis and model servers as its only neighbours.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis

from core.net import http_request
from gateway import contract
from gateway.app import Gateway
from scripts.stack import redis_start, spawn, stop, wait_until
from tests.ports import port as free_port

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# ---------------------------------------------------------------- the cast

# Raw tokens as a caller sends them; the snapshot holds only their digests.
CONSUMER = "ptl_carol_consumer_invoke"
OUTSIDER = "ptl_oscar_outsider_invoke"
CAST = {
    CONSUMER: contract.Token(user=1, username="carol-consumer", expires=None),
    OUTSIDER: contract.Token(user=2, username="oscar-outsider", expires=None),
}

IRIS_INPUT = {
    "type": "object",
    "properties": {name: {"type": "number"} for name in ("sepal_length", "sepal_width", "petal_length", "petal_width")},
    "required": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
    "additionalProperties": False,
}
IRIS_OUTPUT = {"type": "string", "enum": ["setosa", "versicolor"]}
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VERSICOLOR = {"sepal_length": 7.0, "sepal_width": 3.2, "petal_length": 4.7, "petal_width": 1.4}

# The toy model the model server serves: deterministic, instant, and able to answer rows
# without names too (the draft 2020-12 route sends arrays).
IRIS_MODEL = """\
def predict(instances):
    return [_one(i) for i in instances]


def _one(instance):
    if isinstance(instance, dict):
        return "setosa" if instance.get("petal_length", 0) < 2.5 else "versicolor"
    return len(instance)
"""


def iris_route(instances: Iterable[str], **changes: Any) -> contract.Route:
    """Route development/iris/v1 at version 1.2.0, as the control plane would publish it."""
    route = contract.Route(
        deployment=7,
        service="iris",
        environment="development",
        major=1,
        version="1.2.0",
        instances=tuple(instances),
        input_schema=IRIS_INPUT,
        output_schema=IRIS_OUTPUT,
    )
    return dataclasses.replace(route, **changes)


def digest(raw_token: str) -> str:
    return hashlib.sha256(raw_token.encode()).hexdigest()


def dead_url() -> str:
    """The address of an instance that refuses connections (nothing listens on the port)."""
    return f"http://127.0.0.1:{free_port()}"


def eventually(check: Callable[[], T], *, timeout: float = 10, what: str = "the condition") -> T:
    """Poll until check() returns something truthy and return it; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s (last: {result!r})")
        time.sleep(0.02)


# ---------------------------------------------------------------- Redis and the snapshot


class RedisServer:
    """A Redis server of a test's own (no persistence), to stop and start again on its port."""

    def __init__(self, port: int, workdir: Path):
        self.port, self.workdir = port, workdir
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = redis_start(self.port, self.workdir, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


class SnapshotWriter:
    """Writes a snapshot exactly as deployments/publish.py does: the three hashes rewritten
    whole in one MULTI, with the generation bumped in the same transaction."""

    def __init__(self, redis_url: str):
        self.client = redis.Redis.from_url(redis_url)

    def publish(
        self,
        routes: Iterable[contract.Route] = (),
        tokens: Mapping[str, contract.Token] | None = None,
        grants: Mapping[str, contract.Grant] | None = None,
    ) -> int:
        """Write the snapshot and return its generation. `tokens` maps raw tokens to holders."""
        return self.write(
            {
                contract.KEY_ROUTES: {route.key: route.encode() for route in routes},
                contract.KEY_TOKENS: {digest(raw): token.encode() for raw, token in (tokens or {}).items()},
                contract.KEY_GRANTS: {service: grant.encode() for service, grant in (grants or {}).items()},
            }
        )

    def write(self, hashes: Mapping[str, Mapping[str, str]]) -> int:
        """Rewrite the given hashes with these fields and encoded values (even ones no payload
        type would produce), bump the generation, and return it."""
        with self.client.pipeline(transaction=True) as pipe:
            for key, values in hashes.items():
                pipe.delete(key)
                if values:
                    pipe.hset(key, mapping=values)
            pipe.incr(contract.KEY_GENERATION)
            return int(pipe.execute()[-1])

    def clear(self) -> None:
        """An empty snapshot, no metrics and no heartbeats. The generation counter stays: it
        only ever grows, as in production, so "loaded generation N" always means this write."""
        metrics = list(self.client.scan_iter(f"{contract.METRICS_KEY_PREFIX}*"))
        self.client.delete(*contract.SNAPSHOT_KEYS, contract.KEY_GATEWAYS, *metrics)

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------- ASGI


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:  # what a failed assertion shows
        return f"<{self.status} {self.headers.get('content-type')} {self.body[:300]!r}>"


def assert_problem(response: Response, status: int, title: str | None = None) -> dict:
    """The response is an RFC 9457 problem of `status` (and `title`); returns its body."""
    assert response.status == status, response
    assert response.headers["content-type"] == "application/problem+json", response
    problem = response.json()
    assert problem["status"] == status and problem["detail"], problem
    if title is not None:
        assert problem["title"] == title, problem
    return problem


class BodyRead(AssertionError):
    """The app read a body it was expected to refuse unread."""


class AsgiServer:
    """Runs an ASGI app the way uvicorn does, in-process: one event loop in a background thread,
    started and stopped through the lifespan protocol, so the app's background tasks (state
    poller, upstream health checks, metrics flusher) run between requests as in production."""

    def __init__(self, app: Any, *, timeout: float = 20):
        self.app = app
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="asgi-loop", daemon=True)
        self._lifespan_task: asyncio.Task | None = None
        self._to_app: asyncio.Queue | None = None
        self._from_app: asyncio.Queue | None = None
        self.running = False

    def _run(self, coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(self.timeout)

    # -------------------------------------------------------------- lifespan

    def start(self) -> None:
        self._thread.start()
        self._run(self._lifespan("lifespan.startup"))
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            try:
                self._run(self._lifespan("lifespan.shutdown"))
            finally:
                self._run(self._cancel_leftovers())
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()

    async def _lifespan(self, event: str) -> None:
        if self._lifespan_task is None:
            self._to_app, self._from_app = asyncio.Queue(), asyncio.Queue()
            scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
            self._lifespan_task = asyncio.create_task(self.app(scope, self._to_app.get, self._from_app.put))
        await self._to_app.put({"type": event})
        answer = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait({answer, self._lifespan_task}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            self._lifespan_task.result()  # raises what the app raised
            raise AssertionError(f"the app's lifespan ended without answering {event}")
        assert answer.result() == {"type": f"{event}.complete"}, answer.result()
        if event == "lifespan.shutdown":
            await self._lifespan_task

    async def _cancel_leftovers(self) -> None:
        # The gateway cancels its background tasks without waiting for them; let them finish
        # cancelling here so no task is destroyed while pending when the loop closes.
        # A cancellation can be lost (caught inside a library call as it lands): cancel what is
        # still running again, a few times, and name what never ends.
        tasks = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
        for _ in range(20):
            for task in tasks:
                task.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=0.5) if tasks else (set(), set())
            if not tasks:
                break
        else:
            raise AssertionError(f"tasks that ignore cancellation: {[t.get_coro() for t in tasks]}")
        await self.loop.shutdown_asyncgens()

    # -------------------------------------------------------------- http

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        body: bytes | None = None,
        chunks: Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        unread: bool = False,
    ) -> Response:
        """One HTTP request through the app.

        `json` or `body` is sent with a Content-Length, as a client with the whole body does;
        `chunks` (any iterable, even an endless one) is streamed without one, as a chunked
        upload is. With `unread`, the app must answer without reading the body at all.
        """
        if json is not None:
            body = _json_dumps(json)
        sent = {k.lower(): v for k, v in (headers or {}).items()}
        if body is not None:
            sent.setdefault("content-type", "application/json")
            sent.setdefault("content-length", str(len(body)))
            chunks = [body]
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        path, _, query = path.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in sent.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8001),
            "state": {},
        }
        return self._run(self._http(scope, iter(chunks or [b""]), unread))

    async def _http(self, scope: dict, chunks, unread: bool) -> Response:
        pending = next(chunks, b"")
        finished = False
        started: dict | None = None
        body = bytearray()

        async def receive() -> dict:
            nonlocal pending, finished
            if unread:
                raise BodyRead("the gateway read a body it should have refused from its headers alone")
            if finished:
                # As a server does once the whole request has arrived: the next event is the
                # client going away.
                await asyncio.sleep(0)
                return {"type": "http.disconnect"}
            chunk = pending
            pending = next(chunks, None)
            finished = pending is None
            await asyncio.sleep(0)  # a real server yields to the loop between reads
            return {"type": "http.request", "body": chunk, "more_body": not finished}

        async def send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                assert started is None, "two response starts"
                started = message
            elif message["type"] == "http.response.body":
                assert started is not None, "a body before the response start"
                body.extend(message.get("body", b""))

        await self.app(scope, receive, send)
        assert started is not None, "the app answered nothing"
        headers: dict[str, str] = {}
        for name, value in started.get("headers", []):
            key = name.decode("latin-1").lower()
            headers[key] = f"{headers[key]}, {value.decode('latin-1')}" if key in headers else value.decode("latin-1")
        return Response(status=started["status"], headers=headers, body=bytes(body))


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


class GatewayHarness(AsgiServer):
    """A started gateway (`app` is the gateway.app.Gateway) with a way to wait for a snapshot."""

    def wait_for_generation(self, generation: int, timeout: float = 5) -> None:
        eventually(
            lambda: self.app.state.snapshot.generation >= generation,
            timeout=timeout,
            what=f"the gateway loading generation {generation}",
        )


class Gateways:
    """Starts gateways (through the lifespan) with test-sized options, and stops them all."""

    DEFAULTS = {"poll_interval": 0.05, "stale_after": 30.0, "upstream_timeout": 10.0, "max_body_bytes": 1024 * 1024}

    def __init__(self, redis_url: str):
        self.redis_url = redis_url
        self.started: list[GatewayHarness] = []

    def start(self, **options: Any) -> GatewayHarness:
        harness = GatewayHarness(Gateway(**{"redis_url": self.redis_url, **self.DEFAULTS, **options}))
        self.started.append(harness)
        harness.start()
        return harness

    def wait_for_generation(self, generation: int) -> None:
        """Until every running gateway on the session's Redis has loaded `generation`."""
        for harness in self.started:
            if harness.running and harness.app.state.redis_url == self.redis_url:
                harness.wait_for_generation(generation)

    def stop_all(self) -> None:
        for harness in self.started:
            harness.stop()


# ---------------------------------------------------------------- model servers


@dataclass
class ModelServer:
    url: str
    port: int
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        # Nothing to drain: a model blocked in a slow predict() need not be waited for long.
        stop(self.proc, timeout=2)


def ready(url: str) -> bool:
    try:
        return http_request(url, "/health/ready", timeout=1)[0] == 200
    except OSError:
        return False


def start_model_server(
    artifact: Path, *, version: str, log: Path, port: int | None = None, socket: Path | None = None
) -> ModelServer:
    """`python -m modelserver` serving a pyfunc artifact, started as the control plane starts one
    (its own process group, tied to this process's life), once it answers ready: on a TCP
    port, or on a unix socket."""
    port = 0 if socket else port or free_port()
    url = f"unix:{socket}" if socket else f"http://127.0.0.1:{port}"
    listen = ["--uds", str(socket)] if socket else ["--port", str(port)]
    with log.open("ab") as out:
        proc = spawn(
            [
                sys.executable,
                "-m",
                "modelserver",
                "--artifact",
                str(artifact),
                "--flavor",
                "pyfunc",
                *listen,
                "--version",
                version,
                "--drain-seconds",
                "1",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: ready(url) or proc.poll() is not None, 30, f"model server {artifact.name}")
    except RuntimeError:
        stop(proc)
        raise
    if proc.poll() is not None:
        raise RuntimeError(f"model server {artifact.name} exited: {log.read_text()}")
    return ModelServer(url=url, port=port, proc=proc, log=log)
