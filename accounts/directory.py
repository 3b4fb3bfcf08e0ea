"""Sign-in with the company directory (LDAP or Active Directory), through django-auth-ldap.

Enabled by settings only when LDAP_SERVER_URI is set (the package needs python-ldap, which
is built from source: `pip install -r requirements-ldap.txt`). The directory checks the
password; each sign-in then refreshes the memberships and approver role that LDAP_TEAM_MAP
and LDAP_APPROVER_GROUPS give the person's directory groups (accounts.services).

A directory that cannot be reached is noted on the request (`directory_unreachable`), so
the sign-in page says so, while local accounts (admins) still sign in with their local
password through the next backend.
"""

from __future__ import annotations

import logging

import ldap
from django.conf import settings
from django.dispatch import receiver
from django_auth_ldap.backend import LDAPBackend, ldap_error

from accounts import services
from accounts.models import AuditAction, ExternalIdentity, IdentitySource

logger = logging.getLogger(__name__)

# What "cannot be reached" means; any other LDAP error is a configuration or directory fault,
# shown the same way to the person signing in, and logged in full for the admins.
UNREACHABLE = (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.CONNECT_ERROR)


@receiver(ldap_error)
def _note_directory_error(sender, context, user, request, exception, **kwargs):
    if request is not None:
        request.directory_unreachable = True
    level = logging.WARNING if isinstance(exception, UNREACHABLE) else logging.ERROR
    # The exception says what the server answered; it holds no password.
    logger.log(level, "The directory could not be used %s: %s", context, type(exception).__name__)


class DirectoryBackend(LDAPBackend):
    def get_or_build_user(self, username, ldap_user):
        user, built = super().get_or_build_user(username, ldap_user)
        ldap_user.portal_built = built  # audited once the sign-in succeeds and the user is saved
        if built:
            return user, built
        if user.is_service_account:
            raise ldap_user.AuthenticationFailed("a service account cannot sign in with the directory")
        linked = ExternalIdentity.objects.filter(user=user, source=IdentitySource.LDAP).exists()
        if not linked and user.has_usable_password():
            # A local account with a password that the directory never signed in: the same
            # name in the directory is not proof it is the same person (a local admin named
            # like a directory entry would be taken over). Its local password still works.
            logger.warning(
                "Directory sign-in as %r refused: a local account with a password has that name. "
                "Remove its password (set it unusable) to let the directory account use it.",
                username,
            )
            raise ldap_user.AuthenticationFailed("local account with that username")
        return user, built

    def authenticate_ldap_user(self, ldap_user, password):
        user = super().authenticate_ldap_user(ldap_user, password)
        if user is None:
            return None
        if getattr(ldap_user, "portal_built", False):
            services.audit_event_record(
                actor=None,
                actor_username=f"({IdentitySource.LDAP.label})",
                action=AuditAction.USER_CREATE,
                target=user,
                data={"source": IdentitySource.LDAP, "dn": ldap_user.dn},
            )
        identity, _ = ExternalIdentity.objects.get_or_create(
            user=user, source=IdentitySource.LDAP, issuer="", subject=user.username.lower()
        )
        try:
            groups = sorted(ldap_user.group_names)
        except ldap.LDAPError as exc:
            # Signed in but the groups cannot be read: leave the memberships as they were.
            logger.warning("The directory's groups of %r could not be read: %s", user.username, type(exc).__name__)
            return user
        services.directory_memberships_sync(
            user=user,
            source=IdentitySource.LDAP,
            groups=groups,
            rules=settings.LDAP_TEAM_MAP,
            approver_groups=settings.LDAP_APPROVER_GROUPS,
            identity=identity,
        )
        return user
