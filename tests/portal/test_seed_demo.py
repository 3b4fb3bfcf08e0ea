import pytest
from django.core.management import call_command

from accounts.models import AuditEvent, Membership, Team, User

pytestmark = pytest.mark.django_db


def test_seed_demo_creates_the_cast_once(capsys):
    call_command("seed_demo")
    call_command("seed_demo")
    assert "already present" in capsys.readouterr().out
    assert Team.objects.get().name == "data-science"
    roles = dict(Membership.objects.values_list("user__username", "role"))
    assert roles == {"admin": "owner", "scientist": "maintainer"}
    assert User.objects.get(username="approver").is_approver
    assert User.objects.get(username="admin").is_superuser
    consumer = User.objects.get(username="consumer-app")
    assert consumer.is_service_account and not consumer.has_usable_password()
    assert User.objects.get(username="scientist").check_password("portal-demo")
    assert AuditEvent.objects.filter(action="team.create").count() == 1
