"""Receivers of other parts' signals: every Celery task's outcome counted in Redis (for the
portal's /metrics), and deployments' changes turned into notifications (connected in
MonitoringConfig.ready)."""

from __future__ import annotations

import contextlib
import functools
import logging

import redis
from celery.signals import task_postrun
from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiToken, Role, User
from deployments.models import Deployment, Grant, Status
from monitoring import notify
from monitoring.exposition import KEY_TASKS
from monitoring.models import EventType

_client: redis.Redis | None = None


@task_postrun.connect
def count_outcome(sender=None, state=None, **_kwargs) -> None:
    global _client
    with contextlib.suppress(redis.RedisError):
        if _client is None:
            _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        _client.hincrby(KEY_TASKS, f"{getattr(sender, 'name', 'unknown')}|{state or 'UNKNOWN'}", 1)


# ---------------------------------------------------------------- notifications
#
# Deployments send signals (deployments/signals.py) inside the transaction of each change;
# these receivers write the notification there (an outbox row: it exists exactly when the
# change committed) and monitoring.notify sends it from a task once it has. A failure here is
# logged and must never undo or refuse the change that was being made.
#
# Where each event goes: the people named below (each may turn the email off), and the
# webhooks of the service it is about that subscribe to its type; a token's expiry goes to
# the webhooks of the services its owner holds a grant on (a consumer about to lose access).

log = logging.getLogger(__name__)

# Deployment statuses worth telling people about, as event types.
DEPLOYMENT_EVENTS = {
    Status.PENDING_APPROVAL: EventType.DEPLOYMENT_PENDING_APPROVAL,
    Status.APPROVED: EventType.DEPLOYMENT_APPROVED,
    Status.REJECTED: EventType.DEPLOYMENT_REJECTED,
    Status.FAILED: EventType.DEPLOYMENT_FAILED,
    Status.LIVE: EventType.DEPLOYMENT_LIVE,
    # A canary or shadow sent back (a regression found by analysis, or aborted): told as a failure.
    Status.ROLLED_BACK: EventType.DEPLOYMENT_FAILED,
}


def _guarded(receiver):
    """Run a receiver in a savepoint and never let it raise into the sender's change."""

    @functools.wraps(receiver)
    def run(*args, **kwargs):
        try:
            with transaction.atomic():
                return receiver(*args, **kwargs)
        except Exception:
            log.exception("could not record the notification of %s", receiver.__name__)
            return None

    return run


def _url(name: str, *args, fragment: str = "") -> str:
    return settings.PORTAL_URL + reverse(name, args=args) + (f"#{fragment}" if fragment else "")


def _team_members(team) -> list[User]:
    return [m.user for m in team.memberships.select_related("user")]


def _at(value) -> str | None:
    return value.isoformat() if value else None


@_guarded
def deployment_changed(sender, *, deployment, from_status, to_status, message, actor=None, **_kwargs):
    event_type = DEPLOYMENT_EVENTS.get(to_status)
    # Approved straight from "requested" is an environment without approval: nobody decided.
    if event_type is None or (to_status == Status.APPROVED and from_status != Status.PENDING_APPROVAL):
        return None
    if to_status == Status.ROLLED_BACK and from_status not in (Status.CANARY, Status.SHADOW):
        return None  # a live version replaced by a rollback: its "live" notification says so
    deployment = Deployment.objects.select_related(
        "service__team", "version__model", "environment", "requested_by"
    ).get(pk=deployment.pk)
    service, team, environment = deployment.service, deployment.service.team, deployment.environment.name
    what = f"{service.name} {deployment.version.version}"
    requester = deployment.requested_by
    by = f" by {actor.username}" if actor is not None else ""
    url = _url("deployment_detail", deployment.pk)
    trial = Status(from_status).label.lower() if from_status in Status.values else from_status
    if to_status == Status.PENDING_APPROVAL:
        subject = f"[Portal] {what} to {environment} is waiting for your approval"
        lines = [f"{requester.username} asks to deploy {what} to {environment}."]
        if deployment.reason:
            lines.append(f"Reason: {deployment.reason}")
        lines.append("Approve or reject it on its page (you cannot approve your own requests).")
        recipients = list(User.objects.filter(is_approver=True, is_active=True).exclude(pk=requester.pk))
    else:
        subject = {
            Status.APPROVED: f"[Portal] {what} to {environment} was approved{by}",
            Status.REJECTED: f"[Portal] {what} to {environment} was rejected{by}",
            Status.FAILED: f"[Portal] {what} to {environment} failed",
            Status.LIVE: f"[Portal] {what} is live in {environment}",
            Status.ROLLED_BACK: f"[Portal] The {trial} of {what} in {environment} was rolled back{by}",
        }[to_status]
        lines = [message]
        if to_status == Status.FAILED and deployment.failure_reason and deployment.failure_reason not in message:
            lines.append(f"Why: {deployment.failure_reason}")
        lines.append(f"Requested by {requester.username}.")
        recipients = [requester, *_team_members(team)]
        if actor is not None:  # nobody is told what they did themselves
            recipients = [u for u in recipients if u.pk != actor.pk]
    lines += ["", f"Service: {service.name} (team {team.name})", f"Version: {deployment.version.version}"]
    lines += [f"Environment: {environment}", "", url]
    return notify.notification_record(
        event_type=event_type,
        key=f"deployment:{deployment.pk}:{to_status}",
        subject=subject,
        body="\n".join(lines),
        url=url,
        payload={
            "service": service.name,
            "environment": environment,
            "team": team.name,
            "deployment": {
                "id": deployment.pk,
                "version": deployment.version.version,
                "status": to_status,
                "from_status": from_status,
                "requested_by": requester.username,
                "reason": deployment.reason,
            },
            "actor": actor.username if actor is not None else None,
            "message": message,
            "at": timezone.now().isoformat(),
        },
        recipients=recipients,
        services=[service.pk],
    )


def _access_request_payload(access_request) -> dict:
    service = access_request.service
    account = getattr(access_request, "service_account", None)
    decided_by = getattr(access_request, "decided_by", None)
    return {
        "service": service.name,
        "team": service.team.name,
        "access_request": {
            "id": access_request.pk,
            "status": access_request.status,
            "requester": access_request.requester.username,
            "service_account": account.username if account is not None else None,
            "reason": access_request.reason,
            "decided_by": decided_by.username if decided_by is not None else None,
            "comment": getattr(access_request, "comment", "") or "",
            "expires_at": _at(getattr(access_request, "expires_at", None)),
            "created_at": _at(getattr(access_request, "created_at", None)),
        },
        "at": timezone.now().isoformat(),
    }


def _for_whom(access_request) -> str:
    account = getattr(access_request, "service_account", None)
    return f" for {account.username}" if account is not None else ""


@_guarded
def access_request_created(sender, *, access_request, **_kwargs):
    service, requester = access_request.service, access_request.requester
    team = service.team
    url = _url("access_queue")
    lines = [f"{requester.username} asks for access to {service.name}{_for_whom(access_request)}."]
    if access_request.reason:
        lines.append(f"Reason: {access_request.reason}")
    lines += [f"Owners and maintainers of team {team.name} approve or reject it on the Access requests page.", "", url]
    deciders = [
        m.user
        for m in team.memberships.select_related("user").filter(role__in=[Role.OWNER, Role.MAINTAINER])
        if m.user_id != requester.pk
    ]
    return notify.notification_record(
        event_type=EventType.ACCESS_REQUEST_CREATED,
        key=f"access_request:{access_request.pk}:created",
        subject=f"[Portal] {requester.username} asks for access to {service.name}{_for_whom(access_request)}",
        body="\n".join(lines),
        url=url,
        payload=_access_request_payload(access_request),
        recipients=deciders,
        services=[service.pk],
    )


@_guarded
def access_request_decided(sender, *, access_request, **_kwargs):
    if access_request.status == "pending":
        return None
    service, requester = access_request.service, access_request.requester
    decided_by = getattr(access_request, "decided_by", None)
    url = _url("access_queue")
    status = access_request.status
    by = f" by {decided_by.username}" if decided_by is not None and decided_by.pk != requester.pk else ""
    lines = [f"Your request for access to {service.name}{_for_whom(access_request)} was {status}{by}."]
    if comment := getattr(access_request, "comment", ""):
        lines.append(f"Comment: {comment}")
    if status == "approved" and (expires_at := getattr(access_request, "expires_at", None)):
        lines.append(f"The access lasts until {expires_at:%Y-%m-%d %H:%M} UTC.")
    lines += ["", url]
    recipients = [requester] if decided_by is None or decided_by.pk != requester.pk else []
    return notify.notification_record(
        event_type=EventType.ACCESS_REQUEST_DECIDED,
        key=f"access_request:{access_request.pk}:decided",
        subject=f"[Portal] Your access request to {service.name} was {status}",
        body="\n".join(lines),
        url=url,
        payload=_access_request_payload(access_request),
        recipients=recipients,
        services=[service.pk],
    )


def token_key(token: ApiToken) -> str:
    return f"token:{token.pk}:expiring"


def token_expiring(token: ApiToken):
    """The notice that `token` expires soon, to its owner (and, for a service account's
    token, to whoever created it); None if it was given before."""
    owner = token.user
    recipients = [owner]
    if owner.is_service_account and token.created_by is not None:
        recipients.append(token.created_by)
    whose = "Your API token" if not owner.is_service_account else f"The API token of {owner.username}"
    when = f"{token.expires_at:%Y-%m-%d %H:%M} UTC"
    url = _url("token_list")
    body = "\n".join(
        [
            f"{whose} '{token.name}' ({token.prefix}…) expires on {when}.",
            "After that every request made with it is refused (401). Create a new token before then,",
            "put it where this one is used, and revoke this one.",
            "",
            url,
        ]
    )
    return notify.notification_record(
        event_type=EventType.TOKEN_EXPIRING,
        key=token_key(token),
        subject=f"[Portal] {whose} '{token.name}' expires on {token.expires_at:%Y-%m-%d}",
        body=body,
        url=url,
        payload={
            "token": {
                "id": token.pk,
                "name": token.name,
                "prefix": token.prefix,
                "user": owner.username,
                "expires_at": _at(token.expires_at),
            },
            "at": timezone.now().isoformat(),
        },
        recipients=recipients,
        services=Grant.objects.filter(user=owner).values_list("service_id", flat=True),
    )
