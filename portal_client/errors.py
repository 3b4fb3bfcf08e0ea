"""Errors the client raises, each with a message for a person and an exit code for scripts."""

from __future__ import annotations

from typing import Any

# Exit codes of the `portal` command; scripts can rely on them.
EXIT_OK = 0
EXIT_REFUSED = 1  # the portal understood the request and said no (bad input, conflict, ...)
EXIT_USAGE = 2  # the command line itself is wrong, or a local file is missing or unreadable
EXIT_AUTH = 3  # not signed in, the token was refused, or not allowed
EXIT_NOT_FOUND = 4  # no such model, version, service, deployment, ... (that you can see)
EXIT_UNREACHABLE = 5  # the portal could not be reached or failed (5xx)
EXIT_DEPLOYMENT_FAILED = 6  # a followed deployment ended failed, rejected, cancelled or rolled back


class PortalClientError(Exception):
    """Something went wrong talking to the portal; `str()` is one line for a person."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str, *, status: int | None = None, body: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body or {}


class Refused(PortalClientError):
    exit_code = EXIT_REFUSED


class InvalidUsage(PortalClientError):
    exit_code = EXIT_USAGE


class NotSignedIn(PortalClientError):
    exit_code = EXIT_AUTH


class Forbidden(PortalClientError):
    exit_code = EXIT_AUTH


class NotFound(PortalClientError):
    exit_code = EXIT_NOT_FOUND


class Unreachable(PortalClientError):
    exit_code = EXIT_UNREACHABLE


class DeploymentFailed(PortalClientError):
    exit_code = EXIT_DEPLOYMENT_FAILED


def error_for(status: int, body: dict[str, Any], *, what: str) -> PortalClientError:
    """The error for an HTTP answer that was not a success."""
    detail = body.get("detail") or body.get("title") or ""
    if isinstance(detail, list):
        detail = "; ".join(str(d) for d in detail)
    detail = " ".join(str(detail).split())  # one line
    if status == 401:
        return NotSignedIn(
            f"The portal refused the token ({detail or 'not signed in'}). Run `portal login`, or set PORTAL_TOKEN.",
            status=status,
            body=body,
        )
    if status == 403:
        return Forbidden(detail or f"You are not allowed to {what}.", status=status, body=body)
    if status == 404:
        return NotFound(detail or f"Not found: {what}.", status=status, body=body)
    if status >= 500:
        return Unreachable(
            f"The portal failed while trying to {what} (HTTP {status}). Try again; if it persists, tell an admin.",
            status=status,
            body=body,
        )
    changes = body.get("breaking_changes") or []
    if changes:
        # Each message names its field; an instance that is an array has none (path "").
        detail += " Breaking: " + "; ".join(str(c.get("message")) for c in changes)
    return Refused(detail or f"The portal refused to {what} (HTTP {status}).", status=status, body=body)
