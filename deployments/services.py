"""Writes for deployments: services, grants, and the life of a deployment.

Each function checks that the actor may act, changes state through the state machine,
writes the audit event, and queues work for the workers after the transaction commits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from accounts.models import AuditAction, Role, Team, User
from accounts.services import audit_event_record, team_roles_grant
from core.errors import Conflict, InvalidInput, NotAllowed, check_name
from deployments import publish, states, tasks
from deployments.models import (
    MAX_INSTANCES_LIMIT,
    Deployment,
    Deprecation,
    Environment,
    Grant,
    PredictionLogging,
    Service,
    Status,
)
from deployments.permissions import SERVICE_ROLE_PERMISSIONS
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


def _grant(*, actor: User, service: Service, user: User | None = None, team: Team | None = None) -> Grant:
    if user is not None:
        assign_perm("deployments.invoke_service", user, service)
    else:
        for role in Role.values:
            assign_perm("deployments.invoke_service", team.group_for(role), service)
    grant = Grant.objects.create(service=service, user=user, team=team, created_by=actor)
    audit_event_record(
        actor=actor,
        action=AuditAction.PERMISSION_GRANT,
        target=service,
        team=service.team,
        data={"permission": "invoke", "user": user.username if user else None, "team": team.name if team else None},
    )
    publish.publish_on_commit(publish.KEY_GRANTS)
    return grant


@transaction.atomic
def grant_create(*, actor: User, service: Service, user: User | None = None, team: Team | None = None) -> Grant:
    if not actor.has_perm("deployments.manage_grants", service):
        raise NotAllowed(
            f"Only owners and maintainers of team '{service.team.name}' may grant access to '{service.name}'."
        )
    if (user is None) == (team is None):
        raise InvalidInput("Grant to a user or to a team: give exactly one of 'user' and 'team'.")
    existing = (
        Grant.objects.filter(service=service, user=user) if user else Grant.objects.filter(service=service, team=team)
    )
    if existing.exists():
        who = f"User '{user.username}'" if user else f"Team '{team.name}'"
        raise Conflict(f"{who} may already call '{service.name}'.")
    if user is not None and not user.is_active:
        raise InvalidInput(f"User '{user.username}' is deactivated.", field="user")
    return _grant(actor=actor, service=service, user=user, team=team)


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


@transaction.atomic
def grant_revoke(*, actor: User, grant: Grant) -> None:
    service = grant.service
    if not actor.has_perm("deployments.manage_grants", service):
        raise NotAllowed(
            f"Only owners and maintainers of team '{service.team.name}' may revoke access to '{service.name}'."
        )
    if grant.user_id:
        remove_perm("deployments.invoke_service", grant.user, service)
    else:
        for role in Role.values:
            remove_perm("deployments.invoke_service", grant.team.group_for(role), service)
    data = {
        "permission": grant.permission,
        "user": grant.user.username if grant.user_id else None,
        "team": grant.team.name if grant.team_id else None,
    }
    grant.delete()
    audit_event_record(actor=actor, action=AuditAction.PERMISSION_REVOKE, target=service, team=service.team, data=data)
    publish.publish_on_commit(publish.KEY_GRANTS)


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
) -> Deployment:
    """Request a deployment. With `autoscaling`, it starts with `replicas` instances (at least
    one, so its rollout can smoke-test one, and within the autoscaling bounds), and the
    autoscaler changes that number from then on."""
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
    deployment = _create_in_flight(
        service=service,
        version=version,
        environment=environment,
        major=version.major,
        replicas=replicas,
        requested_by=actor,
        reason=reason,
        **scaling,
    )
    states.event(deployment, f"{actor.username} requested {version.version} in {environment.name}.", actor=actor)
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
        data={"service": service.name, "version": version.version, "environment": environment.name},
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
