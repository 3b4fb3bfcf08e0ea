"""Signals accounts sends when who may call what has changed.

Accounts is a lower layer than deployments, which publishes tokens and grants to the data
plane: instead of importing the publisher, accounts says what changed and deployments
connects its receivers in its AppConfig.ready(). Each is sent inside the transaction of the
change; a receiver that acts outside the database defers to transaction.on_commit.
"""

from django.dispatch import Signal

# An API token was created or revoked. Sent with `token`.
token_changed = Signal()

# A user's status or roles changed (tokens and grants count only while the user is active).
# Sent with `user`.
user_changed = Signal()

# Someone joined or left a team, or changed role (grants to a team follow its members).
# Sent with `team` and `user`.
membership_changed = Signal()
