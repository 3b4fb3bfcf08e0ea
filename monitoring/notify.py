"""How the portal tells people and systems what happened: the one machinery behind alert
emails and webhooks and the notifications of deployments, access requests and expiring
tokens.

A notification is written (`notification_record`) in the transaction of the change that
caused it, and sent by a task once that has committed (`notification_send`): an email to each
recipient who has not turned that event type off (one message each: nobody sees who else got
it), and a delivery to each active webhook of the notification's services subscribed to the
event type. Emails are sent at most once; webhook deliveries at least once, with retries.

Webhook deliveries carry these headers; a receiver checks the signature over
`{timestamp}.{body}` with the secret it was shown once, and may refuse old timestamps:

    X-Portal-Event: alert.fired | deployment.live | ... (EventType)
    X-Portal-Delivery: <delivery id>
    X-Portal-Timestamp: <unix seconds>
    X-Portal-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from monitoring.models import (
    DeliveryState,
    EventType,
    Notification,
    NotificationPreference,
    Webhook,
    WebhookDelivery,
)

log = logging.getLogger(__name__)

USER_AGENT = "Portal-Webhook/1"


# ---------------------------------------------------------------- who wants what


def email_choices(user: User) -> dict[str, bool]:
    """Whether `user` gets each event type's email: on unless they turned it off."""
    chosen = dict(NotificationPreference.objects.filter(user=user).values_list("event_type", "email"))
    return {kind: chosen.get(kind, True) for kind in EventType.values}


def wanting_email(users: Iterable[User], event_type: str) -> list[User]:
    """Those of `users` who are active, have an address and have not turned `event_type` off."""
    users = [u for u in users if u.is_active and u.email]
    off = set(
        NotificationPreference.objects.filter(
            user__in=[u.pk for u in users], event_type=event_type, email=False
        ).values_list("user_id", flat=True)
    )
    return [u for u in users if u.pk not in off]


def preferences_url() -> str:
    return settings.PORTAL_URL + reverse("notification_preferences")


# ---------------------------------------------------------------- notifications


def notification_record(
    *,
    event_type: str,
    key: str,
    subject: str,
    body: str,
    url: str,
    payload: dict,
    recipients: Iterable[User],
    services: Iterable[int] = (),
) -> Notification | None:
    """Write a notification to be sent once the current transaction commits, and queue its
    sending then. None if one with this `key` exists already (the same event, seen again)."""
    from monitoring import tasks  # tasks send through this module: imported when needed

    recipient_ids = sorted({u.pk for u in recipients})
    try:
        with transaction.atomic():  # a savepoint: a repeated key must not spoil the caller's transaction
            notification = Notification.objects.create(
                type=event_type,
                key=key,
                service_ids=sorted(set(services)),
                subject=subject[:300],
                body=body,
                url=url[:500],
                payload={"type": event_type, **payload, "url": url},
                recipients=recipient_ids,
            )
    except IntegrityError:
        return None
    transaction.on_commit(lambda: queue(tasks.send_notification, notification.pk))
    return notification


def queue(task, *args) -> None:
    """Queue a task; when the broker is away the change that caused it stands all the same,
    and the periodic resend (monitoring.resend_webhooks) sends what was left."""
    try:
        task.delay(*args)
    except Exception:  # the broker down: not a reason to fail the request that made the change
        log.exception("could not queue %s%r; the periodic resend will", task.name, args)


def notification_send(notification_id: int) -> Notification | None:
    """Send a notification: its webhook deliveries (queued here, sent with retries) and its
    emails. Idempotent: only the first call for a notification sends anything."""
    from monitoring import tasks

    now = timezone.now()
    with transaction.atomic():
        # Taken with one conditional update: two workers given the same id send it once.
        if not Notification.objects.filter(pk=notification_id, sent_at=None).update(sent_at=now):
            return None
        notification = Notification.objects.get(pk=notification_id)
        deliveries = deliveries_create(
            event_type=notification.type,
            service_ids=notification.service_ids,
            payload=notification.payload,
            notification=notification,
            # Only webhooks that were there when it happened (not one added while it waited).
            hooks_before=notification.created_at,
        )
    for delivery in deliveries:
        queue(tasks.deliver_webhook, delivery.pk)
    users = User.objects.filter(pk__in=notification.recipients)
    emailed = email_send(
        event_type=notification.type,
        subject=notification.subject,
        body=notification.body,
        users=users,
        what=f"notification {notification.pk}",
    )
    Notification.objects.filter(pk=notification.pk).update(emailed=emailed)
    notification.emailed = emailed
    return notification


def deliveries_create(
    *,
    event_type: str,
    service_ids: Iterable[int],
    payload: dict,
    hooks_before: dt.datetime | None = None,
    **link: object,
) -> list[WebhookDelivery]:
    """A pending delivery for each active webhook of the services subscribed to `event_type`
    (the caller queues them once committed). `link` names the alert event or notification."""
    body = json.dumps(payload, separators=(",", ":"), default=str)
    hooks = Webhook.objects.filter(service_id__in=list(service_ids), active=True)
    if hooks_before is not None:
        hooks = hooks.filter(created_at__lte=hooks_before)
    return [
        WebhookDelivery.objects.create(webhook=hook, event_type=event_type, body=body, **link)
        for hook in hooks
        if event_type in (hook.events or [])
    ]


def email_send(*, event_type: str, subject: str, body: str, users: Iterable[User], what: str) -> int:
    """Email each of `users` who wants `event_type`, one message each, with a footer that
    says why they got it and where to change that; how many it went to."""
    wanting = wanting_email(users, event_type)
    if not wanting:
        return 0
    text = render_to_string(
        "monitoring/email/notification.txt",
        {"body": body.rstrip(), "event": EventType(event_type), "preferences_url": preferences_url()},
    )
    messages = [EmailMessage(subject, text, settings.DEFAULT_FROM_EMAIL, [user.email]) for user in wanting]
    try:
        with get_connection() as connection:
            return connection.send_messages(messages) or 0
    except Exception:  # the mail server away or refusing: logged, the rest of the work stands
        log.exception("could not email %s to %d people", what, len(messages))
        return 0


# ---------------------------------------------------------------- webhooks


def address_problem(url: str) -> str | None:
    """Why the portal will not send to `url`, or None. Webhooks leave from inside the network:
    an address on this machine, a link-local one (cloud metadata), multicast or reserved is
    refused, and so are private networks unless WEBHOOK_ALLOW_PRIVATE_NETWORKS is on. Hosts in
    WEBHOOK_ALLOWED_HOSTS are exempt. Checked when a webhook is added and before every send."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "The webhook URL must be an http:// or https:// address with a host."
    if parts.username or parts.password:
        return "The webhook URL must not carry a user name or password: put a secret in its path or query."
    host = parts.hostname
    if host in settings.WEBHOOK_ALLOWED_HOSTS:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
    except (OSError, ValueError) as exc:
        return f"The webhook host {host} cannot be resolved ({exc})."
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
            return f"The webhook host {host} is {ip}, an address the portal does not send to."
        if ip.is_private and not settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS:
            return (
                f"The webhook host {host} is {ip}, on a private network: an admin may allow those "
                "(WEBHOOK_ALLOW_PRIVATE_NETWORKS) or this host (WEBHOOK_ALLOWED_HOSTS)."
            )
    return None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook answer that redirects is a failed delivery, not a new address to send to."""

    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def attempt(delivery: WebhookDelivery) -> bool:
    """Send a delivery once and record how it went; whether it arrived (a 2xx answer)."""
    body = delivery.body.encode()
    timestamp = str(int(time.time()))
    request = urllib.request.Request(  # noqa: S310 - http(s) URLs only (address_problem)
        delivery.webhook.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Portal-Event": delivery.event_type,
            "X-Portal-Delivery": str(delivery.pk),
            "X-Portal-Timestamp": timestamp,
            "X-Portal-Signature": signature(delivery.webhook.secret, timestamp, body),
        },
    )
    status, error = None, ""
    if problem := address_problem(delivery.webhook.url):  # checked again: DNS may have changed
        error = problem
    else:
        try:
            with _OPENER.open(request, timeout=settings.WEBHOOK_TIMEOUT_SECONDS) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status, error = exc.code, f"HTTP {exc.code} {exc.reason}"
        except Exception as exc:  # noqa: BLE001 - refused, reset, a broken answer: a failed attempt
            error = str(getattr(exc, "reason", exc)) or type(exc).__name__
    delivered = status is not None and 200 <= status < 300
    delivery.attempts += 1
    delivery.response_status = status
    delivery.error = "" if delivered else error[:300]
    delivery.last_attempt_at = timezone.now()
    if delivered:
        delivery.state, delivery.next_attempt_at = DeliveryState.DELIVERED, None
    elif delivery.attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
        delivery.state, delivery.next_attempt_at = DeliveryState.FAILED, None
    else:
        delivery.next_attempt_at = delivery.last_attempt_at + dt.timedelta(seconds=retry_delay(delivery.attempts))
    delivery.save()
    return delivered


def retry_delay(attempts: int) -> float:
    return settings.WEBHOOK_RETRY_SECONDS * 2 ** (attempts - 1)
