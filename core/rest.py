"""Shared pieces of the REST API: errors for people, pagination, strict serializers."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import InvalidInput, PortalError


class Pagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 200


def _flatten(errors: Any, prefix: str = "") -> list[str]:
    if isinstance(errors, dict):
        out: list[str] = []
        for key, value in errors.items():
            name = key if key != "non_field_errors" else ""
            out += _flatten(value, f"{prefix}.{name}" if prefix and name else (name or prefix))
        return out
    if isinstance(errors, list):
        out = []
        for item in errors:
            out += _flatten(item, prefix)
        return out
    return [f"{prefix}: {errors}" if prefix else str(errors)]


def _what_to_send(context: dict[str, Any]) -> str:
    """The hint of a 415: the body types the endpoint reads (JSON almost everywhere)."""
    request = context.get("request")
    types = [parser.media_type for parser in getattr(request, "parsers", None) or []]
    if not types or types == ["application/json"]:
        return "Send JSON: Content-Type: application/json."
    others = [t for t in types if t != "application/json"]
    if "application/json" in types:
        return "Send JSON (Content-Type: application/json), or " + " or ".join(others) + "."
    return "Send " + " or ".join(types) + "."


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Answer every error as JSON with a `detail` a person can act on.

    Validation errors also carry `errors` (field → messages), so clients can point at
    the field; service errors carry any extra keys they define (e.g. `breaking_changes`).
    """
    if isinstance(exc, PortalError):
        body: dict[str, Any] = {"detail": exc.message, **exc.extra}
        if isinstance(exc, InvalidInput) and exc.field:
            body["errors"] = {exc.field: [exc.message]}
        return Response(body, status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)

    if isinstance(exc, exceptions.ValidationError):
        messages = _flatten(exc.detail)
        response = Response(
            {"detail": "Invalid input: " + "; ".join(messages), "errors": exc.detail},
            status=status.HTTP_400_BAD_REQUEST,
        )
        return response
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return Response({"detail": f"{exc.detail} {_what_to_send(context)}"}, status=exc.status_code)
    if isinstance(exc, exceptions.ParseError):
        return Response(
            {"detail": f"{exc.detail} Send a JSON object with 'Content-Type: application/json'."},
            status=status.HTTP_400_BAD_REQUEST,
        )
    return drf_exception_handler(exc, context)


class StrictSerializer(serializers.Serializer):
    """A serializer that refuses fields it does not know, instead of silently ignoring them.

    A typo such as `"rol": "owner"` would otherwise be dropped and the request would
    appear to succeed with a default.
    """

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                allowed = ", ".join(sorted(name for name, f in self.fields.items() if not f.read_only))
                raise serializers.ValidationError(
                    {name: [f"Unknown field. Allowed fields: {allowed}."] for name in unknown}
                )
        return super().to_internal_value(data)
