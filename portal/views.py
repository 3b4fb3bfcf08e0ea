"""Project-level pages: the dashboard, the health check and the error pages."""

from __future__ import annotations

import redis
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from accounts import selectors as account_selectors
from deployments import selectors as deployment_selectors
from monitoring import selectors as monitoring_selectors


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "portal/dashboard.html",
        {
            "memberships": account_selectors.memberships_of(user=request.user),
            "activity": account_selectors.activity_recent(user=request.user, limit=15),
            "active_tokens": account_selectors.token_list(user=request.user).active().count(),
            "pending_approvals": deployment_selectors.approval_queue(user=request.user).count(),
            "recent_deployments": deployment_selectors.deployment_list(user=request.user)[:6],
            "firing": monitoring_selectors.firing_rules(user=request.user)[:10],
            "alerts": monitoring_selectors.alert_events_visible(user=request.user)[:8],
        },
    )


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Liveness of the control plane's dependencies, for `make run`, load balancers and people."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "not ok", reported by kind
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
        client.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"error: {type(exc).__name__}"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if healthy else "degraded", **checks}, status=200 if healthy else 503)


def error_404(request: HttpRequest, exception=None):
    return _error_page(request, 404, "Not found", exception)


def error_403(request: HttpRequest, exception=None):
    return _error_page(request, 403, "Not allowed", exception)


def error_400(request: HttpRequest, exception=None):
    return _error_page(request, 400, "Bad request", exception)


def error_500(request: HttpRequest):
    return _error_page(request, 500, "Something went wrong", None)


def _error_page(request: HttpRequest, status: int, title: str, exception):
    message = ""
    # Messages raised by selectors are written for people and reveal nothing the person
    # could not see anyway ("No team named 'x' that you can see."). The URL resolver's own
    # 404 carries a dict of tried patterns, which is never shown.
    if status in (403, 404) and exception is not None and exception.args and isinstance(exception.args[0], str):
        message = exception.args[0]
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": message or title + "."}, status=status)
    return render(request, "error.html", {"status": status, "title": title, "message": message}, status=status)
