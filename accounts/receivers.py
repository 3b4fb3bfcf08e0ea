"""Receivers: audit sign-ins, failed sign-ins and sign-outs.

These come from Django's auth framework (the portal's login page and the admin's), so its
signals are the one place every path passes through; the receivers call the audit service.
"""

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from accounts.models import AuditAction, User
from accounts.services import audit_event_record


@receiver(user_logged_in)
def _audit_login(sender, request, user, **kwargs):
    audit_event_record(actor=user, action=AuditAction.LOGIN, target=user)


@receiver(user_logged_out)
def _audit_logout(sender, request, user, **kwargs):
    if user is not None:
        audit_event_record(actor=user, action=AuditAction.LOGOUT, target=user)


@receiver(user_login_failed)
def _audit_login_failed(sender, credentials, request=None, **kwargs):
    username = str(credentials.get("username", ""))[:150]
    # Only the attempted username is kept; Django already masks the password in `credentials`.
    known = User.objects.filter(username=username).first()
    audit_event_record(
        actor=None,
        actor_username=username,
        action=AuditAction.LOGIN_FAILED,
        target=known,
        data={"username": username, "known_user": known is not None},
    )
