"""Errors raised by services and selectors, shared by the API, the HTML views and commands.

Each carries a message written for the person who made the request and the HTTP status
the API answers with. Services raise them; views and API views translate them.
"""

from __future__ import annotations

import re
from typing import Any

from django.http import Http404


class PortalError(Exception):
    status_code = 400

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class InvalidInput(PortalError):
    status_code = 400

    def __init__(self, message: str, *, field: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message, extra=extra)
        self.field = field


class NotAllowed(PortalError):
    status_code = 403


class NotFound(PortalError):
    status_code = 404


class Conflict(PortalError):
    status_code = 409


class PayloadTooLarge(PortalError):
    status_code = 413


class Gone(PortalError):
    status_code = 410


class RangeNotSatisfiable(PortalError):
    status_code = 416


class Unavailable(PortalError):
    """The portal cannot do this here now (a missing sandbox, a backend that does not answer)."""

    status_code = 503


def or_404(call, **kwargs):
    """Call a selector for an HTML view: its NotFound (with its message) becomes Http404."""
    try:
        return call(**kwargs)
    except NotFound as exc:
        raise Http404(exc.message) from None


def check_name(name: str, *, what: str, max_length: int, field: str = "name") -> None:
    """A name used in URLs (a team, model or service): a lowercase slug of bounded length."""
    if not re.fullmatch(r"[a-z0-9_-]+", name or ""):
        raise InvalidInput(
            f"A {what} name may contain only lowercase letters, digits, hyphens and underscores.", field=field
        )
    if len(name) > max_length:
        raise InvalidInput(f"A {what} name may be at most {max_length} characters.", field=field)
