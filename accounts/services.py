"""Writes for accounts: users, teams, memberships, tokens and the audit log.

Every function takes the acting user explicitly, checks that the actor may do it, and
writes its own audit event in the same transaction as the change.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm

from accounts.mapping import TeamRule, is_approver, teams_for
from accounts.models import (
    ApiToken,
    AuditAction,
    AuditEvent,
    ExternalIdentity,
    IdentitySource,
    Membership,
    Role,
    SignInSettings,
    Team,
    TokenScope,
    User,
)
from accounts.origin import current_origin
from accounts.permissions import TEAM_ROLE_PERMISSIONS, may_create_teams
from accounts.signals import membership_changed, token_changed, user_changed
from accounts.tokens import token_digest, token_generate, token_shape_problem
from core.errors import Conflict, InvalidInput, NotAllowed, check_name

# A token's last-used time is written at most this often, so that a busy client does not
# turn every API call into a database write.
TOKEN_LAST_USED_RESOLUTION = timedelta(seconds=60)

USER_ROLES = ("approver", "admin")

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- audit log


def audit_event_record(
    *,
    actor: User | None,
    action: str,
    target: models.Model | None = None,
    team: Team | None = None,
    data: dict[str, Any] | None = None,
    actor_username: str | None = None,
) -> AuditEvent:
    origin = current_origin()
    return AuditEvent.objects.create(
        actor=actor if actor is not None and actor.pk else None,
        actor_username=actor_username if actor_username is not None else (actor.username if actor else ""),
        action=action,
        target_type=target._meta.model_name if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_repr=str(target)[:200] if target is not None else "",
        team=team,
        team_name=team.name if team else "",
        data=data or {},
        ip=origin.ip,
        user_agent=origin.user_agent,
        source=origin.source,
    )


# ---------------------------------------------------------------- users


def _parse_user_roles(roles: list[str] | None) -> set[str]:
    roles = list(roles or [])
    unknown = sorted(set(roles) - set(USER_ROLES))
    if unknown:
        raise InvalidInput(
            f"Unknown role {', '.join(repr(r) for r in unknown)}. Known roles: {', '.join(USER_ROLES)}.",
            field="roles",
        )
    return set(roles)


def _require_admin(actor: User, what: str) -> None:
    if not actor.is_superuser:
        raise NotAllowed(f"Only portal admins may {what}.")


@transaction.atomic
def user_create(
    *,
    actor: User | None,
    username: str,
    password: str | None = None,
    email: str = "",
    is_service_account: bool = False,
    roles: list[str] | None = None,
) -> User:
    """Create a person or a service account. `actor=None` is the system (seed, migrations)."""
    if actor is not None:
        _require_admin(actor, "create users")
    try:
        UnicodeUsernameValidator()(username)
    except ValidationError:
        raise InvalidInput(
            "A username may contain only letters, digits and @ . + - _ (at most 150 characters).", field="username"
        ) from None
    role_set = _parse_user_roles(roles)
    if is_service_account:
        if password:
            raise InvalidInput("Service accounts have no password; they use API tokens.", field="password")
        if role_set:
            raise InvalidInput("Service accounts cannot be approvers or admins.", field="roles")
    if User.objects.filter(username__iexact=username).exists():
        raise Conflict(f"A user named '{username}' already exists.")

    user = User(
        username=username,
        email=email,
        is_service_account=is_service_account,
        is_approver="approver" in role_set,
        is_superuser="admin" in role_set,
        is_staff="admin" in role_set,
    )
    if password:
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise InvalidInput(" ".join(exc.messages), field="password") from None
        user.set_password(password)
    else:
        user.set_unusable_password()
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:
        raise Conflict(f"A user named '{username}' already exists.") from None
    audit_event_record(
        actor=actor,
        action=AuditAction.USER_CREATE,
        target=user,
        data={"service_account": is_service_account, "roles": sorted(role_set)},
    )
    return user


@transaction.atomic
def user_update(
    *,
    actor: User,
    user: User,
    roles: list[str] | None = None,
    is_active: bool | None = None,
) -> User:
    """Change a user's global roles or switch the account on or off (admins only)."""
    _require_admin(actor, "change users' roles or status")
    changes: dict[str, list[Any]] = {}
    if roles is not None:
        role_set = _parse_user_roles(roles)
        if user.is_service_account and role_set:
            raise InvalidInput("Service accounts cannot be approvers or admins.", field="roles")
        if user == actor and "admin" not in role_set:
            raise Conflict("You cannot remove your own admin role; ask another admin.")
        wanted = {"is_approver": "approver" in role_set, "is_superuser": "admin" in role_set}
        wanted["is_staff"] = wanted["is_superuser"] or (user.is_staff and not user.is_superuser)
        for field, value in wanted.items():
            if getattr(user, field) != value:
                changes[field] = [getattr(user, field), value]
                setattr(user, field, value)
    if is_active is not None and is_active != user.is_active:
        if user == actor and not is_active:
            raise Conflict("You cannot deactivate your own account.")
        changes["is_active"] = [user.is_active, is_active]
        user.is_active = is_active
    if changes:
        user.save(update_fields=list(changes))
        audit_event_record(actor=actor, action=AuditAction.USER_CHANGE, target=user, data={"changes": changes})
        if "is_active" in changes:
            user_changed.send(sender=User, user=user)
    return user


def user_record_admin_change(*, actor: User, user: User, before: dict[str, Any]) -> None:
    """Audit a change to roles or status made through the Django admin's user form."""
    changes = {field: [old, getattr(user, field)] for field, old in before.items() if old != getattr(user, field)}
    if changes:
        audit_event_record(actor=actor, action=AuditAction.USER_CHANGE, target=user, data={"changes": changes})
        user_changed.send(sender=User, user=user)


# ---------------------------------------------------------------- teams and memberships


@transaction.atomic
def team_create(*, actor: User, name: str, description: str = "") -> Team:
    """Create a team, its role groups and their permissions; the creator becomes owner."""
    if actor.is_service_account:
        raise NotAllowed("Service accounts cannot create teams.")
    if not may_create_teams(actor):
        raise NotAllowed("Here only approvers and admins create teams. Ask one of them, or a team's owner to add you.")
    check_name(name, what="team", max_length=64)
    if Team.objects.filter(name=name).exists():
        raise Conflict(f"A team named '{name}' already exists. Ask one of its owners to add you.")

    try:
        with transaction.atomic():
            # Groups named after a team that was renamed or deleted may remain: reuse them
            # empty, so nobody inherits access from the old team.
            groups = {}
            for role in Role.values:
                groups[role], _ = Group.objects.get_or_create(name=f"team:{name}:{role}")
                groups[role].user_set.clear()
            team = Team.objects.create(
                name=name,
                description=description,
                created_by=actor,
                owners_group=groups[Role.OWNER],
                maintainers_group=groups[Role.MAINTAINER],
                members_group=groups[Role.MEMBER],
                viewers_group=groups[Role.VIEWER],
            )
    except IntegrityError:
        raise Conflict(f"A team named '{name}' already exists. Ask one of its owners to add you.") from None
    team_roles_grant(team=team, obj=team, table=TEAM_ROLE_PERMISSIONS)
    audit_event_record(actor=actor, action=AuditAction.TEAM_CREATE, target=team, team=team)
    _membership_write(team=team, user=actor, role=Role.OWNER)
    audit_event_record(
        actor=actor,
        action=AuditAction.MEMBERSHIP_ADD,
        target=actor,
        team=team,
        data={"role": Role.OWNER, "username": actor.username},
    )
    return team


def team_roles_grant(*, team: Team, obj: models.Model, table: dict[str, tuple[str, ...]]) -> None:
    """Give each role group of `team` the object permissions its row of `table` lists on `obj`.

    Teams, models and services all grant this way: a membership change is then a group
    change, and every object the team owns follows it.
    """
    app_label = obj._meta.app_label
    for role, perms in table.items():
        for perm in perms:
            assign_perm(f"{app_label}.{perm}", team.group_for(role), obj)


def _parse_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InvalidInput(f"Unknown role '{role}'. Roles are: {', '.join(Role.values)}.", field="role") from None


def _locked_team(team: Team) -> Team:
    # Serialises membership changes per team, so that two concurrent requests cannot both
    # pass the "at least one owner stays" check and leave the team without an owner.
    return Team.objects.select_for_update().get(pk=team.pk)


def _role_of(team: Team, user: User) -> str | None:
    return Membership.objects.filter(team=team, user=user).values_list("role", flat=True).first()


def membership_manage_check(*, actor: User, team: Team, roles: list[str]) -> None:
    """Raise NotAllowed unless the actor may manage members of `team` in these roles. Views
    call it before looking up the person to add, so that nobody learns who exists."""
    if not actor.has_perm("accounts.manage_members", team):
        raise NotAllowed(f"You need to be an owner or maintainer of team '{team.name}' to manage its members.")
    privileged = {Role.OWNER, Role.MAINTAINER}
    if any(role in privileged for role in roles) and not (actor.is_superuser or _role_of(team, actor) == Role.OWNER):
        raise NotAllowed(f"Only owners of team '{team.name}' may add, change or remove owners and maintainers.")


def _membership_write(
    *, team: Team, user: User, role: str, previous: str | None = None, managed_by: str = ""
) -> Membership:
    # A membership written by a person in the portal (managed_by blank) is theirs from then
    # on: a directory sign-in no longer changes or removes it.
    if previous is not None:
        user.groups.remove(team.group_for(previous))
    user.groups.add(team.group_for(role))
    membership, _ = Membership.objects.update_or_create(
        team=team, user=user, defaults={"role": role, "managed_by": managed_by}
    )
    return membership


def _owner_count(team: Team) -> int:
    return Membership.objects.filter(team=team, role=Role.OWNER).count()


@transaction.atomic
def membership_add(*, actor: User, team: Team, user: User, role: str) -> Membership:
    role = _parse_role(role)
    team = _locked_team(team)
    membership_manage_check(actor=actor, team=team, roles=[role])
    if not user.is_active:
        raise InvalidInput(f"User '{user.username}' is deactivated and cannot join a team.", field="username")
    current = _role_of(team, user)
    if current is not None:
        raise Conflict(
            f"'{user.username}' is already {current} of team '{team.name}'. Change the role instead of adding again."
        )
    membership = _membership_write(team=team, user=user, role=role)
    audit_event_record(
        actor=actor,
        action=AuditAction.MEMBERSHIP_ADD,
        target=user,
        team=team,
        data={"role": role, "username": user.username},
    )
    membership_changed.send(sender=Membership, team=team, user=user)
    return membership


@transaction.atomic
def membership_change_role(*, actor: User, team: Team, user: User, role: str) -> Membership:
    role = _parse_role(role)
    team = _locked_team(team)
    current = _role_of(team, user)
    if current is None:
        # Managers get a precise answer; others learn nothing they could not see anyway.
        membership_manage_check(actor=actor, team=team, roles=[role])
        raise InvalidInput(f"'{user.username}' is not a member of team '{team.name}'.", field="username")
    membership_manage_check(actor=actor, team=team, roles=[role, current])
    if current == role:
        return Membership.objects.get(team=team, user=user)
    if current == Role.OWNER and _owner_count(team) == 1:
        raise Conflict(f"'{user.username}' is the last owner of team '{team.name}'. Make someone else owner first.")
    membership = _membership_write(team=team, user=user, role=role, previous=current)
    audit_event_record(
        actor=actor,
        action=AuditAction.MEMBERSHIP_CHANGE,
        target=user,
        team=team,
        data={"from": current, "to": role, "username": user.username},
    )
    membership_changed.send(sender=Membership, team=team, user=user)
    return membership


@transaction.atomic
def membership_remove(*, actor: User, team: Team, user: User) -> None:
    team = _locked_team(team)
    current = _role_of(team, user)
    leaving = actor.pk == user.pk
    if current is None:
        if not leaving:
            membership_manage_check(actor=actor, team=team, roles=[])
        raise InvalidInput(f"'{user.username}' is not a member of team '{team.name}'.", field="username")
    if not leaving:
        # Anyone may leave a team; removing someone else needs the right to manage them.
        membership_manage_check(actor=actor, team=team, roles=[current])
    if current == Role.OWNER and _owner_count(team) == 1:
        raise Conflict(f"'{user.username}' is the last owner of team '{team.name}'. Make someone else owner first.")
    user.groups.remove(team.group_for(current))
    Membership.objects.filter(team=team, user=user).delete()
    audit_event_record(
        actor=actor,
        action=AuditAction.MEMBERSHIP_REMOVE,
        target=user,
        team=team,
        data={"role": current, "username": user.username},
    )
    membership_changed.send(sender=Membership, team=team, user=user)


# ---------------------------------------------------------------- directory groups


@transaction.atomic
def directory_memberships_sync(
    *,
    user: User,
    source: str,
    groups: list[str],
    rules: tuple[TeamRule, ...],
    approver_groups: frozenset[str],
    identity: ExternalIdentity,
) -> None:
    """Make the memberships `source` made for `user` match the groups it says they are in.

    Called at each sign-in through single sign-on or the directory. Only memberships this
    source made are added, changed or removed; one made by hand in the portal is left as it
    is, even where the groups say otherwise. The approver role likewise: given while in an
    approver group, taken away on leaving it only if the directory gave it. Changes are
    audited as made by the directory (no actor).
    """
    actor_username = f"({IdentitySource(source).label})"
    wanted = teams_for(groups, rules)
    teams = {t.name: t for t in Team.objects.filter(name__in=wanted)}
    for name in sorted(set(wanted) - set(teams)):
        logger.warning("%s maps a group to the team %r, which does not exist; create it in the portal.", source, name)
    current = {m.team.name: m for m in Membership.objects.filter(user=user).select_related("team")}

    def record(action: str, team: Team, data: dict[str, Any]) -> None:
        audit_event_record(
            actor=None,
            actor_username=actor_username,
            action=action,
            target=user,
            team=team,
            data={**data, "username": user.username, "source": source},
        )
        membership_changed.send(sender=Membership, team=team, user=user)

    for name, role in sorted(wanted.items()):
        team = teams.get(name)
        if team is None:
            continue
        held = current.get(name)
        if held is None:
            _membership_write(team=_locked_team(team), user=user, role=role, managed_by=source)
            record(AuditAction.MEMBERSHIP_ADD, team, {"role": role})
        elif held.managed_by == source and held.role != role:
            team = _locked_team(team)
            if held.role == Role.OWNER and _owner_count(team) == 1:
                logger.warning("%s would demote the last owner of %r; left as owner.", source, name)
                continue
            _membership_write(team=team, user=user, role=role, previous=held.role, managed_by=source)
            record(AuditAction.MEMBERSHIP_CHANGE, team, {"from": held.role, "to": role})
    for name, held in sorted(current.items()):
        if held.managed_by != source or name in wanted:
            continue
        team = _locked_team(held.team)
        if held.role == Role.OWNER and _owner_count(team) == 1:
            logger.warning("%s would remove the last owner of %r; left as owner.", source, name)
            continue
        user.groups.remove(team.group_for(held.role))
        held.delete()
        record(AuditAction.MEMBERSHIP_REMOVE, team, {"role": held.role})

    if approver_groups:
        approver = is_approver(groups, approver_groups)
        change = None
        if approver and not user.is_approver:
            change, identity.made_approver = [False, True], True
        elif not approver and user.is_approver and identity.made_approver:
            change, identity.made_approver = [True, False], False
        elif not approver:
            identity.made_approver = False
        if change:
            user.is_approver = change[1]
            user.save(update_fields=["is_approver"])
            audit_event_record(
                actor=None,
                actor_username=actor_username,
                action=AuditAction.USER_CHANGE,
                target=user,
                data={"changes": {"is_approver": change}, "source": source},
            )
            user_changed.send(sender=User, user=user)
    identity.groups = groups
    identity.last_sign_in_at = timezone.now()
    identity.save()


# ---------------------------------------------------------------- sign-in settings


def sign_in_settings_get() -> SignInSettings:
    """The sign-in settings; their defaults (an unsaved row) until an admin first changes them.
    Read on every sign-in page and password sign-in, so it never writes: with SQLite a write
    transaction there would queue every sign-in behind the database's one writer."""
    return SignInSettings.objects.filter(pk=1).first() or SignInSettings(pk=1)


def sign_in_settings_row() -> SignInSettings:
    """The saved row of sign-in settings (made with its defaults if there is none yet)."""
    row, _ = SignInSettings.objects.get_or_create(pk=1)
    return row


@transaction.atomic
def sign_in_settings_update(*, actor: User, password_sign_in: bool) -> SignInSettings:
    """Switch local password sign-in on or off (admins only; audited). Superusers keep the
    admin's sign-in page either way, so nobody is locked out."""
    _require_admin(actor, "change the sign-in settings")
    row = SignInSettings.objects.select_for_update().filter(pk=1).first() or sign_in_settings_row()
    if row.password_sign_in == password_sign_in:
        return row
    before = row.password_sign_in
    row.password_sign_in = password_sign_in
    row.changed_at = timezone.now()
    row.changed_by = actor
    row.save()
    audit_event_record(
        actor=actor,
        action=AuditAction.SIGN_IN_SETTINGS_CHANGE,
        target=row,
        data={"changes": {"password_sign_in": [before, password_sign_in]}},
    )
    return row


# ---------------------------------------------------------------- API tokens


class TokenRejected(Exception):
    """A presented token is not valid; the message says why, for the 401 answer."""


def _parse_scopes(scopes: list[str] | None) -> list[str]:
    if scopes is None:
        return list(TokenScope.values)
    if not scopes:
        raise InvalidInput("Give a token at least one scope: " + ", ".join(TokenScope.values) + ".", field="scopes")
    unknown = sorted(set(scopes) - set(TokenScope.values))
    if unknown:
        raise InvalidInput(
            f"Unknown scope {', '.join(repr(s) for s in unknown)}. Scopes are: {', '.join(TokenScope.values)}.",
            field="scopes",
        )
    return [s for s in TokenScope.values if s in scopes]


@transaction.atomic
def token_create(
    *,
    actor: User | None,
    user: User,
    name: str,
    expires_in_days: int | None = None,
    scopes: list[str] | None = None,
    via: ApiToken | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; returns the row and the secret, which is never retrievable again.

    `actor=None` is the machine's own authority (`manage.py create_token`). `via` is the token
    the request was made with, if any: a token never makes a stronger one, so the new token
    has at most its scopes and expires no later.
    """
    if actor is None:
        pass
    elif actor.pk != user.pk:
        _require_admin(actor, "create tokens for other users")
    elif actor.is_service_account:
        raise NotAllowed("Service accounts cannot create tokens; ask a portal admin to create one.")
    name = (name or "").strip()
    if not name:
        raise InvalidInput("Give the token a name that says where it will be used.", field="name")
    if len(name) > 100:
        raise InvalidInput("A token name may be at most 100 characters.", field="name")
    days = settings.API_TOKEN_DEFAULT_DAYS if expires_in_days is None else expires_in_days
    if not 1 <= days <= settings.API_TOKEN_MAX_DAYS:
        raise InvalidInput(
            f"expires_in_days must be between 1 and {settings.API_TOKEN_MAX_DAYS}.", field="expires_in_days"
        )
    expires_at = timezone.now() + timedelta(days=days)
    scopes = _parse_scopes(scopes if scopes is not None or via is None else list(via.scopes))
    if via is not None:
        if extra := [s for s in scopes if s not in via.scopes]:
            raise NotAllowed(
                f"The token this request was made with has the scopes {', '.join(via.scopes)}; it cannot make "
                f"a token with {', '.join(extra)}. Sign in (portal login, or the web page) to make one."
            )
        if via.expires_at is not None and expires_at > via.expires_at:
            if expires_in_days is not None:
                raise InvalidInput(
                    f"The token this request was made with expires on {via.expires_at:%Y-%m-%d %H:%M} UTC; a token "
                    "it makes cannot outlive it. Ask for fewer days, or sign in to make a longer-lived one.",
                    field="expires_in_days",
                )
            expires_at = via.expires_at
    if ApiToken.objects.active().filter(user=user, name=name).exists():
        raise Conflict(f"'{user.username}' already has an active token named '{name}'. Pick another name.")

    raw, prefix, digest = token_generate()
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=prefix,
        digest=digest,
        scopes=scopes,
        created_by=actor,
        expires_at=expires_at,
    )
    audit_event_record(
        actor=actor,
        actor_username=None if actor else "(command line)",
        action=AuditAction.TOKEN_CREATE,
        target=token,
        data={
            "user": user.username,
            "prefix": prefix,
            "scopes": token.scopes,
            "expires_at": token.expires_at.isoformat(),
        },
    )
    token_changed.send(sender=ApiToken, token=token)
    return token, raw


@transaction.atomic
def token_revoke(*, actor: User, token: ApiToken) -> bool:
    """Revoke a token. Returns False when it was already revoked (nothing changes then)."""
    if actor.pk != token.user_id:
        _require_admin(actor, "revoke other users' tokens")
    now = timezone.now()
    # Conditional update: two concurrent revocations write one event, not two.
    changed = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now, revoked_by=actor)
    if not changed:
        return False
    token.revoked_at, token.revoked_by = now, actor
    audit_event_record(
        actor=actor,
        action=AuditAction.TOKEN_REVOKE,
        target=token,
        data={"user": token.user.username, "prefix": token.prefix},
    )
    token_changed.send(sender=ApiToken, token=token)
    return True


def token_authenticate(*, raw: str) -> ApiToken:
    """Return the active token for a presented secret, or raise TokenRejected with why."""
    if problem := token_shape_problem(raw):
        raise TokenRejected(problem)
    token = ApiToken.objects.select_related("user").filter(digest=token_digest(raw)).first()
    if token is None:
        raise TokenRejected("Unknown token. Check that it was copied whole, or create a new one.")
    if token.revoked_at is not None:
        raise TokenRejected(f"This token was revoked on {token.revoked_at:%Y-%m-%d %H:%M} UTC. Create a new one.")
    if token.is_expired:
        raise TokenRejected(f"This token expired on {token.expires_at:%Y-%m-%d %H:%M} UTC. Create a new one.")
    if not token.user.is_active:
        raise TokenRejected("The account this token belongs to is deactivated.")
    now = timezone.now()
    if token.last_used_at is None or token.last_used_at < now - TOKEN_LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).filter(
            models.Q(last_used_at__isnull=True) | models.Q(last_used_at__lt=now - TOKEN_LAST_USED_RESOLUTION)
        ).update(last_used_at=now)
        token.last_used_at = now
    return token
