"""Reads for accounts. Each applies the caller's permissions; views never query directly."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Q, QuerySet
from guardian.shortcuts import get_objects_for_user

from accounts.models import ApiToken, AuditEvent, Membership, Team, User
from core.errors import InvalidInput, NotAllowed, NotFound


def team_list(*, user: User) -> QuerySet[Team]:
    teams = get_objects_for_user(user, "accounts.view_team", klass=Team, accept_global_perms=False)
    return teams.annotate(member_count=Count("memberships", distinct=True)).order_by("name")


def team_get(*, user: User, name: str) -> Team:
    """The team named `name`, if the user may see it. Unknown and invisible teams look alike."""
    team = team_list(user=user).filter(name=name).first()
    if team is None:
        raise NotFound(f"No team named '{name}' that you can see.")
    return team


def membership_list(*, team: Team) -> QuerySet[Membership]:
    return Membership.objects.filter(team=team).select_related("user").order_by("user__username")


def memberships_of(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("team").order_by("team__name")


def team_role(*, team: Team, user: User) -> str | None:
    return Membership.objects.filter(team=team, user=user).values_list("role", flat=True).first()


def team_by_name(*, name: str, field: str = "team") -> Team:
    """Any team by its exact name (for grants, which may name a team the caller is not in)."""
    team = Team.objects.filter(name=name).first()
    if team is None:
        raise InvalidInput(f"No team named '{name}'.", field=field)
    return team


def user_get(*, username: str, field: str = "username") -> User:
    user = User.objects.filter(username=username).first()
    if user is None:
        raise InvalidInput(
            f"No user named '{username}'. Check the spelling, or ask an admin to create it.", field=field
        )
    return user


def token_list(*, user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user).order_by("-created_at")


def token_get(*, user: User, token_id: int) -> ApiToken:
    token = ApiToken.objects.select_related("user").filter(pk=token_id).first()
    if token is None or (token.user_id != user.pk and not user.is_superuser):
        raise NotFound(f"No token with id {token_id} among yours.")
    return token


@dataclass(frozen=True)
class AuditFilters:
    actor: str = ""
    action: str = ""
    team: str = ""
    target: str = ""
    since: datetime | None = None
    until: datetime | None = None


def audit_list(*, user: User, filters: AuditFilters | None = None) -> QuerySet[AuditEvent]:
    """The whole audit log, filtered; admins only."""
    if not user.is_superuser:
        raise NotAllowed("Only portal admins may read the audit log.")
    events = AuditEvent.objects.all()
    f = filters or AuditFilters()
    if f.actor:
        events = events.filter(actor_username__iexact=f.actor)
    if f.action:
        events = events.filter(Q(action=f.action) | Q(action__startswith=f.action + "."))
    if f.team:
        events = events.filter(team_name__iexact=f.team)
    if f.target:
        events = events.filter(Q(target_repr__icontains=f.target) | Q(target_id=f.target))
    if f.since:
        events = events.filter(created_at__gte=f.since)
    if f.until:
        events = events.filter(created_at__lt=f.until)
    return events.order_by("-created_at", "-id")


def activity_recent(*, user: User, limit: int = 20) -> list[AuditEvent]:
    """What happened lately that concerns the user: their own actions and their teams'."""
    team_ids = list(Membership.objects.filter(user=user).values_list("team_id", flat=True))
    events = AuditEvent.objects.filter(Q(actor=user) | Q(team_id__in=team_ids))
    return list(events.order_by("-created_at", "-id")[:limit])
