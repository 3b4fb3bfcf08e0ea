"""Large prediction bodies are parsed and checked in another process.

Python's JSON decoder and the compiled schema checks run in C without releasing the GIL, so
a thread does not help: parsing a body of a million instances holds every other request,
and the routing poller, for as long as it takes. Bodies over INLINE_CHECK_BYTES go to a small
pool of checker processes instead; only the verdict comes back (a refusal, or the number of
instances), and the gateway forwards the bytes it already holds.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import fastjsonschema

from gateway.state import Route, _compile


@dataclass
class _Checked:
    """What `check` needs of a route, rebuilt in the checker process."""

    service: str
    max_instances: int
    input_schema: Any
    fast_validate: Any
    field_errors = Route.field_errors


@functools.lru_cache(maxsize=256)
def _route(service: str, max_instances: int, schema_text: str) -> _Checked:
    schema = json.loads(schema_text)
    return _Checked(service=service, max_instances=max_instances, input_schema=schema, fast_validate=_compile(schema))


def _ready() -> bool:
    return True


def check(body: bytes, service: str, max_instances: int, schema_text: str):
    """In a checker process: the gateway's verdict on `body` (see refusal)."""
    return refusal(body, _route(service, max_instances, schema_text))


class Checker:
    def __init__(self, processes: int = 1):
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver: workers start from a clean process, not a copy of a running event loop.
            context = multiprocessing.get_context("forkserver")
            self._pool = ProcessPoolExecutor(max_workers=self.processes, mp_context=context)
        return self._pool

    def warm(self) -> None:
        """Start the checker processes now, not on the first large request."""
        for _ in range(self.processes):
            self.pool().submit(_ready)

    async def check(self, loop, body: bytes, route: Route):
        try:
            return await loop.run_in_executor(
                self.pool(), check, body, route.service, route.max_instances, route.schema_text
            )
        except BrokenProcessPool:  # a checker died (killed, out of memory): a new pool next time
            self._pool = None
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# ---------------------------------------------------------------- the check itself


def _not_json(name: str):
    raise ValueError(f"{name} is not JSON")


# json.loads(body, parse_constant=...) would build a new decoder for every request.
_DECODER = json.JSONDecoder(parse_constant=_not_json)


def _parse(body: bytes) -> Any:
    """json.loads(body, parse_constant=_not_json), with one decoder for every request: the
    same encoding detection (UTF-8, -16 or -32, with or without a BOM), the same errors."""
    return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))


def refusal(body: bytes, route: Route) -> tuple[int, str, str, dict] | int:
    """Why a prediction request's body is refused (status, title, detail, extra fields), or
    the number of instances when it may go to the model. Synchronous: large bodies run it in
    a thread."""
    try:
        payload = _parse(body)
    except RecursionError:
        return 400, "Malformed JSON", "The body is nested too deeply.", {}
    except ValueError as exc:
        return 400, "Malformed JSON", f"The body is not JSON: {exc}.", {}
    instances = payload.get("instances") if isinstance(payload, dict) else None
    if not isinstance(instances, list) or not instances:
        return 400, "Bad request", 'Send a JSON object {"instances": [...]} with at least one instance.', {}
    if len(instances) > route.max_instances:
        return (
            413,
            "Too many instances",
            f"'{route.service}' takes at most {route.max_instances} instances per request; this one has "
            f"{len(instances)}. Send them in several requests.",
            {"max_instances": route.max_instances},
        )
    try:
        for instance in instances:
            route.fast_validate(instance)
    except (fastjsonschema.JsonSchemaException, ArithmeticError, RecursionError, ValueError, TypeError):
        try:
            errors = route.field_errors(instances)
        except (ArithmeticError, RecursionError, ValueError, TypeError):
            errors = []
        if not errors:
            return 400, "Bad request", "The instances cannot be checked against the input schema.", {}
        return 422, "Invalid input", "; ".join(_describe(e) for e in errors), {"errors": errors}
    return len(instances)


def _describe(error: dict) -> str:
    where = f" field {error['field']}" if error["field"] else ""
    return f"instance {error['instance']}{where}: {error['message']}"
