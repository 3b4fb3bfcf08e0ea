"""django-auth-ldap's settings, from the LDAP_ environment variables (README: "Single sign-on
and directory groups"). portal/settings.py calls this only when LDAP_SERVER_URI is set, so
that a portal without a directory never needs python-ldap (it builds from source).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

# Said on the sign-in page (and by the token sign-in) when a directory sign-in failed because
# the directory could not be used.
DIRECTORY_UNREACHABLE = (
    "The company directory cannot be reached; directory accounts cannot sign in right now. Try again in a few "
    "minutes, and tell IT if it persists. Local accounts (such as portal admins) can still sign in with their "
    "local password."
)

GROUP_TYPES = (
    "groupOfNames",
    "nestedGroupOfNames",
    "groupOfUniqueNames",
    "posixGroup",
    "activeDirectory",
    "nestedActiveDirectory",
)


def ldap_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The AUTH_LDAP_* settings for this environment; ImproperlyConfigured says what to fix."""
    try:
        import ldap
        from django_auth_ldap import config
    except ImportError:
        raise ImproperlyConfigured(
            "LDAP_SERVER_URI is set but django-auth-ldap is not installed: pip install -r requirements-ldap.txt "
            "(python-ldap builds from source and needs gcc, libldap2-dev and libsasl2-dev)."
        ) from None
    user_base = env.get("LDAP_USER_SEARCH_BASE", "").strip()
    if not user_base:
        raise ImproperlyConfigured(
            "LDAP_SERVER_URI is set but LDAP_USER_SEARCH_BASE is not: give the DN people are found under, "
            "e.g. ou=people,dc=example,dc=com."
        )
    group_type = env.get("LDAP_GROUP_TYPE", "groupOfNames").strip()
    group_types = {
        "groupOfNames": config.GroupOfNamesType,
        "nestedGroupOfNames": config.NestedGroupOfNamesType,
        "groupOfUniqueNames": config.GroupOfUniqueNamesType,
        "posixGroup": config.PosixGroupType,
        "activeDirectory": config.ActiveDirectoryGroupType,
        "nestedActiveDirectory": config.NestedActiveDirectoryGroupType,
    }
    if group_type not in group_types:
        raise ImproperlyConfigured(f"LDAP_GROUP_TYPE={group_type!r} is unknown; use one of {', '.join(GROUP_TYPES)}.")
    raw_timeout = env.get("LDAP_TIMEOUT_SECONDS", "5").strip() or "5"
    try:
        timeout = int(raw_timeout)
    except ValueError:
        raise ImproperlyConfigured(f"LDAP_TIMEOUT_SECONDS={raw_timeout!r} is not a whole number.") from None
    start_tls = env.get("LDAP_START_TLS", "").strip().lower()
    if start_tls not in {"", "0", "1", "true", "false", "yes", "no", "on", "off"}:
        raise ImproperlyConfigured(f"LDAP_START_TLS={start_tls!r} is not a boolean; use 1/0, true/false.")

    values: dict[str, Any] = {
        "AUTH_LDAP_SERVER_URI": env["LDAP_SERVER_URI"].strip(),
        "AUTH_LDAP_BIND_DN": env.get("LDAP_BIND_DN", ""),
        "AUTH_LDAP_BIND_PASSWORD": env.get("LDAP_BIND_PASSWORD", ""),
        "AUTH_LDAP_START_TLS": start_tls in {"1", "true", "yes", "on"},
        "AUTH_LDAP_USER_SEARCH": config.LDAPSearch(
            user_base, ldap.SCOPE_SUBTREE, env.get("LDAP_USER_FILTER") or "(uid=%(user)s)"
        ),
        "AUTH_LDAP_USER_ATTR_MAP": {"first_name": "givenName", "last_name": "sn", "email": "mail"},
        "AUTH_LDAP_ALWAYS_UPDATE_USER": True,
        # The portal's own auth groups are its teams' roles: the directory's groups are never
        # mirrored into them, only mapped through LDAP_TEAM_MAP.
        "AUTH_LDAP_MIRROR_GROUPS": False,
        "AUTH_LDAP_FIND_GROUP_PERMS": False,
        "AUTH_LDAP_CACHE_TIMEOUT": 0,
        "AUTH_LDAP_CONNECTION_OPTIONS": {ldap.OPT_NETWORK_TIMEOUT: timeout, ldap.OPT_TIMEOUT: timeout},
    }
    group_base = env.get("LDAP_GROUP_SEARCH_BASE", "").strip()
    if group_base:
        values["AUTH_LDAP_GROUP_SEARCH"] = config.LDAPSearch(
            group_base, ldap.SCOPE_SUBTREE, env.get("LDAP_GROUP_FILTER") or "(objectClass=*)"
        )
        values["AUTH_LDAP_GROUP_TYPE"] = group_types[group_type]()
    return values
