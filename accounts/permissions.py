"""Who may do what in accounts: team roles, their object permissions, token scopes."""

from __future__ import annotations

from django.conf import settings
from rest_framework.permissions import SAFE_METHODS, BasePermission

from accounts.models import ROLE_RANK, ApiToken, Role, TokenScope

# Object permissions each team role holds on the team itself. Later objects owned by a
# team (models, services) declare their own table and grant it to the same role groups.
TEAM_ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    Role.OWNER: ("view_team", "change_team", "delete_team", "manage_members", "create_model"),
    Role.MAINTAINER: ("view_team", "manage_members", "create_model"),
    Role.MEMBER: ("view_team", "create_model"),
    Role.VIEWER: ("view_team",),
}


def manageable_roles(*, can_manage: bool, is_owner_or_admin: bool) -> tuple[str, ...]:
    """The roles a person may give, change or take away in a team (mirrors the services' rule)."""
    if is_owner_or_admin:
        return tuple(Role.values)
    if can_manage:
        return (Role.MEMBER, Role.VIEWER)
    return ()


def role_is_at_least(role: str | None, minimum: str) -> bool:
    return role is not None and ROLE_RANK[Role(role)] >= ROLE_RANK[Role(minimum)]


class TokenScopePermission(BasePermission):
    """A token may read with the `read` scope and change things with the `write` scope. A view
    may accept other scopes for a method (`token_scopes = {"POST": ("write", "invoke")}`: a
    consumer's invoke token may send ground truth).

    Session-authenticated requests are not limited by scopes.
    """

    message = "This token lacks the scope this request needs."

    def has_permission(self, request, view) -> bool:
        token = request.auth
        if not isinstance(token, ApiToken):
            return True
        default = TokenScope.READ if request.method in SAFE_METHODS else TokenScope.WRITE
        accepted = tuple(getattr(view, "token_scopes", {}).get(request.method, (default,)))
        if any(scope in token.scopes for scope in accepted):
            return True
        wanted = " or ".join(f"'{scope}'" for scope in accepted)
        self.message = (
            f"This token has the scopes {', '.join(token.scopes) or '(none)'}; "
            f"{request.method} requests need the {wanted} scope. Create a token with it."
        )
        return False


class IsAdmin(BasePermission):
    message = "Only portal admins may do this."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.is_superuser)


def may_create_teams(user) -> bool:
    """Whether `user` may create teams (TEAM_CREATORS: anyone, or approvers and admins)."""
    if user.is_service_account:
        return False
    return settings.TEAM_CREATORS == "anyone" or user.is_approver or user.is_superuser
