"""The OpenAPI schema says what the API answers when it refuses, not only when it succeeds.

Every error of the API has one shape (core.rest.exception_handler): a `detail` a person can
act on, `errors` (field -> messages) for validation errors, and whatever extra keys a service
error defines (`breaking_changes`, `used`, ...). drf-spectacular documents the successful
answers from each view's annotations; the hook below adds the refusals each operation can
give, so that clients (and schemathesis, tests/portal/test_api_schema_fuzz.py) know every
status code to expect.
"""

from __future__ import annotations

from typing import Any, TypeVar

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers

from core.rest import StrictSerializer

# A team, model or service name (core.errors.check_name), and a version as the portal takes
# it (registry.semver: MAJOR.MINOR.PATCH, each part at most nine digits, no leading zeros).
NAME_PATTERN = r"^[a-z0-9_-]+$"
VERSION_PATTERN = r"^(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})$"


class NameField(serializers.CharField):
    """A team, model or service name. The services check it (with their own message); the
    schema states the pattern."""

    schema_pattern = NAME_PATTERN


class VersionField(serializers.CharField):
    """A model version number. registry.semver checks it; the schema states the pattern."""

    schema_pattern = VERSION_PATTERN

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 40)
        super().__init__(**kwargs)


SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
SHA256_OR_BLANK_PATTERN = r"^([0-9a-fA-F]{64})?$"

_F = TypeVar("_F", bound=serializers.Field)


def documented(field: _F, **schema: Any) -> _F:
    """`field`, with constraints that a service checks (with its own message) stated in the
    schema too, e.g. documented(serializers.IntegerField(), minimum=1)."""
    field.schema_extra = schema
    return field


# Objects named in paths by a team, model or service name (the other {name}s are
# environments, whose names the admin chooses).
_NAMED_BY_SLUG = ("/api/v1/models/{name}", "/api/v1/services/{name}", "/api/v1/teams/{team}")


def _path_pattern(path: str, parameter: str) -> str | None:
    if parameter == "version" and "/versions/{version}" in path:
        return VERSION_PATTERN
    if any(path.startswith(prefix) and "{" + parameter + "}" in prefix for prefix in _NAMED_BY_SLUG):
        return NAME_PATTERN
    return None


class PortalAutoSchema(AutoSchema):
    """drf-spectacular's schema, with what the API enforces beyond what DRF fields say:
    StrictSerializer refuses unknown fields, name and version patterns, non-empty
    dictionaries; and PATCH bodies are validated whole (no view validates partially), so
    their required fields are required in the schema too."""

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if pattern := getattr(field, "schema_pattern", None):
            schema["pattern"] = pattern
        schema.update(getattr(field, "schema_extra", None) or {})
        if isinstance(field, serializers.DictField) and not field.allow_empty and direction == "request":
            schema["minProperties"] = 1
        return schema

    def _get_parameters(self):
        """Query parameters documented by hand take the constraints of the view's `Query`
        serializer, the one that validates them (bounds, lengths, choices, required)."""
        parameters = super()._get_parameters()
        for parameter in parameters:
            if parameter.get("in") == "path" and (pattern := _path_pattern(self.path, parameter.get("name", ""))):
                parameter["schema"] = {**parameter.get("schema", {}), "pattern": pattern}
        query = getattr(self.view, "Query", None)
        if not (isinstance(query, type) and issubclass(query, serializers.Serializer)):
            return parameters
        fields = query().fields
        for parameter in parameters:
            field = fields.get(parameter.get("name")) if parameter.get("in") == "query" else None
            if field is None:
                continue
            schema = self._map_serializer_field(field, "request")
            self._insert_field_validators(field, schema)
            schema.pop("description", None)
            parameter["schema"] = schema
            if field.required:
                parameter["required"] = True
        return parameters

    def _map_basic_serializer(self, serializer, direction):
        if getattr(serializer, "partial", False):
            serializer.partial = False  # a copy made for PATCH (see the class's docstring)
        schema = super()._map_basic_serializer(serializer, direction)
        if "__doc__" not in vars(type(serializer)) or not type(serializer).__doc__:
            schema.pop("description", None)  # not StrictSerializer's own docstring on every input
        if direction == "request" and isinstance(serializer, StrictSerializer):
            schema["additionalProperties"] = False
        return schema


PROBLEM = {
    "type": "object",
    "description": "Why the request was refused.",
    "properties": {
        "detail": {"type": "string", "description": "What was wrong and what to do about it."},
        "errors": {
            "description": "For invalid input: each field's messages (field -> [messages]).",
        },
    },
    "required": ["detail"],
    "additionalProperties": True,
}

_REASONS = {
    "400": "Invalid input: `detail` says what, `errors` names each field.",
    "401": "No valid credentials: send `Authorization: Bearer <token>` or sign in.",
    "403": "Signed in, but not allowed to do this (or the token lacks the scope).",
    "404": "No such object, or one you may not see.",
    "409": "Not possible in the object's current state (or it conflicts with an existing one).",
    "410": "The upload expired or was aborted: start a new one.",
    "411": "A chunk without Content-Length.",
    "413": "The body is larger than the portal accepts, or than your artifact quota allows.",
    "415": "The body's Content-Type is not one this operation reads.",
    "429": "Too many attempts: wait for Retry-After seconds.",
}

_WRITES = {"post", "put", "patch", "delete"}


def _codes(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    """The refusals an operation can answer with, from what it takes."""
    codes = ["401", "403"]
    body = operation.get("requestBody")
    params = operation.get("parameters") or []
    if body or params:
        codes.append("400")
    # 404: an object in the path, one a body names (a team, a model), or a page past the end.
    if "{" in path or body or any(p.get("name") == "page" for p in params):
        codes.append("404")
    if method in _WRITES:
        codes.append("409")
    if body:
        codes.append("415")
    media = set((body or {}).get("content", {}))
    if media & {"multipart/form-data", "application/octet-stream"} or path.startswith("/api/v1/uploads"):
        codes.append("413")
    if path.startswith("/api/v1/uploads/{"):
        codes += ["410", "411"] if method == "put" else ["410"]
    if path == "/api/v1/auth/token":
        codes.append("429")
    return codes


def document_errors(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"])."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM
    ref = {"$ref": "#/components/schemas/Problem"}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for code in _codes(path, method, operation):
                if code in responses:
                    continue
                responses[code] = {"description": _REASONS[code], "content": {"application/json": {"schema": ref}}}
    return result
