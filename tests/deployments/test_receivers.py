"""What changes outside the deployments app reaches the data plane at once: token, membership
and user changes sent as signals by accounts, and deletions made in the Django admin."""

import pytest
import redis

from accounts import services as accounts
from accounts.models import ApiToken
from deployments import services
from gateway import contract

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def published(redis_url):
    """Reads what the data plane would load from Redis now."""
    client = redis.Redis.from_url(redis_url)

    class Published:
        def tokens(self) -> set[str]:
            return {k.decode() for k in client.hkeys(contract.KEY_TOKENS)}

        def grants(self, service: str) -> frozenset[int]:
            raw = client.hget(contract.KEY_GRANTS, service)
            return frozenset() if raw is None else contract.Grant.decode(raw).users

        def services(self) -> set[str]:
            return {k.decode() for k in client.hkeys(contract.KEY_GRANTS)}

    yield Published()
    client.close()


def test_a_token_reaches_the_data_plane_when_made_and_leaves_when_revoked(member, published):
    token, _ = accounts.token_create(actor=member, user=member, name="ci", scopes=["invoke"])
    assert token.digest in published.tokens()
    accounts.token_revoke(actor=member, token=token)
    assert token.digest not in published.tokens()


def test_team_grants_follow_membership(iris_service, owner, outsider, published):
    assert outsider.pk not in published.grants("iris-api")
    accounts.membership_add(actor=owner, team=iris_service.team, user=outsider, role="viewer")
    assert outsider.pk in published.grants("iris-api")
    accounts.membership_remove(actor=owner, team=iris_service.team, user=outsider)
    assert outsider.pk not in published.grants("iris-api")


def test_a_deactivated_user_leaves_the_data_plane(admin, service_account, iris_service, owner, published):
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    token, _ = accounts.token_create(actor=None, user=service_account, name="consumer", scopes=["invoke"])
    assert token.digest in published.tokens() and service_account.pk in published.grants("iris-api")
    accounts.user_update(actor=admin, user=service_account, is_active=False)
    assert token.digest not in published.tokens() and service_account.pk not in published.grants("iris-api")


def test_deleting_a_user_or_a_service_in_the_admin_takes_it_out_at_once(
    admin, client, service_account, iris_service, owner, published
):
    services.grant_create(actor=owner, service=iris_service, user=service_account)
    assert service_account.pk in published.grants("iris-api")
    client.force_login(admin)
    response = client.post(f"/admin/accounts/user/{service_account.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content[:300]
    assert service_account.pk not in published.grants("iris-api")

    iris_service.deployments.all().delete()
    response = client.post(f"/admin/deployments/service/{iris_service.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content[:300]
    assert "iris-api" not in published.services()


def test_a_token_deleted_outside_the_services_leaves_at_once(member, published):
    """The admin keeps tokens (they are revoked, not deleted), but a deletion from a shell or a
    data clean-up must not leave a working token in the gateways for a minute."""
    token, _ = accounts.token_create(actor=member, user=member, name="ci", scopes=["invoke"])
    assert token.digest in published.tokens()
    ApiToken.objects.filter(pk=token.pk).get().delete()
    assert token.digest not in published.tokens()
