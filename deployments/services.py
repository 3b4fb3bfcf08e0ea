"""Writes for deployments: services, grants, and the life of a deployment.

Each function checks that the actor may act, changes state through the state machine,
writes the audit event, and queues work for the workers after the transaction commits.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, get_users_with_perms, remove_perm

from accounts.models import AuditAction, Membership, Role, Team, User
from accounts.services import audit_event_record, team_roles_grant
from core.errors import Conflict, InvalidInput, NotAllowed, check_name
from deployments import publish, states, strategies, tasks
from deployments.models import (
    DEFAULT_BAKE_SECONDS,
    DEFAULT_CANARY_STEPS,
    DEFAULT_SHADOW_PERCENT,
    MAX_INSTANCES_LIMIT,
    AccessRequest,
    Deployment,
    Deprecation,
    Environment,
    Grant,
    PredictionLogging,
    Service,
    Status,
    Strategy,
)
from deployments.permissions import SERVICE_ROLE_PERMISSIONS
from deployments.signals import access_request_created, access_request_decided
from registry.models import ModelVersion, RegisteredModel


def _enqueue(task, deployment_id: int) -> None:
    """Queue a rollout task once the transaction commits (the worker must find the rows)."""
    transaction.on_commit(lambda: task.delay(deployment_id))


# ---------------------------------------------------------------- services and grants


@transaction.atomic
def service_create(*, actor: User, name: str, team: Team, model: RegisteredModel, description: str = "") -> Service:
    if not actor.has_perm("accounts.create_model", team):
        raise NotAllowed(f"Only owners, maintainers and members of team '{team.name}' may create its services.")
    if model.team_id != team.pk:
        raise InvalidInput(
            f"Model '{model.name}' belongs to team '{model.team.name}'; a service serves a model of its own team.",
            field="model",
        )
    check_name(name, what="service", max_length=100)
    if Service.objects.filter(name=name).exists():
        raise Conflict(f"A service named '{name}' already exists.")
    try:
        with transaction.atomic():
            service = Service.objects.create(
                name=name, team=team, model=model, description=description, created_by=actor
            )
    except IntegrityError:
        raise Conflict(f"A service named '{name}' already exists.") from None
    team_roles_grant(team=team, obj=service, table=SERVICE_ROLE_PERMISSIONS)
    audit_event_record(actor=actor, action=AuditAction.SERVICE_CREATE, target=service, team=team)
    # The owning team may call its own service; other callers need a grant.
    _grant(actor=actor, service=service, team=team)
    return service


@transaction.atomic
def service_update(
    *, actor: User, service: Service, description: str | None = None, max_instances: int | None = None
) -> Service:
    """Change a service's description or its cap on instances per request (owners and maintainers)."""
    if not actor.has_perm("deployments.change_service", service):
        raise NotAllowed(f"Only owners and maintainers of team '{service.team.name}' may change '{service.name}'.")
    changes: dict[str, list] = {}
    if description is not None and description != service.description:
        if len(description) > 500:
            raise InvalidInput("A description may be at most 500 characters.", field="description")
        changes["description"] = [service.description, description]
    if max_instances is not None and max_instances != service.max_instances:
        if not 1 <= max_instances <= MAX_INSTANCES_LIMIT:
            raise InvalidInput(
                f"max_instances must be between 1 and {MAX_INSTANCES_LIMIT} (bodies are also limited in bytes).",
                field="max_instances",
            )
        changes["max_instances"] = [service.max_instances, max_instances]
    if not changes:
        return service
    for name, (_old, new) in changes.items():
        setattr(service, name, new)
    service.save(update_fields=list(changes))
    audit_event_record(
        actor=actor, action=AuditAction.SERVICE_CHANGE, target=service, team=service.team, data={"changes": changes}
    )
    if "max_instances" in changes:
        publish.publish_on_commit(publish.KEY_ROUTES)  # the gateways enforce the cap from the route
    return service


@dataclass(frozen=True)
class GrantLimits:
    """What a grant may carry besides who: an end, and the limits every gateway enforces.

    None means "none": no expiry, no rate limit, no quota. `burst` needs a rate.
    """

    expires_at: datetime | None = None
    rate_per_second: float | None = None
    burst: int | None = None
    daily_quota: int | None = None

    def check(self, *, now: datetime | None = None) -> None:
        if self.expires_at is not None and self.expires_at <= (now or timezone.now()):
            raise InvalidInput("The expiry must be in the future.", field="expires_at")
        if self.rate_per_second is not None and not 0 < self.rate_per_second <= 1_000_000:
            raise InvalidInput(
                "rate_per_second must be more than 0 (requests per second, e.g. 0.5 or 20); leave it empty for no "
                "limit.",
                field="rate_per_second",
            )
        if self.burst is not None:
            if self.burst < 1:
                raise InvalidInput("burst must be at least 1 request.", field="burst")
            if self.rate_per_second is None:
                raise InvalidInput("A burst only applies with a rate: set rate_per_second too.", field="burst")
        if self.daily_quota is not None and self.daily_quota < 1:
            raise InvalidInput(
                "daily_quota must be at least 1 request a day; leave it empty for no quota.", field="daily_quota"
            )

    def as_audit(self) -> dict:
        return {
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "rate_per_second": self.rate_per_second,
            "burst": self.burst,
            "daily_quota": self.daily_quota,
        }


def _grant(
    *,
    actor: User,
    service: Service,
    user: User | None = None,
    team: Team | None = None,
    limits: GrantLimits | None = None,
) -> Grant:
    limits = limits or GrantLimits()
    if user is not None:
        assign_perm("deployments.invoke_service", user, service)
    else:
        for role in Role.values:
            assign_perm("deployments.invoke_service", team.group_for(role), service)
    grant = Grant.objects.create(service=service, user=user, team=team, created_by=actor, **dataclasses.asdict(limits))
    data = {"permission": "invoke", "user": user.username if user else None, "team": team.name if team else None}
    if limits != GrantLimits():
        data.update(limits.as_audit())
    audit_event_record(actor=actor, action=AuditAction.PERMISSION_GRANT, target=service, team=service.team, data=data)
    publish.publish_on_commit(publish.KEY_GRANTS)
    return grant


def _check_may_manage_grants(actor: User, service: Service, what: str = "grant access to") -> None:
    if not actor.has_perm("deployments.manage_grants", service):
        raise NotAllowed(f"Only owners and maintainers of team '{service.team.name}' may {what} '{service.name}'.")


def _existing_grant(service: Service, user: User | None, team: Team | None) -> Grant | None:
    if user is not None:
        return Grant.objects.filter(service=service, user=user).first()
    return Grant.objects.filter(service=service, team=team).first()


@transaction.atomic
def grant_create(
    *,
    actor: User,
    service: Service,
    user: User | None = None,
    team: Team | None = None,
    limits: GrantLimits | None = None,
) -> Grant:
    _check_may_manage_grants(actor, service)
    if (user is None) == (team is None):
        raise InvalidInput("Grant to a user or to a team: give exactly one of 'user' and 'team'.")
    if _existing_grant(service, user, team) is not None:
        who = f"User '{user.username}'" if user else f"Team '{team.name}'"
        raise Conflict(f"{who} may already call '{service.name}'.")
    if user is not None and not user.is_active:
        raise InvalidInput(f"User '{user.username}' is deactivated.", field="user")
    if limits is not None:
        limits.check()
    return _grant(actor=actor, service=service, user=user, team=team, limits=limits)


# Leaves a grant's field as it is in grant_update (None there means "no limit").
UNCHANGED: object = object()


@transaction.atomic
def grant_update(
    *,
    actor: User,
    grant: Grant,
    expires_at: datetime | object | None = UNCHANGED,
    rate_per_second: float | object | None = UNCHANGED,
    burst: int | object | None = UNCHANGED,
    daily_quota: int | object | None = UNCHANGED,
) -> Grant:
    """Change a grant's expiry or limits (None removes one); the gateways apply it at once."""
    service = grant.service
    _check_may_manage_grants(actor, service, "change access to")
    wanted = {"expires_at": expires_at, "rate_per_second": rate_per_second, "burst": burst}
    wanted["daily_quota"] = daily_quota
    merged = {name: getattr(grant, name) if value is UNCHANGED else value for name, value in wanted.items()}
    limits = GrantLimits(**merged)
    if expires_at is UNCHANGED:
        # An expiry that is passing as this runs is the sweep's to act on, not a reason to refuse.
        limits = dataclasses.replace(limits, expires_at=None)
    limits.check()
    changes = {name: [getattr(grant, name), value] for name, value in merged.items() if value != getattr(grant, name)}
    if not changes:
        return grant
    for name, (_old, new) in changes.items():
        setattr(grant, name, new)
    grant.save(update_fields=list(changes))
    audit_event_record(
        actor=actor,
        action=AuditAction.PERMISSION_CHANGE,
        target=service,
        team=service.team,
        data={
            "grant": grant.pk,
            "user": grant.user.username if grant.user_id else None,
            "team": grant.team.name if grant.team_id else None,
            "changes": {
                name: [v.isoformat() if isinstance(v, datetime) else v for v in pair] for name, pair in changes.items()
            },
        },
    )
    publish.publish_on_commit(publish.KEY_GRANTS)  # the same republish as a grant or a revocation
    return grant


@transaction.atomic
def prediction_logging_set(
    *,
    actor: User,
    service: Service,
    environment: Environment,
    enabled: bool | None = None,
    sample_rate: float | None = None,
    keep_payloads: bool | None = None,
    retention_days: int | None = None,
) -> PredictionLogging:
    """Set how a service's predictions in an environment are logged (owners and maintainers);
    the gateways apply it with the next snapshot."""
    if not actor.has_perm("deployments.change_service", service):
        raise NotAllowed(
            f"Only owners and maintainers of team '{service.team.name}' may change how '{service.name}' is logged."
        )
    policy = PredictionLogging.effective(service, environment)
    wanted = {"enabled": enabled, "sample_rate": sample_rate, "keep_payloads": keep_payloads}
    wanted["retention_days"] = retention_days
    if sample_rate is not None and not 0.0 <= sample_rate <= 1.0:
        raise InvalidInput("sample_rate is a share of predictions: between 0 and 1.", field="sample_rate")
    if retention_days is not None and not 1 <= retention_days <= 3650:
        raise InvalidInput("retention_days must be between 1 and 3650.", field="retention_days")
    changes = {
        name: [getattr(policy, name), value]
        for name, value in wanted.items()
        if value is not None and value != getattr(policy, name)
    }
    if not changes and policy.pk:
        return policy
    for name, (_old, new) in changes.items():
        setattr(policy, name, new)
    policy.updated_by = actor
    policy.save()
    audit_event_record(
        actor=actor,
        action=AuditAction.SERVICE_CHANGE,
        target=service,
        team=service.team,
        data={"prediction_logging": environment.name, "changes": changes},
    )
    publish.publish_on_commit(publish.KEY_ROUTES)
    return policy


def _remove_invoke(grant: Grant) -> None:
    service = grant.service
    if grant.user_id:
        remove_perm("deployments.invoke_service", grant.user, service)
    else:
        for role in Role.values:
            remove_perm("deployments.invoke_service", grant.team.group_for(role), service)


def _grant_audit(grant: Grant) -> dict:
    return {
        "permission": grant.permission,
        "user": grant.user.username if grant.user_id else None,
        "team": grant.team.name if grant.team_id else None,
    }


@transaction.atomic
def grant_revoke(*, actor: User, grant: Grant) -> None:
    service = grant.service
    _check_may_manage_grants(actor, service, "revoke access to")
    _remove_invoke(grant)
    data = _grant_audit(grant)
    grant.delete()
    audit_event_record(actor=actor, action=AuditAction.PERMISSION_REVOKE, target=service, team=service.team, data=data)
    publish.publish_on_commit(publish.KEY_GRANTS)


def grants_expire(*, now: datetime | None = None) -> list[int]:
    """Remove every grant whose expiry has passed, each in its own transaction; the ids removed.

    Idempotent: a grant is removed by a conditional delete, so two sweeps at once (two beat
    schedulers, a retried task) remove and audit it once.
    """
    now = now or timezone.now()
    expired = []
    for grant_id in Grant.objects.filter(expires_at__lte=now).values_list("pk", flat=True):
        with transaction.atomic():
            grant = Grant.objects.select_related("service__team", "user", "team").filter(pk=grant_id).first()
            if grant is None or grant.expires_at is None or grant.expires_at > now:
                continue  # revoked, or given a later expiry, since the list was read
            _remove_invoke(grant)
            data = {**_grant_audit(grant), "expired_at": grant.expires_at.isoformat()}
            if not Grant.objects.filter(pk=grant_id, expires_at__lte=now).delete()[0]:
                transaction.set_rollback(True)
                continue
            service = grant.service
            audit_event_record(
                actor=None,
                actor_username="portal",
                action=AuditAction.PERMISSION_EXPIRE,
                target=service,
                team=service.team,
                data=data,
            )
            publish.publish_on_commit(publish.KEY_GRANTS)
            expired.append(grant_id)
    return expired


# ---------------------------------------------------------------- access requests


def has_invoke(*, service: Service, user: User) -> bool:
    """Whether `user` may call `service` at the gateway: a grant to them or to a team of theirs.

    The same question the publisher asks (superusers hold no grant by being superusers).
    """
    return (
        get_users_with_perms(
            service, with_group_users=True, only_with_perms_in=["invoke_service"], with_superusers=False
        )
        .filter(pk=user.pk)
        .exists()
    )


def looks_after(*, actor: User, service_account: User) -> bool:
    """Whether `actor` may ask for access on behalf of `service_account`: an admin, or an owner
    or maintainer of a team the service account is a member of."""
    if actor.is_admin:
        return True
    teams = Membership.objects.filter(user=service_account).values("team")
    return Membership.objects.filter(user=actor, team__in=teams, role__in=[Role.OWNER, Role.MAINTAINER]).exists()


def _pending_for(service: Service, subject: User) -> AccessRequest | None:
    pending = AccessRequest.objects.filter(service=service, status=AccessRequest.Status.PENDING)
    if subject.is_service_account:
        found = pending.filter(service_account=subject).first()
        if found is not None:
            return found
    return pending.filter(requester=subject, service_account__isnull=True).first()


def _refuse_duplicate(service: Service, subject: User, actor: User) -> Conflict:
    found = _pending_for(service, subject)
    who = "You" if subject == actor else f"'{subject.username}'"
    if found is None:
        return Conflict(f"{who} asked for access to '{service.name}' just now; wait for that request.")
    by = "" if found.requester_id == actor.pk else f" (asked by {found.requester.username})"
    return Conflict(
        f"{who} already asked for access to '{service.name}' on {found.created_at:%Y-%m-%d}{by}: request "
        f"#{found.pk} is pending. Wait for the team's owners and maintainers, or withdraw it and ask again."
    )


@transaction.atomic
def access_request_create(
    *,
    actor: User,
    service: Service,
    reason: str,
    service_account: User | None = None,
    expires_at: datetime | None = None,
) -> AccessRequest:
    """Ask the owning team for the right to call `service`, for oneself or for a service account."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput(
            "Say why you need access (what will call it, and for what), so the team can decide.", field="reason"
        )
    if len(reason) > 1000:
        raise InvalidInput("A reason may be at most 1000 characters.", field="reason")
    if service_account is not None:
        if service_account == actor:
            service_account = None  # a service account asking for itself
        elif not service_account.is_service_account:
            raise InvalidInput(
                f"'{service_account.username}' is a person, not a service account; they can ask for themselves.",
                field="service_account",
            )
        elif not service_account.is_active:
            raise InvalidInput(f"Service account '{service_account.username}' is deactivated.", field="service_account")
        elif not looks_after(actor=actor, service_account=service_account):
            raise NotAllowed(
                f"Only owners and maintainers of a team that service account '{service_account.username}' belongs "
                "to may ask for access on its behalf."
            )
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("The end of the access must be in the future.", field="expires_at")
    subject = service_account or actor
    if has_invoke(service=service, user=subject):
        who = "You" if subject == actor else f"'{subject.username}'"
        raise Conflict(f"{who} may already call '{service.name}'; there is nothing to ask for.")
    if _pending_for(service, subject) is not None:
        raise _refuse_duplicate(service, subject, actor)
    try:
        with transaction.atomic():
            access_request = AccessRequest.objects.create(
                service=service,
                requester=actor,
                service_account=service_account,
                reason=reason,
                expires_at=expires_at,
            )
    except IntegrityError:  # a concurrent request won the race past the check above
        raise _refuse_duplicate(service, subject, actor) from None
    audit_event_record(
        actor=actor,
        action=AuditAction.ACCESS_REQUEST_CREATE,
        target=access_request,
        team=service.team,
        data={
            "service": service.name,
            "for": subject.username,
            "reason": reason,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    access_request_created.send(AccessRequest, access_request=access_request)
    return access_request


def _decide(access_request: AccessRequest, to: AccessRequest.Status, *, actor: User, comment: str, **fields) -> None:
    """Move a pending request on: one conditional update, so two deciders cannot both win."""
    now = timezone.now()
    updated = AccessRequest.objects.filter(pk=access_request.pk, status=AccessRequest.Status.PENDING).update(
        status=to, decided_by=actor, decided_at=now, comment=comment, **fields
    )
    if not updated:
        raise _not_pending(access_request)
    access_request.refresh_from_db()


def _not_pending(access_request: AccessRequest) -> Conflict:
    current = AccessRequest.objects.filter(pk=access_request.pk).values_list("status", flat=True).first()
    state = AccessRequest.Status(current).label.lower() if current else "gone"
    return Conflict(f"Access request #{access_request.pk} is {state}; only a pending one can be decided or withdrawn.")


@transaction.atomic
def access_request_approve(
    *,
    actor: User,
    access_request: AccessRequest,
    comment: str = "",
    expires_at: datetime | object | None = UNCHANGED,
) -> AccessRequest:
    """Approve: the requester (or their service account) gets a grant, with the expiry they asked
    for unless the approver sets another (None: no expiry)."""
    service = access_request.service
    _check_may_manage_grants(actor, service, "decide access requests to")
    comment = (comment or "").strip()
    if len(comment) > 1000:
        raise InvalidInput("A comment may be at most 1000 characters.", field="comment")
    subject = access_request.subject
    if expires_at is UNCHANGED:
        expires_at = access_request.expires_at
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("The end of the access must be in the future.", field="expires_at")
    access_request.refresh_from_db(fields=["status"])
    if access_request.status != AccessRequest.Status.PENDING:
        raise _not_pending(access_request)
    if not subject.is_active:
        raise Conflict(f"'{subject.username}' is deactivated; reject the request instead.")
    existing = _existing_grant(service, subject, None)
    if existing is not None:
        raise Conflict(
            f"'{subject.username}' may already call '{service.name}' (grant #{existing.pk}); reject this request "
            "with a comment saying so, or revoke that grant first."
        )
    grant = _grant(actor=actor, service=service, user=subject, limits=GrantLimits(expires_at=expires_at))
    _decide(
        access_request, AccessRequest.Status.APPROVED, actor=actor, comment=comment, grant=grant, expires_at=expires_at
    )
    audit_event_record(
        actor=actor,
        action=AuditAction.ACCESS_REQUEST_APPROVE,
        target=access_request,
        team=service.team,
        data={
            "service": service.name,
            "for": subject.username,
            "grant": grant.pk,
            "comment": comment,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    access_request_decided.send(AccessRequest, access_request=access_request)
    return access_request


@transaction.atomic
def access_request_reject(*, actor: User, access_request: AccessRequest, comment: str) -> AccessRequest:
    service = access_request.service
    _check_may_manage_grants(actor, service, "decide access requests to")
    comment = (comment or "").strip()
    if not comment:
        raise InvalidInput("Say why the request is rejected, so the requester knows what to do.", field="comment")
    if len(comment) > 1000:
        raise InvalidInput("A comment may be at most 1000 characters.", field="comment")
    _decide(access_request, AccessRequest.Status.REJECTED, actor=actor, comment=comment)
    audit_event_record(
        actor=actor,
        action=AuditAction.ACCESS_REQUEST_REJECT,
        target=access_request,
        team=service.team,
        data={"service": service.name, "for": access_request.subject.username, "comment": comment},
    )
    access_request_decided.send(AccessRequest, access_request=access_request)
    return access_request


@transaction.atomic
def access_request_withdraw(*, actor: User, access_request: AccessRequest) -> AccessRequest:
    if access_request.requester_id != actor.pk:
        raise NotAllowed(f"Only {access_request.requester.username}, who asked, may withdraw this request.")
    _decide(access_request, AccessRequest.Status.WITHDRAWN, actor=actor, comment="")
    audit_event_record(
        actor=actor,
        action=AuditAction.ACCESS_REQUEST_WITHDRAW,
        target=access_request,
        team=access_request.service.team,
        data={"service": access_request.service.name, "for": access_request.subject.username},
    )
    access_request_decided.send(AccessRequest, access_request=access_request)
    return access_request


# ---------------------------------------------------------------- deployments


def _check_replicas(replicas: int, environment: Environment) -> None:
    if not 1 <= replicas <= environment.max_replicas:
        raise InvalidInput(
            f"replicas must be between 1 and {environment.max_replicas} in '{environment.name}'.", field="replicas"
        )


@dataclass(frozen=True)
class Autoscaling:
    """What a deployment request says about autoscaling (deployments/autoscale.py)."""

    min_replicas: int
    max_replicas: int
    target_in_flight: int
    scale_down_after_seconds: int = 60


def _check_autoscaling(autoscaling: Autoscaling, environment: Environment) -> None:
    low, high = autoscaling.min_replicas, autoscaling.max_replicas
    if not 1 <= high <= environment.max_replicas:
        raise InvalidInput(
            f"max_replicas must be between 1 and {environment.max_replicas} in '{environment.name}'.",
            field="max_replicas",
        )
    if not 0 <= low <= high:
        raise InvalidInput(f"min_replicas must be between 0 and max_replicas ({high}).", field="min_replicas")
    if low == 0 and (environment.requires_approval or not environment.allow_scale_to_zero):
        raise InvalidInput(
            f"'{environment.name}' does not allow scaling to zero (its callers would wait for a cold start); "
            "set min_replicas to 1 or more.",
            field="min_replicas",
        )
    if not 1 <= autoscaling.target_in_flight <= 10_000:
        raise InvalidInput("target_in_flight must be between 1 and 10000.", field="target_in_flight")
    if not 5 <= autoscaling.scale_down_after_seconds <= 86_400:
        raise InvalidInput("scale_down_after_seconds must be between 5 and 86400.", field="scale_down_after_seconds")


@transaction.atomic
def major_deprecate(
    *, actor: User, service: Service, major: int, sunset_at: datetime | None = None, note: str = ""
) -> Deprecation:
    """Mark a major version of a service deprecated (or change its sunset date and note)."""
    if not actor.has_perm("deployments.change_service", service):
        raise NotAllowed(f"Only owners and maintainers of team '{service.team.name}' may deprecate '{service.name}'.")
    if not ModelVersion.objects.filter(model=service.model, major=major).exists():
        raise InvalidInput(f"Model '{service.model.name}' has no major version {major}.", field="major")
    if sunset_at is not None and sunset_at <= timezone.now():
        raise InvalidInput("The sunset must be in the future.", field="sunset")
    note = (note or "").strip()
    if len(note) > 500:
        raise InvalidInput("A note may be at most 500 characters.", field="note")
    deprecation, created = Deprecation.objects.update_or_create(
        service=service,
        major=major,
        defaults={"sunset_at": sunset_at, "note": note},
        create_defaults={"sunset_at": sunset_at, "note": note, "created_by": actor},
    )
    audit_event_record(
        actor=actor,
        action=AuditAction.SERVICE_DEPRECATE,
        target=service,
        team=service.team,
        data={
            "major": major,
            "sunset": sunset_at.isoformat() if sunset_at else None,
            "note": note,
            "changed": not created,
        },
    )
    publish.publish_on_commit(publish.KEY_ROUTES)
    return deprecation


@transaction.atomic
def major_undeprecate(*, actor: User, service: Service, major: int) -> bool:
    """Take back a deprecation. Returns False when the major was not deprecated."""
    if not actor.has_perm("deployments.change_service", service):
        raise NotAllowed(f"Only owners and maintainers of team '{service.team.name}' may change '{service.name}'.")
    deleted, _ = Deprecation.objects.filter(service=service, major=major).delete()
    if deleted:
        audit_event_record(
            actor=actor,
            action=AuditAction.SERVICE_UNDEPRECATE,
            target=service,
            team=service.team,
            data={"major": major},
        )
        publish.publish_on_commit(publish.KEY_ROUTES)
    return bool(deleted)


def _create_in_flight(**fields) -> Deployment:
    """A new deployment, refused while another of the same route has not finished its rollout."""
    route = {"service": fields["service"], "environment": fields["environment"], "major": fields["major"]}

    def refuse(in_flight: Deployment | None) -> Conflict:
        what = f"{route['service'].name} v{route['major']} to {route['environment'].name}"
        if in_flight is None:
            return Conflict(f"Another deployment of {what} started just now. Wait for it, or cancel it first.")
        if in_flight.status in states.TRYING_STATUSES:
            return Conflict(f"{_trying_text(in_flight)}: promote or abort it first (deployment #{in_flight.pk}).")
        return Conflict(
            f"Deployment #{in_flight.pk} of {what} is still {in_flight.get_status_display().lower()}. "
            "Wait for it, or cancel it first."
        )

    in_flight = Deployment.objects.filter(**route, status__in=states.ACTIVE).first()
    if in_flight is not None:
        raise refuse(in_flight)
    try:
        with transaction.atomic():
            return Deployment.objects.create(**fields)
    except IntegrityError as exc:
        # A concurrent request won the race past the check above; any other integrity error
        # (a vanished service or version) is not ours to explain. PostgreSQL names the
        # constraint; SQLite names its columns.
        text = str(exc)
        if "deployment_one_in_flight_per_route" in text or "service_id, deployments_deployment.environment_id" in text:
            raise refuse(Deployment.objects.filter(**route, status__in=states.ACTIVE).first()) from None
        raise


def _trying_text(deployment: Deployment) -> str:
    name = f"{deployment.service.name} {deployment.version.version}"
    if deployment.status == Status.SHADOW:
        return f"{name} is in a shadow test ({deployment.percent:g} % of requests copied)"
    paused = ", paused" if deployment.paused else ""
    return f"{name} is in a canary at {deployment.percent:g} %{paused}"


MAX_BAKE_SECONDS = 3600  # the gateway keeps its per-minute counts for 2 hours


@dataclass(frozen=True)
class Rollout:
    """How a deployment replaces the live version: blue/green (at once, after its smoke test),
    a canary in steps of percents of traffic, or a shadow test on copies of traffic."""

    strategy: str = Strategy.BLUE_GREEN
    steps: tuple[float, ...] | None = None  # canary; DEFAULT_CANARY_STEPS when None
    bake_seconds: int | None = None  # canary; DEFAULT_BAKE_SECONDS when None
    shadow_percent: int | None = None  # shadow; DEFAULT_SHADOW_PERCENT when None
    sticky: bool = False  # canary

    def fields(self) -> dict:
        """The deployment's fields, checked, with the defaults filled in."""
        if self.strategy not in Strategy.values:
            raise InvalidInput(
                f"strategy must be one of {', '.join(Strategy.values)}, not '{self.strategy}'.", field="strategy"
            )
        canary, shadow = self.strategy == Strategy.CANARY, self.strategy == Strategy.SHADOW
        for name, value, applies in (
            ("steps", self.steps, canary),
            ("bake_seconds", self.bake_seconds, canary),
            ("shadow_percent", self.shadow_percent, shadow),
            ("sticky", self.sticky or None, canary),
        ):
            if value is not None and not applies:
                needs = "shadow" if name == "shadow_percent" else "canary"
                raise InvalidInput(f"{name} is a setting of strategy '{needs}'; set strategy to {needs}.", field=name)
        fields: dict = {"strategy": self.strategy}
        if canary:
            steps = list(self.steps if self.steps is not None else DEFAULT_CANARY_STEPS)
            if not steps or len(steps) > 20:
                raise InvalidInput("steps are 1 to 20 percents of traffic, e.g. [5, 25, 50, 100].", field="steps")
            if any(not 0 < step <= 100 for step in steps):
                raise InvalidInput("Each step is a percent of traffic above 0 and at most 100.", field="steps")
            if any(b <= a for a, b in itertools.pairwise(steps)):
                raise InvalidInput(f"steps must increase: {', '.join(f'{s:g}' for s in steps)}.", field="steps")
            if steps[-1] != 100:
                steps.append(100)  # the last step is the promotion
            if len(steps) < 2:
                raise InvalidInput("A canary needs a step below 100 %, e.g. [10, 100].", field="steps")
            bake = DEFAULT_BAKE_SECONDS if self.bake_seconds is None else self.bake_seconds
            if not 1 <= bake <= MAX_BAKE_SECONDS:
                raise InvalidInput(
                    f"bake_seconds must be between 1 and {MAX_BAKE_SECONDS} (the time each step runs before it is "
                    "judged).",
                    field="bake_seconds",
                )
            fields.update(steps=[int(s) if float(s).is_integer() else float(s) for s in steps], bake_seconds=bake)
            fields["sticky"] = bool(self.sticky)
        if shadow:
            percent = DEFAULT_SHADOW_PERCENT if self.shadow_percent is None else self.shadow_percent
            if not 1 <= percent <= 100:
                raise InvalidInput("shadow_percent must be between 1 and 100.", field="shadow_percent")
            fields.update(shadow_percent=percent)
        return fields


def _check_candidate(*, service: Service, version: ModelVersion, environment: Environment, strategy: str) -> None:
    """A canary or shadow is tried beside the live version of its route: there must be one,
    of another version (the gateway counts each version apart)."""
    live = Deployment.objects.filter(
        service=service, environment=environment, major=version.major, status=Status.LIVE
    ).first()
    if live is None:
        raise InvalidInput(
            f"No version of {service.name} v{version.major} is live in {environment.name} to compare a {strategy} "
            "with; deploy this one with strategy blue_green.",
            field="strategy",
        )
    if live.version_id == version.pk:
        raise InvalidInput(
            f"{version.version} is already live in {environment.name}; a {strategy} tries another version beside it.",
            field="version",
        )


@transaction.atomic
def deployment_request(
    *,
    actor: User,
    service: Service,
    version: ModelVersion,
    environment: Environment,
    replicas: int = 1,
    reason: str = "",
    autoscaling: Autoscaling | None = None,
    rollout: Rollout | None = None,
) -> Deployment:
    """Request a deployment. With `autoscaling`, it starts with `replicas` instances (at least
    one, so its rollout can smoke-test one, and within the autoscaling bounds), and the
    autoscaler changes that number from then on. With a canary or shadow `rollout`, it is
    tried beside the live version before it replaces it (one approval covers all of it)."""
    if not actor.has_perm("deployments.deploy_service", service):
        raise NotAllowed(
            f"Only owners, maintainers and members of team '{service.team.name}' may deploy '{service.name}'."
        )
    if version.model_id != service.model_id:
        raise InvalidInput(f"Version {version} is not a version of model '{service.model.name}'.", field="version")
    scaling = {}
    if autoscaling is not None:
        _check_autoscaling(autoscaling, environment)
        replicas = min(max(replicas, autoscaling.min_replicas, 1), autoscaling.max_replicas)
        scaling = dataclasses.asdict(autoscaling)
    _check_replicas(replicas, environment)
    strategy = (rollout or Rollout()).fields()
    if strategy["strategy"] != Strategy.BLUE_GREEN:
        _check_candidate(service=service, version=version, environment=environment, strategy=strategy["strategy"])
    deployment = _create_in_flight(
        service=service,
        version=version,
        environment=environment,
        major=version.major,
        replicas=replicas,
        requested_by=actor,
        reason=reason,
        **scaling,
        **strategy,
    )
    states.event(deployment, f"{actor.username} requested {version.version} in {environment.name}.", actor=actor)
    if deployment.strategy == Strategy.CANARY:
        states.event(
            deployment,
            f"Canary in steps of {', '.join(f'{s:g} %' for s in deployment.steps)}, each baking "
            f"{deployment.bake_seconds} s{', sticky per caller' if deployment.sticky else ''}; a regression rolls it "
            "back on its own.",
        )
    elif deployment.strategy == Strategy.SHADOW:
        states.event(
            deployment,
            f"Shadow test on {deployment.shadow_percent} % of requests (copies; callers keep the live version's "
            "answers); promoted only by a person.",
        )
    if autoscaling is not None:
        states.event(
            deployment,
            f"Autoscaling between {autoscaling.min_replicas} and {autoscaling.max_replicas} instances, aiming at "
            f"{autoscaling.target_in_flight} requests in flight each; scaling down after "
            f"{autoscaling.scale_down_after_seconds} s of lower demand.",
        )
    audit_event_record(
        actor=actor,
        action=AuditAction.DEPLOYMENT_REQUEST,
        target=deployment,
        team=service.team,
        data={
            "service": service.name,
            "version": version.version,
            "environment": environment.name,
            **({"strategy": deployment.strategy} if deployment.strategy != Strategy.BLUE_GREEN else {}),
        },
    )
    if environment.requires_approval:
        states.transition(
            deployment,
            Status.PENDING_APPROVAL,
            message=f"Waiting for an IT approver: {environment.name} needs approval.",
        )
    else:
        states.transition(deployment, Status.APPROVED, message=f"{environment.name} needs no approval.")
        _enqueue(tasks.rollout, deployment.pk)
    return deployment


@transaction.atomic
def deployment_approve(*, actor: User, deployment: Deployment, comment: str = "") -> Deployment:
    if not actor.is_approver:
        raise NotAllowed("Only IT approvers may approve deployments.")
    if deployment.requested_by_id == actor.pk:
        raise NotAllowed("You requested this deployment; another approver must approve it (four eyes).")
    if not states.transition(
        deployment,
        Status.APPROVED,
        actor=actor,
        message=f"Approved by {actor.username}" + (f": {comment}" if comment else "."),
        decided_by=actor,
        decision_comment=comment,
    ):
        raise Conflict(
            f"Deployment #{deployment.pk} is {deployment_status(deployment)}; only a waiting one can be approved."
        )
    audit_event_record(
        actor=actor,
        action=AuditAction.DEPLOYMENT_APPROVE,
        target=deployment,
        team=deployment.service.team,
        data={"comment": comment},
    )
    _enqueue(tasks.rollout, deployment.pk)
    return deployment


@transaction.atomic
def deployment_reject(*, actor: User, deployment: Deployment, comment: str) -> Deployment:
    if not actor.is_approver:
        raise NotAllowed("Only IT approvers may reject deployments.")
    comment = (comment or "").strip()
    if not comment:
        raise InvalidInput("Say why the deployment is rejected, so the requester can fix it.", field="comment")
    if not states.transition(
        deployment,
        Status.REJECTED,
        actor=actor,
        message=f"Rejected by {actor.username}: {comment}",
        decided_by=actor,
        decision_comment=comment,
    ):
        raise Conflict(
            f"Deployment #{deployment.pk} is {deployment_status(deployment)}; only a waiting one can be rejected."
        )
    audit_event_record(
        actor=actor,
        action=AuditAction.DEPLOYMENT_REJECT,
        target=deployment,
        team=deployment.service.team,
        data={"comment": comment},
    )
    return deployment


@transaction.atomic
def deployment_cancel(*, actor: User, deployment: Deployment) -> Deployment:
    service = deployment.service
    if deployment.requested_by_id != actor.pk and not actor.has_perm("deployments.change_service", service):
        raise NotAllowed("Only the requester or the team's owners and maintainers may cancel a deployment.")
    if not states.transition(deployment, Status.CANCELLED, actor=actor, message=f"Cancelled by {actor.username}."):
        raise Conflict(
            f"Deployment #{deployment.pk} is {deployment_status(deployment)}; "
            "only one that has not started can be cancelled."
        )
    audit_event_record(actor=actor, action=AuditAction.DEPLOYMENT_CANCEL, target=deployment, team=service.team)
    return deployment


@transaction.atomic
def deployment_rollback(*, actor: User, deployment: Deployment) -> Deployment:
    """Bring back the version that was live before `deployment` (which must be live).

    The version being restored was approved for this environment before, so the rollback
    needs no new approval: in an incident, waiting for one would prolong the outage.
    """
    service = deployment.service
    if not actor.has_perm("deployments.deploy_service", service):
        raise NotAllowed(f"Only owners, maintainers and members of team '{service.team.name}' may roll back.")
    if deployment.status != Status.LIVE:
        raise Conflict(
            f"Deployment #{deployment.pk} is {deployment_status(deployment)}; only a live one can be rolled back."
        )
    previous = (
        Deployment.objects.filter(
            service=service,
            environment=deployment.environment,
            major=deployment.major,
            status__in=[Status.SUPERSEDED, Status.ROLLED_BACK],
            live_at__isnull=False,
        )
        .exclude(version=deployment.version)
        .order_by("-live_at")
        .first()
    )
    if previous is None:
        raise Conflict(
            f"There is no earlier version of {service.name} v{deployment.major} in "
            f"{deployment.environment.name} to roll back to."
        )
    rollback = _create_in_flight(
        service=service,
        version=previous.version,
        environment=deployment.environment,
        major=deployment.major,
        replicas=deployment.replicas,
        requested_by=actor,
        rollback_of=deployment,
        reason=f"Rollback of #{deployment.pk} ({deployment.version.version}) to {previous.version.version}",
    )
    states.event(rollback, f"{actor.username} rolled back #{deployment.pk} to {previous.version.version}.", actor=actor)
    states.transition(
        rollback, Status.APPROVED, message="A rollback restores a version approved before; no approval needed."
    )
    audit_event_record(
        actor=actor,
        action=AuditAction.DEPLOYMENT_ROLLBACK,
        target=rollback,
        team=service.team,
        data={"from": deployment.version.version, "to": previous.version.version, "rolled_back": deployment.pk},
    )
    _enqueue(tasks.rollout, rollback.pk)
    return rollback


@transaction.atomic
def deployment_scale(*, actor: User, deployment: Deployment, replicas: int) -> Deployment:
    service = deployment.service
    if not actor.has_perm("deployments.deploy_service", service):
        raise NotAllowed(
            f"Only owners, maintainers and members of team '{service.team.name}' may scale '{service.name}'."
        )
    _check_replicas(replicas, deployment.environment)
    if deployment.autoscaled:
        raise Conflict(
            f"Deployment #{deployment.pk} is autoscaled between {deployment.min_replicas} and "
            f"{deployment.max_replicas} instances; deploy again with other bounds to change them."
        )
    if deployment.status != Status.LIVE:
        raise Conflict(
            f"Deployment #{deployment.pk} is {deployment_status(deployment)}; only a live one can be scaled."
        )
    old = deployment.replicas
    Deployment.objects.filter(pk=deployment.pk).update(replicas=replicas)
    deployment.replicas = replicas
    states.event(deployment, f"{actor.username} set replicas from {old} to {replicas}.", actor=actor)
    audit_event_record(
        actor=actor,
        action=AuditAction.DEPLOYMENT_SCALE,
        target=deployment,
        team=service.team,
        data={"from": old, "to": replicas},
    )
    _enqueue(tasks.scale, deployment.pk)
    return deployment


# ---------------------------------------------------------------- people in charge of a canary or shadow


def _check_in_charge(actor: User, deployment: Deployment, what: str) -> None:
    service = deployment.service
    if not actor.has_perm("deployments.deploy_service", service):
        raise NotAllowed(
            f"Only owners, maintainers and members of team '{service.team.name}' may {what} '{service.name}'."
        )


def _not_trying(deployment: Deployment, what: str) -> Conflict:
    return Conflict(
        f"Deployment #{deployment.pk} is {deployment_status(deployment)}; only a canary or a shadow test can be {what}."
    )


@transaction.atomic
def deployment_pause(*, actor: User, deployment: Deployment) -> Deployment:
    """Hold a canary (or shadow) where it is: same share, no judging, no steps, until resumed."""
    _check_in_charge(actor, deployment, "pause")
    deployment.refresh_from_db()
    if deployment.status not in states.TRYING_STATUSES:
        raise _not_trying(deployment, "paused")
    if deployment.paused:
        raise Conflict(f"Deployment #{deployment.pk} is already paused; resume, promote or abort it.")
    Deployment.objects.filter(pk=deployment.pk, status=deployment.status).update(paused=True)
    deployment.paused = True
    states.event(
        deployment,
        f"Paused by {actor.username} at {deployment.percent:g} %: it stays there, unjudged, until resumed.",
        actor=actor,
    )
    audit_event_record(
        actor=actor,
        action=AuditAction.DEPLOYMENT_PAUSE,
        target=deployment,
        team=deployment.service.team,
        data={"step": deployment.step_index, "percent": deployment.percent},
    )
    return deployment


@transaction.atomic
def deployment_resume(*, actor: User, deployment: Deployment) -> Deployment:
    """Carry on a paused canary: its current step starts again (a new window and bake)."""
    _check_in_charge(actor, deployment, "resume")
    deployment.refresh_from_db()
    if deployment.status not in states.TRYING_STATUSES:
        raise _not_trying(deployment, "resumed")
    if not deployment.paused:
        raise Conflict(f"Deployment #{deployment.pk} is not paused.")
    stable = strategies.stable_of(deployment)
    baseline = strategies._baseline(deployment, stable) if stable else {}
    Deployment.objects.filter(pk=deployment.pk, status=deployment.status).update(
        paused=False, step_started_at=timezone.now(), step_baseline=baseline, analysis={}
    )
    deployment.paused = False
    states.event(
        deployment,
        f"Resumed by {actor.username}: step {deployment.step_index + 1} ({deployment.percent:g} %) starts its "
        "bake again.",
        actor=actor,
    )
    audit_event_record(
        actor=actor,
        action=AuditAction.DEPLOYMENT_RESUME,
        target=deployment,
        team=deployment.service.team,
        data={"step": deployment.step_index},
    )
    return deployment


@transaction.atomic
def deployment_promote(*, actor: User, deployment: Deployment) -> Deployment:
    """Promote a canary or shadow now: the blue/green switch, the old version drains and stops."""
    _check_in_charge(actor, deployment, "promote")
    deployment.refresh_from_db()
    if deployment.status not in states.TRYING_STATUSES:
        raise _not_trying(deployment, "promoted")
    states.event(
        deployment, f"{actor.username} promoted {deployment.version.version} at {deployment.percent:g} %.", actor=actor
    )
    if not strategies.promote(deployment, actor=actor):
        raise _not_trying(deployment, "promoted")
    # Its rollout publishes the route, waits for every gateway, then drains the old version.
    _enqueue(tasks.rollout, deployment.pk)
    return deployment


@transaction.atomic
def deployment_abort(*, actor: User, deployment: Deployment) -> Deployment:
    """Abort a canary or shadow: back to 0 %, the stable version keeps serving, its instances stop."""
    _check_in_charge(actor, deployment, "abort")
    deployment.refresh_from_db()
    if deployment.status not in states.TRYING_STATUSES:
        raise _not_trying(deployment, "aborted")
    if not strategies.rollback(deployment, reason=f"stopped at {deployment.percent:g} %.", actor=actor):
        raise _not_trying(deployment, "aborted")
    _enqueue(tasks.advance_candidate, deployment.pk)  # republish without it, then stop its instances
    return deployment


def deployment_status(deployment: Deployment) -> str:
    current = Deployment.objects.filter(pk=deployment.pk).values_list("status", flat=True).first()
    return Status(current).label.lower() if current else "gone"


@transaction.atomic
def environment_update(*, actor: User, environment: Environment, **changes) -> Environment:
    if not actor.is_superuser:
        raise NotAllowed("Only portal admins may change environments.")
    before = {name: getattr(environment, name) for name in changes}
    for name, value in changes.items():
        setattr(environment, name, value)
    environment.save(update_fields=list(changes) or None)
    diff = {name: [before[name], value] for name, value in changes.items() if before[name] != value}
    if diff:
        audit_event_record(
            actor=actor, action=AuditAction.ENVIRONMENT_CHANGE, target=environment, data={"changes": diff}
        )
    return environment
