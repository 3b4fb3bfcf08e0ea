"""Signals deployments sends so that higher layers (notifications in `monitoring`) can react
without deployments importing them. Each is sent inside the transaction of the change; a
receiver that acts outside the database (an email, a webhook) defers to transaction.on_commit.
"""

from django.dispatch import Signal

# A deployment moved from one status to another (one conditional update in states.transition).
# Sent with `deployment`, `from_status`, `to_status`, `message` and `actor` (a user or None).
deployment_transitioned = Signal()

# Someone asked for access to a service. Sent with `access_request`.
access_request_created = Signal()

# An access request was approved, rejected or withdrawn. Sent with `access_request`.
access_request_decided = Signal()
