"""What the data plane must hear about, from outside the service functions.

Accounts is a lower layer and cannot import the publisher: it sends a signal inside the
transaction of its change, and the publish waits for that transaction to commit. Deletions
(the Django admin deletes users, tokens and services without a service function) are
caught as they happen, so a deleted user's tokens stop working at once, not at the next
periodic republish.
"""

from django.db.models.signals import post_delete
from django.dispatch import receiver

from accounts.models import ApiToken, User
from accounts.signals import membership_changed, token_changed, user_changed
from deployments import publish
from deployments.models import Grant, Service


@receiver(token_changed)
def _publish_tokens(sender, **kwargs) -> None:
    publish.publish_on_commit(publish.KEY_TOKENS)  # a revoked token is refused within a second


@receiver(user_changed)
def _publish_tokens_and_grants(sender, **kwargs) -> None:
    publish.publish_on_commit(publish.KEY_TOKENS, publish.KEY_GRANTS)


@receiver(membership_changed)
def _publish_grants(sender, **kwargs) -> None:
    publish.publish_on_commit(publish.KEY_GRANTS)  # grants to a team follow its members


@receiver(post_delete, sender=User)
@receiver(post_delete, sender=ApiToken)
@receiver(post_delete, sender=Service)
@receiver(post_delete, sender=Grant)
def _publish_after_a_deletion(sender, **kwargs) -> None:
    # A deleted user takes tokens and grants along; a deleted service its routes and grants.
    publish.publish_on_commit()  # everything: rare, and it may take several kinds of entry along
