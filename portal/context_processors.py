"""Template context every page gets."""

from __future__ import annotations

from django.conf import settings

from core import sandbox
from deployments.models import Environment


def sandbox_status(request) -> dict:
    """Whether model code can be sandboxed here and, where not, what admins allowed instead:
    every signed-in page says so (registering and deploying both run model code)."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    reason = sandbox.unavailable_reason(settings.SANDBOX_BWRAP)
    if not reason:
        return {"sandbox_missing": ""}
    return {
        "sandbox_missing": reason,
        "unsandboxed_check_allowed": settings.ALLOW_UNSANDBOXED_MODEL_CHECK,
        "unsandboxed_environments": list(
            Environment.objects.filter(allow_unsandboxed=True).values_list("name", flat=True)
        ),
    }
