"""Token format and digests.

A token reads `ptl_<8 id chars>_<40 secret chars>`. The first 12 characters are the
visible prefix shown in lists; the whole token has 48 random characters from a 62-letter
alphabet (about 285 bits). Only the sha256 digest of the whole token is stored, so no
stored value, neither prefix nor digest, can be used as a token.
"""

from __future__ import annotations

import hashlib
import secrets
import string

TOKEN_PREFIX = "ptl_"  # noqa: S105 (a public marker, not a secret)
_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 8
_SECRET_LENGTH = 40


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def token_generate() -> tuple[str, str, str]:
    """Return (token, visible prefix, digest) for a new token."""
    visible = f"{TOKEN_PREFIX}{_random(_ID_LENGTH)}"
    token = f"{visible}_{_random(_SECRET_LENGTH)}"
    return token, visible, token_digest(token)


def token_digest(token: str) -> str:
    # A plain sha256 suffices: the token has far more entropy than any password, so a
    # slow or salted hash adds nothing, and the gateway must verify it in microseconds.
    return hashlib.sha256(token.encode()).hexdigest()


# What follows the prefix: the id, an underscore, the secret.
TOKEN_BODY_LENGTH = _ID_LENGTH + 1 + _SECRET_LENGTH


def token_looks_valid(token: str) -> bool:
    return (
        token.startswith(TOKEN_PREFIX)
        and len(token) == len(TOKEN_PREFIX) + TOKEN_BODY_LENGTH
        and token[len(TOKEN_PREFIX) + _ID_LENGTH] == "_"
    )


def token_shape_problem(token: str) -> str | None:
    """Why a presented string cannot be a token (None when it has a token's shape).

    A string with the prefix but not the shape is most often a token cut short or run into
    other text when it was copied, so the message says that, and how long a whole one is.
    """
    if token_looks_valid(token):
        return None
    if not token.startswith(TOKEN_PREFIX):
        return f"This is not a Portal API token. Tokens start with '{TOKEN_PREFIX}'."
    return (
        f"This is not a whole Portal token: it should be {TOKEN_PREFIX} followed by {TOKEN_BODY_LENGTH} characters "
        f"(this one has {len(token) - len(TOKEN_PREFIX)}); copy it again or create a new one."
    )
