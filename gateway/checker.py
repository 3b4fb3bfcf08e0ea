"""Large prediction bodies are parsed and checked in another process.

Python's JSON decoder and the compiled schema checks run in C without releasing the GIL, so
a thread does not help: parsing a body of a million instances holds every other request,
and the routing poller, for as long as it takes. Bodies over INLINE_CHECK_BYTES go to a small
pool of checker processes instead; only the verdict comes back (a refusal, or the number of
instances), and the gateway forwards the bytes it already holds.
"""

from __future__ import annotations

import difflib
import functools
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import fastjsonschema
from jsonschema import ValidationError
from referencing import Registry

from gateway.state import LinearValidator, Route, _compile


@dataclass
class _Checked:
    """What `check` needs of a route, rebuilt in the checker process."""

    service: str
    max_instances: int
    input_schema: Any
    fast_validate: Any
    schema_text: str = ""


@functools.lru_cache(maxsize=256)
def _route(service: str, max_instances: int, schema_text: str) -> _Checked:
    schema = json.loads(schema_text)
    return _Checked(
        service=service,
        max_instances=max_instances,
        input_schema=schema,
        fast_validate=_compile(schema),
        schema_text=schema_text,
    )


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
            errors = field_errors(route, instances)
        except (ArithmeticError, RecursionError, ValueError, TypeError):
            errors = []
        if not errors:
            return 400, "Bad request", "The instances cannot be checked against the input schema.", {}
        return 422, "Invalid input", "; ".join(_describe(e) for e in errors), {"errors": errors}
    return len(instances)


def _describe(error: dict) -> str:
    where = "" if error["field"] == WHOLE_INSTANCE else f" field {error['field']}"
    return f"instance {error['instance']}{where}: {error['message']}"


# ---------------------------------------------------------------- what failed, field by field
#
# Only a refused body gets here (the compiled check failed), so the work below, a full
# validation with every error and a look at the fields that were sent, costs nothing to a
# caller whose input is fine.

WHOLE_INSTANCE = "$"  # `field` of an error about the instance itself (an array of values, say)
MAX_ERRORS = 20


@functools.lru_cache(maxsize=64)
def _reference_validator(schema_text: str) -> Any:
    """The validator that lists every error (jsonschema's, RE2 for patterns), once per schema."""
    return LinearValidator(json.loads(schema_text), registry=Registry())


def _field(path: list[Any] | tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path) or WHOLE_INSTANCE


def _join(path: list[Any], key: str) -> str:
    return ".".join([*(str(p) for p in path), key])


def _values(n: int) -> str:
    return f"{n} value{'s' if n != 1 else ''}"


def _length(schema: dict) -> str:
    low, high = schema.get("minItems"), schema.get("maxItems")
    if low is not None and low == high:
        return f"exactly {_values(low)}"
    if low is not None and high is not None:
        return f"{low} to {_values(high)}"
    return f"at most {_values(high)}" if high is not None else f"at least {_values(low)}"


def _missing(error: ValidationError) -> str:
    """The property a `required` error is about (jsonschema says it only in its message)."""
    for name in error.validator_value:
        if isinstance(error.instance, dict) and name not in error.instance and error.message.startswith(repr(name)):
            return name
    return ""


def _unknown(obj: dict, schema: Any) -> list[str]:
    """Fields sent that an object schema with listed properties does not know."""
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return []
    known = schema["properties"]
    return [key for key in obj if key not in known]


def _unknown_error(n: int, path: list[Any], key: str, obj: dict, schema: dict) -> dict:
    # Suggest first the required fields that were not sent: a typo leaves one missing.
    known = list(schema["properties"])
    missing = [k for k in schema.get("required") or [] if k in known and k not in obj]
    close = difflib.get_close_matches(key, missing, n=1, cutoff=0.6) or difflib.get_close_matches(
        key, [k for k in known if k not in obj], n=1, cutoff=0.6
    )
    hint = f"; did you mean {close[0]}?" if close else f" (its inputs: {', '.join(known[:20])})"
    return {"instance": n, "field": _join(path, key), "message": f"{key} is not an input of this model{hint}"}


def _explain(n: int, error: ValidationError) -> list[dict]:
    path = list(error.absolute_path)
    if error.validator == "required" and (name := _missing(error)):
        return [{"instance": n, "field": _join(path, name), "message": f"{name} is required and was not sent"}]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        # One error per field sent that the schema does not allow (named by _unknown when
        # the schema lists its properties).
        extra = [k for k in error.instance if k not in (error.schema.get("properties") or {})]
        return [
            {"instance": n, "field": _join(path, k), "message": f"{k} is not an input of this model"} for k in extra
        ]
    if error.validator in ("minItems", "maxItems") and isinstance(error.instance, list):
        what = "each instance" if not path else f"{_field(path)}"
        return [
            {
                "instance": n,
                "field": _field(path),
                "message": f"{what} takes {_length(error.schema)}; this one has {len(error.instance)}",
            }
        ]
    return [{"instance": n, "field": _field(path), "message": error.message}]


def field_errors(route: Route | _Checked, instances: list[Any], limit: int = MAX_ERRORS) -> list[dict]:
    """Every failing field of every instance (up to `limit`), each with the path of the
    field (`$` for the instance itself): fields that were sent but are not inputs (with
    the closest input's name), required fields not sent, arrays of the wrong length."""
    schema = route.input_schema
    validator = (
        _reference_validator(route.schema_text) if route.schema_text else LinearValidator(schema, registry=Registry())
    )
    errors: list[dict] = []
    for n, instance in enumerate(instances):
        found = []
        for error in validator.iter_errors(instance):
            found.append(error)
            if len(found) >= limit:
                break
        if not found:
            continue
        # Fields the schema does not know, at the top of the instance and in every object an
        # error was found in: the likeliest cause of a "required" error is a misspelt name.
        unknown: dict[str, dict] = {}
        places = [([], instance, schema)] + [
            (list(e.absolute_path), e.instance, e.schema) for e in found if isinstance(e.instance, dict)
        ]
        for path, obj, sub in places:
            if isinstance(obj, dict):
                for key in _unknown(obj, sub):
                    error = _unknown_error(n, path, key, obj, sub)
                    unknown.setdefault(error["field"], error)
        explained = list(unknown.values())
        for error in found:
            for item in _explain(n, error):
                if item["field"] not in unknown:
                    explained.append(item)
        errors.extend(explained)
        if len(errors) >= limit:
            return errors[:limit]
    return errors
