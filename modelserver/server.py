"""An ASGI app that serves one model version: liveness, readiness and predictions.

Deliberately framework-free (one small app under uvicorn with uvloop and httptools): a
model server does three things and should add as little as possible to each request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from modelserver.flavors import ModelError, Predictor, load

log = logging.getLogger("modelserver")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_BODY_BYTES = 16 * 1024 * 1024
_JSON = [(b"content-type", b"application/json")]


class ModelServer:
    def __init__(
        self,
        *,
        artifact: str,
        flavor: str,
        version: str = "",
        field_order: Sequence[str] | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ):
        self.artifact, self.flavor, self.version = artifact, flavor, version
        self.field_order = list(field_order) if field_order else None
        self.max_body_bytes = max_body_bytes
        self.predictor: Predictor | None = None
        self.draining = False
        self.in_flight = 0
        self.served = 0

    # -------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/health/live":
            await _respond(send, 200, {"status": "live"})
        elif path == "/health/ready":
            ready = self.predictor is not None and not self.draining
            await _respond(send, 200 if ready else 503, {"status": "ready" if ready else "not ready"})
        elif path == "/predict":
            if method != "POST":
                await _respond(send, 405, {"error": 'Use POST with {"instances": [...]}.'})
                return
            self.in_flight += 1
            try:
                await self._predict(scope, receive, send)
            finally:
                self.in_flight -= 1
        elif path == "/":
            await _respond(send, 200, self.describe())
        else:
            await _respond(send, 404, {"error": f"No such path: {path}"})

    def describe(self) -> dict[str, Any]:
        return {"flavor": self.flavor, "model_version": self.version, "served": self.served, "draining": self.draining}

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    started = time.monotonic()
                    self.predictor = load(self.flavor, self.artifact, field_order=self.field_order)
                    log.info("loaded %s model %s in %.2f s", self.flavor, self.artifact, time.monotonic() - started)
                except Exception as exc:  # noqa: BLE001 - reported to uvicorn, which exits
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.draining = True
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await _respond(send, 413, {"error": f"The request is larger than {self.max_body_bytes} bytes."})
                return
            if not message.get("more_body"):
                break
        try:
            payload = _DECODER.decode(body.decode(json.detect_encoding(body)))
            instances = payload["instances"]
            if not isinstance(instances, list) or not instances:
                raise TypeError
        except NotANumber as exc:
            await _respond(send, 400, {"error": str(exc)})
            return
        except (ValueError, KeyError, TypeError):
            await _respond(send, 400, {"error": 'Send a JSON object {"instances": [...]} with at least one instance.'})
            return
        try:
            predictions = self.predictor.predict(instances)
        except ModelError as exc:
            await _respond(send, 422, {"error": str(exc)})
            return
        except Exception as exc:
            log.exception("prediction failed")
            await _respond(send, 500, {"error": f"The model failed: {type(exc).__name__}: {exc}"})
            return
        self.served += 1
        await _respond(send, 200, {"predictions": predictions, "model_version": self.version})


class NotANumber(ValueError):
    pass


def _not_a_number(name: str) -> None:
    raise NotANumber(f"{name} is not a number JSON allows: send finite numbers (or null).")


# One decoder for every request (json.loads with parse_constant would build one each time).
_DECODER = json.JSONDecoder(parse_constant=_not_a_number)


async def _respond(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON, (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})
