from __future__ import annotations

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from accounts.services import TokenRejected, token_authenticate


class BearerTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <token>` on every API call (RFC 6750)."""

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != b"bearer":
            return None
        if len(parts) != 2:
            request._bearer_error = "invalid_request"
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header. Send 'Authorization: Bearer <token>'."
            )
        try:
            raw = parts[1].decode("ascii")
        except UnicodeDecodeError:
            request._bearer_error = "invalid_token"
            raise exceptions.AuthenticationFailed("This is not a Portal API token.") from None
        try:
            token = token_authenticate(raw=raw)
        except TokenRejected as exc:
            request._bearer_error = "invalid_token"
            raise exceptions.AuthenticationFailed(str(exc)) from None
        return token.user, token

    def authenticate_header(self, request) -> str:
        error = getattr(request, "_bearer_error", None)
        return f'Bearer realm="portal", error="{error}"' if error else 'Bearer realm="portal"'
