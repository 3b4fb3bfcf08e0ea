"""One sign-in throttle for every way in with a password: the sign-in page, the admin's, and
the token sign-in (`POST /api/v1/auth/token`, what `portal login` uses).

Attempts are counted in the shared Redis cache per client address (LOGIN_THROTTLE_RATE) and
per username (LOGIN_USER_THROTTLE_RATE), whichever way they come in, so switching from the
page to the API buys a guesser nothing. Every attempt counts, a right password too: the
answer must not tell a guesser when they are close.
"""

from __future__ import annotations

import hashlib

from django.core.cache import caches
from rest_framework.throttling import SimpleRateThrottle

from accounts.models import AuditAction
from accounts.services import audit_event_record


class _SharedThrottle(SimpleRateThrottle):
    @property
    def cache(self):  # shared by every web process (looked up when used, not at import)
        return caches["shared"]


class SignInAddressThrottle(_SharedThrottle):
    """Slow down one address guessing any account's password."""

    scope = "login"
    message = "Too many sign-in attempts from your address."

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class SignInUsernameThrottle(_SharedThrottle):
    """Slow down guessing one account's password from many addresses."""

    scope = "login_user"
    message = "Too many sign-in attempts for this account."

    def get_cache_key(self, request, view):
        username = sign_in_username(request)
        if not username:
            return None
        return self.cache_format % {"scope": self.scope, "ident": hashlib.sha256(username.encode()).hexdigest()}


def sign_in_username(request) -> str:
    data = getattr(request, "data", None)  # a DRF request's parsed body, else the form's
    source = data if isinstance(data, dict) else request.POST
    username = source.get("username")
    return username[:150] if isinstance(username, str) else ""


def sign_in_refusal(request) -> tuple[str, int] | None:
    """None if this sign-in attempt may go on (it is counted), else a message and the seconds
    to wait. A refusal is audited."""
    for throttle in (SignInAddressThrottle(), SignInUsernameThrottle()):
        if not throttle.allow_request(request, None):
            wait = max(1, round(throttle.wait() or 1))
            username = sign_in_username(request)
            audit_event_record(
                actor=None,
                actor_username=username,
                action=AuditAction.LOGIN_THROTTLED,
                data={"username": username, "limit": throttle.scope},
            )
            return f"{throttle.message} Try again in {wait} seconds.", wait
    return None
