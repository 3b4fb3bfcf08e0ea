"""Receivers of accounts' signals: what accounts changes, the data plane must hear.

Accounts is a lower layer and cannot import the publisher; it sends a signal inside the
transaction of its change, and the publish waits for that transaction to commit.
"""

from django.dispatch import receiver

from accounts.signals import membership_changed, token_changed, user_changed
from deployments import publish


@receiver(token_changed)
def _publish_tokens(sender, **kwargs) -> None:
    publish.publish_on_commit(publish.KEY_TOKENS)  # a revoked token is refused within a second


@receiver(user_changed)
def _publish_tokens_and_grants(sender, **kwargs) -> None:
    publish.publish_on_commit(publish.KEY_TOKENS, publish.KEY_GRANTS)


@receiver(membership_changed)
def _publish_grants(sender, **kwargs) -> None:
    publish.publish_on_commit(publish.KEY_GRANTS)  # grants to a team follow its members
