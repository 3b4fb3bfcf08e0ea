"""Where the current action comes from (IP, user agent, surface), for the audit log.

Services take the acting user explicitly; the origin of the request is the same for every
service a request calls, so the middleware records it once per request in a context
variable instead of threading the request through every service signature. Commands and
tasks set their own source with `origin_scope`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Origin:
    source: str = ""
    ip: str | None = None
    user_agent: str = ""


_current: contextvars.ContextVar[Origin] = contextvars.ContextVar("portal_origin", default=Origin())  # noqa: B039 (frozen)


def current_origin() -> Origin:
    return _current.get()


@contextlib.contextmanager
def origin_scope(origin: Origin) -> Iterator[None]:
    token = _current.set(origin)
    try:
        yield
    finally:
        _current.reset(token)


def origin_from_request(request) -> Origin:
    path = request.path_info
    if path.startswith("/api/"):
        source = "api"
    elif path.startswith("/admin/"):
        source = "admin"
    else:
        source = "web"
    ip = request.META.get("REMOTE_ADDR") or None
    return Origin(source=source, ip=ip, user_agent=request.META.get("HTTP_USER_AGENT", "")[:300])
