"""The deployment state machine, in one place.

    requested → pending_approval → approved → provisioning → live → superseded
    with rejected, cancelled, failed, rolled_back and stopped as other ends.

A canary or shadow deployment is tried beside the live version before it replaces it:

    provisioning → canary | shadow → live          (promoted: the blue/green switch)
                                   → rolled_back   (a regression, or a person aborted it)

Every change is one conditional update (zero rows updated means "already done, or not
allowed from here") plus one event row, in one transaction.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from deployments.models import IN_FLIGHT, TRYING, Deployment, DeploymentEvent, Status
from deployments.signals import deployment_transitioned

# target status → the statuses it may be reached from
TRANSITIONS: dict[str, frozenset[str]] = {
    Status.PENDING_APPROVAL: frozenset({Status.REQUESTED}),
    Status.APPROVED: frozenset({Status.REQUESTED, Status.PENDING_APPROVAL}),
    Status.REJECTED: frozenset({Status.PENDING_APPROVAL}),
    Status.CANCELLED: frozenset({Status.REQUESTED, Status.PENDING_APPROVAL, Status.APPROVED}),
    Status.PROVISIONING: frozenset({Status.APPROVED}),
    Status.CANARY: frozenset({Status.PROVISIONING}),
    Status.SHADOW: frozenset({Status.PROVISIONING}),
    Status.LIVE: frozenset({Status.PROVISIONING, Status.CANARY, Status.SHADOW}),
    Status.FAILED: frozenset({Status.APPROVED, Status.PROVISIONING}),
    Status.SUPERSEDED: frozenset({Status.LIVE}),
    Status.ROLLED_BACK: frozenset({Status.LIVE, Status.CANARY, Status.SHADOW}),
    Status.STOPPED: frozenset({Status.LIVE}),
}

ACTIVE = frozenset(IN_FLIGHT)
# A candidate with running instances beside the live version (canary or shadow).
TRYING_STATUSES = frozenset(TRYING)
# Deployments whose instances serve (or, for shadow, answer copies of) requests now.
SERVING = frozenset({Status.LIVE, *TRYING})
ENDED = frozenset(
    {Status.SUPERSEDED, Status.STOPPED, Status.REJECTED, Status.FAILED, Status.ROLLED_BACK, Status.CANCELLED}
)


def can_transition(current: str, target: str) -> bool:
    return current in TRANSITIONS.get(target, frozenset())


@transaction.atomic
def transition(deployment: Deployment, target: str, *, message: str, actor=None, **fields) -> bool:
    """Move `deployment` to `target` if its current status allows it; write the event.

    Returns False, changing nothing, when the deployment is not in a status that may move
    to `target` (another worker or person got there first).
    """
    allowed = TRANSITIONS[target]
    now = timezone.now()
    current = Deployment.objects.filter(pk=deployment.pk).values_list("status", flat=True).first()
    if current not in allowed:
        return False
    if target == Status.LIVE:
        fields.setdefault("live_at", now)
    if target in ENDED:
        fields.setdefault("ended_at", now)
    updated = Deployment.objects.filter(pk=deployment.pk, status=current).update(
        status=target, updated_at=now, **fields
    )
    if not updated:
        return False
    DeploymentEvent.objects.create(
        deployment_id=deployment.pk,
        step=f"status:{target}",
        from_status=current,
        to_status=target,
        message=message,
        level="error" if target == Status.FAILED else "warn" if current in TRYING and target != Status.LIVE else "info",
        actor=actor,
    )
    deployment.status = target
    for name, value in fields.items():
        setattr(deployment, name, value)
    deployment_transitioned.send(
        Deployment, deployment=deployment, from_status=current, to_status=target, message=message, actor=actor
    )
    return True


def event(deployment: Deployment, message: str, *, step: str = "", level: str = "info", actor=None) -> bool:
    """Record a step's event once: a repeated step (a resumed rollout) writes nothing new."""
    if step:
        _, created = DeploymentEvent.objects.get_or_create(
            deployment_id=deployment.pk, step=step, defaults={"message": message, "level": level, "actor": actor}
        )
        return created
    DeploymentEvent.objects.create(deployment_id=deployment.pk, message=message, level=level, actor=actor)
    return True
