"""Single sign-on with OpenID Connect (Authlib's client): the provider's client, and finding or
creating the portal user a provider's claims stand for.

The flow is the authorization code flow with PKCE and a nonce; Authlib checks the state, the
ID token's signature (the provider's published keys), issuer, audience, expiry and nonce.
The claims of the ID token are completed by the userinfo endpoint's, when the provider has
one and it answers for the same subject.

Who a sign-in is: the (issuer, sub) pair linked before, if any. Else an existing account
matched by OIDC_MATCH_CLAIM: `email` matches a user's email only when the provider says the
email is verified (an unverified email would let anyone who can type an address into their
provider profile take over that person's account); another claim name matches the username.
Else a new user, when OIDC_CREATE_USERS allows it. Service accounts are never matched.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any

from authlib.integrations.django_client import OAuth
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts import services
from accounts.mapping import normalize_groups
from accounts.models import AuditAction, ExternalIdentity, IdentitySource, User

logger = logging.getLogger(__name__)

_clients: dict[tuple[str, str], Any] = {}


class SignInRefused(Exception):
    """A provider's sign-in that the portal does not accept; the message is for the person."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def oidc_client():
    """The Authlib client for the configured provider. Its discovery document is fetched on
    first use and kept (one per issuer and client id, so tests can point at their own)."""
    key = (settings.OIDC_ISSUER, settings.OIDC_CLIENT_ID)
    client = _clients.get(key)
    if client is None:
        oauth = OAuth()
        client = oauth.register(
            name="oidc",
            client_id=settings.OIDC_CLIENT_ID,
            client_secret=settings.OIDC_CLIENT_SECRET or None,
            server_metadata_url=f"{settings.OIDC_ISSUER}/.well-known/openid-configuration",
            client_kwargs={
                "scope": settings.OIDC_SCOPES,
                "code_challenge_method": "S256",
                "default_timeout": settings.OIDC_TIMEOUT_SECONDS,  # every call to the provider
                **({} if settings.OIDC_CLIENT_SECRET else {"token_endpoint_auth_method": "none"}),
            },
        )
        _clients[key] = client
    return client


def oidc_claims(client, token: dict[str, Any]) -> dict[str, Any]:
    """The ID token's claims (already checked by Authlib), completed by the userinfo endpoint's."""
    claims = dict(token.get("userinfo") or {})
    if not claims.get("sub"):
        raise SignInRefused(
            f"{settings.OIDC_PROVIDER_NAME} sent no ID token with a subject. Ask IT to check the setup."
        )
    if client.load_server_metadata().get("userinfo_endpoint"):
        extra = dict(client.userinfo(token=token))
        # The userinfo answer counts only for the subject of the checked ID token (OIDC Core 5.3.2).
        if extra.get("sub") == claims["sub"]:
            claims = {**extra, **{k: v for k, v in claims.items() if k not in extra}}
    return claims


def _verified(value: object) -> bool:
    # Some providers send the flag as a string.
    return value is True or (isinstance(value, str) and value.lower() == "true")


_USERNAME_BAD = re.compile(r"[^\w.@+-]")


def _free_username(wanted: str, subject: str) -> str:
    base = (
        _USERNAME_BAD.sub("-", wanted.strip())[:140].strip("-")
        or "user-" + hashlib.sha256(subject.encode()).hexdigest()[:8]
    )
    name, n = base, 1
    while User.objects.filter(username__iexact=name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _match_existing(claims: dict[str, Any], issuer: str) -> User | None:
    match_claim = settings.OIDC_MATCH_CLAIM
    if not match_claim:
        return None
    value = claims.get(match_claim)
    if not isinstance(value, str) or not value.strip():
        return None
    people = User.objects.filter(is_service_account=False)
    if match_claim == "email":
        if not _verified(claims.get("email_verified")):
            # Never link by an email the provider has not verified: make a new account instead
            # (the username gets a suffix if taken).
            return None
        found = list(people.filter(email__iexact=value.strip())[:2])
        if len(found) > 1:
            raise SignInRefused(
                f"More than one portal account has the email {value}. Ask a portal admin to keep it on one account."
            )
    else:
        found = list(people.filter(username__iexact=value.strip())[:1])
    if not found:
        return None
    user = found[0]
    if ExternalIdentity.objects.filter(user=user, source=IdentitySource.OIDC, issuer=issuer).exists():
        # That account is already someone else's at this provider.
        raise SignInRefused(
            f"The portal account that matches your {match_claim} is linked to another {settings.OIDC_PROVIDER_NAME} "
            "account. Ask a portal admin."
        )
    return user


@transaction.atomic
def oidc_sign_in(*, claims: dict[str, Any]) -> User:
    """The portal user these checked claims stand for (linked, matched or created), with the
    memberships and approver role the mapped groups give. Raises SignInRefused."""
    issuer = settings.OIDC_ISSUER
    subject = str(claims["sub"])
    identity = (
        ExternalIdentity.objects.select_related("user")
        .filter(source=IdentitySource.OIDC, issuer=issuer, subject=subject)
        .first()
    )
    if identity is not None:
        user = identity.user
    else:
        user = _match_existing(claims, issuer)
        if user is None:
            if not settings.OIDC_CREATE_USERS:
                raise SignInRefused(
                    "You have no portal account yet, and this portal does not create them at sign-in. "
                    "Ask a portal admin to create one for you."
                )
            user = _user_create(claims, subject)
        try:
            with transaction.atomic():
                identity = ExternalIdentity.objects.create(
                    user=user, source=IdentitySource.OIDC, issuer=issuer, subject=subject
                )
        except IntegrityError:  # the same person signing in twice at once
            raise SignInRefused("You are already being signed in from another window. Try again.") from None
    if user.is_service_account:
        raise SignInRefused("Service accounts cannot sign in to the web UI; they use API tokens.")
    if not user.is_active:
        raise SignInRefused("Your portal account is deactivated. Ask a portal admin.")
    email = claims.get("email")
    if isinstance(email, str) and _verified(claims.get("email_verified")) and email != user.email:
        user.email = email[:254]
        user.save(update_fields=["email"])
    services.directory_memberships_sync(
        user=user,
        source=IdentitySource.OIDC,
        groups=normalize_groups(claims.get(settings.OIDC_GROUPS_CLAIM)),
        rules=settings.OIDC_TEAM_MAP,
        approver_groups=settings.OIDC_APPROVER_GROUPS,
        identity=identity,
    )
    return user


def _user_create(claims: dict[str, Any], subject: str) -> User:
    email = claims.get("email") if isinstance(claims.get("email"), str) else ""
    wanted = claims.get(settings.OIDC_USERNAME_CLAIM)
    if not isinstance(wanted, str) or not wanted.strip():
        wanted = email.split("@")[0] if email else ""
    user = User(
        username=_free_username(wanted, subject),
        # Only a verified email is kept: the email match of a later sign-in trusts it.
        email=email[:254] if email and _verified(claims.get("email_verified")) else "",
        first_name=str(claims.get("given_name") or "")[:150],
        last_name=str(claims.get("family_name") or "")[:150],
        last_login=timezone.now(),
    )
    user.set_unusable_password()
    user.save()
    services.audit_event_record(
        actor=None,
        actor_username=f"({IdentitySource.OIDC.label})",
        action=AuditAction.USER_CREATE,
        target=user,
        data={"source": IdentitySource.OIDC, "subject": subject},
    )
    return user
